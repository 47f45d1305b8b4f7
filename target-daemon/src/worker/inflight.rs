//! The in-flight table: one slot per accepted storage request, from acceptance until its reply
//! is built, with each export's guaranteed share.
//!
//! Every export is guaranteed its share of the table (its advertised bufcnt, scaled down when
//! the exports' bufcnts add up to more than the table): an export may always take a slot while
//! it holds fewer than its share, and beyond that only from slots no other export's unused
//! share needs. So an export whose store hangs, or an initiator that ignores bufcnt, can fill
//! no more than its own share plus the common slack, and never starves the others.

use aoe::target::Decision;
use xsk::Frame;

/// A request whose storage I/O is waiting or in flight.
pub(crate) struct Pending {
    /// The request's first (often only) chunk: the response header is built here.
    pub frame: Frame,
    /// The worker's index of the export.
    pub export: usize,
    pub decision: Decision,
    /// Bytes the single operation must move, or the read's total for a multi-chunk read.
    pub bytes: u32,
    /// Store byte offset of the request's first sector.
    pub offset: u64,
    /// Operations not yet completed.
    pub ops_left: u32,
    /// The first failure.
    pub error: Option<i32>,
    /// Operations re-issued after a transient failure or a short transfer.
    pub retries: u8,
    /// Payload chunks of a multi-descriptor read.
    pub chunks: Vec<Frame>,
    /// Bounce slot of a gathered write.
    pub bounce: Option<u32>,
    /// When the request arrived (the worker's loop clock).
    pub arrived: std::time::Instant,
    /// Its operations were handed to the storage side (it no longer waits in `ranges`).
    pub issued: bool,
    /// A write issued with `RWF_DSYNC` (durable when it completes); one of a group-committing
    /// export without it waits for a commit (`commit`).
    pub dsync: bool,
}

impl Pending {
    /// Operations this request takes: one per data chunk of a multi-descriptor read, else one.
    pub fn ops(&self) -> u32 {
        (self.chunks.len() as u32).max(1)
    }
}

/// Bytes moved by operation `op` of a request of `bytes` split into whole chunks of `chunk`
/// (`chunks` = 0: one operation moves everything).
pub(crate) fn op_len(bytes: u32, chunks: usize, op: usize, chunk: u32) -> u32 {
    if chunks == 0 {
        bytes
    } else {
        let done = (op as u64).saturating_mul(u64::from(chunk));
        (u64::from(bytes).saturating_sub(done)).min(u64::from(chunk)) as u32
    }
}

/// The storage `user_data` of operation `op` of the request in `slot`.
#[inline]
pub(crate) fn user_data(slot: u32, op: u32) -> u64 {
    u64::from(slot) | (u64::from(op) << 32)
}

/// `(slot, op)` of a `user_data`.
#[inline]
pub(crate) fn slot_op(user_data: u64) -> (u32, u32) {
    (user_data as u32, (user_data >> 32) as u32)
}

/// Why no slot was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Every slot is taken.
    Full,
    /// The export holds its share and the rest is other exports' unused share.
    OverShare,
}

/// The slots and the per-export accounting.
pub(crate) struct InFlight {
    slots: Vec<Option<Pending>>,
    free: Vec<u32>,
    /// Per export: slots held, and the share guaranteed to it.
    held: Vec<u32>,
    share: Vec<u32>,
    /// Sum over exports of `share - held` where positive: free slots promised to exports.
    unused_share: u32,
}

impl InFlight {
    /// A table of `capacity` slots shared by exports advertising `bufcnts` (in worker order).
    pub fn new(capacity: usize, bufcnts: &[u16]) -> InFlight {
        let capacity = capacity.min(u32::MAX as usize);
        let share = shares(capacity as u32, bufcnts);
        InFlight {
            slots: (0..capacity).map(|_| None).collect(),
            free: (0..capacity as u32).rev().collect(),
            held: vec![0; bufcnts.len()],
            unused_share: share.iter().sum(),
            share,
        }
    }

    /// Free slots.
    #[inline]
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    /// Take a slot for a request of export `export`.
    #[inline]
    pub fn take(&mut self, export: usize) -> Result<u32, Refused> {
        let (Some(held), Some(&share)) = (self.held.get_mut(export), self.share.get(export)) else {
            return Err(Refused::Full);
        };
        if self.free.is_empty() {
            return Err(Refused::Full);
        }
        let own = *held < share;
        if !own && self.free.len() as u32 <= self.unused_share {
            return Err(Refused::OverShare);
        }
        let Some(slot) = self.free.pop() else {
            return Err(Refused::Full);
        };
        *held += 1;
        if own {
            self.unused_share -= 1;
        }
        Ok(slot)
    }

    /// Park `p` in `slot` (taken by [`InFlight::take`] for `p.export`).
    #[inline]
    pub fn put(&mut self, slot: u32, p: Pending) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            debug_assert!(s.is_none());
            *s = Some(p);
        }
    }

    /// The request in `slot`, if any.
    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Pending> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Every request in the table.
    pub fn each_mut(&mut self) -> impl Iterator<Item = &mut Pending> {
        self.slots.iter_mut().flatten()
    }

    /// Take the request out of `slot` and free the slot.
    #[inline]
    pub fn release(&mut self, slot: u32) -> Option<Pending> {
        let p = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        if let (Some(held), Some(&share)) = (self.held.get_mut(p.export), self.share.get(p.export))
        {
            *held = held.saturating_sub(1);
            if *held < share {
                self.unused_share += 1;
            }
        }
        Some(p)
    }

    /// Slots held by export `export`.
    pub fn held(&self, export: usize) -> u32 {
        self.held.get(export).copied().unwrap_or(0)
    }

    /// The share guaranteed to export `export`.
    #[cfg(test)]
    pub fn share(&self, export: usize) -> u32 {
        self.share.get(export).copied().unwrap_or(0)
    }
}

/// Each export's guaranteed share of a table of `capacity` slots: its bufcnt, scaled down
/// (rounding down, at least 1 while slots last) when the bufcnts add up to more.
fn shares(capacity: u32, bufcnts: &[u16]) -> Vec<u32> {
    let total: u64 = bufcnts.iter().map(|&b| u64::from(b.max(1))).sum();
    let mut left = capacity;
    bufcnts
        .iter()
        .map(|&b| {
            let b = u64::from(b.max(1));
            let s = if total <= u64::from(capacity) {
                b
            } else {
                (b * u64::from(capacity) / total).max(1)
            };
            let s = (s as u32).min(left);
            left -= s;
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(export: usize, umem: &mut xsk::Umem) -> Pending {
        Pending {
            arrived: std::time::Instant::now(),
            frame: umem.alloc().unwrap(),
            export,
            decision: Decision::Flush,
            bytes: 0,
            offset: 0,
            ops_left: 1,
            error: None,
            retries: 0,
            chunks: Vec::new(),
            bounce: None,
            issued: false,
            dsync: false,
        }
    }

    fn umem() -> xsk::Umem {
        xsk::Umem::new(xsk::UmemConfig {
            frame_count: 64,
            ..xsk::UmemConfig::default()
        })
        .unwrap()
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
        // An op index past the end moves nothing rather than wrapping.
        assert_eq!(op_len(4608, 2, 7, 4096), 0);
        assert_eq!(op_len(4608, 2, usize::MAX, 4096), 0);
    }

    #[test]
    fn user_data_round_trips() {
        for (s, o) in [(0, 0), (1023, 3), (u32::MAX, u32::MAX)] {
            assert_eq!(slot_op(user_data(s, o)), (s, o));
        }
    }

    #[test]
    fn shares_follow_bufcnt_and_scale_down() {
        assert_eq!(shares(64, &[16, 16]), vec![16, 16]);
        assert_eq!(shares(1024, &[1024, 1024]), vec![512, 512]);
        assert_eq!(shares(64, &[0]), vec![1]);
        // Never more than the table in all.
        let s = shares(64, &[255; 300]);
        assert!(s.iter().sum::<u32>() <= 64, "{s:?}");
    }

    #[test]
    fn a_hung_export_keeps_its_share_and_the_slack_but_never_the_others_share() {
        let mut u = umem();
        // 64 slots; export 0 guaranteed 16, export 1 guaranteed 16; 32 common slack.
        let mut t = InFlight::new(64, &[16, 16]);
        let mut taken0 = Vec::new();
        loop {
            match t.take(0) {
                Ok(s) => {
                    t.put(s, pending(0, &mut u));
                    taken0.push(s);
                }
                Err(r) => {
                    assert_eq!(r, Refused::OverShare);
                    break;
                }
            }
        }
        assert_eq!(taken0.len(), 48, "own share + slack");
        // Export 1 still has its whole share.
        for _ in 0..16 {
            let s = t.take(1).unwrap();
            t.put(s, pending(1, &mut u));
        }
        assert_eq!(t.take(1), Err(Refused::Full));
        assert_eq!(t.held(0), 48);
        assert_eq!(t.held(1), 16);
        // Releasing gives back to the right accounts.
        for s in taken0 {
            let p = t.release(s).unwrap();
            u.free(p.frame);
        }
        assert_eq!(t.held(0), 0);
        assert_eq!(t.free_count(), 48);
        // Export 1 may now use the slack beyond its share, but not export 0's share.
        let mut more = 0;
        while t.take(1).is_ok() {
            more += 1;
        }
        assert_eq!(more, 32);
    }

    #[test]
    fn bad_slots_and_exports_are_refused_quietly() {
        let mut t = InFlight::new(4, &[4]);
        assert_eq!(t.take(9), Err(Refused::Full));
        assert!(t.get_mut(99).is_none());
        assert!(t.release(99).is_none());
        assert!(t.release(0).is_none());
        assert_eq!(t.free_count(), 4);
        assert_eq!(t.held(0), 0);
        assert_eq!(t.share(0), 4);
        assert!(t.is_empty());
    }
}
