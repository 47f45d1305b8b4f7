//! `xblade`: the AoE target daemon.
//!
//! Two forms:
//! - vblade-compatible: `xblade [-b bufcnt] [-o off] [-l len] [-d] [-s] [-r] [-m mac[,mac…]] SHELF SLOT NETIF PATH`
//! - many exports and interfaces: `xblade serve --config FILE` (TOML).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use xblade::config::{Config, Daemon, Export, Interface, IoArg, XdpModeArg};

#[derive(Parser, Debug)]
#[command(
    name = "xblade",
    version,
    about = "ATA over Ethernet target: exports block devices and files over XDP/AF_XDP and io_uring",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    export: VbladeArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the exports and interfaces of a TOML configuration file.
    Serve {
        /// The configuration file.
        #[arg(long, short = 'c')]
        config: PathBuf,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

/// The vblade-compatible single-export form.
#[derive(Args, Debug)]
struct VbladeArgs {
    /// Advertised buffer count (outstanding requests the target absorbs).
    #[arg(short = 'b', default_value_t = aoe::target::DEFAULT_BUFCNT)]
    bufcnt: u16,
    /// Offset of the export in the backing store, in 512-byte sectors.
    #[arg(short = 'o', default_value_t = 0)]
    offset: u64,
    /// Length of the export in sectors (default: to the end).
    #[arg(short = 'l')]
    length: Option<u64>,
    /// O_DIRECT (accepted for vblade compatibility: it is the default).
    #[arg(short = 'd')]
    direct: bool,
    /// Durable writes (accepted for vblade compatibility: it is the default).
    #[arg(short = 's')]
    sync: bool,
    /// Export read-only.
    #[arg(short = 'r')]
    read_only: bool,
    /// Serve only these initiator MACs (comma-separated).
    #[arg(short = 'm', value_delimiter = ',')]
    mask: Vec<String>,
    /// Use the page cache instead of O_DIRECT (for stores that refuse O_DIRECT).
    #[arg(long)]
    buffered: bool,
    /// Acknowledge writes before they are durable; FLUSH CACHE then syncs. Unsafe with the Linux
    /// initiator, which never flushes.
    #[arg(long)]
    write_back: bool,
    /// NIC queues to serve (default 0).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    queues: Vec<u32>,
    /// Shelf address (0-65534, not 4095).
    #[arg(value_name = "SHELF", required = true)]
    shelf: Option<u16>,
    /// Slot address (0-254).
    #[arg(value_name = "SLOT", required = true)]
    slot: Option<u8>,
    /// Network interface.
    #[arg(value_name = "NETIF", required = true)]
    netif: Option<String>,
    /// Backing file or block device.
    #[arg(value_name = "PATH", required = true)]
    path: Option<PathBuf>,
}

/// Daemon-wide options for both forms (command line wins over the file).
#[derive(Args, Debug, Clone)]
struct DaemonArgs {
    /// XDP attach mode: driver (native), skb (generic), or auto (driver, else skb).
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpModeArg>,
    /// Replace an XDP program that another tool attached to the interface.
    #[arg(long)]
    replace_xdp: bool,
    /// Pin workers to these CPUs, in order (comma-separated). Default: one CPU per worker,
    /// avoiding the CPUs that take the NIC's interrupts.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Preferred busy polling on the AF_XDP sockets for this many microseconds (real NICs).
    #[arg(long, value_name = "USECS")]
    busy_poll: Option<u32>,
    /// io_uring with a kernel submission thread (SQPOLL).
    #[arg(long)]
    sqpoll: bool,
    /// io_uring completion polling (IOPOLL): NVMe with poll queues (nvme.poll_queues=N) only.
    #[arg(long)]
    iopoll: bool,
}

impl DaemonArgs {
    fn apply(&self, d: &mut Daemon) {
        if let Some(m) = self.xdp_mode {
            d.xdp_mode = m;
        }
        d.replace_xdp |= self.replace_xdp;
        if !self.cpus.is_empty() {
            d.cpus = self.cpus.clone();
        }
        if let Some(us) = self.busy_poll {
            d.busy_poll = us;
        }
        d.sqpoll |= self.sqpoll;
        d.iopoll |= self.iopoll;
    }
}

/// The configuration, and where its CPU list came from (for messages about it).
fn config_from(cli: Cli) -> anyhow::Result<(Config, String)> {
    match cli.command {
        Some(Command::Serve { config, daemon }) => {
            let text = std::fs::read_to_string(&config).map_err(|e| {
                anyhow::anyhow!("cannot read configuration {}: {e}", config.display())
            })?;
            let mut c = Config::from_toml(&config.display().to_string(), &text)?;
            let from_file = daemon.cpus.is_empty() && cli.daemon.cpus.is_empty();
            daemon.apply(&mut c.daemon);
            cli.daemon.apply(&mut c.daemon);
            let origin = if from_file {
                format!(
                    "[daemon] cpus = {:?} in {}",
                    c.daemon.cpus,
                    config.display()
                )
            } else {
                cpus_flag(&c.daemon.cpus)
            };
            Ok((c, origin))
        }
        None => {
            let v = cli.export;
            let netif = v.netif.expect("clap requires NETIF");
            let mut c = Config {
                daemon: Daemon::default(),
                interfaces: vec![Interface {
                    name: netif,
                    queues: v.queues,
                }],
                exports: vec![Export {
                    shelf: v.shelf.expect("clap requires SHELF"),
                    slot: v.slot.expect("clap requires SLOT"),
                    path: v.path.expect("clap requires PATH"),
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
            cli.daemon.apply(&mut c.daemon);
            c.validate()?;
            let origin = cpus_flag(&c.daemon.cpus);
            Ok((c, origin))
        }
    }
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
    let result = config_from(cli).and_then(|(cfg, cpus_origin)| {
        check_cpus(&cfg, &cpus_origin)?;
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&stop))?;
        }
        xblade::daemon::run(&cfg, stop)
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xblade: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
