//! What `start` does before serving: open the store and rebuild the engine from it
//! (`recover`, on a blocking thread), bind the protocol port with its listen backlog,
//! and warn when that port is exposed without authentication or TLS.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};
use tracing::warn;

use super::clock::now_ms;
use super::error::ServerError;
use crate::broker::{Engine, EngineConfig};
use crate::config::{ConfigError, ServerConfig};
use crate::store::{Store, StoreConfig, StoreError};

/// Binds the protocol port with a listen queue of `backlog` connections (the kernel
/// caps it at `net.core.somaxconn`).
pub(super) fn bind_protocol(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As std's `TcpListener::bind` does on Unix: a restart may bind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Warns when the protocol port is reachable from other machines without
/// authentication: anyone who can connect may publish, consume and delete queues.
pub(super) fn warn_if_exposed(config: &ServerConfig, tls: bool, local_addr: SocketAddr) {
    if let Some(why) = exposure(config, tls, local_addr) {
        warn!(listen = %local_addr, "{why}");
    }
}

/// What is unsafe about listening on `addr` with `config`, if anything.
fn exposure(config: &ServerConfig, tls: bool, addr: SocketAddr) -> Option<&'static str> {
    if addr.ip().is_loopback() {
        return None;
    }
    if config.auth.is_enabled() {
        return (!tls).then_some(
            "listening on a non-loopback address without TLS: tokens and tasks cross the \
             network in clear text; set tls.cert and tls.key",
        );
    }
    Some(
        "listening on a non-loopback address WITHOUT authentication: anyone who can reach \
         this port can publish, consume and delete queues; configure [[auth.tokens]] \
         (see `squall token hash`) or listen on 127.0.0.1",
    )
}

pub(super) type Recovered = (Store, Engine, Vec<crate::model::Mutation>, u64);

/// The engine's settings from the server's.
pub(super) fn engine_config(config: &ServerConfig) -> EngineConfig {
    EngineConfig {
        queue_defaults: config.queue_defaults.clone(),
        max_lease_ms: config.max_lease_ms,
        rng_seed: now_ms(),
        ..EngineConfig::default()
    }
}

/// Rebuilds an engine from what `store` holds (at start-up, and in a cluster on a
/// node that becomes the leader): queues, pending tasks, schedules. Returns it with
/// the fixes recovery asks the store for and the number of tasks recovered.
pub(super) fn build_engine(
    store: &Store,
    engine_config: EngineConfig,
) -> Result<(Engine, Vec<crate::model::Mutation>, u64), StoreError> {
    let now = now_ms();
    let mut engine = Engine::new(engine_config, now);
    for (name, cfg) in store.queues()? {
        engine.set_queue_config(&name, cfg);
    }
    let mut fixes = Vec::new();
    let stats = store.recover(|id, state| {
        if let Some(m) = engine.recover_task(id, &state, now) {
            fixes.push(m);
        }
    })?;
    for schedule in store.schedules()? {
        let name = schedule.name.clone();
        // A record this build cannot read stays stored (and listed nowhere) rather
        // than stopping the broker; an operator can add it again.
        if let Err(e) = engine.load_schedule(schedule, now) {
            tracing::error!(schedule = %name, error = %e, "a stored schedule cannot be loaded; it does not fire");
        }
    }
    Ok((engine, fixes, stats.tasks))
}

/// Opens the store and rebuilds the engine from it (on a blocking thread).
pub(super) async fn recover(config: &ServerConfig) -> Result<Recovered, ServerError> {
    let store_config = StoreConfig {
        path: config.data_dir.clone(),
        fsync: config.fsync,
        cache_bytes: config.cache_bytes,
        journal_segment_bytes: config.journal_segment_bytes,
    };
    let test_delay = config.test_recovery_delay;
    let queue_defaults = config.queue_defaults.clone();
    let engine_config = engine_config(config);
    let recovered = tokio::task::spawn_blocking(move || {
        let store = Store::open(&store_config)?;
        store.set_queue_defaults(queue_defaults);
        #[cfg(feature = "test-hooks")]
        if !test_delay.is_zero() {
            tracing::warn!(?test_delay, "test hook: recovery delayed on purpose");
            std::thread::sleep(test_delay);
        }
        #[cfg(not(feature = "test-hooks"))]
        let _ = test_delay;
        let (engine, fixes, tasks) = build_engine(&store, engine_config)?;
        Ok::<_, StoreError>((store, engine, fixes, tasks))
    })
    .await
    .map_err(|e| ServerError::Internal(e.to_string()))?
    .map_err(|e| match e {
        // The configuration asks for more than the volume holds: exit 64, as for any
        // setting the broker cannot run with.
        StoreError::VolumeTooSmall(e) => ServerError::Config(ConfigError {
            key: "data_dir".to_owned(),
            reason: e.to_string(),
        }),
        e => ServerError::Store(e),
    })?;
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The kernel completes connections up to the backlog while nobody accepts: with
    /// std's fixed 128 only about 129 of these would connect, the rest waiting on SYN
    /// retransmits until their timeout.
    #[tokio::test]
    async fn the_listen_backlog_is_applied() {
        const CLIENTS: usize = 400;
        let listener = bind_protocol("127.0.0.1:0".parse().unwrap(), 512).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..CLIENTS).map(|_| {
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        });
        let results = futures_util::future::join_all(connects).await;
        let connected = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(connected, CLIENTS, "connections completed without accept");
        drop(listener);
    }

    #[test]
    fn only_a_non_loopback_address_without_auth_is_flagged() {
        let open = ServerConfig::default();
        let lo: SocketAddr = "127.0.0.1:7600".parse().unwrap();
        let lo6: SocketAddr = "[::1]:7600".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7600".parse().unwrap();
        assert!(exposure(&open, false, lo).is_none());
        assert!(exposure(&open, false, lo6).is_none());
        assert!(exposure(&open, false, any).is_some());
        assert!(exposure(&open, true, any).is_some());
        let mut secured = ServerConfig::default();
        secured.auth.tokens.push(crate::auth::TokenEntry {
            name: "a".into(),
            hash: crate::auth::TokenHash::new("t"),
            role: crate::auth::Role::Admin,
            queues: Vec::new(),
        });
        assert!(
            exposure(&secured, false, any).is_some(),
            "tokens in clear text"
        );
        assert!(exposure(&secured, true, any).is_none());
    }
}
