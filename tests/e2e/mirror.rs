//! The JSON mirror (`[mirror_json]`): what an independent `mosquitto_sub` receives on
//! `status.json`, `events.json` and `metrics.json` is the content of the binary messages, with
//! the same QoS and retain flag; each kind is mirrored only when configured; the outbox's
//! resends after a broker outage are mirrored too.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use skiff_proto::codec::{decode, Message};
use skiff_proto::{Event, EventBody, Metrics, NodeState, Status, TaskState};

use crate::harness::{task_file, Agent, Broker};
use crate::require_env;

const T: Duration = Duration::from_secs(30);
const ALL_ON: &str = "[mirror_json]\nstatus = true\nevents = true\nmetrics = true\n";

/// One message as `mosquitto_sub` printed it.
#[derive(Debug, Clone)]
struct Raw {
    topic: String,
    qos: u8,
    retained: bool,
    payload: Vec<u8>,
}

/// A `mosquitto_sub` printing `topic qos retained hexpayload`, binary or JSON alike.
struct RawSub {
    child: Child,
    rx: Receiver<Raw>,
    seen: Vec<Raw>,
}

impl RawSub {
    fn start(broker: &Broker, topics: &[&str]) -> RawSub {
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-q", "1", "-F", "%t %q %r %x"]);
        for t in topics {
            cmd.args(["-t", t]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("start mosquitto_sub");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut f = line.split(' ');
                let (Some(topic), Some(qos), Some(retained), Some(hex)) =
                    (f.next(), f.next(), f.next(), f.next())
                else {
                    continue;
                };
                let raw = Raw {
                    topic: topic.into(),
                    qos: qos.parse().unwrap_or(9),
                    retained: retained == "1",
                    payload: hex::decode(hex.trim()).unwrap_or_default(),
                };
                if tx.send(raw).is_err() {
                    return;
                }
            }
        });
        // mosquitto_sub has no "subscribed" signal; give it a moment to subscribe.
        std::thread::sleep(Duration::from_millis(300));
        RawSub {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Receives until `done(seen)` holds.
    fn until(&mut self, what: &str, timeout: Duration, mut done: impl FnMut(&[Raw]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(raw) => self.seen.push(raw),
                Err(RecvTimeoutError::Timeout) => {
                    let topics: Vec<&str> = self.seen.iter().map(|r| r.topic.as_str()).collect();
                    panic!("timed out after {timeout:?} waiting for {what}; seen {topics:?}")
                }
                Err(RecvTimeoutError::Disconnected) => panic!("mosquitto_sub exited"),
            }
        }
    }

    /// The messages on `topic`, in order.
    fn on<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Raw> + 'a {
        self.seen.iter().filter(move |r| r.topic == topic)
    }
}

impl Drop for RawSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_topic(a: &Agent, leaf: &str) -> String {
    format!("skiff/v1/{}/nodes/{}/{leaf}", a.cluster, a.node)
}

fn binary(r: &Raw) -> Message {
    decode(&r.payload).unwrap_or_else(|e| panic!("{}: not a skiff message: {e}", r.topic))
}

fn json<T: DeserializeOwned>(r: &Raw) -> T {
    serde_json::from_slice(&r.payload).unwrap_or_else(|e| {
        panic!(
            "{}: not the JSON of its kind ({e}): {}",
            r.topic,
            String::from_utf8_lossy(&r.payload)
        )
    })
}

fn statuses(sub: &RawSub, a: &Agent) -> Vec<Status> {
    sub.on(&node_topic(a, "status"))
        .filter_map(|r| match binary(r) {
            Message::Status(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn events(sub: &RawSub, a: &Agent) -> Vec<Event> {
    sub.on(&node_topic(a, "events"))
        .filter_map(|r| match binary(r) {
            Message::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn metrics(sub: &RawSub, a: &Agent) -> Vec<Metrics> {
    sub.on(&node_topic(a, "metrics"))
        .filter_map(|r| match binary(r) {
            Message::Metrics(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// Every binary message of `leaf` seen so far has its JSON mirror, in the same order, with the
/// same content and QoS: waits for the mirrors of what was seen, then compares.
fn mirrors_match<T>(sub: &mut RawSub, a: &Agent, leaf: &str, decoded: fn(&RawSub, &Agent) -> Vec<T>)
where
    T: DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bin_topic = node_topic(a, leaf);
    let json_topic = format!("{bin_topic}.json");
    let want = decoded(sub, a).len();
    assert!(want > 0, "no {leaf} message seen");
    sub.until(&format!("{want} messages on {json_topic}"), T, |seen| {
        seen.iter().filter(|r| r.topic == json_topic).count() >= want
    });
    let bins = decoded(sub, a);
    let jsons: Vec<T> = sub.on(&json_topic).map(json::<T>).collect();
    // Mirrors arrive after their binary message: the first `want` line up.
    assert_eq!(
        &jsons[..want],
        &bins[..want],
        "{json_topic} differs from {bin_topic}"
    );
    for r in sub.on(&bin_topic).chain(sub.on(&json_topic)) {
        assert_eq!(r.qos, 1, "{} QoS", r.topic);
    }
}

#[test]
fn json_mirrors_carry_the_binary_content_for_every_kind() {
    require_env!();
    let broker = Broker::start();
    let agent = Agent::start_with(&broker, "e2e-mirror", "pi-1", ALL_ON);
    let all = node_topic(&agent, "#");
    let mut sub = RawSub::start(&broker, &[&all]);
    let status_topic = node_topic(&agent, "status");
    sub.until("online status", T, |seen| {
        seen.iter().any(|r| {
            r.topic == status_topic
                && matches!(binary(r), Message::Status(s) if s.state == NodeState::Online)
        })
    });
    let files = tempfile::tempdir().expect("tempdir");
    let f = task_file(
        files.path(),
        "ticker",
        r#"{"family":"ticker","containerDefinitions":[{"name":"main","image":"busybox","entryPoint":["sh","-c"],"command":["while true; do echo tick; sleep 1; done"]}]}"#,
    );
    let out = agent.ctl(
        &broker,
        &["apply", f.to_str().expect("utf8"), "--node", "pi-1"],
    );
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A running task in status, its events, and metrics with its sample.
    sub.until("a running task in status, events and metrics", T, |seen| {
        let bins = |leaf: &str| {
            let t = node_topic(&agent, leaf);
            seen.iter()
                .filter(|r| r.topic == t)
                .map(binary)
                .collect::<Vec<_>>()
        };
        let running = bins("status").iter().any(|m| {
            matches!(m, Message::Status(s) if s.tasks.iter().any(|t| t.state == TaskState::Running))
        });
        let event = bins("events").iter().any(|m| {
            matches!(m, Message::Event(e) if matches!(e.body, EventBody::TaskRunning { .. }))
        });
        let sampled = bins("metrics")
            .iter()
            .filter(|m| matches!(m, Message::Metrics(x) if x.samples.iter().any(|s| !s.tasks.is_empty())))
            .count()
            >= 2;
        running && event && sampled
    });
    mirrors_match(&mut sub, &agent, "status", statuses);
    mirrors_match(&mut sub, &agent, "events", events);
    mirrors_match(&mut sub, &agent, "metrics", metrics);
    let ev: Vec<Event> = events(&sub, &agent);
    assert!(
        ev.iter()
            .any(|e| matches!(&e.body, EventBody::ContainerStarted { pid, .. } if *pid > 0)),
        "{ev:?}"
    );
    // The JSON shape a console sees (documented in docs/asyncapi.yaml).
    let running = sub
        .on(&node_topic(&agent, "events.json"))
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).expect("json"))
        .find(|v| v["body"]["TaskRunning"].is_object())
        .expect("a TaskRunning event as JSON");
    assert_eq!(running["body"]["TaskRunning"]["task"], "ticker");
    assert_eq!(running["node"], "pi-1");

    // Retained like the binary status: a console connecting now gets both, equal.
    let mut late = RawSub::start(
        &broker,
        &[
            &node_topic(&agent, "status"),
            &node_topic(&agent, "status.json"),
        ],
    );
    late.until("the retained status and status.json", T, |seen| {
        seen.len() >= 2
    });
    let status_json = node_topic(&agent, "status.json");
    let b = late.on(&status_topic).next().expect("binary status");
    let j = late.on(&status_json).next().expect("status.json");
    assert!(b.retained && j.retained, "{b:?} {j:?}");
    assert_eq!(Message::Status(json::<Status>(j)), binary(b));
    drop(late);

    // A clean exit says offline on both.
    let mut agent = agent;
    agent.terminate();
    sub.until("offline status.json", T, |seen| {
        seen.iter().any(|r| {
            r.topic.ends_with("/status.json") && json::<Status>(r).state == NodeState::Offline
        })
    });
    mirrors_match(&mut sub, &agent, "status", statuses);
}

#[test]
fn only_the_configured_kinds_are_mirrored() {
    require_env!();
    let broker = Broker::start();
    let off = Agent::start(&broker, "e2e-mirror-off", "pi-off");
    let some = Agent::start_with(
        &broker,
        "e2e-mirror-off",
        "pi-m",
        "[mirror_json]\nmetrics = true\n",
    );
    let mut sub = RawSub::start(&broker, &["skiff/v1/e2e-mirror-off/#"]);
    // Three metrics intervals of each agent: whatever they mirror has been published by then
    // (a mirror goes out right after its binary message).
    sub.until("3 metrics messages from each agent", T, |seen| {
        [&off, &some].iter().all(|a| {
            let t = node_topic(a, "metrics");
            seen.iter().filter(|r| r.topic == t).count() >= 3
        })
    });
    let json_topics = |a: &Agent| -> Vec<String> {
        let prefix = node_topic(a, "");
        let mut t: Vec<String> = sub
            .seen
            .iter()
            .filter(|r| r.topic.starts_with(&prefix) && r.topic.ends_with(".json"))
            .map(|r| r.topic.clone())
            .collect();
        t.sort();
        t.dedup();
        t
    };
    assert_eq!(json_topics(&off), Vec::<String>::new(), "mirror off");
    assert_eq!(json_topics(&some), vec![node_topic(&some, "metrics.json")]);
    assert!(
        sub.on(&node_topic(&some, "status")).count() >= 1
            && sub.on(&node_topic(&some, "events")).count() >= 1,
        "status and events went out in binary"
    );
    mirrors_match(&mut sub, &some, "metrics", metrics);
}

#[test]
fn what_the_outbox_sends_after_an_outage_is_mirrored() {
    require_env!();
    let broker = Broker::start();
    let port = broker.port;
    let agent = Agent::start_with(&broker, "e2e-mirror-outbox", "pi-1", ALL_ON);
    let mut sub = RawSub::start(&broker, &[&node_topic(&agent, "#")]);
    sub.until("first metrics", T, |seen| {
        seen.iter().any(|r| r.topic.ends_with("/metrics"))
    });
    drop(sub);
    drop(broker);
    // Metrics every second pile up in the outbox meanwhile.
    std::thread::sleep(Duration::from_secs(4));
    let back = crate::harness::wall_ms();
    let broker = Broker::start_on(port);
    let mut sub = RawSub::start(&broker, &[&node_topic(&agent, "#")]);
    sub.until("the queued metrics and a new status", T, |seen| {
        let m = node_topic(&agent, "metrics");
        seen.iter().filter(|r| r.topic == m).count() >= 4
            && seen.iter().any(|r| r.topic.ends_with("/status"))
    });
    // Some were sampled while the broker was down: they waited in the outbox.
    let queued = metrics(&sub, &agent)
        .iter()
        .flat_map(|m| m.samples.iter().map(|s| s.at_ms))
        .filter(|at| *at + 1000 < back)
        .count();
    assert!(queued >= 2, "{queued} samples from the outage");
    mirrors_match(&mut sub, &agent, "metrics", metrics);
    mirrors_match(&mut sub, &agent, "status", statuses);
}
