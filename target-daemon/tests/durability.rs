//! Durability of acknowledged writes and behaviour on failing storage (issue #12), end to end:
//! xblade in the netns lab, driven by the raw AoE initiator, with the storage observed from
//! below.
//!
//! - A block device is served with O_DIRECT and RWF_DSYNC: an acknowledged write is in the loop
//!   device's backing file at the ack, and the device saw a cache flush for it. (xblade used to
//!   map block devices because their node's filesystem, devtmpfs, reports TMPFS_MAGIC; the
//!   writes then sat in the device's page cache.)
//! - A regular file on a real filesystem (ext4) is written with O_DIRECT and DSYNC; with
//!   `--write-back` the per-write flushes go away (negative control).
//! - Only a regular file on tmpfs is in memory, and the log says it is VOLATILE.
//! - A block device returning EIO gets ATA errors for the failing sectors; the rest is served
//!   and the daemon lives on (it used to die of SIGBUS).
//!
//! The flush counter is field 16 ("flush I/Os", Documentation/block/stat.rst) of
//! `/sys/block/loopN/stat`; on Linux 6.18 the line has 17 fields and a DSYNC write to a loop
//! device (volatile write cache, no FUA) moves that field and no discard field.
//!
//! These tests need root, loop devices, `mkfs.ext4` (e2fsprogs), `/dev/fuse` and Debian's
//! `python3-fusepy` (run by `/usr/bin/python3`). Without root, or without one of those, a test
//! prints a loud `SKIPPED (...)` line saying what to install; under `CI=true` it fails instead.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aoe::ata;
use aoe::initiator::{self, AtaRequest};
use common::{pattern, privileged, Client, Daemon, Lab};

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
/// O_DIRECT on x86_64 and most architectures (octal, as `/proc/PID/fdinfo` prints `flags:`).
const O_DIRECT_OCTAL: u32 = 0o40000;

/// Runs a command and panics with its stderr when it fails; returns stdout.
#[track_caller]
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Skip (loudly) or, under `CI=true`, fail when a prerequisite is missing.
fn requires(test: &str, check: Result<(), String>) -> bool {
    match check {
        Ok(()) => true,
        Err(why) => {
            let msg = format!("{test}: SKIPPED ({why})");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg}; CI=true forbids skipping");
            }
            // Straight to fd 2: libtest captures `eprintln!` of passing tests.
            let _ = writeln!(std::io::stderr(), "\n{msg}");
            false
        }
    }
}

fn have_mkfs_ext4() -> Result<(), String> {
    let found = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .iter()
        .any(|p| Path::new(p).exists());
    if found {
        Ok(())
    } else {
        Err("needs mkfs.ext4: apt-get install -y e2fsprogs".into())
    }
}

/// The FUSE test's prerequisites: `/dev/fuse` and fusepy importable by Debian's python3.
fn have_fusepy() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("needs /dev/fuse: modprobe fuse".into());
    }
    let ok = Command::new(PYTHON)
        .args([
            "-c",
            "try:\n import fusepy\nexcept ImportError:\n import fuse\nfuse_ok = 1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "needs fusepy for {PYTHON}: apt-get install -y python3-fusepy"
        ))
    }
}

/// Debian's interpreter, not whatever `python3` is first on PATH (a pyenv shim would not see
/// the Debian package).
const PYTHON: &str = "/usr/bin/python3";

/// A loop device, detached on drop.
struct LoopDev {
    dev: String,
}

impl LoopDev {
    /// `losetup --find --show [extra] backing`.
    fn new(backing: &Path, extra: &[&str]) -> LoopDev {
        let out = run(Command::new("losetup")
            .args(["--find", "--show"])
            .args(extra)
            .arg(backing));
        LoopDev {
            dev: out.trim().to_string(),
        }
    }

    fn path(&self) -> &str {
        &self.dev
    }

    fn sysfs(&self, file: &str) -> String {
        let name = self.dev.trim_start_matches("/dev/");
        let p = format!("/sys/block/{name}/{file}");
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    /// Flush requests completed by the device: field 16 of `/sys/block/loopN/stat`
    /// (Documentation/block/stat.rst: 1-4 reads, 5-8 writes, 9 in flight, 10-11 times, 12-15
    /// discards, 16 flush I/Os, 17 flush ticks).
    fn flushes(&self) -> u64 {
        let stat = self.sysfs("stat");
        let fields: Vec<&str> = stat.split_whitespace().collect();
        assert!(
            fields.len() >= 17,
            "{}: /sys/block stat has {} fields, expected 17 (flush I/Os is field 16): {stat:?}",
            self.dev,
            fields.len()
        );
        fields[15].parse().unwrap()
    }

    /// Panics unless the device has a volatile write cache without FUA: then a DSYNC write is
    /// a write plus a flush request, which the flush counter sees (a FUA write would not be
    /// counted anywhere in /sys/block/*/stat).
    fn expect_write_cache_without_fua(&self) {
        let cache = self.sysfs("queue/write_cache");
        let fua = self.sysfs("queue/fua");
        assert_eq!(
            (cache.trim(), fua.trim()),
            ("write back", "0"),
            "{}: this test counts DSYNC writes by their flush requests, which needs a volatile \
             write cache without FUA (a FUA write is not a flush and no counter shows it)",
            self.dev
        );
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// A running daemon that is killed on drop (when a test panics before stopping it, so that it
/// releases its loop device).
struct Running(Option<Daemon>);

impl Running {
    fn get(&self) -> &Daemon {
        self.0.as_ref().unwrap()
    }

    fn stop(mut self) -> (ExitStatus, String) {
        self.0.take().unwrap().stop()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(d) = self.0.as_mut() {
            d.kill9();
        }
    }
}

/// Whether a (not yet reaped) child process is still running: `/proc/PID/stat` state not Z.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(|c| c != 'Z' && c != 'X'))
        })
        .unwrap_or(false)
}

/// Send an ATA request; on silence, panic saying whether the daemon still runs, with its log.
fn ask(c: &mut Client, d: &Daemon, req: &AtaRequest<'_>) -> (u8, u8, Vec<u8>) {
    let a = c.addr();
    let mut f = vec![0u8; 9100];
    let n = initiator::ata_request(&mut f, &a, req);
    match c.transact(&f[..n], a.tag) {
        Some(r) => Client::ata_regs(&r),
        None => panic!(
            "no answer to {req:?}; xblade {}\n{}",
            if alive(d.pid()) {
                "still runs"
            } else {
                "has exited"
            },
            d.log()
        ),
    }
}

/// Discover `shelf.slot` and aim at it, asking up to 5 times (2 s each): a daemon may log its
/// readiness line a moment before its worker takes frames (427c3a5 logged it before starting
/// the worker threads), and a lone first query then goes unanswered.
fn discover(c: &mut Client, d: &Daemon, shelf: u16, slot: u8) {
    c.shelf = shelf;
    c.slot = slot;
    for _ in 0..5 {
        c.target = aoe::wire::BROADCAST;
        let a = c.addr();
        let mut f = vec![0u8; 128];
        let n = initiator::config_request(&mut f, &a, aoe::wire::ccmd::READ, b"");
        if let Some(r) = c.transact(&f[..n], a.tag) {
            c.target = initiator::parse_response(&r).unwrap().src;
            return;
        }
    }
    panic!(
        "no answer to 5 config queries for {shelf}.{slot}; xblade {}\n{}",
        if alive(d.pid()) {
            "still runs"
        } else {
            "has exited"
        },
        d.log()
    );
}

fn write(c: &mut Client, d: &Daemon, lba: u64, data: &[u8]) -> (u8, u8) {
    let (s, e, _) = ask(c, d, &AtaRequest::write(lba, data));
    (s, e)
}

fn read(c: &mut Client, d: &Daemon, lba: u64, sectors: u8) -> (u8, u8, Vec<u8>) {
    let (s, e, mut data) = ask(c, d, &AtaRequest::read(lba, sectors));
    data.truncate(usize::from(sectors) * SECTOR as usize);
    (s, e, data)
}

/// `n` distinct, non-overlapping 2-sector LBAs scattered over `sectors`, in a shuffled order.
fn scattered_lbas(n: u64, sectors: u64) -> Vec<u64> {
    let stride = sectors / n;
    assert!(stride >= 4);
    // 29 is prime to n = 32, 64: a permutation of the slots.
    (0..n)
        .map(|i| {
            let slot = (i * 29) % n;
            slot * stride + (i * 37) % (stride - 2)
        })
        .collect()
}

/// Byte offsets (512-aligned) where `needle` (one sector) occurs in `hay`.
fn find_sector(hay: &[u8], needle: &[u8]) -> Vec<u64> {
    assert_eq!(needle.len(), SECTOR as usize);
    hay.chunks_exact(SECTOR as usize)
        .enumerate()
        .filter(|(_, s)| *s == needle)
        .map(|(i, _)| i as u64 * SECTOR)
        .collect()
}

/// The `flags:` of `/proc/PID/fdinfo/FD` for every descriptor of `pid` open on `path`.
fn open_flags(pid: u32, path: &Path) -> Vec<(String, u32)> {
    let want = std::fs::canonicalize(path).unwrap();
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target != want {
            continue;
        }
        let fd = e.file_name().into_string().unwrap();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap_or_else(|| panic!("no flags: in fdinfo {fd}: {info}"));
        v.push((fd, flags));
    }
    v
}

/// The daemon's "export ready" log line.
fn export_ready_line(log: &str) -> &str {
    log.lines()
        .find(|l| l.contains("export ready"))
        .unwrap_or_else(|| panic!("no \"export ready\" line:\n{log}"))
}

/// The exit counters' `io_errors` summed over workers.
fn io_errors(log: &str) -> u64 {
    log.match_indices("io_errors: ")
        .map(|(i, m)| {
            let rest = &log[i + m.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..end].parse::<u64>().unwrap()
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------

/// An 8 MiB loop device with a volatile write cache and no FUA (its backing file's path), served
/// as e1.0 with default options and discovered. Bound in this order, they drop in the reverse:
/// the daemon before the loop device it holds.
fn loop_export(lab: &Lab) -> (PathBuf, LoopDev, Running, Client) {
    let file = lab.image("loop.img", 8 * MIB);
    let lo = LoopDev::new(&file, &["--sector-size", "512"]);
    lo.expect_write_cache_without_fua();
    let d = Running(Some(lab.xblade(&["1", "0", "{if}", lo.path()])));
    let mut c = lab.client();
    discover(&mut c, d.get(), 1, 0);
    (file, lo, d, c)
}

/// Every acknowledged write to a block device is on the device when the ack arrives: the loop
/// driver wrote it into its backing file (read here as a plain tmpfs file), and the device saw
/// at least one flush request per write (RWF_DSYNC on a device with a volatile write cache and
/// no FUA is write + flush; on Linux 6.18 io_uring's O_DIRECT write becomes the FUA write that
/// the block layer turns into write + post-flush).
#[test]
fn acknowledged_writes_are_on_the_block_device_at_the_ack() {
    let name = "acknowledged_writes_are_on_the_block_device_at_the_ack";
    if !privileged(name) {
        return;
    }
    let lab = Lab::new();
    let (file, lo, d, mut c) = loop_export(&lab);

    let lbas = scattered_lbas(64, 8 * MIB / SECTOR);
    let start = lo.flushes();
    let mut missing = Vec::new();
    let mut unflushed = Vec::new();
    for (i, &lba) in lbas.iter().enumerate() {
        let data = pattern(0xd0_0000 + i as u64, lba, 2);
        let before = lo.flushes();
        assert_eq!(
            write(&mut c, d.get(), lba, &data),
            (ata::STATUS_OK, 0),
            "write at {lba}"
        );
        let after = lo.flushes();
        if common::file_bytes(&file, lba * SECTOR, data.len()) != data {
            missing.push(lba);
        }
        if after == before {
            unflushed.push(lba);
        }
    }
    let flushed = lo.flushes() - start;
    let log = d.get().log();
    let n = lbas.len();
    assert!(
        missing.is_empty() && unflushed.is_empty() && flushed >= n as u64,
        "{} of {n} acknowledged writes were not in the loop device's backing file at their ack \
         (LBAs {missing:?}); {} of {n} were acknowledged without a flush of {} (LBAs \
         {unflushed:?}), {flushed} flushes in all: served from a cache, not the device\n{}",
        missing.len(),
        unflushed.len(),
        lo.path(),
        export_ready_line(&log)
    );
    // Read back over the wire too.
    for (i, &lba) in lbas.iter().enumerate().step_by(7) {
        let (s, e, got) = read(&mut c, d.get(), lba, 2);
        assert_eq!((s, e), (ata::STATUS_OK, 0), "read at {lba}");
        assert!(
            got == pattern(0xd0_0000 + i as u64, lba, 2),
            "read back at {lba}"
        );
    }
    let (status, log) = d.stop();
    assert!(status.success(), "xblade exit {status}:\n{log}");
}

/// Writes that arrive together on a device with a volatile cache and no FUA share cache flushes
/// (group commit, `worker/commit.rs`), and each is still acknowledged only once it is in the
/// device's backing file and a flush issued after it was sent has completed: bursts of 16
/// writes, at most one group commit per 4 writes. (The device's own flush count is no measure:
/// the block layer merges concurrent flushes, 77-143 for these 256 writes either way.)
#[test]
fn concurrent_writes_share_commits_and_are_durable_at_the_ack() {
    let name = "concurrent_writes_share_commits_and_are_durable_at_the_ack";
    if !privileged(name) {
        return;
    }
    let lab = Lab::new();
    let (file, lo, d, mut c) = loop_export(&lab);

    let lbas = scattered_lbas(256, 8 * MIB / SECTOR);
    let start = lo.flushes();
    let mut unflushed = Vec::new();
    for (round, burst) in lbas.chunks(16).enumerate() {
        let sent = lo.flushes();
        let mut waiting = std::collections::HashMap::new();
        for (i, &lba) in burst.iter().enumerate() {
            let data = pattern(0xc0_0000 + (round * 16 + i) as u64, lba, 2);
            let a = c.addr();
            let mut f = vec![0u8; 2048];
            let n = initiator::ata_request(&mut f, &a, &AtaRequest::write(lba, &data));
            c.send(&f[..n]);
            waiting.insert(a.tag, (lba, data));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !waiting.is_empty() && Instant::now() < deadline {
            let Some(r) = c.recv() else { continue };
            let tag = u32::from_be_bytes([r[20], r[21], r[22], r[23]]);
            let Some((lba, data)) = waiting.remove(&tag) else {
                continue;
            };
            let flushed = lo.flushes() > sent;
            let (s, e, _) = Client::ata_regs(&r);
            assert_eq!((s, e), (ata::STATUS_OK, 0), "write at {lba}");
            assert!(
                common::file_bytes(&file, lba * SECTOR, data.len()) == data,
                "the write at {lba} was acknowledged before it was in {}'s backing file",
                lo.path()
            );
            if !flushed {
                unflushed.push(lba);
            }
        }
        assert!(
            waiting.is_empty(),
            "{} of a burst of 16 writes unanswered within 5 s\n{}",
            waiting.len(),
            d.get().log()
        );
    }
    let flushes = lo.flushes() - start;
    let (status, log) = d.stop();
    assert!(status.success(), "xblade exit {status}:\n{log}");
    let commits = common::counter(&log, "commits");
    let n = lbas.len() as u64;
    assert!(
        unflushed.is_empty(),
        "{} of {n} writes were acknowledged before any flush completed after they were sent \
         (LBAs {unflushed:?})",
        unflushed.len()
    );
    assert!(
        commits > 0 && commits <= n / 4,
        "{n} writes in bursts of 16: {commits} group commits ({flushes} flushes of {}); \
         expected the writes to share commits\n{}",
        lo.path(),
        export_ready_line(&log)
    );
}

/// ext4 on a loop device over a tmpfs file, mounted in a temporary directory; unmounted and
/// detached on drop (also when the test panics).
struct Ext4 {
    mnt: tempfile::TempDir,
    lo: LoopDev,
}

impl Ext4 {
    fn new(backing: &Path) -> Ext4 {
        let lo = LoopDev::new(backing, &[]);
        // No lazy inode-table or journal initialisation: its background writes and flushes would
        // land in the measurements.
        run(Command::new("mkfs.ext4").args([
            "-q",
            "-b",
            "4096",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            lo.path(),
        ]));
        let mnt = tempfile::Builder::new()
            .prefix("xblade-ext4-")
            .tempdir()
            .unwrap();
        // commit=600: jbd2 commits every 5 s by default, and each commit flushes the device (an
        // O_DIRECT write updates mtime, so there is always something to commit); that would
        // put stray flushes in the --write-back control. DSYNC writes still flush: fdatasync
        // issues the flush itself when there is nothing to commit.
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "commit=600", lo.path()])
            .arg(mnt.path()));
        Ext4 { mnt, lo }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        // Fields drop after this: the mount point directory, then the loop device.
        let ok = Command::new("umount")
            .arg(self.mnt.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.mnt.path())
                .status();
        }
    }
}

/// Writes to a regular file on a real filesystem go around the page cache (O_DIRECT: found in
/// the ext4 loop device's backing file right after the ack; the open file's flags show
/// O_DIRECT) and are durable at the ack (DSYNC: the device saw a flush per write). Negative
/// control: with `--write-back` the data still goes straight to the device, but the flush
/// counter stays flat over the writes, so the DSYNC check can fail; FLUSH CACHE EXT then flushes.
#[test]
fn file_export_writes_directly_and_durably() {
    let name = "file_export_writes_directly_and_durably";
    if !privileged(name) || !requires(name, have_mkfs_ext4()) {
        return;
    }
    let lab = Lab::new();
    let fs_file = lab.image("ext4.img", 64 * MIB);
    let fs = Ext4::new(&fs_file);
    fs.lo.expect_write_cache_without_fua();
    let img = fs.mnt.path().join("export.img");
    let export_bytes = 4 * MIB;
    run(Command::new("fallocate")
        .args(["-l", &export_bytes.to_string()])
        .arg(&img));
    // Write the allocated blocks once: fallocate leaves unwritten extents, and the first write
    // into one converts it (a journal commit, with flushes of its own, under DSYNC). Written
    // extents leave the per-write flush to DSYNC alone.
    // (Not `fs::write`: its O_TRUNC would free the fallocated blocks.)
    let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all(&vec![0u8; export_bytes as usize]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    run(Command::new("sync").arg("-f").arg(&img));
    let sectors = export_bytes / SECTOR;

    // (mode, extra args, seed, O_DIRECT, DSYNC). The last two are negative controls: with
    // --write-back the per-write flushes must go away ((b) can fail); with --buffered as well
    // the data stays in ext4's page cache and the descriptor has no O_DIRECT ((a) and (c) can
    // fail).
    for (mode, extra, seed, direct, durable) in [
        ("default", &[][..], 0xe0_0000u64, true, true),
        (
            "--write-back",
            &["--write-back"][..],
            0xf0_0000,
            true,
            false,
        ),
        (
            "--buffered --write-back",
            &["--buffered", "--write-back"][..],
            0xc0_0000,
            false,
            false,
        ),
    ] {
        let mut args = extra.to_vec();
        args.extend(["1", "0", "{if}", img.to_str().unwrap()]);
        let d = Running(Some(lab.xblade(&args)));
        let log = d.get().log();
        let ready = export_ready_line(&log);
        assert!(ready.contains("in_memory=false"), "{mode}: {ready}");

        // (c) The export's descriptor is O_DIRECT (not with --buffered).
        let fds = open_flags(d.get().pid(), &img);
        assert!(!fds.is_empty(), "{mode}: xblade has no fd open on {img:?}");
        for (fd, flags) in &fds {
            assert_eq!(
                flags & O_DIRECT_OCTAL != 0,
                direct,
                "{mode}: fd {fd} on {img:?} has flags {flags:o} (O_DIRECT is {O_DIRECT_OCTAL:o})"
            );
        }

        let mut c = lab.client();
        discover(&mut c, d.get(), 1, 0);
        let lbas = scattered_lbas(32, sectors);
        let start = fs.lo.flushes();
        let mut not_on_device = Vec::new();
        let mut unflushed = Vec::new();
        for (i, &lba) in lbas.iter().enumerate() {
            let data = pattern(seed + i as u64, lba, 2);
            let before = fs.lo.flushes();
            assert_eq!(
                write(&mut c, d.get(), lba, &data),
                (ata::STATUS_OK, 0),
                "{mode}: write at {lba}"
            );
            let after = fs.lo.flushes();
            // (a) Both sectors are in the loop device's backing file: past ext4's page cache.
            let dev = std::fs::read(&fs_file).unwrap();
            let found = data
                .chunks_exact(SECTOR as usize)
                .all(|s| find_sector(&dev, s).len() == 1);
            if !found {
                not_on_device.push(lba);
            }
            if after == before {
                unflushed.push(lba);
            }
        }
        let flushed = fs.lo.flushes() - start;
        if direct {
            assert!(
                not_on_device.is_empty(),
                "{mode}: {} of {} acknowledged writes were not on the ext4 loop device (its \
                 backing file) at their ack: LBAs {not_on_device:?}",
                not_on_device.len(),
                lbas.len()
            );
        } else {
            // Buffered and not synced: in the page cache until writeback (30 s by default).
            // Not "all of them": a `sync` elsewhere on the host may write some back meanwhile.
            assert!(
                !not_on_device.is_empty(),
                "{mode}: every buffered write-back write was on the device at its ack: the check \
                 for (a) cannot tell"
            );
        }
        // (b) DSYNC: a flush per write; --write-back: none at all.
        if durable {
            assert!(
                unflushed.is_empty() && flushed >= lbas.len() as u64,
                "{mode}: {} of {} writes acknowledged without a flush of {} (LBAs \
                 {unflushed:?}); {flushed} flushes in all",
                unflushed.len(),
                lbas.len(),
                fs.lo.path()
            );
        } else {
            assert_eq!(
                flushed,
                0,
                "{mode}: the flush counter of {} moved over {} write-back writes",
                fs.lo.path(),
                lbas.len()
            );
            // FLUSH CACHE EXT is a real fdatasync.
            let before = fs.lo.flushes();
            let flush = AtaRequest {
                cmd: ata::FLUSH_EXT,
                feature: 0,
                sectors: 0,
                lba: 0,
                data: None,
            };
            assert_eq!(ask(&mut c, d.get(), &flush).0, ata::STATUS_OK);
            assert!(
                fs.lo.flushes() > before,
                "{mode}: FLUSH CACHE EXT did not flush {}",
                fs.lo.path()
            );
        }
        let (status, log) = d.stop();
        assert!(status.success(), "{mode}: xblade exit {status}:\n{log}");
    }
}

/// A regular file on tmpfs is served from memory, and the log says it is volatile; a loop
/// device over that same file is a block device, not in memory (its node is on devtmpfs, which
/// reports TMPFS_MAGIC: what used to confuse xblade).
#[test]
fn in_memory_store_is_reported_volatile() {
    let name = "in_memory_store_is_reported_volatile";
    if !privileged(name) {
        return;
    }
    let lab = Lab::new();
    let file = lab.image("mem.img", 4 * MIB);

    let d = Running(Some(lab.xblade(&[
        "1",
        "0",
        "{if}",
        file.to_str().unwrap(),
    ])));
    let log = d.get().log();
    let ready = export_ready_line(&log);
    for want in [
        "in_memory=true",
        "kind=File",
        "VOLATILE",
        "contents are lost when the host reboots or loses power",
    ] {
        assert!(ready.contains(want), "tmpfs file: no {want:?} in {ready}");
    }
    let (status, log) = d.stop();
    assert!(status.success(), "xblade exit {status}:\n{log}");

    let lo = LoopDev::new(&file, &[]);
    let d = Running(Some(lab.xblade(&["1", "0", "{if}", lo.path()])));
    let log = d.get().log();
    let ready = export_ready_line(&log);
    for want in [
        "in_memory=false",
        "kind=BlockDevice",
        "durability=Sync",
        "commit=",
        "(io_uring; writes acknowledged once durable",
    ] {
        assert!(
            ready.contains(want),
            "loop device over a tmpfs file: no {want:?} in {ready}"
        );
    }
    assert!(
        !ready.contains("VOLATILE"),
        "loop device over a tmpfs file: {ready}"
    );
    let (status, log) = d.stop();
    assert!(status.success(), "xblade exit {status}:\n{log}");
}

/// `tests/fixtures/faultfs.py`: one memory-backed file in a FUSE mount whose byte range
/// `[bad_offset, bad_offset + bad_len)` answers EIO. SIGTERM on drop (libfuse unmounts), then a
/// lazy unmount if the mount is still there.
struct FaultFs {
    child: Child,
    mnt: tempfile::TempDir,
    log: PathBuf,
    file: PathBuf,
}

impl FaultFs {
    fn start(lab: &Lab, size_mib: u64, bad_offset: u64, bad_len: u64) -> FaultFs {
        Self::start_with(lab, size_mib, bad_offset, bad_len, None)
    }

    /// With `hang_while`: the range hangs (while that file exists) instead of failing.
    fn start_with(
        lab: &Lab,
        size_mib: u64,
        bad_offset: u64,
        bad_len: u64,
        hang_while: Option<&Path>,
    ) -> FaultFs {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/faultfs.py");
        let mnt = tempfile::Builder::new()
            .prefix("xblade-faultfs-")
            .tempdir()
            .unwrap();
        let log = lab.dir.join("faultfs.log");
        let child = Command::new(PYTHON)
            .arg(&script)
            .arg(mnt.path())
            .args(["--name", "disk.img", "--size-mib", &size_mib.to_string()])
            .args(["--bad-offset", &bad_offset.to_string()])
            .args(["--bad-len", &bad_len.to_string()])
            .args(
                hang_while
                    .map(|f| ["--hang-while".as_ref(), f.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {PYTHON} {script:?}: {e}"));
        let file = mnt.path().join("disk.img");
        let mut fs = FaultFs {
            child,
            mnt,
            log,
            file,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::fs::metadata(&fs.file).is_ok_and(|m| m.len() == size_mib * MIB) {
                return fs;
            }
            if let Some(status) = fs.child.try_wait().unwrap() {
                panic!("faultfs exited ({status}) before serving:\n{}", fs.log());
            }
            assert!(
                Instant::now() < deadline,
                "faultfs did not serve {:?} within 10 s:\n{}",
                fs.file,
                fs.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn mounted(&self) -> bool {
        let p = self.mnt.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(p.as_str()))
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.mounted() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.mnt.path())
                .status();
        }
    }
}

/// A block device that returns EIO for one MiB (a loop device over a FUSE file that fails
/// there): reads and writes touching it are answered with ATA status 0x41, error UNC (0x40),
/// for writes as well as reads: the kernel reports both as EIO (the loop driver completes the
/// failed request with BLK_STS_IOERR, and an O_DIRECT read or write of a block device sees
/// that as EIO), and xblade answers EIO with UNC and every other errno with ABRT. Sectors
/// before and after the bad MiB are served and verified, the daemon keeps serving, and the log
/// reports the failures (rate-limited) and counts them. xblade used to map block devices and
/// died of SIGBUS on the first failing read.
#[test]
fn failing_sectors_of_a_block_device_get_ata_errors_and_the_rest_is_served() {
    let name = "failing_sectors_of_a_block_device_get_ata_errors_and_the_rest_is_served";
    if !privileged(name) || !requires(name, have_fusepy()) {
        return;
    }
    let lab = Lab::new();
    // 4 MiB; bytes [1 MiB, 2 MiB) fail: LBAs 2048..4096.
    let (bad_lo, bad_hi) = (2048u64, 4096u64);
    let fuse = FaultFs::start(&lab, 4, bad_lo * SECTOR, (bad_hi - bad_lo) * SECTOR);
    let lo = LoopDev::new(&fuse.file, &[]);
    let d = Running(Some(lab.xblade(&["1", "0", "{if}", lo.path()])));
    let mut c = lab.client();
    discover(&mut c, d.get(), 1, 0);

    // Good sectors: the first, some before the bad range (up to its edge), after it (from its
    // edge), and the last two.
    let good = [0u64, 7, 1000, bad_lo - 2, bad_hi, bad_hi + 5, 6000, 8190];
    for &lba in &good {
        assert_eq!(
            write(&mut c, d.get(), lba, &pattern(0xfa, lba, 2)),
            (ata::STATUS_OK, 0),
            "write at {lba} (outside the failing range)"
        );
    }

    // Bad: inside, at both edges, and straddling either edge. Not written: the 2 sectors
    // straddling the start (bad_lo - 1). The loop driver writes that through the FUSE file's
    // page cache one page at a time; the first page (sector bad_lo - 1) lands, the next fails,
    // and the loop driver (Linux 6.18) completes the short write as a success: the write is
    // acknowledged with sector bad_lo unwritten, and xblade cannot tell (a loop-over-FUSE
    // artefact, left alone here). A read there fails whole (the loop driver re-issues the rest of
    // a short read, which then fails); a write straddling the end fails at its first page.
    let mut failures = 0u64;
    for &lba in &[bad_lo, bad_lo + 1, 3000, bad_hi - 2, bad_hi - 1, bad_lo - 1] {
        let (s, e, _) = read(&mut c, d.get(), lba, 2);
        assert_eq!(
            (s, e),
            (ata::STATUS_FAIL, ata::ERR_UNC),
            "read at {lba} (touches the failing range): want status 0x41, error UNC"
        );
        failures += 1;
        if lba == bad_lo - 1 {
            continue;
        }
        assert_eq!(
            write(&mut c, d.get(), lba, &pattern(0xbad, lba, 2)),
            (ata::STATUS_FAIL, ata::ERR_UNC),
            "write at {lba} (touches the failing range): want status 0x41, error UNC"
        );
        failures += 1;
    }

    // Everything outside still reads back what was written (the failed write at bad_hi - 1
    // left bad_hi alone).
    for &lba in &good {
        let (s, e, got) = read(&mut c, d.get(), lba, 2);
        assert_eq!(
            (s, e),
            (ata::STATUS_OK, 0),
            "read at {lba} after the errors"
        );
        assert!(got == pattern(0xfa, lba, 2), "read back at {lba} differs");
    }
    // Still alive and serving: a fresh discovery and a read.
    assert!(alive(d.get().pid()), "xblade died:\n{}", d.get().log());
    discover(&mut c, d.get(), 1, 0);
    assert_eq!(read(&mut c, d.get(), 0, 1).0, ata::STATUS_OK);

    let flog = fuse.log();
    assert!(
        flog.contains("EIO for read") && flog.contains("EIO for write"),
        "the errors did not come from faultfs:\n{flog}"
    );
    let (status, log) = d.stop();
    assert!(status.success(), "xblade exit {status}:\n{log}");
    let warnings = log
        .lines()
        .filter(|l| l.contains("storage I/O failed"))
        .collect::<Vec<_>>();
    assert!(
        !warnings.is_empty() && warnings.iter().all(|l| l.contains("errno=5")),
        "no EIO warning in the log:\n{log}"
    );
    // Logged at the 1st, 2nd, 4th, 8th, ... failure: 11 failures, 4 lines.
    assert!(
        (warnings.len() as u64) < failures,
        "one warning per failure ({} for {failures}): not rate-limited:\n{log}",
        warnings.len()
    );
    assert_eq!(io_errors(&log), failures, "io_errors counted:\n{log}");
}

/// A file removed on drop: the hang flag of [`FaultFs::start_with`], so a failing test does not
/// leave a device hung (declared last, so dropped first).
struct Unhang(PathBuf);

impl Drop for Unhang {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One export whose device stops answering (a loop device over a FUSE file whose second MiB
/// hangs) is flooded with more reads than the worker's whole in-flight table; another export on
/// the same worker goes on being served, because each export is guaranteed its share of the
/// table. Once the device answers again, the hung reads are answered and the daemon stops
/// cleanly. Before the shares, the flood took every slot, RX stopped, and the other export
/// went silent.
#[test]
fn a_hung_block_device_does_not_starve_the_other_exports() {
    let name = "a_hung_block_device_does_not_starve_the_other_exports";
    if !privileged(name) || !requires(name, have_fusepy()) {
        return;
    }
    let lab = Lab::new();
    let flag = lab.dir.join("hang.flag");
    std::fs::write(&flag, b"").unwrap();
    let fuse = FaultFs::start_with(&lab, 4, MIB, MIB, Some(&flag));
    let lo = LoopDev::new(&fuse.file, &[]);
    let other = lab.image("other.img", 4 * MIB);
    // bufcnt 16 each: a 64-slot table, 16 slots guaranteed to each export.
    let conf = lab.config_file(&[Path::new(lo.path()), &other], 16);
    let d = Running(Some(lab.xblade(&[
        "serve",
        "--config",
        conf.to_str().unwrap(),
    ])));
    let _unhang = Unhang(flag.clone());
    let mut c = lab.client();
    discover(&mut c, d.get(), 1, 0);
    // 200 reads of the hung MiB, without waiting: more than the whole table.
    let mut hung = Vec::new();
    for i in 0..200u64 {
        let a = c.addr();
        let mut f = vec![0u8; 128];
        let n = initiator::ata_request(&mut f, &a, &AtaRequest::read(2048 + i * 2, 2));
        c.send(&f[..n]);
        hung.push(a.tag);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        fuse.log().contains("hangs while"),
        "the device did not hang:\n{}",
        fuse.log()
    );
    // The other export answers, again and again, while the first one hangs.
    discover(&mut c, d.get(), 1, 1);
    for lba in 0..40u64 {
        let data = pattern(8, lba * 16, 2);
        assert_eq!(write(&mut c, d.get(), lba * 16, &data), (ata::STATUS_OK, 0));
        let (s, e, back) = read(&mut c, d.get(), lba * 16, 2);
        assert_eq!((s, e), (ata::STATUS_OK, 0));
        assert!(back == data, "data at {}", lba * 16);
    }
    // The device answers again: the reads that got a slot are answered (the rest were dropped
    // for the initiator to retransmit).
    std::fs::remove_file(&flag).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = 0;
    while Instant::now() < deadline && answered < 16 {
        if let Some(r) = c.recv() {
            let tag = u32::from_be_bytes([r[20], r[21], r[22], r[23]]);
            if hung.contains(&tag) {
                assert_eq!(Client::ata_regs(&r).0, ata::STATUS_OK, "tag {tag}");
                answered += 1;
            }
        }
    }
    assert!(
        answered >= 16,
        "only {answered} hung reads answered after the device came back"
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    let no_slot = common::counter(&log, "no_slot");
    assert!(no_slot > 0, "the flood never met the share:\n{log}");
}
