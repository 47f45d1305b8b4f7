//! `cargo xtask <task> [args]`: the project's automation, in Rust.
//!
//! Each task is one module with a `run(args)` entry point and one row in [`TASKS`].
//! To add a task: write `src/<task>.rs` with `pub fn run(args: &[String]) -> anyhow::Result<()>`,
//! declare the module below and add a row to [`TASKS`]. Argument parsing is plain
//! `std::env::args`, so the xtask builds in seconds and needs no extra crates.

mod bench;
#[cfg(test)]
mod deploy_check;
mod ebpf;
pub mod lab;
mod test;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Result};

/// One `cargo xtask` subcommand.
struct Task {
    /// The subcommand, as typed after `cargo xtask`.
    name: &'static str,
    /// The usage line's arguments, shown by `cargo xtask help`.
    usage: &'static str,
    /// One line for `cargo xtask help`.
    about: &'static str,
    /// Runs the task with the arguments that follow its name.
    run: fn(&[String]) -> Result<()>,
}

const TASKS: &[Task] = &[Task {
    name: "ebpf",
    usage: "[--check]",
    about: "rebuild ebpf/aoe_steer.o from ebpf/aoe_steer.bpf.c (--check: fail if the committed object is stale)",
    run: ebpf::run,
},
Task {
    name: "test",
    usage: "[--quick]",
    about: "the whole test suite as CI runs it: tools, ebpf check, fmt, clippy, cargo test, VM and bench stages",
    run: test::run_suite,
},
Task {
    name: "vm-test",
    usage: "[--client linux|ipxe] [--target vblade|xblade] [--xblade-bin PATH] [--mtu 1500|9000] [--backing file,blk] [--keep] [--pcap] [--test io,fs,restart|sanboot]",
    about: "boot Debian's kernel in qemu (TCG) and run its aoe initiator, or iPXE's sanboot, against a target on a tap (needs root)",
    run: vm::run,
},
Task {
    name: "lab",
    usage: "up [--queues N] [--mtu M] [--ram-mib N] [--disk-mib N] [--loop] | down | status",
    about: "network-namespace lab: netns xbl-t/xbl-i, veth xbl-tv/xbl-iv, RAM/disk images, loop device (needs root)",
    run: lab::run,
},
Task {
    name: "bench",
    usage: "[--quick] [--time SECS] [--keep-lab]",
    about: "xblade vs vblade vs ceilings (aoe-bench echo, fio) on the lab: table, target/bench/*.json and *.svg (needs root)",
    run: bench::run,
}];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match try_main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main(args: &[String]) -> Result<()> {
    let Some((name, rest)) = args.split_first() else {
        print_help();
        bail!("no task given");
    };
    if matches!(name.as_str(), "help" | "-h" | "--help") {
        print_help();
        return Ok(());
    }
    match TASKS.iter().find(|task| task.name == name) {
        Some(task) => (task.run)(rest),
        None => {
            print_help();
            bail!("unknown task `{name}`")
        }
    }
}

fn print_help() {
    eprintln!("usage: cargo xtask <task> [args]\n\ntasks:");
    for task in TASKS {
        eprintln!("  {} {}\n      {}", task.name, task.usage, task.about);
    }
    eprintln!("  help\n      print this message");
}

/// The workspace root: the parent of this crate's directory.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
