//! Reading client frames, so that every mistake gets an answer the client can match to its request.
//!
//! A frame is parsed as a plain JSON value first: that recovers the `id` (when it is a sane string) and the
//! `type` even when the rest is wrong, so the error frame names the request it answers. Then its fields are
//! checked against the ones its type reads — serde cannot refuse unknown fields of a request flattened into a
//! tagged frame, and a misspelt `befor` would otherwise be ignored and the newest page returned — and only then is
//! it read as a [`ClientFrame`]. None of the client's text is logged.

use std::{collections::HashMap, sync::LazyLock};

use common::protocol::{
    ApiError,
    messages::{
        AddMembersRequest, CreateGroupRequest, GetConversationRequest, GetMessagesRequest, LeaveConversationRequest,
        ListConversationsRequest, MarkReadRequest, RemoveMemberRequest, SendMessageRequest, SyncRequest,
    },
    users::GetUsersRequest,
    ws::{ClientFrame, MAX_REQUEST_ID_CHARS, ServerFrame},
};
use serde_json::Value;

use crate::error::detail;

/// Every `type` a client may send, as [`ClientFrame`] spells it (a test keeps the two in step).
pub const CLIENT_FRAME_TYPES: &[&str] = &[
    "auth",
    "ping",
    "sendMessage",
    "getMessages",
    "getUsers",
    "getSelf",
    "refreshToken",
    "createGroup",
    "addMembers",
    "removeMember",
    "leaveConversation",
    "getConversation",
    "listConversations",
    "markRead",
    "sync",
];

/// The fields each frame type may carry: `type`, `id` and its request's own fields, read from the request type's
/// `Deserialize` (so they cannot drift from it). `auth` carries a token and, if the client likes, an id.
static FIELDS: LazyLock<HashMap<&'static str, Vec<&'static str>>> = LazyLock::new(|| {
    let with = |request: &[&'static str]| [&["type", "id"][..], request].concat();
    HashMap::from([
        ("auth", with(&["token"])),
        ("ping", with(&[])),
        ("sendMessage", with(request_fields::<SendMessageRequest>())),
        ("getMessages", with(request_fields::<GetMessagesRequest>())),
        ("getUsers", with(request_fields::<GetUsersRequest>())),
        ("getSelf", with(&[])),
        ("refreshToken", with(&[])),
        ("createGroup", with(request_fields::<CreateGroupRequest>())),
        ("addMembers", with(request_fields::<AddMembersRequest>())),
        ("removeMember", with(request_fields::<RemoveMemberRequest>())),
        ("leaveConversation", with(request_fields::<LeaveConversationRequest>())),
        ("getConversation", with(request_fields::<GetConversationRequest>())),
        ("listConversations", with(request_fields::<ListConversationsRequest>())),
        ("markRead", with(request_fields::<MarkReadRequest>())),
        ("sync", with(request_fields::<SyncRequest>())),
    ])
});

/// The fields of a request type flattened into its frame.
fn request_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    crate::fields::fields_of::<T>().unwrap_or_default()
}

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
    let UniqueKeys(value) = serde_json::from_str(text).map_err(|e| {
        let detail = detail(&e);
        // `Data` is the one error of ours: a key given twice (valid JSON, but which one did the client mean?).
        let what = if e.is_data() { "the frame is not a valid request" } else { "the frame is not valid JSON" };
        error(id_of_unreadable(text), ApiError::bad_request(format!("{what}: {detail}")))
    })?;
    let Value::Object(fields) = &value else {
        return Err(error(None, ApiError::bad_request("the frame must be a JSON object")));
    };
    let id = sane_id(fields)?;
    let kind = match fields.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(error(id, ApiError::bad_request("type must be a string"))),
        None => return Err(error(id, ApiError::bad_request("the frame has no type"))),
    };
    if !CLIENT_FRAME_TYPES.contains(&kind) {
        let shown: String = kind.chars().take(MAX_REQUEST_ID_CHARS).collect();
        return Err(error(id, ApiError::bad_request(format!("unknown frame type {shown:?}"))));
    }
    if let Some(allowed) = FIELDS.get(kind)
        && let Some(unknown) = fields.keys().find(|field| !allowed.contains(&field.as_str()))
    {
        return Err(error(id, crate::fields::unknown_field(unknown, &format!("a {kind} frame"))));
    }
    let kind = kind.to_owned();
    serde_json::from_value(value).map_err(|e| {
        let detail = detail(&e);
        error(id, ApiError::bad_request(format!("invalid {kind} frame: {detail}")))
    })
}

/// A JSON value read as `serde_json::Value` reads it, except that an object with a key given twice, at any depth,
/// is an error: `Value` keeps the last, so `{"body":"yes","body":"no"}` would be stored as "no" while a client (or
/// a proxy that checks frames) reading it first-wins saw "yes". REST bodies are refused the same way
/// (`crate::fields::StrictJson`).
struct UniqueKeys(Value);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueKeys(value) = map.next_value()?;
            if fields.contains_key(&key) {
                let shown: String = key.chars().take(MAX_REQUEST_ID_CHARS).collect();
                return Err(serde::de::Error::custom(format_args!("the field {shown:?} is given twice")));
            }
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

/// The frame's `id`, if it has one that can name the request in an answer.
fn sane_id(fields: &serde_json::Map<String, Value>) -> Result<Option<String>, Rejected> {
    match fields.get("id") {
        None => Ok(None),
        Some(Value::String(id)) if !usable_id(id) => {
            Err(error(None, ApiError::bad_request(format!("id must be 1 to {MAX_REQUEST_ID_CHARS} characters"))))
        }
        Some(Value::String(id)) => Ok(Some(id.clone())),
        Some(_) => Err(error(None, ApiError::bad_request("id must be a string"))),
    }
}

/// The `id` of a frame that is not valid JSON as a whole, when the id itself can still be read. The common case:
/// a string cut inside a character outside the BMP leaves a lone surrogate escape (`"\ud83d"`, which is what
/// JavaScript's `JSON.stringify` writes for half an emoji); serde_json refuses it in a string it reads, but not in
/// one it skips, so reading only the id names the request, and its client is not left waiting for an answer.
fn id_of_unreadable(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    let id = serde_json::from_str::<IdOnly>(text).ok()?.id?;
    usable_id(&id).then_some(id)
}

/// Whether an id can name its request in an answer: 1 to [`MAX_REQUEST_ID_CHARS`] characters.
fn usable_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= MAX_REQUEST_ID_CHARS
}

/// The `id` of a frame that parsed (for answering one the connection refuses, such as a second `auth`).
pub fn request_id(text: &str) -> Option<String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(fields)) => sane_id(&fields).ok().flatten(),
        _ => None,
    }
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
    fn a_frame_with_a_lone_surrogate_is_refused_naming_its_request() {
        let (id, error) = rejected(
            r#"{"type":"sendMessage","id":"s1","conversationId":1,"clientMessageId":"c","body":"hello \ud83d"}"#,
        );
        assert_eq!(id.as_deref(), Some("s1"));
        assert_eq!(error.code, ErrorCode::BadRequest);
        assert!(error.message.starts_with("the frame is not valid JSON: "), "{}", error.message);

        assert_eq!(rejected(r#"{"type":"ping","id":"\ud83d"}"#).0, None, "an unreadable id names nothing");
        assert_eq!(rejected(r#"{"type":"ping","id":"p1""#).0, None, "nor does a frame cut short");
    }

    #[test]
    fn the_list_of_frame_types_matches_the_protocol() {
        // serde names every variant when it meets an unknown one.
        let message = serde_json::from_str::<ClientFrame>(r#"{"type":"?"}"#).unwrap_err().to_string();
        let expected: BTreeSet<&str> = message.split('`').skip(3).step_by(2).collect();
        assert_eq!(expected, CLIENT_FRAME_TYPES.iter().copied().collect(), "{message}");
    }

    #[test]
    fn every_frame_type_has_its_field_list_read_from_its_request() {
        for kind in CLIENT_FRAME_TYPES {
            assert!(FIELDS.contains_key(kind), "{kind} has no field list");
        }
        assert_eq!(FIELDS.len(), CLIENT_FRAME_TYPES.len());
        assert_eq!(FIELDS["markRead"], ["type", "id", "conversationId", "seq"]);
        assert_eq!(FIELDS["getMessages"], ["type", "id", "conversationId", "before", "after", "around", "limit"]);
    }

    #[test]
    fn an_unknown_field_is_refused_naming_the_request_and_the_field() {
        let (id, error) = rejected(r#"{"type":"getMessages","id":"r5","conversationId":1,"befor":10}"#);
        assert_eq!((id.as_deref(), error.code), (Some("r5"), ErrorCode::BadRequest));
        assert!(error.message.contains("befor"), "{}", error.message);
        let (id, _) = rejected(r#"{"type":"getSelf","id":"r6","extra":null}"#);
        assert_eq!(id.as_deref(), Some("r6"));
        // Every field the request knows is accepted, optional ones as null too.
        let all =
            r#"{"type":"getMessages","id":"r7","conversationId":1,"before":null,"after":null,"around":9,"limit":5}"#;
        assert!(parse(all).is_ok());
        assert!(parse(r#"{"type":"auth","id":"a1","token":"t"}"#).is_ok());
    }

    #[test]
    fn a_field_given_twice_is_refused_naming_the_request() {
        let (id, error) = rejected(
            r#"{"type":"sendMessage","id":"s2","conversationId":1,"clientMessageId":"c","body":"a","body":"b"}"#,
        );
        assert_eq!((id.as_deref(), error.code), (Some("s2"), ErrorCode::BadRequest));
        assert!(error.message.contains(r#"the field "body" is given twice"#), "{}", error.message);
        // At any depth: a head with two seqs is as ambiguous as a frame with two bodies.
        let (id, error) = rejected(r#"{"type":"sync","id":"s3","heads":[{"conversationId":1,"seq":2,"seq":9}]}"#);
        assert_eq!(id.as_deref(), Some("s3"));
        assert!(error.message.contains(r#""seq""#), "{}", error.message);
        // Two ids name no request.
        assert_eq!(rejected(r#"{"type":"getSelf","id":"a","id":"b"}"#).0, None);
        // The same key in two different objects is no duplicate.
        let sync = r#"{"type":"sync","id":"s4","heads":[{"conversationId":1,"seq":2},{"conversationId":3,"seq":4}]}"#;
        assert!(parse(sync).is_ok());
    }

    #[test]
    fn values_read_as_serde_json_reads_them() {
        let text = r#"{"a":[1,-2,3.5,18446744073709551615,true,null,"x\u00e9",{"b":{}}],"c":[]}"#;
        let UniqueKeys(value) = serde_json::from_str(text).unwrap();
        assert_eq!(value, serde_json::from_str::<Value>(text).unwrap());
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
