//! `cargo xtask vm-test`: Linux's own AoE initiator (`aoe.ko`) against a target on this host,
//! or, with `--client ipxe`, iPXE booting Linux from the target's export (see [`ipxe`]).
//!
//! ```text
//! cargo xtask vm-test [--client linux|ipxe] [--target xblade|vblade] [--xblade-bin PATH]
//!                     [--mtu 1500|9000] [--keep] [--pcap] [--test io,fs,restart]
//!                     [--backing file,blk] [--size-mib 128] [--pattern-mib 32] [--timeout 180]
//!                     [--target-arg ARG]... [--vblade-bin PATH] [--ipxe PATH]
//! ```
//!
//! The target is xblade unless `--target vblade` (the reference the same tests run against).
//!
//! `--pcap` records the VM's frames (both ways, from qemu) to
//! `target/vm/frames-<label>-<test>.pcap`. What follows is the Linux client (`--client linux`,
//! the default).
//!
//! Each test boots Debian's kernel (TCG, 1 vCPU, 512 MiB) with a busybox initramfs whose
//! `/init` is `xtask/vm/init.sh`. The VM's virtio NIC is a tap (`xbvm<N>`) on this host, and the
//! target exports, as shelf 1 slot 0 on that tap, a fresh sparse file (`--backing`):
//!
//! - `file` (the default): `/dev/shm/xbvm-<pid>-<test>.img`, on tmpfs (xblade maps it in memory);
//! - `blk`: a loop block device (`losetup --direct-io=on --sector-size 512`) over
//!   `target/vm/xbvm-<pid>-<test>-blk.img` on the root filesystem: the path users take,
//!   `xblade 1 0 eth1 /dev/nvme0n1` (O_EXCL, io_uring O_DIRECT, `RWF_DSYNC` writes). The loop is
//!   detached after the test; the host checks read the image file.
//!
//! `--backing file,blk` runs every test on each, file first. The guest's checks are the same:
//!
//! - `io`: capacity; O_DIRECT write of a random pattern, read back and compare in the guest;
//!   the host compares the backing file byte for byte (pattern at 0, its first MiB in the last
//!   MiB, zeros elsewhere). Prints write/read throughput (reported, not asserted).
//! - `fs`: mkfs.ext4, files, sync, umount, `e2fsck -fn`, remount, checksums; then the host runs
//!   `e2fsck -fn` on the backing file and `debugfs` dumps `/big.bin` to compare with the pattern.
//! - `restart`: the guest writes the pattern in a loop; 1 s after it says so the host kills
//!   the target with SIGKILL and restarts it 2 s later; every write must succeed and the data
//!   must verify in the guest and on the host.
//!
//! The guest reports on its console (`XBLADE-VM: ...` lines, see init.sh). Logs stay in
//! `target/vm/`: `console-<target>[-mtu<N>][-blk]-<test>.log` (with host events interleaved) and
//! `target-...-<test>.log` (the target's output). Downloads and the guest image are cached in
//! `target/vm-cache/`. Needs root, `/dev/net/tun`, `qemu-system-x86_64`
//! (`apt-get install qemu-system-x86`) and apt (`apt-get update` done once) for the first run.
//!
//! The target is invoked vblade-style, `BIN [--target-arg ...] SHELF SLOT NETIF PATH`: vblade
//! from `/usr/sbin/vblade` (`apt-get install vblade`), xblade from `--xblade-bin` or else
//! `target/release/xblade`, then `target/debug/xblade`. `--keep` keeps the backing files (in
//! `/dev/shm`, and for `blk` the image files in `target/vm/`), the initrd and the pattern. More
//! in `xtask/vm/README.md`.

mod bootdisk;
mod guest;
mod host;
mod ipxe;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::Read,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use clap::ValueEnum;

use crate::cmd::{self, CommandExt as _};
use host::{Event, LoopDevice, Qemu, Stopped, Tap, Target, TargetCommand};

/// `cargo xtask vm-test` (needs root, /dev/net/tun and qemu-system-x86_64).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The initiator: Linux's aoe driver (tests io, fs, restart), or iPXE's sanboot, then Linux
    #[arg(long, value_enum, default_value_t = Client::Linux)]
    client: Client,
    /// The target the VM's initiator talks to
    #[arg(long, value_enum, default_value_t = TargetKind::Xblade)]
    target: TargetKind,
    /// The xblade binary [default: target/release/xblade, else target/debug/xblade]
    #[arg(long, value_name = "PATH")]
    xblade_bin: Option<PathBuf>,
    /// The vblade binary
    #[arg(long, value_name = "PATH", default_value = "/usr/sbin/vblade")]
    vblade_bin: PathBuf,
    /// MTU of the tap and the VM's NIC (576 to 65000)
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Keep the backing files, the initrd and the pattern
    #[arg(long)]
    keep: bool,
    /// Record the VM's frames to target/vm/frames-<label>-<test>.pcap
    #[arg(long)]
    pcap: bool,
    /// Tests to run, comma-separated [default: all; linux: io,fs,restart; ipxe: sanboot]
    #[arg(long = "test", value_name = "TESTS", value_delimiter = ',')]
    tests: Vec<String>,
    /// What the target exports, comma-separated: each test runs on each [default: file]
    #[arg(
        long = "backing",
        value_enum,
        value_name = "BACKINGS",
        value_delimiter = ','
    )]
    backings: Vec<Backing>,
    /// Size of the export in MiB [default: 128; not with --client ipxe]
    #[arg(long, value_name = "N")]
    size_mib: Option<u64>,
    /// Size of the random pattern the guest writes, in MiB [default: 32; not with --client ipxe]
    #[arg(long, value_name = "N")]
    pattern_mib: Option<u64>,
    /// Seconds a test may take [default: 180; with --client ipxe: 120]
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// An extra target option, before SHELF SLOT NETIF PATH (repeatable: --target-arg -d)
    #[arg(long = "target-arg", value_name = "ARG", allow_hyphen_values = true)]
    target_args: Vec<String>,
    /// The iPXE image for --client ipxe (Debian's ipxe package)
    #[arg(long, value_name = "PATH", default_value = ipxe::IPXE_LKRN)]
    ipxe: PathBuf,
}

const TESTS: &[&str] = &["io", "fs", "restart"];
/// How long a Linux client's test may take (`--timeout`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);
/// `--client ipxe` has one test: iPXE boots Linux from the export, Linux checks it.
const IPXE_TESTS: &[&str] = &["sanboot"];
const SHELF: u16 = 1;
const SLOT: u8 = 0;
/// How long after `LOAD-STARTED` the restart test kills the target, and how long it stays down.
const KILL_AFTER: Duration = Duration::from_millis(1000);
const DOWN_FOR: Duration = Duration::from_millis(2000);
/// The restart test's guest keeps writing for at least this long.
const LOAD_SECS: u32 = 12;
const MARKER: &str = "XBLADE-VM: ";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// target/release/xblade, or --xblade-bin
    Xblade,
    /// Debian's vblade (--vblade-bin), the reference
    Vblade,
}

impl TargetKind {
    fn name(self) -> &'static str {
        match self {
            TargetKind::Vblade => "vblade",
            TargetKind::Xblade => "xblade",
        }
    }
}

/// Which initiator the VM runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Client {
    /// Linux's `aoe` driver, in a kernel qemu boots directly (the `io`, `fs`, `restart` tests).
    Linux,
    /// iPXE (`sanboot aoe:e1.0`, INT 13h), then Linux's `aoe` driver in the kernel it booted.
    Ipxe,
}

/// What the target exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backing {
    /// A sparse file on tmpfs (`/dev/shm`).
    File,
    /// A loop block device (direct I/O, 512-byte sectors) over a sparse file on the root
    /// filesystem.
    Blk,
}

impl Backing {
    fn name(self) -> &'static str {
        match self {
            Backing::File => "file",
            Backing::Blk => "blk",
        }
    }
}

struct Options {
    client: Client,
    /// The iPXE image for `--client ipxe` (Debian's `ipxe` package).
    ipxe: PathBuf,
    target: TargetKind,
    xblade_bin: Option<PathBuf>,
    vblade_bin: PathBuf,
    mtu: u32,
    keep: bool,
    /// Record the VM's frames to `target/vm/frames-<label>-<test>.pcap`.
    pcap: bool,
    tests: Vec<String>,
    /// Each test runs once per backing, in this order.
    backings: Vec<Backing>,
    size_mib: u64,
    pattern_mib: u64,
    timeout: Duration,
    target_args: Vec<String>,
}

impl Options {
    /// The options of `args`, with their defaults, checked.
    fn new(args: Args) -> Result<Self> {
        let size_given = args.size_mib.is_some() || args.pattern_mib.is_some();
        let (tests, timeout) = match args.client {
            Client::Linux => (TESTS, DEFAULT_TIMEOUT),
            Client::Ipxe => {
                // The exported disk is built to size, and holds no pattern.
                ensure!(
                    !size_given,
                    "--size-mib and --pattern-mib do not apply to --client ipxe"
                );
                (IPXE_TESTS, ipxe::TIMEOUT)
            }
        };
        for test in &args.tests {
            ensure!(
                tests.contains(&test.as_str()),
                "unknown test `{test}` (tests: {})",
                tests.join(", ")
            );
        }
        let mut backings = Vec::new();
        for backing in args.backings {
            if !backings.contains(&backing) {
                backings.push(backing);
            }
        }
        if backings.is_empty() {
            backings.push(Backing::File);
        }
        let options = Options {
            client: args.client,
            ipxe: args.ipxe,
            target: args.target,
            xblade_bin: args.xblade_bin,
            vblade_bin: args.vblade_bin,
            mtu: args.mtu,
            keep: args.keep,
            pcap: args.pcap,
            tests: if args.tests.is_empty() {
                tests.iter().map(|test| (*test).to_owned()).collect()
            } else {
                args.tests
            },
            backings,
            size_mib: args.size_mib.unwrap_or(128),
            pattern_mib: args.pattern_mib.unwrap_or(32),
            timeout: args.timeout.map_or(timeout, Duration::from_secs),
            target_args: args.target_args,
        };
        ensure!(
            (576..=65_000).contains(&options.mtu),
            "--mtu {} is out of range",
            options.mtu
        );
        ensure!(options.pattern_mib >= 1, "--pattern-mib must be at least 1");
        ensure!(
            options.size_mib > 2 * options.pattern_mib,
            "--size-mib must hold two copies of the pattern plus a MiB"
        );
        Ok(options)
    }

    /// `vblade`, `vblade-mtu9000`, `xblade-blk`: the part of log names that says what ran.
    fn label(&self, backing: Backing) -> String {
        let mut label = match self.mtu {
            1500 => self.target.name().to_owned(),
            mtu => format!("{}-mtu{mtu}", self.target.name()),
        };
        if self.client == Client::Ipxe {
            label += "-ipxe";
        }
        if backing != Backing::File {
            let _ = write!(label, "-{}", backing.name());
        }
        label
    }

    /// The summary file's label: as [`Options::label`] for one backing, else all of them.
    fn summary_label(&self) -> String {
        match self.backings.as_slice() {
            [one] => self.label(*one),
            all => {
                let names: Vec<&str> = all.iter().map(|b| b.name()).collect();
                format!("{}-{}", self.label(Backing::File), names.join("+"))
            }
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let options = Options::new(args)?;
    cmd::install_signal_handlers();
    let root = crate::project_root();
    let target_bin = target_binary(&options, &root)?;
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .read()
        .context("qemu-system-x86_64 is missing: apt-get install qemu-system-x86")?;

    let out = root.join("target/vm");
    fs::create_dir_all(&out)?;
    match options.client {
        Client::Linux => run_linux(&options, &root, &out, &target_bin),
        Client::Ipxe => ipxe::run(&options, &root, &out, &target_bin),
    }
}

/// The Linux initiator's tests (`--client linux`, the default).
fn run_linux(options: &Options, root: &Path, out: &Path, target_bin: &Path) -> Result<()> {
    let prepare_started = Instant::now();
    let image = guest::prepare(&root.join("target/vm-cache"), root)?;
    eprintln!(
        "vm-test: guest {} (ready in {:.1}s)",
        image.description,
        prepare_started.elapsed().as_secs_f64()
    );

    let pattern = random_bytes(usize::try_from(options.pattern_mib << 20)?)?;
    let run_id = std::process::id();
    let initrd = out.join(format!("initrd-{run_id}.img"));
    let _remove_initrd = RemoveOnDrop((!options.keep).then(|| initrd.clone()));
    guest::initrd_with_pattern(&image.initramfs, &pattern, &initrd)?;
    let pattern_path = out.join(format!("pattern-{run_id}.bin"));
    if options.keep {
        fs::write(&pattern_path, &pattern)?;
    }

    let tap = Tap::create(options.mtu)?;
    let backings: Vec<&str> = options.backings.iter().map(|b| b.name()).collect();
    eprintln!(
        "vm-test: target {} on {} (MTU {}), tests: {}, backing: {}",
        target_bin.display(),
        tap.name,
        options.mtu,
        options.tests.join(", "),
        backings.join(", ")
    );
    let results = run_tests(options, |backing, test| {
        TestContext {
            options,
            image: &image,
            initrd: &initrd,
            tap: &tap,
            out,
            pattern: &pattern,
            target_bin,
            backing,
        }
        .run(test)
    })?;
    drop(tap);

    let header = format!(
        "vm-test against {} ({}), MTU {}, {} MiB export ({}), {} MiB pattern\nguest: {}\n",
        options.target.name(),
        target_bin.display(),
        options.mtu,
        options.size_mib,
        options
            .backings
            .iter()
            .map(|b| match b {
                Backing::File => "file: a sparse file in /dev/shm",
                Backing::Blk => {
                    "blk: a loop device, direct I/O, 512-byte sectors, over a sparse file in target/vm"
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        options.pattern_mib,
        image.description
    );
    let failed = write_summary(options, out, header, &results)?;
    if options.keep {
        println!(
            "kept: {}, {} and the backing files /dev/shm/xbvm-{run_id}-*.img{}",
            pattern_path.display(),
            initrd.display(),
            if options.backings.contains(&Backing::Blk) {
                format!(" and {}/xbvm-{run_id}-*-blk.img", out.display())
            } else {
                String::new()
            }
        );
    }
    ensure!(
        failed == 0,
        "{failed} VM test(s) failed; logs in {}",
        out.display()
    );
    Ok(())
}

/// Runs every (backing, test) of `options` with `run_one`, in order, running a test again
/// only after an initiator stall (see [`initiator_stall`]), at most [`STALL_RETRIES`] times.
fn run_tests(
    options: &Options,
    run_one: impl Fn(Backing, &str) -> TestResult,
) -> Result<Vec<TestResult>> {
    let runs = options
        .backings
        .iter()
        .flat_map(|&backing| options.tests.iter().map(move |test| (backing, test)));
    let mut results = Vec::new();
    for (backing, test) in runs {
        let mut result = run_one(backing, test);
        cmd::check_interrupted()?;
        let mut kept_logs = Vec::new();
        while let Some(why) = initiator_stall(&result, options.target) {
            if kept_logs.len() == STALL_RETRIES {
                break;
            }
            // Not a target failure: the guest driver holds the request without a frame on the
            // wire, so no target can answer it. Keep the log, say so loudly, run the test again.
            let kept = result
                .console
                .with_extension(format!("initiator-stall-{}.log", kept_logs.len() + 1));
            let _ = std::fs::rename(&result.console, &kept);
            // The target's log of the stalled run too: its counters show every frame answered.
            let _ = std::fs::rename(
                &result.target_log,
                result
                    .target_log
                    .with_extension(format!("initiator-stall-{}.log", kept_logs.len() + 1)),
            );
            eprintln!(
                "vm-test: {}: RETRY ({} of at most {STALL_RETRIES}): {why} (console kept in {})",
                result.name,
                kept_logs.len() + 1,
                kept.display()
            );
            kept_logs.push(kept.display().to_string());
            result = run_one(backing, test);
            cmd::check_interrupted()?;
        }
        if !kept_logs.is_empty() {
            result.notes.push(format!(
                "retried {} time(s) after an initiator stall ({})",
                kept_logs.len(),
                kept_logs.join(", ")
            ));
        }
        eprintln!("vm-test: {}", result.summary_line());
        results.push(result);
    }
    Ok(results)
}

/// Writes `target/vm/summary-<label>.txt` (`header`, then one line per result) and prints it;
/// returns how many results failed.
fn write_summary(
    options: &Options,
    out: &Path,
    mut summary: String,
    results: &[TestResult],
) -> Result<usize> {
    for result in results {
        summary += &result.summary_line();
        summary.push('\n');
        for failure in &result.failures {
            let _ = writeln!(summary, "    failure: {failure}");
        }
        let _ = writeln!(summary, "    log: {}", result.console.display());
    }
    let passed = results
        .iter()
        .filter(|result| result.failures.is_empty())
        .count();
    let failed = results.len() - passed;
    let _ = writeln!(summary, "vm-test: {passed} passed, {failed} failed");
    let summary_path = out.join(format!("summary-{}.txt", options.summary_label()));
    fs::write(&summary_path, &summary)?;
    println!("{summary}");
    Ok(failed)
}

/// The VM's NIC: virtio-net on the tap, with the tap's MTU as `host_mtu` and no option ROM.
/// With `pcap`, qemu records every frame both ways there (`filter-dump`; the tap then carries
/// no virtio-net header, which would otherwise precede each frame in the file). `tcpdump` on
/// the tap would not do: xblade's XDP program redirects AoE frames to its AF_XDP socket before
/// the kernel's packet taps see them, and its replies leave without passing them either.
fn add_nic(command: &mut Command, tap: &str, mtu: u32, pcap: Option<&Path>) {
    let vnet_hdr = if pcap.is_some() { ",vnet_hdr=off" } else { "" };
    command
        .arg("-netdev")
        .arg(format!(
            "tap,id=n0,ifname={tap},script=no,downscript=no{vnet_hdr}"
        ))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,host_mtu={mtu},romfile="));
    if let Some(pcap) = pcap {
        let _ = fs::remove_file(pcap);
        command.arg("-object").arg(format!(
            "filter-dump,id=dump0,netdev=n0,file={}",
            pcap.display()
        ));
    }
}

/// `target/vm/frames-<label>-<test>.pcap`.
fn pcap_path(out: &Path, label: &str, test: &str) -> PathBuf {
    out.join(format!("frames-{label}-{test}.pcap"))
}

fn target_binary(options: &Options, root: &Path) -> Result<PathBuf> {
    let bin = match options.target {
        TargetKind::Vblade => options.vblade_bin.clone(),
        TargetKind::Xblade => match &options.xblade_bin {
            Some(bin) => bin.clone(),
            None => {
                let mut dirs = Vec::new();
                if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
                    dirs.push(PathBuf::from(dir));
                }
                dirs.push(root.join("target"));
                let candidates: Vec<_> = dirs
                    .iter()
                    .flat_map(|dir| {
                        ["release", "debug"].map(|profile| dir.join(profile).join("xblade"))
                    })
                    .collect();
                candidates.iter().find(|path| path.exists()).cloned().with_context(|| {
                    format!("no xblade binary in {candidates:?}: `cargo build --release -p xblade` or pass --xblade-bin")
                })?
            }
        },
    };
    ensure!(bin.exists(), "{} does not exist", bin.display());
    Ok(bin)
}

/// Deletes a file when dropped (if there is one to delete).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

fn random_bytes(len: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0; len];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

struct TestContext<'a> {
    options: &'a Options,
    image: &'a guest::GuestImage,
    initrd: &'a Path,
    tap: &'a Tap,
    out: &'a Path,
    pattern: &'a [u8],
    target_bin: &'a Path,
    backing: Backing,
}

/// How many times a test is run again after the guest's aoe driver stalled with no frame
/// outstanding while the target had answered every frame (see [`initiator_stall`]). Seen in up
/// to 3 of 4 attempts of a test on a loaded CI machine (with vblade too, less often), so three
/// retries; any other failure is never retried.
const STALL_RETRIES: usize = 3;

/// If `result` failed because the guest's I/O stalled while the Linux aoe driver had no frame
/// outstanding to the target (its watchdog prints `DIAG e1.0: <mac>:<nout>:<maxout>:<nframes>`
/// with nout 0), say why: the 6.1 driver's blk-mq queue was not kicked, a known initiator bug
/// (OpenAoE/aoe#13 family) that no target behaviour can cause or cure.
fn initiator_stall(result: &TestResult, target: TargetKind) -> Option<String> {
    let console = std::fs::read_to_string(&result.console).ok()?;
    // Only xblade prints the counters that show it answered everything; vblade is judged on the
    // guest's state alone.
    let target_log = match target {
        TargetKind::Xblade => Some(std::fs::read_to_string(&result.target_log).unwrap_or_default()),
        TargetKind::Vblade => None,
    };
    initiator_stall_in(&result.failures, &console, target_log.as_deref())
}

/// Whether xblade's exit counters (in its log) say it answered every frame it received and its
/// XDP program dropped none. No counters at all (it crashed or was killed) is a no.
fn target_answered_all(target_log: &str) -> bool {
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let mut judged = false;
    for line in target_log.lines() {
        if let (Some(rx), Some(tx)) = (
            number_after(line, "rx_frames: "),
            number_after(line, "tx_frames: "),
        ) {
            judged = true;
            if tx < rx {
                return false;
            }
        }
        if let Some(dropped) = line
            .contains("XDP counters")
            .then(|| number_after(line, " dropped="))
            .flatten()
        {
            judged = true;
            if dropped > 0 {
                return false;
            }
        }
    }
    judged
}

fn initiator_stall_in(
    failures: &[String],
    console: &str,
    xblade_log: Option<&str>,
) -> Option<String> {
    if !failures.iter().any(|f| f.contains("stalled"))
        || xblade_log.is_some_and(|log| !target_answered_all(log))
    {
        return None;
    }
    let line = console.lines().find(|l| {
        l.split_once("DIAG e")
            .and_then(|(_, rest)| rest.split_once(": "))
            .is_some_and(|(_, t)| {
                let f: Vec<&str> = t.trim().split(':').collect();
                f.len() == 4 && f[0].len() == 12 && f[1] == "0"
            })
    })?;
    Some(format!(
        "the guest's aoe driver stalled with I/O in flight but no frame outstanding to the target ({})",
        line.trim()
    ))
}

/// The image a test exports: on tmpfs for a file, on the root filesystem (like a disk, and like
/// the bench's disk image) under a loop device.
fn backing_image(backing: Backing, out: &Path, test: &str) -> PathBuf {
    let pid = std::process::id();
    match backing {
        Backing::File => PathBuf::from(format!("/dev/shm/xbvm-{pid}-{test}.img")),
        Backing::Blk => out.join(format!("xbvm-{pid}-{test}-blk.img")),
    }
}

/// What the target exports for `image`: the file itself, or a loop device over it (returned,
/// detached on drop: keep it until the target is gone). A loop device that fell back to
/// buffered I/O is noted in `result`.
fn export_backing(
    backing: Backing,
    image: &Path,
    result: &mut TestResult,
) -> Result<(Option<LoopDevice>, PathBuf)> {
    let device = match backing {
        Backing::File => None,
        Backing::Blk => {
            let device = LoopDevice::attach(image)?;
            if !device.direct_io {
                result.notes.push(format!(
                    "{} fell back to buffered I/O over {}",
                    device.path.display(),
                    image.display()
                ));
            }
            Some(device)
        }
    };
    let export = device
        .as_ref()
        .map_or_else(|| image.to_owned(), |device| device.path.clone());
    Ok((device, export))
}

/// What one test boot produced.
struct TestResult {
    name: String,
    console: PathBuf,
    /// The target's log (its counters at exit tell whether it answered every frame).
    target_log: PathBuf,
    failures: Vec<String>,
    /// From qemu's start: guest init running, device ready, verdict, qemu gone.
    booted: Option<Duration>,
    ready: Option<Duration>,
    verdict: Option<Duration>,
    total: Duration,
    frame_bytes: Option<String>,
    /// `INFO <what> key=value...` lines, by what.
    info: BTreeMap<String, BTreeMap<String, String>>,
    notes: Vec<String>,
    /// `--client ipxe`: when the firmware got where.
    firmware: Option<ipxe::Firmware>,
}

impl TestResult {
    /// An empty result for `test` on `backing`, with the console and target logs named after
    /// the run's label in `out`.
    fn new(options: &Options, backing: Backing, out: &Path, test: &str) -> TestResult {
        let label = options.label(backing);
        TestResult {
            name: match backing {
                Backing::File => test.to_owned(),
                other => format!("{test}/{}", other.name()),
            },
            console: out.join(format!("console-{label}-{test}.log")),
            target_log: out.join(format!("target-{label}-{test}.log")),
            failures: Vec::new(),
            booted: None,
            ready: None,
            verdict: None,
            total: Duration::ZERO,
            frame_bytes: None,
            info: BTreeMap::new(),
            notes: Vec::new(),
            firmware: None,
        }
    }

    fn summary_line(&self) -> String {
        let seconds = |duration: Option<Duration>| {
            duration.map_or_else(
                || "-".to_owned(),
                |duration| format!("{:.1}s", duration.as_secs_f64()),
            )
        };
        let span = |from: Option<Duration>, to: Option<Duration>| match (from, to) {
            (Some(from), Some(to)) => seconds(to.checked_sub(from)),
            _ => "-".to_owned(),
        };
        let mut line = format!(
            "{:<11} {}  {}boot {}  discover {}  test {}  total {:.1}s",
            self.name,
            if self.failures.is_empty() {
                "PASS"
            } else {
                "FAIL"
            },
            self.firmware
                .as_ref()
                .map_or_else(String::new, |firmware| format!("{}  ", firmware.describe())),
            seconds(self.booted),
            span(self.booted, self.ready),
            span(self.ready, self.verdict),
            self.total.as_secs_f64()
        );
        if let Some(frames) = &self.frame_bytes {
            let _ = write!(line, "  frames {frames} B");
        }
        for what in ["write", "read", "buffered-read", "fs-write"] {
            if let Some(rate) = self.rate(what) {
                let _ = write!(line, "  {what} {rate}");
            }
        }
        for note in &self.notes {
            let _ = write!(line, "  {note}");
        }
        line
    }

    /// `12.3 MB/s` from an `INFO what bytes=N cs=N` line.
    fn rate(&self, what: &str) -> Option<String> {
        let info = self.info.get(what)?;
        let bytes: f64 = info.get("bytes")?.parse().ok()?;
        let centiseconds: f64 = info.get("cs")?.parse().ok()?;
        Some(format!(
            "{:.1} MB/s",
            bytes / (centiseconds.max(1.0) / 100.0) / 1e6
        ))
    }
}

impl TestContext<'_> {
    fn run(&self, test: &str) -> TestResult {
        let mut result = TestResult::new(self.options, self.backing, self.out, test);
        let console = result.console.clone();
        let backing = backing_image(self.backing, self.out, test);
        if let Err(error) = self.boot_and_check(test, &backing, &console, &mut result) {
            result.failures.push(format!("{error:#}"));
        }
        if !self.options.keep {
            let _ = fs::remove_file(&backing);
        }
        result
    }

    /// `backing` is the image file; with [`Backing::Blk`] the target exports a loop device over
    /// it (attached here, detached on return, after the target has stopped and the host's
    /// checks, which read the file, are done).
    fn boot_and_check(
        &self,
        test: &str,
        backing: &Path,
        console: &Path,
        result: &mut TestResult,
    ) -> Result<()> {
        let size = self.options.size_mib << 20;
        let file =
            fs::File::create(backing).with_context(|| format!("creating {}", backing.display()))?;
        file.set_len(size)?;
        drop(file);

        // Declared before the target, so it is dropped (detached) after the target is killed.
        let (_loop_device, export) = export_backing(self.backing, backing, result)?;

        let mut target = Target::start(TargetCommand {
            bin: self.target_bin.to_owned(),
            args: self.options.target_args.clone(),
            shelf: SHELF,
            slot: SLOT,
            netif: self.tap.name.clone(),
            backing: export,
            log: result.target_log.clone(),
        })?;

        let append = format!(
            "console=ttyS0 quiet panic=-1 xbvm.test={test} xbvm.shelf={SHELF} xbvm.slot={SLOT} \
             xbvm.sectors={} xbvm.mtu={} xbvm.load_secs={LOAD_SECS}",
            size / 512,
            self.options.mtu
        );
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args([
                "-accel",
                "tcg",
                "-m",
                "512",
                "-smp",
                "1",
                "-nodefaults",
                "-no-user-config",
            ])
            .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.image.kernel)
            .arg("-initrd")
            .arg(self.initrd)
            .args(["-append", &append]);
        add_nic(
            &mut command,
            &self.tap.name,
            self.options.mtu,
            self.options
                .pcap
                .then(|| pcap_path(self.out, &self.options.label(self.backing), test))
                .as_deref(),
        );
        let spawned = Instant::now();
        let mut qemu = Qemu::spawn(&mut command, console)?;
        qemu.note(&cmd::line(&command));

        let deadline = Instant::now() + self.options.timeout;
        let mut verdict: Option<Result<(), String>> = None;
        let mut restarted_at = None;
        let mut load_done = false;
        loop {
            let line = match qemu.next_event(deadline)? {
                Event::Line(line) => line,
                Event::Closed => break,
                Event::Timeout => {
                    let message = format!("timed out after {}s", self.options.timeout.as_secs());
                    qemu.note(&message);
                    result.failures.push(message);
                    break;
                }
            };
            if let Err(error) = target.check_alive() {
                qemu.note(&format!("{error:#}"));
                result.failures.push(format!("{error:#}"));
                break;
            }
            let Some(marker) = line
                .text
                .find(MARKER)
                .map(|at| &line.text[at + MARKER.len()..])
            else {
                continue;
            };
            let (word, rest) = marker.split_once(' ').unwrap_or((marker, ""));
            match word {
                "BOOTED" => result.booted = Some(line.at),
                "READY" => {
                    result.ready = Some(line.at);
                    result.frame_bytes = fields(rest).get("frame_bytes").cloned();
                }
                "INFO" => {
                    let (what, values) = rest.split_once(' ').unwrap_or((rest, ""));
                    result.info.insert(what.to_owned(), fields(values));
                }
                "LOAD-STARTED" if test == "restart" => {
                    cmd::sleep(KILL_AFTER)?;
                    target.kill9()?;
                    qemu.note("target killed with SIGKILL");
                    cmd::sleep(DOWN_FOR)?;
                    target.restart()?;
                    qemu.note("target restarted");
                    restarted_at = Some(qemu.elapsed());
                }
                "LOAD-DONE" => {
                    load_done = true;
                    if restarted_at.is_none_or(|restarted| restarted > line.at) {
                        result.failures.push("the guest's load ended before the target was restarted: the test proved nothing".to_owned());
                    }
                    if let Some(passes) = fields(rest).get("passes") {
                        result.notes.push(format!("{passes} write passes"));
                    }
                }
                "PASS" => {
                    verdict.get_or_insert(Ok(()));
                    result.verdict = Some(line.at);
                }
                "FAIL" => {
                    verdict.get_or_insert(Err(rest.to_owned()));
                    result.verdict = Some(line.at);
                }
                _ => {}
            }
        }
        // After a timeout or a dead target there is nothing left to wait for.
        let stuck = !result.failures.is_empty();
        let grace = Duration::from_secs(if stuck { 0 } else { 10 });
        if qemu.finish(grace, console)?.is_none() && !stuck {
            result.failures.push("qemu did not power off".to_owned());
        }
        result.total = spawned.elapsed();
        match verdict {
            Some(Ok(())) => {}
            Some(Err(reason)) => result.failures.push(format!("guest: FAIL {reason}")),
            None => result
                .failures
                .push("the guest gave no verdict (see the console log)".to_owned()),
        }
        if test == "restart" && !load_done && result.failures.is_empty() {
            result
                .failures
                .push("the guest never finished its load".to_owned());
        }
        if test == "restart" {
            if let Some(note) = restart_pass_note(&result.info) {
                result.notes.push(note);
            }
        }
        // vblade just dies of SIGTERM; a clean exit 0 is fine too. Anything else is worth a note.
        match target.stop()? {
            Stopped::Exited(status)
                if status.success() || status.signal() == Some(libc::SIGTERM) => {}
            Stopped::Exited(status) => result.notes.push(format!("target stopped with {status}")),
            Stopped::Killed => result.notes.push("target ignored SIGTERM".to_owned()),
            Stopped::NotRunning => {}
        }

        // The host's own look at the backing file.
        if result.failures.is_empty() {
            let checks = match test {
                "io" => self.check_io(backing),
                "fs" => self.check_fs(backing),
                "restart" => self.check_restart(backing),
                _ => Ok(()),
            };
            if let Err(error) = checks {
                result.failures.push(format!("host check: {error:#}"));
            }
        }
        Ok(())
    }

    fn check_io(&self, backing: &Path) -> Result<()> {
        let data = fs::read(backing)?;
        let mib = 1 << 20;
        let last = data.len() - mib;
        compare(&data, 0, self.pattern, "the pattern at LBA 0")?;
        compare(
            &data,
            last,
            &self.pattern[..mib],
            "the pattern's first MiB in the last MiB",
        )?;
        zeros(&data, self.pattern.len()..last)
    }

    fn check_restart(&self, backing: &Path) -> Result<()> {
        let data = fs::read(backing)?;
        compare(&data, 0, self.pattern, "copy 1 of the pattern")?;
        compare(
            &data,
            self.pattern.len(),
            self.pattern,
            "copy 2 of the pattern",
        )?;
        zeros(&data, 2 * self.pattern.len()..data.len())
    }

    fn check_fs(&self, backing: &Path) -> Result<()> {
        // e2fsck reports problems on stdout.
        let fsck = Command::new("e2fsck").arg("-fn").arg(backing).capture()?;
        ensure!(
            fsck.status.success(),
            "host e2fsck -fn: {}\n{}",
            fsck.status,
            fsck.stdout_text()
        );
        let dump = backing.with_extension("big.bin");
        let result = Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump /big.bin {}", dump.display()))
            .arg(backing)
            .read()
            .map(drop)
            .and_then(|()| {
                let big = fs::read(&dump)?;
                ensure!(
                    big.len() == self.pattern.len(),
                    "/big.bin has {} bytes, expected {}",
                    big.len(),
                    self.pattern.len()
                );
                compare(&big, 0, self.pattern, "/big.bin (via debugfs)")
            });
        let _ = fs::remove_file(&dump);
        result
    }
}

/// `key=value key=value` into a map.
fn fields(text: &str) -> BTreeMap<String, String> {
    text.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// "slowest pass 4.1s (others 1.2-1.4s)" for the restart test's write passes.
fn restart_pass_note(info: &BTreeMap<String, BTreeMap<String, String>>) -> Option<String> {
    let mut passes: Vec<f64> = info
        .iter()
        .filter(|(what, _)| what.starts_with("restart-pass-"))
        .filter_map(|(_, values)| values.get("cs")?.parse::<f64>().ok())
        .map(|centiseconds| centiseconds / 100.0)
        .collect();
    if passes.is_empty() {
        return None;
    }
    passes.sort_by(f64::total_cmp);
    let slowest = passes.pop()?;
    let others = match (passes.first(), passes.last()) {
        (Some(low), Some(high)) => format!(" (others {low:.1}-{high:.1}s)"),
        _ => String::new(),
    };
    Some(format!("slowest pass {slowest:.1}s{others}"))
}

/// `data[offset..]` starts with `expect`, or the first differing byte is named.
fn compare(data: &[u8], offset: usize, expect: &[u8], what: &str) -> Result<()> {
    let Some(actual) = data.get(offset..offset + expect.len()) else {
        bail!("{what}: the backing file has only {} bytes", data.len());
    };
    if actual == expect {
        return Ok(());
    }
    if let Some(index) = actual.iter().zip(expect).position(|(a, b)| a != b) {
        let differing = actual[index..]
            .iter()
            .zip(&expect[index..])
            .filter(|(a, b)| a != b)
            .count();
        bail!(
            "{what}: first difference at byte {} (sector {}): {:#04x} instead of {:#04x}; {differing} bytes differ",
            offset + index,
            (offset + index) / 512,
            actual[index],
            expect[index]
        );
    }
    Ok(())
}

fn zeros(data: &[u8], range: std::ops::Range<usize>) -> Result<()> {
    const ZERO: [u8; 4096] = [0; 4096];
    for (chunk_index, chunk) in data[range.clone()].chunks(ZERO.len()).enumerate() {
        if chunk != &ZERO[..chunk.len()] {
            let index = range.start
                + chunk_index * ZERO.len()
                + chunk.iter().position(|&byte| byte != 0).unwrap_or(0);
            bail!(
                "stray data at byte {index} (sector {}), which nothing wrote",
                index / 512
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod stall_tests {
    use super::initiator_stall_in;

    const TARGET: &str = "INFO xblade::daemon: worker stopped iface=xbvm0 queue=0 \
        stats=WorkerStats { rx_frames: 696940, tx_frames: 696941, dropped: 0, reads: 52736 }\n\
        INFO xblade::daemon: XDP counters iface=xbvm0 redirected=696940 dropped=0 passed=3\n";

    const LOG: &str = "XBLADE-VM: DIAG inflight:        1        0\n\
        XBLADE-VM: DIAG e1.0: rttavg: 993 rttdev: 167\n\
        XBLADE-VM: DIAG e1.0: aa823cefc5d4:0:64:64\n\
        XBLADE-VM: DIAG e1.0: \tssthresh:32\n";

    #[test]
    fn a_stall_with_no_frame_outstanding_is_the_initiators() {
        let stalled = vec!["guest: FAIL restart stalled: no I/O completed for 30s".to_string()];
        assert!(initiator_stall_in(&stalled, LOG, Some(TARGET))
            .unwrap()
            .contains("aa823cefc5d4:0:64:64"));
        // vblade prints no counters: judged on the guest's state alone.
        assert!(initiator_stall_in(&stalled, LOG, None).is_some());
        // A frame outstanding means the target owes an answer: a real failure, no retry.
        assert_eq!(
            initiator_stall_in(&stalled, &LOG.replace(":0:64:64", ":1:64:64"), Some(TARGET)),
            None
        );
        // So does a frame the target received and never answered, or one its XDP dropped.
        let unanswered = TARGET.replace("tx_frames: 696941", "tx_frames: 696939");
        assert_eq!(initiator_stall_in(&stalled, LOG, Some(&unanswered)), None);
        let dropped = TARGET.replace("redirected=696940 dropped=0", "redirected=696940 dropped=2");
        assert_eq!(initiator_stall_in(&stalled, LOG, Some(&dropped)), None);
        // A target that printed no counters (it crashed or was killed) is not cleared.
        let crashed = "== vm-test: start #1: \"/x/release/xblade\" \"1\" \"0\"\n";
        assert_eq!(initiator_stall_in(&stalled, LOG, Some(crashed)), None);
        // Other failures are never retried.
        assert_eq!(
            initiator_stall_in(&["guest: FAIL io cmp".to_string()], LOG, Some(TARGET)),
            None
        );
    }
}

#[cfg(test)]
mod option_tests {
    use std::time::Duration;

    use clap::Parser as _;

    use super::{ipxe, Args, Backing, Client, Options, TargetKind};

    /// `cargo xtask vm-test LINE`, parsed and checked as `run` does.
    fn parse(line: &str) -> anyhow::Result<Options> {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            vm: Args,
        }
        let argv = std::iter::once("vm-test").chain(line.split_whitespace());
        Options::new(Cli::try_parse_from(argv)?.vm)
    }

    #[test]
    fn the_target_is_xblade_unless_vblade_is_asked_for() {
        let o = parse("").unwrap();
        assert_eq!((o.target, o.client), (TargetKind::Xblade, Client::Linux));
        assert_eq!(o.tests, ["io", "fs", "restart"]);
        assert_eq!(o.timeout, Duration::from_secs(180));
        assert!(o.xblade_bin.is_none());
        assert_eq!(parse("--target vblade").unwrap().target, TargetKind::Vblade);
        assert!(parse("--target tgt").is_err());
        // Target options may look like options themselves.
        let o = parse("--target-arg -d --target-arg -s --test io,restart").unwrap();
        assert_eq!(
            (o.target_args, o.tests),
            (
                vec!["-d".into(), "-s".into()],
                vec!["io".into(), "restart".into()]
            )
        );
    }

    #[test]
    fn backing_defaults_to_the_file_and_takes_a_list() {
        let o = parse("--target xblade").unwrap();
        assert_eq!(o.backings, [Backing::File]);
        assert_eq!(
            (o.label(Backing::File), o.summary_label()),
            ("xblade".into(), "xblade".into())
        );
        let o = parse("--target xblade --mtu 9000 --backing blk").unwrap();
        assert_eq!(o.backings, [Backing::Blk]);
        assert_eq!(o.summary_label(), "xblade-mtu9000-blk");
        let o = parse("--backing=file,blk --backing blk --target vblade").unwrap();
        assert_eq!(o.backings, [Backing::File, Backing::Blk]);
        assert_eq!(o.label(Backing::Blk), "vblade-blk");
        assert_eq!(o.summary_label(), "vblade-file+blk");
        let err = parse("--backing nvme").err().unwrap().to_string();
        assert!(err.contains("[possible values: file, blk]"), "{err}");
    }

    #[test]
    fn the_ipxe_client_has_its_own_test_labels_and_timeout() {
        let o = parse("--client ipxe --target xblade --mtu 9000").unwrap();
        assert_eq!(o.client, Client::Ipxe);
        assert_eq!(o.tests, ["sanboot"]);
        assert_eq!(o.timeout, ipxe::TIMEOUT);
        assert_eq!(o.summary_label(), "xblade-mtu9000-ipxe");
        let o = parse("--backing file,blk --client=ipxe").unwrap();
        assert_eq!(o.label(Backing::Blk), "xblade-ipxe-blk");
        assert_eq!(
            parse("--client ipxe --timeout 30").unwrap().timeout,
            Duration::from_secs(30)
        );
        let err = parse("--client ipxe --test io").err().unwrap().to_string();
        assert!(err.contains("tests: sanboot"), "{err}");
        assert!(parse("--test sanboot").is_err());
        assert!(parse("--client ipxe --size-mib 64").is_err());
        assert!(parse("--client efi").is_err());
        let o = parse("--test fs --client linux").unwrap();
        assert_eq!((o.client, o.tests), (Client::Linux, vec!["fs".to_owned()]));
    }
}
