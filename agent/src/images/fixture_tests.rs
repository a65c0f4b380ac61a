//! The store against the real busybox image `tests/fixtures/make-busybox-oci.sh` builds.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BlobError, Digest, ImageRef, ImageStore, ImportError};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/make-busybox-oci.sh")
}

/// Build the busybox layout into `out`, or `None` (with a message) when this machine has no
/// /bin/busybox (Debian: `apt-get install busybox-static`).
fn build_busybox(out: &Path) -> Result<Option<String>, Box<dyn std::error::Error>> {
    if !Path::new("/bin/busybox").is_file() {
        eprintln!("skipping: /bin/busybox is missing (apt-get install busybox-static)");
        return Ok(None);
    }
    let output = Command::new("sh").arg(script()).arg(out).output()?;
    if !output.status.success() {
        return Err(format!(
            "make-busybox-oci.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(Some(String::from_utf8(output.stdout)?.trim().to_owned()))
}

fn busybox() -> ImageRef {
    "busybox".parse().expect("valid reference")
}

#[test]
fn busybox_fixture_imports_and_resolves() -> TestResult {
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("busybox-oci");
    let Some(digest) = build_busybox(&layout)? else {
        return Ok(());
    };
    let store = ImageStore::open(&dir.path().join("store"))?;

    let imported = store.import(&layout, Some(&busybox()))?;
    assert_eq!(imported.len(), 1);
    assert_eq!(
        imported[0].reference.to_string(),
        "docker.io/library/busybox:latest"
    );
    assert_eq!(imported[0].digest.to_string(), digest);
    assert_eq!(imported[0].blobs_written, 3);

    let image = store.resolve(&busybox())?.expect("busybox is in the store");
    assert_eq!(image.reference, "docker.io/library/busybox:latest");
    assert_eq!(image.digest, digest);
    assert_eq!(image.config.cmd, ["sh"]);
    assert!(image.config.env.iter().any(|e| e.starts_with("PATH=")));
    let sh = image.rootfs.join("bin/sh");
    assert!(fs::symlink_metadata(&sh)?.file_type().is_symlink());
    assert_eq!(fs::read_link(&sh)?, Path::new("busybox"));
    assert!(image.rootfs.join("bin/busybox").is_file());
    assert!(fs::read_to_string(image.rootfs.join("etc/passwd"))?.starts_with("root:x:0:0:"));
    let tmp_mode = std::os::unix::fs::PermissionsExt::mode(
        &fs::metadata(image.rootfs.join("tmp"))?.permissions(),
    );
    assert_eq!(tmp_mode & 0o7777, 0o1777);
    // The unpacked busybox runs.
    let out = Command::new(image.rootfs.join("bin/busybox"))
        .arg("true")
        .status()?;
    assert!(out.success());

    // Re-import: nothing new is written, the name still points at the same image.
    let again = store.import(&layout, Some(&busybox()))?;
    assert_eq!(again[0].blobs_written, 0);
    assert_eq!(again[0].digest.to_string(), digest);
    assert_eq!(store.list()?.len(), 1);
    assert_eq!(
        store.catalog()?.get("docker.io/library/busybox:latest"),
        Some(&digest)
    );

    // Without --tag the bare `latest` annotation has no repository.
    let other = ImageStore::open(&dir.path().join("store2"))?;
    let err = other.import(&layout, None).expect_err("bare tag");
    assert!(matches!(err, ImportError::BareTag { .. }), "{err}");
    Ok(())
}

#[test]
fn busybox_fixture_is_reproducible() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let Some(first) = build_busybox(&a)? else {
        return Ok(());
    };
    let Some(second) = build_busybox(&b)? else {
        return Ok(());
    };
    assert_eq!(first, second);
    for name in ["index.json", "oci-layout"] {
        assert_eq!(fs::read(a.join(name))?, fs::read(b.join(name))?, "{name}");
    }
    let list = |d: &Path| -> std::io::Result<Vec<_>> {
        let mut names: Vec<_> = fs::read_dir(d.join("blobs/sha256"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        Ok(names)
    };
    assert_eq!(list(&a)?, list(&b)?);
    // Every blob is named by its content.
    for name in list(&a)? {
        let bytes = fs::read(a.join("blobs/sha256").join(&name))?;
        assert_eq!(Some(Digest::of(&bytes).hex()), name.to_str());
    }
    Ok(())
}

#[test]
fn busybox_fixture_with_a_corrupted_blob_fails_and_names_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("busybox-oci");
    if build_busybox(&layout)?.is_none() {
        return Ok(());
    }
    // Corrupt the largest blob (the layer), keeping its size.
    let mut blobs: Vec<_> = fs::read_dir(layout.join("blobs/sha256"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    blobs.sort_by_key(|p| fs::metadata(p).map_or(0, |m| m.len()));
    let layer = blobs.pop().ok_or("no blobs")?;
    let layer_digest = format!(
        "sha256:{}",
        layer
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("blob name")?
    );
    let mut bytes = fs::read(&layer)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&layer, &bytes)?;

    let store = ImageStore::open(&dir.path().join("store"))?;
    let err = store
        .import(&layout, Some(&busybox()))
        .expect_err("corrupted layer");
    assert!(
        matches!(
            &err,
            ImportError::Blob {
                source: BlobError::DigestMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&layer_digest), "{err}");
    assert!(store.catalog()?.is_empty());
    let refs = store.root().join("refs.json");
    if refs.exists() {
        let json: serde_json::Value = serde_json::from_slice(&fs::read(&refs)?)?;
        assert_eq!(json["images"], serde_json::json!({}));
    }
    assert_eq!(store.resolve(&busybox())?, None);
    assert_eq!(fs::read_dir(store.root().join("tmp"))?.count(), 0);
    Ok(())
}
