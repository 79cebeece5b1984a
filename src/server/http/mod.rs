//! The HTTP listener for operators: `/metrics` (Prometheus / OpenMetrics text),
//! `/healthz` (the process is alive and its store works) and `/readyz` (200 only
//! between the end of recovery and the start of shutdown, and while the store works). It comes up before recovery starts, so a
//! readiness probe can watch a long recovery. The only code that serves HTTP; the
//! exposition format is `exposition.rs`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use self::exposition::{QueueSample, ScrapedQueues, StoreHealth};
use crate::server::clock::now_ms;
use crate::server::error::ServerError;
use crate::server::metrics::Metrics;
use crate::server::msg::{HubCmd, HubTx, QueueStatus, RateView};
use crate::server::reads;
use crate::store::{Store, WriterStats};

mod exposition;

/// Most HTTP connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 64;
/// Time allowed for a request's headers to arrive.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a scrape waits for the hub before answering 503.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time in-flight requests get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(1);

/// What the handlers read: process metrics from the start, the live broker once
/// recovery is done.
pub(crate) struct HttpState {
    metrics: Arc<Metrics>,
    live: OnceLock<Live>,
}

/// The running broker, as far as the HTTP side needs it.
pub(crate) struct Live {
    pub(crate) hub: HubTx,
    pub(crate) store: Store,
    pub(crate) writer: Arc<WriterStats>,
    /// Queues exported one by one (`metrics_queue_limit`).
    pub(crate) queue_limit: usize,
}

impl HttpState {
    fn new(metrics: Arc<Metrics>) -> Arc<HttpState> {
        Arc::new(HttpState {
            metrics,
            live: OnceLock::new(),
        })
    }

    fn go_live(&self, live: Live) {
        let _ = self.live.set(live);
    }
}

/// Binds the HTTP port (before recovery, after configuration was validated).
async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|cause| ServerError::Bind {
            addr,
            setting: HTTP_SETTING,
            cause,
        })
}

/// How a bind error names the HTTP port's setting.
const HTTP_SETTING: &str = "the HTTP port, --http";

/// Serves until `stop` is cancelled, then gives in-flight requests a moment.
async fn serve(listener: TcpListener, state: Arc<HttpState>, stop: CancellationToken) {
    let conns = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if conns.len() >= MAX_CONNECTIONS {
            debug!(%peer, "too many http connections; closing");
            continue;
        }
        conns.spawn(serve_connection(stream, state.clone(), stop.clone()));
    }
    drop(listener);
    conns.close();
    let _ = tokio::time::timeout(DRAIN * 2, conns.wait()).await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    state: Arc<HttpState>,
    stop: CancellationToken,
) {
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(&state, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(DRAIN, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "http connection ended with an error");
    }
}

async fn route(state: &HttpState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
    }
    let store = state.live.get().map(|l| &l.store);
    let failed = store.and_then(|s| s.failure());
    let unavailable = store.and_then(|s| s.refusing_publishes());
    match (req.uri().path(), failed, unavailable) {
        ("/healthz" | "/readyz", Some(failure), _) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store failed, restart the broker: {failure}\n"),
        ),
        // Not ready while nothing can be stored, but healthy: a restart would not
        // bring disk space back, and the broker resumes by itself.
        ("/readyz", None, Some(reason)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
        _ => route_path(state, req).await,
    }
}

async fn route_path(state: &HttpState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.metrics.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: recovering or shutting down\n",
        ),
        "/metrics" => scrape(state, wants_openmetrics(&req)).await,
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n",
        ),
    }
}

/// True when the scraper's `Accept` header asks for OpenMetrics (Prometheus does);
/// anything else (curl, a browser, older scrapers) gets the plain text format.
fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

async fn scrape(state: &HttpState, openmetrics: bool) -> Response<Full<Bytes>> {
    let live = state.live.get();
    let queues = match live {
        Some(live) => match queue_samples(live).await {
            Some(q) => q,
            None => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the broker is shutting down\n",
                )
            }
        },
        None => ScrapedQueues::default(),
    };
    let writer = live.map(|l| &*l.writer);
    let store = live.map_or(StoreHealth::default(), |l| StoreHealth {
        failed: l.store.failure().is_some(),
        unavailable: l.store.refusing_publishes().is_some(),
        journal_bytes: l.store.journal_disk_bytes(),
    });
    match exposition::render(&state.metrics, writer, queues, store, openmetrics) {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            let content_type = if openmetrics {
                exposition::CONTENT_TYPE
            } else {
                exposition::TEXT_CONTENT_TYPE
            };
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            resp
        }
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n",
        ),
    }
}

/// Asks the hub for the deepest queues' status (and the others' sum), then reads each
/// exported queue's oldest ready task's age.
async fn queue_samples(live: &Live) -> Option<ScrapedQueues> {
    let (tx, rx) = oneshot::channel();
    live.hub
        .send(HubCmd::Scrape {
            limit: live.queue_limit,
            reply: tx,
        })
        .ok()?;
    let scraped = tokio::time::timeout(SCRAPE_TIMEOUT, rx).await.ok()?.ok()?;
    let now = now_ms();
    Some(ScrapedQueues {
        top: scraped
            .top
            .into_iter()
            .map(|status| QueueSample {
                oldest_ready_age_ms: reads::oldest_ready_age_ms(&status, &live.store, now),
                status,
            })
            .collect(),
        others: scraped.others.map(|sum| QueueSample {
            // Rates are not summed: the sum's are zero (per-queue rates are for
            // operators, the counters are what Prometheus computes rates from).
            status: QueueStatus {
                snapshot: sum,
                rates: RateView::default(),
                oldest_ready: None,
            },
            oldest_ready_age_ms: None,
        }),
        count: scraped.queues,
    })
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The HTTP listener's lifecycle: started before recovery, stopped last.
pub(crate) struct HttpServer {
    addr: Option<SocketAddr>,
    state: Arc<HttpState>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl HttpServer {
    /// Binds and starts serving, or does nothing when `addr` is `None` (`--http off`).
    pub(crate) async fn start(
        addr: Option<SocketAddr>,
        metrics: Arc<Metrics>,
    ) -> Result<HttpServer, ServerError> {
        let state = HttpState::new(metrics);
        let stop = CancellationToken::new();
        let Some(addr) = addr else {
            return Ok(HttpServer {
                addr: None,
                state,
                stop,
                task: None,
            });
        };
        let listener = bind(addr).await?;
        let local = listener.local_addr().map_err(|cause| ServerError::Bind {
            addr,
            setting: HTTP_SETTING,
            cause,
        })?;
        tracing::info!(http = %local, "metrics and health checks at http://{local} (/metrics, /healthz, /readyz)");
        let task = tokio::spawn(serve(listener, state.clone(), stop.clone()));
        Ok(HttpServer {
            addr: Some(local),
            state,
            stop,
            task: Some(task),
        })
    }

    /// The bound address, if serving.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Hands over the live broker after recovery.
    pub(crate) fn go_live(&self, live: Live) {
        self.state.go_live(live);
    }

    /// Stops accepting and waits (briefly) for in-flight requests.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            if let Err(e) = task.await {
                warn!(error = %e, "http server task failed");
            }
        }
    }
}
