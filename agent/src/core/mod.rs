//! The sans-IO core: every decision of the agent, none of its I/O.
//!
//! [`Core::handle`] takes an [`Event`] (something that happened: a desired-state payload arrived,
//! a container exited, a deadline passed) and the current [`Time`], updates the state and
//! returns [`Action`]s for the shells to perform. No clock reads, no files, no tokio: tests
//! drive it with a fake clock and check the actions.
//!
//! A task moves through [`Phase`]s:
//!
//! ```text
//!            StartTask                 all started           essential exit / removed / replaced
//! (desired) ──────────▶ Starting ───────────────▶ Running ─────────────────────────────▶ Stopping
//!                          │ start failed                                     SIGTERM, grace, SIGKILL
//!                          └──────────────────────────────────────────────────────────────┘ │
//!                                                                            all exited     ▼
//!    Backoff ◀── restart policy ── Stopped ◀── TaskRemoved ── Removing ◀── RemoveTask ──────┘
//! ```
//!
//! Exits are only awaited, never assumed: a task's runtime state is removed only after every
//! container it started has been seen to exit, so a later instance of the same task never
//! receives a stale exit.

mod adopt;
pub mod cron;
mod deps;
mod endpoints;
mod health;
mod queue;
mod service;
mod signed;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_adopt;
#[cfg(test)]
mod tests_queue;
#[cfg(test)]
mod tests_service;
#[cfg(test)]
mod tests_trust;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use skiff_proto::codec::{decode_as, Kind, Message};
use skiff_proto::{
    Batch, ContainerState, ContainerStatus, DesiredState, EventBody, ExitInfo, Health, HealthTest,
    MissedRunPolicy, Name, NodeState, OverlapPolicy, RestartPolicy, Schedule, ScheduleSpec, Scope,
    Status, StopReason, TaskDefinition, TaskExtension, TaskSample, TaskState, TaskStatus,
};

pub use adopt::{adoptable, AdoptedContainer, AdoptedTask, EndedRun};
pub use queue::{reservation, Capacity, QueueMemo};
pub use service::ServiceMemo;
use service::{ServiceLink, ServiceRec};

use serde::{Deserialize, Serialize};
use skiff_proto::RunRecord;

use crate::images::ImageRef;

/// Time as the shell sees it: monotonic for deadlines, wall clock for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    /// Milliseconds of a monotonic clock (arbitrary origin).
    pub mono_ms: u64,
    /// Milliseconds since the Unix epoch (may be wrong on a device without RTC).
    pub wall_ms: u64,
    /// The wall clock is known good: NTP-synchronised per the kernel, or later than the last
    /// wall time the agent saved. Cron schedules use it only then; otherwise they run on the
    /// last trusted wall time plus monotonic time.
    pub wall_trusted: bool,
}

/// Images in the local store: canonical reference → manifest digest.
pub type Catalog = BTreeMap<String, String>;

/// A task that ran to its end and, by its restart policy, must not run again while its
/// definition stays the same: kept across agent restarts so nothing runs twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedTask {
    pub def: TaskDefinition,
    /// The start failed (rather than the task exiting).
    pub failed: bool,
    pub restarts: u32,
    pub last_exit: Option<ExitInfo>,
    /// For a scheduled task: wall time of its last firing (to spot runs missed while down).
    pub last_fire_ms: Option<u64>,
    /// For a batch job: successful and failed runs so far.
    pub batch_progress: Option<(u32, u32)>,
    /// The job was not done (a batch between runs, or stopped by the agent's shutdown): it
    /// goes on after a restart from `batch_progress`, without repeating completed runs.
    pub resume: bool,
}

/// Signals the core asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

/// Something that happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// The agent started.
    Started,
    /// The broker connection is up (again): report status.
    Connected,
    /// What the durable store kept from the previous run of the agent (first event after
    /// `Started`, before any broker message).
    Restored {
        cluster: Option<Box<DesiredState>>,
        node: Option<Box<DesiredState>>,
        finished: Vec<FinishedTask>,
        /// Services' scaled counts and rollbacks.
        services: Vec<ServiceMemo>,
        /// The last wall time the previous run knew to be good.
        last_wall_ms: Option<u64>,
        images: Catalog,
        /// Tasks whose containers outlived the previous run (kept by the launcher): taken
        /// over as they are, not started again (see `adopt.rs`).
        adopted: Vec<AdoptedTask>,
    },
    /// A desired-state payload arrived on the cluster or node topic.
    DesiredPayload {
        scope: Scope,
        payload: Vec<u8>,
        images: Catalog,
    },
    /// Desired state from local files (local mode): replaces the node document; `Err` says
    /// which file is wrong.
    LocalDesired {
        tasks: Result<Vec<TaskDefinition>, String>,
        images: Catalog,
    },
    /// Progress of a starting task that the shells observed (image pulled, found): reported as
    /// is while the start is still pending, dropped after (a late report of a stale start).
    StartProgress { task: Name, report: EventBody },
    /// A container of a starting task was created and started.
    ContainerStarted {
        task: Name,
        container: Name,
        pid: u32,
    },
    /// Every container of the task without `dependsOn` was started.
    TaskStarted { task: Name },
    /// The task was prepared with these endpoints (its port mappings with the host ports and
    /// address it got): sent before `TaskStarted`, shown while the task runs.
    TaskNetwork {
        task: Name,
        endpoints: Vec<skiff_proto::Endpoint>,
    },
    /// A container asked for by `StartContainer` could not be started.
    ContainerStartFailed {
        task: Name,
        container: Name,
        reason: String,
    },
    /// Starting the task failed (image, rootfs, runtime); containers started before are running.
    TaskStartFailed { task: Name, reason: String },
    /// A container's process exited.
    ContainerExited {
        task: Name,
        container: Name,
        exit: ExitInfo,
    },
    /// The task's runtime state was removed.
    TaskRemoved { task: Name, error: Option<String> },
    /// A health check asked for by [`Action::HealthCheck`] ended.
    HealthResult {
        task: Name,
        container: Name,
        ok: bool,
        /// The check's output or why it failed (bounded by the shells).
        output: String,
    },
    /// The node's load at a metrics sample: reported in the status, which is published again
    /// when the load moved (see [`LOAD_REPORT_CPU_STEP`]).
    Load(skiff_proto::NodeResources),
    /// A metrics sample of the node's tasks (drives auto scaling).
    Metrics {
        tasks: Vec<TaskSample>,
        mem_total_bytes: u64,
    },
    /// Drain the node (`skiff ctl drain`, or SIGTERM with the drain stop policy): batch tasks
    /// may run `batch_deadline_ms` longer.
    Drain { batch_deadline_ms: u64 },
    /// Undo a drain.
    Activate,
    /// A key rotation arrived on the command topic (answered by a `TrustUpdated` or
    /// `TrustRejected` event).
    TrustUpdate(Box<skiff_proto::TrustUpdate>),
    /// The agent is shutting down: stop everything.
    Shutdown,
    /// Time passed (a deadline from [`Core::next_deadline`] may have expired).
    Tick,
    /// An offer from the cluster queue (a `RunRequest` payload): claimed, handed back or
    /// refused; the decision is saved (`SaveQueue`) before any event about it.
    RunOffer { payload: Vec<u8>, images: Catalog },
}

/// Something the shells must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Resolve images, prepare every container of the task and start those without
    /// `dependsOn`; report `ContainerStarted`s then `TaskStarted` or `TaskStartFailed`.
    StartTask { def: Arc<TaskDefinition> },
    /// Start one prepared container whose dependencies are met; report `ContainerStarted` or
    /// `ContainerStartFailed`.
    StartContainer { task: Name, container: Name },
    /// Signal one container.
    Signal {
        task: Name,
        container: Name,
        signal: Signal,
    },
    /// Delete the task's containers and everything prepared for it; report `TaskRemoved`.
    /// `ended` (when a container ran) is kept in the run dir first, until `ForgetTask`: an
    /// agent that dies before saving the run finds it there and replays it (`adopt.rs`).
    RemoveTask { task: Name, ended: Option<EndedRun> },
    /// The run `RemoveTask` kept is saved (the durable writes of the same batch of actions
    /// come first): drop it.
    ForgetTask { task: Name },
    /// Publish an event (and log it).
    Event(EventBody),
    /// Publish the node status (retained).
    Status(Status),
    /// Durably save an applied desired-state document.
    SaveDesired { scope: Scope, doc: DesiredState },
    /// Durably save the set of finished tasks (replaces the previous set).
    SaveFinished(Vec<FinishedTask>),
    /// Append a run to the task's durable history.
    RecordRun(RunRecord),
    /// Durably save the services' scaled counts and rollbacks (replaces the previous set).
    SaveServices(Vec<ServiceMemo>),
    /// Run a container's health check (at most `timeout_ms`); report `HealthResult`.
    HealthCheck {
        task: Name,
        container: Name,
        test: HealthTest,
        timeout_ms: u64,
    },
    /// Durably save the trusted-key changes (replaces the previous state).
    SaveTrust(crate::trust::TrustState),
    /// Durably save the queue's claims and decided offers (replaces the previous state).
    SaveQueue(QueueMemo),
}

/// Where a task is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `StartTask` issued; containers being started.
    Starting,
    /// Every container started.
    Running,
    /// Waiting for containers to exit; SIGKILL at `deadline`.
    Stopping { killed: bool },
    /// `RemoveTask` issued.
    Removing,
    /// Not running; nothing more will happen unless desired state changes.
    Stopped,
    /// Will restart at `deadline`.
    Backoff,
    /// Start failed and the policy does not retry.
    Failed,
}

#[derive(Debug, Clone)]
struct ContainerRec {
    name: Name,
    essential: bool,
    state: ContainerState,
    pid: Option<u32>,
    exit: Option<ExitInfo>,
    /// An exit that arrived before the start was confirmed (the exit notice and the start's
    /// reply travel different paths); replayed right after `ContainerStarted`.
    early_exit: Option<ExitInfo>,
    /// SIGTERM → SIGKILL for this container (its `stopTimeout`, else the agent's grace).
    stop_timeout_ms: u64,
    /// While stopping: when this container gets SIGKILL; `None` once sent.
    kill_at: Option<u64>,
    health: health::HealthState,
    /// ECS `dependsOn`: started by `StartContainer` once these hold.
    deps: Vec<skiff_proto::ContainerDependency>,
    /// A start of this container is in flight.
    starting: bool,
}

/// The containers of a run of `def` about to start: those without `dependsOn` are starting.
fn container_recs(def: &TaskDefinition, grace: u64) -> Vec<ContainerRec> {
    def.containers
        .iter()
        .map(|c| ContainerRec {
            name: c.name.clone(),
            essential: c.essential,
            state: ContainerState::Pending,
            pid: None,
            exit: None,
            early_exit: None,
            stop_timeout_ms: c.stop_timeout_secs.map_or(grace, |s| u64::from(s) * 1000),
            kill_at: None,
            health: health::HealthState::new(c.health_check.clone()),
            deps: c.depends_on.clone(),
            starting: c.depends_on.is_empty(),
        })
        .collect()
}

#[derive(Debug, Clone)]
struct TaskRec {
    /// Definition of the current (or last) run.
    def: Arc<TaskDefinition>,
    phase: Phase,
    /// `StartTask` issued and neither `TaskStarted` nor `TaskStartFailed` seen yet.
    start_pending: bool,
    containers: Vec<ContainerRec>,
    /// Restarts by policy since the definition was applied.
    restarts: u32,
    /// Restarts in a row that ran shorter than [`STABLE_MS`] (drives the backoff).
    rapid_restarts: u32,
    started_at_ms: u64,
    /// Wall-clock start of the current run, for the run history.
    started_wall_ms: u64,
    last_exit: Option<ExitInfo>,
    failure: Option<String>,
    stop_reason: Option<StopReason>,
    deadline: Option<u64>,
    /// Scheduled tasks only.
    sched: Option<SchedState>,
    /// Batch tasks: successful runs and failed runs so far.
    batch_done: u32,
    batch_failures: u32,
    /// Service tasks: which service and deployment.
    service: Option<ServiceLink>,
    /// Stopped by a drain: started again on `Activate`.
    drained: bool,
    /// An extra run of this scheduled task (overlap `allow`): forgotten when it ends.
    run_of: Option<Name>,
    /// Where the current run is reached (reported by the shells after preparing it).
    endpoints: Vec<skiff_proto::Endpoint>,
}

/// Where a scheduled task is in its schedule.
#[derive(Debug, Clone, Default)]
struct SchedState {
    /// Cron: the next firing, wall ms (None until the wall clock is known).
    next_wall: Option<u64>,
    /// Rate: the next firing, monotonic ms.
    next_mono: Option<u64>,
    /// Wall time of the last firing: no firing is ever at or before it (clock jumps back).
    last_fire_wall: Option<u64>,
    /// A firing is waiting for the previous run to be stopped (overlap `replace`).
    fire_pending: bool,
}

/// A drain in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DrainState {
    /// Batch tasks still running at this monotonic time are stopped (`None` once done).
    batch_deadline: Option<u64>,
    /// `NodeStateChanged(Drained)` was sent.
    reported_drained: bool,
}

/// A firing later than this is "missed" (agent down, clock jumped) and follows the missed-run
/// policy instead of running.
pub const MISSED_AFTER_MS: u64 = 60_000;
/// Cron deadlines are re-checked at least this often, to notice wall-clock jumps.
pub const CRON_RECHECK_MS: u64 = 60_000;

fn schedule_of(def: &TaskDefinition) -> Option<&Schedule> {
    def.extensions.iter().find_map(|e| match e {
        TaskExtension::Schedule(s) => Some(s),
        _ => None,
    })
}

fn batch_of(def: &TaskDefinition) -> Option<&Batch> {
    def.extensions.iter().find_map(|e| match e {
        TaskExtension::Batch(b) => Some(b),
        _ => None,
    })
}

fn service_of(def: &TaskDefinition) -> Option<&skiff_proto::Service> {
    def.extensions.iter().find_map(|e| match e {
        TaskExtension::Service(s) => Some(s),
        _ => None,
    })
}

impl TaskRec {
    /// Signals every container of the task that runs.
    fn signal_running(&self, name: &Name, signal: Signal, out: &mut Vec<Action>) {
        for c in self
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
        {
            out.push(Action::Signal {
                task: name.clone(),
                container: c.name.clone(),
                signal,
            });
        }
    }

    fn new(def: Arc<TaskDefinition>, now: Time) -> TaskRec {
        let sched = schedule_of(&def).map(|_| SchedState::default());
        TaskRec {
            def,
            phase: Phase::Stopped,
            start_pending: false,
            containers: Vec::new(),
            restarts: 0,
            rapid_restarts: 0,
            started_at_ms: now.mono_ms,
            started_wall_ms: now.wall_ms,
            last_exit: None,
            failure: None,
            stop_reason: None,
            deadline: None,
            sched,
            batch_done: 0,
            batch_failures: 0,
            service: None,
            drained: false,
            run_of: None,
            endpoints: Vec::new(),
        }
    }

    /// Running, and healthy by its health checks if it has any (what a rollout counts).
    fn is_healthy(&self) -> bool {
        self.phase == Phase::Running
            && !self.start_pending
            && self.health() != Health::Unhealthy
            && {
                let checked = self.checked_containers();
                checked.clone().count() == 0
                    || checked.clone().all(|c| c.health.status == Health::Healthy)
            }
    }

    /// Essential containers with a health check.
    fn checked_containers(&self) -> impl Iterator<Item = &ContainerRec> + Clone {
        self.containers
            .iter()
            .filter(|c| c.essential && c.health.check.is_some())
    }

    /// ECS's task health: unhealthy if an essential container is, healthy when all essential
    /// containers with checks are, unknown otherwise (or without checks).
    fn health(&self) -> Health {
        let mut checked = self.checked_containers().peekable();
        if checked.peek().is_none() {
            return Health::Unknown;
        }
        let mut all_healthy = true;
        for c in checked {
            match c.health.status {
                Health::Unhealthy => return Health::Unhealthy,
                Health::Healthy => {}
                Health::Unknown => all_healthy = false,
            }
        }
        if all_healthy {
            Health::Healthy
        } else {
            Health::Unknown
        }
    }

    /// The task stopped on its own and restarts after the policy's backoff (which grows with
    /// each run shorter than [`STABLE_MS`]).
    fn back_off(&mut self, name: &Name, now: Time, out: &mut Vec<Action>) {
        let ran = now.mono_ms.saturating_sub(self.started_at_ms);
        self.rapid_restarts = if ran >= STABLE_MS {
            0
        } else {
            self.rapid_restarts.saturating_add(1)
        };
        let delay = backoff_ms(self.rapid_restarts);
        self.phase = Phase::Backoff;
        self.deadline = Some(now.mono_ms + delay);
        out.push(Action::Event(EventBody::TaskRestarting {
            task: name.clone(),
            attempt: self.restarts + 2,
            delay_ms: delay,
        }));
    }

    /// A scheduled batch task's firing starts a new job: its completions and failures count
    /// from zero.
    fn new_job(&mut self) {
        self.batch_done = 0;
        self.batch_failures = 0;
    }

    /// Starting, running, or waiting to restart: it holds (or will hold) a place.
    fn is_live(&self) -> bool {
        matches!(
            self.phase,
            Phase::Starting | Phase::Running | Phase::Backoff
        )
    }
}

/// A run at least this long resets the restart backoff.
pub const STABLE_MS: u64 = 30_000;
/// First restart delay; doubles per rapid restart.
pub const BACKOFF_BASE_MS: u64 = 1_000;
/// Longest restart delay.
pub const BACKOFF_MAX_MS: u64 = 60_000;
/// After SIGKILL, how long to wait for exits before removing anyway (launcher lost them).
pub const KILL_WAIT_MS: u64 = 5_000;

/// Static settings of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub node: Name,
    pub cluster: Name,
    pub agent_version: String,
    /// SIGTERM → SIGKILL.
    pub stop_grace_ms: u64,
}

/// The agent's state and decisions.
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    cluster_doc: Option<DesiredState>,
    node_doc: Option<DesiredState>,
    tasks: BTreeMap<Name, TaskRec>,
    /// Services by name; their tasks are in `tasks` as `{service}.{slot}`.
    services: BTreeMap<Name, ServiceRec>,
    /// What the previous run of the agent saved about services, used as they are created.
    restored_services: BTreeMap<Name, ServiceMemo>,
    /// Draining (`Some`), with the deadline for batch tasks while one is pending.
    drain: Option<DrainState>,
    shutting_down: bool,
    /// The shells pull images that are not in the store: only their references are checked.
    pull_missing: bool,
    /// Local mode: desired state comes from files, which are the durable copy themselves.
    local: bool,
    /// Last known-good wall time and the monotonic time it was seen at.
    wall_anchor: Option<(u64, u64)>,
    /// The time of the event being handled (for deadlines computed between events).
    last_now: Time,
    /// The fleet keys desired state must be signed by (none: not verified).
    trust: crate::trust::Trust,
    /// Named time zones of cron schedules.
    zones: crate::zones::Zones,
    /// What desired state may ask of this node.
    policy: crate::policy::Policy,
    /// Copies claimed from the cluster queue.
    queue: queue::QueueState,
    /// The node's labels, reported in its status.
    labels: BTreeMap<String, String>,
    /// The node's size and load as last sampled, and as the last status reported them.
    load: skiff_proto::NodeResources,
    reported_load: skiff_proto::NodeResources,
}

/// A status is published again when the node's CPU use moved by this many points, or its memory
/// use by 1/[`LOAD_REPORT_MEM_DIVISOR`] of the total, since the last status: `skiff ctl nodes`
/// shows a fleet's load from the retained statuses alone, at most one status per metrics
/// sample, none while the load holds.
pub const LOAD_REPORT_CPU_STEP: f32 = 10.0;
pub const LOAD_REPORT_MEM_DIVISOR: u64 = 20;

/// Whether the load moved enough since `reported` for a new status.
fn load_moved(reported: &skiff_proto::NodeResources, now: &skiff_proto::NodeResources) -> bool {
    let mem_step = (now.mem_total_bytes / LOAD_REPORT_MEM_DIVISOR).max(1);
    (reported.cpu_pct - now.cpu_pct).abs() >= LOAD_REPORT_CPU_STEP
        || reported.mem_used_bytes.abs_diff(now.mem_used_bytes) >= mem_step
        || reported.mem_total_bytes != now.mem_total_bytes
        || reported.cpus != now.cpus
}

impl Core {
    pub fn new(cfg: CoreConfig) -> Core {
        Core {
            cfg,
            cluster_doc: None,
            node_doc: None,
            tasks: BTreeMap::new(),
            services: BTreeMap::new(),
            restored_services: BTreeMap::new(),
            drain: None,
            shutting_down: false,
            pull_missing: false,
            local: false,
            wall_anchor: None,
            last_now: Time {
                mono_ms: 0,
                wall_ms: 0,
                wall_trusted: false,
            },
            trust: crate::trust::Trust::default(),
            zones: crate::zones::Zones::none(),
            policy: crate::policy::Policy::default(),
            queue: queue::QueueState::default(),
            labels: BTreeMap::new(),
            load: skiff_proto::NodeResources::default(),
            reported_load: skiff_proto::NodeResources::default(),
        }
    }

    /// The node's labels and size (CPUs, memory), reported in its status.
    pub fn with_node(
        mut self,
        labels: BTreeMap<String, String>,
        size: skiff_proto::NodeResources,
    ) -> Core {
        self.labels = labels;
        self.load = size;
        self
    }

    /// The node's local policy bounding what tasks may ask for (the default one otherwise).
    pub fn with_policy(mut self, policy: crate::policy::Policy) -> Core {
        self.policy = policy;
        self
    }

    /// Where named time zones of cron schedules come from (none by default: a schedule naming
    /// one is rejected).
    pub fn with_zones(mut self, zones: crate::zones::Zones) -> Core {
        self.zones = zones;
        self
    }

    /// A named zone of a schedule or scheduled scaling action that is not known here.
    fn unknown_zone(&self, def: &TaskDefinition) -> Option<String> {
        let schedule = schedule_of(def).and_then(|s| match &s.spec {
            ScheduleSpec::Cron { zone, .. } => zone.clone(),
            ScheduleSpec::Rate { .. } => None,
        });
        let scaling = service_of(def)
            .and_then(|s| s.scaling.as_ref())
            .into_iter()
            .flat_map(|a| a.scheduled.iter().filter_map(|x| x.zone.clone()));
        schedule
            .into_iter()
            .chain(scaling)
            .find(|z| !self.zones.exists(z))
    }

    /// Verify desired state and trust updates with these keys (see [`crate::trust`]).
    pub fn trusting(mut self, trust: crate::trust::Trust) -> Core {
        self.trust = trust;
        self
    }

    /// Accept desired state naming images that are not in the store (the shells pull them
    /// before starting a task); without it such a document is rejected.
    pub fn pulling_missing_images(mut self, yes: bool) -> Core {
        self.pull_missing = yes;
        self
    }

    fn image_ok(&self, image: &str, images: &Catalog) -> Result<(), String> {
        if self.pull_missing {
            image
                .parse::<ImageRef>()
                .map(|_| ())
                .map_err(|e| format!("image {image:?}: {e}"))
        } else {
            image_available(image, images)
        }
    }

    /// Handles one event at `now`.
    pub fn handle(&mut self, event: Event, now: Time) -> Vec<Action> {
        let mut out = Vec::new();
        if now.wall_trusted {
            self.wall_anchor = Some((now.wall_ms, now.mono_ms));
        }
        self.last_now = now;
        let before = self.status_key();
        let finished_before = self.finished();
        let memos_before = self.service_memos();
        let queue_changes = self.queue.changes;
        match event {
            Event::Started => {
                out.push(Action::Event(EventBody::AgentStarted {
                    version: self.cfg.agent_version.clone(),
                }));
            }
            Event::Connected => out.push(Action::Status(self.status(now))),
            Event::Restored {
                cluster,
                node,
                finished,
                services,
                last_wall_ms,
                images,
                adopted,
            } => {
                self.restored_services =
                    services.into_iter().map(|m| (m.name.clone(), m)).collect();
                if let (Some(w), None) = (last_wall_ms, self.wall_anchor) {
                    self.wall_anchor = Some((w, now.mono_ms));
                }
                let docs = [(Scope::Cluster, cluster), (Scope::Node, node)];
                self.on_restored(docs, finished, adopted, &images, now, &mut out)
            }
            Event::DesiredPayload {
                scope,
                payload,
                images,
            } => self.on_payload(scope, &payload, &images, now, &mut out),
            Event::LocalDesired {
                tasks: Err(reason), ..
            } => reject(&mut out, Scope::Node, None, reason),
            Event::LocalDesired {
                tasks: Ok(tasks),
                images,
            } => {
                self.local = true;
                let version = self.node_doc.as_ref().map_or(0, |d| d.version) + 1;
                let doc = DesiredState {
                    version,
                    cluster: self.cfg.cluster.clone(),
                    node: Some(self.cfg.node.clone()),
                    tasks,
                    signature: None,
                };
                match doc.validate() {
                    Ok(()) => self.on_doc(Scope::Node, doc, &images, now, &mut out),
                    Err(e) => reject(&mut out, Scope::Node, None, e.to_string()),
                }
            }
            Event::StartProgress { task, report } => {
                if self.tasks.get(&task).is_some_and(|t| t.start_pending) {
                    out.push(Action::Event(report));
                }
            }
            Event::ContainerStarted {
                task,
                container,
                pid,
            } => self.on_started(&task, &container, pid, now, &mut out),
            Event::TaskStarted { task } => self.on_task_started(&task, now, &mut out),
            Event::TaskNetwork { task, endpoints } => self.on_task_network(&task, endpoints),
            Event::ContainerStartFailed {
                task,
                container,
                reason,
            } => self.on_container_start_failed(&task, &container, reason, now, &mut out),
            Event::TaskStartFailed { task, reason } => {
                self.on_start_failed(&task, reason, now, &mut out)
            }
            Event::ContainerExited {
                task,
                container,
                exit,
            } => self.on_exited(&task, &container, exit, now, &mut out),
            Event::TaskRemoved { task, error } => self.on_removed(&task, error, now, &mut out),
            Event::Shutdown => {
                self.shutting_down = true;
                let names: Vec<Name> = self.tasks.keys().cloned().collect();
                for name in names {
                    self.stop(&name, StopReason::Shutdown, now, &mut out);
                }
            }
            Event::Tick => self.on_tick(now, &mut out),
            Event::HealthResult {
                task,
                container,
                ok,
                output,
            } => self.on_health_result(&task, &container, ok, output, now, &mut out),
            Event::Load(load) => {
                self.load = load;
                if load_moved(&self.reported_load, &load) {
                    out.push(Action::Status(self.status(now)));
                }
            }
            Event::Metrics {
                tasks,
                mem_total_bytes,
            } => self.on_metrics(&tasks, mem_total_bytes, now, &mut out),
            Event::Drain { batch_deadline_ms } => self.on_drain(batch_deadline_ms, now, &mut out),
            Event::Activate => self.on_activate(now, &mut out),
            Event::TrustUpdate(update) => self.on_trust_update(&update, &mut out),
            Event::RunOffer { payload, images } => self.on_offer(&payload, &images, now, &mut out),
        }
        self.drive_services(now, &mut out);
        self.settle_claims(now, &mut out);
        self.check_drained(&mut out);
        let finished = self.finished();
        if finished != finished_before {
            out.push(Action::SaveFinished(finished));
        }
        let memos = self.service_memos();
        if memos != memos_before {
            out.push(Action::SaveServices(memos));
        }
        if self.queue.changes != queue_changes {
            out.push(Action::SaveQueue(self.queue_memo()));
        }
        if self.status_key() != before && !matches!(out.last(), Some(Action::Status(_))) {
            out.push(Action::Status(self.status(now)));
        }
        if out.iter().any(|a| matches!(a, Action::Status(_))) {
            self.reported_load = self.load;
        }
        out.extend(endpoints::changes(self, &before));
        out
    }

    /// Earliest monotonic deadline at which a `Tick` is needed.
    pub fn next_deadline(&self) -> Option<u64> {
        let now = self.last_now;
        let wall = self.effective_wall(now);
        let sched = self.tasks.values().filter_map(|t| {
            let st = t.sched.as_ref()?;
            match &schedule_of(&t.def)?.spec {
                ScheduleSpec::Rate { .. } => st.next_mono,
                ScheduleSpec::Cron { .. } => {
                    let wait = match (st.next_wall, wall) {
                        (Some(next), Some(w)) => next.saturating_sub(w).min(CRON_RECHECK_MS),
                        _ => CRON_RECHECK_MS,
                    };
                    Some(now.mono_ms + wait)
                }
            }
        });
        let health = self.tasks.values().filter_map(|t| t.next_health_check());
        let scaling = self
            .services
            .values()
            .filter_map(|s| s.next_deadline(now, wall));
        self.tasks
            .values()
            .filter_map(|t| t.deadline)
            .chain(sched)
            .chain(health)
            .chain(scaling)
            .chain(self.drain.and_then(|d| d.batch_deadline))
            .min()
    }

    /// The wall time to schedule by: the clock when trusted, else the last trusted time plus
    /// monotonic time since (None: never trusted and nothing saved, e.g. first boot at 1970).
    fn effective_wall(&self, now: Time) -> Option<u64> {
        if now.wall_trusted {
            return Some(now.wall_ms);
        }
        self.wall_anchor
            .map(|(w, m)| w + now.mono_ms.saturating_sub(m))
    }

    /// True when shutting down and nothing is left running.
    pub fn is_idle(&self) -> bool {
        self.tasks.values().all(|t| {
            matches!(t.phase, Phase::Stopped | Phase::Failed | Phase::Backoff) && !t.start_pending
        })
    }

    /// Image references of every desired task and every task the agent still knows (running,
    /// restarting, finished): what garbage collection must keep.
    pub fn images_in_use(&self) -> Vec<String> {
        let known = self.tasks.values().map(|t| &*t.def);
        let deployments = self.services.values().flat_map(|s| s.defs());
        let mut images: Vec<String> = self
            .desired()
            .into_values()
            .chain(known)
            .chain(deployments)
            .flat_map(|d| d.containers.iter().map(|c| c.image.clone()))
            .collect();
        images.sort();
        images.dedup();
        images
    }

    /// Tasks that have containers now (for metrics).
    pub fn active_tasks(&self) -> Vec<Name> {
        self.tasks
            .iter()
            .filter(|(_, t)| {
                matches!(
                    t.phase,
                    Phase::Starting | Phase::Running | Phase::Stopping { .. }
                )
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Current phase of a task (for tests and diagnostics).
    pub fn phase(&self, task: &Name) -> Option<Phase> {
        self.tasks.get(task).map(|t| t.phase)
    }

    /// The status report.
    pub fn status(&self, now: Time) -> Status {
        Status {
            node: self.cfg.node.clone(),
            state: self.node_state(),
            agent_version: self.cfg.agent_version.clone(),
            cluster_version: self.cluster_doc.as_ref().map_or(0, |d| d.version),
            node_version: self.node_doc.as_ref().map_or(0, |d| d.version),
            at_ms: now.wall_ms,
            tasks: self
                .tasks
                .iter()
                .map(|(name, t)| TaskStatus {
                    name: name.clone(),
                    revision: t.def.revision,
                    state: match t.phase {
                        Phase::Starting => TaskState::Pending,
                        Phase::Running => TaskState::Running,
                        Phase::Stopping { .. } | Phase::Removing => TaskState::Stopping,
                        Phase::Stopped | Phase::Backoff => TaskState::Stopped,
                        Phase::Failed => TaskState::Failed,
                    },
                    restarts: t.restarts,
                    last_exit: t.last_exit,
                    containers: t
                        .containers
                        .iter()
                        .map(|c| ContainerStatus {
                            name: c.name.clone(),
                            state: c.state,
                            pid: c.pid,
                            exit: c.exit,
                            health: c.health.status,
                            unfiltered: !crate::runtime::seccomp::AVAILABLE
                                || t.def
                                    .containers
                                    .iter()
                                    .find(|d| d.name == c.name)
                                    .is_some_and(|d| !d.security.filtered(true)),
                        })
                        .collect(),
                    service: t.service.as_ref().map(|l| l.service.clone()),
                    health: t.health(),
                    endpoints: endpoints::shown(t.phase == Phase::Running, &t.endpoints),
                })
                .collect(),
            services: self
                .services
                .iter()
                .map(|(name, s)| s.status(name, &self.tasks))
                .collect(),
            labels: self.labels.clone(),
            resources: self.load,
        }
    }

    /// Online, or draining until nothing runs, then drained.
    pub fn node_state(&self) -> NodeState {
        match self.drain {
            None => NodeState::Online,
            Some(_) if self.active_tasks().is_empty() && self.is_idle() => NodeState::Drained,
            Some(_) => NodeState::Draining,
        }
    }

    /// Tasks that ran to their end and stay stopped (what must survive a restart).
    /// Also batch jobs with progress (so completed runs are not repeated after a restart).
    /// A task stopped by the agent's own shutdown did not finish: it runs again after a
    /// restart (a scheduled one is kept for its last firing).
    fn finished(&self) -> Vec<FinishedTask> {
        self.tasks
            .values()
            .filter(|t| t.service.is_none() && t.run_of.is_none() && !t.drained)
            .filter_map(|t| {
                let idle = matches!(t.phase, Phase::Stopped | Phase::Failed) && !t.start_pending;
                let by_shutdown = t.stop_reason == Some(StopReason::Shutdown);
                let done = idle && (!by_shutdown || t.sched.is_some());
                let progress = batch_of(&t.def).map(|_| (t.batch_done, t.batch_failures));
                let resume = !done && progress.is_some_and(|(d, f)| d + f > 0 || by_shutdown);
                (done || resume).then(|| FinishedTask {
                    def: (*t.def).clone(),
                    failed: t.phase == Phase::Failed,
                    restarts: t.restarts,
                    last_exit: t.last_exit,
                    last_fire_ms: t.sched.as_ref().and_then(|s| s.last_fire_wall),
                    batch_progress: progress,
                    resume,
                })
            })
            .collect()
    }

    /// Takes back what the previous run of the agent saved: the applied documents, and the
    /// tasks that finished (so they do not run again), then starts everything else.
    fn on_restored(
        &mut self,
        docs: [(Scope, Option<Box<DesiredState>>); 2],
        finished: Vec<FinishedTask>,
        adopted: Vec<AdoptedTask>,
        images: &Catalog,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        for (scope, doc) in docs {
            let Some(doc) = doc.map(|d| *d) else { continue };
            // Saved documents are checked again: keys may have changed, the file may be forged.
            if let Err(reason) = self.trust.verify_desired(&doc) {
                let reason = format!("saved document: {reason}; ignored");
                reject(out, scope, Some(doc.version), reason);
                continue;
            }
            let right_place = doc.cluster == self.cfg.cluster
                && match scope {
                    Scope::Cluster => doc.node.is_none(),
                    Scope::Node => doc.node.as_ref() == Some(&self.cfg.node),
                };
            // The policy may have been tightened since: a saved task outside it is not restarted.
            let images_ok = doc
                .tasks
                .iter()
                .try_for_each(|t| self.policy.check(t))
                .and_then(|()| {
                    doc.tasks
                        .iter()
                        .flat_map(|t| &t.containers)
                        .try_for_each(|c| self.image_ok(&c.image, images))
                });
            match (right_place, images_ok) {
                (false, _) => reject(
                    out,
                    scope,
                    Some(doc.version),
                    "saved document is for another cluster or node; ignored".into(),
                ),
                (true, Err(reason)) => reject(
                    out,
                    scope,
                    Some(doc.version),
                    format!("saved document: {reason}"),
                ),
                (true, Ok(())) => {
                    out.push(Action::Event(EventBody::DesiredApplied {
                        scope,
                        version: doc.version,
                    }));
                    match scope {
                        Scope::Cluster => self.cluster_doc = Some(doc),
                        Scope::Node => self.node_doc = Some(doc),
                    }
                }
            }
        }
        let desired: BTreeMap<Name, TaskDefinition> = self
            .desired()
            .into_iter()
            .map(|(n, d)| (n, d.clone()))
            .collect();
        // Adopted tasks first (services' after their records exist): what they carry over
        // from `finished` (restarts, batch progress, last firing) is merged into them.
        let (plain, of_services): (Vec<_>, Vec<_>) = adopted
            .into_iter()
            .partition(|a| self.service_of_task(&a.def.family).is_none());
        for a in &plain {
            self.insert_adopted(a, None, now);
        }
        let mut resume = Vec::new();
        for f in finished {
            let name = f.def.family.clone();
            if let Some(rec) = self.tasks.get_mut(&name) {
                if desired.get(&name) == Some(&f.def) && *rec.def == f.def {
                    rec.take_finished(&f);
                }
                continue;
            }
            if desired.get(&name) == Some(&f.def) {
                let mut rec = TaskRec::new(Arc::new(f.def), now);
                rec.phase = if f.failed && !f.resume {
                    Phase::Failed
                } else {
                    Phase::Stopped
                };
                rec.restarts = f.restarts;
                rec.last_exit = f.last_exit;
                if let Some(st) = &mut rec.sched {
                    st.last_fire_wall = f.last_fire_ms;
                }
                if let Some((done, failures)) = f.batch_progress {
                    rec.batch_done = done;
                    rec.batch_failures = failures;
                }
                if f.resume {
                    resume.push(name.clone());
                }
                self.tasks.insert(name, rec);
            }
        }
        for a in &plain {
            self.replay_adopted(a, now, out);
        }
        self.reconcile(now, out);
        for a in &of_services {
            self.adopt_service_task(a, now, out);
        }
        for name in resume {
            self.launch(&name, now, out);
        }
    }

    /// The status report without its timestamp: what decides whether a new report is due.
    /// The load is left out: it has its own threshold ([`LOAD_REPORT_CPU_STEP`]).
    fn status_key(&self) -> Status {
        let mut key = self.status(Time {
            wall_trusted: false,
            mono_ms: 0,
            wall_ms: 0,
        });
        key.resources = skiff_proto::NodeResources::default();
        key
    }

    fn on_payload(
        &mut self,
        scope: Scope,
        payload: &[u8],
        images: &Catalog,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        match decode_as(Kind::DesiredState, payload) {
            Ok(Message::DesiredState(doc)) => {
                // Before anything else: an unsigned or forged document is not looked at further.
                if let Err(reason) = self.trust.verify_desired(&doc) {
                    return reject(out, scope, Some(doc.version), reason);
                }
                self.on_doc(scope, doc, images, now, out)
            }
            Ok(other) => reject(
                out,
                scope,
                None,
                format!("unexpected {} message", other.kind().name()),
            ),
            Err(e) => reject(out, scope, None, e.to_string()),
        }
    }

    fn on_doc(
        &mut self,
        scope: Scope,
        doc: DesiredState,
        images: &Catalog,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let version = Some(doc.version);
        if doc.cluster != self.cfg.cluster {
            let reason = format!(
                "document is for cluster {}, this node is in {}",
                doc.cluster, self.cfg.cluster
            );
            return reject(out, scope, version, reason);
        }
        match (scope, &doc.node) {
            (Scope::Cluster, Some(n)) => {
                return reject(
                    out,
                    scope,
                    version,
                    format!("node document for {n} on the cluster topic"),
                )
            }
            (Scope::Node, None) => {
                return reject(
                    out,
                    scope,
                    version,
                    "cluster document on a node topic".into(),
                )
            }
            (Scope::Node, Some(n)) if *n != self.cfg.node => {
                return reject(
                    out,
                    scope,
                    version,
                    format!("document is for node {n}, this is {}", self.cfg.node),
                )
            }
            _ => {}
        }
        if self.shutting_down {
            return reject(out, scope, version, "the agent is shutting down".into());
        }
        let current = match scope {
            Scope::Cluster => &self.cluster_doc,
            Scope::Node => &self.node_doc,
        };
        if let Some(cur) = current {
            if doc.version == cur.version && doc.tasks == cur.tasks {
                return; // the broker re-delivered the retained document
            }
            if doc.version <= cur.version {
                let reason = format!(
                    "replayed: version {} is not newer than the applied version {}",
                    doc.version, cur.version
                );
                return reject(out, scope, version, reason);
            }
        }
        for t in &doc.tasks {
            if let Some(z) = self.unknown_zone(t) {
                let reason = format!(
                    "task {}: time zone {z:?} is not known on this node (no zoneinfo file for it; install tzdata)",
                    t.family
                );
                return reject(out, scope, version, reason);
            }
            if let Err(reason) = self.policy.check(t) {
                return reject(out, scope, version, reason);
            }
            for c in &t.containers {
                if let Err(reason) = self.image_ok(&c.image, images) {
                    let reason = format!("task {} container {}: {reason}", t.family, c.name);
                    return reject(out, scope, version, reason);
                }
            }
        }
        if let Err(reason) = self.check_service_names(scope, &doc) {
            return reject(out, scope, version, reason);
        }
        out.push(Action::Event(EventBody::DesiredApplied {
            scope,
            version: doc.version,
        }));
        if !self.local {
            out.push(Action::SaveDesired {
                scope,
                doc: doc.clone(),
            });
        }
        match scope {
            Scope::Cluster => self.cluster_doc = Some(doc),
            Scope::Node => self.node_doc = Some(doc),
        }
        self.reconcile(now, out);
    }

    /// The merged desired tasks: the node's document over the cluster's.
    fn desired(&self) -> BTreeMap<Name, &TaskDefinition> {
        let mut all = BTreeMap::new();
        for doc in [&self.cluster_doc, &self.node_doc].into_iter().flatten() {
            for t in &doc.tasks {
                all.insert(t.family.clone(), t);
            }
        }
        for t in self.claimed_defs() {
            all.insert(t.family.clone(), t);
        }
        all
    }

    fn reconcile(&mut self, now: Time, out: &mut Vec<Action>) {
        let (services, desired): (BTreeMap<_, _>, BTreeMap<_, _>) = self
            .desired()
            .into_iter()
            .map(|(n, d)| (n, Arc::new(d.clone())))
            .partition(|(_, d)| service_of(d).is_some());
        self.reconcile_services(services, now, out);
        // Extra runs (overlap `allow`) end with their scheduled task's definition.
        let orphans: Vec<Name> = self
            .tasks
            .iter()
            .filter(|(_, t)| {
                t.run_of.as_ref().is_some_and(|of| {
                    desired
                        .get(of)
                        .is_none_or(|d| self.tasks.get(of).is_none_or(|p| p.def != *d))
                })
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in orphans {
            self.stop(&name, StopReason::Removed, now, out);
        }
        let plain = self
            .tasks
            .iter()
            .filter(|(_, t)| t.service.is_none() && t.run_of.is_none());
        let names: BTreeSet<Name> = plain
            .map(|(n, _)| n)
            .chain(desired.keys())
            .cloned()
            .collect();
        for name in names {
            let want = desired.get(&name);
            let Some(rec) = self.tasks.get_mut(&name) else {
                if let Some(def) = want {
                    self.start_new(def.clone(), now, out);
                }
                continue;
            };
            match want {
                None => self.stop(&name, StopReason::Removed, now, out),
                Some(def) if *def != rec.def => {
                    if matches!(rec.phase, Phase::Stopped | Phase::Failed | Phase::Backoff) {
                        self.tasks.remove(&name);
                        self.start_new(def.clone(), now, out);
                    } else {
                        self.stop(&name, StopReason::Replaced, now, out);
                    }
                }
                Some(_) => {}
            }
        }
    }

    fn start_new(&mut self, def: Arc<TaskDefinition>, now: Time, out: &mut Vec<Action>) {
        let rec = TaskRec::new(def.clone(), now);
        let scheduled = rec.sched.is_some();
        self.tasks.insert(def.family.clone(), rec);
        if scheduled {
            self.plan_next(&def.family, now);
        } else {
            self.launch(&def.family, now, out);
        }
    }

    /// Computes a scheduled task's next firing from now (never at or before its last firing).
    fn plan_next(&mut self, name: &Name, now: Time) {
        let wall = self.effective_wall(now);
        let Some(t) = self.tasks.get_mut(name) else {
            return;
        };
        let Some(spec) = schedule_of(&t.def).map(|s| s.spec.clone()) else {
            return;
        };
        let Some(st) = &mut t.sched else { return };
        match spec {
            ScheduleSpec::Rate { every_secs } => {
                st.next_mono = Some(now.mono_ms + u64::from(every_secs) * 1000)
            }
            ScheduleSpec::Cron {
                expr,
                utc_offset_minutes,
                zone,
            } => {
                // After the last firing, so that firings missed while the agent was down are
                // seen as missed, and a clock that went back never repeats one.
                let base = st.last_fire_wall.or(wall);
                let zones = &self.zones;
                st.next_wall = base.and_then(|b| {
                    let e: cron::CronExpr = expr.parse().ok()?;
                    cron::next_firing(&e, b, i32::from(utc_offset_minutes), zone.as_deref(), zones)
                });
            }
        }
    }

    /// Fires every scheduled task that is due.
    fn on_schedules(&mut self, now: Time, out: &mut Vec<Action>) {
        let wall = self.effective_wall(now);
        let names: Vec<Name> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.sched.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        // Cron schedules that could not be planned before (no trusted wall time yet).
        for name in &names {
            let unplanned_cron = self.tasks.get(name).is_some_and(|t| {
                matches!(
                    schedule_of(&t.def).map(|s| &s.spec),
                    Some(ScheduleSpec::Cron { .. })
                ) && t.sched.as_ref().is_some_and(|s| s.next_wall.is_none())
            });
            if wall.is_some() && unplanned_cron {
                self.plan_next(name, now);
            }
        }
        for name in names {
            let Some(t) = self.tasks.get_mut(&name) else {
                continue;
            };
            let Some(schedule) = schedule_of(&t.def).cloned() else {
                continue;
            };
            let Some(st) = &mut t.sched else { continue };
            let due = match &schedule.spec {
                ScheduleSpec::Rate { .. } => st.next_mono.is_some_and(|n| now.mono_ms >= n),
                ScheduleSpec::Cron { .. } => {
                    matches!((st.next_wall, wall), (Some(n), Some(w)) if w >= n)
                }
            };
            if !due {
                continue;
            }
            // Late by more than a minute: the agent was down or the clock jumped forward.
            let missed = match (&schedule.spec, st.next_wall, wall) {
                (ScheduleSpec::Cron { .. }, Some(n), Some(w)) => w - n > MISSED_AFTER_MS,
                _ => false,
            };
            st.last_fire_wall = wall.or(st.last_fire_wall);
            self.plan_next(&name, now);
            if missed && schedule.missed == MissedRunPolicy::Skip {
                out.push(Action::Event(EventBody::ScheduleSkipped {
                    task: name.clone(),
                    reason:
                        "missed while the agent was down or the clock jumped (missedRunPolicy skip)"
                            .into(),
                }));
                continue;
            }
            self.fire(&name, schedule.overlap, now, out);
        }
    }

    /// One firing of a scheduled task.
    fn fire(&mut self, name: &Name, overlap: OverlapPolicy, now: Time, out: &mut Vec<Action>) {
        let Some(t) = self.tasks.get_mut(name) else {
            return;
        };
        // A scheduled batch job waiting to retry a failed run is still running its job.
        let retrying = t.phase == Phase::Backoff && batch_of(&t.def).is_some();
        let idle = matches!(t.phase, Phase::Stopped | Phase::Failed | Phase::Backoff)
            && !t.start_pending
            && !retrying;
        if self.drain.is_some() {
            out.push(Action::Event(EventBody::ScheduleSkipped {
                task: name.clone(),
                reason: "the node is draining".into(),
            }));
            return;
        }
        if idle {
            t.restarts = t
                .restarts
                .saturating_add(u32::from(t.last_exit.is_some() || t.failure.is_some()));
            t.new_job();
            return self.launch(name, now, out);
        }
        match overlap {
            OverlapPolicy::Forbid => out.push(Action::Event(EventBody::ScheduleSkipped {
                task: name.clone(),
                reason: "the previous run is still running (overlapPolicy forbid)".into(),
            })),
            OverlapPolicy::Replace => {
                if let Some(st) = &mut t.sched {
                    st.fire_pending = true;
                }
                self.stop(name, StopReason::Replaced, now, out);
            }
            OverlapPolicy::Allow => self.fire_beside(name, now, out),
        }
    }

    /// Overlap `allow`: another run of a busy scheduled task, as a task `{family}.{n}` that is
    /// forgotten once it ends (its run is recorded in the family's history).
    fn fire_beside(&mut self, name: &Name, now: Time, out: &mut Vec<Action>) {
        let Some(def) = self.tasks.get(name).map(|t| t.def.clone()) else {
            return;
        };
        let running = self
            .tasks
            .values()
            .filter(|t| t.run_of.as_ref() == Some(name))
            .count()
            + 1;
        let free = (2..=skiff_proto::limits::MAX_CONCURRENT_RUNS)
            .filter_map(|n| format!("{name}.{n}").parse::<Name>().ok())
            .find(|n| !self.tasks.contains_key(n));
        let Some(task) = free.filter(|_| running < skiff_proto::limits::MAX_CONCURRENT_RUNS) else {
            out.push(Action::Event(EventBody::ScheduleSkipped {
                task: name.clone(),
                reason: format!(
                    "{running} runs are still running, at most {} at once (overlapPolicy allow)",
                    skiff_proto::limits::MAX_CONCURRENT_RUNS
                ),
            }));
            return;
        };
        let mut d = (*def).clone();
        d.family = task.clone();
        d.extensions.clear();
        d.restart_policy = RestartPolicy::Never;
        let mut rec = TaskRec::new(Arc::new(d), now);
        rec.run_of = Some(name.clone());
        self.tasks.insert(task.clone(), rec);
        self.launch(&task, now, out);
    }

    /// Issues `StartTask` for a known task.
    fn launch(&mut self, name: &Name, now: Time, out: &mut Vec<Action>) {
        let grace = self.cfg.stop_grace_ms;
        let draining = self.drain.is_some();
        let Some(t) = self.tasks.get_mut(name) else {
            return;
        };
        if draining {
            // A draining node starts nothing: the task waits for `Activate`.
            t.phase = Phase::Stopped;
            t.deadline = None;
            t.drained = true;
            return;
        }
        t.drained = false;
        t.phase = Phase::Starting;
        t.start_pending = true;
        t.stop_reason = None;
        t.failure = None;
        t.deadline = None;
        t.started_at_ms = now.mono_ms;
        t.started_wall_ms = now.wall_ms;
        t.containers = container_recs(&t.def, grace);
        out.push(Action::Event(EventBody::TaskStarting {
            task: name.clone(),
            revision: t.def.revision,
            attempt: t.restarts + 1,
        }));
        if let Some(secs) = batch_of(&t.def).and_then(|b| b.timeout_secs) {
            t.deadline = Some(now.mono_ms + u64::from(secs) * 1000);
        }
        out.push(Action::StartTask { def: t.def.clone() });
    }

    /// Begins stopping a task for `reason` (idempotent).
    fn stop(&mut self, name: &Name, reason: StopReason, now: Time, out: &mut Vec<Action>) {
        let Some(t) = self.tasks.get_mut(name) else {
            return;
        };
        // A removal or replacement outranks an exit or failure already being handled.
        if t.stop_reason.is_none()
            || matches!(
                reason,
                StopReason::Removed
                    | StopReason::Replaced
                    | StopReason::Shutdown
                    | StopReason::ServiceUpdated
                    | StopReason::Drained
            )
        {
            t.stop_reason = Some(reason);
        }
        match t.phase {
            Phase::Starting | Phase::Running => {
                t.phase = Phase::Stopping { killed: false };
                for c in &mut t.containers {
                    c.kill_at = Some(now.mono_ms + c.stop_timeout_ms);
                }
                t.deadline = t.next_kill();
                t.signal_running(name, Signal::Term, out);
                self.maybe_remove(name, out);
            }
            Phase::Stopping { .. } | Phase::Removing => {}
            Phase::Stopped | Phase::Backoff | Phase::Failed => {
                t.deadline = None;
                self.finish(name, now, out);
            }
        }
    }

    /// Issues `RemoveTask` once nothing of the task runs or is being started.
    fn maybe_remove(&mut self, name: &Name, out: &mut Vec<Action>) {
        let Some(t) = self.tasks.get_mut(name) else {
            return;
        };
        let running = t
            .containers
            .iter()
            .any(|c| c.state == ContainerState::Running || (c.starting && !t.start_pending));
        if matches!(t.phase, Phase::Stopping { .. }) && !running && !t.start_pending {
            t.phase = Phase::Removing;
            t.deadline = None;
            let ended = t.ended_run();
            out.push(Action::RemoveTask {
                task: name.clone(),
                ended,
            });
        }
    }

    fn on_started(
        &mut self,
        name: &Name,
        container: &Name,
        pid: u32,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let Some(t) = self.tasks.get_mut(name) else {
            return;
        };
        let stopping = matches!(t.phase, Phase::Stopping { .. });
        let killed = matches!(t.phase, Phase::Stopping { killed: true });
        let running_phase = t.phase == Phase::Running;
        let Some(c) = t.containers.iter_mut().find(|c| c.name == *container) else {
            return;
        };
        if c.state != ContainerState::Pending {
            return;
        }
        c.state = ContainerState::Running;
        c.pid = Some(pid);
        c.starting = false;
        if running_phase {
            c.health.on_started(now.mono_ms, 0);
        }
        out.push(Action::Event(EventBody::ContainerStarted {
            task: name.clone(),
            container: container.clone(),
            pid,
        }));
        if let Some(exit) = c.early_exit.take() {
            return self.on_exited(name, container, exit, now, out);
        }
        if !stopping {
            self.start_ready_containers(name, now, out);
            return;
        }
        if stopping {
            // Started after the task was told to stop: stop it too.
            let signal = if killed { Signal::Kill } else { Signal::Term };
            out.push(Action::Signal {
                task: name.clone(),
                container: container.clone(),
                signal,
            });
        }
    }

    fn on_task_started(&mut self, name: &Name, now: Time, out: &mut Vec<Action>) {
        let grace = self
            .tasks
            .get(name)
            .map_or(0, |t| health::service_grace_ms(t, self));
        let Some(t) = self.tasks.get_mut(name) else {
            return;
        };
        if !t.start_pending {
            return;
        }
        t.start_pending = false;
        t.initial_starts_done();
        if t.phase == Phase::Starting {
            t.phase = Phase::Running;
            for c in &mut t.containers {
                c.health.on_started(now.mono_ms, grace);
            }
            out.push(Action::Event(EventBody::TaskRunning { task: name.clone() }));
        }
        self.maybe_remove(name, out);
        self.start_ready_containers(name, now, out);
    }

    fn on_start_failed(&mut self, name: &Name, reason: String, now: Time, out: &mut Vec<Action>) {
        let Some(t) = self.tasks.get_mut(name) else {
            return;
        };
        if !t.start_pending {
            return;
        }
        t.start_pending = false;
        t.initial_starts_done();
        t.failure = Some(reason.clone());
        out.push(Action::Event(EventBody::TaskFailed {
            task: name.clone(),
            reason,
        }));
        if t.phase == Phase::Starting {
            t.phase = Phase::Running; // so that stop() signals what did start
            self.stop(name, StopReason::StartFailed, now, out);
        } else {
            self.maybe_remove(name, out);
        }
    }

    fn on_exited(
        &mut self,
        name: &Name,
        container: &Name,
        exit: ExitInfo,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let Some(t) = self.tasks.get_mut(name) else {
            return;
        };
        let Some(c) = t.containers.iter_mut().find(|c| c.name == *container) else {
            return;
        };
        if c.state == ContainerState::Pending && c.starting {
            c.early_exit = Some(exit);
            return;
        }
        if c.state != ContainerState::Running {
            return;
        }
        c.state = ContainerState::Exited;
        c.exit = Some(exit);
        c.pid = None;
        c.health.stop();
        let essential = c.essential;
        out.push(Action::Event(EventBody::ContainerExited {
            task: name.clone(),
            container: container.clone(),
            exit,
        }));
        if essential && t.stop_reason.is_none() {
            t.last_exit = Some(exit);
        }
        if essential && matches!(t.phase, Phase::Starting | Phase::Running) {
            self.stop(name, StopReason::EssentialExited, now, out);
        } else {
            self.maybe_remove(name, out);
            self.start_ready_containers(name, now, out);
        }
    }

    fn on_removed(&mut self, name: &Name, error: Option<String>, now: Time, out: &mut Vec<Action>) {
        let Some(t) = self.tasks.get_mut(name) else {
            return;
        };
        if t.phase != Phase::Removing {
            return;
        }
        if let Some(e) = error {
            out.push(Action::Event(EventBody::TaskFailed {
                task: name.clone(),
                reason: format!("cleanup: {e}"),
            }));
        }
        t.phase = Phase::Stopped;
        let reason = t.stop_reason.unwrap_or(StopReason::EssentialExited);
        let exit = if reason == StopReason::EssentialExited {
            t.last_exit
        } else {
            None
        };
        out.push(Action::Event(EventBody::TaskStopped {
            task: name.clone(),
            reason,
            exit,
        }));
        out.push(Action::RecordRun(RunRecord {
            task: t.run_of.clone().unwrap_or_else(|| name.clone()),
            revision: t.def.revision,
            attempt: t.restarts + 1,
            started_at_ms: t.started_wall_ms,
            ended_at_ms: now.wall_ms,
            reason,
            exit,
            failure: t.failure.clone(),
        }));
        if t.run_of.is_none() {
            out.push(Action::ForgetTask { task: name.clone() });
        }
        self.finish(name, now, out);
    }

    /// A task is stopped and cleaned: forget it, replace it, restart it or leave it.
    fn finish(&mut self, name: &Name, now: Time, out: &mut Vec<Action>) {
        if self.tasks.get(name).is_some_and(|t| t.service.is_some()) {
            return self.finish_service_task(name, now, out);
        }
        if self.tasks.get(name).is_some_and(|t| t.run_of.is_some()) {
            self.tasks.remove(name);
            return;
        }
        let want = self.desired().get(name).map(|d| (*d).clone());
        let Some(t) = self.tasks.get_mut(name) else {
            return;
        };
        if t.stop_reason == Some(StopReason::Drained) && want.as_ref() == Some(&*t.def) {
            // Stopped by a drain: started again on `Activate`.
            t.phase = Phase::Stopped;
            t.drained = true;
            return;
        }
        let Some(want) = want.filter(|_| !self.shutting_down) else {
            if !self.shutting_down {
                self.tasks.remove(name);
            }
            return;
        };
        if *t.def != want || t.stop_reason == Some(StopReason::Removed) {
            // Replaced, or desired again while it was being removed: a new run.
            self.tasks.remove(name);
            return self.start_new(Arc::new(want), now, out);
        }
        let on_its_own = matches!(
            t.stop_reason,
            Some(StopReason::EssentialExited | StopReason::StartFailed | StopReason::TimedOut)
        );
        if let (Some(b), true) = (batch_of(&t.def).cloned(), on_its_own) {
            let ok = t.stop_reason == Some(StopReason::EssentialExited)
                && t.failure.is_none()
                && t.last_exit.is_some_and(|e| e.code == 0);
            if ok {
                t.batch_done += 1;
                if t.batch_done < b.completions {
                    t.restarts += 1;
                    return self.launch(name, now, out);
                }
                t.phase = Phase::Stopped;
                return;
            }
            t.batch_failures += 1;
            if t.batch_failures > b.retries {
                t.phase = Phase::Failed;
                out.push(Action::Event(EventBody::TaskFailed {
                    task: name.clone(),
                    reason: format!(
                        "batch failed after {} attempts ({} of {} completions)",
                        t.batch_failures, t.batch_done, b.completions
                    ),
                }));
                return;
            }
            let delay = backoff_ms(t.batch_failures);
            t.phase = Phase::Backoff;
            t.deadline = Some(now.mono_ms + delay);
            out.push(Action::Event(EventBody::TaskRestarting {
                task: name.clone(),
                attempt: t.restarts + 2,
                delay_ms: delay,
            }));
            return;
        }
        if let Some(st) = &mut t.sched {
            // Scheduled: wait for the next firing; a `replace` firing starts now.
            t.phase = if t.failure.is_some() {
                Phase::Failed
            } else {
                Phase::Stopped
            };
            if std::mem::take(&mut st.fire_pending) {
                t.restarts = t.restarts.saturating_add(1);
                t.new_job();
                self.launch(name, now, out);
            }
            return;
        }
        let failed_start = t.failure.is_some();
        let restart = match t.def.restart_policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed_start || t.last_exit.is_none_or(|e| e.code != 0),
            RestartPolicy::Never => false,
        };
        let on_its_own = matches!(
            t.stop_reason,
            Some(StopReason::EssentialExited | StopReason::StartFailed)
        );
        if !restart || !on_its_own {
            t.phase = if failed_start {
                Phase::Failed
            } else {
                Phase::Stopped
            };
            return;
        }
        t.back_off(name, now, out);
    }

    fn on_tick(&mut self, now: Time, out: &mut Vec<Action>) {
        self.on_schedules(now, out);
        self.run_health_checks(now, out);
        self.on_scaling_schedules(now, out);
        self.on_drain_deadline(now, out);
        let due: Vec<Name> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.deadline.is_some_and(|d| d <= now.mono_ms))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let Some(t) = self.tasks.get_mut(&name) else {
                continue;
            };
            match t.phase {
                Phase::Stopping { killed: false } => {
                    // SIGKILL each container whose stop timeout is over.
                    for c in t.containers.iter_mut() {
                        if c.kill_at.is_some_and(|k| k <= now.mono_ms) {
                            c.kill_at = None;
                            if c.state == ContainerState::Running {
                                out.push(Action::Signal {
                                    task: name.clone(),
                                    container: c.name.clone(),
                                    signal: Signal::Kill,
                                });
                            }
                        }
                    }
                    t.deadline = t.next_kill();
                    if t.deadline.is_none() {
                        t.phase = Phase::Stopping { killed: true };
                        t.deadline = Some(now.mono_ms + KILL_WAIT_MS);
                    }
                }
                Phase::Stopping { killed: true } => {
                    // The exits never came (launcher lost): remove anyway, marking them unknown.
                    for c in t
                        .containers
                        .iter_mut()
                        .filter(|c| c.state == ContainerState::Running)
                    {
                        c.state = ContainerState::Exited;
                        c.pid = None;
                    }
                    t.start_pending = false;
                    for c in t.containers.iter_mut() {
                        c.starting = false;
                    }
                    self.maybe_remove(&name, out);
                }
                Phase::Backoff => {
                    t.deadline = None;
                    t.restarts += 1;
                    self.launch(&name, now, out);
                }
                Phase::Starting | Phase::Running if batch_of(&t.def).is_some() => {
                    // A batch run over its timeout.
                    t.deadline = None;
                    self.stop(&name, StopReason::TimedOut, now, out);
                }
                _ => t.deadline = None,
            }
        }
    }
}

/// Restart delay after `rapid` short runs in a row: 1 s, 2 s, 4 s ... 60 s.
pub fn backoff_ms(rapid: u32) -> u64 {
    let shift = rapid.saturating_sub(1).min(16);
    (BACKOFF_BASE_MS << shift).min(BACKOFF_MAX_MS)
}

fn reject(out: &mut Vec<Action>, scope: Scope, version: Option<u64>, reason: String) {
    out.push(Action::Event(EventBody::DesiredRejected {
        scope,
        version,
        reason,
    }));
}

/// Checks that an image reference is valid and in the store.
pub fn image_available(image: &str, images: &Catalog) -> Result<(), String> {
    let r: ImageRef = image.parse().map_err(|e| format!("image {image:?}: {e}"))?;
    let canonical = r.to_string();
    let by_digest = r
        .digest()
        .is_some_and(|d| images.values().any(|v| *v == d.to_string()));
    if images.contains_key(&canonical) || by_digest {
        Ok(())
    } else {
        Err(format!(
            "image {canonical} is not in the local store (add it with `skiff image import`)"
        ))
    }
}
