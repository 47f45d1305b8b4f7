//! `cargo xtask lab up|down|status`: a network-namespace lab for benchmarks and manual testing.
//!
//! ```text
//!   netns xbl-t (target)                     netns xbl-i (initiator)
//!   +----------------------+   veth pair    +----------------------+
//!   | xbl-tv   xblade ...  |<-------------->| xbl-iv   aoe-bench   |
//!   +----------------------+                +----------------------+
//!   /dev/shm/xbl/ram.img   (--ram-mib N: RAM-backed, on tmpfs)
//!   target/lab/disk.img    (--disk-mib N: on the root filesystem, for O_DIRECT disk runs)
//!   /dev/loopN             (--loop: over disk.img, else ram.img; direct I/O, 512-byte sectors)
//! ```
//!
//! Both ends of the veth live in their own namespaces from the moment they are created and carry
//! no addresses; IPv6 is switched off on them so the link is silent. Nothing in the root namespace
//! changes, so lab traffic cannot leave the machine.
//!
//! `up` converges: it looks at what exists, plans the commands that turn it into what was asked
//! for, prints each command as it runs it, and records the result in `/run/xblade-lab/xbl.state`
//! (`/run` is cleared at boot, like namespaces and loop devices). Asking for what is already there
//! runs nothing. Asking for something different reconfigures in place (an MTU change is one
//! `ip link set`; a queue-count change recreates the veth; a size change recreates the image),
//! but refuses while processes run in the lab namespaces, since pulling a link or an image from
//! under a running xblade or aoe-bench would wreck the run: stop them or `lab down` first.
//!
//! `down` stops processes in the namespaces (SIGTERM, so xblade drains in-flight I/O and detaches
//! XDP; SIGKILL after 15 s), detaches loop devices over the lab images, deletes the namespaces
//! (and with them the veth) and removes the images and the state file. It finds things by the
//! state file and by the lab's fixed names, so it also cleans up after an `up` that failed half
//! way or a lost state file. With nothing there it does nothing.
//!
//! Other xtask code (`cargo xtask bench`) uses [`up`] and [`down`] directly.

use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::cmd::{from_argv, quote, shell_words, CommandExt as _};

const MIB: u64 = 1 << 20;
/// Where `up` records what it made (a tmpfs, cleared at boot like the namespaces).
const STATE_DIR: &str = "/run/xblade-lab";
/// AoE's smallest useful MTU (one 1024-byte request plus headers), as in `aoe::wire::MIN_MTU`.
const AOE_MIN_MTU: u32 = 1042;
/// How long `down` waits for processes to exit after SIGTERM (xblade drains in-flight I/O).
const TERM_GRACE: Duration = Duration::from_secs(15);

/// `cargo xtask lab up|down|status` (needs root: namespaces, veth, loop devices).
#[derive(Debug, clap::Args)]
#[command(arg_required_else_help = true)]
pub struct Args {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Create (or reconfigure to) the lab: netns xbl-t and xbl-i joined by veth xbl-tv/xbl-iv
    Up(LabConfig),
    /// Stop processes in the lab, remove loop devices, namespaces, images and state
    Down,
    /// Show what exists
    Status,
}

/// What `lab up` builds.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct LabConfig {
    /// RX and TX queues of each veth end (`numrxqueues`/`numtxqueues`), 1 to 64
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub queues: u32,
    /// MTU of both veth ends
    #[arg(long, value_name = "M", default_value_t = 1500)]
    pub mtu: u32,
    /// RAM-backed image /dev/shm/xbl/ram.img of N MiB, on tmpfs (0: none)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub ram_mib: u64,
    /// Image target/lab/disk.img of N MiB on the root filesystem (0: none)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub disk_mib: u64,
    /// A loop device (direct I/O, 512-byte sectors) over disk.img, else ram.img
    #[arg(long = "loop")]
    pub loop_device: bool,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            queues: 1,
            mtu: 1500,
            ram_mib: 0,
            disk_mib: 0,
            loop_device: false,
        }
    }
}

impl LabConfig {
    /// Checks ranges and combinations.
    pub fn validate(&self) -> Result<()> {
        if !(1..=64).contains(&self.queues) {
            bail!("--queues {}: expected 1 to 64", self.queues);
        }
        if !(68..=65535).contains(&self.mtu) {
            bail!("--mtu {}: a veth MTU is 68 to 65535", self.mtu);
        }
        for (flag, mib) in [("--ram-mib", self.ram_mib), ("--disk-mib", self.disk_mib)] {
            if mib > (1 << 30) {
                bail!("{flag} {mib}: too large");
            }
        }
        if self.loop_device && self.ram_mib == 0 && self.disk_mib == 0 {
            bail!("--loop needs an image to loop over: add --disk-mib N (or --ram-mib N)");
        }
        Ok(())
    }

    /// The options that give this configuration, as typed after `lab up`.
    pub fn to_args(&self) -> String {
        let mut s = format!("--queues {} --mtu {}", self.queues, self.mtu);
        if self.ram_mib > 0 {
            let _ = write!(s, " --ram-mib {}", self.ram_mib);
        }
        if self.disk_mib > 0 {
            let _ = write!(s, " --disk-mib {}", self.disk_mib);
        }
        if self.loop_device {
            s.push_str(" --loop");
        }
        s
    }
}

/// A lab that is up: what to run things in and on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lab {
    /// The target's network namespace (run xblade here: `ip netns exec xbl-t xblade ...`).
    pub target_ns: String,
    /// The initiator's network namespace.
    pub init_ns: String,
    /// The target's veth end, in `target_ns`.
    pub target_if: String,
    /// The initiator's veth end, in `init_ns`.
    pub init_if: String,
    /// The RAM-backed image, if asked for.
    pub ram_image: Option<PathBuf>,
    /// The image on the root filesystem, if asked for.
    pub disk_image: Option<PathBuf>,
    /// The loop device, if asked for.
    pub loop_dev: Option<PathBuf>,
}

/// `cargo xtask lab ...`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        LabCommand::Up(cfg) => {
            let lab = up(&cfg)?;
            print_lab(&lab, &cfg);
            Ok(())
        }
        LabCommand::Down => down(),
        LabCommand::Status => {
            print!("{}", status()?);
            Ok(())
        }
    }
}

/// Brings the lab up as `cfg` asks (idempotent; reconfigures a lab that differs). Prints each
/// command it runs.
pub fn up(cfg: &LabConfig) -> Result<Lab> {
    up_in(&Layout::standard(), cfg).map(|(lab, _)| lab)
}

/// Removes everything the lab made; does nothing if nothing is there. Prints each command.
pub fn down() -> Result<()> {
    down_in(&Layout::standard()).map(drop)
}

/// A report of what exists.
pub fn status() -> Result<String> {
    status_in(&Layout::standard())
}

fn print_lab(lab: &Lab, cfg: &LabConfig) {
    println!(
        "lab is up: target netns {} (veth {}), initiator netns {} (veth {}), {} queue(s), MTU {}",
        lab.target_ns, lab.target_if, lab.init_ns, lab.init_if, cfg.queues, cfg.mtu
    );
    let mut store = None;
    for (what, path) in [
        ("RAM image", &lab.ram_image),
        ("disk image", &lab.disk_image),
        ("loop device", &lab.loop_dev),
    ] {
        if let Some(path) = path {
            println!("  {what}: {}", path.display());
            store = Some(path);
        }
    }
    if cfg.mtu < AOE_MIN_MTU {
        println!(
            "  note: MTU {} is below AoE's minimum of {AOE_MIN_MTU}: xblade will refuse it",
            cfg.mtu
        );
    }
    let store = store.map_or_else(|| "<backing file>".to_owned(), |p| p.display().to_string());
    println!(
        "serve an export:   ip netns exec {} xblade 1 0 {} {store}",
        lab.target_ns, lab.target_if
    );
    println!(
        "initiator side:    ip netns exec {} <command> ... {}",
        lab.init_ns, lab.init_if
    );
    println!("tear it down:      cargo xtask lab down");
}

// ------------------------------------------------------------------------------------------------
// Names and state.

/// Names and paths of one lab. The real lab uses [`Layout::standard`]; the tests use their own
/// so they never touch a lab someone is using.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Layout {
    target_ns: String,
    init_ns: String,
    target_if: String,
    init_if: String,
    ram_image: PathBuf,
    disk_image: PathBuf,
    state_file: PathBuf,
}

impl Layout {
    fn standard() -> Layout {
        Layout::named("xbl", &crate::project_root().join("target").join("lab"))
    }

    /// `prefix` must be at most 12 bytes (interface names are at most 15).
    fn named(prefix: &str, disk_dir: &Path) -> Layout {
        Layout {
            target_ns: format!("{prefix}-t"),
            init_ns: format!("{prefix}-i"),
            target_if: format!("{prefix}-tv"),
            init_if: format!("{prefix}-iv"),
            ram_image: PathBuf::from(format!("/dev/shm/{prefix}/ram.img")),
            disk_image: disk_dir.join("disk.img"),
            state_file: PathBuf::from(format!("{STATE_DIR}/{prefix}.state")),
        }
    }
}

/// What the state file records: the configuration and what was made for it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    config: LabConfig,
    lab: Lab,
}

const STATE_HEADER: &str =
    "# xblade lab state: written by `cargo xtask lab up`, read by `lab down` and `lab status`.\n";

impl State {
    fn to_text(&self) -> String {
        let opt = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let (c, l) = (&self.config, &self.lab);
        format!(
            "{STATE_HEADER}queues = {}\nmtu = {}\nram_mib = {}\ndisk_mib = {}\nloop = {}\n\
             target_ns = {}\ninit_ns = {}\ntarget_if = {}\ninit_if = {}\n\
             ram_image = {}\ndisk_image = {}\nloop_dev = {}\n",
            c.queues,
            c.mtu,
            c.ram_mib,
            c.disk_mib,
            c.loop_device,
            l.target_ns,
            l.init_ns,
            l.target_if,
            l.init_if,
            opt(&l.ram_image),
            opt(&l.disk_image),
            opt(&l.loop_dev),
        )
    }

    fn parse(text: &str) -> Result<State> {
        let mut map = std::collections::BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .with_context(|| format!("line {}: expected `key = value`", n + 1))?;
            map.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        let mut take = |key: &str| {
            map.remove(key)
                .with_context(|| format!("`{key}` is missing"))
        };
        let num = |key: &str, v: String| {
            v.parse::<u64>()
                .with_context(|| format!("`{key}` = {v:?}: not a number"))
        };
        let path = |v: String| (!v.is_empty()).then(|| PathBuf::from(v));
        let config = LabConfig {
            queues: u32::try_from(num("queues", take("queues")?)?)?,
            mtu: u32::try_from(num("mtu", take("mtu")?)?)?,
            ram_mib: num("ram_mib", take("ram_mib")?)?,
            disk_mib: num("disk_mib", take("disk_mib")?)?,
            loop_device: match take("loop")?.as_str() {
                "true" => true,
                "false" => false,
                v => bail!("`loop` = {v:?}: expected true or false"),
            },
        };
        let lab = Lab {
            target_ns: take("target_ns")?,
            init_ns: take("init_ns")?,
            target_if: take("target_if")?,
            init_if: take("init_if")?,
            ram_image: path(take("ram_image")?),
            disk_image: path(take("disk_image")?),
            loop_dev: path(take("loop_dev")?),
        };
        if let Some(key) = map.keys().next() {
            bail!("unknown key `{key}`");
        }
        Ok(State { config, lab })
    }

    fn load(path: &Path) -> Result<Option<State>> {
        match fs::read_to_string(path) {
            Ok(text) => State::parse(&text)
                .map(Some)
                .with_context(|| format!("{}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Looking at what exists.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LinkInfo {
    /// Administratively up (`ip link set up`).
    admin_up: bool,
    /// Operational state (`UP`, `DOWN`, `LOWERLAYERDOWN`, ...).
    oper: String,
    mtu: u32,
    rx_queues: u32,
    tx_queues: u32,
    /// `ip`'s attach word (`xdp` = driver, `xdpgeneric` = skb, ...) and the program.
    xdp: Option<String>,
    /// The namespace of the veth peer, when `ip` can name it.
    peer_ns: Option<String>,
}

/// Parses one line of `ip -d -o link show dev DEV`.
fn parse_link(line: &str) -> Option<LinkInfo> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    let flags = line.split_once('<')?.1.split_once('>')?.0;
    let mut info = LinkInfo {
        admin_up: flags.split(',').any(|f| f == "UP"),
        oper: after("state").unwrap_or("?").to_owned(),
        mtu: after("mtu")?.parse().ok()?,
        rx_queues: after("numrxqueues")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        tx_queues: after("numtxqueues")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        xdp: None,
        peer_ns: after("link-netns").map(str::to_owned),
    };
    let mode = words
        .iter()
        .find(|w| matches!(**w, "xdp" | "xdpgeneric" | "xdpoffload" | "xdpmulti"));
    if let Some(mode) = mode {
        let mode = match *mode {
            "xdp" => "driver",
            "xdpgeneric" => "skb (generic)",
            "xdpoffload" => "offload",
            _ => "several modes",
        };
        let prog = match (after("id"), after("name")) {
            (Some(id), Some(name)) if line.contains("prog/xdp") => {
                format!(", program {name} id {id}")
            }
            _ => String::new(),
        };
        info.xdp = Some(format!("{mode}{prog}"));
    }
    Some(info)
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileInfo {
    bytes: u64,
    allocated: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct LoopInfo {
    dev: PathBuf,
    backing: PathBuf,
    direct_io: bool,
    sector: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Proc {
    pid: u32,
    ns: String,
    cmdline: String,
}

#[derive(Debug)]
struct Observed {
    target_ns: bool,
    init_ns: bool,
    target_link: Option<LinkInfo>,
    init_link: Option<LinkInfo>,
    /// `disable_ipv6` of (target, initiator) end; `None`: unknown or no IPv6 in the kernel.
    ipv6_off: (Option<bool>, Option<bool>),
    ram: Option<FileInfo>,
    disk: Option<FileInfo>,
    /// Loop devices over any of the lab's images (the layout's and the state file's).
    loops: Vec<LoopInfo>,
    procs: Vec<Proc>,
    state: Option<State>,
}

impl Observed {
    fn look(layout: &Layout) -> Result<Observed> {
        // A damaged state file must not stop `down` from cleaning up: the fixed names suffice.
        let state = State::load(&layout.state_file).unwrap_or_else(|e| {
            println!("warning: ignoring the lab state file: {e:#}");
            None
        });
        let namespaces = netns_list();
        let has = |ns: &str| namespaces.iter().any(|n| n == ns);
        let (target_ns, init_ns) = (has(&layout.target_ns), has(&layout.init_ns));
        let link = |present: bool, ns: &str, dev: &str| {
            present
                .then(|| quiet(&["ip", "-n", ns, "-d", "-o", "link", "show", "dev", dev]))
                .flatten()
        };
        let target_link =
            link(target_ns, &layout.target_ns, &layout.target_if).and_then(|l| parse_link(&l));
        let init_link =
            link(init_ns, &layout.init_ns, &layout.init_if).and_then(|l| parse_link(&l));
        let ipv6 = |link: &Option<LinkInfo>, ns: &str, dev: &str| {
            link.as_ref()?;
            let key = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
            quiet(&["ip", "netns", "exec", ns, "cat", &key]).map(|v| v.trim() == "1")
        };
        let ipv6_off = (
            ipv6(&target_link, &layout.target_ns, &layout.target_if),
            ipv6(&init_link, &layout.init_ns, &layout.init_if),
        );
        let mut procs = Vec::new();
        for (present, ns) in [(target_ns, &layout.target_ns), (init_ns, &layout.init_ns)] {
            if present {
                procs.extend(netns_pids(ns));
            }
        }
        let images = images(layout, state.as_ref());
        Ok(Observed {
            target_ns,
            init_ns,
            target_link,
            init_link,
            ipv6_off,
            ram: file_info(&layout.ram_image),
            disk: file_info(&layout.disk_image),
            loops: loops_over(&images),
            procs,
            state,
        })
    }

    fn nothing(&self) -> bool {
        !self.target_ns
            && !self.init_ns
            && self.ram.is_none()
            && self.disk.is_none()
            && self.loops.is_empty()
            && self.state.is_none()
    }
}

/// The lab's image paths: the layout's, plus any other the state file names.
fn images(layout: &Layout, state: Option<&State>) -> Vec<PathBuf> {
    let mut out = vec![layout.ram_image.clone(), layout.disk_image.clone()];
    if let Some(s) = state {
        for p in [&s.lab.ram_image, &s.lab.disk_image].into_iter().flatten() {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
    }
    out
}

fn file_info(path: &Path) -> Option<FileInfo> {
    let m = fs::metadata(path).ok()?;
    m.is_file().then(|| FileInfo {
        bytes: m.len(),
        allocated: m.blocks() * 512,
    })
}

fn netns_list() -> Vec<String> {
    quiet(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn netns_pids(ns: &str) -> Vec<Proc> {
    quiet(&["ip", "netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|pid| alive(*pid))
        .map(|pid| Proc {
            pid,
            ns: ns.to_owned(),
            cmdline: cmdline(pid),
        })
        .collect()
}

fn cmdline(pid: u32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    if words.is_empty() {
        "?".into()
    } else {
        words.join(" ")
    }
}

/// Whether `pid` exists and has not exited (a zombie has).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold ')'.
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Loop devices whose backing file is one of `files`.
fn loops_over(files: &[PathBuf]) -> Vec<LoopInfo> {
    let Some(list) = quiet(&[
        "losetup",
        "--list",
        "--noheadings",
        "--raw",
        "--output",
        "NAME,DIO,LOG-SEC,BACK-FILE",
    ]) else {
        return Vec::new();
    };
    list.lines()
        .filter_map(parse_losetup_line)
        .filter(|l| files.contains(&l.backing))
        .collect()
}

/// One line of `losetup --list --noheadings --raw --output NAME,DIO,LOG-SEC,BACK-FILE`.
fn parse_losetup_line(line: &str) -> Option<LoopInfo> {
    let mut it = line.splitn(4, ' ');
    let (dev, dio, sector, backing) = (it.next()?, it.next()?, it.next()?, it.next()?);
    // --raw escapes blanks as \x20; a backing file removed from under the loop gets " (deleted)".
    let backing = backing.replace("\\x20", " ");
    let backing = backing.strip_suffix(" (deleted)").unwrap_or(&backing);
    Some(LoopInfo {
        dev: PathBuf::from(dev),
        backing: PathBuf::from(backing),
        direct_io: dio == "1",
        sector: sector.parse().unwrap_or(0),
    })
}

// ------------------------------------------------------------------------------------------------
// Plans and their execution.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    /// Run a command.
    Run(Vec<String>),
    /// `ip -n NS link del DEV`, if DEV still exists (deleting one veth end deletes both).
    DelLink {
        ns: String,
        dev: String,
    },
    /// `losetup --find --show ...` over the file.
    LoopAttach(PathBuf),
    MkDir(PathBuf),
    Remove(PathBuf),
    /// `rmdir`, if the directory exists and is empty.
    RmDir(PathBuf),
    /// SIGTERM, wait, then SIGKILL what is left.
    Stop(Vec<Proc>),
}

impl Op {
    fn run(argv: &[&str]) -> Op {
        Op::Run(argv.iter().map(|s| (*s).to_owned()).collect())
    }

    /// The command, as a person would type it.
    fn describe(&self) -> String {
        match self {
            Op::Run(argv) => shell_words(argv),
            Op::DelLink { ns, dev } => format!("ip -n {ns} link del {dev}"),
            Op::LoopAttach(file) => {
                format!(
                    "losetup --find --show --direct-io=on --sector-size 512 {}",
                    quote(&file.to_string_lossy())
                )
            }
            Op::MkDir(dir) => format!("mkdir -p {}", quote(&dir.to_string_lossy())),
            Op::Remove(file) => format!("rm -f {}", quote(&file.to_string_lossy())),
            Op::RmDir(dir) => format!("rmdir {}", quote(&dir.to_string_lossy())),
            Op::Stop(procs) => {
                let pids: Vec<String> = procs.iter().map(|p| p.pid.to_string()).collect();
                let what: Vec<String> = procs
                    .iter()
                    .map(|p| format!("{} in {}: {}", p.pid, p.ns, p.cmdline))
                    .collect();
                format!("kill -TERM {}   # {}", pids.join(" "), what.join("; "))
            }
        }
    }
}

#[derive(Debug, Default)]
struct Plan {
    steps: Vec<Op>,
    /// Whether a step would disturb something in use (a link, an image, a loop device).
    disruptive: bool,
}

impl Plan {
    fn add(&mut self, op: Op) {
        self.steps.push(op);
    }
    fn add_disruptive(&mut self, op: Op) {
        self.disruptive = true;
        self.steps.push(op);
    }
}

/// The steps that turn `obs` into the lab `cfg` asks for.
fn plan_up(layout: &Layout, cfg: &LabConfig, obs: &Observed) -> Plan {
    let mut plan = Plan::default();
    let l = layout;
    for (present, ns) in [(obs.target_ns, &l.target_ns), (obs.init_ns, &l.init_ns)] {
        if !present {
            plan.add(Op::run(&["ip", "netns", "add", ns]));
        }
    }

    // The veth pair: keep it if both ends exist with the queue count asked for.
    let fits = |link: &LinkInfo, peer_ns: &str| {
        link.rx_queues == cfg.queues
            && link.tx_queues == cfg.queues
            && link.peer_ns.as_deref().is_none_or(|p| p == peer_ns)
    };
    let keep_veth = match (&obs.target_link, &obs.init_link) {
        (Some(t), Some(i)) => fits(t, &l.init_ns) && fits(i, &l.target_ns),
        _ => false,
    };
    if !keep_veth {
        if obs.target_link.is_some() {
            plan.add_disruptive(Op::DelLink {
                ns: l.target_ns.clone(),
                dev: l.target_if.clone(),
            });
        }
        if obs.init_link.is_some() {
            plan.add_disruptive(Op::DelLink {
                ns: l.init_ns.clone(),
                dev: l.init_if.clone(),
            });
        }
        let q = cfg.queues.to_string();
        plan.add(Op::run(&[
            "ip",
            "link",
            "add",
            &l.target_if,
            "netns",
            &l.target_ns,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &l.init_if,
            "netns",
            &l.init_ns,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
        ]));
    }
    let ipv6 = Path::new("/proc/sys/net/ipv6").exists();
    let mtu = cfg.mtu.to_string();
    for (ns, dev, link, ipv6_off) in [
        (&l.target_ns, &l.target_if, &obs.target_link, obs.ipv6_off.0),
        (&l.init_ns, &l.init_if, &obs.init_link, obs.ipv6_off.1),
    ] {
        let link = if keep_veth { link.as_ref() } else { None };
        // Before the link goes up, so it never sends IPv6 neighbour discovery or MLD.
        if ipv6 && (link.is_none() || ipv6_off == Some(false)) {
            let key = format!("net.ipv6.conf.{dev}.disable_ipv6=1");
            plan.add(Op::run(&[
                "ip", "netns", "exec", ns, "sysctl", "-q", "-w", &key,
            ]));
        }
        let mut set = vec!["ip", "-n", ns, "link", "set", "dev", dev];
        let mtu_change = link.is_none_or(|k| k.mtu != cfg.mtu);
        if mtu_change {
            set.extend(["mtu", &mtu]);
        }
        if link.is_none_or(|k| !k.admin_up) {
            set.push("up");
        }
        if set.len() > 7 {
            if mtu_change && link.is_some() {
                plan.add_disruptive(Op::run(&set));
            } else {
                plan.add(Op::run(&set));
            }
        }
    }

    // Images: keep one of the right size, else (re)create it; remove one not asked for.
    let ram = (cfg.ram_mib * MIB, &l.ram_image, &obs.ram);
    let disk = (cfg.disk_mib * MIB, &l.disk_image, &obs.disk);
    let keeps = |(want, _, have): (u64, &PathBuf, &Option<FileInfo>)| {
        want > 0 && have.as_ref().is_some_and(|h| h.bytes == want)
    };
    let loop_file = match (cfg.loop_device, cfg.disk_mib > 0) {
        (false, _) => None,
        (true, true) => Some(&l.disk_image),
        (true, false) => Some(&l.ram_image),
    };
    let loop_file_kept = loop_file.is_some_and(|f| {
        if *f == l.disk_image {
            keeps(disk)
        } else {
            keeps(ram)
        }
    });
    // Keep one good loop over the wanted file; detach every other loop over a lab image.
    let kept_loop = obs
        .loops
        .iter()
        .find(|lo| {
            loop_file_kept && Some(&lo.backing) == loop_file && lo.direct_io && lo.sector == 512
        })
        .map(|lo| lo.dev.clone());
    for lo in &obs.loops {
        if Some(&lo.dev) != kept_loop.as_ref() {
            plan.add_disruptive(Op::run(&["losetup", "--detach", &lo.dev.to_string_lossy()]));
        }
    }
    for image in [ram, disk] {
        let (want, path, have) = image;
        if have.is_some() && !keeps(image) {
            plan.add_disruptive(Op::Remove(path.clone()));
        }
        if want > 0 && !keeps(image) {
            let dir = path.parent().expect("image paths have a directory");
            if !dir.is_dir() {
                plan.add(Op::MkDir(dir.to_owned()));
            }
            let p = path.to_string_lossy();
            if *path == l.ram_image {
                // tmpfs: allocate the pages now, so the RAM is there and reads are real reads.
                plan.add(Op::run(&["fallocate", "--length", &want.to_string(), &p]));
            } else {
                // Written, not sparse or fallocated: O_DIRECT reads of unwritten extents would
                // return zeros without touching the disk.
                let of = format!("of={p}");
                let count = format!("count={}", want / MIB);
                plan.add(Op::run(&[
                    "dd",
                    "if=/dev/zero",
                    &of,
                    "bs=1M",
                    &count,
                    "oflag=direct",
                    "conv=fsync",
                    "status=none",
                ]));
            }
        }
    }
    if let (Some(file), None) = (loop_file, &kept_loop) {
        plan.add(Op::LoopAttach(file.clone()));
    }
    plan
}

/// The steps that remove everything.
fn plan_down(layout: &Layout, obs: &Observed) -> Plan {
    let mut plan = Plan::default();
    if !obs.procs.is_empty() {
        plan.add_disruptive(Op::Stop(obs.procs.clone()));
    }
    for lo in &obs.loops {
        plan.add_disruptive(Op::run(&["losetup", "--detach", &lo.dev.to_string_lossy()]));
    }
    for (present, ns) in [
        (obs.target_ns, &layout.target_ns),
        (obs.init_ns, &layout.init_ns),
    ] {
        if present {
            plan.add_disruptive(Op::run(&["ip", "netns", "delete", ns]));
        }
    }
    let images = images(layout, obs.state.as_ref());
    for image in &images {
        if file_info(image).is_some() {
            plan.add_disruptive(Op::Remove(image.clone()));
        }
    }
    // Directories the lab made, if nothing but lab files is in them.
    let mut dirs: Vec<PathBuf> = images
        .iter()
        .filter_map(|i| i.parent().map(Path::to_owned))
        .collect();
    dirs.push(PathBuf::from(STATE_DIR));
    dirs.sort();
    dirs.dedup();
    if obs.state.is_some() || layout.state_file.exists() {
        plan.add(Op::Remove(layout.state_file.clone()));
    }
    for dir in dirs {
        let only_ours = fs::read_dir(&dir).ok().is_some_and(|entries| {
            entries
                .flatten()
                .all(|e| images.contains(&e.path()) || e.path() == layout.state_file)
        });
        if only_ours {
            plan.add(Op::RmDir(dir));
        }
    }
    plan
}

/// Runs the plan, printing each step. Returns the steps as printed and the loop device attached.
fn execute(plan: &Plan) -> Result<(Vec<String>, Option<PathBuf>)> {
    let mut done = Vec::new();
    let mut attached = None;
    for op in &plan.steps {
        let line = op.describe();
        println!("+ {line}");
        done.push(line);
        match op {
            Op::Run(argv) => {
                checked(argv)?;
            }
            Op::DelLink { ns, dev } => {
                if quiet(&["ip", "-n", ns, "link", "show", "dev", dev]).is_some() {
                    checked(&["ip", "-n", ns, "link", "del", dev])?;
                } else {
                    println!("  ({dev} went with its peer)");
                }
            }
            Op::LoopAttach(file) => {
                let f = file.to_string_lossy().into_owned();
                let dev = checked(&[
                    "losetup",
                    "--find",
                    "--show",
                    "--direct-io=on",
                    "--sector-size",
                    "512",
                    &f,
                ])?;
                let dev = PathBuf::from(dev.trim());
                match loops_over(std::slice::from_ref(file)).iter().find(|l| l.dev == dev) {
                    Some(l) if !l.direct_io => println!(
                        "  warning: {} fell back to buffered I/O: the filesystem under {f} refused direct I/O \
                         with 512-byte sectors",
                        dev.display()
                    ),
                    _ => println!("  -> {}", dev.display()),
                }
                attached = Some(dev);
            }
            Op::MkDir(dir) => {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?
            }
            Op::Remove(file) => match fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", file.display()));
                }
                _ => {}
            },
            Op::RmDir(dir) => {
                // Not an error if something new appeared in it meanwhile.
                let _ = fs::remove_dir(dir);
            }
            Op::Stop(procs) => stop(procs)?,
        }
    }
    Ok((done, attached))
}

/// SIGTERM the processes, give them [`TERM_GRACE`] to exit, then SIGKILL the rest.
fn stop(procs: &[Proc]) -> Result<()> {
    let pids = |ps: &[&Proc]| ps.iter().map(|p| p.pid.to_string()).collect::<Vec<_>>();
    let all: Vec<&Proc> = procs.iter().collect();
    let mut argv = vec!["kill".to_owned(), "-TERM".to_owned()];
    argv.extend(pids(&all));
    // A process may exit between listing and signalling: not an error.
    let _ = from_argv(&argv).read();
    for (signal, grace) in [("-KILL", TERM_GRACE), ("", Duration::from_secs(5))] {
        let deadline = Instant::now() + grace;
        let mut left: Vec<&Proc> = all.iter().copied().filter(|p| alive(p.pid)).collect();
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            left.retain(|p| alive(p.pid));
        }
        if left.is_empty() {
            return Ok(());
        }
        if signal.is_empty() {
            bail!(
                "processes {} did not exit after SIGKILL",
                pids(&left).join(" ")
            );
        }
        let mut argv = vec!["kill".to_owned(), signal.to_owned()];
        argv.extend(pids(&left));
        println!(
            "+ {}   # still running after {} s",
            shell_words(&argv),
            grace.as_secs()
        );
        let _ = from_argv(&argv).read();
    }
    Ok(())
}

fn up_in(layout: &Layout, cfg: &LabConfig) -> Result<(Lab, Vec<String>)> {
    cfg.validate()?;
    need_root("lab up")?;
    let obs = Observed::look(layout)?;
    let plan = plan_up(layout, cfg, &obs);
    if plan.disruptive && !obs.procs.is_empty() {
        let procs: Vec<String> = obs
            .procs
            .iter()
            .map(|p| format!("  {} (in {}): {}", p.pid, p.ns, p.cmdline))
            .collect();
        let steps: Vec<String> = plan
            .steps
            .iter()
            .map(|s| format!("  {}", s.describe()))
            .collect();
        let was = obs
            .state
            .as_ref()
            .map_or_else(|| "something else".to_owned(), |s| s.config.to_args());
        bail!(
            "the lab is up with `{was}` and in use; reconfiguring it to `{}` would pull links or images \
             from under these processes:\n{}\nStop them, or run `cargo xtask lab down` first (it stops them). \
             The change needs:\n{}",
            cfg.to_args(),
            procs.join("\n"),
            steps.join("\n")
        );
    }
    if plan.steps.is_empty() {
        println!("lab is already up with `{}`: nothing to do", cfg.to_args());
    } else {
        match &obs.state {
            Some(s) if s.config != *cfg => {
                println!(
                    "reconfiguring the lab from `{}` to `{}`",
                    s.config.to_args(),
                    cfg.to_args()
                )
            }
            _ => println!("bringing the lab up with `{}`", cfg.to_args()),
        }
    }
    let (mut done, attached) = execute(&plan)?;
    let kept_loop = || {
        let file = if cfg.disk_mib > 0 {
            &layout.disk_image
        } else {
            &layout.ram_image
        };
        loops_over(std::slice::from_ref(file))
            .into_iter()
            .next()
            .map(|l| l.dev)
    };
    let lab = Lab {
        target_ns: layout.target_ns.clone(),
        init_ns: layout.init_ns.clone(),
        target_if: layout.target_if.clone(),
        init_if: layout.init_if.clone(),
        ram_image: (cfg.ram_mib > 0).then(|| layout.ram_image.clone()),
        disk_image: (cfg.disk_mib > 0).then(|| layout.disk_image.clone()),
        loop_dev: if cfg.loop_device {
            attached.or_else(kept_loop)
        } else {
            None
        },
    };
    let state = State {
        config: cfg.clone(),
        lab: lab.clone(),
    };
    if obs.state.as_ref() != Some(&state) {
        let line = format!("record the lab in {}", layout.state_file.display());
        println!("+ {line}");
        done.push(line);
        let dir = layout
            .state_file
            .parent()
            .expect("the state file has a directory");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(&layout.state_file, state.to_text())
            .with_context(|| format!("writing {}", layout.state_file.display()))?;
    }
    Ok((lab, done))
}

fn down_in(layout: &Layout) -> Result<Vec<String>> {
    need_root("lab down")?;
    let obs = Observed::look(layout)?;
    let plan = plan_down(layout, &obs);
    if plan.steps.is_empty() {
        println!("lab is down: nothing to remove");
        return Ok(Vec::new());
    }
    println!("taking the lab down");
    let (done, _) = execute(&plan)?;
    println!("lab is down");
    Ok(done)
}

fn status_in(layout: &Layout) -> Result<String> {
    need_root("lab status")?;
    let obs = Observed::look(layout)?;
    let mut s = String::new();
    let l = layout;
    if obs.nothing() {
        let _ = writeln!(
            s,
            "lab is down: no namespaces {} / {}, no images, no loop devices, no state file",
            l.target_ns, l.init_ns
        );
        return Ok(s);
    }
    match &obs.state {
        Some(st) => {
            let _ = writeln!(
                s,
                "lab state ({}): up with `{}`",
                l.state_file.display(),
                st.config.to_args()
            );
        }
        None => {
            let _ = writeln!(
                s,
                "lab state: no state file (left over from a failed `up`?): `lab down` cleans up"
            );
        }
    }
    let _ = writeln!(s, "namespaces:");
    for (present, ns, role) in [
        (obs.target_ns, &l.target_ns, "target"),
        (obs.init_ns, &l.init_ns, "initiator"),
    ] {
        let _ = writeln!(
            s,
            "  {ns:<10} {role:<10} {}",
            if present { "present" } else { "absent" }
        );
    }
    let _ = writeln!(s, "links:");
    for (ns, dev, link, ipv6_off) in [
        (&l.target_ns, &l.target_if, &obs.target_link, obs.ipv6_off.0),
        (&l.init_ns, &l.init_if, &obs.init_link, obs.ipv6_off.1),
    ] {
        let name = format!("{ns}/{dev}");
        match link {
            None => {
                let _ = writeln!(s, "  {name:<16} absent");
            }
            Some(k) => {
                let _ = writeln!(
                    s,
                    "  {name:<16} {} (oper {}), mtu {}, queues rx {} tx {}, ipv6 {}, xdp: {}",
                    if k.admin_up { "up" } else { "down" },
                    k.oper,
                    k.mtu,
                    k.rx_queues,
                    k.tx_queues,
                    match ipv6_off {
                        Some(true) => "off",
                        Some(false) => "ON",
                        None => "n/a",
                    },
                    k.xdp.as_deref().unwrap_or("none"),
                );
            }
        }
    }
    let _ = writeln!(s, "images:");
    for (path, info, fs) in [
        (&l.ram_image, &obs.ram, "tmpfs"),
        (&l.disk_image, &obs.disk, "root filesystem"),
    ] {
        match info {
            None => {
                let _ = writeln!(s, "  {:<40} absent", path.display());
            }
            Some(f) => {
                let _ = writeln!(
                    s,
                    "  {:<40} {} MiB ({} MiB allocated, {fs})",
                    path.display(),
                    f.bytes / MIB,
                    f.allocated / MIB
                );
            }
        }
    }
    let _ = writeln!(s, "loop devices:");
    if obs.loops.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for lo in &obs.loops {
        let _ = writeln!(
            s,
            "  {:<12} over {}, direct I/O {}, {}-byte sectors",
            lo.dev.display(),
            lo.backing.display(),
            if lo.direct_io { "on" } else { "OFF" },
            lo.sector
        );
    }
    let _ = writeln!(s, "processes:");
    if obs.procs.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for p in &obs.procs {
        let _ = writeln!(s, "  {:<8} in {:<8} {}", p.pid, p.ns, p.cmdline);
    }
    Ok(s)
}

// ------------------------------------------------------------------------------------------------
// Running commands.

fn need_root(what: &str) -> Result<()> {
    if !crate::test::is_root() {
        bail!(
            "`cargo xtask {what}` needs root (network namespaces, veth, loop devices): run \
             `sudo -E \"$(command -v cargo)\" xtask {what}`"
        );
    }
    Ok(())
}

/// Runs `argv`; its stdout on success, `None` on any failure (for looking at what exists).
fn quiet(argv: &[&str]) -> Option<String> {
    from_argv(argv).read().ok()
}

/// Runs `argv`; its stdout, or an error naming the command, its status and its stderr.
fn checked<S: AsRef<std::ffi::OsStr>>(argv: &[S]) -> Result<String> {
    from_argv(argv).read()
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, process::Command};

    use super::*;

    /// `cargo xtask lab LINE`, parsed and checked as `run` would.
    fn parse(line: &str) -> Result<LabCommand> {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            lab: Args,
        }
        let argv = std::iter::once("lab").chain(line.split_whitespace());
        let command = Cli::try_parse_from(argv)?.lab.command;
        if let LabCommand::Up(cfg) = &command {
            cfg.validate()?;
        }
        Ok(command)
    }

    fn parse_up(line: &str) -> Result<LabConfig> {
        match parse(&format!("up {line}"))? {
            LabCommand::Up(cfg) => Ok(cfg),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_up_options() {
        assert_eq!(parse_up("").unwrap(), LabConfig::default());
        let cfg = parse_up("--queues 2 --mtu=9000 --ram-mib 256 --disk-mib=64 --loop").unwrap();
        assert_eq!(
            cfg,
            LabConfig {
                queues: 2,
                mtu: 9000,
                ram_mib: 256,
                disk_mib: 64,
                loop_device: true
            }
        );
        assert_eq!(parse_up(&cfg.to_args()).unwrap(), cfg);
        for (bad, needle) in [
            ("--queues", "a value is required"),
            ("--queues 0", "1 to 64"),
            ("--queues two", "invalid digit"),
            ("--mtu 70000", "68 to 65535"),
            ("--loop", "--disk-mib"),
            ("--loop=yes --ram-mib 1", "unexpected value"),
            ("--ram-mb 5", "unexpected argument '--ram-mb'"),
            ("extra", "unexpected argument 'extra'"),
        ] {
            let err = format!("{:#}", parse_up(bad).unwrap_err());
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn subcommands_are_checked() {
        assert!(matches!(parse("status").unwrap(), LabCommand::Status));
        assert!(matches!(parse("down").unwrap(), LabCommand::Down));
        let err = parse("status now").unwrap_err().to_string();
        assert!(err.contains("unexpected argument 'now'"), "{err}");
        let err = parse("sideways").unwrap_err().to_string();
        assert!(err.contains("unrecognized subcommand 'sideways'"), "{err}");
        assert!(parse("").is_err());
    }

    #[test]
    fn state_round_trips() {
        let layout = Layout::standard();
        let state = State {
            config: LabConfig {
                queues: 2,
                mtu: 9000,
                ram_mib: 256,
                disk_mib: 0,
                loop_device: true,
            },
            lab: Lab {
                target_ns: layout.target_ns.clone(),
                init_ns: layout.init_ns.clone(),
                target_if: layout.target_if.clone(),
                init_if: layout.init_if.clone(),
                ram_image: Some(layout.ram_image.clone()),
                disk_image: None,
                loop_dev: Some("/dev/loop7".into()),
            },
        };
        let text = state.to_text();
        assert!(
            text.contains("ram_image = /dev/shm/xbl/ram.img\n") && text.contains("disk_image = \n"),
            "{text}"
        );
        assert_eq!(State::parse(&text).unwrap(), state);
        let err = State::parse(&text.replace("mtu", "mtv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`mtu` is missing"), "{err}");
        let err = State::parse(&format!("{text}colour = blue\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key `colour`"), "{err}");
        assert!(State::parse("queues 2\n").is_err());
    }

    #[test]
    fn parses_ip_and_losetup_output() {
        let line = "2: xbl-tv@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 9000 xdpgeneric qdisc noqueue state UP \
                    mode DEFAULT group default qlen 1000\\    link/ether 16:76:a4:82:ff:d1 brd ff:ff:ff:ff:ff:ff \
                    link-netns xbl-i promiscuity 0  allmulti 0 minmtu 68 maxmtu 65535 \\    veth addrgenmode eui64 \
                    numtxqueues 2 numrxqueues 2 gso_max_size 65536 \\    prog/xdp id 1182 name aoe_steer tag 8ca6";
        let k = parse_link(line).unwrap();
        assert_eq!(
            k,
            LinkInfo {
                admin_up: true,
                oper: "UP".into(),
                mtu: 9000,
                rx_queues: 2,
                tx_queues: 2,
                xdp: Some("skb (generic), program aoe_steer id 1182".into()),
                peer_ns: Some("xbl-i".into()),
            }
        );
        let down = parse_link("3: xbl-iv@if3: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN numtxqueues 1 numrxqueues 1").unwrap();
        assert!(!down.admin_up && down.xdp.is_none() && down.peer_ns.is_none());

        let l = parse_losetup_line("/dev/loop3 1 512 /work/my\\x20dir/disk.img (deleted)").unwrap();
        assert_eq!(
            l,
            LoopInfo {
                dev: "/dev/loop3".into(),
                backing: "/work/my dir/disk.img".into(),
                direct_io: true,
                sector: 512
            }
        );
    }

    #[test]
    fn commands_print_as_typed() {
        assert_eq!(
            Op::RmDir("/dev/shm/xbl".into()).describe(),
            "rmdir /dev/shm/xbl"
        );
    }

    /// The whole life cycle on a lab with its own names (`xbltst-*`), so a lab in use is safe.
    #[test]
    fn up_status_up_reconfigure_down() {
        if !labkit::privileged(
            "lab::tests::up_status_up_reconfigure_down",
            "network namespaces, veth and loop devices need root",
        ) {
            return;
        }
        let layout = Layout::named(
            "xbltst",
            &crate::project_root().join("target").join("lab-test"),
        );
        down_in(&layout).unwrap(); // leftovers of an interrupted run

        let cfg = LabConfig {
            queues: 2,
            mtu: 3000,
            ram_mib: 8,
            disk_mib: 4,
            loop_device: true,
        };
        let (lab, done) = up_in(&layout, &cfg).unwrap();
        assert!(
            done.iter().any(|d| d.starts_with("ip netns add xbltst-t")),
            "{done:#?}"
        );
        assert_eq!(
            (lab.target_ns.as_str(), lab.init_if.as_str()),
            ("xbltst-t", "xbltst-iv")
        );
        assert_eq!(
            fs::metadata(lab.ram_image.as_ref().unwrap()).unwrap().len(),
            8 * MIB
        );
        assert_eq!(
            fs::metadata(lab.disk_image.as_ref().unwrap())
                .unwrap()
                .len(),
            4 * MIB
        );
        let dev = lab.loop_dev.clone().expect("a loop device");
        let sys = Path::new("/sys/block").join(dev.file_name().unwrap());
        let read = |f: &str| fs::read_to_string(sys.join(f)).unwrap().trim().to_owned();
        assert_eq!(read("queue/logical_block_size"), "512");
        assert_eq!(
            read("loop/backing_file"),
            layout.disk_image.to_string_lossy()
        );
        assert_eq!(read("loop/dio"), "1", "direct I/O on the disk image");

        let st = status_in(&layout).unwrap();
        for needle in [
            "xbltst-t/xbltst-tv",
            "mtu 3000, queues rx 2 tx 2, ipv6 off, xdp: none",
            "xbltst-i/xbltst-iv",
            "8 MiB (8 MiB allocated, tmpfs)",
            "4 MiB (4 MiB allocated, root filesystem)",
            &format!("{} ", dev.display()),
            "direct I/O on, 512-byte sectors",
        ] {
            assert!(st.contains(needle), "status lacks {needle:?}:\n{st}");
        }

        // Same parameters: nothing to do.
        let (again, done) = up_in(&layout, &cfg).unwrap();
        assert!(done.is_empty(), "{done:#?}");
        assert_eq!(again, lab);

        // An XDP program on the target end shows in the status (if this `ip` can load one).
        let obj = crate::project_root().join("ebpf").join("aoe_steer.o");
        let attach = |how: &[&str]| {
            Command::new("ip")
                .args([
                    "-n",
                    "xbltst-t",
                    "link",
                    "set",
                    "dev",
                    "xbltst-tv",
                    "xdpgeneric",
                ])
                .args(how)
                .read()
                .is_ok()
        };
        if attach(&["obj", &obj.to_string_lossy(), "sec", "xdp.frags"]) {
            let st = status_in(&layout).unwrap();
            assert!(
                st.contains("xdp: skb (generic), program aoe_steer id "),
                "{st}"
            );
            assert!(attach(&["off"]));
        } else {
            let _ = writeln!(
                std::io::stderr(),
                "note: this `ip` cannot load {}; XDP status not checked",
                obj.display()
            );
        }

        // A new MTU is changed in place; nothing else is touched.
        let mtu = LabConfig {
            mtu: 1500,
            ..cfg.clone()
        };
        let (_, done) = up_in(&layout, &mtu).unwrap();
        assert_eq!(
            done.iter().filter(|d| d.contains(" mtu 1500")).count(),
            2,
            "{done:#?}"
        );
        assert!(
            done.iter()
                .all(|d| d.contains(" mtu 1500") || d.starts_with("record ")),
            "{done:#?}"
        );

        // While something runs in the lab, a disruptive change is refused, an identical `up` is fine.
        let mut busy = Command::new("ip")
            .args(["netns", "exec", "xbltst-t", "sleep", "300"])
            .start()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while netns_pids("xbltst-t").is_empty() {
            assert!(
                Instant::now() < deadline,
                "sleep did not appear in xbltst-t"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(status_in(&layout).unwrap().contains("sleep 300"));
        let err = format!(
            "{:#}",
            up_in(
                &layout,
                &LabConfig {
                    queues: 1,
                    ..mtu.clone()
                }
            )
            .unwrap_err()
        );
        assert!(
            err.contains("in use") && err.contains("sleep 300") && err.contains("lab down"),
            "{err}"
        );
        assert!(up_in(&layout, &mtu).unwrap().1.is_empty());

        // Fewer things: the loop device and the disk image go, the RAM image stays.
        // (Still busy, so first stop the sleeper the way `down` would.)
        stop(&netns_pids("xbltst-t")).unwrap();
        busy.wait().unwrap();
        let small = LabConfig {
            disk_mib: 0,
            loop_device: false,
            ..mtu.clone()
        };
        let (lab2, done) = up_in(&layout, &small).unwrap();
        assert!(
            done.iter().any(|d| d.starts_with("losetup --detach")),
            "{done:#?}"
        );
        assert!(
            done.iter()
                .any(|d| d.starts_with("rm -f") && d.contains("disk.img")),
            "{done:#?}"
        );
        assert!(!done.iter().any(|d| d.contains("ram.img")), "{done:#?}");
        assert!(
            lab2.loop_dev.is_none() && lab2.disk_image.is_none() && !layout.disk_image.exists()
        );

        // Down removes everything (even with a damaged state file), then there is nothing to
        // remove, and status says so.
        fs::write(&layout.state_file, "queues = many\n").unwrap();
        let mut busy = Command::new("ip")
            .args(["netns", "exec", "xbltst-i", "sleep", "300"])
            .start()
            .unwrap();
        while netns_pids("xbltst-i").is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let done = down_in(&layout).unwrap();
        busy.wait().unwrap();
        assert!(
            done.iter().any(|d| d.starts_with("kill -TERM")),
            "{done:#?}"
        );
        assert!(
            done.iter().any(|d| d == "ip netns delete xbltst-t"),
            "{done:#?}"
        );
        assert!(!netns_list().iter().any(|n| n.starts_with("xbltst-")));
        assert!(!layout.ram_image.exists() && !layout.ram_image.parent().unwrap().exists());
        assert!(!layout.state_file.exists());
        assert!(loops_over(&[layout.disk_image.clone(), layout.ram_image.clone()]).is_empty());
        assert!(down_in(&layout).unwrap().is_empty());
        let st = status_in(&layout).unwrap();
        assert!(st.starts_with("lab is down"), "{st}");
    }
}
