//! Child processes, CPU pinning and `/proc` readings.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Longest wait for a server to announce its address.
const START: Duration = Duration::from_secs(30);

/// Which cores the servers and the load generator run on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pinning {
    /// The core every measured server is pinned to (`taskset -c`), if pinning works.
    pub(crate) server: Option<usize>,
    /// The core this process (the load generator) and its helpers are pinned to.
    pub(crate) load: Option<usize>,
}

impl Pinning {
    /// Pin this process to the second allowed core and keep the first for servers,
    /// when two cores are allowed and `taskset` exists; otherwise pin nothing.
    /// Must run before any thread is started, so that every thread inherits it.
    pub(crate) fn set_up(enabled: bool) -> Self {
        let none = Self { server: None, load: None };
        if !enabled {
            eprintln!("note: pinning disabled (--no-pin): servers and load generator share every core");
            return none;
        }
        let cores = allowed_cores();
        if cores.len() < 2 {
            eprintln!("note: only {} core allowed: servers and load generator share it (no pinning)", cores.len());
            return none;
        }
        let (server, load) = (cores[0], cores[1]);
        // `taskset -p` changes only the thread it names: this process has one thread yet.
        let pinned = Command::new("taskset")
            .args(["-p", "-c", &load.to_string(), &std::process::id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !pinned {
            eprintln!("note: taskset (util-linux) is missing or failed: nothing is pinned");
            return none;
        }
        Self { server: Some(server), load: Some(load) }
    }

    /// `program args...`, pinned to the server core when pinning is on.
    pub(crate) fn server_cmd(&self, program: &Path) -> Command {
        match self.server {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match (self.server, self.load) {
            (Some(s), Some(l)) => format!("servers pinned to core {s}, load generator to core {l}"),
            _ => "not pinned".to_owned(),
        }
    }
}

/// A child process, killed and reaped on drop.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) name: String,
}

impl Proc {
    /// Spawn `cmd` and wait (bounded) until `addr_file` names a loopback address.
    /// The server's output goes to `log` so that a failure can be read afterwards.
    pub(crate) fn start(name: &str, mut cmd: Command, addr_file: &Path, log: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(addr_file);
        let out = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let mut child = cmd.spawn().with_context(|| format!("spawn {name}: {cmd:?}"))?;
        let deadline = Instant::now() + START;
        loop {
            if let Ok(text) = std::fs::read_to_string(addr_file)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                if !addr.ip().is_loopback() {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("{name} listens on {addr}, not loopback");
                }
                return Ok(Self { child, addr, name: name.to_owned() });
            }
            if let Some(status) = child.try_wait()? {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                bail!("{name} exited early with {status}; its output ({}):\n{tail}", log.display());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{name} wrote no address to {} within {START:?}; see {}", addr_file.display(), log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fail when the server has died.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} (pid {}) died with {status}", self.name, self.pid());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU time (user + system, all threads) of `pid` in seconds, from `/proc/<pid>/stat`.
pub(crate) fn cpu_seconds(pid: u32, ticks: f64) -> Result<f64> {
    let (user, system) = cpu_split(pid, ticks)?;
    Ok(user + system)
}

/// User and system CPU time (all threads) of `pid` in seconds, from `/proc/<pid>/stat`.
pub(crate) fn cpu_split(pid: u32, ticks: f64) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, a)| a).ok_or_else(|| anyhow!("odd /proc stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); the text after ')' starts at field 3.
    let utime: u64 = fields.get(11).ok_or_else(|| anyhow!("no utime"))?.parse()?;
    let stime: u64 = fields.get(12).ok_or_else(|| anyhow!("no stime"))?.parse()?;
    #[allow(clippy::cast_precision_loss)]
    Ok((utime as f64 / ticks, stime as f64 / ticks))
}

/// Resident memory of `pid` in KiB, from `/proc/<pid>/status`.
pub(crate) fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or_else(|| anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).ok_or_else(|| anyhow!("odd VmRSS"))?.parse()?)
}

/// The 1-minute load average and the number of running tasks, from `/proc/loadavg`.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "?".into())
}

/// CPU time of every process on the machine other than `exclude`, in seconds, from
/// `/proc/stat` minus the listed pids: a measure of the noise during a run.
pub(crate) fn machine_busy_seconds(ticks: f64) -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().ok_or_else(|| anyhow!("empty /proc/stat"))?;
    let v: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = v.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, x)| *x).sum();
    #[allow(clippy::cast_precision_loss)]
    Ok(busy as f64 / ticks)
}

/// The cores this process may run on, from `Cpus_allowed_list` in `/proc/self/status`.
fn allowed_cores() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(list) = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")) else { return Vec::new() };
    let mut cores = Vec::new();
    for part in list.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cores.extend(a..=b);
                }
            }
            None => cores.extend(part.parse::<usize>().ok()),
        }
    }
    cores
}

/// Nanoseconds that the threads of `pid` have spent runnable but waiting for a CPU
/// (second field of `/proc/<pid>/task/*/schedstat`), summed over its live threads.
pub(crate) fn runqueue_wait_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1).and_then(|w| w.parse::<u64>().ok()))
        .sum()
}
