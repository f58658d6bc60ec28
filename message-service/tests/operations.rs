//! The message-service's operations through the real broker, with a real user-service beside it.

use std::time::{Duration, Instant};

use common::{
    amqp::{Broker, CallContext, RpcClient},
    config::AmqpSettings,
    protocol::{
        ApiError, ErrorCode, Operation, RpcReply,
        messages::*,
        users::{Register, RegisterRequest},
    },
    testing,
};
use tokio_util::sync::CancellationToken;

struct Stack {
    amqp: AmqpSettings,
    db: testing::TestDb,
    broker: Broker,
    client: RpcClient,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Stack {
    async fn start() -> Self {
        common::telemetry::init_for_tests();
        let db = testing::TestDb::new().await;
        let amqp = testing::unique_amqp_settings();
        let stop = CancellationToken::new();
        let users = user_service::startup::Application::build(user_service::config::Settings::for_tests(
            &db.url(),
            amqp.clone(),
        ))
        .await
        .unwrap();
        let messages = message_service::startup::Application::build(message_service::config::Settings::for_tests(
            &db.url(),
            amqp.clone(),
        ))
        .await
        .unwrap();
        let (a, b) = (stop.clone(), stop.clone());
        let tasks = vec![
            tokio::spawn(users.run_until_stopped(async move { a.cancelled().await })),
            tokio::spawn(messages.run_until_stopped(async move { b.cancelled().await })),
        ];
        let broker = Broker::start(&amqp, "test".into());
        let client = RpcClient::start(broker.clone(), "test", &uuid::Uuid::new_v4().simple().to_string());
        let keys: Vec<&str> = common::amqp::topology::OPERATIONS.iter().map(|(key, _)| *key).collect();
        testing::until_served(&client, &keys, Duration::from_secs(20)).await;
        Stack { amqp, db, broker, client, stop, tasks }
    }

    async fn call<O: Operation>(&self, request: O::Request) -> Result<O::Response, ApiError> {
        self.client.call::<O>(&request, &CallContext::new("test", Duration::from_secs(10))).await
    }

    async fn user(&self, name: &str) -> i64 {
        self.call::<Register>(RegisterRequest { username: name.into(), password: "correct horse battery".into() })
            .await
            .unwrap()
            .user
            .id
    }

    /// A group created by `owner` with `members`.
    async fn group(&self, owner: i64, title: &str, members: Vec<i64>) -> Conversation {
        self.call::<CreateGroup>(as_user(
            owner,
            CreateGroupRequest { title: title.into(), member_ids: members, client_group_id: None },
        ))
        .await
        .unwrap()
    }

    async fn send(&self, user_id: i64, conversation_id: i64, client_id: &str, body: &str) -> Result<Message, ApiError> {
        let request = SendMessageRequest {
            conversation_id: Some(conversation_id),
            to_user_id: None,
            client_message_id: client_id.into(),
            body: body.into(),
        };
        self.call::<SendMessage>(AsUser { user_id, request }).await
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap().unwrap();
        }
        self.broker.close().await;
        testing::delete_topology(&self.amqp.prefix).await;
    }
}

fn as_user<T>(user_id: i64, request: T) -> AsUser<T> {
    AsUser { user_id, request }
}

#[tokio::test]
async fn a_first_direct_message_creates_the_conversation_and_later_ones_reuse_it() {
    let s = Stack::start().await;
    let (ann, ben) = (s.user("ann").await, s.user("ben").await);
    let direct = |client_id: &str, from: i64, to: i64| {
        as_user(
            from,
            SendMessageRequest {
                conversation_id: None,
                to_user_id: Some(to),
                client_message_id: client_id.into(),
                body: "hi".into(),
            },
        )
    };

    let first = s.call::<SendMessage>(direct("m1", ann, ben)).await.unwrap();
    let reply = s.call::<SendMessage>(direct("m2", ben, ann)).await.unwrap();

    assert_eq!(first.conversation_id, reply.conversation_id);
    assert_eq!((first.seq, reply.seq), (1, 2));
    let entry = s
        .call::<GetConversation>(as_user(ben, GetConversationRequest { conversation_id: first.conversation_id }))
        .await
        .unwrap();
    assert_eq!(entry.conversation.kind, ConversationKind::Direct);
    assert_eq!(entry.conversation.members, vec![ann.min(ben), ann.max(ben)]);
    let to_self = s.call::<SendMessage>(direct("m3", ann, ann)).await.unwrap_err();
    assert_eq!(to_self.code, ErrorCode::Validation);
    let to_nobody = s.call::<SendMessage>(direct("m4", ann, 987_654)).await.unwrap_err();
    assert_eq!(to_nobody.code, ErrorCode::NotFound);
    s.stop().await;
}

#[tokio::test]
async fn history_pages_walk_back_through_every_message() {
    let s = Stack::start().await;
    let ann = s.user("ann").await;
    let group = s.group(ann, "notes", vec![]).await;
    for i in 1..=25 {
        s.send(ann, group.id, &format!("c{i}"), &format!("message {i}")).await.unwrap();
    }

    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = s
            .call::<GetMessages>(as_user(
                ann,
                GetMessagesRequest { conversation_id: group.id, before, limit: Some(10), ..Default::default() },
            ))
            .await
            .unwrap();
        seen.splice(0..0, page.messages.iter().map(|m| m.seq));
        if !page.has_more_before {
            break;
        }
        before = page.messages.first().map(|m| m.seq);
    }

    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    let around = s
        .call::<GetMessages>(as_user(
            ann,
            GetMessagesRequest { conversation_id: group.id, around: Some(12), limit: Some(5), ..Default::default() },
        ))
        .await
        .unwrap();
    assert_eq!(around.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [10, 11, 12, 13, 14]);
    let both = s
        .call::<GetMessages>(as_user(
            ann,
            GetMessagesRequest { conversation_id: group.id, before: Some(3), after: Some(1), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_eq!(both.code, ErrorCode::Validation);
    s.stop().await;
}

#[tokio::test]
async fn sync_returns_exactly_what_the_client_lacks() {
    let s = Stack::start().await;
    let (ann, ben) = (s.user("ann").await, s.user("ben").await);
    let group = s.group(ann, "team", vec![ben]).await;
    for i in 1..=5 {
        s.send(ann, group.id, &format!("c{i}"), "x").await.unwrap();
    }

    let synced = s
        .call::<Sync>(as_user(ben, SyncRequest { heads: vec![Head { conversation_id: group.id, seq: 2 }] }))
        .await
        .unwrap();

    assert_eq!(synced.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert!(synced.truncated.is_empty() && synced.removed.is_empty());
    assert_eq!(synced.conversations.len(), 1);
    assert_eq!(synced.conversations[0].conversation.last_seq, 5);
    let fresh = s.call::<Sync>(as_user(ben, SyncRequest::default())).await.unwrap();
    assert_eq!(fresh.messages.len(), 5);
    let negative =
        s.call::<Sync>(as_user(ben, SyncRequest { heads: vec![Head { conversation_id: group.id, seq: -1 }] })).await;
    assert_eq!(negative.unwrap_err().code, ErrorCode::Validation);
    // No conversation has id 0.
    let zero = s.call::<Sync>(as_user(ben, SyncRequest { heads: vec![Head { conversation_id: 0, seq: 1 }] })).await;
    assert_eq!(zero.unwrap_err().code, ErrorCode::Validation);
    // Two heads for one conversation, in either order: the answer misses nothing after the lower.
    for seqs in [[4, 2], [2, 4]] {
        let heads = seqs.map(|seq| Head { conversation_id: group.id, seq }).to_vec();
        let twice = s.call::<Sync>(as_user(ben, SyncRequest { heads })).await.unwrap();
        assert_eq!(twice.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4, 5], "heads {seqs:?}");
    }

    // A conversation new to the client: its newest messages, not its oldest; older ones are paged back.
    let long = s.group(ann, "long", vec![ben]).await;
    let per = SYNC_MESSAGES_PER_CONVERSATION as i64;
    for i in 1..=per + 5 {
        s.send(ann, long.id, &format!("l{i}"), "x").await.unwrap();
    }
    let known = vec![Head { conversation_id: group.id, seq: 5 }];
    let tail = s.call::<Sync>(as_user(ben, SyncRequest { heads: known })).await.unwrap();
    let seqs: Vec<i64> = tail.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (6..=per + 5).collect::<Vec<_>>());
    assert!(tail.truncated.is_empty());

    // Heads for conversations ben is not in (one he left, one never his, one that does not exist) are named in
    // `removed`, in the order given, and bring nothing else.
    let left = s.group(ann, "left", vec![ben]).await;
    s.call::<LeaveConversation>(as_user(ben, LeaveConversationRequest { conversation_id: left.id })).await.unwrap();
    let foreign = s.group(ann, "not his", vec![]).await;
    s.send(ann, foreign.id, "f", "private").await.unwrap();
    let heads = [left.id, group.id, i64::MAX, foreign.id].map(|conversation_id| Head { conversation_id, seq: 0 });
    let gone = s.call::<Sync>(as_user(ben, SyncRequest { heads: heads.to_vec() })).await.unwrap();
    assert_eq!(gone.removed, [left.id, i64::MAX, foreign.id]);
    let listed: Vec<i64> = gone.conversations.iter().map(|e| e.conversation.id).collect();
    assert_eq!(listed, [long.id, group.id]);
    assert!(gone.messages.iter().all(|m| m.conversation_id == group.id || m.conversation_id == long.id));
    s.stop().await;
}

/// A user in more conversations than one list holds: the ones the client holds that spoke while it was away but
/// have since been pushed out of the most recent ones by others still come back with what they lack.
#[tokio::test]
async fn sync_answers_for_held_conversations_beyond_the_recent_list() {
    let s = Stack::start().await;
    let (ann, ben) = (s.user("ann").await, s.user("ben").await);
    let behind = SYNC_CONVERSATIONS_BEHIND as usize;
    // Held by ben's client at seq 0; each gets a message he missed.
    let mut missed = Vec::new();
    for i in 0..=behind {
        let group = s.group(ann, &format!("missed {i}"), vec![ben]).await;
        s.send(ann, group.id, &format!("m{i}"), "while you were away").await.unwrap();
        missed.push(group.id);
    }
    // Held too, up to date.
    let quiet = s.group(ann, "quiet", vec![ben]).await.id;
    // Then a full list of conversations more recent than all of them.
    for chunk in (0..MAX_CONVERSATIONS_PAGE).collect::<Vec<_>>().chunks(20) {
        let titles: Vec<String> = chunk.iter().map(|i| format!("recent {i}")).collect();
        futures_util::future::join_all(titles.iter().map(|title| s.group(ann, title, vec![ben]))).await;
    }
    // Not ben's: a head for it brings nothing but its removal, as does one for a group he has left since.
    let foreign = s.group(ann, "not his", vec![]).await;
    s.send(ann, foreign.id, "f", "private").await.unwrap();
    let left = s.group(ann, "left", vec![ben]).await;
    s.send(ann, left.id, "l", "before he left").await.unwrap();
    s.call::<LeaveConversation>(as_user(ben, LeaveConversationRequest { conversation_id: left.id })).await.unwrap();

    let mut heads: Vec<Head> = missed.iter().map(|&id| Head { conversation_id: id, seq: 0 }).collect();
    heads.push(Head { conversation_id: quiet, seq: 0 });
    heads.push(Head { conversation_id: foreign.id, seq: 0 });
    heads.push(Head { conversation_id: left.id, seq: 0 });
    let synced = s.call::<Sync>(as_user(ben, SyncRequest { heads })).await.unwrap();

    let listed: Vec<i64> = synced.conversations.iter().map(|e| e.conversation.id).collect();
    assert_eq!(listed.len(), MAX_CONVERSATIONS_PAGE as usize + behind, "the recent list, then those behind");
    assert!(listed[..MAX_CONVERSATIONS_PAGE as usize].iter().all(|id| !missed.contains(id)), "pushed out");
    // The most recently active of those behind come with their entry (newest first) and their messages.
    let with_entries: Vec<i64> = missed[1..].iter().rev().copied().collect();
    assert_eq!(listed[MAX_CONVERSATIONS_PAGE as usize..], with_entries[..]);
    let got: Vec<(i64, i64)> = synced.messages.iter().map(|m| (m.conversation_id, m.seq)).collect();
    assert_eq!(got, missed[1..].iter().map(|&id| (id, 1)).collect::<Vec<_>>(), "by conversation, then seq");
    // The one left over is named, for the client to page.
    assert_eq!(synced.truncated, [missed[0]]);
    assert!(!listed.contains(&quiet) && !listed.contains(&foreign.id), "{listed:?}");
    assert_eq!(synced.removed, [foreign.id, left.id], "the heads of conversations he is not in, in their order");
    s.stop().await;
}

#[tokio::test]
async fn members_are_added_removed_and_leave_and_only_members_may_act() {
    let s = Stack::start().await;
    let (ann, ben, cat) = (s.user("ann").await, s.user("ben").await, s.user("cat").await);
    let group = s.group(ann, "team", vec![ben]).await;
    assert_eq!(group.members.len(), 2);

    let outsider = s.send(cat, group.id, "c1", "let me in").await.unwrap_err();
    assert_eq!(outsider.code, ErrorCode::Forbidden);
    let sneaky = s
        .call::<AddMembers>(as_user(cat, AddMembersRequest { conversation_id: group.id, user_ids: vec![cat] }))
        .await
        .unwrap_err();
    assert_eq!(sneaky.code, ErrorCode::Forbidden);
    let read_other = s
        .call::<GetMessages>(as_user(cat, GetMessagesRequest { conversation_id: group.id, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(read_other.code, ErrorCode::Forbidden);

    s.send(ann, group.id, "c0", "before cat").await.unwrap();
    let added = s
        .call::<AddMembers>(as_user(ben, AddMembersRequest { conversation_id: group.id, user_ids: vec![cat] }))
        .await
        .unwrap();
    assert_eq!(added.members.len(), 3);
    let cats_view =
        s.call::<GetConversation>(as_user(cat, GetConversationRequest { conversation_id: group.id })).await.unwrap();
    assert_eq!(cats_view.read_seq, cats_view.conversation.last_seq, "a new member starts with the history read");
    assert!(s.send(cat, group.id, "c2", "thanks").await.is_ok());
    let removed = s
        .call::<RemoveMember>(as_user(ann, RemoveMemberRequest { conversation_id: group.id, user_id: cat }))
        .await
        .unwrap();
    assert!(!removed.members.contains(&cat));
    let left = s
        .call::<LeaveConversation>(as_user(ben, LeaveConversationRequest { conversation_id: group.id }))
        .await
        .unwrap();
    assert_eq!(left.members, vec![ann]);
    assert_eq!(s.send(ben, group.id, "c3", "hello?").await.unwrap_err().code, ErrorCode::Forbidden);
    let ghost = s
        .call::<AddMembers>(as_user(ann, AddMembersRequest { conversation_id: group.id, user_ids: vec![777_777] }))
        .await
        .unwrap_err();
    assert_eq!(ghost.code, ErrorCode::NotFound);
    s.stop().await;
}

/// A create retried with its `clientGroupId` (its reply lost to a timeout or a reconnect) returns the group the
/// first call made, once per creator; the id cannot be reused for another group.
#[tokio::test]
async fn a_group_create_retried_with_its_client_id_makes_one_group() {
    let s = Stack::start().await;
    let (ann, ben, cat) = (s.user("ann").await, s.user("ben").await, s.user("cat").await);
    let create = |creator: i64, title: &str, members: Vec<i64>, key: &str| {
        as_user(
            creator,
            CreateGroupRequest { title: title.into(), member_ids: members, client_group_id: Some(key.into()) },
        )
    };

    let first = s.call::<CreateGroup>(create(ann, "club", vec![ben, cat], "g-1")).await.unwrap();
    // The same request, written differently: members in another order, repeated, the creator named, the title
    // padded. All of it reads as the same group.
    let again = s.call::<CreateGroup>(create(ann, " club ", vec![cat, ben, cat, ann], "g-1")).await.unwrap();
    assert_eq!(again, first);
    let list = s.call::<ListConversations>(as_user(ann, ListConversationsRequest::default())).await.unwrap();
    assert_eq!(list.conversations.len(), 1, "the retry made a second group");

    // The id is the creator's own: another creator using it makes their own group.
    let bens = s.call::<CreateGroup>(create(ben, "club", vec![ann, cat], "g-1")).await.unwrap();
    assert_ne!(bens.id, first.id);

    // Reused for another group: refused, and nothing is made.
    for (title, members) in [("book club", vec![ben, cat]), ("club", vec![ben])] {
        let reused = s.call::<CreateGroup>(create(ann, title, members, "g-1")).await.unwrap_err();
        assert_eq!(reused.code, ErrorCode::Conflict, "{reused:?}");
    }
    // A create without an id makes a group every time, as before.
    let plain = CreateGroupRequest { title: "club".into(), member_ids: vec![ben], client_group_id: None };
    let one = s.call::<CreateGroup>(as_user(ann, plain.clone())).await.unwrap();
    let two = s.call::<CreateGroup>(as_user(ann, plain)).await.unwrap();
    assert_ne!(one.id, two.id);
    let list = s.call::<ListConversations>(as_user(ann, ListConversationsRequest::default())).await.unwrap();
    assert_eq!(list.conversations.len(), 4);

    // A bad id is refused before anything is made.
    for bad in ["", "has space", &"x".repeat(65)] {
        let refused = s.call::<CreateGroup>(create(ann, "club", vec![ben], bad)).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::Validation, "{bad:?}: {refused:?}");
    }

    // A retry after the creator left the group does not show it to them again.
    s.call::<LeaveConversation>(as_user(ann, LeaveConversationRequest { conversation_id: first.id })).await.unwrap();
    let gone = s.call::<CreateGroup>(create(ann, "club", vec![ben, cat], "g-1")).await.unwrap_err();
    assert_eq!(gone.code, ErrorCode::Forbidden, "{gone:?}");
    let list = s.call::<ListConversations>(as_user(ann, ListConversationsRequest::default())).await.unwrap();
    assert_eq!(list.conversations.len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn read_positions_only_move_forward_and_unread_counts_follow() {
    let s = Stack::start().await;
    let (ann, ben) = (s.user("ann").await, s.user("ben").await);
    let group = s.group(ann, "team", vec![ben]).await;
    for i in 1..=4 {
        s.send(ann, group.id, &format!("c{i}"), "x").await.unwrap();
    }

    let read = s.call::<MarkRead>(as_user(ben, MarkReadRequest { conversation_id: group.id, seq: 3 })).await.unwrap();
    let back = s.call::<MarkRead>(as_user(ben, MarkReadRequest { conversation_id: group.id, seq: 1 })).await.unwrap();
    let beyond =
        s.call::<MarkRead>(as_user(ben, MarkReadRequest { conversation_id: group.id, seq: 99 })).await.unwrap();

    assert_eq!((read.read_seq, back.read_seq, beyond.read_seq), (3, 3, 4));
    let sender_view =
        s.call::<GetConversation>(as_user(ann, GetConversationRequest { conversation_id: group.id })).await.unwrap();
    assert_eq!(sender_view.read_seq, 4, "what you send, you have read");
    let list = s.call::<ListConversations>(as_user(ben, ListConversationsRequest::default())).await.unwrap();
    assert_eq!(list.conversations[0].read_seq, 4);
    assert_eq!(list.conversations[0].last_message.as_ref().map(|m| m.seq), Some(4));
    s.stop().await;
}

#[tokio::test]
async fn conversations_list_newest_first_in_pages() {
    let s = Stack::start().await;
    let ann = s.user("ann").await;
    let mut ids = Vec::new();
    // Two exactly full pages: the second must not promise a third.
    for i in 0..6 {
        let group = s.group(ann, &format!("g{i}"), vec![]).await;
        s.send(ann, group.id, &format!("c{i}"), "x").await.unwrap();
        ids.push(group.id);
    }

    let first = s
        .call::<ListConversations>(as_user(ann, ListConversationsRequest { before: None, limit: Some(3) }))
        .await
        .unwrap();
    let second = s
        .call::<ListConversations>(as_user(
            ann,
            ListConversationsRequest { before: first.next.clone(), limit: Some(3) },
        ))
        .await
        .unwrap();

    let order: Vec<i64> = first.conversations.iter().chain(&second.conversations).map(|e| e.conversation.id).collect();
    ids.reverse();
    assert_eq!(order, ids);
    assert!(first.next.is_some());
    assert!(second.next.is_none(), "an exactly full last page has no next");
    let bad = s
        .call::<ListConversations>(as_user(
            ann,
            ListConversationsRequest { before: Some("garbage".into()), limit: None },
        ))
        .await;
    assert_eq!(bad.unwrap_err().code, ErrorCode::Validation);
    s.stop().await;
}

/// Someone added to a quiet group finds it at the top of their list, not below every chat that spoke since it
/// last did; a repeated add moves nothing.
#[tokio::test]
async fn a_group_someone_joins_goes_to_the_top_of_the_lists() {
    let s = Stack::start().await;
    let (ann, ben) = (s.user("ann").await, s.user("ben").await);
    let quiet = s.group(ann, "quiet", vec![]).await;
    s.send(ann, quiet.id, "q1", "anyone?").await.unwrap();
    let busy = s.group(ben, "busy", vec![]).await;
    s.send(ben, busy.id, "b1", "chatter").await.unwrap();
    async fn listed(s: &Stack, user: i64) -> Vec<i64> {
        let request = ListConversationsRequest { before: None, limit: None };
        let list = s.call::<ListConversations>(as_user(user, request)).await.unwrap();
        list.conversations.iter().map(|e| e.conversation.id).collect()
    }
    assert_eq!(listed(&s, ben).await, vec![busy.id]);

    let added = s
        .call::<AddMembers>(as_user(ann, AddMembersRequest { conversation_id: quiet.id, user_ids: vec![ben] }))
        .await
        .unwrap();

    assert_eq!(listed(&s, ben).await, vec![quiet.id, busy.id], "the group ben just joined comes first");
    s.send(ben, busy.id, "b2", "more chatter").await.unwrap();
    let again = s
        .call::<AddMembers>(as_user(ann, AddMembersRequest { conversation_id: quiet.id, user_ids: vec![ben] }))
        .await
        .unwrap();
    assert_eq!(again.last_activity_at, added.last_activity_at, "nobody new: no activity");
    assert_eq!(listed(&s, ben).await, vec![busy.id, quiet.id]);
    s.stop().await;
}

/// One group commit gives every conversation it touches the same `last_activity_at`, to the microsecond: paging
/// one at a time through such ties must still visit every conversation once.
#[tokio::test]
async fn conversations_list_pages_through_ties_to_the_microsecond() {
    let s = Stack::start().await;
    let ann = s.user("ann").await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(s.group(ann, &format!("g{i}"), vec![]).await.id);
    }
    let (db, connection) = tokio_postgres::connect(&s.db.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    db.execute(
        "UPDATE messages.conversations SET last_activity_at = CASE WHEN id = $1
                THEN '2026-01-01 00:00:00.123000+00'::timestamptz ELSE '2026-01-01 00:00:00.123456+00' END
          WHERE id = ANY($2)",
        &[&ids[0], &ids],
    )
    .await
    .unwrap();

    let mut seen = Vec::new();
    let mut before = None;
    for _ in 0..10 {
        let page = s
            .call::<ListConversations>(as_user(ann, ListConversationsRequest { before, limit: Some(1) }))
            .await
            .unwrap();
        seen.extend(page.conversations.iter().map(|e| e.conversation.id));
        before = page.next;
        if before.is_none() {
            break;
        }
    }
    // Newest first; among equal instants, the higher id first.
    assert_eq!(seen, [ids[3], ids[2], ids[1], ids[0]]);
    s.stop().await;
}

/// A group fills up to its limit and no further; repeating the add that filled it is not refused (members
/// already in count once), so a client may repeat an `addMembers` whose answer it lost.
#[tokio::test]
async fn a_full_group_refuses_new_members_but_not_a_repeated_add() {
    let s = Stack::start().await;
    let (ann, ben, cat) = (s.user("ann").await, s.user("ben").await, s.user("cat").await);
    let group = s.group(ann, "big", vec![]).await;
    // Fill it to one short of the limit with members written directly (the user-service need not know them).
    let (db, connection) = tokio_postgres::connect(&s.db.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let fillers = (MAX_GROUP_MEMBERS - 2) as i64;
    db.execute(
        "INSERT INTO messages.members (conversation_id, user_id)
         SELECT $1, 10000000 + n FROM generate_series(1, $2::bigint) AS n",
        &[&group.id, &fillers],
    )
    .await
    .unwrap();
    let add = |users: Vec<i64>| as_user(ann, AddMembersRequest { conversation_id: group.id, user_ids: users });

    let full = s.call::<AddMembers>(add(vec![ben])).await.unwrap();
    assert_eq!(full.members.len(), MAX_GROUP_MEMBERS);
    let repeated = s.call::<AddMembers>(add(vec![ben])).await.unwrap();
    assert_eq!(repeated.members.len(), MAX_GROUP_MEMBERS);
    let over = s.call::<AddMembers>(add(vec![ben, cat])).await.unwrap_err();
    assert_eq!(over.code, ErrorCode::Validation, "{over:?}");
    s.stop().await;
}

/// A token can outlive its account. Such a caller must not create conversations with a user id that exists
/// nowhere: refused `unauthorized`, and nothing is created.
#[tokio::test]
async fn a_caller_whose_account_does_not_exist_creates_no_conversation() {
    let s = Stack::start().await;
    let ann = s.user("ann").await;
    let ghost = 987_654;

    let group = s
        .call::<CreateGroup>(as_user(
            ghost,
            CreateGroupRequest { title: "ghosts".into(), member_ids: vec![ann], client_group_id: None },
        ))
        .await
        .unwrap_err();
    assert_eq!(group.code, ErrorCode::Unauthorized, "{group:?}");
    let direct = SendMessageRequest {
        conversation_id: None,
        to_user_id: Some(ann),
        client_message_id: "boo".into(),
        body: "boo".into(),
    };
    let direct = s.call::<SendMessage>(as_user(ghost, direct)).await.unwrap_err();
    assert_eq!(direct.code, ErrorCode::Unauthorized, "{direct:?}");

    let list = s.call::<ListConversations>(as_user(ann, ListConversationsRequest::default())).await.unwrap();
    assert!(list.conversations.is_empty(), "{:?}", list.conversations);
    s.stop().await;
}

#[tokio::test]
async fn bad_sends_are_refused_and_store_nothing() {
    let s = Stack::start().await;
    let ann = s.user("ann").await;
    let group = s.group(ann, "team", vec![]).await;

    for (client_id, body) in
        [("ok-id", "   "), ("ok-id", &"x".repeat(MAX_MESSAGE_CHARS + 1)), ("bad id", "hi"), ("", "hi")]
    {
        let error = s.send(ann, group.id, client_id, body).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::Validation, "{client_id:?}");
    }
    let neither = s
        .call::<SendMessage>(as_user(
            ann,
            SendMessageRequest {
                conversation_id: None,
                to_user_id: None,
                client_message_id: "x".into(),
                body: "hi".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(neither.code, ErrorCode::Validation);

    let entry =
        s.call::<GetConversation>(as_user(ann, GetConversationRequest { conversation_id: group.id })).await.unwrap();
    assert_eq!(entry.conversation.last_seq, 0);
    s.stop().await;
}

/// A gateway batches one socket's sends in the order they arrived; they must be stored in that order even when
/// some name the other user (`toUserId`, which costs the service a lookup first) and some the conversation.
#[tokio::test]
async fn a_batch_is_stored_in_its_order_whatever_its_sends_name() {
    let s = Stack::start().await;
    let (ann, ben, cat) = (s.user("ann").await, s.user("ben").await, s.user("cat").await);
    let to_user = |client_id: &str, to: i64| {
        as_user(
            ann,
            SendMessageRequest {
                conversation_id: None,
                to_user_id: Some(to),
                client_message_id: client_id.into(),
                body: client_id.into(),
            },
        )
    };
    let to_conversation = |client_id: &str, conversation_id: i64| {
        as_user(
            ann,
            SendMessageRequest {
                conversation_id: Some(conversation_id),
                to_user_id: None,
                client_message_id: client_id.into(),
                body: client_id.into(),
            },
        )
    };
    let dm = s.call::<SendMessage>(to_user("first", ben)).await.unwrap().conversation_id;

    let sends = vec![
        to_user("a1", ben),
        to_conversation("a2", dm),
        to_user("b1", cat), // a direct conversation created inside the batch
        to_user("a3", ben),
        to_conversation("a4", dm),
        to_user("b2", cat),
        to_conversation("not-mine", 987_654),
        to_conversation("a5", dm),
    ];
    let answers = s.call::<SendMessages>(SendBatch { sends }).await.unwrap().results;
    let stored: Vec<(String, i64)> = answers
        .into_iter()
        .filter_map(|answer| match answer {
            RpcReply::Ok(message) => Some((message.client_message_id, message.seq)),
            RpcReply::Err(error) => {
                assert_eq!(error.code, ErrorCode::Forbidden, "{error:?}");
                None
            }
        })
        .collect();
    let expected: Vec<(String, i64)> = [("a1", 2), ("a2", 3), ("b1", 1), ("a3", 4), ("a4", 5), ("b2", 2), ("a5", 6)]
        .into_iter()
        .map(|(id, seq)| (id.to_owned(), seq))
        .collect();
    assert_eq!(stored, expected);
    let page = s
        .call::<GetMessages>(as_user(ben, GetMessagesRequest { conversation_id: dm, ..Default::default() }))
        .await
        .unwrap();
    let bodies: Vec<&str> = page.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["first", "a1", "a2", "a3", "a4", "a5"]);
    s.stop().await;
}

/// The byte budget counts bodies as JSON writes them: a control character is six bytes there, so 120 bodies of
/// 4,000 of them (480 KB stored, 2.9 MB in JSON) are more than one `sync` carries.
#[tokio::test]
async fn sync_counts_its_byte_budget_as_the_reply_is_written() {
    let s = Stack::start().await;
    let (ann, ben) = (s.user("ann").await, s.user("ben").await);
    let group = s.group(ann, "noisy", vec![ben]).await;
    let body = format!("x{}", "\u{1}".repeat(MAX_MESSAGE_CHARS - 1));
    let sends = (1..=120)
        .map(|i| {
            as_user(
                ann,
                SendMessageRequest {
                    conversation_id: Some(group.id),
                    to_user_id: None,
                    client_message_id: format!("n{i}"),
                    body: body.clone(),
                },
            )
        })
        .collect();
    let stored = s.call::<SendMessages>(SendBatch { sends }).await.unwrap().results;
    for result in &stored {
        if let RpcReply::Err(error) = result {
            panic!("a send was refused: {error:?}");
        }
    }

    let synced = s
        .call::<Sync>(as_user(ben, SyncRequest { heads: vec![Head { conversation_id: group.id, seq: 0 }] }))
        .await
        .unwrap();

    let written: usize = synced.messages.iter().map(|m| serde_json::to_string(&m.body).unwrap().len() - 2).sum();
    assert!(written <= SYNC_BODY_BYTES, "{written} bytes of bodies in one sync");
    assert!(!synced.messages.is_empty());
    let seqs: Vec<i64> = synced.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "a prefix of what the client lacks");
    assert_eq!(synced.truncated, [group.id]);
    s.stop().await;
}

/// Sends are stored in each sender's order, not the batch's: one user's first message to someone new, which waits
/// for the user-service, must not hold back another user's send in the same batch. A stand-in user-service (the
/// only part not real here) holds its answer about user 999 until the test lets it go.
#[tokio::test]
async fn one_senders_slow_first_message_holds_back_no_one_elses_send_in_the_batch() {
    use common::{
        amqp::RpcServer,
        protocol::users::{ResolveUsers, User},
    };
    use std::sync::Arc;

    common::telemetry::init_for_tests();
    let db = testing::TestDb::new().await;
    let amqp = testing::unique_amqp_settings();
    let stop = CancellationToken::new();
    let release = Arc::new(tokio::sync::Notify::new());
    let users_broker = Broker::start(&amqp, "stand-in user-service".into());
    let held = release.clone();
    let users = RpcServer::new(users_broker.clone(), "stand-in").handle::<ResolveUsers, _, _>(move |request, _| {
        let held = held.clone();
        async move {
            if request.ids.contains(&999) {
                held.notified().await;
            }
            Ok(request.ids.iter().map(|&id| User { id, username: format!("user{id}"), created_at: 0 }).collect())
        }
    });
    let messages = message_service::startup::Application::build(message_service::config::Settings::for_tests(
        &db.url(),
        amqp.clone(),
    ))
    .await
    .unwrap();
    let (a, b) = (stop.clone(), stop.clone());
    let users_task = tokio::spawn(async move { users.run(a).await });
    let messages_task = tokio::spawn(messages.run_until_stopped(async move { b.cancelled().await }));
    let broker = Broker::start(&amqp, "test".into());
    let client = RpcClient::start(broker.clone(), "test", &uuid::Uuid::new_v4().simple().to_string());
    testing::until_served(&client, &["resolveUsers", "sendMessages", "createGroup"], Duration::from_secs(20)).await;
    let ctx = || CallContext::new("test", Duration::from_secs(20));
    let (ann, ben, cat) = (1, 2, 3);
    let group = client
        .call::<CreateGroup>(
            &as_user(ben, CreateGroupRequest { title: "g".into(), member_ids: vec![ann, cat], client_group_id: None }),
            &ctx(),
        )
        .await
        .unwrap();
    let send = |user_id, conversation_id, to_user_id, id: &str, body: &str| {
        as_user(
            user_id,
            SendMessageRequest { conversation_id, to_user_id, client_message_id: id.into(), body: body.into() },
        )
    };
    let batch = SendBatch {
        sends: vec![
            send(ann, None, Some(999), "a1", "ann's first to someone new"),
            send(ben, Some(group.id), None, "b1", "ben's to the group"),
            send(ann, Some(group.id), None, "a2", "ann's second, after her first"),
        ],
    };
    let batch = {
        let client = client.clone();
        tokio::spawn(async move { client.call::<SendMessages>(&batch, &ctx()).await })
    };

    // Ben's send is stored while the user-service still holds its answer about ann's first.
    let page = GetMessagesRequest { conversation_id: group.id, ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stored = client.call::<GetMessages>(&as_user(cat, page.clone()), &ctx()).await.unwrap().messages;
        if !stored.is_empty() {
            let bodies: Vec<&str> = stored.iter().map(|m| m.body.as_str()).collect();
            assert_eq!(bodies, ["ben's to the group"], "ann's second must wait for her first");
            break;
        }
        assert!(Instant::now() < deadline, "ben's send waited for another sender's lookup");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!batch.is_finished());
    release.notify_one();
    let results = batch.await.unwrap().unwrap().results;
    let answered: Vec<(String, i64)> = results
        .into_iter()
        .map(|r| match r {
            RpcReply::Ok(m) => (m.client_message_id, m.seq),
            RpcReply::Err(e) => panic!("{e:?}"),
        })
        .collect();
    let expected: Vec<(String, i64)> = [("a1", 1), ("b1", 1), ("a2", 2)].map(|(id, seq)| (id.to_owned(), seq)).into();
    assert_eq!(answered, expected);

    stop.cancel();
    users_task.await.unwrap();
    messages_task.await.unwrap().unwrap();
    users_broker.close().await;
    broker.close().await;
    testing::delete_topology(&amqp.prefix).await;
}
