//! Command-line interface.

use clap::{Args, Parser, Subcommand, ValueEnum};
use xblade_ebpf::XdpMode;

/// AoE load generator, discovery tool and echo responder, over AF_XDP.
#[derive(Parser, Debug)]
#[command(
    name = "aoe-bench",
    version,
    about = "ATA over Ethernet (AoE) load generator, discovery tool and echo responder, over AF_XDP",
    long_about = "ATA over Ethernet (AoE) load generator, discovery tool and echo responder.\n\n\
        Packets go through one AF_XDP socket on one RX queue of the interface (--queue), with \
        xblade's XDP steering program attached (so the interface must have no other XDP \
        program, or pass --replace-xdp). AoE frames arriving on any other queue are not seen. \
        Jumbo MTUs work (multi-buffer AF_XDP, Linux 6.6+). Needs root (or CAP_NET_ADMIN, \
        CAP_NET_RAW, CAP_BPF and CAP_IPC_LOCK)."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Broadcast Query Config and list the targets that answer (like aoe-stat).
    Discover(DiscoverArgs),
    /// Load one target with a fio-like workload and report IOPS, throughput and latency.
    Run(RunArgs),
    /// Answer every AoE request at once, with no storage: the ceiling for `run`.
    Echo(EchoArgs),
    /// Write the manual pages (aoe-bench.1, and aoe-bench-SUBCOMMAND.1 for each subcommand)
    /// into DIR.
    Man(ManArgs),
    /// Print a shell completion script to stdout (bash: save it as
    /// /usr/share/bash-completion/completions/aoe-bench; zsh: as _aoe-bench in a directory of
    /// $fpath; fish: as ~/.config/fish/completions/aoe-bench.fish).
    Completions(CompletionsArgs),
}

/// `aoe-bench man`.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: std::path::PathBuf,
}

/// `aoe-bench completions`.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

/// The shells `aoe-bench completions` writes for.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    /// bash (bash-completion).
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

impl Shell {
    /// The clap_complete generator for this shell.
    pub fn generator(self) -> clap_complete::Shell {
        match self {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// Writes aoe-bench's manual pages into `dir` (section 1: aoe-bench.1, then one page per
/// subcommand, aoe-bench-run.1 ...), and returns their paths.
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push(clap_mangen::Man::new(sub.clone()).generate_to(dir)?);
    }
    pages.insert(0, clap_mangen::Man::new(cmd).generate_to(dir)?);
    Ok(pages)
}

/// Writes the completion script for `shell` to `out`.
pub fn write_completions(shell: Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell.generator(), &mut Cli::command(), "aoe-bench", out);
}

/// Where the packets go: interface, queue, XDP.
#[derive(Args, Debug, Clone)]
pub struct PortArgs {
    /// Network interface.
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    pub interface: String,
    /// Interface RX queue to bind the AF_XDP socket to. aoe-bench uses this one queue only:
    /// AoE frames the NIC puts on another queue are never seen (steer them here with ethtool).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub queue: u32,
    /// XDP attach mode: auto, driver or skb.
    #[arg(long, default_value = "auto", value_parser = parse_xdp_mode, value_name = "MODE")]
    pub xdp_mode: XdpMode,
    /// Replace an XDP program already attached to the interface.
    #[arg(long)]
    pub replace_xdp: bool,
    /// Pin the packet thread to this CPU.
    #[arg(long, value_name = "CPU")]
    pub cpu: Option<usize>,
    /// When idle, spin on the rings this long before waiting (`run`: see --wait; `echo`:
    /// sleeps in poll(2)).
    #[arg(long, default_value_t = 50, value_name = "US")]
    pub spin_us: u64,
}

fn parse_xdp_mode(s: &str) -> Result<XdpMode, String> {
    s.parse()
}

/// `aoe-bench discover`.
#[derive(Args, Debug)]
pub struct DiscoverArgs {
    #[command(flatten)]
    pub port: PortArgs,
    /// How long to wait for answers (to the query, then to IDENTIFY).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub timeout_ms: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The I/O pattern.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Uniformly random reads.
    Randread,
    /// Uniformly random writes.
    Randwrite,
    /// Random reads and writes, `--mix` percent reads.
    Randrw,
}

impl Rw {
    /// Whether any request is a write.
    pub fn writes(self) -> bool {
        matches!(self, Rw::Write | Rw::Randwrite | Rw::Randrw)
    }
    /// Whether LBAs are random.
    pub fn random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite | Rw::Randrw)
    }
    /// Name as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::Randread => "randread",
            Rw::Randwrite => "randwrite",
            Rw::Randrw => "randrw",
        }
    }
}

/// `aoe-bench run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub port: PortArgs,
    /// Target as eSHELF.SLOT (e.g. e1.0). Several (`-t e1.0 -t e1.1`, or `-t e1.0,e1.1`)
    /// are driven from this one thread, each with its own window of --qd, its own workload
    /// (seed --seed + its position) and its own report. With several interfaces (`-i a,b`:
    /// one socket and MAC each, so one process can be several initiators) the targets are
    /// dealt to them in order, as many each: `-i a,b -t e1.0,e1.1,e1.2,e1.3` drives e1.0 and
    /// e1.1 through a, e1.2 and e1.3 through b.
    #[arg(short = 't', long, value_parser = parse_target, value_name = "eS.L", required = true, value_delimiter = ',')]
    pub target: Vec<(u16, u8)>,
    /// I/O pattern.
    #[arg(long, value_enum, default_value_t = Rw::Randread)]
    pub rw: Rw,
    /// Percent reads for randrw.
    #[arg(long, default_value_t = 70, value_parser = clap::value_parser!(u8).range(0..=100), value_name = "PCT")]
    pub mix: u8,
    /// Sectors per request (default: the target's advertised maximum).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..), value_name = "SECTORS")]
    pub bs: Option<u8>,
    /// Outstanding requests (capped by the target's buffer count).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024), value_name = "N")]
    pub qd: u32,
    /// Stop issuing after this many seconds (default 10 unless --size is given).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub time: Option<f64>,
    /// Stop issuing after this many bytes (suffixes K, M, G, T: powers of 1024).
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    pub size: Option<u64>,
    /// Use only LBAs 0..N (default: the whole export).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub range_sectors: Option<u64>,
    /// Write self-checking sectors and check every sector read.
    #[arg(long)]
    pub verify: bool,
    /// Seed of the verify pattern and of the random LBAs.
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub seed: u64,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Smallest retransmission timeout, in ms.
    #[arg(long, default_value_t = 5.0, value_parser = parse_ms, value_name = "MS")]
    pub min_rto_ms: f64,
    /// Largest retransmission timeout (also the cap of the backoff), in ms.
    #[arg(long, default_value_t = 2000.0, value_parser = parse_ms, value_name = "MS")]
    pub max_rto_ms: f64,
    /// Fail when no request completes for this long, or one waits this long.
    #[arg(long, default_value_t = 10.0, value_parser = parse_secs, value_name = "SECS")]
    pub stall_secs: f64,
    /// How long to look for the target before starting.
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    pub discover_timeout_ms: u64,
    /// Never print the progress line (it is shown only when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// How to wait, after --spin-us, while requests are outstanding: `yield` keeps the
    /// thread runnable and gives the CPU to whatever else is runnable on it (a target
    /// sharing the core), `sleep` sleeps in poll(2) until the kernel wakes it.
    #[arg(long, value_enum, default_value_t = Wait::Yield)]
    pub wait: Wait,
}

/// How `run` waits for responses (with nothing outstanding it always sleeps in poll(2)).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Wait {
    /// sched_yield(2) between looks at the rings: never sleeps with requests in flight, so
    /// a response never waits for the generator's CPU to wake up (on a VM, to come out of
    /// halt) and the target's transmit never pays to wake the generator.
    Yield,
    /// Sleep in poll(2): the generator costs no CPU while it waits, but each response
    /// burst first wakes it (a cost charged to whoever transmits the burst).
    Sleep,
}

/// `aoe-bench echo`.
#[derive(Args, Debug)]
pub struct EchoArgs {
    #[command(flatten)]
    pub port: PortArgs,
    /// Shelf to answer as.
    #[arg(long, default_value_t = 0, value_parser = parse_shelf)]
    pub shelf: u16,
    /// Slot to answer as.
    #[arg(long, default_value_t = 0, value_parser = parse_slot)]
    pub slot: u8,
    /// Answer as this many exports: slots --slot to --slot + N - 1 of --shelf, each its own
    /// export state (a request for all shelves or slots is answered as the first).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=255), value_name = "N")]
    pub slots: u16,
    /// Capacity IDENTIFY reports, in sectors (default 2^31: 1 TiB).
    #[arg(long, default_value_t = 1 << 31, value_parser = clap::value_parser!(u64).range(1..=0xffff_ffff_ffff))]
    pub sectors: u64,
    /// Buffer count advertised in Query Config.
    #[arg(long, default_value_t = aoe::target::DEFAULT_BUFCNT, value_parser = clap::value_parser!(u16).range(2..))]
    pub bufcnt: u16,
    /// Cap on sectors per request advertised (default: what the MTU allows).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..))]
    pub scnt: Option<u8>,
    /// Initial config string.
    #[arg(long, default_value = "")]
    pub config_string: String,
    /// Exit after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub time: Option<f64>,
    /// Print the final counters as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Parses `e1.2` or `1.2` into a shelf and slot that a target may use.
pub fn parse_target(s: &str) -> Result<(u16, u8), String> {
    let t = s.strip_prefix('e').unwrap_or(s);
    let (a, b) = t
        .split_once('.')
        .ok_or_else(|| format!("`{s}` is not a target address: expected eSHELF.SLOT, e.g. e1.0"))?;
    Ok((parse_shelf(a)?, parse_slot(b)?))
}

fn parse_shelf(s: &str) -> Result<u16, String> {
    let v: u16 = s
        .parse()
        .map_err(|_| format!("shelf `{s}` is not a number from 0 to 65534"))?;
    if v == aoe::wire::SHELF_ANY || v == aoe::wire::SHELF_BAD_DIP {
        return Err(format!(
            "shelf {v} is reserved (0xffff is the broadcast shelf, 0x0fff is refused by Linux)"
        ));
    }
    Ok(v)
}

fn parse_slot(s: &str) -> Result<u8, String> {
    let v: u8 = s
        .parse()
        .map_err(|_| format!("slot `{s}` is not a number from 0 to 254"))?;
    if v == aoe::wire::SLOT_ANY {
        return Err("slot 255 is the broadcast slot".into());
    }
    Ok(v)
}

/// Parses a byte count with an optional K/M/G/T suffix (powers of 1024; `KiB`, `KB`, `k` too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4096, 64M, 10G)"))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "`{s}`: unknown size suffix `{suffix}` (use K, M, G or T)"
            ))
        }
    };
    let v = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if v == 0 {
        return Err("size must be > 0".into());
    }
    Ok(v)
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v > 0.0 && v.is_finite() && v < 1e7) {
        return Err(format!("{v} s is out of range (0 < secs < 10^7)"));
    }
    Ok(v)
}

fn parse_ms(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of milliseconds"))?;
    if !(0.01..=600_000.0).contains(&v) {
        return Err(format!("{v} ms is out of range (0.01 to 600000)"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("aoe-bench").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_with_everything() {
        let cli = parse(&[
            "run",
            "-i",
            "veth0",
            "--target",
            "e1.2",
            "--rw",
            "randrw",
            "--mix",
            "70",
            "--bs",
            "2",
            "--qd",
            "64",
            "--time",
            "5",
            "--size",
            "1G",
            "--range-sectors",
            "4096",
            "--verify",
            "--seed",
            "7",
            "--json",
            "--queue",
            "1",
            "--xdp-mode",
            "skb",
            "--cpu",
            "0",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.port.interface, "veth0");
        assert_eq!(
            (r.port.queue, r.port.xdp_mode, r.port.cpu),
            (1, XdpMode::Skb, Some(0))
        );
        assert_eq!(r.target, vec![(1, 2)]);
        assert_eq!((r.rw, r.mix, r.bs, r.qd), (Rw::Randrw, 70, Some(2), 64));
        assert_eq!((r.time, r.size), (Some(5.0), Some(1 << 30)));
        assert_eq!(
            (r.range_sectors, r.verify, r.seed, r.json),
            (Some(4096), true, 7, true)
        );
    }

    #[test]
    fn run_defaults() {
        let Command::Run(r) = parse(&["run", "-i", "eth0", "-t", "3.4"]).unwrap().command else {
            panic!("not run")
        };
        assert_eq!(r.target, vec![(3, 4)]);
        let Command::Run(r) = parse(&["run", "-i", "e", "-t", "e1.0,e1.1", "-t", "2.3"])
            .unwrap()
            .command
        else {
            panic!("not run")
        };
        assert_eq!(r.target, vec![(1, 0), (1, 1), (2, 3)]);
        assert_eq!(
            (r.rw, r.mix, r.bs, r.qd, r.time, r.size),
            (Rw::Randread, 70, None, 16, None, None)
        );
        assert_eq!((r.verify, r.seed, r.json), (false, 1, false));
        assert_eq!(
            (r.min_rto_ms, r.max_rto_ms, r.stall_secs),
            (5.0, 2000.0, 10.0)
        );
        assert_eq!(r.port.xdp_mode, XdpMode::Auto);
        assert!(!r.port.replace_xdp);
    }

    #[test]
    fn run_rejects_bad_values() {
        for bad in [
            &["run", "-i", "e", "-t", "e1.2", "--mix", "101"][..],
            &["run", "-i", "e", "-t", "e1.2", "--bs", "0"],
            &["run", "-i", "e", "-t", "e1.2", "--qd", "0"],
            &["run", "-i", "e", "-t", "e1.2", "--qd", "2000"],
            &["run", "-i", "e", "-t", "e1.2", "--rw", "trim"],
            &["run", "-i", "e", "-t", "e1.2", "--time", "0"],
            &["run", "-i", "e", "-t", "e1.2", "--size", "12X"],
            &["run", "-i", "e", "-t", "e65535.0"],
            &["run", "-i", "e", "-t", "e1.255"],
            &["run", "-i", "e", "-t", "disk"],
            &["run", "-i", "e"],
            &["run", "-t", "e1.2"],
            &["run", "-i", "e", "-t", "e1.2", "--xdp-mode", "fast"],
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn discover_and_echo() {
        let Command::Discover(d) =
            parse(&["discover", "-i", "eth1", "--timeout-ms", "300", "--json"])
                .unwrap()
                .command
        else {
            panic!("not discover")
        };
        assert_eq!(
            (d.port.interface.as_str(), d.timeout_ms, d.json),
            ("eth1", 300, true)
        );
        let Command::Echo(e) = parse(&["echo", "-i", "eth1", "--shelf", "7", "--slot", "3"])
            .unwrap()
            .command
        else {
            panic!("not echo")
        };
        assert_eq!(
            (e.shelf, e.slot, e.bufcnt, e.sectors, e.scnt),
            (7, 3, 64, 1 << 31, None)
        );
        assert_eq!(e.slots, 1);
        assert!(parse(&["echo", "-i", "x", "--bufcnt", "1"]).is_err());
        assert!(parse(&["echo", "-i", "x", "--slots", "0"]).is_err());
        assert!(parse(&["echo", "-i", "x", "--shelf", "4095"]).is_err());
    }

    #[test]
    fn man_pages_and_completions() {
        let dir = std::env::temp_dir().join(format!("aoe-bench-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pages = write_man_pages(&dir).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "aoe-bench.1",
            "aoe-bench-run.1",
            "aoe-bench-discover.1",
            "aoe-bench-echo.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        let main = std::fs::read_to_string(dir.join("aoe-bench.1")).unwrap();
        assert!(main.contains(".TH aoe-bench 1"), "{main}");
        assert!(main.contains("discover"), "subcommands listed");
        let run = std::fs::read_to_string(dir.join("aoe-bench-run.1")).unwrap();
        assert!(run.contains("\\-\\-qd"), "options of run documented");
        std::fs::remove_dir_all(&dir).unwrap();

        for (shell, needle) in [
            (Shell::Bash, "complete -F"),
            (Shell::Zsh, "#compdef aoe-bench"),
            (Shell::Fish, "complete -c aoe-bench"),
        ] {
            let mut out = Vec::new();
            write_completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains(needle) && text.contains("randread"),
                "{shell:?}"
            );
        }
        let Command::Completions(c) = parse(&["completions", "zsh"]).unwrap().command else {
            panic!("not completions")
        };
        assert_eq!(c.shell, Shell::Zsh);
        assert!(parse(&["completions", "tcsh"]).is_err());
        let Command::Man(m) = parse(&["man", "/tmp/x"]).unwrap().command else {
            panic!("not man")
        };
        assert_eq!(m.dir, std::path::PathBuf::from("/tmp/x"));
    }

    #[test]
    fn sizes_and_targets() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert!(parse_size("0").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(parse_target("e0.0"), Ok((0, 0)));
        assert_eq!(parse_target("65534.254"), Ok((65534, 254)));
        assert!(parse_target("e4095.1").is_err());
        assert!(parse_target("e1").is_err());
        assert!(parse_target("e1.x").is_err());
    }
}
