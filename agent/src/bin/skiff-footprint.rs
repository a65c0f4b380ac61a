//! `skiff-footprint`: the figures users compare edge agents by (issue 7), each beside a peer
//! measured in the same run, printed as a markdown table.
//!
//! ```text
//! sh cross/build.sh aarch64 x86_64
//! cargo build --release && sudo target/release/skiff-footprint [--runs 20] [--tasks 20]
//!     [--cpu-secs 30] [--agent PATH]
//! ```
//!
//! - size of every stripped static `target/*/dist/skiff`, beside the crun, runc and mosquitto
//!   binaries;
//! - agent RSS (agent + launcher `VmRSS`) idle and with `--tasks` running `sleep` services,
//!   beside the broker's (mosquitto) RSS, split into anonymous and file-backed pages;
//! - container start: `apply` published → first output line in the task's log (and → the
//!   `ContainerStarted` event), median of `--runs`, beside `crun` / `runc` `create` + `start` of
//!   the same rootfs → first output line (and → `start` returned), as a ratio;
//! - agent CPU (utime + stime of agent + launcher over `--cpu-secs`) at a 1 s metrics interval
//!   with the running services, as % of one core, beside mosquitto's in the same window.
//!
//! The agent measured is the static host-arch `dist` build when `cross/build.sh` made one (what a
//! device runs), else the release `skiff` next to this program; `--agent` picks another.
//! Needs root, mosquitto, busybox-static; runc and crun are measured when installed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_agent::config::BrokerUrl;
use skiff_agent::mqtt::{self, Inbound};
use skiff_proto::codec::{decode, encode, Message};
use skiff_proto::{DesiredState, EventBody, Name, RestartPolicy, TaskDefinition};

#[path = "common/mod.rs"]
mod common;

use common::{
    launcher_of, median, name, start_broker, task, until_n_running, which, Kill, Res, Work,
};

/// A peer's medians in ms (create + start returned, create → first output), or why it failed.
type PeerResult = Result<(f64, f64), String>;

fn rss(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"), field("RssFile:"))
}

/// Proportional set size in KiB (`/proc/<pid>/smaps_rollup`): pages shared with another process
/// (the launcher maps the same binary as the agent) count half in each.
fn pss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Fields of `/proc/<pid>/stat` after the command name (index 0 is the state).
fn stat_fields(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_default()
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let f = stat_fields(pid);
    let get = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / 1048576.0)
}

fn mb_of_kib(kib: u64) -> String {
    format!("{:.2} MB", kib as f64 * 1024.0 / 1e6)
}

fn arg<T: std::str::FromStr>(flag: &str, default: T) -> Res<T>
where
    T::Err: std::error::Error + 'static,
{
    match std::env::args().skip_while(|a| a != flag).nth(1) {
        Some(s) => Ok(s.parse()?),
        None => Ok(default),
    }
}

fn nonempty(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
}

/// `TOOL create` + `TOOL start` of `echo hi` on a bundle over `rootfs`, `runs` times: medians of
/// (create + start returned, create → first output byte) in ms.
fn peer_start(tool: &Path, rootfs: &Path, runs: usize, work: &Path) -> Res<(f64, f64)> {
    let short = tool.file_name().and_then(|s| s.to_str()).unwrap_or("rt");
    let bundle = work.join(format!("bundle-{short}"));
    std::fs::create_dir_all(&bundle)?;
    let _ = std::fs::remove_file(bundle.join("config.json"));
    if !Command::new(tool)
        .arg("spec")
        .current_dir(&bundle)
        .status()?
        .success()
    {
        return Err("spec failed".into());
    }
    let spec_path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&spec_path)?)?;
    spec["root"]["path"] = serde_json::json!(rootfs);
    spec["root"]["readonly"] = serde_json::json!(true);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(["echo", "hi"]);
    spec["linux"]["cgroupsPath"] = serde_json::json!("/skiff-footprint-peer");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let (mut started, mut output) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let id = format!("fp-{short}-{i}");
        let out = work.join(format!("{id}.out"));
        let err = work.join(format!("{id}.err"));
        let t = Instant::now();
        // The container inherits create's stdio: files, not pipes (a pipe stays open as long as
        // the container runs, and waiting for its end would wait for the container).
        let create = Command::new(tool)
            .args(["create", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .status()?;
        if !create.success() {
            return Err(std::fs::read_to_string(&err).unwrap_or_default().into());
        }
        let start = Command::new(tool).arg("start").arg(&id).output()?;
        if !start.status.success() {
            return Err(String::from_utf8_lossy(&start.stderr).into_owned().into());
        }
        started.push(t.elapsed().as_secs_f64() * 1000.0);
        while !nonempty(&out) {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!("{short}: no output from {id}").into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        output.push(t.elapsed().as_secs_f64() * 1000.0);
        // `echo` exits at once; wait for that, then delete (not timed).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = Command::new(tool).args(["state", &id]).output()?;
            let stopped = String::from_utf8_lossy(&state.stdout).contains("\"stopped\"");
            if stopped || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = Command::new(tool).args(["delete", "-f", &id]).output()?;
    }
    Ok((median(started), median(output)))
}

/// `skiff-footprint --peer TOOL ROOTFS RUNS WORK`: `peer_start` inside a private mount
/// namespace without the hybrid layout's empty cgroup2 mount (crun refuses hybrid layouts).
fn peer_in_private_mounts(args: &[String]) -> Res<()> {
    let [tool, rootfs, runs, work] = args else {
        return Err("usage: --peer TOOL ROOTFS RUNS WORK".into());
    };
    let _ = nix::mount::umount2("/sys/fs/cgroup/unified", nix::mount::MntFlags::MNT_DETACH);
    let (started, output) = peer_start(
        Path::new(tool),
        Path::new(rootfs),
        runs.parse()?,
        Path::new(work),
    )?;
    println!("{started} {output}");
    Ok(())
}

/// Figures measured against the agent over MQTT.
#[derive(Debug, Default)]
struct AgentFigures {
    idle: [(u64, u64, u64); 2],
    idle_threads: [usize; 2],
    idle_pss: [u64; 2],
    busy: [(u64, u64, u64); 2],
    busy_threads: [usize; 2],
    busy_pss: [u64; 2],
    steady: [(u64, u64, u64); 2],
    steady_threads: [usize; 2],
    steady_pss: [u64; 2],
    broker_idle: u64,
    broker_busy: u64,
    first_output: f64,
    started_event: f64,
    cpu_agent: f64,
    cpu_launcher: f64,
    cpu_broker: f64,
    metrics_msgs: usize,
}

struct Setup {
    port: u16,
    agent: u32,
    launcher: u32,
    broker: u32,
    run_dir: PathBuf,
    runs: usize,
    tasks: usize,
    cpu_secs: u64,
}

async fn measure_agent(s: &Setup) -> Res<AgentFigures> {
    let mut f = AgentFigures::default();
    let cluster = name("fp")?;
    let node = name("fp")?;
    let topic = |t: fn(Name, Name) -> skiff_proto::topic::Topic| {
        t(cluster.clone(), node.clone()).to_topic()
    };
    let desired = topic(|cluster, node| skiff_proto::topic::Topic::NodeDesired { cluster, node });
    let events = topic(|cluster, node| skiff_proto::topic::Topic::Events { cluster, node });
    let status = topic(|cluster, node| skiff_proto::topic::Topic::Status { cluster, node });
    let metrics = topic(|cluster, node| skiff_proto::topic::Topic::Metrics { cluster, node });
    let mut conn = mqtt::connect(mqtt::ConnectOptions {
        client_id: "skiff-footprint".into(),
        broker: BrokerUrl {
            host: "127.0.0.1".into(),
            port: s.port,
        },
        keepalive: Duration::from_secs(30),
        last_will: None,
        subscriptions: vec![events.clone(), status.clone(), metrics.clone()],
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.inbound.recv()).await? {
            Some(Inbound::Publish { topic, payload, .. }) if topic == status => {
                if let Ok(Message::Status(st)) = decode(&payload) {
                    if st.state == skiff_proto::NodeState::Online {
                        break;
                    }
                }
            }
            Some(_) => {}
            None => return Err("broker gone".into()),
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    f.idle = [rss(s.agent), rss(s.launcher)];
    f.idle_threads = [threads(s.agent), threads(s.launcher)];
    f.idle_pss = [pss(s.agent), pss(s.launcher)];
    f.broker_idle = rss(s.broker).0;

    let mut version = 0u64;
    let mut doc = |tasks: Vec<TaskDefinition>| -> Res<Vec<u8>> {
        version += 1;
        Ok(encode(&Message::DesiredState(DesiredState {
            version,
            cluster: cluster.clone(),
            node: Some(node.clone()),
            tasks,
            signature: None,
        }))?)
    };

    // Container start: apply → first output line / ContainerStarted, one new task per run.
    let (mut first, mut started) = (Vec::new(), Vec::new());
    for i in 0..s.runs {
        let family = format!("start{i}");
        let payload = doc(vec![task(&family, &["echo", "hi"], RestartPolicy::Never)?])?;
        let log = s.run_dir.join("logs").join(format!("{family}.log"));
        let t0 = Instant::now();
        conn.client
            .publish(desired.clone(), rumqttc::QoS::AtLeastOnce, true, payload)
            .await?;
        let (mut first_ms, mut started_ms) = (None, None);
        loop {
            if first_ms.is_none() && nonempty(&log) {
                first_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
            }
            match tokio::time::timeout(Duration::from_micros(500), conn.inbound.recv()).await {
                Ok(Some(Inbound::Publish { topic, payload, .. })) if topic == events => {
                    if let Ok(Message::Event(e)) = decode(&payload) {
                        match &e.body {
                            EventBody::ContainerStarted { task, .. } if task.as_str() == family => {
                                started_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
                            }
                            EventBody::TaskStopped { task, .. } if task.as_str() == family => {
                                break;
                            }
                            EventBody::TaskFailed { task, reason } if task.as_str() == family => {
                                return Err(format!("{family} failed: {reason}").into());
                            }
                            _ => {}
                        }
                    }
                }
                Ok(None) => return Err("broker gone".into()),
                _ => {}
            }
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(format!("task {family} did not finish").into());
            }
        }
        while first_ms.is_none() && t0.elapsed() < Duration::from_secs(5) {
            if nonempty(&log) {
                first_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        first.push(first_ms.ok_or("no output line")?);
        started.push(started_ms.ok_or("no ContainerStarted event")?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.first_output = median(first);
    f.started_event = median(started);

    // Long-running services.
    let services = (0..s.tasks)
        .map(|i| {
            task(
                &format!("svc{i}"),
                &["sleep", "100000"],
                RestartPolicy::Always,
            )
        })
        .collect::<Res<Vec<_>>>()?;
    let payload = doc(services)?;
    conn.client
        .publish(desired.clone(), rumqttc::QoS::AtLeastOnce, true, payload)
        .await?;
    let mut running = until_n_running(&mut conn, &events, s.tasks, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    f.busy = [rss(s.agent), rss(s.launcher)];
    f.busy_threads = [threads(s.agent), threads(s.launcher)];
    f.busy_pss = [pss(s.agent), pss(s.launcher)];

    // CPU over the window, metrics every second; the metrics messages are counted as a check.
    let ticks0 = [
        cpu_ticks(s.agent),
        cpu_ticks(s.launcher),
        cpu_ticks(s.broker),
    ];
    let t0 = Instant::now();
    let window = Duration::from_secs(s.cpu_secs);
    while let Some(left) = window.checked_sub(t0.elapsed()) {
        match tokio::time::timeout(left, conn.inbound.recv()).await {
            Ok(Some(Inbound::Publish { topic, .. })) if topic == metrics => f.metrics_msgs += 1,
            Ok(Some(_)) => {}
            Ok(None) => return Err("broker gone".into()),
            Err(_) => break,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let pct = |now: u64, then: u64| now.saturating_sub(then) as f64 / hz / secs * 100.0;
    f.cpu_agent = pct(cpu_ticks(s.agent), ticks0[0]);
    f.cpu_launcher = pct(cpu_ticks(s.launcher), ticks0[1]);
    f.cpu_broker = pct(cpu_ticks(s.broker), ticks0[2]);
    f.broker_busy = rss(s.broker).0;
    // Steady state: the blocking-pool threads that prepared the tasks have timed out by now.
    f.steady = [rss(s.agent), rss(s.launcher)];
    f.steady_threads = [threads(s.agent), threads(s.launcher)];
    f.steady_pss = [pss(s.agent), pss(s.launcher)];

    // Stop the services before the agent goes (its launcher leaves containers running).
    let payload = doc(vec![])?;
    conn.client
        .publish(desired.clone(), rumqttc::QoS::AtLeastOnce, true, payload)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !running.is_empty() && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.inbound.recv()).await {
            Ok(Some(Inbound::Publish { topic, payload, .. })) if topic == events => {
                if let Ok(Message::Event(e)) = decode(&payload) {
                    if let EventBody::TaskStopped { task, .. } = e.body {
                        running.remove(&task);
                    }
                }
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    Ok(f)
}

/// Every `target/<triple>/dist/skiff` (the static builds of `cross/build.sh`).
fn dist_binaries(target: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(target)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let p = e.path().join("dist/skiff");
            p.is_file()
                .then(|| (e.file_name().to_string_lossy().into_owned(), p))
        })
        .collect();
    v.sort();
    v
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--peer") {
        return peer_in_private_mounts(&args[2..]);
    }
    let runs: usize = arg("--runs", 20)?;
    let tasks: usize = arg("--tasks", 20)?;
    let cpu_secs: u64 = arg("--cpu-secs", 30)?;
    let exe = std::env::current_exe()?;
    let exe_dir = exe.parent().ok_or("no exe dir")?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = exe_dir.join("..");
    let dists = dist_binaries(&target);
    let host_dist = target.join(format!(
        "{}-unknown-linux-musl/dist/skiff",
        std::env::consts::ARCH
    ));
    let skiff: PathBuf = match std::env::args().skip_while(|a| a != "--agent").nth(1) {
        Some(p) => p.into(),
        None if host_dist.is_file() => host_dist,
        None => exe_dir.join("skiff"),
    };
    let work = Work::new("skiff-footprint")?;
    let w = work.0.clone();
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let broker = start_broker(port, &w)?;
    let layout = w.join("busybox-oci");
    if !Command::new("sh")
        .arg(repo.join("tests/fixtures/make-busybox-oci.sh"))
        .arg(&layout)
        .status()?
        .success()
    {
        return Err("building the busybox image failed".into());
    }
    let data = w.join("data");
    let run_dir = w.join("run");
    let cfg = w.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "node_id = \"fp\"\ncluster = \"fp\"\nbroker = \"mqtt://127.0.0.1:{port}\"\n\
             data_dir = \"{}\"\nrun_dir = \"{}\"\ncgroup_parent = \"skiff-footprint\"\n\
             log = \"warn\"\nstop_grace_secs = 1\nmetrics_interval_secs = 1\n",
            data.display(),
            run_dir.display()
        ),
    )?;
    if !Command::new(&skiff)
        .args(["image", "--config"])
        .arg(&cfg)
        .arg("import")
        .arg(&layout)
        .args(["--tag", "busybox"])
        .stdout(Stdio::null())
        .status()?
        .success()
    {
        return Err("import failed".into());
    }
    let agent = Kill(
        Command::new(&skiff)
            .args(["agent", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .spawn()?,
    );
    let agent_pid = agent.0.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let launcher = loop {
        if let Some(l) = launcher_of(agent_pid) {
            break l;
        }
        if Instant::now() > deadline {
            return Err("the agent started no launcher".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let setup = Setup {
        port,
        agent: agent_pid,
        launcher,
        broker: broker.0.id(),
        run_dir,
        runs,
        tasks,
        cpu_secs,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let f = rt.block_on(measure_agent(&setup))?;
    drop(agent);

    // Peers on the same rootfs.
    let rootfs = std::fs::read_dir(data.join("images/rootfs"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .next()
        .ok_or("no rootfs")?;
    let mut peers: Vec<(&str, PeerResult)> = Vec::new();
    for tool in ["crun", "runc"] {
        let Some(p) = which(tool) else { continue };
        let measured = if tool == "crun" && Path::new("/sys/fs/cgroup/unified").exists() {
            let out = Command::new("unshare")
                .args(["-m", "--propagation", "private"])
                .arg(&exe)
                .arg("--peer")
                .arg(&p)
                .arg(&rootfs)
                .arg(runs.to_string())
                .arg(&w)
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut it = text.split_whitespace().map(str::parse::<f64>);
            match (it.next(), it.next()) {
                (Some(Ok(a)), Some(Ok(b))) => Ok((a, b)),
                _ => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
            }
        } else {
            peer_start(&p, &rootfs, runs, &w).map_err(|e| e.to_string())
        };
        peers.push((tool, measured));
    }

    // The table.
    let peer_size = |tool: &str| {
        which(tool).and_then(|p| {
            let len = std::fs::metadata(&p).ok()?.len();
            Some(format!("{tool} {}", mib(len)))
        })
    };
    let sizes: Vec<String> = ["crun", "runc", "mosquitto"]
        .iter()
        .filter_map(|t| peer_size(t))
        .collect();
    println!("| figure | skiff | peers, measured in this run | target |");
    println!("|---|---|---|---|");
    if dists.is_empty() {
        println!("| static binary | no `target/*/dist/skiff`: run `sh cross/build.sh aarch64 x86_64` | {} | |", sizes.join(", "));
    }
    for (triple, p) in &dists {
        let len = std::fs::metadata(p)?.len();
        let target = if triple.starts_with("aarch64") {
            "≤ 5 MiB"
        } else {
            "—"
        };
        println!(
            "| binary `{triple}` (dist, static, stripped) | {} ({len} B) | {} | {target} |",
            mib(len),
            sizes.join(", ")
        );
    }
    let total = |r: &[(u64, u64, u64); 2]| r[0].0 + r[1].0;
    println!(
        "| agent RSS idle (agent + launcher) | {} KiB = {} ({} + {} KiB) | mosquitto {} KiB | ≤ 4 MB |",
        total(&f.idle),
        mb_of_kib(total(&f.idle)),
        f.idle[0].0,
        f.idle[1].0,
        f.broker_idle
    );
    println!(
        "| agent RSS, {tasks} running tasks, 5 s after the last started (agent + launcher) | {} KiB = {} ({} + {} KiB) | | |",
        total(&f.busy),
        mb_of_kib(total(&f.busy)),
        f.busy[0].0,
        f.busy[1].0,
    );
    println!(
        "| agent RSS, {tasks} running tasks, after the CPU window (agent + launcher) | {} KiB = {} ({} + {} KiB) | mosquitto {} KiB | ≤ 10 MB |",
        total(&f.steady),
        mb_of_kib(total(&f.steady)),
        f.steady[0].0,
        f.steady[1].0,
        f.broker_busy
    );
    let split = |r: (u64, u64, u64), pss: u64, t: usize| {
        format!("{} anon + {} file, PSS {pss}, {t} threads", r.1, r.2)
    };
    println!(
        "| RSS split idle, KiB: agent / launcher | {} / {} | | |",
        split(f.idle[0], f.idle_pss[0], f.idle_threads[0]),
        split(f.idle[1], f.idle_pss[1], f.idle_threads[1])
    );
    println!(
        "| RSS split, {tasks} tasks, KiB: agent / launcher | {} / {} | | |",
        split(f.busy[0], f.busy_pss[0], f.busy_threads[0]),
        split(f.busy[1], f.busy_pss[1], f.busy_threads[1])
    );
    println!(
        "| RSS split, {tasks} tasks, after the CPU window, KiB: agent / launcher | {} / {} | | |",
        split(f.steady[0], f.steady_pss[0], f.steady_threads[0]),
        split(f.steady[1], f.steady_pss[1], f.steady_threads[1])
    );
    println!(
        "| agent PSS idle / {tasks} tasks (agent + launcher; shared binary pages counted once) | {} KiB / {} KiB | | |",
        f.idle_pss[0] + f.idle_pss[1],
        f.steady_pss[0] + f.steady_pss[1]
    );
    let peer_cell = |which: fn(&(f64, f64)) -> f64, skiff_ms: f64| {
        peers
            .iter()
            .map(|(tool, r)| match r {
                Ok(v) => format!(
                    "{tool} {:.1} ms (skiff ×{:.1})",
                    which(v),
                    skiff_ms / which(v)
                ),
                Err(e) => format!("{tool} failed: {}", e.lines().next().unwrap_or("")),
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    println!(
        "| container start: apply → first output line (skiff) / create → first output (peers), median of {runs} | {:.1} ms | {} | |",
        f.first_output,
        peer_cell(|v| v.1, f.first_output)
    );
    println!(
        "| container start: apply → `ContainerStarted` event (skiff) / create + start returned (peers), median of {runs} | {:.1} ms | {} | |",
        f.started_event,
        peer_cell(|v| v.0, f.started_event)
    );
    println!(
        "| CPU, {tasks} tasks, metrics every 1 s, {cpu_secs} s window (% of one core) | {:.2} % (agent {:.2} + launcher {:.2}; {} metrics messages) | mosquitto {:.2} % | |",
        f.cpu_agent + f.cpu_launcher,
        f.cpu_agent,
        f.cpu_launcher,
        f.metrics_msgs,
        f.cpu_broker
    );
    println!("\nagent measured: {}", skiff.display());
    println!(
        "published RSS of other edge agents, for context: Greengrass nucleus ≥ 96 MB, Greengrass \
         lite < 5 MB, KubeEdge edgecore ~42 MB, balena supervisor 45–200 MB"
    );
    Ok(())
}
