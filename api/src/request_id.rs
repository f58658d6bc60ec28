//! Request ids: taken from the client's `x-request-id` when it sends a sane one, generated otherwise, echoed in
//! the response, attached to the request's log span and passed to the services in the RPC headers.

use axum::{
    extract::{FromRequestParts, Request},
    http::{HeaderValue, request::Parts},
};

pub const HEADER: &str = "x-request-id";

/// Middleware: keeps a sane client-supplied id, replaces a missing or unsafe one with a UUIDv4. (tower-http's
/// `SetRequestId` keeps whatever the client sent, which would let a client put arbitrary text in our logs.)
pub async fn assign(mut request: Request) -> Request {
    let sane = request.headers().get(HEADER).and_then(|v| v.to_str().ok()).is_some_and(is_sane);
    if !sane && let Ok(value) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        request.headers_mut().insert(HEADER, value);
    }
    request
}

/// A client-supplied id is kept only if it is short and plain, so it cannot bloat or forge log lines.
fn is_sane(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The current request's id, for handlers.
#[derive(Debug, Clone)]
pub struct ReqId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ReqId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let id = parts.headers.get(HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        Ok(ReqId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_short_ids_are_trusted() {
        assert!(is_sane("abc-123_X"));
        assert!(!is_sane(""));
        assert!(!is_sane("has space"));
        assert!(!is_sane("line\nbreak"));
        assert!(!is_sane(&"x".repeat(65)));
    }
}
