//! A pool of `sled::Db` handles, so that a [`super::Store`] can be shared by many
//! threads. Nothing here reads or writes records.
//!
//! In this sled alpha a `Db` is `Send` but not `Sync`: each handle carries its own
//! epoch-reclamation state in a `RefCell`, and sled expects one clone per thread.
//! Readers borrow a handle from the pool for the length of one read and give it back;
//! the pool only clones a new one when every handle is busy, so it grows to the peak
//! number of concurrent readers and stays there.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

/// The sled handle type used throughout the store.
pub(crate) type Db = sled::Db<{ super::LEAF_FANOUT }>;

pub(crate) struct DbPool {
    /// Cloned when the pool is empty; cloning reads its `RefCell`, hence the lock.
    /// `None` only once leaked on drop.
    template: Mutex<Option<Db>>,
    /// Idle handles, boxed: a `Db` is about 20 KiB, and moving one through the
    /// channel by value cost two copies of that (and a zeroed channel block) per read.
    idle_tx: Sender<Box<Db>>,
    idle_rx: Receiver<Box<Db>>,
    /// Set when the store failed: the handles are leaked instead of dropped, because
    /// dropping a sled handle flushes, and after a failed flush sled's next flush
    /// waits forever (see `Store::fail`).
    leak: AtomicBool,
}

impl DbPool {
    pub(crate) fn new(db: Db) -> DbPool {
        let (idle_tx, idle_rx) = crossbeam_channel::unbounded();
        DbPool {
            template: Mutex::new(Some(db)),
            idle_tx,
            idle_rx,
            leak: AtomicBool::new(false),
        }
    }

    /// A handle of its own, for a thread that keeps it (the writer).
    pub(crate) fn detach(&self) -> Db {
        self.template
            .lock()
            .clone()
            .expect("the template handle lives as long as the pool")
    }

    /// Leak every handle when the pool is dropped (the store failed).
    pub(crate) fn leak_on_drop(&self) {
        self.leak.store(true, Relaxed);
    }

    /// Borrows a handle until the guard drops.
    pub(crate) fn get(&self) -> PooledDb<'_> {
        let db = match self.idle_rx.try_recv() {
            Ok(db) => db,
            Err(_) => Box::new(self.detach()),
        };
        PooledDb {
            pool: self,
            db: Some(db),
        }
    }
}

/// A borrowed handle; returns to the pool on drop.
pub(crate) struct PooledDb<'a> {
    pool: &'a DbPool,
    db: Option<Box<Db>>,
}

impl Deref for PooledDb<'_> {
    type Target = Db;

    fn deref(&self) -> &Db {
        self.db
            .as_ref()
            .expect("a PooledDb holds its Db until dropped")
    }
}

impl Drop for DbPool {
    fn drop(&mut self) {
        if !self.leak.load(Relaxed) {
            return;
        }
        std::mem::forget(self.template.lock().take());
        while let Ok(db) = self.idle_rx.try_recv() {
            std::mem::forget(db);
        }
    }
}

impl Drop for PooledDb<'_> {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            // The pool owns the receiver, so this cannot fail while `self.pool` lives.
            let _ = self.pool.idle_tx.send(db);
        }
    }
}
