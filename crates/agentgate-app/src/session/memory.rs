//! The in-memory session store: state lost on restart. Appending assigns the seq,
//! buffers and hands the event to the holder node's inbox under one short lock with no
//! await inside, so events of a session are published in seq order. Several in-process
//! nodes may share one store (the backend contract tests do).
//!
//! The bounds of PROTOCOL.md section 6 are decided here (a Redis store decides the same
//! ones in its own scripts):
//! - per session, `sessions.buffer_events` events whose frames total at most
//!   `sessions.buffer_bytes` (always at least the newest event): `MemoryStore::append_now`;
//! - per principal, `limits.sessions_per_principal` sessions: creating one more drops
//!   the principal's session detached longest ago, or is refused when none is detached:
//!   [`MemoryStore::create`] (and [`SessionStore::admits_new_session`] before the upgrade);
//! - per node, `sessions.memory_limit_bytes` of buffered frames: past it the sessions
//!   detached longest ago are dropped first: `MemoryStore::enforce_memory_limit`.
//!
//! Lock order: the index, then a session's state; never the other way round.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agentgate_protocol::id;

use super::store::{Event, History, Holder, NewEvent, SessionStore, StoreError, StoreFuture, StoredEvent, frame_parts};
use super::{FastHash, Owner};
use crate::backend::Inbox;

/// The inboxes of the nodes sharing a memory backend.
pub type Nodes = Mutex<HashMap<String, Arc<dyn Inbox>>>;

/// The bounds a [`MemoryStore`] enforces. `Default` is unbounded but for the events
/// per session given to [`MemoryStore::new`].
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// `sessions.buffer_bytes`: event frame bytes kept per session.
    pub buffer_bytes: usize,
    /// `limits.sessions_per_principal`.
    pub sessions_per_principal: usize,
    /// `sessions.memory_limit_bytes`: buffered frame bytes of the whole node.
    pub memory_limit_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self { buffer_bytes: usize::MAX, sessions_per_principal: usize::MAX, memory_limit_bytes: usize::MAX }
    }
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    buffer: VecDeque<StoredEvent>,
    /// Bytes of the frames in `buffer`.
    bytes: usize,
    holder: Option<Holder>,
    detached_at: Option<Instant>,
    /// Position in the detach order while detached (after a first attach).
    stamp: Option<u64>,
    /// Dropped by a bound: appends fail as if the session were unknown.
    dropped: bool,
    /// What the session's runs appended; allocated with the first run event (a session
    /// without runs, like an idle connection's, keeps only the pointer).
    runs: Option<Box<Runs>>,
}

/// Per-run bookkeeping of one session.
#[derive(Debug, Default)]
struct Runs {
    /// Runs whose terminal event is stored.
    ended: HashSet<String>,
    /// Last `rseq` appended per running run.
    last: HashMap<String, u64>,
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

/// One principal's sessions: how many, and the detached ones in detach order.
#[derive(Debug, Default)]
struct OwnerSessions {
    count: usize,
    detached: BTreeMap<u64, Key>,
}

/// A session's key in the index: the 128 random bits of its id
/// (`id::session_id_bits`). Comparing and hashing it reads no other memory, where a
/// string key cost a cache miss per probe and a shared copy per detach order
/// (docs/performance.md); an id of any other form names no session.
type Key = u128;

/// The key of `session_id`, or `NotFound`.
fn key(session_id: &str) -> Result<Key, StoreError> {
    id::session_id_bits(session_id).ok_or(StoreError::NotFound)
}

#[derive(Debug, Default)]
struct Index {
    sessions: HashMap<Key, Arc<Entry>, FastHash>,
    by_owner: HashMap<Owner, OwnerSessions, FastHash>,
    /// Every detached session of the node, detached longest ago first.
    detached: BTreeMap<u64, Key>,
    next_stamp: u64,
}

impl Index {
    fn mark_detached(&mut self, sid: Key, owner: &Owner, st: &mut State, now: Instant) {
        self.unmark(owner, st);
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        st.stamp = Some(stamp);
        st.detached_at = Some(now);
        self.detached.insert(stamp, sid);
        match self.by_owner.get_mut(owner) {
            Some(o) => o.detached.insert(stamp, sid),
            None => self.by_owner.entry(owner.clone()).or_default().detached.insert(stamp, sid),
        };
    }

    fn unmark(&mut self, owner: &Owner, st: &mut State) {
        if let Some(stamp) = st.stamp.take() {
            self.detached.remove(&stamp);
            if let Some(o) = self.by_owner.get_mut(owner) {
                o.detached.remove(&stamp);
            }
        }
    }

    /// Remove a session; returns the bytes its buffer held.
    fn remove(&mut self, sid: Key) -> usize {
        let Some(entry) = self.sessions.remove(&sid) else { return 0 };
        let mut st = entry.lock();
        self.unmark(&entry.owner, &mut st);
        if let Some(o) = self.by_owner.get_mut(&entry.owner) {
            o.count = o.count.saturating_sub(1);
            if o.count == 0 {
                self.by_owner.remove(&entry.owner);
            }
        }
        drop_state(&mut st)
    }
}

/// Mark a removed session's state dropped and free its buffer; returns the bytes the
/// buffer held.
fn drop_state(st: &mut State) -> usize {
    st.dropped = true;
    st.stamp = None;
    st.buffer.clear();
    std::mem::take(&mut st.bytes)
}

/// Sessions in this process's memory.
#[derive(Debug)]
pub struct MemoryStore {
    index: Mutex<Index>,
    capacity: usize,
    bounds: Bounds,
    resume_window: Duration,
    nodes: Arc<Nodes>,
    /// Bytes buffered by all sessions of the node.
    total_bytes: AtomicUsize,
}

impl MemoryStore {
    /// A store keeping `capacity` events per session and detached sessions for
    /// `resume_window`, delivering live events to the holder's node in `nodes`; no
    /// other bound until [`MemoryStore::with_bounds`].
    pub fn new(capacity: usize, resume_window: Duration, nodes: Arc<Nodes>) -> Self {
        Self {
            index: Mutex::new(Index::default()),
            capacity: capacity.max(1),
            bounds: Bounds::default(),
            resume_window,
            nodes,
            total_bytes: AtomicUsize::new(0),
        }
    }

    /// The same store with these bounds.
    pub fn with_bounds(mut self, bounds: Bounds) -> Self {
        self.bounds = Bounds { sessions_per_principal: bounds.sessions_per_principal.max(1), ..bounds };
        self
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, session_id: &str) -> Result<Arc<Entry>, StoreError> {
        let sid = key(session_id)?;
        let entry = self.index().sessions.get(&sid).cloned().ok_or(StoreError::NotFound)?;
        if entry.expired(self.resume_window, Instant::now()) {
            return Err(StoreError::NotFound);
        }
        Ok(entry)
    }

    /// Number of sessions held (expired ones count until swept).
    pub fn len(&self) -> usize {
        self.index().sessions.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of event frames buffered by all sessions of the node.
    pub fn buffered_bytes(&self) -> usize {
        self.total_bytes.load(Ordering::Relaxed)
    }

    fn forget(&self, index: &mut Index, sid: Key) {
        let freed = index.remove(sid);
        self.total_bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Bound `sessions.buffer_events` and `sessions.buffer_bytes` of one session:
    /// append, then drop the oldest events while over either (never the newest).
    fn append_now(&self, session_id: &str, event: NewEvent) -> Result<StoredEvent, StoreError> {
        let entry = self.live(session_id)?;
        let stored = {
            let mut st = entry.lock();
            if st.dropped {
                return Err(StoreError::NotFound);
            }
            // Exactly one terminal event per run; a repeated event of a run is stored once.
            let runs = st.runs.get_or_insert_with(Box::default);
            if runs.ended.contains(&event.run_id) {
                return Err(StoreError::Duplicate);
            }
            if event.rseq > 0 && event.rseq <= runs.last.get(&event.run_id).copied().unwrap_or(0) {
                return Err(StoreError::Duplicate);
            }
            if event.ty.is_terminal() {
                runs.last.remove(&event.run_id);
                runs.ended.insert(event.run_id.clone());
            } else if event.rseq > 0 {
                runs.last.insert(event.run_id.clone(), event.rseq);
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            let (head, tail) = frame_parts(&event);
            let stored = Arc::new(Event { seq, text: format!("{head}{seq}{tail}").into_boxed_str() });
            let added = stored.text.len();
            let mut freed = 0;
            st.buffer.push_back(Arc::clone(&stored));
            st.bytes += added;
            while st.buffer.len() > self.capacity || (st.bytes > self.bounds.buffer_bytes && st.buffer.len() > 1) {
                if let Some(old) = st.buffer.pop_front() {
                    st.bytes -= old.text.len();
                    freed += old.text.len();
                }
            }
            self.total_bytes.fetch_add(added, Ordering::Relaxed);
            self.total_bytes.fetch_sub(freed, Ordering::Relaxed);
            // Still under the session's lock: publication order is seq order.
            if let Some(holder) = &st.holder {
                let inbox = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).get(&*holder.node).cloned();
                if let Some(inbox) = inbox {
                    inbox.event(session_id, Arc::clone(&stored));
                }
            }
            stored
        };
        if self.buffered_bytes() > self.bounds.memory_limit_bytes {
            self.enforce_memory_limit();
        }
        Ok(stored)
    }

    /// Bound `sessions.memory_limit_bytes`: drop the sessions detached longest ago
    /// until the node's buffered bytes are within the limit. Attached sessions are
    /// kept (each is bounded by `sessions.buffer_bytes` and by the connection caps).
    fn enforce_memory_limit(&self) {
        let mut index = self.index();
        let mut dropped = 0usize;
        while self.buffered_bytes() > self.bounds.memory_limit_bytes {
            let Some((_, sid)) = index.detached.pop_first() else { break };
            self.forget(&mut index, sid);
            dropped += 1;
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                limit = self.bounds.memory_limit_bytes,
                "sessions.memory_limit_bytes reached: dropped the sessions detached longest ago"
            );
        }
    }

    /// Create a session for `owner`, attached to `holder` if given. Bounds
    /// `limits.sessions_per_principal`: at the cap, the principal's session detached
    /// longest ago is dropped to make room; with none detached, refused.
    fn create_now(&self, owner: Owner, holder: Option<Holder>) -> Result<String, StoreError> {
        let mut guard = self.index();
        let index = &mut *guard;
        // The owner is looked up once: dropping its oldest detached session to make
        // room leaves its count as it is.
        let owned = match index.by_owner.get_mut(&owner) {
            Some(o) => o,
            None => index.by_owner.entry(owner.clone()).or_default(),
        };
        if owned.count >= self.bounds.sessions_per_principal {
            let Some((stamp, oldest)) = owned.detached.pop_first() else {
                return Err(StoreError::SessionLimit(self.bounds.sessions_per_principal));
            };
            owned.count -= 1;
            index.detached.remove(&stamp);
            if let Some(entry) = index.sessions.remove(&oldest) {
                let freed = drop_state(&mut entry.lock());
                self.total_bytes.fetch_sub(freed, Ordering::Relaxed);
            }
        }
        owned.count += 1;
        // 128 random bits, as `id::session_id` makes them; a repeat is checked for,
        // never expected.
        let sid = loop {
            let sid: Key = rand::random();
            if !index.sessions.contains_key(&sid) {
                break sid;
            }
        };
        // Without a holder: detached (its resume window running) but not in the
        // detach order until its first attach, which follows at once, so that a
        // concurrent create of the same principal cannot drop it in between.
        let detached_at = if holder.is_none() { Some(Instant::now()) } else { None };
        let entry = Arc::new(Entry {
            owner,
            state: Mutex::new(State {
                next_seq: 1,
                buffer: VecDeque::new(),
                bytes: 0,
                holder,
                detached_at,
                stamp: None,
                dropped: false,
                runs: None,
            }),
        });
        index.sessions.insert(sid, entry);
        Ok(id::session_id_of(sid))
    }

    fn admits(&self, index: &Index, owner: &Owner) -> bool {
        index.by_owner.get(owner).is_none_or(|o| o.count < self.bounds.sessions_per_principal || !o.detached.is_empty())
    }
}

impl SessionStore for MemoryStore {
    /// Bound `limits.sessions_per_principal`: at the cap, the principal's session
    /// detached longest ago is dropped to make room; with none detached, refused.
    fn create(&self, owner: Owner) -> StoreFuture<'_, Result<String, StoreError>> {
        StoreFuture::ready(self.create_now(owner, None))
    }

    /// One lock of the index, one insert: no lookup of the new session to attach it.
    fn create_attached(&self, owner: Owner, holder: Holder) -> StoreFuture<'_, Result<String, StoreError>> {
        StoreFuture::ready(self.create_now(owner, Some(holder)))
    }

    fn admits_new_session(&self, owner: &Owner) -> StoreFuture<'_, Result<bool, StoreError>> {
        let ok = self.admits(&self.index(), owner);
        StoreFuture::ready(Ok(ok))
    }

    fn owner(&self, session_id: &str) -> StoreFuture<'_, Result<Option<Owner>, StoreError>> {
        let owner = self.live(session_id).ok().map(|e| e.owner.clone());
        StoreFuture::ready(Ok(owner))
    }

    fn append(&self, session_id: &str, event: NewEvent) -> StoreFuture<'_, Result<StoredEvent, StoreError>> {
        let result = self.append_now(session_id, event);
        StoreFuture::ready(result)
    }

    fn read_after(&self, session_id: &str, after: u64) -> StoreFuture<'_, Result<History, StoreError>> {
        let result = self.live(session_id).and_then(|entry| {
            let st = entry.lock();
            if st.dropped {
                return Err(StoreError::NotFound);
            }
            Ok(History {
                events: st.buffer.iter().filter(|e| e.seq > after).cloned().collect(),
                last_seq: st.next_seq - 1,
            })
        });
        StoreFuture::ready(result)
    }

    fn append_later(&self, session_id: &str, event: NewEvent) -> Result<(), StoreError> {
        match self.append_now(session_id, event) {
            Ok(_) | Err(StoreError::Duplicate) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn attach(&self, session_id: &str, holder: Holder) -> StoreFuture<'_, Result<Option<Holder>, StoreError>> {
        let result = (|| {
            let mut index = self.index();
            let entry = index.sessions.get(&key(session_id)?).cloned().ok_or(StoreError::NotFound)?;
            let mut st = entry.lock();
            if st.dropped || st.detached_at.is_some_and(|t| t.elapsed() >= self.resume_window) {
                return Err(StoreError::NotFound);
            }
            index.unmark(&entry.owner, &mut st);
            st.detached_at = None;
            Ok(st.holder.replace(holder))
        })();
        StoreFuture::ready(result)
    }

    fn detach(&self, session_id: &str, holder: Holder) -> StoreFuture<'_, Result<(), StoreError>> {
        let mut index = self.index();
        if let Ok(sid) = key(session_id)
            && let Some(entry) = index.sessions.get(&sid).cloned()
        {
            let mut st = entry.lock();
            if st.holder.as_ref() == Some(&holder) {
                st.holder = None;
                index.mark_detached(sid, &entry.owner, &mut st, Instant::now());
            }
        }
        StoreFuture::ready(Ok(()))
    }

    fn sweep(&self) -> StoreFuture<'_, ()> {
        let now = Instant::now();
        let mut index = self.index();
        // Detached sessions expire in detach order: only the expired front is visited.
        while let Some((_, &sid)) = index.detached.first_key_value() {
            let expired = index.sessions.get(&sid).is_none_or(|e| e.expired(self.resume_window, now));
            if !expired {
                break;
            }
            if index.sessions.contains_key(&sid) {
                self.forget(&mut index, sid);
            } else {
                index.detached.pop_first();
            }
        }
        StoreFuture::ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentgate_protocol::EventType;
    use serde_json::json;

    fn owner(subject: &str) -> Owner {
        Owner { issuer: "local".into(), subject: subject.into(), tenant: None }
    }

    fn holder(conn_id: u64) -> Holder {
        Holder { node: "n".into(), conn_id }
    }

    fn event(bytes: usize) -> NewEvent {
        NewEvent {
            ty: EventType::AgentMessage,
            run_id: "r_x".into(),
            ts_ms: 0,
            data: json!({"text": "x".repeat(bytes)}),
            rseq: 0,
        }
    }

    fn store(bounds: Bounds) -> MemoryStore {
        MemoryStore::new(1024, Duration::from_secs(300), Arc::default()).with_bounds(bounds)
    }

    async fn session(s: &MemoryStore, o: &Owner, conn: u64) -> String {
        let sid = s.create(o.clone()).await.unwrap();
        s.attach(&sid, holder(conn)).await.unwrap();
        sid
    }

    #[tokio::test]
    async fn a_buffer_is_bounded_in_bytes_but_keeps_the_newest_event() {
        let s = store(Bounds { buffer_bytes: 1000, ..Bounds::default() });
        let sid = session(&s, &owner("a"), 1).await;
        for _ in 0..10 {
            s.append(&sid, event(300)).await.unwrap();
        }
        let h = s.read_after(&sid, 0).await.unwrap();
        assert!(h.events.iter().map(|e| e.text.len()).sum::<usize>() <= 1000);
        assert_eq!(h.events.last().unwrap().seq, 10);
        assert!(h.events.first().unwrap().seq > 1);
        // One event larger than the whole budget is still kept, alone.
        s.append(&sid, event(5000)).await.unwrap();
        let h = s.read_after(&sid, 0).await.unwrap();
        assert_eq!(h.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![11]);
        assert_eq!(s.buffered_bytes(), h.events[0].text.len());
    }

    #[tokio::test]
    async fn a_principal_at_its_session_cap_loses_its_oldest_detached_session_or_is_refused() {
        let s = store(Bounds { sessions_per_principal: 2, ..Bounds::default() });
        let a = owner("a");
        let first = session(&s, &a, 1).await;
        let second = session(&s, &a, 2).await;
        assert!(!s.admits_new_session(&a).await.unwrap());
        assert!(matches!(s.create(a.clone()).await, Err(StoreError::SessionLimit(2))));
        // Another principal is not affected.
        assert!(s.admits_new_session(&owner("b")).await.unwrap());
        s.detach(&second, holder(2)).await.unwrap();
        s.detach(&first, holder(1)).await.unwrap();
        assert!(s.admits_new_session(&a).await.unwrap());
        // `second` was detached longest ago: it goes first.
        let third = session(&s, &a, 3).await;
        assert_eq!(s.owner(&second).await.unwrap(), None);
        assert_eq!(s.owner(&first).await.unwrap(), Some(a.clone()));
        assert!(s.owner(&third).await.unwrap().is_some());
        assert_eq!(s.len(), 2);
    }

    #[tokio::test]
    async fn a_session_created_attached_is_held_like_an_attached_one() {
        let s = store(Bounds { sessions_per_principal: 1, ..Bounds::default() });
        let a = owner("a");
        let sid = s.create_attached(a.clone(), holder(1)).await.unwrap();
        // Attached: it is not dropped to make room, and its holder is the one given.
        assert!(!s.admits_new_session(&a).await.unwrap());
        assert!(matches!(s.create(a.clone()).await, Err(StoreError::SessionLimit(1))));
        assert_eq!(s.attach(&sid, holder(2)).await.unwrap(), Some(holder(1)));
        // Detached by its holder, it is the one dropped next.
        s.detach(&sid, holder(2)).await.unwrap();
        let next = s.create_attached(a.clone(), holder(3)).await.unwrap();
        assert_eq!(s.owner(&sid).await.unwrap(), None);
        assert_eq!(s.owner(&next).await.unwrap(), Some(a));
        assert_eq!(s.len(), 1);
    }

    #[tokio::test]
    async fn past_the_memory_limit_the_sessions_detached_longest_ago_are_dropped_first() {
        let s = store(Bounds { memory_limit_bytes: 10_000, ..Bounds::default() });
        let mut sids = Vec::new();
        for i in 0..4 {
            let sid = session(&s, &owner(&format!("u{i}")), i).await;
            s.append(&sid, event(2000)).await.unwrap();
            sids.push(sid);
        }
        s.detach(&sids[2], holder(2)).await.unwrap();
        s.detach(&sids[0], holder(0)).await.unwrap();
        // Attached sessions 1 and 3 keep theirs; 2 (detached first) goes before 0.
        let live = session(&s, &owner("u9"), 9).await;
        s.append(&live, event(3000)).await.unwrap();
        assert!(s.buffered_bytes() <= 10_000, "{}", s.buffered_bytes());
        assert_eq!(s.owner(&sids[2]).await.unwrap(), None);
        assert!(s.owner(&sids[0]).await.unwrap().is_some());
        assert!(matches!(s.append(&sids[2], event(1)).await, Err(StoreError::NotFound)));
        assert!(s.owner(&sids[1]).await.unwrap().is_some());
        assert!(s.owner(&sids[3]).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn expired_sessions_are_swept_and_their_bytes_freed() {
        let s = MemoryStore::new(1024, Duration::from_millis(1), Arc::default());
        let sid = session(&s, &owner("a"), 1).await;
        s.append(&sid, event(100)).await.unwrap();
        s.detach(&sid, holder(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        s.sweep().await;
        assert!(s.is_empty());
        assert_eq!(s.buffered_bytes(), 0);
        assert!(s.admits_new_session(&owner("a")).await.unwrap());
    }
}
