//! A pool of `sled::Db` handles, so that a [`super::Store`] can be shared by many
//! threads. Nothing here reads or writes records.
//!
//! In this sled alpha a `Db` is `Send` but not `Sync`: each handle carries its own
//! epoch-reclamation state in a `RefCell`, and sled expects one clone per thread.
//! Readers borrow a handle from the pool for the length of one read and give it back;
//! the pool only clones a new one when every handle is busy, so it grows to the peak
//! number of concurrent readers and stays there.

use std::ops::Deref;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

/// The sled handle type used throughout the store.
pub(crate) type Db = sled::Db<{ super::LEAF_FANOUT }>;

pub(crate) struct DbPool {
    /// Cloned when the pool is empty; cloning reads its `RefCell`, hence the lock.
    template: Mutex<Db>,
    idle_tx: Sender<Db>,
    idle_rx: Receiver<Db>,
}

impl DbPool {
    pub(crate) fn new(db: Db) -> DbPool {
        let (idle_tx, idle_rx) = crossbeam_channel::unbounded();
        DbPool {
            template: Mutex::new(db),
            idle_tx,
            idle_rx,
        }
    }

    /// A handle of its own, for a thread that keeps it (the writer).
    pub(crate) fn detach(&self) -> Db {
        self.template.lock().clone()
    }

    /// Borrows a handle until the guard drops.
    pub(crate) fn get(&self) -> PooledDb<'_> {
        let db = match self.idle_rx.try_recv() {
            Ok(db) => db,
            Err(_) => self.detach(),
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
    db: Option<Db>,
}

impl Deref for PooledDb<'_> {
    type Target = Db;

    fn deref(&self) -> &Db {
        self.db
            .as_ref()
            .expect("a PooledDb holds its Db until dropped")
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
