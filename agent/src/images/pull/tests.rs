//! The pull's decisions without a registry: the policy, the manifest chosen from an index,
//! manifest checks, the disk estimate, resuming a broken-off download and verifying it.

use std::fs;
use std::path::Path;

use serde_json::json;

use super::*;
use crate::images::oci::media_type;
use crate::images::registry::{ClientOptions, Registries, RegistryConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn r(s: &str) -> ImageRef {
    s.parse().expect("valid reference")
}

fn p(s: &str) -> Platform {
    s.parse().expect("valid platform")
}

fn store(dir: &Path) -> ImageStore {
    ImageStore::open(&dir.join("images")).expect("open store")
}

/// Names `reference` in refs.json (enough for `contains`), as if pulled earlier.
fn name(store: &ImageStore, reference: &str, digest: &Digest) {
    store
        .commit_refs(vec![(
            r(reference),
            RefRecord {
                digest: digest.clone(),
                platform: "linux/amd64".to_owned(),
                size: 1,
                imported_at: 1,
            },
        )])
        .expect("name the image");
}

fn pull_ctx<'a>(store: &'a ImageStore, opts: &'a PullOptions) -> Pull<'a> {
    Pull {
        store,
        reference: "registry.test/app:1",
        opts,
    }
}

fn descriptor(media_type: &str, bytes: &[u8], platform: Option<&str>) -> serde_json::Value {
    let mut d = json!({
        "mediaType": media_type,
        "digest": Digest::of(bytes).to_string(),
        "size": bytes.len(),
    });
    if let Some(pl) = platform {
        let pl = p(pl);
        d["platform"] = json!({"os": pl.os, "architecture": pl.architecture});
        if let Some(v) = pl.variant {
            d["platform"]["variant"] = json!(v);
        }
    }
    d
}

fn index(entries: &[(&str, Option<&str>)]) -> Index {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(content, platform)| {
            descriptor(media_type::OCI_MANIFEST, content.as_bytes(), *platform)
        })
        .collect();
    serde_json::from_value(json!({"schemaVersion": 2, "manifests": manifests})).expect("index")
}

// --- policy ---------------------------------------------------------------------------------

#[test]
fn the_policy_decides_whether_to_pull() {
    use PullPolicy::*;
    // (policy, present, pinned) → plan
    let table = [
        (Never, false, false, Plan::Refuse),
        (Never, false, true, Plan::Refuse),
        (Never, true, false, Plan::UseCached),
        (Never, true, true, Plan::UseCached),
        (IfNotPresent, false, false, Plan::Pull),
        (IfNotPresent, false, true, Plan::Pull),
        (IfNotPresent, true, false, Plan::UseCached),
        (IfNotPresent, true, true, Plan::UseCached),
        (Always, false, false, Plan::Pull),
        (Always, false, true, Plan::Pull),
        (Always, true, false, Plan::Pull),
        (Always, true, true, Plan::UseCached), // a digest cannot move
        (PreferCached, false, false, Plan::Pull), // nothing to fall back on
        (PreferCached, false, true, Plan::Pull),
        (PreferCached, true, false, Plan::PullElseCached),
        (PreferCached, true, true, Plan::UseCached),
    ];
    for (policy, present, pinned, want) in table {
        assert_eq!(
            plan(policy, present, pinned),
            want,
            "{} present={present} pinned={pinned}",
            policy.as_str()
        );
    }
}

/// A client for a registry on a loopback port nothing listens on: any request is refused at
/// once, so a test sees whether the store tried to pull.
fn refusing_client() -> (RegistryClient, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let host = format!("127.0.0.1:{port}");
    let registries = Registries::validate(&[RegistryConfig {
        host: host.clone(),
        username: None,
        password: None,
        token: None,
        insecure: true,
    }])
    .expect("valid registry");
    (
        RegistryClient::new(registries, &ClientOptions::default()),
        host,
    )
}

#[test]
fn ensure_follows_the_policy_and_falls_back_only_when_unreachable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = store(dir.path());
    let (client, host) = refusing_client();
    let opts = PullOptions {
        retries: 0,
        ..PullOptions::default()
    };
    let digest = Digest::of(b"a manifest");
    let tagged = format!("{host}/app:1");
    let pinned = format!("{host}/app@{digest}");
    name(&store, &tagged, &digest);
    let absent = format!("{host}/other:1");
    let mut quiet = |_: &PullProgress| {};
    let mut ensure =
        |reference: &str, policy| store.ensure(&client, &r(reference), policy, &opts, &mut quiet);

    // No registry contact: a refused connection would be an error.
    assert!(matches!(
        ensure(&tagged, PullPolicy::IfNotPresent)?,
        Ensured::Cached
    ));
    assert!(matches!(
        ensure(&tagged, PullPolicy::Never)?,
        Ensured::Cached
    ));
    assert!(matches!(
        ensure(&pinned, PullPolicy::Always)?,
        Ensured::Cached
    ));
    assert!(matches!(
        ensure(&pinned, PullPolicy::PreferCached)?,
        Ensured::Cached
    ));
    let err = ensure(&absent, PullPolicy::Never).expect_err("never pulls");
    assert_eq!(
        err.to_string(),
        format!("image {absent} is not in the local store and the pull policy is never")
    );

    // The registry is asked, and cannot be reached.
    match ensure(&tagged, PullPolicy::PreferCached)? {
        Ensured::CachedAfter(e) => assert!(e.is_unreachable(), "{e}"),
        other => panic!("expected the cached image after a failed pull, got {other:?}"),
    }
    let err = ensure(&tagged, PullPolicy::Always).expect_err("always pulls");
    assert!(err.is_unreachable(), "{err}");
    assert!(
        err.to_string().starts_with(&format!("pull {tagged}: ")),
        "{err}"
    );
    let err = ensure(&absent, PullPolicy::PreferCached).expect_err("nothing cached");
    assert!(err.is_unreachable(), "{err}");
    let err = ensure(&absent, PullPolicy::IfNotPresent).expect_err("not present");
    assert!(err.is_unreachable(), "{err}");
    Ok(())
}

#[test]
fn only_registry_trouble_counts_as_unreachable() {
    let digest = Digest::of(b"layer");
    let interrupted = PullError::Interrupted {
        reference: "x".into(),
        digest: digest.clone(),
        done: 1,
        size: 2,
        source: io::Error::new(io::ErrorKind::ConnectionReset, "reset"),
    };
    assert!(interrupted.is_unreachable());
    let corrupt = PullError::Corrupt {
        reference: "x".into(),
        source: BlobError::DigestMismatch {
            expected: digest.clone(),
            actual: Digest::of(b"other"),
        },
    };
    assert!(
        !corrupt.is_unreachable(),
        "a tampered blob is no reason to run the old image"
    );
    let not_found = PullError::Registry {
        reference: "x".into(),
        source: Box::new(RegistryError::NotFound {
            registry: "r".into(),
            what: "manifest 1".into(),
            url: "http://r/v2/x/manifests/1".into(),
        }),
    };
    assert!(!not_found.is_unreachable());
    let busy = PullError::Registry {
        reference: "x".into(),
        source: Box::new(RegistryError::Status {
            registry: "r".into(),
            what: "manifest 1".into(),
            url: "http://r/v2/x/manifests/1".into(),
            status: 503,
            message: "down".into(),
        }),
    };
    assert!(busy.is_unreachable());
}

// --- platform selection ---------------------------------------------------------------------

#[test]
fn picks_the_best_platform_from_an_index() {
    let idx = index(&[
        ("amd64", Some("linux/amd64")),
        ("arm64", Some("linux/arm64/v8")),
        ("armv7", Some("linux/arm/v7")),
        ("armv6", Some("linux/arm/v6")),
    ]);
    let chosen = |platform: &str| {
        choose_manifest("reg/app:1", &p(platform), &idx)
            .map(|d| d.digest.clone())
            .expect("a match")
    };
    assert_eq!(chosen("linux/amd64"), Digest::of(b"amd64"));
    assert_eq!(chosen("linux/arm64/v8"), Digest::of(b"arm64"));
    assert_eq!(chosen("linux/arm64"), Digest::of(b"arm64"));
    // An exact variant beats a compatible older one.
    assert_eq!(chosen("linux/arm/v7"), Digest::of(b"armv7"));
    assert_eq!(chosen("linux/arm/v6"), Digest::of(b"armv6"));
    // This machine's platform, as a store opened here selects it.
    let host = choose_manifest("reg/app:1", &Platform::host(), &idx);
    if ["x86_64", "aarch64"].contains(&std::env::consts::ARCH) {
        assert!(host.is_ok());
    }

    // An arm64 image without a variant runs on arm64/v8; a v7 CPU runs v6 code.
    let idx = index(&[("plain", Some("linux/arm64")), ("v6", Some("linux/arm/v6"))]);
    assert_eq!(
        choose_manifest("r", &p("linux/arm64/v8"), &idx)
            .map(|d| d.digest.clone())
            .ok(),
        Some(Digest::of(b"plain"))
    );
    assert_eq!(
        choose_manifest("r", &p("linux/arm/v7"), &idx)
            .map(|d| d.digest.clone())
            .ok(),
        Some(Digest::of(b"v6"))
    );
}

#[test]
fn no_fitting_platform_names_what_the_index_has() {
    let idx = index(&[
        ("amd64", Some("linux/amd64")),
        ("arm64", Some("linux/arm64/v8")),
        ("win", Some("windows/amd64")),
    ]);
    let err = choose_manifest("reg.example/app:1", &p("linux/arm/v7"), &idx)
        .expect_err("nothing for arm/v7");
    assert!(matches!(err, PullError::NoMatchingPlatform { .. }));
    assert_eq!(
        err.to_string(),
        "pull reg.example/app:1: no image for platform linux/arm/v7; the index has: \
         linux/amd64, linux/arm64/v8, windows/amd64"
    );
    // An arm/v8 image does not run on a v7 CPU.
    let idx = index(&[("v8", Some("linux/arm/v8"))]);
    assert!(choose_manifest("r", &p("linux/arm/v7"), &idx).is_err());
    // Nothing at all.
    let err = choose_manifest("r", &p("linux/amd64"), &index(&[])).expect_err("empty");
    assert!(err.to_string().ends_with("the index has: none"), "{err}");
}

#[test]
fn an_index_entry_without_a_platform_is_taken_only_when_alone() {
    let one = index(&[("only", None)]);
    assert_eq!(
        choose_manifest("r", &p("linux/s390x"), &one)
            .map(|d| d.digest.clone())
            .ok(),
        Some(Digest::of(b"only"))
    );
    let two = index(&[("a", None), ("b", None)]);
    let err = choose_manifest("r", &p("linux/amd64"), &two).expect_err("ambiguous");
    assert!(
        err.to_string()
            .ends_with("the index has: unspecified, unspecified"),
        "{err}"
    );
    // With a platformed sibling, the unplatformed entry (an attestation, say) is skipped.
    let mixed = index(&[("attestation", None), ("amd64", Some("linux/amd64"))]);
    assert_eq!(
        choose_manifest("r", &p("linux/amd64"), &mixed)
            .map(|d| d.digest.clone())
            .ok(),
        Some(Digest::of(b"amd64"))
    );
}

// --- manifests ------------------------------------------------------------------------------

#[test]
fn a_manifest_must_hash_to_what_was_asked_for() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = store(dir.path());
    let opts = PullOptions::default();
    let pull = pull_ctx(&store, &opts);
    let bytes = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let right = Digest::of(bytes);
    let wrong = Digest::of(b"something else");

    let doc = pull.document(
        "m".into(),
        bytes.to_vec(),
        Some(&right),
        Some(bytes.len() as u64),
        None,
    )?;
    assert_eq!(doc.digest, right);
    assert_eq!(doc.kind, ManifestKind::Manifest);

    let err = pull
        .document("m".into(), bytes.to_vec(), Some(&wrong), None, None)
        .err()
        .expect("wrong digest");
    assert!(matches!(err, PullError::ManifestDigest { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "pull registry.test/app:1: manifest has the wrong content: expected {wrong}, its sha256 is {right}"
        )
    );
    let err = pull
        .document("m".into(), bytes.to_vec(), Some(&right), Some(3), None)
        .err()
        .expect("wrong size");
    assert!(
        matches!(err, PullError::ManifestSize { expected: 3, actual, .. } if actual == bytes.len() as u64),
        "{err}"
    );
    // Nothing to check against (a tag, and no Docker-Content-Digest): taken as it comes.
    assert_eq!(
        pull.document("m".into(), bytes.to_vec(), None, None, None)?
            .digest,
        right
    );
    Ok(())
}

#[test]
fn tells_an_index_from_a_manifest() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = store(dir.path());
    let opts = PullOptions::default();
    let pull = pull_ctx(&store, &opts);
    let kind = |body: serde_json::Value, header: Option<&str>| {
        pull.document(
            "m".into(),
            body.to_string().into_bytes(),
            None,
            None,
            header.map(str::to_owned),
        )
        .map(|d| d.kind)
    };
    // The document's own mediaType wins over the Content-Type header.
    assert_eq!(
        kind(
            json!({"mediaType": media_type::OCI_INDEX, "manifests": []}),
            Some(media_type::DOCKER_MANIFEST)
        )?,
        ManifestKind::Index
    );
    assert_eq!(
        kind(json!({"schemaVersion": 2}), Some(media_type::DOCKER_LIST))?,
        ManifestKind::Index
    );
    assert_eq!(
        kind(
            json!({"schemaVersion": 2}),
            Some(media_type::DOCKER_MANIFEST)
        )?,
        ManifestKind::Manifest
    );
    // Neither: `manifests` makes it an index, else a manifest.
    assert_eq!(kind(json!({"manifests": []}), None)?, ManifestKind::Index);
    assert_eq!(
        kind(json!({"layers": []}), Some("application/json"))?,
        ManifestKind::Manifest
    );
    let err = kind(
        json!({"schemaVersion": 1}),
        Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
    )
    .expect_err("schema 1");
    assert!(
        err.to_string()
            .contains("has unsupported media type \"application/vnd.docker.distribution.manifest.v1+prettyjws\""),
        "{err}"
    );
    let err = pull
        .document(
            "manifest latest".into(),
            b"not json".to_vec(),
            None,
            None,
            None,
        )
        .err()
        .expect("not JSON");
    assert!(
        err.to_string()
            .starts_with("pull registry.test/app:1: invalid manifest latest: "),
        "{err}"
    );
    Ok(())
}

#[test]
fn checks_a_manifest_before_fetching_its_blobs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = store(dir.path());
    let opts = PullOptions::default();
    let pull = pull_ctx(&store, &opts);
    let layer = |mt: &str, n: u8| descriptor(mt, &[n], None);
    let manifest = |config_type: &str, layers: Vec<serde_json::Value>| -> Manifest {
        serde_json::from_value(json!({
            "schemaVersion": 2,
            "config": descriptor(config_type, b"{}", None),
            "layers": layers,
        }))
        .expect("manifest")
    };
    let d = Digest::of(b"m");
    let good = manifest(
        media_type::OCI_CONFIG,
        vec![
            layer(media_type::OCI_LAYER_GZIP, 1),
            layer(media_type::OCI_LAYER_ZSTD, 2),
            layer(media_type::DOCKER_LAYER_GZIP, 3),
            layer(media_type::OCI_LAYER, 4),
        ],
    );
    pull.check_manifest(&d, &good)?;

    let err = pull
        .check_manifest(&d, &manifest("application/octet-stream", vec![]))
        .expect_err("config type");
    assert!(
        err.to_string()
            .contains("has unsupported media type \"application/octet-stream\""),
        "{err}"
    );
    let err = pull
        .check_manifest(
            &d,
            &manifest(media_type::OCI_CONFIG, vec![layer("application/x-rar", 1)]),
        )
        .expect_err("layer type");
    assert!(matches!(err, PullError::Layer { .. }), "{err}");
    let many = (0..=MAX_LAYERS)
        .map(|i| {
            layer(
                media_type::OCI_LAYER_GZIP,
                u8::try_from(i % 256).unwrap_or(0),
            )
        })
        .collect();
    let err = pull
        .check_manifest(&d, &manifest(media_type::OCI_CONFIG, many))
        .expect_err("too many layers");
    assert!(
        matches!(err, PullError::TooManyLayers { count, .. } if count == MAX_LAYERS + 1),
        "{err}"
    );
    Ok(())
}

// --- disk -----------------------------------------------------------------------------------

fn info(content: &[u8], size: u64, present: bool) -> LayerInfo {
    LayerInfo {
        digest: Digest::of(content),
        size,
        present,
    }
}

#[test]
fn the_disk_estimate_counts_only_what_is_still_to_download() {
    let layers = [
        info(b"a", 100, false),
        info(b"b", 1000, true),
        info(b"c", 10, false),
    ];
    let none = BTreeMap::new();
    // config 5 + missing layers 110 + unpacking every layer 2 × 1110
    assert_eq!(space_needed(5, &layers, &none), 5 + 110 + 2220);
    // 60 bytes of "a" are already on disk from a broken-off download.
    let partial = BTreeMap::from([(Digest::of(b"a").hex().to_owned(), 60)]);
    assert_eq!(space_needed(5, &layers, &partial), 5 + 40 + 10 + 2220);
    // A partial file longer than its layer is not its beginning: the layer downloads whole.
    let partial = BTreeMap::from([(Digest::of(b"c").hex().to_owned(), 999)]);
    assert_eq!(space_needed(0, &layers, &partial), 100 + 10 + 2220);
    assert_eq!(space_needed(0, &[], &none), 0);
    assert_eq!(
        space_needed(u64::MAX, &[info(b"x", u64::MAX, false)], &none),
        u64::MAX
    );
}

#[test]
fn a_pull_that_would_leave_too_little_free_fails_before_downloading() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = store(dir.path());
    let m: Manifest = serde_json::from_value(json!({
        "schemaVersion": 2,
        "config": descriptor(media_type::OCI_CONFIG, b"{}", None),
        "layers": [],
    }))?;
    let layers = [info(b"a", 1 << 20, false)];
    let roomy = PullOptions {
        min_free_bytes: 0,
        ..PullOptions::default()
    };
    pull_ctx(&store, &roomy).check_disk(&m, &layers)?;
    let greedy = PullOptions {
        min_free_bytes: u64::MAX / 2,
        ..PullOptions::default()
    };
    let err = pull_ctx(&store, &greedy)
        .check_disk(&m, &layers)
        .expect_err("no disk keeps that much free");
    let PullError::DiskFull {
        needed,
        min_free,
        path,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(*needed, 2 + (1 << 20) + (2 << 20));
    assert_eq!(*min_free, u64::MAX / 2);
    assert_eq!(path, store.root());
    Ok(())
}

// --- resuming and verifying layers ----------------------------------------------------------

#[test]
fn the_registrys_answer_says_where_the_download_goes_on() {
    // Nothing yet: a plain 200 of the whole blob.
    assert_eq!(answer(200, None, Some(100), 0, 100), Ok(Answer::Append));
    assert_eq!(answer(200, None, None, 0, 100), Ok(Answer::Append));
    // 40 bytes on disk: the rest, as asked.
    assert_eq!(
        answer(206, Some("bytes 40-99/100"), Some(60), 40, 100),
        Ok(Answer::Append)
    );
    assert_eq!(
        answer(206, Some("bytes 40-99/*"), None, 40, 100),
        Ok(Answer::Append)
    );
    // The Range ignored: the whole blob again.
    assert_eq!(answer(200, None, Some(100), 40, 100), Ok(Answer::StartOver));
    // Another range than asked: the partial file stays for a later attempt.
    assert_eq!(
        answer(206, Some("bytes 0-99/100"), Some(100), 40, 100),
        Err(BadAnswer::Range(
            "Content-Range \"bytes 0-99/100\" for a request from byte 40".into()
        ))
    );
    assert!(matches!(
        answer(206, None, None, 40, 100),
        Err(BadAnswer::Range(_))
    ));
    // A body that would not end at the blob's size.
    assert_eq!(
        answer(206, Some("bytes 40-99/100"), Some(70), 40, 100),
        Err(BadAnswer::Length("110 bytes".into()))
    );
    assert_eq!(
        answer(200, None, Some(99), 40, 100),
        Err(BadAnswer::Length("99 bytes".into()))
    );
    assert_eq!(
        answer(200, None, Some(u64::MAX), 0, 100),
        Err(BadAnswer::Length(format!("{} bytes", u64::MAX)))
    );
}

fn blob() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect()
}

#[test]
fn a_download_resumes_from_what_an_earlier_attempt_left() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = store(dir.path());
    let data = blob();
    let digest = Digest::of(&data);
    let path = store.tmp.join(format!("{PARTIAL_PREFIX}{}", digest.hex()));

    // First attempt: 70 000 bytes, then the link drops.
    let mut first = Partial::open(&path, data.len() as u64)?;
    assert_eq!(first.have, 0);
    first.append(&data[..30_000])?;
    first.append(&data[30_000..70_000])?;
    drop(first);
    assert_eq!(
        store.partial_downloads(),
        vec![(digest.hex().to_owned(), 70_000)]
    );

    // Next attempt (another process, after a restart): goes on from byte 70 000, and the
    // whole blob hashes right because what was there is hashed again.
    let mut next = Partial::open(&path, data.len() as u64)?;
    assert_eq!(next.have, 70_000);
    next.append(&data[70_000..])?;
    assert_eq!(next.have, data.len() as u64);
    next.verify(&path, &digest)?;
    assert_eq!(fs::read(&path)?, data);
    store.blobs.install_hashed(&digest, &path)?;
    assert!(store.blobs.contains(&digest, data.len() as u64));
    assert!(store.partial_downloads().is_empty());
    Ok(())
}

#[test]
fn a_partial_file_longer_than_its_blob_starts_over() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = store(dir.path());
    let data = blob();
    let digest = Digest::of(&data);
    let path = store.tmp.join(format!("{PARTIAL_PREFIX}{}", digest.hex()));
    fs::write(&path, vec![7u8; data.len() + 1])?;
    let mut partial = Partial::open(&path, data.len() as u64)?;
    assert_eq!(partial.have, 0);
    assert_eq!(fs::metadata(&path)?.len(), 0);
    partial.append(&data)?;
    partial.verify(&path, &digest)?;
    Ok(())
}

#[test]
fn a_registry_that_ignores_the_range_gets_the_whole_blob_written_again() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = store(dir.path());
    let data = blob();
    let digest = Digest::of(&data);
    let path = store.tmp.join(format!("{PARTIAL_PREFIX}{}", digest.hex()));
    fs::write(&path, &data[..50_000])?;
    let mut partial = Partial::open(&path, data.len() as u64)?;
    assert_eq!(partial.have, 50_000);
    assert_eq!(
        answer(
            200,
            None,
            Some(data.len() as u64),
            partial.have,
            data.len() as u64
        ),
        Ok(Answer::StartOver)
    );
    partial.start_over()?;
    partial.append(&data)?;
    partial.verify(&path, &digest)?;
    assert_eq!(fs::read(&path)?, data);
    Ok(())
}

#[test]
fn a_blob_with_the_wrong_content_is_deleted_and_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = store(dir.path());
    let data = blob();
    let digest = Digest::of(&data);
    let path = store.tmp.join(format!("{PARTIAL_PREFIX}{}", digest.hex()));
    // What an earlier attempt left was tampered with (or the disk flipped a bit).
    let mut tampered = data[..80_000].to_vec();
    tampered[1234] ^= 0x01;
    fs::write(&path, &tampered)?;
    let mut partial = Partial::open(&path, data.len() as u64)?;
    partial.append(&data[80_000..])?;
    let err = partial.verify(&path, &digest).expect_err("wrong content");
    let mut whole = tampered;
    whole.extend_from_slice(&data[80_000..]);
    assert!(
        matches!(&err, BlobError::DigestMismatch { expected, actual }
            if *expected == digest && *actual == Digest::of(&whole)),
        "{err}"
    );
    assert_eq!(
        PullError::Corrupt {
            reference: "reg/app:1".into(),
            source: err,
        }
        .to_string(),
        format!(
            "pull reg/app:1: blob {digest} has the wrong content: its sha256 is {}; the blob was deleted",
            Digest::of(&whole)
        )
    );
    assert!(
        !path.exists(),
        "the partial file is gone: the next pull starts afresh"
    );
    assert!(!store.blobs.contains(&digest, data.len() as u64));
    Ok(())
}

#[test]
fn partial_downloads_lists_only_partial_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = store(dir.path());
    fs::write(store.tmp.join(format!("{PARTIAL_PREFIX}abc")), b"12345")?;
    fs::write(store.tmp.join("other"), b"1")?;
    assert_eq!(store.partial_downloads(), vec![("abc".to_owned(), 5)]);
    Ok(())
}
