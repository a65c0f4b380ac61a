//! `skiff-service-bench`: the services figures (issue 5), each beside a peer measured in the
//! same run, printed as a Markdown table.
//!
//! ```text
//! cargo build --release -p skiff-agent --bins
//! sudo target/release/skiff-service-bench [--runs 10] [--seconds 60] [--rollouts 3] [--disk-run-dir]
//! ```
//!
//! Starts mosquitto on a free loopback port and the release `skiff agent` next to this program
//! (temp config, data and run dirs, busybox imported, metrics every second; the run dir on a
//! tmpfs as `/run` is on a device, unless `--disk-run-dir`), drives it with
//! `skiff ctl apply` of ECS task-definition files and watches its events over MQTT:
//!
//! 1. **Replacing a killed task**: service `web`, 3 × `sleep 3600`, `stopTimeout` 1. One task's
//!    container process (its pid from `ContainerStarted`) gets SIGKILL from outside; time to the
//!    replacement's `ContainerStarted` and `TaskRunning`, `--runs` times, median and p90. A
//!    service task restarts in place after the restart backoff; every kill waits until its task
//!    has run for the core's `STABLE_MS`, so each gets the first delay (`BACKOFF_BASE_MS`). The
//!    figures are shown as they are and minus the `delay_ms` the agent announced in its
//!    `TaskRestarting` event. Peers: `crun run -d` / `runc run -d` (create + start) of the same
//!    command on the same rootfs.
//! 2. **Rollout of 3 tasks, 1 s health interval**: new revisions of `web` (another command,
//!    `healthCheck` `CMD-SHELL true`, interval 1, retries 1), min 100 % / max 200 % and then
//!    50 % / 100 %, `--rollouts` times each: from `skiff ctl apply` publishing the document to
//!    `DeploymentCompleted`, median. Beside it the floor the rollout's own waits set (first
//!    health check one interval after the start, the old `sleep`, PID 1 ignoring SIGTERM, killed
//!    at its `stopTimeout`, per round) plus the peer's measured start and exec times.
//! 3. **CPU of health checks and scaling per 10 services**: 10 services × 1 task with a
//!    `CMD-SHELL` check every second and target tracking on CPU, against the same 10 services
//!    without either, `--seconds` each: utime + stime of the agent and its `__launcher` child
//!    per second; the difference is the cost. The check (`echo -n . >> /tmp/hc`) leaves one
//!    byte per run in the container, so the checks in the window are counted, not estimated.
//!    Peer: as many `crun exec` / `runc exec` of the same `sh -c` into one running container,
//!    paced over the same time, their CPU from `getrusage(RUSAGE_CHILDREN)`.
//!
//! Needs root, mosquitto, busybox-static; crun and runc are measured when installed (crun
//! inside `unshare -m` without a hybrid layout's empty cgroup2 mount, which crun refuses).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use skiff_agent::config::BrokerUrl;
use skiff_agent::core::{BACKOFF_BASE_MS, STABLE_MS};
use skiff_agent::mqtt::{self, Inbound};
use skiff_proto::codec::{decode, Message};
use skiff_proto::topic::Topic;
use skiff_proto::{EventBody, Health, Name, NodeState};

#[path = "common/mod.rs"]
mod common;

use common::{
    children_cpu, cpu_ticks, hybrid_cgroups, launcher_of, leave_hybrid_cgroup2, median, name,
    peer_bundle, percentile, start_broker, ticks_per_sec, which, Kill, Res, Work,
};

/// First argument that makes this program measure a peer: `--peer TOOL ROOTFS WORK RUNS
/// EXECS SECONDS` (run through `unshare -m` for crun on a hybrid layout).
const PEER: &str = "--peer";
/// The health check of part 3: one byte in the container per run, so runs can be counted.
const COUNTED_CHECK: &str = "echo -n . >> /tmp/hc";
/// Services of part 3.
const SERVICES: usize = 10;

fn arg<T: std::str::FromStr>(flag: &str, default: T) -> Res<T>
where
    T::Err: std::error::Error + 'static,
{
    match std::env::args().skip_while(|a| a != flag).nth(1) {
        Some(s) => Ok(s.parse()?),
        None => Ok(default),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The events the bench subscriber sees, with their arrival time, and what they say about the
/// tasks: which run and each one's container pid.
struct Observer {
    conn: mqtt::Connection,
    events: String,
    status: String,
    online: bool,
    running: BTreeSet<Name>,
    pids: BTreeMap<Name, u32>,
}

impl Observer {
    /// The next event before `deadline` and when it arrived; `None` at the deadline.
    async fn next(&mut self, deadline: Instant) -> Res<Option<(Instant, EventBody)>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match tokio::time::timeout(left, self.conn.inbound.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err("broker connection gone".into()),
                Ok(Some(m)) => m,
            };
            let at = Instant::now();
            let Inbound::Publish { topic, payload, .. } = msg else {
                continue;
            };
            if topic == self.status {
                if let Ok(Message::Status(s)) = decode(&payload) {
                    self.online = s.state == NodeState::Online;
                }
                continue;
            }
            if topic != self.events {
                continue;
            }
            let Ok(Message::Event(e)) = decode(&payload) else {
                continue;
            };
            match &e.body {
                EventBody::ContainerStarted { task, pid, .. } => {
                    self.pids.insert(task.clone(), *pid);
                }
                EventBody::TaskRunning { task } => {
                    self.running.insert(task.clone());
                }
                EventBody::TaskStopped { task, .. } => {
                    self.running.remove(task);
                    self.pids.remove(task);
                }
                EventBody::TaskFailed { task, reason } => {
                    return Err(format!("task {task} failed: {reason}").into());
                }
                EventBody::DesiredRejected { reason, .. } => {
                    return Err(format!("desired state rejected: {reason}").into());
                }
                _ => {}
            }
            return Ok(Some((at, e.body)));
        }
    }

    /// Keeps receiving until `deadline`; returns what came.
    async fn pump_until(&mut self, deadline: Instant) -> Res<Vec<(Instant, EventBody)>> {
        let mut seen = Vec::new();
        while let Some(e) = self.next(deadline).await? {
            seen.push(e);
        }
        Ok(seen)
    }

    /// Receives until `done` holds (checked after each event), at most `limit`.
    async fn until(
        &mut self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&Observer, Instant, &EventBody) -> bool,
    ) -> Res<()> {
        let deadline = Instant::now() + limit;
        loop {
            match self.next(deadline).await? {
                Some((at, body)) if done(self, at, &body) => return Ok(()),
                Some(_) => {}
                None => return Err(format!("timed out waiting for {what}").into()),
            }
        }
    }

    fn running_of(&self, service: &str) -> Vec<Name> {
        let prefix = format!("{service}.");
        self.running
            .iter()
            .filter(|t| t.as_str().starts_with(&prefix))
            .cloned()
            .collect()
    }
}

/// `skiff ctl` against the bench's broker, cluster and node.
struct Ctl {
    skiff: PathBuf,
    broker: String,
}

impl Ctl {
    /// Runs `skiff ctl ARGS --node bench` on a thread (the subscriber keeps receiving meanwhile);
    /// the handle yields when ctl printed that it published the document.
    fn spawn(&self, args: Vec<String>) -> std::thread::JoinHandle<Result<Instant, String>> {
        let skiff = self.skiff.clone();
        let broker = self.broker.clone();
        std::thread::spawn(move || {
            let mut child = Command::new(&skiff)
                .args(["ctl", "--broker", &broker, "--cluster", "bench"])
                .args(&args)
                .args(["--node", "bench"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            let mut published = None;
            if let Some(out) = child.stdout.take() {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if line.starts_with("published desired state") {
                        published = Some(Instant::now());
                    }
                }
            }
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "skiff ctl {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            published.ok_or_else(|| format!("skiff ctl {} published nothing", args.join(" ")))
        })
    }

    fn apply(&self, files: &[PathBuf]) -> std::thread::JoinHandle<Result<Instant, String>> {
        let mut args = vec!["apply".to_string()];
        args.extend(files.iter().map(|f| f.display().to_string()));
        self.spawn(args)
    }

    fn stop(&self, family: &str) -> std::thread::JoinHandle<Result<Instant, String>> {
        self.spawn(vec!["stop".into(), family.into()])
    }
}

fn joined(h: std::thread::JoinHandle<Result<Instant, String>>) -> Res<Instant> {
    Ok(h.join().map_err(|_| "ctl thread panicked")??)
}

/// One busybox service as an ECS task-definition file.
struct ServiceDef<'a> {
    family: &'a str,
    revision: u32,
    command: Vec<String>,
    desired: u32,
    /// `CMD-SHELL` command, run every second, unhealthy after one failure.
    check: Option<&'a str>,
    /// minimumHealthyPercent, maximumPercent.
    bounds: Option<(u32, u32)>,
    /// Target tracking on CPU (50 %), 1..=2 tasks.
    scaling: bool,
}

impl ServiceDef<'_> {
    fn write(&self, dir: &Path) -> Res<PathBuf> {
        let mut container = json!({
            "name": "main",
            "image": "busybox",
            "command": self.command,
            "essential": true,
            "stopTimeout": 1,
        });
        if let Some(cmd) = self.check {
            container["healthCheck"] = json!({
                "command": ["CMD-SHELL", cmd], "interval": 1, "timeout": 1, "retries": 1
            });
        }
        let mut service = json!({ "desiredCount": self.desired });
        if let Some((min, max)) = self.bounds {
            service["deploymentConfiguration"] =
                json!({ "minimumHealthyPercent": min, "maximumPercent": max });
        }
        if self.scaling {
            service["autoScaling"] = json!({
                "minCapacity": 1,
                "maxCapacity": 2,
                "targetTracking": [{
                    "metric": "ECSServiceAverageCPUUtilization",
                    "targetValue": 50,
                    "scaleOutCooldown": 60,
                    "scaleInCooldown": 60
                }]
            });
        }
        let def = json!({
            "family": self.family,
            "revision": self.revision,
            "networkMode": "none",
            "containerDefinitions": [container],
            "service": service,
        });
        let path = dir.join(format!("{}-{}.json", self.family, self.revision));
        std::fs::write(&path, serde_json::to_vec_pretty(&def)?)?;
        Ok(path)
    }
}

/// Part 1, per kill: ms from the kill to each event.
#[derive(Debug, Default, Clone, Copy)]
struct Replace {
    restarting: f64,
    delay_ms: u64,
    started: f64,
    running: f64,
}

/// Part 2, per rollout: ms from the publish to each event.
#[derive(Debug, Default, Clone, Copy)]
struct Rollout {
    started: f64,
    healthy: f64,
    completed: f64,
}

/// Part 3, one window.
#[derive(Debug, Default, Clone, Copy)]
struct Cpu {
    secs: f64,
    /// Ticks: agent, launcher, launcher's reaped children.
    agent: u64,
    launcher: u64,
    reaped: u64,
    checks: u64,
    scaled: usize,
    health_changes: usize,
}

impl Cpu {
    /// CPU ms per wall second of `ticks`.
    fn rate(&self, ticks: u64) -> f64 {
        ticks as f64 / ticks_per_sec() * 1000.0 / self.secs
    }
    fn own(&self) -> f64 {
        self.rate(self.agent + self.launcher)
    }
}

#[derive(Debug, Default)]
struct Figures {
    replace: Vec<Replace>,
    rollouts: Vec<((u32, u32), Vec<Rollout>)>,
    base: Cpu,
    checked: Cpu,
}

struct Setup {
    port: u16,
    agent: u32,
    launcher: u32,
    ctl: Ctl,
    files: PathBuf,
    runs: usize,
    seconds: u64,
    rollouts: usize,
}

async fn measure_agent(s: &Setup) -> Res<Figures> {
    let (cluster, node) = (name("bench")?, name("bench")?);
    let events = Topic::Events {
        cluster: cluster.clone(),
        node: node.clone(),
    }
    .to_topic();
    let status = Topic::Status { cluster, node }.to_topic();
    let conn = mqtt::connect(mqtt::ConnectOptions {
        client_id: "skiff-service-bench".into(),
        broker: BrokerUrl {
            host: "127.0.0.1".into(),
            port: s.port,
        },
        keepalive: Duration::from_secs(30),
        last_will: None,
        subscriptions: vec![events.clone(), status.clone()],
    });
    let mut obs = Observer {
        conn,
        events,
        status,
        online: false,
        running: BTreeSet::new(),
        pids: BTreeMap::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !obs.online {
        if Instant::now() > deadline {
            return Err("the agent never said it is online".into());
        }
        obs.next(Instant::now() + Duration::from_millis(100))
            .await?;
    }
    let mut f = Figures::default();

    // 1. Replacing a killed task.
    let mut web = ServiceDef {
        family: "web",
        revision: 1,
        command: vec!["sleep".into(), "3600".into()],
        desired: 3,
        check: None,
        bounds: None,
        scaling: false,
    };
    joined(s.ctl.apply(&[web.write(&s.files)?]))?;
    let mut since: BTreeMap<Name, Instant> = BTreeMap::new();
    obs.until(Duration::from_secs(60), "web revision 1", |o, at, body| {
        if let EventBody::TaskRunning { task } = body {
            since.insert(task.clone(), at);
        }
        matches!(body, EventBody::DeploymentCompleted { revision: 1, .. })
            && o.running_of("web").len() == 3
    })
    .await?;
    eprintln!(
        "service-bench: web running; killing one task {} times (each after {} s of running)",
        s.runs,
        STABLE_MS / 1000 + 2
    );
    for run in 0..s.runs {
        // The task that has run longest; wait until it has run long enough for the first delay.
        let (task, at) = since
            .iter()
            .filter(|(t, _)| obs.running.contains(*t))
            .min_by_key(|(_, at)| **at)
            .map(|(t, at)| (t.clone(), *at))
            .ok_or("no web task running")?;
        obs.pump_until(at + Duration::from_millis(STABLE_MS + 2000))
            .await?;
        let pid = *obs.pids.get(&task).ok_or("no pid for the task")?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmdline.starts_with(b"sleep\0") {
            return Err(format!("pid {pid} of {task} is not the container's sleep").into());
        }
        let t0 = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid)?),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let mut r = Replace::default();
        let mut started = false;
        obs.until(Duration::from_secs(60), "the replacement", |_, at, body| {
            match body {
                EventBody::TaskRestarting {
                    task: t, delay_ms, ..
                } if *t == task => {
                    r.restarting = ms(at - t0);
                    r.delay_ms = *delay_ms;
                }
                EventBody::ContainerStarted { task: t, .. } if *t == task => {
                    r.started = ms(at - t0);
                    started = true;
                }
                EventBody::TaskRunning { task: t } if *t == task && started => {
                    r.running = ms(at - t0);
                    since.insert(task.clone(), at);
                    return true;
                }
                _ => {}
            }
            false
        })
        .await?;
        eprintln!("service-bench: kill {}: {task} {r:?}", run + 1);
        f.replace.push(r);
    }

    // 2. Rollouts.
    for bounds in [(100, 200), (50, 100)] {
        let mut times = Vec::new();
        for _ in 0..s.rollouts {
            web.revision += 1;
            web.command = vec!["sleep".into(), (3600 + web.revision).to_string()];
            web.check = Some("true");
            web.bounds = Some(bounds);
            let revision = web.revision;
            // The new revision's tasks (a slot freed by an old task is used again).
            let mut new_tasks: BTreeSet<Name> = BTreeSet::new();
            let ctl = s.ctl.apply(&[web.write(&s.files)?]);
            let (mut started, mut done) = (None, None);
            let mut healthy: Vec<Instant> = Vec::new();
            obs.until(Duration::from_secs(120), "the rollout", |_, at, body| {
                match body {
                    EventBody::DeploymentStarted { revision: r, .. } if *r == revision => {
                        started = Some(at)
                    }
                    EventBody::TaskStarting {
                        task, revision: r, ..
                    } if *r == revision => {
                        new_tasks.insert(task.clone());
                    }
                    EventBody::HealthChanged {
                        task,
                        health: Health::Healthy,
                        ..
                    } if new_tasks.contains(task) => healthy.push(at),
                    EventBody::DeploymentCompleted { revision: r, .. } if *r == revision => {
                        done = Some(at);
                        return true;
                    }
                    EventBody::DeploymentFailed { revision: r, .. } if *r == revision => {
                        done = None;
                        return true;
                    }
                    _ => {}
                }
                false
            })
            .await?;
            let t0 = joined(ctl)?;
            let done = done.ok_or(format!("rollout to revision {revision} failed"))?;
            let since_t0 =
                |t: Option<Instant>| t.map_or(f64::NAN, |t| ms(t.saturating_duration_since(t0)));
            let r = Rollout {
                started: since_t0(started),
                healthy: since_t0(healthy.get(2).copied()),
                completed: since_t0(Some(done)),
            };
            eprintln!(
                "service-bench: rollout to {revision} ({}/{}): {r:?}",
                bounds.0, bounds.1
            );
            times.push(r);
            obs.pump_until(Instant::now() + Duration::from_secs(1))
                .await?;
        }
        f.rollouts.push((bounds, times));
    }
    joined(s.ctl.stop("web"))?;
    obs.until(Duration::from_secs(60), "web to stop", |o, _, _| {
        o.running_of("web").is_empty()
    })
    .await?;

    // 3. CPU of health checks and scaling, 10 services.
    let svc_names: Vec<String> = (0..SERVICES).map(|i| format!("svc{i}")).collect();
    let mut defs: Vec<ServiceDef> = svc_names
        .iter()
        .map(|family| ServiceDef {
            family,
            revision: 1,
            command: vec!["sleep".into(), "3600".into()],
            desired: 1,
            check: None,
            bounds: None,
            scaling: false,
        })
        .collect();
    let files = defs
        .iter()
        .map(|d| d.write(&s.files))
        .collect::<Res<Vec<_>>>()?;
    joined(s.ctl.apply(&files))?;
    let mut completed = BTreeSet::new();
    obs.until(Duration::from_secs(60), "10 services", |_, _, body| {
        if let EventBody::DeploymentCompleted { service, .. } = body {
            completed.insert(service.clone());
        }
        completed.len() == SERVICES
    })
    .await?;
    obs.pump_until(Instant::now() + Duration::from_secs(5))
        .await?;
    f.base = cpu_window(&mut obs, s, false).await?;
    eprintln!("service-bench: without checks {:?}", f.base);

    for d in defs.iter_mut() {
        d.revision = 2;
        d.check = Some(COUNTED_CHECK);
        d.scaling = true;
    }
    let files = defs
        .iter()
        .map(|d| d.write(&s.files))
        .collect::<Res<Vec<_>>>()?;
    joined(s.ctl.apply(&files))?;
    let mut completed = BTreeSet::new();
    obs.until(
        Duration::from_secs(120),
        "10 services with checks",
        |_, _, body| {
            if let EventBody::DeploymentCompleted {
                service,
                revision: 2,
                ..
            } = body
            {
                completed.insert(service.clone());
            }
            completed.len() == SERVICES
        },
    )
    .await?;
    obs.pump_until(Instant::now() + Duration::from_secs(5))
        .await?;
    f.checked = cpu_window(&mut obs, s, true).await?;
    eprintln!("service-bench: with checks {:?}", f.checked);
    for family in &svc_names {
        joined(s.ctl.stop(family))?;
    }
    obs.until(
        Duration::from_secs(60),
        "the services to stop",
        |o, _, _| o.running.is_empty(),
    )
    .await?;
    Ok(f)
}

/// Runs of the counted check so far: bytes in each running container's `/tmp/hc`.
fn checks_so_far(obs: &Observer) -> u64 {
    obs.pids
        .values()
        .filter_map(|pid| std::fs::metadata(format!("/proc/{pid}/root/tmp/hc")).ok())
        .map(|m| m.len())
        .sum()
}

/// Agent and launcher CPU over `--seconds`, receiving events meanwhile.
async fn cpu_window(obs: &mut Observer, s: &Setup, counted: bool) -> Res<Cpu> {
    let c0 = checks_so_far(obs);
    let (a0, (l0, r0)) = (cpu_ticks(s.agent).0, cpu_ticks(s.launcher));
    let t0 = Instant::now();
    let seen = obs.pump_until(t0 + Duration::from_secs(s.seconds)).await?;
    let (a1, (l1, r1)) = (cpu_ticks(s.agent).0, cpu_ticks(s.launcher));
    let secs = t0.elapsed().as_secs_f64();
    let c1 = checks_so_far(obs);
    Ok(Cpu {
        secs,
        agent: a1 - a0,
        launcher: l1 - l0,
        reaped: r1 - r0,
        checks: if counted { c1.saturating_sub(c0) } else { 0 },
        scaled: seen
            .iter()
            .filter(|(_, b)| matches!(b, EventBody::ServiceScaled { .. }))
            .count(),
        health_changes: seen
            .iter()
            .filter(|(_, b)| matches!(b, EventBody::HealthChanged { .. }))
            .count(),
    })
}

/// A tmpfs mounted for the run; lazily unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Res<Tmpfs> {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "skiff-service-bench"])
            .arg(dir)
            .status()?;
        if !st.success() {
            return Err(format!("cannot mount a tmpfs on {}", dir.display()).into());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A peer's figures: `run -d` ms (median, p90), `exec` ms median, exec CPU ms in total, and the
/// wall seconds the execs took.
#[derive(Debug, Clone, Copy)]
struct Peer {
    start_median: f64,
    start_p90: f64,
    exec_median: f64,
    exec_cpu_ms: f64,
    exec_secs: f64,
    execs: u64,
}

fn run_quiet(cmd: &mut Command, err: &Path) -> Res<()> {
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(err)?)
        .status()?;
    if !status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            std::fs::read_to_string(err).unwrap_or_default().trim()
        )
        .into());
    }
    Ok(())
}

/// `--peer TOOL ROOTFS WORK RUNS EXECS SECONDS`: `TOOL run -d` of `sleep 3600` RUNS times (each
/// deleted after), then EXECS `TOOL exec` of the counted check into one running container,
/// evenly over SECONDS; prints the [`Peer`] figures as numbers on one line.
fn peer_main(args: &[String]) -> Res<()> {
    let [tool, rootfs, work, runs, execs, seconds] = args else {
        return Err(format!("usage: {PEER} TOOL ROOTFS WORK RUNS EXECS SECONDS").into());
    };
    let (tool, rootfs, work) = (Path::new(tool), Path::new(rootfs), Path::new(work));
    let (runs, execs, seconds): (usize, u64, f64) =
        (runs.parse()?, execs.parse()?, seconds.parse()?);
    let short = tool.file_name().and_then(|s| s.to_str()).unwrap_or("rt");
    if short == "crun" && hybrid_cgroups() {
        leave_hybrid_cgroup2();
    }
    let err = work.join(format!("peer-{short}.err"));
    let run_bundle = work.join(format!("peer-{short}-run"));
    peer_bundle(
        tool,
        rootfs,
        &run_bundle,
        &["sleep", "3600"],
        "/skiff-service-bench-peer-run",
        false,
    )?;
    let mut starts = Vec::new();
    for i in 0..runs {
        let id = format!("ssb-{short}-run-{i}");
        let t = Instant::now();
        run_quiet(
            Command::new(tool)
                .args(["run", "-d", "--bundle"])
                .arg(&run_bundle)
                .arg(&id),
            &err,
        )?;
        starts.push(ms(t.elapsed()));
        run_quiet(Command::new(tool).args(["delete", "-f", &id]), &err)?;
    }
    let exec_bundle = work.join(format!("peer-{short}-exec"));
    peer_bundle(
        tool,
        rootfs,
        &exec_bundle,
        &["sleep", "3600"],
        "/skiff-service-bench-peer-exec",
        true,
    )?;
    let id = format!("ssb-{short}-exec");
    run_quiet(
        Command::new(tool)
            .args(["run", "-d", "--bundle"])
            .arg(&exec_bundle)
            .arg(&id),
        &err,
    )?;
    let measured = (|| -> Res<(Vec<f64>, Duration, f64)> {
        let mut times = Vec::new();
        let cpu0 = children_cpu()?;
        let t0 = Instant::now();
        for k in 0..execs {
            let at = t0 + Duration::from_secs_f64(seconds * k as f64 / execs.max(1) as f64);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let t = Instant::now();
            run_quiet(
                Command::new(tool).args(["exec", &id, "sh", "-c", COUNTED_CHECK]),
                &err,
            )?;
            times.push(ms(t.elapsed()));
        }
        let secs = t0.elapsed().as_secs_f64();
        Ok((times, children_cpu()? - cpu0, secs))
    })();
    let _ = run_quiet(Command::new(tool).args(["delete", "-f", &id]), &err);
    let (times, cpu, secs) = measured?;
    println!(
        "{} {} {} {} {secs} {execs}",
        median(starts.clone()),
        percentile(starts, 90.0),
        median(times),
        ms(cpu)
    );
    Ok(())
}

/// Measures `tool` as a peer in a child process (so its rusage holds only the peer's children).
fn peer(
    exe: &Path,
    tool: &Path,
    rootfs: &Path,
    work: &Path,
    runs: usize,
    execs: u64,
    secs: u64,
) -> Result<Peer, String> {
    let mut cmd = if tool.ends_with("crun") && hybrid_cgroups() {
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    let out = cmd
        .arg(PEER)
        .arg(tool)
        .arg(rootfs)
        .arg(work)
        .arg(runs.to_string())
        .arg(execs.to_string())
        .arg(secs.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let v: Vec<f64> = words
        .by_ref()
        .take(5)
        .filter_map(|s| s.parse().ok())
        .collect();
    match (&v[..], words.next().map(str::parse::<u64>)) {
        (&[start_median, start_p90, exec_median, exec_cpu_ms, exec_secs], Some(Ok(execs))) => {
            Ok(Peer {
                start_median,
                start_p90,
                exec_median,
                exec_cpu_ms,
                exec_secs,
                execs,
            })
        }
        _ => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(PEER) {
        return peer_main(&args[2..]);
    }
    let runs: usize = arg("--runs", 10)?;
    let seconds: u64 = arg("--seconds", 60)?;
    let rollouts: usize = arg("--rollouts", 3)?;
    let exe = std::env::current_exe()?;
    let skiff = exe.parent().ok_or("no exe dir")?.join("skiff");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = Work::new("skiff-service-bench")?;
    let w = work.0.clone();
    // The run dir (bundles, overlay upper dirs, logs) on a tmpfs, as `/run` is on a device;
    // unmounted before the work dir goes.
    let run_dir = w.join("run");
    std::fs::create_dir_all(&run_dir)?;
    let _run_tmpfs = if std::env::args().any(|a| a == "--disk-run-dir") {
        None
    } else {
        Some(Tmpfs::mount(&run_dir)?)
    };
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _broker = start_broker(port, &w)?;
    let layout = w.join("busybox-oci");
    if !Command::new("sh")
        .arg(repo.join("tests/fixtures/make-busybox-oci.sh"))
        .arg(&layout)
        .stdout(Stdio::null())
        .status()?
        .success()
    {
        return Err("building the busybox image failed".into());
    }
    let data = w.join("data");
    let cfg = w.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "node_id = \"bench\"\ncluster = \"bench\"\nbroker = \"mqtt://127.0.0.1:{port}\"\n\
             data_dir = \"{}\"\nrun_dir = \"{}\"\ncgroup_parent = \"skiff-service-bench\"\n\
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
    let files = w.join("tasks");
    std::fs::create_dir_all(&files)?;
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
        ctl: Ctl {
            skiff: skiff.clone(),
            broker: format!("mqtt://127.0.0.1:{port}"),
        },
        files,
        runs,
        seconds,
        rollouts,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let measured = rt.block_on(measure_agent(&setup));
    agent.terminate(); // stops what still runs
    let f = measured?;

    // Peers, on the rootfs the agent's containers had.
    let rootfs = std::fs::read_dir(data.join("images/rootfs"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .next()
        .ok_or("no rootfs")?;
    let execs = if f.checked.checks > 0 {
        f.checked.checks
    } else {
        SERVICES as u64 * seconds
    };
    let mut peers: Vec<(&str, Result<Peer, String>)> = Vec::new();
    for tool in ["crun", "runc"] {
        let Some(p) = which(tool) else { continue };
        eprintln!("service-bench: peer {tool}: {runs} starts, {execs} execs over {seconds} s");
        peers.push((tool, peer(&exe, &p, &rootfs, &w, runs, execs, seconds)));
    }
    print_table(&f, &peers, runs, seconds, rollouts);
    Ok(())
}

/// One peer cell per installed peer ("crun 8.1 ms; runc 25.0 ms") and the ratios skiff / peer.
fn peer_cells(
    peers: &[(&str, Result<Peer, String>)],
    show: &dyn Fn(&Peer) -> String,
    value: &dyn Fn(&Peer) -> f64,
    skiff: Option<f64>,
) -> (String, String) {
    let (mut cells, mut ratios) = (Vec::new(), Vec::new());
    for (tool, r) in peers {
        match r {
            Ok(p) => {
                cells.push(format!("{tool} {}", show(p)));
                if let Some(s) = skiff {
                    ratios.push(format!("{:.2}× {tool}", s / value(p)));
                }
            }
            Err(e) => cells.push(format!("{tool} failed: {}", e.lines().next().unwrap_or(""))),
        }
    }
    (cells.join("; "), ratios.join("; "))
}

fn print_table(
    f: &Figures,
    peers: &[(&str, Result<Peer, String>)],
    runs: usize,
    seconds: u64,
    rollouts: usize,
) {
    println!("| figure | skiff | peer, measured in this run | skiff / peer |");
    println!("|---|---|---|---|");

    // 1. Replacing a killed task.
    let delays: BTreeSet<u64> = f.replace.iter().map(|r| r.delay_ms).collect();
    let delays: Vec<String> = delays.iter().map(u64::to_string).collect();
    type Pick = fn(&Replace) -> f64;
    let rows: [(&str, Pick, bool); 5] = [
        (
            "kill → `TaskRestarting` (exit seen, restart decided)",
            |r| r.restarting,
            false,
        ),
        (
            "kill → replacement's `ContainerStarted`",
            |r| r.started,
            true,
        ),
        (
            "kill → replacement's `ContainerStarted` minus the announced backoff",
            |r| r.started - r.delay_ms as f64,
            true,
        ),
        ("kill → replacement's `TaskRunning`", |r| r.running, false),
        (
            "kill → replacement's `TaskRunning` minus the announced backoff",
            |r| r.running - r.delay_ms as f64,
            true,
        ),
    ];
    for (what, pick, with_peer) in rows {
        let v: Vec<f64> = f.replace.iter().map(pick).collect();
        let (m, p90) = (median(v.clone()), percentile(v, 90.0));
        let (peer, ratio) = if with_peer {
            let (cells, ratios) = peer_cells(
                peers,
                &|p| format!("{:.1} / {:.1} ms", p.start_median, p.start_p90),
                &|p| p.start_median,
                Some(m),
            );
            (
                format!("`run -d` (create + start), median / p90: {cells}"),
                ratios,
            )
        } else {
            (String::new(), String::new())
        };
        println!("| {what}, median / p90 of {runs} | {m:.0} / {p90:.0} ms | {peer} | {ratio} |");
    }
    println!(
        "| restart backoff the agent announced (`TaskRestarting.delay_ms`; core `BACKOFF_BASE_MS` = {BACKOFF_BASE_MS}) | {} ms | | |",
        delays.join(", ")
    );

    // 2. Rollouts.
    for ((min, max), times) in &f.rollouts {
        // Rounds of (stop an old task: SIGTERM ignored, SIGKILL at stopTimeout 1 s; start a new
        // one; its first check one interval, 1 s, after the start): one when all new tasks fit
        // beside the old ones, one per task when only one place is free.
        let rounds = if *max >= 200 { 1.0 } else { 3.0 };
        let completed: Vec<f64> = times.iter().map(|r| r.completed).collect();
        let lo = completed.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = completed.iter().copied().fold(0.0, f64::max);
        let m = median(completed);
        let floor = |p: &Peer| rounds * (2000.0 + p.start_median + p.exec_median);
        let (cells, ratios) =
            peer_cells(peers, &|p| format!("{:.0} ms", floor(p)), &floor, Some(m));
        println!(
            "| rollout of 3 tasks, health interval 1 s, min {min} % / max {max} %: apply → `DeploymentCompleted`, median of {rollouts} (range) | {m:.0} ms ({lo:.0}–{hi:.0}) | floor of its waits, {rounds:.0} × (1 s interval + 1 s stopTimeout + `run -d` + `exec`): {cells} | {ratios} |"
        );
        println!(
            "| … apply → `DeploymentStarted` / → third new task healthy, medians | {:.0} ms / {:.0} ms | | |",
            median(times.iter().map(|r| r.started).collect()),
            median(times.iter().map(|r| r.healthy).collect()),
        );
    }

    // 3. CPU.
    let (b, c) = (&f.base, &f.checked);
    println!(
        "| CPU, {SERVICES} services without checks or scaling, metrics every 1 s, {seconds} s | {:.2} ms/s (agent {:.2} + launcher {:.2}) | | |",
        b.own(),
        b.rate(b.agent),
        b.rate(b.launcher)
    );
    println!(
        "| CPU, the same with a `CMD-SHELL` check every 1 s + target tracking on CPU, {seconds} s | {:.2} ms/s (agent {:.2} + launcher {:.2}); {} checks = {:.2}/s, {} scaling events, {} health changes | | |",
        c.own(),
        c.rate(c.agent),
        c.rate(c.launcher),
        c.checks,
        c.checks as f64 / c.secs,
        c.scaled,
        c.health_changes
    );
    let per_sec = c.checks as f64 / c.secs;
    let cost = c.own() - b.own();
    let with_reaped = cost + c.rate(c.reaped) - b.rate(b.reaped);
    println!(
        "| cost of checks + scaling per {SERVICES} services (agent + launcher, difference) | {cost:.2} ms/s = {:.2} % of one core; {:.3} ms per check | | |",
        cost / 10.0,
        cost / per_sec
    );
    let (cells, ratios) = peer_cells(
        peers,
        &|p| {
            format!(
                "{:.2} ms/s, {:.3} ms per exec",
                p.exec_cpu_ms / p.exec_secs,
                p.exec_cpu_ms / p.execs.max(1) as f64
            )
        },
        &|p| p.exec_cpu_ms / p.exec_secs,
        Some(with_reaped),
    );
    println!(
        "| … plus the check processes the launcher reaped (their cutime + cstime) | {with_reaped:.2} ms/s = {:.2} % of one core; {:.3} ms per check | {} `exec sh -c '{COUNTED_CHECK}'` paced over {seconds} s, CPU of the runtime and `sh`: {cells} | {ratios} |",
        with_reaped / 10.0,
        with_reaped / per_sec,
        c.checks
    );
    let (cells, _) = peer_cells(
        peers,
        &|p| format!("{:.1} ms", p.exec_median),
        &|p| p.exec_median,
        None,
    );
    println!("| `exec` wall time, median | | {cells} | |");
}
