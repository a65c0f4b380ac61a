//! The fleet as the console sees it, from the nodes' retained status: which nodes a command is
//! about (`--state`, `--selector`, `--nodes`), in which order (`--sort`, `--reverse`), and how a
//! deployment to many nodes is going. Pure: the commands in `ctl.rs` and `top.rs` feed it what
//! arrives from the broker.

use std::collections::{BTreeMap, BTreeSet};

use skiff_proto::{Event, EventBody, Name, NodeState, Scope, Status, TaskState};

use crate::labels::Selector;

/// Which nodes to show or target.
#[derive(Debug, Clone, Default)]
pub struct NodeFilter {
    /// Empty: every state.
    pub states: Vec<NodeState>,
    pub selector: Option<Selector>,
}

impl NodeFilter {
    pub fn keep(&self, st: &Status) -> bool {
        (self.states.is_empty() || self.states.contains(&st.state))
            && self.selector.as_ref().is_none_or(|s| s.matches(&st.labels))
    }
}

/// `--state online,draining`: node states, comma-separated.
pub fn parse_states(s: &str) -> Result<Vec<NodeState>, String> {
    s.split(',')
        .map(|w| match w.trim().to_ascii_lowercase().as_str() {
            "online" => Ok(NodeState::Online),
            "offline" => Ok(NodeState::Offline),
            "draining" => Ok(NodeState::Draining),
            "drained" => Ok(NodeState::Drained),
            other => Err(format!(
                "--state {other:?}: expected online, offline, draining or drained"
            )),
        })
        .collect()
}

/// `--sort`: the order nodes are listed in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortKey {
    /// By node name.
    #[default]
    Name,
    /// Longest silent first (oldest status report).
    Seen,
    /// Busiest CPU first.
    Cpu,
    /// Most memory in use first.
    Mem,
    /// Most running tasks first.
    Tasks,
}

impl std::str::FromStr for SortKey {
    type Err = String;

    fn from_str(s: &str) -> Result<SortKey, String> {
        match s {
            "name" => Ok(SortKey::Name),
            "seen" => Ok(SortKey::Seen),
            "cpu" => Ok(SortKey::Cpu),
            "mem" => Ok(SortKey::Mem),
            "tasks" => Ok(SortKey::Tasks),
            other => Err(format!(
                "--sort {other:?}: expected name, seen, cpu, mem or tasks"
            )),
        }
    }
}

/// Tasks the node runs (pending, running or stopping) and all it has.
pub fn task_counts(st: &Status) -> (usize, usize) {
    let active = st
        .tasks
        .iter()
        .filter(|t| {
            matches!(
                t.state,
                TaskState::Pending | TaskState::Running | TaskState::Stopping
            )
        })
        .count();
    (active, st.tasks.len())
}

/// Sorts by `key` (ties by name); `reverse` flips the whole order.
pub fn sort_nodes(nodes: &mut [Status], key: SortKey, reverse: bool) {
    nodes.sort_by(|a, b| {
        let by = match key {
            SortKey::Name => std::cmp::Ordering::Equal,
            SortKey::Seen => a.at_ms.cmp(&b.at_ms),
            SortKey::Cpu => b.resources.cpu_pct.total_cmp(&a.resources.cpu_pct),
            SortKey::Mem => b.resources.mem_used_bytes.cmp(&a.resources.mem_used_bytes),
            SortKey::Tasks => task_counts(b).0.cmp(&task_counts(a).0),
        };
        let order = by.then_with(|| a.node.cmp(&b.node));
        if reverse {
            order.reverse()
        } else {
            order
        }
    });
}

/// One node's answer to a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Rejected(String),
}

/// Which expected nodes applied or rejected a desired-state version, from their
/// `DesiredApplied` / `DesiredRejected` events and from the versions in their status.
#[derive(Debug, Clone)]
pub struct Progress {
    pub version: u64,
    /// Which document: the cluster's (status field `cluster_version`) or the nodes' own
    /// (`node_version`). `None`: events of either count, statuses are not looked at.
    pub scope: Option<Scope>,
    pub expect: BTreeSet<Name>,
    pub outcome: BTreeMap<Name, Outcome>,
}

impl Progress {
    pub fn new(version: u64, scope: Option<Scope>, expect: BTreeSet<Name>) -> Progress {
        Progress {
            version,
            scope,
            expect,
            outcome: BTreeMap::new(),
        }
    }

    /// A node's status: applied once it reports the version (or a newer one).
    pub fn status(&mut self, st: &Status) -> Option<(Name, Outcome)> {
        let reported = match self.scope? {
            Scope::Cluster => st.cluster_version,
            Scope::Node => st.node_version,
        };
        if reported >= self.version && st.state != NodeState::Offline {
            return self.record(&st.node, Outcome::Applied);
        }
        None
    }

    /// A node's `DesiredApplied` / `DesiredRejected` event for the version.
    pub fn event(&mut self, ev: &Event) -> Option<(Name, Outcome)> {
        let (scope, outcome) = match &ev.body {
            EventBody::DesiredApplied { scope, version } if *version == self.version => {
                (*scope, Outcome::Applied)
            }
            EventBody::DesiredRejected {
                scope,
                version: Some(v),
                reason,
            } if *v == self.version => (*scope, Outcome::Rejected(reason.clone())),
            _ => return None,
        };
        if self.scope.is_some_and(|s| s != scope) {
            return None;
        }
        self.record(&ev.node, outcome)
    }

    /// A node's answer; the first answer per node counts.
    pub fn record(&mut self, node: &Name, outcome: Outcome) -> Option<(Name, Outcome)> {
        if !self.expect.contains(node) || self.outcome.contains_key(node) {
            return None;
        }
        self.outcome.insert(node.clone(), outcome.clone());
        Some((node.clone(), outcome))
    }

    pub fn applied(&self) -> usize {
        self.outcome
            .values()
            .filter(|o| **o == Outcome::Applied)
            .count()
    }

    pub fn rejected(&self) -> impl Iterator<Item = (&Name, &str)> {
        self.outcome.iter().filter_map(|(n, o)| match o {
            Outcome::Rejected(r) => Some((n, r.as_str())),
            Outcome::Applied => None,
        })
    }

    pub fn done(&self) -> bool {
        self.outcome.len() >= self.expect.len()
    }

    /// Expected nodes that have not answered.
    pub fn waiting(&self) -> impl Iterator<Item = &Name> {
        self.expect
            .iter()
            .filter(|n| !self.outcome.contains_key(*n))
    }

    /// `3/5 nodes applied version 7` (`, 1 rejected` when some did).
    pub fn line(&self) -> String {
        let rejected = self.rejected().count();
        let mut line = format!(
            "{}/{} nodes applied version {}",
            self.applied(),
            self.expect.len(),
            self.version
        );
        if rejected > 0 {
            line.push_str(&format!(", {rejected} rejected"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::{Health, NodeResources, TaskStatus};

    fn n(s: &str) -> Name {
        s.parse().expect("name")
    }

    fn node(name: &str, state: NodeState, at_ms: u64, cpu: f32, mem: u64, tasks: usize) -> Status {
        Status {
            node: n(name),
            state,
            agent_version: "0.1.0".into(),
            cluster_version: 0,
            node_version: 0,
            at_ms,
            tasks: (0..tasks)
                .map(|i| TaskStatus {
                    name: n(&format!("t{i}")),
                    revision: 1,
                    state: TaskState::Running,
                    restarts: 0,
                    last_exit: None,
                    containers: vec![],
                    service: None,
                    health: Health::Unknown,
                    endpoints: vec![],
                })
                .collect(),
            services: vec![],
            labels: [("site".to_string(), format!("s{}", tasks % 2))].into(),
            resources: NodeResources {
                cpus: 4,
                mem_total_bytes: 1 << 30,
                cpu_pct: cpu,
                mem_used_bytes: mem,
            },
        }
    }

    fn fleet() -> Vec<Status> {
        vec![
            node("b", NodeState::Online, 300, 50.0, 10, 2),
            node("a", NodeState::Online, 100, 50.0, 30, 1),
            node("d", NodeState::Offline, 50, 0.0, 0, 0),
            node("c", NodeState::Draining, 200, 90.0, 20, 3),
        ]
    }

    fn names(nodes: &[Status]) -> Vec<&str> {
        nodes.iter().map(|s| s.node.as_str()).collect()
    }

    #[test]
    fn sorting_by_each_key_with_name_as_tie_break() {
        let mut f = fleet();
        for (key, want) in [
            (SortKey::Name, ["a", "b", "c", "d"]),
            (SortKey::Seen, ["d", "a", "c", "b"]),
            (SortKey::Cpu, ["c", "a", "b", "d"]),
            (SortKey::Mem, ["a", "c", "b", "d"]),
            (SortKey::Tasks, ["c", "b", "a", "d"]),
        ] {
            sort_nodes(&mut f, key, false);
            assert_eq!(names(&f), want, "{key:?}");
            sort_nodes(&mut f, key, true);
            let mut reversed = want;
            reversed.reverse();
            assert_eq!(names(&f), reversed, "{key:?} reversed");
        }
        assert_eq!("cpu".parse::<SortKey>(), Ok(SortKey::Cpu));
        assert!("size"
            .parse::<SortKey>()
            .expect_err("unknown")
            .contains("expected name, seen, cpu, mem or tasks"));
    }

    #[test]
    fn filter_by_state_and_selector() {
        let f = fleet();
        let keep = |filter: &NodeFilter| -> Vec<&str> {
            f.iter()
                .filter(|s| filter.keep(s))
                .map(|s| s.node.as_str())
                .collect()
        };
        assert_eq!(keep(&NodeFilter::default()), ["b", "a", "d", "c"]);
        let states = parse_states("online, Draining").expect("states");
        assert_eq!(
            keep(&NodeFilter {
                states: states.clone(),
                selector: None
            }),
            ["b", "a", "c"]
        );
        let selector = Some("site=s1".parse().expect("selector"));
        assert_eq!(
            keep(&NodeFilter {
                states: vec![],
                selector: selector.clone()
            }),
            ["a", "c"]
        );
        assert_eq!(keep(&NodeFilter { states, selector }), ["a", "c"]);
        assert!(parse_states("online,gone")
            .expect_err("unknown")
            .contains("\"gone\""));
    }

    #[test]
    fn progress_counts_events_and_status_versions_once_per_expected_node() {
        let expect: BTreeSet<Name> = [n("a"), n("b"), n("c")].into();
        let mut p = Progress::new(7, Some(Scope::Node), expect);
        assert_eq!(p.line(), "0/3 nodes applied version 7");
        // An older version in a status is not an answer; neither is another node.
        let mut st = node("a", NodeState::Online, 0, 0.0, 0, 0);
        st.node_version = 6;
        assert!(p.status(&st).is_none());
        assert!(p.record(&n("x"), Outcome::Applied).is_none());
        st.node_version = 7;
        assert_eq!(p.status(&st), Some((n("a"), Outcome::Applied)));
        // The event after the status changes nothing.
        assert!(p
            .record(&n("a"), Outcome::Rejected("late".into()))
            .is_none());
        // A cluster version does not count for a node document.
        let mut b = node("b", NodeState::Online, 0, 0.0, 0, 0);
        b.cluster_version = 9;
        assert!(p.status(&b).is_none());
        let ev = |node: &str, scope, body| Event {
            node: n(node),
            seq: 1,
            at_ms: 0,
            body: match body {
                Some(reason) => EventBody::DesiredRejected {
                    scope,
                    version: Some(7),
                    reason,
                },
                None => EventBody::DesiredApplied { scope, version: 7 },
            },
        };
        // The cluster document's version 7 is another document.
        assert!(p.event(&ev("b", Scope::Cluster, None)).is_none());
        assert_eq!(
            p.event(&ev("b", Scope::Node, Some("image missing".into()))),
            Some((n("b"), Outcome::Rejected("image missing".into())))
        );
        assert_eq!(p.line(), "1/3 nodes applied version 7, 1 rejected");
        assert!(!p.done());
        assert_eq!(p.waiting().collect::<Vec<_>>(), [&n("c")]);
        assert!(p.event(&ev("c", Scope::Node, None)).is_some());
        assert!(p.done());
        assert_eq!(
            p.rejected().collect::<Vec<_>>(),
            [(&n("b"), "image missing")]
        );
    }
}
