//! The dashboard's schedules page: every schedule a caller may see (those publishing to
//! queues its token allows), with its cron, zone, next and last run and last task.
//! Read-only, like the API: schedules change through the protocol (`squall schedule`).

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::{error_page, nav, page_grant, render, when, within, Nav, PAGE_TIMEOUT};
use crate::http::api::MAX_LIST;
use crate::http::App;

/// One schedule as the page shows it.
struct ScheduleRow {
    name: String,
    queue: String,
    cron: String,
    tz: String,
    catch_up: String,
    paused: bool,
    next_run: String,
    last_run: String,
    last_task: Option<u64>,
}

#[derive(Template)]
#[template(path = "schedules.html")]
struct SchedulesPage {
    nav: Nav,
    schedules: Vec<ScheduleRow>,
    more: bool,
}

pub(super) async fn page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let grant = match page_grant(&app, &headers, "/schedules") {
        Ok(g) => g,
        Err(login) => return *login,
    };
    let list = app.backend.schedules(String::new(), MAX_LIST as usize);
    let page = match within(PAGE_TIMEOUT, list).await {
        Ok(p) => p,
        Err(e) => return error_page(&app, e),
    };
    let schedules = page
        .schedules
        .into_iter()
        .filter(|s| grant.allows_queue(&s.queue))
        .map(|s| ScheduleRow {
            next_run: s.next_run_ms.map(when).unwrap_or_default(),
            last_run: s.last_run_ms.map(when).unwrap_or_default(),
            last_task: s.last_task,
            name: s.name,
            queue: s.queue,
            cron: s.cron,
            tz: s.tz,
            catch_up: s.catch_up,
            paused: s.paused,
        })
        .collect();
    let page = SchedulesPage {
        nav: nav(&app),
        schedules,
        more: page.more,
    };
    render(StatusCode::OK, &page)
}
