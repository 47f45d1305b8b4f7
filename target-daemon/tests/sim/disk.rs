//! The simulated storage side: one byte vector per export, operations queued by `push`, handed
//! over by `submit`, and completed on the simulation's clock in random order, late, or with
//! injected failures (EIO, ENOSPC, transient errors, short transfers) and refusals (`SqFull`).
//!
//! Data moves at a random moment between hand-over and completion (by default at completion,
//! which is what makes an ordering bug visible): a READ copies the store into the operation's
//! memory, a WRITE copies that memory into the store; a short transfer or a failed write moves
//! a prefix only.
//!
//! The disk has a volatile cache, modelled at its most forgetful: `durable` is what a power cut
//! would leave. A `RWF_DSYNC` write reaches it as it moves; any other write only when an
//! flush *handed over after that write completed* completes successfully: an `fdatasync` (FLUSH)
//! or a group commit (a `RWF_DSYNC` write, which on a device with no FUA ends with a flush). One
//! that fails for good loses every write in the cache when it completes (a flush may reach the
//! device after writes handed over later have completed).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::RawFd;

use xblade::uring::{Completion, SqFull};
use xblade::worker::{Op, Storage};

use crate::rng::Rng;

/// What an operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Read,
    Write,
    /// A FLUSH request's `fdatasync`: ordered after every earlier write of its file.
    Fsync,
    /// A group commit: a covered write's bytes written again with `RWF_DSYNC`.
    Commit,
}

impl Kind {
    /// Whether it moves data into the store.
    pub fn writes(self) -> bool {
        matches!(self, Kind::Write | Kind::Commit)
    }
}

/// How the disk misbehaves (probabilities per operation hand-over).
#[derive(Clone, Debug)]
pub struct DiskParams {
    /// Longest ordinary latency, in simulation steps.
    pub latency: u64,
    /// Chance of a latency ten times longer.
    pub p_slow: f64,
    /// EIO (ENOSPC for some writes): the request fails.
    pub p_hard: f64,
    /// A transient error (EAGAIN, EINTR, EBUSY, ENOMEM) or a short transfer: retried by the
    /// worker. At most two in a row for one operation, unless it is stuck.
    pub p_soft: f64,
    /// Of the soft failures of reads and writes, the share that are short transfers.
    pub p_short: f64,
    /// A soft failure makes a single-operation request stuck: it keeps failing until the
    /// worker's retries run out.
    pub p_stuck: f64,
    /// `push` refuses with `SqFull` for no reason (besides a full queue).
    pub p_sqfull: f64,
    /// Queued + in-flight + unreaped operations at most (the CQ overflow rule of io_uring).
    pub sq_cap: usize,
    /// `submit` hands over only some of the queued operations (EBUSY).
    pub p_partial_submit: f64,
    /// `push` hands the queue over by itself (like `Engines`, every 4 queued).
    pub p_submit_on_push: f64,
    /// Data moves before completion (at a random moment after hand-over).
    pub p_apply_early: f64,
}

/// A failure the disk injected that must come back as an ATA error for the request.
#[derive(Clone, Debug)]
pub struct Credit {
    pub file: u32,
    pub kind: Kind,
    pub offset: u64,
    pub len: u32,
    pub errno: i32,
    /// An operation of a multi-chunk (jumbo) read: one of several of its request.
    pub chunk_op: bool,
    pub step: u64,
}

#[derive(Clone, Debug, Default)]
pub struct DiskCounters {
    pub pushes: u64,
    pub refused: u64,
    pub submitted: u64,
    pub completed: u64,
    pub soft: u64,
    pub short: u64,
    pub hard: u64,
    pub exhausted: u64,
    pub early: u64,
}

/// One operation from `push` until `reap`.
struct DOp {
    file: u32,
    kind: Kind,
    offset: u64,
    len: u32,
    ptr: *mut u8,
    addr: usize,
    ud: u64,
    result: i32,
    /// Bytes the operation moves when applied (a prefix on short transfers and failures).
    moves: u32,
    apply_at: u64,
    done_at: u64,
    applied: bool,
    /// A write with `RWF_DSYNC`.
    dsync: bool,
    /// An `fdatasync`: the cache entries it covers (sequence numbers below this), set when
    /// it is handed over.
    covers: u64,
    /// An `fdatasync` that failed for good: what it covers is lost.
    lost: bool,
}

/// A write in the volatile cache: (sequence number, offset, bytes).
type Cached = (u64, u64, Vec<u8>);

/// (user data, file, kind, offset, len, address): one operation, and its retries.
type Ident = (u64, u32, Kind, u64, u32, usize);

pub struct SimDisk {
    pub stores: Vec<Vec<u8>>,
    /// What a power cut would leave of each store.
    pub durable: Vec<Vec<u8>>,
    /// Per file: the writes in the volatile cache, in completion order.
    cache: Vec<Vec<Cached>>,
    /// The next cache entry's sequence number.
    seq: u64,
    /// Per file: whether its export's writes must be durable when acknowledged, and whether it
    /// makes them so by group commit.
    sync_writes: Vec<bool>,
    group: Vec<bool>,
    /// Group commits that failed for good (when the worker reaped them): the writes they
    /// covered, and the export's other writes issued without `RWF_DSYNC` before then, must be
    /// answered with an error.
    pub commit_credits: Vec<Credit>,
    p: DiskParams,
    rng: Rng,
    now: u64,
    queued: Vec<DOp>,
    running: Vec<DOp>,
    cq: VecDeque<DOp>,
    /// Consecutive soft failures of an operation, and whether it is stuck.
    streak: HashMap<Ident, (u8, bool)>,
    pub credits: Vec<Credit>,
    umem: (usize, usize),
    chunk: usize,
    bounce: Option<(usize, usize, usize)>,
    pub n: DiskCounters,
    /// `XBLADE_SIM_TRACE`: print every operation's hand-over and outcome.
    trace: bool,
}

/// A worker gives up on a request after this many re-issues (`reply::MAX_RETRIES`).
pub const MAX_RETRIES: u8 = 8;

impl SimDisk {
    /// `sync` is, per file, whether its writes must be durable when acknowledged and whether
    /// it makes them so by group commit. `umem` is (base, length) of the UMEM, `bounce` (base,
    /// slot size, slots) of the bounce region: the only memory an operation may name.
    pub fn new(
        stores: Vec<Vec<u8>>,
        sync: Vec<(bool, bool)>,
        p: DiskParams,
        rng: Rng,
        umem: (usize, usize),
        chunk: usize,
        bounce: Option<(usize, usize, usize)>,
    ) -> SimDisk {
        SimDisk {
            durable: stores.clone(),
            cache: vec![Vec::new(); stores.len()],
            stores,
            seq: 0,
            sync_writes: sync.iter().map(|s| s.0).collect(),
            group: sync.iter().map(|s| s.1).collect(),
            commit_credits: Vec::new(),
            p,
            rng,
            now: 0,
            queued: Vec::new(),
            running: Vec::new(),
            cq: VecDeque::new(),
            streak: HashMap::new(),
            credits: Vec::new(),
            umem,
            chunk,
            bounce,
            n: DiskCounters::default(),
            trace: std::env::var_os("XBLADE_SIM_TRACE").is_some(),
        }
    }

    /// Nothing queued, running or waiting to be reaped.
    pub fn idle(&self) -> bool {
        self.queued.is_empty() && self.running.is_empty() && self.cq.is_empty()
    }

    /// Operations the disk holds (queued, running, unreaped).
    pub fn holding(&self) -> usize {
        self.queued.len() + self.running.len() + self.cq.len()
    }

    /// Whether `addr` is the start of a UMEM chunk (a jumbo read's data chunk).
    fn chunk_aligned(&self, addr: usize) -> bool {
        addr >= self.umem.0 && (addr - self.umem.0).is_multiple_of(self.chunk)
    }

    /// Marks in `mark` (one entry per UMEM chunk) the chunks that operations still own.
    pub fn chunks_in_use(&self, mark: &mut [u64], stamp: u64, owners: &mut Vec<(usize, u64)>) {
        for op in self.queued.iter().chain(&self.running).chain(&self.cq) {
            if op.kind == Kind::Fsync || op.addr < self.umem.0 {
                continue;
            }
            let at = op.addr - self.umem.0;
            if at < self.umem.1 {
                let c = at / self.chunk;
                mark[c] = stamp;
                owners.push((c, op.ud));
            }
        }
    }

    /// Complete everything running at the next tick.
    pub fn expedite(&mut self) {
        for op in &mut self.running {
            op.done_at = op.done_at.min(self.now);
            op.apply_at = op.apply_at.min(op.done_at);
        }
    }

    /// The clock moves to `now`: operations due move their data (in random order) and
    /// complete (in random order).
    pub fn tick(&mut self, now: u64) {
        self.now = now;
        let mut due: Vec<usize> = (0..self.running.len())
            .filter(|&i| !self.running[i].applied && self.running[i].apply_at <= now)
            .collect();
        self.rng.shuffle(&mut due);
        for i in due {
            let early = self.running[i].done_at > now;
            self.n.early += u64::from(early);
            apply(
                &mut self.stores,
                &mut self.durable,
                &mut self.cache,
                &mut self.running[i],
            );
        }
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].done_at <= now {
                done.push(self.running.swap_remove(i));
            } else {
                i += 1;
            }
        }
        self.rng.shuffle(&mut done);
        for mut op in done {
            if !op.applied {
                apply(
                    &mut self.stores,
                    &mut self.durable,
                    &mut self.cache,
                    &mut op,
                );
            }
            self.settle(&op);
            self.n.completed += 1;
            self.cq.push_back(op);
        }
    }

    /// The volatile cache when `op` completes: a write without `RWF_DSYNC` enters it; a
    /// successful `fdatasync` makes what it covers durable, one that failed for good loses it.
    fn settle(&mut self, op: &DOp) {
        let f = op.file as usize;
        // A commit's flush follows its write: it happened if the write completed in full.
        let flushed = match op.kind {
            Kind::Fsync => op.result == 0,
            Kind::Commit => op.result == op.len as i32,
            _ => false,
        };
        match op.kind {
            Kind::Write if !op.dsync && op.moves > 0 => {
                let at = op.offset as usize;
                let bytes = self.stores[f][at..at + op.moves as usize].to_vec();
                self.cache[f].push((self.seq, op.offset, bytes));
                self.seq += 1;
            }
            Kind::Fsync | Kind::Commit if op.lost => self.cache[f].clear(),
            Kind::Fsync | Kind::Commit if flushed => {
                let n = self.cache[f].partition_point(|c| c.0 < op.covers);
                for (_, offset, bytes) in self.cache[f].drain(..n) {
                    let at = offset as usize;
                    self.durable[f][at..at + bytes.len()].copy_from_slice(&bytes);
                }
            }
            _ => {}
        }
    }

    /// Checks an operation the worker pushed; panics on a contract violation.
    fn validate(&self, file: u32, kind: Kind, offset: u64, len: u32, addr: usize, ud: u64) {
        let what = || format!("{kind:?} file {file} offset {offset} len {len} ud {ud:#x}");
        assert!(
            (file as usize) < self.stores.len(),
            "storage push names an unregistered file: {}",
            what()
        );
        for op in self.queued.iter().chain(&self.running).chain(&self.cq) {
            assert!(
                op.ud != ud,
                "storage push reuses user data {ud:#x} of an operation not yet reaped ({:?} at {}): {}",
                op.kind,
                op.offset,
                what()
            );
        }
        // The worker's ordering: a write never runs alongside an overlapping read or write of
        // its file, nor alongside a flush of it.
        let (first, last) = match kind {
            Kind::Fsync => (0, u64::MAX),
            _ => (offset, offset + u64::from(len).max(1) - 1),
        };
        for op in self.queued.iter().chain(&self.running).chain(&self.cq) {
            let (a, b) = match op.kind {
                Kind::Fsync => (0, u64::MAX),
                _ => (op.offset, op.offset + u64::from(op.len).max(1) - 1),
            };
            if op.file == file && (kind.writes() || op.kind.writes()) && first <= b && a <= last {
                panic!(
                    "storage push conflicts with an unreaped {:?} of the same file at {}+{} (ud {:#x}): {}",
                    op.kind,
                    op.offset,
                    op.len,
                    op.ud,
                    what()
                );
            }
        }
        if kind == Kind::Fsync {
            return;
        }
        assert!(len > 0, "storage push of an empty transfer: {}", what());
        let store = self.stores[file as usize].len() as u64;
        assert!(
            offset
                .checked_add(u64::from(len))
                .is_some_and(|end| end <= store),
            "storage push beyond the end of the {store}-byte store: {}",
            what()
        );
        let end = addr + len as usize;
        let in_umem = addr >= self.umem.0
            && end <= self.umem.0 + self.umem.1
            && (addr - self.umem.0) / self.chunk == (end - 1 - self.umem.0) / self.chunk;
        let in_bounce = self.bounce.is_some_and(|(base, slot, slots)| {
            addr >= base
                && end <= base + slot * slots
                && (addr - base) / slot == (end - 1 - base) / slot
        });
        assert!(
            in_umem || in_bounce,
            "storage push names memory outside any one UMEM chunk or bounce slot: {}",
            what()
        );
        for op in self.queued.iter().chain(&self.running).chain(&self.cq) {
            if op.kind != Kind::Fsync
                && op.addr < end
                && addr < op.addr + op.len as usize
                && (kind == Kind::Read || op.kind == Kind::Read)
            {
                panic!(
                    "storage push names memory another unreaped operation ({:?} ud {:#x}) also uses: {}",
                    op.kind,
                    op.ud,
                    what()
                );
            }
        }
    }

    /// The operation is handed over: draw its outcome and its timing.
    fn start(&mut self, mut op: DOp) {
        self.n.submitted += 1;
        let id: Ident = (op.ud, op.file, op.kind, op.offset, op.len, op.addr);
        let (streak, stuck) = self.streak.get(&id).copied().unwrap_or((0, false));
        // A request of one operation (a multi-chunk read has one per chunk, whose retries add
        // up): only these may get stuck, so that exhaustion is exactly the 9th soft failure.
        let single = op.kind != Kind::Read || !self.chunk_aligned(op.addr);
        let len = op.len;
        let soft = stuck || (streak < 2 && self.rng.chance(self.p.p_soft));
        let hard = !soft && self.rng.chance(self.p.p_hard);
        if soft {
            self.n.soft += 1;
            let short = op.kind != Kind::Fsync && self.rng.chance(self.p.p_short);
            let (result, moves, errno) = if short {
                self.n.short += 1;
                let k = if self.rng.chance(0.5) {
                    self.rng.below(u64::from(len / 512)) as u32 * 512
                } else {
                    self.rng.below(u64::from(len)) as u32
                };
                (k as i32, k, libc::EIO)
            } else {
                let e = self
                    .rng
                    .pick(&[libc::EAGAIN, libc::EINTR, libc::EBUSY, libc::ENOMEM]);
                (-e, 0, e)
            };
            op.result = result;
            op.moves = moves;
            let stuck = stuck || (single && self.rng.chance(self.p.p_stuck));
            let streak = streak + 1;
            if streak > MAX_RETRIES {
                // The worker's retries are spent: the request fails with this error.
                self.n.exhausted += 1;
                self.streak.remove(&id);
                op.lost = true;
                self.credit(Credit {
                    file: op.file,
                    kind: op.kind,
                    offset: op.offset,
                    len: op.len,
                    errno,
                    chunk_op: !single,
                    step: self.now,
                });
            } else {
                self.streak.insert(id, (streak, stuck));
            }
        } else if hard {
            self.n.hard += 1;
            self.streak.remove(&id);
            let e = if op.kind == Kind::Write && self.rng.chance(0.3) {
                libc::ENOSPC
            } else {
                libc::EIO
            };
            op.result = -e;
            op.lost = true;
            // A failed write may have reached the medium in part.
            op.moves = if op.kind == Kind::Fsync {
                0
            } else {
                self.rng.below(u64::from(len) + 1) as u32
            };
            self.credit(Credit {
                file: op.file,
                kind: op.kind,
                offset: op.offset,
                len: op.len,
                errno: e,
                chunk_op: !single,
                step: self.now,
            });
        } else {
            self.streak.remove(&id);
            op.result = if op.kind == Kind::Fsync {
                0
            } else {
                len as i32
            };
            op.moves = len;
        }
        op.covers = self.seq;
        let mut latency = self.rng.below(self.p.latency + 1);
        if self.rng.chance(self.p.p_slow) {
            latency *= 10;
        }
        op.done_at = self.now + latency;
        op.apply_at = if self.rng.chance(self.p.p_apply_early) {
            self.now + self.rng.below(latency + 1)
        } else {
            op.done_at
        };
        if self.trace {
            eprintln!(
                "disk t{}: {:?} file {} @{}+{} ud {:#x} mem {:#x} -> result {} moves {} at t{} done t{}",
                self.now, op.kind, op.file, op.offset, op.len, op.ud, op.addr, op.result, op.moves, op.apply_at, op.done_at
            );
        }
        self.running.push(op);
    }

    /// A failure the worker must report. A group commit's is recorded when the worker reaps
    /// it (`reap`): it fails every write issued before then.
    fn credit(&mut self, credit: Credit) {
        if credit.kind != Kind::Commit {
            self.credits.push(credit);
        }
    }

    fn submit_some(&mut self, partial: bool) {
        let n = if partial {
            self.rng.below(self.queued.len() as u64 + 1) as usize
        } else {
            self.queued.len()
        };
        let ops: Vec<DOp> = self.queued.drain(..n).collect();
        for op in ops {
            self.start(op);
        }
    }
}

/// Moves an operation's data (`op.moves` bytes); a `RWF_DSYNC` write's is durable as it lands,
/// and what the cache held of those bytes is stale.
fn apply(stores: &mut [Vec<u8>], durable: &mut [Vec<u8>], cache: &mut [Vec<Cached>], op: &mut DOp) {
    op.applied = true;
    let k = op.moves as usize;
    let at = op.offset as usize;
    match op.kind {
        Kind::Read => {
            let src = &stores[op.file as usize][at..at + k];
            // `validate` checked that `ptr..ptr + len` (k ≤ len) lies in one UMEM chunk or bounce
            // slot that no other unreaped operation uses; the store is a separate allocation.
            // SAFETY: the worker keeps it alive and untouched until this completion is reaped.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), op.ptr, k) };
        }
        Kind::Write | Kind::Commit => {
            let dst = &mut stores[op.file as usize][at..at + k];
            // SAFETY: as for the read; the range is only read.
            unsafe { std::ptr::copy_nonoverlapping(op.ptr.cast_const(), dst.as_mut_ptr(), k) };
            if op.dsync {
                let src = &stores[op.file as usize][at..at + k];
                durable[op.file as usize][at..at + k].copy_from_slice(src);
                punch(&mut cache[op.file as usize], op.offset, k as u64);
            }
        }
        Kind::Fsync => {}
    }
}

/// Drops bytes `at..at + len` from the cache entries (keeping their order).
fn punch(cache: &mut Vec<Cached>, at: u64, len: u64) {
    let end = at + len;
    if len == 0
        || !cache
            .iter()
            .any(|c| c.1 < end && at < c.1 + c.2.len() as u64)
    {
        return;
    }
    let mut kept = Vec::with_capacity(cache.len() + 1);
    for (seq, offset, bytes) in cache.drain(..) {
        let stop = offset + bytes.len() as u64;
        if stop <= at || end <= offset {
            kept.push((seq, offset, bytes));
            continue;
        }
        if offset < at {
            kept.push((seq, offset, bytes[..(at - offset) as usize].to_vec()));
        }
        if end < stop {
            kept.push((seq, end, bytes[(end - offset) as usize..].to_vec()));
        }
    }
    *cache = kept;
}

impl Storage for SimDisk {
    unsafe fn push(&mut self, file: u32, op: Op, user_data: u64) -> Result<(), SqFull> {
        let f = file as usize;
        let group = self.group.get(f).copied().unwrap_or(false);
        let (kind, offset, len, ptr, dsync) = match op {
            Op::Read { ptr, len, offset } => (Kind::Read, offset, len, ptr, false),
            Op::Write {
                ptr,
                len,
                offset,
                dsync,
            } => {
                // A group-committing export's writes carry it or not (see `worker::commit`).
                let want = self.sync_writes.get(f).copied().unwrap_or(true);
                assert!(
                    dsync == want || group,
                    "write to file {file} with dsync {dsync}, but the export's durability says {want}"
                );
                (Kind::Write, offset, len, ptr.cast_mut(), dsync)
            }
            Op::Fsync => (Kind::Fsync, 0, 0, std::ptr::null_mut(), false),
            Op::Commit { ptr, len, offset } => {
                assert!(
                    group,
                    "group commit of file {file}, whose export does not commit by groups"
                );
                (Kind::Commit, offset, len, ptr.cast_mut(), true)
            }
        };
        let addr = ptr as usize;
        self.validate(file, kind, offset, len, addr, user_data);
        self.n.pushes += 1;
        if self.holding() >= self.p.sq_cap || self.rng.chance(self.p.p_sqfull) {
            self.n.refused += 1;
            return Err(SqFull);
        }
        self.queued.push(DOp {
            file,
            kind,
            offset,
            len,
            ptr,
            addr,
            ud: user_data,
            result: 0,
            moves: 0,
            apply_at: 0,
            done_at: 0,
            applied: false,
            dsync,
            covers: 0,
            lost: false,
        });
        if self.rng.chance(self.p.p_submit_on_push) {
            self.submit_some(false);
        }
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        let partial = self.rng.chance(self.p.p_partial_submit);
        self.submit_some(partial);
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        let n = max.min(self.cq.len());
        for op in self.cq.drain(..n) {
            if op.kind == Kind::Commit && op.lost {
                let credit = Credit {
                    file: op.file,
                    kind: Kind::Commit,
                    offset: 0,
                    len: 0,
                    // A short transfer is the worker's EIO.
                    errno: if op.result < 0 { -op.result } else { libc::EIO },
                    chunk_op: false,
                    // The harness's step: while the worker turns, the disk's clock still says
                    // the previous one (it ticks after the turns).
                    step: self.now + 1,
                };
                self.commit_credits.push(credit);
            }
            out.push(Completion {
                user_data: op.ud,
                result: op.result,
            });
        }
        n
    }

    fn space(&mut self) -> usize {
        self.p.sq_cap.saturating_sub(self.holding())
    }

    fn queued(&self) -> u64 {
        self.queued.len() as u64
    }

    fn in_flight(&self) -> u64 {
        (self.running.len() + self.cq.len()) as u64
    }

    fn fd(&self) -> Option<RawFd> {
        None
    }

    fn set_exports(
        &mut self,
        exports: &[std::sync::Arc<xblade::export::Export>],
    ) -> io::Result<()> {
        assert!(
            self.queued.is_empty() && self.running.is_empty() && self.cq.is_empty(),
            "exports changed with operations queued or in flight"
        );
        self.sync_writes = exports.iter().map(|e| e.durable_writes()).collect();
        self.group = exports.iter().map(|e| e.group_commit()).collect();
        Ok(())
    }
}
