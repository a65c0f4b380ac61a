//! Bridge networking end to end: a service of 2 busybox `httpd` tasks with a dynamic host port
//! each, applied with `skiff ctl apply`; the node's status and events carry the endpoints,
//! `skiff ctl endpoints` lists them, both host ports answer; after `kill -9` and a restart
//! nothing of the old run is left on the bridge. The agent has a bridge, subnet and port range
//! of its own; no traffic leaves the machine.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_proto::codec::Message;
use skiff_proto::{Endpoint, EventBody, Status, TaskState};

use crate::harness::{task_file, tool_missing, Agent, Broker, Sub};
use crate::require_env;

const T: Duration = Duration::from_secs(60);

/// Removes the test's bridge and its nftables objects.
struct BridgeGuard(String);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let b = &self.0;
        let mut script = format!("ip link del {b} 2>/dev/null;");
        for c in ["pre", "out", "post", "fwd"] {
            script.push_str(&format!("nft delete chain ip skiff {c}_{b} 2>/dev/null;"));
        }
        for m in ["tcp", "udp"] {
            script.push_str(&format!("nft delete map ip skiff {m}_{b} 2>/dev/null;"));
        }
        let _ = Command::new("sh").args(["-c", &script]).status();
    }
}

fn http_get(port: u16) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn answers(port: u16, body: &str) {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        match http_get(port) {
            Some(text) if text.contains(body) => return,
            other if Instant::now() > end => panic!("port {port}: no {body:?} in {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn veths(bridge: &str) -> usize {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// The running tasks of `web` with their endpoints, once both run and have them.
fn endpoints_of(s: &Status) -> Option<Vec<(String, Endpoint)>> {
    let tasks: Vec<_> = s
        .tasks
        .iter()
        .filter(|t| t.service.as_ref().is_some_and(|n| n.as_str() == "web"))
        .collect();
    (tasks.len() == 2
        && tasks
            .iter()
            .all(|t| t.state == TaskState::Running && t.endpoints.len() == 1))
    .then(|| {
        tasks
            .iter()
            .map(|t| (t.name.to_string(), t.endpoints[0].clone()))
            .collect()
    })
}

#[test]
fn a_bridge_service_publishes_endpoints_and_both_host_ports_answer() {
    require_env!();
    require_env!(tool_missing("nft", "nftables").or_else(|| tool_missing("ip", "iproute2")));
    let broker = Broker::start();
    let k = std::process::id() % 200 + 20;
    let bridge = format!("ske{}", std::process::id() % 100_000);
    let _guard = BridgeGuard(bridge.clone());
    let first = 30_000 + k * 50;
    let config = format!(
        "[network]\nbridge = \"{bridge}\"\nsubnet = \"10.215.{k}.0/24\"\n\
         ephemeral_ports = \"{first}-{}\"\ndns = [\"192.0.2.53\"]\n",
        first + 49
    );
    let mut agent = Agent::start_with(&broker, "e2e-net", "pi-1", &config);
    let events = format!("skiff/v1/{}/nodes/{}/events", agent.cluster, agent.node);
    let status_topic = format!("skiff/v1/{}/nodes/{}/status", agent.cluster, agent.node);
    let mut sub = Sub::start(&broker, &[&events, &status_topic]);
    let files = tempfile::tempdir().expect("tempdir");
    let web = task_file(
        files.path(),
        "web",
        r#"{"family": "web", "networkMode": "bridge",
            "service": {"desiredCount": 2},
            "containerDefinitions": [{"name": "httpd", "image": "busybox", "stopTimeout": 1,
                "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"],
                "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}]}]}"#,
    );
    let out = agent.ctl(
        &broker,
        &["apply", web.to_str().expect("utf8"), "--node", &agent.node],
    );
    assert!(out.status.success(), "apply failed");

    let started = Instant::now();
    let eps = sub.wait("2 running tasks with endpoints", T, |t, m| match m {
        Message::Status(s) if t == status_topic => endpoints_of(s),
        _ => None,
    });
    eprintln!(
        "2 bridge tasks with endpoints after {:?}",
        started.elapsed()
    );
    let ports: Vec<u16> = eps.iter().map(|(_, e)| e.host_port).collect();
    assert_ne!(ports[0], ports[1], "two copies get different host ports");
    for (task, e) in &eps {
        assert_eq!(e.container.as_str(), "httpd");
        assert_eq!(e.container_port, 8080);
        assert!(
            (first..first + 50).contains(&u32::from(e.host_port)),
            "{e:?}"
        );
        assert!(e.address.starts_with(&format!("10.215.{k}.")), "{e:?}");
        // Each copy answers on its own host port with its own host name.
        answers(e.host_port, task);
    }
    // An event for each task's endpoints (received before or with the status).
    for (task, _) in &eps {
        sub.wait("EndpointsChanged", T, |_, m| match m {
            Message::Event(ev) => match &ev.body {
                EventBody::EndpointsChanged { task: t, endpoints }
                    if t.as_str() == task && !endpoints.is_empty() =>
                {
                    Some(())
                }
                _ => None,
            },
            _ => None,
        });
    }
    let out = agent.ctl(&broker, &["endpoints", "web"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("NODE  TASK"), "{text}");
    for p in &ports {
        assert!(text.contains(&format!("8080/tcp  {p}")), "{text}");
    }
    assert_eq!(veths(&bridge), 2);

    // kill -9 and a restart: the old veths and mappings go, the service comes back.
    agent.kill9();
    agent.restart();
    sub.drain();
    sub.seen.clear();
    let eps = sub.wait("the service back with endpoints", T, |t, m| match m {
        Message::Status(s) if t == status_topic => endpoints_of(s),
        _ => None,
    });
    for (task, e) in &eps {
        answers(e.host_port, task);
    }
    assert_eq!(veths(&bridge), 2, "only the new run's veths");

    // Removed: nothing left on the bridge.
    let out = agent.ctl(&broker, &["stop", "web", "--node", &agent.node]);
    assert!(out.status.success(), "stop failed");
    crate::harness::wait_for("no veth left", T, || (veths(&bridge) == 0).then_some(()));
    // Checked again after a moment: a mapping left behind would stay.
    for _ in 0..2 {
        let out = Command::new("nft")
            .args(["list", "map", "ip", "skiff", &format!("tcp_{bridge}")])
            .output()
            .expect("nft");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!text.contains("elements"), "no port mapping left: {text}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
