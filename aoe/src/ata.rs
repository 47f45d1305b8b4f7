//! ATA opcodes, status and error registers, and the IDENTIFY DEVICE page.

/// READ SECTORS (LBA28).
pub const READ: u8 = 0x20;
/// READ SECTORS EXT (LBA48).
pub const READ_EXT: u8 = 0x24;
/// WRITE SECTORS (LBA28).
pub const WRITE: u8 = 0x30;
/// WRITE SECTORS EXT (LBA48).
pub const WRITE_EXT: u8 = 0x34;
/// SMART (feature register selects the sub-command).
pub const SMART: u8 = 0xb0;
/// CHECK POWER MODE.
pub const CHECK_POWER: u8 = 0xe5;
/// FLUSH CACHE.
pub const FLUSH: u8 = 0xe7;
/// FLUSH CACHE EXT.
pub const FLUSH_EXT: u8 = 0xea;
/// IDENTIFY DEVICE.
pub const IDENTIFY: u8 = 0xec;

/// SMART sub-commands (Features register) we implement.
pub mod smart {
    /// SMART ENABLE OPERATIONS.
    pub const ENABLE: u8 = 0xd8;
    /// SMART DISABLE OPERATIONS.
    pub const DISABLE: u8 = 0xd9;
    /// SMART RETURN STATUS.
    pub const RETURN_STATUS: u8 = 0xda;
    /// LBA mid signature a SMART command carries (and a healthy device returns).
    pub const LBA_MID: u8 = 0x4f;
    /// LBA high signature.
    pub const LBA_HIGH: u8 = 0xc2;
}

/// Status register: device ready.
pub const STATUS_DRDY: u8 = 0x40;
/// Status register: error.
pub const STATUS_ERR: u8 = 0x01;
/// Status of a successful command.
pub const STATUS_OK: u8 = STATUS_DRDY;
/// Status of a failed command (the error register says why).
pub const STATUS_FAIL: u8 = STATUS_DRDY | STATUS_ERR;

/// Error register: uncorrectable data (media error).
pub const ERR_UNC: u8 = 0x40;
/// Error register: ID not found (address out of range).
pub const ERR_IDNF: u8 = 0x10;
/// Error register: command aborted.
pub const ERR_ABRT: u8 = 0x04;

/// The LBA28 address range.
pub const LBA28_MASK: u64 = 0x0fff_ffff;
/// The LBA48 address range.
pub const LBA48_MASK: u64 = 0xffff_ffff_ffff;

/// What IDENTIFY DEVICE says about an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    /// Serial number (at most 20 ASCII characters).
    pub serial: String,
    /// Firmware revision (at most 8).
    pub firmware: String,
    /// Model (at most 40).
    pub model: String,
    /// A volatile write cache exists (write-back export): FLUSH CACHE matters.
    pub write_cache: bool,
}

fn put_word(page: &mut [u8], word: usize, v: u16) {
    page[2 * word..2 * word + 2].copy_from_slice(&v.to_le_bytes());
}

/// ATA strings: space padded, two characters per word, first character in the high byte.
fn put_string(page: &mut [u8], first_word: usize, words: usize, s: &str) {
    let mut bytes = vec![b' '; 2 * words];
    for (d, c) in bytes
        .iter_mut()
        .zip(s.bytes().filter(|c| c.is_ascii_graphic() || *c == b' '))
    {
        *d = c;
    }
    for (i, pair) in bytes.chunks(2).enumerate() {
        page[2 * (first_word + i)] = pair[1];
        page[2 * (first_word + i) + 1] = pair[0];
    }
}

/// Read an ATA string back (inverse of the encoding above, trailing spaces trimmed).
pub fn get_string(page: &[u8], first_word: usize, words: usize) -> String {
    let mut out = Vec::with_capacity(2 * words);
    for i in 0..words {
        out.push(page[2 * (first_word + i) + 1]);
        out.push(page[2 * (first_word + i)]);
    }
    String::from_utf8_lossy(&out).trim_end().to_string()
}

/// Read word `w` of an IDENTIFY page.
pub fn get_word(page: &[u8], w: usize) -> u16 {
    u16::from_le_bytes([page[2 * w], page[2 * w + 1]])
}

/// Capacity as the Linux initiator computes it from an IDENTIFY page: words 100-103 if words
/// 83/86 announce LBA48, else words 60-61.
pub fn identify_capacity(page: &[u8]) -> u64 {
    if (get_word(page, 83) | get_word(page, 86)) & (1 << 10) != 0 {
        (0..4).fold(0, |acc, i| {
            acc | (u64::from(get_word(page, 100 + i)) << (16 * i))
        })
    } else {
        u64::from(get_word(page, 60)) | (u64::from(get_word(page, 61)) << 16)
    }
}

/// Fill `page` (512 bytes) with the IDENTIFY DEVICE data for `id`.
///
/// Words set: 0 (fixed disk), 1/3/6 and 54-58 (CHS for LBA28-only initiators), 10-19 serial,
/// 23-26 firmware, 27-46 model, 47, 49 (LBA), 50, 60-61 (LBA28 capacity), 80 (ATA-8),
/// 82-87 (SMART, write cache, FLUSH CACHE (EXT), LBA48; bit 14 "shall be one"), 93,
/// 100-103 (LBA48 capacity), 106 (512-byte sectors), and 255 (integrity checksum).
pub fn identify_page(id: &Identity, page: &mut [u8]) {
    let page = &mut page[..512];
    page.fill(0);
    let lba28 = id.sectors.min(LBA28_MASK);
    // CHS geometry 16 heads × 63 sectors, cylinders capped at 16383 (ATA's traditional limit).
    let cyls = (lba28 / (16 * 63)).min(16383) as u16;
    put_word(page, 0, 0x0040);
    put_word(page, 1, cyls);
    put_word(page, 3, 16);
    put_word(page, 6, 63);
    put_string(page, 10, 10, &id.serial);
    put_string(page, 23, 4, &id.firmware);
    put_string(page, 27, 20, &id.model);
    put_word(page, 47, 0x8000);
    put_word(page, 49, 0x0200);
    put_word(page, 50, 0x4000);
    put_word(page, 53, 0x0001);
    put_word(page, 54, cyls);
    put_word(page, 55, 16);
    put_word(page, 56, 63);
    let chs = u32::from(cyls) * 16 * 63;
    put_word(page, 57, chs as u16);
    put_word(page, 58, (chs >> 16) as u16);
    put_word(page, 60, lba28 as u16);
    put_word(page, 61, (lba28 >> 16) as u16);
    put_word(page, 80, 0x01f0);
    let wc = if id.write_cache { 1 << 5 } else { 0 };
    // 82: SMART (bit 0), write cache (bit 5); 83: bit 14 one, FLUSH CACHE EXT (13),
    // FLUSH CACHE (12), LBA48 (10); 84: bit 14 one.
    put_word(page, 82, 0x0001 | wc);
    put_word(page, 83, 0x7400);
    put_word(page, 84, 0x4000);
    put_word(page, 85, 0x0001 | wc);
    put_word(page, 86, 0x3400);
    put_word(page, 87, 0x4000);
    put_word(page, 93, 0x400b);
    for i in 0..4 {
        put_word(page, 100 + i, (id.sectors >> (16 * i)) as u16);
    }
    put_word(page, 106, 0x4000);
    // Word 255: signature 0xA5 in the low byte, and a checksum byte making all 512 bytes sum
    // to zero modulo 256.
    page[510] = 0xa5;
    let sum = page[..511].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    page[511] = 0u8.wrapping_sub(sum);
}
