//! End-to-end tests of the transport (CONFIG.md, fourth revision): `--version`, TLS
//! termination with `server.tls_cert_file`/`server.tls_key_file` and reload on SIGHUP,
//! `wss://` in `connect` and `doctor --url` with and without `--ca-file`, a second TLS
//! client in another language (Python's `ssl`), `server.trusted_proxies`, and the config
//! errors of these keys. Certificates are made by the test (support/pki.rs); every
//! server is the real binary on 127.0.0.1:0.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use support::pki::{Ca, write_pair};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const VAR: &str = "AG_TEST_SECRET";

fn env() -> [(&'static str, &'static str); 1] {
    [(VAR, SECRET)]
}

/// A config with the HS256 issuer and `extra` keys of `[server]`, then `more`.
fn config(s: &Sandbox, name: &str, server_extra: &str, more: &str) -> String {
    s.config(name, &format!("{server_extra}\n{}\n{more}", hs_issuer("local", VAR)))
}

fn tls_keys(cert: &Path, key: &Path) -> String {
    format!("tls_cert_file = {}\ntls_key_file = {}", toml_str(cert), toml_str(key))
}

fn wss(server: &Server) -> String {
    format!("wss://{}/v1/ws", server.addr())
}

/// Wait until the server's output holds `text`.
fn wait_log(server: &Server, text: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    while !server.logs().contains(text) {
        assert!(Instant::now() < deadline, "no {text:?} in the server's log in time:\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sighup(server: &Server) {
    let st = Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().expect("run kill");
    assert!(st.success(), "kill -HUP");
}

fn connector(ca: &Path) -> Option<tokio_tungstenite::Connector> {
    Some(agentgate_client::tls::connector(Some(ca)).expect("connector"))
}

#[test]
fn version_prints_one_line_and_exits_0() {
    let s = Sandbox::new();
    let out = s.run(&["--version"], &[]);
    assert_status(&out, 0);
    assert_eq!(stdout_of(&out), format!("agentgate {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn tls_and_proxy_keys_fail_as_config_errors_naming_the_key() {
    let s = Sandbox::new();
    let ca = Ca::new("agentgate test CA");
    let (cert, key) = write_pair(s.path(), "server", &ca.server("gw"));
    let (_, other_key) = write_pair(s.path(), "other", &ca.server("other"));
    let garbage = s.write("garbage.pem", "not a PEM file\n");
    let missing = s.file("missing.pem");
    let cases: Vec<(String, &str)> = vec![
        (format!("tls_cert_file = {}", toml_str(&cert)), "server.tls_key_file"),
        (format!("tls_key_file = {}", toml_str(&key)), "server.tls_cert_file"),
        (tls_keys(&missing, &key), "server.tls_cert_file"),
        (tls_keys(Path::new(&garbage), &key), "server.tls_cert_file"),
        (tls_keys(&cert, Path::new(&garbage)), "server.tls_key_file"),
        (tls_keys(&cert, &other_key), "server.tls_key_file"),
        ("trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/40\"]".to_owned(), "server.trusted_proxies[1]"),
    ];
    for (i, (server_keys, key_named)) in cases.iter().enumerate() {
        let cfg = config(&s, &format!("bad{i}.toml"), server_keys, "");
        let out = s.run(&["serve", "--config", &cfg], &env());
        assert_status(&out, 64);
        assert!(stderr_of(&out).contains(&format!("`{key_named}`")), "{server_keys}: {}", describe(&out));
    }
    // A CA file goes with rediss://; rediss:// with a readable CA file loads.
    let ca_file = ca.write(s.path(), "ca.pem");
    let backend =
        format!("[backend]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_ca_file = {}\n", toml_str(&ca_file));
    let cfg = config(&s, "redis-ca.toml", "", &backend);
    let out = s.run(&["serve", "--config", &cfg], &env());
    assert_status(&out, 64);
    assert!(stderr_of(&out).contains("`backend.redis_ca_file`"), "{}", describe(&out));
    let backend =
        format!("[backend]\nredis_url = \"rediss://127.0.0.1:6379\"\nredis_ca_file = {}\n", toml_str(&missing));
    let cfg = config(&s, "redis-ca-missing.toml", "", &backend);
    let out = s.run(&["doctor", "--offline", "--config", &cfg], &env());
    assert_status(&out, 1);
    assert!(stdout_of(&out).contains("backend.redis_ca_file"), "{}", describe(&out));
    let backend =
        format!("[backend]\nredis_url = \"rediss://127.0.0.1:6379\"\nredis_ca_file = {}\n", toml_str(&ca_file));
    let cfg = config(&s, "rediss.toml", "", &backend);
    let out = s.run(&["doctor", "--offline", "--config", &cfg], &env());
    assert_status(&out, 0);

    // doctor on a TLS config: the files, and a private key others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = config(&s, "tls-doctor.toml", &tls_keys(&cert, &key), "");
    let out = s.run(&["doctor", "--offline", "--config", &cfg], &env());
    assert_status(&out, 0);
    find_line(&out, "info", "server.tls_cert_file", &["TLS on server.listen", "SIGHUP"]);
    find_line(&out, "warning", "server.tls_key_file", &["readable by group or others", "chmod 600"]);
}

#[test]
fn tls_serves_wss_to_clients_that_trust_its_ca_and_names_the_tls_error_to_others() {
    let s = Sandbox::new();
    let ca = Ca::new("agentgate test CA");
    let (cert, key) = write_pair(s.path(), "server", &ca.server("gw"));
    let ca_file = ca.write(s.path(), "ca.pem");
    let ca_arg = ca_file.display().to_string();
    let cfg = config(&s, "tls.toml", &tls_keys(&cert, &key), "");
    let server = s.serve(&[], &cfg, &env());
    let token = s.mint(&cfg, &["--sub", "alice"], &env());
    let url = wss(&server);

    // agentgate connect (tokio-tungstenite + rustls), trusting only the test CA.
    let out = s.run(&["connect", &url, "--ca-file", &ca_arg, "--run", "demo"], &[("AGENTGATE_TOKEN", &token)]);
    assert_status(&out, 0);
    let lines = lines(&out);
    assert!(lines[0].contains("\"type\":\"welcome\""), "{}", describe(&out));
    assert!(lines.iter().any(|l| l.contains("agent_completed")), "{}", describe(&out));

    // Without --ca-file: the system's roots do not hold the test CA: exit 6, naming it.
    let out = s.run(&["connect", &url], &[("AGENTGATE_TOKEN", &token)]);
    assert_status(&out, 6);
    let err = stderr_of(&out);
    assert!(err.contains("invalid peer certificate: UnknownIssuer"), "{err}");
    assert!(err.contains("network (exit 6)") && err.contains("--ca-file"), "{err}");

    // Plain ws:// to the TLS port is not served.
    let out = s.run(&["connect", &server.url()], &[("AGENTGATE_TOKEN", &token)]);
    assert!(!out.status.success(), "{}", describe(&out));

    // doctor --url: connected with --ca-file; without, the finding names the TLS error.
    let out = s.run(&["doctor", "--offline", "--url", &url, "--ca-file", &ca_arg], &[("AGENTGATE_TOKEN", &token)]);
    assert_status(&out, 0);
    assert!(stdout_of(&out).contains("connected to wss://"), "{}", describe(&out));
    let out = s.run(&["doctor", "--offline", "--url", &url], &[("AGENTGATE_TOKEN", &token)]);
    assert_status(&out, 1);
    let line = find_line(&out, "error", "--url", &["UnknownIssuer"]);
    assert!(line.contains("--ca-file") && !line.contains("check that the gateway is running"), "{line}");

    // A rustls client in this process, with a live connection.
    block_on(async {
        let (outcome, ws) =
            connect_with(&url, &[("authorization", &format!("Bearer {token}"))], connector(&ca_file)).await;
        assert_eq!(outcome.welcome()["type"], "welcome");
        close(ws).await;
    });

    // Another language's TLS stack: Python's ssl module, speaking the WebSocket
    // handshake by hand.
    let out = python_wss(&server, &ca_file, &token);
    assert!(out.status.success(), "python client: {}", describe(&out));
    let text = stdout_of(&out);
    assert!(text.contains("HTTP/1.1 101"), "{text}");
    assert!(text.contains("\"type\":\"welcome\""), "{text}");
    assert!(text.contains("TLSv1.3") || text.contains("TLSv1.2"), "{text}");

    // /metrics over https: the handshakes refused above (no --ca-file, plain ws://) are
    // counted as failed TLS handshakes.
    let metrics = python_https_get(&server, "/metrics", &ca_file);
    assert!(metrics.status.success(), "{}", describe(&metrics));
    let text = stdout_of(&metrics);
    let failed = text
        .lines()
        .find(|l| l.starts_with("agentgate_tls_handshake_failures_total{reason=\"error\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no TLS failure series in:\n{text}"));
    assert!(failed >= 2.0, "{failed}");
}

/// `GET path` over https with Python's urllib, trusting only `ca`.
fn python_https_get(server: &Server, path: &str, ca: &Path) -> std::process::Output {
    const SCRIPT: &str = "import ssl, sys, urllib.request\n\
        ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
        print(urllib.request.urlopen(sys.argv[1], context=ctx, timeout=10).read().decode())\n";
    let url = format!("https://{}{path}", server.addr());
    Command::new("python3")
        .args(["-c", SCRIPT, &url, &ca.display().to_string()])
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed for this test ({e}); install python3"))
}

/// A WebSocket handshake over Python's `ssl` (trusting only `ca`), printing the status
/// line, the TLS version and the first frame.
fn python_wss(server: &Server, ca: &Path, token: &str) -> std::process::Output {
    const SCRIPT: &str = r#"
import base64, os, socket, ssl, sys
host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /v1/ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: agentgate.v1\r\n"
               "Authorization: Bearer %s\r\n\r\n" % (host, port, key, os.environ["AGENTGATE_TOKEN"])).encode())
    buf = b""
    def need(n):
        global buf
        while len(buf) < n:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit("connection closed early")
            buf += chunk
    while b"\r\n\r\n" not in buf:
        need(len(buf) + 1)
    head, buf = buf.split(b"\r\n\r\n", 1)
    print(head.split(b"\r\n")[0].decode())
    print(s.version())
    need(2)
    n = buf[1] & 0x7F
    off = 2
    if n == 126:
        need(4); n = int.from_bytes(buf[2:4], "big"); off = 4
    elif n == 127:
        need(10); n = int.from_bytes(buf[2:10], "big"); off = 10
    need(off + n)
    print(buf[off:off + n].decode())
"#;
    let addr = server.addr();
    let out = Command::new("python3")
        .args(["-c", SCRIPT, &addr.ip().to_string(), &addr.port().to_string(), &ca.display().to_string()])
        .env("AGENTGATE_TOKEN", token)
        .output();
    match out {
        Ok(o) => o,
        Err(e) => {
            panic!("python3 is needed for the second TLS client ({e}); install python3 (apt-get install python3)")
        }
    }
}

#[test]
fn sighup_reloads_the_pair_for_new_handshakes_keeps_live_connections_and_survives_broken_files() {
    let s = Sandbox::new();
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let (cert, key) = write_pair(s.path(), "server", &old_ca.server("gw-old"));
    let old_ca_file = old_ca.write(s.path(), "old-ca.pem");
    let new_ca_file = new_ca.write(s.path(), "new-ca.pem");
    let cfg = config(&s, "tls.toml", &tls_keys(&cert, &key), "");
    let server = s.serve(&[], &cfg, &env());
    let token = s.mint(&cfg, &["--sub", "alice"], &env());
    let url = wss(&server);
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];
    let connects = |ca: &Path| block_on(async { connect_with(&url, &headers, connector(ca)).await.0.code() });

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (outcome, live) = rt.block_on(connect_with(&url, &headers, connector(&old_ca_file)));
    assert_eq!(outcome.code(), "accepted");
    let mut live = live.expect("live socket");

    // The new pair (another CA) goes in both files; SIGHUP.
    write_pair(s.path(), "server", &new_ca.server("gw-new"));
    sighup(&server);
    wait_log(&server, "TLS certificate and key reloaded");
    assert_eq!(connects(&new_ca_file), "accepted", "new handshakes get the new certificate");
    let out =
        s.run(&["connect", &url, "--ca-file", &old_ca_file.display().to_string()], &[("AGENTGATE_TOKEN", &token)]);
    assert_status(&out, 6);

    // The connection made before the reload lives on.
    rt.block_on(async {
        let run = json!({"type": "run.start", "ref": "r1", "agent": "demo", "input": {}});
        live.send(Message::Text(run.to_string().into())).await.expect("send on the live connection");
        loop {
            match next_frame(&mut live).await {
                Frame::Text(v) if v["type"] == "agent_completed" => break,
                Frame::Text(_) => {}
                other => panic!("the live connection ended: {other:?}"),
            }
        }
    });

    // A broken key, then a key that does not match: the reload fails, the pair stays.
    std::fs::write(s.file("server.key"), "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n").unwrap();
    sighup(&server);
    wait_log(&server, "TLS reload failed");
    assert_eq!(connects(&new_ca_file), "accepted");
    let (_, other_key) = write_pair(s.path(), "other", &new_ca.server("other"));
    std::fs::copy(&other_key, s.file("server.key")).unwrap();
    sighup(&server);
    let deadline = Instant::now() + START_TIMEOUT;
    while server.logs().matches("TLS reload failed").count() < 2 {
        assert!(Instant::now() < deadline, "second failed reload not logged:\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.logs().contains("does not match the certificate"), "{}", server.logs());
    assert_eq!(connects(&new_ca_file), "accepted", "still the last good pair");
    rt.block_on(close(Some(live)));
}

#[test]
fn sighup_without_tls_is_logged_and_ignored() {
    let s = Sandbox::new();
    let cfg = config(&s, "plain.toml", "", "");
    let mut server = s.serve(&[], &cfg, &env());
    let token = s.mint(&cfg, &["--sub", "alice"], &env());
    sighup(&server);
    wait_log(&server, "SIGHUP received and ignored");
    assert!(server.child.try_wait().unwrap().is_none(), "SIGHUP must not end the process");
    let out = s.run(&["connect", &server.url(), "--run", "demo"], &[("AGENTGATE_TOKEN", &token)]);
    assert_status(&out, 0);
    assert!(server.terminate().success());
}

#[test]
fn per_ip_limits_count_the_forwarded_address_from_trusted_proxies_only() {
    let s = Sandbox::new();
    let limits = "[limits]\nconnections_per_ip = 1\n";
    let trusted = config(&s, "trusted.toml", "trusted_proxies = [\"127.0.0.0/8\"]", limits);
    let server = s.serve(&[], &trusted, &env());
    let token = s.mint(&trusted, &["--sub", "alice"], &env());
    let url = server.url();
    block_on(async {
        let a = connect_bearer(&url, &token, &[("x-forwarded-for", "203.0.113.7")]).await;
        assert_eq!(a.0.code(), "accepted");
        // Another client behind the same proxy: its own count.
        let b = connect_bearer(&url, &token, &[("x-forwarded-for", "198.51.100.9, 127.0.0.1")]).await;
        assert_eq!(b.0.code(), "accepted");
        // The first client again (rightmost untrusted entry of two headers): refused.
        let c =
            connect_bearer(&url, &token, &[("x-forwarded-for", "192.0.2.1"), ("x-forwarded-for", "203.0.113.7")]).await;
        c.0.assert_http(429, "too_many_connections");
        close(a.1).await;
        close(b.1).await;
    });
    wait_log(&server, "203.0.113.7:0");

    // Without trusted proxies, X-Forwarded-For is ignored: both count as 127.0.0.1.
    let plain = config(&s, "untrusted.toml", "", limits);
    let server = s.serve(&[], &plain, &env());
    let url = server.url();
    block_on(async {
        let a = connect_bearer(&url, &token, &[("x-forwarded-for", "203.0.113.7")]).await;
        assert_eq!(a.0.code(), "accepted");
        let b = connect_bearer(&url, &token, &[("x-forwarded-for", "198.51.100.9")]).await;
        b.0.assert_http(429, "too_many_connections");
        close(a.1).await;
    });
}
