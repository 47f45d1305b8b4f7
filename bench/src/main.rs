//! `aoe-bench`: a userspace AoE initiator and load generator over AF_XDP.
//!
//! - `aoe-bench discover -i IFACE`: broadcast Query Config, IDENTIFY every responder, list them.
//! - `aoe-bench run -i IFACE --target eS.L ...`: fio-like load with a Linux-like window and
//!   retransmit timer, latency histogram, optional self-checking data (`--verify`).
//! - `aoe-bench echo -i IFACE`: a storage-less responder, the ceiling `run` can be measured
//!   against.
//! - `aoe-bench man DIR`, `aoe-bench completions bash|zsh|fish`: the manual pages and the
//!   shell completions the Debian package ships.
//!
//! Exit status: 0 on success; 1 on a fatal error, or if `run` saw any ATA, AoE, short-read or
//! verify error; 2 on a usage error.
#![forbid(unsafe_code)]

mod cli;
mod discover;
mod echo;
mod flow;
mod hist;
mod net;
mod pattern;
mod report;
mod run;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;

use cli::{Cli, Command, PortArgs};

/// SIGINT/SIGTERM set the returned flag: the command stops, reports and detaches. A second
/// signal exits at once (status 130).
fn install_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))
            .context("installing a signal handler")?;
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing a signal handler")?;
    }
    Ok(stop)
}

fn pin(port: &PortArgs) -> Result<()> {
    if let Some(cpu) = port.cpu {
        let ok = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
        anyhow::ensure!(ok, "could not pin the thread to CPU {cpu}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The two that write files or stdout need no signal handling and no NIC.
    match &cli.command {
        Command::Man(a) => {
            return match cli::write_man_pages(&a.dir) {
                Ok(pages) => {
                    for p in pages {
                        println!("{}", p.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "aoe-bench: error: writing manual pages into {}: {e}",
                        a.dir.display()
                    );
                    ExitCode::FAILURE
                }
            };
        }
        Command::Completions(a) => {
            // Into memory first: clap_complete panics on a failed write (`... | head`).
            let mut script = Vec::new();
            cli::write_completions(a.shell, &mut script);
            let mut out = std::io::stdout().lock();
            return match out.write_all(&script).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                // Its reader went away (`| head`): done, as `ls | head` is.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!(
                        "aoe-bench: error: writing the completion script to standard output: {e}"
                    );
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let result = install_signals().and_then(|stop| match &cli.command {
        Command::Discover(a) => pin(&a.port)
            .and_then(|()| discover::discover(a, &stop))
            .map(|()| true),
        Command::Run(a) => pin(&a.port).and_then(|()| run::run(a, &stop)),
        Command::Echo(a) => pin(&a.port)
            .and_then(|()| echo::echo(a, &stop))
            .map(|()| true),
        Command::Man(_) | Command::Completions(_) => unreachable!("handled above"),
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("aoe-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
