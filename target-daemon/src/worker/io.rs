//! The worker's seam with the outside world: a packet side and a storage side.
//!
//! The worker's logic ([`super::Worker`]) is generic over both, with static dispatch, so the hot
//! path costs what it cost before the seam. The real packet side is an AF_XDP socket and its
//! UMEM ([`XskPackets`]); the real storage side is io_uring plus the mapped in-memory stores
//! ([`Engines`]). `target-daemon/tests/sim.rs` plugs in a simulated network and a
//! fault-injecting disk instead.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use xsk::{Frame, Socket, Umem};

use super::mapped::Mapped;
use crate::export::Export;
use crate::uring::{Completion, SqFull, Uring};

/// One storage operation on an export's store (offsets are store offsets, in bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes at `offset` into `ptr`.
    Read {
        /// Destination (a parked UMEM chunk or bounce slot).
        ptr: *mut u8,
        /// Bytes.
        len: u32,
        /// Store offset.
        offset: u64,
    },
    /// Write `len` bytes from `ptr` to `offset`, durably (`RWF_DSYNC`) if `dsync`.
    Write {
        /// Source (a parked UMEM chunk or bounce slot).
        ptr: *const u8,
        /// Bytes.
        len: u32,
        /// Store offset.
        offset: u64,
        /// Durable before completion.
        dsync: bool,
    },
    /// `fdatasync` of the store: a FLUSH CACHE request, ordered after every earlier write.
    Fsync,
    /// A group commit: `len` bytes from `ptr` written again to `offset` with `RWF_DSYNC` (the
    /// bytes of a completed write the commit covers, still parked: the same data, so writing
    /// them again changes nothing). On a device with a volatile cache and no FUA, such a write
    /// ends with a cache flush, which makes durable every write that completed before it was
    /// issued; it runs alongside later writes (which the next commit covers). Unlike an
    /// `fdatasync`, which io_uring hands to one of its worker threads, it completes like any
    /// direct write.
    Commit {
        /// Source (the covered write's parked UMEM chunk or bounce slot).
        ptr: *const u8,
        /// Bytes.
        len: u32,
        /// Store offset.
        offset: u64,
    },
}

// SAFETY: an `Op`'s pointers refer to the UMEM or bounce region owned by the same worker that
// holds the `Op` (its in-flight table keeps the memory parked), so they move with the worker.
unsafe impl Send for Op {}

/// The packet side: a UMEM and the four AF_XDP rings over it.
pub trait Packets {
    /// The packet buffers.
    fn umem(&self) -> &Umem;
    /// The packet buffers, to allocate or free frames.
    fn umem_mut(&mut self) -> &mut Umem;
    /// Free slots on the fill ring.
    fn fill_free(&self) -> u32;
    /// Give frames to the fill ring (those that fit); returns how many.
    fn fill(&mut self, frames: &mut Vec<Frame>) -> usize;
    /// Take up to `max` received descriptors.
    fn recv(&mut self, out: &mut Vec<Frame>, max: usize) -> usize;
    /// Queue frames for transmission (those that fit); returns how many.
    fn send(&mut self, frames: &mut Vec<Frame>) -> usize;
    /// Take up to `max` transmitted frames back.
    fn complete(&mut self, out: &mut Vec<Frame>, max: usize) -> usize;
    /// Descriptors on the TX ring the kernel has not taken yet.
    fn tx_unsent(&self) -> u32;
    /// Whether the socket runs in zero-copy mode.
    fn zero_copy(&self) -> bool;
    /// Whether TX needs a kick (`need_wakeup`).
    fn needs_wakeup_tx(&self) -> bool;
    /// Whether the fill ring needs a wakeup (`need_wakeup`).
    fn needs_wakeup_fill(&self) -> bool;
    /// Kick TX.
    fn kick_tx(&self) -> io::Result<()>;
    /// Wake RX (and, with busy polling, run the NIC's poll).
    fn wake_rx(&self) -> io::Result<()>;
    /// The descriptor to `poll` for received frames.
    fn fd(&self) -> RawFd;
}

/// The storage side: queue operations, hand them over, take completions.
pub trait Storage {
    /// Queue one operation on registered file `file` (the export's index on this worker).
    ///
    /// # Safety
    /// The memory an [`Op`] names is valid (for writes into it, for a read) and untouched by
    /// anyone else until its completion with `user_data` has been taken by [`Storage::reap`],
    /// or the storage side has been dropped.
    unsafe fn push(&mut self, file: u32, op: Op, user_data: u64) -> Result<(), SqFull>;
    /// Hand every queued operation over (for mapped stores: carry them out). Called once the
    /// RX batch is decided; a storage side may hand some over earlier, from `push`.
    fn submit(&mut self) -> io::Result<()>;
    /// Append up to `max` completions to `out` (carried-out in-memory operations are always
    /// all taken); returns how many.
    fn reap(&mut self, out: &mut Vec<Completion>, max: usize) -> usize;
    /// How many more operations may be queued now.
    fn space(&mut self) -> usize;
    /// Operations queued and not yet handed over.
    fn queued(&self) -> u64;
    /// Operations handed over whose completions have not been taken.
    fn in_flight(&self) -> u64;
    /// A descriptor that becomes readable when completions wait, if the storage has one.
    fn fd(&self) -> Option<RawFd>;
    /// Serve `exports` from now on (file `i` is `exports[i]`'s store). Called only while
    /// nothing is queued or in flight.
    fn set_exports(&mut self, exports: &[Arc<Export>]) -> io::Result<()>;
}

/// The real packet side: an AF_XDP socket bound over its UMEM.
pub struct XskPackets {
    /// The packet buffers.
    pub umem: Umem,
    /// The socket.
    pub sock: Socket,
}

impl Packets for XskPackets {
    #[inline]
    fn umem(&self) -> &Umem {
        &self.umem
    }
    #[inline]
    fn umem_mut(&mut self) -> &mut Umem {
        &mut self.umem
    }
    #[inline]
    fn fill_free(&self) -> u32 {
        self.sock.fill_free()
    }
    #[inline]
    fn fill(&mut self, frames: &mut Vec<Frame>) -> usize {
        self.sock.fill(frames)
    }
    #[inline]
    fn recv(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        self.sock.recv(out, max)
    }
    #[inline]
    fn send(&mut self, frames: &mut Vec<Frame>) -> usize {
        self.sock.send(frames)
    }
    #[inline]
    fn complete(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        self.sock.complete(out, max)
    }
    #[inline]
    fn tx_unsent(&self) -> u32 {
        self.sock.tx_unsent()
    }
    #[inline]
    fn zero_copy(&self) -> bool {
        self.sock.zero_copy()
    }
    #[inline]
    fn needs_wakeup_tx(&self) -> bool {
        self.sock.needs_wakeup_tx()
    }
    #[inline]
    fn needs_wakeup_fill(&self) -> bool {
        self.sock.needs_wakeup_fill()
    }
    fn kick_tx(&self) -> io::Result<()> {
        self.sock.kick_tx().map_err(io::Error::other)
    }
    fn wake_rx(&self) -> io::Result<()> {
        self.sock.wake_rx().map_err(io::Error::other)
    }
    fn fd(&self) -> RawFd {
        self.sock.fd()
    }
}

/// Queued io_uring entries that trigger a submission before the RX batch ends.
const SUBMIT_EVERY: u64 = 4;

/// The real storage side: io_uring for files and block devices, and the mapped engine for
/// in-memory stores. Which one serves a file is fixed per export at start-up.
pub struct Engines {
    uring: Uring,
    mapped: Mapped,
}

impl Engines {
    /// The ring (with the exports' files registered in worker order) and the mapped stores.
    pub fn new(uring: Uring, mapped: Mapped) -> Engines {
        Engines { uring, mapped }
    }
}

impl Storage for Engines {
    #[inline]
    unsafe fn push(&mut self, file: u32, op: Op, user_data: u64) -> Result<(), SqFull> {
        if self.mapped.serves(file) {
            return self.mapped.push(file, op, user_data);
        }
        match op {
            // SAFETY: the caller's guarantee, passed on.
            Op::Read { ptr, len, offset } => unsafe {
                self.uring.push_read(file, ptr, len, offset, user_data)
            },
            Op::Write {
                ptr,
                len,
                offset,
                dsync,
            } => {
                // SAFETY: the caller's guarantee, passed on; the kernel only reads the range.
                unsafe {
                    self.uring
                        .push_write(file, ptr, len, offset, user_data, dsync)
                }
            }
            Op::Commit { ptr, len, offset } => {
                // SAFETY: as for a write.
                unsafe {
                    self.uring
                        .push_write(file, ptr, len, offset, user_data, true)
                }
            }
            Op::Fsync => self.uring.push_fsync(file, true, user_data),
        }?;
        // Hand the device a few requests at a time instead of a whole RX batch at its end: the
        // first requests of a batch do not wait for the rest to be decided, and a virtualised
        // disk serves a steady trickle faster than bursts (see ARCHITECTURE.md, Submission). A
        // failure is not lost: the entries stay queued for the end-of-batch submission.
        if self.uring.queued() >= SUBMIT_EVERY {
            let _ = self.uring.submit();
        }
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        self.mapped.run();
        if self.uring.queued() > 0 {
            self.uring.submit()?;
        }
        Ok(())
    }

    #[inline]
    fn reap(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        let mut n = self.mapped.reap(out);
        if self.uring.in_flight() > 0 {
            n += self.uring.reap(out, max);
        }
        n
    }

    fn space(&mut self) -> usize {
        self.uring.sq_space()
    }

    #[inline]
    fn queued(&self) -> u64 {
        self.uring.queued() + self.mapped.queued()
    }

    #[inline]
    fn in_flight(&self) -> u64 {
        self.uring.in_flight() + self.mapped.done()
    }

    fn fd(&self) -> Option<RawFd> {
        (self.uring.in_flight() > 0).then(|| self.uring.fd())
    }

    fn set_exports(&mut self, exports: &[Arc<Export>]) -> io::Result<()> {
        let fds: Vec<RawFd> = exports.iter().map(|e| e.backing.fd()).collect();
        self.uring.replace_files(&fds)?;
        self.mapped.set_exports(exports);
        Ok(())
    }
}
