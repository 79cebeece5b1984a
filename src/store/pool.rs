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

/// The keys of `db` from `start` (inclusive) to `end` (exclusive), in order.
///
/// Use this, not `Db::range(start..end)`: in this sled alpha a bounded range's
/// iterator does not stop at its end, but reads every leaf after it to the end of the
/// tree before it says it is done (`sled::tree::Iter::next` refetches while nothing
/// in the leaf is in bounds), so a range with nothing left in it costs a scan of the
/// rest of the store. Here the range is open-ended and the iteration stops at the
/// first key at or past `end`. Like sled's, the iterator holds its own handle of the
/// tree, not a borrow of `db`.
pub(crate) fn scan<E: AsRef<[u8]>>(
    db: &Db,
    start: &[u8],
    end: E,
) -> impl Iterator<Item = std::io::Result<(sled::InlineArray, sled::InlineArray)>> + use<E> {
    debug_assert!(start <= end.as_ref(), "a scan's start is not after its end");
    db.range(start..).take_while(move |item| {
        item.as_ref()
            .map_or(true, |(key, _)| key.as_ref() < end.as_ref())
    })
}

/// The keys of `db` that start with the byte `prefix` (see [`scan`]).
pub(crate) fn scan_prefix(
    db: &Db,
    prefix: u8,
) -> impl Iterator<Item = std::io::Result<(sled::InlineArray, sled::InlineArray)>> + use<> {
    debug_assert!(prefix < u8::MAX);
    scan(db, &[prefix], [prefix + 1])
}

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
