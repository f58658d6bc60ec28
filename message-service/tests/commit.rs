//! The group commit against the real PostgreSQL: dense seqs, exactly-once, no holes, no deadlocks, and batching
//! that is visible in the database's own transaction ids; and a group create's client id, which gives groups the
//! same exactly-once effect, under a race. Also that every statement of the service reads by key even when its plan
//! was made on empty tables.

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, Utc};
use common::{config::AmqpSettings, testing};
use message_service::{
    commit::{CommitConnection, Committed, Committer, Send, commit, commit_with_retries},
    domain::{ClientMessageId, MessageBody},
    events::EventSink,
    store::{GroupCreate, MemberChange, PageAnchor, PageRange, Store},
};
use tokio_postgres::NoTls;

struct Db {
    store: Store,
    db: testing::TestDb,
}

async fn database() -> Db {
    common::telemetry::init_for_tests();
    let db = testing::TestDb::new().await;
    message_service::migrate(&db.url()).await.unwrap();
    Db { store: store_on(&db), db }
}

fn store_on(db: &testing::TestDb) -> Store {
    Store::new(message_service::startup::pool(&db.url(), 8).unwrap())
}

/// What a second message-service replica's committer would hold: its own pool, its own commit connection.
async fn replica(db: &Db) -> CommitConnection {
    CommitConnection::open(&store_on(&db.db)).await.unwrap()
}

/// One batch on a connection of its own, as a committer's first batch would be.
async fn commit_once(store: &Store, sends: &[Send]) -> anyhow::Result<Committed> {
    commit(&CommitConnection::open(store).await?, sends).await
}

fn send(sender: i64, conversation: i64, client_id: &str, body: &str) -> Send {
    Send {
        sender_id: sender,
        conversation_id: conversation,
        client_message_id: ClientMessageId::parse(client_id.to_owned()).unwrap(),
        body: MessageBody::parse(body.to_owned()).unwrap(),
    }
}

/// A plain connection to the test database, for reading what was stored and for playing a concurrent writer.
async fn raw(db: &Db) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.db.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// A connection in a transaction that holds `conversation`'s row lock, as a writer of it does until it commits.
async fn holding_the_lock(db: &Db, conversation: i64) -> tokio_postgres::Client {
    let holder = raw(db).await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder.query("SELECT 1 FROM messages.conversations WHERE id = $1 FOR UPDATE", &[&conversation]).await.unwrap();
    holder
}

async fn seqs(db: &Db, conversation: i64) -> Vec<i64> {
    raw(db)
        .await
        .query("SELECT seq FROM messages.messages WHERE conversation_id = $1 ORDER BY seq", &[&conversation])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Transaction ids of the stored messages: rows written by one transaction share an `xmin`.
async fn transactions(db: &Db) -> Vec<String> {
    raw(db)
        .await
        .query("SELECT xmin::text FROM messages.messages ORDER BY conversation_id, seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn committer(store: &Store) -> Committer {
    patient_committer(store, Duration::from_secs(5))
}

/// A committer that waits `patience` for a lost database.
fn patient_committer(store: &Store, patience: Duration) -> Committer {
    // A broker nobody consumes from: events are published and dropped, which live push is allowed to do.
    let broker =
        common::amqp::Broker::start(&AmqpSettings::new(&testing::amqp_url(), "test-unused-events"), "test".into());
    Committer::start(store.clone(), EventSink::new(broker), 512, 1024, patience)
}

#[tokio::test]
async fn a_batch_gets_dense_seqs_in_arrival_order() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[2]).await.unwrap().id;

    let batch = [send(1, group, "a", "one"), send(2, group, "b", "two"), send(1, group, "c", "three")];
    let committed = commit_once(&db.store, &batch).await.unwrap();

    let got: Vec<(i64, String)> = committed.results.into_iter().map(|r| r.unwrap()).map(|m| (m.seq, m.body)).collect();
    assert_eq!(got, [(1, "one".to_owned()), (2, "two".to_owned()), (3, "three".to_owned())]);
    assert_eq!(committed.fresh, 3);
    assert_eq!(seqs(&db, group).await, [1, 2, 3]);
}

#[tokio::test]
async fn sending_twice_with_the_same_client_id_stores_one_message() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[]).await.unwrap().id;

    let first = commit_once(&db.store, &[send(1, group, "same", "hello")]).await.unwrap();
    let again = commit_once(&db.store, &[send(1, group, "same", "hello")]).await.unwrap();

    assert_eq!(first.results[0], again.results[0]);
    assert_eq!(again.fresh, 0);
    assert_eq!(seqs(&db, group).await, [1]);
}

#[tokio::test]
async fn a_repeat_inside_one_batch_leaves_no_hole() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[]).await.unwrap().id;

    let committed =
        commit_once(&db.store, &[send(1, group, "x", "a"), send(1, group, "x", "a"), send(1, group, "y", "b")])
            .await
            .unwrap();
    let next = commit_once(&db.store, &[send(1, group, "z", "c")]).await.unwrap();

    let got: Vec<i64> = committed.results.iter().map(|r| r.as_ref().unwrap().seq).collect();
    assert_eq!(got, [1, 1, 2]);
    assert_eq!(next.results[0].as_ref().unwrap().seq, 3);
    assert_eq!(seqs(&db, group).await, [1, 2, 3]);
}

#[tokio::test]
async fn a_repeat_of_an_already_stored_send_leaves_no_hole() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[]).await.unwrap().id;
    commit_once(&db.store, &[send(1, group, "x", "a")]).await.unwrap();

    let committed = commit_once(&db.store, &[send(1, group, "x", "a"), send(1, group, "y", "b")]).await.unwrap();

    let got: Vec<i64> = committed.results.iter().map(|r| r.as_ref().unwrap().seq).collect();
    assert_eq!(got, [1, 2]);
    assert_eq!(seqs(&db, group).await, [1, 2]);
}

/// A client message id is the sender's across all their conversations. Reused for another message (another
/// conversation, or another body), it is refused with `conflict` rather than answered with the first message
/// while the new one is silently not stored; a true retry still gets the original.
#[tokio::test]
async fn a_client_id_reused_for_another_message_is_refused_and_a_retry_still_answered() {
    use common::protocol::ErrorCode;
    let db = database().await;
    let first = db.store.create_group(1, "first", &[]).await.unwrap().id;
    let second = db.store.create_group(1, "second", &[]).await.unwrap().id;
    let stored = commit_once(&db.store, &[send(1, first, "m1", "hello")]).await.unwrap();
    let original = stored.results[0].as_ref().unwrap().clone();

    let again = commit_once(
        &db.store,
        &[send(1, second, "m1", "hello"), send(1, first, "m1", "hello, edited"), send(1, first, "m1", "hello")],
    )
    .await
    .unwrap();

    assert_eq!(again.results[0].as_ref().unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(again.results[1].as_ref().unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(again.results[2].as_ref().unwrap(), &original);
    assert_eq!(again.fresh, 0);
    // Only the retry's event goes out again (for a redelivered request); the refused ones announce nothing.
    assert_eq!(again.events.len(), 1);
    assert_eq!(seqs(&db, first).await, [1]);
    assert!(seqs(&db, second).await.is_empty());
}

#[tokio::test]
async fn a_non_members_send_fails_alone_and_takes_no_seq() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[2]).await.unwrap().id;

    let committed =
        commit_once(&db.store, &[send(1, group, "a", "in"), send(99, group, "b", "out"), send(2, group, "c", "in")])
            .await
            .unwrap();

    assert_eq!(committed.results[0].as_ref().unwrap().seq, 1);
    assert_eq!(committed.results[1].as_ref().unwrap_err().code, common::protocol::ErrorCode::Forbidden);
    assert_eq!(committed.results[2].as_ref().unwrap().seq, 2);
    let missing = commit_once(&db.store, &[send(1, 424_242, "d", "nowhere")]).await.unwrap();
    assert_eq!(missing.results[0].as_ref().unwrap_err().code, common::protocol::ErrorCode::Forbidden);
}

/// A retry is answered with the stored message even when its sender was removed after the first attempt was
/// stored (the answer to that attempt was lost): acknowledged, the same message for every attempt. The removed
/// sender gets nothing else: a new message, or another conversation's under that id, is still refused.
#[tokio::test]
async fn a_retry_after_the_sender_was_removed_gets_the_stored_message_and_nothing_new_is_stored() {
    use common::protocol::ErrorCode;
    let db = database().await;
    let group = db.store.create_group(1, "g", &[2]).await.unwrap().id;
    let other = db.store.create_group(1, "other", &[]).await.unwrap().id;
    let stored = commit_once(&db.store, &[send(2, group, "m1", "hello")]).await.unwrap();
    let original = stored.results[0].as_ref().unwrap().clone();
    raw(&db)
        .await
        .execute("DELETE FROM messages.members WHERE conversation_id = $1 AND user_id = 2", &[&group])
        .await
        .unwrap();

    let again = commit_once(
        &db.store,
        &[send(2, group, "m1", "hello"), send(2, group, "m2", "new"), send(2, other, "m1", "hello")],
    )
    .await
    .unwrap();

    assert_eq!(again.results[0].as_ref().unwrap(), &original);
    assert_eq!(again.results[1].as_ref().unwrap_err().code, ErrorCode::Forbidden);
    assert_eq!(again.results[2].as_ref().unwrap_err().code, ErrorCode::Forbidden);
    assert_eq!(again.fresh, 0);
    assert_eq!(seqs(&db, group).await, [1]);
    assert!(seqs(&db, other).await.is_empty());
}

#[tokio::test]
async fn each_send_is_answered_with_its_message_and_events_go_to_the_members_of_the_batchs_conversations() {
    let db = database().await;
    let chat = db.store.create_group(1, "chat", &[3, 2]).await.unwrap().id;
    let elsewhere = db.store.create_group(1, "elsewhere", &[]).await.unwrap().id;
    let closed = db.store.create_group(3, "closed", &[]).await.unwrap().id;
    let original = commit_once(&db.store, &[send(1, elsewhere, "k", "original")]).await.unwrap().results[0].clone();

    let batch = [
        // A client id reused in another conversation, for another message: refused (conflict).
        send(1, chat, "k", "reused id"),
        // Not a member: refused, and its client id stays free for the next send.
        send(2, closed, "d", "not a member"),
        send(2, chat, "d", "member here"),
        send(3, chat, "e", "fresh"),
        // A repeat inside the batch: the same message again.
        send(3, chat, "e", "fresh"),
    ];
    let committed = commit_once(&db.store, &batch).await.unwrap();

    assert_eq!(committed.results[0].as_ref().unwrap_err().code, common::protocol::ErrorCode::Conflict);
    assert_eq!(seqs(&db, elsewhere).await, [original.unwrap().seq]);
    assert_eq!(committed.results[1].as_ref().unwrap_err().code, common::protocol::ErrorCode::Forbidden);
    let stored: Vec<(i64, i64, i64, String)> = committed.results[2..]
        .iter()
        .map(|r| r.as_ref().unwrap())
        .map(|m| (m.conversation_id, m.seq, m.sender_id, m.body.clone()))
        .collect();
    assert_eq!(
        stored,
        [(chat, 1, 2, "member here".to_owned()), (chat, 2, 3, "fresh".to_owned()), (chat, 2, 3, "fresh".to_owned())]
    );
    assert_eq!(committed.fresh, 2);
    // Events for the messages of the batch's conversations, to their members in id order; none for the original
    // elsewhere (its sender has it, and its conversation's members are not known here).
    let events: Vec<(i64, i64, Vec<i64>)> = committed
        .events
        .iter()
        .map(|event| match event {
            common::protocol::messages::Event::Message { message, recipients } => {
                (message.conversation_id, message.seq, recipients.clone())
            }
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(events, [(chat, 1, vec![1, 2, 3]), (chat, 2, vec![1, 2, 3]), (chat, 2, vec![1, 2, 3])]);
    // The conversation moved on; what each sender sent, they have read.
    let client = raw(&db).await;
    let last_seq: i64 =
        client.query_one("SELECT last_seq FROM messages.conversations WHERE id = $1", &[&chat]).await.unwrap().get(0);
    assert_eq!(last_seq, 2);
    let reads: Vec<(i64, i64)> = client
        .query("SELECT user_id, read_seq FROM messages.members WHERE conversation_id = $1 ORDER BY user_id", &[&chat])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(reads, [(1, 0), (2, 1), (3, 2)]);
}

#[tokio::test]
async fn a_member_removed_while_the_batch_waits_for_the_lock_is_refused() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[2]).await.unwrap().id;
    // A membership change in progress: it holds the conversation's lock, as the real ones do.
    let holder = holding_the_lock(&db, group).await;
    holder.execute("DELETE FROM messages.members WHERE conversation_id = $1 AND user_id = 2", &[&group]).await.unwrap();

    let connection = CommitConnection::open(&db.store).await.unwrap();
    let batch = [send(2, group, "late", "after removal"), send(1, group, "ok", "still a member")];
    let waiting = tokio::spawn(async move { commit(&connection, &batch).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the batch waits for the conversation's lock");
    holder.batch_execute("COMMIT").await.unwrap();

    let committed = waiting.await.unwrap().unwrap();
    assert_eq!(committed.results[0].as_ref().unwrap_err().code, common::protocol::ErrorCode::Forbidden);
    assert_eq!(committed.results[1].as_ref().unwrap().seq, 1);
    let common::protocol::messages::Event::Message { recipients, .. } = &committed.events[0] else {
        panic!("a message event: {:?}", committed.events)
    };
    assert_eq!(recipients, &[1], "the removed member no longer receives");
}
/// The stored time of a message and its conversation's last activity, as PostgreSQL has them (microseconds).
async fn times(db: &Db, conversation: i64, seq: i64) -> (DateTime<Utc>, DateTime<Utc>) {
    let row = raw(db)
        .await
        .query_one(
            "SELECT m.sent_at, c.last_activity_at FROM messages.messages m
               JOIN messages.conversations c ON c.id = m.conversation_id
              WHERE m.conversation_id = $1 AND m.seq = $2",
            &[&conversation, &seq],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn a_batch_that_waited_for_the_lock_is_stamped_after_the_writer_it_waited_for() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[2]).await.unwrap().id;
    // Another writer of the conversation (a second replica's batch, a member add) holds its lock.
    let holder = holding_the_lock(&db, group).await;

    let connection = CommitConnection::open(&db.store).await.unwrap();
    let batch = [send(1, group, "waited", "queued behind the lock")];
    let waiting = tokio::spawn(async move { commit(&connection, &batch).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the batch waits for the conversation's lock");
    // The other writer's last moment: whatever it stamped is at or before this.
    let released: DateTime<Utc> = holder.query_one("SELECT clock_timestamp()", &[]).await.unwrap().get(0);
    holder.batch_execute("COMMIT").await.unwrap();

    let message = waiting.await.unwrap().unwrap().results.remove(0).unwrap();
    let (sent_at, active_at) = times(&db, group, message.seq).await;
    assert!(sent_at > released, "stamped {sent_at} when it got the lock, not before it queued ({released} released)");
    assert_eq!(active_at, sent_at, "the conversation's activity is its last message");
    assert_eq!(message.sent_at, sent_at.timestamp_millis(), "the answer carries the stored time");
}

#[tokio::test]
async fn times_in_a_conversation_never_move_back() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[2]).await.unwrap().id;
    let other = db.store.create_group(1, "h", &[]).await.unwrap().id;
    // Activity stamped later than this batch's clock reads: a database clock stepped back, or a replica of an
    // earlier release that stamped with its own, faster clock.
    let ahead: DateTime<Utc> = raw(&db)
        .await
        .query_one(
            "UPDATE messages.conversations SET last_activity_at = clock_timestamp() + interval '1 hour'
              WHERE id = $1 RETURNING last_activity_at",
            &[&group],
        )
        .await
        .unwrap()
        .get(0);

    let batch = [send(1, group, "a", "one"), send(2, group, "b", "two"), send(1, other, "c", "three")];
    let stored: Vec<_> =
        commit_once(&db.store, &batch).await.unwrap().results.into_iter().map(|r| r.unwrap()).collect();
    for message in &stored[..2] {
        let (sent_at, active_at) = times(&db, group, message.seq).await;
        assert_eq!(sent_at, ahead, "message {} is not stamped before the activity already stored", message.seq);
        assert_eq!(active_at, ahead, "the conversation's activity did not move back");
    }
    // The batch's other conversation has no such activity: it is stamped with the clock, not with that time.
    let (sent_at, _) = times(&db, other, stored[2].seq).await;
    assert!(sent_at < ahead, "{sent_at} comes from the clock");
}

#[tokio::test]
async fn a_batch_that_fails_takes_no_seq_and_leaves_its_connection_usable() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[]).await.unwrap().id;
    // A constraint the test owns makes one body fail inside the transaction, after the seqs were allocated.
    raw(&db)
        .await
        .batch_execute("ALTER TABLE messages.messages ADD CONSTRAINT test_no_poison CHECK (body <> 'poison')")
        .await
        .unwrap();
    let connection = CommitConnection::open(&db.store).await.unwrap();

    commit(&connection, &[send(1, group, "a", "one")]).await.unwrap();
    let failed = commit(&connection, &[send(1, group, "b", "two"), send(1, group, "c", "poison")]).await;
    assert!(failed.is_err(), "the check constraint fails the batch: {failed:?}");
    let after = commit(&connection, &[send(1, group, "b", "two")]).await.unwrap();

    assert_eq!(after.results[0].as_ref().unwrap().seq, 2, "the failed batch's seqs were not used up");
    assert_eq!(seqs(&db, group).await, vec![1, 2]);
}

#[tokio::test]
async fn a_batch_that_cannot_lock_its_conversation_fails_and_leaves_its_connection_usable() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[]).await.unwrap().id;
    let holder = raw(&db).await;
    let name: String = holder.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    holder.batch_execute(&format!("ALTER DATABASE \"{name}\" SET lock_timeout = '200ms'")).await.unwrap();
    // A new pool: its first connection starts after the setting (the old pool's would not have it).
    let connection = CommitConnection::open(&store_on(&db.db)).await.unwrap();

    // Another transaction holds the conversation's row lock: the batch's first round trip fails.
    holder.batch_execute("BEGIN").await.unwrap();
    holder.execute("SELECT 1 FROM messages.conversations WHERE id = $1 FOR UPDATE", &[&group]).await.unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(10), commit(&connection, &[send(1, group, "a", "waits")]))
        .await
        .expect("the lock wait is bounded by lock_timeout");
    assert!(failed.is_err(), "the lock wait times out: {failed:?}");
    holder.batch_execute("ROLLBACK").await.unwrap();

    // Had the failed transaction been left open, this would fail with "current transaction is aborted".
    let after = commit(&connection, &[send(1, group, "a", "waits")]).await.unwrap();
    assert_eq!(after.results[0].as_ref().unwrap().seq, 1);
    assert_eq!(seqs(&db, group).await, vec![1]);
}

#[tokio::test]
async fn two_replicas_racing_on_the_same_client_id_store_one_message() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[]).await.unwrap().id;
    let (replica_a, replica_b) = (replica(&db).await, replica(&db).await);

    for round in 0..20 {
        let id = format!("race-{round}");
        let batch = [send(1, group, &id, "hi")];
        let (a, b) = tokio::join!(commit_with_retries(&replica_a, &batch), commit_with_retries(&replica_b, &batch));
        assert_eq!(a.unwrap().results, b.unwrap().results, "round {round}");
    }

    assert_eq!(seqs(&db, group).await, (1..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_client_id_reused_across_conversations_by_racing_replicas_stores_one_and_refuses_the_other() {
    let db = database().await;
    let one = db.store.create_group(1, "one", &[]).await.unwrap().id;
    let two = db.store.create_group(1, "two", &[]).await.unwrap().id;
    let (replica_a, replica_b) = (replica(&db).await, replica(&db).await);

    for round in 0..20 {
        let id = format!("reuse-{round}");
        let (to_one, to_two) = ([send(1, one, &id, "to one")], [send(1, two, &id, "to two")]);
        let (a, b) = tokio::join!(commit_with_retries(&replica_a, &to_one), commit_with_retries(&replica_b, &to_two));
        let (a, b) = (a.unwrap().results.remove(0), b.unwrap().results.remove(0));
        let codes = [&a, &b].map(|r| r.as_ref().err().map(|e| e.code));
        assert!(
            matches!(
                codes,
                [None, Some(common::protocol::ErrorCode::Conflict)]
                    | [Some(common::protocol::ErrorCode::Conflict), None]
            ),
            "round {round}: one stored, the other refused: {a:?} / {b:?}"
        );
    }

    let total = seqs(&db, one).await.len() + seqs(&db, two).await.len();
    assert_eq!(total, 20);
    for conversation in [one, two] {
        let stored = seqs(&db, conversation).await;
        assert_eq!(stored, (1..=stored.len() as i64).collect::<Vec<_>>(), "dense in {conversation}");
    }
}

#[tokio::test]
async fn batches_touching_the_same_conversations_in_opposite_orders_do_not_deadlock() {
    let db = database().await;
    let one = db.store.create_group(1, "one", &[]).await.unwrap().id;
    let two = db.store.create_group(1, "two", &[]).await.unwrap().id;
    let (replica_a, replica_b) = (replica(&db).await, replica(&db).await);

    for round in 0..30 {
        let forward = [send(1, one, &format!("f1-{round}"), "a"), send(1, two, &format!("f2-{round}"), "b")];
        let backward = [send(1, two, &format!("b2-{round}"), "c"), send(1, one, &format!("b1-{round}"), "d")];
        let (a, b) = tokio::join!(commit(&replica_a, &forward), commit(&replica_b, &backward));
        assert!(a.is_ok() && b.is_ok(), "round {round}: {a:?} {b:?}");
    }

    assert_eq!(seqs(&db, one).await, (1..=60).collect::<Vec<_>>());
    assert_eq!(seqs(&db, two).await, (1..=60).collect::<Vec<_>>());
}

#[tokio::test]
async fn concurrent_sends_share_transactions_and_a_lone_send_is_committed_alone() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[]).await.unwrap().id;
    let committer = committer(&db.store);

    let lone = committer.send(send(1, group, "lone", "first")).await.unwrap();
    assert_eq!(lone.seq, 1);
    assert_eq!(committer.stats().largest_batch.load(std::sync::atomic::Ordering::Relaxed), 1);

    let sends = (0..200).map(|i| {
        let committer = committer.clone();
        async move { committer.send(send(1, group, &format!("c{i}"), "burst")).await.unwrap() }
    });
    let messages = futures_util::future::join_all(sends).await;

    let mut got: Vec<i64> = messages.iter().map(|m| m.seq).collect();
    got.sort_unstable();
    assert_eq!(got, (2..=201).collect::<Vec<_>>());
    let xids = transactions(&db).await;
    let distinct: HashSet<&String> = xids.iter().collect();
    assert!(distinct.len() < 100, "201 messages in {} transactions: no batching", distinct.len());
    assert!(committer.stats().largest_batch.load(std::sync::atomic::Ordering::Relaxed) > 1);
    assert_ne!(xids[0], xids[1], "the lone send had a transaction of its own");
}

/// The commit function came in a migration; a rolling upgrade runs replicas of both releases against one schema.
#[tokio::test]
async fn a_replica_of_the_previous_release_starts_against_a_schema_a_newer_one_migrated() {
    let db = database().await;
    raw(&db)
        .await
        .batch_execute(
            "INSERT INTO messages._sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (99999999, 'from a newer release', true, '\\x00', 0)",
        )
        .await
        .unwrap();

    message_service::migrate(&db.db.url()).await.expect("an older replica still starts");
}

/// A PostgreSQL restart as its clients see it: the committer's connection is terminated and no new one is let in
/// for a while. Sends made meanwhile wait and are committed once the database is back, with no hole in the seqs.
#[tokio::test]
async fn sends_wait_out_a_database_outage_and_are_committed_when_it_ends() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[]).await.unwrap().id;
    let committer = committer(&db.store);
    assert_eq!(committer.send(send(1, group, "before", "before")).await.unwrap().seq, 1);

    assert!(db.db.begin_outage().await >= 1, "the committer's connection was not open: nothing was tested");
    let during: Vec<_> = (0..3)
        .map(|i| {
            let committer = committer.clone();
            tokio::spawn(async move { committer.send(send(1, group, &format!("during-{i}"), "during")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(during.iter().all(|send| !send.is_finished()), "a send was answered while the database was away");
    db.db.end_outage().await;

    let mut stored: Vec<i64> = Vec::new();
    for send in during {
        stored.push(send.await.unwrap().expect("committed once the database was back").seq);
    }
    stored.sort_unstable();
    assert_eq!(stored, [2, 3, 4]);
    assert_eq!(committer.send(send(1, group, "after", "after")).await.unwrap().seq, 5);
    assert_eq!(seqs(&db, group).await, [1, 2, 3, 4, 5]);
}

/// An outage longer than the committer's patience refuses the batch as `unavailable` (retryable, and not an
/// unexpected failure for the RPC server to retry); the committer serves again once the database is back.
#[tokio::test]
async fn a_database_outage_longer_than_the_patience_is_answered_unavailable() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[]).await.unwrap().id;
    let committer = patient_committer(&db.store, Duration::from_millis(300));
    committer.send(send(1, group, "before", "before")).await.unwrap();

    db.db.begin_outage().await;
    let refused = committer.send(send(1, group, "during", "during")).await.unwrap_err();
    db.db.end_outage().await;

    assert_eq!(refused.code, common::protocol::ErrorCode::Unavailable, "{refused:?}");
    let retried = committer.send(send(1, group, "during", "during")).await.expect("served again after the outage");
    assert_eq!(retried.seq, 2, "the refused send was not stored, so its retry takes the next seq");
    assert_eq!(seqs(&db, group).await, [1, 2]);
}

/// The committer reads rows of `messages.commit_sends`; a replica meeting rows it cannot read (a bug, or a newer
/// release's migration during a rolling upgrade) panics reading them. That fails the batch, not the committer:
/// the next batch, once the rows are readable again, is committed.
#[tokio::test]
async fn a_batch_whose_rows_cannot_be_read_fails_alone_and_the_committer_goes_on() {
    const ARGS: &str = "BIGINT[], BIGINT[], TEXT[], TEXT[], TIMESTAMPTZ";
    let db = database().await;
    let group = db.store.create_group(1, "g", &[]).await.unwrap().id;
    let sql = raw(&db).await;
    sql.batch_execute(&format!(
        "ALTER FUNCTION messages.commit_sends({ARGS}) RENAME TO commit_sends_real;
         CREATE FUNCTION messages.commit_sends(c BIGINT[], s BIGINT[], i TEXT[], b TEXT[], at TIMESTAMPTZ)
         RETURNS TABLE (ord BIGINT, fresh BOOLEAN, conversation_id BIGINT, seq TEXT, sender_id BIGINT,
                        client_message_id TEXT, body TEXT, sent_at TIMESTAMPTZ, recipients BIGINT[])
         LANGUAGE sql AS $$ SELECT 1::BIGINT, true, c[1], 'one', s[1], i[1], b[1], at, NULL::BIGINT[] $$;"
    ))
    .await
    .unwrap();
    let committer = committer(&db.store);

    let failed = committer.send(send(1, group, "unreadable", "x")).await.unwrap_err();
    assert_eq!(failed.code, common::protocol::ErrorCode::Internal, "{failed:?}");

    sql.batch_execute(&format!(
        "DROP FUNCTION messages.commit_sends({ARGS});
         ALTER FUNCTION messages.commit_sends_real({ARGS}) RENAME TO commit_sends;"
    ))
    .await
    .unwrap();
    let stored = committer.send(send(1, group, "readable", "y")).await.expect("the committer still commits");
    assert_eq!(stored.seq, 1);
    assert_eq!(seqs(&db, group).await, [1]);
}

/// Passes bytes between clients and PostgreSQL until told to go silent; then it keeps every connection open and
/// passes nothing on, in either direction: what the committer sees when the server's host vanishes (a failover)
/// without resetting its connections.
struct Blackhole {
    url: String,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Blackhole {
    async fn before(db: &testing::TestDb) -> Blackhole {
        use tokio::net::{TcpListener, TcpStream};
        let url = db.url();
        let config: tokio_postgres::Config = url.parse().unwrap();
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(host) => host.clone(),
            other => panic!("the test database is not on TCP: {other:?}"),
        };
        let server = format!("{host}:{}", config.get_ports().first().copied().unwrap_or(5432));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxied = url.replacen(&server, &listener.local_addr().unwrap().to_string(), 1);
        assert_ne!(proxied, url, "the database URL does not name {server}");
        let silent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = silent.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(&server).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = upstream.into_split();
                tokio::spawn(pass(client_read, server_write, flag.clone()));
                tokio::spawn(pass(server_read, client_write, flag.clone()));
            }
        });
        Blackhole { url: proxied, silent }
    }

    fn go_silent(&self, silent: bool) {
        self.silent.store(silent, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0; 16 * 1024];
    while let Ok(read) = from.read(&mut buffer).await {
        // Silent for good: what arrives is swallowed, and the connection stays open.
        if read == 0 || silent.load(std::sync::atomic::Ordering::SeqCst) {
            if read == 0 {
                return;
            }
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// A database that stops answering without closing anything must not hold the committer: the batch in flight
/// is given up on within the patience (`unavailable`), and once the database answers again the next batch is
/// committed on a new connection.
#[tokio::test]
async fn a_database_that_stops_answering_is_given_up_on_within_the_patience() {
    let db = database().await;
    let group = db.store.create_group(1, "g", &[]).await.unwrap().id;
    let blackhole = Blackhole::before(&db.db).await;
    let store = Store::new(message_service::startup::pool(&blackhole.url, 2).unwrap());
    let committer = patient_committer(&store, Duration::from_millis(800));
    assert_eq!(committer.send(send(1, group, "before", "before")).await.unwrap().seq, 1);

    blackhole.go_silent(true);
    let refused = tokio::time::timeout(Duration::from_secs(10), committer.send(send(1, group, "during", "during")))
        .await
        .expect("the committer waited on a silent database for good")
        .unwrap_err();
    assert_eq!(refused.code, common::protocol::ErrorCode::Unavailable, "{refused:?}");

    blackhole.go_silent(false);
    let next = tokio::time::timeout(Duration::from_secs(10), committer.send(send(1, group, "after", "after")))
        .await
        .expect("the committer is stuck")
        .expect("committed once the database answers");
    assert_eq!(next.seq, 2, "the send cut off while the database was silent was not stored");
    assert_eq!(seqs(&db, group).await, [1, 2]);
}

/// Two creates with one client id racing (two replicas serving a retry while the first call is still running):
/// the one that commits second waits for the first, finds its group and drops its own, so the creator ends up
/// with one group.
#[tokio::test]
async fn a_create_racing_one_with_the_same_client_id_returns_the_first_group() {
    let db = database().await;
    // The first create, held open just after recording its id.
    let mut first = raw(&db).await;
    let tx = first.transaction().await.unwrap();
    let group: i64 = tx
        .query_one("INSERT INTO messages.conversations (kind, title) VALUES ('group', 'club') RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    tx.execute("INSERT INTO messages.members (conversation_id, user_id) VALUES ($1, 1), ($1, 2)", &[&group])
        .await
        .unwrap();
    tx.execute(
        "INSERT INTO messages.group_requests (creator_id, client_group_id, conversation_id, title, member_ids)
         VALUES (1, 'k', $1, 'club', ARRAY[2]::bigint[])",
        &[&group],
    )
    .await
    .unwrap();

    let store = db.store.clone();
    let second = tokio::spawn(async move { store.create_group_once(1, "k", "club", &[2]).await });
    // The second has made its own group and now waits on the first's id.
    let watcher = raw(&db).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while watcher
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%group_requests%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "the second create never waited for the first");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.commit().await.unwrap();

    let outcome = tokio::time::timeout(Duration::from_secs(10), second).await.unwrap().unwrap().unwrap();
    let GroupCreate::Repeated(conversation) = outcome else { panic!("expected the first group, got {outcome:?}") };
    assert_eq!(conversation.id, group);
    assert_eq!(conversation.members, [1, 2]);
    let groups: i64 = watcher
        .query_one("SELECT count(*) FROM messages.conversations WHERE kind = 'group'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(groups, 1, "the second create's own group was kept");
}

/// What the statistics say the service's tables gave up since the database was created.
#[derive(Debug)]
struct Reads {
    /// Rows read by sequential scans plus index entries read, over the `messages` schema's tables.
    rows: i64,
    /// Index scans of `messages`.
    message_index_scans: i64,
    /// Rows inserted into `messages`.
    messages_inserted: i64,
}

/// [`Reads`] as reported so far: `flush` pushes its own pending counts first; with `everyone`, it first waits for
/// every other backend of the database to exit (a backend reports on exit, before it leaves `pg_stat_activity`).
async fn reads(flush: &tokio_postgres::Client, everyone: bool) -> Reads {
    if everyone {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let others: i64 = flush
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if others == 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{others} other backends still connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    flush.batch_execute("SELECT pg_stat_force_next_flush()").await.unwrap();
    let row = flush
        .query_one(
            "SELECT ((SELECT sum(seq_tup_read) FROM pg_stat_user_tables
                       WHERE schemaname = 'messages' AND relname <> '_sqlx_migrations')
                   + (SELECT sum(idx_tup_read) FROM pg_stat_user_indexes
                       WHERE schemaname = 'messages' AND relname <> '_sqlx_migrations'))::bigint,
                    t.idx_scan, t.n_tup_ins
               FROM pg_stat_user_tables t WHERE t.schemaname = 'messages' AND t.relname = 'messages'",
            &[],
        )
        .await
        .unwrap();
    Reads { rows: row.get(0), message_index_scans: row.get(1), messages_inserted: row.get(2) }
}

/// Every statement the service runs, a little of each, more than once (a pooled statement's plan turns generic at
/// its sixth run, the committer's at its first).
async fn every_statement(store: &Store, committer: &CommitConnection, direct: i64, group: i64, round: i64) {
    let sends = [
        send(1, direct, &format!("d{round}"), "hello"),
        send(3, group, &format!("g{round}"), "hi all"),
        send(1, direct, &format!("d{round}"), "hello"),
    ];
    let committed = commit(committer, &sends).await.unwrap();
    assert!(committed.results.iter().all(Result::is_ok), "round {round}: {:?}", committed.results);
    assert_eq!(committed.fresh, 2, "round {round}: the repeat is the same message");
    let seq = round + 1;
    let latest = PageRange::new(PageAnchor::Latest, 50, seq);
    assert_eq!(store.page(group, latest).await.unwrap().messages.len() as i64, seq);
    assert_eq!(store.membership(2, direct).await.unwrap(), Some((seq, 0)));
    assert_eq!(store.ranges(&[(direct, 1, seq), (group, seq, seq)]).await.unwrap().len() as i64, seq + 1);
    assert_eq!(store.list(2, None, 50).await.unwrap().0.len(), 2);
    assert_eq!(store.unlisted(3, &[(direct, 0), (group, 0)]).await.unwrap().removed, [direct]);
    assert_eq!(store.entries(3, &[group]).await.unwrap().len(), 1);
    assert!(store.entry(2, group).await.unwrap().is_some());
    assert!(store.conversation(direct).await.unwrap().is_some());
    assert_eq!(store.direct(2, 1).await.unwrap().0.id, direct, "the pair's conversation, not a new one");
    assert_eq!(store.find_direct(2, 1).await.unwrap(), Some(direct));
    assert_eq!(store.mark_read(2, group, seq).await.unwrap(), Some(seq));
    let again = store.create_group_once(1, "k", "club", &[2, 3]).await.unwrap();
    assert!(matches!(again, GroupCreate::Repeated(ref c) if c.id == group), "{again:?}");
    store.change_members(1, group, MemberChange::Add(&[4])).await.unwrap().unwrap();
    store.change_members(1, group, MemberChange::Remove(4)).await.unwrap().unwrap();
}

/// A plan is kept for a connection's life (the committer's generic from its first batch). One made while the
/// tables were small must still read by key once they have grown: a plan that scans a table goes on scanning it,
/// for every batch, until something replaces the plan. So: the service's own pool, every statement made generic
/// at once on empty tables and run, then the tables grown behind its back (no `ANALYZE`), then every statement
/// again with the plans it made; what that last round reads must not grow with the tables.
///
/// Tables *analyzed* while empty are not covered: their statistics say zero rows, and the plans made from them
/// walk whole indexes. Autovacuum re-analyzes them after 50 changes, which replaces those plans
/// (docs/OPERATIONS.md).
#[tokio::test]
async fn plans_made_on_empty_tables_still_read_by_key_once_the_tables_grow() {
    let db = database().await;
    let watcher = raw(&db).await;
    let store = Store::new(message_service::startup::pool(&db.db.url(), 1).unwrap());
    let committer = CommitConnection::open(&store).await.unwrap();
    store.pool().get().await.unwrap().batch_execute("SET plan_cache_mode = force_generic_plan").await.unwrap();
    let (direct, _) = store.direct(1, 2).await.unwrap();
    let GroupCreate::Created(group) = store.create_group_once(1, "k", "club", &[2, 3]).await.unwrap() else {
        panic!("a first create makes the group")
    };
    const ROUNDS: i64 = 7;
    for round in 0..ROUNDS - 1 {
        every_statement(&store, &committer, direct.id, group.id, round).await;
    }

    // 300 more conversations of two other users each, 100 messages in each.
    const GROWN: i64 = 30_000;
    watcher
        .batch_execute(
            "INSERT INTO messages.conversations (kind, direct_low, direct_high, last_seq)
             SELECT 'direct', 1000 + g, 100000 + g, 100 FROM generate_series(1, 300) g;
             INSERT INTO messages.members (conversation_id, user_id)
             SELECT id, u FROM messages.conversations, LATERAL (VALUES (direct_low), (direct_high)) AS v(u)
              WHERE direct_low >= 1000;
             INSERT INTO messages.messages (conversation_id, seq, sender_id, client_message_id, body, sent_at)
             SELECT c.id, s, c.direct_low, c.id || '-' || s, 'filler', now()
               FROM messages.conversations c, generate_series(1, 100) s WHERE c.direct_low >= 1000;",
        )
        .await
        .unwrap();
    let grown = reads(&watcher, false).await;
    every_statement(&store, &committer, direct.id, group.id, ROUNDS - 1).await;
    drop(committer);
    store.pool().close();
    drop(store);
    let after = reads(&watcher, true).await;

    // Every backend reported (the committer's inserts, the pool's reads), so the counts below are whole.
    assert_eq!(after.messages_inserted, GROWN + 2 * ROUNDS, "{after:?}");
    assert!(after.message_index_scans > grown.message_index_scans, "{grown:?} {after:?}");
    // The last round reads some dozens of rows by key, plus whatever the rounds before it had not yet reported,
    // on tables of a few rows; one statement that read a whole table would read thousands.
    let read = after.rows - grown.rows;
    assert!(read < 1_000, "the last round read {read} rows of tables of {GROWN} messages: {grown:?} {after:?}");
}
