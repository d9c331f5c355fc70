//! One end-to-end test per row of INCIDENTS.md, through the real binary and a real
//! gateway (`agentgate serve --config`): each reproduces the failure and asserts that
//! its root cause is named in one step, in the rejection code the client sees, in one
//! log line, or in one `agentgate doctor` run.
//!
//! Every test uses a fresh `AGENTGATE_HOME`; servers listen on `127.0.0.1:0`; every
//! spawned process is killed when its guard drops; every wait is bounded.

mod support;

use std::time::Duration;

use agentgate_client::{Client, ClientError, Credential, ErrorClass, RunOutcome};
use serde_json::{Value, json};
use support::*;

/// Longest wait for one run of the demo agent in these tests.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The JSON log lines of a server started with `--log-format json`.
fn json_log_lines(server: &Server) -> Vec<Value> {
    server.stderr().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
}

/// The one log line holding all of `parts`.
fn log_line<'a>(lines: &'a [Value], parts: &[&str]) -> &'a Value {
    lines
        .iter()
        .find(|v| {
            let text = v.to_string();
            parts.iter().all(|p| text.contains(p))
        })
        .unwrap_or_else(|| panic!("no log line with {parts:?} in:\n{lines:#?}"))
}

// ---------------------------------------------------------------------------------
// Row 1: an empty token from an env file; a secret in the daemon's log
// ---------------------------------------------------------------------------------

/// The shim half of row 1: an env file that lacks the token makes `agentgate mcp-shim`
/// refuse to start at once, naming the variable and the env file, instead of sending
/// an empty token. (`tests/mcp_shim.rs` covers every variant.)
#[test]
fn row_1_the_mcp_shim_refuses_to_start_without_a_token_and_names_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("shim.env");
    std::fs::write(&env_file, "# the IDE's env file, without the token\nOTHER=1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentgate"))
        .args(["mcp-shim", "--url", "ws://127.0.0.1:9/v1/mcp/tools", "--env-file"])
        .arg(&env_file)
        .env_remove("AGENTGATE_TOKEN")
        .env("AGENTGATE_HOME", dir.path().join("home"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("AGENTGATE_TOKEN"), "{err}");
    assert!(err.contains(&env_file.display().to_string()), "{err}");
    assert!(out.stdout.is_empty());
}

// The gateway, `connect` and `doctor` with an empty credential.
#[test]
fn row_1_an_empty_token_is_token_missing_distinct_from_a_wrong_token_and_logs_hold_only_fingerprints() {
    let sb = Sandbox::new();
    let cfg = sb.config("gw.toml", &hs_issuer("main", "AG_INC_SECRET"));
    let other = sb.config("other.toml", &hs_issuer("main", "AG_INC_OTHER"));
    let env = [("AG_INC_SECRET", SECRET), ("RUST_LOG", "debug")];
    let mut server = sb.serve(&["--log-format", "json"], &cfg, &env);
    let url = server.url();
    let good = sb.mint(&cfg, &["--sub", "alice"], &[("AG_INC_SECRET", SECRET)]);
    let wrong = sb.mint(&other, &["--sub", "alice"], &[("AG_INC_OTHER", OTHER_SECRET)]);

    block_on(async {
        // What the shim sent: `Authorization: Bearer ` with nothing after it.
        let (outcome, _) = connect_bearer(&url, "", &[]).await;
        outcome.assert_http(401, "token_missing");
        let (outcome, _) = connect(&url, &[]).await;
        outcome.assert_http(401, "token_missing");
        // A wrong token is told apart from a missing one.
        let (outcome, _) = connect_bearer(&url, &wrong, &[]).await;
        outcome.assert_http(401, "signature_invalid");
        let (outcome, ws) = connect_bearer(&url, &good, &[]).await;
        outcome.welcome();
        close(ws).await;
        // The client library never sends an empty credential.
        let e = Client::new(url.clone(), Credential::Header(String::new())).connect().await.unwrap_err();
        assert!(matches!(e, ClientError::InvalidInput(_)), "{e:?}");
    });

    // The env file lacked the token, so the variable is set but empty: `connect`
    // refuses to send it and `doctor` names the variable as the root cause.
    let env_file = sb.write("agent.env", "AGENTGATE_URL=ws://127.0.0.1/v1/ws\nAGENTGATE_TOKEN=\n");
    let empty = std::fs::read_to_string(&env_file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("AGENTGATE_TOKEN="))
        .unwrap()
        .to_owned();
    let out = run_bounded(sb.cmd(&["connect", &url], &[("AGENTGATE_TOKEN", &empty)]), None);
    assert_status(&out, 64);
    assert!(stderr_of(&out).contains("AGENTGATE_TOKEN") && stderr_of(&out).contains("empty"), "{}", describe(&out));
    let out = sb.doctor(&["--config", &cfg, "--url", &url], &[("AG_INC_SECRET", SECRET), ("AGENTGATE_TOKEN", &empty)]);
    assert_status(&out, 1);
    find_line(&out, "error", "AGENTGATE_TOKEN", &["empty", "env file", "token_missing"]);

    assert_eq!(server.terminate().code(), Some(0));
    let logs = server.logs();
    assert_no_piece_of("gateway secret", SECRET, 8, &logs);
    for t in [&good, &wrong] {
        assert_no_piece_of("token signature", t.rsplit('.').next().unwrap(), 12, &logs);
        assert!(!logs.contains(t.split('.').nth(1).unwrap()), "a token payload appears in the log");
    }
    // One line each names the cause: the reason code, with the token's fingerprint.
    let lines = json_log_lines(&server);
    log_line(&lines, &["handshake rejected", "token_missing"]);
    log_line(&lines, &["handshake rejected", "signature_invalid", &fingerprint(wrong.as_bytes())]);
}

// ---------------------------------------------------------------------------------
// Row 2: fake tokens from a test helper, and a bare 403
// ---------------------------------------------------------------------------------

#[test]
fn row_2_fake_staging_tokens_are_api_key_invalid_with_a_message_saying_so() {
    let sb = Sandbox::new();
    let cfg = sb.config("gw.toml", &format!("{}{}", hs_issuer("main", "AG_INC_SECRET"), api_key_section()));
    let env = [("AG_INC_SECRET", SECRET)];
    let mut server = sb.serve(&[], &cfg, &env);
    let url = server.url();

    block_on(async {
        for fake in ["staging_jwt_token_u1_1700000000", "test_token_u1_1700000000"] {
            let (outcome, _) = connect_bearer(&url, fake, &[]).await;
            let err = outcome.assert_http(401, "api_key_invalid");
            let message = err["message"].as_str().unwrap_or_default();
            assert!(message.contains("not a JWT"), "the message says what the string is not: {err}");
            assert!(message.contains("token mint"), "and where real tokens come from: {err}");
        }
    });
    // The same through `connect`: 401 (exit 3) naming api_key_invalid, not a bare 403.
    let out = run_bounded(sb.cmd(&["connect", &url], &[("AGENTGATE_TOKEN", "staging_jwt_token_u1_1700000000")]), None);
    assert_status(&out, 3);
    assert!(stderr_of(&out).contains("401 api_key_invalid"), "{}", describe(&out));

    // A real token from `agentgate token mint`, signed with the key the gateway
    // verifies with, needs no helper of its own.
    let token = sb.mint(&cfg, &["--sub", "u1"], &env);
    let out = run_bounded(
        sb.cmd(
            &["connect", &url, "--run", "demo", "--input", r#"{"prompt":"real token"}"#],
            &[("AGENTGATE_TOKEN", &token)],
        ),
        None,
    );
    assert_status(&out, 0);
    let last: Value = serde_json::from_str(stdout_of(&out).lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "agent_completed", "{}", describe(&out));
    assert_eq!(server.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------
// Row 3: the wrong exception class, then a mock socket
// ---------------------------------------------------------------------------------

#[test]
fn row_3_connect_exit_codes_tell_401_from_network_failure_and_nothing_falls_back() {
    let sb = Sandbox::new();
    let cfg = sb.config("gw.toml", &hs_issuer("main", "AG_INC_SECRET"));
    let other = sb.config("other.toml", &hs_issuer("main", "AG_INC_OTHER"));
    let mut server = sb.serve(&[], &cfg, &[("AG_INC_SECRET", SECRET)]);
    let bad = sb.mint(&other, &["--sub", "alice"], &[("AG_INC_OTHER", OTHER_SECRET)]);
    let closed = format!("ws://127.0.0.1:{}/v1/ws", closed_port());

    // Nothing listening: network (6), and nothing pretends to have connected.
    let out = run_bounded(sb.cmd(&["connect", &closed, "--run", "demo"], &[("AGENTGATE_TOKEN", &bad)]), None);
    assert_status(&out, 6);
    assert!(stdout_of(&out).is_empty(), "no message from any substitute: {}", describe(&out));
    assert!(stderr_of(&out).contains("network"), "{}", describe(&out));

    // A refused handshake: unauthorized (3), with status and reason code.
    let out = run_bounded(sb.cmd(&["connect", &server.url(), "--run", "demo"], &[("AGENTGATE_TOKEN", &bad)]), None);
    assert_status(&out, 3);
    assert!(stdout_of(&out).is_empty(), "{}", describe(&out));
    assert!(stderr_of(&out).contains("401 signature_invalid"), "{}", describe(&out));

    // The library behind it: one error type, two distinct classes.
    block_on(async {
        let e = Client::new(closed.clone(), Credential::Header(bad.clone())).connect().await.unwrap_err();
        assert!(matches!(e, ClientError::Network(_)), "{e:?}");
        assert_eq!(e.class(), ErrorClass::Network);
        let e = Client::new(server.url(), Credential::Header(bad.clone())).connect().await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Rejected { status: 401, code: Some(c), request_id: Some(_), .. } if c == "signature_invalid"),
            "{e:?}"
        );
        assert_eq!(e.class(), ErrorClass::Unauthorized);
        assert!(!e.is_retryable());
    });
    assert_eq!(server.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------
// Row 4: a session id where the token belongs; anonymous visitors
// ---------------------------------------------------------------------------------

#[test]
fn row_4_a_session_id_as_token_is_token_malformed_and_an_anonymous_token_is_anonymous_not_allowed() {
    let sb = Sandbox::new();
    let cfg = sb.config("gw.toml", &hs_issuer("main", "AG_INC_SECRET"));
    let env = [("AG_INC_SECRET", SECRET)];
    let mut server = sb.serve(&[], &cfg, &env);
    let url = server.url();
    let token = sb.mint(&cfg, &["--sub", "alice"], &env);
    let anon = sb.mint(&cfg, &["--sub", "visitor", "--claim", "role=anon"], &env);

    block_on(async {
        let (outcome, ws) = connect_bearer(&url, &token, &[]).await;
        let sid = outcome.welcome()["session_id"].as_str().expect("session_id").to_owned();
        close(ws).await;

        let (outcome, _) = connect_bearer(&url, &sid, &[]).await;
        let err = outcome.assert_http(401, "token_malformed");
        assert!(err["message"].as_str().unwrap_or_default().contains("session id"), "{err}");

        let (outcome, _) = connect_bearer(&url, &anon, &[]).await;
        outcome.assert_http(403, "anonymous_not_allowed");

        // The two fields kept apart: the token authenticates, the session id resumes.
        let resume_url = format!("{url}?session_id={sid}&last_seq=0");
        let (outcome, ws) = connect_bearer(&resume_url, &token, &[]).await;
        let w = outcome.welcome();
        assert_eq!((w["session_id"].as_str(), w["resumed"].as_bool()), (Some(sid.as_str()), Some(true)), "{w}");
        close(ws).await;
    });
    assert_eq!(server.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------
// Row 5: issuer and verifier drift apart; a bypass header
// ---------------------------------------------------------------------------------

#[test]
fn row_5_secret_drift_is_signature_invalid_and_inspect_and_doctor_show_the_two_fingerprints() {
    let sb = Sandbox::new();
    // The token issuer's environment and the gateway's: same issuer, drifted secrets.
    let issuer_cfg = sb.config("issuer.toml", &hs_issuer("main", "AG_INC_ISSUER"));
    let gateway_cfg = sb.config("gateway.toml", &hs_issuer("main", "AG_INC_GATEWAY"));
    let issuer_env = [("AG_INC_ISSUER", OTHER_SECRET)];
    let gateway_env = [("AG_INC_GATEWAY", SECRET)];
    let mut server = sb.serve(&[], &gateway_cfg, &gateway_env);
    let url = server.url();
    let token = sb.mint(&issuer_cfg, &["--sub", "e2e-user"], &issuer_env);
    let (gateway_fp, issuer_fp) = (fingerprint(SECRET.as_bytes()), fingerprint(OTHER_SECRET.as_bytes()));

    block_on(async {
        let (outcome, _) = connect_bearer(&url, &token, &[]).await;
        outcome.assert_http(401, "signature_invalid");
        // No header skips authentication.
        let bypass = [("x-e2e-bypass", "true"), ("x-e2e-bypass-key", "staging-e2e-test-bypass-key-2025")];
        let (outcome, _) = connect_bearer(&url, &token, &bypass).await;
        outcome.assert_http(401, "signature_invalid");
        let (outcome, _) = connect(&url, &bypass).await;
        outcome.assert_http(401, "token_missing");
    });

    // `token inspect`: which key signed the token, and which keys each side holds.
    let inspect = |cfg: &str, env: &[(&str, &str)]| {
        let mut env = env.to_vec();
        env.push(("AG_INC_TOKEN", &token));
        sb.run(&["token", "inspect", "--config", cfg, "--token-env", "AG_INC_TOKEN"], &env)
    };
    let out = inspect(&gateway_cfg, &gateway_env);
    assert_status(&out, 1);
    assert!(stdout_of(&out).contains("verdict: signature_invalid"), "{}", describe(&out));
    assert!(stdout_of(&out).contains(&format!("fingerprint={gateway_fp}")), "{}", describe(&out));
    let out = inspect(&issuer_cfg, &issuer_env);
    assert_status(&out, 0);
    assert!(stdout_of(&out).contains(&format!("matched key: kid=- fingerprint={issuer_fp}")), "{}", describe(&out));

    // `doctor` on each environment: two fingerprints to compare, no secret shown.
    let out = sb.doctor(&["--config", &gateway_cfg], &gateway_env);
    assert_status(&out, 0);
    find_line(&out, "info", "auth.jwt[0].secret_env", &[&format!("fingerprint={gateway_fp}")]);
    let out = sb.doctor(&["--config", &issuer_cfg], &issuer_env);
    assert_status(&out, 0);
    find_line(&out, "info", "auth.jwt[0].secret_env", &[&format!("fingerprint={issuer_fp}")]);
    assert_ne!(gateway_fp, issuer_fp);

    // `doctor --url` with the issuer's config against the gateway: the reason code, and
    // that the gateway is not running this configuration.
    let mut env = issuer_env.to_vec();
    env.push(("AGENTGATE_TOKEN", &token));
    let out = sb.doctor(&["--config", &issuer_cfg, "--url", &url], &env);
    assert_status(&out, 1);
    find_line(&out, "error", "--url", &["401", "signature_invalid"]);
    find_line(&out, "warning", "--url", &["answered signature_invalid", "answers accepted", &issuer_fp]);
    assert_no_piece_of("secret", SECRET, 10, &describe(&out));
    assert_no_piece_of("secret", OTHER_SECRET, 10, &describe(&out));
    assert_eq!(server.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------
// Row 6: a long run outlives the access token
// ---------------------------------------------------------------------------------

/// Run the demo agent for about 7.5 s on a connection whose token lives 4 s; returns
/// the message types seen, and how the run ended or the error that ended it.
async fn long_run(url: String, short: String, fresh: Option<String>) -> (Vec<String>, Result<RunOutcome, ClientError>) {
    let mut client = Client::new(url, Credential::Header(short));
    if let Some(fresh) = fresh {
        client = client.token_provider(move || Some(fresh.clone()));
    }
    let mut conn = client.connect().await.expect("connected");
    let mut seen = vec![conn.welcome().kind().to_owned()];
    let mut run = conn.run("demo", json!({"prompt": "one two three", "delay_ms": 1500})).await.expect("run.start");
    loop {
        match tokio::time::timeout(RUN_TIMEOUT, run.next()).await.expect("the run moves in time") {
            Ok(Some(m)) => seen.push(m.kind().to_owned()),
            Ok(None) => break,
            Err(e) => return (seen, Err(e)),
        }
    }
    let outcome = run.outcome().cloned().expect("an outcome");
    (seen, Ok(outcome))
}

#[test]
fn row_6_a_long_run_outlives_a_short_token_and_completes_after_auth_refresh() {
    let sb = Sandbox::new();
    let cfg = sb.config(
        "gw.toml",
        &format!("[auth]\nleeway_s = 0\nexpiry_warning_s = 2\n{}", hs_issuer("main", "AG_INC_SECRET")),
    );
    let env = [("AG_INC_SECRET", SECRET)];
    let mut server = sb.serve(&[], &cfg, &env);
    let short = sb.mint(&cfg, &["--sub", "alice", "--ttl", "4"], &env);
    let short_too = sb.mint(&cfg, &["--sub", "alice", "--ttl", "4"], &env);
    let fresh = sb.mint(&cfg, &["--sub", "alice", "--ttl", "900"], &env);
    let url = server.url();

    let ((refreshed, outcome), (unrefreshed, ended)) = block_on(async {
        tokio::join!(long_run(url.clone(), short, Some(fresh)), long_run(url.clone(), short_too, None))
    });

    // With a token provider: warned ahead of expiry, refreshed in-band, completed.
    let pos = |kinds: &[String], k: &str| kinds.iter().position(|x| x == k);
    let expiring = pos(&refreshed, "auth.expiring").unwrap_or_else(|| panic!("auth.expiring in {refreshed:?}"));
    let done = pos(&refreshed, "auth.refreshed").unwrap_or_else(|| panic!("auth.refreshed in {refreshed:?}"));
    assert!(expiring < done, "{refreshed:?}");
    match outcome {
        Ok(RunOutcome::Completed { result }) => assert_eq!(result["words"], 3),
        other => panic!("the run completes after the refresh: {other:?} ({refreshed:?})"),
    }

    // Without one: warned, then closed 4401 token_expired mid-run, never a silent drop.
    assert!(unrefreshed.iter().any(|k| k == "auth.expiring"), "{unrefreshed:?}");
    match ended {
        Err(ClientError::Closed { close_code: 4401, code: Some(code), .. }) => assert_eq!(code, "token_expired"),
        other => panic!("expected close 4401 token_expired, got {other:?} ({unrefreshed:?})"),
    }
    assert_eq!(server.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------
// Row 7: down or unreachable, reported as an auth failure
// ---------------------------------------------------------------------------------

#[test]
fn row_7_connect_tells_unavailable_apart_from_unauthorized_and_network() {
    let sb = Sandbox::new();
    let cfg = sb.config("gw.toml", &hs_issuer("main", "AG_INC_SECRET"));
    let other = sb.config("other.toml", &hs_issuer("main", "AG_INC_OTHER"));
    let env = [("AG_INC_SECRET", SECRET)];
    let mut server = sb.serve(&[], &cfg, &env);
    let url = server.url();
    let token = sb.mint(&cfg, &["--sub", "alice"], &env);
    let bad = sb.mint(&other, &["--sub", "alice"], &[("AG_INC_OTHER", OTHER_SECRET)]);

    // Unauthorized: 3.
    let out = run_bounded(sb.cmd(&["connect", &url], &[("AGENTGATE_TOKEN", &bad)]), None);
    assert_status(&out, 3);
    assert!(stderr_of(&out).contains("unauthorized"), "{}", describe(&out));

    // Unavailable: the gateway shuts down under a live connection (close 1012): 5.
    let mut live = Server::spawn(sb.cmd(&["connect", &url], &[("AGENTGATE_TOKEN", &token)]), true);
    live.wait_for_line("welcome", |v| v["type"] == "welcome");
    server.signal_terminate();
    assert_eq!(live.wait().code(), Some(5), "{}", live.logs());
    let err = live.stderr();
    assert!(err.contains("unavailable") && err.contains("1012") && err.contains("server_restart"), "{err}");
    assert_eq!(server.wait().code(), Some(0));

    // Network: the gateway is gone, so its port refuses: 6, not an auth failure.
    let out = run_bounded(sb.cmd(&["connect", &url], &[("AGENTGATE_TOKEN", &token)]), None);
    assert_status(&out, 6);
    assert!(stderr_of(&out).contains("network") && !stderr_of(&out).contains("401"), "{}", describe(&out));
}

// ---------------------------------------------------------------------------------
// Row 8: a dependency needs a password the config lacks
// ---------------------------------------------------------------------------------

// A real Redis with `requirepass`, and a config whose `backend.redis_url` lacks the
// password: one `agentgate doctor` run names NOAUTH on `backend.redis_url` as a missing
// password and says where it belongs; the gateway started that way is unready, its
// `/readyz` names the `redis` check's NOAUTH error, and new handshakes get 503
// `service_unavailable`; with the password in AGENTGATE_BACKEND__REDIS_URL Redis is
// reachable and the gateway serves. The password is never printed.
#[test]
fn row_8_doctor_names_noauth_as_a_redis_password_missing_from_the_config() {
    let password = "hunter2-redis-password-Xk4Pq9";
    let redis = RedisServer::start(password);
    let addr = redis.addr();
    let sb = Sandbox::new();
    let cfg = sb.config(
        "redis.toml",
        &format!("{}[backend]\nkind = \"redis\"\nredis_url = \"redis://{addr}\"\n", hs_issuer("main", "AG_INC_SECRET")),
    );
    let env = [("AG_INC_SECRET", SECRET)];
    let out = sb.doctor(&["--config", &cfg], &env);
    assert_status(&out, 1);
    find_line(
        &out,
        "error",
        "backend.redis_url",
        &["NOAUTH", "requires a password", "has none", &addr, "Fix:", "AGENTGATE_BACKEND__REDIS_URL"],
    );

    // The gateway itself: unready, naming the dependency; handshakes 503.
    let mut server = sb.serve(&[], &cfg, &env);
    let base = format!("http://{}", server.addr());
    let token = sb.mint(&cfg, &["--sub", "alice"], &env);
    let (ready, handshake) = block_on(async {
        let ready = reqwest::get(format!("{base}/readyz")).await.expect("readyz");
        let status = ready.status().as_u16();
        let body: Value = serde_json::from_str(&ready.text().await.unwrap()).unwrap();
        let (outcome, _) = connect_bearer(&server.url(), &token, &[]).await;
        ((status, body), outcome)
    });
    assert_eq!(ready.0, 503, "{}", ready.1);
    let check = ready.1["checks"]["redis"].as_str().unwrap_or_default().to_owned();
    assert!(check.contains("NOAUTH") || check.to_lowercase().contains("auth"), "{}", ready.1);
    handshake.assert_http(503, "service_unavailable");
    server.terminate();
    assert_no_piece_of("Redis password", password, 8, &server.logs());

    let url = format!("redis://:{password}@{addr}");
    let env = [("AG_INC_SECRET", SECRET), ("AGENTGATE_BACKEND__REDIS_URL", url.as_str())];
    let out = sb.doctor(&["--config", &cfg], &env);
    find_line(&out, "info", "backend.redis_url", &["reachable", &format!("redis://:****@{addr}")]);
    assert_no_piece_of("Redis password", password, 8, &describe(&out));

    let mut server = sb.serve(&[], &cfg, &env);
    let (outcome, ws) = block_on(connect_bearer(&server.url(), &token, &[]));
    let welcome = outcome.welcome();
    assert!(welcome["session_id"].as_str().unwrap().starts_with("s_"));
    block_on(close(ws));
    server.terminate();
    assert_no_piece_of("Redis password", password, 8, &server.logs());
}
