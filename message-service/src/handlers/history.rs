use common::{
    amqp::RequestContext,
    protocol::{
        ApiError,
        messages::{AsUser, GetMessagesRequest, MAX_PAGE, MessagesPage},
    },
};

use super::{Shared, internal, not_a_member};
use crate::{
    domain::positive_id,
    store::{PageAnchor, PageRange},
};

/// Default page size when the client gives none.
const DEFAULT_PAGE: u32 = 50;

/// A page of history before / after / around a seq (or the newest page), for members only.
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, user_id = request.user_id), err(Debug, level = "info"))]
pub async fn get_messages(
    service: Shared,
    request: AsUser<GetMessagesRequest>,
    ctx: RequestContext,
) -> Result<MessagesPage, ApiError> {
    let AsUser { user_id, request } = request;
    let conversation_id = positive_id(request.conversation_id, "conversationId")?;
    let limit = request.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::validation(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let anchor = match (request.before, request.after, request.around) {
        (None, None, None) => PageAnchor::Latest,
        (Some(seq), None, None) => PageAnchor::Before(seq),
        (None, Some(seq), None) => PageAnchor::After(seq),
        (None, None, Some(seq)) => PageAnchor::Around(seq),
        _ => return Err(ApiError::validation("give at most one of before, after and around")),
    };
    if matches!(anchor, PageAnchor::Before(s) | PageAnchor::After(s) | PageAnchor::Around(s) if s < 0) {
        return Err(ApiError::validation("a seq cannot be negative"));
    }
    let (last_seq, _) =
        service.store.membership(user_id, conversation_id).await.map_err(internal)?.ok_or_else(not_a_member)?;
    service.store.page(conversation_id, PageRange::new(anchor, i64::from(limit), last_seq)).await.map_err(internal)
}
