//! Precise wake-ups for fixed-rate producers: a thread that notifies at each scheduled
//! send time. Nothing else lives here.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Wakes a fixed-rate producer at each scheduled send time from a thread of its own,
/// with a precision of tens of microseconds. tokio's timer rounds sleeps up to whole
/// milliseconds, and latency counts from the schedule, so on a 1,000 msgs/s run it
/// would add up to a millisecond of the harness's own lateness to every sample.
pub struct Pacer {
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
}

impl Pacer {
    pub fn start(started: Instant, interval: Duration) -> Pacer {
        let notify = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (n, st) = (notify.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || {
                #[cfg(target_os = "linux")]
                // SAFETY: PR_SET_TIMERSLACK only sets this thread's timer slack (1 ns).
                unsafe {
                    libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
                }
                let mut next = started;
                while !st.load(Relaxed) {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                        continue;
                    }
                    n.notify_one();
                    next += interval;
                }
            });
        if let Err(e) = spawned {
            // Without the thread, `until` would wait forever: fall back to tokio's timer.
            tracing::warn!(error = %e, "no pacer thread; fixed-rate sends use tokio's timer");
            stop.store(true, Relaxed);
        }
        Pacer { notify, stop }
    }

    async fn until(&self, at: Instant) {
        if self.stop.load(Relaxed) {
            return tokio::time::sleep_until(at.into()).await;
        }
        while Instant::now() < at {
            self.notify.notified().await;
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Waits for a scheduled send time: precisely with a pacer, else with tokio's timer.
pub async fn wait_until(pacer: Option<&Pacer>, at: Instant) {
    match pacer {
        Some(p) => p.until(at).await,
        None => tokio::time::sleep_until(at.into()).await,
    }
}
