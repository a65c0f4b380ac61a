//! Applying image layers (tar change sets) to a root filesystem.
//!
//! Layers are applied in order into one private directory (see `store.rs`: a temp dir renamed
//! into place when complete). Nothing else writes to that directory meanwhile, so checking a
//! path with `lstat` and then using it is not racy.
//!
//! Nothing escapes the root:
//! - entry names: a leading `/` is dropped (the name is taken relative to the rootfs, as GNU tar
//!   and Docker do); a `..` component rejects the layer;
//! - parent directories are resolved by hand, following symlinks *inside* the rootfs as if it
//!   were `/` (an absolute target restarts at the rootfs, `..` stops at it), so a symlink from
//!   this layer or an earlier one never leads a write outside;
//! - the last component is never followed: whatever is there (a symlink to outside included) is
//!   removed and replaced, and new files are created with `O_EXCL`;
//! - hard link targets are resolved the same way, must exist and must not be directories.
//!
//! OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`) remove what lower layers put there; per the spec
//! they never touch what the same layer created. Device nodes are skipped (the runtime provides
//! `/dev`). Ownership and mode (setuid/setgid/sticky included) are set exactly as in the tar:
//! chown first, then chmod, since chown clears setuid bits.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::read::MultiGzDecoder;
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::digest::Digest;
use super::oci::media_type;

/// Symlinks followed while resolving one path, as Linux's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("zstd layer does not decode: {reason}")]
    Zstd { reason: String },
    #[error("unknown layer media type {media_type:?}")]
    UnknownMediaType { media_type: String },
    #[error("cannot read layer archive: {source}")]
    Archive { source: io::Error },
    #[error("layer entry {entry:?} escapes the root filesystem: {reason}")]
    Escape { entry: String, reason: &'static str },
    #[error("layer entry {entry:?}: {reason}")]
    BadEntry { entry: String, reason: String },
    #[error("layer entry {entry:?}: {path}: {source}")]
    Io {
        entry: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("layer content has diff_id {actual}, the image config says {expected}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression of a layer of media type `media_type`, or why it cannot be unpacked.
pub fn compression_of(media_type: &str) -> Result<Compression, UnpackError> {
    match media_type {
        media_type::OCI_LAYER | media_type::OCI_LAYER_NONDISTRIBUTABLE => Ok(Compression::None),
        media_type::OCI_LAYER_GZIP
        | media_type::OCI_LAYER_NONDISTRIBUTABLE_GZIP
        | media_type::DOCKER_LAYER_GZIP
        | media_type::DOCKER_LAYER_FOREIGN_GZIP => Ok(Compression::Gzip),
        media_type::OCI_LAYER_ZSTD | media_type::OCI_LAYER_NONDISTRIBUTABLE_ZSTD => {
            Ok(Compression::Zstd)
        }
        other => Err(UnpackError::UnknownMediaType {
            media_type: other.to_owned(),
        }),
    }
}

/// Apply layer `blob` of `media_type` onto `root`. When `diff_id` is given, the uncompressed
/// stream must hash to it (the image config's `rootfs.diff_ids`).
pub fn unpack_layer(
    root: &Path,
    blob: impl Read,
    media_type: &str,
    diff_id: Option<&Digest>,
) -> Result<(), UnpackError> {
    let reader: Box<dyn Read> = match compression_of(media_type)? {
        Compression::None => Box::new(BufReader::new(blob)),
        Compression::Gzip => Box::new(MultiGzDecoder::new(BufReader::new(blob))),
        // Pure Rust (no C to cross-compile). One frame: a second frame's content would be missing
        // from the stream, and the diff_id check below would catch it.
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(BufReader::new(blob)).map_err(|e| {
                UnpackError::Zstd {
                    reason: e.to_string(),
                }
            })?,
        ),
    };
    let mut hashing = HashingReader {
        inner: reader,
        hasher: Sha256::new(),
    };
    apply_tar(root, &mut hashing)?;
    // Hash the end-of-archive blocks and any padding too: the diff_id covers the whole stream.
    io::copy(&mut hashing, &mut io::sink()).map_err(|source| UnpackError::Archive { source })?;
    let actual = Digest::from_sha256(hashing.hasher.finalize().into());
    match diff_id {
        Some(expected) if *expected != actual => Err(UnpackError::DiffIdMismatch {
            expected: expected.clone(),
            actual,
        }),
        _ => Ok(()),
    }
}

/// Apply one uncompressed layer tar onto `root`.
pub fn apply_tar(root: &Path, tar: impl Read) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(tar);
    let mut unpacker = Unpacker {
        root,
        chown: nix::unistd::geteuid().is_root(),
        this_layer: HashSet::new(),
    };
    let entries = archive
        .entries()
        .map_err(|source| UnpackError::Archive { source })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| UnpackError::Archive { source })?;
        unpacker.apply(&mut entry)?;
    }
    Ok(())
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Ownership and mode of an entry, from its header.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: u64,
}

struct Unpacker<'a> {
    root: &'a Path,
    /// Whether to apply the tar's owners (only root may).
    chown: bool,
    /// Host paths this layer created or wrote under: whiteouts must leave them alone.
    this_layer: HashSet<PathBuf>,
}

impl Unpacker<'_> {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let components = clean_components(&raw, &name)?;
        // The rootfs directory itself (`./`): its metadata stays ours.
        let Some((last, parents)) = components.split_last() else {
            return Ok(());
        };

        if let Some(hidden) = last.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(&name, parents, last, hidden);
        }

        let kind = entry.header().entry_type();
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let meta = header_meta(entry.header(), &name)?;
                let target = self.prepare(&name, parents, last, false)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io_err(&name, &target))?;
                io::copy(entry, &mut file).map_err(io_err(&name, &target))?;
                if self.chown {
                    std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
                        .map_err(io_err(&name, &target))?;
                }
                file.set_permissions(fs::Permissions::from_mode(meta.mode))
                    .map_err(io_err(&name, &target))?;
                file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(meta.mtime))
                    .map_err(io_err(&name, &target))?;
                self.this_layer.insert(target);
            }
            EntryType::Directory => {
                let meta = header_meta(entry.header(), &name)?;
                let target = self.prepare(&name, parents, last, true)?;
                if fs::symlink_metadata(&target).is_err() {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&target)
                        .map_err(io_err(&name, &target))?;
                }
                self.set_owner_and_mode(&name, &target, &meta)?;
                self.this_layer.insert(target);
            }
            EntryType::Symlink => {
                let meta = header_meta(entry.header(), &name)?;
                let link = entry
                    .link_name_bytes()
                    .map(std::borrow::Cow::into_owned)
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| bad_entry(&name, "symlink without a target"))?;
                let target = self.prepare(&name, parents, last, false)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                    .map_err(io_err(&name, &target))?;
                if self.chown {
                    std::os::unix::fs::lchown(&target, Some(meta.uid), Some(meta.gid))
                        .map_err(io_err(&name, &target))?;
                }
                self.this_layer.insert(target);
            }
            EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .map(std::borrow::Cow::into_owned)
                    .ok_or_else(|| bad_entry(&name, "hard link without a target"))?;
                self.hard_link(&name, parents, last, &link)?;
            }
            EntryType::Fifo => {
                let meta = header_meta(entry.header(), &name)?;
                let target = self.prepare(&name, parents, last, false)?;
                nix::unistd::mkfifo(
                    &target,
                    nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
                )
                .map_err(|errno| io_err(&name, &target)(io::Error::from(errno)))?;
                self.set_owner_and_mode(&name, &target, &meta)?;
                self.this_layer.insert(target);
            }
            EntryType::Char | EntryType::Block => {
                tracing::info!(entry = %name, "skipping device node in layer");
            }
            other => {
                tracing::debug!(entry = %name, kind = ?other, "skipping tar entry");
            }
        }
        Ok(())
    }

    /// `.wh.<hidden>` in `parents`: remove `<hidden>` from lower layers; `.wh..wh..opq`: make
    /// the directory opaque (remove everything lower layers put in it).
    fn whiteout(
        &mut self,
        name: &str,
        parents: &[OsString],
        last: &OsStr,
        hidden: &[u8],
    ) -> Result<(), UnpackError> {
        let opaque = last.as_bytes() == OPAQUE_WHITEOUT;
        if !opaque && hidden.starts_with(WHITEOUT_PREFIX) {
            // Other `.wh..wh.` names are AUFS bookkeeping: nothing to apply.
            return Ok(());
        }
        match hidden {
            b"" | b"." => return Err(bad_entry(name, "whiteout names no file")),
            b".." => {
                return Err(UnpackError::Escape {
                    entry: name.to_owned(),
                    reason: "a whiteout of `..`",
                })
            }
            _ => {}
        }
        let Some(dir) = self.resolve_dir(name, parents, false)? else {
            return Ok(()); // nothing below to hide
        };
        if opaque {
            return self.clear_lower(&dir).map_err(io_err(name, &dir));
        }
        let target = dir.join(OsStr::from_bytes(hidden));
        if self.this_layer.contains(&target) {
            // Whiteouts only hide lower layers' files.
            return Ok(());
        }
        remove_any(&target).map_err(io_err(name, &target))
    }

    /// Remove from `dir`, recursively, everything this layer did not create.
    fn clear_lower(&self, dir: &Path) -> io::Result<()> {
        for child in fs::read_dir(dir)? {
            let child = child?;
            let path = child.path();
            if self.this_layer.contains(&path) {
                if child.file_type()?.is_dir() {
                    self.clear_lower(&path)?;
                }
            } else {
                remove_any(&path)?;
            }
        }
        Ok(())
    }

    fn hard_link(
        &mut self,
        name: &str,
        parents: &[OsString],
        last: &OsStr,
        link: &[u8],
    ) -> Result<(), UnpackError> {
        let link_name = String::from_utf8_lossy(link).into_owned();
        let link_components = clean_components(link, name).map_err(|_| UnpackError::Escape {
            entry: name.to_owned(),
            reason: "its hard link target has a `..` component",
        })?;
        let missing = || {
            bad_entry(
                name,
                &format!("hard link target {link_name:?} does not exist in the layers so far"),
            )
        };
        let Some((source_last, source_parents)) = link_components.split_last() else {
            return Err(bad_entry(name, "hard link to the root directory"));
        };
        let source_dir = self
            .resolve_dir(name, source_parents, false)?
            .ok_or_else(missing)?;
        let source = source_dir.join(source_last);
        match fs::symlink_metadata(&source) {
            Ok(m) if m.is_dir() => {
                return Err(bad_entry(
                    name,
                    &format!("hard link to directory {link_name:?}"),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(io_err(name, &source)(e)),
        }
        let target = self.prepare(name, parents, last, false);
        let target = match target {
            Ok(t) if t == source => return Ok(()), // a link to itself: already there
            other => other?,
        };
        fs::hard_link(&source, &target).map_err(io_err(name, &target))?;
        self.this_layer.insert(target);
        Ok(())
    }

    /// Resolve the parent of a new entry and clear its name: a directory entry keeps an
    /// existing directory; anything else there (a symlink included) is removed.
    fn prepare(
        &mut self,
        name: &str,
        parents: &[OsString],
        last: &OsStr,
        want_dir: bool,
    ) -> Result<PathBuf, UnpackError> {
        let parent = self
            .resolve_dir(name, parents, true)?
            .ok_or_else(|| bad_entry(name, "parent directory missing"))?;
        let target = parent.join(last);
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() && want_dir => {}
            Ok(m) if m.is_dir() => fs::remove_dir_all(&target).map_err(io_err(name, &target))?,
            Ok(_) => fs::remove_file(&target).map_err(io_err(name, &target))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(name, &target)(e)),
        }
        Ok(target)
    }

    /// The host path of directory `components` under the root, following symlinks as if the
    /// root were `/`. Missing directories are created (`create`) or make the result `None`.
    /// The result is a real directory inside the root: no symlink on the way out.
    fn resolve_dir(
        &mut self,
        name: &str,
        components: &[OsString],
        create: bool,
    ) -> Result<Option<PathBuf>, UnpackError> {
        let mut resolved: Vec<OsString> = Vec::new();
        let mut pending: VecDeque<OsString> = components.iter().cloned().collect();
        let mut followed = 0;
        while let Some(component) = pending.pop_front() {
            if component == ".." {
                resolved.pop(); // `..` at the root stays at the root
                continue;
            }
            let mut path = self.root.to_path_buf();
            path.extend(&resolved);
            path.push(&component);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    followed += 1;
                    if followed > MAX_SYMLINKS {
                        return Err(bad_entry(name, "too many levels of symbolic links"));
                    }
                    let target = fs::read_link(&path).map_err(io_err(name, &path))?;
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    let mut next: VecDeque<OsString> = target
                        .components()
                        .filter_map(|c| match c {
                            Component::Normal(n) => Some(n.to_owned()),
                            Component::ParentDir => Some(OsString::from("..")),
                            _ => None,
                        })
                        .collect();
                    next.extend(pending.drain(..));
                    pending = next;
                }
                Ok(m) if m.is_dir() => {
                    if create {
                        // This layer puts something under it: an opaque whiteout of an
                        // ancestor must look inside rather than remove it whole.
                        self.this_layer.insert(path);
                    }
                    resolved.push(component);
                }
                Ok(_) => {
                    let shown = path
                        .strip_prefix(self.root)
                        .unwrap_or(&path)
                        .display()
                        .to_string();
                    return Err(bad_entry(name, &format!("/{shown} is not a directory")));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&path)
                        .map_err(io_err(name, &path))?;
                    self.this_layer.insert(path);
                    resolved.push(component);
                }
                Err(e) => return Err(io_err(name, &path)(e)),
            }
        }
        let mut dir = self.root.to_path_buf();
        dir.extend(&resolved);
        Ok(Some(dir))
    }

    fn set_owner_and_mode(&self, name: &str, path: &Path, meta: &Meta) -> Result<(), UnpackError> {
        if self.chown {
            std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
                .map_err(io_err(name, path))?;
        }
        // `path` is a directory or fifo just made by us, not a symlink: chmod cannot go elsewhere.
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode)).map_err(io_err(name, path))
    }
}

/// The normal components of an entry name: a leading `/` and `.` are dropped, `..` is refused.
/// Public for the fuzz targets (`fuzz/`) only.
#[doc(hidden)]
pub fn clean_components(raw: &[u8], name: &str) -> Result<Vec<OsString>, UnpackError> {
    let mut out = Vec::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n.to_owned()),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::Escape {
                    entry: name.to_owned(),
                    reason: "its path has a `..` component",
                })
            }
        }
    }
    Ok(out)
}

fn header_meta(header: &tar::Header, name: &str) -> Result<Meta, UnpackError> {
    let field = |what: &str, r: io::Result<u64>| {
        r.map_err(|e| bad_entry(name, &format!("invalid {what} in tar header: {e}")))
    };
    let id = |what: &str, r: io::Result<u64>| {
        let v = field(what, r)?;
        u32::try_from(v).map_err(|_| bad_entry(name, &format!("{what} {v} is out of range")))
    };
    let mode = header
        .mode()
        .map_err(|e| bad_entry(name, &format!("invalid mode in tar header: {e}")))?;
    Ok(Meta {
        uid: id("uid", header.uid())?,
        gid: id("gid", header.gid())?,
        mode: mode & 0o7777,
        mtime: field("mtime", header.mtime())?,
    })
}

fn remove_any(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn bad_entry(name: &str, reason: &str) -> UnpackError {
    UnpackError::BadEntry {
        entry: name.to_owned(),
        reason: reason.to_owned(),
    }
}

fn io_err<'a>(name: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        entry: name.to_owned(),
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
