//! Group commit of durable writes, for exports whose [`Export::group_commit`] holds.
//!
//! Such an export's device has a volatile cache and no FUA, so a `RWF_DSYNC` write is a write
//! followed by a cache flush, and that flush makes durable every write that completed before
//! it. A write issued while at least [`GROUP_FROM`] others of its export are outstanding (issued
//! and not answered) goes to the store without `RWF_DSYNC`; any other carries it and is
//! answered when it completes, as on other exports (with few writes outstanding, batches are
//! too small to pay for the commit's extra round trip). When a write without it completes, its
//! request is parked here, still holding its slot, its frame and its place in `ranges` (so
//! nothing overlapping runs before it is answered, as if its write were still in flight).
//!
//! Each export has at most one commit outstanding: the bytes of the first write it covers,
//! written again with `RWF_DSYNC` ([`Op::Commit`]: the same data, still parked, so nothing
//! changes but the flush), issued after every write it covers had completed. Its completion
//! answers them all, or fails them all. Writes that complete meanwhile wait for the next one,
//! which is issued as soon as the first completes: under load a batch is whatever completed
//! during one commit. A commit is a direct write, not an `fdatasync`, which io_uring would hand
//! to a worker thread competing for the worker's CPU.
//!
//! [`Op::Commit`]: super::io::Op::Commit
//!
//! [`Export::group_commit`]: crate::export::Export::group_commit

use std::sync::Arc;

use aoe::target::Decision;

use super::io::{Packets, Storage};
use super::reply::failure;
use super::Worker;
use crate::export::Export;

/// A durable write goes without `RWF_DSYNC` (to wait for a group commit) only when at least
/// this many other writes of its export are outstanding: with fewer, batches are too small to
/// pay for the commit's extra round trip (measured: see ARCHITECTURE.md, Durability).
pub(super) const GROUP_FROM: u32 = 4;

/// The bit that marks a commit's storage `user_data` (a request's is `slot | op << 32`, and
/// `op` is below the number of chunks in a frame).
const COMMIT: u64 = 1 << 63;

/// The storage `user_data` of export `export`'s commit.
#[inline]
pub(super) fn commit_data(export: usize) -> u64 {
    COMMIT | export as u64
}

/// The export whose commit `user_data` names, if it names one.
#[inline]
pub(super) fn commit_of(user_data: u64) -> Option<usize> {
    (user_data & COMMIT != 0).then_some((user_data & !COMMIT) as usize)
}

/// One export's writes on their way to durability.
#[derive(Default)]
struct Queue {
    /// Whether the export's writes must be durable when answered.
    durable: bool,
    /// Whether it commits by groups (else its durable writes carry `RWF_DSYNC`).
    group: bool,
    /// Completed writes (slots) no commit covers yet.
    parked: Vec<u32>,
    /// The writes the outstanding commit covers.
    covered: Vec<u32>,
    /// A commit is outstanding (queued, deferred or in flight).
    running: bool,
    /// Times the outstanding commit was issued again after a transient failure.
    retries: u8,
    /// Writes issued and not answered (in flight, parked or covered).
    writing: u32,
}

/// Every export's queue (in the worker's export order).
#[derive(Default)]
pub(super) struct Commits {
    queues: Vec<Queue>,
    /// Some export has parked writes and no commit outstanding.
    due: bool,
}

impl Commits {
    /// Queues for `exports` (nothing parked).
    pub fn new(exports: &[Arc<Export>]) -> Commits {
        Commits {
            queues: exports
                .iter()
                .map(|e| Queue {
                    durable: e.durable_writes(),
                    group: e.group_commit(),
                    ..Queue::default()
                })
                .collect(),
            due: false,
        }
    }

    /// Whether export `export` commits by groups.
    #[inline]
    pub fn group(&self, export: usize) -> bool {
        self.queues.get(export).is_some_and(|q| q.group)
    }

    /// A write of export `export` is issued: whether it must carry `RWF_DSYNC` (a durable
    /// export that does not commit by groups, or with fewer than [`GROUP_FROM`] other writes
    /// outstanding).
    #[inline]
    pub fn write_issued(&mut self, export: usize) -> bool {
        let Some(q) = self.queues.get_mut(export) else {
            return true;
        };
        if !q.group {
            return q.durable;
        }
        q.writing += 1;
        q.writing <= GROUP_FROM
    }

    /// A write of export `export` is answered.
    #[inline]
    pub fn write_done(&mut self, export: usize) {
        if let Some(q) = self.queues.get_mut(export).filter(|q| q.group) {
            q.writing = q.writing.saturating_sub(1);
        }
    }

    /// The first write the outstanding commit of export `export` covers.
    #[inline]
    pub fn first_covered(&self, export: usize) -> Option<u32> {
        self.queues.get(export)?.covered.first().copied()
    }

    /// Whether some export has parked writes and no commit outstanding.
    #[inline]
    pub fn due(&self) -> bool {
        self.due
    }
}

impl<P: Packets, S: Storage> Worker<P, S> {
    /// A group-committed write's data is in the store: it waits for the next commit.
    pub(super) fn park_write(&mut self, slot: u32, export: usize) {
        if let Some(q) = self.commits.queues.get_mut(export) {
            q.parked.push(slot);
            self.commits.due |= !q.running;
        }
    }

    /// Issue a commit for every export with parked writes and none outstanding.
    pub(super) fn issue_commits(&mut self) {
        self.commits.due = false;
        for i in 0..self.commits.queues.len() {
            let Some(q) = self.commits.queues.get_mut(i) else {
                break;
            };
            if q.running || q.parked.is_empty() {
                continue;
            }
            std::mem::swap(&mut q.parked, &mut q.covered);
            q.running = true;
            q.retries = 0;
            self.stats.commits += 1;
            self.issue_data(commit_data(i));
        }
    }

    /// Export `export`'s commit completed with `result`: answer the writes it covers (or fail
    /// them), or issue it again after a transient failure.
    pub(super) fn finish_commit(&mut self, export: usize, result: i32) {
        // The commit wrote the first covered write's bytes again: all of them, or it failed.
        let expect = self
            .commits
            .first_covered(export)
            .and_then(|slot| self.inflight.get_mut(slot))
            .map_or(0, |p| p.bytes);
        let Some(q) = self.commits.queues.get_mut(export) else {
            tracing::error!(export, "commit completion for an unknown export");
            return;
        };
        // Short: its flush did not happen; issued again, like a short request.
        let failed = failure(result, expect, q.retries);
        if let Some((_, true)) = failed {
            q.retries += 1;
            self.stats.retries += 1;
            return self.issue_data(commit_data(export));
        }
        let error = failed.map(|(e, _)| e);
        q.running = false;
        self.commits.due |= !q.parked.is_empty();
        let mut covered = std::mem::take(&mut q.covered);
        if let Some(e) = error {
            // The device may have lost whatever was in its cache when the flush failed: the
            // writes this commit covers, and any other write of the export issued without
            // `RWF_DSYNC` (it may have completed before the commit was handed over, unseen by
            // this worker). They all fail; writes still waiting for an overlapping request do
            // not.
            for p in self.inflight.each_mut() {
                if p.export == export
                    && p.issued
                    && !p.dsync
                    && matches!(p.decision, Decision::Write { .. })
                {
                    p.error.get_or_insert(e);
                }
            }
            // Parked ones are answered now (no later commit would help them).
            if let Some(q) = self.commits.queues.get_mut(export) {
                covered.append(&mut q.parked);
            }
        }
        for slot in covered.drain(..) {
            self.conclude(slot);
        }
        // The list goes back empty, keeping its capacity: no allocation per commit.
        if let Some(q) = self.commits.queues.get_mut(export) {
            q.covered = covered;
        }
    }
}
