//! The queue settings the store itself applies: each queue's result retention and
//! idempotency window. Loaded from the `Q` records when the store opens, kept current
//! by the writer (the only code that changes `Q` records), and read by anyone. Nothing
//! here touches sled directly beyond the load.

use std::collections::HashMap;
use std::sync::Arc;

use super::{corrupt, corrupt_reason, io_error, keys, record, Db, StoreError};
use crate::model::QueueConfig;

/// Configurations of the queues that have a `Q` record, and the defaults of the rest.
#[derive(Debug, Default)]
pub(crate) struct Policies {
    defaults: QueueConfig,
    by_name: HashMap<Arc<str>, QueueConfig>,
}

impl Policies {
    /// Reads every `Q` record.
    pub(crate) fn load(db: &Db, defaults: QueueConfig) -> Result<Policies, StoreError> {
        let mut by_name = HashMap::new();
        for item in crate::store::pool::scan_prefix(db, keys::QUEUE) {
            let (key, value) = item.map_err(io_error)?;
            let name = keys::queue_name(&key)
                .ok_or_else(|| corrupt_reason(&key, "queue name is not UTF-8"))?;
            let config = record::decode_queue(&value).map_err(|e| corrupt(&key, e))?;
            by_name.insert(Arc::from(name), config);
        }
        Ok(Policies { defaults, by_name })
    }

    /// The configuration `queue` runs with.
    pub(crate) fn get(&self, queue: &str) -> &QueueConfig {
        self.by_name.get(queue).unwrap_or(&self.defaults)
    }

    pub(crate) fn set_defaults(&mut self, defaults: QueueConfig) {
        self.defaults = defaults;
    }

    pub(crate) fn put(&mut self, name: &Arc<str>, config: &QueueConfig) {
        self.by_name.insert(name.clone(), config.clone());
    }

    pub(crate) fn remove(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    /// Replaces the per-queue entries (after a failed batch, from what is stored).
    pub(crate) fn reload(&mut self, db: &Db) -> Result<(), StoreError> {
        let fresh = Policies::load(db, self.defaults.clone())?;
        self.by_name = fresh.by_name;
        Ok(())
    }
}
