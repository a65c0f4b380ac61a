//! The `skiff` binary: parses the command line and calls into the library. Each failure class
//! has its own exit code so systemd's `RestartPreventExitStatus=` can tell a bad configuration
//! (78) from a broken host (71).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use skiff_agent::config::{BrokerUrl, Config, ConfigError, Transport, Validated};
use skiff_agent::ctl::{self, CtlError, Target};
use skiff_agent::{agent, images, logs};
use skiff_proto::{Name, TaskExtension};

/// Exit code for a configuration error (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;
/// Exit code when the host can't run containers (EX_OSERR).
const EXIT_OS: u8 = 71;
/// Exit code for invalid input files (EX_DATAERR).
const EXIT_DATA: u8 = 65;
const DEFAULT_CONFIG: &str = "/etc/skiff/agent.toml";

#[derive(Debug, Parser)]
#[command(
    name = "skiff",
    version,
    about = "skiff: an edge container agent for small ARM devices"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the agent (needs root).
    Agent(AgentArgs),
    /// Drive a cluster through the broker (fleet console).
    Ctl(CtlArgs),
    /// Task-definition files.
    #[command(subcommand)]
    Task(TaskCmd),
    /// The local image store.
    Image(ImageArgs),
    /// Print a task's log on this device.
    Logs(LogsArgs),
    /// This node's identity.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Print a task's run history on this device.
    History(HistoryArgs),
    /// Simulate N agents in one process against a broker (scale tests): the real core and
    /// MQTT shell, containers faked in memory.
    Sim(SimArgs),
}

#[derive(Debug, Args)]
struct SimArgs {
    /// How many nodes to simulate (1..=100000).
    #[arg(long)]
    nodes: u32,
    /// Broker URL: mqtt://host[:port] (plain TCP).
    #[arg(long, env = "SKIFF_BROKER", default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    /// Cluster the nodes join.
    #[arg(long, env = "SKIFF_CLUSTER", default_value = "default")]
    cluster: String,
    /// Node ids are {prefix}{index:05}: sim-00001, sim-00002...
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// Seconds between metrics messages of each node (1..=3600).
    #[arg(long, default_value_t = 10)]
    metrics_interval: u64,
    /// Tasks each node runs from the start, as restored from saved state (0..=64).
    #[arg(long, default_value_t = 0)]
    tasks_per_node: u32,
    /// Connections started per second.
    #[arg(long, default_value_t = 500)]
    ramp: u32,
    /// MQTT keep-alive of each node, seconds (at least 5).
    #[arg(long, default_value_t = 30)]
    keepalive: u64,
    /// Also publish these kinds as JSON (`status`, `events`, `metrics`; comma-separated), as
    /// the agent's `[mirror_json]` does.
    #[arg(long, value_delimiter = ',', value_name = "KINDS")]
    mirror_json: Vec<String>,
    /// A label every node reports (`key=value`; repeatable); `arch` is `arm64` unless given.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Spread the nodes over N sites: node i gets the label `site=site-{(i-1) % N + 1}`.
    #[arg(long, default_value_t = 0)]
    sites: u32,
    /// Log filter (RUST_LOG syntax); `info` shows progress, `debug` every node's events.
    #[arg(long, default_value = "info,skiff_agent::agent=warn")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// Make the node's X25519 key pair in data_dir once (private key 0600) and print the public
    /// key; idempotent (the unit runs it before every start).
    Init(NodeInitArgs),
}

#[derive(Debug, Args)]
struct NodeInitArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Override `data_dir` from the config.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct HistoryArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Override `data_dir` from the config.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    task: String,
    /// Newest runs to show (at most 100).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// One JSON object per run.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Agent configuration file (TOML). Missing default file = built-in defaults.
    #[arg(short, long, default_value = DEFAULT_CONFIG, env = "SKIFF_CONFIG")]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct AgentArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Local mode: run the task definitions (*.json) in DIR, no broker; print what happens.
    #[arg(long, value_name = "DIR")]
    local: Option<PathBuf>,
    /// Override `data_dir` from the config.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Override `run_dir` from the config.
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CtlArgs {
    /// Broker URL: mqtt://host[:port] or, with TLS, mqtts://host[:port] (port 8883).
    #[arg(
        long,
        global = true,
        env = "SKIFF_BROKER",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    broker: String,
    /// With mqtts://: CA certificate(s) the broker's certificate must chain to (PEM; default:
    /// the public web roots).
    #[arg(long, global = true, env = "SKIFF_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// With mqtts://: the console's client certificate (PEM; the broker's ACL must let its
    /// identity write desired state and commands).
    #[arg(long, global = true, env = "SKIFF_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// With mqtts://: the client certificate's private key (PEM).
    #[arg(long, global = true, env = "SKIFF_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// Cluster name.
    #[arg(long, global = true, env = "SKIFF_CLUSTER", default_value = "default")]
    cluster: String,
    /// Seconds to wait for the broker and for nodes to answer.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Fleet private key (`skiff ctl keygen`) that signs desired state (`apply`, `stop`) and
    /// trust updates; nodes with `[trust] keys` accept only signed documents.
    #[arg(long, global = true, env = "SKIFF_SIGN_KEY", value_name = "FILE")]
    sign_key: Option<PathBuf>,
    /// With --sign-key: another fleet public key whose signature is accepted on the document a
    /// change builds on (e.g. a colleague's key during a rotation). Repeatable.
    #[arg(long, global = true, value_name = "FILE")]
    trusted_key: Vec<PathBuf>,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Debug, Subcommand)]
enum TrustCmd {
    /// Make nodes trust more fleet keys (signed with --sign-key, a key they trust now).
    Add {
        /// Public key files (`.pub` from `skiff ctl keygen`).
        #[arg(required = true)]
        keys: Vec<PathBuf>,
        /// The nodes to update (repeat for several).
        #[arg(long, required = true)]
        node: Vec<String>,
    },
    /// Make nodes stop trusting fleet keys (signed with --sign-key, which must stay trusted).
    ///
    /// Desired-state documents signed by a retired key are re-signed with --sign-key first. A
    /// node refuses to retire its last key.
    Retire {
        /// Key ids, or public key files.
        #[arg(required = true)]
        keys: Vec<String>,
        /// The nodes to update (repeat for several).
        #[arg(long, required = true)]
        node: Vec<String>,
    },
}

/// Which nodes `skiff ctl nodes` and `top` show, in which order.
#[derive(Debug, Args)]
struct NodeViewArgs {
    /// Only nodes in these states (comma-separated): online, offline, draining, drained.
    #[arg(long, value_name = "STATE,...")]
    state: Option<String>,
    /// Only nodes whose labels match all of `k=v,k2=v2` (exact values).
    #[arg(long, value_name = "K=V,...")]
    selector: Option<String>,
    /// Order: name, seen (longest silent first), cpu, mem or tasks (most first).
    #[arg(long, default_value = "name")]
    sort: String,
    /// Reverse the order.
    #[arg(long)]
    reverse: bool,
    /// Show only the first N nodes of that order (`top`'s totals still count all).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

impl NodeViewArgs {
    fn query(&self) -> Result<ctl::NodesQuery, CtlError> {
        let bad = CtlError::BadInput;
        Ok(ctl::NodesQuery {
            filter: ctl::fleet::NodeFilter {
                states: match &self.state {
                    Some(s) => ctl::fleet::parse_states(s).map_err(bad)?,
                    None => Vec::new(),
                },
                selector: self.selector.as_deref().map(selector).transpose()?,
            },
            sort: self.sort.parse().map_err(bad)?,
            reverse: self.reverse,
            limit: self.limit,
        })
    }
}

fn selector(s: &str) -> Result<skiff_agent::labels::Selector, CtlError> {
    s.parse()
        .map_err(|e| CtlError::BadInput(format!("--selector {s:?}: {e}")))
}

#[derive(Debug, Subcommand)]
enum CtlCmd {
    /// Make a fleet signing key pair: DIR/NAME.key (private, 0600) and DIR/NAME.pub.
    ///
    /// The public key line is `skiff-ed25519 <key id> <base64>`; list the file (or the line)
    /// in each agent's `[trust] keys`. Existing files are never overwritten.
    Keygen {
        /// Directory to write the two files in.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// File name stem.
        #[arg(long, default_value = "fleet")]
        name: String,
    },
    /// Rotate the fleet keys nodes trust (signed key updates).
    #[command(subcommand)]
    Trust(TrustCmd),
    /// Seal a secret (read from stdin) to one node's key; prints `skiff-sealed:v1:...`.
    ///
    /// Put the output in a container's `secrets`: `{"name": "DB_PASSWORD", "valueFrom":
    /// "skiff-sealed:v1:..."}`. Only that node can open it, in memory, right before the
    /// container starts. One trailing newline of the input is dropped.
    Seal {
        /// The node the secret is for.
        #[arg(long)]
        node: String,
        /// The node's public key: a `node.pub` file or `x25519:<hex>` (as `skiff node init`
        /// prints it). Without it the key is asked from the node over the broker.
        #[arg(long, value_name = "FILE|x25519:HEX")]
        node_key: Option<String>,
    },
    /// Add or replace tasks in the desired state of a node (or of the whole cluster).
    Apply {
        /// Task-definition files (ECS JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Target one node; without it, every node of the cluster.
        #[arg(long)]
        node: Option<String>,
        /// Don't wait for the nodes to apply it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Run copies of a task on the cluster: each copy goes to the cluster queue and is taken
    /// by one node with room for it (its `[queue]` capacity); a node without room hands it back
    /// and it is offered again. Follows the copies to their end and prints where each ran;
    /// exits non-zero when a copy failed, was refused or was not placed.
    ///
    /// The task runs once (restart policy) or as a batch job (`skiff.batch`); services and
    /// schedules belong in desired state (`apply`).
    Run {
        /// Task-definition file (ECS JSON).
        file: PathBuf,
        /// Copies to run, each on one node (1..=1000).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Offers of one copy before it is reported unplaced. Default: twice the nodes online,
        /// at least 3.
        #[arg(long)]
        max_offers: Option<u32>,
        /// Offer the copies and return at once (copies handed back are then not offered again).
        #[arg(long)]
        detach: bool,
        /// Seconds to follow the copies.
        #[arg(long, default_value_t = 3600)]
        wait_secs: u64,
    },
    /// Remove a task from the desired state (its containers are stopped and deleted).
    Stop {
        /// The task's family (a service: its family, which stops all its tasks).
        task: String,
        /// Remove it from one node's desired state; without it, from the cluster's.
        #[arg(long)]
        node: Option<String>,
        /// Don't wait for the nodes to apply it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show the desired state document as JSON.
    Desired {
        /// One node's document; without it, the cluster's.
        #[arg(long)]
        node: Option<String>,
    },
    /// List the cluster's nodes from their retained status.
    ///
    /// One subscription to the retained statuses (no request per node). Columns: state
    /// (online, offline from the last will, DRAINING, DRAINED), SEEN (time since the node's
    /// last status report; after a last will, since the node connected), agent version, applied desired-state versions, CPU (use over the
    /// node's CPUs), MEM (used over total), TASKS (active over all), LABELS, and each task with
    /// its state and, when it has health checks, its health.
    Nodes {
        /// One JSON object per node (its status).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        view: NodeViewArgs,
    },
    /// A live view of the cluster: nodes with state, CPU, memory, tasks, and a totals line.
    ///
    /// Follows the nodes' status and metrics. On a terminal each frame replaces the last and
    /// `q` or Ctrl-C quits; otherwise one frame is printed per refresh, without escape codes.
    Top {
        /// Seconds between frames.
        #[arg(long, value_name = "SECS", default_value_t = 2.0)]
        interval: f64,
        /// Exit after N frames.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        view: NodeViewArgs,
    },
    /// Add or replace tasks in the desired state of the cluster or of nodes chosen by label or
    /// name, and follow the nodes as they apply it.
    ///
    /// --cluster-wide: the cluster's document; --selector / --nodes: each chosen node's own
    /// document (nodes chosen from the labels in their retained status), all with one version.
    /// Prints `3/5 nodes applied version V` as nodes report it (events and the versions in
    /// their status) and each rejection with its reason; a node that rejects gets its previous
    /// document back. Ends when every online target answered or after --timeout; offline
    /// targets get the document when they connect. Exit code 1 if any node rejected, 75 if
    /// any did not answer.
    #[command(group(clap::ArgGroup::new("targets").required(true).args(["cluster_wide", "selector", "nodes"])))]
    Deploy {
        /// Task-definition files (ECS JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Every node of the cluster (the cluster's desired state).
        #[arg(long)]
        cluster_wide: bool,
        /// The nodes whose labels match all of `k=v,k2=v2` (exact values).
        #[arg(long, value_name = "K=V,...")]
        selector: Option<String>,
        /// These nodes (comma-separated).
        #[arg(long, value_name = "NODE,...", value_delimiter = ',')]
        nodes: Vec<String>,
        /// Seconds to wait for the nodes to apply it.
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        timeout: u64,
        /// Don't wait for the nodes to apply it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Each node's services and their deployments.
    ///
    /// From the nodes' retained status: per service the desired, pending, running and healthy
    /// tasks, then each deployment (id, revision, PRIMARY or ACTIVE, its counts, failed tasks,
    /// rollout state), as `aws ecs describe-services` lists them.
    Services {
        /// One node; without it, every node that reported.
        #[arg(long)]
        node: Option<String>,
        /// One JSON object per service: {"node", "node_state", "service"}.
        #[arg(long)]
        json: bool,
    },
    /// Where a service's (or a task's) running copies are reached.
    ///
    /// From the nodes' retained status: per task its port mappings with the host port each got
    /// and the task's address on the node's bridge (networkMode "bridge"), or its own address
    /// on the LAN with host port "-" (networkMode "awsvpc": reached at address:containerPort),
    /// or the node's ports, address "(node)" (networkMode "host").
    Endpoints {
        /// A service (its tasks on every node) or a task.
        name: String,
        /// One node; without it, every node that reported.
        #[arg(long)]
        node: Option<String>,
        /// One JSON object per endpoint: {"node", "task", "service", "endpoint"}.
        #[arg(long)]
        json: bool,
    },
    /// Drain a node: nothing new starts, its service tasks stop.
    ///
    /// The node starts nothing new, stops its service and long-running tasks and lets batch
    /// tasks finish (until the agent's `drain_batch_deadline_secs`), then reports DRAINED.
    /// Prints the node's state; `skiff ctl activate` undoes it.
    Drain {
        /// The node to drain.
        node: String,
        /// Wait until the node reports DRAINED, printing tasks as they stop.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after SECS seconds (exit code 75; the drain goes on). The
        /// answer to the drain itself is awaited for ctl's own --timeout.
        #[arg(long, value_name = "SECS", default_value_t = 600, requires = "wait")]
        timeout: u64,
    },
    /// Undo a drain: the node is online again and starts what the drain stopped.
    Activate {
        /// The node to activate.
        node: String,
    },
    /// Print events and metrics (and status with --status) as they arrive.
    Watch {
        /// One node's messages; without it, every node's.
        #[arg(long)]
        node: Option<String>,
        /// One JSON object per message.
        #[arg(long)]
        json: bool,
        /// Events only.
        #[arg(long, conflicts_with = "metrics_only")]
        events_only: bool,
        /// Metrics only.
        #[arg(long)]
        metrics_only: bool,
        /// Also status reports.
        #[arg(long)]
        status: bool,
        /// Exit after N messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after SECS seconds.
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
    },
    /// Fetch a task's run history (start, end, exit code, reason) from a node.
    History {
        /// The task (a service's task: `{family}.{n}`).
        task: String,
        /// The node that runs it.
        #[arg(long)]
        node: String,
        /// Newest runs to show (at most 100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// One JSON object per run.
        #[arg(long)]
        json: bool,
    },
    /// Fetch a task's log from a node.
    Logs {
        /// The task (a service's task: `{family}.{n}`).
        task: String,
        /// The node that runs it.
        #[arg(long)]
        node: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
        /// Bytes from the end to start with.
        #[arg(long, default_value_t = 16384)]
        tail: u32,
    },
}

#[derive(Debug, Subcommand)]
enum TaskCmd {
    /// Check task-definition files offline; prints the normalised definition.
    Validate {
        /// Task-definition files (ECS JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write a desired-state message holding these task definitions (postcard bytes) to stdout.
    Encode {
        /// Task-definition files (ECS JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Desired-state version.
        #[arg(long, default_value_t = 1)]
        version: u64,
        /// Cluster the document is for.
        #[arg(long, default_value = "default")]
        cluster: String,
        /// Node the document is for; without it, the whole cluster.
        #[arg(long)]
        node: Option<String>,
    },
    /// Print a skiff wire message (any kind, e.g. from `task encode`) as JSON.
    Decode {
        /// The message's bytes.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ImageArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Override `data_dir` from the config.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: ImageCmd,
}

#[derive(Debug, Subcommand)]
enum ImageCmd {
    /// Import an OCI image layout (directory or tar).
    Import {
        path: PathBuf,
        /// Name for the image (`busybox` = docker.io/library/busybox:latest).
        #[arg(long)]
        tag: Option<String>,
        /// Import for another device's platform (`linux/arm64/v8`, `linux/arm/v7`), e.g. into
        /// an SD-card image's data dir; default: this machine's.
        #[arg(long)]
        platform: Option<String>,
    },
    /// List images.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove an image's name.
    Rm { reference: String },
    /// Pull an image from its registry (credentials: `[[registries]]` in the config).
    Pull {
        reference: String,
        /// JSON lines on stdout instead of progress bars.
        #[arg(long)]
        json: bool,
        /// Pull for another platform (`linux/arm64/v8`), e.g. to prepare an SD-card image.
        #[arg(long)]
        platform: Option<String>,
    },
    /// Write an image as an OCI image layout: a directory, or a tar when DEST ends in .tar.
    Export { reference: String, dest: PathBuf },
    /// Remove images no task uses: beyond `keep_per_repository` per repository, and oldest
    /// first while below `gc_low_water_mib` free (`[images]` in the config).
    Prune {
        /// Override `keep_per_repository`.
        #[arg(long)]
        keep: Option<usize>,
        /// Only print what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
struct LogsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Override `run_dir` from the config.
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    task: String,
    /// Keep printing new output.
    #[arg(short, long)]
    follow: bool,
    /// Bytes from the end to print.
    #[arg(long, default_value_t = 65536)]
    tail: u64,
}

fn main() -> ExitCode {
    // The launcher is re-executed from this binary; it must run before anything starts a thread.
    // So is the user-namespace helper: unshare(CLONE_NEWUSER) needs a single thread.
    match std::env::args_os().nth(1) {
        Some(a) if a == "__launcher" => return skiff_agent::runtime::launcher_main(),
        Some(a) if a == "__userns" => return skiff_agent::runtime::userns_helper_main(),
        _ => {}
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Agent(a) => run_agent(a),
        Cmd::Ctl(c) => run_ctl(c),
        Cmd::Task(TaskCmd::Validate { files }) => validate(&files),
        Cmd::Task(TaskCmd::Encode {
            files,
            version,
            cluster,
            node,
        }) => encode_task(&files, version, &cluster, node.as_deref()),
        Cmd::Task(TaskCmd::Decode { file }) => match skiff_agent::wire::decode_file(&file) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_DATA, e),
        },
        Cmd::Image(i) => run_image(i),
        Cmd::Logs(l) => run_logs(l),
        Cmd::Node(n) => run_node(n),
        Cmd::History(h) => run_history(h),
        Cmd::Sim(s) => run_sim(s),
    }
}

fn run_sim(a: SimArgs) -> ExitCode {
    let cfg = (|| -> Result<skiff_agent::sim::SimConfig, String> {
        let broker = match BrokerUrl::parse_with_transport(&a.broker) {
            Ok((b, Transport::Tcp)) => b,
            Ok((_, Transport::Tls)) => {
                return Err(format!(
                    "--broker {:?}: skiff sim speaks plain mqtt:// only",
                    a.broker
                ))
            }
            Err(e) => return Err(format!("--broker {e}")),
        };
        let mut mirror = skiff_agent::config::MirrorJson::default();
        for kind in &a.mirror_json {
            match kind.trim() {
                "status" => mirror.status = true,
                "events" => mirror.events = true,
                "metrics" => mirror.metrics = true,
                other => {
                    return Err(format!(
                        "--mirror-json {other:?}: not one of status, events, metrics"
                    ))
                }
            }
        }
        let mut labels = std::collections::BTreeMap::new();
        for l in &a.labels {
            let Some((k, v)) = l.split_once('=') else {
                return Err(format!("--label {l:?}: not key=value"));
            };
            labels.insert(k.to_string(), v.to_string());
        }
        let cfg = skiff_agent::sim::SimConfig {
            nodes: a.nodes,
            broker,
            cluster: a
                .cluster
                .parse()
                .map_err(|e| format!("--cluster {:?}: {e}", a.cluster))?,
            prefix: a.prefix.clone(),
            metrics_interval: Duration::from_secs(a.metrics_interval),
            tasks_per_node: a.tasks_per_node,
            ramp: a.ramp,
            keepalive: Duration::from_secs(a.keepalive),
            mirror,
            labels,
            sites: a.sites,
        };
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    })();
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, e),
    };
    init_tracing(&a.log);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_OS, format!("cannot start the async runtime: {e}")),
    };
    match rt.block_on(skiff_agent::sim::run(cfg, shutdown_signal())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e @ skiff_agent::sim::SimError::FileLimit { .. }) => fail(EXIT_OS, e),
        Err(e) => fail(EXIT_CONFIG, e),
    }
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("skiff: {msg}");
    ExitCode::from(code)
}

/// The configuration file, or the defaults when the default file does not exist.
fn load_config(arg: &ConfigArg) -> Result<Config, ConfigError> {
    if arg.config == std::path::Path::new(DEFAULT_CONFIG) && !arg.config.exists() {
        return Ok(Config::default());
    }
    Config::load(&arg.config)
}

fn validated(arg: &ConfigArg, edit: impl FnOnce(&mut Config)) -> Result<Validated, ConfigError> {
    let mut cfg = load_config(arg)?;
    edit(&mut cfg);
    cfg.validate(skiff_agent::config::hostname)
}

fn init_tracing(filter: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    let targets = skiff_agent::journal::log_filter(&filter).unwrap_or_else(|_| {
        tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
    });
    // The level is left to the filter (the builder's own maximum would cut at INFO).
    let builder = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::io::stderr)
        .with_target(false);
    // Under systemd, journald stamps the time itself and reads a `<priority>` prefix per line.
    let _ = if std::env::var_os("JOURNAL_STREAM").is_some() {
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_ansi(false)
            .with_target(false);
        let subscriber = builder
            .with_ansi(false)
            .event_format(skiff_agent::journal::Priority(format))
            .finish()
            .with(targets);
        tracing::subscriber::set_global_default(subscriber)
    } else {
        tracing::subscriber::set_global_default(builder.finish().with(targets))
    };
}

fn run_agent(a: AgentArgs) -> ExitCode {
    let cfg = match validated(&a.config, |c| {
        if let Some(d) = a.data_dir {
            c.data_dir = d;
        }
        if let Some(d) = a.run_dir {
            c.run_dir = d;
        }
    }) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, e),
    };
    if let Some(dir) = &a.local {
        if !dir.is_dir() {
            return fail(
                EXIT_CONFIG,
                format!("--local {}: not a directory", dir.display()),
            );
        }
    }
    init_tracing(&cfg.log);
    let mode = match a.local {
        Some(dir) => agent::Mode::Local(dir),
        None => agent::Mode::Broker,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_OS, format!("cannot start the async runtime: {e}")),
    };
    let result = rt.block_on(agent::run(cfg, mode, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ agent::AgentError::Runtime(_)) => fail(EXIT_OS, e),
        Err(e) => fail(1, e),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn name(field: &str, s: &str) -> Result<Name, CtlError> {
    s.parse()
        .map_err(|e| CtlError::BadInput(format!("{field} {s:?}: {e}")))
}

fn run_ctl(c: CtlArgs) -> ExitCode {
    let target = (|| -> Result<Target, CtlError> {
        let (broker, transport) = BrokerUrl::parse_with_transport(&c.broker)
            .map_err(|e| CtlError::BadInput(format!("--broker {e}")))?;
        let tls_files = skiff_agent::tls::BrokerTlsConfig {
            ca_file: c.ca.clone(),
            cert_file: c.cert.clone(),
            key_file: c.key.clone(),
        };
        let tls = match transport {
            Transport::Tls => Some(
                tls_files
                    .load()
                    .map_err(|e| CtlError::BadInput(format!("TLS (--ca, --cert, --key): {e}")))?,
            ),
            Transport::Tcp if tls_files.is_empty() => None,
            Transport::Tcp => {
                return Err(CtlError::BadInput(format!(
                    "--ca, --cert and --key need an mqtts:// --broker, not {:?}",
                    c.broker
                )))
            }
        };
        Ok(Target {
            broker,
            tls,
            cluster: name("--cluster", &c.cluster)?,
            timeout: Duration::from_secs(c.timeout.max(1)),
            signer: c
                .sign_key
                .as_deref()
                .map(skiff_agent::trust::SigningKey::load)
                .transpose()
                .map_err(|e| CtlError::BadInput(format!("--sign-key {e}")))?
                .map(std::sync::Arc::new),
            base_keys: c
                .trusted_key
                .iter()
                .map(|p| skiff_agent::trust::read_public_keys(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CtlError::BadInput(format!("--trusted-key {e}")))?
                .into_iter()
                .flatten()
                .collect(),
        })
    })();
    let target = match target {
        Ok(t) => t,
        Err(e) => return fail(e.exit_code(), e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_OS, format!("cannot start the async runtime: {e}")),
    };
    let node = |n: Option<String>| n.map(|n| name("--node", &n)).transpose();
    let result = rt.block_on(async {
        match c.cmd {
            CtlCmd::Apply {
                files,
                node: n,
                no_wait,
            } => {
                let defs = ctl::read_task_files(&files)?;
                ctl::apply(&target, defs, node(n)?, !no_wait).await
            }
            CtlCmd::Run {
                file,
                count,
                max_offers,
                detach,
                wait_secs,
            } => {
                let def = ctl::read_task_files(&[file])?
                    .pop()
                    .ok_or_else(|| CtlError::BadInput("no task definition".into()))?;
                let opts = ctl::RunOptions {
                    count,
                    max_offers,
                    detach,
                    timeout: Duration::from_secs(wait_secs),
                };
                ctl::run_cluster(&target, def, opts).await
            }
            CtlCmd::Stop {
                task,
                node: n,
                no_wait,
            } => ctl::stop(&target, name("task", &task)?, node(n)?, !no_wait).await,
            CtlCmd::Desired { node: n } => ctl::show_desired(&target, node(n)?).await,
            CtlCmd::Keygen { out, name: stem } => ctl::keygen(&out, &name("--name", &stem)?),
            CtlCmd::Seal { node: n, node_key } => {
                let value = read_secret_value()?;
                ctl::seal(&target, name("--node", &n)?, node_key, &value).await
            }
            CtlCmd::Trust(cmd) => {
                let (nodes, change) = trust_change(cmd)?;
                ctl::trust_update(&target, nodes, change).await
            }
            CtlCmd::Nodes { json, view } => ctl::nodes(&target, &view.query()?, json).await,
            CtlCmd::Top {
                interval,
                count,
                view,
            } => {
                let q = view.query()?;
                if !(0.1..=3600.0).contains(&interval) {
                    return Err(CtlError::BadInput(format!(
                        "--interval {interval}: expected 0.1..=3600 seconds"
                    )));
                }
                let opts = ctl::TopOptions {
                    interval: Duration::from_secs_f64(interval),
                    count,
                    filter: q.filter,
                    sort: q.sort,
                    reverse: q.reverse,
                    limit: q.limit,
                };
                ctl::top(&target, opts).await
            }
            CtlCmd::Deploy {
                files,
                cluster_wide,
                selector: sel,
                nodes,
                timeout,
                no_wait,
            } => {
                let to = if cluster_wide {
                    ctl::DeployTo::Cluster
                } else if let Some(s) = sel {
                    ctl::DeployTo::Selector(selector(&s)?)
                } else {
                    ctl::DeployTo::Nodes(
                        nodes
                            .iter()
                            .map(|n| name("--nodes", n))
                            .collect::<Result<_, _>>()?,
                    )
                };
                let defs = ctl::read_task_files(&files)?;
                let wait = (!no_wait).then(|| Duration::from_secs(timeout.max(1)));
                ctl::deploy(&target, defs, to, wait).await
            }
            CtlCmd::Services { node: n, json } => ctl::services(&target, node(n)?, json).await,
            CtlCmd::Endpoints {
                name: svc,
                node: n,
                json,
            } => ctl::endpoints(&target, name("service or task", &svc)?, node(n)?, json).await,
            CtlCmd::Drain {
                node: n,
                wait,
                timeout,
            } => {
                let wait = wait.then(|| Duration::from_secs(timeout.max(1)));
                ctl::drain(&target, name("node", &n)?, wait).await
            }
            CtlCmd::Activate { node: n } => ctl::activate(&target, name("node", &n)?).await,
            CtlCmd::Watch {
                node: n,
                json,
                events_only,
                metrics_only,
                status,
                count,
                duration,
            } => {
                let opts = ctl::WatchOptions {
                    node: node(n)?,
                    json,
                    events: !metrics_only,
                    metrics: !events_only,
                    status,
                    count,
                    duration: duration.map(Duration::from_secs),
                };
                ctl::watch(&target, opts).await
            }
            CtlCmd::History {
                task,
                node: n,
                limit,
                json,
            } => {
                ctl::history(
                    &target,
                    name("--node", &n)?,
                    name("task", &task)?,
                    limit,
                    json,
                )
                .await
            }
            CtlCmd::Logs {
                task,
                node: n,
                follow,
                tail,
            } => {
                ctl::logs(
                    &target,
                    name("--node", &n)?,
                    name("task", &task)?,
                    tail,
                    follow,
                )
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.exit_code(), e),
    }
}

/// The secret for `skiff ctl seal`, from stdin (never argv: it would show in `ps` and shell
/// history); one trailing newline dropped.
fn read_secret_value() -> Result<zeroize::Zeroizing<String>, CtlError> {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("secret value (then Enter and Ctrl-D):");
    }
    let mut value = zeroize::Zeroizing::new(String::new());
    stdin
        .take(skiff_agent::secrets::MAX_SECRET_VALUE as u64 + 3)
        .read_to_string(&mut value)
        .map_err(|e| CtlError::BadInput(format!("stdin: {e}")))?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(CtlError::BadInput("no secret on stdin".into()));
    }
    Ok(value)
}

/// The nodes and the change of `skiff ctl trust add | retire`.
fn trust_change(cmd: TrustCmd) -> Result<(Vec<Name>, ctl::TrustChange), CtlError> {
    let nodes = |ns: Vec<String>| -> Result<Vec<Name>, CtlError> {
        ns.iter().map(|n| name("--node", n)).collect()
    };
    let read = |p: &std::path::Path| {
        skiff_agent::trust::read_public_keys(p).map_err(|e| CtlError::BadInput(e.to_string()))
    };
    match cmd {
        TrustCmd::Add { keys, node } => {
            let mut add = Vec::new();
            for k in &keys {
                add.extend(read(k)?);
            }
            let change = ctl::TrustChange {
                add,
                ..Default::default()
            };
            Ok((nodes(node)?, change))
        }
        TrustCmd::Retire { keys, node } => {
            let mut change = ctl::TrustChange::default();
            for k in &keys {
                let path = std::path::Path::new(k);
                if path.exists() {
                    let found = read(path)?;
                    change.retire.extend(found.iter().map(|k| k.key_id.clone()));
                    change.retire_keys.extend(found);
                } else {
                    change.retire.push(name("key id", k)?);
                }
            }
            Ok((nodes(node)?, change))
        }
    }
}

fn encode_task(files: &[PathBuf], version: u64, cluster: &str, node: Option<&str>) -> ExitCode {
    let cluster = match name("--cluster", cluster) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_DATA, e),
    };
    let node = match node.map(|n| name("--node", n)).transpose() {
        Ok(n) => n,
        Err(e) => return fail(EXIT_DATA, e),
    };
    match skiff_agent::wire::encode_desired(files, version, cluster, node) {
        Ok(bytes) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            match out.write_all(&bytes).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(1, format!("stdout: {e}")),
            }
        }
        Err(e) => fail(EXIT_DATA, e),
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut bad = 0;
    for f in files {
        match skiff_agent::local::read_task_file(f) {
            Ok(def) => {
                let c = def.containers.len();
                let kind = def
                    .extensions
                    .iter()
                    .map(|e| match e {
                        TaskExtension::Service(s) => {
                            format!(", a service of {} task(s)", s.desired_count)
                        }
                        TaskExtension::Schedule(_) => ", scheduled".into(),
                        TaskExtension::Batch(_) => ", a batch job".into(),
                        TaskExtension::Volumes(v) => format!(", {} volume(s)", v.len()),
                    })
                    .collect::<String>();
                println!(
                    "{}: ok: family {} revision {}, {c} container(s){kind}",
                    f.display(),
                    def.family,
                    def.revision
                );
            }
            Err(e) => {
                eprintln!("{e}");
                bad += 1;
            }
        }
    }
    if bad > 0 {
        ExitCode::from(EXIT_DATA)
    } else {
        ExitCode::SUCCESS
    }
}

fn run_image(i: ImageArgs) -> ExitCode {
    let cfg = match validated(&i.config, |c| {
        if let Some(d) = i.data_dir {
            c.data_dir = d;
        }
    }) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, e),
    };
    let root = cfg.data_dir.join("images");
    let store = match images::ImageStore::open(&root) {
        Ok(s) => s,
        Err(e) => return fail(1, format!("image store at {}: {e}", root.display())),
    };
    match i.cmd {
        ImageCmd::Import {
            path,
            tag,
            platform,
        } => {
            let tag = match tag.map(|t| t.parse::<images::ImageRef>()).transpose() {
                Ok(t) => t,
                Err(e) => return fail(EXIT_DATA, format!("--tag: {e}")),
            };
            let store = match platform.map(|p| p.parse::<images::Platform>()).transpose() {
                Ok(Some(p)) => store.with_platform(p),
                Ok(None) => store,
                Err(e) => return fail(EXIT_DATA, format!("--platform: {e}")),
            };
            eprintln!("importing {} ...", path.display());
            match store.import(&path, tag.as_ref()) {
                Ok(imported) => {
                    for img in imported {
                        println!(
                            "imported {} {} ({}, {:.1} MiB, {} new blobs)",
                            img.reference,
                            img.digest,
                            img.platform,
                            img.size as f64 / 1048576.0,
                            img.blobs_written
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_DATA, e),
            }
        }
        ImageCmd::Ls { json } => match store.list() {
            Ok(list) => {
                if !json {
                    println!(
                        "{:<50} {:<20} {:<14} {:>9}",
                        "IMAGE", "DIGEST", "PLATFORM", "SIZE"
                    );
                }
                for e in list {
                    if json {
                        let j = serde_json::json!({
                            "reference": e.reference.to_string(),
                            "digest": e.digest.to_string(),
                            "platform": e.platform.to_string(),
                            "size": e.size,
                            "imported_at": e.imported_at,
                        });
                        println!("{j}");
                    } else {
                        let digest = e.digest.to_string();
                        let short = digest.get(..19).unwrap_or(&digest);
                        let mib = e.size as f64 / 1048576.0;
                        println!(
                            "{:<50} {short:<20} {:<14} {mib:>5.1} MiB",
                            e.reference.to_string(),
                            e.platform.to_string()
                        );
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, e),
        },
        ImageCmd::Pull {
            reference,
            json,
            platform,
        } => {
            let r = match reference.parse::<images::ImageRef>() {
                Ok(r) => r,
                Err(e) => return fail(EXIT_DATA, e),
            };
            let store = match platform.map(|p| p.parse::<images::Platform>()).transpose() {
                Ok(Some(p)) => store.with_platform(p),
                Ok(None) => store,
                Err(e) => return fail(EXIT_DATA, format!("--platform: {e}")),
            };
            match images::progress::pull_cli(&store, &cfg.registries, &cfg.images, &r, json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.is_unreachable() => fail(69, e),
                Err(e) => fail(1, e),
            }
        }
        ImageCmd::Export { reference, dest } => {
            let r = match reference.parse::<images::ImageRef>() {
                Ok(r) => r,
                Err(e) => return fail(EXIT_DATA, e),
            };
            match store.export(&r, &dest) {
                Ok(x) => {
                    println!(
                        "exported {r} {} ({} blobs) to {}",
                        x.digest,
                        x.blobs,
                        dest.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, e),
            }
        }
        ImageCmd::Prune { keep, dry_run } => {
            let policy = images::gc::GcPolicy {
                keep_per_repository: keep.unwrap_or(cfg.images.keep_per_repository).max(1),
                low_water_bytes: cfg.images.gc_low_water_bytes,
                dry_run,
            };
            // Images of the desired state the agent last applied are in use even when their
            // tasks are not running right now (restarting, scheduled, stopped).
            let saved = skiff_agent::store::StateStore::open(cfg.data_dir.join("state"))
                .map(|s| s.load())
                .unwrap_or_default();
            let protect: Vec<images::ImageRef> = [saved.cluster, saved.node]
                .into_iter()
                .flatten()
                .flat_map(|d| d.tasks)
                .flat_map(|t| t.containers)
                .filter_map(|c| c.image.parse().ok())
                .collect();
            match store.gc(&policy, &protect) {
                Ok(report) => {
                    let verb = if dry_run { "would remove" } else { "removed" };
                    for n in &report.names_removed {
                        println!("{verb} {n}");
                    }
                    for n in &report.in_use {
                        println!("in use, kept {n}");
                    }
                    println!(
                        "{verb} {} names, {} blobs ({} bytes), {} rootfs",
                        report.names_removed.len(),
                        report.blobs_removed,
                        report.bytes_freed,
                        report.rootfs_removed
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, e),
            }
        }
        ImageCmd::Rm { reference } => {
            let r = match reference.parse::<images::ImageRef>() {
                Ok(r) => r,
                Err(e) => return fail(EXIT_DATA, e),
            };
            match store.remove(&r) {
                Ok(_) => {
                    println!("removed {r}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, e),
            }
        }
    }
}

fn run_node(cmd: NodeCmd) -> ExitCode {
    let NodeCmd::Init(n) = cmd;
    let cfg = match validated(&n.config, |c| {
        if let Some(d) = n.data_dir {
            c.data_dir = d;
        }
    }) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, e),
    };
    match skiff_agent::identity::init(&cfg.data_dir) {
        Ok(key) => {
            let new = if key.created { " (new)" } else { "" };
            println!("node {} key x25519:{}{new}", cfg.node, key.public_hex());
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

fn run_logs(l: LogsArgs) -> ExitCode {
    let cfg = match validated(&l.config, |c| {
        if let Some(d) = l.run_dir {
            c.run_dir = d;
        }
    }) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, e),
    };
    let task: Name = match l.task.parse() {
        Ok(t) => t,
        Err(e) => return fail(EXIT_DATA, format!("task {:?}: {e}", l.task)),
    };
    let dir = cfg.run_dir.join("logs");
    let (data, mut len) = match logs::read_tail(&dir, &task, l.tail) {
        Ok(x) => x,
        Err(e) => return fail(1, e),
    };
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = out.write_all(&data);
    let _ = out.flush();
    if !l.follow {
        return ExitCode::SUCCESS;
    }
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let path = logs::log_path(&dir, &task);
        let now = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if now < len {
            len = 0; // rotated
        }
        if now > len {
            if let Ok(mut f) = std::fs::File::open(&path) {
                use std::io::{Read, Seek, SeekFrom};
                let mut buf = Vec::new();
                if f.seek(SeekFrom::Start(len)).is_ok() && f.read_to_end(&mut buf).is_ok() {
                    let _ = out.write_all(&buf);
                    let _ = out.flush();
                }
            }
            len = now;
        }
    }
}

fn run_history(h: HistoryArgs) -> ExitCode {
    let cfg = match validated(&h.config, |c| {
        if let Some(d) = h.data_dir {
            c.data_dir = d;
        }
    }) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, e),
    };
    let task: Name = match h.task.parse() {
        Ok(t) => t,
        Err(e) => return fail(EXIT_DATA, format!("task {:?}: {e}", h.task)),
    };
    let limit = usize::try_from(h.limit).unwrap_or(usize::MAX);
    let runs = skiff_agent::store::read_task_history(&cfg.data_dir, &task, limit);
    print!("{}", skiff_agent::display::history(&runs, h.json));
    ExitCode::SUCCESS
}
