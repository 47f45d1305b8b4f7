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

/// Default CPUs for `workers` workers, chosen inside `allowed` (the process's CPU set, see
/// [`inherited_cpus`]): the allowed CPUs not in `avoid` (those taking the NIC's interrupts),
/// round robin; all the allowed CPUs if avoiding would leave none. With more workers than CPUs
/// in that pool, workers share CPUs round robin, never leaving `allowed`. Empty only if
/// `allowed` is.
pub fn default_cpus(workers: usize, allowed: &[usize], avoid: &[usize]) -> Vec<usize> {
    let mut pool: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| !avoid.contains(c))
        .collect();
    if pool.is_empty() {
        pool = allowed.to_vec();
    }
    if pool.is_empty() {
        return Vec::new();
    }
    (0..workers).map(|i| pool[i % pool.len()]).collect()
}

/// The process's CPU set as it was at start-up: what `taskset`, systemd's `CPUAffinity=` and
/// cgroup cpusets left it (`sched_getaffinity`), ascending. Read on the first call, which
/// `main` makes in the main thread before any thread is pinned; later calls return that same
/// set, never a pinned worker's own one-CPU mask.
pub fn inherited_cpus() -> io::Result<&'static [usize]> {
    static SET: std::sync::OnceLock<Result<Vec<usize>, i32>> = std::sync::OnceLock::new();
    match SET.get_or_init(|| current_cpus().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))) {
        Ok(v) => Ok(v),
        Err(errno) => Err(io::Error::from_raw_os_error(*errno)),
    }
}

/// The calling thread's CPU affinity (`sched_getaffinity(0)`), ascending. Any number of CPUs,
/// holes included: the mask buffer grows until the kernel accepts its size.
pub fn current_cpus() -> io::Result<Vec<usize>> {
    const BITS: usize = libc::c_ulong::BITS as usize;
    // 1024 CPUs (the size of glibc's cpu_set_t) first; the kernel refuses (EINVAL) a buffer
    // smaller than its nr_cpu_ids.
    let mut words = 1024 / BITS;
    loop {
        let mut mask: Vec<libc::c_ulong> = vec![0; words];
        // SAFETY: the kernel writes at most `size` bytes into `mask`, which holds exactly that
        // many; the glibc wrapper only clears the part of the buffer the kernel did not fill.
        let rc = unsafe {
            libc::sched_getaffinity(
                0,
                std::mem::size_of_val(&mask[..]),
                mask.as_mut_ptr().cast(),
            )
        };
        if rc == 0 {
            return Ok(mask_cpus(&mask));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) || words * BITS >= 1 << 22 {
            return Err(e);
        }
        words *= 2;
    }
}

/// The CPUs whose bits are set in a kernel CPU mask (an array of `unsigned long`).
fn mask_cpus(mask: &[libc::c_ulong]) -> Vec<usize> {
    const BITS: usize = libc::c_ulong::BITS as usize;
    let mut out = Vec::new();
    for (i, w) in mask.iter().enumerate() {
        for b in 0..BITS {
            if (w >> b) & 1 != 0 {
                out.push(i * BITS + b);
            }
        }
    }
    out
}

/// Pin the calling thread to `cpu` (`sched_setaffinity(0)`). Fails if the CPU is offline or
/// outside the process's cgroup cpuset.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    const BITS: usize = libc::c_ulong::BITS as usize;
    let mut mask: Vec<libc::c_ulong> = vec![0; cpu / BITS + 1];
    mask[cpu / BITS] |= 1 << (cpu % BITS);
    // SAFETY: the kernel reads `size` bytes from `mask`, which holds exactly that many, and
    // treats the CPUs beyond them as not set.
    let rc = unsafe {
        libc::sched_setaffinity(0, std::mem::size_of_val(&mask[..]), mask.as_ptr().cast())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A CPU list the way taskset and /proc print one: `0-3,8,10-11`.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        out.push(match j - i {
            0 => sorted[i].to_string(),
            1 => format!("{},{}", sorted[i], sorted[j]),
            _ => format!("{}-{}", sorted[i], sorted[j]),
        });
        i = j + 1;
    }
    out.join(",")
}

/// Why `requested` CPUs (from `origin`, e.g. `--cpus 0,1` or `[daemon] cpus = [0] in FILE`)
/// cannot be used: `None` if every one is in `allowed`, else a message naming the refused and
/// the allowed CPUs.
pub fn cpus_outside_set(origin: &str, requested: &[usize], allowed: &[usize]) -> Option<String> {
    let mut refused: Vec<usize> = requested
        .iter()
        .copied()
        .filter(|c| !allowed.contains(c))
        .collect();
    refused.sort_unstable();
    refused.dedup();
    let (what, verb) = match refused.as_slice() {
        [] => return None,
        [c] => (format!("CPU {c}"), "is"),
        many => (
            format!(
                "CPUs {}",
                many.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            "are",
        ),
    };
    Some(format!(
        "{origin}: {what} {verb} not in this process's CPU set (allowed: {}); pick from the \
         allowed CPUs or widen the set (taskset, systemd CPUAffinity=, cgroup cpuset)",
        cpu_list(allowed)
    ))
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
    /// Bytes made huge by MADV_COLLAPSE.
    huge: u64,
    /// Bytes whose memory the store already had, so that making them huge was tried.
    huge_tried: u64,
}

// SAFETY: the mapping is plain shared memory owned by this value; all access is by raw-pointer
// copies whose callers guarantee their own buffers (see `read_into`/`write_from`).
unsafe impl Send for FileMap {}
// SAFETY: as above; concurrent copies into the same bytes race like concurrent writes to a disk
// block, which AoE leaves to the initiators, and no Rust reference to the memory ever exists.
unsafe impl Sync for FileMap {}

/// The PMD size on x86-64 and arm64 (4 KiB base pages): what a huge page maps.
const HUGE: u64 = 2 << 20;
/// `MADV_COLLAPSE` (Linux 6.1): make the range's pages huge now, whatever the tmpfs mount's
/// `huge=` option says (it only refuses when the admin wrote `deny` to `shmem_enabled`).
const MADV_COLLAPSE: libc::c_int = 25;

impl FileMap {
    /// Map `len` bytes of `fd` starting at byte `offset`, with 2 MiB pages where the file's
    /// memory allows (see [`FileMap::huge_bytes`]).
    ///
    /// Why: a random 1 KiB read from a store mapped with 4 KiB pages misses the TLB almost every
    /// time, and under nested paging that walk costs more than the copy (measured: 27% of the
    /// worker's CPU in the copy, against 8% for a store that fits the TLB). The mapping is
    /// placed so that virtual addresses and file offsets agree modulo 2 MiB, which is what lets
    /// the kernel map a huge folio with one PMD entry.
    pub fn new(fd: RawFd, offset: u64, len: u64, writable: bool) -> io::Result<FileMap> {
        let page = 4096u64;
        let start = offset & !(page - 1);
        let delta = (offset - start) as usize;
        let map_len = usize::try_from(len).map_err(io::Error::other)? + delta;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let slack = HUGE as usize;
        // SAFETY: reserving address space only (no access, no memory); checked below, and every
        // byte of it is either replaced by the file mapping or unmapped before returning.
        let hole = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len + slack,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if hole == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let hole_at = hole as usize;
        // The first address >= hole_at that is congruent to `start` modulo 2 MiB.
        let want = (start % HUGE) as usize;
        let at = hole_at + (want + slack - hole_at % slack) % slack;
        // SAFETY: `at..at + map_len` lies inside the reservation made above (at - hole_at <
        // slack), which this function owns; MAP_FIXED replaces exactly that part of it.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                map_len,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                start as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: releasing the whole reservation made above; nothing else refers to it.
            unsafe { libc::munmap(hole, map_len + slack) };
            return Err(e);
        }
        // SAFETY: giving back the reservation's parts before and after the file mapping; both
        // lie inside the reservation and outside `at..at + map_len`.
        unsafe {
            if at > hole_at {
                libc::munmap(hole, at - hole_at);
            }
            let end = at + map_len;
            let hole_end = hole_at + map_len + slack;
            if hole_end > end {
                libc::munmap(end as *mut libc::c_void, hole_end - end);
            }
        }
        let base = std::ptr::NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        let mut map = FileMap {
            base,
            map_len,
            delta,
            len,
            huge: 0,
            huge_tried: 0,
        };
        map.collapse(fd, start);
        Ok(map)
    }

    /// Make huge every 2 MiB-aligned part of the mapping whose memory the store already has:
    /// all of it when the file is fully allocated (written or `fallocate`d), else the parts
    /// whose pages are all resident. Never a hole: collapsing one would allocate memory a sparse
    /// store never used. Best effort: a refusal (old kernel, `shmem_enabled` = deny, no free
    /// 2 MiB page) leaves 4 KiB pages, which are only slower.
    fn collapse(&mut self, fd: RawFd, file_start: u64) {
        let page = 4096usize;
        // SAFETY: a zeroed stat is a valid value of the plain-data struct, filled by fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on a descriptor the caller holds open, into `st`.
        let allocated = unsafe { libc::fstat(fd, &mut st) } == 0
            && (st.st_blocks as u64) * 512 >= st.st_size as u64;
        // Which pages are in memory: None when all are. mincore calls an fallocated page absent
        // (it is not "up to date" until written), yet its memory is taken, so a fully allocated
        // file is not asked.
        let resident = if allocated {
            None
        } else {
            let mut v = vec![0u8; self.map_len.div_ceil(page)];
            // SAFETY: mincore on our own mapping (base..base + map_len), writing one byte per
            // page into `v`, which has exactly that many.
            let r = unsafe {
                libc::mincore(
                    self.base.as_ptr().cast(),
                    self.map_len,
                    v.as_mut_ptr().cast(),
                )
            };
            if r != 0 {
                return;
            }
            Some(v)
        };
        let huge = HUGE as usize;
        // The first 2 MiB boundary of the file at or after the mapping's start, as a mapping
        // offset; the mapping's addresses agree with file offsets modulo 2 MiB.
        let mut at = ((file_start.div_ceil(HUGE) * HUGE) - file_start) as usize;
        while at + huge <= self.map_len {
            let all_in = resident
                .as_ref()
                .is_none_or(|r| r[at / page..(at + huge) / page].iter().all(|b| b & 1 == 1));
            if all_in {
                self.huge_tried += HUGE;
                let addr = self.base.as_ptr().wrapping_add(at);
                // SAFETY: advice on 2 MiB of our own mapping (at + huge <= map_len);
                // MADV_COLLAPSE changes how pages are mapped, never the data.
                let r = unsafe { libc::madvise(addr.cast(), huge, MADV_COLLAPSE) };
                if r == 0 {
                    self.huge += HUGE;
                } else if io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                    return; // not supported here: do not try the rest
                }
            }
            at += huge;
        }
    }

    /// The export's length in bytes.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// How many bytes of the mapping use 2 MiB pages (0: none could).
    pub fn huge_bytes(&self) -> u64 {
        self.huge
    }

    /// How many bytes were candidates for 2 MiB pages: whole aligned 2 MiB extents whose
    /// memory the store already had (0 for a sparse, never written store).
    pub fn huge_tried(&self) -> u64 {
        self.huge_tried
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

    /// Hint the CPU to start loading the cache lines of export bytes `offset..offset + len`.
    /// A hint only: no memory is accessed, and a bad address is ignored by the hardware.
    pub fn prefetch(&self, offset: u64, len: usize) {
        prefetch(self.at(offset, len), len);
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

/// How much of one range [`prefetch`] asks for.
const PREFETCH_MAX: usize = 512;

/// Hint the CPU to start loading the cache lines of `p..p + len` (at most [`PREFETCH_MAX`]).
/// A hint only: no memory is accessed, and a bad address is ignored by the hardware.
fn prefetch(p: *const u8, len: usize) {
    // The first 512 bytes: enough for the CPU's stream prefetcher to fetch the rest of a
    // larger range, and a batch of 8 KiB reads prefetched whole would overflow the caches
    // before the copies run. Measured on 1 KiB and 8 KiB random reads from a 256 MiB store:
    // 512 was as good as the whole range for 1 KiB and 7% better for 8 KiB.
    each_line(p.cast_mut(), len, |l| prefetch_line(l));
}

/// Hint the CPU to start taking ownership of the cache lines of `p..p + len` (at most
/// [`PREFETCH_MAX`]) for writing. A hint only, like [`prefetch`].
pub fn prefetch_for_write(p: *mut u8, len: usize) {
    each_line(p, len, prefetchw_line);
}

/// Calls `hint` on every 64-byte line of `p..p + min(len, PREFETCH_MAX)`.
#[inline(always)]
fn each_line(p: *mut u8, len: usize, hint: impl Fn(*mut u8)) {
    let len = len.min(PREFETCH_MAX);
    let mut i = 0;
    while i < len {
        hint(p.wrapping_add(i));
        i += 64;
    }
}

#[inline(always)]
fn prefetchw_line(p: *mut u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHW is a hint: it never faults and never changes memory, whatever `p` is
    // (a CPU without it executes it as a NOP).
    unsafe {
        std::arch::asm!("prefetchw [{p}]", p = in(reg) p, options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[inline(always)]
fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it never faults and never changes memory, whatever `p` is.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
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

    /// A file on /dev/shm (tmpfs) holding `len` bytes: a pattern where `written`, else a hole.
    fn shm_file(name: &str, len: u64, written: u64) -> std::fs::File {
        use std::io::Write;
        let path = format!("/dev/shm/xblade-sys-test-{}-{name}", std::process::id());
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create a file on /dev/shm");
        std::fs::remove_file(&path).unwrap();
        let pattern: Vec<u8> = (0..written).map(|i| (i % 251) as u8).collect();
        f.write_all(&pattern).unwrap();
        f.set_len(len).unwrap();
        f
    }

    fn shmem_huge_denied() -> bool {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
            .map_or(true, |s| s.contains("[deny]"))
    }

    #[test]
    fn file_map_reads_the_right_bytes_and_uses_huge_pages_where_allocated() {
        use std::os::fd::AsRawFd;
        const MIB: u64 = 1 << 20;
        let f = shm_file("full", 6 * MIB, 6 * MIB);
        // An export starting 512 bytes into the second MiB, 4 MiB long: only file bytes
        // 2..4 MiB form a whole aligned huge page inside it.
        let off = MIB + 512;
        let map = FileMap::new(f.as_raw_fd(), off, 4 * MIB, false).unwrap();
        for at in [0, 511, 4096, MIB - 100, 3 * MIB, 4 * MIB - 1024] {
            let mut buf = [0u8; 1024];
            let n = buf.len().min((4 * MIB - at) as usize);
            // SAFETY: `buf` is ours and large enough.
            unsafe { map.read_into(at, buf.as_mut_ptr(), n) };
            for (i, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, ((off + at + i as u64) % 251) as u8, "byte {at}+{i}");
            }
        }
        if shmem_huge_denied() {
            eprintln!("shmem_enabled is deny here: checking only that nothing was made huge");
            assert_eq!(map.huge_bytes(), 0);
        } else {
            assert_eq!(map.huge_bytes(), 2 * MIB);
        }
    }

    #[test]
    fn file_map_makes_a_fallocated_store_huge() {
        use std::os::fd::AsRawFd;
        const MIB: u64 = 1 << 20;
        let f = shm_file("falloc", 0, 0);
        // SAFETY: fallocate on a file we own; no memory is involved.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 4 * MIB as libc::off_t) };
        assert_eq!(r, 0, "fallocate on tmpfs");
        let map = FileMap::new(f.as_raw_fd(), 0, 4 * MIB, true).unwrap();
        let want = if shmem_huge_denied() { 0 } else { 4 * MIB };
        assert_eq!(map.huge_bytes(), want);
        let mut buf = [1u8; 512];
        // SAFETY: `buf` is ours and large enough.
        unsafe { map.read_into(3 * MIB, buf.as_mut_ptr(), 512) };
        assert_eq!(buf, [0u8; 512], "a fallocated store reads as zeros");
    }

    #[test]
    fn file_map_never_fills_a_sparse_store() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        const MIB: u64 = 1 << 20;
        // 4 MiB written, then 12 MiB of hole: only the written part may become huge.
        let f = shm_file("sparse", 16 * MIB, 4 * MIB);
        let map = FileMap::new(f.as_raw_fd(), 0, 16 * MIB, true).unwrap();
        let want = if shmem_huge_denied() { 0 } else { 4 * MIB };
        assert_eq!(map.huge_bytes(), want);
        assert_eq!(
            map.huge_tried(),
            4 * MIB,
            "only the written part is a candidate"
        );
        let allocated = f.metadata().unwrap().blocks() * 512;
        assert!(
            allocated <= 4 * MIB,
            "the sparse store grew to {allocated} bytes"
        );
    }

    #[test]
    fn default_cpus_avoid_irq_cpus_when_possible() {
        assert_eq!(default_cpus(2, &[0, 1, 2, 3], &[1, 3]), vec![0, 2]);
        assert_eq!(default_cpus(3, &[0, 1, 2, 3], &[1, 3]), vec![0, 2, 0]);
        assert_eq!(default_cpus(2, &[0, 1], &[0, 1]), vec![0, 1]);
        assert_eq!(default_cpus(1, &[0, 1], &[]), vec![0]);
    }

    #[test]
    fn default_cpus_stay_inside_the_process_cpu_set() {
        // `taskset -c 1`: never CPU 0, whatever the IRQs say.
        assert_eq!(default_cpus(1, &[1], &[]), vec![1]);
        assert_eq!(
            default_cpus(1, &[1], &[1]),
            vec![1],
            "no room to avoid the IRQ CPU"
        );
        // More workers than allowed CPUs: they share them round robin, inside the set.
        assert_eq!(default_cpus(3, &[1], &[]), vec![1, 1, 1]);
        assert_eq!(default_cpus(5, &[2, 3], &[0]), vec![2, 3, 2, 3, 2]);
        // A set with holes, above 64 CPUs, IRQ CPUs avoided while others are left.
        let allowed = [3, 5, 64, 65, 130, 200];
        assert_eq!(
            default_cpus(4, &allowed, &[5, 64, 7]),
            vec![3, 65, 130, 200]
        );
        assert_eq!(
            default_cpus(6, &allowed, &[3, 5, 64, 65, 130]),
            vec![200, 200, 200, 200, 200, 200]
        );
        // IRQ CPUs outside the set change nothing.
        assert_eq!(default_cpus(2, &[4, 6], &[0, 1, 2]), vec![4, 6]);
        assert!(default_cpus(2, &[], &[]).is_empty());
    }

    #[test]
    fn cpu_masks_lists_and_refusals() {
        const BITS: usize = libc::c_ulong::BITS as usize;
        let mut mask: Vec<libc::c_ulong> = vec![0; 256 / BITS];
        for c in [1usize, 2, 3, 63, 64, 100, 255] {
            mask[c / BITS] |= 1 << (c % BITS);
        }
        assert_eq!(mask_cpus(&mask), vec![1, 2, 3, 63, 64, 100, 255]);
        assert_eq!(cpu_list(&[1, 2, 3, 63, 64, 100, 255]), "1-3,63,64,100,255");
        assert_eq!(cpu_list(&[7, 0, 1, 2, 3, 9]), "0-3,7,9");
        assert_eq!(cpu_list(&[]), "");
        assert_eq!(cpus_outside_set("--cpus 1,2", &[1, 2], &[0, 1, 2]), None);
        assert_eq!(
            cpus_outside_set("--cpus 0", &[0], &[1]).unwrap(),
            "--cpus 0: CPU 0 is not in this process's CPU set (allowed: 1); pick from the \
             allowed CPUs or widen the set (taskset, systemd CPUAffinity=, cgroup cpuset)"
        );
        let m = cpus_outside_set(
            "[daemon] cpus = [0, 70, 2, 0]",
            &[0, 70, 2, 0],
            &[2, 3, 4, 5],
        )
        .unwrap();
        assert!(
            m.starts_with(
                "[daemon] cpus = [0, 70, 2, 0]: CPUs 0,70 are not in this process's CPU set \
                 (allowed: 2-5);"
            ),
            "{m}"
        );
    }

    #[test]
    fn this_thread_can_be_pinned_inside_its_set_and_not_outside() {
        let set = current_cpus().unwrap();
        assert!(!set.is_empty());
        // On a thread of its own: pinning must not narrow the test harness's threads.
        let last = *set.last().unwrap();
        std::thread::spawn(move || {
            pin_current_thread(last).unwrap();
            assert_eq!(current_cpus().unwrap(), vec![last]);
            // A CPU that does not exist.
            assert!(pin_current_thread(1 << 20).is_err());
            assert_eq!(
                current_cpus().unwrap(),
                vec![last],
                "a failed pin changes nothing"
            );
        })
        .join()
        .unwrap();
        assert_eq!(inherited_cpus().unwrap(), set.as_slice());
    }
}
