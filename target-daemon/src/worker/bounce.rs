//! Bounce slots: aligned buffers (registered with io_uring) into which a jumbo write whose
//! payload the NIC split across several chunks is gathered before it is written.

use crate::sys::Region;

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
            region: Region::new(slots.saturating_mul(slot_size))?,
            slot_size,
            free: (0..slots as u32).rev().collect(),
        })
    }

    /// The region, for io_uring registration.
    pub fn area(&self) -> (*mut u8, usize) {
        self.region.area()
    }

    /// Free slots.
    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Take a free slot.
    pub(crate) fn take(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Give a slot back.
    pub(crate) fn put(&mut self, slot: u32) {
        debug_assert!(!self.free.contains(&slot));
        self.free.push(slot);
    }

    /// Slot `slot` from byte `from` on (`from` < slot size).
    pub(crate) fn slot_mut(&mut self, slot: u32, from: usize) -> &mut [u8] {
        let size = self.slot_size;
        let from = from.min(size);
        self.region
            .slice_mut(slot as usize * size + from, size - from)
    }

    /// Where byte `at` of slot `slot` lives (for an operation the slot stays parked for).
    pub(crate) fn ptr(&self, slot: u32, at: usize) -> *mut u8 {
        self.area()
            .0
            .wrapping_add(slot as usize * self.slot_size + at.min(self.slot_size))
    }

    /// Copy slot `src` over slot `dst` (wildcard fan-out of a gathered write).
    pub(crate) fn copy_slot(&mut self, src: u32, dst: u32) {
        let size = self.slot_size;
        let all = self.region.slice_mut(0, (src.max(dst) as usize + 1) * size);
        all.copy_within(
            src as usize * size..(src as usize + 1) * size,
            dst as usize * size,
        );
    }
}
