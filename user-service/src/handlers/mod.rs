//! One handler per RPC operation, each a plain async function of (service state, request) so tests can call them
//! directly; [`crate::startup`] registers them with the RPC server.
//!
//! Expected failures (a taken name, a wrong password) are `ApiError`s with their own codes; an unexpected one
//! (the database is down) is logged with its cause and answered `internal`, which the RPC server retries and
//! eventually dead-letters.

mod login;
mod register;
mod users;

pub use login::log_in;
pub use register::register_user;
pub use users::{get_self, list_users, resolve_users};

use std::sync::Arc;

use common::{
    auth::TokenSigner,
    protocol::{
        ApiError,
        users::{AuthResponse, User},
    },
};

use crate::{
    password::PasswordHasher,
    store::{StoreError, UserRecord, UserStore},
};

/// What every handler shares.
#[derive(Debug)]
pub struct Service {
    pub store: UserStore,
    pub hasher: PasswordHasher,
    pub signer: TokenSigner,
    pub token_ttl: std::time::Duration,
}

pub type Shared = Arc<Service>;

impl Service {
    /// Signs a session token for `user` and wraps both in the reply to `register` and `login`.
    fn session_for(&self, user: User) -> Result<AuthResponse, ApiError> {
        let now = chrono::Utc::now().timestamp();
        let token = self.signer.sign(user.id, &user.username, self.token_ttl, now).map_err(|error| {
            tracing::error!(%error, "cannot sign a token");
            ApiError::internal()
        })?;
        let expires_at = (now + self.token_ttl.as_secs() as i64) * 1000;
        Ok(AuthResponse { user, token, expires_at })
    }
}

pub(crate) fn to_user(record: UserRecord) -> User {
    User { id: record.id, username: record.username, created_at: record.created_at.timestamp_millis() }
}

/// An unexpected store failure: the cause goes to the log, the caller gets `internal`.
pub(crate) fn internal(error: StoreError) -> ApiError {
    match error {
        StoreError::UsernameTaken => ApiError::conflict("username is taken"),
        other => {
            tracing::error!(error = %other, source = ?std::error::Error::source(&other), "store failure");
            ApiError::internal()
        }
    }
}
