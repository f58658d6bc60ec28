//! One client request frame in, one `reply` or `error` frame out: the WebSocket twin of the REST handlers.
//!
//! User operations go to the user-service as they are; every message operation is wrapped in
//! [`AsUser`] with the id from the verified token, so a client can never act as someone else. Bounds are checked
//! here ([`Bounded`]) so oversized requests never reach the broker.

use common::{
    auth::VerifiedUser,
    protocol::{
        ApiError, Operation,
        messages::{
            AddMembers, AsUser, CreateGroup, GetConversation, GetMessages, LeaveConversation, ListConversations,
            MarkRead, Message, RemoveMember, SendMessageRequest, Sync,
        },
        users::{GetSelf, GetSelfRequest, GetUsers, RefreshToken, RefreshTokenRequest},
        ws::{ClientFrame, Pong, ReplyData, ServerFrame},
    },
};

use super::connection::unix_now;
use crate::{state::AppState, validate::Bounded};

/// Who sent a request: the socket's verified token, and the token itself (which `refreshToken` forwards); and
/// until when the request may take (its arrival plus the RPC timeout).
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: VerifiedUser,
    pub token: std::sync::Arc<str>,
    pub deadline: tokio::time::Instant,
    /// The socket's id: its sends to one place keep their order (see [`crate::send_batcher`]).
    pub connection: std::sync::Arc<str>,
}

/// Runs one request. Never fails: every error becomes an error frame naming the request's `id`.
#[tracing::instrument(skip_all, fields(request_id = %request_id, user_id = caller.user.user_id, op))]
pub async fn handle(state: AppState, caller: Caller, request_id: String, frame: ClientFrame) -> ServerFrame {
    let id = frame.id().unwrap_or_default().to_owned();
    let Caller { user, token, deadline, connection } = caller;
    let user_id = user.user_id;
    let call = Call { state: &state, request_id: &request_id, user_id, deadline, connection: &connection };
    let result = match frame {
        ClientFrame::Auth { .. } => Err(ApiError::bad_request("already authenticated")),
        ClientFrame::Ping { .. } => Ok(ReplyData::Ping(Pong { server_time: chrono::Utc::now().timestamp_millis() })),
        ClientFrame::GetSelf { .. } => call.plain::<GetSelf>(GetSelfRequest { user_id }).await.map(ReplyData::GetSelf),
        // A token past its life is not refreshed, though the socket is only closed at its next keep-alive ping.
        ClientFrame::RefreshToken { .. } if user.lifetime_left(unix_now()).is_zero() => {
            Err(ApiError::unauthorized("the session expired; sign in again"))
        }
        // The socket adopts the new token's lifetime when this reply is written (see `connection`).
        ClientFrame::RefreshToken { .. } => call
            .plain::<RefreshToken>(RefreshTokenRequest { token: token.to_string() })
            .await
            .map(ReplyData::RefreshToken),
        ClientFrame::GetUsers { request, .. } => call.plain::<GetUsers>(request).await.map(ReplyData::GetUsers),
        ClientFrame::SendMessage { request, .. } => call.send(request).await.map(ReplyData::SendMessage),
        ClientFrame::GetMessages { request, .. } => {
            call.as_user::<GetMessages, _>(request).await.map(ReplyData::GetMessages)
        }
        ClientFrame::CreateGroup { request, .. } => {
            call.checked::<CreateGroup, _>(request).await.map(ReplyData::CreateGroup)
        }
        ClientFrame::AddMembers { request, .. } => {
            call.checked::<AddMembers, _>(request).await.map(ReplyData::AddMembers)
        }
        ClientFrame::RemoveMember { request, .. } => {
            call.as_user::<RemoveMember, _>(request).await.map(ReplyData::RemoveMember)
        }
        ClientFrame::LeaveConversation { request, .. } => {
            call.as_user::<LeaveConversation, _>(request).await.map(ReplyData::LeaveConversation)
        }
        ClientFrame::GetConversation { request, .. } => {
            call.as_user::<GetConversation, _>(request).await.map(ReplyData::GetConversation)
        }
        ClientFrame::ListConversations { request, .. } => {
            call.checked::<ListConversations, _>(request).await.map(ReplyData::ListConversations)
        }
        ClientFrame::MarkRead { request, .. } => call.as_user::<MarkRead, _>(request).await.map(ReplyData::MarkRead),
        ClientFrame::Sync { request, .. } => call.checked::<Sync, _>(request).await.map(ReplyData::Sync),
    };
    match result {
        Ok(result) => ServerFrame::Reply { id, result },
        Err(error) => {
            if error.code.is_retryable() {
                tracing::warn!(code = ?error.code, message = %error.message, "request failed");
            }
            ServerFrame::Error { id: Some(id), error }
        }
    }
}

struct Call<'a> {
    state: &'a AppState,
    request_id: &'a str,
    user_id: i64,
    deadline: tokio::time::Instant,
    connection: &'a std::sync::Arc<str>,
}

impl Call<'_> {
    async fn plain<O: Operation>(&self, request: O::Request) -> Result<O::Response, ApiError> {
        tracing::Span::current().record("op", O::ROUTING_KEY);
        self.state.call_until::<O>(self.request_id, &request, self.deadline).await
    }

    async fn as_user<O, T>(&self, request: T) -> Result<O::Response, ApiError>
    where
        O: Operation<Request = AsUser<T>>,
    {
        self.plain::<O>(AsUser { user_id: self.user_id, request }).await
    }

    /// `sendMessage` goes through the gateway's batcher rather than a call of its own.
    async fn send(&self, request: SendMessageRequest) -> Result<Message, ApiError> {
        tracing::Span::current().record("op", "sendMessage");
        request.check_bounds()?;
        self.state.send_message(self.request_id, Some(self.connection), self.user_id, request).await
    }

    async fn checked<O, T>(&self, request: T) -> Result<O::Response, ApiError>
    where
        O: Operation<Request = AsUser<T>>,
        T: Bounded,
    {
        request.check_bounds()?;
        self.as_user::<O, T>(request).await
    }
}
