//! The initiator side: request builders and response parsers (for `aoe-bench` and the tests).

use crate::ata;
use crate::wire::{
    self, aflags, cmd, Ata, AtaFields, Config, Header, HeaderFields, Mac, MaskList, Reserve,
    ATA_HLEN, CFG_HLEN, MASK_HLEN, RES_HLEN, SECTOR,
};

/// Where a request goes and what it is tagged with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr {
    /// Our MAC.
    pub src: Mac,
    /// The target's MAC (or broadcast).
    pub dst: Mac,
    /// Shelf (or 0xffff).
    pub shelf: u16,
    /// Slot (or 0xff).
    pub slot: u8,
    /// Tag.
    pub tag: u32,
}

impl Addr {
    /// The common header of a request with this addressing and `command`.
    pub fn header(&self, command: u8) -> HeaderFields {
        HeaderFields {
            dst: self.dst,
            src: self.src,
            flags: 0,
            error: 0,
            shelf: self.shelf,
            slot: self.slot,
            command,
            tag: self.tag,
        }
    }
}

/// Build a Query Config request with sub-command `cc` and argument `string`. Returns the length.
pub fn config_request(buf: &mut [u8], a: &Addr, cc: u8, string: &[u8]) -> usize {
    a.header(cmd::CONFIG).write(buf);
    buf[24..29].fill(0);
    buf[29] = (wire::VERSION << 4) | (cc & 0x0f);
    buf[30..32].copy_from_slice(&(string.len() as u16).to_be_bytes());
    buf[CFG_HLEN..CFG_HLEN + string.len()].copy_from_slice(string);
    wire::pad(buf, CFG_HLEN + string.len())
}

/// An ATA command to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtaRequest<'a> {
    /// Opcode.
    pub cmd: u8,
    /// Features register.
    pub feature: u8,
    /// Sector count.
    pub sectors: u8,
    /// LBA (48 bits; for LBA28 opcodes the device register 0xE0 is added to lba3).
    pub lba: u64,
    /// Data to write.
    pub data: Option<&'a [u8]>,
}

impl AtaRequest<'_> {
    /// READ SECTORS EXT.
    pub fn read(lba: u64, sectors: u8) -> Self {
        AtaRequest {
            cmd: ata::READ_EXT,
            feature: 0,
            sectors,
            lba,
            data: None,
        }
    }
    /// IDENTIFY DEVICE (as Linux sends it: count 1, lba3 0xA0).
    pub fn identify() -> Self {
        AtaRequest {
            cmd: ata::IDENTIFY,
            feature: 0,
            sectors: 1,
            lba: 0xa0 << 24,
            data: None,
        }
    }
}

impl<'a> AtaRequest<'a> {
    /// WRITE SECTORS EXT of `data` (sector count from its length).
    pub fn write(lba: u64, data: &'a [u8]) -> Self {
        AtaRequest {
            cmd: ata::WRITE_EXT,
            feature: 0,
            sectors: (data.len() / SECTOR) as u8,
            lba,
            data: Some(data),
        }
    }
}

/// Build an ATA request. Returns the length.
pub fn ata_request(buf: &mut [u8], a: &Addr, r: &AtaRequest<'_>) -> usize {
    a.header(cmd::ATA).write(buf);
    let ext = matches!(r.cmd, ata::READ_EXT | ata::WRITE_EXT | ata::FLUSH_EXT);
    let write = r.data.is_some();
    let lba = if ext || !matches!(r.cmd, ata::READ | ata::WRITE) {
        r.lba
    } else {
        (r.lba & ata::LBA28_MASK) | (0xe0 << 24)
    };
    AtaFields {
        aflags: if ext { aflags::EXT } else { 0 } | if write { aflags::WRITE } else { 0 },
        feature: r.feature,
        sector_count: r.sectors,
        cmd_status: r.cmd,
        lba,
    }
    .write(buf);
    let data = r.data.unwrap_or(&[]);
    buf[ATA_HLEN..ATA_HLEN + data.len()].copy_from_slice(data);
    wire::pad(buf, ATA_HLEN + data.len())
}

/// Build a MAC Mask List request: `mcmd` with `(dcmd, mac)` directives. Returns the length.
pub fn mask_request(buf: &mut [u8], a: &Addr, mcmd: u8, dirs: &[(u8, Mac)]) -> usize {
    a.header(cmd::MASK).write(buf);
    buf[24] = 0;
    buf[25] = mcmd;
    buf[26] = 0;
    buf[27] = dirs.len() as u8;
    for (i, (d, m)) in dirs.iter().enumerate() {
        let at = MASK_HLEN + 8 * i;
        buf[at] = 0;
        buf[at + 1] = *d;
        buf[at + 2..at + 8].copy_from_slice(m);
    }
    wire::pad(buf, MASK_HLEN + 8 * dirs.len())
}

/// Build a Reserve/Release request. Returns the length.
pub fn reserve_request(buf: &mut [u8], a: &Addr, rcmd: u8, macs: &[Mac]) -> usize {
    a.header(cmd::RESERVE).write(buf);
    buf[24] = rcmd;
    buf[25] = macs.len() as u8;
    for (i, m) in macs.iter().enumerate() {
        buf[RES_HLEN + 6 * i..RES_HLEN + 6 * i + 6].copy_from_slice(m);
    }
    wire::pad(buf, RES_HLEN + 6 * macs.len())
}

/// Why a frame is not an acceptable response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than the header its command needs.
    Short,
    /// Not EtherType 0x88A2.
    NotAoe,
    /// The R flag is clear.
    NotResponse,
    /// A field's declared length does not fit the frame.
    BadLength,
}

/// A parsed response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// The target's MAC.
    pub src: Mac,
    /// Shelf.
    pub shelf: u16,
    /// Slot.
    pub slot: u8,
    /// Tag.
    pub tag: u32,
    /// AoE error code when the E flag is set.
    pub error: Option<u8>,
    /// The command-specific part.
    pub body: Body<'a>,
}

/// The command-specific part of a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// ATA: registers and the data after the header (may include padding).
    Ata {
        /// Status register.
        status: u8,
        /// Error register.
        err: u8,
        /// Sector count register.
        sectors: u8,
        /// Bytes after the 36-byte header.
        data: &'a [u8],
    },
    /// Query Config.
    Config {
        /// Buffer count.
        bufcnt: u16,
        /// Firmware version.
        firmware: u16,
        /// Max sectors per command (0 already mapped to 2).
        sectors: u8,
        /// CCmd echoed.
        ccmd: u8,
        /// Config string.
        string: &'a [u8],
    },
    /// MAC Mask List.
    Mask {
        /// MCmd.
        mcmd: u8,
        /// MError.
        merror: u8,
        /// DirCount.
        dir_count: u8,
        /// MACs of the directives present.
        macs: Vec<Mac>,
    },
    /// Reserve/Release.
    Reserve {
        /// RCmd.
        rcmd: u8,
        /// The reserve list.
        macs: Vec<Mac>,
    },
    /// Any other command (only the common header).
    Other(u8),
}

/// Parse a response frame.
pub fn parse_response(f: &[u8]) -> Result<Response<'_>, ParseError> {
    let h = Header::new(f).ok_or(ParseError::Short)?;
    if h.ethertype() != wire::ETHERTYPE_AOE {
        return Err(ParseError::NotAoe);
    }
    if !h.is_response() {
        return Err(ParseError::NotResponse);
    }
    let body = if h.is_error() {
        Body::Other(h.command())
    } else {
        match h.command() {
            cmd::ATA => {
                let a = Ata::new(f).ok_or(ParseError::Short)?;
                Body::Ata {
                    status: a.cmd_status(),
                    err: a.feature(),
                    sectors: a.sector_count(),
                    data: &f[ATA_HLEN..],
                }
            }
            cmd::CONFIG => {
                let c = Config::new(f).ok_or(ParseError::Short)?;
                let n = c.string_len();
                let string = f
                    .get(CFG_HLEN..CFG_HLEN + n)
                    .filter(|_| n <= wire::MAX_CONFIG);
                let string = string.ok_or(ParseError::BadLength)?;
                let s = c.sector_count();
                Body::Config {
                    bufcnt: c.bufcnt(),
                    firmware: c.firmware(),
                    sectors: if s == 0 { 2 } else { s },
                    ccmd: c.ccmd(),
                    string,
                }
            }
            cmd::MASK => {
                let m = MaskList::new(f).ok_or(ParseError::Short)?;
                let n = if m.merror() == 0 {
                    usize::from(m.dir_count())
                } else {
                    0
                };
                let macs = (0..n)
                    .map(|i| m.directive(i).map(|d| d.1))
                    .collect::<Option<Vec<_>>>();
                Body::Mask {
                    mcmd: m.mcmd(),
                    merror: m.merror(),
                    dir_count: m.dir_count(),
                    macs: macs.ok_or(ParseError::BadLength)?,
                }
            }
            cmd::RESERVE => {
                let r = Reserve::new(f).ok_or(ParseError::Short)?;
                let macs = (0..usize::from(r.nmacs()))
                    .map(|i| r.mac(i))
                    .collect::<Option<Vec<_>>>();
                Body::Reserve {
                    rcmd: r.rcmd(),
                    macs: macs.ok_or(ParseError::BadLength)?,
                }
            }
            c => Body::Other(c),
        }
    };
    Ok(Response {
        src: h.src(),
        shelf: h.shelf(),
        slot: h.slot(),
        tag: h.tag(),
        error: h.is_error().then(|| h.error()),
        body,
    })
}
