//! skiff-agent: the edge container agent and its fleet console.
//!
//! # Layout
//! - [`config`]: the agent's TOML configuration, plain data validated before anything starts.
//! - [`ecs`]: ECS task-definition JSON → [`skiff_proto::TaskDefinition`], rejecting by name what
//!   skiff does not support.
//! - [`core`]: the sans-IO reconciler. `handle(event, now) -> actions`; all decisions live here.
//! - [`images`]: the local content store: OCI-layout import, image references, unpacked rootfs.
//! - [`runtime`]: containers through youki's libcontainer, created by a single-threaded launcher
//!   process; cgroups (v1 and v2), network namespaces, OCI runtime specs.
//! - [`logs`]: bounded per-task logs fed from container stdout/stderr.
//! - [`metrics`]: node (sysinfo) and task (cgroup) CPU/RAM samples.
//! - [`mqtt`]: the broker shell: connection, last will, subscriptions, reconnects.
//! - [`agent`]: the driver: feeds shell results to the core as events and performs its actions.
//! - [`ctl`]: the fleet console (`skiff ctl ...`).
//! - [`store`]: durable state (applied desired state, finished tasks, run history).
//! - [`local`]: local mode, desired state read from a directory of task definitions.
//! - [`display`]: human-readable lines for events, metrics and status.
//! - [`clock`]: the shells' clock (the core is handed the time).
//! - [`identity`]: the node's X25519 key pair, made once on first boot (`skiff node init`).
//! - [`notify`]: systemd notifications (`READY=1`, watchdog, `STOPPING=1`, status lines).
//! - [`journal`]: log lines with syslog priorities for journald.
//! - [`labels`]: node labels (`[labels]`) and the selectors `skiff ctl` matches them with.
//! - [`secrets`]: sealed secrets: values encrypted to the node's X25519 key (`skiff ctl seal`),
//!   opened in memory right before a container starts.
//! - [`trust`]: signed desired state: fleet keys (ed25519), what is signed, verification and
//!   key rotation (pure; the core holds the trusted set).
//! - [`sim`]: `skiff sim`, many simulated agents in one process (the real core and MQTT shell,
//!   a fake container runtime) for scale tests.
//! - [`tls`]: TLS to the broker: the `[broker_tls]` PEM files as a rustls (ring) client
//!   configuration, and the client certificate's CN (the node id).
//! - [`wire`]: wire messages as files (`skiff task encode` / `decode`).
//! - [`zones`]: named time zones of cron schedules, from the node's zoneinfo.

pub mod agent;
pub mod clock;
pub mod config;
pub mod core;
mod crash;
pub mod ctl;
pub mod display;
pub mod ecs;
pub mod identity;
pub mod images;
pub mod journal;
pub mod labels;
pub mod local;
pub mod logs;
pub mod memtrim;
pub mod metrics;
pub mod mqtt;
pub mod notify;
pub mod outbox;
pub mod policy;
pub mod runtime;
pub mod secrets;
pub mod sim;
pub mod store;
pub mod tls;
pub mod trust;
pub mod wire;
pub mod zones;
