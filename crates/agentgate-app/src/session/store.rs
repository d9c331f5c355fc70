//! The session store interface: everything about a session that must survive a
//! connection, and that several gateway nodes must share. The in-memory store
//! ([`super::MemoryStore`]) and the Redis store (`crate::backend::redis`, one script
//! per operation, key TTLs for expiry) implement the same operations, so no semantics
//! live outside this trait.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use agentgate_protocol::EventType;
use serde_json::Value;

use super::Owner;

/// The JSON text of an event frame, split around its `seq` (PROTOCOL.md section 6):
/// `head + seq + tail`. A store that assigns the seq elsewhere (a Redis script) joins
/// the parts; the result is byte for byte what [`agentgate_protocol::EventFrame`]
/// serializes to.
pub fn frame_parts(event: &NewEvent) -> (String, String) {
    let ty = serde_json::to_string(event.ty.as_str()).unwrap_or_default();
    let run_id = serde_json::to_string(&event.run_id).unwrap_or_default();
    let data = serde_json::to_string(&event.data).unwrap_or_default();
    (format!("{{\"type\":{ty},\"seq\":"), format!(",\"run_id\":{run_id},\"ts_ms\":{},\"data\":{data}}}", event.ts_ms))
}

/// A boxed future, so the store can be used as `Arc<dyn SessionStore>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a [`SessionStore`] operation returns: its result at once, or a boxed future.
/// The in-memory store answers without waiting, and a ready result costs no
/// allocation (a boxed future did, five times per handshake: docs/performance.md); a
/// store on the network returns a boxed future.
pub enum StoreFuture<'a, T> {
    /// The result, taken when polled.
    Ready(Option<T>),
    /// An operation still under way.
    Pending(BoxFuture<'a, T>),
}

impl<'a, T> StoreFuture<'a, T> {
    /// A result known now.
    pub fn ready(value: T) -> Self {
        Self::Ready(Some(value))
    }

    /// An operation that waits.
    pub fn boxed(future: impl Future<Output = T> + Send + 'a) -> Self {
        Self::Pending(Box::pin(future))
    }
}

impl<T> Debug for StoreFuture<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ready(_) => "StoreFuture::Ready",
            Self::Pending(_) => "StoreFuture::Pending",
        })
    }
}

impl<T: Unpin> Future for StoreFuture<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        match self.get_mut() {
            Self::Ready(value) => {
                std::task::Poll::Ready(value.take().expect("a StoreFuture polled after it completed"))
            }
            Self::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

/// A session store fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The session does not exist (never did, or expired).
    #[error("session not found")]
    NotFound,
    /// The backend cannot be reached.
    #[error("session backend unavailable: {0}")]
    Unavailable(String),
    /// The backend was reached but refused the operation (a bug or a misconfigured
    /// server, not an outage: retrying does not help).
    #[error("the session backend refused the operation: {0}")]
    Failed(String),
    /// The append was suppressed: the run already has its terminal event, or this
    /// event of the run was appended before (a retry).
    #[error("event already appended")]
    Duplicate,
    /// The principal holds `limits.sessions_per_principal` sessions (the number), none
    /// of them detached: the new connection is refused `too_many_connections`.
    #[error("the principal already holds {0} sessions, all attached (limits.sessions_per_principal)")]
    SessionLimit(usize),
    /// The principal holds `limits.tickets_per_principal` live tickets (the number).
    #[error("the principal already holds {0} live tickets (limits.tickets_per_principal)")]
    TicketLimit(usize),
}

/// An event to append; the store gives it its `seq`.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Event type.
    pub ty: EventType,
    /// The run that produced it.
    pub run_id: String,
    /// Server time, Unix milliseconds.
    pub ts_ms: u64,
    /// Payload.
    pub data: Value,
    /// The event's number within its run (1, 2, ...), so that a retried append is
    /// suppressed; 0 for none.
    pub rseq: u64,
}

/// An event as stored: its seq and its exact JSON text (the `seq` is inside).
#[derive(Debug, PartialEq, Eq)]
pub struct Event {
    /// The session seq.
    pub seq: u64,
    /// The event frame's JSON text.
    pub text: Box<str>,
}

/// A stored event, shared (not copied) by the buffer and every queue it is delivered
/// to. One word wide: tokio's bounded channel allocates its first block of slots up
/// front, so the slot size is part of what every idle connection costs.
pub type StoredEvent = Arc<Event>;

/// Events after a seq, from the buffer.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Buffered events with a seq greater than the one asked for, oldest first.
    pub events: Vec<StoredEvent>,
    /// The newest seq of the session (0 before any event).
    pub last_seq: u64,
}

/// Identifies one connection holding a session, across nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Node id (random per process), shared.
    pub node: std::sync::Arc<str>,
    /// Connection id within the node.
    pub conn_id: u64,
}

/// Durable session state: identity, seq, bounded event buffer, time to live.
pub trait SessionStore: Send + Sync + Debug + 'static {
    /// Create a session for `owner`, detached (its resume window running) until
    /// attached. Returns its id. At `limits.sessions_per_principal` the owner's session
    /// detached longest ago is dropped first; with none detached this is
    /// [`StoreError::SessionLimit`].
    fn create(&self, owner: Owner) -> StoreFuture<'_, Result<String, StoreError>>;

    /// Create a session for `owner` already attached to `holder`, as a new connection
    /// does; bounded like [`SessionStore::create`]. The default creates, then
    /// attaches; a store that can do both at once overrides it.
    fn create_attached(&self, owner: Owner, holder: Holder) -> StoreFuture<'_, Result<String, StoreError>> {
        StoreFuture::boxed(async move {
            let sid = self.create(owner).await?;
            self.attach(&sid, holder).await?;
            Ok(sid)
        })
    }

    /// Whether `owner` may create one more session now: under
    /// `limits.sessions_per_principal`, or holding a detached session that creating
    /// would drop. Asked before the upgrade so that a refusal is an HTTP 429.
    fn admits_new_session(&self, owner: &Owner) -> StoreFuture<'_, Result<bool, StoreError>> {
        let _ = owner;
        StoreFuture::ready(Ok(true))
    }

    /// The owner of a live session; `None` if unknown or expired.
    fn owner(&self, session_id: &str) -> StoreFuture<'_, Result<Option<Owner>, StoreError>>;

    /// Give `event` the session's next seq (contiguous from 1), keep it in the
    /// bounded buffer, and publish it to the holder's node for live delivery,
    /// atomically: events of one session are published in seq order. A terminal event
    /// of a run that already has one, or a repeated `rseq` of a run, is suppressed
    /// ([`StoreError::Duplicate`]), so each run has exactly one terminal event.
    /// Appends of one node are stored in the order they were made, also after those
    /// handed to [`SessionStore::append_later`].
    fn append(&self, session_id: &str, event: NewEvent) -> StoreFuture<'_, Result<StoredEvent, StoreError>>;

    /// Hand a non-terminal event over for appending, in order, without waiting for
    /// it to be stored. While the backend is unreachable such events are held (up to
    /// `backend.outage_buffer_events` per node) and appended once it returns.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the event cannot be held;
    /// [`StoreError::NotFound`] when the store knows at once that the session is gone.
    fn append_later(&self, session_id: &str, event: NewEvent) -> Result<(), StoreError>;

    /// Buffered events with seq greater than `after`.
    fn read_after(&self, session_id: &str, after: u64) -> StoreFuture<'_, Result<History, StoreError>>;

    /// Record `holder` as the connection attached to the session (its expiry paused
    /// while attached). Returns the previous holder, which the caller tells it was
    /// taken over.
    fn attach(&self, session_id: &str, holder: Holder) -> StoreFuture<'_, Result<Option<Holder>, StoreError>>;

    /// If `holder` is attached, detach it and start the resume window.
    fn detach(&self, session_id: &str, holder: Holder) -> StoreFuture<'_, Result<(), StoreError>>;

    /// Drop sessions whose resume window has passed (a no-op where the backend
    /// expires keys itself).
    fn sweep(&self) -> StoreFuture<'_, ()>;
}
