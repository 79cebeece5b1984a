//! Process-wide counters ([`Metrics`]: atomics and atomic histograms updated on hot
//! paths without locks) and the publish timer that feeds one of them. Encoding them
//! for a scrape is `http/exposition.rs`.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::histogram::{Histogram, LATENCY_MICROS};

/// Process-wide counters, shared by the accept loop, connections and the HTTP server.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Open client connections.
    pub(crate) connections_open: AtomicI64,
    /// Client connections accepted since start.
    pub(crate) connections_accepted: AtomicU64,
    /// Connections whose deliveries are paused because they read too slowly.
    pub(crate) paused_connections: AtomicI64,
    /// Client connections refused at `max_connections` since start.
    pub(crate) connections_refused: AtomicU64,
    /// Microseconds from a publish request's arrival to its confirmation.
    pub(crate) publish_confirm_micros: Histogram,
    /// True once recovery finished and the protocol port is bound; false again as soon
    /// as shutdown begins.
    pub(crate) ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections_open: AtomicI64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            paused_connections: AtomicI64::new(0),
            publish_confirm_micros: Histogram::new(LATENCY_MICROS),
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }
}

/// Measures one publish from arrival to confirmation (carried by its store job).
#[derive(Debug)]
pub(crate) struct PublishTimer {
    since: Instant,
    metrics: Arc<Metrics>,
}

impl PublishTimer {
    /// A publish that arrived at `since` (one clock read for a read's requests).
    pub(crate) fn start_at(since: Instant, metrics: &Arc<Metrics>) -> PublishTimer {
        PublishTimer {
            since,
            metrics: metrics.clone(),
        }
    }

    /// Its confirmation at `now` (one clock read for a group's completions).
    pub(crate) fn observe_at(self, now: Instant) {
        let micros = crate::histogram::micros(now.saturating_duration_since(self.since));
        self.metrics.publish_confirm_micros.observe(micros);
    }
}
