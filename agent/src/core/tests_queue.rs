//! The cluster queue in the core: claim, hand back, refuse, report, and never decide twice.

use super::tests::{at, catalog, core, exit, n, removed, run, starts, task};
use super::*;
use skiff_proto::codec::encode;
use skiff_proto::RunRequest;

fn request(id: &str, attempt: u32, mem: Option<u32>) -> RunRequest {
    RunRequest {
        cluster: n("demo"),
        id: n(id),
        attempt,
        issued_ms: 1_764_000_000_000,
        task: TaskDefinition {
            memory_mib: mem,
            ..task("report", RestartPolicy::Never)
        },
        signature: None,
    }
}

fn offer(c: &mut Core, req: &RunRequest, now: Time) -> Vec<Action> {
    let payload = encode(&Message::RunRequest(req.clone())).expect("encodes");
    c.handle(
        Event::RunOffer {
            payload,
            images: catalog(),
        },
        now,
    )
}

fn queue_events(actions: &[Action]) -> Vec<EventBody> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(
                e @ (EventBody::QueueClaimed { .. }
                | EventBody::QueueHandedBack { .. }
                | EventBody::QueueRejected { .. }
                | EventBody::QueueFinished { .. }),
            ) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn saved_queue(actions: &[Action]) -> Option<QueueMemo> {
    actions.iter().find_map(|a| match a {
        Action::SaveQueue(q) => Some(q.clone()),
        _ => None,
    })
}

/// The `Restored` of an agent start that saved nothing but the queue (restored before it).
fn restart(c: &mut Core) -> Vec<Action> {
    c.handle(
        Event::Restored {
            cluster: None,
            node: None,
            finished: vec![],
            services: vec![],
            last_wall_ms: None,
            images: catalog(),
            adopted: vec![],
        },
        at(0),
    )
}

fn small() -> Capacity {
    Capacity {
        cpu_units: 2048,
        memory_mib: 100,
        max_tasks: 8,
    }
}

#[test]
fn claims_a_copy_runs_it_under_its_id_and_reports_the_end() {
    let mut c = core().with_queue_capacity(small());
    let req = request("report-ab12-1", 1, Some(60));
    let a = offer(&mut c, &req, at(0));
    assert_eq!(
        queue_events(&a),
        vec![EventBody::QueueClaimed {
            request: n("report-ab12-1"),
            attempt: 1
        }]
    );
    assert_eq!(starts(&a), vec!["report-ab12-1"]);
    // Saved before anything is published: saves are performed first by the shell, and the
    // claim is in the saved memo.
    let memo = saved_queue(&a).expect("claim saved");
    assert_eq!(memo.claims, vec![req.clone()]);

    run(&mut c, "report-ab12-1", at(10));
    exit(&mut c, "report-ab12-1", "main", 0, at(500));
    let a = removed(&mut c, "report-ab12-1", at(510));
    let ev = queue_events(&a);
    assert!(
        matches!(&ev[..], [EventBody::QueueFinished { request, ok: true, exit: Some(e), .. }]
            if request.as_str() == "report-ab12-1" && e.code == 0),
        "{ev:?}"
    );
    let memo = saved_queue(&a).expect("end saved");
    assert!(memo.claims.is_empty());
    assert_eq!(memo.decided, vec![(n("report-ab12-1"), 1)]);
    assert!(
        c.phase(&n("report-ab12-1")).is_none(),
        "forgotten once reported"
    );

    // The same offer again (the broker re-delivering it after a restart): nothing happens.
    let a = offer(&mut c, &req, at(600));
    assert!(
        queue_events(&a).is_empty() && starts(&a).is_empty(),
        "{a:?}"
    );
}

#[test]
fn a_failing_copy_is_reported_failed_with_its_exit() {
    let mut c = core();
    offer(&mut c, &request("job-1", 1, None), at(0));
    run(&mut c, "job-1", at(10));
    exit(&mut c, "job-1", "main", 3, at(20));
    let a = removed(&mut c, "job-1", at(30));
    let ev = queue_events(&a);
    assert!(
        matches!(&ev[..], [EventBody::QueueFinished { ok: false, exit: Some(e), reason, .. }]
            if e.code == 3 && reason == "exit code 3"),
        "{ev:?}"
    );
}

#[test]
fn hands_back_what_does_not_fit_and_takes_it_when_offered_again_with_room() {
    let mut c = core().with_queue_capacity(small());
    offer(&mut c, &request("big-1", 1, Some(60)), at(0));
    let a = offer(&mut c, &request("big-2", 1, Some(60)), at(1));
    let ev = queue_events(&a);
    assert!(
        matches!(&ev[..], [EventBody::QueueHandedBack { request, attempt: 1, reason }]
            if request.as_str() == "big-2"
            && reason == "no room: needs 0 CPU units and 60 MiB, 2048 CPU units and 40 MiB free"),
        "{ev:?}"
    );
    assert!(starts(&a).is_empty());
    assert_eq!(
        saved_queue(&a).expect("decision saved").decided,
        vec![(n("big-2"), 1)],
        "a hand-back is remembered so a redelivery is not handed back twice"
    );
    let again = offer(&mut c, &request("big-2", 1, Some(60)), at(2));
    assert!(queue_events(&again).is_empty(), "{again:?}");

    // big-1 ends; the console's next offer of big-2 (attempt 2) fits.
    run(&mut c, "big-1", at(10));
    exit(&mut c, "big-1", "main", 0, at(20));
    removed(&mut c, "big-1", at(30));
    let a = offer(&mut c, &request("big-2", 2, Some(60)), at(40));
    assert_eq!(
        queue_events(&a),
        vec![EventBody::QueueClaimed {
            request: n("big-2"),
            attempt: 2
        }]
    );
}

#[test]
fn counts_every_running_task_and_the_queued_task_limit() {
    let mut c = core().with_queue_capacity(Capacity {
        max_tasks: 1,
        ..small()
    });
    // A desired-state task reserving 80 MiB leaves 20.
    let mut web = task("web", RestartPolicy::Always);
    web.memory_mib = Some(80);
    super::tests::apply(&mut c, 1, vec![web], at(0));
    let a = offer(&mut c, &request("r-1", 1, Some(30)), at(1));
    assert!(matches!(
        &queue_events(&a)[..],
        [EventBody::QueueHandedBack { .. }]
    ));
    offer(&mut c, &request("r-2", 1, Some(10)), at(2));
    let a = offer(&mut c, &request("r-3", 1, Some(5)), at(3));
    let ev = queue_events(&a);
    assert!(
        matches!(&ev[..], [EventBody::QueueHandedBack { reason, .. }]
            if reason == "no room: 1 queued tasks run here (max_tasks = 1)"),
        "{ev:?}"
    );
}

#[test]
fn refuses_other_clusters_unsigned_forged_and_garbage() {
    let key = crate::trust::SigningKey::generate().expect("key").0;
    let mut c = core().trusting(crate::trust::Trust::new(
        vec![key.public().clone()],
        Default::default(),
    ));
    let mut other = request("x-1", 1, None);
    other.cluster = n("elsewhere");
    key.sign_run(&mut other).expect("signs");
    let a = offer(&mut c, &other, at(0));
    assert!(
        matches!(&queue_events(&a)[..], [EventBody::QueueRejected { reason, .. }]
            if reason.contains("cluster elsewhere")),
        "{a:?}"
    );
    let a = offer(&mut c, &request("x-2", 1, None), at(1));
    assert!(
        matches!(&queue_events(&a)[..], [EventBody::QueueRejected { reason, .. }]
            if reason.starts_with("unsigned")),
        "{a:?}"
    );
    // Changed after signing (a console's signature over another task): forged.
    let mut forged = request("x-3", 1, None);
    key.sign_run(&mut forged).expect("signs");
    forged.task.containers[0].command = vec!["rm".into(), "-rf".into()];
    let a = offer(&mut c, &forged, at(2));
    assert!(
        matches!(&queue_events(&a)[..], [EventBody::QueueRejected { reason, .. }]
            if reason.starts_with("forged")),
        "{a:?}"
    );
    let mut good = request("x-4", 1, None);
    key.sign_run(&mut good).expect("signs");
    let a = offer(&mut c, &good, at(3));
    assert_eq!(starts(&a), vec!["x-4"]);
    // Garbage on the queue topic: refused by name, nothing else changes.
    let a = c.handle(
        Event::RunOffer {
            payload: b"not a message".to_vec(),
            images: catalog(),
        },
        at(4),
    );
    assert!(
        matches!(
            &queue_events(&a)[..],
            [EventBody::QueueRejected { request: None, .. }]
        ),
        "{a:?}"
    );
    assert_eq!(c.phase(&n("x-4")), Some(Phase::Starting));
}

#[test]
fn a_draining_node_hands_back() {
    let mut c = core();
    c.handle(
        Event::Drain {
            batch_deadline_ms: 0,
        },
        at(0),
    );
    let a = offer(&mut c, &request("d-1", 1, None), at(1));
    assert!(
        matches!(&queue_events(&a)[..], [EventBody::QueueHandedBack { reason, .. }]
            if reason == "the node is draining"),
        "{a:?}"
    );
}

#[test]
fn a_claim_saved_before_a_crash_runs_once_after_the_restart() {
    let mut c = core();
    let req = request("c-1", 1, None);
    let memo = saved_queue(&offer(&mut c, &req, at(0))).expect("saved");

    // The agent died before acknowledging the offer: a new core takes the memo back, starts
    // the copy with the rest, and the broker's redelivery of the offer changes nothing.
    let mut c = core();
    let mut out = Vec::new();
    c.restore_queue(memo, &mut out);
    assert!(out.is_empty(), "{out:?}");
    let a = restart(&mut c);
    assert_eq!(starts(&a), vec!["c-1"]);
    let a = offer(&mut c, &req, at(5));
    assert!(
        queue_events(&a).is_empty() && starts(&a).is_empty(),
        "{a:?}"
    );
}

#[test]
fn a_saved_claim_the_node_no_longer_trusts_is_reported_and_dropped() {
    let key = crate::trust::SigningKey::generate().expect("key").0;
    let memo = QueueMemo {
        claims: vec![request("old-1", 1, None)], // unsigned, saved before keys were configured
        decided: vec![],
    };
    let mut c = core().trusting(crate::trust::Trust::new(
        vec![key.public().clone()],
        Default::default(),
    ));
    let mut out = Vec::new();
    c.restore_queue(memo, &mut out);
    assert!(
        matches!(&queue_events(&out)[..], [EventBody::QueueFinished { ok: false, reason, .. }]
            if reason.starts_with("saved claim not run: unsigned")),
        "{out:?}"
    );
    let saved = saved_queue(&out).expect("the drop is saved");
    assert!(saved.claims.is_empty());
    assert_eq!(saved.decided, vec![(n("old-1"), 1)]);
    let a = restart(&mut c);
    assert!(starts(&a).is_empty(), "{a:?}");
}
