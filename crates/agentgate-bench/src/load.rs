//! The load generator: WebSocket clients from several loopback source addresses,
//! handshake rounds, idle connections held by helper processes, and event latency.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Longest wait for one WebSocket step.
pub(crate) const STEP: Duration = Duration::from_secs(15);

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Where a client connects.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// Whether the server checks a bearer token (a token is sent only then).
    pub(crate) auth: bool,
}

/// Loopback source address number `i` (127.0.0.10 upwards), so that no single source
/// address runs out of ephemeral ports.
pub(crate) fn source(i: usize) -> Ipv4Addr {
    #[allow(clippy::cast_possible_truncation)]
    Ipv4Addr::new(127, 0, 0, 10 + (i % 200) as u8)
}

/// Nanoseconds since this process's first call: one monotonic clock for the upstream's
/// stamps and the clients' receipts (both live in this process).
pub(crate) fn mono_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Open a WebSocket to `target` from `src` (small client buffers: the helpers hold
/// thousands).
/// With `src`, the socket is bound to it (for the many long-lived connections); without,
/// the kernel picks the port at connect time, which is cheaper for short connections.
/// The query (`?{query}`) is left out when empty.
pub(crate) async fn connect_query(
    target: &Target,
    src: Option<Ipv4Addr>,
    token: Option<&str>,
    query: &str,
) -> Result<Ws> {
    let stream = match src {
        Some(src) => {
            let sock = TcpSocket::new_v4()?;
            sock.set_reuseaddr(true)?;
            sock.bind(SocketAddr::new(src.into(), 0)).with_context(|| format!("bind {src}"))?;
            tokio::time::timeout(STEP, sock.connect(target.addr)).await.context("connect timed out")??
        }
        None => tokio::time::timeout(STEP, TcpStream::connect(target.addr)).await.context("connect timed out")??,
    };
    stream.set_nodelay(true)?;
    let sep = if query.is_empty() { "" } else { "?" };
    let mut req = format!("ws://{}/v1/ws{sep}{query}", target.addr).into_client_request()?;
    if target.auth
        && let Some(t) = token
    {
        req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {t}"))?);
    }
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::client_async_with_config(req, stream, Some(config)))
        .await
        .context("WebSocket handshake timed out")??;
    Ok(ws)
}

/// The next text frame (bounded).
pub(crate) async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match tokio::time::timeout(STEP, ws.next()).await.context("no frame within the step")? {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Connect to `/v1/ws?{query}` and wait for the welcome; returns it too.
pub(crate) async fn open_query(
    target: &Target,
    src: Option<Ipv4Addr>,
    token: Option<&str>,
    query: &str,
) -> Result<(Ws, Value)> {
    let mut ws = connect_query(target, src, token, query).await?;
    let first = next_text(&mut ws).await?;
    let v: Value = serde_json::from_str(&first).with_context(|| format!("first frame is not JSON: {first}"))?;
    if v["type"] != "welcome" {
        bail!("expected a welcome, got {first}");
    }
    Ok((ws, v))
}

/// Close politely and wait (bounded) for the server's end.
pub(crate) async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(STEP, ws.close(None)).await;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(STEP, ws.next()).await {}
}

/// One whole handshake, as a lean client does it, so that the load generator costs as
/// little as it can and the server is measured, not the client: connect from `src`,
/// send the upgrade request (with the bearer when the server checks one), check the
/// `101` and its `Sec-WebSocket-Accept`, read the first frame (the welcome: a text
/// frame naming itself), send a masked close frame, read the server's close frame and
/// the end of the stream. Every step is bounded by [`STEP`].
pub(crate) async fn handshake(target: &Target, src: Ipv4Addr, token: &str) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::handshake::client::generate_key;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    let work = async {
        let sock = TcpSocket::new_v4()?;
        sock.set_reuseaddr(true)?;
        sock.bind(SocketAddr::new(src.into(), 0)).with_context(|| format!("bind {src}"))?;
        let mut stream = sock.connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let key = generate_key();
        let mut req = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n",
            target.addr
        );
        if target.auth {
            req.push_str("Authorization: Bearer ");
            req.push_str(token);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        // The head, then the first frame (in the same read or not).
        let mut buf = Vec::with_capacity(1024);
        let head_end = loop {
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("the server closed before answering the upgrade");
            }
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 {
                bail!("no end of the response head within 16 KiB");
            }
        };
        let head = std::str::from_utf8(&buf[..head_end]).context("the response head is not UTF-8")?;
        if !head.starts_with("HTTP/1.1 101 ") {
            bail!("expected 101, got {:?}", head.lines().next().unwrap_or(""));
        }
        let accept = derive_accept_key(key.as_bytes());
        let accepted = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(n, v)| n.eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == accept)
        });
        if !accepted {
            bail!("the 101 has no or a wrong Sec-WebSocket-Accept");
        }
        let frame = read_frame(&mut stream, &mut buf, head_end).await?;
        #[derive(serde::Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "type", borrow)]
            ty: std::borrow::Cow<'a, str>,
        }
        let welcome = serde_json::from_slice::<Kind<'_>>(&frame.1).is_ok_and(|k| k.ty == "welcome");
        if frame.0 != 0x1 || !welcome {
            bail!("the first frame is not the welcome (opcode {})", frame.0);
        }
        // Close 1000, masked (RFC 6455 5.3: a client masks every frame).
        let mask = rand_mask();
        let code = 1000u16.to_be_bytes();
        let close = [0x88, 0x82, mask[0], mask[1], mask[2], mask[3], code[0] ^ mask[0], code[1] ^ mask[1]];
        stream.write_all(&close).await?;
        let consumed = frame.2;
        let reply = read_frame(&mut stream, &mut buf, consumed).await?;
        if reply.0 != 0x8 {
            bail!("expected the server's close frame, got opcode {}", reply.0);
        }
        // The server ends the TCP connection after the close handshake.
        let mut rest = [0u8; 64];
        while stream.read(&mut rest).await? != 0 {}
        Ok(())
    };
    tokio::time::timeout(STEP, work).await.context("a handshake step timed out")?
}

/// Read one unmasked server frame that starts at `buf[at..]` (reading more as needed);
/// returns its opcode, its payload and where the next frame starts.
async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>, at: usize) -> Result<(u8, Vec<u8>, usize)> {
    use tokio::io::AsyncReadExt;
    loop {
        let have = &buf[at..];
        if have.len() >= 2 {
            let (len, hdr) = match have[1] & 0x7f {
                126 if have.len() >= 4 => (usize::from(u16::from_be_bytes([have[2], have[3]])), 4),
                127 => bail!("a frame of more than 64 KiB"),
                126 => (usize::MAX, 0),
                n => (usize::from(n), 2),
            };
            if have[1] & 0x80 != 0 {
                bail!("the server masked a frame");
            }
            if len != usize::MAX && have.len() >= hdr + len {
                return Ok((have[0] & 0x0f, have[hdr..hdr + len].to_vec(), at + hdr + len));
            }
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("the connection ended inside a frame");
        }
    }
}

/// A frame mask; it needs no strength against a loopback server.
fn rand_mask() -> [u8; 4] {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0x9e37_79b9);
    NEXT.fetch_add(0x6d2b_79f5, Ordering::Relaxed).to_le_bytes()
}

/// What one handshake round did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Round {
    pub(crate) ok: usize,
    pub(crate) failed: usize,
    pub(crate) wall_s: f64,
}

/// Handshakes ([`handshake`]: connect, welcome, close) by `concurrency` clients until
/// `duration` has passed or `max` have started; each client uses its own token.
pub(crate) async fn handshake_round(
    target: &Target,
    tokens: &[String],
    concurrency: usize,
    duration: Duration,
    max: usize,
) -> Result<Round> {
    let started = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..concurrency {
        let (started, target, token) = (Arc::clone(&started), target.clone(), tokens[c % tokens.len()].clone());
        tasks.spawn(async move {
            let (mut ok, mut failed, mut last_err) = (0usize, 0usize, None);
            let mut i = c;
            while Instant::now() < deadline && started.fetch_add(1, Ordering::Relaxed) < max {
                // Rotating source addresses: plain connect() reuses ports that the server
                // still holds in TIME_WAIT, and some handshakes then stall for a second.
                i += concurrency;
                match handshake(&target, source(i), &token).await {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        failed += 1;
                        last_err = Some(e);
                    }
                }
            }
            (ok, failed, last_err)
        });
    }
    let mut round = Round::default();
    let mut last_err = None;
    while let Some(r) = tasks.join_next().await {
        let (ok, failed, e) = r?;
        round.ok += ok;
        round.failed += failed;
        last_err = last_err.or(e);
    }
    round.wall_s = t0.elapsed().as_secs_f64();
    if round.failed * 100 > round.ok + round.failed {
        bail!(
            "{} of {} handshakes failed; last error: {:#}",
            round.failed,
            round.ok + round.failed,
            last_err.unwrap_or_else(|| anyhow!("?"))
        );
    }
    Ok(round)
}

/// Open `n` connections to `target`, `concurrency` at a time, from `src`.
pub(crate) async fn open_many(target: &Target, tokens: &[String], n: usize, src: Ipv4Addr) -> Result<Vec<Ws>> {
    Ok(open_many_sessions(target, tokens, n, src).await?.into_iter().map(|(ws, ..)| ws).collect())
}

/// [`open_many`], with each connection's session id and token.
pub(crate) async fn open_many_sessions(
    target: &Target,
    tokens: &[String],
    n: usize,
    src: Ipv4Addr,
) -> Result<Vec<(Ws, String, String)>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64.min(n) {
        let (next, target, tokens) = (Arc::clone(&next), target.clone(), tokens.to_vec());
        tasks.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let token = &tokens[i % tokens.len()];
                let (ws, welcome) = open_query(&target, Some(src), Some(token), "")
                    .await
                    .with_context(|| format!("connection {} of {n} to {}", i + 1, target.addr))?;
                let session = welcome["session_id"].as_str().unwrap_or_default().to_owned();
                mine.push((ws, session, token.clone()));
            }
            Ok::<_, anyhow::Error>(mine)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    Ok(all)
}

// ---------------------------------------------------------------------------------
// The upstream agent for the latency test
// ---------------------------------------------------------------------------------

/// `POST /run` with `input` `{count, interval_us, delay_us}`: after `delay_us`,
/// `count` NDJSON `agent_message` events `interval_us` apart, each stamped with its
/// send time (`mono_ns`), then `agent_completed`.
async fn upstream_run(
    secret: axum::extract::State<Arc<String>>,
    headers: axum::http::HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let expected = format!("Bearer {}", secret.0);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return axum::http::StatusCode::UNAUTHORIZED.into_response();
    }
    let count = body["input"]["count"].as_u64().unwrap_or(10);
    let interval = Duration::from_micros(body["input"]["interval_us"].as_u64().unwrap_or(1000));
    let start = tokio::time::Instant::now() + Duration::from_micros(body["input"]["delay_us"].as_u64().unwrap_or(0));
    let stream = futures_util::stream::unfold(0u64, move |i| async move {
        if i > count {
            return None;
        }
        let line = if i == count {
            "{\"type\":\"agent_completed\",\"data\":{\"result\":{}}}\n".to_owned()
        } else {
            #[allow(clippy::cast_possible_truncation)]
            tokio::time::sleep_until(start + interval * (i as u32)).await;
            format!("{{\"type\":\"agent_message\",\"data\":{{\"text\":\"x\",\"sent_ns\":{}}}}}\n", mono_ns())
        };
        Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(line)), i + 1))
    });
    ([("content-type", "application/x-ndjson")], axum::body::Body::from_stream(stream)).into_response()
}

/// Serve the upstream agent on loopback; its bearer is `secret`.
pub(crate) async fn start_upstream(secret: &str) -> Result<SocketAddr> {
    let app =
        axum::Router::new().route("/run", axum::routing::post(upstream_run)).with_state(Arc::new(secret.to_owned()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // TCP_NODELAY, as HTTP servers users write set it (Go's net package, Node's http
    // server and Python's asyncio do by default; axum does not): with Nagle's algorithm
    // a small chunk written while the previous one is unacknowledged waits for the
    // gateway's delayed ACK, which would be counted as the gateway's latency.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// Latencies of one level, in microseconds, sorted.
#[derive(Debug, Clone)]
pub(crate) struct Latency {
    pub(crate) sessions: usize,
    pub(crate) streaming: usize,
    pub(crate) interval_ms: f64,
    /// Events each streaming session received (the first ones, warm-up, are not in `micros`).
    pub(crate) events: u64,
    pub(crate) micros: Vec<f64>,
    /// Milliseconds per second that the gateway's threads waited, runnable, for a CPU
    /// while the events streamed (other processes on its core).
    pub(crate) runqueue_ms_per_s: f64,
}

/// How long before its first event a run's session is resumed on the other node.
const RESUME_LEAD: Duration = Duration::from_millis(1000);

/// `sessions` connected sessions, of which `min(sessions, active_max)` each stream one
/// run whose events are spread so that all of them together get about `rate` events
/// per second (at most one per millisecond each), for about `window`.
///
/// With `resume`, each streaming session, once its run is accepted, is resumed on that
/// other gateway (`?session_id=...&last_seq=N`, [`RESUME_LEAD`] before the run's first
/// event): the run's node appends, the other node delivers.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn latency_level(
    server_pid: u32,
    target: &Target,
    tokens: &[String],
    sessions: usize,
    active_max: usize,
    rate: usize,
    window: Duration,
    resume: Option<&Target>,
) -> Result<Latency> {
    let streaming = sessions.min(active_max).max(1);
    let interval_us = (streaming as u64 * 1_000_000 / rate.max(1) as u64).max(1000);
    let warm = 2u64;
    let count = (u64::try_from(window.as_micros()).unwrap_or(u64::MAX) / interval_us).max(3) + warm;
    // Sessions from several source addresses, 5 000 per address.
    let mut conns = Vec::with_capacity(sessions);
    let mut left = sessions;
    let mut k = 0;
    while left > 0 {
        let batch = left.min(5000);
        conns.extend(open_many_sessions(target, tokens, batch, source(100 + k)).await?);
        left -= batch;
        k += 1;
    }
    let idle = conns.split_off(streaming);
    let (wait0, t0) = (crate::procs::runqueue_wait_ns(server_pid), Instant::now());
    let mut tasks = tokio::task::JoinSet::new();
    let lead_us = if resume.is_some() { u64::try_from(RESUME_LEAD.as_micros()).unwrap_or(0) } else { 0 };
    for (i, (mut ws, session, token)) in conns.into_iter().enumerate() {
        let delay_us = (i as u64 * interval_us) / streaming as u64 + lead_us;
        let resume = resume.cloned();
        tasks.spawn(async move {
            let start = json!({"type": "run.start", "ref": "b", "agent": "bench",
                "input": {"count": count, "interval_us": interval_us, "delay_us": delay_us}});
            let sent = Instant::now();
            ws.send(Message::text(start.to_string())).await?;
            if let Some(other) = resume {
                let mut last_seq = 0u64;
                loop {
                    let text = next_text(&mut ws).await?;
                    let v: Value = serde_json::from_str(&text)?;
                    last_seq = last_seq.max(v["seq"].as_u64().unwrap_or(0));
                    match v["type"].as_str() {
                        Some("run.accepted") => break,
                        Some("error") => bail!("run.start refused: {text}"),
                        _ => {}
                    }
                }
                let query = format!("session_id={session}&last_seq={last_seq}");
                let (b, welcome) = open_query(&other, Some(source(150 + i / 5000)), Some(&token), &query)
                    .await
                    .context("resume on the other gateway")?;
                if welcome["resumed"] != true {
                    bail!("the other gateway did not resume the session: {welcome}");
                }
                if sent.elapsed() + Duration::from_millis(100) > RESUME_LEAD {
                    bail!(
                        "resuming on the other gateway took {:?}, longer than the {RESUME_LEAD:?} lead before the \
                         first event (the machine is overloaded)",
                        sent.elapsed()
                    );
                }
                // The first node closes its connection 4409 session_taken_over.
                drop(ws);
                ws = b;
            }
            let mut lat = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
            let mut seen = 0u64;
            loop {
                let text = next_text(&mut ws).await?;
                let received = mono_ns();
                let v: Value = serde_json::from_str(&text)?;
                match v["type"].as_str() {
                    Some("agent_message") => {
                        let sent = v["data"]["sent_ns"].as_u64().ok_or_else(|| anyhow!("no sent_ns: {text}"))?;
                        seen += 1;
                        if seen > warm {
                            #[allow(clippy::cast_precision_loss)]
                            lat.push(received.saturating_sub(sent) as f64 / 1000.0);
                        }
                    }
                    Some("agent_completed") => break,
                    Some("agent_failed" | "run_cancelled" | "error") => bail!("the run ended badly: {text}"),
                    _ => {}
                }
            }
            if seen != count {
                bail!("received {seen} of {count} events");
            }
            close(ws).await;
            Ok::<_, anyhow::Error>(lat)
        });
    }
    let mut micros = Vec::new();
    let limit = window + Duration::from_secs(60);
    let collected = tokio::time::timeout(limit, async {
        while let Some(r) = tasks.join_next().await {
            micros.extend(r??);
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    match collected {
        Ok(r) => r?,
        Err(_) => bail!("the latency level with {sessions} sessions did not finish within {limit:?}"),
    }
    #[allow(clippy::cast_precision_loss)]
    let runqueue_ms_per_s = crate::procs::runqueue_wait_ns(server_pid).saturating_sub(wait0) as f64
        / 1e6
        / t0.elapsed().as_secs_f64().max(f64::EPSILON);
    drop(idle);
    micros.sort_by(f64::total_cmp);
    #[allow(clippy::cast_precision_loss)]
    Ok(Latency {
        sessions,
        streaming,
        interval_ms: interval_us as f64 / 1000.0,
        events: count,
        micros,
        runqueue_ms_per_s,
    })
}

/// The `p`th percentile of sorted values (nearest rank).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.saturating_sub(1).min(sorted.len() - 1)]
}
