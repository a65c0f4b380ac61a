//! Container health checks, as ECS's `healthCheck` defines them: when a check is due, what a
//! result means. The shells run the check ([`Action::HealthCheck`]) and answer with
//! [`Event::HealthResult`].
//!
//! A check runs every `interval` (counted from the end of the previous one, the first one
//! `interval` after the container started); `retries` failures in a row make the container
//! unhealthy, one success makes it healthy. Failures during the `startPeriod` (and, for a
//! service's tasks, its `healthCheckGracePeriodSeconds`) do not count. An unhealthy essential
//! container makes its task unhealthy; a service replaces such a task, a standalone task only
//! reports it (as ECS does).

use skiff_proto::limits::MAX_REASON;
use skiff_proto::{ContainerState, EventBody, Health, HealthCheck, Name, StopReason};

use super::{service_of, Action, Core, Phase, TaskRec, Time};

/// One container's health-check state.
#[derive(Debug, Clone)]
pub(super) struct HealthState {
    pub check: Option<HealthCheck>,
    pub status: Health,
    /// Failures in a row that counted.
    fails: u32,
    /// When the next check is due (monotonic ms); `None` while one runs or the container
    /// does not run.
    next_at: Option<u64>,
    /// Failures before this monotonic time do not count.
    grace_until: u64,
}

impl HealthState {
    pub fn new(check: Option<HealthCheck>) -> HealthState {
        HealthState {
            check,
            status: Health::Unknown,
            fails: 0,
            next_at: None,
            grace_until: 0,
        }
    }

    /// The container runs: the first check is due one interval from now.
    pub fn on_started(&mut self, now_ms: u64, extra_grace_ms: u64) {
        if let Some(c) = &self.check {
            self.next_at = Some(now_ms + u64::from(c.interval_secs) * 1000);
            self.grace_until = now_ms + (u64::from(c.start_period_secs) * 1000).max(extra_grace_ms);
        }
    }

    pub fn next_at(&self) -> Option<u64> {
        self.next_at
    }

    /// The container stopped: no more checks.
    pub fn stop(&mut self) {
        self.next_at = None;
    }

    /// Applies one result; returns the new status when it changed.
    fn on_result(&mut self, ok: bool, now_ms: u64) -> Option<Health> {
        let check = self.check.as_ref()?;
        self.next_at = Some(now_ms + u64::from(check.interval_secs) * 1000);
        let new = if ok {
            self.fails = 0;
            Health::Healthy
        } else if now_ms < self.grace_until {
            return None;
        } else {
            self.fails = self.fails.saturating_add(1);
            if self.fails < check.retries {
                return None;
            }
            Health::Unhealthy
        };
        (new != self.status).then(|| {
            self.status = new;
            new
        })
    }
}

impl TaskRec {
    /// When the next health check of this task is due.
    pub(super) fn next_health_check(&self) -> Option<u64> {
        if self.phase != Phase::Running {
            return None;
        }
        self.containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .filter_map(|c| c.health.next_at())
            .min()
    }

    /// When the next container of a stopping task gets SIGKILL.
    pub(super) fn next_kill(&self) -> Option<u64> {
        self.containers
            .iter()
            .filter(|c| c.state != ContainerState::Exited)
            .filter_map(|c| c.kill_at)
            .min()
    }
}

impl Core {
    /// Asks for every health check that is due.
    pub(super) fn run_health_checks(&mut self, now: Time, out: &mut Vec<Action>) {
        for (name, t) in self.tasks.iter_mut() {
            if t.phase != Phase::Running {
                continue;
            }
            for c in t.containers.iter_mut() {
                let due = c.health.next_at().is_some_and(|at| at <= now.mono_ms);
                let Some(check) = c.health.check.as_ref().filter(|_| due) else {
                    continue;
                };
                if c.state != ContainerState::Running {
                    continue;
                }
                out.push(Action::HealthCheck {
                    task: name.clone(),
                    container: c.name.clone(),
                    test: check.test.clone(),
                    timeout_ms: u64::from(check.timeout_secs) * 1000,
                });
                c.health.next_at = None;
            }
        }
    }

    pub(super) fn on_health_result(
        &mut self,
        task: &Name,
        container: &Name,
        ok: bool,
        output: String,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let Some(t) = self.tasks.get_mut(task) else {
            return;
        };
        if t.phase != Phase::Running {
            return; // a late answer for a task being stopped
        }
        let Some(c) = t
            .containers
            .iter_mut()
            .find(|c| c.name == *container && c.state == ContainerState::Running)
        else {
            return;
        };
        let Some(health) = c.health.on_result(ok, now.mono_ms) else {
            return;
        };
        let mut output = output;
        if output.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !output.is_char_boundary(end) {
                end -= 1;
            }
            output.truncate(end);
        }
        out.push(Action::Event(EventBody::HealthChanged {
            task: task.clone(),
            container: container.clone(),
            health,
            output,
        }));
        if t.health() == Health::Unhealthy && t.service.is_some() {
            self.stop(task, StopReason::Unhealthy, now, out);
        } else {
            self.start_ready_containers(task, now, out);
        }
    }
}

/// Extra grace for a service's new tasks (`healthCheckGracePeriodSeconds`), in ms.
pub(super) fn service_grace_ms(t: &TaskRec, core: &Core) -> u64 {
    t.service
        .as_ref()
        .and_then(|l| core.services.get(&l.service))
        .and_then(|s| service_of(&s.requested))
        .map_or(0, |s| u64::from(s.health_grace_secs) * 1000)
}
