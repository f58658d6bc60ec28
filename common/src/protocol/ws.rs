//! WebSocket frames between clients and the gateway (`/ws`). Every frame is one JSON text message with a `type`.
//!
//! The contract, in short (docs/PROTOCOL.md has it in full):
//! 1. The first frame must be [`ClientFrame::Auth`] within a few seconds, else the socket is closed (4001).
//!    The gateway answers [`ServerFrame::Ready`].
//! 2. Every other client frame carries an `id` of the client's choosing; the answer is a [`ServerFrame::Reply`]
//!    or a [`ServerFrame::Error`] with the same `id`. An error never closes the socket unless it is protocol
//!    abuse (an oversized frame, binary frames, a flood), which closes it with a reason.
//! 3. Live events ([`ServerFrame::Message`], [`ServerFrame::Conversation`], [`ServerFrame::Read`]) arrive
//!    unasked, only for conversations the user is a member of.
//! 4. Live push may lose events; `seq` makes every loss visible as a gap. On every (re)connect, on
//!    [`ServerFrame::Resync`], on a gap, and every 30 s while idle, the client sends `sync` with its heads and
//!    receives exactly what it lacks.

use serde::{Deserialize, Serialize};
use ts_rs::TS;

use super::{
    ApiError,
    messages::{
        AddMembersRequest, Conversation, ConversationEntry, ConversationsPage, CreateGroupRequest,
        GetConversationRequest, GetMessagesRequest, LeaveConversationRequest, ListConversationsRequest,
        MarkReadRequest, Message, MessagesPage, ReadPosition, RemoveMemberRequest, SendMessageRequest, SyncRequest,
        SyncResponse,
    },
    users::{AuthResponse, GetUsersRequest, User, UsersPage},
};

/// Longest request id a client may choose.
pub const MAX_REQUEST_ID_CHARS: usize = 64;

/// A frame from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
#[ts(export)]
pub enum ClientFrame {
    /// Must be the first frame.
    Auth {
        token: String,
    },
    /// Answered by the gateway itself with a `ping` reply: browsers cannot see WebSocket-level pings, so this is
    /// how a page notices a dead connection quickly.
    Ping {
        id: String,
    },
    SendMessage {
        id: String,
        #[serde(flatten)]
        request: SendMessageRequest,
    },
    GetMessages {
        id: String,
        #[serde(flatten)]
        request: GetMessagesRequest,
    },
    GetUsers {
        id: String,
        #[serde(flatten)]
        request: GetUsersRequest,
    },
    GetSelf {
        id: String,
    },
    /// A new token for this session; the socket then lasts as long as the new token.
    RefreshToken {
        id: String,
    },
    CreateGroup {
        id: String,
        #[serde(flatten)]
        request: CreateGroupRequest,
    },
    AddMembers {
        id: String,
        #[serde(flatten)]
        request: AddMembersRequest,
    },
    RemoveMember {
        id: String,
        #[serde(flatten)]
        request: RemoveMemberRequest,
    },
    LeaveConversation {
        id: String,
        #[serde(flatten)]
        request: LeaveConversationRequest,
    },
    GetConversation {
        id: String,
        #[serde(flatten)]
        request: GetConversationRequest,
    },
    ListConversations {
        id: String,
        #[serde(flatten)]
        request: ListConversationsRequest,
    },
    MarkRead {
        id: String,
        #[serde(flatten)]
        request: MarkReadRequest,
    },
    Sync {
        id: String,
        #[serde(flatten)]
        request: SyncRequest,
    },
}

impl ClientFrame {
    /// The request id, for every frame but `auth`.
    pub fn id(&self) -> Option<&str> {
        match self {
            ClientFrame::Auth { .. } => None,
            ClientFrame::Ping { id }
            | ClientFrame::SendMessage { id, .. }
            | ClientFrame::GetMessages { id, .. }
            | ClientFrame::GetUsers { id, .. }
            | ClientFrame::GetSelf { id }
            | ClientFrame::RefreshToken { id }
            | ClientFrame::CreateGroup { id, .. }
            | ClientFrame::AddMembers { id, .. }
            | ClientFrame::RemoveMember { id, .. }
            | ClientFrame::LeaveConversation { id, .. }
            | ClientFrame::GetConversation { id, .. }
            | ClientFrame::ListConversations { id, .. }
            | ClientFrame::MarkRead { id, .. }
            | ClientFrame::Sync { id, .. } => Some(id),
        }
    }
}

/// The answer to one request, tagged with the operation so the client can type it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(tag = "op", content = "data", rename_all = "camelCase")]
#[ts(export)]
pub enum ReplyData {
    Ping(Pong),
    SendMessage(Message),
    GetMessages(MessagesPage),
    GetUsers(UsersPage),
    GetSelf(User),
    RefreshToken(AuthResponse),
    CreateGroup(Conversation),
    AddMembers(Conversation),
    RemoveMember(Conversation),
    LeaveConversation(Conversation),
    GetConversation(ConversationEntry),
    ListConversations(ConversationsPage),
    MarkRead(ReadPosition),
    Sync(SyncResponse),
}

/// The answer to `ping`: the gateway's clock (ms since the Unix epoch), which also lets a client estimate skew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct Pong {
    pub server_time: i64,
}

/// A frame from the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
#[ts(export)]
pub enum ServerFrame {
    /// Authentication succeeded. `pingIntervalMs`: how often the gateway pings; `syncIntervalMs`: how often an
    /// idle client should `sync` to close a lost tail.
    Ready {
        user: User,
        ping_interval_ms: u64,
        sync_interval_ms: u64,
    },
    Reply {
        id: String,
        result: ReplyData,
    },
    /// A request failed. `id` is absent only when the frame was so malformed that no id could be read.
    Error {
        #[ts(optional)]
        id: Option<String>,
        error: ApiError,
    },
    /// A new message in one of the user's conversations (also the user's own, for their other devices).
    Message {
        message: Message,
    },
    /// A conversation the user is (or was, until now) a member of was created or changed.
    Conversation {
        conversation: Conversation,
    },
    /// The user's read position moved on another device.
    Read {
        position: ReadPosition,
    },
    /// Live events may have been lost (the gateway reconnected to the broker, or the client fell behind): `sync`.
    Resync {
        reason: String,
    },
}

/// Close codes the gateway uses besides the standard ones (1000 normal, 1001 going away, 1009 too big).
pub mod close {
    /// No valid `auth` frame in time, the token was refused, or it expired during the session.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The client did not read its frames fast enough; reconnect and `sync`.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Binary frames, or too many requests at once.
    pub const PROTOCOL: u16 = 4002;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_frame_reads_flat() {
        let frame: ClientFrame = serde_json::from_str(
            r#"{"type":"sendMessage","id":"r1","conversationId":7,"clientMessageId":"c1","body":"hi"}"#,
        )
        .unwrap();
        assert_eq!(frame.id(), Some("r1"));
        assert!(matches!(frame, ClientFrame::SendMessage { request, .. } if request.conversation_id == Some(7)));
    }

    #[test]
    fn replies_carry_their_operation() {
        let frame = ServerFrame::Reply {
            id: "r1".into(),
            result: ReplyData::MarkRead(ReadPosition { conversation_id: 1, read_seq: 3 }),
        };
        assert_eq!(
            serde_json::to_string(&frame).unwrap(),
            r#"{"type":"reply","id":"r1","result":{"op":"markRead","data":{"conversationId":1,"readSeq":3}}}"#
        );
    }
}
