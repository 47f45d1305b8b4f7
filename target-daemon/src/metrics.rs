//! The Prometheus endpoint: [`render`] turns a [`Status`] into the text exposition format
//! (version 0.0.4) with `prometheus-client`, and [`serve`] answers `GET /metrics` with it over
//! HTTP (`tiny_http`), from a thread of its own.
//!
//! Every scrape builds a fresh [`Registry`] holding one [`Collector`] over a snapshot of the
//! status: the daemon's counters live in its workers, not in `prometheus-client` atomics, so
//! the metrics are constants read at scrape time (the crate's "collector" use case).
//!
//! Names follow the Prometheus conventions: an `xblade_` prefix, `_total` on counters (the
//! encoder appends it), base units (`_seconds`, `_bytes`). Labels: `export` (`e1.0`),
//! `interface`, `queue`, `mac`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context as _};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::status::{
    Bucket, ExportCounters, ExportStatus, Latency, Status, WorkerStatus, XdpCounters,
};

/// The `Content-Type` of what [`render`] produces (the Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The metrics of `s` in the Prometheus text exposition format (version 0.0.4).
pub fn render(s: &Status) -> String {
    let mut registry = Registry::with_prefix("xblade");
    registry.register_collector(Box::new(StatusCollector(s.clone())));
    let mut out = String::new();
    // Writing into a String cannot fail, nor can encoding constants: an error here would be a
    // bug in the encoder. Serve what was written rather than nothing.
    if let Err(e) = prometheus_text::encode(&mut out, &registry) {
        tracing::error!("encoding the Prometheus metrics failed ({e}); the scrape is truncated");
    }
    out
}

/// The labels of one sample.
type Labels = Vec<(&'static str, String)>;

/// A metric read from a `T`: name, help, value.
type Def<T> = (&'static str, &'static str, fn(&T) -> u64);

/// A snapshot of the status, encoded on a scrape.
#[derive(Debug)]
struct StatusCollector(Status);

/// One metric family: its samples, each a label set and a value.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, M)>,
) -> fmt::Result {
    // A family without a sample (no initiator seen yet, say) is left out altogether, as the Go
    // client does: HELP and TYPE lines with no sample carry nothing.
    let Some((_, first)) = samples.first() else {
        return Ok(());
    };
    let mut metric = enc.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, value) in &samples {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: u64) -> ConstGauge<u64> {
    ConstGauge::new(v)
}

impl Collector for StatusCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let enc = &mut enc;

        family(
            enc,
            "build_info",
            "xblade's version; the value is always 1.",
            vec![(vec![("version", s.version.clone())], gauge(1))],
        )?;
        family(
            enc,
            "uptime_seconds",
            "Seconds since the daemon started.",
            vec![(vec![], ConstGauge::new(s.uptime_secs))],
        )?;

        // Exports.
        let export = |e: &ExportStatus| vec![("export", e.name.clone())];
        let export_counters: [Def<ExportCounters>; 6] = [
            ("export_reads", "Read commands answered.", |c| c.reads),
            ("export_writes", "Write commands answered.", |c| c.writes),
            ("export_flushes", "FLUSH CACHE commands answered.", |c| {
                c.flushes
            }),
            ("export_read_bytes", "Bytes read.", |c| c.read_bytes),
            ("export_write_bytes", "Bytes written.", |c| c.write_bytes),
            (
                "export_errors",
                "Requests answered with an ATA error by the storage side (I/O errors).",
                |c| c.errors,
            ),
        ];
        for (name, help, get) in export_counters {
            let samples = s.exports.iter();
            let samples = samples.map(|e| (export(e), counter(get(&e.counters))));
            family(enc, name, help, samples.collect())?;
        }
        let export_gauges: [Def<ExportStatus>; 3] = [
            (
                "export_in_flight",
                "Requests accepted and not answered yet.",
                |e| e.counters.in_flight,
            ),
            ("export_size_bytes", "Size of the export in bytes.", |e| {
                e.size_bytes
            }),
            (
                "export_read_only",
                "1 if the export refuses writes, else 0.",
                |e| u64::from(e.read_only),
            ),
        ];
        for (name, help, get) in export_gauges {
            let samples = s.exports.iter().map(|e| (export(e), gauge(get(e))));
            family(enc, name, help, samples.collect())?;
        }
        let samples = s.exports.iter();
        let samples = samples.map(|e| (export(e), ConstHistogram::from(&e.latency)));
        family(
            enc,
            "export_request_duration_seconds",
            "Request latency, from the request's arrival to its reply, since the export was \
             added.",
            samples.collect(),
        )?;

        // Interfaces.
        let interface = |name: &str| vec![("interface", name.to_owned())];
        let xdp_counters: [Def<XdpCounters>; 5] = [
            (
                "xdp_redirected",
                "AoE requests the XDP program redirected to a worker's socket.",
                |x| x.redirected,
            ),
            (
                "xdp_dropped",
                "AoE frames the XDP program dropped (no socket on the queue, malformed, \
                 response bit set).",
                |x| x.dropped,
            ),
            (
                "xdp_passed",
                "Frames the XDP program passed to the host stack (not AoE).",
                |x| x.passed,
            ),
            (
                "xdp_denied",
                "AoE requests the XDP program dropped because no export on the interface \
                 lists the source MAC.",
                |x| x.denied,
            ),
            (
                "xdp_bad_address",
                "AoE requests the XDP program dropped for a group or zero source MAC or a \
                 foreign destination MAC.",
                |x| x.bad_address,
            ),
        ];
        for (name, help, get) in xdp_counters {
            let samples = s.interfaces.iter();
            let samples = samples.map(|i| (interface(&i.name), counter(get(&i.xdp))));
            family(enc, name, help, samples.collect())?;
        }
        let samples = s.interfaces.iter();
        let samples = samples.map(|i| (interface(&i.name), gauge(u64::from(i.zero_copy))));
        family(
            enc,
            "interface_zero_copy",
            "1 if the interface's AF_XDP sockets run zero-copy, 0 in copy mode.",
            samples.collect(),
        )?;

        // Workers.
        let worker = |w: &WorkerStatus| {
            vec![
                ("interface", w.interface.clone()),
                ("queue", w.queue.to_string()),
            ]
        };
        let worker_counters: [Def<WorkerStatus>; 9] = [
            ("worker_rx_frames", "Frames the worker received.", |w| {
                w.rx_frames
            }),
            ("worker_tx_frames", "Frames the worker sent.", |w| {
                w.tx_frames
            }),
            (
                "worker_dropped",
                "Frames the worker answered not (not for this target, masked, response bit \
                 set, ...).",
                |w| w.dropped,
            ),
            (
                "worker_no_slot",
                "Requests dropped for want of an in-flight slot (the initiator retransmits).",
                |w| w.no_slot,
            ),
            (
                "worker_no_frame",
                "Requests dropped for want of a packet buffer (the initiator retransmits).",
                |w| w.no_frame,
            ),
            (
                "worker_retries",
                "Storage operations issued again after a transient error.",
                |w| w.retries,
            ),
            (
                "worker_ordered_waits",
                "Requests that waited for an overlapping earlier one.",
                |w| w.ordered_waits,
            ),
            (
                "worker_sleeps",
                "Times the worker slept for want of work.",
                |w| w.sleeps,
            ),
            (
                "worker_commits",
                "Group commits: cache flushes each of which made a batch of completed durable \
                 writes durable.",
                |w| w.commits,
            ),
        ];
        for (name, help, get) in worker_counters {
            let samples = s.workers.iter().map(|w| (worker(w), counter(get(w))));
            family(enc, name, help, samples.collect())?;
        }
        let spin = s
            .workers
            .iter()
            .map(|w| (worker(w), ConstCounter::new(w.spin_ns as f64 / 1e9)));
        family(
            enc,
            "worker_spin_seconds",
            "Time the worker spent spinning idle (polling for work that was not there): CPU \
             time that served no frame.",
            spin.collect(),
        )?;
        let worker_gauges: [Def<WorkerStatus>; 2] = [
            (
                "worker_in_flight",
                "Requests in flight on the worker.",
                |w| w.in_flight,
            ),
            (
                "worker_responsive",
                "1 if the worker answered the last status request, 0 if it did not (its \
                 counters are then the last it published).",
                |w| u64::from(w.responsive),
            ),
        ];
        for (name, help, get) in worker_gauges {
            let samples = s.workers.iter().map(|w| (worker(w), gauge(get(w))));
            family(enc, name, help, samples.collect())?;
        }

        // Initiators.
        let samples = s.initiators.iter().map(|i| {
            let labels = vec![("interface", i.interface.clone()), ("mac", i.mac.clone())];
            (labels, counter(i.frames))
        });
        family(
            enc,
            "initiator_frames",
            "AoE frames received from the initiator (by source MAC) on the interface.",
            samples.collect(),
        )
    }
}

/// The Prometheus bucket bounds of [`ConstHistogram`], in nanoseconds: powers of two from
/// 1.024 µs to 4.29 s (`2^10` to `2^32` ns).
const LE_NS: [u64; 23] = {
    let mut le = [0; 23];
    let mut i = 0;
    while i < le.len() {
        le[i] = 1 << (10 + i);
        i += 1;
    }
    le
};

/// A latency histogram read from the status, encoded as a Prometheus histogram.
///
/// `prometheus-client` has no constant histogram, and its `Histogram` only learns through
/// `observe()`: feeding it would mean replaying every request (billions of them) or one
/// fake sample per bucket (a wrong `_sum`). Its encoder, though, takes buckets, sum and count
/// as they are (`MetricEncoder::encode_histogram`, which also makes them cumulative and adds
/// `+Inf`): this type hands it the status's histogram, exactly.
///
/// The buckets are fixed, powers of two ([`LE_NS`]), rather than the status's non-empty
/// buckets: a series must not come and go between scrapes (a bucket appearing mid-way loses
/// its first increase in `rate()`, and summing exports by `le` needs the same bounds
/// everywhere), and 24 series per export rather than 91. Every bound of [`crate::latency`]'s
/// buckets at `2^k` ns is one of them, so the folding is exact; a status bucket falls into the
/// first power of two at or above its bound, and the slowest (which also counts everything
/// above ~4.3 s) into `+Inf` only.
#[derive(Debug)]
struct ConstHistogram {
    /// Seconds.
    sum: f64,
    count: u64,
    /// `(upper bound in seconds, count)`, not cumulative.
    buckets: Vec<(f64, u64)>,
}

impl From<&Latency> for ConstHistogram {
    fn from(l: &Latency) -> Self {
        let mut counts = [0u64; LE_NS.len()];
        let mut count = 0u64;
        for Bucket { le_us, count: n } in &l.buckets {
            let le_ns = (le_us * 1000.0).round() as u64;
            if let Some(i) = LE_NS.iter().position(|le| *le >= le_ns) {
                counts[i] += n;
            }
            count += n;
        }
        ConstHistogram {
            sum: l.sum_us / 1e6,
            count,
            buckets: LE_NS
                .iter()
                .zip(counts)
                .map(|(le, n)| (*le as f64 / 1e9, n))
                .collect(),
        }
    }
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The HTTP endpoint answering Prometheus scrapes. Dropping it stops and joins its thread and
/// closes the listening socket.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// The address it listens on (with the actual port when it was asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Queued after any request already received: the thread answers those, then stops.
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the Prometheus endpoint's thread panicked");
            }
        }
    }
}

/// Listens on `addr` (`host:port`, e.g. `127.0.0.1:9477`) at once and answers `GET /metrics`
/// with [`render`]`(&source())`, one call per scrape, from a thread of its own; other paths get
/// 404, other methods 405.
pub fn serve(
    addr: &str,
    source: Arc<dyn Fn() -> Status + Send + Sync>,
) -> anyhow::Result<MetricsServer> {
    let server = tiny_http::Server::http(addr).map_err(|e| {
        anyhow!(
            "cannot listen for Prometheus scrapes on {addr}: {e}; give the metrics endpoint a \
             free local address and port (host:port, e.g. 127.0.0.1:9477) with --metrics ADDR \
             or `metrics` in the [daemon] section of the configuration, or stop whatever \
             listens there already (ss -ltnp shows it)"
        )
    })?;
    let Some(local) = server.server_addr().to_ip() else {
        return Err(anyhow!(
            "the metrics endpoint {addr} is not an IP address and port; give host:port, e.g. \
             127.0.0.1:9477, to --metrics or `metrics` in the [daemon] section"
        ));
    };
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let server = Arc::clone(&server);
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || run(&server, &stop, &*source))
            .context("cannot start the Prometheus endpoint's thread")?
    };
    tracing::info!("Prometheus metrics on http://{local}/metrics");
    Ok(MetricsServer {
        server,
        stop,
        thread: Some(thread),
        addr: local,
    })
}

fn run(server: &tiny_http::Server, stop: &AtomicBool, source: &(dyn Fn() -> Status + Sync)) {
    loop {
        let request = match server.recv() {
            Ok(request) => request,
            // `unblock()` surfaces as an error too: the flag tells it apart.
            Err(_) if stop.load(Ordering::SeqCst) => return,
            // tiny_http's accept thread reports its first accept() error here and quits.
            Err(e) => {
                tracing::error!(
                    "the Prometheus endpoint stopped: accepting a connection failed ({e}); \
                     restart xblade to serve metrics again"
                );
                return;
            }
        };
        let path = request.url().split('?').next().unwrap_or_default();
        let response = match (request.method(), path) {
            (tiny_http::Method::Get | tiny_http::Method::Head, "/metrics") => {
                let body = tiny_http::Response::from_string(render(&source()));
                with_header(body, "Content-Type", CONTENT_TYPE)
            }
            (tiny_http::Method::Get | tiny_http::Method::Head, _) => {
                tiny_http::Response::from_string("not found: the metrics are at /metrics\n")
                    .with_status_code(404)
            }
            _ => with_header(
                tiny_http::Response::from_string("method not allowed: use GET /metrics\n")
                    .with_status_code(405),
                "Allow",
                "GET, HEAD",
            ),
        };
        if let Err(e) = request.respond(response) {
            // The scraper went away: its problem, and it retries at the next interval.
            tracing::debug!("answering a Prometheus scrape failed: {e}");
        }
    }
}

/// `response` with the header `name: value` (constants: valid ASCII, which cannot fail).
fn with_header<R: std::io::Read>(
    mut response: tiny_http::Response<R>,
    name: &str,
    value: &str,
) -> tiny_http::Response<R> {
    if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
        response.add_header(h);
    }
    response
}

/// Run `promtool check metrics` (Debian package `prometheus`) on an exposition: whether it
/// passed, and what promtool said (empty when it has nothing to lint). For the tests, and for an
/// admin checking a scrape by hand.
pub fn promtool_check(text: &str) -> std::io::Result<(bool, String)> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), said))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ExportCounters, ExportStatus, InitiatorStatus, WorkerStatus};
    use std::io::Read as _;
    use std::io::Write as _;
    use std::net::TcpStream;
    use std::time::Duration;
    use std::time::Instant;

    fn bucket(le_us: f64, count: u64) -> Bucket {
        Bucket { le_us, count }
    }

    fn status() -> Status {
        Status {
            format: 1,
            version: "0.1.0".into(),
            pid: 4242,
            uptime_secs: 3725.5,
            control: "/run/xblade/control".into(),
            state_dir: Some("/var/lib/xblade".into()),
            exports: vec![
                ExportStatus {
                    name: "e1.0".into(),
                    shelf: 1,
                    slot: 0,
                    path: "/dev/vg0/disk0".into(),
                    sectors: 2_097_152,
                    size_bytes: 1 << 30,
                    read_only: false,
                    kind: "block".into(),
                    interfaces: vec!["eth1".into()],
                    counters: ExportCounters {
                        reads: 1000,
                        writes: 500,
                        flushes: 7,
                        read_bytes: 4_096_000,
                        write_bytes: 2_048_000,
                        errors: 2,
                        in_flight: 3,
                    },
                    latency: Latency {
                        count: 1500,
                        sum_us: 150_000.0,
                        // Bounds as crate::latency makes them: 1.024 µs, 81.92 µs (5<<14
                        // ns), 131.072 µs (8<<14 = 2^17 ns), and the slowest bucket.
                        buckets: vec![
                            bucket(1.024, 100),
                            bucket(81.92, 1000),
                            bucket(131.072, 399),
                            bucket(5368709.12, 1),
                        ],
                        ..Latency::default()
                    },
                    ..ExportStatus::default()
                },
                ExportStatus {
                    name: "e1.1".into(),
                    shelf: 1,
                    slot: 1,
                    path: "/srv/img".into(),
                    size_bytes: 10_000_000,
                    read_only: true,
                    kind: "file".into(),
                    latency: Latency {
                        count: 4,
                        sum_us: 2_000_000.0,
                        buckets: vec![bucket(458752.0, 4)],
                        ..Latency::default()
                    },
                    ..ExportStatus::default()
                },
            ],
            interfaces: vec![crate::status::sample_interface()],
            initiators: vec![
                InitiatorStatus {
                    mac: "02:00:00:00:00:01".into(),
                    interface: "eth1".into(),
                    frames: 1200,
                    last_seen_secs_ago: 0.5,
                },
                InitiatorStatus {
                    mac: "02:00:00:00:00:02".into(),
                    interface: "eth1".into(),
                    frames: 400,
                    last_seen_secs_ago: 61.0,
                },
            ],
            workers: vec![
                WorkerStatus {
                    interface: "eth1".into(),
                    queue: 0,
                    cpu: Some(0),
                    responsive: true,
                    rx_frames: 900,
                    tx_frames: 880,
                    dropped: 20,
                    no_slot: 1,
                    no_frame: 2,
                    retries: 3,
                    ordered_waits: 4,
                    in_flight: 2,
                    spin_ns: 1_500_000_000,
                    sleeps: 7,
                    commits: 3,
                },
                WorkerStatus {
                    interface: "eth1".into(),
                    queue: 1,
                    cpu: Some(1),
                    responsive: false,
                    rx_frames: 700,
                    tx_frames: 700,
                    in_flight: 1,
                    ..WorkerStatus::default()
                },
            ],
        }
    }

    /// The sample lines of `text`, without HELP and TYPE.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn renders_every_family_with_help_type_and_values() {
        let text = render(&status());
        let lines = samples(&text);
        for expected in [
            r#"xblade_build_info{version="0.1.0"} 1"#,
            "xblade_uptime_seconds 3725.5",
            r#"xblade_export_reads_total{export="e1.0"} 1000"#,
            r#"xblade_export_reads_total{export="e1.1"} 0"#,
            r#"xblade_export_writes_total{export="e1.0"} 500"#,
            r#"xblade_export_flushes_total{export="e1.0"} 7"#,
            r#"xblade_export_read_bytes_total{export="e1.0"} 4096000"#,
            r#"xblade_export_write_bytes_total{export="e1.0"} 2048000"#,
            r#"xblade_export_errors_total{export="e1.0"} 2"#,
            r#"xblade_export_in_flight{export="e1.0"} 3"#,
            r#"xblade_export_size_bytes{export="e1.0"} 1073741824"#,
            r#"xblade_export_size_bytes{export="e1.1"} 10000000"#,
            r#"xblade_export_read_only{export="e1.0"} 0"#,
            r#"xblade_export_read_only{export="e1.1"} 1"#,
            r#"xblade_xdp_redirected_total{interface="eth1"} 1600"#,
            r#"xblade_xdp_dropped_total{interface="eth1"} 5"#,
            r#"xblade_xdp_passed_total{interface="eth1"} 77"#,
            r#"xblade_xdp_denied_total{interface="eth1"} 1"#,
            r#"xblade_xdp_bad_address_total{interface="eth1"} 0"#,
            r#"xblade_interface_zero_copy{interface="eth1"} 1"#,
            r#"xblade_worker_rx_frames_total{interface="eth1",queue="0"} 900"#,
            r#"xblade_worker_rx_frames_total{interface="eth1",queue="1"} 700"#,
            r#"xblade_worker_tx_frames_total{interface="eth1",queue="0"} 880"#,
            r#"xblade_worker_dropped_total{interface="eth1",queue="0"} 20"#,
            r#"xblade_worker_no_slot_total{interface="eth1",queue="0"} 1"#,
            r#"xblade_worker_no_frame_total{interface="eth1",queue="0"} 2"#,
            r#"xblade_worker_retries_total{interface="eth1",queue="0"} 3"#,
            r#"xblade_worker_ordered_waits_total{interface="eth1",queue="0"} 4"#,
            r#"xblade_worker_sleeps_total{interface="eth1",queue="0"} 7"#,
            r#"xblade_worker_commits_total{interface="eth1",queue="0"} 3"#,
            r#"xblade_worker_spin_seconds_total{interface="eth1",queue="0"} 1.5"#,
            r#"xblade_worker_in_flight{interface="eth1",queue="1"} 1"#,
            r#"xblade_worker_responsive{interface="eth1",queue="0"} 1"#,
            r#"xblade_worker_responsive{interface="eth1",queue="1"} 0"#,
            r#"xblade_initiator_frames_total{interface="eth1",mac="02:00:00:00:00:01"} 1200"#,
            r#"xblade_initiator_frames_total{interface="eth1",mac="02:00:00:00:00:02"} 400"#,
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
        // HELP and TYPE on every family, TYPE right after HELP, every sample under its own.
        let mut family = String::new();
        let mut families = 0;
        let all: Vec<&str> = text.lines().collect();
        for (i, line) in all.iter().enumerate() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                assert!(!help.is_empty(), "no help text: {line}");
                assert!(name.starts_with("xblade_"), "{line}");
                let ty = all.get(i + 1).copied().unwrap_or_default();
                assert!(
                    ty.starts_with(&format!("# TYPE {name} ")),
                    "{line} then {ty}"
                );
                family = name.to_owned();
                families += 1;
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&family), "{line} outside family {family}");
            }
        }
        assert_eq!(families, 31, "{text}");
        // Counters end in _total, nothing else does.
        for line in all.iter().filter(|l| l.starts_with("# TYPE ")) {
            let counter = line.ends_with(" counter");
            let total = line.contains("_total ");
            assert_eq!(counter, total, "{line}");
        }
    }

    #[test]
    fn histogram_is_cumulative_in_seconds_on_fixed_bounds() {
        let text = render(&status());
        let e10: Vec<&str> = samples(&text)
            .into_iter()
            .filter(|l| l.starts_with("xblade_export_request_duration_seconds"))
            .filter(|l| l.contains(r#"export="e1.0""#))
            .collect();
        let le = |bound: &str| {
            let prefix = format!(
                r#"xblade_export_request_duration_seconds_bucket{{export="e1.0",le="{bound}"}} "#
            );
            let line = e10.iter().find(|l| l.starts_with(&prefix));
            let line = line.unwrap_or_else(|| panic!("no bucket {bound} in {e10:#?}"));
            line[prefix.len()..].parse::<u64>().unwrap()
        };
        // 23 powers of two and +Inf, then _sum and _count.
        assert_eq!(e10.len(), 24 + 2, "{e10:#?}");
        assert_eq!(le("1.024e-06"), 100);
        assert_eq!(le("2.048e-06"), 100);
        assert_eq!(le("6.5536e-05"), 100);
        // 81.92 µs folds into 2^17 ns = 131.072 µs, with the bucket bound there.
        assert_eq!(le("0.000131072"), 1499);
        assert_eq!(le("4.294967296"), 1499);
        // The slowest bucket (≥ 4.29 s) only in +Inf.
        assert_eq!(le("+Inf"), 1500);
        let sum = r#"xblade_export_request_duration_seconds_sum{export="e1.0"} 0.15"#;
        assert!(e10.contains(&sum), "{e10:#?}");
        let count = r#"xblade_export_request_duration_seconds_count{export="e1.0"} 1500"#;
        assert!(e10.contains(&count), "{e10:#?}");
        // Cumulative: never decreasing.
        let mut last = 0;
        for line in e10.iter().filter(|l| l.contains("_bucket")) {
            let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(n >= last, "{line} after {last}");
            last = n;
        }
        // 458.752 ms (7<<26 ns) folds into 2^29 ns.
        let e11 = samples(&text);
        let below =
            r#"xblade_export_request_duration_seconds_bucket{export="e1.1",le="0.268435456"} 0"#;
        let at =
            r#"xblade_export_request_duration_seconds_bucket{export="e1.1",le="0.536870912"} 4"#;
        assert!(e11.contains(&below), "{text}");
        assert!(e11.contains(&at), "{text}");
    }

    #[test]
    fn empty_status_renders_daemon_metrics_only() {
        let text = render(&Status {
            version: "0.1.0".into(),
            ..Status::default()
        });
        let lines = samples(&text);
        assert_eq!(
            lines,
            [
                r#"xblade_build_info{version="0.1.0"} 1"#,
                "xblade_uptime_seconds 0.0"
            ],
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = status();
        s.interfaces[0].name = "we\"ird\\".into();
        let text = render(&s);
        assert!(
            text.contains(r#"xblade_interface_zero_copy{interface="we\"ird\\"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn promtool_accepts_the_exposition() {
        let have = std::process::Command::new("promtool")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have {
            let msg = "promtool_accepts_the_exposition: SKIPPED (promtool not installed: \
                       apt-get install prometheus)";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg}; CI=true forbids skipping");
            }
            // Straight to fd 2: libtest captures `eprintln!` of passing tests.
            let _ = writeln!(std::io::stderr(), "\n{msg}");
            return;
        }
        let text = render(&status());
        let (ok, said) = promtool_check(&text).unwrap();
        assert!(ok, "promtool: {said}\non\n{text}");
        assert!(said.trim().is_empty(), "promtool: {said}\non\n{text}");
    }

    /// An HTTP/1.0 request; the whole answer (status line, headers, body).
    fn http(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn serves_metrics_over_http_and_stops_on_drop() {
        let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Arc::clone(&scrapes);
        let source = Arc::new(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            let mut s = status();
            s.exports[0].counters.reads = n;
            s
        });
        let server = serve("127.0.0.1:0", source).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        for n in 1..=2 {
            let answer = http(addr, "GET /metrics HTTP/1.0\r\n\r\n");
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.0 200 "), "{head}");
            let ct = "Content-Type: text/plain; version=0.0.4; charset=utf-8";
            assert!(head.lines().any(|l| l == ct), "{head}");
            let reads = format!(r#"xblade_export_reads_total{{export="e1.0"}} {n}"#);
            assert!(body.lines().any(|l| l == reads), "{body}");
            assert_eq!(
                body,
                render(&{
                    let mut s = status();
                    s.exports[0].counters.reads = n;
                    s
                })
            );
        }
        assert_eq!(scrapes.load(Ordering::SeqCst), 2);

        let answer = http(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
        let answer = http(addr, "GET / HTTP/1.0\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.0 404 "), "{answer}");
        let answer = http(addr, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.0 405 "), "{answer}");
        assert!(answer.contains("\r\nAllow: GET, HEAD\r\n"), "{answer}");
        assert_eq!(scrapes.load(Ordering::SeqCst), 3);

        let t = Instant::now();
        drop(server);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // tiny_http's accept thread closes the listening socket just after: wait for it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_ok() {
            assert!(Instant::now() < deadline, "still listening on {addr}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_busy_address_is_an_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = serve(&addr, Arc::new(Status::default)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&addr), "{msg}");
        assert!(msg.contains("free local address"), "{msg}");
        assert!(msg.contains("--metrics"), "{msg}");
    }
}
