//! Registry pulls into the store: manifest (or index → this platform's manifest), config and
//! layers, each verified against its digest before it is used.
//!
//! Layers stream to `tmp/partial-<hex>` while being hashed, never held in memory. A download
//! that breaks off keeps that file; the next attempt (a retry, another pull, or the agent after
//! a restart: `partial-` names are not removed at start-up) re-hashes it and asks only for the
//! rest with HTTP Range. A blob whose content does not hash to its digest is deleted and the
//! pull fails naming it. Names are set in refs.json only once every blob is in the store.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
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

/// What [`ImageStore::ensure`] does, by policy and by what the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Run the image in the store.
    UseCached,
    /// Fail: not in the store, and the policy forbids pulling.
    Refuse,
    /// Pull; a failed pull fails.
    Pull,
    /// Pull; when the registry cannot be reached, run the image in the store.
    PullElseCached,
}

/// `present`: the reference names an image in the store; `pinned`: it names a digest (the
/// content cannot have moved, so it is never fetched again).
fn plan(policy: PullPolicy, present: bool, pinned: bool) -> Plan {
    match policy {
        _ if present && pinned => Plan::UseCached,
        PullPolicy::Never | PullPolicy::IfNotPresent if present => Plan::UseCached,
        PullPolicy::Never => Plan::Refuse,
        PullPolicy::PreferCached if present => Plan::PullElseCached,
        PullPolicy::IfNotPresent | PullPolicy::Always | PullPolicy::PreferCached => Plan::Pull,
    }
}

/// The entry of `index` to pull for `platform`: the best fit (see [`Platform::match_score`]),
/// or the only entry when it names no platform. None fits: an error listing what there is.
fn choose_manifest<'a>(
    reference: &str,
    platform: &Platform,
    index: &'a Index,
) -> Result<&'a Descriptor, PullError> {
    match index.manifests.as_slice() {
        [only] if only.platform.is_none() => Some(only),
        all => oci::select_platform(platform, all),
    }
    .ok_or_else(|| PullError::NoMatchingPlatform {
        reference: reference.to_owned(),
        wanted: platform.to_string(),
        available: oci::list_platforms(&index.manifests),
    })
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
        match plan(policy, present, r.digest().is_some()) {
            Plan::UseCached => Ok(Ensured::Cached),
            Plan::Refuse => Err(PullError::NotPresent {
                reference: r.to_string(),
            }),
            Plan::Pull => self
                .pull(client, r, opts, progress)
                .map(|p| Ensured::Pulled(Box::new(p))),
            Plan::PullElseCached => match self.pull(client, r, opts, progress) {
                Ok(p) => Ok(Ensured::Pulled(Box::new(p))),
                Err(e) if e.is_unreachable() => Ok(Ensured::CachedAfter(Box::new(e))),
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
            let chosen = choose_manifest(&reference, &self.platform, &index)?.clone();
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

/// Bytes a pull still writes: the config and what is missing of each layer not in the store
/// (`partial`: digest hex → bytes an earlier attempt left), plus room to unpack every layer
/// (twice its compressed size).
fn space_needed(config_size: u64, layers: &[LayerInfo], partial: &BTreeMap<String, u64>) -> u64 {
    let download = layers
        .iter()
        .filter(|l| !l.present)
        .map(|l| {
            // A partial file longer than its layer is restarted (see `Partial::open`).
            let have = partial.get(l.digest.hex()).copied().unwrap_or(0);
            l.size.checked_sub(have).unwrap_or(l.size)
        })
        .fold(config_size, u64::saturating_add);
    let unpacked = layers
        .iter()
        .map(|l| l.size)
        .fold(0u64, u64::saturating_add)
        .saturating_mul(2);
    download.saturating_add(unpacked)
}

/// A blob being downloaded into `tmp/partial-<hex>`, hashed as it is written. What an earlier
/// attempt left there is kept and hashed again (a sha256 state cannot be saved, its input can),
/// so the download goes on from `have`.
struct Partial {
    file: File,
    hasher: Sha256,
    /// Bytes on disk and hashed.
    have: u64,
}

impl Partial {
    /// Open (or create) the partial file of a blob of `size` bytes. Longer than the blob: not
    /// this blob's beginning, so start over.
    fn open(path: &Path, size: u64) -> io::Result<Partial> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let mut partial = Partial {
            have: file.metadata()?.len(),
            file,
            hasher: Sha256::new(),
        };
        if partial.have > size {
            partial.start_over()?;
        } else if partial.have > 0 {
            let read = io::copy(
                &mut (&mut partial.file).take(partial.have),
                &mut partial.hasher,
            )?;
            if read != partial.have {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the partial download shrank while being read",
                ));
            }
        }
        Ok(partial)
    }

    /// Forget what is there (the registry sends the whole blob again).
    fn start_over(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.hasher = Sha256::new();
        self.have = 0;
        Ok(())
    }

    /// Write `bytes` at the end (the file position is always `have`).
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.hasher.update(bytes);
        self.have += bytes.len() as u64;
        Ok(())
    }

    /// Delete the partial file: its content cannot become the blob.
    fn discard(self, path: &Path) {
        drop(self.file);
        let _ = fs::remove_file(path);
    }

    /// Whole blob on disk: check it hashes to `digest` and sync it; otherwise delete it.
    fn verify(self, path: &Path, digest: &Digest) -> Result<(), BlobError> {
        let Partial { file, hasher, .. } = self;
        let actual = Digest::from_sha256(hasher.finalize().into());
        if actual != *digest {
            drop(file);
            let _ = fs::remove_file(path);
            return Err(BlobError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        file.sync_all().map_err(|source| BlobError::Io {
            digest: digest.clone(),
            path: path.to_path_buf(),
            source,
        })
    }
}

/// How a blob download goes on after the registry answered a GET asking for the bytes from
/// `done` on (no Range header when `done` is 0).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// The body continues the partial file.
    Append,
    /// The body is the whole blob (200: the registry ignored the Range): start over.
    StartOver,
}

/// An answer that cannot give the blob (the text says what came instead).
#[derive(Debug, Clone, PartialEq, Eq)]
enum BadAnswer {
    /// 206 for another range than asked: the pull fails, the partial file is kept.
    Range(String),
    /// A body that would not end at the blob's size: the partial file cannot be trusted.
    Length(String),
}

fn answer(
    status: u16,
    content_range: Option<&str>,
    content_length: Option<u64>,
    done: u64,
    size: u64,
) -> Result<Answer, BadAnswer> {
    let next = if status == 206 {
        let range = content_range.unwrap_or_default();
        if !range.starts_with(&format!("bytes {done}-")) {
            return Err(BadAnswer::Range(format!(
                "Content-Range {range:?} for a request from byte {done}"
            )));
        }
        Answer::Append
    } else if done > 0 {
        Answer::StartOver
    } else {
        Answer::Append
    };
    let from = if next == Answer::StartOver { 0 } else { done };
    match content_length {
        Some(len) if from.saturating_add(len) != size => Err(BadAnswer::Length(format!(
            "{} bytes",
            from.saturating_add(len)
        ))),
        _ => Ok(next),
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
        self.document(
            what,
            bytes,
            expected.or(header_digest.as_ref()),
            expected_size,
            content_type,
        )
    }

    /// A fetched manifest or index checked: its sha256 against `expected` (the descriptor or
    /// digest pulled, else the registry's `Docker-Content-Digest`), its size against
    /// `expected_size`, and whether it is an index or a manifest.
    fn document(
        &self,
        what: String,
        bytes: Vec<u8>,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        content_type: Option<String>,
    ) -> Result<Document, PullError> {
        let actual = Digest::of(&bytes);
        if let Some(expected) = expected {
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
        let partial: BTreeMap<String, u64> = self.store.partial_downloads().into_iter().collect();
        let needed = space_needed(m.config.size, layers, &partial);
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
        let path = self
            .store
            .tmp
            .join(format!("{PARTIAL_PREFIX}{}", d.digest.hex()));
        let mut partial = Partial::open(&path, d.size).map_err(io_err(&path))?;
        let resumed_from = partial.have;
        let mut fetched = 0u64;
        let mut attempt = 0u32;
        let mut buf = vec![0u8; COPY_BUFFER];
        let chunk = match self.opts.rate_limit {
            Some(rate) => usize::try_from(rate / 8)
                .unwrap_or(COPY_BUFFER)
                .clamp(1024, COPY_BUFFER),
            None => COPY_BUFFER,
        };
        if resumed_from > 0 {
            tracing::info!(reference = self.reference, digest = %d.digest, from = resumed_from, size = d.size, "resuming layer download");
        }
        let blob_length = |got: String| PullError::BlobLength {
            reference: self.reference.to_owned(),
            digest: d.digest.clone(),
            expected: d.size,
            got,
        };
        while partial.have < d.size {
            let what = format!("blob {}", d.digest);
            let outcome = session.get(&what, &format!("blobs/{}", d.digest), None, partial.have);
            let resp = match outcome {
                Ok(r) => r,
                Err(e) if e.is_unreachable() && attempt < self.opts.retries => {
                    tracing::warn!(reference = self.reference, error = %e, "registry unreachable; retrying");
                    self.backoff(&mut attempt);
                    continue;
                }
                Err(e) => return Err(self.registry_err(e)),
            };
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let content_range = header("content-range");
            let content_length = header("content-length").and_then(|v| v.trim().parse().ok());
            match answer(
                resp.status().as_u16(),
                content_range.as_deref(),
                content_length,
                partial.have,
                d.size,
            ) {
                Ok(Answer::Append) => {}
                Ok(Answer::StartOver) => {
                    tracing::info!(reference = self.reference, digest = %d.digest, "registry does not resume; downloading the blob again");
                    partial.start_over().map_err(io_err(&path))?;
                }
                Err(BadAnswer::Range(got)) => return Err(blob_length(got)),
                Err(BadAnswer::Length(got)) => {
                    partial.discard(&path);
                    return Err(blob_length(got));
                }
            }
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
                if partial.have + n as u64 > d.size {
                    partial.discard(&path);
                    return Err(PullError::Corrupt {
                        reference: self.reference.to_owned(),
                        source: BlobError::TooLong {
                            digest: d.digest.clone(),
                            expected: d.size,
                        },
                    });
                }
                partial.append(&buf[..n]).map_err(io_err(&path))?;
                fetched += n as u64;
                this_call += n as u64;
                progress(&PullProgress::Layer {
                    digest: d.digest.clone(),
                    done: partial.have,
                    size: d.size,
                });
                if let Some(rate) = self.opts.rate_limit.filter(|r| *r > 0) {
                    let due = Duration::from_secs_f64(this_call as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            };
            if partial.have >= d.size {
                break;
            }
            let source = broke.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed early")
            });
            partial.file.sync_data().map_err(io_err(&path))?;
            if attempt < self.opts.retries {
                tracing::warn!(reference = self.reference, digest = %d.digest, done = partial.have, size = d.size, error = %source, "layer download broke off; resuming");
                self.backoff(&mut attempt);
                continue;
            }
            return Err(PullError::Interrupted {
                reference: self.reference.to_owned(),
                digest: d.digest.clone(),
                done: partial.have,
                size: d.size,
                source,
            });
        }
        partial
            .verify(&path, &d.digest)
            .and_then(|()| blobs.install_hashed(&d.digest, &path))
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

#[cfg(test)]
mod tests;
