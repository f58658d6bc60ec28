//! Checked request values: once a `MessageBody` or a `ClientMessageId` exists it is valid, so the store and the
//! group commit never see an unchecked string. Messages are written for the person typing.

use common::protocol::{
    ApiError,
    messages::{MAX_CLIENT_MESSAGE_ID_CHARS, MAX_MESSAGE_CHARS, MAX_TITLE_CHARS},
};

/// A message body: not blank (see [`shows_nothing`]), at most [`MAX_MESSAGE_CHARS`] characters. Kept exactly as
/// typed (no trimming: leading spaces and newlines can be meaningful, in code snippets say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBody(String);

impl MessageBody {
    pub fn parse(body: String) -> Result<Self, ApiError> {
        if shows_nothing(&body) {
            return Err(ApiError::validation("a message cannot be empty or only spaces and invisible characters"));
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

/// Whether a text would show as nothing at all: every character white space, a control character or a
/// default-ignorable code point (zero-width spaces and joiners, the byte order mark, soft hyphens, variation
/// selectors, Hangul fillers, tags…). Such a message is an empty bubble to its readers, and `str::trim` keeps
/// it. The web app applies the same rule (`isBlankText`, with `\p{Default_Ignorable_Code_Point}`).
pub fn shows_nothing(text: &str) -> bool {
    text.chars().all(|c| c.is_whitespace() || c.is_control() || is_default_ignorable(c))
}

/// Unicode's `Default_Ignorable_Code_Point` (DerivedCoreProperties.txt, as of Unicode 14, when U+180F joined).
fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// The id a client picks for a send so that retrying it is safe: 1 to 64 of `A-Z a-z 0-9 - _` (a UUID fits).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientMessageId(String);

impl ClientMessageId {
    pub fn parse(id: String) -> Result<Self, ApiError> {
        client_chosen_id(id, "clientMessageId").map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id a client picks for a group it creates so that retrying the create is safe; the same rules as a
/// [`ClientMessageId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientGroupId(String);

impl ClientGroupId {
    pub fn parse(id: String) -> Result<Self, ApiError> {
        client_chosen_id(id, "clientGroupId").map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn client_chosen_id(id: String, field: &str) -> Result<String, ApiError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_CLIENT_MESSAGE_ID_CHARS
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(id)
    } else {
        Err(ApiError::validation(format!(
            "{field} must be 1 to {MAX_CLIENT_MESSAGE_ID_CHARS} letters, digits, '-' or '_'"
        )))
    }
}

/// A group's title: 1 to [`MAX_TITLE_CHARS`] characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTitle(String);

impl GroupTitle {
    pub fn parse(title: String) -> Result<Self, ApiError> {
        let title = title.trim();
        if shows_nothing(title) {
            return Err(ApiError::validation("a group title cannot be empty or only spaces and invisible characters"));
        }
        if title.chars().count() > MAX_TITLE_CHARS {
            return Err(ApiError::validation(format!("a group title can be at most {MAX_TITLE_CHARS} characters")));
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
    fn a_body_that_would_show_nothing_is_blank() {
        for blank in
            ["", " ", "\u{200B}", " \u{200B}\n\u{2060}\t", "\u{FEFF}", "\u{AD}", "\u{3164}", "\u{E0041}", "\u{7}"]
        {
            assert!(MessageBody::parse(blank.into()).is_err(), "{blank:?}");
        }
        for shown in ["a\u{200B}", "\u{2764}\u{FE0F}", "\u{1F44D}", ".", "\u{2800}x"] {
            assert!(MessageBody::parse(shown.into()).is_ok(), "{shown:?}");
        }
        assert!(GroupTitle::parse("\u{200B}\u{200D}".into()).is_err());
    }

    #[test]
    fn client_chosen_ids_are_short_and_plain() {
        assert!(ClientMessageId::parse("0b9e7c1e-4c1a-4c39-9d1e-1d1b1a1c1f10".into()).is_ok());
        assert!(ClientMessageId::parse(String::new()).is_err());
        assert!(ClientMessageId::parse("has space".into()).is_err());
        assert!(ClientMessageId::parse("x".repeat(65)).is_err());
        assert!(ClientGroupId::parse("x".repeat(64)).is_ok());
        let refused = ClientGroupId::parse("x".repeat(65)).unwrap_err();
        assert!(refused.message.contains("clientGroupId"), "{refused:?}");
        assert!(ClientGroupId::parse("no/slash".into()).is_err());
        assert!(ClientGroupId::parse(String::new()).is_err());
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
