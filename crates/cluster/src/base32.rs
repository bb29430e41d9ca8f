//! Lower-case base32 (RFC 4648's alphabet `a-z2-7`, no padding) for the
//! 32-byte values a join token carries: the CA digest and the secret.
//!
//! Why base32 over base58 or hex: it is 52 characters for 32 bytes (hex
//! would be 64), it has no characters that read alike once lower-cased
//! (no `0`/`o`, `1`/`l`: the digits are 2-7), it needs no big-number
//! arithmetic, and a `-` (the token's separator) can never appear in it.
//! Lower case because a token is read and typed by people and looks less
//! like shouting; decoding accepts lower case only, so each value has one
//! spelling (a token found in a log can be grepped for as written).

use data_encoding::{DecodeKind, BASE32_NOPAD};

/// Characters that encode 32 bytes: ceil(256 / 5).
pub(crate) const LEN_32: usize = 52;

pub(crate) fn encode(bytes: &[u8]) -> String {
    BASE32_NOPAD.encode(bytes).to_ascii_lowercase()
}

/// Why a string is not the encoding of 32 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// In characters.
    Length { found: usize },
    /// The first character outside `a-z2-7`; `position` counts characters
    /// from 0.
    Character { position: usize, character: char },
    /// The last character carries non-zero bits beyond the 256 encoded:
    /// some other string is the canonical spelling of these bytes.
    NonCanonical,
}

pub(crate) fn decode_32(s: &str) -> Result<[u8; 32], DecodeError> {
    // Characters are checked before the length so that a stray upper-case
    // letter or a `0` is reported as such, not as a confusing length; both
    // are counted in characters, never bytes, so a non-ASCII character
    // cannot shift the reported position.
    if let Some((position, character)) = s
        .chars()
        .enumerate()
        .find(|(_, c)| !matches!(c, 'a'..='z' | '2'..='7'))
    {
        return Err(DecodeError::Character {
            position,
            character,
        });
    }
    if s.len() != LEN_32 {
        return Err(DecodeError::Length { found: s.len() });
    }
    let upper = s.to_ascii_uppercase();
    let bytes = BASE32_NOPAD
        .decode(upper.as_bytes())
        .map_err(|e| match e.kind {
            DecodeKind::Trailing => DecodeError::NonCanonical,
            // Length and alphabet were checked above and base32 without
            // padding has no other failure; keep a sensible answer anyway.
            _ => DecodeError::Length { found: s.len() },
        })?;
    bytes
        .try_into()
        .map_err(|_| DecodeError::Length { found: s.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_32_bytes_in_52_lower_case_characters() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37 + 11) as u8);
        let s = encode(&bytes);
        assert_eq!(s.len(), LEN_32);
        assert!(s.chars().all(|c| matches!(c, 'a'..='z' | '2'..='7')));
        assert_eq!(decode_32(&s), Ok(bytes));
    }

    #[test]
    fn names_the_first_bad_character_and_its_position() {
        let mut s = encode(&[0u8; 32]);
        s.replace_range(5..6, "A");
        assert_eq!(
            decode_32(&s),
            Err(DecodeError::Character {
                position: 5,
                character: 'A'
            })
        );
        assert_eq!(
            decode_32("ab0"),
            Err(DecodeError::Character {
                position: 2,
                character: '0'
            })
        );
    }

    #[test]
    fn rejects_wrong_lengths_and_non_canonical_spellings() {
        assert_eq!(decode_32("aaaa"), Err(DecodeError::Length { found: 4 }));
        // 52 characters hold 260 bits: the last 4 must be zero. `b` is 1.
        let mut s = "a".repeat(51);
        s.push('b');
        assert_eq!(decode_32(&s), Err(DecodeError::NonCanonical));
    }
}
