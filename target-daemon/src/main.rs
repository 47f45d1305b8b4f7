//! `xblade`: the AoE target daemon.
//!
//! Two forms:
//! - vblade-compatible: `xblade [-b bufcnt] [-o off] [-l len] [-d] [-s] [-r] [-m mac[,mac…]] SHELF SLOT NETIF PATH`
//! - many exports and interfaces: `xblade serve --config FILE` (TOML).

mod cli;
mod client;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use cli::{Cli, Command, DaemonArgs, VbladeArgs};
use xblade::config::{Config, Daemon, Export, Interface, IoArg};

/// What to serve: the configuration, where its CPU list came from (for messages about it),
/// and the configuration file (`serve`), for reloads.
struct Serving {
    cfg: Config,
    cpus_origin: String,
    config_path: Option<PathBuf>,
}

/// The configuration of `xblade serve --config FILE` (`daemon`: the options after `serve`,
/// `top`: those before it).
fn serve_config(config: PathBuf, daemon: &DaemonArgs, top: &DaemonArgs) -> anyhow::Result<Serving> {
    let text = std::fs::read_to_string(&config)
        .map_err(|e| anyhow::anyhow!("cannot read configuration {}: {e}", config.display()))?;
    let mut c = Config::from_toml(&config.display().to_string(), &text)?;
    let from_file = daemon.cpus.is_empty() && top.cpus.is_empty();
    daemon.apply(&mut c.daemon);
    top.apply(&mut c.daemon);
    if c.daemon.control.is_none() {
        c.daemon.control = Some(xblade::ctl::default_serve_path());
    }
    let cpus_origin = if from_file {
        format!(
            "[daemon] cpus = {:?} in {}",
            c.daemon.cpus,
            config.display()
        )
    } else {
        cpus_flag(&c.daemon.cpus)
    };
    Ok(Serving {
        cfg: c,
        cpus_origin,
        config_path: Some(config),
    })
}

/// The configuration of the vblade-style form.
fn vblade_config(v: VbladeArgs, top: &DaemonArgs) -> anyhow::Result<Serving> {
    let required = |what: &str| anyhow::anyhow!("{what} is required");
    let netif = v.netif.ok_or_else(|| required("NETIF"))?;
    let mut c = Config {
        daemon: Daemon::default(),
        interfaces: vec![Interface {
            name: netif.clone(),
            queues: v.queues,
        }],
        exports: vec![Export {
            shelf: v.shelf.ok_or_else(|| required("SHELF"))?,
            slot: v.slot.ok_or_else(|| required("SLOT"))?,
            path: v.path.ok_or_else(|| required("PATH"))?,
            offset: v.offset,
            length: v.length,
            read_only: v.read_only,
            io: if v.buffered {
                IoArg::Buffered
            } else {
                IoArg::Direct
            },
            write_back: v.write_back,
            bufcnt: v.bufcnt,
            mask: v.mask,
            interfaces: Vec::new(),
            serial: None,
        }],
    };
    let _ = (v.direct, v.sync);
    top.apply(&mut c.daemon);
    if c.daemon.control.is_none() {
        c.daemon.control = Some(xblade::ctl::default_iface_path(&netif));
    }
    c.validate()?;
    let cpus_origin = cpus_flag(&c.daemon.cpus);
    Ok(Serving {
        cfg: c,
        cpus_origin,
        config_path: None,
    })
}

/// `--cpus 0,2`, as the operator wrote it.
fn cpus_flag(cpus: &[usize]) -> String {
    let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
    format!("--cpus {}", list.join(","))
}

/// Refuse CPUs outside the CPU set this process was started with (taskset, systemd
/// `CPUAffinity=`, cgroup cpusets), before anything is attached. Reading the set here, in the
/// main thread before any worker is pinned, is what fixes it for the whole run.
fn check_cpus(cfg: &Config, origin: &str) -> anyhow::Result<()> {
    let allowed = xblade::sys::inherited_cpus()
        .map_err(|e| anyhow::anyhow!("reading this process's CPU set (sched_getaffinity): {e}"))?;
    match xblade::sys::cpus_outside_set(origin, &cfg.daemon.cpus, allowed) {
        Some(msg) => Err(anyhow::anyhow!(msg)),
        None => Ok(()),
    }
}

/// Log a panic through `tracing` (so the journal shows which thread died, and why) before the
/// release build aborts the process (`panic = "abort"`: a dead worker must not leave a daemon
/// that looks alive; systemd's Restart=on-failure restarts it).
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let msg = info
            .payload_as_str()
            .unwrap_or("(a panic payload that is not a string)");
        let at = info
            .location()
            .map(|l| l.to_string())
            .unwrap_or_else(|| "an unknown location".into());
        // A worker thread runs under its seccomp filter, which forbids what resolving a
        // backtrace's symbols does (open the executable, map it): there the message goes alone.
        if xblade::privilege::sandboxed() {
            tracing::error!(
                thread = name,
                "thread '{name}' panicked at {at}: {msg} (no backtrace: a worker thread runs \
                 under a seccomp filter)"
            );
            return;
        }
        let bt = std::backtrace::Backtrace::capture();
        if bt.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(
                thread = name,
                "thread '{name}' panicked at {at}: {msg}\n{bt}"
            );
        } else {
            tracing::error!(
                thread = name,
                "thread '{name}' panicked at {at}: {msg} (RUST_BACKTRACE=1 for a backtrace)"
            );
        }
    }));
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XBLADE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    log_panics();
    let cli = Cli::parse();
    let serving = match cli.command {
        Some(Command::Serve { config, daemon }) => serve_config(config, &daemon, &cli.daemon),
        None => vblade_config(cli.export, &cli.daemon),
        Some(command) => {
            return match client::run(command) {
                Ok(code) => code,
                Err(e) if e.is::<client::StdoutClosed>() => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xblade: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    };
    let result = serving.and_then(|s| {
        check_cpus(&s.cfg, &s.cpus_origin)?;
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&stop))?;
        }
        let reload = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))?;
        let opts = xblade::daemon::Options {
            config_path: s.config_path,
            reload,
        };
        xblade::daemon::run(&s.cfg, stop, opts)
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xblade: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
