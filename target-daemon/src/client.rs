//! The client commands: they talk to a running daemon through its control socket (`status`,
//! `stat`, `add`, `remove`, `reload`, `mask`, `reserve`, `config-string`), or need no daemon
//! (`import-vblade`, `man`, `completions`).

use std::fmt::Display;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::CommandFactory;
use xblade::ctl::{self, Request, Response};
use xblade::status::Status;

use crate::cli::{Cli, Command, ControlArg};

/// How long a command waits for the daemon's answer (an add or remove drains the workers).
const TIMEOUT: Duration = Duration::from_secs(60);

/// Run a client command.
pub fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Status { json, control } => status(json, &control),
        Command::Stat {
            interval,
            count,
            exports,
            control,
        } => stat(interval, count, &exports, &control),
        Command::Add { export, control } => act(
            &control,
            Request::Add {
                export: export.export(),
            },
        ),
        Command::Remove { export, control } => act(&control, Request::Remove { name: export }),
        Command::Reload { control } => act(&control, Request::Reload),
        Command::Mask {
            export,
            add,
            remove,
            clear,
            control,
        } => {
            if add.is_empty() && remove.is_empty() && !clear {
                bail!("xblade mask: say what to change: --add MAC, --remove MAC or --clear");
            }
            act(
                &control,
                Request::Mask {
                    name: export,
                    add,
                    remove,
                    clear,
                },
            )
        }
        Command::Reserve {
            export,
            clear,
            control,
        } => act(
            &control,
            Request::Reserve {
                name: export,
                clear,
            },
        ),
        Command::ConfigString {
            export,
            set,
            clear,
            control,
        } => act(
            &control,
            Request::ConfigString {
                name: export,
                set,
                clear,
            },
        ),
        Command::ImportVblade { dir } => {
            emit(xblade::import_vblade::convert(&dir)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            man(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics on a failed write (`... | head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "xblade", &mut script);
            emit(String::from_utf8_lossy(&script))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { .. } => bail!("serve is not a client command"),
    }
}

/// The one daemon a command that changes something talks to.
fn one_socket(control: &ControlArg) -> Result<PathBuf> {
    if let Some(p) = &control.control {
        return Ok(p.clone());
    }
    let all = ctl::sockets_in_run_dir()?;
    match all.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "several xblade daemons run here ({}): say which with --control PATH",
            all.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Send a request that changes something; print what happened.
fn act(control: &ControlArg, req: Request) -> Result<ExitCode> {
    let path = one_socket(control)?;
    let r = ctl::call(&path, &req, TIMEOUT)?;
    answer(&path, r)
}

fn answer(path: &Path, r: Response) -> Result<ExitCode> {
    if r.ok {
        if let Some(m) = r.message {
            emit(format_args!("{m}\n"))?;
        }
        Ok(ExitCode::SUCCESS)
    } else {
        Err(anyhow!(
            "{} (xblade at {})",
            r.error.unwrap_or_else(|| "failed".into()),
            path.display()
        ))
    }
}

/// The status of the daemon at `path`.
fn fetch(path: &Path) -> Result<Status> {
    let r = ctl::call(path, &Request::Status, TIMEOUT)?;
    if !r.ok {
        bail!(
            "{} (xblade at {})",
            r.error.unwrap_or_else(|| "failed".into()),
            path.display()
        );
    }
    r.status
        .map(|s| *s)
        .ok_or_else(|| anyhow!("xblade at {} sent no status", path.display()))
}

fn status(json: bool, control: &ControlArg) -> Result<ExitCode> {
    let paths = match &control.control {
        Some(p) => vec![p.clone()],
        None => ctl::sockets_in_run_dir()?,
    };
    let mut all = Vec::new();
    let mut failed = false;
    for p in &paths {
        match fetch(p) {
            Ok(s) => all.push(s),
            Err(e) => {
                eprintln!("xblade: error: {e:#}");
                failed = true;
            }
        }
    }
    if json {
        // One daemon: its object; several: an array of them.
        let out = if control.control.is_some() || all.len() == 1 {
            serde_json::to_string_pretty(&all.first())?
        } else {
            serde_json::to_string_pretty(&all)?
        };
        emit(format_args!("{out}\n"))?;
    } else {
        for (i, s) in all.iter().enumerate() {
            if i > 0 {
                emit("\n")?;
            }
            emit(xblade::statview::status_text(s))?;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn stat(
    interval: f64,
    count: Option<u64>,
    only: &[String],
    control: &ControlArg,
) -> Result<ExitCode> {
    if !(interval.is_finite() && interval >= 0.05) {
        bail!("--interval must be at least 0.05 seconds");
    }
    let path = one_socket(control)?;
    let mut prev = fetch(&path)?;
    let mut at = Instant::now();
    let mut n = 0u64;
    emit(format_args!("{}\n", xblade::statview::stat_header()))?;
    while count.is_none_or(|c| n < c) {
        std::thread::sleep(Duration::from_secs_f64(interval));
        let cur = fetch(&path)?;
        let secs = at.elapsed().as_secs_f64();
        at = Instant::now();
        for line in xblade::statview::stat_lines(&prev, &cur, secs, only) {
            emit(format_args!("{line}\n"))?;
        }
        prev = cur;
        n += 1;
    }
    Ok(ExitCode::SUCCESS)
}

/// Standard output was closed by its reader (`xblade stat | head -3`): the command ends there,
/// quietly and successfully, as `ls | head` does.
#[derive(Debug)]
pub struct StdoutClosed;

impl Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Write `text` to standard output and flush it. A reader that went away is [`StdoutClosed`]
/// (`print!` would panic); any other failure says it was standard output that failed.
fn emit(text: impl Display) -> Result<()> {
    let mut out = std::io::stdout().lock();
    write!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new(StdoutClosed),
            _ => anyhow::Error::new(e).context("writing to standard output"),
        })
}

/// xblade.8, and xblade-SUBCOMMAND.8 for each subcommand.
fn man(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    let write = |name: &str, cmd: clap::Command| -> Result<()> {
        let path = dir.join(format!("{name}.8"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).section("8").render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
    };
    for sub in cmd.get_subcommands() {
        let name = format!("xblade-{}", sub.get_name());
        if matches!(sub.get_name(), "help") {
            continue;
        }
        // clap names commands with &'static str: one small leak per page, in a one-shot command.
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        write(&name, sub.clone().name(leaked))?;
    }
    write("xblade", cmd)?;
    Ok(())
}
