//! `cargo xtask ebpf [--check]`: rebuild the committed XDP object.
//!
//! `ebpf/aoe_steer.o` is committed and embedded by `xblade-ebpf`, so `cargo build` never needs
//! clang. This task rebuilds it from `ebpf/aoe_steer.bpf.c`:
//!
//! ```text
//! cd ebpf && clang -O2 -g -target bpfel -Wall -Wextra -Werror \
//!     -fdebug-prefix-map=<abs ebpf dir>=. -c aoe_steer.bpf.c -o <tmp>/aoe_steer.debug.o
//! llvm-strip --strip-debug <tmp>/aoe_steer.debug.o -o ebpf/aoe_steer.o
//! ```
//!
//! The build is byte-reproducible: clang runs inside `ebpf/` on a relative source name, and the
//! prefix map rewrites the compilation directory to `.`, so no absolute path reaches the object.
//! `--strip-debug` drops the DWARF sections but keeps `.BTF`/`.BTF.ext`, which aya needs for the
//! BTF-style `.maps`. The bytes depend on the clang/LLVM version: the committed object is built
//! with Debian's clang 14 (what `apt-get install clang llvm` gives on Debian 12, as in CI).
//!
//! `--check` builds into a temporary directory and fails if the result differs from the
//! committed object (CI runs it). Override the tools with `CLANG=...` and `LLVM_STRIP=...`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::{bail, Context, Result};

use crate::cmd::CommandExt as _;

/// The clang major version the committed object was built with.
const EXPECTED_CLANG_MAJOR: &str = "14";
const SOURCE: &str = "aoe_steer.bpf.c";
const OBJECT: &str = "aoe_steer.o";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Build into a temporary directory and fail if the result differs from the committed
    /// object (CI runs this)
    #[arg(long)]
    pub check: bool,
}

pub fn run(Args { check }: Args) -> Result<()> {
    let ebpf_dir = crate::project_root().join("ebpf");
    let committed = ebpf_dir.join(OBJECT);
    let scratch = Scratch::new()?;
    let built = scratch.path().join(OBJECT);
    let clang_version = build(&ebpf_dir, scratch.path(), &built)?;
    let new_bytes = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;

    if check {
        let old_bytes = fs::read(&committed)
            .with_context(|| format!("reading the committed object {}", committed.display()))?;
        if old_bytes != new_bytes {
            let first_difference = old_bytes
                .iter()
                .zip(&new_bytes)
                .position(|(old, new)| old != new)
                .unwrap_or(old_bytes.len().min(new_bytes.len()));
            bail!(
                "ebpf/{OBJECT} is stale: rebuilding ebpf/{SOURCE} gives {} bytes (sha256 {}), \
                 the committed object has {} bytes (sha256 {}), first difference at byte {}.\n\
                 Run `cargo xtask ebpf` and commit ebpf/{OBJECT}.\n\
                 Note: the bytes depend on the compiler; the committed object is built with \
                 clang {EXPECTED_CLANG_MAJOR}, this build used `{clang_version}`.",
                new_bytes.len(),
                sha256(&built),
                old_bytes.len(),
                sha256(&committed),
                first_difference,
            );
        }
        eprintln!(
            "ebpf/{OBJECT} is up to date ({} bytes, sha256 {})",
            new_bytes.len(),
            sha256(&committed)
        );
        return Ok(());
    }

    fs::write(&committed, &new_bytes)
        .with_context(|| format!("writing {}", committed.display()))?;
    eprintln!(
        "wrote ebpf/{OBJECT} ({} bytes, sha256 {}) with `{clang_version}`",
        new_bytes.len(),
        sha256(&committed)
    );
    if !clang_version.contains(&format!("version {EXPECTED_CLANG_MAJOR}.")) {
        eprintln!(
            "warning: CI checks the object with clang {EXPECTED_CLANG_MAJOR}; \
             an object built with another version will fail `cargo xtask ebpf --check`"
        );
    }
    Ok(())
}

/// Compiles and strips `ebpf_dir/SOURCE` into `out`, using `scratch` for the unstripped object.
/// Returns clang's version line.
fn build(ebpf_dir: &Path, scratch: &Path, out: &Path) -> Result<String> {
    let clang = tool("CLANG", "clang");
    let strip = tool("LLVM_STRIP", "llvm-strip");
    let version = clang_version(&clang)?;
    let unstripped = scratch.join("aoe_steer.debug.o");

    let mut prefix_map = std::ffi::OsString::from("-fdebug-prefix-map=");
    prefix_map.push(ebpf_dir);
    prefix_map.push("=.");
    Command::new(&clang)
        .current_dir(ebpf_dir)
        .args([
            "-O2", "-g", "-target", "bpfel", "-Wall", "-Wextra", "-Werror",
        ])
        .arg(prefix_map)
        .args(["-c", SOURCE, "-o"])
        .arg(&unstripped)
        .run()?;
    Command::new(&strip)
        .arg("--strip-debug")
        .arg(&unstripped)
        .arg("-o")
        .arg(out)
        .run()?;
    Ok(version)
}

fn tool(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

fn clang_version(clang: &Path) -> Result<String> {
    let output = Command::new(clang)
        .arg("--version")
        .read()
        .context("install clang and llvm (Debian: `apt-get install -y clang llvm`) or point CLANG=/path/to/clang at one")?;
    Ok(output
        .lines()
        .next()
        .unwrap_or("unknown clang")
        .trim()
        .to_owned())
}

/// The file's sha256 from `sha256sum`, or a placeholder when that tool is missing: the hash is
/// only informative, the comparison is on the bytes.
fn sha256(path: &Path) -> String {
    Command::new("sha256sum")
        .arg(path)
        .read()
        .ok()
        .and_then(|output| output.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unavailable (no sha256sum)".to_owned())
}

/// A private temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "xblade-xtask-ebpf-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        if path.exists() {
            fs::remove_dir_all(&path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// Builds from a copy of `ebpf/` at another path: the bytes must not depend on where the
    /// tree lives. Skipped (loudly) without clang.
    #[test]
    fn build_is_path_independent() {
        let clang = tool("CLANG", "clang");
        if clang_version(&clang).is_err() {
            // Straight to the stderr fd: libtest captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED (needs clang): build_is_path_independent"
            );
            return;
        }
        let ebpf_dir = crate::project_root().join("ebpf");
        let scratch = Scratch::new().unwrap();
        let elsewhere = scratch.path().join("some").join("other").join("ebpf");
        fs::create_dir_all(&elsewhere).unwrap();
        fs::copy(ebpf_dir.join(SOURCE), elsewhere.join(SOURCE)).unwrap();

        let here = scratch.path().join("here.o");
        let there = scratch.path().join("there.o");
        build(&ebpf_dir, scratch.path(), &here).unwrap();
        build(&elsewhere, scratch.path(), &there).unwrap();
        let here = fs::read(here).unwrap();
        assert_eq!(here, fs::read(there).unwrap());
        for dir in [&ebpf_dir, &elsewhere] {
            let dir = dir.as_os_str().as_encoded_bytes();
            assert!(
                !here.windows(dir.len()).any(|w| w == dir),
                "the build directory leaked into the object"
            );
        }
    }
}
