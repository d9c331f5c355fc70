//! The in-memory session store: one node, state lost on restart. Appending assigns
//! the seq, buffers and hands the event to the hub under one short lock with no await
//! inside, so events of a session are published in seq order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agentgate_protocol::{EventFrame, id};

use super::Owner;
use super::hub::Hub;
use super::store::{BoxFuture, Event, History, Holder, NewEvent, SessionStore, StoreError, StoredEvent};

#[derive(Debug)]
struct State {
    next_seq: u64,
    buffer: VecDeque<StoredEvent>,
    holder: Option<Holder>,
    detached_at: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    owner: Owner,
    state: Mutex<State>,
}

impl Entry {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expired(&self, window: Duration, now: Instant) -> bool {
        self.lock().detached_at.is_some_and(|t| now.duration_since(t) >= window)
    }
}

/// Sessions in this process's memory.
#[derive(Debug)]
pub struct MemoryStore {
    sessions: Mutex<HashMap<String, Arc<Entry>>>,
    capacity: usize,
    resume_window: Duration,
    hub: Arc<Hub>,
}

impl MemoryStore {
    /// A store keeping `capacity` events per session and detached sessions for
    /// `resume_window`, delivering live events through `hub`.
    pub fn new(capacity: usize, resume_window: Duration, hub: Arc<Hub>) -> Self {
        Self { sessions: Mutex::new(HashMap::new()), capacity: capacity.max(1), resume_window, hub }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, session_id: &str) -> Result<Arc<Entry>, StoreError> {
        let entry = self.map().get(session_id).cloned().ok_or(StoreError::NotFound)?;
        if entry.expired(self.resume_window, Instant::now()) {
            return Err(StoreError::NotFound);
        }
        Ok(entry)
    }

    /// Number of sessions held (expired ones count until swept).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append_now(&self, session_id: &str, event: NewEvent) -> Result<StoredEvent, StoreError> {
        let entry = self.live(session_id)?;
        let mut st = entry.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let frame = EventFrame { ty: event.ty, seq, run_id: event.run_id, ts_ms: event.ts_ms, data: event.data };
        let stored = Arc::new(Event { seq, text: serde_json::to_string(&frame).unwrap_or_default().into_boxed_str() });
        if st.buffer.len() == self.capacity {
            st.buffer.pop_front();
        }
        st.buffer.push_back(Arc::clone(&stored));
        // Still under the session's lock: publication order is seq order.
        self.hub.deliver(session_id, Arc::clone(&stored));
        Ok(stored)
    }
}

impl SessionStore for MemoryStore {
    fn create(&self, owner: Owner) -> BoxFuture<'_, Result<String, StoreError>> {
        let id = id::session_id();
        let entry = Arc::new(Entry {
            owner,
            state: Mutex::new(State {
                next_seq: 1,
                buffer: VecDeque::new(),
                holder: None,
                detached_at: Some(Instant::now()),
            }),
        });
        self.map().insert(id.clone(), entry);
        Box::pin(async move { Ok(id) })
    }

    fn owner(&self, session_id: &str) -> BoxFuture<'_, Result<Option<Owner>, StoreError>> {
        let owner = self.live(session_id).ok().map(|e| e.owner.clone());
        Box::pin(async move { Ok(owner) })
    }

    fn append(&self, session_id: &str, event: NewEvent) -> BoxFuture<'_, Result<StoredEvent, StoreError>> {
        let result = self.append_now(session_id, event);
        Box::pin(async move { result })
    }

    fn read_after(&self, session_id: &str, after: u64) -> BoxFuture<'_, Result<History, StoreError>> {
        let result = self.live(session_id).map(|entry| {
            let st = entry.lock();
            History { events: st.buffer.iter().filter(|e| e.seq > after).cloned().collect(), last_seq: st.next_seq - 1 }
        });
        Box::pin(async move { result })
    }

    fn attach(&self, session_id: &str, holder: Holder) -> BoxFuture<'_, Result<(), StoreError>> {
        let result = self.live(session_id).map(|entry| {
            // A local previous holder was already closed by `Hub::attach`; with one
            // node there is no other to tell.
            let mut st = entry.lock();
            st.holder = Some(holder);
            st.detached_at = None;
        });
        Box::pin(async move { result })
    }

    fn detach(&self, session_id: &str, holder: Holder) -> BoxFuture<'_, Result<(), StoreError>> {
        if let Some(entry) = self.map().get(session_id).cloned() {
            let mut st = entry.lock();
            if st.holder.as_ref() == Some(&holder) {
                st.holder = None;
                st.detached_at = Some(Instant::now());
            }
        }
        Box::pin(async move { Ok(()) })
    }

    fn sweep(&self) -> BoxFuture<'_, ()> {
        let now = Instant::now();
        self.map().retain(|_, e| !e.expired(self.resume_window, now));
        Box::pin(async {})
    }
}
