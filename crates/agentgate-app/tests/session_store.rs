//! Property test of the session code that the server runs (no server): random
//! sequences of connects, appends, partial reads, disconnects, resumes, takeovers,
//! slow consumers and out-of-band deliveries against [`MemoryStore`], [`Hub`] and
//! [`Subscription`], checking the guarantees of PROTOCOL.md section 6: seq contiguous
//! from 1 per session, every subscription delivers strictly increasing seqs with no
//! duplicate and no gap, and a resume replays exactly the missed suffix, or from the
//! oldest buffered event with `history_truncated`.

use std::sync::Arc;
use std::time::Duration;

use agentgate_app::backend::memory::MemoryBackend;
use agentgate_app::backend::{Backend, LocalInbox};
use agentgate_app::revocation::RevocationList;
use agentgate_app::runs::RunControl;
use agentgate_app::session::{Holder, Hub, NewEvent, Owner, SessionStore, StoredEvent, Subscription};
use agentgate_protocol::{ErrorCode, EventType};
use proptest::prelude::*;
use serde_json::{Value, json};

/// One step of a client's life.
#[derive(Debug, Clone)]
enum Op {
    /// A run appends this many events to the current session.
    Append(u8),
    /// The client reads up to this many queued events.
    Read(u8),
    /// The client reads everything queued.
    ReadAll,
    /// The client disconnects.
    Disconnect,
    /// The client reconnects to its session with `last_seq` = its last seen seq minus
    /// `back` (a client that processed less), or plus `ahead` beyond it.
    Resume { back: u8, ahead: u8 },
    /// A second connection resumes the same session while the first is attached.
    Takeover { back: u8 },
    /// A brand-new session.
    Connect,
    /// A resume of a session id the store does not know.
    ResumeUnknown,
    /// An already delivered event arrives again on the live path (the replay/live race
    /// of a resume).
    Redeliver(u8),
    /// A live event arrives ahead of the next expected one (a gap on the live path).
    Jump(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..6).prop_map(Op::Append),
        2 => (0u8..5).prop_map(Op::Read),
        2 => Just(Op::ReadAll),
        2 => Just(Op::Disconnect),
        3 => ((0u8..3), (0u8..3)).prop_map(|(b, a)| if a == 2 { Op::Resume { back: 0, ahead: 3 } } else { Op::Resume { back: b, ahead: 0 } }),
        1 => (0u8..3).prop_map(|back| Op::Takeover { back }),
        1 => Just(Op::Connect),
        1 => Just(Op::ResumeUnknown),
        2 => (0u8..8).prop_map(Op::Redeliver),
        2 => (2u8..5).prop_map(Op::Jump),
    ]
}

/// A subscription and what it delivered.
struct Conn {
    sub: Subscription,
    /// The seq the subscription starts after (its first delivery is this plus 1).
    start: u64,
    delivered: Vec<u64>,
    /// Events in the live queue, not yet read.
    queued: usize,
}

/// The model of the one client and its current session.
struct World {
    store: Arc<dyn SessionStore>,
    backend: Backend,
    hub: Arc<Hub>,
    capacity: usize,
    queue: usize,
    owner: Owner,
    next_conn: u64,
    session: Option<String>,
    /// Every event of the current session, index = seq - 1, with its payload tag.
    history: Vec<u64>,
    next_tag: u64,
    /// The last seq the client processed on the current session.
    last_seen: u64,
    conn: Option<Conn>,
}

fn holder(conn_id: u64) -> Holder {
    Holder { node: "n_test".into(), conn_id }
}

fn event_seq(text: &str) -> (u64, u64) {
    let v: Value = serde_json::from_str(text).expect("event JSON");
    (v["seq"].as_u64().expect("seq"), v["data"]["tag"].as_u64().expect("tag"))
}

impl World {
    fn latest(&self) -> u64 {
        self.history.len() as u64
    }

    /// Check a delivered event: its text carries its seq and the payload appended at
    /// that seq.
    fn check_event(&self, event: &StoredEvent) {
        let (seq, text) = (&event.seq, &event.text);
        let (in_text, tag) = event_seq(text);
        assert_eq!(in_text, *seq, "the event text carries its seq");
        let idx = usize::try_from(seq - 1).unwrap();
        assert_eq!(self.history[idx], tag, "seq {seq} carries the event appended at that seq");
    }

    /// Record deliveries on the current connection: strictly increasing, contiguous.
    fn deliver(&mut self, events: &[StoredEvent]) {
        for e in events {
            self.check_event(e);
        }
        let conn = self.conn.as_mut().expect("a connection");
        for seq in events.iter().map(|e| &e.seq) {
            let expected = conn.delivered.last().copied().unwrap_or(conn.start) + 1;
            assert_eq!(*seq, expected, "no duplicate, no gap on one subscription: {:?} then {seq}", conn.delivered);
            conn.delivered.push(*seq);
        }
        if let Some(last) = conn.delivered.last() {
            self.last_seen = *last;
        }
        assert_eq!(conn.sub.delivered(), conn.delivered.last().copied().unwrap_or(conn.start));
    }

    /// The connection's kick, if any: then the connection closes, as the real one
    /// does before reading anything more.
    async fn close_if_kicked(&mut self) -> Option<ErrorCode> {
        let kicked = self.conn.as_ref().and_then(|c| c.sub.kicked());
        if kicked.is_some() {
            let conn = self.conn.take().unwrap();
            conn.sub.close().await;
        }
        kicked
    }

    async fn open(&mut self, resume: Option<(String, u64)>, resumable: bool) -> agentgate_app::session::Opened {
        let id = self.next_conn;
        self.next_conn += 1;
        let (sub, opened) = Subscription::open(
            &self.backend,
            Arc::clone(&self.hub),
            holder(id),
            &self.owner,
            resume,
            resumable,
            self.queue,
        )
        .await
        .expect("open");
        assert_eq!(sub.session_id(), opened.session_id);
        let start = sub.delivered() - opened.replay.len() as u64;
        self.conn = Some(Conn { sub, start, delivered: Vec::new(), queued: 0 });
        opened
    }

    async fn new_session(&mut self, resume: Option<(String, u64)>) {
        if let Some(conn) = self.conn.take() {
            conn.sub.close().await;
        }
        let asked = resume.as_ref().map(|(s, _)| s.clone());
        let opened = self.open(resume, false).await;
        assert!(opened.session_id.starts_with("s_"));
        assert_ne!(Some(&opened.session_id), self.session.as_ref(), "a new session id");
        assert_ne!(Some(&opened.session_id), asked.as_ref());
        assert!(!opened.resumed);
        let want_error = asked.map(|_| "session_not_found");
        assert_eq!(opened.resume_error, want_error);
        assert_eq!(opened.first_seq, None);
        assert!(opened.replay.is_empty());
        self.session = Some(opened.session_id);
        self.history.clear();
        self.last_seen = 0;
    }

    /// Resume the current session with `last_seq` and check the replay against the
    /// model; the previous connection (if `takeover`) must be told to close.
    async fn resume(&mut self, last_seq: u64, takeover: bool) {
        let Some(sid) = self.session.clone() else { return };
        // An ordinary reconnect: the old socket is gone first. A takeover: it is not.
        let previous = match self.conn.take() {
            Some(p) if !takeover => {
                p.sub.close().await;
                None
            }
            p => p,
        };
        let opened = self.open(Some((sid.clone(), last_seq)), true).await;
        assert_eq!(opened.session_id, sid);
        assert!(opened.resumed);

        let latest = self.latest();
        let start = last_seq.min(latest);
        let oldest = latest.saturating_sub(self.capacity as u64) + 1;
        let (want_first, want_error, want_first_seq) = if latest > start && oldest > start + 1 {
            (oldest, Some("history_truncated"), Some(oldest))
        } else {
            (start + 1, None, None)
        };
        assert_eq!(opened.resume_error, want_error, "resume after {last_seq} of {latest}, buffer {}", self.capacity);
        assert_eq!(opened.first_seq, want_first_seq);
        let replayed: Vec<u64> = opened.replay.iter().map(|e| e.seq).collect();
        let want: Vec<u64> = (want_first..=latest).collect();
        assert_eq!(replayed, want, "replay after {last_seq} of {latest}, buffer {}", self.capacity);
        {
            let conn = self.conn.as_mut().unwrap();
            conn.start = want_first - 1;
        }
        self.deliver(&opened.replay);
        if opened.replay.is_empty() {
            self.last_seen = start;
        }

        if let Some(prev) = previous {
            // The old connection is told it was taken over, and its close does not
            // detach the new one.
            assert_eq!(prev.sub.kicked(), Some(ErrorCode::SessionTakenOver));
            prev.sub.close().await;
        }
    }

    async fn append(&mut self, n: u8) {
        let Some(sid) = self.session.clone() else { return };
        let mut overflowed = false;
        for _ in 0..n {
            let tag = self.next_tag;
            self.next_tag += 1;
            let ev = NewEvent {
                ty: EventType::AgentMessage,
                run_id: "r_prop".into(),
                ts_ms: 1,
                data: json!({"tag": tag}),
                rseq: 0,
            };
            let stored = self.store.append(&sid, ev).await.expect("append");
            let seq = stored.seq;
            assert_eq!(seq, self.latest() + 1, "seq contiguous from 1 per session");
            self.history.push(tag);
            self.check_event(&stored);
            if let Some(conn) = self.conn.as_mut()
                && !overflowed
            {
                if conn.queued == self.queue {
                    overflowed = true;
                } else {
                    conn.queued += 1;
                }
            }
        }
        let kicked = self.close_if_kicked().await;
        assert_eq!(kicked, overflowed.then_some(ErrorCode::SlowConsumer), "a full queue, and only that, kicks");
    }

    async fn read(&mut self, max: Option<usize>) {
        if self.close_if_kicked().await.is_some() {
            return;
        }
        let Some(conn) = self.conn.as_mut() else { return };
        let mut n = 0;
        let mut out = Vec::new();
        while max.is_none_or(|m| n < m) {
            let Some(agentgate_app::session::Delivery::Event(ev)) = conn.sub.try_next() else { break };
            conn.queued -= 1;
            out.extend(conn.sub.accept(ev).await);
            n += 1;
        }
        self.deliver(&out);
        if max.is_none() {
            let conn = self.conn.as_ref().unwrap();
            assert_eq!(conn.sub.delivered(), self.latest(), "an attached reader gets every event");
        }
    }

    async fn stored(&self, seq: u64) -> Option<StoredEvent> {
        let sid = self.session.as_ref()?;
        let history = self.store.read_after(sid, seq.checked_sub(1)?).await.ok()?;
        history.events.into_iter().find(|e| e.seq == seq)
    }

    async fn redeliver(&mut self, back: u8) {
        let Some(conn) = self.conn.as_ref() else { return };
        let Some(seq) = conn.sub.delivered().checked_sub(u64::from(back)).filter(|s| *s > 0) else { return };
        let Some(ev) = self.stored(seq).await else { return };
        let conn = self.conn.as_mut().unwrap();
        let out = conn.sub.accept(ev).await;
        assert!(out.is_empty(), "an event already delivered is dropped");
    }

    async fn jump(&mut self, ahead: u8) {
        let Some(conn) = self.conn.as_ref() else { return };
        let from = conn.sub.delivered();
        let seq = from + u64::from(ahead);
        let oldest = self.latest().saturating_sub(self.capacity as u64) + 1;
        // Only gaps the buffer still covers: a gap beyond it cannot happen on one node.
        if seq > self.latest() || from + 1 < oldest {
            return;
        }
        let Some(ev) = self.stored(seq).await else { return };
        let out = self.conn.as_mut().unwrap().sub.accept(ev).await;
        let got: Vec<u64> = out.iter().map(|e| e.seq).collect();
        assert_eq!(got, (from + 1..=seq).collect::<Vec<_>>(), "the gap is read from the store, in order");
        self.deliver(&out);
    }

    async fn step(&mut self, op: Op) {
        // A kicked connection closes before it reads anything more.
        if let Some(code) = self.close_if_kicked().await {
            assert_eq!(code, ErrorCode::SlowConsumer);
        }
        match op {
            Op::Append(n) => self.append(n).await,
            Op::Read(n) => self.read(Some(usize::from(n))).await,
            Op::ReadAll => self.read(None).await,
            Op::Disconnect => {
                if let Some(conn) = self.conn.take() {
                    conn.sub.close().await;
                }
            }
            Op::Resume { back, ahead } => {
                let last = self.last_seen.saturating_sub(u64::from(back)) + u64::from(ahead);
                self.resume(last, false).await;
            }
            Op::Takeover { back } => {
                if self.conn.is_some() {
                    self.resume(self.last_seen.saturating_sub(u64::from(back)), true).await;
                }
            }
            Op::Connect => self.new_session(None).await,
            Op::ResumeUnknown => self.new_session(Some(("s_unknown0000000000000000000".into(), 3))).await,
            Op::Redeliver(back) => self.redeliver(back).await,
            Op::Jump(ahead) => self.jump(ahead).await,
        }
    }
}

fn run_case(capacity: usize, queue: usize, ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let hub = Arc::new(Hub::default());
        let inbox = Arc::new(LocalInbox::new(Arc::clone(&hub), Arc::new(RunControl::default())));
        let backend = MemoryBackend::with_sizes(capacity, Duration::from_secs(3600)).node(
            "n_test",
            inbox,
            Arc::new(RevocationList::default()),
        );
        let mut world = World {
            store: Arc::clone(&backend.sessions),
            backend,
            hub,
            capacity,
            queue,
            owner: Owner { issuer: "local".into(), subject: "alice".into(), tenant: None },
            next_conn: 1,
            session: None,
            history: Vec::new(),
            next_tag: 1,
            last_seen: 0,
            conn: None,
        };
        world.new_session(None).await;
        for op in ops {
            world.step(op).await;
        }
        // Finally a resume from the last seen seq gets exactly what is left.
        let last = world.last_seen;
        world.resume(last, false).await;
        world.read(None).await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn resume_replays_exactly_the_missed_suffix_and_no_subscription_repeats_or_skips(
        capacity in 1usize..8,
        queue in 1usize..16,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run_case(capacity, queue, ops);
    }
}

#[test]
fn a_full_queue_kicks_slow_consumer_and_a_resume_gets_the_rest() {
    run_case(16, 2, vec![Op::Append(5), Op::Resume { back: 0, ahead: 0 }, Op::ReadAll]);
}

#[test]
fn a_tiny_buffer_reports_history_truncated() {
    run_case(2, 64, vec![Op::Disconnect, Op::Append(5), Op::Resume { back: 0, ahead: 0 }, Op::ReadAll]);
}
