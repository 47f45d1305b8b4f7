//! A worker's line to the control plane: counters published on request, and export-set changes
//! applied at a quiet point.
//!
//! Nothing here costs the hot path. A worker counts into its own memory (plain integers, per
//! export and per initiator); the control plane bumps [`Control::want`] when it wants the
//! counters or has a change for the worker, and the worker, which loads that word once per
//! loop (a cache line only the control plane writes, rarely), copies its counters under the
//! lock and says so in [`Control::done`]. No lock, no system call and no shared write per frame.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aoe::Mac;

use crate::export::Export;
use crate::latency::Histogram;

use super::WorkerStats;

/// What one worker counted for one export.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportTally {
    /// Reads answered.
    pub reads: u64,
    /// Writes answered.
    pub writes: u64,
    /// FLUSH CACHE answered.
    pub flushes: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Requests answered with an ATA error by the storage side.
    pub errors: u64,
    /// Latency from arrival to reply.
    pub latency: Histogram,
}

impl ExportTally {
    /// Add `other` into this one.
    pub fn add(&mut self, other: &ExportTally) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.flushes += other.flushes;
        self.read_bytes += other.read_bytes;
        self.write_bytes += other.write_bytes;
        self.errors += other.errors;
        self.latency.add(&other.latency);
    }
}

/// Initiators seen by one worker: a fixed open-addressed table (no allocation per frame); when
/// it is full, new MACs are counted in `overflow`.
#[derive(Clone, Debug)]
pub struct Initiators {
    slots: Vec<Option<Seen>>,
    /// Frames from MACs the full table had no room for.
    pub overflow: u64,
}

/// One initiator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its MAC.
    pub mac: Mac,
    /// AoE frames from it.
    pub frames: u64,
    /// When its last frame arrived (the worker's clock, see [`super::Worker`]).
    pub last: Instant,
}

/// Table size (a power of two).
const INITIATORS: usize = 256;

impl Default for Initiators {
    fn default() -> Self {
        Initiators {
            slots: vec![None; INITIATORS],
            overflow: 0,
        }
    }
}

impl Initiators {
    /// Count a frame from `mac` at `now`.
    #[inline]
    pub fn record(&mut self, mac: Mac, now: Instant) {
        let key = u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0]);
        let mut i = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize;
        for _ in 0..INITIATORS {
            match self.slots.get_mut(i % INITIATORS) {
                Some(Some(s)) if s.mac == mac => {
                    s.frames += 1;
                    s.last = now;
                    return;
                }
                Some(slot @ None) => {
                    *slot = Some(Seen {
                        mac,
                        frames: 1,
                        last: now,
                    });
                    return;
                }
                _ => i += 1,
            }
        }
        self.overflow += 1;
    }

    /// Every initiator seen.
    pub fn iter(&self) -> impl Iterator<Item = &Seen> {
        self.slots.iter().flatten()
    }
}

/// What a worker published, the last time it was asked.
#[derive(Clone, Default)]
pub struct Published {
    /// Its counters.
    pub stats: WorkerStats,
    /// Per export it serves: the export and what it counted for it, with the requests it has
    /// in flight for it.
    pub exports: Vec<(Arc<Export>, ExportTally, u64)>,
    /// Initiators it saw.
    pub initiators: Vec<Seen>,
    /// Requests it had in flight.
    pub in_flight: u64,
    /// When it published (`None`: never).
    pub at: Option<Instant>,
}

/// The state behind [`Control`]'s lock.
#[derive(Default)]
pub struct Shared {
    /// The counters as last published.
    pub published: Published,
    /// A new export list for the worker (in its file order), with its generation.
    pub change: Option<(u64, Vec<Arc<Export>>)>,
    /// The generation of the export list the worker serves (0: the one it was built with).
    pub applied: u64,
    /// Why the last change failed, if it did.
    pub failed: Option<String>,
    /// Changes up to this generation are withdrawn: a worker that has not applied one yet
    /// never will (the control plane gave up waiting for it to quiesce).
    pub cancelled: u64,
}

/// Shared between one worker and the control plane.
#[derive(Default)]
pub struct Control {
    /// Requests: bumped by the control plane.
    want: AtomicU64,
    /// The last request the worker served.
    done: AtomicU64,
    shared: Mutex<Shared>,
}

impl Control {
    /// The locked shared state.
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask the worker to publish (and to look at `change`); returns the request's number.
    pub fn ask(&self) -> u64 {
        self.want.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Wait up to `timeout` for the worker to serve request `n`; true if it did.
    pub fn wait(&self, n: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.done.load(Ordering::Acquire) >= n {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Hand the worker a new export list (generation `gen`) and wait up to `timeout` until it
    /// serves it. `Err` says why not (the worker's error, or the timeout).
    pub fn change(
        &self,
        gen: u64,
        exports: Vec<Arc<Export>>,
        timeout: Duration,
    ) -> Result<(), String> {
        self.lock().change = Some((gen, exports));
        let end = Instant::now() + timeout;
        loop {
            self.ask();
            {
                let s = self.lock();
                if s.applied >= gen {
                    return Ok(());
                }
                if let Some(e) = &s.failed {
                    return Err(e.clone());
                }
            }
            if Instant::now() >= end {
                // Withdraw it, under the lock the worker applies changes under: either it
                // applied it already (success after all), or it never will.
                let mut s = self.lock();
                if s.applied >= gen {
                    return Ok(());
                }
                s.cancelled = s.cancelled.max(gen);
                s.change = None;
                drop(s);
                self.ask();
                return Err(format!(
                    "the worker did not take the change within {} s (requests of its exports \
                     still in flight in a store that does not answer?); nothing changed on it",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// For the worker: the pending request number, if one is not served yet (one atomic load).
    #[inline]
    pub(super) fn pending(&self, served: u64) -> Option<u64> {
        let w = self.want.load(Ordering::Relaxed);
        (w != served).then_some(w)
    }

    /// For the worker: request `n` is served.
    pub(super) fn served(&self, n: u64) {
        self.done.store(n, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initiators_are_counted_per_mac_and_overflow_is_counted() {
        let mut t = Initiators::default();
        let now = Instant::now();
        for i in 0..300u32 {
            let b = i.to_le_bytes();
            let mac = [2, 0, b[0], b[1], 0, 1];
            t.record(mac, now);
            t.record(mac, now);
        }
        assert_eq!(t.iter().count(), INITIATORS);
        assert!(t.iter().all(|s| s.frames == 2));
        assert_eq!(t.overflow, 2 * (300 - INITIATORS as u64));
    }

    #[test]
    fn a_request_is_pending_until_served() {
        let c = Control::default();
        assert_eq!(c.pending(0), None);
        let n = c.ask();
        assert_eq!(c.pending(0), Some(n));
        assert!(!c.wait(n, Duration::from_millis(5)));
        c.served(n);
        assert!(c.wait(n, Duration::from_millis(5)));
        assert_eq!(c.pending(n), None);
    }
}
