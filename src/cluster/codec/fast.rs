//! A replicated entry read field by field from its bytes, straight into openraft's
//! `Entry` of `Command::Jobs`, and written from it, without prost's intermediate
//! `cluster` structs (a follower decoded every task into a `pb::Insert` with its own
//! `String`s and boxes, then converted it into another; the leader cloned every task
//! into one to encode it): what a follower does with every AppendEntries, the log with
//! every entry it reads back from disk, and the leader with every entry it appends.
//! The bytes written are exactly prost's, so either side may be either path.
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
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use squall_proto::fields::{
    bytes_field_len, message_field_len, put_bytes_field, put_message_head, put_varint_field,
    varint_field_len, Fields, LEN, VARINT,
};

use crate::cluster::types::{Command, Entry, Event, Job, JobSketch, LogId, Origin, Received};
use crate::model::{Mutation, NewTask, StatePatch, TaskBody, TaskState, TaskStatus};

/// The entry in `body`, or `None` to leave it to prost.
pub(super) fn entry(body: &Bytes) -> Option<Entry> {
    let mut d = Decoder::new(body);
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
    /// The placeholder a task's state holds until its queue's name is read.
    no_name: Arc<str>,
}

impl<'a> Decoder<'a> {
    fn new(body: &'a Bytes) -> Decoder<'a> {
        Decoder {
            body,
            names: Vec::new(),
            no_name: Arc::from(""),
        }
    }

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
        // Counted first (keys and lengths only): an entry carries hundreds of jobs,
        // which a growing vector would move (and reallocate) several times.
        let mut count = self.fields(from, to);
        let mut n = 0;
        while let Some((field, wire_type)) = count.key()? {
            if (field, wire_type) != (1, LEN) {
                return None;
            }
            count.len_delimited()?;
            n += 1;
        }
        let mut r = self.fields(from, to);
        let mut jobs = Vec::with_capacity(n);
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1, LEN) => {
                    let (from, to) = r.len_delimited()?;
                    jobs.push(self.job(from, to)?);
                }
                _ => return None,
            }
        }
        debug_assert_eq!(jobs.len(), n);
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
        Some(Job::new(origin, muts.into()))
    }

    /// The one field of a mutation message (its kind) and where that field's message
    /// lies; `None` for none, two, or another wire type.
    fn kind_of(&self, from: usize, to: usize) -> Option<(u64, usize, usize)> {
        let mut r = self.fields(from, to);
        let mut kind = None;
        while let Some((field, wire_type)) = r.key()? {
            if kind.is_some() || wire_type != LEN {
                return None;
            }
            let (from, to) = r.len_delimited()?;
            kind = Some((field, from, to));
        }
        kind
    }

    fn mutation(&mut self, from: usize, to: usize) -> Option<Mutation> {
        let (field, from, to) = self.kind_of(from, to)?;
        Some(match field {
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
        })
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
            // Shared by the entry's tasks until the real name is read (no allocation
            // and free per task).
            queue: self.no_name.clone(),
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

/// Another leader's entry in `body`, read for its events only ([`Command::Received`]),
/// or `None` where [`entry`] would not take it (and then it is decoded whole). What
/// this accepts, `entry` accepts: every field is checked as `entry` checks it (wire
/// types, statuses, UTF-8), only nothing is built, so a member refuses a malformed
/// entry when it arrives, not when it applies it (`fast_tests`).
pub(crate) fn sketch(body: &Bytes) -> Option<Entry> {
    let mut r = Fields::new(body, 0, body.len());
    let mut d = Decoder::new(body);
    let mut s = Sketcher {
        jobs: Vec::new(),
        events: Vec::new(),
        payload_bytes: 0,
        mutations: 0,
    };
    let (mut log_id, mut seen_jobs) = (None, false);
    while let Some((field, wire_type)) = r.key()? {
        match (field, wire_type) {
            (1, LEN) if log_id.is_none() => {
                let (from, to) = r.len_delimited()?;
                log_id = Some(d.log_id(from, to)?);
            }
            (12, LEN) if !seen_jobs => {
                let (from, to) = r.len_delimited()?;
                s.job(&mut d, from, to)?;
                seen_jobs = true;
            }
            (13, LEN) if !seen_jobs => {
                let (from, to) = r.len_delimited()?;
                let mut jobs = d.fields(from, to);
                while let Some((field, wire_type)) = jobs.key()? {
                    if (field, wire_type) != (1, LEN) {
                        return None;
                    }
                    let (from, to) = jobs.len_delimited()?;
                    s.job(&mut d, from, to)?;
                }
                seen_jobs = true;
            }
            _ => return None,
        }
    }
    // No jobs: `entry` would not take it either.
    if s.jobs.is_empty() {
        return None;
    }
    Some(Entry {
        log_id: log_id?,
        payload: EntryPayload::Normal(Command::Received(Arc::new(Received {
            bytes: body.clone(),
            jobs: s.jobs,
            events: s.events,
            payload_bytes: s.payload_bytes,
            mutations: s.mutations,
        }))),
    })
}

/// Decodes jobs of one [`Received`] entry whole (as [`entry`] decodes them), its
/// queue names and producer ids shared across them as `entry` shares them.
pub(crate) struct JobReader<'a>(Decoder<'a>);

impl<'a> JobReader<'a> {
    pub(crate) fn new(received: &'a Received) -> JobReader<'a> {
        JobReader(Decoder::new(&received.bytes))
    }

    /// The job whose message lies at `at` (a [`JobSketch::at`]).
    pub(crate) fn job(&mut self, at: std::ops::Range<usize>) -> Option<Job> {
        self.0.job(at.start, at.end)
    }
}

/// Every job of a [`Received`] entry, decoded whole.
pub(crate) fn received_jobs(received: &Received) -> Option<Vec<Job>> {
    let mut reader = JobReader::new(received);
    received
        .jobs
        .iter()
        .map(|job| reader.job(job.at.clone()))
        .collect()
}

/// What [`sketch`] gathers.
struct Sketcher {
    jobs: Vec<JobSketch>,
    events: Vec<Event>,
    payload_bytes: usize,
    mutations: usize,
}

impl Sketcher {
    fn job(&mut self, d: &mut Decoder<'_>, from: usize, to: usize) -> Option<()> {
        let mut r = d.fields(from, to);
        let first_event = self.events.len();
        let first_mutation = self.mutations;
        let (mut publish, mut numbered, mut first_created_ms) = (true, None, None);
        let mut any = false;
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1..=3, VARINT) => {
                    r.varint()?;
                }
                (4, LEN) => {
                    let (from, to) = r.len_delimited()?;
                    // A numbering comes last in a publish: anything after it is not one.
                    if numbered.is_some() {
                        publish = false;
                    }
                    self.mutations += 1;
                    any = true;
                    match self.mutation(d, from, to)? {
                        Sketched::Insert(created_ms) => {
                            first_created_ms.get_or_insert(created_ms);
                        }
                        Sketched::Numbered(producer, sequence) => {
                            numbered = Some((producer, sequence));
                        }
                        Sketched::Other => publish = false,
                    }
                }
                _ => return None,
            }
        }
        // A numbering without inserts before it is no publish (`check_numbering`).
        let publish = any && publish && first_created_ms.is_some();
        self.jobs.push(JobSketch {
            at: from..to,
            events: first_event..self.events.len(),
            mutations: self.mutations - first_mutation,
            publish,
            numbered,
            first_created_ms: first_created_ms.unwrap_or(0),
        });
        Some(())
    }

    fn mutation(&mut self, d: &mut Decoder<'_>, from: usize, to: usize) -> Option<Sketched> {
        let (field, from, to) = d.kind_of(from, to)?;
        Some(match field {
            1 => self.insert(d, from, to)?,
            // Read whole: they are checked as `entry` checks them.
            2 | 4 => {
                let touched = if field == 2 {
                    d.patch(from, to)?
                } else {
                    d.succeed(from, to)?
                };
                let (Mutation::Patch { id, .. } | Mutation::Succeed { id, .. }) = touched else {
                    return None;
                };
                self.events.push(Event::Touch(id));
                Sketched::Other
            }
            3 => {
                self.events.push(Event::Remove(d.task_ref(from, to)?));
                Sketched::Other
            }
            10 => {
                d.log_id(from, to)?;
                Sketched::Other
            }
            12 => match d.numbered(from, to)? {
                Mutation::Numbered { producer, sequence } => Sketched::Numbered(producer, sequence),
                _ => return None,
            },
            _ => return None,
        })
    }

    /// An insert, checked as `Decoder::insert` checks it; its creation time.
    fn insert(&mut self, d: &mut Decoder<'_>, from: usize, to: usize) -> Option<Sketched> {
        let mut r = d.fields(from, to);
        let (mut id, mut created_ms, mut nettable) = (0, None, None);
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1, VARINT) => id = r.varint()?,
                (2, LEN) if created_ms.is_none() => {
                    let (from, to) = r.len_delimited()?;
                    created_ms = Some(check_state(d.fields(from, to))?);
                }
                (3, LEN) if nettable.is_none() => {
                    let (from, to) = r.len_delimited()?;
                    let (payload, key) = self.check_body(d, from, to)?;
                    self.payload_bytes += payload;
                    nettable = Some(!key);
                }
                _ => return None,
            }
        }
        self.events.push(Event::Insert {
            id,
            nettable: nettable?,
        });
        Some(Sketched::Insert(created_ms?))
    }

    /// A task body, checked as `Decoder::task_body` checks it: its payload's length
    /// and whether it has an idempotency key.
    fn check_body(&mut self, d: &mut Decoder<'_>, from: usize, to: usize) -> Option<(usize, bool)> {
        let mut r = d.fields(from, to);
        let (mut payload, mut key) = (0, false);
        while let Some((field, wire_type)) = r.key()? {
            match (field, wire_type) {
                (1, VARINT) => {
                    r.varint()?;
                }
                (2, LEN) => {
                    let (from, to) = r.len_delimited()?;
                    payload = to - from;
                }
                (3, LEN) => {
                    let (from, to) = r.len_delimited()?;
                    let mut h = d.fields(from, to);
                    while let Some((field, wire_type)) = h.key()? {
                        match (field, wire_type) {
                            (1, LEN) => {
                                h.str()?;
                            }
                            (2, LEN) => {
                                h.len_delimited()?;
                            }
                            _ => return None,
                        }
                    }
                }
                (4, LEN) => {
                    r.str()?;
                    key = true;
                }
                _ => return None,
            }
        }
        Some((payload, key))
    }
}

/// A task state, checked as `Decoder::state` checks it; its creation time.
fn check_state(mut r: Fields<'_>) -> Option<u64> {
    let mut created_ms = 0;
    while let Some((field, wire_type)) = r.key()? {
        match (field, wire_type) {
            (1 | 10, LEN) => {
                r.str()?;
            }
            (2, VARINT) => {
                status(r.varint()? as u32)?;
            }
            (3 | 4 | 5 | 6 | 7 | 9 | 11, VARINT) => {
                r.varint()?;
            }
            (8, VARINT) => created_ms = r.varint()?,
            _ => return None,
        }
    }
    Some(created_ms)
}

/// What one mutation of a sketched job was.
enum Sketched {
    Insert(u64),
    Numbered(Arc<str>, u64),
    Other,
}

/// A task status this version knows; `None` leaves an unknown one to `entry_from`'s
/// error.
fn status(tag: u32) -> Option<TaskStatus> {
    u8::try_from(tag).ok().and_then(TaskStatus::from_u8)
}

/// Whether a mutation is of the kinds this file reads and writes.
pub(super) fn hot(m: &Mutation) -> bool {
    matches!(
        m,
        Mutation::Insert(_)
            | Mutation::Patch { .. }
            | Mutation::Remove { .. }
            | Mutation::Succeed { .. }
            | Mutation::Applied { .. }
            | Mutation::Numbered { .. }
    )
}

/// The encoding of `entry`, byte for byte what prost makes of `entry_to(entry)`
/// (`fast_tests` checks it), written straight from the domain types, for an entry
/// whose jobs hold only the hot path's kinds; `None` for any other entry. What the
/// leader does with every entry it appends (and then sends to every follower).
pub(super) fn entry_bytes(entry: &Entry) -> Option<Bytes> {
    let EntryPayload::Normal(Command::Jobs(jobs)) = &entry.payload else {
        return None;
    };
    if !jobs.iter().all(|job| job.muts.iter().all(hot)) {
        return None;
    }
    let id = &entry.log_id;
    let log_id = log_id_len(id.leader_id.term, id.leader_id.node_id, id.index);
    let (tag, payload) = match &jobs[..] {
        [one] => (12, job_len(one)),
        many => (
            13,
            many.iter().map(|j| message_field_len(1, job_len(j))).sum(),
        ),
    };
    let total = message_field_len(1, log_id) + message_field_len(tag, payload);
    let mut w = Vec::with_capacity(total);
    put_message_head(&mut w, 1, log_id);
    put_log_id(&mut w, id.leader_id.term, id.leader_id.node_id, id.index);
    put_message_head(&mut w, tag, payload);
    match &jobs[..] {
        [one] => put_job(&mut w, one),
        many => {
            for job in many {
                put_message_head(&mut w, 1, job_len(job));
                put_job(&mut w, job);
            }
        }
    }
    debug_assert_eq!(w.len(), total, "lengths and writes agree");
    Some(w.into())
}

/// An `optional` varint field: present when set, even to 0.
fn opt_len(tag: u32, v: Option<u64>) -> usize {
    v.map_or(0, |v| key_len(tag) + encoded_len_varint(v))
}

/// An `optional` string: present when set, even to "".
fn opt_str_len(tag: u32, s: Option<&str>) -> usize {
    s.map_or(0, |s| message_field_len(tag, s.len()))
}

fn put_opt(w: &mut Vec<u8>, tag: u32, v: Option<u64>) {
    if let Some(v) = v {
        encode_key(tag, WireType::Varint, w);
        encode_varint(v, w);
    }
}

fn put_opt_str(w: &mut Vec<u8>, tag: u32, s: Option<&str>) {
    if let Some(s) = s {
        put_message_head(w, tag, s.len());
        w.extend_from_slice(s.as_bytes());
    }
}

fn log_id_len(term: u64, node: u64, index: u64) -> usize {
    varint_field_len(1, term) + varint_field_len(2, node) + varint_field_len(3, index)
}

fn put_log_id(w: &mut Vec<u8>, term: u64, node: u64, index: u64) {
    put_varint_field(w, 1, term);
    put_varint_field(w, 2, node);
    put_varint_field(w, 3, index);
}

fn job_len(job: &Job) -> usize {
    let Origin { node, run, seq } = job.origin;
    let muts: usize = job
        .muts
        .iter()
        .map(|m| message_field_len(4, mutation_len(m)))
        .sum();
    varint_field_len(1, node) + varint_field_len(2, run) + varint_field_len(3, seq) + muts
}

fn put_job(w: &mut Vec<u8>, job: &Job) {
    let Origin { node, run, seq } = job.origin;
    put_varint_field(w, 1, node);
    put_varint_field(w, 2, run);
    put_varint_field(w, 3, seq);
    for m in job.muts.iter() {
        put_message_head(w, 4, mutation_len(m));
        put_mutation(w, m);
    }
}

/// The mutation message's size: its one kind, a message field.
fn mutation_len(m: &Mutation) -> usize {
    let (tag, len) = kind_len(m);
    message_field_len(tag, len)
}

/// The kind's field number and its message's size.
fn kind_len(m: &Mutation) -> (u32, usize) {
    match m {
        Mutation::Insert(task) => {
            let NewTask { id, state, body } = &**task;
            let len = varint_field_len(1, *id)
                + message_field_len(2, state_len(state))
                + message_field_len(3, task_body_len(body));
            (1, len)
        }
        Mutation::Patch { id, patch } => (2, patch_len(*id, patch)),
        Mutation::Remove { id } => (3, varint_field_len(1, *id)),
        Mutation::Succeed {
            id,
            result,
            updated_ms,
        } => (
            4,
            varint_field_len(1, *id)
                + bytes_field_len(2, result.len())
                + varint_field_len(3, *updated_ms),
        ),
        Mutation::Applied { term, node, index } => (10, log_id_len(*term, *node, *index)),
        Mutation::Numbered { producer, sequence } => (
            12,
            bytes_field_len(1, producer.len()) + varint_field_len(2, *sequence),
        ),
        _ => unreachable!("only the hot path's kinds are written here"),
    }
}

fn put_mutation(w: &mut Vec<u8>, m: &Mutation) {
    let (tag, len) = kind_len(m);
    put_message_head(w, tag, len);
    match m {
        Mutation::Insert(task) => {
            let NewTask { id, state, body } = &**task;
            put_varint_field(w, 1, *id);
            put_message_head(w, 2, state_len(state));
            put_state(w, state);
            put_message_head(w, 3, task_body_len(body));
            put_task_body(w, body);
        }
        Mutation::Patch { id, patch } => put_patch(w, *id, patch),
        Mutation::Remove { id } => put_varint_field(w, 1, *id),
        Mutation::Succeed {
            id,
            result,
            updated_ms,
        } => {
            put_varint_field(w, 1, *id);
            put_bytes_field(w, 2, result);
            put_varint_field(w, 3, *updated_ms);
        }
        Mutation::Applied { term, node, index } => put_log_id(w, *term, *node, *index),
        Mutation::Numbered { producer, sequence } => {
            put_bytes_field(w, 1, producer.as_bytes());
            put_varint_field(w, 2, *sequence);
        }
        _ => unreachable!("only the hot path's kinds are written here"),
    }
}

fn state_len(s: &TaskState) -> usize {
    let TaskState {
        queue,
        status,
        priority,
        attempts,
        max_attempts,
        lease_ms,
        not_before_ms,
        created_ms,
        updated_ms,
        last_error,
        expires_ms,
    } = s;
    bytes_field_len(1, queue.len())
        + varint_field_len(2, *status as u64)
        // prost writes an int32 as its 64-bit sign extension.
        + varint_field_len(3, i64::from(*priority) as u64)
        + varint_field_len(4, u64::from(*attempts))
        + varint_field_len(5, u64::from(*max_attempts))
        + varint_field_len(6, *lease_ms)
        + varint_field_len(7, *not_before_ms)
        + varint_field_len(8, *created_ms)
        + varint_field_len(9, *updated_ms)
        + opt_str_len(10, last_error.as_deref())
        + varint_field_len(11, *expires_ms)
}

fn put_state(w: &mut Vec<u8>, s: &TaskState) {
    put_bytes_field(w, 1, s.queue.as_bytes());
    put_varint_field(w, 2, s.status as u64);
    put_varint_field(w, 3, i64::from(s.priority) as u64);
    put_varint_field(w, 4, u64::from(s.attempts));
    put_varint_field(w, 5, u64::from(s.max_attempts));
    put_varint_field(w, 6, s.lease_ms);
    put_varint_field(w, 7, s.not_before_ms);
    put_varint_field(w, 8, s.created_ms);
    put_varint_field(w, 9, s.updated_ms);
    put_opt_str(w, 10, s.last_error.as_deref());
    put_varint_field(w, 11, s.expires_ms);
}

fn header_len(key: &str, value: &[u8]) -> usize {
    bytes_field_len(1, key.len()) + bytes_field_len(2, value.len())
}

fn task_body_len(b: &TaskBody) -> usize {
    let TaskBody {
        created_ms,
        payload,
        headers,
        idempotency_key,
    } = b;
    let headers: usize = headers
        .iter()
        .map(|(k, v)| message_field_len(3, header_len(k, v)))
        .sum();
    varint_field_len(1, *created_ms)
        + bytes_field_len(2, payload.len())
        + headers
        + opt_str_len(4, idempotency_key.as_deref())
}

fn put_task_body(w: &mut Vec<u8>, b: &TaskBody) {
    put_varint_field(w, 1, b.created_ms);
    put_bytes_field(w, 2, &b.payload);
    for (key, value) in &b.headers {
        put_message_head(w, 3, header_len(key, value));
        put_bytes_field(w, 1, key.as_bytes());
        put_bytes_field(w, 2, value);
    }
    put_opt_str(w, 4, b.idempotency_key.as_deref());
}

fn patch_len(id: u64, p: &StatePatch) -> usize {
    let StatePatch {
        status,
        attempts,
        not_before_ms,
        last_error,
        updated_ms,
    } = p;
    varint_field_len(1, id)
        + opt_len(2, status.map(|s| s as u64))
        + opt_len(3, attempts.map(u64::from))
        + opt_len(4, *not_before_ms)
        + varint_field_len(5, u64::from(last_error.is_some()))
        + opt_str_len(6, last_error.as_ref().and_then(|e| e.as_deref()))
        + varint_field_len(7, *updated_ms)
}

fn put_patch(w: &mut Vec<u8>, id: u64, p: &StatePatch) {
    put_varint_field(w, 1, id);
    put_opt(w, 2, p.status.map(|s| s as u64));
    put_opt(w, 3, p.attempts.map(u64::from));
    put_opt(w, 4, p.not_before_ms);
    put_varint_field(w, 5, u64::from(p.last_error.is_some()));
    put_opt_str(w, 6, p.last_error.as_ref().and_then(|e| e.as_deref()));
    put_varint_field(w, 7, p.updated_ms);
}
