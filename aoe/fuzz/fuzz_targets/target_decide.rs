//! Fuzz the target state machine and the response parser.
//!
//! The first bytes choose the export state and MTU; the rest is the frame. Invariants: no panic,
//! replies are 60..=MTU+14 bytes and parse, storage decisions stay inside the export, and
//! completions of any outcome stay within bounds.
#![no_main]

use aoe::initiator::parse_response;
use aoe::target::{complete, decide, Decision, ExportState, Iface, IoOutcome};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (knobs, frame) = data.split_at(6);
    let mut export = ExportState::new(u16::from(knobs[0] & 3), knobs[1] & 3, u64::from(knobs[2]) * 97);
    export.read_only = knobs[3] & 1 != 0;
    export.max_sectors = knobs[3] | 1;
    if knobs[4] & 1 != 0 {
        export.mask = vec![[2, 0, 0, 0, 0, 2]];
    }
    if knobs[4] & 2 != 0 {
        export.reserve = vec![[2, 0, 0, 0, 0, 2]];
    }
    if knobs[4] & 4 != 0 {
        export.config = b"fuzz".to_vec();
    }
    if knobs[4] & 16 != 0 {
        export.set_acl(&[[2, 0, 0, 0, 0, 2]]).expect("one MAC");
    }
    let mtu = 1042 + u16::from(knobs[5]) * 31;
    let iface = Iface { mac: [2, 0, 0, 0, 0, 1], mtu };
    let mut buf = vec![0u8; iface.max_frame().max(frame.len()).max(60)];
    buf[..frame.len()].copy_from_slice(frame);
    // Most inputs get a well-formed request header so the fuzzer spends its time past the
    // address filter: EtherType, version 1, R=0, our MAC (or broadcast) as the destination, a
    // source MAC that the mask may list, and the export's own address (or a wildcard), with
    // the command from the frame.
    if knobs[1] & 0x80 == 0 && frame.len() >= 24 {
        let dst = if knobs[4] & 8 == 0 { iface.mac } else { [0xff; 6] };
        buf[0..6].copy_from_slice(&dst);
        buf[6..12].copy_from_slice(&[2, 0, 0, 0, 0, if knobs[1] & 0x40 == 0 { 2 } else { 3 }]);
        buf[12..14].copy_from_slice(&0x88a2u16.to_be_bytes());
        buf[14] = 0x10;
        let wild = knobs[1] & 0x20 != 0;
        buf[16..18].copy_from_slice(&(if wild { 0xffff } else { export.shelf }).to_be_bytes());
        buf[18] = if wild { 0xff } else { export.slot };
        buf[19] &= 0x03;
    }
    let out = decide(&export, &iface, &mut buf, frame.len());
    match &out.decision {
        Decision::Reply(n) => {
            assert!(*n >= 60 && *n <= iface.max_frame());
            parse_response(&buf[..*n]).expect("our replies parse");
        }
        Decision::Read { lba, sectors } | Decision::Write { lba, sectors, .. } => {
            assert!(lba + u64::from(*sectors) <= export.sectors);
            for r in [IoOutcome::Ok, IoOutcome::Err(5)] {
                let mut b = buf.clone();
                let n = complete(&export, &iface, &mut b, &out.decision, r);
                assert!(n >= 60 && n <= iface.max_frame());
            }
        }
        Decision::Flush | Decision::Drop => {}
    }
    let _ = parse_response(frame);
});
