//! End-to-end tests of `agentgate doctor` (CONFIG.md: the `doctor` row; STYLE.md
//! section 4): the real binary on real configuration files, and `--url` against a
//! gateway started with `agentgate serve`. Exit 0 without errors (warnings allowed),
//! 1 with errors, 64 for usage errors; every finding names its key and its fix; no
//! secret or token is ever printed, only fingerprints.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use support::*;

/// `doctor --json`, parsed.
fn doctor_json(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> (i32, Value) {
    let mut full = args.to_vec();
    full.push("--json");
    let out = sb.doctor(&full, env);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("JSON ({e}): {}", describe(&out)));
    (out.status.code().expect("exit status"), v)
}

/// The fingerprints of the keys of issuer `name` in a `--json` report.
fn key_fingerprints(report: &Value, issuer: &str) -> Vec<String> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["data"]["issuer"] == issuer && f["data"]["kind"].is_string())
        .map(|f| f["data"]["fingerprint"].as_str().expect("fingerprint").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------
// Configuration checks
// ---------------------------------------------------------------------------------

#[test]
fn a_good_config_exits_0_and_lists_the_key_fingerprint() {
    let sb = Sandbox::new();
    let cfg = sb.config("good.toml", &format!("{}{}", hs_issuer("main", "AG_DOC_SECRET"), api_key_section()));
    let out = sb.doctor(&["--config", &cfg], &[("AG_DOC_SECRET", SECRET)]);
    assert_status(&out, 0);
    let fp = fingerprint(SECRET.as_bytes());
    find_line(&out, "info", "auth.jwt[0].secret_env", &["issuer \"main\"", &format!("fingerprint={fp}"), "kid=-"]);
    find_line(&out, "info", "auth.api_keys[0]", &["\"ci\"", &sha256_hex(API_KEY.as_bytes())[..8]]);
    find_line(&out, "info", "server.listen", &["loopback"]);
    assert!(!stdout_of(&out).contains("\nerror"), "{}", describe(&out));
    let last = lines(&out).pop().unwrap();
    assert_eq!(last, "agentgate doctor: 0 errors, 0 warnings, 6 info", "{}", describe(&out));
}

#[test]
fn the_development_defaults_name_the_dev_key_path() {
    let sb = Sandbox::new();
    let out = sb.doctor(&[], &[]);
    assert_status(&out, 0);
    let line = find_line(&out, "info", "development key", &["dev-hs256.key"]);
    assert!(line.contains(&sb.file("home").display().to_string()) || line.contains("home/dev-hs256.key"), "{line}");
    let key = std::fs::read_to_string(sb.file("home").join("dev-hs256.key")).expect("dev key");
    assert_no_piece_of("development key", key.trim(), 10, &describe(&out));
    find_line(&out, "info", "development key", &[&format!("fingerprint={}", fingerprint(key.trim().as_bytes()))]);
}

#[test]
fn a_missing_secret_variable_exits_1_naming_the_key_and_the_variable() {
    let sb = Sandbox::new();
    let cfg = sb.config("missing.toml", &hs_issuer("main", "AG_DOC_UNSET"));
    let out = sb.doctor(&["--config", &cfg], &[]);
    assert_status(&out, 1);
    let line = find_line(&out, "error", "auth.jwt[0].secret_env", &["AG_DOC_UNSET", "not set", "Fix:"]);
    assert!(line.contains("export it, or point secret_file"), "{line}");
    assert_eq!(lines(&out).iter().filter(|l| l.starts_with("error")).count(), 1, "reported once:\n{}", describe(&out));
}

#[test]
fn every_missing_or_empty_secret_is_named_in_one_run() {
    let sb = Sandbox::new();
    let missing_file = sb.file("no-such-secret").display().to_string();
    let extra = format!(
        "{}{}[[auth.jwt]]\nname = \"c\"\nalgorithms = [\"HS256\"]\nsecret_file = {}\n",
        hs_issuer("a", "AG_DOC_A"),
        hs_issuer("b", "AG_DOC_B"),
        Value::String(missing_file.clone())
    );
    let cfg = sb.config("three.toml", &extra);
    let out = sb.doctor(&["--config", &cfg], &[("AG_DOC_B", "")]);
    assert_status(&out, 1);
    find_line(&out, "error", "auth.jwt[0].secret_env", &["AG_DOC_A", "not set"]);
    find_line(&out, "error", "auth.jwt[1].secret_env", &["AG_DOC_B", "empty"]);
    find_line(&out, "error", "auth.jwt[2].secret_file", &[&missing_file]);
}

#[test]
fn a_short_secret_is_an_error_in_production_and_a_warning_in_development() {
    let sb = Sandbox::new();
    let short = "k3Y9-qW2zX";
    let env = [("AG_DOC_SHORT", short)];
    let prod = sb.config("prod.toml", &format!("profile = \"production\"\n{}", hs_issuer("main", "AG_DOC_SHORT")));
    let out = sb.doctor(&["--config", &prod], &env);
    assert_status(&out, 1);
    let fp = fingerprint(short.as_bytes());
    find_line(&out, "error", "auth.jwt[0].secret_env", &["10 bytes", "at least 32", &fp, "openssl rand"]);
    assert!(!describe(&out).contains(short), "the secret is never printed");

    let dev = sb.config("dev.toml", &hs_issuer("main", "AG_DOC_SHORT"));
    let out = sb.doctor(&["--config", &dev], &env);
    assert_status(&out, 0);
    find_line(&out, "warning", "auth.jwt[0].secret_env", &["10 bytes", "production"]);
    assert!(lines(&out).last().unwrap().contains("0 errors, 1 warning"), "{}", describe(&out));
}

#[test]
fn a_placeholder_secret_is_named_by_fingerprint_never_by_value() {
    let sb = Sandbox::new();
    // Long enough to pass the length check: only the placeholder finding remains.
    let placeholder = "changeme-changeme-changeme-changeme";
    let prod = sb.config("prod.toml", &format!("profile = \"production\"\n{}", hs_issuer("main", "AG_DOC_PH")));
    let out = sb.doctor(&["--config", &prod], &[("AG_DOC_PH", placeholder)]);
    assert_status(&out, 1);
    find_line(&out, "error", "auth.jwt[0].secret_env", &["placeholder", &fingerprint(placeholder.as_bytes())]);
    assert!(!describe(&out).to_lowercase().contains("changeme"), "the secret is never printed:\n{}", describe(&out));

    for word in ["secret", "Password", "test-token-12345"] {
        let dev = sb.config("dev.toml", &hs_issuer("main", "AG_DOC_PH"));
        let out = sb.doctor(&["--config", &dev], &[("AG_DOC_PH", word)]);
        assert_status(&out, 0);
        find_line(&out, "warning", "auth.jwt[0].secret_env", &["placeholder"]);
    }
}

#[test]
fn a_world_readable_secret_file_is_a_warning_with_chmod_600() {
    let sb = Sandbox::new();
    let path = sb.write("jwt.secret", &format!("{SECRET}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let issuer =
        format!("[[auth.jwt]]\nname = \"main\"\nalgorithms = [\"HS256\"]\nsecret_file = {}\n", toml_str(path.as_ref()));
    let cfg = sb.config("file.toml", &issuer);
    let out = sb.doctor(&["--config", &cfg], &[]);
    assert_status(&out, 0);
    find_line(&out, "warning", "auth.jwt[0].secret_file", &["0644", &format!("chmod 600 {path}")]);
    find_line(&out, "info", "auth.jwt[0].secret_file", &[&format!("fingerprint={}", fingerprint(SECRET.as_bytes()))]);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = sb.doctor(&["--config", &cfg], &[]);
    assert_status(&out, 0);
    assert!(!stdout_of(&out).contains("chmod"), "{}", describe(&out));
}

#[test]
fn an_unknown_key_exits_1_and_names_it() {
    let sb = Sandbox::new();
    let cfg = sb.config("typo.toml", "[auth]\nfirst_mesage = true\n");
    let out = sb.doctor(&["--config", &cfg], &[]);
    assert_status(&out, 1);
    find_line(&out, "error", "auth.first_mesage", &["unknown field", "Fix:", "spelling"]);
}

#[test]
fn production_exposure_and_plain_http_origins_are_warnings() {
    let sb = Sandbox::new();
    let cfg = sb.write(
        "exposed.toml",
        &format!(
            "[server]\nlisten = \"0.0.0.0:8079\"\nprofile = \"production\"\nallowed_origins = [\"http://app.example.com\"]\n{}",
            hs_issuer("main", "AG_DOC_SECRET")
        ),
    );
    let out = sb.doctor(&["--config", &cfg], &[("AG_DOC_SECRET", SECRET)]);
    assert_status(&out, 0);
    find_line(&out, "warning", "server.listen", &["TLS", "proxy"]);
    find_line(&out, "warning", "server.allowed_origins[0]", &["http://app.example.com", "https"]);

    let dev = sb.write("dev-exposed.toml", "[server]\nlisten = \"0.0.0.0:8079\"\n");
    let out = sb.doctor(&["--config", &dev], &[]);
    assert_status(&out, 0);
    find_line(&out, "warning", "server.profile", &["development", "beyond loopback"]);
}

#[test]
fn same_secrets_show_the_same_fingerprint_and_different_secrets_different_ones() {
    // INCIDENTS.md row 5: two environments compared without revealing a secret.
    let sb = Sandbox::new();
    let staging = sb.config("staging.toml", &hs_issuer("main", "AG_DOC_STAGING"));
    let prod = sb.config("prod.toml", &hs_issuer("main", "AG_DOC_PROD"));
    let env = [("AG_DOC_STAGING", SECRET), ("AG_DOC_PROD", OTHER_SECRET)];
    let (code, a) = doctor_json(&sb, &["--config", &staging], &env);
    assert_eq!(code, 0, "{a}");
    let (code, b) = doctor_json(&sb, &["--config", &prod], &env);
    assert_eq!(code, 0, "{b}");
    let (code, c) = doctor_json(&sb, &["--config", &prod], &[("AG_DOC_PROD", SECRET)]);
    assert_eq!(code, 0, "{c}");
    let (fa, fb, fc) = (key_fingerprints(&a, "main"), key_fingerprints(&b, "main"), key_fingerprints(&c, "main"));
    assert_eq!(fa, vec![fingerprint(SECRET.as_bytes())]);
    assert_eq!(fb, vec![fingerprint(OTHER_SECRET.as_bytes())]);
    assert_ne!(fa, fb, "different secrets, different fingerprints");
    assert_eq!(fa, fc, "the same secret, the same fingerprint");
}

#[test]
fn json_output_parses_with_counts_and_findings() {
    let sb = Sandbox::new();
    let cfg = sb.config("j.toml", &hs_issuer("main", "AG_DOC_SHORT"));
    let (code, v) = doctor_json(&sb, &["--config", &cfg], &[("AG_DOC_SHORT", "short")]);
    assert_eq!(code, 0);
    assert_eq!(v["ok"], true);
    let findings = v["findings"].as_array().expect("findings");
    let count = |s: &str| findings.iter().filter(|f| f["severity"] == s).count();
    assert_eq!(v["summary"]["errors"], count("error"));
    assert_eq!(v["summary"]["warnings"], count("warning"));
    assert_eq!(v["summary"]["info"], count("info"));
    assert_eq!(count("warning"), 1, "the short secret: {v}");
    for f in findings {
        assert!(f["key"].is_string() && f["message"].is_string(), "{f}");
        if f["severity"] != "info" {
            assert!(f["fix"].is_string(), "errors and warnings carry a fix: {f}");
        }
    }

    let (code, v) = doctor_json(&sb, &["--config", &cfg], &[]);
    assert_eq!(code, 1);
    assert_eq!(v["ok"], false);
    assert_eq!(v["findings"][0]["severity"], "error");
    assert_eq!(v["findings"][0]["key"], "auth.jwt[0].secret_env");
}

#[test]
fn jwks_urls_are_fetched_unless_offline_and_failures_are_errors() {
    let sb = Sandbox::new();
    let key = b"0123456789abcdef0123456789abcdef-jwks";
    let jwks = format!(r#"{{"keys":[{{"kty":"oct","kid":"k-2025","k":"{}"}}]}}"#, URL_SAFE_NO_PAD.encode(key));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let jwks_addr = listener.local_addr().unwrap();
    // One answer per connection, for at most 30 s and 4 connections.
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut served = 0;
        while served < 4 && std::time::Instant::now() < deadline {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            served += 1;
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                jwks.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    let issuer = |url: &str| format!("[[auth.jwt]]\nname = \"idp\"\nalgorithms = [\"HS256\"]\njwks_url = \"{url}\"\n");
    let good = sb.config("jwks.toml", &issuer(&format!("http://{jwks_addr}/jwks.json")));
    let out = sb.doctor(&["--config", &good], &[]);
    assert_status(&out, 0);
    find_line(&out, "info", "auth.jwt[0].jwks_url", &["1 usable key", "k-2025"]);
    find_line(&out, "info", "auth.jwt[0].jwks_url", &["kid=k-2025", &format!("fingerprint={}", fingerprint(key))]);

    let out = sb.doctor(&["--config", &good, "--offline"], &[]);
    assert_status(&out, 0);
    find_line(&out, "info", "auth.jwt[0].jwks_url", &["not fetched", "--offline"]);

    let port = closed_port();
    let bad = sb.config("bad-jwks.toml", &issuer(&format!("http://127.0.0.1:{port}/jwks.json")));
    let out = sb.doctor(&["--config", &bad], &[]);
    assert_status(&out, 1);
    find_line(&out, "error", "auth.jwt[0].jwks_url", &[&format!("127.0.0.1:{port}"), "cannot connect", "Fix:"]);
}

#[test]
fn mcp_programs_missing_from_path_are_warnings_unless_offline() {
    let sb = Sandbox::new();
    let cfg = sb.config(
        "mcp.toml",
        "[[mcp.servers]]\nname = \"ghost\"\ncommand = [\"agentgate-no-such-program\", \"--token\", \"hidden-arg-value\"]\n\
         [[mcp.servers]]\nname = \"shell\"\ncommand = [\"sh\", \"-c\", \"cat\"]\n",
    );
    let path = std::env::var("PATH").unwrap_or_default();
    let out = sb.doctor(&["--config", &cfg], &[("PATH", &path)]);
    assert_status(&out, 0);
    find_line(&out, "warning", "mcp.servers[0].command", &["agentgate-no-such-program", "not found on PATH"]);
    find_line(&out, "info", "mcp.servers[1]", &["\"shell\"", "found at"]);
    assert!(!stdout_of(&out).contains("hidden-arg-value"), "arguments are not shown");

    let out = sb.doctor(&["--config", &cfg, "--offline"], &[("PATH", &path)]);
    assert_status(&out, 0);
    assert!(!lines(&out).iter().any(|l| l.starts_with("warning")), "{}", describe(&out));
    find_line(&out, "info", "mcp.servers[0]", &["--offline"]);
}

#[test]
fn http_agents_are_listed_by_bearer_fingerprint_and_a_missing_bearer_is_named() {
    let sb = Sandbox::new();
    let bearer = "upstream-bearer-7Hq2Lx9Pz4Wm1Nc8";
    let cfg = sb.config(
        "agents.toml",
        "[[agents]]\nname = \"research\"\nkind = \"http\"\nurl = \"http://user:pw-in-url@127.0.0.1:9/run?k=v\"\n\
         secret_env = \"AG_DOC_AGENT\"\n",
    );
    let out = sb.doctor(&["--config", &cfg, "--offline"], &[("AG_DOC_AGENT", bearer)]);
    assert_status(&out, 0);
    find_line(
        &out,
        "info",
        "agents",
        &["research (http upstream http://127.0.0.1:9/run", &fingerprint(bearer.as_bytes())],
    );
    assert!(!describe(&out).contains("pw-in-url") && !describe(&out).contains(bearer), "{}", describe(&out));

    let out = sb.doctor(&["--config", &cfg, "--offline"], &[]);
    assert_status(&out, 1);
    find_line(&out, "error", "agents[0].secret_env", &["AG_DOC_AGENT", "not set", "Fix: export it."]);
}

#[test]
fn usage_errors_exit_64() {
    let sb = Sandbox::new();
    assert_status(&sb.doctor(&["--token-env", "X"], &[]), 64);
    assert_status(&sb.doctor(&["--url", "http://127.0.0.1:1/v1/ws"], &[]), 64);
    assert_status(&sb.doctor(&["--no-such-flag"], &[]), 64);
}

// ---------------------------------------------------------------------------------
// backend.kind = "redis": PING at backend.redis_url (INCIDENTS.md row 8)
// ---------------------------------------------------------------------------------

/// The `requirepass` of the test Redis (never a real one).
const REDIS_PASSWORD: &str = "rds-pw-Tq8Lm3Vx9Kc2Wz7Hn4Bj";

/// A config with `backend.kind = "redis"` at `url`.
fn redis_config(sb: &Sandbox, name: &str, url: &str) -> String {
    sb.config(name, &format!("[backend]\nkind = \"redis\"\nredis_url = \"{url}\"\n"))
}

#[test]
fn rediss_is_probed_over_tls_verified_by_redis_ca_file_and_names_the_tls_error_without_it() {
    let sb = Sandbox::new();
    let ca = support::pki::Ca::new("redis test CA");
    let (cert, key) = support::pki::write_pair(sb.path(), "redis", &ca.server("redis"));
    let ca_file = ca.write(sb.path(), "redis-ca.pem");
    let redis = RedisServer::start_tls(REDIS_PASSWORD, &cert, &key);
    let url = format!("rediss://:{REDIS_PASSWORD}@{}", redis.addr());
    let shown = format!("rediss://:****@{}", redis.addr());
    let with_ca = sb.config(
        "rediss.toml",
        &format!("[backend]\nkind = \"redis\"\nredis_url = \"{url}\"\nredis_ca_file = {}\n", toml_str(&ca_file)),
    );
    let out = sb.doctor(&["--config", &with_ca], &[]);
    find_line(&out, "info", "backend.redis_url", &["reachable", "PONG", "over TLS", "backend.redis_ca_file", &shown]);
    assert_no_piece_of("Redis password", REDIS_PASSWORD, 8, &describe(&out));

    // Without the CA file the system's roots do not know the test CA: the TLS error is
    // named, with the fix.
    let without = redis_config(&sb, "rediss-no-ca.toml", &url);
    let out = sb.doctor(&["--config", &without], &[]);
    assert_status(&out, 1);
    let line = find_line(&out, "error", "backend.redis_url", &["TLS", "UnknownIssuer", "Fix:"]);
    assert!(line.contains("backend.redis_ca_file"), "{line}");
    assert_no_piece_of("Redis password", REDIS_PASSWORD, 8, &describe(&out));
}

#[test]
fn redis_without_a_password_is_named_noauth_and_with_one_reachable_never_printed() {
    let redis = RedisServer::start(REDIS_PASSWORD);
    let sb = Sandbox::new();
    let addr = redis.addr();
    let cfg = redis_config(&sb, "redis.toml", &format!("redis://{addr}"));
    let mut seen = String::new();

    // No password in the URL: NOAUTH, named as a missing password, with where to put it.
    let out = sb.doctor(&["--config", &cfg], &[]);
    assert_status(&out, 1);
    let line = find_line(
        &out,
        "error",
        "backend.redis_url",
        &["NOAUTH", "requires a password", "has none", &format!("redis://{addr}"), "Fix:"],
    );
    assert!(line.contains("redis://:PASSWORD@host:port") && line.contains("AGENTGATE_BACKEND__REDIS_URL"), "{line}");
    assert!(
        !lines(&out).iter().any(|l| l.contains("backend.kind")),
        "the Redis backend is supported: {}",
        describe(&out)
    );
    seen.push_str(&describe(&out));

    // The password from the environment: reachable, shown masked.
    let with_pw = format!("redis://:{REDIS_PASSWORD}@{addr}");
    let env = [("AGENTGATE_BACKEND__REDIS_URL", with_pw.as_str())];
    let out = sb.doctor(&["--config", &cfg], &env);
    find_line(&out, "info", "backend.redis_url", &["reachable", "PONG", &format!("redis://:****@{addr}")]);
    assert!(!lines(&out).iter().any(|l| l.starts_with("error  backend.redis_url")), "{}", describe(&out));
    seen.push_str(&describe(&out));
    let (_, v) = doctor_json(&sb, &["--config", &cfg], &env);
    let f = v["findings"].as_array().unwrap().iter().find(|f| f["key"] == "backend.redis_url").expect("finding");
    assert_eq!((f["severity"].as_str(), f["data"]["result"].as_str()), (Some("info"), Some("reachable")), "{f}");
    seen.push_str(&v.to_string());

    // The same URL in the file.
    let in_file = redis_config(&sb, "in-file.toml", &with_pw);
    let out = sb.doctor(&["--config", &in_file], &[]);
    find_line(&out, "info", "backend.redis_url", &["reachable", &format!("redis://:****@{addr}")]);
    seen.push_str(&describe(&out));

    // A wrong password: named as such, and not printed either.
    let wrong = "wrong-pw-Zc5Rk1Yd6Mf3";
    let out = sb.doctor(&["--config", &cfg], &[("AGENTGATE_BACKEND__REDIS_URL", &format!("redis://:{wrong}@{addr}"))]);
    assert_status(&out, 1);
    find_line(
        &out,
        "error",
        "backend.redis_url",
        &["the password in backend.redis_url", "is wrong", &format!("redis://:****@{addr}"), "Fix:"],
    );
    assert_no_piece_of("wrong Redis password", wrong, 8, &describe(&out));

    // --offline: not probed.
    let out = sb.doctor(&["--config", &cfg, "--offline"], &[]);
    find_line(&out, "info", "backend.redis_url", &["not probed", "--offline"]);
    assert!(!stdout_of(&out).contains("NOAUTH"), "{}", describe(&out));

    assert_no_piece_of("Redis password", REDIS_PASSWORD, 8, &seen);
}

#[test]
fn redis_with_nothing_listening_is_a_network_error_naming_the_address() {
    let sb = Sandbox::new();
    let port = closed_port();
    let pw = "nobody-listens-pw-8Hs2Qe";
    let cfg = redis_config(&sb, "redis.toml", &format!("redis://:{pw}@127.0.0.1:{port}"));
    let out = sb.doctor(&["--config", &cfg], &[]);
    assert_status(&out, 1);
    find_line(
        &out,
        "error",
        "backend.redis_url",
        &[&format!("127.0.0.1:{port}"), "connection refused", &format!("redis://:****@127.0.0.1:{port}"), "Fix:"],
    );
    assert_no_piece_of("Redis password", pw, 8, &describe(&out));
}

#[test]
fn redis_that_never_answers_times_out_after_3_s() {
    let sb = Sandbox::new();
    // Connections complete in the backlog, but nothing ever answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let cfg = redis_config(&sb, "redis.toml", &format!("redis://{addr}"));
    let started = std::time::Instant::now();
    let out = sb.doctor(&["--config", &cfg], &[]);
    let took = started.elapsed();
    assert_status(&out, 1);
    find_line(&out, "error", "backend.redis_url", &[&addr.to_string(), "timed out", "3 s", "Fix:"]);
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(15), "{took:?}");
    drop(silent);
}

// ---------------------------------------------------------------------------------
// --url: one real connection
// ---------------------------------------------------------------------------------

#[test]
fn url_checks_against_a_running_gateway() {
    let sb = Sandbox::new();
    let cfg = sb.config("gw.toml", &hs_issuer("main", "AG_DOC_SECRET"));
    let other = sb.config("other.toml", &hs_issuer("main", "AG_DOC_OTHER"));
    let env = [("AG_DOC_SECRET", SECRET)];
    let mut server = sb.serve(&[], &cfg, &env);
    let url = server.url();
    let good = sb.mint(&cfg, &["--sub", "alice", "--tenant", "acme"], &env);
    let mut seen = String::new();
    let forged = sb.mint(&other, &["--sub", "alice"], &[("AG_DOC_OTHER", OTHER_SECRET)]);

    // Success: the welcome's session, principal, via and expiry.
    let out = sb.doctor(&["--config", &cfg, "--url", &url], &[("AG_DOC_SECRET", SECRET), ("AGENTGATE_TOKEN", &good)]);
    assert_status(&out, 0);
    let line =
        find_line(&out, "info", "--url", &["connected", "session s_", "principal alice", "acme", "via jwt:main"]);
    assert!(line.contains("expires_at") && line.contains(&fingerprint(good.as_bytes())), "{line}");
    find_line(&out, "info", "--url", &["same verdict", "accepted"]);
    seen.push_str(&describe(&out));

    // A token signed with another secret: the reason code and the request id.
    let out = sb.doctor(
        &["--config", &cfg, "--url", &url, "--token-env", "MY_TOKEN"],
        &[("AG_DOC_SECRET", SECRET), ("MY_TOKEN", &forged)],
    );
    assert_status(&out, 1);
    find_line(&out, "error", "--url", &["HTTP 401", "signature_invalid", "request_id req_", "Fix:"]);
    seen.push_str(&describe(&out));

    // The token from a file.
    let token_file = sb.write("token", &format!("{good}\n"));
    let out = sb.doctor(&["--offline", "--url", &url, "--token-file", &token_file], &[]);
    assert_status(&out, 0);

    // The token variable is missing, or empty.
    let out = sb.doctor(&["--config", &cfg, "--url", &url, "--token-env", "AG_DOC_NO_TOKEN"], &env);
    assert_status(&out, 1);
    find_line(&out, "error", "AG_DOC_NO_TOKEN", &["not set", "Fix:"]);
    seen.push_str(&describe(&out));
    let out = sb.doctor(&["--config", &cfg, "--url", &url], &[("AG_DOC_SECRET", SECRET), ("AGENTGATE_TOKEN", "")]);
    assert_status(&out, 1);
    find_line(&out, "error", "AGENTGATE_TOKEN", &["empty", "token_missing"]);

    seen.push_str(&describe(&out));
    assert!(!seen.contains(&good) && !seen.contains(&forged), "no token is printed");
    assert_no_piece_of("secret", SECRET, 10, &seen);
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn url_with_nothing_listening_is_a_network_error() {
    let sb = Sandbox::new();
    let port = closed_port();
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let out = sb.doctor(&["--offline", "--url", &url], &[("AGENTGATE_TOKEN", "some-token-value")]);
    assert_status(&out, 1);
    let line = find_line(&out, "error", "--url", &["network", &format!("127.0.0.1:{port}"), "Fix:"]);
    assert!(line.contains("not an authentication failure"), "{line}");
    assert!(!describe(&out).contains("some-token-value"), "the token is never printed");
}

#[test]
fn no_secret_or_token_appears_in_any_output() {
    let sb = Sandbox::new();
    let cfg = sb.config("s.toml", &format!("{}{}", hs_issuer("main", "AG_DOC_SECRET"), api_key_section()));
    let env = [("AG_DOC_SECRET", SECRET)];
    let mut server = sb.serve(&[], &cfg, &env);
    let token = sb.mint(&cfg, &["--sub", "alice"], &env);
    let mut seen = String::new();
    for args in
        [vec!["--config", &cfg], vec!["--config", &cfg, "--json"], vec!["--config", &cfg, "--url", &server.url()]]
    {
        for t in [token.as_str(), API_KEY] {
            let out = sb.doctor(&args, &[("AG_DOC_SECRET", SECRET), ("AGENTGATE_TOKEN", t)]);
            assert!(out.status.code() == Some(0), "{}", describe(&out));
            seen.push_str(&describe(&out));
        }
    }
    assert_no_piece_of("secret", SECRET, 10, &seen);
    assert_no_piece_of("API key", API_KEY, 10, &seen);
    let sig = token.rsplit('.').next().unwrap();
    assert_no_piece_of("token signature", sig, 12, &seen);
    assert!(!seen.contains(token.split('.').nth(1).unwrap()), "no token payload");
    assert!(seen.contains(&fingerprint(SECRET.as_bytes())), "the secret's fingerprint is shown");
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn origins_are_reported_empty_means_pages_are_refused_and_a_star_is_a_warning() {
    let sb = Sandbox::new();
    let cfg = sb.config("default.toml", "");
    let out = sb.doctor(&["--config", &cfg, "--offline"], &[]);
    find_line(&out, "info", "server.allowed_origins", &["empty", "every browser page is refused", "Origin: null"]);
    let star = sb.config("star.toml", "allowed_origins = [\"*\"]");
    let out = sb.doctor(&["--config", &star, "--offline"], &[]);
    find_line(&out, "warning", "server.allowed_origins", &["any site", "Fix:"]);
    let listed = sb.config("listed.toml", "allowed_origins = [\"http://localhost:3000\"]");
    let out = sb.doctor(&["--config", &listed, "--offline"], &[]);
    find_line(&out, "info", "server.allowed_origins", &["http://localhost:3000"]);
}
