//! Server-made identifiers: a prefix and 128 random bits, base64url (22 characters).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

/// Prefixes of the identifiers the server makes. A token starting with one of these
/// was copied from somewhere it does not belong.
pub const SERVER_PREFIXES: &[(&str, &str)] =
    &[("s_", "a session id"), ("r_", "a run id"), ("t_", "a ticket"), ("req_", "a request id")];

/// A new identifier with the given prefix.
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let mut out = String::with_capacity(prefix.len() + 22);
    out.push_str(prefix);
    URL_SAFE_NO_PAD.encode_string(bytes, &mut out);
    out
}

/// A new session id (`s_...`).
pub fn session_id() -> String {
    new_id("s_")
}

/// A new run id (`r_...`).
pub fn run_id() -> String {
    new_id("r_")
}

/// A new request id (`req_...`).
pub fn request_id() -> String {
    new_id("req_")
}

/// A new ticket (`t_...`).
pub fn ticket() -> String {
    new_id("t_")
}

/// What a server-made identifier looks like, if `value` starts with a server prefix.
pub fn looks_like_server_id(value: &str) -> Option<&'static str> {
    SERVER_PREFIXES.iter().find(|(p, _)| value.starts_with(p)).map(|(_, what)| *what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_at_least_20_characters_of_randomness() {
        let id = session_id();
        assert!(id.starts_with("s_"));
        assert_eq!(id.len(), 2 + 22);
        assert_ne!(session_id(), session_id());
        assert_eq!(looks_like_server_id(&id), Some("a session id"));
        assert_eq!(looks_like_server_id("staging_jwt_token_u1"), None);
    }
}
