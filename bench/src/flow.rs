//! The initiator's flow control, modelled on the Linux `aoe` driver (pure: time is a `u64` of
//! nanoseconds passed in by the caller, so tests drive it with a fake clock).
//!
//! - [`RttEstimator`]: Jacobson/Karels smoothed RTT and deviation; RTO = 2·srtt + 8·rttvar as
//!   in `aoecmd.c`'s `rto()`, 250 ms before the first sample, clamped to `[min, max]`, doubled
//!   per retransmit of the same request (also clamped).
//! - [`Window`]: Linux's per-target `maxout`: starts at half the cap, slow start up to
//!   `ssthresh`, then one more frame per window's worth of responses while the window is full;
//!   a timeout halves `ssthresh` and drops `maxout` to 1.
//! - [`Tracker`]: the outstanding requests. Every transmission gets a fresh tag (bit 31 clear,
//!   as Linux); a response to a superseded tag is "late" and ignored; a timed-out request is
//!   queued for retransmission with a new tag and does not count against the window until it
//!   is sent again.

use std::collections::VecDeque;

/// Nanoseconds on the caller's clock.
pub type Nanos = u64;

/// Milliseconds to [`Nanos`].
pub const fn ms(v: u64) -> Nanos {
    v * 1_000_000
}

/// Smoothed round-trip time and the retransmission timeout derived from it.
#[derive(Clone, Debug)]
pub struct RttEstimator {
    srtt: Option<f64>,
    rttvar: f64,
    initial: Nanos,
    min: Nanos,
    max: Nanos,
}

impl RttEstimator {
    /// An estimator whose RTO is `initial` until the first sample, and always in `[min, max]`.
    pub fn new(initial: Nanos, min: Nanos, max: Nanos) -> Self {
        let min = min.max(1);
        RttEstimator {
            srtt: None,
            rttvar: 0.0,
            initial: initial.clamp(min, max.max(min)),
            min,
            max: max.max(min),
        }
    }

    /// Feeds one RTT measurement (RFC 6298 gains: 1/8 for the mean, 1/4 for the deviation).
    pub fn sample(&mut self, rtt: Nanos) {
        let r = rtt as f64;
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2.0;
            }
            Some(s) => {
                self.rttvar += ((r - s).abs() - self.rttvar) / 4.0;
                self.srtt = Some(s + (r - s) / 8.0);
            }
        }
    }

    /// Smoothed RTT, once sampled.
    pub fn srtt(&self) -> Option<Nanos> {
        self.srtt.map(|s| s as Nanos)
    }

    /// The retransmission timeout for a first transmission.
    pub fn rto(&self) -> Nanos {
        match self.srtt {
            None => self.initial,
            Some(s) => ((2.0 * s + 8.0 * self.rttvar) as Nanos).clamp(self.min, self.max),
        }
    }

    /// The timeout after `retries` retransmissions: the RTO doubled that many times, clamped.
    pub fn timeout(&self, retries: u32) -> Nanos {
        self.rto()
            .saturating_mul(1 << retries.min(16))
            .min(self.max)
            .max(self.rto())
    }
}

/// Linux-like congestion window: how many frames may be on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    cap: u32,
    maxout: u32,
    ssthresh: u32,
    next_cwnd: u32,
    /// Smallest `maxout` seen (1 after any timeout).
    pub min_seen: u32,
}

impl Window {
    /// A window of at most `cap` frames (Linux: `nframes = min(bufcnt, 64)`; here `--qd`).
    pub fn new(cap: u32) -> Self {
        let cap = cap.max(1);
        let half = (cap / 2).max(1);
        Window {
            cap,
            maxout: half,
            ssthresh: half,
            next_cwnd: cap,
            min_seen: half,
        }
    }

    /// Frames allowed on the wire now.
    pub fn maxout(&self) -> u32 {
        self.maxout
    }

    /// A response arrived while `nout` frames were on the wire (before removing this one).
    pub fn on_response(&mut self, nout: u32) {
        if self.maxout >= self.cap {
            return;
        }
        if self.maxout < self.ssthresh {
            self.maxout += 1;
        } else if nout >= self.maxout {
            if self.next_cwnd == 0 {
                self.maxout += 1;
                self.next_cwnd = self.maxout;
            } else {
                self.next_cwnd -= 1;
            }
        }
    }

    /// One or more frames timed out (applied once per timer scan, as Linux does per tick).
    pub fn on_timeout(&mut self) {
        self.ssthresh = (self.maxout / 2).max(1);
        self.maxout = 1;
        self.next_cwnd = 1;
        self.min_seen = 1;
    }
}

/// Slots, and so outstanding requests, are limited by the 10 tag bits that name them.
pub const MAX_SLOTS: usize = 1 << SLOT_BITS;
const SLOT_BITS: u32 = 10;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
const SEQ_MASK: u32 = (1 << (31 - SLOT_BITS)) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    /// On the wire under `tag`.
    InFlight,
    /// Timed out, waiting in the retransmit queue.
    Rexmit,
}

#[derive(Clone, Debug)]
struct Slot<T> {
    state: State,
    /// Transmissions of this slot so far (its tags' sequence part).
    seq: u32,
    tag: u32,
    first_sent: Nanos,
    sent_at: Nanos,
    retries: u32,
    req: T,
}

/// Counters kept by the [`Tracker`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Transmissions, first ones and retransmissions.
    pub sent: u64,
    /// Retransmissions (each with a new tag).
    pub retransmits: u64,
    /// Requests that timed out (each is then retransmitted).
    pub timeouts: u64,
    /// Responses to a tag that was superseded by a retransmission or already answered.
    pub late: u64,
    /// Responses with a tag we never used.
    pub stray: u64,
    /// Requests answered.
    pub completed: u64,
}

/// A request answered: what it was and how long it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done<T> {
    /// The request.
    pub req: T,
    /// From its first transmission to now (what the user of the I/O waited).
    pub latency: Nanos,
    /// Retransmissions it needed.
    pub retries: u32,
}

/// What a response's tag turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    /// The answer to an outstanding request, which is now complete.
    Done(Done<T>),
    /// A response to a superseded tag: ignored.
    Late,
    /// Not one of our tags: ignored.
    Stray,
}

/// The table of outstanding requests, with their tags, timers and the window.
#[derive(Clone, Debug)]
pub struct Tracker<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    rexmit: VecDeque<u32>,
    nout: u32,
    /// The RTT estimate.
    pub rtt: RttEstimator,
    /// The congestion window.
    pub window: Window,
    /// Counters.
    pub stats: FlowStats,
}

impl<T: Copy + Default> Tracker<T> {
    /// A table for `capacity` outstanding requests (at most [`MAX_SLOTS`]), with a window
    /// capped at `capacity`.
    pub fn new(capacity: usize, rtt: RttEstimator) -> Self {
        assert!((1..=MAX_SLOTS).contains(&capacity), "1..={MAX_SLOTS} slots");
        let slots = (0..capacity)
            .map(|_| Slot {
                state: State::Free,
                seq: 0,
                tag: 0,
                first_sent: 0,
                sent_at: 0,
                retries: 0,
                req: T::default(),
            })
            .collect();
        Tracker {
            slots,
            free: (0..capacity as u32).rev().collect(),
            rexmit: VecDeque::new(),
            nout: 0,
            rtt,
            window: Window::new(capacity as u32),
            stats: FlowStats::default(),
        }
    }

    /// Requests not yet answered (on the wire or waiting for retransmission).
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Frames on the wire.
    #[cfg(test)]
    pub fn on_wire(&self) -> u32 {
        self.nout
    }

    /// Whether the window allows another frame on the wire.
    pub fn can_send(&self) -> bool {
        self.nout < self.window.maxout()
    }

    /// Whether a new request can be added.
    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Whether timed-out requests wait for retransmission.
    pub fn has_rexmit(&self) -> bool {
        !self.rexmit.is_empty()
    }

    fn transmit(&mut self, slot: u32, now: Nanos) -> u32 {
        let s = &mut self.slots[slot as usize];
        s.seq = (s.seq + 1) & SEQ_MASK;
        s.tag = (s.seq << SLOT_BITS) | slot;
        s.state = State::InFlight;
        s.sent_at = now;
        self.nout += 1;
        self.stats.sent += 1;
        s.tag
    }

    /// Starts a new request: returns the tag to send it with, or `None` if the table is full.
    /// Callers check [`can_send`](Self::can_send) first to respect the window.
    pub fn issue(&mut self, req: T, now: Nanos) -> Option<u32> {
        let slot = self.free.pop()?;
        let s = &mut self.slots[slot as usize];
        s.req = req;
        s.first_sent = now;
        s.retries = 0;
        Some(self.transmit(slot, now))
    }

    /// Takes the oldest timed-out request for retransmission: its new tag and the request.
    pub fn retransmit(&mut self, now: Nanos) -> Option<(u32, T)> {
        let slot = self.rexmit.pop_front()?;
        self.slots[slot as usize].retries += 1;
        self.stats.retransmits += 1;
        let tag = self.transmit(slot, now);
        Some((tag, self.slots[slot as usize].req))
    }

    /// Matches a response's tag.
    pub fn on_response(&mut self, tag: u32, now: Nanos) -> Answer<T> {
        let slot = tag & SLOT_MASK;
        let Some(s) = self.slots.get_mut(slot as usize) else {
            self.stats.stray += 1;
            return Answer::Stray;
        };
        if tag & (1 << 31) != 0 {
            self.stats.stray += 1;
            return Answer::Stray;
        }
        if s.state != State::InFlight || s.tag != tag {
            let seq = tag >> SLOT_BITS;
            if seq != 0 && seq <= s.seq {
                self.stats.late += 1;
                return Answer::Late;
            }
            self.stats.stray += 1;
            return Answer::Stray;
        }
        let done = Done {
            req: s.req,
            latency: now.saturating_sub(s.first_sent),
            retries: s.retries,
        };
        self.rtt.sample(now.saturating_sub(s.sent_at));
        s.state = State::Free;
        self.window.on_response(self.nout);
        self.nout -= 1;
        self.free.push(slot);
        self.stats.completed += 1;
        Answer::Done(done)
    }

    /// Moves every request whose timer expired to the retransmit queue (oldest first);
    /// returns how many. Shrinks the window once if any did.
    pub fn expire(&mut self, now: Nanos) -> usize {
        let mut expired: Vec<(Nanos, u32)> = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if s.state == State::InFlight
                && now.saturating_sub(s.sent_at) >= self.rtt.timeout(s.retries)
            {
                expired.push((s.sent_at, i as u32));
            }
        }
        if expired.is_empty() {
            return 0;
        }
        expired.sort_unstable();
        for &(_, i) in &expired {
            self.slots[i as usize].state = State::Rexmit;
            self.rexmit.push_back(i);
            self.nout -= 1;
        }
        self.window.on_timeout();
        self.stats.timeouts += expired.len() as u64;
        expired.len()
    }

    /// The outstanding request waiting longest since its first transmission: its request,
    /// how long it has waited, and its retransmissions.
    pub fn oldest(&self, now: Nanos) -> Option<(T, Nanos, u32)> {
        self.slots
            .iter()
            .filter(|s| s.state != State::Free)
            .min_by_key(|s| s.first_sent)
            .map(|s| (s.req, now.saturating_sub(s.first_sent), s.retries))
    }

    /// Gives up on every outstanding request (at the end of a drain); returns them.
    pub fn abandon(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.state != State::Free {
                s.state = State::Free;
                out.push(s.req);
                self.free.push(i as u32);
            }
        }
        self.rexmit.clear();
        self.nout = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Nanos = 1_000;

    fn tracker(cap: usize) -> Tracker<u64> {
        Tracker::new(cap, RttEstimator::new(ms(250), ms(1), ms(2000)))
    }

    #[test]
    fn rto_starts_at_initial_then_follows_samples() {
        let mut r = RttEstimator::new(ms(250), ms(1), ms(3000));
        assert_eq!(r.rto(), ms(250));
        assert_eq!(r.srtt(), None);
        r.sample(ms(10));
        // srtt 10, rttvar 5: 2*10 + 8*5 = 60 ms.
        assert_eq!(r.rto(), ms(60));
        for _ in 0..200 {
            r.sample(ms(10));
        }
        // Steady RTT: the deviation decays, RTO approaches 2*srtt.
        let rto = r.rto();
        assert!((ms(20)..ms(21)).contains(&rto), "{rto}");
        assert_eq!(r.srtt(), Some(ms(10)));
    }

    #[test]
    fn rto_is_bounded() {
        let mut r = RttEstimator::new(ms(250), ms(5), ms(1000));
        for _ in 0..100 {
            r.sample(10 * US);
        }
        assert_eq!(r.rto(), ms(5), "clamped to min");
        r.sample(ms(60_000));
        assert_eq!(r.rto(), ms(1000), "clamped to max");
        // Backoff doubles and stays clamped, even for absurd retry counts.
        let mut r = RttEstimator::new(ms(250), ms(5), ms(1000));
        r.sample(ms(10));
        assert_eq!(r.timeout(0), ms(60));
        assert_eq!(r.timeout(1), ms(120));
        assert_eq!(r.timeout(4), ms(960));
        assert_eq!(r.timeout(5), ms(1000));
        assert_eq!(r.timeout(u32::MAX), ms(1000));
    }

    #[test]
    fn tags_are_unique_and_top_bit_clear() {
        let mut t = tracker(4);
        let mut seen = std::collections::HashSet::new();
        let mut now = 0;
        for i in 0..10_000u64 {
            now += US;
            let tag = t.issue(i, now).unwrap();
            assert_eq!(tag & (1 << 31), 0);
            assert!(seen.insert(tag), "tag {tag:#x} reused");
            assert!(matches!(t.on_response(tag, now + US), Answer::Done(d) if d.req == i));
        }
        assert_eq!(t.stats.completed, 10_000);
    }

    #[test]
    fn timeout_retransmits_with_new_tag_and_ignores_late_answer() {
        let mut t = tracker(8);
        let tag = t.issue(77, 0).unwrap();
        assert_eq!((t.outstanding(), t.on_wire()), (1, 1));
        // Not yet: the first RTO is 250 ms.
        assert_eq!(t.expire(ms(249)), 0);
        assert_eq!(t.expire(ms(250)), 1);
        assert_eq!((t.outstanding(), t.on_wire()), (1, 0));
        assert!(t.has_rexmit());
        assert_eq!(t.window.maxout(), 1, "a timeout collapses the window");

        let (tag2, req) = t.retransmit(ms(251)).unwrap();
        assert_eq!(req, 77);
        assert_ne!(tag2, tag, "a retransmission gets a new tag");
        assert_eq!(t.stats.retransmits, 1);

        // The answer to the old tag arrives late: ignored, counted.
        assert_eq!(t.on_response(tag, ms(252)), Answer::Late);
        assert_eq!(t.stats.late, 1);
        assert_eq!(t.outstanding(), 1);

        // The answer to the new tag completes it; latency counts from the first send.
        match t.on_response(tag2, ms(261)) {
            Answer::Done(d) => {
                assert_eq!(d.req, 77);
                assert_eq!(d.latency, ms(261));
                assert_eq!(d.retries, 1);
            }
            other => panic!("{other:?}"),
        }
        // RTT was sampled from the retransmission (10 ms), not the first send.
        assert_eq!(t.rtt.srtt(), Some(ms(10)));
        // A duplicate of the answer is late too.
        assert_eq!(t.on_response(tag2, ms(262)), Answer::Late);
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn repeated_timeouts_back_off() {
        let mut t = tracker(2);
        t.issue(1, 0).unwrap();
        assert_eq!(t.expire(ms(250)), 1);
        t.retransmit(ms(250)).unwrap();
        // Second timeout needs 500 ms after the retransmission.
        assert_eq!(t.expire(ms(749)), 0);
        assert_eq!(t.expire(ms(750)), 1);
        t.retransmit(ms(750)).unwrap();
        assert_eq!(t.expire(ms(1749)), 0);
        assert_eq!(t.expire(ms(1750)), 1);
        assert_eq!(t.stats.timeouts, 3);
        let (req, waited, retries) = t.oldest(ms(1800)).unwrap();
        assert_eq!((req, waited, retries), (1, ms(1800), 2));
    }

    #[test]
    fn stray_tags() {
        let mut t = tracker(4);
        let tag = t.issue(1, 0).unwrap();
        assert_eq!(t.on_response(tag | (1 << 31), 1), Answer::Stray);
        assert_eq!(t.on_response(5, 1), Answer::Stray, "slot out of range");
        assert_eq!(
            t.on_response(tag + (5 << SLOT_BITS), 1),
            Answer::Stray,
            "future seq"
        );
        assert_eq!(t.stats.stray, 3);
        assert!(matches!(t.on_response(tag, 2), Answer::Done(_)));
    }

    #[test]
    fn window_slow_start_then_avoidance_then_collapse() {
        let mut w = Window::new(16);
        assert_eq!(w.maxout(), 8);
        // At ssthresh (8): grows by one only after a full window of responses while full.
        w.on_response(8);
        assert_eq!(w.maxout(), 8);
        for _ in 0..16 {
            w.on_response(8);
        }
        assert_eq!(w.maxout(), 9);
        w.on_timeout();
        assert_eq!((w.maxout(), w.min_seen), (1, 1));
        // Slow start back to ssthresh (4): one per response.
        for _ in 0..3 {
            w.on_response(1);
        }
        assert_eq!(w.maxout(), 4);
        // Never past the cap.
        for _ in 0..10_000 {
            let n = w.maxout();
            w.on_response(n);
        }
        assert_eq!(w.maxout(), 16);
    }

    #[test]
    fn window_limits_sends() {
        let mut t = tracker(4);
        assert_eq!(t.window.maxout(), 2);
        let a = t.issue(1, 0).unwrap();
        t.issue(2, 0).unwrap();
        assert!(!t.can_send());
        assert!(t.has_free());
        t.on_response(a, 10 * US);
        assert!(t.can_send());
        assert_eq!(t.on_wire(), 1);
    }

    #[test]
    fn abandon_frees_everything() {
        let mut t = tracker(4);
        t.issue(1, 0).unwrap();
        t.issue(2, 0).unwrap();
        t.expire(ms(300));
        t.issue(3, ms(300)).unwrap();
        let mut left = t.abandon();
        left.sort_unstable();
        assert_eq!(left, vec![1, 2, 3]);
        assert_eq!(
            (t.outstanding(), t.on_wire(), t.has_rexmit()),
            (0, 0, false)
        );
        assert!(t.oldest(ms(400)).is_none());
    }
}
