//! Values that have already been checked: once a `Username` or a `Password` exists, it is valid.
//!
//! Requests are parsed into these types once, at the edge (the RPC handler); everything behind it — hashing, the
//! store — takes the types, so an unchecked string cannot reach the database by accident. The error messages are
//! written for the person typing, so handlers can pass them through unchanged.

mod password;
mod username;

pub use password::Password;
pub use username::Username;

/// Why a piece of user input was refused. `Display` is user-presentable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("username must be {min} to {max} characters", min = Username::MIN_CHARS, max = Username::MAX_CHARS)]
    UsernameLength,
    #[error("username must not start or end with whitespace")]
    UsernameSurroundingWhitespace,
    #[error("username must start with a letter or digit")]
    UsernameStart,
    #[error("username may contain only letters, digits, '_', '.' and '-'")]
    UsernameCharacters,
    #[error("password must be {min} to {max} characters", min = Password::MIN_CHARS, max = Password::MAX_CHARS)]
    PasswordLength,
}

impl ValidationError {
    /// The request field the error is about, for clients that highlight the offending input.
    pub fn field(self) -> &'static str {
        match self {
            Self::UsernameLength
            | Self::UsernameSurroundingWhitespace
            | Self::UsernameStart
            | Self::UsernameCharacters => "username",
            Self::PasswordLength => "password",
        }
    }
}
