//! `aoe-bench run`: the load generator.
//!
//! One thread drives one AF_XDP socket: each loop iteration takes every response the RX ring
//! holds, runs the retransmit timer scan (at most every [`SCAN`]), fills the window with
//! retransmissions first and new requests second, and hands the whole batch to the kernel with
//! one kick. After `--spin-us` of finding nothing to do it waits: with requests outstanding
//! it yields the CPU between looks (`--wait yield`, the default) or sleeps in `poll`
//! (`--wait sleep`); with none outstanding it sleeps in `poll`.
//!
//! Why yield: a generator that sleeps makes every response burst wake it. The target pays
//! for that wake-up when it shares the generator's core (the 2-queue lab), and on a VM the
//! burst first waits for the generator's halted vCPU to come back. A remote initiator
//! costs the target neither, so a generator that sleeps is the bottleneck being measured.

use std::collections::HashSet;
use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use aoe::initiator::{self, Body};
use aoe::wire::{aflags, cmd, mac_to_string, AtaFields, ATA_HLEN, SECTOR};
use aoe::Mac;
use serde::Serialize;
use xblade_ebpf::Role;

use crate::cli::{RunArgs, Rw, Wait};
use crate::discover::{self, TargetInfo};
use crate::flow::{ms, Answer, Done, Nanos, RttEstimator, Tracker};
use crate::hist::Histogram;
use crate::net::{self, Packet, Port, PortStats};
use crate::pattern::{self, Expect};
use crate::report::{fmt_bytes, fmt_ns, fmt_rate, Latency};

/// Frames taken from the RX ring per iteration.
const RX_BATCH: usize = 256;
/// Longest sleep in `poll` (the timer scan needs the loop to come around).
const MAX_SLEEP: Duration = Duration::from_millis(1);
/// Timer scan interval.
const SCAN: Nanos = 200_000;
/// After SIGINT/SIGTERM, how long outstanding requests may take before they are abandoned.
const SIGNAL_DRAIN: Nanos = ms(1000);
/// Error messages kept for the report.
const MAX_MESSAGES: usize = 20;
/// Largest LBA span `--verify` tracks (one byte per sector, allocated lazily).
const VERIFY_MAX_RANGE: u64 = 1 << 32;
/// Fill-ring target: responses in flight are at most the window (1024).
const FILL_TARGET: u32 = 1536;
/// ATA status bits that mean failure to Linux: BSY, DF, DRQ, ERR.
const STATUS_BAD: u8 = 0xa9;

/// One request: what the tracker keeps to retransmit it and check its answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Req {
    /// WRITE (else READ).
    pub write: bool,
    /// First sector.
    pub lba: u64,
    /// Sector count.
    pub sectors: u8,
    /// Verify generation written (writes with `--verify`).
    pub gen: u8,
}

/// splitmix64: small, fast, good enough for LBAs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6a09_e667_f3bc_c908)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (Lemire's multiply-shift; `n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Chooses each request's direction and LBA.
#[derive(Clone, Debug)]
pub struct Workload {
    rw: Rw,
    read_pct: u8,
    bs: u64,
    blocks: u64,
    next_block: u64,
    rng: Rng,
}

impl Workload {
    /// Requests of `bs` sectors, aligned to `bs`, inside `0..range` (`range >= bs`).
    pub fn new(rw: Rw, read_pct: u8, bs: u8, range: u64, seed: u64) -> Self {
        let bs = u64::from(bs.max(1));
        Workload {
            rw,
            read_pct,
            bs,
            blocks: (range / bs).max(1),
            next_block: 0,
            rng: Rng::new(seed),
        }
    }

    /// The next request as (write, lba), avoiding LBAs for which `busy` is true (then `None`
    /// if no free LBA was found: try again later).
    pub fn next(&mut self, busy: impl Fn(u64) -> bool) -> Option<(bool, u64)> {
        let write = match self.rw {
            Rw::Read | Rw::Randread => false,
            Rw::Write | Rw::Randwrite => true,
            Rw::Randrw => self.rng.below(100) >= u64::from(self.read_pct),
        };
        if self.rw.random() {
            for _ in 0..8 {
                let lba = self.rng.below(self.blocks) * self.bs;
                if !busy(lba) {
                    return Some((write, lba));
                }
            }
            return None;
        }
        let lba = self.next_block * self.bs;
        if busy(lba) {
            return None;
        }
        self.next_block = (self.next_block + 1) % self.blocks;
        Some((write, lba))
    }
}

/// What this run wrote, per sector, for `--verify`: the generation (1..=255) of the last
/// write issued, or 0 for "not written by this run" (or written by a failed request).
#[derive(Clone, Debug)]
pub struct VerifyMap {
    gens: Vec<u8>,
    /// Sectors this run did not write are checked against the seed with any generation
    /// (read-only runs, which check an earlier write run) instead of skipped (mixed runs).
    check_unwritten: bool,
}

impl VerifyMap {
    /// A map of `range` sectors.
    pub fn new(range: u64, check_unwritten: bool) -> Self {
        VerifyMap {
            gens: vec![0; range as usize],
            check_unwritten,
        }
    }

    /// Records a write of `n` sectors at `lba`; returns the generation to write.
    pub fn next_gen(&mut self, lba: u64, n: u8) -> u8 {
        let s = &mut self.gens[lba as usize..lba as usize + usize::from(n)];
        let top = s.iter().copied().max().unwrap_or(0);
        let gen = if top == u8::MAX { 1 } else { top + 1 };
        s.fill(gen);
        gen
    }

    /// Forgets what a failed write left at `lba..lba + n` (its content is unknown).
    pub fn forget(&mut self, lba: u64, n: u8) {
        self.gens[lba as usize..lba as usize + usize::from(n)].fill(0);
    }

    /// What a read of `lba` must find: `None` to skip it, `Some(None)` for any generation.
    pub fn expect(&self, lba: u64) -> Option<Option<u32>> {
        match self.gens[lba as usize] {
            0 if self.check_unwritten => Some(None),
            0 => None,
            g => Some(Some(u32::from(g))),
        }
    }
}

/// The run's parameters, resolved against the target.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// I/O pattern.
    pub rw: Rw,
    /// Percent reads (randrw).
    pub mix_read_pct: u8,
    /// Sectors per request.
    pub bs_sectors: u8,
    /// Bytes per request.
    pub bs_bytes: u64,
    /// Outstanding requests (window cap).
    pub qd: u32,
    /// Issue for this long.
    pub time_s: Option<f64>,
    /// Issue this many bytes.
    pub size_bytes: Option<u64>,
    /// LBAs used: `0..range_sectors`.
    pub range_sectors: u64,
    /// `--verify`.
    pub verify: bool,
    /// Pattern and LBA seed.
    pub seed: u64,
    /// Retransmission timeout bounds.
    pub min_rto_ms: f64,
    /// Retransmission timeout bounds.
    pub max_rto_ms: f64,
    /// No-progress limit.
    pub stall_s: f64,
    /// How to wait for responses after spinning.
    pub wait: Wait,
    #[serde(skip)]
    progress: bool,
}

/// Why issuing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StopReason {
    /// `--time` elapsed.
    Time,
    /// `--size` bytes issued.
    Size,
    /// SIGINT or SIGTERM.
    Signal,
    /// No progress for `--stall-secs`: the run failed.
    Stall,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Ios {
    total: u64,
    read: u64,
    write: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Bytes {
    read: u64,
    write: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
struct Errors {
    /// Every error below, added up (verify errors apart).
    total: u64,
    /// ATA status with BSY/DF/DRQ/ERR set.
    ata: u64,
    /// AoE responses with the E flag.
    aoe: u64,
    /// Read responses with less data than asked.
    short_reads: u64,
    /// Requests still unanswered when the run ended (after a signal or a stall).
    abandoned: u64,
    /// Frames that were not AoE responses, or were for another target (ignored).
    ignored_frames: u64,
    /// The first error messages.
    messages: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
struct VerifyStats {
    enabled: bool,
    /// Sectors read and checked.
    checked_sectors: u64,
    /// Sectors read but not checked (never written by this mixed run).
    skipped_sectors: u64,
    /// Sectors that did not match.
    errors: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Frames {
    tx: u64,
    rx: u64,
    rx_per_s: f64,
    tx_per_s: f64,
    /// AF_XDP descriptors (a jumbo frame is several when multi-buffer).
    tx_descs: u64,
    rx_descs: u64,
    multi_buffer: bool,
    kicks: u64,
    polls: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
struct FlowReport {
    retransmits: u64,
    timeouts: u64,
    late: u64,
    stray: u64,
    window_final: u32,
    window_min: u32,
    rto_ms: f64,
    srtt_us: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
struct LatencyReport {
    all: Latency,
    read: Latency,
    write: Latency,
}

#[derive(Clone, Debug, Serialize)]
struct XdpReport {
    /// AoE responses the steering program handed to our socket.
    redirected: u64,
    /// AoE requests (and truncated AoE frames) it dropped.
    dropped: u64,
    /// Other frames it passed to the kernel stack.
    passed: u64,
}

#[derive(Clone, Debug, Serialize)]
struct XskReport {
    rx_dropped: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty: u64,
    tx_ring_empty: u64,
    rx_invalid_descs: u64,
    tx_invalid_descs: u64,
}

/// The whole result, as printed by `--json`.
#[derive(Clone, Debug, Serialize)]
struct RunReport {
    schema: &'static str,
    ok: bool,
    stop_reason: StopReason,
    error: Option<String>,
    interface: String,
    local_mac: String,
    queue: u32,
    xdp_mode: String,
    zero_copy: bool,
    target: TargetInfo,
    config: Plan,
    duration_s: f64,
    ios: Ios,
    bytes: Bytes,
    iops: f64,
    read_iops: f64,
    write_iops: f64,
    mb_s: f64,
    read_mb_s: f64,
    write_mb_s: f64,
    latency_us: LatencyReport,
    /// Every request's latency as [upper bound in ns, count] per non-empty histogram bucket,
    /// so that runs can be merged (several targets, several processes).
    latency_buckets_ns: Vec<(u64, u64)>,
    frames: Frames,
    flow: FlowReport,
    errors: Errors,
    verify: VerifyStats,
    xsk: Option<XskReport>,
    xdp: Option<XdpReport>,
}

struct Engine {
    src: Mac,
    dst: Mac,
    shelf: u16,
    slot: u8,
    plan: Plan,
    tracker: Tracker<Req>,
    work: Workload,
    verify: Option<VerifyMap>,
    /// LBAs of requests outstanding (kept with `--verify`, so a read never races a write).
    busy: HashSet<u64>,
    hist_read: Histogram,
    hist_write: Histogram,
    ios: Ios,
    bytes: Bytes,
    errors: Errors,
    vstats: VerifyStats,
    issued_bytes: u64,
    last_completion: Nanos,
    /// Idle time spent spinning on the rings before sleeping in `poll`.
    spin: Nanos,
    /// When to stop issuing (`--time`), from the start of the loop.
    time_limit: Option<Nanos>,
    /// Why issuing stopped, the fatal error, the signal's drain deadline, and when this
    /// engine finished (the run's end for its rates).
    reason: Option<StopReason>,
    fatal: Option<String>,
    drain_deadline: Option<Nanos>,
    end: Option<Nanos>,
    /// This engine's frames and descriptors (the port's counters add up every engine).
    tx_frames: u64,
    rx_frames: u64,
    tx_descs: u64,
    rx_descs: u64,
    /// `ios.total` at the last progress line.
    progress_ios: u64,
    /// Index of the port (interface) this engine sends and receives through.
    port: usize,
}

impl Engine {
    fn note(&mut self, msg: String) {
        if self.errors.messages.len() < MAX_MESSAGES {
            self.errors.messages.push(msg);
        }
    }

    /// Builds and queues the frame for `req` under `tag`; the caller checked
    /// [`Port::has_frames`] for [`descs`](Self::descs). A write larger than a chunk is sent as
    /// several descriptors, its pattern (with `--verify`) written straight into each.
    fn send(&self, port: &mut Port, tag: u32, req: &Req) {
        let mut f = port.alloc().expect("caller checked has_frames");
        let buf = port.chunk(&mut f);
        let addr = initiator::Addr {
            src: self.src,
            dst: self.dst,
            shelf: self.shelf,
            slot: self.slot,
            tag,
        };
        addr.header(cmd::ATA).write(buf);
        let (opcode, wflag) = if req.write {
            (aoe::ata::WRITE_EXT, aflags::WRITE)
        } else {
            (aoe::ata::READ_EXT, 0)
        };
        AtaFields {
            aflags: aflags::EXT | wflag,
            feature: 0,
            sector_count: req.sectors,
            cmd_status: opcode,
            lba: req.lba,
        }
        .write(buf);
        // (frame length, header length): a read is all header (padded to 60 bytes).
        let (len, hdr) = if req.write {
            (ATA_HLEN + usize::from(req.sectors) * SECTOR, ATA_HLEN)
        } else {
            let n = aoe::wire::pad(buf, ATA_HLEN);
            (n, n)
        };
        let (seed, verify) = (self.plan.seed, self.verify.is_some());
        let queued = port.push_packet(f, 0, len, hdr, |pos, data| {
            if verify {
                let lba = req.lba + ((pos - ATA_HLEN) / SECTOR) as u64;
                pattern::fill_range(data, seed, lba, u32::from(req.gen));
            }
        });
        debug_assert!(queued, "caller checked has_frames");
    }

    /// Descriptors (UMEM frames) a request takes to send.
    fn descs(&self, write: bool) -> usize {
        if write {
            let len = ATA_HLEN + usize::from(self.plan.bs_sectors) * SECTOR;
            net::layout(0, len, ATA_HLEN).1
        } else {
            1
        }
    }

    /// A new request, if the workload has one.
    fn next_request(&mut self) -> Option<Req> {
        let busy = &self.busy;
        let (write, lba) = self.work.next(|l| busy.contains(&l))?;
        let sectors = self.plan.bs_sectors;
        let mut gen = 0;
        if let Some(v) = self.verify.as_mut() {
            if write {
                gen = v.next_gen(lba, sectors);
            }
            self.busy.insert(lba);
        }
        Some(Req {
            write,
            lba,
            sectors,
            gen,
        })
    }

    /// One received frame (of one or several descriptors).
    fn on_frame(&mut self, pkt: &Packet<'_>, now: Nanos) {
        // The headers are in the first descriptor, unless a NIC split the frame very early.
        let mut hdr = [0u8; ATA_HLEN];
        let head = match pkt.head() {
            h if h.len() >= ATA_HLEN => h,
            _ => pkt.prefix(&mut hdr),
        };
        let Ok(r) = initiator::parse_response(head) else {
            self.errors.ignored_frames += 1;
            return;
        };
        let ata = match r.body {
            Body::Ata { .. } => true,
            Body::Other(c) => r.error.is_some() && c == cmd::ATA,
            _ => false,
        };
        if !ata || (r.shelf, r.slot) != (self.shelf, self.slot) {
            self.errors.ignored_frames += 1;
            return;
        }
        let Answer::Done(done) = self.tracker.on_response(r.tag, now) else {
            return;
        };
        self.last_completion = now;
        self.complete(done, &r, pkt);
    }

    fn complete(&mut self, d: Done<Req>, r: &initiator::Response<'_>, pkt: &Packet<'_>) {
        let req = d.req;
        let what = if req.write { "write" } else { "read" };
        if self.verify.is_some() {
            self.busy.remove(&req.lba);
        }
        let failed = |e: &mut Self, msg: String| {
            if req.write {
                if let Some(v) = e.verify.as_mut() {
                    v.forget(req.lba, req.sectors);
                }
            }
            e.errors.total += 1;
            e.note(msg);
        };
        if let Some(code) = r.error {
            self.errors.aoe += 1;
            let msg = format!(
                "{what} LBA {}+{}: AoE error {code} ({})",
                req.lba,
                req.sectors,
                aoe_error_name(code)
            );
            return failed(self, msg);
        }
        let Body::Ata { status, err, .. } = r.body else {
            return;
        };
        if status & STATUS_BAD != 0 {
            self.errors.ata += 1;
            let msg = format!(
                "{what} LBA {}+{}: ATA status {status:#04x} error {err:#04x}",
                req.lba, req.sectors
            );
            return failed(self, msg);
        }
        let n = usize::from(req.sectors) * SECTOR;
        if req.write {
            self.ios.write += 1;
            self.bytes.write += n as u64;
            self.hist_write.record(d.latency);
        } else {
            let got = pkt.len().saturating_sub(ATA_HLEN);
            if got < n {
                self.errors.short_reads += 1;
                let msg = format!(
                    "read LBA {}+{}: {got} bytes of data, {n} expected",
                    req.lba, req.sectors
                );
                return failed(self, msg);
            }
            self.ios.read += 1;
            self.bytes.read += n as u64;
            self.hist_read.record(d.latency);
            if self.verify.is_some() {
                self.check(&req, pkt);
            }
        }
        self.ios.total += 1;
    }

    /// Checks the `req.sectors` sectors of a read response against the verify map.
    fn check(&mut self, req: &Req, pkt: &Packet<'_>) {
        let Some(v) = self.verify.as_ref() else {
            return;
        };
        let (seed, vs, errors) = (self.plan.seed, &mut self.vstats, &mut self.errors);
        let mut lba = req.lba;
        pkt.for_each_sector(ATA_HLEN, usize::from(req.sectors), |sector| {
            let at = lba;
            lba += 1;
            let Some(gen) = v.expect(at) else {
                vs.skipped_sectors += 1;
                return;
            };
            vs.checked_sectors += 1;
            let want = Expect { seed, lba: at, gen };
            if let Err(m) = pattern::check(sector, &want) {
                vs.errors += 1;
                if errors.messages.len() < MAX_MESSAGES {
                    let msg = format!("verify error at LBA {at}: expected {want}, found {m}");
                    errors.messages.push(msg);
                }
            }
        });
    }

    /// One pass of this engine's part of the loop: the timer scan (when `scan`), the stop
    /// conditions, then retransmissions and new requests onto the port. Returns whether it
    /// queued anything; sets `end` once the engine has stopped.
    fn step(&mut self, port: &mut Port, now: Nanos, scan: bool, stop: &AtomicBool) -> bool {
        let stall = (self.plan.stall_s * 1e9) as Nanos;
        if scan {
            self.tracker.expire(now);
            if let Some((req, waited, retries)) = self.tracker.oldest(now) {
                let quiet = now.saturating_sub(self.last_completion);
                if waited > stall || quiet > stall {
                    self.fatal = Some(format!(
                        "no progress on e{}.{}: {} LBA {}+{} unanswered after {} and {retries} \
                         retransmissions; last completion {} ago (--stall-secs {})",
                        self.shelf,
                        self.slot,
                        if req.write { "write" } else { "read" },
                        req.lba,
                        req.sectors,
                        fmt_ns(waited),
                        fmt_ns(quiet),
                        self.plan.stall_s
                    ));
                    self.reason = Some(StopReason::Stall);
                    self.end = Some(now);
                    return false;
                }
            }
        }
        if self.reason.is_none() {
            if stop.load(Ordering::Relaxed) {
                self.reason = Some(StopReason::Signal);
                self.drain_deadline = Some(now + SIGNAL_DRAIN);
            } else if self.time_limit.is_some_and(|t| now >= t) {
                self.reason = Some(StopReason::Time);
            } else if self.plan.size_bytes.is_some_and(|s| self.issued_bytes >= s) {
                self.reason = Some(StopReason::Size);
            }
        }
        let issuing = self.reason.is_none();
        // UMEM frames one request may need: checked before the direction is drawn.
        let need = self.descs(self.plan.rw.writes());
        let mut busy = false;
        while self.tracker.can_send() {
            if !port.has_frames(need) {
                break;
            }
            let req = if self.tracker.has_rexmit() {
                let (tag, req) = self.tracker.retransmit(now).expect("has_rexmit");
                self.send(port, tag, &req);
                req
            } else if issuing
                && self.tracker.has_free()
                && self.plan.size_bytes.is_none_or(|s| self.issued_bytes < s)
            {
                let Some(req) = self.next_request() else {
                    break;
                };
                let tag = self.tracker.issue(req, now).expect("has_free");
                self.issued_bytes += u64::from(req.sectors) * SECTOR as u64;
                self.send(port, tag, &req);
                req
            } else {
                break;
            };
            self.tx_frames += 1;
            self.tx_descs += self.descs(req.write) as u64;
            busy = true;
        }
        if (!issuing && self.tracker.outstanding() == 0)
            || self.drain_deadline.is_some_and(|d| now >= d)
        {
            self.end = Some(now);
        }
        busy
    }
}

/// The engine of port `port` a received frame is for, by its AoE address (bytes 16..19:
/// major, minor); frames for none go to the port's first engine, which counts them as ignored.
fn route(engines: &[Engine], port: usize, head: &[u8]) -> usize {
    if engines.len() == 1 {
        return 0;
    }
    let first = engines.iter().position(|e| e.port == port).unwrap_or(0);
    if head.len() < 19 {
        return first;
    }
    let (shelf, slot) = (u16::from_be_bytes([head[16], head[17]]), head[18]);
    engines
        .iter()
        .position(|e| e.port == port && (e.shelf, e.slot) == (shelf, slot))
        .unwrap_or(first)
}

/// The progress line: every engine added up.
fn progress(engines: &[Engine], elapsed: Nanos, last: &mut (Nanos, u64)) {
    let dt = elapsed.saturating_sub(last.0) as f64 / 1e9;
    let total: u64 = engines.iter().map(|e| e.ios.total).sum();
    let bytes: f64 = engines
        .iter()
        .map(|e| (e.ios.total - e.progress_ios) as f64 * e.plan.bs_bytes as f64)
        .sum();
    let dios = total - last.1;
    let window: u32 = engines.iter().map(|e| e.tracker.window.maxout()).sum();
    let rexmit: u64 = engines.iter().map(|e| e.tracker.stats.retransmits).sum();
    let errors: u64 = engines
        .iter()
        .map(|e| e.errors.total + e.vstats.errors)
        .sum();
    let _ = write!(
        std::io::stderr(),
        "\r\x1b[K{:>4.0}s  {:>8} IOPS  {:>8.1} MB/s  window {:>4}  rexmit {rexmit}  errors {errors}",
        elapsed as f64 / 1e9,
        fmt_rate(dios as f64 / dt),
        bytes / dt / 1e6,
        window,
    );
    *last = (elapsed, total);
}

/// The main loop: every engine over its port, until each has stopped (time, size, signal or
/// its own stall). Each engine's `end` is when it stopped.
fn drive(engines: &mut [Engine], ports: &mut [Port], stop: &AtomicBool) -> Result<()> {
    let start = Instant::now();
    let clock = || start.elapsed().as_nanos() as Nanos;
    let show = engines[0].plan.progress;
    let wait = engines[0].plan.wait;
    let spin = engines[0].spin;
    let mut pkt = Port::packet_vec();
    let mut next_scan = 0;
    let mut idle_since: Option<Nanos> = None;
    let mut next_progress = ms(2000);
    let mut last_progress = (0, 0);
    // Which engine queues first: rotated, so none gets the UMEM frames first every time.
    let mut first = 0;
    loop {
        let now = clock();
        let mut busy = false;

        for (pi, port) in ports.iter_mut().enumerate() {
            if port.recv(RX_BATCH) == 0 {
                continue;
            }
            busy = true;
            while port.next_packet(&mut pkt) {
                let p = port.packet(&pkt);
                let i = route(engines, pi, p.head());
                let e = &mut engines[i];
                e.rx_frames += 1;
                e.rx_descs += pkt.len() as u64;
                e.on_frame(&p, now);
                port.recycle_all(&mut pkt);
            }
            port.refill();
        }

        let scan = now >= next_scan;
        if scan {
            next_scan = now + SCAN;
        }
        let n = engines.len();
        for k in 0..n {
            let e = &mut engines[(first + k) % n];
            if e.end.is_none() {
                busy |= e.step(&mut ports[e.port], now, scan, stop);
            }
        }
        first = (first + 1) % n;
        for port in ports.iter_mut() {
            port.flush()?;
        }

        if engines.iter().all(|e| e.end.is_some()) {
            break;
        }
        if show && now >= next_progress {
            next_progress = now + ms(1000);
            progress(engines, now, &mut last_progress);
            for e in engines.iter_mut() {
                e.progress_ios = e.ios.total;
            }
        }
        if busy {
            idle_since = None;
        } else {
            let since = *idle_since.get_or_insert(now);
            if now - since > spin {
                let outstanding = engines.iter().any(|e| e.tracker.outstanding() > 0);
                if wait == Wait::Yield && outstanding {
                    std::thread::yield_now();
                } else if ports.len() == 1 {
                    ports[0].wait(MAX_SLEEP)?;
                } else {
                    // Several sockets: a short sleep, then every ring is looked at again.
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
    }
    if show && next_progress > ms(2000) {
        let _ = write!(std::io::stderr(), "\r\x1b[K");
    }
    let end = clock();
    for e in engines.iter_mut() {
        let left = e.tracker.abandon();
        e.errors.abandoned += left.len() as u64;
        if !left.is_empty() && e.reason != Some(StopReason::Signal) {
            e.errors.total += left.len() as u64;
        }
        e.end.get_or_insert(end);
    }
    Ok(())
}

fn aoe_error_name(code: u8) -> &'static str {
    match code {
        1 => "unrecognized command",
        2 => "bad argument",
        3 => "device unavailable",
        4 => "config string present",
        5 => "unsupported version",
        6 => "target reserved",
        _ => "unknown",
    }
}

/// Resolves the command line against what the target advertised.
fn plan(args: &RunArgs, target: &TargetInfo, port: &Port) -> Result<Plan> {
    let dev = &target.device;
    // The MTU's limit (multi-buffer), or what fits one chunk (single-buffer).
    let local_max = (port.max_frame().saturating_sub(ATA_HLEN) / SECTOR).min(255) as u8;
    if local_max == 0 {
        bail!(
            "the MTU of {} ({}) cannot carry one sector",
            port.ifname(),
            port.mtu()
        );
    }
    let bs = match args.bs {
        Some(bs) if bs > target.scnt => bail!(
            "--bs {bs} is more than {dev} accepts per request (it advertises {} sectors)",
            target.scnt
        ),
        Some(bs) if bs > local_max => bail!(
            "--bs {bs} does not fit a frame here: at most {local_max} sectors (MTU {} of {})",
            port.mtu(),
            port.ifname()
        ),
        Some(bs) => bs,
        None => {
            if target.scnt > local_max {
                eprintln!(
                    "aoe-bench: note: {dev} accepts {} sectors per request; using {local_max}, \
                     the most a frame carries here",
                    target.scnt
                );
            }
            target.scnt.min(local_max)
        }
    };
    let mut qd = args.qd;
    let bufcnt = u32::from(target.bufcnt).max(1);
    if qd > bufcnt {
        eprintln!(
            "aoe-bench: warning: --qd {qd} is more than {dev}'s buffer count ({}); using {bufcnt}",
            target.bufcnt
        );
        qd = bufcnt;
    }
    let Some(capacity) = target.sectors else {
        bail!("{dev} did not answer IDENTIFY DEVICE: its size is unknown");
    };
    let mut range = capacity;
    if let Some(r) = args.range_sectors {
        if r > capacity {
            eprintln!(
                "aoe-bench: warning: --range-sectors {r} is beyond the end of {dev} \
                 ({capacity} sectors); using {capacity}"
            );
        } else {
            range = r;
        }
    }
    if range < u64::from(bs) {
        bail!("the LBA range ({range} sectors) is smaller than one request ({bs} sectors)");
    }
    if args.verify && range > VERIFY_MAX_RANGE {
        bail!(
            "--verify tracks one byte per sector; {dev} has {range} sectors: limit the span \
             with --range-sectors (at most {VERIFY_MAX_RANGE})"
        );
    }
    if args.min_rto_ms > args.max_rto_ms {
        bail!("--min-rto-ms is larger than --max-rto-ms");
    }
    let time_s = match (args.time, args.size) {
        (None, None) => Some(10.0),
        (t, _) => t,
    };
    Ok(Plan {
        rw: args.rw,
        mix_read_pct: match args.rw {
            Rw::Randrw => args.mix,
            Rw::Read | Rw::Randread => 100,
            Rw::Write | Rw::Randwrite => 0,
        },
        bs_sectors: bs,
        bs_bytes: u64::from(bs) * SECTOR as u64,
        qd,
        time_s,
        size_bytes: args.size,
        range_sectors: range,
        verify: args.verify,
        seed: args.seed,
        min_rto_ms: args.min_rto_ms,
        max_rto_ms: args.max_rto_ms,
        stall_s: args.stall_secs,
        wait: args.wait,
        progress: !args.no_progress && std::io::stderr().is_terminal(),
    })
}

/// `aoe-bench run`. Returns whether the run was clean (no errors of any kind).
pub fn run(args: &RunArgs, stop: &AtomicBool) -> Result<bool> {
    let names: Vec<&str> = args.port.interface.split(',').collect();
    if names.iter().any(|n| n.is_empty()) || !args.target.len().is_multiple_of(names.len()) {
        bail!(
            "-i {}: with several interfaces the targets are dealt to them in order, as many \
             each: {} target(s) do not divide among {} interface(s)",
            args.port.interface,
            args.target.len(),
            names.len()
        );
    }
    let per_port = args.target.len() / names.len();
    let mut ports = Vec::new();
    for name in &names {
        let pa = crate::cli::PortArgs {
            interface: (*name).to_owned(),
            ..args.port.clone()
        };
        ports.push(Port::open(&pa, Role::Initiator, FILL_TARGET)?);
    }
    let timeout = Duration::from_millis(args.discover_timeout_ms);
    let mut engines = Vec::new();
    for (i, &(shelf, slot)) in args.target.iter().enumerate() {
        if args.target[..i].contains(&(shelf, slot)) {
            bail!("-t e{shelf}.{slot} is given twice: each target may be driven once");
        }
        let pi = i / per_port;
        let port = &mut ports[pi];
        let found = discover::probe(port, shelf, slot, timeout, true, stop)?;
        let Some(target) = found.into_iter().next() else {
            let why = port.queue_note(true).map_or_else(String::new, |n| {
                format!(" Or its answers land on another queue: {n}")
            });
            bail!(
                "no answer from e{shelf}.{slot} on {} within {} ms (is the target up, on this \
                 link, and not masked?).{why}",
                port.ifname(),
                args.discover_timeout_ms
            );
        };
        let mut plan = plan(args, &target, port)?;
        // Each target its own LBA sequence (and pattern): --seed, --seed + 1, ...
        plan.seed = args.seed.wrapping_add(i as u64);
        if !args.json {
            eprintln!(
                "aoe-bench: {} on {} ({}) via {} queue {}: bs {} B, qd {}, {}",
                plan.rw.name(),
                target.device,
                target.mac,
                port.ifname(),
                args.port.queue,
                plan.bs_bytes,
                plan.qd,
                match (plan.time_s, plan.size_bytes) {
                    (Some(t), Some(s)) => format!("{t} s or {}", fmt_bytes(s)),
                    (Some(t), None) => format!("{t} s"),
                    (None, Some(s)) => fmt_bytes(s),
                    (None, None) => unreachable!("plan sets a default time"),
                }
            );
        }
        let mut engine = Engine::new(&plan, &target, port, args.port.spin_us);
        engine.port = pi;
        engines.push((engine, target));
    }
    let before: Vec<PortStats> = ports.iter().map(|p| p.stats).collect();
    let (mut es, targets): (Vec<Engine>, Vec<TargetInfo>) = engines.into_iter().unzip();
    drive(&mut es, &mut ports, stop)?;
    // Frames of more fragments than any MTU makes: malformed, ignored (by the port's first
    // engine).
    for (pi, port) in ports.iter().enumerate() {
        if let Some(e) = es.iter_mut().find(|e| e.port == pi) {
            e.errors.ignored_frames += port.stats.rx_bad - before[pi].rx_bad;
        }
    }
    let xsk: Vec<Option<XskReport>> = ports
        .iter()
        .map(|port| {
            port.xsk_statistics().map(|s| XskReport {
                rx_dropped: s.rx_dropped,
                rx_ring_full: s.rx_ring_full,
                rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
                tx_ring_empty: s.tx_ring_empty_descs,
                rx_invalid_descs: s.rx_invalid_descs,
                tx_invalid_descs: s.tx_invalid_descs,
            })
        })
        .collect();
    let xdp: Vec<Option<XdpReport>> = ports
        .iter()
        .map(|port| {
            port.steering_counters().map(|c| XdpReport {
                redirected: c.redirected,
                dropped: c.dropped,
                passed: c.passed,
            })
        })
        .collect();
    let single = es.len() == 1;
    let mut reports = Vec::new();
    for (e, target) in es.iter().zip(targets) {
        let (port, before_stats) = (&ports[e.port], before[e.port]);
        let ps = port.stats;
        let secs = (e.end.unwrap_or(0) as f64 / 1e9).max(1e-9);
        let mut frames = Frames {
            tx: e.tx_frames,
            rx: e.rx_frames,
            rx_per_s: e.rx_frames as f64 / secs,
            tx_per_s: e.tx_frames as f64 / secs,
            tx_descs: e.tx_descs,
            rx_descs: e.rx_descs,
            multi_buffer: port.multi_buffer(),
            kicks: ps.kicks - before_stats.kicks,
            polls: ps.polls - before_stats.polls,
        };
        if single {
            // Everything the port saw (ignored frames too), as before several targets.
            frames.tx = ps.tx_frames - before_stats.tx_frames;
            frames.rx = ps.rx_frames - before_stats.rx_frames;
            frames.tx_per_s = frames.tx as f64 / secs;
            frames.rx_per_s = frames.rx as f64 / secs;
            frames.tx_descs = ps.tx_descs - before_stats.tx_descs;
            frames.rx_descs = ps.rx_descs - before_stats.rx_descs;
        }
        reports.push(e.report(
            target,
            secs,
            frames,
            port,
            args.port.queue,
            xsk[e.port].clone(),
            xdp[e.port].clone(),
        ));
    }
    let ok = reports.iter().all(|r| r.ok);
    if single {
        let report = &reports[0];
        if args.json {
            println!("{}", serde_json::to_string_pretty(report)?);
        } else {
            print_summary(report);
        }
    } else {
        let mut all = Histogram::new();
        for e in &es {
            all.merge(&e.hist_read);
            all.merge(&e.hist_write);
        }
        let secs = reports.iter().map(|r| r.duration_s).fold(0.0, f64::max);
        let sum = |f: fn(&RunReport) -> f64| reports.iter().map(f).sum::<f64>();
        let multi = MultiReport {
            schema: "aoe-bench/runs/1",
            ok,
            interface: names.join(","),
            local_mac: ports
                .iter()
                .map(|p| mac_to_string(&p.mac()))
                .collect::<Vec<_>>()
                .join(","),
            targets: reports.len(),
            duration_s: secs,
            iops: sum(|r| r.iops),
            read_iops: sum(|r| r.read_iops),
            write_iops: sum(|r| r.write_iops),
            mb_s: sum(|r| r.mb_s),
            latency_us: Latency::of(&all),
            frames_tx: ports
                .iter()
                .zip(&before)
                .map(|(p, b)| p.stats.tx_frames - b.tx_frames)
                .sum(),
            frames_rx: ports
                .iter()
                .zip(&before)
                .map(|(p, b)| p.stats.rx_frames - b.rx_frames)
                .sum(),
            errors: reports.iter().map(|r| r.errors.total).sum(),
            verify_errors: reports.iter().map(|r| r.verify.errors).sum(),
            runs: reports,
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&multi)?);
        } else {
            for r in &multi.runs {
                print_summary(r);
            }
            println!(
                "all {} targets: {} IOPS, {:.1} MB/s, latency {}; {} errors, {} verify errors",
                multi.targets,
                fmt_rate(multi.iops),
                multi.mb_s,
                multi.latency_us.line(),
                multi.errors,
                multi.verify_errors
            );
        }
        for r in &multi.runs {
            if let Some(e) = &r.error {
                eprintln!("aoe-bench: error: {e}");
            }
        }
        return Ok(ok);
    }
    if let Some(e) = &reports[0].error {
        eprintln!("aoe-bench: error: {e}");
    }
    Ok(ok)
}

/// `run --json` with several targets (schema `aoe-bench/runs/1`): the sums, the latency of
/// every request, and each target's own `aoe-bench/run/1` object.
#[derive(Clone, Debug, Serialize)]
struct MultiReport {
    schema: &'static str,
    ok: bool,
    interface: String,
    local_mac: String,
    targets: usize,
    duration_s: f64,
    iops: f64,
    read_iops: f64,
    write_iops: f64,
    mb_s: f64,
    latency_us: Latency,
    frames_tx: u64,
    frames_rx: u64,
    errors: u64,
    verify_errors: u64,
    runs: Vec<RunReport>,
}

impl Engine {
    fn new(plan: &Plan, target: &TargetInfo, port: &Port, spin_us: u64) -> Engine {
        let rtt = RttEstimator::new(
            ms(250),
            (plan.min_rto_ms * 1e6) as Nanos,
            (plan.max_rto_ms * 1e6) as Nanos,
        );
        Engine {
            src: port.mac(),
            dst: target.mac_raw,
            shelf: target.shelf,
            slot: target.slot,
            tracker: Tracker::new(plan.qd as usize, rtt),
            work: Workload::new(
                plan.rw,
                plan.mix_read_pct,
                plan.bs_sectors,
                plan.range_sectors,
                plan.seed,
            ),
            verify: plan
                .verify
                .then(|| VerifyMap::new(plan.range_sectors, !plan.rw.writes())),
            busy: HashSet::new(),
            hist_read: Histogram::new(),
            hist_write: Histogram::new(),
            ios: Ios::default(),
            bytes: Bytes::default(),
            errors: Errors::default(),
            vstats: VerifyStats {
                enabled: plan.verify,
                ..VerifyStats::default()
            },
            issued_bytes: 0,
            last_completion: 0,
            spin: spin_us * 1_000,
            time_limit: plan.time_s.map(|s| (s * 1e9) as Nanos),
            reason: None,
            fatal: None,
            drain_deadline: None,
            end: None,
            tx_frames: 0,
            rx_frames: 0,
            tx_descs: 0,
            rx_descs: 0,
            progress_ios: 0,
            port: 0,
            plan: plan.clone(),
        }
    }

    /// This engine's report, once it has stopped.
    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        target: TargetInfo,
        secs: f64,
        frames: Frames,
        port: &Port,
        queue: u32,
        xsk: Option<XskReport>,
        xdp: Option<XdpReport>,
    ) -> RunReport {
        let mut all = self.hist_read.clone();
        all.merge(&self.hist_write);
        let t = &self.tracker;
        let flow = FlowReport {
            retransmits: t.stats.retransmits,
            timeouts: t.stats.timeouts,
            late: t.stats.late,
            stray: t.stats.stray,
            window_final: t.window.maxout(),
            window_min: t.window.min_seen,
            rto_ms: t.rtt.rto() as f64 / 1e6,
            srtt_us: t.rtt.srtt().map(|s| s as f64 / 1e3),
        };
        let (ios, bytes) = (self.ios, self.bytes);
        let ok = self.fatal.is_none() && self.errors.total == 0 && self.vstats.errors == 0;
        RunReport {
            schema: "aoe-bench/run/1",
            ok,
            stop_reason: self.reason.unwrap_or(StopReason::Time),
            error: self.fatal.clone(),
            interface: port.ifname().to_owned(),
            local_mac: mac_to_string(&port.mac()),
            queue,
            xdp_mode: port.xdp_mode().to_string(),
            zero_copy: port.zero_copy(),
            target,
            config: self.plan.clone(),
            duration_s: secs,
            ios,
            bytes,
            iops: ios.total as f64 / secs,
            read_iops: ios.read as f64 / secs,
            write_iops: ios.write as f64 / secs,
            mb_s: (bytes.read + bytes.write) as f64 / secs / 1e6,
            read_mb_s: bytes.read as f64 / secs / 1e6,
            write_mb_s: bytes.write as f64 / secs / 1e6,
            latency_us: LatencyReport {
                all: Latency::of(&all),
                read: Latency::of(&self.hist_read),
                write: Latency::of(&self.hist_write),
            },
            latency_buckets_ns: all.buckets(),
            frames,
            flow,
            errors: self.errors.clone(),
            verify: self.vstats,
            xsk,
            xdp,
        }
    }
}

fn print_summary(r: &RunReport) {
    let c = &r.config;
    let limit = match (c.time_s, c.size_bytes) {
        (Some(t), Some(s)) => format!("{t} s or {}", fmt_bytes(s)),
        (Some(t), None) => format!("{t} s"),
        (None, Some(s)) => fmt_bytes(s),
        (None, None) => String::new(),
    };
    println!(
        "{} on {} ({}) via {} queue {} (XDP {} mode, AF_XDP {})",
        c.rw.name(),
        r.target.device,
        r.target.mac,
        r.interface,
        r.queue,
        r.xdp_mode,
        if r.zero_copy { "zero-copy" } else { "copy" }
    );
    let mix = if c.rw == Rw::Randrw {
        format!(", {}% reads", c.mix_read_pct)
    } else {
        String::new()
    };
    println!(
        "  bs {} sectors ({} B), qd {}{mix}, LBAs 0..{}, limit {limit}, ran {:.2} s, stopped: {:?}",
        c.bs_sectors, c.bs_bytes, c.qd, c.range_sectors, r.duration_s, r.stop_reason
    );
    println!(
        "  ios      {} (read {}, write {})  {} IOPS (read {}, write {})",
        r.ios.total,
        r.ios.read,
        r.ios.write,
        fmt_rate(r.iops),
        fmt_rate(r.read_iops),
        fmt_rate(r.write_iops)
    );
    println!(
        "  bytes    {} read, {} written  {:.1} MB/s (read {:.1}, write {:.1})",
        fmt_bytes(r.bytes.read),
        fmt_bytes(r.bytes.write),
        r.mb_s,
        r.read_mb_s,
        r.write_mb_s
    );
    let descs = if r.frames.multi_buffer {
        format!(
            " in {} / {} descriptors (multi-buffer)",
            r.frames.tx_descs, r.frames.rx_descs
        )
    } else {
        String::new()
    };
    println!(
        "  frames   tx {}, rx {}{descs}  ({} / {} frames/s), {} kicks, {} polls",
        r.frames.tx,
        r.frames.rx,
        fmt_rate(r.frames.tx_per_s),
        fmt_rate(r.frames.rx_per_s),
        r.frames.kicks,
        r.frames.polls
    );
    println!("  latency  {}", r.latency_us.all.line());
    if r.ios.read > 0 && r.ios.write > 0 {
        println!("    read   {}", r.latency_us.read.line());
        println!("    write  {}", r.latency_us.write.line());
    }
    let f = &r.flow;
    println!(
        "  flow     retransmits {}, timeouts {}, late {}, stray {}; window {} (min {}), rto {}, srtt {}",
        f.retransmits,
        f.timeouts,
        f.late,
        f.stray,
        f.window_final,
        f.window_min,
        fmt_ns((f.rto_ms * 1e6) as u64),
        f.srtt_us
            .map(|s| fmt_ns((s * 1e3) as u64))
            .unwrap_or_else(|| "-".into())
    );
    let e = &r.errors;
    println!(
        "  errors   {} (ata {}, aoe {}, short reads {}, abandoned {}); {} frames ignored",
        e.total, e.ata, e.aoe, e.short_reads, e.abandoned, e.ignored_frames
    );
    let v = &r.verify;
    if v.enabled {
        println!(
            "  verify   seed {:#x}: {} sectors checked, {} skipped (not written by this run), {} errors",
            c.seed, v.checked_sectors, v.skipped_sectors, v.errors
        );
    } else {
        println!("  verify   off");
    }
    for m in &e.messages {
        println!("  ! {m}");
    }
    if let Some(x) = &r.xsk {
        if x.rx_dropped + x.rx_ring_full + x.rx_invalid_descs + x.tx_invalid_descs > 0 {
            println!(
                "  xsk      rx_dropped {}, rx_ring_full {}, invalid rx/tx descs {}/{}",
                x.rx_dropped, x.rx_ring_full, x.rx_invalid_descs, x.tx_invalid_descs
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_below_is_in_range_and_spread() {
        let mut r = Rng::new(3);
        let mut hits = [0u32; 10];
        for _ in 0..100_000 {
            let v = r.below(10);
            hits[v as usize] += 1;
        }
        for h in hits {
            assert!((9_000..11_000).contains(&h), "{hits:?}");
        }
    }

    #[test]
    fn sequential_wraps_and_is_aligned() {
        let mut w = Workload::new(Rw::Read, 100, 4, 10, 1);
        let lbas: Vec<u64> = (0..5).map(|_| w.next(|_| false).unwrap().1).collect();
        // Two whole 4-sector blocks fit in 10 sectors.
        assert_eq!(lbas, vec![0, 4, 0, 4, 0]);
        let mut w = Workload::new(Rw::Write, 0, 2, 100, 1);
        assert_eq!(w.next(|_| false), Some((true, 0)));
        assert_eq!(w.next(|l| l == 2), None, "waits for a busy LBA");
        assert_eq!(w.next(|_| false), Some((true, 2)));
    }

    #[test]
    fn random_is_aligned_in_range_and_mixed() {
        let mut w = Workload::new(Rw::Randrw, 70, 8, 1000, 9);
        let mut reads = 0;
        for _ in 0..10_000 {
            let (write, lba) = w.next(|_| false).unwrap();
            assert_eq!(lba % 8, 0);
            assert!(lba + 8 <= 1000, "{lba}");
            reads += u32::from(!write);
        }
        assert!((6_700..7_300).contains(&reads), "{reads} reads of 10000");
        let mut w = Workload::new(Rw::Randread, 100, 1, 5, 9);
        assert_eq!(w.next(|_| true), None);
        assert!(w
            .next(|l| l != 3)
            .is_some_and(|(write, lba)| !write && lba == 3));
    }

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Workload::new(Rw::Randrw, 50, 2, 1 << 30, 42);
        let mut b = Workload::new(Rw::Randrw, 50, 2, 1 << 30, 42);
        for _ in 0..100 {
            assert_eq!(a.next(|_| false), b.next(|_| false));
        }
    }

    #[test]
    fn verify_map_generations() {
        let mut m = VerifyMap::new(16, false);
        assert_eq!(m.expect(3), None, "mixed runs skip unwritten sectors");
        assert_eq!(m.next_gen(2, 2), 1);
        assert_eq!(m.next_gen(2, 2), 2);
        assert_eq!(
            (m.expect(2), m.expect(3), m.expect(4)),
            (Some(Some(2)), Some(Some(2)), None)
        );
        m.forget(2, 2);
        assert_eq!(m.expect(2), None);
        for _ in 0..255 {
            m.next_gen(8, 1);
        }
        assert_eq!(m.expect(8), Some(Some(255)));
        assert_eq!(m.next_gen(8, 1), 1, "wraps past 255 without using 0");
        let ro = VerifyMap::new(4, true);
        assert_eq!(
            ro.expect(0),
            Some(None),
            "read-only runs check against the seed"
        );
    }

    #[test]
    fn write_then_read_run_verifies_from_the_seed() {
        // A write run's sectors are a function of (seed, lba, gen); a later read-only run
        // accepts them with any generation, and rejects another seed's.
        let mut disk = vec![0u8; 8 * SECTOR];
        let mut writer = VerifyMap::new(8, false);
        for lba in (0..8).step_by(2) {
            let gen = writer.next_gen(lba, 2);
            let at = lba as usize * SECTOR;
            pattern::fill_range(&mut disk[at..at + 2 * SECTOR], 77, lba, u32::from(gen));
        }
        let reader = VerifyMap::new(8, true);
        for lba in 0..8u64 {
            let s = &disk[lba as usize * SECTOR..][..SECTOR];
            let want = Expect {
                seed: 77,
                lba,
                gen: reader.expect(lba).unwrap(),
            };
            assert!(pattern::check(s, &want).is_ok());
            let other = Expect { seed: 78, ..want };
            assert!(pattern::check(s, &other).is_err());
        }
    }
}
