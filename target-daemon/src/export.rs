//! An export at run time: its backing store and its protocol state.
//!
//! The protocol state (config string, mask and reserve lists) is read by every worker for every
//! frame and changed rarely, by config/mask/reserve commands. The `Export` owns it behind a lock
//! with a version number; each worker keeps its own copy and only loads the version per frame (a
//! plain atomic load: the cache line stays shared, nothing bounces between workers), copying the
//! state again when the version moved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use aoe::target::{ExportState, StateChange};

use crate::backing::{Backing, Durability};

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
        })
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

    /// Apply a change decided by the protocol layer. (Changes are whole new lists or strings,
    /// so two initiators editing at once on different queues may each see their own edit win.)
    pub fn apply(&self, change: StateChange) {
        tracing::info!(export = %self.name, ?change, "export state changed by an initiator");
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.apply(change);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Whether writes must be durable before they are acknowledged (RWF_DSYNC).
    pub fn durable_writes(&self) -> bool {
        self.backing.durability() == Durability::Sync
    }

    /// Whether (shelf, slot) of a request addresses this export (wildcards independent).
    pub fn addressed(&self, shelf: u16, slot: u8) -> bool {
        (shelf == self.shelf || shelf == aoe::wire::SHELF_ANY)
            && (slot == self.slot || slot == aoe::wire::SLOT_ANY)
    }
}
