//! The reference pages cannot drift from the code:
//!
//! - every key the config loader accepts is documented in `docs/configuration.md`, and
//!   every key documented there is accepted (or is listed in [`PENDING_KEYS`]);
//! - every [`ErrorCode`] has a row in `docs/errors.md`, and every row there names a
//!   real code; `docs/protocol.md` lists every rejection with its real HTTP status and
//!   close code;
//! - no page under `docs/` links the contract files outside the repository.
//!
//! What the loader accepts is learned from the loader itself, without changing it: each
//! table is loaded with one unknown key, and `deny_unknown_fields` answers with the list
//! of the keys it expected ("unknown field `x`, expected one of `a`, `b`, ...").
//!
//! How `docs/configuration.md` writes keys (the parser below relies on it): a key is the
//! first cell of a row of a table whose header row starts with `| key |`, as one
//! backticked dotted path; keys of an array-of-tables entry are written with `[]`, e.g.
//! `` `auth.jwt[].name` `` or `` `agents[].url` ``.

use std::collections::BTreeSet;
use std::path::PathBuf;

use agentgate_app::{Config, Env};
use agentgate_protocol::ErrorCode;

/// Keys of the configuration contract that `docs/configuration.md` documents ahead of
/// the loader: other changes are adding them right now. Remove each one from this list
/// as it lands; the test fails while a key listed here is already accepted, so the list
/// cannot go stale.
const PENDING_KEYS: &[&str] = &[];

/// A key no version of the loader will ever accept.
const BOGUS: &str = "zz_not_a_config_key";

/// A table of the configuration: where it sits in a TOML file and how its keys are
/// written in `docs/configuration.md`.
struct Table {
    /// The prefix of its keys in the docs (`server.`, `auth.jwt[].`, or `` for the root).
    doc_prefix: &'static str,
    /// A TOML document whose only unknown key is [`BOGUS`], inside this table.
    probe: &'static str,
}

const TABLES: &[Table] = &[
    Table { doc_prefix: "", probe: "zz_not_a_config_key = 1\n" },
    Table { doc_prefix: "server.", probe: "[server]\nzz_not_a_config_key = 1\n" },
    Table { doc_prefix: "auth.", probe: "[auth]\nzz_not_a_config_key = 1\n" },
    Table { doc_prefix: "auth.jwt[].", probe: "[[auth.jwt]]\nzz_not_a_config_key = 1\n" },
    Table { doc_prefix: "auth.api_keys[].", probe: "[[auth.api_keys]]\nzz_not_a_config_key = 1\n" },
    Table { doc_prefix: "sessions.", probe: "[sessions]\nzz_not_a_config_key = 1\n" },
    Table { doc_prefix: "runs.", probe: "[runs]\nzz_not_a_config_key = 1\n" },
    Table { doc_prefix: "limits.", probe: "[limits]\nzz_not_a_config_key = 1\n" },
    Table { doc_prefix: "backend.", probe: "[backend]\nzz_not_a_config_key = 1\n" },
    Table { doc_prefix: "agents[].", probe: "[[agents]]\nzz_not_a_config_key = 1\n" },
    Table { doc_prefix: "mcp.", probe: "[mcp]\nzz_not_a_config_key = 1\n" },
    Table { doc_prefix: "mcp.servers[].", probe: "[[mcp.servers]]\nzz_not_a_config_key = 1\n" },
];

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn read_doc(rel: &str) -> String {
    let path = repo_file(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The field names the loader expects in the table that `probe` puts [`BOGUS`] in.
fn expected_fields(probe: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("probe.toml");
    std::fs::write(&path, probe).expect("write the probe config");
    let err = match Config::load(Some(&path), &Env::new()) {
        Ok(_) => panic!("the loader accepted the unknown key {BOGUS:?} in:\n{probe}"),
        Err(e) => e,
    };
    assert!(
        err.key.ends_with(BOGUS),
        "the probe should fail on the unknown key {BOGUS:?}, but failed at `{}`: {}\nprobe:\n{probe}",
        err.key,
        err.message
    );
    let msg = &err.message;
    assert!(msg.contains("unknown field"), "not a serde unknown-field error: {msg}");
    if msg.contains("there are no fields") {
        return Vec::new();
    }
    let (_, expected) =
        msg.split_once("expected").unwrap_or_else(|| panic!("no \"expected\" list in the loader's message: {msg}"));
    // The list ends the line (the deserializer may add a line such as "in `server`").
    let expected = expected.lines().next().unwrap_or_default();
    // Backticked names: every second piece of a split on '`'.
    let fields: Vec<String> = expected.split('`').skip(1).step_by(2).map(str::to_owned).collect();
    assert!(!fields.is_empty(), "no field names in the loader's message: {msg}");
    fields
}

/// Every key the loader accepts, written as `docs/configuration.md` writes them.
fn accepted_keys() -> BTreeSet<String> {
    let sections: BTreeSet<&str> =
        TABLES.iter().map(|t| t.doc_prefix).filter(|p| !p.is_empty()).map(|p| p.trim_end_matches('.')).collect();
    let mut keys = BTreeSet::new();
    for table in TABLES {
        for field in expected_fields(table.probe) {
            let key = format!("{}{field}", table.doc_prefix);
            let as_table = key.clone();
            let as_array = format!("{key}[]");
            if sections.contains(as_table.as_str()) || sections.contains(as_array.as_str()) {
                continue; // a table of its own, probed above: its keys are the leaves
            }
            assert!(
                !table.doc_prefix.is_empty(),
                "the loader accepts a top-level key `{field}` that this test does not probe: add it to TABLES \
                 and document its keys in docs/configuration.md"
            );
            keys.insert(key);
        }
    }
    keys
}

/// The keys `docs/configuration.md` documents: first cells of `| key | ...` tables.
fn documented_keys(doc: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut in_key_table = false;
    for line in doc.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            in_key_table = false;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.first() == Some(&"key") {
            in_key_table = true;
            continue;
        }
        if !in_key_table || cells.iter().all(|c| c.chars().all(|ch| ch == '-' || ch == ':')) {
            continue;
        }
        let cell = cells[0];
        let key = cell
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .filter(|k| !k.contains('`') && !k.contains(' '))
            .unwrap_or_else(|| panic!("docs/configuration.md: a key row must start with one backticked key: {line}"));
        assert!(keys.insert(key.to_owned()), "docs/configuration.md documents `{key}` twice");
    }
    keys
}

#[test]
fn every_accepted_config_key_is_documented_and_every_documented_key_is_accepted() {
    let accepted = accepted_keys();
    let documented = documented_keys(&read_doc("docs/configuration.md"));
    let pending: BTreeSet<String> = PENDING_KEYS.iter().map(|k| (*k).to_owned()).collect();
    assert!(accepted.len() > 50, "suspiciously few keys learned from the loader: {accepted:?}");

    let undocumented: Vec<&String> = accepted.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "keys the loader accepts but docs/configuration.md does not document: {undocumented:?}"
    );

    let landed: Vec<&String> = pending.intersection(&accepted).collect();
    assert!(
        landed.is_empty(),
        "keys in PENDING_KEYS that the loader now accepts: remove them from PENDING_KEYS in {}: {landed:?}",
        file!()
    );

    let pending_undocumented: Vec<&String> = pending.difference(&documented).collect();
    assert!(
        pending_undocumented.is_empty(),
        "PENDING_KEYS not documented in docs/configuration.md: {pending_undocumented:?}"
    );

    let unknown: Vec<&String> = documented.difference(&accepted).filter(|k| !pending.contains(*k)).collect();
    assert!(
        unknown.is_empty(),
        "keys docs/configuration.md documents but the loader refuses (a typo, a removed key, or a key not \
         implemented yet: then list it in PENDING_KEYS): {unknown:?}"
    );
    println!("{} keys accepted and documented; {} documented ahead of the loader", accepted.len(), pending.len());
}

/// The rows of the one reason-code table of a page (header `| code | HTTP | close | ...`):
/// code, HTTP cell, close cell.
fn code_rows(doc: &str, page: &str) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut in_table = false;
    let mut tables = 0;
    for line in doc.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() >= 3 && cells[0] == "code" && cells[1] == "HTTP" && cells[2] == "close" {
            in_table = true;
            tables += 1;
            continue;
        }
        if !in_table || cells.iter().all(|c| c.chars().all(|ch| ch == '-' || ch == ':')) {
            continue;
        }
        let code = cells[0]
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .unwrap_or_else(|| panic!("{page}: a code row must start with one backticked code: {line}"));
        assert!(!rows.iter().any(|r| r.0 == code), "{page} lists `{code}` twice");
        rows.push((code.to_owned(), cells[1].to_owned(), cells[2].to_owned()));
    }
    assert_eq!(tables, 1, "{page} must hold exactly one table with the header `| code | HTTP | close | ...`");
    rows
}

/// The codes of the reason-code table of `docs/errors.md`.
fn documented_codes(doc: &str) -> BTreeSet<String> {
    code_rows(doc, "docs/errors.md").into_iter().map(|r| r.0).collect()
}

/// Codes that are only ever `error` replies, never a rejection or a close.
const REPLY_ONLY: &[ErrorCode] = &[ErrorCode::AgentUnknown, ErrorCode::TooManyRuns, ErrorCode::RunNotFound];

/// `docs/protocol.md` lists every rejection and close with the status and close code
/// the gateway really uses.
#[test]
fn protocol_md_lists_every_rejection_with_its_status_and_close_code() {
    let rows = code_rows(&read_doc("docs/protocol.md"), "docs/protocol.md");
    for (code, http, close) in &rows {
        let real =
            ErrorCode::parse(code).unwrap_or_else(|| panic!("docs/protocol.md lists `{code}`, which is no ErrorCode"));
        assert!(!REPLY_ONLY.contains(&real), "docs/protocol.md lists the error-reply code `{code}` as a rejection");
        let want_http = real.http_status().map(|s| s.to_string()).unwrap_or_else(|| "-".to_owned());
        assert_eq!(http, &want_http, "HTTP status of `{code}` in docs/protocol.md");
        assert_eq!(close, &real.close_code().to_string(), "close code of `{code}` in docs/protocol.md");
    }
    for code in ErrorCode::ALL.iter().filter(|c| !REPLY_ONLY.contains(c)) {
        assert!(rows.iter().any(|r| r.0 == code.as_str()), "docs/protocol.md has no row for `{code}`");
    }
    println!("{} rejection codes in docs/protocol.md, statuses and close codes checked", rows.len());
}

#[test]
fn every_error_code_is_in_errors_md_and_every_code_there_exists() {
    let documented = documented_codes(&read_doc("docs/errors.md"));
    let real: BTreeSet<String> = ErrorCode::ALL.iter().map(|c| c.as_str().to_owned()).collect();
    let missing: Vec<&String> = real.difference(&documented).collect();
    assert!(missing.is_empty(), "ErrorCodes that docs/errors.md does not list: {missing:?}");
    let invented: Vec<&String> = documented.difference(&real).collect();
    assert!(invented.is_empty(), "codes docs/errors.md lists that are no ErrorCode: {invented:?}");
    println!("{} error codes, each documented once", real.len());
}

/// README.md still links `../shared` (its owner is rewriting those lines). Set this to
/// `false` when it no longer does; the test fails while it says `true` and the README is
/// already clean, so the README joins the checked pages as soon as it can.
const README_LINKS_PENDING: bool = false;

/// A clone of the repository holds no `../shared`: its pages must not point there, and
/// every relative link must resolve to a file of the repository.
#[test]
fn docs_link_only_files_in_the_repository() {
    let dir = repo_file("docs");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("docs/ exists")
        .map(|e| e.expect("a docs/ entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("md"))
        .collect();
    assert!(pages.len() >= 5, "only {} pages under docs/", pages.len());
    let readme = repo_file("README.md");
    let readme_text = std::fs::read_to_string(&readme).expect("README.md");
    if README_LINKS_PENDING {
        assert!(
            readme_text.contains("../shared"),
            "README.md no longer links ../shared: set README_LINKS_PENDING = false in {}",
            file!()
        );
    } else {
        pages.push(readme);
    }
    for path in &pages {
        let base = path.parent().expect("a page has a directory");
        let text = std::fs::read_to_string(path).expect("a readable page");
        for (n, line) in text.lines().enumerate() {
            assert!(
                !line.contains("../shared") && !line.contains("/work/shared"),
                "{}:{}: refers to the contract files outside the repository: {line}",
                path.display(),
                n + 1
            );
            // Relative links resolve to files of the repository.
            for target in line.split("](").skip(1).filter_map(|rest| rest.split_once(')').map(|(t, _)| t)) {
                if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                    continue;
                }
                let file = target.split('#').next().unwrap_or(target);
                assert!(
                    base.join(file).exists(),
                    "{}:{}: links {target}, which is not in the repository",
                    path.display(),
                    n + 1
                );
            }
        }
    }
    for required in ["protocol.md", "configuration.md", "operations.md", "scaling.md", "errors.md"] {
        assert!(dir.join(required).is_file(), "docs/{required} is missing");
    }
}

/// The Redis backend is being implemented by another change; until it lands the loader
/// refuses `backend.kind = "redis"`. Set this to `false` when it lands: the test fails
/// while it says `true` and the loader accepts Redis, so it cannot go stale.
const REDIS_BACKEND_PENDING: bool = false;

fn load_with(rel: &str, env: &[(&str, &str)]) -> Result<Config, agentgate_app::ConfigError> {
    let home = tempfile::tempdir().expect("a temporary AGENTGATE_HOME");
    let mut map: Env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    map.insert("AGENTGATE_HOME".into(), home.path().display().to_string());
    Config::load(Some(&repo_file(rel)), &map)
}

/// A secret long enough for `doctor` (64 hex digits); never a real one.
const TEST_SECRET: &str = "5f1c0e2b9a7d4c3e8b6a1f0d2c4e6a8b0d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c";

/// The configurations shipped for the container image, the systemd unit and
/// compose.yaml load.
#[test]
fn shipped_configurations_load() {
    let config = load_with("deploy/agentgate.toml", &[("AGENTGATE_JWT_SECRET", TEST_SECRET)])
        .unwrap_or_else(|e| panic!("deploy/agentgate.toml: {e}"));
    assert_eq!(config.server.profile, agentgate_app::config::Profile::Production);
    assert_eq!(config.server.listen, "0.0.0.0:8079", "the image's EXPOSE and HEALTHCHECK use port 8079");
    let without_secret = load_with("deploy/agentgate.toml", &[]).expect_err("the secret is required");
    assert_eq!(without_secret.key, "auth.jwt[0].secret_env");

    let compose = "deploy/agentgate-compose.toml";
    match (load_with(compose, &[("AGENTGATE_JWT_SECRET", TEST_SECRET)]), REDIS_BACKEND_PENDING) {
        (Ok(_), false) => {}
        (Ok(_), true) => panic!("the loader accepts backend.kind = \"redis\": set REDIS_BACKEND_PENDING = false"),
        (Err(e), true) if e.key == "backend.kind" => {
            // Everything but the pending backend must already be right.
            load_with(compose, &[("AGENTGATE_JWT_SECRET", TEST_SECRET), ("AGENTGATE_BACKEND__KIND", "memory")])
                .unwrap_or_else(|e| panic!("{compose} (with the memory backend): {e}"));
        }
        (Err(e), _) => panic!("{compose}: {e}"),
    }
}

/// The packaging keeps what docs/operations.md promises about it.
#[test]
fn packaging_keeps_its_promises() {
    let unit = read_doc("deploy/agentgate.service");
    for line in [
        "User=agentgate",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=agentgate",
        "Environment=AGENTGATE_HOME=%S/agentgate",
        "LimitNOFILE=65536",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "RestartPreventExitStatus=64",
    ] {
        assert!(unit.lines().any(|l| l.trim() == line), "deploy/agentgate.service lacks `{line}`");
    }
    let stop_s: u64 = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.parse().ok())
        .expect("deploy/agentgate.service sets TimeoutStopSec= in seconds");
    let config = load_with("deploy/agentgate.toml", &[("AGENTGATE_JWT_SECRET", TEST_SECRET)]).expect("loads");
    assert!(
        stop_s > config.server.shutdown_grace.as_secs() + 5,
        "TimeoutStopSec={stop_s} must exceed server.shutdown_grace_s with a margin"
    );

    let dockerfile = read_doc("Dockerfile");
    for needle in [
        "cargo build --release --locked -p agentgate",
        "FROM debian:bookworm-slim",
        "USER agentgate",
        "ENV AGENTGATE_HOME=/var/lib/agentgate",
        "HEALTHCHECK",
        "/readyz",
        r#"CMD ["serve", "--config", "/etc/agentgate/agentgate.toml"]"#,
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks `{needle}`");
    }
    assert_eq!(dockerfile.matches("\nFROM ").count(), 2, "the Dockerfile has a build and a runtime stage");

    let compose = read_doc("compose.yaml");
    for needle in ["appendonly", "gateway-1:", "gateway-2:", "127.0.0.1:8081:8079", "127.0.0.1:8082:8079"] {
        assert!(compose.contains(needle), "compose.yaml lacks `{needle}`");
    }
    let script = repo_file("deploy/build-image.sh");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&script).expect("build-image.sh").permissions());
    assert!(mode & 0o111 != 0, "deploy/build-image.sh must be executable");
}
