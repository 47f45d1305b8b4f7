//! From a received frame to storage operations: reassembly of multi-buffer frames, addressing
//! (wildcard fan-out), the protocol decision, admission to the in-flight table, ordering against
//! overlapping requests, and issue.

use aoe::target::{self, Decision};
use aoe::wire::{Header, ATA_HLEN, ETHERTYPE_AOE, SECTOR};
use xsk::Frame;

use super::commit::commit_of;
use super::inflight::{slot_op, user_data, Pending, Refused};
use super::io::{Op, Packets, Storage};
use super::ranges::Access;
use super::Worker;

/// A gathered jumbo write: its bounce slot and total length.
type Gathered = Option<(u32, usize)>;

impl<P: Packets, S: Storage> Worker<P, S> {
    /// One RX descriptor: a whole frame, or a fragment of a multi-buffer frame.
    pub(super) fn receive(&mut self, f: Frame) {
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
        let Some(head) = frags.first() else {
            self.partial = frags;
            return;
        };
        let first = self.net.umem().data(head);
        let total: usize = frags.iter().map(|f| f.len() as usize).sum();
        let is_write = first.len() >= ATA_HLEN
            && first.get(12..14) == Some(&ETHERTYPE_AOE.to_be_bytes()[..])
            && first.get(19) == Some(&aoe::wire::cmd::ATA)
            && matches!(
                first.get(27),
                Some(&(aoe::ata::WRITE | aoe::ata::WRITE_EXT))
            );
        let slot = if is_write {
            self.bounce.as_mut().and_then(|b| b.take())
        } else {
            None
        };
        if is_write && slot.is_none() {
            // RX takes no more descriptors than there are free bounce slots, but a wildcard
            // fan-out earlier in the batch takes one per export it reaches. Drop the write
            // unanswered (the initiator retransmits), counted once per export it reaches, like
            // a wildcard copy with no frame: decided on its first chunk alone, a valid write
            // would be answered ABRT (short payload).
            let reached = Header::new(first).map_or(0, |h| {
                self.exports
                    .iter()
                    .filter(|e| e.addressed(h.shelf(), h.slot()))
                    .count()
            });
            self.stats.no_frame += reached.max(1) as u64;
            for f in frags.drain(..) {
                self.recycle(f);
            }
            self.partial = frags;
            return;
        }
        if let (Some(slot), Some(b)) = (slot, self.bounce.as_mut()) {
            let dst = b.slot_mut(slot, self.rx_offset);
            let mut at = 0;
            for f in &frags {
                let piece = self.net.umem().data(f);
                let n = piece.len().min(dst.len() - at);
                dst[at..at + n].copy_from_slice(&piece[..n]);
                at += n;
            }
            self.stats.copied_bytes += total as u64;
        }
        for f in frags.drain(1..) {
            self.recycle(f);
        }
        let head = frags.pop();
        self.partial = frags;
        if let Some(head) = head {
            self.handle(head, slot.map(|s| (s, total)));
        }
    }

    /// One received frame (with its gathered copy, for a jumbo write): find the exports it
    /// addresses and decide for each.
    fn handle(&mut self, frame: Frame, gathered: Gathered) {
        let (shelf, slot) = match Header::new(self.net.umem().data(&frame)) {
            Some(h) if h.ethertype() == ETHERTYPE_AOE && !h.is_response() => {
                let (src, addr) = (h.src(), (h.shelf(), h.slot()));
                let now = self.now();
                self.initiators.record(src, now);
                addr
            }
            _ => {
                self.stats.dropped += 1;
                self.free_bounce(gathered.map(|g| g.0));
                return self.recycle(frame);
            }
        };
        let mut last = None;
        for i in 0..self.addrs.len() {
            if !self
                .addrs
                .get(i)
                .is_some_and(|&at| crate::export::addressed(at, shelf, slot))
            {
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
                self.free_bounce(gathered.map(|g| g.0));
                self.recycle(frame);
            }
        }
    }

    /// Copy a request (and its bounce slot) for wildcard fan-out.
    fn duplicate(&mut self, frame: &Frame, gathered: Gathered) -> Option<(Frame, Gathered)> {
        let mut copy = self.alloc_frame()?;
        let (off, len) = (frame.offset() as usize, frame.len() as usize);
        let umem = self.net.umem();
        let src = umem.data(frame);
        let dst = umem.chunk_mut(&mut copy);
        let n = len.min(src.len()).min(dst.len().saturating_sub(off));
        dst[off..off + n].copy_from_slice(&src[..n]);
        copy.set(off as u32, n as u32);
        self.stats.copied_bytes += n as u64;
        let g = match (gathered, self.bounce.as_mut()) {
            (Some((src, total)), Some(b)) => {
                let Some(dst) = b.take() else {
                    self.recycle(copy);
                    return None;
                };
                b.copy_slot(src, dst);
                self.stats.copied_bytes += total as u64;
                Some((dst, total))
            }
            _ => None,
        };
        Some((copy, g))
    }

    /// Run the protocol decision for `frame` against export `ei`, in place (in the bounce slot
    /// for a gathered jumbo write).
    fn decide(&mut self, mut frame: Frame, ei: usize, gathered: Gathered) {
        let off = frame.offset() as usize;
        let len = frame.len() as usize;
        self.refresh(ei);
        let (Some(export), Some((_, state))) = (self.exports.get(ei), self.snaps.get(ei)) else {
            return self.recycle(frame);
        };
        let umem = self.net.umem();
        let out = match (gathered, self.bounce.as_mut()) {
            (Some((slot, total)), Some(b)) => {
                target::decide(state, &self.iface, b.slot_mut(slot, self.rx_offset), total)
            }
            _ => target::decide(
                state,
                &self.iface,
                &mut umem.chunk_mut(&mut frame)[off..],
                len,
            ),
        };
        if let Some(change) = out.change {
            // The reply below waits until the change is persisted (`reply_or_hold`).
            export.apply(change);
        }
        match out.decision {
            Decision::Reply(n) => {
                let n = n.min(self.chunk - off);
                if let (Some((slot, _)), Some(b)) = (gathered, self.bounce.as_mut()) {
                    // A write answered at once (an error): the reply moves to the frame's chunk.
                    let src = b.slot_mut(slot, self.rx_offset);
                    let n = n.min(src.len());
                    umem.chunk_mut(&mut frame)[off..off + n].copy_from_slice(&src[..n]);
                    b.put(slot);
                }
                self.reply_or_hold(ei, frame.with_packet(off as u32, n as u32, 0));
            }
            Decision::Drop => {
                self.stats.dropped += 1;
                self.free_bounce(gathered.map(|g| g.0));
                self.recycle(frame);
            }
            d => self.submit(frame, ei, d, gathered.map(|g| g.0)),
        }
    }

    /// Admit a storage request to the in-flight table and order it against the overlapping
    /// requests before it; issue it now if nothing it must follow is still present.
    fn submit(&mut self, frame: Frame, ei: usize, decision: Decision, bounce: Option<u32>) {
        let off = frame.offset() as usize;
        let (access, lba, sectors) = match &decision {
            Decision::Read { lba, sectors } => (Access::Read, *lba, *sectors),
            Decision::Write { lba, sectors, .. } => (Access::Write, *lba, *sectors),
            _ => (Access::Flush, 0, 0),
        };
        let bytes = u32::from(sectors) * SECTOR as u32;
        let base = self.exports.get(ei).map_or(0, |e| e.backing.byte_offset());
        let offset = base.saturating_add(lba.saturating_mul(SECTOR as u64));
        // A jumbo read goes into whole chunks, each filled by its own read, sent as TX fragments.
        let mut chunks = Vec::new();
        if access == Access::Read && ATA_HLEN + bytes as usize > self.chunk.saturating_sub(off) {
            chunks = self.chunk_lists.pop().unwrap_or_default();
            let n = (bytes as usize).div_ceil(self.chunk);
            while chunks.len() < n {
                let Some(mut c) = self.alloc_frame() else {
                    break;
                };
                let len = super::inflight::op_len(bytes, n, chunks.len(), self.chunk as u32);
                c.set(0, len);
                chunks.push(c);
            }
            if chunks.len() < n {
                self.stats.no_frame += 1;
                return self.drop_request(frame, chunks, bounce);
            }
        }
        let slot = match self.inflight.take(ei) {
            Ok(slot) => slot,
            Err(Refused::Full | Refused::OverShare) => {
                self.stats.no_slot += 1;
                return self.drop_request(frame, chunks, bounce);
            }
        };
        let p = Pending {
            frame,
            export: ei,
            decision,
            bytes,
            offset,
            ops_left: (chunks.len() as u32).max(1),
            error: None,
            retries: 0,
            chunks,
            bounce,
            arrived: self.now(),
            issued: false,
            dsync: false,
        };
        self.inflight.put(slot, p);
        if self
            .ranges
            .admit(slot, ei as u32, access, lba, u32::from(sectors))
        {
            self.issue_request(slot);
        } else {
            self.stats.ordered_waits += 1;
        }
    }

    /// Give back everything a request holds, unanswered: the initiator will retransmit.
    fn drop_request(&mut self, frame: Frame, mut chunks: Vec<Frame>, bounce: Option<u32>) {
        for c in chunks.drain(..) {
            self.recycle(c);
        }
        if chunks.capacity() > 0 {
            self.chunk_lists.push(chunks);
        }
        self.free_bounce(bounce);
        self.recycle(frame);
    }

    /// Issue every operation of the request in `slot`.
    pub(super) fn issue_request(&mut self, slot: u32) {
        let Some(p) = self.inflight.get_mut(slot) else {
            return;
        };
        p.issued = true;
        if matches!(p.decision, Decision::Write { .. }) {
            // Decided once, so that a retry goes the same way.
            p.dsync = self.commits.write_issued(p.export);
        }
        let ops = p.ops();
        for op in 0..ops {
            self.issue_op(slot, op);
        }
    }

    /// Issue operation `op` of the request in `slot`, after any the storage side had no room
    /// for (they go first, in order).
    pub(super) fn issue_op(&mut self, slot: u32, op: u32) {
        self.issue_data(user_data(slot, op));
    }

    /// Issue the operation `user_data` names (a request's, or an export's commit), after any
    /// the storage side had no room for.
    pub(super) fn issue_data(&mut self, ud: u64) {
        if !self.deferred.is_empty() || !self.push_data(ud) {
            self.deferred.push_back(ud);
        }
    }

    /// Issue the deferred operations while the storage side has room.
    pub(super) fn drain_deferred(&mut self) {
        while let Some(&ud) = self.deferred.front() {
            if !self.push_data(ud) {
                break;
            }
            self.deferred.pop_front();
        }
    }

    /// Hand the operation `ud` names to the storage side; false when it has no room (a
    /// request no longer present needs nothing: true).
    fn push_data(&mut self, ud: u64) -> bool {
        if let Some(export) = commit_of(ud) {
            let Some(Op::Write {
                ptr, len, offset, ..
            }) = self
                .commits
                .first_covered(export)
                .and_then(|slot| self.op_of(slot, 0))
                .map(|(_, o)| o)
            else {
                return true;
            };
            let o = Op::Commit { ptr, len, offset };
            // SAFETY: a covered write's chunk or bounce slot stays parked in the table, untouched,
            // until the commit's completion is reaped (`finish_commit` answers it only then).
            return unsafe { self.store.push(export as u32, o, ud) }.is_ok();
        }
        let (slot, op) = slot_op(ud);
        let Some((file, o)) = self.op_of(slot, op) else {
            return true;
        };
        // `op_of` names only the request's own chunk(s) or bounce slot, parked in the table.
        // SAFETY: they stay untouched under this slot until this completion is reaped (`finish`).
        unsafe { self.store.push(file, o, user_data(slot, op)) }.is_ok()
    }

    /// Operation `op` of the request in `slot`: the file and what to do.
    fn op_of(&mut self, slot: u32, op: u32) -> Option<(u32, Op)> {
        let p = self.inflight.get_mut(slot)?;
        let umem = self.net.umem();
        let file = p.export as u32;
        let o = match &p.decision {
            Decision::Read { .. } if !p.chunks.is_empty() => {
                let offset = p.offset.saturating_add(u64::from(op) * self.chunk as u64);
                let c = p.chunks.get_mut(op as usize)?;
                let len = c.len();
                Op::Read {
                    ptr: umem.data_ptr(c),
                    len,
                    offset,
                }
            }
            // The data lands right behind the request header, in the same chunk (not a jumbo
            // read, so 36 + bytes fits behind the offset).
            Decision::Read { .. } => Op::Read {
                ptr: umem.data_ptr(&mut p.frame).wrapping_add(ATA_HLEN),
                len: p.bytes,
                offset: p.offset,
            },
            // The payload range was bounded by the aoe crate to the received frame (in its
            // chunk, or in its bounce slot).
            Decision::Write { payload, .. } => Op::Write {
                ptr: match (p.bounce, self.bounce.as_ref()) {
                    (Some(b), Some(bb)) => bb.ptr(b, self.rx_offset + payload.start),
                    _ => umem.data_ptr(&mut p.frame).wrapping_add(payload.start),
                },
                len: p.bytes,
                offset: p.offset,
                dsync: p.dsync,
            },
            Decision::Flush => Op::Fsync,
            Decision::Reply(_) | Decision::Drop => return None,
        };
        Some((file, o))
    }
}
