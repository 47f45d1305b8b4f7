//! Ring index arithmetic (a pure producer/consumer cursor pair) and the mmap'd AF_XDP rings.
//!
//! The cursors follow libxdp's `xsk.h`: each side caches the other side's index and re-reads
//! it (one `Acquire` load) only when the cache cannot satisfy a batch; publishing a batch is one
//! `Release` store. Indices are free-running `u32`s; only `index & (size - 1)` names a slot, so
//! all arithmetic wraps.

use std::io;
use std::marker::PhantomData;
use std::mem::size_of;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::if_xdp::xdp_ring_offset;
use crate::sys::Mmap;
use crate::Result;

/// Producer side of a single-producer single-consumer ring.
#[derive(Debug)]
pub struct Producer {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    /// Our next index to fill (ahead of `*producer` only between `reserve` and `submit`).
    cached_prod: u32,
    /// Last consumer index seen, plus the ring size, so `cached_cons - cached_prod` = free.
    cached_cons: u32,
    mask: u32,
}

impl Producer {
    /// # Safety
    /// `producer` and `consumer` must point to `AtomicU32`s that stay valid as long as the
    /// returned value; this must be the ring's only producer; `size` is a power of two and the
    /// slot array behind the ring has `size` entries.
    pub unsafe fn new(
        producer: NonNull<AtomicU32>,
        consumer: NonNull<AtomicU32>,
        size: u32,
    ) -> Producer {
        assert!(
            size.is_power_of_two(),
            "ring size {size} is not a power of two"
        );
        // SAFETY: the caller guarantees both pointers are valid.
        let (prod, cons) = unsafe { (producer.as_ref(), consumer.as_ref()) };
        Producer {
            cached_prod: prod.load(Ordering::Relaxed),
            cached_cons: cons.load(Ordering::Acquire).wrapping_add(size),
            producer,
            consumer,
            mask: size - 1,
        }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: valid for our lifetime, per `new`'s contract.
        unsafe { self.consumer.as_ref() }
    }

    /// Up to `want` free slots, `0..n`, to write before [`submit`](Self::submit). Reads the
    /// consumer index only when the cached view has fewer than `want` free.
    pub fn reserve(&mut self, want: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= want {
            return want;
        }
        let size = self.mask.wrapping_add(1);
        self.cached_cons = self.consumer().load(Ordering::Acquire).wrapping_add(size);
        self.cached_cons.wrapping_sub(self.cached_prod).min(want)
    }

    /// Slot of the `i`-th reserved entry.
    pub fn slot(&self, i: u32) -> usize {
        (self.cached_prod.wrapping_add(i) & self.mask) as usize
    }

    /// Publishes the first `n` reserved entries (one `Release` store).
    pub fn submit(&mut self, n: u32) {
        debug_assert!(n <= self.cached_cons.wrapping_sub(self.cached_prod));
        if n == 0 {
            return;
        }
        self.cached_prod = self.cached_prod.wrapping_add(n);
        // SAFETY: valid for our lifetime, per `new`'s contract.
        unsafe { self.producer.as_ref() }.store(self.cached_prod, Ordering::Release);
    }

    /// Free slots right now (reads the consumer index, leaves the cache alone).
    pub fn free(&self) -> u32 {
        let size = self.mask.wrapping_add(1);
        let cons = self.consumer().load(Ordering::Acquire);
        cons.wrapping_add(size).wrapping_sub(self.cached_prod)
    }

    /// Entries submitted and not yet taken by the consumer (reads the consumer index).
    pub fn pending(&self) -> u32 {
        let cons = self.consumer().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(cons)
    }
}

/// Consumer side of a single-producer single-consumer ring.
#[derive(Debug)]
pub struct Consumer {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    /// Last producer index seen.
    cached_prod: u32,
    /// Our next index to read.
    cached_cons: u32,
    mask: u32,
}

impl Consumer {
    /// # Safety
    /// As [`Producer::new`], for the ring's only consumer.
    pub unsafe fn new(
        producer: NonNull<AtomicU32>,
        consumer: NonNull<AtomicU32>,
        size: u32,
    ) -> Consumer {
        assert!(
            size.is_power_of_two(),
            "ring size {size} is not a power of two"
        );
        // SAFETY: the caller guarantees both pointers are valid.
        let (prod, cons) = unsafe { (producer.as_ref(), consumer.as_ref()) };
        Consumer {
            cached_prod: prod.load(Ordering::Acquire),
            cached_cons: cons.load(Ordering::Relaxed),
            producer,
            consumer,
            mask: size - 1,
        }
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: valid for our lifetime, per `new`'s contract.
        unsafe { self.producer.as_ref() }
    }

    /// Up to `want` filled entries, `0..n`, to read before [`release`](Self::release). Reads
    /// the producer index only when the cached view has fewer than `want`.
    pub fn peek(&mut self, want: u32) -> u32 {
        let avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if avail >= want {
            return want;
        }
        self.cached_prod = self.producer().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons).min(want)
    }

    /// Slot of the `i`-th peeked entry.
    pub fn slot(&self, i: u32) -> usize {
        (self.cached_cons.wrapping_add(i) & self.mask) as usize
    }

    /// Hands the first `n` peeked slots back to the producer (one `Release` store).
    pub fn release(&mut self, n: u32) {
        debug_assert!(n <= self.cached_prod.wrapping_sub(self.cached_cons));
        if n == 0 {
            return;
        }
        self.cached_cons = self.cached_cons.wrapping_add(n);
        // SAFETY: valid for our lifetime, per `new`'s contract.
        unsafe { self.consumer.as_ref() }.store(self.cached_cons, Ordering::Release);
    }

    /// Entries available right now (reads the producer index, leaves the cache alone).
    pub fn available(&self) -> u32 {
        let prod = self.producer().load(Ordering::Acquire);
        prod.wrapping_sub(self.cached_cons)
    }
}

/// One ring mapped from an AF_XDP socket: indices, flags and a slot array of `T`.
#[derive(Debug)]
pub(crate) struct RingMap<T> {
    slots: NonNull<T>,
    flags: NonNull<AtomicU32>,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    mask: u32,
    _map: Mmap,
    _ty: PhantomData<T>,
}

impl<T: Copy> RingMap<T> {
    /// Maps the ring at `pgoff` of socket `fd`, laid out as the kernel reported in `off`.
    pub(crate) fn map(fd: RawFd, off: &xdp_ring_offset, size: u32, pgoff: u64) -> Result<Self> {
        assert!(size.is_power_of_two());
        let bad = |what| io::Error::new(io::ErrorKind::InvalidData, what);
        let desc = usize::try_from(off.desc).map_err(|_| bad("ring desc offset"))?;
        let len = desc + size as usize * size_of::<T>();
        let map = Mmap::ring(fd, len, pgoff)?;
        let field = |o: u64| -> Result<NonNull<AtomicU32>> {
            let o = usize::try_from(o).map_err(|_| bad("ring offset"))?;
            if o % 4 != 0 || o + 4 > desc {
                return Err(bad("ring index offset out of range"));
            }
            // SAFETY: `o + 4 <= desc < len`, so the result is inside the mapping, 4-aligned
            // (page-aligned base), and non-null.
            Ok(unsafe { NonNull::new_unchecked(map.ptr().add(o).cast()) })
        };
        if desc % std::mem::align_of::<T>() != 0 {
            return Err(bad("ring desc offset misaligned"));
        }
        Ok(RingMap {
            producer: field(off.producer)?,
            consumer: field(off.consumer)?,
            flags: field(off.flags)?,
            // SAFETY: `desc < len`, so inside the mapping; aligned as checked above.
            slots: unsafe { NonNull::new_unchecked(map.ptr().add(desc).cast()) },
            mask: size - 1,
            _map: map,
            _ty: PhantomData,
        })
    }

    pub(crate) fn producer(&self) -> Producer {
        // SAFETY: the indices live in `self._map`, which outlives the cursor because the
        // socket keeps both together; the socket creates one cursor per ring.
        unsafe { Producer::new(self.producer, self.consumer, self.mask + 1) }
    }

    pub(crate) fn consumer(&self) -> Consumer {
        // SAFETY: as in `producer`.
        unsafe { Consumer::new(self.producer, self.consumer, self.mask + 1) }
    }

    /// Reads slot `slot` (masked into range). The cursor decides whether the slot is ours.
    pub(crate) fn read(&self, slot: usize) -> T {
        // SAFETY: the masked index is inside the slot array; `T` is a plain kernel ABI type.
        unsafe { self.slots.as_ptr().add(slot & self.mask as usize).read() }
    }

    /// Writes slot `slot` (masked into range).
    pub(crate) fn write(&mut self, slot: usize, val: T) {
        // SAFETY: the masked index is inside the slot array; `T` is a plain kernel ABI type.
        unsafe {
            self.slots
                .as_ptr()
                .add(slot & self.mask as usize)
                .write(val)
        }
    }

    /// Whether the kernel set `XDP_RING_NEED_WAKEUP` on this ring.
    pub(crate) fn needs_wakeup(&self) -> bool {
        // SAFETY: `flags` points into our mapping, checked in `map`.
        let flags = unsafe { self.flags.as_ref() }.load(Ordering::Acquire);
        flags & crate::if_xdp::XDP_RING_NEED_WAKEUP != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Debug, Clone)]
    enum Op {
        Produce(u32),
        Consume(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..40).prop_map(Op::Produce),
            (0u32..40).prop_map(Op::Consume)
        ]
    }

    /// Runs `ops` on a ring over plain memory and checks it against a `VecDeque`.
    fn run(size_log2: u32, start: u32, ops: &[Op]) {
        let size = 1u32 << size_log2;
        let prod_idx = AtomicU32::new(start);
        let cons_idx = AtomicU32::new(start);
        let mut slots = vec![0u64; size as usize];
        // SAFETY: both atomics outlive the cursors (same scope); one producer, one consumer.
        let (mut p, mut c) = unsafe {
            (
                Producer::new(NonNull::from(&prod_idx), NonNull::from(&cons_idx), size),
                Consumer::new(NonNull::from(&prod_idx), NonNull::from(&cons_idx), size),
            )
        };
        let mut model = VecDeque::new();
        let mut next = 0u64;
        for op in ops {
            match *op {
                Op::Produce(want) => {
                    assert_eq!(p.free(), size - model.len() as u32);
                    assert_eq!(p.pending(), model.len() as u32);
                    let n = p.reserve(want);
                    assert_eq!(n, want.min(size - model.len() as u32));
                    for i in 0..n {
                        slots[p.slot(i)] = next;
                        model.push_back(next);
                        next += 1;
                    }
                    p.submit(n);
                }
                Op::Consume(want) => {
                    assert_eq!(c.available(), model.len() as u32);
                    let n = c.peek(want);
                    assert_eq!(n, want.min(model.len() as u32));
                    for i in 0..n {
                        assert_eq!(Some(slots[c.slot(i)]), model.pop_front());
                    }
                    c.release(n);
                }
            }
            let used = prod_idx
                .load(Ordering::Relaxed)
                .wrapping_sub(cons_idx.load(Ordering::Relaxed));
            assert_eq!(used, model.len() as u32);
        }
    }

    proptest! {
        #[test]
        fn cursor_matches_fifo_model(
            size_log2 in 0u32..7,
            start in prop_oneof![Just(0u32), (u32::MAX - 200)..=u32::MAX, any::<u32>()],
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            run(size_log2, start, &ops);
        }
    }

    #[test]
    fn wraps_past_u32_max() {
        let ops: Vec<Op> = (0..64)
            .flat_map(|_| [Op::Produce(7), Op::Consume(5)])
            .collect();
        run(4, u32::MAX - 3, &ops);
    }
}
