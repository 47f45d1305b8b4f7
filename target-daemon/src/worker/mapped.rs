//! The storage engine of in-memory stores (files on tmpfs/ramfs): the store is mapped
//! ([`crate::sys::FileMap`]), and an operation is a copy between a UMEM chunk and the mapping.
//!
//! Operations are queued by `push` and carried out together by `run`, once the RX batch is
//! decided, so the copies run back to back after one prefetch pass over the whole batch; each
//! then completes like an io_uring operation.

use std::sync::Arc;

use super::io::Op;
use crate::export::Export;
use crate::sys;
use crate::uring::{Completion, SqFull};

/// The mapped stores of one worker's exports and their queued and finished operations.
pub struct Mapped {
    /// Per registered file (the worker's export index): the export, if its store is mapped.
    exports: Vec<Option<Arc<Export>>>,
    ops: Vec<(u32, Op, u64)>,
    done: Vec<Completion>,
}

impl Mapped {
    /// The engine for `exports` (in worker order); serves those with a mapped store.
    pub fn new(exports: &[Arc<Export>], capacity: usize) -> Mapped {
        Mapped {
            exports: exports
                .iter()
                .map(|e| e.map.is_some().then(|| Arc::clone(e)))
                .collect(),
            ops: Vec::with_capacity(capacity),
            done: Vec::with_capacity(capacity),
        }
    }

    /// Serve `exports` from now on (nothing queued or carried out may be pending).
    pub fn set_exports(&mut self, exports: &[Arc<Export>]) {
        self.exports = exports
            .iter()
            .map(|e| e.map.is_some().then(|| Arc::clone(e)))
            .collect();
    }

    /// Whether file `file` is a mapped store.
    #[inline]
    pub fn serves(&self, file: u32) -> bool {
        matches!(self.exports.get(file as usize), Some(Some(_)))
    }

    /// Queue an operation (never full: the worker's in-flight table bounds what is queued).
    #[inline]
    pub fn push(&mut self, file: u32, op: Op, user_data: u64) -> Result<(), SqFull> {
        self.ops.push((file, op, user_data));
        Ok(())
    }

    /// Operations queued.
    #[inline]
    pub fn queued(&self) -> u64 {
        self.ops.len() as u64
    }

    /// Operations carried out and not yet reaped.
    #[inline]
    pub fn done(&self) -> u64 {
        self.done.len() as u64
    }

    /// Take every finished operation.
    #[inline]
    pub fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let n = self.done.len();
        out.append(&mut self.done);
        n
    }

    /// Carry out the queued operations.
    pub fn run(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        // Start loading the store bytes of the whole batch before copying any of them, so the
        // batch's cache misses overlap instead of each copy waiting for its own (a random
        // 1 KiB read is 16 misses). A read's destination chunk is taken for writing too: the
        // fill ring recycles more chunks than the L2 holds, so each copy's stores would
        // otherwise wait for line ownership one line at a time. (Measured gains: see
        // ARCHITECTURE.md, In-memory stores.)
        for &(file, op, _) in &self.ops {
            let Some(Some(export)) = self.exports.get(file as usize) else {
                continue;
            };
            let Some(map) = &export.map else { continue };
            let base = export.backing.byte_offset();
            match op {
                Op::Read { ptr, len, offset } => {
                    map.prefetch(offset.saturating_sub(base), len as usize);
                    sys::prefetch_for_write(ptr, len as usize);
                }
                Op::Write { len, offset, .. } | Op::Commit { len, offset, .. } => {
                    map.prefetch(offset.saturating_sub(base), len as usize)
                }
                Op::Fsync => {}
            }
        }
        for (file, op, user_data) in self.ops.drain(..) {
            let result = match self.exports.get(file as usize) {
                Some(Some(export)) => match &export.map {
                    Some(map) => copy(export, map, op),
                    None => -libc::EBADF,
                },
                _ => -libc::EBADF,
            };
            self.done.push(Completion { user_data, result });
        }
    }
}

/// One operation against a mapping: bytes moved or a negated errno. The range was checked
/// against the export by the protocol layer (`aoe::target::decide`) and is checked again by the
/// mapping.
fn copy(export: &Export, map: &sys::FileMap, op: Op) -> i32 {
    let base = export.backing.byte_offset();
    match op {
        Op::Read { ptr, len, offset } => {
            // SAFETY: the worker pushes only a chunk/bounce range parked in its in-flight
            // table under this op's user data: writable and untouched until it is reaped.
            unsafe { map.read_into(offset.saturating_sub(base), ptr, len as usize) };
            len as i32
        }
        Op::Write {
            ptr, len, offset, ..
        }
        | Op::Commit { ptr, len, offset } => {
            // The store was allocated in full at start-up, so the copy cannot fault for memory.
            // SAFETY: as for the read (only read); a read-only export never decides a write.
            unsafe { map.write_from(offset.saturating_sub(base), ptr, len as usize) };
            len as i32
        }
        Op::Fsync => sys::fdatasync(export.backing.fd()),
    }
}
