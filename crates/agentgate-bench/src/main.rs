//! `agentgate-bench`: measures the three targets of `docs/performance.md` on loopback.
//!
//! 1. Handshake cost: authenticated handshakes per server CPU-second of
//!    `agentgate serve`, against a bare tokio-tungstenite server (this binary
//!    re-executed with the hidden `--bare-server <addr_file>` flag).
//! 2. Event delivery latency: an in-process HTTP upstream agent streams NDJSON
//!    `agent_message` events stamped with their send time; the WebSocket client
//!    records receipt time minus send time.
//! 3. Idle memory: the gateway's `VmRSS` growth per idle authenticated connection.
//!
//! Every child process is killed when its guard drops; every wait is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest wait for one WebSocket step or for a server to start.
const STEP: Duration = Duration::from_secs(10);
/// The variable holding the upstream agent's bearer.
const AGENT_SECRET_ENV: &str = "AGENTGATE_BENCH_AGENT_SECRET";
/// A benchmark-only upstream secret (never a real one).
const AGENT_SECRET: &str = "bench-upstream-secret-0123456789abcdef";
/// Concurrent clients during the handshake test.
const CONCURRENCY: usize = 8;
/// Alternating handshake rounds per server.
const ROUNDS: usize = 3;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Parser)]
#[command(about = "Loopback benchmark of agentgate: handshake cost, event latency, idle memory")]
struct Args {
    /// Handshakes measured against each server.
    #[arg(long, default_value_t = 5000)]
    handshakes: usize,
    /// Events streamed through one run for the latency test.
    #[arg(long, default_value_t = 1000)]
    events: usize,
    /// Idle connections per batch for the memory test (two batches; 0 skips it).
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// The gateway binary (default: `agentgate` next to this binary).
    #[arg(long)]
    agentgate: Option<PathBuf>,
    /// Internal: run the bare tokio-tungstenite server, announcing its address here.
    #[arg(long, hide = true)]
    bare_server: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some(addr_file) = &args.bare_server {
        return rt.block_on(bare_server(addr_file));
    }
    let started = Instant::now();
    let result = rt.block_on(async { tokio::time::timeout(Duration::from_secs(110), bench(&args)).await });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(r) => r?,
        Err(_) => bail!("the benchmark did not finish within 110 s"),
    }
    eprintln!("finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------------
// The bare server
// ---------------------------------------------------------------------------------

/// Accept, `accept_async`, send one text message, answer the client's close.
async fn bare_server(addr_file: &Path) -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let tmp = addr_file.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, addr_file)?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
            if ws.send(Message::text("hello")).await.is_err() {
                return;
            }
            while let Ok(Some(Ok(_))) = tokio::time::timeout(STEP, ws.next()).await {}
        });
    }
}

// ---------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------

/// A child process, killed and reaped on drop.
#[derive(Debug)]
struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Proc {
    /// Spawn `cmd` and wait (bounded) until `addr_file` names a loopback address.
    async fn start(mut cmd: Command, addr_file: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(addr_file);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        let deadline = Instant::now() + STEP;
        loop {
            if let Ok(text) = std::fs::read_to_string(addr_file)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                if !addr.ip().is_loopback() {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("server listens on {addr}, not loopback");
                }
                return Ok(Self { child, addr });
            }
            if let Some(status) = child.try_wait()? {
                bail!("{cmd:?} exited early with {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{cmd:?} wrote no address to {} within {STEP:?}", addr_file.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway binary with a clean environment and `AGENTGATE_HOME` under `dir`.
fn gateway_cmd(bin: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("AGENTGATE_") || k == "RUST_LOG" {
            c.env_remove(k.as_ref());
        }
    }
    c.env("AGENTGATE_HOME", dir.join("home")).env(AGENT_SECRET_ENV, AGENT_SECRET).args(args);
    c
}

/// Server CPU time (user + system) in seconds, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32, ticks: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, a)| a).ok_or_else(|| anyhow!("odd /proc stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); the text after ')' starts at field 3.
    let utime: u64 = fields.get(11).ok_or_else(|| anyhow!("no utime"))?.parse()?;
    let stime: u64 = fields.get(12).ok_or_else(|| anyhow!("no stime"))?.parse()?;
    #[allow(clippy::cast_precision_loss)]
    Ok((utime + stime) as f64 / ticks)
}

/// Resident memory in KiB, from `/proc/<pid>/status`.
fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or_else(|| anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).ok_or_else(|| anyhow!("odd VmRSS"))?.parse()?)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------
// The upstream agent
// ---------------------------------------------------------------------------------

/// `POST /run`: `input.count` NDJSON `agent_message` lines 1 ms apart, each stamped
/// with its send time, then `agent_completed`.
async fn upstream_run(headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let expected = format!("Bearer {AGENT_SECRET}");
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return axum::http::StatusCode::UNAUTHORIZED.into_response();
    }
    let count = body["input"]["count"].as_u64().unwrap_or(10);
    let stream = futures_util::stream::unfold(0u64, move |i| async move {
        if i > count {
            return None;
        }
        let line = if i == count {
            "{\"type\":\"agent_completed\",\"data\":{\"result\":{}}}\n".to_owned()
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            format!("{{\"type\":\"agent_message\",\"data\":{{\"text\":\"x\",\"sent_ns\":{}}}}}\n", now_ns())
        };
        Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(line)), i + 1))
    });
    ([("content-type", "application/x-ndjson")], axum::body::Body::from_stream(stream)).into_response()
}

async fn start_upstream() -> Result<SocketAddr> {
    let app = axum::Router::new().route("/run", axum::routing::post(upstream_run));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------

async fn connect(url: &str, token: Option<&str>) -> Result<Ws> {
    let mut req = url.into_client_request()?;
    if let Some(t) = token {
        req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {t}"))?);
    }
    let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(req)).await??;
    Ok(ws)
}

/// The next text frame (bounded).
async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match tokio::time::timeout(STEP, ws.next()).await? {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Connect and wait for the first text frame; for the gateway it must be the welcome.
async fn handshake(url: &str, token: Option<&str>) -> Result<Ws> {
    let mut ws = connect(url, token).await?;
    let first = next_text(&mut ws).await?;
    if token.is_some() {
        let v: Value = serde_json::from_str(&first)?;
        if v["type"] != "welcome" {
            bail!("expected a welcome, got {first}");
        }
    }
    Ok(ws)
}

async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(STEP, ws.close(None)).await;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(STEP, ws.next()).await {}
}

/// `n` handshakes, `CONCURRENCY` at a time, each closed before the next.
async fn handshakes(url: &str, token: Option<&str>, n: usize) -> Result<()> {
    let left = Arc::new(AtomicUsize::new(n));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (left, url, token) = (Arc::clone(&left), url.to_owned(), token.map(str::to_owned));
        tasks.push(tokio::spawn(async move {
            while left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1)).is_ok() {
                let ws = handshake(&url, token.as_deref()).await?;
                close(ws).await;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

#[derive(Debug)]
struct HandshakeResult {
    cpu_s: f64,
    wall_s: f64,
}

impl HandshakeResult {
    #[allow(clippy::cast_precision_loss)]
    fn per_cpu_s(&self, n: usize) -> f64 {
        n as f64 / self.cpu_s.max(f64::EPSILON)
    }
}

/// Warm up, then time `n` handshakes against `server`.
async fn measure_handshakes(server: &Proc, token: Option<&str>, n: usize, ticks: f64) -> Result<HandshakeResult> {
    let url = format!("ws://{}/v1/ws", server.addr);
    handshakes(&url, token, (n / 10).max(50)).await.context("warm-up")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu0 = cpu_seconds(server.pid(), ticks)?;
    let t0 = Instant::now();
    handshakes(&url, token, n).await?;
    let wall_s = t0.elapsed().as_secs_f64();
    // Let the server finish tearing the last connections down.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu_s = cpu_seconds(server.pid(), ticks)? - cpu0;
    Ok(HandshakeResult { cpu_s, wall_s })
}

/// One run of `count` events; the latency of each in microseconds, sorted.
async fn measure_latency(url: &str, token: &str, count: usize) -> Result<Vec<f64>> {
    let mut ws = handshake(url, Some(token)).await?;
    let start = json!({"type": "run.start", "ref": "b1", "agent": "bench", "input": {"count": count}});
    ws.send(Message::text(start.to_string())).await?;
    let mut lat = Vec::with_capacity(count);
    loop {
        let text = next_text(&mut ws).await?;
        let received = now_ns();
        let v: Value = serde_json::from_str(&text)?;
        match v["type"].as_str() {
            Some("agent_message") => {
                let sent = v["data"]["sent_ns"].as_u64().ok_or_else(|| anyhow!("no sent_ns: {text}"))?;
                #[allow(clippy::cast_precision_loss)]
                lat.push(received.saturating_sub(u128::from(sent)) as f64 / 1000.0);
            }
            Some("agent_completed") => break,
            Some("agent_failed" | "agent_cancelled" | "error") => bail!("the run ended badly: {text}"),
            _ => {}
        }
    }
    close(ws).await;
    if lat.len() != count {
        bail!("received {} of {count} events", lat.len());
    }
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Open `n` idle authenticated connections and hold them.
async fn open_idle(url: &str, token: &str, n: usize) -> Result<Vec<Ws>> {
    let mut held = Vec::with_capacity(n);
    let per = n.div_ceil(CONCURRENCY);
    let mut tasks = Vec::new();
    for c in 0..CONCURRENCY {
        let (url, token) = (url.to_owned(), token.to_owned());
        let k = per.min(n.saturating_sub(c * per));
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(k);
            for _ in 0..k {
                mine.push(handshake(&url, Some(&token)).await?);
            }
            Ok::<_, anyhow::Error>(mine)
        }));
    }
    for t in tasks {
        held.extend(t.await??);
    }
    Ok(held)
}

/// The gateway's RSS growth per idle authenticated connection in KiB: for a first
/// batch of `n` (heap and runtime growth included), then for a second batch of `n`
/// opened while the first is still held (the marginal cost).
async fn measure_idle(server: &Proc, token: &str, n: usize) -> Result<(f64, f64)> {
    let url = format!("ws://{}/v1/ws", server.addr);
    let settle = Duration::from_millis(500);
    tokio::time::sleep(settle).await;
    let rss0 = vm_rss_kib(server.pid())?;
    let first = open_idle(&url, token, n).await?;
    tokio::time::sleep(settle).await;
    let rss1 = vm_rss_kib(server.pid())?;
    let second = open_idle(&url, token, n).await?;
    tokio::time::sleep(settle).await;
    let rss2 = vm_rss_kib(server.pid())?;
    // Dropped rather than closed politely: the gateway is killed next anyway.
    drop((first, second));
    #[allow(clippy::cast_precision_loss)]
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / n as f64;
    Ok((per(rss0, rss1), per(rss1, rss2)))
}

// ---------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------

async fn bench(args: &Args) -> Result<()> {
    let me = std::env::current_exe()?;
    let bin = match &args.agentgate {
        Some(p) => p.clone(),
        None => me.with_file_name("agentgate"),
    };
    if !bin.is_file() {
        bail!("{} not found; build it with `cargo build --release -p agentgate` or pass --agentgate", bin.display());
    }
    let ticks = clock_ticks();
    let dir = tempfile::tempdir()?;
    let upstream = start_upstream().await?;

    let addr_file = dir.path().join("gateway.addr");
    let config = dir.path().join("gateway.toml");
    let config_text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naddr_file = {}\n\n\
         [limits]\nhandshakes_per_ip_per_s = 1000000\nconnections_per_ip = 1000000\n\
         connections_per_principal = 1000000\n\n\
         [[agents]]\nname = \"bench\"\nkind = \"http\"\nurl = \"http://{upstream}/run\"\n\
         secret_env = \"{AGENT_SECRET_ENV}\"\ntimeout_s = 30\n",
        serde_json::to_string(&addr_file.display().to_string())?,
    );
    std::fs::write(&config, config_text)?;
    let config_s = config.display().to_string();

    let gateway = Proc::start(gateway_cmd(&bin, dir.path(), &["serve", "--config", &config_s]), &addr_file).await?;
    let mint =
        gateway_cmd(&bin, dir.path(), &["token", "mint", "--config", &config_s, "--sub", "bench", "--ttl", "3600"])
            .stdin(Stdio::null())
            .output()?;
    if !mint.status.success() {
        bail!("token mint failed: {}", String::from_utf8_lossy(&mint.stderr));
    }
    let token = String::from_utf8(mint.stdout)?.trim().to_owned();

    let bare_file = dir.path().join("bare.addr");
    let mut bare_cmd = Command::new(&me);
    bare_cmd.arg("--bare-server").arg(&bare_file);
    let bare = Proc::start(bare_cmd, &bare_file).await?;

    let n = args.handshakes.max(1);
    // Alternating rounds, summed, so that load from other processes on the machine
    // falls on both servers alike.
    let mut ag = HandshakeResult { cpu_s: 0.0, wall_s: 0.0 };
    let mut bs = HandshakeResult { cpu_s: 0.0, wall_s: 0.0 };
    let mut round_ratios = Vec::new();
    for round in 0..ROUNDS {
        let k = n / ROUNDS + usize::from(round < n % ROUNDS);
        eprintln!("handshakes, round {}: {k} against agentgate (pid {}) ...", round + 1, gateway.pid());
        let a = measure_handshakes(&gateway, Some(&token), k, ticks).await.context("agentgate handshakes")?;
        eprintln!("handshakes, round {}: {k} against the bare server (pid {}) ...", round + 1, bare.pid());
        let b = measure_handshakes(&bare, None, k, ticks).await.context("bare handshakes")?;
        round_ratios.push(b.cpu_s / a.cpu_s.max(f64::EPSILON));
        ag.cpu_s += a.cpu_s;
        ag.wall_s += a.wall_s;
        bs.cpu_s += b.cpu_s;
        bs.wall_s += b.wall_s;
    }
    drop(bare);

    eprintln!("latency: {} events ...", args.events);
    let lat = if args.events > 0 {
        Some(measure_latency(&format!("ws://{}/v1/ws", gateway.addr), &token, args.events).await.context("latency")?)
    } else {
        None
    };

    let idle = if args.idle > 0 {
        eprintln!("idle memory: {} connections ...", args.idle);
        // A fresh gateway, as in the measurements recorded in docs/performance.md.
        drop(gateway);
        let fresh = Proc::start(gateway_cmd(&bin, dir.path(), &["serve", "--config", &config_s]), &addr_file).await?;
        Some(measure_idle(&fresh, &token, args.idle).await.context("idle memory")?)
    } else {
        None
    };

    let (ag_rate, bs_rate) = (ag.per_cpu_s(n), bs.per_cpu_s(n));
    let ratio = ag_rate / bs_rate.max(f64::EPSILON);
    #[allow(clippy::cast_precision_loss)]
    let wall = |r: &HandshakeResult| n as f64 / r.wall_s.max(f64::EPSILON);
    println!("| measurement | value | target |");
    println!("|---|---|---|");
    println!(
        "| handshakes per server CPU-s, agentgate | {ag_rate:.0} ({n} in {:.2} CPU-s, {:.0}/s wall) | |",
        ag.cpu_s,
        wall(&ag)
    );
    println!(
        "| handshakes per server CPU-s, bare tokio-tungstenite | {bs_rate:.0} ({n} in {:.2} CPU-s, {:.0}/s wall) | |",
        bs.cpu_s,
        wall(&bs)
    );
    round_ratios.sort_by(f64::total_cmp);
    println!(
        "| ratio agentgate / bare | {:.1}% (rounds: {}) | >= 90% |",
        ratio * 100.0,
        round_ratios.iter().map(|r| format!("{:.0}%", r * 100.0)).collect::<Vec<_>>().join(", ")
    );
    if let Some(l) = &lat {
        println!(
            "| event latency ({} events, 1 ms apart) p50 / p90 / p99 / max | {:.0} / {:.0} / {:.0} / {:.0} µs | p99 < 1000 µs |",
            l.len(),
            percentile(l, 50.0),
            percentile(l, 90.0),
            percentile(l, 99.0),
            l.last().copied().unwrap_or(f64::NAN)
        );
    }
    if let Some((first, next)) = idle {
        let n = args.idle;
        println!("| idle memory per connection, first {n} (VmRSS delta, heap growth included) | {first:.2} KiB | |");
        println!("| idle memory per connection, next {n} (VmRSS delta, marginal) | {next:.2} KiB | <= 4 KiB |");
    }
    Ok(())
}
