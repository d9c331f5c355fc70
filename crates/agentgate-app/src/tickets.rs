//! One-time tickets (PROTOCOL.md 2.2): a short-lived, single-use credential a browser
//! fetches with its real token and then puts in the WebSocket URL. Only the SHA-256 of
//! a ticket is held; the ticket itself exists only in the response and the URL.

use std::sync::Arc;
use std::time::Duration;

use agentgate_auth::Principal;
use agentgate_protocol::{ErrorCode, id};
use sha2::{Digest, Sha256};

use crate::backend::{StoredTicket, TicketStore};
use crate::session::{StoreError, now_ms};

/// Most tickets the memory backend holds at once, whoever holds them; a full store
/// first drops expired ones, then refuses. Each principal is held to far fewer
/// (`limits.tickets_per_principal`), so one user cannot reach this.
pub const MAX_TICKETS: usize = 100_000;

/// Ticket policy over the backend's store: lifetime, single use, origin binding.
#[derive(Debug)]
pub struct Tickets {
    store: Arc<dyn TicketStore>,
    ttl: Duration,
    per_principal: usize,
}

impl Tickets {
    /// Tickets living `ttl`, kept in `store`, at most `per_principal` live ones per
    /// principal.
    pub fn new(store: Arc<dyn TicketStore>, ttl: Duration, per_principal: usize) -> Self {
        Self { store, ttl, per_principal: per_principal.max(1) }
    }

    /// Issue a ticket carrying `principal`, bound to `origin` if given. The bound
    /// `limits.tickets_per_principal` is enforced by the store, atomically.
    ///
    /// # Errors
    /// [`StoreError::TicketLimit`] when the principal holds its most live tickets
    /// (`rate_limited`); the store is full or unreachable.
    pub async fn issue(&self, principal: &Principal, origin: Option<String>) -> Result<String, StoreError> {
        let ticket = id::ticket();
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let stored =
            StoredTicket { principal: principal.clone(), origin, expires_at_ms: now_ms().saturating_add(ttl_ms) };
        self.store.put(digest(&ticket), stored, self.ttl, self.per_principal).await?;
        Ok(ticket)
    }

    /// Use a ticket: it is consumed whatever the outcome. Returns its principal, or
    /// `ticket_invalid` with a reason.
    ///
    /// # Errors
    /// Unknown, used, expired, or presented from another (or no) `Origin`;
    /// `service_unavailable` when the store cannot be reached.
    pub async fn consume(&self, ticket: &str, origin: Option<&str>) -> Result<Principal, (ErrorCode, String)> {
        let entry = self.store.take(digest(ticket)).await.map_err(|e| {
            (ErrorCode::ServiceUnavailable, format!("the shared backend is unreachable ({e}); retry shortly"))
        })?;
        let invalid = |m: &str| (ErrorCode::TicketInvalid, m.to_owned());
        let Some(entry) = entry else {
            return Err(invalid("the ticket is unknown or was already used; request a new one with POST /v1/tickets"));
        };
        if entry.expires_at_ms <= now_ms() {
            return Err(invalid("the ticket expired; request it just before connecting"));
        }
        if let Some(bound) = &entry.origin
            && origin.is_none_or(|o| !o.eq_ignore_ascii_case(bound))
        {
            return Err(invalid("the ticket was issued to another origin"));
        }
        Ok(entry.principal)
    }

    /// Drop expired tickets (memory backend).
    pub fn sweep(&self) {
        self.store.sweep();
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

    #[tokio::test]
    async fn a_ticket_works_once_and_only_from_its_origin() {
        let t = Tickets::new(Arc::new(crate::backend::memory::MemoryTickets::default()), Duration::from_secs(30), 16);
        let a = t.issue(&principal(), None).await.unwrap();
        assert!(a.starts_with("t_"));
        assert!(t.consume(&a, Some("http://x")).await.is_ok());
        assert_eq!(t.consume(&a, None).await.unwrap_err().0, ErrorCode::TicketInvalid);
        let b = t.issue(&principal(), Some("http://app".into())).await.unwrap();
        assert!(t.consume(&b, None).await.is_err());
        let c = t.issue(&principal(), Some("http://app".into())).await.unwrap();
        assert!(t.consume(&c, Some("http://app")).await.is_ok());
    }

    #[tokio::test]
    async fn a_principal_holds_at_most_its_cap_of_live_tickets() {
        let t = Tickets::new(Arc::new(crate::backend::memory::MemoryTickets::default()), Duration::from_secs(30), 2);
        let a = t.issue(&principal(), None).await.unwrap();
        t.issue(&principal(), None).await.unwrap();
        assert!(matches!(t.issue(&principal(), None).await, Err(StoreError::TicketLimit(2))));
        let mut other = principal();
        other.issuer = "other".into();
        assert!(t.issue(&other, None).await.is_ok(), "another issuer's alice is another principal");
        t.consume(&a, None).await.unwrap();
        assert!(t.issue(&principal(), None).await.is_ok(), "a used ticket frees its place");
    }
}
