//! The daemon while it serves: what the control socket, the metrics endpoint, SIGHUP and
//! systemd's watchdog act on. It owns the live exports, the interfaces' XDP programs and a
//! line to every worker ([`Control`]); every change goes through one lock, one at a time.
//!
//! Changing the exports of an interface hands each of its workers the new export list; a worker
//! stops taking requests, finishes those in flight (a few hundred microseconds on a healthy
//! store), switches and announces the new exports. Requests that arrive meanwhile wait in the
//! socket's RX ring: nothing is dropped, nothing is retransmitted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aoe::target::StateChange;
use aoe::Mac;
use xblade_ebpf::{Steering, XdpMode};

use crate::config::{self, Config};
use crate::export::Export;
use crate::persist::StateWriter;
use crate::status::{self, ExportStatus, InitiatorStatus, InterfaceStatus, Status, WorkerStatus};
use crate::worker::control::{Control, ExportTally};

/// How long a worker gets to drain and switch to a new export list.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a status request waits for each worker's counters.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(250);
/// How long an admin's state change waits to be persisted.
const PERSIST_TIMEOUT: Duration = Duration::from_secs(10);

/// One worker, as the control plane sees it.
pub struct WorkerLine {
    /// Its queue.
    pub queue: u32,
    /// Its CPU.
    pub cpu: Option<usize>,
    /// The line.
    pub control: Arc<Control>,
}

/// One interface served.
pub struct Port {
    /// Interface name.
    pub name: String,
    /// Its MAC.
    pub mac: Mac,
    /// Its MTU.
    pub mtu: u16,
    /// Its XDP program.
    pub steering: Steering,
    /// Whether its sockets are zero-copy.
    pub zero_copy: bool,
    /// Its workers.
    pub workers: Vec<WorkerLine>,
    /// The exports it serves, in the workers' file order.
    pub exports: Vec<Arc<Export>>,
}

/// An export and the configuration it came from.
pub struct Live {
    /// Its configuration.
    pub cfg: config::Export,
    /// The export.
    pub export: Arc<Export>,
}

/// What changes at run time, behind one lock.
pub struct State {
    /// The configuration in force (exports as added and removed since).
    pub cfg: Config,
    /// The exports.
    pub exports: Vec<Live>,
    /// The interfaces.
    pub ports: Vec<Port>,
}

/// The serving daemon.
pub struct Runtime {
    started: Instant,
    /// The control socket's path.
    pub control_path: PathBuf,
    /// The configuration file (`xblade serve`), re-read by reload.
    pub config_path: Option<PathBuf>,
    /// Persists the exports' AoE state.
    pub writer: Option<Arc<StateWriter>>,
    /// Export-list generations handed to workers.
    generation: AtomicU64,
    state: Mutex<State>,
}

impl Runtime {
    /// The runtime over what start-up built.
    pub fn new(
        state: State,
        control_path: PathBuf,
        config_path: Option<PathBuf>,
        writer: Option<Arc<StateWriter>>,
    ) -> Runtime {
        Runtime {
            started: Instant::now(),
            control_path,
            config_path,
            writer,
            generation: AtomicU64::new(0),
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take the interfaces' XDP programs back (at shutdown, to detach them).
    pub fn take_steerings(&self) -> Vec<Steering> {
        let mut st = self.lock();
        std::mem::take(&mut st.ports)
            .into_iter()
            .map(|p| p.steering)
            .collect()
    }

    /// Whether every worker answers within `timeout` (the watchdog's test of progress).
    pub fn workers_responsive(&self, timeout: Duration) -> bool {
        let lines: Vec<Arc<Control>> = self
            .lock()
            .ports
            .iter()
            .flat_map(|p| p.workers.iter().map(|w| Arc::clone(&w.control)))
            .collect();
        let asked: Vec<u64> = lines.iter().map(|c| c.ask()).collect();
        lines.iter().zip(asked).all(|(c, n)| c.wait(n, timeout))
    }

    /// A one-line summary (systemd's STATUS=).
    pub fn summary(&self) -> String {
        let st = self.lock();
        let workers: usize = st.ports.iter().map(|p| p.workers.len()).sum();
        let ifaces: Vec<&str> = st.ports.iter().map(|p| p.name.as_str()).collect();
        format!(
            "serving {} export(s) on {} with {workers} worker(s)",
            st.exports.len(),
            ifaces.join(", ")
        )
    }

    /// Everything `xblade status` shows.
    pub fn status(&self) -> Status {
        let st = self.lock();
        // Ask every worker first, then wait: they publish in parallel.
        let asked: Vec<Vec<u64>> = st
            .ports
            .iter()
            .map(|p| p.workers.iter().map(|w| w.control.ask()).collect())
            .collect();
        let mut out = Status {
            format: status::FORMAT,
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            control: self.control_path.display().to_string(),
            state_dir: self
                .writer
                .as_ref()
                .map(|w| w.dir().dir().display().to_string()),
            ..Status::default()
        };
        let mut tallies: Vec<(ExportTally, u64)> =
            vec![(ExportTally::default(), 0); st.exports.len()];
        let now = Instant::now();
        for (port, asked) in st.ports.iter().zip(&asked) {
            for (w, n) in port.workers.iter().zip(asked) {
                let responsive = w.control.wait(*n, PUBLISH_TIMEOUT);
                let shared = w.control.lock();
                let p = &shared.published;
                for (e, t, inflight) in &p.exports {
                    if let Some(i) = st.exports.iter().position(|l| Arc::ptr_eq(&l.export, e)) {
                        if let Some((sum, fl)) = tallies.get_mut(i) {
                            sum.add(t);
                            *fl += inflight;
                        }
                    }
                }
                for s in &p.initiators {
                    out.initiators.push(InitiatorStatus {
                        mac: status::mac_string(&s.mac),
                        interface: port.name.clone(),
                        frames: s.frames,
                        last_seen_secs_ago: now.saturating_duration_since(s.last).as_secs_f64(),
                    });
                }
                out.workers.push(WorkerStatus {
                    interface: port.name.clone(),
                    queue: w.queue,
                    cpu: w.cpu,
                    responsive,
                    rx_frames: p.stats.rx_frames,
                    tx_frames: p.stats.tx_frames,
                    dropped: p.stats.dropped,
                    no_slot: p.stats.no_slot,
                    no_frame: p.stats.no_frame,
                    retries: p.stats.retries,
                    ordered_waits: p.stats.ordered_waits,
                    in_flight: p.in_flight,
                    spin_ns: p.stats.spin_ns,
                    sleeps: p.stats.sleeps,
                    commits: p.stats.commits,
                });
            }
        }
        merge_initiators(&mut out.initiators);
        for (l, (t, inflight)) in st.exports.iter().zip(tallies) {
            out.exports.push(export_status(l, &st, t, inflight));
        }
        out.exports.sort_by_key(|e| (e.shelf, e.slot));
        for p in &st.ports {
            let c = p.steering.counters().unwrap_or_default();
            out.interfaces.push(InterfaceStatus {
                name: p.name.clone(),
                mac: status::mac_string(&p.mac),
                mtu: p.mtu,
                xdp_mode: match p.steering.mode() {
                    XdpMode::Driver => "driver".into(),
                    XdpMode::Skb => "skb".into(),
                    XdpMode::Auto => "auto".into(),
                },
                zero_copy: p.zero_copy,
                queues: p.workers.iter().map(|w| w.queue).collect(),
                xdp: status::XdpCounters {
                    redirected: c.redirected,
                    dropped: c.dropped,
                    passed: c.passed,
                    denied: c.denied,
                    bad_address: c.bad_address,
                },
            });
        }
        out
    }

    /// Add an export at run time (`open` opens its store and loads its state).
    pub fn add(
        &self,
        e: config::Export,
        open: &dyn Fn(&config::Export) -> Result<Arc<Export>>,
    ) -> Result<String> {
        let mut st = self.lock();
        let name = format!("e{}.{}", e.shelf, e.slot);
        let mut cfg = st.cfg.clone();
        cfg.exports.push(e.clone());
        cfg.validate()
            .map_err(|err| anyhow!("cannot add {name}: {err}"))?;
        let export = open(&e).with_context(|| format!("cannot add {name}"))?;
        if let Some(w) = &self.writer {
            w.watch(&export);
        }
        // The ACL first: the new export's initiators must get through once it is announced.
        let on = self.switch_ports(&mut st, true, &|p| {
            e.on(&p.name).then(|| {
                let mut list = p.exports.clone();
                list.push(Arc::clone(&export));
                list
            })
        })?;
        st.exports.push(Live {
            cfg: e,
            export: Arc::clone(&export),
        });
        st.cfg = cfg;
        tracing::info!(export = %name, interfaces = %on.join(","), "export added at run time");
        Ok(format!("{name} added on {}", on.join(", ")))
    }

    /// Remove an export at run time: its requests in flight finish, then it falls silent.
    pub fn remove(&self, name: &str) -> Result<String> {
        let mut st = self.lock();
        let i = st
            .exports
            .iter()
            .position(|l| l.export.name == name)
            .ok_or_else(|| no_such_export(name, &st))?;
        let export = Arc::clone(&st.exports[i].export);
        // The ACL last: requests for the export still in flight get their answers.
        self.switch_ports(&mut st, false, &|p| {
            p.exports.iter().any(|x| Arc::ptr_eq(x, &export)).then(|| {
                p.exports
                    .iter()
                    .filter(|x| !Arc::ptr_eq(x, &export))
                    .cloned()
                    .collect()
            })
        })?;
        st.exports.remove(i);
        let (shelf, slot) = (export.shelf(), export.slot());
        st.cfg
            .exports
            .retain(|e| (e.shelf, e.slot) != (shelf, slot));
        tracing::info!(export = %name, "export removed at run time");
        Ok(format!("{name} removed"))
    }

    /// Switch every port for which `new_list` gives a list to it, with the XDP ACL set from
    /// the new list before (`acl_first`) or after the switch. If a port fails, the ports
    /// already switched get their old lists (and ACLs) back, so nothing changed. Returns the
    /// names of the ports switched.
    fn switch_ports(
        &self,
        st: &mut State,
        acl_first: bool,
        new_list: &dyn Fn(&Port) -> Option<Vec<Arc<Export>>>,
    ) -> Result<Vec<String>> {
        let mut done: Vec<(usize, Vec<Arc<Export>>)> = Vec::new();
        let mut failure = None;
        for (i, p) in st.ports.iter_mut().enumerate() {
            let Some(list) = new_list(p) else { continue };
            let old = p.exports.clone();
            let r = switch_with_acl(p, &self.generation, list, acl_first);
            match r {
                Ok(()) => done.push((i, old)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let Some(e) = failure else {
            return Ok(done
                .iter()
                .filter_map(|(i, _)| st.ports.get(*i).map(|p| p.name.clone()))
                .collect());
        };
        for (i, old) in done {
            if let Some(p) = st.ports.get_mut(i) {
                if let Err(e) = switch_with_acl(p, &self.generation, old, !acl_first) {
                    tracing::error!(iface = %p.name, "could not restore the interface's exports after a failed change: {e:#}");
                }
            }
        }
        Err(e)
    }

    /// Apply configuration `new` (re-read from the file): remove, add and replace exports so
    /// that they match it. A change of an export's settings replaces it (its AoE state is
    /// kept: it is persisted). Interface and daemon settings need a restart: said, not applied.
    pub fn reload(
        &self,
        new: Config,
        open: &dyn Fn(&config::Export) -> Result<Arc<Export>>,
    ) -> Result<String> {
        let (removed, added, notes) = {
            let st = self.lock();
            let key = |e: &config::Export| (e.shelf, e.slot);
            let mut removed = Vec::new();
            let mut added = Vec::new();
            for l in &st.exports {
                match new.exports.iter().find(|n| key(n) == key(&l.cfg)) {
                    None => removed.push(l.export.name.clone()),
                    Some(n) if *n != l.cfg => {
                        removed.push(l.export.name.clone());
                        added.push(n.clone());
                    }
                    Some(_) => {}
                }
            }
            for n in &new.exports {
                if !st.exports.iter().any(|l| key(&l.cfg) == key(n)) {
                    added.push(n.clone());
                }
            }
            let mut notes = Vec::new();
            if new.interfaces != st.cfg.interfaces {
                notes.push("interfaces changed: restart xblade to apply that".to_owned());
            }
            if new.daemon != st.cfg.daemon {
                notes.push("[daemon] settings changed: restart xblade to apply them".to_owned());
            }
            (removed, added, notes)
        };
        // Served interfaces cannot change at run time: refuse an export on a new one before
        // changing anything.
        {
            let st = self.lock();
            for e in &added {
                for n in &e.interfaces {
                    if !st.ports.iter().any(|p| &p.name == n) {
                        bail!(
                            "export e{}.{} is on interface {n}, which xblade does not serve yet: \
                             nothing changed (restart xblade to serve a new interface)",
                            e.shelf,
                            e.slot
                        );
                    }
                }
            }
        }
        let mut done = Vec::new();
        for name in &removed {
            self.remove(name)?;
            done.push(format!("removed {name}"));
        }
        for e in added {
            let name = format!("e{}.{}", e.shelf, e.slot);
            self.add(e, open)?;
            done.push(format!("added {name}"));
        }
        if done.is_empty() {
            done.push("no export changed".into());
        }
        done.extend(notes);
        Ok(done.join("; "))
    }

    /// Change export `name`'s AoE state as the admin asks, and wait until it is persisted.
    pub fn edit(
        &self,
        name: &str,
        edit: &dyn Fn(&aoe::target::ExportState) -> Result<StateChange>,
    ) -> Result<String> {
        let export = {
            let st = self.lock();
            st.exports
                .iter()
                .find(|l| l.export.name == name)
                .map(|l| Arc::clone(&l.export))
                .ok_or_else(|| no_such_export(name, &st))?
        };
        let change = {
            let state = export.state();
            edit(&state)?
        };
        let v = export.apply(change);
        let end = Instant::now() + PERSIST_TIMEOUT;
        while export.persisted() < v {
            if Instant::now() >= end {
                bail!(
                    "{name}: changed, but not persisted within {} s: see the daemon's log about \
                     its state directory",
                    PERSIST_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let st = export.state();
        Ok(format!(
            "{name}: config string {} bytes, mask {} MAC(s), reserve {} MAC(s){}",
            st.config.len(),
            st.mask.len(),
            st.reserve.len(),
            if export.is_persisted() {
                " (persisted)"
            } else {
                ""
            }
        ))
    }
}

/// Switch port `p` to `list`, setting its XDP ACL from the new list before (`acl_first`) or
/// after.
fn switch_with_acl(
    p: &mut Port,
    gens: &AtomicU64,
    list: Vec<Arc<Export>>,
    acl_first: bool,
) -> Result<()> {
    if acl_first {
        crate::daemon::steer_sources(&mut p.steering, &p.name, p.mac, &list)?;
    }
    switch_port(p, gens, list)?;
    if !acl_first {
        let list = p.exports.clone();
        crate::daemon::steer_sources(&mut p.steering, &p.name, p.mac, &list)?;
    }
    Ok(())
}

/// Hand every worker of `p` the export list `list` and wait for them. If one does not take
/// it, the workers that did are handed their old list back, so the port's workers never serve
/// different lists.
fn switch_port(p: &mut Port, gens: &AtomicU64, list: Vec<Arc<Export>>) -> Result<()> {
    let gen = gens.fetch_add(1, Ordering::AcqRel) + 1;
    for (i, w) in p.workers.iter().enumerate() {
        if let Err(e) = w.control.change(gen, list.clone(), SWITCH_TIMEOUT) {
            let back = gens.fetch_add(1, Ordering::AcqRel) + 1;
            for done in p.workers.iter().take(i) {
                if let Err(e) = done.control.change(back, p.exports.clone(), SWITCH_TIMEOUT) {
                    tracing::error!(iface = %p.name, queue = done.queue, "could not hand the worker its old export list back: {e}");
                }
            }
            return Err(anyhow!("{} queue {}: {e}", p.name, w.queue));
        }
    }
    p.exports = list;
    Ok(())
}

fn no_such_export(name: &str, st: &State) -> anyhow::Error {
    let names: Vec<&str> = st.exports.iter().map(|l| l.export.name.as_str()).collect();
    anyhow!(
        "no export {name} (exports: {})",
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    )
}

/// One line per (interface, MAC): workers of one interface each saw part of its frames.
fn merge_initiators(list: &mut Vec<InitiatorStatus>) {
    let mut out: Vec<InitiatorStatus> = Vec::new();
    for i in list.drain(..) {
        match out
            .iter_mut()
            .find(|o| o.mac == i.mac && o.interface == i.interface)
        {
            Some(o) => {
                o.frames += i.frames;
                o.last_seen_secs_ago = o.last_seen_secs_ago.min(i.last_seen_secs_ago);
            }
            None => out.push(i),
        }
    }
    out.sort_by(|a, b| a.last_seen_secs_ago.total_cmp(&b.last_seen_secs_ago));
    *list = out;
}

fn export_status(l: &Live, st: &State, t: ExportTally, in_flight: u64) -> ExportStatus {
    let e = &l.export;
    let state = e.state();
    ExportStatus {
        name: e.name.clone(),
        shelf: state.shelf,
        slot: state.slot,
        path: l.cfg.path.display().to_string(),
        sectors: state.sectors,
        size_bytes: state.sectors.saturating_mul(aoe::wire::SECTOR as u64),
        read_only: state.read_only,
        kind: match e.backing.kind() {
            crate::backing::BackingKind::File => "file".into(),
            crate::backing::BackingKind::BlockDevice => "block".into(),
        },
        in_memory: e.backing.in_memory(),
        durable_writes: e.durable_writes(),
        interfaces: st
            .ports
            .iter()
            .filter(|p| p.exports.iter().any(|x| Arc::ptr_eq(x, e)))
            .map(|p| p.name.clone())
            .collect(),
        bufcnt: state.bufcnt,
        config_string: String::from_utf8_lossy(&state.config).into_owned(),
        config_hex: status::hex(&state.config),
        mask: state.mask.iter().map(status::mac_string).collect(),
        reserve: state.reserve.iter().map(status::mac_string).collect(),
        acl: state.acl().iter().map(status::mac_string).collect(),
        counters: status::ExportCounters {
            reads: t.reads,
            writes: t.writes,
            flushes: t.flushes,
            read_bytes: t.read_bytes,
            write_bytes: t.write_bytes,
            errors: t.errors,
            in_flight,
        },
        latency: t.latency.summary(),
    }
}
