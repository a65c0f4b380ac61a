//! Image references, parsed and normalised the way Docker and registries do
//! (`github.com/distribution/reference`): `busybox` is `docker.io/library/busybox:latest`.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use super::digest::{Digest, DigestError};

/// Registry a reference without a domain refers to.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Tag a reference with neither tag nor digest gets.
pub const DEFAULT_TAG: &str = "latest";
/// Longest reference accepted, in bytes.
pub const MAX_REFERENCE_LEN: usize = 512;
/// Longest tag accepted, in bytes.
pub const MAX_TAG_LEN: usize = 128;

const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";
const OFFICIAL_NAMESPACE: &str = "library";

/// Why a string is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference is {len} bytes long (at most {MAX_REFERENCE_LEN})")]
    TooLong { len: usize },
    #[error("image reference {reference:?}: repository {repository:?} must be lowercase")]
    UppercaseRepository {
        reference: String,
        repository: String,
    },
    #[error("image reference {reference:?}: invalid repository {repository:?}: {reason}")]
    InvalidRepository {
        reference: String,
        repository: String,
        reason: &'static str,
    },
    #[error("image reference {reference:?}: invalid registry {registry:?}")]
    InvalidRegistry { reference: String, registry: String },
    #[error(
        "image reference {reference:?}: invalid tag {tag:?} (1 to {MAX_TAG_LEN} of A-Z a-z 0-9 _ . -, not starting with . or -)"
    )]
    InvalidTag { reference: String, tag: String },
    #[error("image reference {reference:?}: {source}")]
    InvalidDigest {
        reference: String,
        source: DigestError,
    },
}

/// A validated, normalised image reference: `registry/repository[:tag][@digest]`.
///
/// Only built through [`FromStr`] / [`TryFrom`], so holding one means it is valid. A reference
/// with neither tag nor digest gets the tag `latest`; [`ImageRef::has_explicit_tag`] tells the
/// two apart (used by `skiff image import --tag`), but equality, ordering and [`fmt::Display`]
/// only look at the canonical form.
#[derive(Debug, Clone)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
    explicit_tag: bool,
}

impl ImageRef {
    /// Registry host (and port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Repository path inside the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag; `latest` when the reference named neither tag nor digest.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The manifest digest the reference pins, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Whether the tag was written in the reference rather than defaulted to `latest`.
    pub fn has_explicit_tag(&self) -> bool {
        self.explicit_tag
    }

    /// The same repository with `tag` instead of this reference's tag and digest.
    pub fn with_tag(&self, tag: &str) -> Result<ImageRef, RefError> {
        if !valid_tag(tag) {
            return Err(RefError::InvalidTag {
                reference: format!("{}:{tag}", self.name()),
                tag: tag.to_owned(),
            });
        }
        Ok(ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
            explicit_tag: true,
        })
    }

    /// The same reference without its digest (its tag, or `latest` when it had none).
    pub fn without_digest(&self) -> ImageRef {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(self.tag.clone().unwrap_or_else(|| DEFAULT_TAG.to_owned())),
            digest: None,
            explicit_tag: self.explicit_tag,
        }
    }

    fn key(&self) -> (&str, &str, Option<&str>, Option<&Digest>) {
        (
            &self.registry,
            &self.repository,
            self.tag.as_deref(),
            self.digest.as_ref(),
        )
    }
}

impl PartialEq for ImageRef {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for ImageRef {}

impl Hash for ImageRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialOrd for ImageRef {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ImageRef {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl FromStr for ImageRef {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(RefError::Empty);
        }
        if s.len() > MAX_REFERENCE_LEN {
            return Err(RefError::TooLong { len: s.len() });
        }
        let invalid_repo = |repository: &str, reason| RefError::InvalidRepository {
            reference: s.to_owned(),
            repository: repository.to_owned(),
            reason,
        };
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid_repo(
                s,
                "a 64-digit hex string is an image id, not a name",
            ));
        }

        let (name_tag, digest) = match s.split_once('@') {
            Some((name_tag, digest)) => {
                let digest = digest.parse().map_err(|source| RefError::InvalidDigest {
                    reference: s.to_owned(),
                    source,
                })?;
                (name_tag, Some(digest))
            }
            None => (s, None),
        };

        // A tag is a `:` after the last `/`; a `:` before it belongs to the registry's port.
        let last_slash = name_tag.rfind('/');
        let (name, tag) = match name_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                let tag = &name_tag[colon + 1..];
                if !valid_tag(tag) {
                    return Err(RefError::InvalidTag {
                        reference: s.to_owned(),
                        tag: tag.to_owned(),
                    });
                }
                (&name_tag[..colon], Some(tag.to_owned()))
            }
            _ => (name_tag, None),
        };
        if name.is_empty() {
            return Err(invalid_repo(name, "empty"));
        }

        let (registry, remainder) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first, rest)
            }
            _ => (DEFAULT_REGISTRY, name),
        };
        if !valid_registry(registry) {
            return Err(RefError::InvalidRegistry {
                reference: s.to_owned(),
                registry: registry.to_owned(),
            });
        }
        let registry = if registry == LEGACY_DEFAULT_REGISTRY {
            DEFAULT_REGISTRY
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !remainder.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{remainder}")
        } else {
            remainder.to_owned()
        };
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(RefError::UppercaseRepository {
                reference: s.to_owned(),
                repository,
            });
        }
        if let Some(reason) = repository.split('/').find_map(path_component_error) {
            return Err(invalid_repo(&repository, reason));
        }

        let explicit_tag = tag.is_some();
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag,
        };
        Ok(ImageRef {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
            explicit_tag,
        })
    }
}

impl TryFrom<&str> for ImageRef {
    type Error = RefError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl TryFrom<String> for ImageRef {
    type Error = RefError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
pub(crate) fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    tag.len() <= MAX_TAG_LEN
        && (first.is_ascii_alphanumeric() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `host[:port]`, host being dot-separated `[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?` labels or a
/// bracketed IPv6 address.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = registry.starts_with('[')
        || (!host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            }));
    port_ok && host_ok
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, or why not.
fn path_component_error(component: &str) -> Option<&'static str> {
    if component.is_empty() {
        return Some("empty path component");
    }
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return Some("path components must start and end with a lowercase letter or digit");
    }
    for separator in component.split(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        let ok = separator.is_empty()
            || separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|b| b == b'-');
        if !ok {
            return Some(
                "only lowercase letters, digits and single separators (. _ __ -) are allowed",
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(s: &str) -> ImageRef {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn canonical(s: &str) -> String {
        parse(s).to_string()
    }

    #[test]
    fn normalises_docker_hub_names() {
        assert_eq!(canonical("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            canonical("library/busybox:1.36"),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(canonical("myuser/app"), "docker.io/myuser/app:latest");
        assert_eq!(
            canonical("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            canonical("index.docker.io/myuser/app:v1"),
            "docker.io/myuser/app:v1"
        );
        assert_eq!(canonical("a/b/c"), "docker.io/a/b/c:latest");
    }

    #[test]
    fn accessors() {
        let r = parse("library/busybox:1.36");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.tag(), Some("1.36"));
        assert_eq!(r.digest(), None);
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert!(r.has_explicit_tag());
        assert!(!parse("busybox").has_explicit_tag());
    }

    #[test]
    fn other_registries() {
        let r = parse(&format!("registry.example:5000/team/app@sha256:{HEX}"));
        assert_eq!(r.registry(), "registry.example:5000");
        assert_eq!(r.repository(), "team/app");
        assert_eq!(r.tag(), None);
        assert_eq!(
            r.digest().map(ToString::to_string),
            Some(format!("sha256:{HEX}"))
        );
        assert_eq!(
            r.to_string(),
            format!("registry.example:5000/team/app@sha256:{HEX}")
        );

        let r = parse("localhost/foo");
        assert_eq!((r.registry(), r.repository()), ("localhost", "foo"));
        assert_eq!(r.to_string(), "localhost/foo:latest");

        let r = parse("127.0.0.1:5000/x:tag");
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "x", Some("tag"))
        );
        assert_eq!(r.to_string(), "127.0.0.1:5000/x:tag");

        assert_eq!(canonical("localhost:5000/foo"), "localhost:5000/foo:latest");
        assert_eq!(canonical("[::1]:5000/foo:v2"), "[::1]:5000/foo:v2");
        assert_eq!(canonical("ghcr.io/org/img"), "ghcr.io/org/img:latest");
    }

    #[test]
    fn tag_and_digest_together() {
        let s = format!("busybox:1.36@sha256:{HEX}");
        let r = parse(&s);
        assert_eq!(r.tag(), Some("1.36"));
        assert!(r.digest().is_some());
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/busybox:1.36@sha256:{HEX}")
        );
        assert_eq!(
            r.without_digest().to_string(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            parse(&format!("busybox@sha256:{HEX}"))
                .without_digest()
                .to_string(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn canonical_form_round_trips_and_compares() {
        for s in [
            "busybox",
            "myuser/app:v1.2",
            "localhost/foo",
            "127.0.0.1:5000/x:tag",
            &format!("registry.example:5000/team/app:v1@sha256:{HEX}"),
        ] {
            let r = parse(s);
            assert_eq!(parse(&r.to_string()), r, "{s}");
        }
        assert_eq!(parse("busybox"), parse("docker.io/library/busybox:latest"));
        assert_ne!(parse("busybox"), parse("busybox:1.36"));
    }

    #[test]
    fn with_tag_replaces_tag_and_digest() {
        let r = parse(&format!("busybox:1@sha256:{HEX}"));
        let t = r.with_tag("1.36").expect("valid tag");
        assert_eq!(t.to_string(), "docker.io/library/busybox:1.36");
        assert!(matches!(
            r.with_tag("-bad"),
            Err(RefError::InvalidTag { .. })
        ));
    }

    #[test]
    fn rejects_empty_and_too_long() {
        assert_eq!("".parse::<ImageRef>(), Err(RefError::Empty));
        let long = format!("{}:{}", "a".repeat(400), "b".repeat(120));
        assert_eq!(
            long.parse::<ImageRef>(),
            Err(RefError::TooLong { len: 521 })
        );
        assert!(matches!(
            ":tag".parse::<ImageRef>(),
            Err(RefError::InvalidRepository { .. })
        ));
        assert!(matches!(
            format!("@sha256:{HEX}").parse::<ImageRef>(),
            Err(RefError::InvalidRepository { .. })
        ));
    }

    #[test]
    fn rejects_uppercase_repository() {
        let err = "Busybox".parse::<ImageRef>().expect_err("uppercase");
        assert!(matches!(err, RefError::UppercaseRepository { .. }), "{err}");
        assert!(err.to_string().contains("must be lowercase"));
        assert!(matches!(
            "myuser/App".parse::<ImageRef>(),
            Err(RefError::UppercaseRepository { .. })
        ));
        // An uppercase first component is a registry host, as in Docker; hosts are not case-bound.
        assert_eq!(canonical("Example.com/app"), "Example.com/app:latest");
    }

    #[test]
    fn rejects_bad_repository_components() {
        for s in [
            "a//b", "a/", "-a", "a-/b", "a..b", "a___b", "a/b c", "a/.b", "a$b",
        ] {
            assert!(
                matches!(
                    s.parse::<ImageRef>(),
                    Err(RefError::InvalidRepository { .. })
                ),
                "{s:?}: {:?}",
                s.parse::<ImageRef>()
            );
        }
        assert!(matches!(
            HEX.parse::<ImageRef>(),
            Err(RefError::InvalidRepository { .. })
        ));
        // Valid separators.
        for s in ["a.b", "a_b", "a__b", "a-b", "a---b", "a1/b2.c_d"] {
            parse(s);
        }
    }

    #[test]
    fn rejects_bad_tags() {
        let max = "t".repeat(MAX_TAG_LEN);
        assert_eq!(parse(&format!("busybox:{max}")).tag(), Some(max.as_str()));
        let too_long = "t".repeat(MAX_TAG_LEN + 1);
        for tag in ["", ".x", "-x", "a+b", "a b", "a!b", "ä", too_long.as_str()] {
            let s = format!("busybox:{tag}");
            assert!(
                matches!(s.parse::<ImageRef>(), Err(RefError::InvalidTag { .. })),
                "{s:?}"
            );
        }
        parse("busybox:_x.Y-1");
        // A second colon makes the first part of the repository: still rejected.
        assert!("busybox:a:b".parse::<ImageRef>().is_err());
        // The colon after the last slash starts the tag, even when the registry has a port.
        assert!(matches!(
            "localhost:5000/foo:bad tag".parse::<ImageRef>(),
            Err(RefError::InvalidTag { .. })
        ));
    }

    #[test]
    fn rejects_bad_digests() {
        for digest in [
            "sha256:abc".to_owned(),
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha512:{HEX}"),
            HEX.to_owned(),
            format!("sha256:{HEX}@sha256:{HEX}"),
        ] {
            let s = format!("busybox@{digest}");
            assert!(
                matches!(s.parse::<ImageRef>(), Err(RefError::InvalidDigest { .. })),
                "{s:?}"
            );
        }
    }

    #[test]
    fn rejects_bad_registries() {
        for s in [
            "exa_mple.com/app",
            "example.com:/app",
            "example.com:port/app",
            "-x.com/app",
            "[zz]:5000/app",
        ] {
            assert!(
                matches!(s.parse::<ImageRef>(), Err(RefError::InvalidRegistry { .. })),
                "{s:?}: {:?}",
                s.parse::<ImageRef>()
            );
        }
    }

    #[test]
    fn try_from_and_serde() {
        let r = ImageRef::try_from("busybox").expect("valid");
        let json = serde_json::to_string(&r).expect("serialize");
        assert_eq!(json, "\"docker.io/library/busybox:latest\"");
        assert_eq!(
            serde_json::from_str::<ImageRef>(&json).expect("deserialize"),
            r
        );
        assert!(serde_json::from_str::<ImageRef>("\"Bad\"").is_err());
        assert!(ImageRef::try_from(String::new()).is_err());
    }

    #[test]
    fn error_messages_are_lowercase_without_period() {
        let errors = [
            "".parse::<ImageRef>(),
            "Busybox".parse::<ImageRef>(),
            "busybox:.x".parse::<ImageRef>(),
            "busybox@md5:00".parse::<ImageRef>(),
        ];
        for e in errors {
            let msg = e.expect_err("invalid").to_string();
            assert!(msg.starts_with(|c: char| c.is_lowercase()), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
        }
    }
}
