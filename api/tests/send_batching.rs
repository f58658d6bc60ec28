//! Sends that meet at the gateway travel to the message-service together: a burst from many sockets costs far
//! fewer `sendMessages` requests than messages, each send still gets its own answer, and a lone send goes at
//! once as a batch of one. The message-service here is a stand-in that counts the batches it receives.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    amqp::{Broker, RpcClient, RpcServer},
    protocol::{
        ApiError, RpcReply,
        messages::{Message, SendBatchResult, SendMessages},
    },
};
use serde_json::json;
use support::{Options, spawn_app_with, ws::WsClient};
use tokio_util::sync::CancellationToken;

/// The stand-in message-service: answers every `sendMessages` batch after a delay (20 ms unless told; refusing
/// bodies "refuse me", and failing as a whole a batch with a body "fail the batch") and records each batch's
/// size and arrival time.
struct StandIn {
    broker: Broker,
    /// Each batch's arrival time and size, in arrival order.
    batches: Arc<Mutex<Vec<(Instant, usize)>>>,
    stop: CancellationToken,
    serving: tokio::task::JoinHandle<()>,
}

impl StandIn {
    async fn start(app: &support::TestApp) -> StandIn {
        StandIn::answering_after(app, Duration::from_millis(20)).await
    }

    async fn answering_after(app: &support::TestApp, delay: Duration) -> StandIn {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let broker = Broker::start(&app.amqp, "stand-in message-service".into());
        let stop = CancellationToken::new();
        let server = RpcServer::new(broker.clone(), "stand-in").handle::<SendMessages, _, _>({
            let batches = batches.clone();
            move |batch, _| {
                let batches = batches.clone();
                async move {
                    batches.lock().unwrap().push((Instant::now(), batch.sends.len()));
                    answer(batch, delay).await
                }
            }
        });
        let serving = tokio::spawn(server.run(stop.clone()));
        let probe = RpcClient::start(broker.clone(), "probe", &uuid::Uuid::new_v4().simple().to_string());
        common::testing::until_served(&probe, &["sendMessages"], Duration::from_secs(10)).await;
        StandIn { broker, batches, stop, serving }
    }

    /// Waits (at most 5 s) until the first batch has reached the stand-in.
    async fn first_batch_arrived(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.sizes().is_empty() {
            assert!(Instant::now() < deadline, "the first batch never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn sizes(&self) -> Vec<usize> {
        self.batches.lock().unwrap().iter().map(|(_, size)| *size).collect()
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.batches.lock().unwrap().iter().map(|(at, _)| *at).collect()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.serving.await.unwrap();
        self.broker.close().await;
    }
}

/// A `sendMessage` frame to conversation 1 whose request id, client message id and body are all `id`.
fn send_to_one(id: &str) -> serde_json::Value {
    json!({ "type": "sendMessage", "id": id, "conversationId": 1, "clientMessageId": id, "body": id })
}

async fn answer(batch: common::protocol::messages::SendBatch, delay: Duration) -> Result<SendBatchResult, ApiError> {
    // A commit takes a moment; sends arriving meanwhile must queue for the next batch.
    tokio::time::sleep(delay).await;
    if batch.sends.iter().any(|s| s.request.body == "fail the batch") {
        return Err(ApiError::unavailable("the database is unreachable; try again shortly"));
    }
    let results = batch
        .sends
        .into_iter()
        .map(|s| match s.request.body.as_str() {
            "refuse me" => RpcReply::Err(ApiError::forbidden("not a member")),
            _ => RpcReply::Ok(Message {
                conversation_id: s.request.conversation_id.unwrap_or(0),
                seq: 1,
                sender_id: s.user_id,
                client_message_id: s.request.client_message_id,
                body: s.request.body,
                sent_at: 0,
            }),
        })
        .collect();
    Ok(SendBatchResult { results })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sends_travels_in_few_batches_and_each_gets_its_own_answer() {
    let app = spawn_app_with(Options::default()).await;
    let stand_in = StandIn::start(&app).await;
    let (token, user) = app.register("burst").await;

    // A lone send: a batch of one, answered.
    let (mut lone, _) = WsClient::authenticated(&app, &token).await;
    let reply = lone.call("sendMessage", json!({ "conversationId": 1, "clientMessageId": "lone", "body": "hi" })).await;
    assert_eq!(reply["result"]["data"]["clientMessageId"], "lone");
    assert_eq!(stand_in.sizes(), [1]);

    // A burst: 8 sockets × 25 sends in flight at once.
    let mut sockets = Vec::new();
    for _ in 0..8 {
        sockets.push(WsClient::authenticated(&app, &token).await.0);
    }
    let bursts = sockets.into_iter().enumerate().map(|(s, mut socket)| async move {
        for i in 0..25 {
            let body = if i == 7 { "refuse me".to_owned() } else { format!("m{i}") };
            socket
                .send_json(&json!({ "type": "sendMessage", "id": format!("{s}-{i}"), "conversationId": s + 1,
                    "clientMessageId": format!("c{s}-{i}"), "body": body }))
                .await;
        }
        let mut answers = Vec::new();
        for _ in 0..25 {
            answers.push(socket.next_frame().await);
        }
        (s, answers)
    });
    let results = futures_util::future::join_all(bursts).await;

    for (s, answers) in results {
        for answer in answers {
            let id = answer["id"].as_str().unwrap().to_owned();
            let i: usize = id.split('-').nth(1).unwrap().parse().unwrap();
            if i == 7 {
                assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
            } else {
                assert_eq!(answer["result"]["data"]["clientMessageId"], format!("c{s}-{i}"), "{answer}");
                assert_eq!(answer["result"]["data"]["conversationId"], json!(s + 1));
                assert_eq!(answer["result"]["data"]["senderId"], json!(user));
            }
        }
    }
    let total: usize = stand_in.sizes().iter().sum();
    assert_eq!(total, 201);
    let count = stand_in.sizes().len();
    assert!(count <= 60, "201 sends took {count} batches: they were not batched");
    stand_in.stop().await;
    app.shutdown().await;
}

/// `WARREN_SEND_BATCH_INTERVAL_MS`: under load a batch starts no sooner than the interval after the one before and
/// takes everything queued meanwhile; a send after a quiet spell is not held. (An interval of a second, far above
/// what operators use, so that the lower bounds below cannot pass by accident and scheduling noise cannot fail
/// them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_interval_batches_are_paced_under_load_but_a_send_after_a_pause_goes_at_once() {
    let interval = Duration::from_secs(1);
    let mut options = Options::default();
    options.gateway.send_batch_interval = interval;
    let app = spawn_app_with(options).await;
    let stand_in = StandIn::start(&app).await;
    let (token, _) = app.register("paced").await;
    let (mut socket, _) = WsClient::authenticated(&app, &token).await;
    let send = |i: usize| {
        json!({ "type": "sendMessage", "id": format!("p{i}"), "conversationId": 1,
        "clientMessageId": format!("p{i}"), "body": format!("paced {i}") })
    };

    // The first send finds no batch before it: it goes at once.
    let reply = socket.request(&send(0)).await;
    assert_eq!(reply["result"]["data"]["clientMessageId"], "p0", "{reply}");
    // Four more, at once: held until a second after the first batch, then sent together.
    for i in 1..=4 {
        socket.send_json(&send(i)).await;
    }
    for i in 1..=4 {
        let answer = socket.next_frame().await;
        assert_eq!(answer["id"], format!("p{i}"), "{answer}");
        assert_eq!(answer["result"]["data"]["clientMessageId"], format!("p{i}"), "{answer}");
    }
    assert_eq!(stand_in.sizes(), [1, 4]);
    let arrivals = stand_in.arrivals();
    let gap = arrivals[1] - arrivals[0];
    assert!(gap >= interval.mul_f64(0.9), "the second batch came {gap:?} after the first");

    // After a pause longer than the interval, a lone send is not held.
    tokio::time::sleep(interval + Duration::from_millis(200)).await;
    let started = Instant::now();
    let reply = socket.request(&send(5)).await;
    assert_eq!(reply["result"]["data"]["clientMessageId"], "p5", "{reply}");
    let took = started.elapsed();
    assert!(took < interval.mul_f64(0.9), "a send after a pause took {took:?}: it was held");
    assert_eq!(stand_in.sizes(), [1, 4, 1]);
    stand_in.stop().await;
    app.shutdown().await;
}

/// A send queued behind a slow batch is answered `timeout` once the RPC timeout has passed since it was sent —
/// not after the batch ahead of it plus a full timeout of its own — and its own batch carries what is left of
/// its deadline, so the service would drop it rather than run it for nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_queued_behind_a_slow_batch_times_out_on_its_own_deadline() {
    let timeout = Duration::from_secs(1);
    let mut options = Options::default();
    options.gateway.rpc_timeout = timeout;
    let app = spawn_app_with(options).await;
    // Far slower than the timeout: every batch times out.
    let stand_in = StandIn::answering_after(&app, Duration::from_secs(5)).await;
    let (token, _) = app.register("patient").await;
    let (mut socket, _) = WsClient::authenticated(&app, &token).await;

    let first_sent = Instant::now();
    socket.send_json(&send_to_one("first")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second_sent = Instant::now();
    socket.send_json(&send_to_one("second")).await;

    let first = socket.next_frame().await;
    assert_eq!((first["id"].as_str(), first["error"]["code"].as_str()), (Some("first"), Some("timeout")), "{first}");
    assert!(!first["error"]["message"].as_str().unwrap().contains("sendMessages"), "{first}");
    let second = socket.next_frame().await;
    let second_took = second_sent.elapsed();
    assert_eq!(
        (second["id"].as_str(), second["error"]["code"].as_str()),
        (Some("second"), Some("timeout")),
        "{second}"
    );
    assert!(first_sent.elapsed() >= timeout, "the first send was answered before its timeout");
    // Before: the second send's own timeout started only when the first batch gave up (~1.9 s here).
    assert!(second_took < timeout.mul_f64(1.5), "the second send was answered {second_took:?} after it was sent");
    stand_in.stop().await;
    app.shutdown().await;
}

/// A fresh send that shares a batch with one about to expire is not failed with it: the nearly expired one is
/// answered `timeout` by its own deadline, the fresh one gets its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_send_batched_with_a_nearly_expired_one_still_gets_its_message() {
    // Each batch takes 1 s of a 1.5 s timeout: the send that queued behind the first batch from its start has
    // 0.55 s left when the second batch leaves, the one that queued at its end 1.4 s.
    let mut options = Options::default();
    options.gateway.rpc_timeout = Duration::from_millis(1_500);
    let app = spawn_app_with(options).await;
    let stand_in = StandIn::answering_after(&app, Duration::from_secs(1)).await;
    let (token, _) = app.register("mixed").await;
    let (mut first, _) = WsClient::authenticated(&app, &token).await;
    let (mut early, _) = WsClient::authenticated(&app, &token).await;
    let (mut fresh, _) = WsClient::authenticated(&app, &token).await;

    first.send_json(&send_to_one("first")).await;
    stand_in.first_batch_arrived().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    early.send_json(&send_to_one("early")).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    fresh.send_json(&send_to_one("fresh")).await;

    let answer = first.next_frame().await;
    assert_eq!(answer["result"]["data"]["clientMessageId"], "first", "{answer}");
    let answer = early.next_frame().await;
    assert_eq!((answer["id"].as_str(), answer["error"]["code"].as_str()), (Some("early"), Some("timeout")), "{answer}");
    // The client sent a sendMessage; the batch operation behind it is not named.
    assert!(!answer["error"]["message"].as_str().unwrap().contains("sendMessages"), "{answer}");
    let answer = fresh.next_frame().await;
    assert_eq!(answer["result"]["data"]["clientMessageId"], "fresh", "{answer}");
    assert_eq!(stand_in.sizes(), [1, 2]);
    stand_in.stop().await;
    app.shutdown().await;
}

/// A send whose socket closed while it queued is not forwarded: nobody would receive its answer, and the
/// client, never having had an acknowledgement, sends it again with the same client message id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_socket_closed_before_its_batch_left_is_not_sent() {
    let app = spawn_app_with(Options::default()).await;
    let stand_in = StandIn::answering_after(&app, Duration::from_millis(500)).await;
    let (token, _) = app.register("leaver").await;
    let (mut stays, _) = WsClient::authenticated(&app, &token).await;
    let (mut leaves, _) = WsClient::authenticated(&app, &token).await;

    stays.send_json(&send_to_one("in-flight")).await;
    // The first batch has left (the stand-in has it) before the second send arrives and queues behind it.
    stand_in.first_batch_arrived().await;
    leaves.send_json(&send_to_one("abandoned")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    leaves.close().await;

    let answer = stays.next_frame().await;
    assert_eq!(answer["result"]["data"]["clientMessageId"], "in-flight", "{answer}");
    // Long enough for a second batch to have reached the stand-in, had there been one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stand_in.sizes(), [1]);
    // The batcher goes on: a later send is forwarded and answered.
    let later =
        stays.call("sendMessage", json!({ "conversationId": 1, "clientMessageId": "later", "body": "x" })).await;
    assert_eq!(later["result"]["data"]["clientMessageId"], "later", "{later}");
    assert_eq!(stand_in.sizes(), [1, 1]);
    stand_in.stop().await;
    app.shutdown().await;
}

/// A socket pipelines its sends: when the batch holding one fails, the next send to the same conversation is
/// often already queued. It is refused with the same error rather than sent, so it cannot be stored before the
/// one in front of it, and so is every send of that socket to that conversation until that one is resent. Other
/// conversations, and other sockets, are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_queued_behind_a_refused_one_of_its_socket_and_conversation_is_refused_with_it() {
    let app = spawn_app_with(Options::default()).await;
    let stand_in = StandIn::answering_after(&app, Duration::from_millis(300)).await;
    let (token, _) = app.register("pipeliner").await;
    let (mut socket, _) = WsClient::authenticated(&app, &token).await;
    let (mut other_device, _) = WsClient::authenticated(&app, &token).await;
    let send = |id: &str, conversation: i64, body: &str| json!({ "type": "sendMessage", "id": id, "conversationId": conversation, "clientMessageId": id, "body": body });

    socket.send_json(&send("a", 1, "fail the batch")).await;
    stand_in.first_batch_arrived().await;
    socket.send_json(&send("b", 1, "after a")).await;
    socket.send_json(&send("c", 2, "elsewhere")).await;
    other_device.send_json(&send("d", 1, "from another device")).await;

    let mut answers = std::collections::HashMap::new();
    for _ in 0..3 {
        let frame = socket.next_frame().await;
        answers.insert(frame["id"].as_str().unwrap().to_owned(), frame);
    }
    let code = |id: &str| answers[id]["error"]["code"].as_str().map(str::to_owned);
    assert_eq!(code("a").as_deref(), Some("unavailable"), "{:?}", answers["a"]);
    assert_eq!(code("b").as_deref(), Some("unavailable"), "refused with the one before it: {:?}", answers["b"]);
    assert_eq!(answers["c"]["result"]["data"]["clientMessageId"], "c", "{:?}", answers["c"]);
    let d = other_device.next_frame().await;
    assert_eq!(d["result"]["data"]["clientMessageId"], "d", "{d}");
    assert_eq!(stand_in.sizes(), [1, 2], "b was never sent");
    // The lane waits for a: b resent first is refused again; a resent is stored, and then b.
    let early = socket.request(&send("b", 1, "after a")).await;
    assert_eq!(early["error"]["code"], "unavailable", "{early}");
    let a = socket.request(&send("a", 1, "a again")).await;
    assert_eq!(a["result"]["data"]["clientMessageId"], "a", "{a}");
    let b = socket.request(&send("b", 1, "after a")).await;
    assert_eq!(b["result"]["data"]["clientMessageId"], "b", "{b}");
    assert_eq!(stand_in.sizes(), [1, 2, 1, 1], "the early b was never sent");
    stand_in.stop().await;
    app.shutdown().await;
}
