//! ECS `dependsOn` between the containers of one task. `StartTask` starts the containers
//! without dependencies; once the task runs, each other container gets its own
//! `StartContainer` as soon as every condition holds:
//! - `START`: the other container has started (it may have exited since);
//! - `COMPLETE`: it has exited;
//! - `SUCCESS`: it has exited with code 0;
//! - `HEALTHY`: its health check passed.
//!
//! A condition that can no longer hold (`SUCCESS` after a non-zero exit, `HEALTHY` of an
//! unhealthy or exited container) fails the task's start, naming both containers.

use skiff_proto::{
    ContainerDependency, ContainerState, DependencyCondition, EventBody, Health, Name, StopReason,
};

use super::{Action, ContainerRec, Core, Phase, TaskRec, Time};

/// Whether a dependency holds now, can still hold later, or never will.
enum Verdict {
    Met,
    Wait,
    Never(String),
}

fn verdict(d: &ContainerDependency, target: &ContainerRec) -> Verdict {
    let started = target.state != ContainerState::Pending;
    let exited = target.state == ContainerState::Exited;
    match d.condition {
        DependencyCondition::Start if started => Verdict::Met,
        DependencyCondition::Complete if exited => Verdict::Met,
        DependencyCondition::Success => match target.exit {
            Some(e) if e.code == 0 => Verdict::Met,
            Some(e) => Verdict::Never(format!(
                "{} exited with code {} (SUCCESS required)",
                d.container, e.code
            )),
            None => Verdict::Wait,
        },
        DependencyCondition::Healthy => match target.health.status {
            Health::Healthy if !exited => Verdict::Met,
            Health::Unhealthy => Verdict::Never(format!("{} is unhealthy", d.container)),
            _ if exited => Verdict::Never(format!("{} exited before it was healthy", d.container)),
            _ => Verdict::Wait,
        },
        _ => Verdict::Wait,
    }
}

impl TaskRec {
    /// The task's own start ended: containers of it that did not start never will.
    pub(super) fn initial_starts_done(&mut self) {
        for c in self.containers.iter_mut().filter(|c| c.deps.is_empty()) {
            c.starting = false;
        }
    }
}

impl Core {
    /// Starts every waiting container of a running task whose dependencies hold.
    pub(super) fn start_ready_containers(&mut self, task: &Name, now: Time, out: &mut Vec<Action>) {
        let Some(t) = self.tasks.get_mut(task) else {
            return;
        };
        if t.phase != Phase::Running {
            return;
        }
        let mut ready = Vec::new();
        let mut broken = None;
        for c in &t.containers {
            if c.deps.is_empty() || c.starting || c.state != ContainerState::Pending {
                continue;
            }
            let mut all = true;
            for d in &c.deps {
                let Some(target) = t.containers.iter().find(|o| o.name == d.container) else {
                    continue;
                };
                match verdict(d, target) {
                    Verdict::Met => {}
                    Verdict::Wait => all = false,
                    Verdict::Never(why) => {
                        broken = Some(format!("container {}: dependency {why}", c.name));
                        all = false;
                    }
                }
            }
            if all {
                ready.push(c.name.clone());
            }
        }
        if let Some(reason) = broken {
            t.failure = Some(reason.clone());
            out.push(Action::Event(EventBody::TaskFailed {
                task: task.clone(),
                reason,
            }));
            return self.stop(task, StopReason::StartFailed, now, out);
        }
        for name in ready {
            if let Some(c) = t.containers.iter_mut().find(|c| c.name == name) {
                c.starting = true;
            }
            out.push(Action::StartContainer {
                task: task.clone(),
                container: name,
            });
        }
    }

    pub(super) fn on_container_start_failed(
        &mut self,
        task: &Name,
        container: &Name,
        reason: String,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let Some(t) = self.tasks.get_mut(task) else {
            return;
        };
        let Some(c) = t
            .containers
            .iter_mut()
            .find(|c| c.name == *container && c.starting)
        else {
            return;
        };
        c.starting = false;
        t.failure = Some(reason.clone());
        out.push(Action::Event(EventBody::TaskFailed {
            task: task.clone(),
            reason,
        }));
        if matches!(t.phase, Phase::Starting | Phase::Running) {
            self.stop(task, StopReason::StartFailed, now, out);
        } else {
            self.maybe_remove(task, out);
        }
    }
}
