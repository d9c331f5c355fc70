//! The Redis backend: any number of nodes sharing one Redis (`backend.kind = "redis"`).
//!
//! Key layout (every key under `backend.redis_prefix`, written `P` here; all keys of
//! one session share the hash tag `{s_...}`, so each session script touches one slot):
//!
//! | key | type | what |
//! |---|---|---|
//! | `P{s_ID}:m` | hash | session meta: `owner` (JSON), `seq` (last seq), `node` and `conn` (holder), `t:<run>` (the run's terminal seq), `r:<run>` (the run's last appended event number) |
//! | `P{s_ID}:e` | stream | the replay buffer: entry id `<seq>-1`, field `t` = the event frame's JSON text, `MAXLEN` = `sessions.buffer_events` |
//! | `Pt:<sha256 hex>` | string | a ticket (JSON), TTL = `auth.ticket_ttl_s`, taken with `GETDEL` |
//! | `Prev:jti`, `Prev:sub` | hash | revoked jtis; subjects with their `issued_before` |
//! | `Prev:log` | stream | every revocation, read by each node with a blocking `XREAD` |
//! | `Prun:<run>` | hash | run record: `owner`, `node`, `session`, `status`, `terminal`, `akey` |
//! | `Pactive:<owner digest>` | set | running runs of one principal (the `runs_per_principal` cap) |
//! | `Pnode:<node>:runs` | set | runs executing on a node |
//! | `Pnodes` | sorted set | node leases, scored by expiry (Redis `TIME`, ms) |
//! | `Preaper` | string | the single-flight lock of the dead-node reaper |
//!
//! Channels: `Pnode:<node>`, one per node: events of sessions attached there
//! (`E <session> <seq> <frame>`), takeovers (`K <session> <conn> <code>`) and run
//! cancellations (`C <run>`). Pub/sub is only a fast hint: the connection's cursor
//! fills any gap from the stream, and after every pub/sub reconnect each local session
//! is caught up from its stream.
//!
//! Outages: every call has a short timeout, so a handshake is answered 503
//! `service_unavailable` at once while Redis is unreachable. Events of local runs wait
//! in a bounded outbox (`backend.outage_buffer_events`), in order, and are appended
//! (idempotently: each carries its number within its run) once Redis returns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentgate_protocol::{ErrorCode, id};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Script};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::{
    Backend, Bus, Health, Inbox, Leave, Retention, RevocationStore, RunRecord, RunRegistry, RunStatus, Signal,
    StoredTicket, TicketStore,
};
use crate::config::Config;
use crate::revocation::{RevocationList, Revoke};
use crate::session::{
    BoxFuture, Event, History, Holder, NewEvent, Owner, SessionStore, StoreError, StoreFuture, StoredEvent, frame_parts,
};

/// Longest wait for one Redis call; past it the backend counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the node checks that Redis answers.
const PING_EVERY: Duration = Duration::from_millis(500);
/// How often the node renews its lease and runs the reaper.
const LEASE_EVERY: Duration = Duration::from_secs(1);
/// How often the TTLs of attached sessions are renewed.
const TOUCH_EVERY: Duration = Duration::from_secs(5);
/// An attached session's keys live this much longer than the resume window, renewed
/// every [`TOUCH_EVERY`] while attached.
const ATTACHED_EXTRA: Duration = Duration::from_secs(60);
/// Block time of the revocation reader's `XREAD` (its response timeout is longer).
const XREAD_BLOCK_MS: u64 = 1000;
/// Revocation log entries kept (approximately): nodes that start read the hashes.
const REVOCATION_LOG_LEN: u64 = 10_000;

const APPEND: &str = r"
-- KEYS: meta, stream. ARGV: run, rseq, terminal(0/1), head, tail, maxlen, channel prefix, session,
-- max bytes
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local tkey = 't:' .. ARGV[1]
local tseq = redis.call('HGET', KEYS[1], tkey)
if tseq then
  local e = redis.call('XRANGE', KEYS[2], tseq .. '-1', tseq .. '-1')
  if ARGV[3] == '1' and e[1] then return {0, tonumber(tseq), e[1][2][2]} end
  return {0}
end
local rkey = 'r:' .. ARGV[1]
local rseq = tonumber(ARGV[2])
if rseq > 0 then
  local last = tonumber(redis.call('HGET', KEYS[1], rkey) or '0')
  if rseq <= last then return {0} end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], tkey, seq)
  redis.call('HDEL', KEYS[1], rkey)
elseif rseq > 0 then
  redis.call('HSET', KEYS[1], rkey, rseq)
end
local text = ARGV[4] .. seq .. ARGV[5]
redis.call('XADD', KEYS[2], seq .. '-1', 't', text)
-- sessions.buffer_events and sessions.buffer_bytes are decided here (Redis backend): the
-- oldest events go first, never the newest.
local bytes = redis.call('HINCRBY', KEYS[1], 'bytes', #text)
local maxlen, maxbytes = tonumber(ARGV[6]), tonumber(ARGV[9])
local len = redis.call('XLEN', KEYS[2])
while len > 1 and (len > maxlen or bytes > maxbytes) do
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  redis.call('XDEL', KEYS[2], first[1])
  bytes = redis.call('HINCRBY', KEYS[1], 'bytes', -#first[2][2])
  len = len - 1
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
local node = redis.call('HGET', KEYS[1], 'node')
if node then redis.call('PUBLISH', ARGV[7] .. node, 'E ' .. ARGV[8] .. ' ' .. seq .. ' ' .. text) end
return {seq, seq, text}
";

const READ_AFTER: &str = r"
-- KEYS: meta, stream. ARGV: after
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local out = {seq}
local from = tonumber(ARGV[1]) + 1
if from <= seq then
  local entries = redis.call('XRANGE', KEYS[2], from .. '-1', '+')
  for _, e in ipairs(entries) do
    table.insert(out, e[2][2])
  end
end
return out
";

const ATTACH: &str = r"
-- KEYS: meta, stream. ARGV: node, conn, ttl ms, attached score, session
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local old = redis.call('HMGET', KEYS[1], 'node', 'conn')
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'conn', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local okey = redis.call('HGET', KEYS[1], 'okey')
if okey then
  redis.call('ZADD', okey, ARGV[4], ARGV[5])
  redis.call('PEXPIRE', okey, ARGV[3])
end
if old[1] then return {1, old[1], old[2]} end
return {0}
";

const DETACH: &str = r"
-- KEYS: meta, stream. ARGV: node, conn, window ms, session
local cur = redis.call('HMGET', KEYS[1], 'node', 'conn')
if cur[1] == ARGV[1] and cur[2] == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'node', 'conn')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  local okey = redis.call('HGET', KEYS[1], 'okey')
  if okey then
    local t = redis.call('TIME')
    redis.call('ZADD', okey, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[4])
  end
end
return 0
";

/// The score of an attached session in its principal's set (detached ones are scored
/// by their detach time, so the lowest score is the session detached longest ago).
const ATTACHED_SCORE: u64 = 1 << 52;

const CREATE: &str = r"
-- KEYS: the principal's sessions (sorted set), the new meta. ARGV: owner, window ms, cap,
-- key prefix, session, attached score, set ttl ms
-- limits.sessions_per_principal is decided here (Redis backend): at the cap the session
-- detached longest ago is dropped; with none detached the new one is refused.
local cap = tonumber(ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= cap then
  -- The session detached longest ago goes first (expired or not): no scan.
  local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[6], 'LIMIT', 0, 1)
  if #old > 0 then
    redis.call('DEL', ARGV[4] .. '{' .. old[1] .. '}:m', ARGV[4] .. '{' .. old[1] .. '}:e')
    redis.call('ZREM', KEYS[1], old[1])
  else
    -- All counted as attached: forget those whose keys expired (a node that died).
    for _, s in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
      if redis.call('EXISTS', ARGV[4] .. '{' .. s .. '}:m') == 0 then redis.call('ZREM', KEYS[1], s) end
    end
    if redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
  end
end
redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'seq', 0, 'bytes', 0, 'okey', KEYS[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
-- Counted as attached: its first attach follows at once, and no concurrent create of
-- the same principal may drop it in between.
redis.call('ZADD', KEYS[1], ARGV[6], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return 1
";

const ADMITS: &str = r"
-- KEYS: the principal's sessions. ARGV: cap, key prefix, attached score
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then return 1 end
if #redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3], 'LIMIT', 0, 1) > 0 then return 1 end
for _, s in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', ARGV[2] .. '{' .. s .. '}:m') == 0 then redis.call('ZREM', KEYS[1], s) end
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then return 1 end
return 0
";

const REGISTER_RUN: &str = r"
-- KEYS: active set, run hash, node runs. ARGV: cap, run, owner, node, session, active key, finished key
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'owner', ARGV[3], 'node', ARGV[4], 'session', ARGV[5], 'status', 'running', 'akey', ARGV[6], 'fkey', ARGV[7])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
";

const FINISH_RUN: &str = r"
-- KEYS: run hash. ARGV: status, terminal, retention ms, run, node runs prefix, node runs suffix,
-- run key prefix, finished runs kept per principal
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'terminal', ARGV[2])
local akey = redis.call('HGET', KEYS[1], 'akey')
if akey then redis.call('SREM', akey, ARGV[4]) end
local node = redis.call('HGET', KEYS[1], 'node')
if node then redis.call('SREM', ARGV[5] .. node .. ARGV[6], ARGV[4]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
-- runs.retained_per_principal: the principal's oldest finished runs are forgotten first.
local fkey = redis.call('HGET', KEYS[1], 'fkey')
if fkey then
  redis.call('LPUSH', fkey, ARGV[4])
  redis.call('PEXPIRE', fkey, ARGV[3])
  while redis.call('LLEN', fkey) > tonumber(ARGV[8]) do
    local old = redis.call('RPOP', fkey)
    redis.call('DEL', ARGV[7] .. old)
  end
end
return 1
";

const PUT_TICKET: &str = r"
-- KEYS: ticket, the principal's live tickets (sorted set by expiry). ARGV: value, ttl ms, cap, digest
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
";

const LEASE: &str = r"
-- KEYS: nodes. ARGV: node, lease ms, joining (0/1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local had = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if had or ARGV[3] == '1' then return 1 end
return 0
";

const DEAD_NODES: &str = r"
-- KEYS: nodes
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
";

const REVOKE_SUBJECT: &str = r"
-- KEYS: subjects hash. ARGV: subject, issued_before
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (not cur) or tonumber(cur) < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 0
";

/// The scripts, loaded once; `invoke_async` reloads a script after `NOSCRIPT` (a
/// Redis restart).
#[derive(Debug)]
struct Scripts {
    append: Script,
    read_after: Script,
    attach: Script,
    detach: Script,
    register_run: Script,
    finish_run: Script,
    lease: Script,
    dead_nodes: Script,
    create: Script,
    admits: Script,
    put_ticket: Script,
    revoke_subject: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            append: Script::new(APPEND),
            read_after: Script::new(READ_AFTER),
            attach: Script::new(ATTACH),
            detach: Script::new(DETACH),
            register_run: Script::new(REGISTER_RUN),
            finish_run: Script::new(FINISH_RUN),
            lease: Script::new(LEASE),
            dead_nodes: Script::new(DEAD_NODES),
            create: Script::new(CREATE),
            admits: Script::new(ADMITS),
            put_ticket: Script::new(PUT_TICKET),
            revoke_subject: Script::new(REVOKE_SUBJECT),
        }
    }
}

/// Reachability, kept by a pinger and by every failing call.
#[derive(Debug)]
struct RedisHealth {
    ok: AtomicBool,
    last_error: Mutex<String>,
    /// Woken when Redis comes back.
    back: tokio::sync::Notify,
}

impl RedisHealth {
    fn set(&self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                if !self.ok.swap(true, Ordering::SeqCst) {
                    tracing::info!("redis reachable");
                    self.back.notify_waiters();
                }
            }
            Err(e) => {
                let was = self.ok.swap(false, Ordering::SeqCst);
                if was {
                    tracing::warn!(error = %e, "redis unreachable: new handshakes get 503 service_unavailable");
                }
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
            }
        }
    }
}

impl Health for RedisHealth {
    fn check(&self) -> Result<(), String> {
        if self.ok.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone())
        }
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// One node's view of the Redis backend.
#[derive(Debug)]
struct Redis {
    client: Client,
    conn: ConnectionManager,
    prefix: String,
    node: String,
    scripts: Scripts,
    health: Arc<RedisHealth>,
    inbox: Arc<dyn Inbox>,
    cache: Arc<RevocationList>,
    buffer_events: usize,
    buffer_bytes: usize,
    sessions_per_principal: usize,
    resume_window: Duration,
    orphan_timeout: Duration,
    retention: Retention,
    outbox: mpsc::Sender<Job>,
    /// Pending outbox jobs, so `append_later` can tell a full outbox.
    outbox_capacity: usize,
}

/// One append waiting in the outbox.
#[derive(Debug)]
struct Job {
    session_id: String,
    event: NewEvent,
    reply: Option<oneshot::Sender<Result<StoredEvent, StoreError>>>,
}

fn err_text(e: &redis::RedisError) -> String {
    // The redis crate never puts the password of the URL in its errors.
    e.to_string()
}

impl Redis {
    fn meta(&self, sid: &str) -> String {
        format!("{}{{{sid}}}:m", self.prefix)
    }

    fn stream(&self, sid: &str) -> String {
        format!("{}{{{sid}}}:e", self.prefix)
    }

    fn channel(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }

    fn node_runs(&self, node: &str) -> String {
        format!("{}node:{node}:runs", self.prefix)
    }

    fn run_key(&self, run_id: &str) -> String {
        format!("{}run:{run_id}", self.prefix)
    }

    /// Run `f` on the shared connection with the call timeout, recording health.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(CALL_TIMEOUT, f(self.conn.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let text = err_text(&e);
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
                    self.health.set(Err(text.clone()));
                    Err(StoreError::Unavailable(text))
                } else if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                    || text.contains("LOADING")
                    || text.contains("NOAUTH")
                {
                    Err(StoreError::Unavailable(text))
                } else {
                    tracing::error!(error = %text, "redis refused an operation");
                    Err(StoreError::Failed(text))
                }
            }
            // A slow answer fails this call only: the pinger decides whether Redis is
            // unreachable, so one slow call on a busy machine does not refuse handshakes.
            Err(_) => {
                Err(StoreError::Unavailable(format!("no answer from redis within {} ms", CALL_TIMEOUT.as_millis())))
            }
        }
    }

    async fn append_now(&self, sid: &str, event: &NewEvent) -> Result<StoredEvent, StoreError> {
        let (head, tail) = frame_parts(event);
        let terminal = if event.ty.is_terminal() { "1" } else { "0" };
        let (meta, stream, prefix) = (self.meta(sid), self.stream(sid), format!("{}node:", self.prefix));
        let reply: Vec<redis::Value> = self
            .call(|mut c| async move {
                self.scripts
                    .append
                    .key(meta)
                    .key(stream)
                    .arg(&event.run_id)
                    .arg(event.rseq)
                    .arg(terminal)
                    .arg(head)
                    .arg(tail)
                    .arg(self.buffer_events)
                    .arg(prefix)
                    .arg(sid)
                    .arg(self.buffer_bytes)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let status: i64 = reply.first().map(|v| redis::from_redis_value_ref(v).unwrap_or(-1)).unwrap_or(-1);
        match status {
            -1 => Err(StoreError::NotFound),
            0 if reply.len() < 3 => Err(StoreError::Duplicate),
            _ => {
                let seq: u64 =
                    redis::from_redis_value_ref(&reply[1]).map_err(|e| StoreError::Unavailable(e.to_string()))?;
                let text: String =
                    redis::from_redis_value_ref(&reply[2]).map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Ok(Arc::new(Event { seq, text: text.into_boxed_str() }))
            }
        }
    }

    /// Append the outbox's events in order; while Redis is unreachable, wait for it
    /// and retry (the run's event number makes a retry of an append that did reach
    /// Redis harmless).
    async fn flush(self: Arc<Self>, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.recv().await {
            let result = loop {
                match self.append_now(&job.session_id, &job.event).await {
                    Err(StoreError::Unavailable(e)) => {
                        tracing::debug!(error = %e, "append waiting for redis");
                        let back = self.health.back.notified();
                        let _ = tokio::time::timeout(Duration::from_millis(250), back).await;
                    }
                    other => break other,
                }
            };
            match (&result, job.reply) {
                (_, Some(reply)) => {
                    let _ = reply.send(result);
                }
                (Err(StoreError::NotFound), None) => {
                    tracing::debug!(session_id = %job.session_id, "event dropped: its session expired");
                }
                _ => {}
            }
        }
    }

    async fn ping(&self) -> Result<(), String> {
        match tokio::time::timeout(CALL_TIMEOUT, async {
            let mut c = self.conn.clone();
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(err_text(&e)),
            Err(_) => Err(format!("no answer from redis within {} ms", CALL_TIMEOUT.as_millis())),
        }
    }

    /// Check Redis every [`PING_EVERY`]: a refused or broken connection makes the
    /// node unready at once; slowness only after two pings in a row time out.
    async fn pinger(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PING_EVERY);
        let mut slow = 0u32;
        loop {
            tick.tick().await;
            match self.ping().await {
                Ok(()) => {
                    slow = 0;
                    self.health.set(Ok(()));
                }
                Err(e) if e.starts_with("no answer") => {
                    slow += 1;
                    if slow >= 2 {
                        self.health.set(Err(e));
                    }
                }
                Err(e) => self.health.set(Err(e)),
            }
        }
    }

    /// Renew this node's lease every second; reap dead nodes' runs (single flight).
    async fn lease_loop(self: Arc<Self>) {
        let lease_ms = u64::try_from(self.orphan_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut joining = true;
        let mut tick = tokio::time::interval(LEASE_EVERY);
        loop {
            tick.tick().await;
            let nodes = format!("{}nodes", self.prefix);
            let node = self.node.clone();
            let join = if joining { "1" } else { "0" };
            let this: &Redis = &self;
            let renewed: Result<i64, _> = this
                .call(|mut c| async move {
                    this.scripts.lease.key(nodes).arg(node).arg(lease_ms).arg(join).invoke_async(&mut c).await
                })
                .await;
            match renewed {
                Ok(1) => joining = false,
                Ok(_) => tracing::error!(
                    node = %self.node,
                    "this node's lease had expired and its runs were ended node_lost by another node; \
                     their further events are suppressed"
                ),
                Err(_) => continue,
            }
            if let Err(e) = self.reap().await {
                tracing::debug!(error = %e, "reaper pass failed");
            }
        }
    }

    /// End every run of every node whose lease expired with `agent_failed`
    /// `node_lost`, through the same append script (so a run keeps exactly one
    /// terminal event), under a lock that one node holds at a time.
    async fn reap(&self) -> Result<(), StoreError> {
        let lock = format!("{}reaper", self.prefix);
        let node = self.node.clone();
        let got: Option<String> = self
            .call(|mut c| async move {
                redis::cmd("SET").arg(lock).arg(node).arg("NX").arg("PX").arg(2000).query_async(&mut c).await
            })
            .await?;
        if got.is_none() {
            return Ok(());
        }
        let nodes = format!("{}nodes", self.prefix);
        let dead: Vec<String> =
            self.call(|mut c| async move { self.scripts.dead_nodes.key(nodes).invoke_async(&mut c).await }).await?;
        for node in dead {
            if node == self.node {
                continue;
            }
            let set = self.node_runs(&node);
            let runs: Vec<String> =
                self.call(|mut c| async move { redis::cmd("SMEMBERS").arg(set).query_async(&mut c).await }).await?;
            for run_id in runs {
                let key = self.run_key(&run_id);
                let rec: HashMap<String, String> =
                    self.call(|mut c| async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await }).await?;
                if rec.get("status").map(String::as_str) != Some("running") {
                    continue;
                }
                let Some(sid) = rec.get("session") else { continue };
                let event = NewEvent {
                    ty: agentgate_protocol::EventType::AgentFailed,
                    run_id: run_id.clone(),
                    ts_ms: crate::session::now_ms(),
                    data: json!({"code": "node_lost", "message": "the gateway node running this run stopped answering"}),
                    rseq: 0,
                };
                let terminal = match self.append_now(sid, &event).await {
                    Ok(e) => serde_json::from_str(&e.text).unwrap_or(Value::Null),
                    Err(StoreError::Unavailable(e)) => return Err(StoreError::Unavailable(e)),
                    // The session expired, or the run had ended after all.
                    Err(_) => json!({"type": "agent_failed", "run_id": run_id, "data": event.data}),
                };
                tracing::info!(run_id = %run_id, dead_node = %node, "run ended node_lost");
                self.finish_now(&run_id, RunStatus::Failed, &terminal, self.retention).await?;
            }
            let (nodes, set) = (format!("{}nodes", self.prefix), self.node_runs(&node));
            let n = node.clone();
            self.call(|mut c| async move {
                redis::pipe().cmd("ZREM").arg(nodes).arg(n).cmd("DEL").arg(set).query_async::<()>(&mut c).await
            })
            .await?;
            tracing::info!(dead_node = %node, "reaped a dead node");
        }
        Ok(())
    }

    async fn finish_now(
        &self,
        run_id: &str,
        status: RunStatus,
        terminal: &Value,
        retention: Retention,
    ) -> Result<(), StoreError> {
        let key = self.run_key(run_id);
        let terminal = terminal.to_string();
        let retention_ms = u64::try_from(retention.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let node_prefix = format!("{}node:", self.prefix);
        let run_prefix = format!("{}run:", self.prefix);
        self.call(|mut c| async move {
            self.scripts
                .finish_run
                .key(key)
                .arg(status.as_str())
                .arg(terminal)
                .arg(retention_ms)
                .arg(run_id)
                .arg(node_prefix)
                .arg(":runs")
                .arg(run_prefix)
                .arg(retention.per_principal.max(1))
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Keep the keys of locally attached sessions alive.
    async fn touch_loop(self: Arc<Self>) {
        let ttl = u64::try_from((self.resume_window + ATTACHED_EXTRA).as_millis()).unwrap_or(u64::MAX);
        let mut tick = tokio::time::interval(TOUCH_EVERY);
        loop {
            tick.tick().await;
            let sessions = self.inbox.attached_sessions();
            if sessions.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for sid in &sessions {
                pipe.cmd("PEXPIRE").arg(self.meta(sid)).arg(ttl).ignore();
                pipe.cmd("PEXPIRE").arg(self.stream(sid)).arg(ttl).ignore();
            }
            let _ = self.call(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await;
        }
    }

    /// Receive this node's channel; after every (re)subscription catch every local
    /// session up from its stream. The loop is ours: errors are logged, not swallowed.
    async fn subscriber(self: Arc<Self>) {
        let channel = self.channel(&self.node);
        let mut backoff = Duration::from_millis(100);
        loop {
            let pubsub = tokio::time::timeout(CALL_TIMEOUT * 4, async {
                let mut ps = self.client.get_async_pubsub().await?;
                ps.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(ps)
            })
            .await;
            let mut pubsub = match pubsub {
                Ok(Ok(ps)) => ps,
                Ok(Err(e)) => {
                    tracing::debug!(error = %err_text(&e), "pub/sub connect failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            tracing::debug!(channel = %channel, "subscribed");
            self.catch_up().await;
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                match String::from_utf8(payload) {
                    Ok(text) => self.dispatch(&text),
                    Err(_) => tracing::warn!("non-UTF-8 message on the node channel ignored"),
                }
            }
            tracing::warn!(channel = %channel, "pub/sub connection lost; resubscribing");
        }
    }

    /// Hand the newest stored event of every local session to its connection: the
    /// connection's cursor reads whatever it missed before it.
    async fn catch_up(&self) {
        for sid in self.inbox.attached_sessions() {
            let stream = self.stream(&sid);
            let latest: Result<Entries, _> = self
                .call(|mut c| async move {
                    redis::cmd("XREVRANGE").arg(stream).arg("+").arg("-").arg("COUNT").arg(1).query_async(&mut c).await
                })
                .await;
            if let Ok(entries) = latest
                && let Some((id, fields)) = entries.into_iter().next()
                && let Some(seq) = id.split('-').next().and_then(|s| s.parse::<u64>().ok())
                && let Some((_, text)) = fields.into_iter().find(|(k, _)| k == "t")
            {
                self.inbox.event(&sid, Arc::new(Event { seq, text: text.into_boxed_str() }));
            }
        }
    }

    fn dispatch(&self, text: &str) {
        let mut parts = text.splitn(4, ' ');
        match parts.next() {
            Some("E") => {
                let (Some(sid), Some(seq), Some(frame)) = (parts.next(), parts.next(), parts.next()) else { return };
                let Ok(seq) = seq.parse::<u64>() else { return };
                self.inbox.event(sid, Arc::new(Event { seq, text: frame.into() }));
            }
            Some("K") => {
                let (Some(sid), Some(conn), Some(code)) = (parts.next(), parts.next(), parts.next()) else { return };
                let Ok(conn_id) = conn.parse::<u64>() else { return };
                let code = ErrorCode::parse(code).unwrap_or(ErrorCode::SessionTakenOver);
                self.inbox.signal(Signal::Kick { session_id: sid.to_owned(), conn_id, code });
            }
            Some("C") => {
                if let Some(run_id) = parts.next() {
                    self.inbox.signal(Signal::Cancel { run_id: run_id.to_owned() });
                }
            }
            _ => tracing::warn!("unknown message on the node channel ignored"),
        }
    }

    /// Fill the revocation cache from Redis and follow the revocation log with a
    /// blocking `XREAD` on a connection of its own (response timeout longer than the
    /// block time). After any error, start over: reload everything, then follow.
    async fn revocation_reader(self: Arc<Self>) {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT * 2))
            .set_response_timeout(Some(Duration::from_millis(XREAD_BLOCK_MS) * 3));
        loop {
            let result: redis::RedisResult<()> = async {
                let mut c: MultiplexedConnection =
                    self.client.get_multiplexed_async_connection_with_config(&config).await?;
                let log = format!("{}rev:log", self.prefix);
                let latest: Entries =
                    redis::cmd("XREVRANGE").arg(&log).arg("+").arg("-").arg("COUNT").arg(1).query_async(&mut c).await?;
                let mut last_id = latest.into_iter().next().map_or_else(|| "0-0".to_owned(), |(id, _)| id);
                let jtis: Vec<String> =
                    redis::cmd("HKEYS").arg(format!("{}rev:jti", self.prefix)).query_async(&mut c).await?;
                let subjects: HashMap<String, i64> =
                    redis::cmd("HGETALL").arg(format!("{}rev:sub", self.prefix)).query_async(&mut c).await?;
                for jti in jtis {
                    self.cache.revoke(Revoke::Jti(jti));
                }
                for (subject, issued_before) in subjects {
                    self.cache.revoke(Revoke::Subject { subject, issued_before });
                }
                loop {
                    let reply: Option<Vec<(String, Entries)>> = redis::cmd("XREAD")
                        .arg("BLOCK")
                        .arg(XREAD_BLOCK_MS)
                        .arg("COUNT")
                        .arg(100)
                        .arg("STREAMS")
                        .arg(&log)
                        .arg(&last_id)
                        .query_async(&mut c)
                        .await?;
                    for (_, entries) in reply.unwrap_or_default() {
                        for (id, fields) in entries {
                            last_id = id;
                            if let Some(r) = revoke_of(&fields) {
                                self.cache.revoke(r);
                            }
                        }
                    }
                }
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(error = %err_text(&e), "revocation reader restarting");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Stream entries as `XRANGE` returns them: id, then field-value pairs.
type Entries = Vec<(String, Vec<(String, String)>)>;

fn revoke_of(fields: &[(String, String)]) -> Option<Revoke> {
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
    if let Some(jti) = get("j") {
        return Some(Revoke::Jti(jti));
    }
    let subject = get("s")?;
    let issued_before = get("t")?.parse().ok()?;
    Some(Revoke::Subject { subject, issued_before })
}

fn owner_digest(owner: &Owner) -> String {
    let json = serde_json::to_string(owner).unwrap_or_default();
    hex::encode(&Sha256::digest(json.as_bytes())[..16])
}

#[derive(Debug)]
struct Handle(Arc<Redis>);

impl SessionStore for Handle {
    fn create(&self, owner: Owner) -> StoreFuture<'_, Result<String, StoreError>> {
        StoreFuture::boxed(async move {
            let sid = id::session_id();
            let r = &self.0;
            let set = format!("{}sessions:{}", r.prefix, owner_digest(&owner));
            let meta = r.meta(&sid);
            let owner = serde_json::to_string(&owner).unwrap_or_default();
            let window = u64::try_from(r.resume_window.as_millis()).unwrap_or(u64::MAX).max(1);
            let set_ttl = u64::try_from((r.resume_window + ATTACHED_EXTRA).as_millis()).unwrap_or(u64::MAX);
            let cap = r.sessions_per_principal;
            let s2 = sid.clone();
            let ok: i64 = r
                .call(|mut c| async move {
                    r.scripts
                        .create
                        .key(set)
                        .key(meta)
                        .arg(owner)
                        .arg(window)
                        .arg(cap)
                        .arg(&r.prefix)
                        .arg(s2)
                        .arg(ATTACHED_SCORE)
                        .arg(set_ttl)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            if ok == 1 { Ok(sid) } else { Err(StoreError::SessionLimit(cap)) }
        })
    }

    fn admits_new_session(&self, owner: &Owner) -> StoreFuture<'_, Result<bool, StoreError>> {
        let r = &self.0;
        let set = format!("{}sessions:{}", r.prefix, owner_digest(owner));
        StoreFuture::boxed(async move {
            let cap = r.sessions_per_principal;
            let ok: i64 = r
                .call(|mut c| async move {
                    r.scripts.admits.key(set).arg(cap).arg(&r.prefix).arg(ATTACHED_SCORE).invoke_async(&mut c).await
                })
                .await?;
            Ok(ok == 1)
        })
    }

    fn owner(&self, session_id: &str) -> StoreFuture<'_, Result<Option<Owner>, StoreError>> {
        let meta = self.0.meta(session_id);
        StoreFuture::boxed(async move {
            let owner: Option<String> = self
                .0
                .call(|mut c| async move { redis::cmd("HGET").arg(meta).arg("owner").query_async(&mut c).await })
                .await?;
            Ok(owner.and_then(|o| serde_json::from_str(&o).ok()))
        })
    }

    fn append(&self, session_id: &str, event: NewEvent) -> StoreFuture<'_, Result<StoredEvent, StoreError>> {
        let (tx, rx) = oneshot::channel();
        let job = Job { session_id: session_id.to_owned(), event, reply: Some(tx) };
        let outbox = self.0.outbox.clone();
        StoreFuture::boxed(async move {
            // A terminal event waits for room: it must be stored, after the run's
            // earlier events.
            outbox.send(job).await.map_err(|_| StoreError::Unavailable("the outbox is closed".into()))?;
            rx.await.map_err(|_| StoreError::Unavailable("the outbox is closed".into()))?
        })
    }

    fn append_later(&self, session_id: &str, event: NewEvent) -> Result<(), StoreError> {
        let job = Job { session_id: session_id.to_owned(), event, reply: None };
        self.0.outbox.try_send(job).map_err(|_| {
            StoreError::Unavailable(format!(
                "redis is unreachable and this node already holds {} events for it (backend.outage_buffer_events)",
                self.0.outbox_capacity
            ))
        })
    }

    fn read_after(&self, session_id: &str, after: u64) -> StoreFuture<'_, Result<History, StoreError>> {
        let (meta, stream) = (self.0.meta(session_id), self.0.stream(session_id));
        StoreFuture::boxed(async move {
            let reply: Vec<redis::Value> = self
                .0
                .call(|mut c| async move {
                    self.0.scripts.read_after.key(meta).key(stream).arg(after).invoke_async(&mut c).await
                })
                .await?;
            let last: i64 = reply.first().map(|v| redis::from_redis_value_ref(v).unwrap_or(-1)).unwrap_or(-1);
            if last < 0 {
                return Err(StoreError::NotFound);
            }
            let mut events = Vec::with_capacity(reply.len().saturating_sub(1));
            for v in &reply[1..] {
                let text: String =
                    redis::from_redis_value_ref(v).map_err(|e| StoreError::Unavailable(e.to_string()))?;
                let seq = seq_of(&text).unwrap_or(0);
                events.push(Arc::new(Event { seq, text: text.into_boxed_str() }));
            }
            Ok(History { events, last_seq: u64::try_from(last).unwrap_or(0) })
        })
    }

    fn attach(&self, session_id: &str, holder: Holder) -> StoreFuture<'_, Result<Option<Holder>, StoreError>> {
        let (meta, stream) = (self.0.meta(session_id), self.0.stream(session_id));
        let sid = session_id.to_owned();
        let ttl = u64::try_from((self.0.resume_window + ATTACHED_EXTRA).as_millis()).unwrap_or(u64::MAX);
        StoreFuture::boxed(async move {
            let reply: Vec<redis::Value> = self
                .0
                .call(|mut c| async move {
                    self.0
                        .scripts
                        .attach
                        .key(meta)
                        .key(stream)
                        .arg(&*holder.node)
                        .arg(holder.conn_id)
                        .arg(ttl)
                        .arg(ATTACHED_SCORE)
                        .arg(sid)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            let status: i64 = reply.first().map(|v| redis::from_redis_value_ref(v).unwrap_or(-1)).unwrap_or(-1);
            match status {
                -1 => Err(StoreError::NotFound),
                1 if reply.len() == 3 => {
                    let node: String = redis::from_redis_value_ref(&reply[1]).unwrap_or_default();
                    let conn: String = redis::from_redis_value_ref(&reply[2]).unwrap_or_default();
                    Ok(conn.parse().ok().map(|conn_id| Holder { node: node.into(), conn_id }))
                }
                _ => Ok(None),
            }
        })
    }

    fn detach(&self, session_id: &str, holder: Holder) -> StoreFuture<'_, Result<(), StoreError>> {
        let (meta, stream) = (self.0.meta(session_id), self.0.stream(session_id));
        let sid = session_id.to_owned();
        let window = u64::try_from(self.0.resume_window.as_millis()).unwrap_or(u64::MAX).max(1);
        StoreFuture::boxed(async move {
            self.0
                .call(|mut c| async move {
                    self.0
                        .scripts
                        .detach
                        .key(meta)
                        .key(stream)
                        .arg(&*holder.node)
                        .arg(holder.conn_id)
                        .arg(window)
                        .arg(sid)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await
                .map(|_| ())
        })
    }

    fn sweep(&self) -> StoreFuture<'_, ()> {
        StoreFuture::boxed(async {})
    }
}

/// The `seq` of an event frame's text (`{"type":"...","seq":N,...`).
fn seq_of(text: &str) -> Option<u64> {
    let i = text.find("\"seq\":")? + 6;
    let digits: String = text[i..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl TicketStore for Handle {
    /// The bound `limits.tickets_per_principal` is decided here (Redis backend), in
    /// one script.
    fn put(
        &self,
        digest: [u8; 32],
        ticket: StoredTicket,
        ttl: Duration,
        per_principal: usize,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let hexd = hex::encode(digest);
        let key = format!("{}t:{hexd}", self.0.prefix);
        let owner_key = format!("{}towner:{}", self.0.prefix, owner_digest(&Owner::of(&ticket.principal)));
        let value = serde_json::to_string(&ticket).unwrap_or_default();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Box::pin(async move {
            let ok: i64 = self
                .0
                .call(|mut c| async move {
                    self.0
                        .scripts
                        .put_ticket
                        .key(key)
                        .key(owner_key)
                        .arg(value)
                        .arg(ttl_ms)
                        .arg(per_principal)
                        .arg(hexd)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            if ok == 1 { Ok(()) } else { Err(StoreError::TicketLimit(per_principal)) }
        })
    }

    fn take(&self, digest: [u8; 32]) -> BoxFuture<'_, Result<Option<StoredTicket>, StoreError>> {
        let key = format!("{}t:{}", self.0.prefix, hex::encode(digest));
        Box::pin(async move {
            let v: Option<String> =
                self.0.call(|mut c| async move { redis::cmd("GETDEL").arg(key).query_async(&mut c).await }).await?;
            let ticket: Option<StoredTicket> = v.and_then(|v| serde_json::from_str(&v).ok());
            if let Some(t) = &ticket {
                // A used ticket frees its principal's place.
                let owner_key = format!("{}towner:{}", self.0.prefix, owner_digest(&Owner::of(&t.principal)));
                let member = hex::encode(digest);
                let _ = self
                    .0
                    .call(|mut c| async move {
                        redis::cmd("ZREM").arg(owner_key).arg(member).query_async::<i64>(&mut c).await
                    })
                    .await;
            }
            Ok(ticket)
        })
    }
}

impl RevocationStore for Handle {
    fn add(&self, revoke: Revoke) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let p = &self.0.prefix;
            let log = format!("{p}rev:log");
            match &revoke {
                Revoke::Jti(jti) => {
                    let (hash, jti) = (format!("{p}rev:jti"), jti.clone());
                    self.0
                        .call(|mut c| async move {
                            redis::pipe()
                                .atomic()
                                .cmd("HSET")
                                .arg(hash)
                                .arg(&jti)
                                .arg(1)
                                .ignore()
                                .cmd("XADD")
                                .arg(log)
                                .arg("MAXLEN")
                                .arg("~")
                                .arg(REVOCATION_LOG_LEN)
                                .arg("*")
                                .arg("j")
                                .arg(&jti)
                                .ignore()
                                .query_async::<()>(&mut c)
                                .await
                        })
                        .await?;
                }
                Revoke::Subject { subject, issued_before } => {
                    let (hash, subject, before) = (format!("{p}rev:sub"), subject.clone(), *issued_before);
                    let s2 = subject.clone();
                    self.0
                        .call(|mut c| async move {
                            self.0
                                .scripts
                                .revoke_subject
                                .key(hash)
                                .arg(&s2)
                                .arg(before)
                                .invoke_async::<i64>(&mut c)
                                .await
                        })
                        .await?;
                    self.0
                        .call(|mut c| async move {
                            redis::cmd("XADD")
                                .arg(log)
                                .arg("MAXLEN")
                                .arg("~")
                                .arg(REVOCATION_LOG_LEN)
                                .arg("*")
                                .arg("s")
                                .arg(subject)
                                .arg("t")
                                .arg(before)
                                .query_async::<()>(&mut c)
                                .await
                        })
                        .await?;
                }
            }
            // This node sees it at once; the others through the log.
            self.0.cache.revoke(revoke);
            Ok(())
        })
    }
}

impl RunRegistry for Handle {
    fn register(&self, run_id: &str, record: RunRecord, cap: usize) -> BoxFuture<'_, Result<bool, StoreError>> {
        let p = &self.0.prefix;
        let akey = format!("{p}active:{}", owner_digest(&record.owner));
        let fkey = format!("{p}finished:{}", owner_digest(&record.owner));
        let run_key = self.0.run_key(run_id);
        let node_runs = self.0.node_runs(&record.node);
        let owner = serde_json::to_string(&record.owner).unwrap_or_default();
        let run_id = run_id.to_owned();
        Box::pin(async move {
            let ok: i64 = self
                .0
                .call(|mut c| async move {
                    self.0
                        .scripts
                        .register_run
                        .key(&akey)
                        .key(run_key)
                        .key(node_runs)
                        .arg(cap)
                        .arg(run_id)
                        .arg(owner)
                        .arg(&record.node)
                        .arg(&record.session_id)
                        .arg(&akey)
                        .arg(fkey)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(ok == 1)
        })
    }

    fn finish(
        &self,
        run_id: &str,
        status: RunStatus,
        terminal: Value,
        retention: Retention,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let run_id = run_id.to_owned();
        Box::pin(async move { self.0.finish_now(&run_id, status, &terminal, retention).await })
    }

    fn get(&self, run_id: &str) -> BoxFuture<'_, Result<Option<RunRecord>, StoreError>> {
        let key = self.0.run_key(run_id);
        Box::pin(async move {
            let rec: HashMap<String, String> =
                self.0.call(|mut c| async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await }).await?;
            let (Some(owner), Some(node), Some(session), Some(status)) =
                (rec.get("owner"), rec.get("node"), rec.get("session"), rec.get("status"))
            else {
                return Ok(None);
            };
            let Ok(owner) = serde_json::from_str(owner) else { return Ok(None) };
            let Ok(status) = serde_json::from_value(Value::String(status.clone())) else { return Ok(None) };
            let terminal = rec.get("terminal").and_then(|t| serde_json::from_str(t).ok());
            Ok(Some(RunRecord { owner, node: node.clone(), session_id: session.clone(), status, terminal }))
        })
    }
}

impl Bus for Handle {
    fn send(&self, node: &str, signal: Signal) -> BoxFuture<'_, Result<(), StoreError>> {
        let channel = self.0.channel(node);
        let payload = match &signal {
            Signal::Kick { session_id, conn_id, code } => format!("K {session_id} {conn_id} {}", code.as_str()),
            Signal::Cancel { run_id } => format!("C {run_id}"),
        };
        Box::pin(async move {
            self.0
                .call(|mut c| async move {
                    redis::cmd("PUBLISH").arg(channel).arg(payload).query_async::<i64>(&mut c).await
                })
                .await
                .map(|_| ())
        })
    }
}

impl Leave for Handle {
    fn leave(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (nodes, node) = (format!("{}nodes", self.0.prefix), self.0.node.clone());
            let set = self.0.node_runs(&node);
            let _ = self
                .0
                .call(|mut c| async move {
                    redis::pipe().cmd("ZREM").arg(nodes).arg(node).cmd("DEL").arg(set).query_async::<()>(&mut c).await
                })
                .await;
        })
    }
}

/// Connect node `node_id` to the Redis of `config`. A Redis that is down is not an
/// error: the node starts unready and connects when Redis answers.
///
/// # Errors
/// The URL cannot be parsed (the message never shows its password).
pub async fn connect(
    config: &Config,
    node_id: &str,
    inbox: Arc<dyn Inbox>,
    cache: Arc<RevocationList>,
) -> Result<Backend, String> {
    let b = &config.backend;
    // TCP_NODELAY (the crate's default is off): with Nagle's algorithm, a command
    // written while the previous one on the same multiplexed connection is
    // unacknowledged would wait for that one's reply.
    let info = redis::IntoConnectionInfo::into_connection_info(b.redis_url.as_str())
        .map(|i| i.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)));
    let opened = match b.redis_ca_file.as_ref().filter(|_| b.redis_url.starts_with("rediss://")) {
        // Only these certificates verify the server, instead of the system's roots.
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("backend.redis_ca_file {}: cannot read it: {e}", path.display()))?;
            info.and_then(|i| {
                Client::build_with_tls(i, redis::TlsCertificates { client_tls: None, root_cert: Some(pem) })
            })
        }
        None => info.and_then(Client::open),
    };
    let client =
        opened.map_err(|e| format!("backend.redis_url {} cannot be used: {}", b.redis_url_redacted(), err_text(&e)))?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
        .map_err(|e| format!("backend.redis_url {}: {}", b.redis_url_redacted(), err_text(&e)))?;
    let (outbox, outbox_rx) = mpsc::channel(b.outage_buffer_events.max(1));
    let health = Arc::new(RedisHealth {
        ok: AtomicBool::new(false),
        last_error: Mutex::new("not connected to redis yet".into()),
        back: tokio::sync::Notify::new(),
    });
    let redis = Arc::new(Redis {
        client,
        conn,
        prefix: b.redis_prefix.clone(),
        node: node_id.to_owned(),
        scripts: Scripts::new(),
        health: Arc::clone(&health),
        inbox,
        cache,
        buffer_events: config.sessions.buffer_events.max(1),
        buffer_bytes: config.sessions.buffer_bytes.max(1),
        sessions_per_principal: config.limits.sessions_per_principal.max(1),
        resume_window: config.sessions.resume_window,
        orphan_timeout: config.runs.orphan_timeout,
        retention: Retention { ttl: config.runs.retention, per_principal: config.runs.retained_per_principal },
        outbox,
        outbox_capacity: b.outage_buffer_events.max(1),
    });
    // A slow first answer (a busy machine) is waited for, briefly.
    let mut first = redis.ping().await;
    for _ in 0..3 {
        match &first {
            Err(e) if e.starts_with("no answer") => first = redis.ping().await,
            _ => break,
        }
    }
    if let Err(e) = &first {
        tracing::warn!(url = %b.redis_url_redacted(), error = %e, "redis is not reachable yet; the node is unready until it is");
    } else {
        tracing::info!(url = %b.redis_url_redacted(), prefix = %b.redis_prefix, node = %node_id, "redis backend connected");
    }
    health.set(first);
    tokio::spawn(Arc::clone(&redis).flush(outbox_rx));
    tokio::spawn(Arc::clone(&redis).pinger());
    tokio::spawn(Arc::clone(&redis).lease_loop());
    tokio::spawn(Arc::clone(&redis).touch_loop());
    tokio::spawn(Arc::clone(&redis).subscriber());
    tokio::spawn(Arc::clone(&redis).revocation_reader());
    let handle = Arc::new(Handle(redis));
    Ok(Backend {
        sessions: handle.clone(),
        tickets: handle.clone(),
        revocations: handle.clone(),
        runs: handle.clone(),
        bus: handle.clone(),
        health,
        leave: handle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_read_from_a_frame() {
        assert_eq!(seq_of(r#"{"type":"agent_started","seq":42,"run_id":"r_1"}"#), Some(42));
        assert_eq!(seq_of("{}"), None);
    }
}
