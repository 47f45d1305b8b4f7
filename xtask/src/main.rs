//! `cargo xtask <task> [options]`: the project's automation, in Rust.
//!
//! Each task is one module with an `Args` struct (clap) and a `run(Args)` entry point, and one
//! variant of [`Task`]. To add a task: write `src/<task>.rs` with `#[derive(clap::Args)] pub
//! struct Args` and `pub fn run(args: Args) -> anyhow::Result<()>`, declare the module below and
//! add a variant to [`Task`] (its doc comment is the help line). Programs are run through
//! [`cmd`], which puts the command line, exit status and stderr tail into every error.

mod bench;
mod cmd;
#[cfg(test)]
mod deploy_check;
mod ebpf;
pub mod lab;
mod package;
mod soak;
mod test;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};

/// The project's automation: build, test, benchmark and package xblade.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Rebuild ebpf/aoe_steer.o from ebpf/aoe_steer.bpf.c (--check: fail if the committed
    /// object is stale)
    Ebpf(ebpf::Args),
    /// The whole test suite as CI runs it: tools, ebpf check, fmt, clippy, cargo test, then the
    /// bench, VM and package stages
    Test(test::Args),
    /// Boot Debian's kernel in qemu (TCG) and run its aoe initiator, or iPXE's sanboot, against
    /// a target on a tap (needs root)
    VmTest(vm::Args),
    /// Network-namespace lab: netns xbl-t/xbl-i, veth xbl-tv/xbl-iv, RAM/disk images, loop
    /// device (needs root)
    Lab(lab::Args),
    /// xblade vs vblade vs ceilings (aoe-bench echo, fio) on the lab: table,
    /// target/bench/*.json and *.svg (needs root)
    Bench(bench::Args),
    /// The storage node's load on one xblade for N minutes (default 10) with exports removed
    /// and added back and an initiator coming and going: RSS, descriptors and IOPS must stay
    /// flat, nothing lost (needs root; target/soak/*.json and *.svg)
    Soak(soak::Args),
    /// Build the Debian package: release build, man pages and completions, cargo deb, lintian
    /// (--install-test: install, check and purge it)
    Package(package::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Ebpf(args) => ebpf::run(args),
        Task::Test(args) => test::run(args),
        Task::VmTest(args) => vm::run(args),
        Task::Lab(args) => lab::run(args),
        Task::Bench(args) => bench::run(args),
        Task::Package(args) => package::run(args),
        Task::Soak(args) => soak::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's directory.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every `cargo xtask ...` line the docs, CI and `cargo xtask test` give still parses.
    #[test]
    fn documented_command_lines_parse() {
        for line in [
            "ebpf",
            "ebpf --check",
            "test",
            "test --quick",
            "bench",
            "bench --quick",
            "bench --time 3 --keep-lab",
            "lab up --ram-mib 256",
            "lab up --queues 2 --mtu=9000 --disk-mib 64 --loop",
            "lab down",
            "lab status",
            "vm-test",
            "vm-test --mtu 9000",
            "vm-test --target xblade",
            "vm-test --target xblade --xblade-bin PATH --test io,restart",
            "vm-test --target-arg -d --target-arg -s",
            "vm-test --keep",
            "vm-test --client ipxe --target xblade --mtu 9000 --backing file,blk",
            "vm-test --client ipxe --target vblade",
            "vm-test --client linux --target vblade --mtu 9000 --backing file,blk --pcap",
            "package",
            "package --install-test",
        ] {
            let argv = std::iter::once("cargo xtask").chain(line.split_whitespace());
            if let Err(e) = Cli::try_parse_from(argv) {
                panic!("`cargo xtask {line}`: {e}");
            }
        }
        for (line, stage) in test::STAGES
            .iter()
            .map(|(name, argv)| (argv.join(" "), name))
        {
            let argv = std::iter::once("cargo xtask").chain(line.split_whitespace());
            if let Err(e) = Cli::try_parse_from(argv) {
                panic!("stage {stage}: `cargo xtask {line}`: {e}");
            }
        }
        assert!(Cli::try_parse_from(["cargo xtask", "frobnicate"]).is_err());
    }
}
