//! The message-service's vocabulary: conversations, messages, and the RPC operations on them.
//!
//! Every request the gateway forwards is wrapped in [`AsUser`]: the gateway has verified the token and says who
//! is acting; the service checks membership itself, so the gateway stays free of business rules.

use serde::{Deserialize, Serialize};
use ts_rs::TS;

use crate::operation;

/// Longest message body, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4_000;
/// Longest group title, in characters.
pub const MAX_TITLE_CHARS: usize = 100;
/// Most members a group may have.
pub const MAX_GROUP_MEMBERS: usize = 1_000;
/// Longest client message id (a UUID is 36).
pub const MAX_CLIENT_MESSAGE_ID_CHARS: usize = 64;
/// Most messages one `getMessages` page returns.
pub const MAX_PAGE: u32 = 100;
/// Most conversations one `listConversations` page returns.
pub const MAX_CONVERSATIONS_PAGE: u32 = 200;
/// Most missed messages `sync` returns per conversation; past it the conversation is marked truncated and the
/// client pages the rest with `getMessages`.
pub const SYNC_MESSAGES_PER_CONVERSATION: u32 = 200;
/// Most heads one `sync` may carry (a thousand heads is ~41 KB of JSON, inside the 64 KiB frame limit). Heads
/// matter for the most recently active `MAX_CONVERSATIONS_PAGE` conversations and for those beyond them with
/// messages after their head (`SYNC_CONVERSATIONS_BEHIND`).
pub const MAX_SYNC_HEADS: usize = 1_000;
/// Most conversations outside the recent list (`MAX_CONVERSATIONS_PAGE`, for users in more conversations than
/// that) that one `sync` returns with their entry: those the client sent a head for and that have messages after
/// it, most recently active first. Any more such are listed in `truncated` only, for paging with `getMessages`.
pub const SYNC_CONVERSATIONS_BEHIND: u32 = 50;
/// Most missed messages one `sync` returns in all; conversations past the budget are listed in `truncated`.
pub const SYNC_MESSAGES_TOTAL: u32 = 1_000;
/// Most bytes of message bodies one `sync` returns in all, counted as they are written in JSON (a control
/// character takes six bytes there, so counting raw bytes would let a reply grow sixfold): a thousand maximal
/// messages would be ~16 MB in UTF-8 and up to ~24 MB in JSON. With the conversation list (at most ~9 MB:
/// `MAX_CONVERSATIONS_PAGE` + `SYNC_CONVERSATIONS_BEHIND` entries with their last message and up to
/// `MAX_GROUP_MEMBERS` member ids, ~35 KB each) a reply stays inside the gateway's 16 MiB frame limit.
pub const SYNC_BODY_BYTES: usize = 2 * 1024 * 1024;

/// How many bytes `text` takes inside a JSON string as `serde_json` writes it (without the quotes).
pub fn json_string_len(text: &str) -> usize {
    text.len()
        + text
            .bytes()
            .map(|b| match b {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
                0x00..=0x1f => 5,
                _ => 0,
            })
            .sum::<usize>()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub enum ConversationKind {
    Direct,
    Group,
}

/// A stored message. `seq` is dense per conversation (1, 2, 3, ...) and the same for every member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct Message {
    pub conversation_id: i64,
    pub seq: i64,
    pub sender_id: i64,
    /// The id the sending client chose; sending it again returns this message instead of storing another.
    pub client_message_id: String,
    pub body: String,
    /// When the message was committed, by the database's clock, in milliseconds since the Unix epoch. Within a
    /// conversation it never decreases as `seq` grows.
    pub sent_at: i64,
}

/// A conversation as every member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct Conversation {
    pub id: i64,
    pub kind: ConversationKind,
    /// Groups only.
    #[ts(optional)]
    pub title: Option<String>,
    /// Member user ids, ascending.
    pub members: Vec<i64>,
    /// The seq of the newest message (0 when empty).
    pub last_seq: i64,
    /// When the last message was sent, members were last added, or the conversation was created, in ms since the
    /// Unix epoch. Lists are ordered by it, newest first.
    pub last_activity_at: i64,
    pub created_at: i64,
}

/// A conversation in one user's list: with that user's read position and the newest message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct ConversationEntry {
    pub conversation: Conversation,
    /// The highest seq this user has read; `lastSeq - readSeq` is the unread count.
    pub read_seq: i64,
    #[ts(optional)]
    pub last_message: Option<Message>,
}

/// A request made on behalf of an authenticated user (the gateway fills `user_id` from the verified token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsUser<T> {
    pub user_id: i64,
    pub request: T,
}

/// Send to an existing conversation (`conversationId`) or directly to a user (`toUserId`; the direct
/// conversation is created on the first message). Exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct SendMessageRequest {
    #[serde(default)]
    #[ts(optional)]
    pub conversation_id: Option<i64>,
    #[serde(default)]
    #[ts(optional)]
    pub to_user_id: Option<i64>,
    pub client_message_id: String,
    pub body: String,
}

/// A page of a conversation's history around a position. At most one of `before`, `after`, `around`; none
/// means the newest page. Messages come in ascending seq order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct GetMessagesRequest {
    pub conversation_id: i64,
    #[serde(default)]
    #[ts(optional)]
    pub before: Option<i64>,
    #[serde(default)]
    #[ts(optional)]
    pub after: Option<i64>,
    #[serde(default)]
    #[ts(optional)]
    pub around: Option<i64>,
    #[serde(default)]
    #[ts(optional)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct MessagesPage {
    pub messages: Vec<Message>,
    /// Older messages exist before the first one returned.
    pub has_more_before: bool,
    /// Newer messages exist after the last one returned.
    pub has_more_after: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct CreateGroupRequest {
    pub title: String,
    /// Other members; the creator is always a member.
    pub member_ids: Vec<i64>,
    /// Chosen by the creator (1 to [`MAX_CLIENT_MESSAGE_ID_CHARS`] of `A-Z a-z 0-9 - _`; use a UUID) so that
    /// retrying is safe: the same id with the same title and members returns the group made the first time
    /// instead of making a second one. Without it, every call makes a group.
    #[serde(default)]
    #[ts(optional)]
    pub client_group_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct AddMembersRequest {
    pub conversation_id: i64,
    pub user_ids: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct RemoveMemberRequest {
    pub conversation_id: i64,
    pub user_id: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct LeaveConversationRequest {
    pub conversation_id: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct GetConversationRequest {
    pub conversation_id: i64,
}

/// The user's conversations, most recently active first. `before` is the `next` of the previous page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct ListConversationsRequest {
    #[serde(default)]
    #[ts(optional)]
    pub before: Option<String>,
    #[serde(default)]
    #[ts(optional)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct ConversationsPage {
    pub conversations: Vec<ConversationEntry>,
    #[ts(optional)]
    pub next: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct MarkReadRequest {
    pub conversation_id: i64,
    pub seq: i64,
}

/// The read position after `markRead` (it never moves backwards).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct ReadPosition {
    pub conversation_id: i64,
    pub read_seq: i64,
}

/// The newest seq a client holds of one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct Head {
    pub conversation_id: i64,
    pub seq: i64,
}

/// What the client has; the answer is what it lacks. For a conversation missing from `heads` (new to the client)
/// the answer holds its newest messages; older ones are paged with `getMessages before`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct SyncRequest {
    pub heads: Vec<Head>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct SyncResponse {
    /// The user's most recently active conversations (up to `MAX_CONVERSATIONS_PAGE`), newest first, then up to
    /// `SYNC_CONVERSATIONS_BEHIND` others that have messages after the client's head.
    pub conversations: Vec<ConversationEntry>,
    /// The messages the client lacks, by conversation then seq, at most `SYNC_MESSAGES_PER_CONVERSATION` each.
    pub messages: Vec<Message>,
    /// Conversations with more missed messages than returned (some of them not in `conversations`): page the rest
    /// with `getMessages` `after`.
    pub truncated: Vec<i64>,
    /// Conversations the client sent a head for that the user is not a member of (they left or were removed, or
    /// it never was theirs): drop them. Said whether or not the user is in more conversations than the list
    /// holds. (A message-service older than this field leaves it out, during a rolling upgrade: read as empty.)
    #[serde(default)]
    pub removed: Vec<i64>,
}

/// What the message-service publishes on the fanout exchange, in batches (one AMQP message per commit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Event {
    /// A committed message, for the conversation's members.
    Message { message: Message, recipients: Vec<i64> },
    /// A conversation was created or its membership changed; `recipients` includes removed members.
    Conversation { conversation: Conversation, recipients: Vec<i64> },
    /// A member's read position moved (their other devices update their unread counts).
    Read { user_id: i64, position: ReadPosition },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    pub events: Vec<Event>,
}

/// Most sends in one `sendMessages` batch.
pub const MAX_SEND_BATCH: usize = 256;

/// Several sends at once, from any users: what a gateway forwards when sends meet there, so a burst costs one
/// request and one reply on the broker instead of one per message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendBatch {
    pub sends: Vec<AsUser<SendMessageRequest>>,
}

/// One outcome per send of a [`SendBatch`], in order: exactly what `sendMessage` would have answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendBatchResult {
    pub results: Vec<crate::protocol::RpcReply<Message>>,
}

operation!(SendMessage, "sendMessage", AsUser<SendMessageRequest> => Message);
operation!(SendMessages, "sendMessages", SendBatch => SendBatchResult);
operation!(GetMessages, "getMessages", AsUser<GetMessagesRequest> => MessagesPage);
operation!(CreateGroup, "createGroup", AsUser<CreateGroupRequest> => Conversation);
operation!(AddMembers, "addMembers", AsUser<AddMembersRequest> => Conversation);
operation!(RemoveMember, "removeMember", AsUser<RemoveMemberRequest> => Conversation);
operation!(LeaveConversation, "leaveConversation", AsUser<LeaveConversationRequest> => Conversation);
operation!(GetConversation, "getConversation", AsUser<GetConversationRequest> => ConversationEntry);
operation!(ListConversations, "listConversations", AsUser<ListConversationsRequest> => ConversationsPage);
operation!(MarkRead, "markRead", AsUser<MarkReadRequest> => ReadPosition);
operation!(Sync, "sync", AsUser<SyncRequest> => SyncResponse);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_strings_json_length_is_what_serde_json_writes() {
        for text in
            ["", "plain", "quote \" and \\ slash", "line\nbreak\ttab\r\u{8}\u{c}", "\u{1}\u{1f}\u{7f}", "héllo 😀"]
        {
            let written = serde_json::to_string(text).unwrap().len() - 2;
            assert_eq!(json_string_len(text), written, "{text:?}");
        }
        assert_eq!(json_string_len(&"\u{1}".repeat(4_000)), 24_000);
    }
}
