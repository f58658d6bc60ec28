//! The typed RPC server: register one handler per operation, then `run` until the shutdown token fires.
//!
//! - Replicas of a service consume the same queues and compete for requests: that is the load balancing.
//! - `prefetch` bounds how many requests of one operation a replica holds at once (lapin's consumer buffer is
//!   unbounded, so QoS is the only backpressure); handlers run concurrently up to that bound.
//! - A request is acked only after its reply was published. A crash before that makes the broker redeliver it to
//!   another replica; the caller discards the second reply if the first reached it.
//! - Attempts are counted here, in a header (`x-warren-attempt`), because the request queues are classic queues,
//!   which have no delivery limit (see [`super::topology`] for why not quorum queues). A handler that fails
//!   unexpectedly (returns `internal`, or panics) has its request republished with the next attempt number and
//!   the failed copy acked; a request the broker redelivers (a replica died or lost its channel holding it) is
//!   counted the same way before it runs again, so a request that crashes every replica it reaches is still
//!   stopped. On the last allowed attempt ([`DELIVERY_LIMIT`]) the caller is answered with an error and the
//!   request is rejected into the dead-letter queue, so a poison request never loops and never blocks the others.
//! - Requests whose caller has already given up (past the deadline header) are dropped unexecuted.
//! - On shutdown the consumers are cancelled (no new requests) and the requests already taken, including those
//!   still in the client's buffer, are finished and acked on the channel they came on before it is closed: closing
//!   it earlier would hand them to another replica to run a second time.
//! - A consumer the broker cancels (its queue was deleted) or a publish channel that dies alone makes the server
//!   open new channels, declare its queues again and consume again, rather than serve fewer operations.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use futures_util::{
    StreamExt, future,
    stream::{self, SelectAll},
};
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    connection::{Broker, Session},
    headers,
    topology::DELIVERY_LIMIT,
};
use crate::protocol::{ApiError, ErrorCode, Operation, RpcReply};

/// What the server knows about one request, passed to its handler.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    /// 1 on first delivery; higher when a previous attempt failed or its replica died.
    pub attempt: u32,
    /// When the caller stops waiting (ms since the Unix epoch), if it said.
    pub deadline_ms: Option<i64>,
}

enum Outcome {
    Reply(Vec<u8>),
    Failed(String),
}

type BoxFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;
type Handler = Arc<dyn Fn(Vec<u8>, RequestContext) -> BoxFuture + Send + Sync>;

/// Builder and runner of one service's RPC consumers.
pub struct RpcServer {
    broker: Broker,
    name: String,
    prefetch: u16,
    handlers: HashMap<&'static str, Handler>,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("name", &self.name)
            .field("prefetch", &self.prefetch)
            .field("operations", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RpcServer {
    /// `name` prefixes the consumer tags shown in the management UI.
    pub fn new(broker: Broker, name: impl Into<String>) -> Self {
        Self { broker, name: name.into(), prefetch: 64, handlers: HashMap::new() }
    }

    /// Most unacknowledged requests of one operation this replica holds.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Serves operation `O` with `handler`. Expected failures are `Err(ApiError)` replies; an `internal` error is
    /// treated as a failed attempt (retried, then dead-lettered).
    pub fn handle<O, F, Fut>(mut self, handler: F) -> Self
    where
        O: Operation,
        F: Fn(O::Request, RequestContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O::Response, ApiError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: Handler = Arc::new(move |body: Vec<u8>, ctx: RequestContext| {
            let handler = handler.clone();
            Box::pin(async move {
                let request: O::Request = match serde_json::from_slice(&body) {
                    Ok(request) => request,
                    Err(error) => {
                        return Outcome::Reply(encode::<O::Response>(Err(ApiError::bad_request(format!(
                            "malformed {} request: {error}",
                            O::ROUTING_KEY
                        )))));
                    }
                };
                // Run the handler as its own task so a panic is caught as a failed attempt, not a dead server.
                match tokio::spawn(handler(request, ctx)).await {
                    Ok(Err(error)) if error.code == ErrorCode::Internal => Outcome::Failed(error.message),
                    Ok(result) => Outcome::Reply(encode::<O::Response>(result)),
                    Err(join_error) => Outcome::Failed(format!("handler panicked: {join_error}")),
                }
            }) as BoxFuture
        });
        self.handlers.insert(O::ROUTING_KEY, erased);
        self
    }

    /// Serves operation `O` with `handler(state, request, ctx)`: the shape service handlers take, so each stays a
    /// plain async function of its shared state.
    pub fn handle_with<O, S, F, Fut>(self, state: &S, handler: F) -> Self
    where
        O: Operation,
        S: Clone + Send + Sync + 'static,
        F: Fn(S, O::Request, RequestContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O::Response, ApiError>> + Send + 'static,
    {
        let state = state.clone();
        self.handle::<O, _, _>(move |request, ctx| handler(state.clone(), request, ctx))
    }

    /// Consumes until `shutdown` fires, following the broker across reconnects, then finishes the requests it
    /// holds. Call [`Broker::close`] after this returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let mut generation = 0;
        while !shutdown.is_cancelled() {
            let session = tokio::select! {
                session = self.broker.next_session(generation) => session,
                () = shutdown.cancelled() => None,
            };
            let Some(session) = session else { break };
            generation = session.generation;
            if let Err(error) = self.serve(&session, &tracker, &shutdown).await {
                tracing::warn!(%error, "RPC server lost its channel; waiting for the broker");
                generation = generation.saturating_sub(u64::from(session.connection.status().connected()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(30), tracker.wait()).await.is_err() {
            tracing::warn!("gave up waiting for in-flight requests after 30 s");
        }
        tracing::info!(server = %self.name, "RPC server stopped");
    }

    async fn serve(&self, session: &Session, tracker: &TaskTracker, shutdown: &CancellationToken) -> lapin::Result<()> {
        let topology = self.broker.topology();
        let consume = session.channel().await?;
        let publish = session.channel().await?;
        consume.basic_qos(self.prefetch, BasicQosOptions { global: false }).await?;
        let mut streams = SelectAll::new();
        let mut tags = Vec::new();
        for (&key, handler) in &self.handlers {
            topology.declare_rpc_queue(&consume, key).await?;
            let tag = format!("{}.{}.{}", self.name, key, uuid::Uuid::new_v4().simple());
            let consumer = consume
                .basic_consume(
                    topology.rpc_queue(key).into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            tags.push(tag);
            let route = Arc::new(Route { key, queue: topology.rpc_queue(key).into(), handler: handler.clone() });
            // Each stream ends with a `None` of its own, so the end of one consumer is seen, not silently dropped
            // by `SelectAll`.
            let end = stream::once(future::ready((route.clone(), None)));
            streams.push(consumer.map(move |delivery| (route.clone(), Some(delivery))).chain(end).boxed());
        }
        tracing::info!(generation = session.generation, operations = ?self.handlers.keys().collect::<Vec<_>>(), "serving RPC");
        // The requests taken on this channel, and a token any of them cancels when it cannot publish.
        let held = TaskTracker::new();
        let broken = CancellationToken::new();
        let take = |route: Arc<Route>, delivery: Delivery| {
            tracker.spawn(held.track_future(process(route, delivery, publish.clone(), broken.clone())));
        };
        let closed = |why: &'static str| -> lapin::Error {
            lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Closed, why).into()
        };
        // `Ok(None)`: shut down; `Ok(Some(error))`: serve again on new channels, this one still open;
        // `Err`: this channel is gone.
        let ending: lapin::Result<Option<lapin::Error>> = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Ok(None),
                () = broken.cancelled() => break Ok(Some(closed("cannot publish replies"))),
                next = streams.next() => match next {
                    Some((route, Some(Ok(delivery)))) => take(route, delivery),
                    Some((_, Some(Err(error)))) => break Err(error),
                    Some((route, None)) => {
                        tracing::warn!(
                            operation = route.key,
                            "the broker cancelled a consumer (was its queue deleted?); subscribing again"
                        );
                        break Ok(Some(closed("consumer cancelled")));
                    }
                    None => break Ok(Some(closed("consumers ended"))),
                }
            }
        };
        if ending.is_ok() && consume.status().connected() {
            // No new requests here. Those already in the client's buffer were handed to this replica: they are
            // run (or, with no way to reply, handed back at once). Each stream ends after them once the broker
            // confirmed its cancel.
            let stop = async {
                for tag in &tags {
                    let _ = consume.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                }
                loop {
                    match streams.next().await {
                        Some((route, Some(Ok(delivery)))) if !broken.is_cancelled() => take(route, delivery),
                        Some((_, Some(Ok(delivery)))) => {
                            hand_back(&delivery).await;
                        }
                        Some((_, None)) => {}
                        Some((_, Some(Err(_)))) | None => break,
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), stop).await.is_err() {
                tracing::warn!("the broker did not confirm the consumers' cancel within 5 s");
            }
        }
        // Closing the consume channel hands every request still unacked on it back to the broker, which gives it to
        // another replica to run a second time. So the channel stays open until the requests taken on it are
        // settled.
        held.close();
        tracker.spawn(async move {
            if tokio::time::timeout(Duration::from_secs(30), held.wait()).await.is_err() {
                tracing::warn!("gave up waiting for in-flight requests after 30 s; the broker will redeliver them");
            }
            drop((consume, publish, streams));
        });
        match ending {
            Ok(None) => Ok(()),
            Ok(Some(error)) | Err(error) => Err(error),
        }
    }
}

/// One operation's queue and handler.
struct Route {
    key: &'static str,
    queue: Arc<str>,
    handler: Handler,
}

fn encode<T: serde::Serialize>(result: Result<T, ApiError>) -> Vec<u8> {
    serde_json::to_vec(&RpcReply::from(result)).unwrap_or_else(|error| {
        tracing::error!(%error, "cannot encode reply");
        serde_json::to_vec(&RpcReply::<()>::Err(ApiError::internal())).unwrap_or_default()
    })
}

#[tracing::instrument(name = "rpc", skip_all, fields(operation, request_id, attempt))]
async fn process(route: Arc<Route>, delivery: Delivery, publish: Channel, broken: CancellationToken) {
    let Route { key, ref queue, ref handler } = *route;
    tracing::Span::current().record("operation", key);
    let properties = &delivery.properties;
    let ctx = RequestContext {
        request_id: headers::request_id(properties).unwrap_or_default(),
        attempt: headers::attempt(properties),
        deadline_ms: headers::deadline(properties),
    };
    let span = tracing::Span::current();
    span.record("request_id", ctx.request_id.as_str());
    span.record("attempt", ctx.attempt);
    if ctx.deadline_ms.is_some_and(|deadline| deadline < headers::now_millis()) {
        tracing::info!("dropping a request whose caller has given up");
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        return;
    }
    let attempt = ctx.attempt;
    if delivery.redelivered {
        // Handed out before and never settled: the replica holding it died or lost its channel, maybe because of
        // this very request. That was an attempt; count it in a new copy before running anything.
        let next = attempt.saturating_add(1);
        if next > DELIVERY_LIMIT {
            give_up(&publish, &delivery, "its replicas kept dying").await;
        } else {
            tracing::warn!("a replica died holding this request; it will be retried");
            retry(&publish, queue, &delivery, next, &broken).await;
        }
        return;
    }
    match handler(delivery.data.clone(), ctx).await {
        Outcome::Reply(body) => {
            if reply(&publish, properties, body).await {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            } else {
                // The publish channel is gone (the consume channel may live on): hand the request back, and have
                // the server open new channels.
                hand_back(&delivery).await;
                broken.cancel();
            }
        }
        Outcome::Failed(reason) if attempt >= DELIVERY_LIMIT => give_up(&publish, &delivery, &reason).await,
        Outcome::Failed(reason) => {
            tracing::warn!(%reason, "request failed; it will be retried");
            tokio::time::sleep(retry_pause(attempt)).await;
            retry(&publish, queue, &delivery, attempt + 1, &broken).await;
        }
    }
}

/// How long a failed attempt waits before its request goes back on the queue: 100 ms after the first, doubling
/// after each (200, 400, 800 ms), so the [`DELIVERY_LIMIT`] attempts of a request span 1.5 s. A database restart
/// or failover makes every handler fail until it is back; the attempts must outlast that, or the requests of those
/// seconds are set aside as poison. (Sends wait in the message-service's committer instead, as long as their
/// callers do.)
fn retry_pause(failed_attempt: u32) -> Duration {
    Duration::from_millis(100 << failed_attempt.clamp(1, 5).saturating_sub(1))
}

/// Returns a request to the broker, which delivers it again (to any replica; the redelivery counts as an attempt).
async fn hand_back(delivery: &Delivery) {
    let _ = delivery.acker.nack(BasicNackOptions { requeue: true, multiple: false }).await;
}

/// Puts a copy of the request back on its queue as attempt `next`, then acks this one. If the copy cannot be
/// published the publish channel is gone: this one goes back to the broker, which redelivers it (and that counts
/// too), and `broken` tells the server to open new channels.
async fn retry(publish: &Channel, queue: &str, delivery: &Delivery, next: u32, broken: &CancellationToken) {
    let properties = headers::with_attempt(&delivery.properties, next);
    let published = publish
        .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &delivery.data, properties)
        .await;
    match published {
        Ok(_) => {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        Err(error) => {
            tracing::warn!(%error, "cannot requeue a failed request; the broker will redeliver it");
            hand_back(delivery).await;
            broken.cancel();
        }
    }
}

/// The last attempt failed: answer the caller with an error and reject the request into the dead-letter queue.
async fn give_up(publish: &Channel, delivery: &Delivery, reason: &str) {
    tracing::error!(%reason, "request failed on its last attempt; dead-lettering it");
    let body = encode::<()>(Err(ApiError::new(ErrorCode::Internal, "the request failed repeatedly and was set aside")));
    reply(publish, &delivery.properties, body).await;
    let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
}

/// Publishes a reply to the caller's queue. `false` when the channel is gone.
async fn reply(publish: &Channel, request: &BasicProperties, body: Vec<u8>) -> bool {
    let Some(reply_to) = request.reply_to().as_ref() else { return true };
    let mut properties = BasicProperties::default().with_content_type("application/json".into());
    if let Some(correlation_id) = request.correlation_id() {
        properties = properties.with_correlation_id(correlation_id.clone());
    }
    // Not `mandatory`: a caller that went away simply misses its reply.
    match publish.basic_publish("".into(), reply_to.clone(), BasicPublishOptions::default(), &body, properties).await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(%error, "cannot publish reply");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_attempts_back_off_to_outlast_a_database_restart() {
        let pauses: Vec<u128> = (1..DELIVERY_LIMIT).map(|attempt| retry_pause(attempt).as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800]);
        assert_eq!(retry_pause(0), retry_pause(1));
        assert_eq!(retry_pause(u32::MAX).as_millis(), 1_600, "the pause is bounded");
    }
}
