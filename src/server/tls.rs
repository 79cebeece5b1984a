//! TLS on the protocol port: loads the PEM certificate chain and private key named by
//! `tls.cert` and `tls.key` into a rustls server configuration, with the `ring`
//! crypto provider passed explicitly (no process-wide default is installed or needed).
//! The handshake itself runs in the connection task, under the handshake timeout
//! (`conn/`). Nothing else here touches sockets.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, ServerConfig};

/// The acceptor for `config`, or `None` when TLS is off. Unreadable or invalid files
/// are configuration errors naming their key.
pub(crate) fn acceptor(config: &ServerConfig) -> Result<Option<TlsAcceptor>, ConfigError> {
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
        return Ok(None);
    };
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    // ring, not aws-lc-rs: it builds without cmake or nasm. rustls 0.23.48 deprecates
    // ring's provider for its lack of post-quantum key exchange; that is the
    // trade-off taken, so the warning is silenced here, where it is made.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| error("tls.cert", format!("TLS setup failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            error(
                "tls.key",
                format!("the key does not fit the certificate, or is not usable: {e}"),
            )
        })?;
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

fn error(key: &str, reason: String) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        reason,
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bad = |e: String| error("tls.cert", format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        error(
            "tls.key",
            format!(
                "{}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                path.display()
            ),
        )
    })
}
