//! Human-friendly memory sizes ("128M", "2G", "65536").

use crate::error::ParseError;

/// Parse a size with an optional K/M/G/T suffix (powers of 1024), as QEMU's `-m` accepts.
pub fn parse_size(s: &str) -> Result<u64, ParseError> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(ParseError::BadSize(s.to_string())),
            };
            (&t[..i], m)
        }
        // A bare number is MiB, as with QEMU's -m.
        _ => (t, 1 << 20),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| ParseError::BadSize(s.to_string()))?;
    n.checked_mul(mult)
        .ok_or_else(|| ParseError::SizeTooLarge(s.to_string()))
}

/// A size as a person would write it: `1 byte`, `512 KiB`, `16 MiB`, `2 GiB` (the largest
/// unit that divides it, so nothing is rounded away).
pub fn show_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    if bytes == 1 {
        "1 byte".into()
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096 << 20));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("1"), Ok(1 << 20));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn errors_name_the_accepted_form() {
        assert_eq!(
            parse_size("12Q").unwrap_err().to_string(),
            "bad size '12Q': use a number of MiB, or one with a B, K, M, G or T suffix"
        );
        assert_eq!(
            parse_size("99999999999T").unwrap_err().to_string(),
            "size '99999999999T' is too large"
        );
    }

    #[test]
    fn shows_sizes_without_rounding() {
        assert_eq!(show_size(1), "1 byte");
        assert_eq!(show_size(1000), "1000 bytes");
        assert_eq!(show_size(512 << 10), "512 KiB");
        assert_eq!(show_size(16 << 20), "16 MiB");
        assert_eq!(show_size((1 << 20) + 4096), "1028 KiB");
        assert_eq!(show_size(2 << 30), "2 GiB");
    }
}
