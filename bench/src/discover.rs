//! Finding targets: a Query Config (broadcast, or for one shelf.slot), then IDENTIFY DEVICE to
//! each responder for its size and strings.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Result;
use aoe::initiator::{self, Addr, AtaRequest, Body};
use aoe::wire::{ccmd, mac_to_string, BROADCAST, SECTOR, SHELF_ANY, SLOT_ANY};
use aoe::Mac;
use serde::Serialize;

use crate::cli::DiscoverArgs;
use crate::net::Port;
use crate::report::fmt_bytes;

/// Tags of our queries and IDENTIFYs: bit 31 clear, distinct from the run's tags only by
/// value (the run starts after discovery, and stale answers to these are ignored there).
const QUERY_TAG: u32 = 0x0c0f_0000;
const IDENTIFY_TAG: u32 = 0x1d00_0000;
/// Resend interval for queries and IDENTIFYs nobody answered yet.
const RESEND: Duration = Duration::from_millis(250);

/// What a target said about itself.
#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    /// `eSHELF.SLOT`.
    pub device: String,
    /// Shelf.
    pub shelf: u16,
    /// Slot.
    pub slot: u8,
    /// The MAC it answered from.
    pub mac: String,
    #[serde(skip)]
    pub mac_raw: Mac,
    /// Buffer count (outstanding requests it absorbs).
    pub bufcnt: u16,
    /// Firmware version.
    pub firmware: u16,
    /// Most sectors per ATA request (0 already mapped to 2).
    pub scnt: u8,
    /// Config string (lossy UTF-8).
    pub config: String,
    /// Capacity in sectors, from IDENTIFY (None: no IDENTIFY answer).
    pub sectors: Option<u64>,
    /// Capacity in bytes.
    pub size_bytes: Option<u64>,
    /// IDENTIFY model string.
    pub model: Option<String>,
    /// IDENTIFY serial number.
    pub serial: Option<String>,
    /// IDENTIFY firmware revision.
    pub identify_firmware: Option<String>,
}

/// Finds targets at `shelf.slot` (wildcards allowed) on `port`'s interface, and IDENTIFYs
/// them. With `first_only`, stops looking shortly after the first answer.
pub fn probe(
    port: &mut Port,
    shelf: u16,
    slot: u8,
    timeout: Duration,
    first_only: bool,
    stop: &AtomicBool,
) -> Result<Vec<TargetInfo>> {
    let src = port.mac();
    let mut found: BTreeMap<(u16, u8, Mac), TargetInfo> = BTreeMap::new();
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempt = 0u32;
    while Instant::now() < deadline {
        let a = Addr {
            src,
            dst: BROADCAST,
            shelf,
            slot,
            tag: QUERY_TAG | attempt,
        };
        port.push_with(|buf| initiator::config_request(buf, &a, ccmd::READ, b""))?;
        attempt += 1;
        let until = (Instant::now() + RESEND).min(deadline);
        // With `first_only`, stop waiting at the first answer (not at the resend: a run over
        // 16 targets found one by one spent 16 × 250 ms here), then give other paths (MACs)
        // to the same target a moment to answer too.
        port.recv_until(until, stop, |f| {
            note_answer(&mut found, f, shelf, slot) && first_only
        })?;
        if first_only && !found.is_empty() {
            port.recv_until(Instant::now() + RESEND / 10, stop, |f| {
                note_answer(&mut found, f, shelf, slot);
                false
            })?;
            break;
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
    }
    let mut targets: Vec<TargetInfo> = found.into_values().collect();
    identify_all(
        port,
        &mut targets,
        timeout.max(Duration::from_millis(500)),
        stop,
    )?;
    Ok(targets)
}

/// Records `f` in `found` if it is a Query Config answer from `shelf.slot` (wildcards allowed)
/// to one of our queries; returns whether it was.
fn note_answer(
    found: &mut BTreeMap<(u16, u8, Mac), TargetInfo>,
    f: &[u8],
    shelf: u16,
    slot: u8,
) -> bool {
    let Ok(r) = initiator::parse_response(f) else {
        return false;
    };
    if r.tag & 0xffff_0000 != QUERY_TAG || r.error.is_some() {
        return false;
    }
    let Body::Config {
        bufcnt,
        firmware,
        sectors,
        string,
        ..
    } = r.body
    else {
        return false;
    };
    if r.shelf == SHELF_ANY || r.slot == SLOT_ANY {
        return false;
    }
    if (shelf != SHELF_ANY && r.shelf != shelf) || (slot != SLOT_ANY && r.slot != slot) {
        return false;
    }
    found
        .entry((r.shelf, r.slot, r.src))
        .or_insert_with(|| TargetInfo {
            device: format!("e{}.{}", r.shelf, r.slot),
            shelf: r.shelf,
            slot: r.slot,
            mac: mac_to_string(&r.src),
            mac_raw: r.src,
            bufcnt,
            firmware,
            scnt: sectors,
            config: String::from_utf8_lossy(string).into_owned(),
            sectors: None,
            size_bytes: None,
            model: None,
            serial: None,
            identify_firmware: None,
        });
    true
}

/// IDENTIFY DEVICE to every target, resending to the silent ones, until all answer or
/// `timeout` passes.
fn identify_all(
    port: &mut Port,
    targets: &mut [TargetInfo],
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let src = port.mac();
    let mut round = 0u32;
    while targets.iter().any(|t| t.sectors.is_none()) && Instant::now() < deadline {
        for (i, t) in targets.iter().enumerate() {
            if t.sectors.is_some() {
                continue;
            }
            let a = Addr {
                src,
                dst: t.mac_raw,
                shelf: t.shelf,
                slot: t.slot,
                tag: IDENTIFY_TAG | (round << 12) | i as u32,
            };
            port.push_with(|buf| initiator::ata_request(buf, &a, &AtaRequest::identify()))?;
        }
        round = (round + 1) & 0xfff;
        let until = (Instant::now() + RESEND).min(deadline);
        port.recv_until(until, stop, |f| {
            let Ok(r) = initiator::parse_response(f) else {
                return false;
            };
            if r.tag & 0xff00_0000 != IDENTIFY_TAG || r.error.is_some() {
                return false;
            }
            let i = (r.tag & 0xfff) as usize;
            let Some(t) = targets.get_mut(i) else {
                return false;
            };
            let Body::Ata { status, data, .. } = r.body else {
                return false;
            };
            if (r.shelf, r.slot) != (t.shelf, t.slot) || status & 0xa9 != 0 || data.len() < SECTOR {
                return false;
            }
            let page = &data[..SECTOR];
            let sectors = aoe::ata::identify_capacity(page);
            t.sectors = Some(sectors);
            t.size_bytes = Some(sectors.saturating_mul(SECTOR as u64));
            t.serial = Some(aoe::ata::get_string(page, 10, 10));
            t.identify_firmware = Some(aoe::ata::get_string(page, 23, 4));
            t.model = Some(aoe::ata::get_string(page, 27, 20));
            targets.iter().all(|t| t.sectors.is_some())
        })?;
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct DiscoverReport<'a> {
    schema: &'static str,
    interface: &'a str,
    local_mac: String,
    timeout_ms: u64,
    targets: &'a [TargetInfo],
}

/// `aoe-bench discover`.
pub fn discover(args: &DiscoverArgs, stop: &AtomicBool) -> Result<()> {
    let mut port = Port::open(&args.port, xblade_ebpf::Role::Initiator, 256)?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let targets = probe(&mut port, SHELF_ANY, SLOT_ANY, timeout, false, stop)?;
    if args.json {
        let report = DiscoverReport {
            schema: "aoe-bench/discover/1",
            interface: port.ifname(),
            local_mac: mac_to_string(&port.mac()),
            timeout_ms: args.timeout_ms,
            targets: &targets,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if targets.is_empty() {
        eprintln!(
            "no AoE target answered on {} within {} ms",
            port.ifname(),
            args.timeout_ms
        );
        if let Some(n) = port.queue_note(true) {
            eprintln!("note: {n}");
        }
        return Ok(());
    }
    println!(
        "{:<10} {:<17} {:>12} {:>6} {:>4} {:>6}  {:<24} CONFIG",
        "DEVICE", "MAC", "SIZE", "BUFCNT", "SCNT", "FW", "MODEL"
    );
    for t in &targets {
        let size = t
            .size_bytes
            .map(fmt_bytes)
            .unwrap_or_else(|| "?".to_owned());
        println!(
            "{:<10} {:<17} {:>12} {:>6} {:>4} {:#06x}  {:<24} {:?}",
            t.device,
            t.mac,
            size,
            t.bufcnt,
            t.scnt,
            t.firmware,
            t.model.as_deref().unwrap_or("(no IDENTIFY answer)"),
            t.config
        );
    }
    Ok(())
}
