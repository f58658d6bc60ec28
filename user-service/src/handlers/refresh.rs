use common::{
    amqp::RequestContext,
    protocol::{
        ApiError,
        users::{AuthResponse, RefreshTokenRequest},
    },
};

use super::{Shared, internal, to_user};

/// A new token for a session the gateway verified a token of: the user must still exist, and the session must be
/// younger than `WARREN_SESSION_MAX_AGE_SECS` (the new token never outlives it). The username is read afresh.
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, user_id = request.user_id), err(Debug, level = "info"))]
pub async fn refresh_token(
    service: Shared,
    request: RefreshTokenRequest,
    ctx: RequestContext,
) -> Result<AuthResponse, ApiError> {
    let now = chrono::Utc::now().timestamp();
    // The gateway read both from a verified token; anything else is a caller's bug, not a session.
    if request.user_id <= 0 || request.signed_in_at > now + common::auth::CLOCK_SKEW_LEEWAY_SECS as i64 {
        return Err(ApiError::validation("not a session a token was issued for"));
    }
    let user = service
        .store
        .find_by_id(request.user_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::unauthorized("your account no longer exists"))?;
    service.token_for(to_user(user), request.signed_in_at, now)
}
