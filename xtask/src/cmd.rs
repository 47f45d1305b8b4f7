//! The one way xtask runs a program: [`CommandExt`] on `std::process::Command`.
//!
//! Every failure is an `anyhow` error that names the command line as a person would type it
//! (`ip -n xbl-t link set dev xbl-tv up`), how it ended (`exit status: 2`, `signal: 9`) and the
//! last lines it wrote on stderr (or on stdout when stderr is empty: `e2fsck` reports there).
//! A program that cannot be started says which Debian package provides it, if known.
//!
//! - [`CommandExt::run`]: our stdout; stderr shown as it comes *and* kept for the error.
//! - [`CommandExt::read`], [`CommandExt::read_bytes`]: silent, returns stdout.
//! - [`CommandExt::read_showing_stderr`]: returns stdout, shows stderr (`cargo build
//!   --message-format=json`).
//! - [`CommandExt::capture`], [`CommandExt::capture_within`]: any exit status is a result
//!   ([`Captured`]), only a failure to start is an error; `_within` stops the program when it
//!   outlives a timeout or xtask is interrupted.
//! - [`CommandExt::start`]: long-running programs (targets, qemu) the caller supervises.
//!
//! It also holds the interrupt flag: [`install_signal_handlers`] turns SIGINT, SIGTERM and
//! SIGHUP into [`check_interrupted`] errors, so that a task can stop what it started (and
//! take its lab or tap down) instead of dying.

use std::{
    collections::VecDeque,
    ffi::OsStr,
    io::{BufRead as _, BufReader, Read, Write as _},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

/// How many lines of stderr (or stdout) an error quotes.
const TAIL_LINES: usize = 12;

/// A command built from `argv[0]` and the rest.
pub fn from_argv<S: AsRef<OsStr>>(argv: &[S]) -> Command {
    let mut command = Command::new(argv.first().map_or(OsStr::new(""), AsRef::as_ref));
    command.args(argv.iter().skip(1));
    command
}

/// A word as a POSIX shell would need it: bare when safe, else single-quoted.
pub fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `argv` as a person would type it.
pub fn shell_words<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|word| quote(word.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command line of `command` as a person would type it, with `cd DIR &&` and `VAR=value`
/// in front when it sets them.
pub fn line(command: &Command) -> String {
    let mut words = Vec::new();
    if let Some(dir) = command.get_current_dir() {
        words.push(format!("cd {} &&", quote(&dir.to_string_lossy())));
    }
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => words.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            )),
            None => words.push(format!("env -u {}", key.to_string_lossy())),
        }
    }
    words.push(quote(&command.get_program().to_string_lossy()));
    words.extend(command.get_args().map(|a| quote(&a.to_string_lossy())));
    words.join(" ")
}

/// What a finished program did.
#[derive(Debug)]
pub struct Captured {
    /// Its command line, for messages.
    pub line: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Captured {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Itself if the program exited 0, else the error [`CommandExt::read`] would give.
    pub fn check(self) -> Result<Captured> {
        if self.status.success() {
            return Ok(self);
        }
        let quoted = if self.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
            ("stderr", self.stderr_text())
        } else {
            ("stdout", self.stdout_text())
        };
        Err(failure(&self.line, self.status, quoted))
    }
}

/// The error for a program that ran and failed.
fn failure(line: &str, status: ExitStatus, (stream, text): (&str, String)) -> anyhow::Error {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    match tail {
        [] => anyhow!("`{line}` failed ({status}) and wrote nothing on stderr"),
        [one] => anyhow!("`{line}` failed ({status}): {}", one.trim()),
        many => anyhow!(
            "`{line}` failed ({status}); its {stream}{}:\n  {}",
            if lines.len() > many.len() {
                " ends"
            } else {
                ""
            },
            many.join("\n  ")
        ),
    }
}

/// The error for a program that could not be started.
fn not_started(command: &Command, error: std::io::Error) -> anyhow::Error {
    let program = command.get_program().to_string_lossy().into_owned();
    let hint = match (error.kind(), package_of(&program)) {
        (std::io::ErrorKind::NotFound, Some(package)) => {
            format!(" (is it installed? Debian: `apt-get install {package}`)")
        }
        (std::io::ErrorKind::NotFound, None) => " (is it installed?)".to_owned(),
        _ => String::new(),
    };
    anyhow!(error).context(format!("cannot run `{}`{hint}", line(command)))
}

/// The Debian package of a program xtask runs, for "is it installed?" hints.
fn package_of(program: &str) -> Option<&'static str> {
    const MORE: &[(&str, &str)] = &[
        ("sysctl", "procps"),
        ("fallocate", "util-linux"),
        ("kill", "util-linux"),
        ("taskset", "util-linux"),
        ("findmnt", "util-linux"),
        ("dd", "coreutils"),
        ("sha256sum", "coreutils"),
        ("e2fsck", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("mkfs.ext2", "e2fsprogs"),
        ("dpkg-deb", "dpkg"),
        ("dpkg-query", "dpkg"),
        ("apt-get", "apt"),
        ("apt-cache", "apt"),
        ("lintian", "lintian"),
        ("zstd", "zstd"),
        ("gzip", "gzip"),
    ];
    let name = program.rsplit('/').next().unwrap_or(program);
    crate::test::TOOLS
        .iter()
        .chain(MORE)
        .find(|(command, _)| *command == name)
        .map(|(_, package)| *package)
}

/// The tail of a stream that is copied to our stderr as it comes.
struct Tee {
    tail: Arc<Mutex<VecDeque<String>>>,
    done: mpsc::Receiver<()>,
}

impl Tee {
    fn start(pipe: impl Read + Send + 'static) -> Tee {
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (sender, done) = mpsc::channel();
        let kept = Arc::clone(&tail);
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut raw = Vec::new();
            while matches!(reader.read_until(b'\n', &mut raw), Ok(n) if n > 0) {
                let _ = std::io::stderr().write_all(&raw);
                if let Ok(mut tail) = kept.lock() {
                    if tail.len() > TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(String::from_utf8_lossy(&raw).trim_end().to_owned());
                }
                raw.clear();
            }
            let _ = sender.send(());
        });
        Tee { tail, done }
    }

    /// The last lines, once the stream ended (or a moment after the program exited: a
    /// daemon it started may hold the pipe open).
    fn finish(self) -> String {
        let _ = self.done.recv_timeout(Duration::from_secs(2));
        let tail = self.tail.lock().map(|t| t.clone()).unwrap_or_default();
        Vec::from(tail).join("\n")
    }
}

/// Reads a pipe to its end on another thread.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Running a `std::process::Command` with errors that say what failed.
pub trait CommandExt {
    /// Runs it to completion with its stdout on ours; its stderr is shown as it comes and its
    /// last lines go into the error. Fails unless it exits 0.
    fn run(&mut self) -> Result<()>;

    /// Runs it to completion, silently; its stdout (lossy UTF-8). Fails unless it exits 0.
    fn read(&mut self) -> Result<String>;

    /// As [`CommandExt::read`], the bytes.
    fn read_bytes(&mut self) -> Result<Vec<u8>>;

    /// Runs it to completion; its stdout, with its stderr shown as it comes. Fails unless it
    /// exits 0.
    fn read_showing_stderr(&mut self) -> Result<String>;

    /// Runs it to completion, silently, and returns what it did whatever its exit status; fails
    /// only if it cannot be started.
    fn capture(&mut self) -> Result<Captured>;

    /// As [`CommandExt::capture`], but stops it (SIGTERM, SIGKILL 5 s later) when it outlives
    /// `timeout` or xtask is interrupted ([`interrupted`]).
    fn capture_within(&mut self, timeout: Duration) -> Result<Captured>;

    /// Starts it (a process the caller supervises: a target, qemu), with the stdio the caller
    /// set; fails with the command line if it cannot be started.
    fn start(&mut self) -> Result<Child>;
}

impl CommandExt for Command {
    fn run(&mut self) -> Result<()> {
        let line = line(self);
        let mut child = self
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| not_started(self, e))?;
        let tee = Tee::start(child.stderr.take().expect("stderr is piped"));
        let status = child
            .wait()
            .with_context(|| format!("waiting for `{line}`"))?;
        let tail = tee.finish();
        if !status.success() {
            return Err(failure(&line, status, ("stderr", tail)));
        }
        Ok(())
    }

    fn read(&mut self) -> Result<String> {
        self.read_bytes()
            .map(|out| String::from_utf8_lossy(&out).into_owned())
    }

    fn read_bytes(&mut self) -> Result<Vec<u8>> {
        self.capture()?.check().map(|out| out.stdout)
    }

    fn read_showing_stderr(&mut self) -> Result<String> {
        let line = line(self);
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| not_started(self, e))?;
        let tee = Tee::start(child.stderr.take().expect("stderr is piped"));
        let stdout = drain(child.stdout.take().expect("stdout is piped"));
        let status = child
            .wait()
            .with_context(|| format!("waiting for `{line}`"))?;
        let tail = tee.finish();
        let stdout = stdout.join().unwrap_or_default();
        if !status.success() {
            return Err(failure(&line, status, ("stderr", tail)));
        }
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }

    fn capture(&mut self) -> Result<Captured> {
        let line = line(self);
        let output = self
            .stdin(Stdio::null())
            .output()
            .map_err(|e| not_started(self, e))?;
        Ok(Captured {
            line,
            status: output.status,
            stdout: output.stdout,
            stderr: output.stderr,
        })
    }

    fn capture_within(&mut self, timeout: Duration) -> Result<Captured> {
        let line = line(self);
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| not_started(self, e))?;
        let stdout = drain(child.stdout.take().expect("stdout is piped"));
        let stderr = drain(child.stderr.take().expect("stderr is piped"));
        let deadline = Instant::now() + timeout;
        let mut termed: Option<Instant> = None;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            let late = Instant::now() > deadline;
            match termed {
                None if late || interrupted() => {
                    if late {
                        eprintln!(
                            "xtask: `{line}` still runs after {:.0} s: stopping it",
                            timeout.as_secs_f64()
                        );
                    }
                    signal(&child, libc::SIGTERM);
                    termed = Some(Instant::now());
                }
                Some(t) if t.elapsed() > Duration::from_secs(5) => {
                    let _ = child.kill();
                }
                _ => {}
            }
            thread::sleep(Duration::from_millis(5));
        };
        Ok(Captured {
            line,
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }

    fn start(&mut self) -> Result<Child> {
        self.spawn().map_err(|e| not_started(self, e))
    }
}

/// Sends `sig` to a child we have not reaped yet.
pub fn signal(child: &Child, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped child,
    // so it cannot have been recycled for another process.
    unsafe {
        libc::kill(pid, sig);
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP set a flag instead of killing xtask, so that it can stop what it
/// started and clean up. (Children started from a terminal get Ctrl-C themselves.)
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `on_signal` is async-signal-safe (one atomic store); a zeroed sigaction with
        // only the handler set is a valid argument, and the old action is not needed.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Whether a stop signal arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails if a stop signal arrived.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, waking early (with an error) on a stop signal.
pub fn sleep(duration: Duration) -> Result<()> {
    let end = Instant::now() + duration;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_quote_like_a_shell() {
        assert_eq!(quote("a b'c"), r"'a b'\''c'");
        assert_eq!(
            shell_words(&["ip", "netns", "add", "xbl-t"]),
            "ip netns add xbl-t"
        );
        let mut command = from_argv(&["ip", "netns", "exec", "a b", "x'y"]);
        assert_eq!(line(&command), r"ip netns exec 'a b' 'x'\''y'");
        command.current_dir("/tmp").env("CLANG", "clang-14");
        assert_eq!(
            line(&command),
            r"cd /tmp && CLANG=clang-14 ip netns exec 'a b' 'x'\''y'"
        );
    }

    #[test]
    fn failures_name_the_command_status_and_stderr_tail() {
        let err = Command::new("sh")
            .args(["-c", "echo out; echo one >&2; echo two >&2; exit 3"])
            .read()
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "`sh -c 'echo out; echo one >&2; echo two >&2; exit 3'` failed (exit status: 3); \
             its stderr:\n  one\n  two"
        );
        // Nothing on stderr: stdout is quoted instead (e2fsck reports there).
        let err = Command::new("sh")
            .args(["-c", "echo problem; exit 4"])
            .read()
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("failed (exit status: 4): problem"), "{err}");
        let err = Command::new("sh")
            .args(["-c", "seq 1 50 >&2; exit 1"])
            .run()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("its stderr ends:\n  39\n") && err.ends_with("\n  50"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            Command::new("no-such-program-xtask").read().unwrap_err()
        );
        assert!(
            err.starts_with("cannot run `no-such-program-xtask` (is it installed?)"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            Command::new("/nonexistent/vblade").run().unwrap_err()
        );
        assert!(err.contains("apt-get install vblade"), "{err}");
        assert_eq!(Command::new("echo").arg("hi").read().unwrap(), "hi\n");
        assert_eq!(
            Command::new("sh")
                .args(["-c", "echo warn >&2; echo data"])
                .read_showing_stderr()
                .unwrap(),
            "data\n"
        );
    }

    #[test]
    fn captures_and_times_out() {
        let c = Command::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .capture_within(Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            (c.status.code(), c.stdout_text(), c.stderr_text()),
            (Some(3), "out\n".to_owned(), "err\n".to_owned())
        );
        assert!(c.check().is_err());
        let t = Instant::now();
        let c = Command::new("sleep")
            .arg("30")
            .capture_within(Duration::from_millis(100))
            .unwrap();
        assert!(!c.status.success() && t.elapsed() < Duration::from_secs(10));
    }
}
