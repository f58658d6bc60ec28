//! Group commit: where a send becomes a durable, numbered message.
//!
//! Every `sendMessage` handler hands its (already validated) send to one committer task per replica and waits.
//! The committer takes whatever has queued up — never waiting for company: a lone send is committed at once — and
//! writes the whole batch in one transaction with `synchronous_commit = on`, so one fsync (~1.5 ms on our disks)
//! pays for the batch. While it commits, new sends queue, so batches grow with load by themselves.
//!
//! Inside the transaction, in this order (DESIGN.md §4, each step tested in tests/commit.rs):
//! 1. lock the batch's conversation rows **in id order** (`ORDER BY id FOR UPDATE`), so two replicas' batches
//!    touching the same conversations cannot deadlock;
//! 2. read their members (a non-member's send fails alone; the members are also the events' recipients, exact
//!    at commit because membership changes take the same lock);
//! 3. look up the batch's `(sender, client message id)` pairs **before** allocating any seq: a send already stored
//!    returns the original, and allocating first would leave a hole;
//! 4. allocate seqs from each conversation's `last_seq` in arrival order, insert all rows with one `unnest`, move
//!    `last_seq` forward.
//!
//! Two replicas racing on the same client id for the same conversation serialise on the conversation lock, and
//! the second finds the first's row in step 3. For different conversations (a client reusing an id) the second
//! insert hits the unique index; the batch is rolled back and retried, and step 3 then finds the winner.
//!
//! The committer runs on a connection of its own ([`CommitConnection`]) and sends these statements in two
//! pipelined round trips ([`commit`]); measured on the benchmark machine this took the delivery p50 at 1,000 msg/s
//! from 6.2 to 4.2 ms and PostgreSQL's CPU per message from 464 to 298 µs (docs/BENCHMARKS.md).
//!
//! Only after the commit are the callers answered and the events published (one AMQP message per batch); the RPC
//! server acks the requests after that, so a crash anywhere before leaves the request to be redelivered, and the
//! redelivery finds the stored message and publishes its event again.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use common::protocol::{
    ApiError,
    messages::{Event, Message},
};
use deadpool_postgres::{ClientWrapper, Object};
use tokio::sync::{mpsc, oneshot};

use crate::{
    domain::{ClientMessageId, MessageBody},
    events::EventSink,
    store::{MESSAGE_COLUMNS, Store, is_retryable, message_from},
};

/// How many times a batch is retried after a unique violation or a deadlock before its sends fail.
const MAX_ATTEMPTS: u32 = 4;

/// One validated send.
#[derive(Debug, Clone)]
pub struct Send {
    pub sender_id: i64,
    pub conversation_id: i64,
    pub client_message_id: ClientMessageId,
    pub body: MessageBody,
}

struct Pending {
    send: Send,
    reply: oneshot::Sender<Result<Message, ApiError>>,
}

/// Counters an operator (and a test) can read to see group commit at work.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub batches: AtomicU64,
    pub messages: AtomicU64,
    pub largest_batch: AtomicU64,
}

/// The handle handlers use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Committer {
    queue: mpsc::Sender<Pending>,
    stats: Arc<CommitStats>,
}

impl Committer {
    /// Starts the committer task. `max_batch` caps a transaction's size; `queue` bounds the sends waiting (the
    /// RPC server's prefetch already bounds them; this is the backstop).
    pub fn start(store: Store, events: EventSink, max_batch: usize, queue: usize) -> Committer {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let stats = Arc::new(CommitStats::default());
        tokio::spawn(run(store, events, rx, max_batch.max(1), stats.clone()));
        Committer { queue: tx, stats }
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Commits one send (with whatever else is queued) and returns the stored message.
    pub async fn send(&self, send: Send) -> Result<Message, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Pending { send, reply }).await.map_err(|_| ApiError::unavailable("shutting down"))?;
        answer.await.map_err(|_| ApiError::internal())?
    }
}

async fn run(
    store: Store,
    events: EventSink,
    mut queue: mpsc::Receiver<Pending>,
    max_batch: usize,
    stats: Arc<CommitStats>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut connection: Option<CommitConnection> = None;
    // `recv_many` returns as soon as at least one send is queued, with everything else already there.
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        let sends: Vec<Send> = batch.iter().map(|p| p.send.clone()).collect();
        let outcome = match take_connection(&mut connection, &store).await {
            Ok(open) => commit_with_retries(open, &sends).await,
            Err(error) => Err(error),
        };
        if connection.as_ref().is_some_and(CommitConnection::is_closed) {
            connection = None;
        }
        match outcome {
            Ok(committed) => {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.messages.fetch_add(committed.fresh as u64, Ordering::Relaxed);
                stats.largest_batch.fetch_max(batch.len() as u64, Ordering::Relaxed);
                tracing::debug!(batch = batch.len(), fresh = committed.fresh, "committed a batch");
                // Publish before answering: the RPC server acks a request only after its handler returns.
                if !committed.events.is_empty() {
                    events.publish(committed.events).await;
                }
                for (pending, result) in batch.drain(..).zip(committed.results) {
                    let _ = pending.reply.send(result);
                }
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), batch = batch.len(), "a batch failed to commit");
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(ApiError::internal()));
                }
            }
        }
    }
}

/// The committer's connection, opened first if there is none (at start, or after the last one was lost).
async fn take_connection<'a>(
    connection: &'a mut Option<CommitConnection>,
    store: &Store,
) -> anyhow::Result<&'a CommitConnection> {
    if connection.is_none() {
        *connection = Some(CommitConnection::open(store).await?);
    }
    connection.as_ref().context("no connection")
}

/// What one committed batch produced.
#[derive(Debug)]
pub struct Committed {
    /// One result per send, in order.
    pub results: Vec<Result<Message, ApiError>>,
    /// Events for every message the batch answered with (new ones and originals of repeats).
    pub events: Vec<Event>,
    /// How many messages this batch stored.
    pub fresh: usize,
}

pub async fn commit_with_retries(connection: &CommitConnection, sends: &[Send]) -> anyhow::Result<Committed> {
    let mut attempt = 1;
    loop {
        match commit(connection, sends).await {
            Err(error)
                if attempt < MAX_ATTEMPTS
                    && error.downcast_ref::<tokio_postgres::Error>().is_some_and(is_retryable) =>
            {
                tracing::info!(attempt, error = format!("{error:#}"), "retrying a batch");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Commits one batch in one transaction. See the module documentation for the order of steps and why.
///
/// The statements go out in two pipelined round trips (tokio-postgres sends a statement without waiting for the
/// answer to the one before when their futures are polled together): `BEGIN`, the lock, the members and the
/// lookup of stored sends; then the write and `COMMIT`. PostgreSQL still runs them one after another, each with a
/// snapshot taken when it starts, so the members and the stored sends are read after the lock is held, as before.
pub async fn commit(connection: &CommitConnection, sends: &[Send]) -> anyhow::Result<Committed> {
    let client = &connection.client;
    let outcome = commit_on(client, sends).await;
    if outcome.is_err() && !client.is_closed() {
        // Whatever failed, leave no transaction open on the connection (harmless when there is none).
        let _ = client.batch_execute("ROLLBACK").await;
    }
    outcome
}

async fn commit_on(client: &ClientWrapper, sends: &[Send]) -> anyhow::Result<Committed> {
    let mut conversation_ids: Vec<i64> = sends.iter().map(|s| s.conversation_id).collect();
    conversation_ids.sort_unstable();
    conversation_ids.dedup();
    let senders: Vec<i64> = sends.iter().map(|s| s.sender_id).collect();
    let client_ids: Vec<&str> = sends.iter().map(|s| s.client_message_id.as_str()).collect();

    // Prepared once per connection; after that these are lookups in the connection's statement cache.
    // 1. Lock the conversations in id order.
    let lock = client
        .prepare_cached("SELECT id, last_seq FROM messages.conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .await?;
    // 2. Their members.
    let members_sql = client
        .prepare_cached(
            "SELECT conversation_id, user_id FROM messages.members WHERE conversation_id = ANY($1)
              ORDER BY conversation_id, user_id",
        )
        .await?;
    // 3. Sends already stored (a retry, a redelivery, a second device racing the first).
    let dedup = client
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages.messages
              WHERE (sender_id, client_message_id) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))"
        ))
        .await?;
    let write = client.prepare_cached(WRITE).await?;

    // Round trip 1.
    let (_, locked, member_rows, stored_rows) = futures_util::try_join!(
        async { client.batch_execute("BEGIN").await.context("beginning a batch") },
        async { client.query(&lock, &[&conversation_ids]).await.context("locking the conversations") },
        async { client.query(&members_sql, &[&conversation_ids]).await.context("reading the members") },
        async { client.query(&dedup, &[&senders, &client_ids]).await.context("looking up stored sends") },
    )?;
    let mut last_seq: HashMap<i64, i64> = locked.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut members: HashMap<i64, Vec<i64>> = HashMap::new();
    for row in &member_rows {
        members.entry(row.get(0)).or_default().push(row.get(1));
    }
    let mut known: HashMap<(i64, String), Message> =
        stored_rows.iter().map(message_from).map(|m| ((m.sender_id, m.client_message_id.clone()), m)).collect();

    // 4. Allocate seqs in arrival order.
    // PostgreSQL keeps microseconds; round here so the answer equals what a later read returns.
    let now: DateTime<Utc> = Utc::now().trunc_subsecs(6);
    let mut results = Vec::with_capacity(sends.len());
    let mut events = Vec::new();
    let mut rows = Rows::default();
    for send in sends {
        let recipients = members.get(&send.conversation_id);
        if recipients.is_none_or(|m| m.binary_search(&send.sender_id).is_err()) {
            results.push(Err(ApiError::forbidden("you are not a member of that conversation")));
            continue;
        }
        let key = (send.sender_id, send.client_message_id.as_str().to_owned());
        let message = match known.get(&key) {
            Some(existing) => existing.clone(),
            None => {
                let Some(seq) = last_seq.get_mut(&send.conversation_id) else {
                    results.push(Err(ApiError::forbidden("you are not a member of that conversation")));
                    continue;
                };
                *seq += 1;
                let message = Message {
                    conversation_id: send.conversation_id,
                    seq: *seq,
                    sender_id: send.sender_id,
                    client_message_id: send.client_message_id.as_str().to_owned(),
                    body: send.body.as_str().to_owned(),
                    sent_at: now.timestamp_millis(),
                };
                rows.push(&message, now);
                known.insert(key, message.clone());
                message
            }
        };
        // The original of a repeat may live in a conversation outside this batch; its recipients are then
        // unknown here, and the client has it already (it is the sender's own message).
        if let Some(recipients) = members.get(&message.conversation_id) {
            events.push(Event::Message { message: message.clone(), recipients: recipients.clone() });
        }
        results.push(Ok(message));
    }

    // Round trip 2: write (rows, last_seq, the senders' read positions) and commit. When the write fails, the
    // pipelined COMMIT finds the transaction aborted and rolls it back; the write's error is the one returned.
    let stored = rows.len();
    if stored > 0 {
        let written: std::collections::HashSet<i64> = rows.conversation_ids.iter().copied().collect();
        let (ids, seqs): (Vec<i64>, Vec<i64>) =
            last_seq.iter().filter(|(id, _)| written.contains(id)).map(|(id, seq)| (*id, *seq)).unzip();
        // What you sent, you have read (on every device).
        let (readers, read_conversations, read_seqs) = rows.newest_per_sender();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 12] = [
            &rows.conversation_ids,
            &rows.seqs,
            &rows.senders,
            &rows.client_ids,
            &rows.bodies,
            &rows.sent_at,
            &ids,
            &seqs,
            &now,
            &read_conversations,
            &readers,
            &read_seqs,
        ];
        futures_util::try_join!(async { client.execute(&write, &params).await.context("writing a batch") }, async {
            client.batch_execute("COMMIT").await.context("committing a batch")
        },)?;
    } else {
        client.batch_execute("COMMIT").await.context("committing a batch")?;
    }
    Ok(Committed { results, events, fresh: stored })
}

/// The batch's writes as one statement: the new rows (one `unnest` insert), each conversation's `last_seq` and
/// activity time, and each sender's read position. Data-modifying CTEs all run, whether or not the outer
/// statement reads them. The redundant `c.id = ANY($7)` lets the (generic) plan find the conversations through
/// their primary key; joined only to the `unnest`, a small table is read whole on every commit.
const WRITE: &str = "
    WITH inserted AS (
        INSERT INTO messages.messages (conversation_id, seq, sender_id, client_message_id, body, sent_at)
        SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::timestamptz[])
    ), advanced AS (
        UPDATE messages.conversations c SET last_seq = v.seq, last_activity_at = $9
          FROM unnest($7::bigint[], $8::bigint[]) AS v(id, seq) WHERE c.id = v.id AND c.id = ANY($7)
    )
    UPDATE messages.members m SET read_seq = GREATEST(m.read_seq, v.seq)
      FROM unnest($10::bigint[], $11::bigint[], $12::bigint[]) AS v(cid, uid, seq)
     WHERE m.conversation_id = v.cid AND m.user_id = v.uid";

/// The committer's own database connection.
///
/// Taken out of the pool for good, so the whole hot path runs on one warm backend (a pooled connection would
/// rotate the batches over every backend in the pool), and set to `plan_cache_mode = force_generic_plan`: the
/// batch statements take arrays whose length changes with every batch, so under the default PostgreSQL re-plans
/// them on every execution (measured: a fifth of PostgreSQL's CPU at 2,000 msg/s, docs/BENCHMARKS.md), while their
/// generic plans are the same index lookups. It counts once beside `WARREN_MESSAGE_DB_MAX_CONNECTIONS`.
pub struct CommitConnection {
    client: ClientWrapper,
}

impl std::fmt::Debug for CommitConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitConnection").field("closed", &self.client.is_closed()).finish()
    }
}

impl CommitConnection {
    pub async fn open(store: &Store) -> anyhow::Result<Self> {
        let pooled = store.pool().get().await.context("getting a database connection")?;
        let client = Object::take(pooled);
        client.batch_execute("SET plan_cache_mode = force_generic_plan").await.context("configuring the connection")?;
        Ok(Self { client })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// The batch's new rows as column arrays, for one `unnest` insert.
#[derive(Default)]
struct Rows {
    conversation_ids: Vec<i64>,
    seqs: Vec<i64>,
    senders: Vec<i64>,
    client_ids: Vec<String>,
    bodies: Vec<String>,
    sent_at: Vec<DateTime<Utc>>,
}

impl Rows {
    fn push(&mut self, message: &Message, at: DateTime<Utc>) {
        self.conversation_ids.push(message.conversation_id);
        self.seqs.push(message.seq);
        self.senders.push(message.sender_id);
        self.client_ids.push(message.client_message_id.clone());
        self.bodies.push(message.body.clone());
        self.sent_at.push(at);
    }

    fn len(&self) -> usize {
        self.seqs.len()
    }

    /// The newest new seq of each (sender, conversation): (senders, conversations, seqs).
    fn newest_per_sender(&self) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
        let mut newest: HashMap<(i64, i64), i64> = HashMap::new();
        for ((sender, conversation), seq) in self.senders.iter().zip(&self.conversation_ids).zip(&self.seqs) {
            let entry = newest.entry((*sender, *conversation)).or_insert(*seq);
            *entry = (*entry).max(*seq);
        }
        let mut columns = (Vec::new(), Vec::new(), Vec::new());
        for ((sender, conversation), seq) in newest {
            columns.0.push(sender);
            columns.1.push(conversation);
            columns.2.push(seq);
        }
        columns
    }
}
