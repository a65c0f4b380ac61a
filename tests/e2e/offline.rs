//! Offline autonomy: durable desired state and run history survive `kill -9` and a restart with
//! no broker; containers that outlive the agent are adopted by the next one.

use std::process::Command;
use std::time::Duration;

use skiff_proto::codec::Message;
use skiff_proto::{EventBody, NodeState, TaskState};

use crate::harness::{task_file, wait_for, Agent, Broker, Sub, SKIFF};
use crate::require_env;

const T: Duration = Duration::from_secs(30);

/// `skiff ctl apply` of task files to node pi-1; must succeed.
fn apply(agent: &Agent, broker: &Broker, files: &[&std::path::Path]) {
    let mut args = vec!["apply".to_owned()];
    args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    args.extend(["--node".to_owned(), "pi-1".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = agent.ctl(broker, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn local_log(agent: &Agent, task: &str) -> String {
    let out = Command::new(SKIFF)
        .args(["logs", task, "--config"])
        .arg(agent.config())
        .output()
        .expect("skiff logs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn after_kill_9_and_an_offline_restart_services_are_back_and_one_shots_do_not_rerun() {
    require_env!();
    let broker = Broker::start();
    let port = broker.port;
    let mut agent = Agent::start(&broker, "e2e-offline", "pi-1");
    let mut sub = Sub::start(&broker, &["skiff/v1/e2e-offline/nodes/pi-1/#"]);
    let files = tempfile::tempdir().expect("tempdir");
    let job = task_file(
        files.path(),
        "job",
        r#"{"family":"job","restartPolicy":"never","containerDefinitions":[{"name":"main","image":"busybox","command":["sh","-c","echo job ran; exit 0"]}]}"#,
    );
    let svc = task_file(
        files.path(),
        "svc",
        r#"{"family":"svc","restartPolicy":"always","containerDefinitions":[{"name":"main","image":"busybox","command":["sh","-c","echo svc up; while true; do echo beat; sleep 0.2; done"]}]}"#,
    );
    apply(&agent, &broker, &[&job, &svc]);
    let svc_pid = sub.wait("job done and svc running", T, |_, m| {
        let Message::Status(s) = m else { return None };
        let task = |n: &str| s.tasks.iter().find(|t| t.name.as_str() == n);
        let job_done = task("job").is_some_and(|t| t.state == TaskState::Stopped);
        let svc = task("svc").filter(|t| t.state == TaskState::Running)?;
        job_done.then_some(svc.containers[0].pid?)
    });

    // The agent dies (kill -9), and the network is gone too. Its launcher keeps the container.
    agent.kill9();
    drop(sub);
    drop(broker);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        std::path::Path::new(&format!("/proc/{svc_pid}")).exists(),
        "the service's container outlives the agent"
    );
    agent.restart();
    wait_for("svc adopted with no broker", T, || {
        let log = agent.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        log.contains("svc: adopted after an agent restart (1 container(s) running, 0 exited")
            .then_some(())
    });
    // Not started again: the same process, and its output still reaches the log.
    let beats = local_log(&agent, "svc").matches("beat").count();
    wait_for("svc's output after the adoption", T, || {
        (local_log(&agent, "svc").matches("beat").count() > beats + 3).then_some(())
    });
    assert_eq!(local_log(&agent, "svc").matches("svc up").count(), 1);
    assert!(std::path::Path::new(&format!("/proc/{svc_pid}")).exists());
    assert_eq!(
        local_log(&agent, "job").matches("job ran").count(),
        1,
        "the one-shot must not run twice"
    );
    let text = history_json(&agent, "job");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("\"code\":0"), "{text}");

    // The broker comes back: the node reports the state it restored on its own.
    let broker = Broker::start_on(port);
    let mut sub = Sub::start(&broker, &["skiff/v1/e2e-offline/nodes/pi-1/#"]);
    let status = sub.wait("online again", T, |_, m| match m {
        Message::Status(s) if s.state == NodeState::Online && s.tasks.len() == 2 => Some(s.clone()),
        _ => None,
    });
    let svc_status = status
        .tasks
        .iter()
        .find(|t| t.name.as_str() == "svc")
        .expect("svc");
    assert_eq!(
        (
            svc_status.state,
            svc_status.containers[0].pid,
            svc_status.restarts
        ),
        (TaskState::Running, Some(svc_pid), 0),
        "the adopted service, as it was"
    );
    let job_status = status
        .tasks
        .iter()
        .find(|t| t.name.as_str() == "job")
        .expect("job");
    assert_eq!(
        (job_status.state, job_status.last_exit.map(|e| e.code)),
        (TaskState::Stopped, Some(0))
    );
    let out = agent.ctl(&broker, &["history", "job", "--node", "pi-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("exit code 0") && table.lines().count() == 2,
        "{table}"
    );
    // And nothing was started twice after the broker came back.
    sub.drain();
    let starts = sub
        .seen
        .iter()
        .filter(|(_, m)| matches!(m, Message::Event(e) if matches!(&e.body, EventBody::TaskStarting { task, .. } if task.as_str() == "job")))
        .count();
    assert_eq!(starts, 0, "job started again after reconnecting");
}

/// `skiff history TASK --json` on the device: one line per run, oldest first.
fn history_json(agent: &Agent, task: &str) -> String {
    let out = Command::new(SKIFF)
        .args(["history", task, "--json", "--limit", "100", "--config"])
        .arg(agent.config())
        .output()
        .expect("skiff history");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn history_runs(agent: &Agent, task: &str) -> usize {
    history_json(agent, task).lines().count()
}

#[test]
fn a_scheduled_task_keeps_firing_while_the_broker_is_gone() {
    require_env!();
    let broker = Broker::start();
    let agent = Agent::start(&broker, "e2e-sched", "pi-1");
    let mut sub = Sub::start(&broker, &["skiff/v1/e2e-sched/nodes/pi-1/events"]);
    let files = tempfile::tempdir().expect("tempdir");
    let tick = task_file(
        files.path(),
        "tick",
        r#"{"family":"tick","schedule":{"rate":"2s","overlapPolicy":"forbid"},
            "containerDefinitions":[{"name":"main","image":"busybox","command":["sh","-c","echo tick"]}]}"#,
    );
    let out = agent.ctl(
        &broker,
        &["apply", tick.to_str().expect("utf8"), "--node", "pi-1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..2 {
        sub.wait("a scheduled run", T, |_, m| match m {
            Message::Event(e) => {
                matches!(&e.body, EventBody::TaskStopped { task, .. } if task.as_str() == "tick")
                    .then_some(())
            }
            _ => None,
        });
        sub.seen.clear(); // wait for a new run next time
    }
    let online_runs = history_runs(&agent, "tick");
    assert!(online_runs >= 2, "{online_runs}");
    drop(sub);
    drop(broker);
    wait_for("runs while offline", T, || {
        (history_runs(&agent, "tick") >= online_runs + 3).then_some(())
    });
    assert!(local_log(&agent, "tick").matches("tick").count() >= online_runs + 3);
}

#[test]
fn events_and_metrics_made_offline_arrive_once_and_in_order_when_the_broker_returns() {
    require_env!();
    let broker = Broker::start();
    let port = broker.port;
    let agent = Agent::start(&broker, "e2e-outbox", "pi-1");
    let files = tempfile::tempdir().expect("tempdir");
    let tick = task_file(
        files.path(),
        "tick",
        r#"{"family":"tick","schedule":{"rate":"2s"},
            "containerDefinitions":[{"name":"main","image":"busybox","command":["true"]}]}"#,
    );
    let out = agent.ctl(
        &broker,
        &["apply", tick.to_str().expect("utf8"), "--node", "pi-1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    // The network goes away for a while; the schedule keeps firing, metrics keep coming (1 s).
    drop(broker);
    let offline_from = crate::harness::wall_ms();
    wait_for("runs while offline", T, || {
        (history_runs(&agent, "tick") >= 4).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let offline_to = crate::harness::wall_ms();
    let broker = Broker::start_on(port);
    let mut sub = Sub::start(
        &broker,
        &[
            "skiff/v1/e2e-outbox/nodes/pi-1/events",
            "skiff/v1/e2e-outbox/nodes/pi-1/metrics",
        ],
    );
    // Wait for the backlog, then a little more for anything duplicated behind it.
    sub.wait(
        "the runs made offline",
        Duration::from_secs(60),
        |_, m| match m {
            Message::Event(e) if e.at_ms > offline_to => Some(()),
            _ => None,
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    sub.drain();
    let events: Vec<&skiff_proto::Event> = sub
        .seen
        .iter()
        .filter_map(|(_, m)| match m {
            Message::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "every event once, in order, no gap: {seqs:?}"
    );
    let offline_runs = events
        .iter()
        .filter(|e| e.at_ms >= offline_from && e.at_ms <= offline_to)
        .filter(
            |e| matches!(&e.body, EventBody::TaskStopped { task, .. } if task.as_str() == "tick"),
        )
        .count();
    assert!(
        offline_runs >= 3,
        "runs made offline were delivered: {offline_runs}"
    );
    let samples: Vec<u64> = sub
        .seen
        .iter()
        .filter_map(|(_, m)| match m {
            Message::Metrics(mm) => Some(mm.samples.iter().map(|s| s.at_ms).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    let offline_samples = samples
        .iter()
        .filter(|t| **t >= offline_from && **t <= offline_to)
        .count();
    let secs = (offline_to - offline_from) / 1000;
    assert!(
        offline_samples as u64 + 2 >= secs,
        "{offline_samples} samples for {secs} s offline"
    );
    assert!(
        samples.windows(2).all(|w| w[0] < w[1]),
        "metrics once and in order: {samples:?}"
    );
}

/// Whether `skiff ctl nodes --json` shows each task running on the node.
fn running(agent: &Agent, broker: &Broker, tasks: &[&str]) -> bool {
    let out = agent.ctl(broker, &["nodes", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find(|l| l.contains("\"pi-1\"")) else {
        return false;
    };
    let Ok(status) = serde_json::from_str::<skiff_proto::Status>(line) else {
        return false;
    };
    tasks.iter().all(|n| {
        status
            .tasks
            .iter()
            .any(|t| t.name.as_str() == *n && t.state == TaskState::Running)
    })
}

#[test]
fn a_full_data_disk_gives_a_clear_error_and_corrupts_nothing() {
    require_env!();
    let broker = Broker::start();
    let mut agent = Agent::start_prepared(&broker, "e2e-full", "pi-1", "", |dir| {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=24m", "skiff-e2e-full"])
            .arg(&data)
            .status()
            .expect("mount");
        assert!(st.success(), "mount a small tmpfs");
    });
    let files = tempfile::tempdir().expect("tempdir");
    let svc = |name: &str| {
        task_file(
            files.path(),
            name,
            &format!(
                r#"{{"family":"{name}","restartPolicy":"always","containerDefinitions":[{{"name":"main","image":"busybox","command":["sleep","1000"]}}]}}"#
            ),
        )
    };
    let (a, b) = (svc("a"), svc("b"));
    // With a, a one-shot that ends once the disk is full: its run can't be saved then.
    let job = task_file(
        files.path(),
        "job",
        r#"{"family":"job","restartPolicy":"never","containerDefinitions":[{"name":"main","image":"busybox","command":["sh","-c","echo job ran; sleep 8"]}]}"#,
    );
    assert!(agent
        .ctl(
            &broker,
            &[
                "apply",
                a.to_str().expect("utf8"),
                job.to_str().expect("utf8"),
                "--node",
                "pi-1"
            ]
        )
        .status
        .success());
    wait_for("a and the job running", T, || {
        running(&agent, &broker, &["a", "job"]).then_some(())
    });
    // Fill the data dir to the last byte.
    let data = agent.dir.path().join("data");
    let mut filler = std::fs::File::create(data.join("filler")).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    while std::io::Write::write_all(&mut filler, &[0u8; 1]).is_ok() {}
    drop(filler);
    let out = agent.ctl(
        &broker,
        &["apply", b.to_str().expect("utf8"), "--node", "pi-1"],
    );
    assert!(
        out.status.success(),
        "applied in memory: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The operator's log (journald on a device) says what was not saved and why.
    let line = wait_for("the state-not-saved warning", T, || {
        let log = agent.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        log.lines()
            .find(|l| l.contains("STATE NOT SAVED"))
            .map(str::to_owned)
    });
    assert!(
        line.contains("desired state") && line.contains("No space left"),
        "{line}"
    );
    wait_for("b running anyway", T, || {
        running(&agent, &broker, &["a", "b"]).then_some(())
    });
    wait_for("the job's run not saved", T, || {
        let log = agent.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        log.lines()
            .any(|l| l.contains("STATE NOT SAVED") && l.contains("run history of job"))
            .then_some(())
    });
    let ended = agent.run_dir().join("ended/job");
    assert!(ended.exists(), "the run is kept while it is not saved");
    // Power cut; the disk gets room again; the restart finds the last state that was saved,
    // intact (nothing set aside as corrupt), then the broker's newer document. The job's run
    // is saved now, not run again.
    agent.kill9();
    std::fs::remove_file(data.join("filler")).expect("rm filler");
    agent.restart();
    wait_for("a and b running again", T, || {
        running(&agent, &broker, &["a", "b"]).then_some(())
    });
    wait_for("the job's run saved", T, || {
        (history_runs(&agent, "job") == 1 && !ended.exists()).then_some(())
    });
    assert_eq!(local_log(&agent, "job").matches("job ran").count(), 1);
    let corrupt = std::fs::read_dir(data.join("state")).map_or(0, |r| {
        r.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".corrupt"))
            .count()
    });
    assert_eq!(corrupt, 0, "no state file was corrupted");
}

#[test]
fn with_stop_policy_leave_tasks_outlive_the_agent_and_a_job_ending_meanwhile_is_recorded_once() {
    require_env!();
    let broker = Broker::start();
    let mut agent = Agent::start_with(&broker, "e2e-leave", "pi-1", "stop_policy = \"leave\"\n");
    let mut sub = Sub::start(&broker, &["skiff/v1/e2e-leave/nodes/pi-1/#"]);
    let files = tempfile::tempdir().expect("tempdir");
    let job = task_file(
        files.path(),
        "job",
        r#"{"family":"job","restartPolicy":"never","containerDefinitions":[{"name":"main","image":"busybox","command":["sh","-c","sleep 3; exit 7"]}]}"#,
    );
    let svc = task_file(
        files.path(),
        "svc",
        r#"{"family":"svc","restartPolicy":"always","containerDefinitions":[{"name":"main","image":"busybox","command":["sleep","1000"]}]}"#,
    );
    apply(&agent, &broker, &[&job, &svc]);
    let pids = sub.wait("both running", T, |_, m| {
        let Message::Status(s) = m else { return None };
        let pid = |n: &str| {
            s.tasks
                .iter()
                .find(|t| t.name.as_str() == n && t.state == TaskState::Running)
                .and_then(|t| t.containers[0].pid)
        };
        Some((pid("job")?, pid("svc")?))
    });

    // SIGTERM with stop_policy "leave": the agent exits at once, the tasks run on.
    let st = agent.terminate().expect("exited");
    assert!(st.success(), "{st:?}");
    for pid in [pids.0, pids.1] {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} left running"
        );
    }
    assert_eq!(history_runs(&agent, "job"), 0, "nothing recorded yet");
    // The job ends while no agent runs; its launcher keeps the exit.
    wait_for("the job's end", T, || {
        (!std::path::Path::new(&format!("/proc/{}", pids.0)).exists()).then_some(())
    });
    sub.drain();
    sub.seen.clear();
    agent.restart();
    let status = sub.wait("svc adopted, job done", T, |_, m| {
        let Message::Status(s) = m else { return None };
        let task = |n: &str| s.tasks.iter().find(|t| t.name.as_str() == n);
        let job = task("job").filter(|t| t.state == TaskState::Stopped)?;
        let svc = task("svc").filter(|t| t.state == TaskState::Running)?;
        Some((
            job.last_exit.map(|e| e.code),
            svc.containers[0].pid,
            svc.restarts,
        ))
    });
    assert_eq!(status, (Some(7), Some(pids.1), 0));
    let text = history_json(&agent, "job");
    assert_eq!(text.lines().count(), 1, "one run: {text}");
    assert!(text.contains("\"code\":7"), "{text}");
    sub.drain();
    let started_again = sub.seen.iter().any(|(_, m)| {
        matches!(m, Message::Event(e) if matches!(&e.body, EventBody::TaskStarting { .. }))
    });
    assert!(!started_again, "nothing was started again");
    assert!(sub.seen.iter().any(|(_, m)| matches!(m, Message::Event(e)
        if matches!(&e.body, EventBody::TaskAdopted { task, running: 0, exited: 1 } if task.as_str() == "job"))));
}

#[test]
fn a_job_whose_containers_were_deleted_before_its_run_was_saved_does_not_run_again() {
    require_env!();
    let broker = Broker::start();
    let mut agent = Agent::start(&broker, "e2e-ended", "pi-1");
    // The agent aborts right after deleting a task's containers, before the run is saved
    // (as a power cut there would stop it, with the run dir on tmpfs surviving a crash).
    agent.kill9();
    agent.restart_with_env(&[("SKIFF_TEST_CRASH_AT", "task-removed")]);
    let mut sub = Sub::start(&broker, &["skiff/v1/e2e-ended/nodes/pi-1/#"]);
    let files = tempfile::tempdir().expect("tempdir");
    let job = task_file(
        files.path(),
        "job",
        r#"{"family":"job","restartPolicy":"never","containerDefinitions":[{"name":"main","image":"busybox","command":["sh","-c","echo job ran; exit 4"]}],"batch":{"completions":1,"retries":0}}"#,
    );
    apply(&agent, &broker, &[&job]);
    agent.wait_aborted_at_hook(T);
    assert_eq!(history_runs(&agent, "job"), 0, "the run was not saved");
    let ended = agent.run_dir().join("ended/job");
    assert!(ended.exists(), "{} kept", ended.display());

    sub.drain();
    sub.seen.clear();
    agent.restart();
    let exit = sub.wait("the job's end replayed", T, |_, m| {
        let Message::Status(s) = m else { return None };
        let job = s
            .tasks
            .iter()
            .find(|t| t.name.as_str() == "job" && t.state == TaskState::Failed)?;
        Some(job.last_exit.map(|e| e.code))
    });
    assert_eq!(exit, Some(4));
    assert_eq!(
        local_log(&agent, "job").matches("job ran").count(),
        1,
        "the job must not run twice"
    );
    let text = history_json(&agent, "job");
    assert_eq!(text.lines().count(), 1, "one run: {text}");
    assert!(text.contains("\"code\":4"), "{text}");
    wait_for("the ended run's record dropped once saved", T, || {
        (!ended.exists()).then_some(())
    });
    assert!(
        agent
            .stderr
            .lock()
            .is_ok_and(|s| !s.contains("cannot keep its ended run")),
        "the record taken over is kept as it is when the replayed run ends"
    );
    sub.drain();
    assert!(
        !sub.seen.iter().any(|(_, m)| matches!(m, Message::Event(e)
            if matches!(&e.body, EventBody::TaskStarting { .. }))),
        "nothing was started again"
    );
    assert!(sub.seen.iter().any(|(_, m)| matches!(m, Message::Event(e)
        if matches!(&e.body, EventBody::TaskAdopted { task, running: 0, exited: 1 } if task.as_str() == "job"))));
}

#[test]
fn a_crash_in_the_middle_of_a_store_write_leaves_the_previous_state_and_hides_nothing_later() {
    require_env!();
    let broker = Broker::start();
    let mut agent = Agent::start(&broker, "e2e-torn", "pi-1");
    // First the agent dies half-way through appending a run to a history file.
    agent.kill9();
    agent.restart_with_env(&[("SKIFF_TEST_CRASH_AT", "history-append")]);
    let files = tempfile::tempdir().expect("tempdir");
    let svc = task_file(
        files.path(),
        "svc",
        r#"{"family":"svc","restartPolicy":"always","containerDefinitions":[{"name":"main","image":"busybox","command":["sh","-c","echo svc v1; while true; do sleep 0.2; done"]}]}"#,
    );
    let job = task_file(
        files.path(),
        "job",
        r#"{"family":"job","restartPolicy":"never","containerDefinitions":[{"name":"main","image":"busybox","command":["sh","-c","echo job ran; exit 3"]}],"batch":{"completions":1,"retries":0}}"#,
    );
    apply(&agent, &broker, &[&svc, &job]);
    agent.wait_aborted_at_hook(T);
    let torn = agent.data_dir().join("state/history/job.log");
    let torn_len = std::fs::metadata(&torn).map(|m| m.len()).unwrap_or(0);
    assert!(torn_len > 0, "half a record in {}", torn.display());
    assert_eq!(history_runs(&agent, "job"), 0, "a torn record is not read");

    // The next agent replays the run (kept in run_dir/ended) and appends it after the good
    // records, the torn one cut; then it dies between writing the next desired document aside
    // and renaming it over the saved one.
    agent.restart_with_env(&[("SKIFF_TEST_CRASH_AT", "store-replace:desired-node.bin")]);
    wait_for("the job's run saved once", T, || {
        (history_runs(&agent, "job") == 1).then_some(())
    });
    let text = history_json(&agent, "job");
    assert!(text.contains("\"code\":3"), "{text}");
    wait_for("svc adopted", T, || {
        let log = agent.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        log.contains("svc: adopted after an agent restart")
            .then_some(())
    });
    let svc2 = task_file(
        files.path(),
        "svc",
        r#"{"family":"svc","restartPolicy":"always","containerDefinitions":[{"name":"main","image":"busybox","command":["sh","-c","echo svc v2; while true; do sleep 0.2; done"]}]}"#,
    );
    let out = agent.ctl(
        &broker,
        &[
            "apply",
            &svc2.to_string_lossy(),
            "--node",
            "pi-1",
            "--no-wait",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.wait_aborted_at_hook(T);
    let state = agent.data_dir().join("state");
    let aside = std::fs::read(state.join("desired-node.tmp")).unwrap_or_default();
    assert!(
        aside.windows(6).any(|w| w == b"svc v2"),
        "the new document was written aside"
    );

    // Restarted with no broker: the previous document is in force (svc v1 adopted, not
    // replaced), nothing was set aside as corrupt, and the history holds its one run.
    drop(broker);
    agent.restart();
    wait_for("svc adopted with no broker", T, || {
        let log = agent.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        (log.matches("svc: adopted after an agent restart").count() == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let log = local_log(&agent, "svc");
    assert_eq!(log.matches("svc v1").count(), 1, "{log}");
    assert_eq!(log.matches("svc v2").count(), 0, "{log}");
    let corrupt: Vec<_> = std::fs::read_dir(&state)
        .expect("state dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".corrupt"))
        .collect();
    assert!(corrupt.is_empty(), "set aside: {corrupt:?}");
    assert_eq!(history_runs(&agent, "job"), 1);
    assert_eq!(
        local_log(&agent, "job").matches("job ran").count(),
        1,
        "the job must not run twice"
    );
}
