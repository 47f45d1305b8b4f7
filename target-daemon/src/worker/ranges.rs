//! The order of overlapping storage requests: which in-flight requests may be issued now.
//!
//! Every accepted read, write and flush of an export occupies a slot of the worker's in-flight
//! table from acceptance until its storage I/O completes ("present", whether issued or waiting).
//! [`Ranges`] makes overlapping requests take effect in arrival order:
//!
//! - a READ waits for every earlier present WRITE of its export whose sectors overlap it;
//! - a WRITE waits for every earlier present request of its export that overlaps it;
//! - a FLUSH is a read of the whole export: it waits for every earlier present WRITE of its
//!   export, and a later WRITE waits for it;
//! - nothing waits for a later request, and requests of different exports never interact.
//!
//! A request is therefore issued exactly when no earlier present request conflicts with it, and
//! the set of earlier present requests only shrinks, so once issued it stays issued. Requests
//! that become issuable when one completes are returned by [`Ranges::complete`] in arrival order,
//! each once.
//!
//! How: each request counts, when admitted, the present requests it conflicts with (all of them
//! are earlier); a completion decrements the count of the later waiting requests of its export
//! that conflict with it, and a count reaching zero makes the request ready. The waiting requests
//! of an export are kept in a list in arrival order, so they come out in that order.
//!
//! Cost model (n = present requests of the export, w = waiting requests of the export):
//! - READ when the export has no present write, FLUSH: O(1);
//! - READ with present writes: a scan of the export's present writes;
//! - WRITE: a scan of the export's present reads and writes;
//! - [`Ranges::complete`]: O(1) when nothing of its export waits, else O(w).
//!
//! The scans read a dense array of `(first, last)` sector pairs (16 bytes each) in blocks of
//! [`BLOCK`] entries that belong to one (export, read or write) list, with no branch per entry;
//! the block chain is followed once per [`BLOCK`] entries. All memory is allocated by
//! [`Ranges::new`]; no call allocates afterwards. Misuse (a slot or export out of range, a
//! double admit, completing a slot that is not issued) trips a `debug_assert!`; in a release
//! build the call is ignored (see each method) and the table stays consistent.

/// The kind of a storage request, as far as ordering is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
    Flush,
}

/// Entries per block of a range list.
const BLOCK: usize = 16;

/// "No slot", "no block".
const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Absent,
    Issued,
    Waiting,
}

/// The sectors `[first, last]` of a request (inclusive, so a range ending at `u64::MAX` is
/// representable and never empty).
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    first: u64,
    last: u64,
}

impl Span {
    #[inline]
    fn overlaps(self, other: Span) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// One slot of the table.
#[derive(Clone, Copy, Debug)]
struct Req {
    /// Arrival order.
    seq: u64,
    span: Span,
    export: u32,
    /// Earlier present requests this one conflicts with (0 once issued).
    blockers: u32,
    /// Position in its export's read or write list (`block * BLOCK + index`).
    pos: u32,
    /// Neighbours in its export's waiting list (arrival order).
    next: u32,
    prev: u32,
    access: Access,
    state: State,
}

impl Req {
    const ABSENT: Req = Req {
        seq: 0,
        span: Span { first: 0, last: 0 },
        export: 0,
        blockers: 0,
        pos: NIL,
        next: NIL,
        prev: NIL,
        access: Access::Read,
        state: State::Absent,
    };
}

/// Whether `a` and `b` (of one export) must not run concurrently.
#[inline]
fn conflicts(a: Access, a_span: Span, b: Access, b_span: Span) -> bool {
    (a == Access::Write || b == Access::Write) && a_span.overlaps(b_span)
}

/// A list of spans in blocks of the pool: every block full except the tail, which holds
/// `(len - 1) % BLOCK + 1` entries. Order within the list is arbitrary (swap removal).
#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
    len: u32,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

/// Per-export state.
#[derive(Clone, Copy, Debug)]
struct Exp {
    reads: List,
    writes: List,
    /// Present flushes (they cover everything, so they need no list).
    flushes: u32,
    /// Waiting requests, a list in arrival order through `Req::next`/`Req::prev`.
    waiting: u32,
    wait_head: u32,
    wait_tail: u32,
}

impl Exp {
    const EMPTY: Exp = Exp {
        reads: List::EMPTY,
        writes: List::EMPTY,
        flushes: 0,
        waiting: 0,
        wait_head: NIL,
        wait_tail: NIL,
    };
}

/// Blocks of spans shared by all lists. A list of `len` entries holds `ceil(len / BLOCK)`
/// blocks, so `ceil(capacity / BLOCK) + lists` blocks always suffice.
struct Pool {
    spans: Vec<Span>,
    /// The slot whose span sits at each position.
    owner: Vec<u32>,
    /// Block chain of a list (and the free list, through `next`).
    next: Vec<u32>,
    prev: Vec<u32>,
    free: u32,
}

impl Pool {
    fn new(blocks: usize) -> Pool {
        let blocks = blocks.min(NIL as usize / BLOCK);
        let next = (0..blocks)
            .map(|b| if b + 1 < blocks { b as u32 + 1 } else { NIL })
            .collect();
        Pool {
            spans: vec![Span::default(); blocks * BLOCK],
            owner: vec![NIL; blocks * BLOCK],
            next,
            prev: vec![NIL; blocks],
            free: if blocks > 0 { 0 } else { NIL },
        }
    }

    /// Appends `span` of `slot` to `list`; returns its position, or `None` when the pool is
    /// exhausted (impossible with the block count of `Ranges::new`).
    fn push(&mut self, list: &mut List, slot: u32, span: Span) -> Option<u32> {
        let index = list.len as usize % BLOCK;
        if index == 0 {
            let block = self.free;
            if block == NIL {
                return None;
            }
            self.free = self.next[block as usize];
            self.next[block as usize] = NIL;
            self.prev[block as usize] = list.tail;
            if list.tail == NIL {
                list.head = block;
            } else {
                self.next[list.tail as usize] = block;
            }
            list.tail = block;
        }
        let pos = list.tail as usize * BLOCK + index;
        self.spans[pos] = span;
        self.owner[pos] = slot;
        list.len += 1;
        Some(pos as u32)
    }

    /// Removes the entry at `pos` of `list` by moving the list's last entry there; returns the
    /// slot that moved to `pos`, if any.
    fn remove(&mut self, list: &mut List, pos: u32) -> Option<u32> {
        debug_assert!(list.len > 0);
        let last = list.tail as usize * BLOCK + (list.len as usize - 1) % BLOCK;
        let pos = pos as usize;
        let moved = if pos != last {
            self.spans[pos] = self.spans[last];
            self.owner[pos] = self.owner[last];
            Some(self.owner[pos])
        } else {
            None
        };
        self.owner[last] = NIL;
        list.len -= 1;
        if (list.len as usize).is_multiple_of(BLOCK) {
            let block = list.tail;
            list.tail = self.prev[block as usize];
            if list.tail == NIL {
                list.head = NIL;
            } else {
                self.next[list.tail as usize] = NIL;
            }
            self.prev[block as usize] = NIL;
            self.next[block as usize] = self.free;
            self.free = block;
        }
        moved
    }

    /// How many spans of `list` overlap `span`.
    fn overlapping(&self, list: &List, span: Span) -> u32 {
        let mut left = list.len as usize;
        let mut block = list.head;
        let mut count = 0u32;
        while left > 0 {
            let n = left.min(BLOCK);
            let base = block as usize * BLOCK;
            for s in &self.spans[base..base + n] {
                count += u32::from((s.first <= span.last) & (span.first <= s.last));
            }
            left -= n;
            block = self.next[block as usize];
        }
        count
    }
}

/// The in-flight table's ordering state: slots `0..capacity`, exports `0..exports`.
pub(crate) struct Ranges {
    reqs: Vec<Req>,
    exps: Vec<Exp>,
    pool: Pool,
    seq: u64,
    present: usize,
    waiting: usize,
}

impl Ranges {
    /// A table for slots `0..capacity` of exports `0..exports`. All memory is allocated here;
    /// nothing after.
    pub(crate) fn new(capacity: usize, exports: usize) -> Ranges {
        debug_assert!(capacity < NIL as usize && exports <= NIL as usize);
        let capacity = capacity.min(NIL as usize - 1);
        let exports = exports.min(NIL as usize);
        Ranges {
            reqs: vec![Req::ABSENT; capacity],
            exps: vec![Exp::EMPTY; exports],
            pool: Pool::new(capacity.div_ceil(BLOCK) + 2 * exports),
            seq: 0,
            present: 0,
            waiting: 0,
        }
    }

    /// Admits request `slot` (must not be present) of `export` covering sectors
    /// `[lba, lba + sectors)`, saturated at `u64::MAX` (`sectors` is 1..=255 for reads and
    /// writes, 0 counts as 1; ignored for a flush, which covers everything).
    ///
    /// Returns true when it may be issued now, false when it waits: it is then returned later
    /// by [`Ranges::complete`]. A slot or export out of range, or a slot already present, is a
    /// caller bug: it trips a `debug_assert!`; in release the call is ignored and returns true
    /// (issue it, unordered), so the request cannot be stranded.
    pub(crate) fn admit(
        &mut self,
        slot: u32,
        export: u32,
        access: Access,
        lba: u64,
        sectors: u32,
    ) -> bool {
        let valid = matches!(self.reqs.get(slot as usize), Some(r) if r.state == State::Absent)
            && (export as usize) < self.exps.len();
        if !valid {
            debug_assert!(
                false,
                "admit: slot {slot} absent or export {export} out of range"
            );
            return true;
        }
        let span = match access {
            Access::Flush => Span {
                first: 0,
                last: u64::MAX,
            },
            Access::Read | Access::Write => {
                debug_assert!(sectors > 0, "admit: zero sectors");
                Span {
                    first: lba,
                    last: lba.saturating_add(u64::from(sectors.max(1)) - 1),
                }
            }
        };
        let exp = &mut self.exps[export as usize];
        let blockers = match access {
            Access::Read if exp.writes.len == 0 => 0,
            Access::Read => self.pool.overlapping(&exp.writes, span),
            Access::Flush => exp.writes.len,
            Access::Write => {
                let mut n = exp.flushes;
                if exp.writes.len > 0 {
                    n += self.pool.overlapping(&exp.writes, span);
                }
                if exp.reads.len > 0 {
                    n += self.pool.overlapping(&exp.reads, span);
                }
                n
            }
        };
        let pos = match access {
            Access::Read => self.pool.push(&mut exp.reads, slot, span),
            Access::Write => self.pool.push(&mut exp.writes, slot, span),
            Access::Flush => {
                exp.flushes += 1;
                Some(NIL)
            }
        };
        let Some(pos) = pos else {
            debug_assert!(false, "admit: span pool exhausted");
            return true;
        };
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.present += 1;
        let mut req = Req {
            seq,
            span,
            export,
            blockers,
            pos,
            next: NIL,
            prev: NIL,
            access,
            state: State::Issued,
        };
        if blockers > 0 {
            req.state = State::Waiting;
            req.prev = exp.wait_tail;
            if exp.wait_tail == NIL {
                exp.wait_head = slot;
            } else {
                self.reqs[exp.wait_tail as usize].next = slot;
            }
            exp.wait_tail = slot;
            exp.waiting += 1;
            self.waiting += 1;
        }
        self.reqs[slot as usize] = req;
        blockers == 0
    }

    /// Request `slot` (present and issued) completed: removes it and appends to `ready`, in
    /// arrival order, the waiting slots that may now be issued (each slot is returned once).
    ///
    /// `ready` should have spare capacity for every slot, so pushing never allocates. A slot
    /// out of range, absent or still waiting is a caller bug: it trips a `debug_assert!`; in
    /// release the call is ignored.
    pub(crate) fn complete(&mut self, slot: u32, ready: &mut Vec<u32>) {
        let Some(&done) = self.reqs.get(slot as usize) else {
            debug_assert!(false, "complete: slot {slot} out of range");
            return;
        };
        if done.state != State::Issued {
            debug_assert!(
                false,
                "complete: slot {slot} is not issued ({:?})",
                done.state
            );
            return;
        }
        self.reqs[slot as usize].state = State::Absent;
        self.present -= 1;
        let exp = &mut self.exps[done.export as usize];
        let moved = match done.access {
            Access::Read => self.pool.remove(&mut exp.reads, done.pos),
            Access::Write => self.pool.remove(&mut exp.writes, done.pos),
            Access::Flush => {
                exp.flushes -= 1;
                None
            }
        };
        if let Some(moved) = moved {
            self.reqs[moved as usize].pos = done.pos;
        }
        if exp.waiting == 0 {
            return;
        }
        debug_assert!(ready.capacity() - ready.len() >= exp.waiting as usize);
        let mut w = exp.wait_head;
        while w != NIL {
            let req = &mut self.reqs[w as usize];
            let next = req.next;
            // Only later requests counted `done`. (An earlier waiter cannot conflict with
            // `done`, which would then still wait for it: the test on `seq` is a guard.)
            if req.seq > done.seq && conflicts(done.access, done.span, req.access, req.span) {
                debug_assert!(req.blockers > 0);
                req.blockers -= 1;
                if req.blockers == 0 {
                    let prev = req.prev;
                    req.state = State::Issued;
                    req.next = NIL;
                    req.prev = NIL;
                    if prev == NIL {
                        exp.wait_head = next;
                    } else {
                        self.reqs[prev as usize].next = next;
                    }
                    if next == NIL {
                        exp.wait_tail = prev;
                    } else {
                        self.reqs[next as usize].prev = prev;
                    }
                    exp.waiting -= 1;
                    self.waiting -= 1;
                    ready.push(w);
                }
            }
            w = next;
        }
    }

    /// Number of present requests (issued and waiting).
    pub(crate) fn present(&self) -> usize {
        self.present
    }

    /// Number of waiting requests.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Access::{Flush, Read, Write};

    fn table(capacity: usize, exports: usize) -> (Ranges, Vec<u32>) {
        (Ranges::new(capacity, exports), Vec::with_capacity(capacity))
    }

    /// Completes `slot` and returns what became ready.
    fn done(t: &mut Ranges, ready: &mut Vec<u32>, slot: u32) -> Vec<u32> {
        ready.clear();
        t.complete(slot, ready);
        ready.clone()
    }

    #[test]
    fn write_write_read_same_range_in_order() {
        let (mut t, mut r) = table(8, 1);
        assert!(t.admit(0, 0, Write, 100, 8));
        assert!(!t.admit(1, 0, Write, 100, 8));
        assert!(!t.admit(2, 0, Read, 100, 8));
        assert_eq!((t.present(), t.waiting()), (3, 2));
        assert_eq!(done(&mut t, &mut r, 0), [1]);
        assert_eq!(done(&mut t, &mut r, 1), [2]);
        assert_eq!(done(&mut t, &mut r, 2), [] as [u32; 0]);
        assert_eq!((t.present(), t.waiting()), (0, 0));
    }

    #[test]
    fn reads_run_concurrently() {
        let (mut t, mut r) = table(8, 1);
        for slot in 0..8 {
            assert!(t.admit(slot, 0, Read, 0, 255));
        }
        assert_eq!((t.present(), t.waiting()), (8, 0));
        for slot in (0..8).rev() {
            assert_eq!(done(&mut t, &mut r, slot), [] as [u32; 0]);
        }
        assert_eq!(t.present(), 0);
    }

    #[test]
    fn write_waits_for_a_waiting_read() {
        // W1 in flight, R2 overlaps W1 and waits, W3 overlaps R2 only: W3 waits for R2.
        let (mut t, mut r) = table(8, 1);
        assert!(t.admit(1, 0, Write, 0, 8));
        assert!(!t.admit(2, 0, Read, 4, 8));
        assert!(!t.admit(3, 0, Write, 10, 8));
        // A read of W3's range only waits for W3.
        assert!(!t.admit(4, 0, Read, 16, 2));
        assert_eq!(done(&mut t, &mut r, 1), [2]);
        assert_eq!(done(&mut t, &mut r, 2), [3]);
        assert_eq!(done(&mut t, &mut r, 3), [4]);
        assert_eq!(done(&mut t, &mut r, 4), [] as [u32; 0]);
    }

    #[test]
    fn ready_slots_come_in_arrival_order() {
        let (mut t, mut r) = table(8, 1);
        assert!(t.admit(7, 0, Write, 0, 64));
        assert!(!t.admit(3, 0, Read, 40, 1));
        assert!(!t.admit(5, 0, Read, 0, 1));
        assert!(t.admit(0, 0, Write, 100, 8), "overlaps nothing");
        assert!(!t.admit(6, 0, Write, 40, 1), "overlaps 7 and 3");
        assert_eq!(done(&mut t, &mut r, 7), [3, 5]);
        assert_eq!(done(&mut t, &mut r, 5), [] as [u32; 0]);
        assert_eq!(done(&mut t, &mut r, 3), [6]);
    }

    #[test]
    fn exports_are_independent() {
        let (mut t, mut r) = table(8, 3);
        assert!(t.admit(0, 0, Write, 0, 8));
        assert!(t.admit(1, 1, Write, 0, 8));
        assert!(t.admit(2, 2, Read, 0, 8));
        assert!(t.admit(3, 2, Flush, 0, 0), "export 2 has no write");
        assert!(!t.admit(4, 1, Flush, 0, 0), "waits for 1 only");
        assert!(!t.admit(5, 0, Read, 0, 8), "waits for 0 only");
        assert_eq!(done(&mut t, &mut r, 1), [4]);
        assert_eq!(done(&mut t, &mut r, 0), [5]);
    }

    #[test]
    fn flush_waits_for_writes_only() {
        let (mut t, mut r) = table(8, 1);
        assert!(t.admit(0, 0, Read, 0, 8));
        assert!(
            t.admit(1, 0, Flush, 0, 0),
            "a flush does not wait for reads"
        );
        assert!(t.admit(2, 0, Flush, 0, 0), "nor for flushes");
        assert!(
            t.admit(3, 0, Read, 1 << 40, 8),
            "a read does not wait for a flush"
        );
        assert!(
            !t.admit(4, 0, Write, 1 << 50, 1),
            "a write waits for earlier flushes"
        );
        assert!(!t.admit(5, 0, Flush, 0, 0), "a flush waits for every write");
        assert_eq!(done(&mut t, &mut r, 1), [] as [u32; 0]);
        assert_eq!(done(&mut t, &mut r, 2), [4]);
        assert_eq!(done(&mut t, &mut r, 4), [5]);
        assert_eq!((t.present(), t.waiting()), (3, 0));
    }

    #[test]
    fn adjacent_ranges_do_not_overlap() {
        let (mut t, mut r) = table(8, 1);
        assert!(t.admit(0, 0, Write, 0, 8));
        assert!(t.admit(1, 0, Write, 8, 8));
        assert!(t.admit(2, 0, Read, 16, 1));
        assert!(!t.admit(3, 0, Read, 7, 2), "[7, 9) overlaps both writes");
        assert!(
            !t.admit(4, 0, Write, 15, 1),
            "[15, 16) overlaps the second write"
        );
        assert_eq!(done(&mut t, &mut r, 0), [] as [u32; 0]);
        assert_eq!(done(&mut t, &mut r, 1), [3, 4]);
        assert_eq!(done(&mut t, &mut r, 2), [] as [u32; 0]);
    }

    #[test]
    fn ranges_saturate_at_u64_max() {
        let (mut t, mut r) = table(8, 1);
        let max = u64::MAX;
        assert!(
            t.admit(0, 0, Write, max, 255),
            "[MAX, MAX] is one sector, not empty"
        );
        assert!(!t.admit(1, 0, Read, max - 3, 4), "[MAX-3, MAX] overlaps it");
        assert!(t.admit(2, 0, Read, max - 4, 4), "[MAX-4, MAX-1] does not");
        assert!(t.admit(3, 0, Write, max - 10, 6), "[MAX-10, MAX-5]");
        assert!(
            !t.admit(4, 0, Write, max - 5, 255),
            "saturated: overlaps all of the above"
        );
        assert!(
            t.admit(5, 0, Write, 0, 255),
            "the start of the disk is unaffected"
        );
        assert_eq!(done(&mut t, &mut r, 0), [1]);
        assert_eq!(done(&mut t, &mut r, 2), [] as [u32; 0]);
        assert_eq!(done(&mut t, &mut r, 3), [] as [u32; 0]);
        assert_eq!(done(&mut t, &mut r, 1), [4]);
    }

    #[test]
    fn a_full_table_of_many_exports_fits_the_pool() {
        // Every list with a partly used block, then one export holding everything else.
        let (capacity, exports) = (4096, 256);
        let (mut t, mut r) = table(capacity, exports);
        let mut slot = 0;
        for e in 0..exports as u32 {
            assert!(t.admit(slot, e, Read, 0, 1));
            assert!(t.admit(slot + 1, e, Write, 8, 1));
            slot += 2;
        }
        while (slot as usize) < capacity {
            let access = if slot % 2 == 0 { Read } else { Write };
            assert!(t.admit(slot, 0, access, 1000 + u64::from(slot), 1));
            slot += 1;
        }
        assert_eq!((t.present(), t.waiting()), (capacity, 0));
        for s in (0..capacity as u32).filter(|&s| s % 2 == 1 || s >= 2 * exports as u32) {
            if s != capacity as u32 - 1 {
                assert_eq!(done(&mut t, &mut r, s), [] as [u32; 0]);
            }
        }
        for s in (0..2 * exports as u32).step_by(2) {
            assert_eq!(done(&mut t, &mut r, s), [] as [u32; 0]);
        }
        // Left: the write of slot 4095 at sector 1000 + 4095.
        assert_eq!((t.present(), t.waiting()), (1, 0));
        assert!(!t.admit(0, 0, Write, 4900, 255));
        assert!(!t.admit(1, 0, Read, 5000, 255), "waits for 4095 and 0");
        assert!(t.admit(2, 1, Write, 4900, 255), "another export");
        assert_eq!(done(&mut t, &mut r, capacity as u32 - 1), [0]);
        assert_eq!(done(&mut t, &mut r, 0), [1]);
        assert_eq!((t.present(), t.waiting()), (2, 0));
    }

    /// In release builds misuse is ignored: nothing panics and the table stays consistent.
    #[cfg(not(debug_assertions))]
    #[test]
    fn misuse_is_ignored() {
        let (mut t, mut r) = table(4, 2);
        assert!(t.admit(0, 0, Write, 0, 8));
        assert!(
            t.admit(4, 0, Write, 0, 8),
            "slot out of range: issue, untracked"
        );
        assert!(t.admit(u32::MAX, 0, Write, 0, 8));
        assert!(t.admit(1, 2, Write, 0, 8), "export out of range");
        assert!(t.admit(0, 0, Read, 0, 8), "double admit");
        assert_eq!((t.present(), t.waiting()), (1, 0));
        assert!(!t.admit(1, 0, Read, 0, 8));
        t.complete(1, &mut r); // waiting
        t.complete(2, &mut r); // absent
        t.complete(99, &mut r); // out of range
        assert!(r.is_empty());
        assert_eq!((t.present(), t.waiting()), (2, 1));
        assert_eq!(done(&mut t, &mut r, 0), [1]);
        t.complete(0, &mut r); // twice
        assert_eq!(done(&mut t, &mut r, 1), [] as [u32; 0]);
        assert_eq!((t.present(), t.waiting()), (0, 0));
        assert!(t.admit(0, 0, Write, 0, 0), "zero sectors count as one");
        assert!(!t.admit(1, 0, Read, 0, 1));
        assert!(t.admit(2, 0, Read, 1, 1));
    }

    /// A small deterministic PRNG (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A request of the model; ranges in u128 so the end is computed without saturation.
    #[derive(Clone, Copy, Debug)]
    struct M {
        slot: u32,
        export: u32,
        access: Access,
        first: u128,
        end: u128,
        issued: bool,
    }

    fn model_conflicts(a: &M, b: &M) -> bool {
        a.export == b.export
            && (a.access == Write || b.access == Write)
            && a.first < b.end
            && b.first < a.end
    }

    /// Whether `model[i]` may be issued: no earlier present request conflicts with it.
    fn issuable(model: &[M], i: usize) -> bool {
        !model[..i].iter().any(|m| model_conflicts(m, &model[i]))
    }

    /// A random run: requests of exports `0..exports` start in `[base, base + window)`
    /// (saturated) and are 1..=12 sectors long; a step admits with probability `admit_percent`
    /// (when a slot is free), else completes a random issued request.
    struct Run {
        seed: u64,
        steps: usize,
        capacity: usize,
        exports: u32,
        base: u64,
        window: u64,
        admit_percent: u64,
    }

    /// Random admits and completions checked against the naive model after every step.
    fn run_against_model(run: Run) {
        let Run {
            seed,
            steps,
            capacity,
            exports,
            base,
            window,
            admit_percent,
        } = run;
        let mut rng = Rng(seed);
        let (mut t, mut ready) = table(capacity, exports as usize);
        let mut model: Vec<M> = Vec::new();
        let mut free: Vec<u32> = (0..capacity as u32).collect();
        let ready_capacity = ready.capacity();
        let (mut admits, mut waits) = (0usize, 0usize);
        for step in 0..steps {
            let issued: Vec<usize> = (0..model.len()).filter(|&i| model[i].issued).collect();
            assert!(
                !issued.is_empty() || model.is_empty(),
                "step {step}: nothing issued"
            );
            if !free.is_empty() && (issued.is_empty() || rng.below(100) < admit_percent) {
                let slot = free.swap_remove(rng.below(free.len() as u64) as usize);
                let export = rng.below(u64::from(exports)) as u32;
                let access = match rng.below(10) {
                    0 => Flush,
                    1..=4 => Write,
                    _ => Read,
                };
                let lba = base.saturating_add(rng.below(window));
                let sectors = 1 + rng.below(12) as u32;
                let (first, end) = if access == Flush {
                    (0, 1u128 << 64)
                } else {
                    let first = u128::from(lba);
                    (first, (first + u128::from(sectors)).min(1u128 << 64))
                };
                model.push(M {
                    slot,
                    export,
                    access,
                    first,
                    end,
                    issued: false,
                });
                let now = t.admit(slot, export, access, lba, sectors);
                let last = model.len() - 1;
                assert_eq!(
                    now,
                    issuable(&model, last),
                    "step {step}: admit {:?}",
                    model[last]
                );
                model[last].issued = now;
                admits += 1;
                waits += usize::from(!now);
            } else {
                let i = issued[rng.below(issued.len() as u64) as usize];
                let m = model.remove(i);
                free.push(m.slot);
                let expected: Vec<u32> = (0..model.len())
                    .filter(|&j| !model[j].issued && issuable(&model, j))
                    .map(|j| model[j].slot)
                    .collect();
                ready.clear();
                t.complete(m.slot, &mut ready);
                assert_eq!(ready, expected, "step {step}: complete {m:?}");
                for &slot in &ready {
                    let j = model.iter().position(|x| x.slot == slot).unwrap();
                    assert!(!model[j].issued, "step {step}: slot {slot} returned twice");
                    model[j].issued = true;
                }
            }
            for j in 0..model.len() {
                assert_eq!(
                    model[j].issued,
                    issuable(&model, j),
                    "step {step}: {:?}",
                    model[j]
                );
            }
            let waiting = model.iter().filter(|m| !m.issued).count();
            assert_eq!(
                (t.present(), t.waiting()),
                (model.len(), waiting),
                "step {step}"
            );
            assert_eq!(
                ready.capacity(),
                ready_capacity,
                "step {step}: ready reallocated"
            );
        }
        // The run exercised both paths.
        assert!(
            admits > steps / 3 && waits > admits / 20,
            "{admits} admits, {waits} waits"
        );
    }

    #[test]
    fn random_sequences_match_the_model() {
        run_against_model(Run {
            seed: 0x9E37_79B9_7F4A_7C15,
            steps: 12_000,
            capacity: 24,
            exports: 3,
            base: 0,
            window: 32,
            admit_percent: 55,
        });
    }

    #[test]
    fn random_sequences_with_long_lists_match_the_model() {
        // One export and many slots: the range lists and the waiting list grow long (lists
        // span several blocks).
        run_against_model(Run {
            seed: 0xD1B5_4A32_D192_ED03,
            steps: 12_000,
            capacity: 72,
            exports: 1,
            base: 1 << 20,
            window: 32,
            admit_percent: 55,
        });
    }

    #[test]
    fn random_sequences_near_u64_max_match_the_model() {
        run_against_model(Run {
            seed: 0x8CB9_2BA7_2F3D_8DD7,
            steps: 12_000,
            capacity: 24,
            exports: 3,
            base: u64::MAX - 31,
            window: 32,
            admit_percent: 55,
        });
    }

    #[test]
    fn random_sparse_sequences_match_the_model() {
        // A wider window: fewer overlaps, more issued requests beside the waiting ones.
        run_against_model(Run {
            seed: 0x2545_F491_4F6C_DD1D,
            steps: 12_000,
            capacity: 72,
            exports: 2,
            base: 0,
            window: 1024,
            admit_percent: 50,
        });
    }
}
