//! Registry pulls against Debian's `docker-registry` on loopback, images pushed with `skopeo`:
//! pull and run, pull by digest, multi-arch selection (an index over this machine's busybox
//! and Debian's busybox-static for another CPU), a tampered blob, a download broken off and
//! resumed, and `prefer-cached` with the registry gone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use skiff_proto::codec::Message;
use skiff_proto::EventBody;

use skiff_agent::images::Platform;

use crate::harness::{
    busybox_layout, debian_busybox, random_layout, task_file, tool_missing, wait_for, Agent,
    Broker, ForeignArch, Registry, Sub, SKIFF,
};
use crate::{require_env, require_registry};

const T: Duration = Duration::from_secs(60);

fn events_topic(a: &Agent) -> String {
    format!("skiff/v1/{}/nodes/{}/events", a.cluster, a.node)
}

fn event(m: &Message) -> Option<&EventBody> {
    match m {
        Message::Event(e) => Some(&e.body),
        _ => None,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A config for CLI-only tests: its own store under `dir`, the registry listed.
fn cli_config(dir: &Path, registry: &Registry, extra: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{}\"\n{extra}\n{}",
            dir.join("data").display(),
            registry.config()
        ),
    )
    .expect("write config");
    path
}

fn image(config: &Path, args: &[&str]) -> Output {
    let out = Command::new(SKIFF)
        .args(["image", "--config"])
        .arg(config)
        .args(args)
        .output()
        .expect("run skiff image");
    eprintln!(
        "$ skiff image {}\n{}{}[exit {:?}]",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr),
        out.status.code()
    );
    out
}

/// The last JSON line of `skiff image pull --json` (the `pulled` result).
fn pulled(out: &Output) -> serde_json::Value {
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().expect("pull printed nothing");
    let v: serde_json::Value = serde_json::from_str(last).expect("JSON line");
    assert_eq!(v["event"], "pulled", "{last}");
    v
}

/// Manifest digest of the single image in an OCI layout made by the fixture scripts.
fn layout_manifest(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index JSON");
    index["manifests"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_owned()
}

fn read_blob_json(layout: &Path, digest: &str) -> serde_json::Value {
    let hex = digest.trim_start_matches("sha256:");
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).expect("blob"))
        .expect("blob JSON")
}

/// What `file -b` says of `path`.
fn file_type(path: &Path) -> String {
    let out = Command::new("file")
        .arg("-b")
        .arg(path)
        .output()
        .expect("run file");
    text(&out.stdout).trim().to_owned()
}

/// Copies `name` out of the gzip'd layer tar `blob` to `dest`.
fn extract_file(blob: &Path, name: &str, dest: &Path) {
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(blob).expect("open layer"));
    let mut tar = tar::Archive::new(gz);
    for entry in tar.entries().expect("layer entries") {
        let mut entry = entry.expect("layer entry");
        if entry.path().expect("entry path").to_str() == Some(name) {
            let mut out = std::fs::File::create(dest).expect("create");
            std::io::copy(&mut entry, &mut out).expect("copy out of the layer");
            return;
        }
    }
    panic!("{name} is not in layer {}", blob.display());
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn an_image_pulled_from_a_registry_runs_and_pulling_is_reported() {
    require_registry!();
    let registry = Registry::start();
    registry.push(&busybox_layout(), "busybox:1.35", false);
    let broker = Broker::start();
    let agent = Agent::start_bare(&broker, "e2e-pull", "pi-1", &registry.config());
    let mut sub = Sub::start(&broker, &[&events_topic(&agent)]);
    let files = tempfile::tempdir().expect("tempdir");
    let image_ref = format!("{}/busybox:1.35", registry.host());
    let f = task_file(
        files.path(),
        "pulled",
        &format!(
            r#"{{"family":"pulled","containerDefinitions":[{{"name":"main","image":"{image_ref}","entryPoint":["sh","-c"],"command":["echo pulled-and-running; exit 0"]}}]}}"#
        ),
    );
    let out = agent.ctl(
        &broker,
        &["apply", f.to_str().expect("utf8"), "--node", "pi-1"],
    );
    assert!(out.status.success(), "apply failed: {}", text(&out.stderr));
    let (done, total) = sub.wait("a pulling event", T, |_, m| match event(m)? {
        EventBody::ImagePulling {
            task,
            image,
            done,
            total,
            ..
        } if task.as_str() == "pulled" && *image == image_ref && done == total => {
            Some((*done, *total))
        }
        _ => None,
    });
    assert!(
        total > 900_000,
        "busybox layer is ~1 MB, pulling said {total}"
    );
    assert_eq!(done, total);
    let digest = sub.wait("image ready", T, |_, m| match event(m)? {
        EventBody::ImageReady { task, digest, .. } if task.as_str() == "pulled" => {
            Some(digest.clone())
        }
        _ => None,
    });
    assert_eq!(digest, layout_manifest(&busybox_layout()));
    let exit = sub.wait("the container's exit", T, |_, m| match event(m)? {
        EventBody::ContainerExited { task, exit, .. } if task.as_str() == "pulled" => Some(*exit),
        _ => None,
    });
    assert_eq!((exit.code, exit.signal), (0, None));
    let logs = Command::new(SKIFF)
        .args(["logs", "--config"])
        .arg(agent.config())
        .arg("pulled")
        .output()
        .expect("skiff logs");
    assert!(
        text(&logs.stdout).contains("pulled-and-running"),
        "log: {}",
        text(&logs.stdout)
    );
    // The pulled image is in the store under the name the task used.
    let ls = agent.image_cmd(&["ls", "--json"]);
    assert!(text(&ls.stdout).contains(&format!("\"reference\":\"{image_ref}\"")));
}

#[test]
fn pulls_by_digest_and_picks_this_platform_from_a_multi_arch_index() {
    require_registry!();
    require_env!(tool_missing("file", "file"));
    let work = tempfile::tempdir().expect("tempdir");
    // The other architecture's busybox-static from the Debian archive, under a private apt
    // state in this test's temp dir.
    let foreign = ForeignArch::for_host();
    let fetched = debian_busybox(&work.path().join("apt"), foreign.dpkg);
    require_env!(fetched.as_ref().err().map(|e| format!(
        "busybox-static:{} could not be fetched from the Debian archive (the multi-arch test \
         needs the archive reachable, or a mirror in /etc/apt/sources.list): {e}",
        foreign.dpkg
    )));
    let foreign_busybox = fetched.expect("fetched");
    assert!(
        file_type(&foreign_busybox).contains(foreign.file_says),
        "{}",
        file_type(&foreign_busybox)
    );
    let registry = Registry::start();

    // Its image layout, and an index over this machine's busybox and it, pushed with --all.
    let foreign_layout = work.path().join("foreign");
    let status = Command::new("sh")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/make-busybox-oci.sh"))
        .arg(&foreign_layout)
        .arg(foreign.dpkg)
        .env("BUSYBOX", &foreign_busybox)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("make the foreign layout");
    assert!(status.success());
    let host_layout = busybox_layout();
    let multi = work.path().join("multi");
    std::fs::create_dir_all(multi.join("blobs/sha256")).expect("mkdir");
    for layout in [&host_layout, &foreign_layout] {
        for e in std::fs::read_dir(layout.join("blobs/sha256")).expect("blobs") {
            let e = e.expect("entry");
            std::fs::copy(e.path(), multi.join("blobs/sha256").join(e.file_name()))
                .expect("copy blob");
        }
    }
    let entry = |layout: &Path| {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
                .expect("json");
        let mut m = index["manifests"][0].clone();
        m.as_object_mut().expect("object").remove("annotations");
        m
    };
    let (host_digest, foreign_digest) = (
        layout_manifest(&host_layout),
        layout_manifest(&foreign_layout),
    );
    let image_index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&host_layout), entry(&foreign_layout)],
    }))
    .expect("index bytes");
    let index_hex = sha256_hex(&image_index);
    std::fs::write(multi.join("blobs/sha256").join(&index_hex), &image_index).expect("write");
    std::fs::write(
        multi.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": format!("sha256:{index_hex}"),
                "size": image_index.len(),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }],
        }))
        .expect("json"),
    )
    .expect("write index.json");
    std::fs::write(
        multi.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    registry.push(&multi, "multi:latest", true);
    let host = registry.host();

    // This machine's platform from the index.
    let cfg = cli_config(work.path(), &registry, "");
    let out = image(&cfg, &["pull", &format!("{host}/multi:latest"), "--json"]);
    assert!(out.status.success());
    let v = pulled(&out);
    assert_eq!(v["digest"], host_digest.as_str());
    assert_eq!(v["platform"], Platform::host().to_string());
    assert_eq!(v["unpacked"], true);
    let host_busybox = work
        .path()
        .join("data/images/rootfs")
        .join(host_digest.trim_start_matches("sha256:"))
        .join("bin/busybox");
    assert!(
        !file_type(&host_busybox).contains(foreign.file_says),
        "{}",
        file_type(&host_busybox)
    );

    // Another platform, into another store.
    let other = tempfile::tempdir().expect("tempdir");
    let cfg_foreign = cli_config(other.path(), &registry, "");
    let out = image(
        &cfg_foreign,
        &[
            "pull",
            &format!("{host}/multi:latest"),
            "--json",
            "--platform",
            foreign.platform,
        ],
    );
    assert!(out.status.success());
    let v = pulled(&out);
    assert_eq!(v["digest"], foreign_digest.as_str());
    assert_eq!(v["platform"], foreign.platform);
    assert_eq!(v["unpacked"], false, "not this machine's: kept packed");
    // Its one layer is the Debian archive's binary.
    let layer = read_blob_json(&foreign_layout, &foreign_digest)["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .trim_start_matches("sha256:")
        .to_owned();
    let blob = other.path().join("data/images/blobs/sha256").join(layer);
    let stored = other.path().join("busybox-from-the-layer");
    extract_file(&blob, "bin/busybox", &stored);
    assert_eq!(
        std::fs::read(&stored).expect("extracted"),
        std::fs::read(&foreign_busybox).expect("fetched")
    );
    let said = file_type(&stored);
    assert!(said.contains(foreign.file_says), "{said}");

    // None fits: said clearly, with what there is.
    let out = image(
        &cfg_foreign,
        &[
            "pull",
            &format!("{host}/multi:latest"),
            "--platform",
            "linux/s390x",
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("no image for platform linux/s390x")
            && err.contains(&format!("{}, {}", Platform::host(), foreign.platform)),
        "{err}"
    );

    // By digest: the index digest (resolves to this platform's manifest), and a manifest
    // digest directly; both are named by the reference pulled.
    let by_index = format!("{host}/multi@sha256:{index_hex}");
    let out = image(&cfg, &["pull", &by_index, "--json"]);
    assert!(out.status.success());
    assert_eq!(pulled(&out)["digest"], host_digest.as_str());
    let by_manifest = format!("{host}/multi@{host_digest}");
    let out = image(&cfg, &["pull", &by_manifest, "--json"]);
    assert!(out.status.success());
    let v = pulled(&out);
    assert_eq!(v["digest"], host_digest.as_str());
    assert_eq!(v["bytes_fetched"], 0, "every blob was already in the store");
    let ls = text(&image(&cfg, &["ls", "--json"]).stdout);
    for r in [&by_index, &by_manifest, &format!("{host}/multi:latest")] {
        assert!(
            ls.contains(&format!("\"reference\":\"{r}\"")),
            "{r} in {ls}"
        );
    }
    // A digest the registry does not have.
    let missing = format!("{host}/multi@sha256:{}", "0".repeat(64));
    let out = image(&cfg, &["pull", &missing]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_tampered_layer_is_rejected_and_deleted() {
    require_registry!();
    let registry = Registry::start();
    let layout = busybox_layout();
    registry.push(&layout, "tampered:latest", false);
    let manifest = read_blob_json(&layout, &layout_manifest(&layout));
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .to_owned();
    let data = registry.blob_data(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&data).expect("registry blob");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&data, &bytes).expect("tamper");

    let work = tempfile::tempdir().expect("tempdir");
    let cfg = cli_config(work.path(), &registry, "");
    let out = image(
        &cfg,
        &["pull", &format!("{}/tampered:latest", registry.host())],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("blob {layer} has the wrong content")) && err.contains("deleted"),
        "{err}"
    );
    let store = work.path().join("data/images");
    assert!(!store
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"))
        .exists());
    let tmp: Vec<_> = std::fs::read_dir(store.join("tmp"))
        .expect("tmp")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(tmp.is_empty(), "left in tmp: {tmp:?}");
    let ls = text(&image(&cfg, &["ls", "--json"]).stdout);
    assert!(!ls.contains("tampered"), "{ls}");
}

#[test]
fn a_download_broken_off_resumes_where_it_stopped() {
    require_registry!();
    let mut registry = Registry::start();
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("random");
    // Larger than the loopback socket buffers, which would otherwise hold the whole layer
    // when the registry dies.
    let manifest_digest = random_layout(&layout, 32, 1);
    let manifest = read_blob_json(&layout, &manifest_digest);
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    let size = manifest["layers"][0]["size"].as_u64().expect("size");
    registry.push(&layout, "random:latest", false);
    let reference = format!("{}/random:latest", registry.host());

    // Slow first pull (4 MiB/s, no retries): the registry dies under it.
    let slow = cli_config(
        work.path(),
        &registry,
        "[images]\npull_rate_limit_kib = 4096\npull_retries = 0\n",
    );
    let partial = work
        .path()
        .join("data/images/tmp")
        .join(format!("partial-{}", layer.trim_start_matches("sha256:")));
    let child = Command::new(SKIFF)
        .args(["image", "--config"])
        .arg(&slow)
        .args(["pull", &reference, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start skiff image pull");
    wait_for("4 MiB of the layer on disk", T, || {
        std::fs::metadata(&partial)
            .ok()
            .filter(|m| m.len() >= 4 << 20)
    });
    registry.stop();
    let out = child.wait_with_output().expect("pull exits");
    eprintln!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(69), "unreachable mid-pull");
    assert!(
        text(&out.stderr).contains("broke off"),
        "{}",
        text(&out.stderr)
    );
    let kept = std::fs::metadata(&partial).expect("partial kept").len();
    assert!(kept >= 4 << 20 && kept < size, "partial {kept} of {size}");

    // Registry back: a new process resumes from the partial file and verifies the whole blob.
    registry.restart();
    let log_before = registry.log_text().len();
    let fast = work.path().join("fast");
    std::fs::create_dir_all(&fast).expect("mkdir");
    let cfg = fast.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n{}",
            work.path().join("data").display(),
            registry.config()
        ),
    )
    .expect("config");
    let out = image(&cfg, &["pull", &reference, "--json"]);
    assert!(out.status.success());
    let v = pulled(&out);
    assert_eq!(v["digest"], manifest_digest.as_str());
    assert_eq!(v["bytes_resumed"], kept);
    assert_eq!(v["bytes_fetched"], size - kept);
    assert!(!partial.exists());
    // The registry's own account: one ranged answer with only the rest.
    let log = registry.log_text()[log_before..].to_owned();
    let blob_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("GET /v2/random/blobs/{layer}")))
        .collect();
    assert_eq!(blob_lines.len(), 1, "{log}");
    assert!(
        blob_lines[0].contains(&format!("\" 206 {} ", size - kept)),
        "{}",
        blob_lines[0]
    );
}

#[test]
fn prefer_cached_runs_the_cached_image_when_the_registry_is_gone() {
    require_registry!();
    let mut registry = Registry::start();
    registry.push(&busybox_layout(), "cached:latest", false);
    let broker = Broker::start();
    let agent = Agent::start_bare(
        &broker,
        "e2e-cached",
        "pi-1",
        &format!(
            "[images]\npull_policy = \"prefer-cached\"\npull_retries = 0\n{}",
            registry.config()
        ),
    );
    let image_ref = format!("{}/cached:latest", registry.host());
    let out = agent.image_cmd(&["pull", &image_ref]);
    assert!(out.status.success());
    registry.stop();

    let mut sub = Sub::start(&broker, &[&events_topic(&agent)]);
    let files = tempfile::tempdir().expect("tempdir");
    let f = task_file(
        files.path(),
        "cached",
        &format!(
            r#"{{"family":"cached","containerDefinitions":[{{"name":"main","image":"{image_ref}","entryPoint":["sh","-c"],"command":["exit 0"]}}]}}"#
        ),
    );
    let started = Instant::now();
    let out = agent.ctl(
        &broker,
        &["apply", f.to_str().expect("utf8"), "--node", "pi-1"],
    );
    assert!(out.status.success(), "apply failed: {}", text(&out.stderr));
    let exit = sub.wait("the container's exit", T, |_, m| match event(m)? {
        EventBody::ContainerExited { task, exit, .. } if task.as_str() == "cached" => Some(*exit),
        _ => None,
    });
    assert_eq!(exit.code, 0);
    assert!(started.elapsed() < Duration::from_secs(30));
    let log = agent.stderr.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(
        log.contains("registry unreachable; running the cached image"),
        "{log}"
    );
}

#[test]
fn prune_keeps_images_in_use_and_export_import_round_trips() {
    require_registry!();
    let broker = Broker::start();
    // Imports busybox as docker.io/library/busybox:latest.
    let agent = Agent::start(&broker, "e2e-gc", "pi-1");
    let mut sub = Sub::start(&broker, &[&events_topic(&agent)]);
    let files = tempfile::tempdir().expect("tempdir");
    let f = task_file(
        files.path(),
        "busy",
        r#"{"family":"busy","containerDefinitions":[{"name":"main","image":"busybox","entryPoint":["sh","-c"],"command":["sleep 300"]}]}"#,
    );
    let out = agent.ctl(
        &broker,
        &["apply", f.to_str().expect("utf8"), "--node", "pi-1"],
    );
    assert!(out.status.success(), "apply failed: {}", text(&out.stderr));
    sub.wait("the task running", T, |_, m| match event(m)? {
        EventBody::TaskRunning { task } if task.as_str() == "busy" => Some(()),
        _ => None,
    });
    // Two newer, unused images in the same repository.
    for (i, tag) in ["busybox:r1", "busybox:r2"].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(1100)); // imported_at has 1 s resolution
        let layout = files.path().join(format!("r{i}"));
        random_layout(&layout, 1, 1);
        let out = agent.image_cmd(&["import", layout.to_str().expect("utf8"), "--tag", tag]);
        assert!(out.status.success());
    }
    let out = agent.image_cmd(&["prune", "--keep", "1"]);
    assert!(out.status.success());
    let report = text(&out.stdout);
    assert!(
        report.contains("removed docker.io/library/busybox:r1"),
        "{report}"
    );
    assert!(
        report.contains("in use, kept docker.io/library/busybox:latest"),
        "{report}"
    );
    let ls = text(&agent.image_cmd(&["ls", "--json"]).stdout);
    assert!(
        ls.contains("busybox:latest") && ls.contains("busybox:r2"),
        "{ls}"
    );
    assert!(!ls.contains("busybox:r1"), "{ls}");

    // Export (tar and directory) and import elsewhere: the same manifest digest.
    let digest = layout_manifest(&busybox_layout());
    let tar = files.path().join("busybox.tar");
    let dir = files.path().join("busybox-layout");
    for dest in [&tar, &dir] {
        let out = agent.image_cmd(&["export", "busybox", dest.to_str().expect("utf8")]);
        assert!(out.status.success());
        let other = tempfile::tempdir().expect("tempdir");
        let cfg = other.path().join("agent.toml");
        std::fs::write(
            &cfg,
            format!("data_dir = \"{}\"\n", other.path().join("data").display()),
        )
        .expect("config");
        let out = image(&cfg, &["import", dest.to_str().expect("utf8")]);
        assert!(out.status.success());
        let ls = text(&image(&cfg, &["ls", "--json"]).stdout);
        assert!(
            ls.contains("\"reference\":\"docker.io/library/busybox:latest\"")
                && ls.contains(&format!("\"digest\":\"{digest}\"")),
            "{ls}"
        );
    }
}

#[test]
fn a_pull_that_would_cross_the_disk_limit_fails_before_downloading() {
    require_registry!();
    let registry = Registry::start();
    registry.push(&busybox_layout(), "big:latest", false);
    let work = tempfile::tempdir().expect("tempdir");
    // Keep 1 TiB free: no disk here has that.
    let cfg = cli_config(work.path(), &registry, "[images]\nmin_free_mib = 1048576\n");
    let out = image(&cfg, &["pull", &format!("{}/big:latest", registry.host())]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("keeps 1099511627776 free, but only"), "{err}");
    let log = registry.log_text();
    assert!(log.contains("GET /v2/big/manifests/latest"), "{log}");
    let layer = read_blob_json(&busybox_layout(), &layout_manifest(&busybox_layout()))["layers"][0]
        ["digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    assert!(
        !log.contains(&format!("GET /v2/big/blobs/{layer}")),
        "{log}"
    );
}
