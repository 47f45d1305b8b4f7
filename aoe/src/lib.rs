//! # `aoe`: ATA over Ethernet (AoEr11), sans I/O
//!
//! Everything xblade knows about the wire protocol, with no sockets and no files:
//!
//! - [`wire`]: constants and zero-copy views over frames (`&[u8]` / `&mut [u8]`): the common
//!   header, the ATA header, Query Config, MAC Mask List and Reserve/Release.
//! - [`ata`]: ATA opcodes, status and error bits, and the IDENTIFY DEVICE page.
//! - [`target`]: the pure target state machine: one received frame in, one [`target::Decision`]
//!   out (a reply built in place, or a storage operation to perform), and the function that turns
//!   a completed storage operation into its response frame.
//! - [`initiator`]: request builders and response parsers, for `aoe-bench` and the tests.
//!
//! Lengths always come from the protocol's own fields (sector count, config string length,
//! directive counts), never from the frame length: frames may be shorter than 60 bytes or carry
//! trailing junk. Every response is zero-padded to 60 bytes ([`wire::ETH_ZLEN`]).
#![forbid(unsafe_code)]

pub mod ata;
pub mod initiator;
pub mod target;
pub mod wire;

pub use target::{complete, decide, Decision, ExportState, Iface, IoOutcome, Outcome, StateChange};
pub use wire::Mac;
