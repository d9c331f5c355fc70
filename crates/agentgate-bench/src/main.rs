//! `agentgate-bench`: agentgate against two ceilings and the stacks users write
//! instead, on loopback, with honest accounting (docs/performance.md).
//!
//! 1. Handshakes per server CPU-second: every server is pinned to one core (`taskset`)
//!    and this load generator to another; 64 concurrent clients; alternating rounds;
//!    the server's CPU time is `utime + stime` of its pid from `/proc`, read before and
//!    after each round. Ceilings: a bare tokio-tungstenite server (current-thread
//!    runtime, 4 KiB read buffer) without auth and with the same HS256 check.
//! 2. Event delivery latency p50/p99/p999 at several numbers of concurrent sessions:
//!    an in-process HTTP upstream agent streams NDJSON events stamped with their send
//!    time; the WebSocket clients record receipt minus send (one monotonic clock).
//! 3. Idle memory: `VmRSS` of a fresh server holding 1k, 5k, 15k idle connections,
//!    opened by helper processes (this binary re-executed) from several 127.0.0.x
//!    source addresses, since open files are capped per process.
//!
//! Every load loop is bounded in count and time; every child is killed on drop.

mod load;
mod procs;
mod redis_bench;
mod servers;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};

use load::{Latency, Target};
use procs::{Pinning, Proc};

/// The bench issuer's HMAC secret (benchmark only, never a real one).
pub(crate) const JWT_SECRET: &str = "agentgate-bench-hs256-secret-0123456789abcdef0123456789abcdef";
/// The variable that hands the secret to the servers.
pub(crate) const JWT_SECRET_ENV: &str = "AGENTGATE_BENCH_JWT_SECRET";
pub(crate) const ISSUER: &str = "agentgate-bench";
pub(crate) const AUDIENCE: &str = "agentgate-bench";
/// The upstream agent's bearer (benchmark only).
const AGENT_SECRET: &str = "bench-upstream-secret-0123456789abcdef";
const AGENT_SECRET_ENV: &str = "AGENTGATE_BENCH_AGENT_SECRET";
/// Idle connections held by one helper process.
const PER_HELPER: usize = 5000;

#[derive(Debug, Parser)]
#[command(
    about = "Loopback benchmark of agentgate against two tokio-tungstenite ceilings and the Node/Python stacks \
             users write instead: handshakes per server CPU-second, event delivery latency, idle memory",
    after_help = "Build first: cargo build --release -p agentgate -p agentgate-bench\n\
                  Full run (about 5 minutes): cargo run --release -p agentgate-bench -- --plot docs/performance.png\n\
                  Sanity run (about a minute): cargo run --release -p agentgate-bench -- --quick"
)]
struct Args {
    /// A fast sanity run (about a minute): fewer and shorter rounds, smaller levels.
    #[arg(long)]
    quick: bool,
    /// The gateway binary (default: `agentgate` next to this binary).
    #[arg(long)]
    agentgate: Option<PathBuf>,
    /// A second gateway binary measured in the same run, e.g. the previous release,
    /// shown as "agentgate (before)".
    #[arg(long)]
    before: Option<PathBuf>,
    /// Alternating handshake rounds per server [default: 5, quick 2].
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds of one handshake round against one server [default: 2, quick 1].
    #[arg(long)]
    round_secs: Option<f64>,
    /// Concurrent handshake clients.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Most handshakes of one round (a bound; the round's time usually ends it first).
    #[arg(long, default_value_t = 200_000)]
    max_per_round: usize,
    /// Idle connection counts for the memory test [default: 1000,5000,15000; quick 250,500,1000].
    #[arg(long, value_delimiter = ',')]
    memory_levels: Option<Vec<usize>>,
    /// Concurrent sessions for the latency test [default: 1,100,10000; quick 1,100,1000].
    #[arg(long, value_delimiter = ',')]
    latency_sessions: Option<Vec<usize>>,
    /// Sessions that stream events at once; the others stay connected and idle (the
    /// gateway's open-file cap is 20 000: one WebSocket plus one upstream socket each).
    #[arg(long, default_value_t = 2000)]
    latency_streaming_max: usize,
    /// Events per second over all streaming sessions (each at most one per ms).
    #[arg(long, default_value_t = 2000)]
    latency_rate: usize,
    /// Seconds of event streaming per latency level [default: 10, quick 2].
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Which parts to run: handshakes, latency, memory, redis (the Redis backend against
    /// the memory backend; needs redis-server).
    #[arg(long, value_delimiter = ',', default_value = "handshakes,latency,memory,redis")]
    parts: Vec<String>,
    /// Run only the Redis measurements (same as --parts redis).
    #[arg(long)]
    redis: bool,
    /// The redis-server binary for the Redis measurements [default: redis-server on PATH].
    #[arg(long)]
    redis_server: Option<PathBuf>,
    /// Concurrent streaming sessions of the Redis latency measurement.
    #[arg(long, default_value_t = 100)]
    redis_sessions: usize,
    /// Events of the run whose Redis commands are counted [default: 2000, quick 500].
    #[arg(long)]
    redis_events: Option<usize>,
    /// Idle connections held by each of three Redis nodes at once; 0 skips [default:
    /// 5000, quick 500].
    #[arg(long)]
    redis_memory_per_node: Option<usize>,
    /// Which servers to measure: ceiling, ceiling-hs256, agentgate, before (with
    /// --before), node, python [default: all].
    #[arg(long, value_delimiter = ',')]
    servers: Option<Vec<String>>,
    /// Skip the Node and Python peers.
    #[arg(long)]
    no_peers: bool,
    /// Do not pin servers and load generator to separate cores.
    #[arg(long)]
    no_pin: bool,
    /// Where the peers' packages are installed [default: target/bench-peers].
    #[arg(long)]
    peers_dir: Option<PathBuf>,
    /// Write the results as JSON here [default: target/bench-results/results.json].
    #[arg(long)]
    results: Option<PathBuf>,
    /// Draw memory and latency against connection count into this PNG (needs
    /// matplotlib, installed into the peers' Python venv) [default:
    /// target/bench-results/performance.png].
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Internal: serve a ceiling, announcing its address in this file.
    #[arg(long, hide = true)]
    serve_ceiling: Option<PathBuf>,
    /// Internal: the ceiling checks the HS256 bearer.
    #[arg(long, hide = true)]
    ceiling_auth: bool,
    /// Internal: hold idle connections to this address.
    #[arg(long, hide = true)]
    hold: Option<std::net::SocketAddr>,
    #[arg(long, hide = true, default_value_t = 0)]
    hold_count: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    hold_source: usize,
    #[arg(long, hide = true)]
    hold_auth: bool,
    #[arg(long, hide = true, default_value = "hold")]
    hold_prefix: String,
    /// Internal (instruction counting, `scripts/count-instructions`): run exactly
    /// `--hold-count` handshakes (`--concurrency` at a time, 64 tokens) against this
    /// address, then print `done N`.
    #[arg(long, hide = true)]
    drive: Option<std::net::SocketAddr>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(addr_file) = &args.serve_ceiling {
        return servers::serve_ceiling(addr_file, args.ceiling_auth);
    }
    if let Some(addr) = args.hold {
        return hold(addr, &args);
    }
    if let Some(addr) = args.drive {
        return drive(addr, &args);
    }
    // Pin before the runtime starts any thread, so that all of them inherit it.
    let pinning = Pinning::set_up(!args.no_pin);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let started = Instant::now();
    let limit = Duration::from_secs(if args.quick { 300 } else { 1500 });
    let result = rt.block_on(async { tokio::time::timeout(limit, bench(&args, pinning)).await });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(r) => r?,
        Err(_) => bail!("the benchmark did not finish within {limit:?}"),
    }
    eprintln!("finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// An HS256 token of the bench issuer for `sub`, valid for an hour.
pub(crate) fn mint(sub: &str) -> Result<String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let claims =
        json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 3600, "scope": "agents:run"});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes())?,
    )?)
}

fn mint_many(prefix: &str, n: usize) -> Result<Vec<String>> {
    (0..n).map(|i| mint(&format!("{prefix}-{i}"))).collect()
}

/// Helper mode: `hold_count` handshakes (connect, welcome, close) with the tokens of
/// the handshake rounds, however long they take (at most 10 minutes).
fn drive(addr: std::net::SocketAddr, args: &Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let round = rt.block_on(async {
        let target = Target { addr, auth: args.hold_auth };
        let tokens = mint_many("hs", args.concurrency.max(1))?;
        load::handshake_round(&target, &tokens, args.concurrency, Duration::from_secs(600), args.hold_count).await
    })?;
    println!("done {} failed {}", round.ok, round.failed);
    Ok(())
}

/// Helper mode: open `hold_count` connections, say `ready`, hold them until stdin
/// closes (at most 10 minutes).
fn hold(addr: std::net::SocketAddr, args: &Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let held = rt.block_on(async {
        let target = Target { addr, auth: args.hold_auth };
        let tokens = mint_many(&args.hold_prefix, args.hold_count.max(1))?;
        load::open_many(&target, &tokens, args.hold_count, load::source(args.hold_source)).await
    })?;
    println!("ready {}", held.len());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(600));
    drop(held);
    Ok(())
}

// ---------------------------------------------------------------------------------
// Servers under test
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Kind {
    Ceiling {
        auth: bool,
    },
    Gateway(PathBuf),
    /// A gateway with `backend.kind = "redis"` on this Redis.
    GatewayRedis(PathBuf, redis_bench::RedisInfo),
    Peer(usize),
}

#[derive(Debug, Clone)]
struct Spec {
    /// The `--servers` key.
    key: &'static str,
    name: String,
    kind: Kind,
}

impl Spec {
    fn auth(&self) -> bool {
        !matches!(self.kind, Kind::Ceiling { auth: false })
    }

    /// A process whose CPU time counts with the server's (the Redis of a Redis gateway).
    fn companion_pid(&self) -> Option<u32> {
        match &self.kind {
            Kind::GatewayRedis(_, r) => Some(r.pid),
            _ => None,
        }
    }
}

struct Env<'a> {
    me: PathBuf,
    dir: PathBuf,
    pinning: Pinning,
    peers: &'a [servers::Peer],
    upstream: std::net::SocketAddr,
    starts: std::cell::Cell<usize>,
}

impl Env<'_> {
    /// Start a fresh instance of `spec`, pinned to the server core.
    fn start(&self, spec: &Spec) -> Result<Proc> {
        let k = self.starts.get();
        self.starts.set(k + 1);
        let addr_file = self.dir.join(format!("server-{k}.addr"));
        let log = self.dir.join(format!("server-{k}.log"));
        let cmd = match &spec.kind {
            Kind::Ceiling { auth } => {
                let mut c = self.pinning.server_cmd(&self.me);
                c.arg("--serve-ceiling").arg(&addr_file).env(JWT_SECRET_ENV, JWT_SECRET);
                if *auth {
                    c.arg("--ceiling-auth");
                }
                c
            }
            Kind::Gateway(bin) | Kind::GatewayRedis(bin, _) => {
                let config = self.dir.join(format!("gateway-{k}.toml"));
                let mut text = gateway_config(&addr_file, self.upstream)?;
                if let Kind::GatewayRedis(_, r) = &spec.kind {
                    text.push_str(&format!(
                        "\n[backend]\nkind = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\n",
                        r.port
                    ));
                }
                std::fs::write(&config, text)?;
                let mut c = self.pinning.server_cmd(bin);
                for (key, _) in std::env::vars_os() {
                    let key = key.to_string_lossy();
                    if key.starts_with("AGENTGATE_") || key == "RUST_LOG" {
                        c.env_remove(key.as_ref());
                    }
                }
                c.env("AGENTGATE_HOME", self.dir.join(format!("home-{k}")))
                    .env(JWT_SECRET_ENV, JWT_SECRET)
                    .env(AGENT_SECRET_ENV, AGENT_SECRET)
                    .arg("serve")
                    .arg("--config")
                    .arg(&config);
                c
            }
            Kind::Peer(i) => self.peers[*i].command(&self.pinning, &addr_file),
        };
        Proc::start(&spec.name, cmd, &addr_file, &log)
    }
}

fn gateway_config(addr_file: &Path, upstream: std::net::SocketAddr) -> Result<String> {
    Ok(format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naddr_file = {}\n\n\
         [[auth.jwt]]\nname = \"bench\"\nalgorithms = [\"HS256\"]\nsecret_env = \"{JWT_SECRET_ENV}\"\n\
         issuer = \"{ISSUER}\"\naudience = [\"{AUDIENCE}\"]\n\n\
         [limits]\nhandshakes_per_ip_per_s = 1000000\nconnections_per_ip = 1000000\n\
         connections_per_principal = 1000000\nmessages_per_s = 100000\nruns_per_principal = 100000\n\n\
         [[agents]]\nname = \"bench\"\nkind = \"http\"\nurl = \"http://{upstream}/run\"\n\
         secret_env = \"{AGENT_SECRET_ENV}\"\ntimeout_s = 30\n",
        serde_json::to_string(&addr_file.display().to_string())?,
    ))
}

// ---------------------------------------------------------------------------------
// Handshakes
// ---------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct HandshakeTotals {
    ok: usize,
    failed: usize,
    cpu_s: f64,
    /// The user-space part of `cpu_s`.
    user_s: f64,
    /// CPU time of the server's companion process (Redis), if any.
    companion_cpu_s: f64,
    wall_s: f64,
    round_rates: Vec<f64>,
}

impl HandshakeTotals {
    #[allow(clippy::cast_precision_loss)]
    fn per_cpu_s(&self) -> f64 {
        self.ok as f64 / self.cpu_s.max(f64::EPSILON)
    }
}

struct Noise {
    /// CPU-seconds used by other processes during the measured rounds.
    other_cpu_s: f64,
    wall_s: f64,
}

async fn handshakes(env: &Env<'_>, specs: &[Spec], args: &Args, ticks: f64) -> Result<(Vec<HandshakeTotals>, Noise)> {
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 5 }).max(1);
    let secs = args.round_secs.unwrap_or(if args.quick { 1.0 } else { 2.0 });
    let duration = Duration::from_secs_f64(secs.clamp(0.1, 60.0));
    let tokens = mint_many("hs", args.concurrency.max(1))?;
    let mut procs = Vec::new();
    for s in specs {
        procs.push(env.start(s)?);
    }
    let targets: Vec<Target> = procs.iter().zip(specs).map(|(p, s)| Target { addr: p.addr, auth: s.auth() }).collect();
    for (t, s) in targets.iter().zip(specs) {
        eprintln!("handshakes: warming up {} ...", s.name);
        load::handshake_round(t, &tokens, args.concurrency, Duration::from_millis(500), 5000)
            .await
            .with_context(|| format!("warm-up of {}", s.name))?;
    }
    let me = std::process::id();
    let mut totals = vec![HandshakeTotals::default(); specs.len()];
    let mut noise = Noise { other_cpu_s: 0.0, wall_s: 0.0 };
    for round in 0..rounds {
        // Rotate the order, so that no server always follows the same one.
        for j in 0..specs.len() {
            let i = (j + round) % specs.len();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let pid = procs[i].pid();
            let companion = specs[i].companion_pid();
            let comp0 = companion.map(|p| procs::cpu_seconds(p, ticks)).transpose()?.unwrap_or(0.0);
            let (split0, busy0, me0) =
                (procs::cpu_split(pid, ticks)?, procs::machine_busy_seconds(ticks)?, procs::cpu_seconds(me, ticks)?);
            let r = load::handshake_round(&targets[i], &tokens, args.concurrency, duration, args.max_per_round)
                .await
                .with_context(|| format!("handshakes against {}", specs[i].name))?;
            // Let the server finish tearing the last connections down.
            tokio::time::sleep(Duration::from_millis(300)).await;
            procs[i].check_alive()?;
            let (split1, busy1, me1) =
                (procs::cpu_split(pid, ticks)?, procs::machine_busy_seconds(ticks)?, procs::cpu_seconds(me, ticks)?);
            let comp = companion.map(|p| procs::cpu_seconds(p, ticks)).transpose()?.unwrap_or(0.0) - comp0;
            let cpu = (split1.0 + split1.1) - (split0.0 + split0.1);
            noise.other_cpu_s += ((busy1 - busy0) - cpu - comp - (me1 - me0)).max(0.0);
            noise.wall_s += r.wall_s + 0.3;
            let t = &mut totals[i];
            t.ok += r.ok;
            t.failed += r.failed;
            t.cpu_s += cpu;
            t.user_s += split1.0 - split0.0;
            t.companion_cpu_s += comp;
            t.wall_s += r.wall_s;
            #[allow(clippy::cast_precision_loss)]
            t.round_rates.push(r.ok as f64 / cpu.max(f64::EPSILON));
            #[allow(clippy::cast_precision_loss)]
            let rate = r.ok as f64 / cpu.max(f64::EPSILON);
            #[allow(clippy::cast_precision_loss)]
            let wall = r.ok as f64 / r.wall_s.max(f64::EPSILON);
            let busy = |c: f64| 100.0 * c / r.wall_s.max(f64::EPSILON);
            eprintln!(
                "handshakes round {}/{rounds}: {:<36} {:>6} in {cpu:.2} server CPU-s = {rate:>7.0}/CPU-s \
                 ({wall:.0}/s wall; server busy {:.0}%, load generator {:.0}%)",
                round + 1,
                specs[i].name,
                r.ok,
                busy(cpu),
                busy(me1 - me0),
            );
        }
    }
    Ok((totals, noise))
}

// ---------------------------------------------------------------------------------
// Idle memory
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Memory {
    base_kib: u64,
    /// (connections, VmRSS KiB)
    points: Vec<(usize, u64)>,
}

/// `settle`: the pause before each `VmRSS` reading, so that the last connections' setup
/// is finished.
/// `source_base`: the helpers' first source address number ([`load::source`]).
async fn memory(env: &Env<'_>, spec: &Spec, levels: &[usize], settle: Duration, source_base: usize) -> Result<Memory> {
    let mut proc = env.start(spec)?;
    let target = Target { addr: proc.addr, auth: spec.auth() };
    let tokens = mint_many("mem-warm", 16)?;
    load::handshake_round(&target, &tokens, 16, Duration::from_millis(500), 500).await.context("warm-up")?;
    tokio::time::sleep(settle.min(Duration::from_secs(1))).await;
    let base_kib = procs::vm_rss_kib(proc.pid())?;
    let mut helpers = Vec::new();
    let mut points = Vec::new();
    let mut held = 0usize;
    for &level in levels {
        let mut starting = Vec::new();
        while held < level {
            let n = (level - held).min(PER_HELPER);
            let k = helpers.len() + starting.len();
            let mut c = tokio::process::Command::new(&env.me);
            c.arg("--hold")
                .arg(target.addr.to_string())
                .arg("--hold-count")
                .arg(n.to_string())
                .arg("--hold-source")
                .arg((source_base + k).to_string())
                .arg("--hold-prefix")
                .arg(format!("mem-{k}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            if target.auth {
                c.arg("--hold-auth");
            }
            starting.push(c.spawn().context("spawn a holding helper")?);
            held += n;
        }
        for mut child in starting {
            let out = child.stdout.take().context("helper stdout")?;
            let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out));
            let line = tokio::time::timeout(Duration::from_secs(180), lines.next_line())
                .await
                .with_context(|| format!("{}: a helper did not open its connections within 180 s", spec.name))??;
            match line {
                Some(l) if l.starts_with("ready") => {}
                other => {
                    bail!("{}: a helper failed to open its connections ({other:?}); see its error above", spec.name)
                }
            }
            helpers.push(child);
        }
        tokio::time::sleep(settle).await;
        proc.check_alive()?;
        let rss = procs::vm_rss_kib(proc.pid())?;
        eprintln!("memory: {:<34} {level:>6} idle connections: VmRSS {rss} KiB", spec.name);
        points.push((level, rss));
    }
    drop(helpers);
    Ok(Memory { base_kib, points })
}

// ---------------------------------------------------------------------------------
// The run and the report
// ---------------------------------------------------------------------------------

async fn bench(args: &Args, pinning: Pinning) -> Result<()> {
    let me = std::env::current_exe()?;
    let target_dir =
        me.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("target"));
    let bin = args.agentgate.clone().unwrap_or_else(|| me.with_file_name("agentgate"));
    if !bin.is_file() {
        bail!("{} not found; build it with `cargo build --release -p agentgate` or pass --agentgate", bin.display());
    }
    if let Some(b) = &args.before
        && !b.is_file()
    {
        bail!("--before {}: no such file", b.display());
    }
    let ticks = procs::clock_ticks();
    let load_before = procs::loadavg();
    eprintln!("{}; load average before: {load_before}", pinning.describe());

    let parts: Vec<String> = if args.redis { vec!["redis".into()] } else { args.parts.clone() };
    if let Some(bad) = parts.iter().find(|p| !["handshakes", "latency", "memory", "redis"].contains(&p.as_str())) {
        bail!("--parts {bad}: unknown; use handshakes, latency, memory, redis");
    }
    let part = |p: &str| parts.iter().any(|x| x == p);
    if part("redis") {
        // Fail now, not after minutes of the other parts.
        redis_bench::find_redis_server(args.redis_server.as_deref())?;
    }
    let want_peers = args.servers.as_ref().is_none_or(|o| o.iter().any(|k| k == "node" || k == "python"))
        && (part("handshakes") || part("latency") || part("memory"));
    let peers = if args.no_peers {
        eprintln!("note: --no-peers: the Node and Python peers are skipped");
        Vec::new()
    } else if !want_peers {
        Vec::new()
    } else {
        servers::prepare_peers(&args.peers_dir.clone().unwrap_or_else(|| target_dir.join("bench-peers")))?
    };
    let dir = tempfile::tempdir()?;
    let upstream = load::start_upstream(AGENT_SECRET).await?;
    let env = Env {
        me: me.clone(),
        dir: dir.path().to_path_buf(),
        pinning,
        peers: &peers,
        upstream,
        starts: std::cell::Cell::new(0),
    };

    let mut specs = vec![
        Spec {
            key: "ceiling",
            name: "ceiling: tokio-tungstenite, no auth".into(),
            kind: Kind::Ceiling { auth: false },
        },
        Spec {
            key: "ceiling-hs256",
            name: "ceiling: tokio-tungstenite + HS256".into(),
            kind: Kind::Ceiling { auth: true },
        },
        Spec { key: "agentgate", name: "agentgate".into(), kind: Kind::Gateway(bin.clone()) },
    ];
    if let Some(b) = &args.before {
        specs.push(Spec { key: "before", name: "agentgate (before)".into(), kind: Kind::Gateway(b.clone()) });
    }
    for (i, p) in peers.iter().enumerate() {
        specs.push(Spec { key: p.key, name: p.name.into(), kind: Kind::Peer(i) });
    }
    if let Some(only) = &args.servers {
        if let Some(bad) = only
            .iter()
            .find(|k| !["ceiling", "ceiling-hs256", "agentgate", "before", "node", "python"].contains(&k.as_str()))
        {
            bail!("--servers {bad}: unknown; use ceiling, ceiling-hs256, agentgate, before, node, python");
        }
        specs.retain(|s| only.iter().any(|k| k == s.key));
        if specs.is_empty() {
            bail!(
                "--servers selects nothing that this run has (before needs --before; node and python need their runtimes)"
            );
        }
    }

    let hs = if part("handshakes") { Some(handshakes(&env, &specs, args, ticks).await?) } else { None };

    let mut lat: Vec<(String, Vec<Latency>)> = Vec::new();
    if part("latency") {
        let levels =
            args.latency_sessions.clone().unwrap_or(if args.quick { vec![1, 100, 1000] } else { vec![1, 100, 10_000] });
        let window =
            Duration::from_secs_f64(args.latency_secs.unwrap_or(if args.quick { 2.0 } else { 10.0 }).clamp(0.5, 120.0));
        let gateways: Vec<&Spec> = specs.iter().filter(|s| matches!(s.kind, Kind::Gateway(_))).collect();
        lat = gateways.iter().map(|s| (s.name.clone(), Vec::new())).collect();
        // Levels outside, gateways inside: noise from the machine falls on each alike.
        for &n in &levels {
            if n > 19_000 {
                bail!("--latency-sessions {n}: the gateway holds at most about 19 000 connections (open files)");
            }
            let tokens = mint_many("lat", n)?;
            for (k, s) in gateways.iter().enumerate() {
                // A fresh gateway per level.
                let proc = env.start(s)?;
                let target = Target { addr: proc.addr, auth: true };
                eprintln!("latency: {} with {n} sessions ...", s.name);
                let l = load::latency_level(
                    proc.pid(),
                    &target,
                    &tokens,
                    n,
                    args.latency_streaming_max,
                    args.latency_rate,
                    window,
                    None,
                )
                .await
                .with_context(|| format!("latency of {} at {n} sessions", s.name))?;
                eprintln!(
                    "latency: {:<20} {n:>6} sessions: p50 {:.0} µs, p99 {:.0} µs, p999 {:.0} µs ({} events)",
                    s.name,
                    load::percentile(&l.micros, 50.0),
                    load::percentile(&l.micros, 99.0),
                    load::percentile(&l.micros, 99.9),
                    l.micros.len()
                );
                lat[k].1.push(l);
                drop(proc);
            }
        }
    }

    let mut mem: Vec<(String, Memory)> = Vec::new();
    if part("memory") {
        let levels = args.memory_levels.clone().unwrap_or(if args.quick {
            vec![250, 500, 1000]
        } else {
            vec![1000, 5000, 15_000]
        });
        if levels.windows(2).any(|w| w[1] <= w[0]) || levels.iter().any(|&l| l > 19_000) {
            bail!("--memory-levels must increase and stay at or below 19000 (the servers' open-file cap is 20 000)");
        }
        let settle = Duration::from_millis(if args.quick { 500 } else { 2000 });
        for s in &specs {
            mem.push((
                s.name.clone(),
                memory(&env, s, &levels, settle, 20).await.with_context(|| format!("memory of {}", s.name))?,
            ));
        }
    }
    let redis = if part("redis") {
        Some(redis_bench::run(&env, args, &bin, ticks).await.context("the Redis measurements")?)
    } else {
        None
    };
    let load_after = procs::loadavg();

    // ------------------------------------------------------------------ report
    println!();
    println!("agentgate-bench: {}; load average before {load_before}, after {load_after}", pinning.describe());
    let mut json_hs = Vec::new();
    if let Some((totals, noise)) = &hs {
        let ceiling = |kind: bool| {
            specs
                .iter()
                .zip(totals.iter())
                .find(|(s, _)| matches!(s.kind, Kind::Ceiling { auth } if auth == kind))
                .map(|(_, t)| t.per_cpu_s())
        };
        let (c0, c1) = (ceiling(false), ceiling(true));
        // Each round's rate over the no-auth ceiling's in the same round: the servers of
        // a round run back to back, so this shows how much the ratio moves with the
        // machine's noise.
        let ceiling_rounds = specs
            .iter()
            .zip(totals.iter())
            .find(|(s, _)| matches!(s.kind, Kind::Ceiling { auth: false }))
            .map(|(_, t)| t.round_rates.clone());
        let round_ratios = |t: &HandshakeTotals| -> Option<Vec<f64>> {
            let c = ceiling_rounds.as_ref()?;
            let mut r: Vec<f64> = t.round_rates.iter().zip(c).map(|(a, c)| a / c.max(f64::EPSILON)).collect();
            r.sort_by(f64::total_cmp);
            // No round in common (a server that failed every round): no figure, no panic.
            (!r.is_empty()).then_some(r)
        };
        let ratio = |r: f64, c: Option<f64>| c.map_or_else(|| "-".to_owned(), |c| format!("{:.2}", r / c));
        println!();
        println!(
            "Handshakes ({} concurrent clients, HS256 bearer, connect + welcome + close; {} alternating rounds):",
            args.concurrency,
            totals[0].round_rates.len()
        );
        println!();
        println!(
            "| server | handshakes per server CPU-s | rounds (min-max) | vs ceiling, no auth | per round: median (min-max) | vs ceiling + HS256 | server µs per handshake: user + system | handshakes/s wall | failed |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (s, t) in specs.iter().zip(totals) {
            let rate = t.per_cpu_s();
            let min = t.round_rates.iter().copied().fold(f64::INFINITY, f64::min);
            let max = t.round_rates.iter().copied().fold(0.0, f64::max);
            #[allow(clippy::cast_precision_loss)]
            let wall = t.ok as f64 / t.wall_s.max(f64::EPSILON);
            #[allow(clippy::cast_precision_loss)]
            let per = |secs: f64| secs * 1e6 / (t.ok.max(1) as f64);
            let per_round = round_ratios(t);
            let per_round_text = per_round.as_ref().map_or_else(
                || "-".to_owned(),
                |r| format!("{:.2} ({:.2}-{:.2})", (r[(r.len() - 1) / 2] + r[r.len() / 2]) / 2.0, r[0], r[r.len() - 1]),
            );
            println!(
                "| {} | {rate:.0} ({} in {:.2} CPU-s) | {min:.0}-{max:.0} | {} | {per_round_text} | {} | {:.1} + {:.1} | {wall:.0} | {} |",
                s.name,
                t.ok,
                t.cpu_s,
                ratio(rate, c0),
                ratio(rate, c1),
                per(t.user_s),
                per(t.cpu_s - t.user_s),
                t.failed
            );
            json_hs.push(json!({"server": s.name, "per_cpu_s": rate, "ok": t.ok, "cpu_s": t.cpu_s,
                "user_s": t.user_s, "rounds": t.round_rates, "vs_ceiling": c0.map(|c| rate / c), "vs_ceiling_hs256": c1.map(|c| rate / c),
                "vs_ceiling_per_round_sorted": per_round,
                "failed": t.failed}));
        }
        println!();
        println!(
            "Other processes used {:.2} CPU-s during {:.1} s of handshake rounds ({:.2} cores on average).",
            noise.other_cpu_s,
            noise.wall_s,
            noise.other_cpu_s / noise.wall_s.max(f64::EPSILON)
        );
    }
    let mut json_lat = Vec::new();
    if !lat.is_empty() {
        println!();
        println!(
            "Event delivery (upstream NDJSON line written -> WebSocket frame read, {} events/s over the streaming sessions):",
            args.latency_rate
        );
        println!();
        println!(
            "| server | sessions | streaming (each every) | events | p50 µs | p99 µs | p999 µs | max µs | gateway waited for a CPU |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (name, rows) in &lat {
            for l in rows {
                let m = &l.micros;
                println!(
                    "| {name} | {} | {} ({:.0} ms) | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} ms/s |",
                    l.sessions,
                    l.streaming,
                    l.interval_ms,
                    m.len(),
                    load::percentile(m, 50.0),
                    load::percentile(m, 99.0),
                    load::percentile(m, 99.9),
                    m.last().copied().unwrap_or(f64::NAN),
                    l.runqueue_ms_per_s
                );
                json_lat.push(json!({"server": name, "sessions": l.sessions, "streaming": l.streaming,
                    "events": m.len(), "p50": load::percentile(m, 50.0), "p99": load::percentile(m, 99.0),
                    "p999": load::percentile(m, 99.9), "max": m.last(), "runqueue_ms_per_s": l.runqueue_ms_per_s}));
            }
        }
    }
    let mut json_mem = Vec::new();
    if !mem.is_empty() {
        let levels: Vec<usize> = mem[0].1.points.iter().map(|p| p.0).collect();
        println!();
        println!("Idle memory (VmRSS of a fresh server after a warm-up; KiB per connection = growth over the level):");
        println!();
        let head: Vec<String> = levels.iter().map(|l| format!("KiB/conn at {l} (from 0)")).collect();
        let marg: Vec<String> = levels.windows(2).map(|w| format!("marginal KiB/conn {}->{}", w[0], w[1])).collect();
        println!("| server | VmRSS at 0 | {} | {} |", head.join(" | "), marg.join(" | "));
        println!("|---|---:|{}", "---:|".repeat(head.len() + marg.len()));
        for (name, m) in &mem {
            #[allow(clippy::cast_precision_loss)]
            let avg: Vec<String> = m
                .points
                .iter()
                .map(|&(n, rss)| format!("{:.2}", (rss as f64 - m.base_kib as f64) / n as f64))
                .collect();
            #[allow(clippy::cast_precision_loss)]
            let mg: Vec<String> = m
                .points
                .windows(2)
                .map(|w| format!("{:.2}", (w[1].1 as f64 - w[0].1 as f64) / (w[1].0 - w[0].0) as f64))
                .collect();
            println!("| {name} | {:.1} MiB | {} | {} |", m.base_kib as f64 / 1024.0, avg.join(" | "), mg.join(" | "));
            json_mem.push(json!({"server": name, "base_kib": m.base_kib, "points": m.points}));
        }
    }

    if let Some((lines, _)) = &redis {
        for l in lines {
            println!("{l}");
        }
    }
    let results = json!({"pinning": pinning.describe(), "load_before": load_before, "load_after": load_after,
        "quick": args.quick, "handshakes": json_hs, "latency": json_lat, "memory": json_mem,
        "redis": redis.as_ref().map(|r| r.1.clone())});
    let results_path = args.results.clone().unwrap_or_else(|| target_dir.join("bench-results/results.json"));
    if let Some(p) = results_path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(&results_path, serde_json::to_string_pretty(&results)?)?;
    eprintln!("results: {}", results_path.display());
    let plot_path = args.plot.clone().unwrap_or_else(|| target_dir.join("bench-results/performance.png"));
    plot(&results, &results_path, &plot_path, &target_dir, args)?;
    Ok(())
}

/// Draw the plot with matplotlib from the peers' venv (or the system's python3).
fn plot(results: &Value, results_path: &Path, out: &Path, target_dir: &Path, args: &Args) -> Result<()> {
    if results["memory"].as_array().is_none_or(Vec::is_empty) && results["latency"].as_array().is_none_or(Vec::is_empty)
    {
        return Ok(());
    }
    let venv = args.peers_dir.clone().unwrap_or_else(|| target_dir.join("bench-peers")).join("venv/bin/python");
    let python = if venv.is_file() { venv } else { PathBuf::from("python3") };
    let has = Command::new(&python)
        .args(["-c", "import matplotlib"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        eprintln!(
            "note: matplotlib not found for {}: no plot drawn (run without --no-peers to install it)",
            python.display()
        );
        return Ok(());
    }
    if let Some(p) = out.parent() {
        std::fs::create_dir_all(p)?;
    }
    let status = Command::new(&python)
        .args(["-c", PLOT, &results_path.display().to_string(), &out.display().to_string()])
        .status()
        .context("run the plot script")?;
    if !status.success() {
        bail!("the plot script failed ({status})");
    }
    eprintln!("plot: {}", out.display());
    Ok(())
}

const PLOT: &str = r#"
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
r = json.load(open(sys.argv[1]))
fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
for m in r["memory"]:
    xs = [0] + [p[0] for p in m["points"]]
    ys = [0] + [(p[1] - m["base_kib"]) / 1024 for p in m["points"]]
    a.plot(xs, ys, marker="o", label=m["server"])
a.set_xlabel("idle connections")
a.set_ylabel("server VmRSS growth (MiB)")
a.set_title("Idle memory")
a.grid(True, alpha=0.3)
a.legend(fontsize=8)
servers = sorted({l["server"] for l in r["latency"]})
styles = {"p50": ("-", "o"), "p99": ("--", "s"), "p999": (":", "^")}
for i, s in enumerate(servers):
    rows = [l for l in r["latency"] if l["server"] == s]
    for q, (st, mk) in styles.items():
        b.plot([l["sessions"] for l in rows], [l[q] / 1000 for l in rows], st, marker=mk, color=f"C{i + 2}",
               label=f"{s} {q}")
b.set_xscale("log")
b.set_yscale("log")
b.set_xlabel("concurrent sessions")
b.set_ylabel("event delivery latency (ms)")
b.set_title("Event delivery latency")
b.grid(True, which="both", alpha=0.3)
b.legend(fontsize=8)
fig.suptitle("agentgate-bench (" + r["pinning"] + ")", fontsize=9)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
"#;
