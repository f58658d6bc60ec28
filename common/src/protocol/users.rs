//! The user-service's operations: `register`, `login`, `refreshToken`, `getUsers`, `getSelf`, `resolveUsers`.
//!
//! Requests carry raw strings: the user-service parses them into its domain types (`Username`, `Password`) and
//! answers `validation` when a rule is broken, so the rules live in one place.

use serde::{Deserialize, Serialize};
use ts_rs::TS;

use crate::operation;

/// A user as other users see it. Never carries the password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct User {
    pub id: i64,
    pub username: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[ts(export)]
pub struct RegisterRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[ts(export)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// The answer to `register`, `login` and `refreshToken`: the user and a bearer token for every later request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct AuthResponse {
    pub user: User,
    pub token: String,
    /// When the token was signed, in milliseconds since the Unix epoch (by the server's clock, like `expiresAt`).
    /// Clients refresh a token once half of its life is gone. (Read as 0 from a user-service of the release before
    /// refreshing, which did not send it, so that a rolling upgrade keeps sign-in working.)
    #[serde(default)]
    pub issued_at: i64,
    /// When the token stops being accepted, in milliseconds since the Unix epoch.
    pub expires_at: i64,
}

/// Sent by the gateway for a caller whose token it verified: a new token for the same session. A session is
/// what one sign-in (`register` or `login`) began; refreshing keeps it going up to the user-service's
/// `WARREN_SESSION_MAX_AGE_SECS`, then the user signs in again. The token itself travels, and the user-service
/// verifies it again: it mints tokens only for a token it signed, so whoever can publish on the broker (a
/// compromised gateway) cannot make one for any user it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshTokenRequest {
    pub token: String,
}

/// One page of users, ordered by id. `after` is the last id of the previous page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct GetUsersRequest {
    #[serde(default)]
    #[ts(optional)]
    pub after: Option<i64>,
    /// Case-insensitive username prefix.
    #[serde(default)]
    #[ts(optional)]
    pub prefix: Option<String>,
    #[serde(default)]
    #[ts(optional)]
    pub limit: Option<u32>,
    /// Look these users up instead (at most `MAX_USERS_PAGE`, each positive; unknown ids are left out; not with
    /// `after`, `prefix` or `limit`). In a query string: `ids=1,2,3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional, as = "Option<Vec<i64>>")]
    pub ids: Option<UserIds>,
}

/// User ids read from a JSON array (WebSocket frames, RPC) or a comma-separated string (REST query strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct UserIds(pub Vec<i64>);

impl<'de> Deserialize<'de> for UserIds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Ids {
            List(Vec<i64>),
            Text(String),
        }
        match Ids::deserialize(deserializer)? {
            Ids::List(ids) => Ok(UserIds(ids)),
            Ids::Text(text) => text
                .split(',')
                .filter(|part| !part.trim().is_empty())
                .map(|part| part.trim().parse::<i64>().map_err(|_| serde::de::Error::custom("ids must be numbers")))
                .collect::<Result<Vec<_>, _>>()
                .map(UserIds),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
#[ts(export)]
pub struct UsersPage {
    pub users: Vec<User>,
    /// Pass as `after` for the next page; absent on the last page.
    #[ts(optional)]
    pub next: Option<i64>,
}

/// Sent by the gateway on behalf of an authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetSelfRequest {
    pub user_id: i64,
}

/// Looks up several users by id at once (the message-service's member lists name users by id only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolveUsersRequest {
    pub ids: Vec<i64>,
}

/// Most users a page or a `resolveUsers` call returns.
pub const MAX_USERS_PAGE: u32 = 100;

operation!(Register, "register", RegisterRequest => AuthResponse);
operation!(Login, "login", LoginRequest => AuthResponse);
operation!(GetUsers, "getUsers", GetUsersRequest => UsersPage);
operation!(GetSelf, "getSelf", GetSelfRequest => User);
operation!(RefreshToken, "refreshToken", RefreshTokenRequest => AuthResponse);
operation!(ResolveUsers, "resolveUsers", ResolveUsersRequest => Vec<User>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sign_in_answer_from_the_release_before_refreshing_still_reads() {
        let old = r#"{"user":{"id":1,"username":"ann","createdAt":0},"token":"t","expiresAt":86400000}"#;
        let read: AuthResponse = serde_json::from_str(old).unwrap();
        assert_eq!((read.issued_at, read.expires_at), (0, 86_400_000));
    }

    #[test]
    fn ids_read_from_a_list_or_a_comma_separated_string() {
        let list: GetUsersRequest = serde_json::from_str(r#"{"ids":[3,1]}"#).unwrap();
        let text: GetUsersRequest = serde_json::from_str(r#"{"ids":"3, 1"}"#).unwrap();
        assert_eq!(list.ids, Some(UserIds(vec![3, 1])));
        assert_eq!(text.ids, Some(UserIds(vec![3, 1])));
        assert!(serde_json::from_str::<GetUsersRequest>(r#"{"ids":"3,x"}"#).is_err());
        assert_eq!(serde_json::from_str::<GetUsersRequest>("{}").unwrap().ids, None);
    }
}
