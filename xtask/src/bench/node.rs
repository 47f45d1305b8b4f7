//! A storage node's load (`cargo xtask bench --node`, and the last section of the full bench):
//! 16 exports on the target's one interface, 4 initiators, for xblade, vblade and the ceilings.
//!
//! - **Exports**: shelf 1, slots 0–7 RAM-backed (files on tmpfs, `/dev/shm/xbl-node/`), slots
//!   8–15 file-backed (files on the root filesystem, `target/lab/node/`, written out in full so
//!   that reads reach the disk), [`NODE_MIB`] MiB each.
//! - **Initiators**: 4 macvlans on the initiator's veth end (`xbl-n0`..`xbl-n3`, separate MACs),
//!   each driving 4 exports (2 RAM, 2 file: initiator k has slots 2k, 2k+1, 8+2k, 9+2k) with
//!   1 KiB random reads and writes (`--rw randrw`, 70% reads), window 16 per export,
//!   `--verify`. One `aoe-bench run` process is all 4 initiators (`-i xbl-n0,...,xbl-n3 -t
//!   ...`: one AF_XDP socket per macvlan, every export its own window, workload and report),
//!   on CPU 0, the target on CPU 1. Several generator processes on one core take turns in
//!   scheduler time slices: with 4 (one per initiator) every export's p99 was the ~12 ms the
//!   other three held the core, even against echo, so the p99 measured the generators; 16
//!   (one per export) would be worse. One thread serves all 16 windows without that.
//! - **Targets**, one at a time on the target's veth end: xblade (one daemon, one TOML with the
//!   16 exports, started as `taskset -c 1 xblade serve --config F`: its default CPU placement
//!   inside the CPU set it is given), vblade as Debian deploys it (16 processes, one per export,
//!   `ionice -c2 -n7 vblade SHELF SLOT IF FILE $options` as `vblade@.service` runs it, all under
//!   `taskset -c 1`; options `-d -s` on the file-backed exports so that writes are as durable
//!   as xblade's, none on tmpfs), and `aoe-bench echo --slots 16` (no storage: the ceiling of
//!   this topology, generators included). Checking and patterning every sector costs the
//!   generators' core, and echo cannot be verified, so xblade runs a second time without
//!   `--verify` (`xblade-noverify`): that run is what echo is compared with. fio (8 jobs, one
//!   per disk file, the same pattern and depth, `--sync=dsync`, on CPU 1) is the disk's ceiling
//!   for the file-backed half.
//! - **Rounds**: [`NODE_ROUNDS`] rounds, each running every target once, every other round in
//!   reverse order (ABCD DCBA ...): this VM's throughput drifts by tens of percent from minute to
//!   minute. The table adds each target's runs up; the issue's ratios between targets are the
//!   median of the rounds' ratios.
//! - **CPU time per answered frame**: utime + stime of every thread of the target process
//!   (`/proc/PID/stat`, which counts exited threads too), of all 16 vblade processes, or of
//!   echo, from just before the generators start to just after they end, divided by the
//!   responses the generators received. xblade's workers count the time they spin idle
//!   (`spin_ns` in `xblade status --json`, read before and after); the verdict takes it out of
//!   xblade's figure (under the node load it is ~0: the worker is never idle). vblade never
//!   spins.
//! - **Class ceilings**, apart from the mixed node, [`CEILING_PAIRS`] adjacent pairs each,
//!   alternating which runs first, the median ratio: all 16 exports RAM-backed against echo
//!   (the RAM class: in the mixed node the target's core also runs the kernel's half of the disk
//!   I/O, which echo never does), and the 8 file-backed exports alone against fio on the same
//!   files (the file class: the disk bounds it at about a third of echo's rate here, so the
//!   disk is its ceiling).
//! - **Fairness**: each export's IOPS over the mean of its class (RAM or file: the two classes
//!   differ by design), slowest and fastest.
//!
//! Failures (a generator error, a verify error, a target that would not start) are problems:
//! the bench exits non-zero. Whether the issue's targets are met is reported, never asserted.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    cmd::{check_interrupted, from_argv, shell_words, CommandExt as _},
    lab::Lab,
    project_root,
};

use super::{
    embedded_json, median, procs, report, Bench, Service, GEN_CPU, READY_TIMEOUT, STOP_GRACE,
    TARGET_CPU,
};

/// Exports: slots 0..EXPORTS of shelf [`NODE_SHELF`], the first half RAM-backed.
pub const EXPORTS: u8 = 16;
pub const NODE_SHELF: u16 = 1;
/// Initiators (macvlans `xbl-n0`..), each driving [`PER_INITIATOR`] exports.
pub const INITIATORS: usize = 4;
pub const PER_INITIATOR: usize = 4;
/// Size of each export, MiB.
pub const NODE_MIB: u64 = 32;
/// Window per export.
pub const NODE_QD: u32 = 16;
/// Percent reads of the mix.
pub const NODE_READ_PCT: u8 = 70;
/// Rounds of the mixed node (every target once per round).
pub const NODE_ROUNDS: usize = 4;
/// Adjacent pairs of runs (xblade, then its ceiling, or the other way round) each class's
/// ceiling ratio is the median of.
pub const CEILING_PAIRS: usize = 6;
/// Progress steps of the node section: 4 targets, fio, 2 class ceilings.
pub const NODE_STEPS: usize = 7;

/// What backs an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// A file on tmpfs (xblade maps it).
    Ram,
    /// A file on the root filesystem (O_DIRECT, durable writes).
    File,
}

pub fn class_of(slot: u8) -> Class {
    if slot < EXPORTS / 2 {
        Class::Ram
    } else {
        Class::File
    }
}

/// The slots initiator `k` drives: two RAM-backed, two file-backed.
pub fn slots_of(k: usize) -> [u8; PER_INITIATOR] {
    let k = k as u8;
    let half = EXPORTS / 2;
    [2 * k, 2 * k + 1, half + 2 * k, half + 2 * k + 1]
}

/// The node's stores and initiators on a lab that is up. Dropping it removes the macvlans
/// and the store files.
pub struct NodeLab {
    pub lab: Lab,
    /// Store of each slot.
    pub stores: Vec<PathBuf>,
    /// Store of each slot when every export is RAM-backed (the RAM class's ceiling): the
    /// RAM stores of slots 0–7 and 8 more on tmpfs, made by [`NodeLab::make_ram_stores`].
    pub ram_stores: Vec<PathBuf>,
    /// Initiator interfaces (macvlans in the initiator namespace).
    pub initiators: Vec<String>,
    pub sectors: u64,
    ram_dir: PathBuf,
}

impl NodeLab {
    /// Creates the 16 stores (kept from an earlier run when their size is right) and
    /// `initiators` macvlans `xbl-n0`.. on the initiator's veth end.
    pub fn setup(lab: &Lab, initiators: usize) -> Result<NodeLab> {
        let ram_dir = PathBuf::from("/dev/shm/xbl-node");
        let disk_dir = project_root().join("target").join("lab").join("node");
        for d in [&ram_dir, &disk_dir] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let bytes = NODE_MIB << 20;
        let mut stores = Vec::new();
        let mut ram_stores = Vec::new();
        for slot in 0..EXPORTS {
            let ram = ram_dir.join(format!("e{NODE_SHELF}.{slot}.img"));
            let path = match class_of(slot) {
                Class::Ram => ram.clone(),
                Class::File => disk_dir.join(format!("e{NODE_SHELF}.{slot}.img")),
            };
            write_store(&path)?;
            stores.push(path);
            ram_stores.push(ram);
        }
        let mut node = NodeLab {
            lab: lab.clone(),
            stores,
            ram_stores,
            initiators: Vec::new(),
            sectors: bytes / 512,
            ram_dir,
        };
        let ns = lab.init_ns.clone();
        // New links in the initiator namespace come up without IPv6, so they stay silent.
        let _ = from_argv(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.default.disable_ipv6=1",
        ])
        .capture_within(Duration::from_secs(10));
        for k in 0..initiators {
            let name = format!("xbl-n{k}");
            // A leftover from an interrupted run.
            let _ = from_argv(&["ip", "-n", &ns, "link", "del", &name])
                .capture_within(Duration::from_secs(10));
            from_argv(&[
                "ip",
                "-n",
                &ns,
                "link",
                "add",
                &name,
                "link",
                &lab.init_if,
                "type",
                "macvlan",
                "mode",
                "bridge",
            ])
            .capture_within(Duration::from_secs(10))?
            .check()?;
            node.initiators.push(name.clone());
            from_argv(&["ip", "-n", &ns, "link", "set", &name, "up"])
                .capture_within(Duration::from_secs(10))?
                .check()?;
        }
        Ok(node)
    }

    /// `xblade serve`'s configuration: the 16 exports on the target's interface, queue 0, no
    /// CPUs named (the default placement inside the CPU set xblade is started with).
    pub fn xblade_toml(&self, control: &Path, state_dir: &Path) -> String {
        self.xblade_toml_with(&self.stores, control, state_dir)
    }

    /// [`NodeLab::xblade_toml`] with slot i on `stores[i]`.
    pub fn xblade_toml_with(&self, stores: &[PathBuf], control: &Path, state_dir: &Path) -> String {
        let mut s = format!(
            "# cargo xtask bench --node / soak: {EXPORTS} exports, half RAM-backed\n\
             [daemon]\ncontrol = {:?}\nstate_dir = {:?}\n\n\
             [[interface]]\nname = {:?}\nqueues = [0]\n",
            control.display().to_string(),
            state_dir.display().to_string(),
            self.lab.target_if
        );
        for (slot, path) in stores.iter().enumerate() {
            s.push_str(&format!(
                "\n[[export]]\nshelf = {NODE_SHELF}\nslot = {slot}\npath = {:?}\n",
                path.display().to_string()
            ));
        }
        s
    }

    /// One initiator's `aoe-bench run` over its 4 exports (`slots`), from the initiator
    /// namespace, on CPU [`GEN_CPU`].
    pub fn gen_argv(
        &self,
        aoe_bench: &Path,
        k: usize,
        slots: &[u8],
        rest: &[String],
    ) -> Vec<String> {
        self.gen_argv_many(aoe_bench, &[(k, slots)], rest)
    }

    /// The node load from one aoe-bench process, the 4 initiators over all 16 exports: 1 KiB
    /// random reads and writes (`NODE_READ_PCT` reads) at `NODE_QD` per export for `time`
    /// seconds, with `seed`, verified if `verify`; `extra` options after the common ones.
    /// With `only`, just the exports of that class, each initiator its own of them.
    pub fn load_argv(
        &self,
        only: Option<Class>,
        aoe_bench: &Path,
        time: &str,
        seed: &str,
        verify: bool,
        extra: &[&str],
    ) -> Vec<String> {
        let (read_pct, qd) = (NODE_READ_PCT.to_string(), NODE_QD.to_string());
        let mut rest: Vec<String> = [
            "--rw",
            "randrw",
            "--mix",
            &read_pct,
            "--bs",
            "2",
            "--qd",
            &qd,
            "--seed",
            seed,
            "--time",
            time,
            "--json",
            "--no-progress",
            "--discover-timeout-ms",
            "5000",
        ]
        .map(String::from)
        .to_vec();
        if verify {
            rest.push("--verify".into());
        }
        rest.extend(extra.iter().map(|a| a.to_string()));
        let slots: Vec<Vec<u8>> = (0..INITIATORS)
            .map(|k| {
                slots_of(k)
                    .into_iter()
                    .filter(|&s| only.is_none_or(|c| class_of(s) == c))
                    .collect()
            })
            .collect();
        let all: Vec<(usize, &[u8])> = slots.iter().enumerate().map(|(k, s)| (k, &s[..])).collect();
        self.gen_argv_many(aoe_bench, &all, &rest)
    }

    /// One `aoe-bench run` for several initiators (`(k, slots)`: initiator k's interface
    /// drives those slots; as many slots each), one socket per initiator, from one thread.
    pub fn gen_argv_many(
        &self,
        aoe_bench: &Path,
        initiators: &[(usize, &[u8])],
        rest: &[String],
    ) -> Vec<String> {
        let ifaces: Vec<&str> = initiators
            .iter()
            .map(|(k, _)| self.initiators[*k].as_str())
            .collect();
        let targets: Vec<String> = initiators
            .iter()
            .flat_map(|(_, slots)| slots.iter())
            .map(|s| format!("e{NODE_SHELF}.{s}"))
            .collect();
        let mut a: Vec<String> = vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.lab.init_ns.clone(),
            aoe_bench.display().to_string(),
            "run".into(),
            "-i".into(),
            ifaces.join(","),
            "--cpu".into(),
            GEN_CPU.to_string(),
            "-t".into(),
            targets.join(","),
        ];
        a.extend(rest.iter().cloned());
        a
    }
}

impl NodeLab {
    /// Makes the RAM class's 8 extra tmpfs stores (only its ceiling uses them).
    pub fn make_ram_stores(&self) -> Result<()> {
        self.ram_stores.iter().try_for_each(|p| write_store(p))
    }
}

impl Drop for NodeLab {
    fn drop(&mut self) {
        for name in &self.initiators {
            let _ = from_argv(&["ip", "-n", &self.lab.init_ns, "link", "del", name])
                .capture_within(Duration::from_secs(10));
        }
        // The RAM stores hold memory: remove them. The disk files stay for the next run.
        let _ = fs::remove_dir_all(&self.ram_dir);
    }
}

/// A store of [`NODE_MIB`] MiB at `path`, kept from an earlier run when its size is right.
fn write_store(path: &Path) -> Result<()> {
    let bytes = NODE_MIB << 20;
    if fs::metadata(path).map_or(true, |m| m.len() != bytes) {
        write_zeros(path, bytes)?;
    }
    Ok(())
}

/// Writes `bytes` zero bytes to `path` (real extents on a disk filesystem), synced.
fn write_zeros(path: &Path, bytes: u64) -> Result<()> {
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Results.

/// One export under one target.
#[derive(Clone, Debug, Serialize)]
pub struct ExportRun {
    pub name: String,
    pub class: Class,
    pub iops: f64,
    pub mb_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub retransmits: u64,
    pub errors: u64,
    pub verify_checked_sectors: u64,
    pub verify_errors: u64,
    /// Latency buckets (upper bound ns, count), to merge into the class's percentiles.
    #[serde(skip)]
    pub buckets: Vec<(u64, u64)>,
}

/// A set of exports (all, RAM-backed, file-backed) under one target.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub exports: usize,
    pub iops: f64,
    pub mb_s: f64,
    /// Over every request of these exports.
    pub p50_us: f64,
    pub p99_us: f64,
    /// Slowest and fastest export's IOPS over the mean of the set.
    pub slowest_over_mean: f64,
    pub fastest_over_mean: f64,
}

impl Summary {
    fn of<'a>(exports: impl Iterator<Item = &'a ExportRun>) -> Summary {
        let v: Vec<&ExportRun> = exports.collect();
        if v.is_empty() {
            return Summary::default();
        }
        let iops: f64 = v.iter().map(|e| e.iops).sum();
        let mean = iops / v.len() as f64;
        let min = v.iter().map(|e| e.iops).fold(f64::INFINITY, f64::min);
        let max = v.iter().map(|e| e.iops).fold(0.0, f64::max);
        let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
        for e in &v {
            for &(ns, c) in &e.buckets {
                *merged.entry(ns).or_default() += c;
            }
        }
        Summary {
            exports: v.len(),
            iops,
            mb_s: v.iter().map(|e| e.mb_s).sum(),
            p50_us: quantile(&merged, 0.5) / 1e3,
            p99_us: quantile(&merged, 0.99) / 1e3,
            slowest_over_mean: if mean > 0.0 { min / mean } else { 0.0 },
            fastest_over_mean: if mean > 0.0 { max / mean } else { 0.0 },
        }
    }
}

/// The value at quantile `q` of merged histogram buckets (upper bound, count): the upper bound
/// of the bucket holding the `ceil(q * n)`-th value, as aoe-bench reports its own.
pub fn quantile(buckets: &BTreeMap<u64, u64>, q: f64) -> f64 {
    let total: u64 = buckets.values().sum();
    if total == 0 {
        return f64::NAN;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (&ns, &c) in buckets {
        seen += c;
        if seen >= rank {
            return ns as f64;
        }
    }
    buckets.keys().next_back().map_or(f64::NAN, |&n| n as f64)
}

/// One target under the node load.
#[derive(Clone, Debug, Serialize)]
pub struct TargetRun {
    pub target: &'static str,
    /// Every generator ran clean (no errors, no verify errors) and the target stayed up.
    pub ok: bool,
    pub problems: Vec<String>,
    pub all: Summary,
    pub ram: Summary,
    pub file: Summary,
    /// Responses the generators received.
    pub frames: u64,
    /// CPU time of the target's processes over the window, in clock ticks, and per frame.
    pub cpu_ticks: u64,
    pub cpu_us_per_frame: Option<f64>,
    /// The target's CPU time over the window's length (100: one core's worth).
    pub cpu_busy_pct: f64,
    /// xblade: the time its workers spent spinning idle over the window (their own count,
    /// `xblade status`'s `spin_ns`), seconds, and the CPU time per frame without it.
    pub spin_s: Option<f64>,
    pub cpu_us_per_frame_busy: Option<f64>,
    pub window_s: f64,
    pub exports: Vec<ExportRun>,
    pub target_commands: Vec<String>,
    pub generator_commands: Vec<String>,
    pub generator_results: Vec<Value>,
}

/// fio on the 8 disk files: the disk's ceiling for the file-backed half.
#[derive(Clone, Debug, Serialize)]
pub struct FioHalf {
    pub iops: f64,
    pub mb_s: f64,
    pub read_p99_us: Option<f64>,
    pub write_p99_us: Option<f64>,
    pub command: String,
}

/// One target's figures in one round of the mixed node, for the rounds' ratios.
#[derive(Clone, Debug, Serialize)]
pub struct RoundFigures {
    pub target: &'static str,
    pub ok: bool,
    pub iops: f64,
    pub ram_iops: f64,
    pub file_iops: f64,
    pub p99_us: f64,
    pub ram_p99_us: f64,
    pub file_p99_us: f64,
    pub cpu_us_per_frame: Option<f64>,
    pub cpu_us_per_frame_busy: Option<f64>,
}

impl RoundFigures {
    fn of(t: &TargetRun) -> RoundFigures {
        RoundFigures {
            target: t.target,
            ok: t.ok,
            iops: t.all.iops,
            ram_iops: t.ram.iops,
            file_iops: t.file.iops,
            p99_us: t.all.p99_us,
            ram_p99_us: t.ram.p99_us,
            file_p99_us: t.file.p99_us,
            cpu_us_per_frame: t.cpu_us_per_frame,
            cpu_us_per_frame_busy: t.cpu_us_per_frame_busy,
        }
    }
}

/// One adjacent pair of a class's ceiling measurement.
#[derive(Clone, Debug, Serialize)]
pub struct CeilingPair {
    pub xblade_iops: f64,
    pub ceiling_iops: f64,
    pub ratio: f64,
    /// Which ran first.
    pub xblade_first: bool,
}

/// A class's ceiling, measured apart from the mixed node: xblade against what bounds that
/// class on this machine, in [`CEILING_PAIRS`] adjacent pairs.
#[derive(Clone, Debug, Serialize)]
pub struct Ceiling {
    pub class: Class,
    pub method: String,
    pub pairs: Vec<CeilingPair>,
    pub median_ratio: Option<f64>,
    /// xblade's runs of this measurement (exports, latency, CPU, spinning).
    pub xblade_runs: Vec<TargetRun>,
    pub problems: Vec<String>,
}

/// A target of the issue and whether this run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub what: String,
    pub value: Option<f64>,
    pub goal: String,
    pub met: Option<bool>,
}

/// The node section.
#[derive(Clone, Debug, Serialize)]
pub struct NodeReport {
    pub method: String,
    pub time_s: f64,
    pub export_mib: u64,
    /// Every target's runs added up (the table).
    pub runs: Vec<TargetRun>,
    /// Each round's figures (the issue's ratios are the median of the rounds').
    pub rounds: Vec<Vec<RoundFigures>>,
    pub fio_file_half: Option<FioHalf>,
    pub fio_error: Option<String>,
    pub ceilings: Vec<Ceiling>,
    pub verdicts: Vec<Verdict>,
    pub problems: Vec<String>,
}

/// What the node reads of an `aoe-bench run` with several targets (`aoe-bench/runs/1`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Runs {
    schema: String,
    runs: Vec<OneRun>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct OneRun {
    pub ok: bool,
    pub stop_reason: Option<String>,
    pub error: Option<String>,
    pub target: RunTarget,
    pub iops: f64,
    pub mb_s: f64,
    pub latency_us: Lat,
    pub latency_buckets_ns: Vec<(u64, u64)>,
    pub frames: RunFrames,
    pub flow: RunFlow,
    pub errors: RunErrors,
    pub verify: RunVerify,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RunTarget {
    pub device: String,
    pub slot: u8,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Lat {
    pub all: Pct,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Pct {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RunFrames {
    pub rx: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RunFlow {
    pub retransmits: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RunErrors {
    pub total: u64,
    pub messages: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RunVerify {
    pub checked_sectors: u64,
    pub errors: u64,
}

/// The per-target runs of one `aoe-bench run` process's output (one target: `run/1`, several:
/// `runs/1`), or why there are none.
pub(crate) fn parse_runs(stdout: &str, stderr: &str) -> Result<(Vec<OneRun>, Value)> {
    let Some(j) = embedded_json::<Value>(stdout) else {
        let why = stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("aoe-bench: error: "))
            .map(str::to_owned)
            .unwrap_or_else(|| procs::tail(stderr, 3));
        bail!("aoe-bench printed no report: {why}");
    };
    match j.get("schema").and_then(Value::as_str) {
        Some("aoe-bench/runs/1") => {
            let r = Runs::deserialize(&j).context("reading aoe-bench's runs/1 report")?;
            debug_assert_eq!(r.schema, "aoe-bench/runs/1");
            Ok((r.runs, j))
        }
        Some("aoe-bench/run/1") => {
            let r = OneRun::deserialize(&j).context("reading aoe-bench's run/1 report")?;
            Ok((vec![r], j))
        }
        other => bail!("aoe-bench printed a report of schema {other:?}, not run/1 or runs/1"),
    }
}

impl ExportRun {
    fn of(r: &OneRun) -> ExportRun {
        ExportRun {
            name: r.target.device.clone(),
            class: class_of(r.target.slot),
            iops: r.iops,
            mb_s: r.mb_s,
            p50_us: r.latency_us.all.p50.unwrap_or(f64::NAN),
            p99_us: r.latency_us.all.p99.unwrap_or(f64::NAN),
            retransmits: r.flow.retransmits,
            errors: r.errors.total,
            verify_checked_sectors: r.verify.checked_sectors,
            verify_errors: r.verify.errors,
            buckets: r.latency_buckets_ns.clone(),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Running it.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeTarget {
    Xblade,
    /// xblade with the generator's --verify off: what echo (which cannot verify) is compared
    /// with, since checking and patterning every sector costs the generator's core.
    XbladeNoVerify,
    Vblade,
    Echo,
}

impl NodeTarget {
    fn name(self) -> &'static str {
        match self {
            NodeTarget::Xblade => "xblade",
            NodeTarget::XbladeNoVerify => "xblade-noverify",
            NodeTarget::Vblade => "vblade",
            NodeTarget::Echo => "echo",
        }
    }
}

/// Runs the node section on the lab the bench brought up (1 queue, MTU 1500).
pub(super) fn run(bench: &mut Bench, time_s: f64) -> Result<NodeReport> {
    bench.ensure_lab(1500, 1)?;
    let node = NodeLab::setup(bench.lab(), INITIATORS)?;
    let mut report = NodeReport {
        method: format!(
            "{EXPORTS} exports e{NODE_SHELF}.0-{} on {} ({} RAM-backed on tmpfs, {} file-backed \
             on the root filesystem, {NODE_MIB} MiB each); {INITIATORS} initiators (macvlans \
             xbl-n0..) each driving {PER_INITIATOR} exports, all from one aoe-bench process \
             (one socket per initiator) on CPU {GEN_CPU}, 1 KiB randrw {NODE_READ_PCT}% \
             reads, QD {NODE_QD} per export, --verify (xblade-noverify and echo: without); \
             targets on CPU {TARGET_CPU}",
            EXPORTS - 1,
            node.lab.target_if,
            EXPORTS / 2,
            EXPORTS / 2
        ),
        time_s,
        export_mib: NODE_MIB,
        runs: Vec::new(),
        rounds: Vec::new(),
        fio_file_half: None,
        fio_error: None,
        ceilings: Vec::new(),
        verdicts: Vec::new(),
        problems: Vec::new(),
    };
    // NODE_ROUNDS rounds, every other one in reverse order (ABCD DCBA ABCD DCBA): the lab's
    // throughput drifts by tens of percent from minute to minute on this VM, so each target's
    // runs are added up for the table, and the issue's ratios are the median of the rounds'
    // (each round's targets ran minutes apart at most, never an hour).
    let order = [
        NodeTarget::Xblade,
        NodeTarget::Vblade,
        NodeTarget::XbladeNoVerify,
        NodeTarget::Echo,
    ];
    let mut rounds: Vec<Vec<TargetRun>> = Vec::new();
    for r in 0..NODE_ROUNDS {
        let mut round = Vec::new();
        let ord: Vec<NodeTarget> = if r % 2 == 0 {
            order.to_vec()
        } else {
            order.iter().rev().copied().collect()
        };
        for t in ord {
            check_interrupted()?;
            let run = measure(bench, &node, t, time_s)?;
            eprintln!(
                "bench       node round {}/{NODE_ROUNDS} {}: {} IOPS ({} RAM, {} file), {} µs/frame",
                r + 1,
                t.name(),
                report::si(run.all.iops),
                report::si(run.ram.iops),
                report::si(run.file.iops),
                run.cpu_us_per_frame
                    .map_or("?".into(), |c| format!("{c:.2}")),
            );
            round.push(run);
        }
        report.rounds.push(
            round
                .iter()
                .map(RoundFigures::of)
                .collect::<Vec<RoundFigures>>(),
        );
        rounds.push(round);
    }
    for t in order {
        let run = rounds
            .iter()
            .filter_map(|r| r.iter().find(|x| x.target == t.name()).cloned())
            .reduce(merge)
            .expect("every target runs in every round");
        let line = format!(
            "node {}: {} IOPS ({} RAM, {} file), {:.1} MB/s, p50 {} p99 {} µs, {} µs/frame, CPU {:.0}%{}",
            t.name(),
            report::si(run.all.iops),
            report::si(run.ram.iops),
            report::si(run.file.iops),
            run.all.mb_s,
            report::us(run.all.p50_us),
            report::us(run.all.p99_us),
            run.cpu_us_per_frame
                .map_or("?".into(), |c| format!("{c:.2}")),
            run.cpu_busy_pct,
            if run.ok {
                String::new()
            } else {
                format!("  PROBLEM: {}", run.problems.join("; "))
            }
        );
        bench.done += 1;
        eprintln!("bench [{:>3}/{}] {line}", bench.done, bench.total);
        for p in &run.problems {
            report.problems.push(format!("node {}: {p}", t.name()));
        }
        report.runs.push(run);
    }
    check_interrupted()?;
    match fio_file_half(&node, time_s) {
        Ok(f) => {
            bench.done += 1;
            eprintln!(
                "bench [{:>3}/{}] node fio on the 8 disk files: {} IOPS, {:.1} MB/s",
                bench.done,
                bench.total,
                report::si(f.iops),
                f.mb_s
            );
            report.fio_file_half = Some(f);
        }
        Err(e) => {
            check_interrupted()?;
            eprintln!("bench: node fio: {e:#}");
            report.fio_error = Some(format!("{e:#}"));
        }
    }
    for class in [Class::Ram, Class::File] {
        check_interrupted()?;
        let c = ceiling(bench, &node, class, time_s)?;
        bench.done += 1;
        eprintln!(
            "bench [{:>3}/{}] node {} ceiling: xblade / {} median {} over {} pairs ({}){}",
            bench.done,
            bench.total,
            match class {
                Class::Ram => "RAM",
                Class::File => "file",
            },
            match class {
                Class::Ram => "echo",
                Class::File => "fio",
            },
            c.median_ratio.map_or("?".into(), |r| format!("{r:.3}")),
            c.pairs.len(),
            c.pairs
                .iter()
                .map(|p| format!("{:.3}", p.ratio))
                .collect::<Vec<_>>()
                .join(" "),
            if c.problems.is_empty() {
                String::new()
            } else {
                format!("  PROBLEM: {}", c.problems.join("; "))
            }
        );
        for p in &c.problems {
            report.problems.push(format!("node ceiling: {p}"));
        }
        report.ceilings.push(c);
    }
    report.verdicts = verdicts(&report);
    Ok(report)
}

/// A class's ceiling in [`CEILING_PAIRS`] adjacent pairs of `time_s` runs, alternating which
/// runs first, none verified (echo and fio cannot be):
/// - RAM: xblade with all 16 exports RAM-backed against echo answering the same 16, under the
///   node load. In the mixed node the target's core also runs the kernel's half of the disk
///   I/O (submission, completion interrupts, dio workers: ~19% of the core at 56k file IOPS
///   here), which echo never pays; this measures what xblade's RAM path gives of the ceiling.
/// - File: xblade (the mixed node's 16 exports) with only the 8 file-backed ones driven
///   against fio on the same files with the same pattern and depth: the disk bounds that
///   class far below echo, so the disk is its ceiling.
fn ceiling(bench: &Bench, node: &NodeLab, class: Class, time_s: f64) -> Result<Ceiling> {
    let t = time_s.to_string();
    if class == Class::Ram {
        node.make_ram_stores()?;
    }
    let (method, stores, only, exports) = match class {
        Class::Ram => (
            format!(
                "all {EXPORTS} exports RAM-backed, the node load without --verify, against \
                 aoe-bench echo --slots {EXPORTS}; {CEILING_PAIRS} adjacent pairs of {time_s} s, \
                 alternating which runs first; the median ratio"
            ),
            &node.ram_stores,
            None,
            usize::from(EXPORTS),
        ),
        Class::File => (
            format!(
                "the node's {EXPORTS} exports, only the {} file-backed ones driven (2 per \
                 initiator, the node load's pattern and depth, without --verify), against fio \
                 on the same files; {CEILING_PAIRS} adjacent pairs of {time_s} s, alternating \
                 which runs first; the median ratio",
                EXPORTS / 2
            ),
            &node.stores,
            Some(Class::File),
            usize::from(EXPORTS / 2),
        ),
    };
    let argv = node.load_argv(only, &bench.bins.aoe_bench, &t, "200", false, &[]);
    let mut c = Ceiling {
        class,
        method,
        pairs: Vec::new(),
        median_ratio: None,
        xblade_runs: Vec::new(),
        problems: Vec::new(),
    };
    // One side of a pair: its IOPS if it ran clean; its problems (and xblade's run) go to `c`.
    let side = |xblade: bool, c: &mut Ceiling| -> Result<Option<f64>> {
        check_interrupted()?;
        let (target, label) = match (xblade, class) {
            (true, _) => (NodeTarget::XbladeNoVerify, "xblade"),
            (false, Class::Ram) => (NodeTarget::Echo, "echo"),
            (false, Class::File) => {
                return match fio_file_half(node, time_s) {
                    Ok(f) => Ok(Some(f.iops)),
                    Err(e) => {
                        check_interrupted()?;
                        c.problems.push(format!("fio: {e:#}"));
                        Ok(None)
                    }
                };
            }
        };
        let r = measure_load(bench, node, target, stores, argv.clone(), exports, time_s)?;
        c.problems
            .extend(r.problems.iter().map(|p| format!("{label}: {p}")));
        let iops = r.ok.then_some(r.all.iops);
        if xblade {
            c.xblade_runs.push(r);
        }
        Ok(iops)
    };
    for i in 0..CEILING_PAIRS {
        let xblade_first = i % 2 == 0;
        let first = side(xblade_first, &mut c)?;
        let second = side(!xblade_first, &mut c)?;
        let (x, ceil) = if xblade_first {
            (first, second)
        } else {
            (second, first)
        };
        if let (Some(x), Some(e)) = (x, ceil) {
            if e > 0.0 {
                c.pairs.push(CeilingPair {
                    xblade_iops: x,
                    ceiling_iops: e,
                    ratio: x / e,
                    xblade_first,
                });
            }
        }
    }
    let ratios: Vec<f64> = c.pairs.iter().map(|p| p.ratio).collect();
    c.median_ratio = median(&ratios);
    Ok(c)
}

/// Starts `t` with the 16 exports, runs the node load (all 16 exports, verified unless `t`
/// is echo or xblade-noverify), stops it.
fn measure(bench: &Bench, node: &NodeLab, t: NodeTarget, time_s: f64) -> Result<TargetRun> {
    // Echo stores nothing: a read-back has nothing to verify; xblade is run like it once for
    // the comparison with echo.
    let verify = !matches!(t, NodeTarget::Echo | NodeTarget::XbladeNoVerify);
    let argv = node.load_argv(
        None,
        &bench.bins.aoe_bench,
        &time_s.to_string(),
        "100",
        verify,
        &[],
    );
    measure_load(
        bench,
        node,
        t,
        &node.stores,
        argv,
        usize::from(EXPORTS),
        time_s,
    )
}

/// Starts `t` with slot i on `stores[i]` (xblade), runs the generator `argv` (`exports`
/// targets, for `time_s`), stops it.
fn measure_load(
    bench: &Bench,
    node: &NodeLab,
    t: NodeTarget,
    stores: &[PathBuf],
    argv: Vec<String>,
    exports: usize,
    time_s: f64,
) -> Result<TargetRun> {
    let mut run = TargetRun {
        target: t.name(),
        ok: false,
        problems: Vec::new(),
        all: Summary::default(),
        ram: Summary::default(),
        file: Summary::default(),
        frames: 0,
        cpu_ticks: 0,
        cpu_us_per_frame: None,
        cpu_busy_pct: 0.0,
        spin_s: None,
        cpu_us_per_frame_busy: None,
        window_s: 0.0,
        exports: Vec::new(),
        target_commands: Vec::new(),
        generator_commands: Vec::new(),
        generator_results: Vec::new(),
    };
    let services = match start(bench, node, t, stores) {
        Ok(s) => s,
        Err(e) => {
            check_interrupted()?;
            run.problems
                .push(format!("{} did not start: {e:#}", t.name()));
            return Ok(run);
        }
    };
    let mut services = services;
    run.target_commands = services.iter().map(|s| shell_words(&s.argv)).collect();
    let argvs = [argv];
    let pids: Vec<u32> = services.iter().map(Service::pid).collect();
    let ticks = || -> u64 { pids.iter().map(|&p| procs::ticks(p, "\0").process).sum() };
    let xblade = matches!(t, NodeTarget::Xblade | NodeTarget::XbladeNoVerify);
    let spin = || xblade.then(|| xblade_spin_ns(bench)).flatten();
    let spin_before = spin();
    let before = ticks();
    let t0 = std::time::Instant::now();
    let limit = Duration::from_secs_f64(time_s + 60.0);
    let outs: Vec<Result<crate::cmd::Captured>> = std::thread::scope(|s| {
        let hs: Vec<_> = argvs
            .iter()
            .map(|a| s.spawn(move || from_argv(a).capture_within(limit)))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("generator thread panicked"))
            })
            .collect()
    });
    run.window_s = t0.elapsed().as_secs_f64();
    let after = ticks();
    if let (Some(a), Some(b)) = (spin_before, spin()) {
        run.spin_s = Some(b.saturating_sub(a) as f64 / 1e9);
    } else if xblade {
        run.problems
            .push("xblade status gave no spin_ns (is the binary older than the bench?)".into());
    }
    check_interrupted()?;
    for s in &mut services {
        if let Some(status) = s.exited() {
            run.problems.push(format!(
                "{} exited during the run ({status}): {}",
                s.name,
                s.tail()
            ));
        }
    }
    for (argv, out) in argvs.iter().zip(outs) {
        run.generator_commands.push(shell_words(argv));
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                run.problems.push(format!("{e:#}"));
                continue;
            }
        };
        match parse_runs(&out.stdout_text(), &out.stderr_text()) {
            Ok((runs, j)) => {
                for r in &runs {
                    let e = ExportRun::of(r);
                    if !r.ok || e.errors > 0 || e.verify_errors > 0 {
                        run.problems.push(format!(
                            "{}: {} errors, {} verify errors, stopped by {}{}",
                            e.name,
                            e.errors,
                            e.verify_errors,
                            r.stop_reason.as_deref().unwrap_or("?"),
                            r.error
                                .as_ref()
                                .or(r.errors.messages.first())
                                .map(|m| format!(" (first: {m})"))
                                .unwrap_or_default()
                        ));
                    }
                    run.frames += r.frames.rx;
                    run.exports.push(e);
                }
                run.generator_results.push(j);
            }
            Err(e) => run.problems.push(format!("{e:#}")),
        }
    }
    for s in &mut services {
        let status = s.stop(STOP_GRACE)?;
        // vblade dies of SIGTERM; xblade and echo exit 0 after draining.
        if t != NodeTarget::Vblade && !status.success() {
            run.problems.push(format!(
                "{} exited with {status} when stopped: {}",
                s.name,
                s.tail()
            ));
        }
    }
    run.exports.sort_by_key(|e| {
        e.name
            .rsplit('.')
            .next()
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    });
    if run.exports.len() != exports && run.problems.is_empty() {
        run.problems.push(format!(
            "{} of {exports} exports reported",
            run.exports.len()
        ));
    }
    run.cpu_ticks = after.saturating_sub(before);
    Ok(finish(run))
}

/// Two runs of one target as one: each export's IOPS and MB/s averaged, latencies, frames,
/// CPU ticks and windows added up.
fn merge(a: TargetRun, b: TargetRun) -> TargetRun {
    let mut run = a;
    for e in &mut run.exports {
        let Some(o) = b.exports.iter().find(|o| o.name == e.name) else {
            run.problems
                .push(format!("{} missing from the second round", e.name));
            continue;
        };
        e.iops = (e.iops + o.iops) / 2.0;
        e.mb_s = (e.mb_s + o.mb_s) / 2.0;
        e.retransmits += o.retransmits;
        e.errors += o.errors;
        e.verify_checked_sectors += o.verify_checked_sectors;
        e.verify_errors += o.verify_errors;
        let mut m: BTreeMap<u64, u64> = e.buckets.iter().copied().collect();
        for &(ns, c) in &o.buckets {
            *m.entry(ns).or_default() += c;
        }
        e.p50_us = quantile(&m, 0.5) / 1e3;
        e.p99_us = quantile(&m, 0.99) / 1e3;
        e.buckets = m.into_iter().collect();
    }
    run.problems.extend(b.problems);
    run.spin_s = match (run.spin_s, b.spin_s) {
        (Some(x), Some(y)) => Some(x + y),
        _ => None,
    };
    run.frames += b.frames;
    run.cpu_ticks += b.cpu_ticks;
    run.window_s += b.window_s;
    run.target_commands.extend(b.target_commands);
    run.generator_commands.extend(b.generator_commands);
    run.generator_results.extend(b.generator_results);
    finish(run)
}

/// The summaries, CPU figures and verdict of a run from its exports, frames and ticks.
fn finish(mut run: TargetRun) -> TargetRun {
    run.all = Summary::of(run.exports.iter());
    run.ram = Summary::of(run.exports.iter().filter(|e| e.class == Class::Ram));
    run.file = Summary::of(run.exports.iter().filter(|e| e.class == Class::File));
    let hz = procs::clock_ticks_per_sec();
    if run.frames > 0 {
        let cpu_s = run.cpu_ticks as f64 / hz;
        run.cpu_us_per_frame = Some(cpu_s * 1e6 / run.frames as f64);
        run.cpu_us_per_frame_busy = run
            .spin_s
            .map(|spin| (cpu_s - spin).max(0.0) * 1e6 / run.frames as f64);
    }
    run.cpu_busy_pct = run.cpu_ticks as f64 / hz / run.window_s.max(1e-9) * 100.0;
    run.ok = run.problems.is_empty();
    run
}

/// The control socket of the node's xblade.
fn xblade_control(bench: &Bench) -> PathBuf {
    bench.logs.join("node-xblade").join("control.sock")
}

/// The node's xblade's workers' idle spinning so far (`xblade status --json`), ns.
fn xblade_spin_ns(bench: &Bench) -> Option<u64> {
    let sock = xblade_control(bench);
    let out = from_argv(&[
        &bench.bins.xblade.display().to_string(),
        "status",
        "--json",
        "--control",
        &sock.display().to_string(),
    ])
    .capture_within(Duration::from_secs(10))
    .ok()?;
    let j: Value = serde_json::from_str(out.stdout_text().trim()).ok()?;
    j["workers"]
        .as_array()?
        .iter()
        .map(|w| w["spin_ns"].as_u64())
        .sum()
}

/// Starts the target: one xblade (slot i on `stores[i]`), 16 vblades or one echo, each ready.
fn start(bench: &Bench, node: &NodeLab, t: NodeTarget, stores: &[PathBuf]) -> Result<Vec<Service>> {
    let lab = &node.lab;
    let netns = |a: &mut Vec<String>| {
        a.extend(["ip", "netns", "exec", &lab.target_ns].map(String::from));
    };
    let cpu = TARGET_CPU.to_string();
    let mut out = Vec::new();
    match t {
        NodeTarget::Xblade | NodeTarget::XbladeNoVerify => {
            let dir = bench.logs.join("node-xblade");
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("state"))
                .with_context(|| format!("creating {}", dir.display()))?;
            let toml = dir.join("xblade.toml");
            fs::write(
                &toml,
                node.xblade_toml_with(stores, &xblade_control(bench), &dir.join("state")),
            )
            .with_context(|| format!("writing {}", toml.display()))?;
            let mut a = Vec::new();
            netns(&mut a);
            a.extend(["taskset".into(), "-c".into(), cpu]);
            a.push(bench.bins.xblade.display().to_string());
            a.extend([
                "serve".into(),
                "--config".into(),
                toml.display().to_string(),
            ]);
            let mut svc = Service::start("xblade", &a, &bench.logs.join("node-xblade.log"))?;
            svc.wait_ready("serving workers=", READY_TIMEOUT)?;
            out.push(svc);
        }
        NodeTarget::Vblade => {
            for (slot, path) in node.stores.iter().enumerate() {
                let mut a = Vec::new();
                netns(&mut a);
                a.extend(
                    ["taskset", "-c", &cpu, "ionice", "-c2", "-n7", "vblade"].map(String::from),
                );
                if class_of(slot as u8) == Class::File {
                    a.extend(["-d".into(), "-s".into()]);
                }
                a.extend([
                    NODE_SHELF.to_string(),
                    slot.to_string(),
                    lab.target_if.clone(),
                    path.display().to_string(),
                ]);
                let log = bench.logs.join(format!("node-vblade-{slot}.log"));
                let mut svc = Service::start(&format!("vblade e{NODE_SHELF}.{slot}"), &a, &log)?;
                svc.wait_ready("pid ", READY_TIMEOUT)?;
                out.push(svc);
            }
        }
        NodeTarget::Echo => {
            let mut a = Vec::new();
            netns(&mut a);
            a.push(bench.bins.aoe_bench.display().to_string());
            a.extend(
                [
                    "echo",
                    "-i",
                    &lab.target_if,
                    "--shelf",
                    &NODE_SHELF.to_string(),
                    "--slot",
                    "0",
                    "--slots",
                    &EXPORTS.to_string(),
                    "--sectors",
                    &node.sectors.to_string(),
                    "--cpu",
                    &cpu,
                    "--json",
                ]
                .map(String::from),
            );
            let mut svc = Service::start("echo", &a, &bench.logs.join("node-echo.log"))?;
            svc.wait_ready("ready", READY_TIMEOUT)?;
            out.push(svc);
        }
    }
    Ok(out)
}

/// fio on the 8 disk files at once: the same pattern and depth per file, durable writes, on
/// the target's CPU.
fn fio_file_half(node: &NodeLab, time_s: f64) -> Result<FioHalf> {
    let mut argv: Vec<String> = [
        "fio",
        "--ioengine=io_uring",
        "--direct=1",
        "--rw=randrw",
        &format!("--rwmixread={NODE_READ_PCT}"),
        "--bs=1024",
        &format!("--iodepth={NODE_QD}"),
        "--sync=dsync",
        "--time_based",
        &format!("--runtime={}ms", (time_s * 1000.0) as u64),
        &format!("--cpus_allowed={TARGET_CPU}"),
        "--lat_percentiles=1",
        "--norandommap",
        "--randrepeat=0",
        "--group_reporting",
        "--output-format=json",
    ]
    .map(String::from)
    .to_vec();
    for (slot, path) in node.stores.iter().enumerate() {
        if class_of(slot as u8) == Class::File {
            argv.push(format!("--name=e{NODE_SHELF}.{slot}"));
            argv.push(format!("--filename={}", path.display()));
        }
    }
    let out = from_argv(&argv)
        .capture_within(Duration::from_secs_f64(time_s + 60.0))?
        .check()?;
    let j: Value = embedded_json(&out.stdout_text()).context("fio printed no JSON")?;
    let job = j
        .get("jobs")
        .and_then(|v| v.get(0))
        .context("fio's JSON has no jobs")?;
    if job.get("error").and_then(Value::as_i64).unwrap_or(0) != 0 {
        bail!("fio reported error {}", job["error"]);
    }
    let num = |dir: &str, k: &str| job.get(dir).and_then(|d| d.get(k)).and_then(Value::as_f64);
    let p99 = |dir: &str| {
        job.get(dir)
            .and_then(|d| d.get("lat_ns").or_else(|| d.get("clat_ns")))
            .and_then(|l| l.get("percentile"))
            .and_then(|p| p.get("99.000000"))
            .and_then(Value::as_f64)
            .map(|ns| ns / 1e3)
    };
    Ok(FioHalf {
        iops: num("read", "iops").unwrap_or(0.0) + num("write", "iops").unwrap_or(0.0),
        mb_s: (num("read", "bw_bytes").unwrap_or(0.0) + num("write", "bw_bytes").unwrap_or(0.0))
            / 1e6,
        read_p99_us: p99("read"),
        write_p99_us: p99("write"),
        command: shell_words(&argv),
    })
}

/// The issue's targets against this run's figures: ratios between targets are the median of
/// the rounds' ratios (each round's targets ran back to back).
fn verdicts(r: &NodeReport) -> Vec<Verdict> {
    let x = r.runs.iter().find(|t| t.target == "xblade" && t.ok);
    let e = r.runs.iter().find(|t| t.target == "echo" && t.ok);
    let mut out = Vec::new();
    let mut push = |what: String, value: Option<f64>, goal: &str, met: fn(f64) -> bool| {
        out.push(Verdict {
            what,
            met: value.map(met),
            value,
            goal: goal.to_owned(),
        });
    };
    type Fig = fn(&RoundFigures) -> Option<f64>;
    // The median over the rounds of `fa` of target `a` over `fb` of target `b`.
    let ratio_of = |a: &str, fa: Fig, b: &str, fb: Fig| -> Option<f64> {
        let v: Vec<f64> = r
            .rounds
            .iter()
            .filter_map(|round| {
                let ta = round.iter().find(|t| t.target == a && t.ok)?;
                let tb = round.iter().find(|t| t.target == b && t.ok)?;
                let (p, q) = (fa(ta)?, fb(tb)?);
                (q > 0.0 && p.is_finite() && q.is_finite()).then_some(p / q)
            })
            .collect();
        median(&v)
    };
    let rounds = |a: &str, b: &str, f: Fig| ratio_of(a, f, b, f);
    let sets: [(&str, Fig, Fig); 3] = [
        ("all", |t| Some(t.iops), |t| Some(t.p99_us)),
        ("ram", |t| Some(t.ram_iops), |t| Some(t.ram_p99_us)),
        ("file", |t| Some(t.file_iops), |t| Some(t.file_p99_us)),
    ];
    for (set, iops, p99) in sets {
        push(
            format!("{set} exports: xblade / vblade IOPS"),
            rounds("xblade", "vblade", iops),
            ">= 1.5",
            |v| v >= 1.5,
        );
        push(
            format!("{set} exports: xblade / vblade p99 latency"),
            rounds("xblade", "vblade", p99),
            "< 1 (lower p99)",
            |v| v < 1.0,
        );
        // In the mixed node the target's core also does the kernel's half of the disk I/O,
        // which echo never does: reported; the classes' ceilings are measured apart (below).
        push(
            format!("{set} exports: xblade (no verify) / echo IOPS, mixed node"),
            rounds("xblade-noverify", "echo", iops),
            "(reported)",
            |_| true,
        );
    }
    type Pick = fn(&TargetRun) -> &Summary;
    for (set, pick) in [("ram", (|t| &t.ram) as Pick), ("file", |t| &t.file)] {
        push(
            format!("{set} exports: xblade slowest export / mean"),
            x.map(|t| pick(t).slowest_over_mean),
            ">= 0.8",
            |v| v >= 0.8,
        );
    }
    if let Some(f) = &r.fio_file_half {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        push(
            "file exports: xblade / fio on the 8 disk files IOPS, mixed node".into(),
            ratio(x.map(|t| t.file.iops), Some(f.iops)),
            "(reported)",
            |_| true,
        );
        push(
            "file exports: the disk's ceiling (fio) / echo's, mixed node".into(),
            ratio(Some(f.iops), e.map(|t| t.file.iops)),
            "(reported)",
            |_| true,
        );
    }
    for c in &r.ceilings {
        let what = match c.class {
            Class::Ram => "RAM class ceiling: xblade / echo IOPS, 16 RAM-backed exports",
            Class::File => "file class ceiling: xblade / fio IOPS (the disk), 8 file exports",
        };
        push(
            format!("{what} (median of {} pairs)", c.pairs.len()),
            c.median_ratio,
            ">= 0.9",
            |v| v >= 0.9,
        );
    }
    push(
        "target CPU per answered frame, xblade's idle spinning excluded: xblade / vblade".into(),
        // Without xblade's idle spinning, against vblade's figure (vblade never spins).
        ratio_of(
            "xblade",
            |t| t.cpu_us_per_frame_busy,
            "vblade",
            |t| t.cpu_us_per_frame,
        ),
        "<= 0.5",
        |v| v <= 0.5,
    );
    push(
        "target CPU per answered frame, spinning included: xblade / vblade".into(),
        rounds("xblade", "vblade", |t| t.cpu_us_per_frame),
        "(reported)",
        |_| true,
    );
    out
}

// ------------------------------------------------------------------------------------------------
// Table and plot.

/// The node section of the table.
pub fn table(r: &NodeReport) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Storage node: {}; {} rounds of {} s per target (in the order ABCD DCBA ...), added \
         up; the issue's ratios are the median of the rounds'\n",
        r.method,
        r.rounds.len(),
        r.time_s
    ));
    s.push_str(&format!(
        "{:<15} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6} {:>15} {:>15}\n",
        "target",
        "IOPS",
        "MB/s",
        "p50 µs",
        "p99 µs",
        "RAM IOPS",
        "file IOPS",
        "µs/frame",
        "CPU%",
        "RAM min/max",
        "file min/max"
    ));
    for t in &r.runs {
        if !t.ok && t.exports.is_empty() {
            s.push_str(&format!(
                "{:<15} ERROR: {}\n",
                t.target,
                t.problems.join("; ")
            ));
            continue;
        }
        s.push_str(&format!(
            "{:<15} {:>9} {:>8.1} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6.0} {:>15} {:>15}{}\n",
            t.target,
            report::si(t.all.iops),
            t.all.mb_s,
            report::us(t.all.p50_us),
            report::us(t.all.p99_us),
            report::si(t.ram.iops),
            report::si(t.file.iops),
            t.cpu_us_per_frame.map_or("?".into(), |c| format!("{c:.2}")),
            t.cpu_busy_pct,
            format!(
                "{:.2}/{:.2}",
                t.ram.slowest_over_mean, t.ram.fastest_over_mean
            ),
            format!(
                "{:.2}/{:.2}",
                t.file.slowest_over_mean, t.file.fastest_over_mean
            ),
            if t.ok { "" } else { "  (PROBLEM)" }
        ));
    }
    if let Some(f) = &r.fio_file_half {
        s.push_str(&format!(
            "{:<15} {:>9} {:>8.1} {:>9} {:>9} {:>9} {:>9}   (fio: the 8 disk files, the disk's ceiling for the file half)\n",
            "fio",
            report::si(f.iops),
            f.mb_s,
            "",
            f.read_p99_us.map_or("?".into(), report::us),
            "",
            report::si(f.iops),
        ));
    }
    if let Some(e) = &r.fio_error {
        s.push_str(&format!("{:<15} n/a: {e}\n", "fio"));
    }
    s.push_str("p50/p99 by class (µs):");
    for t in r.runs.iter().filter(|t| !t.exports.is_empty()) {
        s.push_str(&format!(
            "  {} RAM {}/{}, file {}/{};",
            t.target,
            report::us(t.ram.p50_us),
            report::us(t.ram.p99_us),
            report::us(t.file.p50_us),
            report::us(t.file.p99_us)
        ));
    }
    s.push('\n');
    for t in r.runs.iter().filter(|t| t.spin_s.is_some()) {
        s.push_str(&format!(
            "{}: workers spun idle {:.2} s of {:.2} s CPU; {} µs/frame without it\n",
            t.target,
            t.spin_s.unwrap_or(0.0),
            t.cpu_ticks as f64 / procs::clock_ticks_per_sec(),
            t.cpu_us_per_frame_busy
                .map_or("?".into(), |c| format!("{c:.2}"))
        ));
    }
    s.push_str(
        "min/max: slowest and fastest export's IOPS over its class's mean. µs/frame: CPU time of \
         every thread of the target (all 16 vblades) per answered frame, idle spinning included \
         (xblade's workers count their spinning: `spin_ns` in `xblade status --json`).\n",
    );
    for c in &r.ceilings {
        s.push_str(&format!(
            "{} class ceiling: {}: {}; median {}\n",
            match c.class {
                Class::Ram => "RAM",
                Class::File => "file",
            },
            c.method,
            c.pairs
                .iter()
                .map(|p| format!(
                    "{}/{} = {:.3}",
                    report::si(p.xblade_iops),
                    report::si(p.ceiling_iops),
                    p.ratio
                ))
                .collect::<Vec<_>>()
                .join(", "),
            c.median_ratio.map_or("n/a".into(), |m| format!("{m:.3}"))
        ));
    }
    s.push_str("Targets of the issue (reported, not asserted):\n");
    for v in &r.verdicts {
        s.push_str(&format!(
            "  {:<86} {:>7}  goal {:<16} {}\n",
            v.what,
            v.value.map_or("n/a".into(), |x| format!("{x:.2}")),
            v.goal,
            match v.met {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "n/a",
            }
        ));
    }
    s
}

/// The node section's SVG: each export's IOPS under each target (and the class means).
pub fn plot(r: &NodeReport, title: &str) -> Result<String> {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (880, 420)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("drawing the node SVG: {e}"))?;
        let top = r
            .runs
            .iter()
            .flat_map(|t| t.exports.iter().map(|e| e.iops))
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5f64..(f64::from(EXPORTS) - 0.5), 0f64..top)
            .map_err(|e| anyhow::anyhow!("drawing the node SVG: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("export (slot; 0-7 RAM-backed, 8-15 file-backed)")
            .y_desc("IOPS")
            .x_labels(usize::from(EXPORTS))
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .y_label_formatter(&|y| report::si(*y))
            .draw()
            .map_err(|e| anyhow::anyhow!("drawing the node SVG: {e}"))?;
        let colours = [
            ("xblade", RGBColor(0xd6, 0x27, 0x28)),
            ("xblade-noverify", RGBColor(0xff, 0x98, 0x96)),
            ("vblade", RGBColor(0x1f, 0x77, 0xb4)),
            ("echo", RGBColor(0x2c, 0xa0, 0x2c)),
        ];
        for t in &r.runs {
            let colour = colours
                .iter()
                .find(|(n, _)| *n == t.target)
                .map_or(BLACK, |c| c.1);
            let points: Vec<(f64, f64)> = t
                .exports
                .iter()
                .enumerate()
                .map(|(i, e)| (i as f64, e.iops))
                .collect();
            let label = format!(
                "{}: {} IOPS in all, p99 {} µs",
                t.target,
                report::si(t.all.iops),
                report::us(t.all.p99_us)
            );
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("drawing the node SVG: {e}"))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(|e| anyhow::anyhow!("drawing the node SVG: {e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow::anyhow!("drawing the node SVG: {e}"))?;
        root.present()
            .map_err(|e| anyhow::anyhow!("drawing the node SVG: {e}"))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initiators_share_the_exports() {
        let mut all: Vec<u8> = (0..INITIATORS).flat_map(slots_of).collect();
        all.sort_unstable();
        assert_eq!(all, (0..EXPORTS).collect::<Vec<_>>());
        for k in 0..INITIATORS {
            let ram = slots_of(k)
                .iter()
                .filter(|&&s| class_of(s) == Class::Ram)
                .count();
            assert_eq!(ram, PER_INITIATOR / 2, "initiator {k}");
        }
    }

    fn figures(target: &'static str, iops: f64, cpu: f64) -> RoundFigures {
        RoundFigures {
            target,
            ok: true,
            iops,
            ram_iops: iops / 2.0,
            file_iops: iops / 2.0,
            p99_us: 100.0,
            ram_p99_us: 100.0,
            file_p99_us: 100.0,
            cpu_us_per_frame: Some(cpu),
            cpu_us_per_frame_busy: Some(cpu / 2.0),
        }
    }

    #[test]
    fn verdicts_take_the_median_of_the_rounds() {
        let round = |x: f64, v: f64| vec![figures("xblade", x, 4.0), figures("vblade", v, 4.0)];
        let mut r = NodeReport {
            method: String::new(),
            time_s: 1.0,
            export_mib: 1,
            runs: Vec::new(),
            // Ratios 1.0, 2.0, 3.0, and 10.0 from a round whose vblade was slowed: median 2.5.
            rounds: vec![
                round(100.0, 100.0),
                round(200.0, 100.0),
                round(300.0, 100.0),
                round(1000.0, 100.0),
            ],
            fio_file_half: None,
            fio_error: None,
            ceilings: vec![Ceiling {
                class: Class::Ram,
                method: String::new(),
                pairs: Vec::new(),
                median_ratio: Some(0.85),
                xblade_runs: Vec::new(),
                problems: Vec::new(),
            }],
            verdicts: Vec::new(),
            problems: Vec::new(),
        };
        r.rounds[1][1].ok = false; // a failed vblade run leaves its round out: 1, 3, 10
        let v = verdicts(&r);
        let find = |what: &str| {
            v.iter()
                .find(|x| x.what.starts_with(what))
                .unwrap_or_else(|| panic!("no verdict {what}: {v:?}"))
        };
        let iops = find("all exports: xblade / vblade IOPS");
        assert_eq!((iops.value, iops.met), (Some(3.0), Some(true)));
        // Spinning taken out: xblade's busy figure is half its CPU figure.
        let cpu = find("target CPU per answered frame, xblade's idle spinning excluded");
        assert_eq!((cpu.value, cpu.met), (Some(0.5), Some(true)));
        let ceil = find("RAM class ceiling");
        assert_eq!((ceil.value, ceil.met), (Some(0.85), Some(false)));
    }

    #[test]
    fn the_file_class_alone_is_two_exports_per_initiator() {
        let node = test_node();
        let a = node.load_argv(
            Some(Class::File),
            Path::new("/aoe-bench"),
            "1",
            "1",
            false,
            &[],
        );
        let after = |flag: &str| {
            let i = a.iter().position(|x| x == flag).expect(flag);
            a[i + 1].clone()
        };
        assert_eq!(after("-t"), "e1.8,e1.9,e1.10,e1.11,e1.12,e1.13,e1.14,e1.15");
        assert_eq!(after("-i"), "xbl-n0,xbl-n1,xbl-n2,xbl-n3");
        assert!(!a.iter().any(|x| x == "--verify"));
        let all = node.load_argv(None, Path::new("/aoe-bench"), "1", "1", true, &[]);
        let i = all.iter().position(|x| x == "-t").expect("-t");
        assert_eq!(all[i + 1].split(',').count(), usize::from(EXPORTS));
        assert!(all.iter().any(|x| x == "--verify"));
        std::mem::forget(node);
    }

    #[test]
    fn summaries_and_percentiles() {
        let e = |slot: u8, iops: f64, buckets: Vec<(u64, u64)>| ExportRun {
            name: format!("e1.{slot}"),
            class: class_of(slot),
            iops,
            mb_s: iops / 1000.0,
            p50_us: 0.0,
            p99_us: 0.0,
            retransmits: 0,
            errors: 0,
            verify_checked_sectors: 0,
            verify_errors: 0,
            buckets,
        };
        let v = [
            e(0, 80.0, vec![(1000, 98), (5000, 2)]),
            e(1, 120.0, vec![(2000, 100)]),
        ];
        let s = Summary::of(v.iter());
        assert_eq!(s.iops, 200.0);
        assert!((s.slowest_over_mean - 0.8).abs() < 1e-9);
        assert!((s.fastest_over_mean - 1.2).abs() < 1e-9);
        // 200 requests: 98 in the 1000 ns bucket, 100 in 2000, 2 in 5000: the 100th and the
        // 198th are in 2000, the 199th in 5000.
        assert_eq!(s.p50_us, 2.0);
        assert_eq!(s.p99_us, 2.0);
        let merged: BTreeMap<u64, u64> = [(1000, 98), (2000, 100), (5000, 2)].into();
        assert_eq!(quantile(&merged, 0.995), 5000.0);
        assert!(quantile(&BTreeMap::new(), 0.5).is_nan());
        assert_eq!(Summary::of([].iter()).exports, 0);
    }

    #[test]
    fn reads_one_and_several_target_reports() {
        let one = r#"{"schema": "aoe-bench/run/1", "ok": true, "iops": 5.0,
            "target": {"device": "e1.9", "slot": 9}, "frames": {"rx": 7},
            "latency_buckets_ns": [[1000, 3]]}"#;
        let (runs, _) = parse_runs(one, "").unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].target.slot, runs[0].frames.rx), (9, 7));
        assert_eq!(ExportRun::of(&runs[0]).class, Class::File);
        let several = format!(r#"{{"schema": "aoe-bench/runs/1", "runs": [{one}, {one}]}}"#);
        assert_eq!(parse_runs(&several, "").unwrap().0.len(), 2);
        let err = parse_runs("", "aoe-bench: error: no answer from e1.3\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("no answer from e1.3"),
            "{err:#}"
        );
        assert!(parse_runs(r#"{"schema": "aoe-bench/echo/1"}"#, "").is_err());
    }

    /// A NodeLab on a lab that does not exist, in namespaces that do not either (dropping it
    /// runs `ip -n`, which then fails; the tests forget it anyway).
    fn test_node() -> NodeLab {
        let lab = Lab {
            target_ns: "xbl-test-none-t".into(),
            init_ns: "xbl-test-none-i".into(),
            target_if: "xbl-tv".into(),
            init_if: "xbl-iv".into(),
            ram_image: None,
            disk_image: None,
            loop_dev: None,
        };
        NodeLab {
            lab,
            stores: (0..EXPORTS)
                .map(|s| PathBuf::from(format!("/x/{s}.img")))
                .collect(),
            ram_stores: Vec::new(),
            initiators: (0..INITIATORS).map(|k| format!("xbl-n{k}")).collect(),
            sectors: 0,
            ram_dir: PathBuf::from("/nonexistent/xbl-node-test"),
        }
    }

    #[test]
    fn configuration_names_every_export() {
        let node = test_node();
        let toml = node.xblade_toml(Path::new("/c.sock"), Path::new("/st"));
        assert_eq!(toml.matches("[[export]]").count(), usize::from(EXPORTS));
        assert!(toml.contains("path = \"/x/15.img\"") && toml.contains("name = \"xbl-tv\""));
        assert!(toml.contains("control = \"/c.sock\""));
        std::mem::forget(node);
    }
}
