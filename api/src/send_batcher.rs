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
//! **No send overtakes one refused before it from the same socket to the same place** (a [`Lane`]). A socket
//! pipelines its sends, so the next one is often already queued when the batch holding the one before it fails.
//! Sent on, it would be stored while the one before it waits to be resent, and the user's messages would be
//! stored out of the order typed. So a send queued behind one of its lane that was refused for a passing reason
//! (its batch failed, or it timed out before leaving) is refused with the same error, unsent, and the client
//! resends both in order. REST sends have no lane: HTTP requests are independent.
//!
//! **One deadline per send, from the moment it reaches the batcher**: a send waits at most the RPC timeout in
//! all, queue included, and is then answered `timeout`. A send whose caller stopped waiting (its socket closed) or
//! whose deadline has passed before its batch leaves is not sent at all. A batch's request carries the latest
//! deadline of its sends, so the message-service drops it unexecuted once nobody in it waits any more, while a
//! fresh send is not failed for sharing a batch with one about to expire (that one's caller is answered `timeout`
//! on time by its own timer; it may still be stored, and its retry with the same client message id returns it).
//! Without this a send queued behind a slow batch waited for that batch and then a full timeout of its own.

use std::{collections::HashMap, panic::AssertUnwindSafe, sync::Arc, time::Duration};

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
    /// `None` for a send whose order nothing else depends on (REST).
    lane: Option<Lane>,
    request_id: String,
    /// When the caller stops waiting.
    deadline: Instant,
    reply: oneshot::Sender<Result<Message, ApiError>>,
}

/// One socket's sends to one place (a conversation, or a person before their direct conversation exists): they
/// are stored in the order the socket sent them, or not at all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Lane {
    stream: Arc<str>,
    conversation_id: Option<i64>,
    to_user_id: Option<i64>,
}

/// Lanes with a send refused for a passing reason, and the error it got.
type Refused = HashMap<Lane, ApiError>;

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
    /// timeout has passed since the call, however long the send queued. `stream`: the socket it came on (see
    /// [`Lane`]).
    pub async fn send(
        &self,
        request_id: &str,
        stream: Option<&Arc<str>>,
        request: AsUser<SendMessageRequest>,
    ) -> Result<Message, ApiError> {
        let deadline = Instant::now() + self.timeout;
        let (reply, answer) = oneshot::channel();
        let lane = stream.map(|stream| Lane {
            stream: stream.clone(),
            conversation_id: request.request.conversation_id,
            to_user_id: request.request.to_user_id,
        });
        let pending = Pending { request, lane, request_id: request_id.to_owned(), deadline, reply };
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
    // The lanes whose sends the batch before refused: what queued behind them meanwhile is refused too.
    let mut refused = Refused::new();
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
        refuse_behind(&mut batch, std::mem::take(&mut refused), Instant::now());
        if batch.is_empty() {
            continue;
        }
        // A panic in one batch fails that batch (its callers' answers are dropped, which they read as `internal`),
        // not the batcher: a dead batcher would leave a gateway that refuses every send until it is restarted.
        // No panic path is known; this is the same guard the message-service's committer has.
        match AssertUnwindSafe(forward(&rpc, std::mem::take(&mut batch))).catch_unwind().await {
            Ok(lanes) => refused = lanes,
            Err(panic) => {
                let panic = common::telemetry::panic_message(panic.as_ref());
                tracing::error!(panic, "forwarding a batch of sends panicked");
            }
        }
    }
}

/// Answers, and takes out of `batch`, the sends that are not to go:
/// - a send whose caller stopped waiting no longer needs to be sent: its socket closed (the client resends it with
///   the same client message id), or the hub already answered it with the stored message of an identical send
///   (see [`crate::ws::hub`]). Neither is a refusal: the sends behind it go;
/// - a send whose time ran out in the queue is answered `timeout`, and so is every send behind it in its lane;
/// - a send behind one of its lane that was refused for a passing reason (in `refused`, from the batch before)
///   gets the same answer (see the module documentation).
fn refuse_behind(batch: &mut Vec<Pending>, mut refused: Refused, now: Instant) {
    let mut error_for = |pending: &Pending| {
        if pending.reply.is_closed() {
            return Some(timed_out());
        }
        let error = if pending.deadline <= now {
            timed_out()
        } else {
            pending.lane.as_ref().and_then(|lane| refused.get(lane)).cloned()?
        };
        if let Some(lane) = &pending.lane {
            refused.entry(lane.clone()).or_insert_with(|| error.clone());
        }
        Some(error)
    };
    let mut kept = Vec::with_capacity(batch.len());
    for pending in batch.drain(..) {
        match error_for(&pending) {
            Some(error) => drop(pending.reply.send(Err(error))),
            None => kept.push(pending),
        }
    }
    *batch = kept;
}

fn timed_out() -> ApiError {
    ApiError::timeout("sendMessage did not answer in time")
}

/// Forwards one batch and hands each send its own answer. Returns the lanes of the sends refused for a passing
/// reason, with their errors.
async fn forward(rpc: &RpcClient, batch: Vec<Pending>) -> Refused {
    // The batch is worth running while any of its sends still waits.
    let deadline = batch.iter().map(|p| p.deadline).max().unwrap_or_else(Instant::now);
    let timeout = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    // The batch is logged under its first send's request id; each send's id is in the gateway's own log line.
    let request_id = batch.first().map(|p| p.request_id.clone()).unwrap_or_default();
    tracing::debug!(%request_id, sends = batch.len(), "forwarding a batch of sends");
    let mut requests = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for Pending { request, lane, reply, .. } in batch {
        requests.push(request);
        waiting.push((lane, reply));
    }
    let count = requests.len();
    let ctx = CallContext::new(request_id, timeout);
    let outcomes: Vec<Result<Message, ApiError>> = match rpc
        .call::<SendMessages>(&SendBatch { sends: requests }, &ctx)
        .await
    {
        Ok(result) if result.results.len() == count => result.results.into_iter().map(Into::into).collect(),
        Ok(result) => {
            tracing::error!(sent = count, answered = result.results.len(), "a batch came back with the wrong count");
            vec![Err(ApiError::internal()); count]
        }
        Err(mut error) => {
            // Each caller sent a `sendMessage`; the batch operation is the gateway's own business.
            error.message =
                error.message.replace(<SendMessages as common::protocol::Operation>::ROUTING_KEY, "sendMessage");
            vec![Err(error); count]
        }
    };
    let mut refused = Refused::new();
    for ((lane, reply), outcome) in waiting.into_iter().zip(outcomes) {
        if let (Some(lane), Err(error)) = (lane, &outcome)
            && error.code.is_retryable()
        {
            refused.entry(lane).or_insert_with(|| error.clone());
        }
        let _ = reply.send(outcome);
    }
    refused
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("request_id", &self.request_id).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Answer = oneshot::Receiver<Result<Message, ApiError>>;

    /// A send, and its caller's end (dropping it counts as a caller that stopped waiting).
    fn pending(stream: Option<&str>, conversation_id: i64, deadline: Instant) -> (Pending, Answer) {
        let (reply, answer) = oneshot::channel();
        let request = SendMessageRequest {
            conversation_id: Some(conversation_id),
            to_user_id: None,
            client_message_id: "c".into(),
            body: "b".into(),
        };
        let lane = stream.map(|stream| Lane {
            stream: stream.into(),
            conversation_id: Some(conversation_id),
            to_user_id: None,
        });
        (Pending { request: AsUser { user_id: 1, request }, lane, request_id: "r".into(), deadline, reply }, answer)
    }

    fn code(mut answer: Answer) -> Option<common::protocol::ErrorCode> {
        answer.try_recv().ok().map(|result| result.expect_err("refused").code)
    }

    #[test]
    fn a_send_that_ran_out_of_time_in_the_queue_takes_the_later_sends_of_its_lane_with_it_and_no_others() {
        let now = Instant::now();
        let fresh = now + Duration::from_secs(5);
        let (late, late_answer) = pending(Some("s1"), 1, now);
        let (behind, behind_answer) = pending(Some("s1"), 1, fresh);
        let (elsewhere, _elsewhere_answer) = pending(Some("s1"), 2, fresh);
        let (other_socket, _other_answer) = pending(Some("s2"), 1, fresh);
        let (rest, _rest_answer) = pending(None, 1, fresh);
        let mut batch = vec![late, behind, elsewhere, other_socket, rest];

        refuse_behind(&mut batch, Refused::new(), now);

        let left: Vec<_> =
            batch.iter().map(|p| p.lane.as_ref().map(|l| (l.stream.to_string(), l.conversation_id))).collect();
        assert_eq!(left, [Some(("s1".into(), Some(2))), Some(("s2".into(), Some(1))), None]);
        assert_eq!(code(late_answer), Some(common::protocol::ErrorCode::Timeout));
        assert_eq!(code(behind_answer), Some(common::protocol::ErrorCode::Timeout));
    }

    #[test]
    fn a_send_nobody_waits_for_any_more_is_not_sent_but_does_not_hold_back_its_lane() {
        // Its caller was answered by the hub (an identical send's message), or its socket closed.
        let now = Instant::now();
        let fresh = now + Duration::from_secs(5);
        let (answered, answer) = pending(Some("s1"), 1, fresh);
        drop(answer);
        let (behind, _behind_answer) = pending(Some("s1"), 1, fresh);
        let mut batch = vec![answered, behind];

        refuse_behind(&mut batch, Refused::new(), now);

        assert_eq!(batch.len(), 1, "the send behind it goes");
        assert!(!batch[0].reply.is_closed());
    }

    #[test]
    fn lanes_the_batch_before_refused_refuse_what_queued_behind_them_with_the_same_error() {
        let now = Instant::now();
        let fresh = now + Duration::from_secs(5);
        let (behind, behind_answer) = pending(Some("s1"), 1, fresh);
        let (unrelated, _unrelated_answer) = pending(Some("s1"), 2, fresh);
        let mut batch = vec![behind, unrelated];
        let lane = Lane { stream: "s1".into(), conversation_id: Some(1), to_user_id: None };

        refuse_behind(&mut batch, Refused::from([(lane, ApiError::unavailable("down"))]), now);

        assert_eq!(batch.len(), 1);
        assert_eq!(code(behind_answer), Some(common::protocol::ErrorCode::Unavailable));
    }
}
