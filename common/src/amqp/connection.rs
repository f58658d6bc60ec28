//! The connection supervisor: one AMQP connection per process, re-established with backoff whenever it drops.
//!
//! lapin's own recovery is left off on purpose: it can resume silently with deliveries lost and broker-named
//! queues gone. Here a lost connection is loud: the link goes [`Link::Down`], every component (RPC client and
//! server, event consumer) sees it through [`Broker::watch`], and when a new connection is up each of them opens its
//! channels and re-declares its part of the topology on it. A process started before RabbitMQ simply waits, so no
//! start order is needed.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::topology::Topology;
use crate::config::AmqpSettings;

/// One live AMQP connection. A new `Session` (with a higher `generation`) replaces it after every reconnect.
#[derive(Debug)]
pub struct Session {
    pub connection: Connection,
    pub generation: u64,
}

impl Session {
    pub async fn channel(&self) -> lapin::Result<Channel> {
        self.connection.create_channel().await
    }
}

/// The state of the process's link to RabbitMQ.
#[derive(Debug, Clone)]
pub enum Link {
    Down,
    Up(Arc<Session>),
}

/// A handle on the supervised connection. Cheap to clone.
///
/// The broker has its own lifetime, separate from the application's shutdown signal: components stop consuming
/// and finish their in-flight work first, then the application calls [`Broker::close`], so replies and acks of
/// the last requests still reach RabbitMQ.
#[derive(Debug, Clone)]
pub struct Broker {
    topology: Topology,
    link: watch::Receiver<Link>,
    closing: CancellationToken,
    supervisor: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Broker {
    /// Starts supervising a connection in the background and returns at once; the first connection attempt runs
    /// concurrently. `name` shows in the management UI's connection list (for example `api 3f9c`).
    pub fn start(settings: &AmqpSettings, name: String) -> Broker {
        let topology = Topology::new(settings.prefix.clone());
        let (tx, rx) = watch::channel(Link::Down);
        let closing = CancellationToken::new();
        let supervisor =
            tokio::spawn(supervise(settings.url.expose().clone(), name, topology.clone(), tx, closing.clone()));
        Broker { topology, link: rx, closing, supervisor: Arc::new(tokio::sync::Mutex::new(Some(supervisor))) }
    }

    /// Closes the connection (cleanly, so exclusive queues go at once) and stops reconnecting.
    pub async fn close(&self) {
        self.closing.cancel();
        if let Some(handle) = self.supervisor.lock().await.take() {
            let _ = handle.await;
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The current link, for a component to follow changes.
    pub fn watch(&self) -> watch::Receiver<Link> {
        self.link.clone()
    }

    /// The live session, if connected now.
    pub fn current(&self) -> Option<Arc<Session>> {
        match &*self.link.borrow() {
            Link::Up(session) => Some(session.clone()),
            Link::Down => None,
        }
    }

    /// Whether [`Broker::close`] was called: losing the connection is then expected, not news.
    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    pub fn is_connected(&self) -> bool {
        self.current().is_some_and(|s| s.connection.status().connected())
    }

    /// Waits for a session newer than `after` (pass 0 for any). `None` once the broker is closing.
    pub async fn next_session(&self, after: u64) -> Option<Arc<Session>> {
        let mut link = self.link.clone();
        loop {
            if let Link::Up(session) = &*link.borrow_and_update()
                && session.generation > after
            {
                return Some(session.clone());
            }
            tokio::select! {
                changed = link.changed() => if changed.is_err() { return None },
                () = self.closing.cancelled() => return None,
            }
        }
    }
}

/// Waits until the session's connection is no longer usable; returns the last error seen, which names the cause.
pub async fn session_lost(session: &Session) -> Option<lapin::Error> {
    let mut events = session.connection.events_listener();
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let mut last_error = None;
    loop {
        if !session.connection.status().connected() {
            return last_error;
        }
        tokio::select! {
            event = events.next() => match event {
                // Channel-level errors (a passive declare of a missing queue, say) arrive here too; only a
                // connection that is no longer connected counts as lost.
                Some(Event::Error(error)) => {
                    tracing::debug!(%error, "amqp error event");
                    last_error = Some(error);
                }
                Some(_) => {}
                None => return last_error,
            },
            _ = poll.tick() => {}
        }
    }
}

/// How long closing waits for the broker's acknowledgement.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

async fn supervise(
    url: String,
    name: String,
    topology: Topology,
    link: watch::Sender<Link>,
    closing: CancellationToken,
) {
    let mut generation = 0u64;
    let mut failures = 0u32;
    while !closing.is_cancelled() {
        match connect(&url, &name, &topology).await {
            Ok(connection) => {
                failures = 0;
                generation += 1;
                let session = Arc::new(Session { connection, generation });
                tracing::info!(generation, "connected to RabbitMQ");
                link.send_replace(Link::Up(session.clone()));
                tokio::select! {
                    cause = session_lost(&session) => {
                        let cause = cause.map_or_else(|| "closed".to_owned(), |e| e.to_string());
                        tracing::warn!(generation, %cause, "lost the RabbitMQ connection; reconnecting");
                        link.send_replace(Link::Down);
                    }
                    () = closing.cancelled() => {
                        link.send_replace(Link::Down);
                        // Bounded: a broker that never acknowledges the close (seen on a loaded machine) must not
                        // hold a stopping process forever; the connection is dropped either way.
                        let close = session.connection.close(200, "shutting down".into());
                        if tokio::time::timeout(CLOSE_WAIT, close).await.is_err() {
                            tracing::warn!("RabbitMQ did not acknowledge the close in time; dropping the connection");
                        }
                        return;
                    }
                }
            }
            Err(error) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(%error, attempt = failures, "cannot reach RabbitMQ yet; retrying");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff(failures)) => {}
            () = closing.cancelled() => return,
        }
    }
}

async fn connect(url: &str, name: &str, topology: &Topology) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connection = tokio::time::timeout(Duration::from_secs(10), Connection::connect(url, properties))
        .await
        .map_err(|_| anyhow::anyhow!("timed out connecting"))??;
    topology.declare_shared(&connection).await?;
    Ok(connection)
}

/// 100 ms doubling to 5 s, with up to 25% jitter so a fleet of replicas does not reconnect in lockstep.
fn backoff(failures: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << failures.min(6)).min(5_000);
    let jitter = (rand_fraction() * base as f64 * 0.25) as u64;
    Duration::from_millis(base + jitter)
}

fn rand_fraction() -> f64 {
    // The low bits of a fresh UUIDv4 are random enough for jitter, and spare another dependency.
    (uuid::Uuid::new_v4().as_u128() as u32) as f64 / u32::MAX as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) >= Duration::from_millis(100) && backoff(0) <= Duration::from_millis(125));
        assert!(backoff(3) >= Duration::from_millis(800));
        assert!(backoff(50) <= Duration::from_millis(6_250));
    }
}
