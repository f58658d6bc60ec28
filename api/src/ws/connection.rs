//! One WebSocket connection, from the upgrade to the close handshake.
//!
//! 1. **Authenticate**: the first frame must be `auth` within the configured time, with a token the gateway
//!    verifies; then `getSelf` fetches the user, the socket joins the [`Hub`](super::Hub) and `ready` is sent.
//!    Joining before `ready` means no event can fall between the client's first `sync` and live push.
//! 2. **Serve**: one task per socket selects over the client's frames, replies of requests in flight (run
//!    concurrently, at most `max_in_flight`), the events the hub queued, the ping timer, the idle timer and the
//!    hub's close signal (slow consumer, shutdown). Every write is bounded by a timeout.
//! 3. **Close**: send a close frame with a code and a reason, then keep reading until the client's close arrives
//!    and the stream ends (bounded), so closes are clean (DESIGN §8).

use std::{borrow::Cow, error::Error as _, pin::pin, sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use common::{
    auth::VerifiedUser,
    protocol::{
        ApiError, ErrorCode,
        users::{GetSelf, GetSelfRequest, User},
        ws::{ClientFrame, ReplyData, ServerFrame, close},
    },
};
use futures_util::{SinkExt, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, MissedTickBehavior, sleep, timeout},
};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use super::{
    dispatch, frames,
    hub::{CloseReason, Closer, Registration, encode},
};
use crate::state::AppState;

/// Largest frame the gateway sends. A reply that would be larger is answered with an error instead (the
/// write buffer refuses any frame above its cap, see `max_write_buffer_size`).
pub const MAX_OUTBOUND_FRAME_BYTES: usize = 16 << 20;

/// How long a socket closing for shutdown has for its last writes, counted from when it was asked to close: the
/// write under way, the answers of its requests in flight and the frames already queued for it (see
/// [`Session::ending`]). Inside the gateway's [`crate::startup::WS_CLOSE_WAIT`], which follows the HTTP drain.
pub const IN_FLIGHT_WAIT: Duration = Duration::from_secs(3);

/// How long a close handshake may take before the connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// At shutdown, how long after the last writes' time ([`IN_FLIGHT_WAIT`]) the close frame and the client's answer
/// to it may take: every socket's close then ends inside the gateway's wait for them.
const SHUTDOWN_CLOSE_WAIT: Duration = Duration::from_millis(1_500);

const _: () = assert!(
    IN_FLIGHT_WAIT.as_millis() + SHUTDOWN_CLOSE_WAIT.as_millis() < crate::startup::WS_CLOSE_WAIT.as_millis(),
    "a socket closing for shutdown must be done before the gateway stops waiting for it"
);

/// Most queued frames written before one flush.
const MAX_BATCH: usize = 64;

/// Requests refused in a row (over `max_in_flight`) after which the client counts as flooding.
const MAX_STRIKES: usize = 64;

/// Requests whose answer can run to megabytes (`getMessages`, `sync`, `listConversations`: a page of 100 messages
/// of 4,000 characters, or a sync's 2 MiB budget) that one socket runs at once. More wait for their turn, still
/// counting as in flight. An answer waits in the gateway's memory until the socket is ready for it, so without
/// this a client keeping `max_in_flight` such requests out and reading slowly held ~32 large answers (tens of
/// megabytes) for the whole write timeout; with it, at most this many. A client has no use for more at once: the
/// answers come back through one socket, one after another.
pub const HEAVY_IN_FLIGHT: usize = 4;

/// Used when the gateway cannot even encode an error frame (never expected).
const INTERNAL_ERROR_FRAME: &str = r#"{"type":"error","error":{"code":"internal","message":"internal error"}}"#;

/// How a connection ends.
#[derive(Debug)]
enum End {
    /// Send a close frame with this code and reason, then wait for the client's.
    Close(u16, Cow<'static, str>),
    /// The client sent its close: only finish the handshake.
    Drain,
    /// The connection is gone or broken: nothing more to send.
    Drop,
}

impl From<CloseReason> for End {
    fn from(reason: CloseReason) -> Self {
        End::Close(reason.code, reason.reason.into())
    }
}

/// Everything one socket's task owns.
#[derive(Debug)]
pub struct Connection {
    pub state: AppState,
    pub closer: Closer,
    /// Holds one of the gateway's connection slots.
    pub permit: OwnedSemaphorePermit,
    /// Keeps shutdown waiting until this connection has closed.
    pub task: TaskTrackerToken,
}

/// Runs a socket to its end.
pub async fn run(mut socket: WebSocket, connection: Connection) {
    let Connection { state, closer, permit, task } = connection;
    // A short random id ties the socket's log lines and its requests' RPCs together.
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(12);
    let span = tracing::info_span!("ws", connection = %id, user_id = tracing::field::Empty);
    async move {
        let end = match authenticate(&mut socket, &state, &closer, &id).await {
            Ok((verified, token, user)) => {
                tracing::Span::current().record("user_id", user.id);
                let mut registration = state.hub().register(user.id, closer.clone());
                let ready = ServerFrame::Ready {
                    user,
                    ping_interval_ms: millis(state.settings().ws.ping_interval),
                    sync_interval_ms: millis(state.settings().ws.sync_interval),
                };
                tracing::debug!("socket authenticated");
                let mut session = Session {
                    socket: &mut socket,
                    state: &state,
                    closer: &closer,
                    registration: &mut registration,
                    user: verified,
                    token,
                    closing: false,
                    in_flight: FuturesUnordered::new(),
                    heavy: Arc::new(Semaphore::new(HEAVY_IN_FLIGHT)),
                };
                match session.write_frame(&ready).await {
                    Ok(()) => session.serve(&Arc::from(id.as_str())).await,
                    Err(end) => end,
                }
            }
            Err(end) => end,
        };
        tracing::debug!(?end, "socket closing");
        let close_by = closer.shutdown_at().map(|at| at + IN_FLIGHT_WAIT + SHUTDOWN_CLOSE_WAIT);
        finish(socket, end, state.settings().ws.write_timeout, close_by).await;
        drop((permit, task));
    }
    .instrument(span)
    .await;
}

async fn authenticate(
    socket: &mut WebSocket,
    state: &AppState,
    closer: &Closer,
    connection: &str,
) -> Result<(VerifiedUser, Arc<str>, User), End> {
    let settings = &state.settings().ws;
    let mut deadline = pin!(sleep(settings.auth_timeout));
    let token = loop {
        let message = tokio::select! {
            () = &mut deadline => return Err(End::Close(close::UNAUTHORIZED, "no auth frame in time".into())),
            reason = closer.closed() => return Err(reason.into()),
            message = socket.recv() => message,
        };
        match inbound(message, settings.max_message_bytes)? {
            Inbound::Text(text) => match frames::parse(&text) {
                Ok(ClientFrame::Auth { token }) => break token,
                Ok(_) => return Err(End::Close(close::UNAUTHORIZED, "the first frame must be auth".into())),
                Err(rejected) => return Err(End::Close(close::UNAUTHORIZED, unreadable_auth(&rejected.error.message))),
            },
            Inbound::Control => {}
        }
    };
    let verified =
        state.authenticate(&token).map_err(|_| End::Close(close::UNAUTHORIZED, "invalid or expired token".into()))?;
    let request_id = format!("{connection}-auth");
    let get_self = GetSelfRequest { user_id: verified.user_id };
    let user = tokio::select! {
        user = state.call::<GetSelf>(&request_id, &get_self) => user,
        reason = closer.closed() => return Err(reason.into()),
    };
    match user {
        Ok(user) => Ok((verified, token.into(), user)),
        Err(error) => {
            tracing::info!(code = ?error.code, user_id = verified.user_id, "cannot load the user of a socket");
            let (code, reason) = refusal(&error);
            let frame = text_of(&ServerFrame::Error { id: None, error });
            send(socket, Some(closer), settings.write_timeout, Message::Text(frame)).await?;
            Err(End::Close(code, reason.into()))
        }
    }
}

/// The close code when the user behind a valid token cannot be loaded.
fn refusal(error: &ApiError) -> (u16, &'static str) {
    match error.code {
        ErrorCode::NotFound | ErrorCode::Unauthorized | ErrorCode::Forbidden => (close::UNAUTHORIZED, "unknown user"),
        ErrorCode::Internal => (1011, "internal error"),
        code if code.is_retryable() => (1013, "try again later"),
        _ => (1011, "internal error"),
    }
}

/// An authenticated socket being served.
struct Session<'a> {
    socket: &'a mut WebSocket,
    state: &'a AppState,
    closer: &'a Closer,
    registration: &'a mut Registration,
    /// Who the socket serves, and until when: the token it authenticated with, or the last one a `refreshToken`
    /// written to it returned.
    user: VerifiedUser,
    /// That token itself (a `refreshToken` request carries it to the user-service).
    token: Arc<str>,
    /// The hub closed the socket and its last answers are being written (see [`Self::ending`]).
    closing: bool,
    /// Requests running; each ends with the frame to write, or `None` when the hub already answered it.
    in_flight: FuturesUnordered<BoxFuture<'static, Option<ServerFrame>>>,
    /// Turns for the requests with large answers (see [`HEAVY_IN_FLIGHT`]).
    heavy: Arc<Semaphore>,
}

impl Session<'_> {
    async fn serve(&mut self, connection: &Arc<str>) -> End {
        let settings = &self.state.settings().ws;
        let mut idle = pin!(sleep(settings.idle_timeout));
        let mut ping = tokio::time::interval_at(Instant::now() + settings.ping_interval, settings.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut requests = 0u64;
        let mut strikes = 0usize;
        loop {
            let step = tokio::select! {
                reason = self.closer.closed() => Err(self.ending(reason).await),
                message = self.socket.recv() => match inbound(message, settings.max_message_bytes) {
                    Ok(message) => {
                        idle.as_mut().reset(Instant::now() + settings.idle_timeout);
                        match message {
                            Inbound::Text(text) => match self.reap_answered().await {
                                Err(end) => Err(end),
                                Ok(()) => match self.admit(&text, &mut strikes) {
                                    Ok(Admitted::Request(frame)) => {
                                        requests += 1;
                                        let request_id = format!("{connection}-{requests}");
                                        self.start(connection, request_id, frame);
                                        Ok(())
                                    }
                                    Ok(Admitted::Refused(error)) => self.write_frame(&error).await,
                                    Err(end) => Err(end),
                                },
                            },
                            Inbound::Control => Ok(()),
                        }
                    }
                    Err(end) => Err(end),
                },
                Some(reply) = self.in_flight.next(), if !self.in_flight.is_empty() => match reply {
                    Some(reply) => self.write_reply(reply).await,
                    None => Ok(()),
                },
                Some(first) = self.registration.outbound.recv() => self.write_queued(first).await,
                // The session lasts as long as its token would be accepted, as every REST call would tell the
                // client; checked at each keep-alive ping rather than by a timer of its own, which would be polled
                // with every frame (so a socket ends within one ping interval of its token's expiry).
                _ = ping.tick() => if self.user.lifetime_left(unix_now()).is_zero() {
                    tracing::info!("closing a socket whose token expired");
                    Err(End::Close(close::UNAUTHORIZED, "the session expired; sign in again".into()))
                } else {
                    self.send(Message::Ping(Default::default())).await
                },
                () = &mut idle => Err(End::Close(1001, "idle timeout".into())),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// How the socket ends when the hub closes it. When the gateway shuts down, the requests already running are
    /// answered first: each was sent on to a service that will act on it, and a client told nothing cannot know
    /// whether a `removeMember` or a group create without `clientGroupId` happened. The frames already queued for
    /// the socket go out too (a send's answer can be among them). All of it within [`IN_FLIGHT_WAIT`] of the
    /// shutdown. A slow socket (4008) is closed at once: it is not reading.
    async fn ending(&mut self, reason: CloseReason) -> End {
        if reason == CloseReason::SHUTTING_DOWN {
            self.closing = true;
            // Requests still waiting for a turn were never sent: they are answered `unavailable` now (see
            // [`in_turn`]), inside the loop below, whose writes no longer give way to the closer.
            self.heavy.close();
            // The writes too are inside the time: a client that stopped reading cannot stretch it.
            match tokio::time::timeout_at(last_writes_deadline(self.closer), self.write_last()).await {
                Ok(Ok(())) => {}
                Ok(Err(end)) => return end,
                Err(_) => tracing::info!(
                    requests = self.in_flight.len(),
                    frames = self.registration.outbound.len(),
                    "closing with requests unanswered or frames unwritten"
                ),
            }
        }
        reason.into()
    }

    /// Writes the answers of the requests in flight as they come, then whatever is left in the socket's queue.
    async fn write_last(&mut self) -> Result<(), End> {
        while !self.in_flight.is_empty() {
            tokio::select! {
                Some(reply) = self.in_flight.next() => if let Some(reply) = reply {
                    self.write_reply(reply).await?;
                },
                Some(first) = self.registration.outbound.recv() => self.write_queued(first).await?,
            }
        }
        while let Some(first) = self.registration.outbound.try_recv() {
            self.write_queued(first).await?;
        }
        Ok(())
    }

    /// Runs a request alongside the others in flight. A `sendMessage` is registered with the hub first, so the
    /// stored message's event can answer it (see [`super::hub`]); it stops counting as in flight as soon as either
    /// answer was written, and the service's answer is written only if the hub has not written one.
    ///
    /// A request with a large answer runs in one of the socket's turns (see [`in_turn`]).
    fn start(&mut self, connection: &Arc<str>, request_id: String, frame: ClientFrame) {
        let awaited = match &frame {
            ClientFrame::SendMessage { id, request } => self.registration.await_send(request, id),
            _ => None,
        };
        // A request's time counts from its arrival, whatever it waits for before its call starts.
        let deadline = Instant::now() + self.state.settings().rpc_timeout;
        let turn = large_answer_operation(&frame).map(|operation| Turn {
            slots: self.heavy.clone(),
            operation,
            id: frame.id().unwrap_or_default().to_owned(),
            deadline,
        });
        let caller = dispatch::Caller {
            user: self.user.clone(),
            token: self.token.clone(),
            deadline,
            connection: connection.clone(),
        };
        let handled = dispatch::handle(self.state.clone(), caller, request_id, frame);
        self.in_flight.push(match (turn, awaited) {
            (Some(turn), _) => Box::pin(async move { Some(in_turn(turn, handled).await) }),
            (None, Some(awaited)) => Box::pin(awaited.race(handled)),
            (None, None) => Box::pin(async move { Some(handled.await) }),
        });
    }

    /// At the in-flight limit, takes out the requests that are already answered before a new frame is counted. A
    /// send answered from its event (see [`Self::start`]) was written through the hub's queue, so its client can
    /// send the next frame before this loop has polled the finished request out of `in_flight`; counting it then
    /// refused clients that kept exactly the documented maximum in flight.
    async fn reap_answered(&mut self) -> Result<(), End> {
        if self.in_flight.len() < self.state.settings().ws.max_in_flight {
            return Ok(());
        }
        loop {
            // Polled once with this task's own waker (not `now_or_never`'s no-op one, which `FuturesUnordered`
            // would keep and so never wake this task for the requests still running), outside tokio's cooperative
            // budget, which could otherwise report a finished request as pending.
            let polled = tokio::task::unconstrained(std::future::poll_fn(|cx| {
                std::task::Poll::Ready(self.in_flight.poll_next_unpin(cx))
            }))
            .await;
            match polled {
                std::task::Poll::Ready(Some(Some(reply))) => self.write_reply(reply).await?,
                std::task::Poll::Ready(Some(None)) => {}
                std::task::Poll::Ready(None) | std::task::Poll::Pending => return Ok(()),
            }
        }
    }

    /// Decides what to do with a text frame: run it, refuse it with an error frame, or end a flooding client.
    fn admit(&self, text: &str, strikes: &mut usize) -> Result<Admitted, End> {
        let frame = match frames::parse(text) {
            Ok(ClientFrame::Auth { .. }) => {
                return Ok(Admitted::Refused(ServerFrame::Error {
                    id: frames::request_id(text),
                    error: ApiError::bad_request("already authenticated"),
                }));
            }
            Ok(frame) => frame,
            Err(rejected) => return Ok(Admitted::Refused(rejected.into())),
        };
        // Read after the socket was asked to close (a write under way at shutdown finished first): not started,
        // since its answer could not be awaited, and answered so, so the client knows it did not happen.
        if self.closer.is_closed() {
            return Ok(Admitted::Refused(ServerFrame::Error {
                id: frame.id().map(str::to_owned),
                error: ApiError::unavailable("the gateway is closing this socket; ask again after reconnecting"),
            }));
        }
        let max = self.state.settings().ws.max_in_flight;
        if self.in_flight.len() < max {
            *strikes = 0;
            return Ok(Admitted::Request(frame));
        }
        *strikes += 1;
        if *strikes > MAX_STRIKES {
            tracing::info!("closing a socket that floods requests");
            return Err(End::Close(close::PROTOCOL, "too many requests at once".into()));
        }
        Ok(Admitted::Refused(ServerFrame::Error {
            id: frame.id().map(str::to_owned),
            error: ApiError::new(ErrorCode::RateLimited, format!("too many requests in flight (at most {max})")),
        }))
    }

    /// A `refreshToken` reply carries a new token for this session: from now on the socket lasts as long as that
    /// token would be accepted, so a client that refreshes in time is never cut off.
    fn adopt_refreshed_token(&mut self, reply: &ServerFrame) {
        let ServerFrame::Reply { result: ReplyData::RefreshToken(auth), .. } = reply else { return };
        match self.state.authenticate(&auth.token) {
            Ok(refreshed) if refreshed.user_id == self.user.user_id => {
                self.user = refreshed;
                self.token = auth.token.as_str().into();
            }
            Ok(refreshed) => {
                tracing::error!(
                    other = refreshed.user_id,
                    "a refreshed token is for another user; the socket keeps its own"
                );
            }
            Err(error) => tracing::error!(%error, "a refreshed token does not verify; the socket keeps its own"),
        }
    }

    /// Writes a request's answer; every reply goes out here, so a refreshed token is always adopted.
    async fn write_reply(&mut self, reply: ServerFrame) -> Result<(), End> {
        self.adopt_refreshed_token(&reply);
        let mut text = text_of(&reply);
        if text.len() > MAX_OUTBOUND_FRAME_BYTES {
            let id = match &reply {
                ServerFrame::Reply { id, .. } => Some(id.clone()),
                _ => None,
            };
            tracing::warn!(bytes = text.len(), "a reply is too large to send");
            let error = ApiError::new(ErrorCode::PayloadTooLarge, "the reply is too large; ask for a smaller page");
            text = text_of(&ServerFrame::Error { id, error });
        }
        self.send(Message::Text(text)).await
    }

    async fn write_frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.send(Message::Text(text_of(frame))).await
    }

    /// Writes `first` and whatever else is queued (up to a batch), then flushes once.
    async fn write_queued(&mut self, first: Utf8Bytes) -> Result<(), End> {
        let Session { socket, registration, closer, state, closing, .. } = self;
        let closer = (!*closing).then_some(&**closer);
        let outbound = &mut registration.outbound;
        let write = async {
            socket.feed(Message::Text(first)).await?;
            for _ in 1..MAX_BATCH {
                match outbound.try_recv() {
                    Some(text) => socket.feed(Message::Text(text)).await?,
                    None => break,
                }
            }
            socket.flush().await
        };
        bounded(write, closer, state.settings().ws.write_timeout).await
    }

    async fn send(&mut self, message: Message) -> Result<(), End> {
        let closer = (!self.closing).then_some(self.closer);
        send(self.socket, closer, self.state.settings().ws.write_timeout, message).await
    }
}

/// What a request with a large answer needs to wait for its turn.
struct Turn {
    /// The socket's turns ([`HEAVY_IN_FLIGHT`]); closed when the socket closes for shutdown.
    slots: Arc<Semaphore>,
    /// The operation's name, for a `timeout` error.
    operation: &'static str,
    /// The request frame's `id`, for an error frame.
    id: String,
    /// Its arrival plus the RPC timeout; the call itself carries the same deadline to the service.
    deadline: Instant,
}

/// Runs a request with a large answer once one of the socket's turns is free, and keeps the turn until its answer
/// is decoded and handed to the socket's loop, which writes it next. Its time counts from its arrival, as a
/// send's does: a request that waited its turn is still answered `timeout` within the RPC timeout, not a full
/// timeout after it started (its call gets what is left). A request still waiting when the gateway shuts down is
/// answered `unavailable`: it was never sent, and the client asks again elsewhere.
async fn in_turn(turn: Turn, handled: impl Future<Output = ServerFrame>) -> ServerFrame {
    let Turn { slots, operation, id, deadline } = turn;
    let refused = |error| ServerFrame::Error { id: Some(id), error };
    let _turn = tokio::select! {
        // Checked first: a turn that frees up after the deadline must not start the request.
        biased;
        () = tokio::time::sleep_until(deadline) => {
            tracing::warn!(operation, "a request timed out waiting for its turn");
            return refused(ApiError::timeout(format!("{operation} did not answer in time")));
        }
        turn = slots.acquire_owned() => match turn {
            Ok(turn) => turn,
            Err(_) => return refused(ApiError::unavailable("the gateway is shutting down; ask again")),
        },
    };
    handled.await
}

/// The operation of a request whose answer can run to megabytes (see [`HEAVY_IN_FLIGHT`]).
fn large_answer_operation(frame: &ClientFrame) -> Option<&'static str> {
    match frame {
        ClientFrame::GetMessages { .. } => Some("getMessages"),
        ClientFrame::Sync { .. } => Some("sync"),
        ClientFrame::ListConversations { .. } => Some("listConversations"),
        _ => None,
    }
}

enum Admitted {
    Request(ClientFrame),
    Refused(ServerFrame),
}

async fn send(socket: &mut WebSocket, closer: Option<&Closer>, limit: Duration, message: Message) -> Result<(), End> {
    bounded(socket.send(message), closer, limit).await
}

/// Runs a write, giving up when the client does not take it in time (it is too slow) or the hub closes the
/// socket as too slow meanwhile (`closer`; `None` for the last writes of a socket the hub already closed).
///
/// When the gateway shuts down during the write, the write goes on (until [`last_writes_deadline`]) and the
/// socket then ends through [`Session::ending`]. Dropping it would lose the frames it was writing, and end the
/// socket without the answers of its requests in flight or the frames still queued.
async fn bounded(
    write: impl Future<Output = Result<(), axum::Error>>,
    closer: Option<&Closer>,
    limit: Duration,
) -> Result<(), End> {
    let closed = async {
        match closer {
            Some(closer) => closer.closed().await,
            None => std::future::pending().await,
        }
    };
    let mut write = pin!(timeout(limit, write));
    let written = tokio::select! {
        // A write that can go at once goes, even when the socket is closing.
        biased;
        written = &mut write => written,
        reason = closed => match closer {
            Some(closer) if reason == CloseReason::SHUTTING_DOWN => {
                match tokio::time::timeout_at(last_writes_deadline(closer), write).await {
                    // A write that runs out of time now ends the socket for the shutdown (1001), not as too slow.
                    Ok(Err(_)) | Err(_) => return Err(reason.into()),
                    Ok(written) => written,
                }
            }
            _ => return Err(reason.into()),
        },
    };
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => {
            tracing::debug!(%error, "write failed");
            Err(End::Drop)
        }
        Err(_) => Err(CloseReason::SLOW_CONSUMER.into()),
    }
}

/// Until when a socket closing for shutdown may write: [`IN_FLIGHT_WAIT`] after it was asked to close.
fn last_writes_deadline(closer: &Closer) -> Instant {
    closer.closed_at().unwrap_or_else(Instant::now) + IN_FLIGHT_WAIT
}

/// The close reason for a first frame that could not be read as `auth`, within the 123 bytes a close reason may
/// take.
fn unreadable_auth(why: &str) -> std::borrow::Cow<'static, str> {
    let mut reason = format!("unreadable auth frame: {why}");
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.truncate(end);
    reason.into()
}

enum Inbound {
    Text(Utf8Bytes),
    /// Ping or pong: proof of life, nothing to answer (tungstenite answers pings itself).
    Control,
}

fn inbound(message: Option<Result<Message, axum::Error>>, max_bytes: usize) -> Result<Inbound, End> {
    match message {
        Some(Ok(Message::Text(text))) => Ok(Inbound::Text(text)),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(Inbound::Control),
        Some(Ok(Message::Binary(_))) => Err(End::Close(close::PROTOCOL, "binary frames are not supported".into())),
        Some(Ok(Message::Close(_))) => Err(End::Drain),
        Some(Err(error)) if is_too_large(&error) => {
            tracing::info!("closing a socket that sent an oversized frame");
            Err(End::Close(1009, format!("frame too large (at most {max_bytes} bytes)").into()))
        }
        Some(Err(error)) if is_invalid_text(&error) => {
            tracing::info!("closing a socket that sent a text frame that is not UTF-8");
            Err(End::Close(1007, "text frames must be valid UTF-8".into()))
        }
        Some(Err(error)) => {
            tracing::debug!(%error, "socket read failed");
            Err(End::Drop)
        }
        None => Err(End::Drop),
    }
}

/// Whether tungstenite refused a frame or message over the configured size.
fn is_too_large(error: &axum::Error) -> bool {
    error
        .source()
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
        .is_some_and(|error| matches!(error, tungstenite::Error::Capacity(_)))
}

/// Whether tungstenite refused a text frame whose payload is not UTF-8 (RFC 6455 §8.1: close with 1007).
fn is_invalid_text(error: &axum::Error) -> bool {
    error
        .source()
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
        .is_some_and(|error| matches!(error, tungstenite::Error::Utf8(_)))
}

/// Sends the close frame (if any) and reads until the client's close ends the stream.
///
/// The close frame gets the whole write timeout: a client closed for being slow has a full buffer to read
/// before it reaches the reason. Its answer then gets [`CLOSE_GRACE`]. Neither goes past `close_by`, set when the
/// gateway is shutting down.
async fn finish(mut socket: WebSocket, end: End, write_timeout: Duration, close_by: Option<Instant>) {
    let by = |limit: Duration| {
        let at = Instant::now() + limit;
        close_by.map_or(at, |close_by| at.min(close_by))
    };
    if let End::Close(code, reason) = &end {
        let frame = Message::Close(Some(CloseFrame { code: *code, reason: Utf8Bytes::from(reason.as_ref()) }));
        if !matches!(tokio::time::timeout_at(by(write_timeout), socket.send(frame)).await, Ok(Ok(()))) {
            tracing::debug!("the close frame could not be delivered");
            return;
        }
    }
    if matches!(end, End::Drop) {
        return;
    }
    let _ = tokio::time::timeout_at(by(CLOSE_GRACE), async { while let Some(Ok(_)) = socket.recv().await {} }).await;
}

fn text_of(frame: &ServerFrame) -> Utf8Bytes {
    encode(frame).unwrap_or_else(|| Utf8Bytes::from_static(INTERNAL_ERROR_FRAME))
}

/// Seconds since the Unix epoch, the clock tokens are written in.
pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
