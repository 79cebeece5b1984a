//! The dashboard: server-side pages (askama templates in `templates/`, compiled into
//! the binary and escaped by default, so a payload or header such as `<script>` shows
//! as text), the embedded stylesheet and script (`assets/`, no build step), the login
//! that keeps a token in an HttpOnly, SameSite=Strict cookie, and the security headers
//! of every answer (a content security policy that allows only this origin's script).
//! The pages read through the same [`Backend`](super::Backend) as the API; the script
//! follows the live events and calls the API for actions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use askama::Template;
use axum::extract::{Form, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tower_http::set_header::SetResponseHeaderLayer;

use super::api::{valid_queue, within, ApiPath, ApiQuery, MAX_CONNECTIONS_LISTED, MAX_LIST};
use super::auth;
use super::error::ApiError;
use super::types::{
    ConnectionList, Overview, PeekState, QueueSettings, QueueView, TaskDetail, TaskPreview,
};
use super::App;
use crate::auth::Grant;

mod schedules;

const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
/// How long a page waits for the broker.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Tasks a queue page shows per state.
const PAGE_TASKS: usize = 50;
/// A ready backlog older than this stands out in the queues table.
const OLD_BACKLOG_MS: u64 = 60_000;

pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(index))
        .route("/queues/{name}", get(queue_page))
        .route("/tasks", get(task_lookup))
        .route("/tasks/{id}", get(task_page))
        .route("/connections", get(connections_page))
        .route("/schedules", get(schedules::page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
}

/// Adds the headers every answer carries: only this origin's scripts and styles, no
/// framing, no MIME sniffing, no referrer to other sites (same-origin: a browser then
/// sends this origin in `Origin`, which the cross-site check needs).
pub(crate) fn with_security_headers<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
) -> Router<S> {
    let h = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    };
    router
        .layer(h(
            "content-security-policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
             form-action 'self'",
        ))
        .layer(h("x-content-type-options", "nosniff"))
        .layer(h("x-frame-options", "DENY"))
        .layer(h("referrer-policy", "same-origin"))
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

/// What the header of every page shows.
struct Nav {
    node: String,
    auth: bool,
}

fn nav(app: &App) -> Nav {
    Nav {
        node: app.backend.node_id(),
        auth: app.auth.is_enabled(),
    }
}

fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, [(CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering the page failed: {e}"),
        )
            .into_response(),
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    nav: Nav,
    message: Option<String>,
    next: String,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: Nav,
    code: String,
    message: String,
}

fn error_page(app: &App, e: ApiError) -> Response {
    let page = ErrorPage {
        nav: nav(app),
        code: e.code.as_str_name().to_owned(),
        message: e.message.clone(),
    };
    render(e.status(), &page)
}

/// The caller's grant, or the login page (401) asking for a token.
fn page_grant(app: &App, headers: &HeaderMap, next: &str) -> Result<Grant, Box<Response>> {
    auth::grant(app, headers).map_err(|e| {
        let message = auth::presented_token(headers)
            .filter(|t| !t.is_empty())
            .map(|_| format!("The token was refused ({}). Enter another.", e.message));
        let page = LoginPage {
            nav: Nav {
                auth: false,
                ..nav(app)
            },
            message,
            next: safe_next(next).to_owned(),
        };
        Box::new(render(StatusCode::UNAUTHORIZED, &page))
    })
}

/// Only local paths are followed after a login.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

async fn login_page(State(app): State<Arc<App>>) -> Response {
    let page = LoginPage {
        nav: Nav {
            auth: false,
            ..nav(&app)
        },
        message: None,
        next: "/".to_owned(),
    };
    render(StatusCode::OK, &page)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

async fn login(State(app): State<Arc<App>>, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(&form.next).to_owned();
    if !app.auth.is_enabled() {
        return redirect(&next, None);
    }
    let token = form.token.trim();
    let accepted = auth::cookie_safe(token) && app.auth.authenticate(token).is_some();
    if !accepted {
        tracing::info!("dashboard login refused");
        let page = LoginPage {
            nav: Nav {
                auth: false,
                ..nav(&app)
            },
            message: Some("That token was refused. Check it and try again.".to_owned()),
            next,
        };
        return render(StatusCode::UNAUTHORIZED, &page);
    }
    redirect(&next, Some(auth::set_cookie(token, app.secure_cookies)))
}

async fn logout(State(app): State<Arc<App>>) -> Response {
    redirect("/login", Some(auth::clear_cookie(app.secure_cookies)))
}

fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(SET_COOKIE, c);
    }
    resp
}

/// A queue as a table row and the queue page's header show it.
struct QueueRow {
    name: String,
    ready: u64,
    delayed: u64,
    leased: u64,
    dead: u64,
    consumers: u64,
    oldest: String,
    oldest_ms: u64,
    publish: String,
    ack: String,
    paused: bool,
    state: &'static str,
    class: &'static str,
}

impl QueueRow {
    fn of(q: &QueueView) -> QueueRow {
        let oldest_ms = q.oldest_ready_age_ms.unwrap_or(0);
        let mut class = "";
        if oldest_ms > OLD_BACKLOG_MS {
            class = "warn-old";
        }
        if q.dead > 0 {
            class = "warn-dead";
        }
        QueueRow {
            name: q.name.clone(),
            ready: q.ready,
            delayed: q.delayed,
            leased: q.leased,
            dead: q.dead,
            consumers: q.consumers,
            oldest: q.oldest_ready_age_ms.map(age).unwrap_or_default(),
            oldest_ms,
            publish: format!("{:.1}", q.publish_rate),
            ack: format!("{:.1}", q.ack_rate),
            paused: q.paused,
            state: if q.paused { "paused" } else { "active" },
            class,
        }
    }
}

/// A duration in milliseconds, as people read it.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// A unix-ms time, as RFC 3339 seconds (empty for 0).
fn when(ms: u64) -> String {
    if ms == 0 {
        return String::new();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn micros(us: Option<u64>) -> String {
    match us {
        None => "–".to_owned(),
        Some(us) if us < 1000 => format!("≤{us} µs"),
        Some(us) if us < 1_000_000 => format!("≤{} ms", us / 1000),
        Some(us) => format!("≤{} s", us / 1_000_000),
    }
}

/// The overview cards.
struct OverviewCards {
    health: String,
    health_class: &'static str,
    health_reason: Option<String>,
    queues: u64,
    ready: u64,
    leased: u64,
    dead: u64,
    connections: u64,
    confirm_p50: String,
    confirm_p99: String,
    commit_p99: String,
    journal: String,
}

impl OverviewCards {
    fn of(o: &Overview) -> OverviewCards {
        OverviewCards {
            health_class: if o.health == "ok" { "ok" } else { "bad" },
            health: o.health.clone(),
            health_reason: o.health_reason.clone(),
            queues: o.queues,
            ready: o.ready_tasks,
            leased: o.leased_tasks,
            dead: o.dead_tasks,
            connections: o.connections,
            confirm_p50: micros(o.publish_confirm.p50_us),
            confirm_p99: micros(o.publish_confirm.p99_us),
            commit_p99: micros(o.commit.p99_us),
            journal: bytes(o.journal_bytes),
        }
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.1} GiB", n as f64 / 1_073_741_824.0),
    }
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    nav: Nav,
    ov: OverviewCards,
    queues: Vec<QueueRow>,
    more: bool,
}

async fn index(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let grant = match page_grant(&app, &headers, "/") {
        Ok(g) => g,
        Err(login) => return *login,
    };
    let read = async {
        let overview = app.backend.overview().await?;
        let page = app.backend.queues(String::new(), MAX_LIST as usize).await?;
        Ok((overview, page))
    };
    let (overview, page) = match within(PAGE_TIMEOUT, read).await {
        Ok(r) => r,
        Err(e) => return error_page(&app, e),
    };
    let queues = page
        .queues
        .iter()
        .filter(|q| grant.allows_queue(&q.name))
        .map(QueueRow::of)
        .collect();
    let page = IndexPage {
        nav: nav(&app),
        ov: OverviewCards::of(&overview),
        queues,
        more: page.more,
    };
    render(StatusCode::OK, &page)
}

/// A peeked task as a row of the queue page.
struct TaskRow {
    id: u64,
    priority: i32,
    attempts: String,
    created: String,
    holder: String,
    deadline_ms: u64,
    not_before: String,
    payload: String,
    payload_bytes: u64,
    truncated: bool,
    headers: BTreeMap<String, String>,
    last_error: String,
}

impl TaskRow {
    fn of(t: TaskPreview) -> TaskRow {
        TaskRow {
            id: t.id,
            priority: t.priority,
            attempts: match t.max_attempts {
                0 => t.attempts.to_string(),
                n => format!("{} / {n}", t.attempts),
            },
            created: when(t.created_at_ms),
            holder: t.lease_holder.unwrap_or_default(),
            deadline_ms: t.lease_deadline_ms.unwrap_or(0),
            not_before: when(t.not_before_ms),
            payload: t.payload,
            payload_bytes: t.payload_bytes,
            truncated: t.truncated,
            headers: t.headers,
            last_error: t.last_error.unwrap_or_default(),
        }
    }
}

/// Dead tasks that share a last error.
struct DeadGroup {
    error: String,
    count: usize,
    ids: Vec<u64>,
}

/// Most ids a dead group lists.
const GROUP_IDS: usize = 10;

fn group_dead(tasks: &[TaskRow]) -> Vec<DeadGroup> {
    let mut groups: BTreeMap<&str, DeadGroup> = BTreeMap::new();
    for t in tasks {
        let g = groups.entry(&t.last_error).or_insert_with(|| DeadGroup {
            error: t.last_error.clone(),
            count: 0,
            ids: Vec::new(),
        });
        g.count += 1;
        if g.ids.len() < GROUP_IDS {
            g.ids.push(t.id);
        }
    }
    let mut groups: Vec<DeadGroup> = groups.into_values().collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.count));
    groups
}

#[derive(Template)]
#[template(path = "queue.html")]
struct QueuePageView {
    nav: Nav,
    q: QueueRow,
    config: QueueSettings,
    state: &'static str,
    tabs: Vec<(&'static str, u64, bool)>,
    tasks: Vec<TaskRow>,
    groups: Vec<DeadGroup>,
    more: bool,
}

#[derive(Deserialize)]
struct StateQuery {
    state: Option<PeekState>,
}

async fn queue_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    path: Result<ApiPath<String>, ApiError>,
    query: Result<ApiQuery<StateQuery>, ApiError>,
) -> Response {
    let (ApiPath(name), ApiQuery(query)) = match (path, query) {
        (Ok(p), Ok(q)) => (p, q),
        (Err(e), _) | (_, Err(e)) => return error_page(&app, e),
    };
    let grant = match page_grant(&app, &headers, &format!("/queues/{name}")) {
        Ok(g) => g,
        Err(login) => return *login,
    };
    if let Err(e) = valid_queue(&name) {
        return error_page(&app, e);
    }
    if !grant.allows_queue(&name) {
        return error_page(
            &app,
            ApiError::new(
                squall_proto::ErrorCode::Forbidden,
                format!("this token does not cover queue {name:?}"),
            ),
        );
    }
    let state = query.state.unwrap_or(PeekState::Ready);
    let read = async {
        let q = app.backend.queue(name.clone()).await?;
        let peek = app
            .backend
            .peek(name.clone(), state, PAGE_TASKS, 512)
            .await?;
        Ok((q, peek))
    };
    let (q, peek) = match within(PAGE_TIMEOUT, read).await {
        Ok(r) => r,
        Err(e) => return error_page(&app, e),
    };
    let tasks: Vec<TaskRow> = peek.tasks.into_iter().map(TaskRow::of).collect();
    let groups = if state == PeekState::Dead {
        group_dead(&tasks)
    } else {
        Vec::new()
    };
    let tabs = [
        (PeekState::Ready, q.ready),
        (PeekState::Delayed, q.delayed),
        (PeekState::Leased, q.leased),
        (PeekState::Dead, q.dead),
    ]
    .into_iter()
    .map(|(s, n)| (s.as_str(), n, s == state))
    .collect();
    let page = QueuePageView {
        nav: nav(&app),
        q: QueueRow::of(&q),
        config: q.config.clone(),
        state: state.as_str(),
        tabs,
        tasks,
        groups,
        more: peek.more,
    };
    render(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "task.html")]
struct TaskPage {
    nav: Nav,
    t: TaskDetail,
    holder: String,
    deadline_ms: u64,
    last_error: String,
    result: String,
    created: String,
    updated: String,
}

#[derive(Deserialize)]
struct LookupQuery {
    id: Option<String>,
}

async fn task_lookup(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<ApiQuery<LookupQuery>, ApiError>,
) -> Response {
    if let Err(login) = page_grant(&app, &headers, "/") {
        return *login;
    }
    let id = query
        .ok()
        .and_then(|ApiQuery(q)| q.id)
        .and_then(|id| id.trim().parse::<u64>().ok());
    match id {
        Some(id) => redirect(&format!("/tasks/{id}"), None),
        None => error_page(
            &app,
            ApiError::bad_request("a task id is a whole number, e.g. /tasks?id=42"),
        ),
    }
}

async fn task_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    path: Result<ApiPath<u64>, ApiError>,
) -> Response {
    let id = match path {
        Ok(ApiPath(id)) => id,
        Err(e) => return error_page(&app, e),
    };
    let grant = match page_grant(&app, &headers, &format!("/tasks/{id}")) {
        Ok(g) => g,
        Err(login) => return *login,
    };
    let t = match within(PAGE_TIMEOUT, app.backend.task(id)).await {
        Ok(t) => t,
        Err(e) => return error_page(&app, e),
    };
    if !t.queue.is_empty() && !grant.allows_queue(&t.queue) {
        return error_page(
            &app,
            ApiError::new(
                squall_proto::ErrorCode::Forbidden,
                "this token does not cover the task's queue",
            ),
        );
    }
    let page = TaskPage {
        nav: nav(&app),
        holder: t.lease_holder.clone().unwrap_or_default(),
        deadline_ms: t.lease_deadline_ms.unwrap_or(0),
        last_error: t.last_error.clone().unwrap_or_default(),
        result: t.result.clone().unwrap_or_default(),
        created: when(t.created_at_ms),
        updated: when(t.updated_at_ms),
        t,
    };
    render(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "connections.html")]
struct ConnectionsPage {
    nav: Nav,
    list: ConnectionList,
}

async fn connections_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let grant = match page_grant(&app, &headers, "/connections") {
        Ok(g) => g,
        Err(login) => return *login,
    };
    let mut list = match within(
        PAGE_TIMEOUT,
        app.backend.connections(MAX_CONNECTIONS_LISTED),
    )
    .await
    {
        Ok(l) => l,
        Err(e) => return error_page(&app, e),
    };
    for c in &mut list.connections {
        c.subscriptions.retain(|s| grant.allows_queue(&s.queue));
    }
    render(
        StatusCode::OK,
        &ConnectionsPage {
            nav: nav(&app),
            list,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next("/queues/a"), "/queues/a");
        assert_eq!(safe_next("//evil.example/x"), "/");
        assert_eq!(safe_next("https://evil.example/"), "/");
        assert_eq!(safe_next("/\\evil.example"), "/");
        assert_eq!(safe_next(""), "/");
    }

    #[test]
    fn ages_read_like_people_say_them() {
        assert_eq!(age(250), "250 ms");
        assert_eq!(age(61_000), "61 s");
        assert_eq!(age(600_000), "10 min");
        assert_eq!(age(7_200_000), "2 h");
    }
}
