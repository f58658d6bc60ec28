//! Authentication at the gateway: `Authorization: Bearer <jwt>` verified with the public key only.

use axum::{extract::FromRequestParts, http::request::Parts};
use common::{auth::VerifiedUser, protocol::ApiError};

use crate::{error::HttpError, state::AppState};

/// The authenticated caller. Any handler that takes it answers 401 to a missing, expired, forged or
/// wrongly-signed token before running.
#[derive(Debug, Clone)]
pub struct AuthUser(pub VerifiedUser);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        state.authenticate(token).map(AuthUser).map_err(HttpError::from)
    }
}
