//! The network-namespace lab shared by the privileged tests: the root check that skips loudly
//! (and never under `CI=true`), `ip`, throwaway namespaces joined by veth pairs that are deleted
//! on drop (also when a test panics), running code inside a namespace, and an AF_PACKET socket
//! for sending and receiving raw frames there.
//!
//! Nothing here touches the root namespace beyond creating and deleting the lab's own namespaces.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The EtherType of ATA over Ethernet.
pub const ETH_P_AOE: u16 = 0x88A2;

/// True when the test can run (the effective user is root). Otherwise writes a loud
/// `{test}: SKIPPED (needs root): {needs}` line to stderr and returns false, or panics when
/// `CI=true`: CI must never skip a privileged test.
pub fn privileged(test: &str, needs: &str) -> bool {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let msg = format!("{test}: SKIPPED (needs root): {needs}");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}; CI=true forbids skipping");
    }
    // Straight to fd 2: libtest captures `eprintln!` of passing tests, and a skip must be seen.
    let _ = writeln!(io::stderr(), "\n{msg}");
    false
}

/// Runs `ip args` and returns its stdout; panics with its stderr when it fails.
#[track_caller]
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (install iproute2): {e}"));
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -d link show dev {ifname}` in namespace `ns`: MTU, queues, the XDP program, the address.
#[track_caller]
pub fn link_details(ns: &str, ifname: &str) -> String {
    ip(&["-n", ns, "-d", "link", "show", "dev", ifname])
}

/// The Ethernet address of `ifname` in namespace `ns` as `ip` prints it (`02:ab:…`).
#[track_caller]
pub fn mac(ns: &str, ifname: &str) -> String {
    let details = link_details(ns, ifname);
    details
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no Ethernet address in `{details}`"))
        .to_owned()
}

/// Runs `f` on a new thread that has joined network namespace `ns` (a name under /run/netns);
/// only that thread changes namespace. A panic in `f` propagates.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(format!("/run/netns/{ns}"))
                    .unwrap_or_else(|e| panic!("opening namespace {ns}: {e}"));
                // SAFETY: setns(2) takes an open fd (borrowed from `file`, alive for the call)
                // and a flag; it changes only the namespace of this freshly spawned thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns({ns}): {}", io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A network namespace made by `ip netns add`. On drop (also when a test panics) the processes
/// still in it are killed and it is deleted, with whatever interfaces it holds.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Adds namespace `name`; panics if it cannot (for example, because it exists).
    pub fn add(name: impl Into<String>) -> Netns {
        let name = name.into();
        // Serialised: concurrent first-time `ip netns add` race on mounting /run/netns.
        static CREATE: Mutex<()> = Mutex::new(());
        let serial = CREATE.lock().unwrap_or_else(PoisonError::into_inner);
        ip(&["netns", "add", &name]);
        drop(serial);
        // Only now the guard: a namespace that was not ours must not be deleted.
        Netns { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort, never panicking: a daemon that a failed test did not stop, then the rest.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<libc::pid_t>() {
                    // SAFETY: kill(2) takes no pointers; `pid` is a process in this namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// How a [`VethLab`] is set up. The default: MTU 1500, one queue, IPv6 on, `lo` down.
#[derive(Clone, Debug)]
pub struct Options {
    /// The MTU of both ends (of every pair, also those added by [`VethLab::add_link`]).
    pub mtu: u32,
    /// RX and TX queues of each end.
    pub queues: u32,
    /// Switch IPv6 off in both namespaces before the veth exists, so the kernel sends nothing on
    /// the link by itself.
    pub ipv6_off: bool,
    /// Bring `lo` up in both namespaces.
    pub lo_up: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            mtu: 1500,
            queues: 1,
            ipv6_off: false,
            lo_up: false,
        }
    }
}

/// Two fresh namespaces, A and B, joined by a veth pair whose ends (`if_a` in A, `if_b` in B)
/// are up. Names are `{prefix}a{pid}x{n}` and `{prefix}b{pid}x{n}` (namespace and interface
/// alike), unique per process and lab. Dropping it kills what still runs in the namespaces and
/// deletes them, and with them the veth pairs.
#[derive(Debug)]
pub struct VethLab {
    // Fields drop in order: A's namespace (and processes) first, then B's.
    a: Netns,
    b: Netns,
    if_a: String,
    if_b: String,
    opts: Options,
}

impl VethLab {
    /// Builds the lab; `prefix` (at most 3 characters keeps room for suffixes) marks the suite.
    pub fn new(prefix: &str, opts: Options) -> VethLab {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let (if_a, if_b) = (format!("{prefix}a{tag}"), format!("{prefix}b{tag}"));
        let a = Netns::add(if_a.clone());
        let b = Netns::add(if_b.clone());
        for ns in [&a, &b] {
            if opts.ipv6_off {
                in_netns(ns.name(), || {
                    for key in ["all", "default"] {
                        let knob = format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6");
                        std::fs::write(&knob, "1").unwrap_or_else(|e| panic!("{knob}: {e}"));
                    }
                });
            }
            if opts.lo_up {
                ip(&["-n", ns.name(), "link", "set", "lo", "up"]);
            }
        }
        let lab = VethLab {
            a,
            b,
            if_a,
            if_b,
            opts,
        };
        lab.veth(&lab.if_a, &lab.if_b);
        lab
    }

    /// Namespace A.
    pub fn ns_a(&self) -> &str {
        self.a.name()
    }

    /// Namespace B.
    pub fn ns_b(&self) -> &str {
        self.b.name()
    }

    /// The end of the first pair in namespace A.
    pub fn if_a(&self) -> &str {
        &self.if_a
    }

    /// The end of the first pair in namespace B.
    pub fn if_b(&self) -> &str {
        &self.if_b
    }

    /// Adds another veth pair between the namespaces, named like the first with `suffix`
    /// appended, with the lab's options and both ends up; returns (A end, B end).
    pub fn add_link(&self, suffix: &str) -> (String, String) {
        let (a, b) = (
            format!("{}{suffix}", self.if_a),
            format!("{}{suffix}", self.if_b),
        );
        self.veth(&a, &b);
        (a, b)
    }

    fn veth(&self, a: &str, b: &str) {
        for name in [a, b] {
            assert!(
                name.len() < libc::IFNAMSIZ,
                "interface name `{name}` is longer than {} bytes",
                libc::IFNAMSIZ - 1
            );
        }
        let (mtu, queues) = (self.opts.mtu.to_string(), self.opts.queues.to_string());
        let each_end = ["mtu", &mtu, "numrxqueues", &queues, "numtxqueues", &queues];
        let mut args = vec!["link", "add", a, "netns", self.ns_a()];
        args.extend(each_end);
        args.extend(["type", "veth", "peer", "name", b, "netns", self.ns_b()]);
        args.extend(each_end);
        ip(&args);
        ip(&["-n", self.ns_a(), "link", "set", a, "up"]);
        ip(&["-n", self.ns_b(), "link", "set", b, "up"]);
    }
}

/// An AF_PACKET `SOCK_RAW` socket bound to one interface inside a namespace: sends whole
/// Ethernet frames out of it, and receives the frames of one EtherType arriving on it.
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    ifname: String,
    ifindex: i32,
}

impl RawSocket {
    /// Opens the socket in `ns`, bound to `ifname`, receiving frames of EtherType `protocol`
    /// (0: none, for a socket that only sends), with a receive timeout of 5 s.
    #[track_caller]
    pub fn open(ns: &str, ifname: &str, protocol: u16) -> RawSocket {
        let sock = in_netns(ns, || {
            let proto = protocol.to_be();
            // SAFETY: socket(2) takes no pointers; the result is checked before use.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(proto),
                )
            };
            assert!(raw >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
            // SAFETY: `raw` was just returned by socket(2) and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let name = CString::new(ifname).expect("an interface name without NUL");
            // SAFETY: `name` is a NUL-terminated string, alive for the call.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(
                ifindex,
                0,
                "{ifname} in {ns}: {}",
                io::Error::last_os_error()
            );
            let ifindex = i32::try_from(ifindex).expect("an ifindex fits an i32");
            let addr = sockaddr(proto, ifindex);
            // SAFETY: `addr` is a sockaddr_ll, alive for the call, and its exact size is passed.
            let rc = unsafe { libc::bind(raw, (&raw const addr).cast(), SOCKADDR_LL_LEN) };
            assert_eq!(
                rc,
                0,
                "binding AF_PACKET to {ifname}: {}",
                io::Error::last_os_error()
            );
            RawSocket {
                fd,
                ifname: ifname.to_owned(),
                ifindex,
            }
        });
        sock.set_timeout(Duration::from_secs(5));
        sock
    }

    /// How long [`RawSocket::recv`] waits for a frame.
    pub fn set_timeout(&self, timeout: Duration) {
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).expect("a timeout in range"),
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
        };
        // SAFETY: SO_RCVTIMEO reads a timeval; `tv` is one, alive for the call, of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
    }

    /// Sends one whole frame (Ethernet header included) out of the interface; panics if the
    /// kernel refuses it or sends less.
    #[track_caller]
    pub fn send(&self, frame: &[u8]) {
        let ethertype = frame
            .get(12..14)
            .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
        let to = sockaddr(ethertype.to_be(), self.ifindex);
        // SAFETY: `frame` and `to` are alive for the call and their exact sizes are passed; the fd
        // is open (owned by `self`).
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                SOCKADDR_LL_LEN,
            )
        };
        if sent < 0 {
            let err = io::Error::last_os_error();
            panic!(
                "sending a {}-byte frame from {}: {err}",
                frame.len(),
                self.ifname
            );
        }
        assert_eq!(
            sent.unsigned_abs(),
            frame.len(),
            "short send from {}",
            self.ifname
        );
    }

    /// The next frame received, or `None` when none arrives within the timeout.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: `buf` is writable for its whole length, which is passed; the fd is open.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                buf.truncate(n.unsigned_abs());
                return Some(buf);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock => return None,
                io::ErrorKind::Interrupted => {}
                _ => panic!("AF_PACKET recv on {}: {err}", self.ifname),
            }
        }
    }
}

impl AsFd for RawSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for RawSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

const SOCKADDR_LL_LEN: libc::socklen_t = size_of::<libc::sockaddr_ll>() as libc::socklen_t;

/// A link-layer address for `ifindex` and `proto` (already in network byte order).
fn sockaddr(proto: u16, ifindex: i32) -> libc::sockaddr_ll {
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: proto,
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    }
}

/// Linux capability ABI, `linux/capability.h` (version 3: two data words).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `CAP_IPC_LOCK`, for [`drop_capability_on_this_thread`].
pub const CAP_IPC_LOCK: u32 = 14;

/// Drop capability `cap` (< 32) from the calling thread's effective set. Capabilities are per
/// thread, so a test can run one thread without, e.g., CAP_IPC_LOCK and leave the rest alone.
pub fn drop_capability_on_this_thread(cap: u32) {
    assert!(cap < 32, "only the first capability word is handled");
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget fills two CapData for version 3; both live here.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << cap);
    // SAFETY: capset reads the header and two CapData; pid 0 is the calling thread only.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}
