//! Reconciler tests: the core driven with a fake clock, its actions checked; the "runtime" is
//! the test itself, answering actions with the events a real runtime would send.

use super::*;
use skiff_proto::codec::{encode, header_bytes};
use skiff_proto::{ContainerDefinition, NetworkMode};

pub(super) fn n(s: &str) -> Name {
    s.parse().expect("valid name")
}

pub(super) fn at(ms: u64) -> Time {
    Time {
        wall_trusted: true,
        mono_ms: ms,
        wall_ms: 1_764_000_000_000 + ms,
    }
}

pub(super) fn container(name: &str, essential: bool) -> ContainerDefinition {
    ContainerDefinition {
        name: n(name),
        image: "busybox".into(),
        entry_point: vec![],
        command: vec!["true".into()],
        environment: vec![],
        cpu: None,
        memory_mib: None,
        memory_reservation_mib: None,
        essential,
        working_directory: None,
        user: None,
        health_check: None,
        stop_timeout_secs: None,
        depends_on: vec![],
        port_mappings: vec![],
        secrets: vec![],
        security: Default::default(),
        mount_points: vec![],
    }
}

pub(super) fn task(family: &str, policy: RestartPolicy) -> TaskDefinition {
    TaskDefinition {
        family: n(family),
        revision: 1,
        containers: vec![container("main", true)],
        cpu: None,
        memory_mib: None,
        network_mode: NetworkMode::None,
        restart_policy: policy,
        extensions: vec![],
    }
}

pub(super) fn catalog() -> Catalog {
    [(
        "docker.io/library/busybox:latest".to_string(),
        "sha256:aa".to_string(),
    )]
    .into()
}

pub(super) fn core() -> Core {
    Core::new(CoreConfig {
        node: n("pi-1"),
        cluster: n("demo"),
        agent_version: "0.1.0".into(),
        stop_grace_ms: 10_000,
    })
}

pub(super) fn doc(version: u64, tasks: Vec<TaskDefinition>) -> Vec<u8> {
    encode(&Message::DesiredState(DesiredState {
        version,
        cluster: n("demo"),
        node: Some(n("pi-1")),
        tasks,
        signature: None,
    }))
    .expect("encodes")
}

pub(super) fn apply(
    c: &mut Core,
    version: u64,
    tasks: Vec<TaskDefinition>,
    now: Time,
) -> Vec<Action> {
    c.handle(
        Event::DesiredPayload {
            scope: Scope::Node,
            payload: doc(version, tasks),
            images: catalog(),
        },
        now,
    )
}

pub(super) fn starts(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StartTask { def } => Some(def.family.to_string()),
            _ => None,
        })
        .collect()
}

pub(super) fn signals(actions: &[Action]) -> Vec<(String, String, Signal)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal {
                task,
                container,
                signal,
            } => Some((task.to_string(), container.to_string(), *signal)),
            _ => None,
        })
        .collect()
}

pub(super) fn removes(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RemoveTask { task, .. } => Some(task.to_string()),
            _ => None,
        })
        .collect()
}

pub(super) fn events(actions: &[Action]) -> Vec<EventBody> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn rejection(actions: &[Action]) -> Option<String> {
    events(actions).into_iter().find_map(|e| match e {
        EventBody::DesiredRejected { reason, .. } => Some(reason),
        _ => None,
    })
}

pub(super) fn last_status(actions: &[Action]) -> Option<Status> {
    actions.iter().rev().find_map(|a| match a {
        Action::Status(s) => Some(s.clone()),
        _ => None,
    })
}

/// Plays the runtime: starts every container of the task.
pub(super) fn run(c: &mut Core, family: &str, now: Time) -> Vec<Action> {
    let def = c.tasks.get(&n(family)).expect("task").def.clone();
    let mut out = Vec::new();
    for (i, ct) in def.containers.iter().enumerate() {
        let pid = 100 + u32::try_from(i).expect("small");
        out.extend(c.handle(
            Event::ContainerStarted {
                task: n(family),
                container: ct.name.clone(),
                pid,
            },
            now,
        ));
    }
    out.extend(c.handle(Event::TaskStarted { task: n(family) }, now));
    out
}

pub(super) fn exit(
    c: &mut Core,
    family: &str,
    container: &str,
    code: i32,
    now: Time,
) -> Vec<Action> {
    let exit = ExitInfo {
        code,
        signal: None,
        oom_killed: false,
    };
    c.handle(
        Event::ContainerExited {
            task: n(family),
            container: n(container),
            exit,
        },
        now,
    )
}

pub(super) fn removed(c: &mut Core, family: &str, now: Time) -> Vec<Action> {
    c.handle(
        Event::TaskRemoved {
            task: n(family),
            error: None,
        },
        now,
    )
}

#[test]
fn starts_missing_tasks_and_reports_running() {
    let mut c = core();
    let a = apply(&mut c, 1, vec![task("web", RestartPolicy::Always)], at(0));
    assert_eq!(starts(&a), ["web"]);
    assert!(events(&a).contains(&EventBody::DesiredApplied {
        scope: Scope::Node,
        version: 1
    }));
    let a = run(&mut c, "web", at(10));
    assert!(events(&a).contains(&EventBody::TaskRunning { task: n("web") }));
    let status = last_status(&a).expect("status published on change");
    assert_eq!(status.node_version, 1);
    assert_eq!(status.tasks[0].state, TaskState::Running);
    assert_eq!(status.tasks[0].containers[0].pid, Some(100));
}

#[test]
fn reapplying_the_same_document_is_idempotent() {
    let mut c = core();
    apply(&mut c, 1, vec![task("web", RestartPolicy::Never)], at(0));
    run(&mut c, "web", at(1));
    // Retained re-delivery: same version, same content: nothing at all.
    assert_eq!(
        apply(&mut c, 1, vec![task("web", RestartPolicy::Never)], at(2)),
        vec![]
    );
    // New version, same task: applied, but the task is left alone.
    let a = apply(&mut c, 2, vec![task("web", RestartPolicy::Never)], at(3));
    assert!(
        starts(&a).is_empty() && signals(&a).is_empty() && removes(&a).is_empty(),
        "{a:?}"
    );
    assert!(events(&a).contains(&EventBody::DesiredApplied {
        scope: Scope::Node,
        version: 2
    }));
}

#[test]
fn stops_removed_tasks_with_term_then_kill_after_grace() {
    let mut c = core();
    apply(&mut c, 1, vec![task("web", RestartPolicy::Always)], at(0));
    run(&mut c, "web", at(1));
    let a = apply(&mut c, 2, vec![], at(1_000));
    assert_eq!(signals(&a), [("web".into(), "main".into(), Signal::Term)]);
    assert_eq!(c.next_deadline(), Some(11_000));
    assert!(signals(&c.handle(Event::Tick, at(10_999))).is_empty());
    let a = c.handle(Event::Tick, at(11_000));
    assert_eq!(signals(&a), [("web".into(), "main".into(), Signal::Kill)]);
    let a = exit(&mut c, "web", "main", 137, at(11_010));
    assert_eq!(removes(&a), ["web"]);
    let a = removed(&mut c, "web", at(11_020));
    assert!(events(&a).contains(&EventBody::TaskStopped {
        task: n("web"),
        reason: StopReason::Removed,
        exit: None
    }));
    assert_eq!(c.phase(&n("web")), None, "forgotten once removed");
    assert!(last_status(&a).expect("status").tasks.is_empty());
}

#[test]
fn a_task_that_exits_zero_with_never_stays_stopped() {
    let mut c = core();
    apply(&mut c, 1, vec![task("job", RestartPolicy::Never)], at(0));
    run(&mut c, "job", at(1));
    let a = exit(&mut c, "job", "main", 0, at(5));
    assert_eq!(removes(&a), ["job"]);
    let a = removed(&mut c, "job", at(6));
    let exit0 = ExitInfo {
        code: 0,
        signal: None,
        oom_killed: false,
    };
    assert!(events(&a).contains(&EventBody::TaskStopped {
        task: n("job"),
        reason: StopReason::EssentialExited,
        exit: Some(exit0)
    }));
    assert_eq!(c.phase(&n("job")), Some(Phase::Stopped));
    assert_eq!(c.next_deadline(), None);
    assert!(c
        .handle(Event::Tick, at(1_000_000))
        .iter()
        .all(|a| !matches!(a, Action::StartTask { .. })));
}

#[test]
fn restart_by_policy_with_growing_backoff() {
    for (policy, code, restarts) in [
        (RestartPolicy::Always, 0, true),
        (RestartPolicy::OnFailure, 3, true),
        (RestartPolicy::OnFailure, 0, false),
        (RestartPolicy::Never, 3, false),
    ] {
        let mut c = core();
        apply(&mut c, 1, vec![task("svc", policy)], at(0));
        run(&mut c, "svc", at(1));
        exit(&mut c, "svc", "main", code, at(2));
        let a = removed(&mut c, "svc", at(3));
        let restarting = events(&a)
            .into_iter()
            .find(|e| matches!(e, EventBody::TaskRestarting { .. }));
        assert_eq!(
            restarting.is_some(),
            restarts,
            "{policy:?} exit {code}: {a:?}"
        );
        if restarts {
            assert_eq!(c.next_deadline(), Some(1_003));
            let a = c.handle(Event::Tick, at(1_003));
            assert_eq!(starts(&a), ["svc"]);
            run(&mut c, "svc", at(1_004));
            exit(&mut c, "svc", "main", code, at(1_005));
            removed(&mut c, "svc", at(1_006));
            assert_eq!(
                c.next_deadline(),
                Some(3_006),
                "second rapid restart waits 2 s"
            );
            let s = c.status(at(1_007));
            assert_eq!(s.tasks[0].restarts, 1);
            assert_eq!(s.tasks[0].last_exit.map(|e| e.code), Some(code));
        }
    }
}

#[test]
fn backoff_resets_after_a_stable_run() {
    assert_eq!(
        (1..=8).map(backoff_ms).collect::<Vec<_>>(),
        [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
    );
    let mut c = core();
    apply(&mut c, 1, vec![task("svc", RestartPolicy::Always)], at(0));
    run(&mut c, "svc", at(0));
    exit(&mut c, "svc", "main", 1, at(100));
    removed(&mut c, "svc", at(100));
    c.handle(Event::Tick, at(1_100));
    run(&mut c, "svc", at(1_100));
    exit(&mut c, "svc", "main", 1, at(1_100 + STABLE_MS));
    removed(&mut c, "svc", at(1_100 + STABLE_MS));
    assert_eq!(c.next_deadline(), Some(1_100 + STABLE_MS + BACKOFF_BASE_MS));
}

#[test]
fn essential_exit_stops_the_task_and_non_essential_does_not() {
    let mut c = core();
    let mut t = task("pair", RestartPolicy::Never);
    t.containers.push(container("sidecar", false));
    apply(&mut c, 1, vec![t], at(0));
    run(&mut c, "pair", at(1));
    let a = exit(&mut c, "pair", "sidecar", 1, at(2));
    assert!(signals(&a).is_empty() && removes(&a).is_empty(), "{a:?}");
    assert_eq!(c.phase(&n("pair")), Some(Phase::Running));
    // Sidecar gone; now bring the sidecar back in a fresh task to test the other direction.
    let mut c = core();
    let mut t = task("pair", RestartPolicy::Never);
    t.containers.push(container("sidecar", false));
    apply(&mut c, 1, vec![t], at(0));
    run(&mut c, "pair", at(1));
    let a = exit(&mut c, "pair", "main", 2, at(2));
    assert_eq!(
        signals(&a),
        [("pair".into(), "sidecar".into(), Signal::Term)]
    );
    assert!(removes(&a).is_empty(), "waits for the sidecar to exit");
    let a = exit(&mut c, "pair", "sidecar", 143, at(3));
    assert_eq!(removes(&a), ["pair"]);
    removed(&mut c, "pair", at(4));
    let s = c.status(at(5));
    assert_eq!(
        s.tasks[0].last_exit.map(|e| e.code),
        Some(2),
        "the task's exit is the essential container's"
    );
}

#[test]
fn an_essential_exit_during_start_waits_for_the_start_to_finish() {
    let mut c = core();
    let mut t = task("fast", RestartPolicy::Never);
    t.containers.push(container("slow", false));
    apply(&mut c, 1, vec![t], at(0));
    c.handle(
        Event::ContainerStarted {
            task: n("fast"),
            container: n("main"),
            pid: 1,
        },
        at(1),
    );
    let a = exit(&mut c, "fast", "main", 0, at(2));
    assert!(
        removes(&a).is_empty(),
        "the runtime may still be starting `slow`"
    );
    let a = c.handle(
        Event::ContainerStarted {
            task: n("fast"),
            container: n("slow"),
            pid: 2,
        },
        at(3),
    );
    assert_eq!(signals(&a), [("fast".into(), "slow".into(), Signal::Term)]);
    c.handle(Event::TaskStarted { task: n("fast") }, at(4));
    let a = exit(&mut c, "fast", "slow", 143, at(5));
    assert_eq!(removes(&a), ["fast"]);
}

#[test]
fn a_failed_start_cleans_up_and_retries_only_by_policy() {
    for (policy, retry) in [(RestartPolicy::Never, false), (RestartPolicy::Always, true)] {
        let mut c = core();
        apply(&mut c, 1, vec![task("bad", policy)], at(0));
        let a = c.handle(
            Event::TaskStartFailed {
                task: n("bad"),
                reason: "no rootfs".into(),
            },
            at(1),
        );
        assert!(events(&a).contains(&EventBody::TaskFailed {
            task: n("bad"),
            reason: "no rootfs".into()
        }));
        assert_eq!(removes(&a), ["bad"]);
        removed(&mut c, "bad", at(2));
        let expect = if retry { Phase::Backoff } else { Phase::Failed };
        assert_eq!(c.phase(&n("bad")), Some(expect));
        assert_eq!(
            c.status(at(3)).tasks[0].state,
            if retry {
                TaskState::Stopped
            } else {
                TaskState::Failed
            }
        );
    }
}

#[test]
fn a_changed_definition_replaces_the_running_task() {
    let mut c = core();
    apply(&mut c, 1, vec![task("web", RestartPolicy::Always)], at(0));
    run(&mut c, "web", at(1));
    let mut v2 = task("web", RestartPolicy::Always);
    v2.revision = 2;
    let a = apply(&mut c, 2, vec![v2], at(2));
    assert_eq!(signals(&a), [("web".into(), "main".into(), Signal::Term)]);
    assert!(starts(&a).is_empty(), "old one first");
    exit(&mut c, "web", "main", 143, at(3));
    let a = removed(&mut c, "web", at(4));
    assert!(events(&a).contains(&EventBody::TaskStopped {
        task: n("web"),
        reason: StopReason::Replaced,
        exit: None
    }));
    assert_eq!(starts(&a), ["web"]);
    assert_eq!(c.status(at(5)).tasks[0].revision, 2);
}

#[test]
fn node_document_overrides_the_cluster_document() {
    let mut c = core();
    let cluster = encode(&Message::DesiredState(DesiredState {
        version: 1,
        cluster: n("demo"),
        node: None,
        tasks: vec![
            task("web", RestartPolicy::Always),
            task("db", RestartPolicy::Always),
        ],
        signature: None,
    }))
    .expect("encodes");
    let a = c.handle(
        Event::DesiredPayload {
            scope: Scope::Cluster,
            payload: cluster,
            images: catalog(),
        },
        at(0),
    );
    assert_eq!(starts(&a), ["db", "web"]);
    let mut web2 = task("web", RestartPolicy::Always);
    web2.revision = 9;
    let a = apply(&mut c, 1, vec![web2], at(1));
    assert!(starts(&a).is_empty());
    assert!(
        removes(&a).is_empty() && signals(&a).is_empty(),
        "neither is running yet: {a:?}"
    );
    run(&mut c, "db", at(2));
    let a = run(&mut c, "web", at(2));
    // web was started as revision 1, then replaced once started.
    assert_eq!(signals(&a), [("web".into(), "main".into(), Signal::Term)]);
}

#[test]
fn bad_payloads_are_rejected_by_name_and_change_nothing() {
    let mut c = core();
    apply(&mut c, 5, vec![task("web", RestartPolicy::Always)], at(0));
    run(&mut c, "web", at(1));
    let before = c.status(at(2));
    let mut oversized = header_bytes(Kind::DesiredState).to_vec();
    oversized.resize(skiff_proto::limits::MAX_MESSAGE + 1, 0);
    let truncated = doc(6, vec![task("x", RestartPolicy::Never)]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"\xff\x00garbage".to_vec(), "bad magic"),
        (
            truncated[..truncated.len() - 3].to_vec(),
            "malformed desired_state message",
        ),
        (oversized, "larger than the 131072-byte limit"),
        (b"SK\x01\x63".to_vec(), "unsupported message kind 99"),
        (b"SK\x07\x01".to_vec(), "unsupported protocol version 7"),
        (
            encode(&Message::Command(skiff_proto::Command {
                id: 1,
                body: skiff_proto::CommandBody::Ping,
            }))
            .expect("enc"),
            "expected a desired_state message",
        ),
        (
            doc(4, vec![]),
            "replayed: version 4 is not newer than the applied version 5",
        ),
    ];
    for (payload, want) in cases {
        let a = c.handle(
            Event::DesiredPayload {
                scope: Scope::Node,
                payload,
                images: catalog(),
            },
            at(3),
        );
        let reason = rejection(&a).unwrap_or_else(|| panic!("not rejected: {want}: {a:?}"));
        assert!(reason.contains(want), "{reason:?} does not say {want:?}");
        assert!(starts(&a).is_empty() && signals(&a).is_empty() && removes(&a).is_empty());
        assert_eq!(
            c.status(at(2)),
            before,
            "state changed by a rejected payload ({want})"
        );
    }
}

#[test]
fn a_document_naming_a_missing_image_is_rejected_whole() {
    let mut c = core();
    apply(&mut c, 1, vec![task("web", RestartPolicy::Always)], at(0));
    run(&mut c, "web", at(1));
    let mut other = task("other", RestartPolicy::Never);
    other.containers[0].image = "registry.example:5000/team/app:2".into();
    let a = apply(&mut c, 2, vec![other], at(2));
    let reason = rejection(&a).expect("rejected");
    assert_eq!(
        reason,
        "task other container main: image registry.example:5000/team/app:2 is not in the local store (add it with `skiff image import`)"
    );
    assert!(signals(&a).is_empty(), "web keeps running");
    assert_eq!(c.status(at(3)).node_version, 1);
}

#[test]
fn documents_for_elsewhere_are_rejected() {
    let mut c = core();
    let mut d = DesiredState {
        version: 1,
        cluster: n("other"),
        node: Some(n("pi-1")),
        tasks: vec![],
        signature: None,
    };
    let payload = encode(&Message::DesiredState(d.clone())).expect("enc");
    let a = c.handle(
        Event::DesiredPayload {
            scope: Scope::Node,
            payload,
            images: catalog(),
        },
        at(0),
    );
    assert_eq!(
        rejection(&a).as_deref(),
        Some("document is for cluster other, this node is in demo")
    );
    d.cluster = n("demo");
    d.node = Some(n("pi-2"));
    let payload = encode(&Message::DesiredState(d)).expect("enc");
    let a = c.handle(
        Event::DesiredPayload {
            scope: Scope::Node,
            payload,
            images: catalog(),
        },
        at(0),
    );
    assert_eq!(
        rejection(&a).as_deref(),
        Some("document is for node pi-2, this is pi-1")
    );
}

#[test]
fn shutdown_stops_everything_and_restarts_nothing() {
    let mut c = core();
    apply(
        &mut c,
        1,
        vec![
            task("a", RestartPolicy::Always),
            task("b", RestartPolicy::Always),
        ],
        at(0),
    );
    run(&mut c, "a", at(1));
    run(&mut c, "b", at(1));
    let a = c.handle(Event::Shutdown, at(2));
    assert_eq!(signals(&a).len(), 2);
    assert!(!c.is_idle());
    for t in ["a", "b"] {
        exit(&mut c, t, "main", 143, at(3));
        let a = removed(&mut c, t, at(4));
        assert!(starts(&a).is_empty());
    }
    assert!(c.is_idle());
    assert_eq!(c.next_deadline(), None);
}

#[test]
fn lost_exits_do_not_wedge_a_stop() {
    let mut c = core();
    apply(&mut c, 1, vec![task("web", RestartPolicy::Always)], at(0));
    run(&mut c, "web", at(1));
    apply(&mut c, 2, vec![], at(2));
    c.handle(Event::Tick, at(10_002));
    let a = c.handle(Event::Tick, at(10_002 + KILL_WAIT_MS));
    assert_eq!(removes(&a), ["web"]);
}

#[test]
fn local_desired_state_replaces_the_node_document() {
    let mut c = core();
    let a = c.handle(
        Event::LocalDesired {
            tasks: Ok(vec![task("a", RestartPolicy::Never)]),
            images: catalog(),
        },
        at(0),
    );
    assert_eq!(starts(&a), ["a"]);
    run(&mut c, "a", at(1));
    let a = c.handle(
        Event::LocalDesired {
            tasks: Ok(vec![]),
            images: catalog(),
        },
        at(2),
    );
    assert_eq!(signals(&a).len(), 1);
}

#[test]
fn an_exit_that_overtakes_its_start_is_not_lost() {
    let mut c = core();
    apply(&mut c, 1, vec![task("quick", RestartPolicy::Never)], at(0));
    // The exit notice arrives before the start's reply (they travel different paths).
    let a = exit(&mut c, "quick", "main", 0, at(1));
    assert!(events(&a).is_empty(), "{a:?}");
    let a = c.handle(
        Event::ContainerStarted {
            task: n("quick"),
            container: n("main"),
            pid: 7,
        },
        at(2),
    );
    let ev = events(&a);
    assert!(
        matches!(ev[0], EventBody::ContainerStarted { pid: 7, .. }),
        "{ev:?}"
    );
    assert!(matches!(ev[1], EventBody::ContainerExited { .. }), "{ev:?}");
    let a = c.handle(Event::TaskStarted { task: n("quick") }, at(3));
    assert_eq!(removes(&a), ["quick"]);
    removed(&mut c, "quick", at(4));
    assert_eq!(c.phase(&n("quick")), Some(Phase::Stopped));
}

fn saves(actions: &[Action]) -> (Vec<Scope>, Option<Vec<FinishedTask>>, Vec<RunRecord>) {
    let mut docs = Vec::new();
    let mut finished = None;
    let mut runs = Vec::new();
    for a in actions {
        match a {
            Action::SaveDesired { scope, .. } => docs.push(*scope),
            Action::SaveFinished(f) => finished = Some(f.clone()),
            Action::RecordRun(r) => runs.push(r.clone()),
            _ => {}
        }
    }
    (docs, finished, runs)
}

#[test]
fn applied_documents_finished_tasks_and_runs_are_saved() {
    let mut c = core();
    let a = apply(
        &mut c,
        1,
        vec![
            task("job", RestartPolicy::Never),
            task("svc", RestartPolicy::Always),
        ],
        at(0),
    );
    assert_eq!(saves(&a).0, [Scope::Node]);
    run(&mut c, "job", at(1));
    run(&mut c, "svc", at(1));
    exit(&mut c, "job", "main", 0, at(1_500));
    let a = removed(&mut c, "job", at(1_600));
    let (_, finished, runs) = saves(&a);
    let finished = finished.expect("the finished set changed");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].def.family.as_str(), "job");
    assert_eq!(finished[0].last_exit.map(|e| e.code), Some(0));
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(
        (r.task.as_str(), r.attempt, r.reason),
        ("job", 1, StopReason::EssentialExited)
    );
    assert_eq!(
        (r.started_at_ms, r.ended_at_ms),
        (at(0).wall_ms, at(1_600).wall_ms)
    );
    // A restart of `svc` records a run but does not change the finished set.
    exit(&mut c, "svc", "main", 1, at(2_000));
    let a = removed(&mut c, "svc", at(2_100));
    let (_, finished, runs) = saves(&a);
    assert!(finished.is_none(), "{a:?}");
    assert_eq!(runs[0].exit.map(|e| e.code), Some(1));
}

#[test]
fn a_restart_restores_documents_and_does_not_rerun_finished_tasks() {
    let mut before = core();
    let job = task("job", RestartPolicy::Never);
    let svc = task("svc", RestartPolicy::Always);
    apply(&mut before, 4, vec![job.clone(), svc.clone()], at(0));
    run(&mut before, "job", at(1));
    exit(&mut before, "job", "main", 0, at(2));
    let a = removed(&mut before, "job", at(3));
    let finished = saves(&a).1.expect("finished");

    // The agent is killed; a new one starts offline with what was saved.
    let mut after = core();
    let doc = DesiredState {
        version: 4,
        cluster: n("demo"),
        node: Some(n("pi-1")),
        tasks: vec![job, svc],
        signature: None,
    };
    let a = after.handle(
        Event::Restored {
            cluster: None,
            node: Some(Box::new(doc)),
            finished,
            services: vec![],
            last_wall_ms: None,
            images: catalog(),
            adopted: vec![],
        },
        at(0),
    );
    assert_eq!(
        starts(&a),
        ["svc"],
        "the one-shot that finished is not run again"
    );
    assert!(events(&a).contains(&EventBody::DesiredApplied {
        scope: Scope::Node,
        version: 4
    }));
    assert!(
        saves(&a).0.is_empty(),
        "restoring does not rewrite what was read"
    );
    let s = after.status(at(1));
    let job = s
        .tasks
        .iter()
        .find(|t| t.name.as_str() == "job")
        .expect("job known");
    assert_eq!(
        (job.state, job.last_exit.map(|e| e.code)),
        (TaskState::Stopped, Some(0))
    );
    // The broker then re-delivers the same retained document: nothing happens.
    let again = apply(
        &mut after,
        4,
        vec![
            task("job", RestartPolicy::Never),
            task("svc", RestartPolicy::Always),
        ],
        at(2),
    );
    assert!(
        starts(&again).is_empty() && rejection(&again).is_none(),
        "{again:?}"
    );
}

#[test]
fn a_saved_document_for_another_node_or_a_missing_image_is_not_restored() {
    let mut c = core();
    let other = DesiredState {
        version: 2,
        cluster: n("demo"),
        node: Some(n("pi-9")),
        tasks: vec![task("x", RestartPolicy::Always)],
        signature: None,
    };
    let a = c.handle(
        Event::Restored {
            cluster: None,
            node: Some(Box::new(other)),
            finished: vec![],
            services: vec![],
            last_wall_ms: None,
            images: catalog(),
            adopted: vec![],
        },
        at(0),
    );
    assert!(rejection(&a).is_some_and(|r| r.contains("another cluster or node")));
    assert!(starts(&a).is_empty());
    let mut t = task("y", RestartPolicy::Always);
    t.containers[0].image = "gone:1".into();
    let doc = DesiredState {
        version: 3,
        cluster: n("demo"),
        node: Some(n("pi-1")),
        tasks: vec![t],
        signature: None,
    };
    let a = c.handle(
        Event::Restored {
            cluster: None,
            node: Some(Box::new(doc)),
            finished: vec![],
            services: vec![],
            last_wall_ms: None,
            images: catalog(),
            adopted: vec![],
        },
        at(0),
    );
    assert!(
        rejection(&a).is_some_and(|r| r.contains("not in the local store")),
        "{a:?}"
    );
    assert_eq!(c.status(at(1)).node_version, 0);
}

fn tm(mono_ms: u64, wall_ms: u64, wall_trusted: bool) -> Time {
    Time {
        mono_ms,
        wall_ms,
        wall_trusted,
    }
}

const W0: u64 = 1_764_000_000_000; // a minute boundary (2025-11-24 16:00:00 UTC)

fn scheduled(
    family: &str,
    spec: ScheduleSpec,
    overlap: OverlapPolicy,
    missed: MissedRunPolicy,
) -> TaskDefinition {
    let mut t = task(family, RestartPolicy::Always);
    t.extensions = vec![TaskExtension::Schedule(Schedule {
        spec,
        overlap,
        missed,
    })];
    t
}

pub(super) fn every_minute(
    family: &str,
    overlap: OverlapPolicy,
    missed: MissedRunPolicy,
) -> TaskDefinition {
    scheduled(
        family,
        ScheduleSpec::Cron {
            expr: "* * * * *".into(),
            utc_offset_minutes: 0,
            zone: None,
        },
        overlap,
        missed,
    )
}

fn skipped(actions: &[Action]) -> Vec<String> {
    events(actions)
        .into_iter()
        .filter_map(|e| match e {
            EventBody::ScheduleSkipped { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

/// One complete run of a one-container task: started, exited 0, removed.
fn complete_run(c: &mut Core, family: &str, now: Time) -> Vec<Action> {
    let mut out = run(c, family, now);
    out.extend(exit(c, family, "main", 0, now));
    out.extend(removed(c, family, now));
    out
}

#[test]
fn a_rate_schedule_runs_every_period_and_not_at_apply() {
    let mut c = core();
    let t = scheduled(
        "tick",
        ScheduleSpec::Rate { every_secs: 10 },
        OverlapPolicy::Forbid,
        MissedRunPolicy::Skip,
    );
    let a = apply(&mut c, 1, vec![t], at(0));
    assert!(
        starts(&a).is_empty(),
        "a scheduled task waits for its first firing"
    );
    assert_eq!(c.next_deadline(), Some(10_000));
    assert!(starts(&c.handle(Event::Tick, at(9_999))).is_empty());
    assert_eq!(starts(&c.handle(Event::Tick, at(10_000))), ["tick"]);
    let a = complete_run(&mut c, "tick", at(10_500));
    assert!(
        starts(&a).is_empty(),
        "the restart policy does not apply to scheduled tasks: {a:?}"
    );
    assert_eq!(c.phase(&n("tick")), Some(Phase::Stopped));
    assert_eq!(c.next_deadline(), Some(20_000));
    assert_eq!(starts(&c.handle(Event::Tick, at(20_000))), ["tick"]);
}

#[test]
fn each_firing_of_a_scheduled_batch_runs_the_whole_job() {
    let mut c = core();
    let mut t = scheduled(
        "etl",
        ScheduleSpec::Rate { every_secs: 60 },
        OverlapPolicy::Forbid,
        MissedRunPolicy::Skip,
    );
    t.extensions.push(TaskExtension::Batch(Batch {
        completions: 2,
        retries: 1,
        timeout_secs: None,
    }));
    apply(&mut c, 1, vec![t], at(0));
    // Firing 1: two completions, one after the other, then it waits for the next firing.
    assert_eq!(starts(&c.handle(Event::Tick, at(60_000))), ["etl"]);
    assert_eq!(starts(&complete_run(&mut c, "etl", at(61_000))), ["etl"]);
    let a = complete_run(&mut c, "etl", at(62_000));
    assert!(starts(&a).is_empty(), "{a:?}");
    assert_eq!(c.phase(&n("etl")), Some(Phase::Stopped));
    // Firing 2 counts from zero: a failure is retried after a backoff, and a firing that comes
    // while the job waits to retry is skipped (overlap forbid), not a fresh start.
    assert_eq!(starts(&c.handle(Event::Tick, at(120_000))), ["etl"]);
    run(&mut c, "etl", at(120_100));
    exit(&mut c, "etl", "main", 1, at(120_200));
    removed(&mut c, "etl", at(120_300));
    assert_eq!(c.phase(&n("etl")), Some(Phase::Backoff));
    let a = c.handle(Event::Tick, at(180_000));
    assert_eq!(skipped(&a).len(), 1, "{a:?}");
    // (The retry was due long before: the tick at 180 s also relaunches it.)
    assert_eq!(starts(&a), ["etl"]);
    assert_eq!(starts(&complete_run(&mut c, "etl", at(181_000))), ["etl"]);
    let a = complete_run(&mut c, "etl", at(182_000));
    assert!(
        starts(&a).is_empty(),
        "done: 2 completions after 1 retry: {a:?}"
    );
    assert_eq!(c.phase(&n("etl")), Some(Phase::Stopped));
}

#[test]
fn cron_fires_on_the_minute_and_overlap_forbid_skips() {
    let mut c = core();
    apply(
        &mut c,
        1,
        vec![every_minute(
            "job",
            OverlapPolicy::Forbid,
            MissedRunPolicy::Skip,
        )],
        at(1_000),
    );
    assert_eq!(
        c.next_deadline(),
        Some(1_000 + 59_000),
        "next minute boundary"
    );
    assert!(starts(&c.handle(Event::Tick, at(59_999))).is_empty());
    assert_eq!(starts(&c.handle(Event::Tick, at(60_000))), ["job"]);
    run(&mut c, "job", at(60_100));
    // Still running at the next minute: forbid skips the firing.
    let a = c.handle(Event::Tick, at(120_000));
    assert!(starts(&a).is_empty() && signals(&a).is_empty());
    assert_eq!(skipped(&a).len(), 1);
    exit(&mut c, "job", "main", 0, at(130_000));
    removed(&mut c, "job", at(130_100));
    assert_eq!(starts(&c.handle(Event::Tick, at(180_000))), ["job"]);
}

#[test]
fn cron_overlap_replace_stops_the_running_one_then_starts() {
    let mut c = core();
    apply(
        &mut c,
        1,
        vec![every_minute(
            "job",
            OverlapPolicy::Replace,
            MissedRunPolicy::Skip,
        )],
        at(0),
    );
    c.handle(Event::Tick, at(60_000));
    run(&mut c, "job", at(60_100));
    let a = c.handle(Event::Tick, at(120_000));
    assert_eq!(signals(&a), [("job".into(), "main".into(), Signal::Term)]);
    exit(&mut c, "job", "main", 143, at(120_100));
    let a = removed(&mut c, "job", at(120_200));
    assert_eq!(
        starts(&a),
        ["job"],
        "the replacing run starts once the old one is gone"
    );
}

#[test]
fn a_clock_jump_forward_a_day_does_not_burst() {
    for (policy, runs) in [(MissedRunPolicy::Skip, 0), (MissedRunPolicy::RunOnce, 1)] {
        let mut c = core();
        apply(
            &mut c,
            1,
            vec![every_minute("job", OverlapPolicy::Forbid, policy)],
            tm(0, W0 + 1_000, true),
        );
        // A day later by the wall clock, one second later by the monotonic one.
        let a = c.handle(Event::Tick, tm(1_000, W0 + 86_400_000 + 5_000, true));
        assert_eq!(starts(&a).len(), runs, "{policy:?}: {a:?}");
        assert_eq!(skipped(&a).len(), 1 - runs, "{policy:?}");
        if runs == 1 {
            complete_run(&mut c, "job", tm(2_000, W0 + 86_400_000 + 6_000, true));
        }
        // And then it is back to once a minute.
        assert!(
            starts(&c.handle(Event::Tick, tm(3_000, W0 + 86_400_000 + 30_000, true))).is_empty()
        );
        assert_eq!(
            starts(&c.handle(Event::Tick, tm(60_000, W0 + 86_400_000 + 60_000, true))),
            ["job"]
        );
    }
}

#[test]
fn a_clock_jump_back_an_hour_never_fires_twice() {
    let mut c = core();
    apply(
        &mut c,
        1,
        vec![every_minute(
            "job",
            OverlapPolicy::Forbid,
            MissedRunPolicy::RunOnce,
        )],
        tm(0, W0 - 1_000, true),
    );
    assert_eq!(starts(&c.handle(Event::Tick, tm(1_000, W0, true))), ["job"]);
    complete_run(&mut c, "job", tm(2_000, W0 + 2_000, true));
    // Back an hour: the minutes between are not run again.
    for i in 1..=60u64 {
        let a = c.handle(
            Event::Tick,
            tm(2_000 + i * 60_000, W0 - 3_600_000 + i * 60_000, true),
        );
        assert!(
            starts(&a).is_empty(),
            "fired again at {i} min after the jump"
        );
    }
    assert_eq!(
        starts(&c.handle(Event::Tick, tm(3_700_000, W0 + 60_000, true))),
        ["job"]
    );
}

#[test]
fn booting_at_1970_waits_for_a_trusted_clock_then_does_not_burst() {
    let mut c = core();
    apply(
        &mut c,
        1,
        vec![every_minute(
            "job",
            OverlapPolicy::Forbid,
            MissedRunPolicy::RunOnce,
        )],
        tm(0, 5_000, false),
    );
    for m in 1..5u64 {
        assert!(
            starts(&c.handle(Event::Tick, tm(m * 60_000, 5_000 + m * 60_000, false))).is_empty()
        );
    }
    assert!(
        c.next_deadline()
            .is_some_and(|d| d <= 4 * 60_000 + CRON_RECHECK_MS),
        "keeps checking"
    );
    // NTP sets the clock: the next minute boundary fires, once.
    let a = c.handle(Event::Tick, tm(300_000, W0 + 10_000, true));
    assert!(starts(&a).is_empty() && skipped(&a).is_empty(), "{a:?}");
    assert_eq!(
        starts(&c.handle(Event::Tick, tm(350_000, W0 + 60_000, true))),
        ["job"]
    );
}

#[test]
fn an_untrusted_clock_runs_on_the_saved_time_plus_monotonic_time() {
    let mut c = core();
    let doc = DesiredState {
        version: 1,
        cluster: n("demo"),
        node: Some(n("pi-1")),
        tasks: vec![every_minute(
            "job",
            OverlapPolicy::Forbid,
            MissedRunPolicy::Skip,
        )],
        signature: None,
    };
    // Rebooted with no RTC: the wall clock says 1970, the agent saved W0 - 30 s.
    let ev = Event::Restored {
        cluster: None,
        node: Some(Box::new(doc)),
        finished: vec![],
        services: vec![],
        last_wall_ms: Some(W0 - 30_000),
        images: catalog(),
        adopted: vec![],
    };
    let a = c.handle(ev, tm(0, 1_000, false));
    assert!(starts(&a).is_empty());
    assert!(starts(&c.handle(Event::Tick, tm(29_000, 30_000, false))).is_empty());
    assert_eq!(
        starts(&c.handle(Event::Tick, tm(30_000, 31_000, false))),
        ["job"],
        "saved + 30 s = W0"
    );
}

#[test]
fn runs_missed_while_the_agent_was_down_follow_the_policy() {
    for (policy, runs) in [(MissedRunPolicy::Skip, 0), (MissedRunPolicy::RunOnce, 1)] {
        let def = every_minute("job", OverlapPolicy::Forbid, policy);
        let doc = DesiredState {
            version: 1,
            cluster: n("demo"),
            node: Some(n("pi-1")),
            tasks: vec![def.clone()],
            signature: None,
        };
        let finished = vec![FinishedTask {
            def,
            failed: false,
            restarts: 3,
            last_exit: None,
            last_fire_ms: Some(W0),
            batch_progress: None,
            resume: false,
        }];
        let mut c = core();
        // Down for ten minutes.
        let ev = Event::Restored {
            cluster: None,
            node: Some(Box::new(doc)),
            finished,
            services: vec![],
            last_wall_ms: Some(W0 + 1_000),
            images: catalog(),
            adopted: vec![],
        };
        let a = c.handle(ev, tm(0, W0 + 600_000 + 500, true));
        assert!(starts(&a).is_empty());
        let a = c.handle(Event::Tick, tm(10, W0 + 600_000 + 510, true));
        assert_eq!(starts(&a).len(), runs, "{policy:?}: {a:?}");
        assert_eq!(skipped(&a).len(), 1 - runs, "{policy:?}");
    }
}

fn batch(
    family: &str,
    completions: u32,
    retries: u32,
    timeout_secs: Option<u32>,
) -> TaskDefinition {
    let mut t = task(family, RestartPolicy::Always);
    t.extensions = vec![TaskExtension::Batch(Batch {
        completions,
        retries,
        timeout_secs,
    })];
    t
}

#[test]
fn a_batch_runs_until_its_completions_and_then_stays_done() {
    let mut c = core();
    apply(&mut c, 1, vec![batch("etl", 3, 0, None)], at(0));
    let mut runs = 1;
    loop {
        let a = complete_run(&mut c, "etl", at(runs * 100));
        if starts(&a).is_empty() {
            break;
        }
        runs += 1;
    }
    assert_eq!(runs, 3);
    assert_eq!(c.phase(&n("etl")), Some(Phase::Stopped));
    assert_eq!(
        c.next_deadline(),
        None,
        "done: the restart policy does not apply"
    );
}

#[test]
fn a_failing_batch_retries_with_backoff_then_fails() {
    let mut c = core();
    apply(&mut c, 1, vec![batch("job", 1, 2, None)], at(0));
    let mut t = 0;
    for attempt in 1..=3u32 {
        run(&mut c, "job", at(t));
        exit(&mut c, "job", "main", 1, at(t + 10));
        let a = removed(&mut c, "job", at(t + 20));
        if attempt <= 2 {
            let delay = backoff_ms(attempt);
            assert_eq!(c.next_deadline(), Some(t + 20 + delay), "retry {attempt}");
            t += 20 + delay;
            assert_eq!(starts(&c.handle(Event::Tick, at(t))), ["job"]);
        } else {
            assert!(events(&a).iter().any(|e| matches!(e, EventBody::TaskFailed { reason, .. } if reason.contains("after 3 attempts"))), "{a:?}");
        }
    }
    assert_eq!(c.phase(&n("job")), Some(Phase::Failed));
}

#[test]
fn a_batch_run_over_its_timeout_is_stopped_and_counts_as_failed() {
    let mut c = core();
    apply(&mut c, 1, vec![batch("slow", 1, 1, Some(5))], at(0));
    run(&mut c, "slow", at(10));
    assert_eq!(c.next_deadline(), Some(5_000));
    let a = c.handle(Event::Tick, at(5_000));
    assert_eq!(signals(&a), [("slow".into(), "main".into(), Signal::Term)]);
    exit(&mut c, "slow", "main", 143, at(5_100));
    let a = removed(&mut c, "slow", at(5_200));
    assert!(events(&a).contains(&EventBody::TaskStopped {
        task: n("slow"),
        reason: StopReason::TimedOut,
        exit: None
    }));
    assert_eq!(c.phase(&n("slow")), Some(Phase::Backoff), "one retry left");
}

#[test]
fn images_in_use_cover_desired_and_known_tasks() {
    let mut c = core();
    let mut other = task("other", RestartPolicy::Never);
    other.containers[0].image = "registry.example:5000/app:1".into();
    let catalog: Catalog = [
        (
            "docker.io/library/busybox:latest".to_string(),
            "sha256:aa".to_string(),
        ),
        (
            "registry.example:5000/app:1".to_string(),
            "sha256:bb".to_string(),
        ),
    ]
    .into();
    let payload = doc(1, vec![task("web", RestartPolicy::Always), other]);
    c.handle(
        Event::DesiredPayload {
            scope: Scope::Node,
            payload,
            images: catalog,
        },
        at(0),
    );
    assert_eq!(
        c.images_in_use(),
        ["busybox", "registry.example:5000/app:1"]
    );
}

#[test]
fn cron_in_a_named_zone_fires_at_local_time_and_unknown_zones_are_rejected() {
    let zoned = |zone: &str| {
        scheduled(
            "backup",
            ScheduleSpec::Cron {
                expr: "0 8 * * *".into(),
                utc_offset_minutes: 0,
                zone: Some(zone.into()),
            },
            OverlapPolicy::Forbid,
            MissedRunPolicy::Skip,
        )
    };
    // Without the zone on the node: rejected, naming it.
    let mut c = core();
    let out = apply(&mut c, 1, vec![zoned("Europe/Berlin")], at(0));
    let reason = rejection(&out).expect("rejected");
    assert!(
        reason.contains("time zone \"Europe/Berlin\" is not known"),
        "{reason}"
    );
    // With it: 08:00 Berlin in summer is 06:00 UTC. W0 is 2025-11-24 16:00 UTC (winter: 07:00).
    let mut c = core().with_zones(crate::zones::Zones::from_rules(&[(
        "Europe/Berlin",
        "CET-1CEST,M3.5.0,M10.5.0/3",
    )]));
    let out = c.handle(
        Event::DesiredPayload {
            scope: Scope::Node,
            payload: doc(1, vec![zoned("Europe/Berlin")]),
            images: catalog(),
        },
        tm(0, W0, true),
    );
    assert!(rejection(&out).is_none(), "{out:?}");
    let next_day_0700 = W0 + 15 * 3_600_000;
    let before = c.handle(Event::Tick, tm(1000, next_day_0700 - 1000, true));
    assert!(starts(&before).is_empty());
    let fire = c.handle(Event::Tick, tm(2000, next_day_0700, true));
    assert_eq!(starts(&fire), ["backup"], "08:00 CET = 07:00 UTC");
}

#[test]
fn overlap_allow_runs_beside_the_busy_one_up_to_the_limit() {
    let mut c = core();
    let t = every_minute("tick", OverlapPolicy::Allow, MissedRunPolicy::Skip);
    apply(&mut c, 1, vec![t], tm(0, W0, true));
    let mut started = Vec::new();
    for minute in 1..=5u64 {
        let now = tm(minute * 60_000, W0 + minute * 60_000, true);
        let out = c.handle(Event::Tick, now);
        for name in starts(&out) {
            run(&mut c, &name, now);
            started.push(name);
        }
        if minute == 5 {
            assert_eq!(
                skipped(&out),
                ["4 runs are still running, at most 4 at once (overlapPolicy allow)"],
                "a fifth concurrent run is skipped"
            );
        }
    }
    assert_eq!(started, ["tick", "tick.2", "tick.3", "tick.4"]);
    // An extra run ends: recorded under the family, then forgotten.
    let now = tm(330_000, W0 + 330_000, true);
    exit(&mut c, "tick.3", "main", 0, now);
    let out = removed(&mut c, "tick.3", now);
    let (_, _, runs) = saves(&out);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].task.as_str(), "tick");
    assert_eq!(c.phase(&n("tick.3")), None);
    assert_eq!(c.phase(&n("tick")), Some(Phase::Running));
    // Removing the schedule stops the extra runs too.
    let out = apply(&mut c, 2, vec![], now);
    let mut stopped: Vec<String> = signals(&out).into_iter().map(|(t, _, _)| t).collect();
    stopped.sort();
    assert_eq!(stopped, ["tick", "tick.2", "tick.4"]);
}

/// What the core saved last (the finished set), after replaying `actions`.
fn last_saved(actions: &[Action]) -> Option<Vec<FinishedTask>> {
    actions.iter().rev().find_map(|a| match a {
        Action::SaveFinished(f) => Some(f.clone()),
        _ => None,
    })
}

fn restore(saved: Vec<FinishedTask>, tasks: Vec<TaskDefinition>, now: Time) -> (Core, Vec<Action>) {
    let doc = DesiredState {
        version: 1,
        cluster: n("demo"),
        node: Some(n("pi-1")),
        tasks,
        signature: None,
    };
    let mut c = core();
    let a = c.handle(
        Event::Restored {
            cluster: None,
            node: Some(Box::new(doc)),
            finished: saved,
            services: vec![],
            last_wall_ms: None,
            images: catalog(),
            adopted: vec![],
        },
        now,
    );
    (c, a)
}

#[test]
fn tasks_stopped_by_the_agent_shutdown_run_again_after_a_restart() {
    let mut c = core();
    let tasks = vec![
        task("web", RestartPolicy::Always),
        task("once", RestartPolicy::Never),
    ];
    apply(&mut c, 1, tasks.clone(), at(0));
    run(&mut c, "web", at(1));
    run(&mut c, "once", at(1));
    let mut all = c.handle(Event::Shutdown, at(2));
    for t in ["web", "once"] {
        all.extend(exit(&mut c, t, "main", 143, at(3)));
        all.extend(removed(&mut c, t, at(4)));
    }
    let saved = last_saved(&all).unwrap_or_default();
    assert!(saved.is_empty(), "nothing finished by itself: {saved:?}");
    let (_, a) = restore(saved, tasks, at(10));
    let mut started = starts(&a);
    started.sort();
    assert_eq!(started, ["once", "web"]);
}

#[test]
fn batch_progress_survives_a_restart_without_repeating_completed_runs() {
    let mut c = core();
    let mut job = task("job", RestartPolicy::Never);
    job.extensions = vec![TaskExtension::Batch(Batch {
        completions: 5,
        retries: 3,
        timeout_secs: None,
    })];
    apply(&mut c, 1, vec![job.clone()], at(0));
    let mut all = Vec::new();
    // Two successful runs, one failed.
    for (i, code) in [0, 0, 1].into_iter().enumerate() {
        let t = 1000 * (i as u64 + 1);
        run(&mut c, "job", at(t));
        all.extend(exit(&mut c, "job", "main", code, at(t + 100)));
        all.extend(removed(&mut c, "job", at(t + 200)));
        all.extend(c.handle(Event::Tick, at(t + 900)));
    }
    // kill -9 during the fourth run: what was saved last is the progress.
    let saved = last_saved(&all).expect("progress saved");
    assert_eq!(saved.len(), 1);
    assert_eq!(
        (saved[0].batch_progress, saved[0].resume),
        (Some((2, 1)), true)
    );
    let (mut c, a) = restore(saved, vec![job], at(10_000));
    assert_eq!(starts(&a), ["job"], "the job goes on at once");
    // Three more successes complete it (5 in all), not five.
    let mut runs = 1;
    for i in 0..3u64 {
        let t = 11_000 + i * 1000;
        run(&mut c, "job", at(t));
        exit(&mut c, "job", "main", 0, at(t + 100));
        let a = removed(&mut c, "job", at(t + 200));
        runs += starts(&a).len();
    }
    assert_eq!(runs, 3);
    assert_eq!(c.phase(&n("job")), Some(Phase::Stopped));
}

#[test]
fn status_reports_labels_and_load_and_again_only_when_the_load_moved() {
    let size = skiff_proto::NodeResources {
        cpus: 4,
        mem_total_bytes: 1000,
        cpu_pct: 0.0,
        mem_used_bytes: 0,
    };
    let labels: BTreeMap<String, String> = [("site".to_string(), "north".to_string())].into();
    let mut c = core().with_node(labels.clone(), size);
    let st = last_status(&c.handle(Event::Connected, at(0))).expect("status on connect");
    assert_eq!(st.labels, labels);
    assert_eq!(st.resources, size);
    let load = |cpu_pct: f32, mem_used_bytes: u64| {
        Event::Load(skiff_proto::NodeResources {
            cpu_pct,
            mem_used_bytes,
            ..size
        })
    };
    // 5 points of CPU and 4 % of memory: not worth a status.
    assert!(last_status(&c.handle(load(5.0, 40), at(10))).is_none());
    // 10 points since the last report: a status with the new figures.
    let st = last_status(&c.handle(load(10.0, 40), at(20))).expect("cpu moved");
    assert_eq!(
        (st.resources.cpu_pct, st.resources.mem_used_bytes),
        (10.0, 40)
    );
    // Compared with what was reported, not with the previous sample.
    assert!(last_status(&c.handle(load(14.0, 80), at(30))).is_none());
    let st = last_status(&c.handle(load(14.0, 90), at(40))).expect("memory moved 5 %");
    assert_eq!(st.resources.mem_used_bytes, 90);
    // A status for another reason carries the current load and resets the reference.
    assert!(last_status(&c.handle(load(23.0, 90), at(50))).is_none());
    let st = last_status(&apply(&mut c, 1, vec![], at(60))).expect("applied");
    assert_eq!(st.resources.cpu_pct, 23.0);
    assert!(last_status(&c.handle(load(30.0, 90), at(70))).is_none());
}
