//! Human-readable lines for events, metrics and status, shared by `skiff ctl watch`, `skiff ctl
//! nodes`, `skiff ctl services` and the agent's local mode.

use skiff_proto::{
    Event, EventBody, ExitInfo, Health, Metrics, MetricsSample, NodeState, RolloutState, Scope,
    Status, StopReason, TaskStatus,
};

/// `HH:MM:SS` (UTC) of a wall-clock time in ms.
pub fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// How an exit reads: `exit code 3`, `killed by signal 9 (exit code 137)`, `OOM-killed ...`.
pub fn exit(e: &ExitInfo) -> String {
    let base = match e.signal {
        Some(sig) => format!("killed by signal {sig} (exit code {})", e.code),
        None => format!("exit code {}", e.code),
    };
    if e.oom_killed {
        format!("OOM-killed: exceeded its memory limit, {base}")
    } else {
        base
    }
}

fn scope(s: Scope) -> &'static str {
    match s {
        Scope::Cluster => "cluster",
        Scope::Node => "node",
    }
}

/// One event, without node or time.
pub fn event_body(b: &EventBody) -> String {
    match b {
        EventBody::AgentStarted { version } => format!("agent started (skiff {version})"),
        EventBody::DesiredApplied { scope: s, version } => {
            format!("applied {} desired state version {version}", scope(*s))
        }
        EventBody::DesiredRejected {
            scope: s,
            version,
            reason,
        } => match version {
            Some(v) => format!("REJECTED {} desired state version {v}: {reason}", scope(*s)),
            None => format!("REJECTED {} desired state: {reason}", scope(*s)),
        },
        EventBody::ImagePulling {
            task,
            container,
            image,
            done,
            total,
        } => format!(
            "{task}/{container}: pulling {image}: {} of {}",
            crate::images::progress::human(*done),
            crate::images::progress::human(*total)
        ),
        EventBody::ImageReady {
            task,
            container,
            image,
            digest,
        } => {
            format!("{task}/{container}: image {image} ready ({digest})")
        }
        EventBody::TaskStarting {
            task,
            revision,
            attempt,
        } => {
            format!("{task}: starting revision {revision} (attempt {attempt})")
        }
        EventBody::ContainerStarted {
            task,
            container,
            pid,
        } => {
            format!("{task}/{container}: running (pid {pid})")
        }
        EventBody::ContainerExited {
            task,
            container,
            exit: e,
        } => {
            format!("{task}/{container}: exited, {}", exit(e))
        }
        EventBody::TaskRunning { task } => format!("{task}: running"),
        EventBody::TaskStopped {
            task,
            reason,
            exit: e,
        } => {
            let why = match reason {
                StopReason::EssentialExited => "an essential container exited",
                StopReason::Removed => "removed from desired state",
                StopReason::Replaced => "replaced by a new definition",
                StopReason::Shutdown => "agent shutting down",
                StopReason::StartFailed => "start failed",
                StopReason::TimedOut => "timed out",
                StopReason::Unhealthy => "unhealthy",
                StopReason::ServiceUpdated => "service scaled in or updated",
                StopReason::Drained => "node draining",
            };
            match e {
                Some(e) => format!("{task}: stopped ({why}, {})", exit(e)),
                None => format!("{task}: stopped ({why})"),
            }
        }
        EventBody::TaskRestarting {
            task,
            attempt,
            delay_ms,
        } => {
            format!(
                "{task}: restarting in {:.1} s (attempt {attempt})",
                *delay_ms as f64 / 1000.0
            )
        }
        EventBody::TaskFailed { task, reason } => format!("{task}: FAILED: {reason}"),
        EventBody::StateNotSaved { what, reason } => {
            format!("STATE NOT SAVED: {what}: {reason} (kept in memory; lost at a restart)")
        }
        EventBody::OutboxOverflow {
            dropped_events,
            merged_samples,
        } => format!(
            "outbox was full while offline: {merged_samples} metrics samples merged, {dropped_events} events dropped"
        ),
        EventBody::ScheduleSkipped { task, reason } => {
            format!("{task}: scheduled run skipped: {reason}")
        }
        EventBody::HealthChanged {
            task,
            container,
            health,
            output,
        } => {
            let h = health_str(*health);
            if output.is_empty() {
                format!("{task}/{container}: {h}")
            } else {
                format!("{task}/{container}: {h}: {}", output.trim_end())
            }
        }
        EventBody::DeploymentStarted {
            service,
            deployment,
            revision,
        } => format!("service {service}: deployment {deployment} rolling out revision {revision}"),
        EventBody::DeploymentCompleted {
            service,
            deployment,
            revision,
        } => format!("service {service}: deployment {deployment} (revision {revision}) completed"),
        EventBody::DeploymentFailed {
            service,
            deployment,
            revision,
            reason,
            rollback_to,
        } => match rollback_to {
            Some(r) => format!(
                "service {service}: deployment {deployment} (revision {revision}) FAILED: {reason}; rolling back to revision {r}"
            ),
            None => format!(
                "service {service}: deployment {deployment} (revision {revision}) FAILED: {reason}"
            ),
        },
        EventBody::ServiceScaled {
            service,
            from,
            to,
            cause,
        } => format!("service {service}: scaled {from} → {to} tasks: {cause}"),
        EventBody::NodeStateChanged { state } => format!("node {}", node_state(*state)),
        EventBody::TrustUpdated { version, keys } => {
            let keys: Vec<&str> = keys.iter().map(skiff_proto::Name::as_str).collect();
            format!("trust version {version}: trusted keys {}", keys.join(", "))
        }
        EventBody::TrustRejected { version, reason } => {
            format!("trust update version {version} REJECTED: {reason}")
        }
        EventBody::EndpointsChanged { task, endpoints } if endpoints.is_empty() => {
            format!("{task}: no endpoints")
        }
        EventBody::EndpointsChanged { task, endpoints } => {
            let list: Vec<String> = endpoints.iter().map(endpoint).collect();
            format!("{task}: endpoints {}", list.join(", "))
        }
        EventBody::QueueClaimed { request, attempt } => {
            format!("{request}: claimed from the cluster queue (offer {attempt})")
        }
        EventBody::QueueHandedBack {
            request,
            attempt,
            reason,
        } => format!("{request}: handed back to the cluster queue (offer {attempt}): {reason}"),
        EventBody::QueueRejected {
            request,
            attempt,
            reason,
        } => match request {
            Some(r) => format!("{r}: REJECTED queued task (offer {attempt}): {reason}"),
            None => format!("REJECTED a cluster-queue message: {reason}"),
        },
        EventBody::QueueFinished {
            request,
            ok,
            reason,
            ..
        } => {
            let how = if *ok { "succeeded" } else { "FAILED" };
            format!("{request}: queued task {how}: {reason}")
        }
        EventBody::TaskAdopted {
            task,
            running,
            exited,
        } => format!(
            "{task}: adopted after an agent restart ({running} container(s) running, \
             {exited} exited meanwhile)"
        ),
    }
}

/// `main 8080/tcp → host port 49153 (10.88.0.2)` (bridge), `main 80/tcp at 192.168.1.200`
/// (awsvpc: its own address, nothing mapped), `main 80/tcp → host port 80 (host network)`.
pub fn endpoint(e: &skiff_proto::Endpoint) -> String {
    let port = format!(
        "{} {}/{}",
        e.container,
        e.container_port,
        crate::ecs::protocol_str(e.protocol)
    );
    match (e.host_port, e.address.as_str()) {
        (0, addr) => format!("{port} at {addr}"),
        (hp, "") => format!("{port} → host port {hp} (host network)"),
        (hp, addr) => format!("{port} → host port {hp} ({addr})"),
    }
}

/// `healthy`, `unhealthy`, `unknown`.
pub fn health_str(h: Health) -> &'static str {
    match h {
        Health::Unknown => "health unknown",
        Health::Healthy => "healthy",
        Health::Unhealthy => "UNHEALTHY",
    }
}

/// `online`, `offline`, `draining`, `drained`.
pub fn node_state(s: NodeState) -> &'static str {
    match s {
        NodeState::Online => "online",
        NodeState::Offline => "offline",
        NodeState::Draining => "draining",
        NodeState::Drained => "drained",
    }
}

/// A node state in a table or status line: `DRAINING` and `DRAINED` stand out, since a node in
/// them runs nothing new until `skiff ctl activate`.
pub fn node_state_label(s: NodeState) -> &'static str {
    match s {
        NodeState::Online | NodeState::Offline => node_state(s),
        NodeState::Draining => "DRAINING",
        NodeState::Drained => "DRAINED",
    }
}

/// `web.1:running`, `web.2:running(healthy)`, `web.3:running(UNHEALTHY)`; a `!` after the
/// state when a container runs without the seccomp filter (`web.4:running!`).
pub fn task_brief(t: &TaskStatus) -> String {
    let mut state = format!("{:?}", t.state).to_lowercase();
    if t.containers.iter().any(|c| c.unfiltered) {
        state.push('!');
    }
    match t.health {
        Health::Unknown => format!("{}:{state}", t.name),
        Health::Healthy => format!("{}:{state}(healthy)", t.name),
        Health::Unhealthy => format!("{}:{state}(UNHEALTHY)", t.name),
    }
}

/// ECS's spelling of a rollout state.
pub fn rollout_state(r: RolloutState) -> &'static str {
    match r {
        RolloutState::InProgress => "IN_PROGRESS",
        RolloutState::Completed => "COMPLETED",
        RolloutState::Failed => "FAILED",
    }
}

/// `12:00:01 pi-1 #7 web: running`.
pub fn event(e: &Event) -> String {
    format!(
        "{} {} #{} {}",
        clock(e.at_ms),
        e.node,
        e.seq,
        event_body(&e.body)
    )
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// One sample on one line.
pub fn sample(node: &str, s: &MetricsSample) -> String {
    let mut line = format!(
        "{} {node} metrics: cpu {:.1}%, mem {} / {}",
        clock(s.at_ms),
        s.cpu_pct,
        mib(s.mem_used_bytes),
        mib(s.mem_total_bytes)
    );
    for t in &s.tasks {
        line.push_str(&format!(
            "; {} cpu {:.1}% mem {}",
            t.task,
            t.cpu_pct,
            mib(t.mem_bytes)
        ));
        if let Some(l) = t.mem_limit_bytes {
            line.push_str(&format!(" / {}", mib(l)));
        }
    }
    line
}

/// Every sample of a batch.
pub fn metrics(m: &Metrics) -> Vec<String> {
    m.samples
        .iter()
        .map(|s| sample(m.node.as_str(), s))
        .collect()
}

/// A table of node statuses, for `skiff ctl nodes`. Desired-state versions are wide enough for
/// the unix seconds `skiff ctl apply` uses. SEEN: time since the node's last status report;
/// CPU: use at that report over the node's CPUs; MEM: used over total; TASKS: active over all.
pub fn nodes_table(nodes: &[Status], now_ms: u64) -> String {
    let name_w = nodes
        .iter()
        .map(|s| s.node.as_str().len())
        .max()
        .unwrap_or(0)
        .max(12);
    let labels: Vec<String> = nodes.iter().map(|s| labels(&s.labels)).collect();
    let labels_w = labels.iter().map(String::len).max().unwrap_or(0).max(6);
    let mut out = format!(
        "{:<name_w$} {:<8} {:>5} {:<9} {:>10} {:>10} {:>8} {:>11} {:>7}  {:<labels_w$}  {}\n",
        "NODE",
        "STATE",
        "SEEN",
        "VERSION",
        "CLUSTER",
        "NODE-DS",
        "CPU",
        "MEM",
        "TASKS",
        "LABELS",
        "RUNNING"
    );
    for (s, labels) in nodes.iter().zip(labels) {
        let running: Vec<String> = s.tasks.iter().map(task_brief).collect();
        let (active, all) = crate::ctl::fleet::task_counts(s);
        let line = format!(
            "{:<name_w$} {:<8} {:>5} {:<9} {:>10} {:>10} {:>8} {:>11} {:>7}  {:<labels_w$}  {}",
            s.node.as_str(),
            node_state_label(s.state),
            age(now_ms.saturating_sub(s.at_ms)),
            s.agent_version,
            s.cluster_version,
            s.node_version,
            cpu(s),
            mem(s),
            format!("{active}/{all}"),
            labels,
            running.join(" ")
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `arch=arm64,site=north`, or `-`.
pub fn labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `45s`, `12m`, `3h`, `9d`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=99 => format!("{s}s"),
        100..=5999 => format!("{}m", s / 60),
        6000..=359_999 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `512B`, `1.5K`, `412M`, `1.9G`: short sizes for tables.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 10.0 {
        format!("{v:.0}{}", UNITS[unit])
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// `23%/4`: CPU use over the node's CPUs (`-` for the use of an offline node).
pub fn cpu(s: &Status) -> String {
    cpu_of(s.state, s.resources.cpu_pct, s.resources.cpus)
}

/// [`cpu`] from figures that may come from a newer metrics sample (`skiff ctl top`).
pub fn cpu_of(state: NodeState, cpu_pct: f32, cpus: u32) -> String {
    let cpus = if cpus == 0 {
        "?".to_string()
    } else {
        cpus.to_string()
    };
    if state == NodeState::Offline {
        format!("-/{cpus}")
    } else {
        format!("{cpu_pct:.0}%/{cpus}")
    }
}

/// `412M/1.9G`: memory used over total (`-` for what is not known).
pub fn mem(s: &Status) -> String {
    mem_of(
        s.state,
        s.resources.mem_used_bytes,
        s.resources.mem_total_bytes,
    )
}

/// [`mem`] from figures that may come from a newer metrics sample (`skiff ctl top`).
pub fn mem_of(state: NodeState, used: u64, total: u64) -> String {
    let total = if total == 0 { "?".into() } else { size(total) };
    if state == NodeState::Offline {
        format!("-/{total}")
    } else {
        format!("{}/{total}", size(used))
    }
}

/// Each node's services, for `skiff ctl services`: one row per service (`NODE SERVICE`), then
/// one per deployment, newest (primary) first, as `aws ecs describe-services` lists them.
/// Service rows count pending tasks over all deployments; `ROLLOUT` is the primary's.
pub fn services_table(nodes: &[Status]) -> String {
    struct Row {
        label: String,
        desired: u32,
        pending: u32,
        running: u32,
        healthy: u32,
        failed: Option<u32>,
        rollout: &'static str,
    }
    let mut rows = Vec::new();
    for n in nodes {
        let note = match n.state {
            NodeState::Online => String::new(),
            other => format!(" [{}]", node_state(other)),
        };
        for svc in &n.services {
            let primary = svc.deployments.iter().find(|d| d.primary);
            rows.push(Row {
                label: format!("{} {}{note}", n.node, svc.name),
                desired: svc.desired_count,
                pending: svc.deployments.iter().map(|d| d.pending_count).sum(),
                running: svc.running_count,
                healthy: svc.healthy_count,
                failed: None,
                rollout: primary.map_or("-", |d| rollout_state(d.rollout)),
            });
            for d in &svc.deployments {
                let role = if d.primary { "PRIMARY" } else { "ACTIVE" };
                rows.push(Row {
                    label: format!("  {}: revision {} {role}", d.id, d.revision),
                    desired: d.desired_count,
                    pending: d.pending_count,
                    running: d.running_count,
                    healthy: d.healthy_count,
                    failed: Some(d.failed_tasks),
                    rollout: rollout_state(d.rollout),
                });
            }
        }
    }
    const FIRST: &str = "NODE SERVICE / DEPLOYMENT";
    let w = rows
        .iter()
        .map(|r| r.label.chars().count())
        .chain([FIRST.len()])
        .max()
        .unwrap_or(FIRST.len());
    let mut out = format!(
        "{:<w$}  {:>7}  {:>7}  {:>7}  {:>7}  {:>6}  {}\n",
        "NODE SERVICE / DEPLOYMENT",
        "DESIRED",
        "PENDING",
        "RUNNING",
        "HEALTHY",
        "FAILED",
        "ROLLOUT"
    );
    for r in rows {
        let failed = r.failed.map_or("-".to_string(), |f| f.to_string());
        out.push_str(&format!(
            "{:<w$}  {:>7}  {:>7}  {:>7}  {:>7}  {failed:>6}  {}\n",
            r.label, r.desired, r.pending, r.running, r.healthy, r.rollout
        ));
    }
    out
}

/// A run history as a table, or one JSON object per run.
pub fn history(runs: &[skiff_proto::RunRecord], json: bool) -> String {
    let mut out = String::new();
    if json {
        for r in runs {
            out.push_str(&serde_json::to_string(r).unwrap_or_default());
            out.push('\n');
        }
        return out;
    }
    if runs.is_empty() {
        return "no runs recorded\n".into();
    }
    out.push_str(&format!(
        "{:<24} {:>8} {:>4} {:>9}  {}\n",
        "STARTED (UTC)", "REVISION", "RUN", "DURATION", "RESULT"
    ));
    for r in runs {
        let result = match (&r.failure, &r.exit) {
            (Some(f), _) => format!("failed to start: {f}"),
            (None, Some(e)) => exit(e),
            (None, None) => format!("{:?}", r.reason).to_lowercase(),
        };
        let secs = r.ended_at_ms.saturating_sub(r.started_at_ms) as f64 / 1000.0;
        out.push_str(&format!(
            "{:<24} {:>8} {:>4} {:>8.1}s  {result}\n",
            datetime(r.started_at_ms),
            r.revision,
            r.attempt,
            secs
        ));
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a wall-clock time in ms.
pub fn datetime(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {}", clock(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::{DeploymentStatus, ServiceStatus, TaskState};

    fn n(s: &str) -> skiff_proto::Name {
        s.parse().expect("name")
    }

    fn task(name: &str, state: TaskState, health: Health) -> TaskStatus {
        TaskStatus {
            name: n(name),
            revision: 1,
            state,
            restarts: 0,
            last_exit: None,
            containers: vec![],
            service: None,
            health,
            endpoints: vec![],
        }
    }

    #[test]
    fn an_unfiltered_container_is_marked() {
        let mut t = task("web.1", TaskState::Running, Health::Healthy);
        let c = |unfiltered| skiff_proto::ContainerStatus {
            name: n("main"),
            state: skiff_proto::ContainerState::Running,
            pid: Some(7),
            exit: None,
            health: Health::Healthy,
            unfiltered,
        };
        t.containers = vec![c(false)];
        assert_eq!(task_brief(&t), "web.1:running(healthy)");
        t.containers.push(c(true));
        assert_eq!(task_brief(&t), "web.1:running!(healthy)");
    }

    fn status(node: &str, state: NodeState) -> Status {
        Status {
            node: n(node),
            state,
            agent_version: "0.1.0".into(),
            cluster_version: 0,
            node_version: 7,
            at_ms: 1_000_000,
            tasks: vec![],
            services: vec![],
            labels: Default::default(),
            resources: Default::default(),
        }
    }

    #[test]
    fn nodes_table_shows_drain_states_and_task_health() {
        let mut a = status("pi-1", NodeState::Online);
        a.tasks = vec![
            task("Web.1", TaskState::Running, Health::Healthy),
            task("web.2", TaskState::Running, Health::Unhealthy),
            task("cron", TaskState::Stopped, Health::Unknown),
        ];
        a.labels = [("arch", "arm64"), ("site", "north")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        a.resources = skiff_proto::NodeResources {
            cpus: 4,
            mem_total_bytes: 2 << 30,
            cpu_pct: 23.4,
            mem_used_bytes: 412 << 20,
        };
        let mut d = status("pi-4", NodeState::Offline);
        d.resources.cpus = 2;
        let t = nodes_table(
            &[
                a,
                status("pi-2", NodeState::Draining),
                status("pi-3", NodeState::Drained),
                d,
            ],
            4_000_000,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NODE "), "{t}");
        assert!(
            lines[1].ends_with("Web.1:running(healthy) web.2:running(UNHEALTHY) cron:stopped"),
            "{t}"
        );
        assert!(lines[1].contains(" online "), "{t}");
        assert!(lines[2].contains(" DRAINING "), "{t}");
        assert!(lines[3].contains(" DRAINED "), "{t}");
        assert!(lines[4].contains(" offline "), "{t}");
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cols[..10],
            [
                "pi-1",
                "online",
                "50m",
                "0.1.0",
                "0",
                "7",
                "23%/4",
                "412M/2.0G",
                "2/3",
                "arch=arm64,site=north"
            ],
            "{t}"
        );
        // Nodes without labels or a known size; an offline node's use is not known.
        let cols: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(cols[6..10], ["0%/?", "0B/?", "0/0", "-"], "{t}");
        let cols: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(cols[6..8], ["-/2", "-/?"], "{t}");
    }

    #[test]
    fn short_sizes_and_ages() {
        assert_eq!(size(0), "0B");
        assert_eq!(size(1023), "1023B");
        assert_eq!(size(1536), "1.5K");
        assert_eq!(size(412 << 20), "412M");
        assert_eq!(size(1_932_735_283), "1.8G");
        assert_eq!(age(45_000), "45s");
        assert_eq!(age(720_000), "12m");
        assert_eq!(age(3 * 3_600_000), "3h");
        assert_eq!(age(9 * 86_400_000), "9d");
    }

    fn deployment(
        id: u32,
        revision: u32,
        primary: bool,
        rollout: RolloutState,
    ) -> DeploymentStatus {
        DeploymentStatus {
            id,
            revision,
            primary,
            rollout,
            desired_count: if primary { 3 } else { 0 },
            pending_count: u32::from(primary),
            running_count: if primary { 1 } else { 2 },
            healthy_count: 1,
            failed_tasks: if primary { 2 } else { 0 },
        }
    }

    #[test]
    fn services_table_lists_services_then_their_deployments() {
        let mut a = status("pi-1", NodeState::Online);
        a.services = vec![ServiceStatus {
            name: n("web"),
            desired_count: 3,
            running_count: 3,
            healthy_count: 2,
            deployments: vec![
                deployment(4, 7, true, RolloutState::InProgress),
                deployment(3, 6, false, RolloutState::Completed),
            ],
        }];
        let mut b = status("pi-2", NodeState::Draining);
        b.services = vec![ServiceStatus {
            name: n("api"),
            desired_count: 2,
            running_count: 0,
            healthy_count: 0,
            deployments: vec![],
        }];
        let t = services_table(&[a, b, status("pi-3", NodeState::Online)]);
        let want = "\
NODE SERVICE / DEPLOYMENT  DESIRED  PENDING  RUNNING  HEALTHY  FAILED  ROLLOUT
pi-1 web                         3        1        3        2       -  IN_PROGRESS
  4: revision 7 PRIMARY          3        1        1        1       2  IN_PROGRESS
  3: revision 6 ACTIVE           0        0        2        1       0  COMPLETED
pi-2 api [draining]              2        0        0        0       -  -
";
        assert_eq!(t, want);
    }

    #[test]
    fn drain_states_and_health_read_as_users_expect() {
        assert_eq!(node_state_label(NodeState::Draining), "DRAINING");
        assert_eq!(node_state_label(NodeState::Online), "online");
        assert_eq!(
            event_body(&EventBody::NodeStateChanged {
                state: NodeState::Drained
            }),
            "node drained"
        );
        assert_eq!(
            event_body(&EventBody::HealthChanged {
                task: n("web.1"),
                container: n("httpd"),
                health: Health::Unhealthy,
                output: "wget: can't connect\n".into(),
            }),
            "web.1/httpd: UNHEALTHY: wget: can't connect"
        );
        assert_eq!(
            event_body(&EventBody::DeploymentFailed {
                service: n("web"),
                deployment: 5,
                revision: 8,
                reason: "3 tasks failed".into(),
                rollback_to: Some(7),
            }),
            "service web: deployment 5 (revision 8) FAILED: 3 tasks failed; rolling back to revision 7"
        );
    }

    #[test]
    fn exits_read_as_users_expect() {
        assert_eq!(
            exit(&ExitInfo {
                code: 3,
                signal: None,
                oom_killed: false
            }),
            "exit code 3"
        );
        assert_eq!(
            exit(&ExitInfo {
                code: 137,
                signal: Some(9),
                oom_killed: true
            }),
            "OOM-killed: exceeded its memory limit, killed by signal 9 (exit code 137)"
        );
        assert_eq!(clock(3_600_000 + 61_000), "01:01:01");
        assert_eq!(datetime(0), "1970-01-01 00:00:00");
        assert_eq!(datetime(1_764_081_296_000), "2025-11-25 14:34:56");
        assert_eq!(datetime(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn endpoints_say_how_they_are_reached() {
        let e = |host_port: u16, address: &str| skiff_proto::Endpoint {
            container: n("main"),
            container_port: 80,
            host_port,
            protocol: skiff_proto::Protocol::Tcp,
            address: address.into(),
        };
        assert_eq!(
            endpoint(&e(49153, "10.88.0.2")),
            "main 80/tcp → host port 49153 (10.88.0.2)"
        );
        assert_eq!(
            endpoint(&e(0, "192.168.1.200")),
            "main 80/tcp at 192.168.1.200"
        );
        assert_eq!(
            endpoint(&e(80, "")),
            "main 80/tcp → host port 80 (host network)"
        );
    }
}
