//! One handler per RPC operation, each a plain async function of (service state, request) so tests can call them
//! directly; [`crate::startup`] registers them with the RPC server.
//!
//! Expected failures (a taken name, a wrong password) are `ApiError`s with their own codes; an unexpected one
//! (the database is down) is logged with its cause and answered `internal`, which the RPC server retries and
//! eventually dead-letters.

mod login;
mod refresh;
mod register;
mod users;

pub use login::log_in;
pub use refresh::refresh_token;
pub use register::register_user;
pub use users::{get_self, list_users, resolve_users};

use std::sync::Arc;

use common::{
    auth::{AuthError, Session, TokenSigner, TokenVerifier},
    protocol::{
        ApiError,
        users::{AuthResponse, User},
    },
};

use crate::{
    password::{PasswordError, PasswordHasher},
    store::{StoreError, UserRecord, UserStore},
};

/// What every handler shares.
#[derive(Debug)]
pub struct Service {
    pub store: UserStore,
    pub hasher: PasswordHasher,
    pub signer: TokenSigner,
    /// Checks tokens this service signed (`refreshToken`); derived from `signer`.
    pub verifier: TokenVerifier,
    pub token_ttl: std::time::Duration,
    pub session_max_age: std::time::Duration,
}

pub type Shared = Arc<Service>;

impl Service {
    /// Signs a token of a session that began with a sign-in now, and wraps both in the reply to `register` and
    /// `login`.
    fn session_for(&self, user: User) -> Result<AuthResponse, ApiError> {
        let now = chrono::Utc::now().timestamp();
        self.token_for(user, now, now)
    }

    /// Signs a token, from `now` (Unix seconds), of the session `user` signed in to at `signed_in_at`.
    fn token_for(&self, user: User, signed_in_at: i64, now: i64) -> Result<AuthResponse, ApiError> {
        let session =
            Session { user_id: user.id, username: &user.username, signed_in_at, max_age: self.session_max_age };
        let signed = self.signer.sign_session(&session, self.token_ttl, now).map_err(|error| match error {
            AuthError::SessionTooOld => ApiError::unauthorized("the session is too old to be refreshed; sign in again"),
            error => {
                tracing::error!(%error, "cannot sign a token");
                ApiError::internal()
            }
        })?;
        Ok(AuthResponse {
            user,
            token: signed.token,
            issued_at: signed.issued_at * 1000,
            expires_at: signed.expires_at * 1000,
        })
    }
}

pub(crate) fn to_user(record: UserRecord) -> User {
    User { id: record.id, username: record.username, created_at: record.created_at.timestamp_millis() }
}

/// A hash or verification that did not run: its caller stopped waiting while it queued (answered `timeout`, to no
/// one, and logged as what it is), or something unexpected (logged as an error; `internal`).
pub(crate) fn hashing_failed(error: PasswordError) -> ApiError {
    match error {
        PasswordError::Expired => {
            tracing::info!("the caller stopped waiting before a password hash could run");
            ApiError::timeout("the service was too busy to check the password in time")
        }
        other => {
            tracing::error!(error = %other, "cannot hash or verify a password");
            ApiError::internal()
        }
    }
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
