//! Test support for the daemon's end-to-end tests: a network-namespace lab joined by veth, the
//! `xblade` binary run inside it, and a raw AF_PACKET AoE initiator built on the `aoe` crate.
//!
//! These tests need root (netns, XDP). Without it they print a loud `SKIPPED (needs root)` line
//! and pass, except under `CI=true`, where they fail.
#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aoe::initiator::{self, parse_response, Addr, AtaRequest, Body};
use aoe::wire::{ccmd, Mac, BROADCAST};
use labkit::{ip, Options, RawSocket, VethLab};

/// True if the test may run; otherwise prints why it is skipped (or panics under CI=true).
pub fn privileged(test: &str) -> bool {
    labkit::privileged(test, "network namespaces, veth and XDP need root")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The daemon under test: this build's, or `XBLADE_TEST_BIN` (to show that a test fails on an
/// older build).
pub fn xblade_bin() -> String {
    std::env::var("XBLADE_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_xblade").to_string())
}

/// Whether the daemon under test has a control socket (an older build given by
/// `XBLADE_TEST_BIN` may not).
fn knows_control() -> bool {
    static KNOWS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KNOWS.get_or_init(|| {
        Command::new(xblade_bin())
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--control"))
            .unwrap_or(false)
    })
}

/// Two namespaces, `target` and `initiator`, joined by a veth pair, with `lo` up in both; and a
/// tmpfs directory for images and logs. All removed on drop, also on panic.
pub struct Lab {
    veth: VethLab,
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
        let opts = Options {
            mtu,
            queues,
            lo_up: true,
            ..Options::default()
        };
        let veth = VethLab::new("xb", opts);
        let dir = PathBuf::from(format!("/dev/shm/xblade-test-{}", veth.ns_a()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Lab { veth, dir }
    }

    pub fn target_ns(&self) -> &str {
        self.veth.ns_a()
    }

    pub fn target_if(&self) -> &str {
        self.veth.if_a()
    }

    pub fn init_ns(&self) -> &str {
        self.veth.ns_b()
    }

    pub fn init_if(&self) -> &str {
        self.veth.if_b()
    }

    /// Add a second veth pair between the namespaces; returns (target side, initiator side).
    pub fn add_link(&self, suffix: &str) -> (String, String) {
        self.veth.add_link(suffix)
    }

    /// Steer the initiator side's transmissions by CPU (XPS): a sender pinned to CPU `c`
    /// transmits on TX queue `c`, which the veth delivers to the target's RX queue `c`.
    pub fn steer_by_cpu(&self, queues: u32) {
        for q in 0..queues {
            let path = format!("/sys/class/net/{}/queues/tx-{q}/xps_cpus", self.init_if());
            let mask = format!("{:x}", 1u64 << q);
            ip(&[
                "netns",
                "exec",
                self.init_ns(),
                "sh",
                "-c",
                &format!("echo {mask} > {path}"),
            ]);
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
            .args(["netns", "exec", self.init_ns()])
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
        labkit::link_details(self.target_ns(), self.target_if()).contains("prog/xdp")
    }

    /// Start xblade in the target namespace with `args` (NETIF is the lab's target interface,
    /// substitute `{if}`), and wait until it serves.
    pub fn xblade(&self, args: &[&str]) -> Daemon {
        self.xblade_with(&[], args)
    }

    /// Start xblade and expect it to fail; returns its exit status and log.
    pub fn xblade_fails(&self, args: &[&str]) -> (ExitStatus, String) {
        self.xblade_fails_with(&[], args)
    }

    /// A TOML configuration (in the lab's directory) serving `paths` as shelf 1, slots 0, 1, …
    /// on the lab's target interface, each advertising `bufcnt`.
    pub fn config_file(&self, paths: &[&Path], bufcnt: u16) -> PathBuf {
        let mut toml = format!("[[interface]]\nname = \"{}\"\n", self.target_if());
        for (slot, path) in paths.iter().enumerate() {
            toml += &format!(
                "\n[[export]]\nshelf = 1\nslot = {slot}\npath = \"{}\"\nbufcnt = {bufcnt}\n",
                path.display()
            );
        }
        let conf = self.dir.join("xblade.toml");
        std::fs::write(&conf, toml).unwrap();
        conf
    }

    /// Like [`Lab::xblade`], with `prefix` run before the binary inside the namespace (a
    /// command that execs the rest, such as `taskset -c 1` or `env VAR=VALUE`, so that the
    /// daemon's pid is the child's); `{if}` is substituted in `prefix` too.
    pub fn xblade_with(&self, prefix: &[&str], args: &[&str]) -> Daemon {
        Daemon::start_with(self, prefix, args)
            .unwrap_or_else(|log| panic!("xblade did not start:\n{log}"))
    }

    /// Like [`Lab::xblade_fails`], with `prefix` (see [`Lab::xblade_with`]).
    pub fn xblade_fails_with(&self, prefix: &[&str], args: &[&str]) -> (ExitStatus, String) {
        match Daemon::start_with(self, prefix, args) {
            Ok(mut d) => {
                let log = d.log();
                d.kill9();
                panic!("xblade started but should have failed:\n{log}");
            }
            Err(log) => {
                let mut c = self.spawn_with(prefix, args, &self.dir.join("fail.log"));
                (c.wait().unwrap(), log)
            }
        }
    }

    fn spawn_with(&self, prefix: &[&str], args: &[&str], log: &Path) -> Child {
        let subst = |v: &[&str]| -> Vec<String> {
            v.iter()
                .map(|a| a.replace("{if}", self.target_if()))
                .collect()
        };
        // Every daemon of a lab gets the lab's control socket and state directory, unless the
        // test names its own: never /run/xblade or /var/lib/xblade. (Not an older build given
        // by XBLADE_TEST_BIN that does not know the options.)
        let mut own = Vec::new();
        let older = !knows_control();
        if !older && !args.contains(&"--control") {
            own.push("--control".to_owned());
            own.push(self.control_path().display().to_string());
        }
        if !older && !args.contains(&"--state-dir") {
            own.push("--state-dir".to_owned());
            own.push(self.state_dir().display().to_string());
        }
        Command::new("ip")
            .args(["netns", "exec", self.target_ns()])
            .args(subst(prefix))
            .arg(xblade_bin())
            .args(subst(args))
            .args(own)
            .env("XBLADE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log).unwrap())
            .spawn()
            .unwrap()
    }

    /// The control socket of the lab's daemons.
    pub fn control_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The state directory of the lab's daemons.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Run the client command `xblade ARGS --control SOCKET` (outside the namespaces: the
    /// socket is a file); returns whether it succeeded, its stdout and its stderr.
    pub fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(xblade_bin())
            .args(args)
            .arg("--control")
            .arg(self.control_path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `xblade status --json`, parsed.
    pub fn status(&self) -> xblade::status::Status {
        let (ok, out, err) = self.ctl(&["status", "--json"]);
        assert!(ok, "xblade status failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}\n{out}"))
    }

    /// An AoE client on the initiator side.
    pub fn client(&self) -> Client {
        Client::open(self.init_ns(), self.init_if())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The namespaces (and what still runs in them) go when `veth` drops, after this.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running xblade.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start_with(lab: &Lab, prefix: &[&str], args: &[&str]) -> Result<Daemon, String> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let log = lab.dir.join(format!("xblade-{n}.log"));
        let mut child = lab.spawn_with(prefix, args, &log);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("serving workers=") {
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
    pub fn stop(self) -> (ExitStatus, String) {
        // `ip netns exec` execs xblade, so the child's pid is xblade's.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit()
    }

    /// Wait (at most 10 s) for the daemon to exit on its own.
    pub fn wait_exit(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "xblade did not exit (or ignored SIGTERM):\n{}",
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

/// A raw AF_PACKET AoE initiator bound to one interface.
pub struct Client {
    sock: RawSocket,
    pub mac: Mac,
    pub target: Mac,
    pub shelf: u16,
    pub slot: u8,
    tag: u32,
}

impl Client {
    pub fn open(ns: &str, ifname: &str) -> Client {
        let sock = RawSocket::open(ns, ifname, labkit::ETH_P_AOE);
        sock.set_timeout(Duration::from_millis(200));
        Client {
            sock,
            mac: aoe::wire::parse_mac(&labkit::mac(ns, ifname)).unwrap(),
            target: BROADCAST,
            shelf: 0xffff,
            slot: 0xff,
            tag: 1,
        }
    }

    pub fn send(&self, frame: &[u8]) {
        self.sock.send(frame);
    }

    /// Next AoE response (R=1) within the socket timeout, or None.
    pub fn recv(&self) -> Option<Vec<u8>> {
        loop {
            let f = self.sock.recv()?;
            if f.len() >= 24 && f[14] & aoe::wire::FLAG_R != 0 {
                return Some(f);
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

    /// Start this client's tags at `base` (two clients on one interface see each other's
    /// replies: distinct tag ranges keep them apart).
    pub fn set_tag_base(&mut self, base: u32) {
        self.tag = base;
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

/// The sum of a worker counter (`name: N` in the "worker stopped" stats lines) over a log.
pub fn counter(log: &str, name: &str) -> u64 {
    log.split(&format!("{name}: "))
        .skip(1)
        .filter_map(|t| {
            t.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
