//! Local delivery: which connection of this node is attached to which session, and
//! the bounded queue that feeds it. The store publishes events here (directly in
//! memory, through pub/sub with Redis); the hub never blocks: a full queue closes its
//! connection `slow_consumer`, and the client resumes to get the rest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use agentgate_protocol::ErrorCode;
use tokio::sync::{mpsc, watch};

use super::store::StoredEvent;

/// The live link to one connection.
#[derive(Debug)]
pub struct Attachment {
    /// Connection id on this node.
    pub conn_id: u64,
    /// Bounded queue of events for the connection's writer.
    pub tx: mpsc::Sender<StoredEvent>,
    /// Tells the connection to close with a code (slow consumer, takeover, ...).
    pub kick: watch::Sender<Option<ErrorCode>>,
    /// Bytes of the frames queued and not yet taken by the writer (the subscription
    /// subtracts what it takes).
    pub queued: Arc<AtomicUsize>,
}

/// Sessions attached on this node.
#[derive(Debug)]
pub struct Hub {
    attached: Mutex<HashMap<String, Attachment>>,
    queue_bytes: usize,
}

impl Default for Hub {
    fn default() -> Self {
        Self { attached: Mutex::new(HashMap::new()), queue_bytes: usize::MAX }
    }
}

impl Hub {
    /// A hub whose queues hold at most `queue_bytes` of frames each (always at least
    /// one event): a connection whose queue would pass it is closed `slow_consumer`.
    pub fn with_queue_bytes(queue_bytes: usize) -> Self {
        Self { queue_bytes, ..Self::default() }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Attachment>> {
        self.attached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attach a connection; a connection of this node already attached to the session
    /// is closed `session_taken_over`.
    pub fn attach(&self, session_id: &str, attachment: Attachment) {
        if let Some(old) = self.map().insert(session_id.to_owned(), attachment) {
            let _ = old.kick.send(Some(ErrorCode::SessionTakenOver));
        }
    }

    /// Detach `conn_id` if it is the attached connection.
    pub fn detach(&self, session_id: &str, conn_id: u64) {
        let mut map = self.map();
        if map.get(session_id).is_some_and(|a| a.conn_id == conn_id) {
            map.remove(session_id);
        }
    }

    /// Remove `conn_id`'s attachment and hand it back (to re-attach elsewhere).
    pub fn take(&self, session_id: &str, conn_id: u64) -> Option<Attachment> {
        let mut map = self.map();
        if map.get(session_id).is_some_and(|a| a.conn_id == conn_id) { map.remove(session_id) } else { None }
    }

    /// Close the attached connection with `code`, unless it is `except_conn`.
    pub fn kick(&self, session_id: &str, except_conn: Option<u64>, code: ErrorCode) {
        let mut map = self.map();
        if map.get(session_id).is_some_and(|a| Some(a.conn_id) != except_conn)
            && let Some(a) = map.remove(session_id)
        {
            let _ = a.kick.send(Some(code));
        }
    }

    /// Close connection `conn_id` with `code` if it is the one attached to the session.
    pub fn kick_conn(&self, session_id: &str, conn_id: u64, code: ErrorCode) {
        let mut map = self.map();
        if map.get(session_id).is_some_and(|a| a.conn_id == conn_id)
            && let Some(a) = map.remove(session_id)
        {
            let _ = a.kick.send(Some(code));
        }
    }

    /// The sessions attached on this node.
    pub fn sessions(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// Hand an event to the attached connection, if any, without waiting. The bound on
    /// a connection's queue (events, and bytes) is decided here.
    pub fn deliver(&self, session_id: &str, event: StoredEvent) {
        let mut map = self.map();
        let Some(a) = map.get(session_id) else { return };
        let len = event.text.len();
        let queued = a.queued.load(Ordering::Relaxed);
        let over_bytes = queued > 0 && queued.saturating_add(len) > self.queue_bytes;
        let sent = if over_bytes { Err(mpsc::error::TrySendError::Full(event)) } else { a.tx.try_send(event) };
        match sent {
            Ok(()) => {
                a.queued.fetch_add(len, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(a) = map.remove(session_id) {
                    let _ = a.kick.send(Some(ErrorCode::SlowConsumer));
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                map.remove(session_id);
            }
        }
    }

    /// Number of attached sessions.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no session is attached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
