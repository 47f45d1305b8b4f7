//! The daemon's few direct system calls, and what it reads from /proc and /sys.

use std::io;
use std::os::fd::RawFd;

/// Wait up to `ms` milliseconds until `a` (or `b`) is readable. Interruptions count as a wakeup.
pub fn poll_readable(a: RawFd, b: Option<RawFd>, ms: i32) -> io::Result<()> {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a valid array of two pollfd for the duration of the call; a negative fd
    // is ignored by poll(2).
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Effective capabilities of this process (the `CapEff` mask of /proc/self/status).
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Capability numbers from linux/capability.h.
pub mod cap {
    /// CAP_NET_ADMIN.
    pub const NET_ADMIN: u32 = 12;
    /// CAP_NET_RAW.
    pub const NET_RAW: u32 = 13;
    /// CAP_IPC_LOCK.
    pub const IPC_LOCK: u32 = 14;
    /// CAP_SYS_ADMIN.
    pub const SYS_ADMIN: u32 = 21;
    /// CAP_BPF.
    pub const BPF: u32 = 39;
}

/// Whether capability `c` is in the effective set.
pub fn has_cap(c: u32) -> bool {
    effective_caps() & (1u64 << c) != 0
}

/// RLIMIT_MEMLOCK soft limit in bytes (`None`: unlimited).
pub fn memlock_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid, exclusively borrowed `r`.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) };
    if rc != 0 || r.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        Some(r.rlim_cur)
    }
}

/// Raise RLIMIT_MEMLOCK's soft limit to its hard limit; returns the new soft limit.
pub fn raise_memlock() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in `memlock_limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return memlock_limit();
    }
    r.rlim_cur = r.rlim_max;
    // SAFETY: setrlimit reads one valid rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) };
    memlock_limit()
}

/// An interface's MAC and MTU, from /sys/class/net.
pub fn iface_info(name: &str) -> io::Result<(aoe::Mac, u16)> {
    let dir = format!("/sys/class/net/{name}");
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}"));
    let addr = read("address").map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "network interface {name:?} does not exist ({e}): check `ip link` for its name"
            ),
        )
    })?;
    let mac = aoe::wire::parse_mac(addr.trim()).ok_or_else(|| {
        io::Error::other(format!(
            "interface {name} has no Ethernet MAC address ({addr:?})"
        ))
    })?;
    let mtu = read("mtu")?
        .trim()
        .parse::<u32>()
        .map_err(io::Error::other)?;
    Ok((mac, mtu.min(u32::from(u16::MAX)) as u16))
}

/// The host name, for IDENTIFY serial numbers.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
