//! Bearer tokens between internal clients and the poller
//! (`authorization: Bearer TOKEN`, RFC 6750): one syntax, checked by the
//! poller when it reads `--clients-file` and by the edge when it reads
//! `--poller-token-file`, so a token one accepts the other accepts too.

/// Shortest token accepted: a token is a generated secret, not a password;
/// 16 characters of the token alphabet are ~96 bits.
pub const MIN_LEN: usize = 16;
/// Longest token accepted (it travels in every call's headers).
pub const MAX_LEN: usize = 512;

/// What a token must look like, for error messages.
pub const RULE: &str = "16 to 512 characters from A-Z a-z 0-9 - . _ ~ + / (then = padding)";

/// RFC 6750's `b64token` (letters, digits, `-._~+/`, then `=` padding),
/// [`MIN_LEN`] to [`MAX_LEN`] long.
pub fn is_valid(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    (MIN_LEN..=MAX_LEN).contains(&token.len())
        && !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'))
}

/// The token of an `authorization` header value `Bearer TOKEN` (the scheme
/// in any case), if it has that form.
pub fn from_header(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The one token of a token file (`--poller-token-file`,
/// `--publish-token-file`): one line of [`RULE`], `#` comments and blank
/// lines allowed. The error never shows any of the file.
pub fn from_file(text: &str) -> Result<&str, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
    let token = lines.next().ok_or("no token (the file is empty or only comments)")?;
    if lines.next().is_some() {
        return Err("more than one line besides comments (the file holds one token)".into());
    }
    if !is_valid(token) {
        return Err(format!("the token must be {RULE}"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_rfc_6750() {
        assert!(is_valid("abcDEF0123456789-._~+/=="));
        assert!(is_valid(&"a".repeat(MAX_LEN)));
        assert!(!is_valid(&"a".repeat(MAX_LEN + 1)));
        assert!(!is_valid("abc"));
        assert!(!is_valid("================"));
        assert!(!is_valid("abcdefgh=ijklmnopq"), "= only at the end");
        assert!(!is_valid("abcdefgh ijklmnopq"));
        assert!(!is_valid("abcdefghijklmnopq\u{e9}"));
    }

    #[test]
    fn token_files_hold_one_token() {
        assert_eq!(from_file("# the token\n\n  abcdefghijklmnop0123  \n"), Ok("abcdefghijklmnop0123"));
        for bad in
            ["", "# only\n", "short", "abcdefghijklmnop0123\nabcdefghijklmnop0124", "abc def ghi jkl mno pq"]
        {
            let err = from_file(bad).unwrap_err();
            assert!(!err.contains("abcdefghijklmnop"), "{err}");
        }
    }

    #[test]
    fn header_values() {
        assert_eq!(from_header("Bearer abc"), Some("abc"));
        assert_eq!(from_header("bearer   abc "), Some("abc"));
        assert_eq!(from_header("Basic abc"), None);
        assert_eq!(from_header("Bearer"), None);
        assert_eq!(from_header("Bearer "), None);
        assert_eq!(from_header("abc"), None);
    }
}
