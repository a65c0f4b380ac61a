//! `skiff image import`: OCI image layouts (a directory, or a tar / tar.gz of one) into the
//! store. Every blob is checked against its descriptor (sha256 and size) on its way in; names
//! are set in refs.json only once every image of the layout is complete in the store, so a
//! failed import names nothing.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde::Deserialize;

use super::blobs::BlobError;
use super::digest::Digest;
use super::fsutil::TempPath;
use super::oci::{
    self, ConfigBlob, Descriptor, Index, Manifest, ManifestKind, Platform,
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, MAX_INDEX_DEPTH, MAX_JSON_SIZE, MAX_LAYERS,
};
use super::reference::{valid_tag, ImageRef, RefError};
use super::store::{now_unix, ImageStore, RefRecord, StoreError};
use super::unpack;

/// Largest `oci-layout` file accepted.
const MAX_OCI_LAYOUT_SIZE: u64 = 4096;

/// An image an import named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    pub reference: ImageRef,
    /// Manifest digest.
    pub digest: Digest,
    pub platform: Platform,
    /// Bytes of manifest, config and (compressed) layers.
    pub size: u64,
    /// Blobs this import added to the store (0 when re-importing).
    pub blobs_written: usize,
}

/// Why an import failed. `path` is the layout (directory or archive) being imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot read layout archive {path}: {source}")]
    Archive { path: PathBuf, source: io::Error },
    #[error("{path} is not an OCI image layout: {reason}")]
    NotALayout { path: PathBuf, reason: String },
    #[error("{path}: OCI layout version {version:?} is not supported (only 1.x)")]
    LayoutVersion { path: PathBuf, version: String },
    #[error("{path}: {what} is larger than {max} bytes")]
    TooLarge {
        path: PathBuf,
        what: String,
        max: u64,
    },
    #[error("{path}: invalid {what}: {source}")]
    InvalidJson {
        path: PathBuf,
        what: String,
        source: serde_json::Error,
    },
    #[error("{path}: blob {digest} is missing")]
    BlobMissing { path: PathBuf, digest: Digest },
    #[error("{path}: {source}")]
    Blob { path: PathBuf, source: BlobError },
    #[error("{path}: {what} {digest} has unsupported media type {media_type:?}")]
    UnknownMediaType {
        path: PathBuf,
        what: &'static str,
        digest: Digest,
        media_type: String,
    },
    #[error("{path}: manifest {digest} has {count} layers, more than {MAX_LAYERS}")]
    TooManyLayers {
        path: PathBuf,
        digest: Digest,
        count: usize,
    },
    #[error("{path}: image indexes nest deeper than {MAX_INDEX_DEPTH} levels")]
    IndexTooDeep { path: PathBuf },
    #[error("{path}: the layout holds no images")]
    NoImages { path: PathBuf },
    #[error("{path}: no image for this machine's platform {wanted}; the layout has: {available}")]
    NoMatchingPlatform {
        path: PathBuf,
        wanted: String,
        available: String,
    },
    #[error("{path}: image {digest} is for {found}, not for this machine's platform {wanted}")]
    WrongPlatform {
        path: PathBuf,
        digest: Digest,
        found: String,
        wanted: String,
    },
    #[error("{path}: config {digest} lists {diff_ids} diff_ids for {layers} layers")]
    DiffIdCount {
        path: PathBuf,
        digest: Digest,
        diff_ids: usize,
        layers: usize,
    },
    #[error("{path}: image {digest} has no name (no {ANNOTATION_REF_NAME} annotation): name it with --tag")]
    Unnamed { path: PathBuf, digest: Digest },
    #[error("{path}: image {digest} is named only by the tag {tag:?}, without a repository: give one with --tag (e.g. --tag busybox)")]
    BareTag {
        path: PathBuf,
        digest: Digest,
        tag: String,
    },
    #[error("--tag {tag} names one image but {path} holds {count}: give a repository without a tag to name each by its own tag")]
    TagForMany {
        path: PathBuf,
        tag: String,
        count: usize,
    },
    #[error("--tag {tag} must not pin a digest: the digest comes from the layout")]
    TagWithDigest { tag: String },
    #[error("{path}: image {digest} has an invalid name {name:?}: {source}")]
    InvalidName {
        path: PathBuf,
        digest: Digest,
        name: String,
        source: Box<RefError>,
    },
    #[error("{path}: image {digest} is named {name:?}, which pins a digest: a name must be a tag")]
    NameWithDigest {
        path: PathBuf,
        digest: Digest,
        name: String,
    },
    #[error("{path}: {reference} names two different images ({first} and {second})")]
    DuplicateName {
        path: PathBuf,
        reference: String,
        first: Digest,
        second: Digest,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An OCI image layout on disk: the user's directory, or a staging dir a tar was read into.
struct Layout<'a> {
    dir: PathBuf,
    /// What the user named (for messages).
    source: &'a Path,
    /// Blobs may be moved out of `dir` instead of copied (it is our staging dir).
    staged: bool,
}

/// An image checked and ready to be copied into the store.
struct Planned {
    reference: ImageRef,
    manifest: Descriptor,
    manifest_bytes: Vec<u8>,
    layers: Vec<Descriptor>,
    config: Descriptor,
    config_bytes: Vec<u8>,
    platform: Platform,
}

impl ImageStore {
    /// Import the images of the OCI image layout at `path` (a directory, or a tar or tar.gz of
    /// one). Each manifest of `index.json` is named by its `org.opencontainers.image.ref.name`
    /// annotation (or containerd's `io.containerd.image.name`): a full reference is used as is,
    /// a bare tag (`latest`, `1.36`) takes its repository from `tag`. When the layout holds one
    /// image, `tag` names it outright (`--tag busybox` keeps the annotation's tag, `--tag
    /// busybox:1.36` sets both). An index for several platforms yields this machine's image.
    ///
    /// Idempotent: blobs already in the store are not rewritten; names are (re)set.
    pub fn import(
        &self,
        path: &Path,
        tag: Option<&ImageRef>,
    ) -> Result<Vec<ImportedImage>, ImportError> {
        if let Some(tag) = tag.filter(|t| t.digest().is_some()) {
            return Err(ImportError::TagWithDigest {
                tag: tag.to_string(),
            });
        }
        let meta = fs::metadata(path).map_err(|source| ImportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let staging;
        let layout = if meta.is_dir() {
            Layout {
                dir: path.to_path_buf(),
                source: path,
                staged: false,
            }
        } else {
            staging = self.stage_archive(path)?;
            Layout {
                dir: staging.path().to_path_buf(),
                source: path,
                staged: true,
            }
        };
        layout.check_version()?;
        let index: Index = layout.parse(
            &layout.read_file("index.json", MAX_JSON_SIZE)?,
            "index.json".to_owned(),
        )?;
        if index.manifests.is_empty() {
            return Err(ImportError::NoImages {
                path: path.to_path_buf(),
            });
        }

        // One image per name: entries sharing a name (or all unnamed ones) are alternatives
        // for different platforms.
        let mut groups: Vec<(Option<String>, Vec<Descriptor>)> = Vec::new();
        for d in index.manifests {
            let name = d
                .annotations
                .get(ANNOTATION_CONTAINERD_NAME)
                .or_else(|| d.annotations.get(ANNOTATION_REF_NAME))
                .cloned();
            match groups.iter_mut().find(|(n, _)| *n == name) {
                Some((_, ds)) => ds.push(d),
                None => groups.push((name, vec![d])),
            }
        }
        let count = groups.len();
        if let Some(tag) = tag.filter(|t| count > 1 && t.has_explicit_tag()) {
            return Err(ImportError::TagForMany {
                path: path.to_path_buf(),
                tag: tag.to_string(),
                count,
            });
        }

        let mut planned: Vec<Planned> = Vec::with_capacity(count);
        for (name, candidates) in groups {
            let mut flat = Vec::new();
            self.flatten(&layout, &candidates, 0, &mut flat)?;
            let chosen = self.choose(&layout, &flat)?;
            let reference = name_image(&layout, tag, name.as_deref(), count, &chosen.digest)?;
            if let Some(other) = planned.iter().find(|p| p.reference == reference) {
                if other.manifest.digest != chosen.digest {
                    return Err(ImportError::DuplicateName {
                        path: path.to_path_buf(),
                        reference: reference.to_string(),
                        first: other.manifest.digest.clone(),
                        second: chosen.digest.clone(),
                    });
                }
                continue;
            }
            planned.push(self.check_image(&layout, reference, chosen)?);
        }

        let mut imported = Vec::with_capacity(planned.len());
        let mut records = Vec::with_capacity(planned.len());
        let now = now_unix();
        for p in planned {
            let imported_image = self.copy_image(&layout, p)?;
            records.push((
                imported_image.reference.clone(),
                RefRecord {
                    digest: imported_image.digest.clone(),
                    platform: imported_image.platform.to_string(),
                    size: imported_image.size,
                    imported_at: now,
                },
            ));
            imported.push(imported_image);
        }
        self.commit_refs(records)?;
        for i in &imported {
            tracing::info!(
                reference = %i.reference,
                digest = %i.digest,
                platform = %i.platform,
                blobs_written = i.blobs_written,
                "imported image"
            );
        }
        Ok(imported)
    }

    /// Replace image indexes among `descriptors` by their entries, recursively.
    fn flatten(
        &self,
        layout: &Layout<'_>,
        descriptors: &[Descriptor],
        depth: usize,
        out: &mut Vec<Descriptor>,
    ) -> Result<(), ImportError> {
        for d in descriptors {
            if ManifestKind::of(&d.media_type) == Some(ManifestKind::Index) {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(ImportError::IndexTooDeep {
                        path: layout.source.to_path_buf(),
                    });
                }
                let bytes = layout.read_blob(d, MAX_JSON_SIZE)?;
                let nested: Index = layout.parse(&bytes, format!("image index {}", d.digest))?;
                self.flatten(layout, &nested.manifests, depth + 1, out)?;
            } else {
                out.push(d.clone());
            }
        }
        Ok(())
    }

    /// The candidate for this machine: the only one if it names no platform (its config is
    /// checked later), else the best platform match.
    fn choose(
        &self,
        layout: &Layout<'_>,
        candidates: &[Descriptor],
    ) -> Result<Descriptor, ImportError> {
        if let [only] = candidates {
            if only.platform.is_none() {
                return Ok(only.clone());
            }
        }
        oci::select_platform(&self.platform, candidates)
            .cloned()
            .ok_or_else(|| ImportError::NoMatchingPlatform {
                path: layout.source.to_path_buf(),
                wanted: self.platform.to_string(),
                available: oci::list_platforms(candidates),
            })
    }

    /// Read and check manifest and config of the chosen image: media types, sizes, layer
    /// count, platform. Nothing is written yet.
    fn check_image(
        &self,
        layout: &Layout<'_>,
        reference: ImageRef,
        chosen: Descriptor,
    ) -> Result<Planned, ImportError> {
        let path = || layout.source.to_path_buf();
        let unknown = |what, d: &Descriptor, media_type: &str| ImportError::UnknownMediaType {
            path: path(),
            what,
            digest: d.digest.clone(),
            media_type: media_type.to_owned(),
        };
        if ManifestKind::of(&chosen.media_type) != Some(ManifestKind::Manifest) {
            return Err(unknown("manifest", &chosen, &chosen.media_type));
        }
        let manifest_bytes = layout.read_blob(&chosen, MAX_JSON_SIZE)?;
        let manifest: Manifest =
            layout.parse(&manifest_bytes, format!("manifest {}", chosen.digest))?;
        if let Some(mt) = &manifest.media_type {
            if ManifestKind::of(mt) != Some(ManifestKind::Manifest) {
                return Err(unknown("manifest", &chosen, mt));
            }
        }
        if !oci::is_config(&manifest.config.media_type) {
            return Err(unknown(
                "config",
                &manifest.config,
                &manifest.config.media_type,
            ));
        }
        if manifest.layers.len() > MAX_LAYERS {
            return Err(ImportError::TooManyLayers {
                path: path(),
                digest: chosen.digest.clone(),
                count: manifest.layers.len(),
            });
        }
        for layer in &manifest.layers {
            match unpack::compression_of(&layer.media_type) {
                Ok(_) => {}
                Err(_) => return Err(unknown("layer", layer, &layer.media_type)),
            }
        }
        let config_bytes = layout.read_blob(&manifest.config, MAX_JSON_SIZE)?;
        let config: ConfigBlob = layout.parse(
            &config_bytes,
            format!("image config {}", manifest.config.digest),
        )?;
        let platform = config.platform();
        if self.platform.match_score(&platform).is_none() {
            return Err(ImportError::WrongPlatform {
                path: path(),
                digest: chosen.digest.clone(),
                found: platform.to_string(),
                wanted: self.platform.to_string(),
            });
        }
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImportError::DiffIdCount {
                path: path(),
                digest: manifest.config.digest.clone(),
                diff_ids: config.rootfs.diff_ids.len(),
                layers: manifest.layers.len(),
            });
        }
        Ok(Planned {
            reference,
            manifest: chosen,
            manifest_bytes,
            layers: manifest.layers,
            config: manifest.config,
            config_bytes,
            platform,
        })
    }

    /// Copy an image's blobs into the store: layers, then config, then the manifest, so a
    /// manifest in the store always has its children.
    fn copy_image(&self, layout: &Layout<'_>, p: Planned) -> Result<ImportedImage, ImportError> {
        let blob_err = |source| ImportError::Blob {
            path: layout.source.to_path_buf(),
            source,
        };
        let mut written = 0;
        for layer in &p.layers {
            written += usize::from(self.copy_blob(layout, layer)?);
        }
        written += usize::from(
            self.blobs
                .write_verified(&p.config.digest, p.config.size, &mut &p.config_bytes[..])
                .map_err(blob_err)?,
        );
        written += usize::from(
            self.blobs
                .write_verified(
                    &p.manifest.digest,
                    p.manifest.size,
                    &mut &p.manifest_bytes[..],
                )
                .map_err(blob_err)?,
        );
        let size = p.layers.iter().map(|l| l.size).fold(
            p.config.size.saturating_add(p.manifest.size),
            u64::saturating_add,
        );
        Ok(ImportedImage {
            reference: p.reference,
            digest: p.manifest.digest,
            platform: p.platform,
            size,
            blobs_written: written,
        })
    }

    fn copy_blob(&self, layout: &Layout<'_>, d: &Descriptor) -> Result<bool, ImportError> {
        if self.blobs.contains(&d.digest, d.size) {
            return Ok(false);
        }
        let src = layout.blob_path(&d.digest);
        let blob_err = |source| ImportError::Blob {
            path: layout.source.to_path_buf(),
            source,
        };
        if layout.staged {
            if !src.is_file() {
                return Err(layout.missing(&d.digest));
            }
            return self.blobs.adopt(&d.digest, d.size, &src).map_err(blob_err);
        }
        let mut file = layout.open_blob(&d.digest)?;
        self.blobs
            .write_verified(&d.digest, d.size, &mut file)
            .map_err(blob_err)
    }

    /// Read the layout files of a tar (or gzip'd tar) into a staging dir under the store's
    /// `tmp/`: `oci-layout`, `index.json` and `blobs/sha256/<hex>`, nothing else. Blobs are
    /// then verified and moved, not copied, into the store.
    fn stage_archive(&self, path: &Path) -> Result<TempPath, ImportError> {
        let archive_err = |source| ImportError::Archive {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(|source| ImportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let gzipped = reader
            .fill_buf()
            .map_err(archive_err)?
            .starts_with(&[0x1f, 0x8b]);
        let input: Box<dyn Read> = if gzipped {
            Box::new(MultiGzDecoder::new(reader))
        } else {
            Box::new(reader)
        };
        let staging = TempPath::new_dir(&self.tmp, "import").map_err(|source| ImportError::Io {
            path: self.tmp.clone(),
            source,
        })?;
        let blobs_dir = staging.path().join("blobs").join("sha256");
        fs::create_dir_all(&blobs_dir).map_err(|source| ImportError::Io {
            path: blobs_dir.clone(),
            source,
        })?;

        let mut archive = tar::Archive::new(input);
        for entry in archive.entries().map_err(archive_err)? {
            let mut entry = entry.map_err(archive_err)?;
            if !matches!(
                entry.header().entry_type(),
                tar::EntryType::Regular | tar::EntryType::Continuous
            ) {
                continue;
            }
            let raw = entry.path_bytes().into_owned();
            let parts: Vec<&[u8]> = raw
                .split(|b| *b == b'/')
                .filter(|c| !c.is_empty() && *c != b".")
                .collect();
            let (dest, max) = match parts.as_slice() {
                [b"oci-layout"] => (staging.path().join("oci-layout"), MAX_OCI_LAYOUT_SIZE),
                [b"index.json"] => (staging.path().join("index.json"), MAX_JSON_SIZE),
                [b"blobs", b"sha256", hex] => {
                    match std::str::from_utf8(hex).ok().map(Digest::from_hex) {
                        Some(Ok(d)) => (blobs_dir.join(d.hex()), u64::MAX),
                        _ => continue,
                    }
                }
                _ => {
                    tracing::debug!(entry = %String::from_utf8_lossy(&raw), "ignoring archive entry");
                    continue;
                }
            };
            if entry.size() > max {
                return Err(ImportError::TooLarge {
                    path: path.to_path_buf(),
                    what: String::from_utf8_lossy(&raw).into_owned(),
                    max,
                });
            }
            let mut out = File::create(&dest).map_err(|source| ImportError::Io {
                path: dest.clone(),
                source,
            })?;
            io::copy(&mut entry, &mut out).map_err(archive_err)?;
        }
        Ok(staging)
    }
}

/// The name of an image of a layout holding `count` images (see [`ImageStore::import`]).
fn name_image(
    layout: &Layout<'_>,
    tag: Option<&ImageRef>,
    annotation: Option<&str>,
    count: usize,
    digest: &Digest,
) -> Result<ImageRef, ImportError> {
    let path = || layout.source.to_path_buf();
    let bare_tag = annotation.filter(|n| !n.contains(['/', ':', '@']) && valid_tag(n));
    let full_name = |name: &str| -> Result<ImageRef, ImportError> {
        let r: ImageRef = name.parse().map_err(|source| ImportError::InvalidName {
            path: path(),
            digest: digest.clone(),
            name: name.to_owned(),
            source: Box::new(source),
        })?;
        if r.digest().is_some() {
            return Err(ImportError::NameWithDigest {
                path: path(),
                digest: digest.clone(),
                name: name.to_owned(),
            });
        }
        Ok(r)
    };
    let with_tag = |t: &ImageRef, bare: &str| {
        t.with_tag(bare).map_err(|source| ImportError::InvalidName {
            path: path(),
            digest: digest.clone(),
            name: bare.to_owned(),
            source: Box::new(source),
        })
    };
    match (tag, bare_tag, annotation) {
        (Some(t), _, _) if count == 1 && t.has_explicit_tag() => Ok(t.clone()),
        (Some(t), Some(bare), _) => with_tag(t, bare),
        (Some(t), None, _) if count == 1 => Ok(t.clone()),
        (None, Some(bare), _) => Err(ImportError::BareTag {
            path: path(),
            digest: digest.clone(),
            tag: bare.to_owned(),
        }),
        (_, None, Some(name)) => full_name(name),
        (_, None, None) => Err(ImportError::Unnamed {
            path: path(),
            digest: digest.clone(),
        }),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciLayoutFile {
    image_layout_version: String,
}

impl Layout<'_> {
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(digest.hex())
    }

    fn missing(&self, digest: &Digest) -> ImportError {
        ImportError::BlobMissing {
            path: self.source.to_path_buf(),
            digest: digest.clone(),
        }
    }

    fn open_blob(&self, digest: &Digest) -> Result<File, ImportError> {
        let blob = self.blob_path(digest);
        File::open(&blob).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                self.missing(digest)
            } else {
                ImportError::Io { path: blob, source }
            }
        })
    }

    fn check_version(&self) -> Result<(), ImportError> {
        let path = self.dir.join("oci-layout");
        if !path.is_file() {
            return Err(ImportError::NotALayout {
                path: self.source.to_path_buf(),
                reason: "it has no oci-layout file".to_owned(),
            });
        }
        let file: OciLayoutFile = self.parse(
            &self.read_file("oci-layout", MAX_OCI_LAYOUT_SIZE)?,
            "oci-layout".to_owned(),
        )?;
        if !file.image_layout_version.starts_with("1.") {
            return Err(ImportError::LayoutVersion {
                path: self.source.to_path_buf(),
                version: file.image_layout_version,
            });
        }
        Ok(())
    }

    /// A file at the layout's top (`oci-layout`, `index.json`), refusing more than `max` bytes.
    fn read_file(&self, name: &str, max: u64) -> Result<Vec<u8>, ImportError> {
        let path = self.dir.join(name);
        let io_err = |source| ImportError::Io {
            path: self.source.join(name),
            source,
        };
        let file = File::open(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                ImportError::NotALayout {
                    path: self.source.to_path_buf(),
                    reason: format!("it has no {name}"),
                }
            } else {
                io_err(source)
            }
        })?;
        let mut bytes = Vec::new();
        file.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() as u64 > max {
            return Err(ImportError::TooLarge {
                path: self.source.to_path_buf(),
                what: name.to_owned(),
                max,
            });
        }
        Ok(bytes)
    }

    /// A small blob (index, manifest, config) read whole and checked against `d`.
    fn read_blob(&self, d: &Descriptor, max: u64) -> Result<Vec<u8>, ImportError> {
        let blob_err = |source| ImportError::Blob {
            path: self.source.to_path_buf(),
            source,
        };
        if d.size > max {
            return Err(ImportError::TooLarge {
                path: self.source.to_path_buf(),
                what: format!("blob {} ({} bytes by its descriptor)", d.digest, d.size),
                max,
            });
        }
        let file = self.open_blob(&d.digest)?;
        let bytes = super::blobs::read_bounded(
            file,
            &self.blob_path(&d.digest),
            &d.digest,
            max,
            "a manifest or config",
        )
        .map_err(blob_err)?;
        let actual_size = bytes.len() as u64;
        if actual_size != d.size {
            return Err(blob_err(BlobError::SizeMismatch {
                digest: d.digest.clone(),
                expected: d.size,
                actual: actual_size,
            }));
        }
        let actual = Digest::of(&bytes);
        if actual != d.digest {
            return Err(blob_err(BlobError::DigestMismatch {
                expected: d.digest.clone(),
                actual,
            }));
        }
        Ok(bytes)
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        bytes: &[u8],
        what: String,
    ) -> Result<T, ImportError> {
        serde_json::from_slice(bytes).map_err(|source| ImportError::InvalidJson {
            path: self.source.to_path_buf(),
            what,
            source,
        })
    }
}

#[cfg(test)]
mod tests;
