//! One simulated browser tab: a WebSocket to a gateway, authenticated with a user's token, that behaves as the web
//! app does — it keeps at most the gateway's limit of requests in flight (more wait locally), times every
//! scheduled send from its scheduled time, records every live `message` frame, answers `resync` with `sync`, and
//! after a lost connection reconnects, resends its unanswered sends with the same client message ids
//! (exactly-once) and `sync`s what it missed.
//!
//! Each client is one task; the run talks to it through [`Client`] (commands over a channel). Every wait is
//! bounded: connecting, authenticating, reconnecting and closing each have a deadline.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use common::protocol::{
    ErrorCode,
    messages::{
        GetMessagesRequest, Head, MAX_PAGE, MAX_SYNC_HEADS, Message, MessagesPage, SendMessageRequest, SyncRequest,
    },
    ws::{ClientFrame, ReplyData, ServerFrame},
};
use futures_util::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use serde::Serialize;
use tokio::{
    net::TcpStream,
    sync::{mpsc, oneshot},
    time::{sleep, timeout},
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message as WsMessage, protocol::WebSocketConfig},
};

use crate::{
    recorder::{Recorder, nanos},
    schedule::Gate,
    stats::Latency,
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long connecting plus authenticating may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a client keeps trying to reconnect before giving up.
pub(crate) const RECONNECT_DEADLINE: Duration = Duration::from_secs(60);
/// The longest pause between two reconnection attempts, before its jitter (up to half as much again).
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a close handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Most history pages fetched after one `sync` that came back truncated.
const MAX_REPAIR_PAGES: u32 = 200;

/// State every client shares with the run.
#[derive(Debug)]
pub struct Shared {
    pub recorder: Mutex<Recorder>,
    /// The run's clock: bodies carry nanoseconds since this instant.
    pub clock: Instant,
    pub stats: ClientStats,
    pub history: Mutex<HistoryStats>,
    /// Requests in flight per socket (the gateway's `WARREN_WS_MAX_IN_FLIGHT`).
    pub max_in_flight: usize,
}

impl Shared {
    pub fn new(recorder: Recorder, max_in_flight: usize) -> Arc<Self> {
        Arc::new(Self {
            recorder: Mutex::new(recorder),
            clock: Instant::now(),
            stats: ClientStats::default(),
            history: Mutex::new(HistoryStats::default()),
            max_in_flight,
        })
    }

    pub fn recorder(&self) -> MutexGuard<'_, Recorder> {
        self.recorder.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn history(&self) -> MutexGuard<'_, HistoryStats> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn now_ns(&self) -> u64 {
        nanos(self.clock.elapsed())
    }
}

/// Connection-level counters of all clients together.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Sends and requests that waited locally because their socket was at the in-flight limit.
    pub queued: AtomicU64,
    /// The longest local queue of any socket.
    pub max_queue: AtomicU64,
    pub reconnects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub resyncs: AtomicU64,
    pub sync_failures: AtomicU64,
    /// Error frames without a request id (a malformed frame; never expected).
    pub protocol_errors: AtomicU64,
    /// Closes the gateway initiated, by close code (0: the connection broke without a close frame).
    pub closes: Mutex<BTreeMap<u16, u64>>,
}

/// A snapshot of [`ClientStats`] for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientReport {
    pub queued: u64,
    pub max_queue: u64,
    pub reconnects: u64,
    pub connect_failures: u64,
    pub resyncs: u64,
    pub sync_failures: u64,
    pub protocol_errors: u64,
    pub server_closes: BTreeMap<u16, u64>,
}

impl ClientStats {
    pub fn report(&self) -> ClientReport {
        ClientReport {
            queued: self.queued.load(Ordering::Relaxed),
            max_queue: self.max_queue.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            resyncs: self.resyncs.load(Ordering::Relaxed),
            sync_failures: self.sync_failures.load(Ordering::Relaxed),
            protocol_errors: self.protocol_errors.load(Ordering::Relaxed),
            server_closes: self.closes.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }

    fn closed(&self, code: u16) {
        *self.closes.lock().unwrap_or_else(PoisonError::into_inner).entry(code).or_default() += 1;
    }
}

/// `getMessages` results of the history mode.
#[derive(Debug, Default)]
pub struct HistoryStats {
    pub latency: Latency,
    /// Scheduled time → the request handed to its socket: the load generator's own lateness, inside `latency`.
    pub send_lag: Latency,
    pub pages: u64,
    pub messages: u64,
    /// Pages whose messages were not the dense, ascending run of seqs asked for.
    pub bad_pages: u64,
    pub errors: BTreeMap<String, u64>,
}

/// Who a client is and where it connects.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The user's index in the run.
    pub index: usize,
    pub user_id: i64,
    pub token: String,
    /// `ws://127.0.0.1:PORT/ws`.
    pub url: String,
}

/// Work scheduled by the run, timed from its scheduled moment.
#[derive(Debug, Clone)]
pub enum Job {
    /// Message `k` of the schedule, due at `scheduled_ns`.
    Send { k: u64, conversation_id: i64, scheduled_ns: u64 },
    /// A history page, scheduled at `scheduled_ns`; `expect` is the seq range the page must hold.
    Page { request: GetMessagesRequest, scheduled_ns: u64, expect: (i64, i64) },
}

type RequestBuilder = Box<dyn FnOnce(String) -> ClientFrame + Send>;
type ReplySender = oneshot::Sender<Result<ReplyData, String>>;

/// What the run asks of a client.
enum Command {
    Job(Job),
    Request {
        build: RequestBuilder,
        reply: ReplySender,
    },
    Sync {
        done: oneshot::Sender<bool>,
    },
    /// Drop the connection without a close handshake (as a lost network does), stay away for `offline`, then
    /// reconnect and sync. `at`: when the storm began, which its times count from.
    Drop {
        done: oneshot::Sender<Reconnected>,
        offline: Duration,
        at: Instant,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Job(_) => "Job",
            Command::Request { .. } => "Request",
            Command::Sync { .. } => "Sync",
            Command::Drop { .. } => "Drop",
            Command::Close { .. } => "Close",
        })
    }
}

/// How a dropped client came back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reconnected {
    /// From the drop to `ready` on the new connection.
    pub ready: Duration,
    /// From the drop to the answer of the first `sync` (and the pages it needed).
    pub synced: Duration,
    /// Whether it came back at all (within the deadline) and its sync succeeded.
    pub ok: bool,
}

/// The run's handle on one client.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    pub index: usize,
}

impl Client {
    /// Connects and authenticates (bounded), then starts the client's task.
    pub async fn connect(spec: Spec, shared: Arc<Shared>) -> anyhow::Result<Client> {
        let socket = open(&spec).await?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let index = spec.index;
        let task = Task::new(spec, shared, socket);
        tokio::spawn(task.run(receiver));
        Ok(Client { commands, index })
    }

    /// Queues scheduled work.
    pub fn job(&self, job: Job) {
        let _ = self.commands.send(Command::Job(job));
    }

    /// Sends one request and waits (at most `limit`) for its answer.
    pub async fn request(
        &self,
        limit: Duration,
        build: impl FnOnce(String) -> ClientFrame + Send + 'static,
    ) -> anyhow::Result<ReplyData> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Request { build: Box::new(build), reply })
            .map_err(|_| anyhow!("the client has stopped"))?;
        match timeout(limit, answer).await {
            Ok(Ok(Ok(data))) => Ok(data),
            Ok(Ok(Err(error))) => bail!("{error}"),
            Ok(Err(_)) => bail!("the client stopped before the answer"),
            Err(_) => bail!("no answer within {limit:?}"),
        }
    }

    /// Runs `sync` (and any pages it needs) and waits for it; false on failure or after `limit`.
    pub async fn sync(&self, limit: Duration) -> bool {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Sync { done }).is_err() {
            return false;
        }
        matches!(timeout(limit, finished).await, Ok(Ok(true)))
    }

    /// Drops the connection at once and reconnects after `offline`; resolves when the client has synced again,
    /// with its times counted from `at` (the storm's start, the same for every client: a client that took its
    /// turn late is not credited with the wait).
    pub fn drop_connection(&self, offline: Duration, at: Instant) -> oneshot::Receiver<Reconnected> {
        let (done, finished) = oneshot::channel();
        let _ = self.commands.send(Command::Drop { done, offline, at });
        finished
    }

    /// Closes the socket cleanly (bounded).
    pub async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Close { done }).is_ok() {
            let _ = timeout(CLOSE_TIMEOUT + Duration::from_secs(1), finished).await;
        }
    }
}

/// Opens a socket and authenticates: `auth`, then wait for `ready`. Bounded by [`CONNECT_TIMEOUT`].
async fn open(spec: &Spec) -> anyhow::Result<Socket> {
    timeout(CONNECT_TIMEOUT, async {
        // Small buffers: a load generator holds thousands of sockets. Replies (a `sync`) may be large.
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(64 << 20));
        let (mut socket, _) = tokio_tungstenite::connect_async_with_config(spec.url.as_str(), Some(config), true)
            .await
            .with_context(|| format!("connecting to {}", spec.url))?;
        let auth = serde_json::to_string(&ClientFrame::Auth { token: spec.token.clone() })?;
        socket.send(WsMessage::text(auth)).await.context("sending auth")?;
        loop {
            match socket.next().await {
                Some(Ok(WsMessage::Text(text))) => match serde_json::from_str::<ServerFrame>(&text) {
                    Ok(ServerFrame::Ready { .. }) => return Ok(socket),
                    Ok(ServerFrame::Error { error, .. }) => bail!("auth refused: {error}"),
                    _ => {}
                },
                Some(Ok(WsMessage::Close(frame))) => bail!("closed during auth: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(error)) => bail!("socket error during auth: {error}"),
                None => bail!("socket ended during auth"),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("connect and auth took over {CONNECT_TIMEOUT:?}"))?
}

/// A request on the wire, waiting for its answer.
enum InFlight {
    Job(Job),
    Request(ReplySender),
    Sync,
    Repair { pages: u32 },
}

/// Something waiting for a free in-flight slot (or admitted and about to be written).
enum Outgoing {
    Job(Job),
    Request(RequestBuilder, ReplySender),
    Sync,
    Repair { conversation_id: i64, after: i64, pages: u32 },
}

enum SyncWaiter {
    Plain(oneshot::Sender<bool>),
    Drop { done: oneshot::Sender<Reconnected>, started: Instant, ready: Duration },
}

/// Why the serving loop stopped.
enum Stop {
    /// The run is done with this client.
    Finished,
    /// The connection broke or the gateway closed it (with this code; 0 without a close frame).
    Lost(u16),
    /// The run asked for a drop (how long to stay away, and when the storm began).
    Dropped(oneshot::Sender<Reconnected>, Duration, Instant),
}

struct Task {
    spec: Spec,
    shared: Arc<Shared>,
    sink: Option<SplitSink<Socket, WsMessage>>,
    stream: Option<SplitStream<Socket>>,
    gate: Gate<Outgoing>,
    /// Admitted by the gate, not yet written.
    ready: Vec<Outgoing>,
    in_flight: HashMap<String, InFlight>,
    next_id: u64,
    /// Heads of the user's conversations outside the run (so `sync` does not resend their history each time).
    other_heads: HashMap<i64, i64>,
    /// Sync requests (and their repair pages) not yet answered.
    syncing: usize,
    sync_ok: bool,
    sync_again: bool,
    sync_waiters: Vec<SyncWaiter>,
}

impl Task {
    fn new(spec: Spec, shared: Arc<Shared>, socket: Socket) -> Self {
        let (sink, stream) = socket.split();
        let gate = Gate::new(shared.max_in_flight);
        Self {
            spec,
            shared,
            sink: Some(sink),
            stream: Some(stream),
            gate,
            ready: Vec::new(),
            in_flight: HashMap::new(),
            next_id: 0,
            other_heads: HashMap::new(),
            syncing: 0,
            sync_ok: true,
            sync_again: false,
            sync_waiters: Vec::new(),
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let (started, done, offline) = match self.serve(&mut commands).await {
                Stop::Finished => return,
                Stop::Lost(code) => {
                    self.shared.stats.closed(code);
                    (Instant::now(), None, Duration::ZERO)
                }
                Stop::Dropped(done, offline, at) => (at, Some(done), offline),
            };
            if !self.come_back(started, done, offline).await {
                return;
            }
        }
    }

    async fn serve(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) -> Stop {
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else {
                        self.close().await;
                        return Stop::Finished;
                    };
                    match command {
                        Command::Job(job) => self.offer(Outgoing::Job(job)),
                        Command::Request { build, reply } => self.offer(Outgoing::Request(build, reply)),
                        Command::Sync { done } => {
                            self.sync_waiters.push(SyncWaiter::Plain(done));
                            self.start_sync();
                        }
                        Command::Drop { done, offline, at } => return Stop::Dropped(done, offline, at),
                        Command::Close { done } => {
                            self.close().await;
                            let _ = done.send(());
                            return Stop::Finished;
                        }
                    }
                }
                frame = next_frame(&mut self.stream) => match frame {
                    Some(Ok(WsMessage::Text(text))) => self.receive(&text),
                    Some(Ok(WsMessage::Close(frame))) => {
                        return Stop::Lost(frame.map_or(1005, |f| u16::from(f.code)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Stop::Lost(0),
                },
            }
            if let Err(code) = self.pump().await {
                return Stop::Lost(code);
            }
        }
    }

    fn offer(&mut self, outgoing: Outgoing) {
        if let Some(now) = self.gate.offer(outgoing) {
            self.ready.push(now);
        } else {
            self.shared.stats.queued.fetch_add(1, Ordering::Relaxed);
            self.shared.stats.max_queue.fetch_max(self.gate.waiting() as u64, Ordering::Relaxed);
        }
    }

    /// Writes everything admitted, then flushes once. `Err` when the connection is gone (what was not written
    /// stays queued for the reconnect).
    async fn pump(&mut self) -> Result<(), u16> {
        if self.ready.is_empty() {
            return Ok(());
        }
        let mut items = std::mem::take(&mut self.ready).into_iter();
        while let Some(item) = items.next() {
            let (id, text, in_flight) = self.encode(item);
            self.in_flight.insert(id, in_flight);
            let written = match self.sink.as_mut() {
                Some(sink) => sink.feed(WsMessage::text(text)).await.is_ok(),
                None => false,
            };
            if !written {
                self.ready.extend(items);
                return Err(0);
            }
        }
        match self.sink.as_mut() {
            Some(sink) => sink.flush().await.map_err(|_| 0),
            None => Err(0),
        }
    }

    fn fresh_id(&mut self, kind: char) -> String {
        self.next_id += 1;
        format!("{kind}{}", self.next_id)
    }

    /// The frame for one outgoing request, its id, and what to remember about it.
    fn encode(&mut self, item: Outgoing) -> (String, String, InFlight) {
        let (id, frame, in_flight) = match item {
            Outgoing::Job(job) => {
                let id = self.fresh_id('j');
                let frame = match &job {
                    Job::Send { k, conversation_id, scheduled_ns } => {
                        let now_ns = self.shared.now_ns();
                        let mut recorder = self.shared.recorder();
                        recorder.written(*k, now_ns);
                        ClientFrame::SendMessage {
                            id: id.clone(),
                            request: SendMessageRequest {
                                conversation_id: Some(*conversation_id),
                                to_user_id: None,
                                client_message_id: recorder.client_message_id(*k),
                                body: recorder.body(*k, *scheduled_ns),
                            },
                        }
                    }
                    Job::Page { request, scheduled_ns, .. } => {
                        let lag = self.shared.now_ns().saturating_sub(*scheduled_ns);
                        self.shared.history().send_lag.record_micros(lag / 1000);
                        ClientFrame::GetMessages { id: id.clone(), request: request.clone() }
                    }
                };
                (id, frame, InFlight::Job(job))
            }
            Outgoing::Request(build, reply) => {
                let id = self.fresh_id('r');
                (id.clone(), build(id), InFlight::Request(reply))
            }
            Outgoing::Sync => {
                let id = self.fresh_id('s');
                let mut heads = self.shared.recorder().heads(self.spec.index);
                heads.extend(self.other_heads.iter().map(|(&conversation_id, &seq)| Head { conversation_id, seq }));
                heads.truncate(MAX_SYNC_HEADS);
                (id.clone(), ClientFrame::Sync { id, request: SyncRequest { heads } }, InFlight::Sync)
            }
            Outgoing::Repair { conversation_id, after, pages } => {
                let id = self.fresh_id('p');
                let request = GetMessagesRequest {
                    conversation_id,
                    after: Some(after),
                    limit: Some(MAX_PAGE),
                    ..GetMessagesRequest::default()
                };
                (id.clone(), ClientFrame::GetMessages { id, request }, InFlight::Repair { pages })
            }
        };
        let text = serde_json::to_string(&frame).unwrap_or_default();
        (id, text, in_flight)
    }

    fn receive(&mut self, text: &str) {
        let Ok(frame) = serde_json::from_str::<ServerFrame>(text) else {
            self.shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match frame {
            ServerFrame::Reply { id, result } => self.answer(&id, Ok(result)),
            ServerFrame::Error { id: Some(id), error } => self.answer(&id, Err(error)),
            ServerFrame::Error { id: None, .. } => {
                self.shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            }
            ServerFrame::Message { message } => {
                let now = self.shared.now_ns();
                if self.shared.recorder().live(self.spec.index, &message, now).is_none() {
                    self.note_other(&message);
                }
            }
            ServerFrame::Resync { .. } => {
                self.shared.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                self.stream_broke();
                self.start_sync();
            }
            ServerFrame::Ready { .. } | ServerFrame::Conversation { .. } | ServerFrame::Read { .. } => {}
        }
    }

    /// This client's live stream broke now (a reconnect, or the gateway's `resync`): pushes made meanwhile never
    /// reach it.
    fn stream_broke(&self) {
        let now = self.shared.now_ns();
        self.shared.recorder().stream_broke(self.spec.index, now);
    }

    fn note_other(&mut self, message: &Message) {
        let head = self.other_heads.entry(message.conversation_id).or_default();
        *head = (*head).max(message.seq);
    }

    fn answer(&mut self, id: &str, result: Result<ReplyData, common::protocol::ApiError>) {
        let Some(in_flight) = self.in_flight.remove(id) else { return };
        if let Some(next) = self.gate.complete() {
            self.ready.push(next);
        }
        let now = self.shared.now_ns();
        match in_flight {
            InFlight::Job(Job::Send { k, .. }) => match result {
                Ok(ReplyData::SendMessage(message)) => self.shared.recorder().acked(k, &message, now),
                Ok(_) => self.shared.recorder().failed(k, "unexpected_reply"),
                Err(error) => self.shared.recorder().failed(k, &code_name(error.code)),
            },
            InFlight::Job(Job::Page { scheduled_ns, expect, .. }) => {
                let mut history = self.shared.history();
                match result {
                    Ok(ReplyData::GetMessages(page)) => {
                        // Pages only: a quick refusal would flatter the latency; errors are counted apart.
                        history.latency.record_micros(now.saturating_sub(scheduled_ns) / 1000);
                        history.pages += 1;
                        history.messages += page.messages.len() as u64;
                        if !page_holds(&page, expect) {
                            history.bad_pages += 1;
                        }
                    }
                    Ok(_) => *history.errors.entry("unexpected_reply".into()).or_default() += 1,
                    Err(error) => *history.errors.entry(code_name(error.code)).or_default() += 1,
                }
            }
            InFlight::Request(reply) => {
                let _ = reply.send(result.map_err(|e| e.to_string()));
            }
            InFlight::Sync => {
                match result {
                    Ok(ReplyData::Sync(answer)) => {
                        let mut truncated = Vec::new();
                        {
                            let mut recorder = self.shared.recorder();
                            for message in &answer.messages {
                                if recorder.is_tracked(message.conversation_id) {
                                    recorder.synced(self.spec.index, message);
                                }
                            }
                            for entry in &answer.conversations {
                                let conversation = &entry.conversation;
                                if !recorder.is_tracked(conversation.id) {
                                    self.other_heads.insert(conversation.id, conversation.last_seq);
                                }
                            }
                            for conversation_id in &answer.truncated {
                                if recorder.is_tracked(*conversation_id) {
                                    let after = recorder
                                        .heads(self.spec.index)
                                        .iter()
                                        .find(|h| h.conversation_id == *conversation_id)
                                        .map_or(0, |h| h.seq);
                                    truncated.push((*conversation_id, after));
                                }
                            }
                        }
                        for (conversation_id, after) in truncated {
                            self.syncing += 1;
                            self.offer(Outgoing::Repair { conversation_id, after, pages: 1 });
                        }
                    }
                    _ => self.sync_ok = false,
                }
                self.sync_step_done();
            }
            InFlight::Repair { pages } => {
                match result {
                    Ok(ReplyData::GetMessages(page)) => {
                        let mut recorder = self.shared.recorder();
                        for message in &page.messages {
                            recorder.synced(self.spec.index, message);
                        }
                        drop(recorder);
                        if let Some(last) = page.messages.last()
                            && page.has_more_after
                        {
                            if pages < MAX_REPAIR_PAGES {
                                self.syncing += 1;
                                let conversation_id = last.conversation_id;
                                self.offer(Outgoing::Repair { conversation_id, after: last.seq, pages: pages + 1 });
                            } else {
                                self.sync_ok = false;
                            }
                        }
                    }
                    _ => self.sync_ok = false,
                }
                self.sync_step_done();
            }
        }
    }

    fn start_sync(&mut self) {
        if self.syncing > 0 {
            self.sync_again = true;
            return;
        }
        self.syncing = 1;
        self.sync_ok = true;
        self.offer(Outgoing::Sync);
    }

    fn sync_step_done(&mut self) {
        self.syncing = self.syncing.saturating_sub(1);
        if self.syncing > 0 {
            return;
        }
        if !self.sync_ok {
            self.shared.stats.sync_failures.fetch_add(1, Ordering::Relaxed);
        }
        if self.sync_again {
            self.sync_again = false;
            self.start_sync();
            return;
        }
        let ok = self.sync_ok;
        for waiter in self.sync_waiters.drain(..) {
            match waiter {
                SyncWaiter::Plain(done) => {
                    let _ = done.send(ok);
                }
                SyncWaiter::Drop { done, started, ready } => {
                    let _ = done.send(Reconnected { ready, synced: started.elapsed(), ok });
                }
            }
        }
    }

    /// After a lost or dropped connection: reconnect (with backoff, bounded), resend unanswered sends with their
    /// original client message ids, and `sync`. False when the client gave up.
    async fn come_back(
        &mut self,
        started: Instant,
        done: Option<oneshot::Sender<Reconnected>>,
        offline: Duration,
    ) -> bool {
        self.sink = None;
        self.stream = None;
        self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        self.stream_broke();

        // What was admitted but not written goes back first, then what was in flight (oldest first), in front of
        // everything that was waiting.
        let mut resend: Vec<(String, Job)> = Vec::new();
        for (id, in_flight) in self.in_flight.drain() {
            match in_flight {
                InFlight::Job(job) => resend.push((id, job)),
                InFlight::Request(reply) => {
                    let _ = reply.send(Err("the connection was lost".to_owned()));
                }
                InFlight::Sync | InFlight::Repair { .. } => {}
            }
        }
        resend.sort_by_key(|(id, _)| id[1..].parse::<u64>().unwrap_or(0));
        self.gate.reset();
        for item in std::mem::take(&mut self.ready).into_iter().rev() {
            self.gate.requeue_front(item);
        }
        for (_, job) in resend.into_iter().rev() {
            self.gate.requeue_front(Outgoing::Job(job));
        }
        self.syncing = 0;
        self.sync_again = false;

        // Away until `offline` after the drop began (for a storm, after the storm began).
        sleep(offline.saturating_sub(started.elapsed())).await;
        let deadline = started + offline + RECONNECT_DEADLINE;
        let mut backoff = Duration::from_millis(50);
        let socket = loop {
            match open(&self.spec).await {
                Ok(socket) => break socket,
                Err(_) => {
                    self.shared.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() + backoff > deadline {
                        if let Some(done) = done {
                            let _ =
                                done.send(Reconnected { ready: started.elapsed(), ok: false, ..Default::default() });
                        }
                        self.sync_ok = false;
                        self.sync_again = false;
                        self.syncing = 1;
                        self.sync_step_done();
                        return false;
                    }
                    let jitter = Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 2));
                    sleep(backoff + jitter).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        let (sink, stream) = socket.split();
        self.sink = Some(sink);
        self.stream = Some(stream);
        if let Some(done) = done {
            self.sync_waiters.push(SyncWaiter::Drop { done, started, ready: started.elapsed() });
        }
        while let Some(item) = self.gate.take_next() {
            self.ready.push(item);
        }
        self.start_sync();
        // A failed write shows up as a broken stream in the next turn of `serve`.
        let _ = self.pump().await;
        true
    }

    /// Sends a normal close and reads until the gateway's close (bounded).
    async fn close(&mut self) {
        for (_, in_flight) in self.in_flight.drain() {
            if let InFlight::Request(reply) = in_flight {
                let _ = reply.send(Err("the client is closing".to_owned()));
            }
        }
        let (Some(mut sink), Some(mut stream)) = (self.sink.take(), self.stream.take()) else { return };
        let _ = timeout(CLOSE_TIMEOUT, async {
            if sink.send(WsMessage::Close(None)).await.is_ok() {
                while let Some(Ok(_)) = stream.next().await {}
            }
        })
        .await;
    }
}

async fn next_frame(
    stream: &mut Option<SplitStream<Socket>>,
) -> Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>> {
    match stream {
        Some(stream) => stream.next().await,
        None => None,
    }
}

/// The wire name of an error code (`rate_limited`).
pub fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| format!("{code:?}"))
}

/// Whether a page holds exactly the seqs `first..=last`, ascending.
pub fn page_holds(page: &MessagesPage, (first, last): (i64, i64)) -> bool {
    let expected = usize::try_from(last - first + 1).unwrap_or(0);
    page.messages.len() == expected && page.messages.iter().zip(first..).all(|(m, seq)| m.seq == seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seqs: &[i64]) -> MessagesPage {
        MessagesPage {
            messages: seqs
                .iter()
                .map(|&seq| Message {
                    conversation_id: 1,
                    seq,
                    sender_id: 1,
                    client_message_id: String::new(),
                    body: String::new(),
                    sent_at: 0,
                })
                .collect(),
            has_more_before: false,
            has_more_after: false,
        }
    }

    #[test]
    fn a_page_must_be_the_dense_range_asked_for() {
        assert!(page_holds(&page(&[5, 6, 7]), (5, 7)));
        assert!(!page_holds(&page(&[5, 7]), (5, 7)));
        assert!(!page_holds(&page(&[6, 5, 7]), (5, 7)));
        assert!(page_holds(&page(&[]), (1, 0)));
    }

    #[test]
    fn error_codes_use_their_wire_names() {
        assert_eq!(code_name(ErrorCode::RateLimited), "rate_limited");
        assert_eq!(code_name(ErrorCode::Timeout), "timeout");
    }
}
