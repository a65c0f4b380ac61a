//! ECS task-definition JSON → [`TaskDefinition`], and back.
//!
//! Users write task definitions in Amazon ECS's JSON: what `aws ecs register-task-definition
//! --cli-input-json` takes and what `aws ecs describe-task-definition` prints (the whole
//! `{"taskDefinition": {...}, "tags": [...]}` answer is unwrapped). skiff reads the fields it
//! supports and refuses the rest *by name*, with their JSON path, so a definition never runs
//! with a setting silently dropped. `docs/task-definition.md` is the user-facing reference.
//!
//! Every key of an object falls in one of these classes:
//! - **supported**: read, type-checked and mapped onto [`TaskDefinition`];
//! - **read-only**: what `describe-task-definition` adds (`taskDefinitionArn`, `status`,
//!   `registeredAt`, ...): accepted and ignored, as they say nothing about how to run the task;
//! - **checked**: ECS keys accepted only with values skiff honours (`runtimePlatform` for Linux,
//!   `requiresCompatibilities` of `EC2` / `EXTERNAL`) or that never change behaviour (`tags`);
//! - **unsupported ECS keys**: accepted only when empty (`null`, `false`, `""`, `[]`, or an object
//!   of such), the way `describe-task-definition` prints unset fields; any other value is
//!   refused with [`TaskDefError::Unsupported`];
//! - **unknown**: not an ECS key at all (usually a typo such as `imagee`): always refused, even
//!   when empty, with a "did you mean" hint.
//!
//! `null` is "absent" for every known key. The input is bounded ([`MAX_INPUT`]) before
//! it is parsed, duplicate keys are refused (JSON parsers disagree on which one wins), and the
//! result always passes [`TaskDefinition::validate`].

mod security;

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use skiff_proto::limits::{MAX_CONTAINERS, MAX_SERVICE_TASKS};
use skiff_proto::{
    AutoScaling, Batch, BoundError, CircuitBreaker, ContainerDefinition, ContainerDependency,
    DependencyCondition, EnvVar, HealthCheck, HealthTest, MissedRunPolicy, Name, NetworkMode,
    OverlapPolicy, PortMapping, Protocol, RestartPolicy, ScalingMetric, Schedule, ScheduleSpec,
    ScheduledScaling, Secret, Service, StepAdjustment, StepScaling, TargetTracking, TaskDefinition,
    TaskExtension,
};

/// Largest task-definition JSON accepted. A whole desired-state document must fit in one
/// 128 KiB MQTT message, so one definition gets half of that at most.
pub const MAX_INPUT: usize = 64 * 1024;

/// Longest key or string quoted back in an error message, so messages stay small enough for an
/// MQTT event or reply however long the offending input is.
const MAX_QUOTED: usize = 64;

/// Why a task-definition JSON was refused. `Display` is `<json path>: <problem>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskDefError {
    /// The input is larger than [`MAX_INPUT`]; it was not parsed.
    #[error("task definition is {len} bytes, at most {max} allowed")]
    TooLarge { len: usize, max: usize },
    /// Not JSON (or a duplicate key, or a nesting deeper than the parser allows).
    #[error("invalid JSON at line {line} column {column}: {reason}")]
    Json {
        line: usize,
        column: usize,
        reason: String,
    },
    /// A key that ECS task definitions don't have (a typo, most of the time).
    #[error("{path}: unknown field{}", hint_suffix(.hint.as_deref()))]
    UnknownField { path: String, hint: Option<String> },
    /// A real ECS key skiff does not implement, set to a value that would change behaviour.
    #[error("{path}: not supported by skiff{}", hint_suffix(*.why))]
    Unsupported {
        path: String,
        why: Option<&'static str>,
    },
    /// A supported key with a wrong type or value, or a definition that breaks a bound of
    /// [`TaskDefinition::validate`].
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
}

impl TaskDefError {
    /// The JSON path of the offending field (`containerDefinitions[0].privileged`), when the
    /// error is about one field.
    pub fn path(&self) -> Option<&str> {
        match self {
            TaskDefError::TooLarge { .. } | TaskDefError::Json { .. } => None,
            TaskDefError::UnknownField { path, .. }
            | TaskDefError::Unsupported { path, .. }
            | TaskDefError::Invalid { path, .. } => Some(path),
        }
    }
}

fn hint_suffix(hint: Option<&str>) -> String {
    hint.map(|h| format!(" ({h})")).unwrap_or_default()
}

fn invalid(path: &str, problem: impl Into<String>) -> TaskDefError {
    TaskDefError::Invalid {
        path: shown_path(path),
        problem: problem.into(),
    }
}

/// Parses an ECS task definition (or a `describe-task-definition` answer) into skiff's
/// [`TaskDefinition`], refusing by name every field skiff would not honour. The result has
/// passed [`TaskDefinition::validate`].
pub fn parse_task_definition(json: &[u8]) -> Result<TaskDefinition, TaskDefError> {
    if json.len() > MAX_INPUT {
        return Err(TaskDefError::TooLarge {
            len: json.len(),
            max: MAX_INPUT,
        });
    }
    // Editors on some systems write a UTF-8 byte-order mark; it carries no meaning.
    let json = json.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(json);
    let root = parse_json(json)?;
    task_definition_from_value(&root)
}

/// Reads and parses one task-definition file (`skiff task validate`, `skiff ctl`, local mode).
/// The error is the console message, `<file>: <json path>: <problem>`. At most [`MAX_INPUT`]
/// bytes are read, whatever the file's size.
pub fn read_task_file(path: &Path) -> Result<TaskDefinition, String> {
    let shown = path.display();
    let file = File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let limit = u64::try_from(MAX_INPUT)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut bytes = Vec::new();
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{shown}: {e}"))?;
    if bytes.len() > MAX_INPUT {
        return Err(format!(
            "{shown}: task definition is larger than {MAX_INPUT} bytes, the limit"
        ));
    }
    parse_task_definition(&bytes).map_err(|e| format!("{shown}: {e}"))
}

/// Like [`parse_task_definition`], for JSON that is already parsed (a definition embedded in a
/// larger document). The size bound and the duplicate-key check are the caller's business here.
pub fn task_definition_from_value(root: &Value) -> Result<TaskDefinition, TaskDefError> {
    let obj = root.as_object().ok_or_else(|| {
        invalid(
            "",
            format!(
                "expected a JSON object (an ECS task definition), got {}",
                got(root)
            ),
        )
    })?;
    if obj.contains_key("taskDefinition") {
        // `aws ecs describe-task-definition` / `register-task-definition` output.
        let mut inner = None;
        for (k, v) in obj {
            match k.as_str() {
                "taskDefinition" => inner = Some(v),
                "tags" => check_tags(v, "tags")?,
                _ => return Err(unknown(k, k, &["taskDefinition", "tags"], &[], "")),
            }
        }
        let inner = inner.unwrap_or(&Value::Null);
        let task = inner.as_object().ok_or_else(|| {
            invalid(
                "taskDefinition",
                format!("expected an object, got {}", got(inner)),
            )
        })?;
        parse_task(task, "taskDefinition")
    } else {
        parse_task(obj, "")
    }
}

/// The definition back as ECS JSON, with only the fields skiff has (plus skiff's task-level
/// `restartPolicy`). Task `cpu` and `memory` are strings, as `describe-task-definition` prints
/// them. For every definition `d` that [`parse_task_definition`] returns,
/// `parse(to_ecs_json(d)) == d`.
pub fn to_ecs_json(def: &TaskDefinition) -> Value {
    let mut t = Map::new();
    t.insert("family".into(), def.family.as_str().into());
    if def.revision != 0 {
        t.insert("revision".into(), def.revision.into());
    }
    let mut containers: Vec<Value> = def.containers.iter().map(container_to_json).collect();
    if matches!(def.network_mode, NetworkMode::Host | NetworkMode::Awsvpc) {
        // Nothing is mapped: ECS writes the container's own port as hostPort.
        for m in containers
            .iter_mut()
            .filter_map(|c| c.get_mut("portMappings").and_then(Value::as_array_mut))
            .flatten()
        {
            if let Some(cp) = m.get("containerPort").cloned() {
                m["hostPort"] = cp;
            }
        }
    }
    t.insert("containerDefinitions".into(), Value::Array(containers));
    if let Some(cpu) = def.cpu {
        t.insert("cpu".into(), cpu.to_string().into());
    }
    if let Some(mem) = def.memory_mib {
        t.insert("memory".into(), mem.to_string().into());
    }
    t.insert(
        "networkMode".into(),
        network_mode_str(def.network_mode).into(),
    );
    t.insert(
        "restartPolicy".into(),
        restart_policy_str(def.restart_policy).into(),
    );
    for e in &def.extensions {
        match e {
            TaskExtension::Service(svc) => {
                t.insert("service".into(), service_to_json(svc));
            }
            TaskExtension::Batch(b) => {
                let mut o = Map::new();
                o.insert("completions".into(), b.completions.into());
                o.insert("retries".into(), b.retries.into());
                if let Some(t) = b.timeout_secs {
                    o.insert("timeout".into(), t.into());
                }
                t.insert("batch".into(), Value::Object(o));
            }
            TaskExtension::Schedule(sch) => {
                let mut o = Map::new();
                match &sch.spec {
                    ScheduleSpec::Cron {
                        expr,
                        utc_offset_minutes,
                        zone,
                    } => {
                        o.insert("cron".into(), expr.as_str().into());
                        o.insert(
                            "timezone".into(),
                            timezone_str(*utc_offset_minutes, zone.as_deref()).into(),
                        );
                    }
                    ScheduleSpec::Rate { every_secs } => {
                        o.insert("rate".into(), (*every_secs).into());
                    }
                }
                let overlap = match sch.overlap {
                    OverlapPolicy::Forbid => "forbid",
                    OverlapPolicy::Replace => "replace",
                    OverlapPolicy::Allow => "allow",
                };
                let missed = match sch.missed {
                    MissedRunPolicy::Skip => "skip",
                    MissedRunPolicy::RunOnce => "run-once",
                };
                o.insert("overlapPolicy".into(), overlap.into());
                o.insert("missedRunPolicy".into(), missed.into());
                t.insert("schedule".into(), Value::Object(o));
            }
            TaskExtension::Volumes(v) => {
                t.insert("volumes".into(), security::volumes_to_json(v));
            }
        }
    }
    Value::Object(t)
}

fn container_to_json(c: &ContainerDefinition) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), c.name.as_str().into());
    o.insert("image".into(), c.image.as_str().into());
    o.insert("essential".into(), c.essential.into());
    if !c.entry_point.is_empty() {
        o.insert("entryPoint".into(), c.entry_point.clone().into());
    }
    if !c.command.is_empty() {
        o.insert("command".into(), c.command.clone().into());
    }
    if !c.environment.is_empty() {
        let env = c
            .environment
            .iter()
            .map(|e| {
                let mut kv = Map::new();
                kv.insert("name".into(), e.name.as_str().into());
                kv.insert("value".into(), e.value.as_str().into());
                Value::Object(kv)
            })
            .collect();
        o.insert("environment".into(), Value::Array(env));
    }
    if let Some(cpu) = c.cpu {
        o.insert("cpu".into(), cpu.into());
    }
    if let Some(m) = c.memory_mib {
        o.insert("memory".into(), m.into());
    }
    if let Some(m) = c.memory_reservation_mib {
        o.insert("memoryReservation".into(), m.into());
    }
    if let Some(w) = &c.working_directory {
        o.insert("workingDirectory".into(), w.as_str().into());
    }
    if let Some(u) = &c.user {
        o.insert("user".into(), u.as_str().into());
    }
    if let Some(h) = &c.health_check {
        let command: Vec<Value> = match &h.test {
            HealthTest::Cmd(args) => std::iter::once("CMD")
                .chain(args.iter().map(String::as_str))
                .map(Value::from)
                .collect(),
            HealthTest::Shell(cmd) => vec!["CMD-SHELL".into(), cmd.as_str().into()],
            HealthTest::Tcp(port) => vec!["TCP".into(), port.to_string().into()],
        };
        let mut hc = Map::new();
        hc.insert("command".into(), Value::Array(command));
        hc.insert("interval".into(), h.interval_secs.into());
        hc.insert("timeout".into(), h.timeout_secs.into());
        hc.insert("retries".into(), h.retries.into());
        hc.insert("startPeriod".into(), h.start_period_secs.into());
        o.insert("healthCheck".into(), Value::Object(hc));
    }
    if let Some(s) = c.stop_timeout_secs {
        o.insert("stopTimeout".into(), s.into());
    }
    if !c.depends_on.is_empty() {
        let deps = c
            .depends_on
            .iter()
            .map(|d| {
                let condition = match d.condition {
                    DependencyCondition::Start => "START",
                    DependencyCondition::Complete => "COMPLETE",
                    DependencyCondition::Success => "SUCCESS",
                    DependencyCondition::Healthy => "HEALTHY",
                };
                serde_json::json!({"containerName": d.container.as_str(), "condition": condition})
            })
            .collect();
        o.insert("dependsOn".into(), Value::Array(deps));
    }
    if !c.port_mappings.is_empty() {
        let maps = c
            .port_mappings
            .iter()
            .map(|m| {
                serde_json::json!({
                    "containerPort": m.container_port,
                    "hostPort": m.host_port.unwrap_or(0),
                    "protocol": protocol_str(m.protocol),
                })
            })
            .collect();
        o.insert("portMappings".into(), Value::Array(maps));
    }
    if !c.secrets.is_empty() {
        let secrets = c
            .secrets
            .iter()
            .map(|s| serde_json::json!({"name": s.name, "valueFrom": s.sealed}))
            .collect();
        o.insert("secrets".into(), Value::Array(secrets));
    }
    security::container_to_json(&c.security, &c.mount_points, &mut o);
    Value::Object(o)
}

/// ECS spelling of a port mapping's protocol.
pub fn protocol_str(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// `+05:30`, `-08:00`, `+00:00`.
fn utc_offset_str(minutes: i16) -> String {
    let m = i32::from(minutes);
    let sign = if m < 0 { '-' } else { '+' };
    format!("{sign}{:02}:{:02}", m.abs() / 60, m.abs() % 60)
}

fn metric_str(m: ScalingMetric) -> &'static str {
    match m {
        ScalingMetric::Cpu => "ECSServiceAverageCPUUtilization",
        ScalingMetric::Memory => "ECSServiceAverageMemoryUtilization",
    }
}

/// skiff's task-level `service`, every field written out (defaults included).
fn service_to_json(s: &Service) -> Value {
    let mut dc = Map::new();
    dc.insert("minimumHealthyPercent".into(), s.min_healthy_percent.into());
    dc.insert("maximumPercent".into(), s.max_percent.into());
    if let Some(cb) = &s.circuit_breaker {
        dc.insert(
            "deploymentCircuitBreaker".into(),
            serde_json::json!({"enable": true, "rollback": cb.rollback}),
        );
    }
    let mut o = Map::new();
    o.insert("desiredCount".into(), s.desired_count.into());
    o.insert("deploymentConfiguration".into(), Value::Object(dc));
    o.insert(
        "healthCheckGracePeriodSeconds".into(),
        s.health_grace_secs.into(),
    );
    if let Some(a) = &s.scaling {
        let mut sc = Map::new();
        sc.insert("minCapacity".into(), a.min.into());
        sc.insert("maxCapacity".into(), a.max.into());
        let tt: Vec<Value> = a
            .target_tracking
            .iter()
            .map(|t| {
                serde_json::json!({
                    "metric": metric_str(t.metric),
                    "targetValue": t.target_percent,
                    "scaleOutCooldown": t.scale_out_cooldown_secs,
                    "scaleInCooldown": t.scale_in_cooldown_secs,
                    "disableScaleIn": t.disable_scale_in,
                })
            })
            .collect();
        let step: Vec<Value> = a
            .step
            .iter()
            .map(|p| {
                let steps: Vec<Value> = p
                    .steps
                    .iter()
                    .map(|st| {
                        let mut m = Map::new();
                        if let Some(l) = st.lower {
                            m.insert("metricIntervalLowerBound".into(), l.into());
                        }
                        if let Some(u) = st.upper {
                            m.insert("metricIntervalUpperBound".into(), u.into());
                        }
                        m.insert("scalingAdjustment".into(), st.change.into());
                        Value::Object(m)
                    })
                    .collect();
                let comparison = if p.above {
                    "GreaterThanOrEqualToThreshold"
                } else {
                    "LessThanOrEqualToThreshold"
                };
                serde_json::json!({
                    "metric": metric_str(p.metric),
                    "threshold": p.threshold_percent,
                    "comparison": comparison,
                    "cooldown": p.cooldown_secs,
                    "stepAdjustments": steps,
                })
            })
            .collect();
        let scheduled: Vec<Value> = a
            .scheduled
            .iter()
            .map(|x| {
                serde_json::json!({
                    "schedule": x.cron,
                    "timezone": timezone_str(x.utc_offset_minutes, x.zone.as_deref()),
                    "minCapacity": x.min,
                    "maxCapacity": x.max,
                })
            })
            .collect();
        for (k, v) in [
            ("targetTracking", tt),
            ("stepScaling", step),
            ("scheduledActions", scheduled),
        ] {
            if !v.is_empty() {
                sc.insert(k.into(), Value::Array(v));
            }
        }
        o.insert("autoScaling".into(), Value::Object(sc));
    }
    Value::Object(o)
}

/// ECS spelling of a network mode.
pub fn network_mode_str(mode: NetworkMode) -> &'static str {
    match mode {
        NetworkMode::None => "none",
        NetworkMode::Host => "host",
        NetworkMode::Bridge => "bridge",
        NetworkMode::Awsvpc => "awsvpc",
    }
}

/// skiff's spelling of a restart policy in task-definition JSON.
pub fn restart_policy_str(policy: RestartPolicy) -> &'static str {
    match policy {
        RestartPolicy::Never => "never",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Always => "always",
    }
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// Task-level keys skiff reads.
const TASK_SUPPORTED: &[&str] = &[
    "family",
    "revision",
    "containerDefinitions",
    "cpu",
    "memory",
    "networkMode",
    "restartPolicy",
    "schedule",
    "batch",
    "service",
    "volumes",
];

/// Task-level ECS keys accepted when their value is one skiff honours (checked one by one).
const TASK_CHECKED: &[&str] = &["requiresCompatibilities", "runtimePlatform", "tags"];

/// What `describe-task-definition` adds; says nothing about how to run the task.
const TASK_READ_ONLY: &[&str] = &[
    "taskDefinitionArn",
    "status",
    "requiresAttributes",
    "compatibilities",
    "registeredAt",
    "registeredBy",
    "deregisteredAt",
];

/// Task-level ECS keys skiff does not implement, accepted only when empty; with why, if a
/// reason helps the user.
const TASK_UNSUPPORTED: &[(&str, Option<&str>)] = &[
    ("taskRoleArn", Some("a skiff node has no IAM roles")),
    ("executionRoleArn", Some("a skiff node has no IAM roles")),
    (
        "placementConstraints",
        Some("a desired-state document is placed on a whole cluster or on one node"),
    ),
    ("pidMode", Some("each task has its own PID namespace")),
    ("ipcMode", Some("each task has its own IPC namespace")),
    ("proxyConfiguration", None),
    ("inferenceAccelerators", None),
    (
        "ephemeralStorage",
        Some("a Fargate setting; containers use the node's storage"),
    ),
    ("enableFaultInjection", None),
];

/// Container-level keys skiff reads.
const CONTAINER_SUPPORTED: &[&str] = &[
    "name",
    "image",
    "command",
    "entryPoint",
    "environment",
    "cpu",
    "memory",
    "memoryReservation",
    "essential",
    "workingDirectory",
    "user",
    "healthCheck",
    "stopTimeout",
    "dependsOn",
    "portMappings",
    "secrets",
    "privileged",
    "readonlyRootFilesystem",
    "linuxParameters",
    "dockerSecurityOptions",
    "mountPoints",
];

const OWN_LOG: Option<&str> = Some("skiff keeps container output in its own bounded per-task log");

/// Container-level ECS keys skiff does not implement, accepted only when empty.
const CONTAINER_UNSUPPORTED: &[(&str, Option<&str>)] = &[
    (
        "links",
        Some("the containers of a task share one network namespace: they reach each other on localhost"),
    ),
    (
        "volumesFrom",
        Some("name the task's volumes in this container's \"mountPoints\""),
    ),
    (
        "environmentFiles",
        Some("list the variables in \"environment\" instead"),
    ),
    ("repositoryCredentials", None),
    ("startTimeout", None),
    ("ulimits", None),
    ("logConfiguration", OWN_LOG),
    ("firelensConfiguration", OWN_LOG),
    ("dockerLabels", None),
    ("hostname", None),
    ("dnsServers", None),
    ("dnsSearchDomains", None),
    ("extraHosts", None),
    (
        "resourceRequirements",
        Some("GPUs and accelerators are not supported"),
    ),
    ("systemControls", None),
    ("interactive", None),
    ("pseudoTerminal", None),
    (
        "disableNetworking",
        Some("use the task-level networkMode \"none\" for a task without network"),
    ),
    (
        "restartPolicy",
        Some(
            "skiff restarts whole tasks: set the task-level \"restartPolicy\" to \
             \"never\", \"on-failure\" or \"always\"",
        ),
    ),
    ("credentialSpecs", None),
    ("versionConsistency", None),
];

fn all_task_keys() -> impl Iterator<Item = &'static str> {
    TASK_SUPPORTED
        .iter()
        .chain(TASK_CHECKED)
        .chain(TASK_READ_ONLY)
        .copied()
        .chain(TASK_UNSUPPORTED.iter().map(|(k, _)| *k))
}

fn all_container_keys() -> impl Iterator<Item = &'static str> {
    CONTAINER_SUPPORTED
        .iter()
        .copied()
        .chain(CONTAINER_UNSUPPORTED.iter().map(|(k, _)| *k))
}

/// Builds the "unknown field" error for `key` at `path`, with a hint: the nearest known key of
/// this level, or the level where the key belongs.
fn unknown(
    path: &str,
    key: &str,
    here: &[&'static str],
    elsewhere: &[&'static str],
    elsewhere_is: &str,
) -> TaskDefError {
    let hint = if let Some(near) = nearest(key, here) {
        Some(format!("did you mean {near:?}?"))
    } else if elsewhere.contains(&key) {
        Some(elsewhere_is.to_string())
    } else {
        None
    };
    TaskDefError::UnknownField {
        path: shown_path(path),
        hint,
    }
}

fn unknown_task_key(path: &str, key: &str) -> TaskDefError {
    let here: Vec<&'static str> = all_task_keys().collect();
    let elsewhere: Vec<&'static str> = all_container_keys().collect();
    unknown(
        path,
        key,
        &here,
        &elsewhere,
        "a container field: it belongs in an entry of containerDefinitions",
    )
}

fn unknown_container_key(path: &str, key: &str) -> TaskDefError {
    let here: Vec<&'static str> = all_container_keys().collect();
    let elsewhere: Vec<&'static str> = all_task_keys().collect();
    unknown(
        path,
        key,
        &here,
        &elsewhere,
        "a task-level field: it belongs next to containerDefinitions",
    )
}

/// The closest candidate within a small edit distance (case-insensitive), if any.
fn nearest(key: &str, candidates: &[&'static str]) -> Option<&'static str> {
    if key.len() > MAX_QUOTED {
        return None;
    }
    let key = key.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&key, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= 2 && *d < c.len().div_ceil(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance (inputs are short: keys of at most [`MAX_QUOTED`] bytes).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Empty the way ECS prints an unset field: `null`, `false`, `""`, `[]`, or an object whose
/// values are all empty (`{"enabled": false}`, `{"capabilities": {}}`). Numbers never are:
/// no unsupported ECS number means "unset" at 0 (`stopTimeout: 0` would kill at once).
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(_) => false,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
    }
}

// ---------------------------------------------------------------------------------------------
// Task and containers
// ---------------------------------------------------------------------------------------------

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

fn parse_task(obj: &Map<String, Value>, base: &str) -> Result<TaskDefinition, TaskDefError> {
    let mut family = None;
    let mut revision = 0;
    let mut containers = None;
    let mut cpu = None;
    let mut memory_mib = None;
    let mut network_mode = NetworkMode::None;
    let mut restart_policy = RestartPolicy::Never;
    let mut extensions = Vec::new();

    for (key, v) in obj {
        let path = join(base, key);
        let k = key.as_str();
        if TASK_SUPPORTED.contains(&k) || TASK_CHECKED.contains(&k) {
            if v.is_null() {
                continue;
            }
            match k {
                "family" => family = Some(name(v, &path)?),
                "revision" => revision = number_u32(v, &path, "a revision number")?,
                "containerDefinitions" => containers = Some(parse_containers(v, &path)?),
                "cpu" => cpu = Some(task_cpu(v, &path)?),
                "memory" => memory_mib = Some(task_memory(v, &path)?),
                "networkMode" => network_mode = parse_network_mode(v, &path)?,
                "restartPolicy" => restart_policy = parse_restart_policy(v, &path)?,
                "schedule" => extensions.push(TaskExtension::Schedule(parse_schedule(v, &path)?)),
                "batch" => extensions.push(TaskExtension::Batch(parse_batch(v, &path)?)),
                "service" => extensions.push(TaskExtension::Service(parse_service(v, &path)?)),
                "volumes" => {
                    let volumes = security::volumes(v, &path)?;
                    if !volumes.is_empty() {
                        extensions.push(TaskExtension::Volumes(volumes));
                    }
                }
                "requiresCompatibilities" => check_compatibilities(v, &path)?,
                "runtimePlatform" => check_runtime_platform(v, &path)?,
                _ => check_tags(v, &path)?,
            }
        } else if TASK_READ_ONLY.contains(&k) {
            // describe-task-definition output: nothing to act on.
        } else if let Some((_, why)) = TASK_UNSUPPORTED.iter().find(|(n, _)| *n == k) {
            if !is_empty(v) {
                return Err(TaskDefError::Unsupported { path, why: *why });
            }
        } else {
            return Err(unknown_task_key(&path, k));
        }
    }

    let family = family.ok_or_else(|| {
        invalid(
            &join(base, "family"),
            "missing; a task definition needs a family",
        )
    })?;
    let containers = containers.ok_or_else(|| {
        invalid(
            &join(base, "containerDefinitions"),
            "missing; a task needs at least one container",
        )
    })?;
    let has = |f: fn(&TaskExtension) -> bool| extensions.iter().any(f);
    if has(|e| matches!(e, TaskExtension::Service(_))) {
        for (other, given) in [
            ("schedule", has(|e| matches!(e, TaskExtension::Schedule(_)))),
            ("batch", has(|e| matches!(e, TaskExtension::Batch(_)))),
        ] {
            if given {
                return Err(invalid(
                    &join(base, "service"),
                    format!(
                        "a service runs all the time: it cannot have a \"{other}\" too \
                         (remove \"service\" or \"{other}\")"
                    ),
                ));
            }
        }
    }
    let mut def = TaskDefinition {
        family,
        revision,
        containers,
        cpu,
        memory_mib,
        network_mode,
        restart_policy,
        extensions,
    };
    def.validate().map_err(|e| bound_error(base, e))?;
    if matches!(network_mode, NetworkMode::Host | NetworkMode::Awsvpc) {
        // hostPort equal to containerPort (checked above) says nothing more than none.
        for m in def.containers.iter_mut().flat_map(|c| &mut c.port_mappings) {
            m.host_port = None;
        }
    }
    Ok(def)
}

fn bound_error(base: &str, e: BoundError) -> TaskDefError {
    invalid(&join(base, &e.field), e.what)
}

fn parse_containers(v: &Value, path: &str) -> Result<Vec<ContainerDefinition>, TaskDefError> {
    let arr = v.as_array().ok_or_else(|| {
        invalid(
            path,
            format!("expected an array of container definitions, got {}", got(v)),
        )
    })?;
    if arr.len() > MAX_CONTAINERS {
        return Err(invalid(
            path,
            format!("{} entries, at most {MAX_CONTAINERS} allowed", arr.len()),
        ));
    }
    arr.iter()
        .enumerate()
        .map(|(i, c)| parse_container(c, &format!("{path}[{i}]")))
        .collect()
}

fn parse_container(v: &Value, base: &str) -> Result<ContainerDefinition, TaskDefError> {
    let obj = v.as_object().ok_or_else(|| {
        invalid(
            base,
            format!("expected a container definition object, got {}", got(v)),
        )
    })?;
    let mut name_ = None;
    let mut image = None;
    let mut entry_point = Vec::new();
    let mut command = Vec::new();
    let mut env = Vec::new();
    let mut cpu = None;
    let mut memory_mib = None;
    let mut memory_reservation_mib = None;
    let mut essential = true;
    let mut working_directory = None;
    let mut user = None;
    let mut health_check = None;
    let mut stop_timeout_secs = None;
    let mut depends_on = Vec::new();
    let mut port_mappings = Vec::new();
    let mut secrets = Vec::new();
    let mut security = skiff_proto::ContainerSecurity::default();
    let mut mount_points = Vec::new();
    for (key, v) in obj {
        let path = join(base, key);
        let k = key.as_str();
        if CONTAINER_SUPPORTED.contains(&k) {
            if v.is_null() {
                continue;
            }
            match k {
                "name" => name_ = Some(name(v, &path)?),
                "image" => image = Some(string(v, &path)?.to_string()),
                "command" => command = strings(v, &path)?,
                "entryPoint" => entry_point = strings(v, &path)?,
                "environment" => env = environment(v, &path)?,
                // ECS prints `"cpu": 0` for a container without a CPU share.
                "cpu" => {
                    cpu = Some(number_u32(v, &path, "a number of CPU units")?).filter(|&n| n > 0)
                }
                "memory" => memory_mib = Some(number_u32(v, &path, "a number of MiB")?),
                "memoryReservation" => {
                    memory_reservation_mib = Some(number_u32(v, &path, "a number of MiB")?)
                }
                "essential" => essential = boolean(v, &path)?,
                "workingDirectory" => working_directory = optional_string(v, &path)?,
                "healthCheck" => health_check = Some(parse_health_check(v, &path)?),
                "stopTimeout" => {
                    stop_timeout_secs = Some(number_u32(v, &path, "a number of seconds")?)
                }
                "dependsOn" => depends_on = parse_depends_on(v, &path)?,
                "portMappings" => port_mappings = parse_port_mappings(v, &path)?,
                "secrets" => secrets = parse_secrets(v, &path)?,
                "mountPoints" => mount_points = security::mount_points(v, &path)?,
                "user" => user = optional_string(v, &path)?,
                _ => {
                    if !security::container_key(k, v, &path, &mut security)? {
                        return Err(unknown_container_key(&path, k));
                    }
                }
            }
        } else if let Some((_, why)) = CONTAINER_UNSUPPORTED.iter().find(|(n, _)| *n == k) {
            if !is_empty(v) {
                return Err(TaskDefError::Unsupported { path, why: *why });
            }
        } else {
            return Err(unknown_container_key(&path, k));
        }
    }
    let name = name_
        .ok_or_else(|| invalid(&join(base, "name"), "missing; every container needs a name"))?;
    let image = image.ok_or_else(|| {
        invalid(
            &join(base, "image"),
            "missing; every container needs an image",
        )
    })?;
    Ok(ContainerDefinition {
        name,
        image,
        entry_point,
        command,
        environment: env,
        cpu,
        memory_mib,
        memory_reservation_mib,
        essential,
        working_directory,
        user,
        health_check,
        stop_timeout_secs,
        depends_on,
        port_mappings,
        secrets,
        security,
        mount_points,
    })
}

/// ECS `portMappings` entry keys skiff does not implement, accepted only when empty.
const PORT_MAPPING_UNSUPPORTED: &[&str] = &["name", "appProtocol", "containerPortRange"];

/// ECS `portMappings`: `[{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}]`; `hostPort`
/// 0 or absent is a dynamic port from the agent's ephemeral range, as ECS does in bridge mode;
/// with `awsvpc` and `host` nothing is mapped and a `hostPort` must equal its `containerPort`
/// (checked with the task's mode, then dropped).
fn parse_port_mappings(v: &Value, path: &str) -> Result<Vec<PortMapping>, TaskDefError> {
    let arr = v.as_array().ok_or_else(|| {
        invalid(
            path,
            format!(
                "expected an array of {{containerPort, hostPort, protocol}}, got {}",
                got(v)
            ),
        )
    })?;
    let max = skiff_proto::limits::MAX_PORT_MAPPINGS;
    if arr.len() > max {
        return Err(invalid(
            path,
            format!("{} entries, at most {max} allowed", arr.len()),
        ));
    }
    let port = |v: &Value, p: &str, zero_ok: bool| -> Result<u16, TaskDefError> {
        let n = number_u32(v, p, "a port number")?;
        match u16::try_from(n) {
            Ok(0) if !zero_ok => Err(invalid(p, "0 is not a port: use 1..=65535")),
            Ok(port) => Ok(port),
            Err(_) => Err(invalid(p, format!("{n} is not a port: use 1..=65535"))),
        }
    };
    let mut out = Vec::with_capacity(arr.len());
    for (i, m) in arr.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let obj = m.as_object().ok_or_else(|| {
            invalid(
                &at,
                format!(
                    "expected {{containerPort, hostPort, protocol}}, got {}",
                    got(m)
                ),
            )
        })?;
        let mut container_port = None;
        let mut host_port = None;
        let mut protocol = Protocol::Tcp;
        for (k, x) in obj {
            let p = join(&at, k);
            match k.as_str() {
                _ if x.is_null() => {}
                "containerPort" => container_port = Some(port(x, &p, false)?),
                "hostPort" => host_port = Some(port(x, &p, true)?).filter(|&hp| hp != 0),
                "protocol" => {
                    protocol = match string(x, &p)? {
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        other => {
                            return Err(invalid(
                                &p,
                                format!("expected \"tcp\" or \"udp\", got {}", quoted(other)),
                            ))
                        }
                    }
                }
                k if PORT_MAPPING_UNSUPPORTED.contains(&k) => {
                    if !is_empty(x) {
                        return Err(TaskDefError::Unsupported {
                            path: shown_path(&p),
                            why: Some("a Service Connect setting; skiff maps ports only"),
                        });
                    }
                }
                _ => {
                    return Err(unknown(
                        &p,
                        k,
                        &["containerPort", "hostPort", "protocol"],
                        &[],
                        "",
                    ))
                }
            }
        }
        out.push(PortMapping {
            container_port: container_port
                .ok_or_else(|| invalid(&join(&at, "containerPort"), "missing"))?,
            host_port,
            protocol,
        });
    }
    Ok(out)
}

/// ECS `dependsOn`: `[{"containerName": "db", "condition": "HEALTHY"}]`.
fn parse_depends_on(v: &Value, path: &str) -> Result<Vec<ContainerDependency>, TaskDefError> {
    let arr = v.as_array().ok_or_else(|| {
        invalid(
            path,
            format!(
                "expected an array of {{containerName, condition}}, got {}",
                got(v)
            ),
        )
    })?;
    if arr.len() > MAX_CONTAINERS {
        return Err(invalid(
            path,
            format!("{} entries, at most {MAX_CONTAINERS} allowed", arr.len()),
        ));
    }
    let mut out = Vec::with_capacity(arr.len());
    for (i, d) in arr.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let obj = d.as_object().ok_or_else(|| {
            invalid(
                &at,
                format!("expected {{containerName, condition}}, got {}", got(d)),
            )
        })?;
        let mut container = None;
        let mut condition = None;
        for (k, v) in obj {
            let p = join(&at, k);
            match k.as_str() {
                "containerName" => container = Some(name(v, &p)?),
                "condition" => {
                    condition = Some(match string(v, &p)? {
                        "START" => DependencyCondition::Start,
                        "COMPLETE" => DependencyCondition::Complete,
                        "SUCCESS" => DependencyCondition::Success,
                        "HEALTHY" => DependencyCondition::Healthy,
                        other => {
                            return Err(invalid(
                                &p,
                                format!("{other:?}: expected START, COMPLETE, SUCCESS or HEALTHY"),
                            ))
                        }
                    })
                }
                _ => {
                    return Err(invalid(
                        &p,
                        "unknown key; a dependency has containerName and condition",
                    ))
                }
            }
        }
        out.push(ContainerDependency {
            container: container.ok_or_else(|| invalid(&join(&at, "containerName"), "missing"))?,
            condition: condition.ok_or_else(|| invalid(&join(&at, "condition"), "missing"))?,
        });
    }
    Ok(out)
}

fn environment(v: &Value, path: &str) -> Result<Vec<EnvVar>, TaskDefError> {
    let arr = v.as_array().ok_or_else(|| {
        invalid(
            path,
            format!(
                "expected an array of {{\"name\": ..., \"value\": ...}} objects, got {}",
                got(v)
            ),
        )
    })?;
    let mut out: Vec<EnvVar> = Vec::with_capacity(arr.len());
    for (i, e) in arr.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let obj = e.as_object().ok_or_else(|| {
            invalid(
                &at,
                format!(
                    "expected an object {{\"name\": ..., \"value\": ...}}, got {}",
                    got(e)
                ),
            )
        })?;
        let mut name = None;
        let mut value = String::new();
        for (k, x) in obj {
            let p = join(&at, k);
            match k.as_str() {
                "name" if !x.is_null() => name = Some(string(x, &p)?.to_string()),
                "value" if !x.is_null() => value = string(x, &p)?.to_string(),
                "name" | "value" => {}
                _ => return Err(unknown(&p, k, &["name", "value"], &[], "")),
            }
        }
        let name_path = join(&at, "name");
        let name = name.ok_or_else(|| invalid(&name_path, "missing"))?;
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(invalid(
                &name_path,
                format!("invalid variable name {}", quoted(&name)),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(invalid(
                &name_path,
                format!("duplicate variable {}", quoted(&name)),
            ));
        }
        out.push(EnvVar { name, value });
    }
    Ok(out)
}

/// ECS `secrets`: `[{"name": "DB_PASSWORD", "valueFrom": "skiff-sealed:v1:..."}]`. skiff reads
/// no secret store: `valueFrom` is the value sealed to the node (`skiff ctl seal`), opened on the
/// node right before the container starts.
fn parse_secrets(v: &Value, path: &str) -> Result<Vec<Secret>, TaskDefError> {
    let arr = v.as_array().ok_or_else(|| {
        invalid(
            path,
            format!(
                "expected an array of {{\"name\": ..., \"valueFrom\": ...}} objects, got {}",
                got(v)
            ),
        )
    })?;
    let mut out: Vec<Secret> = Vec::with_capacity(arr.len());
    for (i, e) in arr.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let obj = e.as_object().ok_or_else(|| {
            invalid(
                &at,
                format!(
                    "expected an object {{\"name\": ..., \"valueFrom\": ...}}, got {}",
                    got(e)
                ),
            )
        })?;
        let (mut name, mut sealed) = (None, None);
        for (k, x) in obj {
            let p = join(&at, k);
            match k.as_str() {
                "name" => name = Some(string(x, &p)?.to_string()),
                "valueFrom" => sealed = Some(string(x, &p)?.to_string()),
                _ => return Err(unknown(&p, k, &["name", "valueFrom"], &[], "")),
            }
        }
        let name_path = join(&at, "name");
        let name = name.ok_or_else(|| invalid(&name_path, "missing"))?;
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(invalid(
                &name_path,
                format!("invalid variable name {}", quoted(&name)),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(invalid(
                &name_path,
                format!("duplicate secret {}", quoted(&name)),
            ));
        }
        let from_path = join(&at, "valueFrom");
        let sealed = sealed.ok_or_else(|| invalid(&from_path, "missing"))?;
        // Never echo the value: it may be a secret pasted in clear.
        crate::secrets::check_form(&sealed).map_err(|e| {
            let why = match e {
                crate::secrets::SealError::NotSealed => {
                    "not a sealed value: skiff reads no secret store (ARNs, parameter names); \
                     seal the value to the node with `skiff ctl seal --node NODE`"
                        .to_string()
                }
                other => other.to_string(),
            };
            invalid(&from_path, why)
        })?;
        out.push(Secret { name, sealed });
    }
    Ok(out)
}

fn parse_network_mode(v: &Value, path: &str) -> Result<NetworkMode, TaskDefError> {
    match string(v, path)? {
        "none" | "" => Ok(NetworkMode::None),
        "host" => Ok(NetworkMode::Host),
        "bridge" => Ok(NetworkMode::Bridge),
        "awsvpc" => Ok(NetworkMode::Awsvpc),
        other => Err(invalid(
            path,
            format!(
                "expected \"none\", \"host\", \"bridge\" or \"awsvpc\", got {}",
                quoted(other)
            ),
        )),
    }
}

/// skiff's `schedule`: `{"cron": "*/5 * * * *", "timezone": "UTC" | "+05:30"}` or
/// `{"rate": 30 | "30s" | "5m" | "1h"}`, with `overlapPolicy` (`forbid` default, `replace`) and
/// `missedRunPolicy` (`skip` default, `run-once`).
fn parse_schedule(v: &Value, path: &str) -> Result<Schedule, TaskDefError> {
    let obj = v.as_object().ok_or_else(|| {
        invalid(
            path,
            format!(
                "expected an object with \"cron\" or \"rate\", got {}",
                got(v)
            ),
        )
    })?;
    let mut cron = None;
    let mut offset: i16 = 0;
    let mut zone = None;
    let mut rate = None;
    let mut overlap = OverlapPolicy::Forbid;
    let mut missed = MissedRunPolicy::Skip;
    for (key, val) in obj {
        let p = join(path, key);
        let text = || {
            val.as_str()
                .ok_or_else(|| invalid(&p, format!("expected a string, got {}", got(val))))
        };
        match key.as_str() {
            "cron" => {
                let expr = text()?;
                expr.parse::<crate::core::cron::CronExpr>()
                    .map_err(|e| invalid(&p, format!("{}: {e}", quoted(expr))))?;
                cron = Some(expr.to_string());
            }
            "timezone" => (offset, zone) = parse_timezone(text()?).map_err(|e| invalid(&p, e))?,
            "rate" => {
                let secs = match val {
                    Value::Number(_) => number_u32(val, &p, "a number of seconds")?,
                    _ => parse_duration_secs(text()?).map_err(|e| invalid(&p, e))?,
                };
                if secs == 0 {
                    return Err(invalid(&p, "must be at least 1 second"));
                }
                rate = Some(secs);
            }
            "overlapPolicy" => {
                overlap = match text()? {
                    "forbid" => OverlapPolicy::Forbid,
                    "replace" => OverlapPolicy::Replace,
                    "allow" => OverlapPolicy::Allow,
                    other => {
                        return Err(invalid(
                            &p,
                            format!("expected \"forbid\", \"replace\" or \"allow\", got {other:?}"),
                        ))
                    }
                }
            }
            "missedRunPolicy" => {
                missed = match text()? {
                    "skip" => MissedRunPolicy::Skip,
                    "run-once" => MissedRunPolicy::RunOnce,
                    other => {
                        return Err(invalid(
                            &p,
                            format!("expected \"skip\" or \"run-once\", got {other:?}"),
                        ))
                    }
                }
            }
            other => return Err(invalid(&p, format!("unknown schedule field {other:?}"))),
        }
    }
    let spec = match (cron, rate) {
        (Some(expr), None) => ScheduleSpec::Cron {
            expr,
            utc_offset_minutes: offset,
            zone,
        },
        (None, Some(every_secs)) => {
            if offset != 0 || zone.is_some() {
                return Err(invalid(
                    &join(path, "timezone"),
                    "only applies to a cron schedule",
                ));
            }
            ScheduleSpec::Rate { every_secs }
        }
        (Some(_), Some(_)) => {
            return Err(invalid(path, "give either \"cron\" or \"rate\", not both"))
        }
        (None, None) => return Err(invalid(path, "needs \"cron\" or \"rate\"")),
    };
    Ok(Schedule {
        spec,
        overlap,
        missed,
    })
}

/// skiff's `batch`: `{"completions": 1, "retries": 0, "timeout": 30 | "5m"}`.
fn parse_batch(v: &Value, path: &str) -> Result<Batch, TaskDefError> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(path, format!("expected an object, got {}", got(v))))?;
    let mut b = Batch {
        completions: 1,
        retries: 0,
        timeout_secs: None,
    };
    for (key, val) in obj {
        let p = join(path, key);
        match key.as_str() {
            "completions" => b.completions = number_u32(val, &p, "a number of runs")?,
            "retries" => b.retries = number_u32(val, &p, "a number of retries")?,
            "timeout" => {
                let secs = match val {
                    Value::Number(_) => number_u32(val, &p, "a number of seconds")?,
                    Value::String(s) => parse_duration_secs(s).map_err(|e| invalid(&p, e))?,
                    _ => {
                        return Err(invalid(
                            &p,
                            format!("expected seconds or a duration, got {}", got(val)),
                        ))
                    }
                };
                b.timeout_secs = Some(secs);
            }
            other => return Err(invalid(&p, format!("unknown batch field {other:?}"))),
        }
    }
    Ok(b)
}

// ---------------------------------------------------------------------------------------------
// Health checks
// ---------------------------------------------------------------------------------------------

const HEALTH_CHECK_KEYS: &[&str] = &["command", "interval", "timeout", "retries", "startPeriod"];

/// ECS's container `healthCheck`, with ECS's defaults: interval 30 s, timeout 5 s (at most the
/// interval), 3 retries, no start period. Ranges are [`TaskDefinition::validate`]'s: skiff allows
/// intervals and timeouts down to 1 s, shorter than ECS's 5 s and 2 s.
fn parse_health_check(v: &Value, path: &str) -> Result<HealthCheck, TaskDefError> {
    let mut test = None;
    let mut interval = None;
    let mut timeout = None;
    let mut retries = 3;
    let mut start_period = 0;
    for (k, x, p) in known_fields(v, path, HEALTH_CHECK_KEYS)? {
        match k {
            "command" => test = Some(health_test(x, &p)?),
            "interval" => interval = Some(number_u32(x, &p, "a number of seconds")?),
            "timeout" => timeout = Some(number_u32(x, &p, "a number of seconds")?),
            "retries" => retries = number_u32(x, &p, "a number of retries")?,
            _ => start_period = number_u32(x, &p, "a number of seconds")?,
        }
    }
    let test = test.ok_or_else(|| {
        invalid(
            &join(path, "command"),
            "missing; e.g. [\"CMD-SHELL\", \"wget -q -O /dev/null http://localhost/ || exit 1\"]",
        )
    })?;
    let interval_secs = interval.unwrap_or(30);
    Ok(HealthCheck {
        test,
        interval_secs,
        // ECS's 5 s default would be longer than a short interval skiff allows.
        timeout_secs: timeout.unwrap_or(interval_secs.min(5)),
        retries,
        start_period_secs: start_period,
    })
}

/// `["CMD", "executable", "arg"...]`, `["CMD-SHELL", "command"]` or skiff's `["TCP", "8080"]`.
fn health_test(v: &Value, path: &str) -> Result<HealthTest, TaskDefError> {
    let args = strings(v, path)?;
    match args.split_first() {
        Some((k, rest)) if k == "CMD" => Ok(HealthTest::Cmd(rest.to_vec())),
        Some((k, [cmd])) if k == "CMD-SHELL" => Ok(HealthTest::Shell(cmd.clone())),
        Some((k, _)) if k == "CMD-SHELL" => Err(invalid(
            path,
            "CMD-SHELL takes exactly one command string (run with /bin/sh -c)",
        )),
        Some((k, [port])) if k == "TCP" => port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .map(HealthTest::Tcp)
            .ok_or_else(|| {
                invalid(
                    &format!("{path}[1]"),
                    format!("expected a port 1..=65535, got {}", quoted(port)),
                )
            }),
        Some((k, _)) if k == "TCP" => Err(invalid(
            path,
            "TCP takes exactly one port, as a string: [\"TCP\", \"8080\"]",
        )),
        Some((k, _)) if k == "NONE" => Err(invalid(
            path,
            "\"NONE\" turns a Docker image's health check off; skiff runs none unless asked: \
             leave healthCheck out",
        )),
        _ => Err(invalid(
            path,
            format!(
                "expected [\"CMD\", \"executable\", args...], [\"CMD-SHELL\", \"command\"] or \
                 skiff's [\"TCP\", \"port\"], got {}",
                args.first()
                    .map_or("an empty array".into(), |f| format!("{} first", quoted(f)))
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------------

const SERVICE_KEYS: &[&str] = &[
    "desiredCount",
    "deploymentConfiguration",
    "healthCheckGracePeriodSeconds",
    "autoScaling",
];

const DEPLOYMENT_KEYS: &[&str] = &[
    "minimumHealthyPercent",
    "maximumPercent",
    "deploymentCircuitBreaker",
    "strategy",
    "alarms",
    "bakeTimeInMinutes",
    "lifecycleHooks",
];

const AUTO_SCALING_KEYS: &[&str] = &[
    "minCapacity",
    "maxCapacity",
    "targetTracking",
    "stepScaling",
    "scheduledActions",
];

const TARGET_TRACKING_KEYS: &[&str] = &[
    "metric",
    "targetValue",
    "scaleOutCooldown",
    "scaleInCooldown",
    "disableScaleIn",
];

const STEP_SCALING_KEYS: &[&str] = &[
    "metric",
    "threshold",
    "comparison",
    "cooldown",
    "adjustmentType",
    "stepAdjustments",
];

const STEP_KEYS: &[&str] = &[
    "metricIntervalLowerBound",
    "metricIntervalUpperBound",
    "scalingAdjustment",
];

const SCHEDULED_KEYS: &[&str] = &["schedule", "timezone", "minCapacity", "maxCapacity"];

/// Application Auto Scaling's default cooldown for ECS services, in seconds.
const DEFAULT_COOLDOWN: u32 = 300;
/// Longest cooldown (as [`TaskDefinition::validate`]).
const MAX_COOLDOWN: i64 = 86_400;

/// skiff's task-level `service`: ECS `CreateService`'s `desiredCount`,
/// `deploymentConfiguration` and `healthCheckGracePeriodSeconds`, plus `autoScaling` (the
/// Application Auto Scaling target and policies, on the device). Defaults as ECS: 1 task,
/// 100 % / 200 %, no circuit breaker, no grace period, no scaling.
fn parse_service(v: &Value, path: &str) -> Result<Service, TaskDefError> {
    let mut s = Service {
        desired_count: 1,
        min_healthy_percent: 100,
        max_percent: 200,
        circuit_breaker: None,
        health_grace_secs: 0,
        scaling: None,
    };
    for (k, x, p) in known_fields(v, path, SERVICE_KEYS)? {
        match k {
            "desiredCount" => s.desired_count = number_u32(x, &p, "a number of tasks")?,
            "deploymentConfiguration" => parse_deployment_configuration(x, &p, &mut s)?,
            "healthCheckGracePeriodSeconds" => {
                s.health_grace_secs = number_u32(x, &p, "a number of seconds")?
            }
            _ => s.scaling = Some(parse_auto_scaling(x, &p)?),
        }
    }
    Ok(s)
}

fn parse_deployment_configuration(
    v: &Value,
    path: &str,
    s: &mut Service,
) -> Result<(), TaskDefError> {
    for (k, x, p) in known_fields(v, path, DEPLOYMENT_KEYS)? {
        match k {
            "minimumHealthyPercent" => s.min_healthy_percent = number_u32(x, &p, "a percentage")?,
            "maximumPercent" => s.max_percent = number_u32(x, &p, "a percentage")?,
            "deploymentCircuitBreaker" => {
                let mut enable = false;
                let mut rollback = false;
                let mut rollback_path = String::new();
                for (k, x, p) in known_fields(x, &p, &["enable", "rollback"])? {
                    if k == "enable" {
                        enable = boolean(x, &p)?;
                    } else {
                        rollback = boolean(x, &p)?;
                        rollback_path = p;
                    }
                }
                if rollback && !enable {
                    return Err(invalid(
                        &rollback_path,
                        "only applies with \"enable\": true",
                    ));
                }
                s.circuit_breaker = enable.then_some(CircuitBreaker { rollback });
            }
            "strategy" => {
                let st = string(x, &p)?;
                if !(st.is_empty() || st == "ROLLING") {
                    return Err(TaskDefError::Unsupported {
                        path: p,
                        why: Some("skiff rolls services out in place (\"ROLLING\")"),
                    });
                }
            }
            "alarms" => {
                if !is_empty(x) {
                    return Err(TaskDefError::Unsupported {
                        path: p,
                        why: Some(
                            "CloudWatch alarms do not reach a device; use \
                             deploymentCircuitBreaker and container health checks",
                        ),
                    });
                }
            }
            _ => {
                if !is_empty(x) {
                    return Err(TaskDefError::Unsupported {
                        path: p,
                        why: Some("blue/green deployments are not supported"),
                    });
                }
            }
        }
    }
    Ok(())
}

fn parse_auto_scaling(v: &Value, path: &str) -> Result<AutoScaling, TaskDefError> {
    let mut min = None;
    let mut max = None;
    let mut a = AutoScaling {
        min: 0,
        max: 0,
        target_tracking: Vec::new(),
        step: Vec::new(),
        scheduled: Vec::new(),
    };
    for (k, x, p) in known_fields(v, path, AUTO_SCALING_KEYS)? {
        match k {
            "minCapacity" => min = Some(number_u32(x, &p, "a number of tasks")?),
            "maxCapacity" => max = Some(number_u32(x, &p, "a number of tasks")?),
            "targetTracking" => a.target_tracking = each(x, &p, parse_target_tracking)?,
            "stepScaling" => a.step = each(x, &p, parse_step_scaling)?,
            _ => a.scheduled = each(x, &p, parse_scheduled_scaling)?,
        }
    }
    a.min = min.ok_or_else(|| invalid(&join(path, "minCapacity"), "missing"))?;
    a.max = max.ok_or_else(|| invalid(&join(path, "maxCapacity"), "missing"))?;
    Ok(a)
}

fn parse_target_tracking(v: &Value, path: &str) -> Result<TargetTracking, TaskDefError> {
    let mut metric = None;
    let mut target = None;
    let mut t = TargetTracking {
        metric: ScalingMetric::Cpu,
        target_percent: 0,
        scale_out_cooldown_secs: DEFAULT_COOLDOWN,
        scale_in_cooldown_secs: DEFAULT_COOLDOWN,
        disable_scale_in: false,
    };
    for (k, x, p) in known_fields(v, path, TARGET_TRACKING_KEYS)? {
        match k {
            "metric" => metric = Some(scaling_metric(x, &p)?),
            "targetValue" => target = Some(whole_in(x, &p, "a percentage", 1, 100)?),
            "scaleOutCooldown" => {
                t.scale_out_cooldown_secs = whole_in(x, &p, "seconds", 0, MAX_COOLDOWN)?
            }
            "scaleInCooldown" => {
                t.scale_in_cooldown_secs = whole_in(x, &p, "seconds", 0, MAX_COOLDOWN)?
            }
            _ => t.disable_scale_in = boolean(x, &p)?,
        }
    }
    t.metric = metric.ok_or_else(|| missing_metric(path))?;
    t.target_percent = target.ok_or_else(|| invalid(&join(path, "targetValue"), "missing"))?;
    Ok(t)
}

fn parse_step_scaling(v: &Value, path: &str) -> Result<StepScaling, TaskDefError> {
    let mut metric = None;
    let mut threshold = None;
    let mut above = None;
    let mut cooldown = DEFAULT_COOLDOWN;
    let mut steps = None;
    for (k, x, p) in known_fields(v, path, STEP_SCALING_KEYS)? {
        match k {
            "metric" => metric = Some(scaling_metric(x, &p)?),
            "threshold" => threshold = Some(whole_in(x, &p, "a percentage", 0, 1000)?),
            "comparison" => {
                above = Some(match string(x, &p)? {
                    "GreaterThanOrEqualToThreshold" => true,
                    "LessThanOrEqualToThreshold" => false,
                    c @ ("GreaterThanThreshold" | "LessThanThreshold") => {
                        return Err(invalid(
                            &p,
                            format!(
                                "{c:?} is not supported: skiff compares with >= or <= \
                                 (\"GreaterThanOrEqualToThreshold\", \
                                 \"LessThanOrEqualToThreshold\")"
                            ),
                        ))
                    }
                    other => {
                        return Err(invalid(
                            &p,
                            format!(
                                "expected \"GreaterThanOrEqualToThreshold\" or \
                                 \"LessThanOrEqualToThreshold\", got {}",
                                quoted(other)
                            ),
                        ))
                    }
                })
            }
            "cooldown" => cooldown = whole_in(x, &p, "seconds", 0, MAX_COOLDOWN)?,
            "adjustmentType" => {
                let t = string(x, &p)?;
                if t != "ChangeInCapacity" {
                    return Err(invalid(
                        &p,
                        format!(
                            "only \"ChangeInCapacity\" is supported (scalingAdjustment is a \
                             number of tasks), got {}",
                            quoted(t)
                        ),
                    ));
                }
            }
            _ => {
                let steps_v = each(x, &p, parse_step)?;
                if steps_v.is_empty() {
                    return Err(invalid(&p, "at least one step"));
                }
                steps = Some(steps_v);
            }
        }
    }
    Ok(StepScaling {
        metric: metric.ok_or_else(|| missing_metric(path))?,
        threshold_percent: threshold.ok_or_else(|| invalid(&join(path, "threshold"), "missing"))?,
        above: above.ok_or_else(|| {
            invalid(
                &join(path, "comparison"),
                "missing; \"GreaterThanOrEqualToThreshold\" or \"LessThanOrEqualToThreshold\"",
            )
        })?,
        cooldown_secs: cooldown,
        steps: steps.ok_or_else(|| invalid(&join(path, "stepAdjustments"), "missing"))?,
    })
}

fn parse_step(v: &Value, path: &str) -> Result<StepAdjustment, TaskDefError> {
    let mut st = StepAdjustment {
        lower: None,
        upper: None,
        change: 0,
    };
    let mut change = None;
    let bound = i64::from(i32::MAX);
    let most = i64::from(MAX_SERVICE_TASKS);
    for (k, x, p) in known_fields(v, path, STEP_KEYS)? {
        match k {
            "metricIntervalLowerBound" => {
                st.lower = Some(whole_in(x, &p, "a whole number", -bound, bound)?)
            }
            "metricIntervalUpperBound" => {
                st.upper = Some(whole_in(x, &p, "a whole number", -bound, bound)?)
            }
            _ => change = Some(whole_in(x, &p, "a number of tasks", -most, most)?),
        }
    }
    st.change = change.ok_or_else(|| invalid(&join(path, "scalingAdjustment"), "missing"))?;
    if let (Some(l), Some(u)) = (st.lower, st.upper) {
        if l >= u {
            return Err(invalid(
                &join(path, "metricIntervalUpperBound"),
                format!("{u} is not above metricIntervalLowerBound {l}"),
            ));
        }
    }
    Ok(st)
}

fn parse_scheduled_scaling(v: &Value, path: &str) -> Result<ScheduledScaling, TaskDefError> {
    let mut cron = None;
    let mut offset = 0;
    let mut zone = None;
    let mut min = None;
    let mut max = None;
    let tasks = i64::from(MAX_SERVICE_TASKS);
    for (k, x, p) in known_fields(v, path, SCHEDULED_KEYS)? {
        match k {
            "schedule" => {
                let text = string(x, &p)?;
                cron = Some(scaling_cron(text).map_err(|e| invalid(&p, e))?);
            }
            "timezone" => {
                (offset, zone) = parse_timezone(string(x, &p)?).map_err(|e| invalid(&p, e))?
            }
            "minCapacity" => min = Some(whole_in(x, &p, "a number of tasks", 0, tasks)?),
            _ => max = Some(whole_in(x, &p, "a number of tasks", 0, tasks)?),
        }
    }
    let cron = cron.ok_or_else(|| invalid(&join(path, "schedule"), "missing"))?;
    let min = min.ok_or_else(|| invalid(&join(path, "minCapacity"), "missing"))?;
    let max = max.ok_or_else(|| invalid(&join(path, "maxCapacity"), "missing"))?;
    if min > max {
        return Err(invalid(
            &join(path, "maxCapacity"),
            format!("{max} is below minCapacity {min}"),
        ));
    }
    Ok(ScheduledScaling {
        cron,
        utc_offset_minutes: offset,
        zone,
        min,
        max,
    })
}

fn missing_metric(path: &str) -> TaskDefError {
    invalid(
        &join(path, "metric"),
        "missing; \"ECSServiceAverageCPUUtilization\" or \"ECSServiceAverageMemoryUtilization\"",
    )
}

fn scaling_metric(v: &Value, path: &str) -> Result<ScalingMetric, TaskDefError> {
    match string(v, path)? {
        "ECSServiceAverageCPUUtilization" => Ok(ScalingMetric::Cpu),
        "ECSServiceAverageMemoryUtilization" => Ok(ScalingMetric::Memory),
        "ALBRequestCountPerTarget" => Err(TaskDefError::Unsupported {
            path: path.to_string(),
            why: Some("a skiff node has no load balancer"),
        }),
        other => Err(invalid(
            path,
            format!(
                "expected \"ECSServiceAverageCPUUtilization\" or \
                 \"ECSServiceAverageMemoryUtilization\", got {}",
                quoted(other)
            ),
        )),
    }
}

/// A scheduled action's `schedule`, as the plain cron expression skiff keeps:
/// - `cron(...)` with 6 fields is Application Auto Scaling's form, `minutes hours
///   day-of-month month day-of-week year`: `?` means `*`, the year must be `*`, and
///   day-of-week numbers count 1-7 from Sunday (they are shifted to cron's 0-6);
/// - `cron(...)` with 5 fields, or no `cron(...)` at all, is the cron of the task-level
///   `schedule` (5 fields, or 6 with leading seconds).
fn scaling_cron(text: &str) -> Result<String, String> {
    let s = text.trim();
    let expr = if let Some(inner) = s.strip_prefix("cron(").and_then(|r| r.strip_suffix(')')) {
        let any = |f: &str| {
            if f == "?" {
                "*".to_string()
            } else {
                f.to_string()
            }
        };
        match inner.split_whitespace().collect::<Vec<_>>().as_slice() {
            [min, hour, dom, month, dow, year] => {
                if !matches!(*year, "*" | "?") {
                    return Err(format!(
                        "{}: a year other than * is not supported",
                        quoted(text)
                    ));
                }
                let dow = aws_weekdays(&any(dow)).map_err(|e| format!("{}: {e}", quoted(text)))?;
                format!("{min} {hour} {} {month} {dow}", any(dom))
            }
            fields @ [_, _, _, _, _] => fields.iter().map(|f| any(f)).collect::<Vec<_>>().join(" "),
            _ => {
                return Err(format!(
                    "{}: cron(...) takes 6 fields (minutes hours day-of-month month \
                     day-of-week year) or 5",
                    quoted(text)
                ))
            }
        }
    } else if s.starts_with("rate(") || s.starts_with("at(") {
        return Err(format!(
            "{}: only cron schedules are supported for scheduled scaling",
            quoted(text)
        ));
    } else {
        s.to_string()
    };
    expr.parse::<crate::core::cron::CronExpr>()
        .map_err(|e| format!("{}: {e}", quoted(text)))?;
    Ok(expr)
}

/// AWS cron's day-of-week numbers (1 = Sunday ... 7 = Saturday) as cron's (0 = Sunday).
fn aws_weekdays(field: &str) -> Result<String, String> {
    let shift = |n: &str| -> Result<String, String> {
        if !n.bytes().all(|b| b.is_ascii_digit()) || n.is_empty() {
            return Ok(n.to_string()); // `*`, names: unchanged
        }
        match n.parse::<u8>() {
            Ok(d @ 1..=7) => Ok((d - 1).to_string()),
            _ => Err(format!(
                "day-of-week {n:?}: AWS cron numbers the days 1-7 (SUN-SAT)"
            )),
        }
    };
    let mut parts = Vec::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        let mut out = match range.split_once('-') {
            Some((a, b)) => format!("{}-{}", shift(a)?, shift(b)?),
            None => shift(range)?,
        };
        if let Some(s) = step {
            out.push('/');
            out.push_str(s);
        }
        parts.push(out);
    }
    Ok(parts.join(","))
}

/// Each element of an array, parsed by `f` with its indexed path.
fn each<T>(
    v: &Value,
    path: &str,
    f: fn(&Value, &str) -> Result<T, TaskDefError>,
) -> Result<Vec<T>, TaskDefError> {
    let arr = v
        .as_array()
        .ok_or_else(|| invalid(path, format!("expected an array, got {}", got(v))))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| f(x, &format!("{path}[{i}]")))
        .collect()
}

/// The non-null entries of one of skiff's own objects, with their paths; a key not in `keys`
/// is refused as unknown (with a "did you mean" hint).
fn known_fields<'a>(
    v: &'a Value,
    path: &str,
    keys: &[&'static str],
) -> Result<Vec<(&'a str, &'a Value, String)>, TaskDefError> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(path, format!("expected an object, got {}", got(v))))?;
    let mut out = Vec::with_capacity(obj.len());
    for (k, x) in obj {
        let p = join(path, k);
        if !keys.contains(&k.as_str()) {
            return Err(unknown(&p, k, keys, &[], ""));
        }
        if !x.is_null() {
            out.push((k.as_str(), x, p));
        }
    }
    Ok(out)
}

/// A whole number in `lo..=hi`, written as an integer or as a float without fraction
/// (Application Auto Scaling's fields are doubles: `"targetValue": 50.0`).
fn whole_in<T: TryFrom<i64>>(
    v: &Value,
    path: &str,
    what: &str,
    lo: i64,
    hi: i64,
) -> Result<T, TaskDefError> {
    let Value::Number(n) = v else {
        return Err(invalid(path, format!("expected {what}, got {}", got(v))));
    };
    let whole = n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .and_then(|f| format!("{f:.0}").parse().ok())
    });
    match whole {
        Some(w) if (lo..=hi).contains(&w) => {
            T::try_from(w).map_err(|_| invalid(path, format!("{n} is outside {lo}..={hi}")))
        }
        Some(_) => Err(invalid(path, format!("{n} is outside {lo}..={hi}"))),
        None if n.as_u64().is_some() => Err(invalid(path, format!("{n} is outside {lo}..={hi}"))),
        None => Err(invalid(path, format!("expected {what}, got {n}"))),
    }
}

/// `"UTC"`, a fixed offset (`"+05:30"`) or a named IANA zone (`"Europe/Berlin"`, checked
/// against the node's zoneinfo when the agent applies it).
fn parse_timezone(s: &str) -> Result<(i16, Option<String>), String> {
    if s.starts_with(['+', '-']) || matches!(s, "UTC" | "Z" | "utc" | "Etc/UTC" | "GMT") {
        return parse_utc_offset(s).map(|o| (o, None));
    }
    skiff_proto::check_zone_name("timezone", s).map_err(|_| {
        format!(
            "{s:?}: expected \"UTC\", an offset like \"+05:30\" or a zone like \"Europe/Berlin\""
        )
    })?;
    Ok((0, Some(s.to_string())))
}

/// The `timezone` JSON value of an offset or zone.
fn timezone_str(offset: i16, zone: Option<&str>) -> String {
    zone.map_or_else(|| utc_offset_str(offset), str::to_string)
}

fn parse_utc_offset(s: &str) -> Result<i16, String> {
    if matches!(s, "UTC" | "Z" | "utc" | "Etc/UTC" | "GMT") {
        return Ok(0);
    }
    let bad = || format!("{s:?}: expected \"UTC\" or an offset like \"+05:30\"");
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let (h, m): (i16, i16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 14 || m > 59 || h < 0 || m < 0 {
        return Err(bad());
    }
    Ok(sign * (h * 60 + m))
}

/// `30s`, `5m`, `2h`, `1d` → seconds.
fn parse_duration_secs(s: &str) -> Result<u32, String> {
    let bad =
        || format!("{s:?}: expected seconds or a duration like \"30s\", \"5m\", \"2h\", \"1d\"");
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u32 = num.parse().map_err(|_| bad())?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

fn parse_restart_policy(v: &Value, path: &str) -> Result<RestartPolicy, TaskDefError> {
    let expected = "expected \"never\", \"on-failure\" or \"always\"";
    match v.as_str() {
        Some("never") => Ok(RestartPolicy::Never),
        Some("on-failure") => Ok(RestartPolicy::OnFailure),
        Some("always") => Ok(RestartPolicy::Always),
        _ if v.is_object() => Err(invalid(
            path,
            format!(
                "{expected} (skiff's task-level policy, not ECS's container-level object), got {}",
                got(v)
            ),
        )),
        _ => Err(invalid(path, format!("{expected}, got {}", got(v)))),
    }
}

/// `requiresCompatibilities`: a registration-time check in ECS. A skiff node is a machine of your
/// own, which `EC2` and `EXTERNAL` (ECS Anywhere) describe; `FARGATE` does not.
fn check_compatibilities(v: &Value, path: &str) -> Result<(), TaskDefError> {
    let arr = v.as_array().ok_or_else(|| {
        invalid(
            path,
            format!("expected an array of launch types, got {}", got(v)),
        )
    })?;
    for (i, x) in arr.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match string(x, &p)? {
            "EC2" | "EXTERNAL" => {}
            "FARGATE" => {
                return Err(TaskDefError::Unsupported {
                    path: p,
                    why: Some("a skiff node is a machine of your own: use EC2 or EXTERNAL"),
                })
            }
            other => {
                return Err(invalid(
                    &p,
                    format!(
                        "expected \"EC2\", \"EXTERNAL\" or \"FARGATE\", got {}",
                        quoted(other)
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// `runtimePlatform`: skiff runs Linux containers, so `operatingSystemFamily: "LINUX"` is
/// accepted. `cpuArchitecture` is refused: a node pulls the image for its own architecture and
/// skiff does not place tasks by architecture, so honouring it is not possible yet.
fn check_runtime_platform(v: &Value, path: &str) -> Result<(), TaskDefError> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(path, format!("expected an object, got {}", got(v))))?;
    for (k, x) in obj {
        let p = join(path, k);
        match k.as_str() {
            "operatingSystemFamily" => {
                if !x.is_null() {
                    let os = string(x, &p)?;
                    if !(os.is_empty() || os == "LINUX") {
                        return Err(invalid(
                            &p,
                            format!(
                                "skiff runs Linux containers only (\"LINUX\"), got {}",
                                quoted(os)
                            ),
                        ));
                    }
                }
            }
            "cpuArchitecture" => {
                if !is_empty(x) {
                    return Err(TaskDefError::Unsupported {
                        path: p,
                        why: Some(
                            "a node runs the image built for its own architecture; \
                             placing tasks by architecture is not supported yet",
                        ),
                    });
                }
            }
            _ => {
                return Err(unknown(
                    &p,
                    k,
                    &["cpuArchitecture", "operatingSystemFamily"],
                    &[],
                    "",
                ))
            }
        }
    }
    Ok(())
}

/// `tags`: metadata for AWS resource management, no effect on how a task runs; accepted and
/// dropped.
fn check_tags(v: &Value, path: &str) -> Result<(), TaskDefError> {
    if v.is_null() || v.is_array() {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!(
                "expected an array of {{\"key\": ..., \"value\": ...}} objects, got {}",
                got(v)
            ),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Scalars
// ---------------------------------------------------------------------------------------------

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, TaskDefError> {
    v.as_str()
        .ok_or_else(|| invalid(path, format!("expected a string, got {}", got(v))))
}

/// A string where `""` means unset, as in ECS.
fn optional_string(v: &Value, path: &str) -> Result<Option<String>, TaskDefError> {
    let s = string(v, path)?;
    Ok((!s.is_empty()).then(|| s.to_string()))
}

fn strings(v: &Value, path: &str) -> Result<Vec<String>, TaskDefError> {
    let arr = v.as_array().ok_or_else(|| {
        invalid(
            path,
            format!("expected an array of strings, got {}", got(v)),
        )
    })?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| string(x, &format!("{path}[{i}]")).map(str::to_string))
        .collect()
}

fn boolean(v: &Value, path: &str) -> Result<bool, TaskDefError> {
    v.as_bool()
        .ok_or_else(|| invalid(path, format!("expected true or false, got {}", got(v))))
}

fn name(v: &Value, path: &str) -> Result<Name, TaskDefError> {
    Name::try_from(string(v, path)?).map_err(|e| invalid(path, e.to_string()))
}

/// A JSON number that is a whole number in `0..=u32::MAX`.
fn number_u32(v: &Value, path: &str, what: &str) -> Result<u32, TaskDefError> {
    let Value::Number(n) = v else {
        return Err(invalid(path, format!("expected {what}, got {}", got(v))));
    };
    if let Some(u) = n.as_u64() {
        return u32::try_from(u).map_err(|_| out_of_range(path, n));
    }
    if n.as_f64().is_some_and(|f| f >= 1.0 && f.fract() == 0.0) {
        // Too large for u64, so serde_json kept it as a float.
        return Err(out_of_range(path, n));
    }
    Err(invalid(path, format!("expected {what}, got {n}")))
}

fn out_of_range(path: &str, n: &Number) -> TaskDefError {
    invalid(path, format!("{n} is out of range, at most {}", u32::MAX))
}

/// Task-level `cpu`: CPU units as a number or a string, `"1024"`, `"1 vCPU"`, `"0.5 vcpu"`.
fn task_cpu(v: &Value, path: &str) -> Result<u32, TaskDefError> {
    let what = "CPU units (a number, or a string such as \"256\" or \"0.5 vCPU\")";
    scaled_field(v, path, what, "CPU units", |unit| {
        match unit.to_ascii_lowercase().as_str() {
            "" => Some(1),
            "vcpu" | "vcpus" => Some(1024),
            _ => None,
        }
    })
}

/// Task-level `memory`: MiB as a number or a string, `"512"`, `"512 MiB"`, `"1GB"`, `"0.5 GB"`.
/// ECS's `GB` is 1024 MiB; `MB` is read as MiB the same way.
fn task_memory(v: &Value, path: &str) -> Result<u32, TaskDefError> {
    let what = "MiB (a number, or a string such as \"512\" or \"1 GB\")";
    scaled_field(v, path, what, "MiB", |unit| {
        match unit.to_ascii_lowercase().as_str() {
            "" | "mib" | "mb" => Some(1),
            "gib" | "gb" => Some(1024),
            _ => None,
        }
    })
}

fn scaled_field(
    v: &Value,
    path: &str,
    what: &str,
    base_unit: &str,
    unit_factor: impl Fn(&str) -> Option<u64>,
) -> Result<u32, TaskDefError> {
    let s = match v {
        Value::Number(_) => return number_u32(v, path, what),
        Value::String(s) => s.trim(),
        _ => return Err(invalid(path, format!("expected {what}, got {}", got(v)))),
    };
    let bad = || invalid(path, format!("expected {what}, got {}", got(v)));
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let factor = unit_factor(unit.trim()).ok_or_else(bad)?;
    match scale_decimal(num, factor) {
        Ok(n) => u32::try_from(n).map_err(|_| {
            invalid(
                path,
                format!(
                    "{} is out of range, at most {} {base_unit}",
                    quoted(s),
                    u32::MAX
                ),
            )
        }),
        Err(ScaleError::Syntax) => Err(bad()),
        Err(ScaleError::NotWhole) => Err(invalid(
            path,
            format!("{} is not a whole number of {base_unit}", quoted(s)),
        )),
        Err(ScaleError::Overflow) => Err(invalid(
            path,
            format!(
                "{} is out of range, at most {} {base_unit}",
                quoted(s),
                u32::MAX
            ),
        )),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ScaleError {
    Syntax,
    NotWhole,
    Overflow,
}

/// `num × factor` for a plain decimal `num` (`"2"`, `"0.5"`, `".25"`), exactly, in integers.
fn scale_decimal(num: &str, factor: u64) -> Result<u64, ScaleError> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err(ScaleError::Syntax);
    }
    let frac = frac.trim_end_matches('0');
    // factor ≤ 1024 = 2^10: more than 10 significant decimals can't come out whole.
    if frac.len() > 10 {
        return Err(ScaleError::NotWhole);
    }
    let int_v: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| ScaleError::Overflow)?
    };
    let frac_v: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| ScaleError::Syntax)?
    };
    let scale = 10u64.pow(u32::try_from(frac.len()).map_err(|_| ScaleError::NotWhole)?);
    let frac_scaled = frac_v.checked_mul(factor).ok_or(ScaleError::Overflow)?;
    if frac_scaled % scale != 0 {
        return Err(ScaleError::NotWhole);
    }
    int_v
        .checked_mul(factor)
        .and_then(|n| n.checked_add(frac_scaled / scale))
        .ok_or(ScaleError::Overflow)
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// A value as quoted in an error: strings quoted and shortened, containers by kind.
fn got(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quoted(s),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn quoted(s: &str) -> String {
    format!("{:?}", shorten(s))
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTED {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_QUOTED).collect();
        t.push('…');
        t
    }
}

/// A path as shown: an absurdly long key (a typo can be up to 64 KiB) is shortened; the empty
/// path is the whole document.
fn shown_path(path: &str) -> String {
    if path.is_empty() {
        "task definition".into()
    } else if path.len() > 4 * MAX_QUOTED {
        shorten(path)
    } else {
        path.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// JSON with duplicate keys refused
// ---------------------------------------------------------------------------------------------

fn parse_json(json: &[u8]) -> Result<Value, TaskDefError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let value = StrictValue::deserialize(&mut de)
        .and_then(|StrictValue(v)| de.end().map(|()| v))
        .map_err(json_error)?;
    Ok(value)
}

fn json_error(e: serde_json::Error) -> TaskDefError {
    let full = e.to_string();
    let location = format!(" at line {} column {}", e.line(), e.column());
    let reason = full.strip_suffix(&location).unwrap_or(&full).to_string();
    TaskDefError::Json {
        line: e.line(),
        column: e.column(),
        reason,
    }
}

/// A [`Value`] whose objects have no duplicate keys: `serde_json::Value` would keep the last
/// one silently, another parser the first.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        Number::from_f64(n)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {}",
                    quoted(&key)
                )));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: &Value) -> Result<TaskDefinition, TaskDefError> {
        parse_task_definition(&serde_json::to_vec(v).expect("serializable"))
    }

    fn ok(v: Value) -> TaskDefinition {
        parse(&v).unwrap_or_else(|e| panic!("expected {v} to parse: {e}"))
    }

    fn err(v: Value) -> String {
        match parse(&v) {
            Ok(d) => panic!("expected {v} to be refused, got {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn n(s: &str) -> Name {
        s.parse().expect("valid name")
    }

    /// A minimal definition with `extra` merged into the task and `cextra` into its container.
    fn with(extra: Value, cextra: Value) -> Value {
        let mut c = json!({"name": "main", "image": "busybox"});
        for (k, v) in cextra.as_object().expect("object") {
            c[k] = v.clone();
        }
        let mut t = json!({"family": "app", "containerDefinitions": [c]});
        for (k, v) in extra.as_object().expect("object") {
            t[k] = v.clone();
        }
        t
    }

    fn container(extra: Value) -> Value {
        with(json!({}), extra)
    }

    fn task(extra: Value) -> Value {
        with(extra, json!({}))
    }

    #[test]
    fn depends_on_parses_checks_and_round_trips() {
        let v = json!({"family": "stack", "containerDefinitions": [
            {"name": "db", "image": "busybox", "essential": false,
             "healthCheck": {"command": ["CMD-SHELL", "true"]}},
            {"name": "app", "image": "busybox",
             "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}]}]});
        let d = ok(v);
        assert_eq!(
            d.containers[1].depends_on,
            [ContainerDependency {
                container: "db".parse().expect("name"),
                condition: DependencyCondition::Healthy
            }]
        );
        assert_eq!(ok(to_ecs_json(&d)), d);
        assert_eq!(
            err(container(json!({"dependsOn": [{"containerName": "main", "condition": "LATER"}]}))),
            "containerDefinitions[0].dependsOn[0].condition: \"LATER\": expected START, COMPLETE, SUCCESS or HEALTHY"
        );
        assert_eq!(
            err(container(
                json!({"dependsOn": [{"containerName": "db", "condition": "START"}]})
            )),
            "containerDefinitions[0].dependsOn: no container named db in this task"
        );
    }

    #[test]
    fn sealed_secrets_parse_round_trip_and_clear_text_is_refused_unechoed() {
        let sealed = crate::secrets::seal(&[9; 32], "hunter2").expect("seal");
        let d = ok(container(
            json!({"secrets": [{"name": "DB_PASSWORD", "valueFrom": sealed}]}),
        ));
        assert_eq!(
            d.containers[0].secrets,
            [Secret {
                name: "DB_PASSWORD".into(),
                sealed: sealed.clone()
            }]
        );
        assert_eq!(ok(to_ecs_json(&d)), d);
        let e = err(container(
            json!({"secrets": [{"name": "DB_PASSWORD", "valueFrom": "hunter2"}]}),
        ));
        assert!(
            e.starts_with("containerDefinitions[0].secrets[0].valueFrom: not a sealed value")
                && !e.contains("hunter2"),
            "{e}"
        );
        let arn = "arn:aws:secretsmanager:eu-west-1:1:secret:db";
        assert!(err(container(
            json!({"secrets": [{"name": "A", "valueFrom": arn}]})
        ))
        .contains("skiff ctl seal"));
        assert_eq!(
            err(container(json!({"secrets": [{"name": "A", "valueFrm": sealed}]}))),
            "containerDefinitions[0].secrets[0].valueFrm: unknown field (did you mean \"valueFrom\"?)"
        );
        let twice = err(container(json!({
            "environment": [{"name": "A", "value": "1"}],
            "secrets": [{"name": "A", "valueFrom": sealed}]})));
        assert!(twice.contains("A is set twice"), "{twice}");
    }

    #[test]
    fn schedules_and_batches_parse_and_round_trip() {
        let d = ok(task(
            json!({"schedule": {"cron": "*/5 * * * *", "timezone": "+05:30",
            "overlapPolicy": "replace", "missedRunPolicy": "run-once"}}),
        ));
        assert_eq!(
            d.extensions,
            [TaskExtension::Schedule(Schedule {
                spec: ScheduleSpec::Cron {
                    expr: "*/5 * * * *".into(),
                    utc_offset_minutes: 330,
                    zone: None,
                },
                overlap: OverlapPolicy::Replace,
                missed: MissedRunPolicy::RunOnce,
            })]
        );
        assert_eq!(ok(to_ecs_json(&d)), d);
        let r = ok(task(json!({"schedule": {"rate": "5m"}})));
        assert!(
            matches!(&r.extensions[0], TaskExtension::Schedule(s) if s.spec == ScheduleSpec::Rate { every_secs: 300 })
        );
        assert_eq!(ok(to_ecs_json(&r)), r);
        let b = ok(task(
            json!({"batch": {"completions": 3, "retries": 2, "timeout": "1m"}}),
        ));
        assert_eq!(
            b.extensions,
            [TaskExtension::Batch(Batch {
                completions: 3,
                retries: 2,
                timeout_secs: Some(60)
            })]
        );
        assert_eq!(ok(to_ecs_json(&b)), b);
    }

    #[test]
    fn bad_schedules_and_batches_are_named() {
        assert!(err(task(json!({"schedule": {"cron": "61 * * * *"}})))
            .starts_with("schedule.cron: \"61 * * * *\": minutes: 61 is outside 0-59"));
        let zoned = ok(task(
            json!({"schedule": {"cron": "0 8 * * *", "timezone": "Europe/Paris"}}),
        ));
        assert!(matches!(
            &zoned.extensions[0],
            TaskExtension::Schedule(Schedule { spec: ScheduleSpec::Cron { zone: Some(z), .. }, .. })
                if z == "Europe/Paris"
        ));
        assert_eq!(ok(to_ecs_json(&zoned)), zoned);
        assert!(err(task(
            json!({"schedule": {"cron": "* * * * *", "timezone": "../etc/passwd"}})
        ))
        .contains("a zone like \"Europe/Berlin\""));
        assert!(err(task(json!({"schedule": {"rate": 0}}))).contains("at least 1 second"));
        assert!(
            err(task(json!({"schedule": {"rate": 5, "cron": "* * * * *"}}))).contains("not both")
        );
        assert!(err(task(
            json!({"schedule": {"cron": "* * * * *", "overlapPolicy": "sometimes"}})
        ))
        .contains("expected \"forbid\", \"replace\" or \"allow\""));
        let allow = ok(task(
            json!({"schedule": {"cron": "* * * * *", "overlapPolicy": "allow"}}),
        ));
        assert_eq!(ok(to_ecs_json(&allow)), allow);
        assert!(err(task(json!({"schedule": {}}))).contains("needs \"cron\" or \"rate\""));
        assert!(err(task(json!({"batch": {"completions": 0}}))).contains("batch.completions"));
        assert!(err(task(json!({"batch": {"tries": 1}}))).contains("unknown batch field"));
        // Each firing runs the batch job.
        let both = ok(task(
            json!({"batch": {"completions": 2, "retries": 1}, "schedule": {"rate": 5}}),
        ));
        assert!(both
            .extensions
            .iter()
            .any(|e| matches!(e, TaskExtension::Batch(_))));
        assert!(both
            .extensions
            .iter()
            .any(|e| matches!(e, TaskExtension::Schedule(_))));
        assert_eq!(ok(to_ecs_json(&both)), both);
    }

    #[test]
    fn health_checks_parse_with_ecs_defaults() {
        let d = ok(container(
            json!({"healthCheck": {"command": ["CMD-SHELL", "wget -q -O- http://localhost/ || exit 1"]}}),
        ));
        assert_eq!(
            d.containers[0].health_check,
            Some(HealthCheck {
                test: HealthTest::Shell("wget -q -O- http://localhost/ || exit 1".into()),
                interval_secs: 30,
                timeout_secs: 5,
                retries: 3,
                start_period_secs: 0,
            })
        );
        let d = ok(container(json!({"healthCheck": {
            "command": ["CMD", "/bin/check", "--quick"], "interval": 10, "timeout": 2,
            "retries": 5, "startPeriod": 60}})));
        assert_eq!(
            d.containers[0].health_check,
            Some(HealthCheck {
                test: HealthTest::Cmd(vec!["/bin/check".into(), "--quick".into()]),
                interval_secs: 10,
                timeout_secs: 2,
                retries: 5,
                start_period_secs: 60,
            })
        );
        let tcp = ok(container(
            json!({"healthCheck": {"command": ["TCP", "8080"], "interval": 1, "startPeriod": null}}),
        ));
        let h = tcp.containers[0]
            .health_check
            .clone()
            .expect("health check");
        assert_eq!(h.test, HealthTest::Tcp(8080));
        // skiff allows a 1 s interval; the default timeout shrinks to fit it.
        assert_eq!((h.interval_secs, h.timeout_secs), (1, 1));
        assert_eq!(
            ok(container(json!({"healthCheck": null}))).containers[0].health_check,
            None
        );
        // ECS's own bounds are all accepted.
        for (interval, timeout, retries, start) in [(5, 2, 1, 0), (300, 60, 10, 300)] {
            ok(container(
                json!({"healthCheck": {"command": ["CMD", "true"],
                "interval": interval, "timeout": timeout, "retries": retries,
                "startPeriod": start}}),
            ));
        }
    }

    #[test]
    fn health_check_errors_name_their_path() {
        let hc = |extra: Value| {
            let mut h = json!({"command": ["CMD-SHELL", "true"]});
            for (k, v) in extra.as_object().expect("object") {
                h[k] = v.clone();
            }
            err(container(json!({ "healthCheck": h })))
        };
        let at = "containerDefinitions[0].healthCheck";
        let cases = [
            (json!({"interval": 0}), format!("{at}.interval: 0 is outside 1..=300")),
            (json!({"interval": 301}), format!("{at}.interval: 301 is outside 1..=300")),
            (json!({"timeout": 0}), format!("{at}.timeout: 0 is outside 1..=60")),
            (json!({"timeout": 61, "interval": 100}), format!("{at}.timeout: 61 is outside 1..=60")),
            (json!({"timeout": 20, "interval": 10}), format!("{at}.timeout: longer than the interval")),
            (json!({"retries": 0}), format!("{at}.retries: 0 is outside 1..=10")),
            (json!({"retries": 11}), format!("{at}.retries: 11 is outside 1..=10")),
            (json!({"startPeriod": 301}), format!("{at}.startPeriod: 301 is outside 0..=300")),
            (json!({"interval": "30s"}), format!("{at}.interval: expected a number of seconds, got \"30s\"")),
            (json!({"command": ["CMD"]}), format!("{at}.command: CMD needs a command")),
            (json!({"command": ["CMD-SHELL", "a", "b"]}), format!("{at}.command: CMD-SHELL takes exactly one command string (run with /bin/sh -c)")),
            (json!({"command": ["TCP", "http"]}), format!("{at}.command[1]: expected a port 1..=65535, got \"http\"")),
            (json!({"command": ["TCP", "0"]}), format!("{at}.command[1]: expected a port 1..=65535, got \"0\"")),
            (json!({"command": ["TCP"]}), format!("{at}.command: TCP takes exactly one port, as a string: [\"TCP\", \"8080\"]")),
            (json!({"command": "curl localhost"}), format!("{at}.command: expected an array of strings, got \"curl localhost\"")),
            (json!({"intervall": 5}), format!("{at}.intervall: unknown field (did you mean \"interval\"?)")),
        ];
        for (extra, want) in cases {
            assert_eq!(hc(extra.clone()), want, "{extra}");
        }
        let e = hc(json!({"command": ["curl", "localhost"]}));
        assert!(
            e.starts_with(&format!("{at}.command: expected [\"CMD\"")),
            "{e}"
        );
        assert!(e.contains("got \"curl\" first"), "{e}");
        assert!(hc(json!({"command": ["NONE"]})).contains("leave healthCheck out"));
        assert_eq!(
            err(container(json!({"healthCheck": {"interval": 5}}))),
            format!("{at}.command: missing; e.g. [\"CMD-SHELL\", \"wget -q -O /dev/null http://localhost/ || exit 1\"]")
        );
        assert_eq!(
            err(container(json!({"healthCheck": ["CMD", "true"]}))),
            format!("{at}: expected an object, got an array")
        );
    }

    #[test]
    fn stop_timeout_parses_and_is_bounded() {
        assert_eq!(
            ok(container(json!({"stopTimeout": 120}))).containers[0].stop_timeout_secs,
            Some(120)
        );
        // Beyond ECS's 120 s, up to an hour.
        assert_eq!(
            ok(container(json!({"stopTimeout": 3600}))).containers[0].stop_timeout_secs,
            Some(3600)
        );
        assert_eq!(
            ok(container(json!({"stopTimeout": 0}))).containers[0].stop_timeout_secs,
            Some(0)
        );
        assert_eq!(
            ok(container(json!({}))).containers[0].stop_timeout_secs,
            None
        );
        assert_eq!(
            err(container(json!({"stopTimeout": 3601}))),
            "containerDefinitions[0].stopTimeout: at most 3600 seconds"
        );
        assert_eq!(
            err(container(json!({"stopTimeout": "30s"}))),
            "containerDefinitions[0].stopTimeout: expected a number of seconds, got \"30s\""
        );
    }

    fn service_of(d: &TaskDefinition) -> &Service {
        d.extensions
            .iter()
            .find_map(|e| match e {
                TaskExtension::Service(s) => Some(s),
                _ => None,
            })
            .expect("a service")
    }

    #[test]
    fn service_defaults_are_ecs_defaults() {
        let d = ok(task(json!({"service": {}})));
        assert_eq!(
            service_of(&d),
            &Service {
                desired_count: 1,
                min_healthy_percent: 100,
                max_percent: 200,
                circuit_breaker: None,
                health_grace_secs: 0,
                scaling: None,
            }
        );
        assert_eq!(ok(to_ecs_json(&d)), d);
        assert_eq!(ok(task(json!({"service": null}))).extensions, vec![]);
        let t = ok(task(
            json!({"service": {"autoScaling": {"minCapacity": 1, "maxCapacity": 4,
            "targetTracking": [{"metric": "ECSServiceAverageMemoryUtilization", "targetValue": 70}],
            "stepScaling": [{"metric": "ECSServiceAverageCPUUtilization", "threshold": 90,
                "comparison": "GreaterThanOrEqualToThreshold",
                "stepAdjustments": [{"scalingAdjustment": 1}]}]}}}),
        ));
        let a = service_of(&t).scaling.as_ref().expect("scaling");
        assert_eq!(
            a.target_tracking,
            [TargetTracking {
                metric: ScalingMetric::Memory,
                target_percent: 70,
                scale_out_cooldown_secs: 300,
                scale_in_cooldown_secs: 300,
                disable_scale_in: false,
            }]
        );
        assert_eq!(a.step[0].cooldown_secs, 300);
        assert_eq!(
            a.step[0].steps,
            [StepAdjustment {
                lower: None,
                upper: None,
                change: 1
            }]
        );
        assert_eq!(ok(to_ecs_json(&t)), t);
    }

    fn full_service() -> Value {
        json!({"desiredCount": 3,
            "deploymentConfiguration": {"minimumHealthyPercent": 50, "maximumPercent": 150,
                "deploymentCircuitBreaker": {"enable": true, "rollback": true},
                "strategy": "ROLLING", "alarms": {"alarmNames": [], "enable": false, "rollback": false}},
            "healthCheckGracePeriodSeconds": 30,
            "autoScaling": {"minCapacity": 2, "maxCapacity": 6,
                "targetTracking": [{"metric": "ECSServiceAverageCPUUtilization", "targetValue": 50.0,
                    "scaleOutCooldown": 60, "scaleInCooldown": 120, "disableScaleIn": true}],
                "stepScaling": [{"metric": "ECSServiceAverageMemoryUtilization", "threshold": 30,
                    "comparison": "LessThanOrEqualToThreshold", "cooldown": 90,
                    "adjustmentType": "ChangeInCapacity",
                    "stepAdjustments": [
                        {"metricIntervalLowerBound": -10, "metricIntervalUpperBound": 0, "scalingAdjustment": -1},
                        {"metricIntervalUpperBound": -10.0, "scalingAdjustment": -2}]}],
                "scheduledActions": [
                    {"schedule": "cron(0 8 ? * 2-6 *)", "timezone": "+01:00", "minCapacity": 4, "maxCapacity": 6},
                    {"schedule": "0 20 * * *", "minCapacity": 1, "maxCapacity": 2}]}})
    }

    #[test]
    fn a_full_service_parses_and_round_trips() {
        let d = ok(task(json!({ "service": full_service() })));
        assert_eq!(
            service_of(&d),
            &Service {
                desired_count: 3,
                min_healthy_percent: 50,
                max_percent: 150,
                circuit_breaker: Some(CircuitBreaker { rollback: true }),
                health_grace_secs: 30,
                scaling: Some(AutoScaling {
                    min: 2,
                    max: 6,
                    target_tracking: vec![TargetTracking {
                        metric: ScalingMetric::Cpu,
                        target_percent: 50,
                        scale_out_cooldown_secs: 60,
                        scale_in_cooldown_secs: 120,
                        disable_scale_in: true,
                    }],
                    step: vec![StepScaling {
                        metric: ScalingMetric::Memory,
                        threshold_percent: 30,
                        above: false,
                        cooldown_secs: 90,
                        steps: vec![
                            StepAdjustment {
                                lower: Some(-10),
                                upper: Some(0),
                                change: -1
                            },
                            StepAdjustment {
                                lower: None,
                                upper: Some(-10),
                                change: -2
                            },
                        ],
                    }],
                    scheduled: vec![
                        ScheduledScaling {
                            // AWS's MON-FRI (2-6) as cron's 1-5.
                            cron: "0 8 * * 1-5".into(),
                            utc_offset_minutes: 60,
                            zone: None,
                            min: 4,
                            max: 6,
                        },
                        ScheduledScaling {
                            cron: "0 20 * * *".into(),
                            utc_offset_minutes: 0,
                            zone: None,
                            min: 1,
                            max: 2,
                        },
                    ],
                }),
            }
        );
        let v = to_ecs_json(&d);
        assert_eq!(ok(v.clone()), d);
        assert_eq!(v["service"]["desiredCount"], json!(3));
        assert_eq!(
            v["service"]["deploymentConfiguration"]["deploymentCircuitBreaker"],
            json!({"enable": true, "rollback": true})
        );
        assert_eq!(
            v["service"]["autoScaling"]["scheduledActions"][0],
            json!({"schedule": "0 8 * * 1-5", "timezone": "+01:00", "minCapacity": 4, "maxCapacity": 6})
        );
        // A circuit breaker without rollback, and one turned off.
        let d = ok(task(json!({"service": {"deploymentConfiguration": {
            "deploymentCircuitBreaker": {"enable": true}}}})));
        assert_eq!(
            service_of(&d).circuit_breaker,
            Some(CircuitBreaker { rollback: false })
        );
        assert_eq!(ok(to_ecs_json(&d)), d);
        let d = ok(task(json!({"service": {"deploymentConfiguration": {
            "deploymentCircuitBreaker": {"enable": false, "rollback": false}}}})));
        assert_eq!(service_of(&d).circuit_breaker, None);
    }

    #[test]
    fn scaling_schedules_take_aws_and_plain_cron() {
        let cases = [
            ("cron(0 8 * * *)", "0 8 * * *"),
            ("cron(0 8 * * ?)", "0 8 * * *"),
            ("cron(30 7 ? * 1 *)", "30 7 * * 0"),
            ("cron(0 9 1 * ? *)", "0 9 1 * *"),
            ("cron(0 */2 ? * MON-FRI *)", "0 */2 * * MON-FRI"),
            ("cron(0 8 ? * 1,7 *)", "0 8 * * 0,6"),
            ("cron(0 8 ? * 2-6/2 *)", "0 8 * * 1-5/2"),
            ("*/15 * * * *", "*/15 * * * *"),
            ("0 */15 * * * *", "0 */15 * * * *"),
        ];
        for (given, kept) in cases {
            assert_eq!(scaling_cron(given).as_deref(), Ok(kept), "{given}");
        }
        for (given, want) in [
            (
                "cron(0 8 ? * * 2027)",
                "a year other than * is not supported",
            ),
            ("cron(0 8 ? * 8 *)", "AWS cron numbers the days 1-7"),
            ("cron(0 8 * *)", "cron(...) takes 6 fields"),
            ("rate(5 minutes)", "only cron schedules"),
            ("at(2026-01-01T00:00:00)", "only cron schedules"),
            ("61 * * * *", "minutes: 61 is outside 0-59"),
        ] {
            let e = scaling_cron(given).expect_err(given);
            assert!(e.contains(want), "{given}: {e}");
        }
    }

    #[test]
    fn service_errors_name_their_path() {
        let svc = |s: Value| err(task(json!({ "service": s })));
        let a = |extra: Value| {
            let mut s = json!({"minCapacity": 1, "maxCapacity": 4});
            for (k, v) in extra.as_object().expect("object") {
                s[k] = v.clone();
            }
            svc(json!({ "autoScaling": s }))
        };
        let tt = |t: Value| {
            let mut x = json!({"metric": "ECSServiceAverageCPUUtilization", "targetValue": 50});
            for (k, v) in t.as_object().expect("object") {
                x[k] = v.clone();
            }
            a(json!({ "targetTracking": [x] }))
        };
        let step = |t: Value| {
            let mut x = json!({"metric": "ECSServiceAverageCPUUtilization", "threshold": 80,
                "comparison": "GreaterThanOrEqualToThreshold",
                "stepAdjustments": [{"scalingAdjustment": 1}]});
            for (k, v) in t.as_object().expect("object") {
                x[k] = v.clone();
            }
            a(json!({ "stepScaling": [x] }))
        };
        let sched = |t: Value| {
            let mut x = json!({"schedule": "0 8 * * *", "minCapacity": 1, "maxCapacity": 2});
            for (k, v) in t.as_object().expect("object") {
                x[k] = v.clone();
            }
            a(json!({ "scheduledActions": [x] }))
        };
        let ts = "service.autoScaling.targetTracking[0]";
        let ss = "service.autoScaling.stepScaling[0]";
        let sa = "service.autoScaling.scheduledActions[0]";
        let cases = [
            (svc(json!({"desiredCount": 65})), "service.desiredCount: at most 64".to_string()),
            (svc(json!({"desiredCount": -1})), "service.desiredCount: expected a number of tasks, got -1".into()),
            (svc(json!({"desiredcount": 2})), "service.desiredcount: unknown field (did you mean \"desiredCount\"?)".into()),
            (svc(json!([])), "service: expected an object, got an array".into()),
            (svc(json!({"deploymentConfiguration": {"minimumHealthyPercent": 101}})),
                "service.deploymentConfiguration.minimumHealthyPercent: must be 0..=100".into()),
            (svc(json!({"deploymentConfiguration": {"maximumPercent": 99}})),
                "service.deploymentConfiguration.maximumPercent: must be 100..=200".into()),
            (svc(json!({"deploymentConfiguration": {"maximumPercent": 201}})),
                "service.deploymentConfiguration.maximumPercent: must be 100..=200".into()),
            (svc(json!({"deploymentConfiguration": {"minimumHealthyPercent": 100, "maximumPercent": 100}})),
                "service.deploymentConfiguration: maximumPercent must be greater than minimumHealthyPercent, or a rollout can't make progress".into()),
            (svc(json!({"deploymentConfiguration": {"deploymentCircuitBreaker": {"rollback": true}}})),
                "service.deploymentConfiguration.deploymentCircuitBreaker.rollback: only applies with \"enable\": true".into()),
            (svc(json!({"deploymentConfiguration": {"deploymentCircuitBreaker": {"enable": "yes"}}})),
                "service.deploymentConfiguration.deploymentCircuitBreaker.enable: expected true or false, got \"yes\"".into()),
            (svc(json!({"deploymentConfiguration": {"strategy": "BLUE_GREEN"}})),
                "service.deploymentConfiguration.strategy: not supported by skiff (skiff rolls services out in place (\"ROLLING\"))".into()),
            (svc(json!({"deploymentConfiguration": {"alarms": {"alarmNames": ["a"], "enable": true}}})),
                "service.deploymentConfiguration.alarms: not supported by skiff (CloudWatch alarms do not reach a device; use deploymentCircuitBreaker and container health checks)".into()),
            (svc(json!({"healthCheckGracePeriodSeconds": 3601})),
                "service.healthCheckGracePeriodSeconds: at most 3600".into()),
            (svc(json!({"autoScaling": {"maxCapacity": 3}})), "service.autoScaling.minCapacity: missing".into()),
            (svc(json!({"autoScaling": {"minCapacity": 3}})), "service.autoScaling.maxCapacity: missing".into()),
            (a(json!({"minCapacity": 5})), "service.autoScaling.maxCapacity: need minCapacity <= maxCapacity <= 64".into()),
            (a(json!({"maxCapacity": 65})), "service.autoScaling.maxCapacity: need minCapacity <= maxCapacity <= 64".into()),
            (a(json!({"targetTracking": {}})), "service.autoScaling.targetTracking: expected an array, got an object".into()),
            (tt(json!({"targetValue": 0})), format!("{ts}.targetValue: 0 is outside 1..=100")),
            (tt(json!({"targetValue": 101})), format!("{ts}.targetValue: 101 is outside 1..=100")),
            (tt(json!({"targetValue": 50.5})), format!("{ts}.targetValue: expected a percentage, got 50.5")),
            (tt(json!({"targetValue": null})), format!("{ts}.targetValue: missing")),
            (tt(json!({"metric": null})), format!("{ts}.metric: missing; \"ECSServiceAverageCPUUtilization\" or \"ECSServiceAverageMemoryUtilization\"")),
            (tt(json!({"metric": "CPU"})), format!("{ts}.metric: expected \"ECSServiceAverageCPUUtilization\" or \"ECSServiceAverageMemoryUtilization\", got \"CPU\"")),
            (tt(json!({"metric": "ALBRequestCountPerTarget"})), format!("{ts}.metric: not supported by skiff (a skiff node has no load balancer)")),
            (tt(json!({"scaleOutCooldown": 86401})), format!("{ts}.scaleOutCooldown: 86401 is outside 0..=86400")),
            (tt(json!({"scaleInCooldown": -1})), format!("{ts}.scaleInCooldown: -1 is outside 0..=86400")),
            (tt(json!({"disableScaleIn": 1})), format!("{ts}.disableScaleIn: expected true or false, got 1")),
            (tt(json!({"predefinedMetricSpecification": {}})), format!("{ts}.predefinedMetricSpecification: unknown field")),
            (step(json!({"threshold": 1001})), format!("{ss}.threshold: 1001 is outside 0..=1000")),
            (step(json!({"comparison": "GreaterThanThreshold"})), format!("{ss}.comparison: \"GreaterThanThreshold\" is not supported: skiff compares with >= or <= (\"GreaterThanOrEqualToThreshold\", \"LessThanOrEqualToThreshold\")")),
            (step(json!({"comparison": ">="})), format!("{ss}.comparison: expected \"GreaterThanOrEqualToThreshold\" or \"LessThanOrEqualToThreshold\", got \">=\"")),
            (step(json!({"comparison": null})), format!("{ss}.comparison: missing; \"GreaterThanOrEqualToThreshold\" or \"LessThanOrEqualToThreshold\"")),
            (step(json!({"cooldown": 90000})), format!("{ss}.cooldown: 90000 is outside 0..=86400")),
            (step(json!({"adjustmentType": "PercentChangeInCapacity"})), format!("{ss}.adjustmentType: only \"ChangeInCapacity\" is supported (scalingAdjustment is a number of tasks), got \"PercentChangeInCapacity\"")),
            (step(json!({"stepAdjustments": []})), format!("{ss}.stepAdjustments: at least one step")),
            (step(json!({"stepAdjustments": null})), format!("{ss}.stepAdjustments: missing")),
            (step(json!({"stepAdjustments": [{"scalingAdjustment": 1}, {"metricIntervalLowerBound": 10, "metricIntervalUpperBound": 10, "scalingAdjustment": 2}]})),
                format!("{ss}.stepAdjustments[1].metricIntervalUpperBound: 10 is not above metricIntervalLowerBound 10")),
            (step(json!({"stepAdjustments": [{"scalingAdjustment": 65}]})), format!("{ss}.stepAdjustments[0].scalingAdjustment: 65 is outside -64..=64")),
            (step(json!({"stepAdjustments": [{"metricIntervalLowerBound": 0}]})), format!("{ss}.stepAdjustments[0].scalingAdjustment: missing")),
            (step(json!({"stepAdjustments": [{"scalingAdjustment": 1, "lower": 0}]})), format!("{ss}.stepAdjustments[0].lower: unknown field")),
            (sched(json!({"schedule": "cron(0 8 ? * * 2030)"})), format!("{sa}.schedule: \"cron(0 8 ? * * 2030)\": a year other than * is not supported")),
            (sched(json!({"schedule": "0 25 * * *"})), format!("{sa}.schedule: \"0 25 * * *\": hours: 25 is outside 0-23")),
            (sched(json!({"schedule": null})), format!("{sa}.schedule: missing")),
            (sched(json!({"timezone": "Europe/Paris/.."})), format!("{sa}.timezone: \"Europe/Paris/..\": expected \"UTC\", an offset like \"+05:30\" or a zone like \"Europe/Berlin\"")),
            (sched(json!({"minCapacity": 3})), format!("{sa}.maxCapacity: 2 is below minCapacity 3")),
            (sched(json!({"maxCapacity": 65})), format!("{sa}.maxCapacity: 65 is outside 0..=64")),
            (sched(json!({"maxCapacity": null})), format!("{sa}.maxCapacity: missing")),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
        let many: Vec<Value> = (0..9)
            .map(|_| json!({"metric": "ECSServiceAverageCPUUtilization", "targetValue": 50}))
            .collect();
        assert_eq!(
            a(json!({ "targetTracking": many })),
            "service.autoScaling.targetTracking: 9 entries, at most 8 allowed"
        );
    }

    #[test]
    fn a_service_is_neither_scheduled_nor_a_batch() {
        assert_eq!(
            err(task(json!({"service": {}, "schedule": {"rate": 60}}))),
            "service: a service runs all the time: it cannot have a \"schedule\" too (remove \"service\" or \"schedule\")"
        );
        assert_eq!(
            err(task(json!({"batch": {}, "service": {"desiredCount": 2}}))),
            "service: a service runs all the time: it cannot have a \"batch\" too (remove \"service\" or \"batch\")"
        );
        let mut v: Value = serde_json::from_str(DESCRIBE_OUTPUT).expect("json");
        v["taskDefinition"]["service"] = json!({});
        v["taskDefinition"]["batch"] = json!({});
        assert!(err(v).starts_with("taskDefinition.service: a service runs all the time"));
    }

    #[test]
    fn a_service_family_leaves_room_for_the_slot() {
        let long = "s".repeat(61);
        assert_eq!(
            err(task(json!({"family": long, "service": {}}))),
            "family: a service's family is at most 60 characters (its tasks are named family.N)"
        );
        ok(task(json!({"family": "s".repeat(60), "service": {}})));
        ok(task(json!({"family": long})));
    }

    #[test]
    fn minimal_definition_gets_the_documented_defaults() {
        let d = ok(json!({"family": "hello",
            "containerDefinitions": [{"name": "hello", "image": "busybox"}]}));
        assert_eq!(
            d,
            TaskDefinition {
                family: n("hello"),
                revision: 0,
                containers: vec![ContainerDefinition {
                    name: n("hello"),
                    image: "busybox".into(),
                    entry_point: vec![],
                    command: vec![],
                    environment: vec![],
                    cpu: None,
                    memory_mib: None,
                    memory_reservation_mib: None,
                    essential: true,
                    working_directory: None,
                    user: None,
                    health_check: None,
                    stop_timeout_secs: None,
                    depends_on: vec![],
                    port_mappings: vec![],
                    secrets: vec![],
                    security: Default::default(),
                    mount_points: vec![],
                }],
                cpu: None,
                memory_mib: None,
                network_mode: NetworkMode::None,
                restart_policy: RestartPolicy::Never,
                extensions: vec![],
            }
        );
    }

    fn full_json() -> Value {
        json!({
            "family": "web",
            "revision": 7,
            "cpu": "0.5 vCPU",
            "memory": "1 GB",
            "networkMode": "host",
            "restartPolicy": "on-failure",
            "containerDefinitions": [
                {
                    "name": "app",
                    "image": "registry.local:5000/app@sha256:0123",
                    "entryPoint": ["sh", "-c"],
                    "command": ["exec app --port 8080"],
                    "environment": [
                        {"name": "MODE", "value": "edge"},
                        {"name": "EMPTY", "value": ""},
                        {"name": "NOVALUE"}
                    ],
                    "cpu": 256,
                    "memory": 256,
                    "memoryReservation": 128,
                    "essential": true,
                    "workingDirectory": "/srv",
                    "user": "1000:1000"
                },
                {
                    "name": "sidecar",
                    "image": "busybox",
                    "command": ["sleep", "3600"],
                    "essential": false
                }
            ]
        })
    }

    #[test]
    fn full_supported_set_maps_every_field() {
        let d = ok(full_json());
        assert_eq!(d.family, n("web"));
        assert_eq!(d.revision, 7);
        assert_eq!(d.cpu, Some(512));
        assert_eq!(d.memory_mib, Some(1024));
        assert_eq!(d.network_mode, NetworkMode::Host);
        assert_eq!(d.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(d.containers.len(), 2);
        let app = &d.containers[0];
        assert_eq!(app.name, n("app"));
        assert_eq!(app.image, "registry.local:5000/app@sha256:0123");
        assert_eq!(app.entry_point, ["sh", "-c"]);
        assert_eq!(app.command, ["exec app --port 8080"]);
        assert_eq!(
            app.environment,
            vec![
                EnvVar {
                    name: "MODE".into(),
                    value: "edge".into()
                },
                EnvVar {
                    name: "EMPTY".into(),
                    value: String::new()
                },
                EnvVar {
                    name: "NOVALUE".into(),
                    value: String::new()
                },
            ]
        );
        assert_eq!(app.cpu, Some(256));
        assert_eq!(app.memory_mib, Some(256));
        assert_eq!(app.memory_reservation_mib, Some(128));
        assert!(app.essential);
        assert_eq!(app.working_directory.as_deref(), Some("/srv"));
        assert_eq!(app.user.as_deref(), Some("1000:1000"));
        let side = &d.containers[1];
        assert!(!side.essential);
        assert_eq!(side.command, ["sleep", "3600"]);
        assert_eq!(side.cpu, None);
    }

    #[test]
    fn task_cpu_accepts_every_ecs_form() {
        let cases = [
            (json!(256), 256),
            (json!(1024), 1024),
            (json!("256"), 256),
            (json!("1024"), 1024),
            (json!(" 512 "), 512),
            (json!("1 vCPU"), 1024),
            (json!("1vCPU"), 1024),
            (json!("1 vcpu"), 1024),
            (json!("2 VCPU"), 2048),
            (json!("4 vCPUs"), 4096),
            (json!("0.5 vCPU"), 512),
            (json!("0.25 vCPU"), 256),
            (json!(".25 vCPU"), 256),
            (json!("0.125 vCPU"), 128),
            (json!("1.0 vCPU"), 1024),
            (json!("1. vCPU"), 1024),
            (json!("16 vCPU"), 16384),
        ];
        for (cpu, units) in cases {
            assert_eq!(
                ok(task(json!({ "cpu": cpu.clone() }))).cpu,
                Some(units),
                "{cpu}"
            );
        }
    }

    #[test]
    fn task_cpu_refuses_what_is_not_cpu_units() {
        let cases = [
            (json!("lots"), "cpu: expected CPU units (a number, or a string such as \"256\" or \"0.5 vCPU\"), got \"lots\""),
            (json!("2 cores"), "got \"2 cores\""),
            (json!(""), "got \"\""),
            (json!("vCPU"), "got \"vCPU\""),
            (json!("1..5 vCPU"), "got \"1..5 vCPU\""),
            (json!("-1"), "got \"-1\""),
            (json!("1e3"), "got \"1e3\""),
            (json!(true), "got true"),
            (json!([1]), "got an array"),
            (json!(1.5), "got 1.5"),
            (json!(-5), "got -5"),
            (json!("0.3 vCPU"), "cpu: \"0.3 vCPU\" is not a whole number of CPU units"),
            (json!("0.0000000001 vCPU"), "is not a whole number of CPU units"),
            (json!("5000000 vCPU"), "cpu: \"5000000 vCPU\" is out of range, at most 4294967295 CPU units"),
            (json!("99999999999999999999999 vCPU"), "is out of range"),
            (json!(4294967296u64), "cpu: 4294967296 is out of range, at most 4294967295"),
            (json!(0), "cpu: must be greater than 0"),
            (json!("0 vCPU"), "cpu: must be greater than 0"),
        ];
        for (cpu, want) in cases {
            let e = err(task(json!({ "cpu": cpu.clone() })));
            assert!(e.contains(want), "{cpu}: {e}");
            assert!(e.starts_with("cpu: "), "{e}");
        }
    }

    #[test]
    fn task_memory_accepts_every_ecs_form() {
        let cases = [
            (json!(512), 512),
            (json!("512"), 512),
            (json!("512 MiB"), 512),
            (json!("512MB"), 512),
            (json!("1GB"), 1024),
            (json!("1 GB"), 1024),
            (json!("1 gb"), 1024),
            (json!("2 GiB"), 2048),
            (json!("0.5 GB"), 512),
            (json!("0.5GB"), 512),
            (json!("1.5 GB"), 1536),
            (json!("0.25 GB"), 256),
            (json!("30 GB"), 30720),
        ];
        for (mem, mib) in cases {
            assert_eq!(
                ok(task(json!({ "memory": mem.clone() }))).memory_mib,
                Some(mib),
                "{mem}"
            );
        }
    }

    #[test]
    fn task_memory_refuses_what_is_not_mib() {
        let cases = [
            (json!("lots"), "memory: expected MiB (a number, or a string such as \"512\" or \"1 GB\"), got \"lots\""),
            (json!("1 TB"), "got \"1 TB\""),
            (json!("GB"), "got \"GB\""),
            (json!("1 G B"), "got \"1 G B\""),
            (json!("0.3 GB"), "memory: \"0.3 GB\" is not a whole number of MiB"),
            (json!("512.5"), "memory: \"512.5\" is not a whole number of MiB"),
            (json!("4194304 GB"), "memory: \"4194304 GB\" is out of range"),
            (json!({}), "got an object"),
            (json!(2), "memory: at least 4 MiB"),
        ];
        for (mem, want) in cases {
            let e = err(task(json!({ "memory": mem.clone() })));
            assert!(e.contains(want), "{mem}: {e}");
        }
    }

    #[test]
    fn scale_decimal_is_exact() {
        assert_eq!(scale_decimal("0.5", 1024), Ok(512));
        assert_eq!(scale_decimal("0.0009765625", 1024), Ok(1));
        assert_eq!(scale_decimal("0.00097656250000", 1024), Ok(1));
        assert_eq!(scale_decimal("0.1", 1024), Err(ScaleError::NotWhole));
        assert_eq!(scale_decimal("3", 1), Ok(3));
        assert_eq!(scale_decimal("3.5", 1), Err(ScaleError::NotWhole));
        assert_eq!(scale_decimal(".", 1), Err(ScaleError::Syntax));
        assert_eq!(scale_decimal("", 1), Err(ScaleError::Syntax));
        assert_eq!(scale_decimal("1.2.3", 1), Err(ScaleError::Syntax));
        assert_eq!(
            scale_decimal("18446744073709551615", 1024),
            Err(ScaleError::Overflow)
        );
        assert_eq!(
            scale_decimal("99999999999999999999999", 1),
            Err(ScaleError::Overflow)
        );
    }

    /// What `aws ecs describe-task-definition --include TAGS` prints for an EC2 definition.
    const DESCRIBE_OUTPUT: &str = r#"{
    "taskDefinition": {
        "taskDefinitionArn": "arn:aws:ecs:eu-west-1:123456789012:task-definition/ticker:3",
        "containerDefinitions": [
            {
                "name": "ticker",
                "image": "busybox",
                "cpu": 0,
                "memory": 32,
                "portMappings": [],
                "essential": true,
                "command": [
                    "sh",
                    "-c",
                    "while true; do date; sleep 2; done"
                ],
                "environment": [
                    {
                        "name": "TZ",
                        "value": "UTC"
                    }
                ],
                "environmentFiles": [],
                "mountPoints": [],
                "volumesFrom": [],
                "ulimits": [],
                "systemControls": []
            }
        ],
        "family": "ticker",
        "networkMode": "host",
        "revision": 3,
        "volumes": [],
        "status": "ACTIVE",
        "requiresAttributes": [
            {
                "name": "com.amazonaws.ecs.capability.docker-remote-api.1.17"
            }
        ],
        "placementConstraints": [],
        "compatibilities": [
            "EXTERNAL",
            "EC2"
        ],
        "requiresCompatibilities": [
            "EC2"
        ],
        "registeredAt": "2026-11-02T10:21:44.512000+01:00",
        "registeredBy": "arn:aws:iam::123456789012:user/ops"
    },
    "tags": [
        {
            "key": "team",
            "value": "edge"
        }
    ]
}"#;

    fn describe_expected() -> TaskDefinition {
        TaskDefinition {
            family: n("ticker"),
            revision: 3,
            containers: vec![ContainerDefinition {
                name: n("ticker"),
                image: "busybox".into(),
                entry_point: vec![],
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "while true; do date; sleep 2; done".into(),
                ],
                environment: vec![EnvVar {
                    name: "TZ".into(),
                    value: "UTC".into(),
                }],
                cpu: None,
                memory_mib: Some(32),
                memory_reservation_mib: None,
                essential: true,
                working_directory: None,
                user: None,
                health_check: None,
                stop_timeout_secs: None,
                depends_on: vec![],
                port_mappings: vec![],
                secrets: vec![],
                security: Default::default(),
                mount_points: vec![],
            }],
            cpu: None,
            memory_mib: None,
            network_mode: NetworkMode::Host,
            restart_policy: RestartPolicy::Never,
            extensions: vec![],
        }
    }

    #[test]
    fn describe_task_definition_output_is_accepted() {
        let d = parse_task_definition(DESCRIBE_OUTPUT.as_bytes()).expect("describe output");
        assert_eq!(d, describe_expected());
    }

    #[test]
    fn inner_task_definition_of_describe_output_is_accepted_too() {
        let v: Value = serde_json::from_str(DESCRIBE_OUTPUT).expect("json");
        assert_eq!(ok(v["taskDefinition"].clone()), describe_expected());
    }

    #[test]
    fn errors_inside_describe_output_name_the_full_path() {
        let mut v: Value = serde_json::from_str(DESCRIBE_OUTPUT).expect("json");
        v["taskDefinition"]["containerDefinitions"][0]["hostname"] = json!("box");
        assert_eq!(
            err(v.clone()),
            "taskDefinition.containerDefinitions[0].hostname: not supported by skiff"
        );
        v["taskDefinition"]["containerDefinitions"][0]["hostname"] = json!("");
        v["taskDefinition"]["containerDefinitions"][0]["memory"] = json!(1);
        assert_eq!(
            err(v.clone()),
            "taskDefinition.containerDefinitions[0].memory: at least 4 MiB"
        );
        v["taskDefinition"]["containerDefinitions"][0]["memory"] = json!(32);
        v["nextToken"] = json!("x");
        assert_eq!(err(v), "nextToken: unknown field");
        assert_eq!(
            err(json!({"taskDefinition": []})),
            "taskDefinition: expected an object, got an array"
        );
        assert_eq!(
            err(json!({"taskDefinition": null})),
            "taskDefinition: expected an object, got null"
        );
    }

    #[test]
    fn read_only_describe_fields_are_ignored_whatever_their_value() {
        let d = ok(task(json!({
            "taskDefinitionArn": "arn:aws:ecs:us-east-1:1:task-definition/app:1",
            "status": "INACTIVE",
            "requiresAttributes": [{"name": "ecs.capability.execution-role-awslogs"}],
            "compatibilities": ["EC2", "FARGATE"],
            "registeredAt": 1_700_000_000,
            "registeredBy": "someone",
            "deregisteredAt": "2026-01-01T00:00:00Z",
            "tags": [{"key": "a", "value": "b"}]
        })));
        assert_eq!(d.family, n("app"));
        assert_eq!(
            err(task(json!({"tags": "x"}))),
            "tags: expected an array of {\"key\": ..., \"value\": ...} objects, got \"x\""
        );
    }

    #[test]
    fn unsupported_set_is_refused_by_path() {
        let e = parse(&container(json!({"hostname": "box"}))).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "containerDefinitions[0].hostname: not supported by skiff"
        );
        assert_eq!(e.path(), Some("containerDefinitions[0].hostname"));
        assert!(matches!(e, TaskDefError::Unsupported { .. }));
        ok(container(json!({"hostname": ""})));
        ok(container(json!({"hostname": null})));
    }

    fn bridge(c: serde_json::Value) -> serde_json::Value {
        let mut t = container(c);
        t["networkMode"] = json!("bridge");
        t
    }

    fn awsvpc(c: serde_json::Value) -> serde_json::Value {
        let mut t = container(c);
        t["networkMode"] = json!("awsvpc");
        t
    }

    #[test]
    fn port_mappings_in_awsvpc_and_host_mode_are_the_containers_own_ports() {
        for mode in ["awsvpc", "host"] {
            let d = ok(with(
                json!({ "networkMode": mode }),
                json!({"portMappings": [
                    {"containerPort": 80, "hostPort": 80, "protocol": "tcp"},
                    {"containerPort": 53, "protocol": "udp"},
                    {"containerPort": 8080, "hostPort": 0}
                ]}),
            ));
            // Nothing is mapped: hostPort equal to containerPort is the same as none.
            let pm = |container_port, protocol| PortMapping {
                container_port,
                host_port: None,
                protocol,
            };
            assert_eq!(
                d.containers[0].port_mappings,
                vec![
                    pm(80, Protocol::Tcp),
                    pm(53, Protocol::Udp),
                    pm(8080, Protocol::Tcp)
                ]
            );
            // Written as ECS shows them: hostPort = containerPort; read back the same.
            let v = to_ecs_json(&d);
            assert_eq!(v["networkMode"], json!(mode));
            assert_eq!(
                v["containerDefinitions"][0]["portMappings"][1],
                json!({"containerPort": 53, "hostPort": 53, "protocol": "udp"})
            );
            assert_eq!(ok(v), d);
        }
    }

    #[test]
    fn port_mappings_in_bridge_mode() {
        let d = ok(bridge(json!({"portMappings": [
            {"containerPort": 80, "hostPort": 0, "protocol": "tcp"},
            {"containerPort": 53, "hostPort": 5353, "protocol": "udp"},
            {"containerPort": 8080},
            {"containerPort": 9090, "hostPort": null, "protocol": null, "name": "", "appProtocol": null}
        ]})));
        assert_eq!(d.network_mode, NetworkMode::Bridge);
        let pm = |container_port, host_port, protocol| PortMapping {
            container_port,
            host_port,
            protocol,
        };
        assert_eq!(
            d.containers[0].port_mappings,
            vec![
                pm(80, None, Protocol::Tcp),
                pm(53, Some(5353), Protocol::Udp),
                pm(8080, None, Protocol::Tcp),
                pm(9090, None, Protocol::Tcp),
            ]
        );
        ok(container(json!({"portMappings": []})));
        ok(bridge(
            json!({"portMappings": [{"containerPort": 53, "protocol": "udp"},
            {"containerPort": 53, "protocol": "tcp"}]}),
        ));
    }

    #[test]
    fn port_mapping_errors_name_their_json_path() {
        for (c, want) in [
            (
                container(json!({"portMappings": [{"containerPort": 80}]})),
                "containerDefinitions[0].portMappings: port mappings need networkMode \"bridge\", \"awsvpc\" or \"host\" (a \"none\" task has only loopback)",
            ),
            (
                awsvpc(json!({"portMappings": [{"containerPort": 80, "hostPort": 8080}]})),
                "containerDefinitions[0].portMappings[0].hostPort: 8080 differs from containerPort 80: with networkMode \"awsvpc\" nothing is mapped, the container's own port is reached (leave hostPort out or make it 80)",
            ),
            (
                with(json!({"networkMode": "host"}), json!({"portMappings": [{"containerPort": 53, "protocol": "udp"}, {"containerPort": 80, "hostPort": 81}]})),
                "containerDefinitions[0].portMappings[1].hostPort: 81 differs from containerPort 80: with networkMode \"host\" nothing is mapped, the container's own port is reached (leave hostPort out or make it 80)",
            ),
            (
                awsvpc(json!({"portMappings": [{"containerPort": 80}, {"containerPort": 80, "hostPort": 80}]})),
                "containerDefinitions[0].portMappings[1].containerPort: container port 80 is mapped twice in this task",
            ),
            (
                bridge(json!({"portMappings": {"containerPort": 80}})),
                "containerDefinitions[0].portMappings: expected an array of {containerPort, hostPort, protocol}, got an object",
            ),
            (
                bridge(json!({"portMappings": [{"hostPort": 80}]})),
                "containerDefinitions[0].portMappings[0].containerPort: missing",
            ),
            (
                bridge(json!({"portMappings": [{"containerPort": 0}]})),
                "containerDefinitions[0].portMappings[0].containerPort: 0 is not a port: use 1..=65535",
            ),
            (
                bridge(json!({"portMappings": [{"containerPort": 80, "hostPort": 70000}]})),
                "containerDefinitions[0].portMappings[0].hostPort: 70000 is not a port: use 1..=65535",
            ),
            (
                bridge(json!({"portMappings": [{"containerPort": 80, "protocol": "sctp"}]})),
                "containerDefinitions[0].portMappings[0].protocol: expected \"tcp\" or \"udp\", got \"sctp\"",
            ),
            (
                bridge(json!({"portMappings": [{"containerPort": 80, "hostport": 80}]})),
                "containerDefinitions[0].portMappings[0].hostport: unknown field (did you mean \"hostPort\"?)",
            ),
            (
                bridge(json!({"portMappings": [{"containerPort": 80, "appProtocol": "http"}]})),
                "containerDefinitions[0].portMappings[0].appProtocol: not supported by skiff (a Service Connect setting; skiff maps ports only)",
            ),
            (
                bridge(json!({"portMappings": [{"containerPort": 80}, {"containerPort": 80, "hostPort": 8080}]})),
                "containerDefinitions[0].portMappings[1].containerPort: container port 80 is mapped twice in this task",
            ),
            (
                bridge(json!({"portMappings": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81, "hostPort": 8080}]})),
                "containerDefinitions[0].portMappings[1].hostPort: host port 8080 is mapped twice in this task",
            ),
        ] {
            assert_eq!(err(c), want);
        }
        let many: Vec<_> = (1..=33).map(|p| json!({"containerPort": p})).collect();
        assert_eq!(
            err(bridge(json!({ "portMappings": many }))),
            "containerDefinitions[0].portMappings: 33 entries, at most 32 allowed"
        );
    }

    #[test]
    fn every_unsupported_ecs_key_is_accepted_empty_and_refused_set() {
        for (key, _) in CONTAINER_UNSUPPORTED {
            for empty in [json!(null), json!(false), json!(""), json!([]), json!({})] {
                ok(container(json!({ *key: empty })));
            }
            let e = err(container(json!({ *key: true })));
            assert!(
                e.starts_with(&format!(
                    "containerDefinitions[0].{key}: not supported by skiff"
                )),
                "{e}"
            );
        }
        for (key, _) in TASK_UNSUPPORTED {
            for empty in [json!(null), json!(false), json!(""), json!([]), json!({})] {
                ok(task(json!({ *key: empty })));
            }
            let e = err(task(json!({ *key: "x" })));
            assert!(
                e.starts_with(&format!("{key}: not supported by skiff")),
                "{e}"
            );
        }
    }

    #[test]
    fn empty_means_empty_all_the_way_down() {
        ok(container(
            json!({"linuxParameters": {"capabilities": {"add": [], "drop": []}, "devices": [], "initProcessEnabled": false}}),
        ));
        ok(container(json!({"restartPolicy": {"enabled": false}})));
        let e = err(container(json!({"restartPolicy": {"enabled": true}})));
        assert!(e.contains("set the task-level \"restartPolicy\""), "{e}");
        let e = err(container(json!({"startTimeout": 0})));
        assert!(
            e.starts_with("containerDefinitions[0].startTimeout: not supported by skiff"),
            "{e}"
        );
        let e = err(container(
            json!({"linuxParameters": {"sharedMemorySize": 64}}),
        ));
        assert!(
            e.starts_with(
                "containerDefinitions[0].linuxParameters.sharedMemorySize: not supported"
            ),
            "{e}"
        );
        let e = err(task(json!({"executionRoleArn": "arn:aws:iam::1:role/x"})));
        assert_eq!(
            e,
            "executionRoleArn: not supported by skiff (a skiff node has no IAM roles)"
        );
    }

    #[test]
    fn typo_keys_are_refused_even_when_empty() {
        let e = parse(&container(json!({"imagee": "busybox"}))).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "containerDefinitions[0].imagee: unknown field (did you mean \"image\"?)"
        );
        assert!(matches!(e, TaskDefError::UnknownField { .. }));
        assert_eq!(
            err(container(json!({"enviroment": []}))),
            "containerDefinitions[0].enviroment: unknown field (did you mean \"environment\"?)"
        );
        assert_eq!(
            err(container(json!({"Memory": null}))),
            "containerDefinitions[0].Memory: unknown field (did you mean \"memory\"?)"
        );
        assert_eq!(
            err(task(json!({"famliy": "x"}))),
            "famliy: unknown field (did you mean \"family\"?)"
        );
        assert_eq!(err(task(json!({"zzz": ""}))), "zzz: unknown field");
        assert_eq!(
            err(container(
                json!({"environment": [{"name": "A", "valu": "1"}]})
            )),
            "containerDefinitions[0].environment[0].valu: unknown field (did you mean \"value\"?)"
        );
        assert_eq!(
            err(task(json!({"runtimePlatform": {"os": "LINUX"}}))),
            "runtimePlatform.os: unknown field"
        );
    }

    #[test]
    fn keys_at_the_wrong_level_say_where_they_belong() {
        assert_eq!(
            err(task(json!({"image": "busybox"}))),
            "image: unknown field (a container field: it belongs in an entry of containerDefinitions)"
        );
        assert_eq!(
            err(container(json!({"networkMode": "host"}))),
            "containerDefinitions[0].networkMode: unknown field (a task-level field: it belongs next to containerDefinitions)"
        );
    }

    #[test]
    fn huge_unknown_keys_give_a_short_message() {
        let key = "k".repeat(10_000);
        let e = err(container(json!({ key: 1 })));
        assert!(e.len() < 400, "{} bytes", e.len());
        assert!(e.ends_with(": unknown field"), "{e}");
        let e = err(task(json!({"networkMode": "x".repeat(10_000)})));
        assert!(e.len() < 200, "{} bytes", e.len());
    }

    #[test]
    fn wrong_types_are_named_with_what_was_expected() {
        let two = |c1: Value| {
            json!({"family": "app", "containerDefinitions": [
                {"name": "a", "image": "busybox"}, c1]})
        };
        assert_eq!(
            err(two(
                json!({"name": "b", "image": "busybox", "memory": "lots"})
            )),
            "containerDefinitions[1].memory: expected a number of MiB, got \"lots\""
        );
        let cases = [
            (json!({"family": 5, "containerDefinitions": []}), "family: expected a string, got 5"),
            (task(json!({"revision": "3"})), "revision: expected a revision number, got \"3\""),
            (task(json!({"revision": -1})), "revision: expected a revision number, got -1"),
            (task(json!({"containerDefinitions": {}})), "containerDefinitions: expected an array of container definitions, got an object"),
            (task(json!({"containerDefinitions": ["busybox"]})), "containerDefinitions[0]: expected a container definition object, got \"busybox\""),
            (task(json!({"networkMode": 1})), "networkMode: expected a string, got 1"),
            (container(json!({"command": "echo hi"})), "containerDefinitions[0].command: expected an array of strings, got \"echo hi\""),
            (container(json!({"entryPoint": ["sh", 1]})), "containerDefinitions[0].entryPoint[1]: expected a string, got 1"),
            (container(json!({"environment": {"A": "1"}})), "containerDefinitions[0].environment: expected an array of {\"name\": ..., \"value\": ...} objects, got an object"),
            (container(json!({"environment": ["A=1"]})), "containerDefinitions[0].environment[0]: expected an object {\"name\": ..., \"value\": ...}, got \"A=1\""),
            (container(json!({"environment": [{"name": "PORT", "value": 8080}]})), "containerDefinitions[0].environment[0].value: expected a string, got 8080"),
            (container(json!({"environment": [{"value": "1"}]})), "containerDefinitions[0].environment[0].name: missing"),
            (container(json!({"essential": "yes"})), "containerDefinitions[0].essential: expected true or false, got \"yes\""),
            (container(json!({"cpu": "256"})), "containerDefinitions[0].cpu: expected a number of CPU units, got \"256\""),
            (container(json!({"memoryReservation": 1.5})), "containerDefinitions[0].memoryReservation: expected a number of MiB, got 1.5"),
            (container(json!({"memory": 5_000_000_000u64})), "containerDefinitions[0].memory: 5000000000 is out of range, at most 4294967295"),
            (container(json!({"memory": 1e30})), "containerDefinitions[0].memory: 1e+30 is out of range, at most 4294967295"),
            (container(json!({"workingDirectory": ["/srv"]})), "containerDefinitions[0].workingDirectory: expected a string, got an array"),
            (container(json!({"user": 1000})), "containerDefinitions[0].user: expected a string, got 1000"),
            (container(json!({"name": "my app"})), "containerDefinitions[0].name: name contains ' '; only letters, digits, '_', '.' and '-' are allowed"),
            (container(json!({"image": null})), "containerDefinitions[0].image: missing; every container needs an image"),
            (json!({"family": "app", "containerDefinitions": [{"image": "busybox"}]}), "containerDefinitions[0].name: missing; every container needs a name"),
            (json!({"containerDefinitions": [{"name": "a", "image": "busybox"}]}), "family: missing; a task definition needs a family"),
            (json!({"family": "app"}), "containerDefinitions: missing; a task needs at least one container"),
            (json!([]), "task definition: expected a JSON object (an ECS task definition), got an array"),
            (json!("x"), "task definition: expected a JSON object (an ECS task definition), got \"x\""),
        ];
        for (v, want) in cases {
            assert_eq!(err(v), want);
        }
    }

    #[test]
    fn family_must_be_a_skiff_name() {
        assert_eq!(
            err(task(json!({"family": "x".repeat(65)}))),
            "family: name is 65 bytes long, at most 64 allowed"
        );
        assert_eq!(err(task(json!({"family": ""}))), "family: name is empty");
        assert_eq!(
            err(task(json!({"family": "a/b"}))),
            "family: name contains '/'; only letters, digits, '_', '.' and '-' are allowed"
        );
    }

    #[test]
    fn null_means_absent_for_supported_keys() {
        let d = ok(with(
            json!({"revision": null, "cpu": null, "memory": null, "networkMode": null, "restartPolicy": null,
                   "runtimePlatform": null, "requiresCompatibilities": null, "tags": null}),
            json!({"command": null, "entryPoint": null, "environment": null, "cpu": null, "memory": null,
                   "memoryReservation": null, "essential": null, "workingDirectory": null, "user": null}),
        ));
        assert_eq!(d, ok(with(json!({}), json!({}))));
        let d = ok(container(
            json!({"cpu": 0, "workingDirectory": "", "user": ""}),
        ));
        assert_eq!(d.containers[0].cpu, None);
        assert_eq!(d.containers[0].working_directory, None);
        assert_eq!(d.containers[0].user, None);
    }

    #[test]
    fn network_modes() {
        assert_eq!(ok(task(json!({}))).network_mode, NetworkMode::None);
        assert_eq!(
            ok(task(json!({"networkMode": "none"}))).network_mode,
            NetworkMode::None
        );
        assert_eq!(
            ok(task(json!({"networkMode": ""}))).network_mode,
            NetworkMode::None
        );
        assert_eq!(
            ok(task(json!({"networkMode": "host"}))).network_mode,
            NetworkMode::Host
        );
        assert_eq!(
            ok(task(json!({"networkMode": "bridge"}))).network_mode,
            NetworkMode::Bridge
        );
        assert_eq!(
            ok(task(json!({"networkMode": "awsvpc"}))).network_mode,
            NetworkMode::Awsvpc
        );
        assert_eq!(
            err(task(json!({"networkMode": "Host"}))),
            "networkMode: expected \"none\", \"host\", \"bridge\" or \"awsvpc\", got \"Host\""
        );
    }

    #[test]
    fn restart_policies() {
        assert_eq!(ok(task(json!({}))).restart_policy, RestartPolicy::Never);
        for (s, p) in [
            ("never", RestartPolicy::Never),
            ("on-failure", RestartPolicy::OnFailure),
            ("always", RestartPolicy::Always),
        ] {
            assert_eq!(ok(task(json!({ "restartPolicy": s }))).restart_policy, p);
            assert_eq!(restart_policy_str(p), s);
        }
        assert_eq!(
            err(task(json!({"restartPolicy": "unless-stopped"}))),
            "restartPolicy: expected \"never\", \"on-failure\" or \"always\", got \"unless-stopped\""
        );
        let e = err(task(json!({"restartPolicy": {"enabled": true}})));
        assert!(e.contains("not ECS's container-level object"), "{e}");
    }

    #[test]
    fn runtime_platform_linux_is_accepted_architecture_is_not() {
        ok(task(
            json!({"runtimePlatform": {"operatingSystemFamily": "LINUX"}}),
        ));
        ok(task(
            json!({"runtimePlatform": {"operatingSystemFamily": "LINUX", "cpuArchitecture": null}}),
        ));
        ok(task(json!({"runtimePlatform": {}})));
        assert_eq!(
            err(task(json!({"runtimePlatform": {"operatingSystemFamily": "WINDOWS_SERVER_2022_CORE"}}))),
            "runtimePlatform.operatingSystemFamily: skiff runs Linux containers only (\"LINUX\"), got \"WINDOWS_SERVER_2022_CORE\""
        );
        let e = err(task(
            json!({"runtimePlatform": {"operatingSystemFamily": "LINUX", "cpuArchitecture": "ARM64"}}),
        ));
        assert!(e.starts_with("runtimePlatform.cpuArchitecture: not supported by skiff (a node runs the image built for its own architecture"), "{e}");
        assert_eq!(
            err(task(json!({"runtimePlatform": "LINUX"}))),
            "runtimePlatform: expected an object, got \"LINUX\""
        );
    }

    #[test]
    fn requires_compatibilities_ec2_and_external_only() {
        ok(task(json!({"requiresCompatibilities": ["EC2"]})));
        ok(task(
            json!({"requiresCompatibilities": ["EXTERNAL", "EC2"]}),
        ));
        ok(task(json!({"requiresCompatibilities": []})));
        let e = err(task(json!({"requiresCompatibilities": ["EC2", "FARGATE"]})));
        assert_eq!(e, "requiresCompatibilities[1]: not supported by skiff (a skiff node is a machine of your own: use EC2 or EXTERNAL)");
        assert_eq!(
            err(task(json!({"requiresCompatibilities": ["ec2"]}))),
            "requiresCompatibilities[0]: expected \"EC2\", \"EXTERNAL\" or \"FARGATE\", got \"ec2\""
        );
        assert_eq!(
            err(task(json!({"requiresCompatibilities": "EC2"}))),
            "requiresCompatibilities: expected an array of launch types, got \"EC2\""
        );
    }

    #[test]
    fn environment_names_are_checked_where_they_are() {
        assert_eq!(
            err(container(
                json!({"environment": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]})
            )),
            "containerDefinitions[0].environment[1].name: duplicate variable \"A\""
        );
        assert_eq!(
            err(container(
                json!({"environment": [{"name": "A=B", "value": "1"}]})
            )),
            "containerDefinitions[0].environment[0].name: invalid variable name \"A=B\""
        );
        assert_eq!(
            err(container(
                json!({"environment": [{"name": "", "value": "1"}]})
            )),
            "containerDefinitions[0].environment[0].name: invalid variable name \"\""
        );
    }

    #[test]
    fn eleven_containers_are_too_many() {
        let containers: Vec<Value> = (0..11)
            .map(|i| json!({"name": format!("c{i}"), "image": "busybox"}))
            .collect();
        assert_eq!(
            err(json!({"family": "big", "containerDefinitions": containers})),
            "containerDefinitions: 11 entries, at most 10 allowed"
        );
        let ten: Vec<Value> = containers.into_iter().take(10).collect();
        assert_eq!(
            ok(json!({"family": "big", "containerDefinitions": ten}))
                .containers
                .len(),
            10
        );
    }

    #[test]
    fn validate_errors_are_reported_with_their_path() {
        assert_eq!(
            err(json!({"family": "app", "containerDefinitions": [
                {"name": "a", "image": "busybox", "essential": false},
                {"name": "b", "image": "busybox", "essential": false}]})),
            "containerDefinitions: at least one container must be essential"
        );
        assert_eq!(
            err(json!({"family": "app", "containerDefinitions": []})),
            "containerDefinitions: a task needs at least one container"
        );
        assert_eq!(
            err(json!({"family": "app", "containerDefinitions": [
                {"name": "a", "image": "busybox"}, {"name": "a", "image": "busybox"}]})),
            "containerDefinitions[1].name: duplicate container name a"
        );
        assert_eq!(
            err(container(json!({"image": ""}))),
            "containerDefinitions[0].image: is empty"
        );
        assert_eq!(
            err(container(json!({"workingDirectory": "srv"}))),
            "containerDefinitions[0].workingDirectory: must be an absolute path"
        );
        assert_eq!(
            err(container(json!({"memory": 64, "memoryReservation": 128}))),
            "containerDefinitions[0].memoryReservation: greater than memory"
        );
        assert_eq!(
            err(container(json!({"memory": 0}))),
            "containerDefinitions[0].memory: at least 4 MiB"
        );
        assert_eq!(
            err(container(json!({"image": "x".repeat(600)}))),
            "containerDefinitions[0].image: 600 bytes long, at most 512 allowed"
        );
        let e = err(container(json!({"command": vec!["x"; 300]})));
        assert_eq!(
            e,
            "containerDefinitions[0].command: 300 entries, at most 256 allowed"
        );
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let big = vec![b' '; MAX_INPUT + 1];
        assert_eq!(
            parse_task_definition(&big),
            Err(TaskDefError::TooLarge {
                len: MAX_INPUT + 1,
                max: MAX_INPUT
            })
        );
        assert_eq!(
            parse_task_definition(&big)
                .expect_err("too large")
                .to_string(),
            "task definition is 65537 bytes, at most 65536 allowed"
        );
        // Exactly at the bound is fine.
        let mut at = serde_json::to_vec(&task(json!({}))).expect("json");
        at.resize(MAX_INPUT, b' ');
        parse_task_definition(&at).expect("64 KiB exactly");
    }

    #[test]
    fn invalid_json_reports_line_and_column() {
        let e =
            parse_task_definition(b"{\n  \"family\": \"a\",\n  \"containerDefinitions\": [,]\n}")
                .expect_err("invalid");
        let TaskDefError::Json {
            line,
            column,
            reason,
        } = &e
        else {
            panic!("{e:?}");
        };
        assert_eq!((*line, *column), (3, 28));
        assert!(!reason.contains("line"), "{reason}");
        assert!(
            e.to_string()
                .starts_with("invalid JSON at line 3 column 28: "),
            "{e}"
        );

        let e = parse_task_definition(b"").expect_err("empty");
        assert!(
            e.to_string()
                .starts_with("invalid JSON at line 1 column 0: EOF"),
            "{e}"
        );
        let e = parse_task_definition(b"{} {}").expect_err("trailing");
        assert!(e.to_string().contains("trailing characters"), "{e}");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let e = parse_task_definition(deep.as_bytes()).expect_err("deep");
        assert!(e.to_string().contains("recursion limit"), "{e}");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = parse_task_definition(
            br#"{"family": "a", "containerDefinitions": [{"name": "c", "image": "busybox", "image": "evil"}]}"#,
        )
        .expect_err("duplicate");
        assert!(matches!(e, TaskDefError::Json { line: 1, .. }), "{e:?}");
        assert!(e.to_string().contains("duplicate key \"image\""), "{e}");
    }

    #[test]
    fn byte_order_mark_is_tolerated() {
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend(serde_json::to_vec(&task(json!({}))).expect("json"));
        parse_task_definition(&bytes).expect("bom");
    }

    #[test]
    fn to_ecs_json_round_trips() {
        let defs = [
            ok(full_json()),
            ok(task(json!({}))),
            ok(task(
                json!({"restartPolicy": "always", "cpu": 2048, "memory": "0.5 GB"}),
            )),
            describe_expected(),
            ok(task(json!({ "service": full_service() }))),
            ok(container(json!({"stopTimeout": 45, "healthCheck": {
                "command": ["CMD", "/bin/check", "--deep"], "interval": 15, "timeout": 3,
                "retries": 2, "startPeriod": 20}}))),
            ok(container(
                json!({"healthCheck": {"command": ["TCP", "80"]}}),
            )),
            ok(bridge(json!({"portMappings": [{"containerPort": 80},
                {"containerPort": 53, "hostPort": 5353, "protocol": "udp"}]}))),
            ok(awsvpc(json!({"portMappings": [{"containerPort": 80},
                {"containerPort": 53, "hostPort": 53, "protocol": "udp"}]}))),
        ];
        for d in defs {
            let v = to_ecs_json(&d);
            let bytes = serde_json::to_vec_pretty(&v).expect("json");
            assert_eq!(
                parse_task_definition(&bytes).expect("round trip"),
                d,
                "{v:#}"
            );
        }
    }

    #[test]
    fn to_ecs_json_speaks_ecs() {
        let v = to_ecs_json(&ok(full_json()));
        assert_eq!(v["cpu"], json!("512"));
        assert_eq!(v["memory"], json!("1024"));
        assert_eq!(v["networkMode"], json!("host"));
        assert_eq!(v["restartPolicy"], json!("on-failure"));
        assert_eq!(v["revision"], json!(7));
        assert_eq!(
            v["containerDefinitions"][0]["memoryReservation"],
            json!(128)
        );
        assert_eq!(
            v["containerDefinitions"][0]["entryPoint"],
            json!(["sh", "-c"])
        );
        assert_eq!(
            v["containerDefinitions"][0]["environment"][0],
            json!({"name": "MODE", "value": "edge"})
        );
        assert_eq!(v["containerDefinitions"][1]["essential"], json!(false));
        assert!(v["containerDefinitions"][1].get("cpu").is_none());
        let min = to_ecs_json(&ok(task(json!({}))));
        assert!(min.get("revision").is_none() && min.get("cpu").is_none());
    }

    #[test]
    fn examples_parse() {
        let hello =
            parse_task_definition(include_bytes!("../../examples/hello.json")).expect("hello");
        assert_eq!(hello.restart_policy, RestartPolicy::Never);
        assert_eq!(hello.containers[0].image, "busybox");
        assert_eq!(hello.containers[0].command, ["echo", "hello"]);

        let service =
            parse_task_definition(include_bytes!("../../examples/service.json")).expect("service");
        assert_eq!(service.restart_policy, RestartPolicy::Always);
        assert_eq!(service.containers[0].memory_mib, Some(32));

        let ticker = parse_task_definition(include_bytes!("../../examples/demo/ticker.json"))
            .expect("ticker");
        assert_eq!(ticker.family, n("ticker"));
        assert_eq!(ticker.restart_policy, RestartPolicy::Always);
        assert_eq!(ticker.containers[0].memory_mib, Some(32));

        let once = parse_task_definition(include_bytes!("../../examples/demo/hello-once.json"))
            .expect("hello-once");
        assert_eq!(once.family, n("hello-once"));
        assert_eq!(once.restart_policy, RestartPolicy::Never);
        assert_eq!(once.containers[0].environment[0].name, "GREETING");
        let web = parse_task_definition(include_bytes!("../../examples/web-service.json"))
            .expect("web-service");
        let svc = service_of(&web);
        assert_eq!(svc.desired_count, 3);
        assert_eq!(svc.circuit_breaker, Some(CircuitBreaker { rollback: true }));
        let scaling = svc.scaling.as_ref().expect("auto scaling");
        assert_eq!(scaling.target_tracking[0].metric, ScalingMetric::Cpu);
        assert!(matches!(
            web.containers[0].health_check.as_ref().map(|h| &h.test),
            Some(HealthTest::Shell(_))
        ));
        assert_eq!(ok(to_ecs_json(&web)), web);
        for d in [&hello, &service, &ticker, &once, &web] {
            assert!(d.containers.iter().all(|c| c.image == "busybox"));
        }
    }

    #[test]
    fn read_task_file_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("hello.json");
        std::fs::write(&good, include_bytes!("../../examples/hello.json")).expect("write");
        assert_eq!(read_task_file(&good).expect("read").family, n("hello"));

        let bad = dir.path().join("bad.json");
        std::fs::write(
            &bad,
            serde_json::to_vec(&container(json!({"hostname": "box"}))).expect("json"),
        )
        .expect("write");
        assert_eq!(
            read_task_file(&bad).expect_err("refused"),
            format!(
                "{}: containerDefinitions[0].hostname: not supported by skiff",
                bad.display()
            )
        );

        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; 3 * MAX_INPUT]).expect("write");
        let e = read_task_file(&big).expect_err("too large");
        assert!(
            e.ends_with("task definition is larger than 65536 bytes, the limit"),
            "{e}"
        );

        let missing = dir.path().join("missing.json");
        let e = read_task_file(&missing).expect_err("missing");
        assert!(e.starts_with(&format!("{}: ", missing.display())), "{e}");
    }

    #[test]
    fn the_example_in_the_docs_parses() {
        let doc = include_str!("../../docs/task-definition.md");
        let start = doc.find("```json\n").expect("a json block") + "```json\n".len();
        let len = doc[start..].find("```").expect("closed block");
        let d = parse_task_definition(&doc.as_bytes()[start..start + len]).expect("doc example");
        assert_eq!(d.family, n("web"));
        assert_eq!(d.cpu, Some(512));
        assert_eq!(d.memory_mib, Some(256));
        assert_eq!(d.restart_policy, RestartPolicy::Always);
        assert_eq!(d.containers.len(), 2);
    }

    /// The first code block after `heading` in the docs, a JSON object member, parsed inside a
    /// minimal definition.
    fn doc_snippet(heading: &str, container_level: bool) -> TaskDefinition {
        let doc = include_str!("../../docs/task-definition.md");
        let at = doc.find(heading).expect("heading");
        let start = doc[at..].find("```\n").expect("a block") + at + "```\n".len();
        let len = doc[start..].find("```").expect("closed block");
        let member: Value =
            serde_json::from_str(&format!("{{{}}}", &doc[start..start + len])).expect("json");
        if container_level {
            ok(container(member))
        } else {
            ok(task(member))
        }
    }

    #[test]
    fn the_service_and_health_check_examples_in_the_docs_parse() {
        let d = doc_snippet("### `service` (skiff)", false);
        let s = service_of(&d);
        assert_eq!(s.desired_count, 3);
        let a = s.scaling.as_ref().expect("scaling");
        assert_eq!(a.step[0].steps.len(), 2);
        assert_eq!(a.scheduled[0].cron, "0 8 * * MON-FRI");
        let d = doc_snippet("### `healthCheck`", true);
        let h = d.containers[0].health_check.as_ref().expect("health check");
        assert_eq!((h.interval_secs, h.timeout_secs, h.retries), (30, 5, 3));
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("image", "image"), 0);
        assert_eq!(edit_distance("imagee", "image"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(nearest("cpus", &["cpu", "memory"]), Some("cpu"));
        assert_eq!(nearest("x", &["cpu"]), None);
    }
}
