//! A replicated entry read field by field from its bytes, straight into openraft's
//! `Entry` of `Command::Jobs`, without prost's intermediate `cluster` structs (a
//! follower decoded every task into a `pb::Insert` with its own `String`s and boxes,
//! then converted it into another): what a follower does with every AppendEntries and
//! the log with every entry it reads back from disk.
//!
//! Only the kinds a job of the hot path carries are taken (insert, patch, remove,
//! succeed, applied, numbered); an entry holding anything else (a blank entry, a
//! membership, a sweep, a queue or schedule change, the cluster id), a field this does
//! not know, an embedded message or a oneof given twice (prost would merge them), a
//! wire type other than the schema's, an unknown status or anything malformed returns
//! `None`, and the entry goes to prost and `entry_from`, which decide (and name the
//! error). So this never accepts what that path refuses and, for what it takes,
//! yields what that path would (`fast_tests` checks both on arbitrary entries and
//! bytes). Queue names and producer ids repeated within an entry share one `Arc<str>`.

use std::sync::Arc;

use bytes::Bytes;
use openraft::{CommittedLeaderId, EntryPayload};
use squall_proto::fields::{Fields, LEN, VARINT};

use crate::cluster::types::{Command, Entry, Job, LogId, Origin};
use crate::model::{Mutation, NewTask, StatePatch, TaskBody, TaskState, TaskStatus};

/// The entry in `body`, or `None` to leave it to prost.
pub(super) fn entry(body: &Bytes) -> Option<Entry> {
    let mut d = Decoder {
        body,
        names: Vec::new(),
    };
    let mut r = Fields::new(body, 0, body.len());
    let (mut log_id, mut jobs) = (None, None);
    while let Some((field, wire_type)) = r.key()? {
        match (field, wire_type) {
            (1, LEN) if log_id.is_none() => {
                let (from, to) = r.len_delimited()?;
                log_id = Some(d.log_id(from, to)?);
            }
            (12, LEN) if jobs.is_none() => {
                let (from, to) = r.len_delimited()?;
                jobs = Some(vec![d.job(from, to)?]);
            }
            (13, LEN) if jobs.is_none() => {
                let (from, to) = r.len_delimited()?;
                jobs = Some(d.jobs(from, to)?);
            }
            _ => return None,
        }
    }
    debug_assert!(r.at_end(), "every byte read");
    let (log_id, jobs) = (log_id?, jobs?);
    debug_assert!(!jobs.is_empty(), "an entry of jobs holds one at least");
    Some(Entry {
        log_id,
        payload: EntryPayload::Normal(Command::Jobs(jobs.into())),
    })
}

struct Decoder<'a> {
    body: &'a Bytes,
    /// The queue names and producer ids met so far in this entry.
    names: Vec<Arc<str>>,
}

impl<'a> Decoder<'a> {
    fn fields(&self, from: usize, to: usize) -> Fields<'a> {
        Fields::new(self.body, from, to)
    }

    /// A shared name equal to `s`: one already met in this entry if there is one
    /// (an entry's tasks mostly go to a few queues; past 8 names, a new allocation).
    fn name(&mut self, s: &str) -> Arc<str> {
        if let Some(known) = self.names.iter().find(|n| &***n == s) {
            return known.clone();
        }
        let name: Arc<str> = Arc::from(s);
        if self.names.len() < 8 {
            self.names.push(name.clone());
        }
        name
    }

    fn log_id(&mut self, from: usize, to: usize) -> Option<LogId> {
        let mut r = self.fields(from, to);
        let (mut term, mut node, mut index) = (0, 0, 0);
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1, VARINT) => term = r.varint()?,
                (2, VARINT) => node = r.varint()?,
                (3, VARINT) => index = r.varint()?,
                _ => return None,
            }
        }
        Some(LogId::new(CommittedLeaderId::new(term, node), index))
    }

    fn jobs(&mut self, from: usize, to: usize) -> Option<Vec<Job>> {
        let mut r = self.fields(from, to);
        let mut jobs = Vec::new();
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1, LEN) => {
                    let (from, to) = r.len_delimited()?;
                    jobs.push(self.job(from, to)?);
                }
                _ => return None,
            }
        }
        // No jobs: prost's path names the error.
        (!jobs.is_empty()).then_some(jobs)
    }

    fn job(&mut self, from: usize, to: usize) -> Option<Job> {
        let mut r = self.fields(from, to);
        let mut origin = Origin::default();
        let mut muts = Vec::new();
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1, VARINT) => origin.node = r.varint()?,
                (2, VARINT) => origin.run = r.varint()?,
                (3, VARINT) => origin.seq = r.varint()?,
                (4, LEN) => {
                    let (from, to) = r.len_delimited()?;
                    muts.push(self.mutation(from, to)?);
                }
                _ => return None,
            }
        }
        Some(Job {
            origin,
            muts: muts.into(),
        })
    }

    fn mutation(&mut self, from: usize, to: usize) -> Option<Mutation> {
        let mut r = self.fields(from, to);
        let mut kind = None;
        while let Some((field, wire_type)) = r.key()? {
            if kind.is_some() || wire_type != LEN {
                return None;
            }
            let (from, to) = r.len_delimited()?;
            kind = Some(match field {
                1 => self.insert(from, to)?,
                2 => self.patch(from, to)?,
                3 => Mutation::Remove {
                    id: self.task_ref(from, to)?,
                },
                4 => self.succeed(from, to)?,
                10 => {
                    let id = self.log_id(from, to)?;
                    Mutation::Applied {
                        term: id.leader_id.term,
                        node: id.leader_id.node_id,
                        index: id.index,
                    }
                }
                12 => self.numbered(from, to)?,
                _ => return None,
            });
        }
        kind
    }

    fn insert(&mut self, from: usize, to: usize) -> Option<Mutation> {
        let mut r = self.fields(from, to);
        let (mut id, mut state, mut body) = (0, None, None);
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1, VARINT) => id = r.varint()?,
                (2, LEN) if state.is_none() => {
                    let (from, to) = r.len_delimited()?;
                    state = Some(self.state(from, to)?);
                }
                (3, LEN) if body.is_none() => {
                    let (from, to) = r.len_delimited()?;
                    body = Some(self.task_body(from, to)?);
                }
                _ => return None,
            }
        }
        Some(Mutation::Insert(Box::new(NewTask {
            id,
            state: state?,
            body: body?,
        })))
    }

    fn state(&mut self, from: usize, to: usize) -> Option<TaskState> {
        let mut r = self.fields(from, to);
        let mut queue = None;
        let mut s = TaskState {
            queue: Arc::from(""),
            status: TaskStatus::Pending,
            priority: 0,
            attempts: 0,
            max_attempts: 0,
            lease_ms: 0,
            not_before_ms: 0,
            created_ms: 0,
            updated_ms: 0,
            last_error: None,
            expires_ms: 0,
        };
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1, LEN) => queue = Some(r.str()?),
                (2, VARINT) => s.status = status(r.varint()? as u32)?,
                // prost reads int32 and uint32 from a varint by truncation.
                (3, VARINT) => s.priority = r.varint()? as i32,
                (4, VARINT) => s.attempts = r.varint()? as u32,
                (5, VARINT) => s.max_attempts = r.varint()? as u32,
                (6, VARINT) => s.lease_ms = r.varint()?,
                (7, VARINT) => s.not_before_ms = r.varint()?,
                (8, VARINT) => s.created_ms = r.varint()?,
                (9, VARINT) => s.updated_ms = r.varint()?,
                (10, LEN) => s.last_error = Some(r.string()?),
                (11, VARINT) => s.expires_ms = r.varint()?,
                _ => return None,
            }
        }
        s.queue = self.name(queue.unwrap_or(""));
        Some(s)
    }

    fn task_body(&mut self, from: usize, to: usize) -> Option<TaskBody> {
        let mut r = self.fields(from, to);
        let mut b = TaskBody {
            created_ms: 0,
            payload: Bytes::new(),
            headers: Vec::new(),
            idempotency_key: None,
        };
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1, VARINT) => b.created_ms = r.varint()?,
                (2, LEN) => b.payload = r.bytes()?,
                (3, LEN) => {
                    let (from, to) = r.len_delimited()?;
                    b.headers.push(self.header(from, to)?);
                }
                (4, LEN) => b.idempotency_key = Some(r.string()?),
                _ => return None,
            }
        }
        Some(b)
    }

    fn header(&mut self, from: usize, to: usize) -> Option<(String, Bytes)> {
        let mut r = self.fields(from, to);
        let (mut key, mut value) = (String::new(), Bytes::new());
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1, LEN) => key = r.string()?,
                (2, LEN) => value = r.bytes()?,
                _ => return None,
            }
        }
        Some((key, value))
    }

    fn patch(&mut self, from: usize, to: usize) -> Option<Mutation> {
        let mut r = self.fields(from, to);
        let mut id = 0;
        let mut patch = StatePatch::default();
        let (mut set_last_error, mut last_error) = (false, None);
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1, VARINT) => id = r.varint()?,
                (2, VARINT) => patch.status = Some(status(r.varint()? as u32)?),
                (3, VARINT) => patch.attempts = Some(r.varint()? as u32),
                (4, VARINT) => patch.not_before_ms = Some(r.varint()?),
                (5, VARINT) => set_last_error = r.varint()? != 0,
                (6, LEN) => last_error = Some(r.string()?),
                (7, VARINT) => patch.updated_ms = r.varint()?,
                _ => return None,
            }
        }
        patch.last_error = set_last_error.then_some(last_error);
        Some(Mutation::Patch { id, patch })
    }

    fn task_ref(&mut self, from: usize, to: usize) -> Option<u64> {
        let mut r = self.fields(from, to);
        let mut id = 0;
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1, VARINT) => id = r.varint()?,
                _ => return None,
            }
        }
        Some(id)
    }

    fn succeed(&mut self, from: usize, to: usize) -> Option<Mutation> {
        let mut r = self.fields(from, to);
        let (mut id, mut result, mut updated_ms) = (0, Bytes::new(), 0);
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1, VARINT) => id = r.varint()?,
                (2, LEN) => result = r.bytes()?,
                (3, VARINT) => updated_ms = r.varint()?,
                _ => return None,
            }
        }
        Some(Mutation::Succeed {
            id,
            result,
            updated_ms,
        })
    }

    fn numbered(&mut self, from: usize, to: usize) -> Option<Mutation> {
        let mut r = self.fields(from, to);
        let (mut producer, mut sequence) = ("", 0);
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1, LEN) => producer = r.str()?,
                (2, VARINT) => sequence = r.varint()?,
                _ => return None,
            }
        }
        Some(Mutation::Numbered {
            producer: self.name(producer),
            sequence,
        })
    }
}

/// A task status this version knows; `None` leaves an unknown one to `entry_from`'s
/// error.
fn status(tag: u32) -> Option<TaskStatus> {
    u8::try_from(tag).ok().and_then(TaskStatus::from_u8)
}
