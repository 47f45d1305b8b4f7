//! Self-describing, checksummed 512-byte sectors for `--verify`.
//!
//! A sector written for LBA `L` with seed `S` and generation `G` is a pure function of
//! `(S, L, G)`:
//!
//! | bytes    | content                                                     |
//! |----------|-------------------------------------------------------------|
//! | 0..8     | magic `XBVERIFY`                                            |
//! | 8..16    | LBA, little-endian                                          |
//! | 16..24   | seed, little-endian                                         |
//! | 24..28   | generation (1..=255: how many times this run wrote the LBA) |
//! | 28..32   | zero                                                        |
//! | 32..504  | pseudo-random words from `(S, L, G)`                        |
//! | 504..512 | checksum of bytes 0..504                                    |
//!
//! A read of a sector this run wrote must find exactly the last generation written (a stale
//! generation means a lost or reordered write). A sector this run did not write can still be
//! checked against the seed, with any generation: that is how a `--rw read --verify --seed S`
//! run checks what an earlier `--rw write --verify --seed S` run left.

use std::fmt;

use aoe::wire::SECTOR;

/// First bytes of every pattern sector.
pub const MAGIC: [u8; 8] = *b"XBVERIFY";
const FILL: std::ops::Range<usize> = 32..504;
const SUM_AT: usize = 504;

/// splitmix64's finalizer: a cheap, well-mixed bijection.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Checksum of `sector[..504]`: word-wise multiply-rotate, which changes whenever any single
/// word changes, then a final avalanche.
fn checksum(sector: &[u8]) -> u64 {
    let mut h = 0x243f_6a88_85a3_08d3u64;
    for at in (0..SUM_AT).step_by(8) {
        h = (h.rotate_left(5) ^ word(sector, at)).wrapping_mul(0x0100_0000_01b3_u64 | 1);
    }
    mix(h)
}

/// The fill words' generator state for `(seed, lba, gen)`.
fn fill_key(seed: u64, lba: u64, gen: u32) -> u64 {
    mix(seed ^ mix(lba.wrapping_add(GOLDEN)) ^ mix(u64::from(gen) << 48 | 0x5eed))
}

/// Writes the pattern sector for `(seed, lba, gen)` into `out[..512]`.
pub fn fill(out: &mut [u8], seed: u64, lba: u64, gen: u32) {
    let s = &mut out[..SECTOR];
    s[0..8].copy_from_slice(&MAGIC);
    s[8..16].copy_from_slice(&lba.to_le_bytes());
    s[16..24].copy_from_slice(&seed.to_le_bytes());
    s[24..28].copy_from_slice(&gen.to_le_bytes());
    s[28..32].fill(0);
    let mut state = fill_key(seed, lba, gen);
    for at in FILL.step_by(8) {
        state = state.wrapping_add(GOLDEN);
        s[at..at + 8].copy_from_slice(&mix(state).to_le_bytes());
    }
    let sum = checksum(s);
    s[SUM_AT..].copy_from_slice(&sum.to_le_bytes());
}

/// Writes consecutive pattern sectors for `lba, lba + 1, ...` into `out` (a multiple of 512).
pub fn fill_range(out: &mut [u8], seed: u64, lba: u64, gen: u32) {
    for (i, s) in out.chunks_exact_mut(SECTOR).enumerate() {
        fill(s, seed, lba + i as u64, gen);
    }
}

/// What a mismatching sector looks like, for the error message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// No pattern magic: never written by a verify run (or overwritten by something else).
    NoPattern {
        /// The sector's first 16 bytes.
        head: [u8; 16],
    },
    /// The checksum does not match the contents: the sector is corrupt.
    Checksum {
        /// Checksum computed over the bytes found.
        computed: u64,
        /// Checksum stored in the sector.
        stored: u64,
        /// LBA field found.
        lba: u64,
        /// Generation field found.
        gen: u32,
    },
    /// An intact pattern sector for another LBA (misdirected read or write).
    WrongLba {
        /// LBA field found.
        found: u64,
        /// Generation field found.
        gen: u32,
    },
    /// An intact pattern sector written with another seed.
    WrongSeed {
        /// Seed found.
        found: u64,
    },
    /// An intact sector of an older (or newer) write than the last one acknowledged.
    WrongGeneration {
        /// Generation of the last write this run completed.
        expected: u32,
        /// Generation found.
        found: u32,
    },
    /// Header and checksum are consistent but the fill is not what `(seed, lba, gen)` gives.
    Content {
        /// Byte offset in the sector of the first differing word.
        offset: usize,
    },
}

/// What a read of one sector is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    /// Seed of the run that wrote it.
    pub seed: u64,
    /// The sector's LBA.
    pub lba: u64,
    /// The generation this run last wrote, or `None` to accept any generation.
    pub gen: Option<u32>,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pattern lba {} seed {:#x}", self.lba, self.seed)?;
        match self.gen {
            Some(g) => write!(f, " gen {g}"),
            None => write!(f, " (any gen)"),
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::NoPattern { head } => {
                write!(f, "no pattern (first bytes ")?;
                for b in head {
                    write!(f, "{b:02x}")?;
                }
                write!(f, ")")
            }
            Mismatch::Checksum {
                computed,
                stored,
                lba,
                gen,
            } => write!(
                f,
                "corrupt sector (header lba {lba} gen {gen}, checksum {stored:#018x} stored, \
                 {computed:#018x} computed)"
            ),
            Mismatch::WrongLba { found, gen } => {
                write!(f, "the intact sector of lba {found} (gen {gen})")
            }
            Mismatch::WrongSeed { found } => write!(f, "a sector written with seed {found:#x}"),
            Mismatch::WrongGeneration { found, .. } => {
                write!(f, "gen {found} (a lost, stale or reordered write)")
            }
            Mismatch::Content { offset } => {
                write!(f, "a valid header but wrong data from byte {offset}")
            }
        }
    }
}

/// Checks one 512-byte sector against `want`; returns the generation found.
pub fn check(sector: &[u8], want: &Expect) -> Result<u32, Mismatch> {
    let s = &sector[..SECTOR];
    if s[0..8] != MAGIC {
        let mut head = [0u8; 16];
        head.copy_from_slice(&s[..16]);
        return Err(Mismatch::NoPattern { head });
    }
    let lba = word(s, 8);
    let seed = word(s, 16);
    let gen = u32::from_le_bytes(s[24..28].try_into().expect("4 bytes"));
    let (computed, stored) = (checksum(s), word(s, SUM_AT));
    if computed != stored {
        return Err(Mismatch::Checksum {
            computed,
            stored,
            lba,
            gen,
        });
    }
    if lba != want.lba {
        return Err(Mismatch::WrongLba { found: lba, gen });
    }
    if seed != want.seed {
        return Err(Mismatch::WrongSeed { found: seed });
    }
    if let Some(expected) = want.gen {
        if gen != expected {
            return Err(Mismatch::WrongGeneration {
                expected,
                found: gen,
            });
        }
    }
    if s[28..32] != [0; 4] {
        return Err(Mismatch::Content { offset: 28 });
    }
    let mut state = fill_key(seed, lba, gen);
    for at in FILL.step_by(8) {
        state = state.wrapping_add(GOLDEN);
        if word(s, at) != mix(state) {
            return Err(Mismatch::Content { offset: at });
        }
    }
    Ok(gen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector(seed: u64, lba: u64, gen: u32) -> Vec<u8> {
        let mut s = vec![0u8; SECTOR];
        fill(&mut s, seed, lba, gen);
        s
    }

    fn want(seed: u64, lba: u64, gen: Option<u32>) -> Expect {
        Expect { seed, lba, gen }
    }

    #[test]
    fn round_trip() {
        for (seed, lba, gen) in [(1, 0, 1), (7, 123_456_789, 255), (u64::MAX, 1 << 47, 3)] {
            let s = sector(seed, lba, gen);
            assert_eq!(check(&s, &want(seed, lba, Some(gen))), Ok(gen));
            assert_eq!(check(&s, &want(seed, lba, None)), Ok(gen));
        }
    }

    #[test]
    fn deterministic_and_distinct() {
        assert_eq!(sector(5, 10, 1), sector(5, 10, 1));
        assert_ne!(sector(5, 10, 1)[32..], sector(5, 11, 1)[32..]);
        assert_ne!(sector(5, 10, 1)[32..], sector(6, 10, 1)[32..]);
        assert_ne!(sector(5, 10, 1)[32..], sector(5, 10, 2)[32..]);
    }

    #[test]
    fn fill_range_is_per_sector() {
        let mut buf = vec![0u8; 3 * SECTOR];
        fill_range(&mut buf, 9, 100, 4);
        for i in 0..3 {
            let s = &buf[i * SECTOR..(i + 1) * SECTOR];
            assert_eq!(s, &sector(9, 100 + i as u64, 4)[..]);
        }
    }

    #[test]
    fn detects_every_single_byte_corruption() {
        let good = sector(42, 1000, 2);
        for at in 0..SECTOR {
            let mut s = good.clone();
            s[at] ^= 0x20;
            let r = check(&s, &want(42, 1000, Some(2)));
            assert!(r.is_err(), "flip at byte {at} not detected");
        }
        let mut s = good.clone();
        s[300] ^= 1;
        assert!(matches!(
            check(&s, &want(42, 1000, Some(2))),
            Err(Mismatch::Checksum {
                lba: 1000,
                gen: 2,
                ..
            })
        ));
    }

    #[test]
    fn detects_wrong_lba_seed_and_generation() {
        let s = sector(42, 1001, 2);
        assert_eq!(
            check(&s, &want(42, 1000, Some(2))),
            Err(Mismatch::WrongLba {
                found: 1001,
                gen: 2
            })
        );
        assert_eq!(
            check(&s, &want(43, 1001, None)),
            Err(Mismatch::WrongSeed { found: 42 })
        );
        assert_eq!(
            check(&s, &want(42, 1001, Some(3))),
            Err(Mismatch::WrongGeneration {
                expected: 3,
                found: 2
            })
        );
        let zeros = vec![0u8; SECTOR];
        assert!(matches!(
            check(&zeros, &want(42, 1001, None)),
            Err(Mismatch::NoPattern { .. })
        ));
    }

    #[test]
    fn forged_header_with_valid_checksum_is_caught_by_content() {
        // Rewrite the header to another LBA and fix up the checksum: the fill gives it away.
        let mut s = sector(42, 7, 1);
        s[8..16].copy_from_slice(&8u64.to_le_bytes());
        let sum = checksum(&s);
        s[SUM_AT..].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(
            check(&s, &want(42, 8, Some(1))),
            Err(Mismatch::Content { offset: 32 })
        );
    }

    #[test]
    fn messages_name_what_was_expected_and_found() {
        let w = want(0x2a, 1000, Some(3));
        assert_eq!(w.to_string(), "pattern lba 1000 seed 0x2a gen 3");
        let m = Mismatch::WrongLba { found: 7, gen: 1 };
        assert_eq!(m.to_string(), "the intact sector of lba 7 (gen 1)");
        let m = Mismatch::NoPattern { head: [0; 16] };
        assert!(m.to_string().starts_with("no pattern (first bytes 0000"));
    }
}
