use common::{
    amqp::RequestContext,
    protocol::{
        ApiError,
        users::{AuthResponse, RegisterRequest},
    },
};

use super::{Shared, internal, to_user};
use crate::{
    domain::{Password, Username},
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
    let hash = service.hasher.hash(&password).await.map_err(|error| {
        tracing::error!(%error, "cannot hash a password");
        ApiError::internal()
    })?;
    let record = match service.store.create(&username, &hash).await {
        Ok(record) => record,
        Err(StoreError::UsernameTaken) if ctx.attempt > 1 => return replayed(&service, &username, &password).await,
        Err(StoreError::UsernameTaken) => return Err(ApiError::conflict("username is taken")),
        Err(other) => return Err(internal(other)),
    };
    tracing::info!(user_id = record.id, "registered");
    service.session_for(to_user(record))
}

/// A redelivered `register` (its first attempt committed, then the replica died before replying) must not tell
/// the person their own new name is taken: if the stored account has this very password, answer as the first
/// attempt would have.
async fn replayed(service: &Shared, username: &Username, password: &Password) -> Result<AuthResponse, ApiError> {
    let credentials = service.store.find_credentials(username).await.map_err(internal)?;
    let Some(credentials) = credentials else { return Err(ApiError::conflict("username is taken")) };
    let same = service.hasher.verify(password, Some(&credentials.password_hash)).await.unwrap_or(false);
    if !same {
        return Err(ApiError::conflict("username is taken"));
    }
    let record = service.store.find_by_id(credentials.id).await.map_err(internal)?;
    let record = record.ok_or_else(|| ApiError::conflict("username is taken"))?;
    tracing::info!(user_id = record.id, "register redelivered after it committed; answering as the first attempt");
    service.session_for(to_user(record))
}
