//! The one shape of every id that comes from outside and travels on:
//! event ids and viewer ids (and edge ids, which follow the viewer-id
//! rules). 1 to `max` characters of RFC 3986's "unreserved" set
//! (`A-Za-z0-9._~-`), so an id needs no escaping in any URL, header or
//! JSON string. Each kind has its own type and error (their messages name
//! the kind); the checks and the string handling are here once.

/// A character every id may use.
pub fn is_allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-')
}

/// Why a string is not an id, whatever its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Empty,
    TooLong,
    BadCharacter,
    OnlyDots,
}

/// Checks `s` against the shape: at most `max` bytes, only allowed
/// characters, and (unless `dots_only_ok`) not made only of dots.
pub(crate) fn check(s: &str, max: usize, dots_only_ok: bool) -> Result<(), Refusal> {
    if s.is_empty() {
        return Err(Refusal::Empty);
    }
    if s.len() > max {
        return Err(Refusal::TooLong);
    }
    if !s.bytes().all(is_allowed) {
        return Err(Refusal::BadCharacter);
    }
    if !dots_only_ok && s.bytes().all(|b| b == b'.') {
        return Err(Refusal::OnlyDots);
    }
    Ok(())
}

/// What every id type offers: its text, `Display`, and a `Debug` that is
/// the quoted text. The type is a tuple struct around an `Arc<str>`, so a
/// clone is a reference-count bump (ids are map keys on hot paths).
macro_rules! id_type {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&*self.0, f)
            }
        }
    };
}
pub(crate) use id_type;
