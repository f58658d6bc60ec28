//! The hub: which local sockets belong to which user, and the fan-in that routes broker events to them.
//!
//! Every gateway receives every event (DESIGN §3); the hub is where privacy is enforced (§2.5): an event goes
//! to the sockets of the users it names as recipients and to no other socket, ever.
//!
//! The fan-in never waits on a socket. Each socket has a bounded outbound queue; an event is serialised once and
//! the same bytes are offered to every recipient with `try_send`. A socket whose queue is full has fallen behind:
//! it is closed with 4008 ("too slow, reconnect and sync") instead of being allowed to grow the gateway's memory
//! or hold up everyone else's events; the client repairs what it missed with `sync` when it reconnects.
//!
//! The map sits behind a plain mutex held only for non-blocking work (lookups, `try_send`), never across an
//! `.await`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;
use common::{
    amqp::Received,
    protocol::{
        messages::Event,
        ws::{ServerFrame, close},
    },
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
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
    reason: Arc<OnceLock<CloseReason>>,
}

impl Closer {
    /// Asks the socket to close. The first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Resolves once the socket was asked to close, with the reason.
    pub async fn closed(&self) -> CloseReason {
        self.token.cancelled().await;
        self.reason()
    }

    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    fn reason(&self) -> CloseReason {
        self.reason.get().copied().unwrap_or(CloseReason::SHUTTING_DOWN)
    }
}

/// A socket as the hub sees it: where to put its frames and how to close it.
#[derive(Debug)]
struct Entry {
    id: u64,
    outbound: mpsc::Sender<Utf8Bytes>,
    closer: Closer,
}

/// The process-wide registry of authenticated sockets. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sockets: Mutex<HashMap<i64, Vec<Entry>>>,
    next_id: AtomicU64,
    queue_capacity: usize,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// A socket's membership in the hub; dropping it (when the socket's task ends) removes the socket.
#[derive(Debug)]
pub struct Registration {
    hub: Hub,
    user_id: i64,
    id: u64,
    /// The frames the hub routed to this socket, in order.
    pub outbound: mpsc::Receiver<Utf8Bytes>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(self.user_id, self.id);
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
                tasks: TaskTracker::new(),
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
        Closer { token: self.inner.shutdown.child_token(), reason: Arc::new(OnceLock::new()) }
    }

    /// Counts a socket as running until the token is dropped, so shutdown waits for its close handshake. Taken
    /// before the upgrade completes: a socket in the middle of its upgrade is counted too.
    pub fn task_token(&self) -> TaskTrackerToken {
        self.inner.tasks.token()
    }

    /// Adds an authenticated socket of `user_id`; events for that user are queued on the returned receiver.
    pub fn register(&self, user_id: i64, closer: Closer) -> Registration {
        let (tx, rx) = mpsc::channel(self.inner.queue_capacity);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.sockets().entry(user_id).or_default().push(Entry { id, outbound: tx, closer });
        Registration { hub: self.clone(), user_id, id, outbound: rx }
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
        }
    }

    /// Sends one event to the sockets of its recipients.
    pub fn route(&self, event: Event) {
        let (frame, mut recipients) = match event {
            Event::Message { message, recipients } => (ServerFrame::Message { message }, recipients),
            Event::Conversation { conversation, recipients } => {
                (ServerFrame::Conversation { conversation }, recipients)
            }
            Event::Read { user_id, position } => (ServerFrame::Read { position }, vec![user_id]),
        };
        recipients.sort_unstable();
        recipients.dedup();
        if let Some(text) = encode(&frame) {
            self.offer(Some(&recipients), &text);
        }
    }

    /// Sends `resync` to every socket.
    pub fn resync_all(&self, reason: &str) {
        if let Some(text) = encode(&ServerFrame::Resync { reason: reason.to_owned() }) {
            self.offer(None, &text);
        }
    }

    /// Starts closing every socket with 1001 and refuses new ones.
    pub fn shut_down(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
    }

    /// Waits (at most `limit`) for every socket's task to finish its close handshake. `false` if some did not.
    pub async fn wait_closed(&self, limit: Duration) -> bool {
        self.inner.tasks.close();
        tokio::time::timeout(limit, self.inner.tasks.wait()).await.is_ok()
    }

    /// Offers `text` to the sockets of `users` (every socket when `None`); closes those whose queue is full.
    fn offer(&self, users: Option<&[i64]>, text: &Utf8Bytes) {
        let mut sockets = self.sockets();
        let mut slow: Vec<(i64, u64)> = Vec::new();
        let mut offer_to = |user_id: i64, entries: &Vec<Entry>| {
            for entry in entries {
                match entry.outbound.try_send(text.clone()) {
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
            remove_from(&mut sockets, user_id, id);
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

    fn frame_type(text: &Utf8Bytes) -> String {
        let value: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        value["type"].as_str().unwrap().to_owned()
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
        assert!(mallory.outbound.try_recv().is_err(), "a non-member never receives a message");
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
        assert!(bob.outbound.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_socket_with_a_full_queue_is_closed_as_slow_and_the_others_carry_on() {
        let hub = Hub::new(2, 100);
        let slow_closer = hub.closer();
        let slow = hub.register(1, slow_closer.clone());
        let mut fast = hub.register(2, hub.closer());

        for _ in 0..3 {
            hub.route(message(vec![1, 2]));
            while fast.outbound.try_recv().is_ok() {}
        }

        assert!(slow_closer.is_closed());
        assert_eq!(slow_closer.closed().await, CloseReason::SLOW_CONSUMER);
        assert_eq!(CloseReason::SLOW_CONSUMER.code, 4008);
        assert_eq!(hub.len(), 1, "the slow socket left the hub");
        hub.route(message(vec![1, 2]));
        assert!(fast.outbound.try_recv().is_ok(), "the other socket still receives");
        drop(slow);
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
