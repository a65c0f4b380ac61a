//! Registry pulls into the store: manifest (or index → this platform's manifest), config and
//! layers, each verified against its digest before it is used.
//!
//! Layers stream to `tmp/partial-<hex>` while being hashed, never held in memory. A download
//! that breaks off keeps that file; the next attempt (a retry, another pull, or the agent after
//! a restart: `partial-` names are not removed at start-up) re-hashes it and asks only for the
//! rest with HTTP Range. A blob whose content does not hash to its digest is deleted and the
//! pull fails naming it. Names are set in refs.json only once every blob is in the store.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::blobs::BlobError;
use super::digest::Digest;
use super::fsutil;
use super::oci::{
    self, ConfigBlob, Descriptor, Index, Manifest, ManifestKind, Platform, MAX_INDEX_DEPTH,
    MAX_JSON_SIZE, MAX_LAYERS,
};
use super::reference::ImageRef;
use super::registry::{read_limited, RegistryClient, RegistryError, Session};
use super::store::{now_unix, ImageStore, RefRecord, StoreError};
use super::unpack::{self, UnpackError};

/// What the registry is asked for when fetching a manifest: every kind skiff reads.
pub const MANIFEST_ACCEPT: &str = concat!(
    "application/vnd.oci.image.index.v1+json, ",
    "application/vnd.oci.image.manifest.v1+json, ",
    "application/vnd.docker.distribution.manifest.list.v2+json, ",
    "application/vnd.docker.distribution.manifest.v2+json"
);

/// Prefix of a partially downloaded blob's file name in the store's `tmp/`.
pub const PARTIAL_PREFIX: &str = "partial-";
const COPY_BUFFER: usize = 64 * 1024;

/// When the agent pulls an image before starting a task (`pull_policy` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pull at every start (a digest reference already in the store is not fetched again);
    /// a failed pull fails the start.
    Always,
    /// Pull only when the image is not in the store.
    #[default]
    IfNotPresent,
    /// Pull at every start to follow a moved tag, but run the cached image when the registry
    /// cannot be reached.
    PreferCached,
    /// Never pull: only images already in the store (imported, or pulled by hand).
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "always",
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::PreferCached => "prefer-cached",
            PullPolicy::Never => "never",
        }
    }
}

/// Limits of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOptions {
    /// A pull that would leave less free space than this on the store's file system fails
    /// before it downloads anything.
    pub min_free_bytes: u64,
    /// Download rate limit in bytes per second (cellular links), `None`: unlimited.
    pub rate_limit: Option<u64>,
    /// Attempts per blob after the first when a download breaks off or the registry is
    /// unreachable (each resumes where the last stopped).
    pub retries: u32,
    /// Delay before the first retry; doubles each time.
    pub retry_delay: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            min_free_bytes: 256 << 20,
            rate_limit: None,
            retries: 2,
            retry_delay: Duration::from_millis(500),
        }
    }
}

/// One layer of the chosen manifest, as progress reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    pub digest: Digest,
    pub size: u64,
    /// Already in the store.
    pub present: bool,
}

/// Steps of a pull, reported as they happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    /// The manifest for this platform is known; layers follow in order.
    Resolved {
        digest: Digest,
        platform: Platform,
        layers: Vec<LayerInfo>,
    },
    /// Bytes of a layer on disk so far (resumed bytes included).
    Layer {
        digest: Digest,
        done: u64,
        size: u64,
    },
    /// A layer is in the store.
    LayerDone {
        digest: Digest,
        size: u64,
        /// Bytes downloaded for it now.
        fetched: u64,
        /// Bytes a previous, broken-off download had left.
        resumed_from: u64,
    },
}

/// A pulled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The name it is stored under (the reference pulled, digest and all).
    pub reference: ImageRef,
    /// Manifest digest (this platform's manifest when the reference names an index).
    pub digest: Digest,
    pub platform: Platform,
    /// Bytes of manifest, config and (compressed) layers.
    pub size: u64,
    /// Layers downloaded (0: all were in the store).
    pub layers_fetched: usize,
    /// Bytes downloaded for layers in this pull.
    pub bytes_fetched: u64,
    /// Bytes of layers taken from partial downloads of earlier attempts.
    pub bytes_resumed: u64,
}

/// What [`ImageStore::ensure`] did.
#[derive(Debug)]
pub enum Ensured {
    /// The image was in the store and the policy did not ask to pull.
    Cached,
    /// Pulled now.
    Pulled(Box<PulledImage>),
    /// The registry could not be reached; the cached image stands in (`prefer-cached`).
    CachedAfter(Box<PullError>),
}

/// Why a pull failed. `reference` is the image being pulled.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("pull {reference}: {source}")]
    Registry {
        reference: String,
        source: Box<RegistryError>,
    },
    #[error("pull {reference}: {what} is larger than {max} bytes")]
    TooLarge {
        reference: String,
        what: String,
        max: u64,
    },
    #[error("pull {reference}: cannot read {what}: {source}")]
    Read {
        reference: String,
        what: String,
        source: io::Error,
    },
    #[error("pull {reference}: invalid {what}: {source}")]
    InvalidJson {
        reference: String,
        what: String,
        source: serde_json::Error,
    },
    #[error("pull {reference}: {what} has unsupported media type {media_type:?}")]
    UnknownMediaType {
        reference: String,
        what: String,
        media_type: String,
    },
    #[error("pull {reference}: manifest has the wrong content: expected {expected}, its sha256 is {actual}")]
    ManifestDigest {
        reference: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "pull {reference}: manifest {digest} is {actual} bytes, its descriptor says {expected}"
    )]
    ManifestSize {
        reference: String,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("pull {reference}: image indexes nest deeper than {MAX_INDEX_DEPTH} levels")]
    IndexTooDeep { reference: String },
    #[error("pull {reference}: no image for platform {wanted}; the index has: {available}")]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("pull {reference}: image {digest} is for {found}, not for platform {wanted}")]
    WrongPlatform {
        reference: String,
        digest: Digest,
        found: String,
        wanted: String,
    },
    #[error("pull {reference}: manifest {digest} has {count} layers, more than {MAX_LAYERS}")]
    TooManyLayers {
        reference: String,
        digest: Digest,
        count: usize,
    },
    #[error("pull {reference}: layer {digest}: {source}")]
    Layer {
        reference: String,
        digest: Digest,
        source: UnpackError,
    },
    #[error("pull {reference}: config {digest} lists {diff_ids} diff_ids for {layers} layers")]
    DiffIdCount {
        reference: String,
        digest: Digest,
        diff_ids: usize,
        layers: usize,
    },
    #[error("pull {reference}: {source}; the blob was deleted")]
    Corrupt {
        reference: String,
        source: BlobError,
    },
    #[error(
        "pull {reference}: blob {digest}: the registry sends {got}, expected {expected} bytes"
    )]
    BlobLength {
        reference: String,
        digest: Digest,
        expected: u64,
        got: String,
    },
    #[error("pull {reference}: download of blob {digest} broke off at {done} of {size} bytes (it resumes from there next time): {source}")]
    Interrupted {
        reference: String,
        digest: Digest,
        done: u64,
        size: u64,
        source: io::Error,
    },
    #[error("pull {reference}: needs {needed} bytes on {path} and keeps {min_free} free, but only {available} are available")]
    DiskFull {
        reference: String,
        path: PathBuf,
        needed: u64,
        min_free: u64,
        available: u64,
    },
    #[error("pull {reference}: {path}: {source}")]
    Io {
        reference: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("image {reference} is not in the local store and the pull policy is never")]
    NotPresent { reference: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PullError {
    /// The registry could not be reached (or kept failing): a cached image may stand in.
    pub fn is_unreachable(&self) -> bool {
        match self {
            PullError::Registry { source, .. } => source.is_unreachable(),
            PullError::Interrupted { .. } => true,
            _ => false,
        }
    }
}

impl ImageStore {
    /// Whether `r` names an image in the store (by name, or by digest).
    pub fn contains(&self, r: &ImageRef) -> Result<bool, StoreError> {
        Ok(self.lookup(r)?.is_some())
    }

    /// Make `r` available per `policy`: pull or not, see [`PullPolicy`].
    pub fn ensure(
        &self,
        client: &RegistryClient,
        r: &ImageRef,
        policy: PullPolicy,
        opts: &PullOptions,
        progress: &mut dyn FnMut(&PullProgress),
    ) -> Result<Ensured, PullError> {
        let present = self.contains(r)?;
        let pinned_present = present && r.digest().is_some();
        match policy {
            PullPolicy::Never if present => Ok(Ensured::Cached),
            PullPolicy::Never => Err(PullError::NotPresent {
                reference: r.to_string(),
            }),
            PullPolicy::IfNotPresent if present => Ok(Ensured::Cached),
            _ if pinned_present => Ok(Ensured::Cached),
            PullPolicy::IfNotPresent | PullPolicy::Always => self
                .pull(client, r, opts, progress)
                .map(|p| Ensured::Pulled(Box::new(p))),
            PullPolicy::PreferCached => match self.pull(client, r, opts, progress) {
                Ok(p) => Ok(Ensured::Pulled(Box::new(p))),
                Err(e) if present && e.is_unreachable() => Ok(Ensured::CachedAfter(Box::new(e))),
                Err(e) => Err(e),
            },
        }
    }

    /// Pull `r` from its registry into the store and name it `r` in refs.json. An index
    /// yields the manifest for the store's platform. Blobs already in the store are not
    /// fetched again.
    pub fn pull(
        &self,
        client: &RegistryClient,
        r: &ImageRef,
        opts: &PullOptions,
        progress: &mut dyn FnMut(&PullProgress),
    ) -> Result<PulledImage, PullError> {
        let reference = r.to_string();
        let mut session = client.session(r.registry(), r.repository());
        let pull = Pull {
            store: self,
            reference: &reference,
            opts,
        };

        // Manifest, through any indexes.
        let first = match (r.digest(), r.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_owned(),
            (None, None) => super::reference::DEFAULT_TAG.to_owned(),
        };
        let mut doc = pull.fetch_manifest(&mut session, &first, r.digest(), None)?;
        let mut depth = 0;
        while doc.kind == ManifestKind::Index {
            if depth >= MAX_INDEX_DEPTH {
                return Err(PullError::IndexTooDeep { reference });
            }
            depth += 1;
            let index: Index = pull.parse(&doc.bytes, format!("image index {}", doc.digest))?;
            let chosen = match index.manifests.as_slice() {
                [only] if only.platform.is_none() => Some(only),
                all => oci::select_platform(&self.platform, all),
            }
            .ok_or_else(|| PullError::NoMatchingPlatform {
                reference: reference.clone(),
                wanted: self.platform.to_string(),
                available: oci::list_platforms(&index.manifests),
            })?
            .clone();
            if chosen.size > MAX_JSON_SIZE {
                return Err(pull.too_large(format!("manifest {}", chosen.digest)));
            }
            doc = pull.fetch_manifest(
                &mut session,
                &chosen.digest.to_string(),
                Some(&chosen.digest),
                Some(chosen.size),
            )?;
        }
        let manifest: Manifest = pull.parse(&doc.bytes, format!("manifest {}", doc.digest))?;
        pull.check_manifest(&doc.digest, &manifest)?;

        // Config: small, read whole, verified.
        let config_bytes = pull.fetch_small_blob(&mut session, &manifest.config)?;
        let config: ConfigBlob = pull.parse(
            &config_bytes,
            format!("image config {}", manifest.config.digest),
        )?;
        let platform = config.platform();
        if self.platform.match_score(&platform).is_none() {
            return Err(PullError::WrongPlatform {
                reference,
                digest: doc.digest,
                found: platform.to_string(),
                wanted: self.platform.to_string(),
            });
        }
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(PullError::DiffIdCount {
                reference,
                digest: manifest.config.digest.clone(),
                diff_ids: config.rootfs.diff_ids.len(),
                layers: manifest.layers.len(),
            });
        }

        let layers: Vec<LayerInfo> = manifest
            .layers
            .iter()
            .map(|l| LayerInfo {
                digest: l.digest.clone(),
                size: l.size,
                present: self.blobs.contains(&l.digest, l.size),
            })
            .collect();
        progress(&PullProgress::Resolved {
            digest: doc.digest.clone(),
            platform: platform.clone(),
            layers: layers.clone(),
        });
        pull.check_disk(&manifest, &layers)?;

        let mut fetched = 0;
        let mut bytes_fetched = 0;
        let mut bytes_resumed = 0;
        for (layer, info) in manifest.layers.iter().zip(&layers) {
            let got = pull.fetch_layer(&mut session, layer, progress)?;
            if got.fetched > 0 || got.resumed_from > 0 {
                fetched += 1;
            }
            bytes_fetched += got.fetched;
            bytes_resumed += got.resumed_from;
            progress(&PullProgress::LayerDone {
                digest: info.digest.clone(),
                size: info.size,
                fetched: got.fetched,
                resumed_from: got.resumed_from,
            });
        }
        // Config, then the manifest: a manifest in the store always has its children.
        let corrupt = |source| PullError::Corrupt {
            reference: reference.clone(),
            source,
        };
        self.blobs
            .write_verified(
                &manifest.config.digest,
                manifest.config.size,
                &mut &config_bytes[..],
            )
            .map_err(corrupt)?;
        self.blobs
            .write_verified(&doc.digest, doc.bytes.len() as u64, &mut &doc.bytes[..])
            .map_err(corrupt)?;
        let size = manifest.layers.iter().map(|l| l.size).fold(
            manifest.config.size.saturating_add(doc.bytes.len() as u64),
            u64::saturating_add,
        );
        self.commit_refs(vec![(
            r.clone(),
            RefRecord {
                digest: doc.digest.clone(),
                platform: platform.to_string(),
                size,
                imported_at: now_unix(),
            },
        )])?;
        tracing::info!(
            reference,
            digest = %doc.digest,
            %platform,
            layers_fetched = fetched,
            bytes_fetched,
            bytes_resumed,
            "pulled image"
        );
        Ok(PulledImage {
            reference: r.clone(),
            digest: doc.digest,
            platform,
            size,
            layers_fetched: fetched,
            bytes_fetched,
            bytes_resumed,
        })
    }

    /// Every partial download in the store's `tmp/`: digest hex → bytes so far.
    pub fn partial_downloads(&self) -> Vec<(String, u64)> {
        let Ok(entries) = fs::read_dir(&self.tmp) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let hex = name.strip_prefix(PARTIAL_PREFIX)?.to_owned();
                Some((hex, e.metadata().ok()?.len()))
            })
            .collect()
    }
}

/// A fetched manifest or index, verified.
struct Document {
    bytes: Vec<u8>,
    digest: Digest,
    kind: ManifestKind,
}

struct LayerFetch {
    fetched: u64,
    resumed_from: u64,
}

/// One pull's context.
struct Pull<'a> {
    store: &'a ImageStore,
    reference: &'a str,
    opts: &'a PullOptions,
}

impl Pull<'_> {
    fn registry_err(&self, source: RegistryError) -> PullError {
        PullError::Registry {
            reference: self.reference.to_owned(),
            source: Box::new(source),
        }
    }

    fn too_large(&self, what: String) -> PullError {
        PullError::TooLarge {
            reference: self.reference.to_owned(),
            what,
            max: MAX_JSON_SIZE,
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        bytes: &[u8],
        what: String,
    ) -> Result<T, PullError> {
        serde_json::from_slice(bytes).map_err(|source| PullError::InvalidJson {
            reference: self.reference.to_owned(),
            what,
            source,
        })
    }

    /// GET a manifest or index (bounded), check it against `expected` (digest and size) or
    /// the registry's `Docker-Content-Digest`, and tell which it is.
    fn fetch_manifest(
        &self,
        session: &mut Session,
        at: &str,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<Document, PullError> {
        let what = format!("manifest {at}");
        let resp = session
            .get(&what, &format!("manifests/{at}"), Some(MANIFEST_ACCEPT), 0)
            .map_err(|e| self.registry_err(e))?;
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
        let bytes = read_limited(resp, MAX_JSON_SIZE)
            .map_err(|source| PullError::Read {
                reference: self.reference.to_owned(),
                what: what.clone(),
                source,
            })?
            .ok_or_else(|| self.too_large(what.clone()))?;
        let actual = Digest::of(&bytes);
        if let Some(expected) = expected.or(header_digest.as_ref()) {
            if *expected != actual {
                return Err(PullError::ManifestDigest {
                    reference: self.reference.to_owned(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        if let Some(size) = expected_size.filter(|s| *s != bytes.len() as u64) {
            return Err(PullError::ManifestSize {
                reference: self.reference.to_owned(),
                digest: actual,
                expected: size,
                actual: bytes.len() as u64,
            });
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            #[serde(default)]
            media_type: Option<String>,
            #[serde(default)]
            manifests: Option<serde::de::IgnoredAny>,
        }
        let probe: Probe = self.parse(&bytes, what.clone())?;
        // The document's own mediaType wins; then the header; an OCI document may omit
        // both, and then `manifests` tells an index.
        let media = probe.media_type.or(content_type).unwrap_or_default();
        let kind = match ManifestKind::of(&media) {
            Some(k) => k,
            None if probe.manifests.is_some() => ManifestKind::Index,
            None if media.is_empty() || media == "application/json" => ManifestKind::Manifest,
            None => {
                return Err(PullError::UnknownMediaType {
                    reference: self.reference.to_owned(),
                    what,
                    media_type: media,
                })
            }
        };
        Ok(Document {
            bytes,
            digest: actual,
            kind,
        })
    }

    fn check_manifest(&self, digest: &Digest, m: &Manifest) -> Result<(), PullError> {
        let unknown = |what: String, media_type: &str| PullError::UnknownMediaType {
            reference: self.reference.to_owned(),
            what,
            media_type: media_type.to_owned(),
        };
        if let Some(mt) = &m.media_type {
            if ManifestKind::of(mt) != Some(ManifestKind::Manifest) {
                return Err(unknown(format!("manifest {digest}"), mt));
            }
        }
        if !oci::is_config(&m.config.media_type) {
            return Err(unknown(
                format!("config {}", m.config.digest),
                &m.config.media_type,
            ));
        }
        if m.config.size > MAX_JSON_SIZE {
            return Err(self.too_large(format!("config {}", m.config.digest)));
        }
        if m.layers.len() > MAX_LAYERS {
            return Err(PullError::TooManyLayers {
                reference: self.reference.to_owned(),
                digest: digest.clone(),
                count: m.layers.len(),
            });
        }
        for layer in &m.layers {
            unpack::compression_of(&layer.media_type).map_err(|source| PullError::Layer {
                reference: self.reference.to_owned(),
                digest: layer.digest.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Fail before downloading when the layers still to fetch, plus room to unpack them
    /// (about twice their compressed size), would leave less than `min_free_bytes` free.
    fn check_disk(&self, m: &Manifest, layers: &[LayerInfo]) -> Result<(), PullError> {
        let partial: std::collections::BTreeMap<String, u64> =
            self.store.partial_downloads().into_iter().collect();
        let download: u64 = layers
            .iter()
            .filter(|l| !l.present)
            .map(|l| {
                l.size
                    .saturating_sub(partial.get(l.digest.hex()).copied().unwrap_or(0))
            })
            .fold(m.config.size, u64::saturating_add);
        let unpacked = layers
            .iter()
            .map(|l| l.size)
            .fold(0u64, u64::saturating_add)
            .saturating_mul(2);
        let needed = download.saturating_add(unpacked);
        let root = self.store.root();
        let st = nix::sys::statvfs::statvfs(root).map_err(|errno| PullError::Io {
            reference: self.reference.to_owned(),
            path: root.to_path_buf(),
            source: io::Error::from(errno),
        })?;
        #[allow(clippy::useless_conversion)] // c_ulong / fsblkcnt_t differ by target
        let available =
            u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
        if available < needed.saturating_add(self.opts.min_free_bytes) {
            return Err(PullError::DiskFull {
                reference: self.reference.to_owned(),
                path: root.to_path_buf(),
                needed,
                min_free: self.opts.min_free_bytes,
                available,
            });
        }
        Ok(())
    }

    /// A config blob: read whole (bounded by its descriptor) and verified.
    fn fetch_small_blob(
        &self,
        session: &mut Session,
        d: &Descriptor,
    ) -> Result<Vec<u8>, PullError> {
        if self.store.blobs.contains(&d.digest, d.size) {
            return self
                .store
                .blobs
                .read_bounded(&d.digest, MAX_JSON_SIZE, "an image config")
                .map_err(|source| PullError::Corrupt {
                    reference: self.reference.to_owned(),
                    source,
                });
        }
        let what = format!("blob {}", d.digest);
        let resp = session
            .get(&what, &format!("blobs/{}", d.digest), None, 0)
            .map_err(|e| self.registry_err(e))?;
        let bytes = read_limited(resp, d.size.min(MAX_JSON_SIZE))
            .map_err(|source| PullError::Read {
                reference: self.reference.to_owned(),
                what: what.clone(),
                source,
            })?
            .ok_or_else(|| PullError::BlobLength {
                reference: self.reference.to_owned(),
                digest: d.digest.clone(),
                expected: d.size,
                got: "more".to_owned(),
            })?;
        if bytes.len() as u64 != d.size {
            return Err(PullError::BlobLength {
                reference: self.reference.to_owned(),
                digest: d.digest.clone(),
                expected: d.size,
                got: bytes.len().to_string(),
            });
        }
        let actual = Digest::of(&bytes);
        if actual != d.digest {
            return Err(PullError::Corrupt {
                reference: self.reference.to_owned(),
                source: BlobError::DigestMismatch {
                    expected: d.digest.clone(),
                    actual,
                },
            });
        }
        Ok(bytes)
    }

    /// A layer: streamed into `tmp/partial-<hex>` while hashed, resumed with Range from what
    /// an earlier attempt left, verified whole, then moved into the store.
    fn fetch_layer(
        &self,
        session: &mut Session,
        d: &Descriptor,
        progress: &mut dyn FnMut(&PullProgress),
    ) -> Result<LayerFetch, PullError> {
        let blobs = &self.store.blobs;
        if blobs.contains(&d.digest, d.size) {
            return Ok(LayerFetch {
                fetched: 0,
                resumed_from: 0,
            });
        }
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PullError::Io {
                reference: self.reference.to_owned(),
                path,
                source,
            }
        };
        // One download per blob at a time (the agent and `skiff image pull` share the store).
        let lock_path = self
            .store
            .locks_dir()
            .join(format!("{PARTIAL_PREFIX}{}.lock", d.digest.hex()));
        let _lock = fsutil::lock_exclusive(&lock_path).map_err(io_err(&lock_path))?;
        if blobs.contains(&d.digest, d.size) {
            return Ok(LayerFetch {
                fetched: 0,
                resumed_from: 0,
            });
        }
        let partial = self
            .store
            .tmp
            .join(format!("{PARTIAL_PREFIX}{}", d.digest.hex()));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&partial)
            .map_err(io_err(&partial))?;
        let mut hasher = Sha256::new();
        let mut have = file.metadata().map_err(io_err(&partial))?.len();
        if have > d.size {
            file.set_len(0).map_err(io_err(&partial))?;
            have = 0;
        }
        if have > 0 {
            // Hash what is there: a sha256 state cannot be saved, its input can.
            io::copy(&mut (&mut file).take(have), &mut hasher).map_err(io_err(&partial))?;
        }
        let resumed_from = have;
        let mut done = have;
        let mut fetched = 0u64;
        let mut attempt = 0u32;
        let mut buf = vec![0u8; COPY_BUFFER];
        let chunk = match self.opts.rate_limit {
            Some(rate) => usize::try_from(rate / 8)
                .unwrap_or(COPY_BUFFER)
                .clamp(1024, COPY_BUFFER),
            None => COPY_BUFFER,
        };
        if done > 0 {
            tracing::info!(reference = self.reference, digest = %d.digest, from = done, size = d.size, "resuming layer download");
        }
        while done < d.size {
            let what = format!("blob {}", d.digest);
            let outcome = session.get(&what, &format!("blobs/{}", d.digest), None, done);
            let resp = match outcome {
                Ok(r) => r,
                Err(e) if e.is_unreachable() && attempt < self.opts.retries => {
                    tracing::warn!(reference = self.reference, error = %e, "registry unreachable; retrying");
                    self.backoff(&mut attempt);
                    continue;
                }
                Err(e) => return Err(self.registry_err(e)),
            };
            let status = resp.status().as_u16();
            let content_length = resp
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if status == 206 {
                let range = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if !range.starts_with(&format!("bytes {done}-")) {
                    return Err(PullError::BlobLength {
                        reference: self.reference.to_owned(),
                        digest: d.digest.clone(),
                        expected: d.size,
                        got: format!("Content-Range {range:?} for a request from byte {done}"),
                    });
                }
            } else if done > 0 {
                // The registry ignored the Range: start over.
                tracing::info!(reference = self.reference, digest = %d.digest, "registry does not resume; downloading the blob again");
                file.set_len(0).map_err(io_err(&partial))?;
                hasher = Sha256::new();
                done = 0;
            }
            if let Some(len) = content_length {
                if done.saturating_add(len) != d.size {
                    drop(file);
                    let _ = fs::remove_file(&partial);
                    return Err(PullError::BlobLength {
                        reference: self.reference.to_owned(),
                        digest: d.digest.clone(),
                        expected: d.size,
                        got: format!("{} bytes", done.saturating_add(len)),
                    });
                }
            }
            file.seek(SeekFrom::Start(done)).map_err(io_err(&partial))?;
            let mut reader = resp.into_body().into_reader();
            let started = Instant::now();
            let mut this_call = 0u64;
            let broke: Option<io::Error> = loop {
                let n = match reader.read(&mut buf[..chunk]) {
                    Ok(0) => break None,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break Some(e),
                };
                if done + n as u64 > d.size {
                    drop(file);
                    let _ = fs::remove_file(&partial);
                    return Err(PullError::Corrupt {
                        reference: self.reference.to_owned(),
                        source: BlobError::TooLong {
                            digest: d.digest.clone(),
                            expected: d.size,
                        },
                    });
                }
                let bytes = &buf[..n];
                file.write_all(bytes).map_err(io_err(&partial))?;
                hasher.update(bytes);
                done += n as u64;
                fetched += n as u64;
                this_call += n as u64;
                progress(&PullProgress::Layer {
                    digest: d.digest.clone(),
                    done,
                    size: d.size,
                });
                if let Some(rate) = self.opts.rate_limit.filter(|r| *r > 0) {
                    let due = Duration::from_secs_f64(this_call as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            };
            if done >= d.size {
                break;
            }
            let source = broke.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed early")
            });
            file.sync_data().map_err(io_err(&partial))?;
            if attempt < self.opts.retries {
                tracing::warn!(reference = self.reference, digest = %d.digest, done, size = d.size, error = %source, "layer download broke off; resuming");
                self.backoff(&mut attempt);
                continue;
            }
            return Err(PullError::Interrupted {
                reference: self.reference.to_owned(),
                digest: d.digest.clone(),
                done,
                size: d.size,
                source,
            });
        }
        let actual = Digest::from_sha256(hasher.finalize().into());
        if actual != d.digest {
            drop(file);
            let _ = fs::remove_file(&partial);
            return Err(PullError::Corrupt {
                reference: self.reference.to_owned(),
                source: BlobError::DigestMismatch {
                    expected: d.digest.clone(),
                    actual,
                },
            });
        }
        file.sync_all().map_err(io_err(&partial))?;
        drop(file);
        blobs
            .install_hashed(&d.digest, &partial)
            .map_err(|source| PullError::Corrupt {
                reference: self.reference.to_owned(),
                source,
            })?;
        Ok(LayerFetch {
            fetched,
            resumed_from,
        })
    }

    fn backoff(&self, attempt: &mut u32) {
        let delay = self
            .opts
            .retry_delay
            .saturating_mul(1u32 << (*attempt).min(6));
        *attempt += 1;
        std::thread::sleep(delay);
    }
}
