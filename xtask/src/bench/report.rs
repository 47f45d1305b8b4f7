//! The bench's outputs: the side-by-side table, the JSON of everything, the SVG plot.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};

use super::{
    json::{obj, Json},
    Backend, Bench, Cell, QueueCmp, Row, Section, Thing, GEN_CPU, TARGET_CPU, THINGS,
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
         (disk and blk rows)."
    );
    let _ = writeln!(out, "{}", backends_legend(bench));
    let _ = writeln!(
        out,
        "\nxblade CPU time per frame, 1 queue vs 2 queues (randread 1k QD16 per generator, RAM; \
         generator q on macvlan xbl-mq, CPU q, XPS to veth queue q):"
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
                "  {:>6} {:>9} {:>16} {:>16}  worker ticks",
                "queues", "IOPS", "µs/frame workers", "µs/frame process"
            );
            for r in runs {
                let _ = writeln!(
                    out,
                    "  {:>6} {:>9} {:>16.2} {:>16.2}  {:?} over {} run(s)",
                    r.queues,
                    si(r.iops),
                    r.workers_us_per_frame,
                    r.process_us_per_frame,
                    r.per_worker_ticks,
                    r.repetitions
                );
            }
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

fn memory_json(bench: &Bench) -> Json {
    Json::Arr(
        bench
            .mem
            .iter()
            .map(|m| {
                obj([
                    ("bytes", (m.bytes as u64).into()),
                    ("ns_per_copy", m.ns_per_copy.into()),
                    ("gb_per_s", m.gb_per_s().into()),
                    ("copies", m.copies.into()),
                    ("cpu", (TARGET_CPU as u64).into()),
                ])
            })
            .collect(),
    )
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

fn cell_json(cell: &Cell) -> Json {
    match cell {
        Cell::Pending => obj([("status", "missing".into())]),
        Cell::Skip => obj([("status", "none".into())]),
        Cell::NotApplicable(r) => obj([("status", "n/a".into()), ("reason", r.as_str().into())]),
        Cell::Error(e) => obj([("status", "error".into()), ("reason", e.as_str().into())]),
        Cell::Run(m) => {
            let mut j = obj([
                ("status", if m.clean() { "ok" } else { "error" }.into()),
                ("iops", m.iops.into()),
                ("mb_s", m.mb_s.into()),
                ("p50_us", m.p50_us.into()),
                ("p99_us", m.p99_us.into()),
                ("qd", m.qd.into()),
                ("frames", m.frames_rx.into()),
                ("retransmits", m.retransmits.into()),
                ("errors", m.errors.into()),
                ("verify", m.verify.into()),
                ("verify_checked_sectors", m.verify_checked.into()),
                ("verify_errors", m.verify_errors.into()),
                ("stop_reason", m.stop_reason.as_str().into()),
                (
                    "cpu_us_per_frame",
                    m.cpu
                        .and_then(|c| c.workers_us.or(Some(c.process_us)))
                        .into(),
                ),
                (
                    "process_cpu_us_per_frame",
                    m.cpu.map(|c| c.process_us).into(),
                ),
                ("worker_threads", m.cpu.map(|c| c.worker_threads).into()),
                ("command", m.command.as_str().into()),
                ("target_command", m.target_command.as_str().into()),
                ("result", m.result.clone()),
            ]);
            if let Some(t) = &m.target_result {
                j.set("target_result", t.clone());
            }
            if !m.clean() {
                j.set("reason", m.trouble());
            }
            j
        }
        Cell::Fio(f) => obj([
            ("status", "ok".into()),
            ("iops", f.iops.into()),
            ("mb_s", f.mb_s.into()),
            ("p99_us", f.p99_us.into()),
            ("command", f.command.as_str().into()),
            ("result", f.result.clone()),
        ]),
    }
}

fn row_json(row: &Row) -> Json {
    let x = row.cell(Thing::Xblade).iops();
    let mut j = obj([
        ("section", row.section.name().into()),
        ("case", row.case().into()),
        ("rw", row.rw.into()),
        ("bs_bytes", (u32::from(row.bs) * 512).into()),
        ("mtu", row.mtu.into()),
        ("qd", row.qd.into()),
        ("backend", row.backend.name().into()),
        ("ok", row.problems().is_empty().into()),
        ("problems", row.problems().into()),
    ]);
    for t in THINGS {
        j.set(t.name(), cell_json(row.cell(t)));
    }
    j.set(
        "ratios",
        obj([
            (
                "xblade_vblade",
                ratio(x, row.cell(Thing::Vblade).iops()).into(),
            ),
            ("ceiling", row.ceiling().name().into()),
            (
                "xblade_ceiling",
                ratio(x, row.cell(row.ceiling()).iops()).into(),
            ),
        ]),
    );
    j
}

fn queues_json(q: &QueueCmp) -> Json {
    match q {
        QueueCmp::Pending => obj([("status", "missing".into())]),
        QueueCmp::NotApplicable(r) => obj([("status", "n/a".into()), ("reason", r.as_str().into())]),
        QueueCmp::Done(runs) => obj([
            ("status", "ok".into()),
            (
                "method",
                "randread 1k QD16 per generator on the RAM image; xblade --queues 0 --cpus 1 (1 queue) \
                 or --queues 0,1 --cpus 0,1 (2 queues); generator q on macvlan xbl-mq over the \
                 initiator's veth end, pinned to CPU q, XPS tx-q = CPU q"
                    .into(),
            ),
            (
                "runs",
                Json::Arr(
                    runs.iter()
                        .map(|r| {
                            obj([
                                ("queues", r.queues.into()),
                                ("repetitions", r.repetitions.into()),
                                ("iops", r.iops.into()),
                                ("frames", r.frames.into()),
                                ("worker_ticks", r.worker_ticks.into()),
                                ("process_ticks", r.process_ticks.into()),
                                ("per_worker_ticks", r.per_worker_ticks.clone().into()),
                                ("cpu_us_per_frame", r.workers_us_per_frame.into()),
                                ("process_cpu_us_per_frame", r.process_us_per_frame.into()),
                                ("commands", r.commands.clone().into()),
                                ("results", Json::Arr(r.results.clone())),
                            ])
                        })
                        .collect(),
                ),
            ),
        ]),
    }
}

/// Writes the JSON and the SVG, copies them to `latest.*`, and renders the table.
pub fn write_all(
    bench: &Bench,
    dir: &Path,
    started: SystemTime,
    elapsed: Duration,
    error: Option<&anyhow::Error>,
) -> Result<Outcome> {
    let (table, mut problems) = table(bench);
    if let Some(e) = error {
        problems.insert(0, format!("the bench stopped early: {e:#}"));
    }
    let (stamp, rfc) = super::utc(started);
    let report = obj([
        ("schema", "xblade/bench/1".into()),
        ("started", rfc.clone().into()),
        ("duration_s", elapsed.as_secs_f64().into()),
        ("quick", bench.opts.quick.into()),
        ("ok", problems.is_empty().into()),
        ("problems", problems.clone().into()),
        ("host", super::host_info()),
        (
            "settings",
            obj([
                ("time_s", bench.opts.time_s.into()),
                ("image_mib", bench.opts.image_mib().into()),
                (
                    "export",
                    format!("e{}.{}", super::SHELF, super::SLOT).into(),
                ),
                ("target_cpu", (TARGET_CPU as u64).into()),
                ("generator_cpu", (GEN_CPU as u64).into()),
                ("xblade", bench.bins.xblade.display().to_string().into()),
                (
                    "aoe_bench",
                    bench.bins.aoe_bench.display().to_string().into(),
                ),
                (
                    "lab",
                    bench.lab.as_ref().map_or(Json::Null, |l| {
                        let path = |p: &Option<PathBuf>| {
                            Json::from(p.as_ref().map(|p| p.display().to_string()))
                        };
                        obj([
                            ("target_ns", l.target_ns.as_str().into()),
                            ("init_ns", l.init_ns.as_str().into()),
                            ("target_if", l.target_if.as_str().into()),
                            ("init_if", l.init_if.as_str().into()),
                            ("ram_image", path(&l.ram_image)),
                            ("disk_image", path(&l.disk_image)),
                            ("disk_filesystem", bench.disk_fs.clone().into()),
                            ("loop_dev", path(&l.loop_dev)),
                        ])
                    }),
                ),
                (
                    "backends",
                    obj([
                        ("ram", "the RAM image: a file on tmpfs".into()),
                        (
                            "disk",
                            "the disk image: a file on the root filesystem".into(),
                        ),
                        (
                            "blk",
                            "a loop block device (losetup --direct-io=on --sector-size 512) over \
                             the disk image"
                                .into(),
                        ),
                    ]),
                ),
                ("notes", bench.notes.clone().into()),
            ]),
        ),
        ("rows", Json::Arr(bench.rows.iter().map(row_json).collect())),
        ("queues", queues_json(&bench.queues)),
        ("memory_copies", memory_json(bench)),
    ]);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join(format!("bench-{stamp}.json"));
    let svg = dir.join(format!("bench-{stamp}.svg"));
    let text = report.pretty();
    fs::write(&json, &text).with_context(|| format!("writing {}", json.display()))?;
    fs::write(dir.join("latest.json"), &text).context("writing latest.json")?;
    let title = format!(
        "xblade bench {rfc}{}: IOPS and p99 latency against queue depth",
        if bench.opts.quick { " (--quick)" } else { "" }
    );
    let plot = super::svg::plot(&bench.rows, &title);
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
