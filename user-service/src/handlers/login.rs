use common::{
    amqp::RequestContext,
    protocol::{
        ApiError,
        users::{AuthResponse, LoginRequest},
    },
};

use super::{Shared, hashing_failed, internal, to_user};
use crate::domain::{Password, Username};

/// The one answer for every failed login, whatever the reason: no hint whether the name exists.
fn invalid_credentials() -> ApiError {
    ApiError::unauthorized("invalid username or password")
}

/// Checks a password and issues a token. An unknown user costs the same argon2 verification as a wrong password
/// (against a dummy hash), so response times do not reveal which names exist.
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id), err(Debug, level = "info"))]
pub async fn log_in(service: Shared, request: LoginRequest, ctx: RequestContext) -> Result<AuthResponse, ApiError> {
    let username = Username::parse(request.username).ok();
    let password = Password::parse(request.password).ok();
    let credentials = match &username {
        Some(username) => service.store.find_credentials(username).await.map_err(internal)?,
        None => None,
    };
    let Some(password) = password else {
        // Too short or long to be anyone's password; still spend the time of a verification.
        let filler = Password::parse("x".repeat(Password::MIN_CHARS)).map_err(|_| ApiError::internal())?;
        let _ = service.hasher.verify(&filler, None, ctx.deadline_ms).await;
        return Err(invalid_credentials());
    };
    let valid = service
        .hasher
        .verify(&password, credentials.as_ref().map(|c| &c.password_hash), ctx.deadline_ms)
        .await
        .map_err(hashing_failed)?;
    match credentials {
        Some(credentials) if valid => {
            tracing::info!(user_id = credentials.id, "logged in");
            let user =
                service.store.find_by_id(credentials.id).await.map_err(internal)?.ok_or_else(invalid_credentials)?;
            service.session_for(to_user(user))
        }
        _ => Err(invalid_credentials()),
    }
}
