//! The user store: every SQL statement user-service runs against `users.users`.
//!
//! The database, not the code, is what makes usernames unique (a unique index on `lower(username)`): two replicas
//! registering "Bob" and "bob" at the same moment cannot both succeed, and the loser gets
//! [`StoreError::UsernameTaken`], never the database's own message. Listing pages by id (`id > after`), never by
//! OFFSET, so a page costs the same however deep it is and concurrent registrations cannot shift a page under the
//! reader. Every statement is bounded: lookups hit a unique key, lists are clamped to [`MAX_PAGE_SIZE`].
//!
//! Password hashes come out only through [`Credentials`], which login uses; [`UserRecord`], the type everything
//! else sees, has no hash field at all.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::domain::Username;
use crate::password::PasswordHash;

/// Largest page [`UserStore::list`] returns; larger requests are clamped.
pub const MAX_PAGE_SIZE: u32 = 100;

/// The unique index behind case-insensitive usernames (see the migrations).
const USERNAME_UNIQUE_INDEX: &str = "users_username_lower_key";

/// SQLSTATE `unique_violation`.
const UNIQUE_VIOLATION: &str = "23505";

/// A user as the rest of the system sees it. Deliberately has no password hash.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UserRecord {
    pub id: i64,
    /// As registered (case preserved).
    pub username: String,
    pub created_at: DateTime<Utc>,
}

/// A page of [`UserStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub users: Vec<UserRecord>,
    /// Whether more users follow the last of `users`.
    pub more: bool,
}

/// What login needs to check a password. Keep it inside the login path; `Debug` redacts the hash.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub id: i64,
    pub username: String,
    pub password_hash: PasswordHash,
}

#[derive(sqlx::FromRow)]
struct CredentialsRow {
    id: i64,
    username: String,
    password_hash: String,
}

impl From<CredentialsRow> for Credentials {
    fn from(row: CredentialsRow) -> Self {
        Self { id: row.id, username: row.username, password_hash: PasswordHash::from_stored(row.password_hash) }
    }
}

/// Why a store operation failed. Only `UsernameTaken` is an expected outcome; `Database` is an outage or a bug and
/// its `Display` names the operation, not the SQL or the database's message (those stay in `source()` for logs).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("username is already taken")]
    UsernameTaken,
    /// More ids than [`MAX_PAGE_SIZE`] in one [`UserStore::find_by_ids`]; callers should validate first.
    #[error("at most {max} ids can be looked up at once")]
    TooManyIds { max: u32 },
    #[error("database error while {context}")]
    Database {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

trait ResultExt<T> {
    /// Attaches what we were doing to a database error.
    fn context(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> ResultExt<T> for Result<T, sqlx::Error> {
    fn context(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Database { context, source })
    }
}

/// Access to `users.users`. Cheap to clone (it clones the pool handle).
#[derive(Debug, Clone)]
pub struct UserStore {
    pool: PgPool,
}

impl UserStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Registers a user. A name equal to an existing one ignoring case is [`StoreError::UsernameTaken`].
    pub async fn create(&self, username: &Username, password_hash: &PasswordHash) -> Result<UserRecord, StoreError> {
        sqlx::query_as::<_, UserRecord>(
            "INSERT INTO users.users (username, password_hash) VALUES ($1, $2) \
             RETURNING id, username, created_at",
        )
        .bind(username.as_str())
        .bind(password_hash.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(|error| {
            if is_username_conflict(&error) {
                StoreError::UsernameTaken
            } else {
                StoreError::Database { context: "inserting a user", source: error }
            }
        })
    }

    /// Looks a user up by name, ignoring case.
    pub async fn find_by_username(&self, username: &Username) -> Result<Option<UserRecord>, StoreError> {
        sqlx::query_as::<_, UserRecord>(
            "SELECT id, username, created_at FROM users.users WHERE lower(username) = lower($1)",
        )
        .bind(username.as_str())
        .fetch_optional(&self.pool)
        .await
        .context("finding a user by name")
    }

    pub async fn find_by_id(&self, id: i64) -> Result<Option<UserRecord>, StoreError> {
        sqlx::query_as::<_, UserRecord>("SELECT id, username, created_at FROM users.users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .context("finding a user by id")
    }

    /// The users among `ids` that exist, in id order; unknown ids are left out, duplicates count once. At most
    /// [`MAX_PAGE_SIZE`] ids per call, so the statement stays bounded.
    pub async fn find_by_ids(&self, ids: &[i64]) -> Result<Vec<UserRecord>, StoreError> {
        if ids.len() > MAX_PAGE_SIZE as usize {
            return Err(StoreError::TooManyIds { max: MAX_PAGE_SIZE });
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_as::<_, UserRecord>(
            "SELECT id, username, created_at FROM users.users WHERE id = ANY($1) ORDER BY id",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .context("finding users by id")
    }

    /// Closes the pool, waiting for checked-out connections to come back; part of a graceful shutdown.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The id, name and hash login checks a password against, looked up by name ignoring case.
    ///
    /// `None` must still cost a password verification (see [`crate::password::PasswordHasher::verify`]).
    pub async fn find_credentials(&self, username: &Username) -> Result<Option<Credentials>, StoreError> {
        sqlx::query_as::<_, CredentialsRow>(
            "SELECT id, username, password_hash FROM users.users WHERE lower(username) = lower($1)",
        )
        .bind(username.as_str())
        .fetch_optional(&self.pool)
        .await
        .map(|row| row.map(Credentials::from))
        .context("finding credentials by name")
    }

    /// One page of users in id order: those with `id > after_id` (all, when `None`), optionally only names starting
    /// with `prefix` ignoring case. `limit` is clamped to `1..=MAX_PAGE_SIZE`. The next page starts after the last
    /// id returned; [`Listed::more`] says whether there is one (one row more is read to know, so an exactly full
    /// last page is not followed by an empty one).
    pub async fn list(&self, after_id: Option<i64>, prefix: Option<&str>, limit: u32) -> Result<Listed, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE_SIZE) as usize;
        let mut users = self.list_rows(after_id.unwrap_or(0), prefix, limit as i64 + 1).await?;
        let more = users.len() > limit;
        users.truncate(limit);
        Ok(Listed { users, more })
    }

    /// Up to `rows` users after `after_id` (identity ids start at 1, so 0 is "from the beginning").
    async fn list_rows(&self, after_id: i64, prefix: Option<&str>, rows: i64) -> Result<Vec<UserRecord>, StoreError> {
        let Some(prefix) = prefix.filter(|p| !p.is_empty()) else {
            return sqlx::query_as::<_, UserRecord>(
                "SELECT id, username, created_at FROM users.users WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after_id)
            .bind(rows)
            .fetch_all(&self.pool)
            .await
            .context("listing users");
        };

        // A character no username may contain cannot begin any username: answer without a query. This also keeps
        // the bounds below plain ASCII.
        if !prefix.chars().all(Username::is_allowed_char) {
            return Ok(Vec::new());
        }
        let lower = prefix.to_ascii_lowercase();
        let pattern = format!("{}%", escape_like(&lower));
        let upper = prefix_upper_bound(&lower);

        // `LIKE` is the filter. The two bounds say the same thing in a form the `text_pattern_ops` index can use even
        // in a generic (parameterised, cached) plan; PostgreSQL derives such bounds from LIKE only for a constant.
        sqlx::query_as::<_, UserRecord>(
            "SELECT id, username, created_at FROM users.users \
             WHERE id > $1 \
               AND lower(username) LIKE $2 ESCAPE '\\' \
               AND lower(username) ~>=~ $3 AND lower(username) ~<~ $4 \
             ORDER BY id LIMIT $5",
        )
        .bind(after_id)
        .bind(pattern)
        .bind(&lower)
        .bind(upper)
        .bind(rows)
        .fetch_all(&self.pool)
        .await
        .context("searching users by name prefix")
    }
}

fn is_username_conflict(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Database(db)
            if db.code().as_deref() == Some(UNIQUE_VIOLATION) && db.constraint() == Some(USERNAME_UNIQUE_INDEX)
    )
}

/// Escapes LIKE's wildcards (`%`, `_`) and its escape character (`\`) so `input` matches only itself.
fn escape_like(input: &str) -> String {
    let mut escaped = String::with_capacity(input.len());
    for c in input.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The smallest string greater than every string that starts with `prefix`, in bytewise order: `prefix` with its
/// last character incremented. `prefix` is non-empty ASCII from the username alphabet (at most `z`), so the
/// increment stays ASCII.
fn prefix_upper_bound(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    if let Some(last) = bytes.last_mut() {
        *last = last.saturating_add(1);
    }
    // Incrementing an ASCII byte below 0x7F yields ASCII, hence valid UTF-8; the fallback is unreachable.
    String::from_utf8(bytes).unwrap_or_else(|_| prefix.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_and_the_escape_character_are_escaped() {
        assert_eq!(escape_like(r"a%b_c\d"), r"a\%b\_c\\d");
        assert_eq!(escape_like("plain.name-1"), "plain.name-1");
    }

    #[test]
    fn the_upper_bound_is_the_prefix_with_its_last_character_incremented() {
        assert_eq!(prefix_upper_bound("abc"), "abd");
        assert_eq!(prefix_upper_bound("z"), "{");
        assert_eq!(prefix_upper_bound("a_"), "a`");
    }
}
