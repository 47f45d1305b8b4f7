//! Start-up and shutdown: preflight, open exports, attach XDP, build one worker per
//! (interface, queue), run them on their threads, and report.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use aoe::target::{ExportState, Iface};
use aoe::wire::{ATA_HLEN, MIN_MTU, SECTOR};
use xblade_ebpf::{Role, Steering, XdpMode};
use xsk::{Socket, SocketConfig, Umem, UmemConfig};

use crate::backing::{Backing, BackingConfig, Durability, IoMode};
use crate::config::{Config, IoArg, XdpModeArg};
use crate::export::Export;
use crate::sys::{self, cap};
use crate::uring::{Uring, UringConfig};
use crate::worker::{Bounce, Worker, WorkerSetup, WorkerStats};

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

/// Open every export's backing store and build its protocol state.
fn open_exports(cfg: &Config, max_sectors: u8) -> Result<Vec<Arc<Export>>> {
    let host = sys::hostname();
    let mut out = Vec::new();
    for e in &cfg.exports {
        let bc = BackingConfig {
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
        };
        let backing =
            Backing::open(&bc).with_context(|| format!("export e{}.{}", e.shelf, e.slot))?;
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
        st.mask = e.mask_macs();
        st.serial = e
            .serial
            .clone()
            .unwrap_or_else(|| format!("{}.{}:{host}", e.shelf, e.slot));
        tracing::info!(
            export = %format!("e{}.{}", e.shelf, e.slot),
            path = %e.path.display(),
            sectors = st.sectors,
            io = ?backing.io_mode(),
            durability = ?backing.durability(),
            read_only = e.read_only,
            kind = ?backing.kind(),
            in_memory = backing.in_memory(),
            "export ready{}",
            if backing.in_memory() {
                " (in memory: mapped, one copy per request, no system call). VOLATILE: the store \
                 is on tmpfs/ramfs, so its contents are lost when the host reboots or loses \
                 power; acknowledged writes are durable only as long as the host runs"
            } else if backing.durability() == Durability::Sync {
                " (io_uring; writes acknowledged once durable)"
            } else {
                " (io_uring; --write-back: writes acknowledged before they are durable, FLUSH \
                 makes them so)"
            }
        );
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
            let len = map.bytes();
            tracing::info!(
                export = %export.name,
                huge_mib = map.huge_bytes() >> 20,
                mib = len >> 20,
                "in-memory store mapped{}",
                if map.huge_tried() > map.huge_bytes() {
                    " partly or wholly with 4 KiB pages: 2 MiB pages were refused (shmem_enabled \
                     is deny, the kernel predates 6.1, or no free 2 MiB pages): random reads \
                     will be slower"
                } else if map.huge_bytes() < len && len >= 2 << 20 {
                    " with 4 KiB pages where the file is sparse (memory not allocated yet): \
                     `fallocate` the image before starting xblade to get 2 MiB pages there"
                } else {
                    ""
                }
            );
        }
        out.push(Arc::new(export));
    }
    Ok(out)
}

/// Run the daemon until `stop` is set. Returns the workers' counters.
pub fn run(cfg: &Config, stop: Arc<AtomicBool>) -> Result<Summary> {
    cfg.validate()?;
    let nworkers: usize = cfg.interfaces.iter().map(|i| i.queues.len()).sum();
    preflight(cfg, nworkers)?;
    let ucfg = umem_config(cfg.daemon.frames);
    // The MTU bounds sectors per command (Iface::advertised_sectors); the datapath does not:
    // frames larger than a chunk arrive and leave as multi-buffer frames.
    let exports = open_exports(cfg, 255)?;

    let mut steerings = Vec::new();
    let mut workers = Vec::new();
    for icfg in &cfg.interfaces {
        let (mac, mtu) = sys::iface_info(&icfg.name)?;
        if mtu < MIN_MTU {
            bail!("interface {} has MTU {mtu}; AoE needs at least {MIN_MTU} (raise it with `ip link set {} mtu 1500`)", icfg.name, icfg.name);
        }
        let mode = match cfg.daemon.xdp_mode {
            XdpModeArg::Auto => XdpMode::Auto,
            XdpModeArg::Driver => XdpMode::Driver,
            XdpModeArg::Skb => XdpMode::Skb,
        };
        let mut steering =
            Steering::attach(&icfg.name, mode, Role::Target, cfg.daemon.replace_xdp)?;
        tracing::info!(iface = %icfg.name, mode = ?steering.mode(), "XDP program attached");
        let mine: Vec<Arc<Export>> = cfg
            .exports
            .iter()
            .zip(&exports)
            .filter(|(e, _)| e.on(&icfg.name))
            .map(|(_, x)| Arc::clone(x))
            .collect();
        let iface = Iface { mac, mtu };
        let multi = usize::from(mtu) + aoe::wire::ETH_HLEN > single_chunk_frame(&ucfg);
        if multi {
            tracing::info!(iface = %icfg.name, mtu, "frames larger than a 4 KiB chunk: multi-buffer AF_XDP (XDP_USE_SG)");
        }
        for &q in &icfg.queues {
            let capacity = mine
                .iter()
                .map(|e| usize::from(e.state().bufcnt))
                .sum::<usize>()
                .clamp(MIN_INFLIGHT, MAX_INFLIGHT);
            let ops = if multi { ops_per_request(mtu) } else { 1 };
            // Fill ring + a response chunk per data chunk of every request in flight + spares.
            let need = ucfg.fill_size as usize + capacity * ops + 256;
            let mut qcfg = ucfg;
            qcfg.frame_count = qcfg.frame_count.max(need as u32);
            let umem = Umem::new(qcfg)
                .with_context(|| format!("packet buffers for {} queue {q}", icfg.name))?;
            let scfg = SocketConfig {
                multi_buffer: multi,
                ..SocketConfig::default()
            };
            let sock = Socket::new(&icfg.name, q, &umem, scfg)?;
            steering.register(q, sock.fd())?;
            let bounce = if multi {
                let slot = (qcfg.rx_offset() as usize + usize::from(mtu) + aoe::wire::ETH_HLEN)
                    .div_ceil(CHUNK as usize)
                    * CHUNK as usize;
                Some(
                    Bounce::new(capacity, slot)
                        .with_context(|| format!("jumbo bounce buffers for {}", icfg.name))?,
                )
            } else {
                None
            };
            let fds: Vec<_> = mine.iter().map(|e| e.backing.fd()).collect();
            let mut regions = vec![umem.area()];
            regions.extend(bounce.as_ref().map(|b| b.area()));
            let ucfg_ring = UringConfig {
                sqpoll: cfg.daemon.sqpoll.then_some(100),
                iopoll: cfg.daemon.iopoll,
            };
            let (uring, notes) = Uring::with_config(
                (capacity * ops).next_power_of_two() as u32,
                &fds,
                &regions,
                &ucfg_ring,
            )
            .with_context(|| format!("io_uring for {} queue {q}", icfg.name))?;
            for n in notes {
                tracing::warn!(iface = %icfg.name, queue = q, "{n}");
            }
            if cfg.daemon.busy_poll > 0 {
                sock.set_busy_poll(cfg.daemon.busy_poll, cfg.daemon.busy_poll_budget)
                    .with_context(|| format!("--busy-poll on {} queue {q}", icfg.name))?;
                tracing::info!(iface = %icfg.name, queue = q, usecs = cfg.daemon.busy_poll, "preferred busy polling on");
            }
            tracing::info!(
                iface = %icfg.name,
                queue = q,
                zero_copy = sock.zero_copy(),
                exports = mine.len(),
                in_flight = capacity,
                "AF_XDP socket bound ({})",
                if sock.zero_copy() {
                    "zero-copy"
                } else {
                    "copy mode: the NIC driver has no AF_XDP zero-copy"
                }
            );
            workers.push(
                Worker::new(WorkerSetup {
                    ifname: icfg.name.clone(),
                    queue: q,
                    iface,
                    exports: mine.clone(),
                    umem,
                    sock,
                    uring,
                    bounce,
                    capacity,
                })
                .with_busy_poll(cfg.daemon.busy_poll > 0),
            );
        }
        steerings.push(steering);
    }

    let cpus = if cfg.daemon.cpus.is_empty() {
        let online = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let avoid: Vec<usize> = cfg
            .interfaces
            .iter()
            .flat_map(|i| sys::irq_cpus(&i.name))
            .collect();
        sys::default_cpus(workers.len(), online, &avoid)
    } else {
        cfg.daemon.cpus.clone()
    };
    let mut handles = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        let stop = Arc::clone(&stop);
        let cpu = cpus.get(i).copied();
        let name = format!("xblade-{}-q{}", w.ifname, w.queue);
        let (ifname, queue) = (w.ifname.clone(), w.queue);
        let ifname_log = ifname.clone();
        let h = std::thread::Builder::new().name(name).spawn(move || {
            if let Some(c) = cpu {
                if core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                    tracing::info!(iface = %ifname_log, queue, cpu = c, "worker pinned");
                } else {
                    tracing::warn!(cpu = c, "could not pin worker to CPU {c}: is it online and in this process's cpuset?");
                }
            }
            w.run(&stop)
        })?;
        handles.push((ifname, queue, h));
    }
    // "serving workers=N" is the readiness line the tests, the bench and scripts wait for.
    tracing::info!(workers = handles.len(), "serving");
    let mut summary = Summary::default();
    let mut failed = None;
    for (ifname, queue, h) in handles {
        match h.join() {
            Ok(Ok(stats)) => {
                tracing::info!(iface = %ifname, queue, ?stats, "worker stopped");
                summary.workers.push((ifname, queue, stats));
            }
            Ok(Err(e)) => {
                failed = Some(anyhow::anyhow!("worker {ifname} queue {queue} failed: {e}"))
            }
            Err(_) => failed = Some(anyhow::anyhow!("worker {ifname} queue {queue} panicked")),
        }
    }
    for s in &steerings {
        if let Ok(c) = s.counters() {
            tracing::info!(iface = %s.ifname(), redirected = c.redirected, dropped = c.dropped, passed = c.passed, "XDP counters");
        }
    }
    drop(steerings);
    tracing::info!("XDP detached; exiting");
    match failed {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}
