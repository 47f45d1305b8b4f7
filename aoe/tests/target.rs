//! The target state machine, behaviour by behaviour (AoEr11; the peers document's §1, §2.7,
//! §2.10 and §5; vblade's observed answers in §1.12 except our deliberate differences).

use aoe::ata;
use aoe::initiator::{self, parse_response, AtaRequest, Body};
use aoe::target::{
    advertisement, decide, respond, Decision, ExportState, Iface, IoOutcome, StateChange,
};
use aoe::wire::{self, ccmd, cmd, error, mask, reserve, Mac, BROADCAST};

const TARGET: Mac = [0x02, 0, 0, 0, 0, 0x01];
const HOST: Mac = [0x02, 0, 0, 0, 0, 0x02];
const OTHER: Mac = [0x02, 0, 0, 0, 0, 0x03];

struct Lab {
    export: ExportState,
    iface: Iface,
}

impl Lab {
    fn new() -> Self {
        Lab {
            export: ExportState::new(1, 2, 1000),
            iface: Iface {
                mac: TARGET,
                mtu: 1500,
            },
        }
    }
    fn addr(&self, tag: u32) -> initiator::Addr {
        initiator::Addr {
            src: HOST,
            dst: TARGET,
            shelf: 1,
            slot: 2,
            tag,
        }
    }
    /// Run one request; returns the decision and the buffer (response in place).
    fn run(&mut self, req: &[u8]) -> (Decision, Vec<u8>) {
        let mut buf = vec![0xccu8; 9100];
        let out = respond(&self.export, &self.iface, req, &mut buf);
        if let Some(c) = out.change {
            self.export.apply(c);
        }
        (out.decision, buf)
    }
    /// Run one request that must be answered at once; returns the response bytes.
    fn reply(&mut self, req: &[u8]) -> Vec<u8> {
        match self.run(req) {
            (Decision::Reply(n), buf) => {
                assert!(n >= 60, "responses are padded to 60, got {n}");
                assert!(n <= self.iface.max_frame());
                buf[..n].to_vec()
            }
            (d, _) => panic!("expected a reply, got {d:?}"),
        }
    }
    fn ata(&self, r: AtaRequest<'_>) -> Vec<u8> {
        let mut f = vec![0u8; 9000];
        let n = initiator::ata_request(&mut f, &self.addr(7), &r);
        f.truncate(n);
        f
    }
    fn cfg(&self, cc: u8, s: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 2000];
        let n = initiator::config_request(&mut f, &self.addr(9), cc, s);
        f.truncate(n);
        f
    }
}

fn ata_regs(resp: &[u8]) -> (u8, u8, u8, usize) {
    match parse_response(resp).unwrap().body {
        Body::Ata {
            status,
            err,
            sectors,
            data,
        } => (status, err, sectors, data.len()),
        b => panic!("not an ATA response: {b:?}"),
    }
}

fn aoe_err(resp: &[u8]) -> Option<u8> {
    parse_response(resp).unwrap().error
}

#[test]
fn response_header_is_from_our_mac_with_real_address_and_echoed_tag() {
    let mut lab = Lab::new();
    let mut f = lab.cfg(ccmd::READ, b"");
    f[16..18].copy_from_slice(&0xffffu16.to_be_bytes());
    f[18] = 0xff;
    f[0..6].copy_from_slice(&BROADCAST);
    f[20..24].copy_from_slice(&0x8000_1234u32.to_be_bytes());
    let r = lab.reply(&f);
    let p = parse_response(&r).unwrap();
    assert_eq!(&r[0..6], &HOST);
    assert_eq!(p.src, TARGET);
    assert_eq!((p.shelf, p.slot), (1, 2), "never the wildcard");
    assert_eq!(p.tag, 0x8000_1234, "tag echoed unchanged, bit 31 included");
    assert_eq!(r[14], 0x18, "version 1, R");
    assert_eq!(r.len(), 60, "a 32-byte config response is padded to 60");
    assert!(r[32..60].iter().all(|b| *b == 0), "padding is zeroed");
}

#[test]
fn wildcards_are_independent_and_other_addresses_are_ignored() {
    let cases: &[(u16, u8, bool)] = &[
        (1, 2, true),
        (0xffff, 0xff, true),
        (0xffff, 2, true),
        (1, 0xff, true),
        (1, 3, false),
        (2, 2, false),
        (0xffff, 3, false),
        (2, 0xff, false),
    ];
    for &(shelf, slot, answered) in cases {
        let mut lab = Lab::new();
        let mut f = lab.cfg(ccmd::READ, b"");
        f[16..18].copy_from_slice(&shelf.to_be_bytes());
        f[18] = slot;
        let (d, _) = lab.run(&f);
        assert_eq!(
            matches!(d, Decision::Reply(_)),
            answered,
            "{shelf:#x}.{slot:#x}"
        );
    }
}

#[test]
fn responses_wrong_ethertype_and_runts_are_dropped() {
    let mut lab = Lab::new();
    let mut f = lab.cfg(ccmd::READ, b"");
    f[14] |= wire::FLAG_R;
    assert_eq!(
        lab.run(&f).0,
        Decision::Drop,
        "R=1 frames are never answered"
    );
    let mut f = lab.cfg(ccmd::READ, b"");
    f[12] = 0x08;
    f[13] = 0x00;
    assert_eq!(lab.run(&f).0, Decision::Drop);
    let f = lab.cfg(ccmd::READ, b"");
    for n in 0..24 {
        assert_eq!(lab.run(&f[..n]).0, Decision::Drop, "{n}-byte frame");
    }
}

#[test]
fn short_and_long_frames_use_protocol_lengths() {
    let mut lab = Lab::new();
    // Linux's 32-byte config query, unpadded.
    let f = lab.cfg(ccmd::READ, b"");
    let r = lab.reply(&f[..32]);
    assert!(matches!(
        parse_response(&r).unwrap().body,
        Body::Config { .. }
    ));
    // aoeping's 1056-byte query: cslen 1024 of 0xED junk, read ignores it.
    let mut f = lab.cfg(ccmd::READ, &[0xed; 1024]);
    f.truncate(1056);
    let r = lab.reply(&f);
    match parse_response(&r).unwrap().body {
        Body::Config { string, .. } => assert!(string.is_empty()),
        b => panic!("{b:?}"),
    }
    // A read with trailing junk reads what scnt says.
    let mut f = lab.ata(AtaRequest::read(10, 2));
    f.extend_from_slice(&[0xaa; 700]);
    assert_eq!(
        lab.run(&f).0,
        Decision::Read {
            lba: 10,
            sectors: 2
        }
    );
}

#[test]
fn query_config_fields() {
    let mut lab = Lab::new();
    lab.export.bufcnt = 128;
    let f = lab.cfg(ccmd::READ, b"");
    let r = lab.reply(&f);
    match parse_response(&r).unwrap().body {
        Body::Config {
            bufcnt,
            firmware,
            sectors,
            ccmd,
            string,
        } => {
            assert_eq!(bufcnt, 128);
            assert_eq!(firmware, aoe::target::FIRMWARE_VERSION);
            assert_eq!(sectors, 2, "(1500 - 36) / 512");
            assert_eq!(ccmd, 0);
            assert!(string.is_empty());
        }
        b => panic!("{b:?}"),
    }
    assert_eq!(r[29] >> 4, 1, "version nibble");
}

#[test]
fn advertised_sectors_follow_mtu_and_stay_aligned() {
    let e = ExportState::new(1, 1, 100);
    let s = |mtu| Iface { mac: TARGET, mtu }.advertised_sectors(&e);
    assert_eq!(s(1500), 2);
    assert_eq!(s(9000), 16, "16, not 17: frames stay 4 KiB aligned");
    assert_eq!(s(4000), 7);
    assert_eq!(s(4132), 8);
    let mut small = e.clone();
    small.max_sectors = 7;
    assert_eq!(
        Iface {
            mac: TARGET,
            mtu: 9000
        }
        .advertised_sectors(&small),
        7
    );
}

#[test]
fn config_string_commands() {
    let mut lab = Lab::new();
    // set on empty → ok, string stored
    let r = lab.reply(&lab.cfg(ccmd::SET, b"hello"));
    assert_eq!(aoe_err(&r), None);
    assert_eq!(lab.export.config, b"hello");
    // set the same string again → success
    let r = lab.reply(&lab.cfg(ccmd::SET, b"hello"));
    assert_eq!(aoe_err(&r), None);
    // set a different one → E, error 4, string unchanged, reply carries the current string
    let r = lab.reply(&lab.cfg(ccmd::SET, b"world"));
    assert_eq!(aoe_err(&r), Some(error::CONFIG_PRESENT));
    assert_eq!(&r[32..37], b"hello");
    assert_eq!(u16::from_be_bytes([r[30], r[31]]), 5);
    assert_eq!(lab.export.config, b"hello");
    // test: exact match answers, mismatch is silent
    assert!(matches!(
        lab.run(&lab.cfg(ccmd::TEST, b"hello")).0,
        Decision::Reply(_)
    ));
    assert_eq!(lab.run(&lab.cfg(ccmd::TEST, b"hell")).0, Decision::Drop);
    // prefix: prefix answers, non-prefix silent
    let r = lab.reply(&lab.cfg(ccmd::PREFIX, b"hel"));
    assert_eq!(&r[32..37], b"hello");
    assert_eq!(lab.run(&lab.cfg(ccmd::PREFIX, b"help")).0, Decision::Drop);
    // force set replaces
    let r = lab.reply(&lab.cfg(ccmd::FORCE_SET, b"world"));
    assert_eq!(aoe_err(&r), None);
    assert_eq!(lab.export.config, b"world");
    // unknown ccmd → error 2
    let r = lab.reply(&lab.cfg(7, b""));
    assert_eq!(aoe_err(&r), Some(error::BAD_ARG));
    // 1024 bytes is the limit
    let big = vec![b'x'; 1024];
    let r = lab.reply(&lab.cfg(ccmd::FORCE_SET, &big));
    assert_eq!(aoe_err(&r), None);
    assert_eq!(r.len(), 32 + 1024);
    let mut f = lab.cfg(ccmd::FORCE_SET, &vec![b'y'; 1025]);
    assert_eq!(aoe_err(&lab.reply(&f)), Some(error::BAD_ARG));
    assert_eq!(lab.export.config, big, "a rejected set changes nothing");
    // cslen beyond the frame → error 2
    f = lab.cfg(ccmd::FORCE_SET, b"abc");
    f[30..32].copy_from_slice(&100u16.to_be_bytes());
    f.truncate(40);
    assert_eq!(aoe_err(&lab.reply(&f)), Some(error::BAD_ARG));
}

fn mask_req(lab: &Lab, src: Mac, mcmd: u8, dirs: &[(u8, Mac)]) -> Vec<u8> {
    let mut f = vec![0u8; 2000];
    let mut a = lab.addr(3);
    a.src = src;
    let n = initiator::mask_request(&mut f, &a, mcmd, dirs);
    f.truncate(n);
    f
}

#[test]
fn mac_mask_list() {
    let mut lab = Lab::new();
    let r = lab.reply(&mask_req(&lab, HOST, mask::READ, &[]));
    assert_eq!(r.len(), 60, "an empty mask read (28 bytes) is padded");
    // add HOST and OTHER, delete OTHER
    let dirs = [
        (mask::DCMD_ADD, HOST),
        (mask::DCMD_ADD, OTHER),
        (mask::DCMD_DEL, OTHER),
    ];
    let r = lab.reply(&mask_req(&lab, HOST, mask::EDIT, &dirs));
    match parse_response(&r).unwrap().body {
        Body::Mask {
            merror,
            dir_count,
            macs,
            ..
        } => {
            assert_eq!((merror, dir_count), (0, 1));
            assert_eq!(macs, vec![HOST]);
        }
        b => panic!("{b:?}"),
    }
    assert_eq!(lab.export.mask, vec![HOST]);
    // an unlisted MAC is silently ignored, for every command
    let mut f = lab.ata(AtaRequest::read(0, 1));
    f[6..12].copy_from_slice(&OTHER);
    assert_eq!(lab.run(&f).0, Decision::Drop);
    assert_eq!(
        lab.run(&mask_req(
            &lab,
            OTHER,
            mask::EDIT,
            &[(mask::DCMD_DEL, HOST)]
        ))
        .0,
        Decision::Drop
    );
    assert_eq!(lab.export.mask, vec![HOST]);
    // bad dcmd at index 1: the first directive stays applied, MError 2, DirCount 1
    let dirs = [(mask::DCMD_ADD, OTHER), (9, OTHER)];
    let r = lab.reply(&mask_req(&lab, HOST, mask::EDIT, &dirs));
    assert_eq!((r[26], r[27]), (mask::ERR_BAD_DCMD, 1));
    assert_eq!(lab.export.mask, vec![HOST, OTHER]);
    // list full
    let mut lab = Lab::new();
    let many: Vec<(u8, Mac)> = (0..=mask::MAX)
        .map(|i| (mask::DCMD_ADD, [4, 0, 0, 0, (i >> 8) as u8, i as u8]))
        .collect();
    let mut dirs = vec![(mask::DCMD_ADD, HOST)];
    dirs.extend_from_slice(&many[..mask::MAX]);
    let r = lab.reply(&mask_req(&lab, HOST, mask::EDIT, &dirs));
    assert_eq!((r[26], r[27] as usize), (mask::ERR_FULL, mask::MAX));
    assert_eq!(lab.export.mask.len(), mask::MAX);
    // directives missing from the frame → AoE error 2, nothing applied
    let mut lab = Lab::new();
    let mut f = mask_req(&lab, HOST, mask::EDIT, &[(mask::DCMD_ADD, OTHER)]);
    f[27] = 5;
    assert_eq!(aoe_err(&lab.reply(&f)), Some(error::BAD_ARG));
    assert!(lab.export.mask.is_empty());
    // unknown mcmd → error 2
    assert_eq!(
        aoe_err(&lab.reply(&mask_req(&lab, HOST, 7, &[]))),
        Some(error::BAD_ARG)
    );
}

fn res_req(lab: &Lab, src: Mac, rcmd: u8, macs: &[Mac]) -> Vec<u8> {
    let mut f = vec![0u8; 2000];
    let mut a = lab.addr(4);
    a.src = src;
    let n = initiator::reserve_request(&mut f, &a, rcmd, macs);
    f.truncate(n);
    f
}

#[test]
fn reserve_release() {
    let mut lab = Lab::new();
    let r = lab.reply(&res_req(&lab, HOST, reserve::READ, &[]));
    assert_eq!(r.len(), 60, "an empty reserve read (26 bytes) is padded");
    // OTHER reserves for itself
    let r = lab.reply(&res_req(&lab, OTHER, reserve::SET, &[OTHER]));
    assert_eq!(aoe_err(&r), None);
    assert_eq!(lab.export.reserve, vec![OTHER]);
    // HOST cannot set, gets error 6; can force
    let r = lab.reply(&res_req(&lab, HOST, reserve::SET, &[HOST]));
    assert_eq!(aoe_err(&r), Some(error::RESERVED));
    assert_eq!(lab.export.reserve, vec![OTHER]);
    // HOST's reads and writes get error 6, IDENTIFY is exempt
    let r = lab.reply(&lab.ata(AtaRequest::read(0, 1)));
    assert_eq!(aoe_err(&r), Some(error::RESERVED));
    let data = [0u8; 512];
    let r = lab.reply(&lab.ata(AtaRequest::write(0, &data)));
    assert_eq!(aoe_err(&r), Some(error::RESERVED));
    let r = lab.reply(&lab.ata(AtaRequest::identify()));
    assert_eq!(ata_regs(&r).0, ata::STATUS_OK);
    // OTHER still reads
    let mut f = lab.ata(AtaRequest::read(0, 1));
    f[6..12].copy_from_slice(&OTHER);
    assert!(matches!(lab.run(&f).0, Decision::Read { .. }));
    // force set by HOST, then release by HOST (set to the empty list)
    let r = lab.reply(&res_req(&lab, HOST, reserve::FORCE_SET, &[HOST]));
    assert_eq!(aoe_err(&r), None);
    let r = lab.reply(&res_req(&lab, HOST, reserve::SET, &[]));
    assert_eq!(aoe_err(&r), None);
    assert!(lab.export.reserve.is_empty());
    // nmacs beyond the frame, and unknown rcmd → error 2
    let mut f = res_req(&lab, HOST, reserve::SET, &[HOST]);
    f[25] = 9;
    f.truncate(32);
    assert_eq!(aoe_err(&lab.reply(&f)), Some(error::BAD_ARG));
    assert_eq!(
        aoe_err(&lab.reply(&res_req(&lab, HOST, 9, &[]))),
        Some(error::BAD_ARG)
    );
}

#[test]
fn unknown_commands_and_versions() {
    let mut lab = Lab::new();
    for c in [7u8, 0xf0, 0xff] {
        let mut f = lab.cfg(ccmd::READ, b"");
        f[19] = c;
        f.truncate(24);
        let r = lab.reply(&f);
        assert_eq!(aoe_err(&r), Some(error::BAD_CMD), "command {c:#x}");
        assert_eq!(r[19], c, "command echoed");
        assert_eq!(r.len(), 60);
    }
    let mut f = lab.cfg(ccmd::READ, b"");
    f[14] = 0x20;
    let r = lab.reply(&f);
    assert_eq!(aoe_err(&r), Some(error::BAD_VERSION));
    assert_eq!(r[14] >> 4, 1, "we always speak version 1");
}

#[test]
fn identify_page() {
    let mut lab = Lab::new();
    lab.export.sectors = 0x1_2345_6789;
    lab.export.serial = "1.2:host".into();
    let mut f = lab.ata(AtaRequest::identify());
    // aoeping sends 1024 bytes of payload with IDENTIFY: ignored
    f.resize(1060, 0);
    let r = lab.reply(&f);
    assert_eq!(r.len(), 36 + 512);
    let (status, err, sectors, _) = ata_regs(&r);
    assert_eq!((status, err, sectors), (0x40, 0, 0));
    let page = &r[36..548];
    assert_eq!(ata::identify_capacity(page), 0x1_2345_6789);
    let w = |i| ata::get_word(page, i);
    assert_ne!(w(83) & (1 << 10), 0, "LBA48 supported");
    assert_ne!(w(86) & (1 << 10), 0, "LBA48 enabled");
    assert_ne!(w(83) & (1 << 14), 0);
    assert_eq!(w(83) & (1 << 15), 0);
    assert_eq!(
        u32::from(w(60)) | (u32::from(w(61)) << 16),
        0x0fff_ffff,
        "LBA28 capacity saturates"
    );
    assert_ne!(w(82) & 1, 0, "SMART supported, so aoeping -S works");
    assert_eq!(ata::get_string(page, 10, 10), "1.2:host");
    assert_eq!(ata::get_string(page, 27, 20), "xblade AoE target");
    assert!(ata::get_string(page, 23, 4).starts_with('X'));
    assert_eq!(
        page.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
        0,
        "word 255 checksum"
    );
    // small disks: LBA28 words hold the real size
    lab.export.sectors = 1000;
    let r = lab.reply(&lab.ata(AtaRequest::identify()));
    assert_eq!(u32::from(ata::get_word(&r[36..], 60)), 1000);
    // IDENTIFY to the broadcast address and wildcards is answered too (WinAoE discovery)
    let mut f = lab.ata(AtaRequest::identify());
    f[0..6].copy_from_slice(&BROADCAST);
    f[16..19].copy_from_slice(&[0xff, 0xff, 0xff]);
    assert_eq!(lab.reply(&f).len(), 548);
}

#[test]
fn read_write_bounds_and_lba28_masking() {
    let mut lab = Lab::new();
    assert_eq!(
        lab.run(&lab.ata(AtaRequest::read(998, 2))).0,
        Decision::Read {
            lba: 998,
            sectors: 2
        }
    );
    // past the end: IDNF, 36 bytes padded to 60
    let r = lab.reply(&lab.ata(AtaRequest::read(999, 2)));
    assert_eq!(ata_regs(&r), (0x41, ata::ERR_IDNF, 2, 24));
    assert_eq!(r.len(), 60);
    // lba + count overflowing 48 bits
    let r = lab.reply(&lab.ata(AtaRequest::read(0xffff_ffff_ffff, 2)));
    assert_eq!(ata_regs(&r).1, ata::ERR_IDNF);
    // LBA28: lba3's high nibble (0xE0 device bits) is masked off
    let mut r28 = AtaRequest::read(5, 1);
    r28.cmd = ata::READ;
    let f = lab.ata(r28);
    assert_eq!(f[31], 0xe0);
    assert_eq!(lab.run(&f).0, Decision::Read { lba: 5, sectors: 1 });
    // LBA48 bytes 4-5 matter for EXT commands
    let mut f = lab.ata(AtaRequest::read(5, 1));
    f[32] = 1;
    assert_eq!(ata_regs(&lab.reply(&f)).1, ata::ERR_IDNF);
    // more sectors than advertised: ATA ABRT (not AoE error 2: Linux would retry for 180 s)
    let r = lab.reply(&lab.ata(AtaRequest::read(0, 3)));
    assert_eq!((ata_regs(&r).0, ata_regs(&r).1), (0x41, ata::ERR_ABRT));
    assert_eq!(aoe_err(&r), None);
    // zero sectors: ABRT
    assert_eq!(
        ata_regs(&lab.reply(&lab.ata(AtaRequest::read(0, 0)))).1,
        ata::ERR_ABRT
    );
    // write: decision carries the payload range
    let data = [0x5a; 1024];
    assert_eq!(
        lab.run(&lab.ata(AtaRequest::write(10, &data))).0,
        Decision::Write {
            lba: 10,
            sectors: 2,
            payload: 36..1060
        }
    );
    // short payload: ABRT
    let mut f = lab.ata(AtaRequest::write(10, &data));
    f.truncate(36 + 1000);
    assert_eq!(ata_regs(&lab.reply(&f)), (0x41, ata::ERR_ABRT, 2, 24));
    // write past the end: IDNF
    assert_eq!(
        ata_regs(&lab.reply(&lab.ata(AtaRequest::write(999, &data)))).1,
        ata::ERR_IDNF
    );
    // read-only: ABRT
    lab.export.read_only = true;
    let r = lab.reply(&lab.ata(AtaRequest::write(10, &data)));
    assert_eq!(ata_regs(&r).0, 0x41);
    assert_eq!(ata_regs(&r).1, ata::ERR_ABRT);
    assert!(matches!(
        lab.run(&lab.ata(AtaRequest::read(10, 2))).0,
        Decision::Read { .. }
    ));
}

#[test]
fn other_ata_commands() {
    let mut lab = Lab::new();
    let req = |c, feature, lba| AtaRequest {
        cmd: c,
        feature,
        sectors: 0,
        lba,
        data: None,
    };
    assert_eq!(lab.run(&lab.ata(req(ata::FLUSH, 0, 0))).0, Decision::Flush);
    assert_eq!(
        lab.run(&lab.ata(req(ata::FLUSH_EXT, 0, 0))).0,
        Decision::Flush
    );
    let r = lab.reply(&lab.ata(req(ata::CHECK_POWER, 0, 0)));
    assert_eq!(
        (ata_regs(&r).0, ata_regs(&r).2),
        (0x40, 0xff),
        "active/idle"
    );
    let sig = 0xc2_4f00;
    let r = lab.reply(&lab.ata(req(ata::SMART, ata::smart::RETURN_STATUS, sig)));
    assert_eq!(r.len(), 548, "aoeping -S needs 548 bytes");
    assert_eq!(ata_regs(&r).0, 0x40);
    assert_eq!((r[29], r[30]), (0x4f, 0xc2), "healthy signature");
    let r = lab.reply(&lab.ata(req(ata::SMART, 0xd0, sig)));
    assert_eq!(
        (ata_regs(&r).0, ata_regs(&r).1, r.len()),
        (0x41, ata::ERR_ABRT, 548)
    );
    for c in [0xef, 0x00, 0xc8, 0xff] {
        let r = lab.reply(&lab.ata(req(c, 0, 0)));
        assert_eq!(
            (ata_regs(&r).0, ata_regs(&r).1),
            (0x41, ata::ERR_ABRT),
            "opcode {c:#x}"
        );
        assert_eq!(aoe_err(&r), None);
    }
    // a truncated ATA frame gets AoE error 2
    let f = lab.ata(AtaRequest::read(0, 1));
    assert_eq!(aoe_err(&lab.reply(&f[..30])), Some(error::BAD_ARG));
}

#[test]
fn completions() {
    let lab = Lab::new();
    let mut buf = vec![0u8; 2000];
    let req = lab.ata(AtaRequest::read(10, 2));
    buf[..req.len()].copy_from_slice(&req);
    let d = Decision::Read {
        lba: 10,
        sectors: 2,
    };
    buf[36..1060].fill(0x77); // as io_uring would have left it
    let n = aoe::complete(&lab.export, &lab.iface, &mut buf, &d, IoOutcome::Ok);
    assert_eq!(n, 1060);
    let p = parse_response(&buf[..n]).unwrap();
    assert_eq!((p.src, p.tag), (TARGET, 7));
    assert_eq!(ata_regs(&buf[..n]), (0x40, 0, 0, 1024));
    assert!(buf[36..1060].iter().all(|b| *b == 0x77), "data untouched");
    // EIO → UNC, other errors → ABRT; failed reads carry no data
    buf[..req.len()].copy_from_slice(&req);
    let n = aoe::complete(&lab.export, &lab.iface, &mut buf, &d, IoOutcome::Err(5));
    assert_eq!((n, ata_regs(&buf[..n])), (60, (0x41, ata::ERR_UNC, 2, 24)));
    buf[..req.len()].copy_from_slice(&req);
    let n = aoe::complete(&lab.export, &lab.iface, &mut buf, &d, IoOutcome::Err(22));
    assert_eq!(ata_regs(&buf[..n]).1, ata::ERR_ABRT);
    // write completion: 60 bytes, zero padding over the old payload
    let data = [0x33u8; 1024];
    let w = lab.ata(AtaRequest::write(10, &data));
    buf[..w.len()].copy_from_slice(&w);
    let d = Decision::Write {
        lba: 10,
        sectors: 2,
        payload: 36..1060,
    };
    let n = aoe::complete(&lab.export, &lab.iface, &mut buf, &d, IoOutcome::Ok);
    assert_eq!(n, 60);
    assert!(buf[36..60].iter().all(|b| *b == 0));
    assert_eq!(ata_regs(&buf[..n]), (0x40, 0, 0, 24));
}

#[test]
fn advertisement_is_a_broadcast_config_response_with_tag_zero() {
    let lab = Lab::new();
    let mut buf = vec![0u8; 2000];
    let n = advertisement(&lab.export, &lab.iface, BROADCAST, &mut buf);
    assert_eq!(n, 60);
    assert_eq!(&buf[0..6], &BROADCAST);
    let p = parse_response(&buf[..n]).unwrap();
    assert_eq!((p.src, p.shelf, p.slot, p.tag), (TARGET, 1, 2, 0));
    assert!(matches!(
        p.body,
        Body::Config {
            bufcnt: 64,
            sectors: 2,
            ..
        }
    ));
}

#[test]
fn state_changes_are_reported_only_when_state_changes() {
    let lab = Lab::new();
    let mut buf = vec![0u8; 2000];
    let out = respond(&lab.export, &lab.iface, &lab.cfg(ccmd::SET, b"x"), &mut buf);
    assert_eq!(out.change, Some(StateChange::Config(b"x".to_vec())));
    let out = respond(&lab.export, &lab.iface, &lab.cfg(ccmd::READ, b""), &mut buf);
    assert_eq!(out.change, None);
    let _ = decide(&lab.export, &lab.iface, &mut buf, 0);
    assert_eq!(cmd::ATA, 0);
}

// ---------------------------------------------------------------------------------------------
// The operator's ACL, frame hygiene, and changes that change nothing

const THIRD: Mac = [0x02, 0, 0, 0, 0, 0x04];

/// A read from `src` (it must be dropped silently, or served).
fn read_from(lab: &Lab, src: Mac) -> Vec<u8> {
    let mut f = lab.ata(AtaRequest::read(0, 1));
    f[6..12].copy_from_slice(&src);
    f
}

fn mask_body(resp: &[u8]) -> (u8, u8, Vec<Mac>) {
    match parse_response(resp).unwrap().body {
        Body::Mask {
            merror,
            dir_count,
            macs,
            ..
        } => (merror, dir_count, macs),
        b => panic!("not a mask response: {b:?}"),
    }
}

#[test]
fn the_acl_starts_the_mask_list_and_is_enforced_whatever_it_says() {
    let mut lab = Lab::new();
    lab.export.set_acl(&[HOST, THIRD, HOST]).unwrap();
    assert_eq!(lab.export.acl(), &[HOST, THIRD], "duplicates dropped");
    assert_eq!(
        lab.export.mask,
        vec![HOST, THIRD],
        "the mask list starts as the ACL"
    );
    assert!(matches!(
        lab.run(&read_from(&lab, HOST)).0,
        Decision::Read { .. }
    ));
    assert_eq!(lab.run(&read_from(&lab, OTHER)).0, Decision::Drop);

    // HOST empties the mask list: still only the ACL is served.
    let dirs = [(mask::DCMD_DEL, HOST), (mask::DCMD_DEL, THIRD)];
    let (merror, n, macs) = mask_body(&lab.reply(&mask_req(&lab, HOST, mask::EDIT, &dirs)));
    assert_eq!((merror, n, macs), (0, 0, vec![]));
    assert!(lab.export.mask.is_empty());
    assert_eq!(
        lab.export.acl(),
        &[HOST, THIRD],
        "the ACL never changes from the wire"
    );
    assert!(matches!(
        lab.run(&read_from(&lab, HOST)).0,
        Decision::Read { .. }
    ));
    assert!(matches!(
        lab.run(&read_from(&lab, THIRD)).0,
        Decision::Read { .. }
    ));
    assert_eq!(lab.run(&read_from(&lab, OTHER)).0, Decision::Drop);
    for cmd_from_other in [
        mask_req(&lab, OTHER, mask::READ, &[]),
        mask_req(&lab, OTHER, mask::EDIT, &[(mask::DCMD_ADD, OTHER)]),
    ] {
        assert_eq!(lab.run(&cmd_from_other).0, Decision::Drop);
    }

    // Adding a MAC outside the ACL fails with MError 1 at that directive; the directives
    // before it stay applied, the ones after it are not run.
    let dirs = [
        (mask::DCMD_ADD, THIRD),
        (mask::DCMD_ADD, OTHER),
        (mask::DCMD_ADD, HOST),
    ];
    let (merror, n, macs) = mask_body(&lab.reply(&mask_req(&lab, HOST, mask::EDIT, &dirs)));
    assert_eq!((merror, n, macs), (mask::ERR_UNSPEC, 1, vec![]));
    assert_eq!(lab.export.mask, vec![THIRD]);
    // The narrowed list is in force within the ACL: HOST is now outside the mask list.
    assert_eq!(lab.run(&read_from(&lab, HOST)).0, Decision::Drop);
    assert!(matches!(
        lab.run(&read_from(&lab, THIRD)).0,
        Decision::Read { .. }
    ));
    // An ACL member may be added back.
    let r = lab.reply(&mask_req(
        &lab,
        THIRD,
        mask::EDIT,
        &[(mask::DCMD_ADD, HOST)],
    ));
    assert_eq!(mask_body(&r), (0, 2, vec![THIRD, HOST]));
}

#[test]
fn without_an_acl_an_empty_mask_list_serves_everyone() {
    let mut lab = Lab::new();
    assert!(lab.export.acl().is_empty());
    lab.export.set_acl(&[]).unwrap();
    assert!(matches!(
        lab.run(&read_from(&lab, OTHER)).0,
        Decision::Read { .. }
    ));
    let r = lab.reply(&mask_req(
        &lab,
        OTHER,
        mask::EDIT,
        &[(mask::DCMD_ADD, HOST)],
    ));
    assert_eq!(mask_body(&r), (0, 1, vec![HOST]));
    assert_eq!(lab.run(&read_from(&lab, OTHER)).0, Decision::Drop);
    let r = lab.reply(&mask_req(&lab, HOST, mask::EDIT, &[(mask::DCMD_DEL, HOST)]));
    assert_eq!(mask_body(&r), (0, 0, vec![]));
    assert!(matches!(
        lab.run(&read_from(&lab, OTHER)).0,
        Decision::Read { .. }
    ));
}

#[test]
fn an_acl_holds_at_most_a_mask_list() {
    let mut e = ExportState::new(1, 2, 1000);
    let many: Vec<Mac> = (0..=mask::MAX)
        .map(|i| [2, 0, 0, 0, (i >> 8) as u8, i as u8])
        .collect();
    let err = e.set_acl(&many).unwrap_err();
    assert_eq!(err.macs, mask::MAX + 1);
    assert!(err.to_string().contains("at most 128"), "{err}");
    assert!(
        e.acl().is_empty() && e.mask.is_empty(),
        "a refused list changes nothing"
    );
    let mut with_dups = many[..mask::MAX].to_vec();
    with_dups.extend_from_slice(&many[..10]);
    e.set_acl(&with_dups).unwrap();
    assert_eq!(e.acl().len(), mask::MAX);
}

#[test]
fn no_reply_to_group_or_zero_sources_or_to_other_destinations() {
    let mut lab = Lab::new();
    let query = lab.cfg(ccmd::READ, b"");
    let with = |src: Mac, dst: Mac| {
        let mut f = query.clone();
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f
    };
    let multicast: Mac = [0x01, 0x00, 0x5e, 0, 0, 1];
    let ipv6_multicast: Mac = [0x33, 0x33, 0, 0, 0, 1];
    for (what, src, dst) in [
        ("multicast source", multicast, TARGET),
        ("IPv6 multicast source", ipv6_multicast, TARGET),
        ("broadcast source", BROADCAST, BROADCAST),
        ("all-zero source", [0; 6], TARGET),
        ("another station's unicast destination", HOST, OTHER),
        ("multicast destination", HOST, multicast),
    ] {
        assert_eq!(lab.run(&with(src, dst)).0, Decision::Drop, "{what}");
    }
    lab.reply(&with(HOST, TARGET));
    lab.reply(&with(HOST, BROADCAST));
    // An interface without a MAC (all-zero) cannot tell: any destination.
    lab.iface.mac = [0; 6];
    lab.reply(&with(HOST, OTHER));
    assert_eq!(lab.run(&with(BROADCAST, OTHER)).0, Decision::Drop);
}

#[test]
fn changes_that_change_nothing_are_not_changes() {
    let mut lab = Lab::new();
    lab.export.set_acl(&[HOST, OTHER]).unwrap();
    lab.export.config = b"owner=host1".to_vec();
    lab.export.reserve = vec![HOST];
    let before = lab.export.clone();
    let mut buf = vec![0u8; 2000];
    for req in [
        lab.cfg(ccmd::SET, b"owner=host1"),
        lab.cfg(ccmd::FORCE_SET, b"owner=host1"),
        mask_req(&lab, HOST, mask::EDIT, &[(mask::DCMD_ADD, OTHER)]),
        mask_req(&lab, HOST, mask::EDIT, &[(mask::DCMD_DEL, THIRD)]),
        mask_req(&lab, HOST, mask::EDIT, &[]),
        res_req(&lab, HOST, reserve::SET, &[HOST]),
        res_req(&lab, OTHER, reserve::FORCE_SET, &[HOST]),
    ] {
        let out = respond(&lab.export, &lab.iface, &req, &mut buf);
        assert!(matches!(out.decision, Decision::Reply(_)), "{req:?}");
        assert_eq!(out.change, None, "{req:?}");
    }
    assert_eq!(lab.export, before);
    // The same commands with a difference are changes, with the new value.
    let out = respond(
        &lab.export,
        &lab.iface,
        &lab.cfg(ccmd::FORCE_SET, b"owner=host2"),
        &mut buf,
    );
    assert_eq!(
        out.change,
        Some(StateChange::Config(b"owner=host2".to_vec()))
    );
    let out = respond(
        &lab.export,
        &lab.iface,
        &res_req(&lab, OTHER, reserve::FORCE_SET, &[OTHER, HOST]),
        &mut buf,
    );
    assert_eq!(out.change, Some(StateChange::Reserve(vec![OTHER, HOST])));
    let r = buf[..60].to_vec();
    match parse_response(&r).unwrap().body {
        Body::Reserve { macs, .. } => assert_eq!(macs, vec![OTHER, HOST]),
        b => panic!("{b:?}"),
    }
    let out = respond(
        &lab.export,
        &lab.iface,
        &mask_req(&lab, HOST, mask::EDIT, &[(mask::DCMD_DEL, OTHER)]),
        &mut buf,
    );
    assert_eq!(out.change, Some(StateChange::Mask(vec![HOST])));
}

#[test]
fn clone_from_copies_every_field() {
    let mut a = ExportState::new(3, 4, 77);
    a.set_acl(&[HOST]).unwrap();
    a.config = b"cfg".to_vec();
    a.reserve = vec![OTHER];
    a.serial = "s".into();
    a.read_only = true;
    let mut b = ExportState::new(1, 2, 1000);
    b.mask = vec![THIRD; 5];
    b.clone_from(&a);
    assert_eq!(b, a);
    assert_eq!(b.clone(), a);
}
