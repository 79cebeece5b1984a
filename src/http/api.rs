//! The JSON API under `/api/v1` (reads, actions, the OpenAPI document) and the probes
//! and metrics at the root. Each handler checks the caller and the input, asks the
//! [`Backend`](super::Backend), and answers JSON; every error is an
//! [`ApiError`] with the broker's error code name. The OpenAPI document is generated
//! from these handlers and the types in `types.rs` (utoipa), so it cannot drift from
//! them; `/api/v1/openapi.json` serves it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use squall_proto::ErrorCode;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::auth::{self, Admin, Reader};
use super::backend::{Action, ActionDone};
use super::error::ApiError;
use super::events;
use super::types::*;
use super::App;

/// Most queues per list page (and per live update).
pub(crate) const MAX_LIST: u32 = 1000;
/// Most tasks per peek.
pub(crate) const MAX_PEEK: u32 = crate::broker::MAX_PEEK as u32;
/// Tasks per peek when the query names no limit.
pub(crate) const DEFAULT_PEEK: u32 = 20;
/// Largest payload preview.
pub(crate) const MAX_PREVIEW: u32 = 64 * 1024;
/// Preview when the query names none.
pub(crate) const DEFAULT_PREVIEW: u32 = 1024;
/// Most connections listed.
pub(crate) const MAX_CONNECTIONS_LISTED: usize = 1000;
/// Largest request body (actions take small JSON objects).
const MAX_BODY: usize = 64 * 1024;
/// How long a read waits for the broker.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an action waits to be durable before answering 503 (it may still happen).
const ACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// A JSON body whose rejections are [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct ApiJson<T>(pub(crate) T);

/// A query string whose rejections are [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct ApiQuery<T>(pub(crate) T);

/// Path parameters whose rejections are [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub(crate) T);

/// The body of actions that take no parameters: `{}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Empty {}

pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/queues", get(list_queues))
        .route("/api/v1/queues/{name}", get(get_queue))
        .route("/api/v1/queues/{name}/tasks", get(peek_tasks))
        .route("/api/v1/queues/{name}/pause", post(pause))
        .route("/api/v1/queues/{name}/resume", post(resume))
        .route("/api/v1/queues/{name}/purge", post(purge))
        .route("/api/v1/queues/{name}/redrive", post(redrive))
        .route("/api/v1/queues/{name}/config", post(configure))
        .route("/api/v1/queues/{name}/delete", post(delete_queue))
        .route("/api/v1/schedules", get(list_schedules))
        .route("/api/v1/tasks/{id}", get(get_task))
        .route("/api/v1/connections", get(list_connections))
        .route("/api/v1/events", get(events::events))
        .route("/api/v1/{*rest}", axum::routing::any(no_such_endpoint))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// A known path asked with a method it does not serve.
pub(crate) async fn method_not_allowed() -> Response {
    let e = ApiError::bad_request("this path does not serve that method; see /api/v1/openapi.json");
    (StatusCode::METHOD_NOT_ALLOWED, Json(e.body())).into_response()
}

async fn no_such_endpoint() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint; see /api/v1/openapi.json",
    )
}

/// Waits for the broker at most `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(
            ErrorCode::Timeout,
            format!(
                "the broker did not answer within {} s; an action may still complete",
                limit.as_secs()
            ),
        )),
    }
}

/// `INVALID_QUEUE_NAME` unless `name` is a queue name.
pub(crate) fn valid_queue(name: &str) -> Result<(), ApiError> {
    squall_proto::validate_queue_name(name)
        .map_err(|e| ApiError::new(ErrorCode::InvalidQueueName, e.to_string()))
}

/// A list query's `after` (a name: `what` names have the queue-name alphabet) and
/// limit, or `BAD_REQUEST`.
fn list_range(q: ListQuery, what: &str) -> Result<(String, usize), ApiError> {
    let limit = in_range("limit", q.limit, MAX_LIST, MAX_LIST)?;
    let after = q.after.unwrap_or_default();
    if after.len() > squall_proto::MAX_QUEUE_NAME_LEN {
        return Err(ApiError::bad_request(format!(
            "`after` is {} bytes long; {what} names have at most {}",
            after.len(),
            squall_proto::MAX_QUEUE_NAME_LEN
        )));
    }
    Ok((after, limit))
}

/// `BAD_REQUEST` unless `value` (default `default`) is within `1..=max`.
pub(crate) fn in_range(
    what: &str,
    value: Option<u32>,
    default: u32,
    max: u32,
) -> Result<usize, ApiError> {
    let v = value.unwrap_or(default);
    if v == 0 || v > max {
        return Err(ApiError::bad_request(format!(
            "{what} is {v}; it must be between 1 and {max}"
        )));
    }
    Ok(v as usize)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    match app.backend.health().failed {
        Some(f) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store failed, restart the broker: {f}\n"),
        ),
        None => text(StatusCode::OK, "ok\n"),
    }
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let h = app.backend.health();
    match (h.failed, h.unavailable) {
        (Some(f), _) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store failed, restart the broker: {f}\n"),
        ),
        // Not ready while nothing can be stored, but healthy: a restart would not
        // bring disk space back, and the broker resumes by itself.
        (None, Some(reason)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
        (None, None) if h.ready => text(StatusCode::OK, "ready\n"),
        (None, None) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: recovering or shutting down\n",
        ),
    }
}

async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if app.protect_metrics {
        if let Err(e) = auth::grant(&app, &headers) {
            return e.into_response();
        }
    }
    // Prometheus asks for OpenMetrics; curl, browsers and older scrapers get text.
    let openmetrics = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match within(READ_TIMEOUT, app.backend.metrics(openmetrics)).await {
        Ok(m) => (
            [(CONTENT_TYPE, HeaderValue::from_static(m.content_type))],
            m.body,
        )
            .into_response(),
        Err(e) => text(e.status(), format!("{}\n", e.message)),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Squall HTTP API",
        description = "Queues, tasks, schedules, connections and administrative actions of \
            one Squall broker. With `[[auth.tokens]]` configured every endpoint needs `Authorization: \
            Bearer <token>`; actions need the admin role. Actions take a JSON body \
            (`{}` when empty). Errors are `{code, message}` with the broker's error code names."
    ),
    paths(
        overview, list_queues, get_queue, peek_tasks, list_schedules, get_task,
        list_connections, events_doc, pause, resume, purge, redrive, configure, delete_queue
    ),
    components(schemas(ErrorBody, Empty)),
    modifiers(&BearerAuth),
    security((), ("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of the API, as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

async fn openapi() -> Response {
    (
        [(CONTENT_TYPE, "application/json")],
        ApiDoc::openapi().to_json().unwrap_or_default(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/overview", tag = "broker",
    responses((status = 200, body = Overview), (status = 401, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn overview(State(app): State<Arc<App>>, _: Reader) -> Result<Json<Overview>, ApiError> {
    within(READ_TIMEOUT, app.backend.overview()).await.map(Json)
}

#[utoipa::path(get, path = "/api/v1/queues", tag = "queues", params(ListQuery),
    responses((status = 200, body = QueuePage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_queues(
    State(app): State<Arc<App>>,
    who: Reader,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<QueuePage>, ApiError> {
    let (after, limit) = list_range(q, "queue")?;
    let mut page = within(READ_TIMEOUT, app.backend.queues(after, limit)).await?;
    page.queues.retain(|q| who.0.allows_queue(&q.name));
    Ok(Json(page))
}

#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules", params(ListQuery),
    responses((status = 200, body = SchedulePage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_schedules(
    State(app): State<Arc<App>>,
    who: Reader,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<SchedulePage>, ApiError> {
    let (after, limit) = list_range(q, "schedule")?;
    let mut page = within(READ_TIMEOUT, app.backend.schedules(after, limit)).await?;
    // A token limited to some queues sees the schedules that publish to them.
    page.schedules.retain(|s| who.0.allows_queue(&s.queue));
    Ok(Json(page))
}

#[utoipa::path(get, path = "/api/v1/queues/{name}", tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn get_queue(
    State(app): State<Arc<App>>,
    who: Reader,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<QueueView>, ApiError> {
    valid_queue(&name)?;
    who.check_queue(&name)?;
    within(READ_TIMEOUT, app.backend.queue(name))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/api/v1/queues/{name}/tasks", tag = "queues",
    params(("name" = String, Path, description = "Queue name"), PeekQuery),
    responses((status = 200, body = TaskList), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn peek_tasks(
    State(app): State<Arc<App>>,
    who: Reader,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<PeekQuery>,
) -> Result<Json<TaskList>, ApiError> {
    valid_queue(&name)?;
    let limit = in_range("limit", q.limit, DEFAULT_PEEK, MAX_PEEK)?;
    let preview = in_range(
        "preview_bytes",
        q.preview_bytes,
        DEFAULT_PREVIEW,
        MAX_PREVIEW,
    )?;
    who.check_queue(&name)?;
    let state = q.state.unwrap_or(PeekState::Ready);
    within(READ_TIMEOUT, app.backend.peek(name, state, limit, preview))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks",
    params(("id" = u64, Path, description = "Task id", minimum = 0)),
    responses((status = 200, body = TaskDetail), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn get_task(
    State(app): State<Arc<App>>,
    who: Reader,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<TaskDetail>, ApiError> {
    let task = within(READ_TIMEOUT, app.backend.task(id)).await?;
    if !task.queue.is_empty() {
        who.check_queue(&task.queue)?;
    }
    Ok(Json(task))
}

#[utoipa::path(get, path = "/api/v1/connections", tag = "broker",
    responses((status = 200, body = ConnectionList), (status = 401, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn list_connections(
    State(app): State<Arc<App>>,
    who: Reader,
) -> Result<Json<ConnectionList>, ApiError> {
    let mut list = within(
        READ_TIMEOUT,
        app.backend.connections(MAX_CONNECTIONS_LISTED),
    )
    .await?;
    for c in &mut list.connections {
        c.subscriptions.retain(|s| who.0.allows_queue(&s.queue));
    }
    Ok(Json(list))
}

/// Live updates: a `queues` event ([`QueuesEvent`]) every second.
#[utoipa::path(get, path = "/api/v1/events", tag = "broker",
    responses((status = 200, description = "Server-sent events: `queues` events whose data \
        is a QueuesEvent, every second", content_type = "text/event-stream", body = QueuesEvent),
        (status = 401, body = ErrorBody)))]
#[allow(dead_code)]
fn events_doc() {}

async fn act(app: &App, who: &Admin, action: Action) -> Result<Response, ApiError> {
    valid_queue(action.queue())?;
    who.0.check_queue(action.queue())?;
    match within(ACTION_TIMEOUT, app.backend.act(action)).await? {
        ActionDone::Queue(q) => Ok(Json(*q).into_response()),
        ActionDone::Count(count) => Ok(Json(Count { count }).into_response()),
    }
}

#[utoipa::path(post, path = "/api/v1/queues/{name}/pause", tag = "actions",
    params(("name" = String, Path, description = "Queue name")), request_body = Empty,
    responses((status = 200, description = "The queue, paused, once durable", body = QueueView),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn pause(
    State(app): State<Arc<App>>,
    who: Admin,
    ApiPath(name): ApiPath<String>,
    ApiJson(Empty {}): ApiJson<Empty>,
) -> Result<Response, ApiError> {
    act(&app, &who, Action::Pause(name)).await
}

#[utoipa::path(post, path = "/api/v1/queues/{name}/resume", tag = "actions",
    params(("name" = String, Path, description = "Queue name")), request_body = Empty,
    responses((status = 200, description = "The queue, delivering, once durable", body = QueueView),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn resume(
    State(app): State<Arc<App>>,
    who: Admin,
    ApiPath(name): ApiPath<String>,
    ApiJson(Empty {}): ApiJson<Empty>,
) -> Result<Response, ApiError> {
    act(&app, &who, Action::Resume(name)).await
}

#[utoipa::path(post, path = "/api/v1/queues/{name}/purge", tag = "actions",
    params(("name" = String, Path, description = "Queue name")), request_body = PurgeRequest,
    responses((status = 200, description = "Tasks removed, once durable", body = Count),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn purge(
    State(app): State<Arc<App>>,
    who: Admin,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PurgeRequest>,
) -> Result<Response, ApiError> {
    let action = Action::Purge {
        queue: name,
        state: body.state,
    };
    act(&app, &who, action).await
}

#[utoipa::path(post, path = "/api/v1/queues/{name}/redrive", tag = "actions",
    params(("name" = String, Path, description = "Queue name")), request_body = RedriveRequest,
    responses((status = 200, description = "Dead tasks moved back to ready, once durable", body = Count),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn redrive(
    State(app): State<Arc<App>>,
    who: Admin,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<RedriveRequest>,
) -> Result<Response, ApiError> {
    if body.limit == Some(0) {
        return Err(ApiError::bad_request(
            "limit is 0; leave it out to redrive every dead task",
        ));
    }
    let action = Action::Redrive {
        queue: name,
        limit: body.limit,
    };
    act(&app, &who, action).await
}

#[utoipa::path(post, path = "/api/v1/queues/{name}/config", tag = "actions",
    params(("name" = String, Path, description = "Queue name")), request_body = ConfigChange,
    responses((status = 200, description = "The queue with its new settings, once durable", body = QueueView),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn configure(
    State(app): State<Arc<App>>,
    who: Admin,
    ApiPath(name): ApiPath<String>,
    ApiJson(change): ApiJson<ConfigChange>,
) -> Result<Response, ApiError> {
    act(&app, &who, Action::Configure(name, change)).await
}

#[utoipa::path(post, path = "/api/v1/queues/{name}/delete", tag = "actions",
    params(("name" = String, Path, description = "Queue name")), request_body = Empty,
    responses((status = 200, description = "Tasks removed with the queue, once durable", body = Count),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn delete_queue(
    State(app): State<Arc<App>>,
    who: Admin,
    ApiPath(name): ApiPath<String>,
    ApiJson(Empty {}): ApiJson<Empty>,
) -> Result<Response, ApiError> {
    act(&app, &who, Action::Delete(name)).await
}
