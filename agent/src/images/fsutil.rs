//! Crash-safe file system steps shared by the blob store, refs.json and rootfs unpacking:
//! private temp paths that vanish unless renamed into place, directory fsync, atomic writes,
//! and advisory locks between processes (the agent and `skiff image import`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// A file or directory under the store's `tmp/`, named `<pid>.<n>.<purpose>`, removed on drop
/// unless it was renamed into place with [`TempPath::persist`]. The pid in the name lets
/// [`remove_stale`] tell an abandoned temp path (its process is gone) from one in use.
#[derive(Debug)]
pub(crate) struct TempPath {
    path: PathBuf,
    is_dir: bool,
    armed: bool,
}

impl TempPath {
    fn unique(dir: &Path, purpose: &str) -> PathBuf {
        let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        dir.join(format!("{}.{n}.{purpose}", std::process::id()))
    }

    /// A new, empty file (mode 0600) opened for writing.
    pub(crate) fn new_file(dir: &Path, purpose: &str) -> io::Result<(TempPath, File)> {
        let path = Self::unique(dir, purpose);
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok((
            TempPath {
                path,
                is_dir: false,
                armed: true,
            },
            file,
        ))
    }

    /// A new, empty directory (mode 0755).
    pub(crate) fn new_dir(dir: &Path, purpose: &str) -> io::Result<TempPath> {
        let path = Self::unique(dir, purpose);
        fs::DirBuilder::new().mode(0o755).create(&path)?;
        Ok(TempPath {
            path,
            is_dir: true,
            armed: true,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Rename into place. A directory cannot replace a non-empty directory: that error comes
    /// back unchanged (and the temp path is still removed on drop).
    pub(crate) fn persist(mut self, dest: &Path) -> io::Result<()> {
        fs::rename(&self.path, dest)?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let result = if self.is_dir {
            fs::remove_dir_all(&self.path)
        } else {
            fs::remove_file(&self.path)
        };
        if let Err(e) = result {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temp path");
            }
        }
    }
}

/// Remove temp paths left by processes that no longer exist (a crash mid-import or unpack).
pub(crate) fn remove_stale(tmp_dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(tmp_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('.').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let path = entry.path();
        tracing::info!(path = %path.display(), "removing temp path of a process that is gone");
        let result = if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(e) = result {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// fsync a directory, so a rename into it survives power loss.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace `dest` with `bytes` atomically: write a temp file in `tmp_dir` (same file system),
/// fsync it, rename it over `dest`, fsync `dest`'s directory. Readers see the old or the new
/// content, never a mix.
pub(crate) fn write_atomic(dest: &Path, tmp_dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let (temp, mut file) = TempPath::new_file(tmp_dir, "write")?;
    file.write_all(bytes)?;
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    file.sync_all()?;
    drop(file);
    temp.persist(dest)?;
    match dest.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// An exclusive advisory lock on `path` (created if missing), held until dropped. Blocks while
/// another process or thread holds it (flock locks belong to the open file description).
pub(crate) fn lock_exclusive(path: &Path) -> io::Result<Flock<File>> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io::Error::from(errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_paths_vanish_unless_persisted() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (temp, _file) = TempPath::new_file(dir.path(), "x")?;
        let p = temp.path().to_path_buf();
        assert!(p.exists());
        drop(temp);
        assert!(!p.exists());

        let temp = TempPath::new_dir(dir.path(), "d")?;
        fs::write(temp.path().join("f"), b"1")?;
        let dest = dir.path().join("kept");
        temp.persist(&dest)?;
        assert!(dest.join("f").exists());
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn removes_only_temp_paths_of_dead_processes() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        // pid 0x7fffffff cannot exist (pid_max is at most 2^22).
        fs::create_dir(dir.path().join("2147483647.0.rootfs"))?;
        fs::write(dir.path().join("2147483647.1.blob"), b"")?;
        let (mine, _f) = TempPath::new_file(dir.path(), "blob")?;
        fs::write(dir.path().join("not-a-temp-name"), b"")?;
        remove_stale(dir.path())?;
        let mut left: Vec<_> = fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        left.sort();
        let mut want = vec![
            mine.path().to_path_buf(),
            dir.path().join("not-a-temp-name"),
        ];
        want.sort();
        assert_eq!(left, want);
        Ok(())
    }

    #[test]
    fn write_atomic_replaces() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let dest = dir.path().join("refs.json");
        write_atomic(&dest, dir.path(), b"one")?;
        write_atomic(&dest, dir.path(), b"two")?;
        assert_eq!(fs::read(&dest)?, b"two");
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }
}
