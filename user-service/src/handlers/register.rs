use common::{
    amqp::RequestContext,
    protocol::{
        ApiError,
        users::{AuthResponse, RegisterRequest},
    },
};

use super::{Shared, hashing_failed, internal, to_user};
use crate::{
    domain::{Password, Username},
    password::PasswordError,
    store::StoreError,
};

/// Creates an account and logs it in. Names are unique ignoring case; the database enforces it, so two replicas
/// registering the same name at once cannot both succeed.
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id), err(Debug, level = "info"))]
pub async fn register_user(
    service: Shared,
    request: RegisterRequest,
    ctx: RequestContext,
) -> Result<AuthResponse, ApiError> {
    let username = Username::parse(request.username).map_err(|e| ApiError::validation(e.to_string()))?;
    let password = Password::parse(request.password).map_err(|e| ApiError::validation(e.to_string()))?;
    let hash = service.hasher.hash(&password, ctx.deadline_ms).await.map_err(hashing_failed)?;
    let record = match service.store.create(&username, &hash).await {
        Ok(record) => record,
        Err(StoreError::UsernameTaken) => return repeated(&service, &username, &password, &ctx).await,
        Err(other) => return Err(internal(other)),
    };
    tracing::info!(user_id = record.id, "registered");
    service.session_for(to_user(record))
}

/// How long after an account is created a `register` repeated with its name and password is answered as the
/// first one was. A client whose `register` timed out (the account was created after the gateway gave up) asks
/// again, often by the user's hand, seconds or minutes later.
pub const REPEAT_WINDOW: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// The name is taken. A repeat of the `register` that took it must not tell the person their own new name is
/// taken: one redelivered (its first attempt committed, then the replica died before replying), or one the client
/// sent again after a timeout (the first was answered too late). If the stored account has this very password,
/// answer as the first attempt would have, when the request is a redelivery or the account is at most
/// [`REPEAT_WINDOW`] old: no more than a `login` with that password would give, and `conflict` already says the
/// name exists. The password is checked for every taken name, so the answer's time does not tell old accounts from
/// new ones.
async fn repeated(
    service: &Shared,
    username: &Username,
    password: &Password,
    ctx: &RequestContext,
) -> Result<AuthResponse, ApiError> {
    let taken = || ApiError::conflict("username is taken");
    let credentials = service.store.find_credentials(username).await.map_err(internal)?;
    let same =
        match service.hasher.verify(password, credentials.as_ref().map(|c| &c.password_hash), ctx.deadline_ms).await {
            Ok(same) => same,
            Err(PasswordError::Expired) => return Err(hashing_failed(PasswordError::Expired)),
            Err(_) => false,
        };
    let Some(credentials) = credentials.filter(|_| same) else { return Err(taken()) };
    let record = service.store.find_by_id(credentials.id).await.map_err(internal)?.ok_or_else(taken)?;
    if ctx.attempt == 1 && chrono::Utc::now() - record.created_at > REPEAT_WINDOW {
        return Err(taken());
    }
    tracing::info!(
        user_id = record.id,
        attempt = ctx.attempt,
        "register repeated after it committed; answering as the first did"
    );
    service.session_for(to_user(record))
}
