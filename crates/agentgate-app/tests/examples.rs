//! Every file in `examples/` loads. The count is asserted, so a test that finds no
//! files cannot pass in silence.

use std::path::Path;

use agentgate_app::{Config, Env};

#[test]
fn every_example_config_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("examples");
    let home = tempfile::tempdir().unwrap();
    let mut env = Env::new();
    env.insert("AGENTGATE_HOME".into(), home.path().display().to_string());
    env.insert("AGENTGATE_JWT_SECRET".into(), "example-secret-0123456789abcdef0123456789".into());
    let mut loaded = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        // Examples name files relative to the repository root.
        let text = std::fs::read_to_string(&path).unwrap().replace("\"examples/", &format!("\"{}/", dir.display()));
        let tmp = home.path().join(path.file_name().unwrap());
        std::fs::write(&tmp, text).unwrap();
        Config::load(Some(&tmp), &env).unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
        loaded.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    loaded.sort();
    assert_eq!(
        loaded,
        [
            "api-keys.toml",
            "auth0.toml",
            "development.toml",
            "hs256.toml",
            "keycloak.toml",
            "rsa-public-key.toml",
            "supabase.toml"
        ]
    );
}
