//! The walking skeleton: a task definition over MQTT becomes a running container, and its status,
//! events, logs and metrics come back.

use std::time::Duration;

use skiff_proto::codec::{encode, header_bytes, Kind, Message};
use skiff_proto::{ContainerState, EventBody, NodeState, Status, StopReason, TaskState};

use crate::harness::{task_file, Agent, Broker, Sub};
use crate::require_env;

const T: Duration = Duration::from_secs(30);

fn events_topic(a: &Agent) -> String {
    format!("skiff/v1/{}/nodes/{}/events", a.cluster, a.node)
}

fn status_topic(a: &Agent) -> String {
    format!("skiff/v1/{}/nodes/{}/status", a.cluster, a.node)
}

fn node_desired(a: &Agent) -> String {
    format!("skiff/v1/{}/nodes/{}/desired", a.cluster, a.node)
}

fn shell_task(family: &str, script: &str, extra: &str) -> String {
    format!(
        r#"{{"family":"{family}",{extra}"containerDefinitions":[{{"name":"main","image":"busybox","entryPoint":["sh","-c"],"command":["{script}"]}}]}}"#
    )
}

fn event(m: &Message) -> Option<&EventBody> {
    match m {
        Message::Event(e) => Some(&e.body),
        _ => None,
    }
}

fn status(m: &Message) -> Option<&Status> {
    match m {
        Message::Status(s) => Some(s),
        _ => None,
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits for the agent's first online status (it is connected and subscribed).
fn online(sub: &mut Sub, a: &Agent) {
    let topic = status_topic(a);
    sub.wait("online status", T, |t, m| {
        (t == topic && status(m)?.state == NodeState::Online).then_some(())
    });
}

#[test]
fn a_task_prints_exits_zero_and_its_log_comes_back() {
    require_env!();
    let broker = Broker::start();
    let agent = Agent::start(&broker, "e2e-hello", "pi-1");
    let mut sub = Sub::start(&broker, &[&events_topic(&agent), &status_topic(&agent)]);
    online(&mut sub, &agent);
    let files = tempfile::tempdir().expect("tempdir");
    let f = task_file(
        files.path(),
        "hello",
        &shell_task("hello", "echo hello from $HOSTNAME; exit 0", ""),
    );
    let out = agent.ctl(
        &broker,
        &["apply", f.to_str().expect("utf8"), "--node", "pi-1"],
    );
    assert!(out.status.success(), "apply failed: {}", stderr(&out));
    assert!(
        stdout(&out).contains("pi-1: applied version"),
        "{}",
        stdout(&out)
    );

    sub.wait("container started", T, |_, m| match event(m)? {
        EventBody::ContainerStarted { task, pid, .. } if task.as_str() == "hello" => Some(*pid),
        _ => None,
    });
    let exit = sub.wait("container exited", T, |_, m| match event(m)? {
        EventBody::ContainerExited { task, exit, .. } if task.as_str() == "hello" => Some(*exit),
        _ => None,
    });
    assert_eq!((exit.code, exit.signal, exit.oom_killed), (0, None, false));
    sub.wait("task stopped", T, |_, m| match event(m)? {
        EventBody::TaskStopped {
            task,
            reason: StopReason::EssentialExited,
            exit: Some(e),
        } if task.as_str() == "hello" => (e.code == 0).then_some(()),
        _ => None,
    });
    let st = sub.wait("stopped status", T, |_, m| {
        let s = status(m)?;
        let t = s.tasks.iter().find(|t| t.name.as_str() == "hello")?;
        (t.state == TaskState::Stopped).then(|| s.clone())
    });
    assert!(st.node_version > 0);
    assert_eq!(st.agent_version, env!("CARGO_PKG_VERSION"));

    let logs = agent.ctl(&broker, &["logs", "hello", "--node", "pi-1"]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    assert_eq!(stdout(&logs), "hello from hello\n");
    // On the device itself.
    let local = std::process::Command::new(crate::harness::SKIFF)
        .args(["logs", "hello", "--config"])
        .arg(agent.config())
        .output()
        .expect("skiff logs");
    assert_eq!(stdout(&local), "hello from hello\n", "{}", stderr(&local));
    assert!(
        agent.leftover_cgroups().is_empty(),
        "cgroups left: {:?}",
        agent.leftover_cgroups()
    );
}

#[test]
fn exit_codes_and_oom_kills_are_reported() {
    require_env!();
    let broker = Broker::start();
    let agent = Agent::start(&broker, "e2e-exit", "pi-1");
    let mut sub = Sub::start(&broker, &[&events_topic(&agent), &status_topic(&agent)]);
    online(&mut sub, &agent);
    let files = tempfile::tempdir().expect("tempdir");
    let three = task_file(files.path(), "three", &shell_task("three", "exit 3", ""));
    let oom = task_file(
        files.path(),
        "hog",
        r#"{"family":"hog","memory":"16","containerDefinitions":[{"name":"main","image":"busybox","memory":16,
            "command":["dd","if=/dev/zero","of=/dev/null","bs=64M","count=1"]}]}"#,
    );
    let out = agent.ctl(
        &broker,
        &[
            "apply",
            three.to_str().expect("utf8"),
            oom.to_str().expect("utf8"),
            "--node",
            "pi-1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut exits = std::collections::BTreeMap::new();
    while exits.len() < 2 {
        let (task, exit) = sub.wait("both exits", T, |_, m| match event(m)? {
            EventBody::ContainerExited { task, exit, .. } if !exits.contains_key(task.as_str()) => {
                Some((task.to_string(), *exit))
            }
            _ => None,
        });
        exits.insert(task, exit);
    }
    let three = exits["three"];
    assert_eq!(
        (three.code, three.signal, three.oom_killed),
        (3, None, false)
    );
    let hog = exits["hog"];
    assert_eq!(
        (hog.code, hog.signal, hog.oom_killed),
        (137, Some(9), true),
        "{hog:?}"
    );
    // And `skiff ctl watch` shows it the way a human reads it.
    let watch = agent.ctl(
        &broker,
        &[
            "watch",
            "--events-only",
            "--status",
            "--count",
            "1",
            "--duration",
            "5",
        ],
    );
    assert!(watch.status.success());
}

#[test]
fn a_service_with_restart_always_restarts_and_removal_cleans_up() {
    require_env!();
    let broker = Broker::start();
    let agent = Agent::start(&broker, "e2e-svc", "pi-1");
    let mut sub = Sub::start(&broker, &[&events_topic(&agent), &status_topic(&agent)]);
    online(&mut sub, &agent);
    let files = tempfile::tempdir().expect("tempdir");
    let flappy = task_file(
        files.path(),
        "flappy",
        &shell_task("flappy", "echo up; exit 1", r#""restartPolicy":"always","#),
    );
    let steady = task_file(
        files.path(),
        "steady",
        &shell_task("steady", "exec sleep 1000", r#""restartPolicy":"always","#),
    );
    let out = agent.ctl(
        &broker,
        &[
            "apply",
            flappy.to_str().expect("utf8"),
            steady.to_str().expect("utf8"),
            "--node",
            "pi-1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut starts = 0;
    while starts < 3 {
        sub.wait("flappy restarted", T, |_, m| match event(m)? {
            EventBody::TaskStarting { task, attempt, .. }
                if task.as_str() == "flappy" && *attempt > starts =>
            {
                starts = *attempt;
                Some(())
            }
            _ => None,
        });
    }
    let st = sub.wait("status with restarts", T, |_, m| {
        let s = status(m)?;
        let t = s.tasks.iter().find(|t| t.name.as_str() == "flappy")?;
        (t.restarts >= 2).then(|| s.clone())
    });
    let flappy = st
        .tasks
        .iter()
        .find(|t| t.name.as_str() == "flappy")
        .expect("flappy");
    assert_eq!(flappy.last_exit.map(|e| e.code), Some(1));

    // Removal: stop both; `steady` (sleep as pid 1 ignores SIGTERM) is killed after the grace.
    let out = agent.ctl(&broker, &["stop", "steady", "--node", "pi-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exit = sub.wait("steady killed", T, |_, m| match event(m)? {
        EventBody::ContainerExited { task, exit, .. } if task.as_str() == "steady" => Some(*exit),
        _ => None,
    });
    assert_eq!(
        exit.signal,
        Some(9),
        "sleep ignores SIGTERM as pid 1: SIGKILL after the grace period"
    );
    sub.wait("steady removed", T, |_, m| match event(m)? {
        EventBody::TaskStopped {
            task,
            reason: StopReason::Removed,
            ..
        } if task.as_str() == "steady" => Some(()),
        _ => None,
    });
    let out = agent.ctl(&broker, &["stop", "flappy", "--node", "pi-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    sub.wait("no tasks left", T, |_, m| {
        status(m)?.tasks.is_empty().then_some(())
    });
    crate::harness::wait_for("cgroups removed", T, || {
        agent.leftover_cgroups().is_empty().then_some(())
    });
    let state = agent.run_dir().join("state");
    let left: Vec<_> = std::fs::read_dir(&state)
        .map(|d| d.filter_map(Result::ok).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "container state left in {}: {left:?}",
        state.display()
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(agent.run_dir().to_str().expect("utf8")),
        "mounts left under the run dir"
    );
}

#[test]
fn bad_input_is_rejected_by_name_and_the_running_task_is_untouched() {
    require_env!();
    let broker = Broker::start();
    // Pull policy `never`: an image missing from the store is then bad input, rejected whole.
    // (With pulls allowed the agent pulls it instead; tests/e2e/images.rs covers that.)
    let agent = Agent::start_with(
        &broker,
        "e2e-bad",
        "pi-1",
        "[images]\npull_policy = \"never\"\n",
    );
    let mut sub = Sub::start(&broker, &[&events_topic(&agent), &status_topic(&agent)]);
    online(&mut sub, &agent);
    let files = tempfile::tempdir().expect("tempdir");
    let web = task_file(
        files.path(),
        "web",
        &shell_task("web", "exec sleep 1000", r#""restartPolicy":"always","#),
    );
    assert!(agent
        .ctl(
            &broker,
            &["apply", web.to_str().expect("utf8"), "--node", "pi-1"]
        )
        .status
        .success());
    let pid = sub.wait("web running", T, |_, m| {
        let t = status(m)?
            .tasks
            .iter()
            .find(|t| t.name.as_str() == "web" && t.state == TaskState::Running)?;
        t.containers
            .first()
            .filter(|c| c.state == ContainerState::Running)?
            .pid
    });

    let desired = node_desired(&agent);
    let valid = {
        let msg = Message::Command(skiff_proto::Command {
            id: 1,
            body: skiff_proto::CommandBody::Ping,
        });
        encode(&msg).expect("encode")
    };
    let mut oversized = header_bytes(Kind::DesiredState).to_vec();
    oversized.resize(200 * 1024, 7);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"\x00\x01garbage bytes".to_vec(), "bad magic"),
        (
            "truncated",
            b"SK\x01\x01\x05".to_vec(),
            "malformed desired_state message",
        ),
        ("oversized", oversized, "larger than the 131072-byte limit"),
        (
            "unknown kind",
            b"SK\x01\x63rest".to_vec(),
            "unsupported message kind 99",
        ),
        (
            "wrong kind",
            valid,
            "expected a desired_state message, got a command message",
        ),
    ];
    for (what, payload, reason) in cases {
        broker.publish_raw(&desired, &payload, false);
        let got = sub.wait(what, T, |_, m| match event(m)? {
            EventBody::DesiredRejected { reason: r, .. } if r.contains(reason) => Some(r.clone()),
            _ => None,
        });
        eprintln!("{what}: rejected: {got}");
    }

    // An unknown field never leaves the console.
    let typo = task_file(
        files.path(),
        "typo",
        r#"{"family":"typo","containerDefinitions":[{"name":"m","image":"busybox","hostname":"box"}]}"#,
    );
    let out = agent.ctl(
        &broker,
        &["apply", typo.to_str().expect("utf8"), "--node", "pi-1"],
    );
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("containerDefinitions[0].hostname: not supported by skiff"),
        "{}",
        stderr(&out)
    );
    // An image that is not in the store: the agent rejects it, the console says why and puts back
    // the previous document.
    let ghost = task_file(
        files.path(),
        "ghost",
        &shell_task("ghost", "true", "").replace("\"busybox\"", "\"ghost:1.0\""),
    );
    let out = agent.ctl(
        &broker,
        &["apply", ghost.to_str().expect("utf8"), "--node", "pi-1"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("image docker.io/library/ghost:1.0 is not in the local store"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("restored the previous desired state"),
        "{}",
        stderr(&out)
    );
    let shown = agent.ctl(&broker, &["desired", "--node", "pi-1"]);
    assert!(
        stdout(&shown).contains("\"web\"") && !stdout(&shown).contains("ghost"),
        "{}",
        stdout(&shown)
    );

    // Through all of it `web` kept running, same process, and the agent is alive.
    sub.drain();
    let last = sub
        .seen
        .iter()
        .rev()
        .find_map(|(t, m)| (*t == status_topic(&agent)).then(|| status(m)).flatten())
        .expect("a status");
    let t = last
        .tasks
        .iter()
        .find(|t| t.name.as_str() == "web")
        .expect("web still desired");
    assert_eq!(
        (t.state, t.containers[0].pid),
        (TaskState::Running, Some(pid))
    );
    assert!(nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent.pid()).expect("pid")),
        None
    )
    .is_ok());
    let nodes = agent.ctl(&broker, &["nodes"]);
    assert!(
        stdout(&nodes).contains("pi-1") && stdout(&nodes).contains("online"),
        "{}",
        stdout(&nodes)
    );
}

#[test]
fn cluster_apply_metrics_and_the_last_will() {
    require_env!();
    let broker = Broker::start();
    let mut a = Agent::start(&broker, "e2e-fleet", "pi-1");
    let b = Agent::start(&broker, "e2e-fleet", "pi-2");
    let mut sub = Sub::start(
        &broker,
        &[
            "skiff/v1/e2e-fleet/nodes/+/status",
            "skiff/v1/e2e-fleet/nodes/+/metrics",
        ],
    );
    for n in ["pi-1", "pi-2"] {
        sub.wait("both online", T, |t, m| {
            (t.contains(n) && status(m)?.state == NodeState::Online).then_some(())
        });
    }
    let files = tempfile::tempdir().expect("tempdir");
    let busy = task_file(
        files.path(),
        "busy",
        &shell_task(
            "busy",
            "while true; do :; done",
            r#""restartPolicy":"always","memory":"64","#,
        ),
    );
    let out = a.ctl(&broker, &["apply", busy.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("pi-1: applied") && text.contains("pi-2: applied"),
        "{text}"
    );
    // A busy loop shows up as CPU in the task's metrics, and memory comes from its cgroup.
    let (cpu, mem, limit) = sub.wait("busy task metrics", T, |t, m| match m {
        Message::Metrics(mm) if t.contains("pi-2") => mm.samples.iter().find_map(|s| {
            let ts = s.tasks.iter().find(|ts| ts.task.as_str() == "busy")?;
            (ts.cpu_pct > 20.0).then_some((ts.cpu_pct, ts.mem_bytes, ts.mem_limit_bytes))
        }),
        _ => None,
    });
    assert!(
        cpu < 250.0 && mem > 0 && mem < 64 << 20,
        "cpu {cpu} mem {mem}"
    );
    assert_eq!(limit, Some(64 << 20));
    let nodes = a.ctl(&broker, &["nodes", "--json"]);
    assert_eq!(stdout(&nodes).lines().count(), 2, "{}", stdout(&nodes));

    // A power cut: the broker publishes the last will (keepalive 5 s → within ~8 s).
    a.kill9();
    sub.wait("pi-1 offline by last will", T, |t, m| {
        (t.contains("pi-1") && status(m)?.state == NodeState::Offline).then_some(())
    });
    drop(b);
    sub.wait("pi-2 offline after a clean stop", T, |t, m| {
        (t.contains("pi-2") && status(m)?.state == NodeState::Offline).then_some(())
    });
}
