//! `ClientBuilder` and the validated `Config` it produces. The only I/O is reading the
//! CA file for TLS when the builder is validated; `connect` hands the config to
//! `client/link.rs`, which dials.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::backoff::ReconnectPolicy;
use crate::client::Client;
use crate::error::{ClientError, Result};

/// Default time allowed for TCP connect plus handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time allowed for one request's round trip (including a durable publish).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a call waits for a connection while the client is reconnecting.
pub const DEFAULT_WAIT_FOR_CONNECTION: Duration = Duration::from_secs(10);
/// Default interval of keepalive pings on an otherwise quiet connection.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);
/// Default broker address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7600";

/// The settings of a [`Client`]; built by [`ClientBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub client_name: String,
    pub token: Token,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub wait_for_connection: Duration,
    pub reconnect: ReconnectPolicy,
    pub validate_locally: bool,
    pub keepalive: Option<Duration>,
    pub tls: Option<Tls>,
}

/// TLS to the broker: the connector (trusting the configured CA) and the name to
/// verify, if not the host part of the address.
#[derive(Clone)]
pub(crate) struct Tls {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// The name the broker's certificate must carry when dialling `addr` (`host:port`).
    pub(crate) fn server_name(&self, addr: &str) -> Result<ServerName<'static>> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = match addr.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host,
            _ => addr,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|e| {
            ClientError::Config(format!(
                "`{host}` is not a name to verify the broker's certificate against ({e}); set one with ClientBuilder::tls"
            ))
        })
    }
}

/// Where the CA certificates that TLS trusts come from.
#[derive(Clone)]
enum CaSource {
    File(PathBuf),
    Pem(Vec<u8>),
}

/// The authentication token: never shown by `Debug`.
#[derive(Clone, Default)]
pub(crate) struct Token(pub(crate) String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "none"
        } else {
            "<redacted>"
        })
    }
}

/// Configures and connects a [`Client`].
///
/// ```no_run
/// # async fn demo() -> Result<(), squall_client::ClientError> {
/// use std::time::Duration;
/// use squall_client::{Client, ReconnectPolicy};
///
/// let client = Client::builder()
///     .client_name("billing-worker")
///     .token(std::env::var("SQUALL_TOKEN").unwrap_or_default())
///     .connect_timeout(Duration::from_secs(3))
///     .request_timeout(Duration::from_secs(10))
///     .reconnect(ReconnectPolicy::default().max_delay(Duration::from_secs(2)))
///     .connect("127.0.0.1:7600")
///     .await?;
/// # let _ = client; Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .connect(addr).await"]
pub struct ClientBuilder {
    config: Config,
    tls_server_name: Option<String>,
    tls_ca: Option<CaSource>,
}

impl std::fmt::Debug for CaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaSource::File(p) => write!(f, "File({})", p.display()),
            CaSource::Pem(b) => write!(f, "Pem({} bytes)", b.len()),
        }
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            config: Config {
                client_name: format!("squall-client/{}", env!("CARGO_PKG_VERSION")),
                token: Token(String::new()),
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                wait_for_connection: DEFAULT_WAIT_FOR_CONNECTION,
                reconnect: ReconnectPolicy::default(),
                validate_locally: true,
                keepalive: Some(DEFAULT_KEEPALIVE),
                tls: None,
            },
            tls_server_name: None,
            tls_ca: None,
        }
    }
}

impl ClientBuilder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The name the broker logs for this client (default `squall-client/<version>`).
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.config.client_name = name.into();
        self
    }

    /// The authentication token sent in `Hello` (default empty: no authentication).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = Token(token.into());
        self
    }

    /// Time allowed for the TCP connect plus the handshake (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }

    /// Time allowed for each request's round trip, a durable publish included
    /// (default 30 s). Every call is bounded by it: nothing waits forever.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.config.request_timeout = d;
        self
    }

    /// How long a call made while the client is reconnecting waits for the connection
    /// before failing with [`ClientError::Unavailable`] (default 10 s; zero = fail at once).
    pub fn wait_for_connection(mut self, d: Duration) -> Self {
        self.config.wait_for_connection = d;
        self
    }

    /// How to reconnect after a lost connection (default: forever, backoff 100 ms .. 5 s).
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.config.reconnect = policy;
        self
    }

    /// Whether to refuse obviously invalid requests (bad queue name, empty or oversized
    /// payload, batch or prefetch over the broker's limits) before sending them
    /// (default true). Turn it off only to test a broker's own checks.
    pub fn validate_locally(mut self, on: bool) -> Self {
        self.config.validate_locally = on;
        self
    }

    /// Ping the broker this often (default 15 s; `None` = never). A ping unanswered
    /// within the request timeout drops the connection and triggers a reconnect, so a
    /// silently dead network path (no FIN, no RST) is noticed even by a subscriber
    /// that only waits for deliveries.
    pub fn keepalive(mut self, every: Option<Duration>) -> Self {
        self.config.keepalive = every.filter(|d| !d.is_zero());
        self
    }

    /// Talk TLS, trusting the CA certificates in this PEM file (the CA that signed
    /// the broker's certificate, or the certificate itself if self-signed). The
    /// broker's certificate must name the host of the address dialled, unless
    /// [`tls`](Self::tls) names another. The file is read by `connect`.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(CaSource::File(path.into()));
        self
    }

    /// Like [`tls_ca_file`](Self::tls_ca_file), with the PEM text itself.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca = Some(CaSource::Pem(pem.into()));
        self
    }

    /// The name the broker's TLS certificate must carry (default: the host part of
    /// the address). Needs a CA from [`tls_ca_file`](Self::tls_ca_file) or
    /// [`tls_ca_pem`](Self::tls_ca_pem).
    pub fn tls(mut self, server_name: impl Into<String>) -> Self {
        self.tls_server_name = Some(server_name.into());
        self
    }

    /// Connects to the broker at `addr` (`host:port`) and performs the handshake.
    ///
    /// The first connection is not retried: an unreachable broker fails here with
    /// [`ClientError::Io`] or [`ClientError::Timeout`]. Later losses are reconnected
    /// per the [`ReconnectPolicy`].
    pub async fn connect(self, addr: impl ToString) -> Result<Client> {
        let config = self.validate()?;
        Client::connect_with(addr.to_string(), config).await
    }

    fn validate(mut self) -> Result<Config> {
        if self.config.request_timeout.is_zero() || self.config.connect_timeout.is_zero() {
            return Err(ClientError::Config(
                "connect_timeout and request_timeout must be greater than zero".into(),
            ));
        }
        self.config.tls = match (self.tls_ca, self.tls_server_name) {
            (None, None) => None,
            (None, Some(name)) => {
                return Err(ClientError::Config(format!(
                    "TLS to {name:?} needs the CA to trust: call tls_ca_file (or tls_ca_pem) too"
                )))
            }
            (Some(ca), name) => Some(tls(ca, name)?),
        };
        Ok(self.config)
    }
}

/// Builds the TLS connector: the `ring` provider, passed explicitly, and only the
/// given CA certificates as roots.
fn tls(ca: CaSource, server_name: Option<String>) -> Result<Tls> {
    let (what, pem) = match ca {
        CaSource::File(path) => {
            let pem = std::fs::read(&path).map_err(|e| {
                ClientError::Config(format!(
                    "cannot read the TLS CA file {}: {e}",
                    path.display()
                ))
            })?;
            (path.display().to_string(), pem)
        }
        CaSource::Pem(pem) => ("the CA PEM".to_owned(), pem),
    };
    let connector = tls_connector(&pem, &what)?;
    let server_name = server_name
        .map(|n| {
            ServerName::try_from(n.clone())
                .map_err(|e| ClientError::Config(format!("`{n}` is not a TLS server name: {e}")))
        })
        .transpose()?;
    Ok(Tls {
        connector,
        server_name,
    })
}

/// A TLS connector that trusts only the CA certificates in `pem` (`what` names them in
/// errors), with the `ring` provider passed explicitly. The broker's cluster port uses
/// it too, to check the other members' certificates.
pub fn tls_connector(pem: &[u8], what: &str) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert =
            cert.map_err(|e| ClientError::Config(format!("{what}: not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Config(format!("{what}: unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Config(format!(
            "{what}: no PEM certificate in it"
        )));
    }
    // ring, not aws-lc-rs: it builds without cmake or nasm. rustls 0.23.48 deprecates
    // ring's provider for its lack of post-quantum key exchange; that is the
    // trade-off taken, so the warning is silenced here, where it is made.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

impl ClientBuilder {
    #[cfg(test)]
    fn validated(self) -> Result<Config> {
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_without_a_ca_is_refused_with_a_clear_message() {
        let err = ClientBuilder::new()
            .tls("broker.internal")
            .validated()
            .unwrap_err();
        assert!(matches!(err, ClientError::Config(ref m) if m.contains("CA")));
        let err = ClientBuilder::new()
            .tls_ca_pem("not pem")
            .validated()
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Config(ref m) if m.contains("no PEM")),
            "{err}"
        );
        let err = ClientBuilder::new()
            .tls_ca_file("/nonexistent/ca.pem")
            .validated()
            .unwrap_err();
        assert!(matches!(err, ClientError::Config(ref m) if m.contains("cannot read")));
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let b = ClientBuilder::new().token("hunter2-very-secret");
        assert!(!format!("{b:?}").contains("hunter2"), "{b:?}");
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let err = ClientBuilder::new()
            .request_timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert!(matches!(err, ClientError::Config(_)));
        assert!(ClientBuilder::new().validate().is_ok());
    }
}
