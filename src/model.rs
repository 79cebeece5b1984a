//! Domain types shared by the broker core and the store: task records, state patches,
//! queue configuration and the mutations the broker asks the store to persist.
//! Nothing here knows about sockets, protobuf or sled.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use bytes::Bytes;

/// Unix time in milliseconds; every timestamp in Squall uses it.
pub type Millis = u64;

/// Broker-assigned task id: unique and increasing per node.
pub type TaskId = u64;

/// A map keyed by a number the broker assigns itself (task ids, connection ids).
/// Such ids are consecutive, so a multiplicative hash spreads them well and costs one
/// multiplication, where the default SipHash costs more than the map (about 140
/// instructions a lookup, `BENCHMARKS.md`). Not for keys a client chooses (a task id
/// named in a request and then inserted, a queue name): a client could pick keys that
/// share their low bits and fill one probe sequence; those maps keep SipHash.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A set of broker-assigned ids (see [`IdMap`]).
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// The hasher of [`IdMap`]: the id times an odd constant (the golden ratio's
/// fraction), whose low bits (the bucket) and top bits (hashbrown's tag) both vary
/// from one consecutive id to the next.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The persisted lifecycle of a task.
///
/// "ready" vs "delayed" is derived from `not_before_ms` against the clock, and "leased"
/// is never persisted: leases live in memory and a restart makes a leased task
/// pending again with its attempt already counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TaskStatus {
    /// Waiting to be delivered (ready, delayed, or leased in memory).
    Pending = 0,
    /// Exhausted its attempts or was failed explicitly; kept for inspection and redrive.
    Dead = 1,
    /// Acked with a result that the queue retains.
    Succeeded = 2,
}

impl TaskStatus {
    /// Decodes the persisted tag.
    pub fn from_u8(tag: u8) -> Option<TaskStatus> {
        match tag {
            0 => Some(TaskStatus::Pending),
            1 => Some(TaskStatus::Dead),
            2 => Some(TaskStatus::Succeeded),
            _ => None,
        }
    }
}

/// The small, mutable part of a task: everything the broker needs to rebuild its
/// indexes at start-up. Stored apart from the body so that recovery never reads payloads
/// and a state change never rewrites one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// Queue name.
    pub queue: Arc<str>,
    /// Lifecycle status.
    pub status: TaskStatus,
    /// Higher first.
    pub priority: i32,
    /// Deliveries so far (each counts, whatever ended it).
    pub attempts: u32,
    /// Per-task limit; 0 = the queue's default at the time of use.
    pub max_attempts: u32,
    /// Per-task lease; 0 = the queue's default.
    pub lease_ms: u64,
    /// Not delivered before this time (0 = no delay).
    pub not_before_ms: Millis,
    /// When the task was published.
    pub created_ms: Millis,
    /// Last state change.
    pub updated_ms: Millis,
    /// Reason of the last failed attempt, if any.
    pub last_error: Option<String>,
    /// Not delivered for the first time after this (0 = never expires).
    pub expires_ms: Millis,
}

/// The immutable part of a task, read when it is delivered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskBody {
    /// When the task was published (copied here so a delivery needs one read).
    pub created_ms: Millis,
    /// Opaque payload.
    pub payload: Bytes,
    /// Application headers, in key order.
    pub headers: Vec<(String, Bytes)>,
    /// The idempotency key it was published with, if any.
    pub idempotency_key: Option<String>,
}

/// A task about to be inserted by a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// Id allocated by [`crate::store::Store::allocate_ids`].
    pub id: TaskId,
    /// Initial state (status `Pending`, attempts 0).
    pub state: TaskState,
    /// Payload and headers.
    pub body: TaskBody,
}

/// A partial update of a [`TaskState`]; `None` fields are left as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatePatch {
    /// New status.
    pub status: Option<TaskStatus>,
    /// New attempt count.
    pub attempts: Option<u32>,
    /// New not-before time.
    pub not_before_ms: Option<Millis>,
    /// New last error (`Some(None)` clears it).
    pub last_error: Option<Option<String>>,
    /// Always set: the time of this change.
    pub updated_ms: Millis,
}

/// Per-queue configuration. Persisted when changed from the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Default lease for a delivery.
    pub lease_ms: u64,
    /// Default delivery limit before a task is dead.
    pub max_attempts: u32,
    /// Retry backoff: first delay.
    pub backoff_min_ms: u64,
    /// Retry backoff: cap.
    pub backoff_max_ms: u64,
    /// Maximum pending tasks (ready + delayed + leased); 0 = unbounded.
    pub max_length: u64,
    /// Paused queues accept publishes but deliver nothing.
    pub paused: bool,
    /// How long succeeded and dead records are kept. 0: an ack removes the task at
    /// once (no result kept) and dead tasks stay until an operator acts.
    pub result_ttl_ms: u64,
    /// Whether an ack without a result keeps a succeeded record too. By default
    /// (`false`) only an ack that carries a result leaves a record (for `result_ttl_ms`);
    /// one without a result removes the task at once, as beanstalkd, RabbitMQ and SQS
    /// do, which spares the store the writes of a record nobody reads.
    pub keep_acked: bool,
    /// How long an idempotency key is remembered after its publish; 0 = keys are
    /// ignored.
    pub dedup_window_ms: u64,
    /// Most tasks of the queue leased at once, across all consumers; 0 = no cap.
    pub max_in_flight: u32,
    /// Most deliveries per second (token bucket); 0 = no limit.
    pub rate_limit: u32,
    /// Deliveries the bucket holds when full (0 = one second's worth, `rate_limit`).
    pub rate_burst: u32,
    /// A task not started by its expiry is removed instead of moved to the dead set.
    pub drop_expired: bool,
}

impl QueueConfig {
    /// The token bucket's capacity in deliveries (0 when the queue has no rate limit).
    pub fn effective_burst(&self) -> u32 {
        if self.rate_limit == 0 {
            0
        } else if self.rate_burst == 0 {
            self.rate_limit
        } else {
            self.rate_burst
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            lease_ms: 30_000,
            max_attempts: 5,
            backoff_min_ms: 1_000,
            backoff_max_ms: 300_000,
            max_length: 0,
            paused: false,
            result_ttl_ms: 3_600_000,
            keep_acked: false,
            dedup_window_ms: 300_000,
            max_in_flight: 0,
            rate_limit: 0,
            rate_burst: 0,
            drop_expired: false,
        }
    }
}

/// One change the broker asks the store to make durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Publish: write the state and the body of a new task.
    Insert(Box<NewTask>),
    /// Update part of a task's state (attempt counted, nacked, dead, redriven).
    Patch {
        /// The task.
        id: TaskId,
        /// What changes.
        patch: StatePatch,
    },
    /// Purge: delete the task's state, body and retained result.
    Remove {
        /// The task.
        id: TaskId,
    },
    /// Ack: the task succeeded. The store keeps a succeeded record (state and
    /// `result`, without the payload) for the queue's `result_ttl_ms`, or removes the
    /// task at once when that is 0. The engine asks for it only when the queue keeps
    /// the record: an ack with a result, or any ack on a `keep_acked` queue.
    Succeed {
        /// The task.
        id: TaskId,
        /// The ack's result payload (may be empty).
        result: Bytes,
        /// The time of the ack.
        updated_ms: Millis,
    },
    /// Retention sweep: removes succeeded and dead records and idempotency keys whose
    /// time ran out by `now`, examining at most `limit` expiry-index entries.
    Sweep {
        /// The sweep's clock.
        now: Millis,
        /// Most expiry-index entries examined by this one job.
        limit: u32,
    },
    /// Create or replace a queue's configuration record.
    PutQueue {
        /// Queue name.
        name: Arc<str>,
        /// Its configuration.
        config: QueueConfig,
    },
    /// Delete a queue's configuration record (its tasks are removed separately).
    RemoveQueue {
        /// Queue name.
        name: Arc<str>,
    },
    /// Create or replace a periodic schedule (also how a tick records its last run,
    /// in the same job as the task it publishes).
    PutSchedule(Box<Schedule>),
    /// Delete a schedule.
    RemoveSchedule {
        /// Schedule name.
        name: Arc<str>,
    },
    /// Cluster mode only: the Raft log entry (its leader's term and node, its index)
    /// whose mutations this job applies, recorded in the same batch so that a restart
    /// re-applies exactly from the next entry. Written by the state machine
    /// (`cluster/state.rs`), never by the broker.
    Applied {
        /// Term of the leader that wrote the entry.
        term: u64,
        /// That leader's node id.
        node: u64,
        /// The entry's index.
        index: u64,
    },
    /// Cluster mode only: the cluster's id, proposed once by the first leader that
    /// finds none (`server/lead.rs`). The first one applied stays: a later one is
    /// ignored, so the id never changes once set (membership changes, restarts).
    ClusterId(Arc<str>),
    /// The publish whose inserts precede it in the same job is number `sequence` of
    /// `producer`: the store applies the inserts only if that number is new, answers a
    /// repeat with the first publish's task ids (as duplicates), and refuses a number
    /// older than the last [`PRODUCER_RING`](crate::store::PRODUCER_RING) it remembers
    /// for the producer. Always the job's last mutation, after its inserts.
    Numbered {
        /// The producer's id (at most 128 bytes).
        producer: Arc<str>,
        /// The publish's number among the producer's.
        sequence: u64,
    },
}

/// What a schedule does with ticks that passed while it could not fire (the broker
/// was down or stalled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum CatchUp {
    /// Skip them.
    None = 0,
    /// Fire once, for the latest of them.
    #[default]
    One = 1,
    /// Fire each of them, oldest first.
    All = 2,
}

impl CatchUp {
    /// Decodes the persisted tag.
    pub fn from_u8(tag: u8) -> Option<CatchUp> {
        match tag {
            0 => Some(CatchUp::None),
            1 => Some(CatchUp::One),
            2 => Some(CatchUp::All),
            _ => None,
        }
    }

    /// The name used by the CLI and the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::One => "one",
            CatchUp::All => "all",
        }
    }
}

/// A periodic schedule as stored: what to publish, when, and how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Unique name (the queue-name alphabet).
    pub name: Arc<str>,
    /// Queue its tasks go to.
    pub queue: Arc<str>,
    /// Cron expression: six fields (seconds first) or the usual five.
    pub cron: String,
    /// IANA time zone the expression is read in ("UTC" by default).
    pub tz: String,
    /// Payload of every task it publishes.
    pub payload: Bytes,
    /// Headers of every task it publishes, in key order.
    pub headers: Vec<(String, Bytes)>,
    /// Priority of its tasks.
    pub priority: i32,
    /// Per-task delivery limit (0 = the queue's).
    pub max_attempts: u32,
    /// Missed ticks policy.
    pub catch_up: CatchUp,
    /// Paused schedules do not fire; ticks that pass while paused are skipped.
    pub paused: bool,
    /// No tick at or before this time fires (creation or resume time).
    pub since_ms: Millis,
    /// Time of the last tick that published (0 = never).
    pub last_run_ms: Millis,
    /// The task the last tick published (0 = none).
    pub last_task: TaskId,
    /// When the schedule was created.
    pub created_ms: Millis,
}

#[cfg(test)]
mod id_hasher_tests {
    use std::hash::{BuildHasher, BuildHasherDefault};

    use super::IdHasher;

    fn hash(id: u64) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(id)
    }

    /// What `IdMap` relies on: consecutive ids land in distinct buckets (the low bits)
    /// of any table up to their count, and their tags (hashbrown's top 7 bits) vary.
    #[test]
    fn consecutive_ids_spread_over_buckets_and_tags() {
        for start in [0u64, 1, 1 << 20, u64::MAX - 5000] {
            let mut buckets = std::collections::HashSet::new();
            let mut tags = std::collections::HashSet::new();
            for id in start..start + 4096 {
                buckets.insert(hash(id) & 4095);
                tags.insert(hash(id) >> 57);
            }
            assert_eq!(buckets.len(), 4096, "ids from {start} share a bucket");
            assert_eq!(tags.len(), 128, "ids from {start} use only some tags");
        }
    }
}
