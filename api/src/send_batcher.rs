//! Batching sends where they meet: at the gateway.
//!
//! Every `sendMessage` (WebSocket or REST) goes through one batcher per gateway, which keeps **one**
//! `sendMessages` request outstanding: when it is answered, everything that queued meanwhile (up to
//! [`MAX_SEND_BATCH`]) goes as the next request. When the gateway is idle a send goes alone, at once: there is
//! no timer and no waiting for company. Under load the batches grow by themselves, so a burst of N messages costs
//! the broker two messages per batch (request and reply) instead of two per message, and the message-service
//! hands the whole batch to one group commit.
//!
//! One batch at a time also keeps order: a gateway's sends reach the message-service in the order they arrived,
//! each batch committed before the next leaves, so one socket's sends to a conversation are stored in the order
//! it sent them, however many message-service replicas compete for the batches. (With two batches in flight,
//! two replicas could commit them in either order.)
//!
//! Why one and not more: measured with dm U=1000 on the benchmark machine, one batch in flight beat two on
//! every axis — at 1,000 msg/s delivery p50/p99 2.53/4.71 ms instead of 2.97/6.64 and 1,102 instead of 1,426 µs
//! of server CPU per message; at 2,000 msg/s 2.94/5.35 ms and 551 instead of 723 µs; 10,000 msg/s still carried
//! with p99 23 ms (docs/BENCHMARKS.md). Fewer, larger batches leave the two cores less contended, which more than
//! pays for the wait behind the batch in flight.
//!
//! **Pacing, for operators who would rather spend latency than CPU** (`WARREN_SEND_BATCH_INTERVAL_MS`, off by
//! default). Because nothing waits, the pipeline runs batch after batch whenever anything is queued, and at
//! moderate rates the stack spends about the same CPU whatever the rate: a cheaper batch only makes the batches
//! come faster (docs/BENCHMARKS.md, "What limits target 3"). With an interval set, a batch starts no sooner than
//! that long after the one before it and takes everything that queued meanwhile. A send that arrives after a
//! quiet spell longer than the interval still goes at once; under steady load each send waits at most the
//! interval, and the batches are that much larger.
//!
//! Each send keeps its own answer (its message, or the error `sendMessage` would have given), and its own retry
//! semantics: a failed batch answers every send with the batch's (retryable) error, and a client retrying with the
//! same client message id gets the original message back.
//!
//! **One deadline per send, from the moment it reaches the batcher**: a send waits at most the RPC timeout in
//! all, queue included, and is then answered `timeout`. A send whose caller stopped waiting (its socket closed) or
//! whose deadline has passed before its batch leaves is not sent at all. A batch's request carries the latest
//! deadline of its sends, so the message-service drops it unexecuted once nobody in it waits any more, while a
//! fresh send is not failed for sharing a batch with one about to expire (that one's caller is answered `timeout`
//! on time by its own timer; it may still be stored, and its retry with the same client message id returns it).
//! Without this a send queued behind a slow batch waited for that batch and then a full timeout of its own.

use std::{panic::AssertUnwindSafe, time::Duration};

use common::{
    amqp::{CallContext, RpcClient},
    protocol::{
        ApiError,
        messages::{AsUser, MAX_SEND_BATCH, Message, SendBatch, SendMessageRequest, SendMessages},
    },
};
use futures_util::FutureExt;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

/// Sends waiting for the batch in flight, at most. Past it a send waits to enter the queue (backpressure on its
/// socket).
const QUEUE: usize = 4 * MAX_SEND_BATCH;

struct Pending {
    request: AsUser<SendMessageRequest>,
    request_id: String,
    /// When the caller stops waiting.
    deadline: Instant,
    reply: oneshot::Sender<Result<Message, ApiError>>,
}

/// The handle handlers use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SendBatcher {
    queue: mpsc::Sender<Pending>,
    timeout: Duration,
}

impl SendBatcher {
    /// `interval`: least time between the starts of two batches (zero: none; see the module documentation).
    pub fn start(rpc: RpcClient, timeout: Duration, interval: Duration) -> SendBatcher {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(run(rpc, interval, pending));
        SendBatcher { queue, timeout }
    }

    /// Sends one message (in whatever batch it joins) and returns the stored message, or `timeout` once the RPC
    /// timeout has passed since the call, however long the send queued.
    pub async fn send(&self, request_id: &str, request: AsUser<SendMessageRequest>) -> Result<Message, ApiError> {
        let deadline = Instant::now() + self.timeout;
        let (reply, answer) = oneshot::channel();
        let pending = Pending { request, request_id: request_id.to_owned(), deadline, reply };
        let sent = async {
            self.queue.send(pending).await.map_err(|_| ApiError::unavailable("the gateway is shutting down"))?;
            answer.await.map_err(|_| ApiError::internal())?
        };
        tokio::time::timeout_at(deadline, sent).await.unwrap_or_else(|_| Err(timed_out()))
    }
}

async fn run(rpc: RpcClient, interval: Duration, mut queue: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_SEND_BATCH);
    let mut last_start: Option<Instant> = None;
    // Whatever queued while the last batch was out goes next, in arrival order.
    while queue.recv_many(&mut batch, MAX_SEND_BATCH).await > 0 {
        if let Some(next_start) = last_start.map(|start| start + interval)
            && batch.len() < MAX_SEND_BATCH
            && Instant::now() < next_start
        {
            tokio::time::sleep_until(next_start).await;
            while batch.len() < MAX_SEND_BATCH {
                let Ok(pending) = queue.try_recv() else { break };
                batch.push(pending);
            }
        }
        if !interval.is_zero() {
            last_start = Some(Instant::now());
        }
        // A caller that stopped waiting, or is about to, no longer needs its send: unacknowledged, it is retried
        // by the client with the same client message id.
        let now = Instant::now();
        for late in batch.extract_if(.., |pending| pending.reply.is_closed() || pending.deadline <= now) {
            let _ = late.reply.send(Err(timed_out()));
        }
        if batch.is_empty() {
            continue;
        }
        // A panic in one batch fails that batch (its callers' answers are dropped, which they read as `internal`),
        // not the batcher: a dead batcher would leave a gateway that refuses every send until it is restarted.
        // No panic path is known; this is the same guard the message-service's committer has.
        if let Err(panic) = AssertUnwindSafe(forward(&rpc, std::mem::take(&mut batch))).catch_unwind().await {
            let panic = common::telemetry::panic_message(panic.as_ref());
            tracing::error!(panic, "forwarding a batch of sends panicked");
        }
    }
}

fn timed_out() -> ApiError {
    ApiError::timeout("sendMessage did not answer in time")
}

/// Forwards one batch and hands each send its own answer.
async fn forward(rpc: &RpcClient, batch: Vec<Pending>) {
    // The batch is worth running while any of its sends still waits.
    let deadline = batch.iter().map(|p| p.deadline).max().unwrap_or_else(Instant::now);
    let timeout = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    // The batch is logged under its first send's request id; each send's id is in the gateway's own log line.
    let request_id = batch.first().map(|p| p.request_id.clone()).unwrap_or_default();
    tracing::debug!(%request_id, sends = batch.len(), "forwarding a batch of sends");
    let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.request, p.reply)).unzip();
    let count = requests.len();
    let ctx = CallContext::new(request_id, timeout);
    match rpc.call::<SendMessages>(&SendBatch { sends: requests }, &ctx).await {
        Ok(result) if result.results.len() == count => {
            for (reply, outcome) in replies.into_iter().zip(result.results) {
                let _ = reply.send(outcome.into());
            }
        }
        Ok(result) => {
            tracing::error!(sent = count, answered = result.results.len(), "a batch came back with the wrong count");
            replies.into_iter().for_each(|reply| drop(reply.send(Err(ApiError::internal()))));
        }
        Err(mut error) => {
            // Each caller sent a `sendMessage`; the batch operation is the gateway's own business.
            error.message =
                error.message.replace(<SendMessages as common::protocol::Operation>::ROUTING_KEY, "sendMessage");
            replies.into_iter().for_each(|reply| drop(reply.send(Err(error.clone()))));
        }
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("request_id", &self.request_id).finish_non_exhaustive()
    }
}
