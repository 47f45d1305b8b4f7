//! Privileged tests of the real program on a veth pair between two private network namespaces.
//!
//! Each test builds its own pair of namespaces, "target" and "peer", joined by a single-queue
//! veth, with IPv6 off so the kernel sends nothing by itself. The program is attached to the
//! target-side veth; frames are sent from the peer side with an AF_PACKET raw socket, and the
//! program's counters must move by exactly the expected amounts.
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for setns) and `ip` (iproute2). Without root
//! each test prints `SKIPPED (needs root)` and passes, unless `CI=true`, where it fails.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use labkit::{in_netns, ip, link_details, Options, RawSocket, VethLab};
use xblade_ebpf::{
    xdp_attachment, Counters, Mac, Role, SteerError, Steering, XdpMode, ACL_CAPACITY, XSK_SLOTS,
};

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn target_role_driver_mode() {
    check_counts("target_role_driver_mode", XdpMode::Driver, Role::Target);
}

#[test]
fn target_role_skb_mode() {
    check_counts("target_role_skb_mode", XdpMode::Skb, Role::Target);
}

#[test]
fn target_role_auto_mode() {
    check_counts("target_role_auto_mode", XdpMode::Auto, Role::Target);
}

#[test]
fn initiator_role_driver_mode() {
    check_counts(
        "initiator_role_driver_mode",
        XdpMode::Driver,
        Role::Initiator,
    );
}

#[test]
fn initiator_role_skb_mode() {
    check_counts("initiator_role_skb_mode", XdpMode::Skb, Role::Initiator);
}

#[test]
fn initiator_role_auto_mode() {
    check_counts("initiator_role_auto_mode", XdpMode::Auto, Role::Initiator);
}

/// Attaches, sends a fixed mix of frames, checks the counters, registers and unregisters a
/// socket, then drops the steering and checks the interface has no XDP program left.
fn check_counts(test: &str, mode: XdpMode, role: Role) {
    if !labkit::privileged(test, NEEDS) {
        return;
    }
    let lab = Lab::new(1500);
    lab.in_target(|| {
        let mut steering = Steering::attach(lab.target_if(), mode, role, false)
            .unwrap_or_else(|e| panic!("attach in {mode} mode: {e}"));
        // veth supports native XDP, so Auto must pick it.
        let expected_mode = if mode == XdpMode::Skb {
            XdpMode::Skb
        } else {
            XdpMode::Driver
        };
        assert_eq!(steering.mode(), expected_mode);
        assert!(steering.auto_fallback_reason().is_none());
        assert_eq!(steering.role(), role);
        assert_eq!(steering.replaced(), None);
        let attached = xdp_attachment(lab.target_if()).unwrap().expect("attached");
        let id = steering.program_id().unwrap();
        match expected_mode {
            XdpMode::Driver => assert_eq!(attached.driver_prog_id, Some(id)),
            _ => assert_eq!(attached.skb_prog_id, Some(id)),
        }
        assert!(
            lab.ip_details().contains("prog/xdp"),
            "{}",
            lab.ip_details()
        );

        // 3 requests, 2 responses, 4 non-AoE frames, 1 AoE frame cut after the EtherType.
        let (wanted, unwanted) = match role {
            Role::Target => (REQUEST, RESPONSE),
            Role::Initiator => (RESPONSE, REQUEST),
        };
        let mut frames = vec![aoe(REQUEST, 60); 3];
        frames.extend(vec![aoe(RESPONSE, 60); 2]);
        frames.extend(non_aoe_frames());
        frames.push(truncated_aoe());
        let (n_wanted, n_unwanted) = match role {
            Role::Target => (3, 2),
            Role::Initiator => (2, 3),
        };
        let mut expected = Counters {
            redirected: 0,
            // no socket registered: wanted AoE frames go to the stack
            passed: n_wanted + 4,
            dropped: n_unwanted + 1,
            ..Counters::default()
        };
        lab.send(&frames);
        expect_counters(&steering, expected);

        // With a socket in queue 0's slot, wanted frames are redirected (the socket is not
        // bound, so the kernel then drops them, but the program's verdict is XDP_REDIRECT).
        let xsk = xdp_socket();
        steering.register(0, xsk.as_raw_fd()).unwrap();
        lab.send(&[aoe(wanted, 60), aoe(wanted, 60), aoe(unwanted, 60), arp()]);
        expected.redirected += 2;
        expected.dropped += 1;
        expected.passed += 1;
        expect_counters(&steering, expected);

        steering.unregister(0).unwrap();
        steering.unregister(0).unwrap(); // idempotent
        lab.send(&[aoe(wanted, 60)]);
        expected.passed += 1;
        expect_counters(&steering, expected);

        drop(steering);
        assert_eq!(xdp_attachment(lab.target_if()).unwrap(), None);
        let details = lab.ip_details();
        assert!(
            !details.contains("xdp"),
            "still attached after drop:\n{details}"
        );
    });
}

/// An `xdp.frags` program attaches in driver mode at MTU 9000 and sees jumbo frames (a
/// non-frags program gets ERANGE on veth above about 3.5 KiB).
#[test]
fn jumbo_frames_in_driver_mode() {
    if !labkit::privileged("jumbo_frames_in_driver_mode", NEEDS) {
        return;
    }
    let lab = Lab::new(9000);
    lab.in_target(|| {
        let steering =
            Steering::attach(lab.target_if(), XdpMode::Driver, Role::Target, false).unwrap();
        let mut big_other = aoe(REQUEST, 9000);
        big_other[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        lab.send(&[aoe(REQUEST, 9000), aoe(RESPONSE, 9000), big_other]);
        expect_counters(
            &steering,
            Counters {
                redirected: 0,
                dropped: 1,
                passed: 2,
                ..Counters::default()
            },
        );
    });
}

/// A second attach is refused unless `replace`; with it, the first program (held by a bpf_link,
/// in the other mode) is detached, and the first `Steering`'s drop leaves the second alone.
#[test]
fn second_attach_needs_replace() {
    if !labkit::privileged("second_attach_needs_replace", NEEDS) {
        return;
    }
    let lab = Lab::new(1500);
    lab.in_target(|| {
        let first =
            Steering::attach(lab.target_if(), XdpMode::Driver, Role::Target, false).unwrap();
        let first_id = first.program_id().unwrap();

        for mode in [XdpMode::Driver, XdpMode::Skb, XdpMode::Auto] {
            let err = Steering::attach(lab.target_if(), mode, Role::Target, false).unwrap_err();
            assert!(matches!(err, SteerError::AlreadyAttached { .. }), "{err:?}");
            let message = err.to_string();
            assert!(
                message.contains("already has an XDP program attached"),
                "{message}"
            );
            assert!(message.contains("--replace-xdp"), "{message}");
            assert!(
                message.contains(&format!("program id {first_id} in driver mode")),
                "{message}"
            );
        }
        // The refused attempts changed nothing.
        let attached = xdp_attachment(lab.target_if()).unwrap().unwrap();
        assert_eq!(attached.driver_prog_id, Some(first_id));

        let second = Steering::attach(lab.target_if(), XdpMode::Skb, Role::Target, true).unwrap();
        let second_id = second.program_id().unwrap();
        assert_eq!(second.replaced().unwrap().driver_prog_id, Some(first_id));
        let attached = xdp_attachment(lab.target_if()).unwrap().unwrap();
        assert_eq!(attached.driver_prog_id, None);
        assert_eq!(attached.skb_prog_id, Some(second_id));

        drop(first);
        let attached = xdp_attachment(lab.target_if()).unwrap().unwrap();
        assert_eq!(
            attached.skb_prog_id,
            Some(second_id),
            "first drop detached the second"
        );
        lab.send(&[aoe(REQUEST, 60), aoe(RESPONSE, 60)]);
        expect_counters(
            &second,
            Counters {
                redirected: 0,
                dropped: 1,
                passed: 1,
                ..Counters::default()
            },
        );

        // Same mode, replacing a bpf_link again.
        let third = Steering::attach(lab.target_if(), XdpMode::Skb, Role::Initiator, true).unwrap();
        assert_eq!(third.replaced().unwrap().skb_prog_id, Some(second_id));
        drop(second);
        assert_eq!(
            xdp_attachment(lab.target_if())
                .unwrap()
                .unwrap()
                .skb_prog_id,
            Some(third.program_id().unwrap())
        );
        drop(third);
        assert_eq!(xdp_attachment(lab.target_if()).unwrap(), None);
    });
}

/// A program attached over netlink by another tool (here `ip link set ... xdpgeneric obj`) is
/// refused, then replaced with `replace`.
#[test]
fn replaces_a_netlink_attached_program() {
    if !labkit::privileged("replaces_a_netlink_attached_program", NEEDS) {
        return;
    }
    let lab = Lab::new(1500);
    let object = concat!(env!("CARGO_MANIFEST_DIR"), "/aoe_steer.o");
    ip(&[
        "-n",
        lab.target_ns(),
        "link",
        "set",
        "dev",
        lab.target_if(),
        "xdpgeneric",
        "obj",
        object,
        "sec",
        "xdp.frags",
    ]);
    lab.in_target(|| {
        let foreign = xdp_attachment(lab.target_if()).unwrap().unwrap();
        assert!(foreign.skb_prog_id.is_some());
        let err =
            Steering::attach(lab.target_if(), XdpMode::Auto, Role::Target, false).unwrap_err();
        assert!(matches!(err, SteerError::AlreadyAttached { .. }), "{err:?}");

        let steering =
            Steering::attach(lab.target_if(), XdpMode::Auto, Role::Target, true).unwrap();
        assert_eq!(steering.mode(), XdpMode::Driver);
        assert_eq!(steering.replaced(), Some(foreign));
        let attached = xdp_attachment(lab.target_if()).unwrap().unwrap();
        assert_eq!(attached.skb_prog_id, None);
        assert_eq!(
            attached.driver_prog_id,
            Some(steering.program_id().unwrap())
        );
        drop(steering);
        assert_eq!(xdp_attachment(lab.target_if()).unwrap(), None);
    });
}

/// `lo` has no native XDP: driver mode is refused with advice, auto falls back to skb mode.
#[test]
fn auto_falls_back_to_skb_without_native_xdp() {
    if !labkit::privileged("auto_falls_back_to_skb_without_native_xdp", NEEDS) {
        return;
    }
    let lab = Lab::new(1500);
    lab.in_target(|| {
        let err = Steering::attach("lo", XdpMode::Driver, Role::Target, false).unwrap_err();
        assert!(
            matches!(err, SteerError::DriverModeUnsupported { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("use --xdp-mode skb"), "{err}");

        let steering = Steering::attach("lo", XdpMode::Auto, Role::Target, false).unwrap();
        assert_eq!(steering.mode(), XdpMode::Skb);
        assert!(
            matches!(
                steering.auto_fallback_reason(),
                Some(SteerError::DriverModeUnsupported { .. })
            ),
            "{:?}",
            steering.auto_fallback_reason()
        );
        let attached = xdp_attachment("lo").unwrap().unwrap();
        assert_eq!(attached.skb_prog_id, Some(steering.program_id().unwrap()));
        drop(steering);
        assert_eq!(xdp_attachment("lo").unwrap(), None);
    });
}

/// In the target role, requests from a group or all-zero source, and requests to a destination
/// other than the interface's MAC or broadcast, are dropped and counted as `bad_address`; the
/// initiator role checks nothing of the kind. `set_local_mac` moves or disables the destination
/// check without detaching.
#[test]
fn address_hygiene_in_the_target_role() {
    if !labkit::privileged("address_hygiene_in_the_target_role", NEEDS) {
        return;
    }
    let lab = Lab::new(1500);
    let local = lab.target_mac();
    lab.in_target(|| {
        let mut steering =
            Steering::attach(lab.target_if(), XdpMode::Driver, Role::Target, false).unwrap();
        assert_eq!(steering.local_mac(), Some(local));
        let xsk = xdp_socket();
        steering.register(0, xsk.as_raw_fd()).unwrap();
        let other_unicast: Mac = [0x02, 0x99, 0, 0, 0, 1];
        let multicast: Mac = [0x01, 0x00, 0x5e, 0, 0, 1];
        lab.send(&[
            // fine: to us, and to broadcast
            aoe_from(REQUEST, SRC_MAC, local),
            aoe_from(REQUEST, SRC_MAC, BROADCAST),
            // bad sources: multicast, broadcast, all-zero
            aoe_from(REQUEST, multicast, local),
            aoe_from(REQUEST, BROADCAST, BROADCAST),
            aoe_from(REQUEST, [0; 6], local),
            // bad destinations: another unicast MAC, a multicast group
            aoe_from(REQUEST, SRC_MAC, other_unicast),
            aoe_from(REQUEST, SRC_MAC, multicast),
            // responses are dropped as before, whatever their addresses
            aoe_from(RESPONSE, multicast, other_unicast),
        ]);
        let mut expected = Counters {
            redirected: 2,
            dropped: 1,
            bad_address: 5,
            ..Counters::default()
        };
        expect_counters(&steering, expected);

        // The interface's MAC changed: follow it; then no destination check at all.
        let id = steering.program_id().unwrap();
        steering.set_local_mac(Some(other_unicast)).unwrap();
        assert_eq!(steering.local_mac(), Some(other_unicast));
        lab.send(&[
            aoe_from(REQUEST, SRC_MAC, local),
            aoe_from(REQUEST, SRC_MAC, other_unicast),
        ]);
        expected.redirected += 1;
        expected.bad_address += 1;
        expect_counters(&steering, expected);
        steering.set_local_mac(None).unwrap();
        assert_eq!(steering.local_mac(), None);
        lab.send(&[
            aoe_from(REQUEST, SRC_MAC, [0x02, 0x77, 0, 0, 0, 7]),
            aoe_from(REQUEST, BROADCAST, local), // the source check stays
        ]);
        expected.redirected += 1;
        expected.bad_address += 1;
        expect_counters(&steering, expected);
        assert_eq!(steering.program_id().unwrap(), id, "never re-attached");
        drop(steering);

        // The initiator role takes responses from and to anything, as before.
        let mut steering =
            Steering::attach(lab.target_if(), XdpMode::Driver, Role::Initiator, false).unwrap();
        assert_eq!(steering.local_mac(), None);
        steering.register(0, xsk.as_raw_fd()).unwrap();
        lab.send(&[aoe_from(RESPONSE, multicast, [0x02, 0x99, 0, 0, 0, 1])]);
        expect_counters(
            &steering,
            Counters {
                redirected: 1,
                ..Counters::default()
            },
        );
    });
}

/// The source ACL: off at attach (every source passes), then replaced several times while the
/// program stays attached (same program id, frames between updates keep flowing), up to its
/// capacity; a list over capacity is refused and leaves the previous one in place.
#[test]
fn acl_is_replaced_without_detaching() {
    if !labkit::privileged("acl_is_replaced_without_detaching", NEEDS) {
        return;
    }
    let lab = Lab::new(1500);
    let local = lab.target_mac();
    lab.in_target(|| {
        let mut steering =
            Steering::attach(lab.target_if(), XdpMode::Driver, Role::Target, false).unwrap();
        let id = steering.program_id().unwrap();
        let xsk = xdp_socket();
        steering.register(0, xsk.as_raw_fd()).unwrap();
        let a: Mac = [0x02, 0xa0, 0, 0, 0, 1];
        let b: Mac = [0x02, 0xb0, 0, 0, 0, 2];
        let c: Mac = [0x02, 0xc0, 0, 0, 0, 3];
        let from_each = || -> Vec<Vec<u8>> {
            [a, b, c]
                .iter()
                .map(|&m| aoe_from(REQUEST, m, local))
                .collect()
        };
        let mut expected = Counters::default();
        let mut expect = |steering: &Steering, passed: u64, denied: u64| {
            expected.redirected += passed;
            expected.denied += denied;
            expect_counters(steering, expected);
        };

        assert_eq!(steering.acl().unwrap(), None);
        lab.send(&from_each());
        expect(&steering, 3, 0);

        steering.set_acl(Some(&[a])).unwrap();
        assert_eq!(steering.acl().unwrap(), Some(vec![a]));
        lab.send(&from_each());
        expect(&steering, 1, 2);

        // Replaced (duplicates ignored): a leaves, b and c join.
        steering.set_acl(Some(&[c, b, c])).unwrap();
        assert_eq!(steering.acl().unwrap(), Some(vec![b, c]));
        lab.send(&from_each());
        expect(&steering, 2, 1);

        // An empty list lets no one through; no list lets everyone through.
        steering.set_acl(Some(&[])).unwrap();
        assert_eq!(steering.acl().unwrap(), Some(vec![]));
        lab.send(&from_each());
        expect(&steering, 0, 3);
        steering.set_acl(None).unwrap();
        assert_eq!(steering.acl().unwrap(), None);
        lab.send(&from_each());
        expect(&steering, 3, 0);

        // Up to capacity, and no further.
        let many: Vec<Mac> = (0..ACL_CAPACITY)
            .map(|i| [0x02, 0x10, 0, 0, (i >> 8) as u8, i as u8])
            .chain([a])
            .collect();
        let err = steering.set_acl(Some(&many)).unwrap_err();
        assert!(matches!(err, SteerError::AclTooLarge { macs, .. } if macs == ACL_CAPACITY + 1));
        assert!(err.to_string().contains("at most 1024"), "{err}");
        assert_eq!(
            steering.acl().unwrap(),
            None,
            "a refused list changes nothing"
        );
        steering.set_acl(Some(&many[1..])).unwrap();
        assert_eq!(steering.acl().unwrap().unwrap().len(), ACL_CAPACITY);
        lab.send(&from_each());
        expect(&steering, 1, 2);
        // A disjoint list of the same size replaces it (removals go first, so the map never
        // needs room for both).
        let others: Vec<Mac> = (0..ACL_CAPACITY)
            .map(|i| [0x02, 0x20, 0, 0, (i >> 8) as u8, i as u8])
            .collect();
        steering.set_acl(Some(&others)).unwrap();
        assert_eq!(steering.acl().unwrap(), Some(others.clone()));
        lab.send(&from_each());
        expect(&steering, 0, 3);

        assert_eq!(steering.program_id().unwrap(), id, "never re-attached");
        let attached = xdp_attachment(lab.target_if()).unwrap().unwrap();
        assert_eq!(attached.driver_prog_id, Some(id));
    });
}

#[test]
fn errors_say_what_is_wrong() {
    if !labkit::privileged("errors_say_what_is_wrong", NEEDS) {
        return;
    }
    let lab = Lab::new(1500);
    lab.in_target(|| {
        let err = Steering::attach("xbnope0", XdpMode::Auto, Role::Target, false).unwrap_err();
        assert!(matches!(err, SteerError::NoSuchInterface { .. }), "{err:?}");
        assert!(
            err.to_string().contains("no network interface `xbnope0`"),
            "{err}"
        );
        let err = Steering::attach("bad/name", XdpMode::Auto, Role::Target, false).unwrap_err();
        assert!(
            matches!(err, SteerError::InvalidInterfaceName { .. }),
            "{err:?}"
        );

        let mut steering =
            Steering::attach(lab.target_if(), XdpMode::Driver, Role::Target, false).unwrap();
        let xsk = xdp_socket();
        let err = steering.register(XSK_SLOTS, xsk.as_raw_fd()).unwrap_err();
        assert!(matches!(err, SteerError::QueueOutOfRange { queue_id } if queue_id == XSK_SLOTS));
        let err = steering.unregister(XSK_SLOTS).unwrap_err();
        assert!(matches!(err, SteerError::QueueOutOfRange { .. }), "{err:?}");

        let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let err = steering.register(0, udp.as_raw_fd()).unwrap_err();
        assert!(matches!(err, SteerError::NotXskSocket { .. }), "{err:?}");
        assert!(err.to_string().contains("is not an AF_XDP socket"), "{err}");
        let file = File::open("/dev/null").unwrap();
        let err = steering.register(0, file.as_raw_fd()).unwrap_err();
        assert!(matches!(err, SteerError::NotXskSocket { .. }), "{err:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// Frames

const REQUEST: u8 = 0x10; // AoE version 1, no flags
const RESPONSE: u8 = 0x18; // AoE version 1, R flag

/// A broadcast AoE ATA frame with the given ver/flags byte, zero-padded to `len` bytes.
fn aoe(ver_flags: u8, len: usize) -> Vec<u8> {
    let mut frame = ethernet(0x88a2);
    frame.extend_from_slice(&[ver_flags, 0, 0x00, 0x01, 0x01, 0x00]); // error, major 1, minor 1, cmd 0
    frame.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // tag
    frame.resize(len, 0);
    frame
}

/// Ethernet header plus the AoE EtherType and nothing else.
fn truncated_aoe() -> Vec<u8> {
    ethernet(0x88a2)
}

fn arp() -> Vec<u8> {
    let mut frame = ethernet(0x0806);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4 request
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&[10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
    frame.resize(60, 0);
    frame
}

/// Four frames that are not AoE: ARP, IPv4 (the stack discards it), and two made-up
/// EtherTypes, one of them 0x88A3 right next to AoE's.
fn non_aoe_frames() -> Vec<Vec<u8>> {
    let mut ipv4 = ethernet(0x0800);
    ipv4.extend_from_slice(&[
        0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
    ]);
    ipv4.resize(60, 0);
    let mut local = ethernet(0x88b5);
    local.resize(60, 0);
    let mut near = aoe(REQUEST, 60);
    near[12..14].copy_from_slice(&0x88a3u16.to_be_bytes());
    vec![arp(), ipv4, local, near]
}

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const BROADCAST: Mac = [0xff; 6];

/// A 60-byte AoE frame with the given ver/flags byte, source and destination.
fn aoe_from(ver_flags: u8, src: Mac, dst: Mac) -> Vec<u8> {
    let mut frame = aoe(ver_flags, 60);
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

/// Polls until the counters equal `expected`, then checks they stay there (nothing extra).
#[track_caller]
fn expect_counters(steering: &Steering, expected: Counters) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = steering.counters().unwrap();
        if now == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters {now:?}, expected {expected:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        steering.counters().unwrap(),
        expected,
        "counters moved further"
    );
}

// ---------------------------------------------------------------------------------------------
// The lab: two namespaces and a single-queue veth pair with IPv6 off, removed on drop (also when a
// test panics)

const NEEDS: &str = "loads XDP programs and creates network namespaces";

struct Lab(VethLab);

impl Lab {
    fn new(mtu: u32) -> Self {
        let opts = Options {
            mtu,
            ipv6_off: true,
            ..Options::default()
        };
        Self(VethLab::new("xbe", opts))
    }

    fn target_ns(&self) -> &str {
        self.0.ns_a()
    }

    fn target_if(&self) -> &str {
        self.0.if_a()
    }

    /// Runs `f` on a thread inside the target namespace.
    fn in_target<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(self.target_ns(), f)
    }

    /// Sends raw frames out of the peer veth, towards the target.
    fn send(&self, frames: &[Vec<u8>]) {
        let sock = RawSocket::open(self.0.ns_b(), self.0.if_b(), 0);
        for frame in frames {
            sock.send(frame);
        }
    }

    /// The target interface's MAC.
    fn target_mac(&self) -> Mac {
        let text = labkit::mac(self.target_ns(), self.target_if());
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(text.trim().split(':')) {
            *byte = u8::from_str_radix(part, 16).unwrap();
        }
        mac
    }

    /// `ip -d link show` of the target interface.
    fn ip_details(&self) -> String {
        link_details(self.target_ns(), self.target_if())
    }
}

/// An AF_XDP socket, neither bound nor with rings: enough to occupy an XSKMAP slot.
fn xdp_socket() -> OwnedFd {
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "AF_XDP socket: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
