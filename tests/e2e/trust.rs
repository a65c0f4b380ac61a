//! Signed desired state end to end: an agent with a trusted fleet key runs only what that key
//! signed; unsigned, forged and replayed documents are rejected by name; keys rotate with signed
//! trust updates that survive a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_agent::trust::SigningKey;
use skiff_proto::codec::{encode, Message};
use skiff_proto::{DesiredState, EventBody, NodeState, TaskDefinition};

use crate::harness::{task_file, Agent, Broker, Sub};
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

fn task_json(family: &str) -> String {
    format!(
        r#"{{"family":"{family}","restartPolicy":"always","containerDefinitions":[{{"name":"main","image":"busybox","command":["sleep","600"]}}]}}"#
    )
}

fn keygen_cmd(dir: &Path, name: &str) -> std::process::Output {
    std::process::Command::new(crate::harness::SKIFF)
        .args(["ctl", "keygen", "--out"])
        .arg(dir)
        .args(["--name", name])
        .output()
        .expect("skiff ctl keygen")
}

/// `skiff ctl keygen` into `dir`: (private key, public key).
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let out = keygen_cmd(dir, name);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (key, public) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    (key, public)
}

#[test]
fn only_documents_signed_by_a_trusted_key_run_and_keys_rotate() {
    require_env!();
    let broker = Broker::start();
    let keys = tempfile::tempdir().expect("tempdir");
    let files = tempfile::tempdir().expect("tempdir");
    let (a_key, a_pub) = keygen(keys.path(), "fleet-a");
    let (b_key, b_pub) = keygen(keys.path(), "fleet-b");
    let again = keygen_cmd(keys.path(), "fleet-a");
    assert!(!again.status.success(), "keygen overwrote a key");
    assert!(text(&again.stderr).contains("refusing to overwrite"));

    let mut agent = Agent::start_with(
        &broker,
        "e2e-trust",
        "pi-1",
        &format!("[trust]\nkeys = [\"{}\"]\n", a_pub.display()),
    );
    let node_desired = format!("skiff/v1/{}/nodes/{}/desired", agent.cluster, agent.node);
    let events = format!("skiff/v1/{}/nodes/{}/events", agent.cluster, agent.node);
    let status = format!("skiff/v1/{}/nodes/{}/status", agent.cluster, agent.node);
    let mut sub = Sub::start(&broker, &[&events, &status]);
    sub.wait("online", T, |t, m| match m {
        Message::Status(s) if t == status && s.state == NodeState::Online => Some(()),
        _ => None,
    });
    let (a, b) = (a_key.to_str().expect("utf8"), b_key.to_str().expect("utf8"));
    let running = |sub: &mut Sub, family: &str| {
        sub.wait(&format!("{family} running"), T, |_, m| match event(m)? {
            EventBody::TaskRunning { task } if task.as_str() == family => Some(()),
            _ => None,
        })
    };
    let rejected = |sub: &mut Sub, what: &str, prefix: &str| -> String {
        sub.wait(what, T, |_, m| match event(m)? {
            EventBody::DesiredRejected { reason, .. } if reason.starts_with(prefix) => {
                Some(reason.clone())
            }
            _ => None,
        })
    };

    // Signed with the trusted key: runs.
    let web = task_file(files.path(), "web", &task_json("web"));
    let web = web.to_str().expect("utf8");
    let out = agent.ctl(&broker, &["apply", web, "--node", "pi-1", "--sign-key", a]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    running(&mut sub, "web");

    // Unsigned: rejected, and the console says why.
    let evil = task_file(files.path(), "evil", &task_json("evil"));
    let evil = evil.to_str().expect("utf8");
    let out = agent.ctl(&broker, &["apply", evil, "--node", "pi-1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("rejected version") && text(&out.stderr).contains("unsigned: "),
        "{}",
        text(&out.stderr)
    );

    // Forged: a signed document with one byte flipped on the way, published raw.
    let signer = SigningKey::load(&a_key).expect("load key");
    let def: TaskDefinition = skiff_agent::local::read_task_file(Path::new(web)).expect("def");
    let (cluster, node) = (agent.cluster.clone(), agent.node.clone());
    let doc = |version: u64, marker: &str| {
        let mut def = def.clone();
        def.containers[0].command = vec!["sleep".into(), marker.into()];
        let mut d = DesiredState {
            version,
            cluster: cluster.parse().expect("name"),
            node: Some(node.parse().expect("name")),
            tasks: vec![def],
            signature: None,
        };
        signer.sign_desired(&mut d).expect("sign");
        encode(&Message::DesiredState(d)).expect("encode")
    };
    let mut forged = doc(u64::MAX / 2, "6000");
    let at = forged
        .windows(4)
        .position(|w| w == b"6000")
        .expect("marker in the payload");
    forged[at] = b'9'; // sleep 9000
    broker.publish_raw(&node_desired, &forged, false);
    let why = rejected(&mut sub, "forged document rejected", "forged: ");
    assert!(why.contains(signer.public().key_id.as_str()), "{why}");

    // Replayed: validly signed, but older than what runs.
    broker.publish_raw(&node_desired, &doc(3, "700"), false);
    let why = rejected(&mut sub, "replayed document rejected", "replayed: ");
    assert!(why.contains("version 3 is not newer"), "{why}");

    // Rotation: trust B (signed by A), retire A (signed by B: the node's document, signed by
    // A, is re-signed with B first), then B signs and A is refused.
    let out = agent.ctl(
        &broker,
        &[
            "trust",
            "add",
            b_pub.to_str().expect("utf8"),
            "--node",
            "pi-1",
            "--sign-key",
            a,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let a_id = signer.public().key_id.to_string();
    let b_id = SigningKey::load(&b_key)
        .expect("b")
        .public()
        .key_id
        .to_string();
    assert!(text(&out.stdout).contains(&b_id), "{}", text(&out.stdout));
    let out = agent.ctl(
        &broker,
        &[
            "trust",
            "retire",
            a_pub.to_str().expect("utf8"),
            "--node",
            "pi-1",
            "--sign-key",
            b,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("re-signing node pi-1's desired state"));
    sub.wait("trust updated", T, |_, m| match event(m)? {
        EventBody::TrustUpdated { keys, .. } if keys.len() == 1 && keys[0].as_str() == b_id => {
            Some(())
        }
        _ => None,
    });
    let api = task_file(files.path(), "api", &task_json("api"));
    let api = api.to_str().expect("utf8");
    let out = agent.ctl(&broker, &["apply", api, "--node", "pi-1", "--sign-key", b]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    running(&mut sub, "api");
    // (The console checks what it builds on with the keys it knows: B's, given here.)
    let out = agent.ctl(
        &broker,
        &[
            "apply",
            evil,
            "--node",
            "pi-1",
            "--sign-key",
            a,
            "--trusted-key",
            b_pub.to_str().expect("utf8"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains(&format!("unknown key: desired state signed by key {a_id}")),
        "{}",
        text(&out.stderr)
    );
    // A trust update signed by the retired key is refused too.
    let out = agent.ctl(
        &broker,
        &[
            "trust",
            "add",
            a_pub.to_str().expect("utf8"),
            "--node",
            "pi-1",
            "--sign-key",
            a,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown key: "),
        "{}",
        text(&out.stderr)
    );

    sub.drain();
    let evil_ran = sub.seen.iter().any(|(_, m)| {
        matches!(event(m), Some(EventBody::TaskStarting { task, .. }) if task.as_str() == "evil")
    });
    assert!(!evil_ran, "an unsigned or retired-key task started");
    // Without B's key, the console refuses to sign on top of a document it can't verify.
    let out = agent.ctl(&broker, &["apply", evil, "--node", "pi-1", "--sign-key", a]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("that this change builds on does not verify"),
        "{}",
        text(&out.stderr)
    );

    // After a restart (power cut) the rotation holds (the config still lists A) and what B
    // signed runs again.
    agent.kill9();
    let mut sub = Sub::start(&broker, &[&events]);
    agent.restart();
    running(&mut sub, "api");
    broker.publish_raw(&node_desired, &doc(u64::MAX / 2, "800"), false);
    rejected(&mut sub, "retired key after restart", "unknown key: ");
    let log = agent.stderr.lock().expect("log").clone();
    assert!(!log.contains("desired state is NOT verified"), "{log}");
}

#[test]
fn an_agent_without_trusted_keys_warns_that_nothing_is_verified() {
    require_env!();
    let broker = Broker::start();
    let agent = Agent::start(&broker, "e2e-untrusted", "pi-1");
    crate::harness::wait_for("the warning", T, || {
        let log = agent.stderr.lock().expect("log").clone();
        log.contains("desired state is NOT verified").then_some(())
    });
}
