//! Frame layout constants and zero-copy views over AoEr11 frames.
//!
//! Offsets are from the start of the Ethernet header. Multi-byte fields are big-endian, except
//! the ATA LBA, which is six single bytes, least significant first.

/// A 48-bit Ethernet MAC address.
pub type Mac = [u8; 6];

/// The Ethernet broadcast address.
pub const BROADCAST: Mac = [0xff; 6];
/// EtherType of AoE (`ETH_P_AOE`).
pub const ETHERTYPE_AOE: u16 = 0x88a2;
/// Minimum Ethernet frame length without FCS; every response is zero-padded to it.
pub const ETH_ZLEN: usize = 60;
/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// Length of Ethernet + AoE common header.
pub const AOE_HLEN: usize = 24;
/// Common header + ATA arguments; the ATA payload starts here.
pub const ATA_HLEN: usize = 36;
/// Common header + Query Config arguments; the config string starts here.
pub const CFG_HLEN: usize = 32;
/// Common header + MAC Mask List arguments; the directives start here.
pub const MASK_HLEN: usize = 28;
/// Common header + Reserve/Release arguments; the MAC list starts here.
pub const RES_HLEN: usize = 26;
/// Bytes per AoE sector. AoE addresses 512-byte sectors only.
pub const SECTOR: usize = 512;
/// Longest config string (AoEr11 §3.2).
pub const MAX_CONFIG: usize = 1024;
/// Smallest interface MTU we serve on: a 1024-byte config string response (1056 bytes with
/// headers, 1042 without the Ethernet header) must fit.
pub const MIN_MTU: u16 = 1042;

/// AoE protocol version carried in every frame we send.
pub const VERSION: u8 = 1;
/// Ver/Flags: response.
pub const FLAG_R: u8 = 0x08;
/// Ver/Flags: error.
pub const FLAG_E: u8 = 0x04;

/// Wildcard shelf (major) address.
pub const SHELF_ANY: u16 = 0xffff;
/// Wildcard slot (minor) address.
pub const SLOT_ANY: u8 = 0xff;
/// A shelf the Linux initiator rejects ("check shelf dip switches").
pub const SHELF_BAD_DIP: u16 = 0x0fff;

/// AoE command codes.
pub mod cmd {
    /// Issue ATA Command.
    pub const ATA: u8 = 0;
    /// Query Config Information.
    pub const CONFIG: u8 = 1;
    /// MAC Mask List.
    pub const MASK: u8 = 2;
    /// Reserve/Release.
    pub const RESERVE: u8 = 3;
}

/// AoE error codes (valid with [`FLAG_E`]).
pub mod error {
    /// Unrecognized command code.
    pub const BAD_CMD: u8 = 1;
    /// Bad argument parameter.
    pub const BAD_ARG: u8 = 2;
    /// Device unavailable.
    pub const DEV_UNAVAILABLE: u8 = 3;
    /// Config string present (ccmd 3 on a different, non-empty string).
    pub const CONFIG_PRESENT: u8 = 4;
    /// Unsupported version.
    pub const BAD_VERSION: u8 = 5;
    /// Target is reserved.
    pub const RESERVED: u8 = 6;
}

/// ATA argument AFlags bits.
pub mod aflags {
    /// Extended (LBA48) command.
    pub const EXT: u8 = 0x40;
    /// Device/head register bit.
    pub const DEV: u8 = 0x10;
    /// Asynchronous write.
    pub const ASYNC: u8 = 0x02;
    /// Data is written to the device.
    pub const WRITE: u8 = 0x01;
}

/// Query Config sub-commands (CCmd).
pub mod ccmd {
    /// Read the config string.
    pub const READ: u8 = 0;
    /// Respond only if the argument equals the config string.
    pub const TEST: u8 = 1;
    /// Respond only if the argument is a prefix of the config string.
    pub const PREFIX: u8 = 2;
    /// Set the config string if it is empty (or identical).
    pub const SET: u8 = 3;
    /// Set the config string unconditionally.
    pub const FORCE_SET: u8 = 4;
}

/// MAC Mask List: MCmd, MError and DCmd values.
pub mod mask {
    /// MCmd: read the list.
    pub const READ: u8 = 0;
    /// MCmd: edit the list.
    pub const EDIT: u8 = 1;
    /// MError: unspecified error.
    pub const ERR_UNSPEC: u8 = 1;
    /// MError: bad DCmd.
    pub const ERR_BAD_DCMD: u8 = 2;
    /// MError: list full.
    pub const ERR_FULL: u8 = 3;
    /// DCmd: no directive.
    pub const DCMD_NONE: u8 = 0;
    /// DCmd: add the MAC.
    pub const DCMD_ADD: u8 = 1;
    /// DCmd: delete the MAC.
    pub const DCMD_DEL: u8 = 2;
    /// Longest mask list; the response (28 + 8n bytes) must fit the smallest MTU we serve.
    pub const MAX: usize = 128;
}

/// Reserve/Release RCmd values.
pub mod reserve {
    /// Read the reserve list.
    pub const READ: u8 = 0;
    /// Set the list if empty or if the requester is on it.
    pub const SET: u8 = 1;
    /// Set the list unconditionally.
    pub const FORCE_SET: u8 = 2;
    /// Longest reserve list; the response (26 + 6n bytes) must fit the smallest MTU we serve.
    pub const MAX: usize = 128;
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn mac_at(b: &[u8], at: usize) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[at..at + 6]);
    m
}

/// A view of the Ethernet + AoE common header (the first 24 bytes).
///
/// [`Header::new`] checks the length once; the getters then cannot go out of bounds.
#[derive(Clone, Copy, Debug)]
pub struct Header<T>(T);

impl<T: AsRef<[u8]>> Header<T> {
    /// A view over `buf`, or `None` if it is shorter than the common header.
    pub fn new(buf: T) -> Option<Self> {
        (buf.as_ref().len() >= AOE_HLEN).then_some(Header(buf))
    }
    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.0
    }
    fn b(&self) -> &[u8] {
        self.0.as_ref()
    }
    /// Ethernet destination.
    pub fn dst(&self) -> Mac {
        mac_at(self.b(), 0)
    }
    /// Ethernet source.
    pub fn src(&self) -> Mac {
        mac_at(self.b(), 6)
    }
    /// EtherType.
    pub fn ethertype(&self) -> u16 {
        be16(self.b(), 12)
    }
    /// Protocol version (high nibble of byte 14).
    pub fn version(&self) -> u8 {
        self.b()[14] >> 4
    }
    /// Flags (low nibble of byte 14).
    pub fn flags(&self) -> u8 {
        self.b()[14] & 0x0f
    }
    /// True for a response (R flag).
    pub fn is_response(&self) -> bool {
        self.flags() & FLAG_R != 0
    }
    /// True if the E flag is set.
    pub fn is_error(&self) -> bool {
        self.flags() & FLAG_E != 0
    }
    /// Error byte.
    pub fn error(&self) -> u8 {
        self.b()[15]
    }
    /// Shelf (major).
    pub fn shelf(&self) -> u16 {
        be16(self.b(), 16)
    }
    /// Slot (minor).
    pub fn slot(&self) -> u8 {
        self.b()[18]
    }
    /// Command.
    pub fn command(&self) -> u8 {
        self.b()[19]
    }
    /// Tag, opaque, echoed by the target.
    pub fn tag(&self) -> u32 {
        let b = self.b();
        u32::from_be_bytes([b[20], b[21], b[22], b[23]])
    }
}

/// Fields of a common header, for writing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderFields {
    /// Ethernet destination.
    pub dst: Mac,
    /// Ethernet source.
    pub src: Mac,
    /// Flags (R, E) without the version.
    pub flags: u8,
    /// Error code.
    pub error: u8,
    /// Shelf.
    pub shelf: u16,
    /// Slot.
    pub slot: u8,
    /// Command.
    pub command: u8,
    /// Tag.
    pub tag: u32,
}

impl HeaderFields {
    /// Write the common header into `buf[..24]`. Panics if `buf` is shorter (callers size it).
    pub fn write(&self, buf: &mut [u8]) {
        buf[0..6].copy_from_slice(&self.dst);
        buf[6..12].copy_from_slice(&self.src);
        buf[12..14].copy_from_slice(&ETHERTYPE_AOE.to_be_bytes());
        buf[14] = (VERSION << 4) | (self.flags & 0x0f);
        buf[15] = self.error;
        buf[16..18].copy_from_slice(&self.shelf.to_be_bytes());
        buf[18] = self.slot;
        buf[19] = self.command;
        buf[20..24].copy_from_slice(&self.tag.to_be_bytes());
    }
}

/// A view of the ATA argument block (bytes 24..36).
#[derive(Clone, Copy, Debug)]
pub struct Ata<T>(T);

impl<T: AsRef<[u8]>> Ata<T> {
    /// A view over a whole frame, or `None` if it is shorter than 36 bytes.
    pub fn new(frame: T) -> Option<Self> {
        (frame.as_ref().len() >= ATA_HLEN).then_some(Ata(frame))
    }
    fn b(&self) -> &[u8] {
        self.0.as_ref()
    }
    /// AFlags.
    pub fn aflags(&self) -> u8 {
        self.b()[24]
    }
    /// Features (request) / Error (response) register.
    pub fn feature(&self) -> u8 {
        self.b()[25]
    }
    /// Sector count.
    pub fn sector_count(&self) -> u8 {
        self.b()[26]
    }
    /// Command (request) / Status (response) register.
    pub fn cmd_status(&self) -> u8 {
        self.b()[27]
    }
    /// The six LBA bytes as a 48-bit number (lba0 least significant).
    pub fn lba_raw(&self) -> u64 {
        let b = self.b();
        (0..6).fold(0u64, |acc, i| acc | (u64::from(b[28 + i]) << (8 * i)))
    }
    /// LBA byte `i` (0..6).
    pub fn lba_byte(&self, i: usize) -> u8 {
        self.b()[28 + i]
    }
    /// Bytes after the ATA header (write payload or read data), as present in the frame.
    pub fn payload(&self) -> &[u8] {
        &self.b()[ATA_HLEN..]
    }
}

/// Fields of an ATA argument block, for writing one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AtaFields {
    /// AFlags.
    pub aflags: u8,
    /// Features / Error.
    pub feature: u8,
    /// Sector count.
    pub sector_count: u8,
    /// Command / Status.
    pub cmd_status: u8,
    /// 48-bit LBA (or the six raw LBA bytes for LBA28, lba3 holding the device register).
    pub lba: u64,
}

impl AtaFields {
    /// Write bytes 24..36 of `frame`.
    pub fn write(&self, frame: &mut [u8]) {
        frame[24] = self.aflags;
        frame[25] = self.feature;
        frame[26] = self.sector_count;
        frame[27] = self.cmd_status;
        for i in 0..6 {
            frame[28 + i] = (self.lba >> (8 * i)) as u8;
        }
        frame[34] = 0;
        frame[35] = 0;
    }
}

/// A view of the Query Config arguments (bytes 24..32) and string.
#[derive(Clone, Copy, Debug)]
pub struct Config<T>(T);

impl<T: AsRef<[u8]>> Config<T> {
    /// A view over a whole frame, or `None` if it is shorter than 32 bytes.
    pub fn new(frame: T) -> Option<Self> {
        (frame.as_ref().len() >= CFG_HLEN).then_some(Config(frame))
    }
    fn b(&self) -> &[u8] {
        self.0.as_ref()
    }
    /// Buffer count.
    pub fn bufcnt(&self) -> u16 {
        be16(self.b(), 24)
    }
    /// Firmware version.
    pub fn firmware(&self) -> u16 {
        be16(self.b(), 26)
    }
    /// Maximum sectors per ATA command (0 means 2).
    pub fn sector_count(&self) -> u8 {
        self.b()[28]
    }
    /// AoE version nibble of byte 29.
    pub fn aoe_version(&self) -> u8 {
        self.b()[29] >> 4
    }
    /// CCmd (low nibble of byte 29).
    pub fn ccmd(&self) -> u8 {
        self.b()[29] & 0x0f
    }
    /// Config string length as declared.
    pub fn string_len(&self) -> usize {
        usize::from(be16(self.b(), 30))
    }
    /// The config string, if the declared length is ≤ 1024 and fits in the frame.
    pub fn string(&self) -> Option<&[u8]> {
        let n = self.string_len();
        (n <= MAX_CONFIG).then(|| self.b().get(CFG_HLEN..CFG_HLEN + n))?
    }
}

/// A view of the MAC Mask List arguments (bytes 24..28) and directives.
#[derive(Clone, Copy, Debug)]
pub struct MaskList<T>(T);

impl<T: AsRef<[u8]>> MaskList<T> {
    /// A view over a whole frame, or `None` if it is shorter than 28 bytes.
    pub fn new(frame: T) -> Option<Self> {
        (frame.as_ref().len() >= MASK_HLEN).then_some(MaskList(frame))
    }
    fn b(&self) -> &[u8] {
        self.0.as_ref()
    }
    /// MCmd.
    pub fn mcmd(&self) -> u8 {
        self.b()[25]
    }
    /// MError.
    pub fn merror(&self) -> u8 {
        self.b()[26]
    }
    /// Directive count.
    pub fn dir_count(&self) -> u8 {
        self.b()[27]
    }
    /// Directive `i` as (DCmd, MAC), if the frame holds it.
    pub fn directive(&self, i: usize) -> Option<(u8, Mac)> {
        let at = MASK_HLEN + 8 * i;
        let d = self.b().get(at..at + 8)?;
        Some((d[1], mac_at(d, 2)))
    }
    /// True if the frame holds all `dir_count` directives.
    pub fn directives_fit(&self) -> bool {
        self.b().len() >= MASK_HLEN + 8 * usize::from(self.dir_count())
    }
}

/// A view of the Reserve/Release arguments (bytes 24..26) and MAC list.
#[derive(Clone, Copy, Debug)]
pub struct Reserve<T>(T);

impl<T: AsRef<[u8]>> Reserve<T> {
    /// A view over a whole frame, or `None` if it is shorter than 26 bytes.
    pub fn new(frame: T) -> Option<Self> {
        (frame.as_ref().len() >= RES_HLEN).then_some(Reserve(frame))
    }
    fn b(&self) -> &[u8] {
        self.0.as_ref()
    }
    /// RCmd.
    pub fn rcmd(&self) -> u8 {
        self.b()[24]
    }
    /// Number of MACs declared.
    pub fn nmacs(&self) -> u8 {
        self.b()[25]
    }
    /// MAC `i`, if the frame holds it.
    pub fn mac(&self, i: usize) -> Option<Mac> {
        let at = RES_HLEN + 6 * i;
        self.b().get(at..at + 6).map(|m| mac_at(m, 0))
    }
    /// True if the frame holds all `nmacs` MACs.
    pub fn macs_fit(&self) -> bool {
        self.b().len() >= RES_HLEN + 6 * usize::from(self.nmacs())
    }
}

/// Zero `buf[len..60]` and return the padded length (at least 60).
///
/// Panics if `buf` is shorter than the padded length; callers hand in whole frame buffers.
pub fn pad(buf: &mut [u8], len: usize) -> usize {
    if len < ETH_ZLEN {
        buf[len..ETH_ZLEN].fill(0);
        ETH_ZLEN
    } else {
        len
    }
}

/// Format a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_to_string(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse `aa:bb:cc:dd:ee:ff` or `aabbccddeeff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let hex: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
    if hex.len() != 12 || !hex.is_ascii() {
        return None;
    }
    let mut m = [0u8; 6];
    for (i, b) in m.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(m)
}
