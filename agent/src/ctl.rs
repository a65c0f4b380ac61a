//! The fleet console: `skiff ctl ...` talks to a cluster through the broker.
//!
//! Desired state is a retained document per cluster and per node. `apply` and `stop` read the
//! current document, change it, publish it with a newer version and wait for the target node(s)
//! to say `applied` or `rejected`. A rejected document is replaced at once by the previous
//! document as it was, so the broker never keeps a document the node refuses: after a reboot the
//! node still finds the state it was running. With `--sign-key` the document is signed, and the
//! document it builds on must verify first (a forged one would otherwise be signed into
//! validity).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use skiff_proto::codec::{decode, decode_as, encode, Kind, Message};
use skiff_proto::topic::{all_nodes, Topic};
use skiff_proto::{
    Command, CommandBody, DesiredState, EventBody, Name, NodeState, ReplyBody, Scope, Status,
    TaskDefinition, TaskState,
};
use tokio::time::Instant;

use crate::config::BrokerUrl;
use crate::display;
use crate::mqtt::{self, Inbound};

mod keys;
pub use keys::{keygen, seal, trust_update, TrustChange};
mod endpoints;
pub use endpoints::endpoints;
mod run;
pub use run::{run_cluster, RunOptions};
pub mod fleet;
mod top;
pub use top::{top, TopOptions};

/// Why a console command failed; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the broker at {broker}: {reason}")]
    Unreachable { broker: String, reason: String },
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Rejected(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    /// Exit code: 65 bad input (EX_DATAERR), 69 broker unreachable (EX_UNAVAILABLE),
    /// 75 timeout (EX_TEMPFAIL), 1 rejected or failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::BadInput(_) => 65,
            CtlError::Unreachable { .. } => 69,
            CtlError::Timeout(_) => 75,
            CtlError::Rejected(_) | CtlError::Failed(_) => 1,
        }
    }
}

/// Where the console connects.
#[derive(Debug, Clone)]
pub struct Target {
    pub broker: BrokerUrl,
    /// TLS to the broker (`mqtts://` with `--ca`, `--cert`, `--key`).
    pub tls: Option<crate::tls::BrokerTls>,
    pub cluster: Name,
    /// How long to wait for the broker and for answers.
    pub timeout: Duration,
    /// The fleet key that signs desired state and trust updates (`--sign-key`).
    pub signer: Option<std::sync::Arc<crate::trust::SigningKey>>,
    /// Besides the signer's own, keys a signed edit accepts on the document it builds on
    /// (`--trusted-key`).
    pub base_keys: Vec<skiff_proto::FleetKey>,
}

impl Target {
    /// Signs the document when a signing key was given.
    fn sign(&self, doc: &mut DesiredState) -> Result<(), CtlError> {
        match &self.signer {
            Some(k) => k.sign_desired(doc).map_err(CtlError::Failed),
            None => Ok(()),
        }
    }
}

/// An open console connection.
struct Session {
    client: AsyncClient,
    inbound: tokio::sync::mpsc::Receiver<Inbound>,
    pending: VecDeque<(String, Vec<u8>, bool)>,
    broker: String,
    /// Subscriptions at QoS 0 ([`Session::open_reader`]), made again after a reconnect.
    reading: Vec<String>,
}

impl Session {
    /// Connects and subscribes; returns once the subscriptions are acknowledged.
    async fn open(target: &Target, subscriptions: Vec<String>) -> Result<Session, CtlError> {
        Session::open_as(target, subscriptions, false).await
    }

    /// [`Session::open`] with the subscriptions at QoS 0, for reading the fleet: a broker
    /// queues only so many QoS 1 messages per client (mosquitto's `max_queued_messages`, 1000
    /// by default; EMQX's `max_mqueue_len`) and drops the rest, so the retained statuses of a
    /// 10,000-node fleet arrive whole only at QoS 0. Loss is then possible only when the
    /// connection drops, as with any console's clean session.
    async fn open_reader(target: &Target, subscriptions: Vec<String>) -> Result<Session, CtlError> {
        Session::open_as(target, subscriptions, true).await
    }

    async fn open_as(
        target: &Target,
        subscriptions: Vec<String>,
        qos0: bool,
    ) -> Result<Session, CtlError> {
        let scheme = if target.tls.is_some() {
            "mqtts"
        } else {
            "mqtt"
        };
        let broker = format!("{scheme}://{}:{}", target.broker.host, target.broker.port);
        let tls = target.tls.as_ref().map(|t| t.client.clone());
        let conn = mqtt::connect_tls(
            mqtt::ConnectOptions {
                client_id: format!(
                    "skiff-ctl-{}-{}",
                    std::process::id(),
                    crate::clock::wall_ms() % 1_000_000
                ),
                broker: target.broker.clone(),
                keepalive: Duration::from_secs(30),
                last_will: None,
                subscriptions: if qos0 {
                    Vec::new()
                } else {
                    subscriptions.clone()
                },
            },
            tls,
        );
        let mut s = Session {
            client: conn.client,
            inbound: conn.inbound,
            pending: VecDeque::new(),
            broker,
            reading: if qos0 {
                subscriptions.clone()
            } else {
                Vec::new()
            },
        };
        let deadline = Instant::now() + target.timeout;
        loop {
            match tokio::time::timeout_at(deadline, s.inbound.recv()).await {
                Ok(Some(Inbound::Subscribed)) => return Ok(s),
                Ok(Some(Inbound::Connected)) if subscriptions.is_empty() => return Ok(s),
                Ok(Some(Inbound::Connected)) => s.subscribe_reading(),
                Ok(Some(Inbound::Disconnected(reason))) => {
                    return Err(CtlError::Unreachable {
                        broker: s.broker,
                        reason,
                    })
                }
                Ok(Some(Inbound::Publish {
                    topic,
                    payload,
                    retained,
                    ..
                })) => s.pending.push_back((topic, payload, retained)),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(CtlError::Unreachable {
                        broker: s.broker,
                        reason: "no answer".into(),
                    })
                }
            }
        }
    }

    /// The next message, or `None` at the deadline.
    async fn next(&mut self, deadline: Instant) -> Option<(String, Vec<u8>, bool)> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        loop {
            match tokio::time::timeout_at(deadline, self.inbound.recv()).await {
                Ok(Some(Inbound::Publish {
                    topic,
                    payload,
                    retained,
                    ..
                })) => return Some((topic, payload, retained)),
                Ok(Some(Inbound::Disconnected(reason))) => {
                    eprintln!("skiff ctl: broker connection lost ({reason}); reconnecting");
                }
                Ok(Some(Inbound::Connected)) => self.subscribe_reading(),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Makes the QoS 0 subscriptions (on connecting, and again after a reconnect: the session
    /// is clean).
    fn subscribe_reading(&self) {
        if self.reading.is_empty() {
            return;
        }
        let filters = self
            .reading
            .iter()
            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtMostOnce));
        if let Err(e) = self.client.try_subscribe_many(filters) {
            eprintln!("skiff ctl: cannot subscribe: {e}");
        }
    }

    /// Publishes at QoS 1 and waits for the broker's acknowledgement.
    async fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        timeout: Duration,
    ) -> Result<(), CtlError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|e| CtlError::Failed(format!("cannot publish to {topic}: {e}")))?;
        self.await_acks(1, timeout).await.map_err(|e| match e {
            AckWait::Lost(e) => e,
            AckWait::Short(_) => {
                CtlError::Timeout(format!("the broker did not acknowledge {topic}"))
            }
        })
    }

    /// Publishes many messages at QoS 1, [`PUBLISH_WINDOW`] at a time, each window waiting for
    /// its acknowledgements: a fleet's worth of documents without a round trip each.
    async fn publish_all(
        &mut self,
        msgs: Vec<(String, Vec<u8>)>,
        retain: bool,
        timeout: Duration,
    ) -> Result<(), CtlError> {
        for window in msgs.chunks(PUBLISH_WINDOW) {
            for (topic, payload) in window {
                self.client
                    .publish(topic, QoS::AtLeastOnce, retain, payload.clone())
                    .await
                    .map_err(|e| CtlError::Failed(format!("cannot publish to {topic}: {e}")))?;
            }
            self.await_acks(window.len(), timeout)
                .await
                .map_err(|e| match e {
                    AckWait::Lost(e) => e,
                    AckWait::Short(acked) => CtlError::Timeout(format!(
                        "the broker acknowledged {acked} of {} messages",
                        window.len()
                    )),
                })?;
        }
        Ok(())
    }

    /// Waits for `n` PUBACKs within `timeout`, keeping the messages that arrive meanwhile.
    async fn await_acks(&mut self, n: usize, timeout: Duration) -> Result<(), AckWait> {
        let deadline = Instant::now() + timeout;
        let mut acked = 0;
        while acked < n {
            match tokio::time::timeout_at(deadline, self.inbound.recv()).await {
                Ok(Some(Inbound::PubAck)) => acked += 1,
                Ok(Some(Inbound::Publish {
                    topic,
                    payload,
                    retained,
                    ..
                })) => self.pending.push_back((topic, payload, retained)),
                Ok(Some(Inbound::Disconnected(reason))) => {
                    return Err(AckWait::Lost(CtlError::Unreachable {
                        broker: self.broker.clone(),
                        reason,
                    }))
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Err(AckWait::Short(acked)),
            }
        }
        Ok(())
    }

    /// Retained messages that arrive within a short quiet period after subscribing. Only a
    /// retained message extends the wait: in a busy fleet live messages never pause for
    /// `quiet` (10,000 nodes with metrics every second kept `ctl nodes` waiting for `cap`).
    async fn retained(&mut self, quiet: Duration, cap: Duration) -> Vec<(String, Vec<u8>)> {
        let end = Instant::now() + cap;
        let mut out = Vec::new();
        let mut keep = VecDeque::new();
        let mut deadline = (Instant::now() + quiet).min(end);
        loop {
            match self.next(deadline).await {
                Some((t, p, true)) => {
                    out.push((t, p));
                    deadline = (Instant::now() + quiet).min(end);
                }
                Some(other) => keep.push_back(other),
                None => break,
            }
        }
        self.pending.extend(keep);
        out
    }
}

/// Publishes in flight at once in [`Session::publish_all`]: below the client's request channel
/// (256), so sending never waits on the event loop while it waits on us.
const PUBLISH_WINDOW: usize = 64;

/// Why [`Session::await_acks`] returned early.
enum AckWait {
    /// The connection broke.
    Lost(CtlError),
    /// Fewer acknowledgements than asked for (this many) before the timeout.
    Short(usize),
}

fn desired_topic(cluster: &Name, node: Option<&Name>) -> String {
    match node {
        Some(n) => Topic::NodeDesired {
            cluster: cluster.clone(),
            node: n.clone(),
        }
        .to_topic(),
        None => Topic::ClusterDesired {
            cluster: cluster.clone(),
        }
        .to_topic(),
    }
}

/// Reads task-definition files; the same checks as `skiff task validate`.
pub fn read_task_files(paths: &[std::path::PathBuf]) -> Result<Vec<TaskDefinition>, CtlError> {
    let mut defs: Vec<TaskDefinition> = Vec::new();
    for p in paths {
        let def = crate::local::read_task_file(p).map_err(CtlError::BadInput)?;
        if defs.iter().any(|d| d.family == def.family) {
            return Err(CtlError::BadInput(format!(
                "{}: family {} appears twice",
                p.display(),
                def.family
            )));
        }
        defs.push(def);
    }
    Ok(defs)
}

/// `skiff ctl apply`: adds or replaces tasks in the cluster's or a node's desired state.
pub async fn apply(
    target: &Target,
    defs: Vec<TaskDefinition>,
    node: Option<Name>,
    wait: bool,
) -> Result<(), CtlError> {
    edit(target, node, wait, |tasks| {
        for def in defs {
            match tasks.iter_mut().find(|t| t.family == def.family) {
                Some(t) => *t = def,
                None => tasks.push(def),
            }
        }
        Ok(())
    })
    .await
}

/// `skiff ctl stop`: removes a task from the cluster's or a node's desired state.
pub async fn stop(
    target: &Target,
    task: Name,
    node: Option<Name>,
    wait: bool,
) -> Result<(), CtlError> {
    edit(target, node.clone(), wait, |tasks| {
        let before = tasks.len();
        tasks.retain(|t| t.family != task);
        if tasks.len() == before {
            let whose = node
                .as_ref()
                .map_or("the cluster's".to_string(), |n| format!("node {n}'s"));
            return Err(CtlError::BadInput(format!(
                "task {task} is not in {whose} desired state"
            )));
        }
        Ok(())
    })
    .await
}

async fn edit(
    target: &Target,
    node: Option<Name>,
    wait: bool,
    change: impl FnOnce(&mut Vec<TaskDefinition>) -> Result<(), CtlError>,
) -> Result<(), CtlError> {
    let topic = desired_topic(&target.cluster, node.as_ref());
    let events = match &node {
        Some(n) => Topic::Events {
            cluster: target.cluster.clone(),
            node: n.clone(),
        }
        .to_topic(),
        None => all_nodes(&target.cluster, "events"),
    };
    let statuses = all_nodes(&target.cluster, "status");
    let mut s = Session::open_reader(target, vec![topic.clone(), events, statuses]).await?;
    let retained = s.retained(Duration::from_millis(300), target.timeout).await;
    let doc = Edit::from_retained(topic, node.clone(), &retained);
    let online: BTreeSet<Name> = retained_statuses(&retained)
        .filter(|st| st.state == NodeState::Online)
        .map(|st| st.node)
        .collect();
    target.check_base(&doc.topic, doc.previous.as_ref())?;
    let version = doc.next_version().max(crate::clock::wall_ms() / 1000);
    let bytes = doc.document(target, version, change)?;
    s.publish(&doc.topic, bytes, true, target.timeout).await?;
    println!("published desired state version {version} to {}", doc.topic);
    if !wait {
        return Ok(());
    }
    let expect: BTreeSet<Name> = match &node {
        Some(n) => [n.clone()].into(),
        None => online,
    };
    if expect.is_empty() {
        println!(
            "no node of cluster {} is online; nodes apply it when they connect",
            target.cluster
        );
        return Ok(());
    }
    let scope = if node.is_some() {
        Scope::Node
    } else {
        Scope::Cluster
    };
    let outcome = await_outcome(&mut s, version, scope, &expect, target.timeout).await;
    let mut rejected = Vec::new();
    for n in &expect {
        match outcome.get(n) {
            Some(Ok(())) => println!("{n}: applied version {version}"),
            Some(Err(reason)) => {
                eprintln!("{n}: rejected version {version}: {reason}");
                rejected.push(format!("{n}: {reason}"));
            }
            None => eprintln!("{n}: no answer within {:?}", target.timeout),
        }
    }
    if !rejected.is_empty() {
        if node.is_some() {
            doc.restore(&mut s, target, version).await?;
        }
        return Err(CtlError::Rejected(format!(
            "desired state rejected: {}",
            rejected.join("; ")
        )));
    }
    if outcome.len() < expect.len() {
        return Err(CtlError::Timeout("not every node answered".into()));
    }
    Ok(())
}

/// The statuses among retained messages.
fn retained_statuses(retained: &[(String, Vec<u8>)]) -> impl Iterator<Item = Status> + '_ {
    retained.iter().filter_map(|(t, p)| {
        if !matches!(Topic::parse(t), Some(Topic::Status { .. })) {
            return None;
        }
        match decode(p) {
            Ok(Message::Status(st)) => Some(st),
            _ => None,
        }
    })
}

/// One desired-state document being replaced: its topic and what the broker retains there now.
struct Edit {
    topic: String,
    node: Option<Name>,
    previous: Option<DesiredState>,
    previous_bytes: Option<Vec<u8>>,
}

impl Edit {
    /// The document retained on the cluster's (`node` None) or the node's desired topic.
    fn from_retained(topic: String, node: Option<Name>, retained: &[(String, Vec<u8>)]) -> Edit {
        let mut edit = Edit {
            topic,
            node,
            previous: None,
            previous_bytes: None,
        };
        if let Some((_, payload)) = retained.iter().find(|(t, _)| *t == edit.topic) {
            match decode_as(Kind::DesiredState, payload) {
                Ok(Message::DesiredState(d)) => {
                    edit.previous = Some(d);
                    edit.previous_bytes = Some(payload.clone());
                }
                Ok(_) => {}
                Err(e) => eprintln!(
                    "skiff ctl: ignoring the unreadable document on {}: {e}",
                    edit.topic
                ),
            }
        }
        edit
    }

    /// The lowest version the new document may have.
    fn next_version(&self) -> u64 {
        self.previous
            .as_ref()
            .map_or(0, |d| d.version)
            .saturating_add(1)
    }

    fn old_tasks(&self) -> Vec<TaskDefinition> {
        self.previous
            .as_ref()
            .map(|d| d.tasks.clone())
            .unwrap_or_default()
    }

    /// The new document, encoded: `change` made to the previous tasks, signed with `--sign-key`.
    fn document(
        &self,
        target: &Target,
        version: u64,
        change: impl FnOnce(&mut Vec<TaskDefinition>) -> Result<(), CtlError>,
    ) -> Result<Vec<u8>, CtlError> {
        let mut tasks = self.old_tasks();
        change(&mut tasks)?;
        let mut doc = DesiredState {
            version,
            cluster: target.cluster.clone(),
            node: self.node.clone(),
            tasks,
            signature: None,
        };
        target.sign(&mut doc)?;
        encode(&Message::DesiredState(doc)).map_err(|e| CtlError::BadInput(e.to_string()))
    }

    /// After a node refused `version`: what it runs goes back on the topic, so the broker never
    /// retains a refused document.
    fn restoration(&self, target: &Target, version: u64) -> Result<Vec<u8>, CtlError> {
        match &self.previous_bytes {
            // The previous document as it was, signature and all: the node ignores a document
            // it runs already, and a signature the node refused is not reused.
            Some(bytes) => Ok(bytes.clone()),
            None => self.document(target, version + 1, |tasks| {
                tasks.clear();
                Ok(())
            }),
        }
    }

    async fn restore(
        &self,
        s: &mut Session,
        target: &Target,
        version: u64,
    ) -> Result<(), CtlError> {
        let bytes = self.restoration(target, version)?;
        s.publish(&self.topic, bytes, true, target.timeout).await?;
        match &self.previous {
            Some(p) => eprintln!(
                "restored the previous desired state document (version {})",
                p.version
            ),
            None => eprintln!(
                "restored the previous desired state as version {}",
                version + 1
            ),
        }
        Ok(())
    }
}

/// Waits for each expected node's answer to `version` of the `scope` document: its `applied` /
/// `rejected` event, or a status reporting the version.
async fn await_outcome(
    s: &mut Session,
    version: u64,
    scope: Scope,
    expect: &BTreeSet<Name>,
    timeout: Duration,
) -> BTreeMap<Name, Result<(), String>> {
    let mut progress = fleet::Progress::new(version, Some(scope), expect.clone());
    await_progress(s, &mut progress, Instant::now() + timeout, |_, _, _| {}).await;
    progress
        .outcome
        .into_iter()
        .map(|(n, o)| match o {
            fleet::Outcome::Applied => (n, Ok(())),
            fleet::Outcome::Rejected(reason) => (n, Err(reason)),
        })
        .collect()
}

/// Follows the nodes' events and status until every expected node applied or rejected the
/// version, or the deadline; `answer` is told each node's answer as it comes.
async fn await_progress(
    s: &mut Session,
    progress: &mut fleet::Progress,
    deadline: Instant,
    mut answer: impl FnMut(&fleet::Progress, &Name, &fleet::Outcome),
) {
    while !progress.done() {
        let Some((topic, payload, _)) = s.next(deadline).await else {
            break;
        };
        let got = match (Topic::parse(&topic), decode(&payload)) {
            (Some(Topic::Events { .. }), Ok(Message::Event(ev))) => progress.event(&ev),
            (Some(Topic::Status { .. }), Ok(Message::Status(st))) => progress.status(&st),
            _ => None,
        };
        if let Some((node, outcome)) = got {
            answer(progress, &node, &outcome);
        }
    }
}

/// Where `skiff ctl deploy` puts a desired state.
#[derive(Debug, Clone)]
pub enum DeployTo {
    /// The cluster's document: every node.
    Cluster,
    /// Each node whose status labels match: its own document.
    Selector(crate::labels::Selector),
    /// These nodes' own documents.
    Nodes(Vec<Name>),
}

/// `skiff ctl deploy`: adds or replaces tasks in the cluster's desired state or in the
/// documents of the nodes chosen by label or by name (from the nodes' retained status), all
/// with one version, and follows the nodes' answers (events and the versions in their
/// status) until each online target applied or rejected it, or `wait` passed. Offline targets
/// get their document when they connect; they are listed, not waited for. A node that rejects
/// its document gets its previous one back, as with `apply`.
pub async fn deploy(
    target: &Target,
    defs: Vec<TaskDefinition>,
    to: DeployTo,
    wait: Option<Duration>,
) -> Result<(), CtlError> {
    let desired = match &to {
        DeployTo::Cluster => desired_topic(&target.cluster, None),
        _ => all_nodes(&target.cluster, "desired"),
    };
    let subscriptions = vec![
        desired,
        all_nodes(&target.cluster, "status"),
        all_nodes(&target.cluster, "events"),
    ];
    let mut s = Session::open_reader(target, subscriptions).await?;
    let retained = s.retained(Duration::from_millis(300), target.timeout).await;
    let nodes: BTreeMap<Name, Status> = retained_statuses(&retained)
        .map(|st| (st.node.clone(), st))
        .collect();
    let online = |n: &Name| {
        nodes
            .get(n)
            .is_some_and(|st| st.state != NodeState::Offline)
    };
    let chosen: Vec<Name> = match &to {
        DeployTo::Cluster => Vec::new(),
        DeployTo::Selector(sel) => {
            let chosen: Vec<Name> = nodes
                .values()
                .filter(|st| sel.matches(&st.labels))
                .map(|st| st.node.clone())
                .collect();
            if chosen.is_empty() {
                return Err(CtlError::Failed(format!(
                    "no node of cluster {} matches --selector {sel} ({} nodes reported)",
                    target.cluster,
                    nodes.len()
                )));
            }
            chosen
        }
        DeployTo::Nodes(list) => list.clone(),
    };
    let docs: Vec<Edit> = match &to {
        DeployTo::Cluster => vec![Edit::from_retained(
            desired_topic(&target.cluster, None),
            None,
            &retained,
        )],
        _ => chosen
            .iter()
            .map(|n| {
                let topic = desired_topic(&target.cluster, Some(n));
                Edit::from_retained(topic, Some(n.clone()), &retained)
            })
            .collect(),
    };
    for doc in &docs {
        target.check_base(&doc.topic, doc.previous.as_ref())?;
    }
    let version = docs
        .iter()
        .map(Edit::next_version)
        .fold(crate::clock::wall_ms() / 1000, u64::max);
    let mut out = Vec::with_capacity(docs.len());
    for doc in &docs {
        let bytes = doc.document(target, version, |tasks| {
            for def in &defs {
                match tasks.iter_mut().find(|t| t.family == def.family) {
                    Some(t) => *t = def.clone(),
                    None => tasks.push(def.clone()),
                }
            }
            Ok(())
        })?;
        out.push((doc.topic.clone(), bytes));
    }
    s.publish_all(out, true, target.timeout).await?;
    let expect: BTreeSet<Name> = match &to {
        DeployTo::Cluster => {
            println!(
                "published desired state version {version} to {}",
                docs.iter().map(|d| d.topic.as_str()).collect::<String>()
            );
            nodes
                .values()
                .filter(|st| st.state == NodeState::Online)
                .map(|st| st.node.clone())
                .collect()
        }
        _ => {
            println!(
                "published desired state version {version} to {} node(s): {}",
                chosen.len(),
                list_brief(&chosen)
            );
            let (up, down): (Vec<&Name>, Vec<&Name>) = chosen.iter().partition(|n| online(n));
            for n in down {
                let state = nodes
                    .get(n)
                    .map_or("has not reported", |st| display::node_state_label(st.state));
                println!("{n}: {state}; applies version {version} when it connects");
            }
            up.into_iter().cloned().collect()
        }
    };
    let Some(wait) = wait else {
        return Ok(());
    };
    if expect.is_empty() {
        println!("no target node is online; nodes apply it when they connect");
        return Ok(());
    }
    let cluster_wide = matches!(to, DeployTo::Cluster);
    let scope = if cluster_wide {
        Scope::Cluster
    } else {
        Scope::Node
    };
    let mut progress = fleet::Progress::new(version, Some(scope), expect);
    let every_answer = progress.expect.len() <= 20;
    let mut printed = Instant::now();
    await_progress(
        &mut s,
        &mut progress,
        Instant::now() + wait,
        |p, node, outcome| {
            if let fleet::Outcome::Rejected(reason) = outcome {
                eprintln!("{node}: rejected version {version}: {reason}");
            }
            if every_answer || p.done() || printed.elapsed() >= Duration::from_secs(1) {
                println!("{}", p.line());
                printed = Instant::now();
            }
        },
    )
    .await;
    if !every_answer && !progress.done() {
        println!("{}", progress.line());
    }
    let rejected: Vec<String> = progress
        .rejected()
        .map(|(n, r)| format!("{n}: {r}"))
        .collect();
    if !rejected.is_empty() && !cluster_wide {
        let restore: Vec<(String, Vec<u8>)> = docs
            .iter()
            .filter(|d| {
                d.node.as_ref().is_some_and(|n| {
                    progress
                        .outcome
                        .get(n)
                        .is_some_and(|o| *o != fleet::Outcome::Applied)
                })
            })
            .map(|d| Ok((d.topic.clone(), d.restoration(target, version)?)))
            .collect::<Result<_, CtlError>>()?;
        let count = restore.len();
        s.publish_all(restore, true, target.timeout).await?;
        eprintln!("restored the previous desired state of the {count} node(s) that rejected it");
    }
    let waiting: Vec<Name> = progress.waiting().cloned().collect();
    if !rejected.is_empty() {
        return Err(CtlError::Rejected(format!(
            "version {version} rejected by {} node(s): {}{}",
            rejected.len(),
            rejected.join("; "),
            if waiting.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} node(s) did not answer: {}",
                    waiting.len(),
                    list_brief(&waiting)
                )
            }
        )));
    }
    if !waiting.is_empty() {
        return Err(CtlError::Timeout(format!(
            "{} node(s) did not apply version {version} within {} s: {}",
            waiting.len(),
            wait.as_secs(),
            list_brief(&waiting)
        )));
    }
    Ok(())
}

/// Up to 10 names, then how many more.
fn list_brief(names: &[Name]) -> String {
    let mut s: Vec<&str> = names.iter().take(10).map(Name::as_str).collect();
    let more = names.len().saturating_sub(10);
    let more = format!("and {more} more");
    if names.len() > 10 {
        s.push(&more);
    }
    s.join(", ")
}

/// `skiff ctl desired`: prints the current desired-state document (as JSON).
pub async fn show_desired(target: &Target, node: Option<Name>) -> Result<(), CtlError> {
    let topic = desired_topic(&target.cluster, node.as_ref());
    let mut s = Session::open(target, vec![topic.clone()]).await?;
    let retained = s.retained(Duration::from_millis(300), target.timeout).await;
    let Some((_, payload)) = retained.into_iter().find(|(t, _)| *t == topic) else {
        return Err(CtlError::Failed(format!("no desired state on {topic}")));
    };
    match decode(&payload) {
        Ok(Message::DesiredState(d)) => {
            let tasks: Vec<serde_json::Value> =
                d.tasks.iter().map(crate::ecs::to_ecs_json).collect();
            let json = serde_json::json!({ "version": d.version, "cluster": d.cluster, "node": d.node, "tasks": tasks });
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
            Ok(())
        }
        Ok(m) => Err(CtlError::Failed(format!(
            "{topic} holds a {} message",
            m.kind().name()
        ))),
        Err(e) => Err(CtlError::Failed(format!("{topic}: {e}"))),
    }
}

/// The retained status of the cluster's nodes (only `node`'s when given), sorted by node.
pub(crate) async fn node_statuses(
    target: &Target,
    node: Option<&Name>,
) -> Result<Vec<Status>, CtlError> {
    let topic = match node {
        Some(n) => node_topics(target, n).0,
        None => all_nodes(&target.cluster, "status"),
    };
    let mut s = Session::open_reader(target, vec![topic]).await?;
    let retained = s.retained(Duration::from_millis(300), target.timeout).await;
    let mut nodes: Vec<Status> = retained
        .iter()
        .filter_map(|(_, p)| match decode(p) {
            Ok(Message::Status(st)) => Some(st),
            _ => None,
        })
        .filter(|st| node.is_none_or(|n| st.node == *n))
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
}

/// Which nodes `skiff ctl nodes` lists, in which order.
#[derive(Debug, Clone, Default)]
pub struct NodesQuery {
    pub filter: fleet::NodeFilter,
    pub sort: fleet::SortKey,
    pub reverse: bool,
    /// Only the first this many of that order.
    pub limit: Option<usize>,
}

/// `skiff ctl nodes`: the cluster's nodes from their retained status (one subscription, no
/// request per node), filtered, sorted and limited.
pub async fn nodes(target: &Target, query: &NodesQuery, json: bool) -> Result<(), CtlError> {
    let mut nodes = node_statuses(target, None).await?;
    let reported = nodes.len();
    nodes.retain(|st| query.filter.keep(st));
    fleet::sort_nodes(&mut nodes, query.sort, query.reverse);
    let kept = nodes.len();
    if let Some(limit) = query.limit {
        nodes.truncate(limit);
    }
    if json {
        for n in &nodes {
            println!("{}", serde_json::to_string(n).unwrap_or_default());
        }
    } else if reported == 0 {
        println!("no nodes have reported in cluster {}", target.cluster);
    } else if nodes.is_empty() {
        println!(
            "none of the {reported} nodes of cluster {} matches",
            target.cluster
        );
    } else {
        print!("{}", display::nodes_table(&nodes, crate::clock::wall_ms()));
        if kept > nodes.len() {
            println!("... and {} more (--limit)", kept - nodes.len());
        }
    }
    Ok(())
}

/// What `skiff ctl watch` shows.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub node: Option<Name>,
    pub json: bool,
    pub events: bool,
    pub metrics: bool,
    pub status: bool,
    /// Stop after this many messages.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// `skiff ctl watch`: prints events, metrics and status as they arrive.
pub async fn watch(target: &Target, opts: WatchOptions) -> Result<(), CtlError> {
    let leaf_topic = |leaf: &str| match &opts.node {
        Some(n) => format!(
            "{}/{leaf}",
            Topic::Status {
                cluster: target.cluster.clone(),
                node: n.clone()
            }
            .to_topic()
            .trim_end_matches("/status")
        ),
        None => all_nodes(&target.cluster, leaf),
    };
    let mut subs = Vec::new();
    for (on, leaf) in [
        (opts.events, "events"),
        (opts.metrics, "metrics"),
        (opts.status, "status"),
    ] {
        if on {
            subs.push(leaf_topic(leaf));
        }
    }
    let mut s = Session::open_reader(target, subs).await?;
    let end = opts.duration.map(|d| Instant::now() + d);
    let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut seen = 0u64;
    let mut stdout = std::io::stdout();
    while opts.count.is_none_or(|c| seen < c) {
        let Some((topic, payload, retained)) = s.next(end.unwrap_or(far)).await else {
            break;
        };
        let lines: Vec<String> = match decode(&payload) {
            Ok(msg) if opts.json => vec![json_line(&topic, &msg)],
            Ok(Message::Event(e)) => vec![display::event(&e)],
            Ok(Message::Metrics(m)) => display::metrics(&m),
            Ok(Message::Status(st)) => {
                let state = display::node_state_label(st.state);
                let tag = if retained { " (retained)" } else { "" };
                let unfiltered = st
                    .tasks
                    .iter()
                    .filter(|t| t.containers.iter().any(|c| c.unfiltered))
                    .count();
                let unfiltered = match unfiltered {
                    0 => String::new(),
                    n => format!(" ({n} without the seccomp filter)"),
                };
                vec![format!(
                    "{} {} status: {state}, {} tasks{unfiltered}{tag}",
                    display::clock(st.at_ms),
                    st.node,
                    st.tasks.len()
                )]
            }
            Ok(other) => vec![format!("{topic}: {:?}", other)],
            Err(e) => vec![format!("{topic}: undecodable message: {e}")],
        };
        for l in lines {
            let _ = writeln!(stdout, "{l}");
        }
        let _ = stdout.flush();
        seen += 1;
    }
    Ok(())
}

fn json_line(topic: &str, msg: &Message) -> String {
    let (kind, body) = match msg {
        Message::DesiredState(m) => ("desired_state", serde_json::to_value(m)),
        Message::Status(m) => ("status", serde_json::to_value(m)),
        Message::Event(m) => ("event", serde_json::to_value(m)),
        Message::Metrics(m) => ("metrics", serde_json::to_value(m)),
        Message::Command(m) => ("command", serde_json::to_value(m)),
        Message::Reply(m) => ("reply", serde_json::to_value(m)),
        Message::RunRequest(m) => ("run_request", serde_json::to_value(m)),
    };
    serde_json::json!({ "topic": topic, "kind": kind, "message": body.unwrap_or_default() })
        .to_string()
}

/// A node's command/reply exchange: sends commands and waits for their replies.
struct NodeChannel {
    session: Session,
    node: Name,
    cmd_topic: String,
    reply_topic: String,
    next_id: u64,
    timeout: Duration,
}

impl NodeChannel {
    async fn open(target: &Target, node: Name) -> Result<NodeChannel, CtlError> {
        NodeChannel::open_with(target, node, Vec::new()).await
    }

    /// Also subscribed to `extra` (the node's status, events): what arrives on them while a
    /// request waits for its reply is kept for [`Session::next`].
    async fn open_with(
        target: &Target,
        node: Name,
        extra: Vec<String>,
    ) -> Result<NodeChannel, CtlError> {
        let reply_topic = Topic::Reply {
            cluster: target.cluster.clone(),
            node: node.clone(),
        }
        .to_topic();
        let cmd_topic = Topic::Cmd {
            cluster: target.cluster.clone(),
            node: node.clone(),
        }
        .to_topic();
        let mut subscriptions = vec![reply_topic.clone()];
        subscriptions.extend(extra);
        let session = Session::open(target, subscriptions).await?;
        Ok(NodeChannel {
            session,
            node,
            cmd_topic,
            reply_topic,
            next_id: crate::clock::wall_ms(),
            timeout: target.timeout,
        })
    }

    /// Sends `body` and returns the node's answer; errors and `unsupported` become `Err`.
    async fn request(&mut self, body: CommandBody) -> Result<ReplyBody, CtlError> {
        self.next_id += 1;
        let id = self.next_id;
        let bytes = encode(&Message::Command(Command { id, body }))
            .map_err(|e| CtlError::Failed(e.to_string()))?;
        self.session
            .publish(&self.cmd_topic, bytes, false, self.timeout)
            .await?;
        let deadline = Instant::now() + self.timeout;
        let mut other_topics = Vec::new();
        let answer = loop {
            let Some((topic, payload, retained)) = self.session.next(deadline).await else {
                break Err(CtlError::Timeout(format!(
                    "node {} did not answer (is it online?)",
                    self.node
                )));
            };
            if topic != self.reply_topic {
                other_topics.push((topic, payload, retained));
                continue;
            }
            match decode_as(Kind::Reply, &payload) {
                Ok(Message::Reply(r)) if r.id == id => {
                    break match r.body {
                        ReplyBody::Error { reason } | ReplyBody::Unsupported { reason } => {
                            Err(CtlError::Failed(reason))
                        }
                        other => Ok(other),
                    }
                }
                _ => continue,
            }
        };
        for m in other_topics.into_iter().rev() {
            self.session.pending.push_front(m);
        }
        answer
    }

    /// Sends `Drain` or `Activate`; the node's state after it.
    async fn set_state(&mut self, body: CommandBody) -> Result<NodeState, CtlError> {
        match self.request(body).await? {
            ReplyBody::NodeState { state } => Ok(state),
            other => Err(CtlError::Failed(format!(
                "unexpected answer to a drain or activate request: {other:?}"
            ))),
        }
    }
}

/// `skiff ctl logs`: a task's log from a node, optionally following it.
pub async fn logs(
    target: &Target,
    node: Name,
    task: Name,
    tail: u32,
    follow: bool,
) -> Result<(), CtlError> {
    let mut ch = NodeChannel::open(target, node).await?;
    let mut from: Option<u64> = None;
    let mut stdout = std::io::stdout();
    loop {
        let max_bytes = match from {
            None => tail,
            Some(_) => u32::try_from(skiff_proto::limits::MAX_LOG_CHUNK).unwrap_or(u32::MAX),
        };
        let body = ch
            .request(CommandBody::Logs {
                task: task.clone(),
                from,
                max_bytes,
            })
            .await?;
        let ReplyBody::Logs { start, end, data } = body else {
            return Err(CtlError::Failed(format!(
                "unexpected answer to a logs request: {body:?}"
            )));
        };
        if let Some(f) = from {
            if start > f {
                eprintln!(
                    "skiff ctl: {} bytes of log were dropped by the node's bounded log",
                    start - f
                );
            }
        }
        let _ = stdout.write_all(&data);
        let _ = stdout.flush();
        from = Some(end);
        if !follow {
            return Ok(());
        }
        if end - start < u64::from(max_bytes) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// `skiff ctl history`: a task's run history from a node.
pub async fn history(
    target: &Target,
    node: Name,
    task: Name,
    limit: u32,
    json: bool,
) -> Result<(), CtlError> {
    let mut ch = NodeChannel::open(target, node).await?;
    let body = ch
        .request(CommandBody::History {
            task: task.clone(),
            limit,
        })
        .await?;
    let ReplyBody::History { runs } = body else {
        return Err(CtlError::Failed(format!(
            "unexpected answer to a history request: {body:?}"
        )));
    };
    print!("{}", display::history(&runs, json));
    Ok(())
}

/// `skiff ctl drain`: the node starts nothing new, stops its service and long-running tasks and
/// lets batch tasks finish (until the agent's `drain_batch_deadline_secs`). With `wait`, follows
/// the node's events and status until it reports `Drained`, printing tasks as they stop; gives
/// up after `wait` (exit 75) or when the node goes offline.
pub async fn drain(target: &Target, node: Name, wait: Option<Duration>) -> Result<(), CtlError> {
    let (status_topic, events_topic) = node_topics(target, &node);
    let extra = if wait.is_some() {
        vec![status_topic.clone(), events_topic.clone()]
    } else {
        Vec::new()
    };
    let mut ch = NodeChannel::open_with(target, node.clone(), extra).await?;
    let state = ch.set_state(CommandBody::Drain).await?;
    println!("{node}: {}", display::node_state(state));
    let Some(wait) = wait else {
        return Ok(());
    };
    if state == NodeState::Drained {
        return Ok(());
    }
    let deadline = Instant::now() + wait;
    let mut progress = DrainProgress::default();
    loop {
        let Some((topic, payload, _)) = ch.session.next(deadline).await else {
            return Err(CtlError::Timeout(format!(
                "node {node} is still draining after {} s{}",
                wait.as_secs(),
                progress.still_running_suffix()
            )));
        };
        let Ok(msg) = decode(&payload) else {
            continue;
        };
        match progress.observe(&node, &topic, &status_topic, &events_topic, msg) {
            DrainStep::Print(line) => println!("{line}"),
            DrainStep::Nothing => {}
            DrainStep::Drained => {
                println!("{node}: drained");
                return Ok(());
            }
            DrainStep::Offline => {
                return Err(CtlError::Failed(format!(
                    "node {node} went offline before it was drained{}",
                    progress.still_running_suffix()
                )))
            }
        }
    }
}

/// `skiff ctl activate`: undoes a drain; the node starts again what the drain stopped.
pub async fn activate(target: &Target, node: Name) -> Result<(), CtlError> {
    let mut ch = NodeChannel::open(target, node.clone()).await?;
    let state = ch.set_state(CommandBody::Activate).await?;
    println!("{node}: {}", display::node_state(state));
    Ok(())
}

fn node_topics(target: &Target, node: &Name) -> (String, String) {
    let status = Topic::Status {
        cluster: target.cluster.clone(),
        node: node.clone(),
    }
    .to_topic();
    let events = Topic::Events {
        cluster: target.cluster.clone(),
        node: node.clone(),
    }
    .to_topic();
    (status, events)
}

/// What `drain --wait` does with one message.
#[derive(Debug, PartialEq, Eq)]
enum DrainStep {
    Print(String),
    Nothing,
    Drained,
    Offline,
}

/// The tasks a draining node still runs, as its status last said.
#[derive(Debug, Default)]
struct DrainProgress {
    still_running: Option<Vec<String>>,
}

impl DrainProgress {
    fn observe(
        &mut self,
        node: &Name,
        topic: &str,
        status_topic: &str,
        events_topic: &str,
        msg: Message,
    ) -> DrainStep {
        match msg {
            Message::Event(e) if topic == events_topic && e.node == *node => match e.body {
                EventBody::NodeStateChanged {
                    state: NodeState::Drained,
                } => DrainStep::Drained,
                EventBody::TaskStopped { .. } => DrainStep::Print(display::event(&e)),
                _ => DrainStep::Nothing,
            },
            Message::Status(st) if topic == status_topic => match st.state {
                NodeState::Drained => DrainStep::Drained,
                NodeState::Offline => DrainStep::Offline,
                // A status from before the drain (the retained one) says nothing yet.
                NodeState::Online => DrainStep::Nothing,
                NodeState::Draining => {
                    let running: Vec<String> = st
                        .tasks
                        .iter()
                        .filter(|t| {
                            matches!(
                                t.state,
                                TaskState::Pending | TaskState::Running | TaskState::Stopping
                            )
                        })
                        .map(|t| t.name.to_string())
                        .collect();
                    if self.still_running.as_ref() == Some(&running) {
                        return DrainStep::Nothing;
                    }
                    let line = format!(
                        "{node}: draining, {} task(s) still running{}",
                        running.len(),
                        list_suffix(&running)
                    );
                    self.still_running = Some(running);
                    DrainStep::Print(line)
                }
            },
            _ => DrainStep::Nothing,
        }
    }

    fn still_running_suffix(&self) -> String {
        match &self.still_running {
            Some(r) if !r.is_empty() => {
                format!(", {} task(s) still running{}", r.len(), list_suffix(r))
            }
            _ => String::new(),
        }
    }
}

/// ` (a, b, c)`, or nothing for an empty list.
fn list_suffix(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(" ({})", names.join(", "))
    }
}

/// `skiff ctl services`: each node's services and their deployments, from the nodes' retained
/// status (one node with `node`).
pub async fn services(target: &Target, node: Option<Name>, json: bool) -> Result<(), CtlError> {
    let nodes = node_statuses(target, node.as_ref()).await?;
    let whose = node
        .as_ref()
        .map_or(format!("cluster {}", target.cluster), |n| {
            format!("node {n}")
        });
    if nodes.is_empty() {
        return Err(CtlError::Failed(match &node {
            Some(n) => format!("node {n} has not reported a status"),
            None => format!("no nodes have reported in cluster {}", target.cluster),
        }));
    }
    if json {
        for n in &nodes {
            for svc in &n.services {
                let line = serde_json::json!({
                    "node": n.node,
                    "node_state": display::node_state(n.state),
                    "service": svc,
                });
                println!("{line}");
            }
        }
    } else if nodes.iter().all(|n| n.services.is_empty()) {
        println!("no services on {whose}");
    } else {
        print!("{}", display::services_table(&nodes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::{Event, Health, StopReason, TaskStatus};

    fn n(s: &str) -> Name {
        s.parse().expect("name")
    }

    fn status(state: NodeState, tasks: &[(&str, TaskState)]) -> Message {
        Message::Status(Status {
            node: n("pi-1"),
            state,
            agent_version: "0.1.0".into(),
            cluster_version: 0,
            node_version: 1,
            at_ms: 0,
            tasks: tasks
                .iter()
                .map(|(name, st)| TaskStatus {
                    name: n(name),
                    revision: 1,
                    state: *st,
                    restarts: 0,
                    last_exit: None,
                    containers: vec![],
                    service: None,
                    health: Health::Unknown,
                    endpoints: vec![],
                })
                .collect(),
            services: vec![],
            labels: Default::default(),
            resources: Default::default(),
        })
    }

    fn event(node: &str, body: EventBody) -> Message {
        Message::Event(Event {
            node: n(node),
            seq: 9,
            at_ms: 3_600_000,
            body,
        })
    }

    #[test]
    fn drain_wait_prints_progress_until_drained() {
        let node = n("pi-1");
        let (st, ev) = ("c/nodes/pi-1/status", "c/nodes/pi-1/events");
        let mut p = DrainProgress::default();
        let mut step = |topic: &str, m: Message| p.observe(&node, topic, st, ev, m);
        // The retained status from before the drain.
        assert_eq!(
            step(
                st,
                status(NodeState::Online, &[("web.1", TaskState::Running)])
            ),
            DrainStep::Nothing
        );
        let running = [
            ("web.1", TaskState::Stopping),
            ("web.2", TaskState::Running),
            ("done", TaskState::Stopped),
        ];
        assert_eq!(
            step(st, status(NodeState::Draining, &running)),
            DrainStep::Print("pi-1: draining, 2 task(s) still running (web.1, web.2)".into())
        );
        // The same tasks again: nothing new to say.
        assert_eq!(
            step(st, status(NodeState::Draining, &running)),
            DrainStep::Nothing
        );
        let stopped = EventBody::TaskStopped {
            task: n("web.1"),
            reason: StopReason::Drained,
            exit: None,
        };
        assert_eq!(
            step(ev, event("pi-1", stopped.clone())),
            DrainStep::Print("01:00:00 pi-1 #9 web.1: stopped (node draining)".into())
        );
        // An event counts only on the events topic.
        assert_eq!(step(st, event("pi-1", stopped)), DrainStep::Nothing);
        assert_eq!(
            step(
                ev,
                event(
                    "pi-1",
                    EventBody::NodeStateChanged {
                        state: NodeState::Drained
                    }
                )
            ),
            DrainStep::Drained
        );
        assert_eq!(
            p.still_running_suffix(),
            ", 2 task(s) still running (web.1, web.2)"
        );
    }

    #[test]
    fn drain_wait_ends_on_a_drained_or_offline_status() {
        let node = n("pi-1");
        let (st, ev) = ("s", "e");
        let mut p = DrainProgress::default();
        assert_eq!(
            p.observe(&node, st, st, ev, status(NodeState::Drained, &[])),
            DrainStep::Drained
        );
        assert_eq!(
            p.observe(&node, st, st, ev, status(NodeState::Offline, &[])),
            DrainStep::Offline
        );
        assert_eq!(p.still_running_suffix(), "");
    }
}
