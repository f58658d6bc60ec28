//! The typed RPC client: `client.call::<Register>(&request, &ctx).await`.
//!
//! Each call gets a correlation id unique to this process (a random prefix chosen at start, then a counter); replies
//! come back on the instance's own named, exclusive reply queue. The prefix matters because the queue is named after
//! the instance id, which a restarted replica keeps: a request its previous process sent may still be answered
//! into the queue after the restart, and a counter alone would match that answer to a new, unrelated call.
//!
//! The per-call timeout travels as a deadline header, and the server that takes a request after it drops the
//! request unexecuted. Not also as the message's `expiration`: the request queues dead-letter
//! what they reject, and RabbitMQ dead-letters expired messages too, so every request that timed out in a queue
//! (a slow or stuck service) would have piled up in the dead-letter queue, which is kept for requests that
//! failed. A timed-out request waits in its (length-limited) queue instead and is dropped when taken. Requests are published `mandatory` with publisher confirms: no queue bound for the
//! operation comes back as "unavailable" at once. A queue that exists but has no consumer (every replica stopped)
//! is caught by a consumer-count probe cached for a second, so that case is also answered at once, not after the
//! timeout. Replies for calls that already gave up are discarded. The one wait: a call made while the connection
//! is up but the reply queue is not yet consumed (the few round trips after every connect) waits for that, at most
//! [`ATTACH_WAIT`] (or half its own timeout) and once per connection: when a wait runs out, later calls on the same
//! connection fail at once until the client is attached, so a stuck attach does not hold up every call (a gateway
//! sends one batch at a time). A broker that is down fails a call at once.
//!
//! A zero count is never trusted from the cache (a replica that just started must not be turned away), so while an
//! operation has no consumer every call to it asks the broker. Those probes are shared: calls that ask while one is
//! running wait for the next one to start and all take its answer, so a burst of calls to a stopped service costs
//! about two probes, not one each. And each operation has its own probe, so calls to a stopped service never hold
//! up the probes of a running one (the user-service's `login` while the message-service is down).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel,
    options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
};
use tokio::sync::{oneshot, watch};

use super::{
    connection::{Broker, Session},
    headers,
};
use crate::protocol::{ApiError, Operation, RpcReply};

/// How long a consumer count read from the broker is trusted.
const PRESENCE_TTL: Duration = Duration::from_secs(1);

/// How long a call waits for the client to attach to a connection that is up (its reply queue declared and
/// consumed, which takes a few round trips after every connect). A broker that is down still fails a call at once.
const ATTACH_WAIT: Duration = Duration::from_secs(2);

/// Per-call context: the request id to log under, and how long to wait.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub request_id: String,
    pub timeout: Duration,
}

impl CallContext {
    pub fn new(request_id: impl Into<String>, timeout: Duration) -> Self {
        Self { request_id: request_id.into(), timeout }
    }
}

type ReplySender = oneshot::Sender<Result<Vec<u8>, ApiError>>;

#[derive(Debug)]
struct Inner {
    broker: Broker,
    reply_queue: String,
    /// This process's part of every correlation id: `<boot>.<n>`.
    boot: String,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, ReplySender>>,
    /// The publishing channel of the current connection (with publisher confirms), `None` while down.
    link: RwLock<Option<Channel>>,
    /// Bumped each time `link` is set, for calls waiting for the client to attach.
    attached: watch::Sender<u64>,
    /// The generation of the connection on which a call's wait for the attach ran out (0: none since the client
    /// last attached): calls on it then fail at once rather than each wait again.
    gave_up_on: AtomicU64,
    /// Each operation's last consumer count, and when the probe that read it started.
    presence: Mutex<HashMap<String, (u32, Instant)>>,
    /// Each operation's probe: its channel, locked while a probe runs.
    probes: Mutex<HashMap<String, ProbeSlot>>,
    probes_sent: AtomicU64,
}

type ProbeSlot = Arc<tokio::sync::Mutex<Option<Channel>>>;

/// A handle on the RPC client. Cheap to clone; one per process is enough.
#[derive(Debug, Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

impl RpcClient {
    /// Starts the client: its reply consumer follows the broker's connection in the background.
    /// `component` and `instance_id` name the reply queue (`<prefix>.<component>.<instance>.replies`).
    pub fn start(broker: Broker, component: &str, instance_id: &str) -> RpcClient {
        let reply_queue = broker.topology().reply_queue(component, instance_id);
        let inner = Arc::new(Inner {
            broker,
            reply_queue,
            boot: uuid::Uuid::new_v4().simple().to_string(),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            link: RwLock::new(None),
            attached: watch::Sender::new(0),
            gave_up_on: AtomicU64::new(0),
            presence: Mutex::new(HashMap::new()),
            probes: Mutex::new(HashMap::new()),
            probes_sent: AtomicU64::new(0),
        });
        tokio::spawn(consume_replies(Arc::downgrade(&inner)));
        RpcClient { inner }
    }

    /// Whether the client can send requests now (connected, reply queue consumed).
    pub fn is_ready(&self) -> bool {
        self.inner.link.read().is_ok_and(|link| link.is_some())
    }

    /// Calls operation `O` and waits for its reply. Errors come back as [`ApiError`]s: the service's own, or
    /// `unavailable` (no replica, broker down), `timeout` (no reply in time), `internal` (a garbled reply).
    pub async fn call<O: Operation>(&self, request: &O::Request, ctx: &CallContext) -> Result<O::Response, ApiError> {
        let body = serde_json::to_vec(request).map_err(|error| {
            tracing::error!(%error, operation = O::ROUTING_KEY, "cannot encode request");
            ApiError::internal()
        })?;
        // The caller stops waiting `timeout` after this moment, however long the consumer probe takes: the server
        // is told that moment, not a later one, so it does not run what nobody waits for.
        let deadline_ms = headers::deadline_after(ctx.timeout);
        let reply = tokio::time::timeout(
            ctx.timeout,
            self.call_raw(O::ROUTING_KEY, body, &ctx.request_id, deadline_ms, ctx.timeout),
        )
        .await
        .map_err(|_| ApiError::timeout(format!("{} did not answer in time", O::ROUTING_KEY)))??;
        let reply: RpcReply<O::Response> = serde_json::from_slice(&reply).map_err(|error| {
            tracing::error!(%error, operation = O::ROUTING_KEY, "cannot decode reply");
            ApiError::internal()
        })?;
        reply.into()
    }

    async fn call_raw(
        &self,
        routing_key: &str,
        body: Vec<u8>,
        request_id: &str,
        deadline_ms: i64,
        timeout: Duration,
    ) -> Result<Vec<u8>, ApiError> {
        let unavailable = || ApiError::unavailable(format!("{routing_key} is unavailable, try again shortly"));
        if self.consumer_count(routing_key).await == Some(0) {
            tracing::warn!(operation = routing_key, "no consumer for the operation");
            return Err(unavailable());
        }
        // Half the call's time at most, so that a client that cannot attach answers `unavailable`, not `timeout`.
        let publish = self
            .publishing_channel(ATTACH_WAIT.min(timeout / 2))
            .await
            .ok_or_else(|| ApiError::unavailable("the message broker is unreachable, try again shortly"))?;

        // A call that asked after this moment may take an "unroutable" below as its answer; one that asked before
        // may not (a queue may have been bound since it asked).
        let published = Instant::now();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let _pending = PendingGuard::insert(&self.inner, id, tx);
        let properties = BasicProperties::default()
            .with_correlation_id(format!("{}.{id}", self.inner.boot).into())
            .with_reply_to(self.inner.reply_queue.as_str().into())
            .with_content_type("application/json".into())
            .with_headers(headers::request_headers(request_id, deadline_ms));
        let confirm = publish
            .basic_publish(
                self.inner.broker.topology().rpc_exchange().into(),
                routing_key.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &body,
                properties,
            )
            .await
            .map_err(|error| {
                tracing::warn!(%error, operation = routing_key, "publish failed");
                unavailable()
            })?
            .await
            .map_err(|error| {
                tracing::warn!(%error, operation = routing_key, "publish not confirmed");
                unavailable()
            })?;
        if confirm.is_nack() {
            // The queue is at its length limit (`x-overflow = reject-publish`).
            tracing::warn!(operation = routing_key, "request refused by the broker");
            return Err(unavailable());
        }
        if confirm.take_message().is_some() {
            tracing::warn!(operation = routing_key, "request unroutable: no queue bound");
            self.remember_at(routing_key, 0, published);
            return Err(unavailable());
        }
        match rx.await {
            Ok(reply) => reply,
            // The sender is dropped only when the pending entry is cleared without an answer.
            Err(_) => Err(unavailable()),
        }
    }

    /// The current connection's publishing channel. While the connection is up but the client is not yet attached
    /// to it (just after the process started, or after a reconnect, the few round trips that declare and consume
    /// the reply queue), waits for that, up to `wait`: the process's own RPC server may already be taking requests
    /// on the same connection, and one that needs this client (the message-service asking the user-service) must
    /// not be failed for a race inside the process. `None` at once while the broker is down, and once a wait on
    /// this connection has run out (the attach is stuck: a reply queue still locked by a previous process of the
    /// same instance id, say), until the client attaches.
    async fn publishing_channel(&self, wait: Duration) -> Option<Channel> {
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribed before looking, so an attach between the look and the wait still wakes the wait.
        let mut attached = self.inner.attached.subscribe();
        let mut link = self.inner.broker.watch();
        loop {
            if let Some(channel) = self.inner.link.read().ok()?.clone() {
                return Some(channel);
            }
            let session = self.inner.broker.current().filter(|s| s.connection.status().connected())?;
            if self.inner.gave_up_on.load(Ordering::Relaxed) == session.generation {
                return None;
            }
            tokio::select! {
                changed = attached.changed() => changed.ok()?,
                changed = link.changed() => changed.ok()?,
                () = tokio::time::sleep_until(deadline) => {
                    // A call short of time gave up early; only a full wait says the attach is stuck.
                    if wait >= ATTACH_WAIT {
                        tracing::warn!(generation = session.generation, "the RPC client did not attach in time");
                        self.inner.gave_up_on.store(session.generation, Ordering::Relaxed);
                    }
                    return None;
                }
            }
        }
    }

    /// How many consumers the operation's queue has, from a cache refreshed every second; a cached zero is
    /// re-checked, by a probe that started after this call asked, so a freshly started service is not turned away.
    /// `None` when it cannot be told.
    pub async fn consumer_count(&self, routing_key: &str) -> Option<u32> {
        if let Some((count, _)) = self.cached(routing_key)
            && count > 0
        {
            return Some(count);
        }
        let asked = Instant::now();
        let slot = self.probe_slot(routing_key)?;
        let mut channel = slot.lock().await;
        // A probe that started after this call asked (while it waited for the slot) answers it as well as its own.
        if let Some((count, probed)) = self.cached(routing_key)
            && (count > 0 || probed >= asked)
        {
            return Some(count);
        }
        let started = Instant::now();
        let count = self.probe(&mut channel, routing_key).await;
        if let Some(count) = count {
            self.remember_at(routing_key, count, started);
        }
        count
    }

    /// How many consumer probes this client has sent to the broker (for tests and diagnostics).
    pub fn probes_sent(&self) -> u64 {
        self.inner.probes_sent.load(Ordering::Relaxed)
    }

    fn probe_slot(&self, routing_key: &str) -> Option<ProbeSlot> {
        let mut probes = self.inner.probes.lock().ok()?;
        Some(probes.entry(routing_key.to_owned()).or_default().clone())
    }

    /// The operation's last count while it is fresh, with the moment its probe started.
    fn cached(&self, routing_key: &str) -> Option<(u32, Instant)> {
        let presence = self.inner.presence.lock().ok()?;
        presence.get(routing_key).filter(|(_, at)| at.elapsed() < PRESENCE_TTL).copied()
    }

    /// Records what the broker said at `at`, unless something it said later is already recorded (an "unroutable"
    /// confirmed after a probe that started later).
    fn remember_at(&self, routing_key: &str, count: u32, at: Instant) {
        if let Ok(mut presence) = self.inner.presence.lock() {
            let known = presence.entry(routing_key.to_owned()).or_insert((count, at));
            if known.1 <= at {
                *known = (count, at);
            }
        }
    }

    async fn probe(&self, probe: &mut Option<Channel>, routing_key: &str) -> Option<u32> {
        let session = self.inner.broker.current()?;
        if probe.as_ref().is_none_or(|c| !c.status().connected()) {
            *probe = Some(session.channel().await.ok()?);
        }
        let channel = probe.as_ref()?;
        let queue = self.inner.broker.topology().rpc_queue(routing_key);
        self.inner.probes_sent.fetch_add(1, Ordering::Relaxed);
        match channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
        {
            Ok(queue) => Some(queue.consumer_count()),
            Err(error) => {
                // A passive declare of a missing queue closes the channel with 404: nobody ever served it.
                *probe = None;
                let missing = error.to_string().contains("NOT_FOUND");
                tracing::debug!(%error, operation = routing_key, "consumer probe failed");
                missing.then_some(0)
            }
        }
    }
}

/// Removes the pending entry however the call ends (answered, timed out, or its future dropped).
struct PendingGuard<'a> {
    inner: &'a Inner,
    id: u64,
}

impl<'a> PendingGuard<'a> {
    fn insert(inner: &'a Inner, id: u64, tx: ReplySender) -> Self {
        if let Ok(mut pending) = inner.pending.lock() {
            pending.insert(id, tx);
        }
        Self { inner, id }
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.inner.pending.lock() {
            pending.remove(&self.id);
        }
    }
}

async fn consume_replies(weak: std::sync::Weak<Inner>) {
    let mut generation = 0;
    loop {
        let Some(broker) = weak.upgrade().map(|inner| inner.broker.clone()) else { return };
        let Some(session) = broker.next_session(generation).await else { return };
        generation = session.generation;
        let Some(inner) = weak.upgrade() else { return };
        let mut reattach = false;
        match attach(&inner, &session).await {
            Ok((channel, consumer)) => {
                drop(inner);
                drain(&weak, consumer).await;
                if session.connection.status().connected() && !broker.is_closing() {
                    // Only the consumer went (its queue was deleted, a channel error): set up again on this
                    // connection rather than wait for a reconnect that may never come. Calls in flight are failed
                    // below: their answers went to the queue that is gone.
                    tracing::warn!(generation, "RPC reply consumer ended on a live connection; re-attaching");
                    let _ = channel.close(200, "re-attaching".into()).await;
                    generation = generation.saturating_sub(1);
                    reattach = true;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot set up the RPC reply queue; will retry");
                drop(inner);
                // Retry on the same connection if it is still alive.
                generation = generation.saturating_sub(1);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        let publish = inner.link.write().ok().and_then(|mut link| link.take());
        // Replies to requests in flight went with the old connection's exclusive queue: fail them now
        // (retryable) rather than let each wait for its timeout.
        if let Ok(mut pending) = inner.pending.lock() {
            for (_, tx) in pending.drain() {
                let _ = tx.send(Err(ApiError::unavailable("the connection to the message broker was lost")));
            }
        }
        drop(inner);
        if reattach {
            if let Some(publish) = publish {
                let _ = publish.close(200, "re-attaching".into()).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        } else if !broker.is_closing() {
            tracing::warn!("RPC client lost its connection; waiting for the next one");
        }
    }
}

/// Opens the publishing channel (with confirms) and starts consuming the reply queue; returns the consuming
/// channel and its consumer.
async fn attach(inner: &Inner, session: &Session) -> lapin::Result<(Channel, lapin::Consumer)> {
    let publish = session.channel().await?;
    publish.confirm_select(ConfirmSelectOptions::default()).await?;
    let consume = session.channel().await?;
    let topology = inner.broker.topology();
    topology.declare_reply_queue(&consume, &inner.reply_queue).await?;
    let consumer = consume
        .basic_consume(
            inner.reply_queue.as_str().into(),
            inner.reply_queue.as_str().into(),
            BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    if let Ok(mut link) = inner.link.write() {
        *link = Some(publish);
    }
    inner.gave_up_on.store(0, Ordering::Relaxed);
    inner.attached.send_modify(|attaches| *attaches += 1);
    tracing::debug!(generation = session.generation, queue = %inner.reply_queue, "RPC client ready");
    Ok((consume, consumer))
}

/// The call number in a correlation id this process made; `None` for another process's (an answer to a request
/// sent before a restart under the same instance id) or a garbled one.
fn call_id(boot: &str, correlation_id: &str) -> Option<u64> {
    correlation_id.strip_prefix(boot)?.strip_prefix('.')?.parse().ok()
}

async fn drain(weak: &std::sync::Weak<Inner>, mut consumer: lapin::Consumer) {
    while let Some(delivery) = consumer.next().await {
        let Ok(delivery) = delivery else { return };
        let Some(inner) = weak.upgrade() else { return };
        let id = delivery.properties.correlation_id().as_ref().and_then(|id| call_id(&inner.boot, id.as_str()));
        let waiter = id.and_then(|id| inner.pending.lock().ok()?.remove(&id));
        match waiter {
            Some(tx) => {
                let _ = tx.send(Ok(delivery.data));
            }
            // A reply to a call that already gave up (timeout) or a duplicate after a redelivery: discard.
            None => tracing::debug!(correlation_id = ?id, "discarding a late or unknown reply"),
        }
    }
}
