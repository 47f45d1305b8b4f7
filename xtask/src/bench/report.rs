//! The bench's outputs: the side-by-side table, the JSON of everything ([`Report`], written
//! with serde), the SVG plot ([`super::plot`]).

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::{
    Backend, Bench, Cell, HostInfo, QueueCmp, QueueRun, Row, Section, Thing, GEN_CPU, TARGET_CPU,
};

/// What [`write_all`] produced.
pub struct Outcome {
    pub table: String,
    pub json: PathBuf,
    pub svg: PathBuf,
    /// Errors and missing cells; empty when the bench passed.
    pub problems: Vec<String>,
}

/// A rate with a k/M suffix: `495.8k`.
pub fn si(v: f64) -> String {
    if !v.is_finite() {
        "?".into()
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Microseconds with 3 significant digits: `72.7`, `4460`.
pub fn us(v: f64) -> String {
    if !v.is_finite() {
        "?".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Footnotes: each distinct reason once.
#[derive(Default)]
struct Notes(Vec<String>);

impl Notes {
    fn mark(&mut self, reason: &str) -> String {
        let n = match self.0.iter().position(|r| r == reason) {
            Some(i) => i + 1,
            None => {
                self.0.push(reason.to_owned());
                self.0.len()
            }
        };
        format!("[{n}]")
    }
}

/// The text of one cell block of `width` columns for things that are not measured.
fn blank(cell: &Cell, notes: &mut Notes) -> Option<String> {
    match cell {
        Cell::Pending => Some("missing".into()),
        Cell::Skip => Some("-".into()),
        Cell::NotApplicable(r) => Some(format!("n/a{}", notes.mark(r))),
        Cell::Error(e) => Some(format!("ERROR{}", notes.mark(e))),
        Cell::Run(m) if !m.clean() => Some(format!("ERROR{}", notes.mark(&m.trouble()))),
        _ => None,
    }
}

fn target_block(cell: &Cell, notes: &mut Notes, with_qd: bool) -> String {
    let width = if with_qd { 37 } else { 33 };
    if let Some(text) = blank(cell, notes) {
        return format!("{text:^width$}");
    }
    let Cell::Run(m) = cell else {
        return format!("{:^width$}", "?");
    };
    let cpu = m.cpu.map_or("-".into(), |c| {
        format!("{:.2}", c.workers_us.unwrap_or(c.process_us))
    });
    // A '*' marks a run with retransmissions: its tail latency holds retransmission timeouts.
    let p99 = format!(
        "{}{}",
        us(m.p99_us),
        if m.retransmits > 0 { "*" } else { " " }
    );
    let mut s = format!("{:>8} {:>7.1} {:>8} {:>6} ", si(m.iops), m.mb_s, p99, cpu);
    if with_qd {
        let _ = write!(s, "{:>3} ", m.qd);
    }
    s
}

fn iops_block(cell: &Cell, notes: &mut Notes) -> String {
    match blank(cell, notes) {
        Some(text) => format!("{text:^9}"),
        None => format!("{:>8} ", cell.iops().map_or("?".into(), si)),
    }
}

fn section_title(s: Section) -> String {
    match s {
        Section::Main => "1 KiB requests (--bs 2), MTU 1500".into(),
        Section::Verify => format!(
            "--verify: sequential write of {} MiB, then random reads checking every sector \
             (a seed per target and back end)",
            super::VERIFY_SECTORS / 2048
        ),
        Section::Jumbo => "8 KiB requests (--bs 16), MTU 9000".into(),
    }
}

/// The side-by-side table.
pub fn table(bench: &Bench) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut notes = Notes::default();
    let _ = writeln!(
        out,
        "\nxblade vs vblade vs ceilings: targets on CPU {TARGET_CPU}, generator (aoe-bench run) on CPU {GEN_CPU}, \
         {} s per measurement{}",
        bench.opts.time_s,
        if bench.opts.quick { ", --quick" } else { "" }
    );
    let header1 = format!(
        "{:<19} {:<5} {:>3} |{:^33}|{:^37}|{:^9}|{:^9}| {:^12}",
        "", "", "", "xblade", "vblade", "echo", "fio", "xblade /"
    );
    let header2 = format!(
        "{:<19} {:<5} {:>3} |{:>8} {:>7} {:>7}  {:>6} |{:>8} {:>7} {:>7}  {:>6} {:>3} |{:>8} |{:>8} | {:>5} {:>6}",
        "case", "back", "QD", "IOPS", "MB/s", "p99 µs", "µs/fr", "IOPS", "MB/s", "p99 µs", "µs/fr", "qd",
        "IOPS", "IOPS", "vblade", "ceil"
    );
    let mut section = None;
    for row in &bench.rows {
        if section != Some(row.section) {
            section = Some(row.section);
            let _ = writeln!(out, "\n{}", section_title(row.section));
            let _ = writeln!(out, "{header1}\n{header2}");
        }
        let x = row.cell(Thing::Xblade);
        let v = row.cell(Thing::Vblade);
        let ceil = row.cell(row.ceiling());
        let xv = ratio(x.iops(), v.iops()).map_or("-".into(), |r| format!("{r:.2}"));
        let xc = ratio(x.iops(), ceil.iops()).map_or("-".into(), |r| {
            format!(
                "{r:.2} {}",
                if row.ceiling() == Thing::Echo {
                    "e"
                } else {
                    "f"
                }
            )
        });
        let _ = writeln!(
            out,
            "{:<19} {:<5} {:>3} |{}|{}|{}|{}| {:>5} {:>6}",
            row.case(),
            row.backend.name(),
            row.qd,
            target_block(x, &mut notes, false),
            target_block(v, &mut notes, true),
            iops_block(row.cell(Thing::Echo), &mut notes),
            iops_block(row.cell(Thing::Fio), &mut notes),
            xv,
            xc
        );
    }
    let _ = writeln!(
        out,
        "\nµs/fr: CPU time per frame answered (user+system ticks; xblade: its xblade-* worker threads, \
         vblade and echo: the process).\n\
         *: the run had retransmissions (RTO at least 5 ms); its p99 includes them.\n\
         qd: vblade's effective QD (aoe-bench caps it at vblade's 16 buffers).\n\
         xblade / ceil: e = echo (RAM rows, no storage), f = fio io_uring O_DIRECT on the same file or device \
         (disk and blk rows; writes with --sync=dsync, a cache flush each on a device without FUA, where \
         xblade's group commit shares one flush among concurrent writes: a write row may exceed 1)."
    );
    let _ = writeln!(out, "{}", backends_legend(bench));
    let _ = writeln!(
        out,
        "\nxblade CPU time per frame, 1 queue vs 2 queues (randread 1k QD16 per generator, RAM; \
         generator q on macvlan xbl-mq, CPU q, XPS to veth queue q; the 1-queue baseline has its \
         generator on the worker's core, as each of the 2 queues has):"
    );
    match &bench.queues {
        QueueCmp::Pending => {
            let _ = writeln!(out, "  missing (not measured)");
        }
        QueueCmp::NotApplicable(r) => {
            let _ = writeln!(out, "  n/a{}", notes.mark(r));
        }
        QueueCmp::Done(runs) => {
            let _ = writeln!(
                out,
                "  {:>6} {:<13} {:>9} {:>16} {:>16}  worker ticks",
                "queues", "placement", "IOPS", "µs/frame workers", "µs/frame process"
            );
            for r in runs {
                let _ = writeln!(
                    out,
                    "  {:>6} {:<13} {:>9} {:>16.2} {:>16.2}  {:?} over {} run(s)",
                    r.queues,
                    r.placement.name(),
                    si(r.iops),
                    r.workers_us_per_frame,
                    r.process_us_per_frame,
                    r.per_worker_ticks,
                    r.repetitions
                );
            }
        }
    }
    if let QueueCmp::Done(runs) = &bench.queues {
        if let Some(r) = super::queue_ratio(runs) {
            let pairs = runs
                .iter()
                .find(|q| q.queues == 2 && q.placement == super::Placement::Shared)
                .map(|q| &q.pair_ratios[..])
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  2 queues / 1 queue, same placement: {r:.3} ({:+.1}% CPU time per frame; median \
                 of the adjacent pairs {})",
                (r - 1.0) * 100.0,
                pairs
                    .iter()
                    .map(|p| format!("{p:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    memory_block(bench, &mut out);
    for note in &bench.notes {
        let _ = writeln!(out, "note: {note}");
    }
    if !notes.0.is_empty() {
        let _ = writeln!(out);
        for (i, r) in notes.0.iter().enumerate() {
            let _ = writeln!(out, "[{}] {r}", i + 1);
        }
    }
    let problems: Vec<String> = bench.rows.iter().flat_map(Row::problems).collect();
    if problems.is_empty() {
        let _ = writeln!(out, "\nall {} rows present, no errors", bench.rows.len());
    } else {
        let _ = writeln!(out, "\n{} PROBLEM(S):", problems.len());
        for p in abridged(&problems) {
            let _ = writeln!(out, "  {p}");
        }
    }
    (out, problems)
}

/// What the back-end names stand for.
fn backends_legend(bench: &Bench) -> String {
    let fs = bench.disk_fs.as_deref().unwrap_or("the root filesystem");
    let (disk, blk) = match &bench.lab {
        Some(l) => (
            l.disk_image
                .as_ref()
                .map_or("?".into(), |p| p.display().to_string()),
            l.loop_dev
                .as_ref()
                .map_or("?".into(), |p| p.display().to_string()),
        ),
        None => ("?".into(), "?".into()),
    };
    format!(
        "back: ram = a file on tmpfs (xblade maps it); disk = the file {disk} on {fs}; blk = the \
         block device {blk}, a loop device (direct I/O, 512-byte sectors) over that file, served \
         like `xblade 1 0 eth1 /dev/nvme0n1` (xblade's defaults; vblade -d)."
    )
}

/// The RAM read rows against echo plus one core's copy of their data out of the image.
fn memory_block(bench: &Bench, out: &mut String) {
    if bench.mem.is_empty() {
        return;
    }
    let copies: Vec<String> = bench
        .mem
        .iter()
        .map(|m| {
            format!(
                "{} KiB {:.3} µs ({:.1} GB/s)",
                m.bytes / 1024,
                m.ns_per_copy / 1e3,
                m.gb_per_s()
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "\nRAM reads against memory: one core (CPU {TARGET_CPU}) copying random blocks out of the \
         RAM image, pipelined, takes {} each.\nEcho reads no storage; a RAM target also moves \
         each read's data out of memory, so here it can answer about 1 / (1/echo IOPS + copy \
         time) at best (a guide, not a hard limit: a target can overlap some misses with its \
         packet work):",
        copies.join(", ")
    );
    let _ = writeln!(
        out,
        "  {:<19} {:>3} | {:>8} {:>8} | {:>8} {:>6} {:>6}",
        "case", "QD", "echo", "bound", "xblade", "/echo", "/bound"
    );
    for row in &bench.rows {
        if row.backend != Backend::Ram || row.section == Section::Verify {
            continue;
        }
        let bytes = usize::from(row.bs) * 512;
        let (Some(m), Some(echo)) = (
            bench
                .mem
                .iter()
                .find(|m| m.bytes == bytes && row.reads_only()),
            row.cell(Thing::Echo).iops(),
        ) else {
            continue;
        };
        let bound = m.bound(echo);
        let x = row.cell(Thing::Xblade).iops();
        let f = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}"));
        let _ = writeln!(
            out,
            "  {:<19} {:>3} | {:>8} {:>8} | {:>8} {:>6} {:>6}",
            row.case(),
            row.qd,
            si(echo),
            si(bound),
            x.map_or("-".into(), si),
            f(ratio(x, Some(echo))),
            f(ratio(x, Some(bound)))
        );
    }
}

/// The first few of `problems`, and how many more there are.
pub fn abridged(problems: &[String]) -> Vec<String> {
    const SHOW: usize = 12;
    let mut out: Vec<String> = problems.iter().take(SHOW).cloned().collect();
    if problems.len() > SHOW {
        out.push(format!("... and {} more", problems.len() - SHOW));
    }
    out
}

// ------------------------------------------------------------------------------------------------
// The JSON report (schema `xblade/bench/1`). Field names and order are the report's contract;
// non-finite numbers are written as null.

#[derive(Serialize)]
struct Report<'a> {
    schema: &'static str,
    started: String,
    duration_s: f64,
    quick: bool,
    ok: bool,
    problems: &'a [String],
    host: HostInfo,
    settings: Settings<'a>,
    rows: Vec<RowJson<'a>>,
    queues: QueuesJson<'a>,
    memory_copies: Vec<MemoryJson>,
    /// The storage node's load (`--node`, and the full bench).
    node: Option<&'a super::node::NodeReport>,
}

#[derive(Serialize)]
struct Settings<'a> {
    time_s: f64,
    image_mib: u64,
    export: String,
    target_cpu: usize,
    generator_cpu: usize,
    xblade: String,
    aoe_bench: String,
    lab: Option<LabJson<'a>>,
    backends: Backends,
    notes: &'a [String],
}

#[derive(Serialize)]
struct LabJson<'a> {
    target_ns: &'a str,
    init_ns: &'a str,
    target_if: &'a str,
    init_if: &'a str,
    ram_image: Option<String>,
    disk_image: Option<String>,
    disk_filesystem: Option<&'a str>,
    loop_dev: Option<String>,
}

#[derive(Serialize)]
struct Backends {
    ram: &'static str,
    disk: &'static str,
    blk: &'static str,
}

const BACKENDS: Backends = Backends {
    ram: "the RAM image: a file on tmpfs",
    disk: "the disk image: a file on the root filesystem",
    blk: "a loop block device (losetup --direct-io=on --sector-size 512) over the disk image",
};

#[derive(Serialize)]
struct RowJson<'a> {
    section: &'static str,
    case: String,
    rw: &'static str,
    bs_bytes: u32,
    mtu: u32,
    qd: u32,
    backend: &'static str,
    ok: bool,
    problems: Vec<String>,
    xblade: CellJson<'a>,
    vblade: CellJson<'a>,
    echo: CellJson<'a>,
    fio: CellJson<'a>,
    ratios: Ratios,
}

#[derive(Serialize)]
struct Ratios {
    xblade_vblade: Option<f64>,
    ceiling: &'static str,
    xblade_ceiling: Option<f64>,
}

/// One cell: `{"status": "missing" | "none" | "n/a" | "error", "reason": ...}`, or a run.
#[derive(Serialize)]
#[serde(untagged)]
enum CellJson<'a> {
    Blank {
        status: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    Run(Box<RunJson<'a>>),
    Fio {
        status: &'static str,
        iops: f64,
        mb_s: f64,
        p99_us: Option<f64>,
        command: &'a str,
        result: &'a Value,
    },
}

#[derive(Serialize)]
struct RunJson<'a> {
    status: &'static str,
    iops: f64,
    mb_s: f64,
    p50_us: f64,
    p99_us: f64,
    qd: u32,
    frames: u64,
    retransmits: u64,
    errors: u64,
    verify: bool,
    verify_checked_sectors: u64,
    verify_errors: u64,
    stop_reason: &'a str,
    cpu_us_per_frame: Option<f64>,
    process_cpu_us_per_frame: Option<f64>,
    worker_threads: Option<u32>,
    command: &'a str,
    target_command: &'a str,
    result: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum QueuesJson<'a> {
    Blank {
        status: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    Done {
        status: &'static str,
        method: &'static str,
        /// 2 queues over 1 queue, CPU time per frame, both with shared cores: the median of the
        /// adjacent pairs' ratios (`pair_ratios` of the 2-queue run).
        ratio_2_over_1: Option<f64>,
        runs: Vec<QueueRunJson<'a>>,
    },
}

#[derive(Serialize)]
struct QueueRunJson<'a> {
    queues: u32,
    placement: &'static str,
    pair_ratios: &'a [f64],
    repetitions: u32,
    iops: f64,
    frames: u64,
    worker_ticks: u64,
    process_ticks: u64,
    per_worker_ticks: &'a [u64],
    cpu_us_per_frame: f64,
    process_cpu_us_per_frame: f64,
    commands: &'a [String],
    results: &'a [Value],
}

#[derive(Serialize)]
struct MemoryJson {
    bytes: usize,
    ns_per_copy: f64,
    gb_per_s: f64,
    copies: u64,
    cpu: usize,
}

fn cell_json(cell: &Cell) -> CellJson<'_> {
    match cell {
        Cell::Pending => CellJson::Blank {
            status: "missing",
            reason: None,
        },
        Cell::Skip => CellJson::Blank {
            status: "none",
            reason: None,
        },
        Cell::NotApplicable(r) => CellJson::Blank {
            status: "n/a",
            reason: Some(r),
        },
        Cell::Error(e) => CellJson::Blank {
            status: "error",
            reason: Some(e),
        },
        Cell::Run(m) => CellJson::Run(Box::new(RunJson {
            status: if m.clean() { "ok" } else { "error" },
            iops: m.iops,
            mb_s: m.mb_s,
            p50_us: m.p50_us,
            p99_us: m.p99_us,
            qd: m.qd,
            frames: m.frames_rx,
            retransmits: m.retransmits,
            errors: m.errors,
            verify: m.verify,
            verify_checked_sectors: m.verify_checked,
            verify_errors: m.verify_errors,
            stop_reason: &m.stop_reason,
            cpu_us_per_frame: m.cpu.map(|c| c.workers_us.unwrap_or(c.process_us)),
            process_cpu_us_per_frame: m.cpu.map(|c| c.process_us),
            worker_threads: m.cpu.map(|c| c.worker_threads),
            command: &m.command,
            target_command: &m.target_command,
            result: &m.result,
            target_result: m.target_result.as_ref(),
            reason: (!m.clean()).then(|| m.trouble()),
        })),
        Cell::Fio(f) => CellJson::Fio {
            status: "ok",
            iops: f.iops,
            mb_s: f.mb_s,
            p99_us: f.p99_us,
            command: &f.command,
            result: &f.result,
        },
    }
}

fn row_json(row: &Row) -> RowJson<'_> {
    let x = row.cell(Thing::Xblade).iops();
    RowJson {
        section: row.section.name(),
        case: row.case(),
        rw: row.rw,
        bs_bytes: u32::from(row.bs) * 512,
        mtu: row.mtu,
        qd: row.qd,
        backend: row.backend.name(),
        ok: row.problems().is_empty(),
        problems: row.problems(),
        xblade: cell_json(row.cell(Thing::Xblade)),
        vblade: cell_json(row.cell(Thing::Vblade)),
        echo: cell_json(row.cell(Thing::Echo)),
        fio: cell_json(row.cell(Thing::Fio)),
        ratios: Ratios {
            xblade_vblade: ratio(x, row.cell(Thing::Vblade).iops()),
            ceiling: row.ceiling().name(),
            xblade_ceiling: ratio(x, row.cell(row.ceiling()).iops()),
        },
    }
}

fn queue_run_json(r: &QueueRun) -> QueueRunJson<'_> {
    QueueRunJson {
        queues: r.queues,
        placement: r.placement.name(),
        pair_ratios: &r.pair_ratios,
        repetitions: r.repetitions,
        iops: r.iops,
        frames: r.frames,
        worker_ticks: r.worker_ticks,
        process_ticks: r.process_ticks,
        per_worker_ticks: &r.per_worker_ticks,
        cpu_us_per_frame: r.workers_us_per_frame,
        process_cpu_us_per_frame: r.process_us_per_frame,
        commands: &r.commands,
        results: &r.results,
    }
}

fn queues_json(q: &QueueCmp) -> QueuesJson<'_> {
    match q {
        QueueCmp::Pending => QueuesJson::Blank {
            status: "missing",
            reason: None,
        },
        QueueCmp::NotApplicable(r) => QueuesJson::Blank {
            status: "n/a",
            reason: Some(r),
        },
        QueueCmp::Done(runs) => QueuesJson::Done {
            status: "ok",
            method: "randread 1k QD16 per generator on the RAM image; xblade --queues 0 --cpus 1 \
                     (1 queue) or --queues 0,1 --cpus 0,1 (2 queues); generator q on macvlan \
                     xbl-mq over the initiator's veth end, pinned to CPU q, XPS tx-q = CPU q. \
                     1 queue 'shared core': the generator on CPU 1 with the worker (XPS: both \
                     CPUs to tx-0), as each worker of the 2-queue run shares its core; 'worker \
                     alone': the generator on CPU 0. ratio_2_over_1: the median over the adjacent \
                     pairs of shared runs of 2-queue over 1-queue CPU time per frame",
            ratio_2_over_1: super::queue_ratio(runs),
            runs: runs.iter().map(queue_run_json).collect(),
        },
    }
}

/// Writes the JSON and the SVG, copies them to `latest.*`, and renders the table.
/// `--node`: the node section alone, as `node-<time>.json` and `.svg` (and `node-latest.*`).
pub fn write_node(
    bench: &Bench,
    dir: &Path,
    started: SystemTime,
    elapsed: Duration,
    error: Option<&anyhow::Error>,
) -> Result<Outcome> {
    let mut problems = Vec::new();
    if let Some(e) = error {
        problems.push(format!("the bench stopped early: {e:#}"));
    }
    let (stamp, rfc) = super::utc(started);
    let table = match &bench.node {
        Some(n) => {
            problems.extend(n.problems.iter().cloned());
            super::node::table(n)
        }
        None => "storage node: not measured\n".to_owned(),
    };
    #[derive(Serialize)]
    struct NodeOnly<'a> {
        schema: &'static str,
        started: String,
        duration_s: f64,
        ok: bool,
        problems: &'a [String],
        host: HostInfo,
        target_cpu: usize,
        generator_cpu: usize,
        xblade: String,
        aoe_bench: String,
        node: Option<&'a super::node::NodeReport>,
    }
    let report = NodeOnly {
        schema: "xblade/bench-node/1",
        started: rfc.clone(),
        duration_s: elapsed.as_secs_f64(),
        ok: problems.is_empty(),
        problems: &problems,
        host: super::host_info(),
        target_cpu: TARGET_CPU,
        generator_cpu: GEN_CPU,
        xblade: bench.bins.xblade.display().to_string(),
        aoe_bench: bench.bins.aoe_bench.display().to_string(),
        node: bench.node.as_ref(),
    };
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join(format!("node-{stamp}.json"));
    let svg = dir.join(format!("node-{stamp}.svg"));
    let mut text = serde_json::to_string_pretty(&report).context("writing the report")?;
    text.push('\n');
    fs::write(&json, &text).with_context(|| format!("writing {}", json.display()))?;
    fs::write(dir.join("node-latest.json"), &text).context("writing node-latest.json")?;
    let plot = match &bench.node {
        Some(n) => super::node::plot(n, &format!("xblade bench --node {rfc}: IOPS per export"))?,
        None => String::new(),
    };
    fs::write(&svg, &plot).with_context(|| format!("writing {}", svg.display()))?;
    fs::write(dir.join("node-latest.svg"), &plot).context("writing node-latest.svg")?;
    Ok(Outcome {
        table,
        json,
        svg,
        problems,
    })
}

pub fn write_all(
    bench: &Bench,
    dir: &Path,
    started: SystemTime,
    elapsed: Duration,
    error: Option<&anyhow::Error>,
) -> Result<Outcome> {
    let (mut table, mut problems) = table(bench);
    if let Some(e) = error {
        problems.insert(0, format!("the bench stopped early: {e:#}"));
    }
    if let Some(n) = &bench.node {
        problems.extend(n.problems.iter().cloned());
        table.push('\n');
        table.push_str(&super::node::table(n));
    }
    let (stamp, rfc) = super::utc(started);
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let report = Report {
        schema: "xblade/bench/1",
        started: rfc.clone(),
        duration_s: elapsed.as_secs_f64(),
        quick: bench.opts.quick,
        ok: problems.is_empty(),
        problems: &problems,
        host: super::host_info(),
        settings: Settings {
            time_s: bench.opts.time_s,
            image_mib: bench.opts.image_mib(),
            export: format!("e{}.{}", super::SHELF, super::SLOT),
            target_cpu: TARGET_CPU,
            generator_cpu: GEN_CPU,
            xblade: bench.bins.xblade.display().to_string(),
            aoe_bench: bench.bins.aoe_bench.display().to_string(),
            lab: bench.lab.as_ref().map(|l| LabJson {
                target_ns: &l.target_ns,
                init_ns: &l.init_ns,
                target_if: &l.target_if,
                init_if: &l.init_if,
                ram_image: path(&l.ram_image),
                disk_image: path(&l.disk_image),
                disk_filesystem: bench.disk_fs.as_deref(),
                loop_dev: path(&l.loop_dev),
            }),
            backends: BACKENDS,
            notes: &bench.notes,
        },
        rows: bench.rows.iter().map(row_json).collect(),
        queues: queues_json(&bench.queues),
        memory_copies: bench
            .mem
            .iter()
            .map(|m| MemoryJson {
                bytes: m.bytes,
                ns_per_copy: m.ns_per_copy,
                gb_per_s: m.gb_per_s(),
                copies: m.copies,
                cpu: TARGET_CPU,
            })
            .collect(),
        node: bench.node.as_ref(),
    };
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(n) = &bench.node {
        let title = format!("xblade bench {rfc}: storage node, IOPS per export");
        let plot = super::node::plot(n, &title)?;
        let node_svg = dir.join(format!("bench-{stamp}-node.svg"));
        fs::write(&node_svg, &plot).with_context(|| format!("writing {}", node_svg.display()))?;
        fs::write(dir.join("latest-node.svg"), &plot).context("writing latest-node.svg")?;
    }
    let json = dir.join(format!("bench-{stamp}.json"));
    let svg = dir.join(format!("bench-{stamp}.svg"));
    let mut text = serde_json::to_string_pretty(&report).context("writing the report")?;
    text.push('\n');
    fs::write(&json, &text).with_context(|| format!("writing {}", json.display()))?;
    fs::write(dir.join("latest.json"), &text).context("writing latest.json")?;
    let title = format!(
        "xblade bench {rfc}{}: IOPS and p99 latency against queue depth",
        if bench.opts.quick { " (--quick)" } else { "" }
    );
    let plot = super::plot::plot(&bench.rows, &title)?;
    fs::write(&svg, &plot).with_context(|| format!("writing {}", svg.display()))?;
    fs::write(dir.join("latest.svg"), &plot).context("writing latest.svg")?;
    Ok(Outcome {
        table,
        json,
        svg,
        problems,
    })
}

/// Rows of one panel of the plot: the main and jumbo rows with this pattern and back end.
pub fn panels(rows: &[Row]) -> Vec<(String, Vec<&Row>)> {
    let mut out: Vec<(String, Vec<&Row>)> = Vec::new();
    for row in rows.iter().filter(|r| r.section != Section::Verify) {
        let name = format!(
            "{} {}{}",
            row.case(),
            match row.backend {
                Backend::Ram => "RAM",
                Backend::Disk => "disk file",
                Backend::Blk => "blk (loop device)",
            },
            if row.section == Section::Jumbo {
                ", MTU 9000"
            } else {
                ""
            }
        );
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(row),
            None => out.push((name, vec![row])),
        }
    }
    for (_, v) in &mut out {
        v.sort_by_key(|r| r.qd);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(si(495_812.0), "495.8k");
        assert_eq!(si(1_234_567.0), "1.23M");
        assert_eq!(si(12.0), "12");
        assert_eq!(us(72.66), "72.7");
        assert_eq!(us(4460.2), "4460");
        assert_eq!(us(1.234), "1.23");
        let mut n = Notes::default();
        assert_eq!(n.mark("a"), "[1]");
        assert_eq!(n.mark("b"), "[2]");
        assert_eq!(n.mark("a"), "[1]");
    }
}
