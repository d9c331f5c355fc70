//! End-to-end tests of the `agentgate` binary against the public contracts
//! (CONFIG.md: command line, config keys, development defaults, exit codes;
//! PROTOCOL.md: handshake rejections, welcome, shutdown; INCIDENTS.md rows 2, 4, 5).
//!
//! Every test runs the real binary with a fresh `AGENTGATE_HOME`, servers listen on
//! `127.0.0.1:0` and announce their port through `server.addr_file`, every spawned
//! process is killed when its guard drops, and every wait is bounded.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures_util::SinkExt;
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------

fn now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

fn decode_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).expect("JWT part");
    let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url JWT part");
    serde_json::from_slice(&bytes).expect("JSON JWT part")
}

fn header_of(token: &str) -> Value {
    decode_part(token, 0)
}

fn claims_of(token: &str) -> Value {
    decode_part(token, 1)
}

/// `aud` as a list, whether the token holds a string or an array.
fn aud_list(claims: &Value) -> Vec<String> {
    match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------

/// A bare HTTP/1.1 request to the server; returns (status, body).
fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("send request");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

// ---------------------------------------------------------------------------------
// 1. Development defaults
// ---------------------------------------------------------------------------------

#[test]
fn dev_defaults_create_private_key_once_and_accept_minted_tokens_across_restart() {
    let sb = Sandbox::new();
    let addr_file = sb.file("addr").display().to_string();
    let env = [("AGENTGATE_SERVER__LISTEN", "127.0.0.1:0"), ("AGENTGATE_SERVER__ADDR_FILE", addr_file.as_str())];
    let mut server = sb.start_server(&["serve"], &env, &sb.file("addr"));

    // The key file: created under $AGENTGATE_HOME, mode 0600, 256 bits as 64 hex digits.
    let key_path = sb.home().join("dev-hs256.key");
    let meta = std::fs::metadata(&key_path).expect("dev key file created at $AGENTGATE_HOME/dev-hs256.key");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "dev key file mode");
    }
    let key_text = std::fs::read_to_string(&key_path).unwrap();
    let key_value = key_text.trim().to_owned();
    assert_eq!(key_value.len(), 64, "64 hex digits: {key_value:?}");
    assert!(key_value.chars().all(|c| c.is_ascii_hexdigit()), "hex: {key_value:?}");

    // A token minted with no config (same AGENTGATE_HOME) is accepted.
    let token = sb.mint_args(&["--sub", "alice"], &[]);
    let claims = claims_of(&token);
    assert_eq!(claims["sub"], "alice");
    let url = server.url();
    block_on(async {
        let (outcome, ws) = connect_bearer(&url, &token, &[]).await;
        let w = outcome.welcome();
        assert_eq!(w["type"], "welcome");
        assert_eq!(w["protocol"], "agentgate.v1");
        assert!(w["session_id"].as_str().unwrap_or("").starts_with("s_"), "{w}");
        assert_eq!(w["resumed"], false);
        assert_eq!(w["principal"]["subject"], "alice");
        assert_eq!(w["principal"]["via"], "jwt:local");
        assert_eq!(w["principal"]["tenant"], Value::Null);
        assert_eq!(w["principal"]["scopes"], json!(["agents:run"]));
        assert_eq!(w["expires_at"], claims["exp"]);
        close(ws).await;
    });

    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "exit status on SIGTERM; output:\n{}", server.logs());
    let logs = server.logs();
    let shown = std::fs::canonicalize(&key_path).unwrap().display().to_string();
    assert!(server.stderr().contains(&shown), "start-up names the key file's absolute path {shown}:\n{logs}");
    assert!(logs.contains("token mint"), "start-up says how to mint a token:\n{logs}");
    assert!(!logs.contains(&key_value), "the dev key's value is never printed");
    assert!(!logs.contains(&key_value[..16]), "no part of the dev key's value is printed");
    assert!(!logs.contains(&token), "the token is never printed");
    drop(server);

    // A development config without [[auth.jwt]] uses the same development issuer.
    let no_jwt = sb.write("no-jwt.toml", "[server]\nlisten = \"127.0.0.1:0\"\n");
    let out = sb.run_with_stdin(&["token", "inspect", "--config", &no_jwt], &[], &token);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stdout_of(&out).contains("verdict: accepted"), "{}", describe(&out));
    assert!(stdout_of(&out).contains(&fingerprint(key_value.as_bytes())), "dev key fingerprint: {}", describe(&out));

    // Restart: the same key is reused, so the token minted before still works.
    let mut server = sb.start_server(&["serve"], &env, &sb.file("addr"));
    assert_eq!(std::fs::read_to_string(&key_path).unwrap().trim(), key_value, "dev key reused, not recreated");
    let url = server.url();
    block_on(async {
        let (outcome, ws) = connect_bearer(&url, &token, &[]).await;
        let w = outcome.welcome();
        assert_eq!(w["principal"]["via"], "jwt:local");
        assert_eq!(w["principal"]["subject"], "alice");
        close(ws).await;
    });
    assert_eq!(server.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------
// 2. token mint
// ---------------------------------------------------------------------------------

#[test]
fn token_mint_writes_tenant_scope_ttl_jti_and_claims_with_issuer_iss_and_aud() {
    let sb = Sandbox::new();
    let cfg = sb.write(
        "agentgate.toml",
        "[[auth.jwt]]\nname = \"main\"\nalgorithms = [\"HS256\"]\nsecret_env = \"AG_CLI_HS\"\n\
         issuer = \"https://issuer.test\"\naudience = [\"agentgate\"]\n\
         tenant_claim = \"org_id\"\nscope_claim = \"permissions\"\n",
    );
    let cfg = cfg.as_str();
    let env = [("AG_CLI_HS", SECRET)];
    let before = now();
    let token = sb.mint(
        cfg,
        &[
            "--sub",
            "bob",
            "--tenant",
            "acme",
            "--scope",
            "agents:run reports:read",
            "--ttl",
            "120",
            "--jti",
            "jti-cli-1",
            "--claim",
            "level=3",
            "--claim",
            r#"flags={"beta":true,"n":[1,2]}"#,
            "--claim",
            "note=hello world",
            "--claim",
            "ok=true",
        ],
        &env,
    );
    let after = now();
    assert_eq!(header_of(&token)["alg"], "HS256");
    let c = claims_of(&token);
    assert_eq!(c["sub"], "bob");
    assert_eq!(c["org_id"], "acme", "--tenant writes the issuer's tenant_claim: {c}");
    assert_eq!(c["permissions"], "agents:run reports:read", "--scope writes scope_claim as a string: {c}");
    assert_eq!(c["jti"], "jti-cli-1");
    assert_eq!(c["level"], json!(3), "JSON claim values are parsed: {c}");
    assert_eq!(c["flags"], json!({"beta": true, "n": [1, 2]}));
    assert_eq!(c["ok"], json!(true));
    assert_eq!(c["note"], "hello world", "non-JSON claim values are strings: {c}");
    assert_eq!(c["iss"], "https://issuer.test", "iss from the issuer config: {c}");
    assert_eq!(aud_list(&c), vec!["agentgate".to_owned()], "aud from the issuer config: {c}");
    let exp = c["exp"].as_i64().expect("exp");
    assert!(exp >= before + 120 && exp <= after + 120, "exp = now + ttl: {exp} vs {before}..{after}");

    // The same configuration accepts it.
    let out = sb.run_with_stdin(&["token", "inspect", "--config", cfg], &env, &token);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stdout_of(&out).contains("verdict: accepted"), "{}", describe(&out));

    // Defaults: scope `agents:run` in claim `scope`, ttl 900, tenant claim `tenant`.
    let cfg2 = sb.write("defaults.toml", &hs_issuer("local", "AG_CLI_HS"));
    let before = now();
    let token = sb.mint(&cfg2, &["--sub", "carol", "--tenant", "t1"], &env);
    let after = now();
    let c = claims_of(&token);
    assert_eq!(c["scope"], "agents:run", "--scope defaults to agents:run: {c}");
    assert_eq!(c["tenant"], "t1", "tenant_claim defaults to `tenant`: {c}");
    let exp = c["exp"].as_i64().expect("exp");
    assert!(exp >= before + 900 && exp <= after + 900, "--ttl defaults to 900: {exp} vs {before}..{after}");
    assert!(c.get("iss").is_none(), "no iss when the issuer sets none: {c}");
}

#[test]
fn token_mint_issuer_flag_selects_the_named_issuer_and_unknown_issuer_exits_64() {
    let sb = Sandbox::new();
    let cfg = sb.write(
        "agentgate.toml",
        "[[auth.jwt]]\nname = \"one\"\nalgorithms = [\"HS256\"]\nsecret_env = \"AG_CLI_ONE\"\nissuer = \"iss-one\"\n\
         [[auth.jwt]]\nname = \"two\"\nalgorithms = [\"HS256\"]\nsecret_env = \"AG_CLI_TWO\"\nissuer = \"iss-two\"\n\
         audience = [\"aud-two\"]\n",
    );
    let cfg = cfg.as_str();
    let env = [("AG_CLI_ONE", SECRET), ("AG_CLI_TWO", OTHER_SECRET)];

    let first = sb.mint(cfg, &["--sub", "u1"], &env);
    assert_eq!(claims_of(&first)["iss"], "iss-one", "default: the first issuer that can sign");

    let second = sb.mint(cfg, &["--sub", "u1", "--issuer", "two"], &env);
    let c = claims_of(&second);
    assert_eq!(c["iss"], "iss-two");
    assert_eq!(aud_list(&c), vec!["aud-two".to_owned()]);
    let out = sb.run_with_stdin(&["token", "inspect", "--config", cfg, "--json"], &env, &second);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("--json parses");
    assert_eq!(report["verdict"], "accepted");
    let fp_two = fingerprint(OTHER_SECRET.as_bytes());
    assert!(report.to_string().contains(&fp_two), "the matched key is issuer two's ({fp_two}): {report}");

    let out = sb.run(&["token", "mint", "--config", cfg, "--sub", "u1", "--issuer", "nope"], &env);
    assert_eq!(out.status.code(), Some(64), "unknown issuer: {}", describe(&out));
    assert!(out.stdout.is_empty(), "no token printed: {}", describe(&out));
    assert!(stderr_of(&out).contains("nope"), "names the issuer: {}", describe(&out));
}

/// Generate an RSA key pair with openssl; returns (private PEM path, public PEM path,
/// SPKI DER bytes, modulus bytes).
fn rsa_keys(sb: &Sandbox) -> (PathBuf, PathBuf, Vec<u8>, Vec<u8>) {
    let key = sb.file("rsa.key");
    let publ = sb.file("rsa.pub");
    let st = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&key)
        .stderr(Stdio::null())
        .status()
        .expect("openssl installed");
    assert!(st.success(), "openssl genpkey");
    let st =
        Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&key).arg("-out").arg(&publ).status().unwrap();
    assert!(st.success(), "openssl pkey -pubout");
    let pem = std::fs::read_to_string(&publ).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let spki = STANDARD.decode(b64).expect("PEM body");
    let out = Command::new("openssl").args(["rsa", "-pubin", "-noout", "-modulus", "-in"]).arg(&publ).output().unwrap();
    assert!(out.status.success(), "openssl rsa -modulus");
    let text = String::from_utf8(out.stdout).unwrap();
    let hexmod = text.trim().strip_prefix("Modulus=").expect("Modulus=").to_owned();
    let modulus = hex::decode(hexmod).expect("hex modulus");
    (key, publ, spki, modulus)
}

#[test]
fn token_mint_with_private_key_file_signs_rs256_with_the_jwks_kid_and_inspect_accepts() {
    let sb = Sandbox::new();
    let (key, publ, spki, modulus) = rsa_keys(&sb);
    let jwks = json!({"keys": [{
        "kty": "RSA", "kid": "rsa-cli-1", "use": "sig", "alg": "RS256",
        "n": URL_SAFE_NO_PAD.encode(&modulus), "e": "AQAB"
    }]});
    let jwks_path = sb.write("jwks.json", &jwks.to_string());
    let cfg = sb.write(
        "jwks.toml",
        &format!(
            "[[auth.jwt]]\nname = \"rsa\"\nalgorithms = [\"RS256\"]\njwks_file = {}\nprivate_key_file = {}\n\
             issuer = \"rsa-issuer\"\n",
            toml_str(Path::new(&jwks_path)),
            toml_str(&key)
        ),
    );
    let cfg = cfg.as_str();
    let spki_fp = fingerprint(&spki);

    let token = sb.mint(cfg, &["--sub", "rita"], &[]);
    let h = header_of(&token);
    assert_eq!(h["alg"], "RS256", "{h}");
    assert_eq!(h["kid"], "rsa-cli-1", "header kid matches the JWKS key: {h}");
    assert_eq!(claims_of(&token)["iss"], "rsa-issuer");

    let out = sb.run_with_stdin(&["token", "inspect", "--config", cfg], &[], &token);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout_of(&out);
    assert!(text.contains("verdict: accepted"), "{text}");
    assert!(text.contains("rsa-cli-1"), "shows the matched kid: {text}");
    assert!(text.contains(&spki_fp), "shows the SPKI fingerprint {spki_fp}: {text}");

    // The same key as a PEM public key file.
    let cfg2 = sb.write(
        "pem.toml",
        &format!(
            "[[auth.jwt]]\nname = \"rsa\"\nalgorithms = [\"RS256\"]\npublic_key_file = {}\nprivate_key_file = {}\n",
            toml_str(&publ),
            toml_str(&key)
        ),
    );
    let cfg2 = cfg2.as_str();
    let token = sb.mint(cfg2, &["--sub", "rita"], &[]);
    assert_eq!(header_of(&token)["alg"], "RS256");
    let out = sb.run_with_stdin(&["token", "inspect", "--config", cfg2, "--json"], &[], &token);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("--json parses");
    assert_eq!(report["verdict"], "accepted");
    assert!(report.to_string().contains(&spki_fp), "SPKI fingerprint {spki_fp}: {report}");
    let pem_private = std::fs::read_to_string(&key).unwrap();
    let body_line = pem_private.lines().nth(1).unwrap();
    assert!(!stdout_of(&out).contains(body_line), "inspect never prints the private key");
}

// ---------------------------------------------------------------------------------
// 3. token inspect
// ---------------------------------------------------------------------------------

#[test]
fn token_inspect_accepted_token_exits_0_with_hmac_fingerprint() {
    let sb = Sandbox::new();
    let cfg = sb.write("agentgate.toml", &hs_issuer("local", "AG_CLI_HS"));
    let cfg = cfg.as_str();
    let env = [("AG_CLI_HS", SECRET)];
    let token = sb.mint(cfg, &["--sub", "alice", "--tenant", "acme"], &env);
    let out = sb.run_with_stdin(&["token", "inspect", "--config", cfg], &env, &token);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout_of(&out);
    assert!(text.lines().any(|l| l.trim() == "verdict: accepted"), "{text}");
    let fp = fingerprint(SECRET.as_bytes());
    assert!(text.contains(&fp), "matched key fingerprint {fp}: {text}");
    assert!(text.contains("HS256"), "shows the header: {text}");
    assert!(text.contains("alice") && text.contains("acme"), "shows the claims: {text}");
    let all = format!("{text}{}", stderr_of(&out));
    assert!(!all.contains(SECRET), "never prints the secret");
}

#[test]
fn token_inspect_expired_token_exits_1_with_token_expired() {
    let sb = Sandbox::new();
    let cfg = sb.write("agentgate.toml", &hs_issuer("local", "AG_CLI_HS"));
    let cfg = cfg.as_str();
    let env = [("AG_CLI_HS", SECRET)];
    let token = sb.mint(cfg, &["--sub", "alice", "--ttl", "-3600"], &env);
    assert!(claims_of(&token)["exp"].as_i64().unwrap() < now() - 3000, "exp in the past");
    let out = sb.run_with_stdin(&["token", "inspect", "--config", cfg], &env, &token);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout_of(&out);
    assert!(text.lines().any(|l| l.trim() == "verdict: token_expired"), "{text}");

    let out = sb.run_with_stdin(&["token", "inspect", "--config", cfg, "--json"], &env, &token);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("--json parses");
    assert_eq!(report["verdict"], "token_expired");
}

#[test]
fn token_inspect_secret_drift_is_signature_invalid_with_different_fingerprints() {
    // INCIDENTS row 5: issuer and verifier use different secrets.
    let sb = Sandbox::new();
    let staging = sb.write("staging.toml", &hs_issuer("local", "AG_CLI_STAGING_SECRET"));
    let prod = sb.write("prod.toml", &hs_issuer("local", "AG_CLI_PROD_SECRET"));
    let (staging, prod) = (staging.as_str(), prod.as_str());
    let env = [("AG_CLI_STAGING_SECRET", SECRET), ("AG_CLI_PROD_SECRET", OTHER_SECRET)];
    let fp_staging = fingerprint(SECRET.as_bytes());
    let fp_prod = fingerprint(OTHER_SECRET.as_bytes());
    assert_ne!(fp_staging, fp_prod);

    let token = sb.mint(staging, &["--sub", "alice"], &env);

    let ok = sb.run_with_stdin(&["token", "inspect", "--config", staging], &env, &token);
    assert_eq!(ok.status.code(), Some(0), "{}", describe(&ok));
    let ok_text = stdout_of(&ok);
    assert!(ok_text.contains(&fp_staging), "staging's key fingerprint {fp_staging}: {ok_text}");

    let bad = sb.run_with_stdin(&["token", "inspect", "--config", prod], &env, &token);
    assert_eq!(bad.status.code(), Some(1), "{}", describe(&bad));
    let bad_text = stdout_of(&bad);
    assert!(bad_text.lines().any(|l| l.trim() == "verdict: signature_invalid"), "{bad_text}");
    assert!(bad_text.contains(&fp_prod), "prod's server key fingerprint {fp_prod}: {bad_text}");
    assert!(!bad_text.contains(&fp_staging), "prod holds no key with staging's fingerprint: {bad_text}");

    let json_out = sb.run_with_stdin(&["token", "inspect", "--config", prod, "--json"], &env, &token);
    assert_eq!(json_out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&json_out.stdout).expect("--json parses");
    assert_eq!(report["verdict"], "signature_invalid");

    for out in [&ok, &bad, &json_out] {
        let all = format!("{}{}", stdout_of(out), stderr_of(out));
        assert!(!all.contains(SECRET) && !all.contains(OTHER_SECRET), "never prints a secret");
    }
}

#[test]
fn token_inspect_reads_token_env_token_file_and_stdin() {
    let sb = Sandbox::new();
    let cfg = sb.write("agentgate.toml", &hs_issuer("local", "AG_CLI_HS"));
    let cfg = cfg.as_str();
    let token = sb.mint(cfg, &["--sub", "alice"], &[("AG_CLI_HS", SECRET)]);
    let env = [("AG_CLI_HS", SECRET), ("AG_CLI_TOKEN", token.as_str())];
    let token_file = sb.write("token.txt", &format!("{token}\n"));

    let from_env = sb.run(&["token", "inspect", "--config", cfg, "--token-env", "AG_CLI_TOKEN"], &env);
    let from_file = sb.run(&["token", "inspect", "--config", cfg, "--token-file", &token_file], &env);
    let from_stdin = sb.run_with_stdin(&["token", "inspect", "--config", cfg], &env, &format!("{token}\n"));
    for (how, out) in [("--token-env", &from_env), ("--token-file", &from_file), ("stdin", &from_stdin)] {
        assert_eq!(out.status.code(), Some(0), "{how}: {}", describe(out));
        assert!(stdout_of(out).contains("verdict: accepted"), "{how}: {}", describe(out));
    }

    let json_out = sb.run(&["token", "inspect", "--config", cfg, "--token-env", "AG_CLI_TOKEN", "--json"], &env);
    assert_eq!(json_out.status.code(), Some(0), "{}", describe(&json_out));
    let report: Value = serde_json::from_slice(&json_out.stdout).expect("--json output parses as JSON");
    assert_eq!(report["verdict"], "accepted");
}

#[test]
fn token_inspect_json_output_parses_and_has_verdict() {
    let sb = Sandbox::new();
    let cfg = sb.write("agentgate.toml", &format!("{}{}", hs_issuer("local", "AG_CLI_HS"), api_key_section()));
    let cfg = cfg.as_str();
    let env = [("AG_CLI_HS", SECRET)];
    let token = sb.mint(cfg, &["--sub", "alice"], &env);
    let cases = [
        (token.as_str(), 0, "accepted"),
        ("staging_jwt_token_u1_1700000000", 1, "api_key_invalid"),
        ("s_0123456789abcdefghijklmnop", 1, "token_malformed"),
        (API_KEY, 0, "accepted"),
    ];
    for (tok, status, verdict) in cases {
        let out = sb.run_with_stdin(&["token", "inspect", "--config", cfg, "--json"], &env, tok);
        assert_eq!(out.status.code(), Some(status), "{verdict}: {}", describe(&out));
        let report: Value = serde_json::from_slice(&out.stdout).expect("--json output parses as JSON");
        assert_eq!(report["verdict"], verdict, "{report}");
    }
}

// ---------------------------------------------------------------------------------
// 4. Config errors
// ---------------------------------------------------------------------------------

/// Run `serve --config <config name with extra>` and `token mint --config ...`, expecting
/// exit 64 and `config error at `<key>``.
fn expect_config_error(sb: &Sandbox, name: &str, extra: &str, env: &[(&str, &str)], key: &str) {
    let cfg = sb.config(name, extra);
    let cfg = cfg.as_str();
    for args in [vec!["serve", "--config", cfg], vec!["token", "mint", "--config", cfg, "--sub", "x"]] {
        let out = sb.run(&args, env);
        assert_eq!(out.status.code(), Some(64), "{args:?} with {name}: {}", describe(&out));
        let err = stderr_of(&out);
        assert!(err.contains(&format!("config error at `{key}`")), "{args:?} names `{key}`: {err}");
        assert!(!sb.addr_file(name).exists(), "serve did not start");
    }
}

#[test]
fn config_error_unknown_key_exits_64_and_names_it() {
    let sb = Sandbox::new();
    let text = "listn = \"x\"\n";
    expect_config_error(&sb, "unknown.toml", text, &[], "server.listn");
}

#[test]
fn config_error_bad_value_type_exits_64_and_names_the_key() {
    let sb = Sandbox::new();
    let text = "max_message_bytes = \"big\"\n";
    expect_config_error(&sb, "badtype.toml", text, &[], "server.max_message_bytes");
}

#[test]
fn config_error_missing_secret_env_exits_64_and_names_the_key() {
    let sb = Sandbox::new();
    let text = hs_issuer("local", "AG_CLI_SECRET_THAT_IS_NOT_SET");
    expect_config_error(&sb, "missing.toml", &text, &[], "auth.jwt[0].secret_env");
}

#[test]
fn config_error_env_variable_naming_no_key_exits_64_and_names_the_variable() {
    let sb = Sandbox::new();
    let cfg = sb.config("ok.toml", &hs_issuer("local", "AG_CLI_HS"));
    let env = [("AG_CLI_HS", SECRET), ("AGENTGATE_SERVER__NOPE", "1")];
    for args in [vec!["serve", "--config", cfg.as_str()], vec!["serve"]] {
        let out = sb.run(&args, &env);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", describe(&out));
        let err = stderr_of(&out);
        assert!(err.contains("config error at"), "a config error: {err}");
        assert!(err.contains("AGENTGATE_SERVER__NOPE"), "names the variable: {err}");
    }
    let out = sb.run(&["token", "mint", "--sub", "x"], &[("AGENTGATE_SERVER__NOPE", "1")]);
    assert_eq!(out.status.code(), Some(64), "{}", describe(&out));
    assert!(stderr_of(&out).contains("AGENTGATE_SERVER__NOPE"), "{}", describe(&out));
    assert!(!sb.addr_file("ok.toml").exists(), "serve did not start");
}

#[test]
fn config_error_unreadable_config_file_exits_64_and_names_the_file() {
    let sb = Sandbox::new();
    let missing = sb.file("does-not-exist.toml");
    let missing = missing.to_str().unwrap();
    let dir = sb.path().to_str().unwrap();
    for path in [missing, dir] {
        for args in [vec!["serve", "--config", path], vec!["token", "mint", "--config", path, "--sub", "x"]] {
            let out = sb.run(&args, &[]);
            assert_eq!(out.status.code(), Some(64), "{args:?}: {}", describe(&out));
            let err = stderr_of(&out);
            assert!(err.contains("config error at") && err.contains(path), "names the file {path}: {err}");
        }
    }
    let bad_toml = sb.write("bad.toml", "[server\nlisten = ");
    let out = sb.run(&["serve", "--config", &bad_toml], &[]);
    assert_eq!(out.status.code(), Some(64), "invalid TOML: {}", describe(&out));
    assert!(stderr_of(&out).contains("config error at"), "{}", describe(&out));
}

#[test]
fn config_error_inline_secret_in_production_exits_64() {
    let sb = Sandbox::new();
    let text = format!(
        "profile = \"production\"\n[[auth.jwt]]\nname = \"local\"\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\n"
    );
    expect_config_error(&sb, "prod-secret.toml", &text, &[], "auth.jwt[0].secret");
    // Never echo the refused secret back.
    let cfg = sb.file("prod-secret.toml");
    let out = sb.run(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    assert!(!stderr_of(&out).contains(SECRET), "the inline secret is not printed: {}", describe(&out));
}

#[test]
fn config_error_wildcard_origin_in_production_exits_64() {
    let sb = Sandbox::new();
    let text = format!("profile = \"production\"\nallowed_origins = [\"*\"]\n{}", hs_issuer("local", "AG_CLI_HS"));
    expect_config_error(&sb, "prod-origin.toml", &text, &[("AG_CLI_HS", SECRET)], "server.allowed_origins");
}

// ---------------------------------------------------------------------------------
// 5. Environment overrides
// ---------------------------------------------------------------------------------

#[test]
fn env_override_beats_file_listen_on_a_taken_port() {
    let sb = Sandbox::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to occupy");
    let taken_addr = taken.local_addr().unwrap();
    let cfg = sb.write(
        "agentgate.toml",
        &format!(
            "[server]\nlisten = \"{taken_addr}\"\naddr_file = {}\n{}",
            toml_str(&sb.addr_file("agentgate.toml")),
            hs_issuer("local", "AG_CLI_HS")
        ),
    );
    let cfg = cfg.as_str();

    // The file alone: the port is taken, serve fails (and does not hang).
    let out = sb.run(&["serve", "--config", cfg], &[("AG_CLI_HS", SECRET)]);
    assert!(!out.status.success(), "listening on a taken port fails: {}", describe(&out));
    assert!(!sb.addr_file("agentgate.toml").exists());

    // The environment beats the file.
    let env = [("AG_CLI_HS", SECRET), ("AGENTGATE_SERVER__LISTEN", "127.0.0.1:0")];
    let mut server = sb.serve(&[], cfg, &env);
    assert_ne!(server.addr().port(), taken_addr.port(), "listens where the environment says");
    let token = sb.mint(cfg, &["--sub", "alice"], &env);
    let url = server.url();
    block_on(async {
        let (outcome, ws) = connect_bearer(&url, &token, &[]).await;
        assert_eq!(outcome.welcome()["principal"]["via"], "jwt:local");
        close(ws).await;
    });
    assert_eq!(server.terminate().code(), Some(0));
    drop(taken);
}

#[test]
fn env_override_beats_file_max_message_bytes_and_query_token() {
    let sb = Sandbox::new();
    let cfg = sb.config(
        "agentgate.toml",
        &format!("max_message_bytes = 1048576\n[auth]\nquery_token = true\n{}", hs_issuer("local", "AG_CLI_HS")),
    );
    let cfg = cfg.as_str();
    let env = [
        ("AG_CLI_HS", SECRET),
        ("AGENTGATE_SERVER__MAX_MESSAGE_BYTES", "2000"),
        ("AGENTGATE_AUTH__QUERY_TOKEN", "false"),
    ];
    let mut server = sb.serve(&[], cfg, &env);
    let token = sb.mint(cfg, &["--sub", "alice"], &env);
    let url = server.url();
    let query_url = format!("{url}?access_token={token}");
    block_on(async {
        // auth.query_token = false from the environment: the query token is refused.
        let (outcome, _) = connect(&query_url, &[]).await;
        let err = outcome.assert_http_traced(401, "token_missing");
        let msg = err["message"].as_str().unwrap_or("").to_lowercase();
        assert!(msg.contains("disabled"), "the message says query tokens are disabled: {err}");

        // max_message_bytes = 2000 from the environment: a small frame is answered, a
        // 10 000-byte frame closes 1009.
        let (outcome, ws) = connect_bearer(&url, &token, &[]).await;
        outcome.welcome();
        let mut ws = ws.unwrap();
        ws.send(Message::Text(json!({"type":"ping","ref":"small"}).to_string().into())).await.unwrap();
        match next_frame(&mut ws).await {
            Frame::Text(v) => assert_eq!(v, json!({"type":"pong","ref":"small"})),
            other => panic!("expected pong, got {other:?}"),
        }
        let big = json!({"type":"ping","ref":"x".repeat(10_000)}).to_string();
        let _ = ws.send(Message::Text(big.into())).await;
        match next_frame(&mut ws).await {
            Frame::Close(code, reason) => {
                assert_eq!(code, 1009, "frame above the env's max_message_bytes closes 1009 (reason {reason})");
                let v: Value = serde_json::from_str(&reason).unwrap_or(Value::Null);
                assert_eq!(v["code"], "message_too_large", "close reason {reason:?}");
            }
            other => panic!("expected close 1009, got {other:?}"),
        }
    });
    assert_eq!(server.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------
// 6. Secrets never logged
// ---------------------------------------------------------------------------------

#[test]
fn secrets_tokens_api_keys_and_tickets_are_never_logged_only_fingerprints() {
    let sb = Sandbox::new();
    let cfg = sb.config("agentgate.toml", &format!("{}{}", hs_issuer("main", "AG_CLI_HS"), api_key_section()));
    let cfg = cfg.as_str();
    let other_cfg = sb.write("other.toml", &hs_issuer("main", "AG_CLI_OTHER"));
    let env = [("AG_CLI_HS", SECRET), ("RUST_LOG", "debug")];
    let mut server = sb.serve(&["--log-format", "json"], cfg, &env);
    let addr = server.addr();

    let mint_env = [("AG_CLI_HS", SECRET)];
    let t_header = sb.mint(cfg, &["--sub", "alice"], &mint_env);
    let t_query = sb.mint(cfg, &["--sub", "alice"], &mint_env);
    let t_proto = sb.mint(cfg, &["--sub", "alice"], &mint_env);
    let t_ticket_owner = sb.mint(cfg, &["--sub", "alice"], &mint_env);
    let t_invalid = sb.mint(&other_cfg, &["--sub", "alice"], &[("AG_CLI_OTHER", OTHER_SECRET)]);
    let wrong_api_key = "agk_00000000000000000000000000000000Zz";

    // A ticket: a real one if the ticket endpoint answers, else a ticket-shaped string.
    let (tstatus, tbody) =
        http_request(addr, "POST", "/v1/tickets", &[("Authorization", &format!("Bearer {t_ticket_owner}"))], "");
    let real_ticket = tstatus == 201;
    let ticket = if real_ticket {
        let v: Value = serde_json::from_str(&tbody).expect("ticket JSON");
        v["ticket"].as_str().expect("ticket").to_owned()
    } else {
        "t_Vb7Qm2Xr9Lk4Np8Ws1Hz6Jc3Fd0Gy5Te".to_owned()
    };
    assert!(ticket.starts_with("t_"), "{ticket}");

    let url = server.url();
    let session_id = block_on(async {
        let (outcome, ws) = connect_bearer(&url, &t_header, &[]).await;
        let w = outcome.welcome();
        close(ws).await;
        let sid = w["session_id"].as_str().expect("session id").to_owned();

        let (outcome, ws) = connect(&format!("{url}?access_token={t_query}"), &[]).await;
        assert_eq!(outcome.code(), "accepted", "query token: {outcome:?}");
        close(ws).await;

        let proto = format!("agentgate.v1, agentgate.bearer.{t_proto}");
        let (outcome, ws) = connect(&url, &[("sec-websocket-protocol", &proto)]).await;
        assert_eq!(outcome.code(), "accepted", "subprotocol token: {outcome:?}");
        close(ws).await;

        let (outcome, _) = connect_bearer(&url, &t_invalid, &[]).await;
        outcome.assert_http_traced(401, "signature_invalid");

        let (outcome, ws) = connect_bearer(&url, API_KEY, &[]).await;
        let w = outcome.welcome();
        assert_eq!(w["principal"]["via"], "api_key:ci");
        assert_eq!(w["expires_at"], Value::Null);
        close(ws).await;

        let (outcome, _) = connect_bearer(&url, wrong_api_key, &[]).await;
        outcome.assert_http_traced(401, "api_key_invalid");

        let (outcome, ws) = connect(&format!("{url}?ticket={ticket}"), &[]).await;
        if real_ticket {
            assert_eq!(outcome.code(), "accepted", "live ticket: {outcome:?}");
        } else {
            outcome.assert_http_traced(401, "ticket_invalid");
        }
        close(ws).await;

        let (outcome, _) = connect_bearer(&url, &sid, &[]).await;
        outcome.assert_http_traced(401, "token_malformed");
        sid
    });

    let status = server.terminate();
    let logs = server.logs();
    assert_eq!(status.code(), Some(0), "exit 0 on SIGTERM; output:\n{logs}");

    let tokens = [&t_header, &t_query, &t_proto, &t_ticket_owner, &t_invalid];
    for t in tokens {
        assert!(!logs.contains(t.as_str()), "a token appears in the logs");
        let sig = t.rsplit('.').next().unwrap();
        for p in pieces(sig, 12) {
            assert!(!logs.contains(p), "part of a token signature ({p}) appears in the logs");
        }
        let payload = t.split('.').nth(1).unwrap();
        assert!(!logs.contains(payload), "a token payload appears in the logs");
    }
    for (what, s) in
        [("HS secret", SECRET), ("API key", API_KEY), ("wrong API key", wrong_api_key), ("ticket", ticket.as_str())]
    {
        for p in pieces(s, 10) {
            assert!(!logs.contains(p), "part of the {what} ({p}) appears in the logs");
        }
    }

    // Fingerprints and reason codes are there.
    let lines: Vec<Value> = server.stderr().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect();
    assert!(!lines.is_empty(), "--log-format json writes JSON lines on stderr:\n{logs}");
    let mut fps = Vec::new();
    for v in &lines {
        let fields = v.get("fields").unwrap_or(v);
        if let Some(fp) = fields.get("token_fp").and_then(Value::as_str)
            && fp != "-"
        {
            assert!(fp.len() == 8 && fp.chars().all(|c| c.is_ascii_hexdigit()), "token_fp is 8 hex digits: {fp}");
            fps.push(fp.to_owned());
        }
    }
    assert!(!fps.is_empty(), "token_fp values are logged:\n{logs}");
    let mut rejected: Vec<(&str, &str)> = vec![
        (t_invalid.as_str(), "signature_invalid"),
        (wrong_api_key, "api_key_invalid"),
        (session_id.as_str(), "token_malformed"),
    ];
    if !real_ticket {
        rejected.push((ticket.as_str(), "ticket_invalid"));
    }
    for (cred, code) in rejected {
        let fp = fingerprint(cred.as_bytes());
        assert!(fps.contains(&fp), "the {code} rejection logs token_fp {fp}:\n{logs}");
        assert!(logs.contains(code), "the reason code {code} is logged:\n{logs}");
        let line = lines.iter().find(|v| v.to_string().contains(&fp)).unwrap();
        assert!(line.to_string().contains(code), "one line with the fingerprint and the code {code}: {line}");
        assert!(line.to_string().contains("req_"), "the rejection line carries the request id: {line}");
    }
}

// ---------------------------------------------------------------------------------
// 7. INCIDENTS rows 2 and 4
// ---------------------------------------------------------------------------------

#[test]
fn fake_staging_token_is_401_api_key_invalid_and_session_id_is_401_token_malformed() {
    let sb = Sandbox::new();
    let cfg = sb.config("agentgate.toml", &format!("{}{}", hs_issuer("local", "AG_CLI_HS"), api_key_section()));
    let cfg = cfg.as_str();
    let env = [("AG_CLI_HS", SECRET)];
    let mut server = sb.serve(&[], cfg, &env);
    let token = sb.mint(cfg, &["--sub", "u1"], &env);
    let anon = sb.mint(cfg, &["--sub", "visitor", "--claim", "role=anon"], &env);
    let url = server.url();
    block_on(async {
        // Row 2: a hand-made "token" is neither a JWT nor a known API key.
        let (outcome, _) = connect_bearer(&url, "staging_jwt_token_u1_1700000000", &[]).await;
        let err = outcome.assert_http_traced(401, "api_key_invalid");
        let msg = err["message"].as_str().unwrap_or("").to_lowercase();
        assert!(msg.contains("api key"), "the message says it is not a known API key: {err}");

        // Row 4: the session id where the token belongs.
        let (outcome, ws) = connect_bearer(&url, &token, &[]).await;
        let sid = outcome.welcome()["session_id"].as_str().expect("session_id").to_owned();
        assert!(sid.starts_with("s_") && sid.len() >= 22, "session id shape: {sid}");
        close(ws).await;
        let (outcome, _) = connect_bearer(&url, &sid, &[]).await;
        let err = outcome.assert_http_traced(401, "token_malformed");
        let msg = err["message"].as_str().unwrap_or("").to_lowercase();
        assert!(msg.contains("session id"), "the message says it looks like a session id: {err}");

        // Row 4: an anonymous principal's valid token.
        let (outcome, _) = connect_bearer(&url, &anon, &[]).await;
        outcome.assert_http_traced(403, "anonymous_not_allowed");
    });
    assert_eq!(server.terminate().code(), Some(0));

    // Without API keys configured, the same string is token_malformed.
    let sb2 = Sandbox::new();
    let cfg2 = sb2.config("agentgate.toml", &hs_issuer("local", "AG_CLI_HS"));
    let mut server2 = sb2.serve(&[], &cfg2, &env);
    let url2 = server2.url();
    block_on(async {
        let (outcome, _) = connect_bearer(&url2, "staging_jwt_token_u1_1700000000", &[]).await;
        outcome.assert_http_traced(401, "token_malformed");
    });
    assert_eq!(server2.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------
// 8. Shutdown
// ---------------------------------------------------------------------------------

#[test]
fn sigterm_closes_connected_clients_1012_server_restart_and_exits_0() {
    let sb = Sandbox::new();
    let cfg = sb.config("agentgate.toml", &hs_issuer("local", "AG_CLI_HS"));
    let cfg = cfg.as_str();
    let env = [("AG_CLI_HS", SECRET)];
    let mut server = sb.serve(&[], cfg, &env);
    let token = sb.mint(cfg, &["--sub", "alice"], &env);
    let url = server.url();
    let pid = server.child.id().to_string();
    block_on(async {
        let (outcome, ws) = connect_bearer(&url, &token, &[]).await;
        outcome.welcome();
        let mut ws = ws.unwrap();
        let st = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(st.success());
        let mut closed = None;
        for _ in 0..100 {
            match next_frame(&mut ws).await {
                Frame::Text(_) => continue,
                Frame::Close(code, reason) => {
                    closed = Some((code, reason));
                    break;
                }
                Frame::End => panic!("dropped without a close frame"),
            }
        }
        let (code, reason) = closed.expect("a close frame");
        assert_eq!(code, 1012, "close code on SIGTERM (reason {reason})");
        let v: Value = serde_json::from_str(&reason).expect("close reason is JSON");
        assert_eq!(v, json!({"code": "server_restart"}));
    });
    // Already signalled: wait for the exit (terminate's extra SIGTERM is harmless if
    // the process is still shutting down, and fine if it has just exited).
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "serve exits within {EXIT_TIMEOUT:?}:\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM:\n{}", server.logs());
}
