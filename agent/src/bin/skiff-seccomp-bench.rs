//! skiff's seccomp filter (issue 6) beside runc's libseccomp, measured in one run:
//! - what skiff adds to a container start: compiling its default profile to BPF (in the
//!   container's init) and installing it, medians over `--runs`;
//! - what the same profile costs runc (which compiles it with libseccomp): `runc run` of a
//!   busybox `true` with the profile in `config.json` minus without it, medians;
//! - what the filter costs every syscall: `getppid()` in a child with skiff's filter vs without.
//!
//! `sudo target/release/skiff-seccomp-bench [--runs 20]`. Needs root, busybox-static, runc.
#![allow(unsafe_code)] // fork, prctl and raw syscalls in the measuring child

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{median, peer_bundle, which, Res, Work};
use skiff_agent::runtime::seccomp;

const SYSCALLS: u32 = 1_000_000;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = match args.iter().position(|a| a == "--runs") {
        Some(i) => args.get(i + 1).ok_or("--runs N")?.parse()?,
        None => 20,
    };
    let caps = skiff_proto::DEFAULT_CAPABILITIES;
    let profile = seccomp::default_profile(&caps)?;

    // Compile, in process.
    let mut compile_us = Vec::with_capacity(runs * 10);
    let mut insns = 0;
    for _ in 0..runs * 10 {
        let t = Instant::now();
        let prog = seccomp::compile(&profile)?;
        compile_us.push(t.elapsed().as_secs_f64() * 1e6);
        insns = prog.len();
    }
    let prog = seccomp::compile(&profile)?;

    // Install and per-syscall cost, in children.
    let mut install_us = Vec::new();
    let (mut with_ns, mut without_ns) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (i, w) = child_measure(Some(&prog))?;
        install_us.push(i);
        with_ns.push(w);
        without_ns.push(child_measure(None)?.1);
    }

    // runc with and without the same profile.
    let runc = which("runc");
    let peer = match &runc {
        Some(runc) => Some(runc_costs(runc, &profile, runs)?),
        None => None,
    };

    let compile = median(compile_us);
    let install = median(install_us);
    println!("| figure | skiff | runc (libseccomp), same profile, this run |");
    println!("|---|---|---|");
    println!(
        "| filter added to a container start (compile {insns} BPF instructions + install), median of {runs} | {:.0} µs ({compile:.0} + {install:.0}) | {} |",
        compile + install,
        match &peer {
            Some((with, without)) => format!(
                "{:.1} ms (run with profile {with:.1} ms − without {without:.1} ms)",
                with - without
            ),
            None => "runc not installed".into(),
        }
    );
    let (w, wo) = (median(with_ns), median(without_ns));
    println!(
        "| getppid() with the filter / without, ns per call, median of {runs} × {SYSCALLS} | {w:.0} / {wo:.0} (+{:.0}) | |",
        w - wo
    );
    Ok(())
}

/// In a forked child: µs to install `prog` (if any), then ns per `getppid()`.
fn child_measure(prog: Option<&seccomp::Program>) -> Res<(f64, f64)> {
    let mut fds = [0; 2];
    // SAFETY: a plain pipe(2) into a local array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err("pipe".into());
    }
    // SAFETY: the child only makes syscalls, writes to the pipe and _exits.
    match unsafe { libc::fork() } {
        0 => {
            let mut out = [0f64; 2];
            // SAFETY: prctl with constant arguments.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            if let Some(p) = prog {
                let t = Instant::now();
                let ok = seccomp::install(p).is_ok();
                out[0] = if ok {
                    t.elapsed().as_secs_f64() * 1e6
                } else {
                    -1.0
                };
            }
            let t = Instant::now();
            for _ in 0..SYSCALLS {
                // SAFETY: getppid has no arguments and no effects.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            out[1] = t.elapsed().as_secs_f64() * 1e9 / f64::from(SYSCALLS);
            let bytes: Vec<u8> = out.iter().flat_map(|f| f.to_le_bytes()).collect();
            // SAFETY: writing our own buffer to our pipe, then leaving without unwinding.
            unsafe {
                libc::write(fds[1], bytes.as_ptr().cast(), bytes.len());
                libc::_exit(0)
            }
        }
        pid if pid > 0 => {
            // SAFETY: closing our copy of the write end, reading into a local buffer, reaping
            // our own child.
            let mut buf = [0u8; 16];
            let n = unsafe {
                libc::close(fds[1]);
                let n = libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len());
                libc::close(fds[0]);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
                n
            };
            if n != 16 {
                return Err("the measuring child died".into());
            }
            let f = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[i * 8..i * 8 + 8]);
                f64::from_le_bytes(b)
            };
            if f(0) < 0.0 {
                return Err("the filter could not be installed".into());
            }
            Ok((f(0), f(1)))
        }
        _ => Err("fork".into()),
    }
}

/// Median ms of `runc run` of a busybox `true`, with the profile and without.
fn runc_costs(
    runc: &Path,
    profile: &oci_spec::runtime::LinuxSeccomp,
    runs: usize,
) -> Res<(f64, f64)> {
    let work = Work::new("skiff-seccomp-bench")?;
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/true"))?;
    let mut medians = Vec::new();
    for with in [true, false] {
        let bundle = work.path().join(if with { "with" } else { "without" });
        peer_bundle(
            runc,
            &rootfs,
            &bundle,
            &["/bin/true"],
            "/skiff-seccomp-bench",
            false,
        )?;
        let path = bundle.join("config.json");
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        spec["process"]["noNewPrivileges"] = serde_json::json!(true);
        if with {
            spec["linux"]["seccomp"] = serde_json::to_value(profile)?;
        } else if let Some(linux) = spec["linux"].as_object_mut() {
            linux.remove("seccomp");
        }
        std::fs::write(&path, serde_json::to_vec(&spec)?)?;
        let mut ms = Vec::with_capacity(runs);
        for i in 0..runs + 2 {
            let id = format!("skiff-seccomp-bench-{}-{i}", std::process::id());
            let t = Instant::now();
            let ok = Command::new(runc)
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()?
                .success();
            let elapsed = t.elapsed().as_secs_f64() * 1e3;
            let _ = Command::new(runc)
                .args(["delete", "--force", &id])
                .stderr(Stdio::null())
                .status();
            if !ok {
                return Err(format!("runc run failed (with profile: {with})").into());
            }
            if i >= 2 {
                ms.push(elapsed); // the first two warm caches
            }
        }
        medians.push(median(ms));
    }
    Ok((medians[0], medians[1]))
}
