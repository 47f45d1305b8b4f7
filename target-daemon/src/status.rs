//! What `xblade status --json` prints, what the control socket answers, and what the
//! Prometheus endpoint and `xblade stat` are computed from: one model, serialized with serde.
//!
//! The JSON is stable: fields are only ever added (documented in README.md, "Status JSON"),
//! never renamed or removed without bumping [`FORMAT`].

use serde::{Deserialize, Serialize};

/// Version of the JSON layout.
pub const FORMAT: u32 = 1;

/// A running daemon, as seen through its control socket.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Layout version of this JSON ([`FORMAT`]).
    pub format: u32,
    /// xblade's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_secs: f64,
    /// The control socket that answered.
    pub control: String,
    /// Where persistent AoE state lives (`None`: not persisted).
    pub state_dir: Option<String>,
    /// Every export, in address order.
    pub exports: Vec<ExportStatus>,
    /// Every interface served.
    pub interfaces: Vec<InterfaceStatus>,
    /// Initiators seen (by source MAC, per interface), most recent first.
    pub initiators: Vec<InitiatorStatus>,
    /// Every worker (one per interface queue).
    pub workers: Vec<WorkerStatus>,
}

/// One export.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ExportStatus {
    /// `eS.L`.
    pub name: String,
    /// Shelf address.
    pub shelf: u16,
    /// Slot address.
    pub slot: u8,
    /// Backing file or block device.
    pub path: String,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Writes refused.
    pub read_only: bool,
    /// `file`, `block` (what the store is).
    pub kind: String,
    /// Served from memory (a mapped tmpfs/ramfs file: volatile).
    pub in_memory: bool,
    /// Writes acknowledged only once durable.
    pub durable_writes: bool,
    /// Interfaces it is served on.
    pub interfaces: Vec<String>,
    /// Advertised buffer count.
    pub bufcnt: u16,
    /// The AoE config string, as text (lossy UTF-8).
    pub config_string: String,
    /// The AoE config string, hex-encoded (exact bytes).
    pub config_hex: String,
    /// MAC mask list set by initiators (or `xblade mask`), `aa:bb:cc:dd:ee:ff`.
    pub mask: Vec<String>,
    /// Reserve list.
    pub reserve: Vec<String>,
    /// The operator's MAC list from the configuration (`mask =` / `-m`).
    pub acl: Vec<String>,
    /// Counters since the export was added.
    pub counters: ExportCounters,
    /// Request latency, from arrival to reply, since the export was added.
    pub latency: Latency,
}

/// Counters of one export, summed over workers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportCounters {
    /// Read commands answered.
    pub reads: u64,
    /// Write commands answered.
    pub writes: u64,
    /// FLUSH CACHE commands answered.
    pub flushes: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Requests answered with an ATA error by the storage side (I/O errors).
    pub errors: u64,
    /// Requests accepted and not answered yet.
    pub in_flight: u64,
}

/// A latency distribution (from a log-linear histogram, see [`crate::latency`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Requests measured.
    pub count: u64,
    /// Sum of their latencies, in microseconds.
    pub sum_us: f64,
    /// Percentiles, in microseconds (upper bound of the bucket holding them; 0 with no sample).
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The histogram: non-empty buckets only, ascending.
    pub buckets: Vec<Bucket>,
}

/// One histogram bucket: `count` samples ≤ `le_us` (and above the previous bucket's bound).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Bucket {
    /// Upper bound in microseconds (finite: the last bucket also counts everything above).
    pub le_us: f64,
    /// Samples in this bucket (not cumulative).
    pub count: u64,
}

/// One interface.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct InterfaceStatus {
    /// Interface name.
    pub name: String,
    /// Its MAC.
    pub mac: String,
    /// Its MTU.
    pub mtu: u16,
    /// How XDP is attached: `driver` or `skb`.
    pub xdp_mode: String,
    /// Whether its AF_XDP sockets run zero-copy (else copy mode).
    pub zero_copy: bool,
    /// Queues served (one worker each).
    pub queues: Vec<u32>,
    /// The XDP program's counters.
    pub xdp: XdpCounters,
}

/// The XDP program's counters on one interface.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct XdpCounters {
    /// AoE requests redirected to a worker's socket.
    pub redirected: u64,
    /// AoE frames dropped (no socket on the queue, malformed, R=1).
    pub dropped: u64,
    /// Frames passed to the host stack (not AoE).
    pub passed: u64,
    /// Requests dropped because no export here lists the source MAC.
    pub denied: u64,
    /// Requests dropped for a group/zero source or a foreign destination.
    pub bad_address: u64,
}

/// An initiator seen on an interface.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct InitiatorStatus {
    /// Its MAC.
    pub mac: String,
    /// The interface it was seen on.
    pub interface: String,
    /// AoE frames received from it.
    pub frames: u64,
    /// Seconds since its last frame.
    pub last_seen_secs_ago: f64,
}

/// One worker (an interface queue).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    /// Interface.
    pub interface: String,
    /// Queue.
    pub queue: u32,
    /// The CPU it is pinned to.
    pub cpu: Option<usize>,
    /// Whether it answered this status request (a worker that did not shows its last
    /// published counters).
    pub responsive: bool,
    /// RX descriptors received.
    pub rx_frames: u64,
    /// TX descriptors sent.
    pub tx_frames: u64,
    /// Frames that got no answer (not for us, masked, R=1, …).
    pub dropped: u64,
    /// Requests dropped for want of an in-flight slot (the initiator retransmits).
    pub no_slot: u64,
    /// Requests dropped for want of a packet buffer (the initiator retransmits).
    pub no_frame: u64,
    /// Storage operations issued again after a transient error.
    pub retries: u64,
    /// Requests that waited for an overlapping earlier one.
    pub ordered_waits: u64,
    /// Requests in flight on this worker.
    pub in_flight: u64,
    /// Nanoseconds the worker spent spinning idle (polling its rings for work that was not
    /// there before finding some or sleeping): part of its CPU time that served no frame.
    #[serde(default)]
    pub spin_ns: u64,
    /// Times it slept for want of work.
    #[serde(default)]
    pub sleeps: u64,
    /// Group commits: cache flushes each of which made a batch of completed durable writes
    /// durable.
    #[serde(default)]
    pub commits: u64,
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(m: &aoe::Mac) -> String {
    m.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An interface as the unit tests of the status's readers (metrics, statview) use it.
#[cfg(test)]
pub(crate) fn sample_interface() -> InterfaceStatus {
    InterfaceStatus {
        name: "eth1".into(),
        mac: "02:00:00:00:00:aa".into(),
        mtu: 9000,
        xdp_mode: "driver".into(),
        zero_copy: true,
        queues: vec![0, 1],
        xdp: XdpCounters {
            redirected: 1600,
            dropped: 5,
            passed: 77,
            denied: 1,
            bad_address: 0,
        },
    }
}
