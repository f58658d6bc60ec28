//! The message operations' wiring in the gateway, REST and WebSocket, against a stand-in message-service that
//! echoes what it was asked: each endpoint and frame must reach its operation, on behalf of the token's user, with
//! every path, query and body field where the service expects it. (The real message-service's behaviour is
//! tested in its own crate and in the end-to-end tests.)

mod support;

use common::protocol::RpcReply;
use common::{
    amqp::{Broker, RpcServer},
    protocol::messages::{
        AddMembers, AsUser, Conversation, ConversationEntry, ConversationKind, ConversationsPage, CreateGroup,
        GetConversation, GetMessages, LeaveConversation, ListConversations, MarkRead, Message, MessagesPage,
        ReadPosition, RemoveMember, SendBatchResult, SendMessage, SendMessageRequest, SendMessages, Sync, SyncResponse,
    },
};
use serde_json::{Value, json};
use support::{Options, TestApp, spawn_app_with, ws::WsClient};
use tokio_util::sync::CancellationToken;

fn conversation(id: i64, members: Vec<i64>, title: Option<String>) -> Conversation {
    let kind = if title.is_some() { ConversationKind::Group } else { ConversationKind::Direct };
    Conversation { id, kind, title, members, last_seq: 0, last_activity_at: 0, created_at: 0 }
}

/// The stand-in's answer to one send: a reflection of it.
fn reflect(r: AsUser<SendMessageRequest>) -> Message {
    Message {
        conversation_id: r.request.conversation_id.unwrap_or(-r.request.to_user_id.unwrap_or(0)),
        seq: 1,
        sender_id: r.user_id,
        client_message_id: r.request.client_message_id,
        body: r.request.body,
        sent_at: 0,
    }
}

/// A message-service that answers every operation with a reflection of its request.
fn stand_in(server: RpcServer) -> RpcServer {
    server
        .handle::<SendMessage, _, _>(|r, _| async move { Ok(reflect(r)) })
        .handle::<SendMessages, _, _>(|batch, _| async move {
            Ok(SendBatchResult { results: batch.sends.into_iter().map(|r| RpcReply::Ok(reflect(r))).collect() })
        })
        .handle::<GetMessages, _, _>(|r, _| async move {
            let q = r.request;
            Ok(MessagesPage {
                messages: vec![Message {
                    conversation_id: q.conversation_id,
                    seq: 1,
                    sender_id: r.user_id,
                    client_message_id: "echo".into(),
                    body: format!("{:?} {:?} {:?} {:?}", q.before, q.after, q.around, q.limit),
                    sent_at: 0,
                }],
                has_more_before: false,
                has_more_after: false,
            })
        })
        .handle::<CreateGroup, _, _>(|r, _| async move {
            let mut members = r.request.member_ids;
            members.insert(0, r.user_id);
            Ok(conversation(10, members, Some(r.request.title)))
        })
        .handle::<AddMembers, _, _>(|r, _| async move {
            let mut members = r.request.user_ids;
            members.insert(0, r.user_id);
            Ok(conversation(r.request.conversation_id, members, Some("g".into())))
        })
        .handle::<RemoveMember, _, _>(|r, _| async move {
            Ok(conversation(r.request.conversation_id, vec![r.user_id, r.request.user_id], Some("g".into())))
        })
        .handle::<LeaveConversation, _, _>(|r, _| async move {
            Ok(conversation(r.request.conversation_id, vec![r.user_id], Some("g".into())))
        })
        .handle::<GetConversation, _, _>(|r, _| async move {
            Ok(ConversationEntry {
                conversation: conversation(r.request.conversation_id, vec![r.user_id], None),
                read_seq: 0,
                last_message: None,
            })
        })
        .handle::<ListConversations, _, _>(|r, _| async move {
            Ok(ConversationsPage {
                conversations: vec![],
                next: Some(format!("{} {:?} {:?}", r.user_id, r.request.before, r.request.limit)),
            })
        })
        .handle::<MarkRead, _, _>(|r, _| async move {
            Ok(ReadPosition { conversation_id: r.request.conversation_id, read_seq: r.request.seq + r.user_id * 1000 })
        })
        .handle::<Sync, _, _>(|r, _| async move {
            Ok(SyncResponse {
                conversations: vec![],
                messages: vec![],
                truncated: r.request.heads.iter().map(|h| h.conversation_id * 1000 + h.seq).collect(),
                removed: vec![r.user_id],
            })
        })
}

/// The gateway (requiring a message-service to be ready), a user-service and the stand-in.
async fn spawn() -> (TestApp, CancellationToken, tokio::task::JoinHandle<()>) {
    let mut options = Options::default();
    options.gateway.require_message_service = true;
    let stop = CancellationToken::new();
    let broker = Broker::start(&options.gateway.amqp, "stand-in message-service".into());
    let server = stand_in(RpcServer::new(broker.clone(), "stand-in"));
    let handle = tokio::spawn({
        let stop = stop.clone();
        async move {
            server.run(stop).await;
            broker.close().await;
        }
    });
    // Ready only once the stand-in consumes every message operation.
    let app = spawn_app_with(options).await;
    (app, stop, handle)
}

async fn finish(app: TestApp, stop: CancellationToken, stand_in: tokio::task::JoinHandle<()>) {
    stop.cancel();
    let _ = stand_in.await;
    app.shutdown().await;
}

#[tokio::test]
async fn every_rest_twin_calls_its_operation_as_the_token_user() {
    let (app, stop, stand_in) = spawn().await;
    let (token, me) = app.register("rita").await;
    let ready: Value = app.http.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["services"][1]["service"], "message-service", "{ready}");
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = app.http.request(method, app.url(path)).bearer_auth(&token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    use reqwest::Method;

    let (status, sent) =
        send(Method::POST, "/api/conversations/5/messages", Some(json!({ "clientMessageId": "c1", "body": "hi" })))
            .await;
    assert_eq!(
        (status, &sent["conversationId"], &sent["senderId"], &sent["body"]),
        (201, &json!(5), &json!(me), &json!("hi"))
    );
    let (status, direct) =
        send(Method::POST, "/api/messages", Some(json!({ "toUserId": 9, "clientMessageId": "c2", "body": "yo" })))
            .await;
    assert_eq!((status, &direct["conversationId"]), (201, &json!(-9)));
    let (_, page) = send(Method::GET, "/api/conversations/5/messages?before=40&limit=20", None).await;
    assert_eq!(page["messages"][0]["body"], "Some(40) None None Some(20)");
    let (status, group) =
        send(Method::POST, "/api/conversations", Some(json!({ "title": "g", "memberIds": [2] }))).await;
    assert_eq!((status, &group["members"]), (201, &json!([me, 2])));
    let (_, added) = send(Method::POST, "/api/conversations/10/members", Some(json!({ "userIds": [3] }))).await;
    assert_eq!((&added["id"], &added["members"]), (&json!(10), &json!([me, 3])));
    let (_, removed) = send(Method::DELETE, "/api/conversations/10/members/3", None).await;
    assert_eq!(removed["members"], json!([me, 3]));
    let (_, left) = send(Method::POST, "/api/conversations/10/leave", None).await;
    assert_eq!((&left["id"], &left["members"]), (&json!(10), &json!([me])));
    let (_, entry) = send(Method::GET, "/api/conversations/10", None).await;
    assert_eq!(entry["conversation"]["id"], 10);
    let (_, list) = send(Method::GET, "/api/conversations?before=abc&limit=5", None).await;
    assert_eq!(list["next"], format!("{me} Some(\"abc\") Some(5)"));
    let (_, read) = send(Method::POST, "/api/conversations/10/read", Some(json!({ "seq": 4 }))).await;
    assert_eq!(read, json!({ "conversationId": 10, "readSeq": me * 1000 + 4 }));
    let (_, synced) =
        send(Method::POST, "/api/sync", Some(json!({ "heads": [{ "conversationId": 10, "seq": 4 }] }))).await;
    assert_eq!(synced["truncated"], json!([10_004]));
    assert_eq!(synced["removed"], json!([me]));

    let (status, _) = send(Method::DELETE, "/api/conversations/10/members/bob", None).await;
    assert_eq!(status, 400, "a non-numeric path parameter is a bad request");
    // A request that takes no body refuses one rather than ignore it (here: a client meaning to remove user 3
    // would have left); `{}`, which some clients send with every POST, is no body.
    let (status, body) = send(Method::POST, "/api/conversations/10/leave", Some(json!({ "userId": 3 }))).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("bad_request")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("userId"), "{body}");
    let (status, _) = send(Method::DELETE, "/api/conversations/10/members/3", Some(json!([1]))).await;
    assert_eq!(status, 400);
    let (status, left) = send(Method::POST, "/api/conversations/10/leave", Some(json!({}))).await;
    assert_eq!((status, &left["id"]), (200, &json!(10)));
    let huge = json!({ "pad": "x".repeat(api::startup::MAX_BODY_BYTES) });
    let (status, body) = send(Method::POST, "/api/conversations/10/leave", Some(huge)).await;
    assert_eq!((status, &body["error"]["code"]), (413, &json!("payload_too_large")), "{body}");
    let (status, body) =
        send(Method::POST, "/api/messages", Some(json!({ "conversationId": 1, "clientMessageId": "c", "body": "b" })))
            .await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("bad_request")), "unknown fields are refused");
    let heads: Vec<Value> = (0..common::protocol::messages::MAX_SYNC_HEADS as i64)
        .map(|i| json!({ "conversationId": 1_000_000 + i, "seq": 1_000_000 }))
        .collect();
    let (status, _) = send(Method::POST, "/api/sync", Some(json!({ "heads": heads }))).await;
    assert_eq!(status, 200, "a sync with the most heads allowed fits the body limit");
    finish(app, stop, stand_in).await;
}

#[tokio::test]
async fn every_message_frame_calls_its_operation_as_the_socket_user() {
    let (app, stop, stand_in) = spawn().await;
    let (token, me) = app.register("sam").await;
    let (mut client, _) = WsClient::authenticated(&app, &token).await;
    let cases = [
        ("sendMessage", json!({ "toUserId": 4, "clientMessageId": "c1", "body": "hi" }), "/conversationId", json!(-4)),
        ("sendMessage", json!({ "conversationId": 5, "clientMessageId": "c2", "body": "hi" }), "/senderId", json!(me)),
        (
            "getMessages",
            json!({ "conversationId": 5, "around": 7 }),
            "/messages/0/body",
            json!("None None Some(7) None"),
        ),
        ("createGroup", json!({ "title": "g", "memberIds": [2] }), "/members", json!([me, 2])),
        ("addMembers", json!({ "conversationId": 10, "userIds": [3] }), "/members", json!([me, 3])),
        ("removeMember", json!({ "conversationId": 10, "userId": 3 }), "/members", json!([me, 3])),
        ("leaveConversation", json!({ "conversationId": 10 }), "/members", json!([me])),
        ("getConversation", json!({ "conversationId": 10 }), "/conversation/id", json!(10)),
        ("listConversations", json!({ "limit": 3 }), "/next", json!(format!("{me} None Some(3)"))),
        ("markRead", json!({ "conversationId": 10, "seq": 2 }), "/readSeq", json!(me * 1000 + 2)),
        ("sync", json!({ "heads": [{ "conversationId": 3, "seq": 1 }] }), "/truncated", json!([3_001])),
    ];

    for (kind, fields, pointer, expected) in cases {
        let frame = client.call(kind, fields).await;
        assert_eq!(frame["type"], "reply", "{kind}: {frame}");
        assert_eq!(frame["result"]["op"], kind);
        assert_eq!(frame["result"]["data"].pointer(pointer), Some(&expected), "{kind}: {frame}");
    }
    client.close().await;
    finish(app, stop, stand_in).await;
}
