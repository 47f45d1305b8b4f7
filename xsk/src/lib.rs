//! AF_XDP on `libc`: UMEM, owned frame tokens, the four rings and the socket.
//!
//! All packet-side `unsafe` of xblade lives in this crate. The safe API rests on one rule: a
//! UMEM chunk is owned either by exactly one [`Frame`] (userspace) or by the kernel (while its
//! address sits on the fill or TX ring, until it comes back through RX or completion). Frames
//! are not `Clone`, and every ring operation moves them, so a chunk can never be on two rings,
//! nor be written by the kernel while a slice of it is borrowed.
//!
//! A dropped `Frame` is not unsafe; its chunk is just lost until the `Umem` is dropped.

pub mod if_xdp;
pub mod ring;
mod socket;
mod sys;
mod umem;

pub use socket::{Socket, SocketConfig, XdpStatistics, ZeroCopy};
pub use umem::{Frame, Umem, UmemConfig};

/// Crate-wide result type: syscall errors stay `std::io::Error`, with context in the message.
pub type Result<T = (), E = std::io::Error> = std::result::Result<T, E>;
