//! The command line: the vblade-compatible form, `serve`, and the control commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use xblade::config::{Daemon, XdpModeArg};

#[derive(Parser, Debug)]
#[command(
    after_help = "The vblade-style form serves one export: xblade [OPTIONS] SHELF SLOT NETIF PATH.\n\
                  Control a running daemon with status, stat, add, remove, reload, mask, reserve \
                  and config-string (through its control socket, /run/xblade/*.sock).",
    name = "xblade",
    version,
    about = "ATA over Ethernet target: exports block devices and files over XDP/AF_XDP and io_uring",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub export: VbladeArgs,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the exports and interfaces of a TOML configuration file.
    Serve {
        /// The configuration file.
        #[arg(long, short = 'c')]
        config: PathBuf,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Show a running daemon's exports (with their AoE state and counters), interfaces,
    /// initiators and workers.
    Status {
        /// Print the status as JSON (the format is documented in the README).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Show live I/O per export, one line per export per interval, like iostat.
    Stat {
        /// Seconds between lines.
        #[arg(long, short = 'i', default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many intervals (default: until interrupted).
        #[arg(long, short = 'n')]
        count: Option<u64>,
        /// Only these exports (eS.L).
        exports: Vec<String>,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Add an export to a running daemon, on interfaces it already serves.
    Add {
        #[command(flatten)]
        export: AddArgs,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Remove an export from a running daemon: its requests in flight finish, then it falls
    /// silent.
    Remove {
        /// The export, eS.L.
        export: String,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Re-read the configuration file of a running `xblade serve` and apply the difference
    /// (like SIGHUP). A file that does not validate changes nothing.
    Reload {
        #[command(flatten)]
        control: ControlArg,
    },
    /// Edit an export's MAC mask list (what initiators set with AoE MAC mask commands).
    Mask {
        /// The export, eS.L.
        export: String,
        /// Add this MAC (repeatable).
        #[arg(long, value_name = "MAC")]
        add: Vec<String>,
        /// Remove this MAC (repeatable).
        #[arg(long, value_name = "MAC")]
        remove: Vec<String>,
        /// Empty the list first.
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Clear an export's reserve list (what initiators set with AoE reserve commands).
    Reserve {
        /// The export, eS.L.
        export: String,
        /// Empty the list.
        #[arg(long, required = true)]
        clear: bool,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Set or clear an export's AoE config string.
    ConfigString {
        /// The export, eS.L.
        export: String,
        /// The new config string.
        #[arg(
            long,
            value_name = "STRING",
            conflicts_with = "clear",
            required_unless_present = "clear"
        )]
        set: Option<String>,
        /// Empty it.
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Print the xblade.toml equivalent of a vblade conf.d directory (Debian's
    /// /etc/vblade.conf.d/).
    ImportVblade {
        /// The directory of *.conf files.
        dir: PathBuf,
    },
    /// Write man pages (xblade.8 and one page per subcommand) into a directory.
    Man {
        /// The directory.
        dir: PathBuf,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Which daemon a client command talks to.
#[derive(Args, Debug, Clone)]
pub struct ControlArg {
    /// The daemon's control socket (default: the sockets in /run/xblade/).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

/// An export to add at run time.
#[derive(Args, Debug, Clone)]
pub struct AddArgs {
    /// Shelf address (0-65534, not 4095).
    #[arg(long)]
    pub shelf: u16,
    /// Slot address (0-254).
    #[arg(long)]
    pub slot: u8,
    /// Backing file or block device.
    #[arg(long)]
    pub path: PathBuf,
    /// Export read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Serve it on this interface (repeatable; default: every interface the daemon serves).
    #[arg(long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// Offset in the store, in 512-byte sectors.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// Length in sectors (default: to the end).
    #[arg(long)]
    pub length: Option<u64>,
    /// Use the page cache instead of O_DIRECT.
    #[arg(long)]
    pub buffered: bool,
    /// Acknowledge writes before they are durable.
    #[arg(long)]
    pub write_back: bool,
    /// Advertised buffer count.
    #[arg(long, default_value_t = aoe::target::DEFAULT_BUFCNT)]
    pub bufcnt: u16,
    /// Serve only these initiator MACs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub mask: Vec<String>,
    /// IDENTIFY serial number.
    #[arg(long)]
    pub serial: Option<String>,
}

/// The vblade-compatible single-export form.
#[derive(Args, Debug)]
pub struct VbladeArgs {
    /// Advertised buffer count (outstanding requests the target absorbs).
    #[arg(short = 'b', default_value_t = aoe::target::DEFAULT_BUFCNT)]
    pub bufcnt: u16,
    /// Offset of the export in the backing store, in 512-byte sectors.
    #[arg(short = 'o', default_value_t = 0)]
    pub offset: u64,
    /// Length of the export in sectors (default: to the end).
    #[arg(short = 'l')]
    pub length: Option<u64>,
    /// O_DIRECT (accepted for vblade compatibility: it is the default).
    #[arg(short = 'd')]
    pub direct: bool,
    /// Durable writes (accepted for vblade compatibility: it is the default).
    #[arg(short = 's')]
    pub sync: bool,
    /// Export read-only.
    #[arg(short = 'r')]
    pub read_only: bool,
    /// Serve only these initiator MACs (comma-separated).
    #[arg(short = 'm', value_delimiter = ',')]
    pub mask: Vec<String>,
    /// Use the page cache instead of O_DIRECT (for stores that refuse O_DIRECT).
    #[arg(long)]
    pub buffered: bool,
    /// Acknowledge writes before they are durable; FLUSH CACHE then syncs. Unsafe with the Linux
    /// initiator, which never flushes.
    #[arg(long)]
    pub write_back: bool,
    /// NIC queues to serve (default 0).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub queues: Vec<u32>,
    /// Shelf address (0-65534, not 4095).
    #[arg(value_name = "SHELF", required = true)]
    pub shelf: Option<u16>,
    /// Slot address (0-254).
    #[arg(value_name = "SLOT", required = true)]
    pub slot: Option<u8>,
    /// Network interface.
    #[arg(value_name = "NETIF", required = true)]
    pub netif: Option<String>,
    /// Backing file or block device.
    #[arg(value_name = "PATH", required = true)]
    pub path: Option<PathBuf>,
}

/// Daemon-wide options for both forms (command line wins over the file).
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// XDP attach mode: driver (native), skb (generic), or auto (driver, else skb).
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
    /// Replace an XDP program that another tool attached to the interface.
    #[arg(long)]
    pub replace_xdp: bool,
    /// Pin workers to these CPUs, in order (comma-separated). Default: one CPU per worker,
    /// avoiding the CPUs that take the NIC's interrupts.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Preferred busy polling on the AF_XDP sockets for this many microseconds (real NICs).
    #[arg(long, value_name = "USECS")]
    pub busy_poll: Option<u32>,
    /// io_uring with a kernel submission thread (SQPOLL).
    #[arg(long)]
    pub sqpoll: bool,
    /// io_uring completion polling (IOPOLL): NVMe with poll queues (nvme.poll_queues=N) only.
    #[arg(long)]
    pub iopoll: bool,
    /// The control socket (default /run/xblade/control.sock for `serve`,
    /// /run/xblade/NETIF.sock for the vblade-style form).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Where the exports' AoE state (config string, mask and reserve lists) is kept across
    /// restarts (default /var/lib/xblade).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off by default).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
}

impl DaemonArgs {
    pub fn apply(&self, d: &mut Daemon) {
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
        if let Some(c) = &self.control {
            d.control = Some(c.clone());
        }
        if let Some(s) = &self.state_dir {
            d.state_dir = Some(s.clone());
        }
        if let Some(m) = &self.metrics {
            d.metrics = Some(m.clone());
        }
    }
}

impl AddArgs {
    /// The export as the configuration file would describe it.
    pub fn export(&self) -> xblade::config::Export {
        xblade::config::Export {
            shelf: self.shelf,
            slot: self.slot,
            path: self.path.clone(),
            offset: self.offset,
            length: self.length,
            read_only: self.read_only,
            io: if self.buffered {
                xblade::config::IoArg::Buffered
            } else {
                xblade::config::IoArg::Direct
            },
            write_back: self.write_back,
            bufcnt: self.bufcnt,
            mask: self.mask.clone(),
            interfaces: self.interfaces.clone(),
            serial: self.serial.clone(),
        }
    }
}
