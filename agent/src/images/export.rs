//! `skiff image export`: an image of the store as an OCI image layout (a directory, or a tar
//! when the destination ends in `.tar`), named by its full reference, so `skiff image import`
//! on another device (or an SD-card build) gives the same digests.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::blobs::BlobError;
use super::digest::Digest;
use super::oci::{media_type, Manifest, ManifestKind, MAX_JSON_SIZE};
use super::reference::ImageRef;
use super::store::{ImageStore, StoreError};

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("image {reference} is not in the local store")]
    NotFound { reference: String },
    #[error("export to {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("export to {path}: it exists and is not an empty directory")]
    NotEmpty { path: PathBuf },
    #[error("export {reference}: {source}")]
    Blob {
        reference: String,
        source: BlobError,
    },
    #[error("export {reference}: manifest {digest} is invalid: {source}")]
    InvalidManifest {
        reference: String,
        digest: Digest,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An exported image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub digest: Digest,
    pub blobs: usize,
    pub bytes: u64,
}

impl ImageStore {
    /// Write image `r` as an OCI layout at `dest` (tar when it ends in `.tar`, else a new or
    /// empty directory). `index.json` names it by its full reference and platform.
    pub fn export(&self, r: &ImageRef, dest: &Path) -> Result<Exported, ExportError> {
        let reference = r.to_string();
        let digest = self.lookup(r)?.ok_or_else(|| ExportError::NotFound {
            reference: reference.clone(),
        })?;
        let blob_err = |source| ExportError::Blob {
            reference: reference.clone(),
            source,
        };
        let manifest_bytes = self
            .blobs
            .read_bounded(&digest, MAX_JSON_SIZE, "a manifest")
            .map_err(blob_err)?;
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|source| {
            ExportError::InvalidManifest {
                reference: reference.clone(),
                digest: digest.clone(),
                source,
            }
        })?;
        let (_, config) = self.load_image(&reference, &digest)?;
        let platform = config.platform();
        let manifest_type = manifest
            .media_type
            .clone()
            .filter(|m| ManifestKind::of(m) == Some(ManifestKind::Manifest))
            .unwrap_or_else(|| media_type::OCI_MANIFEST.to_owned());
        // The name: a digest reference keeps its tag-less form (import wants a tag).
        let name = r.without_digest().to_string();
        let mut platform_json = serde_json::json!({
            "architecture": platform.architecture,
            "os": platform.os,
        });
        if let Some(v) = &platform.variant {
            platform_json["variant"] = serde_json::json!(v);
        }
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": [{
                "mediaType": manifest_type,
                "digest": digest.to_string(),
                "size": manifest_bytes.len(),
                "annotations": {
                    "org.opencontainers.image.ref.name": name,
                    "io.containerd.image.name": name,
                },
                "platform": platform_json,
            }],
        }))
        .map_err(|source| ExportError::InvalidManifest {
            reference: reference.clone(),
            digest: digest.clone(),
            source,
        })?;
        let mut blobs: Vec<Digest> = vec![digest.clone(), manifest.config.digest.clone()];
        blobs.extend(manifest.layers.iter().map(|l| l.digest.clone()));
        blobs.dedup();
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ExportError::Io { path, source }
        };
        let mut bytes = 0u64;
        if dest.extension().is_some_and(|e| e == "tar") {
            let file = File::create(dest).map_err(io_err(dest))?;
            let mut tar = tar::Builder::new(io::BufWriter::new(file));
            let mut add = |name: &str, len: u64, src: &mut dyn io::Read| {
                let mut h = tar::Header::new_gnu();
                h.set_size(len);
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                tar.append_data(&mut h, name, src)
            };
            add("oci-layout", layout.len() as u64, &mut &layout[..]).map_err(io_err(dest))?;
            add("index.json", index.len() as u64, &mut &index[..]).map_err(io_err(dest))?;
            for d in &blobs {
                let mut f = self.blobs.open(d).map_err(blob_err)?;
                let len = f.metadata().map_err(io_err(&self.blobs.path(d)))?.len();
                add(&format!("blobs/sha256/{}", d.hex()), len, &mut f).map_err(io_err(dest))?;
                bytes += len;
            }
            let mut w = tar.into_inner().map_err(io_err(dest))?;
            w.flush().map_err(io_err(dest))?;
            w.get_ref().sync_all().map_err(io_err(dest))?;
        } else {
            if dest.exists() && fs::read_dir(dest).map_err(io_err(dest))?.next().is_some() {
                return Err(ExportError::NotEmpty {
                    path: dest.to_path_buf(),
                });
            }
            let blob_dir = dest.join("blobs").join("sha256");
            fs::create_dir_all(&blob_dir).map_err(io_err(&blob_dir))?;
            for d in &blobs {
                let to = blob_dir.join(d.hex());
                bytes += fs::copy(self.blobs.path(d), &to).map_err(io_err(&to))?;
            }
            fs::write(dest.join("oci-layout"), layout).map_err(io_err(dest))?;
            fs::write(dest.join("index.json"), &index).map_err(io_err(dest))?;
        }
        Ok(Exported {
            digest,
            blobs: blobs.len(),
            bytes,
        })
    }
}
