//! End to end: xblade in a network namespace, attached to a veth by XDP, served through AF_XDP
//! and io_uring, driven by a raw-socket AoE initiator in the peer namespace.

mod common;

use aoe::ata;
use aoe::initiator::{parse_response, AtaRequest, Body};
use aoe::wire::{error, SECTOR};
use common::{file_bytes, pattern, privileged, Client, Lab};

const MIB: u64 = 1 << 20;

/// Write patterns across the export (first sectors, middle, last sector), read them back over
/// the wire, and check the backing file byte for byte at `base` (the export's byte offset).
fn write_read_verify(c: &mut Client, path: &std::path::Path, base: u64, sectors: u64, seed: u64) {
    let lbas = [0, 1, 2, 77, sectors / 2, sectors - 3, sectors - 2];
    for &lba in &lbas {
        let data = pattern(seed, lba, 2);
        assert_eq!(c.write(lba, &data), (ata::STATUS_OK, 0), "write at {lba}");
    }
    for &lba in &lbas {
        let (s, e, d) = c.read(lba, 2);
        assert_eq!((s, e), (ata::STATUS_OK, 0), "read at {lba}");
        assert!(
            d == pattern(seed, lba, 2),
            "data read back at {lba} differs"
        );
        // The last write wins where ranges overlap (sectors-3 and sectors-2 overlap): compare
        // against the file only for the sector written last there.
    }
    for &lba in &lbas {
        let on_disk = file_bytes(path, base + lba * SECTOR as u64, 2 * SECTOR);
        assert!(
            on_disk == pattern(seed, lba, 2),
            "backing file at lba {lba} differs"
        );
    }
    // One sector past the end is out of range.
    let (s, e, _) = c.read(sectors - 1, 2);
    assert_eq!((s, e), (ata::STATUS_FAIL, ata::ERR_IDNF));
}

fn stopped_cleanly(lab: &Lab, d: common::Daemon) -> String {
    let (status, log) = d.stop();
    assert!(status.success(), "xblade exit {status}:\n{log}");
    assert!(
        log.contains("copied_bytes: 0"),
        "no userspace copy of data expected:\n{log}"
    );
    assert!(!lab.xdp_attached(), "XDP program left attached after exit");
    log
}

#[test]
fn serves_a_tmpfs_file_in_driver_and_skb_mode() {
    if !privileged("serves_a_tmpfs_file_in_driver_and_skb_mode") {
        return;
    }
    for mode in ["driver", "skb"] {
        let lab = Lab::new();
        let img = lab.image("disk.img", 8 * MIB);
        let d = lab.xblade(&["--xdp-mode", mode, "1", "0", "{if}", img.to_str().unwrap()]);
        assert!(
            d.log().contains(&format!(
                "mode={}",
                if mode == "driver" { "Driver" } else { "Skb" }
            )),
            "{}",
            d.log()
        );
        let mut c = lab.client();
        let cfg = c.discover(1, 0);
        match parse_response(&cfg).unwrap().body {
            Body::Config {
                bufcnt, sectors, ..
            } => assert_eq!((bufcnt, sectors), (64, 2)),
            b => panic!("{b:?}"),
        }
        let (s, _, page) = Client::ata_regs(&c.ata(&AtaRequest::identify()));
        assert_eq!(s, ata::STATUS_OK);
        assert_eq!(ata::identify_capacity(&page[..512]), 8 * MIB / 512);
        write_read_verify(&mut c, &img, 0, 8 * MIB / 512, 7);
        let flush = AtaRequest {
            cmd: ata::FLUSH_EXT,
            feature: 0,
            sectors: 0,
            lba: 0,
            data: None,
        };
        assert_eq!(Client::ata_regs(&c.ata(&flush)).0, ata::STATUS_OK);
        let log = stopped_cleanly(&lab, d);
        assert!(
            log.contains("writes: 7,") && log.contains("write_bytes: 7168,"),
            "{log}"
        );
        assert!(
            log.contains("reads: 7,") && log.contains("flushes: 1,"),
            "{log}"
        );
    }
}

#[test]
fn announces_itself_at_start_up() {
    if !privileged("announces_itself_at_start_up") {
        return;
    }
    let lab = Lab::new();
    let img = lab.image("disk.img", MIB);
    let c = lab.client();
    let d = lab.xblade(&["3", "4", "{if}", img.to_str().unwrap()]);
    let got = c.drain();
    let adv = got
        .iter()
        .map(|f| parse_response(f).unwrap())
        .find(|p| p.tag == 0)
        .expect("no tag-0 advertisement");
    assert_eq!((adv.shelf, adv.slot), (3, 4));
    assert!(matches!(adv.body, Body::Config { .. }));
    stopped_cleanly(&lab, d);
}

/// Every kind of bad frame gets the protocol's answer, the daemon keeps serving, and the
/// backing file changes only where a valid write said so.
#[test]
fn bad_frames_get_precise_answers_and_write_nothing() {
    if !privileged("bad_frames_get_precise_answers_and_write_nothing") {
        return;
    }
    let lab = Lab::new();
    let img = lab.image("disk.img", MIB);
    std::fs::write(&img, vec![0x5au8; MIB as usize]).unwrap();
    let before = std::fs::read(&img).unwrap();
    let d = lab.xblade(&["-r", "1", "0", "{if}", img.to_str().unwrap()]);
    let mut c = lab.client();
    c.discover(1, 0);
    let sectors = MIB / 512;
    let data = vec![0xee; 1024];

    // (name, frame, expected answer)
    enum Want {
        Silence,
        AoeError(u8),
        Ata(u8, u8),
    }
    let mut cases: Vec<(&str, Vec<u8>, Want)> = Vec::new();
    let frame = |c: &mut Client, req: &AtaRequest<'_>| {
        let a = c.addr();
        let mut f = vec![0u8; 2000];
        let n = aoe::initiator::ata_request(&mut f, &a, req);
        f.truncate(n);
        f
    };
    cases.push((
        "write to a read-only export",
        frame(&mut c, &AtaRequest::write(0, &data)),
        Want::Ata(0x41, ata::ERR_ABRT),
    ));
    cases.push((
        "read past the end",
        frame(&mut c, &AtaRequest::read(sectors - 1, 2)),
        Want::Ata(0x41, ata::ERR_IDNF),
    ));
    cases.push((
        "lba+count overflow",
        frame(&mut c, &AtaRequest::read(0xffff_ffff_ffff, 2)),
        Want::Ata(0x41, ata::ERR_IDNF),
    ));
    cases.push((
        "more sectors than advertised",
        frame(&mut c, &AtaRequest::read(0, 3)),
        Want::Ata(0x41, ata::ERR_ABRT),
    ));
    cases.push((
        "zero sectors",
        frame(&mut c, &AtaRequest::read(0, 0)),
        Want::Ata(0x41, ata::ERR_ABRT),
    ));
    cases.push((
        "unknown ATA opcode",
        frame(
            &mut c,
            &AtaRequest {
                cmd: 0xef,
                feature: 0,
                sectors: 0,
                lba: 0,
                data: None,
            },
        ),
        Want::Ata(0x41, ata::ERR_ABRT),
    ));
    let mut short = frame(&mut c, &AtaRequest::read(0, 1));
    short.truncate(30);
    cases.push((
        "truncated ATA header",
        short,
        Want::AoeError(error::BAD_ARG),
    ));
    let mut resp = frame(&mut c, &AtaRequest::read(0, 1));
    resp[14] |= 0x08;
    cases.push(("a response (R=1)", resp, Want::Silence));
    let mut other = frame(&mut c, &AtaRequest::read(0, 1));
    other[18] = 9;
    cases.push(("another slot", other, Want::Silence));
    let mut unknown = frame(&mut c, &AtaRequest::read(0, 1));
    unknown[19] = 0x42;
    cases.push((
        "unknown AoE command",
        unknown,
        Want::AoeError(error::BAD_CMD),
    ));
    let mut badver = frame(&mut c, &AtaRequest::read(0, 1));
    badver[14] = 0x20;
    cases.push(("AoE version 2", badver, Want::AoeError(error::BAD_VERSION)));
    let mut junk = frame(&mut c, &AtaRequest::read(0, 1));
    junk.extend_from_slice(&[0xab; 900]);
    cases.push(("read with trailing junk", junk, Want::Ata(0x40, 0)));

    for (name, f, want) in cases {
        let tag = u32::from_be_bytes([f[20], f[21], f[22], f[23]]);
        let got = c.transact(&f, tag);
        match (want, got) {
            (Want::Silence, None) => {}
            (Want::Silence, Some(r)) => panic!("{name}: expected silence, got {r:02x?}"),
            (_, None) => panic!("{name}: no answer"),
            (Want::AoeError(code), Some(r)) => {
                assert_eq!(parse_response(&r).unwrap().error, Some(code), "{name}");
                assert!(r.len() >= 60, "{name}: padded");
            }
            (Want::Ata(s, e), Some(r)) => {
                let (st, er, _) = Client::ata_regs(&r);
                assert_eq!((st, er), (s, e), "{name}");
                assert!(r.len() >= 60, "{name}: padded");
            }
        }
    }
    // Still serving, and not a byte written.
    let (s, _, d0) = c.read(0, 2);
    assert_eq!((s, d0), (0x40, vec![0x5a; 1024]));
    stopped_cleanly(&lab, d);
    assert!(
        std::fs::read(&img).unwrap() == before,
        "the backing file changed"
    );
}

#[test]
fn sub_range_export_writes_only_inside_its_range() {
    if !privileged("sub_range_export_writes_only_inside_its_range") {
        return;
    }
    let lab = Lab::new();
    let img = lab.image("disk.img", 4 * MIB);
    let d = lab.xblade(&[
        "-o",
        "2048",
        "-l",
        "4096",
        "2",
        "7",
        "{if}",
        img.to_str().unwrap(),
    ]);
    let mut c = lab.client();
    c.discover(2, 7);
    let (_, _, page) = Client::ata_regs(&c.ata(&AtaRequest::identify()));
    assert_eq!(ata::identify_capacity(&page[..512]), 4096);
    write_read_verify(&mut c, &img, 2048 * 512, 4096, 11);
    stopped_cleanly(&lab, d);
    let all = std::fs::read(&img).unwrap();
    assert!(
        all[..2048 * 512].iter().all(|b| *b == 0),
        "bytes before the range were written"
    );
    assert!(
        all[(2048 + 4096) * 512..].iter().all(|b| *b == 0),
        "bytes after the range were written"
    );
}

struct Loop(String);

impl Loop {
    fn new(backing: &std::path::Path, sector: u32) -> Loop {
        let out = std::process::Command::new("losetup")
            .args([
                "--find",
                "--show",
                "--direct-io=on",
                "--sector-size",
                &sector.to_string(),
            ])
            .arg(backing)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn loop_devices_512_and_4096() {
    if !privileged("loop_devices_512_and_4096") {
        return;
    }
    let lab = Lab::new();
    // 512-byte sectors: O_DIRECT straight through, and O_EXCL keeps a second daemon off it.
    let f512 = lab.image("l512.img", 8 * MIB);
    let dev = Loop::new(&f512, 512);
    let d = lab.xblade(&["1", "1", "{if}", &dev.0]);
    let (status, log) = lab.xblade_fails(&["1", "2", "{if}", &dev.0]);
    assert!(!status.success());
    assert!(log.contains("device busy"), "{log}");
    let mut c = lab.client();
    c.discover(1, 1);
    write_read_verify(&mut c, std::path::Path::new(&dev.0), 0, 8 * MIB / 512, 3);
    stopped_cleanly(&lab, d);

    // 4096-byte sectors: O_DIRECT cannot do 512-byte I/O there, so a clear refusal...
    let f4k = lab.image("l4k.img", 8 * MIB);
    let dev4k = Loop::new(&f4k, 4096);
    let (status, log) = lab.xblade_fails(&["1", "3", "{if}", &dev4k.0]);
    assert!(!status.success());
    assert!(
        log.contains("4096-byte logical blocks") && log.contains("--buffered"),
        "{log}"
    );
    // ...and the admin's explicit buffered mode serves it.
    let d = lab.xblade(&["--buffered", "1", "3", "{if}", &dev4k.0]);
    let mut c = lab.client();
    c.discover(1, 3);
    for lba in [1u64, 9, 1000] {
        assert_eq!(c.write(lba, &pattern(5, lba, 2)), (0x40, 0));
        assert!(
            c.read(lba, 2).2 == pattern(5, lba, 2),
            "read back at {lba} differs"
        );
    }
    stopped_cleanly(&lab, d);
}

/// Config string, mask and reserve commands change the running export's state, and that state
/// governs the following frames.
#[test]
fn config_mask_and_reserve_change_the_running_export() {
    if !privileged("config_mask_and_reserve_change_the_running_export") {
        return;
    }
    use aoe::wire::{ccmd, mask, reserve};
    let lab = Lab::new();
    let img = lab.image("disk.img", MIB);
    let d = lab.xblade(&["1", "0", "{if}", img.to_str().unwrap()]);
    let mut c = lab.client();
    c.discover(1, 0);
    let stranger: aoe::Mac = [0x02, 0xaa, 0, 0, 0, 1];
    let mut buf = vec![0u8; 2000];

    // Config string: set, then a test with another string is silent.
    let a = c.addr();
    let n = aoe::initiator::config_request(&mut buf, &a, ccmd::SET, b"owner=host1");
    let r = c.transact(&buf[..n], a.tag).expect("config set answered");
    assert_eq!(parse_response(&r).unwrap().error, None);
    let a = c.addr();
    let n = aoe::initiator::config_request(&mut buf, &a, ccmd::TEST, b"owner=host2");
    assert!(
        c.transact(&buf[..n], a.tag).is_none(),
        "test mismatch must be silent"
    );

    // Reserve for a stranger: our reads get AoE error 6, IDENTIFY still works; force it back.
    let a = c.addr();
    let n = aoe::initiator::reserve_request(&mut buf, &a, reserve::FORCE_SET, &[stranger]);
    assert!(c.transact(&buf[..n], a.tag).is_some());
    let r = c.ata(&AtaRequest::read(0, 1));
    assert_eq!(parse_response(&r).unwrap().error, Some(error::RESERVED));
    assert_eq!(
        Client::ata_regs(&c.ata(&AtaRequest::identify())).0,
        ata::STATUS_OK
    );
    let a = c.addr();
    let n = aoe::initiator::reserve_request(&mut buf, &a, reserve::FORCE_SET, &[]);
    assert!(c.transact(&buf[..n], a.tag).is_some());
    assert_eq!(c.read(0, 1).0, ata::STATUS_OK);

    // Mask list with only the stranger: we are ignored from then on, even for mask commands.
    let a = c.addr();
    let n = aoe::initiator::mask_request(&mut buf, &a, mask::EDIT, &[(mask::DCMD_ADD, stranger)]);
    let r = c.transact(&buf[..n], a.tag).expect("mask edit answered");
    match parse_response(&r).unwrap().body {
        Body::Mask { merror, macs, .. } => assert_eq!((merror, macs), (0, vec![stranger])),
        b => panic!("{b:?}"),
    }
    let a = c.addr();
    let mut f = vec![0u8; 100];
    let n = aoe::initiator::ata_request(&mut f, &a, &AtaRequest::read(0, 1));
    assert!(
        c.transact(&f[..n], a.tag).is_none(),
        "masked initiator must get silence"
    );
    let a = c.addr();
    let n = aoe::initiator::mask_request(&mut buf, &a, mask::EDIT, &[(mask::DCMD_DEL, stranger)]);
    assert!(
        c.transact(&buf[..n], a.tag).is_none(),
        "a masked initiator cannot unmask itself"
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("export state changed"),
        "state changes are logged:\n{log}"
    );
}

/// An in-memory store is mapped; if someone truncates it under a running export, the daemon
/// stops with a message saying so instead of crashing on SIGBUS.
#[test]
fn a_truncated_in_memory_store_stops_the_daemon_with_a_message() {
    if !privileged("a_truncated_in_memory_store_stops_the_daemon_with_a_message") {
        return;
    }
    let lab = Lab::new();
    let img = lab.image("disk.img", MIB);
    let d = lab.xblade(&["1", "0", "{if}", img.to_str().unwrap()]);
    let mut c = lab.client();
    c.discover(1, 0);
    assert_eq!(c.read(1000, 2).0, ata::STATUS_OK);
    std::fs::File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(0)
        .unwrap();
    let a = c.addr();
    let mut f = vec![0u8; 100];
    let n = aoe::initiator::ata_request(&mut f, &a, &AtaRequest::read(1000, 2));
    assert!(
        c.transact(&f[..n], a.tag).is_none(),
        "no answer from a store that is gone"
    );
    let (status, log) = d.wait_exit();
    assert_eq!(status.code(), Some(70), "{log}");
    assert!(log.contains("shrank") && log.contains("truncated"), "{log}");
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Send `n` one-sector reads in bursts of 32 and check every answer.
fn read_load(c: &mut Client, n: usize, sectors: u64) {
    let mut buf = vec![0u8; 128];
    let mut sent = 0;
    while sent < n {
        let burst = 32.min(n - sent);
        for i in 0..burst {
            let a = c.addr();
            let lba = ((sent + i) as u64 * 7919) % sectors;
            let len = aoe::initiator::ata_request(&mut buf, &a, &AtaRequest::read(lba, 1));
            c.send(&buf[..len]);
        }
        for _ in 0..burst {
            let r = c.recv().expect("an answer to every read of a burst");
            assert_eq!(Client::ata_regs(&r).0, ata::STATUS_OK);
        }
        sent += burst;
    }
}

/// A long run must not grow the daemon: every per-request resource goes back to its pool.
/// (A pool that took back an empty list per request once grew by 24 bytes a request: about
/// 14 MB/s at line rate.)
#[test]
fn memory_stays_flat_under_load() {
    if !privileged("memory_stays_flat_under_load") {
        return;
    }
    let lab = Lab::new();
    let img = lab.image("ram.img", 8 * MIB);
    let d = lab.xblade(&["1", "0", "{if}", img.to_str().unwrap()]);
    let mut c = lab.client();
    c.discover(1, 0);
    let sectors = 8 * MIB / SECTOR as u64;
    read_load(&mut c, 20_000, sectors);
    let before = rss_kib(d.pid());
    const N: usize = 200_000;
    read_load(&mut c, N, sectors);
    let after = rss_kib(d.pid());
    let log = stopped_cleanly(&lab, d);
    assert!(log.contains(&format!("reads: {},", N + 20_000)), "{log}");
    assert!(
        after <= before + 1024,
        "xblade grew from {before} KiB to {after} KiB over {N} reads"
    );
}

/// A tmpfs of `mib` MiB mounted in the lab's directory, unmounted on drop.
struct SmallTmpfs(std::path::PathBuf);

impl SmallTmpfs {
    fn new(lab: &Lab, mib: u64) -> SmallTmpfs {
        let dir = lab.dir.join("small-tmpfs");
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "xblade-test"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        SmallTmpfs(dir)
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A sparse in-memory store larger than the tmpfs holding it used to start, then die of SIGBUS
/// on the first write past the tmpfs's capacity. Its memory is now allocated at start-up, and a
/// store the tmpfs cannot hold is refused with a message saying what to do; a read-only sparse
/// store is refused too (on tmpfs, reading a hole through a mapping takes memory).
#[test]
fn an_in_memory_store_is_allocated_at_start_up_or_refused() {
    if !privileged("an_in_memory_store_is_allocated_at_start_up_or_refused") {
        return;
    }
    let lab = Lab::new();
    let small = SmallTmpfs::new(&lab, 8);
    let big = small.0.join("big.img");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let (status, log) = lab.xblade_fails(&["1", "0", "{if}", big.to_str().unwrap()]);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("needs 64 MiB") && log.contains("room for only") && log.contains("tmpfs"),
        "{log}"
    );
    assert!(!log.contains("SIGBUS"), "{log}");
    std::fs::remove_file(&big).unwrap();

    // Read-only and sparse: refused, naming the fix.
    let sparse = small.0.join("sparse.img");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let (status, log) = lab.xblade_fails(&["-r", "1", "0", "{if}", sparse.to_str().unwrap()]);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("is sparse") && log.contains(&format!("fallocate -l {}", 4 * MIB)),
        "{log}"
    );

    // Writable and sparse, and it fits: allocated at start-up, then every sector can be
    // written (no SIGBUS), and the tmpfs shows the memory taken.
    let d = lab.xblade(&["1", "0", "{if}", sparse.to_str().unwrap()]);
    let meta = std::fs::metadata(&sparse).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 >= 4 * MIB,
        "allocated: {} blocks",
        meta.blocks()
    );
    let mut c = lab.client();
    c.discover(1, 0);
    write_read_verify(&mut c, &sparse, 0, 4 * MIB / 512, 11);
    stopped_cleanly(&lab, d);
}

/// The target's link going down and coming back up (a cable pulled, a switch rebooted) leaves
/// the daemon serving: the AF_XDP socket stays bound and the worker picks up where it was.
#[test]
fn survives_the_link_going_down_and_up() {
    if !privileged("survives_the_link_going_down_and_up") {
        return;
    }
    let lab = Lab::new();
    let img = lab.image("disk.img", 4 * MIB);
    let d = lab.xblade(&["1", "0", "{if}", img.to_str().unwrap()]);
    let mut c = lab.client();
    c.discover(1, 0);
    write_read_verify(&mut c, &img, 0, 4 * MIB / 512, 21);
    for round in 0..3u64 {
        for state in ["down", "up"] {
            labkit::ip(&["-n", lab.target_ns(), "link", "set", lab.target_if(), state]);
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        // The link may take a moment to carry frames again: retry the first request.
        let data = pattern(30 + round, 500, 2);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut ok = false;
        while !ok && std::time::Instant::now() < deadline {
            let a = c.addr();
            let mut f = vec![0u8; 1200];
            let n = aoe::initiator::ata_request(&mut f, &a, &AtaRequest::write(500, &data));
            ok = c.transact(&f[..n], a.tag).is_some();
        }
        assert!(
            ok,
            "no answer after the link came back (round {round}):\n{}",
            d.log()
        );
        assert!(c.read(500, 2).2 == data, "round {round}");
    }
    assert!(d.log().contains("serving workers="));
    stopped_cleanly(&lab, d);
}
