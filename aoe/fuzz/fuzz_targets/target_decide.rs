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
    let mtu = 1042 + u16::from(knobs[5]) * 31;
    let iface = Iface { mac: [2, 0, 0, 0, 0, 1], mtu };
    let mut buf = vec![0u8; iface.max_frame().max(frame.len()).max(60)];
    buf[..frame.len()].copy_from_slice(frame);
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
