//! Tests for `deploy/`: the example configuration parses with the daemon's own parser, the
//! systemd units say what the daemon needs (and pass `systemd-analyze verify` where it exists),
//! their sandbox scores an exposure of 2.0 or less on `systemd-analyze security` (SECURITY.md),
//! and `deploy/tune-nic.sh` is valid, shellcheck-clean, plans the right commands against a fake
//! multi-queue NIC, and changes nothing on a real veth with `--dry-run`.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use labkit::{ip, privileged, Netns};

use crate::cmd::{Captured, CommandExt as _};

fn deploy() -> PathBuf {
    crate::project_root().join("deploy")
}

fn read(rel: &str) -> String {
    fs::read_to_string(deploy().join(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

fn note(msg: &str) {
    // Straight to the stderr fd: libtest captures `eprintln!` of passing tests.
    let _ = writeln!(std::io::stderr(), "\n*** {msg} ***");
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("xblade-deploy-check-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `program` found in this process's PATH (so a test can give the child another PATH).
fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn text(out: &Captured) -> (String, String) {
    (out.stdout_text(), out.stderr_text())
}

#[test]
fn example_config_parses_with_the_daemons_parser() {
    use xblade::config::{Config, IoArg, XdpModeArg};

    let example = read("xblade.example.toml");
    let c =
        Config::from_toml("deploy/xblade.example.toml", &example).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.daemon.xdp_mode, XdpModeArg::Auto);
    assert_eq!(c.interfaces.len(), 1, "one NIC");
    assert_eq!(
        (
            c.interfaces[0].name.as_str(),
            c.interfaces[0].queues.as_slice()
        ),
        ("eth1", &[0, 1][..])
    );
    assert_eq!(c.exports.len(), 2, "two exports");
    assert!(
        c.exports.iter().all(|e| e.on("eth1")),
        "both exports on eth1"
    );
    let rw = &c.exports[0];
    assert!(!rw.read_only && rw.io == IoArg::Direct && !rw.write_back && rw.mask.is_empty());
    let ro = &c.exports[1];
    assert!(ro.read_only, "the second export is read-only");
    assert_eq!(ro.mask_macs().len(), 2, "with a two-MAC mask");

    // The commented-out examples are valid too.
    let uncommented = example
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if ["cpus =", "length =", "serial ="]
                    .iter()
                    .any(|k| rest.starts_with(k)) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let c = Config::from_toml("uncommented", &uncommented).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.daemon.cpus, vec![2, 3]);
    assert_eq!(c.exports[0].length, Some(209_715_200));
    assert_eq!(c.exports[0].serial.as_deref(), Some("1.0:myhost"));
}

/// `key=value` settings of a unit file, comments dropped.
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The sandbox both units share: what xblade needs to start (and nothing more), as
/// (key, values in order). SECURITY.md and deploy/README.md explain each.
const SANDBOX: &[(&str, &[&str])] = &[
    ("LimitMEMLOCK", &["infinity"]),
    // The package's system user (deploy/debian/postinst), in group disk for block devices;
    // RemoveIPC= cleans up what it leaves in /dev/shm.
    ("User", &["xblade"]),
    ("Group", &[]),
    ("DynamicUser", &[]),
    ("SupplementaryGroups", &["disk"]),
    ("RemoveIPC", &["yes"]),
    // The control socket's and the AoE state's directories, shared by every xblade unit.
    ("RuntimeDirectory", &["xblade"]),
    ("RuntimeDirectoryPreserve", &["yes"]),
    ("StateDirectory", &["xblade"]),
    (
        "CapabilityBoundingSet",
        &["CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_IPC_LOCK"],
    ),
    (
        "AmbientCapabilities",
        &["CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_IPC_LOCK"],
    ),
    ("NoNewPrivileges", &["yes"]),
    ("ProtectSystem", &["strict"]),
    ("ReadWritePaths", &["-/srv/aoe"]),
    ("DevicePolicy", &["closed"]),
    // Any block device may be an export; no character device.
    ("DeviceAllow", &["block-* rw"]),
    ("MemoryDenyWriteExecute", &["yes"]),
    // AF_XDP: the datapath; AF_NETLINK: attaching XDP; AF_UNIX: glibc's if_nametoindex.
    ("RestrictAddressFamilies", &["AF_XDP AF_NETLINK AF_UNIX"]),
    ("SystemCallArchitectures", &["native"]),
    // io_uring is in @system-service (@aio); bpf (loading XDP), seccomp (the workers' filter),
    // mincore (in-memory stores), capset (dropping capabilities) and sched_setaffinity (pinning
    // workers) are not, or are taken out with @privileged and @resources, so they are named.
    (
        "SystemCallFilter",
        &[
            "@system-service bpf seccomp mincore",
            "~@privileged @resources",
            "bpf capset sched_setaffinity",
        ],
    ),
    ("SystemCallErrorNumber", &["EPERM"]),
];

#[test]
fn systemd_units_grant_what_the_daemon_needs() {
    for (name, exec) in [
        (
            "xblade.service",
            "/usr/sbin/xblade serve --config /etc/xblade/xblade.toml",
        ),
        (
            "xblade@.service",
            "/usr/sbin/xblade $OPTS ${SHELF} ${SLOT} ${NETIF} ${BACKING}",
        ),
    ] {
        let settings = unit_settings(&read(&format!("systemd/{name}")));
        let get = |key: &str| -> Vec<&str> {
            settings
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        for (key, want) in [
            ("ExecStart", exec),
            // xblade says READY=1 once it serves, and pings the watchdog while workers progress.
            ("Type", "notify"),
            ("NotifyAccess", "main"),
            ("WatchdogSec", "30"),
            ("KillSignal", "SIGTERM"),
            ("TimeoutStopSec", "30"),
            ("Restart", "on-failure"),
            ("WantedBy", "multi-user.target"),
        ] {
            assert_eq!(get(key), vec![want], "{name}: {key}");
        }
        // No Group=disk: RemoveIPC= would then delete every group-disk file in /dev/shm at stop.
        for (key, want) in SANDBOX {
            assert_eq!(&get(key), want, "{name}: {key}");
        }
    }
    let template = unit_settings(&read("systemd/xblade@.service"));
    assert!(template.contains(&("EnvironmentFile".into(), "/etc/xblade/%i.conf".into())));

    // systemd's own parser, with ExecStart pointed at a file that exists.
    let Some(analyze) = which("systemd-analyze") else {
        note("systemd-analyze not installed: units not verified by systemd");
        return;
    };
    let scratch = Scratch::new("units");
    let exe = std::env::current_exe().unwrap();
    for name in ["xblade.service", "xblade@.service"] {
        let unit =
            read(&format!("systemd/{name}")).replace("/usr/sbin/xblade", &exe.to_string_lossy());
        fs::write(scratch.0.join(name), unit).unwrap();
    }
    let out = Command::new(analyze)
        .arg("verify")
        .arg(scratch.0.join("xblade.service"))
        .arg(scratch.0.join("xblade@check.service"))
        .capture()
        .unwrap();
    let (stdout, stderr) = text(&out);
    let ours: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.contains("xblade"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{stdout}{stderr}"
    );
}

/// `systemd-analyze security --offline=yes` rates both units' sandbox at an exposure of 2.0 or
/// less (`--threshold=20`: it exits non-zero above). Needs systemd 250 or newer; without
/// systemd-analyze the test says so, and fails under `CI=true`.
#[test]
fn systemd_units_expose_2_0_or_less() {
    let Some(analyze) = which("systemd-analyze") else {
        let msg = "systemd-analyze not installed (apt-get install systemd): the units' exposure \
                   score is not checked";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{msg}; CI=true forbids skipping"
        );
        note(msg);
        return;
    };
    for name in ["xblade.service", "xblade@.service"] {
        let unit = deploy().join("systemd").join(name);
        let out = Command::new(&analyze)
            .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
            .arg(&unit)
            .capture()
            .unwrap();
        let (stdout, stderr) = text(&out);
        let score = stdout
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, v)| v.split_whitespace().next()?.parse::<f64>().ok());
        let Some(score) = score else {
            panic!("{name}: no exposure level in systemd-analyze's output:\n{stdout}{stderr}");
        };
        let flagged: Vec<&str> = stdout.lines().filter(|l| l.starts_with('✗')).collect();
        assert!(
            out.status.success() && score <= 2.0,
            "{name}: systemd-analyze security rates its exposure {score} (at most 2.0 \
             allowed); what it flags:\n{}\n{stderr}",
            flagged.join("\n")
        );
    }
}

fn script() -> PathBuf {
    deploy().join("tune-nic.sh")
}

/// Runs tune-nic.sh with `args` under bash, with extra environment.
fn tune(args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let bash = which("bash").expect("bash");
    let mut cmd = Command::new(bash);
    cmd.arg(script()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.capture().unwrap();
    let (stdout, stderr) = text(&out);
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// The `+ command` lines of the script's output.
fn commands(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("+ "))
        .map(str::to_owned)
        .collect()
}

/// Every Kubernetes manifest in deploy/k8s validates against the Kubernetes schema, offline
/// (`deploy/k8s/check.sh`, kubernetes-validate in strict mode). Without kubernetes-validate the
/// test says so, and fails under `CI=true` (.ci/run installs it with pip).
#[test]
fn kubernetes_manifests_validate() {
    let installed = which("kubernetes-validate").is_some()
        || Command::new("python3")
            .args(["-c", "import kubernetes_validate"])
            .capture()
            .is_ok_and(|o| o.status.success());
    if !installed {
        let msg = "kubernetes-validate not installed (python3 -m pip install \
                   --break-system-packages kubernetes-validate==1.37.0): deploy/k8s is not checked";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{msg}; CI=true forbids skipping"
        );
        note(msg);
        return;
    }
    let out = Command::new("bash")
        .arg(deploy().join("k8s").join("check.sh"))
        .capture()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "deploy/k8s/check.sh failed:\n{stdout}{stderr}"
    );
    assert!(
        stdout.contains("daemonset.yaml") || stderr.contains("daemonset.yaml"),
        "{stdout}{stderr}"
    );
}

#[test]
fn tune_nic_script_is_valid_and_shellcheck_clean() {
    let out = Command::new("bash")
        .arg("-n")
        .arg(script())
        .capture()
        .unwrap();
    assert!(out.status.success(), "bash -n: {}", text(&out).1);
    let mode = fs::metadata(script()).unwrap();
    assert!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o111 != 0,
        "tune-nic.sh is executable"
    );
    match which("shellcheck") {
        Some(sc) => {
            let out = Command::new(sc).arg(script()).capture().unwrap();
            assert!(out.status.success(), "shellcheck:\n{}", text(&out).0);
        }
        None => {
            note("shellcheck not installed (apt-get install shellcheck): tune-nic.sh not linted")
        }
    }
    let (code, stdout, _) = tune(&["--help"], &[]);
    assert!(code == 0 && stdout.contains("--dry-run") && stdout.contains("--steer MAC=QUEUE"));
    for (args, needle) in [
        (&["--mtu", "9"][..], "--mtu 9: expected 68 to 65535"),
        (
            &["--steer", "02:00:00:00:00:01", "lo"][..],
            "expected MAC=QUEUE",
        ),
        (&["--frobnicate", "lo"][..], "unknown option --frobnicate"),
        (&["lo", "eth0"][..], "expected one interface name"),
        (&["--channels"][..], "--channels needs a value"),
    ] {
        let (code, _, stderr) = tune(args, &[]);
        assert!(
            code == 2 && stderr.contains(needle),
            "{args:?}: exit {code}: {stderr}"
        );
    }
}

#[test]
fn tune_nic_says_how_to_install_ethtool() {
    let bash = which("bash").expect("bash");
    let out = Command::new(bash)
        .arg(script())
        .args(["--dry-run", "lo"])
        .env("PATH", "/nonexistent")
        .env_remove("ETHTOOL")
        .capture()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ethtool not found") && stderr.contains("apt-get install ethtool"),
        "{stderr}"
    );
}

/// A fake `ethtool` for a NIC with 8 combined channels (4 in use), 4096-entry rings, pause on,
/// ntuple filters off-but-available and three rules: two AoE steering rules and a TCP one.
/// Commands that change settings are appended to `$FAKE_ETHTOOL_LOG`.
const FAKE_ETHTOOL: &str = r#"#!/usr/bin/env bash
case $1 in
-i) printf 'driver: fakenic\nversion: 1.0\n' ;;
-l) printf 'Channel parameters for %s:\nPre-set maximums:\nRX:\t\tn/a\nTX:\t\tn/a\nOther:\t\t1\nCombined:\t8\nCurrent hardware settings:\nRX:\t\tn/a\nTX:\t\tn/a\nOther:\t\t1\nCombined:\t4\n' "$2" ;;
-g) printf 'Ring parameters for %s:\nPre-set maximums:\nRX:\t\t4096\nRX Mini:\tn/a\nRX Jumbo:\tn/a\nTX:\t\t4096\nCurrent hardware settings:\nRX:\t\t512\nRX Mini:\tn/a\nRX Jumbo:\tn/a\nTX:\t\t512\nRX Buf Len:\tn/a\n' "$2" ;;
-a) printf 'Pause parameters for %s:\nAutonegotiate:\ton\nRX:\t\ton\nTX:\t\ton\nRX negotiated: on\nTX negotiated: on\n' "$2" ;;
-k) printf 'Features for %s:\nrx-checksumming: on\nntuple-filters: off\nreceive-hashing: on\n' "$2" ;;
-n) printf '4 RX rings available\nTotal 3 rules\n\n'
    printf 'Filter: 1021\n\tFlow Type: Raw Ethernet\n\tSrc MAC addr: 02:00:00:00:00:0A mask: 00:00:00:00:00:00\n\tDest MAC addr: 00:00:00:00:00:00 mask: FF:FF:FF:FF:FF:FF\n\tEthertype: 0x88A2 mask: 0x0\n\tAction: Direct to queue 3\n\n'
    printf 'Filter: 1022\n\tFlow Type: Raw Ethernet\n\tSrc MAC addr: 02:00:00:00:00:0B mask: 00:00:00:00:00:00\n\tDest MAC addr: 00:00:00:00:00:00 mask: FF:FF:FF:FF:FF:FF\n\tEthertype: 0x88A2 mask: 0x0\n\tAction: Direct to queue 1\n\n'
    printf 'Filter: 1023\n\tRule Type: TCP over IPv4\n\tSrc IP addr: 0.0.0.0 mask: 255.255.255.255\n\tDest IP addr: 10.0.0.1 mask: 0.0.0.0\n\tTOS: 0x0 mask: 0xff\n\tSrc port: 0 mask: 0xffff\n\tDest port: 80 mask: 0x0\n\tAction: Direct to queue 0\n\n' ;;
*) echo "$*" >> "$FAKE_ETHTOOL_LOG" ;;
esac
"#;

#[test]
fn tune_nic_plans_the_right_commands_for_a_multiqueue_nic() {
    let scratch = Scratch::new("fake-nic");
    let fake = scratch.0.join("ethtool");
    fs::write(&fake, FAKE_ETHTOOL).unwrap();
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let log = scratch.0.join("changes.log");
    let env = [
        ("ETHTOOL", fake.as_path()),
        ("FAKE_ETHTOOL_LOG", log.as_path()),
    ];
    let f = fake.to_string_lossy();
    let args = [
        "--channels",
        "4",
        "--rings",
        "max",
        "--no-pause",
        "--steer",
        "02:00:00:00:00:0a=1", // a rule exists, to queue 3: replaced
        "--steer",
        "02:00:00:00:00:0B=1", // a rule exists, to queue 1: kept
        "--steer",
        "02:00:00:00:00:0c=2", // new
        "lo",
    ];
    let want = [
        format!("{f} -G lo rx 4096 tx 4096"),
        format!("{f} -A lo autoneg off rx off tx off"),
        format!("{f} -K lo ntuple on"),
        format!("{f} -N lo delete 1021"),
        format!("{f} -N lo flow-type ether src 02:00:00:00:00:0a proto 0x88a2 action 1"),
        format!("{f} -N lo flow-type ether src 02:00:00:00:00:0c proto 0x88a2 action 2"),
    ];

    // Show only: the settings and the advice, nothing planned.
    let (code, stdout, stderr) = tune(&["lo"], &env);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for needle in [
        "driver fakenic",
        "Combined  current 4     max 8",
        "RX        current 512   max 4096",
        "flow control is on",
        "rule 1021: Raw Ethernet, src 02:00:00:00:00:0A, ethertype/mask 0X88A2/0X0 -> Direct to queue 3",
        "4 queues, but RSS sends all AoE frames to one",
    ] {
        assert!(stdout.contains(needle), "show lacks {needle:?}:\n{stdout}");
    }
    assert!(commands(&stdout).is_empty());

    // Dry run: the commands, in order, and nothing run.
    let mut dry = vec!["--dry-run"];
    dry.extend(args);
    let (code, stdout, stderr) = tune(&dry, &env);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(commands(&stdout), want, "{stdout}");
    assert!(stdout.contains("channels: already 4 combined"), "{stdout}");
    assert!(
        stdout.contains("02:00:00:00:00:0B already goes to queue 1 (rule 1022)"),
        "{stdout}"
    );
    assert!(stdout.contains("dry run: nothing was changed"));
    assert!(!log.exists(), "--dry-run ran a command");

    // Impossible requests fail by name, after doing what can be done.
    let (code, stdout, stderr) = tune(
        &[
            "--dry-run",
            "--channels",
            "9",
            "--steer",
            "02:00:00:00:00:0d=3",
            "lo",
        ],
        &env,
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("--channels 9: lo has at most 8 combined channels"),
        "{stderr}"
    );
    let (code, _, stderr) = tune(&["--dry-run", "--steer", "02:00:00:00:00:0d=4", "lo"], &env);
    assert!(
        code == 1 && stderr.contains("queue 4 does not exist (lo has 4 queues: 0 to 3)"),
        "{stderr}"
    );

    // --clear-steer removes the AoE rules only.
    let (_, stdout, _) = tune(&["--dry-run", "--clear-steer", "lo"], &env);
    assert_eq!(
        commands(&stdout),
        [
            format!("{f} -N lo delete 1021"),
            format!("{f} -N lo delete 1022")
        ]
    );

    // For real (root only: the script refuses changes otherwise). Only the fake ethtool runs.
    if !privileged(
        "deploy_check::tune_nic_plans_the_right_commands_for_a_multiqueue_nic (real run)",
        "tune-nic.sh refuses to change anything otherwise",
    ) {
        return;
    }
    let (code, stdout, stderr) = tune(&args, &env);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(commands(&stdout), want);
    let ran: Vec<String> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| format!("{f} {l}"))
        .collect();
    assert_eq!(ran, want);
}

/// `--dry-run` on a real veth in a throwaway namespace plans and changes nothing.
#[test]
fn tune_nic_dry_run_on_a_veth_changes_nothing() {
    if !privileged(
        "deploy_check::tune_nic_dry_run_on_a_veth_changes_nothing",
        "a veth in a throwaway network namespace",
    ) {
        return;
    }
    if which("ethtool").is_none() {
        // Not a CI failure: .ci/run does not install ethtool (yet); the fake-NIC test above
        // covers the script's logic without it.
        note("SKIPPED (needs ethtool): tune_nic_dry_run_on_a_veth_changes_nothing: apt-get install ethtool");
        return;
    }
    let id = std::process::id() % 100_000;
    let (a, b) = (format!("xbltn{id}a"), format!("xbltn{id}b"));
    let netns = Netns::add(format!("xbltn{id}"));
    let ns = netns.name();
    ip(&[
        "-n",
        ns,
        "link",
        "add",
        &a,
        "numrxqueues",
        "2",
        "numtxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        &b,
    ]);
    let before = ip(&["-n", ns, "-d", "-o", "link", "show", "dev", &a]);

    let in_ns = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "bash"])
            .arg(script())
            .args(args)
            .capture()
            .unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.code().unwrap_or(-1), stdout, stderr)
    };
    let (code, stdout, stderr) =
        in_ns(&["--dry-run", "--channels", "1", "--mtu", "9000", "--up", &a]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("== {a}: driver veth")), "{stdout}");
    assert!(stdout.contains("RX        current 2     max 2"), "{stdout}");
    assert_eq!(
        commands(&stdout),
        [
            format!("ip link set dev {a} mtu 9000"),
            format!("ethtool -L {a} rx 1 tx 1"),
            format!("ip link set dev {a} up"),
        ]
    );
    // What a veth cannot do is reported, not attempted.
    let (code, stdout, stderr) = in_ns(&[
        "--dry-run",
        "--no-pause",
        "--steer",
        "02:00:00:00:00:01=1",
        &a,
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("does not report or set flow control"),
        "{stderr}"
    );
    assert!(
        stderr.contains("does not support ntuple filters"),
        "{stderr}"
    );
    assert!(commands(&stdout).is_empty(), "{stdout}");

    assert_eq!(
        ip(&["-n", ns, "-d", "-o", "link", "show", "dev", &a]),
        before,
        "--dry-run changed the veth"
    );
}
