//! Service tests: desired count, health checks, rollouts within bounds, the circuit breaker,
//! auto scaling, draining. A small simulated runtime answers the core's actions at once
//! (starts succeed, signals end containers, health checks answer per revision), and every
//! status the core publishes is checked against the rollout bounds.

use std::collections::VecDeque;

use super::tests::{apply, at, container, core, n, task};
use super::*;
use skiff_proto::{
    AutoScaling, CircuitBreaker, HealthCheck, NodeState, RolloutState, ScalingMetric,
    ScheduledScaling, Service, ServiceStatus, StepAdjustment, StepScaling, TargetTracking,
};

fn service_spec(desired: u32, min_pct: u32, max_pct: u32) -> Service {
    Service {
        desired_count: desired,
        min_healthy_percent: min_pct,
        max_percent: max_pct,
        circuit_breaker: Some(CircuitBreaker { rollback: true }),
        health_grace_secs: 0,
        scaling: None,
    }
}

/// A service `web` at `revision` whose container has a 1 s health check.
fn web(revision: u32, spec: Service) -> TaskDefinition {
    let mut t = task("web", RestartPolicy::Never);
    t.revision = revision;
    t.containers[0].health_check = Some(HealthCheck {
        test: HealthTest::Shell("check".into()),
        interval_secs: 1,
        timeout_secs: 1,
        retries: 2,
        start_period_secs: 0,
    });
    t.extensions = vec![TaskExtension::Service(spec)];
    t
}

/// The core with a runtime that answers every action at once.
struct Sim {
    c: Core,
    now: u64,
    /// Health-check answer per revision.
    healthy: fn(u32) -> bool,
    /// Start fails for these revisions.
    start_fails: fn(u32) -> bool,
    queue: VecDeque<Action>,
    events: Vec<EventBody>,
    statuses: Vec<Status>,
    /// Checked on every status: (min healthy, max placed) once the first rollout completed.
    bounds: Option<(u32, u32)>,
    /// Most tasks seen holding a place at once.
    max_seen: u32,
    /// The services' state last asked to be saved.
    saved: Option<Vec<ServiceMemo>>,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            c: core(),
            now: 0,
            healthy: |_| true,
            start_fails: |_| false,
            queue: VecDeque::new(),
            events: Vec::new(),
            statuses: Vec::new(),
            bounds: None,
            max_seen: 0,
            saved: None,
        }
    }

    fn time(&self) -> Time {
        at(self.now)
    }

    fn handle(&mut self, ev: Event) {
        let out = self.c.handle(ev, self.time());
        self.feed(out);
    }

    fn apply(&mut self, version: u64, tasks: Vec<TaskDefinition>) {
        let now = self.time();
        let out = apply(&mut self.c, version, tasks, now);
        self.feed(out);
    }

    fn feed(&mut self, out: Vec<Action>) {
        for a in out {
            match &a {
                Action::Event(e) => self.events.push(e.clone()),
                Action::Status(s) => {
                    self.check_bounds(s);
                    self.statuses.push(s.clone());
                }
                Action::SaveServices(m) => self.saved = Some(m.clone()),
                _ => {}
            }
            self.queue.push_back(a);
        }
        self.settle();
    }

    fn check_bounds(&mut self, s: &Status) {
        let placed = s
            .tasks
            .iter()
            .filter(|t| t.service.is_some())
            .filter(|t| {
                matches!(
                    t.state,
                    TaskState::Pending | TaskState::Running | TaskState::Stopping
                )
            })
            .count();
        let placed = u32::try_from(placed).expect("few tasks");
        self.max_seen = self.max_seen.max(placed);
        if let (Some((min, max)), Some(svc)) = (self.bounds, s.services.first()) {
            assert!(
                svc.healthy_count >= min,
                "healthy {} below the minimum {min} at {} ms: {svc:?}",
                svc.healthy_count,
                self.now
            );
            assert!(placed <= max, "{placed} tasks placed, max {max}");
        }
    }

    /// Answers queued actions as a runtime would, at once.
    fn settle(&mut self) {
        while let Some(a) = self.queue.pop_front() {
            let now = self.time();
            let out = match a {
                Action::StartTask { def } => {
                    let task = def.family.clone();
                    if (self.start_fails)(def.revision) {
                        self.c.handle(
                            Event::TaskStartFailed {
                                task,
                                reason: "image broken".into(),
                            },
                            now,
                        )
                    } else {
                        let mut out = Vec::new();
                        for ct in def.containers.iter().filter(|c| c.depends_on.is_empty()) {
                            out.extend(self.c.handle(
                                Event::ContainerStarted {
                                    task: task.clone(),
                                    container: ct.name.clone(),
                                    pid: 1000,
                                },
                                now,
                            ));
                        }
                        out.extend(self.c.handle(Event::TaskStarted { task }, now));
                        out
                    }
                }
                Action::Signal {
                    task,
                    container,
                    signal,
                } => {
                    let code = if signal == Signal::Term { 143 } else { 137 };
                    self.c.handle(
                        Event::ContainerExited {
                            task,
                            container,
                            exit: ExitInfo {
                                code,
                                signal: Some(code - 128),
                                oom_killed: false,
                            },
                        },
                        now,
                    )
                }
                Action::RemoveTask { task, .. } => {
                    self.c.handle(Event::TaskRemoved { task, error: None }, now)
                }
                Action::StartContainer { task, container } => self.c.handle(
                    Event::ContainerStarted {
                        task,
                        container,
                        pid: 2000,
                    },
                    now,
                ),
                Action::HealthCheck {
                    task, container, ..
                } => {
                    let rev = self.c.tasks.get(&task).map_or(0, |t| t.def.revision);
                    let ok = (self.healthy)(rev);
                    self.c.handle(
                        Event::HealthResult {
                            task,
                            container,
                            ok,
                            output: if ok { String::new() } else { "down".into() },
                        },
                        now,
                    )
                }
                _ => Vec::new(),
            };
            for a in out {
                match &a {
                    Action::Event(e) => self.events.push(e.clone()),
                    Action::Status(s) => {
                        self.check_bounds(s);
                        self.statuses.push(s.clone());
                    }
                    Action::SaveServices(m) => self.saved = Some(m.clone()),
                    _ => {}
                }
                self.queue.push_back(a);
            }
        }
    }

    /// Lets `ms` pass, ticking at every deadline on the way.
    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while let Some(d) = self.c.next_deadline().filter(|d| *d <= end) {
            self.now = d.max(self.now);
            self.handle(Event::Tick);
        }
        self.now = end;
        self.handle(Event::Tick);
    }

    fn service(&self) -> ServiceStatus {
        self.c
            .status(self.time())
            .services
            .into_iter()
            .next()
            .expect("a service")
    }

    fn revisions(&self) -> Vec<(String, u32, TaskState)> {
        self.c
            .status(self.time())
            .tasks
            .into_iter()
            .filter(|t| t.service.is_some())
            .map(|t| (t.name.to_string(), t.revision, t.state))
            .collect()
    }

    fn count<F: Fn(&EventBody) -> bool>(&self, f: F) -> usize {
        self.events.iter().filter(|e| f(e)).count()
    }
}

#[test]
fn a_service_runs_its_desired_count_and_completes_when_healthy() {
    let mut s = Sim::new();
    s.apply(1, vec![web(1, service_spec(3, 100, 200))]);
    let names: Vec<String> = s.revisions().into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names, ["web.1", "web.2", "web.3"]);
    // Running, but not healthy before the first check: not completed.
    assert_eq!(s.service().healthy_count, 0);
    assert_eq!(
        s.count(|e| matches!(e, EventBody::DeploymentCompleted { .. })),
        0
    );
    s.advance(1_000);
    let svc = s.service();
    assert_eq!((svc.running_count, svc.healthy_count), (3, 3));
    assert_eq!(svc.deployments.len(), 1);
    assert_eq!(svc.deployments[0].rollout, RolloutState::Completed);
    assert_eq!(
        s.count(|e| matches!(
            e,
            EventBody::HealthChanged {
                health: Health::Healthy,
                ..
            }
        )),
        3
    );
    assert_eq!(
        s.count(|e| matches!(e, EventBody::DeploymentCompleted { .. })),
        1
    );
}

#[test]
fn a_killed_task_is_restarted_in_place_with_backoff() {
    let mut s = Sim::new();
    s.apply(1, vec![web(1, service_spec(3, 100, 200))]);
    s.advance(1_000);
    let now = s.time();
    let out = super::tests::exit(&mut s.c, "web.2", "main", 137, now);
    s.feed(out);
    assert_eq!(s.service().running_count, 2);
    assert!(s
        .events
        .iter()
        .any(|e| matches!(e, EventBody::TaskRestarting { task, delay_ms: 1000, .. } if task.as_str() == "web.2")));
    s.advance(1_000);
    assert_eq!(s.service().running_count, 3);
    assert_eq!(s.revisions().len(), 3, "replaced in place, not added");
}

#[test]
fn a_rollout_stays_within_min_healthy_and_max_percent() {
    for (min_pct, max_pct, max_placed) in [(100, 200, 6), (50, 150, 4), (0, 100, 3)] {
        let mut s = Sim::new();
        s.apply(1, vec![web(1, service_spec(3, min_pct, max_pct))]);
        s.advance(1_000);
        let min = (3 * min_pct).div_ceil(100).min(max_placed - 1);
        s.bounds = Some((min, max_placed));
        s.max_seen = 0;
        s.apply(2, vec![web(2, service_spec(3, min_pct, max_pct))]);
        for _ in 0..10 {
            s.advance(1_000);
        }
        let revs = s.revisions();
        assert!(
            revs.iter()
                .all(|(_, r, st)| *r == 2 && *st == TaskState::Running),
            "{revs:?}"
        );
        assert_eq!(revs.len(), 3);
        let svc = s.service();
        assert_eq!(svc.deployments.len(), 1, "{svc:?}");
        assert_eq!(svc.deployments[0].rollout, RolloutState::Completed);
        assert_eq!(svc.deployments[0].revision, 2);
        assert!(s.max_seen <= max_placed);
        if max_pct == 200 {
            assert_eq!(s.max_seen, 6, "a 200% rollout uses its room");
        }
    }
}

#[test]
fn a_failing_revision_trips_the_circuit_breaker_and_rolls_back() {
    let mut s = Sim::new();
    s.healthy = |rev| rev != 2;
    s.apply(1, vec![web(1, service_spec(3, 100, 200))]);
    s.advance(1_000);
    s.bounds = Some((3, 6));
    s.apply(2, vec![web(2, service_spec(3, 100, 200))]);
    for _ in 0..60 {
        s.advance(1_000);
    }
    let failed: Vec<_> = s
        .events
        .iter()
        .filter_map(|e| match e {
            EventBody::DeploymentFailed {
                revision,
                rollback_to,
                ..
            } => Some((*revision, *rollback_to)),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [(2, Some(1))]);
    let revs = s.revisions();
    assert!(
        revs.iter()
            .all(|(_, r, st)| *r == 1 && *st == TaskState::Running),
        "{revs:?}"
    );
    let svc = s.service();
    assert_eq!(svc.deployments.len(), 1);
    assert_eq!(svc.deployments[0].rollout, RolloutState::Completed);
    assert_eq!(svc.deployments[0].revision, 1);
    // Desired state still names revision 2: it is not rolled out again by itself.
    let out_before = s.events.len();
    s.advance(30_000);
    assert_eq!(
        s.count(|e| matches!(e, EventBody::DeploymentStarted { .. })),
        3
    );
    assert!(s.events[out_before..]
        .iter()
        .all(|e| !matches!(e, EventBody::DeploymentStarted { .. })));
}

#[test]
fn failed_starts_count_for_the_circuit_breaker_too() {
    let mut s = Sim::new();
    s.start_fails = |rev| rev == 2;
    s.apply(1, vec![web(1, service_spec(2, 50, 200))]);
    s.advance(1_000);
    s.apply(2, vec![web(2, service_spec(2, 50, 200))]);
    for _ in 0..30 {
        s.advance(1_000);
    }
    assert_eq!(
        s.count(|e| matches!(
            e,
            EventBody::DeploymentFailed {
                rollback_to: Some(1),
                ..
            }
        )),
        1
    );
    assert!(s.revisions().iter().all(|(_, r, _)| *r == 1));
}

#[test]
fn without_a_circuit_breaker_a_failing_rollout_keeps_the_old_tasks() {
    let mut s = Sim::new();
    s.healthy = |rev| rev != 2;
    let mut spec = service_spec(2, 100, 200);
    spec.circuit_breaker = None;
    s.apply(1, vec![web(1, spec.clone())]);
    s.advance(1_000);
    s.bounds = Some((2, 4));
    s.apply(2, vec![web(2, spec)]);
    for _ in 0..40 {
        s.advance(1_000);
    }
    assert_eq!(
        s.count(|e| matches!(e, EventBody::DeploymentFailed { .. })),
        0
    );
    let healthy_old = s
        .revisions()
        .iter()
        .filter(|(_, r, st)| *r == 1 && *st == TaskState::Running)
        .count();
    assert_eq!(healthy_old, 2, "{:?}", s.revisions());
}

#[test]
fn an_unhealthy_task_is_replaced_and_a_standalone_one_only_reported() {
    let mut s = Sim::new();
    s.apply(1, vec![web(1, service_spec(1, 0, 100))]);
    s.advance(1_000);
    s.healthy = |_| false;
    s.advance(2_000); // two failures in a row (retries 2)
    assert_eq!(
        s.count(|e| matches!(
            e,
            EventBody::TaskStopped {
                reason: StopReason::Unhealthy,
                ..
            }
        )),
        1
    );
    assert_eq!(
        s.count(|e| matches!(
            e,
            EventBody::HealthChanged {
                health: Health::Unhealthy,
                ..
            }
        )),
        1
    );

    // A standalone task with a failing check keeps running.
    let mut c = core();
    let mut t = task("solo", RestartPolicy::Always);
    t.containers[0].health_check = web(1, service_spec(1, 0, 100)).containers[0]
        .health_check
        .clone();
    apply(&mut c, 1, vec![t], at(0));
    super::tests::run(&mut c, "solo", at(0));
    for ms in [1_000, 2_000, 3_000] {
        let out = c.handle(Event::Tick, at(ms));
        assert!(out.iter().any(|a| matches!(a, Action::HealthCheck { .. })));
        c.handle(
            Event::HealthResult {
                task: n("solo"),
                container: n("main"),
                ok: false,
                output: "refused".into(),
            },
            at(ms),
        );
    }
    assert_eq!(c.phase(&n("solo")), Some(Phase::Running));
    let st = c.status(at(3_000));
    assert_eq!(st.tasks[0].health, Health::Unhealthy);
}

#[test]
fn failures_in_the_start_period_do_not_count() {
    let mut c = core();
    let mut t = task("slow", RestartPolicy::Always);
    t.containers[0].health_check = Some(HealthCheck {
        test: HealthTest::Tcp(8080),
        interval_secs: 1,
        timeout_secs: 1,
        retries: 1,
        start_period_secs: 5,
    });
    apply(&mut c, 1, vec![t], at(0));
    super::tests::run(&mut c, "slow", at(0));
    let mut changes = Vec::new();
    for sec in 1..=7u64 {
        let out = c.handle(Event::Tick, at(sec * 1000));
        let check = out.iter().find_map(|a| match a {
            Action::HealthCheck {
                test, timeout_ms, ..
            } => Some((test.clone(), *timeout_ms)),
            _ => None,
        });
        assert_eq!(
            check,
            Some((HealthTest::Tcp(8080), 1000)),
            "a check every second"
        );
        let out = c.handle(
            Event::HealthResult {
                task: n("slow"),
                container: n("main"),
                ok: false,
                output: String::new(),
            },
            at(sec * 1000),
        );
        changes.extend(
            super::tests::events(&out)
                .into_iter()
                .filter_map(|e| match e {
                    EventBody::HealthChanged { health, .. } => Some((sec, health)),
                    _ => None,
                }),
        );
    }
    assert_eq!(changes, [(5, Health::Unhealthy)]);
}

#[test]
fn per_container_stop_timeouts() {
    let mut c = core();
    let mut t = task("pair", RestartPolicy::Never);
    let mut quick = container("quick", false);
    quick.stop_timeout_secs = Some(2);
    t.containers.push(quick);
    apply(&mut c, 1, vec![t], at(0));
    super::tests::run(&mut c, "pair", at(0));
    let out = apply(&mut c, 2, vec![], at(1_000));
    assert_eq!(super::tests::signals(&out).len(), 2, "SIGTERM to both");
    assert_eq!(c.next_deadline(), Some(3_000));
    let out = c.handle(Event::Tick, at(3_000));
    assert_eq!(
        super::tests::signals(&out),
        [("pair".into(), "quick".into(), Signal::Kill)]
    );
    assert_eq!(
        c.next_deadline(),
        Some(11_000),
        "the other keeps the agent's 10 s grace"
    );
    let out = c.handle(Event::Tick, at(11_000));
    assert_eq!(
        super::tests::signals(&out),
        [("pair".into(), "main".into(), Signal::Kill)]
    );
}

#[test]
fn a_family_named_like_a_service_task_is_rejected() {
    let mut c = core();
    let out = apply(
        &mut c,
        1,
        vec![
            web(1, service_spec(1, 0, 100)),
            task("web.1", RestartPolicy::Never),
        ],
        at(0),
    );
    let reason = super::tests::rejection(&out).expect("rejected");
    assert!(
        reason.contains("web.1 collides with the tasks of service web"),
        "{reason}"
    );
    assert!(super::tests::starts(&out).is_empty());
}

#[test]
fn changing_only_the_count_scales_without_a_rollout() {
    let mut s = Sim::new();
    s.apply(1, vec![web(1, service_spec(3, 100, 200))]);
    s.advance(1_000);
    s.apply(2, vec![web(1, service_spec(1, 100, 200))]);
    assert_eq!(
        s.count(|e| matches!(e, EventBody::DeploymentStarted { .. })),
        1
    );
    let revs = s.revisions();
    assert_eq!(
        revs,
        [("web.1".to_string(), 1, TaskState::Running)],
        "the newest went first"
    );
    s.apply(3, vec![web(1, service_spec(2, 100, 200))]);
    s.advance(1_000);
    assert_eq!(s.service().healthy_count, 2);
}

fn sample(task: &str, cpu_pct: f32) -> TaskSample {
    TaskSample {
        task: n(task),
        cpu_pct,
        mem_bytes: 10 << 20,
        mem_limit_bytes: Some(100 << 20),
    }
}

/// Feeds one metrics sample where every running task of `web` uses `cpu` %.
fn load(s: &mut Sim, cpu: f32) {
    let tasks: Vec<TaskSample> = s
        .revisions()
        .into_iter()
        .filter(|(_, _, st)| *st == TaskState::Running)
        .map(|(name, _, _)| sample(&name, cpu))
        .collect();
    s.handle(Event::Metrics {
        tasks,
        mem_total_bytes: 1 << 30,
    });
}

fn scaled(s: &Sim) -> Vec<(u32, u32)> {
    s.events
        .iter()
        .filter_map(|e| match e {
            EventBody::ServiceScaled { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

#[test]
fn target_tracking_scales_out_and_in_with_cooldowns() {
    let mut s = Sim::new();
    let mut spec = service_spec(2, 100, 200);
    spec.scaling = Some(AutoScaling {
        min: 1,
        max: 5,
        target_tracking: vec![TargetTracking {
            metric: ScalingMetric::Cpu,
            target_percent: 50,
            scale_out_cooldown_secs: 30,
            scale_in_cooldown_secs: 60,
            disable_scale_in: false,
        }],
        step: vec![],
        scheduled: vec![],
    });
    s.apply(1, vec![web(1, spec)]);
    s.advance(1_000);
    load(&mut s, 100.0); // 2 tasks at 100% of a 50% target → 4
    assert_eq!(scaled(&s), [(2, 4)]);
    let cause = s.events.iter().find_map(|e| match e {
        EventBody::ServiceScaled { cause, .. } => Some(cause.clone()),
        _ => None,
    });
    assert_eq!(
        cause.as_deref(),
        Some("target tracking: average CPU 100.0% over 2 tasks, target 50%")
    );
    s.advance(1_000);
    assert_eq!(s.service().running_count, 4);
    load(&mut s, 100.0); // would be 5 (max), but the scale-out cooldown holds
    assert_eq!(scaled(&s), [(2, 4)]);
    s.advance(30_000);
    load(&mut s, 100.0);
    assert_eq!(scaled(&s), [(2, 4), (4, 5)], "capped at max");
    s.advance(1_000);
    load(&mut s, 5.0); // idle, but the scale-in cooldown (60 s since the last scaling) holds
    assert_eq!(scaled(&s).len(), 2);
    s.advance(60_000);
    load(&mut s, 5.0);
    assert_eq!(scaled(&s)[2], (5, 1), "ceil(5 × 5 / 50) = 1, the minimum");
    s.advance(1_000);
    assert_eq!(s.service().running_count, 1);
}

#[test]
fn step_scaling_picks_the_step_holding_the_metric() {
    let mut s = Sim::new();
    let mut spec = service_spec(2, 100, 200);
    spec.scaling = Some(AutoScaling {
        min: 1,
        max: 10,
        target_tracking: vec![],
        step: vec![StepScaling {
            metric: ScalingMetric::Cpu,
            threshold_percent: 80,
            above: true,
            cooldown_secs: 0,
            steps: vec![
                StepAdjustment {
                    lower: Some(0),
                    upper: Some(10),
                    change: 1,
                },
                StepAdjustment {
                    lower: Some(10),
                    upper: None,
                    change: 3,
                },
            ],
        }],
        scheduled: vec![],
    });
    s.apply(1, vec![web(1, spec)]);
    s.advance(1_000);
    load(&mut s, 79.9);
    assert!(scaled(&s).is_empty(), "below the threshold");
    load(&mut s, 80.0);
    assert_eq!(scaled(&s), [(2, 3)], "at the threshold: the [0, 10) step");
    s.advance(1_000);
    load(&mut s, 89.9);
    assert_eq!(scaled(&s)[1], (3, 4));
    s.advance(1_000);
    load(&mut s, 90.0);
    assert_eq!(scaled(&s)[2], (4, 7), "[10, ∞) step");
}

#[test]
fn scheduled_scaling_applies_the_latest_action_after_a_clock_jump() {
    let mut s = Sim::new();
    let mut spec = service_spec(2, 0, 100);
    spec.scaling = Some(AutoScaling {
        min: 1,
        max: 4,
        target_tracking: vec![],
        step: vec![],
        scheduled: vec![
            ScheduledScaling {
                cron: "0 8 * * *".into(),
                utc_offset_minutes: 0,
                zone: None,
                min: 3,
                max: 6,
            },
            ScheduledScaling {
                cron: "0 20 * * *".into(),
                utc_offset_minutes: 0,
                zone: None,
                min: 1,
                max: 2,
            },
        ],
    });
    // Wall clock at 07:59:00 UTC on 2025-11-25.
    let day0 = 1_764_028_800_000u64; // 2025-11-25 00:00 UTC
    let t0 = Time {
        mono_ms: 0,
        wall_ms: day0 + 7 * 3_600_000 + 59 * 60_000,
        wall_trusted: true,
    };
    let out = s.c.handle(
        Event::DesiredPayload {
            scope: Scope::Node,
            payload: super::tests::doc(1, vec![web(1, spec)]),
            images: super::tests::catalog(),
        },
        t0,
    );
    s.feed(out);
    let tick = |s: &mut Sim, mono: u64, wall: u64| {
        let out = s.c.handle(
            Event::Tick,
            Time {
                mono_ms: mono,
                wall_ms: wall,
                wall_trusted: true,
            },
        );
        s.feed(out);
    };
    tick(&mut s, 30_000, t0.wall_ms + 30_000);
    assert!(scaled(&s).is_empty(), "not yet 08:00");
    tick(&mut s, 60_000, t0.wall_ms + 60_000);
    assert_eq!(scaled(&s), [(2, 3)], "at 08:00 the minimum becomes 3");
    // The clock jumps to 21:30 the next day: 08:00 and 20:00 were both missed; 20:00 is the
    // latest, so the bounds end 1..=2, once, without a burst.
    let later = day0 + 86_400_000 + 21 * 3_600_000 + 30 * 60_000;
    tick(&mut s, 120_000, later);
    assert_eq!(scaled(&s), [(2, 3), (3, 3), (3, 2)]);
    tick(&mut s, 180_000, later + 60_000);
    assert_eq!(scaled(&s).len(), 3, "nothing fires twice");
}

#[test]
fn drain_stops_services_lets_batches_finish_and_activate_undoes_it() {
    let mut s = Sim::new();
    let mut batch = task("job", RestartPolicy::Never);
    batch.extensions = vec![TaskExtension::Batch(skiff_proto::Batch {
        completions: 1,
        retries: 0,
        timeout_secs: None,
    })];
    let plain = task("daemon", RestartPolicy::Always);
    s.apply(1, vec![web(1, service_spec(2, 100, 200)), batch, plain]);
    s.advance(1_000);
    s.handle(Event::Drain {
        batch_deadline_ms: 60_000,
    });
    let st = s.c.status(s.time());
    assert_eq!(st.state, NodeState::Draining);
    let running: Vec<String> = st
        .tasks
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(running, ["job"], "only the batch task still runs");
    // The batch task finishes: drained.
    let now = s.time();
    let out = super::tests::exit(&mut s.c, "job", "main", 0, now);
    s.feed(out);
    assert_eq!(s.c.status(s.time()).state, NodeState::Drained);
    let states: Vec<NodeState> = s
        .events
        .iter()
        .filter_map(|e| match e {
            EventBody::NodeStateChanged { state } => Some(*state),
            _ => None,
        })
        .collect();
    assert_eq!(states, [NodeState::Draining, NodeState::Drained]);
    s.advance(10_000);
    assert!(
        s.c.active_tasks().is_empty(),
        "nothing restarts while drained"
    );
    s.handle(Event::Activate);
    s.advance(1_000);
    let st = s.c.status(s.time());
    assert_eq!(st.state, NodeState::Online);
    let running: Vec<String> = st
        .tasks
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(
        running,
        ["daemon", "web.1", "web.2"],
        "the finished batch stays done"
    );
}

#[test]
fn a_batch_over_the_drain_deadline_is_stopped() {
    let mut s = Sim::new();
    let mut batch = task("job", RestartPolicy::Never);
    batch.extensions = vec![TaskExtension::Batch(skiff_proto::Batch {
        completions: 1,
        retries: 0,
        timeout_secs: None,
    })];
    s.apply(1, vec![batch]);
    s.handle(Event::Drain {
        batch_deadline_ms: 5_000,
    });
    s.advance(4_000);
    assert_eq!(s.c.status(s.time()).state, NodeState::Draining);
    s.advance(2_000);
    assert_eq!(s.c.status(s.time()).state, NodeState::Drained);
    assert_eq!(
        s.count(|e| matches!(
            e,
            EventBody::TaskStopped {
                reason: StopReason::Drained,
                ..
            }
        )),
        1
    );
}

#[test]
fn a_task_dying_is_restarted_in_place_and_never_doubled() {
    let mut s = Sim::new();
    s.apply(1, vec![web(1, service_spec(3, 100, 200))]);
    s.advance(1_000);
    s.bounds = Some((2, 3));
    // The exit is seen, the task stops and is removed: no fourth task meanwhile.
    let now = s.time();
    let out = super::tests::exit(&mut s.c, "web.2", "main", 137, now);
    assert!(super::tests::starts(&out).is_empty(), "{out:?}");
    s.feed(out);
    s.advance(5_000);
    let names: Vec<String> = s.revisions().into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names, ["web.1", "web.2", "web.3"]);
    assert_eq!(s.max_seen, 3);
    assert_eq!(
        s.count(|e| matches!(
            e,
            EventBody::TaskStopped {
                reason: StopReason::ServiceUpdated,
                ..
            }
        )),
        0
    );
}

#[test]
fn a_rollback_keeps_the_tasks_of_the_revision_it_returns_to() {
    let mut s = Sim::new();
    s.healthy = |rev| rev != 2;
    s.apply(1, vec![web(1, service_spec(3, 100, 200))]);
    s.advance(1_000);
    s.apply(2, vec![web(2, service_spec(3, 100, 200))]);
    for _ in 0..30 {
        s.advance(1_000);
    }
    // web.1..3 of revision 1 were never stopped: the rollback re-promoted their deployment.
    let stopped_rev1: Vec<String> = s
        .events
        .iter()
        .filter_map(|e| match e {
            EventBody::TaskStopped { task, .. } if ["web.1", "web.3"].contains(&task.as_str()) => {
                Some(task.to_string())
            }
            _ => None,
        })
        .collect();
    assert!(stopped_rev1.is_empty(), "{stopped_rev1:?}");
    let svc = s.service();
    assert_eq!(svc.deployments.len(), 1);
    assert_eq!((svc.deployments[0].id, svc.deployments[0].revision), (1, 1));
}

/// db (health-checked) ← migrate (HEALTHY, runs once) ← app (SUCCESS), as ECS's dependsOn.
fn staged(migrate_code: i32) -> (Sim, Vec<String>) {
    let mut s = Sim::new();
    let mut t = task("stack", RestartPolicy::Never);
    let mut db = container("db", false);
    db.health_check = web(1, service_spec(1, 0, 100)).containers[0]
        .health_check
        .clone();
    let mut migrate = container("migrate", false);
    migrate.depends_on = vec![skiff_proto::ContainerDependency {
        container: n("db"),
        condition: skiff_proto::DependencyCondition::Healthy,
    }];
    let mut app = container("app", true);
    app.depends_on = vec![skiff_proto::ContainerDependency {
        container: n("migrate"),
        condition: skiff_proto::DependencyCondition::Success,
    }];
    t.containers = vec![db, migrate, app];
    s.apply(1, vec![t]);
    let started = |s: &Sim| -> Vec<String> {
        s.events
            .iter()
            .filter_map(|e| match e {
                EventBody::ContainerStarted { container, .. } => Some(container.to_string()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        started(&s),
        ["db"],
        "only the container without dependencies"
    );
    s.advance(1_000); // db healthy → migrate
    assert_eq!(started(&s), ["db", "migrate"]);
    let now = s.time();
    let out = super::tests::exit(&mut s.c, "stack", "migrate", migrate_code, now);
    s.feed(out);
    let seen = started(&s);
    (s, seen)
}

#[test]
fn depends_on_starts_containers_in_order_of_their_conditions() {
    let (s, started) = staged(0);
    assert_eq!(started, ["db", "migrate", "app"]);
    assert_eq!(s.c.phase(&n("stack")), Some(Phase::Running));
}

#[test]
fn a_dependency_that_can_no_longer_hold_fails_the_task() {
    let (s, started) = staged(3);
    assert_eq!(started, ["db", "migrate"], "app never starts");
    let reason = s.events.iter().find_map(|e| match e {
        EventBody::TaskFailed { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(
        reason.as_deref(),
        Some("container app: dependency migrate exited with code 3 (SUCCESS required)")
    );
    assert_eq!(s.c.phase(&n("stack")), Some(Phase::Failed));
}

#[test]
fn depends_on_cycles_and_impossible_conditions_are_rejected() {
    let invalid = |t: &TaskDefinition| match t.validate() {
        Err(e) => e.to_string(),
        Ok(()) => panic!("accepted: {t:?}"),
    };
    let dep = |c: &str, cond| skiff_proto::ContainerDependency {
        container: n(c),
        condition: cond,
    };
    use skiff_proto::DependencyCondition::*;
    let mut t = task("bad", RestartPolicy::Never);
    let mut a = container("a", true);
    let mut b = container("b", false);
    a.depends_on = vec![dep("b", Start)];
    b.depends_on = vec![dep("a", Start)];
    t.containers = vec![a.clone(), b.clone()];
    assert!(invalid(&t).contains("dependsOn forms a cycle"));
    b.depends_on = vec![];
    a.depends_on = vec![dep("b", Healthy)];
    t.containers = vec![a.clone(), b.clone()];
    assert!(invalid(&t).contains("HEALTHY needs a healthCheck on container b"));
    b.essential = true;
    a.depends_on = vec![dep("b", Complete)];
    t.containers = vec![a.clone(), b.clone()];
    assert!(invalid(&t).contains("container b is essential"));
    a.depends_on = vec![dep("zz", Start)];
    t.containers = vec![a, b];
    assert!(invalid(&t).contains("no container named zz"));
}

/// A new agent run with what the previous one saved: desired state naming `tasks`.
fn restarted(tasks: Vec<TaskDefinition>, services: Vec<ServiceMemo>) -> Sim {
    let mut s = Sim::new();
    s.now = 100_000;
    let doc = DesiredState {
        version: 9,
        cluster: n("demo"),
        node: Some(n("pi-1")),
        tasks,
        signature: None,
    };
    let out = s.c.handle(
        Event::Restored {
            cluster: None,
            node: Some(Box::new(doc)),
            finished: vec![],
            services,
            last_wall_ms: None,
            images: super::tests::catalog(),
            adopted: vec![],
        },
        s.time(),
    );
    s.feed(out);
    s
}

#[test]
fn a_rollback_survives_an_agent_restart() {
    let mut s = Sim::new();
    s.healthy = |rev| rev != 2;
    s.apply(1, vec![web(1, service_spec(3, 100, 200))]);
    s.advance(1_000);
    s.apply(2, vec![web(2, service_spec(3, 100, 200))]);
    for _ in 0..30 {
        s.advance(1_000);
    }
    let saved = s.saved.clone().expect("saved");
    assert_eq!(saved[0].failed.as_ref().map(|d| d.revision), Some(2));
    // Restart: desired state still names revision 2; the node goes on with revision 1.
    let mut r = restarted(vec![web(2, service_spec(3, 100, 200))], saved);
    r.healthy = |rev| rev != 2;
    r.advance(2_000);
    assert!(
        r.revisions().iter().all(|(_, rev, _)| *rev == 1),
        "{:?}",
        r.revisions()
    );
    assert_eq!(r.service().healthy_count, 3);
    assert_eq!(
        r.count(|e| matches!(e, EventBody::DeploymentFailed { .. })),
        0
    );
    // A new revision rolls out normally.
    r.apply(10, vec![web(3, service_spec(3, 100, 200))]);
    r.advance(5_000);
    assert!(
        r.revisions().iter().all(|(_, rev, _)| *rev == 3),
        "{:?}",
        r.revisions()
    );
}

#[test]
fn a_scaled_count_survives_an_agent_restart() {
    let mut s = Sim::new();
    let mut spec = service_spec(2, 100, 200);
    spec.scaling = Some(AutoScaling {
        min: 1,
        max: 5,
        target_tracking: vec![TargetTracking {
            metric: ScalingMetric::Cpu,
            target_percent: 50,
            scale_out_cooldown_secs: 0,
            scale_in_cooldown_secs: 600,
            disable_scale_in: false,
        }],
        step: vec![],
        scheduled: vec![],
    });
    s.apply(1, vec![web(1, spec.clone())]);
    s.advance(1_000);
    load(&mut s, 100.0);
    let saved = s.saved.clone().expect("saved");
    assert_eq!((saved[0].desired, saved[0].min, saved[0].max), (4, 1, 5));
    let mut r = restarted(vec![web(1, spec)], saved);
    r.advance(1_000);
    assert_eq!(r.service().running_count, 4);
}
