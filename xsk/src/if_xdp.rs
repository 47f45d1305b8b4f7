//! Kernel ABI of AF_XDP, mirroring `linux/if_xdp.h` (plus the few `asm/socket.h` and
//! `linux/bpf.h` constants we need).
//!
//! libc 0.2.191 already defines the `if_xdp.h` structs and flags; they are re-exported here so
//! the rest of the crate names one module. What libc lacks is defined below.

pub use libc::{
    sockaddr_xdp, xdp_desc, xdp_mmap_offsets, xdp_options, xdp_ring_offset, xdp_statistics,
    xdp_umem_reg, AF_XDP, SOL_XDP, XDP_COPY, XDP_MMAP_OFFSETS, XDP_OPTIONS, XDP_OPTIONS_ZEROCOPY,
    XDP_PGOFF_RX_RING, XDP_PGOFF_TX_RING, XDP_PKT_CONTD, XDP_RING_NEED_WAKEUP, XDP_RX_RING,
    XDP_SHARED_UMEM, XDP_STATISTICS, XDP_TX_RING, XDP_UMEM_COMPLETION_RING, XDP_UMEM_FILL_RING,
    XDP_UMEM_PGOFF_COMPLETION_RING, XDP_UMEM_PGOFF_FILL_RING, XDP_UMEM_REG,
    XDP_UMEM_UNALIGNED_CHUNK_FLAG, XDP_USE_NEED_WAKEUP, XDP_USE_SG, XDP_ZEROCOPY,
};

/// `linux/bpf.h`: the kernel reserves this much headroom in front of every received packet,
/// before the UMEM's own headroom.
pub const XDP_PACKET_HEADROOM: u32 = 256;

// `asm-generic/socket.h` values, used by x86_64, aarch64 and riscv64 (mips, sparc, parisc and
// alpha differ). libc only exposes them for some targets.
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
mod sockopt {
    /// `SO_BUSY_POLL`: busy-poll time in microseconds.
    pub const SO_BUSY_POLL: libc::c_int = 46;
    /// `SO_PREFER_BUSY_POLL` (Linux 5.11).
    pub const SO_PREFER_BUSY_POLL: libc::c_int = 69;
    /// `SO_BUSY_POLL_BUDGET` (Linux 5.11).
    pub const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
}
pub use sockopt::*;
