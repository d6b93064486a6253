//! Event ids arrive from browsers (URL paths), from gRPC subscribers and end up
//! in the media service's URL, so they are checked against one allow-list
//! everywhere, before anything else looks at them.

use crate::allow_listed::{self, Refusal, id_type};
use std::sync::Arc;

/// Longest accepted event id, in bytes.
pub const MAX_LEN: usize = 128;

/// A validated event id: 1 to 128 characters from `[A-Za-z0-9._~-]`, not made
/// only of dots.
///
/// Every allowed character is "unreserved" in URLs, so an `EventId` needs no
/// escaping anywhere. Ids made only of dots are refused although the character
/// class allows them: `.` and `..` are path segments that URL parsers resolve
/// (`/live/..` becomes `/`), which would point the poller at another resource.
/// Cloning is a reference-count bump: ids are map keys on the hot path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Arc<str>);

/// Why a string is not an [`EventId`]. The message is one line, safe to show to
/// the client that sent it (it never echoes the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEventId {
    #[error("event id is empty")]
    Empty,
    #[error("event id is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("event id may only contain A-Z a-z 0-9 . _ ~ -")]
    BadCharacter,
    #[error("event id must not consist only of dots")]
    OnlyDots,
}

impl EventId {
    /// Validates `s` as an event id.
    pub fn parse(s: &str) -> Result<Self, InvalidEventId> {
        allow_listed::check(s, MAX_LEN, false).map_err(|refusal| match refusal {
            Refusal::Empty => InvalidEventId::Empty,
            Refusal::TooLong => InvalidEventId::TooLong,
            Refusal::BadCharacter => InvalidEventId::BadCharacter,
            Refusal::OnlyDots => InvalidEventId::OnlyDots,
        })?;
        Ok(Self(Arc::from(s)))
    }
}

impl std::str::FromStr for EventId {
    type Err = InvalidEventId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

id_type!(EventId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        for ok in ["a", "ev-1", "A.b_c~d-e", "...x", "x..", &"z".repeat(MAX_LEN)] {
            assert_eq!(EventId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_hostile_ids() {
        use InvalidEventId::*;
        let cases: &[(&str, InvalidEventId)] = &[
            ("", Empty),
            (&"z".repeat(MAX_LEN + 1), TooLong),
            (".", OnlyDots),
            ("..", OnlyDots),
            ("....", OnlyDots),
            ("../admin", BadCharacter),
            ("a/b", BadCharacter),
            ("%2e%2e", BadCharacter),
            ("a%2Fb", BadCharacter),
            ("a\nb", BadCharacter),
            ("a\rb", BadCharacter),
            ("a\0b", BadCharacter),
            ("a b", BadCharacter),
            ("a?b=c", BadCharacter),
            ("a#b", BadCharacter),
            ("é", BadCharacter),
            ("a\u{202e}b", BadCharacter),
        ];
        for (input, want) in cases {
            assert_eq!(EventId::parse(input).unwrap_err(), *want, "input {input:?}");
        }
    }

    #[test]
    fn error_messages_are_one_line_and_do_not_echo_input() {
        let err = EventId::parse("bad\nid<script>").unwrap_err().to_string();
        assert!(!err.contains('\n') && !err.contains("script"), "{err}");
    }
}
