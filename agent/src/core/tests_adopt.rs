//! Re-adoption tests: a restarted core takes over tasks whose containers outlived the agent.

use super::tests::{
    at, catalog, container, core, events, every_minute, exit, n, removed, signals, starts, task,
};
use super::*;
use skiff_proto::Service;

fn restore(c: &mut Core, tasks: Vec<TaskDefinition>, adopted: Vec<AdoptedTask>) -> Vec<Action> {
    restore_with(c, tasks, vec![], adopted, at(0))
}

fn restore_with(
    c: &mut Core,
    tasks: Vec<TaskDefinition>,
    finished: Vec<FinishedTask>,
    adopted: Vec<AdoptedTask>,
    now: Time,
) -> Vec<Action> {
    let doc = DesiredState {
        version: 3,
        cluster: n("demo"),
        node: Some(n("pi-1")),
        tasks,
        signature: None,
    };
    c.handle(
        Event::Restored {
            cluster: None,
            node: Some(Box::new(doc)),
            finished,
            services: vec![],
            last_wall_ms: None,
            images: catalog(),
            adopted,
        },
        now,
    )
}

fn kept(def: &TaskDefinition, pids: &[(&str, u32, Option<i32>)]) -> AdoptedTask {
    AdoptedTask {
        def: def.clone(),
        endpoints: vec![],
        started_wall_ms: at(0).wall_ms - 60_000,
        containers: pids
            .iter()
            .map(|(name, pid, code)| AdoptedContainer {
                name: n(name),
                pid: *pid,
                exit: code.map(|code| ExitInfo {
                    code,
                    signal: None,
                    oom_killed: false,
                }),
            })
            .collect(),
    }
}

fn runs(actions: &[Action]) -> Vec<RunRecord> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RecordRun(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_running_task_is_taken_over_not_started_again() {
    let mut c = core();
    let svc = task("svc", RestartPolicy::Always);
    let out = restore(
        &mut c,
        vec![svc.clone()],
        vec![kept(&svc, &[("main", 42, None)])],
    );
    assert_eq!(starts(&out), Vec::<String>::new(), "{out:?}");
    let ev = events(&out);
    assert!(ev.contains(&EventBody::TaskAdopted {
        task: n("svc"),
        running: 1,
        exited: 0
    }));
    assert!(ev.contains(&EventBody::ContainerStarted {
        task: n("svc"),
        container: n("main"),
        pid: 42
    }));
    assert!(ev.contains(&EventBody::TaskRunning { task: n("svc") }));
    let t = &c.status(at(0)).tasks[0];
    assert_eq!(t.state, TaskState::Running);
    assert_eq!(t.containers[0].pid, Some(42));
    // It lives on as any other task: an exit restarts it by its policy.
    let out = exit(&mut c, "svc", "main", 1, at(1000));
    assert_eq!(removes_of(&out), ["svc"]);
    removed(&mut c, "svc", at(1100));
    let later = c.handle(Event::Tick, at(60_000));
    assert_eq!(starts(&later), ["svc"]);
}

fn removes_of(actions: &[Action]) -> Vec<String> {
    super::tests::removes(actions)
}

#[test]
fn an_exit_while_the_agent_was_away_is_replayed_once() {
    let mut c = core();
    let job = task("job", RestartPolicy::Never);
    let out = restore(
        &mut c,
        vec![job.clone()],
        vec![kept(&job, &[("main", 7, Some(0))])],
    );
    assert_eq!(
        starts(&out),
        Vec::<String>::new(),
        "a finished one-shot is not run again"
    );
    assert!(events(&out).contains(&EventBody::TaskAdopted {
        task: n("job"),
        running: 0,
        exited: 1
    }));
    assert_eq!(removes_of(&out), ["job"]);
    let out = removed(&mut c, "job", at(10));
    let r = runs(&out);
    assert_eq!(r.len(), 1, "{out:?}");
    assert_eq!(r[0].exit.map(|e| e.code), Some(0));
    assert_eq!(
        r[0].started_at_ms,
        at(0).wall_ms - 60_000,
        "the run's own start"
    );
    let saved = out.iter().find_map(|a| match a {
        Action::SaveFinished(f) => Some(f.clone()),
        _ => None,
    });
    let saved = saved.expect("finished saved");
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].def.family, n("job"));
    // A second restart with that record runs nothing either.
    let mut again = core();
    let out = restore_with(&mut again, vec![job], saved, vec![], at(0));
    assert_eq!(starts(&out), Vec::<String>::new());
}

#[test]
fn a_changed_or_removed_task_is_stopped_gracefully_then_replaced() {
    let mut c = core();
    let old = task("web", RestartPolicy::Always);
    let mut new = old.clone();
    new.revision = 2;
    let gone = task("gone", RestartPolicy::Always);
    let out = restore(
        &mut c,
        vec![new],
        vec![
            kept(&old, &[("main", 5, None)]),
            kept(&gone, &[("main", 6, None)]),
        ],
    );
    assert_eq!(starts(&out), Vec::<String>::new(), "stopped first");
    let mut sig = signals(&out);
    sig.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        sig,
        [
            ("gone".to_string(), "main".to_string(), Signal::Term),
            ("web".to_string(), "main".to_string(), Signal::Term)
        ]
    );
    exit(&mut c, "web", "main", 143, at(100));
    let out = removed(&mut c, "web", at(200));
    let started: Vec<u32> = out
        .iter()
        .filter_map(|a| match a {
            Action::StartTask { def } => Some(def.revision),
            _ => None,
        })
        .collect();
    assert_eq!(
        started,
        [2],
        "the desired revision starts once the old run is gone"
    );
}

#[test]
fn a_service_task_joins_its_deployment() {
    let mut c = core();
    let mut web = task("web", RestartPolicy::Never);
    web.extensions = vec![TaskExtension::Service(Service {
        desired_count: 2,
        min_healthy_percent: 100,
        max_percent: 200,
        circuit_breaker: None,
        health_grace_secs: 0,
        scaling: None,
    })];
    let mut member = web.clone();
    member.extensions.clear();
    member.family = n("web.1");
    let out = restore(&mut c, vec![web], vec![kept(&member, &[("main", 9, None)])]);
    assert_eq!(
        starts(&out),
        ["web.2"],
        "one more for the desired count of 2"
    );
    assert_eq!(signals(&out), vec![], "the adopted member keeps running");
    // A member of no deployment (another definition) is stopped.
    let mut c = core();
    let mut web2 = task("web", RestartPolicy::Never);
    web2.extensions = vec![TaskExtension::Service(Service {
        desired_count: 1,
        min_healthy_percent: 100,
        max_percent: 200,
        circuit_breaker: None,
        health_grace_secs: 0,
        scaling: None,
    })];
    let mut stale = member.clone();
    stale.containers[0].command = vec!["old".into()];
    let out = restore(&mut c, vec![web2], vec![kept(&stale, &[("main", 9, None)])]);
    assert_eq!(
        signals(&out),
        [("web.1".to_string(), "main".to_string(), Signal::Term)]
    );
}

#[test]
fn a_batch_job_goes_on_from_its_saved_progress() {
    let mut c = core();
    let mut job = task("job", RestartPolicy::Never);
    job.extensions = vec![TaskExtension::Batch(Batch {
        completions: 3,
        retries: 0,
        timeout_secs: None,
    })];
    let progress = FinishedTask {
        def: job.clone(),
        failed: false,
        restarts: 1,
        last_exit: None,
        last_fire_ms: None,
        batch_progress: Some((1, 0)),
        resume: true,
    };
    let out = restore_with(
        &mut c,
        vec![job.clone()],
        vec![progress],
        vec![kept(&job, &[("main", 11, None)])],
        at(0),
    );
    assert_eq!(
        starts(&out),
        Vec::<String>::new(),
        "the run in progress is not repeated"
    );
    let out = exit(&mut c, "job", "main", 0, at(1000));
    let out2 = removed(&mut c, "job", at(1100));
    let all: Vec<Action> = out.into_iter().chain(out2).collect();
    // Second of three completions: the third run follows.
    let later = c.handle(Event::Tick, at(5000));
    let started = starts(&all).len() + starts(&later).len();
    assert_eq!(started, 1, "{all:?} {later:?}");
    assert_eq!(c.tasks.get(&n("job")).map(|t| t.batch_done), Some(2));
}

#[test]
fn half_started_tasks_are_not_adoptable() {
    let mut two = task("two", RestartPolicy::Always);
    two.containers.push(container("side", false));
    assert_eq!(adoptable(&two, &[n("main"), n("side")]), Ok(()));
    assert_eq!(
        adoptable(&two, &[n("main")]),
        Err("container side was never started".into())
    );
    assert_eq!(
        adoptable(&two, &[n("main"), n("side"), n("x")]),
        Err("container x is not in its definition".into())
    );
    // A container waiting for its dependency is started by the core after adoption.
    two.containers[1].depends_on = vec![skiff_proto::ContainerDependency {
        container: n("main"),
        condition: skiff_proto::DependencyCondition::Start,
    }];
    assert_eq!(adoptable(&two, &[n("main")]), Ok(()));
    let mut c = core();
    let out = restore(
        &mut c,
        vec![two.clone()],
        vec![kept(&two, &[("main", 3, None)])],
    );
    assert!(out.contains(&Action::StartContainer {
        task: n("two"),
        container: n("side")
    }));
}

#[test]
fn a_task_desired_again_while_it_was_being_removed_starts_again() {
    // An adopted task the saved document no longer has (its save failed) is stopped; the
    // broker's newer document wants it again before the stop is over.
    let mut c = core();
    let a = task("a", RestartPolicy::Always);
    let b = task("b", RestartPolicy::Always);
    let out = restore(
        &mut c,
        vec![a.clone()],
        vec![
            kept(&a, &[("main", 1, None)]),
            kept(&b, &[("main", 2, None)]),
        ],
    );
    assert_eq!(
        signals(&out),
        [("b".to_string(), "main".to_string(), Signal::Term)]
    );
    let out = super::tests::apply(&mut c, 4, vec![a, b], at(100));
    assert_eq!(starts(&out), Vec::<String>::new(), "still stopping");
    exit(&mut c, "b", "main", 143, at(200));
    let out = removed(&mut c, "b", at(300));
    assert_eq!(starts(&out), ["b"]);
}

fn ended_of(actions: &[Action]) -> Option<EndedRun> {
    actions.iter().find_map(|a| match a {
        Action::RemoveTask { ended, .. } => ended.clone(),
        _ => None,
    })
}

fn forgets(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ForgetTask { task } => Some(task.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_run_removed_but_not_saved_is_replayed_once_and_its_job_not_run_again() {
    // The first agent: a batch job of one completion runs and exits 0; the agent dies after
    // its containers were deleted, before `TaskRemoved` (nothing of the run saved).
    let mut job = task("job", RestartPolicy::Never);
    job.extensions = vec![skiff_proto::TaskExtension::Batch(skiff_proto::Batch {
        completions: 1,
        retries: 2,
        timeout_secs: None,
    })];
    let mut first = core();
    super::tests::apply(&mut first, 1, vec![job.clone()], at(0));
    super::tests::run(&mut first, "job", at(1000));
    let out = exit(&mut first, "job", "main", 0, at(5000));
    let ended = ended_of(&out).expect("the ended run goes with RemoveTask");
    assert_eq!(ended.attempt, 1);
    assert_eq!(
        ended.started_wall_ms,
        at(0).wall_ms,
        "the run started when it was launched"
    );
    assert_eq!(ended.exits.len(), 1);
    assert_eq!(ended.exits[0].0, n("main"));
    assert_eq!(ended.exits[0].1.code, 0);
    assert!(
        forgets(&out).is_empty(),
        "nothing dropped before it is saved"
    );

    // The next agent finds the record (nothing in the history) and replays the end.
    let mut c = core();
    let out = restore(
        &mut c,
        vec![job.clone()],
        vec![ended.adopted(job.clone(), vec![])],
    );
    assert_eq!(
        starts(&out),
        Vec::<String>::new(),
        "the job is not run again"
    );
    assert!(
        !events(&out)
            .iter()
            .any(|e| matches!(e, EventBody::ContainerStarted { .. })),
        "a deleted container is not reported started: {out:?}"
    );
    assert_eq!(removes_of(&out), ["job"]);
    let out = removed(&mut c, "job", at(10));
    let r = runs(&out);
    assert_eq!(r.len(), 1, "{out:?}");
    assert_eq!((r[0].started_at_ms, r[0].attempt), (at(0).wall_ms, 1));
    assert_eq!(r[0].exit.map(|e| e.code), Some(0));
    assert!(ended.saved_in(&r), "the history names the same run");
    assert_eq!(forgets(&out), ["job"], "dropped once saved");
    let saved = out
        .iter()
        .find_map(|a| match a {
            Action::SaveFinished(f) => Some(f.clone()),
            _ => None,
        })
        .expect("finished saved");
    assert_eq!(saved[0].batch_progress, Some((1, 0)));
    assert!(!saved[0].resume, "the job is done");
    assert!(
        c.handle(Event::Tick, at(600_000))
            .iter()
            .all(|a| !matches!(a, Action::StartTask { .. })),
        "and stays done"
    );
}

#[test]
fn a_run_already_in_the_history_is_not_replayed() {
    let ended = EndedRun {
        started_wall_ms: 1_000,
        attempt: 2,
        exits: vec![],
    };
    let run = |started_at_ms, attempt| RunRecord {
        task: n("job"),
        revision: 1,
        attempt,
        started_at_ms,
        ended_at_ms: 2_000,
        reason: StopReason::EssentialExited,
        exit: None,
        failure: None,
    };
    assert!(ended.saved_in(&[run(500, 1), run(1_000, 2)]));
    assert!(!ended.saved_in(&[run(1_000, 1)]), "another attempt");
    assert!(!ended.saved_in(&[run(900, 2)]), "another run");
    assert!(!ended.saved_in(&[]));
}

#[test]
fn a_task_that_never_ran_a_container_leaves_no_ended_run() {
    let mut c = core();
    let svc = task("svc", RestartPolicy::Never);
    super::tests::apply(&mut c, 1, vec![svc], at(0));
    let out = c.handle(
        Event::TaskStartFailed {
            task: n("svc"),
            reason: "no image".into(),
        },
        at(10),
    );
    assert_eq!(removes_of(&out), ["svc"], "{out:?}");
    assert_eq!(ended_of(&out), None);
}

#[test]
fn a_scheduled_firing_running_at_the_restart_counts_as_fired_and_is_not_run_again() {
    // Every minute, and one run after downtime: the firing at W0 still runs when the agent
    // comes back 30 s later, and the saved record still says the last firing was the one
    // before. The running one is neither started again nor taken for a missed firing.
    let mut c = core();
    let cron = every_minute("cron", OverlapPolicy::Forbid, MissedRunPolicy::RunOnce);
    let before = FinishedTask {
        def: cron.clone(),
        failed: false,
        restarts: 0,
        last_exit: None,
        last_fire_ms: Some(at(0).wall_ms - 60_000),
        batch_progress: None,
        resume: true,
    };
    let mut running = kept(&cron, &[("main", 21, None)]);
    running.started_wall_ms = at(0).wall_ms;
    let out = restore_with(&mut c, vec![cron], vec![before], vec![running], at(30_000));
    assert_eq!(starts(&out), Vec::<String>::new(), "{out:?}");
    assert!(skipped_of(&out).is_empty(), "{out:?}");
    assert!(events(&out).contains(&EventBody::TaskAdopted {
        task: n("cron"),
        running: 1,
        exited: 0
    }));
    assert_eq!(
        c.next_deadline(),
        Some(60_000),
        "the next firing is the next minute"
    );
    let out = exit(&mut c, "cron", "main", 0, at(40_000));
    assert_eq!(removes_of(&out), ["cron"]);
    let out = removed(&mut c, "cron", at(40_100));
    assert_eq!(
        starts(&out),
        Vec::<String>::new(),
        "no restart, no catch-up"
    );
    let r = runs(&out);
    assert_eq!(r.len(), 1, "{out:?}");
    assert_eq!(r[0].started_at_ms, at(0).wall_ms, "the firing's own start");
    assert!(starts(&c.handle(Event::Tick, at(59_999))).is_empty());
    assert_eq!(starts(&c.handle(Event::Tick, at(60_000))), ["cron"]);
}

fn skipped_of(actions: &[Action]) -> Vec<EventBody> {
    events(actions)
        .into_iter()
        .filter(|e| matches!(e, EventBody::ScheduleSkipped { .. }))
        .collect()
}
