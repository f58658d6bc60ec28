//! Reading client frames, so that every mistake gets an answer the client can match to its request.
//!
//! A frame is parsed as a plain JSON value first: that recovers the `id` (when it is a sane string) and the
//! `type` even when the rest is wrong, so the error frame names the request it answers. Only then is it read as
//! a [`ClientFrame`]. None of the client's text is logged.

use common::protocol::{
    ApiError,
    ws::{ClientFrame, MAX_REQUEST_ID_CHARS, ServerFrame},
};
use serde_json::Value;

/// Every `type` a client may send, as [`ClientFrame`] spells it (a test keeps the two in step).
pub const CLIENT_FRAME_TYPES: &[&str] = &[
    "auth",
    "ping",
    "sendMessage",
    "getMessages",
    "getUsers",
    "getSelf",
    "createGroup",
    "addMembers",
    "removeMember",
    "leaveConversation",
    "getConversation",
    "listConversations",
    "markRead",
    "sync",
];

/// Longest part of a serde message echoed back (it may quote the client's own values).
const MAX_DETAIL_CHARS: usize = 200;

/// A frame that could not be read: the error to send back, naming the request when its id was readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub id: Option<String>,
    pub error: ApiError,
}

impl From<Rejected> for ServerFrame {
    fn from(Rejected { id, error }: Rejected) -> Self {
        ServerFrame::Error { id, error }
    }
}

/// Reads one text frame. `Err` is answered with an error frame; the connection stays open.
pub fn parse(text: &str) -> Result<ClientFrame, Rejected> {
    let value: Value =
        serde_json::from_str(text).map_err(|_| error(None, ApiError::bad_request("the frame is not valid JSON")))?;
    let Value::Object(fields) = &value else {
        return Err(error(None, ApiError::bad_request("the frame must be a JSON object")));
    };
    let id = match fields.get("id") {
        None => None,
        Some(Value::String(id)) if id.is_empty() || id.chars().count() > MAX_REQUEST_ID_CHARS => {
            return Err(error(
                None,
                ApiError::bad_request(format!("id must be 1 to {MAX_REQUEST_ID_CHARS} characters")),
            ));
        }
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return Err(error(None, ApiError::bad_request("id must be a string"))),
    };
    let kind = match fields.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(error(id, ApiError::bad_request("type must be a string"))),
        None => return Err(error(id, ApiError::bad_request("the frame has no type"))),
    };
    if !CLIENT_FRAME_TYPES.contains(&kind) {
        let shown: String = kind.chars().take(MAX_REQUEST_ID_CHARS).collect();
        return Err(error(id, ApiError::bad_request(format!("unknown frame type {shown:?}"))));
    }
    let kind = kind.to_owned();
    serde_json::from_value(value).map_err(|e| {
        let detail: String = e.to_string().chars().take(MAX_DETAIL_CHARS).collect();
        error(id, ApiError::bad_request(format!("invalid {kind} frame: {detail}")))
    })
}

fn error(id: Option<String>, error: ApiError) -> Rejected {
    Rejected { id, error }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use common::protocol::ErrorCode;

    use super::*;

    fn rejected(text: &str) -> (Option<String>, ApiError) {
        match parse(text) {
            Err(Rejected { id, error }) => (id, error),
            Ok(frame) => panic!("expected a rejection, got {frame:?}"),
        }
    }

    #[test]
    fn the_list_of_frame_types_matches_the_protocol() {
        // serde names every variant when it meets an unknown one.
        let message = serde_json::from_str::<ClientFrame>(r#"{"type":"?"}"#).unwrap_err().to_string();
        let expected: BTreeSet<&str> = message.split('`').skip(3).step_by(2).collect();
        assert_eq!(expected, CLIENT_FRAME_TYPES.iter().copied().collect(), "{message}");
    }

    #[test]
    fn a_valid_frame_parses() {
        let frame = parse(r#"{"type":"getSelf","id":"r1"}"#).unwrap();
        assert_eq!(frame, ClientFrame::GetSelf { id: "r1".into() });
    }

    #[test]
    fn garbage_gets_an_error_without_an_id() {
        for text in ["not json", "[1,2]", "\"auth\"", "{"] {
            let (id, error) = rejected(text);
            assert_eq!((id, error.code), (None, ErrorCode::BadRequest), "{text}");
        }
    }

    #[test]
    fn an_unknown_type_is_named_and_the_id_kept() {
        let (id, error) = rejected(r#"{"type":"launchMissiles","id":"r2"}"#);
        assert_eq!(id.as_deref(), Some("r2"));
        assert!(error.message.contains("launchMissiles"), "{}", error.message);
    }

    #[test]
    fn missing_and_mistyped_fields_name_the_request_and_the_field() {
        let (id, error) = rejected(r#"{"type":"markRead","id":"r3","conversationId":1}"#);
        assert_eq!(id.as_deref(), Some("r3"));
        assert!(error.message.contains("seq"), "{}", error.message);
        let (id, error) = rejected(r#"{"type":"markRead","id":"r4","conversationId":"one","seq":1}"#);
        assert_eq!((id.as_deref(), error.code), (Some("r4"), ErrorCode::BadRequest));
    }

    #[test]
    fn ids_must_be_short_non_empty_strings() {
        let long = format!(r#"{{"type":"getSelf","id":"{}"}}"#, "x".repeat(MAX_REQUEST_ID_CHARS + 1));
        assert_eq!(rejected(&long).0, None);
        assert_eq!(rejected(r#"{"type":"getSelf","id":""}"#).0, None);
        assert_eq!(rejected(r#"{"type":"getSelf","id":7}"#).0, None);
        let longest = format!(r#"{{"type":"getSelf","id":"{}"}}"#, "é".repeat(MAX_REQUEST_ID_CHARS));
        assert!(parse(&longest).is_ok());
    }
}
