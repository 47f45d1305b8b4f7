//! Start-up and shutdown: preflight, open exports, attach XDP, build one worker per
//! (interface, queue), run them on their threads, and report.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use aoe::target::{ExportState, Iface};
use aoe::wire::{ATA_HLEN, MIN_MTU, SECTOR};
use xblade_ebpf::{Role, Steering, XdpMode};
use xsk::{Socket, SocketConfig, Umem, UmemConfig};

use crate::backing::{Backing, BackingConfig, Durability, IoMode};
use crate::config::{self, Config, IoArg, XdpModeArg};
use crate::export::Export;
use crate::persist::StateWriter;
use crate::privilege::{self, WorkerFilter};
use crate::runtime::{Live, Port as LivePort, Runtime, State as RuntimeState, WorkerLine};
use crate::services::{Opener, Services};
use crate::statefile::StateDir;
use crate::sys::{self, cap};
use crate::uring::{Uring, UringConfig};
use crate::worker::mapped::Mapped;
use crate::worker::{Bounce, Engines, Worker, WorkerSetup, WorkerStats, XskPackets};

/// UMEM chunk size. Linux 6.18 allows 2 KiB or 4 KiB chunks in aligned mode.
const CHUNK: u32 = 4096;
/// In-flight table size bounds per worker.
const MIN_INFLIGHT: usize = 64;
const MAX_INFLIGHT: usize = 1024;

/// What a finished daemon reports.
#[derive(Debug, Default)]
pub struct Summary {
    /// Per worker: (interface, queue, counters).
    pub workers: Vec<(String, u32, WorkerStats)>,
}

/// Largest frame (Ethernet header included) that fits one UMEM chunk behind the RX offset:
/// 4096 − 476 = 3620 bytes, i.e. 36 + 7 sectors. Larger MTUs use multi-buffer frames.
pub fn single_chunk_frame(umem: &UmemConfig) -> usize {
    (umem.chunk_size - umem.rx_offset()) as usize
}

/// Worst-case storage operations per request: a jumbo read is one per 4 KiB chunk of data.
fn ops_per_request(mtu: u16) -> usize {
    (usize::from(mtu).saturating_sub(ATA_HLEN - aoe::wire::ETH_HLEN))
        .div_ceil(CHUNK as usize)
        .max(1)
}

fn umem_config(frames: u32) -> UmemConfig {
    UmemConfig {
        frame_count: frames,
        chunk_size: CHUNK,
        ..UmemConfig::default()
    }
}

/// Check privileges and locked-memory limits before touching anything.
fn preflight(cfg: &Config, workers: usize) -> Result<()> {
    let mut missing = Vec::new();
    if !sys::has_cap(cap::NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !sys::has_cap(cap::NET_RAW) {
        missing.push("CAP_NET_RAW");
    }
    if !sys::has_cap(cap::BPF) && !sys::has_cap(cap::SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !missing.is_empty() {
        bail!(
            "xblade lacks {}: it loads an XDP program and opens AF_XDP sockets. Run it as root, or \
             grant the capabilities (AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_IPC_LOCK \
             in its systemd unit, or `setcap cap_net_admin,cap_net_raw,cap_bpf,cap_ipc_lock+ep $(which xblade)`)",
            missing.join(", ")
        );
    }
    if !sys::has_cap(cap::IPC_LOCK) {
        // UMEM registration and io_uring's fixed buffers each pin the packet buffers.
        let need = 2 * workers as u64 * u64::from(cfg.daemon.frames) * u64::from(CHUNK);
        let have = sys::raise_memlock();
        if let Some(have) = have.filter(|h| *h < need) {
            bail!(
                "locked-memory limit (RLIMIT_MEMLOCK) is {} KiB, but {workers} worker(s) need {} MiB of \
                 pinned packet buffers: run as root, grant CAP_IPC_LOCK, raise `ulimit -l`, or set \
                 LimitMEMLOCK=infinity in the systemd unit",
                have / 1024,
                need >> 20
            );
        }
    }
    Ok(())
}

/// How an export's backing store is opened, from its configuration.
fn backing_config(e: &config::Export) -> BackingConfig {
    BackingConfig {
        path: e.path.clone(),
        offset_sectors: e.offset,
        len_sectors: e.length,
        read_only: e.read_only,
        io: match e.io {
            IoArg::Direct => IoMode::Direct,
            IoArg::Buffered => IoMode::Buffered,
        },
        durability: if e.write_back {
            Durability::WriteBack
        } else {
            Durability::Sync
        },
        commit: None,
    }
}

/// Log an opened export: its store, its engine, and what an acknowledged write means there.
fn log_export_ready(e: &config::Export, sectors: u64, backing: &Backing) {
    tracing::info!(
        export = %format!("e{}.{}", e.shelf, e.slot),
        path = %e.path.display(),
        sectors,
        io = ?backing.io_mode(),
        durability = ?backing.durability(),
        commit = ?backing.commit(),
        read_only = e.read_only,
        kind = ?backing.kind(),
        in_memory = backing.in_memory(),
        "export ready{}",
        if backing.in_memory() {
            " (in memory: mapped, one copy per request, no system call). VOLATILE: the store \
             is on tmpfs/ramfs, so its contents are lost when the host reboots or loses \
             power; acknowledged writes are durable only as long as the host runs"
        } else if backing.durability() == Durability::Sync
            && backing.commit() == crate::backing::Commit::Group
        {
            " (io_uring; writes acknowledged once durable: the device has a volatile cache and \
             no FUA, so concurrent writes share one cache flush, group commit)"
        } else if backing.durability() == Durability::Sync {
            " (io_uring; writes acknowledged once durable: RWF_DSYNC on each)"
        } else {
            " (io_uring; --write-back: writes acknowledged before they are durable, FLUSH \
             makes them so)"
        }
    );
}

/// Log an in-memory store's mapping: its size, and how much of it 2 MiB pages back.
fn log_mapped(name: &str, map: &sys::FileMap) {
    let len = map.bytes();
    tracing::info!(
        export = %name,
        huge_mib = map.huge_bytes() >> 20,
        mib = len >> 20,
        "in-memory store mapped{}",
        if map.huge_tried() > map.huge_bytes() {
            " partly or wholly with 4 KiB pages: 2 MiB pages were refused (shmem_enabled \
             is deny, the kernel predates 6.1, or no free 2 MiB pages): random reads \
             will be slower"
        } else {
            ""
        }
    );
}

/// Open every export's backing store and build its protocol state (with the AoE state
/// persisted in `state`, if any).
fn open_exports(
    cfg: &Config,
    max_sectors: u8,
    state: Option<&StateDir>,
) -> Result<Vec<Arc<Export>>> {
    let host = sys::hostname();
    cfg.exports
        .iter()
        .map(|e| open_export(e, max_sectors, &host, state))
        .collect()
}

/// Open export `e`'s backing store and build its protocol state, with its persisted AoE state
/// (config string, mask and reserve lists) from `state`.
pub(crate) fn open_export(
    e: &config::Export,
    max_sectors: u8,
    host: &str,
    state: Option<&StateDir>,
) -> Result<Arc<Export>> {
    let backing = Backing::open(&backing_config(e))
        .with_context(|| format!("export e{}.{}", e.shelf, e.slot))?;
    if backing.io_mode() == IoMode::Direct
        && backing.dio_offset_align().max(backing.dio_mem_align()) > SECTOR as u32
    {
        bail!(
            "export e{}.{}: {} has {}-byte logical blocks, but AoE addresses 512-byte sectors and \
             O_DIRECT cannot do 512-byte I/O on it. Export a device with 512-byte sectors, or choose \
             buffered I/O explicitly (--buffered, or io = \"buffered\")",
            e.shelf,
            e.slot,
            e.path.display(),
            backing.dio_offset_align().max(backing.logical_block_size()),
        );
    }
    let mut st = ExportState::new(e.shelf, e.slot, backing.sectors());
    st.read_only = e.read_only;
    st.bufcnt = e.bufcnt;
    st.max_sectors = max_sectors;
    st.write_cache = e.write_back;
    st.set_acl(&e.mask_macs())
        .with_context(|| format!("export e{}.{}: mask", e.shelf, e.slot))?;
    st.serial = e
        .serial
        .clone()
        .unwrap_or_else(|| format!("{}.{}:{host}", e.shelf, e.slot));
    let name = format!("e{}.{}", e.shelf, e.slot);
    if let Some(saved) = state.map(|d| d.load(&name)).transpose()?.flatten() {
        tracing::info!(
            export = %name,
            file = %state.map(|d| d.path(&name).display().to_string()).unwrap_or_default(),
            config_bytes = saved.config.len(),
            mask = saved.mask.len(),
            reserve = saved.reserve.len(),
            "AoE state restored (config string, mask and reserve lists)"
        );
        st.apply(aoe::target::StateChange::Config(saved.config));
        st.apply(aoe::target::StateChange::Mask(saved.mask));
        st.apply(aoe::target::StateChange::Reserve(saved.reserve));
    }
    log_export_ready(e, st.sectors, &backing);
    let export = Export::new(st, backing).with_context(|| {
        format!(
            "export e{}.{}: mapping the in-memory store {}",
            e.shelf,
            e.slot,
            e.path.display()
        )
    })?;
    if let Some(map) = &export.map {
        sys::explain_sigbus();
        log_mapped(&export.name, map);
    }
    Ok(Arc::new(export))
}

/// How the daemon was started, beyond its configuration.
#[derive(Default)]
pub struct Options {
    /// The configuration file (`xblade serve`), for reloads.
    pub config_path: Option<PathBuf>,
    /// Set by SIGHUP: reload the configuration.
    pub reload: Arc<AtomicBool>,
}

/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xblade";

/// Run the daemon until `stop` is set. Returns the workers' counters.
pub fn run(cfg: &Config, stop: Arc<AtomicBool>, opts: Options) -> Result<Summary> {
    cfg.validate()?;
    let nworkers: usize = cfg.interfaces.iter().map(|i| i.queues.len()).sum();
    preflight(cfg, nworkers)?;
    let ucfg = umem_config(cfg.daemon.frames);
    let state_dir = cfg
        .daemon
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let writer = StateWriter::new(StateDir::open(&state_dir)?);
    // The MTU bounds sectors per command (Iface::advertised_sectors); the datapath does not:
    // frames larger than a chunk arrive and leave as multi-buffer frames.
    let exports = open_exports(cfg, 255, Some(writer.dir()))?;
    for e in &exports {
        writer.watch(e);
    }

    let mut ports = Vec::new();
    let mut workers = Vec::new();
    for icfg in &cfg.interfaces {
        let (port, built) = attach_interface(cfg, icfg, &exports, ucfg)?;
        workers.extend(built);
        ports.push(port);
    }

    let cpus = worker_cpus(cfg, workers.len())?;
    let mut lines = workers.iter().zip(&cpus).map(|(w, cpu)| WorkerLine {
        queue: w.queue,
        cpu: *cpu,
        control: w.control(),
    });
    for (p, icfg) in ports.iter_mut().zip(&cfg.interfaces) {
        p.workers = lines.by_ref().take(icfg.queues.len()).collect();
    }
    let fault = InjectedFault::from_env(&workers)?;
    let filter = worker_filter()?;
    // Everything that needs a capability is done: drop them all, while this is the only
    // thread, so that the worker threads are born without them.
    privilege::drop_capabilities()?;
    let control_path = cfg
        .daemon
        .control
        .clone()
        .unwrap_or_else(crate::ctl::default_serve_path);
    let listener = crate::ctl::bind(&control_path)?;
    let live = cfg
        .exports
        .iter()
        .cloned()
        .zip(exports)
        .map(|(cfg, export)| Live { cfg, export })
        .collect();
    let runtime = Arc::new(Runtime::new(
        RuntimeState {
            cfg: cfg.clone(),
            exports: live,
            ports,
        },
        control_path,
        opts.config_path,
        Some(Arc::clone(&writer)),
    ));
    let opener: Opener = {
        let host = sys::hostname();
        let w = Arc::clone(&writer);
        Arc::new(move |e: &config::Export| open_export(e, 255, &host, Some(w.dir())))
    };
    let services = match Services::start(
        &runtime,
        listener,
        opener,
        opts.reload,
        cfg.daemon.metrics.as_deref(),
    ) {
        Ok(s) => s,
        Err(e) => {
            detach(runtime.take_steerings());
            return Err(e);
        }
    };
    let (summary, failed) = run_workers(workers, &cpus, fault.as_ref(), &filter, &stop, &runtime);
    crate::notify::stopping();
    services.stop();
    detach(runtime.take_steerings());
    match failed {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// The workers' seccomp filter, compiled here so that a problem with it stops the start-up.
fn worker_filter() -> Result<Arc<WorkerFilter>> {
    let filter = WorkerFilter::new()?;
    tracing::info!(
        syscalls = privilege::WORKER_SYSCALLS.len(),
        "worker threads run under a seccomp allow-list; any other system call kills the \
         process (SIGSYS; the kernel log names the call: audit type=1326)"
    );
    Ok(Arc::new(filter))
}

/// Log each interface's XDP counters, then detach the XDP programs.
fn detach(steerings: Vec<Steering>) {
    for s in &steerings {
        if let Ok(c) = s.counters() {
            tracing::info!(iface = %s.ifname(), redirected = c.redirected, dropped = c.dropped, denied = c.denied, bad_address = c.bad_address, passed = c.passed, "XDP counters");
        }
    }
    drop(steerings);
    tracing::info!("XDP detached; exiting");
}

/// What every worker of one interface shares.
struct Port<'a> {
    /// Interface name.
    name: &'a str,
    /// Its MAC and MTU.
    iface: Iface,
    /// The exports served on it.
    exports: Vec<Arc<Export>>,
    /// Frames larger than a UMEM chunk: multi-buffer AF_XDP and jumbo bounce buffers.
    multi: bool,
    /// In-flight table size of each worker (the exports' bufcnt, clamped).
    capacity: usize,
    /// Worst-case storage operations per request.
    ops: usize,
}

/// Check interface `icfg`, attach the XDP program to it, and build a worker for each of its
/// queues. The XDP program is detached again (on drop) if a worker cannot be built.
fn attach_interface(
    cfg: &Config,
    icfg: &config::Interface,
    exports: &[Arc<Export>],
    ucfg: UmemConfig,
) -> Result<(LivePort, Vec<Worker>)> {
    let (mac, mtu) = sys::iface_info(&icfg.name)?;
    if mtu < MIN_MTU {
        bail!("interface {} has MTU {mtu}; AoE needs at least {MIN_MTU} (raise it with `ip link set {} mtu 1500`)", icfg.name, icfg.name);
    }
    let mode = match cfg.daemon.xdp_mode {
        XdpModeArg::Auto => XdpMode::Auto,
        XdpModeArg::Driver => XdpMode::Driver,
        XdpModeArg::Skb => XdpMode::Skb,
    };
    let mut workers = Vec::new();
    let mut steering = Steering::attach(&icfg.name, mode, Role::Target, cfg.daemon.replace_xdp)?;
    tracing::info!(iface = %icfg.name, mode = ?steering.mode(), "XDP program attached");
    let mine: Vec<Arc<Export>> = cfg
        .exports
        .iter()
        .zip(exports)
        .filter(|(e, _)| e.on(&icfg.name))
        .map(|(_, x)| Arc::clone(x))
        .collect();
    // Before any socket is registered: no request reaches a worker unfiltered.
    steer_sources(&mut steering, &icfg.name, mac, &mine)?;
    let multi = usize::from(mtu) + aoe::wire::ETH_HLEN > single_chunk_frame(&ucfg);
    if multi {
        tracing::info!(iface = %icfg.name, mtu, "frames larger than a 4 KiB chunk: multi-buffer AF_XDP (XDP_USE_SG)");
    }
    let capacity = mine
        .iter()
        .map(|e| usize::from(e.state().bufcnt))
        .sum::<usize>()
        .clamp(MIN_INFLIGHT, MAX_INFLIGHT);
    let port = Port {
        name: &icfg.name,
        iface: Iface { mac, mtu },
        exports: mine,
        multi,
        capacity,
        ops: if multi { ops_per_request(mtu) } else { 1 },
    };
    for &q in &icfg.queues {
        workers.push(build_worker(cfg, &port, ucfg, q, &mut steering)?);
    }
    let live = LivePort {
        name: icfg.name.clone(),
        mac,
        mtu,
        zero_copy: workers.iter().all(|w| w.net().sock.zero_copy()),
        steering,
        workers: Vec::new(),
        exports: port.exports,
    };
    Ok((live, workers))
}

/// Set up what XDP filters by address on interface `name` (MAC `mac`), serving `exports`:
/// requests from group or all-zero sources and to other destinations are dropped (the
/// destination check compares with `mac`, the address replies leave from); and the source
/// ACL. When every export served here has a MAC list, only the union of their lists passes
/// (a request for export A from a MAC that only export B lists still reaches the worker,
/// whose protocol layer drops it); when one has none, every source passes and the workers
/// decide per export. No export at all: no request passes.
pub(crate) fn steer_sources(
    steering: &mut Steering,
    name: &str,
    mac: aoe::Mac,
    exports: &[Arc<Export>],
) -> Result<()> {
    steering.set_local_mac(Some(mac))?;
    let mut union: Vec<aoe::Mac> = Vec::new();
    let mut open = None;
    for e in exports {
        let state = e.state();
        if state.acl().is_empty() {
            open = Some(e.name.clone());
            break;
        }
        for m in state.acl() {
            if !union.contains(m) {
                union.push(*m);
            }
        }
    }
    match open {
        Some(export) => {
            steering.set_acl(None)?;
            tracing::info!(iface = %name, %export, "XDP passes requests from every source MAC: an export served here has no MAC list (mask)");
        }
        None => {
            steering.set_acl(Some(&union))?;
            tracing::info!(iface = %name, macs = union.len(), exports = exports.len(), "XDP passes only requests from the MACs the exports served here list (mask); it drops and counts the rest (denied)");
        }
    }
    Ok(())
}

/// How long a queue another AF_XDP socket holds may take to become free: the kernel frees a
/// closed socket's queue from a workqueue (~20 ms here), so a daemon restarted at once (or a
/// test, a bench) finds it busy for a moment. A socket that stays bound longer is a live
/// conflict, and its error is the answer.
const QUEUE_FREE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Bind an AF_XDP socket to queue `q` of `ifname`, waiting up to [`QUEUE_FREE_WAIT`] while the
/// queue is busy.
fn bind_socket(ifname: &str, q: u32, umem: &Umem, cfg: SocketConfig) -> xsk::Result<Socket> {
    let start = std::time::Instant::now();
    loop {
        match Socket::new(ifname, q, umem, cfg) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ResourceBusy
                    && start.elapsed() < QUEUE_FREE_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

/// Build the worker of `port`'s queue `q`: its UMEM, its AF_XDP socket (registered in the
/// XSKMAP of `steering`), its jumbo bounce buffers, its io_uring and storage engines.
fn build_worker(
    cfg: &Config,
    port: &Port,
    ucfg: UmemConfig,
    q: u32,
    steering: &mut Steering,
) -> Result<Worker> {
    // Fill ring + a response chunk per data chunk of every request in flight + spares.
    let need = ucfg.fill_size as usize + port.capacity * port.ops + 256;
    let mut qcfg = ucfg;
    qcfg.frame_count = qcfg.frame_count.max(need as u32);
    let umem =
        Umem::new(qcfg).with_context(|| format!("packet buffers for {} queue {q}", port.name))?;
    let scfg = SocketConfig {
        multi_buffer: port.multi,
        ..SocketConfig::default()
    };
    let sock = bind_socket(port.name, q, &umem, scfg)?;
    steering.register(q, sock.fd())?;
    let bounce = jumbo_bounce(port, &qcfg)?;
    let uring = worker_uring(cfg, port, q, &umem, bounce.as_ref())?;
    if cfg.daemon.busy_poll > 0 {
        sock.set_busy_poll(cfg.daemon.busy_poll, cfg.daemon.busy_poll_budget)
            .with_context(|| format!("--busy-poll on {} queue {q}", port.name))?;
        tracing::info!(iface = %port.name, queue = q, usecs = cfg.daemon.busy_poll, "preferred busy polling on");
    }
    tracing::info!(
        iface = %port.name,
        queue = q,
        zero_copy = sock.zero_copy(),
        exports = port.exports.len(),
        in_flight = port.capacity,
        "AF_XDP socket bound ({})",
        if sock.zero_copy() {
            "zero-copy"
        } else {
            "copy mode: the NIC driver has no AF_XDP zero-copy"
        }
    );
    let storage = Engines::new(uring, Mapped::new(&port.exports, port.capacity * port.ops));
    Ok(Worker::new(WorkerSetup {
        ifname: port.name.to_owned(),
        queue: q,
        iface: port.iface,
        exports: port.exports.clone(),
        net: XskPackets { umem, sock },
        storage,
        bounce,
        capacity: port.capacity,
    })
    .with_busy_poll(cfg.daemon.busy_poll > 0))
}

/// A worker's bounce buffers for gathering jumbo writes (`None` when frames fit a chunk): one
/// slot per in-flight request, each as large as a whole frame behind the RX offset.
fn jumbo_bounce(port: &Port, qcfg: &UmemConfig) -> Result<Option<Bounce>> {
    if !port.multi {
        return Ok(None);
    }
    let slot = (qcfg.rx_offset() as usize + usize::from(port.iface.mtu) + aoe::wire::ETH_HLEN)
        .div_ceil(CHUNK as usize)
        * CHUNK as usize;
    Ok(Some(Bounce::new(port.capacity, slot).with_context(
        || format!("jumbo bounce buffers for {}", port.name),
    )?))
}

/// A worker's io_uring: the exports' stores as registered files, the UMEM (and the bounce
/// buffers) as fixed buffers. Logs what the kernel refused of the configuration.
fn worker_uring(
    cfg: &Config,
    port: &Port,
    q: u32,
    umem: &Umem,
    bounce: Option<&Bounce>,
) -> Result<Uring> {
    let fds: Vec<_> = port.exports.iter().map(|e| e.backing.fd()).collect();
    let mut regions = vec![umem.area()];
    regions.extend(bounce.map(|b| b.area()));
    let ucfg_ring = UringConfig {
        sqpoll: cfg.daemon.sqpoll.then_some(100),
        iopoll: cfg.daemon.iopoll,
    };
    let (uring, notes) = Uring::with_config(
        (port.capacity * port.ops).next_power_of_two() as u32,
        &fds,
        &regions,
        &ucfg_ring,
    )
    .with_context(|| format!("io_uring for {} queue {q}", port.name))?;
    for n in notes {
        tracing::warn!(iface = %port.name, queue = q, "{n}");
    }
    Ok(uring)
}

/// The CPU each worker is pinned to, in worker order (`None`: not pinned, it runs anywhere in
/// the process's CPU set). Always inside the CPU set the process started with
/// ([`sys::inherited_cpus`]): `--cpus` naming a CPU outside it is refused (`main` refuses it
/// earlier, before XDP is attached, naming where the list came from); by default one CPU per
/// worker from that set, avoiding those taking the NICs' interrupts while others are left, and
/// shared round robin when there are more workers than CPUs.
fn worker_cpus(cfg: &Config, workers: usize) -> Result<Vec<Option<usize>>> {
    let allowed =
        sys::inherited_cpus().context("reading this process's CPU set (sched_getaffinity)")?;
    if cfg.daemon.cpus.is_empty() {
        let avoid: Vec<usize> = cfg
            .interfaces
            .iter()
            .flat_map(|i| sys::irq_cpus(&i.name))
            .collect();
        return Ok(sys::default_cpus(workers, allowed, &avoid)
            .into_iter()
            .map(Some)
            .collect());
    }
    let origin = format!("cpus {}", sys::cpu_list(&cfg.daemon.cpus));
    if let Some(msg) = sys::cpus_outside_set(&origin, &cfg.daemon.cpus, allowed) {
        bail!(msg);
    }
    if cfg.daemon.cpus.len() < workers {
        tracing::info!(
            cpus = %sys::cpu_list(&cfg.daemon.cpus),
            workers,
            "fewer CPUs listed than workers: the workers beyond the list are not pinned (they \
             run on any CPU of the process's set, {})",
            sys::cpu_list(allowed)
        );
    }
    Ok((0..workers)
        .map(|i| cfg.daemon.cpus.get(i).copied())
        .collect())
}

/// The environment variable of the test-only fault injection: `IFACE:QUEUE:AFTER_MS` makes that
/// worker fail (return an error) AFTER_MS milliseconds after it started serving;
/// `IFACE:QUEUE:AFTER_MS:panic` makes its thread panic instead. Read once, before the workers
/// start. The end-to-end tests use it to check that one dead worker ends the daemon; nothing
/// else sets it, and the daemon warns loudly when it is set.
pub const FAULT_ENV: &str = "XBLADE_TEST_FAIL_WORKER";

/// A fault to inject into one worker ([`FAULT_ENV`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct InjectedFault {
    ifname: String,
    queue: u32,
    after: std::time::Duration,
    panic: bool,
}

impl InjectedFault {
    fn from_env(workers: &[Worker]) -> Result<Option<InjectedFault>> {
        let Some(value) = std::env::var_os(FAULT_ENV) else {
            return Ok(None);
        };
        let value = value.to_string_lossy();
        let fault = Self::parse(&value)?;
        if !workers
            .iter()
            .any(|w| w.ifname == fault.ifname && w.queue == fault.queue)
        {
            bail!(
                "{FAULT_ENV}={value}: there is no worker for {} queue {} (a test-only fault \
                 injection: unset it)",
                fault.ifname,
                fault.queue
            );
        }
        tracing::warn!(
            iface = %fault.ifname,
            queue = fault.queue,
            "{FAULT_ENV} is set: this worker will {} {} ms after it starts (test-only fault \
             injection; unset it in production)",
            if fault.panic { "panic" } else { "fail" },
            fault.after.as_millis()
        );
        Ok(Some(fault))
    }

    fn parse(value: &str) -> Result<InjectedFault> {
        let bad = || {
            anyhow::anyhow!(
                "{FAULT_ENV}={value}: expected IFACE:QUEUE:AFTER_MS or IFACE:QUEUE:AFTER_MS:panic \
                 (a test-only fault injection: unset it)"
            )
        };
        let parts: Vec<&str> = value.split(':').collect();
        let (ifname, queue, ms, panic) = match parts.as_slice() {
            [i, q, ms] => (*i, *q, *ms, false),
            [i, q, ms, "panic"] => (*i, *q, *ms, true),
            _ => return Err(bad()),
        };
        if ifname.is_empty() {
            return Err(bad());
        }
        Ok(InjectedFault {
            ifname: ifname.to_owned(),
            queue: queue.parse().map_err(|_| bad())?,
            after: std::time::Duration::from_millis(ms.parse().map_err(|_| bad())?),
            panic,
        })
    }

    /// Run `w` on a thread of its own (named `name`, inheriting this thread's CPU pin, under
    /// `filter` like this thread once it started it) until `stop`, or until `after` has
    /// passed: then stop it (it drains like at shutdown) and fail or panic in its place.
    fn run(
        &self,
        w: Worker,
        name: &str,
        filter: &WorkerFilter,
        stop: &AtomicBool,
    ) -> std::io::Result<WorkerStats> {
        use std::sync::atomic::Ordering::Relaxed;
        let own_stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let inner = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn_scoped(s, || {
                    filter.install().map_err(std::io::Error::other)?;
                    w.run(&own_stop)
                })?;
            filter.install().map_err(std::io::Error::other)?;
            let start = std::time::Instant::now();
            while start.elapsed() < self.after && !stop.load(Relaxed) && !inner.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let fire = !stop.load(Relaxed) && !inner.is_finished();
            own_stop.store(true, Relaxed);
            let result = inner
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            if !fire {
                return result;
            }
            result?;
            let what = format!(
                "{FAULT_ENV}: injected {} in worker {} queue {} after {} ms",
                if self.panic { "panic" } else { "failure" },
                self.ifname,
                self.queue,
                self.after.as_millis()
            );
            if self.panic {
                panic!("{what}");
            }
            Err(std::io::Error::other(what))
        })
    }
}

/// What a worker thread tells the main thread.
enum WorkerEvent {
    /// A worker is pinned (or needs no pin) and starts serving.
    Started,
    /// Worker `i` returned: its counters, or why it failed.
    Done(usize, std::result::Result<WorkerStats, String>),
}

/// A worker thread's line to the main thread. Reports `Done` exactly once: when the thread
/// says so, or, if it unwinds from a panic first, on drop.
struct Reporter {
    tx: std::sync::mpsc::Sender<WorkerEvent>,
    i: usize,
    done: bool,
}

impl Reporter {
    fn started(&self) {
        let _ = self.tx.send(WorkerEvent::Started);
    }

    fn done(mut self, r: std::result::Result<WorkerStats, String>) {
        self.done = true;
        let _ = self.tx.send(WorkerEvent::Done(self.i, r));
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.send(WorkerEvent::Done(
                self.i,
                Err("panicked (the panic message is logged above)".into()),
            ));
        }
    }
}

/// How long the other workers get to drain after one failed, before xblade exits without them.
const DRAIN_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(10);

/// Start every worker on its own thread, pinned to `cpus[i]`; say "serving" once all are
/// pinned; then wait until they all stop. The first worker that fails (an error, a panic, a
/// pin that did not take, or a return nobody asked for) sets `stop`, so that the others drain,
/// and is returned as the error, naming the worker: the main thread wakes on any worker's end,
/// not on the workers in order.
fn run_workers(
    workers: Vec<Worker>,
    cpus: &[Option<usize>],
    fault: Option<&InjectedFault>,
    filter: &Arc<WorkerFilter>,
    stop: &Arc<AtomicBool>,
    runtime: &Runtime,
) -> (Summary, Option<anyhow::Error>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let threads = spawn_workers(workers, cpus, fault, filter, stop, &tx);
    drop(tx);
    let Outcome {
        results,
        finished,
        failed,
    } = supervise(&rx, &threads.ids, threads.failed, stop, runtime);
    let summary = summarize(threads.handles, &finished, threads.ids, results);
    (summary, failed)
}

/// The worker threads [`spawn_workers`] started.
struct Threads {
    /// Per thread: (interface, queue) of its worker.
    ids: Vec<(String, u32)>,
    handles: Vec<std::thread::JoinHandle<()>>,
    /// Why the next thread could not be started (then no further one was, and `stop` is set).
    failed: Option<anyhow::Error>,
}

/// Start worker `i` on a thread of its own ([`serve`]) under `filter`, reporting to `tx` as `i`.
/// Stops at the first thread that cannot be started: sets `stop` for those already running and
/// says why.
fn spawn_workers(
    workers: Vec<Worker>,
    cpus: &[Option<usize>],
    fault: Option<&InjectedFault>,
    filter: &Arc<WorkerFilter>,
    stop: &Arc<AtomicBool>,
    tx: &std::sync::mpsc::Sender<WorkerEvent>,
) -> Threads {
    let mut threads = Threads {
        ids: Vec::new(),
        handles: Vec::new(),
        failed: None,
    };
    for (i, w) in workers.into_iter().enumerate() {
        let cpu = cpus.get(i).copied().flatten();
        let name = format!("xblade-{}-q{}", w.ifname, w.queue);
        let (ifname, queue) = (w.ifname.clone(), w.queue);
        let fault = fault
            .filter(|f| f.ifname == ifname && f.queue == queue)
            .cloned();
        let reporter = Reporter {
            tx: tx.clone(),
            i,
            done: false,
        };
        let thread_stop = Arc::clone(stop);
        let thread_filter = Arc::clone(filter);
        let thread_name = name.clone();
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let how = Serve {
                cpu,
                fault: fault.as_ref(),
                filter: &thread_filter,
                name: &thread_name,
            };
            serve(w, &how, &thread_stop, reporter);
        });
        match spawned {
            Ok(h) => {
                threads.ids.push((ifname, queue));
                threads.handles.push(h);
            }
            Err(e) => {
                threads.failed = Some(anyhow::anyhow!(
                    "starting the thread of worker {ifname} queue {queue}: {e}"
                ));
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            }
        }
    }
    threads
}

/// How a worker thread runs its worker.
struct Serve<'a> {
    /// The CPU to pin it to.
    cpu: Option<usize>,
    /// The test-only fault to inject into it.
    fault: Option<&'a InjectedFault>,
    /// The seccomp allow-list the thread installs on itself once pinned.
    filter: &'a WorkerFilter,
    /// The thread's name.
    name: &'a str,
}

/// A worker thread's body: pin it to `how.cpu`, put it under the seccomp filter, report that
/// it started, run `w` (with its injected fault, if any) until `stop`, and report how it
/// ended.
fn serve(w: Worker, how: &Serve, stop: &AtomicBool, reporter: Reporter) {
    if let Some(c) = how.cpu {
        if let Err(e) = sys::pin_current_thread(c) {
            reporter.done(Err(format!(
                "cannot pin it to CPU {c}: {e} (is the CPU online and in this \
                 process's CPU set?)"
            )));
            return;
        }
        tracing::info!(iface = %w.ifname, queue = w.queue, cpu = c, "worker pinned");
    }
    // From here on the thread makes only the system calls of privilege::WORKER_SYSCALLS. With
    // an injected fault, the worker runs on a thread that this one starts first (and puts
    // under the filter too).
    if how.fault.is_none() {
        if let Err(e) = how.filter.install() {
            reporter.done(Err(e.to_string()));
            return;
        }
    }
    let r = match how.fault {
        Some(f) => {
            reporter.started();
            f.run(w, how.name, how.filter, stop)
        }
        None => {
            // Serving once its fill ring is full and its exports announced: a request sent
            // right after "serving" (and systemd's READY=1) finds a buffer to land in.
            let mut w = w;
            w.start();
            reporter.started();
            w.serve(stop)
        }
    };
    reporter.done(r.map_err(|e| e.to_string()));
}

/// What [`supervise`] saw of the workers.
struct Outcome {
    /// Per thread: the counters of a worker that returned them.
    results: Vec<Option<WorkerStats>>,
    /// Per thread: it reported `Done` (so it has nothing left to do but return).
    finished: Vec<bool>,
    /// The first failure.
    failed: Option<anyhow::Error>,
}

/// Wait for the events of the threads `ids` until every one reported `Done`, or until
/// [`DRAIN_AFTER_FAILURE`] after the first failure (`failed`, if starting them already failed).
/// Says "serving" once all started; on a worker's failure sets `stop`, so that the others drain.
fn supervise(
    rx: &std::sync::mpsc::Receiver<WorkerEvent>,
    ids: &[(String, u32)],
    failed: Option<anyhow::Error>,
    stop: &AtomicBool,
    runtime: &Runtime,
) -> Outcome {
    let n = ids.len();
    let mut started = 0;
    let mut out = Outcome {
        results: (0..n).map(|_| None).collect(),
        finished: vec![false; n],
        failed,
    };
    let mut running = n;
    let mut drain_deadline = out
        .failed
        .as_ref()
        .map(|_| std::time::Instant::now() + DRAIN_AFTER_FAILURE);
    if n == 0 && out.failed.is_none() {
        tracing::info!(workers = 0, "serving");
        crate::notify::ready(&runtime.summary());
    }
    while running > 0 {
        let Some(event) = next_event(rx, drain_deadline, running) else {
            break;
        };
        match event {
            WorkerEvent::Started => {
                started += 1;
                if started == n && out.failed.is_none() {
                    // "serving workers=N" is the readiness line the tests, the bench and scripts
                    // wait for.
                    tracing::info!(workers = n, "serving");
                    // XDP is attached, the control socket bound, the exports announced.
                    crate::notify::ready(&runtime.summary());
                }
            }
            // From the closure of a thread that could not be started (dropped unrun).
            WorkerEvent::Done(i, _) if i >= n => {}
            WorkerEvent::Done(i, r) => {
                running -= 1;
                out.finished[i] = true;
                let (ifname, queue) = &ids[i];
                let (stats, error) = worker_done(ifname, *queue, r, stop);
                out.results[i] = stats;
                if let Some(e) = error {
                    out.failed.get_or_insert(e);
                    drain_deadline
                        .get_or_insert_with(|| std::time::Instant::now() + DRAIN_AFTER_FAILURE);
                }
            }
        }
    }
    out
}

/// The next event from the worker threads; `None` when `drain_deadline` passed first (said in
/// the log, with the `running` workers left behind) or when every thread is gone.
fn next_event(
    rx: &std::sync::mpsc::Receiver<WorkerEvent>,
    drain_deadline: Option<std::time::Instant>,
    running: usize,
) -> Option<WorkerEvent> {
    use std::sync::mpsc::RecvTimeoutError;
    let event = match drain_deadline {
        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        Some(d) => rx.recv_timeout(d.saturating_duration_since(std::time::Instant::now())),
    };
    match event {
        Ok(e) => Some(e),
        Err(RecvTimeoutError::Timeout) => {
            tracing::error!(
                workers = running,
                "worker(s) did not stop within {} s of the failure; exiting without them",
                DRAIN_AFTER_FAILURE.as_secs()
            );
            None
        }
        // Every thread is gone (each reports Done before it ends, so this is not reached).
        Err(RecvTimeoutError::Disconnected) => None,
    }
}

/// Account for the end of worker `ifname` queue `queue`: its counters if it returned them, and
/// the error if it failed or stopped without `stop` set. A failure is logged and sets `stop`.
fn worker_done(
    ifname: &str,
    queue: u32,
    r: std::result::Result<WorkerStats, String>,
    stop: &AtomicBool,
) -> (Option<WorkerStats>, Option<anyhow::Error>) {
    use std::sync::atomic::Ordering::Relaxed;
    let (stats, error) = match r {
        Ok(stats) => {
            tracing::info!(iface = %ifname, queue, ?stats, "worker stopped");
            let error = (!stop.load(Relaxed)).then(|| "stopped without being asked to".to_owned());
            (Some(stats), error)
        }
        Err(e) => (None, Some(e)),
    };
    let error = error.map(|e| {
        let e = anyhow::anyhow!("worker {ifname} queue {queue} failed: {e}");
        tracing::error!(
            "{e}; stopping: the other workers drain, then XDP is detached and \
             xblade exits"
        );
        stop.store(true, Relaxed);
        e
    });
    (stats, error)
}

/// Join the threads that reported `Done` and collect the counters of the workers that
/// returned them, in worker order.
fn summarize(
    handles: Vec<std::thread::JoinHandle<()>>,
    finished: &[bool],
    ids: Vec<(String, u32)>,
    results: Vec<Option<WorkerStats>>,
) -> Summary {
    // Only threads that reported Done are joined: they have nothing left to do but return.
    for (h, done) in handles.into_iter().zip(finished) {
        if *done {
            let _ = h.join();
        }
    }
    let mut summary = Summary::default();
    for ((ifname, queue), stats) in ids.into_iter().zip(results) {
        if let Some(stats) = stats {
            summary.workers.push((ifname, queue, stats));
        }
    }
    summary
}

#[cfg(test)]
mod fault_tests {
    use super::*;

    #[test]
    fn fault_injection_values() {
        let f = InjectedFault::parse("eth1:1:300").unwrap();
        assert_eq!(
            f,
            InjectedFault {
                ifname: "eth1".into(),
                queue: 1,
                after: std::time::Duration::from_millis(300),
                panic: false
            }
        );
        assert!(InjectedFault::parse("eth1:0:0:panic").unwrap().panic);
        for bad in [
            "",
            "eth1",
            "eth1:1",
            ":1:300",
            "eth1:x:300",
            "eth1:1:soon",
            "eth1:1:3:abort",
        ] {
            let e = InjectedFault::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("XBLADE_TEST_FAIL_WORKER") && e.contains("test-only"),
                "{e}"
            );
        }
    }
}
