//! The driver: wires the shells to the core.
//!
//! One loop receives everything that happens (broker messages, container exits, results of
//! actions, timers, shutdown), turns it into a [`core::Event`], hands it to [`Core::handle`] and
//! performs the returned [`Action`]s. Actions that take time (starting, removing a task) run in
//! their own tokio tasks and report back as events; the loop never waits on them, nor on the
//! broker (publishing uses `try_publish`: while offline, messages are dropped and counted; the
//! durable outbox is a later step).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use skiff_proto::codec::{decode, decode_as, encode, Kind, Message};
use skiff_proto::topic::Topic;
use skiff_proto::{
    Command, CommandBody, Event as EventMsg, EventBody, HealthTest, Metrics, MetricsSample, Name,
    NodeResources, NodeState, Reply, ReplyBody, Scope, Status, TaskDefinition,
};
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::config::{MirrorJson, StopPolicy, Validated};
use crate::core::{Action, Catalog, Core, CoreConfig, Event, Signal};
use crate::images::{ImageRef, ImageStore, ResolvedImage};
use crate::logs::Logs;
use crate::metrics::Sampler;
use crate::mqtt::{self, Inbound};
use crate::notify::Notifier;
use crate::outbox::{self, EntryKind, Outbox};
use crate::runtime::{ContainerExit, Runtime, RuntimeConfig};
use crate::store::StateStore;
use crate::{display, local};

/// Where desired state comes from.
#[derive(Debug, Clone)]
pub enum Mode {
    /// From the broker.
    Broker,
    /// From task-definition files in a directory; events and container output are printed.
    Local(PathBuf),
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("image store at {path}: {source}")]
    Store {
        path: PathBuf,
        source: crate::images::StoreError,
    },
    #[error("state store: {0}")]
    State(crate::store::StateError),
    #[error("container runtime: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Agent version reported in status and events.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the agent until `shutdown` resolves, then stops every task and returns.
pub async fn run(
    cfg: Validated,
    mode: Mode,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let images_dir = cfg.data_dir.join("images");
    let store = ImageStore::open(&images_dir).map_err(|source| AgentError::Store {
        path: images_dir,
        source,
    })?;
    let stdio_dir = cfg.run_dir.join("stdio");
    std::fs::create_dir_all(&stdio_dir).map_err(|source| AgentError::Io {
        what: "cannot create",
        path: stdio_dir.clone(),
        source,
    })?;
    let (runtime, mut exits) = Runtime::start(RuntimeConfig {
        run_dir: cfg.run_dir.clone(),
        cgroup_parent: cfg.cgroup_parent.to_string(),
        launcher_exe: PathBuf::from("/proc/self/exe"),
        userns: cfg.userns,
    })
    .await?;
    if let Err(e) = runtime.enable_bridge(cfg.network.clone()).await {
        tracing::error!("{e}");
    }
    if let Some(awsvpc) = cfg.awsvpc.clone() {
        if let Err(e) = runtime.enable_awsvpc(awsvpc).await {
            tracing::error!("{e}");
        }
    }
    let state_dir = cfg.data_dir.join("state");
    let state = StateStore::open(state_dir).map_err(AgentError::State)?;
    let saved = state.load();
    // Containers that outlived the previous agent (kept by its launcher) and runs it ended
    // without saving are taken over; everything else it left is removed.
    let adopted = adopted_tasks(&runtime, runtime.take_kept(), &state);
    let keep: BTreeSet<Name> = adopted.iter().map(|a| a.def.family.clone()).collect();
    let stale = runtime.cleanup_stale_keeping(&keep).await?;
    if !stale.is_empty() {
        tracing::warn!(containers = ?stale, "removed containers left by a previous run");
    }
    let logs_dir = cfg.run_dir.join("logs");
    let logs =
        Logs::new(logs_dir.clone(), cfg.log_limit_bytes).map_err(|source| AgentError::Io {
            what: "cannot create",
            path: logs_dir,
            source,
        })?;

    let local = matches!(mode, Mode::Local(_));
    let conn = match &mode {
        Mode::Broker => {
            let mut opts =
                connect_options(&cfg.node, &cfg.cluster, cfg.broker.clone(), cfg.keepalive);
            if let Some((_, will)) = opts.last_will.as_mut() {
                *will = labelled_offline_status(&cfg, crate::clock::wall_ms());
            }
            // The queue's offers are acknowledged once decided and saved; the session stays
            // at the broker so an offer not acknowledged when the agent died comes back to it.
            let session = if cfg.queue.enabled {
                opts.subscriptions
                    .push(Topic::shared_queue_filter(&cfg.cluster));
                mqtt::SessionOptions {
                    persistent: true,
                    held_topic: Some(
                        Topic::Queue {
                            cluster: cfg.cluster.clone(),
                        }
                        .to_topic(),
                    ),
                }
            } else {
                mqtt::SessionOptions::default()
            };
            Some(mqtt::connect_session(
                opts,
                cfg.broker_tls.as_ref().map(|t| t.client.clone()),
                session,
            ))
        }
        Mode::Local(_) => None,
    };
    let (client, mut inbound) = match conn {
        Some(c) => (Some(c.client), Some(c.inbound)),
        None => (None, None),
    };
    let outbox_dir = cfg.data_dir.join("outbox");
    let outbox = Outbox::open((!local).then(|| outbox_dir.clone()), cfg.outbox_max_bytes).map_err(
        |source| AgentError::Io {
            what: "cannot open the outbox",
            path: outbox_dir,
            source,
        },
    )?;
    if !outbox.is_empty() {
        tracing::info!(
            messages = outbox.len(),
            "events and metrics from before the restart wait for the broker"
        );
    }
    let mut outbox_tick = tokio::time::interval(outbox::FLUSH_EVERY);
    let mut flushes: u64 = 0;
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let clock = Clock::with_saved_wall(saved.last_wall_ms);
    // Not at start: desired state (from the broker or the local directory) must be known first,
    // or preloaded images could be collected before the tasks that need them are seen.
    let mut gc_tick = tokio::time::interval_at(tokio::time::Instant::now() + GC_FIRST, GC_INTERVAL);
    gc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let gc_policy = crate::images::gc::GcPolicy {
        keep_per_repository: cfg.images.keep_per_repository.max(1),
        low_water_bytes: cfg.images.gc_low_water_bytes,
        dry_run: false,
    };
    let mut wall_tick = tokio::time::interval(WALL_SAVE_INTERVAL);
    wall_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shells = Shells {
        runtime: runtime.clone(),
        store: Arc::new(store),
        logs: logs.clone(),
        events: events_tx,
        stdio_dir,
        echo: local,
        readers: Arc::new(std::sync::Mutex::new(HashMap::new())),
        state,
        puller: Arc::new(crate::images::Puller::new(&cfg.registries, &cfg.images)),
        secrets: Arc::new(crate::secrets::Opener::new(node_key(&cfg.data_dir))),
    };
    let out = Output {
        client,
        node: cfg.node.clone(),
        cluster: cfg.cluster.clone(),
        seq: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        print: local,
        outbox: std::sync::Mutex::new(outbox),
        mirror: cfg.mirror_json,
    };
    let mut core = Core::new(CoreConfig {
        node: cfg.node.clone(),
        cluster: cfg.cluster.clone(),
        agent_version: VERSION.into(),
        stop_grace_ms: u64::try_from(cfg.stop_grace.as_millis()).unwrap_or(u64::MAX),
    })
    .pulling_missing_images(cfg.images.pull_policy != crate::images::PullPolicy::Never)
    .with_policy(cfg.policy.clone())
    .trusting(crate::trust::Trust::new(
        cfg.trust_keys.clone(),
        shells.state.load_trust(),
    ))
    .with_zones(crate::zones::Zones::system())
    .with_node(cfg.labels.clone(), node_size())
    .with_queue_capacity(queue_capacity(&cfg.queue, &node_size()));
    match core.trusted_keys() {
        keys if keys.is_empty() && !local => tracing::warn!(
            "no trusted fleet keys ([trust] keys): desired state is NOT verified; whoever can \
             publish to this node's topics can run containers on it"
        ),
        keys if keys.is_empty() => {}
        keys => tracing::info!(keys = ?keys, "desired state must be signed by a trusted fleet key"),
    }
    let mut sampler = Sampler::new();
    let mut batch: Vec<MetricsSample> = Vec::new();
    let mut metrics_tick = tokio::time::interval(cfg.metrics_interval);
    metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut local_watch = match &mode {
        Mode::Local(dir) => Some(local::Watcher::new(dir.clone())),
        Mode::Broker => None,
    };
    let mut local_tick = tokio::time::interval(local::POLL);
    tokio::pin!(shutdown);
    let mut stopping = false;
    // SIGTERM with `stop_policy = "drain"`: drain first, exit once drained.
    let mut draining_to_exit = false;
    let drain_deadline_ms = u64::try_from(cfg.drain_batch_deadline.as_millis()).unwrap_or(u64::MAX);

    tracing::info!(node = %cfg.node, cluster = %cfg.cluster, version = VERSION, "skiff agent starting");
    out.perform(core.handle(Event::Started, clock.now()), &shells);
    let mut queue_events = Vec::new();
    core.restore_queue(saved.queue, &mut queue_events);
    out.perform(queue_events, &shells);
    for a in &adopted {
        let prefix = a.def.containers.len() > 1;
        for c in &a.containers {
            if c.exit.is_some() {
                let _ = std::fs::remove_file(shells.fifo_path(&a.def.family, &c.name));
            } else if let Err(e) = shells.attach_stdio(&a.def.family, &c.name, prefix) {
                tracing::warn!(task = %a.def.family, container = %c.name, error = e,
                    "cannot read the adopted container's output");
            }
        }
    }
    let restored = Event::Restored {
        cluster: saved.cluster.map(Box::new),
        node: saved.node.map(Box::new),
        finished: saved.finished,
        services: saved.services,
        last_wall_ms: saved.last_wall_ms,
        images: shells.catalog().await,
        adopted,
    };
    out.perform(core.handle(restored, clock.now()), &shells);
    // systemd (Type=notify): ready now that the runtime is up and the saved state is loaded;
    // then WATCHDOG=1 from this loop, so a wedged loop stops the pings and gets restarted.
    let notify = Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot notify systemd");
        Notifier::disabled()
    });
    let mut watchdog = tokio::time::interval(
        notify
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(3600)),
    );
    notify.ready(&format!(
        "running: node {} cluster {}",
        cfg.node, cfg.cluster
    ));
    // Start-up is over: its code need not stay mapped (memtrim.rs; issue 7).
    let released = crate::memtrim::release_startup_pages();
    tracing::debug!(bytes = released, "released start-up pages");
    // Container work (starts, stops, execs) maps code the idle loop does not run: released
    // again once it has been quiet for a while.
    let mut work_seen = runtime.requests_sent();
    let mut release_at: Option<tokio::time::Instant> = None;
    loop {
        let deadline = core
            .next_deadline()
            .map(|ms| tokio::time::Instant::from_std(clock.instant(ms)));
        tokio::select! {
            () = &mut shutdown, if !stopping && !draining_to_exit => {
                if cfg.stop_policy == StopPolicy::Leave {
                    notify.stopping("leaving every task running for the next agent");
                    tracing::info!(
                        tasks = core.active_tasks().len(),
                        "SIGTERM: exiting and leaving the tasks running (stop_policy = \"leave\"); \
                         the next agent adopts them"
                    );
                    break;
                } else if cfg.stop_policy == StopPolicy::Drain {
                    draining_to_exit = true;
                    notify.stopping("draining: service tasks stop, batch tasks may finish");
                    tracing::info!("SIGTERM: draining before exit (stop_policy = \"drain\")");
                    let ev = Event::Drain { batch_deadline_ms: drain_deadline_ms };
                    out.perform(core.handle(ev, clock.now()), &shells);
                } else {
                    stopping = true;
                    notify.stopping("stopping every task");
                    tracing::info!("shutting down: stopping every task");
                    out.perform(core.handle(Event::Shutdown, clock.now()), &shells);
                }
            }
            Some(ev) = events_rx.recv() => out.perform(core.handle(ev, clock.now()), &shells),
            Some(exit) = exits.recv() => {
                let ContainerExit { task, container, exit } = exit;
                shells.drain_reader(&task, &container).await;
                let ev = Event::ContainerExited { task, container, exit };
                out.perform(core.handle(ev, clock.now()), &shells);
            }
            Some(msg) = recv(&mut inbound) => {
                match &msg {
                    Inbound::Connected => notify.status("running: connected to the broker"),
                    Inbound::Disconnected(_) => notify.status("running: broker unreachable, reconnecting"),
                    _ => {}
                }
                let (msg, held) = match msg {
                    Inbound::Publish { topic, payload, retained, ack } => {
                        (Inbound::Publish { topic, payload, retained, ack: None }, ack)
                    }
                    other => (other, None),
                };
                if held.is_some() {
                    crate::crash::point("queue-receive");
                }
                if let Some((ev, reply_to)) = handle_inbound(msg, &cfg, &shells, &out).await {
                    out.perform(core.handle(ev, clock.now()), &shells);
                    if let Some(id) = reply_to {
                        let state = core.node_state();
                        out.reply(Reply { id, body: ReplyBody::NodeState { state } });
                    }
                }
                if let (Some(token), Some(client)) = (held, &out.client) {
                    // Decided and saved (saves run first): the events about it go to disk
                    // too before the broker forgets the offer (a lost hand-back would leave
                    // the console waiting).
                    if let Err(e) = out.outbox().persist_events() {
                        tracing::warn!(error = %e, "cannot write the outbox; queue events may be lost at a restart");
                    }
                    crate::crash::point("queue-decided");
                    token.ack(client);
                }
            }
            _ = metrics_tick.tick() => {
                let now = clock.now();
                let tasks = core.active_tasks().into_iter().map(|t| {
                    let stats = runtime.task_stats(&t);
                    (t, stats)
                }).collect();
                let sample = sampler.sample(tasks, now.mono_ms, now.wall_ms);
                out.perform(core.handle(Event::Load(load(&sample)), now), &shells);
                let ev = Event::Metrics {
                    tasks: sample.tasks.clone(),
                    mem_total_bytes: sample.mem_total_bytes,
                };
                out.perform(core.handle(ev, now), &shells);
                if out.print {
                    println!("{}", display::sample(cfg.node.as_str(), &sample));
                }
                batch.push(sample);
                if batch.len() >= cfg.metrics_batch {
                    out.metrics(std::mem::take(&mut batch));
                }
            }
            _ = local_tick.tick(), if local_watch.is_some() => {
                if let Some(tasks) = local_watch.as_mut().and_then(local::Watcher::poll) {
                    let images = shells.catalog().await;
                    out.perform(core.handle(Event::LocalDesired { tasks, images }, clock.now()), &shells);
                }
            }
            _ = wall_tick.tick() => save_wall(&shells.state, clock.now()),
            _ = gc_tick.tick(), if !stopping => shells.collect_garbage(gc_policy.clone(), core.images_in_use()),
            _ = outbox_tick.tick() => {
                flushes += 1;
                let every = outbox::METRICS_FLUSH_EVERY.as_secs() / outbox::FLUSH_EVERY.as_secs();
                out.flush_outbox(flushes % every.max(1) == 0);
            }
            _ = sleep_until(deadline) => out.perform(core.handle(Event::Tick, clock.now()), &shells),
            _ = watchdog.tick(), if notify.watchdog_interval().is_some() => notify.watchdog(),
            _ = sleep_until(release_at), if release_at.is_some() => {
                release_at = None;
                let bytes = crate::memtrim::release_startup_pages();
                tracing::debug!(bytes, "released pages after container work");
            }
        }
        let work = runtime.requests_sent();
        if work != work_seen {
            work_seen = work;
            release_at = Some(tokio::time::Instant::now() + crate::memtrim::RELEASE_AFTER_WORK);
        }
        if draining_to_exit && !stopping && core.node_state() == NodeState::Drained {
            stopping = true;
            tracing::info!("drained: exiting");
            out.perform(core.handle(Event::Shutdown, clock.now()), &shells);
        }
        if stopping && core.is_idle() {
            break;
        }
    }
    save_wall(&shells.state, clock.now());
    out.flush_outbox(true);
    out.offline_with(labelled_offline_status(&cfg, crate::clock::wall_ms()))
        .await;
    tracing::info!(
        dropped_while_offline = out.dropped.load(Ordering::Relaxed),
        "skiff agent stopped"
    );
    Ok(())
}

/// The tasks the launcher kept from the previous agent that can be taken over: every container
/// kept, a readable record of what the task was prepared with, and all of its containers
/// without `dependsOn` among them. The others are left to `cleanup_stale` (and started again
/// from desired state), with a warning saying why. A run the previous agent ended (its
/// containers being deleted) but did not save is taken over as it ended, whatever the
/// launcher still holds of it.
fn adopted_tasks(
    runtime: &Runtime,
    kept: Vec<crate::runtime::KeptContainer>,
    state: &StateStore,
) -> Vec<crate::core::AdoptedTask> {
    let mut by_task: BTreeMap<Name, Vec<crate::runtime::KeptContainer>> = BTreeMap::new();
    for k in kept {
        by_task.entry(k.task.clone()).or_default().push(k);
    }
    let mut out = Vec::new();
    for ended in runtime.ended_runs() {
        let task = ended.task.def.family.clone();
        by_task.remove(&task);
        if ended.run.saved_in(&state.history(&task, 8)) {
            continue; // saved: its record is removed with the leftovers
        }
        tracing::info!(%task, "taking over a run the previous agent ended without saving it");
        out.push(ended.run.adopted(ended.task.def, ended.task.endpoints));
    }
    for (task, kept) in by_task {
        let Some(rec) = runtime.task_record(&task) else {
            tracing::warn!(%task, "cannot adopt: no readable record of the task; it is cleaned up and started again");
            continue;
        };
        let names: Vec<Name> = kept.iter().map(|k| k.container.clone()).collect();
        if let Err(reason) = crate::core::adoptable(&rec.def, &names) {
            tracing::warn!(%task, reason, "cannot adopt; it is cleaned up and started again");
            continue;
        }
        for k in kept.iter().filter(|k| k.lost_output_bytes > 0) {
            tracing::warn!(%task, container = %k.container, bytes = k.lost_output_bytes,
                "output written while no agent was running is lost");
        }
        tracing::info!(%task, containers = kept.len(), "adopting a task that outlived the previous agent");
        out.push(crate::core::AdoptedTask {
            started_wall_ms: kept.iter().map(|k| k.started_ms).min().unwrap_or(0),
            containers: kept
                .into_iter()
                .map(|k| crate::core::AdoptedContainer {
                    name: k.container,
                    pid: k.pid,
                    exit: k.exit,
                })
                .collect(),
            def: rec.def,
            endpoints: rec.endpoints,
        });
    }
    out
}

/// The node's X25519 key, made on first start (also by `skiff node init`); sealed secrets are
/// opened with it. Without one, tasks with secrets fail to start, saying why.
fn node_key(data_dir: &std::path::Path) -> Option<x25519_dalek::StaticSecret> {
    let made = crate::identity::init(data_dir)
        .and_then(|k| crate::identity::load_secret(data_dir).map(|s| (k, s)));
    match made {
        Ok((k, Some(secret))) => {
            let new = if k.created { " (new)" } else { "" };
            tracing::info!("node key x25519:{}{new}", k.public_hex());
            Some(secret)
        }
        Ok((_, None)) => None,
        Err(e) => {
            tracing::warn!(error = %e, "no node key: tasks with secrets can't start");
            None
        }
    }
}

/// What queued copies may use: the configured figures, else the node's CPUs and memory.
fn queue_capacity(q: &crate::config::QueueConfig, size: &NodeResources) -> crate::core::Capacity {
    crate::core::Capacity {
        cpu_units: q.cpu_units.unwrap_or(u64::from(size.cpus.max(1)) * 1024),
        memory_mib: q.memory_mib.unwrap_or(size.mem_total_bytes >> 20),
        max_tasks: q.max_tasks,
    }
}

/// CPUs the agent may use (affinity and cgroup quota respected) and the node's memory.
pub(crate) fn node_size() -> NodeResources {
    let sys = sysinfo::System::new_with_specifics(
        sysinfo::RefreshKind::nothing()
            .with_memory(sysinfo::MemoryRefreshKind::nothing().with_ram()),
    );
    NodeResources {
        cpus: std::thread::available_parallelism()
            .map_or(0, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        mem_total_bytes: sys.map_or(0, |s| s.total_memory()),
        cpu_pct: 0.0,
        mem_used_bytes: 0,
    }
}

/// The node's load in a metrics sample, for its status.
fn load(sample: &MetricsSample) -> NodeResources {
    NodeResources {
        cpus: std::thread::available_parallelism()
            .map_or(0, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        mem_total_bytes: sample.mem_total_bytes,
        cpu_pct: sample.cpu_pct,
        mem_used_bytes: sample.mem_used_bytes,
    }
}

/// When unused images are first garbage-collected, and how often after.
const GC_FIRST: Duration = Duration::from_secs(600);
const GC_INTERVAL: Duration = Duration::from_secs(3600);

/// How often a known-good wall time is saved (for devices without RTC).
const WALL_SAVE_INTERVAL: Duration = Duration::from_secs(3600);

fn save_wall(state: &StateStore, now: crate::core::Time) {
    if now.wall_trusted {
        if let Err(e) = state.save_wall(now.wall_ms) {
            tracing::warn!(error = %e, "cannot save the wall time");
        }
    }
}

async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// How an agent connects: its node id as client id, its offline status as last will, and the
/// topics every agent subscribes to (`skiff sim` connects its simulated nodes the same way).
pub(crate) fn connect_options(
    node: &Name,
    cluster: &Name,
    broker: crate::config::BrokerUrl,
    keepalive: Duration,
) -> mqtt::ConnectOptions {
    let cluster = cluster.clone();
    let node = node.clone();
    mqtt::ConnectOptions {
        client_id: node.to_string(),
        broker,
        keepalive,
        last_will: Some((
            Topic::Status {
                cluster: cluster.clone(),
                node: node.clone(),
            }
            .to_topic(),
            offline_status(&node, crate::clock::wall_ms()),
        )),
        subscriptions: vec![
            Topic::ClusterDesired {
                cluster: cluster.clone(),
            }
            .to_topic(),
            Topic::NodeDesired {
                cluster: cluster.clone(),
                node: node.clone(),
            }
            .to_topic(),
            Topic::Cmd { cluster, node }.to_topic(),
        ],
    }
}

/// The retained status the broker publishes as last will, and the agent on a clean exit.
pub(crate) fn offline_status(node: &Name, at_ms: u64) -> Vec<u8> {
    offline_status_of(node, BTreeMap::new(), NodeResources::default(), at_ms)
}

/// [`offline_status`] with the node's labels and size (not its load): selectors still find an
/// offline node, and `skiff ctl nodes` still shows what it has.
fn labelled_offline_status(cfg: &Validated, at_ms: u64) -> Vec<u8> {
    let size = node_size();
    offline_status_of(&cfg.node, cfg.labels.clone(), size, at_ms)
}

pub(crate) fn offline_status_of(
    node: &Name,
    labels: BTreeMap<String, String>,
    size: NodeResources,
    at_ms: u64,
) -> Vec<u8> {
    let status = Status {
        node: node.clone(),
        state: NodeState::Offline,
        agent_version: VERSION.into(),
        cluster_version: 0,
        node_version: 0,
        at_ms,
        tasks: vec![],
        services: vec![],
        labels,
        resources: NodeResources {
            cpus: size.cpus,
            mem_total_bytes: size.mem_total_bytes,
            cpu_pct: 0.0,
            mem_used_bytes: 0,
        },
    };
    encode(&Message::Status(status)).unwrap_or_default()
}

/// Broker messages: desired state goes to the core, commands are answered here, except drain
/// and activate: they go to the core, with the id to answer with the node state after.
async fn handle_inbound(
    msg: Inbound,
    cfg: &Validated,
    shells: &Shells,
    out: &Output,
) -> Option<(Event, Option<u64>)> {
    let ev = |e| Some((e, None));
    match msg {
        Inbound::Connected => {
            tracing::info!(broker = %format!("{}:{}", cfg.broker.host, cfg.broker.port), "connected to the broker");
            out.connection(true);
            ev(Event::Connected)
        }
        Inbound::Disconnected(reason) => {
            tracing::warn!(%reason, "broker connection lost; reconnecting, tasks keep running");
            out.connection(false);
            None
        }
        Inbound::PubAck => {
            out.acked();
            None
        }
        Inbound::Subscribed => None,
        Inbound::Publish { topic, payload, .. } => match Topic::parse(&topic) {
            Some(Topic::ClusterDesired { .. }) => ev(Event::DesiredPayload {
                scope: Scope::Cluster,
                payload,
                images: shells.catalog().await,
            }),
            Some(Topic::NodeDesired { .. }) => ev(Event::DesiredPayload {
                scope: Scope::Node,
                payload,
                images: shells.catalog().await,
            }),
            Some(Topic::Queue { .. }) => ev(Event::RunOffer {
                payload,
                images: shells.catalog().await,
            }),
            Some(Topic::Cmd { .. }) => match decode_as(Kind::Command, &payload) {
                Ok(Message::Command(Command {
                    id,
                    body: CommandBody::Drain,
                })) => {
                    let batch_deadline_ms =
                        u64::try_from(cfg.drain_batch_deadline.as_millis()).unwrap_or(u64::MAX);
                    Some((Event::Drain { batch_deadline_ms }, Some(id)))
                }
                Ok(Message::Command(Command {
                    id,
                    body: CommandBody::Activate,
                })) => Some((Event::Activate, Some(id))),
                Ok(Message::Command(Command {
                    body: CommandBody::TrustUpdate(update),
                    ..
                })) => ev(Event::TrustUpdate(update)),
                Ok(Message::Command(Command {
                    id,
                    body: CommandBody::NodeKey,
                })) => {
                    let body = match shells.secrets.public() {
                        Some(k) => ReplyBody::NodeKey { x25519: k.to_vec() },
                        None => ReplyBody::Error {
                            reason: "this node has no key (`skiff node init`)".into(),
                        },
                    };
                    out.reply(Reply { id, body });
                    None
                }
                _ => {
                    out.reply(answer(&payload, &shells.logs, &shells.state));
                    None
                }
            },
            _ => {
                tracing::debug!(%topic, "ignoring message on an unexpected topic");
                None
            }
        },
    }
}

/// The reply to a command payload.
fn answer(payload: &[u8], logs: &Logs, state: &StateStore) -> Reply {
    let cmd = match decode_as(Kind::Command, payload) {
        Ok(Message::Command(c)) => c,
        Ok(_) | Err(_) => {
            let reason = match decode_as(Kind::Command, payload) {
                Err(e) => e.to_string(),
                Ok(m) => format!("unexpected {} message", m.kind().name()),
            };
            tracing::warn!(%reason, "rejected a command");
            return Reply {
                id: 0,
                body: ReplyBody::Unsupported { reason },
            };
        }
    };
    let Command { id, body } = cmd;
    let body = match body {
        CommandBody::Ping => ReplyBody::Pong {
            version: VERSION.into(),
        },
        CommandBody::Logs {
            task,
            from,
            max_bytes,
        } => {
            let max = usize::try_from(max_bytes)
                .unwrap_or(usize::MAX)
                .min(skiff_proto::limits::MAX_LOG_CHUNK);
            match logs.read(&task, from, max) {
                Some(c) => ReplyBody::Logs {
                    start: c.start,
                    end: c.end,
                    data: c.data,
                },
                None => ReplyBody::Error {
                    reason: format!("no log for task {task} on this node"),
                },
            }
        }
        CommandBody::History { task, limit } => ReplyBody::History {
            runs: state.history(&task, usize::try_from(limit).unwrap_or(usize::MAX)),
        },
        // Routed to the core before `answer` is reached.
        CommandBody::Drain
        | CommandBody::Activate
        | CommandBody::TrustUpdate(_)
        | CommandBody::NodeKey => ReplyBody::Error {
            reason: "drain, activate, trust updates and node keys are answered earlier".into(),
        },
    };
    Reply { id, body }
}

/// Publishing (broker mode) or printing (local mode).
#[derive(Debug)]
pub(crate) struct Output {
    client: Option<AsyncClient>,
    node: Name,
    cluster: Name,
    seq: AtomicU64,
    dropped: AtomicU64,
    print: bool,
    /// Events and metrics until the broker acknowledges them (broker mode only).
    outbox: std::sync::Mutex<Outbox>,
    /// Which topics are also published as JSON (`{topic}.json`).
    mirror: MirrorJson,
}

impl Output {
    /// A publisher for one node (`skiff sim` makes one per simulated node): `client` None
    /// publishes nothing, `print` prints events instead (local mode).
    pub(crate) fn new(
        client: Option<AsyncClient>,
        node: Name,
        cluster: Name,
        print: bool,
        outbox: Outbox,
        mirror: MirrorJson,
    ) -> Output {
        Output {
            client,
            node,
            cluster,
            seq: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            print,
            outbox: std::sync::Mutex::new(outbox),
            mirror,
        }
    }

    fn perform(&self, actions: Vec<Action>, shells: &Shells) {
        // Durable writes first and synchronously: nothing is published (status, events) that a
        // power cut right after could take back. They are rare (a document applied, a run
        // ended) and small.
        let (saves, rest): (Vec<Action>, Vec<Action>) = actions.into_iter().partition(|a| {
            matches!(
                a,
                Action::SaveDesired { .. }
                    | Action::SaveFinished(_)
                    | Action::RecordRun(_)
                    | Action::SaveServices(_)
                    | Action::SaveTrust(_)
                    | Action::SaveQueue(_)
            )
        });
        // A run goes to the history last: an ended run found there is saved in full
        // (`EndedRun::saved_in`).
        let (runs, mut saves): (Vec<Action>, Vec<Action>) = saves
            .into_iter()
            .partition(|a| matches!(a, Action::RecordRun(_)));
        saves.extend(runs);
        let mut unsaved = false;
        for save in saves {
            let result = match &save {
                Action::SaveDesired { scope, doc } => shells.state.save_desired(*scope, doc),
                Action::SaveFinished(f) => shells.state.save_finished(f),
                Action::RecordRun(r) => shells.state.append_run(r),
                Action::SaveTrust(t) => shells.state.save_trust(t),
                Action::SaveQueue(q) => shells.state.save_queue(q),
                Action::SaveServices(s) => shells.state.save_services(s),
                _ => Ok(()),
            };
            if let Err(e) = result {
                unsaved = true;
                let what = match &save {
                    Action::SaveDesired { scope, doc } => {
                        format!("{scope:?} desired state version {}", doc.version).to_lowercase()
                    }
                    Action::SaveFinished(_) => "finished tasks".into(),
                    Action::RecordRun(r) => format!("run history of {}", r.task),
                    Action::SaveTrust(t) => format!("trusted keys version {}", t.version),
                    Action::SaveQueue(_) => "cluster queue claims".into(),
                    Action::SaveServices(_) => "services (scaled counts, rollbacks)".into(),
                    _ => String::new(),
                };
                self.event(EventBody::StateNotSaved {
                    what,
                    reason: e.to_string(),
                });
            }
        }
        for action in rest {
            match action {
                Action::StartTask { def } => shells.start_task(def),
                Action::StartContainer { task, container } => {
                    shells.start_container(task, container)
                }
                Action::Signal {
                    task,
                    container,
                    signal,
                } => shells.signal(task, container, signal),
                Action::RemoveTask { task, ended } => shells.remove_task(task, ended),
                // Kept while what it was kept for is not saved: the next agent replays it.
                Action::ForgetTask { .. } if unsaved => {}
                Action::ForgetTask { task } => {
                    if let Err(e) = shells.runtime.forget_ended(&task) {
                        tracing::warn!(%task, error = %e, "cannot drop the record of its ended run");
                    }
                }
                Action::HealthCheck {
                    task,
                    container,
                    test,
                    timeout_ms,
                } => shells.health_check(task, container, test, timeout_ms),
                Action::Event(body) => self.event(body),
                Action::Status(status) => {
                    let topic = Topic::Status {
                        cluster: self.cluster.clone(),
                        node: self.node.clone(),
                    };
                    self.publish(topic, &Message::Status(status), true);
                }
                Action::SaveDesired { .. }
                | Action::SaveFinished(_)
                | Action::RecordRun(_)
                | Action::SaveServices(_)
                | Action::SaveTrust(_)
                | Action::SaveQueue(_) => {}
            }
        }
    }

    pub(crate) fn event(&self, body: EventBody) {
        // Local mode prints every event on stdout instead; the log keeps the problems.
        let problem = matches!(
            body,
            EventBody::DesiredRejected { .. }
                | EventBody::TrustRejected { .. }
                | EventBody::QueueRejected { .. }
                | EventBody::TaskFailed { .. }
                | EventBody::StateNotSaved { .. }
        );
        if problem {
            tracing::warn!("{}", display::event_body(&body));
        } else if !self.print {
            tracing::info!("{}", display::event_body(&body));
        }
        let ev = EventMsg {
            node: self.node.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            at_ms: crate::clock::wall_ms(),
            body,
        };
        if self.print {
            println!("{}", display::event(&ev));
        }
        self.queue(EntryKind::Event, &Message::Event(ev));
    }

    pub(crate) fn metrics(&self, samples: Vec<MetricsSample>) {
        let m = Metrics {
            node: self.node.clone(),
            samples,
        };
        self.queue(EntryKind::Metrics, &Message::Metrics(m));
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues an event or metrics message in the outbox and publishes what it releases.
    fn queue(&self, kind: EntryKind, msg: &Message) {
        if self.client.is_none() {
            return;
        }
        match encode(msg) {
            Ok(bytes) => {
                let sends = self.outbox().push(kind, bytes);
                self.send(sends);
            }
            Err(e) => tracing::error!(error = %e, "cannot encode an outgoing message"),
        }
    }

    /// Publishes what the outbox released, in order, then their JSON mirrors: the outbox
    /// matches acknowledgements in order, expecting its entries' first.
    fn send(&self, sends: Vec<outbox::Send>) {
        let Some(client) = &self.client else { return };
        let mut mirrors = Vec::new();
        for s in sends {
            let topic = match s.kind {
                EntryKind::Event => Topic::Events {
                    cluster: self.cluster.clone(),
                    node: self.node.clone(),
                },
                EntryKind::Metrics => Topic::Metrics {
                    cluster: self.cluster.clone(),
                    node: self.node.clone(),
                },
            };
            let json = self.json_mirror(&topic, &s.bytes);
            let retain = topic.retained();
            match client.try_publish(topic.to_topic(), QoS::AtLeastOnce, retain, s.bytes) {
                Ok(()) => mirrors.extend(json),
                // Stays queued: sent again after the next reconnect.
                Err(e) => tracing::debug!(error = %e, "broker queue full; kept in the outbox"),
            }
        }
        for (topic, json, retain) in mirrors {
            self.publish_json(client, topic, json, retain);
        }
    }

    /// The JSON mirror of a binary message about to be published on `topic`, when the config
    /// asks for it: `({topic}.json, body as JSON, retain)`. Made from the bytes as sent, so
    /// what the outbox resends after a break is mirrored again, and nothing is stored twice.
    fn json_mirror(&self, topic: &Topic, bytes: &[u8]) -> Option<(String, Vec<u8>, bool)> {
        let wanted = match topic {
            Topic::Status { .. } => self.mirror.status,
            Topic::Events { .. } => self.mirror.events,
            Topic::Metrics { .. } => self.mirror.metrics,
            _ => false,
        };
        let mirror = topic.json_mirror().filter(|_| wanted)?;
        let json = decode(bytes)
            .map_err(|e| e.to_string())
            .and_then(|m| skiff_proto::json::to_json(&m).map_err(|e| e.to_string()));
        match json {
            Ok(j) if j.len() <= skiff_proto::limits::MAX_MESSAGE => {
                Some((mirror, j, topic.retained()))
            }
            Ok(j) => {
                tracing::warn!(
                    topic = %mirror,
                    bytes = j.len(),
                    "JSON mirror larger than the message limit; not mirrored"
                );
                None
            }
            Err(e) => {
                tracing::error!(error = %e, topic = %mirror, "cannot make the JSON mirror");
                None
            }
        }
    }

    /// Publishes a JSON mirror (QoS 1, acknowledged in order like any other publish).
    fn publish_json(&self, client: &AsyncClient, topic: String, json: Vec<u8>, retain: bool) {
        match client.try_publish(topic, QoS::AtLeastOnce, retain, json) {
            Ok(()) => self.outbox().other_published(),
            Err(e) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(error = %e, dropped = n, "broker queue full; JSON mirror dropped");
            }
        }
    }

    /// The broker connection changed.
    pub(crate) fn connection(&self, up: bool) {
        if up {
            let sends = self.outbox().connected();
            self.send(sends);
            let overflow = self.outbox().unreported();
            if let Some((dropped_events, merged_samples)) = overflow {
                self.event(EventBody::OutboxOverflow {
                    dropped_events,
                    merged_samples,
                });
            }
        } else {
            self.outbox().disconnected();
        }
    }

    /// A PUBACK arrived.
    pub(crate) fn acked(&self) {
        let sends = self.outbox().acked();
        self.send(sends);
    }

    /// While offline, writes the queued messages to disk.
    fn flush_outbox(&self, metrics_too: bool) {
        if let Err(e) = self.outbox().flush(metrics_too) {
            tracing::warn!(error = %e, "cannot write the outbox; offline messages may be lost at a restart");
        }
    }

    pub(crate) fn reply(&self, reply: Reply) {
        let topic = Topic::Reply {
            cluster: self.cluster.clone(),
            node: self.node.clone(),
        };
        self.publish(topic, &Message::Reply(reply), false);
    }

    pub(crate) fn publish(&self, topic: Topic, msg: &Message, retain: bool) {
        let Some(client) = &self.client else { return };
        let bytes = match encode(msg) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an outgoing message");
                return;
            }
        };
        if !self.outbox().is_connected() {
            return; // status is re-published on connect; replies have no one waiting
        }
        let json = self.json_mirror(&topic, &bytes);
        match client.try_publish(topic.to_topic(), QoS::AtLeastOnce, retain, bytes) {
            Ok(()) => {
                self.outbox().other_published();
                if let Some((mirror, json, _)) = json {
                    self.publish_json(client, mirror, json, retain);
                }
            }
            Err(e) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(error = %e, dropped = n, "broker queue full; message dropped");
            }
        }
    }

    /// Clean exit: the retained status says offline (the last will only covers unclean exits).
    pub(crate) async fn offline_with(&self, offline: Vec<u8>) {
        let Some(client) = &self.client else { return };
        let topic = Topic::Status {
            cluster: self.cluster.clone(),
            node: self.node.clone(),
        };
        let json = self.json_mirror(&topic, &offline);
        let _ = client.try_publish(topic.to_topic(), QoS::AtLeastOnce, true, offline);
        if let Some((mirror, json, retain)) = json {
            let _ = client.try_publish(mirror, QoS::AtLeastOnce, retain, json);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = client.try_disconnect();
    }
}

type ReaderKey = (Name, Name);

/// Handles to the shells, cloned into the tokio tasks that perform actions.
#[derive(Debug, Clone)]
struct Shells {
    runtime: Runtime,
    store: Arc<ImageStore>,
    logs: Logs,
    events: mpsc::UnboundedSender<Event>,
    stdio_dir: PathBuf,
    echo: bool,
    /// Log readers of running containers: told to drain and stop when the container exits.
    readers: Arc<std::sync::Mutex<HashMap<ReaderKey, oneshot::Sender<oneshot::Sender<()>>>>>,
    /// Durable state.
    state: StateStore,
    /// Pulls images per the pull policy before a task starts.
    puller: Arc<crate::images::Puller>,
    /// The node key and the sealed secrets of the tasks being started.
    secrets: Arc<crate::secrets::Opener>,
}

impl Shells {
    async fn catalog(&self) -> Catalog {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.catalog()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the image catalog");
                Catalog::new()
            }
            Err(e) => {
                tracing::error!(error = %e, "image catalog task failed");
                Catalog::new()
            }
        }
    }

    fn send(&self, ev: Event) {
        // The loop owns the receiver for the agent's whole life.
        let _ = self.events.send(ev);
    }

    fn start_task(&self, def: Arc<TaskDefinition>) {
        let me = self.clone();
        tokio::spawn(async move {
            let task = def.family.clone();
            let ev = match me.try_start(&def).await {
                Ok(()) => Event::TaskStarted { task },
                Err(reason) => Event::TaskStartFailed { task, reason },
            };
            me.send(ev);
        });
    }

    async fn try_start(&self, def: &TaskDefinition) -> Result<(), String> {
        // A secret that can't be opened fails the start before anything is pulled or run.
        self.secrets.prepare(def)?;
        let mut images: Vec<ResolvedImage> = Vec::with_capacity(def.containers.len());
        for c in &def.containers {
            let r: ImageRef = c
                .image
                .parse()
                .map_err(|e| format!("container {}: image {:?}: {e}", c.name, c.image))?;
            let (store, puller, events) =
                (self.store.clone(), self.puller.clone(), self.events.clone());
            let (task, container, image) = (def.family.clone(), c.name.clone(), r.to_string());
            let image = tokio::task::spawn_blocking(move || {
                puller.ensure_resolved(&store, &r, &mut |p| {
                    let report = EventBody::ImagePulling {
                        task: task.clone(),
                        container: container.clone(),
                        image: image.clone(),
                        done: p.done,
                        total: p.total,
                    };
                    let _ = events.send(Event::StartProgress {
                        task: task.clone(),
                        report,
                    });
                })
            })
            .await
            .map_err(|e| format!("image pull task: {e}"))?
            .map_err(|e| format!("container {}: {e}", c.name))?;
            images.push(image);
        }
        for (c, image) in def.containers.iter().zip(&images) {
            let (image, digest) = (image.reference.clone(), image.digest.clone());
            let report = EventBody::ImageReady {
                task: def.family.clone(),
                container: c.name.clone(),
                image,
                digest,
            };
            self.send(Event::StartProgress {
                task: def.family.clone(),
                report,
            });
        }
        let endpoints = self
            .runtime
            .prepare_task(def, &images)
            .await
            .map_err(|e| e.to_string())?;
        self.send(Event::TaskNetwork {
            task: def.family.clone(),
            endpoints,
        });
        let prefix = def.containers.len() > 1;
        // Containers with `dependsOn` wait for the core's `StartContainer`.
        for c in def.containers.iter().filter(|c| c.depends_on.is_empty()) {
            let pid = self
                .try_start_container(&def.family, &c.name, prefix)
                .await?;
            self.send(Event::ContainerStarted {
                task: def.family.clone(),
                container: c.name.clone(),
                pid,
            });
        }
        Ok(())
    }

    /// Starts one prepared container with its log reader.
    async fn try_start_container(
        &self,
        task: &Name,
        container: &Name,
        prefix: bool,
    ) -> Result<u32, String> {
        // Opened here, right before the start, and dropped (wiped) right after it.
        let env = self.secrets.env(task, container)?;
        let fifo = self.open_stdio(task, container, prefix).await?;
        match self
            .runtime
            .start_container_with(task, container, &fifo, env)
            .await
        {
            Ok(pid) => Ok(pid),
            Err(e) => {
                self.drain_reader(task, container).await;
                Err(format!("container {container}: {e}"))
            }
        }
    }

    /// Starts a container whose dependencies are met (the task is prepared and running).
    fn start_container(&self, task: Name, container: Name) {
        let me = self.clone();
        tokio::spawn(async move {
            let ev = match me.try_start_container(&task, &container, true).await {
                Ok(pid) => Event::ContainerStarted {
                    task,
                    container,
                    pid,
                },
                Err(reason) => Event::ContainerStartFailed {
                    task,
                    container,
                    reason,
                },
            };
            me.send(ev);
        });
    }

    fn fifo_path(&self, task: &Name, container: &Name) -> PathBuf {
        self.stdio_dir.join(format!("{task}@{container}.fifo"))
    }

    /// Makes the container's stdio FIFO and starts the task that copies it into the log.
    async fn open_stdio(
        &self,
        task: &Name,
        container: &Name,
        prefix: bool,
    ) -> Result<PathBuf, String> {
        let path = self.fifo_path(task, container);
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| format!("cannot make {}: {e}", path.display()))?;
        self.attach_stdio(task, container, prefix)?;
        Ok(path)
    }

    /// Starts the task that copies the container's existing stdio FIFO into the log (also
    /// for a container adopted from the previous agent, whose FIFO its launcher held open).
    fn attach_stdio(&self, task: &Name, container: &Name, prefix: bool) -> Result<(), String> {
        let path = self.fifo_path(task, container);
        // Read-write so the pipe never reports EOF between writers; the end is the exit.
        let rx = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let (stop_tx, mut stop_rx) = oneshot::channel::<oneshot::Sender<()>>();
        self.readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((task.clone(), container.clone()), stop_tx);
        let (logs, echo, task, container) = (
            self.logs.clone(),
            self.echo,
            task.clone(),
            container.clone(),
        );
        let fifo = path.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let copy = |n: usize, buf: &[u8]| {
                logs.append(&task, &container, prefix, &buf[..n]);
                if echo {
                    for line in String::from_utf8_lossy(&buf[..n]).lines() {
                        println!("{task}/{container} | {line}");
                    }
                }
            };
            let done = loop {
                tokio::select! {
                    biased;
                    r = rx.readable() => {
                        if r.is_err() { break None; }
                        match rx.try_read(&mut buf) {
                            Ok(0) => break None,
                            Ok(n) => copy(n, &buf),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => break None,
                        }
                    }
                    done = &mut stop_rx => break done.ok(),
                }
            };
            // The writer has exited: whatever it wrote is in the pipe now.
            while let Ok(n) = rx.try_read(&mut buf) {
                if n == 0 {
                    break;
                }
                copy(n, &buf);
            }
            drop(rx);
            let _ = std::fs::remove_file(&fifo);
            if let Some(done) = done {
                let _ = done.send(());
            }
        });
        Ok(())
    }

    /// Stops a container's log reader after copying what is left; waits until it is copied.
    async fn drain_reader(&self, task: &Name, container: &Name) {
        let stop = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(task.clone(), container.clone()));
        if let Some(stop) = stop {
            let (done_tx, done_rx) = oneshot::channel();
            if stop.send(done_tx).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(2), done_rx).await;
            }
        }
    }

    /// Image garbage collection per the `[images]` policy, off the loop; images of desired or
    /// known tasks and mounted rootfs are kept.
    fn collect_garbage(&self, policy: crate::images::gc::GcPolicy, in_use: Vec<String>) {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let protect: Vec<ImageRef> = in_use.iter().filter_map(|i| i.parse().ok()).collect();
            match store.gc(&policy, &protect) {
                Ok(r) if !r.names_removed.is_empty() || r.blobs_removed > 0 => tracing::info!(
                    removed = ?r.names_removed,
                    blobs = r.blobs_removed,
                    freed_bytes = r.bytes_freed,
                    "unused images collected"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "image garbage collection failed"),
            }
        });
    }

    fn signal(&self, task: Name, container: Name, signal: Signal) {
        let runtime = self.runtime.clone();
        tokio::spawn(async move {
            let sig = match signal {
                Signal::Term => libc::SIGTERM,
                Signal::Kill => libc::SIGKILL,
            };
            if let Err(e) = runtime.kill(&task, &container, sig).await {
                tracing::warn!(%task, %container, error = %e, "cannot signal container");
            }
        });
    }

    /// Runs one health check and reports its result: `CMD` / `CMD-SHELL` inside the container
    /// (exit 0 = healthy), `TCP` as a connection in the task's network namespace.
    fn health_check(&self, task: Name, container: Name, test: HealthTest, timeout_ms: u64) {
        let me = self.clone();
        tokio::spawn(async move {
            let timeout = Duration::from_millis(timeout_ms);
            let argv = match &test {
                HealthTest::Cmd(args) => Some(args.clone()),
                HealthTest::Shell(cmd) => Some(vec!["/bin/sh".into(), "-c".into(), cmd.clone()]),
                HealthTest::Tcp(_) => None,
            };
            let (ok, output) = match (&test, argv) {
                (HealthTest::Tcp(port), _) => {
                    match me.runtime.tcp_check(&task, *port, timeout).await {
                        Ok(true) => (true, String::new()),
                        Ok(false) => (
                            false,
                            format!("no TCP connection to port {port} within {timeout_ms} ms"),
                        ),
                        Err(e) => (false, e.to_string()),
                    }
                }
                (_, Some(argv)) => match me.runtime.exec(&task, &container, argv, timeout).await {
                    Ok(o) if o.timed_out => (false, format!("timed out after {timeout_ms} ms")),
                    Ok(o) => {
                        let text = String::from_utf8_lossy(&o.output).into_owned();
                        match o.code {
                            Some(0) => (true, text),
                            Some(c) => (false, format!("exit code {c}: {text}")),
                            None => (false, text),
                        }
                    }
                    Err(e) => (false, e.to_string()),
                },
                (_, None) => (false, String::new()),
            };
            me.send(Event::HealthResult {
                task,
                container,
                ok,
                output,
            });
        });
    }

    fn remove_task(&self, task: Name, ended: Option<crate::core::EndedRun>) {
        self.secrets.forget(&task);
        if let Some(run) = &ended {
            if let Err(e) = self.runtime.keep_ended(&task, run) {
                tracing::warn!(%task, error = %e, "cannot keep its ended run until it is saved");
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            let error = me
                .runtime
                .remove_task(&task)
                .await
                .err()
                .map(|e| e.to_string());
            crate::crash::point("task-removed");
            me.send(Event::TaskRemoved { task, error });
        });
    }
}
