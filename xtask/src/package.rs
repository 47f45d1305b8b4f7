//! `cargo xtask package [--install-test]`: the Debian package of xblade.
//!
//! 1. `cargo build --release -p xblade -p aoe-bench`.
//! 2. Man pages and shell completions, from the binaries just built, into
//!    `target/deb-assets/` (emptied first), where `[package.metadata.deb]` in
//!    `target-daemon/Cargo.toml` takes them from:
//!    - `xblade man target/deb-assets/man` (writes `xblade.8`, and maybe more pages), the same
//!      for `aoe-bench` (`aoe-bench.1`);
//!    - `xblade completions bash|zsh|fish` on stdout, into `completions/xblade.bash`,
//!      `completions/_xblade` and `completions/xblade.fish`; `aoe-bench.bash`, `_aoe-bench` and
//!      `aoe-bench.fish` likewise.
//! 3. `cargo deb -p xblade --no-build` (cargo-deb from crates.io, installed with
//!    `cargo install cargo-deb --locked` when missing).
//! 4. `lintian` on the .deb: every `E:` line fails the task, warnings are printed.
//! 5. With `--install-test`: `deploy/debian/install-test.sh <the .deb>` (installs it with
//!    `dpkg -i`, checks it, purges it; needs root).
//!
//! Prints where the .deb is. `cargo xtask test` runs it with `--install-test`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};

use crate::{cmd::CommandExt as _, project_root, test::cargo};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Then install the package, check it and purge it (deploy/debian/install-test.sh; needs
    /// root)
    #[arg(long)]
    pub install_test: bool,
}

/// The binaries whose man pages and completions the package ships: (binary, man page).
const BINARIES: &[(&str, &str)] = &[("xblade", "xblade.8"), ("aoe-bench", "aoe-bench.1")];
/// Where the package's generated files go, under the target directory.
const ASSETS: &str = "deb-assets";
const INSTALL_TEST: &str = "deploy/debian/install-test.sh";

pub fn run(Args { install_test }: Args) -> Result<()> {
    crate::test::ensure_tools(&[("lintian", "lintian")])?;
    ensure_cargo_deb()?;
    let root = project_root();
    if install_test {
        ensure!(
            root.join(INSTALL_TEST).exists(),
            "{INSTALL_TEST} is missing: it installs, checks and purges the package"
        );
    }

    eprintln!("package: cargo build --release -p xblade -p aoe-bench");
    cargo()
        .args(["build", "--release", "-p", "xblade", "-p", "aoe-bench"])
        .run()?;
    let target = target_dir()?;
    let assets = target.join(ASSETS);
    generate_assets(&target.join("release"), &assets)?;

    eprintln!("package: cargo deb -p xblade --no-build");
    let out = cargo()
        .args(["deb", "-p", "xblade", "--no-build"])
        .read_showing_stderr()?;
    let deb = built_deb(&out)?;

    lint(&deb)?;
    if install_test {
        eprintln!("package: {INSTALL_TEST} {}", deb.display());
        let ran = Command::new("bash")
            .arg(root.join(INSTALL_TEST))
            .arg(&deb)
            .current_dir(&root)
            .run();
        if ran.is_err() && std::env::var("CI").as_deref() != Ok("true") {
            // It installs into / and so runs only in CI (or when told --yes).
            return ran.context(
                "the install test refuses to install into / outside CI: on a throwaway \
                 machine, run `CI=true cargo xtask package --install-test`",
            );
        }
        ran?;
    }
    println!("package: {}", deb.display());
    Ok(())
}

/// Installs cargo-deb (`cargo install cargo-deb --locked`, as .ci/run does) unless `cargo deb`
/// already works.
pub fn ensure_cargo_deb() -> Result<()> {
    if cargo().args(["deb", "--version"]).read().is_ok() {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deb: cargo install cargo-deb --locked");
    cargo()
        .args(["install", "cargo-deb", "--locked"])
        .run()
        .context("installing cargo-deb")?;
    cargo()
        .args(["deb", "--version"])
        .read()
        .context("cargo-deb installed, but `cargo deb` does not run")
        .map(drop)
}

/// The workspace's target directory, from `cargo metadata` (so `CARGO_TARGET_DIR` and
/// `build.target-dir` count).
fn target_dir() -> Result<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        target_directory: PathBuf,
    }
    let json = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .read()?;
    let metadata: Metadata =
        serde_json::from_str(&json).context("reading `cargo metadata`'s output")?;
    Ok(metadata.target_directory)
}

/// Man pages and completions of each of [`BINARIES`] (in `bin_dir`) into `assets`.
fn generate_assets(bin_dir: &Path, assets: &Path) -> Result<()> {
    if assets.exists() {
        fs::remove_dir_all(assets).with_context(|| format!("emptying {}", assets.display()))?;
    }
    let (man, completions) = (assets.join("man"), assets.join("completions"));
    for dir in [&man, &completions] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for (name, page) in BINARIES {
        let bin = bin_dir.join(name);
        Command::new(&bin)
            .arg("man")
            .arg(&man)
            .read()
            .with_context(|| format!("{name}'s man pages (`{name} man DIR`)"))?;
        ensure!(
            man.join(page).is_file(),
            "`{} man {}` wrote no {page}",
            bin.display(),
            man.display()
        );
        for (shell, file) in [
            ("bash", format!("{name}.bash")),
            ("zsh", format!("_{name}")),
            ("fish", format!("{name}.fish")),
        ] {
            let script = Command::new(&bin)
                .args(["completions", shell])
                .read()
                .with_context(|| format!("{name}'s {shell} completions"))?;
            ensure!(
                !script.trim().is_empty(),
                "`{} completions {shell}` printed nothing",
                bin.display()
            );
            let path = completions.join(file);
            fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let mut written: Vec<String> = Vec::new();
    for dir in [&man, &completions] {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            written.push(
                path.strip_prefix(assets)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
            );
        }
    }
    written.sort();
    eprintln!(
        "package: {} files in {}: {}",
        written.len(),
        assets.display(),
        written.join(" ")
    );
    Ok(())
}

/// The .deb cargo-deb made: the last line of its stdout.
fn built_deb(stdout: &str) -> Result<PathBuf> {
    let deb = stdout
        .lines()
        .map(str::trim)
        .rfind(|line| line.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb named no .deb on stdout: {stdout:?}"))?;
    ensure!(
        deb.is_file(),
        "cargo deb said it wrote {}, which is not there",
        deb.display()
    );
    Ok(deb)
}

/// `lintian` on the .deb: its warnings are printed, any error fails.
fn lint(deb: &Path) -> Result<()> {
    eprintln!("package: lintian {}", deb.display());
    let out = Command::new("lintian").arg(deb).capture()?;
    let text = out.stdout_text();
    let verdict = lintian_verdict(&text);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        println!("  {line}");
    }
    if !verdict.errors.is_empty() {
        bail!(
            "lintian found {} error(s) in {}:\n  {}",
            verdict.errors.len(),
            deb.display(),
            verdict.errors.join("\n  ")
        );
    }
    // No error tag, yet a failure: lintian itself failed.
    out.check()?;
    eprintln!(
        "package: lintian: no errors, {} warning(s)",
        verdict.warnings.len()
    );
    Ok(())
}

/// lintian's tags by severity (`E: pkg: tag ...`, `W: ...`).
#[derive(Debug, Default, PartialEq, Eq)]
struct Verdict {
    errors: Vec<String>,
    warnings: Vec<String>,
}

fn lintian_verdict(text: &str) -> Verdict {
    let mut v = Verdict::default();
    for line in text.lines() {
        if line.starts_with("E: ") {
            v.errors.push(line.to_owned());
        } else if line.starts_with("W: ") {
            v.warnings.push(line.to_owned());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lintian_and_cargo_deb() {
        let text = "W: xblade: no-manual-page usr/bin/aoe-bench\n\
                    N:\n\
                    N:   Each binary in /usr/bin should have a manual page\n\
                    E: xblade: binary-without-manpage usr/sbin/xblade\n\
                    I: xblade: hardening-no-fortify-functions\n";
        let v = lintian_verdict(text);
        assert_eq!(
            v.errors,
            ["E: xblade: binary-without-manpage usr/sbin/xblade"]
        );
        assert_eq!(v.warnings.len(), 1);
        assert!(lintian_verdict("").errors.is_empty());

        let dir = std::env::temp_dir().join(format!("xtask-package-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let deb = dir.join("xblade_0.1.0-1_amd64.deb");
        fs::write(&deb, b"!<arch>\n").unwrap();
        let out = format!("warning: something\n{}\n", deb.display());
        assert_eq!(built_deb(&out).unwrap(), deb);
        assert!(built_deb("nothing\n").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
