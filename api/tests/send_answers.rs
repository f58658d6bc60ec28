//! The socket that sent a message is answered by the stored message's event when that event reaches the gateway
//! first (it is published after the commit, before the service's reply): one frame, the `sendMessage` reply, in
//! place of the `message` frame, while every other socket of the conversation gets the `message` frame. When the
//! service's reply comes first, the socket is answered from it and still gets the frame later.
//!
//! The message-service is a stand-in on the real broker that, for each batch, either publishes the events and
//! holds its reply until the test releases it, or replies first and publishes the events after.

mod support;

use std::{sync::Arc, time::Duration};

use common::{
    amqp::{Broker, EventPublisher, RpcClient, RpcServer},
    protocol::{
        ApiError, RpcReply,
        messages::{Event, EventBatch, Message, SendBatch, SendBatchResult, SendMessages},
    },
};
use serde_json::{Value, json};
use support::{TestApp, spawn_app, ws::WsClient};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

const QUIET: Duration = Duration::from_millis(400);

#[derive(Clone, Copy)]
enum Order {
    /// Publish the events, then reply once the test adds a permit to `release`.
    EventFirst,
    /// Reply, then publish the events once the test adds a permit to `release`.
    ReplyFirst,
}

struct StandIn {
    broker: Broker,
    events: Broker,
    release: Arc<Semaphore>,
    stop: CancellationToken,
    serving: tokio::task::JoinHandle<()>,
}

impl StandIn {
    /// Stores each send as seq 1, 2, … of conversation 9, whose members are `members`.
    async fn start(app: &TestApp, order: Order, members: Vec<i64>) -> StandIn {
        let (events, publisher) = common::testing::connected_publisher(&app.amqp).await;
        let release = Arc::new(Semaphore::new(0));
        let next_seq = Arc::new(Mutex::new(0));
        let broker = Broker::start(&app.amqp, "stand-in message-service".into());
        let stop = CancellationToken::new();
        let server = RpcServer::new(broker.clone(), "stand-in").handle::<SendMessages, _, _>({
            let release = release.clone();
            move |batch, _| {
                let (publisher, release, next_seq, members) =
                    (publisher.clone(), release.clone(), next_seq.clone(), members.clone());
                async move { store(batch, order, &publisher, &release, &next_seq, members).await }
            }
        });
        let serving = tokio::spawn(server.run(stop.clone()));
        let probe = RpcClient::start(broker.clone(), "probe", &uuid::Uuid::new_v4().simple().to_string());
        common::testing::until_served(&probe, &["sendMessages"], Duration::from_secs(10)).await;
        StandIn { broker, events, release, stop, serving }
    }

    async fn stop(self) {
        self.release.add_permits(1000);
        self.stop.cancel();
        self.serving.await.unwrap();
        self.broker.close().await;
        self.events.close().await;
    }
}

async fn store(
    batch: SendBatch,
    order: Order,
    publisher: &EventPublisher,
    release: &Arc<Semaphore>,
    next_seq: &Mutex<i64>,
    members: Vec<i64>,
) -> Result<SendBatchResult, ApiError> {
    let mut seq = next_seq.lock().await;
    let mut messages = Vec::new();
    for send in batch.sends {
        *seq += 1;
        messages.push(Message {
            conversation_id: 9,
            seq: *seq,
            sender_id: send.user_id,
            client_message_id: send.request.client_message_id,
            body: send.request.body,
            sent_at: 0,
        });
    }
    let events = EventBatch {
        events: messages
            .iter()
            .map(|message| Event::Message { message: message.clone(), recipients: members.clone() })
            .collect(),
    };
    let results = SendBatchResult { results: messages.into_iter().map(RpcReply::Ok).collect() };
    match order {
        Order::EventFirst => {
            publisher.publish(&events).await.expect("publish the events");
            release.acquire().await.expect("released").forget();
        }
        Order::ReplyFirst => {
            let (publisher, release) = (publisher.clone(), release.clone());
            tokio::spawn(async move {
                release.acquire().await.expect("released").forget();
                publisher.publish(&events).await.expect("publish the events");
            });
        }
    }
    Ok(results)
}

fn send(id: &str, client_message_id: &str) -> Value {
    json!({ "type": "sendMessage", "id": id, "conversationId": 9, "clientMessageId": client_message_id, "body": "hi" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sending_socket_is_answered_by_the_event_before_the_services_reply_and_written_once() {
    let app = spawn_app().await;
    let (ann_token, ann) = app.register("ann").await;
    let (ben_token, ben) = app.register("ben").await;
    let stand_in = StandIn::start(&app, Order::EventFirst, vec![ann, ben]).await;
    let (mut laptop, _) = WsClient::authenticated(&app, &ann_token).await;
    let (mut phone, _) = WsClient::authenticated(&app, &ann_token).await;
    let (mut ben_socket, _) = WsClient::authenticated(&app, &ben_token).await;

    laptop.send_json(&send("r1", "c1")).await;

    // The stand-in holds its reply: this answer can only have come from the event.
    let answer = laptop.next_frame().await;
    assert_eq!(answer["type"], "reply", "{answer}");
    assert_eq!(answer["id"], "r1");
    assert_eq!(answer["result"]["op"], "sendMessage");
    assert_eq!(answer["result"]["data"]["seq"], 1);
    assert_eq!(answer["result"]["data"]["clientMessageId"], "c1");
    for socket in [&mut phone, &mut ben_socket] {
        let frame = socket.next_frame().await;
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(frame["message"], answer["result"]["data"], "every other socket gets the same message");
    }
    stand_in.release.add_permits(1);
    laptop.expect_no_frame(QUIET).await;

    // Several sends in flight at once: each answered once, by its own id, in seq order.
    for i in 2..=5 {
        laptop.send_json(&send(&format!("r{i}"), &format!("c{i}"))).await;
    }
    let mut answered = Vec::new();
    while answered.len() < 4 {
        let frame = laptop.next_frame().await;
        assert_eq!(frame["type"], "reply", "{frame}");
        answered.push((frame["id"].as_str().unwrap().to_owned(), frame["result"]["data"]["seq"].as_i64().unwrap()));
        stand_in.release.add_permits(1);
    }
    let mut seqs: Vec<i64> = answered.iter().map(|(_, seq)| *seq).collect();
    let in_arrival_order = seqs.clone();
    seqs.sort_unstable();
    assert_eq!(in_arrival_order, seqs, "answers arrive in seq order, as the frames would: {answered:?}");
    assert_eq!(seqs, [2, 3, 4, 5]);
    laptop.expect_no_frame(QUIET).await;
    assert_eq!(phone.next_frame().await["message"]["seq"], 2);
    stand_in.stop().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_reply_comes_first_the_socket_is_answered_by_it_and_still_gets_the_frame() {
    let app = spawn_app().await;
    let (ann_token, ann) = app.register("ann").await;
    let stand_in = StandIn::start(&app, Order::ReplyFirst, vec![ann]).await;
    let (mut laptop, _) = WsClient::authenticated(&app, &ann_token).await;

    // The stand-in publishes the event only once the answer was read here.
    let answer =
        laptop.call("sendMessage", json!({ "conversationId": 9, "clientMessageId": "c1", "body": "hi" })).await;
    assert_eq!(answer["type"], "reply", "{answer}");
    assert_eq!(answer["result"]["data"]["seq"], 1);
    stand_in.release.add_permits(1);

    let frame = laptop.next_frame().await;
    assert_eq!(frame["type"], "message", "the event found nothing awaited: {frame}");
    assert_eq!(frame["message"], answer["result"]["data"]);
    laptop.expect_no_frame(QUIET).await;
    stand_in.stop().await;
    app.shutdown().await;
}

/// A client that keeps exactly the documented maximum of requests in flight, sending the next one as soon as an
/// answer arrives, is never refused: a send answered from its event stops counting as in flight before the next
/// frame from that socket is counted. (A Python client doing this against a debug stack saw 2–30 of every 1,000
/// sends refused before the gateway reaped answered requests ahead of counting, and none in 6,000 after; this
/// test's faster client did not catch that race, so it guards the contract rather than reproduces it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_the_in_flight_limit_is_never_refused_when_its_sends_are_answered_by_their_events() {
    let app = spawn_app().await;
    let (token, ann) = app.register("ann").await;
    let stand_in = StandIn::start(&app, Order::EventFirst, vec![ann]).await;
    stand_in.release.add_permits(100_000);
    let (mut socket, _) = WsClient::authenticated(&app, &token).await;
    let window = api::config::Settings::for_tests(common::testing::unique_amqp_settings()).ws.max_in_flight;
    let total = 20 * window;

    let mut sent = 0;
    while sent < window {
        sent += 1;
        socket.send_json(&send(&format!("r{sent}"), &format!("c{sent}"))).await;
    }
    let mut refused = Vec::new();
    let mut answered = 0;
    while answered < total {
        let frame = socket.next_frame().await;
        // The event may also come as a `message` frame, when the service's reply won the race: not an answer.
        if frame["type"] == "message" {
            continue;
        }
        answered += 1;
        if frame["type"] == "error" {
            refused.push(frame);
        }
        if sent < total {
            sent += 1;
            socket.send_json(&send(&format!("r{sent}"), &format!("c{sent}"))).await;
        }
    }
    assert!(refused.is_empty(), "{} of {total} sends refused, the first: {}", refused.len(), refused[0]);
    stand_in.stop().await;
    app.shutdown().await;
}
