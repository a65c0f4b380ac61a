//! `skiff ctl run --cluster`: copies of a task offered to the cluster queue, taken by one node
//! each, handed back and offered again when a node has no room, followed to their end.
//!
//! The console is what offers a handed-back copy again (once per hand-back, counted in
//! `attempt`), so a copy is never on offer twice at once; see `core/queue.rs` for the node's side
//! of "exactly once".

use std::collections::BTreeMap;
use std::time::Duration;

use skiff_proto::codec::{decode, encode, Message};
use skiff_proto::topic::{all_nodes, Topic};
use skiff_proto::{EventBody, Name, RunRequest, TaskDefinition};
use tokio::time::Instant;

use super::{CtlError, Session, Target};

/// Copies one `skiff ctl run` may ask for.
pub const MAX_COUNT: u32 = 1000;

/// How `skiff ctl run --cluster` behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Copies (each taken by one node).
    pub count: u32,
    /// Offers of one copy before it is reported unplaced (None: twice the nodes online, at
    /// least 3).
    pub max_offers: Option<u32>,
    /// Publish and return without following the copies (hand-backs are then not offered again).
    pub detach: bool,
    /// How long to follow the copies.
    pub timeout: Duration,
}

/// Where a copy is.
#[derive(Debug, Clone, PartialEq)]
enum Copy {
    /// On offer (attempt n), no node answered yet.
    Offered,
    /// Handed back; offered again at `due`.
    Waiting {
        due: Instant,
    },
    Claimed {
        node: Name,
    },
    Done {
        node: Name,
        ok: bool,
        reason: String,
    },
    /// Refused (signature, cluster) or handed back `max_offers` times.
    Unplaced {
        reason: String,
    },
}

struct Tracked {
    req: RunRequest,
    state: Copy,
    /// Why nodes handed it back (the last few), for the unplaced report.
    refusals: Vec<String>,
}

/// Random hex for copy ids: two `ctl run`s of one family never share an id.
fn random_hex() -> Result<String, CtlError> {
    let mut b = [0u8; 3];
    getrandom::getrandom(&mut b).map_err(|e| CtlError::Failed(format!("randomness: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The copy ids: `{family}-{random}-{n}`, the family cut to fit a name.
fn copy_ids(family: &Name, count: u32) -> Result<Vec<Name>, CtlError> {
    let tag = random_hex()?;
    let room = skiff_proto::limits::MAX_NAME - tag.len() - 2 - count.to_string().len();
    let stem: String = family.as_str().chars().take(room).collect();
    (1..=count)
        .map(|i| {
            format!("{stem}-{tag}-{i}")
                .parse()
                .map_err(|e| CtlError::BadInput(format!("copy id for family {family}: {e}")))
        })
        .collect()
}

/// After this long without any node answering an offer, `run` says what may be wrong.
const SILENCE_HINT: Duration = Duration::from_secs(30);

/// Backoff before offering a handed-back copy again: the cluster may be full for a while.
fn reoffer_delay(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(5))
}

/// `skiff ctl run FILE --cluster`: offers `count` copies and follows them to their end.
pub async fn run_cluster(
    target: &Target,
    def: TaskDefinition,
    opts: RunOptions,
) -> Result<(), CtlError> {
    if !(1..=MAX_COUNT).contains(&opts.count) {
        return Err(CtlError::BadInput(format!(
            "--count {} is outside 1..={MAX_COUNT}",
            opts.count
        )));
    }
    let max_offers = match opts.max_offers {
        Some(0) => return Err(CtlError::BadInput("--max-offers must be at least 1".into())),
        Some(m) => m,
        None => {
            let online = super::node_statuses(target, None)
                .await?
                .iter()
                .filter(|s| s.state != skiff_proto::NodeState::Offline)
                .count();
            (u32::try_from(online).unwrap_or(u32::MAX).saturating_mul(2)).max(3)
        }
    };
    let queue = Topic::Queue {
        cluster: target.cluster.clone(),
    }
    .to_topic();
    let mut s = Session::open(target, vec![all_nodes(&target.cluster, "events")]).await?;
    let mut copies: BTreeMap<Name, Tracked> = BTreeMap::new();
    for id in copy_ids(&def.family, opts.count)? {
        let req = RunRequest {
            cluster: target.cluster.clone(),
            id: id.clone(),
            attempt: 1,
            issued_ms: crate::clock::wall_ms(),
            task: def.clone(),
            signature: None,
        };
        req.validate()
            .map_err(|e| CtlError::BadInput(format!("task {}: {e}", def.family)))?;
        copies.insert(
            id,
            Tracked {
                req,
                state: Copy::Offered,
                refusals: Vec::new(),
            },
        );
    }
    for t in copies.values_mut() {
        offer(&mut s, target, &queue, &mut t.req).await?;
    }
    println!(
        "offered {} cop{} of {} to cluster {} ({})",
        opts.count,
        if opts.count == 1 { "y" } else { "ies" },
        def.family,
        target.cluster,
        copies
            .keys()
            .map(Name::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    );
    if opts.detach {
        return Ok(());
    }
    let deadline = Instant::now() + opts.timeout;
    let mut hint_at = Some(Instant::now() + SILENCE_HINT);
    loop {
        let open = copies
            .values()
            .filter(|t| !matches!(t.state, Copy::Done { .. } | Copy::Unplaced { .. }))
            .count();
        if open == 0 {
            break;
        }
        // Offer again what is due.
        let now = Instant::now();
        for t in copies.values_mut() {
            if matches!(t.state, Copy::Waiting { due } if due <= now) {
                t.req.attempt += 1;
                offer(&mut s, target, &queue, &mut t.req).await?;
                t.state = Copy::Offered;
            }
        }
        let next_due = copies
            .values()
            .filter_map(|t| match t.state {
                Copy::Waiting { due } => Some(due),
                _ => None,
            })
            .min();
        if hint_at.is_some_and(|h| h <= now) {
            hint_at = None;
            let silent = copies.values().filter(|t| t.state == Copy::Offered).count();
            if silent > 0 {
                println!(
                    "no node has answered {silent} offer(s) for {} s: no agent of cluster {} may \
                     be connected with [queue] enabled, or the broker holds them for agents that \
                     are offline (they take them when back); still waiting",
                    SILENCE_HINT.as_secs(),
                    target.cluster
                );
            }
        }
        let wait_until = [next_due, hint_at]
            .into_iter()
            .flatten()
            .fold(deadline, Instant::min);
        let Some((topic, payload, _)) = s.next(wait_until).await else {
            if Instant::now() >= deadline {
                break;
            }
            continue;
        };
        if !matches!(Topic::parse(&topic), Some(Topic::Events { .. })) {
            continue;
        }
        let Ok(Message::Event(ev)) = decode(&payload) else {
            continue;
        };
        let node = ev.node;
        if matches!(
            ev.body,
            EventBody::QueueClaimed { .. }
                | EventBody::QueueHandedBack { .. }
                | EventBody::QueueRejected { .. }
        ) {
            hint_at = None; // nodes are answering
        }
        match ev.body {
            EventBody::QueueClaimed { request, attempt } => {
                if let Some(t) = copies.get_mut(&request) {
                    if attempt == t.req.attempt && t.state == Copy::Offered {
                        println!("{request}: claimed by {node}");
                        t.state = Copy::Claimed { node };
                    }
                }
            }
            EventBody::QueueHandedBack {
                request,
                attempt,
                reason,
            } => {
                let Some(t) = copies.get_mut(&request) else {
                    continue;
                };
                // Once per offer: a hand-back reported twice (at-least-once events) is
                // not offered twice.
                if attempt != t.req.attempt || t.state != Copy::Offered {
                    continue;
                }
                t.refusals.push(format!("{node}: {reason}"));
                if t.refusals.len() > 4 {
                    t.refusals.remove(0);
                }
                if attempt >= max_offers {
                    println!("{request}: handed back by {node} ({reason}); no node took it after {attempt} offers");
                    t.state = Copy::Unplaced {
                        reason: format!(
                            "no node took it after {attempt} offers ({})",
                            t.refusals.join("; ")
                        ),
                    };
                } else {
                    println!("{request}: handed back by {node} ({reason}); offering again ({}/{max_offers})", attempt + 1);
                    t.state = Copy::Waiting {
                        due: Instant::now() + reoffer_delay(attempt),
                    };
                }
            }
            EventBody::QueueRejected {
                request: Some(request),
                attempt,
                reason,
            } => {
                if let Some(t) = copies.get_mut(&request) {
                    if attempt == t.req.attempt && t.state == Copy::Offered {
                        println!("{request}: REJECTED by {node}: {reason}");
                        t.state = Copy::Unplaced {
                            reason: format!("rejected by {node}: {reason}"),
                        };
                    }
                }
            }
            EventBody::QueueFinished {
                request,
                ok,
                reason,
                ..
            } => {
                if let Some(t) = copies.get_mut(&request) {
                    if !matches!(t.state, Copy::Done { .. }) {
                        let how = if ok { "succeeded" } else { "FAILED" };
                        println!("{request}: {how} on {node}: {reason}");
                        t.state = Copy::Done { node, ok, reason };
                    }
                }
            }
            _ => {}
        }
    }
    summarize(&copies)
}

/// Publishes one offer (signed when a key was given), waiting for the broker's acknowledgement.
async fn offer(
    s: &mut Session,
    target: &Target,
    queue: &str,
    req: &mut RunRequest,
) -> Result<(), CtlError> {
    req.issued_ms = crate::clock::wall_ms();
    if let Some(k) = &target.signer {
        k.sign_run(req).map_err(CtlError::Failed)?;
    }
    let bytes = encode(&Message::RunRequest(req.clone()))
        .map_err(|e| CtlError::BadInput(format!("task {}: {e}", req.task.family)))?;
    s.publish(queue, bytes, false, target.timeout).await
}

/// The end: every copy's outcome; an error when any failed, was not placed or is not done.
fn summarize(copies: &BTreeMap<Name, Tracked>) -> Result<(), CtlError> {
    let mut per_node: BTreeMap<&str, u32> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut unfinished = Vec::new();
    for (id, t) in copies {
        match &t.state {
            Copy::Done { node, ok, reason } => {
                *per_node.entry(node.as_str()).or_default() += 1;
                if !ok {
                    problems.push(format!("{id} failed on {node}: {reason}"));
                }
            }
            Copy::Unplaced { reason } => problems.push(format!("{id}: {reason}")),
            Copy::Claimed { node } => unfinished.push(format!("{id}: still running on {node}")),
            Copy::Offered => unfinished.push(format!(
                "{id}: offered (attempt {}), no node answered: no agent of the cluster is \
                 connected, or the broker holds it for an agent that is offline (it takes it \
                 when back)",
                t.req.attempt
            )),
            Copy::Waiting { .. } => {
                unfinished.push(format!("{id}: handed back, not offered again"))
            }
        }
    }
    let ran: Vec<String> = per_node.iter().map(|(n, c)| format!("{n}: {c}")).collect();
    if !ran.is_empty() {
        println!("ran on {}", ran.join(", "));
    }
    if !unfinished.is_empty() {
        return Err(CtlError::Timeout(format!(
            "{} of {} copies not finished:\n  {}{}",
            unfinished.len(),
            copies.len(),
            unfinished.join("\n  "),
            if problems.is_empty() {
                String::new()
            } else {
                format!("\n  {}", problems.join("\n  "))
            }
        )));
    }
    if !problems.is_empty() {
        return Err(CtlError::Failed(format!(
            "{} of {} copies did not succeed:\n  {}",
            problems.len(),
            copies.len(),
            problems.join("\n  ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ids_fit_a_name_and_differ_between_runs() {
        let family: Name = "a".repeat(64).parse().expect("name");
        let ids = copy_ids(&family, 1000).expect("ids");
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|i| i.as_str().len() <= 64));
        assert!(ids[999].as_str().ends_with("-1000"));
        let short: Name = "job".parse().expect("name");
        let one = copy_ids(&short, 2).expect("ids");
        let two = copy_ids(&short, 2).expect("ids");
        assert!(one[0].as_str().starts_with("job-") && one[0].as_str().ends_with("-1"));
        // 24 random bits: equal only by a 1-in-16M chance.
        assert_ne!(one, two);
    }

    #[test]
    fn reoffers_back_off_up_to_five_seconds() {
        assert_eq!(reoffer_delay(1), Duration::from_millis(500));
        assert_eq!(reoffer_delay(2), Duration::from_secs(1));
        assert_eq!(reoffer_delay(30), Duration::from_secs(5));
    }
}
