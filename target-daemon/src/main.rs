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

fn config_from(cli: Cli) -> anyhow::Result<Config> {
    match cli.command {
        Some(Command::Serve { config, daemon }) => {
            let text = std::fs::read_to_string(&config).map_err(|e| {
                anyhow::anyhow!("cannot read configuration {}: {e}", config.display())
            })?;
            let mut c = Config::from_toml(&config.display().to_string(), &text)?;
            daemon.apply(&mut c.daemon);
            cli.daemon.apply(&mut c.daemon);
            Ok(c)
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
            Ok(c)
        }
    }
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
    let cli = Cli::parse();
    let result = config_from(cli).and_then(|cfg| {
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
