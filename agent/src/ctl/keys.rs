//! The console's key commands: `skiff ctl keygen` (a fleet signing key), `skiff ctl trust`
//! (signed key rotation on nodes) and `skiff ctl seal` (a secret sealed to one node's key).

use std::path::Path;

use skiff_proto::codec::{decode, encode, Message};
use skiff_proto::topic::Topic;
use skiff_proto::{
    Command, CommandBody, DesiredState, EventBody, FleetKey, Name, ReplyBody, TrustUpdate,
};
use tokio::time::Instant;

use super::{desired_topic, edit, CtlError, Session, Target};
use crate::trust::{self, KeyError, Trust, TrustState};

impl Target {
    /// A signed edit signs the whole document, the tasks it found included: the document it
    /// builds on must verify with a key this console trusts (its own, `--trusted-key`), or a
    /// forged document retained by the broker would be signed into validity.
    pub(super) fn check_base(
        &self,
        topic: &str,
        base: Option<&DesiredState>,
    ) -> Result<(), CtlError> {
        let (Some(signer), Some(base)) = (&self.signer, base) else {
            return Ok(());
        };
        let mut keys = self.base_keys.clone();
        keys.push(signer.public().clone());
        let known: Vec<&str> = keys.iter().map(|k| k.key_id.as_str()).collect();
        let problem = match &base.signature {
            None => "it is unsigned".to_string(),
            Some(s) if !keys.iter().any(|k| k.key_id == s.key_id) => format!(
                "it is signed by key {}, and this console knows only {}",
                s.key_id,
                known.join(", ")
            ),
            Some(_) => match Trust::new(keys.clone(), TrustState::default()).verify_desired(base) {
                Ok(()) => return Ok(()),
                Err(reason) => reason,
            },
        };
        Err(CtlError::Rejected(format!(
            "the desired state on {topic} (version {}) that this change builds on does not \
             verify: {problem}. A signed change would sign whatever it holds: review it \
             (`skiff ctl desired`), then pass the public key that signed it with --trusted-key \
             FILE, or clear the topic (an empty retained message) to start from nothing",
            base.version
        )))
    }
}

/// `skiff ctl keygen`: makes `{out}/{name}.key` (0600) and `{out}/{name}.pub`.
pub fn keygen(out: &Path, name: &Name) -> Result<(), CtlError> {
    let g = trust::keygen(out, name).map_err(|e| match e {
        KeyError::Format { .. } => CtlError::BadInput(e.to_string()),
        _ => CtlError::Failed(e.to_string()),
    })?;
    println!(
        "wrote {} (the private key, 0600: keep it off the devices)",
        g.private.display()
    );
    println!(
        "wrote {} (list it in each agent's [trust] keys)",
        g.public.display()
    );
    println!("{}", trust::format_public(&g.key));
    Ok(())
}

/// What `skiff ctl trust add | retire` asks nodes to change.
#[derive(Debug, Clone, Default)]
pub struct TrustChange {
    pub add: Vec<FleetKey>,
    pub retire: Vec<Name>,
    /// The retired keys given as files: documents they signed can be checked before they are
    /// re-signed.
    pub retire_keys: Vec<FleetKey>,
}

/// `skiff ctl trust add | retire`: a signed trust update to each node, answered by its
/// `TrustUpdated` / `TrustRejected` event. Before retiring keys, the node's and the cluster's
/// desired-state documents signed by one of them are re-signed with `--sign-key` (a node
/// refuses to retire a key its applied documents depend on).
pub async fn trust_update(
    target: &Target,
    nodes: Vec<Name>,
    change: TrustChange,
) -> Result<(), CtlError> {
    let Some(signer) = target.signer.clone() else {
        return Err(CtlError::BadInput(
            "--sign-key FILE (or SKIFF_SIGN_KEY) is required: a trust update is signed by a key \
             the nodes trust now"
                .into(),
        ));
    };
    if !change.retire.is_empty() {
        let mut t = target.clone();
        t.base_keys.extend(change.retire_keys.iter().cloned());
        resign(&t, &nodes, &change.retire).await?;
    }
    // Newer than any earlier update made from a console with a sane clock.
    let version = crate::clock::wall_ms();
    let mut rejected = Vec::new();
    for node in &nodes {
        let mut update = TrustUpdate {
            version,
            cluster: target.cluster.clone(),
            node: node.clone(),
            add: change.add.clone(),
            retire: change.retire.clone(),
            signature: None,
        };
        signer.sign_trust(&mut update).map_err(CtlError::Failed)?;
        match send_trust(target, node, update).await? {
            Ok(keys) => {
                let keys: Vec<&str> = keys.iter().map(Name::as_str).collect();
                println!(
                    "{node}: trust version {version}: trusts {}",
                    keys.join(", ")
                );
            }
            Err(reason) => {
                eprintln!("{node}: rejected trust version {version}: {reason}");
                rejected.push(format!("{node}: {reason}"));
            }
        }
    }
    if rejected.is_empty() {
        Ok(())
    } else {
        Err(CtlError::Rejected(format!(
            "trust update rejected: {}",
            rejected.join("; ")
        )))
    }
}

/// Publishes one trust update and waits for the node's verdict.
async fn send_trust(
    target: &Target,
    node: &Name,
    update: TrustUpdate,
) -> Result<Result<Vec<Name>, String>, CtlError> {
    let topic = |t: Topic| t.to_topic();
    let events = topic(Topic::Events {
        cluster: target.cluster.clone(),
        node: node.clone(),
    });
    let reply = topic(Topic::Reply {
        cluster: target.cluster.clone(),
        node: node.clone(),
    });
    let cmd = topic(Topic::Cmd {
        cluster: target.cluster.clone(),
        node: node.clone(),
    });
    let mut s = Session::open(target, vec![events, reply]).await?;
    let version = update.version;
    let id = crate::clock::wall_ms();
    let bytes = encode(&Message::Command(Command {
        id,
        body: CommandBody::TrustUpdate(Box::new(update)),
    }))
    .map_err(|e| CtlError::BadInput(e.to_string()))?;
    s.publish(&cmd, bytes, false, target.timeout).await?;
    let deadline = Instant::now() + target.timeout;
    while let Some((_, payload, retained)) = s.next(deadline).await {
        if retained {
            continue;
        }
        match decode(&payload) {
            Ok(Message::Event(ev)) if ev.node == *node => match ev.body {
                EventBody::TrustUpdated { version: v, keys } if v == version => {
                    return Ok(Ok(keys))
                }
                EventBody::TrustRejected { version: v, reason } if v == version => {
                    return Ok(Err(reason))
                }
                _ => {}
            },
            // An agent that predates trust updates can't decode the command.
            Ok(Message::Reply(r)) => {
                if let ReplyBody::Unsupported { reason } = r.body {
                    return Err(CtlError::Failed(format!(
                        "node {node} does not support trust updates: {reason}"
                    )));
                }
            }
            _ => {}
        }
    }
    Err(CtlError::Timeout(format!(
        "node {node} did not answer the trust update (is it online?)"
    )))
}

/// Re-signs, with `--sign-key`, the desired-state documents of `nodes` and of the cluster that
/// are signed by a key about to be retired.
async fn resign(target: &Target, nodes: &[Name], retire: &[Name]) -> Result<(), CtlError> {
    let signer_id = target.signer.as_ref().map(|k| k.public().key_id.clone());
    let mut scopes: Vec<Option<Name>> = vec![None];
    scopes.extend(nodes.iter().cloned().map(Some));
    let topics: Vec<String> = scopes
        .iter()
        .map(|n| desired_topic(&target.cluster, n.as_ref()))
        .collect();
    let mut s = Session::open(target, topics.clone()).await?;
    let retained = s
        .retained(std::time::Duration::from_millis(300), target.timeout)
        .await;
    drop(s);
    for (scope, topic) in scopes.into_iter().zip(&topics) {
        let signed_by =
            retained
                .iter()
                .filter(|(t, _)| t == topic)
                .find_map(|(_, p)| match decode(p) {
                    Ok(Message::DesiredState(d)) => d.signature.map(|s| s.key_id),
                    _ => None,
                });
        let Some(key) = signed_by.filter(|k| retire.contains(k)) else {
            continue;
        };
        let whose = scope
            .as_ref()
            .map_or("the cluster's".to_string(), |n| format!("node {n}'s"));
        if signer_id.as_ref() == Some(&key) {
            return Err(CtlError::BadInput(format!(
                "{whose} desired state is signed by key {key}, which is being retired: sign \
                 with a key that stays trusted"
            )));
        }
        println!("re-signing {whose} desired state (signed by key {key})");
        edit(target, scope, true, |_| Ok(())).await?;
    }
    Ok(())
}

/// `skiff ctl seal`: seals `value` (read from stdin by the caller) to one node's X25519 key and
/// prints `skiff-sealed:v1:...` for a container's `secrets[].valueFrom`. The key comes from
/// `node_key` (a `node.pub` file, or `x25519:<hex>` as `skiff node init` prints it) or, without
/// it, from the node itself over the broker (printed, to compare with the device's journal).
pub async fn seal(
    target: &Target,
    node: Name,
    node_key: Option<String>,
    value: &str,
) -> Result<(), CtlError> {
    let key = match node_key {
        Some(k) => {
            let path = Path::new(&k);
            let text = if path.is_file() {
                std::fs::read_to_string(path)
                    .map_err(|e| CtlError::BadInput(format!("--node-key {k}: {e}")))?
            } else {
                k.clone()
            };
            crate::secrets::parse_node_key(&text)
                .map_err(|e| CtlError::BadInput(format!("--node-key {k}: {e}")))?
        }
        None => {
            let mut ch = super::NodeChannel::open(target, node.clone()).await?;
            let ReplyBody::NodeKey { x25519 } = ch.request(CommandBody::NodeKey).await? else {
                return Err(CtlError::Failed(format!(
                    "node {node} answered the key request with something else"
                )));
            };
            let key: [u8; 32] = x25519.as_slice().try_into().map_err(|_| {
                CtlError::Failed(format!("node {node} sent a {}-byte key", x25519.len()))
            })?;
            eprintln!(
                "sealing to node {node}'s key x25519:{} as the broker delivered it; compare it \
                 with `skiff node init` on the device, or pass --node-key",
                hex::encode(key)
            );
            key
        }
    };
    let sealed =
        crate::secrets::seal(&key, value).map_err(|e| CtlError::BadInput(e.to_string()))?;
    println!("{sealed}");
    Ok(())
}
