//! Import, resolve, list, remove: against OCI layouts built here, blob by blob.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::*;
use crate::images::oci::media_type;
use crate::images::ImageConfig;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn r(s: &str) -> ImageRef {
    s.parse().expect("valid reference")
}

fn amd64() -> Platform {
    "linux/amd64".parse().expect("platform")
}

/// A tar of regular files (0644) and, for names ending in `/`, directories (0755).
fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut h = tar::Header::new_gnu();
        if name.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(content.len() as u64);
        }
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, name, *content).expect("append");
    }
    b.into_inner().expect("tar")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

/// Media types of one image: OCI by default, or Docker schema 2.
#[derive(Clone, Copy)]
struct Kinds {
    manifest: &'static str,
    config: &'static str,
    layer: &'static str,
}

const OCI: Kinds = Kinds {
    manifest: media_type::OCI_MANIFEST,
    config: media_type::OCI_CONFIG,
    layer: media_type::OCI_LAYER_GZIP,
};

const DOCKER: Kinds = Kinds {
    manifest: media_type::DOCKER_MANIFEST,
    config: media_type::DOCKER_CONFIG,
    layer: media_type::DOCKER_LAYER_GZIP,
};

/// An OCI image layout being written.
struct Oci {
    dir: PathBuf,
    index: Vec<Value>,
}

impl Oci {
    fn new(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir.join("blobs/sha256"))?;
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Oci {
            dir: dir.to_path_buf(),
            index: Vec::new(),
        })
    }

    fn put(&self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = Digest::of(bytes);
        fs::write(self.dir.join("blobs/sha256").join(digest.hex()), bytes).expect("write blob");
        json!({"mediaType": media_type, "digest": digest.to_string(), "size": bytes.len()})
    }

    fn blob_path(&self, desc: &Value) -> PathBuf {
        let digest: Digest = desc["digest"]
            .as_str()
            .expect("digest")
            .parse()
            .expect("digest");
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// An image of `layers` (uncompressed tars) for `arch`, returning its manifest descriptor.
    fn image(&self, arch: &str, layers: &[Vec<u8>], cmd: &[&str]) -> Value {
        self.image_with(arch, layers, cmd, OCI)
    }

    fn image_with(&self, arch: &str, layers: &[Vec<u8>], cmd: &[&str], kinds: Kinds) -> Value {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for tar in layers {
            let blob = if kinds.layer == media_type::OCI_LAYER {
                tar.clone()
            } else if kinds.layer == media_type::OCI_LAYER_ZSTD {
                ruzstd::encoding::compress_to_vec(
                    &tar[..],
                    ruzstd::encoding::CompressionLevel::Fastest,
                )
            } else {
                gzip(tar)
            };
            layer_descs.push(self.put(kinds.layer, &blob));
            diff_ids.push(Digest::of(tar).to_string());
        }
        let config = json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/work", "User": "nobody"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = self.put(kinds.config, config.to_string().as_bytes());
        let manifest = json!({
            "schemaVersion": 2, "mediaType": kinds.manifest,
            "config": config, "layers": layer_descs,
        });
        self.put(kinds.manifest, manifest.to_string().as_bytes())
    }

    /// A nested image index of `(manifest descriptor, platform)` entries.
    fn nested_index(&self, entries: &[(Value, &str)]) -> Value {
        let manifests: Vec<Value> = entries
            .iter()
            .map(|(d, p)| with_platform(d.clone(), p))
            .collect();
        let index =
            json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": manifests});
        self.put(media_type::OCI_INDEX, index.to_string().as_bytes())
    }

    fn add(&mut self, desc: Value, name: Option<&str>) -> &mut Self {
        let mut desc = desc;
        if let Some(name) = name {
            desc["annotations"] = json!({ ANNOTATION_REF_NAME: name });
        }
        self.index.push(desc);
        self
    }

    fn write(&self) -> PathBuf {
        let index = json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": self.index});
        fs::write(self.dir.join("index.json"), index.to_string()).expect("write index");
        self.dir.clone()
    }
}

fn with_platform(mut desc: Value, platform: &str) -> Value {
    let p: Platform = platform.parse().expect("platform");
    let mut v = json!({"os": p.os, "architecture": p.architecture});
    if let Some(variant) = p.variant {
        v["variant"] = json!(variant);
    }
    desc["platform"] = v;
    desc
}

struct Fixture {
    dir: tempfile::TempDir,
    store: ImageStore,
}

impl Fixture {
    fn new() -> Result<Self, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = ImageStore::open(&dir.path().join("store"))?.with_platform(amd64());
        Ok(Fixture { dir, store })
    }

    fn layout(&self, name: &str) -> std::io::Result<Oci> {
        Oci::new(&self.dir.path().join(name))
    }

    fn refs_json(&self) -> std::io::Result<Option<Value>> {
        match fs::read(self.store.root().join("refs.json")) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn tmp_is_empty(&self) -> std::io::Result<bool> {
        Ok(fs::read_dir(self.store.root().join("tmp"))?
            .next()
            .is_none())
    }
}

fn hello_layer() -> Vec<u8> {
    layer_tar(&[("bin/", b""), ("bin/hello", b"hello"), ("etc/motd", b"hi")])
}

#[test]
fn imports_and_resolves_a_named_image() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("app")?;
    let desc = oci.image("amd64", &[hello_layer()], &["/bin/hello"]);
    let path = oci
        .add(desc.clone(), Some("registry.example:5000/team/app:v1"))
        .write();

    let imported = fx.store.import(&path, None)?;
    assert_eq!(imported.len(), 1);
    let image = &imported[0];
    assert_eq!(
        image.reference.to_string(),
        "registry.example:5000/team/app:v1"
    );
    assert_eq!(image.digest.to_string(), desc["digest"]);
    assert_eq!(image.platform, amd64());
    assert_eq!(image.blobs_written, 3);

    let resolved = fx
        .store
        .resolve(&r("registry.example:5000/team/app:v1"))?
        .expect("image is in the store");
    assert_eq!(resolved.reference, "registry.example:5000/team/app:v1");
    assert_eq!(resolved.digest, desc["digest"]);
    assert_eq!(fs::read(resolved.rootfs.join("bin/hello"))?, b"hello");
    assert_eq!(resolved.rootfs, fx.store.rootfs_path(&image.digest));
    assert_eq!(
        resolved.config,
        ImageConfig {
            entrypoint: vec![],
            cmd: vec!["/bin/hello".to_owned()],
            env: vec!["PATH=/bin".to_owned()],
            working_dir: Some("/work".to_owned()),
            user: Some("nobody".to_owned()),
        }
    );
    // Resolving again reuses the unpacked rootfs.
    let again = fx.store.resolve(&r("registry.example:5000/team/app:v1"))?;
    assert_eq!(again.map(|i| i.rootfs), Some(resolved.rootfs));
    assert!(fx.tmp_is_empty()?);

    assert_eq!(
        fx.store.resolve(&r("registry.example:5000/team/app:v2"))?,
        None
    );
    assert_eq!(fx.store.resolve(&r("busybox"))?, None);
    Ok(())
}

#[test]
fn resolves_by_digest() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("app")?;
    let desc = oci.image("amd64", &[hello_layer()], &["sh"]);
    let path = oci.add(desc.clone(), Some("localhost/app:1")).write();
    fx.store.import(&path, None)?;
    let digest = desc["digest"].as_str().expect("digest");

    let by_digest = fx
        .store
        .resolve(&r(&format!("localhost/app@{digest}")))?
        .expect("found by digest");
    assert_eq!(by_digest.digest, digest);
    assert_eq!(by_digest.reference, format!("localhost/app@{digest}"));
    // The digest wins over a tag that names nothing.
    assert!(fx
        .store
        .resolve(&r(&format!("localhost/app:gone@{digest}")))?
        .is_some());
    let other = Digest::of(b"other");
    assert_eq!(
        fx.store.resolve(&r(&format!("localhost/app@{other}")))?,
        None
    );
    Ok(())
}

#[test]
fn bare_tag_needs_a_repository() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("bb")?;
    let desc = oci.image("amd64", &[hello_layer()], &["sh"]);
    let path = oci.add(desc, Some("1.36")).write();

    let err = fx.store.import(&path, None).expect_err("bare tag");
    assert!(matches!(err, ImportError::BareTag { .. }), "{err}");
    assert!(err.to_string().contains("--tag"), "{err}");
    assert!(fx.refs_json()?.is_none());

    // `--tag busybox` gives the repository and keeps the annotation's tag.
    let imported = fx.store.import(&path, Some(&r("busybox")))?;
    assert_eq!(
        imported[0].reference.to_string(),
        "docker.io/library/busybox:1.36"
    );
    // `--tag busybox:stable` names it outright.
    let imported = fx.store.import(&path, Some(&r("busybox:stable")))?;
    assert_eq!(
        imported[0].reference.to_string(),
        "docker.io/library/busybox:stable"
    );
    assert_eq!(
        fx.store.catalog()?.keys().cloned().collect::<Vec<_>>(),
        [
            "docker.io/library/busybox:1.36",
            "docker.io/library/busybox:stable"
        ]
    );
    Ok(())
}

#[test]
fn latest_annotation_with_tag_names_latest() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("bb")?;
    let desc = oci.image("amd64", &[hello_layer()], &["sh"]);
    let path = oci.add(desc, Some("latest")).write();
    let imported = fx.store.import(&path, Some(&r("busybox")))?;
    assert_eq!(
        imported[0].reference.to_string(),
        "docker.io/library/busybox:latest"
    );
    assert!(fx.store.resolve(&r("busybox"))?.is_some());
    Ok(())
}

#[test]
fn unnamed_image_needs_tag() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("x")?;
    let desc = oci.image("amd64", &[hello_layer()], &["sh"]);
    let path = oci.add(desc, None).write();
    let err = fx.store.import(&path, None).expect_err("no name");
    assert!(matches!(err, ImportError::Unnamed { .. }), "{err}");
    assert!(err.to_string().contains("--tag"), "{err}");
    let imported = fx.store.import(&path, Some(&r("myuser/app")))?;
    assert_eq!(
        imported[0].reference.to_string(),
        "docker.io/myuser/app:latest"
    );
    Ok(())
}

#[test]
fn tag_must_not_pin_a_digest() -> TestResult {
    let fx = Fixture::new()?;
    let tag = r(&format!("busybox@{}", Digest::of(b"x")));
    let err = fx
        .store
        .import(Path::new("/nonexistent"), Some(&tag))
        .expect_err("digest in tag");
    assert!(matches!(err, ImportError::TagWithDigest { .. }), "{err}");
    Ok(())
}

#[test]
fn several_images_take_the_repository_from_tag() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("multi")?;
    let one = oci.image("amd64", &[layer_tar(&[("v", b"1")])], &["sh"]);
    let two = oci.image("amd64", &[layer_tar(&[("v", b"2")])], &["sh"]);
    let path = oci
        .add(one, Some("1"))
        .add(two, Some("ghcr.io/org/other:2"))
        .write();

    let err = fx
        .store
        .import(&path, Some(&r("busybox:9")))
        .expect_err("explicit tag for two images");
    assert!(
        matches!(err, ImportError::TagForMany { count: 2, .. }),
        "{err}"
    );

    let imported = fx.store.import(&path, Some(&r("busybox")))?;
    let names: Vec<String> = imported.iter().map(|i| i.reference.to_string()).collect();
    assert_eq!(
        names,
        ["docker.io/library/busybox:1", "ghcr.io/org/other:2"]
    );
    let one = fx.store.resolve(&r("busybox:1"))?.expect("one");
    let two = fx.store.resolve(&r("ghcr.io/org/other:2"))?.expect("two");
    assert_eq!(fs::read(one.rootfs.join("v"))?, b"1");
    assert_eq!(fs::read(two.rootfs.join("v"))?, b"2");
    Ok(())
}

#[test]
fn picks_this_platform_from_a_nested_index() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("multiarch")?;
    let amd = oci.image("amd64", &[layer_tar(&[("arch", b"amd64")])], &["sh"]);
    let arm = oci.image("arm64", &[layer_tar(&[("arch", b"arm64")])], &["sh"]);
    let arm_blob = oci.blob_path(&arm);
    let index = oci.nested_index(&[(arm, "linux/arm64/v8"), (amd, "linux/amd64")]);
    let path = oci
        .add(index, Some("docker.io/library/busybox:1.36"))
        .write();

    let imported = fx.store.import(&path, None)?;
    assert_eq!(imported[0].platform.to_string(), "linux/amd64");
    let image = fx.store.resolve(&r("busybox:1.36"))?.expect("image");
    assert_eq!(fs::read(image.rootfs.join("arch"))?, b"amd64");

    // The same layout for an arm64 device.
    let arm_store = ImageStore::open(&fx.dir.path().join("arm-store"))?
        .with_platform("linux/arm64/v8".parse()?);
    let imported = arm_store.import(&path, None)?;
    assert_eq!(imported[0].platform.to_string(), "linux/arm64");
    assert!(arm_blob.exists());

    // And for one no image fits.
    let riscv_store = ImageStore::open(&fx.dir.path().join("riscv-store"))?
        .with_platform("linux/riscv64".parse()?);
    let err = riscv_store
        .import(&path, None)
        .expect_err("no riscv64 image");
    assert!(
        matches!(err, ImportError::NoMatchingPlatform { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("linux/riscv64"), "{msg}");
    assert!(msg.contains("linux/arm64/v8, linux/amd64"), "{msg}");
    Ok(())
}

#[test]
fn only_the_chosen_platform_blobs_must_be_present() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("partial")?;
    let amd = oci.image("amd64", &[hello_layer()], &["sh"]);
    let arm = oci.image("arm64", &[layer_tar(&[("arm", b"")])], &["sh"]);
    fs::remove_file(oci.blob_path(&arm))?;
    let index = oci.nested_index(&[(amd, "linux/amd64"), (arm, "linux/arm64")]);
    let path = oci.add(index, Some("localhost/partial:1")).write();
    fx.store.import(&path, None)?;
    Ok(())
}

#[test]
fn rejects_an_image_for_another_platform() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("arm")?;
    let desc = oci.image("arm64", &[hello_layer()], &["sh"]);
    let path = oci.add(desc, Some("localhost/arm:1")).write();
    let err = fx
        .store
        .import(&path, None)
        .expect_err("arm64 image on amd64");
    assert!(matches!(err, ImportError::WrongPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/arm64"), "{err}");
    assert!(fx.store.catalog()?.is_empty());
    Ok(())
}

#[test]
fn corrupted_blob_fails_naming_it_and_names_nothing() -> TestResult {
    let fx = Fixture::new()?;
    // A good image imported earlier stays as it was.
    let mut good = fx.layout("good")?;
    let desc = good.image("amd64", &[hello_layer()], &["sh"]);
    fx.store
        .import(&good.add(desc, Some("localhost/good:1")).write(), None)?;
    let refs_before = fx.refs_json()?;

    let mut oci = fx.layout("bad")?;
    let fine = oci.image("amd64", &[layer_tar(&[("fine", b"")])], &["sh"]);
    let bad = oci.image("amd64", &[layer_tar(&[("bad", b"")])], &["sh"]);
    // Flip one byte of the bad image's layer, keeping its size.
    let manifest: Value = serde_json::from_slice(&fs::read(oci.blob_path(&bad))?)?;
    let layer = &manifest["layers"][0];
    let layer_path = oci.blob_path(layer);
    let mut bytes = fs::read(&layer_path)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&layer_path, &bytes)?;
    let path = oci
        .add(fine, Some("localhost/fine:1"))
        .add(bad, Some("localhost/bad:1"))
        .write();

    let err = fx.store.import(&path, None).expect_err("corrupted layer");
    let msg = err.to_string();
    assert!(
        matches!(
            &err,
            ImportError::Blob {
                source: BlobError::DigestMismatch { .. },
                ..
            }
        ),
        "{msg}"
    );
    let layer_digest = layer["digest"].as_str().expect("digest");
    assert!(msg.contains(layer_digest), "{msg}");

    assert_eq!(fx.refs_json()?, refs_before);
    assert_eq!(
        fx.store.catalog()?.keys().cloned().collect::<Vec<_>>(),
        ["localhost/good:1"]
    );
    let layer_digest: Digest = layer_digest.parse()?;
    assert!(!fx.store.blobs().path(&layer_digest).exists());
    assert!(fx.tmp_is_empty()?);
    Ok(())
}

#[test]
fn size_mismatch_and_missing_blobs_are_errors() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("sizes")?;
    let desc = oci.image("amd64", &[hello_layer()], &["sh"]);
    let manifest_path = oci.blob_path(&desc);
    let mut wrong = desc.clone();
    wrong["size"] = json!(desc["size"].as_u64().expect("size") + 1);
    let path = oci.add(wrong, Some("localhost/x:1")).write();
    let err = fx.store.import(&path, None).expect_err("size mismatch");
    assert!(
        matches!(
            &err,
            ImportError::Blob {
                source: BlobError::SizeMismatch { .. },
                ..
            }
        ),
        "{err}"
    );

    let mut oci = fx.layout("missing")?;
    let desc = oci.image("amd64", &[hello_layer()], &["sh"]);
    fs::remove_file(oci.blob_path(&desc))?;
    let path = oci.add(desc.clone(), Some("localhost/x:1")).write();
    let err = fx.store.import(&path, None).expect_err("missing manifest");
    assert!(matches!(err, ImportError::BlobMissing { .. }), "{err}");
    assert!(err
        .to_string()
        .contains(desc["digest"].as_str().expect("digest")));
    assert!(manifest_path.exists());
    Ok(())
}

#[test]
fn imports_zstd_layers_and_rejects_unknown_media_types_by_name() -> TestResult {
    let fx = Fixture::new()?;
    let zstd = Kinds {
        layer: media_type::OCI_LAYER_ZSTD,
        ..OCI
    };
    let mut oci = fx.layout("zstd")?;
    let desc = oci.image_with("amd64", &[hello_layer()], &["sh"], zstd);
    fx.store
        .import(&oci.add(desc, Some("localhost/z:1")).write(), None)
        .map_err(|e| format!("zstd import: {e}"))?;
    let r: ImageRef = "localhost/z:1".parse()?;
    let img = fx.store.resolve(&r)?.ok_or("zstd image not found")?;
    assert_eq!(std::fs::read(img.rootfs.join("bin/hello"))?, b"hello");

    let odd = Kinds {
        layer: "application/vnd.example.layer",
        ..OCI
    };
    let mut oci = fx.layout("odd")?;
    let desc = oci.image_with("amd64", &[hello_layer()], &["sh"], odd);
    let err = fx
        .store
        .import(&oci.add(desc, Some("localhost/o:1")).write(), None)
        .expect_err("unknown layer type");
    assert!(
        err.to_string().contains("application/vnd.example.layer"),
        "{err}"
    );

    let mut oci = fx.layout("artifact")?;
    let desc = oci.put("application/vnd.example.artifact+json", b"{}");
    let err = fx
        .store
        .import(&oci.add(desc, Some("localhost/a:1")).write(), None)
        .expect_err("unknown manifest type");
    assert!(
        matches!(
            err,
            ImportError::UnknownMediaType {
                what: "manifest",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("application/vnd.example.artifact+json"),
        "{err}"
    );
    let names: Vec<String> = fx.store.catalog()?.into_keys().collect();
    assert_eq!(names, ["localhost/z:1"], "only the zstd image was named");
    Ok(())
}

#[test]
fn imports_docker_schema2_images() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("docker")?;
    let desc = oci.image_with("amd64", &[hello_layer()], &["sh"], DOCKER);
    let path = oci.add(desc, Some("docker.io/myuser/app:v1")).write();
    fx.store.import(&path, None)?;
    let image = fx.store.resolve(&r("myuser/app:v1"))?.expect("image");
    assert_eq!(fs::read(image.rootfs.join("bin/hello"))?, b"hello");
    Ok(())
}

#[test]
fn bounds_layer_count_and_json_sizes() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("many")?;
    let layer = oci.put(media_type::OCI_LAYER_GZIP, &gzip(&layer_tar(&[("f", b"")])));
    let diff_id = Digest::of(&layer_tar(&[("f", b"")])).to_string();
    let config = json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": vec![diff_id; MAX_LAYERS + 1]}});
    let config = oci.put(media_type::OCI_CONFIG, config.to_string().as_bytes());
    let manifest = json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
        "config": config, "layers": vec![layer; MAX_LAYERS + 1]});
    let desc = oci.put(media_type::OCI_MANIFEST, manifest.to_string().as_bytes());
    let err = fx
        .store
        .import(&oci.add(desc, Some("localhost/many:1")).write(), None)
        .expect_err("too many layers");
    assert!(
        matches!(err, ImportError::TooManyLayers { count: 129, .. }),
        "{err}"
    );

    let mut oci = fx.layout("huge")?;
    let mut desc = oci.image("amd64", &[hello_layer()], &["sh"]);
    desc["size"] = json!(MAX_JSON_SIZE + 1);
    let err = fx
        .store
        .import(&oci.add(desc, Some("localhost/huge:1")).write(), None)
        .expect_err("huge manifest");
    assert!(matches!(err, ImportError::TooLarge { .. }), "{err}");

    let oci = fx.layout("huge-index")?;
    let mut big = Vec::new();
    big.resize(usize::try_from(MAX_JSON_SIZE)? + 1, b' ');
    fs::write(oci.dir.join("index.json"), &big)?;
    let err = fx.store.import(&oci.dir, None).expect_err("huge index");
    assert!(matches!(err, ImportError::TooLarge { .. }), "{err}");
    Ok(())
}

#[test]
fn not_a_layout() -> TestResult {
    let fx = Fixture::new()?;
    let dir = fx.dir.path().join("empty");
    fs::create_dir(&dir)?;
    let err = fx.store.import(&dir, None).expect_err("no oci-layout");
    assert!(matches!(err, ImportError::NotALayout { .. }), "{err}");
    assert!(err.to_string().contains("oci-layout"), "{err}");

    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"2.0.0"}"#)?;
    let err = fx.store.import(&dir, None).expect_err("version 2");
    assert!(matches!(err, ImportError::LayoutVersion { .. }), "{err}");

    let err = fx
        .store
        .import(&fx.dir.path().join("nonexistent"), None)
        .expect_err("missing path");
    assert!(matches!(err, ImportError::Io { .. }), "{err}");

    let junk = fx.dir.path().join("junk.tar");
    fs::write(
        &junk,
        b"this is not a tar archive at all, not even close to one",
    )?;
    let err = fx.store.import(&junk, None).expect_err("junk");
    assert!(fx.tmp_is_empty()?, "{err}");
    Ok(())
}

#[test]
fn reimport_is_idempotent() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("app")?;
    let desc = oci.image("amd64", &[hello_layer()], &["sh"]);
    let path = oci.add(desc, Some("localhost/app:1")).write();
    let first = fx.store.import(&path, None)?;
    let rootfs = fx
        .store
        .resolve(&r("localhost/app:1"))?
        .expect("image")
        .rootfs;
    let second = fx.store.import(&path, None)?;
    assert_eq!(first[0].blobs_written, 3);
    assert_eq!(second[0].blobs_written, 0);
    assert_eq!(first[0].digest, second[0].digest);
    assert_eq!(fx.store.list()?.len(), 1);
    assert_eq!(
        fx.store
            .resolve(&r("localhost/app:1"))?
            .expect("image")
            .rootfs,
        rootfs
    );
    Ok(())
}

/// A tar of the layout directory `dir`, with entries named as skopeo's `oci-archive:` does.
fn tar_layout(dir: &Path) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir)?;
    Ok(b.into_inner()?)
}

#[test]
fn imports_tar_and_tar_gz_archives() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("app")?;
    let desc = oci.image("amd64", &[hello_layer()], &["sh"]);
    let dir = oci.add(desc, Some("latest")).write();
    let tar = tar_layout(&dir)?;

    let tar_path = fx.dir.path().join("app.tar");
    fs::write(&tar_path, &tar)?;
    let imported = fx.store.import(&tar_path, Some(&r("localhost/app")))?;
    assert_eq!(imported[0].reference.to_string(), "localhost/app:latest");
    assert_eq!(imported[0].blobs_written, 3);
    assert!(fx.tmp_is_empty()?);
    let image = fx.store.resolve(&r("localhost/app"))?.expect("image");
    assert_eq!(fs::read(image.rootfs.join("etc/motd"))?, b"hi");

    let gz_path = fx.dir.path().join("app.tar.gz");
    fs::write(&gz_path, gzip(&tar))?;
    let other = ImageStore::open(&fx.dir.path().join("store2"))?.with_platform(amd64());
    let imported = other.import(&gz_path, Some(&r("localhost/app:gz")))?;
    assert_eq!(imported[0].blobs_written, 3);
    assert!(other.resolve(&r("localhost/app:gz"))?.is_some());
    Ok(())
}

#[test]
fn corrupted_blob_in_an_archive_is_caught_too() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("app")?;
    let desc = oci.image("amd64", &[hello_layer()], &["sh"]);
    let manifest: Value = serde_json::from_slice(&fs::read(oci.blob_path(&desc))?)?;
    let layer_path = oci.blob_path(&manifest["layers"][0]);
    let mut bytes = fs::read(&layer_path)?;
    bytes[10] ^= 0x01;
    fs::write(&layer_path, &bytes)?;
    let dir = oci.add(desc, Some("localhost/app:1")).write();
    let tar_path = fx.dir.path().join("app.tar");
    fs::write(&tar_path, tar_layout(&dir)?)?;
    let err = fx.store.import(&tar_path, None).expect_err("corrupted");
    assert!(err
        .to_string()
        .contains(manifest["layers"][0]["digest"].as_str().expect("d")));
    assert!(fx.store.catalog()?.is_empty());
    assert!(fx.tmp_is_empty()?);
    Ok(())
}

#[test]
fn layers_apply_in_order_with_whiteouts() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("layers")?;
    let base = layer_tar(&[("etc/a", b"base"), ("etc/b", b"base")]);
    let top = layer_tar(&[("etc/a", b"top"), ("etc/.wh.b", b"")]);
    let desc = oci.image("amd64", &[base, top], &["sh"]);
    fx.store
        .import(&oci.add(desc, Some("localhost/layers:1")).write(), None)?;
    let image = fx.store.resolve(&r("localhost/layers:1"))?.expect("image");
    assert_eq!(fs::read(image.rootfs.join("etc/a"))?, b"top");
    assert!(!image.rootfs.join("etc/b").exists());
    Ok(())
}

#[test]
fn bad_diff_id_fails_resolve_and_leaves_no_rootfs() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("diffid")?;
    let layer = oci.put(media_type::OCI_LAYER_GZIP, &gzip(&hello_layer()));
    let config = json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(b"wrong").to_string()]}});
    let config = oci.put(media_type::OCI_CONFIG, config.to_string().as_bytes());
    let manifest = json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
        "config": config, "layers": [layer]});
    let desc = oci.put(media_type::OCI_MANIFEST, manifest.to_string().as_bytes());
    let digest: Digest = desc["digest"].as_str().expect("digest").parse()?;
    fx.store
        .import(&oci.add(desc, Some("localhost/d:1")).write(), None)?;
    let err = fx
        .store
        .resolve(&r("localhost/d:1"))
        .expect_err("bad diff id");
    assert!(
        matches!(
            err,
            StoreError::Unpack {
                source: super::unpack::UnpackError::DiffIdMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(!fx.store.rootfs_path(&digest).exists());
    assert!(fx.tmp_is_empty()?);
    Ok(())
}

#[test]
fn concurrent_resolvers_share_one_rootfs() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("app")?;
    let many: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("data/{i}"), vec![b'x'; 1000]))
        .collect();
    let files: Vec<(&str, &[u8])> = many
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    let desc = oci.image("amd64", &[layer_tar(&files)], &["sh"]);
    fx.store
        .import(&oci.add(desc, Some("localhost/app:1")).write(), None)?;

    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                // Each thread opens its own handle, as separate processes would.
                let root = fx.store.root().to_path_buf();
                s.spawn(move || -> Result<PathBuf, String> {
                    let store = ImageStore::open(&root).map_err(|e| e.to_string())?;
                    let image = store
                        .resolve(&r("localhost/app:1"))
                        .map_err(|e| e.to_string())?
                        .ok_or("missing")?;
                    Ok(image.rootfs)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "thread panicked".to_owned()))
            .collect()
    });
    let mut rootfs = Vec::new();
    for result in results {
        rootfs.push(result??);
    }
    rootfs.dedup();
    assert_eq!(rootfs.len(), 1);
    assert_eq!(fs::read_dir(rootfs[0].join("data"))?.count(), 200);
    assert!(fx.tmp_is_empty()?);
    assert_eq!(fs::read_dir(fx.store.root().join("rootfs"))?.count(), 1);
    Ok(())
}

#[test]
fn another_process_import_is_seen_without_reopening() -> TestResult {
    let fx = Fixture::new()?;
    let reader = ImageStore::open(fx.store.root())?;
    assert!(reader.catalog()?.is_empty());
    let mut oci = fx.layout("app")?;
    let desc = oci.image("amd64", &[hello_layer()], &["sh"]);
    fx.store.import(
        &oci.add(desc.clone(), Some("localhost/app:1")).write(),
        None,
    )?;
    assert_eq!(
        reader.catalog()?.get("localhost/app:1").map(String::as_str),
        desc["digest"].as_str()
    );
    Ok(())
}

#[test]
fn list_catalog_and_remove() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("app")?;
    let desc = oci.image("amd64", &[hello_layer()], &["sh"]);
    let digest: Digest = desc["digest"].as_str().expect("digest").parse()?;
    let path = oci
        .add(desc.clone(), Some("localhost/app:1"))
        .add(desc.clone(), Some("localhost/app:2"))
        .add(desc, Some("localhost/other:1"))
        .write();
    let imported = fx.store.import(&path, None)?;
    assert_eq!(imported.len(), 3);
    assert_eq!(imported[0].blobs_written, 3);
    assert_eq!(imported[1].blobs_written, 0);

    let list = fx.store.list()?;
    assert_eq!(list.len(), 3);
    assert_eq!(list[0].reference, r("localhost/app:1"));
    assert_eq!(list[0].digest, digest);
    assert_eq!(list[0].platform, amd64());
    assert_eq!(list[0].size, imported[0].size);
    assert!(list[0].size > 0);

    assert!(fx.store.remove(&r("localhost/app:1"))?);
    assert!(!fx.store.remove(&r("localhost/app:1"))?);
    assert_eq!(fx.store.resolve(&r("localhost/app:1"))?, None);
    assert!(fx.store.resolve(&r("localhost/app:2"))?.is_some());

    // By digest: every name of that repository with that digest, not other repositories'.
    assert!(fx.store.remove(&r(&format!("localhost/app@{digest}")))?);
    let catalog = fx.store.catalog()?;
    assert_eq!(
        catalog.keys().cloned().collect::<Vec<_>>(),
        ["localhost/other:1"]
    );
    assert_eq!(catalog["localhost/other:1"], digest.to_string());
    // Blobs stay for garbage collection.
    assert!(fx.store.blobs().path(&digest).exists());
    Ok(())
}

#[test]
fn corrupt_refs_json_is_reported() -> TestResult {
    let fx = Fixture::new()?;
    fs::write(fx.store.root().join("refs.json"), b"{not json")?;
    let err = fx.store.catalog().expect_err("corrupt");
    assert!(matches!(err, StoreError::CorruptRefs { .. }), "{err}");
    fs::write(
        fx.store.root().join("refs.json"),
        br#"{"version":2,"images":{}}"#,
    )?;
    let err = fx.store.list().expect_err("newer version");
    assert!(
        matches!(err, StoreError::RefsVersion { version: 2, .. }),
        "{err}"
    );
    Ok(())
}

#[test]
fn error_messages_are_lowercase_without_period() -> TestResult {
    let fx = Fixture::new()?;
    let mut oci = fx.layout("bb")?;
    let desc = oci.image("amd64", &[hello_layer()], &["sh"]);
    let path = oci.add(desc, Some("latest")).write();
    let errors = [
        fx.store
            .import(&path, None)
            .expect_err("bare tag")
            .to_string(),
        fx.store
            .import(&fx.dir.path().join("nope"), None)
            .expect_err("missing")
            .to_string(),
    ];
    for msg in errors {
        assert!(!msg.ends_with('.'), "{msg}");
        assert!(!msg.starts_with(|c: char| c.is_uppercase()), "{msg}");
    }
    Ok(())
}
