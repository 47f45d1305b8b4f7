//! `cargo xtask bench [--quick] [--time SECS] [--keep-lab]`: xblade against vblade and the
//! ceilings, side by side, on the netns lab.
//!
//! 1. Installs what it needs (vblade and fio from Debian, when root; it says so), builds
//!    `xblade` and `aoe-bench` in release, and brings the lab up ([`crate::lab`]): a RAM image
//!    on tmpfs, a disk image on the root filesystem, the same size, and a loop block device
//!    over the disk image (`losetup --direct-io=on --sector-size 512`). Three back ends:
//!    `ram` (the tmpfs file, which xblade maps in memory), `disk` (the file on the root
//!    filesystem, ext4 here) and `blk` (the loop device: the path users take,
//!    `xblade 1 0 eth1 /dev/nvme0n1`, a block device through io_uring O_DIRECT with
//!    `RWF_DSYNC` writes).
//! 2. Runs the matrix. Every case is measured against three things, one at a time on the
//!    target's veth end (XDP allows one program per interface and vblade's AF_PACKET socket
//!    would see the frames too), in an order that rotates from case to case so that drift
//!    (other load on the machine) spreads over all of them:
//!    - xblade (`--cpus 1`: O_DIRECT and durable writes, its defaults; on `blk` never any
//!      other option, so those rows measure what a user gets from `xblade 1 0 IF DEV`);
//!    - vblade, Debian's (`taskset -c 1`; RAM plain, disk and blk `-d` for reads and `-d -s`
//!      for writes);
//!    - the ceiling: `aoe-bench echo --cpu 1`, which answers at once with no storage (RAM
//!      rows), and fio (`--ioengine=io_uring --direct=1`, same block size, pattern and depth,
//!      `--sync=dsync` for writes, pinned to CPU 1) on the same file or device (disk and blk
//!      rows).
//!
//!    xblade opens a block device with `O_EXCL`, and the claim can outlive the process a
//!    moment (its io_uring's registered file is released after exit), so before xblade
//!    starts on `blk` the bench waits until an exclusive open succeeds. vblade and fio open
//!    it shared; every run is alone on the device anyway.
//!
//!    fio has no network and no generator in its loop; the disk rows' xblade/fio ratio does.
//!    The generator waits for responses the way a remote initiator looks to the target: it
//!    never sleeps with requests outstanding (`aoe-bench run --wait yield`, its default). A
//!    generator that sleeps is measured instead of the target: the lab's virtio disk completes
//!    in bursts, and each burst's replies first woke the generator's halted vCPU (1 KiB
//!    randread QD 16–64: 0.62–0.84 of fio with `--wait sleep`, 0.93–0.98 with `yield`); on the
//!    2-queue lab, where generator and worker share each core, xblade's transmit paid for
//!    waking it (11% of the worker's time in `sock_def_readable`).
//!
//!    The generator is `aoe-bench run --cpu 0`. Cases: 1 KiB (MTU 1500) sequential and random
//!    reads and writes at QD 1, 16, 64 on RAM and disk; 8 KiB reads at MTU 9000 (a cell is
//!    "n/a: reason" when aoe-bench or a target cannot do 8 KiB requests); `--verify` write then
//!    read-back per target and back end; and xblade's CPU time per frame with 1 queue against
//!    2 queues (below). The blk rows are a subset ([`blk_row`]). vblade advertises 16 buffers,
//!    so aoe-bench caps its QD at 16: the effective QD is reported.
//! 3. CPU time per frame: user + system ticks (`/proc/PID/task/*/stat` fields 14 and 15) of
//!    xblade's `xblade-*` worker threads around the run, divided by the frames answered; also
//!    for the whole process (which includes io_uring's io-wq threads) and for vblade and echo.
//!    On veth the receive side's XDP runs in the sender's softirq, so part of each side's
//!    packet work is charged to the other side's CPU: compare, don't add up.
//! 4. 1 queue against 2: a 2-queue lab, xblade `--queues 0,1`. aoe-bench binds one queue of one
//!    interface and attaches its own XDP program, and an interface takes one, so each generator
//!    gets a macvlan on the initiator's veth end (`xbl-m0`, `xbl-m1`); XPS
//!    (`/sys/class/net/xbl-iv/queues/tx-Q/xps_cpus`) sends what CPU Q transmits out of veth
//!    queue Q, so generator Q pinned to CPU Q loads xblade's queue Q. On 2 cores each worker
//!    then shares its core with a generator, which costs a worker about half as much CPU again
//!    per frame as having its core alone; so the 1-queue baseline puts its one generator on the
//!    worker's core too (XPS: both CPUs to queue 0), and the ratio compares like with like
//!    ([`Placement`]): the median over 4 adjacent pairs of 1-queue and 2-queue runs (1 pair in
//!    `--quick`), so that a slow patch of the VM spoils one pair, not the figure. The 1-queue
//!    run with the worker alone is shown beside it. Failures here make the comparison "n/a",
//!    not the bench.
//! 5. The RAM read rows' memory bound ([`mem`]): one core copying random blocks of each read
//!    size out of the RAM image, pipelined. Echo reads no storage, and a RAM target must also
//!    move every read's data from memory, so the report shows `1 / (1/echo IOPS + copy time)`
//!    next to echo: what a RAM target can reach on this machine at best. (On this lab's VM an
//!    8 KiB copy from a 256 MiB image takes about 0.6 µs, a quarter of echo's time per frame.)
//! 6. Prints the table, writes `target/bench/bench-<UTC time>.json` (everything, including each
//!    tool's own JSON; [`report`]) and `.svg` (throughput and p99 latency against QD, one line
//!    per target; [`plot`]),
//!    copies them to `latest.json`/`latest.svg`, and takes the lab down (also after an error or
//!    Ctrl-C; `--keep-lab` leaves it up). Target logs are in `target/bench/logs/`.
//!
//! 7. The storage node's load ([`node`]; the full bench's last section, or `--node` alone):
//!    16 exports, 4 initiators, xblade against vblade's 16 processes and the echo ceiling.
//!
//! Exits non-zero if any row has an error (a failed run, any I/O or verify error) or is
//! missing; "n/a" cells are not errors. Speed is reported, never asserted. `--quick` (CI's
//! smoke test) runs fewer cases for 1 s each (blk among them) and finishes in about a minute.

mod mem;
pub(crate) mod node;
mod plot;
pub(crate) mod procs;
mod report;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::{
    cmd::{self, check_interrupted, from_argv, shell_words, CommandExt as _},
    lab::{self, Lab, LabConfig},
    project_root,
};
use procs::{Service, Ticks};

/// `cargo xtask bench` (needs root). Writes target/bench/bench-<time>.json and .svg (and
/// latest.json, latest.svg).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fewer cases, 1 s each (CI's smoke test; about a minute)
    #[arg(long)]
    quick: bool,
    /// Length of each measurement, 0.2 to 600 (default 1.5, --quick 1)
    #[arg(long, value_name = "SECS")]
    time: Option<f64>,
    /// Leave the lab up afterwards (default: take it down)
    #[arg(long)]
    keep_lab: bool,
    /// Only the storage node's load: 16 exports, 4 initiators, xblade against vblade's 16
    /// processes, then each class against its ceiling (echo, the disk) (about 4 minutes;
    /// --time: each run, default 4)
    #[arg(long)]
    node: bool,
}

/// Debian packages the bench drives (command, package).
const TOOLS: &[(&str, &str)] = &[
    ("vblade", "vblade"),
    ("fio", "fio"),
    ("ip", "iproute2"),
    ("losetup", "mount"),
    ("findmnt", "util-linux"),
    ("taskset", "util-linux"),
    ("fallocate", "util-linux"),
    ("dd", "coreutils"),
];

/// The export every target serves.
const SHELF: u16 = 1;
const SLOT: u8 = 0;
/// CPUs: the target (and fio) on one, the generator on the other.
const TARGET_CPU: usize = 1;
const GEN_CPU: usize = 0;
/// Sectors the `--verify` rows write and read back (2 MiB: vblade `-d -s` on a busy disk
/// may manage only a few hundred writes a second).
const VERIFY_SECTORS: u64 = 4096;
/// How long a target may take to drain and exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How long a target may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the blk device's exclusive claim may outlive the xblade that held it.
const CLAIM_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
struct Opts {
    quick: bool,
    time_s: f64,
    keep_lab: bool,
    /// Only the node section.
    node_only: bool,
    /// Length of each node measurement (the full bench: [`NODE_TIME`]).
    node_time_s: f64,
}

/// Seconds each target runs under the node load (twice: two rounds).
const NODE_TIME: f64 = 4.0;

impl Opts {
    fn new(args: Args) -> Result<Opts> {
        if let Some(t) = args.time {
            if !(0.2..=600.0).contains(&t) {
                bail!("--time {t}: expected 0.2 to 600 seconds");
            }
        }
        if args.node && args.quick {
            bail!("--node and --quick: the node load has no quick form (--node --time 3 is short)");
        }
        Ok(Opts {
            quick: args.quick,
            time_s: args.time.unwrap_or(if args.quick { 1.0 } else { 1.5 }),
            keep_lab: args.keep_lab,
            node_only: args.node,
            node_time_s: if args.node {
                args.time.unwrap_or(NODE_TIME)
            } else {
                NODE_TIME
            },
        })
    }

    /// Image size (both images), MiB.
    fn image_mib(&self) -> u64 {
        if self.quick {
            64
        } else {
            256
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The model: rows of cells.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// The RAM image, a file on tmpfs.
    Ram,
    /// The disk image, a file on the root filesystem.
    Disk,
    /// The loop block device over the disk image.
    Blk,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Ram => "ram",
            Backend::Disk => "disk",
            Backend::Blk => "blk",
        }
    }

    /// Whether the ceiling is fio on the store (else echo).
    fn on_storage(self) -> bool {
        matches!(self, Backend::Disk | Backend::Blk)
    }
}

/// The things measured in each row, in column order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Thing {
    Xblade,
    Vblade,
    Echo,
    Fio,
}

const THINGS: [Thing; 4] = [Thing::Xblade, Thing::Vblade, Thing::Echo, Thing::Fio];

impl Thing {
    fn name(self) -> &'static str {
        match self {
            Thing::Xblade => "xblade",
            Thing::Vblade => "vblade",
            Thing::Echo => "echo",
            Thing::Fio => "fio",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    /// 1 KiB requests at MTU 1500.
    Main,
    /// `--verify` write, then read-back.
    Verify,
    /// 8 KiB requests at MTU 9000.
    Jumbo,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::Main => "main",
            Section::Verify => "verify",
            Section::Jumbo => "jumbo",
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug)]
struct Row {
    section: Section,
    /// aoe-bench's and fio's `--rw`.
    rw: &'static str,
    /// Sectors per request.
    bs: u8,
    qd: u32,
    mtu: u32,
    backend: Backend,
    cells: [Cell; 4],
}

impl Row {
    fn case(&self) -> String {
        let size = format!("{}k", u32::from(self.bs) / 2);
        match self.section {
            Section::Verify => format!("verify {} {size}", self.rw),
            _ => format!("{} {size}", self.rw),
        }
    }

    /// Whether every request of the row is a read.
    fn reads_only(&self) -> bool {
        self.rw.ends_with("read")
    }

    fn cell(&self, t: Thing) -> &Cell {
        &self.cells[t as usize]
    }

    /// The ceiling for this row: echo on RAM, fio on disk and blk.
    fn ceiling(&self) -> Thing {
        if self.backend.on_storage() {
            Thing::Fio
        } else {
            Thing::Echo
        }
    }

    /// What is wrong with the row (errors and missing cells).
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in THINGS {
            let what = format!(
                "{} {} QD{} {}",
                self.case(),
                self.backend.name(),
                self.qd,
                t.name()
            );
            match self.cell(t) {
                Cell::Pending => out.push(format!("{what}: missing (not measured)")),
                Cell::Error(e) => out.push(format!("{what}: {e}")),
                Cell::Run(m) if !m.clean() => out.push(format!("{what}: {}", m.trouble())),
                _ => {}
            }
        }
        out
    }
}

/// One measurement, or why there is none.
#[derive(Clone, Debug)]
enum Cell {
    /// Not measured (yet): "missing" at the end.
    Pending,
    /// Not part of this row.
    Skip,
    /// Not applicable or not supported, with the reason.
    NotApplicable(String),
    /// The measurement failed.
    Error(String),
    Run(Box<Measure>),
    Fio(Box<FioMeasure>),
}

impl Cell {
    fn iops(&self) -> Option<f64> {
        match self {
            Cell::Run(m) => Some(m.iops),
            Cell::Fio(f) => Some(f.iops),
            _ => None,
        }
    }

    fn p99_us(&self) -> Option<f64> {
        match self {
            Cell::Run(m) => Some(m.p99_us),
            Cell::Fio(f) => f.p99_us,
            _ => None,
        }
    }
}

/// CPU time per frame answered.
#[derive(Clone, Copy, Debug)]
struct CpuPerFrame {
    /// xblade's `xblade-*` worker threads (`None` for single-threaded targets).
    workers_us: Option<f64>,
    /// The whole target process.
    process_us: f64,
    worker_threads: u32,
}

/// An `aoe-bench run` against a target.
#[derive(Clone, Debug)]
struct Measure {
    iops: f64,
    mb_s: f64,
    p99_us: f64,
    p50_us: f64,
    /// After aoe-bench's cap at the target's buffer count.
    qd: u32,
    frames_rx: u64,
    retransmits: u64,
    errors: u64,
    verify: bool,
    verify_checked: u64,
    verify_errors: u64,
    ok: bool,
    stop_reason: String,
    cpu: Option<CpuPerFrame>,
    /// The generator's and the target's command lines.
    command: String,
    target_command: String,
    /// aoe-bench's JSON, and the target's (echo's counters).
    result: Value,
    target_result: Option<Value>,
    /// aoe-bench's first error message, if any.
    first_error: Option<String>,
}

/// What the bench reads of `aoe-bench run --json` (schema `aoe-bench/run/1`); missing or null
/// numbers read as 0.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunReport {
    schema: String,
    ok: bool,
    stop_reason: Option<String>,
    iops: Option<f64>,
    mb_s: Option<f64>,
    latency_us: RunLatency,
    config: RunConfig,
    frames: RunFrames,
    flow: RunFlow,
    errors: RunErrors,
    verify: RunVerify,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunLatency {
    all: Percentiles,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Percentiles {
    p50: Option<f64>,
    p99: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunConfig {
    qd: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunFrames {
    rx: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunFlow {
    retransmits: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunErrors {
    total: u64,
    messages: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunVerify {
    enabled: bool,
    checked_sectors: u64,
    errors: u64,
}

impl Measure {
    fn clean(&self) -> bool {
        self.ok && self.errors == 0 && self.verify_errors == 0 && self.stop_reason != "stall"
    }

    fn trouble(&self) -> String {
        let messages = self
            .first_error
            .as_ref()
            .map(|m| format!(" (first: {m})"))
            .unwrap_or_default();
        format!(
            "{} errors, {} verify errors, stopped by {}{messages}",
            self.errors, self.verify_errors, self.stop_reason
        )
    }

    /// From aoe-bench's report (`r`, read from `j`).
    fn new(r: RunReport, j: Value, command: String, target_command: String) -> Measure {
        Measure {
            iops: r.iops.unwrap_or(0.0),
            mb_s: r.mb_s.unwrap_or(0.0),
            p99_us: r.latency_us.all.p99.unwrap_or(0.0),
            p50_us: r.latency_us.all.p50.unwrap_or(0.0),
            qd: r.config.qd,
            frames_rx: r.frames.rx,
            retransmits: r.flow.retransmits,
            errors: r.errors.total,
            verify: r.verify.enabled,
            verify_checked: r.verify.checked_sectors,
            verify_errors: r.verify.errors,
            ok: r.ok,
            stop_reason: r.stop_reason.unwrap_or_else(|| "?".to_owned()),
            cpu: None,
            command,
            target_command,
            result: j,
            target_result: None,
            first_error: r.errors.messages.into_iter().next(),
        }
    }
}

/// A fio run on the backing file or device.
#[derive(Clone, Debug)]
struct FioMeasure {
    iops: f64,
    mb_s: f64,
    p99_us: Option<f64>,
    command: String,
    /// fio's `jobs[0]`.
    result: Value,
}

/// fio's `--output-format=json`.
#[derive(Debug, Deserialize)]
struct FioOutput {
    jobs: Vec<Value>,
}

/// What the bench reads of one of fio's `jobs`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FioJob {
    error: i64,
    read: FioDirection,
    write: FioDirection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FioDirection {
    iops: Option<f64>,
    bw_bytes: Option<f64>,
    lat_ns: FioLatency,
    clat_ns: FioLatency,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FioLatency {
    /// `"99.000000": ns`.
    percentile: BTreeMap<String, f64>,
}

/// The 1-queue against 2-queue comparison.
#[derive(Clone, Debug)]
enum QueueCmp {
    Pending,
    NotApplicable(String),
    Done(Vec<QueueRun>),
}

/// One xblade configuration of the comparison (summed over its repetitions).
#[derive(Clone, Debug)]
struct QueueRun {
    queues: u32,
    /// Whether each worker shares its core with a generator ([`Placement`]).
    placement: Placement,
    /// 2 queues, shared: the ratio to the 1-queue shared run next to it, per pair of runs.
    pair_ratios: Vec<f64>,
    /// Sum of all generators' IOPS, averaged over repetitions.
    iops: f64,
    frames: u64,
    worker_ticks: u64,
    process_ticks: u64,
    /// Worker ticks per thread (in thread-id order), summed over repetitions.
    per_worker_ticks: Vec<u64>,
    repetitions: u32,
    workers_us_per_frame: f64,
    process_us_per_frame: f64,
    commands: Vec<String>,
    results: Vec<Value>,
}

/// Where the generators run against the workers in the queue comparison.
///
/// On 2 cores, 2 workers (CPUs 0 and 1) must share their cores with the 2 generators (generator
/// q on CPU q, sending through veth queue q by XPS). A worker that shares its core pays for it
/// per frame: the generator's sends and the worker's replies take turns on the core, the worker
/// sleeps and is woken far more often, and the two evict each other's cache lines. Measured by
/// hand (3 s runs, randread 1k QD16, RAM): 1 queue with the worker alone on its core 2.06/2.08
/// µs per frame; 1 queue with the worker sharing its core with its generator 2.98/3.10; 2 queues,
/// each worker sharing, 3.14/2.97. So the +30…50% that the old 1-queue baseline (worker alone,
/// generator on the other core) showed was the placement, not a per-queue cost of the daemon;
/// the comparison now sets the 1-queue baseline up as each of the 2 queues is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// Worker and generator on the same core, as each queue of the 2-queue run.
    Shared,
    /// The worker alone on CPU 1, the generator on CPU 0 (shown, not the baseline).
    Alone,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Shared => "shared core",
            Placement::Alone => "worker alone",
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The plan.

/// Cases measured together: the same request pattern on each back end (echo runs once for
/// all of them), or the verify write and read-back of one back end.
#[derive(Clone, Debug)]
struct Group {
    section: Section,
    mtu: u32,
    rows: Vec<usize>,
}

fn pending() -> [Cell; 4] {
    [Cell::Pending, Cell::Pending, Cell::Pending, Cell::Pending]
}

/// Adds a group of rows, one per back end.
fn add_group(
    rows: &mut Vec<Row>,
    groups: &mut Vec<Group>,
    section: Section,
    mtu: u32,
    (rw, bs, qd): (&'static str, u8, u32),
    backends: &[Backend],
) {
    let mut idx = Vec::new();
    for &backend in backends {
        idx.push(rows.len());
        rows.push(Row {
            section,
            rw,
            bs,
            qd,
            mtu,
            backend,
            cells: pending(),
        });
    }
    groups.push(Group {
        section,
        mtu,
        rows: idx,
    });
}

/// Whether a case gets a blk row (the loop device) next to its ram and disk rows.
///
/// Not every case: the blk rows are the ones where a block device's path can differ from the
/// file's, at the depths that load a device: random reads and durable random writes (the
/// loop device has a write-back cache and no FUA, so an `RWF_DSYNC` write to it is a write
/// plus a cache flush, which the loop turns into an fsync of its backing file) at QD 16
/// (vblade's buffer count, so every target runs at the same depth) and 64, of 1 KiB (MTU
/// 1500) and 8 KiB (MTU 9000), plus the `--verify` write and read-back (the data path's
/// correctness on a device). Sequential rows would repeat the random ones (the loop turns
/// both into O_DIRECT I/O on the same file) and QD 1 measures the round trip, not the
/// device. That is 22 more measurements (about a minute), against 49 for a blk row in every
/// case. `--quick` has the 1 KiB QD 16 randread and randwrite blk rows and the verify.
fn blk_row(rw: &str, qd: u32) -> bool {
    matches!(rw, "randread" | "randwrite") && matches!(qd, 16 | 64)
}

fn plan(quick: bool) -> (Vec<Row>, Vec<Group>) {
    let mut rows = Vec::new();
    let mut groups = Vec::new();
    let both = [Backend::Ram, Backend::Disk];
    let all = [Backend::Ram, Backend::Disk, Backend::Blk];
    let backends = |rw: &str, qd: u32, only: &[Backend]| -> Vec<Backend> {
        let mut b = only.to_vec();
        if blk_row(rw, qd) {
            b.push(Backend::Blk);
        }
        b
    };
    let (rws, qds): (&[&'static str], &[u32]) = if quick {
        (&["randread", "randwrite"], &[16])
    } else {
        (&["randread", "read", "randwrite", "write"], &[1, 16, 64])
    };
    for &rw in rws {
        for &qd in qds {
            add_group(
                &mut rows,
                &mut groups,
                Section::Main,
                1500,
                (rw, 2, qd),
                &backends(rw, qd, &both),
            );
        }
    }
    for &backend in &all {
        let start = rows.len();
        for rw in ["write", "randread"] {
            rows.push(Row {
                section: Section::Verify,
                rw,
                bs: 2,
                qd: 16,
                mtu: 1500,
                backend,
                cells: pending(),
            });
        }
        groups.push(Group {
            section: Section::Verify,
            mtu: 1500,
            rows: vec![start, start + 1],
        });
    }
    let (jumbo_qds, jumbo_backends): (&[u32], &[Backend]) = if quick {
        (&[16], &[Backend::Ram])
    } else {
        (&[1, 16, 64], &[Backend::Ram, Backend::Disk])
    };
    for &qd in jumbo_qds {
        let jumbo = if quick {
            jumbo_backends.to_vec()
        } else {
            backends("randread", qd, jumbo_backends)
        };
        add_group(
            &mut rows,
            &mut groups,
            Section::Jumbo,
            9000,
            ("randread", 16, qd),
            &jumbo,
        );
    }
    (rows, groups)
}

// ------------------------------------------------------------------------------------------------
// Running it.

/// Paths of the release binaries.
#[derive(Clone, Debug)]
pub(crate) struct Bins {
    pub xblade: PathBuf,
    pub aoe_bench: PathBuf,
}

/// `cargo xtask bench`.
pub fn run(args: Args) -> Result<()> {
    let opts = Opts::new(args)?;
    let started = Instant::now();
    let started_at = SystemTime::now();
    if !crate::test::is_root() {
        bail!(
            "`cargo xtask bench` needs root (network namespaces, XDP, AF_XDP): run \
             `sudo -E \"$(command -v cargo)\" xtask bench`"
        );
    }
    crate::test::ensure_tools(TOOLS)?;
    let bins = build()?;
    let out_dir = project_root().join("target").join("bench");
    let logs = out_dir.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    refuse_busy_lab()?;
    cmd::install_signal_handlers();

    let (rows, groups) = if opts.node_only {
        (Vec::new(), Vec::new())
    } else {
        plan(opts.quick)
    };
    let mut bench = Bench {
        opts: opts.clone(),
        bins,
        logs,
        lab: None,
        lab_cfg: None,
        rows,
        queues: QueueCmp::Pending,
        notes: Vec::new(),
        xblade_extra: Vec::new(),
        done: 0,
        total: 0,
        t0: Instant::now(),
        ram_sectors: opts.image_mib() * 2048,
        mem: Vec::new(),
        disk_fs: None,
        node: None,
    };
    bench.total = bench.count_measurements(&groups);
    eprintln!(
        "bench: {} rows, {} measurements of {} s each{}",
        bench.rows.len(),
        bench.total,
        opts.time_s,
        if opts.quick { " (--quick)" } else { "" }
    );
    let guard = DownOnPanic;
    let result = if opts.node_only {
        bench.run_node()
    } else {
        bench
            .run_all(&groups)
            .and_then(|()| if opts.quick { Ok(()) } else { bench.run_node() })
    };
    std::mem::forget(guard);
    if let Err(e) = &result {
        eprintln!("bench: stopped early: {e:#}");
    }
    let down = if opts.keep_lab {
        eprintln!("bench: --keep-lab: the lab stays up (`cargo xtask lab down` removes it)");
        Ok(())
    } else {
        lab::down().context("taking the lab down")
    };
    let elapsed = started.elapsed();
    let outcome = if opts.node_only {
        report::write_node(&bench, &out_dir, started_at, elapsed, result.as_ref().err())?
    } else {
        report::write_all(&bench, &out_dir, started_at, elapsed, result.as_ref().err())?
    };
    println!("{}", outcome.table);
    println!(
        "wall time {:.0} s; wrote {} and {} (also latest.json, latest.svg); target logs in {}",
        elapsed.as_secs_f64(),
        outcome.json.display(),
        outcome.svg.display(),
        bench.logs.display()
    );
    result?;
    down?;
    if !outcome.problems.is_empty() {
        bail!(
            "{} problem(s) in the results (all in {}):\n  {}",
            outcome.problems.len(),
            outcome.json.display(),
            report::abridged(&outcome.problems).join("\n  ")
        );
    }
    Ok(())
}

/// Takes the lab down if the bench panics (errors and signals are handled in [`run`]).
struct DownOnPanic;

impl Drop for DownOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("bench: panicked: taking the lab down");
            let _ = lab::down();
        }
    }
}

/// One line of cargo's `--message-format=json` (the fields the bench reads).
#[derive(Debug, Deserialize)]
struct CargoMessage {
    reason: String,
    target: Option<CargoTarget>,
    executable: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct CargoTarget {
    name: String,
}

/// `cargo build --release -p xblade -p aoe-bench`; the executables' paths from cargo.
pub(crate) fn build() -> Result<Bins> {
    let args = [
        "build",
        "--release",
        "-p",
        "xblade",
        "-p",
        "aoe-bench",
        "--message-format=json-render-diagnostics",
    ];
    eprintln!("bench: building: {}", args.join(" "));
    let out = crate::test::cargo().args(args).read_showing_stderr()?;
    let (mut xblade, mut aoe_bench) = (None, None);
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<CargoMessage>(line) else {
            continue;
        };
        let (Some(target), Some(exe)) = (msg.target, msg.executable) else {
            continue;
        };
        if msg.reason != "compiler-artifact" {
            continue;
        }
        match target.name.as_str() {
            "xblade" => xblade = Some(exe),
            "aoe-bench" => aoe_bench = Some(exe),
            _ => {}
        }
    }
    Ok(Bins {
        xblade: xblade.context("cargo built no xblade executable")?,
        aoe_bench: aoe_bench.context("cargo built no aoe-bench executable")?,
    })
}

/// The bench takes the lab over and down: refuse if something else runs in it.
pub(crate) fn refuse_busy_lab() -> Result<()> {
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .read()
        .unwrap_or_default();
    let mut busy = Vec::new();
    for ns in ["xbl-t", "xbl-i"] {
        if !namespaces
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns))
        {
            continue;
        }
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .read()
            .unwrap_or_default();
        for pid in pids.split_whitespace() {
            let cmd = fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            if !cmd.trim().is_empty() {
                busy.push(format!("  {pid} (in {ns}): {}", cmd.trim()));
            }
        }
    }
    if !busy.is_empty() {
        bail!(
            "the lab is in use; the bench would stop these processes and take the lab down:\n{}\n\
             Stop them, or run `cargo xtask lab down`, then try again.",
            busy.join("\n")
        );
    }
    Ok(())
}

struct Bench {
    opts: Opts,
    bins: Bins,
    logs: PathBuf,
    lab: Option<Lab>,
    lab_cfg: Option<LabConfig>,
    rows: Vec<Row>,
    queues: QueueCmp,
    notes: Vec<String>,
    /// Extra xblade options found necessary (`--buffered` if tmpfs refused O_DIRECT).
    xblade_extra: Vec<String>,
    done: usize,
    total: usize,
    t0: Instant,
    ram_sectors: u64,
    /// One core's copies out of the RAM image, per RAM read size.
    mem: Vec<mem::MemCopy>,
    /// The filesystem type under the disk image (`ext4`), for the report.
    disk_fs: Option<String>,
    /// The storage node's load ([`node`]).
    node: Option<node::NodeReport>,
}

/// How a generator run went.
enum GenOutcome {
    /// aoe-bench printed its JSON (the run may still have had errors): what the bench reads,
    /// and all of it.
    Report(Box<RunReport>, Value),
    /// It failed before it could report (no target, a request size it cannot do, ...).
    Fatal(String),
}

/// One `aoe-bench run`.
#[derive(Clone, Debug)]
struct GenSpec {
    rw: &'static str,
    bs: u8,
    qd: u32,
    time_s: Option<f64>,
    size: Option<u64>,
    range: Option<u64>,
    verify_seed: Option<u64>,
    iface: String,
    queue: u32,
    cpu: usize,
}

impl Bench {
    fn lab(&self) -> &Lab {
        self.lab.as_ref().expect("the lab is up")
    }

    fn count_measurements(&self, groups: &[Group]) -> usize {
        let node = if self.opts.quick { 0 } else { node::NODE_STEPS };
        if self.opts.node_only {
            return node;
        }
        let mut n = node;
        for g in groups {
            n += match g.section {
                Section::Verify => 4,
                _ => 3 * g.rows.len() + 1,
            };
        }
        n + if self.opts.quick { 3 } else { 10 }
    }

    fn ensure_lab(&mut self, mtu: u32, queues: u32) -> Result<()> {
        let cfg = LabConfig {
            queues,
            mtu,
            ram_mib: self.opts.image_mib(),
            disk_mib: self.opts.image_mib(),
            // The blk rows' device, over the disk image.
            loop_device: true,
        };
        if self.lab_cfg.as_ref() == Some(&cfg) {
            return Ok(());
        }
        eprintln!("bench: lab: {}", cfg.to_args());
        let lab = lab::up(&cfg).context("bringing the lab up")?;
        let dev = lab
            .loop_dev
            .clone()
            .context("the lab has no loop device for the blk rows")?;
        // `lab up` warns when the loop fell back to buffered I/O; here that would make the blk
        // rows measure the page cache, so the report says so.
        let sys = Path::new("/sys/block")
            .join(dev.file_name().unwrap_or_default())
            .join("loop");
        let read = |f: &str| fs::read_to_string(sys.join(f)).unwrap_or_default();
        if read("dio").trim() != "1" {
            let note = format!(
                "{} over {} has no direct I/O: its blk rows went through the page cache",
                dev.display(),
                read("backing_file").trim()
            );
            if !self.notes.contains(&note) {
                eprintln!("bench: {note}");
                self.notes.push(note);
            }
        }
        if self.disk_fs.is_none() {
            self.disk_fs = lab.disk_image.as_deref().and_then(filesystem_of);
        }
        self.lab = Some(lab);
        self.lab_cfg = Some(cfg);
        Ok(())
    }

    fn file(&self, backend: Backend) -> PathBuf {
        let lab = self.lab();
        match backend {
            Backend::Ram => lab.ram_image.clone(),
            Backend::Disk => lab.disk_image.clone(),
            Backend::Blk => lab.loop_dev.clone(),
        }
        .expect("the lab has both images and the loop device")
    }

    fn progress(&mut self, what: &str, cell: &Cell) {
        self.done += 1;
        let t = self.t0.elapsed().as_secs();
        let summary = match cell {
            Cell::Run(m) => {
                let cpu = m
                    .cpu
                    .map(|c| format!(", {:.2} µs/frame", c.workers_us.unwrap_or(c.process_us)))
                    .unwrap_or_default();
                let rtx = if m.retransmits > 0 {
                    format!(", {} retransmits", m.retransmits)
                } else {
                    String::new()
                };
                let trouble = if m.clean() {
                    String::new()
                } else {
                    format!("  PROBLEM: {}", m.trouble())
                };
                format!(
                    "{} IOPS, {:.1} MB/s, p99 {} µs, QD {}{cpu}{rtx}{trouble}",
                    report::si(m.iops),
                    m.mb_s,
                    report::us(m.p99_us),
                    m.qd
                )
            }
            Cell::Fio(f) => format!(
                "{} IOPS, {:.1} MB/s, p99 {} µs",
                report::si(f.iops),
                f.mb_s,
                f.p99_us.map_or("?".into(), report::us)
            ),
            Cell::NotApplicable(r) => format!("n/a: {r}"),
            Cell::Error(e) => format!("ERROR: {e}"),
            Cell::Pending | Cell::Skip => "-".into(),
        };
        eprintln!(
            "bench [{:>3}/{}] {:>2}:{:02} {what}: {summary}",
            self.done,
            self.total,
            t / 60,
            t % 60
        );
    }

    fn run_all(&mut self, groups: &[Group]) -> Result<()> {
        for (gi, g) in groups.iter().enumerate() {
            check_interrupted()?;
            self.ensure_lab(g.mtu, 1)?;
            match g.section {
                Section::Verify => self.run_verify_group(gi, g)?,
                _ => self.run_group(gi, g)?,
            }
            // The queue comparison goes between the MTU 1500 cases and the jumbo ones.
            let next_jumbo = groups
                .get(gi + 1)
                .is_some_and(|n| n.section == Section::Jumbo);
            if g.section != Section::Jumbo && (next_jumbo || gi + 1 == groups.len()) {
                self.run_queue_comparison()?;
            }
        }
        if matches!(self.queues, QueueCmp::Pending) {
            self.run_queue_comparison()?;
        }
        self.run_memory();
        Ok(())
    }

    /// The storage node's load ([`node`]); a failure of the section itself (the lab) is an
    /// error, a target's failure is the section's problem.
    fn run_node(&mut self) -> Result<()> {
        let time = self.opts.node_time_s;
        let r = node::run(self, time)?;
        self.node = Some(r);
        Ok(())
    }

    /// The RAM read rows' memory bound ([`mem`]): one core copying each read size out of the
    /// RAM image, three times in turn (the median is kept). A failure is a note, not an error.
    fn run_memory(&mut self) {
        let Some(image) = self.lab.as_ref().and_then(|l| l.ram_image.clone()) else {
            return;
        };
        let mut sizes: Vec<usize> = self
            .rows
            .iter()
            .filter(|r| r.backend == Backend::Ram && r.reads_only())
            .map(|r| usize::from(r.bs) * 512)
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        let time = Duration::from_secs_f64(if self.opts.quick { 0.2 } else { 0.5 });
        match mem::measure(&image, &sizes, 3, TARGET_CPU, time) {
            Ok(copies) => {
                for m in &copies {
                    eprintln!(
                        "bench: memory: random {} B copies from the RAM image on CPU {TARGET_CPU}: {:.3} µs each ({:.1} GB/s)",
                        m.bytes,
                        m.ns_per_copy / 1e3,
                        m.gb_per_s()
                    );
                }
                self.mem = copies;
            }
            Err(e) => self
                .notes
                .push(format!("memory copies not measured: {e:#}")),
        }
    }

    /// Order of the things in group `gi`: rotated, so none is always first or last.
    fn order<T: Copy>(gi: usize, things: &[T]) -> Vec<T> {
        let k = gi % things.len();
        things[k..].iter().chain(&things[..k]).copied().collect()
    }

    fn run_group(&mut self, gi: usize, g: &Group) -> Result<()> {
        let jumbo = g.section == Section::Jumbo;
        for thing in Self::order(gi, &THINGS) {
            check_interrupted()?;
            match thing {
                Thing::Echo => {
                    let first = self.rows[g.rows[0]].clone();
                    let spec = self.gen_spec(&first);
                    let mut cells =
                        self.measure_target(Thing::Echo, Backend::Ram, false, &[spec], jumbo)?;
                    let cell = cells.pop().expect("one run");
                    let what = format!("{} QD{} {}", first.case(), first.qd, thing.name());
                    self.progress(&what, &cell);
                    for &r in &g.rows {
                        self.rows[r].cells[thing as usize] = cell.clone();
                    }
                }
                Thing::Fio => {
                    for &r in &g.rows {
                        check_interrupted()?;
                        let row = self.rows[r].clone();
                        let cell = self.fio(&row);
                        let what =
                            format!("{} {} QD{} fio", row.case(), row.backend.name(), row.qd);
                        self.progress(&what, &cell);
                        self.rows[r].cells[thing as usize] = cell;
                    }
                }
                Thing::Xblade | Thing::Vblade => {
                    for &r in &g.rows {
                        check_interrupted()?;
                        let row = self.rows[r].clone();
                        let spec = self.gen_spec(&row);
                        let writes = row.rw.contains("write");
                        let mut cells =
                            self.measure_target(thing, row.backend, writes, &[spec], jumbo)?;
                        let cell = cells.pop().expect("one run");
                        let what = format!(
                            "{} {} QD{} {}",
                            row.case(),
                            row.backend.name(),
                            row.qd,
                            thing.name()
                        );
                        self.progress(&what, &cell);
                        self.rows[r].cells[thing as usize] = cell;
                    }
                }
            }
        }
        Ok(())
    }

    fn run_verify_group(&mut self, gi: usize, g: &Group) -> Result<()> {
        let (w, r) = (g.rows[0], g.rows[1]);
        let backend = self.rows[w].backend;
        for thing in Self::order(gi, &[Thing::Xblade, Thing::Vblade]) {
            check_interrupted()?;
            // A seed per target and back end: a read-back cannot pass on another's data.
            let seed = 100 * (thing as u64 + 1) + backend as u64;
            let base = GenSpec {
                rw: "write",
                bs: 2,
                qd: 16,
                time_s: None,
                size: Some(VERIFY_SECTORS * 512),
                range: Some(VERIFY_SECTORS),
                verify_seed: Some(seed),
                iface: self.lab().init_if.clone(),
                queue: 0,
                cpu: GEN_CPU,
            };
            let read = GenSpec {
                rw: "randread",
                time_s: Some(self.opts.time_s),
                size: None,
                ..base.clone()
            };
            let cells = self.measure_target(thing, backend, true, &[base, read], false)?;
            for (row, cell) in [w, r].into_iter().zip(cells) {
                let what = format!(
                    "{} {} {}",
                    self.rows[row].case(),
                    backend.name(),
                    thing.name()
                );
                self.progress(&what, &cell);
                self.rows[row].cells[thing as usize] = cell;
            }
        }
        for row in [w, r] {
            self.rows[row].cells[Thing::Echo as usize] = Cell::NotApplicable(
                "echo stores nothing, so a read-back has nothing to verify".into(),
            );
            self.rows[row].cells[Thing::Fio as usize] = Cell::Skip;
        }
        Ok(())
    }

    fn gen_spec(&self, row: &Row) -> GenSpec {
        GenSpec {
            rw: row.rw,
            bs: row.bs,
            qd: row.qd,
            time_s: Some(self.opts.time_s),
            size: None,
            range: None,
            verify_seed: None,
            iface: self.lab().init_if.clone(),
            queue: 0,
            cpu: GEN_CPU,
        }
    }

    fn gen_argv(&self, g: &GenSpec) -> Vec<String> {
        let lab = self.lab();
        let mut a: Vec<String> = vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            lab.init_ns.clone(),
            self.bins.aoe_bench.display().to_string(),
            "run".into(),
            "-i".into(),
            g.iface.clone(),
            "--queue".into(),
            g.queue.to_string(),
            "--cpu".into(),
            g.cpu.to_string(),
            "-t".into(),
            format!("e{SHELF}.{SLOT}"),
            "--rw".into(),
            g.rw.into(),
            "--bs".into(),
            g.bs.to_string(),
            "--qd".into(),
            g.qd.to_string(),
        ];
        if let Some(t) = g.time_s {
            a.extend(["--time".into(), t.to_string()]);
        }
        if let Some(s) = g.size {
            a.extend(["--size".into(), s.to_string()]);
        }
        if let Some(r) = g.range {
            a.extend(["--range-sectors".into(), r.to_string()]);
        }
        if let Some(seed) = g.verify_seed {
            a.extend(["--verify".into(), "--seed".into(), seed.to_string()]);
        }
        a.extend(["--json", "--no-progress", "--discover-timeout-ms", "5000"].map(String::from));
        a
    }

    fn run_gen(&self, g: &GenSpec) -> Result<(GenOutcome, String)> {
        let argv = self.gen_argv(g);
        let line = shell_words(&argv);
        let limit = g.time_s.unwrap_or(60.0) + 45.0;
        let out = from_argv(&argv).capture_within(Duration::from_secs_f64(limit))?;
        Ok((classify(&out), line))
    }

    /// The target's command line, and what it prints when it is ready.
    fn target_argv(
        &self,
        thing: Thing,
        backend: Backend,
        writes: bool,
        queues: &str,
        cpus: &str,
    ) -> (Vec<String>, &'static str) {
        let lab = self.lab();
        let file = self.file(backend).display().to_string();
        let mut a: Vec<String> = vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            lab.target_ns.clone(),
        ];
        let addr = [SHELF.to_string(), SLOT.to_string(), lab.target_if.clone()];
        match thing {
            Thing::Xblade => {
                a.push(self.bins.xblade.display().to_string());
                a.extend([
                    "--cpus".into(),
                    cpus.into(),
                    "--queues".into(),
                    queues.into(),
                ]);
                // A block device always gets xblade's defaults: the path the blk rows measure.
                if backend != Backend::Blk {
                    a.extend(self.xblade_extra.iter().cloned());
                }
                a.extend(scratch_control_args());
                a.extend(addr);
                a.push(file);
                (a, "serving workers=")
            }
            Thing::Vblade => {
                a.extend([
                    "taskset".into(),
                    "-c".into(),
                    TARGET_CPU.to_string(),
                    "vblade".into(),
                ]);
                if backend.on_storage() {
                    a.push("-d".into());
                    if writes {
                        a.push("-s".into());
                    }
                }
                a.extend(addr);
                a.push(file);
                (a, "pid ")
            }
            Thing::Echo | Thing::Fio => {
                a.push(self.bins.aoe_bench.display().to_string());
                a.extend(
                    [
                        "echo",
                        "-i",
                        &lab.target_if,
                        "--shelf",
                        &SHELF.to_string(),
                        "--slot",
                        &SLOT.to_string(),
                        "--sectors",
                        &self.ram_sectors.to_string(),
                        "--cpu",
                        &TARGET_CPU.to_string(),
                        "--json",
                    ]
                    .map(String::from),
                );
                (a, "ready")
            }
        }
    }

    /// Starts a target and waits until it says it is ready.
    fn start_target(
        &mut self,
        thing: Thing,
        backend: Backend,
        writes: bool,
        queues: &str,
        cpus: &str,
    ) -> Result<Service> {
        let log = self
            .logs
            .join(format!("{}-{}.log", thing.name(), backend.name()));
        let (argv, marker) = self.target_argv(thing, backend, writes, queues, cpus);
        if thing == Thing::Xblade && backend == Backend::Blk {
            let dev = self.file(backend);
            match wait_unclaimed(&dev, CLAIM_WAIT) {
                Ok(waited) if waited > Duration::ZERO => eprintln!(
                    "bench: waited {:.2} s for the last xblade's claim on {} to go",
                    waited.as_secs_f64(),
                    dev.display()
                ),
                Ok(_) => {}
                // xblade itself retries for 2 s more, then says "device busy".
                Err(e) => eprintln!("bench: {e:#}"),
            }
        }
        let mut svc = Service::start(thing.name(), &argv, &log)?;
        match svc.wait_ready(marker, READY_TIMEOUT) {
            Ok(_) => Ok(svc),
            Err(e)
                if thing == Thing::Xblade
                    && backend != Backend::Blk
                    && self.xblade_extra.is_empty()
                    && svc.output().contains("does not support O_DIRECT") =>
            {
                // Only a filesystem without direct I/O (tmpfs before Linux 6.6) gets here.
                let note = format!(
                    "xblade refused O_DIRECT on {} ({e:#}); serving with --buffered",
                    self.file(backend).display()
                );
                eprintln!("bench: {note}");
                self.notes.push(note);
                self.xblade_extra.push("--buffered".into());
                drop(svc);
                self.start_target(thing, backend, writes, queues, cpus)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts `thing` on `backend`, runs the generator specs one after the other, stops it.
    /// A failure is the cells' (an error, or "n/a" in jumbo rows), not the bench's; only an
    /// interrupt stops the bench.
    fn measure_target(
        &mut self,
        thing: Thing,
        backend: Backend,
        writes: bool,
        specs: &[GenSpec],
        jumbo: bool,
    ) -> Result<Vec<Cell>> {
        let fail = |reason: String| failure(jumbo, reason);
        let mut svc = match self.start_target(thing, backend, writes, "0", &TARGET_CPU.to_string())
        {
            Ok(s) => s,
            Err(e) => {
                check_interrupted()?;
                return Ok(vec![
                    fail(format!("{} did not start: {e:#}", thing.name()));
                    specs.len()
                ]);
            }
        };
        let target_command = shell_words(&svc.argv);
        let hz = procs::clock_ticks_per_sec();
        let prefix = if thing == Thing::Xblade {
            "xblade-"
        } else {
            "\0"
        };
        let mut cells = Vec::new();
        for spec in specs {
            if let Some(status) = svc.exited() {
                cells.push(fail(format!(
                    "{} exited ({status}): {}",
                    thing.name(),
                    svc.tail()
                )));
                continue;
            }
            let before = procs::ticks(svc.pid(), prefix);
            let (outcome, command) = self.run_gen(spec)?;
            let after = procs::ticks(svc.pid(), prefix);
            check_interrupted()?;
            let mut cell = match outcome {
                GenOutcome::Fatal(reason) => fail(reason),
                GenOutcome::Report(r, j) => {
                    let mut m = Measure::new(*r, j, command, target_command.clone());
                    m.cpu = cpu_per_frame(&before, &after, m.frames_rx, hz, thing == Thing::Xblade);
                    Cell::Run(Box::new(m))
                }
            };
            if let Some(status) = svc.exited() {
                cell = Cell::Error(format!(
                    "{} exited during the run ({status}): {}",
                    thing.name(),
                    svc.tail()
                ));
            }
            cells.push(cell);
        }
        let status = svc.stop(STOP_GRACE)?;
        if thing == Thing::Echo {
            if let Some(j) = embedded_json::<Value>(&svc.output()) {
                for c in &mut cells {
                    if let Cell::Run(m) = c {
                        m.target_result = Some(j.clone());
                    }
                }
            }
        }
        if !status.success() && thing != Thing::Vblade {
            // vblade dies of SIGTERM; the others exit 0 after draining.
            let why = format!(
                "{} exited with {status} when stopped: {}",
                thing.name(),
                svc.tail()
            );
            for c in &mut cells {
                if matches!(c, Cell::Run(_)) {
                    *c = Cell::Error(why.clone());
                }
            }
        }
        Ok(cells)
    }

    fn fio(&self, row: &Row) -> Cell {
        let file = self.file(row.backend);
        let bs = u32::from(row.bs) * 512;
        let writes = row.rw.contains("write");
        let mut argv: Vec<String> = [
            "fio",
            "--name=bench",
            &format!("--filename={}", file.display()),
            "--ioengine=io_uring",
            "--direct=1",
            &format!("--rw={}", row.rw),
            &format!("--bs={bs}"),
            &format!("--iodepth={}", row.qd),
            "--time_based",
            &format!("--runtime={}ms", (self.opts.time_s * 1000.0) as u64),
            &format!("--cpus_allowed={TARGET_CPU}"),
            "--lat_percentiles=1",
            "--norandommap",
            "--randrepeat=0",
            "--output-format=json",
        ]
        .map(String::from)
        .to_vec();
        if writes {
            argv.push("--sync=dsync".into());
        }
        let line = shell_words(&argv);
        let timeout = Duration::from_secs_f64(self.opts.time_s + 60.0);
        let out = match from_argv(&argv).capture_within(timeout) {
            Ok(o) => o,
            Err(e) => return Cell::Error(format!("{e:#}")),
        };
        if cmd::interrupted() {
            // Stopped by the signal: not measured, rather than failed.
            return Cell::Pending;
        }
        let job = embedded_json::<FioOutput>(&out.stdout_text())
            .and_then(|fio| fio.jobs.into_iter().next())
            .filter(|_| out.status.success());
        let parsed = job
            .clone()
            .and_then(|job| serde_json::from_value::<FioJob>(job).ok());
        let (Some(job), Some(parsed)) = (job, parsed) else {
            return Cell::Error(format!(
                "fio failed ({}): {}",
                out.status,
                procs::tail(&format!("{}\n{}", out.stdout_text(), out.stderr_text()), 4)
            ));
        };
        if parsed.error != 0 {
            return Cell::Error(format!("fio reported error {}", parsed.error));
        }
        let dir = if writes { parsed.write } else { parsed.read };
        let p99 = |lat: &FioLatency| lat.percentile.get("99.000000").copied();
        Cell::Fio(Box::new(FioMeasure {
            iops: dir.iops.unwrap_or(0.0),
            mb_s: dir.bw_bytes.unwrap_or(0.0) / 1e6,
            p99_us: p99(&dir.lat_ns)
                .or_else(|| p99(&dir.clat_ns))
                .map(|ns| ns / 1000.0),
            command: line,
            result: job,
        }))
    }

    // --------------------------------------------------------------------------------------------
    // 1 queue against 2.

    fn run_queue_comparison(&mut self) -> Result<()> {
        self.ensure_lab(1500, 2)?;
        let result = self.queue_comparison();
        // The macvlans go with the veth when the lab changes or goes down; remove them anyway.
        let ns = self.lab().init_ns.clone();
        for q in 0..2 {
            let _ = Command::new("ip")
                .args(["-n", &ns, "link", "del", &format!("xbl-m{q}")])
                .read();
        }
        match result {
            Ok(runs) => self.queues = QueueCmp::Done(runs),
            Err(e) => {
                check_interrupted()?;
                let reason = format!("{e:#}");
                eprintln!("bench: 1 vs 2 queues: n/a: {reason}");
                self.queues = QueueCmp::NotApplicable(reason);
            }
        }
        Ok(())
    }

    fn queue_comparison(&mut self) -> Result<Vec<QueueRun>> {
        let lab = self.lab().clone();
        let ns = lab.init_ns.as_str();
        let sh = |script: &str| -> Result<()> {
            from_argv(&["ip", "netns", "exec", ns, "sh", "-c", script])
                .capture_within(Duration::from_secs(10))?
                .check()
                .map(drop)
        };
        // New links in the initiator namespace come up without IPv6, so they stay silent.
        let _ = sh("sysctl -q -w net.ipv6.conf.default.disable_ipv6=1");
        for q in 0..2u32 {
            sh(&format!(
                "ip link add xbl-m{q} link {} type macvlan mode bridge && ip link set xbl-m{q} up",
                lab.init_if
            ))?;
        }
        // XPS: which veth queue each generator CPU sends through (CPU mask per TX queue).
        let xps = |tx0: u32, tx1: u32| -> Result<()> {
            for (q, mask) in [(0, tx0), (1, tx1)] {
                sh(&format!(
                    "echo {mask:x} > /sys/class/net/{}/queues/tx-{q}/xps_cpus",
                    lab.init_if
                ))?;
            }
            Ok(())
        };
        use Placement::{Alone, Shared};
        let order: &[(u32, Placement)] = if self.opts.quick {
            &[(1, Shared), (2, Shared), (1, Alone)]
        } else {
            // Four adjacent 1-queue/2-queue pairs (each pair sees the same machine), the
            // worker-alone runs in the middle.
            &[
                (1, Shared),
                (2, Shared),
                (2, Shared),
                (1, Shared),
                (1, Alone),
                (1, Alone),
                (1, Shared),
                (2, Shared),
                (2, Shared),
                (1, Shared),
            ]
        };
        let mut runs: Vec<QueueRun> = Vec::new();
        // The shared runs in order: (queues, µs per frame of the workers).
        let mut shared: Vec<(u32, f64)> = Vec::new();
        for &(n, placement) in order {
            check_interrupted()?;
            let (queues, cpus) = if n == 1 {
                ("0".to_owned(), TARGET_CPU.to_string())
            } else {
                ("0,1".to_owned(), "0,1".to_owned())
            };
            // 1 queue, shared: the generator on the worker's CPU, and that CPU sends through
            // queue 0. Otherwise generator q on CPU q through queue q.
            let gen_cpu = |q: u32| match (n, placement) {
                (1, Shared) => TARGET_CPU,
                (1, Alone) => GEN_CPU,
                _ => q as usize,
            };
            if (n, placement) == (1, Shared) {
                xps(0x3, 0x0)?;
            } else {
                xps(0x1, 0x2)?;
            }
            let mut svc = self.start_target(Thing::Xblade, Backend::Ram, false, &queues, &cpus)?;
            let specs: Vec<GenSpec> = (0..n)
                .map(|q| GenSpec {
                    rw: "randread",
                    bs: 2,
                    qd: 16,
                    time_s: Some(self.opts.time_s),
                    size: None,
                    range: None,
                    verify_seed: None,
                    iface: format!("xbl-m{q}"),
                    queue: 0,
                    cpu: gen_cpu(q),
                })
                .collect();
            let before = procs::ticks(svc.pid(), "xblade-");
            let outcomes: Vec<Result<(GenOutcome, String)>> = std::thread::scope(|s| {
                let handles: Vec<_> = specs
                    .iter()
                    .map(|spec| s.spawn(|| self.run_gen(spec)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| bail!("generator thread panicked"))
                    })
                    .collect()
            });
            let after = procs::ticks(svc.pid(), "xblade-");
            let alive = svc.exited().is_none();
            let status = svc.stop(STOP_GRACE)?;
            if !alive || !status.success() {
                bail!("xblade --queues {queues} exited ({status}): {}", svc.tail());
            }
            let mut iops = 0.0;
            let mut frames = 0;
            let mut commands = vec![shell_words(&svc.argv)];
            let mut results = Vec::new();
            for outcome in outcomes {
                let (outcome, command) = outcome?;
                commands.push(command);
                match outcome {
                    GenOutcome::Fatal(r) => bail!("a generator failed: {r}"),
                    GenOutcome::Report(r, j) => {
                        let m = Measure::new(*r, j.clone(), String::new(), String::new());
                        if !m.clean() {
                            bail!("a generator had errors: {}", m.trouble());
                        }
                        iops += m.iops;
                        frames += m.frames_rx;
                        results.push(j);
                    }
                }
            }
            if after.worker_threads != n {
                bail!(
                    "xblade --queues {queues} has {} worker threads, expected {n}",
                    after.worker_threads
                );
            }
            let per_worker: Vec<u64> = after
                .threads
                .iter()
                .map(|(tid, t)| {
                    t - before
                        .threads
                        .iter()
                        .find(|(b, _)| b == tid)
                        .map_or(0, |(_, v)| *v)
                })
                .collect();
            let worker_ticks = after.workers - before.workers;
            let process_ticks = after.process - before.process;
            let entry = match runs
                .iter_mut()
                .find(|r| r.queues == n && r.placement == placement)
            {
                Some(r) => r,
                None => {
                    runs.push(QueueRun {
                        queues: n,
                        placement,
                        pair_ratios: Vec::new(),
                        iops: 0.0,
                        frames: 0,
                        worker_ticks: 0,
                        process_ticks: 0,
                        per_worker_ticks: vec![0; per_worker.len()],
                        repetitions: 0,
                        workers_us_per_frame: 0.0,
                        process_us_per_frame: 0.0,
                        commands: Vec::new(),
                        results: Vec::new(),
                    });
                    runs.last_mut().expect("just pushed")
                }
            };
            entry.iops += iops;
            entry.frames += frames;
            entry.worker_ticks += worker_ticks;
            entry.process_ticks += process_ticks;
            for (acc, v) in entry.per_worker_ticks.iter_mut().zip(&per_worker) {
                *acc += v;
            }
            entry.repetitions += 1;
            if placement == Shared {
                shared.push((n, ticks_us(worker_ticks, frames)));
            }
            entry.commands.extend(commands);
            entry.results.extend(results);
            let cell_line = format!(
                "{} IOPS, {:.2} µs/frame (workers; {:.2} process), worker ticks {:?}",
                report::si(iops),
                ticks_us(worker_ticks, frames),
                ticks_us(process_ticks, frames),
                per_worker
            );
            self.done += 1;
            let t = self.t0.elapsed().as_secs();
            eprintln!(
                "bench [{:>3}/{}] {:>2}:{:02} randread 1k QD16 ram xblade {n} queue(s), {}: {cell_line}",
                self.done,
                self.total,
                t / 60,
                t % 60,
                placement.name()
            );
        }
        for r in &mut runs {
            r.iops /= f64::from(r.repetitions.max(1));
            r.workers_us_per_frame = ticks_us(r.worker_ticks, r.frames);
            r.process_us_per_frame = ticks_us(r.process_ticks, r.frames);
            if r.frames == 0 {
                bail!("xblade with {} queue(s) answered no frames", r.queues);
            }
        }
        if let Some(two) = runs.iter().find(|r| r.queues == 2) {
            if two.per_worker_ticks.contains(&0) {
                bail!(
                    "with 2 queues one worker did no work (ticks per worker {:?}): the load did not \
                     spread over both queues",
                    two.per_worker_ticks
                );
            }
        }
        xps(0x1, 0x2)?;
        let pairs = pair_ratios(&shared);
        if let Some(two) = runs
            .iter_mut()
            .find(|r| r.queues == 2 && r.placement == Shared)
        {
            two.pair_ratios = pairs;
        }
        Ok(runs)
    }
}

/// 2-queue over 1-queue CPU time per frame of each adjacent pair of shared runs (in `runs`
/// order, `(queues, µs per frame)`; a run belongs to one pair at most).
fn pair_ratios(runs: &[(u32, f64)]) -> Vec<f64> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < runs.len() {
        let (a, b) = (runs[i], runs[i + 1]);
        let (one, two) = match (a.0, b.0) {
            (1, 2) => (a.1, b.1),
            (2, 1) => (b.1, a.1),
            _ => {
                i += 1;
                continue;
            }
        };
        if one > 0.0 && two.is_finite() {
            out.push(two / one);
        }
        i += 2;
    }
    out
}

/// The median of `v` (the mean of the middle two of an even count).
pub(crate) fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// CPU time per frame of 2 queues over 1 queue with the same placement (each worker sharing
/// its core with a generator): the per-queue cost, if any.
fn queue_ratio(runs: &[QueueRun]) -> Option<f64> {
    // The median over adjacent pairs: a pair sees one state of the machine, and a slow patch of
    // the VM (every figure +50% for some seconds happens here) spoils one pair, not the result.
    if let Some(m) = runs
        .iter()
        .find(|r| r.queues == 2 && r.placement == Placement::Shared)
        .and_then(|r| median(&r.pair_ratios))
    {
        return Some(m);
    }
    let per = |n: u32| {
        runs.iter()
            .find(|r| r.queues == n && r.placement == Placement::Shared)
            .map(|r| r.workers_us_per_frame)
    };
    match (per(2), per(1)) {
        (Some(two), Some(one)) if one > 0.0 => Some(two / one),
        _ => None,
    }
}

/// Waits until `dev` can be opened exclusively (`O_EXCL`, as xblade opens a block device):
/// the claim of the xblade run before can outlive its process a moment. How long it waited.
fn wait_unclaimed(dev: &Path, limit: Duration) -> Result<Duration> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let start = Instant::now();
    let mut busy = false;
    loop {
        let open = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(dev);
        match open {
            // Closed at once: a plain descriptor's claim ends with its close.
            Ok(_) if busy => return Ok(start.elapsed()),
            Ok(_) => return Ok(Duration::ZERO),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < limit => {
                busy = true;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "opening {} exclusively (busy for {:.1} s)",
                        dev.display(),
                        start.elapsed().as_secs_f64()
                    )
                })
            }
        }
    }
}

/// The filesystem type holding `path` (`ext4`), from `findmnt`.
fn filesystem_of(path: &Path) -> Option<String> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "--target"])
        .arg(path)
        .read()
        .ok()?;
    let fs = out.trim().to_owned();
    (!fs.is_empty()).then_some(fs)
}

/// The first JSON object in `text` (tools print warnings and logs around their JSON), read as
/// a `T`.
fn embedded_json<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    serde_json::from_str(text.get(start..=end)?).ok()
}

/// What an `aoe-bench run` said: its report, or why it had none.
fn classify(out: &cmd::Captured) -> GenOutcome {
    let report = embedded_json::<Value>(&out.stdout_text()).and_then(|j| {
        let r = RunReport::deserialize(&j).ok()?;
        (r.schema == "aoe-bench/run/1").then_some((r, j))
    });
    let stderr = out.stderr_text();
    match report {
        Some((r, j)) => GenOutcome::Report(Box::new(r), j),
        None => GenOutcome::Fatal(
            stderr
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("aoe-bench: error: "))
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    format!(
                        "aoe-bench run failed ({}): {}",
                        out.status,
                        procs::tail(&stderr, 3)
                    )
                }),
        ),
    }
}

/// A measurement that could not be made: in the jumbo rows that means 8 KiB requests do not
/// work (yet) with this aoe-bench or target, which is "n/a"; elsewhere it is an error.
fn failure(jumbo: bool, reason: String) -> Cell {
    if jumbo {
        Cell::NotApplicable(reason)
    } else {
        Cell::Error(reason)
    }
}

/// Microseconds of CPU per frame, from clock ticks.
fn ticks_us(ticks: u64, frames: u64) -> f64 {
    if frames == 0 {
        return f64::NAN;
    }
    ticks as f64 * 1e6 / procs::clock_ticks_per_sec() / frames as f64
}

fn cpu_per_frame(
    before: &Ticks,
    after: &Ticks,
    frames: u64,
    hz: f64,
    workers: bool,
) -> Option<CpuPerFrame> {
    // Ticks are 10 ms: below 50 ms of CPU time (a short verify write) the figure means little.
    if frames == 0 || after.process.saturating_sub(before.process) < 5 {
        return None;
    }
    let per = |t: u64| t as f64 * 1e6 / hz / frames as f64;
    Some(CpuPerFrame {
        workers_us: workers.then(|| per(after.workers.saturating_sub(before.workers))),
        process_us: per(after.process.saturating_sub(before.process)),
        worker_threads: after.worker_threads,
    })
}

/// A rate with a k/M suffix, as the bench's table prints it.
pub(crate) fn report_si(v: f64) -> String {
    report::si(v)
}

/// Seconds since the epoch as `YYYYMMDDTHHMMSSZ` (UTC) and as RFC 3339.
pub(crate) fn utc(t: SystemTime) -> (String, String) {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    (
        format!("{year:04}{month:02}{day:02}T{h:02}{m:02}{s:02}Z"),
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z"),
    )
}

/// Host facts for the report.
#[derive(Debug, serde::Serialize)]
struct HostInfo {
    kernel: String,
    cpus: usize,
    cpu_model: Option<String>,
    clock_ticks_per_s: f64,
    vblade_package: Option<String>,
    fio: Option<String>,
}

fn host_info() -> HostInfo {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default().trim().to_owned();
    let version = |argv: &[&str]| {
        from_argv(argv)
            .read()
            .ok()
            .map(|o| o.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    HostInfo {
        kernel: read("/proc/sys/kernel/osrelease"),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()),
        clock_ticks_per_s: procs::clock_ticks_per_sec(),
        vblade_package: version(&["dpkg-query", "-W", "-f", "${Version}", "vblade"]),
        fio: version(&["fio", "--version"]),
    }
}

/// A scratch control socket and state directory for the xblade under test (fresh per bench
/// process): never the machine's /run/xblade or /var/lib/xblade, whose AoE state (a MAC mask
/// list another run left for e1.0) would otherwise apply to the bench's export.
fn scratch_control_args() -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("xblade-bench-{}", std::process::id()));
    vec![
        "--control".into(),
        dir.join("control.sock").display().to_string(),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: Args,
        }
        let parse = |line: &str| -> Result<Opts> {
            let argv = std::iter::once("bench").chain(line.split_whitespace());
            Opts::new(Cli::try_parse_from(argv)?.bench)
        };
        let o = parse("--quick").unwrap();
        assert!(o.quick && !o.keep_lab && o.time_s == 1.0);
        let o = parse("--time 3 --keep-lab").unwrap();
        assert!(!o.quick && o.keep_lab && o.time_s == 3.0);
        assert!(parse("").unwrap().time_s == 1.5);
        assert!(parse("--time 0").is_err());
        assert!(parse("--time soon").is_err());
        assert!(parse("--fast").is_err());
    }

    #[test]
    fn plans_every_case() {
        let (rows, groups) = plan(false);
        // 4 patterns x 3 depths x 2 back ends + blk: randread and randwrite at QD 16 and 64;
        // 2 verify rows x 3 back ends; 3 jumbo x 2 + blk at QD 16 and 64.
        assert_eq!(rows.len(), (24 + 4) + 6 + (6 + 2));
        assert_eq!(
            groups.iter().map(|g| g.rows.len()).sum::<usize>(),
            rows.len()
        );
        assert!(rows.iter().all(|r| r.problems().len() == 4), "all pending");
        // A blk row sits in the same group as (right after) the disk row of its case.
        for g in groups.iter().filter(|g| g.section != Section::Verify) {
            for w in g.rows.windows(2) {
                let (a, b) = (&rows[w[0]], &rows[w[1]]);
                assert_eq!((a.rw, a.bs, a.qd), (b.rw, b.bs, b.qd));
                if b.backend == Backend::Blk {
                    assert_eq!(a.backend, Backend::Disk);
                }
            }
        }
        let blk: Vec<String> = rows
            .iter()
            .filter(|r| r.backend == Backend::Blk && r.section != Section::Verify)
            .map(|r| format!("{} QD{}", r.case(), r.qd))
            .collect();
        assert_eq!(
            blk,
            [
                "randread 1k QD16",
                "randread 1k QD64",
                "randwrite 1k QD16",
                "randwrite 1k QD64",
                "randread 8k QD16",
                "randread 8k QD64"
            ]
        );
        let (quick, _) = plan(true);
        let has = |s: Section, b: Backend| quick.iter().any(|r| r.section == s && r.backend == b);
        assert!(has(Section::Main, Backend::Ram) && has(Section::Main, Backend::Disk));
        assert!(has(Section::Verify, Backend::Ram) && has(Section::Jumbo, Backend::Ram));
        // CI's smoke run takes the block-device path: reads, durable writes, verify.
        assert!(has(Section::Main, Backend::Blk) && has(Section::Verify, Backend::Blk));
        assert!(quick
            .iter()
            .any(|r| r.backend == Backend::Blk && r.rw == "randwrite"));
        let blk = quick.iter().find(|r| r.backend == Backend::Blk).unwrap();
        assert_eq!(blk.ceiling(), Thing::Fio);
        assert_eq!(Bench::order(1, &[1, 2, 3, 4]), vec![2, 3, 4, 1]);
    }

    #[test]
    fn failed_runs_are_errors_or_na() {
        use std::os::unix::process::ExitStatusExt as _;
        let out = |stdout: &str, stderr: &str, code: i32| cmd::Captured {
            line: "aoe-bench run".into(),
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: stdout.into(),
            stderr: stderr.into(),
        };
        let msg = "--bs 16 does not fit a frame here: at most 7 sectors";
        let GenOutcome::Fatal(reason) =
            classify(&out("", &format!("aoe-bench: error: {msg}\n"), 1))
        else {
            panic!("not fatal");
        };
        assert_eq!(reason, msg);
        assert!(matches!(failure(true, reason.clone()), Cell::NotApplicable(r) if r == msg));
        assert!(matches!(failure(false, reason), Cell::Error(_)));
        let GenOutcome::Fatal(reason) = classify(&out("", "boom\n", 1)) else {
            panic!("not fatal");
        };
        assert!(reason.contains("boom"), "{reason}");
        let report = r#"{"schema": "aoe-bench/run/1", "ok": false, "errors": {"total": 3}}"#;
        let GenOutcome::Report(r, j) = classify(&out(report, "", 1)) else {
            panic!("no report");
        };
        let m = Measure::new(*r, j, String::new(), String::new());
        assert!(!m.clean() && m.trouble().starts_with("3 errors"));
        // Null numbers (an empty histogram's NaN) read as 0; another schema is no report.
        let report = r#"warning: x
            {"schema": "aoe-bench/run/1", "ok": true, "iops": 5.5,
             "latency_us": {"all": {"p99": null}}, "errors": {"total": 0, "messages": ["m"]}}"#;
        let GenOutcome::Report(r, j) = classify(&out(report, "", 0)) else {
            panic!("no report");
        };
        let m = Measure::new(*r, j, String::new(), String::new());
        assert!(m.clean() && m.iops == 5.5 && m.p99_us == 0.0 && m.stop_reason == "?");
        assert_eq!(m.first_error.as_deref(), Some("m"));
        let other = r#"{"schema": "aoe-bench/echo/1"}"#;
        assert!(matches!(classify(&out(other, "", 0)), GenOutcome::Fatal(_)));
    }

    #[test]
    fn queue_pairs_and_median() {
        let r = pair_ratios(&[(1, 2.0), (2, 2.2), (2, 3.0), (1, 3.0), (1, 2.0), (2, 1.0)]);
        assert_eq!(r.len(), 3);
        assert!((r[0] - 1.1).abs() < 1e-9 && (r[1] - 1.0).abs() < 1e-9 && r[2] == 0.5);
        // A lone run is skipped, not paired across.
        assert_eq!(pair_ratios(&[(2, 1.0), (2, 1.0), (1, 1.0)]), vec![1.0]);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[1.0, 1.2, 5.0, 1.1]), Some(1.15));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn utc_times() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_599_960);
        assert_eq!(utc(t).0, "20261125T094600Z");
        assert_eq!(utc(SystemTime::UNIX_EPOCH).1, "1970-01-01T00:00:00Z");
    }
}
