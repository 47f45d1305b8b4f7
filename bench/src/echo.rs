//! `aoe-bench echo`: a target with no storage, answering every request at once. Reads get
//! whatever the frame's chunks hold as data (the ceiling does not care), writes are
//! acknowledged unread. Everything else (Query Config, IDENTIFY, mask, reserve) is the real
//! target state machine, [`aoe::target::decide`], on an in-memory [`ExportState`], so `run`
//! and `discover` cannot tell it from a real target.
//!
//! Jumbo frames (multi-buffer): a request in several descriptors is decided on a copy of its
//! first descriptor (all headers are there; a write's data is not read) with its whole length,
//! and answered from its first chunk; a read response larger than a chunk goes out as several
//! descriptors (header and 7 sectors, then 8 per chunk), as xblade sends it.

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use aoe::target::{self, Decision, ExportState, Iface, IoOutcome, StateChange};
use aoe::wire::{mac_to_string, ATA_HLEN, BROADCAST, SECTOR};
use serde::Serialize;
use xblade_ebpf::Role;

use crate::cli::EchoArgs;
use crate::net::{Port, CHUNK};
use crate::report::{fmt_bytes, fmt_rate};

/// Frames taken from the RX ring per iteration.
const RX_BATCH: usize = 256;
/// Longest sleep (the stop flag is checked in between).
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// What the echo answered.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct EchoStats {
    /// `aoe-bench/echo/1`.
    pub schema: &'static str,
    /// Requests received.
    pub rx_frames: u64,
    /// Responses sent.
    pub tx_frames: u64,
    /// RX descriptors (a jumbo request may be several).
    pub rx_descs: u64,
    /// TX descriptors (a jumbo read response is several).
    pub tx_descs: u64,
    /// READs answered.
    pub reads: u64,
    /// WRITEs answered.
    pub writes: u64,
    /// Other answers (config, IDENTIFY, errors, ...).
    pub other: u64,
    /// Frames not answered (not for us, responses, silent config tests, no free frame for a
    /// jumbo response).
    pub dropped: u64,
    /// Seconds served.
    pub duration_s: f64,
    /// Responses per second.
    pub tx_per_s: f64,
    /// `sendto` kicks.
    pub kicks: u64,
    /// `poll` sleeps.
    pub polls: u64,
}

/// `aoe-bench echo`. Runs until `stop` (or `--time`).
pub fn echo(args: &EchoArgs, stop: &AtomicBool) -> Result<()> {
    let mut port = Port::open(&args.port, Role::Target, 2048)?;
    let mtu = port.mtu();
    if mtu < aoe::wire::MIN_MTU {
        bail!(
            "the MTU of {} ({mtu}) is below {}: a full config string would not fit",
            port.ifname(),
            aoe::wire::MIN_MTU
        );
    }
    if args.config_string.len() > aoe::wire::MAX_CONFIG {
        bail!(
            "--config-string is {} bytes; at most {}",
            args.config_string.len(),
            aoe::wire::MAX_CONFIG
        );
    }
    // What a frame carries here: the MTU's (multi-buffer), or what fits one chunk.
    let frame_max = ((port.max_frame() - ATA_HLEN) / SECTOR).min(255);
    let last_slot = u16::from(args.slot) + args.slots - 1;
    if last_slot >= u16::from(aoe::wire::SLOT_ANY) {
        bail!(
            "--slot {} --slots {} reaches slot {last_slot}: the last usable slot is 254",
            args.slot,
            args.slots
        );
    }
    let exports: Vec<ExportState> = (args.slot..=last_slot as u8)
        .map(|slot| {
            let mut export = ExportState::new(args.shelf, slot, args.sectors);
            export.bufcnt = args.bufcnt;
            export.max_sectors =
                args.scnt
                    .map_or(frame_max, |s| usize::from(s).min(frame_max)) as u8;
            export.model = "aoe-bench echo (no storage)".into();
            export.serial = format!("echo-{}.{slot}", args.shelf);
            export.config = args.config_string.clone().into_bytes();
            export
        })
        .collect();
    let mut exports = exports;
    let iface = Iface {
        mac: port.mac(),
        mtu,
    };
    let scnt = iface.advertised_sectors(&exports[0]);

    // Announce ourselves, as vblade does at start-up.
    for export in &exports {
        port.push_with(|buf| target::advertisement(export, &iface, BROADCAST, buf))?;
    }
    port.flush()?;
    let announced = exports.len() as u64;
    let names = if exports.len() == 1 {
        format!("e{}.{}", args.shelf, args.slot)
    } else {
        format!("e{}.{}..e{}.{last_slot}", args.shelf, args.slot, args.shelf)
    };
    eprintln!(
        "aoe-bench echo: {names} on {} ({}, MTU {}), {} sectors/request, bufcnt {}, {} reported, \
         XDP {} mode, AF_XDP {}{}: ready",
        port.ifname(),
        mac_to_string(&port.mac()),
        mtu,
        scnt,
        exports[0].bufcnt,
        fmt_bytes(args.sectors * SECTOR as u64),
        port.xdp_mode(),
        if port.zero_copy() {
            "zero-copy"
        } else {
            "copy"
        },
        if port.multi_buffer() {
            " multi-buffer"
        } else {
            ""
        },
    );

    let progress = !args.json && std::io::stderr().is_terminal();
    let spin = Duration::from_micros(args.port.spin_us);
    let start = Instant::now();
    let deadline = args.time.map(|s| start + Duration::from_secs_f64(s));
    let mut stats = EchoStats {
        schema: "aoe-bench/echo/1",
        ..EchoStats::default()
    };
    let mut pkt = Port::packet_vec();
    // Where a request of several descriptors is decided: a copy of its first one.
    let mut scratch = vec![0u8; port.max_frame().max(CHUNK as usize)];
    let mut idle_since: Option<Instant> = None;
    let mut next_progress = start + Duration::from_secs(2);
    let mut last = (start, 0u64);
    loop {
        let now = Instant::now();
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| now >= d) {
            break;
        }
        let n = port.recv(RX_BATCH);
        while port.next_packet(&mut pkt) {
            stats.rx_frames += 1;
            let total = port.packet(&pkt).len();
            let fragmented = pkt.len() > 1;
            for f in pkt.drain(1..) {
                port.recycle(f);
            }
            let mut f = pkt.pop().expect("a frame has a descriptor");
            let (off, len) = (f.offset() as usize, f.len() as usize);
            let room = CHUNK as usize - off;
            // The export the request names (bytes 16..19 of the frame: shelf, slot).
            let x = {
                let head = port.data(&f);
                pick(args.shelf, args.slot, exports.len(), head)
            };
            let export = &exports[x];
            let (reply, change) = if !fragmented {
                answer(
                    export,
                    &iface,
                    &mut port.chunk(&mut f)[off..],
                    len,
                    &mut stats,
                )
            } else if total <= scratch.len() {
                scratch[..len].copy_from_slice(port.data(&f));
                let (reply, change) = answer(export, &iface, &mut scratch, total, &mut stats);
                if let Some(n) = reply {
                    // The response's bytes that go in the first chunk: all, or the header of
                    // a read response (its data is whatever the chunks hold).
                    let k = if n <= room { n } else { ATA_HLEN };
                    port.chunk(&mut f)[off..off + k].copy_from_slice(&scratch[..k]);
                }
                (reply, change)
            } else {
                (None, None)
            };
            if let Some(change) = change {
                exports[x].apply(change);
            }
            match reply {
                Some(n) if n <= room => {
                    f.set(off as u32, n as u32);
                    port.push(f);
                }
                Some(n) => {
                    if !port.push_packet(f, off, n, ATA_HLEN, |_, _| ()) {
                        stats.dropped += 1;
                    }
                }
                None => {
                    stats.dropped += 1;
                    port.recycle(f);
                }
            }
        }
        let queued = port.queued();
        port.flush()?;
        port.refill();
        if progress && now >= next_progress {
            next_progress = now + Duration::from_secs(1);
            let dt = now.duration_since(last.0).as_secs_f64();
            let rate = (port.stats.tx_frames - last.1) as f64 / dt;
            let _ = write!(
                std::io::stderr(),
                "\r\x1b[K{:>4.0}s  {} frames/s answered",
                now.duration_since(start).as_secs_f64(),
                fmt_rate(rate)
            );
            last = (now, port.stats.tx_frames);
        }
        if n > 0 || queued > 0 {
            idle_since = None;
        } else if now.duration_since(*idle_since.get_or_insert(now)) > spin {
            port.wait(MAX_SLEEP)?;
        }
    }
    if progress && Instant::now() > start + Duration::from_secs(2) {
        let _ = write!(std::io::stderr(), "\r\x1b[K");
    }
    stats.tx_frames = port.stats.tx_frames.saturating_sub(announced); // the advertisements
    stats.rx_descs = port.stats.rx_descs;
    stats.tx_descs = port.stats.tx_descs.saturating_sub(announced);
    stats.duration_s = start.elapsed().as_secs_f64();
    stats.tx_per_s = stats.tx_frames as f64 / stats.duration_s.max(1e-9);
    stats.kicks = port.stats.kicks;
    stats.polls = port.stats.polls;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        eprintln!(
            "aoe-bench echo: {} requests in, {} answers out ({} reads, {} writes, {} other, {} \
             dropped) in {:.1} s: {} answers/s, {} kicks, {} polls",
            stats.rx_frames,
            stats.tx_frames,
            stats.reads,
            stats.writes,
            stats.other,
            stats.dropped,
            stats.duration_s,
            fmt_rate(stats.tx_per_s),
            stats.kicks,
            stats.polls
        );
    }
    Ok(())
}

/// Which of `n` exports (slots `slot..slot + n` of `shelf`) the frame starting with `head`
/// is for: the one its address names, else the first (which answers a wildcard request and
/// drops a request for another address).
fn pick(shelf: u16, slot: u8, n: usize, head: &[u8]) -> usize {
    if n == 1 || head.len() < 19 {
        return 0;
    }
    let (s, l) = (u16::from_be_bytes([head[16], head[17]]), head[18]);
    let i = usize::from(l.wrapping_sub(slot));
    if s == shelf && l >= slot && i < n {
        i
    } else {
        0
    }
}

/// Decides one request in `buf[..len]` and, for reads, writes and flushes, completes it at
/// once: the response's length (None: no answer) and the state change to apply.
fn answer(
    export: &ExportState,
    iface: &Iface,
    buf: &mut [u8],
    len: usize,
    stats: &mut EchoStats,
) -> (Option<usize>, Option<StateChange>) {
    let out = target::decide(export, iface, buf, len);
    let reply = match &out.decision {
        Decision::Reply(n) => {
            stats.other += 1;
            Some(*n)
        }
        d @ (Decision::Read { .. } | Decision::Write { .. } | Decision::Flush) => {
            match d {
                Decision::Read { .. } => stats.reads += 1,
                Decision::Write { .. } => stats.writes += 1,
                _ => stats.other += 1,
            }
            Some(target::complete(export, iface, buf, d, IoOutcome::Ok))
        }
        Decision::Drop => None,
    };
    (reply, out.change)
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn requests_go_to_the_export_they_name() {
        let frame = |shelf: u16, slot: u8| {
            let mut f = [0u8; 24];
            f[16..18].copy_from_slice(&shelf.to_be_bytes());
            f[18] = slot;
            f
        };
        assert_eq!(pick(1, 0, 16, &frame(1, 7)), 7);
        assert_eq!(pick(1, 4, 4, &frame(1, 7)), 3);
        assert_eq!(pick(1, 4, 4, &frame(1, 8)), 0, "past the last slot");
        assert_eq!(pick(1, 4, 4, &frame(1, 3)), 0, "before the first slot");
        assert_eq!(pick(1, 0, 16, &frame(2, 7)), 0, "another shelf");
        assert_eq!(pick(1, 0, 16, &frame(0xffff, 0xff)), 0, "wildcard");
        assert_eq!(pick(1, 0, 1, &frame(1, 7)), 0);
        assert_eq!(pick(1, 0, 16, &[0u8; 10]), 0, "short frame");
    }
}
