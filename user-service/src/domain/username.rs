//! `Username`: the name people find each other by.
//!
//! Deliberately a small ASCII alphabet: it keeps names unambiguous on screen (no homoglyphs, no invisible
//! characters), makes case-insensitive uniqueness the same in Rust and in PostgreSQL's `lower()`, and lets the
//! prefix search escape only `_` in practice. The database repeats the rule as a CHECK constraint.

use std::fmt;

use super::ValidationError;

/// A valid username: 3 to 32 characters from `[A-Za-z0-9_.-]`, starting with a letter or digit.
///
/// Case is preserved for display; uniqueness and lookup are case-insensitive (enforced by the database).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub const MIN_CHARS: usize = 3;
    pub const MAX_CHARS: usize = 32;

    /// Parses user input; never trims — a name with surrounding whitespace is refused, not silently changed.
    pub fn parse(input: impl Into<String>) -> Result<Self, ValidationError> {
        let input = input.into();
        let chars = input.chars().count();
        if !(Self::MIN_CHARS..=Self::MAX_CHARS).contains(&chars) {
            return Err(ValidationError::UsernameLength);
        }
        if input.starts_with(char::is_whitespace) || input.ends_with(char::is_whitespace) {
            return Err(ValidationError::UsernameSurroundingWhitespace);
        }
        if !input.chars().all(Self::is_allowed_char) {
            return Err(ValidationError::UsernameCharacters);
        }
        if !input.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(ValidationError::UsernameStart);
        }
        Ok(Self(input))
    }

    /// Whether `c` may appear anywhere in a username. The store uses it to short-circuit prefix searches that no
    /// username can match.
    pub fn is_allowed_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl AsRef<str> for Username {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Username {
    type Error = ValidationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_accepted_with_their_case_preserved() {
        for name in ["bob", "Alice", "a.b-c_d", "007", "x".repeat(32).as_str()] {
            assert_eq!(Username::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn names_shorter_than_three_characters_are_refused() {
        for name in ["", "a", "ab"] {
            assert_eq!(Username::parse(name), Err(ValidationError::UsernameLength), "{name:?}");
        }
    }

    #[test]
    fn names_longer_than_thirty_two_characters_are_refused() {
        assert_eq!(Username::parse("x".repeat(33)), Err(ValidationError::UsernameLength));
    }

    #[test]
    fn length_is_counted_in_characters_not_bytes() {
        // Three characters, six bytes: the length rule passes, the alphabet rule is what refuses it.
        assert_eq!(Username::parse("ééé"), Err(ValidationError::UsernameCharacters));
    }

    #[test]
    fn surrounding_whitespace_is_refused_not_trimmed() {
        for name in [" bob", "bob ", "\tbob", "bob\n"] {
            assert_eq!(Username::parse(name), Err(ValidationError::UsernameSurroundingWhitespace), "{name:?}");
        }
    }

    #[test]
    fn characters_outside_the_alphabet_are_refused() {
        for name in ["bo b", "bob!", "b%b", "bob\\", "ünï", "bob\u{200b}x", "b\0b"] {
            assert_eq!(Username::parse(name), Err(ValidationError::UsernameCharacters), "{name:?}");
        }
    }

    #[test]
    fn names_must_start_with_a_letter_or_digit() {
        for name in ["_bob", ".bob", "-bob"] {
            assert_eq!(Username::parse(name), Err(ValidationError::UsernameStart), "{name:?}");
        }
    }

    #[test]
    fn error_messages_are_presentable() {
        assert_eq!(ValidationError::UsernameLength.to_string(), "username must be 3 to 32 characters");
        assert_eq!(ValidationError::UsernameLength.field(), "username");
    }
}
