//! The WebSocket endpoint through the real gateway, user-service, RabbitMQ and PostgreSQL: authentication,
//! limits, typed errors, requests, live events from the broker, and every way a socket is closed.
//! No message-service runs here; events are published on the fanout exchange directly.

mod support;

use std::time::{Duration, Instant};

use common::{
    auth::{CLOCK_SKEW_LEEWAY_SECS, DEV_PRIVATE_KEY_PEM, TokenSigner},
    protocol::messages::{Event, EventBatch, Message, ReadPosition},
};
use serde_json::{Value, json};
use support::{
    Options, spawn_app, spawn_app_with,
    ws::{Ending, WsClient, error_code},
};
use tokio_tungstenite::tungstenite;

fn message_event(id: i64, body: &str, recipients: Vec<i64>) -> Event {
    Event::Message {
        message: Message {
            conversation_id: 7,
            seq: id,
            sender_id: recipients[0],
            client_message_id: format!("c{id}"),
            body: body.to_owned(),
            sent_at: 0,
        },
        recipients,
    }
}

#[tokio::test]
async fn a_valid_token_gets_ready_with_its_user() {
    let app = spawn_app().await;
    let (token, alice_id) = app.register("alice").await;

    let (client, ready) = WsClient::authenticated(&app, &token).await;

    assert_eq!(ready["user"]["id"], alice_id);
    assert_eq!(ready["user"]["username"], "alice");
    assert!(ready["user"]["createdAt"].as_i64().unwrap() > 0);
    assert_eq!(ready["pingIntervalMs"], 20_000);
    assert_eq!(ready["syncIntervalMs"], 30_000);
    client.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_socket_that_never_authenticates_is_closed_with_4001() {
    let mut options = Options::default();
    options.gateway.ws.auth_timeout = Duration::from_millis(300);
    let app = spawn_app_with(options).await;
    let mut client = WsClient::connect(&app).await;

    let started = Instant::now();
    let (code, reason) = client.expect_close().await;

    assert_eq!(code, 4001, "{reason}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    app.shutdown().await;
}

#[tokio::test]
async fn a_bad_token_or_a_request_before_auth_is_closed_with_4001() {
    let app = spawn_app().await;
    let (token, _) = app.register("bob").await;
    let mut tampered = token.clone();
    tampered.push('x');

    for first in [
        json!({ "type": "auth", "token": "garbage" }),
        json!({ "type": "auth", "token": tampered }),
        json!({ "type": "getSelf", "id": "r1" }),
        json!({ "type": "auth" }),
    ] {
        let mut client = WsClient::connect(&app).await;
        client.send_json(&first).await;
        let (code, reason) = client.expect_close().await;
        assert_eq!(code, 4001, "first frame {first}");
        assert!(!reason.is_empty() && reason.len() <= 123, "first frame {first}: {reason:?}");
    }
    // An auth frame that cannot be read says why, not that it is not one.
    let mut client = WsClient::connect(&app).await;
    client.send_json(&json!({ "type": "auth", "token": token, "device": "x".repeat(300) })).await;
    let (code, reason) = client.expect_close().await;
    assert_eq!(code, 4001);
    assert!(reason.starts_with("unreadable auth frame: unknown field \"device\""), "{reason}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_foreign_origin_is_refused_and_a_listed_one_accepted() {
    let app = spawn_app().await;
    let (token, _) = app.register("carol").await;

    let refused = WsClient::try_connect(&app, Some("http://evil.example")).await;
    let Err(tungstenite::Error::Http(response)) = refused else { panic!("the upgrade was not refused") };
    assert_eq!(response.status(), 403);
    let body: Value = serde_json::from_slice(response.body().as_deref().expect("a body")).expect("a JSON body");
    assert_eq!(body["error"]["code"], "forbidden");

    let mut allowed = WsClient::try_connect(&app, Some("http://localhost:5173")).await.expect("a listed origin");
    allowed.send_json(&json!({ "type": "auth", "token": token })).await;
    assert_eq!(allowed.next_frame().await["type"], "ready");
    allowed.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn malformed_frames_get_typed_errors_naming_their_request_and_the_socket_keeps_working() {
    let app = spawn_app().await;
    let (token, dave_id) = app.register("dave").await;
    let (mut client, _) = WsClient::authenticated(&app, &token).await;
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        ("not json at all".into(), None, "valid JSON"),
        ("[1, 2, 3]".into(), None, "object"),
        (json!({ "type": "launchMissiles", "id": "a" }).to_string(), Some("a"), "launchMissiles"),
        (json!({ "type": "markRead", "id": "b", "conversationId": 1 }).to_string(), Some("b"), "seq"),
        (json!({ "type": "getUsers", "id": "c", "limit": "ten" }).to_string(), Some("c"), "invalid type"),
        (json!({ "id": "d" }).to_string(), Some("d"), "type"),
        (json!({ "type": "getSelf", "id": "x".repeat(65) }).to_string(), None, "id"),
        (json!({ "type": "getSelf", "id": 42 }).to_string(), None, "id"),
        (json!({ "type": "getSelf" }).to_string(), None, "id"),
        (json!({ "type": "auth", "token": token }).to_string(), None, "already authenticated"),
        (json!({ "type": "auth", "id": "e", "token": token }).to_string(), Some("e"), "already authenticated"),
        (json!({ "type": "getMessages", "id": "f", "conversationId": 1, "befor": 3 }).to_string(), Some("f"), "befor"),
        (json!({ "type": "getSelf", "id": "g", "verbose": true }).to_string(), Some("g"), "verbose"),
        (r#"{"type":"getUsers","id":"h","prefix":"a","prefix":"b"}"#.into(), Some("h"), "given twice"),
    ];

    for (text, id, mentions) in cases {
        client.send_text(text.clone()).await;
        let frame = client.next_frame().await;
        assert_eq!(error_code(&frame), "bad_request", "{text} -> {frame}");
        assert_eq!(frame["id"].as_str(), id, "{text} -> {frame}");
        let message = frame["error"]["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{text} -> {message}");
    }

    let me = client.call("getSelf", json!({})).await;
    assert_eq!(me["type"], "reply");
    assert_eq!(me["result"]["data"]["id"], dave_id);
    let pong = client.call("ping", json!({})).await;
    assert_eq!(pong["result"]["op"], "ping");
    let skew = pong["result"]["data"]["serverTime"].as_i64().unwrap() - chrono::Utc::now().timestamp_millis();
    assert!(skew.abs() < 60_000, "the ping reply carries the gateway's clock");
    client.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_the_socket_with_1009() {
    let app = spawn_app().await;
    let (token, _) = app.register("erin").await;
    let (mut client, _) = WsClient::authenticated(&app, &token).await;

    let huge = json!({ "type": "getUsers", "id": "big", "prefix": "x".repeat(1 << 20) });
    client.send_json(&huge).await;

    let (code, reason) = client.expect_close().await;
    assert_eq!(code, 1009, "{reason}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_binary_frame_closes_the_socket_with_4002() {
    let app = spawn_app().await;
    let (token, _) = app.register("frank").await;
    let (mut client, _) = WsClient::authenticated(&app, &token).await;

    client.send(tungstenite::Message::binary(vec![1, 2, 3])).await;

    assert_eq!(client.expect_close().await.0, 4002);
    app.shutdown().await;
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_the_socket_with_1007() {
    use tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let app = spawn_app().await;
    let (token, _) = app.register("gina").await;
    let (mut client, _) = WsClient::authenticated(&app, &token).await;

    let not_utf8 = b"{\"type\":\"getSelf\",\"id\":\"\xff\xfe\"}".to_vec();
    client.send(tungstenite::Message::Frame(Frame::message(not_utf8, OpCode::Data(Data::Text), true))).await;

    let (code, reason) = client.expect_close().await;
    assert_eq!(code, 1007, "{reason}");
    assert!(reason.contains("UTF-8"), "{reason}");
    app.shutdown().await;
}

/// A token for `user_id` that the gateway accepts for about `seconds` more: its `exp` lies in the past, within the
/// verifier's clock-skew leeway, by that much less than the leeway.
fn token_accepted_for(user_id: i64, name: &str, seconds: u64) -> String {
    let signer = TokenSigner::from_private_pem(DEV_PRIVATE_KEY_PEM.as_bytes()).unwrap();
    let issued = chrono::Utc::now().timestamp() - 100;
    let lifetime = 100 - CLOCK_SKEW_LEEWAY_SECS + seconds;
    signer.sign(user_id, name, Duration::from_secs(lifetime), issued).unwrap()
}

#[tokio::test]
async fn a_socket_is_closed_with_4001_when_its_token_expires() {
    // Expiry is checked at each keep-alive ping.
    let mut options = Options::default();
    options.gateway.ws.ping_interval = Duration::from_millis(300);
    let app = spawn_app_with(options).await;
    let (_, user_id) = app.register("hank").await;
    let token = token_accepted_for(user_id, "hank", 5);
    let (mut client, ready) = WsClient::authenticated(&app, &token).await;
    assert_eq!(ready["user"]["id"], user_id);
    assert_eq!(client.call("getSelf", json!({})).await["type"], "reply", "the session works until then");

    // At most the token's five seconds and a ping interval (less the time taken to get here), with room to spare.
    let Ending::Closed { code, reason } = client.ending_within(Duration::from_secs(15)).await else {
        panic!("the socket ended without a close frame")
    };

    assert_eq!(code, 4001, "{reason}");
    assert!(reason.contains("expired"), "{reason}");
    app.shutdown().await;
}

/// A `refreshToken` answered on a socket gives the client a new token and the socket the new token's life: the
/// socket that would have been closed at its first token's expiry stays open.
#[tokio::test]
async fn a_socket_that_refreshes_its_token_outlives_the_first_token() {
    let mut options = Options::default();
    options.gateway.ws.ping_interval = Duration::from_millis(300);
    let app = spawn_app_with(options).await;
    let (_, user_id) = app.register("iris").await;
    let token = token_accepted_for(user_id, "iris", 5);
    let (mut client, _) = WsClient::authenticated(&app, &token).await;

    let stray = client.call("refreshToken", json!({ "ttl": 99 })).await;
    assert_eq!(error_code(&stray), "bad_request", "{stray}");
    let refreshed = client.call("refreshToken", json!({})).await;
    assert_eq!(refreshed["result"]["op"], "refreshToken", "{refreshed}");
    let fresh = refreshed["result"]["data"]["token"].as_str().unwrap();
    assert_ne!(fresh, token);
    assert_eq!(refreshed["result"]["data"]["user"]["id"], user_id);

    // Past the first token's five seconds and a few pings: still open, still answering.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let me = client.call("getSelf", json!({})).await;
    assert_eq!(me["result"]["data"]["id"], user_id, "the socket was cut off with its first token: {me}");
    client.close().await;
    app.shutdown().await;
}

/// A socket whose token has just run out is closed only at its next keep-alive ping; until then it must not
/// trade that token for a new one.
#[tokio::test]
async fn a_socket_whose_token_ran_out_cannot_refresh_it() {
    let app = spawn_app().await;
    let (_, user_id) = app.register("ivan").await;
    // The default ping interval (20 s) leaves the socket open well after the token's two seconds.
    let token = token_accepted_for(user_id, "ivan", 2);
    let (mut client, _) = WsClient::authenticated(&app, &token).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let refused = client.call("refreshToken", json!({})).await;
    assert_eq!(error_code(&refused), "unauthorized", "{refused}");
    client.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn users_and_self_can_be_fetched_over_the_socket() {
    let app = spawn_app().await;
    let (token, gina_id) = app.register("gina").await;
    app.register("gus").await;
    app.register("hank").await;
    let (mut client, _) = WsClient::authenticated(&app, &token).await;

    let users = client.call("getUsers", json!({ "prefix": "g" })).await;
    let me = client.call("getSelf", json!({})).await;

    assert_eq!(users["result"]["op"], "getUsers", "{users}");
    let names: Vec<&str> =
        users["result"]["data"]["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names, ["gina", "gus"]);
    assert_eq!(me["result"]["op"], "getSelf");
    assert_eq!(me["result"]["data"]["id"], gina_id);
    let too_many = client.call("getUsers", json!({ "limit": 1000 })).await;
    assert_eq!(error_code(&too_many), "validation", "the service's own errors come through typed");
    client.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn message_operations_without_a_message_service_fail_fast_as_unavailable() {
    let app = spawn_app().await;
    let (token, _) = app.register("ivy").await;
    let (mut client, _) = WsClient::authenticated(&app, &token).await;
    let requests = [
        ("sendMessage", json!({ "conversationId": 1, "clientMessageId": "c1", "body": "hi" })),
        ("getMessages", json!({ "conversationId": 1 })),
        ("createGroup", json!({ "title": "t", "memberIds": [] })),
        ("listConversations", json!({})),
        ("sync", json!({ "heads": [] })),
    ];

    for (kind, fields) in requests {
        let started = Instant::now();
        let frame = client.call(kind, fields).await;
        assert_eq!(error_code(&frame), "unavailable", "{kind}: {frame}");
        assert!(frame["id"].as_str().unwrap().starts_with("req-"));
        assert!(started.elapsed() < Duration::from_secs(2), "{kind} took {:?}", started.elapsed());
    }
    let too_long = client
        .call("sendMessage", json!({ "conversationId": 1, "clientMessageId": "c2", "body": "x".repeat(4_001) }))
        .await;
    assert_eq!(error_code(&too_long), "validation", "bounds are checked before the broker");

    // The REST twins answer the same way, and refuse malformed paths with JSON.
    let rest = app
        .http
        .post(app.url("/api/conversations/1/messages"))
        .bearer_auth(&token)
        .json(&json!({ "clientMessageId": "c3", "body": "hi" }))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 503);
    let bad_path = app.get_with_token("/api/conversations/abc/messages", &token).await;
    assert_eq!(bad_path.status(), 400);
    assert_eq!(support::error_code(bad_path).await, "bad_request");
    let anonymous = app.http.get(app.url("/api/conversations")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    client.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_idle_timeout_and_a_responsive_one_is_not() {
    let mut options = Options::default();
    options.gateway.ws.ping_interval = Duration::from_millis(100);
    options.gateway.ws.idle_timeout = Duration::from_millis(400);
    let app = spawn_app_with(options).await;
    let (token, _) = app.register("jane").await;
    let (mut responsive, ready) = WsClient::authenticated(&app, &token).await;
    let (mut silent, _) = WsClient::authenticated(&app, &token).await;
    assert_eq!(ready["pingIntervalMs"], 100);

    // Reading answers the gateway's pings; not reading leaves them unanswered.
    responsive.expect_no_frame(Duration::from_millis(1_000)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert_eq!(silent.expect_close().await, (1001, "idle timeout".to_owned()));
    assert_eq!(responsive.call("getSelf", json!({})).await["type"], "reply");
    responsive.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn shutting_down_closes_every_socket_with_1001() {
    let mut app = spawn_app().await;
    let (token, _) = app.register("kate").await;
    let (mut first, _) = WsClient::authenticated(&app, &token).await;
    let (mut second, _) = WsClient::authenticated(&app, &token).await;

    app.gateway_stop.cancel();

    assert_eq!(first.expect_close().await, (1001, "server shutting down".to_owned()));
    assert_eq!(second.expect_close().await.0, 1001);
    let gateway = app.gateway.take().unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(5), gateway).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "the gateway stops cleanly and promptly: {stopped:?}");
    app.shutdown().await;
}

/// A client that announced a body and never sent it does not hold the gateway's shutdown forever.
#[tokio::test]
async fn shutting_down_does_not_wait_forever_for_a_stalled_http_request() {
    use tokio::io::AsyncWriteExt;
    let mut app = spawn_app().await;
    let mut stalled = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://")).await.unwrap();
    let head =
        "POST /api/login HTTP/1.1\r\nHost: warren\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    stalled.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    app.gateway_stop.cancel();

    let gateway = app.gateway.take().unwrap();
    let stopped = tokio::time::timeout(api::startup::HTTP_DRAIN_WAIT + Duration::from_secs(5), gateway).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "the gateway stops despite the stalled request: {stopped:?}");
    drop(stalled);
    app.shutdown().await;
}

/// A request a service is already working on when the gateway shuts down is answered before the socket closes:
/// the client must not be left guessing whether it happened. A stand-in message-service answers
/// `getConversation` after half a second.
#[tokio::test]
async fn shutting_down_answers_the_requests_in_flight_before_closing() {
    use common::{
        amqp::{Broker, RpcClient, RpcServer},
        protocol::{ApiError, messages::GetConversation},
    };
    let app = spawn_app().await;
    let (token, _) = app.register("kurt").await;
    let broker = Broker::start(&app.amqp, "stand-in message-service".into());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = RpcServer::new(broker.clone(), "stand-in").handle::<GetConversation, _, _>(|request, _| async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Err(ApiError::not_found(format!("no conversation {}", request.request.conversation_id)))
    });
    let serving = tokio::spawn(server.run(stop.clone()));
    let probe = RpcClient::start(broker.clone(), "probe", &uuid::Uuid::new_v4().simple().to_string());
    common::testing::until_served(&probe, &["getConversation"], Duration::from_secs(10)).await;
    let (mut client, _) = WsClient::authenticated(&app, &token).await;
    client.send_json(&json!({ "type": "getConversation", "id": "g1", "conversationId": 7 })).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    app.gateway_stop.cancel();

    let answer = client.next_frame().await;
    assert_eq!((answer["type"].as_str(), answer["id"].as_str()), (Some("error"), Some("g1")), "{answer}");
    assert_eq!(error_code(&answer), "not_found");
    assert_eq!(client.expect_close().await, (1001, "server shutting down".to_owned()));
    stop.cancel();
    serving.await.unwrap();
    broker.close().await;
    app.shutdown().await;
}

/// Messages published by [`stall_writes_to`]: ~6 MB, more than a socket's buffers hold, so the gateway's writes
/// to a client that does not read stall, with the rest still queued at the hub (under its 8 MiB bound).
const STALLING_MESSAGES: i64 = 1_500;

/// A gateway whose sockets may queue more than [`STALLING_MESSAGES`] frames without counting as too slow, and
/// whose requests in flight wait for their answers however slow a busy machine makes the test.
fn roomy_queues() -> Options {
    let mut options = Options::default();
    options.gateway.ws.outbound_queue = 10_000;
    options.gateway.rpc_timeout = Duration::from_secs(60);
    options
}

/// A socket of another user, to see when the hub has routed what came before.
struct Witness {
    client: WsClient,
    user_id: i64,
}

impl Witness {
    async fn connect(app: &support::TestApp) -> Witness {
        let (token, user_id) = app.register("witness").await;
        let (client, _) = WsClient::authenticated(app, &token).await;
        Witness { client, user_id }
    }
}

/// Publishes [`STALLING_MESSAGES`] messages of 4,000 characters for `user_id`, then one for the witness: once the
/// witness has it, every earlier batch has reached the hub, so the gateway is writing to `user_id`'s socket with
/// the rest queued, and (if its client is not reading) the write has stalled.
async fn stall_writes_to(app: &support::TestApp, user_id: i64, witness: &mut Witness) {
    let (broker, publisher) = common::testing::connected_publisher(&app.amqp).await;
    let body = "x".repeat(4_000);
    for first in (1..=STALLING_MESSAGES).step_by(25) {
        let events = (first..first + 25).map(|seq| message_event(seq, &body, vec![user_id])).collect();
        publisher.publish(&EventBatch { events }).await.unwrap();
    }
    let after = message_event(1, "after them", vec![witness.user_id]);
    publisher.publish(&EventBatch { events: vec![after] }).await.unwrap();
    assert_eq!(witness.client.next_frame().await["message"]["body"], "after them");
    broker.close().await;
}

/// The `seq`s of the `message` frames among `frames`, in the order they came.
fn message_seqs(frames: &[Value]) -> Vec<i64> {
    frames
        .iter()
        .filter(|frame| frame["type"] == "message")
        .filter_map(|frame| frame["message"]["seq"].as_i64())
        .collect()
}

/// Asserts that `frames` hold the messages [`stall_writes_to`] published, each once, in order.
fn assert_every_stalling_message(frames: &[Value]) {
    let seqs = message_seqs(frames);
    assert!(
        seqs.iter().copied().eq(1..=STALLING_MESSAGES),
        "expected messages 1 to {STALLING_MESSAGES} in order; got {} messages, up to {:?}",
        seqs.len(),
        seqs.last()
    );
}

/// A shutdown that finds a socket's write stalled (its client is not reading) lets the write finish and still
/// answers the requests in flight, within its time: giving way to the shutdown mid-write dropped the frames being
/// written and ended the socket without the answers.
#[tokio::test]
async fn shutting_down_during_a_stalled_write_finishes_it_and_still_answers_the_requests_in_flight() {
    let app = spawn_app_with(roomy_queues()).await;
    let (token, user_id) = app.register("stalled").await;
    let mut witness = Witness::connect(&app).await;
    let pages = HeldPages::start(&app).await;
    let (mut client, _) = WsClient::authenticated_with_small_window(&app, &token).await;
    client.send_json(&get_messages("g1")).await;
    pages.until_arrived(1).await;
    stall_writes_to(&app, user_id, &mut witness).await;

    app.gateway_stop.cancel();
    // The shutdown reaches the socket while its write is stalled; then the service answers, and the client reads.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pages.release.add_permits(1);
    let (frames, ending) = client.frames_until_end(Duration::from_secs(10)).await;

    assert_eq!(ending, Ending::Closed { code: 1001, reason: "server shutting down".to_owned() });
    assert_every_stalling_message(&frames);
    let answer = frames.iter().find(|frame| frame["id"] == "g1").expect("the request in flight is answered");
    assert_eq!(answer["type"], "reply", "{answer}");
    pages.stop().await;
    app.shutdown().await;
}

/// A socket with nothing in flight still gets, before its 1001, every frame queued for it when the shutdown came
/// (the answer to a send can be among them); it used to be closed with them unwritten.
#[tokio::test]
async fn shutting_down_writes_every_frame_already_queued_for_a_socket() {
    let app = spawn_app_with(roomy_queues()).await;
    let (token, user_id) = app.register("backlogged").await;
    let mut witness = Witness::connect(&app).await;
    let (mut client, _) = WsClient::authenticated_with_small_window(&app, &token).await;
    stall_writes_to(&app, user_id, &mut witness).await;

    app.gateway_stop.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (frames, ending) = client.frames_until_end(Duration::from_secs(10)).await;

    assert_eq!(ending, Ending::Closed { code: 1001, reason: "server shutting down".to_owned() });
    assert_every_stalling_message(&frames);
    app.shutdown().await;
}

#[tokio::test]
async fn requests_over_the_in_flight_limit_are_refused_as_rate_limited() {
    let mut options = Options::default();
    options.gateway.ws.max_in_flight = 1;
    let app = spawn_app_with(options).await;
    let (token, _) = app.register("liam").await;
    let (mut client, _) = WsClient::authenticated(&app, &token).await;

    for i in 0..20 {
        client.send_json(&json!({ "type": "getUsers", "id": format!("q{i}") })).await;
    }
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(client.next_frame().await);
    }

    let limited: Vec<&Value> = answers.iter().filter(|f| f["type"] == "error").collect();
    assert!(!limited.is_empty(), "a burst over the limit is refused");
    for frame in &limited {
        assert_eq!(error_code(frame), "rate_limited");
        assert!(frame["id"].as_str().unwrap().starts_with('q'));
    }
    assert!(answers.iter().any(|f| f["type"] == "reply"), "the admitted one is answered");
    assert_eq!(client.call("getSelf", json!({})).await["type"], "reply", "the socket is still usable");
    client.close().await;
    app.shutdown().await;
}

/// A stand-in message-service that counts the `getMessages` it is working on and answers each (an empty page)
/// only when the test lets it.
struct HeldPages {
    broker: common::amqp::Broker,
    arrived: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    release: std::sync::Arc<tokio::sync::Semaphore>,
    stop: tokio_util::sync::CancellationToken,
    serving: tokio::task::JoinHandle<()>,
}

impl HeldPages {
    async fn start(app: &support::TestApp) -> HeldPages {
        use std::sync::{Arc, atomic::Ordering};

        use common::{
            amqp::{Broker, RpcClient, RpcServer},
            protocol::messages::{GetMessages, MessagesPage},
        };
        let broker = Broker::start(&app.amqp, "stand-in message-service".into());
        let stop = tokio_util::sync::CancellationToken::new();
        let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let server = RpcServer::new(broker.clone(), "stand-in").handle::<GetMessages, _, _>({
            let (arrived, release) = (arrived.clone(), release.clone());
            move |_, _| {
                let (arrived, release) = (arrived.clone(), release.clone());
                async move {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    release.acquire().await.expect("released").forget();
                    Ok(MessagesPage { messages: Vec::new(), has_more_before: false, has_more_after: false })
                }
            }
        });
        let serving = tokio::spawn(server.run(stop.clone()));
        let probe = RpcClient::start(broker.clone(), "probe", &uuid::Uuid::new_v4().simple().to_string());
        common::testing::until_served(&probe, &["getMessages"], Duration::from_secs(10)).await;
        HeldPages { broker, arrived, release, stop, serving }
    }

    /// A gateway with the given RPC timeout, the stand-in, and an authenticated socket of a new user.
    async fn with_socket(rpc_timeout: Duration, username: &str) -> (support::TestApp, HeldPages, WsClient) {
        let mut options = Options::default();
        options.gateway.rpc_timeout = rpc_timeout;
        let app = spawn_app_with(options).await;
        let (token, _) = app.register(username).await;
        let pages = HeldPages::start(&app).await;
        let (client, _) = WsClient::authenticated(&app, &token).await;
        (app, pages, client)
    }

    fn arrivals(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn until_arrived(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.arrivals() < count {
            assert!(Instant::now() < deadline, "only {} of {count} requests reached the service", self.arrivals());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) {
        self.release.add_permits(1_000);
        self.stop.cancel();
        self.serving.await.unwrap();
        self.broker.close().await;
    }
}

fn get_messages(id: &str) -> Value {
    json!({ "type": "getMessages", "id": id, "conversationId": 7 })
}

/// Requests whose answers can run to megabytes run a few at a time per socket, so a client that asks for many and
/// reads slowly cannot make the gateway hold them all; the rest wait their turn and are answered, and other
/// requests are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_large_answers_run_a_few_at_a_time_per_socket_and_all_are_answered() {
    use api::ws::connection::HEAVY_IN_FLIGHT;
    // Nothing here waits for a timeout; a slow machine must not make one.
    let (app, pages, mut client) = HeldPages::with_socket(Duration::from_secs(60), "maya").await;

    let asked = 3 * HEAVY_IN_FLIGHT;
    for i in 0..asked {
        client.send_json(&get_messages(&format!("m{i}"))).await;
    }
    pages.until_arrived(HEAVY_IN_FLIGHT).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(pages.arrivals(), HEAVY_IN_FLIGHT, "no more than that many reach the service at once");
    // Other requests go past the queued ones.
    assert_eq!(client.call("getSelf", json!({})).await["type"], "reply");

    pages.release.add_permits(1);
    let first = client.next_frame().await;
    assert_eq!(first["type"], "reply", "{first}");
    pages.until_arrived(HEAVY_IN_FLIGHT + 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(pages.arrivals(), HEAVY_IN_FLIGHT + 1, "one answered, one more let through");

    pages.release.add_permits(asked);
    let mut answered = vec![first["id"].as_str().unwrap().to_owned()];
    while answered.len() < asked {
        let frame = client.next_frame().await;
        assert_eq!(frame["type"], "reply", "{frame}");
        answered.push(frame["id"].as_str().unwrap().to_owned());
    }
    answered.sort_by_key(|id| id[1..].parse::<usize>().unwrap());
    assert_eq!(answered, (0..asked).map(|i| format!("m{i}")).collect::<Vec<_>>(), "every request answered once");
    assert_eq!(pages.arrivals(), asked);
    client.close().await;
    pages.stop().await;
    app.shutdown().await;
}

/// A request that waits for its turn is answered `timeout` within the RPC timeout of its arrival, as any other
/// request, not a full timeout after its turn came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_its_turn_times_out_counting_from_its_arrival() {
    use api::ws::connection::HEAVY_IN_FLIGHT;
    let (app, pages, mut client) = HeldPages::with_socket(Duration::from_secs(2), "nils").await;
    for i in 0..HEAVY_IN_FLIGHT {
        client.send_json(&get_messages(&format!("held{i}"))).await;
    }
    pages.until_arrived(HEAVY_IN_FLIGHT).await;

    let asked = Instant::now();
    for i in 0..HEAVY_IN_FLIGHT {
        client.send_json(&get_messages(&format!("queued{i}"))).await;
    }
    let mut queued_answered = 0;
    while queued_answered < HEAVY_IN_FLIGHT {
        let frame = client.next_frame().await;
        assert_eq!(error_code(&frame), "timeout", "{frame}");
        if frame["id"].as_str().unwrap().starts_with("queued") {
            queued_answered += 1;
        }
    }

    // Two seconds from their arrival; counted from their turn they would have taken four.
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(3), "the queued requests were answered after {took:?}");
    client.close().await;
    pages.stop().await;
    app.shutdown().await;
}

/// When the gateway shuts down, the requests a service is working on are answered by it, and those still waiting
/// for their turn are answered `unavailable` at once, never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_answers_requests_still_waiting_for_their_turn_unavailable_without_sending_them() {
    use api::ws::connection::HEAVY_IN_FLIGHT;
    let (app, pages, mut client) = HeldPages::with_socket(Duration::from_secs(60), "olga").await;
    for i in 0..HEAVY_IN_FLIGHT + 2 {
        client.send_json(&get_messages(&format!("m{i}"))).await;
    }
    pages.until_arrived(HEAVY_IN_FLIGHT).await;

    app.gateway_stop.cancel();

    // The service still holds every answer: these can only be the two that never had a turn.
    for _ in 0..2 {
        let frame = client.next_frame().await;
        assert_eq!(error_code(&frame), "unavailable", "{frame}");
        let id: usize = frame["id"].as_str().unwrap()[1..].parse().unwrap();
        assert!(id >= HEAVY_IN_FLIGHT, "{frame}");
    }
    pages.release.add_permits(HEAVY_IN_FLIGHT);
    for _ in 0..HEAVY_IN_FLIGHT {
        let frame = client.next_frame().await;
        assert_eq!(frame["type"], "reply", "the requests a service took are answered: {frame}");
    }
    assert_eq!(client.expect_close().await, (1001, "server shutting down".to_owned()));
    assert_eq!(pages.arrivals(), HEAVY_IN_FLIGHT, "the waiting ones were never sent");
    pages.stop().await;
    app.shutdown().await;
}

#[tokio::test]
async fn events_reach_every_socket_of_their_recipients_and_no_one_else() {
    let app = spawn_app().await;
    let (alice_token, alice) = app.register("alice").await;
    let (bob_token, bob) = app.register("bob").await;
    let (mallory_token, _) = app.register("mallory").await;
    let (mut alice_laptop, _) = WsClient::authenticated(&app, &alice_token).await;
    let (mut alice_phone, _) = WsClient::authenticated(&app, &alice_token).await;
    let (mut bob_socket, _) = WsClient::authenticated(&app, &bob_token).await;
    let (mut mallory, _) = WsClient::authenticated(&app, &mallory_token).await;
    let (broker, publisher) = common::testing::connected_publisher(&app.amqp).await;

    let read = Event::Read { user_id: alice, position: ReadPosition { conversation_id: 7, read_seq: 1 } };
    publisher
        .publish(&EventBatch { events: vec![message_event(1, "hello bob", vec![alice, bob]), read] })
        .await
        .unwrap();

    for socket in [&mut alice_laptop, &mut alice_phone, &mut bob_socket] {
        let frame = socket.next_frame().await;
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(frame["message"]["body"], "hello bob");
    }
    for socket in [&mut alice_laptop, &mut alice_phone] {
        let frame = socket.next_frame().await;
        assert_eq!((frame["type"].as_str(), frame["position"]["readSeq"].as_i64()), (Some("read"), Some(1)));
    }
    bob_socket.expect_no_frame(Duration::from_millis(300)).await;
    mallory.expect_no_frame(Duration::from_millis(300)).await;
    broker.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn after_the_gateway_loses_its_broker_connection_every_socket_is_told_to_resync() {
    let options = Options::default();
    let connection_name = format!("api {}", options.gateway.instance_id);
    let app = spawn_app_with(options).await;
    let (token, _) = app.register("nina").await;
    let (mut client, _) = WsClient::authenticated(&app, &token).await;

    common::testing::close_connection_named(&connection_name);

    let frame = tokio::time::timeout(Duration::from_secs(15), client.next_frame()).await.expect("a resync in time");
    assert_eq!(frame["type"], "resync", "{frame}");
    app.wait_until_ready().await;
    assert_eq!(client.call("getSelf", json!({})).await["type"], "reply", "the socket survived the broker hiccup");
    client.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_too_slow_and_others_are_unaffected() {
    let mut options = Options::default();
    options.gateway.ws.outbound_queue = 64;
    let app = spawn_app_with(options).await;
    let (slow_token, slow_id) = app.register("slowpoke").await;
    let (fast_token, fast_id) = app.register("speedy").await;
    let (mut slow, _) = WsClient::authenticated(&app, &slow_token).await;
    let (mut fast, _) = WsClient::authenticated(&app, &fast_token).await;
    let (broker, publisher) = common::testing::connected_publisher(&app.amqp).await;

    // ~24 MB for the slow reader: far more than the socket buffers hold, so its queue fills.
    let body = "x".repeat(4_000);
    for batch in 0..60 {
        let events = (0..100).map(|i| message_event(batch * 100 + i + 1, &body, vec![slow_id])).collect();
        publisher.publish(&EventBatch { events }).await.unwrap();
    }
    publisher.publish(&EventBatch { events: vec![message_event(1, "still here?", vec![fast_id])] }).await.unwrap();

    let frame = fast.next_frame().await;
    assert_eq!(frame["message"]["body"], "still here?");
    match slow.ending_within(Duration::from_secs(20)).await {
        Ending::Closed { code, reason } => assert_eq!((code, reason.as_str()), (4008, "too slow, reconnect and sync")),
        Ending::Dropped => panic!("the slow socket was dropped without its close frame"),
    }
    fast.expect_no_frame(Duration::from_millis(200)).await;
    broker.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_socket_whose_user_cannot_be_loaded_gets_an_error_and_a_retryable_close() {
    let mut app = spawn_app().await;
    let (token, _) = app.register("olga").await;
    app.stop_user_service(0).await;
    // The RPC client trusts a consumer count for a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let mut client = WsClient::connect(&app).await;
    client.send_json(&json!({ "type": "auth", "token": token })).await;

    let frame = client.next_frame().await;
    assert_eq!(error_code(&frame), "unavailable", "{frame}");
    assert_eq!(client.expect_close().await.0, 1013);
    app.shutdown().await;
}
