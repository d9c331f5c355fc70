//! One-time tickets (PROTOCOL.md 2.2): a short-lived, single-use credential a browser
//! fetches with its real token and then puts in the WebSocket URL. Only the SHA-256 of
//! a ticket is held; the ticket itself exists only in the response and the URL.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agentgate_auth::Principal;
use agentgate_protocol::{ErrorCode, id};
use sha2::{Digest, Sha256};

use crate::session::Owner;

/// Most tickets held at once on a node, whoever holds them; a full store first drops
/// expired ones, then refuses. Each principal is held to far fewer
/// (`limits.tickets_per_principal`), so one user cannot reach this.
pub const MAX_TICKETS: usize = 100_000;

#[derive(Debug)]
struct Entry {
    principal: Principal,
    owner: Owner,
    origin: Option<String>,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<[u8; 32], Entry>,
    /// Each principal's live tickets, oldest first: the per-principal index, so issuing
    /// never scans the whole store.
    by_owner: HashMap<Owner, VecDeque<([u8; 32], Instant)>>,
}

impl Inner {
    /// Forget `owner`'s expired tickets (they are at the front).
    fn prune(&mut self, owner: &Owner, now: Instant) {
        let Some(queue) = self.by_owner.get_mut(owner) else { return };
        while queue.front().is_some_and(|(_, expires)| *expires <= now) {
            if let Some((d, _)) = queue.pop_front() {
                self.entries.remove(&d);
            }
        }
        if queue.is_empty() {
            self.by_owner.remove(owner);
        }
    }
}

/// Why a ticket was not issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The principal holds `limits.tickets_per_principal` live tickets (the number).
    Principal(usize),
    /// The node holds [`MAX_TICKETS`].
    Node,
}

/// Live tickets of this node.
#[derive(Debug)]
pub struct Tickets {
    inner: Mutex<Inner>,
    ttl: Duration,
    per_principal: usize,
}

impl Tickets {
    /// Tickets living `ttl`, at most `per_principal` live ones per principal.
    pub fn new(ttl: Duration, per_principal: usize) -> Self {
        Self { inner: Mutex::new(Inner::default()), ttl, per_principal: per_principal.max(1) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issue a ticket carrying `principal`, bound to `origin` if given.
    ///
    /// The bound `limits.tickets_per_principal` is decided here: a principal holding
    /// that many live tickets gets none (`rate_limited`).
    ///
    /// # Errors
    /// [`Full`] when the principal or the node holds its most live tickets.
    pub fn issue(&self, principal: Principal, origin: Option<String>) -> Result<String, Full> {
        let now = Instant::now();
        let owner = Owner::of(&principal);
        let mut inner = self.lock();
        inner.prune(&owner, now);
        if inner.by_owner.get(&owner).is_some_and(|q| q.len() >= self.per_principal) {
            return Err(Full::Principal(self.per_principal));
        }
        if inner.entries.len() >= MAX_TICKETS {
            // Rare (many principals at once): drop every expired ticket.
            Self::sweep_locked(&mut inner, now);
            if inner.entries.len() >= MAX_TICKETS {
                return Err(Full::Node);
            }
        }
        let ticket = id::ticket();
        let d = digest(&ticket);
        let expires = now + self.ttl;
        inner.by_owner.entry(owner.clone()).or_default().push_back((d, expires));
        inner.entries.insert(d, Entry { principal, owner, origin, expires });
        Ok(ticket)
    }

    /// Use a ticket: it is consumed whatever the outcome. Returns its principal, or
    /// `ticket_invalid` with a reason.
    ///
    /// # Errors
    /// Unknown, used, expired, or presented from another (or no) `Origin`.
    pub fn consume(&self, ticket: &str, origin: Option<&str>) -> Result<Principal, (ErrorCode, String)> {
        let d = digest(ticket);
        let entry = {
            let mut inner = self.lock();
            let entry = inner.entries.remove(&d);
            if let Some(e) = &entry
                && let Some(queue) = inner.by_owner.get_mut(&e.owner)
            {
                queue.retain(|(x, _)| *x != d);
                if queue.is_empty() {
                    inner.by_owner.remove(&e.owner);
                }
            }
            entry
        };
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

    fn sweep_locked(inner: &mut Inner, now: Instant) {
        let owners: Vec<Owner> = inner.by_owner.keys().cloned().collect();
        for owner in owners {
            inner.prune(&owner, now);
        }
    }

    /// Drop expired tickets.
    pub fn sweep(&self) {
        Self::sweep_locked(&mut self.lock(), Instant::now());
    }

    /// The lifetime of new tickets.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Live tickets held (expired ones count until swept).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no ticket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        let t = Tickets::new(Duration::from_secs(30), 16);
        let a = t.issue(principal(), None).unwrap();
        assert!(a.starts_with("t_"));
        assert!(t.consume(&a, Some("http://x")).is_ok());
        assert_eq!(t.consume(&a, None).unwrap_err().0, ErrorCode::TicketInvalid);
        let b = t.issue(principal(), Some("http://app".into())).unwrap();
        assert!(t.consume(&b, None).is_err());
        let c = t.issue(principal(), Some("http://app".into())).unwrap();
        assert!(t.consume(&c, Some("http://app")).is_ok());
        assert!(t.is_empty());
    }

    #[test]
    fn a_principal_holds_at_most_its_cap_of_live_tickets() {
        let t = Tickets::new(Duration::from_secs(30), 3);
        let held: Vec<String> = (0..3).map(|_| t.issue(principal(), None).unwrap()).collect();
        assert_eq!(t.issue(principal(), None), Err(Full::Principal(3)));
        // Another issuer's `alice` is another principal.
        let mut other = principal();
        other.issuer = "other".into();
        assert!(t.issue(other, None).is_ok());
        // Using one frees its place.
        assert!(t.consume(&held[0], None).is_ok());
        assert!(t.issue(principal(), None).is_ok());
        assert_eq!(t.issue(principal(), None), Err(Full::Principal(3)));
    }

    #[test]
    fn expired_tickets_free_their_places() {
        let t = Tickets::new(Duration::from_millis(1), 1);
        t.issue(principal(), None).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.issue(principal(), None).is_ok());
        std::thread::sleep(Duration::from_millis(5));
        t.sweep();
        assert!(t.is_empty());
    }
}
