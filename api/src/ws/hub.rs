//! The hub: which local sockets belong to which user, and the fan-in that routes broker events to them.
//!
//! Every gateway receives every event (DESIGN §3); the hub is where privacy is enforced (§2.5): an event goes
//! to the sockets of the users it names as recipients and to no other socket, ever.
//!
//! The fan-in never waits on a socket. Each socket has a bounded outbound queue; an event is serialised once and
//! the same bytes are offered to every recipient with `try_send`. A socket whose queue is full has fallen behind:
//! it is closed with 4008 ("too slow, reconnect and sync") instead of being allowed to grow the gateway's memory
//! or hold up everyone else's events; the client repairs what it missed with `sync` when it reconnects. The queue
//! is bounded in bytes as well as in frames ([`MAX_QUEUED_BYTES`]): a frame can be 24 kB (4,000 characters that
//! JSON escapes), so a count alone let a socket that reads just fast enough never to fill it hold 24 MB.
//!
//! **A sender's own socket gets its answer in place of its echo.** A socket's `sendMessage` to a conversation is
//! registered with the hub ([`Registration::await_send`]) while it is in flight. When the event of exactly the
//! message it asks to store (same conversation, client message id and body) reaches this gateway,
//! that socket is sent the `sendMessage` reply (which carries the same message) instead of the `message` frame, in
//! the frame's place in the socket's ordered stream, and the in-flight request is marked answered. The event is
//! published only after the commit, so the answer still means durable (DESIGN §2.1); it comes before the
//! service's own reply would (0.2–0.5 ms under load, up to a millisecond on an idle stack), and the socket is
//! written once per send instead of twice.
//! If the reply wins the race, the request is answered from it and the socket later gets the frame as well (a
//! duplicate by seq, which clients ignore). The sender's other sockets always get the frame (§2.5).
//!
//! The map sits behind a plain mutex held only for non-blocking work (lookups, `try_send`, encoding a new
//! message's frame and its sender's reply), never across an `.await`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;
use common::{
    amqp::Received,
    protocol::{
        messages::{Event, Message, SendMessageRequest},
        ws::{ReplyData, ServerFrame, close},
    },
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    time::Instant,
};
use tokio_util::{
    sync::CancellationToken,
    task::{TaskTracker, task_tracker::TaskTrackerToken},
};

/// Why the gateway closes a socket: a WebSocket close code and a short reason (at most 123 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseReason {
    pub const SHUTTING_DOWN: CloseReason = CloseReason { code: 1001, reason: "server shutting down" };
    pub const SLOW_CONSUMER: CloseReason =
        CloseReason { code: close::SLOW_CONSUMER, reason: "too slow, reconnect and sync" };
}

/// Tells one socket's task to close, with a reason. Cancelled by the hub (slow consumer) or, as a child of the
/// hub's shutdown token, by the gateway shutting down (then the reason is 1001).
#[derive(Debug, Clone)]
pub struct Closer {
    token: CancellationToken,
    /// The reason, and when the socket was asked to close.
    closed: Arc<OnceLock<(CloseReason, Instant)>>,
    /// When the gateway began to shut down (the hub's, shared by every socket).
    shutdown_at: Arc<OnceLock<Instant>>,
}

impl Closer {
    /// Asks the socket to close. The first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.closed.set((reason, Instant::now()));
        self.token.cancel();
    }

    /// Resolves once the socket was asked to close, with the reason.
    pub async fn closed(&self) -> CloseReason {
        self.token.cancelled().await;
        self.reason_and_time().0
    }

    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// When the socket was asked to close; `None` while it was not. The socket's last writes are timed from it,
    /// so that they share one deadline however many of them there are.
    pub fn closed_at(&self) -> Option<Instant> {
        self.is_closed().then(|| self.reason_and_time().1)
    }

    /// When the gateway began to shut down; `None` while it has not. Every socket's close is timed from it,
    /// whatever closed the socket, so that all of them end inside the gateway's wait for them.
    pub fn shutdown_at(&self) -> Option<Instant> {
        self.shutdown_at.get().copied()
    }

    /// The shutdown cancels every socket's token at once, through their parent, without a reason: the reason is
    /// then the shutdown's, at the time the hub recorded.
    fn reason_and_time(&self) -> (CloseReason, Instant) {
        *self.closed.get_or_init(|| (CloseReason::SHUTTING_DOWN, self.shutdown_at().unwrap_or_else(Instant::now)))
    }
}

/// Bytes of frames queued for one socket past which it counts as too slow, whatever the frame count. Room for
/// hundreds of the largest messages, and a socket that far behind is better served by a `sync`. (Frames of an
/// event are shared by all its recipients, so this bounds what one socket can hold, not what it alone costs.)
pub const MAX_QUEUED_BYTES: usize = 8 << 20;

/// A socket as the hub sees it: where to put its frames, how to close it, and its sends in flight.
#[derive(Debug)]
struct Entry {
    id: u64,
    outbound: mpsc::Sender<Utf8Bytes>,
    /// Bytes in `outbound` (added here, taken off by the socket's [`Outbound`]).
    queued: Arc<AtomicUsize>,
    closer: Closer,
    awaited: Vec<AwaitedSend>,
}

impl Entry {
    /// Queues a frame unless the queue is full in frames or in bytes.
    fn queue(&self, text: &Utf8Bytes) -> Result<(), mpsc::error::TrySendError<Utf8Bytes>> {
        // Counted before it is queued, so the socket never takes off more than was added.
        let queued = self.queued.fetch_add(text.len(), Ordering::Relaxed) + text.len();
        let sent = if queued > MAX_QUEUED_BYTES {
            Err(mpsc::error::TrySendError::Full(text.clone()))
        } else {
            self.outbound.try_send(text.clone())
        };
        if sent.is_err() {
            self.queued.fetch_sub(text.len(), Ordering::Relaxed);
        }
        sent
    }
}

/// A `sendMessage` of this socket in flight, which the stored message's event may answer.
#[derive(Debug)]
struct AwaitedSend {
    token: u64,
    /// What the send asks to store. An event answers it only if its message is exactly that: the same client
    /// message id in another conversation or with another body is another message, which the service refuses
    /// with `conflict` (a send racing its namesake from another socket would otherwise be answered with it).
    conversation_id: i64,
    client_message_id: String,
    body: String,
    /// The request frame's `id`, which the reply names.
    frame_id: String,
    /// Told when the hub has answered the send, so the request stops counting as in flight.
    answered: oneshot::Sender<()>,
}

/// The process-wide registry of authenticated sockets. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sockets: Mutex<HashMap<i64, Vec<Entry>>>,
    /// Ids of sockets and of awaited sends.
    next_id: AtomicU64,
    queue_capacity: usize,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
    /// When `shutdown` was cancelled.
    shutdown_at: Arc<OnceLock<Instant>>,
    tasks: TaskTracker,
    /// For each [`Loss`]: the last `resync` for it, and whether one is waiting to go.
    losses: [Mutex<LossResync>; 2],
}

/// Why live events were lost, other than a lost broker connection: each kind has its own pace of `resync`s.
///
/// `resync`s for a loss go at most once per its [`Loss::gap`], since losses come in runs: a message-service of a
/// newer release may publish an unknown kind with every commit, and a gateway that fell behind its queue loses
/// batches for as long as it stays behind. A `resync` of every socket per batch would have every client syncing
/// back to back. Losses inside a gap are covered by a `resync` at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// Events this gateway cannot read (see [`Received::Unreadable`]).
    Unreadable,
    /// The gateway's event queue dropped batches at its length limit (see [`Received::Dropped`]).
    Dropped,
}

impl Loss {
    /// The shortest time between two `resync`s for this loss.
    fn gap(self) -> Duration {
        match self {
            Loss::Unreadable => UNREADABLE_RESYNC_GAP,
            Loss::Dropped => DROPPED_RESYNC_GAP,
        }
    }

    fn why(self) -> &'static str {
        match self {
            Loss::Unreadable => {
                "dropped events this gateway cannot read (a newer message-service?); asking every socket to sync"
            }
            Loss::Dropped => {
                "this gateway fell behind and its event queue dropped the oldest events; asking every socket to sync"
            }
        }
    }
}

#[derive(Debug, Default)]
struct LossResync {
    last: Option<Instant>,
    waiting: bool,
}

/// The shortest time between two `resync`s for unreadable events.
pub const UNREADABLE_RESYNC_GAP: Duration = Duration::from_secs(5);

/// The shortest time between two `resync`s for events the queue dropped. Longer: a gateway that falls that far
/// behind is short of capacity, and every `resync` has each of its clients ask for a `sync` (up to 2 MiB); at
/// this pace they add no more than the clients' own periodic syncs (every 30 s by default).
pub const DROPPED_RESYNC_GAP: Duration = Duration::from_secs(30);

/// A socket's membership in the hub; dropping it (when the socket's task ends) removes the socket.
#[derive(Debug)]
pub struct Registration {
    hub: Hub,
    user_id: i64,
    id: u64,
    /// The frames the hub routed to this socket, in order.
    pub outbound: Outbound,
}

/// A socket's end of its outbound queue: takes each frame's bytes off the socket's count as it is taken.
#[derive(Debug)]
pub struct Outbound {
    frames: mpsc::Receiver<Utf8Bytes>,
    queued: Arc<AtomicUsize>,
}

impl Outbound {
    /// The next frame, waiting for one; `None` once the hub has let the socket go. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Utf8Bytes> {
        let frame = self.frames.recv().await;
        self.taken(frame)
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Utf8Bytes> {
        let frame = self.frames.try_recv().ok();
        self.taken(frame)
    }

    /// Frames queued and not yet taken.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn taken(&self, frame: Option<Utf8Bytes>) -> Option<Utf8Bytes> {
        if let Some(frame) = &frame {
            self.queued.fetch_sub(frame.len(), Ordering::Relaxed);
        }
        frame
    }
}

impl Registration {
    /// Registers a `sendMessage` of this socket (to a conversation, with its client message id and body, and the
    /// request frame's id) as in flight, until the returned guard is settled or dropped. Register before the send
    /// leaves, so its event cannot come first. A send to a person (`toUserId`) is not registered: which
    /// conversation it lands in is the service's to say, so only the service's answer can answer it.
    pub fn await_send(&self, send: &SendMessageRequest, frame_id: &str) -> Option<AwaitedSendGuard> {
        let conversation_id = send.conversation_id?;
        let token = self.hub.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (answered, answered_by_hub) = oneshot::channel();
        if let Some(entry) =
            self.hub.sockets().get_mut(&self.user_id).and_then(|e| e.iter_mut().find(|e| e.id == self.id))
        {
            entry.awaited.push(AwaitedSend {
                token,
                conversation_id,
                client_message_id: send.client_message_id.clone(),
                body: send.body.clone(),
                frame_id: frame_id.to_owned(),
                answered,
            });
        }
        Some(AwaitedSendGuard {
            hub: self.hub.clone(),
            user_id: self.user_id,
            socket: self.id,
            token,
            answered_by_hub,
            settled: false,
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(self.user_id, self.id);
    }
}

/// A socket's `sendMessage` in flight, registered with the hub. Dropping it unregisters the send.
#[derive(Debug)]
pub struct AwaitedSendGuard {
    hub: Hub,
    user_id: i64,
    socket: u64,
    token: u64,
    answered_by_hub: oneshot::Receiver<()>,
    /// The send is off the hub's list already (taken back, answered by the hub, or its socket gone).
    settled: bool,
}

impl AwaitedSendGuard {
    /// Waits for the send's answer from the service (`reply`) or from the hub, whichever comes first: `Some`
    /// with the service's answer for the caller to write, or `None` once the hub has answered the socket itself
    /// (the request then no longer counts as in flight, and the service's later answer is dropped).
    pub async fn race(mut self, reply: impl Future<Output = ServerFrame>) -> Option<ServerFrame> {
        let answer = tokio::select! {
            biased;
            // Also resolves (as an error) if the socket left the hub: it is closing, nothing to write.
            _ = &mut self.answered_by_hub => None,
            reply = reply => self.take().then_some(reply),
        };
        self.settled = true;
        answer
    }

    /// [`Self::take`] for the unit tests, which answer by hand.
    #[cfg(test)]
    fn settle(mut self) -> bool {
        self.settled = true;
        self.take()
    }

    /// Takes the send off the hub's list once the service answered it: `true` if the caller must write that
    /// answer, `false` if the hub already answered the socket from the stored message's event (or the socket has
    /// left the hub, so there is no one to answer).
    fn take(&self) -> bool {
        let mut sockets = self.hub.sockets();
        let Some(entry) = sockets.get_mut(&self.user_id).and_then(|e| e.iter_mut().find(|e| e.id == self.socket))
        else {
            return false;
        };
        let Some(index) = entry.awaited.iter().position(|send| send.token == self.token) else { return false };
        entry.awaited.swap_remove(index);
        true
    }
}

impl Drop for AwaitedSendGuard {
    fn drop(&mut self) {
        if !self.settled {
            self.take();
        }
    }
}

impl Hub {
    /// `queue_capacity` frames per socket; at most `max_connections` sockets at once.
    pub fn new(queue_capacity: usize, max_connections: usize) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                sockets: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                queue_capacity: queue_capacity.max(1),
                connections: Arc::new(Semaphore::new(max_connections)),
                shutdown: CancellationToken::new(),
                shutdown_at: Arc::new(OnceLock::new()),
                tasks: TaskTracker::new(),
                losses: Default::default(),
            }),
        }
    }

    /// Reserves a connection slot, held by the socket's task for its lifetime. `None` when the gateway is full
    /// or shutting down.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        if self.inner.shutdown.is_cancelled() {
            return None;
        }
        self.inner.connections.clone().try_acquire_owned().ok()
    }

    /// A closer for a new socket; already closed if the gateway is shutting down.
    pub fn closer(&self) -> Closer {
        Closer {
            token: self.inner.shutdown.child_token(),
            closed: Arc::new(OnceLock::new()),
            shutdown_at: self.inner.shutdown_at.clone(),
        }
    }

    /// Counts a socket as running until the token is dropped, so shutdown waits for its close handshake. Taken
    /// before the upgrade completes: a socket in the middle of its upgrade is counted too.
    pub fn task_token(&self) -> TaskTrackerToken {
        self.inner.tasks.token()
    }

    /// Adds an authenticated socket of `user_id`; events for that user are queued on the returned receiver.
    pub fn register(&self, user_id: i64, closer: Closer) -> Registration {
        let (tx, frames) = mpsc::channel(self.inner.queue_capacity);
        let queued = Arc::new(AtomicUsize::new(0));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Entry { id, outbound: tx, queued: queued.clone(), closer, awaited: Vec::new() };
        self.sockets().entry(user_id).or_default().push(entry);
        Registration { hub: self.clone(), user_id, id, outbound: Outbound { frames, queued } }
    }

    /// How many authenticated sockets are registered.
    pub fn len(&self) -> usize {
        self.sockets().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The event subscriber's callback: routes events, and asks every socket to `sync` after the subscription
    /// (re)attached, since whatever was published meanwhile never reached this gateway.
    pub fn receive(&self, received: Received) {
        match received {
            Received::Event(event) => self.route(event),
            Received::Attached { generation } => {
                let sockets = self.len();
                if sockets > 0 {
                    tracing::warn!(generation, sockets, "event subscription (re)attached; asking every socket to sync");
                }
                self.resync_all("live events may have been lost; sync to catch up");
            }
            Received::Unreadable { .. } => self.resync_for(Loss::Unreadable),
            Received::Dropped => self.resync_for(Loss::Dropped),
        }
    }

    /// Sends one event to the sockets of its recipients.
    pub fn route(&self, event: Event) {
        let (frame, mut recipients) = match event {
            Event::Message { message, recipients } => return self.route_message(message, recipients),
            Event::Conversation { conversation, recipients } => {
                (ServerFrame::Conversation { conversation }, recipients)
            }
            Event::Read { user_id, position } => (ServerFrame::Read { position }, vec![user_id]),
        };
        recipients.sort_unstable();
        recipients.dedup();
        if let Some(text) = encode(&frame) {
            Self::offer(&mut self.sockets(), Some(&recipients), &text, None);
        }
    }

    /// A new message: the frame to every socket of its recipients, except that a socket awaiting this very send
    /// gets its reply instead (see the module documentation).
    fn route_message(&self, message: Message, mut recipients: Vec<i64>) {
        recipients.sort_unstable();
        recipients.dedup();
        let mut sockets = self.sockets();
        let reply = if recipients.binary_search(&message.sender_id).is_ok() {
            sockets.get_mut(&message.sender_id).and_then(|entries| answer_awaited(entries, &message))
        } else {
            None
        };
        // (Encoding a message cannot fail: it is plain numbers and strings.)
        let Some(text) = encode(&ServerFrame::Message { message }) else { return };
        Self::offer(&mut sockets, Some(&recipients), &text, reply.as_ref().map(|(socket, text)| (*socket, text)));
    }

    /// A `resync` of every socket for `loss` now, or at the end of its current gap ([`Loss::gap`]); logged when
    /// sent.
    fn resync_for(&self, loss: Loss) {
        const REASON: &str = "live events may have been lost; sync to catch up";
        let now = Instant::now();
        let mut state = self.losses(loss);
        if state.waiting {
            return;
        }
        match state.last {
            Some(last) if now < last + loss.gap() => {
                state.waiting = true;
                let hub = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(last + loss.gap()).await;
                    {
                        let mut state = hub.losses(loss);
                        state.waiting = false;
                        state.last = Some(Instant::now());
                    }
                    tracing::warn!(sockets = hub.len(), "{}", loss.why());
                    hub.resync_all(REASON);
                });
            }
            _ => {
                state.last = Some(now);
                drop(state);
                tracing::warn!(sockets = self.len(), "{}", loss.why());
                self.resync_all(REASON);
            }
        }
    }

    fn losses(&self, loss: Loss) -> MutexGuard<'_, LossResync> {
        self.inner.losses[loss as usize].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `resync` to every socket.
    pub fn resync_all(&self, reason: &str) {
        if let Some(text) = encode(&ServerFrame::Resync { reason: reason.to_owned() }) {
            Self::offer(&mut self.sockets(), None, &text, None);
        }
    }

    /// Starts closing every socket with 1001 and refuses new ones.
    pub fn shut_down(&self) {
        // Recorded before any socket can see the cancellation.
        let _ = self.inner.shutdown_at.set(Instant::now());
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
    }

    /// Waits (at most `limit`) for every socket's task to finish its close handshake. `false` if some did not.
    pub async fn wait_closed(&self, limit: Duration) -> bool {
        self.inner.tasks.close();
        tokio::time::timeout(limit, self.inner.tasks.wait()).await.is_ok()
    }

    /// Offers `text` to the sockets of `users` (every socket when `None`), or `instead.1` to the socket with id
    /// `instead.0`; closes those whose queue is full, in frames or in bytes.
    fn offer(
        sockets: &mut HashMap<i64, Vec<Entry>>,
        users: Option<&[i64]>,
        text: &Utf8Bytes,
        instead: Option<(u64, &Utf8Bytes)>,
    ) {
        let mut slow: Vec<(i64, u64)> = Vec::new();
        let mut offer_to = |user_id: i64, entries: &Vec<Entry>| {
            for entry in entries {
                let text = match instead {
                    Some((socket, instead)) if socket == entry.id => instead,
                    _ => text,
                };
                match entry.queue(text) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        entry.closer.close(CloseReason::SLOW_CONSUMER);
                        slow.push((user_id, entry.id));
                    }
                    // The socket's task has ended; its registration is being dropped.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        };
        match users {
            Some(users) => {
                for user_id in users {
                    if let Some(entries) = sockets.get(user_id) {
                        offer_to(*user_id, entries);
                    }
                }
            }
            None => sockets.iter().for_each(|(user_id, entries)| offer_to(*user_id, entries)),
        }
        for (user_id, id) in slow {
            tracing::info!(user_id, socket = id, "closing a socket that fell behind");
            remove_from(sockets, user_id, id);
        }
    }

    fn remove(&self, user_id: i64, id: u64) {
        remove_from(&mut self.sockets(), user_id, id);
    }

    fn sockets(&self) -> MutexGuard<'_, HashMap<i64, Vec<Entry>>> {
        // Nothing that runs under this lock can leave the map half-updated, so a poisoned lock is still sound.
        self.inner.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn remove_from(sockets: &mut HashMap<i64, Vec<Entry>>, user_id: i64, id: u64) {
    if let Some(entries) = sockets.get_mut(&user_id) {
        entries.retain(|entry| entry.id != id);
        if entries.is_empty() {
            sockets.remove(&user_id);
        }
    }
}

/// If one of the sender's sockets awaits the send that stored `message`, takes that send off its list and returns
/// the socket's id with the reply to write in place of the message frame.
fn answer_awaited(entries: &mut [Entry], message: &Message) -> Option<(u64, Utf8Bytes)> {
    for entry in entries {
        let Some(index) = entry.awaited.iter().position(|send| {
            send.client_message_id == message.client_message_id
                && send.conversation_id == message.conversation_id
                && send.body == message.body
        }) else {
            continue;
        };
        let id = entry.awaited[index].frame_id.clone();
        let reply = encode(&ServerFrame::Reply { id, result: ReplyData::SendMessage(message.clone()) })?;
        let _ = entry.awaited.swap_remove(index).answered.send(());
        return Some((entry.id, reply));
    }
    None
}

/// Serialises a frame once; its bytes are then shared by every recipient.
pub fn encode(frame: &ServerFrame) -> Option<Utf8Bytes> {
    match serde_json::to_string(frame) {
        Ok(text) => Some(Utf8Bytes::from(text)),
        Err(error) => {
            tracing::error!(%error, "cannot encode a server frame");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use common::protocol::messages::{Message, ReadPosition};

    use super::*;

    fn message(recipients: Vec<i64>) -> Event {
        Event::Message {
            message: Message {
                conversation_id: 7,
                seq: 1,
                sender_id: 1,
                client_message_id: "c1".into(),
                body: "hello".into(),
                sent_at: 0,
            },
            recipients,
        }
    }

    /// The send that stores [`message`]'s message.
    fn send(client_message_id: &str) -> SendMessageRequest {
        SendMessageRequest {
            conversation_id: Some(7),
            to_user_id: None,
            client_message_id: client_message_id.into(),
            body: "hello".into(),
        }
    }

    fn frame(text: &Utf8Bytes) -> serde_json::Value {
        serde_json::from_str(text.as_str()).unwrap()
    }

    fn frame_type(text: &Utf8Bytes) -> String {
        frame(text)["type"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn an_event_reaches_every_socket_of_its_recipients_and_no_other() {
        let hub = Hub::new(8, 100);
        let mut alice_laptop = hub.register(1, hub.closer());
        let mut alice_phone = hub.register(1, hub.closer());
        let mut bob = hub.register(2, hub.closer());
        let mut mallory = hub.register(3, hub.closer());

        hub.route(message(vec![1, 2]));

        let laptop = alice_laptop.outbound.try_recv().expect("alice's laptop gets it");
        let phone = alice_phone.outbound.try_recv().expect("alice's phone gets it");
        let bobs = bob.outbound.try_recv().expect("bob gets it");
        assert_eq!(frame_type(&laptop), "message");
        assert!(mallory.outbound.try_recv().is_none(), "a non-member never receives a message");
        // Serialised once: every recipient shares the same bytes.
        assert_eq!(laptop.as_str().as_ptr(), phone.as_str().as_ptr());
        assert_eq!(laptop.as_str().as_ptr(), bobs.as_str().as_ptr());
    }

    #[tokio::test]
    async fn a_read_position_goes_only_to_that_users_sockets() {
        let hub = Hub::new(8, 100);
        let mut alice = hub.register(1, hub.closer());
        let mut bob = hub.register(2, hub.closer());

        hub.route(Event::Read { user_id: 1, position: ReadPosition { conversation_id: 7, read_seq: 3 } });

        assert_eq!(frame_type(&alice.outbound.try_recv().unwrap()), "read");
        assert!(bob.outbound.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_socket_with_a_full_queue_is_closed_as_slow_and_the_others_carry_on() {
        let hub = Hub::new(2, 100);
        let slow_closer = hub.closer();
        let slow = hub.register(1, slow_closer.clone());
        let mut fast = hub.register(2, hub.closer());

        for _ in 0..3 {
            hub.route(message(vec![1, 2]));
            while fast.outbound.try_recv().is_some() {}
        }

        assert!(slow_closer.is_closed());
        assert_eq!(slow_closer.closed().await, CloseReason::SLOW_CONSUMER);
        assert_eq!(CloseReason::SLOW_CONSUMER.code, 4008);
        assert_eq!(hub.len(), 1, "the slow socket left the hub");
        hub.route(message(vec![1, 2]));
        assert!(fast.outbound.try_recv().is_some(), "the other socket still receives");
        drop(slow);
    }

    #[tokio::test]
    async fn a_socket_that_keeps_too_many_bytes_queued_is_closed_as_slow_though_its_queue_has_room() {
        // Frames of 4,000 control characters, six bytes each in JSON: the largest a message makes.
        let big = |seq: i64| {
            let mut event = message(vec![1, 2]);
            if let Event::Message { message, .. } = &mut event {
                message.seq = seq;
                message.body = "\u{1}".repeat(4_000);
            }
            event
        };
        let hub = Hub::new(10_000, 100);
        let slow_closer = hub.closer();
        let mut slow = hub.register(1, slow_closer.clone());
        let reader_closer = hub.closer();
        let mut reader = hub.register(2, reader_closer.clone());

        // The reader takes every frame as it comes (so the bytes it took must come off its count); the other
        // reads nothing.
        let mut routed = 0;
        let mut frame_bytes = 0;
        while !slow_closer.is_closed() {
            routed += 1;
            assert!(routed < 2_000, "still open after {routed} large frames");
            hub.route(big(routed));
            frame_bytes = reader.outbound.try_recv().expect("the reader gets every frame").len();
        }
        for seq in routed + 1..=2 * routed {
            hub.route(big(seq));
            reader.outbound.try_recv().expect("the reader gets every frame");
        }

        assert!(frame_bytes > 24_000, "a frame of {frame_bytes} bytes");
        assert_eq!(slow_closer.closed().await, CloseReason::SLOW_CONSUMER);
        assert!(!reader_closer.is_closed(), "the socket that reads stays, past twice the bytes");
        // Closed at the first frame past the bytes, far inside its queue's 10,000 frames; what it had queued is
        // still there to be written, and its count is back to zero once taken.
        let mut left = 0;
        while slow.outbound.try_recv().is_some() {
            left += 1;
        }
        assert_eq!(left, MAX_QUEUED_BYTES / frame_bytes);
        assert_eq!(slow.outbound.queued.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn after_the_subscription_reattaches_every_socket_is_told_to_resync() {
        let hub = Hub::new(8, 100);
        let mut alice = hub.register(1, hub.closer());
        let mut bob = hub.register(2, hub.closer());

        hub.receive(Received::Attached { generation: 2 });

        assert_eq!(frame_type(&alice.outbound.try_recv().unwrap()), "resync");
        assert_eq!(frame_type(&bob.outbound.try_recv().unwrap()), "resync");
    }

    #[tokio::test(start_paused = true)]
    async fn after_events_could_not_be_read_every_socket_is_told_to_resync_at_most_once_per_gap() {
        let hub = Hub::new(8, 100);
        let mut alice = hub.register(1, hub.closer());

        hub.receive(Received::Unreadable { events: 1 });

        assert_eq!(frame_type(&alice.outbound.try_recv().unwrap()), "resync");
        // More within the gap (a newer publisher's kind in every batch): one more resync, at the gap's end.
        for _ in 0..10 {
            hub.receive(Received::Unreadable { events: 1 });
        }
        assert!(alice.outbound.try_recv().is_none(), "not one per batch");
        tokio::time::sleep(UNREADABLE_RESYNC_GAP).await;
        tokio::task::yield_now().await;
        assert_eq!(frame_type(&alice.outbound.try_recv().unwrap()), "resync");
        assert!(alice.outbound.try_recv().is_none());
        // After a quiet gap, at once again.
        tokio::time::sleep(UNREADABLE_RESYNC_GAP).await;
        hub.receive(Received::Unreadable { events: 1 });
        assert_eq!(frame_type(&alice.outbound.try_recv().unwrap()), "resync");
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_event_queue_dropped_batches_every_socket_is_told_to_resync_at_its_own_slower_pace() {
        let hub = Hub::new(8, 100);
        let mut alice = hub.register(1, hub.closer());
        let mut bob = hub.register(2, hub.closer());

        hub.receive(Received::Dropped);

        assert_eq!(frame_type(&alice.outbound.try_recv().unwrap()), "resync");
        assert_eq!(frame_type(&bob.outbound.try_recv().unwrap()), "resync");
        // A gateway that stays behind keeps losing batches: one resync at the end of the gap, not one per notice.
        hub.receive(Received::Dropped);
        hub.receive(Received::Dropped);
        tokio::time::sleep(UNREADABLE_RESYNC_GAP).await;
        tokio::task::yield_now().await;
        assert!(alice.outbound.try_recv().is_none(), "not one per notice, nor at the shorter gap");
        // Unreadable events keep their own pace meanwhile.
        hub.receive(Received::Unreadable { events: 1 });
        assert_eq!(frame_type(&alice.outbound.try_recv().unwrap()), "resync");
        tokio::time::sleep(DROPPED_RESYNC_GAP - UNREADABLE_RESYNC_GAP).await;
        tokio::task::yield_now().await;
        assert_eq!(frame_type(&alice.outbound.try_recv().unwrap()), "resync");
        assert!(alice.outbound.try_recv().is_none());
    }

    #[tokio::test]
    async fn the_socket_awaiting_a_send_gets_its_reply_in_place_of_the_message_and_every_other_socket_the_message() {
        let hub = Hub::new(8, 100);
        let mut alice_laptop = hub.register(1, hub.closer());
        let mut alice_phone = hub.register(1, hub.closer());
        let mut bob = hub.register(2, hub.closer());
        let awaited = alice_laptop.await_send(&send("c1"), "r7").unwrap();

        hub.route(message(vec![1, 2]));

        let answer = frame(&alice_laptop.outbound.try_recv().expect("the sending socket is answered"));
        assert_eq!(answer["type"], "reply");
        assert_eq!(answer["id"], "r7");
        assert_eq!(answer["result"]["op"], "sendMessage");
        assert_eq!(answer["result"]["data"]["seq"], 1);
        assert_eq!(answer["result"]["data"]["clientMessageId"], "c1");
        assert!(alice_laptop.outbound.try_recv().is_none(), "and gets no second copy");
        assert_eq!(frame_type(&alice_phone.outbound.try_recv().unwrap()), "message", "the sender's other device");
        assert_eq!(frame_type(&bob.outbound.try_recv().unwrap()), "message");
        assert!(!awaited.settle(), "the service's later answer is not written again");
    }

    #[tokio::test]
    async fn a_send_answered_by_the_hub_stops_waiting_for_the_services_answer_and_one_answered_first_is_written() {
        let hub = Hub::new(8, 100);
        let alice = hub.register(1, hub.closer());

        let awaited = alice.await_send(&send("c1"), "r7").unwrap();
        let racing = tokio::spawn(awaited.race(std::future::pending()));
        hub.route(message(vec![1, 2]));
        let raced = tokio::time::timeout(Duration::from_secs(5), racing).await;
        assert!(matches!(raced, Ok(Ok(None))), "no longer in flight once the hub answered");

        let service_first = alice.await_send(&send("c2"), "r8").unwrap();
        let answer = ServerFrame::Error { id: Some("r8".into()), error: common::protocol::ApiError::internal() };
        let raced = service_first.race(std::future::ready(answer)).await;
        assert!(matches!(raced, Some(ServerFrame::Error { .. })), "the service's answer, for the socket to write");
    }

    #[tokio::test]
    async fn a_send_settled_before_its_event_leaves_the_message_frame_to_its_socket() {
        let hub = Hub::new(8, 100);
        let mut alice = hub.register(1, hub.closer());
        let awaited = alice.await_send(&send("c1"), "r7").unwrap();

        assert!(awaited.settle(), "the service answered first: the socket writes that answer");
        hub.route(message(vec![1, 2]));

        assert_eq!(frame_type(&alice.outbound.try_recv().unwrap()), "message");
    }

    #[tokio::test]
    async fn only_the_awaited_client_message_id_is_answered_and_a_dropped_guard_unregisters() {
        let hub = Hub::new(8, 100);
        let mut alice = hub.register(1, hub.closer());
        let other = alice.await_send(&send("c2"), "r8").unwrap();
        let dropped = alice.await_send(&send("c1"), "r7").unwrap();
        drop(dropped);

        hub.route(message(vec![1, 2]));

        assert_eq!(frame_type(&alice.outbound.try_recv().unwrap()), "message", "c1 is no longer awaited");
        assert!(other.settle(), "c2 is still the socket's to answer");
    }

    #[tokio::test]
    async fn a_send_is_answered_only_by_its_own_message_not_by_another_with_its_client_message_id() {
        let hub = Hub::new(8, 100);
        let mut alice = hub.register(1, hub.closer());
        let elsewhere = SendMessageRequest { conversation_id: Some(8), ..send("c1") };
        let other_body = SendMessageRequest { body: "bye".into(), ..send("c1") };
        let to_a_person = SendMessageRequest { conversation_id: None, to_user_id: Some(2), ..send("c1") };
        let awaited = [alice.await_send(&elsewhere, "r1").unwrap(), alice.await_send(&other_body, "r2").unwrap()];
        assert!(alice.await_send(&to_a_person, "r3").is_none(), "only the service knows where a toUserId send lands");

        // Another socket stored "hello" in conversation 7 under c1: these sends are other messages (`conflict`).
        hub.route(message(vec![1, 2]));

        assert_eq!(frame_type(&alice.outbound.try_recv().unwrap()), "message");
        assert!(alice.outbound.try_recv().is_none());
        for send in awaited {
            assert!(send.settle(), "still the service's to answer");
        }
    }

    #[tokio::test]
    async fn a_sender_missing_from_the_recipients_is_not_answered_from_the_event() {
        let hub = Hub::new(8, 100);
        let mut alice = hub.register(1, hub.closer());
        let awaited = alice.await_send(&send("c1"), "r7").unwrap();

        // Recipients come from the membership at commit; the send stays the service's to answer.
        hub.route(message(vec![2]));

        assert!(alice.outbound.try_recv().is_none());
        assert!(awaited.settle());
    }

    #[tokio::test]
    async fn a_dropped_registration_leaves_the_hub_and_shutdown_closes_with_1001() {
        let hub = Hub::new(8, 1);
        let permit = hub.admit().expect("a free slot");
        assert!(hub.admit().is_none(), "the connection limit holds");
        let closer = hub.closer();
        let registration = hub.register(1, closer.clone());
        assert_eq!(hub.len(), 1);
        drop(registration);
        drop(permit);
        assert!(hub.is_empty());

        hub.shut_down();

        assert_eq!(closer.closed().await, CloseReason::SHUTTING_DOWN);
        assert!(hub.closer().is_closed(), "sockets arriving during shutdown close at once");
        assert!(hub.admit().is_none());
    }
}
