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
        state.authenticate(BearerToken::of(parts)?).map(AuthUser).map_err(HttpError::from)
    }
}

/// The bearer token of a request as it was sent, for the one handler that forwards it (`POST /api/refresh`);
/// take [`AuthUser`] beside it to have it verified first.
#[derive(Debug, Clone)]
pub struct BearerToken(pub String);

impl BearerToken {
    fn of(parts: &Parts) -> Result<&str, ApiError> {
        parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_credentials)
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))
    }
}

/// The token of an `Authorization` value of the Bearer scheme, whose name is case-insensitive (RFC 9110 §11.1):
/// `Bearer`, `bearer` and `BEARER` alike; one or more spaces before the token.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl FromRequestParts<AppState> for BearerToken {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(BearerToken(BearerToken::of(parts)?.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_credentials;

    #[test]
    fn the_bearer_scheme_is_matched_ignoring_case() {
        for value in ["Bearer abc.def", "bearer abc.def", "BEARER abc.def", "bEaReR   abc.def "] {
            assert_eq!(bearer_credentials(value), Some("abc.def"), "{value:?}");
        }
        for value in ["Basic abc.def", "Bearerabc.def", "Bearer ", "Bearer", "", "Token abc"] {
            assert_eq!(bearer_credentials(value), None, "{value:?}");
        }
    }
}
