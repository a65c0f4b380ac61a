//! The cluster queue end to end: `skiff ctl run --count N` offers copies of a task through a
//! real mosquitto's shared subscription to real agents running real containers. Every copy runs
//! exactly once (checked in the run history each agent keeps on disk, not only in events), a
//! node without room hands copies back and they run elsewhere, and an agent that dies in the
//! middle of an offer (before deciding, or after saving its decision but before acknowledging
//! it to the broker) loses and duplicates nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_proto::codec::Message;
use skiff_proto::EventBody;

use crate::harness::{task_file, Agent, Broker, Sub, SKIFF};
use crate::require_env;

const T: Duration = Duration::from_secs(90);

fn job_json(family: &str) -> String {
    format!(
        r#"{{"family":"{family}","memory":"32","restartPolicy":"never","containerDefinitions":[{{"name":"main","image":"busybox","command":["sh","-c","sleep 1; echo copy done"]}}]}}"#
    )
}

/// Runs this agent recorded for a task, from its durable history (`skiff history`).
fn runs(agent: &Agent, task: &str) -> usize {
    let out = Command::new(SKIFF)
        .args(["history", "--config"])
        .arg(agent.config())
        .args([task, "--json"])
        .output()
        .expect("skiff history");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Queue events seen: per copy id, the nodes that claimed it, handed it back, finished it.
#[derive(Debug, Default)]
struct Seen {
    claimed: BTreeMap<String, BTreeSet<String>>,
    handed_back: BTreeMap<String, BTreeSet<String>>,
    finished: BTreeMap<String, BTreeSet<(String, bool)>>,
}

fn seen(sub: &mut Sub) -> Seen {
    sub.drain();
    let mut s = Seen::default();
    for (_, m) in &sub.seen {
        let Message::Event(ev) = m else { continue };
        let node = ev.node.to_string();
        match &ev.body {
            EventBody::QueueClaimed { request, .. } => {
                s.claimed
                    .entry(request.to_string())
                    .or_default()
                    .insert(node);
            }
            EventBody::QueueHandedBack { request, .. } => {
                s.handed_back
                    .entry(request.to_string())
                    .or_default()
                    .insert(node);
            }
            EventBody::QueueFinished { request, ok, .. } => {
                s.finished
                    .entry(request.to_string())
                    .or_default()
                    .insert((node, *ok));
            }
            _ => {}
        }
    }
    s
}

/// [`seen`] once the subscriber has the end of each of `ids` (the console saw the last one
/// end; the independent subscriber may get it a moment later).
fn seen_finished(sub: &mut Sub, ids: &[String]) -> Seen {
    for id in ids {
        sub.wait(&format!("{id} finished"), T, |_, m| match m {
            Message::Event(e) => matches!(&e.body,
                EventBody::QueueFinished { request, .. } if request.to_string() == *id)
            .then_some(()),
            _ => None,
        });
    }
    seen(sub)
}

/// The copy ids `skiff ctl run` printed (`offered N copies of F to cluster C (id, id...)`).
fn offered_ids(stdout: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("offered "))
        .unwrap_or_else(|| panic!("no 'offered' line in:\n{stdout}"));
    let list = line
        .rsplit_once('(')
        .and_then(|(_, l)| l.strip_suffix(')'))
        .expect("id list");
    list.split(", ").map(str::to_string).collect()
}

#[test]
fn each_copy_runs_once_and_a_full_node_hands_back() {
    require_env!();
    let broker = Broker::start();
    let cluster = "qc";
    let files = tempfile::tempdir().expect("tempdir");
    let mut sub = Sub::start(&broker, &[&format!("skiff/v1/{cluster}/nodes/+/events")]);
    // `full` has room for nothing that reserves 32 MiB; the others for two copies each.
    let full = Agent::start_with(&broker, cluster, "full", "[queue]\nmemory_mib = 16\n");
    let a = Agent::start_with(&broker, cluster, "a", "[queue]\nmax_tasks = 2\n");
    let b = Agent::start_with(&broker, cluster, "b", "[queue]\nmax_tasks = 2\n");
    let nodes = [&full, &a, &b];
    for ag in nodes {
        let node = ag.node.clone();
        sub.wait("agent connected", T, |_, m| match m {
            Message::Event(e) if e.node.as_str() == node => Some(()),
            _ => None,
        });
    }
    let task = task_file(files.path(), "job", &job_json("job"));
    let out = a.ctl(
        &broker,
        &[
            "run",
            task.to_str().expect("utf-8"),
            "--count",
            "10",
            "--max-offers",
            "20",
            "--wait-secs",
            "120",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ctl run failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = offered_ids(&stdout);
    assert_eq!(ids.len(), 10);
    assert!(stdout.contains("ran on "), "{stdout}");

    // Independently of the console: what the agents published, and what they recorded.
    let s = seen_finished(&mut sub, &ids);
    for id in &ids {
        let claimers = s.claimed.get(id).cloned().unwrap_or_default();
        assert_eq!(claimers.len(), 1, "{id} claimed by {claimers:?}");
        assert!(!claimers.contains("full"), "{id} claimed by the full node");
        let done = s.finished.get(id).cloned().unwrap_or_default();
        assert_eq!(done.len(), 1, "{id} finished {done:?}");
        assert!(done.iter().all(|(_, ok)| *ok), "{id}: {done:?}");
        let total: usize = nodes.iter().map(|ag| runs(ag, id)).sum();
        assert_eq!(total, 1, "{id} ran {total} times (run histories)");
    }
    assert!(
        s.handed_back.values().any(|who| who.contains("full")),
        "the broker gave the full node some offers and it handed them back: {:?}",
        s.handed_back
    );
    assert!(
        stdout.contains("handed back by full (no room: needs 0 CPU units and 32 MiB"),
        "{stdout}"
    );
}

/// One agent aborts at `crash_at` on its first offer; restarted, it must neither run a copy
/// it claimed twice nor lose one it had not decided.
fn crash_mid_offer(crash_at: &str, cluster: &str) {
    let broker = Broker::start();
    let files = tempfile::tempdir().expect("tempdir");
    let mut sub = Sub::start(&broker, &[&format!("skiff/v1/{cluster}/nodes/+/events")]);
    let mut victim = Agent::start_with(&broker, cluster, "victim", "[queue]\nmax_tasks = 4\n");
    let other = Agent::start_with(&broker, cluster, "other", "[queue]\nmax_tasks = 4\n");
    for node in ["victim", "other"] {
        sub.wait("agent connected", T, |_, m| match m {
            Message::Event(e) if e.node.as_str() == node => Some(()),
            _ => None,
        });
    }
    // The victim again, this time with the crash hook armed (the broker keeps its session and
    // its place in the shared subscription meanwhile).
    victim.kill9();
    sub.drain();
    sub.seen.clear();
    victim.restart_with_env(&[("SKIFF_TEST_CRASH_AT", crash_at)]);
    sub.wait("victim back", T, |_, m| match m {
        Message::Event(e)
            if e.node.as_str() == "victim" && matches!(e.body, EventBody::AgentStarted { .. }) =>
        {
            Some(())
        }
        _ => None,
    });
    std::thread::sleep(Duration::from_millis(1500)); // connected and subscribed
    let task = task_file(files.path(), "crashjob", &job_json("crashjob"));
    let console = Command::new(SKIFF)
        .args([
            "ctl",
            "--broker",
            &broker.url(),
            "--cluster",
            cluster,
            "run",
        ])
        .arg(&task)
        .args(["--count", "4", "--wait-secs", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("skiff ctl run");
    victim.wait_aborted_at_hook(T);
    // Down for a moment; offers the broker gives it meanwhile wait in its session.
    std::thread::sleep(Duration::from_secs(2));
    victim.restart();
    let started = Instant::now();
    let out = console.wait_with_output().expect("ctl run ends");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "$ skiff ctl run ({:?})\n{stdout}{}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "every copy ran: {stdout}");
    let ids = offered_ids(&stdout);
    assert_eq!(ids.len(), 4);
    let s = seen_finished(&mut sub, &ids);
    let mut victim_ran = 0;
    for id in &ids {
        let claimers = s.claimed.get(id).cloned().unwrap_or_default();
        assert!(claimers.len() <= 1, "{id} claimed by {claimers:?}");
        let per_node: Vec<usize> = [&victim, &other].iter().map(|ag| runs(ag, id)).collect();
        assert_eq!(
            per_node.iter().sum::<usize>(),
            1,
            "{id} runs per node {per_node:?}"
        );
        victim_ran += per_node[0];
    }
    assert!(
        victim_ran >= 1,
        "the victim ran the copy it was handling when it died"
    );
}

#[test]
fn an_agent_dying_after_saving_a_claim_runs_it_once() {
    require_env!();
    crash_mid_offer("queue-decided", "qd");
}

#[test]
fn an_agent_dying_before_deciding_loses_no_copy() {
    require_env!();
    crash_mid_offer("queue-receive", "qr");
}
