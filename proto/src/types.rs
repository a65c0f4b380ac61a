//! Message bodies. Field order is wire order (postcard is not self-describing): never reorder,
//! insert or remove a field of a released message; add a new [`crate::Kind`] instead. Enums may
//! only get variants appended.
//!
//! Every type also derives `schemars::JsonSchema` under feature `schema`: `docs/asyncapi.yaml`
//! is generated from them (a new enum also goes in `asyncapi::schemas`' variant list); after a
//! change, `SKIFF_BLESS=1 cargo test -p skiff-proto --test asyncapi` regenerates it.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::limits::*;
use crate::name::Name;

/// Desired state for a cluster (topic `desired`) or one node (topic `nodes/{node}/desired`).
/// A node runs the union of both; a node task replaces a cluster task of the same family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DesiredState {
    /// Increases with every change of this document; the agent ignores a version it has applied.
    pub version: u64,
    /// The cluster the document is for; the agent rejects a document for another cluster.
    pub cluster: Name,
    /// `Some(node)` for a node document, `None` for the cluster-wide one.
    pub node: Option<Name>,
    /// Tasks to run, at most one per family.
    pub tasks: Vec<TaskDefinition>,
    /// Room for the fleet key's signature over the document (checked from protocol 1 on when the
    /// agent is configured with trusted keys).
    pub signature: Option<Signature>,
}

/// A detached signature over a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Signature {
    /// Which trusted key made it.
    pub key_id: Name,
    /// Signature bytes (ed25519: 64).
    pub bytes: Vec<u8>,
}

/// A fleet public key (ed25519) that a node trusts to sign desired state and trust updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FleetKey {
    /// The key's id: the first 8 bytes of the SHA-256 of `bytes`, as 16 hex digits.
    pub key_id: Name,
    /// The ed25519 public key (32 bytes).
    pub bytes: Vec<u8>,
}

/// Key rotation (`CommandBody::TrustUpdate`): keys a node trusts from now on, and keys it stops
/// trusting, signed by a key it trusts now. `version` orders the updates of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TrustUpdate {
    pub version: u64,
    pub cluster: Name,
    pub node: Name,
    pub add: Vec<FleetKey>,
    /// Key ids.
    pub retire: Vec<Name>,
    pub signature: Option<Signature>,
}

/// A task for the cluster, not for one node (topic `queue`, QoS 1, not retained; consoles
/// publish, agents take it through the shared subscription `$share/skiff/{topic}`): the one
/// node the broker hands it to runs it if it has room, or hands it back to the console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunRequest {
    pub cluster: Name,
    /// Unique per copy (`skiff ctl run` makes `{family}-{random}-{copy}`): the task's name on
    /// the node that runs it, and what a node remembers to never run a copy twice.
    pub id: Name,
    /// Offers of this copy so far, from 1 (a console re-offers a copy handed back).
    pub attempt: u32,
    /// Wall-clock time of the offer, ms since the Unix epoch.
    pub issued_ms: u64,
    /// Runs once (restart policy) or as a batch job; not a service or a schedule.
    pub task: TaskDefinition,
    /// By a fleet key; required by nodes that trust any key (covers every other field).
    pub signature: Option<Signature>,
}

impl RunRequest {
    /// Bounds of the task and what a queued task may be.
    pub fn validate(&self) -> Result<(), BoundError> {
        self.task.validate().map_err(|e| BoundError {
            field: alloc::format!("task ({}).{}", self.task.family, e.field),
            what: e.what,
        })?;
        for e in &self.task.extensions {
            let what = match e {
                TaskExtension::Service(_) => "a service",
                TaskExtension::Schedule(_) => "a schedule",
                TaskExtension::Batch(_) | TaskExtension::Volumes(_) => continue,
            };
            return Err(bound_err(
                "task",
                alloc::format!(
                    "a queued task runs once or as a batch job, not {what}: put it in desired state"
                ),
            ));
        }
        Ok(())
    }
}

/// A task definition: ECS's model, the fields skiff supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskDefinition {
    /// ECS `family`; also the task's name on the node.
    pub family: Name,
    /// ECS `revision` (0 when unset).
    pub revision: u32,
    /// 1 to [`MAX_CONTAINERS`] containers, sharing one network namespace.
    pub containers: Vec<ContainerDefinition>,
    /// Task-level CPU limit in CPU units (1024 = one CPU), a hard quota over all containers.
    pub cpu: Option<u32>,
    /// Task-level memory limit in MiB, a hard limit over all containers.
    pub memory_mib: Option<u32>,
    /// How the task's network namespace is set up.
    pub network_mode: NetworkMode,
    /// What happens when the task stops on its own.
    pub restart_policy: RestartPolicy,
    /// Optional behaviours beyond ECS's fields (a schedule...). New task features arrive as new
    /// [`TaskExtension`] variants, which an older agent rejects by name instead of mis-decoding.
    pub extensions: Vec<TaskExtension>,
}

/// Optional task behaviours. Appending variants only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum TaskExtension {
    /// Run on a schedule instead of at once; the restart policy does not apply.
    Schedule(Schedule),
    /// Run to completion `completions` times, retrying failures; the restart policy does not
    /// apply.
    Batch(Batch),
    /// Keep `desired_count` copies running, replaced when they die or turn unhealthy, rolled
    /// to a new revision within bounds, scaled on the device; the restart policy does not
    /// apply.
    Service(Service),
    /// ECS `volumes`: what the containers' `mountPoints` name.
    Volumes(Vec<Volume>),
}

/// ECS's service, on the device: how many copies of the task, how a new revision rolls out,
/// how the count scales.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Service {
    /// Copies to keep running (0..=[`MAX_SERVICE_TASKS`]); with auto scaling, the starting
    /// count, kept within its min..max.
    pub desired_count: u32,
    /// ECS `minimumHealthyPercent` (0..=100): during a rollout, healthy tasks never fall below
    /// this share of the desired count (rounded up).
    pub min_healthy_percent: u32,
    /// ECS `maximumPercent` (100..=200): during a rollout, tasks never exceed this share of
    /// the desired count (rounded down).
    pub max_percent: u32,
    /// ECS `deploymentCircuitBreaker` (`enable` = Some): a rollout whose new tasks keep failing
    /// is marked failed.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// ECS `healthCheckGracePeriodSeconds`: failed health checks of a new task are ignored
    /// this long.
    pub health_grace_secs: u32,
    /// On-device auto scaling of the desired count.
    pub scaling: Option<AutoScaling>,
}

/// What a failed rollout does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CircuitBreaker {
    /// Go back to the last revision that completed a rollout.
    pub rollback: bool,
}

/// Auto scaling of a service's desired count within `min..=max`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AutoScaling {
    pub min: u32,
    pub max: u32,
    pub target_tracking: Vec<TargetTracking>,
    pub step: Vec<StepScaling>,
    pub scheduled: Vec<ScheduledScaling>,
}

/// Which figure a scaling policy follows, averaged over the service's running tasks.
/// Appending variants only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ScalingMetric {
    /// CPU use in % of the task's `cpu` (of one CPU when unset), as ECS's
    /// `ECSServiceAverageCPUUtilization`.
    Cpu,
    /// Memory in use in % of the task's memory limit (of the node's memory when unset), as
    /// `ECSServiceAverageMemoryUtilization`.
    Memory,
}

/// Keep the metric near `target_percent`: desired = ceil(running × value / target).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TargetTracking {
    pub metric: ScalingMetric,
    pub target_percent: u32,
    /// After a scale-out, no further scale-out for this long.
    pub scale_out_cooldown_secs: u32,
    /// After any scaling, no scale-in for this long.
    pub scale_in_cooldown_secs: u32,
    pub disable_scale_in: bool,
}

/// Step scaling: while the metric is beyond `threshold_percent`, change the count by the
/// step whose interval (relative to the threshold, as ECS's `MetricIntervalLowerBound` /
/// `UpperBound`) holds the metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StepScaling {
    pub metric: ScalingMetric,
    pub threshold_percent: u32,
    /// True: acts when metric >= threshold; false: when metric <= threshold.
    pub above: bool,
    pub cooldown_secs: u32,
    pub steps: Vec<StepAdjustment>,
}

/// One step: `lower <= metric - threshold < upper` (open ends when None) → `change` tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StepAdjustment {
    pub lower: Option<i32>,
    pub upper: Option<i32>,
    pub change: i32,
}

/// At each firing of `cron`, set the scaling bounds to `min..=max`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ScheduledScaling {
    pub cron: String,
    pub utc_offset_minutes: i16,
    /// A named IANA time zone instead of the fixed offset (see [`ScheduleSpec::Cron`]).
    pub zone: Option<String>,
    pub min: u32,
    pub max: u32,
}

/// ECS's container `healthCheck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HealthCheck {
    pub test: HealthTest,
    /// Between checks (5..=300, ECS default 30).
    pub interval_secs: u32,
    /// A check running longer fails (2..=60, default 5).
    pub timeout_secs: u32,
    /// Failures in a row that make the container unhealthy (1..=10, default 3).
    pub retries: u32,
    /// Failures during this long after the start do not count (0..=300).
    pub start_period_secs: u32,
}

/// What a health check runs. Appending variants only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum HealthTest {
    /// `["CMD", args...]`: run in the container; exit 0 = healthy.
    Cmd(Vec<String>),
    /// `["CMD-SHELL", "command"]`: `/bin/sh -c command` in the container.
    Shell(String),
    /// skiff's `["TCP", "port"]`: a TCP connection to the port in the task's network.
    Tcp(u16),
}

/// A batch job: how many successful runs, how many retries, how long each run may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Batch {
    /// Successful (exit 0) runs wanted, one after the other (1..=10000).
    pub completions: u32,
    /// Failed runs retried, with exponential backoff, before the job is marked failed.
    pub retries: u32,
    /// A run still going after this many seconds is stopped and counts as failed.
    pub timeout_secs: Option<u32>,
}

/// When a scheduled task runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Schedule {
    pub spec: ScheduleSpec,
    pub overlap: OverlapPolicy,
    pub missed: MissedRunPolicy,
}

/// Cron or fixed rate. Appending variants only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ScheduleSpec {
    /// A cron expression (5 or 6 fields) in a zone `utc_offset_minutes` east of UTC, or in
    /// the named IANA time zone `zone` (`Europe/Berlin`, daylight saving time included) when
    /// set, read from the node's zoneinfo.
    Cron {
        expr: String,
        utc_offset_minutes: i16,
        zone: Option<String>,
    },
    /// Every `every_secs` seconds of monotonic time, first run one period after it is applied.
    Rate { every_secs: u32 },
}

/// What a firing does while the previous run still runs. Appending variants only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum OverlapPolicy {
    /// Skip this firing.
    Forbid,
    /// Stop the running one, then start.
    Replace,
    /// Start another run beside the running ones (at most
    /// [`crate::limits::MAX_CONCURRENT_RUNS`] at once; a firing beyond is skipped).
    Allow,
}

/// What happens to firings missed while the agent was down or the clock jumped. Appending
/// variants only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum MissedRunPolicy {
    /// Forget them; wait for the next firing.
    Skip,
    /// Run once now, however many were missed.
    RunOnce,
}

/// One container of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ContainerDefinition {
    /// Unique within the task.
    pub name: Name,
    /// Image reference as written (`busybox`, `registry:5000/app@sha256:...`).
    pub image: String,
    /// Overrides the image's entrypoint when non-empty.
    pub entry_point: Vec<String>,
    /// Overrides the image's cmd when non-empty.
    pub command: Vec<String>,
    /// Added to (and overriding) the image's environment.
    pub environment: Vec<EnvVar>,
    /// CPU units: relative weight (cpu.shares / cpu.weight) among containers.
    pub cpu: Option<u32>,
    /// Hard memory limit in MiB; exceeding it OOM-kills the container.
    pub memory_mib: Option<u32>,
    /// Soft memory limit (reservation) in MiB.
    pub memory_reservation_mib: Option<u32>,
    /// When an essential container stops, the whole task stops.
    pub essential: bool,
    /// Working directory, overriding the image's.
    pub working_directory: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, overriding the image's.
    pub user: Option<String>,
    /// ECS `healthCheck`.
    pub health_check: Option<HealthCheck>,
    /// ECS `stopTimeout`: SIGTERM → SIGKILL for this container (the agent's default if None).
    pub stop_timeout_secs: Option<u32>,
    /// ECS `dependsOn`: this container starts once each condition holds.
    pub depends_on: Vec<ContainerDependency>,
    /// ECS `portMappings` (bridge networking): host ports forwarded to the task's ports.
    pub port_mappings: Vec<PortMapping>,
    /// ECS `secrets`: environment variables whose values are sealed to the node's key.
    pub secrets: Vec<Secret>,
    /// What the container's processes may do (ECS `privileged`, `readonlyRootFilesystem`,
    /// `linuxParameters`, `dockerSecurityOptions`); the node's policy bounds it.
    pub security: ContainerSecurity,
    /// ECS `mountPoints`: the task's volumes (its [`TaskExtension::Volumes`]) in this container.
    pub mount_points: Vec<MountPoint>,
}

/// Linux capabilities a container may be given, without the `CAP_` prefix, as Docker and ECS
/// spell them (`linuxParameters.capabilities`), in kernel order (index = capability number).
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default capability set: what a container has unless its definition adds or drops.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Devices, tmpfs mounts, capability changes of one container.
pub const MAX_SECURITY_ENTRIES: usize = 32;

/// A container's privileges. The default is least privilege as skiff runs it: Docker's
/// capability set, `no_new_privileges`, skiff's default seccomp filter, masked and read-only
/// `/proc` paths, no devices beyond the standard ones.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ContainerSecurity {
    /// ECS `privileged`: every capability, every device, no seccomp filter, `/proc` and `/sys`
    /// unmasked.
    pub privileged: bool,
    /// ECS `readonlyRootFilesystem`: the root filesystem is mounted read-only.
    pub read_only_root: bool,
    /// `dockerSecurityOptions` `no-new-privileges[:true|false]`; `None`: the node's default
    /// (on). Off means the container runs without the seccomp filter, which needs it.
    pub no_new_privileges: Option<bool>,
    /// `dockerSecurityOptions` `seccomp:unconfined`: no seccomp filter.
    pub seccomp_unconfined: bool,
    /// `linuxParameters.capabilities.add`, names from [`CAPABILITY_NAMES`].
    pub cap_add: Vec<String>,
    /// `linuxParameters.capabilities.drop`, names from [`CAPABILITY_NAMES`] or `ALL`.
    pub cap_drop: Vec<String>,
    /// `linuxParameters.devices`.
    pub devices: Vec<Device>,
    /// `linuxParameters.tmpfs`.
    pub tmpfs: Vec<Tmpfs>,
}

impl ContainerSecurity {
    /// Whether the container runs with skiff's seccomp filter, given the node's default for
    /// `no_new_privileges` (the filter is installed without privileges, which needs it).
    pub fn filtered(&self, node_no_new_privileges: bool) -> bool {
        !self.privileged
            && !self.seccomp_unconfined
            && self.no_new_privileges.unwrap_or(node_no_new_privileges)
    }

    /// The capability set the container's processes get (names without `CAP_`, sorted).
    pub fn capabilities(&self) -> Vec<&'static str> {
        let mut caps: Vec<&'static str> = if self.privileged {
            CAPABILITY_NAMES.to_vec()
        } else {
            let drop_all = self.cap_drop.iter().any(|c| c == "ALL");
            CAPABILITY_NAMES
                .iter()
                .copied()
                .filter(|n| {
                    let default = DEFAULT_CAPABILITIES.contains(n)
                        && !drop_all
                        && !self.cap_drop.iter().any(|c| c == n);
                    default || self.cap_add.iter().any(|c| c == n)
                })
                .collect()
        };
        caps.sort_unstable();
        caps
    }
}

/// ECS `linuxParameters.devices` entry: a host device node made available in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Device {
    /// Absolute path of the device on the node (`/dev/ttyUSB0`).
    pub host_path: String,
    /// Where it appears in the container; `None`: the same path.
    pub container_path: Option<String>,
    /// Read access (ECS `permissions` `read`).
    pub read: bool,
    /// Write access (`write`).
    pub write: bool,
    /// May create device nodes (`mknod`).
    pub mknod: bool,
}

/// ECS `linuxParameters.tmpfs` entry: a memory-backed filesystem in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Tmpfs {
    pub container_path: String,
    /// Size limit in MiB.
    pub size_mib: u32,
    /// Mount options (`noexec`, `nosuid`, `mode=1777`...), from a fixed list.
    pub mount_options: Vec<String>,
}

/// tmpfs mount options a task may ask for.
pub const TMPFS_OPTIONS: [&str; 12] = [
    "defaults", "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync", "async",
    "noatime",
];

/// ECS `mountPoints` entry: volume `source_volume` at `container_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MountPoint {
    pub source_volume: Name,
    pub container_path: String,
    pub read_only: bool,
}

/// ECS `volumes` entry: a host directory (`host.sourcePath`), or, without one, a directory
/// that lives as long as the task and is shared by its containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Volume {
    pub name: Name,
    pub host_path: Option<String>,
}

/// Where secrets given as files appear in a container (a tmpfs, made when one is asked for).
pub const SECRET_FILE_DIR: &str = "/run/secrets";

/// Whether a secret name asks for a file (`/run/secrets/db_password`); `Err` for a name that
/// starts with `/` but is not one file directly in [`SECRET_FILE_DIR`].
pub fn secret_file(name: &str) -> Result<Option<&str>, &'static str> {
    if !name.starts_with('/') {
        return Ok(None);
    }
    let file = name
        .strip_prefix(SECRET_FILE_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or("a secret file is /run/secrets/NAME")?;
    let ok = !file.is_empty()
        && file.len() <= 128
        && file != "."
        && file != ".."
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(Some(file))
    } else {
        Err("a secret file is /run/secrets/NAME with NAME of letters, digits, '.', '_', '-'")
    }
}

/// Prefix of a sealed secret value.
pub const SEALED_PREFIX: &str = "skiff-sealed:v1:";

/// ECS `secrets` entry: `name` is set in the container's environment to the value `sealed`
/// opens to (`skiff-sealed:v1:...`, made by `skiff ctl seal`); only the node it was sealed
/// for can open it, in memory, right before the container starts. A `name` of the form
/// [`SECRET_FILE_DIR`]`/FILE` is a file instead: written on a tmpfs at that path, readable by
/// the container's user only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Secret {
    pub name: String,
    /// ECS `valueFrom`.
    pub sealed: String,
}

/// ECS `portMappings` entry: traffic to `host_port` on the node's addresses goes to
/// `container_port` in the task's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PortMapping {
    pub container_port: u16,
    /// `None`: a dynamic port from the agent's ephemeral range (ECS's `hostPort` 0 or absent).
    pub host_port: Option<u16>,
    pub protocol: Protocol,
}

/// Transport protocol of a port mapping. Appending variants only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Where a running task can be reached: one port mapping with the host port it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Endpoint {
    /// The container whose definition holds the mapping.
    pub container: Name,
    pub container_port: u16,
    /// The port on the node's addresses (allocated when the mapping is dynamic).
    pub host_port: u16,
    pub protocol: Protocol,
    /// The task's own address (on the node's bridge).
    pub address: String,
}

/// ECS `dependsOn` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ContainerDependency {
    pub container: Name,
    pub condition: DependencyCondition,
}

/// ECS's dependency conditions. Appending variants only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum DependencyCondition {
    /// The other container has started.
    Start,
    /// The other container has exited (any code).
    Complete,
    /// The other container has exited with code 0.
    Success,
    /// The other container's health check passed.
    Healthy,
}

/// `NAME=value` for a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// ECS `networkMode`. Appending variants only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum NetworkMode {
    /// Own network namespace with only loopback.
    None,
    /// The node's network namespace.
    Host,
    /// Own network namespace on the node's bridge: an address from the bridge's subnet,
    /// outbound traffic masqueraded, `portMappings` forwarded from the node's ports.
    Bridge,
    /// Own network namespace with its own address on the node's LAN (a macvlan of the
    /// agent's configured parent interface, an address from its pool), as ECS's task ENI:
    /// `portMappings` are the task's own ports, reached at its address, nothing is mapped.
    Awsvpc,
}

/// skiff's `restartPolicy` for a task. Appending variants only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum RestartPolicy {
    /// Run once.
    Never,
    /// Restart when the task's exit code is not 0 (or it was killed).
    OnFailure,
    /// Always restart.
    Always,
}

/// Reported state of a node (topic `nodes/{node}/status`, retained). The broker's last will
/// publishes the same message with `state: Offline`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Status {
    pub node: Name,
    pub state: NodeState,
    /// Agent version (`CARGO_PKG_VERSION`).
    pub agent_version: String,
    /// Last applied cluster-wide desired-state version (0 = none).
    pub cluster_version: u64,
    /// Last applied node desired-state version (0 = none).
    pub node_version: u64,
    /// Wall-clock time of this report, ms since the Unix epoch.
    pub at_ms: u64,
    pub tasks: Vec<TaskStatus>,
    pub services: Vec<ServiceStatus>,
    /// The node's labels (agent config `[labels]`; `arch` defaults to the build's): what
    /// `skiff ctl nodes --selector` and `skiff ctl deploy --selector` match. Also in the last
    /// will, so an offline node keeps them.
    pub labels: BTreeMap<String, String>,
    /// The node's CPUs and memory, and their use at the last metrics sample before this report.
    pub resources: NodeResources,
}

/// A node's size and load, as its status reports them; 0 where not known (a last will has the
/// size, not the load).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeResources {
    /// CPUs the agent may use (`available_parallelism`: affinity and cgroup quota respected).
    pub cpus: u32,
    pub mem_total_bytes: u64,
    /// Node CPU use, 0..=100 (% of all its CPUs), as [`MetricsSample::cpu_pct`].
    pub cpu_pct: f32,
    pub mem_used_bytes: u64,
}

/// A service on the node, as ECS's `describe-services` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ServiceStatus {
    pub name: Name,
    pub desired_count: u32,
    pub running_count: u32,
    pub healthy_count: u32,
    /// Newest (primary) first.
    pub deployments: Vec<DeploymentStatus>,
}

/// One deployment (a revision being or having been rolled out) of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeploymentStatus {
    /// Increases per deployment of the service on this node.
    pub id: u32,
    pub revision: u32,
    /// The deployment new tasks come from; the others are draining.
    pub primary: bool,
    pub rollout: RolloutState,
    pub desired_count: u32,
    pub pending_count: u32,
    pub running_count: u32,
    pub healthy_count: u32,
    /// Tasks of this deployment that failed to start, exited or turned unhealthy.
    pub failed_tasks: u32,
}

/// ECS's `rolloutState`. Appending variants only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum RolloutState {
    InProgress,
    Completed,
    Failed,
}

/// A container's or task's health (ECS `healthStatus`). Appending variants only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Health {
    /// No health check, or none has decided yet.
    Unknown,
    Healthy,
    Unhealthy,
}

/// Node state. Appending variants only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum NodeState {
    Online,
    Offline,
    /// Draining: starts nothing new, stops its service tasks, lets batch tasks finish.
    Draining,
    /// Drained: nothing runs; `Activate` makes it `Online` again.
    Drained,
}

/// State of one task on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskStatus {
    pub name: Name,
    pub revision: u32,
    pub state: TaskState,
    /// How many times the task was restarted by its restart policy.
    pub restarts: u32,
    /// Exit of the essential container that ended the last run.
    pub last_exit: Option<ExitInfo>,
    pub containers: Vec<ContainerStatus>,
    /// The service the task belongs to (its name is then `{service}.{slot}`).
    pub service: Option<Name>,
    /// Healthy when every essential container with a health check is healthy.
    pub health: Health,
    /// Where the running task is reached (its port mappings); empty when it is not running.
    pub endpoints: Vec<Endpoint>,
}

/// Task lifecycle. Appending variants only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum TaskState {
    /// Being created.
    Pending,
    /// Every container started.
    Running,
    /// Being stopped (SIGTERM sent, waiting for the grace period).
    Stopping,
    /// Stopped and cleaned up; waits for a restart or for removal.
    Stopped,
    /// Could not be started.
    Failed,
}

/// State of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ContainerStatus {
    pub name: Name,
    pub state: ContainerState,
    pub pid: Option<u32>,
    pub exit: Option<ExitInfo>,
    pub health: Health,
    /// Runs without skiff's seccomp filter: privileged, `seccomp:unconfined`,
    /// `no-new-privileges:false`, or an agent build that has no syscall table for its
    /// architecture.
    pub unfiltered: bool,
}

/// Container lifecycle. Appending variants only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ContainerState {
    Pending,
    Running,
    Exited,
}

/// How a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExitInfo {
    /// Exit code; `128 + signal` when killed by a signal, as shells and Docker report it.
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Killed by the kernel's OOM killer for exceeding its memory limit.
    pub oom_killed: bool,
}

/// Which desired-state document an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Scope {
    Cluster,
    Node,
}

/// One event (topic `nodes/{node}/events`, QoS 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Event {
    pub node: Name,
    /// Per-agent-run sequence number, to spot gaps.
    pub seq: u64,
    /// Wall-clock time, ms since the Unix epoch.
    pub at_ms: u64,
    pub body: EventBody,
}

/// What happened. Appending variants only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum EventBody {
    /// The agent started (or reconnected after a restart).
    AgentStarted { version: String },
    /// A desired-state document was applied.
    DesiredApplied { scope: Scope, version: u64 },
    /// A desired-state document was rejected; nothing changed.
    DesiredRejected {
        scope: Scope,
        version: Option<u64>,
        reason: String,
    },
    /// An image was found (pulled) for a container.
    ImageReady {
        task: Name,
        container: Name,
        image: String,
        digest: String,
    },
    /// A task's containers are being created.
    TaskStarting {
        task: Name,
        revision: u32,
        attempt: u32,
    },
    /// A container was created and started.
    ContainerStarted {
        task: Name,
        container: Name,
        pid: u32,
    },
    /// A container's process exited.
    ContainerExited {
        task: Name,
        container: Name,
        exit: ExitInfo,
    },
    /// Every container of the task runs.
    TaskRunning { task: Name },
    /// The task stopped and was cleaned up.
    TaskStopped {
        task: Name,
        reason: StopReason,
        exit: Option<ExitInfo>,
    },
    /// The task will be restarted after `delay_ms`.
    TaskRestarting {
        task: Name,
        attempt: u32,
        delay_ms: u64,
    },
    /// The task could not be started.
    TaskFailed { task: Name, reason: String },
    /// A scheduled firing did not start a run (overlap forbidden, missed while down...).
    ScheduleSkipped { task: Name, reason: String },
    /// An image is being pulled for a container: bytes of its layers in the store so far.
    ImagePulling {
        task: Name,
        container: Name,
        image: String,
        done: u64,
        total: u64,
    },
    /// The bounded outbox was full while offline: metrics samples merged into coarser ones and
    /// events dropped since the last report.
    OutboxOverflow {
        dropped_events: u64,
        merged_samples: u64,
    },
    /// Durable state could not be written (disk full, read-only...): what runs is unchanged,
    /// but it would be lost at a restart until a later write succeeds.
    StateNotSaved { what: String, reason: String },
    /// A container's health changed; `output`: the last check's (bounded) output.
    HealthChanged {
        task: Name,
        container: Name,
        health: Health,
        output: String,
    },
    /// A service started rolling out a revision (also a rollback).
    DeploymentStarted {
        service: Name,
        deployment: u32,
        revision: u32,
    },
    /// Every task of the deployment is healthy and the older ones are gone.
    DeploymentCompleted {
        service: Name,
        deployment: u32,
        revision: u32,
    },
    /// The circuit breaker stopped a deployment; `rollback_to`: the revision restored.
    DeploymentFailed {
        service: Name,
        deployment: u32,
        revision: u32,
        reason: String,
        rollback_to: Option<u32>,
    },
    /// Auto scaling changed a service's desired count; `cause` names the policy and the
    /// metric values that decided it.
    ServiceScaled {
        service: Name,
        from: u32,
        to: u32,
        cause: String,
    },
    /// The node changed between online, draining and drained.
    NodeStateChanged { state: NodeState },
    /// A trust update was applied: `keys` are the key ids the node trusts now.
    TrustUpdated { version: u64, keys: Vec<Name> },
    /// A trust update was rejected; nothing changed.
    TrustRejected { version: u64, reason: String },
    /// The task's endpoints changed: reachable once it runs, empty once it stops.
    EndpointsChanged {
        task: Name,
        endpoints: Vec<Endpoint>,
    },
    /// This node took a copy from the cluster queue; it runs as task `request`.
    QueueClaimed { request: Name, attempt: u32 },
    /// This node had no room for a queued copy and handed it back (the console offers it again).
    QueueHandedBack {
        request: Name,
        attempt: u32,
        reason: String,
    },
    /// A queued copy was refused (other cluster, unsigned or forged): no node of the cluster
    /// would run it.
    QueueRejected {
        request: Option<Name>,
        attempt: u32,
        reason: String,
    },
    /// A queued copy this node claimed ran to its end.
    QueueFinished {
        request: Name,
        ok: bool,
        exit: Option<ExitInfo>,
        reason: String,
    },
    /// The agent restarted and took over a task whose containers outlived it (kept by its
    /// launcher) instead of restarting it: `running` containers are still up, `exited` ended
    /// while no agent was there (their exits follow as `ContainerExited`).
    TaskAdopted {
        task: Name,
        running: u32,
        exited: u32,
    },
}

/// Why a task stopped. Appending variants only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum StopReason {
    /// An essential container exited.
    EssentialExited,
    /// Removed from desired state.
    Removed,
    /// Replaced by a new definition.
    Replaced,
    /// The agent is shutting down.
    Shutdown,
    /// Its containers could not all be started.
    StartFailed,
    /// A batch run exceeded its timeout.
    TimedOut,
    /// Its health check failed `retries` times in a row.
    Unhealthy,
    /// Its service scaled in or rolled to a new revision.
    ServiceUpdated,
    /// The node is draining.
    Drained,
}

/// A batch of metric samples (topic `nodes/{node}/metrics`, QoS 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Metrics {
    pub node: Name,
    pub samples: Vec<MetricsSample>,
}

/// Node and task figures at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MetricsSample {
    pub at_ms: u64,
    /// Node CPU use over the interval, 0..=100 × CPUs / CPUs (i.e. 0..=100).
    pub cpu_pct: f32,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    pub tasks: Vec<TaskSample>,
}

/// One task's figures from its cgroup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskSample {
    pub task: Name,
    /// CPU use over the interval, in % of one CPU (200 = two CPUs busy), as `docker stats`.
    pub cpu_pct: f32,
    /// Memory in use without reclaimable page cache (as `docker stats`).
    pub mem_bytes: u64,
    /// Memory limit, if any.
    pub mem_limit_bytes: Option<u64>,
}

/// An imperative request to one node (topic `nodes/{node}/cmd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Command {
    /// Correlation id, echoed in the [`Reply`].
    pub id: u64,
    pub body: CommandBody,
}

/// Requests. Appending variants only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum CommandBody {
    /// Is the agent there; which version.
    Ping,
    /// A task's log. `from`: byte offset in the task's log stream (None = the last `max_bytes`).
    Logs {
        task: Name,
        from: Option<u64>,
        max_bytes: u32,
    },
    /// A task's run history: the newest `limit` runs (at most `limits::MAX_HISTORY`).
    History { task: Name, limit: u32 },
    /// Drain the node: start nothing new, stop service tasks, let batch tasks finish.
    Drain,
    /// Undo `Drain`.
    Activate,
    /// Add or retire trusted fleet keys (answered by a `TrustUpdated` or `TrustRejected`
    /// event, not a reply).
    TrustUpdate(alloc::boxed::Box<TrustUpdate>),
    /// The node's X25519 public key, to seal secrets to (`skiff ctl seal`).
    NodeKey,
}

/// The answer to a [`Command`] (topic `nodes/{node}/reply`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Reply {
    pub id: u64,
    pub body: ReplyBody,
}

/// Answers. Appending variants only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ReplyBody {
    Pong {
        version: String,
    },
    /// `data` is the log from offset `start` to `end`; bytes before `start` were dropped by the
    /// bounded log when `start` is greater than the offset asked for.
    Logs {
        start: u64,
        end: u64,
        data: Vec<u8>,
    },
    /// The request failed.
    Error {
        reason: String,
    },
    /// The request's kind or protocol version is not understood by this agent.
    Unsupported {
        reason: String,
    },
    /// Runs of a task, oldest first.
    History {
        runs: Vec<RunRecord>,
    },
    /// The node's state after a `Drain` or `Activate`.
    NodeState {
        state: NodeState,
    },
    /// The node's X25519 public key (32 bytes).
    NodeKey {
        x25519: Vec<u8>,
    },
}

/// One finished run of a task: what the run history keeps and reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunRecord {
    pub task: Name,
    pub revision: u32,
    /// 1 for the first run of a definition, +1 per restart.
    pub attempt: u32,
    /// Wall-clock ms since the Unix epoch (as the device's clock had it).
    pub started_at_ms: u64,
    pub ended_at_ms: u64,
    pub reason: StopReason,
    /// Exit of the essential container that ended the run.
    pub exit: Option<ExitInfo>,
    /// Why the run could not start, if it could not.
    pub failure: Option<String>,
}

/// A bound a decoded message broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundError {
    /// Dotted path of the offending field, e.g. `tasks[0].containers[1].environment`.
    pub field: String,
    pub what: String,
}

impl core::fmt::Display for BoundError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.field, self.what)
    }
}

fn bound_err(field: impl Into<String>, what: impl Into<String>) -> BoundError {
    BoundError {
        field: field.into(),
        what: what.into(),
    }
}

fn check_len(field: &str, n: usize, max: usize) -> Result<(), BoundError> {
    if n > max {
        Err(bound_err(
            field,
            alloc::format!("{n} entries, at most {max} allowed"),
        ))
    } else {
        Ok(())
    }
}

fn check_str(field: &str, s: &str, max: usize) -> Result<(), BoundError> {
    if s.len() > max {
        Err(bound_err(
            field,
            alloc::format!("{} bytes long, at most {max} allowed", s.len()),
        ))
    } else if s.contains('\0') {
        Err(bound_err(field, "contains a NUL byte"))
    } else {
        Ok(())
    }
}

impl TaskDefinition {
    /// Checks the bounds and invariants that the types alone can't express.
    pub fn validate(&self) -> Result<(), BoundError> {
        if self.containers.is_empty() {
            return Err(bound_err(
                "containerDefinitions",
                "a task needs at least one container",
            ));
        }
        check_len(
            "containerDefinitions",
            self.containers.len(),
            MAX_CONTAINERS,
        )?;
        if !self.containers.iter().any(|c| c.essential) {
            return Err(bound_err(
                "containerDefinitions",
                "at least one container must be essential",
            ));
        }
        for (i, c) in self.containers.iter().enumerate() {
            let at = |f: &str| alloc::format!("containerDefinitions[{i}].{f}");
            if self.containers[..i].iter().any(|o| o.name == c.name) {
                return Err(bound_err(
                    at("name"),
                    alloc::format!("duplicate container name {}", c.name),
                ));
            }
            if c.image.is_empty() {
                return Err(bound_err(at("image"), "is empty"));
            }
            check_str(&at("image"), &c.image, MAX_IMAGE_REF)?;
            check_len(
                &at("command"),
                c.entry_point.len() + c.command.len(),
                MAX_ARGS,
            )?;
            for a in c.entry_point.iter() {
                check_str(&at("entryPoint"), a, MAX_STRING)?;
            }
            for a in c.command.iter() {
                check_str(&at("command"), a, MAX_STRING)?;
            }
            check_len(&at("environment"), c.environment.len(), MAX_ENV)?;
            for e in c.environment.iter() {
                if e.name.is_empty() || e.name.contains('=') {
                    return Err(bound_err(
                        at("environment"),
                        alloc::format!("invalid variable name {:?}", e.name),
                    ));
                }
                check_str(&at("environment"), &e.name, MAX_STRING)?;
                check_str(&at("environment"), &e.value, MAX_STRING)?;
            }
            check_len(&at("secrets"), c.secrets.len(), MAX_ENV)?;
            for (j, s) in c.secrets.iter().enumerate() {
                if s.name.is_empty() || s.name.contains('=') {
                    return Err(bound_err(
                        at("secrets"),
                        alloc::format!("invalid variable name {:?}", s.name),
                    ));
                }
                check_str(&at("secrets"), &s.name, MAX_STRING)?;
                check_str(&at("secrets"), &s.sealed, MAX_STRING)?;
                if let Err(why) = secret_file(&s.name) {
                    return Err(bound_err(
                        at("secrets"),
                        alloc::format!("{}: {why}", s.name),
                    ));
                }
                if !s.sealed.starts_with(SEALED_PREFIX) {
                    return Err(bound_err(
                        at("secrets"),
                        alloc::format!("{}: valueFrom is not a sealed value", s.name),
                    ));
                }
                let dup = c.secrets[..j].iter().any(|o| o.name == s.name)
                    || c.environment.iter().any(|e| e.name == s.name);
                if dup {
                    return Err(bound_err(
                        at("secrets"),
                        alloc::format!("{} is set twice", s.name),
                    ));
                }
            }
            if let Some(w) = &c.working_directory {
                check_str(&at("workingDirectory"), w, MAX_STRING)?;
                if !w.starts_with('/') {
                    return Err(bound_err(
                        at("workingDirectory"),
                        "must be an absolute path",
                    ));
                }
            }
            if let Some(u) = &c.user {
                check_str(&at("user"), u, 256)?;
            }
            if c.memory_mib == Some(0) || c.memory_mib.is_some_and(|m| m < 4) {
                return Err(bound_err(at("memory"), "at least 4 MiB"));
            }
            if let (Some(r), Some(m)) = (c.memory_reservation_mib, c.memory_mib) {
                if r > m {
                    return Err(bound_err(at("memoryReservation"), "greater than memory"));
                }
            }
            if let Some(h) = &c.health_check {
                h.validate(&at("healthCheck"))?;
            }
            self.validate_security(i, c)?;
            if c.stop_timeout_secs.is_some_and(|s| s > 3600) {
                return Err(bound_err(at("stopTimeout"), "at most 3600 seconds"));
            }
            check_len(&at("dependsOn"), c.depends_on.len(), MAX_CONTAINERS)?;
            for d in &c.depends_on {
                let Some(target) = self.containers.iter().find(|o| o.name == d.container) else {
                    return Err(bound_err(
                        at("dependsOn"),
                        alloc::format!("no container named {} in this task", d.container),
                    ));
                };
                if target.name == c.name {
                    return Err(bound_err(
                        at("dependsOn"),
                        "a container can't depend on itself",
                    ));
                }
                match d.condition {
                    DependencyCondition::Healthy if target.health_check.is_none() => {
                        return Err(bound_err(
                            at("dependsOn"),
                            alloc::format!(
                                "HEALTHY needs a healthCheck on container {}",
                                d.container
                            ),
                        ))
                    }
                    DependencyCondition::Complete | DependencyCondition::Success
                        if target.essential =>
                    {
                        return Err(bound_err(
                            at("dependsOn"),
                            alloc::format!(
                                "container {} is essential: its exit stops the task, so nothing can wait for it to complete",
                                d.container
                            ),
                        ))
                    }
                    _ => {}
                }
            }
        }
        // Dependencies must not form a cycle: repeatedly take containers whose dependencies are
        // all taken.
        let mut taken: Vec<&Name> = Vec::new();
        while taken.len() < self.containers.len() {
            let before = taken.len();
            for c in &self.containers {
                if !taken.contains(&&c.name)
                    && c.depends_on.iter().all(|d| taken.contains(&&d.container))
                {
                    taken.push(&c.name);
                }
            }
            if taken.len() == before {
                return Err(bound_err("containerDefinitions", "dependsOn forms a cycle"));
            }
        }
        self.validate_ports()?;
        if self.memory_mib.is_some_and(|m| m < 4) {
            return Err(bound_err("memory", "at least 4 MiB"));
        }
        if self.cpu == Some(0) {
            return Err(bound_err("cpu", "must be greater than 0"));
        }
        check_len("extensions", self.extensions.len(), 8)?;
        let kinds = |f: fn(&TaskExtension) -> bool| self.extensions.iter().filter(|e| f(e)).count();
        let (schedules, batches, services) = (
            kinds(|e| matches!(e, TaskExtension::Schedule(_))),
            kinds(|e| matches!(e, TaskExtension::Batch(_))),
            kinds(|e| matches!(e, TaskExtension::Service(_))),
        );
        if schedules > 1
            || batches > 1
            || services > 1
            || kinds(|e| matches!(e, TaskExtension::Volumes(_))) > 1
        {
            return Err(bound_err(
                "extensions",
                "each of schedule, batch, service, volumes at most once",
            ));
        }
        if services == 1 && schedules + batches > 0 {
            return Err(bound_err(
                "service",
                "a service runs all the time: it cannot also have a schedule or be a batch",
            ));
        }
        for e in &self.extensions {
            match e {
                TaskExtension::Service(s) => s.validate(self.family.as_str().len())?,
                TaskExtension::Batch(b) => {
                    if b.completions == 0 || b.completions > 10_000 {
                        return Err(bound_err("batch.completions", "must be 1..=10000"));
                    }
                    if b.retries > 1000 {
                        return Err(bound_err("batch.retries", "at most 1000"));
                    }
                    if b.timeout_secs == Some(0) {
                        return Err(bound_err("batch.timeout", "must be at least 1 second"));
                    }
                }
                TaskExtension::Volumes(v) => validate_volumes(v)?,
                TaskExtension::Schedule(s) => match &s.spec {
                    ScheduleSpec::Cron {
                        expr,
                        utc_offset_minutes,
                        zone,
                    } => {
                        check_str("schedule.cron", expr, 128)?;
                        if utc_offset_minutes.unsigned_abs() > 14 * 60 {
                            return Err(bound_err("schedule.timezone", "offset beyond ±14:00"));
                        }
                        if let Some(z) = zone {
                            check_zone_name("schedule.timezone", z)?;
                        }
                    }
                    ScheduleSpec::Rate { every_secs } => {
                        if *every_secs == 0 {
                            return Err(bound_err("schedule.rate", "must be at least 1 second"));
                        }
                    }
                },
            }
        }
        Ok(())
    }
}

/// Checks a path: absolute, at most [`MAX_STRING`] bytes, no NUL, no `.` or `..` component, not
/// `/` itself.
pub fn check_abs_path(field: &str, path: &str) -> Result<(), BoundError> {
    check_str(field, path, MAX_STRING)?;
    if !path.starts_with('/') {
        return Err(bound_err(
            field,
            alloc::format!("{path:?} is not an absolute path"),
        ));
    }
    if path.split('/').any(|c| c == "." || c == "..") {
        return Err(bound_err(
            field,
            alloc::format!("{path:?} has a \".\" or \"..\" component"),
        ));
    }
    if path.trim_end_matches('/').is_empty() {
        return Err(bound_err(field, "can't be \"/\""));
    }
    Ok(())
}

fn validate_volumes(volumes: &[Volume]) -> Result<(), BoundError> {
    check_len("volumes", volumes.len(), MAX_SECURITY_ENTRIES)?;
    for (i, v) in volumes.iter().enumerate() {
        if volumes[..i].iter().any(|o| o.name == v.name) {
            return Err(bound_err(
                alloc::format!("volumes[{i}].name"),
                alloc::format!("duplicate volume name {}", v.name),
            ));
        }
        if let Some(h) = &v.host_path {
            check_abs_path(&alloc::format!("volumes[{i}].host.sourcePath"), h)?;
        }
    }
    Ok(())
}

impl TaskDefinition {
    /// The task's volumes (ECS `volumes`).
    pub fn volumes(&self) -> &[Volume] {
        self.extensions
            .iter()
            .find_map(|e| match e {
                TaskExtension::Volumes(v) => Some(v.as_slice()),
                _ => None,
            })
            .unwrap_or(&[])
    }

    fn validate_security(&self, i: usize, c: &ContainerDefinition) -> Result<(), BoundError> {
        let at = |f: &str| alloc::format!("containerDefinitions[{i}].{f}");
        let sec = &c.security;
        for (field, list) in [
            ("linuxParameters.capabilities.add", &sec.cap_add),
            ("linuxParameters.capabilities.drop", &sec.cap_drop),
        ] {
            check_len(&at(field), list.len(), CAPABILITY_NAMES.len() + 1)?;
            for (j, cap) in list.iter().enumerate() {
                let all_ok = field.ends_with("drop") && cap == "ALL";
                if !all_ok && !CAPABILITY_NAMES.contains(&cap.as_str()) {
                    return Err(bound_err(
                        alloc::format!("{}[{j}]", at(field)),
                        alloc::format!(
                            "unknown capability {cap:?} (names as in capabilities(7) without \
                             CAP_, e.g. \"NET_ADMIN\")"
                        ),
                    ));
                }
            }
        }
        check_len(
            &at("linuxParameters.devices"),
            sec.devices.len(),
            MAX_SECURITY_ENTRIES,
        )?;
        for (j, d) in sec.devices.iter().enumerate() {
            let at = |f: &str| {
                alloc::format!("containerDefinitions[{i}].linuxParameters.devices[{j}].{f}")
            };
            check_abs_path(&at("hostPath"), &d.host_path)?;
            if !d.host_path.starts_with("/dev/") {
                return Err(bound_err(at("hostPath"), "a device path is under /dev/"));
            }
            if let Some(p) = &d.container_path {
                check_abs_path(&at("containerPath"), p)?;
            }
            if !(d.read || d.write || d.mknod) {
                return Err(bound_err(
                    at("permissions"),
                    "grants nothing: give read, write or mknod",
                ));
            }
        }
        check_len(
            &at("linuxParameters.tmpfs"),
            sec.tmpfs.len(),
            MAX_SECURITY_ENTRIES,
        )?;
        for (j, t) in sec.tmpfs.iter().enumerate() {
            let at = |f: &str| {
                alloc::format!("containerDefinitions[{i}].linuxParameters.tmpfs[{j}].{f}")
            };
            check_abs_path(&at("containerPath"), &t.container_path)?;
            if t.size_mib == 0 {
                return Err(bound_err(at("size"), "must be at least 1 MiB"));
            }
            check_len(
                &at("mountOptions"),
                t.mount_options.len(),
                TMPFS_OPTIONS.len(),
            )?;
            for o in &t.mount_options {
                let mode_ok = o.strip_prefix("mode=").is_some_and(|m| {
                    !m.is_empty() && m.len() <= 4 && m.bytes().all(|b| (b'0'..=b'7').contains(&b))
                });
                if !mode_ok && !TMPFS_OPTIONS.contains(&o.as_str()) {
                    return Err(bound_err(
                        at("mountOptions"),
                        alloc::format!(
                            "unsupported option {o:?} (one of {TMPFS_OPTIONS:?} or mode=OCTAL)"
                        ),
                    ));
                }
            }
        }
        check_len(
            &at("mountPoints"),
            c.mount_points.len(),
            MAX_SECURITY_ENTRIES,
        )?;
        for (j, m) in c.mount_points.iter().enumerate() {
            let at = |f: &str| alloc::format!("containerDefinitions[{i}].mountPoints[{j}].{f}");
            check_abs_path(&at("containerPath"), &m.container_path)?;
            if !self.volumes().iter().any(|v| v.name == m.source_volume) {
                return Err(bound_err(
                    at("sourceVolume"),
                    alloc::format!(
                        "no volume named {} in the task's \"volumes\"",
                        m.source_volume
                    ),
                ));
            }
            let clash = c.mount_points[..j]
                .iter()
                .map(|o| &o.container_path)
                .chain(sec.tmpfs.iter().map(|t| &t.container_path))
                .any(|p| p.trim_end_matches('/') == m.container_path.trim_end_matches('/'));
            if clash {
                return Err(bound_err(
                    at("containerPath"),
                    alloc::format!("{} is mounted twice", m.container_path),
                ));
            }
        }
        Ok(())
    }
}

impl TaskDefinition {
    /// Port mappings: not with networkMode `none`, at most [`MAX_PORT_MAPPINGS`] in the task,
    /// ports 1..=65535, no container port or static host port twice for one protocol (the
    /// containers share one network namespace). With `host` and `awsvpc` nothing is mapped, so
    /// as in ECS a `hostPort` must equal its `containerPort` (or be absent).
    fn validate_ports(&self) -> Result<(), BoundError> {
        let mut seen: Vec<(Protocol, u16, Option<u16>)> = Vec::new();
        for (i, c) in self.containers.iter().enumerate() {
            let at = alloc::format!("containerDefinitions[{i}].portMappings");
            if c.port_mappings.is_empty() {
                continue;
            }
            let mode = match self.network_mode {
                NetworkMode::None => {
                    return Err(bound_err(
                        at,
                        "port mappings need networkMode \"bridge\", \"awsvpc\" or \"host\" \
                         (a \"none\" task has only loopback)",
                    ))
                }
                NetworkMode::Host => Some("host"),
                NetworkMode::Awsvpc => Some("awsvpc"),
                NetworkMode::Bridge => None,
            };
            if let Some(mode) = mode {
                for (j, m) in c.port_mappings.iter().enumerate() {
                    if let Some(hp) = m.host_port.filter(|&hp| hp != m.container_port) {
                        return Err(bound_err(
                            alloc::format!("{at}[{j}].hostPort"),
                            alloc::format!(
                                "{hp} differs from containerPort {}: with networkMode \"{mode}\" \
                                 nothing is mapped, the container's own port is reached (leave \
                                 hostPort out or make it {})",
                                m.container_port,
                                m.container_port
                            ),
                        ));
                    }
                }
            }
            if seen.len() + c.port_mappings.len() > MAX_PORT_MAPPINGS {
                return Err(bound_err(
                    at,
                    alloc::format!("at most {MAX_PORT_MAPPINGS} port mappings in a task"),
                ));
            }
            for (j, m) in c.port_mappings.iter().enumerate() {
                let at = alloc::format!("{at}[{j}]");
                if m.container_port == 0 {
                    return Err(bound_err(
                        alloc::format!("{at}.containerPort"),
                        "must be 1..=65535",
                    ));
                }
                if m.host_port == Some(0) {
                    return Err(bound_err(
                        alloc::format!("{at}.hostPort"),
                        "must be 1..=65535 (none for a dynamic port)",
                    ));
                }
                if seen
                    .iter()
                    .any(|(p, cp, _)| *p == m.protocol && *cp == m.container_port)
                {
                    return Err(bound_err(
                        alloc::format!("{at}.containerPort"),
                        alloc::format!(
                            "container port {} is mapped twice in this task",
                            m.container_port
                        ),
                    ));
                }
                if m.host_port.is_some()
                    && seen
                        .iter()
                        .any(|(p, _, hp)| *p == m.protocol && *hp == m.host_port)
                {
                    return Err(bound_err(
                        alloc::format!("{at}.hostPort"),
                        alloc::format!(
                            "host port {} is mapped twice in this task",
                            m.host_port.unwrap_or(0)
                        ),
                    ));
                }
                seen.push((m.protocol, m.container_port, m.host_port));
            }
        }
        Ok(())
    }
}

/// An IANA zone name: `Area/Location` of `[A-Za-z0-9_+-]` parts, no `..`, at most 64 bytes.
pub fn check_zone_name(field: &str, zone: &str) -> Result<(), BoundError> {
    let ok = !zone.is_empty()
        && zone.len() <= 64
        && zone.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(bound_err(
            field,
            alloc::format!("{zone:?} is not a time zone name like \"Europe/Berlin\""),
        ))
    }
}

impl HealthCheck {
    fn validate(&self, at: &str) -> Result<(), BoundError> {
        let field = |f: &str| alloc::format!("{at}.{f}");
        match &self.test {
            HealthTest::Cmd(args) => {
                if args.is_empty() {
                    return Err(bound_err(field("command"), "CMD needs a command"));
                }
                check_len(&field("command"), args.len(), 64)?;
                for a in args {
                    check_str(&field("command"), a, MAX_STRING)?;
                }
            }
            HealthTest::Shell(cmd) => {
                if cmd.is_empty() {
                    return Err(bound_err(field("command"), "CMD-SHELL needs a command"));
                }
                check_str(&field("command"), cmd, MAX_STRING)?;
            }
            HealthTest::Tcp(port) => {
                if *port == 0 {
                    return Err(bound_err(field("command"), "TCP port must be 1..=65535"));
                }
            }
        }
        let range = |f: &str, v: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(bound_err(
                    field(f),
                    alloc::format!("{v} is outside {lo}..={hi}"),
                ))
            }
        };
        range("interval", self.interval_secs, 1, 300)?;
        range("timeout", self.timeout_secs, 1, 60)?;
        range("retries", self.retries, 1, 10)?;
        range("startPeriod", self.start_period_secs, 0, 300)?;
        if self.timeout_secs > self.interval_secs {
            return Err(bound_err(field("timeout"), "longer than the interval"));
        }
        Ok(())
    }
}

impl Service {
    fn validate(&self, family_len: usize) -> Result<(), BoundError> {
        if family_len > MAX_SERVICE_FAMILY {
            return Err(bound_err(
                "family",
                alloc::format!(
                    "a service's family is at most {MAX_SERVICE_FAMILY} characters (its tasks \
                     are named family.N)"
                ),
            ));
        }
        if self.desired_count > MAX_SERVICE_TASKS {
            return Err(bound_err(
                "service.desiredCount",
                alloc::format!("at most {MAX_SERVICE_TASKS}"),
            ));
        }
        if self.min_healthy_percent > 100 {
            return Err(bound_err(
                "service.deploymentConfiguration.minimumHealthyPercent",
                "must be 0..=100",
            ));
        }
        if !(100..=200).contains(&self.max_percent) {
            return Err(bound_err(
                "service.deploymentConfiguration.maximumPercent",
                "must be 100..=200",
            ));
        }
        if self.max_percent <= self.min_healthy_percent {
            return Err(bound_err(
                "service.deploymentConfiguration",
                "maximumPercent must be greater than minimumHealthyPercent, or a rollout can't \
                 make progress",
            ));
        }
        if self.health_grace_secs > 3600 {
            return Err(bound_err(
                "service.healthCheckGracePeriodSeconds",
                "at most 3600",
            ));
        }
        let Some(a) = &self.scaling else {
            return Ok(());
        };
        let at = |f: &str| alloc::format!("service.autoScaling.{f}");
        if a.min > a.max || a.max > MAX_SERVICE_TASKS {
            return Err(bound_err(
                at("maxCapacity"),
                alloc::format!("need minCapacity <= maxCapacity <= {MAX_SERVICE_TASKS}"),
            ));
        }
        check_len(
            &at("targetTracking"),
            a.target_tracking.len(),
            MAX_SCALING_POLICIES,
        )?;
        check_len(&at("stepScaling"), a.step.len(), MAX_SCALING_POLICIES)?;
        check_len(
            &at("scheduledActions"),
            a.scheduled.len(),
            MAX_SCALING_POLICIES,
        )?;
        for t in &a.target_tracking {
            if !(1..=100).contains(&t.target_percent) {
                return Err(bound_err(
                    at("targetTracking.targetValue"),
                    "must be 1..=100",
                ));
            }
            if t.scale_in_cooldown_secs > 86_400 || t.scale_out_cooldown_secs > 86_400 {
                return Err(bound_err(at("targetTracking"), "cooldowns at most 86400 s"));
            }
        }
        for s in &a.step {
            if s.steps.is_empty() {
                return Err(bound_err(
                    at("stepScaling.stepAdjustments"),
                    "at least one step",
                ));
            }
            check_len(&at("stepScaling.stepAdjustments"), s.steps.len(), 16)?;
            if s.threshold_percent > 1000 || s.cooldown_secs > 86_400 {
                return Err(bound_err(
                    at("stepScaling"),
                    "threshold at most 1000 %, cooldown at most 86400 s",
                ));
            }
            for st in &s.steps {
                if let (Some(l), Some(u)) = (st.lower, st.upper) {
                    if l >= u {
                        return Err(bound_err(
                            at("stepScaling.stepAdjustments"),
                            "lower bound must be below the upper bound",
                        ));
                    }
                }
                if st.change.unsigned_abs() > MAX_SERVICE_TASKS {
                    return Err(bound_err(
                        at("stepScaling.stepAdjustments.scalingAdjustment"),
                        alloc::format!("at most ±{MAX_SERVICE_TASKS}"),
                    ));
                }
            }
        }
        for s in &a.scheduled {
            check_str(&at("scheduledActions.schedule"), &s.cron, 128)?;
            if s.utc_offset_minutes.unsigned_abs() > 14 * 60 {
                return Err(bound_err(
                    at("scheduledActions.timezone"),
                    "offset beyond ±14:00",
                ));
            }
            if let Some(z) = &s.zone {
                check_zone_name(&at("scheduledActions.timezone"), z)?;
            }
            if s.min > s.max || s.max > MAX_SERVICE_TASKS {
                return Err(bound_err(
                    at("scheduledActions"),
                    alloc::format!("need minCapacity <= maxCapacity <= {MAX_SERVICE_TASKS}"),
                ));
            }
        }
        Ok(())
    }
}

impl DesiredState {
    /// Bounds of the whole document and of every task in it.
    pub fn validate(&self) -> Result<(), BoundError> {
        check_len("tasks", self.tasks.len(), MAX_TASKS)?;
        for (i, t) in self.tasks.iter().enumerate() {
            if self.tasks[..i].iter().any(|o| o.family == t.family) {
                return Err(bound_err(
                    alloc::format!("tasks[{i}].family"),
                    alloc::format!("duplicate family {}", t.family),
                ));
            }
            t.validate().map_err(|e| BoundError {
                field: alloc::format!("tasks[{i}] ({}).{}", t.family, e.field),
                what: e.what,
            })?;
        }
        Ok(())
    }
}
