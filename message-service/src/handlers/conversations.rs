use common::{
    amqp::RequestContext,
    protocol::{
        ApiError,
        messages::{
            AddMembersRequest, AsUser, Conversation, ConversationEntry, ConversationsPage, CreateGroupRequest, Event,
            GetConversationRequest, LeaveConversationRequest, ListConversationsRequest, MAX_CONVERSATIONS_PAGE,
            MAX_GROUP_MEMBERS, MarkReadRequest, ReadPosition, RemoveMemberRequest,
        },
    },
};

use super::{Shared, internal, not_a_member};
use crate::{
    domain::{ClientGroupId, GroupTitle, positive_id},
    store::{GroupCreate, ListCursor, MemberChange, MembershipError},
};

const DEFAULT_PAGE: u32 = 50;

fn membership_error(error: MembershipError) -> ApiError {
    match error {
        MembershipError::NotAMember => not_a_member(),
        MembershipError::NotAGroup => ApiError::validation("members can be changed only in groups"),
        MembershipError::NoSuchMember => ApiError::not_found("that user is not a member"),
        MembershipError::TooMany => {
            ApiError::validation(format!("a group can have at most {MAX_GROUP_MEMBERS} members"))
        }
    }
}

fn user_ids(ids: &[i64]) -> Result<Vec<i64>, ApiError> {
    if ids.len() > MAX_GROUP_MEMBERS {
        return Err(ApiError::validation(format!("a group can have at most {MAX_GROUP_MEMBERS} members")));
    }
    let mut ids = ids.iter().map(|id| positive_id(*id, "a user id")).collect::<Result<Vec<_>, _>>()?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Tells every member (and anyone just removed) that the conversation changed.
async fn announce(service: &Shared, conversation: &Conversation, also: Option<i64>) {
    let mut recipients = conversation.members.clone();
    recipients.extend(also);
    service.events.publish(vec![Event::Conversation { conversation: conversation.clone(), recipients }]).await;
}

#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, user_id = request.user_id), err(Debug, level = "info"))]
pub async fn create_group(
    service: Shared,
    request: AsUser<CreateGroupRequest>,
    ctx: RequestContext,
) -> Result<Conversation, ApiError> {
    let AsUser { user_id, request } = request;
    let title = GroupTitle::parse(request.title)?;
    let mut members = user_ids(&request.member_ids)?;
    members.retain(|id| *id != user_id);
    if members.len() + 1 > MAX_GROUP_MEMBERS {
        return Err(ApiError::validation(format!("a group can have at most {MAX_GROUP_MEMBERS} members")));
    }
    let client_group_id = request.client_group_id.map(ClientGroupId::parse).transpose()?;
    service.ensure_users_exist(user_id, &members, &ctx.request_id).await?;
    let Some(client_group_id) = client_group_id else {
        let conversation = service.store.create_group(user_id, title.as_str(), &members).await.map_err(internal)?;
        announce(&service, &conversation, None).await;
        return Ok(conversation);
    };
    let created = service
        .store
        .create_group_once(user_id, client_group_id.as_str(), title.as_str(), &members)
        .await
        .map_err(internal)?;
    match created {
        // A repeat is announced again: the first call's announcement may be what was lost (a crash after its
        // commit). Members who had it get the same conversation twice, which changes nothing.
        GroupCreate::Created(conversation) | GroupCreate::Repeated(conversation) => {
            announce(&service, &conversation, None).await;
            Ok(conversation)
        }
        GroupCreate::IdReused => {
            Err(ApiError::conflict("that clientGroupId was already used for a group with another title or members"))
        }
        GroupCreate::CreatorLeft => {
            Err(ApiError::forbidden("you are no longer a member of the group that clientGroupId made"))
        }
    }
}

#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, user_id = request.user_id), err(Debug, level = "info"))]
pub async fn add_members(
    service: Shared,
    request: AsUser<AddMembersRequest>,
    ctx: RequestContext,
) -> Result<Conversation, ApiError> {
    let AsUser { user_id, request } = request;
    let conversation_id = positive_id(request.conversation_id, "conversationId")?;
    let users = user_ids(&request.user_ids)?;
    if users.is_empty() {
        return Err(ApiError::validation("name at least one user to add"));
    }
    // Check membership before asking about users, so a non-member learns nothing about user ids.
    service.store.membership(user_id, conversation_id).await.map_err(internal)?.ok_or_else(not_a_member)?;
    service.ensure_users_exist(user_id, &users, &ctx.request_id).await?;
    let conversation = service
        .store
        .change_members(user_id, conversation_id, MemberChange::Add(&users))
        .await
        .map_err(internal)?
        .map_err(membership_error)?;
    announce(&service, &conversation, None).await;
    Ok(conversation)
}

#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, user_id = request.user_id), err(Debug, level = "info"))]
pub async fn remove_member(
    service: Shared,
    request: AsUser<RemoveMemberRequest>,
    ctx: RequestContext,
) -> Result<Conversation, ApiError> {
    let AsUser { user_id, request } = request;
    let conversation_id = positive_id(request.conversation_id, "conversationId")?;
    let member = positive_id(request.user_id, "userId")?;
    let conversation = service
        .store
        .change_members(user_id, conversation_id, MemberChange::Remove(member))
        .await
        .map_err(internal)?
        .map_err(membership_error)?;
    announce(&service, &conversation, Some(member)).await;
    Ok(conversation)
}

#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, user_id = request.user_id), err(Debug, level = "info"))]
pub async fn leave_conversation(
    service: Shared,
    request: AsUser<LeaveConversationRequest>,
    ctx: RequestContext,
) -> Result<Conversation, ApiError> {
    let AsUser { user_id, request } = request;
    let conversation_id = positive_id(request.conversation_id, "conversationId")?;
    let conversation = service
        .store
        .change_members(user_id, conversation_id, MemberChange::Remove(user_id))
        .await
        .map_err(internal)?
        .map_err(membership_error)?;
    announce(&service, &conversation, Some(user_id)).await;
    Ok(conversation)
}

#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, user_id = request.user_id), err(Debug, level = "info"))]
pub async fn get_conversation(
    service: Shared,
    request: AsUser<GetConversationRequest>,
    ctx: RequestContext,
) -> Result<ConversationEntry, ApiError> {
    let AsUser { user_id, request } = request;
    let conversation_id = positive_id(request.conversation_id, "conversationId")?;
    service.store.entry(user_id, conversation_id).await.map_err(internal)?.ok_or_else(not_a_member)
}

#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, user_id = request.user_id), err(Debug, level = "info"))]
pub async fn list_conversations(
    service: Shared,
    request: AsUser<ListConversationsRequest>,
    ctx: RequestContext,
) -> Result<ConversationsPage, ApiError> {
    let AsUser { user_id, request } = request;
    let limit = request.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_CONVERSATIONS_PAGE {
        return Err(ApiError::validation(format!("limit must be 1 to {MAX_CONVERSATIONS_PAGE}")));
    }
    let before = match request.before.as_deref() {
        Some(text) => Some(
            ListCursor::parse(text)
                .ok_or_else(|| ApiError::validation("before is not a cursor from a previous page"))?,
        ),
        None => None,
    };
    let (conversations, next) = service.store.list(user_id, before, limit).await.map_err(internal)?;
    Ok(ConversationsPage { conversations, next: next.as_ref().map(ListCursor::encode) })
}

#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, user_id = request.user_id), err(Debug, level = "info"))]
pub async fn mark_read(
    service: Shared,
    request: AsUser<MarkReadRequest>,
    ctx: RequestContext,
) -> Result<ReadPosition, ApiError> {
    let AsUser { user_id, request } = request;
    let conversation_id = positive_id(request.conversation_id, "conversationId")?;
    if request.seq < 0 {
        return Err(ApiError::validation("a seq cannot be negative"));
    }
    let read_seq = service
        .store
        .mark_read(user_id, conversation_id, request.seq)
        .await
        .map_err(internal)?
        .ok_or_else(not_a_member)?;
    let position = ReadPosition { conversation_id, read_seq };
    service.events.publish(vec![Event::Read { user_id, position: position.clone() }]).await;
    Ok(position)
}
