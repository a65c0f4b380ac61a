//! `skiff-pull-bench`: a registry pull to a ready rootfs, skiff beside `skopeo copy` + `umoci
//! unpack` (and + `tar -xzf`) of the same image from the same local registry, in one run.
//!
//! ```text
//! cargo build --release && sudo target/release/skiff-pull-bench [--runs 3] [--mib 200] [--skiff PATH]
//! ```
//!
//! Starts Debian's `docker-registry` on a free loopback port (plain HTTP, storage in a scratch
//! dir under `$TMPDIR`, so on that disk), builds two images with the fixture scripts and pushes
//! them with `skopeo`: busybox (`tests/fixtures/make-busybox-oci.sh`, one ~1 MiB gzip layer) and
//! MIB MiB of random data in 4 gzip layers (`tests/fixtures/make-random-oci.sh`). Then, per
//! image and run, each from a fresh destination with the page cache dropped before it:
//!
//! - skiff: `skiff image pull --json` = manifest, config, layers streamed to disk while
//!   hashed, verified, rootfs unpacked (its layers' diff_ids checked), everything fsynced; its
//!   time is split at its last `layer` line (every layer in the store): the rest is the unpack;
//! - peers: `skopeo copy docker://… oci:DIR:latest` (verifies digests), then `umoci unpack`
//!   of it into a bundle, and `tar -xzf` of the same layer blobs into a directory; `sync`
//!   after them is timed apart (skiff's own syncs are inside its time).
//!
//! Each process runs under this program re-executed as a wrapper that waits for it and reads
//! its peak RSS (`getrusage(RUSAGE_CHILDREN)`, exact, unlike sampling `/proc`). Prints a
//! Markdown table: medians with the range of the runs, ratios peer / skiff (above 1: skiff is
//! faster).
//!
//! Needs root (dropping caches; unpacking keeps owners), docker-registry, skopeo, umoci, GNU
//! tar, gzip and sha256sum, busybox-static.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;

use common::{median, which, Kill, Res, Work};

/// First argument that makes this program a wrapper: `__peak-rss OUT PROGRAM ARGS...` runs
/// PROGRAM, writes its peak RSS in KiB to OUT and exits with its exit code.
const PEAK_RSS: &str = "__peak-rss";

fn peak_rss_wrapper(args: &[String]) -> Res<()> {
    let [out, program, rest @ ..] = args else {
        return Err(format!("usage: {PEAK_RSS} OUT PROGRAM [ARGS...]").into());
    };
    let status = Command::new(program).args(rest).status()?;
    // The only child this process ever had, so the largest is its own.
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    std::fs::write(out, usage.max_rss().to_string())?;
    std::process::exit(status.code().unwrap_or(1));
}

/// One process measured: wall time (spawn to exit) and peak RSS.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    secs: f64,
    peak_kib: u64,
    /// Seconds from the last stdout line containing the `mark` asked for to the exit.
    after_mark: Option<f64>,
}

/// Runs `program args` under the wrapper; fails with its output when it fails.
fn measure(scratch: &Path, program: &Path, args: &[&str]) -> Res<Run> {
    measure_marked(scratch, program, args, None)
}

/// Like [`measure`], timing stdout lines containing `mark` as they arrive.
fn measure_marked(scratch: &Path, program: &Path, args: &[&str], mark: Option<&str>) -> Res<Run> {
    let out = scratch.join("peak-rss");
    let start = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .arg(PEAK_RSS)
        .arg(&out)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut stdout = String::new();
    let mut marked = None;
    for line in BufReader::new(child.stdout.take().ok_or("no stdout")?).lines() {
        let line = line?;
        if mark.is_some_and(|m| line.contains(m)) {
            marked = Some(Instant::now());
        }
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let status = child.wait()?;
    let end = Instant::now();
    let stderr = errors.join().unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "{} {} failed ({status}): {stdout}{stderr}",
            program.display(),
            args.join(" "),
        )
        .into());
    }
    Ok(Run {
        secs: end.duration_since(start).as_secs_f64(),
        peak_kib: std::fs::read_to_string(&out)?.trim().parse()?,
        after_mark: marked.map(|m| end.duration_since(m).as_secs_f64()),
    })
}

/// Flush dirty pages, then drop the page cache, so every tool reads the registry's blobs from
/// disk. False when the kernel refuses (not root, or in a container).
fn drop_caches() -> bool {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn free_port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Debian's docker-registry on `127.0.0.1:port`, storage under `dir`, quiet.
fn start_registry(dir: &Path, port: u16) -> Res<Kill> {
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("registry").display()
        ),
    )?;
    let registry = Kill(
        Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("docker-registry did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(registry)
}

/// `sh tests/fixtures/SCRIPT ARGS...`; returns its stdout.
fn fixture(script: &str, args: &[&str]) -> Res<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(script);
    let o = Command::new("sh").arg(&path).args(args).output()?;
    if !o.status.success() {
        return Err(format!("{script} failed: {}", String::from_utf8_lossy(&o.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn json(path: &Path) -> Res<serde_json::Value> {
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

/// Layer blob paths of the one image in the OCI layout `dir`.
fn layout_layers(dir: &Path) -> Res<Vec<PathBuf>> {
    let blob = |digest: &str| {
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index = json(&dir.join("index.json"))?;
    let manifest = index["manifests"][0]["digest"]
        .as_str()
        .ok_or("index.json names no manifest")?;
    let manifest = json(&blob(manifest))?;
    manifest["layers"]
        .as_array()
        .ok_or("manifest without layers")?
        .iter()
        .map(|l| {
            l["digest"]
                .as_str()
                .map(blob)
                .ok_or_else(|| "layer without digest".into())
        })
        .collect()
}

/// One image's runs.
#[derive(Debug, Default)]
struct Results {
    skiff: Vec<Run>,
    /// Of skiff's time, from the last layer in the store to the exit: the rootfs unpack (the
    /// rest: manifest, config, layers downloaded and verified).
    skiff_unpack: Vec<f64>,
    skopeo: Vec<Run>,
    umoci: Vec<Run>,
    tar: Vec<Run>,
    sync: Vec<f64>,
}

fn secs(runs: &[Run]) -> Vec<f64> {
    runs.iter().map(|r| r.secs).collect()
}

/// `0.15 s (0.14–0.23)`: median and range.
fn cell(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.3} s ({lo:.3}–{hi:.3})", median(v.to_vec()))
}

/// Medians of `peer / skiff`, run by run.
fn ratio(peer: &[f64], skiff: &[f64]) -> String {
    let r: Vec<f64> = peer.iter().zip(skiff).map(|(p, s)| p / s).collect();
    let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2}× ({lo:.2}–{hi:.2})", median(r.clone()))
}

fn peak_mib(runs: &[Run]) -> String {
    let max = runs.iter().map(|r| r.peak_kib).max().unwrap_or(0);
    format!("{:.1} MiB", max as f64 / 1024.0)
}

fn sum(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn arg<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> Res<T>
where
    T::Err: std::error::Error + 'static,
{
    match args.iter().position(|a| a == flag) {
        Some(i) => Ok(args
            .get(i + 1)
            .ok_or(format!("{flag} needs a value"))?
            .parse()?),
        None => Ok(default),
    }
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(PEAK_RSS) {
        return peak_rss_wrapper(&args[1..]);
    }
    let runs: usize = arg(&args, "--runs", 3)?;
    let mib: u32 = arg(&args, "--mib", 200)?;
    let exe = std::env::current_exe()?;
    let skiff: PathBuf = arg(
        &args,
        "--skiff",
        exe.parent().ok_or("no exe dir")?.join("skiff"),
    )?;
    if !skiff.exists() {
        return Err(format!("{} not found: cargo build --release first", skiff.display()).into());
    }
    let mut tools = Vec::new();
    for tool in ["docker-registry", "skopeo", "umoci", "tar"] {
        tools.push(which(tool).ok_or(format!(
            "{tool} not found (apt-get install docker-registry skopeo umoci tar)"
        ))?);
    }
    let [_, skopeo, umoci, tar] = &tools[..] else {
        return Err("tool list".into());
    };
    if !nix::unistd::Uid::effective().is_root() {
        return Err("run as root: the page cache is dropped before each pull, and unpacking keeps file owners".into());
    }

    let work = Work::new("skiff-pull-bench")?;
    let port = free_port()?;
    let _registry = start_registry(work.path(), port)?;
    let host = format!("127.0.0.1:{port}");
    eprintln!("building the images ({mib} MiB of random data takes a moment)");
    let busybox = work.path().join("busybox-layout");
    fixture("make-busybox-oci.sh", &[busybox.to_str().ok_or("path")?])?;
    let big = work.path().join("random-layout");
    fixture(
        "make-random-oci.sh",
        &[big.to_str().ok_or("path")?, &mib.to_string(), "4"],
    )?;
    let images = [("busybox", busybox), ("random", big)];
    for (name, layout) in &images {
        let o = Command::new(skopeo)
            .args(["copy", "-q", "--insecure-policy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{host}/{name}:latest"))
            .output()?;
        if !o.status.success() {
            return Err(format!("skopeo push: {}", String::from_utf8_lossy(&o.stderr)).into());
        }
    }

    let mut cache_dropped = true;
    let mut table = Vec::new();
    for (name, layout) in &images {
        let layers = layout_layers(layout)?;
        let compressed: u64 = layers
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        let reference = format!("{host}/{name}:latest");
        let mut res = Results::default();
        for i in 0..runs {
            let dir = work.path().join(format!("run-{name}-{i}"));
            std::fs::create_dir_all(&dir)?;

            // skiff
            let config = dir.join("agent.toml");
            std::fs::write(
                &config,
                format!(
                    "data_dir = \"{}\"\n[images]\nmin_free_mib = 0\n[[registries]]\nhost = \"{host}\"\ninsecure = true\n",
                    dir.join("data").display()
                ),
            )?;
            cache_dropped &= drop_caches();
            let config = config.to_str().ok_or("path")?;
            // The last `layer` line: every layer is in the store, downloaded and verified;
            // what follows is the rootfs unpack (and naming the image).
            let s = measure_marked(
                &dir,
                &skiff,
                &["image", "--config", config, "pull", &reference, "--json"],
                Some("\"event\":\"layer\""),
            )?;
            let unpack = s.after_mark.ok_or("skiff reported no layer")?;

            // skopeo copy + umoci unpack, then tar -xzf of the same blobs
            cache_dropped &= drop_caches();
            let oci = dir.join("oci");
            let oci_ref = format!("oci:{}:latest", oci.display());
            let c = measure(
                &dir,
                skopeo,
                &[
                    "copy",
                    "-q",
                    "--insecure-policy",
                    "--src-tls-verify=false",
                    &format!("docker://{reference}"),
                    &oci_ref,
                ],
            )?;
            let bundle = dir.join("bundle");
            let u = measure(
                &dir,
                umoci,
                &[
                    "unpack",
                    "--image",
                    &format!("{}:latest", oci.display()),
                    bundle.to_str().ok_or("path")?,
                ],
            )?;
            let rootfs = dir.join("tar-rootfs");
            std::fs::create_dir_all(&rootfs)?;
            let mut t = Run::default();
            for layer in layout_layers(&oci)? {
                let r = measure(
                    &dir,
                    tar,
                    &[
                        "-xzf",
                        layer.to_str().ok_or("path")?,
                        "-C",
                        rootfs.to_str().ok_or("path")?,
                    ],
                )?;
                t.secs += r.secs;
                t.peak_kib = t.peak_kib.max(r.peak_kib);
            }
            let synced = Instant::now();
            nix::unistd::sync();
            let sync = synced.elapsed().as_secs_f64();
            eprintln!(
                "{name} run {}: skiff {:.3} s (unpack {unpack:.3} s, peak RSS {} KiB), skopeo copy {:.3} s, umoci unpack {:.3} s, tar -xzf {:.3} s, sync {sync:.3} s",
                i + 1,
                s.secs,
                s.peak_kib,
                c.secs,
                u.secs,
                t.secs
            );
            res.skiff_unpack.push(unpack);
            res.skiff.push(s);
            res.skopeo.push(c);
            res.umoci.push(u);
            res.tar.push(t);
            res.sync.push(sync);
            std::fs::remove_dir_all(&dir)?;
        }
        let (sk, co, um, ta) = (
            secs(&res.skiff),
            secs(&res.skopeo),
            secs(&res.umoci),
            secs(&res.tar),
        );
        table.push(format!(
            "| {name}: {} gzip layer{}, {:.1} MiB | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            layers.len(),
            if layers.len() == 1 { "" } else { "s" },
            compressed as f64 / 1048576.0,
            cell(&sk),
            cell(&res.skiff_unpack),
            cell(&co),
            cell(&um),
            cell(&ta),
            cell(&res.sync),
            ratio(&sum(&co, &um), &sk),
            ratio(&sum(&co, &ta), &sk),
            peak_mib(&res.skiff),
            peak_mib(&res.skopeo),
            peak_mib(&res.umoci),
        ));
    }

    println!(
        "skiff: {}; median of {runs} runs (range); ratio = peer / skiff{}\n",
        skiff.display(),
        if cache_dropped {
            ", page cache dropped before each"
        } else {
            "; the page cache could NOT be dropped"
        }
    );
    println!("| image | skiff pull | of which unpack | skopeo copy | umoci unpack | tar -xzf | sync after peers | (skopeo + umoci) / skiff | (skopeo + tar) / skiff | skiff peak RSS | skopeo / umoci peak RSS |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
    Ok(())
}
