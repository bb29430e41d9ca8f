//! Join tokens, in the spirit of Docker Swarm's `SWMTKN-1-<digest>-<secret>`:
//!
//! ```text
//! PORTICO-1-<CA digest>-<secret>
//! ```
//!
//! - `PORTICO` says what it is (and tells it apart from a Swarm token);
//! - `1` is the format's version;
//! - the CA digest is the SHA-256 of the cluster CA certificate's DER: with
//!   it a proxy that has never seen the controller recognises it on first
//!   contact (see [`crate::tls::first_contact_client_config`]);
//! - the secret is 32 random bytes: what the proxy proves it knows to be
//!   given a certificate (see [`crate::join`]).
//!
//! Both are lower-case base32 without padding (`a-z2-7`, 52 characters
//! each: short, no look-alike characters, and no `-`), so a token is 115
//! characters. Parsing trims surrounding whitespace (a token file ends with
//! a newline) and is otherwise exact.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::base32::{self, DecodeError};
use crate::ca::CaDigest;
use crate::state;

pub const TOKEN_PREFIX: &str = "PORTICO";
pub const TOKEN_VERSION: &str = "1";

/// A join token's secret. Compared in constant time only
/// ([`Secret::matches`]); never printed by `{:?}`.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl Secret {
    pub fn generate() -> Result<Self, TokenError> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| TokenError::Random)?;
        Ok(Secret(bytes))
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Secret(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `other` is the same secret, in time that does not depend on
    /// where they differ (so that a peer cannot find it byte by byte).
    pub fn matches(&self, other: &Secret) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A parsed join token.
#[derive(Clone)]
pub struct JoinToken {
    ca_digest: CaDigest,
    secret: Secret,
}

impl JoinToken {
    /// A new token for the CA whose digest is `ca_digest`, with a fresh
    /// secret.
    pub fn generate(ca_digest: CaDigest) -> Result<Self, TokenError> {
        Ok(JoinToken {
            ca_digest,
            secret: Secret::generate()?,
        })
    }

    pub fn new(ca_digest: CaDigest, secret: Secret) -> Self {
        JoinToken { ca_digest, secret }
    }

    pub fn parse(token: &str) -> Result<Self, TokenParseError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenParseError::Empty);
        }
        // The base32 alphabet has no '-': splitting on it is unambiguous.
        let parts: Vec<&str> = token.split('-').collect();
        if parts[0] != TOKEN_PREFIX {
            return Err(TokenParseError::WrongPrefix {
                found: shorten(parts[0]),
            });
        }
        if let Some(version) = parts.get(1) {
            if *version != TOKEN_VERSION {
                return Err(TokenParseError::UnsupportedVersion {
                    found: shorten(version),
                });
            }
        }
        if parts.len() != 4 {
            return Err(TokenParseError::WrongShape { parts: parts.len() });
        }
        let field = |field: TokenField, s: &str| {
            base32::decode_32(s).map_err(|e| match e {
                DecodeError::Length { found } => TokenParseError::WrongLength {
                    field,
                    found,
                    expected: base32::LEN_32,
                },
                DecodeError::Character {
                    position,
                    character,
                } => TokenParseError::BadCharacter {
                    field,
                    position,
                    character,
                },
                DecodeError::NonCanonical => TokenParseError::NonCanonical { field },
            })
        };
        Ok(JoinToken {
            ca_digest: CaDigest::from_bytes(field(TokenField::CaDigest, parts[2])?),
            secret: Secret(field(TokenField::Secret, parts[3])?),
        })
    }

    /// The token as text, secret included: for the token file and for
    /// `portico controller token`. (There is deliberately no `Display`, so
    /// that a token cannot reach a log line through `{}` by accident.)
    pub fn encode(&self) -> String {
        format!(
            "{TOKEN_PREFIX}-{TOKEN_VERSION}-{}-{}",
            self.ca_digest,
            base32::encode(&self.secret.0)
        )
    }

    pub fn ca_digest(&self) -> &CaDigest {
        &self.ca_digest
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Whether `other` is this token's secret (constant time).
    pub fn secret_matches(&self, other: &Secret) -> bool {
        self.secret.matches(other)
    }

    /// Writes the token and a newline to `path`, mode 0600, atomically: the
    /// file `portico controller init` leaves for the stack to turn into a
    /// Docker secret.
    pub fn write_file(&self, path: &Path) -> Result<(), TokenError> {
        let mut text = self.encode();
        text.push('\n');
        state::write_atomic(path, text.as_bytes(), state::PRIVATE).map_err(|source| {
            TokenError::Io {
                action: "write",
                path: path.to_owned(),
                source,
            }
        })
    }

    /// Reads a token file (a Docker secret, or what `write_file` wrote).
    pub fn read_file(path: &Path) -> Result<Self, TokenError> {
        let text = fs::read_to_string(path).map_err(|source| TokenError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        JoinToken::parse(&text).map_err(|source| TokenError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

impl FromStr for JoinToken {
    type Err = TokenParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JoinToken::parse(s)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &self.ca_digest)
            .field("secret", &self.secret)
            .finish()
    }
}

/// Which of the token's two values an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenField {
    CaDigest,
    Secret,
}

impl fmt::Display for TokenField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenField::CaDigest => "CA digest",
            TokenField::Secret => "secret",
        })
    }
}

/// Why a string is not a join token. Each names what is wrong and where;
/// none repeats more of the token than its first field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenParseError {
    #[error("the join token is empty")]
    Empty,
    #[error(
        "not a Portico join token: it starts with {found:?}, not \"PORTICO-\"{}",
        if found == "\"SWMTKN\"" { " (that is a Docker Swarm join token)" } else { "" }
    )]
    WrongPrefix { found: String },
    #[error(
        "join token version {found} is not one this Portico reads (it reads version {TOKEN_VERSION})"
    )]
    UnsupportedVersion { found: String },
    #[error(
        "the join token has {parts} part(s) separated by '-', expected 4: \
         PORTICO-1-<CA digest>-<secret>"
    )]
    WrongShape { parts: usize },
    #[error("the join token's {field} is {found} characters long, expected {expected}")]
    WrongLength {
        field: TokenField,
        found: usize,
        expected: usize,
    },
    #[error(
        "the join token's {field} has {character:?} at position {position}: \
         tokens are lower-case base32 (a-z, 2-7)"
    )]
    BadCharacter {
        field: TokenField,
        position: usize,
        character: char,
    },
    #[error(
        "the join token's {field} is not canonical base32: its last character \
         carries bits beyond the 32 bytes (the token was altered)"
    )]
    NonCanonical { field: TokenField },
}

/// Why a token could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: TokenParseError,
    },
    #[error("the system's random number generator failed")]
    Random,
}

/// A peer- or user-supplied field as an error shows it: escaped, and at
/// most 12 characters (the first field of a mangled token could be its
/// secret).
fn shorten(s: &str) -> String {
    const MAX: usize = 12;
    if s.chars().count() > MAX {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}…")
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn token() -> JoinToken {
        JoinToken::new(
            CaDigest::from_bytes(std::array::from_fn(|i| i as u8)),
            Secret::from_bytes([0xa5; 32]),
        )
    }

    #[test]
    fn encodes_and_parses_back() {
        let t = token();
        let s = t.encode();
        assert_eq!(s.len(), 115);
        assert!(s.starts_with(&format!("PORTICO-1-{}-", t.ca_digest())));
        let back = JoinToken::parse(&format!("  {s}\n")).unwrap();
        assert_eq!(back.ca_digest(), t.ca_digest());
        assert!(back.secret_matches(t.secret()));
        assert_eq!(s.parse::<JoinToken>().unwrap().encode(), s);
    }

    #[test]
    fn a_different_secret_does_not_match() {
        let t = token();
        let mut other = *t.secret().as_bytes();
        other[31] ^= 1;
        assert!(!t.secret_matches(&Secret::from_bytes(other)));
        let fresh = JoinToken::generate(*t.ca_digest()).unwrap();
        assert!(!t.secret_matches(fresh.secret()));
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let t = token();
        let secret = base32::encode(t.secret().as_bytes());
        let debug = format!("{t:?}");
        assert!(!debug.contains(&secret), "{debug}");
        assert!(debug.contains(&t.ca_digest().to_string()), "{debug}");
    }

    fn successor(encoded: &str) -> char {
        const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz234567";
        let last = encoded.chars().last().unwrap();
        let i = ALPHABET.find(last).unwrap();
        ALPHABET.as_bytes()[i + 1] as char
    }

    #[test]
    fn parse_errors_name_what_is_wrong() {
        let good = token().encode();
        let parts: Vec<&str> = good.split('-').collect();
        let (digest, secret) = (parts[2], parts[3]);
        let cases: Vec<(String, TokenParseError)> = vec![
            ("  \n".into(), TokenParseError::Empty),
            (
                format!("SWMTKN-1-{digest}-{secret}"),
                TokenParseError::WrongPrefix {
                    found: "\"SWMTKN\"".into(),
                },
            ),
            (
                format!("portico-1-{digest}-{secret}"),
                TokenParseError::WrongPrefix {
                    found: "\"portico\"".into(),
                },
            ),
            (
                // A bare secret: only its first 12 characters are shown.
                secret.into(),
                TokenParseError::WrongPrefix {
                    found: format!("{:?}…", &secret[..12]),
                },
            ),
            (
                format!("PORTICO-2-{digest}-{secret}"),
                TokenParseError::UnsupportedVersion {
                    found: "\"2\"".into(),
                },
            ),
            (
                format!("PORTICO-1-{digest}"),
                TokenParseError::WrongShape { parts: 3 },
            ),
            (
                format!("PORTICO-1-{digest}-{secret}-x"),
                TokenParseError::WrongShape { parts: 5 },
            ),
            (
                format!("PORTICO-1-{}-{secret}", &digest[..50]),
                TokenParseError::WrongLength {
                    field: TokenField::CaDigest,
                    found: 50,
                    expected: 52,
                },
            ),
            (
                format!("PORTICO-1-{digest}-{secret}aa"),
                TokenParseError::WrongLength {
                    field: TokenField::Secret,
                    found: 54,
                    expected: 52,
                },
            ),
            (
                format!("PORTICO-1-{}-{secret}", digest.to_ascii_uppercase()),
                TokenParseError::BadCharacter {
                    field: TokenField::CaDigest,
                    position: 0,
                    character: 'A',
                },
            ),
            (
                format!("PORTICO-1-{digest}-{}0{}", &secret[..7], &secret[8..]),
                TokenParseError::BadCharacter {
                    field: TokenField::Secret,
                    position: 7,
                    character: '0',
                },
            ),
            (
                // The last character carries 1 bit of the secret and 4 of
                // padding, all zero: its successor in the alphabet sets one.
                format!("PORTICO-1-{digest}-{}{}", &secret[..51], successor(secret)),
                TokenParseError::NonCanonical {
                    field: TokenField::Secret,
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(JoinToken::parse(&input).unwrap_err(), expected, "{input}");
        }
        // The messages say it in words.
        let e = JoinToken::parse(&format!("SWMTKN-1-{digest}-{secret}")).unwrap_err();
        assert!(e.to_string().contains("Docker Swarm"), "{e}");
        let e = JoinToken::parse(&format!("PORTICO-1-{}-{secret}", &digest[..50])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the join token's CA digest is 50 characters long, expected 52"
        );
    }

    #[test]
    fn the_token_file_is_0600_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("join-token");
        let t = token();
        t.write_file(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), t.encode() + "\n");
        let back = JoinToken::read_file(&path).unwrap();
        assert!(back.secret_matches(t.secret()));

        fs::write(&path, "PORTICO-1-short-x\n").unwrap();
        let e = JoinToken::read_file(&path).unwrap_err();
        assert!(matches!(e, TokenError::Parse { .. }));
        assert!(e.to_string().contains("join-token"), "{e}");
    }
}
