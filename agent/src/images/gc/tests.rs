//! Garbage collection on stores built here: which names go (keep N per repository, the
//! low-water mark), that images in use never do, and what the sweep deletes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::*;
use crate::images::oci::media_type;
use crate::images::store::RefRecord;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn r(s: &str) -> ImageRef {
    s.parse().expect("valid reference")
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

// --- which names go -------------------------------------------------------------------------

#[test]
fn keeps_the_newest_per_repository() {
    let by_repo = BTreeMap::from([
        (
            "reg/a".to_owned(),
            vec![
                (10, "reg/a:1".to_owned()),
                (30, "reg/a:3".to_owned()),
                (20, "reg/a:2".to_owned()),
                (40, "reg/a:4".to_owned()),
            ],
        ),
        ("reg/b".to_owned(), vec![(5, "reg/b:1".to_owned())]),
    ]);
    assert_eq!(
        beyond_keep(by_repo.clone(), 2),
        names(&["reg/a:2", "reg/a:1"])
    );
    assert_eq!(
        beyond_keep(by_repo.clone(), 1),
        names(&["reg/a:3", "reg/a:2", "reg/a:1"])
    );
    assert!(beyond_keep(by_repo.clone(), 4).is_empty());
    assert_eq!(beyond_keep(by_repo, 0).len(), 5);
    // Imported in the same second: a stable order, by name.
    let tie = BTreeMap::from([(
        "reg/c".to_owned(),
        vec![(7, "reg/c:x".to_owned()), (7, "reg/c:y".to_owned())],
    )]);
    assert_eq!(beyond_keep(tie, 1), names(&["reg/c:x"]));
}

#[test]
fn below_the_low_water_mark_the_oldest_go_until_there_is_room() {
    let unused = || {
        vec![
            (30, "c".to_owned(), 100),
            (10, "a".to_owned(), 100),
            (20, "b".to_owned(), 100),
        ]
    };
    // Enough free already.
    assert!(below_low_water(unused(), 1000, 1000).is_empty());
    assert!(below_low_water(unused(), 1000, 500).is_empty());
    // 1 byte short: the oldest (each frees about 3 × its size) is enough.
    assert_eq!(below_low_water(unused(), 999, 1000), names(&["a"]));
    // 301 short: two.
    assert_eq!(below_low_water(unused(), 699, 1000), names(&["a", "b"]));
    // Never enough: everything unused, oldest first.
    assert_eq!(
        below_low_water(unused(), 0, u64::MAX),
        names(&["a", "b", "c"])
    );
    assert!(below_low_water(Vec::new(), 0, u64::MAX).is_empty());
}

#[test]
fn rootfs_under_a_mounted_overlay_is_in_use() {
    let a = Digest::of(b"a");
    let b = Digest::of(b"b");
    let c = Digest::of(b"c");
    let mountinfo = format!(
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
         101 30 0:50 / /run/skiff/tasks/t1/main/rootfs rw,relatime - overlay overlay \
         rw,lowerdir=/data/images/rootfs/{a},upperdir=/run/u,workdir=/run/w\n\
         102 30 0:51 / /run/skiff/tasks/t2/main/rootfs rw,relatime - overlay overlay \
         rw,lowerdir=/data/images/rootfs/{b}/:/data/images/rootfs/not-a-digest,upperdir=/u,workdir=/w\n\
         103 30 0:52 / /elsewhere rw - overlay overlay rw,lowerdir=/other/images/rootfs/{c},upperdir=/u,workdir=/w\n",
        a = a.hex(),
        b = b.hex(),
        c = c.hex(),
    );
    assert_eq!(
        lower_rootfs(&mountinfo, Path::new("/data/images/rootfs")),
        BTreeSet::from([a, b])
    );
    assert!(lower_rootfs("", Path::new("/data/images/rootfs")).is_empty());
}

// --- collections on a store -----------------------------------------------------------------

/// An image in `store` named `reference`, imported at `imported_at`: its own config and a
/// layer made of `layer` (images given the same `layer` share that blob). Returns the
/// manifest digest and the digests of its config and layer.
fn image(
    store: &ImageStore,
    reference: &str,
    imported_at: u64,
    layer: &[u8],
) -> (Digest, Vec<Digest>) {
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        store
            .blobs
            .write_verified(&d, bytes.len() as u64, &mut &bytes[..])
            .expect("write blob");
        d
    };
    let layer_digest = put(layer);
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(layer).to_string()]},
        "config": {"Cmd": [reference]},
    })
    .to_string();
    let config_digest = put(config.as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {"mediaType": media_type::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": media_type::OCI_LAYER, "digest": layer_digest.to_string(), "size": layer.len()}],
    })
    .to_string();
    let digest = put(manifest.as_bytes());
    store
        .commit_refs(vec![(
            r(reference),
            RefRecord {
                digest: digest.clone(),
                platform: "linux/amd64".to_owned(),
                size: 1 << 20,
                imported_at,
            },
        )])
        .expect("name the image");
    (digest, vec![config_digest, layer_digest])
}

fn listed(store: &ImageStore) -> Vec<String> {
    store
        .list()
        .expect("list")
        .into_iter()
        .map(|e| e.reference.to_string())
        .collect()
}

/// Every blob older than the grace period, as if pulled long ago.
fn age_blobs(store: &ImageStore) -> std::io::Result<()> {
    let old = SystemTime::now() - BLOB_GRACE - Duration::from_secs(60);
    for e in fs::read_dir(store.blobs.dir())? {
        fs::File::open(e?.path())?.set_modified(old)?;
    }
    Ok(())
}

fn policy(keep: usize, low_water_bytes: u64) -> GcPolicy {
    GcPolicy {
        keep_per_repository: keep,
        low_water_bytes,
        dry_run: false,
    }
}

#[test]
fn keep_per_repository_never_counts_or_removes_images_in_use() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = ImageStore::open(dir.path())?;
    image(&store, "reg.test/app:1", 10, b"l1"); // oldest, in use
    image(&store, "reg.test/app:2", 20, b"l2");
    image(&store, "reg.test/app:3", 30, b"l3");
    image(&store, "reg.test/app:4", 40, b"l4");
    image(&store, "reg.test/tool:1", 5, b"t1");

    let report = store.gc(&policy(2, 0), &[r("reg.test/app:1")])?;
    assert_eq!(report.names_removed, names(&["reg.test/app:2"]));
    assert_eq!(report.in_use, names(&["reg.test/app:1"]));
    assert_eq!(
        listed(&store),
        names(&[
            "reg.test/app:1",
            "reg.test/app:3",
            "reg.test/app:4",
            "reg.test/tool:1"
        ])
    );
    // keep 1, nothing protected now: only the newest of each repository stays.
    let report = store.gc(&policy(1, 0), &[])?;
    assert_eq!(
        report.names_removed,
        names(&["reg.test/app:3", "reg.test/app:1"])
    );
    assert!(report.in_use.is_empty());
    assert_eq!(
        listed(&store),
        names(&["reg.test/app:4", "reg.test/tool:1"])
    );
    Ok(())
}

#[test]
fn another_name_for_an_image_in_use_is_in_use_too() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = ImageStore::open(dir.path())?;
    let (digest, _) = image(&store, "reg.test/app:old", 10, b"same");
    // The same manifest under a newer tag, and by digest.
    store.commit_refs(vec![(
        r("reg.test/app:stable"),
        RefRecord {
            digest: digest.clone(),
            platform: "linux/amd64".to_owned(),
            size: 1,
            imported_at: 50,
        },
    )])?;
    image(&store, "reg.test/app:new", 60, b"new");
    let by_digest = r(&format!("reg.test/app@{digest}"));
    // Below the low-water mark everything unused goes; both names of the image in use stay.
    let report = store.gc(&policy(1, u64::MAX), &[by_digest])?;
    assert_eq!(report.names_removed, names(&["reg.test/app:new"]));
    assert_eq!(
        report.in_use,
        names(&["reg.test/app:old", "reg.test/app:stable"])
    );
    Ok(())
}

#[test]
fn below_the_low_water_mark_every_unused_name_goes_oldest_first() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = ImageStore::open(dir.path())?;
    image(&store, "reg.test/a:1", 30, b"a1");
    image(&store, "reg.test/b:1", 10, b"b1");
    let (busy, _) = image(&store, "reg.test/c:1", 5, b"c1");
    image(&store, "reg.test/d:1", 20, b"d1");
    // No disk has u64::MAX free: the mark is never reached.
    let protect = [r(&format!("reg.test/c@{busy}"))];
    let report = store.gc(&policy(100, u64::MAX), &protect)?;
    assert_eq!(
        report.names_removed,
        names(&["reg.test/b:1", "reg.test/d:1", "reg.test/a:1"])
    );
    assert_eq!(listed(&store), names(&["reg.test/c:1"]));
    // With the mark already met, nothing goes.
    image(&store, "reg.test/e:1", 40, b"e1");
    let report = store.gc(&policy(100, 1), &[])?;
    assert!(report.names_removed.is_empty());
    Ok(())
}

#[test]
fn a_dry_run_changes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = ImageStore::open(dir.path())?;
    image(&store, "reg.test/app:1", 10, b"l1");
    image(&store, "reg.test/app:2", 20, b"l2");
    age_blobs(&store)?;
    let before = fs::read_dir(store.blobs.dir())?.count();
    let report = store.gc(
        &GcPolicy {
            dry_run: true,
            ..policy(1, 0)
        },
        &[],
    )?;
    assert_eq!(report.names_removed, names(&["reg.test/app:1"]));
    assert_eq!((report.blobs_removed, report.rootfs_removed), (0, 0));
    assert_eq!(listed(&store).len(), 2);
    assert_eq!(fs::read_dir(store.blobs.dir())?.count(), before);
    Ok(())
}

#[test]
fn the_sweep_deletes_what_no_name_reaches_once_it_is_old_enough() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = ImageStore::open(dir.path())?;
    let (old, old_blobs) = image(&store, "reg.test/app:1", 10, b"shared");
    let (new, new_blobs) = image(&store, "reg.test/app:2", 20, b"shared");
    let (busy, busy_blobs) = image(&store, "reg.test/app:0", 5, b"busy");
    assert_eq!(old_blobs[1], new_blobs[1], "one layer, stored once");
    for d in [&old, &new, &busy] {
        fs::create_dir_all(store.rootfs_path(d).join("bin"))?;
    }
    age_blobs(&store)?;
    // An unnamed blob just written (a pull in progress names its image last).
    let fresh = Digest::of(b"being pulled");
    store
        .blobs
        .write_verified(&fresh, 12, &mut &b"being pulled"[..])?;

    let report = store.gc(&policy(1, 0), &[r("reg.test/app:0")])?;
    assert_eq!(report.names_removed, names(&["reg.test/app:1"]));
    // app:1's manifest and config go; the shared layer stays with app:2.
    assert_eq!(report.blobs_removed, 2);
    assert_eq!(report.rootfs_removed, 1);
    let present = |d: &Digest| store.blobs.path(d).exists();
    assert!(!present(&old) && !present(&old_blobs[0]));
    assert!(present(&old_blobs[1]));
    for d in [&new, &busy, &fresh]
        .into_iter()
        .chain(&new_blobs)
        .chain(&busy_blobs)
    {
        assert!(present(d), "{d} kept");
    }
    assert!(!store.rootfs_path(&old).exists());
    assert!(store.rootfs_path(&new).exists() && store.rootfs_path(&busy).exists());
    assert!(report.bytes_freed > 0, "{report:?}");
    // Nothing left in tmp from moving the rootfs out of sight.
    assert_eq!(fs::read_dir(&store.tmp)?.count(), 0);
    Ok(())
}
