//! The cluster queue on the node: copies of a task offered to the cluster (topic `queue`,
//! taken through a shared subscription) that this node claims when it has room, runs as its
//! own task named by the copy's id, and reports to the end.
//!
//! Exactly once, by construction:
//! - the broker gives each offer to one node of the group;
//! - the node decides and makes the decision durable (this module's [`QueueMemo`], saved by
//!   [`Action::SaveQueue`] before anything is published) before the shell acknowledges the
//!   offer to the broker;
//! - the agent's MQTT session is persistent, so an offer not yet acknowledged when the node died
//!   is delivered again to the same node when it comes back, which finds its decision in the
//!   memo and does not decide again (a claim is not run twice, a hand-back not sent twice);
//! - a copy handed back is offered again only by the console, once per hand-back (it counts
//!   `attempt`), and never to the node that claimed it: a node hands back only what it did not
//!   claim.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use skiff_proto::codec::{decode_as, Kind, Message};
use skiff_proto::{EventBody, Name, RunRequest, StopReason, TaskDefinition};

use super::{batch_of, Action, Catalog, Core, Phase, Time};

/// Offers decided (handed back or refused) remembered, newest last: enough to recognise a
/// redelivery after a restart, small enough to rewrite on every claim.
pub const MAX_REMEMBERED: usize = 256;

/// What the node may give to queued copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// CPU units (1024 = one CPU) reserved by all running tasks together, queued or not.
    pub cpu_units: u64,
    /// MiB reserved by all running tasks together.
    pub memory_mib: u64,
    /// Queued copies running at once.
    pub max_tasks: u32,
}

/// The durable part: copies claimed and not yet finished, and offers recently decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueMemo {
    pub claims: Vec<RunRequest>,
    /// (copy id, attempt) of offers handed back, refused or finished.
    pub decided: Vec<(Name, u32)>,
}

#[derive(Debug, Clone)]
pub(super) struct Claim {
    pub req: RunRequest,
    /// The request's task, named by the copy's id.
    pub def: TaskDefinition,
}

impl Claim {
    fn new(req: RunRequest) -> Claim {
        let def = TaskDefinition {
            family: req.id.clone(),
            ..req.task.clone()
        };
        Claim { req, def }
    }
}

/// The queue's state in the core.
#[derive(Debug, Clone, Default)]
pub(super) struct QueueState {
    pub claims: BTreeMap<Name, Claim>,
    decided: VecDeque<(Name, u32)>,
    /// None: no limit (tests; a node with the queue off never gets offers).
    capacity: Option<Capacity>,
    /// Bumped by every change of the durable part: `Core::handle` saves when it moved, without
    /// building and comparing memos on every event.
    pub changes: u64,
}

impl QueueState {
    fn decide(&mut self, id: &Name, attempt: u32) {
        self.changes += 1;
        if self.decided.len() >= MAX_REMEMBERED {
            self.decided.pop_front();
        }
        self.decided.push_back((id.clone(), attempt));
    }

    pub fn memo(&self) -> QueueMemo {
        QueueMemo {
            claims: self.claims.values().map(|c| c.req.clone()).collect(),
            decided: self.decided.iter().cloned().collect(),
        }
    }
}

/// CPU units and MiB a task reserves: its task-level figures, else its containers' (memory
/// reservation before the hard limit), as ECS places tasks.
pub fn reservation(def: &TaskDefinition) -> (u64, u64) {
    let cpu = def.cpu.map_or_else(
        || {
            def.containers
                .iter()
                .filter_map(|c| c.cpu)
                .map(u64::from)
                .sum()
        },
        u64::from,
    );
    let mem = def.memory_mib.map_or_else(
        || {
            def.containers
                .iter()
                .filter_map(|c| c.memory_reservation_mib.or(c.memory_mib))
                .map(u64::from)
                .sum()
        },
        u64::from,
    );
    (cpu, mem)
}

impl Core {
    /// Sets what queued copies may use (without it, any copy fits).
    pub fn with_queue_capacity(mut self, capacity: Capacity) -> Core {
        self.queue.capacity = Some(capacity);
        self
    }

    /// Takes back the queue's durable part (before `Event::Restored`, which starts the claimed
    /// copies with everything else). Claims are checked again as offers are.
    pub fn restore_queue(&mut self, memo: QueueMemo, out: &mut Vec<Action>) {
        self.queue.decided = memo.decided.into_iter().collect();
        let mut dropped = false;
        for req in memo.claims {
            if let Err(reason) = self
                .trust
                .verify_run(&req)
                .and_then(|()| self.policy.check(&req.task))
            {
                out.push(Action::Event(EventBody::QueueFinished {
                    request: req.id.clone(),
                    ok: false,
                    exit: None,
                    reason: format!("saved claim not run: {reason}"),
                }));
                self.queue.decide(&req.id, req.attempt);
                dropped = true;
                continue;
            }
            self.queue.claims.insert(req.id.clone(), Claim::new(req));
        }
        if dropped {
            out.push(Action::SaveQueue(self.queue.memo())); // what was dropped stays dropped
        }
    }

    /// The claimed copies as desired tasks.
    pub(super) fn claimed_defs(&self) -> impl Iterator<Item = &TaskDefinition> {
        self.queue.claims.values().map(|c| &c.def)
    }

    pub(super) fn queue_memo(&self) -> QueueMemo {
        self.queue.memo()
    }

    /// An offer from the queue: claim it, hand it back, or refuse it. The shell acknowledges
    /// the offer to the broker after the actions are performed (saves first).
    pub(super) fn on_offer(
        &mut self,
        payload: &[u8],
        images: &Catalog,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let req = match decode_as(Kind::RunRequest, payload) {
            Ok(Message::RunRequest(r)) => r,
            Ok(other) => {
                return out.push(Action::Event(EventBody::QueueRejected {
                    request: None,
                    attempt: 0,
                    reason: format!("unexpected {} message", other.kind().name()),
                }))
            }
            Err(e) => {
                return out.push(Action::Event(EventBody::QueueRejected {
                    request: None,
                    attempt: 0,
                    reason: e.to_string(),
                }))
            }
        };
        let (id, attempt) = (req.id.clone(), req.attempt);
        if self.queue.claims.contains_key(&id)
            || self.queue.decided.contains(&(id.clone(), attempt))
        {
            return; // delivered again (after a restart): decided before
        }
        // Wrong everywhere: refused. Wrong only here: handed back for another node.
        let refusal = if req.cluster != self.cfg.cluster {
            Some(format!(
                "request is for cluster {}, this node is in {}",
                req.cluster, self.cfg.cluster
            ))
        } else {
            self.trust.verify_run(&req).err()
        };
        if let Some(reason) = refusal {
            self.queue.decide(&id, attempt);
            return out.push(Action::Event(EventBody::QueueRejected {
                request: Some(id),
                attempt,
                reason,
            }));
        }
        if let Some(reason) = self.no_room_for(&req, images) {
            self.queue.decide(&id, attempt);
            return out.push(Action::Event(EventBody::QueueHandedBack {
                request: id,
                attempt,
                reason,
            }));
        }
        out.push(Action::Event(EventBody::QueueClaimed {
            request: id.clone(),
            attempt,
        }));
        self.queue.claims.insert(id.clone(), Claim::new(req));
        self.queue.changes += 1;
        let def = self.queue.claims.get(&id).map(|c| Arc::new(c.def.clone()));
        if let Some(def) = def {
            self.start_new(def, now, out);
        }
    }

    /// Why this node can't take the copy now, if it can't.
    fn no_room_for(&self, req: &RunRequest, images: &Catalog) -> Option<String> {
        if self.shutting_down {
            return Some("the agent is shutting down".into());
        }
        if self.drain.is_some() {
            return Some("the node is draining".into());
        }
        if self.desired().contains_key(&req.id) || self.tasks.contains_key(&req.id) {
            return Some(format!("a task named {} runs here already", req.id));
        }
        if let Err(reason) = self.policy.check(&req.task) {
            return Some(reason);
        }
        for c in &req.task.containers {
            if let Err(reason) = self.image_ok(&c.image, images) {
                return Some(format!("container {}: {reason}", c.name));
            }
        }
        let cap = self.queue.capacity?;
        let running = self
            .queue
            .claims
            .keys()
            .filter(|n| self.tasks.get(*n).is_some_and(|t| !t.is_done()))
            .count();
        if running >= cap.max_tasks as usize {
            return Some(format!(
                "no room: {running} queued tasks run here (max_tasks = {})",
                cap.max_tasks
            ));
        }
        let (used_cpu, used_mem) = self
            .tasks
            .values()
            .filter(|t| !t.is_done())
            .map(|t| reservation(&t.def))
            .fold((0, 0), |(c, m), (c2, m2)| (c + c2, m + m2));
        let (cpu, mem) = reservation(&req.task);
        let free_cpu = cap.cpu_units.saturating_sub(used_cpu);
        let free_mem = cap.memory_mib.saturating_sub(used_mem);
        if cpu > free_cpu || mem > free_mem {
            return Some(format!(
                "no room: needs {cpu} CPU units and {mem} MiB, {free_cpu} CPU units and {free_mem} MiB free"
            ));
        }
        None
    }

    /// Copies whose run ended: reported and forgotten (their id stays remembered).
    pub(super) fn settle_claims(&mut self, now: Time, out: &mut Vec<Action>) {
        let ended: Vec<Name> = self
            .queue
            .claims
            .keys()
            .filter(|n| {
                self.tasks.get(*n).is_some_and(|t| {
                    t.is_done() && !t.drained && t.stop_reason != Some(StopReason::Shutdown)
                })
            })
            .cloned()
            .collect();
        for id in ended {
            let Some(claim) = self.queue.claims.remove(&id) else {
                continue;
            };
            self.queue.decide(&id, claim.req.attempt);
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            let batch = batch_of(&t.def);
            let exit = t.last_exit;
            let ok = t.phase == Phase::Stopped
                && t.failure.is_none()
                && match batch {
                    Some(b) => t.batch_done >= b.completions,
                    None => {
                        t.stop_reason == Some(StopReason::EssentialExited)
                            && exit.is_some_and(|e| e.code == 0)
                    }
                };
            let reason = match (&t.failure, exit, t.stop_reason) {
                (Some(f), _, _) => format!("failed: {f}"),
                (None, _, Some(r)) if r != StopReason::EssentialExited => {
                    format!("stopped: {r:?}")
                }
                (None, Some(e), _) => crate::display::exit(&e),
                (None, None, _) => "ended".into(),
            };
            out.push(Action::Event(EventBody::QueueFinished {
                request: id.clone(),
                ok,
                exit,
                reason,
            }));
            // No longer desired: the finished record goes too.
            self.stop(&id, StopReason::Removed, now, out);
        }
    }
}

impl super::TaskRec {
    /// Ran and is not running, starting or going to restart.
    fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Stopped | Phase::Failed) && !self.start_pending
    }
}
