//! A WebSocket test client for the gateway's `/ws`: connect (with or without an `Origin`), authenticate, send
//! frames, read the next frame with a timeout, and assert silence or a close. Pings and pongs are answered by
//! tungstenite and never shown.
//!
//! `request` waits for the reply (or error) naming its id and keeps any other frame it meets (live events) for
//! `next_frame`, so tests can interleave requests and events without losing either.

use std::{collections::VecDeque, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
};

use super::TestApp;

/// How long `next_frame` and `request` wait before failing the test.
pub const FRAME_WAIT: Duration = Duration::from_secs(5);

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    /// Frames read while waiting for a specific reply.
    pending: VecDeque<Value>,
    next_id: u64,
}

/// How a socket ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Closed {
        code: u16,
        reason: String,
    },
    /// The stream ended (or broke) without a close frame.
    Dropped,
}

impl WsClient {
    /// Connects without an `Origin` header (as a non-browser client does).
    pub async fn connect(app: &TestApp) -> WsClient {
        Self::try_connect(app, None).await.expect("the WebSocket upgrade succeeds")
    }

    /// Connects, optionally as a browser page on `origin`. A refused upgrade is `Err(Http(response))`.
    pub async fn try_connect(app: &TestApp, origin: Option<&str>) -> Result<WsClient, tungstenite::Error> {
        Self::try_connect_to(&app.address, origin).await
    }

    /// Connects to the gateway at `address` (`http://host:port`), optionally as a page on `origin`.
    pub async fn try_connect_to(address: &str, origin: Option<&str>) -> Result<WsClient, tungstenite::Error> {
        let url = format!("{}/ws", address.replacen("http", "ws", 1));
        let mut request = url.into_client_request()?;
        if let Some(origin) = origin {
            request.headers_mut().insert("origin", HeaderValue::from_str(origin).expect("a valid origin"));
        }
        let (stream, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(WsClient { stream, pending: VecDeque::new(), next_id: 0 })
    }

    /// Connects and authenticates with `token`; returns the client and its `ready` frame.
    pub async fn authenticated(app: &TestApp, token: &str) -> (WsClient, Value) {
        Self::authenticated_to(&app.address, token).await
    }

    /// Connects and authenticates with `token` over a TCP connection whose receive buffer is a few KiB, where
    /// loopback's would grow to tens of MiB: while such a client does not read, the gateway's writes to it
    /// stall after a few MiB (its own send buffer).
    pub async fn authenticated_with_small_window(app: &TestApp, token: &str) -> (WsClient, Value) {
        let address: std::net::SocketAddr =
            app.address.trim_start_matches("http://").parse().expect("the gateway's address is host:port");
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        // Set before connecting, so the window is small from the handshake on and never grows.
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let tcp = socket.connect(address).await.expect("the gateway accepts the connection");
        let request = format!("ws://{address}/ws").into_client_request().expect("a WebSocket request");
        let (stream, _) =
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)).await.expect("the upgrade succeeds");
        let mut client = WsClient { stream, pending: VecDeque::new(), next_id: 0 };
        client.send_json(&json!({ "type": "auth", "token": token })).await;
        let ready = client.next_frame().await;
        assert_eq!(ready["type"], "ready", "expected ready, got {ready}");
        (client, ready)
    }

    /// Connects to the gateway at `address` and authenticates with `token`.
    pub async fn authenticated_to(address: &str, token: &str) -> (WsClient, Value) {
        let mut client = Self::try_connect_to(address, None).await.expect("the WebSocket upgrade succeeds");
        client.send_json(&json!({ "type": "auth", "token": token })).await;
        let ready = client.next_frame().await;
        assert_eq!(ready["type"], "ready", "expected ready, got {ready}");
        (client, ready)
    }

    pub async fn send_json(&mut self, frame: &Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.send(Message::text(text.into())).await;
    }

    pub async fn send(&mut self, message: Message) {
        self.stream.send(message).await.expect("the frame is sent");
    }

    /// Sends a frame; `Err` when the socket is gone (for tests that kill the gateway on purpose).
    pub async fn try_send_json(&mut self, frame: &Value) -> Result<(), tungstenite::Error> {
        self.stream.send(Message::text(frame.to_string())).await
    }

    /// Sends a request of `kind` with `fields` and a fresh id; returns its reply or error frame.
    pub async fn call(&mut self, kind: &str, fields: Value) -> Value {
        self.next_id += 1;
        let id = format!("req-{}", self.next_id);
        let mut frame = fields;
        frame["type"] = json!(kind);
        frame["id"] = json!(id);
        self.request(&frame).await
    }

    /// Sends `frame` (which carries an `id`) and waits for the reply or error naming that id.
    pub async fn request(&mut self, frame: &Value) -> Value {
        let id = frame["id"].clone();
        self.send_json(frame).await;
        self.reply_to(&id).await
    }

    /// Waits for the reply or error naming `id`, keeping other frames for `next_frame`.
    pub async fn reply_to(&mut self, id: &Value) -> Value {
        let deadline = tokio::time::Instant::now() + FRAME_WAIT;
        let mut others = Vec::new();
        let answer = loop {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.read_frame(wait).await else {
                panic!("no answer to request {id} within {FRAME_WAIT:?}");
            };
            if frame.get("id") == Some(id) && matches!(frame["type"].as_str(), Some("reply" | "error")) {
                break frame;
            }
            others.push(frame);
        };
        self.pending.extend(others);
        answer
    }

    /// The next frame (kept ones first); fails the test after [`FRAME_WAIT`] or on a close.
    pub async fn next_frame(&mut self) -> Value {
        match self.next_frame_within(FRAME_WAIT).await {
            Some(frame) => frame,
            None => panic!("no frame within {FRAME_WAIT:?}"),
        }
    }

    /// The next frame, or `None` if nothing arrives within `wait`. Fails the test on a close.
    pub async fn next_frame_within(&mut self, wait: Duration) -> Option<Value> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        self.read_frame(wait).await
    }

    /// Asserts that no frame arrives within `wait` (pings are answered meanwhile).
    pub async fn expect_no_frame(&mut self, wait: Duration) {
        if let Some(frame) = self.next_frame_within(wait).await {
            panic!("expected silence, got {frame}");
        }
    }

    /// Reads (skipping frames) until the socket ends, within `wait`; how it ended.
    pub async fn ending_within(&mut self, wait: Duration) -> Ending {
        let ending = tokio::time::timeout(wait, async {
            loop {
                match self.stream.next().await {
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return Ending::Closed { code: frame.code.into(), reason: frame.reason.to_string() };
                    }
                    Some(Ok(Message::Close(None))) => return Ending::Closed { code: 1005, reason: String::new() },
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Ending::Dropped,
                }
            }
        })
        .await;
        ending.unwrap_or_else(|_| panic!("the socket did not end within {wait:?}"))
    }

    /// Reads every frame until the socket ends, within `wait`: the frames, and how it ended.
    pub async fn frames_until_end(&mut self, wait: Duration) -> (Vec<Value>, Ending) {
        let mut frames: Vec<Value> = self.pending.drain(..).collect();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_next_frame(left).await {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => panic!("the socket did not end within {wait:?} ({} frames read)", frames.len()),
                Err(ending) => return (frames, ending),
            }
        }
    }

    /// Reads until the close frame (within [`FRAME_WAIT`]); its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        match self.ending_within(FRAME_WAIT).await {
            Ending::Closed { code, reason } => (code, reason),
            Ending::Dropped => panic!("the socket ended without a close frame"),
        }
    }

    /// Closes from the client side and waits for the server's close.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        let _ = tokio::time::timeout(FRAME_WAIT, async { while let Some(Ok(_)) = self.stream.next().await {} }).await;
    }

    /// Like [`Self::next_frame_within`], but a closed or dropped socket is `Err` instead of a failed test (for
    /// tests that kill the gateway on purpose).
    pub async fn try_next_frame(&mut self, wait: Duration) -> Result<Option<Value>, Ending> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(Some(frame));
        }
        let read = tokio::time::timeout(wait, async {
            loop {
                match self.stream.next().await {
                    Some(Ok(Message::Text(text))) => {
                        return Ok(serde_json::from_str::<Value>(text.as_str()).expect("server frames are JSON"));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Binary(_))) => {}
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return Err(Ending::Closed { code: frame.code.into(), reason: frame.reason.to_string() });
                    }
                    Some(Ok(Message::Close(None))) => return Err(Ending::Closed { code: 1005, reason: String::new() }),
                    Some(Err(_)) | None => return Err(Ending::Dropped),
                }
            }
        });
        match read.await {
            Ok(Ok(frame)) => Ok(Some(frame)),
            Ok(Err(ending)) => Err(ending),
            Err(_) => Ok(None),
        }
    }

    async fn read_frame(&mut self, wait: Duration) -> Option<Value> {
        let read = tokio::time::timeout(wait, async {
            loop {
                match self.stream.next().await {
                    Some(Ok(Message::Text(text))) => {
                        return serde_json::from_str::<Value>(text.as_str()).expect("server frames are JSON");
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Binary(_))) => panic!("the server sent a binary frame"),
                    Some(Ok(Message::Close(frame))) => panic!("the server closed the socket: {frame:?}"),
                    Some(Err(error)) => panic!("the socket failed: {error}"),
                    None => panic!("the socket ended"),
                }
            }
        });
        read.await.ok()
    }
}

/// The `error.code` of an error frame.
pub fn error_code(frame: &Value) -> &str {
    assert_eq!(frame["type"], "error", "expected an error frame, got {frame}");
    frame["error"]["code"].as_str().expect("error.code")
}
