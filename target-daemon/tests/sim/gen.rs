//! The initiators' traffic: valid requests of every kind, wildcards, malformed and truncated
//! frames, jumbo frames, duplicates and re-sends with new tags.

use std::rc::Rc;

use aoe::ata;
use aoe::initiator::{self, Addr, AtaRequest};
use aoe::wire::{ccmd, mask, reserve, Mac, BROADCAST, ETHERTYPE_AOE, SECTOR, SHELF_ANY, SLOT_ANY};

use crate::harness::{content_sector, Sim};

impl Sim {
    /// This step's traffic.
    pub fn generate(&mut self) {
        if self.solo_pending {
            return;
        }
        for i in 0..self.inis.len() {
            let (n, kind) = if self.rng.chance(self.sc.p_burst) {
                // Half the bursts repeat one kind of request.
                let kind = self.rng.chance(0.5).then(|| self.pick_kind());
                (self.rng.range(2, self.sc.burst), kind)
            } else {
                (u64::from(self.rng.chance(self.sc.p_send)), None)
            };
            for _ in 0..n {
                let kind = kind.unwrap_or_else(|| self.pick_kind());
                let pkt = self.make_packet(i, kind);
                if !self.offer(pkt) {
                    return;
                }
            }
        }
    }

    fn pick_kind(&mut self) -> usize {
        let total: u32 = self.sc.mix.iter().sum();
        let mut r = self.rng.below(u64::from(total)) as u32;
        let mut kind = 0;
        while r >= self.sc.mix[kind] {
            r -= self.sc.mix[kind];
            kind += 1;
        }
        kind
    }

    fn make_packet(&mut self, i: usize, kind: usize) -> Vec<u8> {
        match kind {
            0 => {
                let (shelf, slot, e) = self.pick_addr();
                self.read_packet(i, shelf, slot, e)
            }
            1 => {
                let (shelf, slot, e) = self.pick_addr();
                self.write_packet(i, shelf, slot, e)
            }
            2 => {
                let cmd = if self.rng.chance(0.5) {
                    ata::FLUSH
                } else {
                    ata::FLUSH_EXT
                };
                self.simple_ata(i, cmd)
            }
            3 => self.simple_ata(i, ata::IDENTIFY),
            4 => self.config_packet(i),
            5 => self.mask_packet(i),
            6 => self.reserve_packet(i),
            7 => self.other_ata(i),
            8 => self.malformed(i),
            9 if !self.recent.is_empty() => {
                let k = self.rng.below(self.recent.len() as u64) as usize;
                self.recent[k].to_vec()
            }
            10 if !self.inis[i].writes.is_empty() => {
                let k = self.rng.below(self.inis[i].writes.len() as u64) as usize;
                let mut p = self.inis[i].writes[k].to_vec();
                let tag = self.tag(i);
                p[20..24].copy_from_slice(&tag.to_be_bytes());
                p
            }
            11 => {
                let e = self.rng.below(self.exports.len() as u64) as usize;
                self.read_packet(i, SHELF_ANY, SLOT_ANY, e)
            }
            12 => {
                let e = self.rng.below(self.exports.len() as u64) as usize;
                self.write_packet(i, SHELF_ANY, SLOT_ANY, e)
            }
            _ => {
                let (shelf, slot, e) = self.pick_addr();
                self.read_packet(i, shelf, slot, e)
            }
        }
    }

    pub fn tag(&mut self, i: usize) -> u32 {
        let t = self.inis[i].next_tag;
        self.inis[i].next_tag = t.wrapping_add(1);
        t
    }

    /// Mostly one export's address; sometimes a wildcard, sometimes nobody's.
    fn pick_addr(&mut self) -> (u16, u8, usize) {
        let e = self.rng.below(self.exports.len() as u64) as usize;
        let (shelf, slot) = (self.states[e].shelf, self.states[e].slot);
        match self.rng.below(100) {
            0..=79 => (shelf, slot, e),
            80..=84 => (SHELF_ANY, slot, e),
            85..=89 => (shelf, SLOT_ANY, e),
            90..=94 => (SHELF_ANY, SLOT_ANY, e),
            _ => (shelf + 5, slot, e),
        }
    }

    fn addr(&mut self, i: usize, shelf: u16, slot: u8) -> Addr {
        Addr {
            src: self.inis[i].mac,
            dst: if self.rng.chance(0.05) {
                BROADCAST
            } else {
                self.iface.mac
            },
            shelf,
            slot,
            tag: self.tag(i),
        }
    }

    fn buf(&self) -> Vec<u8> {
        vec![0u8; usize::from(self.iface.mtu) + 14 + 1100]
    }

    /// Sector count: mostly valid, sometimes 0 or more than advertised.
    fn sectors_for(&mut self, e: usize) -> u8 {
        let adv = self.iface.advertised_sectors(&self.states[e]);
        match self.rng.below(100) {
            0..=94 => self.rng.range(1, u64::from(adv)) as u8,
            95..=97 => 0,
            _ => self.rng.range(u64::from(adv) + 1, 255) as u8,
        }
    }

    /// LBA: mostly in the export's small hot window; sometimes anywhere, or across the end.
    fn lba_for(&mut self, e: usize, n: u8) -> u64 {
        let sectors = self.states[e].sectors;
        let hot = self.sc.exports[e].hot;
        match self.rng.below(100) {
            0..=84 => hot + self.rng.below(32),
            85..=94 => self.rng.below(sectors),
            _ => sectors.saturating_sub(self.rng.below(u64::from(n) + 4)),
        }
    }

    pub fn read_packet(&mut self, i: usize, shelf: u16, slot: u8, e: usize) -> Vec<u8> {
        let n = self.sectors_for(e);
        let lba = self.lba_for(e, n);
        let cmd = if self.rng.chance(0.7) {
            ata::READ_EXT
        } else {
            ata::READ
        };
        let a = self.addr(i, shelf, slot);
        let mut b = self.buf();
        let len = initiator::ata_request(
            &mut b,
            &a,
            &AtaRequest {
                cmd,
                feature: 0,
                sectors: n,
                lba,
                data: None,
            },
        );
        // Trailing junk, which on a multi-buffer socket may span descriptors.
        let len = if self.rng.chance(0.03) {
            let to = self
                .rng
                .range(len as u64, usize::from(self.iface.mtu) as u64 + 14)
                as usize;
            for x in &mut b[len..to] {
                *x = self.rng.next_u64() as u8;
            }
            to
        } else {
            len
        };
        b.truncate(len);
        b
    }

    pub fn write_packet(&mut self, i: usize, shelf: u16, slot: u8, e: usize) -> Vec<u8> {
        let n = self.sectors_for(e);
        let lba = self.lba_for(e, n);
        let adv = self.iface.advertised_sectors(&self.states[e]);
        // The payload: count sectors (at most what fits), sometimes one short.
        let mut have = n.min(adv);
        if have > 0 && self.rng.chance(0.03) {
            have -= 1;
        }
        self.write_with(i, shelf, slot, lba, n, have)
    }

    /// A write of `n` sectors at `lba` carrying `have` sectors of data.
    pub fn write_with(
        &mut self,
        i: usize,
        shelf: u16,
        slot: u8,
        lba: u64,
        n: u8,
        have: u8,
    ) -> Vec<u8> {
        let content = self.next_content;
        self.next_content += 1;
        let mut data = vec![0u8; usize::from(have) * SECTOR];
        for (k, s) in data.chunks_mut(SECTOR).enumerate() {
            content_sector(content, lba + k as u64, s);
        }
        let cmd = if self.rng.chance(0.7) {
            ata::WRITE_EXT
        } else {
            ata::WRITE
        };
        let a = self.addr(i, shelf, slot);
        let mut b = self.buf();
        let len = initiator::ata_request(
            &mut b,
            &a,
            &AtaRequest {
                cmd,
                feature: 0,
                sectors: n,
                lba,
                data: Some(&data),
            },
        );
        b.truncate(len);
        let w = &mut self.inis[i].writes;
        if w.len() == 8 {
            w.pop_front();
        }
        w.push_back(Rc::from(b.clone()));
        b
    }

    fn simple_ata(&mut self, i: usize, cmd: u8) -> Vec<u8> {
        let (shelf, slot, _) = self.pick_addr();
        let a = self.addr(i, shelf, slot);
        let req = if cmd == ata::IDENTIFY {
            AtaRequest::identify()
        } else {
            AtaRequest {
                cmd,
                feature: 0,
                sectors: 0,
                lba: 0,
                data: None,
            }
        };
        let mut b = self.buf();
        let len = initiator::ata_request(&mut b, &a, &req);
        b.truncate(len);
        b
    }

    fn other_ata(&mut self, i: usize) -> Vec<u8> {
        let (shelf, slot, _) = self.pick_addr();
        let a = self.addr(i, shelf, slot);
        let signature =
            (u64::from(ata::smart::LBA_MID) << 8) | (u64::from(ata::smart::LBA_HIGH) << 16);
        let req = match self.rng.below(5) {
            0 => AtaRequest {
                cmd: ata::SMART,
                feature: ata::smart::RETURN_STATUS,
                sectors: 0,
                lba: signature,
                data: None,
            },
            1 => AtaRequest {
                cmd: ata::SMART,
                feature: self.rng.next_u64() as u8,
                sectors: 1,
                lba: if self.rng.chance(0.5) { signature } else { 0 },
                data: None,
            },
            2 => AtaRequest {
                cmd: ata::CHECK_POWER,
                feature: 0,
                sectors: 0,
                lba: 0,
                data: None,
            },
            _ => AtaRequest {
                cmd: self.rng.next_u64() as u8,
                feature: 0,
                sectors: self.rng.next_u64() as u8,
                lba: self.rng.below(1 << 20),
                data: None,
            },
        };
        let mut b = self.buf();
        let len = initiator::ata_request(&mut b, &a, &req);
        b.truncate(len);
        b
    }

    fn config_packet(&mut self, i: usize) -> Vec<u8> {
        let (shelf, slot, e) = self.pick_addr();
        let a = self.addr(i, shelf, slot);
        let cc = match self.rng.below(10) {
            0..=3 => ccmd::READ,
            4 => ccmd::TEST,
            5 => ccmd::PREFIX,
            6 | 7 => ccmd::SET,
            8 => ccmd::FORCE_SET,
            _ => self.rng.range(5, 15) as u8,
        };
        let current = self.states[e].config.clone();
        let s: Vec<u8> = match self.rng.below(12) {
            0..=2 => Vec::new(),
            3 | 4 => b"xblade".to_vec(),
            5 | 6 => current.clone(),
            7 => current[..current.len() / 2].to_vec(),
            8 => format!("host-{i}").into_bytes(),
            9 => (0..1024).map(|_| b'a' + self.rng.below(26) as u8).collect(),
            _ => (0..self.rng.range(1, 40))
                .map(|_| self.rng.next_u64() as u8)
                .collect(),
        };
        let mut b = self.buf();
        let len = initiator::config_request(&mut b, &a, cc, &s);
        b.truncate(len);
        b
    }

    /// An initiator's MAC with probability `p`, else a stranger's.
    fn initiator_mac(&mut self, p: f64) -> Mac {
        if self.rng.chance(p) {
            let k = self.rng.below(self.inis.len() as u64) as usize;
            self.inis[k].mac
        } else {
            [0x02, 0, 0x5e, 0x40, 0, self.rng.below(4) as u8]
        }
    }

    fn mask_packet(&mut self, i: usize) -> Vec<u8> {
        let (shelf, slot, e) = self.pick_addr();
        let a = self.addr(i, shelf, slot);
        let mcmd = match self.rng.below(10) {
            0..=5 => mask::READ,
            6..=8 => mask::EDIT,
            _ => self.rng.range(2, 9) as u8,
        };
        // A non-empty list locks out everyone else and only its members may edit it, so the
        // lists must empty again and never hold only strangers: adds add initiators, deletes
        // remove strangers first, and a sender removes itself only as the last entry.
        let own = self.inis[i].mac;
        let listed = self.states[e].mask.clone();
        let strangers: Vec<Mac> = listed
            .iter()
            .copied()
            .filter(|m| !self.inis.iter().any(|x| x.mac == *m))
            .collect();
        let others: Vec<Mac> = listed.iter().copied().filter(|m| *m != own).collect();
        let dirs: Vec<(u8, Mac)> = (0..self.rng.range(1, 3))
            .map(|_| match self.rng.below(20) {
                0..=2 => (mask::DCMD_ADD, self.initiator_mac(1.0)),
                3..=17 => {
                    let from = if !strangers.is_empty() {
                        &strangers
                    } else if !others.is_empty() {
                        &others
                    } else {
                        &listed
                    };
                    if from.is_empty() {
                        (mask::DCMD_DEL, self.initiator_mac(0.5))
                    } else {
                        (
                            mask::DCMD_DEL,
                            from[self.rng.below(from.len() as u64) as usize],
                        )
                    }
                }
                18 => (mask::DCMD_NONE, self.initiator_mac(0.5)),
                _ => (self.rng.range(3, 9) as u8, self.initiator_mac(0.5)),
            })
            .collect();
        let mut b = self.buf();
        let len = initiator::mask_request(&mut b, &a, mcmd, &dirs);
        b.truncate(len);
        b
    }

    fn reserve_packet(&mut self, i: usize) -> Vec<u8> {
        let (shelf, slot, _) = self.pick_addr();
        let a = self.addr(i, shelf, slot);
        let own = self.inis[i].mac;
        let (rcmd, macs): (u8, Vec<Mac>) = match self.rng.below(10) {
            0..=3 => (reserve::READ, Vec::new()),
            4 | 5 => (reserve::SET, vec![own]),
            6 => (reserve::SET, Vec::new()),
            7 | 8 => (reserve::FORCE_SET, Vec::new()),
            _ => (self.rng.range(3, 9) as u8, vec![self.initiator_mac(0.8)]),
        };
        let mut b = self.buf();
        let len = initiator::reserve_request(&mut b, &a, rcmd, &macs);
        b.truncate(len);
        b
    }

    /// A valid request, broken: truncated, bytes of its header flipped, another EtherType, the
    /// response flag, another AoE version, or plain junk.
    fn malformed(&mut self, i: usize) -> Vec<u8> {
        let mut p = match self.rng.below(6) {
            0 => {
                let (shelf, slot, e) = self.pick_addr();
                self.read_packet(i, shelf, slot, e)
            }
            1 => {
                let (shelf, slot, e) = self.pick_addr();
                self.write_packet(i, shelf, slot, e)
            }
            2 => self.config_packet(i),
            3 => self.mask_packet(i),
            4 => self.reserve_packet(i),
            _ => self.simple_ata(i, ata::IDENTIFY),
        };
        match self.rng.below(7) {
            0 => {
                let len = self.rng.range(1, p.len() as u64) as usize;
                p.truncate(len);
            }
            1 => {
                for _ in 0..self.rng.range(1, 3) {
                    let at = self.rng.below(36.min(p.len() as u64)) as usize;
                    p[at] ^= self.rng.range(1, 255) as u8;
                }
            }
            2 => {
                let t: u16 = self.rng.pick(&[0x0800, 0x86dd, 0x88a3, 0x0000]);
                p[12..14].copy_from_slice(&t.to_be_bytes());
            }
            3 => p[14] |= aoe::wire::FLAG_R,
            4 => p[14] = (self.rng.pick(&[0u8, 2, 15]) << 4) | (p[14] & 0x0f),
            5 => {
                p[14] |= aoe::wire::FLAG_E;
                p[15] = self.rng.next_u64() as u8;
            }
            _ => {
                let len = self.rng.range(1, u64::from(self.iface.mtu) + 14) as usize;
                p = (0..len).map(|_| self.rng.next_u64() as u8).collect();
                if len >= 14 && self.rng.chance(0.5) {
                    p[12..14].copy_from_slice(&ETHERTYPE_AOE.to_be_bytes());
                }
            }
        }
        p
    }
}
