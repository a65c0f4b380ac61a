//! The agent's configuration: plain data read from TOML, validated before anything starts.
//!
//! Every field has a default, so an empty file is a valid configuration (node id = host name,
//! cluster `default`, broker on localhost). See `systemd/agent.toml` for a commented example.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use skiff_proto::Name;

/// Largest configuration file accepted.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// Agent configuration (`/etc/skiff/agent.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's id: its MQTT client id and topic level. Default: the host name.
    pub node_id: Option<String>,
    /// Cluster (topic prefix `skiff/v1/{cluster}/`). Default `default`.
    pub cluster: String,
    /// Broker URL, `mqtt://host[:port]` (port 1883 by default) or `mqtts://host[:port]` (TLS,
    /// port 8883 by default, with `[broker_tls]`).
    pub broker: String,
    /// TLS to the broker (`[broker_tls]`: ca_file, cert_file, key_file); needs `mqtts://`.
    pub broker_tls: crate::tls::BrokerTlsConfig,
    /// Durable state: the image store. Default `/var/lib/skiff`.
    pub data_dir: PathBuf,
    /// Volatile state: container bundles, rootfs mounts, logs, libcontainer state.
    /// Default `/run/skiff` (tmpfs on most systems, so it spares the SD card).
    pub run_dir: PathBuf,
    /// Seconds between metrics samples. Default 10, 1..=3600.
    pub metrics_interval_secs: u64,
    /// Samples batched into one metrics message. Default 1 (publish every sample), 1..=64.
    pub metrics_batch: usize,
    /// Seconds between SIGTERM and SIGKILL when a task is stopped. Default 10, 0..=3600.
    /// A container's own `stopTimeout` wins.
    pub stop_grace_secs: u64,
    /// What SIGTERM to the agent does: `stop` (default) stops every task and exits; `drain`
    /// drains the node first (service tasks stop, batch tasks may finish within
    /// `drain_batch_deadline_secs`), reporting DRAINING then DRAINED, then exits.
    pub stop_policy: StopPolicy,
    /// How long a drain lets batch tasks run on before stopping them. Default 300, 0..=86400.
    pub drain_batch_deadline_secs: u64,
    /// Bytes of log kept per task (stdout and stderr of all its containers). Default 65536.
    pub log_limit_bytes: usize,
    /// Cgroup under which task cgroups are made (`/{cgroup_parent}/{task}/{container}`).
    /// Default `skiff`.
    pub cgroup_parent: String,
    /// MQTT keep-alive in seconds; the broker publishes the last will after 1.5 × this.
    /// Default 30, 5..=3600.
    pub keepalive_secs: u64,
    /// Log filter, `RUST_LOG` syntax (`info`, `skiff_agent=debug,warn`). `RUST_LOG` wins.
    pub log: String,
    /// Bytes of events and metrics kept while the broker is unreachable (in RAM and, batched,
    /// in `data_dir/outbox`). When full, old metrics are merged into coarser samples, then the
    /// oldest events dropped. Default 4194304 (4 MiB: days at a 10 s metrics interval),
    /// 65536..=268435456.
    pub outbox_max_bytes: usize,
    /// JSON copies of status, events and metrics on `{topic}.json` for consoles that don't
    /// speak postcard (`[mirror_json]`: status, events, metrics; each default false).
    pub mirror_json: MirrorJson,
    /// Image pulls and garbage collection (`[images]`).
    pub images: crate::images::ImagesConfig,
    /// Registry credentials and plain-HTTP registries (`[[registries]]`).
    pub registries: Vec<crate::images::RegistryConfig>,
    /// Fleet keys desired state must be signed by (`[trust] keys`); none: not verified.
    pub trust: crate::trust::TrustConfig,
    /// The node's local policy (TOML, see `docs/security.md`): what desired state may ask of
    /// this node (privileged containers, host networking, no seccomp filter, capabilities,
    /// devices, host directories). Unset: the default policy (none of those but host
    /// networking).
    pub policy_file: Option<PathBuf>,
    /// Task networking (`[network]`): bridge mode (bridge, subnet, ephemeral_ports, dns) and
    /// awsvpc mode (awsvpc_parent, awsvpc_pool, awsvpc_subnet, awsvpc_gateway).
    pub network: crate::runtime::NetworkConfig,
    /// The node's labels (`[labels]`, e.g. `site = "north"`), reported in its status and matched
    /// by `skiff ctl nodes --selector` and `skiff ctl deploy --selector`. Keys: 1..=63 letters,
    /// digits, `.` `_` `-` `/`; values: 1..=63 letters, digits, `.` `_` `-`; at most 16.
    /// `arch` defaults to the build's architecture as OCI names it (`arm64`, `amd64`, `arm`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// The cluster task queue (`[queue]`: enabled, cpu_units, memory_mib, max_tasks): copies
    /// of tasks sent to the cluster with `skiff ctl run --cluster`, taken by one node with room.
    pub queue: QueueConfig,
    /// User-namespace remapping of containers (`[userns]`: enabled, base, size): root in a
    /// container is an unprivileged host uid.
    pub userns: UsernsConfig,
}

/// `[userns]`: containers run in user namespaces of their own, with container ids `0..size`
/// mapped to host ids `base..base+size` (users and groups alike). Privileged containers stay
/// in the host's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsernsConfig {
    /// Remap containers. Default false.
    pub enabled: bool,
    /// The host uid and gid of a container's root. Default 100000; at least 1 (0 would map
    /// the container's root to the host's).
    pub base: u32,
    /// How many ids are mapped. Default 65536; `base + size` must stay below 4294967295.
    pub size: u32,
}

impl Default for UsernsConfig {
    fn default() -> Self {
        UsernsConfig {
            enabled: false,
            base: 100_000,
            size: 65_536,
        }
    }
}

/// What this node takes from the cluster queue (`[queue]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Take copies from the queue (subscribes `$share/skiff/skiff/v1/{cluster}/queue` and keeps
    /// the MQTT session at the broker across disconnects). Default true.
    pub enabled: bool,
    /// CPU units (1024 = one CPU) all running tasks may reserve together (task `cpu`, else the
    /// sum of its containers'); a copy that would go over is handed back. Default: the CPUs the
    /// agent may use × 1024. 1..=1048576.
    pub cpu_units: Option<u64>,
    /// MiB all running tasks may reserve together (task `memory`, else the sum of its
    /// containers' `memoryReservation` or `memory`). Default: the node's memory. 1..=16777216.
    pub memory_mib: Option<u64>,
    /// Queued copies running at once. Default 8, 1..=64.
    pub max_tasks: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            enabled: true,
            cpu_units: None,
            memory_mib: None,
            max_tasks: 8,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: None,
            cluster: "default".into(),
            broker: "mqtt://127.0.0.1:1883".into(),
            broker_tls: crate::tls::BrokerTlsConfig::default(),
            data_dir: PathBuf::from("/var/lib/skiff"),
            run_dir: PathBuf::from("/run/skiff"),
            metrics_interval_secs: 10,
            metrics_batch: 1,
            stop_grace_secs: 10,
            stop_policy: StopPolicy::Stop,
            drain_batch_deadline_secs: 300,
            log_limit_bytes: 64 * 1024,
            cgroup_parent: "skiff".into(),
            keepalive_secs: 30,
            log: "info".into(),
            outbox_max_bytes: 4 << 20,
            mirror_json: MirrorJson::default(),
            images: crate::images::ImagesConfig::default(),
            registries: Vec::new(),
            trust: crate::trust::TrustConfig::default(),
            policy_file: None,
            network: crate::runtime::NetworkConfig::default(),
            labels: std::collections::BTreeMap::new(),
            queue: QueueConfig::default(),
            userns: UsernsConfig::default(),
        }
    }
}

/// Which topics the agent also publishes as JSON, on `{topic}.json` beside the binary topic,
/// with the same content, QoS and retain flag (`docs/asyncapi.yaml`). Made from the binary
/// message as it is sent: the outbox keeps one copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorJson {
    /// `nodes/{node}/status.json` (retained).
    pub status: bool,
    /// `nodes/{node}/events.json`.
    pub events: bool,
    /// `nodes/{node}/metrics.json`.
    pub metrics: bool,
}

/// What SIGTERM to the agent does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopPolicy {
    /// Stop every task, then exit.
    Stop,
    /// Drain (batch tasks may finish), then exit.
    Drain,
    /// Exit and leave every task running: the launcher keeps the containers and the next
    /// agent adopts them (an agent restart or upgrade of the same version without stopping
    /// the workload, as Docker's live restore).
    Leave,
}

/// Why a configuration can't be used. Exit code 78 (EX_CONFIG) in the binary.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is {len} bytes, larger than the {MAX_CONFIG_BYTES}-byte limit")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config field {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// A broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
}

/// How a broker is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `mqtt://`: plain TCP.
    Tcp,
    /// `mqtts://`: TLS (`[broker_tls]` / `skiff ctl --ca --cert --key`).
    Tls,
}

impl BrokerUrl {
    /// Parses `mqtt://host[:port]` (port 1883) or `mqtts://host[:port]` (port 8883).
    pub fn parse_with_transport(s: &str) -> Result<(BrokerUrl, Transport), String> {
        let (rest, transport, default_port) = if let Some(r) = s
            .strip_prefix("mqtts://")
            .or_else(|| s.strip_prefix("ssl://"))
        {
            (r, Transport::Tls, 8883)
        } else if let Some(r) = s
            .strip_prefix("mqtt://")
            .or_else(|| s.strip_prefix("tcp://"))
        {
            (r, Transport::Tcp, 1883)
        } else {
            return Err(format!(
                "{s:?}: expected mqtt://host[:port] or mqtts://host[:port]"
            ));
        };
        let url = parse_host_port(s, rest, default_port)?;
        Ok((url, transport))
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = String;

    /// A plain `mqtt://` URL; `mqtts://` needs [`BrokerUrl::parse_with_transport`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match BrokerUrl::parse_with_transport(s)? {
            (url, Transport::Tcp) => Ok(url),
            (_, Transport::Tls) => Err(format!("{s:?}: TLS is not possible here")),
        }
    }
}

fn parse_host_port(s: &str, rest: &str, default_port: u16) -> Result<BrokerUrl, String> {
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(format!("{s:?}: expected mqtt://host[:port]"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("{s:?}: bad port {p:?}"))?;
            (h, port)
        }
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!("{s:?}: expected mqtt://host[:port]"));
    }
    Ok(BrokerUrl {
        host: host.to_string(),
        port,
    })
}

/// A configuration checked field by field; what the agent runs with.
#[derive(Debug, Clone)]
pub struct Validated {
    pub node: Name,
    pub cluster: Name,
    pub broker: BrokerUrl,
    /// TLS to the broker (`mqtts://`), checked: files readable, key matching the certificate.
    pub broker_tls: Option<crate::tls::BrokerTls>,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub metrics_interval: Duration,
    pub metrics_batch: usize,
    pub stop_grace: Duration,
    pub stop_policy: StopPolicy,
    pub drain_batch_deadline: Duration,
    pub log_limit_bytes: usize,
    pub cgroup_parent: Name,
    pub keepalive: Duration,
    pub log: String,
    pub outbox_max_bytes: usize,
    pub mirror_json: MirrorJson,
    pub images: crate::images::ImagesSettings,
    pub registries: crate::images::Registries,
    /// Trusted fleet keys from `[trust] keys` (read and checked).
    pub trust_keys: Vec<skiff_proto::FleetKey>,
    /// The local policy (read and checked).
    pub policy: crate::policy::Policy,
    /// Bridge networking settings.
    pub network: crate::runtime::BridgeConfig,
    /// awsvpc networking settings; `None`: not configured (awsvpc tasks fail to start).
    pub awsvpc: Option<crate::runtime::AwsvpcConfig>,
    /// The labels the node reports (checked, `arch` defaulted).
    pub labels: std::collections::BTreeMap<String, String>,
    /// The cluster queue (ranges checked; `None` figures are the node's own).
    pub queue: QueueConfig,
    /// Container id remapping; `None`: off.
    pub userns: Option<crate::runtime::IdMap>,
}

impl Config {
    /// Reads a TOML file (bounded) and parses it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                len,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// Checks every field; `hostname` is used when `node_id` is unset.
    pub fn validate(
        &self,
        hostname: impl FnOnce() -> Option<String>,
    ) -> Result<Validated, ConfigError> {
        let (broker, transport) =
            BrokerUrl::parse_with_transport(&self.broker).map_err(|e| invalid("broker", e))?;
        let broker_tls = match transport {
            Transport::Tls => Some(
                self.broker_tls
                    .load()
                    .map_err(|e| invalid("broker_tls", e.to_string()))?,
            ),
            Transport::Tcp if self.broker_tls.is_empty() => None,
            Transport::Tcp => {
                return Err(invalid(
                    "broker_tls",
                    format!("set, but broker {:?} is not mqtts://", self.broker),
                ))
            }
        };
        // With a client certificate, the broker knows the node by the certificate's CN.
        let cn = broker_tls.as_ref().and_then(|t| t.identity.clone());
        let node_id = match (&self.node_id, cn) {
            (Some(n), Some(cn)) if *n != cn => {
                return Err(invalid(
                    "node_id",
                    format!("{n:?} differs from the client certificate's CN {cn:?}: set node_id = {cn:?} or leave it unset"),
                ))
            }
            (Some(n), _) => n.clone(),
            (None, Some(cn)) => cn,
            (None, None) => hostname()
                .ok_or_else(|| invalid("node_id", "unset and the host name is unknown"))?,
        };
        let node: Name = node_id
            .parse()
            .map_err(|e| invalid("node_id", format!("{node_id:?}: {e}")))?;
        let cluster: Name = self
            .cluster
            .parse()
            .map_err(|e| invalid("cluster", format!("{:?}: {e}", self.cluster)))?;
        let cgroup_parent: Name = self
            .cgroup_parent
            .parse()
            .map_err(|e| invalid("cgroup_parent", format!("{:?}: {e}", self.cgroup_parent)))?;
        for (field, dir) in [("data_dir", &self.data_dir), ("run_dir", &self.run_dir)] {
            if !dir.is_absolute() {
                return Err(invalid(
                    field,
                    format!("{} is not an absolute path", dir.display()),
                ));
            }
        }
        let range = |field, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(invalid(field, format!("{v} is outside {lo}..={hi}")))
            }
        };
        let metrics = range("metrics_interval_secs", self.metrics_interval_secs, 1, 3600)?;
        let batch = range("metrics_batch", self.metrics_batch as u64, 1, 64)?;
        let grace = range("stop_grace_secs", self.stop_grace_secs, 0, 3600)?;
        let drain = range(
            "drain_batch_deadline_secs",
            self.drain_batch_deadline_secs,
            0,
            86_400,
        )?;
        let logs = range(
            "log_limit_bytes",
            self.log_limit_bytes as u64,
            4096,
            16 << 20,
        )?;
        let keepalive = range("keepalive_secs", self.keepalive_secs, 5, 3600)?;
        let outbox = range(
            "outbox_max_bytes",
            self.outbox_max_bytes as u64,
            64 << 10,
            256 << 20,
        )?;
        let images = self
            .images
            .validate()
            .map_err(|e| invalid("images", e.to_string()))?;
        let registries = crate::images::Registries::validate(&self.registries)
            .map_err(|e| invalid("registries", e.to_string()))?;
        let trust_keys = self.trust.load().map_err(|e| invalid("trust.keys", e))?;
        let policy = match &self.policy_file {
            Some(path) => {
                crate::policy::Policy::load(path).map_err(|e| invalid("policy_file", e))?
            }
            None => crate::policy::Policy::default(),
        };
        let network = self
            .network
            .validate()
            .map_err(|(field, problem)| invalid(field, problem))?;
        let awsvpc = self
            .network
            .validate_awsvpc(&network)
            .map_err(|(field, problem)| invalid(field, problem))?;
        crate::journal::log_filter(&self.log)
            .map_err(|e| invalid("log", format!("{:?}: {e}", self.log)))?;
        let labels = crate::labels::node_labels(&self.labels).map_err(|e| invalid("labels", e))?;
        if let Some(v) = self.queue.cpu_units {
            range("queue.cpu_units", v, 1, 1 << 20)?;
        }
        if let Some(v) = self.queue.memory_mib {
            range("queue.memory_mib", v, 1, 1 << 24)?;
        }
        range("queue.max_tasks", u64::from(self.queue.max_tasks), 1, 64)?;
        let userns = if self.userns.enabled {
            let u = self.userns;
            range("userns.base", u64::from(u.base), 1, u64::from(u32::MAX) - 1)?;
            range(
                "userns.size",
                u64::from(u.size),
                1,
                u64::from(u32::MAX) - 1 - u64::from(u.base),
            )?;
            Some(crate::runtime::IdMap {
                base: u.base,
                size: u.size,
            })
        } else {
            None
        };
        Ok(Validated {
            node,
            cluster,
            broker,
            broker_tls,
            data_dir: self.data_dir.clone(),
            run_dir: self.run_dir.clone(),
            metrics_interval: Duration::from_secs(metrics),
            metrics_batch: usize::try_from(batch).unwrap_or(1),
            stop_grace: Duration::from_secs(grace),
            stop_policy: self.stop_policy,
            drain_batch_deadline: Duration::from_secs(drain),
            log_limit_bytes: usize::try_from(logs).unwrap_or(64 * 1024),
            cgroup_parent,
            keepalive: Duration::from_secs(keepalive),
            log: self.log.clone(),
            outbox_max_bytes: usize::try_from(outbox).unwrap_or(4 << 20),
            mirror_json: self.mirror_json,
            images,
            registries,
            trust_keys,
            policy,
            network,
            awsvpc,
            labels,
            queue: self.queue,
            userns,
        })
    }
}

/// The host name, from the kernel.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Validated, ConfigError> {
        let c: Config = toml::from_str(s).map_err(|e| ConfigError::Parse {
            path: "t.toml".into(),
            source: Box::new(e),
        })?;
        c.validate(|| Some("host-1".into()))
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let v = parse("").expect("defaults are valid");
        assert_eq!(v.node.as_str(), "host-1");
        assert_eq!(v.cluster.as_str(), "default");
        assert_eq!(
            v.broker,
            BrokerUrl {
                host: "127.0.0.1".into(),
                port: 1883
            }
        );
        assert_eq!(v.metrics_interval, Duration::from_secs(10));
        assert_eq!(v.stop_grace, Duration::from_secs(10));
    }

    #[test]
    fn stop_policies_by_name() {
        assert_eq!(parse("").expect("default").stop_policy, StopPolicy::Stop);
        for (text, want) in [
            ("stop", StopPolicy::Stop),
            ("drain", StopPolicy::Drain),
            ("leave", StopPolicy::Leave),
        ] {
            let v = parse(&format!("stop_policy = \"{text}\"")).expect(text);
            assert_eq!(v.stop_policy, want);
        }
        let err = parse("stop_policy = \"keep\"")
            .map(|_| ())
            .expect_err("keep");
        assert!(err.to_string().contains("stop_policy"), "{err}");
    }

    #[test]
    fn labels_are_checked_and_arch_defaults_to_the_build() {
        let v = parse("").expect("defaults are valid");
        assert_eq!(
            v.labels.get("arch").map(String::as_str),
            Some(crate::labels::build_arch())
        );
        assert_eq!(v.labels.len(), 1);
        let v = parse("[labels]\narch = \"arm\"\nsite = \"north\"\n").expect("labels");
        assert_eq!(v.labels.get("arch").map(String::as_str), Some("arm"));
        assert_eq!(v.labels.get("site").map(String::as_str), Some("north"));
        let err = parse("[labels]\nsite = \"north,south\"\n")
            .expect_err("comma")
            .to_string();
        assert!(
            err.starts_with("config field labels: site: label value") && err.contains("','"),
            "{err}"
        );
        assert!(parse("[labels]\nsite = 3\n").is_err(), "values are strings");
    }

    #[test]
    fn json_mirror_is_chosen_per_topic_kind() {
        let v = parse("").expect("defaults are valid");
        assert_eq!(v.mirror_json, MirrorJson::default(), "off by default");
        let on = parse("[mirror_json]\nstatus = true\nmetrics = true").expect("valid");
        assert_eq!(
            on.mirror_json,
            MirrorJson {
                status: true,
                events: false,
                metrics: true
            }
        );
        let err = |s: &str| parse(s).map(|_| ()).expect_err(s).to_string();
        assert!(err("[mirror_json]\nstatuses = true").contains("unknown field `statuses`"));
        assert!(err("mirror_json = true").contains("invalid type: boolean"));
    }

    #[test]
    fn bad_fields_are_named() {
        let err = |s: &str| parse(s).map(|_| ()).expect_err(s).to_string();
        assert!(err("nodeid = 'x'").contains("unknown field `nodeid`"));
        assert_eq!(err("node_id = 'a/b'"), "config field node_id: \"a/b\": name contains '/'; only letters, digits, '_', '.' and '-' are allowed");
        assert!(err("broker = 'http://x'").starts_with("config field broker:"));
        assert!(err("broker = 'mqtt://x:99999'").contains("bad port"));
        assert_eq!(
            err("metrics_interval_secs = 0"),
            "config field metrics_interval_secs: 0 is outside 1..=3600"
        );
        assert!(err("data_dir = 'rel'").contains("not an absolute path"));
        assert!(err("metrics_interval_secs = 'x'").contains("invalid type"));
        assert_eq!(
            err("[network]\nsubnet = '10.88.0.5/24'"),
            "config field network.subnet: \"10.88.0.5/24\" is not a network address: use 10.88.0.0/24"
        );
        assert!(err("[network]\nbrige = 'x'").contains("unknown field `brige`"));
        assert_eq!(
            err("[network]\nawsvpc_pool = '192.168.1.200/29'"),
            "config field network.awsvpc_parent: missing: awsvpc_pool is set, and awsvpc tasks \
             need the node's interface on that LAN (e.g. \"eth0\")"
        );
    }

    #[test]
    fn userns_is_off_by_default_and_its_range_is_checked() {
        assert_eq!(parse("").expect("valid defaults").userns, None);
        let v = parse("[userns]\nenabled = true").expect("valid");
        assert_eq!(
            v.userns,
            Some(crate::runtime::IdMap {
                base: 100_000,
                size: 65_536
            })
        );
        let v = parse("[userns]\nenabled = true\nbase = 1000000\nsize = 1024").expect("valid");
        assert_eq!(v.userns.map(|m| (m.base, m.size)), Some((1_000_000, 1024)));
        // Settings without `enabled` are kept off.
        assert_eq!(parse("[userns]\nbase = 5").expect("valid").userns, None);
        let err = |s: &str| parse(s).map(|_| ()).expect_err(s).to_string();
        assert_eq!(
            err("[userns]\nenabled = true\nbase = 0"),
            "config field userns.base: 0 is outside 1..=4294967294"
        );
        assert_eq!(
            err("[userns]\nenabled = true\nbase = 4294967000\nsize = 65536"),
            "config field userns.size: 65536 is outside 1..=294"
        );
        assert!(err("[userns]\nenable = true").contains("unknown field `enable`"));
        assert!(err("[userns]\nenabled = true\nbase = -1").contains("invalid value"));
    }

    #[test]
    fn awsvpc_keys() {
        assert_eq!(parse("").expect("valid defaults").awsvpc, None);
        let c = parse(
            "[network]\nawsvpc_parent = 'eth0'\nawsvpc_pool = '192.168.1.200-192.168.1.203'\n\
             awsvpc_gateway = '192.168.1.1'",
        )
        .expect("valid");
        let a = c.awsvpc.expect("awsvpc configured");
        assert_eq!(a.parent, "eth0");
        assert_eq!(a.pool.1, std::net::Ipv4Addr::new(192, 168, 1, 203));
        assert_eq!(a.gateway, Some(std::net::Ipv4Addr::new(192, 168, 1, 1)));
    }

    #[test]
    fn broker_tls_goes_with_mqtts() {
        let err = |s: &str| parse(s).map(|_| ()).expect_err(s).to_string();
        assert_eq!(
            err("[broker_tls]\nca_file = '/etc/ca.pem'"),
            "config field broker_tls: set, but broker \"mqtt://127.0.0.1:1883\" is not mqtts://"
        );
        let missing = err("broker = 'mqtts://h'\n[broker_tls]\nca_file = '/nonexistent/ca.pem'");
        assert!(
            missing
                .starts_with("config field broker_tls: ca_file /nonexistent/ca.pem: cannot read"),
            "{missing}"
        );
        assert!(err("[broker_tls]\ncafile = 'x'").contains("unknown field `cafile`"));
        // Without a CA file the public roots are used; without a client certificate the node
        // id is the host name.
        let v = parse("broker = 'mqtts://h'").expect("public roots");
        assert!(v.broker_tls.is_some());
        assert_eq!(v.node.as_str(), "host-1");
        assert_eq!(v.broker.port, 8883);
    }

    #[test]
    fn broker_urls() {
        let b = |s: &str| s.parse::<BrokerUrl>();
        assert_eq!(
            b("mqtt://h"),
            Ok(BrokerUrl {
                host: "h".into(),
                port: 1883
            })
        );
        assert_eq!(
            b("mqtt://h:1884/"),
            Ok(BrokerUrl {
                host: "h".into(),
                port: 1884
            })
        );
        assert_eq!(
            b("mqtt://[::1]:1884"),
            Ok(BrokerUrl {
                host: "::1".into(),
                port: 1884
            })
        );
        assert_eq!(
            BrokerUrl::parse_with_transport("mqtts://h"),
            Ok((
                BrokerUrl {
                    host: "h".into(),
                    port: 8883
                },
                Transport::Tls
            ))
        );
        assert!(b("mqtts://h").is_err());
        assert!(b("h:1883").is_err());
        assert!(b("mqtt://").is_err());
        assert!(b("mqtt://u@h").is_err());
    }
}
