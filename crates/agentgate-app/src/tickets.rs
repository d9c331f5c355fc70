//! One-time tickets (PROTOCOL.md 2.2): a short-lived, single-use credential a browser
//! fetches with its real token and then puts in the WebSocket URL. Only the SHA-256 of
//! a ticket is held; the ticket itself exists only in the response and the URL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentgate_auth::Principal;
use agentgate_protocol::{ErrorCode, id};
use sha2::{Digest, Sha256};

/// Most tickets held at once; a full store first drops expired ones, then refuses.
pub const MAX_TICKETS: usize = 100_000;

#[derive(Debug)]
struct Entry {
    principal: Principal,
    origin: Option<String>,
    expires: Instant,
}

/// Live tickets of this node.
#[derive(Debug)]
pub struct Tickets {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    ttl: Duration,
}

impl Tickets {
    /// Tickets living `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self { entries: Mutex::new(HashMap::new()), ttl }
    }

    /// Issue a ticket carrying `principal`, bound to `origin` if given. `None` when
    /// the store is full of live tickets.
    pub fn issue(&self, principal: Principal, origin: Option<String>) -> Option<String> {
        let ticket = id::ticket();
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TICKETS {
            map.retain(|_, e| e.expires > now);
            if map.len() >= MAX_TICKETS {
                return None;
            }
        }
        map.insert(digest(&ticket), Entry { principal, origin, expires: now + self.ttl });
        Some(ticket)
    }

    /// Use a ticket: it is consumed whatever the outcome. Returns its principal, or
    /// `ticket_invalid` with a reason.
    ///
    /// # Errors
    /// Unknown, used, expired, or presented from another (or no) `Origin`.
    pub fn consume(&self, ticket: &str, origin: Option<&str>) -> Result<Principal, (ErrorCode, String)> {
        let entry = self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(&digest(ticket));
        let invalid = |m: &str| (ErrorCode::TicketInvalid, m.to_owned());
        let Some(entry) = entry else {
            return Err(invalid("the ticket is unknown or was already used; request a new one with POST /v1/tickets"));
        };
        if entry.expires <= Instant::now() {
            return Err(invalid("the ticket expired; request it just before connecting"));
        }
        if let Some(bound) = &entry.origin
            && origin.is_none_or(|o| !o.eq_ignore_ascii_case(bound))
        {
            return Err(invalid("the ticket was issued to another origin"));
        }
        Ok(entry.principal)
    }

    /// Drop expired tickets.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, e| e.expires > now);
    }

    /// The lifetime of new tickets.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

fn digest(ticket: &str) -> [u8; 32] {
    Sha256::digest(ticket.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            issuer: "local".into(),
            subject: "alice".into(),
            tenant: None,
            scopes: vec![],
            via: "jwt:local".into(),
            expires_at: None,
            jti: None,
            issued_at: None,
            token_fp: "00000000".into(),
        }
    }

    #[test]
    fn a_ticket_works_once_and_only_from_its_origin() {
        let t = Tickets::new(Duration::from_secs(30));
        let a = t.issue(principal(), None).unwrap();
        assert!(a.starts_with("t_"));
        assert!(t.consume(&a, Some("http://x")).is_ok());
        assert_eq!(t.consume(&a, None).unwrap_err().0, ErrorCode::TicketInvalid);
        let b = t.issue(principal(), Some("http://app".into())).unwrap();
        assert!(t.consume(&b, None).is_err());
        let c = t.issue(principal(), Some("http://app".into())).unwrap();
        assert!(t.consume(&c, Some("http://app")).is_ok());
    }
}
