//! Test support for the daemon's end-to-end tests: a network-namespace lab joined by veth, the
//! `xblade` binary run inside it, and a raw AF_PACKET AoE initiator built on the `aoe` crate.
//!
//! These tests need root (netns, XDP). Without it they print a loud `SKIPPED (needs root)` line
//! and pass, except under `CI=true`, where they fail.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aoe::initiator::{self, parse_response, Addr, AtaRequest, Body};
use aoe::wire::{ccmd, Mac, BROADCAST};

/// True if the test may run; otherwise prints why it is skipped (or panics under CI=true).
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let msg = format!("SKIPPED (needs root): {test}: network namespaces, veth and XDP need root");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}; CI=true forbids skipping");
    }
    // The test harness captures eprintln!; write to fd 2 directly so the skip is seen.
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("\n*** {msg} ***\n").as_bytes());
    false
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Two namespaces, `target` and `initiator`, joined by a veth pair.
pub struct Lab {
    pub target_ns: String,
    pub init_ns: String,
    pub target_if: String,
    pub init_if: String,
    pub dir: PathBuf,
}

impl Lab {
    pub fn new() -> Lab {
        Self::with_mtu(1500)
    }

    pub fn with_mtu(mtu: u32) -> Lab {
        Self::build(mtu, 1)
    }

    /// A lab whose veth pair has `queues` RX/TX queues.
    pub fn with_queues(queues: u32) -> Lab {
        Self::build(1500, queues)
    }

    fn build(mtu: u32, queues: u32) -> Lab {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        let lab = Lab {
            target_ns: format!("xbt{id}"),
            init_ns: format!("xbi{id}"),
            target_if: format!("xt{id}"),
            init_if: format!("xi{id}"),
            dir: PathBuf::from(format!("/dev/shm/xblade-test-{id}")),
        };
        let _ = std::fs::remove_dir_all(&lab.dir);
        std::fs::create_dir_all(&lab.dir).unwrap();
        run("ip", &["netns", "add", &lab.target_ns]);
        run("ip", &["netns", "add", &lab.init_ns]);
        let q = queues.to_string();
        let (t, i) = (&lab.target_if, &lab.init_if);
        let (tn, inn) = (&lab.target_ns, &lab.init_ns);
        let qs = ["numrxqueues", &q, "numtxqueues", &q];
        let mut args = vec!["link", "add", t, "netns", tn];
        args.extend(qs);
        args.extend(["type", "veth", "peer", "name", i, "netns", inn]);
        args.extend(qs);
        run("ip", &args);
        let mtu = mtu.to_string();
        for (ns, dev) in [
            (&lab.target_ns, &lab.target_if),
            (&lab.init_ns, &lab.init_if),
        ] {
            run("ip", &["-n", ns, "link", "set", dev, "mtu", &mtu, "up"]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// Add a second veth pair between the namespaces; returns (target side, initiator side).
    pub fn add_link(&self, suffix: &str) -> (String, String) {
        let (t, i) = (
            format!("{}{suffix}", self.target_if),
            format!("{}{suffix}", self.init_if),
        );
        run(
            "ip",
            &[
                "link",
                "add",
                &t,
                "netns",
                &self.target_ns,
                "type",
                "veth",
                "peer",
                "name",
                &i,
                "netns",
                &self.init_ns,
            ],
        );
        run("ip", &["-n", &self.target_ns, "link", "set", &t, "up"]);
        run("ip", &["-n", &self.init_ns, "link", "set", &i, "up"]);
        (t, i)
    }

    /// Steer the initiator side's transmissions by CPU (XPS): a sender pinned to CPU `c`
    /// transmits on TX queue `c`, which the veth delivers to the target's RX queue `c`.
    pub fn steer_by_cpu(&self, queues: u32) {
        for q in 0..queues {
            let path = format!("/sys/class/net/{}/queues/tx-{q}/xps_cpus", self.init_if);
            let mask = format!("{:x}", 1u64 << q);
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.init_ns,
                    "sh",
                    "-c",
                    &format!("echo {mask} > {path}"),
                ],
            );
        }
    }

    /// A sparse backing file of `bytes` in the lab's tmpfs directory.
    pub fn image(&self, name: &str, bytes: u64) -> PathBuf {
        let p = self.dir.join(name);
        File::create(&p).unwrap().set_len(bytes).unwrap();
        p
    }

    /// Run a command in the initiator namespace; returns (status, stdout, stderr).
    pub fn init_exec(&self, cmd: &[&str]) -> (ExitStatus, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.init_ns])
            .args(cmd)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// Whether an XDP program is attached to the target interface.
    pub fn xdp_attached(&self) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.target_ns, "-d", "link", "show", &self.target_if])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }

    /// Start xblade in the target namespace with `args` (NETIF is the lab's target interface,
    /// substitute `{if}`), and wait until it serves.
    pub fn xblade(&self, args: &[&str]) -> Daemon {
        Daemon::start(self, args).unwrap_or_else(|log| panic!("xblade did not start:\n{log}"))
    }

    /// Start xblade and expect it to fail; returns its exit status and log.
    pub fn xblade_fails(&self, args: &[&str]) -> (ExitStatus, String) {
        match Daemon::start(self, args) {
            Ok(mut d) => {
                let log = d.log();
                d.kill9();
                panic!("xblade started but should have failed:\n{log}");
            }
            Err(log) => {
                let mut c = self.spawn(args, &self.dir.join("fail.log"));
                (c.wait().unwrap(), log)
            }
        }
    }

    fn spawn(&self, args: &[&str], log: &Path) -> Child {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{if}", &self.target_if))
            .collect();
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.target_ns,
                env!("CARGO_BIN_EXE_xblade"),
            ])
            .args(&args)
            .env("XBLADE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log).unwrap())
            .spawn()
            .unwrap()
    }

    /// An AoE client on the initiator side.
    pub fn client(&self) -> Client {
        Client::open(&self.init_ns, &self.init_if)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.target_ns])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.target_ns])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.init_ns])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running xblade.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(lab: &Lab, args: &[&str]) -> Result<Daemon, String> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let log = lab.dir.join(format!("xblade-{n}.log"));
        let mut child = lab.spawn(args, &log);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("serving") {
                return Ok(Daemon { child, log });
            }
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("exit {status}\n{text}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("timeout\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait (at most 10 s); returns the exit status.
    pub fn stop(mut self) -> (ExitStatus, String) {
        // `ip netns exec` execs xblade, so the child's pid is xblade's.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "xblade ignored SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `f` on a thread that has entered network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let nsf = File::open(&path).expect("netns file");
        // SAFETY: setns on a valid namespace fd; it changes only this (new, short-lived) thread.
        let rc = unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// A raw AF_PACKET AoE initiator bound to one interface.
pub struct Client {
    fd: OwnedFd,
    pub mac: Mac,
    pub target: Mac,
    pub shelf: u16,
    pub slot: u8,
    tag: u32,
}

impl Client {
    pub fn open(ns: &str, ifname: &str) -> Client {
        // /sys shows the mounting namespace, so ask `ip` for the peer's index and MAC.
        let out = Command::new("ip")
            .args(["-n", ns, "-o", "link", "show", "dev", ifname])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let idx: i32 = text
            .split(':')
            .next()
            .unwrap()
            .trim()
            .parse()
            .expect("ifindex");
        let mac = text
            .split("link/ether ")
            .nth(1)
            .expect("MAC")
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let (fd, mac) = in_netns(ns, move || {
            let proto = 0x88a2u16.to_be();
            // SAFETY: plain socket(2) call.
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
            assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
            // SAFETY: `raw` is a fresh fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: zeroed sockaddr_ll is a valid value of the plain-data struct.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_protocol = proto;
            sa.sll_ifindex = idx;
            let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: `sa` is a valid sockaddr_ll of `len` bytes.
            let rc = unsafe { libc::bind(raw, (&sa as *const libc::sockaddr_ll).cast(), len) };
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            (fd, aoe::wire::parse_mac(mac.trim()).unwrap())
        });
        let mut c = Client {
            fd,
            mac,
            target: BROADCAST,
            shelf: 0xffff,
            slot: 0xff,
            tag: 1,
        };
        c.set_timeout(Duration::from_millis(200));
        c
    }

    fn set_timeout(&mut self, d: Duration) {
        let tv = libc::timeval {
            tv_sec: d.as_secs() as i64,
            tv_usec: i64::from(d.subsec_micros()),
        };
        // SAFETY: SO_RCVTIMEO takes a timeval; `tv` is valid for the call.
        unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: sending from a valid buffer of frame.len() bytes on our bound socket.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n as usize,
            frame.len(),
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Next AoE response (R=1) within the socket timeout, or None.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 9100];
        loop {
            // SAFETY: receiving into a valid, exclusively borrowed buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return None;
            }
            let f = &buf[..n as usize];
            if f.len() >= 24 && f[14] & aoe::wire::FLAG_R != 0 {
                return Some(f.to_vec());
            }
        }
    }

    /// All responses until `quiet` passes with none.
    pub fn drain(&self) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        while let Some(f) = self.recv() {
            v.push(f);
        }
        v
    }

    pub fn next_tag(&mut self) -> u32 {
        self.tag = self.tag.wrapping_add(1) & 0x7fff_ffff;
        self.tag
    }

    pub fn addr(&mut self) -> Addr {
        let tag = self.next_tag();
        Addr {
            src: self.mac,
            dst: self.target,
            shelf: self.shelf,
            slot: self.slot,
            tag,
        }
    }

    /// Send `frame` (whose tag is `tag`) and wait for the response with that tag.
    pub fn transact(&self, frame: &[u8], tag: u32) -> Option<Vec<u8>> {
        self.send(frame);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Some(r) = self.recv() {
                if u32::from_be_bytes([r[20], r[21], r[22], r[23]]) == tag {
                    return Some(r);
                }
            }
        }
        None
    }

    /// Discover `shelf.slot` by a broadcast config query and aim at it.
    pub fn discover(&mut self, shelf: u16, slot: u8) -> Vec<u8> {
        self.shelf = shelf;
        self.slot = slot;
        self.target = BROADCAST;
        let a = self.addr();
        let mut f = vec![0u8; 128];
        let n = initiator::config_request(&mut f, &a, ccmd::READ, b"");
        let r = self
            .transact(&f[..n], a.tag)
            .expect("no answer to the config query");
        self.target = parse_response(&r).unwrap().src;
        r
    }

    pub fn ata(&mut self, req: &AtaRequest<'_>) -> Vec<u8> {
        let a = self.addr();
        let mut f = vec![0u8; 9100];
        let n = initiator::ata_request(&mut f, &a, req);
        self.transact(&f[..n], a.tag)
            .unwrap_or_else(|| panic!("no answer to {req:?}"))
    }

    /// (status, error, data) of an ATA response.
    pub fn ata_regs(resp: &[u8]) -> (u8, u8, Vec<u8>) {
        match parse_response(resp).unwrap().body {
            Body::Ata {
                status, err, data, ..
            } => (status, err, data.to_vec()),
            b => panic!(
                "not an ATA response: {b:?} (E={:?})",
                parse_response(resp).unwrap().error
            ),
        }
    }

    pub fn write(&mut self, lba: u64, data: &[u8]) -> (u8, u8) {
        let r = self.ata(&AtaRequest::write(lba, data));
        let (s, e, _) = Self::ata_regs(&r);
        (s, e)
    }

    pub fn read(&mut self, lba: u64, sectors: u8) -> (u8, u8, Vec<u8>) {
        let r = self.ata(&AtaRequest::read(lba, sectors));
        let (s, e, mut d) = Self::ata_regs(&r);
        d.truncate(usize::from(sectors) * 512);
        (s, e, d)
    }
}

/// Deterministic sector content: LBA and a seed, so any sector can be checked alone.
pub fn pattern(seed: u64, lba: u64, sectors: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(usize::from(sectors) * 512);
    for s in 0..u64::from(sectors) {
        let mut x = (seed ^ (lba + s)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    v
}

/// Read `len` bytes at `offset` of a file.
pub fn file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}
