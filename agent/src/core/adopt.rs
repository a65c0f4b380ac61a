//! Re-adoption: tasks whose containers outlived the previous run of the agent.
//!
//! The launcher keeps containers running when the agent dies (`runtime/launcher.rs`) and
//! hands them to the next agent, with the exits that happened meanwhile. The shells pass them
//! in [`Event::Restored`](super::Event::Restored) as [`AdoptedTask`]s, with the definition the
//! task was prepared with. The core takes each over where it is instead of starting it again:
//!
//! - a task still desired with the same definition becomes `Running` with its containers'
//!   pids; exits that happened while no agent was there are replayed after it, so restart
//!   policies, batch completions, run history and dependent containers go on as if the
//!   agent had never been away;
//! - a service task (`svc.N`) joins the deployment of its service whose definition it runs;
//! - anything else (no longer desired, another definition, a service task of no deployment)
//!   is adopted and then stopped the normal way (`Removed` or `Replaced`): nothing is killed
//!   without its stop grace, and the desired one starts after.
//!
//! A scheduled task's running firing counts as fired at its start (no second firing for
//! it); a batch job's progress comes from the saved finished record.
//!
//! A run that ended is saved when its task is removed (`TaskRemoved` → `RecordRun`,
//! `SaveFinished`), after its containers, and with them their exits, are deleted. So that an
//! agent dying in between does not run the task again, `RemoveTask` carries the run's
//! [`EndedRun`], which the shells keep in the run dir before deleting anything and drop on
//! `ForgetTask`, after the saves. The next agent adopts such a run (containers with
//! `pid` 0, all exited) unless the history already has it, and replays its end.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use skiff_proto::{
    ContainerState, Endpoint, EventBody, ExitInfo, Name, StopReason, TaskDefinition,
};

use super::service::ServiceLink;
use super::{
    batch_of, container_recs, service_of, Action, Core, FinishedTask, Phase, TaskRec, Time,
};

/// A task whose containers outlived the previous run of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptedTask {
    /// The definition it was prepared with.
    pub def: TaskDefinition,
    /// Where it is reached (as prepared).
    pub endpoints: Vec<Endpoint>,
    /// Wall-clock start of its run (its earliest container), ms.
    pub started_wall_ms: u64,
    pub containers: Vec<AdoptedContainer>,
}

/// One container of an [`AdoptedTask`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptedContainer {
    pub name: Name,
    /// 0 for a container of an [`EndedRun`] (deleted already).
    pub pid: u32,
    /// It exited while no agent was there.
    pub exit: Option<ExitInfo>,
}

/// A run whose containers have all exited, as `RemoveTask` is issued for it: what the next
/// agent needs to replay its end should this one die before saving it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedRun {
    /// Wall-clock start of the run, ms (with `attempt`, how the history names it).
    pub started_wall_ms: u64,
    /// The run's `attempt` in the history.
    pub attempt: u32,
    /// The exit of every container that ran.
    pub exits: Vec<(Name, ExitInfo)>,
}

impl EndedRun {
    /// Whether `history` (the task's newest runs) has this run already.
    pub fn saved_in(&self, history: &[skiff_proto::RunRecord]) -> bool {
        history
            .iter()
            .any(|r| r.started_at_ms == self.started_wall_ms && r.attempt == self.attempt)
    }

    /// The run as an [`AdoptedTask`] of `def`, each container exited.
    pub fn adopted(&self, def: TaskDefinition, endpoints: Vec<Endpoint>) -> AdoptedTask {
        AdoptedTask {
            def,
            endpoints,
            started_wall_ms: self.started_wall_ms,
            containers: self
                .exits
                .iter()
                .map(|(name, exit)| AdoptedContainer {
                    name: name.clone(),
                    pid: 0,
                    exit: Some(*exit),
                })
                .collect(),
        }
    }
}

/// Whether a task with these kept containers can be taken over: every container of `def`
/// without `dependsOn` must be among them (an agent that died in the middle of starting the
/// task left it half started; such a task is cleaned up and started again). The error says
/// why not.
pub fn adoptable(def: &TaskDefinition, kept: &[Name]) -> Result<(), String> {
    if let Some(k) = kept
        .iter()
        .find(|k| def.containers.iter().all(|c| c.name != **k))
    {
        return Err(format!("container {k} is not in its definition"));
    }
    match def
        .containers
        .iter()
        .find(|c| c.depends_on.is_empty() && !kept.contains(&c.name))
    {
        Some(c) => Err(format!("container {} was never started", c.name)),
        None => Ok(()),
    }
}

impl TaskRec {
    /// The run that just ended, for `RemoveTask`; `None` when no container ran (nothing to
    /// replay: the task starts again) or for a copy run from the cluster queue.
    pub(super) fn ended_run(&self) -> Option<EndedRun> {
        let exits: Vec<(Name, ExitInfo)> = self
            .containers
            .iter()
            .filter_map(|c| c.exit.map(|e| (c.name.clone(), e)))
            .collect();
        (!exits.is_empty() && self.run_of.is_none()).then(|| EndedRun {
            started_wall_ms: self.started_wall_ms,
            attempt: self.restarts + 1,
            exits,
        })
    }

    /// What the saved finished record of the same definition carries over.
    pub(super) fn take_finished(&mut self, f: &FinishedTask) {
        self.restarts = f.restarts;
        self.last_exit = f.last_exit;
        if let Some(st) = &mut self.sched {
            st.last_fire_wall = st.last_fire_wall.max(f.last_fire_ms);
        }
        if let Some((done, failures)) = f.batch_progress {
            self.batch_done = done;
            self.batch_failures = failures;
        }
    }
}

impl Core {
    /// `svc` when `task` is `svc.N` and `svc` is a desired service.
    pub(super) fn service_of_task(&self, task: &Name) -> Option<Name> {
        let (svc, n) = task.as_str().rsplit_once('.')?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let svc: Name = svc.parse().ok()?;
        let desired = self.desired();
        let def = desired.get(&svc)?;
        service_of(def).is_some().then_some(svc)
    }

    /// Records an adopted task as starting, its containers not yet seen: [`Core::replay_adopted`]
    /// reports them.
    pub(super) fn insert_adopted(&mut self, a: &AdoptedTask, link: Option<ServiceLink>, now: Time) {
        let name = a.def.family.clone();
        let mut rec = TaskRec::new(Arc::new(a.def.clone()), now);
        rec.phase = Phase::Starting;
        rec.start_pending = true;
        rec.started_wall_ms = if a.started_wall_ms > 0 {
            a.started_wall_ms
        } else {
            now.wall_ms
        };
        rec.containers = container_recs(&rec.def, self.cfg.stop_grace_ms);
        for c in &mut rec.containers {
            c.starting = false;
        }
        rec.endpoints = a.endpoints.clone();
        rec.service = link;
        if let Some(secs) = batch_of(&rec.def).and_then(|b| b.timeout_secs) {
            // Its start is unknown to the monotonic clock: the timeout counts from now.
            rec.deadline = Some(now.mono_ms + u64::from(secs) * 1000);
        }
        if let Some(st) = &mut rec.sched {
            // The running firing: no second one for it.
            st.last_fire_wall = Some(rec.started_wall_ms);
        }
        let scheduled = rec.sched.is_some();
        self.tasks.insert(name.clone(), rec);
        if scheduled {
            self.plan_next(&name, now);
        }
    }

    /// Reports an inserted adopted task: its containers running, the task running, then the
    /// exits that happened while no agent was there.
    pub(super) fn replay_adopted(&mut self, a: &AdoptedTask, now: Time, out: &mut Vec<Action>) {
        let name = &a.def.family;
        let exited = a.containers.iter().filter(|c| c.exit.is_some()).count();
        out.push(Action::Event(EventBody::TaskAdopted {
            task: name.clone(),
            running: u32::try_from(a.containers.len() - exited).unwrap_or(u32::MAX),
            exited: u32::try_from(exited).unwrap_or(u32::MAX),
        }));
        let Some(t) = self.tasks.get_mut(name) else {
            return;
        };
        for kept in &a.containers {
            if let Some(c) = t.containers.iter_mut().find(|c| c.name == kept.name) {
                c.state = ContainerState::Running;
                c.pid = Some(kept.pid);
                if kept.pid != 0 {
                    out.push(Action::Event(EventBody::ContainerStarted {
                        task: name.clone(),
                        container: kept.name.clone(),
                        pid: kept.pid,
                    }));
                }
            }
        }
        self.on_task_started(name, now, out);
        for kept in &a.containers {
            if let Some(exit) = kept.exit {
                self.on_exited(name, &kept.name, exit, now, out);
            }
        }
    }

    /// Adopts a service task into the deployment that runs its definition, or adopts and
    /// stops it when there is none.
    pub(super) fn adopt_service_task(&mut self, a: &AdoptedTask, now: Time, out: &mut Vec<Action>) {
        let name = a.def.family.clone();
        let link = self
            .service_of_task(&name)
            .and_then(|svc| self.deployment_running(&svc, &a.def));
        let orphan = link.is_none();
        self.insert_adopted(a, link, now);
        self.replay_adopted(a, now, out);
        if orphan {
            self.stop(&name, StopReason::Replaced, now, out);
        }
    }
}
