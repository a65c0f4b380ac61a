//! `skiff sim`: twenty simulated agents in one process against a real mosquitto. `skiff ctl`
//! lists them online, a cluster-wide apply is applied by every one (their status shows the
//! version and the task running), each publishes metrics, and Ctrl-C takes every node offline
//! cleanly. Observed through `skiff ctl` and an independent `mosquitto_sub`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use skiff_proto::codec::Message;
use skiff_proto::{NodeState, TaskState};

use crate::harness::{task_file, tool_missing, wait_for, Broker, Sub, SKIFF};
use crate::require_env;

const NODES: usize = 20;
const CLUSTER: &str = "simc";
const T: Duration = Duration::from_secs(20);

fn ctl(broker: &Broker, args: &[&str]) -> Output {
    let out = Command::new(SKIFF)
        .args(["ctl", "--broker", &broker.url(), "--cluster", CLUSTER])
        .args(["--timeout", "15"])
        .args(args)
        .output()
        .expect("run skiff ctl");
    eprintln!(
        "$ skiff ctl {}\n{}{}[exit {:?}]",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

/// `skiff ctl nodes --json`: node id → (state, cluster_version), parsed from the JSON lines.
fn nodes(broker: &Broker) -> BTreeMap<String, (String, u64)> {
    let out = ctl(broker, &["nodes", "--json"]);
    assert!(out.status.success(), "ctl nodes failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON status per line");
            let node = v["node"].as_str().expect("node").to_string();
            let state = v["state"].as_str().expect("state").to_string();
            let cv = v["cluster_version"].as_u64().expect("cluster_version");
            (node, (state, cv))
        })
        .collect()
}

struct Sim {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Sim {
    fn start(broker: &Broker) -> Sim {
        let mut child = Command::new(SKIFF)
            .args([
                "sim",
                "--nodes",
                &NODES.to_string(),
                "--broker",
                &broker.url(),
            ])
            .args([
                "--cluster",
                CLUSTER,
                "--metrics-interval",
                "1",
                "--ramp",
                "100",
            ])
            .args(["--label", "site=lab"])
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start skiff sim");
        let err = child.stderr.take().expect("stderr");
        let (tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("sim| {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Sim { child, stderr }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn twenty_simulated_nodes_report_apply_and_go_offline() {
    require_env!(tool_missing("mosquitto", "mosquitto")
        .or_else(|| tool_missing("mosquitto_sub", "mosquitto-clients")));
    let broker = Broker::start();
    let mut sub = Sub::start(
        &broker,
        &[
            &format!("skiff/v1/{CLUSTER}/nodes/+/metrics"),
            &format!("skiff/v1/{CLUSTER}/nodes/+/status"),
        ],
    );
    let mut sim = Sim::start(&broker);
    let expected: BTreeSet<String> = (1..=NODES).map(|i| format!("sim-{i:05}")).collect();

    // Every node online, as ctl reads the fleet.
    wait_for("20 simulated nodes online", T, || {
        let n = nodes(&broker);
        let online: BTreeSet<String> = n
            .iter()
            .filter(|(_, (s, _))| s == "Online")
            .map(|(k, _)| k.clone())
            .collect();
        (online == expected).then_some(())
    });

    // A cluster-wide desired state: every node applies it and says so in its status.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = task_file(
        dir.path(),
        "web",
        r#"{"family": "web", "memory": "32", "containerDefinitions": [
            {"name": "app", "image": "busybox:latest", "command": ["sleep", "3600"]}]}"#,
    );
    let out = ctl(&broker, &["apply", file.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "cluster apply failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let applied = stdout
        .lines()
        .filter(|l| l.contains(": applied version"))
        .count();
    assert_eq!(applied, NODES, "every node answers applied:\n{stdout}");
    let version: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("published desired state version "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("the published version");
    let mut running: BTreeSet<String> = BTreeSet::new();
    sub.wait(
        "each node's status with the version and web running",
        T,
        |_, m| {
            if let Message::Status(st) = m {
                let web_up = st
                    .tasks
                    .iter()
                    .any(|t| t.name.as_str() == "web" && t.state == TaskState::Running);
                if st.cluster_version == version && web_up && st.state == NodeState::Online {
                    running.insert(st.node.to_string());
                }
            }
            (running == expected).then_some(())
        },
    );
    let listed = nodes(&broker);
    assert_eq!(listed.len(), NODES);
    for (node, (state, cv)) in &listed {
        assert_eq!((state.as_str(), *cv), ("Online", version), "{node}");
    }

    // Metrics from every node, with the node's figures and, after the apply, the task's.
    let mut with_task: BTreeSet<String> = BTreeSet::new();
    sub.wait("metrics with the web task from each node", T, |_, m| {
        if let Message::Metrics(mm) = m {
            for s in &mm.samples {
                assert!(s.mem_total_bytes > 0 && s.mem_used_bytes <= s.mem_total_bytes);
                assert!((0.0..=100.0).contains(&s.cpu_pct), "{s:?}");
                if s.tasks
                    .iter()
                    .any(|t| t.task.as_str() == "web" && t.mem_bytes > 0)
                {
                    with_task.insert(mm.node.to_string());
                }
            }
        }
        (with_task == expected).then_some(())
    });

    // Ctrl-C: every node stops its task, publishes offline and disconnects; exit 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(sim.child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = wait_for("skiff sim to exit", T, || {
        sim.child.try_wait().ok().flatten()
    });
    assert!(status.success(), "skiff sim exited with {status:?}");
    let lines: Vec<String> = sim.stderr.try_iter().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("sim: stopped") && l.contains("disconnected_cleanly=20")),
        "every node disconnected cleanly: {lines:#?}"
    );
    let after = nodes(&broker);
    assert_eq!(after.len(), NODES);
    for (node, (state, _)) in &after {
        assert_eq!(state, "Offline", "{node} is offline after Ctrl-C");
    }
}
