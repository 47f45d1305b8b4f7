//! Scaling out: several NIC queues (one worker each) and several interfaces in one daemon.

mod common;

use aoe::initiator::parse_response;
use common::{pattern, privileged, Client, Lab};

const MIB: u64 = 1 << 20;

fn rx_per_queue(log: &str) -> Vec<(u32, u64)> {
    let mut v: Vec<(u32, u64)> = log
        .lines()
        .filter(|l| l.contains("worker stopped"))
        .map(|l| {
            let q = l
                .split("queue=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let rx = l
                .split("rx_frames: ")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (q, rx)
        })
        .collect();
    v.sort_unstable();
    v
}

/// Two queues, two pinned workers: requests steered to either queue are served by its worker.
#[test]
fn two_queues_are_served_by_their_own_workers() {
    if !privileged("two_queues_are_served_by_their_own_workers") {
        return;
    }
    let lab = Lab::with_queues(2);
    lab.steer_by_cpu(2);
    let img = lab.image("disk.img", 4 * MIB);
    let d = lab.xblade(&[
        "--queues",
        "0,1",
        "--cpus",
        "0,1",
        "1",
        "0",
        "{if}",
        img.to_str().unwrap(),
    ]);
    assert_eq!(
        d.log().matches("AF_XDP socket bound").count(),
        2,
        "{}",
        d.log()
    );
    // aoeping pinned to CPU q sends on queue q.
    for (cpu, n) in [("0", 3), ("1", 5)] {
        for _ in 0..n {
            let (status, out, err) = lab.init_exec(&[
                "taskset",
                "-c",
                cpu,
                "timeout",
                "5",
                "aoeping",
                "-s",
                "3",
                "1",
                "0",
                lab.init_if(),
            ]);
            assert!(status.success(), "{out}{err}");
        }
    }
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    // Each aoeping sends one config query.
    assert_eq!(rx_per_queue(&log), vec![(0, 3), (1, 5)], "{log}");
}

/// One daemon, two interfaces: each answers discovery from its own MAC (so the Linux initiator
/// opens one window per path), and data written through one path reads back through the other.
#[test]
fn two_interfaces_answer_from_their_own_macs() {
    if !privileged("two_interfaces_answer_from_their_own_macs") {
        return;
    }
    let lab = Lab::new();
    let (t2, i2) = lab.add_link("b");
    let img = lab.image("disk.img", 4 * MIB);
    let conf = lab.dir.join("two.toml");
    std::fs::write(
        &conf,
        format!(
            "[[interface]]\nname = \"{}\"\n[[interface]]\nname = \"{t2}\"\n[[export]]\nshelf = 9\nslot = 9\npath = \"{}\"\n",
            lab.target_if(),
            img.display()
        ),
    )
    .unwrap();
    let d = lab.xblade(&["serve", "--config", conf.to_str().unwrap()]);
    let mac_of = |dev: &str| aoe::wire::parse_mac(&labkit::mac(lab.target_ns(), dev)).unwrap();
    let mut a = lab.client();
    let mut b = Client::open(lab.init_ns(), &i2);
    let ra = a.discover(9, 9);
    let rb = b.discover(9, 9);
    assert_eq!(parse_response(&ra).unwrap().src, mac_of(lab.target_if()));
    assert_eq!(parse_response(&rb).unwrap().src, mac_of(&t2));
    assert_eq!(a.write(100, &pattern(4, 100, 2)), (0x40, 0));
    assert!(
        b.read(100, 2).2 == pattern(4, 100, 2),
        "write via path A not visible via path B"
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}

/// MTU 9000: 16 sectors per command (not 17: frames stay 4 KiB-aligned), jumbo writes gathered
/// from multi-buffer fragments, jumbo reads sent as several TX descriptors, in both XDP modes.
#[test]
fn jumbo_frames_at_mtu_9000() {
    if !privileged("jumbo_frames_at_mtu_9000") {
        return;
    }
    for mode in ["driver", "skb"] {
        let lab = Lab::with_mtu(9000);
        // Driver mode on the root filesystem (io_uring, O_DIRECT), skb mode on tmpfs
        // (synchronous in-memory I/O): both storage paths carry jumbo requests.
        let img = if mode == "driver" {
            let p = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("jumbo-{}.img", std::process::id()));
            std::fs::File::create(&p).unwrap().set_len(8 * MIB).unwrap();
            p
        } else {
            lab.image("disk.img", 8 * MIB)
        };
        let d = lab.xblade(&["--xdp-mode", mode, "1", "0", "{if}", img.to_str().unwrap()]);
        let mut c = lab.client();
        match parse_response(&c.discover(1, 0)).unwrap().body {
            aoe::initiator::Body::Config { sectors, .. } => {
                assert_eq!(sectors, 16, "advertised scnt at MTU 9000")
            }
            b => panic!("{b:?}"),
        }
        let sectors = 8 * MIB / 512;
        let lbas = [0u64, 16, 1000, 4093, sectors - 16];
        for &lba in &lbas {
            assert_eq!(
                c.write(lba, &pattern(lba, lba, 16)),
                (0x40, 0),
                "{mode}: 16-sector write at {lba}"
            );
        }
        for &lba in &lbas {
            let (s, e, data) = c.read(lba, 16);
            assert_eq!((s, e), (0x40, 0), "{mode}: read at {lba}");
            assert!(
                data == pattern(lba, lba, 16),
                "{mode}: jumbo read at {lba} differs"
            );
            assert!(
                common::file_bytes(&img, lba * 512, 16 * 512) == pattern(lba, lba, 16),
                "{mode}: file at {lba}"
            );
        }
        // Small commands still go the single-chunk way on the same interface.
        assert_eq!(c.write(5000, &pattern(9, 5000, 2)), (0x40, 0));
        assert!(c.read(5000, 2).2 == pattern(9, 5000, 2));
        assert_eq!(c.read(sectors - 8, 16).1, aoe::ata::ERR_IDNF);
        let (status, log) = d.stop();
        assert!(status.success(), "{log}");
        assert!(
            log.contains("gathered_writes: 5,") && log.contains("multi_desc_reads: 5,"),
            "{mode}: {log}"
        );
    }
}

/// The options for real hardware either work on veth/loop or say clearly why not.
#[test]
fn polling_options_work_or_explain() {
    if !privileged("polling_options_work_or_explain") {
        return;
    }
    let lab = Lab::new();
    let img = lab.image("disk.img", 4 * MIB);
    let d = lab.xblade(&[
        "--busy-poll",
        "50",
        "--sqpoll",
        "1",
        "0",
        "{if}",
        img.to_str().unwrap(),
    ]);
    assert!(d.log().contains("preferred busy polling on"), "{}", d.log());
    let mut c = lab.client();
    c.discover(1, 0);
    assert_eq!(c.write(8, &pattern(2, 8, 2)), (0x40, 0));
    assert!(c.read(8, 2).2 == pattern(2, 8, 2));
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    // IOPOLL needs a device with poll queues; a regular file has none: logged, then served.
    let d = lab.xblade(&["--iopoll", "1", "1", "{if}", img.to_str().unwrap()]);
    assert!(
        d.log().contains("IOPOLL is not available here"),
        "{}",
        d.log()
    );
    let mut c = lab.client();
    c.discover(1, 1);
    assert!(c.read(8, 2).2 == pattern(2, 8, 2));
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}

/// A config string set through one queue's worker is what another queue's worker answers with:
/// workers keep their own copy of an export's state and refresh it when its version moves.
#[test]
fn a_state_change_on_one_queue_is_seen_on_the_other() {
    if !privileged("a_state_change_on_one_queue_is_seen_on_the_other") {
        return;
    }
    let lab = Lab::with_queues(2);
    lab.steer_by_cpu(2);
    let img = lab.image("disk.img", MIB);
    let d = lab.xblade(&[
        "--queues",
        "0,1",
        "--cpus",
        "0,1",
        "1",
        "0",
        "{if}",
        img.to_str().unwrap(),
    ]);
    let ifn = lab.init_if().to_string();
    let cfg = |cpu: &str, args: &[&str]| {
        let mut cmd = vec!["taskset", "-c", cpu, "aoecfg"];
        cmd.extend_from_slice(args);
        cmd.extend_from_slice(&["-t", "2", "1", "0", &ifn]);
        let (status, out, err) = lab.init_exec(&cmd);
        assert!(status.success(), "{err}");
        out
    };
    assert_eq!(
        cfg("1", &["-c", "set", "-s", "via-queue-1"]),
        "via-queue-1\n"
    );
    assert_eq!(
        cfg("0", &[]),
        "via-queue-1\n",
        "queue 0's worker must see queue 1's change"
    );
    assert_eq!(
        cfg("0", &["-c", "fset", "-s", "via-queue-0"]),
        "via-queue-0\n"
    );
    assert_eq!(cfg("1", &[]), "via-queue-0\n");
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert_eq!(rx_per_queue(&log), vec![(0, 2), (1, 2)], "{log}");
}
