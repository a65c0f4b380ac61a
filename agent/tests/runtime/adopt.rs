//! Re-adoption: the launcher keeps containers running when its agent goes away, holds their
//! log FIFOs and exits, and hands them to the next runtime started on the same `run_dir`.

use std::collections::BTreeSet;

use super::*;

/// Drops a runtime and waits until its launcher has noticed (it accepts the next agent only
/// then; until it does, a new runtime waits in the socket's backlog).
async fn agent_gone(rt: Runtime) {
    drop(rt);
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn adopt_containers_outlive_their_agent_and_are_handed_to_the_next() {
    if !root_or_skip("adopt_containers_outlive_their_agent_and_are_handed_to_the_next") {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut first_exits) = fx.runtime().await;
    assert_eq!(rt.take_kept(), vec![], "a new launcher keeps nothing");
    let launcher = rt.launcher_pid();
    // One that keeps writing (no reader once the agent is gone: it must not die of SIGPIPE
    // nor block), one that exits while no agent is there.
    let chatty = task(
        "chatty",
        vec![container(
            "c",
            &["sh", "-c", "while true; do echo tick; sleep 0.05; done"],
        )],
        NetworkMode::None,
    );
    let brief = task(
        "brief",
        vec![container("c", &["sh", "-c", "sleep 1; exit 3"])],
        NetworkMode::None,
    );
    // And one whose exit reaches this agent, which dies before acting on it.
    let quick = task(
        "quick",
        vec![container("c", &["sh", "-c", "exit 5"])],
        NetworkMode::None,
    );
    let mut pids = Vec::new();
    let mut readers = Vec::new();
    for t in [&chatty, &brief, &quick] {
        rt.prepare_task(t, &fx.images(1)).await.expect("prepare");
        let (path, rx) = fx.fifo(t.family.as_str());
        pids.push(
            rt.start_container(&t.family, &t.containers[0].name, &path)
                .await
                .expect("start"),
        );
        readers.push(rx);
    }
    assert_eq!(
        rt.task_record(&chatty.family).map(|r| r.def),
        Some(chatty.clone())
    );

    let exit = next_exit(&mut first_exits).await;
    assert_eq!((exit.task.as_str(), exit.exit.code), ("quick", 5));

    // The agent dies: its socket and its ends of the FIFOs close.
    drop(readers);
    agent_gone(rt).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        Path::new(&format!("/proc/{launcher}")).exists(),
        "the launcher stays"
    );
    assert!(
        Path::new(&format!("/proc/{}", pids[0])).exists(),
        "chatty runs on"
    );

    let (rt, mut exits) = fx.runtime().await;
    assert_eq!(rt.launcher_pid(), launcher, "the same launcher, adopted");
    let kept = rt.take_kept();
    assert_eq!(kept.len(), 3, "{kept:?}");
    let (b, c, q) = (&kept[0], &kept[1], &kept[2]);
    assert_eq!(
        (q.task.as_str(), q.pid, q.exit.map(|e| e.code)),
        ("quick", pids[2], Some(5)),
        "an exit the dead agent had not acted on is handed over again"
    );
    assert_eq!((c.task.as_str(), c.pid, c.exit), ("chatty", pids[0], None));
    assert!(c.lost_output_bytes > 0, "output drained meanwhile: {c:?}");
    assert_eq!((b.task.as_str(), b.pid), ("brief", pids[1]));
    assert_eq!(b.exit.map(|e| e.code), Some(3), "held exit");
    assert_eq!(rt.take_kept(), vec![], "handed over once");

    // Cleaning up what the last agent left spares what is adopted.
    let keep: BTreeSet<Name> = [chatty.family.clone()].into();
    let removed = rt.cleanup_stale_keeping(&keep).await.expect("cleanup");
    assert_eq!(removed, ["brief/c", "quick/c"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), exits.recv())
            .await
            .is_err(),
        "no exit reported for the removed, already reported container"
    );
    // The adopted container is this runtime's now: signals reach it, its exit is reported.
    rt.kill(&chatty.family, &chatty.containers[0].name, 9)
        .await
        .expect("kill");
    let exit = next_exit(&mut exits).await;
    assert_eq!((exit.task.as_str(), exit.exit.signal), ("chatty", Some(9)));
    rt.remove_task(&chatty.family).await.expect("remove");
    rt.remove_task(&brief.family).await.expect("remove");
    rt.remove_task(&quick.family).await.expect("remove");
    assert!(fx.cgroup_dirs().iter().all(|d| !d.exists()));

    // With nothing left to keep, the launcher goes with its agent; the next runtime starts a
    // new one.
    agent_gone(rt).await;
    let (rt, _exits) = fx.runtime().await;
    assert_ne!(rt.launcher_pid(), launcher);
    assert_eq!(rt.take_kept(), vec![]);
}

#[tokio::test]
async fn adopt_a_launcher_of_another_version_is_not_used_and_a_new_one_starts() {
    if !root_or_skip("adopt_a_launcher_of_another_version_is_not_used_and_a_new_one_starts") {
        return;
    }
    let fx = Fixture::new();
    // Something that greets like a launcher of another version at the socket.
    let sock = fx.run_dir().join("launcher.sock");
    std::fs::create_dir_all(fx.run_dir()).expect("run dir");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let fake = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, _) = listener.accept().expect("accept");
        s.write_all(b"skiff-launcher 0.0.1 wire 1\n")
            .expect("greet");
        s
    });
    let (rt, _exits) = fx.runtime().await;
    let _conn = fake.join().expect("fake launcher");
    assert_ne!(rt.launcher_pid(), std::process::id(), "a new launcher");
    assert!(Path::new(&format!("/proc/{}", rt.launcher_pid())).exists());
    assert_eq!(rt.take_kept(), vec![]);
}

#[tokio::test]
async fn adopt_an_ended_run_is_kept_until_forgotten_and_the_stale_cleanup_drops_the_others() {
    if !root_or_skip(
        "adopt_an_ended_run_is_kept_until_forgotten_and_the_stale_cleanup_drops_the_others",
    ) {
        return;
    }
    let fx = Fixture::new();
    let (rt, mut exits) = fx.runtime().await;
    let run_of = |code| skiff_agent::core::EndedRun {
        started_wall_ms: 1_000,
        attempt: 1,
        exits: vec![(
            "c".parse().expect("name"),
            skiff_proto::ExitInfo {
                code,
                signal: None,
                oom_killed: false,
            },
        )],
    };
    let mut defs = Vec::new();
    for (family, code) in [("one", 3), ("two", 4)] {
        let t = task(
            family,
            vec![container("c", &["sh", "-c", &format!("exit {code}")])],
            NetworkMode::None,
        );
        rt.prepare_task(&t, &fx.images(1)).await.expect("prepare");
        let (path, _rx) = fx.fifo(family);
        rt.start_container(&t.family, &t.containers[0].name, &path)
            .await
            .expect("start");
        assert_eq!(next_exit(&mut exits).await.exit.code, code);
        // As the agent removes a task whose run ended: the run kept first.
        rt.keep_ended(&t.family, &run_of(code)).expect("keep");
        rt.remove_task(&t.family).await.expect("remove");
        defs.push(t);
    }
    // Taken over from `ended/` and ending again (its task removed already): the record stays.
    rt.keep_ended(&defs[0].family, &run_of(0))
        .expect("the kept record stands");
    let gone: Name = "gone".parse().expect("name");
    assert!(
        rt.keep_ended(&gone, &run_of(0)).is_err(),
        "nothing to keep for a task with no record"
    );
    let ended = rt.ended_runs();
    assert_eq!(ended.len(), 2);
    assert_eq!(
        (&ended[0].task.def, &ended[0].run),
        (&defs[0], &run_of(3)),
        "the definition it was prepared with and the run"
    );
    assert_eq!((&ended[1].task.def, &ended[1].run), (&defs[1], &run_of(4)));
    // Garbage beside them (a torn or forged file) is not taken for a run.
    std::fs::write(fx.run_dir().join("ended/three"), b"\xff\x00garbage").expect("write");
    assert_eq!(rt.ended_runs().len(), 2);

    // Saved: forgotten (twice is fine).
    rt.forget_ended(&defs[1].family).expect("forget");
    rt.forget_ended(&defs[1].family).expect("forget again");
    assert_eq!(rt.ended_runs().len(), 1);
    // The next agent adopts `one`; the cleanup drops every other record.
    agent_gone(rt).await;
    let (rt, _exits) = fx.runtime().await;
    let keep: BTreeSet<Name> = [defs[0].family.clone()].into();
    rt.cleanup_stale_keeping(&keep).await.expect("cleanup");
    let left: Vec<String> = std::fs::read_dir(fx.run_dir().join("ended"))
        .expect("ended dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["one"]);
    rt.cleanup_stale().await.expect("cleanup");
    assert_eq!(rt.ended_runs(), vec![]);
}
