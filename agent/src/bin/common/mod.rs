//! Pieces the benchmark programs share: process handles, /proc readings, task definitions.
//! Included by each benchmark with `#[path = "common/mod.rs"] mod common;`.
#![allow(dead_code)] // each benchmark uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use skiff_agent::mqtt::{Connection, Inbound};
use skiff_proto::codec::{decode, Message};
use skiff_proto::EventBody;

use skiff_proto::{ContainerDefinition, Name, NetworkMode, RestartPolicy, TaskDefinition};

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// A child process killed when dropped.
pub struct Kill(pub Child);

impl Kill {
    /// SIGTERM and wait (up to 60 s) for a clean exit: an agent stops its tasks first.
    pub fn terminate(mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory removed when dropped.
pub struct Work(pub PathBuf);

impl Work {
    /// `{tmp}/{prefix}-{pid}`, created.
    pub fn new(prefix: &str) -> Res<Work> {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Work(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// mosquitto on `127.0.0.1:{port}`, anonymous, no persistence, config written in `dir`.
pub fn start_broker(port: u16, dir: &Path) -> Res<Kill> {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )?;
    let broker = Kill(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));
    Ok(broker)
}

/// Waits until `n` distinct tasks reported `TaskRunning` on the `events` topic; returns them.
pub async fn until_n_running(
    conn: &mut Connection,
    events: &str,
    n: usize,
    limit: Duration,
) -> Res<std::collections::BTreeSet<Name>> {
    let mut running = std::collections::BTreeSet::new();
    while running.len() < n {
        match tokio::time::timeout(limit, conn.inbound.recv()).await? {
            Some(Inbound::Publish { topic, payload, .. }) if topic == events => {
                if let Ok(Message::Event(e)) = decode(&payload) {
                    if let EventBody::TaskRunning { task } = e.body {
                        running.insert(task);
                    }
                }
            }
            Some(_) => {}
            None => return Err("broker gone".into()),
        }
    }
    Ok(running)
}

pub fn name(s: &str) -> Res<Name> {
    Ok(s.parse()?)
}

/// A one-container busybox task running `args`.
pub fn task(family: &str, args: &[&str], policy: RestartPolicy) -> Res<TaskDefinition> {
    Ok(TaskDefinition {
        family: name(family)?,
        revision: 1,
        containers: vec![ContainerDefinition {
            name: name("main")?,
            image: "busybox".into(),
            entry_point: vec![],
            command: args.iter().map(|s| s.to_string()).collect(),
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
        }],
        cpu: None,
        memory_mib: None,
        network_mode: NetworkMode::None,
        restart_policy: policy,
        extensions: vec![],
    })
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A `key: value` number from `/proc/{pid}/{file}` (first word of the value).
pub fn proc_number(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn rss_kib(pid: u32) -> u64 {
    proc_number(pid, "status", "VmRSS:")
}

pub fn write_bytes(pid: u32) -> u64 {
    proc_number(pid, "io", "write_bytes:")
}

/// The first process (by pid) for which `pick(pid)` holds.
fn find_process(pick: impl Fn(u32) -> Option<()>) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            pick(pid).map(|()| pid)
        })
}

/// The agent's launcher: its child running `__launcher`.
pub fn launcher_of(agent: u32) -> Option<u32> {
    find_process(|pid| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid: u32 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
        (ppid == agent && cmd.contains("__launcher")).then_some(())
    })
}

/// The launcher serving `run_dir`, whoever its parent is (after an adoption it is not the
/// agent's child).
pub fn launcher_in(run_dir: &Path) -> Option<u32> {
    let want = run_dir.join("state");
    find_process(|pid| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        (args.get(1) == Some(&&b"__launcher"[..])
            && args.get(2) == Some(&want.as_os_str().as_encoded_bytes()))
        .then_some(())
    })
}

pub fn size_mib(p: &Path) -> String {
    std::fs::metadata(p).map_or("-".into(), |m| {
        format!("{:.2} MiB", m.len() as f64 / 1048576.0)
    })
}

pub fn which(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

/// The `p`-th percentile (0..=100, nearest rank) of `v`.
pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    // The smallest rank r with r / len >= p / 100, found without a float-to-int cast.
    let rank = (1..=v.len())
        .find(|r| *r as f64 * 100.0 >= p * v.len() as f64)
        .unwrap_or(v.len());
    v.get(rank.saturating_sub(1)).copied().unwrap_or(f64::NAN)
}

/// CPU time of `pid` from `/proc/{pid}/stat` in clock ticks: (utime + stime, cutime + cstime);
/// the second is its children that it has waited for.
pub fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<u64> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|s| s.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    (get(11) + get(12), get(13) + get(14))
}

/// Clock ticks per second (`/proc/*/stat` times are in these).
pub fn ticks_per_sec() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// User + system CPU time of this process's children that were waited for, descendants they
/// waited for included (`getrusage(RUSAGE_CHILDREN)`).
pub fn children_cpu() -> Res<Duration> {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    let d = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    Ok(d(u.user_time()) + d(u.system_time()))
}

/// A runc/crun bundle in `bundle` running `args` on `rootfs` (read-only), no terminal, in
/// cgroup `cgroups_path`; `tmpfs_tmp` adds a writable tmpfs on `/tmp`. From `TOOL spec`.
pub fn peer_bundle(
    tool: &Path,
    rootfs: &Path,
    bundle: &Path,
    args: &[&str],
    cgroups_path: &str,
    tmpfs_tmp: bool,
) -> Res<()> {
    std::fs::create_dir_all(bundle)?;
    let spec_path = bundle.join("config.json");
    let _ = std::fs::remove_file(&spec_path);
    if !Command::new(tool)
        .arg("spec")
        .current_dir(bundle)
        .status()?
        .success()
    {
        return Err(format!("{} spec failed", tool.display()).into());
    }
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&spec_path)?)?;
    spec["root"]["path"] = serde_json::json!(rootfs);
    spec["root"]["readonly"] = serde_json::json!(true);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(args);
    spec["linux"]["cgroupsPath"] = serde_json::json!(cgroups_path);
    if tmpfs_tmp {
        if let Some(mounts) = spec["mounts"].as_array_mut() {
            mounts.push(serde_json::json!({
                "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777"]
            }));
        }
    }
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    Ok(())
}

/// True on a cgroup v1/v2 hybrid layout, which crun refuses: measure it through
/// [`leave_hybrid_cgroup2`] in a private mount namespace (`unshare -m --propagation private`).
pub fn hybrid_cgroups() -> bool {
    Path::new("/sys/fs/cgroup/unified").exists()
}

/// Unmounts the hybrid layout's empty cgroup2 mount; only ever call it inside a private mount
/// namespace.
pub fn leave_hybrid_cgroup2() {
    let _ = nix::mount::umount2("/sys/fs/cgroup/unified", nix::mount::MntFlags::MNT_DETACH);
}
