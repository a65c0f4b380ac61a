//! The store: refs.json (names → manifest digests), blobs, lazily unpacked root filesystems.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::blobs::{BlobError, BlobStore};
use super::digest::Digest;
use super::fsutil::{self, TempPath};
use super::oci::{ConfigBlob, Manifest, Platform, MAX_JSON_SIZE};
use super::reference::ImageRef;
use super::unpack::{self, UnpackError};
use super::{ImageConfig, ResolvedImage};

/// File name of the name → digest index in the store root.
pub const REFS_FILE: &str = "refs.json";
const REFS_VERSION: u32 = 1;

/// What went wrong reading or updating the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("image store index {path} is corrupt: {source}")]
    CorruptRefs {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "image store index {path} has version {version}; this skiff reads version {REFS_VERSION}"
    )]
    RefsVersion { path: PathBuf, version: u32 },
    #[error("image store index {path}: entry {key:?}: {reason}")]
    BadRefsEntry {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("image {reference}: {source}")]
    Blob {
        reference: String,
        source: BlobError,
    },
    #[error("image {reference}: {what} {digest} is invalid: {source}")]
    InvalidJson {
        reference: String,
        what: &'static str,
        digest: Digest,
        source: serde_json::Error,
    },
    #[error("image {reference}: manifest {digest} is unusable: {reason}")]
    BadManifest {
        reference: String,
        digest: Digest,
        reason: String,
    },
    #[error("image {reference}: cannot unpack layer {digest}: {source}")]
    Unpack {
        reference: String,
        digest: Digest,
        source: UnpackError,
    },
}

/// An image in the store, as `skiff image ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub reference: ImageRef,
    /// Manifest digest.
    pub digest: Digest,
    /// Bytes of manifest, config and (compressed) layers.
    pub size: u64,
    pub platform: Platform,
    /// Seconds since the Unix epoch, by the importing machine's clock (which may not be set).
    pub imported_at: u64,
}

/// One name in refs.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RefRecord {
    pub digest: Digest,
    /// `os/arch[/variant]`.
    pub platform: String,
    pub size: u64,
    pub imported_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct RefsFile {
    pub version: u32,
    /// Canonical reference (`registry/repository:tag`) → image.
    #[serde(default)]
    pub images: BTreeMap<String, RefRecord>,
}

/// The local image store under one root directory (the agent uses `{data_dir}/images`):
///
/// ```text
/// refs.json               canonical ref -> manifest digest, platform, size, import time
/// blobs/sha256/<hex>      manifests, configs, layers: verified, read-only, content-addressed
/// rootfs/<manifest hex>/  unpacked root filesystem, renamed into place only when complete
/// tmp/                    <pid>.<n>.<what>: temp files and dirs on the same file system
/// locks/                  flock files: refs.lock (refs.json updates), rootfs-<hex>.lock
/// ```
///
/// Synchronous: the agent calls it from `spawn_blocking`. Several processes may use one store
/// at once (the agent resolves while `skiff image import` writes): refs.json is replaced
/// atomically and re-read on every call, updates to it are serialised by a lock, and blobs and
/// rootfs directories only appear under their final names complete.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    pub(crate) blobs: BlobStore,
    pub(crate) tmp: PathBuf,
    rootfs: PathBuf,
    locks: PathBuf,
    pub(crate) platform: Platform,
}

impl ImageStore {
    /// Open (creating its directories if needed) the store at `root`, and remove temp files
    /// left by processes that crashed.
    pub fn open(root: &Path) -> Result<ImageStore, StoreError> {
        let blobs_dir = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        let rootfs = root.join("rootfs");
        let locks = root.join("locks");
        for dir in [&blobs_dir, &tmp, &rootfs, &locks] {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        // Best effort: a reader without write access (`skiff image ls` as a user) must still
        // be able to open the store.
        if let Err(e) = fsutil::remove_stale(&tmp) {
            tracing::warn!(path = %tmp.display(), error = %e, "cannot clean up the store's temp dir");
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
            blobs: BlobStore::new(blobs_dir, tmp.clone()),
            tmp,
            rootfs,
            locks,
            platform: Platform::host(),
        })
    }

    /// Import and check images for `platform` instead of this machine's (to prepare a store
    /// for another device, e.g. an SD-card image built on a workstation).
    pub fn with_platform(mut self, platform: Platform) -> ImageStore {
        self.platform = platform;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The platform images are selected and checked for.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The store's `locks/` directory.
    pub(crate) fn locks_dir(&self) -> &Path {
        &self.locks
    }

    /// The blob store: the seam where the registry puller writes verified blobs.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Find `r` (by digest when it pins one, else by its canonical name) and make sure its root
    /// filesystem is unpacked. `None`: no such image in the store.
    pub fn resolve(&self, r: &ImageRef) -> Result<Option<ResolvedImage>, StoreError> {
        let Some(digest) = self.lookup(r)? else {
            return Ok(None);
        };
        let reference = r.to_string();
        let (manifest, config) = self.load_image(&reference, &digest)?;
        let rootfs = self.ensure_rootfs(&reference, &digest, &manifest, &config)?;
        Ok(Some(ResolvedImage {
            reference,
            digest: digest.to_string(),
            rootfs,
            config: config.image_config(),
        }))
    }

    /// The image config of `r`, without unpacking anything.
    pub fn config(&self, r: &ImageRef) -> Result<Option<ImageConfig>, StoreError> {
        let Some(digest) = self.lookup(r)? else {
            return Ok(None);
        };
        let (_, config) = self.load_image(&r.to_string(), &digest)?;
        Ok(Some(config.image_config()))
    }

    /// The manifest digest `r` stands for, from refs.json as it is now. A digest reference
    /// matches any stored image with that manifest digest (the content is the same whatever
    /// it is called); its tag, if any, is ignored, as Docker does.
    /// A reference pulled by the digest of an image index is stored under that reference and
    /// points at the platform's manifest: its own name is looked up first.
    pub(crate) fn lookup(&self, r: &ImageRef) -> Result<Option<Digest>, StoreError> {
        let refs = self.read_refs()?;
        if let Some(rec) = refs.images.get(&r.to_string()) {
            return Ok(Some(rec.digest.clone()));
        }
        Ok(match r.digest() {
            Some(d) => refs
                .images
                .values()
                .any(|rec| rec.digest == *d)
                .then(|| d.clone()),
            None => refs
                .images
                .get(&r.to_string())
                .map(|rec| rec.digest.clone()),
        })
    }

    /// Every named image, ordered by name.
    pub fn list(&self) -> Result<Vec<ImageEntry>, StoreError> {
        let path = self.refs_path();
        let bad = |key: &str, reason: String| StoreError::BadRefsEntry {
            path: path.clone(),
            key: key.to_owned(),
            reason,
        };
        self.read_refs()?
            .images
            .into_iter()
            .map(|(key, rec)| {
                Ok(ImageEntry {
                    reference: key.parse().map_err(|e| bad(&key, format!("{e}")))?,
                    platform: rec
                        .platform
                        .parse()
                        .map_err(|e| bad(&key, format!("{e}")))?,
                    digest: rec.digest,
                    size: rec.size,
                    imported_at: rec.imported_at,
                })
            })
            .collect()
    }

    /// Canonical ref → manifest digest (`sha256:<hex>`) of every named image: what the agent's
    /// core checks a desired state against.
    pub fn catalog(&self) -> Result<BTreeMap<String, String>, StoreError> {
        Ok(self
            .read_refs()?
            .images
            .into_iter()
            .map(|(key, rec)| (key, rec.digest.to_string()))
            .collect())
    }

    /// Remove the name `r` (for a digest reference: the names of that repository pointing at
    /// that digest, restricted to its tag if it has one). Blobs and the unpacked rootfs stay
    /// until garbage collection, which knows what running tasks still use. Returns whether a
    /// name was removed.
    pub fn remove(&self, r: &ImageRef) -> Result<bool, StoreError> {
        let lock_path = self.locks.join("refs.lock");
        let _lock = fsutil::lock_exclusive(&lock_path).map_err(io_err(&lock_path))?;
        let mut refs = self.read_refs()?;
        let keys: Vec<String> = match r.digest() {
            None => vec![r.to_string()],
            Some(digest) => refs
                .images
                .iter()
                .filter(|(key, rec)| {
                    rec.digest == *digest
                        && key.parse::<ImageRef>().is_ok_and(|k| {
                            k.name() == r.name() && (r.tag().is_none() || k.tag() == r.tag())
                        })
                })
                .map(|(key, _)| key.clone())
                .collect(),
        };
        let removed = keys
            .iter()
            .filter(|key| refs.images.remove(key.as_str()).is_some())
            .count();
        if removed > 0 {
            self.write_refs(&refs)?;
            tracing::info!(reference = %r, removed, "removed image name");
        }
        Ok(removed > 0)
    }

    /// Set names to images whose blobs are all in the store, in one atomic update of refs.json.
    /// Import uses it; so will the registry puller.
    pub(crate) fn commit_refs(
        &self,
        updates: Vec<(ImageRef, RefRecord)>,
    ) -> Result<(), StoreError> {
        let lock_path = self.locks.join("refs.lock");
        let _lock = fsutil::lock_exclusive(&lock_path).map_err(io_err(&lock_path))?;
        let mut refs = self.read_refs()?;
        for (reference, record) in updates {
            refs.images.insert(reference.to_string(), record);
        }
        self.write_refs(&refs)
    }

    fn refs_path(&self) -> PathBuf {
        self.root.join(REFS_FILE)
    }

    /// refs.json as it is now on disk (another process may have changed it since last time).
    pub(crate) fn read_refs(&self) -> Result<RefsFile, StoreError> {
        let path = self.refs_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(RefsFile {
                    version: REFS_VERSION,
                    images: BTreeMap::new(),
                })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let refs: RefsFile =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::CorruptRefs {
                path: path.clone(),
                source,
            })?;
        if refs.version != REFS_VERSION {
            return Err(StoreError::RefsVersion {
                path,
                version: refs.version,
            });
        }
        Ok(refs)
    }

    /// Replace refs.json; the caller holds `locks/refs.lock`.
    pub(crate) fn write_refs_locked(&self, refs: &RefsFile) -> Result<(), StoreError> {
        self.write_refs(refs)
    }

    /// The `rootfs/` directory.
    pub(crate) fn rootfs_dir(&self) -> &Path {
        &self.rootfs
    }

    fn write_refs(&self, refs: &RefsFile) -> Result<(), StoreError> {
        let path = self.refs_path();
        let mut bytes =
            serde_json::to_vec_pretty(refs).map_err(|source| StoreError::CorruptRefs {
                path: path.clone(),
                source,
            })?;
        bytes.push(b'\n');
        fsutil::write_atomic(&path, &self.tmp, &bytes).map_err(io_err(&path))
    }

    /// Manifest and config of a stored image.
    pub(crate) fn load_image(
        &self,
        reference: &str,
        digest: &Digest,
    ) -> Result<(Manifest, ConfigBlob), StoreError> {
        let blob_err = |source| StoreError::Blob {
            reference: reference.to_owned(),
            source,
        };
        let json_err = |what, digest: &Digest| {
            let digest = digest.clone();
            move |source| StoreError::InvalidJson {
                reference: reference.to_owned(),
                what,
                digest,
                source,
            }
        };
        let bytes = self
            .blobs
            .read_bounded(digest, MAX_JSON_SIZE, "a manifest")
            .map_err(blob_err)?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(json_err("manifest", digest))?;
        let bytes = self
            .blobs
            .read_bounded(&manifest.config.digest, MAX_JSON_SIZE, "an image config")
            .map_err(blob_err)?;
        let config: ConfigBlob =
            serde_json::from_slice(&bytes).map_err(json_err("config", &manifest.config.digest))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(StoreError::BadManifest {
                reference: reference.to_owned(),
                digest: digest.clone(),
                reason: format!(
                    "{} layers but {} diff_ids in its config",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        Ok((manifest, config))
    }

    /// Where the root filesystem of manifest `digest` is (or will be) unpacked.
    pub fn rootfs_path(&self, digest: &Digest) -> PathBuf {
        self.rootfs.join(digest.hex())
    }

    /// The unpacked rootfs of an image, unpacking it first if this is its first use. Unpacking
    /// happens in a temp dir renamed into place once complete and synced, so a rootfs that
    /// exists is whole; a per-image lock keeps concurrent resolvers from unpacking it twice.
    fn ensure_rootfs(
        &self,
        reference: &str,
        digest: &Digest,
        manifest: &Manifest,
        config: &ConfigBlob,
    ) -> Result<PathBuf, StoreError> {
        let dest = self.rootfs_path(digest);
        let exists = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
        if exists(&dest) {
            return Ok(dest);
        }
        let lock_path = self.locks.join(format!("rootfs-{}.lock", digest.hex()));
        let _lock = fsutil::lock_exclusive(&lock_path).map_err(io_err(&lock_path))?;
        if exists(&dest) {
            return Ok(dest); // another resolver finished it while we waited
        }

        let started = Instant::now();
        let temp = TempPath::new_dir(&self.tmp, "rootfs").map_err(io_err(&self.tmp))?;
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let blob = self
                .blobs
                .open(&layer.digest)
                .map_err(|source| StoreError::Blob {
                    reference: reference.to_owned(),
                    source,
                })?;
            unpack::unpack_layer(temp.path(), blob, &layer.media_type, Some(diff_id)).map_err(
                |source| StoreError::Unpack {
                    reference: reference.to_owned(),
                    digest: layer.digest.clone(),
                    source,
                },
            )?;
        }
        // Everything unpacked must be on disk before the rename makes the rootfs look complete.
        let dir = File::open(temp.path()).map_err(io_err(temp.path()))?;
        nix::unistd::syncfs(dir.as_raw_fd())
            .map_err(|errno| io_err(temp.path())(io::Error::from(errno)))?;
        drop(dir);
        temp.persist(&dest).map_err(io_err(&dest))?;
        fsutil::sync_dir(&self.rootfs).map_err(io_err(&self.rootfs))?;
        tracing::info!(
            reference,
            %digest,
            layers = manifest.layers.len(),
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "unpacked image rootfs"
        );
        Ok(dest)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it: devices boot without an RTC).
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}
