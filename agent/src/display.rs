//! Human-readable lines for events, metrics and status, shared by `skiff ctl watch`, `skiff ctl
//! nodes` and the agent's local mode.

use skiff_proto::{
    Event, EventBody, ExitInfo, Metrics, MetricsSample, NodeState, Scope, Status, StopReason,
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

/// A table of node statuses, for `skiff ctl nodes`.
pub fn nodes_table(nodes: &[Status], now_ms: u64) -> String {
    let mut out = format!(
        "{:<20} {:<8} {:<9} {:>8} {:>8} {:>6} {:>8}  {}\n",
        "NODE", "STATE", "VERSION", "CLUSTER", "NODE-DS", "TASKS", "AGE", "RUNNING"
    );
    for s in nodes {
        let state = match s.state {
            NodeState::Online => "online",
            NodeState::Offline => "offline",
        };
        let running: Vec<String> = s
            .tasks
            .iter()
            .map(|t| format!("{}:{:?}", t.name, t.state).to_lowercase())
            .collect();
        let age = now_ms.saturating_sub(s.at_ms) / 1000;
        out.push_str(&format!(
            "{:<20} {:<8} {:<9} {:>8} {:>8} {:>6} {:>7}s  {}\n",
            s.node.as_str(),
            state,
            s.agent_version,
            s.cluster_version,
            s.node_version,
            s.tasks.len(),
            age,
            running.join(" ")
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
}
