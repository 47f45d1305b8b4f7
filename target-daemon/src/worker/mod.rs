//! One worker: one NIC queue, one AF_XDP socket and UMEM, one storage side, run to completion.
//!
//! Loop ([`Worker::turn`]): reap storage completions → reap TX completions and refill →
//! transmit → receive a batch and decide each frame (`aoe`) → submit storage I/O; [`Worker::run`]
//! adds sleeping in `poll` when idle, and the drain at shutdown.
//!
//! Zero copy: a request is handled in the UMEM chunk it arrived in. A read lands by io_uring
//! `READ_FIXED` directly at the ATA payload offset of that chunk and the response header is
//! written over the request's; a write goes to storage by `WRITE_FIXED` straight from the
//! received payload. Copies, all counted in [`WorkerStats::copied_bytes`], happen only for:
//! a whole request frame when a wildcard address reaches several exports (discovery), and a
//! jumbo write whose payload the NIC split across several chunks (gathered into a bounce slot,
//! [`bounce`]). Jumbo reads need no copy: the response is sent as several TX descriptors, a
//! 36-byte header and whole 4 KiB chunks io_uring filled.
//!
//! The worker is generic over its packet side and its storage side ([`io`]): the daemon plugs
//! in AF_XDP and io_uring, the simulation (`tests/sim.rs`) a simulated network and disk.
//!
//! Modules: [`io`] (the seam), [`inflight`] (the in-flight table and per-export shares),
//! [`ranges`] (ordering of overlapping requests), [`bounce`], [`mapped`] (the in-memory store
//! engine), [`pacing`] (spinning, sleeping, reply batches), `request` (from frame to storage
//! operation) and `reply` (from completion to reply).

mod bounce;
mod commit;
pub mod control;
mod inflight;
pub mod io;
pub mod mapped;
mod pacing;
pub(crate) mod ranges;
mod reply;
mod request;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoe::target::{self, ExportState, Iface};
use aoe::wire::BROADCAST;
use xsk::Frame;

pub use self::bounce::Bounce;
use self::commit::Commits;
use self::control::{Control, ExportTally, Initiators, Published, Shared};
use self::inflight::InFlight;
pub use self::io::{Engines, Op, Packets, Storage, XskPackets};
use self::pacing::{IdleSpin, ReapBatch, RX_BATCH};
use self::ranges::Ranges;
use crate::export::Export;
use crate::sys;
use crate::uring::Completion;

/// Longest sleep, so the stop flag is seen promptly.
const POLL_MS: i32 = 20;
/// How long a stopping worker waits for the NIC to confirm its last replies.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of one worker (returned when it stops; nothing is logged per packet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// RX descriptors received (a jumbo frame is several).
    pub rx_frames: u64,
    /// TX descriptors transmitted (a jumbo read response is several).
    pub tx_frames: u64,
    /// Frames that got no answer (not for us, masked, R=1, …).
    pub dropped: u64,
    /// Read commands executed.
    pub reads: u64,
    /// Write commands executed.
    pub writes: u64,
    /// FLUSH CACHE commands executed.
    pub flushes: u64,
    /// Bytes read from storage into UMEM frames.
    pub read_bytes: u64,
    /// Bytes written to storage.
    pub write_bytes: u64,
    /// Storage operations that failed (answered with an ATA error).
    pub io_errors: u64,
    /// Storage operations issued again after a transient error or a short transfer.
    pub retries: u64,
    /// Requests that waited for an overlapping earlier request before going to storage.
    pub ordered_waits: u64,
    /// Bytes memcpy'd by the worker (wildcard fan-out, jumbo write gathering).
    pub copied_bytes: u64,
    /// Jumbo writes gathered from several RX fragments into a bounce slot.
    pub gathered_writes: u64,
    /// Reads answered with several TX descriptors (jumbo).
    pub multi_desc_reads: u64,
    /// Requests dropped unanswered for want of a UMEM frame or bounce slot (the initiator
    /// retransmits).
    pub no_frame: u64,
    /// Requests dropped unanswered for want of an in-flight slot: a wildcard fanned out beyond
    /// the table, or an export over its share (the initiator retransmits).
    pub no_slot: u64,
    /// Times the worker slept in `poll` for want of work.
    pub sleeps: u64,
    /// Idle spins that found work before `poll` (see `IdleSpin`).
    pub spin_hits: u64,
    /// Time spent spinning idle (looking for work that was not there, before finding some or
    /// sleeping in `poll`), nanoseconds by the worker's clock: CPU time that served nothing,
    /// for whoever divides the worker's CPU time by its frames.
    pub spin_ns: u64,
    /// Group commits issued: each made a batch of completed durable writes durable with one
    /// cache flush (see `commit`).
    pub commits: u64,
}

/// What a worker is built from.
pub struct WorkerSetup<P, S> {
    /// Interface name.
    pub ifname: String,
    /// NIC queue.
    pub queue: u32,
    /// The interface's MAC and MTU.
    pub iface: Iface,
    /// The exports served on this interface; their stores are the storage side's files in this
    /// order.
    pub exports: Vec<Arc<Export>>,
    /// The packet side.
    pub net: P,
    /// The storage side, with the UMEM (and the bounce region, if any) registered.
    pub storage: S,
    /// Bounce slots, needed when the socket receives multi-buffer frames.
    pub bounce: Option<Bounce>,
    /// In-flight table size.
    pub capacity: usize,
}

/// Everything one worker owns.
pub struct Worker<P = XskPackets, S = Engines> {
    /// Interface name, for logs.
    pub ifname: String,
    /// Queue id, for logs.
    pub queue: u32,
    iface: Iface,
    exports: Vec<Arc<Export>>,
    /// Each export's (shelf, slot), in worker order: a request's addressees are found in one
    /// dense array rather than behind every export's pointer.
    addrs: Vec<(u16, u8)>,
    /// This worker's copy of each export's protocol state, with its version.
    snaps: Vec<(u64, ExportState)>,
    net: P,
    store: S,
    bounce: Option<Bounce>,
    rx_offset: usize,
    chunk: usize,
    inflight: InFlight,
    ranges: Ranges,
    /// Durable writes waiting for a group commit.
    commits: Commits,
    /// Requests made ready by a completion (scratch for `Ranges::complete`).
    ready: Vec<u32>,
    /// Operations (user data) the storage side had no room for, in order.
    deferred: VecDeque<u64>,
    /// Frames waiting to go back on the fill ring.
    spare: Vec<Frame>,
    /// Fragments of a multi-buffer frame still arriving.
    partial: Vec<Frame>,
    /// Empty chunk lists for jumbo reads, reused so a jumbo read allocates nothing.
    chunk_lists: Vec<Vec<Frame>>,
    tx: Vec<Frame>,
    tx_outstanding: u64,
    busy_poll: bool,
    spin: IdleSpin,
    reap: ReapBatch,
    /// Scratch buffers of one loop.
    rx: Vec<Frame>,
    done: Vec<Frame>,
    completions: Vec<Completion>,
    stats: WorkerStats,
    /// In-flight table size.
    capacity: usize,
    /// Per export (in `exports` order): what this worker counted for it.
    tallies: Vec<ExportTally>,
    /// Initiators seen.
    initiators: Initiators,
    /// This loop's clock, read at most once per loop, when first needed.
    clock: Option<Instant>,
    /// The line to the control plane, and the last request served on it.
    control: Arc<Control>,
    served: u64,
    /// An export list to switch to once quiet (its generation): no request is taken meanwhile.
    switching: Option<(u64, Vec<Arc<Export>>)>,
    /// Replies held until their export's AoE state is persisted.
    held: Vec<Held>,
}

/// A reply held until its export's state is on disk (see [`crate::export::Export::persisted`]).
struct Held {
    frame: Frame,
    export: Arc<Export>,
    version: u64,
}

/// Replies held at most; beyond, replies of unpersisted exports are dropped (the initiator
/// retransmits).
const MAX_HELD: usize = 256;

impl<P: Packets, S: Storage> Worker<P, S> {
    /// Drive RX by busy polling (`recvfrom` every idle loop, never sleep) instead of
    /// interrupts; for sockets with SO_PREFER_BUSY_POLL set.
    pub fn with_busy_poll(mut self, on: bool) -> Self {
        self.busy_poll = on;
        self
    }

    /// Assemble a worker from its parts.
    pub fn new(setup: WorkerSetup<P, S>) -> Self {
        let WorkerSetup {
            ifname,
            queue,
            iface,
            exports,
            net,
            storage,
            bounce,
            capacity,
        } = setup;
        let rx_offset = net.umem().config().rx_offset() as usize;
        let chunk = net.umem().config().chunk_size as usize;
        let snaps: Vec<(u64, ExportState)> = exports.iter().map(|e| e.snapshot()).collect();
        let tallies = vec![ExportTally::default(); exports.len()];
        let bufcnts: Vec<u16> = snaps.iter().map(|(_, s)| s.bufcnt).collect();
        // At most one operation per data chunk of the largest frame, per slot.
        let ops = (usize::from(iface.mtu) / chunk + 2).max(1);
        Worker {
            ifname,
            queue,
            iface,
            snaps,
            net,
            store: storage,
            bounce,
            rx_offset,
            chunk,
            inflight: InFlight::new(capacity, &bufcnts),
            ranges: Ranges::new(capacity, exports.len()),
            commits: Commits::new(&exports),
            ready: Vec::with_capacity(capacity),
            deferred: VecDeque::with_capacity(capacity * ops),
            addrs: addresses(&exports),
            exports,
            spare: Vec::new(),
            partial: Vec::new(),
            chunk_lists: Vec::new(),
            tx: Vec::new(),
            tx_outstanding: 0,
            busy_poll: false,
            spin: IdleSpin::default(),
            reap: ReapBatch::default(),
            rx: Vec::with_capacity(RX_BATCH),
            done: Vec::with_capacity(RX_BATCH),
            completions: Vec::with_capacity(RX_BATCH),
            stats: WorkerStats::default(),
            capacity,
            tallies,
            initiators: Initiators::default(),
            clock: None,
            control: Arc::new(Control::default()),
            served: 0,
            switching: None,
            held: Vec::new(),
        }
    }

    /// The line to the control plane (counters on request, export-set changes).
    pub fn control(&self) -> Arc<Control> {
        Arc::clone(&self.control)
    }

    /// This loop's clock (read once per loop, when first needed).
    #[inline]
    fn now(&mut self) -> Instant {
        *self.clock.get_or_insert_with(Instant::now)
    }

    /// The packet side.
    pub fn net(&self) -> &P {
        &self.net
    }

    /// The packet side, mutably (the simulation delivers frames through it).
    pub fn net_mut(&mut self) -> &mut P {
        &mut self.net
    }

    /// The storage side, mutably (the simulation completes operations through it).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The counters so far.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// Requests accepted and not yet answered (waiting, in flight, or deferred).
    pub fn in_flight(&self) -> usize {
        self.ranges.present()
    }

    /// Requests accepted that wait for an overlapping earlier one before going to storage.
    pub fn waiting(&self) -> usize {
        self.ranges.waiting()
    }

    /// Where received frames start in their chunk (for tests and logs).
    pub fn rx_offset(&self) -> usize {
        self.rx_offset
    }

    /// Fill the fill ring and announce every export: what `run` does before its loop.
    pub fn start(&mut self) {
        let mut frames = Vec::new();
        let fill = self.net.fill_free() as usize;
        self.net.umem_mut().alloc_many(&mut frames, fill);
        self.spare.append(&mut frames);
        self.refill();
        self.announce();
    }

    /// Run until `stop` is set; then stop taking frames, finish in-flight I/O, send those
    /// replies, and return the counters.
    pub fn run(mut self, stop: &AtomicBool) -> std::io::Result<WorkerStats> {
        self.start();
        self.serve(stop)
    }

    /// [`Worker::run`] for a worker already [started](Worker::start): the daemon starts it
    /// (fill ring filled, exports announced) before it says the worker is serving.
    pub fn serve(mut self, stop: &AtomicBool) -> std::io::Result<WorkerStats> {
        let mut idle = 0u32;
        let mut spins = 0u32;
        let mut spin_since: Option<Instant> = None;
        let mut drain_deadline = None;
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let work = self.turn(!stopping)?;
            if stopping {
                let deadline =
                    *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                if Instant::now() > deadline && !self.held.is_empty() {
                    // Their state never reached the disk: the replies are not sent.
                    for h in std::mem::take(&mut self.held) {
                        self.stats.dropped += 1;
                        self.recycle(h.frame);
                    }
                }
                if self.quiet() && (self.tx_outstanding == 0 || Instant::now() > deadline) {
                    break;
                }
            }
            self.pace(!work);
            if work {
                if idle > 0 && self.spin.end(true) {
                    self.stats.spin_hits += 1;
                }
                self.spun(spin_since.take());
                idle = 0;
                continue;
            }
            if idle == 0 {
                spins = self.spin.begin();
                // Two clock reads per idle episode that spins, none per frame.
                if spins > 0 || self.busy_poll {
                    spin_since = Some(Instant::now());
                }
            }
            idle += 1;
            if self.busy_poll {
                // recvfrom runs the NIC's NAPI poll in this thread (preferred busy polling).
                self.net.wake_rx()?;
                continue;
            }
            if idle > spins {
                self.spun(spin_since.take());
                self.spin.end(false);
                self.reap.slept();
                self.stats.sleeps += 1;
                if self.net.needs_wakeup_fill() {
                    self.net.wake_rx()?;
                }
                // Held replies and a pending export change wait for something no descriptor
                // signals (a state file written, the last request answered): look again soon.
                let ms = if self.held.is_empty() && self.switching.is_none() {
                    POLL_MS
                } else {
                    1
                };
                sys::poll_readable(self.net.fd(), self.store.fd(), ms)?;
                idle = 0;
            }
        }
        Ok(self.stats)
    }

    /// An idle episode that spun since `since` ended.
    fn spun(&mut self, since: Option<Instant>) {
        if let Some(t) = since {
            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.stats.spin_ns = self.stats.spin_ns.saturating_add(ns);
        }
    }

    /// Tell the pacing whether the last loop found work (what `run` does after every loop), so
    /// a worker driven by [`Worker::turn`] switches between one reply per loop and batches.
    pub fn pace(&mut self, idle: bool) {
        self.reap.record(idle);
    }

    /// Whether no request is in flight and no reply waits to be queued.
    pub fn quiet(&self) -> bool {
        self.inflight.is_empty()
            && self.tx.is_empty()
            && self.store.queued() == 0
            && self.held.is_empty()
    }

    /// One loop: completions become replies, replies go out, requests come in (when `take`)
    /// and go to storage. Returns whether it found any work.
    pub fn turn(&mut self, take: bool) -> std::io::Result<bool> {
        let mut work = false;
        self.clock = None;
        if let Some(n) = self.control.pending(self.served) {
            self.serve_control(n);
        }
        // While switching to a new export list, take nothing new: drain, then switch.
        let take = take && self.switching.is_none();
        // Storage completions become replies.
        if self.store.in_flight() > 0 {
            let mut completions = std::mem::take(&mut self.completions);
            if self.store.reap(&mut completions, self.reap.cap()) > 0 {
                work = true;
                for c in completions.drain(..) {
                    self.finish(c);
                }
            }
            self.completions = completions;
        }
        if self.commits.due() {
            self.issue_commits();
        }
        self.drain_deferred();
        // Transmitted frames go back to the fill ring.
        if self.tx_outstanding > 0 {
            let n = self.net.complete(&mut self.done, 1024);
            if n > 0 {
                work = true;
                self.tx_outstanding = self.tx_outstanding.saturating_sub(n as u64);
                self.spare.append(&mut self.done);
            }
        }
        self.refill();
        if !self.held.is_empty() {
            self.release_held();
        }
        // Replies out.
        if !self.tx.is_empty() {
            let n = self.net.send(&mut self.tx);
            self.tx_outstanding += n as u64;
            self.stats.tx_frames += n as u64;
            work |= n > 0;
        }
        // In copy mode, kick only while the kernel has descriptors left to take: one kick
        // takes them all (up to 32), their completions need no kick, and kicking again until
        // they arrive is a wasted system call. A zero-copy driver's wakeup also runs the NAPI
        // that cleans completions, so there it goes on until they are in.
        let kick = if self.net.zero_copy() {
            self.tx_outstanding > 0
        } else {
            self.net.tx_unsent() > 0
        };
        if kick && self.net.needs_wakeup_tx() {
            self.net.kick_tx()?;
        }
        // Requests in, as many as the in-flight table (and bounce slots) can absorb.
        if take {
            let mut room = self.inflight.free_count().min(RX_BATCH);
            if let Some(b) = &self.bounce {
                room = room.min(b.free_count());
            }
            if room > 0 && self.net.recv(&mut self.rx, room) > 0 {
                work = true;
                self.stats.rx_frames += self.rx.len() as u64;
                let mut rx = std::mem::take(&mut self.rx);
                for f in rx.drain(..) {
                    self.receive(f);
                }
                self.rx = rx;
            }
        }
        if self.store.queued() > 0 {
            work = true;
            self.store.submit()?;
        }
        if self.switching.is_some() && self.quiet() {
            self.switch_exports()?;
            work = true;
        }
        Ok(work)
    }

    /// Serve control request `n`: take a pending export change, publish the counters.
    fn serve_control(&mut self, n: u64) {
        let control = Arc::clone(&self.control);
        let mut shared = control.lock();
        if let Some((gen, list)) = shared.change.take() {
            if gen > shared.applied && gen > shared.cancelled {
                self.switching = Some((gen, list));
            }
        }
        // A change the control plane withdrew is dropped: the worker takes requests again.
        if self
            .switching
            .as_ref()
            .is_some_and(|(gen, _)| *gen <= shared.cancelled)
        {
            self.switching = None;
        }
        self.publish(&mut shared);
        drop(shared);
        self.served = n;
        control.served(n);
    }

    /// Copy the counters into the control plane's view.
    fn publish(&mut self, shared: &mut Shared) {
        let p: &mut Published = &mut shared.published;
        p.stats.clone_from(&self.stats);
        p.exports.clear();
        for (i, (e, t)) in self.exports.iter().zip(&self.tallies).enumerate() {
            p.exports
                .push((Arc::clone(e), t.clone(), u64::from(self.inflight.held(i))));
        }
        p.initiators.clear();
        p.initiators.extend(self.initiators.iter().copied());
        p.in_flight = self.ranges.present() as u64;
        p.at = Some(Instant::now());
    }

    /// Switch to the pending export list (the worker is quiet: nothing in flight, nothing
    /// held). Counters of the exports that stay are kept; new exports are announced.
    fn switch_exports(&mut self) -> std::io::Result<()> {
        let Some((gen, list)) = self.switching.take() else {
            return Ok(());
        };
        // Under the lock from the check to `applied`: a change is either applied or withdrawn
        // (`Control::change`), never both.
        let control = Arc::clone(&self.control);
        let mut shared = control.lock();
        if gen <= shared.cancelled {
            return Ok(());
        }
        if let Err(e) = self.store.set_exports(&list) {
            shared.failed = Some(format!(
                "worker {} queue {}: switching exports: {e}",
                self.ifname, self.queue
            ));
            return Err(e);
        }
        self.addrs = addresses(&list);
        let old = std::mem::replace(&mut self.exports, list);
        let mut old_tallies = std::mem::take(&mut self.tallies);
        let mut fresh = Vec::new();
        for (i, e) in self.exports.iter().enumerate() {
            match old.iter().position(|o| Arc::ptr_eq(o, e)) {
                Some(j) => self.tallies.push(std::mem::take(&mut old_tallies[j])),
                None => {
                    self.tallies.push(ExportTally::default());
                    fresh.push(i);
                }
            }
        }
        self.snaps = self.exports.iter().map(|e| e.snapshot()).collect();
        let bufcnts: Vec<u16> = self.snaps.iter().map(|(_, s)| s.bufcnt).collect();
        self.inflight = InFlight::new(self.capacity, &bufcnts);
        self.ranges = Ranges::new(self.capacity, self.exports.len());
        self.commits = Commits::new(&self.exports);
        for i in fresh {
            self.announce_export(i);
        }
        shared.applied = gen;
        shared.failed = None;
        self.publish(&mut shared);
        drop(shared);
        drop(old);
        Ok(())
    }

    /// Queue replies whose export's state is persisted now.
    fn release_held(&mut self) {
        let mut i = 0;
        while i < self.held.len() {
            let h = &self.held[i];
            if h.export.persisted() >= h.version {
                let h = self.held.swap_remove(i);
                self.tx.push(h.frame);
            } else {
                i += 1;
            }
        }
    }

    /// Queue a reply for export `ei`, or hold it while the export's AoE state changed and is
    /// not on disk yet (so a reply confirming a change never leaves before the change is
    /// persisted).
    pub(super) fn reply_or_hold(&mut self, ei: usize, frame: Frame) {
        let Some(e) = self.exports.get(ei) else {
            return self.recycle(frame);
        };
        let version = e.version();
        if e.persisted() >= version {
            return self.tx.push(frame);
        }
        if self.held.len() >= MAX_HELD {
            self.stats.dropped += 1;
            return self.recycle(frame);
        }
        let export = Arc::clone(e);
        self.held.push(Held {
            frame,
            export,
            version,
        });
    }

    /// Send the unsolicited config response for every export: to broadcast, or to each MAC of
    /// the export's mask list.
    fn announce(&mut self) {
        for i in 0..self.exports.len() {
            self.announce_export(i);
        }
    }

    /// Send export `i`'s unsolicited config response.
    fn announce_export(&mut self, i: usize) {
        self.refresh(i);
        let Some((_, state)) = self.snaps.get(i) else {
            return;
        };
        let state = state.clone();
        let dsts = if state.mask.is_empty() {
            vec![BROADCAST]
        } else {
            state.mask.clone()
        };
        for dst in dsts {
            let Some(mut f) = self.net.umem_mut().alloc() else {
                return;
            };
            let n = target::advertisement(
                &state,
                &self.iface,
                dst,
                &mut self.net.umem().chunk_mut(&mut f)[..],
            );
            f.set(0, n as u32);
            self.tx.push(f);
        }
    }

    /// Put spare frames on the fill ring; keep what does not fit for later.
    fn refill(&mut self) {
        if !self.spare.is_empty() {
            self.net.fill(&mut self.spare);
        }
    }

    fn recycle(&mut self, mut f: Frame) {
        f.set_options(0);
        self.spare.push(f);
    }

    /// A free chunk for a TX descriptor: from the UMEM's free list, else from the spares.
    fn alloc_frame(&mut self) -> Option<Frame> {
        self.net.umem_mut().alloc().or_else(|| self.spare.pop())
    }

    /// Bring this worker's copy of export `ei`'s state up to date (one atomic load when nothing
    /// changed).
    fn refresh(&mut self, ei: usize) {
        if let (Some(e), Some(snap)) = (self.exports.get(ei), self.snaps.get_mut(ei)) {
            // Reuses the copy's buffers: a state change costs no allocation here.
            e.snapshot_into(snap);
        }
    }

    fn free_bounce(&mut self, slot: Option<u32>) {
        if let (Some(slot), Some(b)) = (slot, self.bounce.as_mut()) {
            b.put(slot);
        }
    }
}

/// Each export's (shelf, slot), in order.
fn addresses(exports: &[Arc<Export>]) -> Vec<(u16, u8)> {
    exports.iter().map(|e| (e.shelf(), e.slot())).collect()
}
