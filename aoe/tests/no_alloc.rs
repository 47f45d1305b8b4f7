//! The config/mask/reserve path allocates nothing per frame unless the export's state really
//! changes, and then one bounded buffer: counted with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use aoe::initiator::{self, AtaRequest};
use aoe::target::{decide, ExportState, Iface};
use aoe::wire::{ccmd, mask, reserve, Mac};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// const-initialised thread local, which needs no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TARGET: Mac = [0x02, 0, 0, 0, 0, 0x01];
const HOST: Mac = [0x02, 0, 0, 0, 0, 0x02];
const OTHER: Mac = [0x02, 0, 0, 0, 0, 0x03];

fn addr() -> initiator::Addr {
    initiator::Addr {
        src: HOST,
        dst: TARGET,
        shelf: 1,
        slot: 2,
        tag: 5,
    }
}

/// Allocations made by `decide` on a copy of `req` (the copy is made before counting).
fn allocations(export: &ExportState, req: &[u8]) -> (usize, bool) {
    let iface = Iface {
        mac: TARGET,
        mtu: 1500,
    };
    let mut buf = vec![0u8; 2000];
    buf[..req.len()].copy_from_slice(req);
    let before = ALLOCS.with(Cell::get);
    let out = decide(export, &iface, &mut buf, req.len());
    let changed = out.change.is_some();
    let n = ALLOCS.with(Cell::get) - before;
    (n, changed)
}

#[test]
fn only_real_changes_allocate() {
    let mut export = ExportState::new(1, 2, 1000);
    export.set_acl(&[HOST, OTHER]).unwrap();
    export.config = b"owner=host1".to_vec();
    export.reserve = vec![HOST];
    let mut f = vec![0u8; 2000];
    let mut req = |build: &dyn Fn(&mut [u8]) -> usize| {
        let n = build(&mut f);
        f[..n].to_vec()
    };
    let same = [
        req(&|b| initiator::config_request(b, &addr(), ccmd::READ, b"")),
        req(&|b| initiator::config_request(b, &addr(), ccmd::SET, b"owner=host1")),
        req(&|b| initiator::config_request(b, &addr(), ccmd::FORCE_SET, b"owner=host1")),
        req(&|b| initiator::config_request(b, &addr(), ccmd::TEST, b"owner=host2")),
        req(&|b| initiator::mask_request(b, &addr(), mask::READ, &[])),
        req(&|b| initiator::mask_request(b, &addr(), mask::EDIT, &[(mask::DCMD_ADD, OTHER)])),
        req(&|b| initiator::mask_request(b, &addr(), mask::EDIT, &[(mask::DCMD_ADD, [2; 6])])),
        req(&|b| initiator::reserve_request(b, &addr(), reserve::READ, &[])),
        req(&|b| initiator::reserve_request(b, &addr(), reserve::SET, &[HOST])),
        req(&|b| initiator::ata_request(b, &addr(), &AtaRequest::read(0, 2))),
    ];
    for r in &same {
        assert_eq!(allocations(&export, r), (0, false), "{:02x?}", &r[..32]);
    }
    let changes = [
        req(&|b| initiator::config_request(b, &addr(), ccmd::FORCE_SET, b"owner=host2")),
        req(&|b| initiator::mask_request(b, &addr(), mask::EDIT, &[(mask::DCMD_DEL, OTHER)])),
        req(&|b| initiator::reserve_request(b, &addr(), reserve::FORCE_SET, &[OTHER])),
    ];
    for r in &changes {
        assert_eq!(allocations(&export, r), (1, true), "{:02x?}", &r[..32]);
    }
}
