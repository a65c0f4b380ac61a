//! `skiff sim`: many simulated agents in one process, for scale tests of a broker and of the
//! consoles that read a fleet.
//!
//! Each simulated node is the real agent minus its containers: the real sans-IO [`Core`] fed by
//! the real broker shell ([`mqtt::connect`] with the agent's own client id, last will and
//! subscriptions, [`crate::agent::connect_options`]) and publishing through the agent's own
//! [`Output`] (the same outbox, encoding, topics, QoS, retain flags and JSON mirrors). Only the
//! container runtime is fake: starting, signalling and removing tasks are answered at once in
//! memory ([`FakeRuntime`]), nothing is written to disk, and metrics are plausible made-up
//! figures. A node therefore connects, reports status, applies desired state (cluster and node
//! documents, including rejections: the core decides), answers drain / activate / ping, publishes
//! events and metrics at the configured interval, and goes offline (clean DISCONNECT, or its
//! last will when the process dies) exactly as an agent does.
//!
//! Cheap per node (one tokio task for the node, one for its connection, all on the caller's
//! runtime), so ten thousand fit in one process; connections are spread over time (`ramp` per
//! second) so the broker does not take every CONNECT at once.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_proto::codec::{decode_as, Kind, Message};
use skiff_proto::topic::Topic;
use skiff_proto::{
    Command, CommandBody, DesiredState, EventBody, ExitInfo, MetricsSample, Name, Reply, ReplyBody,
    Scope, TaskDefinition, TaskSample,
};
use tokio::sync::watch;

use crate::agent::{Output, VERSION};
use crate::clock::Clock;
use crate::config::{BrokerUrl, MirrorJson};
use crate::core::{Action, Catalog, Core, CoreConfig, Event, Signal};
use crate::mqtt::{self, Inbound};
use crate::outbox::Outbox;

/// Most nodes one process simulates.
pub const MAX_NODES: u32 = 100_000;
/// Events and metrics one simulated node keeps while the broker is unreachable (RAM only).
const OUTBOX_BYTES: usize = 64 * 1024;
/// How long a stopping node waits for its DISCONNECT to go out.
const DISCONNECT_WAIT: Duration = Duration::from_secs(5);
/// File descriptors kept for everything but the nodes' connections.
const SPARE_FDS: u64 = 256;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: u32,
    pub broker: BrokerUrl,
    pub cluster: Name,
    /// Node ids are `{prefix}{index:05}`, index from 1.
    pub prefix: String,
    pub metrics_interval: Duration,
    /// Tasks each node runs from the start (as restored from its saved state): `sim-task-K`.
    pub tasks_per_node: u32,
    /// Connections started per second.
    pub ramp: u32,
    pub keepalive: Duration,
    pub mirror: MirrorJson,
    /// Labels every node reports (`arch` defaults to `arm64`: the boards simulated).
    pub labels: BTreeMap<String, String>,
    /// With N > 0, node `i` also gets the label `site=site-{(i-1) % N + 1}`.
    pub sites: u32,
}

/// Why the simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{flag}: {problem}")]
    Invalid { flag: &'static str, problem: String },
    #[error(
        "{nodes} nodes need {need} open files, the limit is {have} and cannot be raised \
         ({reason}): raise `ulimit -n` or run as root"
    )]
    FileLimit {
        nodes: u32,
        need: u64,
        have: u64,
        reason: String,
    },
}

impl SimConfig {
    /// Checks the settings; the error names the flag.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |flag, problem: String| Err(SimError::Invalid { flag, problem });
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return bad(
                "--nodes",
                format!("{} is not in 1..={MAX_NODES}", self.nodes),
            );
        }
        if self.ramp == 0 {
            return bad("--ramp", "must be at least 1 connection per second".into());
        }
        let secs = self.metrics_interval.as_secs();
        if !(1..=3600).contains(&secs) {
            return bad("--metrics-interval", format!("{secs} is not in 1..=3600"));
        }
        if self.tasks_per_node > u32::try_from(skiff_proto::limits::MAX_TASKS).unwrap_or(64) {
            return bad(
                "--tasks-per-node",
                format!(
                    "{} is more than a desired state holds ({})",
                    self.tasks_per_node,
                    skiff_proto::limits::MAX_TASKS
                ),
            );
        }
        if self.keepalive < Duration::from_secs(5) {
            return bad("--keepalive", "must be at least 5 seconds".into());
        }
        let mut labels = self.labels.clone();
        if self.sites > 0 {
            labels.insert("site".into(), format!("site-{}", self.sites));
        }
        crate::labels::node_labels(&labels).map_err(|problem| SimError::Invalid {
            flag: "--label",
            problem,
        })?;
        // The longest node id must be a valid name.
        node_name(&self.prefix, self.nodes).map_err(|e| SimError::Invalid {
            flag: "--prefix",
            problem: e,
        })?;
        Ok(())
    }
}

/// The id of simulated node `index`.
pub fn node_name(prefix: &str, index: u32) -> Result<Name, String> {
    let s = format!("{prefix}{index:05}");
    s.parse()
        .map_err(|e| format!("node id {s:?} would be invalid: {e}"))
}

/// What a finished simulation reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimSummary {
    pub nodes: u32,
    /// Nodes that connected at least once.
    pub connected: u32,
    /// Nodes that sent their DISCONNECT before the process ended.
    pub disconnected_cleanly: u32,
}

/// Counters shared by every node.
#[derive(Debug, Default)]
struct Counters {
    /// Nodes connected now.
    online: AtomicU32,
    /// Nodes that connected at least once.
    ever: AtomicU32,
    clean: AtomicU32,
    /// Desired-state documents applied, over all nodes.
    applied: AtomicU64,
}

/// Raises the open-file limit to what `nodes` connections need (root may raise the hard limit).
pub fn raise_file_limit(nodes: u32) -> Result<u64, SimError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let need = u64::from(nodes) + SPARE_FDS;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| SimError::FileLimit {
        nodes,
        need,
        have: 0,
        reason: e.to_string(),
    })?;
    if soft >= need {
        return Ok(soft);
    }
    let new_hard = hard.max(need);
    match setrlimit(Resource::RLIMIT_NOFILE, need, new_hard) {
        Ok(()) => Ok(need),
        Err(e) => Err(SimError::FileLimit {
            nodes,
            need,
            have: soft,
            reason: e.to_string(),
        }),
    }
}

/// Runs `cfg.nodes` simulated agents until `shutdown` resolves, then stops every node's tasks,
/// publishes each one's offline status and disconnects them.
pub async fn run(
    cfg: SimConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<SimSummary, SimError> {
    cfg.validate()?;
    let limit = raise_file_limit(cfg.nodes)?;
    tracing::debug!(open_files = limit, "file limit");
    let shared = Arc::new(Shared {
        cfg,
        clock: Clock::default(),
        zones: crate::zones::Zones::system(),
        counters: Counters::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut nodes = tokio::task::JoinSet::new();
    let started = Instant::now();
    let n = shared.cfg.nodes;
    tracing::info!(
        nodes = n,
        cluster = %shared.cfg.cluster,
        broker = %format!("{}:{}", shared.cfg.broker.host, shared.cfg.broker.port),
        ramp = shared.cfg.ramp,
        "sim: starting nodes"
    );
    // Connections go out in small batches every RAMP_STEP, `ramp` per second in all.
    const RAMP_STEP: Duration = Duration::from_millis(10);
    let per_step = (f64::from(shared.cfg.ramp) * RAMP_STEP.as_secs_f64()).max(1.0);
    let mut ramp = tokio::time::interval(RAMP_STEP);
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut next: u32 = 1;
    let mut budget = 0.0f64;
    let mut all_online_reported = false;
    let mut last_line = (u32::MAX, 0u64);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ramp.tick(), if next <= n => {
                budget += per_step;
                while budget >= 1.0 && next <= n {
                    budget -= 1.0;
                    let (me, stop) = (shared.clone(), stop_rx.clone());
                    let index = next;
                    nodes.spawn(async move { run_node(index, me, stop).await });
                    next += 1;
                }
            }
            _ = progress.tick() => {
                let online = shared.counters.online.load(Ordering::Relaxed);
                let applied = shared.counters.applied.load(Ordering::Relaxed);
                if (online, applied) != last_line {
                    last_line = (online, applied);
                    tracing::info!(online, started = next - 1, nodes = n, applied, "sim: progress");
                }
                if online == n && !all_online_reported {
                    all_online_reported = true;
                    tracing::info!(
                        nodes = n,
                        secs = format!("{:.1}", started.elapsed().as_secs_f64()),
                        "sim: all nodes online"
                    );
                }
            }
            Some(r) = nodes.join_next() => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "sim: a node's task failed");
                }
            }
        }
    }
    tracing::info!(
        "sim: stopping {} nodes (tasks, offline status, disconnect)",
        next - 1
    );
    let _ = stop_tx.send(true);
    while let Some(r) = nodes.join_next().await {
        if let Err(e) = r {
            tracing::error!(error = %e, "sim: a node's task failed");
        }
    }
    let c = &shared.counters;
    let summary = SimSummary {
        nodes: n,
        connected: c.ever.load(Ordering::Relaxed),
        disconnected_cleanly: c.clean.load(Ordering::Relaxed),
    };
    tracing::info!(
        nodes = summary.nodes,
        connected = summary.connected,
        disconnected_cleanly = summary.disconnected_cleanly,
        "sim: stopped"
    );
    Ok(summary)
}

/// Settings and counters every node reads.
struct Shared {
    cfg: SimConfig,
    clock: Clock,
    zones: crate::zones::Zones,
    counters: Counters,
}

/// One simulated agent: the agent's loop with the fake runtime, until told to stop.
async fn run_node(index: u32, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let cfg = &shared.cfg;
    let Ok(node) = node_name(&cfg.prefix, index) else {
        return; // checked by validate for the longest id
    };
    let mut fake = FakeRuntime::new(index);
    let labels = node_labels(cfg, index);
    // The last will and the clean stop's status carry the node's labels and size, as an
    // agent's do.
    let offline = |labels| {
        crate::agent::offline_status_of(&node, labels, fake_size(), crate::clock::wall_ms())
    };
    let mut opts =
        crate::agent::connect_options(&node, &cfg.cluster, cfg.broker.clone(), cfg.keepalive);
    if let Some((_, will)) = opts.last_will.as_mut() {
        *will = offline(labels.clone());
    }
    let conn = mqtt::connect(opts);
    let mut inbound = conn.inbound;
    // Memory only: no disk under a simulated node.
    let outbox = match Outbox::open(None, OUTBOX_BYTES) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(%node, error = %e, "sim: cannot make an outbox");
            return;
        }
    };
    let out = Output::new(
        Some(conn.client),
        node.clone(),
        cfg.cluster.clone(),
        false,
        outbox,
        cfg.mirror,
    );
    let mut core = Core::new(CoreConfig {
        node: node.clone(),
        cluster: cfg.cluster.clone(),
        agent_version: VERSION.into(),
        stop_grace_ms: 10_000,
    })
    .pulling_missing_images(true)
    .with_zones(shared.zones.clone())
    .with_node(labels.clone(), fake_size());
    let clock = &shared.clock;
    let mut pending: VecDeque<Event> = VecDeque::new();
    pending.push_back(Event::Started);
    pending.push_back(Event::Restored {
        cluster: None,
        node: restored_tasks(cfg, &node).map(Box::new),
        finished: vec![],
        services: vec![],
        last_wall_ms: None,
        images: Catalog::new(),
        adopted: vec![],
    });
    let mut metrics_tick = tokio::time::interval(cfg.metrics_interval);
    metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    let mut online = false;
    loop {
        while let Some(ev) = pending.pop_front() {
            let actions = core.handle(ev, clock.now());
            perform(
                actions,
                &cfg.cluster,
                &out,
                &mut fake,
                &mut pending,
                &shared.counters,
            );
        }
        if stopping && core.is_idle() {
            break;
        }
        let deadline = core
            .next_deadline()
            .map(|ms| tokio::time::Instant::from_std(clock.instant(ms)));
        tokio::select! {
            r = stop.changed(), if !stopping => {
                if r.is_ok() && !*stop.borrow() {
                    continue;
                }
                stopping = true;
                pending.push_back(Event::Shutdown);
            }
            msg = inbound.recv() => {
                let Some(msg) = msg else { break };
                match msg {
                    Inbound::Connected => {
                        if !online {
                            online = true;
                            if shared.counters.online.fetch_add(1, Ordering::Relaxed) == 0 {
                                tracing::debug!("sim: first node online");
                            }
                        }
                        if index_first_connect(&mut fake) {
                            shared.counters.ever.fetch_add(1, Ordering::Relaxed);
                        }
                        out.connection(true);
                        pending.push_back(Event::Connected);
                    }
                    Inbound::Disconnected(reason) => {
                        tracing::debug!(%node, %reason, "sim: connection lost");
                        if online {
                            online = false;
                            shared.counters.online.fetch_sub(1, Ordering::Relaxed);
                        }
                        out.connection(false);
                    }
                    Inbound::PubAck => out.acked(),
                    Inbound::Subscribed => {}
                    Inbound::Publish { topic, payload, .. } => {
                        if let Some((ev, reply_to)) = route(&topic, payload, &out) {
                            pending.push_back(ev);
                            // Drain and activate are answered with the node state they lead
                            // to; the fake runtime's answers come at once, so after these.
                            while let Some(ev) = pending.pop_front() {
                                let actions = core.handle(ev, clock.now());
                                perform(actions, &cfg.cluster, &out, &mut fake, &mut pending, &shared.counters);
                            }
                            if let Some(id) = reply_to {
                                let state = core.node_state();
                                out.reply(Reply { id, body: ReplyBody::NodeState { state } });
                            }
                        }
                    }
                }
            }
            _ = metrics_tick.tick() => {
                let now = clock.now();
                let sample = fake.sample(&core, now.wall_ms);
                pending.push_back(Event::Load(fake.load(&sample)));
                pending.push_back(Event::Metrics {
                    tasks: sample.tasks.clone(),
                    mem_total_bytes: sample.mem_total_bytes,
                });
                out.metrics(vec![sample]);
            }
            () = sleep_until(deadline) => pending.push_back(Event::Tick),
        }
    }
    // As the agent does at a clean stop: offline status (retained), then DISCONNECT. The
    // connection's task ends once DISCONNECT is out, closing `inbound`.
    out.offline_with(offline(labels)).await;
    let gone = tokio::time::timeout(DISCONNECT_WAIT, async {
        while inbound.recv().await.is_some() {}
    })
    .await;
    if online {
        shared.counters.online.fetch_sub(1, Ordering::Relaxed);
    }
    if gone.is_ok() {
        shared.counters.clean.fetch_add(1, Ordering::Relaxed);
    }
}

/// The labels of node `index`: the configured ones, `arch=arm64` unless given, and its site.
fn node_labels(cfg: &SimConfig, index: u32) -> BTreeMap<String, String> {
    let mut labels = cfg.labels.clone();
    labels
        .entry("arch".to_string())
        .or_insert_with(|| "arm64".to_string());
    if cfg.sites > 0 {
        let site = (index - 1) % cfg.sites + 1;
        labels.insert("site".into(), format!("site-{site}"));
    }
    labels
}

/// True the first time a node connects (counted once per node).
fn index_first_connect(fake: &mut FakeRuntime) -> bool {
    !std::mem::replace(&mut fake.connected_once, true)
}

/// The node document a node starts with when `tasks_per_node` > 0: as if its saved state held
/// those tasks (the agent restores its applied desired state the same way at start-up).
fn restored_tasks(cfg: &SimConfig, node: &Name) -> Option<DesiredState> {
    if cfg.tasks_per_node == 0 {
        return None;
    }
    let tasks = (1..=cfg.tasks_per_node)
        .filter_map(|k| sim_task(&format!("sim-task-{k}")))
        .collect();
    Some(DesiredState {
        version: 1,
        cluster: cfg.cluster.clone(),
        node: Some(node.clone()),
        tasks,
        signature: None,
    })
}

/// A small long-running task definition (ECS JSON through the real parser).
fn sim_task(family: &str) -> Option<TaskDefinition> {
    let json = serde_json::json!({
        "family": family,
        "memory": "64",
        "restartPolicy": "always",
        "containerDefinitions": [{
            "name": "app",
            "image": "busybox:latest",
            "command": ["sleep", "infinity"],
        }],
    });
    let bytes = serde_json::to_vec(&json).ok()?;
    match crate::ecs::parse_task_definition(&bytes) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::error!(error = %e, "sim: the built-in task definition is invalid");
            None
        }
    }
}

/// A broker message for the core (with the id of a command to answer with the node state after
/// it), or answered here (commands the core does not decide).
fn route(topic: &str, payload: Vec<u8>, out: &Output) -> Option<(Event, Option<u64>)> {
    let images = Catalog::new();
    match Topic::parse(topic) {
        Some(Topic::ClusterDesired { .. }) => Some((
            Event::DesiredPayload {
                scope: Scope::Cluster,
                payload,
                images,
            },
            None,
        )),
        Some(Topic::NodeDesired { .. }) => Some((
            Event::DesiredPayload {
                scope: Scope::Node,
                payload,
                images,
            },
            None,
        )),
        Some(Topic::Cmd { .. }) => {
            let (id, body) = match decode_as(Kind::Command, &payload) {
                Ok(Message::Command(Command { id, body })) => (id, body),
                Ok(m) => {
                    let reason = format!("unexpected {} message", m.kind().name());
                    out.reply(Reply {
                        id: 0,
                        body: ReplyBody::Unsupported { reason },
                    });
                    return None;
                }
                Err(e) => {
                    out.reply(Reply {
                        id: 0,
                        body: ReplyBody::Unsupported {
                            reason: e.to_string(),
                        },
                    });
                    return None;
                }
            };
            let reply = |body| out.reply(Reply { id, body });
            match body {
                // Batch tasks get no time: the fake runtime's tasks never finish on their own.
                CommandBody::Drain => {
                    return Some((
                        Event::Drain {
                            batch_deadline_ms: 0,
                        },
                        Some(id),
                    ))
                }
                CommandBody::Activate => return Some((Event::Activate, Some(id))),
                CommandBody::TrustUpdate(u) => return Some((Event::TrustUpdate(u), None)),
                CommandBody::Ping => reply(ReplyBody::Pong {
                    version: VERSION.into(),
                }),
                CommandBody::Logs { task, .. } => reply(ReplyBody::Error {
                    reason: format!("no log for task {task} on this node (simulated)"),
                }),
                CommandBody::History { .. } => reply(ReplyBody::History { runs: vec![] }),
                CommandBody::NodeKey => reply(ReplyBody::Error {
                    reason: "this node has no key (simulated)".into(),
                }),
            }
            None
        }
        _ => {
            tracing::debug!(%topic, "sim: ignoring a message on an unexpected topic");
            None
        }
    }
}

/// Performs the core's actions: publishing through the agent's [`Output`], containers through
/// the fake runtime (whose answers go back to the core as events), durable saves dropped.
fn perform(
    actions: Vec<Action>,
    cluster: &Name,
    out: &Output,
    fake: &mut FakeRuntime,
    pending: &mut VecDeque<Event>,
    counters: &Counters,
) {
    for action in actions {
        match action {
            Action::Event(body) => {
                if matches!(body, EventBody::DesiredApplied { .. }) {
                    counters.applied.fetch_add(1, Ordering::Relaxed);
                }
                out.event(body);
            }
            Action::Status(status) => {
                let topic = Topic::Status {
                    cluster: cluster.clone(),
                    node: status.node.clone(),
                };
                out.publish(topic, &Message::Status(status), true);
            }
            Action::StartTask { def } => fake.start_task(&def, pending),
            Action::StartContainer { task, container } => {
                let pid = fake.start_container(&task, &container);
                pending.push_back(Event::ContainerStarted {
                    task,
                    container,
                    pid,
                });
            }
            Action::Signal {
                task,
                container,
                signal,
            } => fake.signal(task, container, signal, pending),
            Action::RemoveTask { task, .. } => {
                fake.remove_task(&task);
                pending.push_back(Event::TaskRemoved { task, error: None });
            }
            Action::HealthCheck {
                task, container, ..
            } => pending.push_back(Event::HealthResult {
                task,
                container,
                ok: true,
                output: String::new(),
            }),
            Action::SaveDesired { .. }
            | Action::SaveFinished(_)
            | Action::RecordRun(_)
            | Action::SaveServices(_)
            | Action::SaveTrust(_)
            | Action::SaveQueue(_)
            | Action::ForgetTask { .. } => {}
        }
    }
}

/// Containers that exist only as entries in a map: they start at once, run until signalled,
/// and report made-up figures.
#[derive(Debug)]
struct FakeRuntime {
    /// (task, container) → pid.
    running: BTreeMap<(Name, Name), u32>,
    next_pid: u32,
    /// xorshift state for the figures.
    rng: u64,
    /// Node CPU %, drifting.
    cpu: f32,
    connected_once: bool,
}

/// Memory of the simulated board: a 4 GB Raspberry Pi 4 as Linux reports it.
const MEM_TOTAL: u64 = 3_978_678_272;
/// Its CPUs.
const CPUS: u32 = 4;

/// The simulated board's size (no load).
fn fake_size() -> skiff_proto::NodeResources {
    skiff_proto::NodeResources {
        cpus: CPUS,
        mem_total_bytes: MEM_TOTAL,
        cpu_pct: 0.0,
        mem_used_bytes: 0,
    }
}

impl FakeRuntime {
    fn new(index: u32) -> FakeRuntime {
        let mut f = FakeRuntime {
            running: BTreeMap::new(),
            next_pid: 1000,
            rng: 0x9E37_79B9_7F4A_7C15 ^ u64::from(index).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            cpu: 5.0,
            connected_once: false,
        };
        f.cpu = 2.0 + f.unit() * 20.0;
        f
    }

    /// A pseudo-random number in [0, 1).
    fn unit(&mut self) -> f32 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        // 24 high bits: exact in an f32.
        #[allow(clippy::cast_precision_loss)]
        let v = (x >> 40) as f32 / (1u64 << 24) as f32;
        v
    }

    fn start_task(&mut self, def: &TaskDefinition, pending: &mut VecDeque<Event>) {
        let task = def.family.clone();
        // What the real shell reports while starting: each image ready, the network, then
        // the containers without `dependsOn`.
        for c in &def.containers {
            let image = c
                .image
                .parse::<crate::images::ImageRef>()
                .map_or_else(|_| c.image.clone(), |r| r.to_string());
            let digest = {
                use sha2::Digest;
                format!(
                    "sha256:{}",
                    hex::encode(sha2::Sha256::digest(image.as_bytes()))
                )
            };
            pending.push_back(Event::StartProgress {
                task: task.clone(),
                report: EventBody::ImageReady {
                    task: task.clone(),
                    container: c.name.clone(),
                    image,
                    digest,
                },
            });
        }
        pending.push_back(Event::TaskNetwork {
            task: task.clone(),
            endpoints: vec![],
        });
        for c in def.containers.iter().filter(|c| c.depends_on.is_empty()) {
            let pid = self.start_container(&task, &c.name);
            pending.push_back(Event::ContainerStarted {
                task: task.clone(),
                container: c.name.clone(),
                pid,
            });
        }
        pending.push_back(Event::TaskStarted { task });
    }

    fn start_container(&mut self, task: &Name, container: &Name) -> u32 {
        self.next_pid = self.next_pid.wrapping_add(1).max(1000);
        self.running
            .insert((task.clone(), container.clone()), self.next_pid);
        self.next_pid
    }

    /// A signalled container exits at once, killed by that signal.
    fn signal(
        &mut self,
        task: Name,
        container: Name,
        signal: Signal,
        pending: &mut VecDeque<Event>,
    ) {
        if self
            .running
            .remove(&(task.clone(), container.clone()))
            .is_none()
        {
            return;
        }
        let sig = match signal {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        pending.push_back(Event::ContainerExited {
            task,
            container,
            exit: ExitInfo {
                code: 128 + sig,
                signal: Some(sig),
                oom_killed: false,
            },
        });
    }

    fn remove_task(&mut self, task: &Name) {
        self.running.retain(|(t, _), _| t != task);
    }

    /// One metrics sample: the node's CPU drifts within 1..=90 %, each running task uses a
    /// little CPU and 8..=72 MiB.
    fn sample(&mut self, core: &Core, wall_ms: u64) -> MetricsSample {
        let drift = (self.unit() - 0.5) * 6.0;
        self.cpu = (self.cpu + drift).clamp(1.0, 90.0);
        let tasks: Vec<TaskSample> = core
            .active_tasks()
            .into_iter()
            .map(|task| {
                let cpu_pct = 0.2 + self.unit() * 4.0;
                let mib = 8 + u64::from(self.next_byte() % 64);
                TaskSample {
                    task,
                    cpu_pct,
                    mem_bytes: mib * 1024 * 1024,
                    mem_limit_bytes: Some(64 * 1024 * 1024),
                }
            })
            .collect();
        let tasks_mem: u64 = tasks.iter().map(|t| t.mem_bytes).sum();
        MetricsSample {
            at_ms: wall_ms,
            cpu_pct: self.cpu,
            mem_used_bytes: (350 * 1024 * 1024 + tasks_mem).min(MEM_TOTAL),
            mem_total_bytes: MEM_TOTAL,
            tasks,
        }
    }

    /// The node's load at `sample`.
    fn load(&self, sample: &MetricsSample) -> skiff_proto::NodeResources {
        skiff_proto::NodeResources {
            cpu_pct: sample.cpu_pct,
            mem_used_bytes: sample.mem_used_bytes,
            ..fake_size()
        }
    }

    fn next_byte(&mut self) -> u8 {
        let v = self.unit() * 256.0;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let b = v as u8;
        b
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::codec::encode;
    use skiff_proto::TaskState;

    fn config() -> SimConfig {
        SimConfig {
            nodes: 10,
            broker: BrokerUrl {
                host: "127.0.0.1".into(),
                port: 1883,
            },
            cluster: "c".parse().expect("name"),
            prefix: "sim-".into(),
            metrics_interval: Duration::from_secs(10),
            tasks_per_node: 0,
            ramp: 100,
            keepalive: Duration::from_secs(30),
            mirror: MirrorJson::default(),
            labels: BTreeMap::new(),
            sites: 0,
        }
    }

    fn flag_of(cfg: &SimConfig) -> &'static str {
        match cfg.validate() {
            Err(SimError::Invalid { flag, .. }) => flag,
            other => panic!("expected an invalid flag, got {other:?}"),
        }
    }

    #[test]
    fn bad_settings_are_refused_naming_the_flag() {
        assert!(config().validate().is_ok());
        type Edit = fn(&mut SimConfig);
        let cases: [(&str, Edit); 8] = [
            ("--nodes", |c| c.nodes = 0),
            ("--nodes", |c| c.nodes = MAX_NODES + 1),
            ("--ramp", |c| c.ramp = 0),
            ("--metrics-interval", |c| {
                c.metrics_interval = Duration::ZERO
            }),
            ("--tasks-per-node", |c| c.tasks_per_node = 65),
            ("--keepalive", |c| c.keepalive = Duration::from_secs(1)),
            ("--prefix", |c| c.prefix = "no/slash".into()),
            ("--label", |c| {
                c.labels.insert("bad key!".into(), "v".into());
            }),
        ];
        for (flag, edit) in cases {
            let mut cfg = config();
            edit(&mut cfg);
            assert_eq!(flag_of(&cfg), flag);
        }
        // The longest id counts: 64 characters with the index.
        let mut cfg = config();
        cfg.prefix = "p".repeat(59);
        assert!(cfg.validate().is_ok());
        cfg.prefix = "p".repeat(60);
        assert_eq!(flag_of(&cfg), "--prefix");
    }

    #[test]
    fn nodes_are_named_and_labelled_per_index() {
        assert_eq!(node_name("sim-", 7).expect("name").as_str(), "sim-00007");
        let mut cfg = config();
        cfg.sites = 10;
        cfg.labels.insert("env".into(), "test".into());
        let l1 = node_labels(&cfg, 1);
        assert_eq!(l1.get("arch").map(String::as_str), Some("arm64"));
        assert_eq!(l1.get("env").map(String::as_str), Some("test"));
        assert_eq!(l1.get("site").map(String::as_str), Some("site-1"));
        assert_eq!(node_labels(&cfg, 10)["site"], "site-10");
        assert_eq!(node_labels(&cfg, 11)["site"], "site-1");
        cfg.labels.insert("arch".into(), "arm".into());
        assert_eq!(node_labels(&cfg, 1)["arch"], "arm");
    }

    /// Feeds `events` (and what the fake runtime answers) to the core, as a node's loop does.
    fn drive(
        core: &mut Core,
        fake: &mut FakeRuntime,
        out: &Output,
        counters: &Counters,
        events: Vec<Event>,
    ) {
        let cluster: Name = "c".parse().expect("name");
        let mut pending: VecDeque<Event> = events.into();
        let clock = Clock::default();
        while let Some(ev) = pending.pop_front() {
            let actions = core.handle(ev, clock.now());
            perform(actions, &cluster, out, fake, &mut pending, counters);
        }
    }

    #[test]
    fn a_simulated_node_applies_desired_state_reports_and_stops() {
        let node: Name = "sim-00001".parse().expect("name");
        let cluster: Name = "c".parse().expect("name");
        let out = Output::new(
            None,
            node.clone(),
            cluster.clone(),
            false,
            Outbox::open(None, OUTBOX_BYTES).expect("outbox"),
            MirrorJson::default(),
        );
        let mut core = Core::new(CoreConfig {
            node: node.clone(),
            cluster: cluster.clone(),
            agent_version: VERSION.into(),
            stop_grace_ms: 10_000,
        })
        .pulling_missing_images(true)
        .with_node(node_labels(&config(), 1), fake_size());
        let mut fake = FakeRuntime::new(1);
        let counters = Counters::default();
        let mut cfg = config();
        cfg.tasks_per_node = 2;
        drive(
            &mut core,
            &mut fake,
            &out,
            &counters,
            vec![
                Event::Started,
                Event::Restored {
                    cluster: None,
                    node: restored_tasks(&cfg, &node).map(Box::new),
                    finished: vec![],
                    services: vec![],
                    last_wall_ms: None,
                    images: Catalog::new(),
                    adopted: vec![],
                },
            ],
        );
        // A cluster document, as it arrives on the cluster's desired topic.
        let web = sim_task("web").expect("task");
        let doc = DesiredState {
            version: 7,
            cluster: cluster.clone(),
            node: None,
            tasks: vec![web],
            signature: None,
        };
        let payload = encode(&Message::DesiredState(doc)).expect("encode");
        let topic = Topic::ClusterDesired {
            cluster: cluster.clone(),
        }
        .to_topic();
        let (ev, reply) = route(&topic, payload, &out).expect("routed to the core");
        assert!(reply.is_none());
        drive(&mut core, &mut fake, &out, &counters, vec![ev]);
        let status = core.status(Clock::default().now());
        assert_eq!(status.cluster_version, 7);
        assert_eq!(status.node_version, 1);
        let running: Vec<&str> = status
            .tasks
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(running, ["sim-task-1", "sim-task-2", "web"]);
        assert_eq!(status.labels["arch"], "arm64");
        assert_eq!(counters.applied.load(Ordering::Relaxed), 2);
        assert_eq!(fake.running.len(), 3);

        // Metrics: the node's figures within bounds, one sample per running task.
        for _ in 0..100 {
            let s = fake.sample(&core, 1);
            assert!((1.0..=90.0).contains(&s.cpu_pct), "{}", s.cpu_pct);
            assert!(s.mem_used_bytes <= s.mem_total_bytes);
            assert_eq!(s.tasks.len(), 3);
            assert!(s
                .tasks
                .iter()
                .all(|t| t.mem_bytes >= 8 << 20 && t.mem_bytes < 72 << 20));
        }

        // Shutdown: every container signalled and exited, every task removed.
        drive(&mut core, &mut fake, &out, &counters, vec![Event::Shutdown]);
        assert!(core.is_idle());
        assert!(fake.running.is_empty());
    }

    #[test]
    fn commands_are_answered_or_routed() {
        let out = Output::new(
            None,
            "n".parse().expect("name"),
            "c".parse().expect("name"),
            false,
            Outbox::open(None, OUTBOX_BYTES).expect("outbox"),
            MirrorJson::default(),
        );
        let cmd = |body| encode(&Message::Command(Command { id: 5, body })).expect("encode");
        let topic = "skiff/v1/c/nodes/n/cmd";
        assert!(matches!(
            route(topic, cmd(CommandBody::Drain), &out),
            Some((Event::Drain { .. }, Some(5)))
        ));
        assert!(matches!(
            route(topic, cmd(CommandBody::Activate), &out),
            Some((Event::Activate, Some(5)))
        ));
        // Answered here (nothing for the core), garbage included.
        assert!(route(topic, cmd(CommandBody::Ping), &out).is_none());
        assert!(route(topic, b"garbage".to_vec(), &out).is_none());
        assert!(route("skiff/v1/c/elsewhere", vec![], &out).is_none());
    }
}
