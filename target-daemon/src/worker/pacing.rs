//! Pacing: when an idle worker spins or sleeps, and how many completions a loop turns into
//! replies.

/// Frames taken from the RX ring per loop (and the largest reply batch).
pub(crate) const RX_BATCH: usize = 64;
/// Idle loops before the worker sleeps in `poll`, while spinning pays (see `IdleSpin`).
pub(crate) const IDLE_SPINS: u32 = 256;
/// While spinning does not pay, one idle episode in this many still spins, to notice when it
/// would pay again.
const SPIN_PROBE_EVERY: u32 = 16;
/// Spinning episodes judged together.
const SPIN_WINDOW: u32 = 32;
/// Spinning pays when at least 1 in this many spinning episodes finds work before `poll`.
const SPIN_PAYS_ONE_IN: u32 = 4;

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
pub(crate) struct IdleSpin {
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
    pub(crate) fn begin(&mut self) -> u32 {
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
    pub(crate) fn end(&mut self, hit: bool) -> bool {
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
pub(crate) struct ReapBatch {
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
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// The worker is about to sleep in `poll`: it has slack.
    pub(crate) fn slept(&mut self) {
        self.slept = true;
    }

    /// A loop ended, `idle` if it found no work.
    pub(crate) fn record(&mut self, idle: bool) {
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

#[cfg(test)]
mod tests {
    use super::{
        IdleSpin, ReapBatch, IDLE_SPINS, REAP_SLACK_ONE_IN, REAP_WINDOW, RX_BATCH,
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
}
