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
//! pipelines its sends, so the next one is often already queued, or on its way, when the batch holding the one
//! before it fails. Sent on, it would be stored while the one before it waits to be resent, and the user's
//! messages would be stored out of the order typed. So when a send is refused for a passing reason (its batch
//! failed, or its time ran out in the queue), its lane is held: the lane's other sends are refused with the same
//! error, unsent, until that send comes back (its client message id; it goes, and the lane with it) or one RPC
//! timeout has passed (a client that gave up on it). The client resends them in order. A send nobody waits for any
//! more because the hub answered it (an identical send was stored) holds nothing. REST sends have no lane: HTTP
//! requests are independent.
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

/// A lane held back after one of its sends was refused for a passing reason.
#[derive(Debug, Clone)]
struct Hold {
    /// The refused send: when it comes back, the lane goes again.
    client_message_id: String,
    /// What the lane's other sends are answered meanwhile.
    error: ApiError,
    /// When the hold lapses by itself.
    until: Instant,
}

/// The lanes held back (see the module documentation).
type Holds = HashMap<Lane, Hold>;

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
        tokio::spawn(run(rpc, interval, timeout, pending));
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

/// `hold`: how long a lane stays held when the send that held it does not come back (the RPC timeout).
async fn run(rpc: RpcClient, interval: Duration, hold: Duration, mut queue: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_SEND_BATCH);
    let mut last_start: Option<Instant> = None;
    let mut holds = Holds::new();
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
        refuse_behind(&mut batch, &mut holds, Instant::now(), hold);
        if batch.is_empty() {
            continue;
        }
        // A panic in one batch fails that batch (its callers' answers are dropped, which they read as `internal`),
        // not the batcher: a dead batcher would leave a gateway that refuses every send until it is restarted.
        // No panic path is known; this is the same guard the message-service's committer has. (Its lanes are not
        // held: knowing them would cost every batch a copy of its lanes, for a path that is a bug.)
        let refused = match AssertUnwindSafe(forward(&rpc, std::mem::take(&mut batch))).catch_unwind().await {
            Ok(refused) => refused,
            Err(panic) => {
                let panic = common::telemetry::panic_message(panic.as_ref());
                tracing::error!(panic, "forwarding a batch of sends panicked");
                Vec::new()
            }
        };
        let until = Instant::now() + hold;
        for (lane, client_message_id, error) in refused {
            // The first refused send of a lane (in batch order) is the one the lane waits for.
            holds.entry(lane).or_insert(Hold { client_message_id, error, until });
        }
    }
}

/// Answers, and takes out of `batch`, the sends that are not to go, and holds lanes (see the module
/// documentation):
/// - a send whose time ran out in the queue is answered `timeout` (its caller has stopped waiting), and holds its
///   lane for `hold`;
/// - a send whose caller stopped waiting with time left is not sent either: its socket closed (the client resends
///   it with the same client message id), or the hub answered it with the stored message of an identical send.
///   Neither holds its lane;
/// - a send of a held lane is refused with the hold's error, unless it is the send the lane waits for: that one
///   goes, and the lane with it.
fn refuse_behind(batch: &mut Vec<Pending>, holds: &mut Holds, now: Instant, hold: Duration) {
    holds.retain(|_, held| held.until > now);
    let mut error_for = |pending: &Pending| {
        let client_message_id = &pending.request.request.client_message_id;
        if pending.deadline <= now {
            if let Some(lane) = &pending.lane {
                let held = Hold { client_message_id: client_message_id.clone(), error: timed_out(), until: now + hold };
                holds.entry(lane.clone()).or_insert(held);
            }
            return Some(timed_out());
        }
        if pending.reply.is_closed() {
            return Some(timed_out());
        }
        let lane = pending.lane.as_ref()?;
        let held = holds.get(lane)?;
        if held.client_message_id == *client_message_id {
            holds.remove(lane);
            return None;
        }
        Some(held.error.clone())
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

/// Forwards one batch and hands each send its own answer. Returns the sends refused for a passing reason whose
/// callers were still waiting (lane, client message id, error), in batch order.
async fn forward(rpc: &RpcClient, batch: Vec<Pending>) -> Vec<(Lane, String, ApiError)> {
    // The batch is worth running while any of its sends still waits.
    let deadline = batch.iter().map(|p| p.deadline).max().unwrap_or_else(Instant::now);
    let timeout = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    // The batch is logged under its first send's request id; each send's id is in the gateway's own log line.
    let request_id = batch.first().map(|p| p.request_id.clone()).unwrap_or_default();
    tracing::debug!(%request_id, sends = batch.len(), "forwarding a batch of sends");
    let mut sends = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for Pending { request, lane, reply, .. } in batch {
        sends.push(request);
        waiting.push((lane, reply));
    }
    let count = sends.len();
    let ctx = CallContext::new(request_id, timeout);
    let request = SendBatch { sends };
    let outcomes: Vec<Result<Message, ApiError>> = match rpc.call::<SendMessages>(&request, &ctx).await {
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
    let mut refused = Vec::new();
    for (((lane, reply), outcome), send) in waiting.into_iter().zip(outcomes).zip(&request.sends) {
        // A caller no longer waiting was answered by the hub (an identical send was stored): nothing to hold.
        if let (Some(lane), Err(error)) = (lane, &outcome)
            && error.code.is_retryable()
            && !reply.is_closed()
        {
            refused.push((lane, send.request.client_message_id.clone(), error.clone()));
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

    const HOLD: Duration = Duration::from_secs(5);

    /// A send, and its caller's end (dropping it counts as a caller that stopped waiting).
    fn pending(stream: Option<&str>, conversation_id: i64, id: &str, deadline: Instant) -> (Pending, Answer) {
        let (reply, answer) = oneshot::channel();
        let request = SendMessageRequest {
            conversation_id: Some(conversation_id),
            to_user_id: None,
            client_message_id: id.into(),
            body: "b".into(),
        };
        let lane = stream.map(|stream| lane(stream, conversation_id));
        (Pending { request: AsUser { user_id: 1, request }, lane, request_id: "r".into(), deadline, reply }, answer)
    }

    fn lane(stream: &str, conversation_id: i64) -> Lane {
        Lane { stream: stream.into(), conversation_id: Some(conversation_id), to_user_id: None }
    }

    /// Lane s1/1 held `until`, waiting for the send `client_message_id` (refused `unavailable`).
    fn held_for(client_message_id: &str, until: Instant) -> Holds {
        let error = ApiError::unavailable("down");
        Holds::from([(lane("s1", 1), Hold { client_message_id: client_message_id.into(), error, until })])
    }

    fn code(mut answer: Answer) -> Option<common::protocol::ErrorCode> {
        answer.try_recv().ok().map(|result| result.expect_err("refused").code)
    }

    fn ids(batch: &[Pending]) -> Vec<&str> {
        batch.iter().map(|p| p.request.request.client_message_id.as_str()).collect()
    }

    #[test]
    fn a_send_that_ran_out_of_time_in_the_queue_holds_its_lane_and_no_other() {
        let now = Instant::now();
        let fresh = now + Duration::from_secs(5);
        // Its caller's own timer has fired: it no longer waits either.
        let (late, late_answer) = pending(Some("s1"), 1, "late", now);
        drop(late_answer);
        let (behind, behind_answer) = pending(Some("s1"), 1, "behind", fresh);
        let (elsewhere, _elsewhere_answer) = pending(Some("s1"), 2, "elsewhere", fresh);
        let (other_socket, _other_answer) = pending(Some("s2"), 1, "other", fresh);
        let (rest, _rest_answer) = pending(None, 1, "rest", fresh);
        let mut batch = vec![late, behind, elsewhere, other_socket, rest];
        let mut holds = Holds::new();

        refuse_behind(&mut batch, &mut holds, now, HOLD);

        assert_eq!(ids(&batch), ["elsewhere", "other", "rest"]);
        assert_eq!(code(behind_answer), Some(common::protocol::ErrorCode::Timeout));
        assert_eq!(holds[&lane("s1", 1)].client_message_id, "late");
    }

    #[test]
    fn a_send_nobody_waits_for_any_more_with_time_left_is_not_sent_but_holds_nothing() {
        // Its caller was answered by the hub (an identical send's message), or its socket closed.
        let now = Instant::now();
        let fresh = now + Duration::from_secs(5);
        let (answered, answer) = pending(Some("s1"), 1, "answered", fresh);
        drop(answer);
        let (behind, _behind_answer) = pending(Some("s1"), 1, "behind", fresh);
        let mut batch = vec![answered, behind];
        let mut holds = Holds::new();

        refuse_behind(&mut batch, &mut holds, now, HOLD);

        assert_eq!(ids(&batch), ["behind"]);
        assert!(holds.is_empty());
    }

    #[test]
    fn a_held_lane_refuses_its_sends_until_the_one_it_waits_for_comes_back_and_for_no_longer_than_the_hold() {
        let now = Instant::now();
        let fresh = now + Duration::from_secs(5);
        let mut holds = held_for("a", now + HOLD);

        // Batch after batch, until "a" comes back: "b" and "c" are refused, in whatever batch they come.
        let (b, b_answer) = pending(Some("s1"), 1, "b", fresh);
        let (unrelated, _unrelated_answer) = pending(Some("s1"), 2, "x", fresh);
        let mut batch = vec![b, unrelated];
        refuse_behind(&mut batch, &mut holds, now, HOLD);
        assert_eq!(ids(&batch), ["x"]);
        assert_eq!(code(b_answer), Some(common::protocol::ErrorCode::Unavailable));
        let (c, c_answer) = pending(Some("s1"), 1, "c", fresh);
        let mut batch = vec![c];
        refuse_behind(&mut batch, &mut holds, now, HOLD);
        assert!(batch.is_empty());
        assert_eq!(code(c_answer), Some(common::protocol::ErrorCode::Unavailable));

        // A "b" resent before "a" is still refused; "a" goes, and the lane with it.
        let (b, _b) = pending(Some("s1"), 1, "b", fresh);
        let (a, _a) = pending(Some("s1"), 1, "a", fresh);
        let (c, _c) = pending(Some("s1"), 1, "c", fresh);
        let mut batch = vec![b, a, c];
        refuse_behind(&mut batch, &mut holds, now, HOLD);
        assert_eq!(ids(&batch), ["a", "c"]);
        assert!(holds.is_empty());
    }

    #[test]
    fn a_hold_lapses_by_itself_when_the_send_it_waits_for_never_comes_back() {
        let now = Instant::now();
        let mut holds = held_for("given up", now + HOLD);
        let later = now + HOLD;
        let (b, _b) = pending(Some("s1"), 1, "b", later + Duration::from_secs(5));
        let mut batch = vec![b];

        refuse_behind(&mut batch, &mut holds, later, HOLD);

        assert_eq!(ids(&batch), ["b"]);
        assert!(holds.is_empty(), "and the lapsed hold is gone");
    }
}
