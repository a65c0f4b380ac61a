//! Task networking end to end. Bridge: a service of 2 busybox `httpd` tasks with a dynamic host
//! port each, applied with `skiff ctl apply`; the node's status and events carry the endpoints,
//! `skiff ctl endpoints` lists them, both host ports answer; after `kill -9` and a restart the
//! tasks are adopted with their veths and host ports, and answer. awsvpc: `httpd` tasks on an
//! emulated LAN (a veth pair to a namespace the test makes) reached at their own addresses, a
//! full pool failing a task by name, adopted with their addresses after `kill -9` + restart, no
//! link left after they stop. Each agent has a
//! bridge, subnet, port range and LAN of its own; no traffic leaves the machine.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
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

    // kill -9 and a restart: the tasks outlive the agent and are adopted, with their veths,
    // addresses and host ports.
    agent.kill9();
    sub.drain();
    sub.seen.clear();
    agent.restart();
    for (task, _) in &eps {
        adopted(&mut sub, task);
    }
    let after = sub.wait("the service back with endpoints", T, |t, m| match m {
        Message::Status(s) if t == status_topic => endpoints_of(s),
        _ => None,
    });
    assert_eq!(after, eps, "the same tasks, addresses and host ports");
    for (task, e) in &after {
        answers(e.host_port, task);
    }
    assert_eq!(veths(&bridge), 2, "the adopted tasks' veths, no other");

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

/// An emulated LAN `10.98.K.0/24`: the node's end of a veth pair is the awsvpc parent (no
/// address on the node), the other end is `eth0` of a "lan" namespace holding `10.98.K.1` (the
/// gateway, and the client). Removed on drop.
struct Lan {
    k: u32,
    parent: String,
    ns: String,
}

impl Lan {
    fn new() -> Lan {
        let pid = std::process::id() % 100_000;
        let k = std::process::id() % 200 + 20;
        let (parent, ns) = (format!("ska{pid}"), format!("skal{pid}"));
        let script = format!(
            "set -e; ip netns add {ns}; ip link add {parent} type veth peer name eth0 netns {ns}; \
             ip link set {parent} up; ip -n {ns} addr add 10.98.{k}.1/24 dev eth0; \
             ip -n {ns} link set eth0 up; ip -n {ns} link set lo up"
        );
        assert!(Command::new("sh")
            .args(["-c", &script])
            .status()
            .expect("sh")
            .success());
        Lan { k, parent, ns }
    }

    fn addr(&self, last: u8) -> String {
        format!("10.98.{}.{last}", self.k)
    }

    /// A GET of `http://{ip}/` from the LAN's namespace (busybox wget).
    fn http_get(&self, ip: &str) -> Option<String> {
        let out = Command::new("ip")
            // (busybox 1.35's wget crashes with -T: timeout(1) bounds it instead.)
            .args([
                "netns", "exec", &self.ns, "timeout", "5", "busybox", "wget", "-q",
            ])
            .args(["-O", "-"])
            .arg(format!("http://{ip}/"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn answers(&self, ip: &str, body: &str) {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            match self.http_get(ip) {
                Some(text) if text.contains(body) => return,
                other if Instant::now() > end => panic!("{ip}: no {body:?} in {other:?}"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Whether anything on the LAN answers ARP for `ip`.
    fn arp_answers(&self, ip: &str) -> bool {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "busybox", "arping", "-c", "2", "-w", "2",
            ])
            .args(["-I", "eth0", ip])
            .output()
            .expect("arping");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("Received "), "arping: {text}");
        !text.contains("Received 0 ")
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let script = format!(
            "ip netns del {} 2>/dev/null; ip link del {} 2>/dev/null",
            self.ns, self.parent
        );
        let _ = Command::new("sh").args(["-c", &script]).status();
    }
}

/// skiff's awsvpc links (`alias skiff awsvpc TASK`) in every network namespace a process or a
/// bind mount (under `netns_dir` or `/run/netns`) holds: task → how many.
fn awsvpc_links(netns_dir: &std::path::Path) -> BTreeMap<String, usize> {
    use std::os::unix::fs::MetadataExt;
    let mut by_inode: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut add = |p: PathBuf| {
        if let Ok(md) = std::fs::metadata(&p) {
            by_inode.entry(md.ino()).or_insert(p);
        }
    };
    for dir in [std::path::Path::new("/run/netns"), netns_dir] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            add(e.path());
        }
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if e.file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            add(e.path().join("ns/net"));
        }
    }
    let mut out = BTreeMap::new();
    for p in by_inode.values() {
        let o = Command::new("nsenter")
            .arg(format!("--net={}", p.display()))
            .args(["ip", "-o", "link", "show"])
            .output();
        let Ok(o) = o else { continue };
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some(t) = l.split("alias skiff awsvpc ").nth(1) {
                *out.entry(t.trim().to_owned()).or_insert(0) += 1;
            }
        }
    }
    out
}

fn links(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
}

/// The endpoints of the running tasks `names`, once all run and have them.
fn running_endpoints(s: &Status, names: &[&str]) -> Option<BTreeMap<String, Endpoint>> {
    let got: BTreeMap<String, Endpoint> = s
        .tasks
        .iter()
        .filter(|t| names.contains(&t.name.as_str()))
        .filter(|t| t.state == TaskState::Running && t.endpoints.len() == 1)
        .map(|t| (t.name.to_string(), t.endpoints[0].clone()))
        .collect();
    (got.len() == names.len()).then_some(got)
}

#[test]
fn awsvpc_tasks_are_reached_at_their_own_lan_address_and_leave_nothing_behind() {
    require_env!();
    require_env!(tool_missing("ip", "iproute2").or_else(|| tool_missing("nsenter", "util-linux")));
    let broker = Broker::start();
    let lan = Lan::new();
    // A pool of two addresses; the node's bridge settings are its own too (no bridge task).
    let k = lan.k;
    let config = format!(
        "[network]\nbridge = \"skw{k}\"\nsubnet = \"10.216.{k}.0/24\"\n\
         awsvpc_parent = \"{}\"\nawsvpc_pool = \"{}-{}\"\nawsvpc_subnet = \"10.98.{k}.0/24\"\n\
         awsvpc_gateway = \"{}\"\n",
        lan.parent,
        lan.addr(10),
        lan.addr(11),
        lan.addr(1)
    );
    let mut agent = Agent::start_with(&broker, "e2e-awsvpc", "pi-1", &config);
    let events = format!("skiff/v1/{}/nodes/{}/events", agent.cluster, agent.node);
    let status_topic = format!("skiff/v1/{}/nodes/{}/status", agent.cluster, agent.node);
    let mut sub = Sub::start(&broker, &[&events, &status_topic]);
    let files = tempfile::tempdir().expect("tempdir");
    let web = |family: &str| {
        task_file(
            files.path(),
            family,
            &format!(
                r#"{{"family": "{family}", "networkMode": "awsvpc", "restartPolicy": "always",
                "containerDefinitions": [{{"name": "httpd", "image": "busybox", "stopTimeout": 1,
                    "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"],
                    "portMappings": [{{"containerPort": 80, "protocol": "tcp"}}]}}]}}"#
            ),
        )
    };
    let apply = |agent: &Agent, family: &str| {
        let f = web(family);
        let out = agent.ctl(
            &broker,
            &["apply", f.to_str().expect("utf8"), "--node", &agent.node],
        );
        assert!(out.status.success(), "apply {family} failed");
    };
    apply(&agent, "lana");
    let eps = sub.wait("lana running with its endpoint", T, |t, m| match m {
        Message::Status(s) if t == status_topic => running_endpoints(s, &["lana"]),
        _ => None,
    });
    let e = &eps["lana"];
    assert_eq!(
        (e.container.as_str(), e.container_port, e.host_port),
        ("httpd", 80, 0),
        "nothing mapped: {e:?}"
    );
    assert_eq!(e.address, lan.addr(10));
    // Reached directly at its own address from the LAN.
    lan.answers(&lan.addr(10), "lana");
    sub.wait("EndpointsChanged of lana", T, |_, m| match m {
        Message::Event(ev) => match &ev.body {
            EventBody::EndpointsChanged { task, endpoints }
                if task.as_str() == "lana" && endpoints.first() == Some(e) =>
            {
                Some(())
            }
            _ => None,
        },
        _ => None,
    });
    let out = agent.ctl(&broker, &["endpoints", "lana"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("80/tcp  -          {}", lan.addr(10))),
        "{text}"
    );

    // The second takes the pool's last address; a third fails by name, with nothing made.
    apply(&agent, "lanb");
    sub.wait("lanb running", T, |t, m| match m {
        Message::Status(s) if t == status_topic => running_endpoints(s, &["lana", "lanb"]),
        _ => None,
    });
    lan.answers(&lan.addr(11), "lanb");
    apply(&agent, "lanc");
    let reason = sub.wait("lanc failing to start", T, |_, m| match m {
        Message::Event(ev) => match &ev.body {
            EventBody::TaskFailed { task, reason } if task.as_str() == "lanc" => {
                Some(reason.clone())
            }
            _ => None,
        },
        _ => None,
    });
    assert!(
        reason.contains(&format!(
            "no free address left in the awsvpc pool {}-{} for task lanc (held by tasks lana, lanb)",
            lan.addr(10),
            lan.addr(11)
        )),
        "{reason}"
    );
    let netns = agent.run_dir().join("netns");
    assert_eq!(awsvpc_links(&netns), links(&[("lana", 1), ("lanb", 1)]));
    assert!(!netns.join("lanc").exists(), "nothing of lanc is left");
    let out = agent.ctl(&broker, &["stop", "lanc", "--node", &agent.node]);
    assert!(out.status.success(), "stop lanc failed");

    // kill -9 and a restart: both are adopted with their links; each address has one holder.
    agent.kill9();
    sub.drain();
    sub.seen.clear();
    agent.restart();
    adopted(&mut sub, "lana");
    adopted(&mut sub, "lanb");
    let eps = sub.wait("both back with endpoints", T, |t, m| match m {
        Message::Status(s) if t == status_topic => running_endpoints(s, &["lana", "lanb"]),
        _ => None,
    });
    let mut addrs: Vec<&str> = eps.values().map(|e| e.address.as_str()).collect();
    addrs.sort_unstable();
    assert_eq!(addrs, [lan.addr(10), lan.addr(11)]);
    for (task, e) in &eps {
        lan.answers(&e.address, task);
    }
    assert_eq!(awsvpc_links(&netns), links(&[("lana", 1), ("lanb", 1)]));

    // Removed: no link, no allocation, nothing answers on the LAN.
    for family in ["lana", "lanb"] {
        let out = agent.ctl(&broker, &["stop", family, "--node", &agent.node]);
        assert!(out.status.success(), "stop {family} failed");
    }
    // The runtime deletes the link, then the allocation file: wait for both.
    let alloc = agent.run_dir().join("awsvpc");
    let allocations = || -> Vec<_> {
        std::fs::read_dir(&alloc)
            .into_iter()
            .flatten()
            .flatten()
            .collect()
    };
    crate::harness::wait_for("no awsvpc link and no allocation left", T, || {
        (awsvpc_links(&netns).is_empty() && allocations().is_empty()).then_some(())
    });
    let left = allocations();
    assert!(left.is_empty(), "allocations left: {left:?}");
    for last in [10, 11] {
        assert!(
            !lan.arp_answers(&lan.addr(last)),
            "{} still answers",
            lan.addr(last)
        );
    }
}

/// Host uids of the processes whose command line is exactly `cmdline` (NUL-separated).
fn host_uids_of(cmdline: &str) -> Vec<u32> {
    let mut uids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let dir = entry.path();
        let matches = std::fs::read(dir.join("cmdline"))
            .map(|c| c == cmdline.as_bytes())
            .unwrap_or(false);
        if !matches {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        if let Some(uid) = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
        {
            uids.push(uid);
        }
    }
    uids
}

/// Mount points below `dir` in the host's mount table.
fn mounts_below(dir: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let prefix = dir.to_string_lossy().into_owned();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_remapped_bridge_task_answers_and_its_root_is_an_unprivileged_host_uid() {
    require_env!();
    require_env!(tool_missing("nft", "nftables").or_else(|| tool_missing("ip", "iproute2")));
    let broker = Broker::start();
    let k = std::process::id() % 200 + 20;
    let bridge = format!("sku{}", std::process::id() % 100_000);
    let _guard = BridgeGuard(bridge.clone());
    let first = 40_000 + k * 20;
    let base = 400_000 + (std::process::id() % 100) * 65_536;
    let config = format!(
        "[network]\nbridge = \"{bridge}\"\nsubnet = \"10.216.{k}.0/24\"\n\
         ephemeral_ports = \"{first}-{}\"\n\n[userns]\nenabled = true\nbase = {base}\n",
        first + 19
    );
    let mut agent = Agent::start_with(&broker, "e2e-userns", "pi-1", &config);
    let status_topic = format!("skiff/v1/{}/nodes/{}/status", agent.cluster, agent.node);
    let events = format!("skiff/v1/{}/nodes/{}/events", agent.cluster, agent.node);
    let mut sub = Sub::start(&broker, &[&status_topic, &events]);
    let files = tempfile::tempdir().expect("tempdir");
    // The page: what the container's root is inside, and its id map.
    let serve = "mkdir -p /www && (id -u; cat /proc/self/uid_map) > /www/index.html && \
                 exec httpd -f -p 8081 -h /www";
    let rmap = task_file(
        files.path(),
        "rmap",
        &format!(
            r#"{{"family": "rmap", "networkMode": "bridge", "service": {{"desiredCount": 1}},
                "containerDefinitions": [{{"name": "httpd", "image": "busybox", "stopTimeout": 1,
                    "command": ["sh", "-c", "{serve}"],
                    "portMappings": [{{"containerPort": 8081, "hostPort": 0, "protocol": "tcp"}}]}}]}}"#
        ),
    );
    let out = agent.ctl(
        &broker,
        &["apply", rmap.to_str().expect("utf8"), "--node", &agent.node],
    );
    assert!(out.status.success(), "apply failed");
    let running = |sub: &mut Sub| {
        sub.wait(
            "the remapped task running with a host port",
            T,
            |t, m| match m {
                Message::Status(s) if t == status_topic => s
                    .tasks
                    .iter()
                    .find(|t| t.state == TaskState::Running && t.endpoints.len() == 1)
                    .map(|t| t.endpoints[0].host_port),
                _ => None,
            },
        )
    };
    let port = running(&mut sub);
    // Root inside, mapped to `base`; reached through the bridge and the port mapping.
    answers(port, "\n0\n");
    let page = http_get(port).expect("page");
    let map: Vec<&str> = page
        .lines()
        .last()
        .expect("uid_map line")
        .split_whitespace()
        .collect();
    assert_eq!(map, ["0", &base.to_string(), "65536"], "{page}");
    // Seen from the host, httpd runs as `base`, not as root (and so does the child it forks
    // for a connection, which may still be there).
    let httpd = "httpd\0-f\0-p\08081\0-h\0/www\0";
    let uids = host_uids_of(httpd);
    assert!(
        !uids.is_empty() && uids.iter().all(|u| *u == base),
        "host uids of the task's httpd processes: {uids:?}, want {base}"
    );

    // kill -9 and a restart: the task is adopted, still remapped, on the same port.
    agent.kill9();
    sub.drain();
    sub.seen.clear();
    agent.restart();
    adopted(&mut sub, "rmap.1");
    assert_eq!(running(&mut sub), port, "adopted, not started again");
    answers(port, &format!(" {base} "));
    let uids = host_uids_of(httpd);
    assert!(
        !uids.is_empty() && uids.iter().all(|u| *u == base),
        "{uids:?}"
    );

    let out = agent.ctl(&broker, &["stop", "rmap", "--node", &agent.node]);
    assert!(out.status.success(), "stop failed");
    let tasks = agent.run_dir().join("tasks");
    crate::harness::wait_for("no mount left below the run dir", T, || {
        (host_uids_of(httpd).is_empty() && mounts_below(&tasks).is_empty()).then_some(())
    });
}

/// Waits for the event saying `task` was adopted by the restarted agent, nothing exited.
fn adopted(sub: &mut Sub, task: &str) {
    sub.wait(&format!("{task} adopted"), T, |_, m| match m {
        Message::Event(ev) => matches!(&ev.body,
            EventBody::TaskAdopted { task: t, exited: 0, .. } if t.as_str() == task)
        .then_some(()),
        _ => None,
    });
}
