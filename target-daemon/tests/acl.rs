//! End to end: the operator's MAC list (`-m`, `mask = [...]`) is an ACL enforced in XDP and in
//! the protocol layer, and frames with unusable addresses get no answer.
//!
//! Frames "from" other initiators are built with `aoe::initiator` and a chosen source MAC and
//! sent from the lab client's raw socket; replies to such a MAC still reach that socket (veth
//! delivers frames for other stations to packet sockets), so silence means no reply was sent.
//! The daemon's exit counters say where frames went: `rx_frames` in the "worker stopped" line
//! counts what reached the worker through AF_XDP, the "XDP counters" line what XDP dropped
//! (`denied`: not on the ACL; `bad_address`: group or zero source, foreign destination).

mod common;

use std::time::{Duration, Instant};

use aoe::ata;
use aoe::initiator::{self, parse_response, Addr, AtaRequest, Body};
use aoe::wire::{ccmd, mac_to_string, mask, Mac, BROADCAST};
use common::{privileged, Client, Lab};

const MIB: u64 = 1 << 20;
const STRANGER: Mac = [0x02, 0x5e, 0x00, 0x00, 0x00, 0x66];
const OTHER_LISTED: Mac = [0x02, 0x5e, 0x00, 0x00, 0x00, 0x77];

/// A request from `src` to `dst` built by `build`, with a fresh tag; returns it and the tag.
fn request(
    c: &mut Client,
    src: Mac,
    dst: Mac,
    build: impl FnOnce(&mut [u8], &Addr) -> usize,
) -> (Vec<u8>, u32) {
    let mut a = c.addr();
    a.src = src;
    a.dst = dst;
    let mut f = vec![0u8; 2000];
    let n = build(&mut f, &a);
    f.truncate(n);
    (f, a.tag)
}

fn config_query(c: &mut Client, src: Mac, dst: Mac) -> (Vec<u8>, u32) {
    request(c, src, dst, |f, a| {
        initiator::config_request(f, a, ccmd::READ, b"")
    })
}

fn read_request(c: &mut Client, src: Mac, dst: Mac) -> (Vec<u8>, u32) {
    request(c, src, dst, |f, a| {
        initiator::ata_request(f, a, &AtaRequest::read(0, 1))
    })
}

/// Sends `frame` and waits up to `wait` for the response with `tag`.
fn answer(c: &Client, frame: &[u8], tag: u32, wait: Duration) -> Option<Vec<u8>> {
    c.send(frame);
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(r) = c.recv() {
            if u32::from_be_bytes([r[20], r[21], r[22], r[23]]) == tag {
                return Some(r);
            }
        }
    }
    None
}

#[track_caller]
fn silent(c: &Client, frame: &[u8], tag: u32, what: &str) {
    let r = answer(c, frame, tag, Duration::from_millis(400));
    assert!(
        r.is_none(),
        "{what}: expected no reply, got {:02x?}",
        r.map(|r| r[..32].to_vec())
    );
}

/// The number after `key` on the first log line containing `marker` (summed over such lines).
fn counter(log: &str, marker: &str, key: &str) -> u64 {
    let mut total = None;
    for line in log.lines().filter(|l| l.contains(marker)) {
        let Some(at) = line.find(key) else { continue };
        let digits: String = line[at + key.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        *total.get_or_insert(0) += digits.parse::<u64>().unwrap();
    }
    total.unwrap_or_else(|| panic!("no `{key}` on a `{marker}` line:\n{log}"))
}

fn rx_frames(log: &str) -> u64 {
    counter(log, "worker stopped", "rx_frames: ")
}

fn worker_dropped(log: &str) -> u64 {
    counter(log, "worker stopped", " dropped: ")
}

fn xdp(log: &str, key: &str) -> u64 {
    counter(log, "XDP counters", &format!(" {key}="))
}

fn stop(d: common::Daemon) -> String {
    let (status, log) = d.stop();
    assert!(status.success(), "xblade exit {status}:\n{log}");
    log
}

/// A flood from a MAC the export does not list is dropped by XDP: the worker's RX counter
/// does not move with it, XDP's `denied` does, and the listed initiator is served throughout.
#[test]
fn a_flood_from_an_unlisted_mac_is_dropped_in_xdp_while_listed_initiators_are_served() {
    if !privileged(
        "a_flood_from_an_unlisted_mac_is_dropped_in_xdp_while_listed_initiators_are_served",
    ) {
        return;
    }
    const FLOOD: u64 = 100_000;
    let lab = Lab::new();
    let img = lab.image("disk.img", MIB);
    let mut c = lab.client();
    let me = mac_to_string(&c.mac);
    let d = lab.xblade(&["-m", &me, "1", "0", "{if}", img.to_str().unwrap()]);
    assert!(
        d.log().contains("XDP passes only requests from the MACs"),
        "{}",
        d.log()
    );
    c.discover(1, 0);
    let target = c.target;

    let mut flooder = lab.client();
    let (flood_frame, _) = read_request(&mut flooder, STRANGER, target);
    let (listed_sent, served) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            for _ in 0..FLOOD {
                flooder.send(&flood_frame);
            }
        });
        // The listed initiator keeps reading and writing while the flood runs, resending a
        // request that got no answer (a frame veth dropped under the flood).
        let (mut sent, mut served) = (0u64, 0u64);
        let mut i = 0u64;
        while !flood.is_finished() || i < 20 {
            let data = common::pattern(i, i % 64, 1);
            let req = if i.is_multiple_of(2) {
                AtaRequest::write(i % 64, &data)
            } else {
                AtaRequest::read(i % 64, 1)
            };
            let mut a = c.addr();
            a.dst = target;
            let mut f = vec![0u8; 2000];
            let n = initiator::ata_request(&mut f, &a, &req);
            let got = (0..10).find_map(|_| {
                sent += 1;
                answer(&c, &f[..n], a.tag, Duration::from_millis(300))
            });
            let r = got.expect("the listed initiator is not served during the flood");
            assert_eq!(Client::ata_regs(&r).0, ata::STATUS_OK);
            served += 1;
            i += 1;
        }
        flood.join().unwrap();
        (sent, served)
    });
    // And right after it.
    assert_eq!(c.read(0, 1).0, ata::STATUS_OK);

    let log = stop(d);
    let (rx, denied) = (rx_frames(&log), xdp(&log, "denied"));
    eprintln!(
        "flood of {FLOOD} frames from {}: XDP denied {denied}; the worker received {rx} frames \
         ({listed_sent} sent by the listed initiator, {served} answered, plus its discovery and \
         last read)",
        mac_to_string(&STRANGER)
    );
    // Every frame the worker received was the listed initiator's: its discovery, its requests
    // (resends included) and the last read.
    assert!(
        rx <= listed_sent + 2,
        "the flood reached the worker: rx_frames {rx}\n{log}"
    );
    assert!(rx >= served + 2, "{log}");
    // veth may drop part of a flood before XDP sees it (its ring is full); XDP denied the rest.
    assert!(
        (FLOOD * 9 / 10..=FLOOD).contains(&denied),
        "denied {denied} of {FLOOD}\n{log}"
    );
    assert_eq!(xdp(&log, "bad_address"), 0, "{log}");
}

/// With a configured list, a MASK EDIT that deletes every entry leaves the export serving the
/// listed MACs only; adding a MAC outside the list fails with MError 1.
#[test]
fn a_mask_edit_deleting_every_entry_does_not_open_the_export() {
    if !privileged("a_mask_edit_deleting_every_entry_does_not_open_the_export") {
        return;
    }
    let lab = Lab::new();
    let img = lab.image("disk.img", MIB);
    let mut c = lab.client();
    let list = format!("{},{}", mac_to_string(&c.mac), mac_to_string(&OTHER_LISTED));
    let d = lab.xblade(&["-m", &list, "1", "0", "{if}", img.to_str().unwrap()]);
    c.discover(1, 0);
    let target = c.target;
    let me = c.mac;

    let edit = |c: &mut Client, dirs: &[(u8, Mac)]| {
        let (f, tag) = request(c, me, target, |f, a| {
            initiator::mask_request(f, a, mask::EDIT, dirs)
        });
        let r = answer(c, &f, tag, Duration::from_secs(2)).expect("mask edit answered");
        match parse_response(&r).unwrap().body {
            Body::Mask {
                merror,
                dir_count,
                macs,
                ..
            } => (merror, dir_count, macs),
            b => panic!("{b:?}"),
        }
    };
    let dirs = [(mask::DCMD_DEL, me), (mask::DCMD_DEL, OTHER_LISTED)];
    assert_eq!(
        edit(&mut c, &dirs),
        (0, 0, vec![]),
        "the mask list is empty"
    );

    // Still served; the stranger is not, neither by the worker nor past XDP.
    assert_eq!(c.read(0, 1).0, ata::STATUS_OK);
    for (what, (f, tag)) in [
        ("config query", config_query(&mut c, STRANGER, BROADCAST)),
        ("read", read_request(&mut c, STRANGER, target)),
    ] {
        silent(
            &c,
            &f,
            tag,
            &format!("{what} from a stranger after the mask list emptied"),
        );
    }
    // The other listed MAC is served (its reply reaches our socket too).
    let (f, tag) = read_request(&mut c, OTHER_LISTED, target);
    let r = answer(&c, &f, tag, Duration::from_secs(2)).expect("the other listed MAC is served");
    assert_eq!(&r[0..6], &OTHER_LISTED);

    // Adding the stranger fails at that directive; the directive before it stays applied.
    let dirs = [(mask::DCMD_ADD, OTHER_LISTED), (mask::DCMD_ADD, STRANGER)];
    assert_eq!(edit(&mut c, &dirs), (mask::ERR_UNSPEC, 1, vec![]));
    // The mask list is now [OTHER_LISTED]: it narrows the ACL, so we are ignored.
    let (f, tag) = read_request(&mut c, me, target);
    silent(&c, &f, tag, "a listed MAC left out of the mask list");

    let log = stop(d);
    assert_eq!(
        xdp(&log, "denied"),
        2,
        "the stranger's frames stop in XDP\n{log}"
    );
    assert!(
        log.contains("export state changed by an initiator"),
        "{log}"
    );
}

/// XDP passes the union of the lists of the exports on an interface: a request for export A
/// from a MAC only export B lists reaches the worker, which drops it; a MAC no export lists is
/// dropped in XDP.
#[test]
fn xdp_passes_the_union_of_the_lists_and_the_worker_decides_per_export() {
    if !privileged("xdp_passes_the_union_of_the_lists_and_the_worker_decides_per_export") {
        return;
    }
    let lab = Lab::new();
    let a = lab.image("a.img", MIB);
    let b = lab.image("b.img", MIB);
    let mut c = lab.client();
    let conf = lab.dir.join("xblade.toml");
    std::fs::write(
        &conf,
        format!(
            "[[interface]]\nname = \"{}\"\n\n\
             [[export]]\nshelf = 5\nslot = 1\npath = \"{}\"\nmask = [\"{}\"]\n\n\
             [[export]]\nshelf = 5\nslot = 2\npath = \"{}\"\nmask = [\"{}\"]\n",
            lab.target_if(),
            a.display(),
            mac_to_string(&c.mac),
            b.display(),
            mac_to_string(&OTHER_LISTED),
        ),
    )
    .unwrap();
    let d = lab.xblade(&["serve", "--config", conf.to_str().unwrap()]);
    assert!(d.log().contains("macs=2"), "{}", d.log());
    c.discover(5, 1);
    let target = c.target;
    let me = c.mac;

    // e5.1 serves us; e5.2 does not (the worker drops it); e5.2 serves OTHER_LISTED.
    assert_eq!(c.read(0, 1).0, ata::STATUS_OK);
    c.slot = 2;
    let (f, tag) = read_request(&mut c, me, target);
    silent(&c, &f, tag, "e5.2 from a MAC only e5.1 lists");
    let (f, tag) = read_request(&mut c, OTHER_LISTED, target);
    assert!(
        answer(&c, &f, tag, Duration::from_secs(2)).is_some(),
        "e5.2 serves its MAC"
    );
    let (f, tag) = read_request(&mut c, STRANGER, target);
    silent(&c, &f, tag, "e5.2 from a stranger");

    let log = stop(d);
    assert_eq!(xdp(&log, "denied"), 1, "{log}");
    // discover, e5.1 read, e5.2 from us (dropped by the worker), e5.2 from OTHER_LISTED.
    assert_eq!(rx_frames(&log), 4, "{log}");
    assert_eq!(worker_dropped(&log), 1, "{log}");
}

/// Requests from a group (multicast/broadcast) or all-zero source, and requests to another
/// station's unicast MAC, get no reply, on an export that serves anyone.
#[test]
fn group_and_zero_sources_and_other_destinations_get_no_reply() {
    if !privileged("group_and_zero_sources_and_other_destinations_get_no_reply") {
        return;
    }
    let lab = Lab::new();
    let img = lab.image("disk.img", MIB);
    let mut c = lab.client();
    let d = lab.xblade(&["1", "0", "{if}", img.to_str().unwrap()]);
    assert!(
        d.log()
            .contains("XDP passes requests from every source MAC"),
        "{}",
        d.log()
    );
    c.discover(1, 0);
    let target = c.target;
    let me = c.mac;
    let cases: [(&str, Mac, Mac); 6] = [
        ("multicast source", [0x01, 0x00, 0x5e, 0, 0, 1], BROADCAST),
        ("IPv6 multicast source", [0x33, 0x33, 0, 0, 0, 1], target),
        ("broadcast source", BROADCAST, BROADCAST),
        ("all-zero source", [0; 6], target),
        (
            "another station's MAC as destination",
            me,
            [0x02, 0x5e, 0, 0, 0, 0x99],
        ),
        ("multicast destination", me, [0x01, 0x00, 0x5e, 0, 0, 1]),
    ];
    for (what, src, dst) in cases {
        let (f, tag) = config_query(&mut c, src, dst);
        silent(&c, &f, tag, what);
    }
    // The same query, well addressed, is answered.
    let (f, tag) = config_query(&mut c, me, target);
    assert!(answer(&c, &f, tag, Duration::from_secs(2)).is_some());

    let log = stop(d);
    assert_eq!(xdp(&log, "bad_address"), cases.len() as u64, "{log}");
    assert_eq!(xdp(&log, "denied"), 0, "{log}");
    assert_eq!(
        rx_frames(&log),
        2,
        "only the two good queries reach the worker\n{log}"
    );
}

/// An export without a list serves anyone, as before: XDP lets every source through.
#[test]
fn exports_without_a_list_serve_anyone() {
    if !privileged("exports_without_a_list_serve_anyone") {
        return;
    }
    let lab = Lab::new();
    let img = lab.image("disk.img", MIB);
    let mut c = lab.client();
    let d = lab.xblade(&["1", "0", "{if}", img.to_str().unwrap()]);
    c.discover(1, 0);
    let target = c.target;
    for src in [STRANGER, OTHER_LISTED, c.mac] {
        let (f, tag) = config_query(&mut c, src, BROADCAST);
        let r = answer(&c, &f, tag, Duration::from_secs(2)).expect("config answered");
        assert_eq!(&r[0..6], &src, "the reply goes back to the asker");
        let (f, tag) = read_request(&mut c, src, target);
        let r = answer(&c, &f, tag, Duration::from_secs(2)).expect("read answered");
        assert_eq!(Client::ata_regs(&r).0, ata::STATUS_OK);
    }
    let log = stop(d);
    assert_eq!(xdp(&log, "denied"), 0, "{log}");
    assert_eq!(xdp(&log, "bad_address"), 0, "{log}");
}
