//! Consuming: `SubscribeBuilder` (`client.subscribe(q).prefetch(n).await`) and
//! `Subscription`, a `Stream` of deliveries that survives reconnects. The registry that
//! re-subscribes after a reconnect lives in `client/link.rs`; settling lives in `delivery.rs`.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::client::Client;
use crate::delivery::Delivery;
use crate::error::{ClientError, Result};

/// Default prefetch (credit) of a subscription.
pub const DEFAULT_PREFETCH: u32 = 16;

/// What the connection's reader (or the client's supervisor) sends to a subscription.
pub(crate) enum SubEvent {
    Delivery(Delivery),
    /// The subscription ended for good with this error (the stream ends after it).
    Failed(ClientError),
}

/// A pending subscription: set options, then `.await` it.
///
/// ```no_run
/// # async fn demo(client: squall_client::Client) -> Result<(), squall_client::ClientError> {
/// let mut sub = client.subscribe("emails").prefetch(32).await?;
/// while let Some(delivery) = sub.recv().await {
///     let delivery = delivery?;
///     println!("task {} attempt {}", delivery.id(), delivery.attempt());
///     delivery.ack().await?;
/// }
/// # Ok(()) }
/// ```
#[must_use = "a subscription is made only when the builder is awaited"]
pub struct SubscribeBuilder {
    client: Client,
    queue: String,
    prefetch: u32,
}

impl SubscribeBuilder {
    pub(crate) fn new(client: Client, queue: String) -> Self {
        SubscribeBuilder {
            client,
            queue,
            prefetch: DEFAULT_PREFETCH,
        }
    }

    /// At most `n` unsettled deliveries at once on this subscription (default 16). The
    /// broker sends the next task as soon as one is settled.
    pub fn prefetch(mut self, n: u32) -> Self {
        self.prefetch = n;
        self
    }
}

impl IntoFuture for SubscribeBuilder {
    type Output = Result<Subscription>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Subscription>> + Send + 'static>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            self.client
                .open_subscription(self.queue, self.prefetch)
                .await
        })
    }
}

/// A live subscription: a [`Stream`] of [`Delivery`] results (or use
/// [`recv`](Subscription::recv) without importing `StreamExt`).
///
/// It keeps the client alive. After a reconnect the client re-subscribes with the same
/// queue and prefetch and this stream simply continues; deliveries still buffered from
/// the lost connection are skipped (their leases died with it). The stream yields an
/// `Err` only when the subscription ends for good (the broker refused to re-subscribe,
/// or reconnecting gave up), and ends (`None`) after that, after
/// [`unsubscribe`](Subscription::unsubscribe), or when the client is closed.
///
/// Dropping it unsubscribes and gives back the deliveries it still buffers, without
/// an attempt counted (they were never seen); [`stop_and_release`](Self::stop_and_release)
/// does the same and waits until the broker has stored it.
pub struct Subscription {
    client: Client,
    key: u64,
    queue: String,
    prefetch: u32,
    rx: mpsc::UnboundedReceiver<SubEvent>,
}

impl Subscription {
    pub(crate) fn new(
        client: Client,
        key: u64,
        queue: String,
        prefetch: u32,
        rx: mpsc::UnboundedReceiver<SubEvent>,
    ) -> Self {
        Subscription {
            client,
            key,
            queue,
            prefetch,
            rx,
        }
    }

    /// The queue subscribed to.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The subscription's prefetch.
    pub fn prefetch(&self) -> u32 {
        self.prefetch
    }

    /// The next delivery; `None` when the subscription has ended.
    pub async fn recv(&mut self) -> Option<Result<Delivery>> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Stops new deliveries. Deliveries already received stay valid: the stream yields
    /// the ones still buffered, then ends. Safe to call more than once.
    pub async fn unsubscribe(&mut self) -> Result<()> {
        self.client.close_subscription(self.key).await
    }

    /// Stops new deliveries and gives back every delivery still buffered, unseen: each
    /// is ready again at once without an attempt counted (see
    /// [`Delivery::release_unseen`]). Deliveries already taken from the stream are
    /// untouched. Returns how many were given back, once the broker stored that.
    ///
    /// After the broker confirmed the unsubscribe, every delivery it sent to this
    /// subscription is in the buffer, so none is left behind.
    pub async fn stop_and_release(&mut self) -> Result<usize> {
        self.unsubscribe().await?;
        let mut released = 0;
        let mut first_error = None;
        while let Ok(ev) = self.rx.try_recv() {
            let SubEvent::Delivery(d) = ev else { continue };
            if d.is_stale() {
                continue;
            }
            match d.release_unseen().await {
                Ok(()) => released += 1,
                // Gone already (expired, or its connection ended): nothing to give back.
                Err(ClientError::LeaseExpired { .. } | ClientError::ConnectionLost { .. }) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Delivery>>> {
        loop {
            return match self.rx.poll_recv(cx) {
                Poll::Ready(Some(SubEvent::Delivery(d))) => {
                    if d.is_stale() {
                        debug!(task = d.id(), queue = %self.queue, "skipping a delivery whose connection was lost");
                        continue;
                    }
                    Poll::Ready(Some(Ok(d)))
                }
                Poll::Ready(Some(SubEvent::Failed(e))) => {
                    // Ended for good: make sure no reconnect brings it back.
                    self.client.detach_subscription(self.key);
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.client.forget_subscription(self.key);
        // Release what is buffered quietly: the owner chose to drop them all at once.
        self.rx.close();
        let mut released = 0usize;
        while let Ok(ev) = self.rx.try_recv() {
            if let SubEvent::Delivery(d) = ev {
                if !d.is_stale() {
                    released += 1;
                }
                let (_, mut lease) = d.into_parts();
                lease.release_unseen_oneway();
            }
        }
        if released > 0 {
            info!(queue = %self.queue, released, "subscription dropped; released its buffered deliveries");
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}
