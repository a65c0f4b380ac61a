//! Real components for end-to-end tests: a mosquitto broker on a free loopback port, the busybox
//! OCI image built from Debian's busybox-static, the real `skiff` binary as agent and console,
//! and `mosquitto_sub` as an independent observer.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use skiff_proto::codec::{decode, Message};

pub const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// Why the environment can't run these tests, or None. The README says how to get everything
/// (`tests/run.sh` installs it); CI always has it, so there a missing piece fails loudly.
pub fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("must run as root (containers)".into());
    }
    for tool in ["mosquitto", "mosquitto_sub", "mosquitto_pub"] {
        if which(tool).is_none() {
            return Some(format!(
                "{tool} is not installed (apt-get install mosquitto mosquitto-clients)"
            ));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is missing (apt-get install busybox-static)".into());
    }
    None
}

/// Skips the test (returns from it) when a prerequisite is missing, unless CI demands them.
#[macro_export]
macro_rules! require_env {
    () => {
        $crate::require_env!($crate::harness::missing_prerequisite())
    };
    ($missing:expr) => {
        if let Some(why) = $missing {
            if std::env::var_os("SKIFF_E2E_REQUIRED").is_some() {
                panic!("end-to-end prerequisite missing: {why}");
            }
            eprintln!("SKIPPED: {why}; see README.md (tests/run.sh installs what is needed)");
            return;
        }
    };
}

/// Why `tool` can't be used, or None: not on PATH (`apt-get install {package}`).
pub fn tool_missing(tool: &str, package: &str) -> Option<String> {
    which(tool)
        .is_none()
        .then(|| format!("{tool} is not installed (apt-get install {package})"))
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Waits until `f` returns Some, or panics with `what` at the deadline.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A mosquitto broker on a free loopback port, killed on drop.
pub struct Broker {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
    /// A TLS listener: the identity the test's own clients (ctl, mosquitto_sub/pub) use.
    pub tls: Option<ClientTls>,
}

/// PEM files a client connects to a TLS broker with.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientTls {
    /// mosquitto_sub / mosquitto_pub options.
    pub fn mosquitto_args(&self) -> Vec<std::ffi::OsString> {
        let mut v = Vec::new();
        for (flag, path) in [
            ("--cafile", &self.ca),
            ("--cert", &self.cert),
            ("--key", &self.key),
        ] {
            v.push(flag.into());
            v.push(path.into());
        }
        v
    }

    /// `skiff ctl` options.
    pub fn ctl_args(&self) -> Vec<std::ffi::OsString> {
        let mut v = Vec::new();
        for (flag, path) in [
            ("--ca", &self.ca),
            ("--cert", &self.cert),
            ("--key", &self.key),
        ] {
            v.push(flag.into());
            v.push(path.into());
        }
        v
    }
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_on(free_port())
    }

    /// A broker on a given port (to bring one back after a test stopped it).
    pub fn start_on(port: u16) -> Broker {
        Self::start_configured(
            port,
            &format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
            None,
        )
    }

    /// A broker with `listener` settings (a TLS listener: its files, ACL); `tls` is what the
    /// test's clients connect with, and makes [`Broker::url`] `mqtts://`.
    pub fn start_configured(port: u16, listener: &str, tls: Option<ClientTls>) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("{listener}persistence false\nlog_dest stderr\nlog_type error\n"),
        )
        .expect("write mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        wait_for("mosquitto to listen", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Broker {
            port,
            child,
            _dir: dir,
            tls,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// mosquitto_sub / mosquitto_pub options for this broker's TLS listener (none without).
    pub fn client_args(&self) -> Vec<std::ffi::OsString> {
        self.tls
            .as_ref()
            .map(ClientTls::mosquitto_args)
            .unwrap_or_default()
    }

    /// Publishes raw bytes with mosquitto_pub (the way a hostile or broken client would).
    pub fn publish_raw(&self, topic: &str, payload: &[u8], retain: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("payload");
        std::fs::write(&file, payload).expect("write payload");
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-f",
        ])
        .arg(&file)
        .args(self.client_args());
        if retain {
            cmd.arg("-r");
        }
        let out = cmd.output().expect("run mosquitto_pub");
        assert!(
            out.status.success(),
            "mosquitto_pub failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The busybox OCI image layout, built once per test run by the fixture script.
pub fn busybox_layout() -> PathBuf {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT
        .get_or_init(|| {
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("busybox-oci-{}", std::process::id()));
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/make-busybox-oci.sh");
            let status = Command::new("sh")
                .arg(&script)
                .arg(&out)
                .status()
                .expect("run make-busybox-oci.sh");
            assert!(status.success(), "make-busybox-oci.sh failed");
            out
        })
        .clone()
}

static AGENTS: AtomicU32 = AtomicU32::new(0);

/// A `skiff agent` process with its own data dir, run dir and cgroup parent.
pub struct Agent {
    pub node: String,
    pub cluster: String,
    pub dir: tempfile::TempDir,
    pub cgroup_parent: String,
    child: Option<Child>,
    pub stderr: std::sync::Arc<Mutex<String>>,
}

impl Agent {
    /// Imports busybox and starts the agent against `broker`.
    pub fn start(broker: &Broker, cluster: &str, node: &str) -> Agent {
        Self::start_with(broker, cluster, node, "")
    }

    pub fn start_with(broker: &Broker, cluster: &str, node: &str, extra_config: &str) -> Agent {
        Self::start_prepared(broker, cluster, node, extra_config, |_| {})
    }

    /// Like [`Agent::start_with`], with `prepare` run on the agent's directory first (e.g. to
    /// mount a small tmpfs as its data dir).
    pub fn start_prepared(
        broker: &Broker,
        cluster: &str,
        node: &str,
        extra_config: &str,
        prepare: impl FnOnce(&Path),
    ) -> Agent {
        Self::launch(broker, cluster, node, extra_config, prepare, true)
    }

    /// An agent whose config has no `node_id`: with a TLS client certificate it is the
    /// certificate's CN, which `node` names.
    pub fn start_unnamed(broker: &Broker, cluster: &str, node: &str, extra_config: &str) -> Agent {
        Self::launch_as(broker, cluster, node, false, extra_config, |_| {}, true)
    }

    /// Writes the configuration, optionally imports busybox, and starts the agent.
    fn launch(
        broker: &Broker,
        cluster: &str,
        node: &str,
        extra_config: &str,
        prepare: impl FnOnce(&Path),
        import_busybox: bool,
    ) -> Agent {
        Self::launch_as(
            broker,
            cluster,
            node,
            true,
            extra_config,
            prepare,
            import_busybox,
        )
    }

    fn launch_as(
        broker: &Broker,
        cluster: &str,
        node: &str,
        node_id_in_config: bool,
        extra_config: &str,
        prepare: impl FnOnce(&Path),
        import_busybox: bool,
    ) -> Agent {
        let n = AGENTS.fetch_add(1, Ordering::Relaxed);
        let node_line = if node_id_in_config {
            format!("node_id = \"{node}\"\n")
        } else {
            String::new()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(dir.path());
        let cgroup_parent = format!("skiff-e2e-{}-{n}", std::process::id());
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "{node_line}cluster = \"{cluster}\"\nbroker = \"{}\"\ndata_dir = \"{}\"\nrun_dir = \"{}\"\n\
                 metrics_interval_secs = 1\nstop_grace_secs = 2\nkeepalive_secs = 5\ncgroup_parent = \"{cgroup_parent}\"\n\
                 log = \"info\"\n{extra_config}",
                broker.url(),
                dir.path().join("data").display(),
                dir.path().join("run").display(),
            ),
        )
        .expect("write agent.toml");
        if import_busybox {
            import_busybox_into(&config);
        }
        let mut agent = Agent {
            node: node.into(),
            cluster: cluster.into(),
            dir,
            cgroup_parent,
            child: None,
            stderr: Default::default(),
        };
        agent.spawn();
        agent
    }
}

fn import_busybox_into(config: &Path) {
    let import = Command::new(SKIFF)
        .args(["image", "--config"])
        .arg(config)
        .arg("import")
        .arg(busybox_layout())
        .args(["--tag", "busybox"])
        .output()
        .expect("run skiff image import");
    assert!(
        import.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&import.stderr)
    );
}

impl Agent {
    /// Starts the agent process again with the same configuration and directories.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the agent is still running");
        self.spawn();
    }

    /// Starts the agent process again with extra environment variables (e.g. the
    /// `SKIFF_TEST_CRASH_AT` hook).
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "the agent is still running");
        self.spawn_with(env);
    }

    /// Waits for the agent to abort at its `SKIFF_TEST_CRASH_AT` hook, and checks it did.
    pub fn wait_aborted_at_hook(&mut self, timeout: Duration) {
        let st = wait_for("the agent to abort at the hook", timeout, || self.exited());
        assert!(!st.success(), "{st:?}");
        assert!(
            self.stderr
                .lock()
                .is_ok_and(|s| s.contains("SKIFF_TEST_CRASH_AT: aborting")),
            "aborted by the hook"
        );
    }

    /// The agent exited on its own (crashed): its status, once it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let st = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(st)
    }

    fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    fn spawn_with(&mut self, env: &[(&str, &str)]) {
        let mut child = Command::new(SKIFF)
            .args(["agent", "--config"])
            .arg(self.dir.path().join("agent.toml"))
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start skiff agent");
        let stderr = child.stderr.take().expect("stderr");
        let sink = self.stderr.clone();
        let node = self.node.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agent {node}] {line}");
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        self.child = Some(child);
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("agent running")
    }

    /// SIGKILL, as a power cut would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `skiff ctl` against this agent's broker and cluster.
    pub fn ctl(&self, broker: &Broker, args: &[&str]) -> Output {
        let out = Command::new(SKIFF)
            .args([
                "ctl",
                "--broker",
                &broker.url(),
                "--cluster",
                &self.cluster,
                "--timeout",
                "15",
            ])
            .args(
                broker
                    .tls
                    .as_ref()
                    .map(ClientTls::ctl_args)
                    .unwrap_or_default(),
            )
            .args(args)
            .output()
            .expect("run skiff ctl");
        eprintln!(
            "$ skiff ctl {}\n{}{}[exit {:?}]",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status.code()
        );
        out
    }

    /// Cgroup directories of this agent's tasks that still exist (v1 controllers or v2).
    pub fn leftover_cgroups(&self) -> Vec<PathBuf> {
        let mut roots = vec![PathBuf::from("/sys/fs/cgroup").join(&self.cgroup_parent)];
        for c in [
            "memory", "cpu", "cpuacct", "pids", "cpuset", "devices", "freezer", "blkio",
        ] {
            roots.push(
                PathBuf::from("/sys/fs/cgroup")
                    .join(c)
                    .join(&self.cgroup_parent),
            );
        }
        let mut out = Vec::new();
        for r in roots {
            if let Ok(entries) = std::fs::read_dir(&r) {
                out.extend(
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.is_dir()),
                );
            }
        }
        out
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
        kill_launcher(&self.run_dir());
        // Whatever a killed agent or a failed test left: kill the processes in our cgroups,
        // remove the cgroups, unmount what is mounted under our directory.
        let mut roots = vec![PathBuf::from("/sys/fs/cgroup").join(&self.cgroup_parent)];
        for c in [
            "memory", "cpu", "cpuacct", "pids", "cpuset", "devices", "freezer", "blkio",
        ] {
            roots.push(
                PathBuf::from("/sys/fs/cgroup")
                    .join(c)
                    .join(&self.cgroup_parent),
            );
        }
        for r in &roots {
            kill_cgroup_tree(r);
        }
        std::thread::sleep(Duration::from_millis(100));
        for r in &roots {
            remove_cgroup_tree(r);
        }
        let mine = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&mine))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
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

fn kill_cgroup_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        if e.path().is_dir() {
            kill_cgroup_tree(&e.path());
        }
    }
    for f in ["cgroup.procs", "tasks"] {
        for pid in std::fs::read_to_string(dir.join(f))
            .unwrap_or_default()
            .lines()
        {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        if e.path().is_dir() {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A `mosquitto_sub` process printing `topic hexpayload` lines, decoded as they come.
pub struct Sub {
    child: Child,
    rx: Receiver<(String, Vec<u8>)>,
    /// Everything received so far, in order.
    pub seen: Vec<(String, Message)>,
}

impl Sub {
    pub fn start(broker: &Broker, topics: &[&str]) -> Sub {
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-F",
            "%t %x",
        ]);
        cmd.args(broker.client_args());
        for t in topics {
            cmd.args(["-t", t]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("start mosquitto_sub");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Some((topic, hex)) = line.split_once(' ') else {
                    continue;
                };
                let Ok(bytes) = hex::decode(hex.trim()) else {
                    continue;
                };
                if tx.send((topic.to_string(), bytes)).is_err() {
                    return;
                }
            }
        });
        // mosquitto_sub has no "subscribed" signal; give it a moment to subscribe.
        std::thread::sleep(Duration::from_millis(300));
        Sub {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a message for which `f` returns Some; keeps every message in `seen`.
    pub fn wait<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&str, &Message) -> Option<T>,
    ) -> T {
        for (t, m) in &self.seen {
            if let Some(v) = f(t, m) {
                return v;
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((topic, bytes)) => {
                    let msg = decode(&bytes)
                        .unwrap_or_else(|e| panic!("undecodable message on {topic}: {e}"));
                    let hit = f(&topic, &msg);
                    self.seen.push((topic, msg));
                    if let Some(v) = hit {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let seen: Vec<String> = self
                        .seen
                        .iter()
                        .map(|(t, m)| format!("{t}: {m:?}"))
                        .collect();
                    panic!(
                        "timed out after {timeout:?} waiting for {what}; seen:\n{}",
                        seen.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("mosquitto_sub exited while waiting for {what}")
                }
            }
        }
    }

    /// Drains what has arrived without waiting.
    pub fn drain(&mut self) {
        while let Ok((topic, bytes)) = self.rx.try_recv() {
            if let Ok(msg) = decode(&bytes) {
                self.seen.push((topic, msg));
            }
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a task-definition file into `dir`.
pub fn task_file(dir: &Path, name: &str, json: &str) -> PathBuf {
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, json).expect("write task file");
    p
}

// --- Registry (images tests) ----------------------------------------------------------------

/// Why the registry tests can't run, or None: the base prerequisites plus Debian's
/// `docker-registry` and `skopeo`.
pub fn registry_missing() -> Option<String> {
    missing_prerequisite().or_else(|| {
        ["docker-registry", "skopeo"]
            .into_iter()
            .find(|t| which(t).is_none())
            .map(|t| format!("{t} is not installed (apt-get install docker-registry skopeo)"))
    })
}

/// Skips the test when the registry tests can't run, unless CI demands them.
#[macro_export]
macro_rules! require_registry {
    () => {
        $crate::require_env!($crate::harness::registry_missing())
    };
}

/// Debian's `docker-registry` on a free loopback port with a temp storage dir; its stdout and
/// stderr (access log included) are collected in `log`. Killed on drop.
pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub log: std::sync::Arc<Mutex<String>>,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        std::fs::write(
            dir.path().join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("storage").display()
            ),
        )
        .expect("write registry config");
        let mut r = Registry {
            port,
            dir,
            child: None,
            log: Default::default(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start docker-registry");
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        self.child = Some(child);
        let port = self.port;
        wait_for("docker-registry to listen", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    /// `127.0.0.1:PORT`, as image references name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Agent config lines that make this registry usable (plain HTTP).
    pub fn config(&self) -> String {
        format!(
            "\n[[registries]]\nhost = \"{}\"\ninsecure = true\n",
            self.host()
        )
    }

    /// SIGKILL, as a dropped link would look.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port with the same storage.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the registry is still running");
        self.spawn();
    }

    /// `skopeo copy [--all] oci:LAYOUT:latest docker://HOST/NAME`.
    pub fn push(&self, layout: &Path, name: &str, all: bool) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--insecure-policy", "--dest-tls-verify=false", "-q"]);
        if all {
            cmd.arg("--all");
        }
        let out = cmd
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{}/{name}", self.host()))
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Where the registry keeps blob `hex` (filesystem storage driver).
    pub fn blob_data(&self, hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An OCI layout of random data (`tests/fixtures/make-random-oci.sh`); returns its manifest
/// digest.
pub fn random_layout(out: &Path, mib: u32, layers: u32) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/make-random-oci.sh");
    let o = Command::new("sh")
        .arg(&script)
        .arg(out)
        .arg(mib.to_string())
        .arg(layers.to_string())
        .output()
        .expect("run make-random-oci.sh");
    assert!(o.status.success(), "make-random-oci.sh failed");
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

impl Agent {
    /// Starts an agent with an empty image store: its images come from registries.
    pub fn start_bare(broker: &Broker, cluster: &str, node: &str, extra_config: &str) -> Agent {
        Self::launch(broker, cluster, node, extra_config, |_| {}, false)
    }

    /// `skiff image --config <this agent's config> ARGS...`.
    pub fn image_cmd(&self, args: &[&str]) -> Output {
        let out = Command::new(SKIFF)
            .args(["image", "--config"])
            .arg(self.config())
            .args(args)
            .output()
            .expect("run skiff image");
        eprintln!(
            "$ skiff image {}\n{}{}[exit {:?}]",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status.code()
        );
        out
    }
}

/// Wall-clock ms since the Unix epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// --- A foreign-architecture busybox from the Debian archive ------------------------------------

/// Another CPU than this machine's, for multi-arch tests: its dpkg architecture, the OCI
/// platform `skiff image pull --platform` names, and what `file` says of its binaries.
#[derive(Debug, Clone, Copy)]
pub struct ForeignArch {
    pub dpkg: &'static str,
    pub platform: &'static str,
    pub file_says: &'static str,
}

impl ForeignArch {
    /// arm64 on an amd64 machine (CI), amd64 anywhere else.
    pub fn for_host() -> ForeignArch {
        if std::env::consts::ARCH == "x86_64" {
            ForeignArch {
                dpkg: "arm64",
                platform: "linux/arm64/v8",
                file_says: "ARM aarch64",
            }
        } else {
            ForeignArch {
                dpkg: "amd64",
                platform: "linux/amd64",
                file_says: "x86-64",
            }
        }
    }
}

/// The host's dpkg architecture (`dpkg --print-architecture`), as apt's native one.
fn host_dpkg_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "armhf",
        other => other,
    }
}

/// `/bin/busybox` of Debian's `busybox-static:{arch}`, fetched by `apt-get download` under a
/// private apt state in `dir` (lists, cache and sources there; the host's apt state and
/// dpkg's are only read) and unpacked with `dpkg-deb -x`. The sources are the host's deb
/// entries, asked for both architectures. Nothing is kept outside `dir`. The error says which
/// step failed and what apt said: without the Debian archive (network or a mirror in the
/// host's sources) this cannot work.
pub fn debian_busybox(dir: &Path, arch: &str) -> Result<PathBuf, String> {
    let native = host_dpkg_arch();
    for d in [
        "state/lists/partial",
        "cache/archives/partial",
        "sources.list.d",
        "debs",
    ] {
        std::fs::create_dir_all(dir.join(d)).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    let archs = if arch == native {
        native.to_owned()
    } else {
        format!("{native},{arch}")
    };
    let (list, parts) = private_sources(&archs);
    if list.trim().is_empty() && parts.is_empty() {
        return Err("the host has no deb entries in /etc/apt/sources.list(.d)".into());
    }
    std::fs::write(dir.join("sources.list"), list).map_err(|e| e.to_string())?;
    for (name, text) in parts {
        std::fs::write(dir.join("sources.list.d").join(name), text).map_err(|e| e.to_string())?;
    }
    let mut opts = vec![
        "-q".to_owned(),
        format!("-oDir::State={}", dir.join("state").display()),
        format!("-oDir::Cache={}", dir.join("cache").display()),
        format!(
            "-oDir::Etc::SourceList={}",
            dir.join("sources.list").display()
        ),
        format!(
            "-oDir::Etc::SourceParts={}",
            dir.join("sources.list.d").display()
        ),
        format!("-oAPT::Architecture={native}"),
        format!("-oAPT::Architectures::={native}"),
        "-oAcquire::Languages=none".to_owned(),
        // The private dirs are root's; downloading as _apt would only warn about it.
        "-oAPT::Sandbox::User=root".to_owned(),
    ];
    if arch != native {
        opts.push(format!("-oAPT::Architectures::={arch}"));
    }
    let apt = |args: &[&str]| -> Result<Output, String> {
        Command::new("apt-get")
            .args(&opts)
            .args(args)
            .current_dir(dir.join("debs"))
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| format!("cannot run apt-get: {e}"))
    };
    let said = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    // An unreachable third-party source fails the update without hurting the download; the
    // download's failure is the one that counts, reported with the update's words.
    let update = apt(&["update"])?;
    let download = apt(&["download", &format!("busybox-static:{arch}")])?;
    if !download.status.success() {
        return Err(format!(
            "apt-get download busybox-static:{arch} failed ({}); apt-get update said:\n{}\napt-get download said:\n{}",
            download.status,
            said(&update),
            said(&download)
        ));
    }
    let deb = std::fs::read_dir(dir.join("debs"))
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| format!("apt-get download left no .deb: {}", said(&download)))?;
    let root = dir.join("busybox-static");
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
    if !x.status.success() {
        return Err(format!("dpkg-deb -x {}: {}", deb.display(), said(&x)));
    }
    let busybox = root.join("bin/busybox");
    if !busybox.is_file() {
        return Err(format!("{} has no /bin/busybox", deb.display()));
    }
    Ok(busybox)
}

/// The host's apt sources with every `deb` entry restricted to `archs` (`amd64,arm64`): the
/// one-line entries of sources.list and sources.list.d/*.list as one file, and each
/// sources.list.d/*.sources (deb822) file with its `Architectures:` set.
fn private_sources(archs: &str) -> (String, Vec<(std::ffi::OsString, String)>) {
    let mut list = String::new();
    let mut one_line = vec![PathBuf::from("/etc/apt/sources.list")];
    let mut parts = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for p in entries {
        match p.extension().and_then(|x| x.to_str()) {
            Some("list") => one_line.push(p),
            Some("sources") => {
                if let (Ok(text), Some(name)) = (std::fs::read_to_string(&p), p.file_name()) {
                    parts.push((name.to_owned(), deb822_with_archs(&text, archs)));
                }
            }
            _ => {}
        }
    }
    for p in one_line {
        for line in std::fs::read_to_string(&p).unwrap_or_default().lines() {
            if let Some(rest) = line.trim_start().strip_prefix("deb ") {
                list.push_str(&one_line_with_archs(rest.trim_start(), archs));
                list.push('\n');
            }
        }
    }
    (list, parts)
}

/// `deb [arch=ARCHS other=opts] uri suite components` from the part after `deb `.
fn one_line_with_archs(rest: &str, archs: &str) -> String {
    let (opts, tail) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((opts, tail)) => (opts, tail.trim_start()),
        None => ("", rest),
    };
    let mut kept: Vec<&str> = opts
        .split_whitespace()
        .filter(|o| !o.starts_with("arch=") && !o.starts_with("arch+=") && !o.starts_with("arch-="))
        .collect();
    let arch = format!("arch={archs}");
    kept.insert(0, &arch);
    format!("deb [{}] {tail}", kept.join(" "))
}

/// A deb822 sources file with each entry's `Architectures:` set to `archs`.
fn deb822_with_archs(text: &str, archs: &str) -> String {
    let field = format!("Architectures: {}", archs.replace(',', " "));
    let mut out = String::new();
    for stanza in text.split("\n\n") {
        if stanza.trim().is_empty() {
            continue;
        }
        let is_entry = stanza
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("types:"));
        if !is_entry {
            continue; // comments only
        }
        let mut lines: Vec<&str> = stanza
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("architectures:"))
            .collect();
        lines.push(&field);
        out.push_str(&lines.join("\n"));
        out.push_str("\n\n");
    }
    out
}
