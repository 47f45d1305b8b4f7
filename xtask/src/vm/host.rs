//! The host side of a VM test: the tap, the loop device of `--backing blk` (and the loop
//! device and mount that build the `--client ipxe` boot disk), the AoE target process and
//! qemu with its console.
//!
//! Everything that must not outlive the run is a guard whose `Drop` undoes it (tap deleted,
//! loop device detached, processes killed), and SIGINT/SIGTERM/SIGHUP only set a flag
//! ([`crate::cmd::install_signal_handlers`]) that every wait here polls, so an interrupted run
//! still unwinds through those guards. Programs run through [`crate::cmd`].

use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, check_interrupted, sleep, CommandExt as _};

/// A tap device for the VM's NIC; deleted on drop.
pub struct Tap {
    pub name: String,
}

impl Tap {
    /// Creates the first free `xbvm<N>`, with this MTU, up, and without IPv6 chatter.
    pub fn create(mtu: u32) -> Result<Self> {
        let name = (0..100)
            .map(|index| format!("xbvm{index}"))
            .find(|name| !Path::new("/sys/class/net").join(name).exists())
            .context("no free xbvm<N> interface name")?;
        Command::new("ip")
            .args(["tuntap", "add", "dev", &name, "mode", "tap"])
            .read()
            .map(drop)
            .context("creating the tap (vm-test needs root and /dev/net/tun)")?;
        let tap = Tap { name };
        let _ = fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", tap.name),
            "1",
        );
        Command::new("ip")
            .args([
                "link",
                "set",
                "dev",
                &tap.name,
                "mtu",
                &mtu.to_string(),
                "up",
            ])
            .read()
            .map(drop)?;
        Ok(tap)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Err(error) = Command::new("ip")
            .args(["link", "del", "dev", &self.name])
            .read()
            .map(drop)
        {
            eprintln!("vm-test: could not delete the tap {}: {error:#}", self.name);
        }
    }
}

/// A loop block device over an image file (direct I/O, 512-byte sectors, like the bench's
/// blk back end); detached on drop.
pub struct LoopDevice {
    pub path: PathBuf,
    /// Whether the loop really does direct I/O (it falls back to buffered I/O when the
    /// filesystem under the file cannot do 512-byte direct I/O).
    pub direct_io: bool,
}

impl LoopDevice {
    pub fn attach(file: &Path) -> Result<Self> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on", "--sector-size", "512"])
            .arg(file)
            .read()
            .context("attaching a loop device (--backing blk needs root and the loop driver)")?;
        let path = PathBuf::from(out.trim());
        let dio = Path::new("/sys/block")
            .join(path.file_name().unwrap_or_default())
            .join("loop/dio");
        let direct_io = fs::read_to_string(dio).is_ok_and(|v| v.trim() == "1");
        Ok(LoopDevice { path, direct_io })
    }
}

impl LoopDevice {
    /// A plain loop device over `size` bytes of `file` from `offset` (a partition of a disk
    /// image: this host's kernel may lack the partition table parsers, so no `--partscan`).
    pub fn attach_range(file: &Path, offset: u64, size: u64) -> Result<Self> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--offset"])
            .arg(offset.to_string())
            .arg("--sizelimit")
            .arg(size.to_string())
            .arg(file)
            .read()
            .context(
                "attaching a loop device (building the boot disk needs root and the loop driver)",
            )?;
        Ok(LoopDevice {
            path: PathBuf::from(out.trim()),
            direct_io: false,
        })
    }
}

/// A filesystem mounted on a directory; unmounted on drop.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    pub fn new(device: &Path, dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)?;
        Command::new("mount")
            .arg(device)
            .arg(dir)
            .read()
            .map(drop)
            .with_context(|| format!("mounting {} on {}", device.display(), dir.display()))?;
        Ok(Mount {
            dir: dir.to_owned(),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if Command::new("umount")
            .arg(&self.dir)
            .read()
            .map(drop)
            .is_err()
        {
            // Busy for a moment (a process still had a file open): detach it now, the kernel
            // finishes when the last user goes.
            if let Err(error) = Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .read()
                .map(drop)
            {
                eprintln!(
                    "vm-test: could not unmount {}: {error:#}",
                    self.dir.display()
                );
            }
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // A device still open (a target's claim outliving it a moment) is detached by the
        // kernel when it is closed (autoclear).
        if let Err(error) = Command::new("losetup")
            .arg("--detach")
            .arg(&self.path)
            .read()
            .map(drop)
        {
            eprintln!(
                "vm-test: could not detach the loop device {}: {error:#}",
                self.path.display()
            );
        }
    }
}

/// How to start the AoE target, vblade-style: `BIN [ARGS...] SHELF SLOT NETIF PATH`.
#[derive(Clone)]
pub struct TargetCommand {
    pub bin: PathBuf,
    pub args: Vec<String>,
    pub shelf: u16,
    pub slot: u8,
    pub netif: String,
    pub backing: PathBuf,
    /// Its stdout and stderr, appended to over restarts.
    pub log: PathBuf,
}

/// The running target; killed on drop.
pub struct Target {
    command: TargetCommand,
    child: Option<Child>,
    starts: u32,
}

/// How long a freshly started target must stay alive to count as started.
const TARGET_SETTLE: Duration = Duration::from_millis(300);

impl Target {
    pub fn start(command: TargetCommand) -> Result<Self> {
        let _ = fs::remove_file(&command.log);
        let mut target = Target {
            command,
            child: None,
            starts: 0,
        };
        target.spawn()?;
        Ok(target)
    }

    fn spawn(&mut self) -> Result<()> {
        let command = &self.command;
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&command.log)?;
        let mut process = Command::new(&command.bin);
        process.args(&command.args);
        if command.bin.file_name().is_some_and(|n| n == "xblade") {
            // Its control socket and AoE state beside its log, kept over restarts: never
            // /run/xblade or /var/lib/xblade of the machine running the test.
            process
                .arg("--control")
                .arg(command.log.with_extension("sock"))
                .arg("--state-dir")
                .arg(command.log.with_extension("state"));
        }
        process
            .arg(command.shelf.to_string())
            .arg(command.slot.to_string())
            .arg(&command.netif)
            .arg(&command.backing);
        writeln!(
            log,
            "== vm-test: start #{}: {}",
            self.starts,
            cmd::line(&process)
        )?;
        let child = process
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .start()?;
        self.child = Some(child);
        sleep(TARGET_SETTLE)?;
        self.check_alive()
    }

    /// Fails if the target has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("the target is not running")
        };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!(
                "the target exited ({status}); see {}",
                self.command.log.display()
            );
        }
        Ok(())
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("the target is not running")?;
        child.kill()?;
        child.wait()?;
        self.note("killed with SIGKILL")
    }

    pub fn restart(&mut self) -> Result<()> {
        self.spawn()
    }

    /// SIGTERM, then SIGKILL after 3 s.
    pub fn stop(&mut self) -> Result<Stopped> {
        let Some(mut child) = self.child.take() else {
            return Ok(Stopped::NotRunning);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(Stopped::Exited(status));
        }
        cmd::signal(&child, libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if let Some(status) = child.try_wait()? {
                return Ok(Stopped::Exited(status));
            }
            thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        self.note("did not exit within 3 s of SIGTERM; killed")?;
        Ok(Stopped::Killed)
    }

    fn note(&self, message: &str) -> Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.command.log)?;
        writeln!(log, "== vm-test: {message}")?;
        Ok(())
    }
}

/// How [`Target::stop`] went.
pub enum Stopped {
    NotRunning,
    Exited(ExitStatus),
    /// It ignored SIGTERM for 3 s.
    Killed,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One console line and when it arrived, counted from qemu's start.
pub struct Line {
    pub at: Duration,
    pub text: String,
}

pub enum Event {
    Line(Line),
    /// qemu closed its console: it exited (or is about to).
    Closed,
    Timeout,
}

/// A running qemu whose serial console is copied to a log file and handed out line by line.
pub struct Qemu {
    child: Child,
    lines: Receiver<Line>,
    log: Arc<Mutex<File>>,
    started: Instant,
}

impl Qemu {
    pub fn spawn(command: &mut Command, log_path: &Path) -> Result<Self> {
        let log = Arc::new(Mutex::new(
            File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?,
        ));
        let stderr = File::create(log_path.with_extension("stderr"))?;
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .start()?;
        let stdout = child.stdout.take().context("qemu stdout")?;
        let (sender, lines) = mpsc::channel();
        let reader_log = Arc::clone(&log);
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let at = started.elapsed();
                if let Ok(mut log) = reader_log.lock() {
                    let _ = log.write_all(&raw);
                }
                let text = String::from_utf8_lossy(&raw)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
                if sender.send(Line { at, text }).is_err() {
                    break;
                }
            }
        });
        Ok(Qemu {
            child,
            lines,
            log,
            started,
        })
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The next console line, or `Closed`, or `Timeout` at `deadline`.
    pub fn next_event(&mut self, deadline: Instant) -> Result<Event> {
        loop {
            check_interrupted()?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(Event::Timeout);
            }
            match self
                .lines
                .recv_timeout((deadline - now).min(Duration::from_millis(100)))
            {
                Ok(line) => return Ok(Event::Line(line)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(Event::Closed),
            }
        }
    }

    /// Writes a host-side event into the console log.
    pub fn note(&self, message: &str) {
        let line = format!(
            "[vm-test host +{:.3}s] {message}\n",
            self.started.elapsed().as_secs_f64()
        );
        if let Ok(mut log) = self.log.lock() {
            let _ = log.write_all(line.as_bytes());
        }
    }

    /// Waits up to `grace` for qemu to exit, then kills it. Returns its status if it exited by
    /// itself.
    pub fn finish(mut self, grace: Duration, log_path: &Path) -> Result<Option<ExitStatus>> {
        let end = Instant::now() + grace;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break Some(status);
            }
            if Instant::now() >= end {
                self.note("qemu did not exit; killing it");
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        // Fold qemu's own stderr into the console log.
        let stderr_path = log_path.with_extension("stderr");
        if let Ok(stderr) = fs::read_to_string(&stderr_path) {
            if !stderr.trim().is_empty() {
                self.note(&format!("qemu stderr:\n{}", stderr.trim_end()));
            }
            let _ = fs::remove_file(&stderr_path);
        }
        Ok(status)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
