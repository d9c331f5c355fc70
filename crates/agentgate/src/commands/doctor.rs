//! `agentgate doctor [--config FILE] [--offline] [--url URL --token-env VAR | --token-file F] [--ca-file F] [--json]`.
//!
//! The configuration checks are `agentgate_app::doctor`; this command adds the one
//! real connection of `--url` (made with the client library, so its failure classes
//! are those of `agentgate connect`), prints the findings (errors first, one per line,
//! or `--json`) and a summary, and exits 0 without errors, 1 with, 64 on usage errors.
//! A token or secret is never printed: only its fingerprint.

use std::io::Write;
use std::time::Duration;

use agentgate_app::doctor::{self, Finding, Options, Report};
use agentgate_app::telemetry::unix_now;
use agentgate_app::{Config, Env};
use agentgate_auth::fingerprint;
use agentgate_client::{Client, ClientError, Credential};
use serde_json::{Value, json};

use super::{EXIT_FAILURE, EXIT_USAGE, process_env};
use crate::cli::DoctorArgs;

/// The variable read when neither `--token-env` nor `--token-file` is given.
const DEFAULT_TOKEN_ENV: &str = "AGENTGATE_TOKEN";

/// Limit for the connection of `--url` (connect plus handshake, then the welcome).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Limit for closing that connection politely.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// The key of findings about the connection.
const URL_KEY: &str = "--url";

pub(crate) fn run(args: DoctorArgs) -> u8 {
    if let Some(url) = &args.url
        && let Err(e) = check_url(url)
    {
        eprintln!("agentgate doctor: usage: {e}");
        return EXIT_USAGE;
    }
    let env = process_env();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agentgate doctor: cannot start the runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    let mut report = runtime.block_on(doctor::run(args.config.as_deref(), &env, Options { offline: args.offline }));
    if let Some(url) = &args.url {
        runtime.block_on(check_connection(url, &args, &env, &mut report));
    }
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) does not change the verdict.
    let _ = if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report.to_json()).unwrap_or_default())
    } else {
        report
            .sorted()
            .iter()
            .try_for_each(|f| writeln!(out, "{f}"))
            .and_then(|()| writeln!(out, "agentgate doctor: {}", report.summary()))
    };
    if report.has_errors() { EXIT_FAILURE } else { 0 }
}

/// A `ws://` or `wss://` URL with a host; anything else is a usage error.
fn check_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let rest = lower.strip_prefix("ws://").or_else(|| lower.strip_prefix("wss://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(()),
        _ => Err(format!(
            "--url takes the gateway's WebSocket URL, e.g. ws://127.0.0.1:8079/v1/ws; got {:?}",
            shown_url(url)
        )),
    }
}

/// The URL without its query, which may carry a credential.
fn shown_url(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// The token for `--url`, and the key naming where it came from; or the finding that
/// says where it was looked for and what was there.
fn read_token(env: &Env, args: &DoctorArgs) -> Result<(String, String), Finding> {
    if let Some(path) = &args.token_file {
        let key = "--token-file".to_owned();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Finding::error(
                key.clone(),
                format!("cannot read the token file {}: {e}", path.display()),
                "correct the path, or write the token there (agentgate token mint --sub NAME > FILE)",
            )
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(Finding::error(
                key,
                format!("the token file {} is empty: an empty credential is rejected token_missing", path.display()),
                "write the token into it (agentgate token mint --sub NAME > FILE)",
            ));
        }
        return Ok((token.to_owned(), key));
    }
    let (var, how) = match &args.token_env {
        Some(var) => (var.as_str(), "named by --token-env"),
        None => (DEFAULT_TOKEN_ENV, "read when neither --token-env nor --token-file is given"),
    };
    match env.get(var).map(|t| t.trim()) {
        Some(t) if !t.is_empty() => Ok((t.to_owned(), var.to_owned())),
        Some(_) => Err(Finding::error(
            var,
            format!(
                "environment variable {var} ({how}) is set but empty: an env file that lacks the token leaves it \
                 empty, and the gateway rejects an empty credential with token_missing"
            ),
            format!("set {var} to the token where it is loaded (check the env file), or pass --token-file"),
        )),
        None => Err(Finding::error(
            var,
            format!("environment variable {var} ({how}) is not set: there is no token to connect with"),
            format!(
                "export {var}=\"$(agentgate token mint --sub NAME)\" (or your identity provider's access token); \
                 a token is never taken from the command line"
            ),
        )),
    }
}

/// One real connection with a header credential: the welcome, or the exact failure.
async fn check_connection(url: &str, args: &DoctorArgs, env: &Env, report: &mut Report) {
    let (token, source) = match read_token(env, args) {
        Ok(t) => t,
        Err(f) => {
            report.push(f);
            return;
        }
    };
    let fp = fingerprint(token.as_bytes());
    let mut client = Client::new(url, Credential::Header(token.clone())).connect_timeout(CONNECT_TIMEOUT);
    if let Some(ca) = &args.ca_file {
        client = client.ca_file(ca);
    }
    let gateway_verdict = match client.connect().await {
        Ok(conn) => {
            report.push(welcome_finding(url, conn.welcome().json(), &fp, &source));
            // A failed close does not change what the connection showed.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
            Some("accepted".to_owned())
        }
        Err(e) => {
            report.push(failure_finding(url, &e, &fp, &source));
            match &e {
                ClientError::Rejected { status: 401 | 403, code: Some(code), .. } => Some(code.clone()),
                _ => None,
            }
        }
    };
    // With an explicit config, say whether it agrees with the gateway: when it does
    // not, the gateway runs another configuration (INCIDENTS.md row 5).
    if args.config.is_some()
        && let (Some(config), Some(gateway)) = (report.config.as_ref(), gateway_verdict)
        && (!args.offline || config.jwks.is_empty())
    {
        report.push(compare_verdicts(config, &token, &gateway));
    }
}

fn welcome_finding(url: &str, w: &Value, fp: &str, source: &str) -> Finding {
    let p = &w["principal"];
    let text = |v: &Value| v.as_str().map_or_else(|| "-".to_owned(), str::to_owned);
    let scopes: Vec<String> =
        p["scopes"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect();
    let expires = match w["expires_at"].as_i64() {
        Some(t) => format!("expires_at {t} (in {} s)", t - unix_now()),
        None => "expires_at null (an API key does not expire)".to_owned(),
    };
    Finding::info(
        URL_KEY,
        format!(
            "connected to {}: session {}, principal {}{} via {}, scopes [{}], {expires}; token from {source}, \
             fingerprint {fp}",
            shown_url(url),
            text(&w["session_id"]),
            text(&p["subject"]),
            p["tenant"].as_str().map(|t| format!(" (tenant {t})")).unwrap_or_default(),
            text(&p["via"]),
            scopes.join(" "),
        ),
    )
    .with_data(json!({
        "result": "connected",
        "session_id": w["session_id"],
        "principal": p,
        "expires_at": w["expires_at"],
        "token_fingerprint": fp,
    }))
}

fn failure_finding(url: &str, e: &ClientError, fp: &str, source: &str) -> Finding {
    let class = e.class();
    let at = shown_url(url);
    let (message, data) = match e {
        ClientError::Rejected { status, code, message, request_id, .. } => (
            format!(
                "the gateway at {at} refused the handshake: HTTP {status} {}: {message}{}",
                code.as_deref().unwrap_or("(no reason code)"),
                request_id.as_deref().map(|id| format!(" (request_id {id})")).unwrap_or_default()
            ),
            json!({"status": status, "code": code, "message": message, "request_id": request_id}),
        ),
        ClientError::Closed { close_code, code, reason } => (
            format!(
                "the gateway at {at} closed the connection: close {close_code} {}",
                code.as_deref().map_or_else(|| format!("({reason})"), str::to_owned)
            ),
            json!({"close_code": close_code, "code": code, "reason": reason}),
        ),
        ClientError::Network(what) => {
            (format!("network error: {what} (nothing was authenticated)"), json!({"error": what}))
        }
        ClientError::Timeout(what) => {
            (format!("network error: timed out: {what} (nothing was authenticated)"), json!({"error": what}))
        }
        ClientError::Tls(what) => (format!("TLS error: {what} (nothing was authenticated)"), json!({"error": what})),
        ClientError::Protocol(what) => (format!("protocol error talking to {at}: {what}"), json!({"error": what})),
        ClientError::InvalidInput(what) => (format!("cannot connect to {at}: {what}"), json!({"error": what})),
    };
    let mut data = data;
    data["result"] = json!("failed");
    data["class"] = json!(class.as_str());
    data["connect_exit_status"] = json!(class.exit_status());
    data["token_fingerprint"] = json!(fp);
    Finding::error(
        URL_KEY,
        format!(
            "{message} [class {class}, agentgate connect would exit {}; token from {source}, fingerprint {fp}]",
            class.exit_status()
        ),
        fix_for(e),
    )
    .with_data(data)
}

/// What to do about a failed connection.
fn fix_for(e: &ClientError) -> String {
    match e {
        ClientError::Network(_) | ClientError::Timeout(_) => "check that the gateway is running and listening at \
             this host and port (server.listen, or the address it wrote to server.addr_file), and that no \
             firewall or proxy is in the way; this is not an authentication failure"
            .to_owned(),
        ClientError::Tls(_) => "the gateway's certificate does not verify: pass --ca-file with the CA that signed it \
             (or install that CA in the system's trust store), check that the URL's host name is one the \
             certificate names, and that it has not expired; this is not an authentication failure"
            .to_owned(),
        ClientError::Protocol(_) => "check that the URL names the gateway's /v1/ws endpoint".to_owned(),
        ClientError::InvalidInput(_) => "correct the URL or the token".to_owned(),
        ClientError::Rejected { .. } | ClientError::Closed { .. } => match e.error_code() {
            Some(code) => code.advice().to_owned(),
            None => format!(
                "see docs/errors.md (and docs/errors.json) for the reason code {:?}",
                e.reason_code().unwrap_or("(none)")
            ),
        },
    }
}

/// The verdict this configuration reaches for the token, against the gateway's.
fn compare_verdicts(config: &Config, token: &str, gateway: &str) -> Finding {
    let (result, trace) = config.authenticator.verify_traced(token, unix_now());
    let local = match &result {
        Ok(_) => "accepted".to_owned(),
        Err(e) => e.code().as_str().to_owned(),
    };
    let key =
        trace.key.as_ref().map(|(kid, fp)| format!(" (key kid={} fingerprint={fp})", kid.as_deref().unwrap_or("-")));
    let data = json!({"gateway": gateway, "config": local});
    if local == gateway {
        Finding::info(
            URL_KEY,
            format!("this configuration reaches the same verdict for the token: {local}{}", key.unwrap_or_default()),
        )
        .with_data(data)
    } else {
        Finding::warning(
            URL_KEY,
            format!(
                "the gateway answered {gateway}, but this configuration answers {local}{}: the gateway is not \
                 running this configuration",
                key.unwrap_or_default()
            ),
            "run agentgate doctor on the gateway's host and compare the key fingerprints of both reports",
        )
        .with_data(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(token_env: Option<&str>) -> DoctorArgs {
        DoctorArgs {
            config: None,
            offline: true,
            url: Some("ws://127.0.0.1:9/v1/ws".into()),
            token_env: token_env.map(str::to_owned),
            token_file: None,
            json: false,
            ca_file: None,
        }
    }

    #[test]
    fn urls_must_be_websocket_urls() {
        assert!(check_url("ws://127.0.0.1:8079/v1/ws").is_ok());
        assert!(check_url("WSS://gw.example.com/v1/ws").is_ok());
        for bad in ["http://127.0.0.1/v1/ws", "127.0.0.1:8079", "ws://", "ws:///v1/ws"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        let e = check_url("http://h/v1/ws?access_token=sekrit").unwrap_err();
        assert!(!e.contains("sekrit"), "{e}");
    }

    #[test]
    fn missing_and_empty_tokens_name_the_variable() {
        let f = read_token(&Env::new(), &args(None)).unwrap_err();
        assert_eq!(f.key, "AGENTGATE_TOKEN");
        assert!(f.message.contains("not set"), "{}", f.message);
        let env: Env = [("MY_TOKEN".to_owned(), " \n".to_owned())].into_iter().collect();
        let f = read_token(&env, &args(Some("MY_TOKEN"))).unwrap_err();
        assert_eq!(f.key, "MY_TOKEN");
        assert!(f.message.contains("empty") && f.message.contains("token_missing"), "{}", f.message);
    }
}
