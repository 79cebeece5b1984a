//! Why the server could not start or stopped with an error ([`ServerError`]), as
//! `server::start` and `ServerHandle::wait` report it to the binary.

use std::net::SocketAddr;

use crate::config::ConfigError;
use crate::store::StoreError;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be opened, recovered or flushed. (Not a `source`:
    /// the message already holds it, and a chain would print it twice.)
    #[error("store: {0}")]
    Store(StoreError),
    /// A listen address could not be bound. (The cause is not a `source`: the message
    /// holds it, and a chain would print it twice.)
    #[error("cannot listen on {addr} ({setting}): {cause}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which setting chose it: `--listen` or `--http`.
        setting: &'static str,
        /// The cause.
        cause: std::io::Error,
    },
    /// A cluster member's Raft node stopped on an error (its log or vote could not be
    /// written, or a committed entry not applied): the member stops so that its
    /// supervisor restarts it (exit 75, as for a failed store), and rejoins from what
    /// its disk holds.
    #[error("the raft node stopped: {0}")]
    RaftStopped(String),
    /// A background task panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ServerError {
    fn from(e: StoreError) -> Self {
        ServerError::Store(e)
    }
}
