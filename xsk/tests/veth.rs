//! Privileged: AF_XDP on a veth pair in fresh network namespaces. TX is checked byte for byte
//! by an AF_PACKET socket on the peer; bind errors are checked for their advice.

use std::io;
use std::time::{Duration, Instant};

use labkit::{in_netns, RawSocket, VethLab, ETH_P_AOE};
use xsk::{Socket, SocketConfig, Umem, UmemConfig, ZeroCopy};

const NEEDS: &str = "creates netns, veth and AF_XDP sockets";

/// Two namespaces joined by a veth pair (`if_a` in `ns_a`, `if_b` in `ns_b`), both up; deleted on
/// drop, also when a test panics.
fn veth_pair() -> VethLab {
    VethLab::new("xsk", labkit::Options::default())
}

/// A broadcast frame with the AoE ethertype and a pattern that differs per `i`.
fn aoe_frame(i: usize, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|k| (k * 31 + i * 7) as u8).collect();
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0x5a, i as u8]);
    f[12..14].copy_from_slice(&ETH_P_AOE.to_be_bytes());
    f[14] = 0x10; // AoE version 1, no flags
    f
}

fn small_umem() -> Umem {
    let cfg = UmemConfig {
        frame_count: 128,
        fill_size: 64,
        comp_size: 64,
        ..UmemConfig::default()
    };
    Umem::new(cfg).unwrap()
}

fn small_socket() -> SocketConfig {
    SocketConfig {
        rx_size: 64,
        tx_size: 64,
        ..SocketConfig::default()
    }
}

#[test]
fn tx_reaches_peer_byte_for_byte() {
    if !labkit::privileged("tx_reaches_peer_byte_for_byte", NEEDS) {
        return;
    }
    let veth = veth_pair();
    let pkt = RawSocket::open(veth.ns_b(), veth.if_b(), ETH_P_AOE);
    let mut umem = small_umem();
    let mut sock = in_netns(veth.ns_a(), || {
        Socket::new(veth.if_a(), 0, &umem, small_socket()).unwrap()
    });
    assert!(
        !sock.zero_copy(),
        "veth has no zero-copy, Auto must fall back to copy mode"
    );

    // Buffers for RX (nothing arrives without an XDP redirect program).
    let mut fill = Vec::new();
    assert_eq!(umem.alloc_many(&mut fill, 16), 16);
    assert_eq!(sock.fill(&mut fill), 16);
    assert!(fill.is_empty());
    assert_eq!(sock.fill_free(), 64 - 16);

    // More frames than one copy-mode sendto() sends (32), built at varying chunk offsets.
    const N: usize = 40;
    let expected: Vec<Vec<u8>> = (0..N).map(|i| aoe_frame(i, 60 + i * 37)).collect();
    let mut tx = Vec::new();
    for (i, bytes) in expected.iter().enumerate() {
        let mut f = umem.alloc().unwrap();
        let off = i * 50;
        umem.chunk_mut(&mut f)[off..off + bytes.len()].copy_from_slice(bytes);
        f.set(off as u32, bytes.len() as u32);
        assert_eq!(umem.data(&f), &bytes[..]);
        tx.push(f);
    }
    let sent_addrs: Vec<u64> = tx.iter().map(|f| f.addr()).collect();
    assert_eq!(sock.send(&mut tx), N);
    assert!(tx.is_empty());
    assert_eq!(sock.tx_free(), 64 - N as u32);

    let mut done = Vec::new();
    let mut kicks = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while done.len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} completions",
            done.len()
        );
        if sock.needs_wakeup_tx() {
            sock.kick_tx().unwrap();
            kicks += 1;
        }
        sock.complete(&mut done, 64);
    }
    eprintln!("{N} frames completed after {kicks} kicks");
    let mut got_addrs: Vec<u64> = done.iter().map(|f| f.addr()).collect();
    got_addrs.sort_unstable();
    assert_eq!(got_addrs, sent_addrs);
    assert!(done.iter().all(|f| f.offset() == 0 && f.len() == 4096));
    done.drain(..).for_each(|f| umem.free(f));
    assert_eq!(sock.tx_free(), 64);

    for (i, exp) in expected.iter().enumerate() {
        let got = pkt
            .recv()
            .unwrap_or_else(|| panic!("frame {i} did not arrive"));
        assert_eq!(&got, exp, "frame {i} differs");
    }
    let st = sock.statistics().unwrap();
    assert_eq!(
        (st.tx_invalid_descs, st.rx_invalid_descs, st.rx_dropped),
        (0, 0, 0),
        "{st:?}"
    );

    // Idle RX: nothing is ready, and waking is harmless.
    assert!(!sock.poll_rx(0).unwrap());
    sock.wake_rx().unwrap();
    let mut rx = Vec::new();
    assert_eq!(sock.recv(&mut rx, 64), 0);
    sock.set_busy_poll(20, 64).unwrap();
}

#[test]
fn bind_errors_say_what_to_do() {
    if !labkit::privileged("bind_errors_say_what_to_do", NEEDS) {
        return;
    }
    let veth = veth_pair();
    let name = veth.if_a();
    in_netns(veth.ns_a(), || {
        let umem = small_umem();
        let cfg = SocketConfig {
            zero_copy: ZeroCopy::Require,
            ..small_socket()
        };
        let err = Socket::new(name, 0, &umem, cfg).unwrap_err().to_string();
        eprintln!("Require on veth: {err}");
        assert!(err.contains(name) && err.contains("zero-copy"), "{err}");

        let err = Socket::new(name, 3, &umem, small_socket())
            .unwrap_err()
            .to_string();
        eprintln!("queue 3 on veth: {err}");
        assert!(
            err.contains("queue 3") && err.contains("does not exist"),
            "{err}"
        );

        let err = Socket::new("xsk-nonexistent", 0, &umem, small_socket()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");

        // Failed binds released the UMEM, so it can be registered now.
        let sock = Socket::new(name, 0, &umem, small_socket()).unwrap();
        let cfg = SocketConfig {
            zero_copy: ZeroCopy::Off,
            ..small_socket()
        };
        let err = Socket::new(name, 0, &umem, cfg).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");

        let other = small_umem();
        let err = Socket::new(name, 0, &other, small_socket())
            .unwrap_err()
            .to_string();
        eprintln!("second socket on the queue: {err}");
        assert!(err.contains("already bound"), "{err}");

        // The kernel frees the queue from a workqueue after close, so it is briefly EBUSY.
        drop(sock);
        let t0 = Instant::now();
        let mut tries = 0;
        let _sock = loop {
            tries += 1;
            match Socket::new(name, 0, &umem, small_socket()) {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::ResourceBusy && t0.elapsed().as_secs() < 5 => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("UMEM and queue not reusable after the socket closed: {e}"),
            }
        };
        eprintln!("queue free again after {:?} ({tries} binds)", t0.elapsed());
    });
}

#[test]
fn memlock_enobufs_is_explained() {
    if !labkit::privileged("memlock_enobufs_is_explained", NEEDS) {
        return;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    assert_eq!(rc, 0);
    if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur > 1 << 30 {
        eprintln!("memlock_enobufs_is_explained: RLIMIT_MEMLOCK is unlimited; nothing to check");
        return;
    }
    let veth = veth_pair();
    let name = veth.if_a();
    let err = in_netns(veth.ns_a(), || {
        labkit::drop_capability_on_this_thread(labkit::CAP_IPC_LOCK);
        let frames = u32::try_from(lim.rlim_cur / 4096 + 16).unwrap();
        let cfg = UmemConfig {
            frame_count: frames,
            ..UmemConfig::default()
        };
        let umem = Umem::new(cfg).unwrap();
        Socket::new(name, 0, &umem, small_socket())
            .unwrap_err()
            .to_string()
    });
    eprintln!("UMEM over RLIMIT_MEMLOCK without CAP_IPC_LOCK: {err}");
    assert!(
        err.contains("RLIMIT_MEMLOCK") && err.contains("LimitMEMLOCK=infinity"),
        "{err}"
    );
}
