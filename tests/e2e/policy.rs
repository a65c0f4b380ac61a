//! The node's policy end to end: an agent with a policy file opening one capability; a task
//! adding it runs and its container reads exactly that set (and the seccomp filter) in
//! `/proc/self/status`; documents asking for more (another capability, privileged, a host
//! path) are rejected naming the rule (by the agent and in `skiff ctl apply`'s answer), and the
//! running task is untouched.

use std::time::Duration;

use skiff_proto::codec::Message;
use skiff_proto::{EventBody, NodeState};

use crate::harness::{task_file, Agent, Broker, Sub};
use crate::require_env;

const T: Duration = Duration::from_secs(30);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn task_json(family: &str, container_extra: &str, task_extra: &str) -> String {
    format!(
        r#"{{"family":"{family}",{task_extra}"containerDefinitions":[{{"name":"main","image":"busybox",
        "entryPoint":["sh","-c"],
        "command":["grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; sleep 600"]{container_extra}}}]}}"#
    )
}

#[test]
fn the_node_policy_bounds_what_desired_state_may_ask() {
    require_env!();
    let broker = Broker::start();
    let files = tempfile::tempdir().expect("tempdir");
    let policy = files.path().join("policy.toml");
    std::fs::write(
        &policy,
        "capabilities = [\"NET_ADMIN\"]\nhost_paths = [\"/srv/skiff-e2e\"]\n",
    )
    .expect("policy");
    let agent = Agent::start_with(
        &broker,
        "e2e-policy",
        "pi-1",
        &format!("policy_file = {:?}\n", policy.to_str().expect("utf8")),
    );
    let all = format!("skiff/v1/{}/#", agent.cluster);
    let mut sub = Sub::start(&broker, &[&all]);
    let status = format!("skiff/v1/{}/nodes/{}/status", agent.cluster, agent.node);
    sub.wait("online", T, |t, m| match m {
        Message::Status(s) if t == status && s.state == NodeState::Online => Some(()),
        _ => None,
    });
    // `skiff ctl apply`: upserts into the node's retained document, waits for the verdict.
    let apply = |family: &str, json: &str| {
        let f = task_file(files.path(), family, json);
        agent.ctl(
            &broker,
            &["apply", f.to_str().expect("utf8"), "--node", "pi-1"],
        )
    };
    let event = |m: &Message| match m {
        Message::Event(e) => Some(e.body.clone()),
        _ => None,
    };

    // Allowed: NET_ADMIN on top of nothing.
    let out = apply(
        "net",
        &task_json(
            "net",
            r#","linuxParameters":{"capabilities":{"drop":["ALL"],"add":["NET_ADMIN"]}}"#,
            "",
        ),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    sub.wait("net running", T, |_, m| match event(m)? {
        EventBody::TaskRunning { task } if task.as_str() == "net" => Some(()),
        _ => None,
    });
    let log = crate::harness::wait_for("the container's capabilities", T, || {
        let out = agent.ctl(&broker, &["logs", "net", "--node", "pi-1"]);
        let s = text(&out.stdout);
        s.contains("Seccomp").then_some(s)
    });
    assert!(log.contains("CapEff:\t0000000000001000"), "{log}");
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");
    assert!(log.contains("Seccomp:\t2"), "{log}");

    // Each of these is refused as a whole document, naming the rule; "net" keeps running.
    let policy_path = policy.display().to_string();
    for (family, container_extra, task_extra, want) in [
        (
            "admin",
            r#","linuxParameters":{"capabilities":{"add":["SYS_ADMIN"]}}"#,
            "",
            format!("task admin: container main capability SYS_ADMIN is not allowed on this node (rule capabilities in {policy_path})"),
        ),
        (
            "priv",
            r#","privileged":true"#,
            "",
            format!("task priv: container main privileged is not allowed on this node (rule privileged = false in {policy_path})"),
        ),
        (
            "etc",
            r#","mountPoints":[{"sourceVolume":"etc","containerPath":"/host-etc"}]"#,
            r#""volumes":[{"name":"etc","host":{"sourcePath":"/etc"}}],"#,
            format!("task etc: volume etc on host path /etc is not allowed on this node (rule host_paths in {policy_path})"),
        ),
    ] {
        let out = apply(family, &task_json(family, container_extra, task_extra));
        assert!(!out.status.success(), "{family} was accepted");
        assert!(text(&out.stderr).contains(&want), "{}", text(&out.stderr));
        let reason = sub.wait(&format!("{family} rejected"), T, |_, m| match event(m)? {
            EventBody::DesiredRejected { reason, .. }
                if reason.starts_with(&format!("task {family}:")) =>
            {
                Some(reason)
            }
            _ => None,
        });
        assert_eq!(reason, want);
        // The console put the previous document back: the next one starts from it.
    }
    sub.drain();
    for (_, m) in &sub.seen {
        if let Some(EventBody::TaskStopped { task, .. }) = event(m) {
            assert_ne!(
                task.as_str(),
                "net",
                "a rejected document stopped a running task"
            );
        }
    }
    let out = agent.ctl(&broker, &["nodes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
