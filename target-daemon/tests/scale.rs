//! Scaling out: several NIC queues (one worker each) and several interfaces in one daemon.

mod common;

use std::process::Command;

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
                &lab.init_if,
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
            lab.target_if,
            img.display()
        ),
    )
    .unwrap();
    let d = lab.xblade(&["serve", "--config", conf.to_str().unwrap()]);
    let mac_of = |dev: &str| {
        let out = Command::new("ip")
            .args(["-n", &lab.target_ns, "-o", "link", "show", "dev", dev])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        aoe::wire::parse_mac(
            text.split("link/ether ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap(),
        )
        .unwrap()
    };
    let mut a = lab.client();
    let mut b = Client::open(&lab.init_ns, &i2);
    let ra = a.discover(9, 9);
    let rb = b.discover(9, 9);
    assert_eq!(parse_response(&ra).unwrap().src, mac_of(&lab.target_if));
    assert_eq!(parse_response(&rb).unwrap().src, mac_of(&t2));
    assert_eq!(a.write(100, &pattern(4, 100, 2)), (0x40, 0));
    assert!(
        b.read(100, 2).2 == pattern(4, 100, 2),
        "write via path A not visible via path B"
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}
