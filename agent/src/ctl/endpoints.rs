//! `skiff ctl endpoints SERVICE_OR_TASK`: where a service's (or a task's) running copies are
//! reached, across the cluster's nodes, from their retained status. A bridge task is reached
//! at its host port on the node's addresses (its address is on the node's bridge), an awsvpc
//! task at its own address and container port (host port 0: nothing is mapped), a host task
//! at its container port on the node's addresses (no address of its own).

use skiff_proto::{Endpoint, Name, Status};

use super::{CtlError, Target};

/// One endpoint of one task on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub node: Name,
    pub task: Name,
    pub service: Option<Name>,
    pub endpoint: Endpoint,
}

/// The endpoints of the tasks named `name` or belonging to the service `name`, node by node;
/// `None` when no node reports such a task.
pub(crate) fn rows(nodes: &[Status], name: &Name) -> Option<Vec<Row>> {
    let mut found = false;
    let mut out = Vec::new();
    for st in nodes {
        for t in &st.tasks {
            if t.name != *name && t.service.as_ref() != Some(name) {
                continue;
            }
            found = true;
            out.extend(t.endpoints.iter().map(|e| Row {
                node: st.node.clone(),
                task: t.name.clone(),
                service: t.service.clone(),
                endpoint: e.clone(),
            }));
        }
    }
    found.then_some(out)
}

/// The rows as a table.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut lines = vec![[
        "NODE".to_owned(),
        "TASK".to_owned(),
        "CONTAINER".to_owned(),
        "PORT".to_owned(),
        "HOST PORT".to_owned(),
        "ADDRESS".to_owned(),
    ]];
    for r in rows {
        let e = &r.endpoint;
        lines.push([
            r.node.to_string(),
            r.task.to_string(),
            e.container.to_string(),
            format!(
                "{}/{}",
                e.container_port,
                crate::ecs::protocol_str(e.protocol)
            ),
            match e.host_port {
                0 => "-".to_owned(),
                p => p.to_string(),
            },
            if e.address.is_empty() {
                "(node)".to_owned()
            } else {
                e.address.clone()
            },
        ]);
    }
    let mut widths = [0usize; 6];
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `skiff ctl endpoints NAME [--node N] [--json]`.
pub async fn endpoints(
    target: &Target,
    name: Name,
    node: Option<Name>,
    json: bool,
) -> Result<(), CtlError> {
    let nodes = super::node_statuses(target, node.as_ref()).await?;
    let Some(rows) = rows(&nodes, &name) else {
        return Err(CtlError::Failed(format!(
            "no node of cluster {} reports a task or service named {name}",
            target.cluster
        )));
    };
    if json {
        for r in &rows {
            let line = serde_json::json!({
                "node": r.node,
                "task": r.task,
                "service": r.service,
                "endpoint": r.endpoint,
            });
            println!("{line}");
        }
    } else if rows.is_empty() {
        println!("{name}: no endpoints (not running, or no portMappings)");
    } else {
        print!("{}", table(&rows));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::{Health, NodeState, Protocol, TaskState, TaskStatus};

    fn n(s: &str) -> Name {
        s.parse().expect("name")
    }

    fn ep(port: u16, last: u8) -> Endpoint {
        Endpoint {
            container: n("web"),
            container_port: 8080,
            host_port: port,
            protocol: Protocol::Tcp,
            address: format!("10.88.0.{last}"),
        }
    }

    fn node(name: &str, tasks: Vec<(&str, Option<&str>, Vec<Endpoint>)>) -> Status {
        Status {
            node: n(name),
            state: NodeState::Online,
            agent_version: "0".into(),
            cluster_version: 0,
            node_version: 0,
            at_ms: 0,
            tasks: tasks
                .into_iter()
                .map(|(t, svc, endpoints)| TaskStatus {
                    name: n(t),
                    revision: 1,
                    state: TaskState::Running,
                    restarts: 0,
                    last_exit: None,
                    containers: vec![],
                    service: svc.map(n),
                    health: Health::Unknown,
                    endpoints,
                })
                .collect(),
            services: vec![],
            labels: Default::default(),
            resources: Default::default(),
        }
    }

    #[test]
    fn a_service_lists_its_tasks_on_every_node() {
        let nodes = vec![
            node(
                "pi-1",
                vec![
                    ("web.1", Some("web"), vec![ep(49153, 2)]),
                    ("web.2", Some("web"), vec![ep(49154, 3)]),
                    ("db", None, vec![]),
                ],
            ),
            node("pi-2", vec![("web.1", Some("web"), vec![ep(49153, 2)])]),
        ];
        let r = rows(&nodes, &n("web")).expect("found");
        assert_eq!(r.len(), 3);
        assert_eq!(
            table(&r),
            "NODE  TASK   CONTAINER  PORT      HOST PORT  ADDRESS\n\
             pi-1  web.1  web        8080/tcp  49153      10.88.0.2\n\
             pi-1  web.2  web        8080/tcp  49154      10.88.0.3\n\
             pi-2  web.1  web        8080/tcp  49153      10.88.0.2\n"
        );
        // One task by its name.
        assert_eq!(rows(&nodes, &n("web.2")).expect("found").len(), 1);
        // awsvpc: its own address, nothing mapped; host: the node's addresses.
        let own = Endpoint {
            host_port: 0,
            container_port: 80,
            address: "192.168.1.200".into(),
            ..ep(0, 0)
        };
        let host = Endpoint {
            host_port: 9100,
            container_port: 9100,
            address: String::new(),
            ..ep(0, 0)
        };
        let pi3 = vec![node(
            "pi-3",
            vec![("lan", None, vec![own]), ("exporter", None, vec![host])],
        )];
        let mut r = rows(&pi3, &n("lan")).expect("found");
        r.extend(rows(&pi3, &n("exporter")).expect("found"));
        assert_eq!(
            table(&r),
            "NODE  TASK      CONTAINER  PORT      HOST PORT  ADDRESS\n\
             pi-3  lan       web        80/tcp    -          192.168.1.200\n\
             pi-3  exporter  web        9100/tcp  9100       (node)\n"
        );
        // A task without endpoints is found, with none.
        assert_eq!(rows(&nodes, &n("db")), Some(vec![]));
        assert_eq!(rows(&nodes, &n("nope")), None);
    }
}
