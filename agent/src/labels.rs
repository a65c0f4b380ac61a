//! Node labels (`[labels]` in the agent config) and the label selectors of `skiff ctl nodes
//! --selector` and `skiff ctl deploy --selector`.
//!
//! A label is `key = "value"`: keys 1..=63 characters of ASCII letters, digits and `.`, `_`,
//! `-`, `/`, starting with a letter or digit; values 1..=63 characters of letters, digits and
//! `.`, `_`, `-`. At most 16 labels. A selector is `k=v,k2=v2`: a node matches when each of its
//! labels named in the selector has exactly that value (all must match).

use std::collections::BTreeMap;

/// Labels per node.
pub const MAX_LABELS: usize = 16;
/// Longest label key.
pub const MAX_KEY: usize = 63;
/// Longest label value.
pub const MAX_VALUE: usize = 63;

/// The node's architecture as OCI image platforms name it (`amd64`, `arm64`, `arm`, ...): the
/// default `arch` label.
pub fn build_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Checks a label key; the error says what is wrong with it.
pub fn check_key(key: &str) -> Result<(), String> {
    check(key, "key", MAX_KEY, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
    })
}

/// Checks a label value; the error says what is wrong with it.
pub fn check_value(value: &str) -> Result<(), String> {
    check(value, "value", MAX_VALUE, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    })
}

fn check(s: &str, what: &str, max: usize, allowed: impl Fn(char) -> bool) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("empty label {what}"));
    }
    if s.len() > max {
        return Err(format!(
            "label {what} {:?}... is {} bytes, longer than {max}",
            s.chars().take(16).collect::<String>(),
            s.len()
        ));
    }
    if let Some(c) = s.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "label {what} {s:?}: character {c:?} is not allowed"
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "label {what} {s:?} must start with a letter or digit"
        ));
    }
    Ok(())
}

/// The labels a node reports: the configured ones, checked, plus `arch` = [`build_arch`] unless
/// configured.
pub fn node_labels(
    configured: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    for (k, v) in configured {
        check_key(k)?;
        check_value(v).map_err(|e| format!("{k}: {e}"))?;
    }
    let mut labels = configured.clone();
    labels
        .entry("arch".to_string())
        .or_insert_with(|| build_arch().to_string());
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{} labels (with the default arch), more than {MAX_LABELS}",
            labels.len()
        ));
    }
    Ok(labels)
}

/// `k=v,k2=v2`: the labels a node must have, all of them, with exactly these values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    terms: BTreeMap<String, String>,
}

impl Selector {
    /// Whether a node with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// The terms, by key.
    pub fn terms(&self) -> &BTreeMap<String, String> {
        &self.terms
    }
}

impl std::str::FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Selector, String> {
        let mut terms = BTreeMap::new();
        for term in s.split(',') {
            let term = term.trim();
            let Some((k, v)) = term.split_once('=') else {
                return Err(format!(
                    "selector term {term:?}: expected key=value (e.g. arch=arm64,site=north)"
                ));
            };
            let (k, v) = (k.trim(), v.trim());
            check_key(k).map_err(|e| format!("selector: {e}"))?;
            check_value(v).map_err(|e| format!("selector: {e}"))?;
            if let Some(prev) = terms.insert(k.to_string(), v.to_string()) {
                return Err(format!(
                    "selector names {k} twice ({prev:?} and {v:?}): no node can match"
                ));
            }
            if terms.len() > MAX_LABELS {
                return Err(format!(
                    "selector has more than {MAX_LABELS} terms (a node has at most {MAX_LABELS} labels)"
                ));
            }
        }
        Ok(Selector { terms })
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (k, v) in &self.terms {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> Selector {
        s.parse().expect("selector")
    }

    #[test]
    fn selector_matches_only_when_every_term_matches_exactly() {
        let node = labels(&[("arch", "arm64"), ("site", "north"), ("tier", "edge")]);
        assert!(sel("arch=arm64").matches(&node));
        assert!(sel("arch=arm64,site=north").matches(&node));
        assert!(sel(" site = north , arch=arm64 ").matches(&node));
        assert!(!sel("arch=arm64,site=south").matches(&node));
        assert!(!sel("arch=arm").matches(&node), "exact, not prefix");
        assert!(!sel("Arch=arm64").matches(&node), "keys are case-sensitive");
        assert!(
            !sel("zone=a").matches(&node),
            "a missing label does not match"
        );
        assert!(!sel("arch=arm64").matches(&BTreeMap::new()));
        assert_eq!(
            sel("site=north,arch=arm64").to_string(),
            "arch=arm64,site=north"
        );
    }

    #[test]
    fn selector_rejects_malformed_terms_naming_them() {
        for (input, says) in [
            ("", "expected key=value"),
            ("arch", "\"arch\": expected key=value"),
            ("arch=arm64,", "\"\": expected key=value"),
            ("=arm64", "empty label key"),
            ("arch=", "empty label value"),
            ("arch=arm 64", "character ' '"),
            ("arch=a=b", "character '='"),
            ("-x=1", "must start with a letter or digit"),
            ("arch=arm64,arch=amd64", "names arch twice"),
        ] {
            let err = input.parse::<Selector>().expect_err(input);
            assert!(err.contains(says), "{input:?}: {err}");
        }
        let long = format!("k={}", "v".repeat(64));
        assert!(long
            .parse::<Selector>()
            .expect_err("long")
            .contains("longer than 63"));
        let many: Vec<String> = (0..17).map(|i| format!("k{i}=v")).collect();
        assert!(many
            .join(",")
            .parse::<Selector>()
            .expect_err("many")
            .contains("more than 16"));
    }

    #[test]
    fn node_labels_default_arch_and_are_bounded() {
        let got = node_labels(&labels(&[("site", "north")])).expect("labels");
        assert_eq!(got.get("arch").map(String::as_str), Some(build_arch()));
        assert_eq!(got.get("site").map(String::as_str), Some("north"));
        // A configured arch wins (e.g. an armv7 userland on an arm64 kernel).
        let got = node_labels(&labels(&[("arch", "arm")])).expect("labels");
        assert_eq!(got.get("arch").map(String::as_str), Some("arm"));
        let err = node_labels(&labels(&[("site", "no,rth")])).expect_err("comma");
        assert!(err.starts_with("site: label value"), "{err}");
        let err = node_labels(&labels(&[("a b", "x")])).expect_err("space");
        assert!(err.contains("label key \"a b\""), "{err}");
        // 16 configured + the default arch is one too many; 15 + arch fits.
        let many: BTreeMap<String, String> =
            (0..16).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(node_labels(&many).expect_err("17").contains("more than 16"));
        let fits: BTreeMap<String, String> =
            (0..15).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(node_labels(&fits).expect("16").len(), 16);
    }
}
