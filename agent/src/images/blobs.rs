//! Content-addressed blobs: `blobs/sha256/<hex>`.
//!
//! A blob only ever appears under its name complete, verified against its descriptor (digest and
//! size) and fsync'd: it is written to a temp file in the store's `tmp/` and renamed into place.
//! So a name in `blobs/` is proof of its content and is never re-hashed. This is the one way
//! into the store: OCI-layout import uses it now; the registry puller will stream verified
//! blobs through [`BlobStore::write_verified`] the same way.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::fsutil::{self, TempPath};

const COPY_BUFFER: usize = 64 * 1024;

/// What went wrong with a blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {digest}: {path}: {source}")]
    Io {
        digest: Digest,
        path: PathBuf,
        source: io::Error,
    },
    #[error("blob {digest} is missing ({path})")]
    Missing { digest: Digest, path: PathBuf },
    #[error("blob {expected} has the wrong content: its sha256 is {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} is longer than the {expected} bytes its descriptor says")]
    TooLong { digest: Digest, expected: u64 },
    #[error("blob {digest} is {size} bytes, more than the {max} allowed for {what}")]
    TooLarge {
        digest: Digest,
        what: &'static str,
        size: u64,
        max: u64,
    },
}

/// The `blobs/sha256` directory of a store, plus the store's `tmp/` for staging.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl BlobStore {
    /// `dir` is `<store>/blobs/sha256`, `tmp` the store's temp dir on the same file system.
    pub(crate) fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        Self { dir, tmp }
    }

    /// The `blobs/sha256` directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where blob `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Whether blob `digest` of `size` bytes is in the store.
    pub fn contains(&self, digest: &Digest, size: u64) -> bool {
        fs::symlink_metadata(self.path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Stream `src` into the store as blob `digest` of exactly `size` bytes. Returns whether
    /// it was written (`false`: already there, `src` left unread). Fails, leaving nothing
    /// behind, when the content does not hash to `digest` or has another length.
    pub fn write_verified(
        &self,
        digest: &Digest,
        size: u64,
        src: &mut dyn Read,
    ) -> Result<bool, BlobError> {
        if self.contains(digest, size) {
            return Ok(false);
        }
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::Io {
                digest: digest.clone(),
                path,
                source,
            }
        };
        let (temp, mut file) = TempPath::new_file(&self.tmp, "blob").map_err(io_err(&self.tmp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; COPY_BUFFER];
        let mut written: u64 = 0;
        let mut limited = src.take(size.saturating_add(1));
        loop {
            let n = match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(temp.path())(e)),
            };
            written += n as u64;
            if written > size {
                return Err(BlobError::TooLong {
                    digest: digest.clone(),
                    expected: size,
                });
            }
            let chunk = &buf[..n];
            hasher.update(chunk);
            file.write_all(chunk).map_err(io_err(temp.path()))?;
        }
        if written != size {
            return Err(BlobError::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual: written,
            });
        }
        let actual = Digest::from_sha256(hasher.finalize().into());
        if actual != *digest {
            return Err(BlobError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        file.sync_all().map_err(io_err(temp.path()))?;
        drop(file);
        self.commit(temp, digest)?;
        Ok(true)
    }

    /// Move a file already in the store's `tmp/` (staged from a layout tar) into the store as
    /// blob `digest`, after checking its size and hash: no second copy on flash.
    pub(crate) fn adopt(
        &self,
        digest: &Digest,
        size: u64,
        staged: &Path,
    ) -> Result<bool, BlobError> {
        if self.contains(digest, size) {
            return Ok(false);
        }
        let io_err = |source| BlobError::Io {
            digest: digest.clone(),
            path: staged.to_path_buf(),
            source,
        };
        let mut file = File::open(staged).map_err(io_err)?;
        let actual_size = file.metadata().map_err(io_err)?.len();
        if actual_size != size {
            return Err(BlobError::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual: actual_size,
            });
        }
        let mut hasher = Sha256::new();
        io::copy(&mut file, &mut hasher).map_err(io_err)?;
        let actual = Digest::from_sha256(hasher.finalize().into());
        if actual != *digest {
            return Err(BlobError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        file.sync_all().map_err(io_err)?;
        let dest = self.path(digest);
        fs::rename(staged, &dest).map_err(io_err)?;
        fsutil::sync_dir(&self.dir).map_err(|source| BlobError::Io {
            digest: digest.clone(),
            path: self.dir.clone(),
            source,
        })?;
        Ok(true)
    }

    /// Move `staged` (in the store's `tmp/`), whose content the caller hashed to `digest`
    /// while writing it, into the store: read-only, renamed, directory synced.
    pub(crate) fn install_hashed(&self, digest: &Digest, staged: &Path) -> Result<(), BlobError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::Io {
                digest: digest.clone(),
                path,
                source,
            }
        };
        fs::set_permissions(staged, std::os::unix::fs::PermissionsExt::from_mode(0o444))
            .map_err(io_err(staged))?;
        let dest = self.path(digest);
        fs::rename(staged, &dest).map_err(io_err(&dest))?;
        fsutil::sync_dir(&self.dir).map_err(io_err(&self.dir))
    }

    fn commit(&self, temp: TempPath, digest: &Digest) -> Result<(), BlobError> {
        let dest = self.path(digest);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::Io {
                digest: digest.clone(),
                path,
                source,
            }
        };
        fs::set_permissions(
            temp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o444),
        )
        .map_err(io_err(temp.path()))?;
        temp.persist(&dest).map_err(io_err(&dest))?;
        fsutil::sync_dir(&self.dir).map_err(io_err(&self.dir))
    }

    /// Open blob `digest` for reading.
    pub fn open(&self, digest: &Digest) -> Result<File, BlobError> {
        let path = self.path(digest);
        File::open(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                BlobError::Missing {
                    digest: digest.clone(),
                    path,
                }
            } else {
                BlobError::Io {
                    digest: digest.clone(),
                    path,
                    source,
                }
            }
        })
    }

    /// Read a small blob (a manifest or config) whole, refusing one larger than `max`.
    pub fn read_bounded(
        &self,
        digest: &Digest,
        max: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, BlobError> {
        let file = self.open(digest)?;
        let path = self.path(digest);
        read_bounded(file, &path, digest, max, what)
    }
}

/// Read all of `file` (blob `digest`), refusing more than `max` bytes.
pub(crate) fn read_bounded(
    file: File,
    path: &Path,
    digest: &Digest,
    max: u64,
    what: &'static str,
) -> Result<Vec<u8>, BlobError> {
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| BlobError::Io {
            digest: digest.clone(),
            path: path.to_path_buf(),
            source,
        })?;
    let size = bytes.len() as u64;
    if size > max {
        return Err(BlobError::TooLarge {
            digest: digest.clone(),
            what,
            size,
            max,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> io::Result<BlobStore> {
        let blobs = dir.join("blobs/sha256");
        let tmp = dir.join("tmp");
        fs::create_dir_all(&blobs)?;
        fs::create_dir_all(&tmp)?;
        Ok(BlobStore::new(blobs, tmp))
    }

    fn tmp_is_empty(dir: &Path) -> io::Result<bool> {
        Ok(fs::read_dir(dir.join("tmp"))?.next().is_none())
    }

    #[test]
    fn writes_verified_blob_once() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let blobs = store(dir.path())?;
        let content = b"hello blob";
        let digest = Digest::of(content);
        assert!(blobs.write_verified(&digest, 10, &mut &content[..])?);
        assert_eq!(fs::read(blobs.path(&digest))?, content);
        assert!(blobs.contains(&digest, 10));
        assert!(!blobs.write_verified(&digest, 10, &mut &content[..])?);
        assert_eq!(blobs.read_bounded(&digest, 10, "test")?, content);
        assert!(matches!(
            blobs.read_bounded(&digest, 9, "test"),
            Err(BlobError::TooLarge {
                size: 10,
                max: 9,
                ..
            })
        ));
        assert!(tmp_is_empty(dir.path())?);
        Ok(())
    }

    #[test]
    fn rejects_wrong_content_and_size_leaving_nothing() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let blobs = store(dir.path())?;
        let digest = Digest::of(b"right");
        let err = blobs
            .write_verified(&digest, 5, &mut &b"wrong"[..])
            .expect_err("wrong content");
        assert!(matches!(err, BlobError::DigestMismatch { .. }));
        assert!(err.to_string().contains(&digest.to_string()), "{err}");
        assert!(matches!(
            blobs.write_verified(&digest, 5, &mut &b"righ"[..]),
            Err(BlobError::SizeMismatch { actual: 4, .. })
        ));
        assert!(matches!(
            blobs.write_verified(&digest, 5, &mut &b"right and more"[..]),
            Err(BlobError::TooLong { .. })
        ));
        assert!(!blobs.path(&digest).exists());
        assert!(tmp_is_empty(dir.path())?);
        assert!(matches!(
            blobs.open(&digest),
            Err(BlobError::Missing { .. })
        ));
        Ok(())
    }

    #[test]
    fn adopts_staged_file_after_checking_it() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let blobs = store(dir.path())?;
        let staged = dir.path().join("tmp/staged");
        fs::write(&staged, b"content")?;
        let wrong = Digest::of(b"other");
        assert!(matches!(
            blobs.adopt(&wrong, 7, &staged),
            Err(BlobError::DigestMismatch { .. })
        ));
        let digest = Digest::of(b"content");
        assert!(blobs.adopt(&digest, 7, &staged)?);
        assert!(!staged.exists());
        assert_eq!(fs::read(blobs.path(&digest))?, b"content");
        Ok(())
    }
}
