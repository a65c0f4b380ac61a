//! `skiff ctl` as a fleet console: three agents with different `[labels]`; `ctl nodes
//! --selector` lists exactly the matching ones, `ctl deploy --selector` reaches exactly them
//! (the others' desired topics stay empty and their status versions don't move), rejections
//! are named with their reasons, and `ctl top` prints plain frames when stdout is not a
//! terminal.

use std::collections::BTreeSet;
use std::time::Duration;

use skiff_proto::codec::Message;
use skiff_proto::{NodeState, Status, TaskState};

use crate::harness::{task_file, wait_for, Agent, Broker, Sub, SKIFF};
use crate::require_env;

const T: Duration = Duration::from_secs(30);
const CLUSTER: &str = "fleet";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn shell_task(family: &str, extra: &str) -> String {
    format!(
        r#"{{"family":"{family}","containerDefinitions":[{{"name":"main","image":"busybox","entryPoint":["sh","-c"],"command":["sleep 3600"]{extra}}}]}}"#
    )
}

/// `skiff ctl nodes --json ARGS`: the statuses listed.
fn nodes_json(ctl: &Agent, broker: &Broker, args: &[&str]) -> Vec<Status> {
    let mut all = vec!["nodes", "--json"];
    all.extend_from_slice(args);
    let out = ctl.ctl(broker, &all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn names(statuses: &[Status]) -> BTreeSet<String> {
    statuses.iter().map(|s| s.node.to_string()).collect()
}

/// The desired-state document retained for `node`, as `skiff ctl desired --node` prints it.
fn node_desired(ctl: &Agent, broker: &Broker, node: &str) -> Option<serde_json::Value> {
    let out = ctl.ctl(broker, &["desired", "--node", node]);
    if !out.status.success() {
        assert!(
            text(&out.stderr).contains("no desired state on"),
            "{}",
            text(&out.stderr)
        );
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("desired JSON"))
}

#[test]
fn deploy_and_nodes_by_selector_reach_exactly_the_labelled_nodes() {
    require_env!();
    let broker = Broker::start();
    let mut sub = Sub::start(&broker, &[&format!("skiff/v1/{CLUSTER}/nodes/+/status")]);
    let labels =
        |site: &str, tier: &str| format!("[labels]\nsite = \"{site}\"\ntier = \"{tier}\"\n");
    let a = Agent::start_with(&broker, CLUSTER, "fl-a", &labels("north", "edge"));
    let b = Agent::start_with(&broker, CLUSTER, "fl-b", &labels("north", "core"));
    let c = Agent::start_with(&broker, CLUSTER, "fl-c", &labels("south", "edge"));
    for agent in [&a, &b, &c] {
        let node = agent.node.clone();
        sub.wait(&format!("{node} online"), T, |_, m| match m {
            Message::Status(s) if s.node.as_str() == node && s.state == NodeState::Online => {
                Some(())
            }
            _ => None,
        });
    }

    // The status carries the labels (arch defaulted from the build) and the node's size.
    let all = nodes_json(&a, &broker, &[]);
    assert_eq!(
        names(&all),
        ["fl-a", "fl-b", "fl-c"].map(String::from).into()
    );
    let fl_a = all
        .iter()
        .find(|s| s.node.as_str() == "fl-a")
        .expect("fl-a");
    assert_eq!(fl_a.labels.get("site").map(String::as_str), Some("north"));
    assert_eq!(fl_a.labels.get("tier").map(String::as_str), Some("edge"));
    assert_eq!(
        fl_a.labels.get("arch").map(String::as_str),
        Some(skiff_agent::labels::build_arch())
    );
    assert!(fl_a.resources.cpus > 0, "{:?}", fl_a.resources);
    assert!(fl_a.resources.mem_total_bytes > 0, "{:?}", fl_a.resources);

    // Selectors: every term must match, exactly.
    let north = nodes_json(&a, &broker, &["--selector", "site=north"]);
    assert_eq!(names(&north), ["fl-a", "fl-b"].map(String::from).into());
    let edge_north = nodes_json(&a, &broker, &["--selector", "tier=edge,site=north"]);
    assert_eq!(names(&edge_north), ["fl-a"].map(String::from).into());
    assert!(nodes_json(&a, &broker, &["--selector", "site=nor"]).is_empty());
    assert!(nodes_json(&a, &broker, &["--state", "offline,draining"]).is_empty());
    let sorted = nodes_json(&a, &broker, &["--sort", "name", "--reverse"]);
    let order: Vec<&str> = sorted.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(order, ["fl-c", "fl-b", "fl-a"]);
    let first = nodes_json(&a, &broker, &["--sort", "name", "--limit", "2"]);
    assert_eq!(names(&first), ["fl-a", "fl-b"].map(String::from).into());
    let bad = a.ctl(&broker, &["nodes", "--selector", "site"]);
    assert_eq!(bad.status.code(), Some(65), "{}", text(&bad.stderr));
    assert!(
        text(&bad.stderr).contains("expected key=value"),
        "{}",
        text(&bad.stderr)
    );
    let table = a.ctl(&broker, &["nodes", "--selector", "site=south"]);
    let table = text(&table.stdout);
    assert!(
        table.lines().count() == 2 && table.contains("fl-c") && table.contains("site=south"),
        "{table}"
    );

    // Deploy to the north: fl-a and fl-b get their own document, fl-c nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = task_file(dir.path(), "hello", &shell_task("hello", ""));
    let file = file.to_str().expect("utf-8 path");
    let out = a.ctl(
        &broker,
        &[
            "deploy",
            file,
            "--selector",
            "site=north",
            "--timeout",
            "60",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("to 2 node(s): fl-a, fl-b"), "{stdout}");
    let version = stdout
        .lines()
        .find_map(|l| l.strip_prefix("2/2 nodes applied version "))
        .unwrap_or_else(|| panic!("no final progress line in {stdout}"))
        .trim()
        .parse::<u64>()
        .expect("version");
    for node in ["fl-a", "fl-b"] {
        let doc = node_desired(&a, &broker, node).expect("a document for a selected node");
        assert_eq!(doc["version"], version, "{doc}");
        assert_eq!(doc["tasks"][0]["family"], "hello", "{doc}");
    }
    assert_eq!(
        node_desired(&a, &broker, "fl-c"),
        None,
        "fl-c was not selected"
    );
    let out = a.ctl(&broker, &["desired"]);
    assert!(!out.status.success(), "no cluster document was written");

    // The selected nodes run it and report the version; fl-c's status did not move.
    let running = wait_for("hello running on fl-a and fl-b", T, || {
        let north = nodes_json(&a, &broker, &["--selector", "site=north"]);
        north
            .iter()
            .all(|s| {
                s.node_version == version
                    && s.tasks
                        .iter()
                        .any(|t| t.name.as_str() == "hello" && t.state == TaskState::Running)
            })
            .then_some(north)
    });
    assert_eq!(running.len(), 2);
    let south = nodes_json(&a, &broker, &["--selector", "site=south"]);
    assert_eq!(south.len(), 1);
    assert_eq!((south[0].node_version, south[0].cluster_version), (0, 0));
    assert!(south[0].tasks.is_empty(), "{:?}", south[0].tasks);
    sub.drain();
    assert!(
        sub.seen.iter().all(|(t, m)| !t.contains("/fl-c/")
            || matches!(m, Message::Status(s) if s.node_version == 0 && s.tasks.is_empty())),
        "fl-c reported a change"
    );

    // A document the edge nodes' policy refuses: each rejection named with its reason, exit 1,
    // and fl-a gets its previous document back.
    let bad = task_file(
        dir.path(),
        "priv",
        &shell_task("priv", r#","privileged":true"#),
    );
    let out = a.ctl(
        &broker,
        &[
            "deploy",
            bad.to_str().expect("utf-8 path"),
            "--selector",
            "tier=edge",
            "--timeout",
            "60",
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}{stderr}", text(&out.stdout));
    for node in ["fl-a", "fl-c"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{node}: rejected version"))
                    && l.contains("privileged is not allowed")),
            "{stderr}"
        );
    }
    assert!(
        text(&out.stdout).contains("0/2 nodes applied version"),
        "{}",
        text(&out.stdout)
    );
    let doc = node_desired(&a, &broker, "fl-a").expect("fl-a's document");
    assert_eq!(
        doc["version"], version,
        "the previous document is back: {doc}"
    );
    let doc = node_desired(&b, &broker, "fl-b").expect("fl-b's document");
    assert_eq!(doc["version"], version, "fl-b was not selected: {doc}");

    // `ctl top` without a terminal: one plain frame per refresh.
    let out = a.ctl(
        &broker,
        &["top", "--count", "2", "--interval", "0.5", "--sort", "name"],
    );
    let frames = text(&out.stdout);
    assert!(out.status.success(), "{frames}{}", text(&out.stderr));
    assert!(
        !frames.contains('\x1b'),
        "escape codes without a terminal: {frames:?}"
    );
    assert_eq!(
        frames.matches("skiff top: cluster fleet").count(),
        2,
        "{frames}"
    );
    assert_eq!(
        frames
            .matches("nodes 3: 3 online, 0 draining, 0 drained, 0 offline")
            .count(),
        2,
        "{frames}"
    );
    let rows: Vec<&str> = frames
        .lines()
        .filter(|l| l.starts_with("fl-"))
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(
        rows,
        ["fl-a", "fl-b", "fl-c", "fl-a", "fl-b", "fl-c"],
        "{frames}"
    );

    // A node that goes away keeps its labels in the last will: still selectable, offline.
    drop(c);
    let offline = wait_for("fl-c offline", T, || {
        let s = nodes_json(
            &a,
            &broker,
            &["--selector", "site=south", "--state", "offline"],
        );
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(offline[0].node.as_str(), "fl-c");
    assert_eq!(
        offline[0].labels.get("tier").map(String::as_str),
        Some("edge")
    );
}

/// A fleet with more retained statuses than a broker queues QoS 1 messages per client
/// (mosquitto's `max_queued_messages`, 1000 by default): `ctl nodes` still lists every node,
/// because the console reads the fleet at QoS 0.
#[test]
fn nodes_lists_a_fleet_larger_than_the_brokers_qos1_queue() {
    require_env!();
    const NODES: usize = 1500;
    let broker = Broker::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut conn = skiff_agent::mqtt::connect(skiff_agent::mqtt::ConnectOptions {
            client_id: "fleet-publisher".into(),
            broker: skiff_agent::config::BrokerUrl {
                host: "127.0.0.1".into(),
                port: broker.port,
            },
            keepalive: Duration::from_secs(30),
            last_will: None,
            subscriptions: Vec::new(),
        });
        let deadline = tokio::time::Instant::now() + T;
        while !matches!(
            next(&mut conn.inbound, deadline).await,
            skiff_agent::mqtt::Inbound::Connected
        ) {}
        // In windows, reading the acknowledgements between them: the client's event loop
        // stops while its channel to us is full.
        let statuses: Vec<(String, Vec<u8>)> = (0..NODES)
            .map(|i| {
                let node = format!("big-{i:04}");
                let status = Status {
                    node: node.parse().expect("name"),
                    state: NodeState::Online,
                    agent_version: "0.1.0".into(),
                    cluster_version: 0,
                    node_version: 0,
                    at_ms: 0,
                    tasks: vec![],
                    services: vec![],
                    labels: [("half".to_string(), format!("h{}", i % 2))].into(),
                    resources: Default::default(),
                };
                let bytes = skiff_proto::codec::encode(&Message::Status(status)).expect("encode");
                (format!("skiff/v1/{CLUSTER}/nodes/{node}/status"), bytes)
            })
            .collect();
        for window in statuses.chunks(50) {
            for (topic, bytes) in window {
                conn.client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, true, bytes.clone())
                    .await
                    .expect("publish");
            }
            let mut acked = 0;
            while acked < window.len() {
                if matches!(
                    next(&mut conn.inbound, deadline).await,
                    skiff_agent::mqtt::Inbound::PubAck
                ) {
                    acked += 1;
                }
            }
        }
    });
    let nodes = |args: &[&str]| -> Vec<Status> {
        let out = std::process::Command::new(SKIFF)
            .args([
                "ctl",
                "--broker",
                &broker.url(),
                "--cluster",
                CLUSTER,
                "nodes",
                "--json",
            ])
            .args(args)
            .output()
            .expect("run skiff ctl");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    };
    assert_eq!(nodes(&[]).len(), NODES);
    let half = nodes(&["--selector", "half=h1"]);
    assert_eq!(half.len(), NODES / 2);
    assert!(half
        .iter()
        .all(|s| s.labels.get("half").map(String::as_str) == Some("h1")));
}

/// The publisher's next event, within the deadline.
async fn next(
    inbound: &mut tokio::sync::mpsc::Receiver<skiff_agent::mqtt::Inbound>,
    deadline: tokio::time::Instant,
) -> skiff_agent::mqtt::Inbound {
    tokio::time::timeout_at(deadline, inbound.recv())
        .await
        .expect("the broker answers in time")
        .expect("publisher connection open")
}
