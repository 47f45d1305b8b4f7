//! One worker's io_uring: registered files, registered buffers (the UMEM),
//! and reads and writes between them with no userspace copy.
//!
//! This is a thin layer over the `io-uring` crate that adds what every caller
//! would otherwise get wrong:
//! - A pointer-to-buffer-index table, so a read or write into registered
//!   memory becomes `READ_FIXED`/`WRITE_FIXED` and anything else a plain
//!   `READ`/`WRITE`. Regions larger than 1 GiB are split: the kernel refuses a
//!   larger iovec with `EFAULT`.
//! - Backpressure as a value: a push that would overrun the submission queue,
//!   or let in-flight operations exceed the completion queue (so CQEs could
//!   overflow), returns [`SqFull`] and the caller retries after reaping.
//! - Counters: `pushed`, `submitted` and `reaped`, so [`Uring::in_flight`] is exact.
//! - Setup fallbacks that are reported, never silent: SQPOLL or IOPOLL that the
//!   kernel or the device refuses gives a plain ring plus a [`SetupNote`] to log.
//!
//! Ownership rule (the crate's `SubmissionQueue::push` contract, made
//! explicit): memory handed to [`Uring::push_read`]/[`Uring::push_write`]
//! belongs to the kernel until the completion with that `user_data` has been
//! reaped. Dropping a `Uring` waits for every submitted operation, so the
//! memory may be released after the drop too.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};

/// The kernel refuses a registered-buffer iovec larger than 1 GiB (`EFAULT`).
pub const MAX_BUFFER_BYTES: usize = 1 << 30;

/// `IORING_MAX_REG_BUFFERS` from `io_uring/rsrc.h`: at most this many
/// registered buffers (the index is a u16 in the SQE).
pub const MAX_BUFFERS: usize = 1 << 14;

/// `IORING_ENTER_GETEVENTS` from `linux/io_uring.h`.
const IORING_ENTER_GETEVENTS: u32 = 1;

/// Bound on the waits in `Drop` and in the IOPOLL probe: each wait returns at
/// least one completion unless interrupted, so this only trips on a kernel
/// that keeps interrupting us.
const WAIT_ATTEMPTS_MAX: u32 = 10_000;

/// The IOPOLL probe reads this many bytes at offset 0 of every file: a whole
/// block for logical block sizes up to 4 KiB.
const PROBE_BYTES: usize = 4096;

/// Optional ring setup features.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UringConfig {
    /// Kernel submission thread, with its idle time in milliseconds before it sleeps.
    pub sqpoll: Option<u32>,
    /// Poll for completions instead of taking interrupts (needs a device with
    /// poll queues, e.g. NVMe with `nvme.poll_queues=N`, and `O_DIRECT` files;
    /// `IORING_OP_FSYNC` is refused on such a ring).
    pub iopoll: bool,
}

/// A requested feature that was dropped at setup, and why. Meant to be logged.
#[derive(Debug)]
pub struct SetupNote {
    /// `"SQPOLL"`, `"IOPOLL"` or `"SQPOLL+IOPOLL"`.
    pub feature: &'static str,
    /// What the kernel said.
    pub error: io::Error,
}

impl fmt::Display for SetupNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "io_uring {} is not available here ({}); using a ring without it",
            self.feature, self.error
        )?;
        if self.feature.contains("IOPOLL") {
            write!(
                f,
                ". IOPOLL needs O_DIRECT files on a device with poll queues (NVMe with \
                 nvme.poll_queues=N); loop devices and regular files have none"
            )?;
        }
        Ok(())
    }
}

/// One completion: the `user_data` given at push time and the kernel's result
/// (bytes transferred, or a negated errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The value passed to the push.
    pub user_data: u64,
    /// `>= 0`: bytes transferred (0 for fsync); `< 0`: `-errno`.
    pub result: i32,
}

impl Completion {
    /// The result as bytes transferred, or the errno as an `io::Error`.
    pub fn into_result(self) -> io::Result<u32> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result.unsigned_abs())
        }
    }
}

/// The submission queue is full, or the completion queue could overflow: reap
/// completions (and submit) before pushing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("io_uring queue full: reap completions before pushing more")]
pub struct SqFull;

/// One registered buffer (one iovec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    start: usize,
    len: usize,
    index: u16,
}

impl Region {
    fn end(&self) -> usize {
        self.start + self.len
    }
}

/// Split the caller's regions into ≤ 1 GiB iovecs, in registration order.
/// Returns the regions sorted by address, for lookup.
fn split_regions(buffers: &[(*mut u8, usize)]) -> io::Result<Vec<Region>> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let mut regions = Vec::new();
    for &(ptr, len) in buffers {
        let start = ptr as usize;
        if ptr.is_null() || len == 0 {
            return Err(invalid(format!(
                "buffer region {ptr:p}+{len} is null or empty; give mapped, non-empty regions"
            )));
        }
        if start.checked_add(len).is_none() {
            return Err(invalid(format!(
                "buffer region {ptr:p}+{len} wraps the address space"
            )));
        }
        let mut done = 0;
        while done < len {
            let piece = (len - done).min(MAX_BUFFER_BYTES);
            let index = u16::try_from(regions.len())
                .ok()
                .filter(|&i| usize::from(i) < MAX_BUFFERS)
                .ok_or_else(|| {
                    invalid(format!(
                        "more than {MAX_BUFFERS} registered buffers of up to 1 GiB; register less memory"
                    ))
                })?;
            regions.push(Region {
                start: start + done,
                len: piece,
                index,
            });
            done += piece;
        }
        assert_eq!(done, len);
    }
    regions.sort_by_key(|r| r.start);
    for pair in regions.windows(2) {
        if pair[0].end() > pair[1].start {
            return Err(invalid(format!(
                "buffer regions overlap at {:#x}; register each byte once",
                pair[1].start
            )));
        }
    }
    Ok(regions)
}

/// The registered buffer that holds all of `[addr, addr + len)`, if any.
/// An I/O that spans two regions (even adjacent ones) gets `None`.
fn lookup(regions: &[Region], addr: usize, len: usize) -> Option<u16> {
    let after = regions.partition_point(|r| r.start <= addr);
    let region = regions.get(after.checked_sub(1)?)?;
    assert!(region.start <= addr);
    let end = addr.checked_add(len)?;
    (end <= region.end()).then_some(region.index)
}

/// A heap block with a chosen alignment (for the IOPOLL probe's O_DIRECT read).
struct AlignedBlock {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBlock {
    fn new(size: usize) -> AlignedBlock {
        let layout =
            std::alloc::Layout::from_size_align(size, size).expect("probe size is a power of two");
        assert!(layout.size() > 0);
        // SAFETY: the layout has a non-zero size (asserted above).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBlock { ptr, layout }
    }
}

impl Drop for AlignedBlock {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this same layout and is
        // freed only here, once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// One worker's ring. See the module docs for the ownership rule.
pub struct Uring {
    ring: IoUring,
    /// Registered buffers, sorted by address.
    regions: Vec<Region>,
    files: u32,
    sqpoll: bool,
    iopoll: bool,
    /// Entries pushed into the SQ, ever.
    pushed: u64,
    /// Entries the kernel has taken from the SQ, ever.
    submitted: u64,
    /// Completions reaped, ever.
    reaped: u64,
}

impl fmt::Debug for Uring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uring")
            .field("files", &self.files)
            .field("buffers", &self.regions.len())
            .field("sqpoll", &self.sqpoll)
            .field("iopoll", &self.iopoll)
            .field("pushed", &self.pushed)
            .field("submitted", &self.submitted)
            .field("reaped", &self.reaped)
            .finish()
    }
}

impl Uring {
    /// A plain (interrupt-driven) ring with `entries` SQ entries, `files`
    /// registered as fixed files `0..files.len()` and `buffers` registered as
    /// fixed buffers.
    ///
    /// Registering pins the pages: registered memory is charged to
    /// `RLIMIT_MEMLOCK` unless the process has `CAP_IPC_LOCK`.
    pub fn new(entries: u32, files: &[RawFd], buffers: &[(*mut u8, usize)]) -> io::Result<Uring> {
        let (ring, notes) = Uring::with_config(entries, files, buffers, &UringConfig::default())?;
        assert!(
            notes.is_empty(),
            "a plain ring has nothing to fall back from"
        );
        Ok(ring)
    }

    /// Like [`Uring::new`], with optional SQPOLL/IOPOLL. A feature the kernel
    /// (`EINVAL`, `EOPNOTSUPP`, `EPERM` at setup) or a file (`EOPNOTSUPP` or
    /// `EINVAL` on a probe read of 4 KiB at offset 0 of each file) refuses is
    /// dropped, and a note says so.
    pub fn with_config(
        entries: u32,
        files: &[RawFd],
        buffers: &[(*mut u8, usize)],
        cfg: &UringConfig,
    ) -> io::Result<(Uring, Vec<SetupNote>)> {
        let regions = split_regions(buffers)?;
        let files_count = u32::try_from(files.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many files"))?;
        let mut notes = Vec::new();
        let mut sqpoll = cfg.sqpoll;
        let mut iopoll = cfg.iopoll;

        let ring = match build_ring(entries, sqpoll, iopoll) {
            Ok(ring) => ring,
            Err(error) if (sqpoll.is_some() || iopoll) && is_unsupported(&error) => {
                notes.push(SetupNote {
                    feature: feature_name(sqpoll.is_some(), iopoll),
                    error,
                });
                sqpoll = None;
                iopoll = false;
                build_ring(entries, None, false)?
            }
            Err(error) => return Err(error),
        };
        register(&ring, files, &regions)?;
        let ring = if iopoll {
            match probe_iopoll(&ring, files) {
                Ok(()) => ring,
                Err(error) if is_unsupported(&error) => {
                    notes.push(SetupNote {
                        feature: "IOPOLL",
                        error,
                    });
                    iopoll = false;
                    drop(ring);
                    let ring = build_ring(entries, sqpoll, false)?;
                    register(&ring, files, &regions)?;
                    ring
                }
                Err(error) => return Err(error),
            }
        } else {
            ring
        };
        assert_eq!(ring.params().is_setup_iopoll(), iopoll);
        assert_eq!(ring.params().is_setup_sqpoll(), sqpoll.is_some());
        let uring = Uring {
            ring,
            regions,
            files: files_count,
            sqpoll: sqpoll.is_some(),
            iopoll,
            pushed: 0,
            submitted: 0,
            reaped: 0,
        };
        Ok((uring, notes))
    }

    /// Queue a read of `len` bytes at `offset` of registered file `file` into
    /// `ptr`. `READ_FIXED` when the whole range lies in one registered buffer,
    /// plain `READ` otherwise. Not submitted until [`Uring::submit`].
    ///
    /// # Safety
    /// - `ptr..ptr + len` is valid for writes, and nothing reads or writes it
    ///   (no references to it exist) until the completion with `user_data` has
    ///   been reaped, or this `Uring` has been dropped.
    /// - If the range lies in a region given to [`Uring::new`], that region is
    ///   still the same mapping that was registered (not unmapped and replaced).
    pub unsafe fn push_read(
        &mut self,
        file: u32,
        ptr: *mut u8,
        len: u32,
        offset: u64,
        user_data: u64,
    ) -> Result<(), SqFull> {
        let fd = self.fixed(file);
        assert!(!ptr.is_null());
        assert!(len > 0);
        let entry = match lookup(&self.regions, ptr as usize, len as usize) {
            Some(index) => opcode::ReadFixed::new(fd, ptr, len, index)
                .offset(offset)
                .build(),
            None => opcode::Read::new(fd, ptr, len).offset(offset).build(),
        };
        // SAFETY: the entry names `ptr..ptr + len`, which the caller keeps
        // valid and untouched until its completion is reaped (or drop waits).
        unsafe { self.push(&entry.user_data(user_data)) }
    }

    /// Queue a write of `len` bytes from `ptr` to `offset` of registered file
    /// `file`, with `RWF_DSYNC` (durable when it completes) if `dsync`.
    /// `WRITE_FIXED` when the whole range lies in one registered buffer, plain
    /// `WRITE` otherwise.
    ///
    /// # Safety
    /// - `ptr..ptr + len` is valid for reads, and nothing writes it until the
    ///   completion with `user_data` has been reaped, or this `Uring` has been
    ///   dropped.
    /// - If the range lies in a region given to [`Uring::new`], that region is
    ///   still the same mapping that was registered.
    pub unsafe fn push_write(
        &mut self,
        file: u32,
        ptr: *const u8,
        len: u32,
        offset: u64,
        user_data: u64,
        dsync: bool,
    ) -> Result<(), SqFull> {
        let fd = self.fixed(file);
        assert!(!ptr.is_null());
        assert!(len > 0);
        let rw_flags = if dsync { libc::RWF_DSYNC } else { 0 };
        let entry = match lookup(&self.regions, ptr as usize, len as usize) {
            Some(index) => opcode::WriteFixed::new(fd, ptr, len, index)
                .offset(offset)
                .rw_flags(rw_flags)
                .build(),
            None => opcode::Write::new(fd, ptr, len)
                .offset(offset)
                .rw_flags(rw_flags)
                .build(),
        };
        // SAFETY: the entry names `ptr..ptr + len`, which the caller keeps
        // valid and unwritten until its completion is reaped (or drop waits).
        unsafe { self.push(&entry.user_data(user_data)) }
    }

    /// Queue an `fsync` (or `fdatasync` if `datasync`) of registered file
    /// `file`. Unordered with respect to other queued I/O: push it after the
    /// writes it covers have completed. Refused (`EINVAL`) on an IOPOLL ring.
    pub fn push_fsync(&mut self, file: u32, datasync: bool, user_data: u64) -> Result<(), SqFull> {
        let flags = if datasync {
            types::FsyncFlags::DATASYNC
        } else {
            types::FsyncFlags::empty()
        };
        let entry = opcode::Fsync::new(self.fixed(file))
            .flags(flags)
            .build()
            .user_data(user_data);
        // SAFETY: an fsync names no memory; the registered file stays open for
        // the ring's lifetime (the kernel holds its own reference).
        unsafe { self.push(&entry) }
    }

    /// Hand queued entries to the kernel without waiting. `EBUSY`, `EAGAIN`
    /// (reap first, or the kernel is short of resources) and `EINTR` give
    /// `Ok(0)`: retry later.
    pub fn submit(&mut self) -> io::Result<usize> {
        let result = self.ring.submit();
        self.after_submit(result)
    }

    /// Hand queued entries to the kernel and wait until at least `want`
    /// completions are ready to reap. `EBUSY`, `EAGAIN` and `EINTR` give
    /// `Ok(0)` (possibly before `want` are ready): reap, then call again.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        // Waiting for more than will ever complete would block forever.
        let outstanding = self.pushed - self.reaped;
        assert!(
            want as u64 <= outstanding,
            "waiting for {want} of {outstanding} outstanding"
        );
        let result = self.ring.submit_and_wait(want);
        self.after_submit(result)
    }

    /// Append up to `max` ready completions to `out` (the rest stay for the next call); returns
    /// how many.
    pub fn reap(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        let before = out.len();
        out.extend(self.ring.completion().take(max).map(|cqe| Completion {
            user_data: cqe.user_data(),
            result: cqe.result(),
        }));
        let reaped = out.len() - before;
        self.reaped += reaped as u64;
        assert!(self.reaped <= self.pushed, "more completions than pushes");
        if self.reaped > self.submitted {
            // With SQPOLL the kernel thread may take entries before submit().
            self.sync_submitted();
        }
        assert!(self.reaped <= self.submitted);
        reaped
    }

    /// How many more entries may be pushed now: the free SQ slots, capped so
    /// that pushed-but-unreaped entries never exceed the CQ size.
    pub fn sq_space(&mut self) -> usize {
        let cq_room = self.cq_capacity() - (self.pushed - self.reaped);
        let mut sq = self.ring.submission();
        sq.sync();
        let sq_room = (sq.capacity() - sq.len()) as u64;
        sq_room.min(cq_room) as usize
    }

    /// Operations submitted to the kernel and not yet reaped.
    pub fn in_flight(&self) -> u64 {
        assert!(self.reaped <= self.submitted);
        self.submitted - self.reaped
    }

    /// Entries pushed but not yet handed to the kernel.
    pub fn queued(&self) -> u64 {
        assert!(self.submitted <= self.pushed);
        self.pushed - self.submitted
    }

    /// The ring's descriptor, for `poll(2)`/`epoll`: it is readable
    /// (`POLLIN`) while completions wait in the CQ. Owned by this `Uring`.
    /// Replace the registered files with `files` (the exports of a worker changed at run
    /// time). Only while nothing is in flight: the worker quiesces first.
    pub fn replace_files(&mut self, files: &[RawFd]) -> io::Result<()> {
        if self.submitted != self.reaped || self.queued() > 0 {
            return Err(io::Error::other(
                "io_uring files replaced with operations in flight (a bug: the worker quiesces first)",
            ));
        }
        let submitter = self.ring.submitter();
        if self.files > 0 {
            submitter.unregister_files().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("unregistering io_uring files failed: {e}"),
                )
            })?;
            self.files = 0;
        }
        register_files(&submitter, files)?;
        self.files = files.len() as u32;
        Ok(())
    }

    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// How many fixed files were registered.
    pub fn registered_files(&self) -> u32 {
        self.files
    }

    /// How many fixed buffers (iovecs, after splitting at 1 GiB) were registered.
    pub fn registered_buffers(&self) -> usize {
        self.regions.len()
    }

    /// Whether `[ptr, ptr + len)` lies inside one registered buffer, so a
    /// push would use `READ_FIXED`/`WRITE_FIXED`.
    pub fn is_registered(&self, ptr: *const u8, len: usize) -> bool {
        lookup(&self.regions, ptr as usize, len).is_some()
    }

    /// The ring has a kernel submission thread.
    pub fn is_sqpoll(&self) -> bool {
        self.sqpoll
    }

    /// The ring polls for completions.
    pub fn is_iopoll(&self) -> bool {
        self.iopoll
    }

    fn fixed(&self, file: u32) -> types::Fixed {
        assert!(
            file < self.files,
            "file {file} not registered ({} files)",
            self.files
        );
        types::Fixed(file)
    }

    fn cq_capacity(&self) -> u64 {
        u64::from(self.ring.params().cq_entries())
    }

    /// # Safety
    /// Every buffer the entry names stays valid until its completion is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> Result<(), SqFull> {
        // Firecracker's rule: never more unreaped operations than CQ slots.
        if self.pushed - self.reaped >= self.cq_capacity() {
            return Err(SqFull);
        }
        let mut sq = self.ring.submission();
        // SAFETY: forwarded from this function's contract (the crate requires
        // the entry's parameters to stay valid for the whole operation).
        unsafe { sq.push(entry) }.map_err(|_| SqFull)?;
        drop(sq);
        self.pushed += 1;
        Ok(())
    }

    fn after_submit(&mut self, result: io::Result<usize>) -> io::Result<usize> {
        match result {
            Ok(n) => {
                self.sync_submitted();
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                ) =>
            {
                self.sync_submitted();
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// `submitted` = everything pushed that has left the SQ.
    fn sync_submitted(&mut self) {
        let queued = self.ring.submission().len() as u64;
        assert!(queued <= self.pushed);
        let submitted = self.pushed - queued;
        assert!(submitted >= self.submitted, "the SQ head went backwards");
        self.submitted = submitted;
    }
}

impl Drop for Uring {
    /// Wait for every operation the kernel took, so the memory it names may be
    /// released once the `Uring` is gone. Entries still queued are not
    /// submitted (with SQPOLL the kernel thread may still take them; those are
    /// waited for too).
    ///
    /// Then unregister files and buffers explicitly: ring teardown after
    /// close is asynchronous, and until it runs the registered files stay
    /// open, so an `O_EXCL` block device would still be busy.
    fn drop(&mut self) {
        if !self.drain() {
            tracing::error!(
                in_flight = self.submitted.saturating_sub(self.reaped),
                "io_uring dropped with operations still in flight; their buffers may still be written"
            );
            return;
        }
        let submitter = self.ring.submitter();
        if self.files > 0 {
            if let Err(e) = submitter.unregister_files() {
                tracing::warn!(error = %e, "io_uring unregister_files failed at drop");
            }
        }
        if !self.regions.is_empty() {
            if let Err(e) = submitter.unregister_buffers() {
                tracing::warn!(error = %e, "io_uring unregister_buffers failed at drop");
            }
        }
    }
}

impl Uring {
    /// Wait until every submitted operation has completed (discarding the
    /// completions). False if that did not happen within the bound.
    fn drain(&mut self) -> bool {
        for _ in 0..WAIT_ATTEMPTS_MAX {
            self.sync_submitted();
            self.reaped += self.ring.completion().count() as u64;
            let waiting = self.submitted.saturating_sub(self.reaped);
            if waiting == 0 {
                return true;
            }
            let want = u32::try_from(waiting).unwrap_or(u32::MAX);
            // SAFETY: to_submit = 0 submits nothing and there is no argument;
            // GETEVENTS only waits for (and with IOPOLL, polls) completions.
            let _ = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(0, want, IORING_ENTER_GETEVENTS, None)
            };
        }
        false
    }
}

fn feature_name(sqpoll: bool, iopoll: bool) -> &'static str {
    match (sqpoll, iopoll) {
        (true, true) => "SQPOLL+IOPOLL",
        (true, false) => "SQPOLL",
        (false, true) => "IOPOLL",
        (false, false) => "none",
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM)
    )
}

fn build_ring(entries: u32, sqpoll: Option<u32>, iopoll: bool) -> io::Result<IoUring> {
    assert!(entries > 0);
    let mut builder = IoUring::builder();
    // Disabled until `lock_down` has said what it may do (see there).
    builder.setup_r_disabled();
    if let Some(idle_ms) = sqpoll {
        builder.setup_sqpoll(idle_ms);
    }
    if iopoll {
        builder.setup_iopoll();
    }
    builder.build(entries).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) if io_uring_disabled() => {
                "io_uring is disabled by sysctl: run 'sysctl -w kernel.io_uring_disabled=0'"
            }
            Some(libc::ENOSYS) => "this kernel has no io_uring (CONFIG_IO_URING)",
            Some(libc::ENOMEM) => {
                "out of locked memory: raise RLIMIT_MEMLOCK (ulimit -l, LimitMEMLOCK=) or run with CAP_IPC_LOCK"
            }
            Some(libc::EMFILE | libc::ENFILE) => "out of file descriptors: raise the fd limit",
            _ => "",
        };
        if hint.is_empty() {
            e
        } else {
            io::Error::new(e.kind(), format!("io_uring_setup({entries}) failed: {e}; {hint}"))
        }
    })
}

fn io_uring_disabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim() != "0")
        .unwrap_or(false)
}

/// `IORING_UNREGISTER_BUFFERS` and `IORING_UNREGISTER_FILES` (linux/io_uring.h): the only
/// registrations a locked-down ring still takes (at drop).
const UNREGISTER_BUFFERS: u8 = 1;
const REGISTER_FILES: u8 = 2;
const UNREGISTER_FILES: u8 = 3;

/// Restrict what the ring may do, then enable it (it is set up disabled). Its operations run in
/// the kernel, outside the workers' seccomp filter, so this is their allow-list: reads, writes
/// and fsync, on registered files only (every entry must carry IOSQE_FIXED_FILE and no other
/// flag), and, of the registrations, only the two unregisters of the drop and the file table's
/// replacement when the exports change at run time ([`Uring::replace_files`]).
fn lock_down(ring: &IoUring) -> io::Result<()> {
    use io_uring::register::Restriction;
    let fixed = io_uring::squeue::Flags::FIXED_FILE.bits();
    let mut allowed = [
        Restriction::sqe_op(opcode::Read::CODE),
        Restriction::sqe_op(opcode::ReadFixed::CODE),
        Restriction::sqe_op(opcode::Write::CODE),
        Restriction::sqe_op(opcode::WriteFixed::CODE),
        Restriction::sqe_op(opcode::Fsync::CODE),
        Restriction::sqe_flags_allowed(fixed),
        Restriction::sqe_flags_required(fixed),
        Restriction::register_op(UNREGISTER_BUFFERS),
        Restriction::register_op(REGISTER_FILES),
        Restriction::register_op(UNREGISTER_FILES),
    ];
    let submitter = ring.submitter();
    submitter
        .register_restrictions(&mut allowed)
        .and_then(|()| submitter.register_enable_rings())
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("restricting and enabling the io_uring failed: {e}"),
            )
        })
}

/// Register the files and buffers, then lock the ring down and enable it.
fn register(ring: &IoUring, files: &[RawFd], regions: &[Region]) -> io::Result<()> {
    register_resources(ring, files, regions)?;
    lock_down(ring)
}

/// Register `files` (none: nothing to do; io_uring refuses an empty table).
fn register_files(submitter: &io_uring::Submitter<'_>, files: &[RawFd]) -> io::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    submitter.register_files(files).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "registering {} files with io_uring failed: {e}",
                files.len()
            ),
        )
    })
}

fn register_resources(ring: &IoUring, files: &[RawFd], regions: &[Region]) -> io::Result<()> {
    let submitter = ring.submitter();
    register_files(&submitter, files)?;
    if regions.is_empty() {
        return Ok(());
    }
    // Registration order is the buffer index; `regions` is sorted by address.
    let mut by_index = regions.to_vec();
    by_index.sort_by_key(|r| r.index);
    let iovecs: Vec<libc::iovec> = by_index
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(usize::from(r.index), i);
            assert!(r.len <= MAX_BUFFER_BYTES);
            libc::iovec {
                iov_base: r.start as *mut libc::c_void,
                iov_len: r.len,
            }
        })
        .collect();
    let bytes: usize = regions.iter().map(|r| r.len).sum();
    // SAFETY: the kernel pins each iovec's pages until the ring is destroyed; later access goes
    // through push_read/push_write, whose contracts cover the memory.
    unsafe { submitter.register_buffers(&iovecs) }.map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::ENOMEM) => format!(
                "the pinned pages are charged to RLIMIT_MEMLOCK (now {}): raise it (ulimit -l, \
                 LimitMEMLOCK=infinity) or run with CAP_IPC_LOCK",
                memlock_limit()
            ),
            Some(libc::EFAULT) => "a region is not mapped memory".to_owned(),
            Some(libc::EOPNOTSUPP) => {
                "regions must be anonymous, shmem or hugetlb memory (not file-backed)".to_owned()
            }
            _ => String::new(),
        };
        io::Error::new(
            e.kind(),
            format!(
                "registering {} buffers ({bytes} bytes) with io_uring failed: {e}{}{hint}",
                iovecs.len(),
                if hint.is_empty() { "" } else { "; " },
            ),
        )
    })
}

fn memlock_limit() -> String {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return "unknown".to_owned();
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        format!("{} bytes", lim.rlim_cur)
    }
}

/// On an IOPOLL ring, read 4 KiB at offset 0 of every file: a device without
/// poll queues (or a non-O_DIRECT file) completes it with `EOPNOTSUPP`.
/// Other errors (say `EIO`, or `EBADF` on a write-only file) are not about
/// IOPOLL and are left to the real I/O.
fn probe_iopoll(ring: &IoUring, files: &[RawFd]) -> io::Result<()> {
    assert!(ring.params().is_setup_iopoll());
    let block = AlignedBlock::new(PROBE_BYTES);
    for (index, _) in files.iter().enumerate().filter(|(_, &fd)| fd >= 0) {
        let index = u32::try_from(index).expect("file count checked by the caller");
        let entry = opcode::Read::new(types::Fixed(index), block.ptr, PROBE_BYTES as u32)
            .offset(0)
            .build()
            .user_data(u64::from(index));
        // SAFETY: `block` is valid for PROBE_BYTES of writes and untouched; it is freed only after
        // its completion is seen below (leaked if that never comes).
        let pushed = unsafe { ring.submission_shared().push(&entry) };
        assert!(pushed.is_ok(), "fresh ring has an empty SQ");
        let mut result = None;
        for _ in 0..WAIT_ATTEMPTS_MAX {
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    std::mem::forget(block);
                    return Err(e);
                }
            }
            // SAFETY: only this function touches the CQ of this ring, which
            // nothing else has seen yet (it is not shared with anyone).
            if let Some(cqe) = unsafe { ring.completion_shared() }.next() {
                assert_eq!(cqe.user_data(), u64::from(index));
                result = Some(cqe.result());
                break;
            }
        }
        let Some(result) = result else {
            std::mem::forget(block);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "IOPOLL probe never completed",
            ));
        };
        if matches!(-result, libc::EOPNOTSUPP | libc::EINVAL) {
            return Err(io::Error::from_raw_os_error(-result));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ring does what the worker asks (a fixed-file read and fsync) and refuses anything
    /// else: an opcode outside the list, a raw descriptor instead of a registered file.
    #[test]
    fn a_locked_down_ring_refuses_what_the_worker_never_asks() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(8192).unwrap();
        let block = AlignedBlock::new(4096);
        let mut ring = Uring::new(8, &[file.as_raw_fd()], &[]).unwrap();
        // SAFETY: `block` is valid for 4096 bytes of writes and outlives the ring's drain below.
        unsafe { ring.push_read(0, block.ptr, 4096, 0, 1).unwrap() };
        ring.push_fsync(0, true, 2).unwrap();
        ring.submit_and_wait(2).unwrap();
        let mut out = Vec::new();
        for _ in 0..1000 {
            if out.len() == 2 {
                break;
            }
            ring.reap(&mut out, 8);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(out.len(), 2, "{out:?}");
        out.sort_by_key(|c| c.user_data);
        assert_eq!(out[0].result, 4096, "{out:?}");
        assert_eq!(out[1].result, 0, "{out:?}");
        // A refused entry fails with EACCES (and ends that submission), one at a time.
        let refused = [
            opcode::Nop::new().build().user_data(3),
            opcode::Read::new(types::Fd(file.as_raw_fd()), block.ptr, 512)
                .build()
                .user_data(4),
            opcode::Close::new(types::Fixed(0)).build().user_data(5),
        ];
        for e in &refused {
            // SAFETY: the entries name `block` (valid, see above) or no memory at all.
            unsafe { ring.push(e).unwrap() };
            ring.submit_and_wait(1).unwrap();
            let mut out = Vec::new();
            for _ in 0..1000 {
                if ring.reap(&mut out, 1) > 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert_eq!(out.len(), 1, "no completion for {e:?}");
            assert_eq!(out[0].result, -libc::EACCES, "{out:?}");
        }
    }

    fn p(addr: usize) -> *mut u8 {
        addr as *mut u8
    }

    #[test]
    fn small_regions_keep_their_order_as_index() {
        let r = split_regions(&[(p(0x20_0000), 0x1000), (p(0x10_0000), 0x2000)]).unwrap();
        assert_eq!(r.len(), 2);
        // Sorted by address, index = registration order.
        assert_eq!(
            r[0],
            Region {
                start: 0x10_0000,
                len: 0x2000,
                index: 1
            }
        );
        assert_eq!(
            r[1],
            Region {
                start: 0x20_0000,
                len: 0x1000,
                index: 0
            }
        );
    }

    #[test]
    fn regions_over_1gib_are_split() {
        let base = 0x7f00_0000_0000usize;
        let len = 2 * MAX_BUFFER_BYTES + 4096;
        let r = split_regions(&[(p(base), len)]).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].len, MAX_BUFFER_BYTES);
        assert_eq!(r[1].start, base + MAX_BUFFER_BYTES);
        assert_eq!(r[2].len, 4096);
        assert_eq!(r.iter().map(|r| r.len).sum::<usize>(), len);
        assert!(r.iter().all(|r| r.len <= MAX_BUFFER_BYTES));
    }

    #[test]
    fn lookup_maps_pointers_to_indexes() {
        let base = 0x7f00_0000_0000usize;
        let r = split_regions(&[(p(base), MAX_BUFFER_BYTES + 8192), (p(0x1000), 0x1000)]).unwrap();
        assert_eq!(lookup(&r, base, 4096), Some(0));
        assert_eq!(lookup(&r, base + MAX_BUFFER_BYTES - 4096, 4096), Some(0));
        assert_eq!(lookup(&r, base + MAX_BUFFER_BYTES, 4096), Some(1));
        assert_eq!(lookup(&r, 0x1000, 0x1000), Some(2));
        // Negative space: spanning a split, before, after, overhanging.
        assert_eq!(lookup(&r, base + MAX_BUFFER_BYTES - 512, 1024), None);
        assert_eq!(lookup(&r, base - 1, 2), None);
        assert_eq!(lookup(&r, base + MAX_BUFFER_BYTES + 8192, 1), None);
        assert_eq!(lookup(&r, 0x1800, 0x1000), None);
        assert_eq!(lookup(&r, 0, 16), None);
        assert_eq!(lookup(&r, usize::MAX, 16), None);
    }

    #[test]
    fn bad_regions_are_refused() {
        assert!(split_regions(&[(std::ptr::null_mut(), 4096)]).is_err());
        assert!(split_regions(&[(p(0x1000), 0)]).is_err());
        assert!(split_regions(&[(p(usize::MAX - 10), 4096)]).is_err());
        let e = split_regions(&[(p(0x1000), 0x2000), (p(0x2000), 0x1000)]).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        // Adjacent is fine.
        assert!(split_regions(&[(p(0x1000), 0x1000), (p(0x2000), 0x1000)]).is_ok());
    }

    #[test]
    fn completion_results() {
        let ok = Completion {
            user_data: 7,
            result: 4096,
        };
        assert_eq!(ok.into_result().unwrap(), 4096);
        let err = Completion {
            user_data: 7,
            result: -libc::EBADF,
        };
        assert_eq!(
            err.into_result().unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }

    #[test]
    fn note_for_iopoll_explains_the_fallback() {
        let note = SetupNote {
            feature: "IOPOLL",
            error: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        };
        let msg = note.to_string();
        assert!(msg.contains("IOPOLL"), "{msg}");
        assert!(msg.contains("poll queues"), "{msg}");
    }

    #[test]
    fn plain_ring_without_files_or_buffers() {
        let mut ring = Uring::new(8, &[], &[]).unwrap();
        assert_eq!(ring.in_flight(), 0);
        assert_eq!(ring.queued(), 0);
        assert_eq!(ring.sq_space(), 8);
        assert!(ring.fd() >= 0);
        assert_eq!(ring.submit().unwrap(), 0);
        let mut out = Vec::new();
        assert_eq!(ring.reap(&mut out, usize::MAX), 0);
    }

    #[test]
    fn ring_refuses_more_than_cq_can_hold() {
        let f = tempfile::tempfile().unwrap();
        use std::os::fd::AsRawFd;
        let mut ring = Uring::new(4, &[f.as_raw_fd()], &[]).unwrap();
        let cq = ring.cq_capacity();
        let mut pushed = 0;
        while ring.push_fsync(0, true, pushed).is_ok() {
            pushed += 1;
            if pushed % 4 == 0 {
                assert_eq!(ring.submit().unwrap(), 4);
            }
            assert!(pushed <= cq, "pushed past the CQ size");
        }
        assert_eq!(pushed, cq);
        assert_eq!(ring.sq_space(), 0);
        ring.submit().unwrap();
        let mut out = Vec::new();
        while out.len() < pushed as usize {
            let want = pushed as usize - out.len();
            ring.submit_and_wait(want).unwrap();
            ring.reap(&mut out, usize::MAX);
        }
        assert!(out.iter().all(|c| c.result == 0), "{out:?}");
        assert_eq!(ring.in_flight(), 0);
        assert_eq!(ring.sq_space(), 4);
    }

    #[test]
    fn reap_takes_at_most_max_and_leaves_the_rest() {
        let f = tempfile::tempfile().unwrap();
        use std::os::fd::AsRawFd;
        let mut ring = Uring::new(8, &[f.as_raw_fd()], &[]).unwrap();
        for ud in 0..3 {
            ring.push_fsync(0, true, ud).unwrap();
        }
        ring.submit().unwrap();
        ring.submit_and_wait(3).unwrap();
        let mut out = Vec::new();
        assert_eq!(ring.reap(&mut out, 1), 1);
        assert_eq!(ring.in_flight(), 2);
        assert_eq!(ring.reap(&mut out, 5), 2);
        assert_eq!(ring.in_flight(), 0);
        let mut uds: Vec<u64> = out.iter().map(|c| c.user_data).collect();
        uds.sort();
        assert_eq!(uds, vec![0, 1, 2]);
    }
}
