//! Sessions: identity-bound event streams that outlive connections.
//!
//! - [`store`]: the [`SessionStore`] interface (seq, bounded buffer, owner, expiry),
//!   shared by all nodes of a deployment.
//! - [`memory`]: the in-memory [`MemoryStore`].
//! - [`hub`]: local delivery to the connections of this node, with bounded queues.
//! - [`subscription`]: one connection's attachment, replay and live stream.
//! - [`cursor`]: per-connection dedupe and gap detection, so that no event is
//!   delivered twice on a connection and none after `last_seq` is skipped.

pub mod cursor;
pub mod hub;
pub mod memory;
pub mod store;
pub mod subscription;

pub use cursor::{Cursor, Step, resume_point};
pub use hub::{Attachment, Delivery, Hub, Mailbox};
pub use memory::{Bounds, MemoryStore};
pub use store::{
    BoxFuture, Event, History, Holder, NewEvent, SessionStore, StoreError, StoreFuture, StoredEvent, frame_parts,
};
pub use subscription::{Opened, Resume, Subscription};

use std::sync::Arc;

/// The hasher of maps whose keys no client chooses: session ids (made by the node) and
/// owners (from verified credentials). foldhash, randomly seeded per map, costs a
/// fraction of SipHash per lookup (several lookups per handshake,
/// docs/performance.md); it is only "minimally" resistant to crafted collisions, so
/// maps keyed by what a client picks (its IP address, a revoked `jti`) keep SipHash.
pub type FastHash = foldhash::fast::RandomState;

/// The identity a session, run, ticket or connection count is bound to: the principal
/// of PROTOCOL.md section 6, issuer, subject and tenant. Two principals that differ in
/// any of the three are different owners.
///
/// Its strings are shared: an owner is copied into each session, run and count it
/// holds, and a copy costs no allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// Issuer: the JWT issuer's `name`, or `api_key` for every API key.
    pub issuer: Arc<str>,
    /// Subject.
    pub subject: Arc<str>,
    /// Tenant.
    pub tenant: Option<Arc<str>>,
}

impl Owner {
    /// The identity of a principal.
    pub fn of(p: &agentgate_auth::Principal) -> Self {
        Self {
            issuer: p.issuer.as_str().into(),
            subject: p.subject.as_str().into(),
            tenant: p.tenant.as_deref().map(Arc::from),
        }
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
