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
//! failed, or its time ran out — waiting for room in the queue, in the queue, or in a batch whose answer came too
//! late), its lane is held: the lane's other sends are refused with the same error, unsent, until that send comes
//! back (its client message id; it goes, and the lane with it) or one RPC timeout has passed (a client that gave
//! up on it). The client resends them in order. A caller that times out holds its lane itself before it lets go
//! of its place in the queue, so nothing of its lane queued behind it can slip past. A send nobody waits for any
//! more because the hub answered it (an identical send was stored) holds nothing, and lifts the hold that waited
//! for it. REST sends have no lane: HTTP requests are independent.
//!
//! **One deadline per send, from the moment it reaches the batcher**: a send waits at most the RPC timeout in
//! all, queue included, and is then answered `timeout`. A send whose caller stopped waiting (its socket closed) or
//! whose deadline has passed before its batch leaves is not sent at all. A batch's request carries the latest
//! deadline of its sends, so the message-service drops it unexecuted once nobody in it waits any more, while a
//! fresh send is not failed for sharing a batch with one about to expire (that one's caller is answered `timeout`
//! on time by its own timer; it may still be stored, and its retry with the same client message id returns it).
//! Without this a send queued behind a slow batch waited for that batch and then a full timeout of its own.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

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

/// [`Holds`] shared by the batcher and the callers whose sends time out: the lock is taken for non-blocking work
/// only, never across an `.await`, and on the hot path once per batch.
#[derive(Debug, Clone, Default)]
struct SharedHolds(Arc<Mutex<Holds>>);

impl SharedHolds {
    fn lock(&self) -> MutexGuard<'_, Holds> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The handle handlers use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SendBatcher {
    queue: mpsc::Sender<Pending>,
    timeout: Duration,
    holds: SharedHolds,
}

impl SendBatcher {
    /// `interval`: least time between the starts of two batches (zero: none; see the module documentation).
    pub fn start(rpc: RpcClient, timeout: Duration, interval: Duration) -> SendBatcher {
        let (queue, pending) = mpsc::channel(QUEUE);
        let holds = SharedHolds::default();
        tokio::spawn(run(rpc, interval, timeout, pending, holds.clone()));
        SendBatcher { queue, timeout, holds }
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
        let lane = stream.map(|stream| Lane {
            stream: stream.clone(),
            conversation_id: request.request.conversation_id,
            to_user_id: request.request.to_user_id,
        });
        let mut watch = lane.clone().map(|lane| LaneWatch {
            holds: &self.holds,
            lane,
            client_message_id: request.request.client_message_id.clone(),
            armed: true,
        });
        let (reply, mut answer) = oneshot::channel();
        let pending = Pending { request, lane, request_id: request_id.to_owned(), deadline, reply };
        // Both waits keep their end (the queue slot being waited for, the answer) alive until the lane is held:
        // a later send of the lane must not enter the queue, nor the batcher see this one given up, before the
        // hold is in place.
        // One timer for both waits.
        let expiry = tokio::time::sleep_until(deadline);
        let room = self.queue.reserve();
        tokio::pin!(expiry, room);
        let permit = tokio::select! {
            biased;
            permit = &mut room => permit,
            () = &mut expiry => return Err(self.gave_up(&mut watch)),
        };
        let Ok(permit) = permit else { return Err(ApiError::unavailable("the gateway is shutting down")) };
        permit.send(pending);
        let answer = tokio::select! {
            biased;
            answer = &mut answer => answer.unwrap_or_else(|_| Err(ApiError::internal())),
            () = &mut expiry => return Err(self.gave_up(&mut watch)),
        };
        // Answered: the batcher has settled the lane (lifted its hold when this send reached it, or held it again
        // if the send was refused).
        if let Some(watch) = &mut watch {
            watch.armed = false;
        }
        answer
    }

    /// The caller is answered `timeout`, so its client will resend the send: its lane is held until then.
    fn gave_up(&self, watch: &mut Option<LaneWatch<'_>>) -> ApiError {
        if let Some(watch) = watch {
            let held = Hold {
                client_message_id: watch.client_message_id.clone(),
                error: timed_out(),
                until: Instant::now() + self.timeout,
            };
            self.holds.lock().entry(watch.lane.clone()).or_insert(held);
            watch.armed = false;
        }
        timed_out()
    }
}

/// A socket's send on its way: dropped unanswered (the hub answered it from the stored message's event, or its
/// socket closed), it lifts the hold that waited for it, since that send was stored or nobody sends on its lane
/// any more. The batcher would otherwise lift it only when the send reached it.
struct LaneWatch<'a> {
    holds: &'a SharedHolds,
    lane: Lane,
    client_message_id: String,
    /// Still on its way (neither answered nor given up).
    armed: bool,
}

impl Drop for LaneWatch<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        lift(&mut self.holds.lock(), &self.lane, &self.client_message_id);
    }
}

/// Lifts `lane`'s hold if it waits for the send `client_message_id` (that send came back, or nobody will resend it).
fn lift(holds: &mut Holds, lane: &Lane, client_message_id: &str) {
    if holds.get(lane).is_some_and(|held| held.client_message_id == client_message_id) {
        holds.remove(lane);
    }
}

/// `hold`: how long a lane stays held when the send that held it does not come back (the RPC timeout).
async fn run(
    rpc: RpcClient,
    interval: Duration,
    hold: Duration,
    mut queue: mpsc::Receiver<Pending>,
    holds: SharedHolds,
) {
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
        refuse_behind(&mut batch, &mut holds.lock(), Instant::now(), hold);
        if batch.is_empty() {
            continue;
        }
        // A panic in one batch fails that batch (its callers' answers are dropped, which they read as `internal`),
        // not the batcher: a dead batcher would leave a gateway that refuses every send until it is restarted.
        // No panic path is known; this is the same guard the message-service's committer has. (Its lanes are not
        // held: knowing them would cost every batch a copy of its lanes, for a path that is a bug.)
        let forwarded = forward(&rpc, std::mem::take(&mut batch), &holds, hold);
        if let Err(panic) = AssertUnwindSafe(forwarded).catch_unwind().await {
            let panic = common::telemetry::panic_message(panic.as_ref());
            tracing::error!(panic, "forwarding a batch of sends panicked");
        }
    }
}

/// Answers, and takes out of `batch`, the sends that are not to go, and holds lanes (see the module
/// documentation):
/// - a send whose caller stopped waiting is not sent: its own timer answered it `timeout` (and held its lane
///   before letting go), the hub answered it with the stored message of an identical send, or its socket closed
///   (the client resends it with the same client message id). Only the first holds its lane; the other two lift
///   a hold that waited for them as they are dropped ([`LaneWatch`]);
/// - the send a held lane waits for lifts the hold: it came back;
/// - a send whose time ran out in the queue, its caller's timer not yet run, is answered `timeout` here and holds
///   its lane for `hold`;
/// - a send of a held lane is refused with the hold's error.
fn refuse_behind(batch: &mut Vec<Pending>, holds: &mut Holds, now: Instant, hold: Duration) {
    holds.retain(|_, held| held.until > now);
    let mut error_for = |pending: &Pending| {
        let client_message_id = &pending.request.request.client_message_id;
        if pending.reply.is_closed() {
            return Some(timed_out());
        }
        if let Some(lane) = &pending.lane {
            lift(holds, lane, client_message_id);
        }
        if pending.deadline <= now {
            if let Some(lane) = &pending.lane {
                let held = Hold { client_message_id: client_message_id.clone(), error: timed_out(), until: now + hold };
                holds.entry(lane.clone()).or_insert(held);
            }
            return Some(timed_out());
        }
        let lane = pending.lane.as_ref()?;
        holds.get(lane).map(|held| held.error.clone())
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

/// Forwards one batch and hands each send its own answer. A send refused for a passing reason whose caller still
/// waits holds its lane for `hold` (the first such send of a lane, in batch order, is the one the lane waits for).
async fn forward(rpc: &RpcClient, batch: Vec<Pending>, holds: &SharedHolds, hold: Duration) {
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
    // Held and answered under one lock: a caller the hub answers meanwhile (its send was stored after all) either
    // is seen gone here and holds nothing, or finds the hold when it lets go and lifts it.
    let until = Instant::now() + hold;
    let mut holds = holds.lock();
    for (((lane, reply), outcome), send) in waiting.into_iter().zip(outcomes).zip(&request.sends) {
        if let (Some(lane), Err(error)) = (lane, &outcome)
            && error.code.is_retryable()
            && !reply.is_closed()
        {
            let client_message_id = send.request.client_message_id.clone();
            holds.entry(lane).or_insert(Hold { client_message_id, error: error.clone(), until });
        }
        let _ = reply.send(outcome);
    }
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
        // Its caller's own timer has not run yet: it is answered here.
        let (late, late_answer) = pending(Some("s1"), 1, "late", now);
        let (behind, behind_answer) = pending(Some("s1"), 1, "behind", fresh);
        let (elsewhere, _elsewhere_answer) = pending(Some("s1"), 2, "elsewhere", fresh);
        let (other_socket, _other_answer) = pending(Some("s2"), 1, "other", fresh);
        let (rest, _rest_answer) = pending(None, 1, "rest", fresh);
        let mut batch = vec![late, behind, elsewhere, other_socket, rest];
        let mut holds = Holds::new();

        refuse_behind(&mut batch, &mut holds, now, HOLD);

        assert_eq!(ids(&batch), ["elsewhere", "other", "rest"]);
        assert_eq!(code(late_answer), Some(common::protocol::ErrorCode::Timeout));
        assert_eq!(code(behind_answer), Some(common::protocol::ErrorCode::Timeout));
        assert_eq!(holds[&lane("s1", 1)].client_message_id, "late");
    }

    #[test]
    fn a_send_the_hub_answered_before_its_time_ran_out_in_the_queue_holds_nothing() {
        // Answered with the stored message of an identical send (its caller dropped its end), then the deadline
        // passed before the batch left: nobody was told `timeout`, so nobody will resend it.
        let now = Instant::now();
        let (answered, answer) = pending(Some("s1"), 1, "answered", now);
        drop(answer);
        let (behind, _behind_answer) = pending(Some("s1"), 1, "behind", now + Duration::from_secs(5));
        let mut batch = vec![answered, behind];
        let mut holds = Holds::new();

        refuse_behind(&mut batch, &mut holds, now, HOLD);

        assert_eq!(ids(&batch), ["behind"]);
        assert!(holds.is_empty());
    }

    /// A batcher whose queue nobody takes from, to see what `send` does by itself.
    fn stalled(capacity: usize) -> (SendBatcher, mpsc::Receiver<Pending>) {
        let (queue, pending) = mpsc::channel(capacity);
        (SendBatcher { queue, timeout: Duration::from_millis(100), holds: SharedHolds::default() }, pending)
    }

    fn send_to(conversation_id: i64, id: &str) -> AsUser<SendMessageRequest> {
        let (Pending { request, .. }, _) = pending(None, conversation_id, id, Instant::now());
        request
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_that_times_out_waiting_for_room_in_the_queue_holds_its_lane() {
        let (batcher, _queue) = stalled(1);
        let (filler, _filler_answer) = pending(Some("s2"), 1, "filler", Instant::now() + HOLD);
        batcher.queue.try_send(filler).unwrap();
        let s1: Arc<str> = "s1".into();

        let answer = batcher.send("r", Some(&s1), send_to(1, "a")).await;

        assert_eq!(answer.unwrap_err().code, common::protocol::ErrorCode::Timeout);
        let holds = batcher.holds.lock();
        assert_eq!(holds.get(&lane("s1", 1)).map(|h| h.client_message_id.as_str()), Some("a"));
        assert_eq!(holds.len(), 1, "no other lane is held");
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_whose_caller_times_out_in_the_queue_holds_its_lane_before_the_batcher_sees_it_given_up() {
        let (batcher, mut queue) = stalled(8);
        let s1: Arc<str> = "s1".into();

        let answer = batcher.send("r", Some(&s1), send_to(1, "a")).await;

        assert_eq!(answer.unwrap_err().code, common::protocol::ErrorCode::Timeout);
        assert_eq!(batcher.holds.lock()[&lane("s1", 1)].client_message_id, "a");
        // The batcher then finds it given up: not sent, and the hold stays, so "b" behind it is refused.
        let (b, b_answer) = pending(Some("s1"), 1, "b", Instant::now() + HOLD);
        let mut batch = vec![queue.try_recv().unwrap(), b];
        refuse_behind(&mut batch, &mut batcher.holds.lock(), Instant::now(), HOLD);
        assert!(batch.is_empty());
        assert_eq!(code(b_answer), Some(common::protocol::ErrorCode::Timeout));
    }

    #[tokio::test]
    async fn a_resend_dropped_unanswered_lifts_the_hold_that_waited_for_it_and_no_other() {
        // The hub answered it from the stored message's event (so it was stored), or its socket closed.
        let (batcher, _queue) = stalled(8);
        *batcher.holds.lock() = held_for("a", Instant::now() + HOLD);
        let s1: Arc<str> = "s1".into();

        let mut other = Box::pin(batcher.send("r", Some(&s1), send_to(1, "b")));
        assert!(futures_util::poll!(other.as_mut()).is_pending(), "queued");
        drop(other);
        assert!(batcher.holds.lock().contains_key(&lane("s1", 1)), "b is not what the lane waits for");

        let mut resend = Box::pin(batcher.send("r", Some(&s1), send_to(1, "a")));
        assert!(futures_util::poll!(resend.as_mut()).is_pending(), "queued");
        drop(resend);
        assert!(batcher.holds.lock().is_empty());
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
