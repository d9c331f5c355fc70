//! The Redis section (`--redis`, or `redis` in `--parts`): agentgate with
//! `backend.kind = "redis"` against the memory backend, on a `redis-server` this bench
//! starts on a spare loopback port (`--save "" --appendonly no`), pinned to the servers'
//! core and killed on drop.
//!
//! 1. Event delivery latency: memory backend same-node, Redis same-node (the run and the
//!    session on node A), Redis cross-node (the run on A, the session resumed on B, so A
//!    appends and B delivers), alternating rounds.
//! 2. Redis commands per event: `MONITOR` (the commands the nodes send, apart from those
//!    that scripts call) and `INFO commandstats` (every command, in-script ones
//!    included) over one run of N events, minus an idle window of the same length.
//! 3. Handshakes per gateway CPU-second, Redis against memory (the handshake method of
//!    the main run), with the Redis server's CPU time reported beside.
//! 4. Idle memory of three Redis nodes holding connections at once.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::load::{self, Target};
use crate::procs::Pinning;
use crate::{Args, Env, Kind, Spec, mint_many};

/// Where the bench's Redis listens, and its pid (for its CPU time).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RedisInfo {
    pub(crate) port: u16,
    pub(crate) pid: u32,
}

/// A `redis-server` child, killed and reaped on drop.
pub(crate) struct RedisServer {
    child: Child,
    pub(crate) info: RedisInfo,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-server` from `--redis-server` or `PATH`, or a message saying how to get it.
pub(crate) fn find_redis_server(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--redis-server {}: no such file", p.display());
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("redis-server")).find(|p| p.is_file()))
        .ok_or_else(|| {
            anyhow!(
                "redis-server is not on PATH: the Redis measurements start their own. Install it \
                 (apt-get install redis-server), pass --redis-server PATH, or leave redis out of --parts"
            )
        })
}

impl RedisServer {
    /// Start `program` on a spare loopback port, pinned to the servers' core, and wait
    /// (bounded) until it answers `PING`.
    pub(crate) fn start(program: &Path, pinning: &Pinning, dir: &Path) -> Result<Self> {
        let mut last = String::new();
        for attempt in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let log = dir.join(format!("redis-{attempt}.log"));
            let out = std::fs::File::create(&log)?;
            let mut c = pinning.server_cmd(program);
            c.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            let child = c.spawn().with_context(|| format!("spawn {}", program.display()))?;
            let mut server = Self { info: RedisInfo { port, pid: child.id() }, child };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if command(port, &["PING"]).is_ok_and(|r| r == "PONG") {
                    return Ok(server);
                }
                if server.child.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last = std::fs::read_to_string(&log).unwrap_or_default();
            drop(server);
        }
        bail!("redis-server did not start on a loopback port (3 tries); its last output:\n{last}")
    }
}

/// One Redis command over a fresh connection (RESP); the reply as text.
pub(crate) fn command(port: u16, args: &[&str]) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end();
    match line.split_at(1.min(line.len())) {
        ("+" | ":", rest) => Ok(rest.to_owned()),
        ("-", rest) => bail!("Redis answered an error: {rest}"),
        ("$", len) => {
            let len: usize = len.parse()?;
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(len);
            Ok(String::from_utf8(buf)?)
        }
        _ => bail!("unexpected Redis reply: {line}"),
    }
}

/// Calls per command from `INFO commandstats`.
fn commandstats(port: u16) -> Result<HashMap<String, u64>> {
    let text = command(port, &["INFO", "commandstats"])?;
    let mut out = HashMap::new();
    for l in text.lines() {
        if let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':'))
            && let Some(calls) = rest.split(',').find_map(|f| f.strip_prefix("calls="))
        {
            out.insert(name.to_owned(), calls.parse()?);
        }
    }
    Ok(out)
}

/// `used_memory` from `INFO memory`, in bytes.
fn used_memory(port: u16) -> Result<u64> {
    let text = command(port, &["INFO", "memory"])?;
    text.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .ok_or_else(|| anyhow!("no used_memory in INFO memory"))?
        .trim()
        .parse()
        .context("used_memory")
}

/// Commands seen by `MONITOR`: (sent by clients, called inside scripts), per name.
#[derive(Debug, Default, Clone)]
struct Seen {
    client: HashMap<String, u64>,
    script: HashMap<String, u64>,
}

impl Seen {
    fn total(m: &HashMap<String, u64>) -> u64 {
        m.values().sum()
    }
}

/// A `MONITOR` connection read by a thread until stopped (at most 10 minutes).
struct Monitor {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Seen>>,
}

impl Monitor {
    fn start(port: u16) -> Result<Self> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        s.write_all(b"MONITOR\r\n")?;
        let mut r = BufReader::new(s);
        let mut ok = String::new();
        r.read_line(&mut ok)?;
        if ok.trim_end() != "+OK" {
            bail!("MONITOR answered {ok:?}");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(600);
            let mut seen = Seen::default();
            let mut line = String::new();
            while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                match r.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) if line.ends_with('\n') => {
                        // +1733500000.123456 [0 127.0.0.1:5555] "evalsha" "..." / [0 lua] "xadd" ...
                        if let Some((head, rest)) = line.split_once("] \"")
                            && let Some(name) = rest.split('"').next()
                        {
                            let map = if head.ends_with("lua") { &mut seen.script } else { &mut seen.client };
                            *map.entry(name.to_ascii_lowercase()).or_default() += 1;
                        }
                        line.clear();
                    }
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(seen)
        });
        Ok(Self { stop, thread })
    }

    fn finish(self) -> Result<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow!("the MONITOR reader panicked"))?
    }
}

fn diff(after: &HashMap<String, u64>, before: &HashMap<String, u64>) -> HashMap<String, u64> {
    after.iter().map(|(k, v)| (k.clone(), v.saturating_sub(before.get(k).copied().unwrap_or(0)))).collect()
}

/// Per event, `batch - idle` over `events`, per command name, largest first.
#[allow(clippy::cast_precision_loss)]
fn per_event(batch: &HashMap<String, u64>, idle: &HashMap<String, u64>, events: u64) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = batch
        .iter()
        .map(|(k, &b)| (k.clone(), (b as f64 - idle.get(k).copied().unwrap_or(0) as f64) / events.max(1) as f64))
        .filter(|(k, x)| *x > 0.005 && k != "info" && k != "monitor")
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

fn fmt_cmds(v: &[(String, f64)]) -> String {
    v.iter().map(|(k, x)| format!("{k} {x:.2}")).collect::<Vec<_>>().join(", ")
}

/// The Redis section: run everything, return the printed report and its JSON.
#[allow(clippy::too_many_lines)]
pub(crate) async fn run(env: &Env<'_>, args: &Args, bin: &Path, ticks: f64) -> Result<(Vec<String>, Value)> {
    let program = find_redis_server(args.redis_server.as_deref())?;
    let redis = RedisServer::start(&program, &env.pinning, &env.dir)?;
    let port = redis.info.port;
    let version = command(port, &["INFO", "server"])?
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    eprintln!("redis: redis-server {version} on 127.0.0.1:{port} (pid {})", redis.info.pid);
    let mem_spec = Spec { key: "agentgate", name: "memory backend".into(), kind: Kind::Gateway(bin.to_path_buf()) };
    let red_spec = Spec {
        key: "agentgate-redis",
        name: "Redis backend".into(),
        kind: Kind::GatewayRedis(bin.to_path_buf(), redis.info),
    };
    let mut out = Vec::new();
    let mut js = json!({"redis_version": version});

    // ------------------------------------------------------------- 1. latency
    {
        let m = env.start(&mem_spec)?;
        let a = env.start(&red_spec)?;
        let b = env.start(&red_spec)?;
        let (tm, ta, tb) = (
            Target { addr: m.addr, auth: true },
            Target { addr: a.addr, auth: true },
            Target { addr: b.addr, auth: true },
        );
        let n = args.redis_sessions.clamp(1, 5000);
        let rounds = if args.quick { 1 } else { 2 };
        let window = Duration::from_secs_f64(
            (args.latency_secs.unwrap_or(if args.quick { 2.0 } else { 10.0 }) / f64::from(rounds)).clamp(0.5, 60.0),
        );
        let rp = redis.info.pid;
        // (name, target, resume target, the servers involved: their run-queue waits count)
        let cases: [(&str, &Target, Option<&Target>, Vec<u32>); 3] = [
            ("memory backend, same node", &tm, None, vec![m.pid()]),
            ("Redis backend, same node (A appends, A delivers)", &ta, None, vec![a.pid(), rp]),
            ("Redis backend, cross-node (A appends, B delivers)", &ta, Some(&tb), vec![a.pid(), b.pid(), rp]),
        ];
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        let mut runq = vec![0.0; cases.len()];
        let mut streaming = 0;
        let mut interval_ms = 0.0;
        for round in 0..rounds {
            for (j, (name, target, resume, pids)) in cases.iter().enumerate() {
                let tokens = mint_many(&format!("rlat-{round}-{j}"), n)?;
                eprintln!("redis latency: {name}, {n} sessions, round {}/{rounds} ...", round + 1);
                let wait = || pids.iter().map(|&p| crate::procs::runqueue_wait_ns(p)).sum::<u64>();
                let (w0, t0) = (wait(), Instant::now());
                let l = load::latency_level(pids[0], target, &tokens, n, n, args.latency_rate, window, *resume)
                    .await
                    .with_context(|| format!("latency, {name}"))?;
                #[allow(clippy::cast_precision_loss)]
                let waited = wait().saturating_sub(w0) as f64 / 1e6 / t0.elapsed().as_secs_f64().max(f64::EPSILON);
                eprintln!(
                    "redis latency: {name}: p50 {:.0} µs, p99 {:.0} µs, p999 {:.0} µs ({} events)",
                    load::percentile(&l.micros, 50.0),
                    load::percentile(&l.micros, 99.0),
                    load::percentile(&l.micros, 99.9),
                    l.micros.len()
                );
                results[j].extend(l.micros);
                runq[j] += waited / f64::from(rounds);
                streaming = l.streaming;
                interval_ms = l.interval_ms;
            }
        }
        out.push(String::new());
        out.push(format!(
            "Redis backend: event delivery (upstream NDJSON line written -> WebSocket frame read; {n} sessions, \
             each streaming one run, an event every {interval_ms:.0} ms each, {} events/s in all; {rounds} \
             alternating rounds; cross-node: each session resumed on node B once its run on A was accepted):",
            args.latency_rate
        ));
        out.push(String::new());
        out.push(
            "| path | events | p50 µs | p99 µs | p999 µs | max µs | its servers (gateways, Redis) waited for a CPU |"
                .into(),
        );
        out.push("|---|---:|---:|---:|---:|---:|---:|".into());
        let mut jl = Vec::new();
        for (j, (name, ..)) in cases.iter().enumerate() {
            let v = &mut results[j];
            v.sort_by(f64::total_cmp);
            out.push(format!(
                "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} ms/s |",
                v.len(),
                load::percentile(v, 50.0),
                load::percentile(v, 99.0),
                load::percentile(v, 99.9),
                v.last().copied().unwrap_or(f64::NAN),
                runq[j]
            ));
            jl.push(json!({"path": name, "sessions": n, "streaming": streaming, "events": v.len(),
                "p50": load::percentile(v, 50.0), "p99": load::percentile(v, 99.0),
                "p999": load::percentile(v, 99.9), "max": v.last(), "runqueue_ms_per_s": runq[j]}));
        }
        js["latency"] = Value::Array(jl);

        // --------------------------------------------------- 2. commands per event
        let events = args.redis_events.unwrap_or(if args.quick { 500 } else { 2000 }).clamp(10, 60_000);
        let mut rows = Vec::new();
        let mut jr = Vec::new();
        for (name, resume) in [("same node", None), ("cross-node", Some(&tb))] {
            let token = mint_many(&format!("rrt-{}", resume.is_some()), 1)?;
            let stats0 = commandstats(port)?;
            let mon = Monitor::start(port)?;
            let t0 = Instant::now();
            let l = load::latency_level(
                a.pid(),
                &ta,
                &token,
                1,
                1,
                1000,
                Duration::from_millis(u64::try_from(events).unwrap_or(u64::MAX)),
                resume,
            )
            .await
            .with_context(|| format!("commands per event, {name}"))?;
            // Let the last appends and the detach finish.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let took = t0.elapsed();
            let batch = mon.finish()?;
            let stats1 = commandstats(port)?;
            // The same length of idle time: leases, pings, revocation reads, touches.
            let stats2 = commandstats(port)?;
            let mon = Monitor::start(port)?;
            tokio::time::sleep(took).await;
            let idle = mon.finish()?;
            let stats3 = commandstats(port)?;
            let n_ev = l.events;
            let client = per_event(&batch.client, &idle.client, n_ev);
            let script = per_event(&batch.script, &idle.script, n_ev);
            let all = per_event(&diff(&stats1, &stats0), &diff(&stats3, &stats2), n_ev);
            #[allow(clippy::cast_precision_loss)]
            let ratio = |a: u64, b: u64| (a as f64 - b as f64) / n_ev.max(1) as f64;
            let client_total = ratio(Seen::total(&batch.client), Seen::total(&idle.client));
            let all_total: f64 = all.iter().map(|x| x.1).sum();
            eprintln!(
                "redis commands, {name}: {n_ev} events in {:.1} s: {client_total:.2} sent per event ({})",
                took.as_secs_f64(),
                fmt_cmds(&client)
            );
            rows.push(format!(
                "| {name} | {n_ev} | {client_total:.2} | {} | {} | {all_total:.2} |",
                fmt_cmds(&client),
                fmt_cmds(&script)
            ));
            jr.push(json!({"path": name, "events": n_ev, "sent_per_event": client_total,
                "sent": client, "in_scripts": script, "all_per_event": all_total, "all": all}));
        }
        out.push(String::new());
        out.push(format!(
            "Redis commands per event (one session, one run of {events} events 1 ms apart on node A; MONITOR and \
             INFO commandstats over the run minus an idle window of the same length; setup, attach, run start and \
             end are spread over the events):"
        ));
        out.push(String::new());
        out.push("| path | events | commands sent per event | sent, by command | called inside scripts, by command | all commands per event (INFO commandstats) |".into());
        out.push("|---|---:|---:|---|---|---:|".into());
        out.extend(rows);
        js["commands"] = Value::Array(jr);
        drop((m, a, b));
    }

    // ------------------------------------------------------------- 3. handshakes
    {
        let specs = [mem_spec.clone(), red_spec.clone()];
        let (totals, noise) = crate::handshakes(env, &specs, args, ticks).await?;
        let base = totals[0].per_cpu_s();
        out.push(String::new());
        out.push(format!(
            "Redis backend: handshakes ({} concurrent clients, HS256 bearer, connect + welcome + close; {} \
             alternating rounds; on Redis a handshake creates a session and attaches it, the close detaches it):",
            args.concurrency,
            totals[0].round_rates.len()
        ));
        out.push(String::new());
        out.push("| backend | handshakes per gateway CPU-s | rounds (min-max) | gateway CPU per handshake vs memory | Redis CPU per handshake | handshakes per (gateway + Redis) CPU-s | failed |".into());
        out.push("|---|---:|---:|---:|---:|---:|---:|".into());
        let mut jh = Vec::new();
        for (s, t) in specs.iter().zip(&totals) {
            let rate = t.per_cpu_s();
            let min = t.round_rates.iter().copied().fold(f64::INFINITY, f64::min);
            let max = t.round_rates.iter().copied().fold(0.0, f64::max);
            #[allow(clippy::cast_precision_loss)]
            let ok = t.ok.max(1) as f64;
            let redis_us = if s.companion_pid().is_some() { t.companion_cpu_s / ok * 1e6 } else { 0.0 };
            let both = ok / (t.cpu_s + t.companion_cpu_s).max(f64::EPSILON);
            out.push(format!(
                "| {} | {rate:.0} ({} in {:.2} CPU-s) | {min:.0}-{max:.0} | {:.2}x | {} | {both:.0} | {} |",
                s.name,
                t.ok,
                t.cpu_s,
                base / rate.max(f64::EPSILON),
                if s.companion_pid().is_some() { format!("{redis_us:.0} µs") } else { "-".into() },
                t.failed
            ));
            jh.push(json!({"backend": s.name, "per_cpu_s": rate, "ok": t.ok, "cpu_s": t.cpu_s,
                "redis_cpu_s": t.companion_cpu_s, "rounds": t.round_rates, "cost_vs_memory": base / rate.max(f64::EPSILON),
                "per_cpu_s_with_redis": both, "failed": t.failed}));
        }
        out.push(String::new());
        out.push(format!(
            "Other processes used {:.2} CPU-s during {:.1} s of these handshake rounds ({:.2} cores on average).",
            noise.other_cpu_s,
            noise.wall_s,
            noise.other_cpu_s / noise.wall_s.max(f64::EPSILON)
        ));
        js["handshakes"] = Value::Array(jh);

        // Redis commands per handshake: one more round on a fresh Redis node, with the
        // tokens of the rounds above (so each principal is at its session cap alike).
        let g = env.start(&red_spec)?;
        let target = Target { addr: g.addr, auth: true };
        let tokens = mint_many("hs", args.concurrency.max(1))?;
        load::handshake_round(&target, &tokens, args.concurrency, Duration::from_millis(300), 2000).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mon = Monitor::start(port)?;
        let t0 = Instant::now();
        let r = load::handshake_round(&target, &tokens, args.concurrency, Duration::from_secs(1), 20_000)
            .await
            .context("handshakes for the Redis command count")?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let took = t0.elapsed();
        let batch = mon.finish()?;
        let mon = Monitor::start(port)?;
        tokio::time::sleep(took).await;
        let idle = mon.finish()?;
        drop(g);
        let ok = u64::try_from(r.ok).unwrap_or(0);
        let client = per_event(&batch.client, &idle.client, ok);
        let script = per_event(&batch.script, &idle.script, ok);
        let (sent, inside): (f64, f64) = (client.iter().map(|x| x.1).sum(), script.iter().map(|x| x.1).sum());
        out.push(String::new());
        out.push(format!(
            "Redis commands per handshake (MONITOR over {} more handshakes on a fresh Redis node, minus an idle \
             window): {sent:.2} sent ({}); {inside:.2} called inside scripts ({}).",
            r.ok,
            fmt_cmds(&client),
            fmt_cmds(&script)
        ));
        js["commands_per_handshake"] = json!({"handshakes": r.ok, "sent": client, "in_scripts": script});
    }

    // ------------------------------------------------------------- 4. memory
    let per_node = args.redis_memory_per_node.unwrap_or(if args.quick { 500 } else { 5000 });
    if per_node > 0 {
        if per_node > 19_000 {
            bail!("--redis-memory-per-node {per_node}: a node holds at most about 19 000 connections (open files)");
        }
        let settle = Duration::from_millis(if args.quick { 500 } else { 2000 });
        let (used0, keys0) = (used_memory(port)?, command(port, &["DBSIZE"])?.parse::<u64>()?);
        eprintln!("redis memory: three Redis nodes, {per_node} idle connections each ...");
        let levels = [per_node];
        let nodes = futures_util::future::try_join_all(
            (0..3).map(|k| crate::memory(env, &red_spec, &levels, settle, 40 + 20 * k)),
        )
        .await
        .context("memory of three Redis nodes")?;
        // `memory` has dropped its helpers and gateways: measure Redis while it still
        // holds the sessions (detached now, kept for the resume window).
        let (used1, keys1) = (used_memory(port)?, command(port, &["DBSIZE"])?.parse::<u64>()?);
        out.push(String::new());
        out.push(format!(
            "Redis backend: idle memory, three nodes on one Redis holding {per_node} idle authenticated connections \
             each ({} in all) at once (VmRSS of each node after a warm-up):",
            3 * per_node
        ));
        out.push(String::new());
        out.push(format!("| node | VmRSS at 0 | VmRSS at {per_node} | KiB per connection |"));
        out.push("|---|---:|---:|---:|".into());
        let mut jm = Vec::new();
        for (k, m) in nodes.iter().enumerate() {
            let (n, rss) = m.points[0];
            #[allow(clippy::cast_precision_loss)]
            let per = (rss as f64 - m.base_kib as f64) / n as f64;
            #[allow(clippy::cast_precision_loss)]
            out.push(format!(
                "| {} | {:.1} MiB | {:.1} MiB | {per:.2} |",
                ["A", "B", "C"][k],
                m.base_kib as f64 / 1024.0,
                rss as f64 / 1024.0
            ));
            jm.push(json!({"node": k, "base_kib": m.base_kib, "points": m.points, "kib_per_conn": per}));
        }
        let grew = used1.saturating_sub(used0);
        out.push(String::new());
        #[allow(clippy::cast_precision_loss)]
        out.push(format!(
            "Meanwhile Redis used_memory grew by {:.1} MiB and its key count by {} ({} sessions of the held \
             connections plus the nodes' warm-up handshakes; no events buffered): {:.0} bytes per held connection.",
            grew as f64 / 1_048_576.0,
            keys1.saturating_sub(keys0),
            3 * per_node,
            grew as f64 / (3 * per_node) as f64
        ));
        js["memory"] = json!({"per_node": per_node, "nodes": jm, "redis_used_memory_growth": grew,
            "redis_keys_growth": keys1.saturating_sub(keys0)});
    }
    drop(redis);
    Ok((out, js))
}
