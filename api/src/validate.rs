//! Size bounds checked at the edge, before a request is put on the broker (DESIGN §5: "every request validated
//! before it reaches a service").
//!
//! Only *bounds* live here (lengths and counts from `common::protocol`), so an oversized payload costs the
//! gateway a comparison instead of a broker hop and a service's CPU. The rules themselves (who may post where, what
//! an empty message means, which combinations are allowed) stay with the owning service, in one place.

use common::protocol::{
    ApiError,
    messages::{
        AddMembersRequest, CreateGroupRequest, ListConversationsRequest, MAX_CLIENT_MESSAGE_ID_CHARS,
        MAX_GROUP_MEMBERS, MAX_MESSAGE_CHARS, MAX_SYNC_HEADS, MAX_TITLE_CHARS, SendMessageRequest, SyncRequest,
    },
};

/// Longest `before` cursor of `listConversations` accepted (the service's cursors are far shorter).
pub const MAX_CURSOR_CHARS: usize = 256;

/// A request whose sizes can be checked without knowing any business rule.
pub trait Bounded {
    /// `Err(validation)` naming the first bound broken.
    fn check_bounds(&self) -> Result<(), ApiError>;
}

fn at_most_chars(value: &str, max: usize, what: &str) -> Result<(), ApiError> {
    // A char is at most 4 bytes: short strings need no counting.
    if value.len() > max && value.chars().count() > max {
        return Err(ApiError::validation(format!("{what} is longer than {max} characters")));
    }
    Ok(())
}

fn at_most_items<T>(items: &[T], max: usize, what: &str) -> Result<(), ApiError> {
    if items.len() > max {
        return Err(ApiError::validation(format!("more than {max} {what}")));
    }
    Ok(())
}

impl Bounded for SendMessageRequest {
    fn check_bounds(&self) -> Result<(), ApiError> {
        at_most_chars(&self.client_message_id, MAX_CLIENT_MESSAGE_ID_CHARS, "clientMessageId")?;
        at_most_chars(&self.body, MAX_MESSAGE_CHARS, "the message")
    }
}

impl Bounded for CreateGroupRequest {
    fn check_bounds(&self) -> Result<(), ApiError> {
        at_most_chars(&self.title, MAX_TITLE_CHARS, "the title")?;
        at_most_items(&self.member_ids, MAX_GROUP_MEMBERS, "members")?;
        self.client_group_id
            .as_deref()
            .map_or(Ok(()), |id| at_most_chars(id, MAX_CLIENT_MESSAGE_ID_CHARS, "clientGroupId"))
    }
}

impl Bounded for AddMembersRequest {
    fn check_bounds(&self) -> Result<(), ApiError> {
        at_most_items(&self.user_ids, MAX_GROUP_MEMBERS, "members")
    }
}

impl Bounded for ListConversationsRequest {
    fn check_bounds(&self) -> Result<(), ApiError> {
        self.before.as_deref().map_or(Ok(()), |before| at_most_chars(before, MAX_CURSOR_CHARS, "before"))
    }
}

impl Bounded for SyncRequest {
    fn check_bounds(&self) -> Result<(), ApiError> {
        at_most_items(&self.heads, MAX_SYNC_HEADS, "heads")
    }
}

#[cfg(test)]
mod tests {
    use common::protocol::{ErrorCode, messages::Head};

    use super::*;

    fn send(body: String) -> SendMessageRequest {
        SendMessageRequest { conversation_id: Some(1), to_user_id: None, client_message_id: "c".into(), body }
    }

    #[test]
    fn a_message_at_the_limit_passes_and_one_over_fails() {
        assert!(send("é".repeat(MAX_MESSAGE_CHARS)).check_bounds().is_ok());
        let error = send("a".repeat(MAX_MESSAGE_CHARS + 1)).check_bounds().unwrap_err();
        assert_eq!(error.code, ErrorCode::Validation);
    }

    #[test]
    fn an_overlong_client_group_id_fails_at_the_edge() {
        let group =
            |id: Option<String>| CreateGroupRequest { title: "t".into(), member_ids: vec![], client_group_id: id };
        assert!(group(None).check_bounds().is_ok());
        assert!(group(Some("g".repeat(MAX_CLIENT_MESSAGE_ID_CHARS))).check_bounds().is_ok());
        let error = group(Some("g".repeat(MAX_CLIENT_MESSAGE_ID_CHARS + 1))).check_bounds().unwrap_err();
        assert_eq!(error.code, ErrorCode::Validation);
        assert!(error.message.contains("clientGroupId"), "{error:?}");
    }

    #[test]
    fn too_many_heads_fail() {
        let heads = vec![Head { conversation_id: 1, seq: 1 }; MAX_SYNC_HEADS + 1];
        assert!(SyncRequest { heads }.check_bounds().is_err());
    }
}
