//! Task endpoints: where a running task is reached (its port mappings with the host ports and
//! address it got: for a bridge task a host port on the node and its address on the bridge, for
//! an awsvpc task host port 0 and its own LAN address, reached at the container port; for a
//! host task the container port on the node's addresses and no address). The shells report
//! them after preparing a task ([`Event::TaskNetwork`]);
//! the status shows them while the task runs, and an `EndpointsChanged` event goes out whenever
//! what the status shows for a task changes (it starts running, it stops, it is replaced).

use std::collections::BTreeMap;

use skiff_proto::{Endpoint, EventBody, Name, Status};

use super::{Action, Core};

impl Core {
    /// The endpoints of a task's starting run, as the shells allocated them.
    pub(super) fn on_task_network(&mut self, task: &Name, endpoints: Vec<Endpoint>) {
        if let Some(t) = self.tasks.get_mut(task).filter(|t| t.start_pending) {
            t.endpoints = endpoints;
        }
    }
}

/// What the status shows of a task's endpoints: only a running task is reachable.
pub(super) fn shown(running: bool, endpoints: &[Endpoint]) -> Vec<Endpoint> {
    if running {
        endpoints.to_vec()
    } else {
        Vec::new()
    }
}

/// `EndpointsChanged` for every task whose reported endpoints differ between the status
/// `before` an event and now (a task that is gone reports none).
pub(super) fn changes(core: &Core, before: &Status) -> Vec<Action> {
    let had = before.tasks.iter().any(|t| !t.endpoints.is_empty());
    if !had && core.tasks.values().all(|t| t.endpoints.is_empty()) {
        return Vec::new();
    }
    let after = core.status_key();
    let of = |s: &Status| -> BTreeMap<Name, Vec<Endpoint>> {
        s.tasks
            .iter()
            .filter(|t| !t.endpoints.is_empty())
            .map(|t| (t.name.clone(), t.endpoints.clone()))
            .collect()
    };
    let (old, new) = (of(before), of(&after));
    let mut out = Vec::new();
    for (task, endpoints) in &new {
        if old.get(task) != Some(endpoints) {
            out.push(Action::Event(EventBody::EndpointsChanged {
                task: task.clone(),
                endpoints: endpoints.clone(),
            }));
        }
    }
    for task in old.keys().filter(|t| !new.contains_key(*t)) {
        out.push(Action::Event(EventBody::EndpointsChanged {
            task: task.clone(),
            endpoints: Vec::new(),
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;
    use skiff_proto::{Endpoint, NetworkMode, PortMapping, Protocol};

    fn web() -> TaskDefinition {
        let mut t = task("web", RestartPolicy::Never);
        t.network_mode = NetworkMode::Bridge;
        t.containers[0].port_mappings = vec![PortMapping {
            container_port: 8080,
            host_port: None,
            protocol: Protocol::Tcp,
        }];
        t
    }

    fn endpoint(host_port: u16) -> Endpoint {
        Endpoint {
            container: n("main"),
            container_port: 8080,
            host_port,
            protocol: Protocol::Tcp,
            address: "10.88.0.2".into(),
        }
    }

    fn changed(actions: &[Action]) -> Vec<(String, Vec<Endpoint>)> {
        events(actions)
            .into_iter()
            .filter_map(|e| match e {
                EventBody::EndpointsChanged { task, endpoints } => {
                    Some((task.to_string(), endpoints))
                }
                _ => None,
            })
            .collect()
    }

    fn shown_in(actions: &[Action]) -> Option<Vec<Endpoint>> {
        last_status(actions).map(|s| {
            s.tasks
                .iter()
                .find(|t| t.name == n("web"))
                .map(|t| t.endpoints.clone())
                .unwrap_or_default()
        })
    }

    #[test]
    fn endpoints_are_reported_while_the_task_runs() {
        let mut c = core();
        let a = apply(&mut c, 1, vec![web()], at(0));
        assert_eq!(starts(&a), vec!["web"]);
        // Reported by the shells after preparing: not reachable before the task runs.
        let a = c.handle(
            Event::TaskNetwork {
                task: n("web"),
                endpoints: vec![endpoint(49153)],
            },
            at(1),
        );
        assert!(changed(&a).is_empty());
        let a = run(&mut c, "web", at(2));
        assert_eq!(
            changed(&a),
            vec![("web".to_string(), vec![endpoint(49153)])]
        );
        assert_eq!(shown_in(&a), Some(vec![endpoint(49153)]));
        assert_eq!(c.status(at(3)).tasks[0].endpoints, vec![endpoint(49153)]);

        // The essential container exits: stopping, nothing reachable any more.
        let a = exit(&mut c, "web", "main", 0, at(4));
        assert_eq!(changed(&a), vec![("web".to_string(), vec![])]);
        assert!(c.status(at(5)).tasks[0].endpoints.is_empty());
        let a = removed(&mut c, "web", at(6));
        assert!(changed(&a).is_empty());
    }

    #[test]
    fn an_awsvpc_task_publishes_its_own_address_and_container_ports() {
        let mut c = core();
        let mut def = web();
        def.network_mode = NetworkMode::Awsvpc;
        apply(&mut c, 1, vec![def], at(0));
        let own = Endpoint {
            host_port: 0,
            address: "192.168.1.200".into(),
            ..endpoint(0)
        };
        c.handle(
            Event::TaskNetwork {
                task: n("web"),
                endpoints: vec![own.clone()],
            },
            at(1),
        );
        let a = run(&mut c, "web", at(2));
        assert_eq!(changed(&a), vec![("web".to_string(), vec![own.clone()])]);
        assert_eq!(c.status(at(3)).tasks[0].endpoints, vec![own]);
        let a = exit(&mut c, "web", "main", 0, at(4));
        assert_eq!(changed(&a), vec![("web".to_string(), vec![])]);
    }

    #[test]
    fn a_late_report_of_an_old_start_is_ignored() {
        let mut c = core();
        apply(&mut c, 1, vec![web()], at(0));
        run(&mut c, "web", at(1));
        let a = c.handle(
            Event::TaskNetwork {
                task: n("web"),
                endpoints: vec![endpoint(50000)],
            },
            at(2),
        );
        assert!(changed(&a).is_empty());
        assert!(c.status(at(3)).tasks[0].endpoints.is_empty());
    }

    #[test]
    fn a_restart_reports_the_new_endpoints() {
        let mut c = core();
        let mut def = web();
        def.restart_policy = RestartPolicy::Always;
        apply(&mut c, 1, vec![def], at(0));
        c.handle(
            Event::TaskNetwork {
                task: n("web"),
                endpoints: vec![endpoint(49153)],
            },
            at(1),
        );
        run(&mut c, "web", at(2));
        exit(&mut c, "web", "main", 1, at(3));
        removed(&mut c, "web", at(4));
        // Backoff, then a new start with another host port.
        let a = c.handle(Event::Tick, at(10_000));
        assert_eq!(starts(&a), vec!["web"]);
        c.handle(
            Event::TaskNetwork {
                task: n("web"),
                endpoints: vec![endpoint(49154)],
            },
            at(10_001),
        );
        let a = run(&mut c, "web", at(10_002));
        assert_eq!(
            changed(&a),
            vec![("web".to_string(), vec![endpoint(49154)])]
        );
    }
}
