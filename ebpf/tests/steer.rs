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
use xblade_ebpf::{xdp_attachment, Counters, Role, SteerError, Steering, XdpMode, XSK_SLOTS};

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
