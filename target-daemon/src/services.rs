//! The threads beside the workers once xblade serves: the control socket (with SIGHUP reloads
//! and systemd's watchdog), the state writer, and the Prometheus endpoint. All are started
//! after the capabilities are dropped, and none is on the datapath.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aoe::target::StateChange;
use aoe::wire::parse_mac;

use crate::config::{self, Config};
use crate::ctl::{self, Request, Response};
use crate::export::Export;
use crate::runtime::Runtime;

/// Opens an export's store and loads its persisted state.
pub type Opener = Arc<dyn Fn(&config::Export) -> Result<Arc<Export>> + Send + Sync>;

/// The running services; [`Services::stop`] ends them.
pub struct Services {
    quit: Arc<AtomicBool>,
    control: Option<std::thread::JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<()>>,
    metrics: Option<crate::metrics::MetricsServer>,
    runtime: Arc<Runtime>,
}

impl Services {
    /// Start the control thread on `listener`, the state writer, and the metrics endpoint (if
    /// `metrics` is set). `reload` is SIGHUP's flag.
    pub fn start(
        runtime: &Arc<Runtime>,
        listener: UnixListener,
        open: Opener,
        reload: Arc<AtomicBool>,
        metrics: Option<&str>,
    ) -> Result<Services> {
        let writer = match &runtime.writer {
            Some(w) => Some(w.spawn().context("starting the state writer thread")?),
            None => None,
        };
        let metrics = match metrics {
            Some(addr) => {
                let rt = Arc::clone(runtime);
                let server = crate::metrics::serve(addr, Arc::new(move || rt.status()))?;
                tracing::info!(%addr, "Prometheus metrics at http://{addr}/metrics");
                Some(server)
            }
            None => None,
        };
        let quit = Arc::new(AtomicBool::new(false));
        let rt = Arc::clone(runtime);
        let q = Arc::clone(&quit);
        let control = std::thread::Builder::new()
            .name("control-socket".into())
            .spawn(move || control_loop(&rt, &listener, &open, &reload, &q))
            .context("starting the control thread")?;
        tracing::info!(socket = %runtime.control_path.display(), "control socket listening (xblade status, stat, add, remove, reload, mask, reserve, config-string)");
        Ok(Services {
            quit,
            control: Some(control),
            writer,
            metrics,
            runtime: Arc::clone(runtime),
        })
    }

    /// Stop every service (the state writer after a last round of writes).
    pub fn stop(mut self) {
        self.quit.store(true, Ordering::Release);
        if let Some(t) = self.control.take() {
            let _ = t.join();
        }
        drop(self.metrics.take());
        if let (Some(w), Some(t)) = (&self.runtime.writer, self.writer.take()) {
            w.stop();
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.runtime.control_path);
    }
}

/// Accept and serve control connections until `quit`; reload on SIGHUP; feed the watchdog.
fn control_loop(
    rt: &Runtime,
    listener: &UnixListener,
    open: &Opener,
    reload: &AtomicBool,
    quit: &AtomicBool,
) {
    let watchdog = crate::notify::watchdog_interval();
    let mut last_pet = Instant::now();
    while !quit.load(Ordering::Acquire) {
        if reload.swap(false, Ordering::AcqRel) {
            if rt.config_path.is_none() {
                tracing::info!(
                    "SIGHUP: this xblade was started vblade-style, without a configuration \
                     file: nothing to reload (restart it to change its export; xblade add and \
                     remove change exports at run time)"
                );
            } else {
                tracing::info!("SIGHUP: reloading the configuration");
                let r = handle(rt, open, Request::Reload);
                if let Some(e) = r.error {
                    tracing::error!("reload failed: {e}");
                }
            }
        }
        if let Some(iv) = watchdog {
            if last_pet.elapsed() >= iv / 2 {
                last_pet = Instant::now();
                if rt.workers_responsive(iv / 4) {
                    crate::notify::watchdog();
                } else {
                    tracing::warn!(
                        "a worker did not answer within {:?}: not petting systemd's watchdog",
                        iv / 4
                    );
                }
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = ctl::serve_one(stream, &|req| handle(rt, open, req)) {
                    tracing::debug!("control connection: {e:#}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ =
                    crate::sys::poll_readable(std::os::fd::AsRawFd::as_raw_fd(listener), None, 100);
            }
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Carry out one control request.
pub fn handle(rt: &Runtime, open: &Opener, req: Request) -> Response {
    let result = match req {
        Request::Status => {
            return Response {
                ok: true,
                status: Some(Box::new(rt.status())),
                ..Response::default()
            }
        }
        Request::Add { export } => rt.add(export, open.as_ref()),
        Request::Remove { name } => rt.remove(&name),
        Request::Reload => reload(rt, open),
        Request::Mask {
            name,
            add,
            remove,
            clear,
        } => mask(rt, &name, &add, &remove, clear),
        Request::Reserve { name, clear } => {
            if !clear {
                Err(anyhow!("xblade reserve: say --clear (the only edit an admin makes to a reserve list; initiators set it)"))
            } else {
                rt.edit(&name, &|_| Ok(StateChange::Reserve(Vec::new())))
            }
        }
        Request::ConfigString { name, set, clear } => match (set, clear) {
            (Some(s), false) => {
                if s.len() > aoe::wire::MAX_CONFIG {
                    Err(anyhow!(
                        "a config string holds at most {} bytes; this one has {}",
                        aoe::wire::MAX_CONFIG,
                        s.len()
                    ))
                } else {
                    rt.edit(&name, &|_| Ok(StateChange::Config(s.as_bytes().to_vec())))
                }
            }
            (None, true) => rt.edit(&name, &|_| Ok(StateChange::Config(Vec::new()))),
            _ => Err(anyhow!(
                "xblade config-string: give --set STRING or --clear"
            )),
        },
    };
    match result {
        Ok(m) => {
            crate::notify::status(&rt.summary());
            Response::done(m)
        }
        Err(e) => Response::failed(&e),
    }
}

fn reload(rt: &Runtime, open: &Opener) -> Result<String> {
    let Some(path) = rt.config_path.clone() else {
        bail!(
            "this xblade was started without a configuration file (the vblade-style form): \
             there is nothing to reload; use xblade add/remove"
        );
    };
    crate::notify::reloading();
    let result = read_config(&path).and_then(|cfg| rt.reload(cfg, open.as_ref()));
    crate::notify::reloaded(&rt.summary());
    match &result {
        Ok(m) => tracing::info!(file = %path.display(), "configuration reloaded: {m}"),
        Err(e) => tracing::error!(file = %path.display(), "reload: {e:#}"),
    }
    result
}

fn read_config(path: &PathBuf) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}: nothing changed", path.display()))?;
    Config::from_toml(&path.display().to_string(), &text)
        .map_err(|e| anyhow!("{e}: nothing changed"))
}

fn mask(
    rt: &Runtime,
    name: &str,
    add: &[String],
    remove: &[String],
    clear: bool,
) -> Result<String> {
    let parse = |list: &[String]| -> Result<Vec<aoe::Mac>> {
        list.iter()
            .map(|m| {
                parse_mac(m)
                    .ok_or_else(|| anyhow!("{m:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))
            })
            .collect()
    };
    let (add, remove) = (parse(add)?, parse(remove)?);
    rt.edit(name, &|state| {
        let mut list = if clear {
            Vec::new()
        } else {
            state.mask.clone()
        };
        list.retain(|m| !remove.contains(m));
        for m in &add {
            if !list.contains(m) {
                list.push(*m);
            }
        }
        if list.len() > aoe::wire::mask::MAX {
            bail!("a mask list holds at most {} MACs", aoe::wire::mask::MAX);
        }
        Ok(StateChange::Mask(list))
    })
}
