//! Guarantees 1–5 end to end, through real processes: two gateways, two message-services and a user-service
//! sharing the real broker and database (the docker-compose topology, as plain processes).

mod support;

use std::{collections::HashSet, time::Duration};

use serde_json::{Value, json};
use support::{
    chat::{Chat, Sent},
    cluster::Cluster,
    ws::{WsClient, error_code},
};

const QUIET: Duration = Duration::from_millis(700);

async fn group(chat: &mut Chat, title: &str, members: &[i64]) -> i64 {
    let reply = chat.request(json!({ "type": "createGroup", "title": title, "memberIds": members })).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    reply["result"]["data"]["id"].as_i64().unwrap()
}

fn items(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("{prefix}-{i}"), format!("{prefix} says {i}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_every_device_of_every_member_across_gateways_and_no_one_else() {
    let cluster = Cluster::start(2, 1, 2).await;
    let (ann_token, ann) = cluster.register(0, "ann").await;
    let (ben_token, ben) = cluster.register(1, "ben").await;
    let (cat_token, cat) = cluster.register(0, "cat").await;
    let mut ann_laptop = Chat::connect(cluster.gateway(0), &ann_token, ann).await;
    let mut ann_phone = Chat::connect(cluster.gateway(1), &ann_token, ann).await;
    let mut ben_phone = Chat::connect(cluster.gateway(1), &ben_token, ben).await;
    let mut cat_laptop = Chat::connect(cluster.gateway(0), &cat_token, cat).await;

    let reply = ann_laptop
        .request(json!({ "type": "sendMessage", "toUserId": ben, "clientMessageId": "hello-1", "body": "hi Ben" }))
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    let sent = reply["result"]["data"].clone();
    let conversation = sent["conversationId"].as_i64().unwrap();
    ben_phone.drain(QUIET).await;
    ann_phone.drain(QUIET).await;
    ann_laptop.drain(QUIET).await;
    cat_laptop.drain(QUIET).await;

    assert_eq!(ben_phone.view.get(&(conversation, 1)), Some(&sent), "the recipient on the other gateway");
    assert_eq!(ann_phone.view.get(&(conversation, 1)), Some(&sent), "the sender's other device");
    assert!(cat_laptop.live.is_empty() && cat_laptop.view.is_empty(), "a non-member saw {:?}", cat_laptop.other);
    assert!(
        cat_laptop.other.iter().all(|f| f["type"] != "conversation"),
        "a non-member was told about the conversation: {:?}",
        cat_laptop.other
    );
    // A conversation she is not in, and someone else's client id, get her nothing.
    let intrude = cat_laptop.request(json!({ "type": "getMessages", "conversationId": conversation })).await;
    assert_eq!(error_code(&intrude), "forbidden");
    let post = cat_laptop
        .request(json!({ "type": "sendMessage", "conversationId": conversation, "clientMessageId": "x", "body": "hi" }))
        .await;
    assert_eq!(error_code(&post), "forbidden");
    let borrowed = cat_laptop
        .request(json!({ "type": "sendMessage", "toUserId": ann, "clientMessageId": "hello-1", "body": "mine" }))
        .await;
    assert_eq!(borrowed["type"], "reply", "{borrowed}");
    assert_ne!(borrowed["result"]["data"]["conversationId"], json!(conversation), "not Ann's message");
    assert_eq!(cluster.stored(conversation).await.len(), 1);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sockets_pipelined_sends_are_stored_in_the_order_sent_across_message_service_replicas() {
    let cluster = Cluster::start(1, 1, 2).await;
    let (ann_token, ann) = cluster.register(0, "ann").await;
    let (_, ben) = cluster.register(0, "ben").await;
    let mut ann_laptop = Chat::connect(cluster.gateway(0), &ann_token, ann).await;
    let conversation = group(&mut ann_laptop, "ordered", &[ben]).await;

    // Many sends in flight at once, so they travel in many batches that two replicas compete for.
    let sent = items("o", 400);
    let results = ann_laptop.send_many(conversation, &sent, 32).await;
    let refused: Vec<&Sent> = results.iter().filter(|r| !matches!(r, Sent::Acked(_))).collect();
    assert!(refused.is_empty(), "every send acknowledged: {:?}", refused.first());

    let stored: Vec<String> = cluster.stored(conversation).await.into_iter().map(|(_, _, id)| id).collect();
    let expected: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(stored, expected, "stored in the order the socket sent them");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_senders_on_two_gateways_produce_one_dense_order_that_every_member_sees() {
    let cluster = Cluster::start(2, 1, 2).await;
    let mut chats = Vec::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        let (token, id) = cluster.register(i % 2, &format!("sender{i}")).await;
        ids.push(id);
        chats.push(Chat::connect(cluster.gateway(i % 2), &token, id).await);
    }
    let conversation = group(&mut chats[0], "busy", &ids).await;

    let sends = chats.into_iter().enumerate().map(|(i, mut chat)| {
        tokio::spawn(async move {
            let results = chat.send_many(conversation, &items(&format!("s{i}"), 200), 16).await;
            assert!(results.iter().all(|r| matches!(r, Sent::Acked(_))), "sender {i}: {results:?}");
            chat
        })
    });
    let mut chats: Vec<Chat> = futures_util::future::join_all(sends).await.into_iter().map(Result::unwrap).collect();
    for chat in &mut chats {
        chat.drain(QUIET).await;
        chat.sync().await;
    }

    let expected: Vec<i64> = (1..=1000).collect();
    let reference = chats[0].order(conversation);
    for (i, chat) in chats.iter().enumerate() {
        assert_eq!(chat.seqs(conversation), expected, "member {i} holds a gap or extra");
        assert_eq!(chat.order(conversation), reference, "member {i} sees another order");
        let live: Vec<i64> = chat.live.iter().filter(|(c, _)| *c == conversation).map(|(_, s)| *s).collect();
        assert_eq!(live.len(), live.iter().collect::<HashSet<_>>().len(), "member {i} got a live duplicate");
    }
    let stored = cluster.stored(conversation).await;
    assert_eq!(stored.iter().map(|(seq, _, _)| *seq).collect::<Vec<_>>(), expected);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_client_id_sent_twice_to_two_gateways_at_once_stores_one_message() {
    let cluster = Cluster::start(2, 1, 2).await;
    let (token, ann) = cluster.register(0, "ann").await;
    let (_, ben) = cluster.register(0, "ben").await;
    let mut first = Chat::connect(cluster.gateway(0), &token, ann).await;
    let mut second = Chat::connect(cluster.gateway(1), &token, ann).await;
    let conversation = group(&mut first, "dup", &[ben]).await;

    for round in 0..10 {
        let frame = json!({ "type": "sendMessage", "conversationId": conversation,
            "clientMessageId": format!("same-{round}"), "body": "only once" });
        let (a, b) = tokio::join!(first.request(frame.clone()), second.request(frame.clone()));
        assert_eq!(a["type"], "reply", "{a}");
        assert_eq!(a["result"], b["result"], "round {round}: both replies carry the one stored message");
        let again = first.request(frame).await;
        assert_eq!(again["result"], a["result"], "a later retry also returns the original");
    }

    let stored = cluster.stored(conversation).await;
    assert_eq!(stored.len(), 10);
    assert_eq!(stored.iter().map(|(seq, _, _)| *seq).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    cluster.stop().await;
}

/// A group create retried with its `clientGroupId` (a lost reply, a reconnect to the other gateway) makes one
/// group, over WebSocket and REST alike, even when the two calls race through two gateways and two
/// message-services; the members hear of it once the first call commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_create_sent_twice_with_one_client_id_makes_one_group() {
    let cluster = Cluster::start(2, 1, 2).await;
    let (token, ann) = cluster.register(0, "ann").await;
    let (ben_token, ben) = cluster.register(1, "ben").await;
    let mut first = Chat::connect(cluster.gateway(0), &token, ann).await;
    let mut second = Chat::connect(cluster.gateway(1), &token, ann).await;
    let mut ben_phone = Chat::connect(cluster.gateway(1), &ben_token, ben).await;

    let mut made = Vec::new();
    for round in 0..5 {
        let frame = json!({ "type": "createGroup", "title": format!("club {round}"), "memberIds": [ben],
            "clientGroupId": format!("club-{round}") });
        let (a, b) = tokio::join!(first.request(frame.clone()), second.request(frame.clone()));
        assert_eq!(a["type"], "reply", "{a}");
        assert_eq!(a["result"], b["result"], "round {round}: both replies carry the one group");
        let (status, rest) = cluster
            .post(
                1,
                &token,
                "/api/conversations",
                json!({ "title": format!("club {round}"), "memberIds": [ben],
                "clientGroupId": format!("club-{round}") }),
            )
            .await;
        assert_eq!((status, &rest), (201, &a["result"]["data"]), "a REST retry also returns the group");
        made.push(a["result"]["data"]["id"].as_i64().unwrap());
    }
    assert_eq!(cluster.groups().await, made, "one group per client id");

    let (status, reused) = cluster
        .post(
            0,
            &token,
            "/api/conversations",
            json!({ "title": "another", "memberIds": [ben], "clientGroupId": "club-0" }),
        )
        .await;
    assert_eq!((status, reused["error"]["code"].as_str()), (409, Some("conflict")), "{reused}");
    let (status, bad) = cluster
        .post(
            0,
            &token,
            "/api/conversations",
            json!({ "title": "t", "memberIds": [], "clientGroupId": "x".repeat(65) }),
        )
        .await;
    assert_eq!((status, bad["error"]["code"].as_str()), (422, Some("validation")), "{bad}");
    assert_eq!(cluster.groups().await, made, "a refused create made a group");

    ben_phone.drain(QUIET).await;
    let told: HashSet<i64> = ben_phone
        .other
        .iter()
        .filter(|f| f["type"] == "conversation")
        .map(|f| f["conversation"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(told, made.iter().copied().collect(), "the member heard of each group");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_to_the_other_gateway_receives_exactly_what_it_missed_in_order() {
    let cluster = Cluster::start(2, 1, 2).await;
    let (ann_token, ann) = cluster.register(0, "ann").await;
    let (ben_token, ben) = cluster.register(0, "ben").await;
    let mut ann_chat = Chat::connect(cluster.gateway(0), &ann_token, ann).await;
    let mut ben_chat = Chat::connect(cluster.gateway(0), &ben_token, ben).await;
    let conversation = group(&mut ann_chat, "resume", &[ben]).await;
    let early = ann_chat.send_many(conversation, &items("early", 5), 5).await;
    assert!(early.iter().all(|r| matches!(r, Sent::Acked(_))));
    ben_chat.drain(QUIET).await;
    assert_eq!(ben_chat.seqs(conversation), [1, 2, 3, 4, 5]);

    let Chat { ws, .. } = std::mem::replace(&mut ben_chat, Chat::connect(cluster.gateway(1), &ben_token, ben).await);
    ws.close().await;
    let missed = ann_chat.send_many(conversation, &items("missed", 7), 7).await;
    assert!(missed.iter().all(|r| matches!(r, Sent::Acked(_))));
    // The fresh connection is on gateway 1; give it the view it had before disconnecting, then resume.
    let mut resumed = Chat::connect(cluster.gateway(1), &ben_token, ben).await;
    let held: Vec<(i64, i64)> = (1..=5).map(|s| (conversation, s)).collect();
    for key in held {
        resumed.view.insert(key, json!({ "conversationId": key.0, "seq": key.1 }));
    }
    let heads = vec![json!({ "conversationId": conversation, "seq": 5 })];
    let reply = resumed.request(json!({ "type": "sync", "heads": heads })).await;

    let got: Vec<i64> =
        reply["result"]["data"]["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(got, [6, 7, 8, 9, 10, 11, 12], "exactly the missed ones, in order");
    drop(ben_chat);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_gateway_mid_stream_loses_and_doubles_nothing_once_clients_resume_on_the_other() {
    let mut cluster = Cluster::start(2, 1, 2).await;
    let (ann_token, ann) = cluster.register(0, "ann").await;
    let (ben_token, ben) = cluster.register(0, "ben").await;
    let (cat_token, cat) = cluster.register(1, "cat").await;
    let mut sender = Chat::connect(cluster.gateway(0), &ann_token, ann).await;
    let mut ben_chat = Chat::connect(cluster.gateway(0), &ben_token, ben).await;
    let mut cat_chat = Chat::connect(cluster.gateway(1), &cat_token, cat).await;
    let conversation = group(&mut sender, "steady", &[ben, cat]).await;
    let all = items("steady", 300);

    let stream = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for chunk in all.chunks(10) {
            outcomes.extend(sender.send_many(conversation, chunk, 10).await);
            if outcomes.iter().any(|o| matches!(o, Sent::Unanswered)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        (sender, outcomes, all)
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    cluster.gateways[0].kill();
    let (mut sender, outcomes, all) = stream.await.unwrap();

    // Everyone on the dead gateway reconnects to the living one; the sender retries what was not acked, with
    // the same client ids, then finishes the stream.
    sender.reconnect(cluster.gateway(1)).await;
    ben_chat.reconnect(cluster.gateway(1)).await;
    let acked_before: HashSet<String> = outcomes
        .iter()
        .filter_map(|o| if let Sent::Acked(m) = o { m["clientMessageId"].as_str().map(str::to_owned) } else { None })
        .collect();
    let rest: Vec<(String, String)> = all.iter().filter(|(id, _)| !acked_before.contains(id)).cloned().collect();
    assert!(!rest.is_empty(), "the kill came after the stream ended; nothing was tested");
    let retried = sender.send_many(conversation, &rest, 10).await;
    assert!(retried.iter().all(|r| matches!(r, Sent::Acked(_))), "{retried:?}");
    for chat in [&mut sender, &mut ben_chat, &mut cat_chat] {
        chat.drain(QUIET).await;
        chat.sync().await;
    }

    let stored = cluster.stored(conversation).await;
    let client_ids: Vec<&String> = stored.iter().map(|(_, _, id)| id).collect();
    assert_eq!(stored.len(), 300, "every message stored exactly once");
    assert_eq!(client_ids.iter().collect::<HashSet<_>>().len(), 300);
    let expected: Vec<i64> = (1..=300).collect();
    for chat in [&sender, &ben_chat, &cat_chat] {
        assert_eq!(chat.seqs(conversation), expected, "user {} holds a gap or extra", chat.user_id);
        assert_eq!(chat.order(conversation), sender.order(conversation));
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_message_service_mid_stream_loses_no_acknowledged_message() {
    let mut cluster = Cluster::start(1, 1, 2).await;
    let (ann_token, ann) = cluster.register(0, "ann").await;
    let (ben_token, ben) = cluster.register(0, "ben").await;
    let mut sender = Chat::connect(cluster.gateway(0), &ann_token, ann).await;
    let mut ben_chat = Chat::connect(cluster.gateway(0), &ben_token, ben).await;
    let conversation = group(&mut sender, "steady", &[ben]).await;
    let all = items("ms", 300);

    let stream = tokio::spawn(async move {
        let outcomes = sender.send_many(conversation, &all, 16).await;
        (sender, outcomes, all)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.message_services[0].kill();
    let (mut sender, outcomes, all) = stream.await.unwrap();

    // Sends the dead replica held are redelivered to the other; any that failed are retried with their ids.
    let failed: Vec<(String, String)> = outcomes
        .iter()
        .zip(&all)
        .filter(|(o, _)| !matches!(o, Sent::Acked(_)))
        .map(|(o, item)| {
            if let Sent::Refused(frame) = o {
                assert!(
                    matches!(error_code(frame), "unavailable" | "timeout" | "internal"),
                    "a non-retryable failure: {frame}"
                );
            }
            item.clone()
        })
        .collect();
    let retried = sender.send_many(conversation, &failed, 16).await;
    assert!(retried.iter().all(|r| matches!(r, Sent::Acked(_))), "{retried:?}");
    let acked: Vec<Value> = outcomes
        .iter()
        .chain(&retried)
        .filter_map(|o| if let Sent::Acked(m) = o { Some(m.clone()) } else { None })
        .collect();
    ben_chat.drain(QUIET).await;
    ben_chat.sync().await;

    let stored = cluster.stored(conversation).await;
    assert_eq!(stored.len(), 300);
    for message in &acked {
        let key = (conversation, message["seq"].as_i64().unwrap());
        assert_eq!(ben_chat.view.get(&key), Some(message), "acked message missing from the member's view");
        assert!(stored.iter().any(|(seq, _, id)| *seq == key.1 && id == message["clientMessageId"].as_str().unwrap()));
    }
    assert_eq!(ben_chat.seqs(conversation), (1..=300).collect::<Vec<_>>());
    cluster.stop().await;
}

/// A client message id names one message of its sender. Two sockets of one user sending different messages
/// under one id at the same moment: one is stored and answered with itself, the other refused with `conflict` —
/// never answered with its namesake's message while its own goes unstored (each gateway answers a send from the
/// stored message's event, which must be that send's own message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_message_id_sent_with_two_bodies_at_once_stores_one_and_refuses_the_other_with_conflict() {
    let cluster = Cluster::start(2, 1, 1).await;
    let (token, ann) = cluster.register(0, "ann").await;
    let (_, ben) = cluster.register(0, "ben").await;
    let mut laptop = Chat::connect(cluster.gateway(0), &token, ann).await;
    let mut phone = Chat::connect(cluster.gateway(1), &token, ann).await;
    let conversation = group(&mut laptop, "twice", &[ben]).await;

    for trial in 0..10 {
        let client_id = format!("same-{trial}");
        let frame = |body: &str| json!({ "type": "sendMessage", "conversationId": conversation, "clientMessageId": client_id, "body": body });
        let (from_laptop, from_phone) =
            tokio::join!(laptop.request(frame("from the laptop")), phone.request(frame("from the phone")));

        let answers = [(&from_laptop, "from the laptop"), (&from_phone, "from the phone")];
        let stored: Vec<_> = answers.iter().filter(|(answer, _)| answer["type"] == "reply").collect();
        let refused = answers.iter().filter(|(answer, _)| answer["error"]["code"] == "conflict").count();
        assert_eq!((stored.len(), refused), (1, 1), "trial {trial}: {from_laptop} / {from_phone}");
        let (reply, body) = stored[0];
        assert_eq!(reply["result"]["data"]["body"], *body, "trial {trial}: answered with another message: {reply}");
    }
    assert_eq!(cluster.stored(conversation).await.len(), 10);
    cluster.stop().await;
}

/// A PostgreSQL restart or failover, as the services see it: every connection to the database is terminated and
/// none is let in for most of a second. The users should notice only a delay: no send refused, none lost, no
/// read refused, one order for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_mid_stream_delays_sends_and_reads_but_refuses_and_loses_none() {
    let cluster = Cluster::start(1, 1, 1).await;
    let (ann_token, ann) = cluster.register(0, "ann").await;
    let (ben_token, ben) = cluster.register(0, "ben").await;
    let mut sender = Chat::connect(cluster.gateway(0), &ann_token, ann).await;
    let mut ben_chat = Chat::connect(cluster.gateway(0), &ben_token, ben).await;
    let conversation = group(&mut sender, "outage", &[ben]).await;
    let all = items("db", 200);

    let stream = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for chunk in all.chunks(10) {
            outcomes.extend(sender.send_many(conversation, chunk, 10).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (sender, outcomes)
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let terminated = cluster.db.begin_outage().await;
    let read = tokio::spawn(async move {
        let page = ben_chat.request(json!({ "type": "getMessages", "conversationId": conversation })).await;
        (ben_chat, page)
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stream_waited = !stream.is_finished();
    cluster.db.end_outage().await;
    assert!(terminated >= 2, "only {terminated} connections were open: the outage tested nothing");
    assert!(stream_waited, "the stream was over before the database came back: the outage tested nothing");

    let (mut sender, outcomes) = stream.await.unwrap();
    let refused: Vec<&Sent> = outcomes.iter().filter(|o| !matches!(o, Sent::Acked(_))).collect();
    assert!(refused.is_empty(), "{} sends refused across the outage, the first: {:?}", refused.len(), refused[0]);
    let (mut ben_chat, page) = read.await.unwrap();
    assert_eq!(page["type"], "reply", "a read during the outage was refused: {page}");
    for chat in [&mut sender, &mut ben_chat] {
        chat.drain(QUIET).await;
        chat.sync().await;
    }
    let stored = cluster.stored(conversation).await;
    assert_eq!(stored.len(), 200, "every message stored exactly once");
    assert_eq!(ben_chat.seqs(conversation), (1..=200).collect::<Vec<_>>());
    assert_eq!(ben_chat.order(conversation), sender.order(conversation));
    // Signing in needs the user-service's own connections, which the outage ended too.
    cluster.log_in(0, "ben").await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_and_a_direct_message_work_across_the_compose_topology() {
    // The docker-compose topology as plain processes: two of every service.
    let cluster = Cluster::start(2, 2, 2).await;
    cluster.register(0, "ann").await;
    let (_, ben) = cluster.register(1, "ben").await;
    let ann_token = cluster.log_in(1, "ann").await;
    let ben_token = cluster.log_in(0, "ben").await;
    let (mut ann_ws, ready) = WsClient::authenticated_to(cluster.gateway(1), &ann_token).await;
    let ann = ready["user"]["id"].as_i64().unwrap();
    let mut ben_chat = Chat::connect(cluster.gateway(0), &ben_token, ben).await;

    let reply = ann_ws
        .request(
            &json!({ "type": "sendMessage", "id": "1", "toUserId": ben, "clientMessageId": "m1", "body": "hello" }),
        )
        .await;
    ben_chat.drain(QUIET).await;

    assert_eq!(reply["type"], "reply", "{reply}");
    let message = &reply["result"]["data"];
    assert_eq!(message["senderId"], json!(ann));
    assert_eq!(ben_chat.view.values().next(), Some(message));
    cluster.stop().await;
}
