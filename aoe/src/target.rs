//! The target state machine: one received frame in, one [`Decision`] out.
//!
//! [`decide`] works in place on the frame's buffer: it reads the request and, when the answer
//! needs no storage, writes the response over it. When storage is needed it returns
//! [`Decision::Read`], [`Decision::Write`] or [`Decision::Flush`]; the datapath performs the I/O
//! (a read lands directly at [`wire::ATA_HLEN`] in the same buffer) and [`complete`] then writes
//! the response header in place. Nothing here touches a socket or a file.
//!
//! # Who may use an export
//!
//! [`decide`] answers nothing (a silent [`Decision::Drop`]) to a request
//! - from a group (multicast/broadcast) or all-zero source MAC, since the reply would go to that
//!   address (a reflector), or to a destination other than the interface's MAC or broadcast;
//! - from a MAC outside the export's ACL ([`ExportState::acl`]: the operator's configured list,
//!   which nothing on the wire changes), when it has one;
//! - from a MAC outside the protocol's MAC Mask List ([`ExportState::mask`]), when that is
//!   non-empty.
//!
//! The mask list starts as the ACL and MASK EDITs may only narrow it within the ACL: an ADD of
//! a MAC the ACL does not list fails with MError 1 (unspecified; AoEr11 has no code of its
//! own for it) at that directive, the earlier directives staying applied as for the other
//! MErrors. Deleting every entry leaves the ACL in force: an export with an ACL never serves
//! anyone else. An export without an ACL behaves as AoEr11 says: an empty mask list serves
//! everyone.

use crate::ata::{self, Identity};
use crate::wire::{
    self, ccmd, cmd, error, mask, reserve, Ata, Config, Header, HeaderFields, Mac, MaskList,
    Reserve, ATA_HLEN, CFG_HLEN, ETHERTYPE_AOE, MASK_HLEN, MAX_CONFIG, RES_HLEN, SECTOR, SHELF_ANY,
    SLOT_ANY,
};

/// Firmware version we advertise in Query Config responses (0x0100: xblade 0.1).
pub const FIRMWARE_VERSION: u16 = 0x0100;
/// Default advertised buffer count: what a worker's in-flight table absorbs per export.
pub const DEFAULT_BUFCNT: u16 = 64;

/// One export's protocol state: addressing, geometry, the operator's ACL, and the
/// config/mask/reserve lists.
///
/// `Clone::clone_from` reuses the destination's buffers: refreshing a copy after a change
/// allocates nothing once its buffers have grown to size.
#[derive(Debug, PartialEq, Eq)]
pub struct ExportState {
    /// Shelf (major) address. Never 0xffff or 0x0fff.
    pub shelf: u16,
    /// Slot (minor) address. Never 0xff.
    pub slot: u8,
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    /// Writes are refused with ABRT.
    pub read_only: bool,
    /// Advertised buffer count (≥ 2, or the Linux initiator never sends).
    pub bufcnt: u16,
    /// Advertised firmware version.
    pub firmware: u16,
    /// Upper bound on sectors per command from the datapath (e.g. what fits one UMEM chunk).
    pub max_sectors: u8,
    /// IDENTIFY serial number.
    pub serial: String,
    /// IDENTIFY model string.
    pub model: String,
    /// Writes are acknowledged before they are durable (write-back): FLUSH CACHE matters.
    pub write_cache: bool,
    /// Config string (≤ 1024 bytes).
    pub config: Vec<u8>,
    /// MAC mask list: when non-empty, frames from other MACs are ignored.
    pub mask: Vec<Mac>,
    /// Reserve list: when non-empty, ATA commands (but IDENTIFY) from other MACs get error 6.
    pub reserve: Vec<Mac>,
    /// The operator's list (configuration, `-m`): when non-empty, frames from other MACs are
    /// ignored whatever the mask list says. Only [`ExportState::set_acl`] changes it.
    acl: Vec<Mac>,
}

impl Clone for ExportState {
    fn clone(&self) -> Self {
        ExportState {
            shelf: self.shelf,
            slot: self.slot,
            sectors: self.sectors,
            read_only: self.read_only,
            bufcnt: self.bufcnt,
            firmware: self.firmware,
            max_sectors: self.max_sectors,
            serial: self.serial.clone(),
            model: self.model.clone(),
            write_cache: self.write_cache,
            config: self.config.clone(),
            mask: self.mask.clone(),
            reserve: self.reserve.clone(),
            acl: self.acl.clone(),
        }
    }

    /// Field by field, reusing this state's buffers.
    fn clone_from(&mut self, source: &Self) {
        self.shelf = source.shelf;
        self.slot = source.slot;
        self.sectors = source.sectors;
        self.read_only = source.read_only;
        self.bufcnt = source.bufcnt;
        self.firmware = source.firmware;
        self.max_sectors = source.max_sectors;
        self.serial.clone_from(&source.serial);
        self.model.clone_from(&source.model);
        self.write_cache = source.write_cache;
        self.config.clone_from(&source.config);
        self.mask.clone_from(&source.mask);
        self.reserve.clone_from(&source.reserve);
        self.acl.clone_from(&source.acl);
    }
}

/// [`ExportState::set_acl`] was given more distinct MACs than a mask list holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclTooLong {
    /// Distinct MACs given.
    pub macs: usize,
}

impl std::fmt::Display for AclTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the MAC list has {} distinct entries; an export takes at most {} (the AoE mask \
             list's limit)",
            self.macs,
            mask::MAX
        )
    }
}

impl std::error::Error for AclTooLong {}

impl ExportState {
    /// A new export with defaults for everything but its address and size.
    pub fn new(shelf: u16, slot: u8, sectors: u64) -> Self {
        ExportState {
            shelf,
            slot,
            sectors,
            read_only: false,
            bufcnt: DEFAULT_BUFCNT,
            firmware: FIRMWARE_VERSION,
            max_sectors: 255,
            serial: format!("{shelf}.{slot}"),
            model: "xblade AoE target".into(),
            write_cache: false,
            config: Vec::new(),
            mask: Vec::new(),
            reserve: Vec::new(),
            acl: Vec::new(),
        }
    }

    /// Sets the operator's ACL: only these MACs may use the export (empty: anyone, as far as
    /// the mask list lets them). The mask list starts over as the same list. Duplicates are
    /// dropped; at most [`mask::MAX`] distinct MACs.
    pub fn set_acl(&mut self, macs: &[Mac]) -> Result<(), AclTooLong> {
        let mut list: Vec<Mac> = Vec::with_capacity(macs.len().min(mask::MAX));
        for m in macs {
            if !list.contains(m) {
                if list.len() == mask::MAX {
                    let distinct = macs
                        .iter()
                        .enumerate()
                        .filter(|(i, m)| !macs[..*i].contains(m))
                        .count();
                    return Err(AclTooLong { macs: distinct });
                }
                list.push(*m);
            }
        }
        self.mask.clone_from(&list);
        self.acl = list;
        Ok(())
    }

    /// The operator's ACL (empty: none).
    pub fn acl(&self) -> &[Mac] {
        &self.acl
    }

    /// Whether the ACL and the mask list let `src` use the export.
    pub fn allows(&self, src: &Mac) -> bool {
        (self.acl.is_empty() || self.acl.contains(src))
            && (self.mask.is_empty() || self.mask.contains(src))
    }

    /// Whether (shelf, slot) is a valid export address (the Linux initiator rejects the rest).
    pub fn valid_address(shelf: u16, slot: u8) -> bool {
        shelf != SHELF_ANY && shelf != wire::SHELF_BAD_DIP && slot != SLOT_ANY
    }

    /// The IDENTIFY page contents.
    pub fn identity(&self) -> Identity {
        Identity {
            sectors: self.sectors,
            serial: self.serial.clone(),
            firmware: concat!("X", env!("CARGO_PKG_VERSION")).into(),
            model: self.model.clone(),
            write_cache: self.write_cache,
        }
    }

    /// Apply a state change returned by [`decide`].
    pub fn apply(&mut self, change: StateChange) {
        match change {
            StateChange::Config(c) => self.config = c,
            StateChange::Mask(m) => self.mask = m,
            StateChange::Reserve(r) => self.reserve = r,
        }
    }
}

/// The interface a frame arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Iface {
    /// Its MAC: every reply leaves from it.
    pub mac: Mac,
    /// Its MTU (≥ [`wire::MIN_MTU`]).
    pub mtu: u16,
}

impl Iface {
    /// The sector count advertised on this interface for `export`:
    /// `(MTU − 36) / 512`, rounded down to a multiple of 8 once it reaches 8 so that frames
    /// stay 4 KiB-aligned (16 at MTU 9000, not 17: the Linux initiator cuts bios into frames of
    /// exactly this size, and a 17-sector frame makes every later frame start mid-page), capped
    /// by the datapath's limit and by 255.
    pub fn advertised_sectors(&self, export: &ExportState) -> u8 {
        let n = usize::from(self.mtu.saturating_sub(22)) / SECTOR; // (MTU + 14 − 36) / 512
        let n = if n >= 8 { n & !7 } else { n };
        n.clamp(1, 255).min(usize::from(export.max_sectors.max(1))) as u8
    }

    /// Largest frame (Ethernet header included) that may leave this interface.
    pub fn max_frame(&self) -> usize {
        usize::from(self.mtu) + wire::ETH_HLEN
    }
}

/// A change to an export's state, decided by a config, mask or reserve command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateChange {
    /// New config string.
    Config(Vec<u8>),
    /// New mask list.
    Mask(Vec<Mac>),
    /// New reserve list.
    Reserve(Vec<Mac>),
}

/// What to do with a received frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The response is built in the buffer; send its first `n` bytes.
    Reply(usize),
    /// Read `sectors` sectors at `lba` into `buf[36..]`, then call [`complete`].
    Read {
        /// First sector.
        lba: u64,
        /// Sector count (≥ 1).
        sectors: u8,
    },
    /// Write `sectors` sectors at `lba` from `buf[payload]`, then call [`complete`].
    Write {
        /// First sector.
        lba: u64,
        /// Sector count (≥ 1).
        sectors: u8,
        /// Where the data is in the frame.
        payload: std::ops::Range<usize>,
    },
    /// Make every acknowledged write durable (fdatasync), then call [`complete`].
    Flush,
    /// Send nothing.
    Drop,
}

/// [`decide`]'s result: the decision, and a state change to apply (config/mask/reserve).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// What to do.
    pub decision: Decision,
    /// State to store, if the command changed it.
    pub change: Option<StateChange>,
}

impl Outcome {
    fn just(decision: Decision) -> Self {
        Outcome {
            decision,
            change: None,
        }
    }
    fn drop() -> Self {
        Self::just(Decision::Drop)
    }
}

/// How a storage operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOutcome {
    /// Done in full.
    Ok,
    /// Failed with this errno (short transfers are reported as `EIO`).
    Err(i32),
}

/// Handle one received frame, in place.
///
/// `buf` holds the frame in `buf[..len]` and has room for the response after it (at least
/// [`Iface::max_frame`] bytes, and 60). The response never exceeds `iface.max_frame()`.
pub fn decide(export: &ExportState, iface: &Iface, buf: &mut [u8], len: usize) -> Outcome {
    let len = len.min(buf.len());
    let Some(h) = Header::new(&buf[..len]) else {
        return Outcome::drop();
    };
    if h.ethertype() != ETHERTYPE_AOE || h.is_response() {
        return Outcome::drop();
    }
    let (shelf, slot) = (h.shelf(), h.slot());
    if (shelf != export.shelf && shelf != SHELF_ANY) || (slot != export.slot && slot != SLOT_ANY) {
        return Outcome::drop();
    }
    let src = h.src();
    if !addresses_ok(iface, &h.dst(), &src) || !export.allows(&src) {
        return Outcome::drop();
    }
    if h.version() != wire::VERSION {
        return aoe_error(export, iface, buf, len, wire::AOE_HLEN, error::BAD_VERSION);
    }
    match h.command() {
        cmd::ATA => decide_ata(export, iface, buf, len, src),
        cmd::CONFIG => decide_config(export, iface, buf, len),
        cmd::MASK => decide_mask(export, iface, buf, len),
        cmd::RESERVE => decide_reserve(export, iface, buf, len, src),
        _ => aoe_error(export, iface, buf, len, wire::AOE_HLEN, error::BAD_CMD),
    }
}

/// Frame hygiene: the source is one station (not a group address, not all-zero), and the
/// destination is this interface or broadcast (any destination when the interface has no MAC).
fn addresses_ok(iface: &Iface, dst: &Mac, src: &Mac) -> bool {
    let src_ok = src[0] & 1 == 0 && *src != [0; 6];
    let dst_ok = *dst == iface.mac || *dst == wire::BROADCAST || iface.mac == [0; 6];
    src_ok && dst_ok
}

/// Copy `req` into `out` and [`decide`] there: for callers that keep the request.
pub fn respond(export: &ExportState, iface: &Iface, req: &[u8], out: &mut [u8]) -> Outcome {
    let n = req.len().min(out.len());
    out[..n].copy_from_slice(&req[..n]);
    decide(export, iface, out, n)
}

/// Write the response header (common header) over the request's, in place: R, plus E and the
/// error code if `error` is set.
fn reply_header(export: &ExportState, iface: &Iface, buf: &mut [u8], error: Option<u8>) {
    let h = Header::new(&buf[..]).expect("caller checked the length");
    HeaderFields {
        dst: h.src(),
        src: iface.mac,
        flags: wire::FLAG_R | if error.is_some() { wire::FLAG_E } else { 0 },
        error: error.unwrap_or(0),
        shelf: export.shelf,
        slot: export.slot,
        command: h.command(),
        tag: h.tag(),
    }
    .write(buf);
}

/// An AoE error response: the request's first `keep` bytes (as far as present), flags R|E.
fn aoe_error(
    export: &ExportState,
    iface: &Iface,
    buf: &mut [u8],
    len: usize,
    keep: usize,
    code: u8,
) -> Outcome {
    reply_header(export, iface, buf, Some(code));
    let n = keep.min(len);
    Outcome::just(Decision::Reply(wire::pad(buf, n)))
}

fn decide_ata(
    export: &ExportState,
    iface: &Iface,
    buf: &mut [u8],
    len: usize,
    src: Mac,
) -> Outcome {
    let Some(a) = Ata::new(&buf[..len]) else {
        return aoe_error(export, iface, buf, len, len, error::BAD_ARG);
    };
    let (opcode, count, feature) = (a.cmd_status(), a.sector_count(), a.feature());
    let raw_lba = a.lba_raw();
    let payload_len = a.payload().len();
    if opcode != ata::IDENTIFY && !export.reserve.is_empty() && !export.reserve.contains(&src) {
        return aoe_error(export, iface, buf, len, ATA_HLEN, error::RESERVED);
    }
    match opcode {
        ata::READ | ata::READ_EXT | ata::WRITE | ata::WRITE_EXT => {
            let write = opcode == ata::WRITE || opcode == ata::WRITE_EXT;
            let ext = opcode == ata::READ_EXT || opcode == ata::WRITE_EXT;
            let lba = raw_lba
                & if ext {
                    ata::LBA48_MASK
                } else {
                    ata::LBA28_MASK
                };
            let fail = |buf: &mut [u8], err| {
                ata_reply(export, iface, buf, ata::STATUS_FAIL, err, count, 0)
            };
            if count == 0 || count > iface.advertised_sectors(export) {
                return fail(buf, ata::ERR_ABRT);
            }
            match lba.checked_add(u64::from(count)) {
                Some(end) if end <= export.sectors => {}
                _ => return fail(buf, ata::ERR_IDNF),
            }
            let bytes = usize::from(count) * SECTOR;
            if !write {
                return Outcome::just(Decision::Read {
                    lba,
                    sectors: count,
                });
            }
            if export.read_only || payload_len < bytes {
                return fail(buf, ata::ERR_ABRT);
            }
            Outcome::just(Decision::Write {
                lba,
                sectors: count,
                payload: ATA_HLEN..ATA_HLEN + bytes,
            })
        }
        ata::IDENTIFY => {
            // IDENTIFY always moves one sector; any payload (aoeping, aoe-sancheck) is ignored.
            ata::identify_page(&export.identity(), &mut buf[ATA_HLEN..ATA_HLEN + SECTOR]);
            ata_reply(export, iface, buf, ata::STATUS_OK, 0, 0, SECTOR)
        }
        ata::FLUSH | ata::FLUSH_EXT => Outcome::just(Decision::Flush),
        ata::CHECK_POWER => ata_reply(export, iface, buf, ata::STATUS_OK, 0, 0xff, 0),
        ata::SMART => decide_smart(export, iface, buf, feature, raw_lba),
        _ => ata_reply(
            export,
            iface,
            buf,
            ata::STATUS_FAIL,
            ata::ERR_ABRT,
            count,
            0,
        ),
    }
}

/// SMART: RETURN STATUS (healthy), ENABLE and DISABLE succeed; the rest is aborted. Every reply
/// carries a 512-byte data area: `aoeping -S` rejects anything shorter than 548 bytes.
fn decide_smart(
    export: &ExportState,
    iface: &Iface,
    buf: &mut [u8],
    feature: u8,
    raw_lba: u64,
) -> Outcome {
    let signature = ((raw_lba >> 8) & 0xff) as u8 == ata::smart::LBA_MID
        && ((raw_lba >> 16) & 0xff) as u8 == ata::smart::LBA_HIGH;
    buf[ATA_HLEN..ATA_HLEN + SECTOR].fill(0);
    let ok = signature
        && matches!(
            feature,
            ata::smart::RETURN_STATUS | ata::smart::ENABLE | ata::smart::DISABLE
        );
    if ok {
        ata_reply(export, iface, buf, ata::STATUS_OK, 0, 0, SECTOR)
    } else {
        ata_reply(
            export,
            iface,
            buf,
            ata::STATUS_FAIL,
            ata::ERR_ABRT,
            0,
            SECTOR,
        )
    }
}

/// An ATA response in place: header, status/error/count, LBA and aflags echoed, `data` bytes of
/// data already in `buf[36..]`, padded to 60.
fn ata_reply(
    export: &ExportState,
    iface: &Iface,
    buf: &mut [u8],
    status: u8,
    err: u8,
    count: u8,
    data: usize,
) -> Outcome {
    Outcome::just(Decision::Reply(write_ata_response(
        export, iface, buf, status, err, count, data,
    )))
}

fn write_ata_response(
    export: &ExportState,
    iface: &Iface,
    buf: &mut [u8],
    status: u8,
    err: u8,
    count: u8,
    data: usize,
) -> usize {
    reply_header(export, iface, buf, None);
    buf[25] = err;
    buf[26] = count;
    buf[27] = status;
    buf[34] = 0;
    buf[35] = 0;
    wire::pad(buf, ATA_HLEN + data)
}

/// Build the response to a completed [`Decision::Read`], [`Decision::Write`] or
/// [`Decision::Flush`], in place over the request header in `buf`.
///
/// For a successful read, `buf[36..36 + sectors*512]` already holds the data. Failures are ATA
/// errors, never AoE errors (the Linux initiator drops E=1 and retries for 180 s): EIO is UNC,
/// anything else ABRT. Returns the frame length.
pub fn complete(
    export: &ExportState,
    iface: &Iface,
    buf: &mut [u8],
    decision: &Decision,
    result: IoOutcome,
) -> usize {
    let count = buf[26];
    let (status, err, data) = match result {
        IoOutcome::Ok => {
            let data = match decision {
                Decision::Read { sectors, .. } => usize::from(*sectors) * SECTOR,
                _ => 0,
            };
            (ata::STATUS_OK, 0, data)
        }
        IoOutcome::Err(e) if e == libc_eio() => (ata::STATUS_FAIL, ata::ERR_UNC, 0),
        IoOutcome::Err(_) => (ata::STATUS_FAIL, ata::ERR_ABRT, 0),
    };
    let remaining = if status == ata::STATUS_OK { 0 } else { count };
    write_ata_response(export, iface, buf, status, err, remaining, data)
}

/// EIO on Linux (kept here so the crate needs no libc).
const fn libc_eio() -> i32 {
    5
}

fn config_reply(
    export: &ExportState,
    iface: &Iface,
    buf: &mut [u8],
    cc: u8,
    string: &[u8],
    err: Option<u8>,
) -> Outcome {
    reply_header(export, iface, buf, err);
    buf[CFG_HLEN..CFG_HLEN + string.len()].copy_from_slice(string);
    config_reply_fields(export, iface, buf, cc, string.len())
}

/// The config reply's fields after the header, for a string of `len` bytes already at
/// `buf[CFG_HLEN..]`.
fn config_reply_fields(
    export: &ExportState,
    iface: &Iface,
    buf: &mut [u8],
    cc: u8,
    len: usize,
) -> Outcome {
    buf[24..26].copy_from_slice(&export.bufcnt.to_be_bytes());
    buf[26..28].copy_from_slice(&export.firmware.to_be_bytes());
    buf[28] = iface.advertised_sectors(export);
    buf[29] = (wire::VERSION << 4) | cc;
    buf[30..32].copy_from_slice(&(len as u16).to_be_bytes());
    Outcome::just(Decision::Reply(wire::pad(buf, CFG_HLEN + len)))
}

fn decide_config(export: &ExportState, iface: &Iface, buf: &mut [u8], len: usize) -> Outcome {
    let Some(c) = Config::new(&buf[..len]) else {
        return aoe_error(export, iface, buf, len, len, error::BAD_ARG);
    };
    let cc = c.ccmd();
    if cc == ccmd::READ {
        // The argument is ignored: aoeping sends cslen 1024 of junk, Linux sends 32 bytes.
        return config_reply(export, iface, buf, cc, &export.config, None);
    }
    if cc > ccmd::FORCE_SET {
        return aoe_error(export, iface, buf, len, CFG_HLEN, error::BAD_ARG);
    }
    let Some(arg) = c.string() else {
        return aoe_error(export, iface, buf, len, CFG_HLEN, error::BAD_ARG);
    };
    debug_assert!(arg.len() <= MAX_CONFIG);
    let current = export.config.as_slice();
    match cc {
        ccmd::TEST if arg == current => config_reply(export, iface, buf, cc, current, None),
        ccmd::PREFIX if current.starts_with(arg) => {
            config_reply(export, iface, buf, cc, current, None)
        }
        ccmd::TEST | ccmd::PREFIX => Outcome::drop(),
        ccmd::SET if !current.is_empty() && current != arg => {
            config_reply(export, iface, buf, cc, current, Some(error::CONFIG_PRESENT))
        }
        _ => {
            // SET on an empty (or identical) string, or FORCE_SET. The argument already sits
            // where the reply's string goes; the new string (≤ 1024 bytes) is copied out only
            // when it differs.
            let change = (arg != current).then(|| StateChange::Config(arg.to_vec()));
            let len = arg.len();
            reply_header(export, iface, buf, None);
            let mut out = config_reply_fields(export, iface, buf, cc, len);
            out.change = change;
            out
        }
    }
}

fn mask_reply(
    export: &ExportState,
    iface: &Iface,
    buf: &mut [u8],
    mcmd: u8,
    merror: u8,
    count: u8,
    list: &[Mac],
) -> Outcome {
    reply_header(export, iface, buf, None);
    buf[24] = 0;
    buf[25] = mcmd;
    buf[26] = merror;
    buf[27] = count;
    for (i, m) in list.iter().enumerate() {
        let at = MASK_HLEN + 8 * i;
        buf[at] = 0;
        buf[at + 1] = mask::DCMD_NONE;
        buf[at + 2..at + 8].copy_from_slice(m);
    }
    Outcome::just(Decision::Reply(wire::pad(buf, MASK_HLEN + 8 * list.len())))
}

fn decide_mask(export: &ExportState, iface: &Iface, buf: &mut [u8], len: usize) -> Outcome {
    let Some(m) = MaskList::new(&buf[..len]) else {
        return aoe_error(export, iface, buf, len, len, error::BAD_ARG);
    };
    let mcmd = m.mcmd();
    match mcmd {
        mask::READ => {
            let n = export.mask.len() as u8;
            mask_reply(export, iface, buf, mcmd, 0, n, &export.mask)
        }
        mask::EDIT => {
            if !m.directives_fit() {
                return aoe_error(export, iface, buf, len, MASK_HLEN, error::BAD_ARG);
            }
            // The edit runs on a copy on the stack; a new list (≤ 128 MACs) is allocated only
            // when the result differs from the current one.
            let mut list = MacList::from(&export.mask);
            let mut failed = None;
            for i in 0..usize::from(m.dir_count()) {
                let (dcmd, mac) = m.directive(i).expect("directives_fit checked");
                match dcmd {
                    mask::DCMD_NONE => {}
                    mask::DCMD_ADD if list.contains(&mac) => {}
                    // The mask list narrows the operator's ACL, never widens it.
                    mask::DCMD_ADD if !export.acl.is_empty() && !export.acl.contains(&mac) => {
                        failed = Some((mask::ERR_UNSPEC, i));
                        break;
                    }
                    mask::DCMD_ADD if list.len() >= mask::MAX => {
                        failed = Some((mask::ERR_FULL, i));
                        break;
                    }
                    mask::DCMD_ADD => list.push(mac),
                    mask::DCMD_DEL => list.remove(&mac),
                    _ => {
                        failed = Some((mask::ERR_BAD_DCMD, i));
                        break;
                    }
                }
            }
            // Directives before a failing one stay applied (as vblade and ggaoed do).
            let change = (list.as_slice() != export.mask)
                .then(|| StateChange::Mask(list.as_slice().to_vec()));
            let mut out = match failed {
                Some((merror, i)) => mask_reply(export, iface, buf, mcmd, merror, i as u8, &[]),
                None => {
                    let n = list.len() as u8;
                    mask_reply(export, iface, buf, mcmd, 0, n, list.as_slice())
                }
            };
            out.change = change;
            out
        }
        _ => aoe_error(export, iface, buf, len, MASK_HLEN, error::BAD_ARG),
    }
}

fn reserve_reply(
    export: &ExportState,
    iface: &Iface,
    buf: &mut [u8],
    rcmd: u8,
    list: &[Mac],
    err: Option<u8>,
) -> Outcome {
    reply_header(export, iface, buf, err);
    buf[24] = rcmd;
    buf[25] = list.len() as u8;
    for (i, m) in list.iter().enumerate() {
        buf[RES_HLEN + 6 * i..RES_HLEN + 6 * i + 6].copy_from_slice(m);
    }
    Outcome::just(Decision::Reply(wire::pad(buf, RES_HLEN + 6 * list.len())))
}

fn decide_reserve(
    export: &ExportState,
    iface: &Iface,
    buf: &mut [u8],
    len: usize,
    src: Mac,
) -> Outcome {
    let Some(r) = Reserve::new(&buf[..len]) else {
        return aoe_error(export, iface, buf, len, len, error::BAD_ARG);
    };
    let rcmd = r.rcmd();
    match rcmd {
        reserve::READ => reserve_reply(export, iface, buf, rcmd, &export.reserve, None),
        reserve::SET | reserve::FORCE_SET => {
            if !r.macs_fit() || usize::from(r.nmacs()) > reserve::MAX {
                return aoe_error(export, iface, buf, len, RES_HLEN, error::BAD_ARG);
            }
            if rcmd == reserve::SET && !export.reserve.is_empty() && !export.reserve.contains(&src)
            {
                return reserve_reply(
                    export,
                    iface,
                    buf,
                    rcmd,
                    &export.reserve,
                    Some(error::RESERVED),
                );
            }
            // The reply's list is the request's, in place; a new list (≤ 128 MACs) is
            // allocated only when it differs from the current one.
            let n = usize::from(r.nmacs());
            let same = n == export.reserve.len()
                && (0..n).all(|i| r.mac(i).expect("macs_fit checked") == export.reserve[i]);
            let change = (!same).then(|| {
                StateChange::Reserve(
                    (0..n)
                        .map(|i| r.mac(i).expect("macs_fit checked"))
                        .collect(),
                )
            });
            reply_header(export, iface, buf, None);
            buf[24] = rcmd;
            buf[25] = n as u8;
            let mut out = Outcome::just(Decision::Reply(wire::pad(buf, RES_HLEN + 6 * n)));
            out.change = change;
            out
        }
        _ => aoe_error(export, iface, buf, len, RES_HLEN, error::BAD_ARG),
    }
}

/// A mask list being edited, on the stack: at most [`mask::MAX`] MACs, no allocation.
struct MacList {
    macs: [Mac; mask::MAX],
    len: usize,
}

impl MacList {
    fn from(list: &[Mac]) -> Self {
        let mut out = MacList {
            macs: [[0; 6]; mask::MAX],
            len: 0,
        };
        for m in list.iter().take(mask::MAX) {
            out.push(*m);
        }
        out
    }

    fn as_slice(&self) -> &[Mac] {
        &self.macs[..self.len]
    }

    fn len(&self) -> usize {
        self.len
    }

    fn contains(&self, mac: &Mac) -> bool {
        self.as_slice().contains(mac)
    }

    /// Appends `mac`; the caller checked there is room.
    fn push(&mut self, mac: Mac) {
        self.macs[self.len] = mac;
        self.len += 1;
    }

    /// Removes every occurrence of `mac`, keeping the order of the rest.
    fn remove(&mut self, mac: &Mac) {
        let mut kept = 0;
        for i in 0..self.len {
            if self.macs[i] != *mac {
                self.macs[kept] = self.macs[i];
                kept += 1;
            }
        }
        self.len = kept;
    }
}

/// Build the unsolicited config response (tag 0, to `dst`, usually broadcast) that announces an
/// export at start-up, so initiators find it without waiting for their discovery timer.
/// Returns the frame length.
pub fn advertisement(export: &ExportState, iface: &Iface, dst: Mac, buf: &mut [u8]) -> usize {
    // A stand-in request "from" `dst`: the reply goes back to its source.
    HeaderFields {
        dst: iface.mac,
        src: dst,
        flags: 0,
        error: 0,
        shelf: export.shelf,
        slot: export.slot,
        command: cmd::CONFIG,
        tag: 0,
    }
    .write(buf);
    match config_reply(export, iface, buf, ccmd::READ, &export.config, None).decision {
        Decision::Reply(n) => n,
        _ => unreachable!("config_reply always replies"),
    }
}
