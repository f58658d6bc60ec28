//! The REST twins of the WebSocket requests, for clients without a socket (scripts, other services, tests):
//! conversations, history, sending, membership, read positions and `sync`.
//!
//! Each handler is a thin translation to one message-service RPC, made on behalf of the token's user
//! ([`AsUser`]); the service checks membership and every rule. Sizes are bounded here first ([`Bounded`]).
//! Live events are WebSocket-only: a REST client learns what is new with `POST /api/sync`.

use axum::{extract::State, http::StatusCode};
use common::protocol::{
    Operation,
    messages::{
        AddMembers, AddMembersRequest, AsUser, Conversation, ConversationEntry, ConversationsPage, CreateGroup,
        CreateGroupRequest, GetConversation, GetConversationRequest, GetMessages, GetMessagesRequest,
        LeaveConversation, LeaveConversationRequest, ListConversations, ListConversationsRequest, MarkRead,
        MarkReadRequest, Message, MessagesPage, ReadPosition, RemoveMember, RemoveMemberRequest, SendMessageRequest,
        Sync, SyncRequest, SyncResponse,
    },
};
use serde::Deserialize;

use crate::{
    auth::AuthUser,
    error::{ApiJson, ApiPath, ApiQuery, HttpError},
    fields::{NoBody, StrictJson, StrictQuery},
    request_id::ReqId,
    state::AppState,
    validate::Bounded,
};

type Reply<T> = Result<ApiJson<T>, HttpError>;
type Created<T> = Result<(StatusCode, ApiJson<T>), HttpError>;

/// `POST /api/conversations/{id}/messages`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewMessage {
    pub client_message_id: String,
    pub body: String,
}

/// `POST /api/messages`: a direct message; the conversation is created with the first one.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectMessage {
    pub to_user_id: i64,
    pub client_message_id: String,
    pub body: String,
}

/// `POST /api/conversations/{id}/members`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewMembers {
    pub user_ids: Vec<i64>,
}

/// `POST /api/conversations/{id}/read`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadUpTo {
    pub seq: i64,
}

/// `GET /api/conversations/{id}/messages?before=&after=&around=&limit=`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessagesQuery {
    pub before: Option<i64>,
    pub after: Option<i64>,
    pub around: Option<i64>,
    pub limit: Option<u32>,
}

/// Calls a message-service operation as the authenticated user.
async fn call_as<O, T>(state: &AppState, id: &ReqId, user: &AuthUser, request: T) -> Result<O::Response, HttpError>
where
    O: Operation<Request = AsUser<T>>,
{
    Ok(state.call::<O>(&id.0, &AsUser { user_id: user.0.user_id, request }).await?)
}

#[tracing::instrument(skip_all, fields(request_id = %id.0, user_id = user.0.user_id), err(Debug, level = "info"))]
pub async fn list_conversations(
    State(state): State<AppState>,
    user: AuthUser,
    id: ReqId,
    StrictQuery(request): StrictQuery<ListConversationsRequest>,
) -> Reply<ConversationsPage> {
    request.check_bounds()?;
    Ok(ApiJson(call_as::<ListConversations, _>(&state, &id, &user, request).await?))
}

#[tracing::instrument(skip_all, fields(request_id = %id.0, user_id = user.0.user_id), err(Debug, level = "info"))]
pub async fn create_group(
    State(state): State<AppState>,
    user: AuthUser,
    id: ReqId,
    StrictJson(request): StrictJson<CreateGroupRequest>,
) -> Created<Conversation> {
    request.check_bounds()?;
    Ok((StatusCode::CREATED, ApiJson(call_as::<CreateGroup, _>(&state, &id, &user, request).await?)))
}

#[tracing::instrument(skip_all, fields(request_id = %id.0, user_id = user.0.user_id, conversation_id), err(Debug, level = "info"))]
pub async fn get_conversation(
    State(state): State<AppState>,
    user: AuthUser,
    id: ReqId,
    ApiPath(conversation_id): ApiPath<i64>,
) -> Reply<ConversationEntry> {
    tracing::Span::current().record("conversation_id", conversation_id);
    let request = GetConversationRequest { conversation_id };
    Ok(ApiJson(call_as::<GetConversation, _>(&state, &id, &user, request).await?))
}

#[tracing::instrument(skip_all, fields(request_id = %id.0, user_id = user.0.user_id, conversation_id), err(Debug, level = "info"))]
pub async fn get_messages(
    State(state): State<AppState>,
    user: AuthUser,
    id: ReqId,
    ApiPath(conversation_id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<MessagesQuery>,
) -> Reply<MessagesPage> {
    tracing::Span::current().record("conversation_id", conversation_id);
    let MessagesQuery { before, after, around, limit } = query;
    let request = GetMessagesRequest { conversation_id, before, after, around, limit };
    Ok(ApiJson(call_as::<GetMessages, _>(&state, &id, &user, request).await?))
}

#[tracing::instrument(skip_all, fields(request_id = %id.0, user_id = user.0.user_id, conversation_id), err(Debug, level = "info"))]
pub async fn send_to_conversation(
    State(state): State<AppState>,
    user: AuthUser,
    id: ReqId,
    ApiPath(conversation_id): ApiPath<i64>,
    StrictJson(message): StrictJson<NewMessage>,
) -> Created<Message> {
    tracing::Span::current().record("conversation_id", conversation_id);
    let request = SendMessageRequest {
        conversation_id: Some(conversation_id),
        to_user_id: None,
        client_message_id: message.client_message_id,
        body: message.body,
    };
    request.check_bounds()?;
    Ok((StatusCode::CREATED, ApiJson(state.send_message(&id.0, None, user.0.user_id, request).await?)))
}

#[tracing::instrument(skip_all, fields(request_id = %id.0, user_id = user.0.user_id), err(Debug, level = "info"))]
pub async fn send_direct(
    State(state): State<AppState>,
    user: AuthUser,
    id: ReqId,
    StrictJson(message): StrictJson<DirectMessage>,
) -> Created<Message> {
    let request = SendMessageRequest {
        conversation_id: None,
        to_user_id: Some(message.to_user_id),
        client_message_id: message.client_message_id,
        body: message.body,
    };
    request.check_bounds()?;
    Ok((StatusCode::CREATED, ApiJson(state.send_message(&id.0, None, user.0.user_id, request).await?)))
}

#[tracing::instrument(skip_all, fields(request_id = %id.0, user_id = user.0.user_id, conversation_id), err(Debug, level = "info"))]
pub async fn add_members(
    State(state): State<AppState>,
    user: AuthUser,
    id: ReqId,
    ApiPath(conversation_id): ApiPath<i64>,
    StrictJson(members): StrictJson<NewMembers>,
) -> Reply<Conversation> {
    tracing::Span::current().record("conversation_id", conversation_id);
    let request = AddMembersRequest { conversation_id, user_ids: members.user_ids };
    request.check_bounds()?;
    Ok(ApiJson(call_as::<AddMembers, _>(&state, &id, &user, request).await?))
}

#[tracing::instrument(skip_all, fields(request_id = %id.0, user_id = user.0.user_id, conversation_id), err(Debug, level = "info"))]
pub async fn remove_member(
    State(state): State<AppState>,
    user: AuthUser,
    id: ReqId,
    ApiPath((conversation_id, member_id)): ApiPath<(i64, i64)>,
    _: NoBody,
) -> Reply<Conversation> {
    tracing::Span::current().record("conversation_id", conversation_id);
    let request = RemoveMemberRequest { conversation_id, user_id: member_id };
    Ok(ApiJson(call_as::<RemoveMember, _>(&state, &id, &user, request).await?))
}

#[tracing::instrument(skip_all, fields(request_id = %id.0, user_id = user.0.user_id, conversation_id), err(Debug, level = "info"))]
pub async fn leave_conversation(
    State(state): State<AppState>,
    user: AuthUser,
    id: ReqId,
    ApiPath(conversation_id): ApiPath<i64>,
    _: NoBody,
) -> Reply<Conversation> {
    tracing::Span::current().record("conversation_id", conversation_id);
    let request = LeaveConversationRequest { conversation_id };
    Ok(ApiJson(call_as::<LeaveConversation, _>(&state, &id, &user, request).await?))
}

#[tracing::instrument(skip_all, fields(request_id = %id.0, user_id = user.0.user_id, conversation_id), err(Debug, level = "info"))]
pub async fn mark_read(
    State(state): State<AppState>,
    user: AuthUser,
    id: ReqId,
    ApiPath(conversation_id): ApiPath<i64>,
    StrictJson(read): StrictJson<ReadUpTo>,
) -> Reply<ReadPosition> {
    tracing::Span::current().record("conversation_id", conversation_id);
    let request = MarkReadRequest { conversation_id, seq: read.seq };
    Ok(ApiJson(call_as::<MarkRead, _>(&state, &id, &user, request).await?))
}

#[tracing::instrument(skip_all, fields(request_id = %id.0, user_id = user.0.user_id), err(Debug, level = "info"))]
pub async fn sync(
    State(state): State<AppState>,
    user: AuthUser,
    id: ReqId,
    StrictJson(request): StrictJson<SyncRequest>,
) -> Reply<SyncResponse> {
    request.check_bounds()?;
    Ok(ApiJson(call_as::<Sync, _>(&state, &id, &user, request).await?))
}
