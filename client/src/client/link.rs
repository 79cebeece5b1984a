//! A client's connection to its broker, kept up in the background: the state the
//! handles and the supervisor share ([`Shared`]: the live link, the server's info, the
//! subscriptions to restore), the supervisor task that watches the connection,
//! reconnects with backoff and re-subscribes, and the wait for a connection that
//! calls go through.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use squall_proto::v1::{self, request::Op, response};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::conn::{unexpected, Conn};
use crate::error::{ClientError, Result};
use crate::info::ServerInfo;
use crate::subscription::SubEvent;

/// The connection state callers look at.
pub(super) enum Link {
    Up(Arc<Conn>),
    Down { reason: String },
    Closed,
}

/// What the supervisor needs to re-subscribe a subscription after a reconnect.
pub(super) struct SubRecord {
    pub(super) queue: String,
    pub(super) prefetch: u32,
    pub(super) tx: mpsc::UnboundedSender<SubEvent>,
    /// The connection and subscription id it is currently attached to.
    pub(super) current: Option<(Weak<Conn>, u64)>,
}

/// State shared by the handles and the supervisor task (which must not keep the
/// handles alive, so it holds this and not `Inner`).
pub(super) struct Shared {
    /// The address (or comma-separated addresses) the client was given.
    pub(super) addr: Arc<str>,
    /// Where to dial: the addresses given, then every member a cluster's leader named.
    pub(super) members: Mutex<Vec<Arc<str>>>,
    pub(super) config: Config,
    pub(super) link: watch::Sender<Link>,
    pub(super) info: Mutex<Arc<ServerInfo>>,
    pub(super) subs: Mutex<HashMap<u64, SubRecord>>,
    pub(super) next_sub_key: AtomicU64,
    pub(super) generation: AtomicU64,
    pub(super) shutdown: CancellationToken,
    /// This client's producer id (random), sent with every publish to a cluster.
    pub(super) producer: Arc<str>,
    /// The sequence number of the next numbered publish.
    pub(super) next_sequence: AtomicU64,
}

impl Shared {
    pub(super) fn info(&self) -> Arc<ServerInfo> {
        self.info.lock().clone()
    }

    /// Remembers what `conn` says: its server info and, from a cluster's leader, the
    /// client addresses of every member (to dial when it goes away).
    pub(super) fn learn(&self, conn: &Conn) {
        let info = conn.info().clone();
        if let Some(cluster) = &info.cluster {
            let mut members = self.members.lock();
            for (_, addr) in &cluster.members {
                if !addr.is_empty() && !members.iter().any(|m| **m == **addr) {
                    members.push(Arc::from(addr.as_str()));
                }
            }
        }
        *self.info.lock() = info;
    }

    /// The live connection, waiting (bounded) while reconnecting.
    pub(super) async fn conn(&self) -> Result<Arc<Conn>> {
        match &*self.link.borrow() {
            Link::Up(conn) if !conn.is_closed() => return Ok(conn.clone()),
            Link::Closed => return Err(ClientError::Closed),
            _ => {}
        }
        let wait = self.config.wait_for_connection;
        let mut rx = self.link.subscribe();
        let ready = |link: &Link| match link {
            Link::Up(conn) => !conn.is_closed(),
            Link::Down { .. } => false,
            Link::Closed => true,
        };
        let waited = tokio::time::timeout(wait, async {
            match rx.wait_for(ready).await {
                Ok(link) => match &*link {
                    Link::Up(conn) => Ok(conn.clone()),
                    _ => Err(ClientError::Closed),
                },
                Err(_) => Err(ClientError::Closed),
            }
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(_) => {
                let reason = match &*self.link.borrow() {
                    Link::Down { reason } => reason.clone(),
                    Link::Up(conn) => conn.close_reason(),
                    Link::Closed => return Err(ClientError::Closed),
                };
                Err(ClientError::Unavailable {
                    waited: wait,
                    reason,
                })
            }
        }
    }

    /// Subscribes record `key` on `conn`. The route is registered before the request
    /// is sent, since a delivery can follow the `SubscribeOk` immediately.
    pub(super) async fn attach(
        &self,
        conn: &Arc<Conn>,
        key: u64,
        queue: &str,
        prefetch: u32,
        tx: mpsc::UnboundedSender<SubEvent>,
    ) -> Result<()> {
        let id = conn.next_id();
        conn.add_route(id, tx)?;
        {
            let mut subs = self.subs.lock();
            match subs.get_mut(&key) {
                Some(record) => record.current = Some((Arc::downgrade(conn), id)),
                None => {
                    drop(subs);
                    conn.remove_route(id);
                    return Err(ClientError::Closed);
                }
            }
        }
        let op = Op::Subscribe(v1::Subscribe {
            queue: queue.to_owned(),
            prefetch,
        });
        let result = match conn.call_with_id(id, op, "subscribe").await {
            Ok(response::Result::Subscribe(ok)) if ok.subscription_id == id => Ok(()),
            Ok(response::Result::Subscribe(ok)) => Err(ClientError::Protocol(format!(
                "broker named subscription {} for Subscribe request {id}; they must be equal",
                ok.subscription_id
            ))),
            Ok(other) => Err(unexpected("subscribe", other)),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            conn.remove_route(id);
            if matches!(e, ClientError::Timeout { .. }) {
                // The broker may have subscribed after all: stop it, or it would keep
                // pushing deliveries that nobody takes.
                conn.send_oneway(Op::Unsubscribe(v1::Unsubscribe {
                    subscription_id: id,
                }));
            }
            if let Some(record) = self.subs.lock().get_mut(&key) {
                // Only if still attached here: the supervisor may have re-attached it
                // to a newer connection meanwhile (ids repeat across connections).
                let here = Arc::downgrade(conn);
                if matches!(&record.current, Some((c, cur)) if *cur == id && c.ptr_eq(&here)) {
                    record.current = None;
                }
            }
        }
        result
    }

    /// Re-subscribes every live subscription on a fresh connection (pipelined).
    pub(super) async fn resubscribe(&self, conn: &Arc<Conn>) {
        let todo: Vec<(u64, String, u32, mpsc::UnboundedSender<SubEvent>)> = self
            .subs
            .lock()
            .iter()
            .map(|(key, r)| (*key, r.queue.clone(), r.prefetch, r.tx.clone()))
            .collect();
        if todo.is_empty() {
            return;
        }
        let attaches = todo
            .into_iter()
            .map(|(key, queue, prefetch, tx)| async move {
                let result = self.attach(conn, key, &queue, prefetch, tx.clone()).await;
                (key, queue, tx, result)
            });
        for (key, queue, tx, result) in futures_util::future::join_all(attaches).await {
            match result {
                Ok(()) => info!(queue = %queue, "re-subscribed after reconnect"),
                Err(
                    e @ (ClientError::Server { .. }
                    | ClientError::Invalid { .. }
                    | ClientError::Protocol(_)),
                ) => {
                    error!(queue = %queue, error = %e, "broker refused to re-subscribe; ending the subscription");
                    let _ = tx.send(SubEvent::Failed(e));
                    self.subs.lock().remove(&key);
                }
                // The new connection failed too; the next reconnect tries again.
                Err(e) => debug!(queue = %queue, error = %e, "re-subscribe interrupted"),
            }
        }
    }

    /// Final state: no connection, every subscription ended (with `failure`, if given).
    pub(super) fn close_all(&self, failure: Option<String>) {
        self.link.send_replace(Link::Closed);
        let records = std::mem::take(&mut *self.subs.lock());
        if let Some(reason) = failure {
            for record in records.values() {
                let _ = record
                    .tx
                    .send(SubEvent::Failed(ClientError::ConnectionLost {
                        reason: reason.clone(),
                    }));
            }
        }
    }
}

/// Keeps the client connected until shutdown: waits for the connection to end,
/// reconnects with backoff, re-subscribes, publishes the new connection.
pub(super) async fn supervise(shared: Arc<Shared>, mut conn: Arc<Conn>) {
    let failure = loop {
        if !watch_connection(&shared, &conn).await {
            conn.shutdown("client closed");
            break None;
        }
        let reason = conn.close_reason();
        if shared.shutdown.is_cancelled() {
            break None;
        }
        warn!(addr = %shared.addr, reason = %reason, "connection to the broker lost; reconnecting");
        shared.link.send_replace(Link::Down { reason });
        match reconnect(&shared).await {
            Ok(next) => conn = next,
            Err(failure) => break failure,
        }
    };
    shared.close_all(failure);
    debug!(addr = %shared.addr, "client supervisor stopped");
}

/// Waits until `conn` ends (true) or the client shuts down (false), pinging the
/// broker every keepalive interval meanwhile.
async fn watch_connection(shared: &Shared, conn: &Arc<Conn>) -> bool {
    let keepalive = shared.config.keepalive;
    let period = keepalive.unwrap_or_default();
    loop {
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return false,
            _ = conn.closed() => return true,
            _ = tokio::time::sleep(period), if keepalive.is_some() => {
                // In its own task so that shutdown and loss stay observed meanwhile;
                // it ends within the request timeout, or at once if the connection ends.
                let conn = conn.clone();
                tokio::spawn(async move {
                    match conn.call(Op::Ping(v1::Ping {}), "keepalive ping").await {
                        Ok(_) => {}
                        Err(e @ ClientError::Timeout { .. }) => {
                            warn!(error = %e, "broker did not answer a keepalive ping; dropping the connection");
                            conn.shutdown("keepalive ping unanswered");
                        }
                        Err(e) => debug!(error = %e, "keepalive ping failed"),
                    }
                });
            }
        }
    }
}

/// Dials until it succeeds, the policy gives up (`Err(Some(reason))`), or the client
/// shuts down (`Err(None)`).
async fn reconnect(shared: &Shared) -> std::result::Result<Arc<Conn>, Option<String>> {
    let policy = &shared.config.reconnect;
    let mut failures = 0u32;
    let mut last_error = String::from("connection lost");
    loop {
        if policy.gives_up_after(failures) {
            error!(addr = %shared.addr, failures, last_error = %last_error, "giving up reconnecting; the client is closed");
            return Err(Some(format!(
                "gave up reconnecting after {failures} attempts: {last_error}"
            )));
        }
        let delay = policy.delay(failures, rand::random::<f64>());
        tokio::select! {
            _ = shared.shutdown.cancelled() => return Err(None),
            _ = tokio::time::sleep(delay) => {}
        }
        let generation = shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let members = shared.members.lock().clone();
        let dialed = tokio::select! {
            _ = shared.shutdown.cancelled() => return Err(None),
            dialed = dial_leader(&members, &shared.config, generation) => dialed,
        };
        match dialed {
            Ok(conn) => {
                shared.learn(&conn);
                tokio::select! {
                    _ = shared.shutdown.cancelled() => {
                        conn.shutdown("client closed");
                        return Err(None);
                    }
                    _ = shared.resubscribe(&conn) => {}
                }
                info!(addr = %shared.addr, generation = conn.generation(), after_failures = failures, "reconnected to squall broker");
                shared.link.send_replace(Link::Up(conn.clone()));
                return Ok(conn);
            }
            Err(e) => {
                failures += 1;
                warn!(addr = %shared.addr, attempt = failures, error = %e, "reconnect failed");
                last_error = e.to_string();
                shared.link.send_replace(Link::Down {
                    reason: last_error.clone(),
                });
            }
        }
    }
}

/// The addresses in `addr`: one, or several members of a cluster separated by commas.
pub(super) fn members_of(addr: &str) -> Vec<Arc<str>> {
    addr.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(Arc::from)
        .collect()
}

/// The leader's client address in a `NOT_LEADER` refusal ("... the leader is node N
/// at HOST:PORT"), if it names one.
fn leader_named_in(message: &str) -> Option<Arc<str>> {
    let (_, addr) = message.rsplit_once(" at ")?;
    let addr = addr.trim();
    (addr.contains(':') && !addr.contains(' ')).then(|| Arc::from(addr))
}

/// Dials `members` in turn until one accepts the handshake. A cluster member that is
/// not the leader refuses it with `NOT_LEADER` naming the leader, which is dialed
/// next. With one address this is one dial.
pub(super) async fn dial_leader(
    members: &[Arc<str>],
    config: &Config,
    generation: u64,
) -> Result<Arc<Conn>> {
    let mut todo: std::collections::VecDeque<Arc<str>> = members.iter().cloned().collect();
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last = ClientError::Config("no broker address given".to_owned());
    while let Some(addr) = todo.pop_front() {
        if tried.contains(&addr) {
            continue;
        }
        tried.push(addr.clone());
        match Conn::dial(&addr, config, generation).await {
            Ok(conn) => return Ok(conn),
            Err(e) => {
                if let ClientError::Server {
                    code: squall_proto::ErrorCode::NotLeader,
                    message,
                } = &e
                {
                    debug!(addr = %addr, %message, "not the cluster's leader");
                    if let Some(leader) = leader_named_in(message) {
                        if !tried.contains(&leader) {
                            todo.push_front(leader);
                        }
                    }
                }
                last = e;
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_not_leader_refusal_names_the_leader() {
        let msg = "node 2 is not the cluster's leader; the leader is node 3 at 127.0.0.1:7603";
        assert_eq!(leader_named_in(msg).as_deref(), Some("127.0.0.1:7603"));
        let none =
            "node 2 knows no leader of the cluster (an election is under way); retry shortly";
        assert_eq!(leader_named_in(none), None);
        assert_eq!(
            members_of(" a:1, b:2 ,,c:3"),
            vec![Arc::from("a:1"), Arc::from("b:2"), Arc::from("c:3")]
        );
    }
}
