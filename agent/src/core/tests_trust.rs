//! Signed desired state and key rotation, in the core: every rejection names its cause and
//! changes nothing.

use super::tests::{at, catalog, core, events, n, rejection, starts, task};
use super::*;
use crate::trust::{SigningKey, Trust, TrustState};
use skiff_proto::codec::encode;
use skiff_proto::{FleetKey, TrustUpdate};

fn key() -> SigningKey {
    SigningKey::generate().expect("key").0
}

fn trusting(keys: &[&SigningKey]) -> Core {
    let keys = keys.iter().map(|k| k.public().clone()).collect();
    core().trusting(Trust::new(keys, TrustState::default()))
}

fn unsigned(version: u64, family: &str) -> DesiredState {
    DesiredState {
        version,
        cluster: n("demo"),
        node: Some(n("pi-1")),
        tasks: vec![task(family, RestartPolicy::Always)],
        signature: None,
    }
}

fn signed(k: &SigningKey, version: u64, family: &str) -> DesiredState {
    let mut d = unsigned(version, family);
    k.sign_desired(&mut d).expect("sign");
    d
}

fn send(c: &mut Core, d: &DesiredState, ms: u64) -> Vec<Action> {
    send_as(c, Scope::Node, d, ms)
}

fn send_as(c: &mut Core, scope: Scope, d: &DesiredState, ms: u64) -> Vec<Action> {
    c.handle(
        Event::DesiredPayload {
            scope,
            payload: encode(&Message::DesiredState(d.clone())).expect("encode"),
            images: catalog(),
        },
        at(ms),
    )
}

/// The rejection reason, after checking that nothing else happened.
fn rejected(a: &[Action]) -> String {
    assert!(starts(a).is_empty(), "{a:?}");
    assert!(
        !a.iter().any(|x| matches!(x, Action::SaveDesired { .. })),
        "{a:?}"
    );
    rejection(a).expect("a rejection")
}

fn applied(a: &[Action]) -> bool {
    events(a)
        .iter()
        .any(|e| matches!(e, EventBody::DesiredApplied { .. }))
}

#[test]
fn a_signed_document_is_applied_and_saved_with_its_signature() {
    let a_key = key();
    let mut c = trusting(&[&a_key]);
    let d = signed(&a_key, 5, "web");
    let a = send(&mut c, &d, 0);
    assert_eq!(starts(&a), ["web"]);
    let saved = a.iter().find_map(|x| match x {
        Action::SaveDesired { doc, .. } => Some(doc.clone()),
        _ => None,
    });
    assert_eq!(
        saved,
        Some(d),
        "the store keeps the signature to check it again"
    );
}

#[test]
fn unsigned_unknown_key_and_forged_documents_are_rejected_by_name() {
    let a_key = key();
    let mut c = trusting(&[&a_key]);
    let why = rejected(&send(&mut c, &unsigned(5, "web"), 0));
    assert!(why.starts_with("unsigned: "), "{why}");
    assert!(why.contains(a_key.public().key_id.as_str()), "{why}");

    let stranger = key();
    let why = rejected(&send(&mut c, &signed(&stranger, 5, "web"), 1));
    assert!(why.starts_with("unknown key: "), "{why}");
    assert!(why.contains(stranger.public().key_id.as_str()), "{why}");

    // Signed, then changed on the way (a broker or a neighbour rewriting the command).
    let mut forged = signed(&a_key, 5, "web");
    forged.tasks[0].containers[0].command = vec!["sh".into(), "-c".into(), "evil".into()];
    let why = rejected(&send(&mut c, &forged, 2));
    assert!(why.starts_with("forged: "), "{why}");

    // A signature moved to another key id, or cut short.
    let mut moved = signed(&a_key, 5, "web");
    if let Some(s) = &mut moved.signature {
        s.bytes.truncate(10);
    }
    let why = rejected(&send(&mut c, &moved, 3));
    assert!(why.starts_with("forged: "), "{why}");
    assert!(c.tasks.is_empty(), "nothing was applied");
}

#[test]
fn a_signed_old_document_is_rejected_as_replayed() {
    let a_key = key();
    let mut c = trusting(&[&a_key]);
    let old = signed(&a_key, 5, "web");
    assert!(applied(&send(&mut c, &old, 0)));
    assert!(applied(&send(&mut c, &signed(&a_key, 6, "api"), 1)));
    let why = rejected(&send(&mut c, &old, 2));
    assert_eq!(
        why,
        "replayed: version 5 is not newer than the applied version 6"
    );
    // Same version, other content (a signed sibling of the applied one): replayed too.
    let why = rejected(&send(&mut c, &signed(&a_key, 6, "web"), 3));
    assert!(why.starts_with("replayed: "), "{why}");
    // The very same document again (the broker re-delivers the retained one): no event at all.
    let again = send(&mut c, &signed(&a_key, 6, "api"), 4);
    assert!(events(&again).is_empty(), "{again:?}");
}

#[test]
fn a_signed_document_for_another_node_or_cluster_is_rejected() {
    let a_key = key();
    let mut c = trusting(&[&a_key]);
    let mut other_node = unsigned(5, "web");
    other_node.node = Some(n("pi-2"));
    a_key.sign_desired(&mut other_node).expect("sign");
    let why = rejected(&send(&mut c, &other_node, 0));
    assert_eq!(why, "document is for node pi-2, this is pi-1");

    let mut other_cluster = unsigned(5, "web");
    other_cluster.cluster = n("prod");
    a_key.sign_desired(&mut other_cluster).expect("sign");
    let why = rejected(&send(&mut c, &other_cluster, 1));
    assert_eq!(why, "document is for cluster prod, this node is in demo");

    // A node document replayed on the cluster topic.
    let why = rejected(&send_as(
        &mut c,
        Scope::Cluster,
        &signed(&a_key, 5, "web"),
        2,
    ));
    assert!(why.contains("on the cluster topic"), "{why}");
}

#[test]
fn without_trusted_keys_unsigned_documents_apply_as_before() {
    let mut c = core();
    assert!(c.trusted_keys().is_empty());
    assert!(applied(&send(&mut c, &unsigned(5, "web"), 0)));
}

#[test]
fn local_mode_files_are_not_signed_and_still_run() {
    let a_key = key();
    let mut c = trusting(&[&a_key]);
    let a = c.handle(
        Event::LocalDesired {
            tasks: Ok(vec![task("web", RestartPolicy::Always)]),
            images: catalog(),
        },
        at(0),
    );
    assert_eq!(starts(&a), ["web"]);
}

fn restore(c: &mut Core, node: DesiredState) -> Vec<Action> {
    c.handle(
        Event::Restored {
            cluster: None,
            node: Some(Box::new(node)),
            finished: vec![],
            services: vec![],
            last_wall_ms: None,
            images: catalog(),
            adopted: vec![],
        },
        at(0),
    )
}

#[test]
fn saved_documents_are_verified_again_at_start() {
    let a_key = key();
    let mut good = trusting(&[&a_key]);
    let a = restore(&mut good, signed(&a_key, 5, "web"));
    assert_eq!(starts(&a), ["web"]);

    // Saved before trust was configured, or edited on disk: not run.
    let mut c = trusting(&[&a_key]);
    let a = restore(&mut c, unsigned(5, "web"));
    let why = rejected(&a);
    assert!(why.starts_with("saved document: unsigned: "), "{why}");
    let mut edited = signed(&a_key, 5, "web");
    edited.tasks[0].revision = 9;
    let mut c = trusting(&[&a_key]);
    let why = rejected(&restore(&mut c, edited));
    assert!(why.starts_with("saved document: forged: "), "{why}");
}

fn update(
    signer: &SigningKey,
    version: u64,
    add: &[&SigningKey],
    retire: &[&SigningKey],
) -> TrustUpdate {
    let mut u = TrustUpdate {
        version,
        cluster: n("demo"),
        node: n("pi-1"),
        add: add.iter().map(|k| k.public().clone()).collect(),
        retire: retire.iter().map(|k| k.public().key_id.clone()).collect(),
        signature: None,
    };
    signer.sign_trust(&mut u).expect("sign");
    u
}

fn rotate(c: &mut Core, u: &TrustUpdate) -> Result<(Vec<Name>, Option<TrustState>), String> {
    let a = c.handle(Event::TrustUpdate(Box::new(u.clone())), at(10));
    let saved = a.iter().find_map(|x| match x {
        Action::SaveTrust(s) => Some(s.clone()),
        _ => None,
    });
    for e in events(&a) {
        match e {
            EventBody::TrustUpdated { version, keys } => {
                assert_eq!(version, u.version);
                return Ok((keys, saved));
            }
            EventBody::TrustRejected { version, reason } => {
                assert_eq!(version, u.version);
                assert!(saved.is_none(), "a rejected update saves nothing");
                return Err(reason);
            }
            _ => {}
        }
    }
    panic!("no trust event in {a:?}");
}

#[test]
fn rotation_adds_a_key_then_retires_the_old_one() {
    let (old, new) = (key(), key());
    let mut c = trusting(&[&old]);
    assert!(applied(&send(&mut c, &signed(&old, 5, "web"), 0)));
    let rejected_before = rejected(&send(&mut c, &signed(&new, 6, "web"), 1));
    assert!(rejected_before.starts_with("unknown key: "));

    let (keys, saved) = rotate(&mut c, &update(&old, 100, &[&new], &[])).expect("add");
    assert_eq!(
        keys,
        [old.public().key_id.clone(), new.public().key_id.clone()]
    );
    let saved = saved.expect("saved");
    assert_eq!(saved.version, 100);
    assert_eq!(saved.added, [new.public().clone()]);

    // The new key signs; then it retires the old one (which no longer signs anything applied).
    assert!(applied(&send(&mut c, &signed(&new, 7, "web"), 2)));
    let (keys, saved) = rotate(&mut c, &update(&new, 101, &[], &[&old])).expect("retire");
    assert_eq!(keys, [new.public().key_id.clone()]);
    let saved = saved.expect("saved");
    assert_eq!(saved.retired, [old.public().key_id.clone()]);
    let why = rejected(&send(&mut c, &signed(&old, 8, "web"), 3));
    assert!(why.starts_with("unknown key: "), "{why}");

    // After a restart: the config still lists the old key, the saved state retires it.
    let mut again = core().trusting(Trust::new(vec![old.public().clone()], saved));
    assert_eq!(again.trusted_keys(), [new.public().key_id.clone()]);
    let why = rejected(&restore(&mut again, signed(&old, 8, "web")));
    assert!(why.contains("unknown key: "), "{why}");
}

#[test]
fn bad_trust_updates_are_rejected_by_name_and_change_nothing() {
    let (a_key, b_key, stranger) = (key(), key(), key());
    let mut c = trusting(&[&a_key]);
    assert!(applied(&send(&mut c, &signed(&a_key, 5, "web"), 0)));
    let err = |c: &mut Core, u: TrustUpdate| rotate(c, &u).expect_err("accepted");

    let mut unsigned = update(&a_key, 10, &[&b_key], &[]);
    unsigned.signature = None;
    assert!(err(&mut c, unsigned).starts_with("unsigned: "));
    assert!(err(&mut c, update(&stranger, 10, &[&b_key], &[])).starts_with("unknown key: "));
    let mut forged = update(&a_key, 10, &[&b_key], &[]);
    forged.add = vec![stranger.public().clone()];
    assert!(err(&mut c, forged).starts_with("forged: "));
    let mut elsewhere = TrustUpdate {
        node: n("pi-2"),
        ..update(&a_key, 10, &[&b_key], &[])
    };
    a_key.sign_trust(&mut elsewhere).expect("sign");
    assert!(err(&mut c, elsewhere).starts_with("wrong target: "));
    // A key whose id is not its own.
    let mut mislabelled = update(&a_key, 10, &[&b_key], &[]);
    mislabelled.add = vec![FleetKey {
        key_id: a_key.public().key_id.clone(),
        bytes: b_key.public().bytes.clone(),
    }];
    a_key.sign_trust(&mut mislabelled).expect("sign");
    assert!(err(&mut c, mislabelled).contains("does not match the key"));
    assert_eq!(
        err(&mut c, update(&a_key, 10, &[], &[&a_key])),
        "the update would retire the last trusted key"
    );
    assert_eq!(c.trusted_keys(), [a_key.public().key_id.clone()]);

    // Good, then replayed.
    let good = update(&a_key, 10, &[&b_key], &[]);
    rotate(&mut c, &good).expect("good");
    assert!(err(&mut c, good).starts_with("replayed: "));
    assert!(err(&mut c, update(&a_key, 9, &[], &[&b_key])).starts_with("replayed: "));

    // The applied node document is signed by A: A can't be retired until it is re-signed.
    let why = err(&mut c, update(&b_key, 11, &[], &[&a_key]));
    assert!(
        why.starts_with("key ") && why.contains("signs the applied node document version 5"),
        "{why}"
    );
    assert_eq!(c.trusted_keys().len(), 2);
}

#[test]
fn a_node_without_trusted_keys_refuses_trust_updates() {
    let a_key = key();
    let mut c = core();
    let why = rotate(&mut c, &update(&a_key, 1, &[&a_key], &[])).expect_err("accepted");
    assert!(why.contains("trusts no key"), "{why}");
    assert!(c.trusted_keys().is_empty());
}
