//! Viewer ids (`?vid=`) come from browsers and travel to the poller and the
//! media service, so they are allow-listed like event ids.

use crate::allow_listed::{self, Refusal, id_type};
use std::sync::Arc;

/// Longest accepted viewer id, in bytes.
pub const MAX_LEN: usize = 64;

// Declared like `EventId` (event_id.rs) on purpose: the checks are shared
// (`allow_listed`), but each kind keeps its own type and error, whose
// messages name the kind.
/// A validated viewer id: 1 to 64 characters from `[A-Za-z0-9._~-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ViewerId(Arc<str>);

/// Why a string is not a [`ViewerId`]; one line, never echoing the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidViewerId {
    #[error("viewer id is empty")]
    Empty,
    #[error("viewer id is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("viewer id may only contain A-Z a-z 0-9 . _ ~ -")]
    BadCharacter,
}

impl ViewerId {
    pub fn parse(s: &str) -> Result<Self, InvalidViewerId> {
        allow_listed::check(s, MAX_LEN, true).map_err(|refusal| match refusal {
            Refusal::Empty => InvalidViewerId::Empty,
            Refusal::TooLong => InvalidViewerId::TooLong,
            Refusal::BadCharacter | Refusal::OnlyDots => InvalidViewerId::BadCharacter,
        })?;
        Ok(Self(Arc::from(s)))
    }
}

id_type!(ViewerId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        assert!(ViewerId::parse("user-42_a.b~c").is_ok());
        assert!(ViewerId::parse(&"v".repeat(MAX_LEN)).is_ok());
        assert_eq!(ViewerId::parse("").unwrap_err(), InvalidViewerId::Empty);
        assert_eq!(ViewerId::parse(&"v".repeat(MAX_LEN + 1)).unwrap_err(), InvalidViewerId::TooLong);
        for bad in ["a b", "a\nb", "a/b", "<x>", "é", "a\0"] {
            assert_eq!(ViewerId::parse(bad).unwrap_err(), InvalidViewerId::BadCharacter, "{bad:?}");
        }
    }
}
