//! The one error shape every Warren interface speaks: `{ "code": "conflict", "message": "username is taken" }`.
//!
//! Services answer RPCs with it, the gateway turns the code into an HTTP status in one `match`
//! (`api/src/error.rs`) and WebSocket error frames carry it unchanged, so a client handles errors one way.

use serde::{Deserialize, Serialize};
use ts_rs::TS;

/// What went wrong, as a stable machine-readable code. Clients branch on this, never on `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
#[ts(export)]
pub enum ErrorCode {
    /// The request could not be parsed (malformed JSON, wrong types, missing fields).
    BadRequest,
    /// The request parsed but a value breaks a rule (a name too long, an empty message).
    Validation,
    /// No valid credentials: missing, expired or forged token, wrong password or unknown user.
    Unauthorized,
    /// Authenticated but not allowed (not a member of that conversation).
    Forbidden,
    NotFound,
    /// The endpoint exists but not with this HTTP method (REST only).
    MethodNotAllowed,
    /// The request conflicts with stored state (a taken username).
    Conflict,
    /// Too many requests from this client; retry later.
    RateLimited,
    /// The request or frame is larger than allowed.
    PayloadTooLarge,
    /// No replica of the service that handles this request is running. Retryable.
    Unavailable,
    /// The service did not answer in time. A read was not executed late; a send may have been stored, and its retry
    /// with the same client message id returns it. Retryable.
    Timeout,
    /// A bug or an unexpected failure; details are in the server logs under the request id.
    Internal,
}

impl ErrorCode {
    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::RateLimited | ErrorCode::Internal)
    }
}

/// An error as it crosses a process boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS, thiserror::Error)]
#[error("{code:?}: {message}")]
#[ts(export)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Validation, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Timeout, message)
    }

    /// An unexpected failure. The message is deliberately generic: the cause goes to the log, not the client.
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error")
    }
}
