//! The parts of the OCI image spec (and Docker's schema 2 equivalents) the store reads:
//! media types, descriptors, index, manifest, image config, platforms. Shared by layout import
//! and, later, the registry puller. Only the fields skiff uses are modelled; the rest of each
//! document is ignored, as the spec asks of readers.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::digest::Digest;
use super::ImageConfig;

/// Largest index, manifest or image config accepted, in bytes.
pub const MAX_JSON_SIZE: u64 = 4 * 1024 * 1024;
/// Most layers an image may have.
pub const MAX_LAYERS: usize = 128;
/// Deepest nesting of image indexes followed.
pub const MAX_INDEX_DEPTH: usize = 4;

/// Annotation naming a manifest in an OCI layout's `index.json`: a tag or a full reference.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd's and nerdctl's exports put the full image name in.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

pub mod media_type {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const OCI_LAYER_NONDISTRIBUTABLE: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar";
    pub const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    pub const OCI_LAYER_NONDISTRIBUTABLE_ZSTD: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
}

/// What an index entry or a fetched document is, by media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    Index,
    Manifest,
}

impl ManifestKind {
    pub fn of(media_type: &str) -> Option<Self> {
        match media_type {
            media_type::OCI_INDEX | media_type::DOCKER_LIST => Some(Self::Index),
            media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST => Some(Self::Manifest),
            _ => None,
        }
    }
}

/// Whether `media_type` is an image config skiff can read.
pub fn is_config(media_type: &str) -> bool {
    matches!(
        media_type,
        media_type::OCI_CONFIG | media_type::DOCKER_CONFIG
    )
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An image index (or Docker manifest list), e.g. an OCI layout's `index.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The image config blob: platform, rootfs diff ids and the process defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigBlob {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

impl ConfigBlob {
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone().filter(|v| !v.is_empty()),
        }
    }

    /// What the runtime needs (missing and `null` fields read as empty).
    pub fn image_config(&self) -> ImageConfig {
        let Some(c) = &self.config else {
            return ImageConfig::default();
        };
        ImageConfig {
            entrypoint: c.entrypoint.clone().unwrap_or_default(),
            cmd: c.cmd.clone().unwrap_or_default(),
            env: c.env.clone().unwrap_or_default(),
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            user: c.user.clone().filter(|u| !u.is_empty()),
        }
    }
}

/// The `config` object of an image config blob (Docker's capitalised field names).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

/// Why a string is not `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {platform:?} (expected os/architecture[/variant], e.g. linux/arm64/v8)")]
pub struct PlatformError {
    platform: String,
}

/// An OS and CPU an image is built for, named as OCI does (`linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// This machine: linux and the compiled-for CPU, mapped to OCI names.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            other => (other, None),
        };
        Platform {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// How well an image built for `candidate` runs here (`self`): `None` when it does not,
    /// higher is better (an exact variant beats a compatible one).
    pub fn match_score(&self, candidate: &Platform) -> Option<u8> {
        let arch = |a: &str| match a {
            "x86_64" => "amd64".to_owned(),
            "aarch64" => "arm64".to_owned(),
            other => other.to_owned(),
        };
        if self.os != candidate.os || arch(&self.architecture) != arch(&candidate.architecture) {
            return None;
        }
        let want = self.variant.as_deref().unwrap_or_default();
        let have = candidate.variant.as_deref().unwrap_or_default();
        if want == have {
            return Some(3);
        }
        match arch(&self.architecture).as_str() {
            // An arm64 image without a variant is v8.
            "arm64" => (have.is_empty() || have == "v8").then_some(2),
            // arm without a variant means v7 (as containerd normalises it); a v7 CPU runs v6
            // and v5 code too.
            "arm" => {
                let level = |v: &str| match v {
                    "" | "v7" => Some(7),
                    "v6" => Some(6),
                    "v5" => Some(5),
                    "v8" => Some(8),
                    _ => None,
                };
                match (level(want), level(have)) {
                    (Some(w), Some(h)) if h == w => Some(2),
                    (Some(w), Some(h)) if h < w => Some(1),
                    _ => None,
                }
            }
            // amd64 microarchitecture levels: only a baseline image is known to run.
            _ => (have.is_empty() || have == "v1").then_some(2),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PlatformError {
            platform: s.to_owned(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !parts.iter().all(|p| valid(p)) {
            return Err(err());
        }
        match parts.as_slice() {
            [os, arch] => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: Some((*variant).to_owned()),
            }),
            _ => Err(err()),
        }
    }
}

/// The descriptor among `candidates` that best fits `target`, if any.
pub fn select_platform<'a>(
    target: &Platform,
    candidates: &'a [Descriptor],
) -> Option<&'a Descriptor> {
    let mut best: Option<(u8, &Descriptor)> = None;
    for d in candidates {
        let Some(score) = d.platform.as_ref().and_then(|p| target.match_score(p)) else {
            continue;
        };
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, d));
        }
    }
    best.map(|(_, d)| d)
}

/// `linux/amd64, linux/arm64/v8` (or `none` when no candidate names a platform).
pub fn list_platforms(candidates: &[Descriptor]) -> String {
    let names: Vec<String> = candidates
        .iter()
        .map(|d| {
            d.platform
                .as_ref()
                .map_or_else(|| "unspecified".to_owned(), ToString::to_string)
        })
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().expect("valid platform")
    }

    #[test]
    fn host_platform_is_oci_named() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(host.to_string(), "linux/amd64");
        #[cfg(target_arch = "aarch64")]
        assert_eq!(host.to_string(), "linux/arm64/v8");
        #[cfg(target_arch = "arm")]
        assert_eq!(host.to_string(), "linux/arm/v7");
    }

    #[test]
    fn platform_strings_round_trip() {
        for s in ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"] {
            assert_eq!(p(s).to_string(), s);
        }
        for s in ["linux", "linux/", "linux/arm/v7/x", "", "linux/a b"] {
            assert!(s.parse::<Platform>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn matches_compatible_platforms() {
        let amd64 = p("linux/amd64");
        assert_eq!(amd64.match_score(&p("linux/amd64")), Some(3));
        assert_eq!(amd64.match_score(&p("linux/x86_64")), Some(3));
        assert_eq!(amd64.match_score(&p("linux/arm64")), None);
        assert_eq!(amd64.match_score(&p("windows/amd64")), None);
        assert_eq!(amd64.match_score(&p("linux/amd64/v3")), None);

        let arm64 = p("linux/arm64/v8");
        assert_eq!(arm64.match_score(&p("linux/arm64/v8")), Some(3));
        assert_eq!(arm64.match_score(&p("linux/arm64")), Some(2));
        assert_eq!(arm64.match_score(&p("linux/aarch64")), Some(2));
        assert_eq!(arm64.match_score(&p("linux/arm/v7")), None);

        let arm = p("linux/arm/v7");
        assert_eq!(arm.match_score(&p("linux/arm/v7")), Some(3));
        assert_eq!(arm.match_score(&p("linux/arm")), Some(2));
        assert_eq!(arm.match_score(&p("linux/arm/v6")), Some(1));
        assert_eq!(arm.match_score(&p("linux/arm/v8")), None);
    }

    fn desc(platform: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: media_type::OCI_MANIFEST.to_owned(),
            digest: Digest::of(&[n]),
            size: 1,
            annotations: BTreeMap::new(),
            platform: platform.map(p),
        }
    }

    #[test]
    fn selects_best_platform() {
        let candidates = [
            desc(Some("linux/arm/v6"), 0),
            desc(Some("linux/arm/v7"), 1),
            desc(Some("linux/amd64"), 2),
            desc(Some("unknown/unknown"), 3),
            desc(None, 4),
        ];
        let pick = |t: &str| select_platform(&p(t), &candidates).map(|d| d.digest.clone());
        assert_eq!(pick("linux/arm/v7"), Some(Digest::of(&[1])));
        assert_eq!(pick("linux/amd64"), Some(Digest::of(&[2])));
        assert_eq!(pick("linux/arm64/v8"), None);
        assert_eq!(
            list_platforms(&candidates),
            "linux/arm/v6, linux/arm/v7, linux/amd64, unknown/unknown, unspecified"
        );
    }

    #[test]
    fn reads_docker_style_config() -> Result<(), serde_json::Error> {
        let config: ConfigBlob = serde_json::from_str(
            r#"{"architecture":"arm64","variant":"v8","os":"linux",
                "config":{"Entrypoint":null,"Cmd":["sh"],"Env":["PATH=/bin"],"WorkingDir":"","User":"nobody"},
                "rootfs":{"type":"layers","diff_ids":[]},"history":[]}"#,
        )?;
        assert_eq!(config.platform().to_string(), "linux/arm64/v8");
        assert_eq!(
            config.image_config(),
            ImageConfig {
                entrypoint: vec![],
                cmd: vec!["sh".to_owned()],
                env: vec!["PATH=/bin".to_owned()],
                working_dir: None,
                user: Some("nobody".to_owned()),
            }
        );
        Ok(())
    }
}
