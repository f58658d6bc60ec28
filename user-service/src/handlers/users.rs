use common::{
    amqp::RequestContext,
    protocol::{
        ApiError,
        users::{GetSelfRequest, GetUsersRequest, MAX_USERS_PAGE, ResolveUsersRequest, User, UsersPage},
    },
};

use super::{Shared, internal, to_user};
use crate::domain::Username;

/// Default page size when the caller gives none.
const DEFAULT_PAGE: u32 = 50;

/// A page of users in id order, optionally filtered by a case-insensitive name prefix.
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id), err(Debug, level = "info"))]
pub async fn list_users(service: Shared, request: GetUsersRequest, ctx: RequestContext) -> Result<UsersPage, ApiError> {
    if let Some(ids) = request.ids {
        // Two questions in one request have no one answer: say so rather than answer one of them.
        if request.after.is_some() || request.prefix.is_some() || request.limit.is_some() {
            return Err(ApiError::validation("ids cannot be combined with after, prefix or limit"));
        }
        if let Some(id) = ids.0.iter().find(|id| **id <= 0) {
            return Err(ApiError::validation(format!("{id} is not a user id (ids are positive)")));
        }
        let users = resolve_users(service, ResolveUsersRequest { ids: ids.0 }, ctx).await?;
        return Ok(UsersPage { users, next: None });
    }
    let limit = request.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_USERS_PAGE {
        return Err(ApiError::validation(format!("limit must be 1 to {MAX_USERS_PAGE}")));
    }
    if let Some(prefix) = &request.prefix
        && prefix.chars().count() > Username::MAX_CHARS
    {
        return Err(ApiError::validation(format!("prefix must be at most {} characters", Username::MAX_CHARS)));
    }
    let listed = service.store.list(request.after, request.prefix.as_deref(), limit).await.map_err(internal)?;
    let next = listed.more.then(|| listed.users.last().map(|r| r.id)).flatten();
    Ok(UsersPage { users: listed.users.into_iter().map(to_user).collect(), next })
}

/// The caller's own profile (the gateway passes the id it verified in the token).
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, user_id = request.user_id), err(Debug, level = "info"))]
pub async fn get_self(service: Shared, request: GetSelfRequest, ctx: RequestContext) -> Result<User, ApiError> {
    service
        .store
        .find_by_id(request.user_id)
        .await
        .map_err(internal)?
        .map(to_user)
        .ok_or_else(|| ApiError::not_found("no such user"))
}

/// Several users by id, for services that store only ids. Unknown ids are left out.
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, count = request.ids.len()), err(Debug, level = "info"))]
pub async fn resolve_users(
    service: Shared,
    request: ResolveUsersRequest,
    ctx: RequestContext,
) -> Result<Vec<User>, ApiError> {
    if request.ids.len() > MAX_USERS_PAGE as usize {
        return Err(ApiError::validation(format!("at most {MAX_USERS_PAGE} ids at once")));
    }
    let records = service.store.find_by_ids(&request.ids).await.map_err(internal)?;
    Ok(records.into_iter().map(to_user).collect())
}
