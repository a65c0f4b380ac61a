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

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use skiff_proto::limits::MAX_CONTAINERS;
use skiff_proto::{
    Batch, BoundError, ContainerDefinition, EnvVar, MissedRunPolicy, Name, NetworkMode,
    OverlapPolicy, RestartPolicy, Schedule, ScheduleSpec, TaskDefinition, TaskExtension,
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
    let containers = def.containers.iter().map(container_to_json).collect();
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
                    } => {
                        o.insert("cron".into(), expr.as_str().into());
                        let m = i32::from(*utc_offset_minutes);
                        let sign = if m < 0 { '-' } else { '+' };
                        o.insert(
                            "timezone".into(),
                            format!("{sign}{:02}:{:02}", m.abs() / 60, m.abs() % 60).into(),
                        );
                    }
                    ScheduleSpec::Rate { every_secs } => {
                        o.insert("rate".into(), (*every_secs).into());
                    }
                }
                let overlap = match sch.overlap {
                    OverlapPolicy::Forbid => "forbid",
                    OverlapPolicy::Replace => "replace",
                };
                let missed = match sch.missed {
                    MissedRunPolicy::Skip => "skip",
                    MissedRunPolicy::RunOnce => "run-once",
                };
                o.insert("overlapPolicy".into(), overlap.into());
                o.insert("missedRunPolicy".into(), missed.into());
                t.insert("schedule".into(), Value::Object(o));
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
    Value::Object(o)
}

/// ECS spelling of a network mode.
pub fn network_mode_str(mode: NetworkMode) -> &'static str {
    match mode {
        NetworkMode::None => "none",
        NetworkMode::Host => "host",
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
    ("volumes", Some("volumes are not supported yet")),
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
];

const NO_VOLUMES: Option<&str> = Some("volumes are not supported yet");
const OWN_LOG: Option<&str> = Some("skiff keeps container output in its own bounded per-task log");

/// Container-level ECS keys skiff does not implement, accepted only when empty.
const CONTAINER_UNSUPPORTED: &[(&str, Option<&str>)] = &[
    (
        "portMappings",
        Some(
            "port mappings come with bridge networking in a later release; \
             with networkMode \"host\" a container listens on the node's ports directly",
        ),
    ),
    (
        "links",
        Some("links come with bridge networking in a later release"),
    ),
    ("mountPoints", NO_VOLUMES),
    ("volumesFrom", NO_VOLUMES),
    ("secrets", Some("secrets are not supported yet")),
    (
        "environmentFiles",
        Some("list the variables in \"environment\" instead"),
    ),
    ("repositoryCredentials", None),
    (
        "dependsOn",
        Some("container start order is not supported yet"),
    ),
    ("healthCheck", Some("health checks are not supported yet")),
    ("startTimeout", None),
    (
        "stopTimeout",
        Some("the time between SIGTERM and SIGKILL is the agent's stop_grace_secs"),
    ),
    ("linuxParameters", None),
    ("privileged", None),
    ("readonlyRootFilesystem", None),
    ("ulimits", None),
    ("logConfiguration", OWN_LOG),
    ("firelensConfiguration", OWN_LOG),
    ("dockerLabels", None),
    ("dockerSecurityOptions", None),
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
    if extensions.len() > 1 {
        return Err(invalid(
            base,
            "\"schedule\" and \"batch\" together are not supported yet",
        ));
    }
    let def = TaskDefinition {
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
                _ => user = optional_string(v, &path)?,
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
    })
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

fn parse_network_mode(v: &Value, path: &str) -> Result<NetworkMode, TaskDefError> {
    match string(v, path)? {
        "none" | "" => Ok(NetworkMode::None),
        "host" => Ok(NetworkMode::Host),
        m @ ("bridge" | "awsvpc") => Err(invalid(
            path,
            format!("{m:?} is not supported by skiff yet; use \"none\" or \"host\""),
        )),
        other => Err(invalid(
            path,
            format!("expected \"none\" or \"host\", got {}", quoted(other)),
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
                expr.parse::<crate::core::cron::CronExpr>().map_err(|e| invalid(&p, format!("{}: {e}", quoted(expr))))?;
                cron = Some(expr.to_string());
            }
            "timezone" => offset = parse_utc_offset(text()?).map_err(|e| invalid(&p, e))?,
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
                    "allow" => return Err(invalid(&p, "\"allow\" (concurrent runs of one task) is not supported yet; use \"forbid\" or \"replace\"")),
                    other => return Err(invalid(&p, format!("expected \"forbid\" or \"replace\", got {other:?}"))),
                }
            }
            "missedRunPolicy" => {
                missed = match text()? {
                    "skip" => MissedRunPolicy::Skip,
                    "run-once" => MissedRunPolicy::RunOnce,
                    other => return Err(invalid(&p, format!("expected \"skip\" or \"run-once\", got {other:?}"))),
                }
            }
            other => return Err(invalid(&p, format!("unknown schedule field {other:?}"))),
        }
    }
    let spec = match (cron, rate) {
        (Some(expr), None) => ScheduleSpec::Cron {
            expr,
            utc_offset_minutes: offset,
        },
        (None, Some(every_secs)) => {
            if offset != 0 {
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

/// `UTC`, `Z`, `+05:30`, `-08:00` → minutes east of UTC. Named zones (`Europe/Paris`) need a
/// zone database the agent does not carry.
fn parse_utc_offset(s: &str) -> Result<i16, String> {
    if matches!(s, "UTC" | "Z" | "utc" | "Etc/UTC" | "GMT") {
        return Ok(0);
    }
    let bad = || {
        format!(
            "{s:?}: expected \"UTC\" or an offset like \"+05:30\" (named zones are not supported)"
        )
    };
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
                    utc_offset_minutes: 330
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
        assert!(err(task(
            json!({"schedule": {"cron": "* * * * *", "timezone": "Europe/Paris"}})
        ))
        .contains("named zones are not supported"));
        assert!(err(task(json!({"schedule": {"rate": 0}}))).contains("at least 1 second"));
        assert!(
            err(task(json!({"schedule": {"rate": 5, "cron": "* * * * *"}}))).contains("not both")
        );
        assert!(err(task(
            json!({"schedule": {"cron": "* * * * *", "overlapPolicy": "allow"}})
        ))
        .contains("not supported yet"));
        assert!(err(task(json!({"schedule": {}}))).contains("needs \"cron\" or \"rate\""));
        assert!(err(task(json!({"batch": {"completions": 0}}))).contains("batch.completions"));
        assert!(err(task(json!({"batch": {"tries": 1}}))).contains("unknown batch field"));
        assert!(err(task(json!({"batch": {}, "schedule": {"rate": 5}})))
            .contains("together are not supported yet"));
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
        v["taskDefinition"]["containerDefinitions"][0]["privileged"] = json!(true);
        assert_eq!(
            err(v.clone()),
            "taskDefinition.containerDefinitions[0].privileged: not supported by skiff"
        );
        v["taskDefinition"]["containerDefinitions"][0]["privileged"] = json!(false);
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
    fn privileged_true_is_refused_by_path() {
        let e = parse(&container(json!({"privileged": true}))).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "containerDefinitions[0].privileged: not supported by skiff"
        );
        assert_eq!(e.path(), Some("containerDefinitions[0].privileged"));
        assert!(matches!(e, TaskDefError::Unsupported { .. }));
        ok(container(json!({"privileged": false})));
        ok(container(json!({"privileged": null})));
    }

    #[test]
    fn port_mappings_are_refused_until_bridge_networking() {
        let e = err(container(
            json!({"portMappings": [{"containerPort": 80, "hostPort": 80}]}),
        ));
        assert!(
            e.starts_with("containerDefinitions[0].portMappings: not supported by skiff (port mappings come with bridge networking"),
            "{e}"
        );
        ok(container(json!({"portMappings": []})));
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
        let e = err(container(json!({"stopTimeout": 0})));
        assert!(
            e.starts_with("containerDefinitions[0].stopTimeout: not supported by skiff"),
            "{e}"
        );
        let e = err(container(
            json!({"linuxParameters": {"sharedMemorySize": 64}}),
        ));
        assert!(
            e.starts_with("containerDefinitions[0].linuxParameters: not supported"),
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
            err(task(json!({"networkMode": "bridge"}))),
            "networkMode: \"bridge\" is not supported by skiff yet; use \"none\" or \"host\""
        );
        assert_eq!(
            err(task(json!({"networkMode": "awsvpc"}))),
            "networkMode: \"awsvpc\" is not supported by skiff yet; use \"none\" or \"host\""
        );
        assert_eq!(
            err(task(json!({"networkMode": "Host"}))),
            "networkMode: expected \"none\" or \"host\", got \"Host\""
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
        for d in [&hello, &service, &ticker, &once] {
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
            serde_json::to_vec(&container(json!({"privileged": true}))).expect("json"),
        )
        .expect("write");
        assert_eq!(
            read_task_file(&bad).expect_err("refused"),
            format!(
                "{}: containerDefinitions[0].privileged: not supported by skiff",
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
