//! One error type for every HTTP response, and the one `match` that turns an error code into a status.
//!
//! Bodies are always `{ "error": { "code": "...", "message": "..." } }`. Rejections from axum's own extractors
//! (malformed JSON, bad query strings, oversized bodies) are converted here too, so a client never sees a
//! plain-text error.

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use common::protocol::{ApiError, ErrorCode};
use serde::Serialize;

/// Longest part of a parser's message echoed back to a client: it may quote the client's own values, which can
/// be tens of kilobytes.
pub const MAX_DETAIL_CHARS: usize = 200;

/// `message`, cut to [`MAX_DETAIL_CHARS`] characters.
pub fn detail(message: impl std::fmt::Display) -> String {
    let message = message.to_string();
    match message.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((end, _)) => format!("{}…", &message[..end]),
        None => message,
    }
}

/// An error on its way to an HTTP client.
#[derive(Debug)]
pub struct HttpError {
    pub error: ApiError,
    /// Seconds after which a rate-limited client may retry.
    pub retry_after: Option<u64>,
    /// A status other than the code's own ([`status_of`]): 408 for a body that did not arrive in time, which is
    /// `bad_request` to a client that reads only the code.
    pub status: Option<StatusCode>,
}

impl HttpError {
    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            error: ApiError::new(ErrorCode::RateLimited, "too many attempts, try again later"),
            retry_after: Some(retry_after.max(1)),
            status: None,
        }
    }
}

impl From<ApiError> for HttpError {
    fn from(error: ApiError) -> Self {
        Self { error, retry_after: None, status: None }
    }
}

pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Validation => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a ApiError,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| status_of(self.error.code));
        if status.is_server_error() {
            tracing::warn!(code = ?self.error.code, message = %self.error.message, "request failed");
        }
        let mut response = (status, Json(Body { error: &self.error })).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<JsonRejection> for HttpError {
    fn from(rejection: JsonRejection) -> Self {
        let error = match &rejection {
            JsonRejection::JsonDataError(e) => ApiError::bad_request(detail(e.body_text())),
            JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("the body is not valid JSON"),
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::bad_request("expected a JSON body with content-type application/json")
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(ErrorCode::PayloadTooLarge, "the body is too large")
            }
            JsonRejection::BytesRejection(e) if body_timed_out(e) => {
                return HttpError {
                    error: ApiError::bad_request("the request body did not arrive in time"),
                    retry_after: None,
                    status: Some(StatusCode::REQUEST_TIMEOUT),
                };
            }
            other => ApiError::bad_request(detail(other.body_text())),
        };
        error.into()
    }
}

/// Whether reading a body failed because it ran past the gateway's body deadline (`http_body_timeout`).
fn body_timed_out(rejection: &dyn std::error::Error) -> bool {
    let mut source = rejection.source();
    while let Some(error) = source {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = error.source();
    }
    false
}

impl From<QueryRejection> for HttpError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request(detail(rejection.body_text())).into()
    }
}

impl From<PathRejection> for HttpError {
    fn from(rejection: PathRejection) -> Self {
        let error = match &rejection {
            PathRejection::FailedToDeserializePathParams(e) => ApiError::bad_request(detail(e.body_text())),
            // A route/extractor mismatch is a bug, not the client's fault.
            other => {
                tracing::error!(rejection = %other.body_text(), "path parameters do not fit the route");
                ApiError::internal()
            }
        };
        error.into()
    }
}

/// A JSON body whose rejections are [`HttpError`]s.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(HttpError))]
pub struct ApiJson<T>(pub T);

/// A query string whose rejections are [`HttpError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(HttpError))]
pub struct ApiQuery<T>(pub T);

/// Path parameters whose rejections (`/api/conversations/abc`) are [`HttpError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(HttpError))]
pub struct ApiPath<T>(pub T);

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_the_status_clients_expect() {
        assert_eq!(status_of(ErrorCode::Conflict), StatusCode::CONFLICT);
        assert_eq!(status_of(ErrorCode::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status_of(ErrorCode::Timeout), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(status_of(ErrorCode::Validation), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
