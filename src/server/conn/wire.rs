//! The wire edge: the one module of the server that reads and builds
//! `squall_proto::v1` types. Requests are decoded into domain [`Request`]s; domain
//! replies, failures, deliveries and admin answers are encoded into frames. The
//! mapping of every failure to its fixed wire error code lives here, once ([`code`]).
//! No I/O, no store access, no decisions: what to answer is decided elsewhere.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use prost::Message;
use squall_proto::v1::{self, request::Op, response, server_message::Kind};
use squall_proto::{encode_frame, ErrorCode, FrameError, PROTOCOL_VERSION};

use crate::broker::{
    AdminError, Dispatch, EngineError, QueueConfigUpdate, ScheduleError, ScheduleSpec,
    ScheduleView, TaskView,
};
use crate::model::CatchUp;
use crate::model::{QueueConfig, TaskBody};
use crate::server::msg::{
    AdminRequest, Failure, Hello, PeekedTask, QueueStatus, Reply, ReqId, Request, StateFilter,
    TaskPayload, TaskPhase, TaskReport, TaskSpec, Welcome,
};

mod hot;

// ---------------------------------------------------------------------------------
// Requests.

/// Decodes one request frame: its id and its operation (`None`: the request carries
/// none).
pub(crate) fn decode_request(body: Bytes) -> Result<(ReqId, Option<Request>), FrameError> {
    // A publish without headers or an ack, in canonical form: read field by field.
    if let Some((id, request)) = hot::decode(&body) {
        return Ok((id, Some(request)));
    }
    decode_request_by_prost(body)
}

/// [`decode_request`] through prost's `v1` types: every request the hot path does not
/// take, and what the hot path is checked against.
fn decode_request_by_prost(body: Bytes) -> Result<(ReqId, Option<Request>), FrameError> {
    let req = v1::Request::decode(body).map_err(FrameError::from)?;
    Ok((req.id, req.op.map(request)))
}

fn request(op: Op) -> Request {
    match op {
        Op::Hello(h) => Request::Hello(Hello {
            protocol_version: h.protocol_version,
            client_name: h.client_name,
            token: h.token,
        }),
        Op::Ping(_) => Request::Ping,
        Op::Publish(v1::Publish {
            tasks,
            producer_id,
            sequence,
        }) => Request::Publish {
            tasks: tasks.into_iter().map(task_spec).collect(),
            numbered: (!producer_id.is_empty()).then_some((producer_id, sequence)),
        },
        Op::Subscribe(s) => Request::Subscribe {
            queue: s.queue,
            prefetch: s.prefetch,
        },
        Op::Unsubscribe(u) => Request::Unsubscribe {
            sub: u.subscription_id,
        },
        Op::Ack(a) => Request::Ack {
            task: a.task_id,
            token: a.lease_token,
            result: a.result,
        },
        Op::Nack(n) => Request::Nack {
            task: n.task_id,
            token: n.lease_token,
            dead: n.dead,
            delay_ms: n.delay_ms,
            reason: n.reason,
        },
        Op::Release(r) => Request::Release {
            task: r.task_id,
            token: r.lease_token,
        },
        Op::Extend(x) => Request::Extend {
            task: x.task_id,
            token: x.lease_token,
            extend_ms: x.extend_ms,
        },
        Op::GetTask(g) => Request::GetTask { task: g.task_id },
        Op::GetPayload(g) => Request::GetPayload { task: g.task_id },
        Op::WaitResult(w) => Request::WaitResult {
            task: w.task_id,
            timeout_ms: w.timeout_ms,
        },
        Op::ListQueues(l) => Request::Admin(AdminRequest::ListQueues {
            after: l.after,
            limit: l.limit,
        }),
        Op::GetQueue(g) => Request::Admin(AdminRequest::GetQueue { queue: g.queue }),
        Op::SetQueueConfig(c) => Request::Admin(AdminRequest::SetQueueConfig {
            queue: c.queue,
            update: QueueConfigUpdate {
                lease_ms: c.lease_ms,
                max_attempts: c.max_attempts,
                backoff_min_ms: c.backoff_min_ms,
                backoff_max_ms: c.backoff_max_ms,
                max_length: c.max_length,
                result_ttl_ms: c.result_ttl_ms,
                dedup_window_ms: c.dedup_window_ms,
                max_in_flight: c.max_in_flight,
                rate_limit: c.rate_limit,
                rate_burst: c.rate_burst,
                drop_expired: c.drop_expired,
                keep_acked: c.keep_acked,
            },
        }),
        Op::SetPaused(p) => Request::Admin(AdminRequest::SetPaused {
            queue: p.queue,
            paused: p.paused,
        }),
        Op::Peek(p) => Request::Admin(AdminRequest::Peek {
            queue: p.queue,
            state: state_filter(p.state),
            limit: p.limit,
            preview_bytes: p.preview_bytes,
        }),
        Op::Purge(p) => Request::Admin(AdminRequest::Purge {
            queue: p.queue,
            state: state_filter(p.state),
        }),
        Op::Redrive(r) => Request::Admin(AdminRequest::Redrive {
            queue: r.queue,
            limit: r.limit,
        }),
        Op::DeleteQueue(d) => Request::Admin(AdminRequest::DeleteQueue { queue: d.queue }),
        Op::AddSchedule(a) => Request::Admin(AdminRequest::AddSchedule(schedule_spec(
            a.schedule.unwrap_or_default(),
        ))),
        Op::ListSchedules(l) => Request::Admin(AdminRequest::ListSchedules {
            after: l.after,
            limit: l.limit,
        }),
        Op::RemoveSchedule(r) => Request::Admin(AdminRequest::RemoveSchedule { name: r.name }),
        Op::SetSchedulePaused(p) => Request::Admin(AdminRequest::SetSchedulePaused {
            name: p.name,
            paused: p.paused,
        }),
    }
}

fn schedule_spec(s: v1::ScheduleSpec) -> ScheduleSpec {
    let catch_up = match v1::CatchUp::try_from(s.catch_up) {
        Ok(v1::CatchUp::None) => CatchUp::None,
        Ok(v1::CatchUp::All) => CatchUp::All,
        // ONE is the default, and an unknown value from a newer client means it too.
        _ => CatchUp::One,
    };
    ScheduleSpec {
        name: s.name,
        queue: s.queue,
        cron: s.cron,
        tz: s.tz,
        payload: s.payload,
        headers: s.headers.into_iter().collect(),
        priority: s.priority,
        max_attempts: s.max_attempts,
        catch_up,
    }
}

fn wire_schedule(v: &ScheduleView) -> v1::ScheduleInfo {
    let s = &v.schedule;
    let catch_up = match s.catch_up {
        CatchUp::None => v1::CatchUp::None,
        CatchUp::One => v1::CatchUp::One,
        CatchUp::All => v1::CatchUp::All,
    };
    v1::ScheduleInfo {
        spec: Some(v1::ScheduleSpec {
            name: s.name.to_string(),
            queue: s.queue.to_string(),
            cron: s.cron.clone(),
            tz: s.tz.clone(),
            payload: s.payload.clone(),
            headers: s.headers.iter().cloned().collect(),
            priority: s.priority,
            max_attempts: s.max_attempts,
            catch_up: catch_up as i32,
        }),
        paused: s.paused,
        next_run_ms: v.next_run_ms,
        last_run_ms: s.last_run_ms,
        last_task_id: s.last_task,
        created_ms: s.created_ms,
    }
}

/// A page of schedules, cut where it would grow past `room` bytes.
pub(crate) fn schedule_list_answer(
    req: ReqId,
    list: &[ScheduleView],
    more: bool,
    room: usize,
) -> Answer {
    let mut size = Budget(room);
    let mut schedules = Vec::new();
    let mut cut = false;
    for v in list {
        let info = wire_schedule(v);
        if !size.admit(info.encoded_len()) {
            cut = true;
            break;
        }
        schedules.push(info);
    }
    Answer(response(
        req,
        response::Result::Schedules(v1::ScheduleList {
            schedules,
            more: more || cut,
        }),
    ))
}

fn task_spec(t: v1::TaskSpec) -> TaskSpec {
    TaskSpec {
        queue: t.queue,
        payload: t.payload,
        headers: t.headers.into_iter().collect(),
        priority: t.priority,
        delay_ms: t.delay_ms,
        run_at_ms: t.run_at_ms,
        max_attempts: t.max_attempts,
        lease_ms: t.lease_ms,
        idempotency_key: t.idempotency_key,
        expires_in_ms: t.expires_in_ms,
    }
}

fn state_filter(raw: i32) -> StateFilter {
    use v1::TaskStateFilter as F;
    match F::try_from(raw) {
        Ok(F::Unspecified) => StateFilter::Known(None),
        Ok(F::Ready) => StateFilter::Known(Some(TaskView::Ready)),
        Ok(F::Delayed) => StateFilter::Known(Some(TaskView::Delayed)),
        Ok(F::Leased) => StateFilter::Known(Some(TaskView::Leased)),
        Ok(F::Dead) => StateFilter::Known(Some(TaskView::Dead)),
        Err(_) => StateFilter::Unknown(raw),
    }
}

fn wire_state(s: TaskView) -> v1::TaskStateFilter {
    match s {
        TaskView::Ready => v1::TaskStateFilter::Ready,
        TaskView::Delayed => v1::TaskStateFilter::Delayed,
        TaskView::Leased => v1::TaskStateFilter::Leased,
        TaskView::Dead => v1::TaskStateFilter::Dead,
    }
}

// ---------------------------------------------------------------------------------
// Failures: the one mapping from a refusal to its wire error code.

/// The fixed wire code of a failure.
pub(crate) fn code(f: &Failure) -> ErrorCode {
    match f {
        Failure::Engine(EngineError::LeaseExpired { .. }) => ErrorCode::LeaseExpired,
        Failure::Engine(EngineError::DuplicateSubscription(_)) => ErrorCode::BadRequest,
        Failure::Engine(EngineError::NoSuchSubscription(_)) => ErrorCode::NotFound,
        Failure::Admin(AdminError::NoSuchQueue(_)) => ErrorCode::NotFound,
        Failure::Admin(AdminError::Invalid { .. }) => ErrorCode::BadRequest,
        Failure::Schedule(ScheduleError::Exists(_)) => ErrorCode::ScheduleExists,
        Failure::Schedule(
            ScheduleError::InvalidCron { .. }
            | ScheduleError::UnknownTimeZone(_)
            | ScheduleError::NeverFires(_),
        ) => ErrorCode::InvalidSchedule,
        Failure::Schedule(ScheduleError::NotFound(_)) => ErrorCode::NotFound,
        Failure::Schedule(ScheduleError::TooMany(_)) => ErrorCode::BadRequest,
        Failure::QueueFull(_) => ErrorCode::QueueFull,
        Failure::Storage(_) => ErrorCode::Storage,
        Failure::Internal(_) => ErrorCode::Internal,
        Failure::Protocol(code, _) => *code,
    }
}

/// A failure's code and message (the wire's `Error`, and the HTTP API's errors).
pub(crate) fn code_and_message(f: Failure) -> (ErrorCode, String) {
    let code = code(&f);
    let message = match f {
        Failure::Engine(e) => e.to_string(),
        Failure::Admin(e) => e.to_string(),
        Failure::Schedule(e) => e.to_string(),
        Failure::QueueFull(full) => full.to_string(),
        Failure::Storage(m) | Failure::Internal(m) | Failure::Protocol(_, m) => m,
    };
    (code, message)
}

fn error(f: Failure) -> v1::Error {
    let (code, message) = code_and_message(f);
    v1::Error {
        code: code as i32,
        message,
    }
}

// ---------------------------------------------------------------------------------
// Answers.

/// One answer (or connection-level error) ready to be encoded.
#[derive(Debug)]
pub(crate) struct Answer(v1::Response);

impl Answer {
    /// The answer to request `req`.
    pub(crate) fn reply(req: ReqId, reply: Reply) -> Answer {
        Answer(response(req, result(reply)))
    }

    /// The end of subscription `sub`, not asked for by the client.
    pub(crate) fn subscription_ended(sub: u64, queue: String, reason: &str) -> Answer {
        Answer(response(
            sub,
            response::Result::SubscriptionEnded(v1::SubscriptionEnded {
                queue,
                reason: reason.to_owned(),
            }),
        ))
    }

    /// The request it answers (0 for a connection-level error).
    pub(crate) fn id(&self) -> ReqId {
        self.0.id
    }

    /// Whether it answers a request (and so counts against `max_inflight_requests`):
    /// everything but connection-level errors (id 0) and the unrequested end of a
    /// subscription.
    pub(crate) fn is_answer(&self) -> bool {
        self.0.id != 0 && !matches!(self.0.result, Some(response::Result::SubscriptionEnded(_)))
    }

    /// Appends the answer as one frame; an answer above `max_frame` bytes is replaced by
    /// ANSWER_TOO_LARGE (never a frame the protocol's own limit refuses).
    pub(crate) fn put(self, buf: &mut BytesMut, max_frame: usize) {
        let (id, start) = (self.0.id, buf.len());
        if !put_common_answer(&self.0, buf) {
            encode_frame(&server_message(self.0), buf);
        }
        let len = buf.len() - start - squall_proto::LENGTH_PREFIX_BYTES;
        if len > max_frame {
            buf.truncate(start);
            let too_large = Reply::Refused(Failure::Protocol(
                ErrorCode::AnswerTooLarge,
                format!("the answer is {len} bytes, above the frame limit of {max_frame} bytes"),
            ));
            encode_frame(&server_message(response(id, result(too_large))), buf);
        }
    }
}

// Hand-written protobuf for the hottest frames (`put_common_answer`,
// `put_bare_delivery`), byte for byte what prost writes (`squall_proto::fields`).

use squall_proto::fields::{
    bytes_field_len, message_field_len, put_bytes_field, put_message_head, put_varint_field,
    varint_field_len,
};

/// Writes the two answers of the hot path, a publish's and a plain "ok", field by
/// field: prost works out each nested message's length twice (`ServerMessage`,
/// `Response`, `PublishOk`, `Published`), this once. The bytes are exactly prost's (a
/// test compares them). Returns `false`, writing nothing, for any other answer.
fn put_common_answer(r: &v1::Response, buf: &mut BytesMut) -> bool {
    let published = |t: &v1::Published| {
        varint_field_len(1, t.task_id) + varint_field_len(2, u64::from(t.duplicate))
    };
    let (field, body) = match &r.result {
        Some(response::Result::Ok(v1::Empty {})) => (13, 0),
        Some(response::Result::Publish(p)) => (
            11,
            p.tasks
                .iter()
                .map(|t| message_field_len(1, published(t)))
                .sum(),
        ),
        _ => return false,
    };
    let response = varint_field_len(1, r.id) + message_field_len(field, body);
    let mut out = squall_proto::frame_room(buf, message_field_len(1, response));
    put_message_head(&mut out, 1, response); // ServerMessage.response
    put_varint_field(&mut out, 1, r.id); // Response.id
    put_message_head(&mut out, field, body); // Response.publish or Response.ok
    if let Some(response::Result::Publish(p)) = &r.result {
        for t in &p.tasks {
            put_message_head(&mut out, 1, published(t)); // PublishOk.tasks
            put_varint_field(&mut out, 1, t.task_id); // Published.task_id
            put_varint_field(&mut out, 2, u64::from(t.duplicate)); // Published.duplicate
        }
    }
    debug_assert!(
        out.is_empty(),
        "a common answer's length was worked out wrong"
    );
    true
}

/// Appends an error frame (`req` 0: about the connection) without a size check.
pub(crate) fn put_error(req: ReqId, code: ErrorCode, message: String, buf: &mut BytesMut) {
    let r = response(
        req,
        result(Reply::Refused(Failure::Protocol(code, message))),
    );
    encode_frame(&server_message(r), buf);
}

fn response(id: ReqId, result: response::Result) -> v1::Response {
    v1::Response {
        id,
        result: Some(result),
    }
}

fn server_message(r: v1::Response) -> v1::ServerMessage {
    v1::ServerMessage {
        kind: Some(Kind::Response(r)),
    }
}

fn result(reply: Reply) -> response::Result {
    match reply {
        Reply::Ok => response::Result::Ok(v1::Empty {}),
        Reply::Pong => response::Result::Pong(v1::Pong {}),
        Reply::Hello(w) => response::Result::Hello(Box::new(hello_ok(*w))),
        Reply::Published(tasks) => response::Result::Publish(v1::PublishOk {
            // Same layout: collected in place, without a new allocation.
            tasks: tasks
                .into_iter()
                .map(|p| v1::Published {
                    task_id: p.task_id,
                    duplicate: p.duplicate,
                })
                .collect(),
        }),
        Reply::Subscribed(sub) => response::Result::Subscribe(v1::SubscribeOk {
            subscription_id: sub,
        }),
        Reply::Extended { deadline_ms } => response::Result::Extend(v1::ExtendOk { deadline_ms }),
        Reply::Count(count) => response::Result::Count(v1::CountOk { count }),
        Reply::Task(report) => response::Result::Task(Box::new(task_info(*report))),
        Reply::Payload(p) => response::Result::Payload(Box::new(task_payload(*p))),
        Reply::Schedule(v) => response::Result::Schedule(Box::new(wire_schedule(&v))),
        Reply::Refused(f) => response::Result::Error(error(f)),
    }
}

fn hello_ok(w: Welcome) -> v1::HelloOk {
    v1::HelloOk {
        protocol_version: PROTOCOL_VERSION,
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        node_id: w.node_id,
        limits: Some(v1::Limits {
            max_frame_bytes: w.max_frame_bytes,
            max_payload_bytes: w.max_payload_bytes,
            max_batch: w.max_batch,
            max_prefetch: w.max_prefetch,
            max_lease_ms: w.max_lease_ms,
            max_inflight_requests: w.max_inflight_requests,
        }),
        cluster: w.cluster.map(|c| v1::ClusterInfo {
            cluster_id: c.cluster_id,
            leader: c.leader,
            members: c
                .members
                .into_iter()
                .map(|(node_id, client_addr)| v1::ClusterMember {
                    node_id,
                    client_addr,
                })
                .collect(),
        }),
    }
}

fn task_info(r: TaskReport) -> v1::TaskInfo {
    let state = match r.state {
        TaskPhase::Unknown => v1::TaskState::Unknown,
        TaskPhase::Ready => v1::TaskState::Ready,
        TaskPhase::Delayed => v1::TaskState::Delayed,
        TaskPhase::Leased => v1::TaskState::Leased,
        TaskPhase::Succeeded => v1::TaskState::Succeeded,
        TaskPhase::Dead => v1::TaskState::Dead,
    };
    v1::TaskInfo {
        task_id: r.task_id,
        state: state as i32,
        queue: r.queue,
        priority: r.priority,
        attempts: r.attempts,
        max_attempts: r.max_attempts,
        last_error: r.last_error,
        lease: r.lease.map(|l| v1::LeaseHolder {
            connection_id: l.conn,
            consumer: l.consumer.to_string(),
            deadline_ms: l.deadline_ms,
        }),
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        not_before_ms: r.not_before_ms,
        result: r.result,
        expires_at_ms: r.expires_at_ms,
    }
}

fn task_payload(p: TaskPayload) -> v1::TaskPayload {
    v1::TaskPayload {
        task_id: p.task_id,
        queue: p.queue,
        payload: p.payload,
        headers: p.headers.into_iter().collect::<BTreeMap<_, _>>(),
    }
}

// ---------------------------------------------------------------------------------
// Deliveries.

/// Appends one delivery frame.
///
/// A delivery without headers (the common case) is written field by field, straight
/// from the dispatch and the stored body: no `v1::Delivery` is built (whose queue
/// name would be a fresh `String`), and its length is worked out once, where prost
/// works out a nested message's length twice. The bytes are exactly prost's (a test
/// compares them); a delivery with headers goes through prost.
pub(crate) fn put_delivery(d: Dispatch, body: TaskBody, buf: &mut BytesMut) {
    if body.headers.is_empty() {
        return put_bare_delivery(&d, &body, buf);
    }
    put_delivery_by_prost(d, body, buf);
}

/// `ServerMessage.delivery`'s field number.
const SERVER_MESSAGE_DELIVERY: u32 = 2;

fn put_bare_delivery(d: &Dispatch, body: &TaskBody, buf: &mut BytesMut) {
    let varints = [
        (1, d.sub),
        (2, d.task),
        (3, d.token),
        (4, u64::from(d.attempt)),
        (5, u64::from(d.max_attempts)),
        (6, d.deadline_ms),
        // An int32 is written as its sign-extended 64-bit varint.
        (7, i64::from(d.priority) as u64),
    ];
    let queue = d.queue.as_bytes();
    let inner = varints
        .iter()
        .map(|&(field, v)| varint_field_len(field, v))
        .sum::<usize>()
        + bytes_field_len(8, body.payload.len())
        + varint_field_len(10, body.created_ms)
        + bytes_field_len(11, queue.len());
    let mut out = squall_proto::frame_room(buf, message_field_len(SERVER_MESSAGE_DELIVERY, inner));
    put_message_head(&mut out, SERVER_MESSAGE_DELIVERY, inner);
    for (field, value) in varints {
        put_varint_field(&mut out, field, value);
    }
    put_bytes_field(&mut out, 8, &body.payload);
    put_varint_field(&mut out, 10, body.created_ms);
    put_bytes_field(&mut out, 11, queue);
    debug_assert!(
        out.is_empty(),
        "a bare delivery's length was worked out wrong"
    );
}

fn put_delivery_by_prost(d: Dispatch, body: TaskBody, buf: &mut BytesMut) {
    let msg = v1::ServerMessage {
        kind: Some(Kind::Delivery(v1::Delivery {
            subscription_id: d.sub,
            task_id: d.task,
            lease_token: d.token,
            attempt: d.attempt,
            max_attempts: d.max_attempts,
            deadline_ms: d.deadline_ms,
            priority: d.priority,
            payload: body.payload,
            headers: body.headers.into_iter().collect(),
            created_at_ms: body.created_ms,
            queue: d.queue.to_string(),
        })),
    };
    encode_frame(&msg, buf);
}

// ---------------------------------------------------------------------------------
// Admin answers: lists and peeks stop before they grow past the room they have.

/// One queue (GetQueue, SetQueueConfig, SetPaused), with its oldest ready task's age.
pub(crate) fn queue_answer(req: ReqId, queue: Option<(&QueueStatus, Option<u64>)>) -> Answer {
    match queue {
        Some((q, age)) => Answer(response(
            req,
            response::Result::Queue(Box::new(queue_info(q, age))),
        )),
        None => Answer::reply(
            req,
            Reply::Refused(Failure::Internal("no queue to report".into())),
        ),
    }
}

/// A page of queues, cut where it would grow past `room` bytes (and then saying that
/// more follow, as it does when the page is not the last: `more`).
pub(crate) fn queue_list_answer<'a>(
    req: ReqId,
    statuses: impl Iterator<Item = (&'a QueueStatus, Option<u64>)>,
    more: bool,
    room: usize,
) -> Answer {
    let mut size = Budget(room);
    let mut queues = Vec::new();
    let mut cut = false;
    for (q, age) in statuses {
        let info = queue_info(q, age);
        if !size.admit(info.encoded_len()) {
            cut = true;
            break;
        }
        queues.push(info);
    }
    let more = more || cut;
    Answer(response(
        req,
        response::Result::Queues(v1::QueueList { queues, more }),
    ))
}

/// Peeked tasks, cut where they would grow past `room` bytes. Items read as `None`
/// (settled or removed since the hub looked) are skipped; a read error answers STORAGE.
pub(crate) fn peek_answer<E: std::fmt::Display>(
    req: ReqId,
    items: impl Iterator<Item = Result<Option<PeekedTask>, E>>,
    room: usize,
) -> Answer {
    let mut size = Budget(room);
    let mut tasks = Vec::new();
    let mut more = false;
    for item in items {
        match item.map(|t| t.map(peeked_task)) {
            Ok(Some(t)) if !size.admit(t.encoded_len()) => {
                more = true;
                break;
            }
            Ok(Some(t)) => tasks.push(t),
            Ok(None) => {}
            Err(e) => {
                let failure = Failure::Storage(format!("cannot read a peeked task: {e}"));
                return Answer::reply(req, Reply::Refused(failure));
            }
        }
    }
    Answer(response(
        req,
        response::Result::Peek(v1::PeekOk { tasks, more }),
    ))
}

/// Bytes left for the items of one answer.
struct Budget(usize);

impl Budget {
    /// Counts an item of `len` bytes (plus its tag and length prefix) if it fits.
    fn admit(&mut self, len: usize) -> bool {
        let cost = len + 1 + prost::length_delimiter_len(len);
        match self.0.checked_sub(cost) {
            Some(left) => {
                self.0 = left;
                true
            }
            None => false,
        }
    }
}

fn queue_info(q: &QueueStatus, oldest_ready_age_ms: Option<u64>) -> v1::QueueInfo {
    let s = &q.snapshot;
    let c = &s.counters;
    let r = &q.rates;
    v1::QueueInfo {
        name: s.name.to_string(),
        ready: s.ready,
        delayed: s.delayed,
        leased: s.leased,
        dead: s.dead,
        consumers: s.consumers,
        published: c.published,
        delivered: c.delivered,
        acked: c.acked,
        nacked: c.nacked,
        expired: c.expired,
        dead_lettered: c.dead_lettered,
        redelivered: c.redelivered,
        expired_tasks: c.expired_tasks,
        rates: Some(v1::QueueRates {
            published: r.published,
            delivered: r.delivered,
            acked: r.acked,
            nacked: r.nacked,
            expired: r.expired,
            dead_lettered: r.dead_lettered,
        }),
        oldest_ready_age_ms,
        paused: s.config.paused,
        config: Some(settings(&s.config)),
    }
}

fn settings(c: &QueueConfig) -> v1::QueueSettings {
    v1::QueueSettings {
        lease_ms: c.lease_ms,
        max_attempts: c.max_attempts,
        backoff_min_ms: c.backoff_min_ms,
        backoff_max_ms: c.backoff_max_ms,
        max_length: c.max_length,
        result_ttl_ms: c.result_ttl_ms,
        dedup_window_ms: c.dedup_window_ms,
        paused: c.paused,
        max_in_flight: c.max_in_flight,
        rate_limit: c.rate_limit,
        rate_burst: c.rate_burst,
        drop_expired: c.drop_expired,
        keep_acked: c.keep_acked,
    }
}

fn peeked_task(p: PeekedTask) -> v1::PeekedTask {
    v1::PeekedTask {
        task_id: p.task_id,
        state: wire_state(p.state) as i32,
        priority: p.priority,
        attempts: p.attempts,
        max_attempts: p.max_attempts,
        created_at_ms: p.created_at_ms,
        updated_at_ms: p.updated_at_ms,
        not_before_ms: p.not_before_ms,
        lease_holder: p.lease_holder,
        lease_deadline_ms: p.lease_deadline_ms,
        last_error: p.last_error,
        payload: p.payload,
        headers: p.headers.into_iter().collect(),
        truncated: p.truncated,
        payload_bytes: p.payload_bytes,
    }
}

#[cfg(test)]
mod delivery_tests {
    use std::sync::Arc;

    use bytes::{Bytes, BytesMut};
    use proptest::prelude::*;

    use crate::broker::Dispatch;
    use crate::model::TaskBody;
    use crate::server::conn::wire::{
        put_bare_delivery, put_common_answer, put_delivery_by_prost, server_message,
    };
    use squall_proto::v1::{self, response};

    fn frames(d: Dispatch, body: TaskBody) -> (BytesMut, BytesMut) {
        let mut direct = BytesMut::from(&b"earlier frame"[..]);
        put_bare_delivery(&d, &body, &mut direct);
        let mut prost = BytesMut::from(&b"earlier frame"[..]);
        put_delivery_by_prost(d, body, &mut prost);
        (direct, prost)
    }

    proptest! {
        /// The field-by-field delivery is prost's encoding byte for byte, zeros
        /// (skipped fields), negative priorities and long payloads included, and it
        /// appends after what the buffer holds.
        #[test]
        fn a_bare_delivery_is_prosts_encoding_byte_for_byte(
            sub in prop_oneof![Just(0u64), any::<u64>()],
            task in prop_oneof![Just(0u64), any::<u64>()],
            token in any::<u64>(),
            attempt in prop_oneof![Just(0u32), any::<u32>()],
            max_attempts in any::<u32>(),
            deadline_ms in any::<u64>(),
            priority in prop_oneof![Just(0i32), Just(-1i32), any::<i32>()],
            created_ms in prop_oneof![Just(0u64), any::<u64>()],
            payload_len in prop_oneof![Just(0usize), 1usize..200, 16_000usize..20_000],
            queue in "[a-z.-]{0,40}",
        ) {
            let d = Dispatch {
                conn: 7,
                sub,
                task,
                token,
                attempt,
                max_attempts,
                deadline_ms,
                priority,
                queue: Arc::from(queue.as_str()),
            };
            let body = TaskBody {
                created_ms,
                payload: Bytes::from(vec![0xA5; payload_len]),
                headers: Vec::new(),
                idempotency_key: Some("not on the wire".into()),
            };
            let (direct, prost) = frames(d, body);
            prop_assert_eq!(direct, prost);
        }

        /// The field-by-field publish and "ok" answers are prost's encoding byte for
        /// byte (request id 0, task id 0, duplicates, several tasks, none).
        #[test]
        fn a_common_answer_is_prosts_encoding_byte_for_byte(
            id in prop_oneof![Just(0u64), any::<u64>()],
            tasks in proptest::collection::vec(
                (prop_oneof![Just(0u64), any::<u64>()], any::<bool>()),
                0..70,
            ),
            ok in any::<bool>(),
        ) {
            let result = if ok {
                response::Result::Ok(v1::Empty {})
            } else {
                response::Result::Publish(v1::PublishOk {
                    tasks: tasks
                        .into_iter()
                        .map(|(task_id, duplicate)| v1::Published { task_id, duplicate })
                        .collect(),
                })
            };
            let r = v1::Response { id, result: Some(result) };
            let mut direct = BytesMut::from(&b"earlier frame"[..]);
            prop_assert!(put_common_answer(&r, &mut direct));
            let mut prost = BytesMut::from(&b"earlier frame"[..]);
            squall_proto::encode_frame(&server_message(r), &mut prost);
            prop_assert_eq!(direct, prost);
        }
    }

    #[test]
    fn other_answers_are_left_to_prost() {
        let r = v1::Response {
            id: 3,
            result: Some(response::Result::Pong(v1::Pong {})),
        };
        let mut buf = BytesMut::new();
        assert!(!put_common_answer(&r, &mut buf));
        assert!(
            buf.is_empty(),
            "nothing is written for an answer it does not handle"
        );
    }
}

#[cfg(test)]
mod hot_tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use proptest::prelude::*;
    use prost::Message;

    use crate::server::conn::wire::{decode_request_by_prost, hot};
    use squall_proto::v1::{self, request::Op};

    fn task_spec() -> impl Strategy<Value = v1::TaskSpec> {
        (
            ("[a-z.-]{0,12}", "\\PC{0,3}"),
            prop::collection::vec(any::<u8>(), 0..40),
            prop_oneof![
                4 => Just(BTreeMap::new()),
                1 => prop::collection::btree_map("[a-z]{0,3}", prop::collection::vec(any::<u8>(), 0..4).prop_map(Bytes::from), 1..3),
            ],
            (prop_oneof![Just(0i32), Just(-1), any::<i32>()], any::<u64>(), any::<u64>()),
            (any::<u32>(), any::<u64>(), "\\PC{0,4}", any::<u64>()),
        )
            .prop_map(
                |((queue, tail), payload, headers, (priority, delay_ms, run_at_ms), (max_attempts, lease_ms, idempotency_key, expires_in_ms))| {
                    v1::TaskSpec {
                        queue: queue + &tail,
                        payload: Bytes::from(payload),
                        headers,
                        priority,
                        delay_ms,
                        run_at_ms,
                        max_attempts,
                        lease_ms,
                        idempotency_key,
                        expires_in_ms,
                    }
                },
            )
    }

    fn request() -> impl Strategy<Value = v1::Request> {
        let op = prop_oneof![
            4 => (prop::collection::vec(task_spec(), 0..3), "[a-z0-9]{0,6}", any::<u64>())
                .prop_map(|(tasks, producer_id, sequence)| Some(Op::Publish(v1::Publish {
                    tasks,
                    producer_id,
                    sequence,
                }))),
            4 => (any::<u64>(), any::<u64>(), prop::collection::vec(any::<u8>(), 0..8))
                .prop_map(|(task_id, lease_token, result)| Some(Op::Ack(v1::Ack {
                    task_id,
                    lease_token,
                    result: Bytes::from(result),
                }))),
            1 => (any::<u64>(), any::<u64>()).prop_map(|(task_id, lease_token)| Some(Op::Nack(v1::Nack {
                task_id,
                lease_token,
                ..Default::default()
            }))),
            1 => Just(Some(Op::Ping(v1::Ping {}))),
            1 => Just(None),
        ];
        (prop_oneof![Just(0u64), any::<u64>()], op).prop_map(|(id, op)| v1::Request { id, op })
    }

    /// Whatever the hot path takes, prost takes too and reads the same.
    fn same_as_prost(bytes: &[u8]) -> Result<bool, TestCaseError> {
        let body = Bytes::copy_from_slice(bytes);
        let Some((id, fast)) = hot::decode(&body) else {
            return Ok(false);
        };
        let slow = decode_request_by_prost(body);
        prop_assert!(
            slow.is_ok(),
            "prost refuses what the hot path took: {fast:?}"
        );
        let (slow_id, slow) = slow.unwrap();
        prop_assert_eq!(id, slow_id);
        prop_assert_eq!(format!("{fast:?}"), format!("{:?}", slow.unwrap()));
        Ok(true)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A publish without headers and an ack are taken by the hot path, and read as
        /// prost reads them; anything else is left to prost.
        #[test]
        fn the_hot_path_reads_what_prost_reads(req in request()) {
            let bytes = req.encode_to_vec();
            let taken = same_as_prost(&bytes)?;
            let canonical = match &req.op {
                Some(Op::Publish(p)) => p.tasks.iter().all(|t| t.headers.is_empty()),
                Some(Op::Ack(_)) => true,
                _ => false,
            };
            prop_assert_eq!(taken, canonical, "{:?}", req);
        }

        /// Damaged requests (a byte changed, cut short, or a field appended) are either
        /// left to prost or read exactly as prost reads them.
        #[test]
        fn damaged_requests_are_never_read_otherwise_than_by_prost(
            req in request(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            how in 0..3u8,
            extra in prop::collection::vec(any::<u8>(), 1..6),
        ) {
            let mut bytes = req.encode_to_vec();
            crate::testing::damage(&mut bytes, at, byte, how, &extra);
            same_as_prost(&bytes)?;
        }

        /// Arbitrary bytes likewise.
        #[test]
        fn arbitrary_bytes_are_never_read_otherwise_than_by_prost(
            bytes in prop::collection::vec(any::<u8>(), 0..48),
        ) {
            same_as_prost(&bytes)?;
        }
    }
}
