//! An export at run time: its backing store and its protocol state.
//!
//! The protocol state (config string, mask and reserve lists) is read by every worker for every
//! frame and changed rarely, by config/mask/reserve commands. The `Export` owns it behind a lock
//! with a version number; each worker keeps its own copy and only loads the version per frame (a
//! plain atomic load: the cache line stays shared, nothing bounces between workers), copying the
//! state again when the version moved.
//!
//! Initiators change that state with config, mask and reserve commands, possibly as fast as
//! frames arrive. A change allocates nothing here (the new list or string is moved in) and is
//! logged at most once a second per export, with the number of changes since the last line
//! (see [`ChangeLog`]); the count of changes never logged is logged when the export is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use aoe::target::{ExportState, StateChange};

use crate::backing::{Backing, Commit, Durability};

/// One export: what it is called, where its bytes live, and its AoE state.
pub struct Export {
    /// `e<shelf>.<slot>`, for logs.
    pub name: String,
    /// The backing store.
    pub backing: Backing,
    /// For an in-memory store: its export range, mapped (see [`crate::sys::FileMap`]).
    pub map: Option<crate::sys::FileMap>,
    shelf: u16,
    slot: u8,
    state: RwLock<ExportState>,
    /// Bumped (under the write lock) by every change of `state`.
    version: AtomicU64,
    /// Rate limit of the "export state changed" log line.
    changes: Mutex<ChangeLog>,
    /// The last version of `state` known to be on disk (see [`crate::persist`]).
    persisted: AtomicU64,
    /// Who writes the state to disk; none: nothing is persisted, every version counts as such.
    writer: OnceLock<Arc<dyn Persist>>,
}

/// Who persists an export's state: told when it changed.
pub trait Persist: Send + Sync {
    /// The state of some export changed: write it soon.
    fn kick(&self);
}

impl Export {
    /// A new export over an opened backing store.
    pub fn new(state: ExportState, backing: Backing) -> std::io::Result<Self> {
        let map = if backing.in_memory() {
            backing.ensure_allocated().map_err(std::io::Error::other)?;
            let len = state.sectors * aoe::wire::SECTOR as u64;
            Some(crate::sys::FileMap::new(
                backing.fd(),
                backing.byte_offset(),
                len,
                !backing.read_only(),
            )?)
        } else {
            None
        };
        Ok(Export {
            name: format!("e{}.{}", state.shelf, state.slot),
            map,
            backing,
            shelf: state.shelf,
            slot: state.slot,
            state: RwLock::new(state),
            version: AtomicU64::new(0),
            changes: Mutex::new(ChangeLog::default()),
            persisted: AtomicU64::new(0),
            writer: OnceLock::new(),
        })
    }

    /// The shelf address.
    pub fn shelf(&self) -> u16 {
        self.shelf
    }

    /// The slot address.
    pub fn slot(&self) -> u8 {
        self.slot
    }

    /// Read the protocol state.
    pub fn state(&self) -> RwLockReadGuard<'_, ExportState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The version of the state: it changes whenever the state does.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// A copy of the state and its version, taken consistently.
    pub fn snapshot(&self) -> (u64, ExportState) {
        let state = self.state();
        (self.version(), state.clone())
    }

    /// Bring `snap` (a copy of the state and its version) up to date, reusing its buffers: no
    /// allocation once they have grown to size, and only a load of the version when nothing
    /// changed.
    pub fn snapshot_into(&self, snap: &mut (u64, ExportState)) {
        if self.version() == snap.0 {
            return;
        }
        let state = self.state();
        snap.0 = self.version();
        snap.1.clone_from(&state);
    }

    /// The last version of the state known to be persisted (every version, when nothing is).
    pub fn persisted(&self) -> u64 {
        self.persisted.load(Ordering::Acquire)
    }

    /// Version `v` (or a later one) is on disk.
    pub fn mark_persisted(&self, v: u64) {
        self.persisted.fetch_max(v, Ordering::AcqRel);
    }

    /// From now on, changes are persisted by `writer` (the state as it is now is taken to be on
    /// disk already: it was loaded from there, or is the default).
    pub fn persist_with(&self, writer: Arc<dyn Persist>) {
        self.mark_persisted(self.version());
        let _ = self.writer.set(writer);
    }

    /// Whether changes of the state are persisted (the export has a writer).
    pub fn is_persisted(&self) -> bool {
        self.writer.get().is_some()
    }

    /// Apply a change decided by the protocol layer, or by the admin; returns the new version
    /// of the state. (Changes are whole new lists or strings, so two initiators editing at once
    /// on different queues may each see their own edit win.) Allocates nothing; logs at most
    /// once a second (see [`ChangeLog`]). The change is persisted by the export's writer, if it
    /// has one: replies confirming it wait for [`Export::persisted`] to reach the version.
    pub fn apply(&self, change: StateChange) -> u64 {
        let what = ChangeKind::of(&change);
        let version;
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            state.apply(change);
            version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
        }
        match self.writer.get() {
            Some(w) => w.kick(),
            None => self.mark_persisted(version),
        }
        let mut log = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(changes) = log.record(Instant::now()) {
            drop(log);
            let state = self.state();
            tracing::info!(
                export = %self.name,
                changes,
                last = what.name(),
                config_bytes = state.config.len(),
                mask = state.mask.len(),
                reserve = state.reserve.len(),
                "export state changed by an initiator ({changes} change(s) since the last such \
                 line; at most one line a second)"
            );
        }
        version
    }

    /// Whether writes must be durable before they are acknowledged.
    pub fn durable_writes(&self) -> bool {
        self.backing.durability() == Durability::Sync
    }

    /// Whether durable writes are made durable by group commit (concurrent writes share one
    /// cache flush) rather than `RWF_DSYNC` on each. Never for an in-memory store (mapped:
    /// there is no device cache to flush).
    pub fn group_commit(&self) -> bool {
        self.durable_writes() && !self.backing.in_memory() && self.backing.commit() == Commit::Group
    }

    /// Whether (shelf, slot) of a request addresses this export (wildcards independent).
    pub fn addressed(&self, shelf: u16, slot: u8) -> bool {
        addressed((self.shelf, self.slot), shelf, slot)
    }
}

/// Whether (shelf, slot) of a request addresses the export at `at` (wildcards independent).
#[inline]
pub fn addressed(at: (u16, u8), shelf: u16, slot: u8) -> bool {
    (shelf == at.0 || shelf == aoe::wire::SHELF_ANY)
        && (slot == at.1 || slot == aoe::wire::SLOT_ANY)
}

impl Drop for Export {
    /// Logs the changes the rate limit held back since the last line.
    fn drop(&mut self) {
        let log = self.changes.get_mut().unwrap_or_else(|p| p.into_inner());
        if log.unlogged > 0 {
            tracing::info!(
                export = %self.name,
                changes = log.unlogged,
                "export state changed by an initiator ({} change(s) since the last such line)",
                log.unlogged
            );
        }
    }
}

/// What a [`StateChange`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The config string.
    Config,
    /// The MAC mask list.
    Mask,
    /// The reserve list.
    Reserve,
}

impl ChangeKind {
    fn of(change: &StateChange) -> Self {
        match change {
            StateChange::Config(_) => Self::Config,
            StateChange::Mask(_) => Self::Mask,
            StateChange::Reserve(_) => Self::Reserve,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Mask => "mask",
            Self::Reserve => "reserve",
        }
    }
}

/// The rate limit of an export's "state changed" log line: the first change is logged at
/// once; later ones are counted, and the first change a second or more after the last line
/// logs the count (itself included).
#[derive(Debug, Default)]
pub struct ChangeLog {
    /// When the last line was logged.
    last_line: Option<Instant>,
    /// Changes since then, not logged yet.
    unlogged: u64,
}

impl ChangeLog {
    /// The shortest interval between two lines of one export.
    pub const INTERVAL: Duration = Duration::from_secs(1);

    /// Counts a change at `now`; returns the number of changes to log now, if a line is due.
    pub fn record(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        let due = self
            .last_line
            .is_none_or(|last| now.saturating_duration_since(last) >= Self::INTERVAL);
        if !due {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_one_line_a_second_with_the_count() {
        let mut log = ChangeLog::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(log.record(at(0)), Some(1));
        for ms in 1..1000 {
            assert_eq!(log.record(at(ms)), None, "at {ms} ms");
        }
        assert_eq!(log.record(at(1000)), Some(1000));
        assert_eq!(log.record(at(1500)), None);
        assert_eq!(log.unlogged, 1);
        assert_eq!(log.record(at(60_000)), Some(2));
        assert_eq!(log.unlogged, 0);
    }
}
