//! A worker that dies ends the daemon, promptly and visibly, whichever worker it is: an error
//! from its loop, or a panic. Faults are injected with the test-only `XBLADE_TEST_FAIL_WORKER`.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{privileged, Lab};

const MIB: u64 = 1 << 20;

/// Worker 2 of 2 (queue 1) fails 300 ms after it started while worker 1 (queue 0) runs: the
/// daemon stops worker 1, detaches XDP and exits 1 within a few seconds, naming the worker and
/// the error.
#[test]
fn a_failing_worker_ends_the_daemon() {
    if !privileged("a_failing_worker_ends_the_daemon") {
        return;
    }
    let lab = Lab::with_queues(2);
    let img = lab.image("disk.img", 4 * MIB);
    let start = Instant::now();
    let d = lab.xblade_with(
        &["env", "XBLADE_TEST_FAIL_WORKER={if}:1:300"],
        &["--queues", "0,1", "1", "0", "{if}", img.to_str().unwrap()],
    );
    let (st, log) = d.wait_exit();
    let took = start.elapsed();
    assert_eq!(st.code(), Some(1), "{st}\n{log}");
    assert!(took < Duration::from_secs(5), "took {took:?}\n{log}");
    let want = format!(
        "xblade: error: worker {} queue 1 failed: XBLADE_TEST_FAIL_WORKER: injected failure in \
         worker {} queue 1 after 300 ms",
        lab.target_if(),
        lab.target_if()
    );
    assert!(log.contains(&want), "expected `{want}` in:\n{log}");
    // The other worker drained and stopped; then XDP went.
    assert!(
        log.lines()
            .any(|l| l.contains("worker stopped") && l.contains("queue=0")),
        "{log}"
    );
    assert!(log.contains("XDP detached"), "{log}");
    assert!(!lab.xdp_attached(), "XDP still attached after exit");
}

/// A panic in a worker ends the process (SIGABRT with the release profile's panic = "abort";
/// exit 1 in a build that unwinds), with the panic message and the thread in the log.
#[test]
fn a_panicking_worker_ends_the_process() {
    if !privileged("a_panicking_worker_ends_the_process") {
        return;
    }
    let lab = Lab::with_queues(2);
    let img = lab.image("disk.img", 4 * MIB);
    let start = Instant::now();
    let d = lab.xblade_with(
        // No core file from the abort.
        &[
            "env",
            "XBLADE_TEST_FAIL_WORKER={if}:1:300:panic",
            "prlimit",
            "--core=0",
        ],
        &["--queues", "0,1", "1", "0", "{if}", img.to_str().unwrap()],
    );
    let (st, log) = d.wait_exit();
    let took = start.elapsed();
    eprintln!("xblade ended with {st} after {took:?}");
    assert!(
        st.signal() == Some(libc::SIGABRT) || st.code().is_some_and(|c| c != 0),
        "{st}\n{log}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}\n{log}");
    let want = format!("thread 'xblade-{}-q1' panicked at ", lab.target_if());
    assert!(log.contains(&want), "expected `{want}` in:\n{log}");
    let msg = format!(
        "XBLADE_TEST_FAIL_WORKER: injected panic in worker {} queue 1 after 300 ms",
        lab.target_if()
    );
    assert!(log.contains(&msg), "expected `{msg}` in:\n{log}");
    assert!(
        log.contains("ERROR"),
        "the panic is logged as an error:\n{log}"
    );
    // The kernel detaches XDP when the bpf_link of a dead process closes.
    let deadline = Instant::now() + Duration::from_secs(2);
    while lab.xdp_attached() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!lab.xdp_attached(), "XDP still attached after exit");
}
