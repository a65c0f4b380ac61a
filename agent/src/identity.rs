//! The node's own key pair: X25519, made once on first boot in `data_dir`, so the fleet can seal
//! secrets to this device (only its private key opens them).
//!
//! ```text
//! {data_dir}/node.key   32 random bytes, the X25519 private key (0600, never leaves the device)
//! {data_dir}/node.pub   the public key, hex, one line (0644; also printed by `skiff node init`)
//! ```
//!
//! `skiff node init` (run by the unit's `ExecStartPre=`) is idempotent: it creates the key only
//! when there is none and prints the public key every time, so it lands in the journal. The
//! private key is written to a temp file created 0600, synced, and renamed into place: a power
//! cut leaves either no key or a whole one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use x25519_dalek::{PublicKey, StaticSecret};

/// File name of the private key in `data_dir`.
pub const KEY_FILE: &str = "node.key";
/// File name of the public key (hex) in `data_dir`.
pub const PUB_FILE: &str = "node.pub";
const KEY_LEN: usize = 32;

/// What went wrong making or reading the node key.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("node key {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("node key {path}: {len} bytes, expected {KEY_LEN}; move it away to make a new key")]
    BadLength { path: PathBuf, len: u64 },
    #[error("no randomness from the operating system: {0}")]
    Random(getrandom::Error),
}

/// The node's public key, as `skiff node init` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKey {
    pub public: [u8; KEY_LEN],
    /// True when this call made the key.
    pub created: bool,
}

impl NodeKey {
    /// The public key as lowercase hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.public)
    }
}

/// Makes the key pair in `data_dir` unless there is one, and returns its public key. A key
/// readable by others is made private again (0600).
pub fn init(data_dir: &Path) -> Result<NodeKey, IdentityError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| IdentityError::Io { path, source }
    };
    fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
    let key_path = data_dir.join(KEY_FILE);
    let (secret, created) = match read_secret(&key_path)? {
        Some(s) => (s, false),
        None => {
            let mut bytes = [0u8; KEY_LEN];
            getrandom::getrandom(&mut bytes).map_err(IdentityError::Random)?;
            write_private(data_dir, &key_path, &bytes)?;
            (StaticSecret::from(bytes), true)
        }
    };
    let public = PublicKey::from(&secret).to_bytes();
    let key = NodeKey { public, created };
    let pub_path = data_dir.join(PUB_FILE);
    let line = format!("{}\n", key.public_hex());
    if fs::read_to_string(&pub_path).ok().as_deref() != Some(line.as_str()) {
        fs::write(&pub_path, &line).map_err(io_err(&pub_path))?;
        fs::set_permissions(&pub_path, fs::Permissions::from_mode(0o644))
            .map_err(io_err(&pub_path))?;
    }
    Ok(key)
}

/// The private key, for opening sealed secrets.
pub fn load_secret(data_dir: &Path) -> Result<Option<StaticSecret>, IdentityError> {
    read_secret(&data_dir.join(KEY_FILE))
}

fn read_secret(path: &Path) -> Result<Option<StaticSecret>, IdentityError> {
    let io_err = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    if meta.len() != KEY_LEN as u64 {
        return Err(IdentityError::BadLength {
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "node key was readable by others; made it 0600");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    }
    let bytes = fs::read(path).map_err(io_err)?;
    let arr: [u8; KEY_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| IdentityError::BadLength {
            path: path.to_owned(),
            len: bytes.len() as u64,
        })?;
    Ok(Some(StaticSecret::from(arr)))
}

fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
    let io_err = |p: &Path| {
        let path = p.to_owned();
        move |source| IdentityError::Io { path, source }
    };
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    // The mode given to open() is masked by the umask; make sure it is exactly 0600.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn makes_a_private_key_once_and_reports_the_same_public_key_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("var/lib/skiff");
        let first = init(&data).expect("init");
        assert!(first.created);
        assert_eq!(mode(&data.join(KEY_FILE)), 0o600);
        assert_eq!(fs::metadata(data.join(KEY_FILE)).expect("key").len(), 32);
        assert_eq!(mode(&data.join(PUB_FILE)), 0o644);
        assert_eq!(
            fs::read_to_string(data.join(PUB_FILE)).expect("pub"),
            format!("{}\n", first.public_hex())
        );
        let again = init(&data).expect("init again");
        assert!(!again.created);
        assert_eq!(again.public, first.public);
        // The public key is the X25519 image of the stored private key.
        let secret = load_secret(&data).expect("load").expect("a key");
        assert_eq!(PublicKey::from(&secret).to_bytes(), first.public);
        // No temp files are left behind.
        let names: Vec<String> = fs::read_dir(&data)
            .expect("readdir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn two_nodes_get_different_keys() {
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        assert_ne!(
            init(a.path()).expect("a").public,
            init(b.path()).expect("b").public
        );
    }

    #[test]
    fn a_key_readable_by_others_is_made_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path()).expect("init");
        let key = dir.path().join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
        init(dir.path()).expect("init");
        assert_eq!(mode(&key), 0o600);
    }

    #[test]
    fn a_truncated_key_is_refused_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(KEY_FILE), b"short").expect("write");
        let err = init(dir.path()).expect_err("accepted a 5-byte key");
        assert!(
            matches!(err, IdentityError::BadLength { len: 5, .. }),
            "{err}"
        );
        assert_eq!(
            fs::read(dir.path().join(KEY_FILE)).expect("key"),
            b"short",
            "the bad key must be left for a human to look at"
        );
    }
}
