//! The revocation list (PROTOCOL.md section 8): by `jti`, or by subject for tokens
//! issued before a time. New handshakes consult it through the verifier; live
//! connections watch its generation counter and re-check their own credential when it
//! changes, so a revoked connection closes within milliseconds.

use std::collections::HashMap;
use std::sync::RwLock;

use agentgate_auth::Revocations;
use tokio::sync::watch;

/// Most entries kept. Entries are never evicted (that would un-revoke a token): past
/// this, new revocations are refused and the operator is told to restart or rotate keys.
pub const MAX_REVOCATIONS: usize = 1_000_000;

/// Most bytes the list holds, counting each entry as its text plus
/// [`ENTRY_OVERHEAD_BYTES`]: with `jti` at most 256 bytes and `subject` at most 1024
/// (checked by the endpoint), the list stays within about this much memory.
pub const MAX_REVOCATION_BYTES: usize = 64 * 1024 * 1024;

/// What one entry costs beyond its text (hash table slot, string header).
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

#[derive(Debug, Default)]
struct Inner {
    jtis: HashMap<String, ()>,
    subjects: HashMap<String, i64>,
    bytes: usize,
}

/// Revoked tokens of this node.
#[derive(Debug)]
pub struct RevocationList {
    inner: RwLock<Inner>,
    generation: watch::Sender<u64>,
}

impl Default for RevocationList {
    fn default() -> Self {
        Self { inner: RwLock::default(), generation: watch::channel(0).0 }
    }
}

/// A revocation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    /// One token by its `jti`.
    Jti(String),
    /// Every token of `subject` issued before `issued_before` (Unix seconds).
    Subject {
        /// The subject.
        subject: String,
        /// Tokens with an earlier `iat` (or none) are revoked.
        issued_before: i64,
    },
}

impl RevocationList {
    /// Add a revocation. `false` when the list is full ([`MAX_REVOCATIONS`] entries or
    /// [`MAX_REVOCATION_BYTES`]; the bound is decided here). Repeating a revocation
    /// adds nothing.
    pub fn revoke(&self, r: Revoke) -> bool {
        {
            let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
            let (key, is_new) = match &r {
                Revoke::Jti(j) => (j, !inner.jtis.contains_key(j)),
                Revoke::Subject { subject, .. } => (subject, !inner.subjects.contains_key(subject)),
            };
            let cost = if is_new { key.len() + ENTRY_OVERHEAD_BYTES } else { 0 };
            if is_new
                && (inner.jtis.len() + inner.subjects.len() >= MAX_REVOCATIONS
                    || inner.bytes + cost > MAX_REVOCATION_BYTES)
            {
                return false;
            }
            inner.bytes += cost;
            match r {
                Revoke::Jti(j) => {
                    inner.jtis.insert(j, ());
                }
                Revoke::Subject { subject, issued_before } => {
                    let t = inner.subjects.entry(subject).or_insert(issued_before);
                    *t = (*t).max(issued_before);
                }
            }
        }
        self.generation.send_modify(|g| *g += 1);
        true
    }

    /// Wake every watcher to re-check, without a change to the list: the node's
    /// shutdown does this, so that a live connection watches one channel for both.
    pub fn poke(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Watch for changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

impl Revocations for RevocationList {
    fn is_revoked(&self, jti: Option<&str>, subject: &str, issued_at: Option<i64>) -> bool {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        if jti.is_some_and(|j| inner.jtis.contains_key(j)) {
            return true;
        }
        match inner.subjects.get(subject) {
            Some(before) => issued_at.is_none_or(|iat| iat < *before),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revokes_by_jti_and_by_subject_before_a_time() {
        let l = RevocationList::default();
        assert!(!l.is_revoked(Some("a"), "alice", Some(10)));
        l.revoke(Revoke::Jti("a".into()));
        assert!(l.is_revoked(Some("a"), "bob", Some(10)));
        l.revoke(Revoke::Subject { subject: "alice".into(), issued_before: 100 });
        assert!(l.is_revoked(None, "alice", Some(99)));
        assert!(l.is_revoked(None, "alice", None));
        assert!(!l.is_revoked(None, "alice", Some(100)));
        assert!(!l.is_revoked(None, "carol", Some(1)));
    }
}
