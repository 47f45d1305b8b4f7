//! Least privilege once the daemon serves: no capabilities, and a seccomp allow-list on every
//! worker thread.
//!
//! Start-up needs root's network and BPF powers: it loads the XDP program and creates its maps
//! (`CAP_BPF`), attaches it (`CAP_NET_ADMIN`), opens AF_XDP sockets (`CAP_NET_RAW`), pins packet
//! buffers (`CAP_IPC_LOCK`) and opens the stores. None of that is done again once every worker
//! is built, and what the process still does needs no capability:
//! - AF_XDP `poll`/`sendto`/`recvfrom` on sockets already bound;
//! - io_uring on rings already set up, over registered files and buffers (memory already
//!   pinned and accounted);
//! - `bpf()` on map fds already open (the XDP counters at exit; updating a map, such as an
//!   access list, at run time): since Linux 6.5 only creating maps and loading programs check
//!   `CAP_BPF`, and xblade needs Linux 6.6;
//! - detaching XDP at exit: `BPF_LINK_DETACH` and `close` on the link fd xblade created.
//!   Only netlink-attached XDP (kernels before 5.9, which xblade does not support) would need
//!   `CAP_NET_ADMIN` to detach.
//!
//! So [`drop_capabilities`] empties every capability set ([`KEPT`] is empty): effective,
//! permitted, inheritable and ambient, and the bounding set when it holds `CAP_SETPCAP` (root
//! does; the systemd units do not grant it, and limit the bounding set to the four start-up
//! capabilities themselves); and it sets `no_new_privs`, so that no `execve` can give any
//! back. It runs in the main thread after the workers are built and before their threads are
//! created: capability sets are per thread, and a thread inherits its creator's, so dropping
//! them while the main thread is the only thread ([`drop_capabilities`] checks; io_uring's
//! kernel threads aside) drops them for every thread the process will have.
//! `tests/privilege.rs` reads them back from `/proc/PID/task/*/status`.
//!
//! Each worker thread then installs [`WorkerFilter`] at the start of its life (after pinning):
//! a seccomp allow-list of the system calls a worker makes, with their arguments narrowed
//! where the worker's use allows ([`WORKER_SYSCALLS`] says why each is there). Anything else
//! kills the whole process (`SECCOMP_RET_KILL_PROCESS`, SIGSYS): see SECURITY.md for why kill
//! rather than `EPERM`. The kernel logs the kill (audit record type 1326, with the thread name
//! and the system call number); systemd's `Restart=on-failure` restarts the daemon.

use std::collections::BTreeMap;
use std::io;

use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// The capabilities the daemon keeps after start-up, each with why: none (see the module
/// documentation for what runtime does without them).
pub const KEPT: &[(Capability, &str)] = &[];

/// Why privileges could not be dropped or the filter not built or installed.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Capability sets are per thread: they must be dropped while one thread exists.
    #[error(
        "dropping capabilities: the process has {0} threads, but capability sets are per \
         thread and must be dropped before any other thread exists"
    )]
    Threads(usize),
    /// A capability system call failed.
    #[error("dropping capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
    /// The kernel's view after the drop is not what was asked for.
    #[error(
        "dropping capabilities: /proc/thread-self/status still shows {set} {have:#x} after \
         the drop (wanted {want:#x})"
    )]
    Left {
        /// The set (CapEff, CapPrm, …).
        set: &'static str,
        /// Its mask.
        have: u64,
        /// The mask asked for.
        want: u64,
    },
    /// `prctl(PR_SET_NO_NEW_PRIVS)` or reading /proc failed.
    #[error("dropping capabilities: {0}")]
    Io(#[from] io::Error),
    /// seccompiler refused the filter (a bug in the table below).
    #[error("building the workers' seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("installing the seccomp filter on a worker thread: {0}")]
    Install(#[from] seccompiler::Error),
}

/// The capability masks of a thread, from the `Cap*` lines of a `/proc/…/status` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapMasks {
    /// `CapInh`.
    pub inheritable: u64,
    /// `CapPrm`.
    pub permitted: u64,
    /// `CapEff`.
    pub effective: u64,
    /// `CapBnd`.
    pub bounding: u64,
    /// `CapAmb`.
    pub ambient: u64,
}

impl CapMasks {
    /// Parse the `Cap*` lines of a `/proc/PID/status` (or `/proc/PID/task/TID/status`) text.
    pub fn parse(status: &str) -> CapMasks {
        let mut m = CapMasks::default();
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let Ok(v) = u64::from_str_radix(value.trim(), 16) else {
                continue;
            };
            match key {
                "CapInh" => m.inheritable = v,
                "CapPrm" => m.permitted = v,
                "CapEff" => m.effective = v,
                "CapBnd" => m.bounding = v,
                "CapAmb" => m.ambient = v,
                _ => {}
            }
        }
        m
    }

    /// This thread's masks.
    pub fn current() -> io::Result<CapMasks> {
        Ok(Self::parse(&std::fs::read_to_string(
            "/proc/thread-self/status",
        )?))
    }
}

/// The mask of [`KEPT`], as `/proc/PID/status` shows it.
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |m, (c, _)| m | c.bitmask())
}

/// Capability names of a mask (`CAP_NET_ADMIN`, …), lowest first.
pub fn cap_names(mask: u64) -> Vec<String> {
    let mut all: Vec<Capability> = caps::all().into_iter().collect();
    all.sort_by_key(|c| c.index());
    all.into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .map(|c| c.to_string())
        .collect()
}

/// `PF_IO_WORKER` (linux/sched.h): a kernel io_uring thread (`iou-sqp-*`, `iou-wrk-*`).
const PF_IO_WORKER: u64 = 0x10;

/// The number of threads of this process that run its code: not counting io_uring's kernel
/// threads (the `--sqpoll` submission thread, io-wq workers), which appear among its tasks.
fn threads() -> io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Ok(stat) = std::fs::read_to_string(entry?.path().join("stat")) else {
            continue; // ended meanwhile
        };
        // Field 9 (flags) counts from the `)` that ends the name (field 2).
        let flags = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(6))
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| {
                io::Error::other(format!("unexpected /proc/self/task/*/stat: {stat}"))
            })?;
        if flags & PF_IO_WORKER == 0 {
            n += 1;
        }
    }
    Ok(n)
}

/// Drop every capability not in `keep` (a mask) from the bounding set, up to the kernel's
/// last capability (`/proc/sys/kernel/cap_last_cap`, which may name more than this build
/// knows). Needs `CAP_SETPCAP`.
fn drop_bounding(keep: u64) -> Result<(), PrivilegeError> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .map_err(|e| io::Error::other(format!("/proc/sys/kernel/cap_last_cap: {e}")))?;
    for cap in 0..=last.min(63) {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) takes no pointers; it removes one
        // capability from the calling thread's bounding set.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_DROP,
                libc::c_ulong::from(cap),
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if rc != 0 {
            return Err(io::Error::other(format!(
                "PR_CAPBSET_DROP of capability {cap}: {}",
                io::Error::last_os_error()
            ))
            .into());
        }
    }
    Ok(())
}

/// Drop every capability but [`KEPT`] from every set of this process, and set
/// `no_new_privs`. Must run while the calling thread is the process's only thread (checked):
/// the threads created afterwards inherit its sets. Logs what it did.
pub fn drop_capabilities() -> Result<(), PrivilegeError> {
    let n = threads()?;
    if n != 1 {
        return Err(PrivilegeError::Threads(n));
    }
    let keep: CapsHashSet = KEPT.iter().map(|(c, _)| *c).collect();
    let before = CapMasks::current()?;
    // The bounding set needs CAP_SETPCAP, so it goes first, while the effective set has it.
    let bounding = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)?;
    if bounding {
        drop_bounding(kept_mask())?;
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let effective = &caps::read(None, CapSet::Effective)? & &keep;
    caps::set(None, CapSet::Effective, &effective)?;
    let permitted = &caps::read(None, CapSet::Permitted)? & &keep;
    caps::set(None, CapSet::Permitted, &permitted)?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers and only sets a flag of
    // the calling thread (inherited by the threads it creates).
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error().into());
    }

    let after = CapMasks::current()?;
    let want = kept_mask();
    for (set, have, want) in [
        ("CapEff", after.effective, before.effective & want),
        ("CapPrm", after.permitted, before.permitted & want),
        ("CapInh", after.inheritable, 0),
        ("CapAmb", after.ambient, 0),
    ] {
        if have != want {
            return Err(PrivilegeError::Left { set, have, want });
        }
    }
    if bounding && after.bounding & !want != 0 {
        return Err(PrivilegeError::Left {
            set: "CapBnd",
            have: after.bounding,
            want,
        });
    }
    let kept = cap_names(after.effective);
    tracing::info!(
        dropped = %cap_names(before.effective & !after.effective).join(","),
        kept = %if kept.is_empty() { "none".to_owned() } else { kept.join(",") },
        "capabilities dropped: the running daemon needs none (effective, permitted, \
         inheritable and ambient sets are empty{}; no_new_privs is set)",
        if bounding {
            ", and so is the bounding set"
        } else {
            "; the bounding set is left as it was, for want of CAP_SETPCAP, and cannot give \
             anything back"
        }
    );
    Ok(())
}

/// How a system call's arguments must look for [`WorkerFilter`] to allow it.
#[derive(Debug, Clone, Copy)]
enum Args {
    /// Any arguments.
    Any,
    /// Argument `n` (from 0) is one of the values.
    OneOf(u8, &'static [u64]),
    /// No buffer and no length (arguments 1 and 2 are 0): `sendto`/`recvfrom` as AF_XDP kicks.
    NoData,
    /// The protection (argument 2) does not include `PROT_EXEC`.
    NotExec,
    /// `tgkill(this process, any thread, SIGABRT)`: `abort()` after a panic.
    AbortSelf,
}

/// One system call a worker thread may make.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    /// Its number on this architecture.
    pub nr: libc::c_long,
    /// Its name.
    pub name: &'static str,
    /// Why a worker makes it.
    pub why: &'static str,
    args: Args,
}

const fn allow(nr: libc::c_long, name: &'static str, args: Args, why: &'static str) -> Allowed {
    Allowed {
        nr,
        name,
        why,
        args,
    }
}

/// `IORING_UNREGISTER_BUFFERS`, `IORING_REGISTER_FILES`, `IORING_UNREGISTER_FILES`
/// (linux/io_uring.h).
const IORING_REGISTER: &[u64] = &[1, 2, 3];

/// The system calls of a worker thread once it serves, found by tracing the daemon
/// (`strace -f`) through the end-to-end tests and benchmark runs (RAM, file and block-device
/// exports; MTU 1500 and 9000; `--sqpoll`, `--busy-poll`; shutdown, a failing and a panicking
/// worker): see SECURITY.md. Anything else kills the process.
pub const WORKER_SYSCALLS: &[Allowed] = &[
    // The datapath.
    allow(
        libc::SYS_io_uring_enter,
        "io_uring_enter",
        Args::Any,
        "submit storage operations and reap their completions",
    ),
    #[cfg(target_arch = "x86_64")]
    allow(
        libc::SYS_poll,
        "poll",
        Args::Any,
        "sleep until the AF_XDP socket or the io_uring has work",
    ),
    allow(
        libc::SYS_ppoll,
        "ppoll",
        Args::Any,
        "poll(2) where the architecture has no poll system call",
    ),
    allow(
        libc::SYS_sendto,
        "sendto",
        Args::NoData,
        "AF_XDP TX kick: sendto(fd, NULL, 0, MSG_DONTWAIT)",
    ),
    allow(
        libc::SYS_recvfrom,
        "recvfrom",
        Args::NoData,
        "AF_XDP RX wakeup and busy polling: recvfrom(fd, NULL, 0, MSG_DONTWAIT)",
    ),
    allow(
        libc::SYS_fdatasync,
        "fdatasync",
        Args::Any,
        "FLUSH CACHE on an in-memory (mapped) store",
    ),
    allow(
        libc::SYS_restart_syscall,
        "restart_syscall",
        Args::Any,
        "a poll interrupted by a signal resumes",
    ),
    // Threads and time.
    allow(
        libc::SYS_futex,
        "futex",
        Args::Any,
        "the exports' state lock, the channel to the main thread",
    ),
    allow(
        libc::SYS_sched_yield,
        "sched_yield",
        Args::Any,
        "the channel to the main thread backs off under contention",
    ),
    allow(
        libc::SYS_clock_gettime,
        "clock_gettime",
        Args::Any,
        "the clock, where the vDSO cannot read it (pacing, drain deadline, log time stamps)",
    ),
    allow(
        libc::SYS_clock_nanosleep,
        "clock_nanosleep",
        Args::Any,
        "the test-only fault injection's wait (XBLADE_TEST_FAIL_WORKER)",
    ),
    allow(
        libc::SYS_write,
        "write",
        Args::OneOf(0, &[2]),
        "log lines to stderr (failures, the SIGBUS message)",
    ),
    // Memory (the allocator), never executable.
    allow(
        libc::SYS_mmap,
        "mmap",
        Args::NotExec,
        "the allocator: a new or larger thread heap (never PROT_EXEC)",
    ),
    allow(
        libc::SYS_mprotect,
        "mprotect",
        Args::NotExec,
        "the allocator: growing a thread heap (never PROT_EXEC)",
    ),
    allow(
        libc::SYS_mremap,
        "mremap",
        Args::Any,
        "the allocator: resizing a large block",
    ),
    allow(
        libc::SYS_brk,
        "brk",
        Args::Any,
        "the allocator: the main heap",
    ),
    allow(
        libc::SYS_munmap,
        "munmap",
        Args::Any,
        "the allocator; at exit, the UMEM, the rings and the thread's signal stack",
    ),
    allow(
        libc::SYS_madvise,
        "madvise",
        Args::OneOf(2, &[libc::MADV_DONTNEED as u64]),
        "the allocator's trim and the thread stack's release at exit (MADV_DONTNEED only)",
    ),
    // Teardown of the worker and of its thread.
    allow(
        libc::SYS_close,
        "close",
        Args::Any,
        "at exit: the AF_XDP socket and the io_uring",
    ),
    allow(
        libc::SYS_fcntl,
        "fcntl",
        Args::OneOf(1, &[libc::F_GETFD as u64]),
        "at exit, in builds with debug assertions: std checks that a descriptor is still open \
         before closing it (F_GETFD only)",
    ),
    allow(
        libc::SYS_io_uring_register,
        "io_uring_register",
        Args::OneOf(1, IORING_REGISTER),
        "at exit: unregister files and buffers; when exports are added or removed at run time: \
         replace the registered files (IORING_UNREGISTER_FILES/BUFFERS, IORING_REGISTER_FILES \
         only)",
    ),
    allow(
        libc::SYS_sigaltstack,
        "sigaltstack",
        Args::Any,
        "at thread exit: Rust's stack-overflow guard stack is released",
    ),
    allow(
        libc::SYS_rt_sigprocmask,
        "rt_sigprocmask",
        Args::Any,
        "at thread exit, and abort()",
    ),
    allow(libc::SYS_exit, "exit", Args::Any, "the thread ends"),
    // Signals and the ways the process ends.
    allow(
        libc::SYS_rt_sigreturn,
        "rt_sigreturn",
        Args::Any,
        "return from a signal handler (SIGTERM/SIGINT may run on any thread)",
    ),
    allow(
        libc::SYS_exit_group,
        "exit_group",
        Args::Any,
        "the process ends (the SIGBUS handler's _exit(70))",
    ),
    allow(
        libc::SYS_getpid,
        "getpid",
        Args::Any,
        "abort() after a panic raises SIGABRT",
    ),
    allow(
        libc::SYS_gettid,
        "gettid",
        Args::Any,
        "abort() after a panic raises SIGABRT",
    ),
    allow(
        libc::SYS_tgkill,
        "tgkill",
        Args::AbortSelf,
        "abort() after a panic: SIGABRT to this process only",
    ),
];

/// The compiled allow-list of [`WORKER_SYSCALLS`], built once in the main thread and installed
/// by each worker thread on itself.
#[derive(Debug, Clone)]
pub struct WorkerFilter {
    program: BpfProgram,
}

thread_local! {
    static SANDBOXED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread runs under [`WorkerFilter`] (the panic hook then logs no backtrace: it
/// would open the executable to resolve symbols, which the filter forbids).
pub fn sandboxed() -> bool {
    SANDBOXED.with(|s| s.get())
}

fn cond(arg: u8, op: Op, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, Len::Qword, op, value)
}

/// The rules of one allowed system call (any one must match; an empty list matches any
/// arguments).
fn rules(args: Args, pid: u32) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    Ok(match args {
        Args::Any => Vec::new(),
        Args::OneOf(arg, values) => values
            .iter()
            .map(|&v| SeccompRule::new(vec![cond(arg, Op::Eq, v)?]))
            .collect::<Result<_, _>>()?,
        Args::NoData => vec![SeccompRule::new(vec![
            cond(1, Op::Eq, 0)?,
            cond(2, Op::Eq, 0)?,
        ])?],
        Args::NotExec => vec![SeccompRule::new(vec![cond(
            2,
            Op::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?],
        Args::AbortSelf => vec![SeccompRule::new(vec![
            cond(0, Op::Eq, u64::from(pid))?,
            cond(2, Op::Eq, libc::SIGABRT as u64)?,
        ])?],
    })
}

impl WorkerFilter {
    /// Compile the allow-list for this process; `mismatch` is what any other system call gets
    /// (the daemon: [`SeccompAction::KillProcess`]).
    pub fn with_action(mismatch: SeccompAction) -> Result<WorkerFilter, PrivilegeError> {
        let pid = std::process::id();
        let mut map = BTreeMap::new();
        for a in WORKER_SYSCALLS {
            map.insert(a.nr, rules(a.args, pid)?);
        }
        let arch = TargetArch::try_from(std::env::consts::ARCH)?;
        let filter = SeccompFilter::new(map, mismatch, SeccompAction::Allow, arch)?;
        Ok(WorkerFilter {
            program: BpfProgram::try_from(filter)?,
        })
    }

    /// The daemon's filter: any system call not allowed kills the process.
    pub fn new() -> Result<WorkerFilter, PrivilegeError> {
        Self::with_action(SeccompAction::KillProcess)
    }

    /// Install the filter on the calling thread (and `no_new_privs`, which seccomp requires
    /// without `CAP_SYS_ADMIN`). Irreversible; threads it creates afterwards inherit it.
    pub fn install(&self) -> Result<(), PrivilegeError> {
        seccompiler::apply_filter(&self.program)?;
        SANDBOXED.with(|s| s.set(true));
        Ok(())
    }

    /// BPF instructions in the compiled filter.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// Never: the filter always has instructions (clippy wants it next to `len`).
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }
}

/// The `Seccomp:` mode of a `/proc/PID/task/TID/status` text (0 none, 1 strict, 2 filter).
pub fn seccomp_mode(status: &str) -> Option<u8> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_masks_parse_proc_status() {
        let status = "Name:\txblade\nCapInh:\t0000000000000000\n\
                      CapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n\
                      CapBnd:\t0000000000003000\nCapAmb:\t0000000000000000\n\
                      NoNewPrivs:\t1\nSeccomp:\t2\n";
        let m = CapMasks::parse(status);
        assert_eq!(m.permitted, 0x1ff_ffff_ffff);
        assert_eq!(m.effective, 0x1ff_ffff_ffff);
        assert_eq!(m.bounding, 0x3000);
        assert_eq!((m.inheritable, m.ambient), (0, 0));
        assert_eq!(cap_names(m.bounding), ["CAP_NET_ADMIN", "CAP_NET_RAW"]);
        assert_eq!(seccomp_mode(status), Some(2));
    }

    #[test]
    fn the_allow_list_names_each_call_once_and_compiles() {
        let mut nrs: Vec<libc::c_long> = WORKER_SYSCALLS.iter().map(|a| a.nr).collect();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(
            nrs.len(),
            WORKER_SYSCALLS.len(),
            "a system call listed twice"
        );
        for a in WORKER_SYSCALLS {
            assert!(!a.why.is_empty() && !a.name.is_empty(), "{a:?}");
        }
        let f = WorkerFilter::new().unwrap();
        assert!(
            f.len() > WORKER_SYSCALLS.len() && f.len() < 512,
            "{}",
            f.len()
        );
    }

    /// A thread under the filter (with EPERM instead of a kill, so that the test survives) can
    /// make the allowed calls with the allowed arguments, gets EPERM for anything else, and
    /// ends normally (thread exit is covered by the list).
    #[test]
    fn the_filter_allows_the_list_and_refuses_the_rest() {
        let f = WorkerFilter::with_action(SeccompAction::Errno(libc::EPERM as u32)).unwrap();
        let results = std::thread::spawn(move || {
            f.install().unwrap();
            assert!(sandboxed());
            let errno = |rc: libc::c_long| {
                if rc < 0 {
                    io::Error::last_os_error().raw_os_error().unwrap_or(0)
                } else {
                    0
                }
            };
            // Pointers are null or static C strings, lengths 0 or within those strings.
            // SAFETY: the memory calls cover zero bytes at address 0: none writes our memory.
            unsafe {
                [
                    ("sched_yield", errno(libc::syscall(libc::SYS_sched_yield))),
                    ("getppid", errno(libc::syscall(libc::SYS_getppid))),
                    (
                        "socket",
                        errno(libc::syscall(
                            libc::SYS_socket,
                            libc::AF_INET,
                            libc::SOCK_DGRAM,
                            0,
                        )),
                    ),
                    (
                        "openat",
                        errno(libc::syscall(
                            libc::SYS_openat,
                            libc::AT_FDCWD,
                            c"/".as_ptr(),
                            0,
                        )),
                    ),
                    // A kick on a bad fd: allowed through, the kernel says EBADF.
                    (
                        "sendto kick",
                        errno(libc::syscall(
                            libc::SYS_sendto,
                            -1,
                            0,
                            0,
                            libc::MSG_DONTWAIT,
                            0,
                            0,
                        )),
                    ),
                    // The same with data: refused before the kernel looks at the fd.
                    (
                        "sendto data",
                        errno(libc::syscall(
                            libc::SYS_sendto,
                            -1,
                            c"x".as_ptr(),
                            1,
                            0,
                            0,
                            0,
                        )),
                    ),
                    (
                        "write stdout",
                        errno(libc::syscall(libc::SYS_write, 1, c"".as_ptr(), 0)),
                    ),
                    (
                        "mprotect exec",
                        errno(libc::syscall(
                            libc::SYS_mprotect,
                            0,
                            0,
                            libc::PROT_READ | libc::PROT_EXEC,
                        )),
                    ),
                    (
                        "madvise dontneed",
                        errno(libc::syscall(libc::SYS_madvise, 0, 0, libc::MADV_DONTNEED)),
                    ),
                    (
                        "madvise willneed",
                        errno(libc::syscall(libc::SYS_madvise, 0, 0, libc::MADV_WILLNEED)),
                    ),
                    (
                        "io_uring_register",
                        errno(libc::syscall(libc::SYS_io_uring_register, -1, 0, 0, 0)),
                    ),
                ]
            }
        })
        .join()
        .expect("the filtered thread ended normally");
        let want = [
            ("sched_yield", 0),
            ("getppid", libc::EPERM),
            ("socket", libc::EPERM),
            ("openat", libc::EPERM),
            ("sendto kick", libc::EBADF),
            ("sendto data", libc::EPERM),
            ("write stdout", libc::EPERM),
            ("mprotect exec", libc::EPERM),
            ("madvise dontneed", 0),
            ("madvise willneed", libc::EPERM),
            ("io_uring_register", libc::EPERM),
        ];
        assert_eq!(results, want);
        assert!(!sandboxed(), "the filter is per thread");
    }

    /// The daemon's filter kills the whole process on a system call outside the list: this
    /// test runs itself again as a child that does so, and expects it to die of SIGSYS.
    #[test]
    fn a_call_outside_the_list_kills_the_process() {
        const CHILD: &str = "XBLADE_SECCOMP_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let f = WorkerFilter::new().unwrap();
            std::thread::spawn(move || {
                f.install().unwrap();
                // SAFETY: getppid takes no arguments.
                unsafe { libc::syscall(libc::SYS_getppid) };
            })
            .join()
            .unwrap();
            std::process::exit(0);
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "privilege::tests::a_call_outside_the_list_kills_the_process",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "{:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
