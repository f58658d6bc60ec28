use common::{
    amqp::RequestContext,
    protocol::{
        ApiError,
        users::{AuthResponse, RefreshTokenRequest},
    },
};

use super::{Shared, internal, to_user};

/// A new token for the session of a token this service signed: the token must verify (signature, expiry, as the
/// gateway checks it), the user must still exist, and the session must be younger than
/// `WARREN_SESSION_MAX_AGE_SECS` (the new token never outlives it). The username is read afresh.
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, user_id = tracing::field::Empty), err(Debug, level = "info"))]
pub async fn refresh_token(
    service: Shared,
    request: RefreshTokenRequest,
    ctx: RequestContext,
) -> Result<AuthResponse, ApiError> {
    let session = service.verifier.verify(&request.token).map_err(|error| {
        tracing::info!(%error, "refusing to refresh a token");
        ApiError::unauthorized("invalid or expired token")
    })?;
    tracing::Span::current().record("user_id", session.user_id);
    let now = chrono::Utc::now().timestamp();
    let user = service
        .store
        .find_by_id(session.user_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::unauthorized("your account no longer exists"))?;
    service.token_for(to_user(user), session.signed_in_at, now)
}
