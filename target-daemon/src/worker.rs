//! One worker: one NIC queue, one AF_XDP socket and UMEM, one io_uring, run to completion.
//!
//! Loop: reap storage completions → reap TX completions and refill → transmit → receive a batch
//! and decide each frame (`aoe`) → submit storage I/O → sleep in `poll` only when idle.
//!
//! Zero copy: a request is handled in the UMEM chunk it arrived in. A read lands by io_uring
//! `READ_FIXED` directly at the ATA payload offset of that chunk and the response header is
//! written over the request's; a write goes to storage by `WRITE_FIXED` straight from the
//! received payload. The only copy a worker makes is of a whole request frame when a wildcard
//! address reaches several exports (discovery), counted in [`WorkerStats::copied_bytes`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoe::target::{self, Decision, Iface, IoOutcome};
use aoe::wire::{Header, ATA_HLEN, BROADCAST, ETHERTYPE_AOE, SECTOR};
use xsk::{Frame, Socket, Umem};

use crate::export::Export;
use crate::sys;
use crate::uring::{Completion, Uring};

/// Frames taken from the RX ring per loop.
const RX_BATCH: usize = 64;
/// Idle loops before the worker sleeps in `poll`.
const IDLE_SPINS: u32 = 256;
/// Longest sleep, so the stop flag is seen promptly.
const POLL_MS: i32 = 20;
/// How long a stopping worker waits for the NIC to confirm its last replies.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of one worker (returned when it stops; nothing is logged per packet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Frames transmitted.
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
    /// Bytes written to storage from UMEM frames.
    pub write_bytes: u64,
    /// Storage operations that failed (answered with an ATA error).
    pub io_errors: u64,
    /// Bytes memcpy'd by the worker (whole request frames for wildcard fan-out). Sector data is
    /// never copied: reads and writes move between UMEM and storage by io_uring only.
    pub copied_bytes: u64,
    /// Replies lost because no UMEM frame was free for a wildcard fan-out copy.
    pub no_frame: u64,
}

/// A request whose storage I/O is in flight.
struct Pending {
    frame: Frame,
    export: usize,
    decision: Decision,
    expect: u32,
}

/// Everything one worker owns.
pub struct Worker {
    /// Interface name, for logs.
    pub ifname: String,
    /// Queue id, for logs.
    pub queue: u32,
    iface: Iface,
    exports: Vec<Arc<Export>>,
    umem: Umem,
    sock: Socket,
    uring: Uring,
    rx_offset: usize,
    slots: Vec<Option<Pending>>,
    free_slots: Vec<u32>,
    /// Frames waiting to go back on the fill ring.
    spare: Vec<Frame>,
    tx: Vec<Frame>,
    tx_outstanding: u64,
    stats: WorkerStats,
}

impl Worker {
    /// Assemble a worker. `uring` has the exports' fds registered in `exports` order and the
    /// UMEM area registered as fixed buffers. `capacity` is the in-flight table size.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ifname: String,
        queue: u32,
        iface: Iface,
        exports: Vec<Arc<Export>>,
        umem: Umem,
        sock: Socket,
        uring: Uring,
        capacity: usize,
    ) -> Self {
        let rx_offset = umem.config().rx_offset() as usize;
        Worker {
            ifname,
            queue,
            iface,
            exports,
            umem,
            sock,
            uring,
            rx_offset,
            slots: (0..capacity).map(|_| None).collect(),
            free_slots: (0..capacity as u32).rev().collect(),
            spare: Vec::new(),
            tx: Vec::new(),
            tx_outstanding: 0,
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
        let mut drain_deadline = None;
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let mut work = false;

            // Storage completions become replies.
            if self.uring.in_flight() > 0 && self.uring.reap(&mut completions) > 0 {
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
            if self.tx_outstanding > 0 && self.sock.needs_wakeup_tx() {
                self.sock.kick_tx()?;
            }
            // Requests in, as many as the in-flight table can absorb.
            if !stopping {
                let room = self.free_slots.len().min(RX_BATCH);
                if room > 0 && self.sock.recv(&mut rx, room) > 0 {
                    work = true;
                    self.stats.rx_frames += rx.len() as u64;
                    for f in rx.drain(..) {
                        self.handle(f);
                    }
                }
            }
            if self.uring.queued() > 0 {
                self.uring.submit()?;
            }

            if stopping {
                let deadline =
                    *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                let idle_io = self.uring.in_flight() == 0 && self.tx.is_empty();
                if idle_io && (self.tx_outstanding == 0 || Instant::now() > deadline) {
                    break;
                }
            }
            if work {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle >= IDLE_SPINS {
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
            let state = self.exports[i].state().clone();
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

    fn recycle(&mut self, f: Frame) {
        self.spare.push(f);
    }

    /// One received frame: find the exports it addresses and decide for each.
    fn handle(&mut self, frame: Frame) {
        let (shelf, slot) = match Header::new(self.umem.data(&frame)) {
            Some(h) if h.ethertype() == ETHERTYPE_AOE && !h.is_response() => (h.shelf(), h.slot()),
            _ => {
                self.stats.dropped += 1;
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
                match self.umem.alloc() {
                    Some(mut copy) => {
                        let len = frame.len() as usize;
                        let off = frame.offset();
                        self.umem.chunk_mut(&mut copy)[off as usize..off as usize + len]
                            .copy_from_slice(self.umem.data(&frame));
                        copy.set(off, len as u32);
                        self.stats.copied_bytes += len as u64;
                        self.decide(copy, prev);
                    }
                    None => self.stats.no_frame += 1,
                }
            }
        }
        match last {
            Some(i) => self.decide(frame, i),
            None => {
                self.stats.dropped += 1;
                self.recycle(frame);
            }
        }
    }

    /// Run the protocol decision for `frame` against export `ei`, in place.
    fn decide(&mut self, mut frame: Frame, ei: usize) {
        let off = frame.offset() as usize;
        let len = frame.len() as usize;
        let export = &self.exports[ei];
        let out = {
            let state = export.state();
            target::decide(
                &state,
                &self.iface,
                &mut self.umem.chunk_mut(&mut frame)[off..],
                len,
            )
        };
        if let Some(change) = out.change {
            export.apply(change);
        }
        match out.decision {
            Decision::Reply(n) => {
                frame.set(off as u32, n as u32);
                self.tx.push(frame);
            }
            Decision::Drop => {
                self.stats.dropped += 1;
                self.recycle(frame);
            }
            d => self.submit(frame, ei, d),
        }
    }

    /// Queue the storage operation for a decision; the frame waits in the in-flight table.
    fn submit(&mut self, mut frame: Frame, ei: usize, decision: Decision) {
        let slot = self
            .free_slots
            .pop()
            .expect("RX is limited to the free slots");
        let export = &self.exports[ei];
        let file = ei as u32;
        // The ATA payload of this frame: where read data lands and write data already is.
        let payload = self.umem.data_ptr(&mut frame).wrapping_add(ATA_HLEN);
        let user_data = u64::from(slot);
        let (pushed, expect) = match &decision {
            Decision::Read { lba, sectors } | Decision::Write { lba, sectors, .. } => {
                let bytes = u32::from(*sectors) * SECTOR as u32;
                let offset = export.backing.byte_offset() + lba * SECTOR as u64;
                debug_assert!(export.backing.check_aligned(
                    lba * SECTOR as u64,
                    u64::from(bytes),
                    payload as usize
                ));
                let pushed = if matches!(decision, Decision::Read { .. }) {
                    // SAFETY: `payload..payload + bytes` lies in this frame's chunk (the aoe crate
                    // bounds sectors so 36 + bytes fits the frame buffer), the chunk is in the
                    // registered UMEM, and the frame is parked in `slots` (nobody touches it)
                    // until this completion is reaped in `finish`.
                    unsafe {
                        self.uring
                            .push_read(file, payload, bytes, offset, user_data)
                    }
                } else {
                    let dsync = export.durable_writes();
                    // SAFETY: as for the read; the payload was received in this chunk and is only
                    // read by the kernel until the completion is reaped.
                    unsafe {
                        self.uring
                            .push_write(file, payload, bytes, offset, user_data, dsync)
                    }
                };
                (pushed, bytes)
            }
            _ => (self.uring.push_fsync(file, true, user_data), 0),
        };
        if pushed.is_err() {
            // The ring is sized to the table, so this means a bug; answer rather than lose it.
            self.free_slots.push(slot);
            tracing::error!("io_uring submission queue full; failing the request with ABRT");
            return self.reply_io(frame, ei, &decision, IoOutcome::Err(libc::EBUSY));
        }
        self.slots[slot as usize] = Some(Pending {
            frame,
            export: ei,
            decision,
            expect,
        });
    }

    /// A storage completion: build the response in place and queue it.
    fn finish(&mut self, c: Completion) {
        let slot = c.user_data as usize;
        let Some(p) = self.slots[slot].take() else {
            tracing::error!(slot, "completion for an empty in-flight slot");
            return;
        };
        self.free_slots.push(slot as u32);
        let outcome = if c.result < 0 {
            IoOutcome::Err(-c.result)
        } else if c.result as u32 != p.expect {
            IoOutcome::Err(libc::EIO)
        } else {
            IoOutcome::Ok
        };
        match (&p.decision, outcome) {
            (_, IoOutcome::Err(_)) => self.stats.io_errors += 1,
            (Decision::Read { .. }, _) => {
                self.stats.reads += 1;
                self.stats.read_bytes += u64::from(p.expect);
            }
            (Decision::Write { .. }, _) => {
                self.stats.writes += 1;
                self.stats.write_bytes += u64::from(p.expect);
            }
            _ => self.stats.flushes += 1,
        }
        if let IoOutcome::Err(e) = outcome {
            tracing::warn!(export = %self.exports[p.export].name, errno = e, decision = ?p.decision, "storage I/O failed; answering with an ATA error");
        }
        self.reply_io(p.frame, p.export, &p.decision, outcome);
    }

    fn reply_io(&mut self, mut frame: Frame, ei: usize, decision: &Decision, outcome: IoOutcome) {
        let off = frame.offset() as usize;
        let n = {
            let state = self.exports[ei].state();
            target::complete(
                &state,
                &self.iface,
                &mut self.umem.chunk_mut(&mut frame)[off..],
                decision,
                outcome,
            )
        };
        frame.set(off as u32, n as u32);
        self.tx.push(frame);
    }
}

impl Worker {
    /// Where received frames start in their chunk (for tests and logs).
    pub fn rx_offset(&self) -> usize {
        self.rx_offset
    }
}
