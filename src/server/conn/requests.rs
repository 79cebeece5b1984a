//! What the reader does with each request, one function per request kind: validate it
//! against the broker's limits, then answer at once, or hand it on — publishes to the
//! store writer (or to the hub, for bounded queues), result waits and payload reads
//! to the writer half, everything else to the hub. Each returns the reply to send now
//! (`Ok(Some)`), nothing when someone else answers later (`Ok(None)`), or why the
//! request is refused; the wire edge encodes whichever it is.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use squall_proto::{ErrorCode, PROTOCOL_VERSION};
use tracing::{debug, info};

use super::auth;
use super::reader::{Next, Reader};
use crate::broker::{Committed, NackMode, SubId};
use crate::model::{Mutation, NewTask, TaskBody, TaskId, TaskState, TaskStatus};
use crate::server::done::Done;
use crate::server::metrics::PublishTimer;
use crate::server::msg::{
    AdminOp, AdminRequest, Failure, Hello, HubCmd, Outbound, PublishJob, Reply, ReqId, Request,
    StateFilter, TaskSpec, Welcome,
};
use crate::store::Muts;

/// Longest nack reason kept; longer ones are cut.
const MAX_REASON_BYTES: usize = 4096;
/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 1024;

/// Longest producer id of a numbered publish.
const MAX_PRODUCER_ID_BYTES: usize = 128;
/// Longest client name kept (it names lease holders in task status).
const MAX_CLIENT_NAME_BYTES: usize = 256;
/// Peek size when the request names none.
const DEFAULT_PEEK: usize = 20;
/// Payload bytes a peeked task shows when the request names no preview size.
const DEFAULT_PREVIEW: usize = 1024;
/// Largest payload preview of a peeked task.
const MAX_PREVIEW: usize = 64 * 1024;
/// Queues per ListQueues page, by default and at most.
const MAX_LIST_PAGE: usize = 1000;
/// What one listed queue or peeked task costs an answer at most beyond its name,
/// payload preview and headers: counted against the connection's unsent budget
/// before the request goes to the hub (`answer_cost`).
const ITEM_OVERHEAD: usize = 512;
/// Longest cron expression or time-zone name accepted.
const MAX_CRON_BYTES: usize = 256;
/// Most schedules per list page.
const MAX_SCHEDULE_PAGE: usize = 100;

/// What a request function decided: a reply to send now, or `None` when someone else
/// answers later.
type Handled = Result<Option<Reply>, Failure>;

fn refused(code: ErrorCode, message: impl Into<String>) -> Failure {
    Failure::Protocol(code, message.into())
}

fn shutting_down() -> Failure {
    refused(ErrorCode::ShuttingDown, "the broker is shutting down")
}

impl Reader {
    /// Takes one decoded request: the connection-level checks, then its function.
    pub(super) fn handle(&mut self, id: ReqId, req: Option<Request>) -> Next {
        if id == 0 {
            self.close(
                0,
                ErrorCode::BadRequest,
                "request id 0 is reserved for connection-level errors".into(),
            );
            return Next::Close;
        }
        // Counted before anything answers it; the writer counts the answer.
        let inflight = self.flow.inflight.fetch_add(1, Relaxed);
        let handled = match req {
            None => Err(refused(
                ErrorCode::BadRequest,
                "request carries no operation",
            )),
            Some(req) => {
                let max = self.shared.config.max_inflight_requests;
                if inflight >= max && self.registered {
                    Err(refused(
                        ErrorCode::TooManyRequests,
                        format!("{max} requests on this connection are still unanswered (max_inflight_requests); wait for answers before sending more"),
                    ))
                } else if !self.registered {
                    return self.first(id, req);
                } else {
                    self.request(id, req)
                }
            }
        };
        match handled {
            Ok(Some(reply)) => self.reply(id, reply),
            Ok(None) => {}
            Err(failure) => self.reply(id, Reply::Refused(failure)),
        }
        Next::Continue
    }

    /// The first request must be Hello.
    fn first(&mut self, id: ReqId, req: Request) -> Next {
        match req {
            Request::Hello(h) => self.hello(id, h),
            _ => {
                self.close(
                    id,
                    ErrorCode::HelloRequired,
                    "the first request on a connection must be Hello".into(),
                );
                Next::Close
            }
        }
    }

    /// A request after Hello: authorised, then handed to its function.
    fn request(&mut self, id: ReqId, req: Request) -> Handled {
        if !self.unrestricted {
            auth::authorize(&self.grant, &req).map_err(|m| refused(ErrorCode::Forbidden, m))?;
        }
        match req {
            Request::Hello(_) => Err(refused(ErrorCode::BadRequest, "Hello was already received")),
            Request::Ping => Ok(Some(Reply::Pong)),
            Request::Publish { tasks, numbered } => self.publish(id, tasks, numbered),
            Request::Subscribe { queue, prefetch } => self.subscribe(id, queue, prefetch),
            Request::Unsubscribe { sub } => self.unsubscribe(id, sub),
            Request::Ack {
                task,
                token,
                result,
            } => self.ack(id, task, token, result),
            Request::Nack {
                task,
                token,
                dead,
                delay_ms,
                reason,
            } => self.nack(id, task, token, dead, delay_ms, reason),
            Request::Release { task, token } => self.release(id, task, token),
            Request::Extend {
                task,
                token,
                extend_ms,
            } => self.extend(id, task, token, extend_ms),
            Request::GetTask { task } => self.get_task(id, task),
            Request::GetPayload { task } => self.get_payload(id, task),
            Request::WaitResult { task, timeout_ms } => self.wait_result(id, task, timeout_ms),
            Request::Admin(a) => self.admin(id, a),
        }
    }

    /// Sends `cmd` to the hub, which answers later.
    fn ask_hub(&mut self, cmd: HubCmd) -> Handled {
        // This connection's publishes reach the writer before anything it asks the
        // hub after them (whose own store jobs then queue behind them).
        self.submit_held();
        self.shared.hub.send(cmd).map_err(|_| shutting_down())?;
        Ok(None)
    }

    fn hello(&mut self, id: ReqId, h: Hello) -> Next {
        if h.protocol_version != PROTOCOL_VERSION {
            self.close(
                id,
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported; this broker speaks {PROTOCOL_VERSION}",
                    h.protocol_version
                ),
            );
            return Next::Close;
        }
        let Some(grant) = self.shared.config.auth.authenticate(&h.token) else {
            info!(conn = self.id, peer = %self.peer, client = %h.client_name, "authentication failed: unknown or missing token");
            let msg = if h.token.is_empty() {
                "this broker requires a token (Hello.token; the CLI takes --token or SQUALL_TOKEN)"
            } else {
                "the token is not valid for this broker"
            };
            self.close(id, ErrorCode::Unauthenticated, msg.into());
            return Next::Close;
        };
        if let Some(p) = grant.prefixes() {
            let _ = self.flow.prefixes.set(p.clone());
        }
        self.unrestricted = grant.is_unrestricted();
        if self.shared.config.auth.is_enabled() {
            debug!(conn = self.id, peer = %self.peer, token = %grant.name, "authenticated");
        }
        self.grant = grant;
        let cluster = match &self.shared.lead {
            None => None,
            Some(lead) => match lead.admit() {
                Ok((leadership, view)) => {
                    self.cancel = leadership;
                    Some(view)
                }
                Err(why) => {
                    self.close(id, ErrorCode::NotLeader, why);
                    return Next::Close;
                }
            },
        };
        let registered = self.shared.hub.send(HubCmd::Register {
            conn: self.id,
            out: self.out.clone(),
            name: self.consumer_name(&h.client_name),
            peer: self.peer,
        });
        if registered.is_err() {
            self.close(
                id,
                ErrorCode::ShuttingDown,
                "the broker is shutting down".into(),
            );
            return Next::Close;
        }
        self.registered = true;
        debug!(conn = self.id, peer = %self.peer, client = %h.client_name, "hello");
        let cfg = &self.shared.config;
        let welcome = Welcome {
            node_id: cfg.node_id.clone(),
            max_frame_bytes: cfg.max_frame_bytes as u32,
            max_payload_bytes: cfg.max_payload_bytes as u32,
            max_batch: cfg.max_batch as u32,
            max_prefetch: cfg.max_prefetch,
            max_lease_ms: cfg.max_lease_ms,
            max_inflight_requests: cfg.max_inflight_requests,
            cluster,
        };
        self.reply(id, Reply::Hello(Box::new(welcome)));
        Next::Continue
    }

    /// How task status names this connection as a lease holder: its client name (cut
    /// to a bounded length), else its address.
    fn consumer_name(&self, client_name: &str) -> Arc<str> {
        if client_name.is_empty() {
            return Arc::from(self.peer.to_string());
        }
        let mut cut = client_name.len().min(MAX_CLIENT_NAME_BYTES);
        while !client_name.is_char_boundary(cut) {
            cut -= 1;
        }
        Arc::from(&client_name[..cut])
    }

    fn subscribe(&mut self, id: ReqId, queue: String, prefetch: u32) -> Handled {
        queue_name(&queue)?;
        let max = self.shared.config.max_prefetch;
        if prefetch == 0 || prefetch > max {
            return Err(refused(
                ErrorCode::BadRequest,
                format!("prefetch {prefetch} is outside 1..={max}"),
            ));
        }
        self.ask_hub(HubCmd::Subscribe {
            conn: self.id,
            req: id,
            queue,
            prefetch,
        })
    }

    fn unsubscribe(&mut self, id: ReqId, sub: SubId) -> Handled {
        self.ask_hub(HubCmd::Unsubscribe {
            conn: self.id,
            req: id,
            sub,
        })
    }

    fn ack(&mut self, id: ReqId, task: TaskId, token: u64, result: Bytes) -> Handled {
        let max = self.shared.config.max_payload_bytes;
        if result.len() > max {
            return Err(refused(
                ErrorCode::PayloadTooLarge,
                format!(
                    "ack result of {} bytes exceeds the maximum of {max} bytes; the task is still leased",
                    result.len()
                ),
            ));
        }
        self.ask_hub(HubCmd::Ack {
            conn: self.id,
            req: id,
            task,
            token,
            result,
        })
    }

    fn nack(
        &mut self,
        id: ReqId,
        task: TaskId,
        token: u64,
        dead: bool,
        delay_ms: Option<u64>,
        mut reason: String,
    ) -> Handled {
        let mode = match (dead, delay_ms) {
            (true, _) => NackMode::Dead,
            (false, Some(ms)) => NackMode::After(ms),
            (false, None) => NackMode::Backoff,
        };
        truncate_utf8(&mut reason, MAX_REASON_BYTES);
        self.ask_hub(HubCmd::Nack {
            conn: self.id,
            req: id,
            task,
            token,
            mode,
            reason,
        })
    }

    fn release(&mut self, id: ReqId, task: TaskId, token: u64) -> Handled {
        self.ask_hub(HubCmd::ReleaseUnseen {
            conn: self.id,
            req: id,
            task,
            token,
        })
    }

    fn extend(&mut self, id: ReqId, task: TaskId, token: u64, extend_ms: u64) -> Handled {
        self.ask_hub(HubCmd::Extend {
            conn: self.id,
            req: id,
            task,
            token,
            extend_ms,
        })
    }

    /// The hub adds the lease; the writer half reads the rest.
    fn get_task(&mut self, id: ReqId, task: TaskId) -> Handled {
        self.ask_hub(HubCmd::GetTask {
            conn: self.id,
            req: id,
            task,
        })
    }

    /// The writer half reads the payload.
    fn get_payload(&self, id: ReqId, task: TaskId) -> Handled {
        let _ = self.out.send(Outbound::Payload { req: id, task });
        Ok(None)
    }

    /// The writer half keeps the connection's waits.
    fn wait_result(&self, id: ReqId, task: TaskId, timeout_ms: u64) -> Handled {
        let _ = self.out.send(Outbound::Wait {
            req: id,
            task,
            timeout_ms,
        });
        Ok(None)
    }

    /// Validates an admin request, counts its answer against the unsent budget and
    /// hands it to the hub.
    fn admin(&mut self, id: ReqId, request: AdminRequest) -> Handled {
        if let AdminRequest::AddSchedule(spec) = &request {
            self.validate_schedule(spec)?;
        }
        let op = admin_op(request)?;
        self.flow.reserve(id, answer_cost(&op));
        self.ask_hub(HubCmd::Admin {
            conn: self.id,
            req: id,
            op,
        })
    }

    fn publish(
        &mut self,
        id: ReqId,
        tasks: Vec<TaskSpec>,
        numbered: Option<(String, u64)>,
    ) -> Handled {
        let n = tasks.len();
        let max = self.shared.config.max_batch;
        if n == 0 || n > max {
            return Err(refused(
                ErrorCode::BadRequest,
                format!("a publish carries 1..={max} tasks, not {n}"),
            ));
        }
        if let Some((producer, _)) = &numbered {
            if producer.len() > MAX_PRODUCER_ID_BYTES {
                return Err(refused(
                    ErrorCode::BadRequest,
                    format!(
                        "producer id of {} bytes exceeds the maximum of {MAX_PRODUCER_ID_BYTES} bytes",
                        producer.len()
                    ),
                ));
            }
        }
        for (i, t) in tasks.iter().enumerate() {
            if let Err((code, msg)) = self.validate_task(t) {
                let msg = if n > 1 {
                    format!("task {i} of the batch: {msg}; nothing was published")
                } else {
                    msg
                };
                return Err(refused(code, msg));
            }
        }
        let (arrived, now) = self.clock();
        let (muts, committed) = self.tasks_to_insert(tasks, numbered, now);
        let bounded = self.shared.bounded.applies(&committed);
        let job = PublishJob {
            out: self.out.clone(),
            req: id,
            hub: self.shared.hub.clone(),
            committed,
            timer: PublishTimer::start_at(arrived, &self.shared.metrics),
            reservation: None,
        };
        if !bounded {
            // Submitted with the other publishes of this read (`Reader::submit_held`).
            self.held.push((muts, Some(Done::Publish(job))));
            return Ok(None);
        }
        // Through the hub, which admits it or answers QUEUE_FULL; if the hub is gone
        // (shutting down), the publish was not submitted.
        self.ask_hub(HubCmd::Publish {
            muts,
            job: Box::new(job),
        })
    }

    /// What a schedule would publish must be publishable (the cron expression and the
    /// zone are the engine's to check).
    fn validate_schedule(&self, spec: &crate::broker::ScheduleSpec) -> Result<(), Failure> {
        queue_name(&spec.name)?;
        queue_name(&spec.queue)?;
        let max = self.shared.config.max_payload_bytes;
        let size = spec.payload.len()
            + spec
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > max {
            return Err(refused(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the schedule's payload and headers are {size} bytes; the maximum is {max}"
                ),
            ));
        }
        if spec.cron.len() > MAX_CRON_BYTES || spec.tz.len() > MAX_CRON_BYTES {
            return Err(refused(
                ErrorCode::InvalidSchedule,
                format!("cron expressions and time zones have at most {MAX_CRON_BYTES} bytes"),
            ));
        }
        Ok(())
    }

    fn validate_task(&self, t: &TaskSpec) -> Result<(), (ErrorCode, String)> {
        let cfg = &self.shared.config;
        squall_proto::validate_queue_name(&t.queue)
            .map_err(|e| (ErrorCode::InvalidQueueName, e.to_string()))?;
        if t.payload.is_empty() {
            return Err((ErrorCode::EmptyPayload, "task payload is empty".into()));
        }
        if t.payload.len() > cfg.max_payload_bytes {
            return Err((
                ErrorCode::PayloadTooLarge,
                format!(
                    "payload of {} bytes exceeds the maximum of {} bytes",
                    t.payload.len(),
                    cfg.max_payload_bytes
                ),
            ));
        }
        if t.lease_ms > cfg.max_lease_ms {
            return Err((
                ErrorCode::BadRequest,
                format!(
                    "lease of {} ms exceeds the maximum of {} ms",
                    t.lease_ms, cfg.max_lease_ms
                ),
            ));
        }
        if t.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err((
                ErrorCode::BadRequest,
                format!(
                    "idempotency key of {} bytes exceeds the maximum of {MAX_IDEMPOTENCY_KEY_BYTES} bytes",
                    t.idempotency_key.len()
                ),
            ));
        }
        Ok(())
    }

    /// The store inserts of a validated publish arrived at `now` (ms), with ids
    /// allocated (one run, in order: the store answers a repeated numbered publish with
    /// the first id plus the position), then its numbering if it has one, and what the
    /// engine learns once they are durable.
    fn tasks_to_insert(
        &mut self,
        tasks: Vec<TaskSpec>,
        numbered: Option<(String, u64)>,
        now: u64,
    ) -> (Muts, Vec<Committed>) {
        let n = tasks.len();
        let first = self.shared.store.allocate_ids(n as u64);
        // One task, not numbered (the common publish): one mutation, no vector for it.
        let single = n == 1 && numbered.is_none();
        let mut only = None;
        let mut muts = Vec::with_capacity(if single {
            0
        } else {
            n + usize::from(numbered.is_some())
        });
        let mut committed = Vec::with_capacity(n);
        for (i, t) in tasks.into_iter().enumerate() {
            let task_id = first + i as u64;
            let queue = self.intern(&t.queue);
            let delayed_until = if t.delay_ms > 0 {
                now.saturating_add(t.delay_ms)
            } else {
                0
            };
            let not_before_ms = delayed_until.max(t.run_at_ms);
            let expires_ms = match t.expires_in_ms {
                0 => 0,
                ms => now.saturating_add(ms),
            };
            committed.push(Committed {
                queue: queue.clone(),
                id: task_id,
                priority: t.priority,
                not_before_ms,
                max_attempts: t.max_attempts,
                lease_ms: t.lease_ms,
                expires_ms,
            });
            let insert = Mutation::Insert(Box::new(NewTask {
                id: task_id,
                state: TaskState {
                    queue,
                    status: TaskStatus::Pending,
                    priority: t.priority,
                    attempts: 0,
                    max_attempts: t.max_attempts,
                    lease_ms: t.lease_ms,
                    not_before_ms,
                    created_ms: now,
                    updated_ms: now,
                    last_error: None,
                    expires_ms,
                },
                body: TaskBody {
                    created_ms: now,
                    payload: t.payload,
                    headers: t.headers,
                    idempotency_key: Some(t.idempotency_key).filter(|k| !k.is_empty()),
                },
            }));
            if single {
                only = Some(insert);
            } else {
                muts.push(insert);
            }
        }
        debug_assert_eq!(muts.len() + usize::from(only.is_some()), n);
        if let Some((producer, sequence)) = numbered {
            muts.push(Mutation::Numbered {
                producer: Arc::from(producer),
                sequence,
            });
        }
        let muts = match only {
            Some(insert) => Muts::One(insert),
            None => Muts::Many(muts),
        };
        debug_assert!(matches!(muts, Muts::One(_)) == single);
        (muts, committed)
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        match &self.last_queue {
            Some(q) if &**q == name => q.clone(),
            _ => {
                let q: Arc<str> = Arc::from(name);
                self.last_queue = Some(q.clone());
                q
            }
        }
    }
}

/// Validates an admin request (cheap checks only: names and enums; the hub checks
/// configuration values against the queue's current ones).
fn admin_op(request: AdminRequest) -> Result<AdminOp, Failure> {
    let op = match request {
        AdminRequest::ListQueues { after, limit } => {
            if after.len() > squall_proto::MAX_QUEUE_NAME_LEN {
                return Err(refused(
                    ErrorCode::BadRequest,
                    format!(
                        "`after` is {} bytes long; queue names have at most {}",
                        after.len(),
                        squall_proto::MAX_QUEUE_NAME_LEN
                    ),
                ));
            }
            AdminOp::List {
                after,
                limit: match limit {
                    0 => MAX_LIST_PAGE,
                    n => (n as usize).min(MAX_LIST_PAGE),
                },
            }
        }
        AdminRequest::GetQueue { queue } => AdminOp::Get(queue_name(&queue).map(|()| queue)?),
        AdminRequest::SetQueueConfig { queue, update } => {
            queue_name(&queue)?;
            AdminOp::Configure(queue, update)
        }
        AdminRequest::SetPaused { queue, paused } => {
            queue_name(&queue)?;
            AdminOp::SetPaused(queue, paused)
        }
        AdminRequest::Peek {
            queue,
            state,
            limit,
            preview_bytes,
        } => {
            queue_name(&queue)?;
            AdminOp::Peek {
                queue,
                state: known_state(state)?.unwrap_or(crate::broker::TaskView::Ready),
                limit: match limit {
                    0 => DEFAULT_PEEK,
                    n => n as usize,
                },
                preview: match preview_bytes {
                    0 => DEFAULT_PREVIEW,
                    n => (n as usize).min(MAX_PREVIEW),
                },
            }
        }
        AdminRequest::Purge { queue, state } => {
            queue_name(&queue)?;
            AdminOp::Purge {
                queue,
                state: known_state(state)?,
            }
        }
        AdminRequest::Redrive { queue, limit } => {
            queue_name(&queue)?;
            AdminOp::Redrive {
                queue,
                limit: (limit > 0).then_some(limit as usize),
            }
        }
        AdminRequest::DeleteQueue { queue } => {
            queue_name(&queue)?;
            AdminOp::Delete(queue)
        }
        AdminRequest::AddSchedule(spec) => AdminOp::AddSchedule(spec),
        AdminRequest::ListSchedules { after, limit } => {
            queue_name(&after).or_else(|e| if after.is_empty() { Ok(()) } else { Err(e) })?;
            AdminOp::ListSchedules {
                after,
                limit: match limit {
                    0 => MAX_SCHEDULE_PAGE,
                    n => (n as usize).min(MAX_SCHEDULE_PAGE),
                },
            }
        }
        AdminRequest::RemoveSchedule { name } => {
            queue_name(&name)?;
            AdminOp::RemoveSchedule(name)
        }
        AdminRequest::SetSchedulePaused { name, paused } => {
            queue_name(&name)?;
            AdminOp::PauseSchedule(name, paused)
        }
    };
    Ok(op)
}

/// The most bytes an admin answer can take while it waits to be written, counted
/// against the connection's unsent budget before the hub builds it.
fn answer_cost(op: &AdminOp) -> usize {
    match op {
        AdminOp::List { limit, .. } => limit * (ITEM_OVERHEAD + squall_proto::MAX_QUEUE_NAME_LEN),
        AdminOp::Peek { limit, preview, .. } => {
            limit.min(&crate::broker::MAX_PEEK) * (ITEM_OVERHEAD + 2 * preview)
        }
        _ => ITEM_OVERHEAD,
    }
}

fn queue_name(name: &str) -> Result<(), Failure> {
    squall_proto::validate_queue_name(name)
        .map_err(|e| refused(ErrorCode::InvalidQueueName, e.to_string()))
}

fn known_state(filter: StateFilter) -> Result<Option<crate::broker::TaskView>, Failure> {
    match filter {
        StateFilter::Known(view) => Ok(view),
        StateFilter::Unknown(raw) => Err(refused(
            ErrorCode::BadRequest,
            format!("unknown task state {raw}; expected ready, delayed, leased or dead"),
        )),
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}
