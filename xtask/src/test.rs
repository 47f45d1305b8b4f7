//! `cargo xtask test`: the project's whole test suite, as CI runs it.
//!
//! 1. Make sure the tools the tests drive are installed (Debian packages; installs them with
//!    apt-get when run as root, and says so).
//! 2. The committed XDP object matches a rebuild (`cargo xtask ebpf --check`).
//! 3. `cargo fmt --check` and `cargo clippy --workspace --all-targets -D warnings`.
//! 4. `cargo test --workspace`: unit, property and privileged end-to-end tests (network
//!    namespaces, XDP, AF_XDP, io_uring, loop devices, aoetools). Under `CI=true` a privileged
//!    test that cannot run fails instead of skipping.
//! 5. Every further stage registered in [`STAGES`] (the benchmark smoke run, the Debian
//!    package built, linted and install-tested, the VM tests with the real Linux initiator and
//!    iPXE) unless `--quick`.

use std::process::Command;

use anyhow::{bail, Result};

use crate::{cmd::CommandExt as _, project_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stop after `cargo test`: no bench, package or VM stages
    #[arg(long)]
    pub quick: bool,
}

/// (command that must exist, Debian package that provides it).
pub const TOOLS: &[(&str, &str)] = &[
    ("clang", "clang"),
    ("llvm-strip", "llvm"),
    ("ip", "iproute2"),
    ("losetup", "mount"),
    ("setpriv", "util-linux"),
    ("prlimit", "util-linux"),
    ("aoeping", "aoetools"),
    ("vblade", "vblade"),
    ("fio", "fio"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    ("ethtool", "ethtool"),
    ("shellcheck", "shellcheck"),
    ("mkfs.ext4", "e2fsprogs"),
    // A Python module, not a command: an absolute path is checked as it is (`Path::join`).
    // tests/durability.rs runs tests/fixtures/faultfs.py with /usr/bin/python3.
    ("/usr/lib/python3/dist-packages/fusepy.py", "python3-fusepy"),
    // `vm-test --client ipxe`: the firmware, and what builds the disk it boots from.
    ("/usr/lib/ipxe/ipxe.lkrn", "ipxe"),
    ("extlinux", "extlinux"),
    ("/usr/lib/syslinux/mbr/mbr.bin", "syslinux-common"),
    // deploy_check scores the systemd units with `systemd-analyze security --offline=yes`.
    ("systemd-analyze", "systemd"),
    // `cargo xtask package` lints the .deb (cargo-deb itself comes from crates.io:
    // `crate::package::ensure_cargo_deb`).
    ("lintian", "lintian"),
    // tests/control.rs checks a scrape of the metrics endpoint with promtool.
    ("promtool", "prometheus"),
    // deploy/debian/install-test.sh checks that `man xblade` renders.
    ("man", "man-db"),
];

fn have(cmd: &str) -> bool {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ]
    .iter()
    .any(|d| std::path::Path::new(d).join(cmd).exists())
}

/// Install the Debian packages for any missing tool (as root), or explain what is missing.
pub fn ensure_tools(tools: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(c, _)| !have(c))
        .map(|(_, p)| *p)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing tools; install them with: sudo apt-get install -y {}",
            missing.join(" ")
        );
    }
    eprintln!(
        "xtask: installing Debian packages the tests need: {}",
        missing.join(" ")
    );
    run_loudly(Command::new("apt-get").args(["update", "-qq"]))?;
    run_loudly(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Whether we run as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Says what it runs, then runs it ([`CommandExt::run`]).
fn run_loudly(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {}", crate::cmd::line(cmd));
    cmd.run()
}

/// `cargo` (the one running xtask), in the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(project_root());
    c
}

/// Later stages: (name, xtask arguments). Each runs as `cargo xtask <args>`.
/// The bench builds xblade in release first, so the VM stages find `target/release/xblade`.
pub const STAGES: &[(&str, &[&str])] = &[
    ("bench smoke", &["bench", "--quick"]),
    (
        "soak: the storage node's load for 1 minute, with churn",
        &["soak", "--minutes", "1"],
    ),
    (
        "Debian package: build, lintian, install, check, purge",
        &["package", "--install-test"],
    ),
    (
        "real Linux initiator vs xblade, MTU 1500",
        &["vm-test", "--target", "xblade", "--backing", "file,blk"],
    ),
    (
        "real Linux initiator vs xblade, MTU 9000",
        &["vm-test", "--target", "xblade", "--mtu", "9000"],
    ),
    (
        "the same guest test vs vblade, for comparison",
        &["vm-test", "--target", "vblade", "--test", "io"],
    ),
    // iPXE boots Linux from the export through INT 13h (sanboot), then Linux's aoe driver
    // takes the disk over. The vblade stages come last: their table shows this run's boot
    // times side by side (reported, not asserted).
    (
        "iPXE sanboot (firmware initiator) vs xblade, MTU 1500",
        &[
            "vm-test",
            "--client",
            "ipxe",
            "--target",
            "xblade",
            "--backing",
            "file,blk",
        ],
    ),
    (
        "iPXE sanboot vs xblade, MTU 9000",
        &[
            "vm-test", "--client", "ipxe", "--target", "xblade", "--mtu", "9000",
        ],
    ),
    (
        "iPXE sanboot vs vblade, MTU 1500, for comparison",
        &[
            "vm-test",
            "--client",
            "ipxe",
            "--target",
            "vblade",
            "--backing",
            "file,blk",
        ],
    ),
    (
        "iPXE sanboot vs vblade, MTU 9000: boot times side by side",
        &[
            "vm-test", "--client", "ipxe", "--target", "vblade", "--mtu", "9000",
        ],
    ),
];

/// Run the suite.
pub fn run(Args { quick }: Args) -> Result<()> {
    if !is_root() {
        eprintln!(
            "xtask: WARNING: not root: the end-to-end tests (netns, XDP, loop devices) will be SKIPPED \
             (and fail under CI=true). Run as root for the full suite."
        );
    }
    ensure_tools(TOOLS)?;
    if !quick {
        crate::package::ensure_cargo_deb()?;
    }
    crate::ebpf::run(crate::ebpf::Args { check: true })?;
    run_loudly(cargo().args(["fmt", "--all", "--check"]))?;
    run_loudly(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_loudly(cargo().args(["test", "--workspace"]))?;
    if !quick {
        for (name, xargs) in STAGES {
            eprintln!("xtask: stage {name}");
            run_loudly(cargo().args(["xtask"]).args(*xargs))?;
        }
    }
    eprintln!("xtask: all tests passed");
    Ok(())
}
