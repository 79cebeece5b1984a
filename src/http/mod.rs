//! The HTTP port: health checks (`/healthz`, `/readyz`), Prometheus metrics
//! (`/metrics`), the JSON API under `/api/v1` with its OpenAPI document and live
//! events, and the dashboard at `/` (server-side templates and assets embedded in the
//! binary). Routing is axum's; this file binds, accepts (with TLS when configured),
//! serves each connection with hyper, and stops. The only code that serves HTTP.
//! What the broker answers comes through the narrow [`Backend`] trait: nothing here
//! knows the hub, the engine or the store.

mod api;
mod auth;
mod backend;
mod error;
mod events;
mod pages;
pub mod types;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use self::api::openapi_json;
pub use self::backend::{Action, ActionDone, Backend, Health, MetricsText};
pub use self::error::ApiError;
use crate::auth::AuthConfig;

/// Most HTTP connections served at once (event streams included); more are closed on
/// accept.
const MAX_CONNECTIONS: usize = 64;
/// Time allowed for the TLS handshake and for a request's headers to arrive.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time in-flight requests get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(1);

/// How the HTTP port is served.
#[derive(Clone, Default)]
pub struct HttpOptions {
    /// Tokens and roles; none configured = everything open.
    pub auth: AuthConfig,
    /// Whether `/metrics` needs a token too (when tokens are configured).
    pub protect_metrics: bool,
    /// TLS on the port (then the dashboard's cookie is `Secure`).
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("auth", &self.auth.is_enabled())
            .field("protect_metrics", &self.protect_metrics)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// What every handler shares.
pub(crate) struct App {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) auth: AuthConfig,
    pub(crate) protect_metrics: bool,
    pub(crate) secure_cookies: bool,
    /// Cancelled at shutdown: event streams end.
    pub(crate) stop: CancellationToken,
}

/// The router of the whole port.
fn router(app: Arc<App>) -> Router {
    let router = Router::new()
        .merge(api::routes())
        .merge(pages::routes())
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn(auth::refuse_cross_site));
    pages::with_security_headers(router).with_state(app)
}

/// The HTTP listener's lifecycle: started before recovery, stopped last.
pub struct HttpServer {
    addr: Option<SocketAddr>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl HttpServer {
    /// Binds and starts serving, or does nothing when `addr` is `None` (`--http off`).
    pub async fn start(
        addr: Option<SocketAddr>,
        options: HttpOptions,
        backend: Arc<dyn Backend>,
    ) -> std::io::Result<HttpServer> {
        let stop = CancellationToken::new();
        let Some(addr) = addr else {
            return Ok(HttpServer {
                addr: None,
                stop,
                task: None,
            });
        };
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        info!(http = %local, tls = options.tls.is_some(), "dashboard, API, metrics and health checks at {scheme}://{local} (/, /api/v1, /metrics, /healthz, /readyz)");
        let app = Arc::new(App {
            backend,
            secure_cookies: options.tls.is_some(),
            auth: options.auth,
            protect_metrics: options.protect_metrics,
            stop: stop.clone(),
        });
        let task = tokio::spawn(serve(listener, router(app), options.tls, stop.clone()));
        Ok(HttpServer {
            addr: Some(local),
            stop,
            task: Some(task),
        })
    }

    /// The bound address, if serving.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Stops accepting, ends event streams, and waits (briefly) for in-flight requests.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            if let Err(e) = task.await {
                warn!(error = %e, "http server task failed");
            }
        }
    }
}

/// Serves until `stop` is cancelled, then gives in-flight requests a moment.
async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
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
        conns.spawn(serve_connection(
            stream,
            tls.clone(),
            app.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    conns.close();
    let _ = tokio::time::timeout(DRAIN * 2, conns.wait()).await;
}

async fn serve_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    app: Router,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => serve_io(stream, app, stop).await,
        Some(acceptor) => {
            match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_io(tls, app, stop).await,
                Ok(Err(e)) => debug!(error = %e, "http tls handshake failed"),
                Err(_) => debug!("http tls handshake timed out"),
            }
        }
    }
}

async fn serve_io<I>(io: I, app: Router, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
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
