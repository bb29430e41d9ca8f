//! A proxy's id: the common name of its client certificate, and how the
//! controller names it in logs, metrics and its list of connected proxies.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest id: a DNS label's limit, so that a hostname (Portico's
/// default proxy id) always fits and an id can become one.
pub const MAX_LEN: usize = 63;

/// A validated proxy id: 1 to 63 characters among ASCII letters, digits,
/// `-`, `_` and `.`, starting with a letter or a digit.
///
/// Why the first character is restricted: ids end up in file names, log
/// fields and command lines, where `.`, `..` or `-rf` would be read as
/// something else. Hostnames and Docker's container ids already start with
/// a letter or a digit.
///
/// Serialized as its text; deserializing checks it (a listing read back
/// from a controller's admin API holds ids by the same rules).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProxyId(String);

/// Why a string is not a proxy id. The offending id itself is not repeated
/// (it may come from an unauthenticated peer and land in a log); the
/// position and the character are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyIdError {
    #[error("a proxy id cannot be empty")]
    Empty,
    #[error("a proxy id is at most {MAX_LEN} characters; this one has {length}")]
    TooLong { length: usize },
    #[error(
        "a proxy id holds only ASCII letters, digits, '-', '_' and '.'; \
         found {character:?} at position {position}"
    )]
    Character { position: usize, character: char },
    #[error("a proxy id starts with a letter or a digit; this one starts with {character:?}")]
    Start { character: char },
}

impl ProxyId {
    pub fn new(id: impl Into<String>) -> Result<Self, ProxyIdError> {
        let id = id.into();
        validate(&id)?;
        Ok(ProxyId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(id: &str) -> Result<(), ProxyIdError> {
    let length = id.chars().count();
    if length == 0 {
        return Err(ProxyIdError::Empty);
    }
    if length > MAX_LEN {
        return Err(ProxyIdError::TooLong { length });
    }
    if let Some((position, character)) = id
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(ProxyIdError::Character {
            position,
            character,
        });
    }
    match id.chars().next() {
        Some(c) if c.is_ascii_alphanumeric() => Ok(()),
        Some(character) => Err(ProxyIdError::Start { character }),
        None => Err(ProxyIdError::Empty),
    }
}

impl FromStr for ProxyId {
    type Err = ProxyIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProxyId::new(s)
    }
}

impl TryFrom<String> for ProxyId {
    type Error = ProxyIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        ProxyId::new(s)
    }
}

impl From<ProxyId> for String {
    fn from(id: ProxyId) -> String {
        id.0
    }
}

impl fmt::Display for ProxyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ProxyId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hostnames_container_ids_and_the_whole_alphabet() {
        for id in [
            "lb-1",
            "ip-10-0-3-7.eu-west-1.compute.internal",
            "3f2a9c1b7d4e",
            "A_b-c.9",
            &"x".repeat(63),
        ] {
            assert_eq!(ProxyId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(ProxyId::new(""), Err(ProxyIdError::Empty));
        assert_eq!(
            ProxyId::new("x".repeat(64)),
            Err(ProxyIdError::TooLong { length: 64 })
        );
        assert_eq!(
            ProxyId::new("lb 1"),
            Err(ProxyIdError::Character {
                position: 2,
                character: ' '
            })
        );
        assert_eq!(
            ProxyId::new("lb/../1"),
            Err(ProxyIdError::Character {
                position: 2,
                character: '/'
            })
        );
        assert_eq!(
            ProxyId::new("é"),
            Err(ProxyIdError::Character {
                position: 0,
                character: 'é'
            })
        );
        assert_eq!(
            ProxyId::new(".."),
            Err(ProxyIdError::Start { character: '.' })
        );
        assert_eq!(
            ProxyId::new("-rf"),
            Err(ProxyIdError::Start { character: '-' })
        );
        // A control character is shown escaped, never written raw into a log.
        let message = ProxyId::new("a\nb").unwrap_err().to_string();
        assert!(message.contains("'\\n'"), "{message}");
    }
}
