//! One connection's subscription to its session: attach (to the hub, then the store;
//! a new session is created attached), read what to replay, then accept live events
//! through a [`Cursor`] so that nothing is delivered twice and nothing after
//! `last_seq` is skipped, whichever order the replay and live paths race in. The
//! connection task and the property tests both use this type, so the tests check the
//! code that runs.

use std::sync::Arc;

use agentgate_protocol::ErrorCode;

use super::Owner;
use super::cursor::{Cursor, Step, resume_point};
use super::hub::{Attachment, Delivery, Hub, Mailbox};
use super::store::{History, Holder, SessionStore, StoreError, StoredEvent};
use crate::backend::{Backend, Signal};

/// What a client asked to resume: session id and last seen seq.
pub type Resume = Option<(String, u64)>;

/// The result of opening: what the welcome says and what to replay.
#[derive(Debug)]
pub struct Opened {
    /// The session id (the resumed one, or a new one).
    pub session_id: String,
    /// Whether an existing session was resumed.
    pub resumed: bool,
    /// `session_not_found` or `history_truncated`.
    pub resume_error: Option<&'static str>,
    /// With `history_truncated`: the first seq replayed.
    pub first_seq: Option<u64>,
    /// Events to send before live ones, in order.
    pub replay: Vec<StoredEvent>,
}

/// A live subscription. Close it with [`Subscription::close`].
#[derive(Debug)]
pub struct Subscription {
    session_id: String,
    store: Arc<dyn SessionStore>,
    hub: Arc<Hub>,
    holder: Holder,
    cursor: Cursor,
    /// Live events, in publication order, and the code that must close the
    /// connection (slow consumer, takeover).
    mailbox: Arc<Mailbox>,
}

impl Subscription {
    /// Attach `holder` to the session to resume (when `resumable`, i.e. it exists and
    /// belongs to `owner`) or to a new session, with a live queue of `queue` events.
    ///
    /// # Errors
    /// The store cannot be used.
    pub async fn open(
        backend: &Backend,
        hub: Arc<Hub>,
        holder: Holder,
        owner: &Owner,
        resume: Resume,
        resumable: bool,
        queue: usize,
    ) -> Result<(Self, Opened), StoreError> {
        let store = Arc::clone(&backend.sessions);
        let mailbox = Arc::new(Mailbox::new(queue));
        let mut attachment = Some(Attachment { conn_id: holder.conn_id, mailbox: Arc::clone(&mailbox) });
        let (mut last_seq, mut resume_error) = (0, None);
        let mut session_id = None;
        if let Some((sid, last)) = resume {
            if resumable {
                hub.attach(&sid, attachment.take().expect("attachment unused"));
                match store.attach(&sid, holder.clone()).await {
                    Ok(previous) => {
                        take_over(backend, &sid, &holder, previous).await;
                        last_seq = last;
                        session_id = Some(sid);
                    }
                    Err(StoreError::NotFound) => {
                        // Expired between the handshake's check and now.
                        attachment = hub.take(&sid, holder.conn_id);
                        resume_error = Some("session_not_found");
                    }
                    Err(e) => {
                        hub.detach(&sid, holder.conn_id);
                        return Err(e);
                    }
                }
            } else {
                resume_error = Some("session_not_found");
            }
        }
        let resumed = session_id.is_some();
        let session_id = match session_id {
            Some(sid) => sid,
            None => {
                // Attached in the store first: no one knows the new id, so no event can
                // be published to it before the hub holds the attachment.
                let Some(attachment) = attachment else {
                    return Err(StoreError::Unavailable("attachment lost".into()));
                };
                let sid = store.create_attached(owner.clone(), holder.clone()).await?;
                hub.attach(&sid, attachment);
                sid
            }
        };
        // A new session has no events, and no one else knows its id yet: there is
        // nothing to read (for Redis, one round trip fewer per new connection).
        let history = if resumed {
            match store.read_after(&session_id, last_seq).await {
                Ok(h) => h,
                Err(e) => {
                    hub.detach(&session_id, holder.conn_id);
                    return Err(e);
                }
            }
        } else {
            History { events: Vec::new(), last_seq: 0 }
        };
        let (start, first_seq) = resume_point(last_seq, history.events.first().map(|e| e.seq), history.last_seq);
        if first_seq.is_some() {
            resume_error = Some("history_truncated");
        }
        let mut cursor = Cursor::after(start);
        let replay: Vec<StoredEvent> = history.events.into_iter().filter(|e| e.seq > start).collect();
        if let Some(last) = replay.last() {
            cursor.advance(last.seq);
        }
        let opened = Opened { session_id: session_id.clone(), resumed, resume_error, first_seq, replay };
        Ok((Self { session_id, store, hub, holder, cursor, mailbox }, opened))
    }

    /// The session id.
    #[must_use]
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Wait for the next live event or the code that closes the connection.
    /// Cancel-safe.
    pub async fn next(&self) -> Delivery {
        self.mailbox.next().await
    }

    /// The next live event or close code, without waiting.
    pub fn try_next(&self) -> Option<Delivery> {
        self.mailbox.try_next()
    }

    /// The code the connection was told to close with, if any.
    pub fn kicked(&self) -> Option<ErrorCode> {
        self.mailbox.kicked()
    }

    /// The last seq delivered on this subscription.
    pub fn delivered(&self) -> u64 {
        self.cursor.delivered()
    }

    /// Turn one live event into what to send now: nothing for a duplicate, the event
    /// itself when it is the next one, or the missing events (read from the store)
    /// followed by it.
    pub async fn accept(&mut self, event: StoredEvent) -> Vec<StoredEvent> {
        let seq = event.seq;
        match self.cursor.step(seq) {
            Step::Skip => Vec::new(),
            Step::Deliver => {
                self.cursor.advance(seq);
                vec![event]
            }
            Step::Gap { after } => {
                let mut out = Vec::new();
                if let Ok(history) = self.store.read_after(&self.session_id, after).await {
                    out.extend(history.events.into_iter().filter(|e| e.seq < seq));
                }
                out.push(event);
                if let Some(last) = out.last() {
                    self.cursor.advance(last.seq);
                }
                out
            }
        }
    }

    /// Detach from the hub and the store; the session's resume window starts.
    pub async fn close(&self) {
        self.hub.detach(&self.session_id, self.holder.conn_id);
        if let Err(e) = self.store.detach(&self.session_id, self.holder.clone()).await {
            tracing::warn!(session_id = %self.session_id, error = %e, "could not detach session");
        }
    }
}

/// The session was attached elsewhere: a holder on this node was already closed by
/// [`Hub::attach`]; one on another node is told through the bus.
async fn take_over(backend: &Backend, session_id: &str, me: &Holder, previous: Option<Holder>) {
    let Some(old) = previous else { return };
    if old.node == me.node {
        return;
    }
    let signal =
        Signal::Kick { session_id: session_id.to_owned(), conn_id: old.conn_id, code: ErrorCode::SessionTakenOver };
    if let Err(e) = backend.bus.send(&old.node, signal).await {
        tracing::warn!(session_id, error = %e, "could not tell the previous holder's node about the takeover");
    }
}
