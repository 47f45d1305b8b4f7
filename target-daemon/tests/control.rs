//! The control plane end to end (issue #14): `xblade status|stat|add|remove|reload|mask|
//! reserve|config-string` against a daemon in the netns lab, persistent AoE state across a
//! kill -9, Prometheus metrics checked by promtool, and systemd's notify messages through a
//! fake NOTIFY_SOCKET.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoe::initiator::{self, parse_response, Body};
use aoe::wire::{ccmd, mask, reserve};
use common::{pattern, privileged, Client, Lab};
use xblade::status::ExportStatus;

fn export<'a>(s: &'a xblade::status::Status, name: &str) -> &'a ExportStatus {
    s.exports
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", s.exports))
}

fn mac(m: &aoe::Mac) -> String {
    xblade::status::mac_string(m)
}

/// Writes then reads back with a known pattern; returns (writes, reads, bytes each way).
fn io(c: &mut Client, writes: u64, reads: u64, sectors: u8) -> (u64, u64, u64, u64) {
    for i in 0..writes {
        let lba = i * u64::from(sectors);
        assert_eq!(c.write(lba, &pattern(7, lba, sectors)), (0x40, 0));
    }
    for i in 0..reads {
        let lba = (i % writes.max(1)) * u64::from(sectors);
        let (s, _, d) = c.read(lba, sectors);
        assert_eq!(s, 0x40);
        assert_eq!(d, pattern(7, lba, sectors));
    }
    let b = u64::from(sectors) * 512;
    (writes, reads, writes * b, reads * b)
}

#[test]
fn status_counts_what_the_initiator_did() {
    if !privileged("status_counts_what_the_initiator_did") {
        return;
    }
    let lab = Lab::new();
    let a = lab.image("a.img", 8 << 20);
    let b = lab.image("b.img", 4 << 20);
    let cfg = lab.config_file(&[&a, &b], 64);
    let d = lab.xblade(&["serve", "--config", cfg.to_str().unwrap()]);
    let mut c = lab.client();
    c.discover(1, 0);
    let (w, r, wb, rb) = io(&mut c, 40, 100, 2);
    let s = lab.status();
    assert_eq!(s.format, xblade::status::FORMAT);
    assert_eq!(s.pid, d.pid());
    let e = export(&s, "e1.0");
    assert_eq!(
        (
            e.counters.writes,
            e.counters.reads,
            e.counters.write_bytes,
            e.counters.read_bytes
        ),
        (w, r, wb, rb),
        "{e:?}"
    );
    assert_eq!(e.counters.errors, 0);
    assert_eq!(e.latency.count, w + r);
    assert!(
        e.latency.p50_us > 0.0 && e.latency.p99_us >= e.latency.p50_us,
        "{:?}",
        e.latency
    );
    assert_eq!(e.size_bytes, 8 << 20);
    assert_eq!(e.path, a.display().to_string());
    assert_eq!(e.interfaces, vec![lab.target_if().to_owned()]);
    let other = export(&s, "e1.1");
    assert_eq!((other.counters.reads, other.counters.writes), (0, 0));
    // The initiator: every frame it sent (discovery, writes, reads).
    let me = s
        .initiators
        .iter()
        .find(|i| i.mac == mac(&c.mac))
        .unwrap_or_else(|| panic!("initiator {} not in {:?}", mac(&c.mac), s.initiators));
    assert!(me.frames > w + r, "{me:?}");
    assert!(me.last_seen_secs_ago < 30.0);
    let i = &s.interfaces[0];
    assert_eq!(i.name, lab.target_if());
    assert!(!i.zero_copy, "veth has no zero-copy AF_XDP");
    assert!(i.xdp.redirected > w + r, "{:?}", i.xdp);
    assert_eq!(s.workers.len(), 1);
    assert!(s.workers[0].responsive);
    // Idle between requests (one at a time), the worker spun before sleeping: that time is
    // counted, and it is less than the daemon has been up.
    let wk = &s.workers[0];
    assert!(wk.sleeps > 0, "{wk:?}");
    assert!(
        wk.spin_ns > 0 && (wk.spin_ns as f64) < s.uptime_secs * 1e9,
        "spin_ns {} with uptime {} s",
        wk.spin_ns,
        s.uptime_secs
    );
    // The human-readable form names the exports and the initiator.
    let (ok, text, err) = lab.ctl(&["status"]);
    assert!(ok, "{err}");
    for needle in ["e1.0", "e1.1", &mac(&c.mac), lab.target_if()] {
        assert!(text.contains(needle), "{needle} not in:\n{text}");
    }
    d.stop();
}

/// Runs `xblade ARGS` with its standard output a pipe nobody reads (closed before it starts,
/// as after `| head` has what it wanted); returns (exit code, stderr).
fn into_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(common::xblade_bin())
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn completions_into_a_closed_pipe_end_quietly() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, err) = into_closed_pipe(&["completions", shell]);
        assert_eq!(code, Some(0), "xblade completions {shell} | head: {err}");
        assert!(err.is_empty(), "xblade completions {shell} | head: {err}");
    }
}

#[test]
fn stat_into_a_closed_pipe_ends_quietly() {
    if !privileged("stat_into_a_closed_pipe_ends_quietly") {
        return;
    }
    let lab = Lab::new();
    let a = lab.image("a.img", 4 << 20);
    let cfg = lab.config_file(&[&a], 64);
    let d = lab.xblade(&["serve", "--config", cfg.to_str().unwrap()]);
    let control = lab.control_path();
    let control = control.to_str().unwrap();
    // Without --count stat runs until its output goes away: it must end, quietly.
    let (code, err) = into_closed_pipe(&["stat", "--interval", "0.05", "--control", control]);
    assert_eq!(code, Some(0), "xblade stat | head: {err}");
    assert!(err.is_empty(), "xblade stat | head: {err}");
    let (code, err) = into_closed_pipe(&["status", "--control", control]);
    assert_eq!((code, err.as_str()), (Some(0), ""), "xblade status | head");
    // A daemon that is not there is still an error, with its message.
    let gone = lab.dir.join("nobody.sock");
    let (code, err) = into_closed_pipe(&["status", "--control", gone.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("xblade: error:"), "{err}");
    d.stop();
}

#[test]
fn stat_prints_a_line_per_export_per_interval() {
    if !privileged("stat_prints_a_line_per_export_per_interval") {
        return;
    }
    let lab = Lab::new();
    let a = lab.image("a.img", 8 << 20);
    let b = lab.image("b.img", 4 << 20);
    let cfg = lab.config_file(&[&a, &b], 64);
    let d = lab.xblade(&["serve", "--config", cfg.to_str().unwrap()]);
    let busy = Arc::new(AtomicBool::new(true));
    let load = {
        let lab_ns = (lab.init_ns().to_owned(), lab.init_if().to_owned());
        let busy = Arc::clone(&busy);
        std::thread::spawn(move || {
            let mut c = Client::open(&lab_ns.0, &lab_ns.1);
            c.discover(1, 0);
            let mut n = 0u64;
            while busy.load(Ordering::Relaxed) {
                let (s, _, _) = c.read(n % 64, 1);
                assert_eq!(s, 0x40);
                n += 1;
            }
            n
        })
    };
    let (ok, out, err) = lab.ctl(&["stat", "--interval", "0.5", "--count", "3", "e1.0"]);
    busy.store(false, Ordering::Relaxed);
    let reads = load.join().unwrap();
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("r/s"), "{out}");
    let rows: Vec<&str> = lines.iter().skip(1).copied().collect();
    assert_eq!(rows.len(), 3, "one line per interval for e1.0 only:\n{out}");
    assert!(rows.iter().all(|l| l.starts_with("e1.0")), "{out}");
    // r/s is the second column; the reads during the stat run are a part of `reads`.
    let rate: f64 = rows
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap())
        .sum::<f64>()
        / 3.0;
    assert!(rate > 10.0, "reads per second {rate}:\n{out}");
    assert!(
        rate * 1.5 <= reads as f64 * 2.0,
        "{rate} r/s from {reads} reads"
    );
    d.stop();
}

/// A config query to `shelf.slot`: its answer, if any.
fn query(c: &mut Client, shelf: u16, slot: u8) -> Option<Vec<u8>> {
    c.shelf = shelf;
    c.slot = slot;
    c.target = aoe::wire::BROADCAST;
    let a = c.addr();
    let mut f = vec![0u8; 128];
    let n = initiator::config_request(&mut f, &a, ccmd::READ, b"");
    c.transact(&f[..n], a.tag)
}

#[test]
fn exports_are_added_and_removed_under_load_without_disturbing_the_others() {
    if !privileged("exports_are_added_and_removed_under_load_without_disturbing_the_others") {
        return;
    }
    let lab = Lab::new();
    let a = lab.image("a.img", 8 << 20);
    let b = lab.image("b.img", 4 << 20);
    let cfg = lab.config_file(&[&a], 64);
    let d = lab.xblade(&["serve", "--config", cfg.to_str().unwrap()]);
    let busy = Arc::new(AtomicBool::new(true));
    // Load on e1.0: writes and verified reads, each answered on its first send (a 2 s wait:
    // the Linux initiator would have retransmitted long before).
    let load = {
        let (ns, ifname) = (lab.init_ns().to_owned(), lab.init_if().to_owned());
        let busy = Arc::clone(&busy);
        std::thread::spawn(move || {
            let mut c = Client::open(&ns, &ifname);
            c.set_tag_base(0x4000_0000);
            c.discover(1, 0);
            let mut n = 0u64;
            while busy.load(Ordering::Relaxed) {
                let lba = (n % 512) * 2;
                let (s, e) = c.write(lba, &pattern(n, lba, 2));
                assert_eq!((s, e), (0x40, 0), "write {n}");
                let (s, _, data) = c.read(lba, 2);
                assert_eq!(s, 0x40, "read {n}");
                assert_eq!(data, pattern(n, lba, 2), "read {n} returned other data");
                n += 1;
            }
            n
        })
    };
    let mut c = lab.client();
    let b_path = b.to_str().unwrap();
    for round in 0..10 {
        let (ok, out, err) = lab.ctl(&["add", "--shelf", "1", "--slot", "1", "--path", b_path]);
        assert!(ok, "round {round}: add: {err}");
        assert!(out.contains("e1.1 added"), "{out}");
        // Discoverable. (This client's socket sees the load's replies too, and may have
        // overflowed with them while `xblade add` ran: a query is sent up to 3 times.)
        assert!(
            (0..3).any(|_| query(&mut c, 1, 1).is_some()),
            "round {round}: e1.1 does not answer"
        );
        let (ok, _, err) = lab.ctl(&["remove", "e1.1"]);
        assert!(ok, "round {round}: remove: {err}");
        assert!(
            lab.status().exports.iter().all(|e| e.name != "e1.1"),
            "round {round}: e1.1 still listed"
        );
    }
    // Silent once removed.
    assert!(query(&mut c, 1, 1).is_none(), "e1.1 still answers");
    let (ok, _, err) = lab.ctl(&["remove", "e1.1"]);
    assert!(!ok && err.contains("no export e1.1"), "{err}");
    let (ok, _, err) = lab.ctl(&["add", "--shelf", "1", "--slot", "0", "--path", b_path]);
    assert!(!ok && err.contains("twice"), "adding e1.0 again: {err}");
    busy.store(false, Ordering::Relaxed);
    let done = load
        .join()
        .expect("the load on e1.0 saw an error or a lost reply");
    assert!(done > 20, "only {done} requests");
    let s = lab.status();
    let e = export(&s, "e1.0");
    assert_eq!(e.counters.errors, 0);
    assert_eq!(e.counters.writes, done);
    assert!(s.exports.iter().all(|e| e.name != "e1.1"));
    assert_eq!(
        s.workers[0].no_slot + s.workers[0].no_frame,
        0,
        "{:?}",
        s.workers[0]
    );
    d.stop();
}

#[test]
fn reload_applies_a_good_file_and_a_bad_one_changes_nothing() {
    if !privileged("reload_applies_a_good_file_and_a_bad_one_changes_nothing") {
        return;
    }
    let lab = Lab::new();
    let a = lab.image("a.img", 8 << 20);
    let b = lab.image("b.img", 4 << 20);
    let cfg = lab.config_file(&[&a], 64);
    let one = std::fs::read_to_string(&cfg).unwrap();
    let d = lab.xblade(&["serve", "--config", cfg.to_str().unwrap()]);
    let names = |s: &xblade::status::Status| -> Vec<String> {
        s.exports.iter().map(|e| e.name.clone()).collect()
    };
    // Good: e1.1 added (config_file rewrites the same file).
    assert_eq!(lab.config_file(&[&a, &b], 64), cfg);
    let (ok, out, err) = lab.ctl(&["reload"]);
    assert!(ok, "{err}");
    assert!(out.contains("added e1.1"), "{out}");
    assert_eq!(names(&lab.status()), ["e1.0", "e1.1"]);
    let mut c = lab.client();
    c.discover(1, 1);
    // Bad: nothing changes, and the error names the file's problem.
    std::fs::write(&cfg, "[[export]]\nshelf = 1\n").unwrap();
    let (ok, _, err) = lab.ctl(&["reload"]);
    assert!(!ok, "a bad file was accepted");
    assert!(err.contains("nothing changed"), "{err}");
    assert_eq!(names(&lab.status()), ["e1.0", "e1.1"]);
    // SIGHUP: back to the first file, e1.1 removed.
    std::fs::write(&cfg, &one).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while names(&lab.status()) != ["e1.0"] {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.log().contains("configuration reloaded"), "{}", d.log());
    d.stop();
}

/// Set the config string, the mask list and the reserve list as an initiator does, kill -9
/// the daemon right after the last reply, restart it: the state is there.
#[test]
fn aoe_state_survives_kill_9_right_after_the_reply() {
    if !privileged("aoe_state_survives_kill_9_right_after_the_reply") {
        return;
    }
    let lab = Lab::new();
    let a = lab.image("a.img", 8 << 20);
    let mut d = lab.xblade(&["1", "0", "{if}", a.to_str().unwrap()]);
    let mut c = lab.client();
    c.discover(1, 0);
    let me = c.mac;
    let other = [2, 0, 0, 0, 0, 0x42];
    let mut f = vec![0u8; 1200];
    let ad = c.addr();
    let n = initiator::config_request(&mut f, &ad, ccmd::FORCE_SET, b"host=node7 boot=1");
    assert!(
        c.transact(&f[..n], ad.tag).is_some(),
        "config set unanswered"
    );
    let ad = c.addr();
    let n = initiator::reserve_request(&mut f, &ad, reserve::SET, &[me, other]);
    assert!(c.transact(&f[..n], ad.tag).is_some(), "reserve unanswered");
    let ad = c.addr();
    let n = initiator::mask_request(
        &mut f,
        &ad,
        mask::EDIT,
        &[(mask::DCMD_ADD, me), (mask::DCMD_ADD, other)],
    );
    let r = c.transact(&f[..n], ad.tag).expect("mask edit unanswered");
    d.kill9();
    assert!(matches!(
        parse_response(&r).unwrap().body,
        Body::Mask { .. }
    ));
    let file = lab.state_dir().join("e1.0.json");
    assert!(file.exists(), "no state file {}", file.display());
    let d = lab.xblade(&["1", "0", "{if}", a.to_str().unwrap()]);
    assert!(d.log().contains("AoE state restored"), "{}", d.log());
    let s = lab.status();
    let e = export(&s, "e1.0");
    assert_eq!(e.config_string, "host=node7 boot=1");
    assert_eq!(e.mask, vec![mac(&me), mac(&other)]);
    assert_eq!(e.reserve, vec![mac(&me), mac(&other)]);
    // And the initiator reads the string back over the wire.
    let r = c.discover(1, 0);
    match parse_response(&r).unwrap().body {
        Body::Config { string, .. } => assert_eq!(string, b"host=node7 boot=1"),
        b => panic!("{b:?}"),
    }
    d.stop();
    // A state file that does not parse stops the start-up, naming it.
    std::fs::write(&file, "{ not json").unwrap();
    let (_, log) = lab.xblade_fails(&["1", "0", "{if}", a.to_str().unwrap()]);
    assert!(log.contains("e1.0.json"), "{log}");
}

#[test]
fn admin_edits_mask_reserve_and_config_string() {
    if !privileged("admin_edits_mask_reserve_and_config_string") {
        return;
    }
    let lab = Lab::new();
    let a = lab.image("a.img", 8 << 20);
    let d = lab.xblade(&["1", "0", "{if}", a.to_str().unwrap()]);
    let mut c = lab.client();
    c.discover(1, 0);
    let me = mac(&c.mac);
    let (ok, out, err) = lab.ctl(&["config-string", "e1.0", "--set", "admin was here"]);
    assert!(ok, "{err}");
    assert!(out.contains("persisted"), "{out}");
    let r = c.discover(1, 0);
    match parse_response(&r).unwrap().body {
        Body::Config { string, .. } => assert_eq!(string, b"admin was here"),
        b => panic!("{b:?}"),
    }
    let (ok, _, err) = lab.ctl(&["mask", "e1.0", "--add", &me, "--add", "02:00:00:00:00:09"]);
    assert!(ok, "{err}");
    assert_eq!(
        export(&lab.status(), "e1.0").mask,
        vec![me.clone(), "02:00:00:00:00:09".into()]
    );
    let (ok, _, err) = lab.ctl(&["mask", "e1.0", "--remove", "02:00:00:00:00:09"]);
    assert!(ok, "{err}");
    assert_eq!(export(&lab.status(), "e1.0").mask, vec![me.clone()]);
    let (ok, _, err) = lab.ctl(&["mask", "e1.0", "--add", "nope"]);
    assert!(!ok && err.contains("not a MAC"), "{err}");
    // The initiator reserves; the admin clears it.
    let mut f = vec![0u8; 256];
    let ad = c.addr();
    let n = initiator::reserve_request(&mut f, &ad, reserve::SET, &[[2, 0, 0, 0, 0, 7]]);
    assert!(c.transact(&f[..n], ad.tag).is_some());
    assert_eq!(
        export(&lab.status(), "e1.0").reserve,
        vec!["02:00:00:00:00:07".to_owned()]
    );
    let (ok, _, err) = lab.ctl(&["reserve", "e1.0", "--clear"]);
    assert!(ok, "{err}");
    assert!(export(&lab.status(), "e1.0").reserve.is_empty());
    // Cleared: this initiator's writes are served again.
    assert_eq!(c.write(0, &pattern(1, 0, 1)), (0x40, 0));
    let (ok, _, err) = lab.ctl(&["config-string", "e9.9", "--clear"]);
    assert!(!ok && err.contains("no export e9.9"), "{err}");
    // Persisted: in the state file.
    let saved = std::fs::read_to_string(lab.state_dir().join("e1.0.json")).unwrap();
    assert!(
        saved.contains("admin was here") && saved.contains(&me),
        "{saved}"
    );
    d.stop();
}

#[test]
fn metrics_pass_promtool() {
    if !privileged("metrics_pass_promtool") {
        return;
    }
    let promtool = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    if promtool.is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "promtool is missing: apt-get install prometheus"
        );
        eprintln!(
            "SKIPPED metrics_pass_promtool (promtool not installed: apt-get install prometheus)"
        );
        return;
    }
    let lab = Lab::new();
    let a = lab.image("a.img", 8 << 20);
    let d = lab.xblade(&[
        "1",
        "0",
        "{if}",
        a.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:9477",
    ]);
    let mut c = lab.client();
    c.discover(1, 0);
    io(&mut c, 10, 10, 1);
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", lab.target_ns(), "python3", "-c"])
        .arg(
            "import urllib.request,sys;r=urllib.request.urlopen('http://127.0.0.1:9477/metrics');\
             print(r.headers['Content-Type'],file=sys.stderr);sys.stdout.write(r.read().decode())",
        )
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        body.contains("xblade_export_read_bytes_total{export=\"e1.0\"} 5120"),
        "{body}"
    );
    assert!(
        body.contains("xblade_export_writes_total{export=\"e1.0\"} 10"),
        "{body}"
    );
    let (ok, said) = xblade::metrics::promtool_check(&body).unwrap();
    assert!(ok && said.trim().is_empty(), "promtool: {said}");
    d.stop();
}

#[test]
fn systemd_is_told_ready_status_watchdog_and_stopping() {
    if !privileged("systemd_is_told_ready_status_watchdog_and_stopping") {
        return;
    }
    let lab = Lab::new();
    let a = lab.image("a.img", 8 << 20);
    let sock_path = lab.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let env = format!("NOTIFY_SOCKET={}", sock_path.display());
    // A watchdog of 1 s: xblade pets it every 0.5 s while its worker answers.
    let d = lab.xblade_with(
        &["env", &env, "WATCHDOG_USEC=1000000"],
        &["1", "0", "{if}", a.to_str().unwrap()],
    );
    let mut buf = vec![0u8; 4096];
    // A recv with SO_RCVTIMEO can fail with EINTR even without a signal handler (signal(7): a
    // stop and continue of the process; CI saw one): that is not a missing message.
    let recv = |buf: &mut [u8]| loop {
        match sock.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    let n = recv(&mut buf).expect("no notify message");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(msg.contains("STATUS=serving 1 export(s) on"), "{msg}");
    // By then the control socket answers.
    assert_eq!(lab.status().exports.len(), 1);
    let mut pets = 0;
    while pets < 2 {
        let n = recv(&mut buf).expect("no WATCHDOG=1 within 10 s");
        pets += usize::from(String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1"));
    }
    d.stop();
    let mut saw_stopping = false;
    while let Ok(n) = recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            saw_stopping = true;
            break;
        }
    }
    assert!(saw_stopping, "no STOPPING=1");
}
