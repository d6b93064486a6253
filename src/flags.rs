//! Value parsers shared by the three binaries' flags, so a duration or a
//! size means the same everywhere and is refused with the same words.

use std::time::Duration;

/// A duration such as `500ms`, `2s` or `1m`, at least one millisecond (a
/// zero interval or period would spin).
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(d)
}

/// A byte size such as `65536`, `64KiB` or `1MiB`, at least one byte.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        other => return Err(format!("unknown unit {other:?} (use B, KiB or MiB)")),
    };
    let size = n.checked_mul(mult).ok_or("size too large")?;
    if size == 0 {
        return Err("must be at least 1 byte".into());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(positive_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(positive_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(positive_duration("0s").is_err() && positive_duration("soon").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999999999999MiB").is_err());
    }
}
