//! Property tests: no input panics, reads out of bounds or yields an oversized response;
//! storage decisions stay inside the export; builders and parsers round-trip.

use aoe::initiator::{self, parse_response, AtaRequest, Body};
use aoe::target::{complete, decide, Decision, ExportState, Iface, IoOutcome};
use aoe::wire::{ccmd, Mac, ATA_HLEN, SECTOR};
use proptest::prelude::*;

const TARGET: Mac = [0x02, 0, 0, 0, 0, 0x01];
const HOST: Mac = [0x02, 0, 0, 0, 0, 0x02];
const OTHER: Mac = [0x02, 0, 0, 0, 0, 0x03];

fn export_strategy() -> impl Strategy<Value = ExportState> {
    (
        0u16..4,
        0u8..4,
        prop_oneof![Just(0u64), 1u64..5000, Just(u64::MAX >> 16)],
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..8),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        1u8..=255,
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(shelf, slot, sectors, ro, config, masked, reserved, max, acl)| {
                let mut e = ExportState::new(shelf, slot, sectors);
                e.read_only = ro;
                e.config = config;
                e.max_sectors = max;
                if acl {
                    e.set_acl(&[HOST]).unwrap();
                }
                if masked {
                    e.mask = vec![HOST];
                }
                if reserved {
                    e.reserve = vec![[9; 6]];
                }
                e
            },
        )
}

fn mtu_strategy() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(1500u16),
        Just(9000),
        Just(aoe::wire::MIN_MTU),
        1042u16..9200
    ]
}

/// Frames that reach deep into the state machine: a valid AoE header with random rest.
fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    let source = prop_oneof![
        8 => Just(HOST),
        1 => Just(OTHER),
        1 => Just([0x01, 0, 0x5e, 0, 0, 1]),
        1 => Just([0xff; 6]),
        1 => Just([0; 6]),
    ];
    let header = (0u16..4, 0u8..4, 0u8..5, any::<bool>(), source).prop_map(
        |(shelf, slot, cmd, bcast, src)| {
            let mut h = vec![0u8; 24];
            h[0..6].copy_from_slice(if bcast { &[0xff; 6] } else { &TARGET });
            h[6..12].copy_from_slice(&src);
            h[12..14].copy_from_slice(&0x88a2u16.to_be_bytes());
            h[14] = 0x10;
            h[16..18].copy_from_slice(&shelf.to_be_bytes());
            h[18] = slot;
            h[19] = cmd;
            h
        },
    );
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (header, prop::collection::vec(any::<u8>(), 0..2100)).prop_map(|(mut h, rest)| {
            h.extend(rest);
            h
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn any_frame_gets_a_bounded_answer(export in export_strategy(), mtu in mtu_strategy(), frame in frame_strategy()) {
        let iface = Iface { mac: TARGET, mtu };
        let mut buf = vec![0u8; iface.max_frame().max(frame.len()).max(60) + 600];
        buf[..frame.len()].copy_from_slice(&frame);
        let out = decide(&export, &iface, &mut buf, frame.len());
        let limit = iface.max_frame();
        match &out.decision {
            Decision::Reply(n) => {
                prop_assert!(*n >= 60 && *n <= limit, "reply of {} bytes, limit {}", n, limit);
                let p = parse_response(&buf[..*n]);
                prop_assert!(p.is_ok(), "unparseable reply {:?}", p);
                let p = p.unwrap();
                prop_assert_eq!((p.shelf, p.slot, p.src), (export.shelf, export.slot, TARGET));
                // Never a reflector: replies go back to one station, the one that asked.
                prop_assert!(buf[0] & 1 == 0 && buf[0..6] != [0; 6], "reply to {:?}", &buf[0..6]);
                prop_assert_eq!(&buf[0..6], &frame[6..12]);
            }
            Decision::Read { lba, sectors } | Decision::Write { lba, sectors, .. } => {
                prop_assert!(*sectors >= 1 && *sectors <= iface.advertised_sectors(&export));
                prop_assert!(lba + u64::from(*sectors) <= export.sectors);
                prop_assert!(ATA_HLEN + usize::from(*sectors) * SECTOR <= limit);
                if let Decision::Write { payload, .. } = &out.decision {
                    prop_assert!(!export.read_only);
                    prop_assert!(payload.end <= frame.len());
                    prop_assert_eq!(payload.len(), usize::from(*sectors) * SECTOR);
                }
                for r in [IoOutcome::Ok, IoOutcome::Err(5), IoOutcome::Err(22)] {
                    let mut b = buf.clone();
                    let n = complete(&export, &iface, &mut b, &out.decision, r);
                    prop_assert!(n >= 60 && n <= limit);
                }
            }
            Decision::Flush | Decision::Drop => {}
        }
        if (!export.mask.is_empty() || !export.acl().is_empty())
            && frame.get(6..12) != Some(&HOST[..])
        {
            prop_assert_eq!(out.decision.clone(), Decision::Drop);
        }
        if let Some(aoe::StateChange::Mask(m)) = &out.change {
            prop_assert!(export.acl().is_empty() || m.iter().all(|x| export.acl().contains(x)));
        }
        if let Some(aoe::StateChange::Config(c)) = &out.change {
            prop_assert!(c.len() <= 1024);
        }
    }

    #[test]
    fn read_and_write_round_trip(lba in 0u64..998, sectors in 1u8..=2, tag in any::<u32>(), fill in any::<u8>()) {
        let export = ExportState::new(1, 2, 1000);
        let iface = Iface { mac: TARGET, mtu: 1500 };
        let a = initiator::Addr { src: HOST, dst: TARGET, shelf: 1, slot: 2, tag };
        let data = vec![fill; usize::from(sectors) * SECTOR];
        let mut buf = vec![0u8; 1600];
        let n = initiator::ata_request(&mut buf, &a, &AtaRequest::write(lba, &data));
        let out = decide(&export, &iface, &mut buf, n);
        prop_assert_eq!(out.decision.clone(), Decision::Write { lba, sectors, payload: 36..36 + data.len() });
        prop_assert_eq!(&buf[36..36 + data.len()], &data[..]);
        let n = complete(&export, &iface, &mut buf, &out.decision, IoOutcome::Ok);
        let p = parse_response(&buf[..n]).unwrap();
        prop_assert_eq!(p.tag, tag);
        let ok = matches!(p.body, Body::Ata { status: 0x40, err: 0, .. });
        prop_assert!(ok);

        let n = initiator::ata_request(&mut buf, &a, &AtaRequest::read(lba, sectors));
        let out = decide(&export, &iface, &mut buf, n);
        prop_assert_eq!(out.decision.clone(), Decision::Read { lba, sectors });
        buf[36..36 + data.len()].copy_from_slice(&data);
        let n = complete(&export, &iface, &mut buf, &out.decision, IoOutcome::Ok);
        match parse_response(&buf[..n]).unwrap().body {
            Body::Ata { status, data: d, .. } => {
                prop_assert_eq!(status, 0x40);
                prop_assert_eq!(d, &data[..]);
            }
            b => prop_assert!(false, "{:?}", b),
        }
    }

    #[test]
    fn config_round_trip(s in prop::collection::vec(any::<u8>(), 0..=1024), tag in any::<u32>()) {
        let mut export = ExportState::new(1, 2, 1000);
        let iface = Iface { mac: TARGET, mtu: 1500 };
        let a = initiator::Addr { src: HOST, dst: [0xff; 6], shelf: 0xffff, slot: 0xff, tag };
        let mut buf = vec![0u8; 1600];
        let n = initiator::config_request(&mut buf, &a, ccmd::FORCE_SET, &s);
        let out = decide(&export, &iface, &mut buf, n);
        let Decision::Reply(n) = out.decision else { panic!() };
        match parse_response(&buf[..n]).unwrap().body {
            Body::Config { string, ccmd: c, .. } => {
                prop_assert_eq!(string, &s[..]);
                prop_assert_eq!(c, ccmd::FORCE_SET);
            }
            b => prop_assert!(false, "{:?}", b),
        }
        if let Some(c) = out.change {
            export.apply(c);
        }
        prop_assert_eq!(export.config, s);
    }

    #[test]
    fn header_round_trip(dst in any::<[u8; 6]>(), src in any::<[u8; 6]>(), shelf in any::<u16>(), slot in any::<u8>(), command in any::<u8>(), tag in any::<u32>(), flags in 0u8..16, error in any::<u8>()) {
        let f = aoe::wire::HeaderFields { dst, src, flags, error, shelf, slot, command, tag };
        let mut b = [0u8; 24];
        f.write(&mut b);
        let h = aoe::wire::Header::new(&b[..]).unwrap();
        prop_assert_eq!((h.dst(), h.src(), h.flags(), h.error(), h.shelf(), h.slot(), h.command(), h.tag(), h.version()),
            (dst, src, flags, error, shelf, slot, command, tag, 1));
    }
}
