//! [`Name`]: the one identifier type of the protocol.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::MAX_NAME;

/// A cluster, node, task family or container name.
///
/// 1 to 64 characters from `[A-Za-z0-9_.-]`, not starting with `.` or `-`. That makes a name safe
/// as one MQTT topic level (no `/`, `+`, `#`), as a file name, a container id and a cgroup
/// directory, so nothing downstream has to escape it. It can only be built through
/// [`FromStr`]/[`TryFrom`], and decoding checks it too.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(
    try_from = "heapless::String<MAX_NAME>",
    into = "heapless::String<MAX_NAME>"
)]
pub struct Name(heapless::String<MAX_NAME>);

/// Why a string is not a valid [`Name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// Empty string.
    Empty,
    /// Longer than [`MAX_NAME`] bytes.
    TooLong(usize),
    /// A character outside `[A-Za-z0-9_.-]`.
    BadChar(char),
    /// Starts with `.` or `-`.
    BadStart(char),
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("name is empty"),
            NameError::TooLong(n) => {
                write!(f, "name is {n} bytes long, at most {MAX_NAME} allowed")
            }
            NameError::BadChar(c) => {
                write!(
                    f,
                    "name contains {c:?}; only letters, digits, '_', '.' and '-' are allowed"
                )
            }
            NameError::BadStart(c) => write!(f, "name starts with {c:?}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for NameError {}

impl Name {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl FromStr for Name {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let first = s.chars().next().ok_or(NameError::Empty)?;
        if s.len() > MAX_NAME {
            return Err(NameError::TooLong(s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(NameError::BadChar(c));
        }
        if first == '.' || first == '-' {
            return Err(NameError::BadStart(first));
        }
        let mut inner = heapless::String::new();
        inner.push_str(s).map_err(|_| NameError::TooLong(s.len()))?;
        Ok(Name(inner))
    }
}

impl TryFrom<&str> for Name {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl TryFrom<heapless::String<MAX_NAME>> for Name {
    type Error = NameError;
    fn try_from(s: heapless::String<MAX_NAME>) -> Result<Self, Self::Error> {
        s.as_str().parse()
    }
}

impl From<Name> for heapless::String<MAX_NAME> {
    fn from(n: Name) -> Self {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// The schema of a name: a string of the allowed characters, 1 to [`MAX_NAME`] long.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for Name {
    fn schema_name() -> alloc::borrow::Cow<'static, str> {
        "Name".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A cluster, node, task, service or container name: safe as one MQTT \
                topic level, a file name and a cgroup directory.",
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_NAME,
            "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["a", "pi-1", "web_2", "svc.v1", "A9"] {
            assert_eq!(ok.parse::<Name>().map(|n| n.to_string()), Ok(ok.into()));
        }
    }

    #[test]
    fn rejects_names_unsafe_for_topics_and_paths() {
        assert_eq!("".parse::<Name>(), Err(NameError::Empty));
        assert_eq!("a/b".parse::<Name>(), Err(NameError::BadChar('/')));
        assert_eq!("a+".parse::<Name>(), Err(NameError::BadChar('+')));
        assert_eq!("#".parse::<Name>(), Err(NameError::BadChar('#')));
        assert_eq!("..".parse::<Name>(), Err(NameError::BadStart('.')));
        assert_eq!("-x".parse::<Name>(), Err(NameError::BadStart('-')));
        assert_eq!("x".repeat(65).parse::<Name>(), Err(NameError::TooLong(65)));
    }
}
