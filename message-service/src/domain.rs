//! Checked request values: once a `MessageBody` or a `ClientMessageId` exists it is valid, so the store and the
//! group commit never see an unchecked string. Messages are written for the person typing.

use common::protocol::{
    ApiError,
    messages::{MAX_CLIENT_MESSAGE_ID_CHARS, MAX_MESSAGE_CHARS, MAX_TITLE_CHARS},
};

/// A message body: not blank, at most [`MAX_MESSAGE_CHARS`] characters. Kept exactly as typed (no trimming:
/// leading spaces and newlines can be meaningful, in code snippets say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBody(String);

impl MessageBody {
    pub fn parse(body: String) -> Result<Self, ApiError> {
        if body.trim().is_empty() {
            return Err(ApiError::validation("a message cannot be empty"));
        }
        if body.chars().count() > MAX_MESSAGE_CHARS {
            return Err(ApiError::validation(format!("a message can be at most {MAX_MESSAGE_CHARS} characters")));
        }
        if body.contains('\0') {
            return Err(ApiError::validation("a message cannot contain NUL characters"));
        }
        Ok(Self(body))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// The id a client picks for a send so that retrying it is safe: 1 to 64 of `A-Z a-z 0-9 - _` (a UUID fits).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientMessageId(String);

impl ClientMessageId {
    pub fn parse(id: String) -> Result<Self, ApiError> {
        let valid = !id.is_empty()
            && id.len() <= MAX_CLIENT_MESSAGE_ID_CHARS
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(id))
        } else {
            Err(ApiError::validation(format!(
                "clientMessageId must be 1 to {MAX_CLIENT_MESSAGE_ID_CHARS} letters, digits, '-' or '_'"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A group's title: 1 to [`MAX_TITLE_CHARS`] characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTitle(String);

impl GroupTitle {
    pub fn parse(title: String) -> Result<Self, ApiError> {
        let title = title.trim();
        if title.is_empty() || title.chars().count() > MAX_TITLE_CHARS {
            return Err(ApiError::validation(format!("a group title must be 1 to {MAX_TITLE_CHARS} characters")));
        }
        if title.chars().any(char::is_control) {
            return Err(ApiError::validation("a group title cannot contain control characters"));
        }
        Ok(Self(title.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A positive id (users and conversations are numbered from 1).
pub fn positive_id(id: i64, what: &str) -> Result<i64, ApiError> {
    if id > 0 { Ok(id) } else { Err(ApiError::validation(format!("{what} must be a positive id"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_and_oversized_bodies_are_refused() {
        assert!(MessageBody::parse("  \n ".into()).is_err());
        assert!(MessageBody::parse("x".repeat(MAX_MESSAGE_CHARS + 1)).is_err());
        assert!(MessageBody::parse("é".repeat(MAX_MESSAGE_CHARS)).is_ok());
        assert!(MessageBody::parse("nul\0".into()).is_err());
        assert_eq!(MessageBody::parse("  keep spaces ".into()).unwrap().as_str(), "  keep spaces ");
    }

    #[test]
    fn client_message_ids_are_short_and_plain() {
        assert!(ClientMessageId::parse("0b9e7c1e-4c1a-4c39-9d1e-1d1b1a1c1f10".into()).is_ok());
        assert!(ClientMessageId::parse(String::new()).is_err());
        assert!(ClientMessageId::parse("has space".into()).is_err());
        assert!(ClientMessageId::parse("x".repeat(65)).is_err());
    }

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(GroupTitle::parse("  Team  ".into()).unwrap().as_str(), "Team");
        assert!(GroupTitle::parse("   ".into()).is_err());
        assert!(GroupTitle::parse("t".repeat(MAX_TITLE_CHARS + 1)).is_err());
        assert!(GroupTitle::parse("bell\u{7}".into()).is_err());
    }

    #[test]
    fn ids_must_be_positive() {
        assert!(positive_id(0, "x").is_err());
        assert!(positive_id(-3, "x").is_err());
        assert_eq!(positive_id(9, "x").unwrap(), 9);
    }
}
