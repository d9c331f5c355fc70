//! Local delivery: which connection of this node is attached to which session, and
//! the bounded [`Mailbox`] that feeds it. The store publishes events here (directly in
//! memory, through pub/sub with Redis); the hub never blocks: a full queue closes its
//! connection `slow_consumer`, and the client resumes to get the rest.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use agentgate_protocol::ErrorCode;
use tokio::sync::Notify;

use super::FastHash;
use super::store::StoredEvent;

/// One connection's mailbox: the bounded queue of live events for its writer, and the
/// code that must close it (slow consumer, takeover, ...). It allocates nothing until
/// an event is queued, and gives the queue's memory back once it is drained: an idle
/// connection's mailbox is a few words.
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<Queue>,
    notify: Notify,
    /// Most events queued at once.
    cap: usize,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<StoredEvent>,
    /// Bytes of the frames queued.
    bytes: usize,
    kicked: Option<ErrorCode>,
}

/// What a connection takes from its mailbox.
#[derive(Debug)]
pub enum Delivery {
    /// The next live event.
    Event(StoredEvent),
    /// Close the connection with this code (checked before any queued event).
    Kicked(ErrorCode),
}

/// Queues shrink back to nothing when drained past this many slots.
const KEEP_SLOTS: usize = 8;

impl Mailbox {
    /// A mailbox holding at most `cap` events (at least one).
    pub fn new(cap: usize) -> Self {
        Self { queue: Mutex::new(Queue::default()), notify: Notify::new(), cap: cap.max(1) }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue an event without waiting; `false` when the queue is full (`cap` events, or
    /// `max_bytes` of frames with at least one queued).
    fn push(&self, event: StoredEvent, max_bytes: usize) -> bool {
        let mut q = self.lock();
        let len = event.text.len();
        if q.events.len() >= self.cap || (q.bytes > 0 && q.bytes.saturating_add(len) > max_bytes) {
            return false;
        }
        q.bytes += len;
        q.events.push_back(event);
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Tell the connection to close with `code` (the first code given wins).
    pub fn kick(&self, code: ErrorCode) {
        let mut q = self.lock();
        if q.kicked.is_none() {
            q.kicked = Some(code);
        }
        drop(q);
        self.notify.notify_one();
    }

    /// The code the connection was told to close with, if any.
    pub fn kicked(&self) -> Option<ErrorCode> {
        self.lock().kicked
    }

    /// Take what is due now, without waiting.
    pub fn try_next(&self) -> Option<Delivery> {
        let mut q = self.lock();
        if let Some(code) = q.kicked {
            return Some(Delivery::Kicked(code));
        }
        let event = q.events.pop_front()?;
        q.bytes = q.bytes.saturating_sub(event.text.len());
        if q.events.is_empty() && q.events.capacity() > KEEP_SLOTS {
            q.events = VecDeque::new();
        }
        Some(Delivery::Event(event))
    }

    /// Wait for what is due. Cancel-safe: nothing is taken unless returned.
    pub async fn next(&self) -> Delivery {
        loop {
            if let Some(d) = self.try_next() {
                return d;
            }
            self.notify.notified().await;
        }
    }
}

/// The live link to one connection.
#[derive(Debug)]
pub struct Attachment {
    /// Connection id on this node.
    pub conn_id: u64,
    /// The connection's mailbox (the connection holds the other reference).
    pub mailbox: Arc<Mailbox>,
}

/// Sessions attached on this node.
#[derive(Debug)]
pub struct Hub {
    attached: Mutex<HashMap<String, Attachment, FastHash>>,
    queue_bytes: usize,
}

impl Default for Hub {
    fn default() -> Self {
        Self { attached: Mutex::new(HashMap::default()), queue_bytes: usize::MAX }
    }
}

impl Hub {
    /// A hub whose queues hold at most `queue_bytes` of frames each (always at least
    /// one event): a connection whose queue would pass it is closed `slow_consumer`.
    pub fn with_queue_bytes(queue_bytes: usize) -> Self {
        Self { queue_bytes, ..Self::default() }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Attachment, FastHash>> {
        self.attached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attach a connection; a connection of this node already attached to the session
    /// is closed `session_taken_over`.
    pub fn attach(&self, session_id: &str, attachment: Attachment) {
        if let Some(old) = self.map().insert(session_id.to_owned(), attachment) {
            old.mailbox.kick(ErrorCode::SessionTakenOver);
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
            a.mailbox.kick(code);
        }
    }

    /// Close connection `conn_id` with `code` if it is the one attached to the session.
    pub fn kick_conn(&self, session_id: &str, conn_id: u64, code: ErrorCode) {
        let mut map = self.map();
        if map.get(session_id).is_some_and(|a| a.conn_id == conn_id)
            && let Some(a) = map.remove(session_id)
        {
            a.mailbox.kick(code);
        }
    }

    /// The sessions attached on this node.
    pub fn sessions(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// Hand an event to the attached connection, if any, without waiting. The bound on
    /// a connection's queue (events, and bytes) is decided here: a connection whose
    /// queue is full is closed `slow_consumer`.
    pub fn deliver(&self, session_id: &str, event: StoredEvent) {
        let mut map = self.map();
        let Some(a) = map.get(session_id) else { return };
        if Arc::strong_count(&a.mailbox) == 1 {
            // The connection is gone without detaching.
            map.remove(session_id);
            return;
        }
        if !a.mailbox.push(event, self.queue_bytes)
            && let Some(a) = map.remove(session_id)
        {
            a.mailbox.kick(ErrorCode::SlowConsumer);
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
