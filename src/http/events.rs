//! Live updates as server-sent events: `GET /api/v1/events` sends a `queues` event (the
//! first page of queues with counts and rates, [`QueuesEvent`]) at once and then every
//! second, until the client goes or the server stops. Each stream holds one HTTP
//! connection, so their number is bounded by the port's connection limit.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use tokio::time::{Instant, MissedTickBehavior};

use super::api::{within, MAX_LIST};
use super::auth::Reader;
use super::types::QueuesEvent;
use super::App;
use crate::auth::Grant;

/// Time between two updates.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);
/// How long one update waits for the broker.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn events(State(app): State<Arc<App>>, who: Reader) -> Response {
    Sse::new(updates(app, who.0))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn updates(app: Arc<App>, grant: Grant) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut ticks = tokio::time::interval_at(Instant::now(), INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    stream::unfold((app, grant, ticks), |(app, grant, mut ticks)| async move {
        tokio::select! {
            _ = app.stop.cancelled() => return None,
            _ = ticks.tick() => {}
        }
        let event = match within(
            UPDATE_TIMEOUT,
            app.backend.queues(String::new(), MAX_LIST as usize),
        )
        .await
        {
            Ok(mut page) => {
                page.queues.retain(|q| grant.allows_queue(&q.name));
                let data = QueuesEvent {
                    at_ms: crate::server::now_ms(),
                    queues: page.queues,
                    more: page.more,
                };
                Event::default()
                    .event("queues")
                    .json_data(&data)
                    .unwrap_or_default()
            }
            Err(e) => Event::default()
                .event("error")
                .json_data(e.body())
                .unwrap_or_default(),
        };
        Some((Ok(event), (app, grant, ticks)))
    })
}
