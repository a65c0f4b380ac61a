//! Services end to end: real containers, a real broker, the status stream sampled by an
//! independent `mosquitto_sub`. A service of 3 busybox tasks; a container killed from outside
//! is replaced; a revision whose health check fails is rolled back by the circuit breaker
//! without ever dropping below the minimum healthy count; the node drains and comes back; a
//! CPU-burning service scales out under target tracking and back in when the load stops.

use std::time::{Duration, Instant};

use skiff_proto::codec::Message;
use skiff_proto::{EventBody, NodeState, RolloutState, ServiceStatus, Status, TaskState};

use crate::harness::{task_file, Agent, Broker, Sub};
use crate::require_env;

const T: Duration = Duration::from_secs(60);

fn topics(a: &Agent) -> (String, String) {
    (
        format!("skiff/v1/{}/nodes/{}/events", a.cluster, a.node),
        format!("skiff/v1/{}/nodes/{}/status", a.cluster, a.node),
    )
}

fn event(m: &Message) -> Option<&EventBody> {
    match m {
        Message::Event(e) => Some(&e.body),
        _ => None,
    }
}

fn status(m: &Message) -> Option<&Status> {
    match m {
        Message::Status(s) => Some(s),
        _ => None,
    }
}

fn service<'a>(s: &'a Status, name: &str) -> Option<&'a ServiceStatus> {
    s.services.iter().find(|v| v.name.as_str() == name)
}

/// The `web` service: 3 busybox tasks serving nothing, with a shell health check.
fn web(revision: u32, check: &str) -> String {
    format!(
        r#"{{"family":"web","revision":{revision},
        "service":{{"desiredCount":3,
            "deploymentConfiguration":{{"minimumHealthyPercent":100,"maximumPercent":200,
                "deploymentCircuitBreaker":{{"enable":true,"rollback":true}}}}}},
        "containerDefinitions":[{{"name":"main","image":"busybox","stopTimeout":2,
            "command":["sleep","3600"],
            "healthCheck":{{"command":["CMD-SHELL","{check}"],"interval":1,"timeout":1,"retries":2}}}}]}}"#
    )
}

/// Forgets what was received so far: the next waits see only what comes after.
fn fresh(sub: &mut Sub) {
    sub.drain();
    sub.seen.clear();
}

fn apply(agent: &Agent, broker: &Broker, file: &std::path::Path) {
    let out = agent.ctl(
        broker,
        &["apply", file.to_str().expect("utf8"), "--node", &agent.node],
    );
    assert!(
        out.status.success(),
        "apply failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for a deployment of `web` to complete; returns its id.
fn completed(sub: &mut Sub, revision: u32) -> u32 {
    sub.wait("deployment completed", T, |_, m| match event(m)? {
        EventBody::DeploymentCompleted {
            service,
            deployment,
            revision: r,
        } if service.as_str() == "web" && *r == revision => Some(*deployment),
        _ => None,
    })
}

#[test]
fn a_service_replaces_killed_tasks_rolls_back_a_failing_revision_and_drains() {
    require_env!();
    let broker = Broker::start();
    let agent = Agent::start(&broker, "e2e-services", "pi-1");
    let (events, status_topic) = topics(&agent);
    let mut sub = Sub::start(&broker, &[&events, &status_topic]);
    let files = tempfile::tempdir().expect("tempdir");

    let started = Instant::now();
    apply(
        &agent,
        &broker,
        &task_file(files.path(), "v1", &web(1, "true")),
    );
    completed(&mut sub, 1);
    eprintln!("3 tasks healthy after {:?}", started.elapsed());
    let st = sub.wait("3 healthy tasks", T, |t, m| {
        let s = status(m).filter(|_| t == status_topic)?;
        (service(s, "web")?.healthy_count == 3).then(|| s.clone())
    });
    let names: Vec<&str> = st.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["web.1", "web.2", "web.3"]);

    // Kill one container from outside: the task is replaced.
    fresh(&mut sub);
    let pid = st.tasks[1].containers[0].pid.expect("running pid");
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the container");
    sub.wait("web.2 restarting", T, |_, m| match event(m)? {
        EventBody::TaskRestarting { task, .. } if task.as_str() == "web.2" => Some(()),
        _ => None,
    });
    sub.wait("web.2 running again", T, |_, m| match event(m)? {
        EventBody::TaskRunning { task } if task.as_str() == "web.2" => Some(()),
        _ => None,
    });
    eprintln!("killed task replaced in {:?}", killed_at.elapsed());
    sub.wait("3 healthy again", T, |t, m| {
        let s = status(m).filter(|_| t == status_topic)?;
        (service(s, "web")?.healthy_count == 3).then_some(())
    });

    // Revision 2's health check fails: the circuit breaker rolls back to revision 1.
    fresh(&mut sub);
    let rollout = Instant::now();
    apply(
        &agent,
        &broker,
        &task_file(files.path(), "v2", &web(2, "exit 1")),
    );
    let rolled_back = sub.wait("deployment failed", T, |_, m| match event(m)? {
        EventBody::DeploymentFailed {
            revision: 2,
            rollback_to,
            ..
        } => Some(*rollback_to),
        _ => None,
    });
    assert_eq!(rolled_back, Some(1));
    completed(&mut sub, 1);
    eprintln!("failed rollout rolled back in {:?}", rollout.elapsed());
    let st = sub.wait("rolled back, 3 healthy", T, |t, m| {
        let s = status(m).filter(|_| t == status_topic)?;
        let svc = service(s, "web")?;
        (svc.healthy_count == 3
            && svc.deployments.len() == 1
            && svc.deployments[0].rollout == RolloutState::Completed)
            .then(|| s.clone())
    });
    assert!(st
        .tasks
        .iter()
        .all(|t| t.revision == 1 && t.state == TaskState::Running));
    // Never fewer healthy tasks than the minimum (100% of 3) while it happened, and never more
    // than 200% placed.
    let mut samples = 0;
    for (t, m) in &sub.seen {
        let Some(s) = status(m).filter(|_| *t == status_topic) else {
            continue;
        };
        let svc = service(s, "web").expect("web in every status");
        assert!(svc.healthy_count >= 3, "below the minimum: {svc:?}");
        let placed = s
            .tasks
            .iter()
            .filter(|t| {
                matches!(
                    t.state,
                    TaskState::Pending | TaskState::Running | TaskState::Stopping
                )
            })
            .count();
        assert!(placed <= 6, "{placed} tasks placed");
        samples += 1;
    }
    assert!(
        samples > 5,
        "only {samples} status samples during the rollout"
    );

    // Drain: every service task stops; activate brings them back.
    fresh(&mut sub);
    let out = agent.ctl(&broker, &["drain", "pi-1", "--wait", "--timeout", "60"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sub.wait("drained", T, |t, m| {
        let s = status(m).filter(|_| t == status_topic)?;
        (s.state == NodeState::Drained).then_some(())
    });
    let out = agent.ctl(&broker, &["activate", "pi-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sub.wait("3 healthy after activate", T, |t, m| {
        let s = status(m).filter(|_| t == status_topic)?;
        (s.state == NodeState::Online && service(s, "web")?.healthy_count == 3).then_some(())
    });
}

#[test]
fn target_tracking_scales_out_under_cpu_load_and_back_in() {
    require_env!();
    let broker = Broker::start();
    let agent = Agent::start(&broker, "e2e-scaling", "pi-1");
    let (events, status_topic) = topics(&agent);
    let mut sub = Sub::start(&broker, &[&events, &status_topic]);
    let files = tempfile::tempdir().expect("tempdir");
    // A quarter of a CPU per task, burnt for 6 s after each start, then idle.
    let burn = r#"{"family":"burn","cpu":"256",
        "service":{"desiredCount":1,
            "autoScaling":{"minCapacity":1,"maxCapacity":3,
                "targetTracking":[{"metric":"ECSServiceAverageCPUUtilization","targetValue":50,
                    "scaleOutCooldown":0,"scaleInCooldown":4}]}},
        "containerDefinitions":[{"name":"main","image":"busybox","stopTimeout":1,
            "entryPoint":["sh","-c"],
            "command":["end=$(( $(date +%s) + 6 )); while [ $(date +%s) -lt $end ]; do :; done; exec sleep 3600"]}]}"#;
    let started = Instant::now();
    apply(&agent, &broker, &task_file(files.path(), "burn", burn));
    let cause = sub.wait("scale out to 3", T, |_, m| match event(m)? {
        EventBody::ServiceScaled { to: 3, cause, .. } => Some(cause.clone()),
        _ => None,
    });
    eprintln!("scaled out to 3 after {:?}: {cause}", started.elapsed());
    assert!(cause.contains("target tracking: average CPU"), "{cause}");
    sub.wait("3 running", T, |t, m| {
        let s = status(m).filter(|_| t == status_topic)?;
        (service(s, "burn")?.running_count == 3).then_some(())
    });
    let cause = sub.wait("scale in to 1", T, |_, m| match event(m)? {
        EventBody::ServiceScaled { to: 1, cause, .. } => Some(cause.clone()),
        _ => None,
    });
    eprintln!("scaled in to 1 after {:?}: {cause}", started.elapsed());
    sub.wait("1 running", T, |t, m| {
        let s = status(m).filter(|_| t == status_topic)?;
        let svc = service(s, "burn")?;
        (svc.running_count == 1 && s.tasks.len() == 1).then_some(())
    });
}
