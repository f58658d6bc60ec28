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
//!    returns the original, and allocating first would leave a hole. A non-member's send too, when it repeats a
//!    message of theirs in that conversation (removed after the first attempt was stored, its answer lost): every
//!    attempt of an acknowledged send gets the same message (migration 4);
//! 4. allocate seqs from each conversation's `last_seq` in arrival order, insert all rows with one `unnest`, move
//!    `last_seq` forward. The rows' time is the database's clock, read once the locks are held, and never earlier
//!    than the conversation's last activity, so within a conversation times grow with seqs whichever replica (and
//!    whichever replica's clock) committed them (migration 5).
//!
//! Two replicas racing on the same client id for the same conversation serialise on the conversation lock, and
//! the second finds the first's row in step 3. For different conversations (a client reusing an id) the second
//! insert hits the unique index; the batch is rolled back and retried, and step 3 then finds the winner.
//!
//! All four steps run in PostgreSQL, as one call of the function `messages.commit_sends` (migrations 2, 4 and 5,
//! each replacing the one before) outside an explicit transaction: one round trip and one statement per batch.
//! Each statement of a PL/pgSQL function takes a fresh snapshot, so the members and the stored sends are still read
//! after the locks are held (tested: a member removed while the batch waits for the lock is refused). It runs on a
//! connection of its own ([`CommitConnection`]). Measured on the benchmark machine against the two pipelined round
//! trips of six statements it replaced: PostgreSQL's part of a lone message's delivery from 1.7–2.1 to 1.2–1.3 ms,
//! the whole delivery from 3.4–4.2 to 2.8–3.0 ms (docs/BENCHMARKS.md).
//!
//! Only after the commit are the callers answered and the events published (one AMQP message per batch); the RPC
//! server acks the requests after that, so a crash anywhere before leaves the request to be redelivered, and the
//! redelivery finds the stored message and publishes its event again.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use common::protocol::{
    ApiError,
    messages::{Event, Message},
};
use deadpool_postgres::{ClientWrapper, Object};
use futures_util::FutureExt;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::{
    domain::{ClientMessageId, MessageBody},
    events::EventSink,
    store::{Store, is_retryable, message_from},
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
    /// RPC server's prefetch already bounds them; this is the backstop); `patience` is how long a batch waits for
    /// a lost database to come back (see [`commit_through_outages`]).
    pub fn start(store: Store, events: EventSink, max_batch: usize, queue: usize, patience: Duration) -> Committer {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let stats = Arc::new(CommitStats::default());
        tokio::spawn(run(store, events, rx, max_batch.max(1), patience, stats.clone()));
        Committer { queue: tx, stats }
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Commits one send (with whatever else is queued) and returns the stored message.
    pub async fn send(&self, send: Send) -> Result<Message, ApiError> {
        self.enqueue(send).await?.answer().await
    }

    /// Queues one send and returns at once with its ticket. Sends are committed in the order they were queued, so
    /// a caller that queues several one after another (not concurrently) fixes their order.
    pub async fn enqueue(&self, send: Send) -> Result<Ticket, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Pending { send, reply }).await.map_err(|_| ApiError::unavailable("shutting down"))?;
        Ok(Ticket { answer })
    }
}

/// A queued send's claim on its answer.
#[derive(Debug)]
pub struct Ticket {
    answer: oneshot::Receiver<Result<Message, ApiError>>,
}

impl Ticket {
    /// Waits for the commit of the send's batch and returns the stored message.
    pub async fn answer(self) -> Result<Message, ApiError> {
        self.answer.await.map_err(|_| ApiError::internal())?
    }
}

async fn run(
    store: Store,
    events: EventSink,
    mut queue: mpsc::Receiver<Pending>,
    max_batch: usize,
    patience: Duration,
    stats: Arc<CommitStats>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut connection: Option<CommitConnection> = None;
    // `recv_many` returns as soon as at least one send is queued, with everything else already there.
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        let sends: Vec<Send> = batch.iter().map(|p| p.send.clone()).collect();
        let attempt = AssertUnwindSafe(commit_through_outages(&mut connection, &store, &sends, patience));
        let outcome = attempt.catch_unwind().await.unwrap_or_else(|panic| {
            // A bug, or rows of a shape this release does not read (a newer release's migration, mid-upgrade),
            // fails this batch like any unexpected error, never the committer: a dead committer task would leave
            // a replica that keeps taking sends from the queue and fails every one. The connection may be mid-call.
            connection = None;
            Err(Failure::Failed(anyhow::anyhow!(
                "committing a batch panicked: {}",
                common::telemetry::panic_message(panic.as_ref())
            )))
        });
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
            Err(failure) => {
                let answer = match &failure {
                    Failure::Unreachable(error) => {
                        tracing::error!(
                            error = format!("{error:#}"),
                            batch = batch.len(),
                            ?patience,
                            "the database stayed unreachable; a batch is refused"
                        );
                        ApiError::unavailable("the database is unreachable; try again shortly")
                    }
                    Failure::Failed(error) => {
                        tracing::error!(error = format!("{error:#}"), batch = batch.len(), "a batch failed to commit");
                        ApiError::internal()
                    }
                };
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(answer.clone()));
                }
            }
        }
    }
}

/// Why a batch was not committed.
#[derive(Debug)]
pub enum Failure {
    /// No connection to the database could be had (or kept) for the whole patience.
    Unreachable(anyhow::Error),
    /// The database refused the batch (answered `internal`; the RPC server retries the request).
    Failed(anyhow::Error),
}

/// First pause after a lost connection; it doubles up to [`MAX_OUTAGE_PAUSE`].
const FIRST_OUTAGE_PAUSE: Duration = Duration::from_millis(50);
const MAX_OUTAGE_PAUSE: Duration = Duration::from_secs(1);

/// Commits a batch, riding out a lost database: when the connection breaks (PostgreSQL restarted, failed over, or
/// an operator or a proxy ended the session) or none can be opened, the batch is tried again on a new connection,
/// pausing 50 ms, then twice as long each time up to 1 s, for at most `patience` (the service's RPC timeout, as
/// long as a caller waits). Sends queue behind it meanwhile. Trying again is safe even when the lost call had
/// committed before the connection broke: the retry finds the batch's sends stored and answers with them (step 3
/// of the module documentation), and their events go out again, which clients ignore as duplicates by `seq`.
///
/// Without this, a restart of PostgreSQL failed every batch in flight with `internal`, and the RPC server's few
/// quick retries were spent before the database was back.
pub async fn commit_through_outages(
    connection: &mut Option<CommitConnection>,
    store: &Store,
    sends: &[Send],
    patience: Duration,
) -> Result<Committed, Failure> {
    let give_up = Instant::now() + patience;
    let mut pause = FIRST_OUTAGE_PAUSE;
    loop {
        // Each attempt ends by `give_up` too: a server that vanished without resetting its connections (a host
        // lost in a failover) would otherwise hold the call until TCP gives up, many minutes later. Cut off, the
        // call may or may not have committed; the retry finds out.
        let attempt = async {
            match take_connection(connection, store).await {
                Ok(open) => commit_with_retries(open, sends).await.map_err(|error| {
                    if connection_lost(&error) || open.is_closed() {
                        Failure::Unreachable(error)
                    } else {
                        Failure::Failed(error)
                    }
                }),
                Err(error) => Err(Failure::Unreachable(error)),
            }
        };
        let outcome = tokio::time::timeout_at(give_up, attempt).await.unwrap_or_else(|_| {
            Err(Failure::Unreachable(anyhow::anyhow!("the database did not answer within {patience:?}")))
        });
        match outcome {
            Err(Failure::Unreachable(error)) => {
                *connection = None;
                if Instant::now() + pause >= give_up {
                    return Err(Failure::Unreachable(error));
                }
                tracing::warn!(
                    error = format!("{error:#}"),
                    ?pause,
                    "the database connection is lost; retrying the batch"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_OUTAGE_PAUSE);
            }
            other => return other,
        }
    }
}

/// Whether an error means this connection is of no more use (closed, an I/O error, or a SQLSTATE of class 08,
/// connection exception, or 57P, the server shutting down or terminating the session, or 25006: after a
/// failover, a connection that reached a server now in recovery, read-only), rather than the server refusing the
/// statement.
fn connection_lost(error: &anyhow::Error) -> bool {
    error.chain().filter_map(|cause| cause.downcast_ref::<tokio_postgres::Error>()).any(|error| {
        error.is_closed()
            || error.code().is_some_and(|state| {
                let code = state.code();
                code.starts_with("08") || code.starts_with("57P") || code == "25006"
            })
            || std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
    })
}

/// The committer's connection, opened first if there is none (at start, or after the last one was lost).
async fn take_connection<'a>(
    connection: &'a mut Option<CommitConnection>,
    store: &Store,
) -> anyhow::Result<&'a CommitConnection> {
    // One the server closed while the committer was idle (a restart between batches) is replaced before use.
    if connection.as_ref().is_none_or(CommitConnection::is_closed) {
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

/// The whole batch as one call of `messages.commit_sends` (migrations 2, 4 and 5), outside an explicit
/// transaction: PostgreSQL runs it as one implicit transaction and answers only after that transaction committed
/// (tokio-postgres ends the rows at `ReadyForQuery`, which follows the commit), so an answer here means durable.
/// One row per send, in send order; the message's columns come first, in `MESSAGE_COLUMNS` order, so
/// [`message_from`] reads them.
const COMMIT_SENDS: &str = "
    SELECT conversation_id, seq, sender_id, client_message_id, body, sent_at, fresh, recipients
      FROM messages.commit_sends($1, $2, $3, $4, $5)
     ORDER BY ord";

/// Commits one batch in one transaction, in one round trip. See the module documentation for the order of steps
/// and why. On error nothing of the batch is stored and the connection is left without a transaction.
pub async fn commit(connection: &CommitConnection, sends: &[Send]) -> anyhow::Result<Committed> {
    let client = &connection.client;
    let statement = client.prepare_cached(COMMIT_SENDS).await?;
    let conversations: Vec<i64> = sends.iter().map(|s| s.conversation_id).collect();
    let senders: Vec<i64> = sends.iter().map(|s| s.sender_id).collect();
    let client_ids: Vec<&str> = sends.iter().map(|s| s.client_message_id.as_str()).collect();
    let bodies: Vec<&str> = sends.iter().map(|s| s.body.as_str()).collect();
    // The function's last argument has been unused since migration 5, which stamps messages with the database's
    // clock once the locks are held; it stays for the signature replicas of earlier releases call.
    let now: DateTime<Utc> = Utc::now().trunc_subsecs(6);
    let rows = client
        .query(&statement, &[&conversations, &senders, &client_ids, &bodies, &now])
        .await
        .context("committing a batch")?;
    anyhow::ensure!(rows.len() == sends.len(), "{} sends came back as {} rows", sends.len(), rows.len());

    let mut results = Vec::with_capacity(sends.len());
    let mut events = Vec::new();
    let mut fresh = 0;
    for (row, send) in rows.iter().zip(sends) {
        // No message: the sender is not a member of the send's conversation.
        if row.get::<_, Option<i64>>("conversation_id").is_none() {
            results.push(Err(ApiError::forbidden("you are not a member of that conversation")));
            continue;
        }
        let message = message_from(row);
        if row.get::<_, bool>("fresh") {
            fresh += 1;
        } else if message.conversation_id != send.conversation_id || message.body != send.body.as_str() {
            // The id is the sender's, across all their conversations: a retry repeats the message it names, while
            // another message under a used id would otherwise be answered with the first and never stored.
            results.push(Err(ApiError::conflict(
                "this clientMessageId already names another of your messages; use a new one for a new message",
            )));
            continue;
        }
        if let Some(recipients) = row.get::<_, Option<Vec<i64>>>("recipients") {
            events.push(Event::Message { message: message.clone(), recipients });
        }
        results.push(Ok(message));
    }
    Ok(Committed { results, events, fresh })
}

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
