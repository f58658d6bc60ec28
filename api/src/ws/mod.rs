//! `GET /ws`: the WebSocket endpoint, where messages appear instantly.
//!
//! The upgrade is where browser-facing abuse is stopped cheaply (DESIGN §5, §8): a present `Origin` must be one
//! of the allowed web origins (a page elsewhere cannot ride a user's browser into the socket; non-browser clients
//! send no Origin and are let through, they hold their token anyway); the gateway's connection limit must have
//! room; and tungstenite's limits are sized for chat rather than its defaults (64 MiB messages, 128 KiB read
//! buffer per connection).
//!
//! The pieces: [`connection`] runs one socket (auth, requests, events, close); [`frames`] reads client frames;
//! [`dispatch`] turns a request frame into an RPC and its answer into a frame; [`hub`] routes broker events to
//! the sockets of their recipients and closes slow ones.

pub mod connection;
pub mod dispatch;
pub mod frames;
pub mod hub;

use axum::{
    extract::{
        State,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use common::protocol::ApiError;

pub use hub::{CloseReason, Closer, Hub};

use crate::{config::origin_allowed, error::HttpError, state::AppState};

/// Bytes read from the socket at a time; frames larger than this are assembled across reads.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes gathered before a write reaches the socket (frames are flushed after each batch anyway).
pub const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// Upgrades to a WebSocket after the origin and capacity checks.
#[tracing::instrument(skip_all)]
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN)
        && !origin.to_str().is_ok_and(|origin| origin_allowed(origin, &state.settings().allowed_origins))
    {
        tracing::info!(origin = ?origin, "WebSocket upgrade from a foreign origin refused");
        return HttpError::from(ApiError::forbidden("this origin may not open a WebSocket")).into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return HttpError::from(ApiError::bad_request(rejection.body_text())).into_response(),
    };
    let hub = state.hub().clone();
    let Some(permit) = hub.admit() else {
        tracing::warn!("WebSocket refused: the gateway is at its connection limit or shutting down");
        return HttpError::from(ApiError::unavailable("too many connections, try again shortly")).into_response();
    };
    let limits = &state.settings().ws;
    let connection =
        connection::Connection { closer: hub.closer(), permit, task: hub.task_token(), state: state.clone() };
    upgrade
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        // Must exceed the write buffer plus the largest frame, or tungstenite refuses that frame.
        .max_write_buffer_size(connection::MAX_OUTBOUND_FRAME_BYTES + 2 * WRITE_BUFFER_BYTES)
        .on_failed_upgrade(|error| tracing::info!(%error, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| connection::run(socket, connection))
}
