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
            let storage = Engines::new(uring, Mapped::new(&mine, capacity * ops));
            workers.push(
                Worker::new(WorkerSetup {
                    ifname: icfg.name.clone(),
                    queue: q,
                    iface,
                    exports: mine.clone(),
                    net: XskPackets { umem, sock },
                    storage,
                    bounce,
                    capacity,
                })
                .with_busy_poll(cfg.daemon.busy_poll > 0),
            );
        }
        steerings.push(steering);
    }

    let cpus = worker_cpus(cfg, workers.len())?;
    let fault = InjectedFault::from_env(&workers)?;
    let (summary, failed) = run_workers(workers, &cpus, fault.as_ref(), &stop);
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

    /// Run `w` on a thread of its own (named `name`, inheriting this thread's CPU pin) until
    /// `stop`, or until `after` has passed: then stop it (it drains like at shutdown) and fail
    /// or panic in its place.
    fn run(&self, w: Worker, name: &str, stop: &AtomicBool) -> std::io::Result<WorkerStats> {
        use std::sync::atomic::Ordering::Relaxed;
        let own_stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let inner = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn_scoped(s, || w.run(&own_stop))?;
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
    stop: &Arc<AtomicBool>,
) -> (Summary, Option<anyhow::Error>) {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::mpsc::RecvTimeoutError;

    let (tx, rx) = std::sync::mpsc::channel();
    let mut ids = Vec::new();
    let mut handles = Vec::new();
    let mut failed: Option<anyhow::Error> = None;
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
        let thread_name = name.clone();
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            if let Some(c) = cpu {
                if let Err(e) = sys::pin_current_thread(c) {
                    reporter.done(Err(format!(
                        "cannot pin it to CPU {c}: {e} (is the CPU online and in this \
                         process's CPU set?)"
                    )));
                    return;
                }
                tracing::info!(iface = %w.ifname, queue = w.queue, cpu = c, "worker pinned");
            }
            reporter.started();
            let r = match &fault {
                Some(f) => f.run(w, &thread_name, &thread_stop),
                None => w.run(&thread_stop),
            };
            reporter.done(r.map_err(|e| e.to_string()));
        });
        match spawned {
            Ok(h) => {
                ids.push((ifname, queue));
                handles.push(h);
            }
            Err(e) => {
                failed = Some(anyhow::anyhow!(
                    "starting the thread of worker {ifname} queue {queue}: {e}"
                ));
                stop.store(true, Relaxed);
                break;
            }
        }
    }
    drop(tx);

    let n = handles.len();
    let mut started = 0;
    let mut results: Vec<Option<WorkerStats>> = (0..n).map(|_| None).collect();
    let mut finished = vec![false; n];
    let mut running = n;
    let mut drain_deadline = failed
        .as_ref()
        .map(|_| std::time::Instant::now() + DRAIN_AFTER_FAILURE);
    if n == 0 && failed.is_none() {
        tracing::info!(workers = 0, "serving");
    }
    while running > 0 {
        let event = match drain_deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(std::time::Instant::now())),
        };
        let event = match event {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => {
                tracing::error!(
                    workers = running,
                    "worker(s) did not stop within {} s of the failure; exiting without them",
                    DRAIN_AFTER_FAILURE.as_secs()
                );
                break;
            }
            // Every thread is gone (each reports Done before it ends, so this is not reached).
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match event {
            WorkerEvent::Started => {
                started += 1;
                if started == n && failed.is_none() {
                    // "serving workers=N" is the readiness line the tests, the bench and scripts
                    // wait for.
                    tracing::info!(workers = n, "serving");
                }
            }
            // From the closure of a thread that could not be started (dropped unrun).
            WorkerEvent::Done(i, _) if i >= n => {}
            WorkerEvent::Done(i, r) => {
                running -= 1;
                finished[i] = true;
                let (ifname, queue) = &ids[i];
                let error = match r {
                    Ok(stats) => {
                        tracing::info!(iface = %ifname, queue, ?stats, "worker stopped");
                        results[i] = Some(stats);
                        (!stop.load(Relaxed)).then(|| "stopped without being asked to".to_owned())
                    }
                    Err(e) => Some(e),
                };
                if let Some(e) = error {
                    let e = anyhow::anyhow!("worker {ifname} queue {queue} failed: {e}");
                    tracing::error!(
                        "{e}; stopping: the other workers drain, then XDP is detached and \
                         xblade exits"
                    );
                    stop.store(true, Relaxed);
                    failed.get_or_insert(e);
                    drain_deadline
                        .get_or_insert_with(|| std::time::Instant::now() + DRAIN_AFTER_FAILURE);
                }
            }
        }
    }
    // Only threads that reported Done are joined: they have nothing left to do but return.
    for (h, done) in handles.into_iter().zip(&finished) {
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
    (summary, failed)
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
