//! Processes for the benchmark: long-running targets with their output in a log file (started
//! through [`crate::cmd`]), and CPU time from `/proc`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, check_interrupted, from_argv, CommandExt as _};

/// A long-running process (a target) with its stdout and stderr in a log file.
pub struct Service {
    pub name: String,
    pub argv: Vec<String>,
    pub log: PathBuf,
    child: Child,
    started: Instant,
}

impl Service {
    /// Starts `argv` with its output appended to `log`.
    pub fn start(name: &str, argv: &[String], log: &Path) -> Result<Service> {
        let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = file.try_clone()?;
        let child = from_argv(argv)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .start()?;
        Ok(Service {
            name: name.to_owned(),
            argv: argv.to_vec(),
            log: log.to_owned(),
            child,
            started: Instant::now(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log, for error messages.
    pub fn tail(&self) -> String {
        tail(&self.output(), 6)
    }

    /// `None` while it runs, else how it ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until the log contains `marker` (the process is ready), failing if it exits or
    /// `timeout` passes first.
    pub fn wait_ready(&mut self, marker: &str, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(marker) {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited ({status}) before it was ready: {}",
                    self.name,
                    self.tail()
                );
            }
            check_interrupted()?;
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready after {} s (no {marker:?} in its output): {}",
                    self.name,
                    timeout.as_secs(),
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM (xblade drains in-flight I/O and detaches XDP; aoe-bench echo prints its
    /// counters), SIGKILL after `grace`. Returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        cmd::signal(&self.child, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!(
            "bench: {} (pid {}) still runs {} s after SIGTERM: SIGKILL",
            self.name,
            self.pid(),
            grace.as_secs()
        );
        self.child.kill().ok();
        self.child
            .wait()
            .with_context(|| format!("waiting for {}", self.name))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.stop(Duration::from_secs(10));
        }
    }
}

/// The last `n` non-empty lines of `text`, joined with " | ".
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    let t = lines[start..].join(" | ");
    if t.is_empty() {
        "(no output)".to_owned()
    } else {
        t
    }
}

/// User + system time of a process, as clock ticks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ticks {
    /// Threads whose name starts with the prefix asked for (xblade's workers: `xblade-`).
    pub workers: u64,
    /// The whole process, including threads that have exited (io_uring's io-wq workers).
    pub process: u64,
    /// How many threads matched the prefix.
    pub worker_threads: u32,
    /// (thread id, ticks) of each matching thread, in thread-id order.
    pub threads: Vec<(u32, u64)>,
}

/// utime + stime (fields 14 and 15) of one `/proc/.../stat` line.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name, in parentheses, may itself hold blanks and ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field 14 is index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks of `pid` and of its threads named `prefix*`.
pub fn ticks(pid: u32, prefix: &str) -> Ticks {
    let mut t = Ticks {
        process: fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .as_deref()
            .and_then(stat_ticks)
            .unwrap_or(0),
        ..Ticks::default()
    };
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return t;
    };
    let mut tids: Vec<u32> = tasks
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    for tid in tids {
        let dir = PathBuf::from(format!("/proc/{pid}/task/{tid}"));
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        if let Some(n) = fs::read_to_string(dir.join("stat"))
            .ok()
            .as_deref()
            .and_then(stat_ticks)
        {
            t.workers += n;
            t.worker_threads += 1;
            t.threads.push((tid, n));
        }
    }
    t
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat() {
        let line =
            "7676 (xblade-xbl) tv-q) S 1 7674 7674 0 -1 4194368 100 0 0 0 19 177 0 0 20 0 2 0";
        assert_eq!(stat_ticks(line), Some(196));
        assert_eq!(stat_ticks("garbage"), None);
        let own = ticks(std::process::id(), "no-such-thread-");
        assert_eq!(own.worker_threads, 0);
        assert!(clock_ticks_per_sec() > 0.0);
    }

    #[test]
    fn tails() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(tail("", 2), "(no output)");
    }
}
