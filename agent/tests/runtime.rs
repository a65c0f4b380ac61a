//! The runtime against real containers: a busybox rootfs built from `/bin/busybox`, the real
//! `skiff` binary as launcher, real cgroups, mounts and namespaces. Needs root (skips with a
//! message otherwise) and `busybox-static`.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::stat::Mode;
use skiff_agent::images::{ImageConfig, ResolvedImage};
use skiff_agent::runtime::{ContainerExit, Runtime, RuntimeConfig, RuntimeError};
use skiff_proto::{ContainerDefinition, EnvVar, Name, NetworkMode, RestartPolicy, TaskDefinition};
use tokio::net::unix::pipe;
use tokio::sync::mpsc::Receiver;

const DEADLINE: Duration = Duration::from_secs(30);

/// Bridge networking with real links and nftables (`bridge` in the test names).
#[path = "runtime/bridge.rs"]
mod bridge;

/// awsvpc networking with real macvlans on an emulated LAN (`awsvpc` in the test names).
#[path = "runtime/awsvpc.rs"]
mod awsvpc;

/// Capabilities, seccomp, read-only root, volumes and devices (`security` in the test names).
#[path = "runtime/security.rs"]
mod security;

/// Containers outliving their agent, adopted by the next (`adopt` in the test names).
#[path = "runtime/adopt.rs"]
mod adopt;

/// User-namespace remapping (`userns` in the test names).
#[path = "runtime/userns.rs"]
mod userns;

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping {test}: needs root (containers, cgroups, mounts)");
        false
    }
}

fn name(s: &str) -> Name {
    s.parse().expect("valid name")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A run directory, a cgroup parent and a busybox image, unique to one test.
struct Fixture {
    dir: tempfile::TempDir,
    parent: String,
    image: ResolvedImage,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("image");
        busybox_rootfs(&rootfs);
        let parent = format!(
            "skiff-rt-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Fixture {
            dir,
            parent,
            image: ResolvedImage {
                reference: "local/busybox:test".into(),
                digest: format!("sha256:{}", "0".repeat(64)),
                rootfs,
                config: ImageConfig {
                    entrypoint: vec![],
                    cmd: vec!["sh".into()],
                    env: vec!["PATH=/bin".into()],
                    working_dir: None,
                    user: None,
                },
            },
        }
    }

    /// Removes what a failed test left (containers, mounts, cgroups) with the runtime's own
    /// `cleanup_stale`, on a thread of its own: the test's tokio runtime is being torn down.
    fn cleanup_after_panic(&self) {
        let cfg = self.config();
        let res = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let (runtime, _exits) = Runtime::start(cfg).await.map_err(|e| e.to_string())?;
                runtime.cleanup_stale().await.map_err(|e| e.to_string())
            })
        })
        .join();
        eprintln!("cleanup after a failed test: {res:?}");
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn config(&self) -> RuntimeConfig {
        RuntimeConfig {
            run_dir: self.run_dir(),
            cgroup_parent: self.parent.clone(),
            launcher_exe: PathBuf::from(env!("CARGO_BIN_EXE_skiff")),
            userns: None,
        }
    }

    async fn runtime(&self) -> (Runtime, Receiver<ContainerExit>) {
        Runtime::start(self.config()).await.expect("runtime starts")
    }

    fn images(&self, n: usize) -> Vec<ResolvedImage> {
        vec![self.image.clone(); n]
    }

    /// A FIFO for a container's output, opened for reading (read-write, so it never sees EOF
    /// and never blocks the open).
    fn fifo(&self, label: &str) -> (PathBuf, pipe::Receiver) {
        let path = self.dir.path().join(format!("{label}.fifo"));
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let rx = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
            .expect("open fifo");
        (path, rx)
    }

    /// Every v1 controller mount (or the v2 root) joined with the test's cgroup parent.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            return vec![root.join(&self.parent)];
        }
        std::fs::read_dir(root)
            .expect("list cgroup mounts")
            .flatten()
            .map(|e| e.path().join(&self.parent))
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() && nix::unistd::geteuid().is_root() {
            self.cleanup_after_panic();
        }
        kill_launcher(&self.run_dir());
    }
}

/// Kills the launcher serving `run_dir`: it outlives an agent that was killed while it kept
/// containers, and would wait for the next agent forever.
fn kill_launcher(run_dir: &Path) {
    let want = run_dir.join("state");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.get(1) == Some(&&b"__launcher"[..])
            && args.get(2) == Some(&want.as_os_str().as_encoded_bytes())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `/bin/busybox` plus applet symlinks and a minimal user database.
fn busybox_rootfs(root: &Path) {
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy /bin/busybox");
    for applet in [
        "sh", "echo", "sleep", "cat", "dd", "head", "readlink", "true", "id", "pwd", "ls", "ip",
        "ping", "httpd", "nc", "mkdir",
    ] {
        symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
}

fn container(n: &str, command: &[&str]) -> ContainerDefinition {
    ContainerDefinition {
        name: name(n),
        image: "local/busybox:test".into(),
        entry_point: vec![],
        command: command.iter().map(|s| s.to_string()).collect(),
        environment: vec![],
        cpu: None,
        memory_mib: None,
        memory_reservation_mib: None,
        essential: true,
        working_directory: None,
        user: None,
        health_check: None,
        stop_timeout_secs: None,
        depends_on: vec![],
        port_mappings: vec![],
        secrets: vec![],
        security: Default::default(),
        mount_points: vec![],
    }
}

fn task(family: &str, containers: Vec<ContainerDefinition>, mode: NetworkMode) -> TaskDefinition {
    TaskDefinition {
        family: name(family),
        revision: 1,
        containers,
        cpu: None,
        memory_mib: None,
        network_mode: mode,
        restart_policy: RestartPolicy::Never,
        extensions: vec![],
    }
}

async fn next_exit(exits: &mut Receiver<ContainerExit>) -> ContainerExit {
    tokio::time::timeout(DEADLINE, exits.recv())
        .await
        .expect("an exit within the deadline")
        .expect("exit channel open")
}

/// What is in the FIFO now. Call after the writer exited: its output is in the pipe already.
fn drain(rx: &pipe::Receiver) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match rx.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("read fifo: {e}"),
        }
    }
    String::from_utf8(out).expect("utf-8 output")
}

/// Runs a one-container task to completion; returns its exit and output, then removes it.
async fn run_one(
    fx: &Fixture,
    rt: &Runtime,
    exits: &mut Receiver<ContainerExit>,
    c: ContainerDefinition,
) -> (ContainerExit, String) {
    let label = format!("{}-{}", c.name, SEQ.fetch_add(1, Ordering::Relaxed));
    let t = task(&label, vec![c], NetworkMode::None);
    rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    let (path, rx) = fx.fifo(&label);
    rt.start_container(&t.family, &t.containers[0].name, &path)
        .await
        .expect("start");
    let exit = next_exit(exits).await;
    let out = drain(&rx);
    rt.remove_task(&t.family).await.expect("remove");
    (exit, out)
}

#[tokio::test]
async fn prints_to_fifo_and_exits_zero() {
    if !root_or_skip("prints_to_fifo_and_exits_zero") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let mut c = container("app", &["sh", "-c", "echo hello $GREETING; echo oops >&2"]);
    c.environment = vec![EnvVar {
        name: "GREETING".into(),
        value: "world".into(),
    }];
    let (exit, out) = run_one(&fx, &rt, &mut exits, c).await;
    assert_eq!(exit.container, name("app"));
    assert_eq!(exit.exit.code, 0);
    assert_eq!(exit.exit.signal, None);
    assert!(!exit.exit.oom_killed);
    assert_eq!(out, "hello world\noops\n");
}

#[tokio::test]
async fn exit_code_is_reported_and_a_container_restarts() {
    if !root_or_skip("exit_code_is_reported_and_a_container_restarts") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    // Each run appends to a file in the container's own rootfs and exits 3.
    let t = task(
        "three",
        vec![container(
            "c",
            &["sh", "-c", "echo run >> /runs; cat /runs | head -5; exit 3"],
        )],
        NetworkMode::None,
    );
    rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    let c = &t.containers[0].name;
    let (path, rx) = fx.fifo("three");
    for runs in 1..=2 {
        rt.start_container(&t.family, c, &path)
            .await
            .expect("start");
        let exit = next_exit(&mut exits).await;
        assert_eq!(exit.exit.code, 3);
        assert_eq!(exit.exit.signal, None);
        assert!(!exit.exit.oom_killed);
        assert_eq!(drain(&rx), "run\n".repeat(runs));
    }
    rt.remove_task(&t.family).await.expect("remove");
    assert!(
        !fx.image.rootfs.join("runs").exists(),
        "the image stays untouched"
    );
}

#[tokio::test]
async fn user_and_working_directory() {
    if !root_or_skip("user_and_working_directory") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let mut c = container(
        "who",
        &["sh", "-c", "id -u; id -g; pwd; echo $HOSTNAME; hostname"],
    );
    c.user = Some("nobody".into());
    c.working_directory = Some("/data/work".into());
    let (exit, out) = run_one(&fx, &rt, &mut exits, c).await;
    assert_eq!(exit.exit.code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["65534", "65534", "/data/work"]);
    // HOSTNAME and the UTS hostname are the task family.
    assert!(lines[3].starts_with("who-"), "{out}");
    assert_eq!(lines[3], lines[4]);

    // An unknown user fails in prepare_task and leaves nothing behind.
    let mut c = container("ghost", &["true"]);
    c.user = Some("alice".into());
    let t = task("ghost", vec![c], NetworkMode::None);
    let err = rt
        .prepare_task(&t, &fx.images(1))
        .await
        .expect_err("unknown user");
    assert!(matches!(err, RuntimeError::Spec { .. }), "{err}");
    assert!(err.to_string().contains("alice"), "{err}");
    assert!(!fx.run_dir().join("tasks/ghost").exists());
    assert!(!fx.run_dir().join("netns/ghost").exists());
}

#[tokio::test]
async fn only_the_skiff_binary_is_accepted_as_launcher() {
    if !root_or_skip("only_the_skiff_binary_is_accepted_as_launcher") {
        return;
    }
    let fx = Fixture::new();
    let mut cfg = fx.config();
    cfg.launcher_exe = PathBuf::from("/bin/true");
    let err = Runtime::start(cfg.clone())
        .await
        .expect_err("not a launcher");
    assert!(
        matches!(err, RuntimeError::LauncherHandshake { .. }),
        "{err}"
    );
    cfg.launcher_exe = fx.dir.path().join("missing");
    let err = Runtime::start(cfg.clone()).await.expect_err("no binary");
    assert!(matches!(err, RuntimeError::LauncherSpawn { .. }), "{err}");
    cfg.cgroup_parent = "../escape".into();
    let err = Runtime::start(cfg).await.expect_err("bad parent");
    assert!(matches!(err, RuntimeError::CgroupParent(_)), "{err}");
}

#[tokio::test]
async fn missing_executable_fails_start() {
    if !root_or_skip("missing_executable_fails_start") {
        return;
    }
    let fx = Fixture::new();
    let (rt, _exits) = fx.runtime().await;
    let t = task(
        "bad",
        vec![container("nope", &["/no/such/thing"])],
        NetworkMode::None,
    );
    rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    let (path, _rx) = fx.fifo("bad");
    let err = rt
        .start_container(&t.family, &t.containers[0].name, &path)
        .await
        .expect_err("cannot start");
    assert!(err.to_string().contains("/no/such/thing"), "{err}");
    rt.remove_task(&t.family).await.expect("remove");
    assert!(fx.cgroup_dirs().iter().all(|d| !d.exists()));
}

#[tokio::test]
async fn memory_limit_oom_kills() {
    if !root_or_skip("memory_limit_oom_kills") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let mut c = container(
        "hog",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    c.memory_mib = Some(16);
    let (exit, out) = run_one(&fx, &rt, &mut exits, c).await;
    assert_eq!(exit.exit.code, 137, "{out}");
    assert_eq!(exit.exit.signal, Some(9));
    assert!(exit.exit.oom_killed);
}

#[tokio::test]
async fn task_limits_and_stats() {
    if !root_or_skip("task_limits_and_stats") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let mut t = task(
        "stats",
        vec![container(
            "busy",
            &[
                "sh",
                "-c",
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
            ],
        )],
        NetworkMode::Host,
    );
    t.memory_mib = Some(64);
    t.cpu = Some(512);
    rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    let before = rt.task_stats(&t.family).expect("stats of a prepared task");
    assert_eq!(before.mem_limit_bytes, Some(64 << 20));
    let (path, _rx) = fx.fifo("stats");
    rt.start_container(&t.family, &t.containers[0].name, &path)
        .await
        .expect("start");
    let exit = next_exit(&mut exits).await;
    assert_eq!(exit.exit.code, 0);
    let after = rt.task_stats(&t.family).expect("stats");
    assert!(after.cpu_usage_ns > before.cpu_usage_ns, "{after:?}");
    rt.remove_task(&t.family).await.expect("remove");
    assert_eq!(rt.task_stats(&t.family), None);
}

#[tokio::test]
async fn containers_of_a_task_share_the_network_namespace() {
    if !root_or_skip("containers_of_a_task_share_the_network_namespace") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let probe = &[
        "sh",
        "-c",
        "readlink /proc/self/ns/net; cat /sys/class/net/lo/flags",
    ];
    let t = task(
        "pair",
        vec![container("a", probe), container("b", probe)],
        NetworkMode::None,
    );
    let host = task("hosted", vec![container("h", probe)], NetworkMode::Host);
    rt.prepare_task(&t, &fx.images(2)).await.expect("prepare");
    rt.prepare_task(&host, &fx.images(1))
        .await
        .expect("prepare host");
    let mut outputs = Vec::new();
    for (tk, c) in [(&t, 0), (&t, 1), (&host, 0)] {
        let (path, rx) = fx.fifo(&format!("{}-{c}", tk.family));
        rt.start_container(&tk.family, &tk.containers[c].name, &path)
            .await
            .expect("start");
        let exit = next_exit(&mut exits).await;
        assert_eq!(exit.exit.code, 0);
        outputs.push(drain(&rx));
    }
    let ns = |o: &String| o.lines().next().expect("ns line").to_owned();
    let flags = |o: &String| o.lines().nth(1).expect("flags line").to_owned();
    assert!(ns(&outputs[0]).starts_with("net:["), "{outputs:?}");
    assert_eq!(ns(&outputs[0]), ns(&outputs[1]));
    // Loopback is up (IFF_UP | IFF_LOOPBACK).
    assert_eq!(flags(&outputs[0]), "0x9");
    let host_ns = std::fs::read_link("/proc/self/ns/net").expect("host netns");
    assert_eq!(ns(&outputs[2]), host_ns.to_string_lossy());
    assert_ne!(ns(&outputs[0]), ns(&outputs[2]));
    rt.remove_task(&t.family).await.expect("remove");
    rt.remove_task(&host.family).await.expect("remove host");
}

#[tokio::test]
async fn sigterm_is_ignored_by_pid_one_and_sigkill_works() {
    if !root_or_skip("sigterm_is_ignored_by_pid_one_and_sigkill_works") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let t = task(
        "sleepy",
        vec![container("s", &["sleep", "1000"])],
        NetworkMode::None,
    );
    rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    let (path, _rx) = fx.fifo("sleepy");
    let c = &t.containers[0].name;
    let pid = rt
        .start_container(&t.family, c, &path)
        .await
        .expect("start");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    rt.kill(&t.family, c, libc::SIGTERM).await.expect("sigterm");
    // pid 1 of a pid namespace has no default action for SIGTERM: nothing may arrive.
    let quiet = tokio::time::timeout(Duration::from_millis(500), exits.recv()).await;
    assert!(quiet.is_err(), "exited on SIGTERM: {quiet:?}");
    rt.kill(&t.family, c, libc::SIGKILL).await.expect("sigkill");
    let exit = next_exit(&mut exits).await;
    assert_eq!(exit.exit.code, 137);
    assert_eq!(exit.exit.signal, Some(libc::SIGKILL));
    assert!(!exit.exit.oom_killed);
    // Signalling an exited container is fine; an unknown one or a bad signal is not.
    rt.kill(&t.family, c, libc::SIGTERM)
        .await
        .expect("after exit");
    let err = rt
        .kill(&t.family, &name("other"), libc::SIGTERM)
        .await
        .expect_err("unknown");
    assert!(matches!(err, RuntimeError::NotFound { .. }), "{err}");
    rt.remove_task(&t.family).await.expect("remove");
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_owned)
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn remove_task_leaves_nothing() {
    if !root_or_skip("remove_task_leaves_nothing") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let t = task(
        "gone",
        vec![
            container("a", &["sleep", "1000"]),
            container("b", &["sleep", "1000"]),
        ],
        NetworkMode::None,
    );
    rt.prepare_task(&t, &fx.images(2)).await.expect("prepare");
    let mut fifos = Vec::new();
    for c in &t.containers {
        let (path, rx) = fx.fifo(c.name.as_str());
        rt.start_container(&t.family, &c.name, &path)
            .await
            .expect("start");
        fifos.push(rx);
    }
    assert!(!mounts_under(&fx.run_dir()).is_empty());
    assert!(fx.cgroup_dirs().iter().any(|d| d.exists()));
    let err = rt
        .prepare_task(&t, &fx.images(2))
        .await
        .expect_err("prepared twice");
    assert!(matches!(err, RuntimeError::TaskExists { .. }), "{err}");

    rt.remove_task(&t.family).await.expect("remove");
    // Both exits were reported before remove_task returned.
    let mut got = Vec::new();
    for _ in 0..2 {
        let e = exits
            .try_recv()
            .expect("exit reported before remove_task returned");
        assert_eq!(e.exit.code, 137);
        got.push(e.container.to_string());
    }
    got.sort();
    assert_eq!(got, ["a", "b"]);

    assert_eq!(mounts_under(&fx.run_dir()), Vec::<String>::new());
    let leftover: Vec<_> = fx
        .cgroup_dirs()
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(leftover.is_empty(), "cgroups left: {leftover:?}");
    assert_eq!(entries(&fx.run_dir().join("state")), Vec::<String>::new());
    assert_eq!(entries(&fx.run_dir().join("tasks")), Vec::<String>::new());
    assert_eq!(entries(&fx.run_dir().join("netns")), Vec::<String>::new());
    // The image is untouched.
    assert!(fx.image.rootfs.join("bin/busybox").is_file());
    // Idempotent.
    rt.remove_task(&t.family).await.expect("remove again");
}

#[tokio::test]
async fn cleanup_stale_removes_what_a_dead_launcher_left() {
    if !root_or_skip("cleanup_stale_removes_what_a_dead_launcher_left") {
        return;
    }
    // Orphaned container inits are re-parented to this process instead of the system's init,
    // so the test can wait for the one it leaves behind.
    nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
    let fx = Fixture::new();
    let (old, _old_exits) = fx.runtime().await;
    let t = task(
        "left",
        vec![container("s", &["sleep", "1000"])],
        NetworkMode::None,
    );
    let prepared_only = task(
        "unstarted",
        vec![container("u", &["true"])],
        NetworkMode::None,
    );
    old.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    old.prepare_task(&prepared_only, &fx.images(1))
        .await
        .expect("prepare");
    let (path, _rx) = fx.fifo("left");
    let pid = old
        .start_container(&t.family, &t.containers[0].name, &path)
        .await
        .expect("start");
    let launcher = nix::unistd::Pid::from_raw(i32::try_from(old.launcher_pid()).expect("pid"));
    nix::sys::signal::kill(launcher, nix::sys::signal::Signal::SIGKILL).expect("kill launcher");
    let err = tokio::time::timeout(DEADLINE, async {
        loop {
            match old.kill(&t.family, &t.containers[0].name, 0).await {
                Err(RuntimeError::LauncherGone) => return,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    assert!(err.is_ok(), "the old handle notices its launcher is gone");
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "container outlives its launcher"
    );

    let (rt, mut exits) = fx.runtime().await;
    let mut removed = rt.cleanup_stale().await.expect("cleanup");
    removed.sort();
    assert_eq!(removed, ["left/s", "unstarted"]);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    let status = nix::sys::wait::waitpid(pid, None).expect("wait for the orphan");
    assert!(
        matches!(
            status,
            nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)
        ),
        "{status:?}"
    );
    assert!(
        exits.try_recv().is_err(),
        "no exit for a container of another launcher"
    );
    assert_eq!(mounts_under(&fx.run_dir()), Vec::<String>::new());
    assert!(fx.cgroup_dirs().iter().all(|d| !d.exists()));
    assert_eq!(entries(&fx.run_dir().join("state")), Vec::<String>::new());
    assert_eq!(entries(&fx.run_dir().join("tasks")), Vec::<String>::new());
    assert_eq!(entries(&fx.run_dir().join("netns")), Vec::<String>::new());
    assert_eq!(
        rt.cleanup_stale().await.expect("again"),
        Vec::<String>::new()
    );
    // The same task started anew: its exit is reported (nothing of the removed run's is
    // waiting to swallow it).
    rt.prepare_task(&t, &fx.images(1))
        .await
        .expect("prepare again");
    let (path, _rx2) = fx.fifo("left-again");
    rt.start_container(&t.family, &t.containers[0].name, &path)
        .await
        .expect("start again");
    rt.kill(&t.family, &t.containers[0].name, 9)
        .await
        .expect("kill");
    let exit = next_exit(&mut exits).await;
    assert_eq!((exit.task.as_str(), exit.exit.signal), ("left", Some(9)));
    rt.remove_task(&t.family).await.expect("remove");
}

/// Starts a one-container task that stays up (`sleep 1000`); returns its task and container
/// names and the FIFO reader that must stay open while it runs.
async fn start_sleeper(
    fx: &Fixture,
    rt: &Runtime,
    family: &str,
    c: ContainerDefinition,
    mode: NetworkMode,
) -> (Name, Name, pipe::Receiver) {
    let t = task(family, vec![c], mode);
    rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    let (path, rx) = fx.fifo(family);
    rt.start_container(&t.family, &t.containers[0].name, &path)
        .await
        .expect("start");
    (t.family.clone(), t.containers[0].name.clone(), rx)
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Pids in a container's cgroup (the `pids` controller on v1).
fn container_procs(fx: &Fixture, task: &Name, container: &Name) -> Vec<u32> {
    let root = Path::new("/sys/fs/cgroup");
    let dir = if root.join("cgroup.controllers").exists() {
        root.to_path_buf()
    } else {
        root.join("pids")
    };
    let procs = dir
        .join(&fx.parent)
        .join(task.as_str())
        .join(container.as_str())
        .join("cgroup.procs");
    std::fs::read_to_string(&procs)
        .expect("cgroup.procs")
        .lines()
        .map(|l| l.parse().expect("pid"))
        .collect()
}

const EXEC_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn exec_runs_commands_inside_a_running_container() {
    if !root_or_skip("exec_runs_commands_inside_a_running_container") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let mut c = container("app", &["sleep", "1000"]);
    c.environment = vec![EnvVar {
        name: "GREETING".into(),
        value: "world".into(),
    }];
    c.user = Some("nobody".into());
    c.working_directory = Some("/data".into());
    let (t, c, _rx) = start_sleeper(&fx, &rt, "execs", c, NetworkMode::None).await;

    let out = rt
        .exec(&t, &c, argv(&["true"]), EXEC_TIMEOUT)
        .await
        .expect("exec true");
    assert_eq!(out.code, Some(0));
    assert!(!out.timed_out);
    assert!(out.output.is_empty());
    let out = rt
        .exec(&t, &c, argv(&["sh", "-c", "exit 3"]), EXEC_TIMEOUT)
        .await
        .expect("exec exit 3");
    assert_eq!(out.code, Some(3));

    // The container's env, user, working directory, hostname and pid namespace; stdout and
    // stderr both captured.
    let probe =
        "echo hello $GREETING; id -u; pwd; hostname; cat /proc/1/cmdline; echo; echo oops >&2";
    let out = rt
        .exec(&t, &c, argv(&["sh", "-c", probe]), EXEC_TIMEOUT)
        .await
        .expect("exec probe");
    assert_eq!(out.code, Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.output),
        "hello world\n65534\n/data\nexecs\nsleep\u{0}1000\u{0}\noops\n"
    );

    // Output is cut at 1 KiB, and a chatty command is not blocked by it.
    let chatty = "i=0; while [ $i -lt 10000 ]; do echo 0123456789; i=$((i+1)); done";
    let out = rt
        .exec(&t, &c, argv(&["sh", "-c", chatty]), EXEC_TIMEOUT)
        .await
        .expect("exec chatty");
    assert_eq!(out.code, Some(0));
    assert_eq!(out.output.len(), skiff_agent::runtime::EXEC_OUTPUT_LIMIT);
    assert!(out.output.starts_with(b"0123456789\n0123456789\n"));

    // Refused before anything runs, or failing to start: errors naming the container.
    let err = rt
        .exec(&t, &c, vec!["true".into(); 65], EXEC_TIMEOUT)
        .await
        .expect_err("too many args");
    assert!(matches!(err, RuntimeError::ExecArgv { .. }), "{err}");
    assert!(err.to_string().contains("execs/app"), "{err}");
    let err = rt
        .exec(&t, &c, vec!["x".repeat(4097)], EXEC_TIMEOUT)
        .await
        .expect_err("arg too long");
    assert!(matches!(err, RuntimeError::ExecArgv { .. }), "{err}");
    let err = rt
        .exec(&t, &c, argv(&["/no/such/thing"]), EXEC_TIMEOUT)
        .await
        .expect_err("no executable");
    assert!(err.to_string().contains("/no/such/thing"), "{err}");

    // None of this touched the container; libcontainer's per-exec sockets are gone.
    assert!(exits.try_recv().is_err(), "the container still runs");
    let state = entries(&fx.run_dir().join("state").join("execs+app"));
    assert!(!state.iter().any(|e| e.starts_with("tenant-")), "{state:?}");
    rt.remove_task(&t).await.expect("remove");
}

#[tokio::test]
async fn exec_timeout_kills_the_command_and_not_the_container() {
    if !root_or_skip("exec_timeout_kills_the_command_and_not_the_container") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let c = container("app", &["sleep", "1000"]);
    let (t, c, _rx) = start_sleeper(&fx, &rt, "slow", c, NetworkMode::None).await;
    let init = container_procs(&fx, &t, &c);
    assert_eq!(init.len(), 1, "{init:?}");

    for cmd in [&["sleep", "30"][..], &["sh", "-c", "sleep 30; echo late"]] {
        let t0 = Instant::now();
        let out = rt
            .exec(&t, &c, argv(cmd), Duration::from_secs(1))
            .await
            .expect("exec");
        let took = t0.elapsed();
        assert!(out.timed_out, "{cmd:?}: {out:?}");
        assert_eq!(out.code, None);
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(5),
            "{took:?}"
        );
        // The command and what it started are gone (a killed child of the command may take a
        // moment to finish exiting); the container's init is still there.
        let t0 = Instant::now();
        while container_procs(&fx, &t, &c) != init {
            assert!(
                t0.elapsed() < DEADLINE,
                "{cmd:?}: {:?}",
                container_procs(&fx, &t, &c)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let out = rt
        .exec(&t, &c, argv(&["true"]), EXEC_TIMEOUT)
        .await
        .expect("exec after a timeout");
    assert_eq!(out.code, Some(0));
    assert!(exits.try_recv().is_err(), "the container still runs");
    rt.remove_task(&t).await.expect("remove");
}

#[tokio::test]
async fn removing_a_task_ends_its_running_execs() {
    if !root_or_skip("removing_a_task_ends_its_running_execs") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let c = container("app", &["sleep", "1000"]);
    let (t, c, _rx) = start_sleeper(&fx, &rt, "doomed", c, NetworkMode::None).await;
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (rt, t, c) = (rt.clone(), t.clone(), c.clone());
        running.spawn(async move { rt.exec(&t, &c, argv(&["sleep", "30"]), EXEC_TIMEOUT).await });
    }
    let t0 = Instant::now();
    while container_procs(&fx, &t, &c).len() < 4 {
        assert!(t0.elapsed() < DEADLINE, "the execs never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The dying init waits for the execs in its pid namespace to be reaped: remove_task must
    // not wait for the init alone.
    tokio::time::timeout(DEADLINE, rt.remove_task(&t))
        .await
        .expect("remove_task returns")
        .expect("remove");
    assert_eq!(next_exit(&mut exits).await.exit.code, 137);
    while let Some(res) = running.join_next().await {
        let out = res.expect("task").expect("exec");
        assert_eq!(out.code, Some(137), "killed with the container: {out:?}");
        assert!(!out.timed_out);
    }
}

#[tokio::test]
async fn exec_into_a_container_that_is_not_running_fails() {
    if !root_or_skip("exec_into_a_container_that_is_not_running_fails") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let t = task("idle", vec![container("c", &["true"])], NetworkMode::None);
    rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
    let c = &t.containers[0].name;
    let not_running = |err: RuntimeError, what: &str| {
        assert!(
            matches!(err, RuntimeError::NotRunning { .. }),
            "{what}: {err}"
        );
        assert!(err.to_string().contains("idle/"), "{what}: {err}");
    };
    let err = rt
        .exec(&t.family, c, argv(&["true"]), EXEC_TIMEOUT)
        .await
        .expect_err("prepared, not started");
    not_running(err, "prepared");
    let (path, _rx) = fx.fifo("idle");
    rt.start_container(&t.family, c, &path)
        .await
        .expect("start");
    assert_eq!(next_exit(&mut exits).await.exit.code, 0);
    let err = rt
        .exec(&t.family, c, argv(&["true"]), EXEC_TIMEOUT)
        .await
        .expect_err("exited");
    not_running(err, "exited");
    let err = rt
        .exec(&t.family, &name("other"), argv(&["true"]), EXEC_TIMEOUT)
        .await
        .expect_err("unknown");
    not_running(err, "unknown");
    rt.remove_task(&t.family).await.expect("remove");
}

#[tokio::test]
async fn concurrent_execs_all_answer_and_a_slow_one_blocks_nothing() {
    if !root_or_skip("concurrent_execs_all_answer_and_a_slow_one_blocks_nothing") {
        return;
    }
    let fx = Fixture::new();
    let (rt, _exits) = fx.runtime().await;
    let c = container("app", &["sleep", "1000"]);
    let (t, c, _rx) = start_sleeper(&fx, &rt, "busy", c, NetworkMode::None).await;
    let slow = {
        let (rt, t, c) = (rt.clone(), t.clone(), c.clone());
        tokio::spawn(async move {
            let out = rt.exec(&t, &c, argv(&["sleep", "2"]), EXEC_TIMEOUT).await;
            (out, Instant::now())
        })
    };
    let mut quick = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (rt, t, c) = (rt.clone(), t.clone(), c.clone());
        quick.spawn(async move {
            let cmd = format!("echo {i}; exit {i}");
            (
                i,
                rt.exec(&t, &c, argv(&["sh", "-c", &cmd]), EXEC_TIMEOUT)
                    .await,
            )
        });
    }
    let mut seen = Vec::new();
    while let Some(res) = quick.join_next().await {
        let (i, out) = res.expect("task");
        let out = out.expect("exec");
        assert_eq!(out.code, Some(i), "{out:?}");
        assert_eq!(out.output, format!("{i}\n").into_bytes());
        seen.push(i);
    }
    let quick_done = Instant::now();
    seen.sort();
    assert_eq!(seen, (0..8).collect::<Vec<_>>());
    let (out, slow_done) = slow.await.expect("task");
    assert_eq!(out.expect("slow exec").code, Some(0));
    assert!(
        slow_done > quick_done,
        "the quick ones did not wait for the slow one"
    );
    rt.remove_task(&t).await.expect("remove");
}

#[tokio::test]
async fn tcp_check_connects_inside_the_task_network_namespace() {
    if !root_or_skip("tcp_check_connects_inside_the_task_network_namespace") {
        return;
    }
    let fx = Fixture::new();
    let (rt, _exits) = fx.runtime().await;
    let web = container("web", &["busybox", "httpd", "-f", "-p", "8080"]);
    let (t, _c, _rx) = start_sleeper(&fx, &rt, "web", web, NetworkMode::None).await;
    let hosted = container("h", &["sleep", "1000"]);
    let (h, _hc, _hrx) = start_sleeper(&fx, &rt, "hosted", hosted, NetworkMode::Host).await;
    let timeout = Duration::from_millis(500);

    // httpd listens soon after its start; wait for it with a deadline.
    let t0 = Instant::now();
    while !rt.tcp_check(&t, 8080, timeout).await.expect("check") {
        assert!(t0.elapsed() < DEADLINE, "httpd never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!rt.tcp_check(&t, 8081, timeout).await.expect("closed port"));

    // A port open on the host is closed in the task's namespace and open for a host task.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    assert!(!rt
        .tcp_check(&t, port, timeout)
        .await
        .expect("own namespace"));
    assert!(rt
        .tcp_check(&h, port, timeout)
        .await
        .expect("host namespace"));
    drop(listener);

    let err = rt
        .tcp_check(&name("nothere"), 8080, timeout)
        .await
        .expect_err("no task");
    assert!(matches!(err, RuntimeError::TaskNotPrepared { .. }), "{err}");
    assert!(err.to_string().contains("nothere"), "{err}");
    rt.remove_task(&t).await.expect("remove");
    rt.remove_task(&h).await.expect("remove host");
}

/// Time of one `exec true` health check, median of 20, beside a `tcp_check`. A measurement,
/// not a check: `cargo test -p skiff-agent --test runtime -- --ignored --nocapture measure`.
#[tokio::test]
#[ignore = "measurement; run explicitly"]
async fn measure_exec_true_median_of_20() {
    if !root_or_skip("measure_exec_true_median_of_20") {
        return;
    }
    let fx = Fixture::new();
    let (rt, _exits) = fx.runtime().await;
    let c = container("app", &["sleep", "1000"]);
    let (t, c, _rx) = start_sleeper(&fx, &rt, "hc", c, NetworkMode::None).await;
    let mut exec = Vec::new();
    let mut tcp = Vec::new();
    for i in 0..21 {
        let t0 = Instant::now();
        let out = rt
            .exec(&t, &c, argv(&["true"]), EXEC_TIMEOUT)
            .await
            .expect("exec");
        let t1 = Instant::now();
        assert_eq!(out.code, Some(0));
        rt.tcp_check(&t, 8080, Duration::from_secs(1))
            .await
            .expect("tcp check");
        if i > 0 {
            exec.push(t1 - t0);
            tcp.push(t1.elapsed());
        }
    }
    exec.sort();
    tcp.sort();
    println!(
        "exec true: median {:?} (min {:?}, max {:?}); tcp_check (closed port, netns): median {:?}",
        exec[exec.len() / 2],
        exec[0],
        exec[exec.len() - 1],
        tcp[tcp.len() / 2]
    );
    rt.remove_task(&t).await.expect("remove");
}

/// Runs `true` in 21 one-container tasks named `{prefix}{i}` (the first a warm-up) and returns
/// the sorted times of `prepare_task` and of start + wait + remove, 20 each.
pub(crate) async fn true_cycles(
    fx: &Fixture,
    rt: &Runtime,
    exits: &mut Receiver<ContainerExit>,
    prefix: &str,
    mode: NetworkMode,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut prepare = Vec::new();
    let mut cycle = Vec::new();
    for i in 0..21 {
        let family = format!("{prefix}{i}");
        let t = task(&family, vec![container("t", &["true"])], mode);
        let (path, _rx) = fx.fifo(&family);
        let p0 = Instant::now();
        rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
        let t0 = Instant::now();
        rt.start_container(&t.family, &t.containers[0].name, &path)
            .await
            .expect("start");
        let exit = next_exit(exits).await;
        assert_eq!(exit.exit.code, 0);
        rt.remove_task(&t.family).await.expect("remove");
        if i > 0 {
            cycle.push(t0.elapsed());
            prepare.push(t0 - p0);
        }
    }
    cycle.sort();
    prepare.sort();
    (prepare, cycle)
}

/// Time of create + start + wait + delete of `true`, median of 20. A measurement, not a check:
/// `cargo test -p skiff-agent --test runtime -- --ignored --nocapture measure`.
#[tokio::test]
#[ignore = "measurement; run explicitly"]
async fn measure_true_median_of_20() {
    if !root_or_skip("measure_true_median_of_20") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let (prepare, cycle) = true_cycles(&fx, &rt, &mut exits, "m", NetworkMode::Host).await;
    println!(
        "true: start+wait+remove median {:?} (min {:?}, max {:?}); prepare_task median {:?}",
        cycle[cycle.len() / 2],
        cycle[0],
        cycle[cycle.len() - 1],
        prepare[prepare.len() / 2]
    );
}
