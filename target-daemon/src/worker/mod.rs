//! One worker: one NIC queue, one AF_XDP socket and UMEM, one io_uring, run to completion.
//!
//! Loop: reap storage completions → reap TX completions and refill → transmit → receive a batch
//! and decide each frame (`aoe`) → submit storage I/O → sleep in `poll` only when idle.
//!
//! Zero copy: a request is handled in the UMEM chunk it arrived in. A read lands by io_uring
//! `READ_FIXED` directly at the ATA payload offset of that chunk and the response header is
//! written over the request's; a write goes to storage by `WRITE_FIXED` straight from the
//! received payload. Copies, all counted in [`WorkerStats::copied_bytes`], happen only for:
//! a whole request frame when a wildcard address reaches several exports (discovery), and a
//! jumbo write whose payload the NIC split across several chunks (multi-buffer RX puts every
//! fragment behind the same headroom, so the pieces are neither contiguous nor block-sized;
//! they are gathered into an aligned bounce slot). Jumbo reads need no copy: the response is
//! sent as several TX descriptors, a 36-byte header and whole 4 KiB chunks io_uring filled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoe::target::{self, Decision, ExportState, Iface, IoOutcome};
use aoe::wire::{Header, ATA_HLEN, BROADCAST, ETHERTYPE_AOE, SECTOR};
use xsk::if_xdp::XDP_PKT_CONTD;
use xsk::{Frame, Socket, Umem};

use crate::export::Export;
use crate::sys::{self, Region};
use crate::uring::{Completion, Uring};

/// Frames taken from the RX ring per loop.
const RX_BATCH: usize = 64;
/// Queued io_uring entries that trigger a submission before the RX batch ends (see `issue`).
const SUBMIT_EVERY: u64 = 4;
/// Idle loops before the worker sleeps in `poll`, while spinning pays (see `IdleSpin`).
const IDLE_SPINS: u32 = 256;
/// While spinning does not pay, one idle episode in this many still spins, to notice when it
/// would pay again.
const SPIN_PROBE_EVERY: u32 = 16;
/// Spinning episodes judged together.
const SPIN_WINDOW: u32 = 32;
/// Spinning pays when at least 1 in this many spinning episodes finds work before `poll`.
const SPIN_PAYS_ONE_IN: u32 = 4;
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
    /// Bytes memcpy'd by the worker (wildcard fan-out, jumbo write gathering).
    pub copied_bytes: u64,
    /// Jumbo writes gathered from several RX fragments into a bounce slot.
    pub gathered_writes: u64,
    /// Reads answered with several TX descriptors (jumbo).
    pub multi_desc_reads: u64,
    /// Requests answered with an error for want of a free UMEM frame or bounce slot.
    pub no_frame: u64,
    /// Times the worker slept in `poll` for want of work.
    pub sleeps: u64,
    /// Idle spins that found work before `poll` (see `IdleSpin`).
    pub spin_hits: u64,
}

/// Aligned bounce slots for jumbo writes that arrive in several fragments.
pub struct Bounce {
    region: Region,
    slot_size: usize,
    free: Vec<u32>,
}

impl Bounce {
    /// `slots` slots of `slot_size` bytes (a multiple of 4096).
    pub fn new(slots: usize, slot_size: usize) -> std::io::Result<Bounce> {
        Ok(Bounce {
            region: Region::new(slots * slot_size)?,
            slot_size,
            free: (0..slots as u32).rev().collect(),
        })
    }

    /// The region, for io_uring registration.
    pub fn area(&self) -> (*mut u8, usize) {
        self.region.area()
    }
}

/// A request whose storage I/O is in flight.
struct Pending {
    /// The request's first (often only) chunk: the response header is built here.
    frame: Frame,
    export: usize,
    decision: Decision,
    /// Bytes the single operation must move, or the read's total for a multi-chunk read.
    bytes: u32,
    ops_left: u32,
    error: Option<i32>,
    /// Payload chunks of a multi-descriptor read.
    chunks: Vec<Frame>,
    /// Bounce slot of a gathered write.
    bounce: Option<u32>,
}

/// Bytes moved by operation `op` of a request of `bytes` split into whole chunks of `chunk`.
fn op_len(bytes: u32, chunks: usize, op: usize, chunk: u32) -> u32 {
    if chunks == 0 {
        bytes
    } else {
        (bytes - op as u32 * chunk).min(chunk)
    }
}

/// What a worker is built from.
pub struct WorkerSetup {
    /// Interface name.
    pub ifname: String,
    /// NIC queue.
    pub queue: u32,
    /// The interface's MAC and MTU.
    pub iface: Iface,
    /// The exports served on this interface; their fds are registered in `uring` in this order.
    pub exports: Vec<Arc<Export>>,
    /// The packet buffers.
    pub umem: Umem,
    /// The AF_XDP socket bound to (interface, queue) over `umem`.
    pub sock: Socket,
    /// The ring, with the UMEM (and the bounce region, if any) registered as fixed buffers.
    pub uring: Uring,
    /// Bounce slots, needed when the socket receives multi-buffer frames.
    pub bounce: Option<Bounce>,
    /// In-flight table size.
    pub capacity: usize,
}

/// Everything one worker owns.
pub struct Worker {
    /// Interface name, for logs.
    pub ifname: String,
    /// Queue id, for logs.
    pub queue: u32,
    iface: Iface,
    exports: Vec<Arc<Export>>,
    /// This worker's copy of each export's protocol state, with its version.
    snaps: Vec<(u64, ExportState)>,
    umem: Umem,
    sock: Socket,
    uring: Uring,
    bounce: Option<Bounce>,
    rx_offset: usize,
    chunk: usize,
    slots: Vec<Option<Pending>>,
    free_slots: Vec<u32>,
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
    /// Operations on mapped in-memory stores, copied (then completed like io_uring's) once the
    /// whole RX batch is decided, so the copies run back to back: (export, operation, user data).
    inline_ops: Vec<(usize, Op, u64)>,
    stats: WorkerStats,
}

/// How long an idle worker spins before it sleeps in `poll`: `IDLE_SPINS` loops while spinning
/// pays, none while it does not.
///
/// Spinning pays when work arrives during the spin: a request from an initiator whose round
/// trip is shorter than the spin (QD 1 latency is 3.3 µs spinning against 18.7 µs sleeping on
/// the lab), or the next burst from a generator on another core. It cannot pay when whatever
/// would send the work needs this worker's own core (a generator or another busy thread pinned
/// to it, as on a 2-queue lab with 2 cores): every spin is then time taken from it and billed to
/// the worker (1-queue to 2-queue CPU per frame went +19…+23% with 256 spins). So each idle
/// episode (idle loops until work or `poll`) is a hit or a miss; over every `SPIN_WINDOW`
/// spinning episodes, fewer than 1 hit in `SPIN_PAYS_ONE_IN` turns spinning off, and while off,
/// one episode in `SPIN_PROBE_EVERY` still spins, so the judgement follows the load.
#[derive(Debug)]
struct IdleSpin {
    on: bool,
    /// Idle episodes since spinning was judged (counts the non-spinning ones while off).
    episodes: u32,
    /// Spinning episodes judged so far in this window, and how many of them found work.
    tries: u32,
    hits: u32,
    /// Whether the current episode spins (is judged).
    probing: bool,
}

impl Default for IdleSpin {
    fn default() -> Self {
        IdleSpin {
            on: true,
            episodes: 0,
            tries: 0,
            hits: 0,
            probing: false,
        }
    }
}

impl IdleSpin {
    /// An idle episode starts: how many idle loops to spin before `poll`.
    fn begin(&mut self) -> u32 {
        self.episodes = self.episodes.wrapping_add(1);
        self.probing = self.on || self.episodes.is_multiple_of(SPIN_PROBE_EVERY);
        if self.probing {
            IDLE_SPINS
        } else {
            0
        }
    }

    /// The episode ended: with work found while spinning (`hit`), or in `poll`. Returns
    /// whether it was a spinning episode that found work.
    fn end(&mut self, hit: bool) -> bool {
        if !std::mem::take(&mut self.probing) {
            return false;
        }
        self.tries += 1;
        self.hits += u32::from(hit);
        if self.tries == SPIN_WINDOW {
            self.on = self.hits * SPIN_PAYS_ONE_IN >= self.tries;
            self.tries = 0;
            self.hits = 0;
        }
        hit
    }
}

/// How many io_uring completions one loop turns into replies before it sends them and takes
/// new requests: one while the worker has time to spare, a whole batch while it has none.
///
/// A disk completes in bursts (this lab's virtio disk hands back most of 64 reads at once).
/// Replying to the whole burst before taking the next requests puts the requests the initiator
/// sends in answer behind that whole loop, so the disk idles between bursts; replying one by one
/// and taking requests in between keeps it fed like fio's submit-on-completion loop (1 KiB random
/// reads at QD 64: 115k → 138k IOPS against fio's 150k). That costs a `sendto` and an
/// `io_uring_enter` per request, which only a worker with slack can afford: over every
/// `REAP_WINDOW` loops, a worker that was idle in at least 1 loop in `REAP_SLACK_ONE_IN` replies
/// one by one, otherwise a batch at a time.
#[derive(Debug)]
struct ReapBatch {
    loops: u32,
    idle_loops: u32,
    slept: bool,
    cap: usize,
}

/// Loops judged together by `ReapBatch`.
const REAP_WINDOW: u32 = 256;
/// A worker idle in at least 1 loop in this many has slack.
const REAP_SLACK_ONE_IN: u32 = 16;

impl Default for ReapBatch {
    fn default() -> Self {
        ReapBatch {
            loops: 0,
            idle_loops: 0,
            slept: false,
            cap: 1,
        }
    }
}

impl ReapBatch {
    /// Completions to reap in this loop.
    fn cap(&self) -> usize {
        self.cap
    }

    /// The worker is about to sleep in `poll`: it has slack.
    fn slept(&mut self) {
        self.slept = true;
    }

    /// A loop ended, `idle` if it found no work.
    fn record(&mut self, idle: bool) {
        self.loops += 1;
        self.idle_loops += u32::from(idle);
        if self.loops == REAP_WINDOW {
            let slack = std::mem::take(&mut self.slept)
                || self.idle_loops * REAP_SLACK_ONE_IN >= self.loops;
            self.cap = if slack { 1 } else { RX_BATCH };
            self.loops = 0;
            self.idle_loops = 0;
        }
    }
}

/// One storage operation.
#[derive(Clone, Copy)]
enum Op {
    Read {
        ptr: *mut u8,
        len: u32,
        offset: u64,
    },
    Write {
        ptr: *const u8,
        len: u32,
        offset: u64,
        dsync: bool,
    },
    Fsync,
}

// SAFETY: an `Op`'s pointers refer to the UMEM or bounce region owned by the same worker that
// holds the `Op` (its in-flight table keeps the memory parked), so they move with the worker.
unsafe impl Send for Op {}

impl Worker {
    /// Drive RX by busy polling (`recvfrom` every idle loop, never sleep) instead of
    /// interrupts; for sockets with SO_PREFER_BUSY_POLL set.
    pub fn with_busy_poll(mut self, on: bool) -> Self {
        self.busy_poll = on;
        self
    }

    /// Assemble a worker from its parts.
    pub fn new(setup: WorkerSetup) -> Self {
        let WorkerSetup {
            ifname,
            queue,
            iface,
            exports,
            umem,
            sock,
            uring,
            bounce,
            capacity,
        } = setup;
        let rx_offset = umem.config().rx_offset() as usize;
        let chunk = umem.config().chunk_size as usize;
        let snaps = exports.iter().map(|e| e.snapshot()).collect();
        Worker {
            ifname,
            queue,
            iface,
            exports,
            snaps,
            umem,
            sock,
            uring,
            bounce,
            rx_offset,
            chunk,
            slots: (0..capacity).map(|_| None).collect(),
            free_slots: (0..capacity as u32).rev().collect(),
            spare: Vec::new(),
            partial: Vec::new(),
            chunk_lists: Vec::new(),
            tx: Vec::new(),
            tx_outstanding: 0,
            busy_poll: false,
            spin: IdleSpin::default(),
            reap: ReapBatch::default(),
            inline_ops: Vec::new(),
            stats: WorkerStats::default(),
        }
    }

    /// The AF_XDP socket (to register in the XSKMAP).
    pub fn socket(&self) -> &Socket {
        &self.sock
    }

    /// Run until `stop` is set; then stop taking frames, finish in-flight I/O, send those
    /// replies, and return the counters.
    pub fn run(mut self, stop: &AtomicBool) -> std::io::Result<WorkerStats> {
        let mut frames = Vec::new();
        let fill = self.sock.fill_free() as usize;
        self.umem.alloc_many(&mut frames, fill);
        self.spare.append(&mut frames);
        self.refill();
        self.announce();

        let mut rx = Vec::with_capacity(RX_BATCH);
        let mut done = Vec::with_capacity(RX_BATCH);
        let mut completions: Vec<Completion> = Vec::with_capacity(RX_BATCH);
        let mut idle = 0u32;
        let mut spins = 0u32;
        let mut drain_deadline = None;
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let mut work = false;

            // Storage completions become replies.
            if self.uring.in_flight() > 0 && self.uring.reap(&mut completions, self.reap.cap()) > 0
            {
                work = true;
                for c in completions.drain(..) {
                    self.finish(c);
                }
            }
            // Transmitted frames go back to the fill ring.
            if self.tx_outstanding > 0 {
                let n = self.sock.complete(&mut done, 1024);
                if n > 0 {
                    work = true;
                    self.tx_outstanding -= n as u64;
                    self.spare.append(&mut done);
                }
            }
            self.refill();
            // Replies out.
            if !self.tx.is_empty() {
                let n = self.sock.send(&mut self.tx);
                self.tx_outstanding += n as u64;
                self.stats.tx_frames += n as u64;
                work |= n > 0;
            }
            // In copy mode, kick only while the kernel has descriptors left to take: one kick
            // takes them all (up to 32), their completions need no kick, and kicking again until
            // they arrive is a wasted system call (with a generator on the worker's core: 2.6
            // `sendto` per `poll` before, 1.65 after, under strace). A zero-copy driver's wakeup
            // also runs the NAPI that cleans completions, so there it goes on until they are in.
            let kick = if self.sock.zero_copy() {
                self.tx_outstanding > 0
            } else {
                self.sock.tx_unsent() > 0
            };
            if kick && self.sock.needs_wakeup_tx() {
                self.sock.kick_tx()?;
            }
            // Requests in, as many as the in-flight table (and bounce slots) can absorb.
            if !stopping {
                let mut room = self.free_slots.len().min(RX_BATCH);
                if let Some(b) = &self.bounce {
                    room = room.min(b.free.len());
                }
                if room > 0 && self.sock.recv(&mut rx, room) > 0 {
                    work = true;
                    self.stats.rx_frames += rx.len() as u64;
                    for f in rx.drain(..) {
                        self.receive(f);
                    }
                }
            }
            if !self.inline_ops.is_empty() {
                work = true;
                self.run_inline_ops();
            }
            if self.uring.queued() > 0 {
                self.uring.submit()?;
            }

            if stopping {
                let deadline =
                    *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                let idle_io =
                    self.uring.in_flight() == 0 && self.tx.is_empty() && self.inline_ops.is_empty();
                if idle_io && (self.tx_outstanding == 0 || Instant::now() > deadline) {
                    break;
                }
            }
            self.reap.record(!work);
            if work {
                if idle > 0 && self.spin.end(true) {
                    self.stats.spin_hits += 1;
                }
                idle = 0;
                continue;
            }
            if idle == 0 {
                spins = self.spin.begin();
            }
            idle += 1;
            if self.busy_poll {
                // recvfrom runs the NIC's NAPI poll in this thread (preferred busy polling).
                self.sock.wake_rx()?;
                continue;
            }
            if idle > spins {
                self.spin.end(false);
                self.reap.slept();
                self.stats.sleeps += 1;
                if self.sock.needs_wakeup_fill() {
                    self.sock.wake_rx()?;
                }
                let ring = (self.uring.in_flight() > 0).then(|| self.uring.fd());
                sys::poll_readable(self.sock.fd(), ring, POLL_MS)?;
                idle = 0;
            }
        }
        Ok(self.stats)
    }

    /// Send the unsolicited config response for every export: to broadcast, or to each MAC of
    /// the export's mask list.
    fn announce(&mut self) {
        for i in 0..self.exports.len() {
            self.refresh(i);
            let state = self.snaps[i].1.clone();
            let dsts = if state.mask.is_empty() {
                vec![BROADCAST]
            } else {
                state.mask.clone()
            };
            for dst in dsts {
                let Some(mut f) = self.umem.alloc() else {
                    return;
                };
                let n = target::advertisement(
                    &state,
                    &self.iface,
                    dst,
                    &mut self.umem.chunk_mut(&mut f)[..],
                );
                f.set(0, n as u32);
                self.tx.push(f);
            }
        }
    }

    /// Put spare frames on the fill ring; keep what does not fit for later.
    fn refill(&mut self) {
        if !self.spare.is_empty() {
            self.sock.fill(&mut self.spare);
        }
    }

    fn recycle(&mut self, mut f: Frame) {
        f.set_options(0);
        self.spare.push(f);
    }

    /// A free chunk for a TX descriptor: from the UMEM's free list, else from the spares.
    fn alloc_frame(&mut self) -> Option<Frame> {
        self.umem.alloc().or_else(|| self.spare.pop())
    }

    /// Bring this worker's copy of export `ei`'s state up to date (one atomic load when nothing
    /// changed).
    fn refresh(&mut self, ei: usize) {
        if self.exports[ei].version() != self.snaps[ei].0 {
            self.snaps[ei] = self.exports[ei].snapshot();
        }
    }

    /// One RX descriptor: a whole frame, or a fragment of a multi-buffer frame.
    fn receive(&mut self, f: Frame) {
        if self.partial.is_empty() && !f.is_contd() {
            return self.handle(f, None);
        }
        let last = !f.is_contd();
        self.partial.push(f);
        if last {
            self.receive_fragments();
        }
    }

    /// A frame that arrived in several chunks (in `self.partial`). Only a write carries meaning
    /// beyond the first chunk (every other request fits in it; the rest is padding or junk), so
    /// a write is gathered into a bounce slot and everything else is decided on its first chunk.
    fn receive_fragments(&mut self) {
        // Taken and given back below, so the buffer's capacity is reused frame after frame.
        let mut frags = std::mem::take(&mut self.partial);
        let first = self.umem.data(&frags[0]);
        let total: usize = frags.iter().map(|f| f.len() as usize).sum();
        let is_write = first.len() >= ATA_HLEN
            && first[12..14] == ETHERTYPE_AOE.to_be_bytes()
            && first[19] == aoe::wire::cmd::ATA
            && matches!(first[27], aoe::ata::WRITE | aoe::ata::WRITE_EXT);
        let slot = if is_write {
            self.bounce.as_mut().and_then(|b| b.free.pop())
        } else {
            None
        };
        if is_write && slot.is_none() {
            // RX is limited to the free bounce slots, so this is not expected; the write is
            // then decided on its first chunk alone and answered ABRT (short payload).
            self.stats.no_frame += 1;
        }
        if let (Some(slot), Some(b)) = (slot, self.bounce.as_mut()) {
            let mut at = slot as usize * b.slot_size + self.rx_offset;
            let end = b.slot_size * (slot as usize + 1);
            for f in &frags {
                let piece = self.umem.data(f);
                let n = piece.len().min(end - at);
                b.region.slice_mut(at, n).copy_from_slice(&piece[..n]);
                at += n;
            }
            self.stats.copied_bytes += total as u64;
        }
        for f in frags.drain(1..) {
            self.recycle(f);
        }
        let head = frags.pop().expect("at least one fragment");
        self.partial = frags;
        self.handle(head, slot.map(|s| (s, total)))
    }

    /// One received frame (with its gathered copy, for a jumbo write): find the exports it
    /// addresses and decide for each.
    fn handle(&mut self, frame: Frame, gathered: Option<(u32, usize)>) {
        let (shelf, slot) = match Header::new(self.umem.data(&frame)) {
            Some(h) if h.ethertype() == ETHERTYPE_AOE && !h.is_response() => (h.shelf(), h.slot()),
            _ => {
                self.stats.dropped += 1;
                self.free_bounce(gathered);
                return self.recycle(frame);
            }
        };
        let mut last = None;
        for i in 0..self.exports.len() {
            if !self.exports[i].addressed(shelf, slot) {
                continue;
            }
            if let Some(prev) = last.replace(i) {
                // A wildcard reaching several exports: each gets its own copy of the request.
                match self.duplicate(&frame, gathered) {
                    Some((copy, g)) => self.decide(copy, prev, g),
                    None => self.stats.no_frame += 1,
                }
            }
        }
        match last {
            Some(i) => self.decide(frame, i, gathered),
            None => {
                self.stats.dropped += 1;
                self.free_bounce(gathered);
                self.recycle(frame);
            }
        }
    }

    /// Copy a request (and its bounce slot) for wildcard fan-out.
    fn duplicate(
        &mut self,
        frame: &Frame,
        gathered: Option<(u32, usize)>,
    ) -> Option<(Frame, Option<(u32, usize)>)> {
        let mut copy = self.alloc_frame()?;
        let (off, len) = (frame.offset() as usize, frame.len() as usize);
        self.umem.chunk_mut(&mut copy)[off..off + len].copy_from_slice(self.umem.data(frame));
        copy.set(off as u32, len as u32);
        self.stats.copied_bytes += len as u64;
        let g = match (gathered, self.bounce.as_mut()) {
            (Some((src, total)), Some(b)) => {
                let Some(dst) = b.free.pop() else {
                    self.recycle(copy);
                    return None;
                };
                let size = b.slot_size;
                let all = b.region.slice_mut(0, (src.max(dst) as usize + 1) * size);
                all.copy_within(
                    src as usize * size..(src as usize + 1) * size,
                    dst as usize * size,
                );
                self.stats.copied_bytes += total as u64;
                Some((dst, total))
            }
            _ => None,
        };
        Some((copy, g))
    }

    fn free_bounce(&mut self, gathered: Option<(u32, usize)>) {
        if let (Some((slot, _)), Some(b)) = (gathered, self.bounce.as_mut()) {
            b.free.push(slot);
        }
    }

    /// Run the protocol decision for `frame` against export `ei`, in place (in the bounce slot
    /// for a gathered jumbo write).
    fn decide(&mut self, mut frame: Frame, ei: usize, gathered: Option<(u32, usize)>) {
        let off = frame.offset() as usize;
        let len = frame.len() as usize;
        self.refresh(ei);
        let export = &self.exports[ei];
        let out = {
            let state = &self.snaps[ei].1;
            match (gathered, self.bounce.as_mut()) {
                (Some((slot, total)), Some(b)) => {
                    let base = slot as usize * b.slot_size + self.rx_offset;
                    let buf = b.region.slice_mut(base, b.slot_size - self.rx_offset);
                    target::decide(state, &self.iface, buf, total)
                }
                _ => target::decide(
                    state,
                    &self.iface,
                    &mut self.umem.chunk_mut(&mut frame)[off..],
                    len,
                ),
            }
        };
        if let Some(change) = out.change {
            export.apply(change);
        }
        match out.decision {
            Decision::Reply(n) => {
                if let (Some((slot, _)), Some(b)) = (gathered, self.bounce.as_mut()) {
                    // A write answered at once (an error): the reply moves to the frame's chunk.
                    let base = slot as usize * b.slot_size + self.rx_offset;
                    let n = n.min(self.chunk - off);
                    self.umem.chunk_mut(&mut frame)[off..off + n]
                        .copy_from_slice(b.region.slice_mut(base, n));
                    b.free.push(slot);
                }
                frame.set(off as u32, n.min(self.chunk - off) as u32);
                frame.set_options(0);
                self.tx.push(frame);
            }
            Decision::Drop => {
                self.stats.dropped += 1;
                self.free_bounce(gathered);
                self.recycle(frame);
            }
            d => self.submit(frame, ei, d, gathered.map(|g| g.0)),
        }
    }

    /// Queue the storage operation(s) for a decision; the frame waits in the in-flight table.
    fn submit(&mut self, frame: Frame, ei: usize, decision: Decision, bounce: Option<u32>) {
        let off = frame.offset() as usize;
        let byte_offset = self.exports[ei].backing.byte_offset();
        let mut p = Pending {
            frame,
            export: ei,
            decision,
            bytes: 0,
            ops_left: 1,
            error: None,
            chunks: Vec::new(),
            bounce,
        };
        let (lba, sectors) = match &p.decision {
            Decision::Read { lba, sectors } | Decision::Write { lba, sectors, .. } => {
                (*lba, *sectors)
            }
            _ => (0, 0),
        };
        p.bytes = u32::from(sectors) * SECTOR as u32;
        let offset = byte_offset + lba * SECTOR as u64;
        // A jumbo read goes into whole chunks, each filled by its own read, sent as TX fragments.
        let jumbo_read = matches!(p.decision, Decision::Read { .. })
            && ATA_HLEN + p.bytes as usize > self.chunk - off;
        if jumbo_read {
            p.chunks = self.chunk_lists.pop().unwrap_or_default();
            let n = (p.bytes as usize).div_ceil(self.chunk);
            for i in 0..n {
                match self.alloc_frame() {
                    Some(mut c) => {
                        c.set(0, op_len(p.bytes, n, i, self.chunk as u32));
                        p.chunks.push(c);
                    }
                    None => break,
                }
            }
            p.ops_left = n as u32;
            if p.chunks.len() < n {
                return self.fail_now(p, "no free UMEM frame for a jumbo read response");
            }
        }
        if self.exports[ei].map.is_none() && self.uring.sq_space() < p.ops_left as usize {
            let _ = self.uring.submit();
            if self.exports[ei].map.is_none() && self.uring.sq_space() < p.ops_left as usize {
                return self.fail_now(p, "io_uring submission queue full");
            }
        }
        let slot = self
            .free_slots
            .pop()
            .expect("RX is limited to the free slots");
        let ud = |op: usize| u64::from(slot) | ((op as u64) << 32);
        let dsync = self.exports[ei].durable_writes();
        let mut pushed = Ok(());
        match p.decision.clone() {
            Decision::Read { .. } if jumbo_read => {
                for i in 0..p.chunks.len() {
                    let len = p.chunks[i].len();
                    let ptr = self.umem.data_ptr(&mut p.chunks[i]);
                    // `ptr..ptr + len` is chunk i (len ≤ chunk size) in the registered UMEM;
                    // the chunk stays parked in `p.chunks` until every completion is handled.
                    let offset = offset + (i * self.chunk) as u64;
                    pushed = pushed.and(self.issue(ei, Op::Read { ptr, len, offset }, ud(i)));
                }
            }
            Decision::Read { .. } => {
                // The data lands right behind the request header, in the same chunk.
                let payload = self.umem.data_ptr(&mut p.frame).wrapping_add(ATA_HLEN);
                // `payload..payload + bytes` lies in this frame's chunk (not a jumbo read, so
                // 36 + bytes fits behind the offset), in the registered UMEM.
                pushed = self.issue(
                    ei,
                    Op::Read {
                        ptr: payload,
                        len: p.bytes,
                        offset,
                    },
                    ud(0),
                );
            }
            Decision::Write { payload, .. } => {
                let ptr = match (bounce, self.bounce.as_ref()) {
                    (Some(b), Some(bb)) => bb
                        .area()
                        .0
                        .wrapping_add(b as usize * bb.slot_size + self.rx_offset + payload.start),
                    _ => self.umem.data_ptr(&mut p.frame).wrapping_add(payload.start),
                };
                debug_assert!(self.exports[ei].backing.check_aligned(
                    lba * SECTOR as u64,
                    u64::from(p.bytes),
                    ptr as usize
                ));
                // The payload range was bounded by the aoe crate to the received frame (in its
                // chunk, or in its bounce slot: both registered regions).
                let op = Op::Write {
                    ptr,
                    len: p.bytes,
                    offset,
                    dsync,
                };
                pushed = self.issue(ei, op, ud(0));
            }
            _ => pushed = self.issue(ei, Op::Fsync, ud(0)),
        }
        // Space was checked above, so every push succeeded; a failure here is a bug.
        assert!(
            pushed.is_ok(),
            "io_uring refused an operation after reporting space for it"
        );
        self.slots[slot as usize] = Some(p);
    }

    /// Start one storage operation on export `ei`'s file: queued on io_uring, or, for a mapped
    /// in-memory store, queued for [`Worker::run_inline_ops`].
    ///
    /// The memory an `Op` names must be a frame chunk or bounce slot parked in the in-flight
    /// table under `user_data`'s slot, so nothing else touches it until its completion is
    /// handled in `finish`; `submit` only builds such `Op`s.
    fn issue(&mut self, ei: usize, op: Op, user_data: u64) -> Result<(), crate::uring::SqFull> {
        let file = ei as u32;
        if self.exports[ei].map.is_some() {
            self.inline_ops.push((ei, op, user_data));
            return Ok(());
        }
        match op {
            Op::Read { ptr, len, offset } => {
                // SAFETY: see above: the range lies in a registered region (UMEM or bounce)
                // and stays parked, untouched, until this completion is reaped.
                unsafe { self.uring.push_read(file, ptr, len, offset, user_data) }
            }
            Op::Write {
                ptr,
                len,
                offset,
                dsync,
            } => {
                // SAFETY: as for the read; the kernel only reads the range.
                unsafe {
                    self.uring
                        .push_write(file, ptr, len, offset, user_data, dsync)
                }
            }
            Op::Fsync => self.uring.push_fsync(file, true, user_data),
        }?;
        // Hand the device a few requests at a time instead of a whole RX batch at its end:
        // the first requests of a batch do not wait for the rest to be decided, and a
        // virtualised disk serves a steady trickle faster than bursts (fio on this lab's
        // virtio disk: 160k IOPS submitting one by one, 122k in batches of 16). Measured,
        // 1 KiB random reads from a file at QD 64: +6 to +14% (medians of 5) over one
        // submission per batch. A failure is not lost: the entries stay queued, and the
        // submission at the end of the batch returns it.
        if self.uring.queued() >= SUBMIT_EVERY {
            let _ = self.uring.submit();
        }
        Ok(())
    }

    /// Carry out the queued operations on mapped in-memory stores and complete them.
    fn run_inline_ops(&mut self) {
        let mut ops = std::mem::take(&mut self.inline_ops);
        // Start loading the store bytes of the whole batch before copying any of them, so the
        // batch's cache misses overlap instead of each copy waiting for its own (a random
        // 1 KiB read is 16 misses). Measured, 1 KiB random reads from a 256 MiB store: +9 to
        // +16% over no prefetch, and better than prefetching a few operations ahead or at
        // decide time. A read's destination chunk is taken for writing too: the fill ring
        // recycles 2048 chunks, more than the L2 holds, so each copy's stores would otherwise
        // wait for line ownership one line at a time, and the next non-forwardable load behind
        // them (in `finish`) with them. Measured, 1 KiB random reads: +3% (7 of 8 pairs);
        // the same for writes (store lines taken for writing) gained nothing.
        for &(ei, op, _) in &ops {
            let export = &self.exports[ei];
            let Some(map) = &export.map else { continue };
            let base = export.backing.byte_offset();
            match op {
                Op::Read { ptr, len, offset } => {
                    map.prefetch(offset - base, len as usize);
                    sys::prefetch_for_write(ptr, len as usize);
                }
                Op::Write { len, offset, .. } => map.prefetch(offset - base, len as usize),
                Op::Fsync => {}
            }
        }
        for (ei, op, user_data) in ops.drain(..) {
            let export = &self.exports[ei];
            let map = export.map.as_ref().expect("in-memory exports are mapped");
            let base = export.backing.byte_offset();
            let result = match op {
                Op::Read { ptr, len, offset } => {
                    // SAFETY: `issue` only queues a chunk or bounce-slot range parked in the
                    // in-flight table under `user_data`: writable, untouched until `finish`.
                    unsafe { map.read_into(offset - base, ptr, len as usize) };
                    len as i32
                }
                Op::Write {
                    ptr, len, offset, ..
                } => {
                    // SAFETY: as for the read, only read; a read-only export never decides a
                    // write, so the mapping is writable (the page cache is the durable store).
                    unsafe { map.write_from(offset - base, ptr, len as usize) };
                    len as i32
                }
                Op::Fsync => sys::fdatasync(export.backing.fd()),
            };
            self.finish(Completion { user_data, result });
        }
        self.inline_ops = ops;
    }

    /// Answer a request with ABRT without touching storage (no resources for it).
    fn fail_now(&mut self, p: Pending, why: &str) {
        self.stats.no_frame += 1;
        if self.stats.no_frame.is_power_of_two() {
            tracing::error!(
                times = self.stats.no_frame,
                "{why}; failing the request with ABRT"
            );
        }
        self.free_bounce(p.bounce.map(|b| (b, 0)));
        self.reply_io(
            p.frame,
            p.export,
            &p.decision,
            p.chunks,
            IoOutcome::Err(libc::EBUSY),
        );
    }

    /// A storage completion: when the request's last operation is done, build the response in
    /// place and queue it.
    fn finish(&mut self, c: Completion) {
        let slot = (c.user_data & 0xffff_ffff) as usize;
        let op = (c.user_data >> 32) as usize;
        let chunk = self.chunk as u32;
        let Some(p) = self.slots[slot].as_mut() else {
            tracing::error!(slot, "completion for an empty in-flight slot");
            return;
        };
        let expect = match p.decision {
            Decision::Flush => 0,
            _ => op_len(p.bytes, p.chunks.len(), op, chunk),
        };
        if c.result < 0 {
            p.error.get_or_insert(-c.result);
        } else if c.result as u32 != expect {
            p.error.get_or_insert(libc::EIO);
        }
        if p.ops_left > 1 {
            p.ops_left -= 1;
            return;
        }
        // The last operation. `ops_left` is not written first, and the outcome is worked out
        // from the slot in place before the `Pending` moves, once, straight into `reply_io`:
        // a load that overlaps a just-made store it cannot be forwarded from (narrower, or
        // straddling two) waits for every earlier store to drain, and right after an inline copy
        // those are the copy's own stores to the chunk. Moving the `Pending` to a local first and
        // then into `reply_io` made such loads (perf put 9% of a 1 KiB random-read worker's time
        // on one, then 4%).
        let bounce = p.bounce;
        let outcome = account(&mut self.stats, &self.exports[p.export].name, p);
        self.free_slots.push(slot as u32);
        self.free_bounce(bounce.map(|b| (b, 0)));
        let Some(Pending {
            frame,
            export,
            decision,
            chunks,
            ..
        }) = self.slots[slot].take()
        else {
            unreachable!("checked above")
        };
        self.reply_io(frame, export, &decision, chunks, outcome);
    }

    /// Build the response to a finished request and queue its descriptor(s).
    fn reply_io(
        &mut self,
        mut frame: Frame,
        export: usize,
        decision: &Decision,
        mut chunks: Vec<Frame>,
        outcome: IoOutcome,
    ) {
        let off = frame.offset() as usize;
        self.refresh(export);
        let n = {
            let state = &self.snaps[export].1;
            target::complete(
                state,
                &self.iface,
                &mut self.umem.chunk_mut(&mut frame)[off..],
                decision,
                outcome,
            )
        };
        if chunks.is_empty() || outcome != IoOutcome::Ok {
            for c in chunks.drain(..) {
                self.recycle(c);
            }
            // Only a list that came from `chunk_lists` goes back: the empty one of a
            // single-chunk request never allocated, and keeping it would grow the pool by one
            // entry per request.
            if chunks.capacity() > 0 {
                self.chunk_lists.push(chunks);
            }
            let len = n.min(self.chunk - off) as u32;
            self.tx.push(frame.with_packet(off as u32, len, 0));
            return;
        }
        // Jumbo read: the header alone, then the data chunks, one packet of several descriptors.
        self.stats.multi_desc_reads += 1;
        self.tx
            .push(frame.with_packet(off as u32, ATA_HLEN as u32, XDP_PKT_CONTD));
        let last = chunks.len() - 1;
        for (i, c) in chunks.drain(..).enumerate() {
            let (off, len) = (c.offset(), c.len());
            let options = if i == last { 0 } else { XDP_PKT_CONTD };
            self.tx.push(c.with_packet(off, len, options));
        }
        self.chunk_lists.push(chunks);
    }
}

/// Counts a finished request in `stats` and says how it went; a failure is logged at the 1st,
/// 2nd, 4th, 8th, … time, never once per frame.
fn account(stats: &mut WorkerStats, export: &str, p: &Pending) -> IoOutcome {
    if let Some(e) = p.error {
        stats.io_errors += 1;
        if stats.io_errors.is_power_of_two() {
            tracing::warn!(export, errno = e, decision = ?p.decision, failures = stats.io_errors, "storage I/O failed; answering with an ATA error");
        }
        return IoOutcome::Err(e);
    }
    match p.decision {
        Decision::Read { .. } => {
            stats.reads += 1;
            stats.read_bytes += u64::from(p.bytes);
        }
        Decision::Write { .. } => {
            stats.writes += 1;
            stats.write_bytes += u64::from(p.bytes);
            stats.gathered_writes += u64::from(p.bounce.is_some());
        }
        _ => stats.flushes += 1,
    }
    IoOutcome::Ok
}

impl Worker {
    /// Where received frames start in their chunk (for tests and logs).
    pub fn rx_offset(&self) -> usize {
        self.rx_offset
    }
}

#[cfg(test)]
mod tests {
    use super::{
        op_len, IdleSpin, ReapBatch, IDLE_SPINS, REAP_SLACK_ONE_IN, REAP_WINDOW, RX_BATCH,
        SPIN_PROBE_EVERY, SPIN_WINDOW,
    };

    #[test]
    fn replies_go_one_by_one_while_the_worker_has_slack_and_in_batches_when_it_has_none() {
        let mut r = ReapBatch::default();
        assert_eq!(r.cap(), 1);
        // Saturated: every loop found work.
        for _ in 0..REAP_WINDOW {
            r.record(false);
        }
        assert_eq!(r.cap(), RX_BATCH);
        // Idle in 1 loop in REAP_SLACK_ONE_IN: slack.
        for i in 0..REAP_WINDOW {
            r.record(i % REAP_SLACK_ONE_IN == 0);
        }
        assert_eq!(r.cap(), 1);
        // Idle in fewer loops: no slack...
        for i in 0..REAP_WINDOW {
            r.record(i % (2 * REAP_SLACK_ONE_IN) == 0);
        }
        assert_eq!(r.cap(), RX_BATCH);
        // ...unless the worker slept in that window (a sleep is one idle loop, however long).
        for i in 0..REAP_WINDOW {
            if i == 7 {
                r.slept();
            }
            r.record(i == 7);
        }
        assert_eq!(r.cap(), 1);
        // A sleep counts for its own window only.
        for _ in 0..REAP_WINDOW {
            r.record(false);
        }
        assert_eq!(r.cap(), RX_BATCH);
    }

    /// Runs `episodes` idle episodes where a spinning one finds work when `pays` says so;
    /// returns how many of them spun.
    fn episodes(s: &mut IdleSpin, episodes: u32, pays: impl Fn(u32) -> bool) -> u32 {
        let mut spun = 0;
        for i in 0..episodes {
            let spins = s.begin();
            if spins > 0 {
                assert_eq!(spins, IDLE_SPINS);
                spun += 1;
            }
            s.end(spins > 0 && pays(i));
        }
        spun
    }

    #[test]
    fn spinning_stops_when_it_never_finds_work_and_resumes_when_it_does() {
        let mut s = IdleSpin::default();
        // A fresh worker spins; a whole window of misses turns spinning off.
        assert_eq!(episodes(&mut s, SPIN_WINDOW, |_| false), SPIN_WINDOW);
        assert!(!s.on);
        // Off: only the probes spin.
        let n = SPIN_WINDOW * SPIN_PROBE_EVERY;
        assert_eq!(episodes(&mut s, n, |_| false), SPIN_WINDOW);
        assert!(!s.on);
        // Probes that find work turn it back on, after one window of probes.
        assert_eq!(episodes(&mut s, n, |_| true), SPIN_WINDOW);
        assert!(s.on);
        assert_eq!(episodes(&mut s, 100, |_| true), 100);
    }

    #[test]
    fn spinning_that_pays_one_time_in_four_stays_on_and_less_turns_it_off() {
        let mut s = IdleSpin::default();
        assert_eq!(
            episodes(&mut s, 10 * SPIN_WINDOW, |i| i % 4 == 0),
            10 * SPIN_WINDOW
        );
        assert!(s.on);
        episodes(&mut s, SPIN_WINDOW, |i| i % 5 == 0);
        assert!(!s.on);
    }

    #[test]
    fn work_found_without_spinning_is_not_judged() {
        let mut s = IdleSpin::default();
        episodes(&mut s, SPIN_WINDOW, |_| false);
        assert!(!s.on);
        // Non-probe episodes that end in work (the worker woke from poll) change nothing.
        for _ in 0..(SPIN_PROBE_EVERY - 1) {
            assert_eq!(s.begin(), 0);
            s.end(true);
        }
        assert_eq!((s.tries, s.hits), (0, 0));
    }

    #[test]
    fn chunked_read_lengths_cover_the_request() {
        assert_eq!(op_len(1024, 0, 0, 4096), 1024);
        assert_eq!(
            (0..2).map(|i| op_len(8192, 2, i, 4096)).collect::<Vec<_>>(),
            vec![4096, 4096]
        );
        assert_eq!(
            (0..2).map(|i| op_len(4608, 2, i, 4096)).collect::<Vec<_>>(),
            vec![4096, 512]
        );
    }
}
