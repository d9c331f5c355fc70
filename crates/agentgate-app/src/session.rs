//! Sessions: identity-bound event streams that outlive connections.
//!
//! A session assigns each event its `seq` (from 1, contiguous), keeps the last
//! `sessions.buffer_events` for replay, and delivers live events to at most one
//! attached connection through that connection's bounded queue. Assigning the seq,
//! buffering and delivering happen under one short lock with no await inside, so two
//! runs on one session can never deliver out of order, and attaching (with its replay
//! snapshot) can never miss or repeat an event.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agentgate_protocol::{ErrorCode, EventFrame, EventType, id};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

/// The identity a session is bound to: subject and tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Subject.
    pub subject: String,
    /// Tenant.
    pub tenant: Option<String>,
}

/// One buffered event: its seq and its JSON text.
pub type StoredEvent = (u64, Arc<str>);

/// The live link from a session to the connection it is attached to.
#[derive(Debug)]
pub struct Attachment {
    /// Connection id, to detach only the connection that is attached.
    pub conn_id: u64,
    /// Bounded queue of event frames for the connection's writer.
    pub tx: mpsc::Sender<Arc<str>>,
    /// Tells the connection to close with a code (slow consumer, takeover).
    pub kick: watch::Sender<Option<ErrorCode>>,
}

/// What an attach found: events to replay before live ones.
#[derive(Debug)]
pub struct Replay {
    /// Events after the client's `last_seq`, oldest first.
    pub events: Vec<Arc<str>>,
    /// When the buffer no longer held every event after `last_seq`: the first seq
    /// that will be replayed.
    pub truncated_from: Option<u64>,
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    buffer: VecDeque<StoredEvent>,
    attached: Option<Attachment>,
    detached_at: Option<Instant>,
}

/// A session.
#[derive(Debug)]
pub struct Session {
    id: String,
    owner: Owner,
    capacity: usize,
    state: Mutex<State>,
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The identity it belongs to.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// Append an event, give it the next seq, and deliver it to the attached
    /// connection. A connection whose queue is full is told to close `slow_consumer`
    /// and detached; the event stays in the buffer for its resume.
    /// Returns the seq and the event's JSON text.
    pub fn emit(&self, ty: EventType, run_id: &str, data: Value) -> (u64, Arc<str>) {
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let frame = EventFrame { ty, seq, run_id: run_id.to_owned(), ts_ms: now_ms(), data };
        let text: Arc<str> = serde_json::to_string(&frame).unwrap_or_default().into();
        if st.buffer.len() == self.capacity {
            st.buffer.pop_front();
        }
        st.buffer.push_back((seq, Arc::clone(&text)));
        let overflow = match &st.attached {
            Some(a) => match a.tx.try_send(Arc::clone(&text)) {
                Ok(()) => false,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let _ = a.kick.send(Some(ErrorCode::SlowConsumer));
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => true,
            },
            None => false,
        };
        if overflow {
            st.attached = None;
            st.detached_at = Some(Instant::now());
        }
        (seq, text)
    }

    /// Attach a connection, closing any other attached one with `session_taken_over`,
    /// and return the events after `last_seq` still in the buffer.
    pub fn attach(&self, attachment: Attachment, last_seq: u64) -> Replay {
        let mut st = self.lock();
        if let Some(old) = st.attached.take() {
            let _ = old.kick.send(Some(ErrorCode::SessionTakenOver));
        }
        let first_buffered = st.buffer.front().map(|(s, _)| *s);
        let truncated_from = match first_buffered {
            Some(first) if first > last_seq + 1 => Some(first),
            _ => None,
        };
        let events = st.buffer.iter().filter(|(s, _)| *s > last_seq).map(|(_, e)| Arc::clone(e)).collect();
        st.attached = Some(attachment);
        st.detached_at = None;
        Replay { events, truncated_from }
    }

    /// Detach `conn_id` if it is the attached connection.
    pub fn detach(&self, conn_id: u64) {
        let mut st = self.lock();
        if st.attached.as_ref().is_some_and(|a| a.conn_id == conn_id) {
            st.attached = None;
            st.detached_at = Some(Instant::now());
        }
    }

    /// The seq of the newest event (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    fn expired(&self, window: Duration, now: Instant) -> bool {
        self.lock().detached_at.is_some_and(|t| now.duration_since(t) >= window)
    }
}

/// The in-memory session store.
#[derive(Debug)]
pub struct SessionStore {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    capacity: usize,
    resume_window: Duration,
}

/// The outcome of looking up a session to resume.
#[derive(Debug)]
pub enum Lookup {
    /// Found, and owned by the asker.
    Found(Arc<Session>),
    /// Unknown or expired.
    NotFound,
    /// Owned by another subject or tenant.
    Forbidden,
}

impl SessionStore {
    /// A store keeping `capacity` events per session, and detached sessions for
    /// `resume_window`.
    pub fn new(capacity: usize, resume_window: Duration) -> Self {
        Self { sessions: Mutex::new(HashMap::new()), capacity: capacity.max(1), resume_window }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session for `owner`.
    pub fn create(&self, owner: Owner) -> Arc<Session> {
        let session = Arc::new(Session {
            id: id::session_id(),
            owner,
            capacity: self.capacity,
            state: Mutex::new(State {
                next_seq: 1,
                buffer: VecDeque::new(),
                attached: None,
                detached_at: Some(Instant::now()),
            }),
        });
        self.map().insert(session.id.clone(), Arc::clone(&session));
        session
    }

    /// Find `id` for `owner`.
    pub fn lookup(&self, id: &str, owner: &Owner) -> Lookup {
        let found = self.map().get(id).cloned();
        match found {
            Some(s) if s.expired(self.resume_window, Instant::now()) => Lookup::NotFound,
            Some(s) if s.owner == *owner => Lookup::Found(s),
            Some(_) => Lookup::Forbidden,
            None => Lookup::NotFound,
        }
    }

    /// Drop detached sessions older than the resume window; returns their ids.
    pub fn sweep(&self) -> Vec<String> {
        let now = Instant::now();
        let mut map = self.map();
        let expired: Vec<String> =
            map.iter().filter(|(_, s)| s.expired(self.resume_window, now)).map(|(k, _)| k.clone()).collect();
        for k in &expired {
            map.remove(k);
        }
        expired
    }

    /// Number of sessions held.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(s: &str) -> Owner {
        Owner { subject: s.into(), tenant: None }
    }

    fn attachment(
        conn_id: u64,
        cap: usize,
    ) -> (Attachment, mpsc::Receiver<Arc<str>>, watch::Receiver<Option<ErrorCode>>) {
        let (tx, rx) = mpsc::channel(cap);
        let (kick, kick_rx) = watch::channel(None);
        (Attachment { conn_id, tx, kick }, rx, kick_rx)
    }

    #[test]
    fn seq_is_contiguous_and_replay_is_the_missed_suffix() {
        let store = SessionStore::new(3, Duration::from_secs(60));
        let s = store.create(owner("a"));
        for _ in 0..5 {
            s.emit(EventType::AgentThinking, "r_x", Value::Null);
        }
        assert_eq!(s.last_seq(), 5);
        let (a, _rx, _k) = attachment(1, 8);
        let r = s.attach(a, 1);
        assert_eq!(r.truncated_from, Some(3));
        assert_eq!(r.events.len(), 3);
        let (a, _rx2, _k2) = attachment(2, 8);
        let r = s.attach(a, 4);
        assert_eq!(r.truncated_from, None);
        assert_eq!(r.events.len(), 1);
    }

    #[test]
    fn full_queue_kicks_slow_consumer_and_takeover_kicks_old_connection() {
        let store = SessionStore::new(16, Duration::from_secs(60));
        let s = store.create(owner("a"));
        let (a, _rx, k) = attachment(1, 1);
        s.attach(a, 0);
        s.emit(EventType::AgentThinking, "r", Value::Null);
        s.emit(EventType::AgentThinking, "r", Value::Null);
        assert_eq!(*k.borrow(), Some(ErrorCode::SlowConsumer));
        let (a, _rx, k1) = attachment(2, 8);
        s.attach(a, 0);
        let (a, _rx3, _k3) = attachment(3, 8);
        s.attach(a, 0);
        assert_eq!(*k1.borrow(), Some(ErrorCode::SessionTakenOver));
    }

    #[test]
    fn another_owner_is_forbidden() {
        let store = SessionStore::new(4, Duration::from_secs(60));
        let s = store.create(owner("a"));
        assert!(matches!(store.lookup(s.id(), &owner("b")), Lookup::Forbidden));
        assert!(matches!(store.lookup(s.id(), &owner("a")), Lookup::Found(_)));
        assert!(matches!(store.lookup("s_nope", &owner("a")), Lookup::NotFound));
    }
}
