//! Garbage collection (`skiff image prune`): names no task uses beyond the N most recent per
//! repository go, then — while the store's file system is below the low-water mark — unused
//! names oldest first; then every blob and rootfs no remaining name reaches is deleted.
//!
//! An image is in use when it is named in `protect` (the agent's desired tasks) or when its
//! rootfs is the lower layer of a mounted overlay (a running container); it is never removed.
//! Blobs written in the last [`BLOB_GRACE`] are kept: a pull in progress writes its layers
//! before it names the image.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::digest::Digest;
use super::fsutil::{self, TempPath};
use super::oci::{Manifest, MAX_JSON_SIZE};
use super::reference::ImageRef;
use super::store::{ImageStore, StoreError};

/// Blobs younger than this are never swept (a pull may be about to name them).
pub const BLOB_GRACE: Duration = Duration::from_secs(15 * 60);

/// What to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcPolicy {
    /// Unused names kept per repository, most recently pulled or imported first.
    pub keep_per_repository: usize,
    /// Remove unused names, oldest first, while less than this many bytes are free (0: off).
    pub low_water_bytes: u64,
    /// Only report what would be removed.
    pub dry_run: bool,
}

/// What a collection removed (or, dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub names_removed: Vec<String>,
    /// Names kept because an image in use has that manifest.
    pub in_use: Vec<String>,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub rootfs_removed: usize,
}

impl ImageStore {
    /// Collect garbage per `policy`, never touching images in `protect` or mounted.
    pub fn gc(&self, policy: &GcPolicy, protect: &[ImageRef]) -> Result<GcReport, StoreError> {
        let lock_path = self.locks_dir().join("refs.lock");
        let _lock = fsutil::lock_exclusive(&lock_path).map_err(io_err(&lock_path))?;
        let mut refs = self.read_refs()?;
        let mut in_use: BTreeSet<Digest> = self.mounted_images();
        for r in protect {
            if let Some(rec) = refs.images.get(&r.to_string()) {
                in_use.insert(rec.digest.clone());
            } else if let Some(d) = r.digest() {
                in_use.insert(d.clone());
            }
        }
        let mut report = GcReport::default();
        for (key, rec) in &refs.images {
            if in_use.contains(&rec.digest) {
                report.in_use.push(key.clone());
            }
        }

        // Keep N most recent unused names per repository.
        let mut by_repo: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        for (key, rec) in &refs.images {
            if in_use.contains(&rec.digest) {
                continue;
            }
            let repo = key
                .parse::<ImageRef>()
                .map(|r| r.name())
                .unwrap_or_else(|_| key.clone());
            by_repo
                .entry(repo)
                .or_default()
                .push((rec.imported_at, key.clone()));
        }
        let doomed = beyond_keep(by_repo, policy.keep_per_repository);
        for key in &doomed {
            refs.images.remove(key);
        }
        report.names_removed.extend(doomed);

        // Below the low-water mark: unused names, oldest first, until there is room.
        if policy.low_water_bytes > 0 {
            let unused: Vec<(u64, String, u64)> = refs
                .images
                .iter()
                .filter(|(_, rec)| !in_use.contains(&rec.digest))
                .map(|(k, rec)| (rec.imported_at, k.clone(), rec.size))
                .collect();
            for key in below_low_water(unused, self.free_bytes(), policy.low_water_bytes) {
                refs.images.remove(&key);
                report.names_removed.push(key);
            }
        }
        if policy.dry_run {
            return Ok(report);
        }
        if !report.names_removed.is_empty() {
            self.write_refs_locked(&refs)?;
        }

        // Sweep what no remaining name (or image in use) reaches.
        let mut live_manifests: BTreeSet<Digest> =
            refs.images.values().map(|r| r.digest.clone()).collect();
        live_manifests.extend(in_use.iter().cloned());
        let mut live_blobs: BTreeSet<Digest> = BTreeSet::new();
        for m in &live_manifests {
            live_blobs.insert(m.clone());
            let Ok(bytes) = self.blobs.read_bounded(m, MAX_JSON_SIZE, "a manifest") else {
                continue;
            };
            if let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) {
                live_blobs.insert(manifest.config.digest);
                live_blobs.extend(manifest.layers.into_iter().map(|l| l.digest));
            }
        }
        let blobs_dir = self.blobs.dir().to_path_buf();
        let now = SystemTime::now();
        for entry in fs::read_dir(&blobs_dir).map_err(io_err(&blobs_dir))? {
            let entry = entry.map_err(io_err(&blobs_dir))?;
            let Some(d) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            else {
                continue;
            };
            if live_blobs.contains(&d) {
                continue;
            }
            let meta = entry.metadata().map_err(io_err(&entry.path()))?;
            let young = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_none_or(|age| age < BLOB_GRACE);
            if young {
                continue;
            }
            fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
            report.blobs_removed += 1;
            report.bytes_freed = report.bytes_freed.saturating_add(meta.len());
        }
        let rootfs_dir = self.rootfs_dir().to_path_buf();
        for entry in fs::read_dir(&rootfs_dir).map_err(io_err(&rootfs_dir))? {
            let entry = entry.map_err(io_err(&rootfs_dir))?;
            let Some(d) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            else {
                continue;
            };
            if live_manifests.contains(&d) {
                continue;
            }
            // Out of sight first (rename), then removed: never a half-deleted rootfs in place.
            let temp = TempPath::new_dir(&self.tmp, "gc").map_err(io_err(&self.tmp))?;
            let target = temp.path().join("rootfs");
            fs::rename(entry.path(), &target).map_err(io_err(&entry.path()))?;
            drop(temp);
            report.rootfs_removed += 1;
        }
        tracing::info!(
            names = report.names_removed.len(),
            blobs = report.blobs_removed,
            bytes = report.bytes_freed,
            rootfs = report.rootfs_removed,
            "image garbage collected"
        );
        Ok(report)
    }

    /// Manifest digests whose rootfs is the lower layer of a mounted overlay.
    fn mounted_images(&self) -> BTreeSet<Digest> {
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        lower_rootfs(&mounts, self.rootfs_dir())
    }

    /// Bytes available to unprivileged writers on the store's file system.
    pub fn free_bytes(&self) -> u64 {
        match nix::sys::statvfs::statvfs(self.root()) {
            #[allow(clippy::useless_conversion)] // c_ulong / fsblkcnt_t differ by target
            Ok(st) => {
                u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()))
            }
            Err(_) => 0,
        }
    }
}

/// The names to remove so each repository keeps its `keep` most recent: `by_repo` maps a
/// repository to its unused names with their import times. Newest first; among names imported
/// in the same second, the one sorting last by name counts as newer (a stable order).
fn beyond_keep(by_repo: BTreeMap<String, Vec<(u64, String)>>, keep: usize) -> Vec<String> {
    let mut doomed = Vec::new();
    for (_, mut names) in by_repo {
        names.sort_by(|a, b| b.cmp(a));
        doomed.extend(names.into_iter().skip(keep).map(|(_, k)| k));
    }
    doomed
}

/// The unused names (`(imported_at, name, size)`) to remove, oldest first, until `free` plus
/// an estimate of what they free (three times their size: blobs plus unpacked rootfs) reaches
/// `low_water`.
fn below_low_water(mut unused: Vec<(u64, String, u64)>, free: u64, low_water: u64) -> Vec<String> {
    unused.sort();
    let mut freed_estimate = 0u64;
    let mut doomed = Vec::new();
    for (_, key, size) in unused {
        if free.saturating_add(freed_estimate) >= low_water {
            break;
        }
        freed_estimate = freed_estimate.saturating_add(size.saturating_mul(3));
        doomed.push(key);
    }
    doomed
}

/// Manifest digests of the rootfs directories under `rootfs_dir` that `mountinfo` (the text of
/// `/proc/self/mountinfo`) shows as an overlay's lower layer.
fn lower_rootfs(mountinfo: &str, rootfs_dir: &Path) -> BTreeSet<Digest> {
    let prefix = format!("{}/", rootfs_dir.to_string_lossy());
    mountinfo
        .lines()
        .flat_map(|l| l.split([' ', ',']))
        .filter_map(|opt| opt.strip_prefix("lowerdir="))
        .flat_map(|l| l.split(':'))
        .filter_map(|dir| dir.strip_prefix(&prefix))
        .filter_map(|hex| Digest::from_hex(hex.trim_end_matches('/')).ok())
        .collect()
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: PathBuf::from(path),
        source,
    }
}

#[cfg(test)]
mod tests;
