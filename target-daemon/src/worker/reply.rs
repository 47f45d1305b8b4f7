//! From a storage completion to a reply: retries of transient failures and short transfers,
//! the per-request outcome, releasing what the request held (and the requests that waited for
//! it), and the reply built in place.

use aoe::target::{self, Decision, IoOutcome};
use aoe::wire::ATA_HLEN;
use xsk::if_xdp::XDP_PKT_CONTD;
use xsk::Frame;

use super::commit::commit_of;
use super::control::ExportTally;
use super::inflight::{op_len, slot_op, Pending};
use super::io::{Packets, Storage};
use super::{Worker, WorkerStats};
use crate::uring::Completion;

/// How many times one request's operations are issued again after a transient error
/// (`EAGAIN`, `EBUSY`, `EINTR`, `ENOMEM`) or a short transfer, before it fails.
pub(crate) const MAX_RETRIES: u8 = 8;

/// Errors worth trying again: the store was busy or short of resources, not broken.
fn transient(errno: i32) -> bool {
    matches!(
        errno,
        libc::EAGAIN | libc::EBUSY | libc::EINTR | libc::ENOMEM
    )
}

/// How an operation that should have moved `expect` bytes went: `None` when it did, else the
/// errno and whether to issue it again (a transient error or a short transfer — the rest did
/// not move; the whole operation is idempotent, and nothing overlapping runs meanwhile: see
/// `ranges` — while `retries` are left).
pub(super) fn failure(result: i32, expect: u32, retries: u8) -> Option<(i32, bool)> {
    let errno = if result < 0 {
        result.saturating_neg()
    } else if result.unsigned_abs() != expect {
        libc::EIO
    } else {
        return None;
    };
    Some((
        errno,
        (result >= 0 || transient(errno)) && retries < MAX_RETRIES,
    ))
}

impl<P: Packets, S: Storage> Worker<P, S> {
    /// A storage completion: when the request's last operation is done, build the response in
    /// place and queue it.
    pub(super) fn finish(&mut self, c: Completion) {
        if let Some(export) = commit_of(c.user_data) {
            return self.finish_commit(export, c.result);
        }
        let (slot, op) = slot_op(c.user_data);
        let chunk = self.chunk as u32;
        let Some(p) = self.inflight.get_mut(slot) else {
            tracing::error!(slot, "completion for an empty in-flight slot");
            return;
        };
        let expect = match p.decision {
            Decision::Flush => 0,
            _ => op_len(p.bytes, p.chunks.len(), op as usize, chunk),
        };
        if let Some((e, retry)) = failure(c.result, expect, p.retries) {
            if retry {
                p.retries += 1;
                self.stats.retries += 1;
                return self.issue_op(slot, op);
            }
            if p.ops() == 1 {
                // Its own failure, over one a failed group commit set on it (`commit`).
                p.error = Some(e);
            } else {
                p.error.get_or_insert(e);
            }
        }
        if p.ops_left > 1 {
            p.ops_left -= 1;
            return;
        }
        // The last operation. A durable write of a group-committing export is answered when
        // a commit covering it completes.
        if p.error.is_none()
            && !p.dsync
            && matches!(p.decision, Decision::Write { .. })
            && self.commits.group(p.export)
        {
            let export = p.export;
            return self.park_write(slot, export);
        }
        self.conclude(slot);
    }

    /// The request in `slot` is done (its outcome in the slot): count it, release it, reply.
    pub(super) fn conclude(&mut self, slot: u32) {
        let now = *self.clock.get_or_insert_with(std::time::Instant::now);
        let Some(p) = self.inflight.get_mut(slot) else {
            return;
        };
        if matches!(p.decision, Decision::Write { .. }) {
            self.commits.write_done(p.export);
        }
        // The outcome is worked out from the slot in place, before the `Pending` moves, once,
        // out of the table and into `reply_io` (see ARCHITECTURE.md on store forwarding).
        let name = self.exports.get(p.export).map_or("?", |e| e.name.as_str());
        let tally = self.tallies.get_mut(p.export);
        let outcome = account(&mut self.stats, tally, name, p, now);
        self.retire(slot, outcome);
    }

    /// The request in `slot` is done: free what it held, issue the requests that waited for
    /// it, and reply.
    fn retire(&mut self, slot: u32, outcome: IoOutcome) {
        let Some(Pending {
            frame,
            export,
            decision,
            chunks,
            bounce,
            ..
        }) = self.inflight.release(slot)
        else {
            return;
        };
        self.free_bounce(bounce);
        self.ranges.complete(slot, &mut self.ready);
        if !self.ready.is_empty() {
            let mut ready = std::mem::take(&mut self.ready);
            for s in ready.drain(..) {
                self.issue_request(s);
            }
            self.ready = ready;
        }
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
        let Some((_, state)) = self.snaps.get(export) else {
            return self.recycle(frame);
        };
        let n = target::complete(
            state,
            &self.iface,
            &mut self.net.umem().chunk_mut(&mut frame)[off..],
            decision,
            outcome,
        );
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
fn account(
    stats: &mut WorkerStats,
    tally: Option<&mut ExportTally>,
    export: &str,
    p: &Pending,
    now: std::time::Instant,
) -> IoOutcome {
    // Every export has a tally; without one (never expected) only the worker counts. No
    // stand-in tally: building one zeroes its histogram on every request.
    let failed = p.error.is_some();
    if let Some(t) = tally {
        t.latency
            .record(now.saturating_duration_since(p.arrived).as_nanos() as u64);
        match (failed, &p.decision) {
            (true, _) => t.errors += 1,
            (false, Decision::Read { .. }) => {
                t.reads += 1;
                t.read_bytes += u64::from(p.bytes);
            }
            (false, Decision::Write { .. }) => {
                t.writes += 1;
                t.write_bytes += u64::from(p.bytes);
            }
            (false, _) => t.flushes += 1,
        }
    }
    if let Some(e) = p.error {
        stats.io_errors += 1;
        if stats.io_errors.is_power_of_two() {
            tracing::warn!(export, errno = e, error = %std::io::Error::from_raw_os_error(e), decision = ?p.decision, failures = stats.io_errors, "storage I/O failed; answering with an ATA error");
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
