//! Services: ECS's service scheduler on the device, working offline.
//!
//! A task definition with `TaskExtension::Service` is a service named by its family. Its tasks
//! are ordinary [`TaskRec`]s named `{service}.{slot}` (slot: the lowest free number from 1),
//! each linked to one **deployment**: the task definition being rolled out. The newest
//! deployment is the *primary*; older ones only lose tasks.
//!
//! [`Core::drive_services`] runs after every event and moves each service towards its desired
//! count within the rollout bounds (ECS's rules):
//! - at most `floor(desired × maximumPercent / 100)` tasks hold a place (starting, running,
//!   restarting or still stopping);
//! - healthy tasks (running, and healthy by their health checks if they have any) never drop
//!   below `ceil(desired × minimumHealthyPercent / 100)` because of the rollout (capped at the
//!   maximum minus one, so that one task can always move);
//! - old tasks go first when they are not healthy; a new task counts only once healthy;
//! - a deployment is *completed* once it has the desired count of healthy tasks and nothing
//!   older is left; it becomes the revision a rollback returns to.
//!
//! A primary task that stops on its own (exit, failed start, unhealthy) is restarted in place
//! with the exponential backoff of the restart policy. While a deployment is in progress each
//! such stop counts against the circuit breaker (threshold: half the desired count, at least 3,
//! at most 200, as ECS); at the threshold the deployment fails and, with `rollback`, the last
//! completed revision becomes a new primary deployment. Desired state still names the failed
//! revision: only a different definition starts a new rollout.

use std::collections::BTreeMap;
use std::sync::Arc;

use skiff_proto::{
    DeploymentStatus, EventBody, Name, RolloutState, ScalingMetric, Scope, ServiceStatus,
    StopReason, TaskDefinition, TaskExtension, TaskSample,
};

use super::cron::{next_firing, CronExpr};
use super::{
    service_of, Action, Core, DesiredState, DrainState, Phase, TaskRec, Time, CRON_RECHECK_MS,
};

/// What survives an agent restart of a service: its scaled count and bounds, and a rollback
/// (so a restarted agent does not roll the failed revision out again).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceMemo {
    pub name: Name,
    pub desired: u32,
    pub min: u32,
    pub max: u32,
    /// The requested definition whose rollout failed and was rolled back.
    pub failed: Option<TaskDefinition>,
    /// The definition of the last completed deployment.
    pub last_completed: Option<TaskDefinition>,
}

/// Which service and deployment a task belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServiceLink {
    pub service: Name,
    pub deployment: u32,
}

#[derive(Debug, Clone)]
struct Deployment {
    id: u32,
    def: Arc<TaskDefinition>,
    rollout: RolloutState,
    failed_tasks: u32,
}

/// A service's state on the node.
#[derive(Debug, Clone)]
pub struct ServiceRec {
    /// The definition desired state names (its family is the service's name).
    pub(super) requested: Arc<TaskDefinition>,
    /// Oldest first; the last one is the primary.
    deployments: Vec<Deployment>,
    next_id: u32,
    /// Desired count now (auto scaling moves it within `min..=max`).
    desired: u32,
    min: u32,
    max: u32,
    /// The definition of the last completed deployment: what a rollback restores.
    last_completed: Option<Arc<TaskDefinition>>,
    /// No longer in desired state: its tasks are stopped, then it is forgotten.
    removing: bool,
    /// The requested definition whose rollout failed and was rolled back (until desired state
    /// names another one).
    failed: Option<Arc<TaskDefinition>>,
    scaling: ScalingState,
}

/// Cooldowns and scheduled actions of a service's auto scaling.
#[derive(Debug, Clone, Default)]
struct ScalingState {
    last_out_ms: Option<u64>,
    /// Last scaling of any kind (scale-in cooldowns count from it).
    last_any_ms: Option<u64>,
    /// Per step policy: its last adjustment.
    step_last_ms: Vec<Option<u64>>,
    /// Per scheduled action: next firing and last firing (effective wall ms).
    sched_next: Vec<Option<u64>>,
    sched_last: Vec<Option<u64>>,
}

/// The task part of a definition: what a rollout is about (the service settings are not).
fn task_part(def: &TaskDefinition) -> TaskDefinition {
    let mut d = def.clone();
    d.extensions
        .retain(|e| !matches!(e, TaskExtension::Service(_)));
    d
}

/// ECS's circuit-breaker threshold: half the desired count, at least 3, at most 200.
pub fn failure_threshold(desired: u32) -> u32 {
    desired.div_ceil(2).clamp(3, 200)
}

/// Places a rollout may use: `floor(desired × max% / 100)`, never below the desired count.
pub fn max_total(desired: u32, max_percent: u32) -> u32 {
    (desired * max_percent / 100).max(desired)
}

/// Healthy tasks a rollout keeps: `ceil(desired × min% / 100)`, below the maximum.
pub fn min_healthy(desired: u32, min_percent: u32, max_total: u32) -> u32 {
    (desired * min_percent)
        .div_ceil(100)
        .min(max_total.saturating_sub(1))
}

impl ServiceRec {
    fn new(def: Arc<TaskDefinition>, now: Time) -> ServiceRec {
        let mut s = ServiceRec {
            requested: def.clone(),
            deployments: vec![Deployment {
                id: 1,
                def,
                rollout: RolloutState::InProgress,
                failed_tasks: 0,
            }],
            next_id: 2,
            desired: 0,
            min: 0,
            max: skiff_proto::limits::MAX_SERVICE_TASKS,
            last_completed: None,
            removing: false,
            failed: None,
            scaling: ScalingState::default(),
        };
        s.apply_spec(None, now);
        s
    }

    fn spec(&self) -> Option<&skiff_proto::Service> {
        service_of(&self.requested)
    }

    /// Takes the count and bounds of the (new) service settings; `old`: the previous ones.
    fn apply_spec(&mut self, old: Option<&skiff_proto::Service>, _now: Time) {
        let Some(spec) = self.spec().cloned() else {
            return;
        };
        let (min, max) = spec
            .scaling
            .as_ref()
            .map_or((0, skiff_proto::limits::MAX_SERVICE_TASKS), |a| {
                (a.min, a.max)
            });
        let scaling_changed = old.map(|o| &o.scaling) != Some(&spec.scaling);
        if scaling_changed {
            let n = spec.scaling.as_ref().map_or(0, |a| a.scheduled.len());
            let steps = spec.scaling.as_ref().map_or(0, |a| a.step.len());
            self.scaling.sched_next = vec![None; n];
            self.scaling.sched_last = vec![None; n];
            self.scaling.step_last_ms = vec![None; steps];
            self.min = min;
            self.max = max;
        }
        if old.map(|o| o.desired_count) != Some(spec.desired_count) || scaling_changed {
            self.desired = spec.desired_count;
        }
        self.desired = self.desired.clamp(self.min, self.max);
    }

    /// A new primary deployment of `def`; returns its id.
    fn push_deployment(&mut self, def: Arc<TaskDefinition>) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.deployments.push(Deployment {
            id,
            def,
            rollout: RolloutState::InProgress,
            failed_tasks: 0,
        });
        id
    }

    fn primary(&self) -> Option<&Deployment> {
        self.deployments.last()
    }

    fn memo(&self, name: &Name) -> ServiceMemo {
        ServiceMemo {
            name: name.clone(),
            desired: self.desired,
            min: self.min,
            max: self.max,
            failed: self.failed.as_deref().cloned(),
            last_completed: self.last_completed.as_deref().cloned(),
        }
    }

    /// Takes back what the previous run saved: the scaled count within the bounds, and a
    /// rollback when desired state still names the revision that failed.
    fn take_memo(&mut self, memo: ServiceMemo) {
        if self.spec().is_some_and(|s| s.scaling.is_some()) {
            self.min = memo.min;
            self.max = memo.max;
            self.desired = memo.desired.clamp(memo.min, memo.max);
        }
        self.last_completed = memo.last_completed.map(Arc::new);
        let failed_again = memo
            .failed
            .as_ref()
            .is_some_and(|f| task_part(f) == task_part(&self.requested));
        if let (true, Some(prev)) = (failed_again, self.last_completed.clone()) {
            self.failed = Some(self.requested.clone());
            if let Some(d) = self.deployments.first_mut() {
                d.def = prev;
            }
        }
    }

    /// Every definition the service may still run (images to keep).
    pub(super) fn defs(&self) -> impl Iterator<Item = &TaskDefinition> {
        self.deployments
            .iter()
            .map(|d| &*d.def)
            .chain(self.last_completed.as_deref())
    }

    /// The earliest time a scheduled scaling action needs a look.
    pub(super) fn next_deadline(&self, now: Time, wall: Option<u64>) -> Option<u64> {
        if self.scaling.sched_next.is_empty() {
            return None;
        }
        let wait = self
            .scaling
            .sched_next
            .iter()
            .flatten()
            .map(|next| wall.map_or(CRON_RECHECK_MS, |w| next.saturating_sub(w)))
            .min()
            .unwrap_or(CRON_RECHECK_MS)
            .min(CRON_RECHECK_MS);
        Some(now.mono_ms + wait)
    }

    pub(super) fn status(&self, name: &Name, tasks: &BTreeMap<Name, TaskRec>) -> ServiceStatus {
        let mine = || {
            tasks
                .values()
                .filter(move |t| t.service.as_ref().is_some_and(|l| l.service == *name))
        };
        let primary = self.primary().map(|d| d.id);
        ServiceStatus {
            name: name.clone(),
            desired_count: self.desired,
            running_count: mine().filter(|t| t.phase == Phase::Running).count32(),
            healthy_count: mine().filter(|t| t.is_healthy()).count32(),
            deployments: self
                .deployments
                .iter()
                .rev()
                .map(|d| {
                    let of = || {
                        mine().filter(move |t| {
                            t.service.as_ref().is_some_and(|l| l.deployment == d.id)
                        })
                    };
                    DeploymentStatus {
                        id: d.id,
                        revision: d.def.revision,
                        primary: Some(d.id) == primary,
                        rollout: d.rollout,
                        desired_count: if Some(d.id) == primary {
                            self.desired
                        } else {
                            0
                        },
                        pending_count: of()
                            .filter(|t| matches!(t.phase, Phase::Starting | Phase::Backoff))
                            .count32(),
                        running_count: of().filter(|t| t.phase == Phase::Running).count32(),
                        healthy_count: of().filter(|t| t.is_healthy()).count32(),
                        failed_tasks: d.failed_tasks,
                    }
                })
                .collect(),
        }
    }
}

/// A service task as the rollout sees it.
struct Member {
    name: Name,
    deployment: u32,
    live: bool,
    healthy: bool,
    /// Holds a place: live, or still stopping.
    occupies: bool,
}

impl Core {
    /// What must survive a restart of every service.
    pub(super) fn service_memos(&self) -> Vec<ServiceMemo> {
        self.services
            .iter()
            .filter(|(_, s)| !s.removing)
            .map(|(n, s)| s.memo(n))
            .collect()
    }

    /// Creates, updates and retires services from the desired service definitions.
    pub(super) fn reconcile_services(
        &mut self,
        desired: BTreeMap<Name, Arc<TaskDefinition>>,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        for (name, def) in &desired {
            let Some(svc) = self.services.get_mut(name) else {
                let mut svc = ServiceRec::new(def.clone(), now);
                if let Some(memo) = self.restored_services.remove(name) {
                    svc.take_memo(memo);
                }
                let first = &svc.deployments[0];
                out.push(Action::Event(EventBody::DeploymentStarted {
                    service: name.clone(),
                    deployment: first.id,
                    revision: first.def.revision,
                }));
                self.services.insert(name.clone(), svc);
                continue;
            };
            svc.removing = false;
            if *def == svc.requested {
                continue;
            }
            let old_spec = svc.spec().cloned();
            let new_rollout = task_part(def) != task_part(&svc.requested);
            svc.requested = def.clone();
            svc.apply_spec(old_spec.as_ref(), now);
            if new_rollout {
                svc.failed = None;
                let id = svc.push_deployment(def.clone());
                out.push(Action::Event(EventBody::DeploymentStarted {
                    service: name.clone(),
                    deployment: id,
                    revision: def.revision,
                }));
            }
        }
        for (name, svc) in self.services.iter_mut() {
            if !desired.contains_key(name) {
                svc.removing = true;
            }
        }
    }

    /// The deployment of `service` whose tasks run `def` (a service task's definition: the
    /// deployment's with the task's name), for an adopted task.
    pub(super) fn deployment_running(
        &self,
        service: &Name,
        def: &TaskDefinition,
    ) -> Option<ServiceLink> {
        let svc = self.services.get(service)?;
        svc.deployments.iter().find_map(|d| {
            let mut want = task_part(&d.def);
            want.family = def.family.clone();
            (want == *def).then(|| ServiceLink {
                service: service.clone(),
                deployment: d.id,
            })
        })
    }

    /// Rejects a document whose task families would collide with service task names.
    pub(super) fn check_service_names(
        &self,
        scope: Scope,
        doc: &DesiredState,
    ) -> Result<(), String> {
        let mut all = self.desired();
        if let Some(cur) = match scope {
            Scope::Cluster => &self.cluster_doc,
            Scope::Node => &self.node_doc,
        } {
            for t in &cur.tasks {
                all.remove(&t.family);
            }
        }
        for t in &doc.tasks {
            all.insert(t.family.clone(), t);
        }
        for (svc, def) in &all {
            let allows_overlap = super::schedule_of(def)
                .is_some_and(|s| s.overlap == skiff_proto::OverlapPolicy::Allow);
            if service_of(def).is_none() && !allows_overlap {
                continue;
            }
            let prefix = format!("{svc}.");
            let clash = all.keys().find(|f| {
                f.as_str().strip_prefix(&prefix).is_some_and(|rest| {
                    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
                })
            });
            if let Some(f) = clash {
                let what = if allows_overlap {
                    "the concurrent runs of scheduled task"
                } else {
                    "the tasks of service"
                };
                return Err(format!(
                    "task family {f} collides with {what} {svc} (named {svc}.N)"
                ));
            }
        }
        Ok(())
    }

    fn members(&self, service: &Name) -> Vec<Member> {
        self.tasks
            .iter()
            .filter_map(|(name, t)| {
                let l = t.service.as_ref().filter(|l| l.service == *service)?;
                // A task stopping on its own restarts in place: it keeps its place.
                let restarting = matches!(t.phase, Phase::Stopping { .. } | Phase::Removing)
                    && matches!(
                        t.stop_reason,
                        Some(
                            StopReason::EssentialExited
                                | StopReason::StartFailed
                                | StopReason::Unhealthy
                        )
                    );
                Some(Member {
                    name: name.clone(),
                    deployment: l.deployment,
                    live: t.is_live() || restarting,
                    healthy: t.is_healthy(),
                    occupies: !matches!(t.phase, Phase::Stopped | Phase::Failed),
                })
            })
            .collect()
    }

    /// Moves every service towards its desired count within its rollout bounds.
    pub(super) fn drive_services(&mut self, now: Time, out: &mut Vec<Action>) {
        if self.shutting_down {
            return;
        }
        let names: Vec<Name> = self.services.keys().cloned().collect();
        for name in names {
            self.drive_service(&name, now, out);
        }
    }

    fn drive_service(&mut self, name: &Name, now: Time, out: &mut Vec<Action>) {
        let members = self.members(name);
        let Some(svc) = self.services.get(name) else {
            return;
        };
        let stop_all = if svc.removing {
            Some(StopReason::Removed)
        } else if self.drain.is_some() {
            Some(StopReason::Drained)
        } else {
            None
        };
        if let Some(reason) = stop_all {
            let remove = svc.removing && members.is_empty();
            for m in members.iter().filter(|m| m.live) {
                self.stop(&m.name, reason, now, out);
            }
            if remove {
                self.services.remove(name);
            }
            return;
        }
        let Some(primary) = svc.primary() else {
            return;
        };
        let (pid, prollout) = (primary.id, primary.rollout);
        let spec = svc.spec().cloned();
        let (min_pct, max_pct) = spec
            .as_ref()
            .map_or((100, 200), |s| (s.min_healthy_percent, s.max_percent));
        let n = svc.desired;
        let max_total = max_total(n, max_pct);
        let min_healthy = min_healthy(n, min_pct, max_total);
        let mut occupying = members.iter().filter(|m| m.occupies).count32();
        let mut healthy = members.iter().filter(|m| m.healthy).count32();
        let mut stops: Vec<(Name, StopReason)> = Vec::new();

        if prollout != RolloutState::Failed {
            // Old tasks: the ones not healthy at once, healthy ones while enough stay healthy.
            let mut old: Vec<&Member> = members
                .iter()
                .filter(|m| m.deployment != pid && m.live)
                .collect();
            old.sort_by_key(|m| (m.healthy, std::cmp::Reverse(m.name.clone())));
            for m in old {
                if !m.healthy {
                    stops.push((m.name.clone(), StopReason::ServiceUpdated));
                } else if healthy > min_healthy {
                    healthy -= 1;
                    stops.push((m.name.clone(), StopReason::ServiceUpdated));
                }
            }
        }
        // Too many primary tasks (scaled in): the unhealthy and newest go first.
        let mut primary_live: Vec<&Member> = members
            .iter()
            .filter(|m| m.deployment == pid && m.live)
            .collect();
        if primary_live.len() > n as usize {
            primary_live.sort_by_key(|m| (!m.healthy, slot_of(&m.name)));
            for m in primary_live.split_off(n as usize) {
                stops.push((m.name.clone(), StopReason::ServiceUpdated));
            }
        }
        let mut live_primary = primary_live.iter().count32();
        for (task, reason) in stops {
            self.stop(&task, reason, now, out);
        }
        // New tasks of the primary deployment, within the maximum.
        if prollout != RolloutState::Failed {
            while live_primary < n && occupying < max_total {
                self.start_service_task(name, pid, now, out);
                live_primary += 1;
                occupying += 1;
            }
        }
        self.check_completed(name, out);
    }

    /// Marks the primary deployment completed once it alone runs, all healthy.
    fn check_completed(&mut self, name: &Name, out: &mut Vec<Action>) {
        let members = self.members(name);
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        let Some(primary) = svc.deployments.last() else {
            return;
        };
        let pid = primary.id;
        // Older deployments without tasks are done with.
        let in_use: Vec<u32> = members.iter().map(|m| m.deployment).collect();
        svc.deployments
            .retain(|d| d.id == pid || in_use.contains(&d.id));
        let Some(primary) = svc.deployments.last_mut() else {
            return;
        };
        let only_primary = members.iter().all(|m| m.deployment == pid);
        let healthy = members.iter().filter(|m| m.healthy).count32();
        let live = members.iter().filter(|m| m.live).count32();
        if primary.rollout == RolloutState::InProgress
            && only_primary
            && healthy == svc.desired
            && live == svc.desired
        {
            primary.rollout = RolloutState::Completed;
            svc.last_completed = Some(primary.def.clone());
            out.push(Action::Event(EventBody::DeploymentCompleted {
                service: name.clone(),
                deployment: primary.id,
                revision: primary.def.revision,
            }));
        }
    }

    fn start_service_task(
        &mut self,
        service: &Name,
        deployment: u32,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let Some(def) = self
            .services
            .get(service)
            .and_then(|s| s.deployments.iter().find(|d| d.id == deployment))
            .map(|d| d.def.clone())
        else {
            return;
        };
        let Some(task) = (1..).find_map(|slot: u32| {
            let name: Name = format!("{service}.{slot}").parse().ok()?;
            (!self.tasks.contains_key(&name)).then_some(name)
        }) else {
            return;
        };
        let mut d = task_part(&def);
        d.family = task.clone();
        let mut rec = TaskRec::new(Arc::new(d), now);
        rec.service = Some(ServiceLink {
            service: service.clone(),
            deployment,
        });
        self.tasks.insert(task.clone(), rec);
        self.launch(&task, now, out);
    }

    /// A service task stopped and was cleaned: count a failure, restart it in place or let
    /// it go.
    pub(super) fn finish_service_task(&mut self, name: &Name, now: Time, out: &mut Vec<Action>) {
        let Some(t) = self.tasks.get(name) else {
            return;
        };
        let Some(link) = t.service.clone() else {
            return;
        };
        let on_its_own = matches!(
            t.stop_reason,
            Some(StopReason::EssentialExited | StopReason::StartFailed | StopReason::Unhealthy)
        );
        if on_its_own {
            self.count_failure(&link, out);
        }
        let keep = on_its_own
            && !self.shutting_down
            && self.drain.is_none()
            && self.services.get(&link.service).is_some_and(|s| {
                !s.removing
                    && s.primary().is_some_and(|p| {
                        p.id == link.deployment && p.rollout != RolloutState::Failed
                    })
            });
        let Some(t) = self.tasks.get_mut(name) else {
            return;
        };
        if !keep {
            self.tasks.remove(name);
            return;
        }
        t.back_off(name, now, out);
    }

    /// One more failed task for a deployment; the circuit breaker may trip.
    fn count_failure(&mut self, link: &ServiceLink, out: &mut Vec<Action>) {
        let Some(svc) = self.services.get_mut(&link.service) else {
            return;
        };
        let breaker = svc.spec().and_then(|s| s.circuit_breaker.clone());
        let threshold = failure_threshold(svc.desired);
        let last_completed = svc.last_completed.clone();
        let is_primary = svc.primary().is_some_and(|p| p.id == link.deployment);
        let Some(d) = svc.deployments.iter_mut().find(|d| d.id == link.deployment) else {
            return;
        };
        d.failed_tasks = d.failed_tasks.saturating_add(1);
        let Some(breaker) = breaker else { return };
        if !is_primary || d.rollout != RolloutState::InProgress || d.failed_tasks < threshold {
            return;
        }
        d.rollout = RolloutState::Failed;
        let (failed_id, failed_rev, failed_def) = (d.id, d.def.revision, d.def.clone());
        let rollback = last_completed
            .filter(|prev| breaker.rollback && task_part(prev) != task_part(&failed_def));
        out.push(Action::Event(EventBody::DeploymentFailed {
            service: link.service.clone(),
            deployment: failed_id,
            revision: failed_rev,
            reason: format!(
                "{} tasks failed to start, exited or turned unhealthy (circuit breaker threshold {threshold})",
                d.failed_tasks
            ),
            rollback_to: rollback.as_ref().map(|p| p.revision),
        }));
        if let Some(prev) = rollback {
            svc.failed = Some(svc.requested.clone());
            // The deployment that still runs that definition becomes the primary again (its
            // tasks stay); otherwise a new one starts.
            let same = svc
                .deployments
                .iter()
                .position(|d| task_part(&d.def) == task_part(&prev));
            let id = if let Some(pos) = same {
                let mut d = svc.deployments.remove(pos);
                d.rollout = RolloutState::InProgress;
                d.failed_tasks = 0;
                let id = d.id;
                svc.deployments.push(d);
                id
            } else {
                svc.push_deployment(prev.clone())
            };
            out.push(Action::Event(EventBody::DeploymentStarted {
                service: link.service.clone(),
                deployment: id,
                revision: prev.revision,
            }));
        }
    }

    /// Auto scaling on a metrics sample: target tracking, then step scaling.
    pub(super) fn on_metrics(
        &mut self,
        samples: &[TaskSample],
        mem_total_bytes: u64,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        if self.drain.is_some() || self.shutting_down {
            return;
        }
        let names: Vec<Name> = self.services.keys().cloned().collect();
        for name in names {
            let figures = self.service_figures(&name, samples, mem_total_bytes);
            let Some(svc) = self.services.get_mut(&name) else {
                continue;
            };
            if svc.removing {
                continue;
            }
            let Some(scaling) = svc.spec().and_then(|s| s.scaling.clone()) else {
                continue;
            };
            let Some((running, cpu, mem)) = figures else {
                continue;
            };
            let value = |m: ScalingMetric| match m {
                ScalingMetric::Cpu => cpu,
                ScalingMetric::Memory => mem,
            };
            let metric_name = |m: ScalingMetric| match m {
                ScalingMetric::Cpu => "CPU",
                ScalingMetric::Memory => "memory",
            };
            let ready = |last: Option<u64>, secs: u32| {
                last.is_none_or(|l| now.mono_ms.saturating_sub(l) >= u64::from(secs) * 1000)
            };
            let from = svc.desired;
            let mut decision: Option<(u32, String)> = None;
            // Target tracking: out if any policy wants more, in only if all want fewer.
            let mut out_to: Option<(u32, String)> = None;
            let mut in_to: Option<(u32, String)> = None;
            let mut all_in = !scaling.target_tracking.is_empty();
            for p in &scaling.target_tracking {
                let v = value(p.metric);
                let want =
                    ceil_u32(f64::from(running) * f64::from(v) / f64::from(p.target_percent))
                        .clamp(svc.min, svc.max);
                let cause = format!(
                    "target tracking: average {} {v:.1}% over {running} tasks, target {}%",
                    metric_name(p.metric),
                    p.target_percent
                );
                if want > from && ready(svc.scaling.last_out_ms, p.scale_out_cooldown_secs) {
                    if out_to.as_ref().is_none_or(|(w, _)| want > *w) {
                        out_to = Some((want, cause));
                    }
                    all_in = false;
                } else if want < from
                    && !p.disable_scale_in
                    && ready(svc.scaling.last_any_ms, p.scale_in_cooldown_secs)
                {
                    if in_to.as_ref().is_none_or(|(w, _)| want > *w) {
                        in_to = Some((want, cause));
                    }
                } else {
                    all_in = false;
                }
            }
            if out_to.is_some() {
                decision = out_to;
            } else if all_in {
                decision = in_to;
            }
            // Step scaling, when target tracking left the count alone.
            if decision.is_none() {
                for (i, p) in scaling.step.iter().enumerate() {
                    let v = value(p.metric);
                    let thr = p.threshold_percent as f32;
                    let breached = if p.above { v >= thr } else { v <= thr };
                    let last = svc.scaling.step_last_ms.get(i).copied().flatten();
                    if !breached || !ready(last, p.cooldown_secs) {
                        continue;
                    }
                    let diff = v - thr;
                    let step = p.steps.iter().find(|s| {
                        s.lower.is_none_or(|l| diff >= l as f32)
                            && s.upper.is_none_or(|u| diff < u as f32)
                    });
                    let Some(step) = step else { continue };
                    let to = from
                        .saturating_add_signed(step.change)
                        .clamp(svc.min, svc.max);
                    if let Some(slot) = svc.scaling.step_last_ms.get_mut(i) {
                        *slot = Some(now.mono_ms);
                    }
                    if to != from {
                        decision = Some((
                            to,
                            format!(
                                "step scaling: average {} {v:.1}% {} threshold {}% ({:+} tasks)",
                                metric_name(p.metric),
                                if p.above { ">=" } else { "<=" },
                                p.threshold_percent,
                                step.change
                            ),
                        ));
                        break;
                    }
                }
            }
            let Some((to, cause)) = decision.filter(|(to, _)| *to != from) else {
                continue;
            };
            svc.desired = to;
            if to > from {
                svc.scaling.last_out_ms = Some(now.mono_ms);
            }
            svc.scaling.last_any_ms = Some(now.mono_ms);
            out.push(Action::Event(EventBody::ServiceScaled {
                service: name.clone(),
                from,
                to,
                cause,
            }));
        }
    }

    /// Running tasks of the service's primary deployment with a sample, and their average CPU
    /// and memory use in % of what they reserve.
    fn service_figures(
        &self,
        service: &Name,
        samples: &[TaskSample],
        mem_total_bytes: u64,
    ) -> Option<(u32, f32, f32)> {
        let (mut n, mut cpu, mut mem) = (0u32, 0f32, 0f32);
        for s in samples {
            let Some(t) = self.tasks.get(&s.task) else {
                continue;
            };
            if t.phase != Phase::Running || t.service.as_ref().is_none_or(|l| l.service != *service)
            {
                continue;
            }
            let cpu_units = t.def.cpu.unwrap_or(1024).max(1) as f32;
            cpu += s.cpu_pct / (cpu_units / 1024.0);
            let limit = s.mem_limit_bytes.unwrap_or(mem_total_bytes).max(1);
            #[allow(clippy::cast_possible_truncation)] // a percentage
            let pct = (s.mem_bytes as f64 / limit as f64 * 100.0) as f32;
            mem += pct;
            n += 1;
        }
        (n > 0).then(|| (n, cpu / n as f32, mem / n as f32))
    }

    /// Scheduled scaling actions that are due set new bounds; after a clock jump or downtime
    /// the most recent due firing wins.
    pub(super) fn on_scaling_schedules(&mut self, now: Time, out: &mut Vec<Action>) {
        let Some(wall) = self.effective_wall(now) else {
            return;
        };
        let zones = self.zones.clone();
        for (name, svc) in self.services.iter_mut() {
            let Some(actions) = svc
                .spec()
                .and_then(|s| s.scaling.as_ref())
                .map(|a| a.scheduled.clone())
            else {
                continue;
            };
            let mut due: Vec<(u64, usize)> = Vec::new();
            for (i, a) in actions.iter().enumerate() {
                let Ok(expr) = a.cron.parse::<CronExpr>() else {
                    continue;
                };
                let offset = i32::from(a.utc_offset_minutes);
                let zone = a.zone.as_deref();
                let next_after = |t: u64| next_firing(&expr, t, offset, zone, &zones);
                let (Some(next), Some(last)) = (
                    svc.scaling.sched_next.get_mut(i),
                    svc.scaling.sched_last.get_mut(i),
                ) else {
                    continue;
                };
                if next.is_none() {
                    *next = next_after(last.unwrap_or(wall));
                }
                let Some(first) = (*next).filter(|n| *n <= wall) else {
                    continue;
                };
                // The latest firing at or before now (bounded walk: a week of minutes).
                let mut latest = first;
                for _ in 0..10_080 {
                    match next_after(latest) {
                        Some(t) if t <= wall => latest = t,
                        _ => break,
                    }
                }
                *last = Some(latest);
                *next = next_after(wall.max(latest));
                due.push((latest, i));
            }
            due.sort();
            for (_, i) in due {
                let a = &actions[i];
                let from = svc.desired;
                svc.min = a.min;
                svc.max = a.max;
                svc.desired = from.clamp(a.min, a.max);
                out.push(Action::Event(EventBody::ServiceScaled {
                    service: name.clone(),
                    from,
                    to: svc.desired,
                    cause: format!(
                        "scheduled action \"{}\": capacity {}..={}",
                        a.cron, a.min, a.max
                    ),
                }));
            }
        }
    }

    /// Starts a drain: nothing new starts, service and long-running tasks stop, batch tasks
    /// may finish until the deadline.
    pub(super) fn on_drain(&mut self, batch_deadline_ms: u64, now: Time, out: &mut Vec<Action>) {
        if self.drain.is_some() || self.shutting_down {
            return;
        }
        self.drain = Some(DrainState {
            batch_deadline: Some(now.mono_ms + batch_deadline_ms),
            reported_drained: false,
        });
        out.push(Action::Event(EventBody::NodeStateChanged {
            state: skiff_proto::NodeState::Draining,
        }));
        let names: Vec<Name> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.service.is_none() && super::batch_of(&t.def).is_none())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let live = self.tasks.get(&name).is_some_and(|t| t.is_live());
            if live {
                self.stop(&name, StopReason::Drained, now, out);
            }
        }
    }

    /// Batch tasks still running at the drain deadline are stopped.
    pub(super) fn on_drain_deadline(&mut self, now: Time, out: &mut Vec<Action>) {
        let Some(d) = &mut self.drain else { return };
        if d.batch_deadline.is_none_or(|at| at > now.mono_ms) {
            return;
        }
        d.batch_deadline = None;
        let names: Vec<Name> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.is_live())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.stop(&name, StopReason::Drained, now, out);
        }
    }

    /// Reports `Drained` once nothing runs any more.
    pub(super) fn check_drained(&mut self, out: &mut Vec<Action>) {
        let drained = self.node_state() == skiff_proto::NodeState::Drained;
        if let Some(d) = &mut self.drain {
            if drained && !d.reported_drained {
                d.reported_drained = true;
                out.push(Action::Event(EventBody::NodeStateChanged {
                    state: skiff_proto::NodeState::Drained,
                }));
            }
        }
    }

    /// Ends a drain: what it stopped starts again.
    pub(super) fn on_activate(&mut self, now: Time, out: &mut Vec<Action>) {
        if self.drain.take().is_none() {
            return;
        }
        out.push(Action::Event(EventBody::NodeStateChanged {
            state: skiff_proto::NodeState::Online,
        }));
        let names: Vec<Name> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.drained && t.sched.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.launch(&name, now, out);
        }
        for t in self.tasks.values_mut() {
            t.drained = false;
        }
    }
}

/// Counting tasks: never more than a `u32` holds.
trait Count32 {
    fn count32(self) -> u32;
}

impl<I: Iterator> Count32 for I {
    fn count32(self) -> u32 {
        u32::try_from(self.count()).unwrap_or(u32::MAX)
    }
}

/// `ceil(x)` as a task count (0 for negative or NaN, saturating).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn ceil_u32(x: f64) -> u32 {
    // `as` saturates floats: NaN → 0, negative → 0, huge → u32::MAX.
    x.ceil() as u32
}

/// The slot number of a service task name (`web.3` → 3).
fn slot_of(name: &Name) -> u32 {
    name.as_str()
        .rsplit('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u32::MAX)
}
