//! `agentgate token mint` and `agentgate token inspect`.

use agentgate_app::telemetry::unix_now;
use agentgate_auth::{Issuer, MintRequest};
use serde_json::{Map, Value, json};

use crate::cli::{InspectArgs, MintArgs};

use super::{EXIT_FAILURE, EXIT_USAGE, load_config, process_env, read_token};

/// Fetch the JWKS of every `jwks_url` issuer once, so the tools see the keys the
/// gateway would. Failures are printed and leave the issuer without keys.
fn fetch_jwks(config: &agentgate_app::Config) {
    if config.jwks.is_empty() {
        return;
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    for (issuer, result) in rt.block_on(agentgate_app::jwks::fetch_all(config)) {
        if let Err(e) = result {
            eprintln!("agentgate: cannot fetch the JWKS of issuer {issuer:?}: {e}");
        }
    }
}

pub(crate) fn mint(args: MintArgs) -> u8 {
    let env = process_env();
    let config = match load_config(args.config.as_deref(), &env) {
        Ok(c) => c,
        Err(code) => return code,
    };
    fetch_jwks(&config);
    let issuers = config.authenticator.issuers();
    let issuer: Option<&Issuer> = match &args.issuer {
        Some(name) => match issuers.iter().find(|i| &i.name == name) {
            Some(i) => Some(i),
            None => {
                let names: Vec<&str> = issuers.iter().map(|i| i.name.as_str()).collect();
                eprintln!("agentgate: no JWT issuer named {name:?}; configured: {names:?}");
                return EXIT_USAGE;
            }
        },
        None => issuers.iter().map(AsRef::as_ref).find(|i: &&Issuer| i.can_sign()),
    };
    let Some(issuer) = issuer else {
        eprintln!(
            "agentgate: no configured JWT issuer can sign; give an issuer a secret_env, secret_file, secret or private_key_file"
        );
        return EXIT_USAGE;
    };
    let mut extra = Map::new();
    for c in &args.claims {
        let Some((k, v)) = c.split_once('=') else {
            eprintln!("agentgate: --claim takes k=v, got {c:?}");
            return EXIT_USAGE;
        };
        let value = serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        extra.insert(k.to_owned(), value);
    }
    if args.sub.is_empty() {
        eprintln!("agentgate: --sub must not be empty");
        return EXIT_USAGE;
    }
    let req = MintRequest {
        subject: args.sub,
        tenant: args.tenant,
        scopes: args.scope.split_whitespace().map(str::to_owned).collect(),
        ttl_s: args.ttl,
        jti: args.jti,
        extra,
    };
    match issuer.mint(&req, unix_now()) {
        Ok(m) => {
            println!("{}", m.token);
            0
        }
        Err(e) => {
            eprintln!("agentgate: cannot mint with issuer {:?}: {e}", issuer.name);
            EXIT_USAGE
        }
    }
}

pub(crate) fn inspect(args: InspectArgs) -> u8 {
    let env = process_env();
    let config = match load_config(args.config.as_deref(), &env) {
        Ok(c) => c,
        Err(code) => return code,
    };
    fetch_jwks(&config);
    let token = match read_token(&env, args.token_env.as_deref(), args.token_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("agentgate: {e}");
            return EXIT_USAGE;
        }
    };
    let auth = &config.authenticator;
    let now = unix_now();
    let (result, trace) = auth.verify_traced(&token, now);
    let server_keys: Vec<Value> = auth
        .issuers()
        .iter()
        .flat_map(|i| {
            i.keys()
                .iter()
                .map(|k| {
                    json!({
                        "issuer": i.name,
                        "kid": k.kid,
                        "kind": k.kind.as_str(),
                        "fingerprint": k.fingerprint,
                        "algorithms": i.algorithms.iter().filter(|a| k.admits(**a)).map(|a| format!("{a:?}")).collect::<Vec<_>>(),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let verdict = match &result {
        Ok(_) => "accepted".to_owned(),
        Err(e) => e.code().as_str().to_owned(),
    };
    let report = json!({
        "token_fingerprint": agentgate_auth::fingerprint(token.as_bytes()),
        "header": trace.header,
        "claims": trace.claims,
        "verdict": verdict,
        "reason": result.as_ref().err().map(|e| e.message().to_owned()),
        "issuer": trace.issuer,
        "matched_key": trace.key.as_ref().map(|(kid, fp)| json!({"kid": kid, "fingerprint": fp})),
        "api_key": trace.api_key,
        "server_keys": server_keys,
        "now": now,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print_report(&report, &trace.claims, now);
    }
    if result.is_ok() { 0 } else { EXIT_FAILURE }
}

fn print_report(report: &Value, claims: &Option<Map<String, Value>>, now: i64) {
    let show = |v: &Value| serde_json::to_string(v).unwrap_or_default();
    println!("token fingerprint: {}", report["token_fingerprint"].as_str().unwrap_or("-"));
    match &report["header"] {
        Value::Null => println!("header: (not a JWT)"),
        h => println!("header: {}", show(h)),
    }
    if let Some(c) = claims {
        println!("claims: {}", show(&Value::Object(c.clone())));
        for name in ["exp", "nbf", "iat"] {
            if let Some(t) = c.get(name).and_then(Value::as_i64) {
                let d = t.saturating_sub(now);
                let when = if d >= 0 { format!("in {d} s") } else { format!("{} s ago", d.unsigned_abs()) };
                println!("  {name}: {t} ({when})");
            }
        }
    }
    println!("verdict: {}", report["verdict"].as_str().unwrap_or("-"));
    if let Some(r) = report["reason"].as_str() {
        println!("reason: {r}");
    }
    if let Some(i) = report["issuer"].as_str() {
        println!("issuer: {i}");
    }
    if let Some(k) = report["matched_key"].as_object() {
        println!(
            "matched key: kid={} fingerprint={}",
            k.get("kid").and_then(Value::as_str).unwrap_or("-"),
            k.get("fingerprint").and_then(Value::as_str).unwrap_or("-")
        );
    }
    if let Some(a) = report["api_key"].as_str() {
        println!("matched API key: {a}");
    }
    println!("server keys:");
    for k in report["server_keys"].as_array().into_iter().flatten() {
        println!(
            "  issuer={} kid={} kind={} fingerprint={} algorithms={}",
            k["issuer"].as_str().unwrap_or("-"),
            k["kid"].as_str().unwrap_or("-"),
            k["kind"].as_str().unwrap_or("-"),
            k["fingerprint"].as_str().unwrap_or("-"),
            show(&k["algorithms"])
        );
    }
}
