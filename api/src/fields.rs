//! Refusing unknown fields at the edge.
//!
//! The protocol's request types are shared with the services and stay lenient there (a newer gateway may add a
//! field during a rolling upgrade without the older services refusing it). The gateway is where a client's
//! misspelt field must be refused rather than ignored — a `befor=10` that is ignored answers a different
//! question — so it checks the top-level fields of what clients send against the fields each type reads, asked
//! of the type's own derived `Deserialize` (so the lists cannot drift from the types).

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request, rejection::JsonRejection},
    http::request::Parts,
};
use common::protocol::ApiError;
use serde::{
    Deserializer,
    de::{DeserializeOwned, Error as _, Visitor},
    forward_to_deserialize_any,
};
use serde_json::value::RawValue;

use crate::error::{ApiJson, HttpError, detail};

/// The field names a struct's derived `Deserialize` reads (as they appear on the wire), asked of the impl
/// itself; `None` for a type that is not a struct with named fields.
pub fn fields_of<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    let mut fields = None;
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// The first of `keys` that `T` does not read, if any (every key is allowed when `T` is not a plain struct).
pub fn first_unknown<'k, T: DeserializeOwned>(keys: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    let known = fields_of::<T>()?;
    keys.into_iter().find(|key| !known.contains(key))
}

/// The most characters of an unknown field's name quoted back.
const MAX_SHOWN_CHARS: usize = 64;

/// The error for an unknown field, quoting at most [`MAX_SHOWN_CHARS`] of its name.
pub fn unknown_field(field: &str, what: &str) -> ApiError {
    let shown: String = field.chars().take(MAX_SHOWN_CHARS).collect();
    ApiError::bad_request(format!("unknown field {shown:?} in {what}"))
}

/// A deserializer that only records the field list a struct asks for, then stops.
struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(Self::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(Self::Error::custom("fields recorded"))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// A JSON body of `T` with unknown top-level fields refused (`bad_request`), and, when `T` is a struct, any body
/// that is not a JSON object: serde reads a struct from an array too, by position, and a client's
/// `["alice", "secret"]` is a mistake, not a register request. The body is read as `T` from its text (not through
/// a `Value`), so a duplicate field is refused too.
#[derive(Debug)]
pub struct StrictJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJson<T> {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ApiJson(raw) = ApiJson::<Box<RawValue>>::from_request(request, state).await?;
        if fields_of::<T>().is_some() {
            let TopLevel(keys) = serde_json::from_str(raw.get())
                .map_err(|_| HttpError::from(ApiError::bad_request("the body must be a JSON object")))?;
            if let Some(field) = first_unknown::<T>(keys.iter().map(String::as_str)) {
                return Err(unknown_field(field, "the body").into());
            }
        }
        serde_json::from_str(raw.get())
            .map(StrictJson)
            .map_err(|error| ApiError::bad_request(detail(format_args!("invalid body: {error}"))).into())
    }
}

/// The body of a request that takes none (`leave`, removing a member): nothing, or an empty JSON object (some HTTP
/// clients send `{}` with every POST), passes. Anything else is refused (`bad_request`) rather than ignored: a
/// `{"userId": 5}` sent to `leave` by a client that meant to remove user 5 would otherwise make the caller leave.
#[derive(Debug)]
pub struct NoBody;

impl<S: Send + Sync> FromRequest<S> for NoBody {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        // A body that cannot be read is answered as `ApiJson` answers it (too large: 413).
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| HttpError::from(JsonRejection::from(rejection)))?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(NoBody);
        }
        match serde_json::from_slice::<TopLevel>(&body) {
            Ok(TopLevel(keys)) => match keys.first() {
                None => Ok(NoBody),
                Some(field) => Err(unknown_field(field, "the body of a request that takes none").into()),
            },
            Err(_) => Err(ApiError::bad_request("this request takes no body").into()),
        }
    }
}

/// The keys of a JSON object (its values skipped unread); anything else is an error.
struct TopLevel(Vec<String>);

impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = TopLevel;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(TopLevel(keys))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

/// A query string of `T` with unknown parameters refused (`bad_request`).
#[derive(Debug)]
pub struct StrictQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|_| HttpError::from(ApiError::bad_request("the query string is malformed")))?;
        if let Some(field) = first_unknown::<T>(pairs.iter().map(|(key, _)| key.as_str())) {
            return Err(unknown_field(field, "the query").into());
        }
        let crate::error::ApiQuery(query) = crate::error::ApiQuery::<T>::from_request_parts(parts, state).await?;
        Ok(StrictQuery(query))
    }
}

#[cfg(test)]
mod tests {
    use common::protocol::messages::{GetMessagesRequest, SyncRequest};

    use super::*;

    #[test]
    fn a_struct_names_its_fields_as_they_appear_on_the_wire() {
        assert_eq!(
            fields_of::<GetMessagesRequest>(),
            Some(&["conversationId", "before", "after", "around", "limit"][..])
        );
        assert_eq!(fields_of::<SyncRequest>(), Some(&["heads"][..]));
        assert_eq!(fields_of::<Vec<i64>>(), None);
    }

    #[test]
    fn the_first_unknown_key_is_named_and_other_types_allow_anything() {
        assert_eq!(first_unknown::<SyncRequest>(["heads", "befor", "x"]), Some("befor"));
        assert_eq!(first_unknown::<SyncRequest>(["heads"]), None);
        assert_eq!(first_unknown::<Vec<i64>>(["anything"]), None);
    }
}
