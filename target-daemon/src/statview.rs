//! What `xblade status` and `xblade stat` print: a report for a person from a [`Status`], and
//! an iostat-style line per export per interval from two of them.

use std::fmt::Write as _;

use crate::latency::quantile_of;
use crate::status::{Bucket, ExportCounters, ExportStatus, Latency, Status};

/// The longest config string shown (escaped, in characters); longer ones end in `…`.
const CONFIG_WIDTH: usize = 32;

/// The report `xblade status` prints: the daemon, then tables of its exports (what and their
/// I/O), interfaces, initiators and workers. Ends with a newline.
pub fn status_text(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "xblade {}, pid {}, up {}",
        s.version,
        s.pid,
        duration(s.uptime_secs)
    );
    let mut head = Table::new(&[("", false), ("", false)]);
    head.row(vec!["control socket".into(), s.control.clone()]);
    head.row(vec![
        "state dir".into(),
        match &s.state_dir {
            Some(dir) => dir.clone(),
            None => "none: the AoE state initiators set is lost at exit".into(),
        },
    ]);
    out.push_str(&head.render(""));

    section(&mut out, "Exports", s.exports.len(), "no export");
    if !s.exports.is_empty() {
        let mut t = Table::new(&[
            ("EXPORT", false),
            ("SIZE", true),
            ("MODE", false),
            ("PATH", false),
            ("INTERFACES", false),
            ("CONFIG", false),
            ("MASK", false),
            ("RESERVE", false),
            ("ACL", false),
        ]);
        for e in &s.exports {
            t.row(vec![
                e.name.clone(),
                size(e.size_bytes),
                if e.read_only { "ro" } else { "rw" }.into(),
                e.path.clone(),
                dash(e.interfaces.join(",")),
                config(e),
                macs(&e.mask),
                macs(&e.reserve),
                macs(&e.acl),
            ]);
        }
        out.push_str(&t.render("  "));
        out.push('\n');
        let mut t = Table::new(&[
            ("EXPORT", false),
            ("READS", true),
            ("WRITES", true),
            ("MB READ", true),
            ("MB WRITTEN", true),
            ("ERRORS", true),
            ("IN FLIGHT", true),
            ("P50", true),
            ("P99", true),
        ]);
        for e in &s.exports {
            let c = &e.counters;
            let p = |us: f64| {
                if e.latency.count == 0 {
                    "-".into()
                } else {
                    micros(us)
                }
            };
            t.row(vec![
                e.name.clone(),
                c.reads.to_string(),
                c.writes.to_string(),
                format!("{:.1}", c.read_bytes as f64 / 1e6),
                format!("{:.1}", c.write_bytes as f64 / 1e6),
                c.errors.to_string(),
                c.in_flight.to_string(),
                p(e.latency.p50_us),
                p(e.latency.p99_us),
            ]);
        }
        out.push_str(&t.render("  "));
    }

    section(&mut out, "Interfaces", s.interfaces.len(), "no interface");
    if !s.interfaces.is_empty() {
        let mut t = Table::new(&[
            ("INTERFACE", false),
            ("MAC", false),
            ("MTU", true),
            ("XDP", false),
            ("SOCKETS", false),
            ("QUEUES", false),
            ("REDIRECTED", true),
            ("DROPPED", true),
            ("PASSED", true),
            ("DENIED", true),
            ("BAD ADDRESS", true),
        ]);
        for i in &s.interfaces {
            let queues: Vec<String> = i.queues.iter().map(u32::to_string).collect();
            t.row(vec![
                i.name.clone(),
                i.mac.clone(),
                i.mtu.to_string(),
                i.xdp_mode.clone(),
                if i.zero_copy { "zero-copy" } else { "copy" }.into(),
                dash(queues.join(",")),
                i.xdp.redirected.to_string(),
                i.xdp.dropped.to_string(),
                i.xdp.passed.to_string(),
                i.xdp.denied.to_string(),
                i.xdp.bad_address.to_string(),
            ]);
        }
        out.push_str(&t.render("  "));
    }

    section(
        &mut out,
        "Initiators",
        s.initiators.len(),
        "no initiator seen yet",
    );
    if !s.initiators.is_empty() {
        let mut t = Table::new(&[
            ("MAC", false),
            ("INTERFACE", false),
            ("FRAMES", true),
            ("LAST SEEN", true),
        ]);
        for i in &s.initiators {
            t.row(vec![
                i.mac.clone(),
                i.interface.clone(),
                i.frames.to_string(),
                format!("{} ago", duration(i.last_seen_secs_ago)),
            ]);
        }
        out.push_str(&t.render("  "));
    }

    section(&mut out, "Workers", s.workers.len(), "no worker");
    if !s.workers.is_empty() {
        let mut t = Table::new(&[
            ("INTERFACE", false),
            ("QUEUE", true),
            ("CPU", true),
            ("RX", true),
            ("TX", true),
            ("DROPPED", true),
            ("NO SLOT", true),
            ("NO FRAME", true),
            ("RETRIES", true),
            ("IN FLIGHT", true),
            ("STATE", false),
        ]);
        for w in &s.workers {
            t.row(vec![
                w.interface.clone(),
                w.queue.to_string(),
                w.cpu.map_or_else(|| "-".into(), |c| c.to_string()),
                w.rx_frames.to_string(),
                w.tx_frames.to_string(),
                w.dropped.to_string(),
                w.no_slot.to_string(),
                w.no_frame.to_string(),
                w.retries.to_string(),
                w.in_flight.to_string(),
                if w.responsive {
                    "ok".into()
                } else {
                    "UNRESPONSIVE (counters as last published)".into()
                },
            ]);
        }
        out.push_str(&t.render("  "));
    }
    out
}

/// The column headers of [`stat_lines`].
pub fn stat_header() -> String {
    format!(
        "{:<10} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>7} {:>8}",
        "export", "r/s", "w/s", "rMB/s", "wMB/s", "avg_us", "p99_us", "errors", "inflight"
    )
}

/// One line per export of `cur` (those named in `only`, or all when it is empty) over the
/// `secs` seconds since `prev`: reads and writes per second, MB (10^6 bytes) read and written
/// per second, the mean and 99th percentile latency of the requests answered in the interval
/// (µs; 0 without any), errors in the interval, requests in flight now.
///
/// An export absent from `prev`, or whose counters went down (removed and added again), counts
/// from zero; one absent from `cur` is left out.
pub fn stat_lines(prev: &Status, cur: &Status, secs: f64, only: &[String]) -> Vec<String> {
    let per_sec = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
    cur.exports
        .iter()
        .filter(|e| only.is_empty() || only.contains(&e.name))
        .map(|e| {
            let before = prev
                .exports
                .iter()
                .find(|p| p.name == e.name)
                .filter(|p| !went_down(p, e));
            let zero = ExportStatus::default();
            let p = before.unwrap_or(&zero);
            let (c, pc) = (&e.counters, &p.counters);
            let count = e.latency.count - p.latency.count;
            let avg = if count == 0 {
                0.0
            } else {
                (e.latency.sum_us - p.latency.sum_us).max(0.0) / count as f64
            };
            let p99 = quantile_of(&histogram_delta(&p.latency, &e.latency), 0.99);
            format!(
                "{:<10} {:>9.1} {:>9.1} {:>8.2} {:>8.2} {:>9.1} {:>9.1} {:>7} {:>8}",
                e.name,
                per_sec((c.reads - pc.reads) as f64),
                per_sec((c.writes - pc.writes) as f64),
                per_sec((c.read_bytes - pc.read_bytes) as f64 / 1e6),
                per_sec((c.write_bytes - pc.write_bytes) as f64 / 1e6),
                avg,
                p99,
                c.errors - pc.errors,
                c.in_flight,
            )
        })
        .collect()
}

/// Whether any counter of `cur` is below `prev`'s: the export was removed and added again
/// between the two (its counters start over).
fn went_down(prev: &ExportStatus, cur: &ExportStatus) -> bool {
    let (p, c): (&ExportCounters, &ExportCounters) = (&prev.counters, &cur.counters);
    let counters = [
        (p.reads, c.reads),
        (p.writes, c.writes),
        (p.flushes, c.flushes),
        (p.read_bytes, c.read_bytes),
        (p.write_bytes, c.write_bytes),
        (p.errors, c.errors),
        (prev.latency.count, cur.latency.count),
    ];
    counters.iter().any(|(p, c)| c < p)
        || cur.latency.sum_us < prev.latency.sum_us
        || prev.latency.buckets.iter().any(|pb| {
            let now = cur.latency.buckets.iter().find(|b| b.le_us == pb.le_us);
            now.map_or(0, |b| b.count) < pb.count
        })
}

/// The samples of `cur` not in `prev` (same buckets, by bound).
fn histogram_delta(prev: &Latency, cur: &Latency) -> Vec<Bucket> {
    cur.buckets
        .iter()
        .map(|b| {
            let before = prev.buckets.iter().find(|p| p.le_us == b.le_us);
            Bucket {
                le_us: b.le_us,
                count: b.count.saturating_sub(before.map_or(0, |p| p.count)),
            }
        })
        .filter(|b| b.count > 0)
        .collect()
}

/// A section title: `\nTitle (n)\n`, or `\nTitle: empty\n`.
fn section(out: &mut String, title: &str, n: usize, empty: &str) {
    if n == 0 {
        let _ = writeln!(out, "\n{title}: {empty}");
    } else {
        let _ = writeln!(out, "\n{title} ({n})");
    }
}

/// Columns aligned on their widest cell (in characters), numbers to the right.
struct Table {
    head: Vec<(String, bool)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns: header and whether it is right-aligned. All-empty headers: no header line.
    fn new(columns: &[(&str, bool)]) -> Table {
        Table {
            head: columns.iter().map(|(h, r)| ((*h).to_owned(), *r)).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, indent: &str) -> String {
        let mut widths: Vec<usize> = self.head.iter().map(|(h, _)| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let heads: Vec<String> = self.head.iter().map(|(h, _)| h.clone()).collect();
        let with_head = heads.iter().any(|h| !h.is_empty());
        let mut out = String::new();
        for row in with_head.then_some(&heads).into_iter().chain(&self.rows) {
            let mut line = indent.to_owned();
            for (i, ((cell, w), (_, right))) in row.iter().zip(&widths).zip(&self.head).enumerate()
            {
                if i > 0 {
                    line.push_str("  ");
                }
                if *right {
                    let _ = write!(line, "{cell:>w$}");
                } else {
                    let _ = write!(line, "{cell:<w$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `s` or `-` when empty.
fn dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// A MAC list in a cell: `-`, the MAC, or how many.
fn macs(list: &[String]) -> String {
    match list {
        [] => "-".into(),
        [one] => one.clone(),
        _ => format!("{} MACs", list.len()),
    }
}

/// The config string, quoted, escaped (control characters, bytes that are not UTF-8) and
/// truncated; `-` when empty.
fn config(e: &ExportStatus) -> String {
    let bytes = crate::statefile::unhex(&e.config_hex)
        .unwrap_or_else(|_| e.config_string.as_bytes().to_vec());
    if bytes.is_empty() {
        return "-".into();
    }
    let mut text = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' | '\\' => {
                    text.push('\\');
                    text.push(c);
                }
                c if c.is_control() => text.extend(c.escape_default()),
                c => text.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(text, "\\x{b:02x}");
        }
    }
    if text.chars().count() > CONFIG_WIDTH {
        let cut: String = text.chars().take(CONFIG_WIDTH - 1).collect();
        format!("\"{cut}…")
    } else {
        format!("\"{text}\"")
    }
}

/// A size in bytes, in binary units (`512 B`, `1.5 GiB`).
fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// A latency in microseconds, in the unit that suits it (`85µs`, `1.2ms`, `2.10s`).
fn micros(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.1}µs")
    } else if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 1e6 {
        format!("{:.1}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

/// A duration for people: `0.5s`, `42s`, `5m 3s`, `1h 2m 5s`, `3d 4h 5m`.
fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let s = secs as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{InitiatorStatus, WorkerStatus};

    fn export(name: &str) -> ExportStatus {
        ExportStatus {
            name: name.into(),
            path: format!("/srv/{name}.img"),
            size_bytes: 1 << 30,
            interfaces: vec!["eth1".into()],
            ..ExportStatus::default()
        }
    }

    fn status() -> Status {
        let mut e10 = export("e1.0");
        e10.config_string = "cluster \"a\"\n".into();
        e10.config_hex = crate::status::hex(b"cluster \"a\"\n");
        e10.mask = vec!["02:00:00:00:00:01".into(), "02:00:00:00:00:02".into()];
        e10.reserve = vec!["02:00:00:00:00:01".into()];
        e10.counters = ExportCounters {
            reads: 1000,
            writes: 500,
            read_bytes: 4_096_000,
            write_bytes: 2_048_000,
            errors: 2,
            in_flight: 3,
            ..ExportCounters::default()
        };
        e10.latency = Latency {
            count: 1500,
            sum_us: 150_000.0,
            p50_us: 81.92,
            p99_us: 131.072,
            ..Latency::default()
        };
        let mut e11 = export("e1.1");
        e11.read_only = true;
        e11.size_bytes = 512;
        e11.config_hex = crate::status::hex(&[0x66, 0xff, 0x00]);
        e11.config_string = String::from_utf8_lossy(&[0x66, 0xff, 0x00]).into_owned();
        Status {
            format: 1,
            version: "0.1.0".into(),
            pid: 4242,
            uptime_secs: 3725.5,
            control: "/run/xblade/control.sock".into(),
            state_dir: Some("/var/lib/xblade".into()),
            exports: vec![e10, e11],
            interfaces: vec![crate::status::sample_interface()],
            initiators: vec![InitiatorStatus {
                mac: "02:00:00:00:00:01".into(),
                interface: "eth1".into(),
                frames: 1200,
                last_seen_secs_ago: 61.0,
            }],
            workers: vec![
                WorkerStatus {
                    interface: "eth1".into(),
                    queue: 0,
                    cpu: Some(2),
                    responsive: true,
                    rx_frames: 900,
                    tx_frames: 880,
                    dropped: 20,
                    no_slot: 1,
                    in_flight: 2,
                    ..WorkerStatus::default()
                },
                WorkerStatus {
                    interface: "eth1".into(),
                    queue: 1,
                    cpu: None,
                    responsive: false,
                    rx_frames: 700,
                    ..WorkerStatus::default()
                },
            ],
        }
    }

    /// The cells of the line of `text` that starts (after the indent) with `first`.
    fn row<'a>(text: &'a str, first: &str, nth: usize) -> Vec<&'a str> {
        let line = text
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(first))
            .nth(nth)
            .unwrap_or_else(|| panic!("no line {nth} starting with {first} in\n{text}"));
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    #[test]
    fn status_report_shows_everything_aligned() {
        let text = status_text(&status());
        assert!(
            text.starts_with("xblade 0.1.0, pid 4242, up 1h 2m 5s\n"),
            "{text}"
        );
        assert!(
            text.contains("control socket  /run/xblade/control.sock\n"),
            "{text}"
        );
        assert!(text.contains("state dir       /var/lib/xblade\n"), "{text}");
        assert!(text.ends_with('\n'));

        assert_eq!(
            row(&text, "e1.0", 0),
            [
                "e1.0",
                "1.0 GiB",
                "rw",
                "/srv/e1.0.img",
                "eth1",
                r#""cluster \"a\"\n""#,
                "2 MACs",
                "02:00:00:00:00:01",
                "-"
            ]
        );
        assert_eq!(
            row(&text, "e1.1", 0),
            [
                "e1.1",
                "512 B",
                "ro",
                "/srv/e1.1.img",
                "eth1",
                r#""f\xff\u{0}""#,
                "-",
                "-",
                "-"
            ]
        );
        assert_eq!(
            row(&text, "e1.0", 1),
            ["e1.0", "1000", "500", "4.1", "2.0", "2", "3", "82µs", "131µs"]
        );
        assert_eq!(
            row(&text, "e1.1", 1),
            ["e1.1", "0", "0", "0.0", "0.0", "0", "0", "-", "-"]
        );
        assert_eq!(
            row(&text, "eth1", 0),
            [
                "eth1",
                "02:00:00:00:00:aa",
                "9000",
                "driver",
                "zero-copy",
                "0,1",
                "1600",
                "5",
                "77",
                "1",
                "0"
            ]
        );
        assert_eq!(
            row(&text, "02:00:00:00:00:01", 0),
            ["02:00:00:00:00:01", "eth1", "1200", "1m 1s ago"]
        );
        assert_eq!(
            row(&text, "eth1", 1),
            ["eth1", "0", "2", "900", "880", "20", "1", "0", "0", "2", "ok"]
        );
        assert_eq!(
            row(&text, "eth1", 2),
            [
                "eth1",
                "1",
                "-",
                "700",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "UNRESPONSIVE (counters as last published)"
            ]
        );

        // Aligned: in each table, every line of it has its columns at the same offsets as its
        // header (left-aligned columns start there, right-aligned ones end there).
        let lines: Vec<&str> = text.lines().collect();
        let mut headers = (0..lines.len()).filter(|i| lines[*i].trim_start().starts_with("EXPORT"));
        let (first, io) = (headers.next().unwrap(), headers.next().unwrap());
        for l in &lines[first..first + 3] {
            assert_eq!(
                l.find("/srv").or(l.find("PATH")),
                lines[first].find("PATH"),
                "{l}"
            );
        }
        for l in &lines[io..io + 3] {
            // MB WRITTEN is right-aligned: its last character at the same column.
            let end = lines[io].find("MB WRITTEN").unwrap() + "MB WRITTEN".len();
            let before: String = l.chars().take(end).collect();
            assert!(!before.ends_with(' '), "{l}");
            assert!(l.chars().nth(end).is_none_or(|c| c == ' '), "{l}");
        }
        assert!(
            lines.iter().all(|l| !l.ends_with(' ')),
            "trailing blanks in\n{text}"
        );
    }

    #[test]
    fn empty_sections_say_so() {
        let text = status_text(&Status {
            version: "0.1.0".into(),
            control: "/run/xblade/control.sock".into(),
            ..Status::default()
        });
        for line in [
            "Exports: no export",
            "Interfaces: no interface",
            "Initiators: no initiator seen yet",
            "Workers: no worker",
            "state dir       none: the AoE state initiators set is lost at exit",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn long_config_strings_are_truncated() {
        let mut e = export("e1.0");
        e.config_hex = crate::status::hex(&[b'x'; 1024]);
        let shown = config(&e);
        assert_eq!(shown.chars().count(), CONFIG_WIDTH + 1);
        assert!(
            shown.starts_with("\"xxx") && shown.ends_with("x…"),
            "{shown}"
        );
        e.config_hex = crate::status::hex(b"short");
        assert_eq!(config(&e), "\"short\"");
    }

    #[test]
    fn human_units() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(10 << 40), "10.0 TiB");
        assert_eq!(micros(3.5), "3.5µs");
        assert_eq!(micros(114.688), "115µs");
        assert_eq!(micros(1250.0), "1.2ms");
        assert_eq!(micros(2_100_000.0), "2.10s");
        assert_eq!(duration(0.5), "0.5s");
        assert_eq!(duration(42.0), "42s");
        assert_eq!(duration(303.0), "5m 3s");
        assert_eq!(duration(3725.0), "1h 2m 5s");
        assert_eq!(
            duration(3.0 * 86400.0 + 4.0 * 3600.0 + 5.0 * 60.0 + 9.0),
            "3d 4h 5m"
        );
    }

    fn with(name: &str, f: impl FnOnce(&mut ExportStatus)) -> ExportStatus {
        let mut e = export(name);
        f(&mut e);
        e
    }

    fn hist(buckets: &[(f64, u64)], sum_us: f64) -> Latency {
        Latency {
            count: buckets.iter().map(|b| b.1).sum(),
            sum_us,
            buckets: buckets
                .iter()
                .map(|&(le_us, count)| Bucket { le_us, count })
                .collect(),
            ..Latency::default()
        }
    }

    /// The numbers of a stat line.
    fn numbers(line: &str) -> (String, Vec<f64>) {
        let mut cells = line.split_whitespace();
        let name = cells.next().unwrap().to_owned();
        (name, cells.map(|c| c.parse().unwrap()).collect())
    }

    #[test]
    fn stat_lines_are_rates_over_the_interval() {
        let prev = Status {
            exports: vec![
                with("e1.0", |e| {
                    e.counters.reads = 1000;
                    e.counters.writes = 100;
                    e.counters.read_bytes = 4_000_000;
                    e.counters.write_bytes = 1_000_000;
                    e.counters.errors = 1;
                    e.latency = hist(&[(81.92, 900), (131.072, 100)], 90_000.0);
                }),
                with("e1.1", |e| e.counters.reads = 5),
                with("e1.9", |e| e.counters.reads = 5),
            ],
            ..Status::default()
        };
        let cur = Status {
            exports: vec![
                with("e1.0", |e| {
                    e.counters.reads = 1400;
                    e.counters.writes = 300;
                    e.counters.read_bytes = 6_000_000;
                    e.counters.write_bytes = 5_000_000;
                    e.counters.errors = 3;
                    e.counters.in_flight = 7;
                    // 200 more at ≤ 81.92 µs, 3 more at ≤ 1.31 ms: the interval's p99 is in
                    // the 1.31 ms bucket although the whole history's is not.
                    e.latency = hist(
                        &[(81.92, 1100), (131.072, 100), (1310.72, 3)],
                        90_000.0 + 203.0 * 50.0,
                    );
                }),
                // Nothing happened.
                with("e1.1", |e| e.counters.reads = 5),
                // New since prev.
                with("e1.2", |e| {
                    e.counters.reads = 10;
                    e.latency = hist(&[(5.12, 10)], 40.0);
                }),
            ],
            ..Status::default()
        };
        let header = stat_header();
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            ["export", "r/s", "w/s", "rMB/s", "wMB/s", "avg_us", "p99_us", "errors", "inflight"]
        );

        let lines = stat_lines(&prev, &cur, 2.0, &[]);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        // Columns line up with the header.
        for l in &lines {
            assert_eq!(l.len(), stat_header().len(), "{l}\n{}", stat_header());
        }
        let (name, n) = numbers(&lines[0]);
        assert_eq!(name, "e1.0");
        assert_eq!(
            n,
            [200.0, 100.0, 1.0, 2.0, 50.0, 1310.7, 2.0, 7.0],
            "{}",
            lines[0]
        );
        let (name, n) = numbers(&lines[1]);
        assert_eq!(name, "e1.1");
        assert_eq!(n, [0.0; 8], "{}", lines[1]);
        let (name, n) = numbers(&lines[2]);
        assert_eq!(name, "e1.2");
        assert_eq!(n, [5.0, 0.0, 0.0, 0.0, 4.0, 5.1, 0.0, 0.0], "{}", lines[2]);

        // Only some, in the daemon's order; a name it does not have gives nothing.
        let only = ["e1.2".to_owned(), "e1.0".to_owned(), "e9.9".to_owned()];
        let lines = stat_lines(&prev, &cur, 2.0, &only);
        let names: Vec<String> = lines.iter().map(|l| numbers(l).0).collect();
        assert_eq!(names, ["e1.0", "e1.2"]);
    }

    #[test]
    fn stat_counts_a_re_added_export_from_zero() {
        let prev = Status {
            exports: vec![with("e1.0", |e| {
                e.counters.reads = 1000;
                e.counters.read_bytes = 4_000_000;
                e.latency = hist(&[(81.92, 1000)], 80_000.0);
            })],
            ..Status::default()
        };
        let cur = Status {
            exports: vec![with("e1.0", |e| {
                e.counters.reads = 10;
                e.counters.read_bytes = 40_960;
                e.latency = hist(&[(81.92, 10)], 500.0);
            })],
            ..Status::default()
        };
        let lines = stat_lines(&prev, &cur, 1.0, &[]);
        let (_, n) = numbers(&lines[0]);
        assert_eq!(
            n,
            [10.0, 0.0, 0.04, 0.0, 50.0, 81.9, 0.0, 0.0],
            "{}",
            lines[0]
        );
        // No time elapsed: no rate rather than infinity.
        let lines = stat_lines(&prev, &cur, 0.0, &[]);
        let (_, n) = numbers(&lines[0]);
        assert_eq!(n[..4], [0.0; 4], "{}", lines[0]);
    }
}
