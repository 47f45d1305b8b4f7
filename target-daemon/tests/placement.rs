//! CPU placement inside the CPU set xblade was started with (taskset, systemd `CPUAffinity=`,
//! cgroup cpusets): the default picks from it, `--cpus` / `[daemon] cpus` outside it is refused
//! before anything is attached.

mod common;

use common::{privileged, Lab};

const MIB: u64 = 1 << 20;

/// The CPUs of a kernel CPU list (`0-2,5`).
fn parse_list(list: &str) -> Vec<usize> {
    let mut v = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => v.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => v.push(part.parse().unwrap()),
        }
    }
    v
}

/// (thread name, allowed CPUs) of every thread of process `pid`.
fn threads(pid: u32) -> Vec<(String, Vec<usize>)> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {}/status", dir.display()))
                .trim()
                .to_owned()
        };
        v.push((field("Name:"), parse_list(&field("Cpus_allowed_list:"))));
    }
    v.sort();
    v
}

/// The CPU xblade is confined to (the highest this test may use) and one outside that
/// confinement (the lowest); None if this machine (or the test's CPU set) has a single CPU.
fn cpus() -> Option<(usize, usize)> {
    let mine = xblade::sys::current_cpus().unwrap();
    let (lo, hi) = (*mine.first().unwrap(), *mine.last().unwrap());
    if lo == hi {
        eprintln!(
            "SKIPPED: this test needs two CPUs to confine xblade to one of them; it may use only \
             CPU {lo}"
        );
        return None;
    }
    Some((hi, lo))
}

/// `taskset -c 1 xblade --queues 0,1 …`: both workers are pinned to CPU 1, the one CPU of the
/// set (more workers than CPUs: they share it), never to CPU 0; and they serve.
#[test]
fn workers_are_pinned_inside_the_inherited_cpu_set() {
    if !privileged("workers_are_pinned_inside_the_inherited_cpu_set") {
        return;
    }
    let Some((cpu, _)) = cpus() else { return };
    let lab = Lab::with_queues(2);
    let img = lab.image("disk.img", 4 * MIB);
    let cpu_s = cpu.to_string();
    let d = lab.xblade_with(
        &["taskset", "-c", &cpu_s],
        &["--queues", "0,1", "1", "0", "{if}", img.to_str().unwrap()],
    );
    let threads = threads(d.pid());
    let workers: Vec<_> = threads
        .iter()
        .filter(|(name, _)| name.starts_with("xblade-"))
        .collect();
    assert_eq!(
        workers.len(),
        2,
        "one thread per worker expected: {threads:?}\n{}",
        d.log()
    );
    for (name, allowed) in &threads {
        // The workers (and the io_uring threads they start) are pinned to `cpu`; the main thread
        // keeps the set it was given, which is {cpu} too.
        assert_eq!(
            allowed,
            &vec![cpu],
            "thread {name} may run outside CPU {cpu}: {threads:?}"
        );
    }
    let log = d.log();
    let pinned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("worker pinned"))
        .collect();
    assert_eq!(pinned.len(), 2, "{log}");
    assert!(
        pinned.iter().all(|l| l.ends_with(&format!("cpu={cpu}"))),
        "{log}"
    );

    let mut c = lab.client();
    c.discover(1, 0);
    let (status, _, _) = c.read(0, 1);
    assert_eq!(status & 0x01, 0, "the read failed");

    let (st, log) = d.stop();
    assert!(st.success(), "{st}\n{log}");
}

/// `--cpus` naming the one CPU of the set: used as given.
#[test]
fn listed_cpus_inside_the_set_are_used() {
    if !privileged("listed_cpus_inside_the_set_are_used") {
        return;
    }
    let Some((cpu, _)) = cpus() else { return };
    let lab = Lab::new();
    let img = lab.image("disk.img", 4 * MIB);
    let cpu_s = cpu.to_string();
    let d = lab.xblade_with(
        &["taskset", "-c", &cpu_s],
        &["--cpus", &cpu_s, "1", "0", "{if}", img.to_str().unwrap()],
    );
    let workers: Vec<_> = threads(d.pid())
        .into_iter()
        .filter(|(name, _)| name.starts_with("xblade-"))
        .collect();
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0].1, vec![cpu], "{workers:?}");
    let (st, log) = d.stop();
    assert!(st.success(), "{st}\n{log}");
}

/// `taskset -c 1 xblade --cpus 0 …` and `[daemon] cpus = [0]` under `taskset -c 1` are refused
/// at start-up, before XDP is attached, naming the refused and the allowed CPUs.
#[test]
fn cpus_outside_the_set_are_refused_before_xdp_is_attached() {
    if !privileged("cpus_outside_the_set_are_refused_before_xdp_is_attached") {
        return;
    }
    let Some((cpu, outside)) = cpus() else { return };
    let lab = Lab::new();
    let img = lab.image("disk.img", 4 * MIB);
    let (cpu_s, outside_s) = (cpu.to_string(), outside.to_string());
    let advice = "pick from the allowed CPUs or widen the set (taskset, systemd CPUAffinity=, \
                  cgroup cpuset)";

    let (st, log) = lab.xblade_fails_with(
        &["taskset", "-c", &cpu_s],
        &[
            "--cpus",
            &outside_s,
            "1",
            "0",
            "{if}",
            img.to_str().unwrap(),
        ],
    );
    assert!(!st.success(), "{st}\n{log}");
    let want = format!(
        "xblade: error: --cpus {outside}: CPU {outside} is not in this process's CPU set \
         (allowed: {cpu}); {advice}"
    );
    assert!(log.contains(&want), "expected `{want}` in:\n{log}");
    assert!(!log.contains("XDP program attached"), "{log}");
    assert!(!lab.xdp_attached());

    // Both listed, one of them outside.
    let both = format!("{cpu},{outside}");
    let (st, log) = lab.xblade_fails_with(
        &["taskset", "-c", &cpu_s],
        &["--cpus", &both, "1", "0", "{if}", img.to_str().unwrap()],
    );
    assert!(!st.success(), "{st}\n{log}");
    let want = format!(
        "--cpus {both}: CPU {outside} is not in this process's CPU set (allowed: {cpu}); {advice}"
    );
    assert!(log.contains(&want), "expected `{want}` in:\n{log}");

    // The same from the configuration file.
    let conf = lab.dir.join("xblade.toml");
    std::fs::write(
        &conf,
        format!(
            "[daemon]\ncpus = [{outside}]\n\n[[interface]]\nname = \"{}\"\n\n[[export]]\nshelf = 1\n\
             slot = 0\npath = \"{}\"\n",
            lab.target_if(),
            img.display()
        ),
    )
    .unwrap();
    let (st, log) = lab.xblade_fails_with(
        &["taskset", "-c", &cpu_s],
        &["serve", "--config", conf.to_str().unwrap()],
    );
    assert!(!st.success(), "{st}\n{log}");
    let want = format!(
        "[daemon] cpus = [{outside}] in {}: CPU {outside} is not in this process's CPU set \
         (allowed: {cpu}); {advice}",
        conf.display()
    );
    assert!(log.contains(&want), "expected `{want}` in:\n{log}");
    assert!(!log.contains("XDP program attached"), "{log}");
    assert!(!lab.xdp_attached());
}
