//! The in-memory session store: state lost on restart. Appending assigns the seq,
//! buffers and hands the event to the holder node's inbox under one short lock with
//! no await inside, so events of a session are published in seq order. Several
//! in-process nodes may share one store (the backend contract tests do).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agentgate_protocol::id;

use super::Owner;
use super::store::{BoxFuture, Event, History, Holder, NewEvent, SessionStore, StoreError, StoredEvent, frame_parts};
use crate::backend::Inbox;

/// The inboxes of the nodes sharing a memory backend.
pub type Nodes = Mutex<HashMap<String, Arc<dyn Inbox>>>;

#[derive(Debug)]
struct State {
    next_seq: u64,
    buffer: VecDeque<StoredEvent>,
    holder: Option<Holder>,
    detached_at: Option<Instant>,
    /// Runs whose terminal event is stored.
    ended: HashSet<String>,
    /// Last `rseq` appended per running run.
    run_last: HashMap<String, u64>,
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
    nodes: Arc<Nodes>,
}

impl MemoryStore {
    /// A store keeping `capacity` events per session and detached sessions for
    /// `resume_window`, delivering live events to the holder's node in `nodes`.
    pub fn new(capacity: usize, resume_window: Duration, nodes: Arc<Nodes>) -> Self {
        Self { sessions: Mutex::new(HashMap::new()), capacity: capacity.max(1), resume_window, nodes }
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
        if st.ended.contains(&event.run_id) {
            return Err(StoreError::Duplicate);
        }
        if event.rseq > 0 {
            let last = st.run_last.get(&event.run_id).copied().unwrap_or(0);
            if event.rseq <= last {
                return Err(StoreError::Duplicate);
            }
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        if event.ty.is_terminal() {
            st.run_last.remove(&event.run_id);
            st.ended.insert(event.run_id.clone());
        } else if event.rseq > 0 {
            st.run_last.insert(event.run_id.clone(), event.rseq);
        }
        let (head, tail) = frame_parts(&event);
        let stored = Arc::new(Event { seq, text: format!("{head}{seq}{tail}").into_boxed_str() });
        if st.buffer.len() == self.capacity {
            st.buffer.pop_front();
        }
        st.buffer.push_back(Arc::clone(&stored));
        // Still under the session's lock: publication order is seq order.
        if let Some(holder) = &st.holder {
            let inbox = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).get(&holder.node).cloned();
            if let Some(inbox) = inbox {
                inbox.event(session_id, Arc::clone(&stored));
            }
        }
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
                ended: HashSet::new(),
                run_last: HashMap::new(),
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

    fn append_later(&self, session_id: &str, event: NewEvent) -> Result<(), StoreError> {
        match self.append_now(session_id, event) {
            Ok(_) | Err(StoreError::Duplicate) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn read_after(&self, session_id: &str, after: u64) -> BoxFuture<'_, Result<History, StoreError>> {
        let result = self.live(session_id).map(|entry| {
            let st = entry.lock();
            History { events: st.buffer.iter().filter(|e| e.seq > after).cloned().collect(), last_seq: st.next_seq - 1 }
        });
        Box::pin(async move { result })
    }

    fn attach(&self, session_id: &str, holder: Holder) -> BoxFuture<'_, Result<Option<Holder>, StoreError>> {
        let result = self.live(session_id).map(|entry| {
            let mut st = entry.lock();
            st.detached_at = None;
            st.holder.replace(holder)
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
