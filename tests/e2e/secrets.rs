//! Sealed secrets end to end: a value sealed with `skiff ctl seal` reaches the container as an
//! environment variable (the container prints its hash) and appears nowhere else: not in the
//! run dir (bundles, config.json, logs), the data dir (state, outbox), the agent's log, or any
//! message on the broker. A tampered value or one sealed to another node fails the task, naming
//! the container and the secret.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use skiff_proto::codec::Message;
use skiff_proto::{EventBody, NodeState};

use crate::harness::{task_file, Agent, Broker, Sub, SKIFF};
use crate::require_env;

const T: Duration = Duration::from_secs(30);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn event(m: &Message) -> Option<&EventBody> {
    match m {
        Message::Event(e) => Some(&e.body),
        _ => None,
    }
}

/// `skiff ctl seal` with `value` on stdin.
fn seal(broker: &Broker, agent: &Agent, extra: &[&str], value: &str) -> String {
    let mut child = Command::new(SKIFF)
        .args([
            "ctl",
            "--broker",
            &broker.url(),
            "--cluster",
            &agent.cluster,
        ])
        .args(["seal", "--node", &agent.node])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("skiff ctl seal");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{value}\n").as_bytes())
        .expect("write the secret");
    let out = child.wait_with_output().expect("seal output");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sealed = text(&out.stdout).trim().to_string();
    assert!(sealed.starts_with("skiff-sealed:v1:"), "{sealed}");
    sealed
}

fn task_json(family: &str, sealed: &str) -> String {
    format!(
        r#"{{"family":"{family}","containerDefinitions":[{{"name":"main","image":"busybox",
        "entryPoint":["sh","-c"],"command":["printf %s \"$DB_PASSWORD\" | sha256sum; sleep 600"],
        "secrets":[{{"name":"DB_PASSWORD","valueFrom":"{sealed}"}}]}}]}}"#
    )
}

/// Every regular file under `dir` (symlinks not followed, FIFOs and devices skipped) that
/// contains `needle`.
fn files_containing(dir: &Path, needle: &[u8], found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            files_containing(&p, needle, found);
        } else if meta.is_file() {
            if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(p.display().to_string());
                }
            }
        }
    }
}

#[test]
fn a_sealed_secret_reaches_its_container_and_nothing_else() {
    require_env!();
    let broker = Broker::start();
    let agent = Agent::start(&broker, "e2e-secrets", "pi-1");
    let all = format!("skiff/v1/{}/#", agent.cluster);
    let mut sub = Sub::start(&broker, &[&all]);
    let status = format!("skiff/v1/{}/nodes/{}/status", agent.cluster, agent.node);
    sub.wait("online", T, |t, m| match m {
        Message::Status(s) if t == status && s.state == NodeState::Online => Some(()),
        _ => None,
    });
    // A value no other file could hold by chance.
    let value = format!("s3cret-{}", crate::harness::wall_ms());
    let files = tempfile::tempdir().expect("tempdir");

    // The key asked from the node over the broker, and the key from its node.pub: both work.
    let sealed = seal(&broker, &agent, &[], &value);
    let node_pub = agent.dir.path().join("data/node.pub");
    let sealed_too = seal(
        &broker,
        &agent,
        &["--node-key", node_pub.to_str().expect("utf8")],
        &value,
    );
    assert_ne!(sealed, sealed_too, "each seal uses a fresh ephemeral key");

    let f = task_file(files.path(), "db", &task_json("db", &sealed));
    let out = agent.ctl(
        &broker,
        &["apply", f.to_str().expect("utf8"), "--node", "pi-1"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    sub.wait("db running", T, |_, m| match event(m)? {
        EventBody::TaskRunning { task } if task.as_str() == "db" => Some(()),
        _ => None,
    });
    let want = hex::encode(Sha256::digest(value.as_bytes()));
    crate::harness::wait_for("the container's hash of the secret", T, || {
        let out = agent.ctl(&broker, &["logs", "db", "--node", "pi-1"]);
        text(&out.stdout).contains(&want).then_some(())
    });

    // Tampered on the way, and sealed to another node: the task fails, naming the secret.
    let mut tampered = sealed_too.clone().into_bytes();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("utf8");
    let other = tempfile::tempdir().expect("tempdir");
    let init = Command::new(SKIFF)
        .args(["node", "init", "--data-dir"])
        .arg(other.path())
        .output()
        .expect("node init");
    let other_key = text(&init.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("x25519:"))
        .expect("a key")
        .to_string();
    let elsewhere = seal(&broker, &agent, &["--node-key", &other_key], &value);
    for (family, bad) in [("tampered", &tampered), ("elsewhere", &elsewhere)] {
        let f = task_file(files.path(), family, &task_json(family, bad));
        let out = agent.ctl(
            &broker,
            &["apply", f.to_str().expect("utf8"), "--node", "pi-1"],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let reason = sub.wait(&format!("{family} failed"), T, |_, m| match event(m)? {
            EventBody::TaskFailed { task, reason } if task.as_str() == family => {
                Some(reason.clone())
            }
            _ => None,
        });
        assert!(
            reason.starts_with("container main: secret DB_PASSWORD: cannot be opened"),
            "{reason}"
        );
    }

    // Nowhere but in the container: no file of the agent (run dir with the bundles'
    // config.json and logs, data dir with the state and outbox, config), not its log, not a
    // message on the broker.
    sub.drain();
    let mut found = Vec::new();
    files_containing(agent.dir.path(), value.as_bytes(), &mut found);
    assert!(found.is_empty(), "the secret is in {found:?}");
    let mut env_entries = Vec::new();
    files_containing(&agent.run_dir(), b"DB_PASSWORD=", &mut env_entries);
    assert!(
        env_entries.is_empty(),
        "no bundle sets the variable: {env_entries:?}"
    );
    let log = agent.stderr.lock().expect("log").clone();
    assert!(!log.contains(&value), "the secret is in the agent's log");
    for (topic, m) in &sub.seen {
        assert!(
            !format!("{m:?}").contains(&value),
            "the secret is in a message on {topic}"
        );
    }
}
