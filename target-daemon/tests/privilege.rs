//! Least privilege once serving (SECURITY.md, `src/privilege.rs`): every thread of a serving
//! daemon has empty capability sets and `no_new_privs`, the worker threads run under the
//! seccomp allow-list, and the daemon still serves, reads its XDP counters and detaches XDP at
//! SIGTERM without any capability.

mod common;

use std::os::unix::process::ExitStatusExt;

use aoe::ata;
use common::{pattern, privileged, Lab};
use xblade::privilege::{cap_names, kept_mask, seccomp_mode, CapMasks};

const MIB: u64 = 1 << 20;

/// (thread name, its /proc status text) for the process and every thread of `pid`, the
/// process first.
fn statuses(pid: u32) -> Vec<(String, String)> {
    let mut v = vec![(
        "process".to_owned(),
        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap(),
    )];
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue; // the thread ended meanwhile
        };
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        v.push((comm.trim().to_owned(), status));
    }
    v
}

fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} line"))
}

/// Every thread, the main one included, has exactly the documented capabilities (none) in its
/// effective, permitted and bounding sets, none inheritable or ambient, and `no_new_privs`;
/// checked with two workers, after "serving workers=" and after a load.
#[test]
fn every_thread_holds_only_the_documented_capabilities_once_serving() {
    if !privileged("every_thread_holds_only_the_documented_capabilities_once_serving") {
        return;
    }
    let lab = Lab::with_queues(2);
    let img = lab.image("disk.img", 4 * MIB);
    let d = lab.xblade(&["--queues", "0,1", "1", "0", "{if}", img.to_str().unwrap()]);
    let want = kept_mask();
    let check = |when: &str| {
        let all = statuses(d.pid());
        assert!(
            all.iter().filter(|(n, _)| n.starts_with("xblade-")).count() == 2,
            "{when}: two worker threads expected: {:?}",
            all.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        for (name, status) in &all {
            let m = CapMasks::parse(status);
            for (set, have, want) in [
                ("CapEff", m.effective, want),
                ("CapPrm", m.permitted, want),
                ("CapBnd", m.bounding, want),
                ("CapInh", m.inheritable, 0),
                ("CapAmb", m.ambient, 0),
            ] {
                assert_eq!(
                    have,
                    want,
                    "{when}: {name}: {set} is {have:#x} ({:?}), documented {want:#x} ({:?})",
                    cap_names(have),
                    cap_names(want)
                );
            }
            assert_eq!(field(status, "NoNewPrivs:"), "1", "{when}: {name}");
        }
    };
    check("after start-up");
    let mut c = lab.client();
    c.discover(1, 0);
    for lba in 0..16 {
        let data = pattern(3, lba, 2);
        assert_eq!(c.write(lba * 2, &data), (ata::STATUS_OK, 0));
        assert_eq!(c.read(lba * 2, 2), (ata::STATUS_OK, 0, data));
    }
    check("after a load");
    let log = d.log();
    assert!(log.contains("capabilities dropped"), "{log}");
    let (status, log) = d.stop();
    assert!(status.success(), "{status}\n{log}");
}

/// Without any capability the daemon serves reads and writes for a while, reads its XDP
/// counters (bpf() on a map fd it already holds) and detaches XDP at SIGTERM (BPF_LINK_DETACH
/// and close on its link), in driver and in skb mode.
#[test]
fn serves_and_detaches_xdp_without_capabilities() {
    if !privileged("serves_and_detaches_xdp_without_capabilities") {
        return;
    }
    for mode in ["driver", "skb"] {
        let lab = Lab::new();
        let img = lab.image("disk.img", 4 * MIB);
        let d = lab.xblade(&["--xdp-mode", mode, "1", "0", "{if}", img.to_str().unwrap()]);
        assert!(lab.xdp_attached());
        let mut c = lab.client();
        c.discover(1, 0);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut n = 0u64;
        while std::time::Instant::now() < until {
            let lba = (n * 2) % (4 * MIB / 512 - 2);
            let data = pattern(n, lba, 2);
            assert_eq!(
                c.write(lba, &data),
                (ata::STATUS_OK, 0),
                "{mode}: write {n}"
            );
            assert_eq!(
                c.read(lba, 2),
                (ata::STATUS_OK, 0, data),
                "{mode}: read {n}"
            );
            n += 1;
        }
        let (status, log) = d.stop();
        assert!(status.success(), "{mode}: {status}\n{log}");
        assert!(log.contains("capabilities dropped"), "{log}");
        assert!(
            log.contains(&format!("writes: {n},")),
            "{mode}: {n} writes served:\n{log}"
        );
        let redirected: u64 = log
            .lines()
            .find(|l| l.contains("XDP counters"))
            .and_then(|l| l.split("redirected=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{mode}: no XDP counters at exit:\n{log}"));
        assert!(
            redirected > 2 * n,
            "{mode}: {redirected} frames counted for {} sent:\n{log}",
            2 * n + 1
        );
        assert!(!lab.xdp_attached(), "{mode}: XDP left attached after exit");
    }
}

/// Every worker thread (`xblade-IFACE-qN`) runs under a seccomp filter (`Seccomp: 2`), and a
/// load of reads, writes and flushes followed by SIGTERM does nothing it forbids: the daemon
/// exits 0, not of SIGSYS.
#[test]
fn worker_threads_run_under_the_seccomp_filter() {
    if !privileged("worker_threads_run_under_the_seccomp_filter") {
        return;
    }
    let lab = Lab::with_queues(2);
    let img = lab.image("disk.img", 4 * MIB);
    let d = lab.xblade(&["--queues", "0,1", "1", "0", "{if}", img.to_str().unwrap()]);
    let all = statuses(d.pid());
    let workers: Vec<_> = all
        .iter()
        .filter(|(n, _)| n.starts_with("xblade-"))
        .collect();
    assert_eq!(
        workers.len(),
        2,
        "{:?}",
        all.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for (name, status) in workers {
        assert_eq!(seccomp_mode(status), Some(2), "{name}: not filtered");
    }
    let mut c = lab.client();
    c.discover(1, 0);
    let flush = aoe::initiator::AtaRequest {
        cmd: ata::FLUSH_EXT,
        feature: 0,
        sectors: 0,
        lba: 0,
        data: None,
    };
    for lba in 0..32 {
        let data = pattern(9, lba, 2);
        assert_eq!(c.write(lba, &data), (ata::STATUS_OK, 0));
        assert_eq!(common::Client::ata_regs(&c.ata(&flush)).0, ata::STATUS_OK);
        assert_eq!(c.read(lba, 2).2, data);
    }
    let (status, log) = d.stop();
    assert_ne!(
        status.signal(),
        Some(libc::SIGSYS),
        "killed by its seccomp filter:\n{log}"
    );
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("seccomp allow-list"), "{log}");
}

/// bpf() with `cmd` on the attribute bytes `attr`; the result or the errno.
fn bpf(cmd: u32, attr: &mut [u64; 16]) -> Result<i64, i32> {
    // SAFETY: `attr` is a valid, writable 128-byte bpf_attr for the duration of the call; the
    // pointers inside it (set by the callers) point to live locals of the caller.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(rc)
    }
}

/// What runtime may still do to a BPF map (such as an access list edited while serving): with
/// every capability gone, updating and reading a map through the fd opened earlier works, while
/// creating a map does not. The thread that drops its capabilities is one of this test's own
/// (capability sets are per thread).
#[test]
fn bpf_map_updates_need_no_capability_once_the_map_is_open() {
    if !privileged("bpf_map_updates_need_no_capability_once_the_map_is_open") {
        return;
    }
    const BPF_MAP_CREATE: u32 = 0;
    const BPF_MAP_LOOKUP_ELEM: u32 = 1;
    const BPF_MAP_UPDATE_ELEM: u32 = 2;
    const BPF_MAP_TYPE_HASH: u64 = 1;
    let create = || {
        let mut attr = [0u64; 16];
        // map_type, key_size (6: a MAC), value_size (8), max_entries (16).
        attr[0] = BPF_MAP_TYPE_HASH | (6 << 32);
        attr[1] = 8 | (16 << 32);
        bpf(BPF_MAP_CREATE, &mut attr)
    };
    std::thread::spawn(move || {
        let fd = create().expect("creating a map as root");
        caps::clear(None, caps::CapSet::Effective).unwrap();
        caps::clear(None, caps::CapSet::Permitted).unwrap();
        assert_eq!(CapMasks::current().unwrap().effective, 0);
        let key = [0x02u8, 0, 0, 0, 0, 1];
        let value = 7u64;
        let mut attr = [0u64; 16];
        attr[0] = fd as u64;
        attr[1] = key.as_ptr() as u64;
        attr[2] = std::ptr::from_ref(&value) as u64;
        assert_eq!(
            bpf(BPF_MAP_UPDATE_ELEM, &mut attr),
            Ok(0),
            "update without capabilities"
        );
        let mut out = 0u64;
        attr[2] = std::ptr::from_mut(&mut out) as u64;
        assert_eq!(
            bpf(BPF_MAP_LOOKUP_ELEM, &mut attr),
            Ok(0),
            "lookup without capabilities"
        );
        assert_eq!(out, 7);
        assert_eq!(
            create(),
            Err(libc::EPERM),
            "creating a map without capabilities"
        );
        // SAFETY: closes the map fd this thread created and owns.
        unsafe { libc::close(fd as i32) };
    })
    .join()
    .unwrap();
}
