//! `POST /api/register`, `POST /api/login`, `POST /api/refresh`, `GET /api/users`, `GET /api/me`: thin
//! translations to the user-service's RPCs. Validation of names and passwords happens there, in one place.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, State},
    http::{HeaderMap, StatusCode},
};
use common::protocol::users::{
    AuthResponse, GetSelf, GetSelfRequest, GetUsers, GetUsersRequest, Login, LoginRequest, RefreshToken,
    RefreshTokenRequest, Register, RegisterRequest, User, UsersPage,
};

use crate::{
    auth::{AuthUser, BearerToken},
    error::{ApiJson, HttpError},
    fields::{NoBody, StrictJson, StrictQuery},
    request_id::ReqId,
    state::AppState,
};

type Reply<T> = Result<ApiJson<T>, HttpError>;

#[tracing::instrument(skip_all, fields(request_id = %id.0), err(Debug, level = "info"))]
pub async fn register_user(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    id: ReqId,
    StrictJson(request): StrictJson<RegisterRequest>,
) -> Result<(StatusCode, ApiJson<AuthResponse>), HttpError> {
    state.check_auth_rate(client_ip(&state, peer, &headers))?;
    Ok((StatusCode::CREATED, ApiJson(state.call::<Register>(&id.0, &request).await?)))
}

#[tracing::instrument(skip_all, fields(request_id = %id.0), err(Debug, level = "info"))]
pub async fn log_in(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    id: ReqId,
    StrictJson(request): StrictJson<LoginRequest>,
) -> Reply<AuthResponse> {
    state.check_auth_rate(client_ip(&state, peer, &headers))?;
    Ok(ApiJson(state.call::<Login>(&id.0, &request).await?))
}

#[tracing::instrument(skip_all, fields(request_id = %id.0, user_id = user.0.user_id), err(Debug, level = "info"))]
pub async fn list_users(
    State(state): State<AppState>,
    user: AuthUser,
    id: ReqId,
    StrictQuery(request): StrictQuery<GetUsersRequest>,
) -> Reply<UsersPage> {
    Ok(ApiJson(state.call::<GetUsers>(&id.0, &request).await?))
}

#[tracing::instrument(skip_all, fields(request_id = %id.0, user_id = user.0.user_id), err(Debug, level = "info"))]
pub async fn get_me(State(state): State<AppState>, user: AuthUser, id: ReqId) -> Reply<User> {
    Ok(ApiJson(state.call::<GetSelf>(&id.0, &GetSelfRequest { user_id: user.0.user_id }).await?))
}

/// A new token for the caller's session (see `RefreshTokenRequest`): the bearer token must still be valid.
#[tracing::instrument(skip_all, fields(request_id = %id.0, user_id = user.0.user_id), err(Debug, level = "info"))]
pub async fn refresh_token(
    State(state): State<AppState>,
    user: AuthUser,
    token: BearerToken,
    id: ReqId,
    _: NoBody,
) -> Reply<AuthResponse> {
    let request = RefreshTokenRequest { token: token.0 };
    Ok(ApiJson(state.call::<RefreshToken>(&id.0, &request).await?))
}

/// The client's address for rate limiting: the peer, or, when configured to trust the proxy in front, the last
/// `X-Forwarded-For` entry: the one that proxy wrote. Entries before it are whatever the client sent (a proxy that
/// appends keeps them), so counting the first would let a client name a new address with each attempt.
fn client_ip(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if state.settings().trust_forwarded_for
        && let Some(ip) = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return ip;
    }
    peer.ip()
}
