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
    id_of(prefix, bytes)
}

/// `prefix` and the base64url of `bytes`.
fn id_of(prefix: &str, bytes: [u8; 16]) -> String {
    let mut out = String::with_capacity(prefix.len() + 22);
    out.push_str(prefix);
    URL_SAFE_NO_PAD.encode_string(bytes, &mut out);
    out
}

/// A new session id (`s_...`).
pub fn session_id() -> String {
    new_id("s_")
}

/// The session id made of these 128 bits: `s_` and their base64url.
pub fn session_id_of(bits: u128) -> String {
    id_of("s_", bits.to_be_bytes())
}

/// The 128 bits of a session id, the inverse of [`session_id_of`]; `None` for any text
/// that is not exactly such an id (base64url decoding refuses non-zero trailing bits,
/// so each id has one spelling).
pub fn session_id_bits(id: &str) -> Option<u128> {
    let text = id.strip_prefix("s_")?;
    if text.len() != 22 {
        return None;
    }
    // Room for the decoder's estimate (18 bytes for 22 characters).
    let mut bytes = [0u8; 18];
    match URL_SAFE_NO_PAD.decode_slice(text, &mut bytes) {
        Ok(16) => {
            let mut bits = [0u8; 16];
            bits.copy_from_slice(&bytes[..16]);
            Some(u128::from_be_bytes(bits))
        }
        _ => None,
    }
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

    #[test]
    fn a_session_id_and_its_bits_convert_both_ways_and_nothing_else_converts() {
        for _ in 0..100 {
            let id = session_id();
            let bits = session_id_bits(&id).unwrap();
            assert_eq!(session_id_of(bits), id);
        }
        for bits in [0, 1, u128::MAX, 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef] {
            assert_eq!(session_id_bits(&session_id_of(bits)), Some(bits));
        }
        let id = session_id();
        let last = id.chars().last().unwrap();
        // The last character carries 2 unused bits: only one spelling decodes.
        let other = ['A', 'B', 'C', 'D', 'E'].into_iter().find(|c| *c != last).unwrap();
        let respelled = format!("{}{other}", &id[..id.len() - 1]);
        assert!(
            session_id_bits(&respelled).is_none() || session_id_of(session_id_bits(&respelled).unwrap()) == respelled
        );
        for bad in [
            "",
            "s_",
            "r_AAAAAAAAAAAAAAAAAAAAAA",
            "s_AAAAAAAAAAAAAAAAAAAAA",
            "s_AAAAAAAAAAAAAAAAAAAAAAA",
            "s_AAAAAAAAAAAAAAAAAAAA+A",
            "s_AAAAAAAAAAAAAAAAAAAAAB",
        ] {
            assert_eq!(session_id_bits(bad), None, "{bad:?}");
        }
    }
}
