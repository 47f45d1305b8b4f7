//! Writing the exports' AoE state to the state directory, off the datapath.
//!
//! A worker that applies a config, mask or reserve change only bumps the export's version and
//! kicks the [`StateWriter`] (a lock and a futex wake, no file I/O); the writer thread takes a
//! consistent copy of each export whose version moved, writes it crash-safely
//! ([`crate::statefile::StateDir::save`]) and marks that version persisted. Replies confirming
//! a change are held by the worker until then, so a kill -9 right after a reply loses nothing.
//! Changes arriving faster than the disk syncs are coalesced: one write carries them all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::export::{Export, Persist};
use crate::statefile::{SavedState, StateDir};

/// Writes the exports' state files.
pub struct StateWriter {
    dir: StateDir,
    exports: Mutex<Vec<Weak<Export>>>,
    dirty: Mutex<bool>,
    wake: Condvar,
    stop: AtomicBool,
}

/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

impl StateWriter {
    /// A writer into `dir` (its thread is started by [`StateWriter::spawn`]).
    pub fn new(dir: StateDir) -> Arc<StateWriter> {
        Arc::new(StateWriter {
            dir,
            exports: Mutex::new(Vec::new()),
            dirty: Mutex::new(false),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &StateDir {
        &self.dir
    }

    /// Persist `export`'s changes from now on.
    pub fn watch(self: &Arc<Self>, export: &Arc<Export>) {
        let mut list = self.exports.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(export));
        drop(list);
        export.persist_with(Arc::clone(self) as Arc<dyn Persist>);
    }

    /// Start the writer thread.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || me.run())
    }

    /// Stop the thread (after a last round of writes).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.kick();
    }

    fn run(&self) {
        let mut last_error: Option<Instant> = None;
        loop {
            {
                let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
                while !*dirty && !self.stop.load(Ordering::Acquire) {
                    dirty = self
                        .wake
                        .wait_timeout(dirty, RETRY)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
                *dirty = false;
            }
            let failed = self.write_all(&mut last_error);
            if failed {
                std::thread::sleep(RETRY);
                *self.dirty.lock().unwrap_or_else(|p| p.into_inner()) = true;
            }
            if self.stop.load(Ordering::Acquire) && !failed {
                return;
            }
        }
    }

    /// Write every export whose state moved; true if a write failed.
    fn write_all(&self, last_error: &mut Option<Instant>) -> bool {
        let list: Vec<Arc<Export>> = self
            .exports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut failed = false;
        for e in list {
            if e.version() <= e.persisted() {
                continue;
            }
            let (v, state) = e.snapshot();
            let saved = SavedState {
                config: state.config.clone(),
                mask: state.mask.clone(),
                reserve: state.reserve.clone(),
            };
            match self.dir.save(&e.name, &saved) {
                Ok(()) => e.mark_persisted(v),
                Err(err) => {
                    failed = true;
                    // At most one line every 10 s: replies confirming changes wait meanwhile.
                    if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        *last_error = Some(Instant::now());
                        tracing::error!(
                            export = %e.name,
                            file = %self.dir.path(&e.name).display(),
                            "cannot write the export's AoE state (config string, mask, reserve \
                             lists): {err}. Replies confirming changes are held until it is \
                             written (initiators retry); free space or fix permissions in the \
                             state directory"
                        );
                    }
                }
            }
        }
        failed
    }
}

impl Persist for StateWriter {
    /// Something changed: write it soon.
    fn kick(&self) {
        *self.dirty.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_one();
    }
}
