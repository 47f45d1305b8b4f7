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

/// `statfs` magic of tmpfs (linux/magic.h).
pub const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `statfs` magic of ramfs (linux/magic.h).
pub const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// The filesystem type (`f_type`) of the file behind `fd`.
pub fn fs_magic(fd: RawFd) -> Option<i64> {
    // SAFETY: zeroed `statfs` is a valid value of the plain-data struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes one statfs into the valid, exclusively borrowed `st`.
    let rc = unsafe { libc::fstatfs(fd, &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

/// `fdatasync`; 0 or the negated errno.
pub fn fdatasync(fd: RawFd) -> i32 {
    // SAFETY: fdatasync has no memory arguments.
    if unsafe { libc::fdatasync(fd) } == 0 {
        0
    } else {
        -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    }
}

/// The host name, for IDENTIFY serial numbers.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A page-aligned, zero-filled anonymous memory region (bounce buffers for gathered jumbo
/// writes), unmapped on drop.
pub struct Region {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value; access goes through `&mut self` or
// through raw pointers whose use the owner (one worker thread) coordinates.
unsafe impl Send for Region {}

impl Region {
    /// Map `len` bytes (rounded up to pages), populated.
    pub fn new(len: usize) -> io::Result<Region> {
        let len = len.div_ceil(4096).max(1) * 4096;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        // SAFETY: anonymous mapping with no address hint; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Region { ptr, len })
    }

    /// Base pointer and length (for io_uring buffer registration).
    pub fn area(&self) -> (*mut u8, usize) {
        (self.ptr.as_ptr(), self.len)
    }

    /// The bytes `at..at + len`, mutably. Panics if out of range.
    pub fn slice_mut(&mut self, at: usize, len: usize) -> &mut [u8] {
        assert!(
            at.checked_add(len).is_some_and(|end| end <= self.len),
            "region access out of range"
        );
        // SAFETY: in range (checked), the mapping lives as long as `self`, and `&mut self`
        // makes this the only reference created through the region.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(at), len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// CPUs that take interrupts of `iface` (IRQ lines naming it in /proc/interrupts with a non-zero
/// count on that CPU).
pub fn irq_cpus(iface: &str) -> Vec<usize> {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    parse_irq_cpus(&text, iface)
}

fn parse_irq_cpus(text: &str, iface: &str) -> Vec<usize> {
    let mut lines = text.lines();
    let ncpu = lines
        .next()
        .map(|h| h.split_whitespace().count())
        .unwrap_or(0);
    let mut cpus = std::collections::BTreeSet::new();
    for line in lines {
        let names_iface = line
            .split_whitespace()
            .last()
            .is_some_and(|n| n == iface || n.starts_with(&format!("{iface}-")));
        if !names_iface {
            continue;
        }
        for (cpu, count) in line.split_whitespace().skip(1).take(ncpu).enumerate() {
            if count.parse::<u64>().is_ok_and(|c| c > 0) {
                cpus.insert(cpu);
            }
        }
    }
    cpus.into_iter().collect()
}

/// Default CPUs for `workers` workers: the online CPUs not in `avoid`, round robin; all CPUs
/// if avoiding would leave none.
pub fn default_cpus(workers: usize, online: usize, avoid: &[usize]) -> Vec<usize> {
    let mut pool: Vec<usize> = (0..online).filter(|c| !avoid.contains(c)).collect();
    if pool.is_empty() {
        pool = (0..online).collect();
    }
    (0..workers).map(|i| pool[i % pool.len()]).collect()
}

/// A shared mapping of an in-memory store's export range (tmpfs, ramfs): reads and writes are
/// one copy between the packet buffer and the store's pages, with no system call.
///
/// The memory is shared with other workers and processes, like a disk: it is only ever accessed
/// through raw-pointer copies, never through Rust references.
pub struct FileMap {
    base: std::ptr::NonNull<u8>,
    map_len: usize,
    /// Offset of the export's first byte inside the mapping (page alignment).
    delta: usize,
    /// Export length in bytes.
    len: u64,
}

// SAFETY: the mapping is plain shared memory owned by this value; all access is by raw-pointer
// copies whose callers guarantee their own buffers (see `read_into`/`write_from`).
unsafe impl Send for FileMap {}
// SAFETY: as above; concurrent copies into the same bytes race like concurrent writes to a disk
// block, which AoE leaves to the initiators, and no Rust reference to the memory ever exists.
unsafe impl Sync for FileMap {}

impl FileMap {
    /// Map `len` bytes of `fd` starting at byte `offset`.
    pub fn new(fd: RawFd, offset: u64, len: u64, writable: bool) -> io::Result<FileMap> {
        let page = 4096u64;
        let start = offset & !(page - 1);
        let delta = (offset - start) as usize;
        let map_len = usize::try_from(len).map_err(io::Error::other)? + delta;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a new shared mapping of a file we hold open, at a page-aligned offset; the
        // result is checked below and unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                prot,
                libc::MAP_SHARED,
                fd,
                start as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = std::ptr::NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(FileMap {
            base,
            map_len,
            delta,
            len,
        })
    }

    fn at(&self, offset: u64, len: usize) -> *mut u8 {
        assert!(
            offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.len),
            "mapped store access out of range"
        );
        self.base
            .as_ptr()
            .wrapping_add(self.delta + offset as usize)
    }

    /// Copy `len` bytes at export byte `offset` to `dst`.
    ///
    /// # Safety
    /// `dst..dst + len` must be valid for writes and not referenced elsewhere during the call.
    pub unsafe fn read_into(&self, offset: u64, dst: *mut u8, len: usize) {
        let src = self.at(offset, len);
        // SAFETY: `src..src + len` is inside the mapping (checked by `at`), `dst` is the caller's
        // guarantee, and a packet buffer never overlaps the store's mapping.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
    }

    /// Copy `len` bytes from `src` to export byte `offset`.
    ///
    /// # Safety
    /// `src..src + len` must be valid for reads during the call; the mapping must be writable.
    pub unsafe fn write_from(&self, offset: u64, src: *const u8, len: usize) {
        let dst = self.at(offset, len);
        // SAFETY: as in `read_into`, with the roles swapped.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`, once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
    }
}

/// Make SIGBUS (a mapped store that shrank under us: someone truncated the backing file) end
/// the process with a message instead of a bare crash.
pub fn explain_sigbus() {
    extern "C" fn on_sigbus(_: libc::c_int) {
        const MSG: &[u8] = b"xblade: fatal: a memory-backed export's file shrank while it was being served \
(SIGBUS on its mapping): someone truncated the backing file. Restore its size and restart xblade.\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe; MSG is a static buffer.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(70);
        }
    }
    // SAFETY: zeroed sigaction is a valid value of the plain-data struct.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int) as usize;
    // SAFETY: installing a handler that only calls async-signal-safe functions.
    unsafe { libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irq_cpus_are_read_per_interface() {
        let text = "           CPU0       CPU1       CPU2       CPU3\n\
             24:          0       9000          0          0  IR-PCI-MSI 1-edge      eth1-TxRx-0\n\
             25:          0          0          0        120  IR-PCI-MSI 2-edge      eth1-TxRx-1\n\
             26:        700          0          0          0  IR-PCI-MSI 3-edge      eth10-TxRx-0\n\
             27:        500          0          0          0  IR-PCI-MSI 4-edge      nvme0q1\n";
        assert_eq!(parse_irq_cpus(text, "eth1"), vec![1, 3]);
        assert_eq!(parse_irq_cpus(text, "eth10"), vec![0]);
        assert!(parse_irq_cpus(text, "veth0").is_empty());
    }

    #[test]
    fn default_cpus_avoid_irq_cpus_when_possible() {
        assert_eq!(default_cpus(2, 4, &[1, 3]), vec![0, 2]);
        assert_eq!(default_cpus(3, 4, &[1, 3]), vec![0, 2, 0]);
        assert_eq!(default_cpus(2, 2, &[0, 1]), vec![0, 1]);
        assert_eq!(default_cpus(1, 2, &[]), vec![0]);
    }
}
