//! `Password`: a secret that must never be printed.
//!
//! Only length is checked (NIST SP 800-63B: length beats composition rules). The upper bound keeps one hash's
//! input small. `Debug` is redacted and there is no `Display`, `Serialize` or `Clone`, so a password cannot end up
//! in a log line or a response by accident; the raw value is reachable only through [`Password::expose`].

use std::fmt;

use super::ValidationError;

/// A password of 8 to 128 characters (Unicode scalar values, not bytes). Stored as given: no trimming or
/// normalisation, because whatever the user typed is what they will type next time.
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_CHARS: usize = 128;

    pub fn parse(input: impl Into<String>) -> Result<Self, ValidationError> {
        let input = input.into();
        if !(Self::MIN_CHARS..=Self::MAX_CHARS).contains(&input.chars().count()) {
            return Err(ValidationError::PasswordLength);
        }
        Ok(Self(input))
    }

    /// The secret itself, for the password hasher only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_of_eight_to_one_hundred_twenty_eight_characters_are_accepted() {
        for len in [8, 64, 128] {
            assert_eq!(Password::parse("p".repeat(len)).unwrap().expose().len(), len);
        }
    }

    #[test]
    fn short_and_long_passwords_are_refused() {
        for len in [0, 7, 129] {
            assert_eq!(Password::parse("p".repeat(len)).err(), Some(ValidationError::PasswordLength), "{len}");
        }
    }

    #[test]
    fn length_is_counted_in_characters_not_bytes() {
        // 128 characters but 256 bytes: accepted. 7 characters but 14 bytes: refused.
        assert!(Password::parse("é".repeat(128)).is_ok());
        assert_eq!(Password::parse("é".repeat(7)).err(), Some(ValidationError::PasswordLength));
    }

    #[test]
    fn whitespace_is_kept_as_typed() {
        assert_eq!(Password::parse("  spaced out  ").unwrap().expose(), "  spaced out  ");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let printed = format!("{:?}", Password::parse("hunter2hunter2").unwrap());

        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn error_messages_are_presentable() {
        assert_eq!(ValidationError::PasswordLength.to_string(), "password must be 8 to 128 characters");
        assert_eq!(ValidationError::PasswordLength.field(), "password");
    }
}
