//! `cargo xtask vm-test --client ipxe`: a diskless boot. iPXE, in qemu, boots Linux from the
//! target's export through BIOS INT 13h (`sanboot aoe:e1.0`); the booted Linux then takes the
//! same export over with its own `aoe` driver, as a root-on-AoE system does.
//!
//! - The firmware is Debian's iPXE (`apt-get install ipxe`): `/usr/lib/ipxe/ipxe.lkrn`, which
//!   qemu loads as a Linux kernel (SeaBIOS's linuxboot ROM), with an iPXE script as its initrd
//!   (`target/vm/ipxe-<pid>.ipxe`: `ifopen net0`, `sanboot aoe:e1.0`). Its build has AoE and
//!   the virtio-net driver (its banner: `Features: ... AoE ...`). The VM's NIC is virtio-net on
//!   the tap, with no option ROM of its own. `-machine graphics=off` has SeaBIOS copy the BIOS
//!   screen to the serial console, so iPXE's and the boot loader's messages reach the log.
//! - The export is a copy of the boot disk of [`super::bootdisk`]: MBR (syslinux's mbr.bin),
//!   an ext2 partition with extlinux, Debian's kernel and an initramfs whose `/init` is
//!   `xtask/src/vm/sanboot-init.sh`. iPXE sends AoE requests of 2 sectors, one at a time:
//!   the boot loader, then ~10 MB of kernel and initramfs, is ~10,000 round trips.
//! - Pass: the booted kernel's `/init` reports `BOOTED` (the firmware read the boot loader,
//!   the kernel and the initramfs from the target), then `PASS` after its own checks (see
//!   sanboot-init.sh), and the host's checks hold: the guest read sector 0 and the boot
//!   sector of partition 1 as they are in the image, and both files with their checksums; the
//!   guest's MTU is the one asked for; afterwards the backing file's boot sectors are
//!   unchanged, its partition is clean (`e2fsck -fn`) and holds the file the guest wrote.
//!
//! Times come from when each console line reached the host, counted from qemu's start: iPXE
//! started, e1.0 opened (`Booting from SAN device`), the boot loader's banner, `Loading
//! /vmlinuz... ok`, `Loading /initrd.img...ok`, the kernel's `/init`. They are reported (and
//! kept per target, MTU and backing in `target/vm/ipxe-boot-<label>.txt`, printed side by side
//! after every run), never asserted. Retries: only the documented initiator stall of the
//! Linux `aoe` driver (see [`super::initiator_stall`]), in the Linux part; nothing in the
//! firmware's part is ever run again.

use std::{
    fmt::Write as _,
    fs,
    os::unix::process::ExitStatusExt,
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{ensure, Context, Result};

use crate::cmd::{self, CommandExt as _};

use super::{
    add_nic,
    bootdisk::{self, BootDisk, PARTITION_START},
    fields, guest,
    host::{self, Event, Qemu, Stopped, Tap, Target},
    pcap_path, run_tests, write_summary, Backing, Options, RemoveOnDrop, TestResult, MARKER, SHELF,
    SLOT,
};

/// Debian's iPXE as a Linux-kernel-format image (`apt-get install ipxe`).
pub const IPXE_LKRN: &str = "/usr/lib/ipxe/ipxe.lkrn";
/// Per boot, unless `--timeout`: a boot takes ~10 s here, a few times that on a slow CI host.
pub const TIMEOUT: Duration = Duration::from_secs(120);
/// What the guest writes to `/linux-was-here`, before its boot id.
const WRITTEN: &str = "boot_id ";

/// Console lines worth quoting in a failure: iPXE's, SeaBIOS's and syslinux's errors, and a
/// kernel that could not start its /init.
const CONSOLE_ERRORS: &[&str] = &[
    "Could not",
    "Boot failed",
    "Boot error",
    "failed: ",
    "Kernel panic",
    "Initramfs unpacking failed",
    "System halted",
    "error -- ",
];

/// When the firmware's part of a boot got where, from qemu's start (console line arrivals).
#[derive(Default)]
pub struct Firmware {
    /// The iPXE script started.
    ipxe: Option<Duration>,
    /// iPXE opened the AoE device (config query and IDENTIFY answered) and boots from it.
    san: Option<Duration>,
    /// The boot loader's banner: the MBR, extlinux's boot sector and ldlinux.sys were read.
    loader: Option<Duration>,
    /// `Loading /vmlinuz... ok`.
    kernel: Option<Duration>,
    /// `Loading /initrd.img...ok`.
    initrd: Option<Duration>,
    /// Kernel + initramfs bytes.
    payload_bytes: u64,
    /// Error lines from iPXE, the BIOS, the boot loader or the kernel.
    errors: Vec<String>,
    /// The last few non-empty console lines, for a failure that printed no error line.
    last_lines: std::collections::VecDeque<String>,
}

impl Firmware {
    /// `ipxe 0.9s, e1.0 open +0.3s, loader +0.4s, kernel+initrd 9.6 MiB +2.3s (4.4 MB/s)`.
    pub fn describe(&self) -> String {
        let mut text = String::from("firmware:");
        let mut previous = Duration::ZERO;
        let steps = [
            ("ipxe", self.ipxe),
            ("e1.0 open", self.san),
            ("loader", self.loader),
        ];
        for (what, at) in steps {
            let Some(at) = at else {
                let _ = write!(text, " {what} -");
                return text;
            };
            if what == "ipxe" {
                let _ = write!(text, " {what} {:.1}s,", at.as_secs_f64());
            } else {
                let _ = write!(
                    text,
                    " {what} +{:.1}s,",
                    at.saturating_sub(previous).as_secs_f64()
                );
            }
            previous = at;
        }
        match self.payload_time() {
            Some(time) => {
                let _ = write!(
                    text,
                    " kernel+initrd {:.1} MiB +{:.1}s ({:.1} MB/s)",
                    self.payload_bytes as f64 / f64::from(1 << 20),
                    time.as_secs_f64(),
                    self.payload_bytes as f64 / time.as_secs_f64().max(0.01) / 1e6
                );
            }
            None => text += " kernel+initrd -",
        }
        text
    }

    /// From the boot loader's banner to the initramfs loaded: the kernel and the initramfs
    /// through INT 13h.
    fn payload_time(&self) -> Option<Duration> {
        self.initrd?.checked_sub(self.loader?)
    }

    /// Where a boot that gave no verdict stopped.
    fn stuck_at(&self, booted: bool) -> &'static str {
        match (self.ipxe, self.san, self.loader, self.kernel, self.initrd) {
            (None, ..) => "iPXE never ran its script",
            (_, None, ..) => "iPXE did not open the AoE device (no `Booting from SAN device`)",
            (_, _, None, ..) => {
                "no boot loader: the firmware did not read the MBR, extlinux's boot sector or \
                 ldlinux.sys through INT 13h"
            }
            (_, _, _, None, _) => "the boot loader did not load /vmlinuz through INT 13h",
            (.., None) => "the boot loader did not load /initrd.img through INT 13h",
            _ if !booted => "the kernel loaded from the export never ran its /init",
            _ => "the guest gave no verdict",
        }
    }

    /// What the console said, for a failure message: its error lines, else its last lines.
    fn console_quote(&self) -> String {
        if !self.errors.is_empty() {
            format!(" [console: {}]", self.errors.join(" | "))
        } else if !self.last_lines.is_empty() {
            let last: Vec<&str> = self.last_lines.iter().map(String::as_str).collect();
            format!(" [last console lines: {}]", last.join(" | "))
        } else {
            String::new()
        }
    }

    /// Notes a console line that marks a step (the first of each).
    fn observe(&mut self, text: &str, at: Duration) {
        let plain = strip_escapes(text);
        if !plain.is_empty() && !text.starts_with("[vm-test host") {
            if self.last_lines.len() == 3 {
                self.last_lines.pop_front();
            }
            self.last_lines.push_back(plain);
        }
        let set = |slot: &mut Option<Duration>| {
            slot.get_or_insert(at);
        };
        if text.contains("XBLADE-VM: IPXE-STARTED") {
            set(&mut self.ipxe);
        } else if text.contains("Booting from SAN device") {
            set(&mut self.san);
        } else if text.contains("SYSLINUX ") || text.contains("EXTLINUX ") {
            set(&mut self.loader);
        } else if text.contains("Loading /vmlinuz") && text.contains("ok") {
            set(&mut self.kernel);
        } else if text.contains("Loading /initrd.img") && text.contains("ok") {
            set(&mut self.initrd);
        } else if CONSOLE_ERRORS.iter().any(|error| text.contains(error)) && self.errors.len() < 8 {
            self.errors.push(strip_escapes(text));
        }
    }
}

/// A console line without the ANSI escape sequences SeaBIOS's serial console and iPXE emit.
fn strip_escapes(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // Parameters, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out.trim().to_owned()
}

/// The script iPXE runs (its initrd). Any failure prints a FAIL line with iPXE's error number
/// (see https://ipxe.org/err); the host stops the VM on it.
fn script(shelf: u16, slot: u8) -> String {
    format!(
        "#!ipxe\n\
         echo {MARKER}IPXE-STARTED\n\
         ifopen net0 || goto failed\n\
         sanboot aoe:e{shelf}.{slot} || goto failed\n\
         :failed\n\
         echo {MARKER}FAIL sanboot iPXE could not boot aoe:e{shelf}.{slot} (error ${{errno}})\n"
    )
}

/// `cargo xtask vm-test --client ipxe ...`.
pub(super) fn run(options: &Options, root: &Path, out: &Path, target_bin: &Path) -> Result<()> {
    ensure!(
        options.ipxe.exists(),
        "{} does not exist (apt-get install ipxe, or pass --ipxe PATH)",
        options.ipxe.display()
    );
    let ipxe_version = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "ipxe"])
        .read()
        .unwrap_or_else(|_| "version unknown".to_owned());
    let prepare_started = Instant::now();
    let cache = root.join("target/vm-cache");
    let guest = guest::prepare_sanboot(&cache, root)?;
    let disk = bootdisk::prepare(&cache, &guest, SHELF, SLOT)?;
    eprintln!(
        "vm-test: boot disk {} (ready in {:.1}s)",
        disk.description,
        prepare_started.elapsed().as_secs_f64()
    );

    let run_id = std::process::id();
    let script_path = out.join(format!("ipxe-{run_id}.ipxe"));
    let _remove_script = RemoveOnDrop((!options.keep).then(|| script_path.clone()));
    fs::write(&script_path, script(SHELF, SLOT))?;

    let tap = Tap::create(options.mtu)?;
    let backings: Vec<&str> = options.backings.iter().map(|b| b.name()).collect();
    eprintln!(
        "vm-test: iPXE {} ({ipxe_version}) boots from {} on {} (MTU {}), backing: {}",
        options.ipxe.display(),
        target_bin.display(),
        tap.name,
        options.mtu,
        backings.join(", ")
    );
    let results = run_tests(options, |backing, test| {
        Sanboot {
            options,
            disk: &disk,
            script: &script_path,
            tap: &tap,
            out,
            target_bin,
            backing,
        }
        .run(test)
    })?;
    drop(tap);

    let header = format!(
        "vm-test --client ipxe against {} ({}), MTU {}\nfirmware: {} (Debian ipxe {ipxe_version})\n\
         disk: {}\n",
        options.target.name(),
        target_bin.display(),
        options.mtu,
        options.ipxe.display(),
        disk.description,
    );
    let failed = write_summary(options, out, header, &results)?;
    // `run_tests` runs every test on the first backing, then on the next.
    for (index, result) in results.iter().enumerate() {
        let backing = options.backings[index / options.tests.len()];
        record_boot(options, out, backing, result)?;
    }
    println!("{}", boot_table(out, run_id)?);
    if options.keep {
        println!(
            "kept: {} and the backing files /dev/shm/xbvm-{run_id}-sanboot.img{}",
            script_path.display(),
            if options.backings.contains(&Backing::Blk) {
                format!(" and {}/xbvm-{run_id}-sanboot-blk.img", out.display())
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

/// One iPXE boot against one backing.
struct Sanboot<'a> {
    options: &'a Options,
    disk: &'a BootDisk,
    script: &'a Path,
    tap: &'a Tap,
    out: &'a Path,
    target_bin: &'a Path,
    backing: Backing,
}

impl Sanboot<'_> {
    fn run(&self, test: &str) -> TestResult {
        let mut result = TestResult::new(self.options, self.backing, self.out, test);
        result.firmware = Some(Firmware {
            payload_bytes: self.disk.payload_bytes,
            ..Firmware::default()
        });
        let console = result.console.clone();
        let backing = super::backing_image(self.backing, self.out, test);
        if let Err(error) = self.boot_and_check(&backing, &console, &mut result) {
            result.failures.push(format!("{error:#}"));
        }
        if !self.options.keep {
            let _ = fs::remove_file(&backing);
        }
        result
    }

    fn boot_and_check(
        &self,
        backing: &Path,
        console: &Path,
        result: &mut TestResult,
    ) -> Result<()> {
        fs::copy(&self.disk.image, backing)
            .with_context(|| format!("copying the boot disk to {}", backing.display()))?;
        // Declared before the target, so it is dropped (detached) after the target is killed.
        let (_loop_device, export) = super::export_backing(self.backing, backing, result)?;
        let mut target = Target::start(host::TargetCommand {
            bin: self.target_bin.to_owned(),
            args: self.options.target_args.clone(),
            shelf: SHELF,
            slot: SLOT,
            netif: self.tap.name.clone(),
            backing: export,
            log: result.target_log.clone(),
        })?;

        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-accel", "tcg", "-machine", "graphics=off", "-m", "512"])
            .args(["-smp", "1", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.options.ipxe)
            .arg("-initrd")
            .arg(self.script);
        let label = self.options.label(self.backing);
        add_nic(
            &mut command,
            &self.tap.name,
            self.options.mtu,
            self.options
                .pcap
                .then(|| pcap_path(self.out, &label, "sanboot"))
                .as_deref(),
        );
        let spawned = Instant::now();
        let mut qemu = Qemu::spawn(&mut command, console)?;
        qemu.note(&cmd::line(&command));

        // The firmware's steps go back into `result` whatever happens.
        let mut firmware = result.firmware.take().unwrap_or_default();
        let followed = self.follow(&mut qemu, &mut target, &mut firmware, result);
        let stuck_at = firmware.stuck_at(result.booted.is_some());
        // Where the firmware's part failed, what the console said (the guest says it itself).
        let quote = if result.booted.is_none() {
            firmware.console_quote()
        } else {
            String::new()
        };
        result.firmware = Some(firmware);
        let verdict = followed?;
        // After a timeout, a dead target or iPXE's failure there is nothing left to wait for.
        let stuck = !result.failures.is_empty() || result.booted.is_none();
        let grace = Duration::from_secs(if stuck { 0 } else { 10 });
        if qemu.finish(grace, console)?.is_none() && !stuck {
            result.failures.push("qemu did not power off".to_owned());
        }
        result.total = spawned.elapsed();
        match verdict {
            Some(Ok(())) => {}
            Some(Err(reason)) => result.failures.push(format!("FAIL {reason}{quote}")),
            None if result.failures.is_empty() => {
                result.failures.push(format!("{stuck_at}{quote}"));
            }
            None => {
                if let Some(failure) = result.failures.last_mut() {
                    failure.push_str(&quote);
                }
            }
        }
        match target.stop()? {
            Stopped::Exited(status)
                if status.success() || status.signal() == Some(libc::SIGTERM) => {}
            Stopped::Exited(status) => result.notes.push(format!("target stopped with {status}")),
            Stopped::Killed => result.notes.push("target ignored SIGTERM".to_owned()),
            Stopped::NotRunning => {}
        }

        if result.failures.is_empty() {
            let checks = self
                .check_reports(result)
                .and_then(|()| self.check_backing(backing, result));
            if let Err(error) = checks {
                result.failures.push(format!("host check: {error:#}"));
            }
        }
        Ok(())
    }

    /// Follows the console until qemu closes it, the timeout, the target's death or iPXE's
    /// failure; returns the verdict (`PASS`/`FAIL` line), if any.
    fn follow(
        &self,
        qemu: &mut Qemu,
        target: &mut Target,
        firmware: &mut Firmware,
        result: &mut TestResult,
    ) -> Result<Option<Result<(), String>>> {
        let deadline = Instant::now() + self.options.timeout;
        let mut verdict = None;
        loop {
            let line = match qemu.next_event(deadline)? {
                Event::Line(line) => line,
                Event::Closed => break,
                Event::Timeout => {
                    let message = format!(
                        "timed out after {}s: {}",
                        self.options.timeout.as_secs(),
                        firmware.stuck_at(result.booted.is_some())
                    );
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
            firmware.observe(&line.text, line.at);
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
                    let values = fields(rest);
                    result.frame_bytes = values.get("frame_bytes").cloned();
                    result.info.insert("ready".to_owned(), values);
                }
                "INFO" => {
                    let (what, values) = rest.split_once(' ').unwrap_or((rest, ""));
                    result.info.insert(what.to_owned(), fields(values));
                }
                "PASS" => {
                    verdict.get_or_insert(Ok(()));
                    result.verdict = Some(line.at);
                }
                "FAIL" => {
                    let from = if result.booted.is_some() {
                        "guest"
                    } else {
                        "iPXE"
                    };
                    verdict.get_or_insert(Err(format!("({from}) {}", strip_escapes(rest))));
                    result.verdict = Some(line.at);
                    if result.booted.is_none() {
                        // iPXE's script failed: nothing will power the VM off.
                        break;
                    }
                }
                _ => {}
            }
        }
        Ok(verdict)
    }

    /// What the guest read through Linux's initiator is what the image holds.
    fn check_reports(&self, result: &TestResult) -> Result<()> {
        let info = |what: &str, key: &str| -> Result<&str> {
            result
                .info
                .get(what)
                .and_then(|values| values.get(key))
                .map(String::as_str)
                .with_context(|| format!("the guest did not report `{what} {key}=`"))
        };
        let mtu = info("ready", "mtu")?;
        ensure!(
            mtu == self.options.mtu.to_string(),
            "the guest's eth0 has MTU {mtu}, not {}",
            self.options.mtu
        );
        let sector_is = |what: &str, sector: u64, name: &str| -> Result<()> {
            let expect = hex(&self.disk.read(sector * 512, 512)?);
            let got = info(what, "hex")?;
            ensure!(
                got == expect,
                "{name} (sector {sector}) read through /dev/etherd/e{SHELF}.{SLOT} differs from \
                 the image's: {}",
                first_difference(got, &expect)
            );
            Ok(())
        };
        sector_is("mbr", 0, "the MBR")?;
        let start = info("vbr", "start")?;
        ensure!(
            start == PARTITION_START.to_string(),
            "the guest's kernel puts partition 1 at sector {start}, not {PARTITION_START}"
        );
        sector_is("vbr", PARTITION_START, "extlinux's boot sector")?;
        for (file, expect) in [
            ("vmlinuz", &self.disk.kernel_sha256),
            ("initrd.img", &self.disk.initrd_sha256),
        ] {
            let got = info(&format!("file-{file}"), "sha256")?;
            ensure!(
                got == expect,
                "/{file} read through /dev/etherd/e{SHELF}.{SLOT}p1 has SHA-256 {got}, \
                 expected {expect}"
            );
        }
        Ok(())
    }

    /// The backing file after the run: boot sectors untouched, partition clean, and holding
    /// what the guest wrote.
    fn check_backing(&self, backing: &Path, result: &TestResult) -> Result<()> {
        let boot_area = usize::try_from((PARTITION_START + 2) * 512)?;
        let now = fs::read(backing)?;
        let image = self.disk.read(0, boot_area)?;
        ensure!(
            now.get(..boot_area) == Some(&image[..]),
            "the backing file's first {boot_area} bytes (MBR, gap, extlinux's boot sector) \
             changed during the run"
        );
        let partition = format!("{}?offset={}", backing.display(), PARTITION_START * 512);
        // e2fsck reports problems on stdout.
        let fsck = Command::new("e2fsck").args(["-fn", &partition]).capture()?;
        ensure!(
            fsck.status.success(),
            "host e2fsck -fn on partition 1: {}\n{}",
            fsck.status,
            fsck.stdout_text()
        );
        let written = Command::new("debugfs")
            .args(["-R", "cat /linux-was-here"])
            .arg(&partition)
            .read()?;
        let boot_id = result
            .info
            .get("written")
            .and_then(|values| values.get("boot_id"))
            .context("the guest did not report `written boot_id=`")?;
        ensure!(
            written.trim_end() == format!("{WRITTEN}{boot_id}"),
            "/linux-was-here on the backing file holds {written:?}, expected \"{WRITTEN}{boot_id}\""
        );
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// "byte 446: 00 instead of 80" for two hex strings.
fn first_difference(got: &str, expect: &str) -> String {
    if got.len() != expect.len() {
        return format!("{} bytes instead of {}", got.len() / 2, expect.len() / 2);
    }
    let at = got
        .as_bytes()
        .chunks(2)
        .zip(expect.as_bytes().chunks(2))
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    format!(
        "byte {at}: {} instead of {}",
        &got[2 * at..2 * at + 2],
        &expect[2 * at..2 * at + 2]
    )
}

/// Keeps this run's times in `target/vm/ipxe-boot-<label>.txt` for [`boot_table`].
fn record_boot(options: &Options, out: &Path, backing: Backing, result: &TestResult) -> Result<()> {
    let seconds = |duration: Option<Duration>| {
        duration.map_or_else(|| "-".to_owned(), |d| format!("{:.2}", d.as_secs_f64()))
    };
    let firmware = result.firmware.as_ref();
    let line = format!(
        "target={} mtu={} backing={} result={} boot={} reads={} payload_bytes={} total={:.2} \
         unix={} pid={}\n",
        options.target.name(),
        options.mtu,
        backing.name(),
        if result.failures.is_empty() {
            "PASS"
        } else {
            "FAIL"
        },
        seconds(result.booted),
        seconds(firmware.and_then(Firmware::payload_time)),
        firmware.map_or(0, |f| f.payload_bytes),
        result.total.as_secs_f64(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        std::process::id(),
    );
    let path = out.join(format!("ipxe-boot-{}.txt", options.label(backing)));
    fs::write(&path, line).with_context(|| format!("writing {}", path.display()))
}

/// Every recorded iPXE boot (the latest per target, MTU and backing), side by side.
fn boot_table(out: &Path, run_id: u32) -> Result<String> {
    let mut rows = Vec::new();
    for entry in fs::read_dir(out)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("ipxe-boot-") && name.ends_with(".txt") {
            let text = fs::read_to_string(out.join(&name))?;
            rows.push(fields(text.trim()));
        }
    }
    let get = |row: &std::collections::BTreeMap<String, String>, key: &str| {
        row.get(key).cloned().unwrap_or_else(|| "-".to_owned())
    };
    rows.sort_by_key(|row| {
        (
            get(row, "backing"),
            get(row, "mtu").parse::<u32>().unwrap_or(0),
            get(row, "target"),
        )
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut table = String::from(
        "iPXE sanboot boot times (reported, not asserted). boot: qemu start to the booted \
         kernel's /init; kernel+initrd: the boot loader's banner to the initramfs loaded, \
         through INT 13h\n",
    );
    let _ = writeln!(
        table,
        "  {:<7} {:>5}  {:<7} {:<6} {:>7}  {:>22}  {:>7}  measured",
        "target", "MTU", "backing", "result", "boot", "kernel+initrd", "total"
    );
    for row in &rows {
        let reads = match (
            get(row, "reads").parse::<f64>(),
            get(row, "payload_bytes").parse::<f64>(),
        ) {
            (Ok(secs), Ok(bytes)) => {
                format!("{secs:.1}s ({:.1} MB/s)", bytes / secs.max(0.01) / 1e6)
            }
            _ => "-".to_owned(),
        };
        let when = if get(row, "pid") == run_id.to_string() {
            "this run".to_owned()
        } else {
            match get(row, "unix").parse::<u64>() {
                Ok(at) => ago(now.saturating_sub(at)),
                Err(_) => "-".to_owned(),
            }
        };
        let _ = writeln!(
            table,
            "  {:<7} {:>5}  {:<7} {:<6} {:>7}  {:>22}  {:>7}  {when}",
            get(row, "target"),
            get(row, "mtu"),
            get(row, "backing"),
            get(row, "result"),
            format!("{}s", get(row, "boot")),
            reads,
            format!("{}s", get(row, "total")),
        );
    }
    Ok(table)
}

fn ago(seconds: u64) -> String {
    match seconds {
        0..=119 => format!("{seconds} s ago"),
        120..=7199 => format!("{} min ago", seconds / 60),
        _ => format!("{} h ago", seconds / 3600),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::process::Command;

    use super::{first_difference, script, strip_escapes, Firmware};
    use crate::cmd::CommandExt as _;

    #[test]
    fn console_lines() {
        assert_eq!(
            strip_escapes("\u{1b}c\u{1b}[?7l\u{1b}[2JXBLADE-VM: BOOTED 2.24\r"),
            "XBLADE-VM: BOOTED 2.24"
        );
        assert_eq!(
            strip_escapes("\u{1b}[0;1miPXE 1.0\u{1b}[0m -- Open"),
            "iPXE 1.0 -- Open"
        );
        let mut firmware = Firmware::default();
        let at = Duration::from_secs;
        assert_eq!(firmware.stuck_at(false), "iPXE never ran its script");
        firmware.observe("XBLADE-VM: IPXE-STARTED\r", at(1));
        firmware.observe("Registered SAN device 0x80", at(2));
        firmware.observe("Booting from SAN device 0x80", at(2));
        assert!(firmware.stuck_at(false).starts_with("no boot loader"));
        firmware.observe("SYSLINUX 6.04 EDD 20210613 Copyright (C) 1994-2015", at(3));
        firmware.observe("SYSLINUX 6.04 20210613 Copyright (C) 1994-2015", at(9));
        firmware.observe("Loading /vmlinuz... ok", at(5));
        firmware.observe("Loading /initrd.img...ok", at(6));
        firmware.observe(
            "Could not open SAN device: Connection timed out (http://ipxe.org/4c006035)",
            at(7),
        );
        assert_eq!(firmware.loader, Some(at(3)));
        assert_eq!(firmware.payload_time(), Some(at(3)));
        assert_eq!(firmware.errors.len(), 1);
        assert!(firmware
            .console_quote()
            .starts_with(" [console: Could not open SAN device"));
        firmware.errors.clear();
        assert!(firmware
            .console_quote()
            .starts_with(" [last console lines: Loading /vmlinuz... ok | "));
        assert!(firmware.stuck_at(false).contains("never ran its /init"));
        firmware.payload_bytes = 3 << 20;
        assert_eq!(
            firmware.describe(),
            "firmware: ipxe 1.0s, e1.0 open +1.0s, loader +1.0s, kernel+initrd 3.0 MiB +3.0s (1.0 MB/s)"
        );
        assert_eq!(first_difference("00aa", "00ab"), "byte 1: aa instead of ab");
        assert!(script(1, 0).contains("sanboot aoe:e1.0 || goto failed\n"));
        assert!(script(1, 0).contains("(error ${errno})"));
    }

    /// The guest's `/init` is POSIX sh for busybox: shellcheck-clean (CI installs shellcheck).
    #[test]
    fn sanboot_init_is_shellcheck_clean() {
        let script = crate::project_root().join(crate::vm::guest::SANBOOT_INIT);
        assert!(script.exists(), "{}", script.display());
        match Command::new("shellcheck")
            .args(["-s", "sh"])
            .arg(&script)
            .capture()
        {
            Ok(out) => assert!(
                out.status.success(),
                "shellcheck {}:\n{}",
                script.display(),
                out.stdout_text()
            ),
            Err(_) if std::env::var_os("CI").is_none() => {
                eprintln!("shellcheck not installed: sanboot-init.sh not linted");
            }
            Err(error) => panic!("shellcheck: {error}"),
        }
    }
}
