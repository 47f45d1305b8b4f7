//! Privileged: `aoe-bench echo` in one network namespace, `aoe-bench discover` and
//! `aoe-bench run` in another, joined by a veth pair; at MTU 1500, and at MTU 9000 (jumbo
//! frames over multi-buffer AF_XDP), also against the xblade daemon when it is built.

use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use labkit::{Options, VethLab};

const BIN: &str = env!("CARGO_BIN_EXE_aoe-bench");

const NEEDS: &str = "creates netns, veth, XDP and AF_XDP sockets";

/// Two namespaces, target and initiator, joined by a veth pair, both ends up. Deleted on drop,
/// also on panic.
struct Lab(VethLab);

impl Lab {
    fn new() -> Lab {
        Lab::with_mtu(1500)
    }

    fn with_mtu(mtu: u32) -> Lab {
        Lab(VethLab::new(
            "ab",
            Options {
                mtu,
                ..Options::default()
            },
        ))
    }

    fn ns_target(&self) -> &str {
        self.0.ns_a()
    }

    fn if_target(&self) -> &str {
        self.0.if_a()
    }

    fn ns_init(&self) -> &str {
        self.0.ns_b()
    }

    fn if_init(&self) -> &str {
        self.0.if_b()
    }

    fn bench(&self, ns: &str, args: &[&str]) -> Command {
        self.exec(ns, BIN, args)
    }

    fn exec(&self, ns: &str, bin: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, bin]).args(args);
        c
    }

    /// `aoe-bench run` from the initiator namespace with `args`; its JSON report.
    fn run(&self, args: &[&str], what: &str) -> serde_json::Value {
        let mut all = vec!["run", "-i", self.if_init(), "--json"];
        all.extend_from_slice(args);
        check(&self.bench(self.ns_init(), &all).output().unwrap(), what)
    }
}

/// A target process (`aoe-bench echo` or xblade); SIGTERMed (then killed) on drop.
struct Echo {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Echo {
    /// `aoe-bench echo` as e7.3.
    fn start(lab: &Lab) -> Echo {
        let args = [
            "echo",
            "-i",
            lab.if_target(),
            "--shelf",
            "7",
            "--slot",
            "3",
            "--time",
            "60",
        ];
        Echo::spawn(lab.bench(lab.ns_target(), &args), "ready")
    }

    /// Spawns `cmd` and waits for a stderr line containing `ready`.
    fn spawn(mut cmd: Command, ready: &str) -> Echo {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the target");
        let err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let echo = Echo { child, stderr: rx };
        loop {
            match echo.stderr.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains(ready) => return echo,
                Ok(line) => eprintln!("target: {line}"),
                Err(e) => panic!("the target did not get ready: {e}"),
            }
        }
    }

    /// SIGTERM; returns the exit status and the rest of its stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(st.success());
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                let rest: Vec<String> = self.stderr.try_iter().collect();
                return (status, rest.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the target did not exit within 5 s of SIGTERM");
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn check(out: &Output, what: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{what}: bad JSON ({e}):\n{stdout}\nstderr:\n{stderr}"))
}

#[test]
fn echo_discover_and_run() {
    if !labkit::privileged("echo_discover_and_run", NEEDS) {
        return;
    }
    let lab = Lab::new();
    let echo = Echo::start(&lab);
    let echo_mac = labkit::mac(lab.ns_target(), lab.if_target());

    // discover lists the echo target, with what IDENTIFY said.
    let out = lab
        .bench(
            lab.ns_init(),
            &[
                "discover",
                "-i",
                lab.if_init(),
                "--timeout-ms",
                "500",
                "--json",
            ],
        )
        .output()
        .unwrap();
    let d = check(&out, "discover");
    let targets = d["targets"].as_array().expect("targets array");
    assert_eq!(targets.len(), 1, "{d:#}");
    let t = &targets[0];
    assert_eq!(t["device"], "e7.3");
    assert_eq!(t["mac"], echo_mac.as_str());
    assert_eq!(t["bufcnt"], 64);
    assert_eq!(t["scnt"], 2, "MTU 1500 allows 2 sectors");
    assert_eq!(t["sectors"], 1u64 << 31);
    assert_eq!(t["model"], "aoe-bench echo (no storage)");

    // The table form too.
    let out = lab
        .bench(
            lab.ns_init(),
            &["discover", "-i", lab.if_init(), "--timeout-ms", "300"],
        )
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        table.contains("e7.3") && table.contains(&echo_mac),
        "{table}"
    );

    // run: random reads for 2 s.
    let out = lab
        .bench(
            lab.ns_init(),
            &[
                "run",
                "-i",
                lab.if_init(),
                "--target",
                "e7.3",
                "--rw",
                "randread",
                "--time",
                "2",
                "--json",
            ],
        )
        .output()
        .unwrap();
    let r = check(&out, "run");
    assert_eq!(r["schema"], "aoe-bench/run/1");
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["stop_reason"], "time");
    assert!(r["iops"].as_f64().unwrap() > 0.0, "{r:#}");
    assert!(r["ios"]["read"].as_u64().unwrap() > 0);
    assert_eq!(r["ios"]["write"], 0);
    assert_eq!(r["errors"]["total"], 0, "{r:#}");
    assert_eq!(r["errors"]["ata"], 0);
    assert_eq!(r["errors"]["aoe"], 0);
    assert_eq!(r["verify"]["errors"], 0);
    assert_eq!(r["config"]["bs_sectors"], 2);
    assert_eq!(r["target"]["mac"], echo_mac.as_str());
    assert!(r["latency_us"]["all"]["p50"].as_f64().unwrap() > 0.0);
    let secs = r["duration_s"].as_f64().unwrap();
    assert!((2.0..10.0).contains(&secs), "ran {secs} s");

    // How the generator waits: by default it never sleeps with requests outstanding (it
    // yields the CPU between looks); `--wait sleep` sleeps in poll(2). QD 1 and no spin make
    // every response a wait.
    let mut polls = Vec::new();
    for wait in ["yield", "sleep"] {
        let mut args = vec![
            "run",
            "-i",
            lab.if_init(),
            "-t",
            "e7.3",
            "--qd",
            "1",
            "--spin-us",
            "0",
            "--time",
            "0.5",
            "--json",
        ];
        if wait == "sleep" {
            args.extend(["--wait", "sleep"]);
        }
        let out = lab.bench(lab.ns_init(), &args).output().unwrap();
        let r = check(&out, &format!("run --wait {wait}"));
        assert_eq!(r["ok"], true, "{r:#}");
        assert_eq!(r["config"]["wait"], wait, "{r:#}");
        assert!(r["ios"]["total"].as_u64().unwrap() > 100, "{r:#}");
        polls.push(r["frames"]["polls"].as_u64().unwrap());
    }
    assert_eq!(polls[0], 0, "--wait yield slept in poll(2)");
    assert!(
        polls[1] > 100,
        "--wait sleep polled only {} times",
        polls[1]
    );

    // Writes (with the pattern) are acknowledged too; a size limit stops the run.
    let out = lab
        .bench(
            lab.ns_init(),
            &[
                "run",
                "-i",
                lab.if_init(),
                "-t",
                "e7.3",
                "--rw",
                "write",
                "--verify",
                "--size",
                "1M",
                "--range-sectors",
                "4096",
                "--json",
            ],
        )
        .output()
        .unwrap();
    let w = check(&out, "run --rw write");
    assert_eq!(w["stop_reason"], "size");
    assert_eq!(w["bytes"]["write"], 1 << 20);
    assert_eq!(w["ios"]["write"], 1024);

    // A target that does not exist: a clear error, non-zero exit, no hang.
    let out = lab
        .bench(
            lab.ns_init(),
            &[
                "run",
                "-i",
                lab.if_init(),
                "-t",
                "e9.9",
                "--discover-timeout-ms",
                "300",
            ],
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no answer from e9.9"), "{err}");

    let (status, rest) = echo.stop();
    assert!(status.success(), "echo exited with {status}: {rest}");
    assert!(rest.contains("answers out"), "{rest}");
}

/// The report of a clean run: ok, no error of any kind.
fn assert_clean(r: &serde_json::Value) {
    assert_eq!(r["ok"], true, "{r:#}");
    for key in ["total", "ata", "aoe", "short_reads", "abandoned"] {
        assert_eq!(r["errors"][key], 0, "errors.{key}: {r:#}");
    }
    assert_eq!(r["verify"]["errors"], 0, "{r:#}");
    assert_eq!(r["frames"]["multi_buffer"], true, "{r:#}");
}

#[test]
fn jumbo_frames_with_echo() {
    if !labkit::privileged("jumbo_frames_with_echo", NEEDS) {
        return;
    }
    let lab = Lab::with_mtu(9000);
    let echo = Echo::start(&lab);

    // Reads of 16 sectors: 8228-byte responses, each several RX descriptors.
    let r = lab.run(
        &[
            "-t", "e7.3", "--rw", "randread", "--bs", "16", "--time", "2",
        ],
        "run --rw randread --bs 16",
    );
    assert_clean(&r);
    assert_eq!(r["target"]["scnt"], 16, "MTU 9000 allows 16 sectors: {r:#}");
    assert_eq!(r["config"]["bs_sectors"], 16);
    let reads = r["ios"]["read"].as_u64().unwrap();
    assert!(reads > 0, "{r:#}");
    assert_eq!(r["bytes"]["read"], reads * 8192);
    let rx = r["frames"]["rx"].as_u64().unwrap();
    let rx_descs = r["frames"]["rx_descs"].as_u64().unwrap();
    assert!(rx_descs >= 2 * rx, "jumbo responses: {r:#}");

    // Writes of 16 sectors, with the pattern: each request several TX descriptors.
    let w = lab.run(
        &[
            "-t", "e7.3", "--rw", "write", "--bs", "16", "--verify", "--size", "4M",
        ],
        "run --rw write --bs 16 --verify",
    );
    assert_clean(&w);
    assert_eq!(w["stop_reason"], "size");
    assert_eq!(w["ios"]["write"], 512);
    assert_eq!(w["bytes"]["write"], 4 << 20);
    let tx = w["frames"]["tx"].as_u64().unwrap();
    assert!(tx >= 512, "{w:#}");
    assert_eq!(
        w["frames"]["tx_descs"],
        3 * tx,
        "header + 7, 8, 1 sectors: {w:#}"
    );

    // Small requests still work on the multi-buffer socket.
    let s = lab.run(
        &["-t", "e7.3", "--rw", "randrw", "--bs", "1", "--time", "1"],
        "run --rw randrw --bs 1",
    );
    assert_clean(&s);

    // More than the target accepts is refused up front.
    let out = lab
        .bench(
            lab.ns_init(),
            &["run", "-i", lab.if_init(), "-t", "e7.3", "--bs", "17"],
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("advertises 16 sectors"), "{err}");

    let (status, rest) = echo.stop();
    assert!(status.success(), "echo exited with {status}: {rest}");
    assert!(rest.contains("answers out"), "{rest}");
}

/// The xblade binary built in this target directory, if any.
fn xblade_bin() -> Option<std::path::PathBuf> {
    let bin = std::path::Path::new(BIN).with_file_name("xblade");
    bin.is_file().then_some(bin)
}

#[test]
fn jumbo_frames_with_xblade() {
    if !labkit::privileged("jumbo_frames_with_xblade", NEEDS) {
        return;
    }
    let Some(xblade) = xblade_bin() else {
        let _ = writeln!(
            io::stderr(),
            "jumbo_frames_with_xblade: SKIPPED: no xblade binary next to aoe-bench (build it \
             with `cargo build -p xblade` in the same target directory)"
        );
        return;
    };
    let lab = Lab::with_mtu(9000);
    let img = format!("/dev/shm/aoe-bench-jumbo-{}.img", std::process::id());
    let file = std::fs::File::create(&img).unwrap();
    file.set_len(8 << 20).unwrap();
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    struct RmDir(String);
    impl Drop for RmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(img.clone());
    // A scratch control socket and state directory: never the machine's /run/xblade or
    // /var/lib/xblade.
    let (sock, state) = (format!("{img}.sock"), format!("{img}.state"));
    let _rm_state = (Rm(sock.clone()), RmDir(state.clone()));
    let args = [
        "--control",
        &sock,
        "--state-dir",
        &state,
        "2",
        "5",
        lab.if_target(),
        &img,
    ];
    let target = Echo::spawn(
        lab.exec(lab.ns_target(), xblade.to_str().unwrap(), &args),
        "serving",
    );

    // Write every sector with the pattern in 16-sector requests, then read it all back.
    let w = lab.run(
        &[
            "-t", "e2.5", "--rw", "write", "--bs", "16", "--verify", "--seed", "42", "--size",
            "8M", "--qd", "64",
        ],
        "xblade: run --rw write --bs 16 --verify",
    );
    assert_clean(&w);
    assert_eq!(w["target"]["scnt"], 16, "{w:#}");
    assert_eq!(w["ios"]["write"], 1024);
    let r = lab.run(
        &[
            "-t", "e2.5", "--rw", "read", "--bs", "16", "--verify", "--seed", "42", "--size", "8M",
            "--qd", "64",
        ],
        "xblade: run --rw read --bs 16 --verify",
    );
    assert_clean(&r);
    assert_eq!(r["verify"]["checked_sectors"], 16384, "every sector: {r:#}");
    assert_eq!(r["verify"]["skipped_sectors"], 0);

    // And what is on disk is the pattern, sector by sector.
    let disk = std::fs::read(&img).unwrap();
    for (lba, s) in disk.chunks_exact(512).enumerate() {
        assert_eq!(&s[..8], b"XBVERIFY", "sector {lba}");
        assert_eq!(s[8..16], (lba as u64).to_le_bytes(), "sector {lba}");
        assert_eq!(s[16..24], 42u64.to_le_bytes(), "sector {lba}");
    }

    let (status, rest) = target.stop();
    assert!(status.success(), "xblade exited with {status}: {rest}");
}
