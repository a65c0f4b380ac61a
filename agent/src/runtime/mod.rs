//! Containers through youki's libcontainer.
//!
//! # Layout
//! - this file: [`Runtime`], the handle the agent uses from any tokio task. Preparing and
//!   removing tasks (cgroups, network namespace, rootfs, `config.json`) happens here, on
//!   blocking threads; creating, signalling and deleting containers and running execs is sent
//!   to the launcher.
//! - `launcher`: the single-threaded `skiff __launcher` process that calls libcontainer (it
//!   clones, which is only safe from a single-threaded process), reports exits, and outlives a
//!   dead agent with its containers until the next one adopts them.
//! - `exec`: health-check primitives: [`Runtime::exec`] runs a command inside a running
//!   container (a libcontainer tenant the launcher clones, times out and reaps; its reply
//!   comes when the command ends) and [`Runtime::tcp_check`] connects to a port inside a
//!   task's network namespace (from a short-lived thread that `setns`es).
//! - `wire`: the agent ↔ launcher frames.
//! - `spec`: the OCI runtime spec of a container (Docker's rules for args, env, cwd, user).
//! - `cgroup`: task cgroups on v1 and v2: limits, removal, stats, OOM counters.
//! - `rootfs`: overlayfs (or copied) root filesystems, mount bookkeeping.
//! - `netns`: named network namespaces shared by a task's containers.
//! - `bridge`: bridge networking (the bridge, per task a veth pair, an address and port
//!   mappings), with `netlink` (links, addresses, routes) and `nft` (NAT in the table
//!   `ip skiff`).
//! - `awsvpc`: awsvpc networking (per task a macvlan of the LAN interface made in the task's
//!   namespace, an address from the node's pool).
//! - `ids`: container ids `{task}+{container}`.
//!
//! # Files
//! Everything lives under `run_dir` (volatile, e.g. on tmpfs):
//! `state/` (libcontainer's root), `tasks/{task}/{container}/{rootfs,upper,work,config.json}`,
//! `netns/{task}`, `net/{task}` (a bridge task's address and host ports), `awsvpc/{task}` (an
//! awsvpc task's address). Cgroups: `/{cgroup_parent}/{task}` with the task's limits, and
//! `/{cgroup_parent}/{task}/{container}` made by libcontainer.

mod awsvpc;
mod bridge;
mod cgroup;
mod exec;
mod ids;
mod launcher;
mod netlink;
mod netns;
mod nft;
mod rootfs;
pub mod seccomp;
mod spec;
mod userns;
mod wire;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_proto::{Endpoint, ExitInfo, Name, NetworkMode, TaskDefinition};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use crate::images::ResolvedImage;

pub use awsvpc::AwsvpcConfig;
pub use bridge::{host_dns, BridgeConfig, NetworkConfig, NetworkConfigError};
pub use cgroup::CgroupError;
pub use exec::{
    ExecArgvError, ExecOutcome, EXEC_OUTPUT_LIMIT, MAX_EXEC_ARGS, MAX_EXEC_ARG_BYTES,
    MAX_EXEC_TIMEOUT,
};
pub use ids::{container_id, parse_container_id};
pub use launcher::launcher_main;
pub use spec::{SpecError, UserError};
pub use userns::{helper_main as userns_helper_main, IdMap};

use cgroup::{CgroupLayout, TaskLimits};
use wire::{
    ExecRequest, Failure, FailureKind, FromLauncher, Reply, Request, RequestBody, StartRequest,
};

/// Where and how the runtime works. Plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Everything volatile: `state/`, `tasks/`, `netns/` below it.
    pub run_dir: PathBuf,
    /// Cgroup path prefix (e.g. `skiff`): task cgroup `/{parent}/{task}`, container cgroup
    /// `/{parent}/{task}/{container}`. One or more names separated by `/`.
    pub cgroup_parent: String,
    /// The binary to re-execute as `__launcher` (and `__userns`): `/proc/self/exe` in the agent.
    pub launcher_exe: PathBuf,
    /// User-namespace remapping of containers (`[userns]`); `None`: containers share the host's
    /// user namespace.
    pub userns: Option<IdMap>,
}

/// A container's init process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerExit {
    pub task: Name,
    pub container: Name,
    pub exit: ExitInfo,
}

/// A task cgroup's figures, hierarchical over its containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskStats {
    /// CPU time used since the cgroup was made.
    pub cpu_usage_ns: u64,
    /// Memory in use without reclaimable page cache (usage minus inactive file), as
    /// `docker stats`.
    pub mem_bytes: u64,
    /// The task's memory limit, if any.
    pub mem_limit_bytes: Option<u64>,
}

/// What the host provides to each container of a task.
#[derive(Clone, Copy)]
struct HostMounts<'a> {
    etc_files: &'a [(PathBuf, String)],
    volumes: &'a [(Name, PathBuf)],
    /// The task's pinned user namespace and id map, if this container is remapped.
    userns: Option<&'a (PathBuf, IdMap)>,
}

/// Looks a device up on the host: it must be a character or block device node.
fn host_device(d: &skiff_proto::Device) -> Result<spec::HostDevice, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = fs::metadata(&d.host_path).map_err(|e| e.to_string())?;
    let ft = md.file_type();
    if !ft.is_char_device() && !ft.is_block_device() {
        return Err("not a device node".into());
    }
    let rdev = md.rdev();
    let access: String = [(d.read, 'r'), (d.write, 'w'), (d.mknod, 'm')]
        .into_iter()
        .filter_map(|(on, c)| on.then_some(c))
        .collect();
    Ok(spec::HostDevice {
        container_path: d
            .container_path
            .clone()
            .unwrap_or_else(|| d.host_path.clone()),
        block: ft.is_block_device(),
        major: i64::from(libc::major(rdev)),
        minor: i64::from(libc::minor(rdev)),
        file_mode: md.mode() & 0o7777,
        access,
    })
}

/// What went wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid cgroup parent {0:?}: expected names of [A-Za-z0-9_.-] separated by '/'")]
    CgroupParent(String),
    #[error("no usable cgroup hierarchy: {source}")]
    CgroupLayout { source: io::Error },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot start the launcher {exe}: {source}")]
    LauncherSpawn { exe: PathBuf, source: io::Error },
    #[error("launcher {exe} did not answer: {reason}")]
    LauncherHandshake { exe: PathBuf, reason: String },
    #[error("the launcher process is gone")]
    LauncherGone,
    #[error("the launcher at {path} answers but can't be used: {reason}")]
    LauncherBusy { path: PathBuf, reason: String },
    #[error("launcher protocol: {source}")]
    Protocol { source: io::Error },
    #[error("task {task} has {containers} containers but {images} images were given")]
    ImageCount {
        task: String,
        containers: usize,
        images: usize,
    },
    #[error("task {task} is already prepared")]
    TaskExists { task: String },
    #[error("container {task}/{container} is not prepared")]
    NotPrepared { task: String, container: String },
    #[error("container {task}/{container}: {source}")]
    Spec {
        task: String,
        container: String,
        source: SpecError,
    },
    #[error("root filesystem of {task}/{container} at {path}: {source}")]
    Rootfs {
        task: String,
        container: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cgroup of task {task}: {source}")]
    Cgroup { task: String, source: CgroupError },
    #[error("container {task}/{container}: {path}: {reason}")]
    HostPath {
        task: String,
        container: String,
        path: PathBuf,
        reason: String,
    },
    #[error("user namespace of task {task}: {source}")]
    Userns { task: String, source: io::Error },
    #[error("network namespace of task {task} at {path}: {source}")]
    Netns {
        task: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot remove the files of task {task} at {path}: {source}")]
    RemoveTask {
        task: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("no container {task}/{container}")]
    NotFound { task: String, container: String },
    #[error("container {task}/{container} is not running")]
    NotRunning { task: String, container: String },
    #[error("task {task} is not prepared")]
    TaskNotPrepared { task: String },
    #[error("cannot exec in {task}/{container}: {source}")]
    ExecArgv {
        task: String,
        container: String,
        source: ExecArgvError,
    },
    #[error("invalid signal {signal} for {task}/{container}")]
    InvalidSignal {
        task: String,
        container: String,
        signal: i32,
    },
    #[error("cannot {op} container {id}: {message}")]
    Launcher {
        op: &'static str,
        id: String,
        message: String,
    },
    #[error("{what} panicked")]
    Panicked { what: &'static str },
    #[error("bridge network of task {task}: {reason}")]
    Bridge { task: String, reason: String },
    #[error(
        "bridge networking is unavailable: {reason}; tasks with networkMode \"bridge\" can't \
         start (\"none\" and \"host\" tasks are not affected)"
    )]
    BridgeUnavailable { reason: String },
    #[error("awsvpc network of task {task}: {reason}")]
    Awsvpc { task: String, reason: String },
    #[error(
        "awsvpc networking is unavailable: {reason}; tasks with networkMode \"awsvpc\" can't \
         start (other tasks are not affected)"
    )]
    AwsvpcUnavailable { reason: String },
}

/// Bridge networking of this runtime.
#[derive(Debug, Clone, Default)]
enum NetState {
    /// [`Runtime::enable_bridge`] was not called.
    #[default]
    Off,
    /// The kernel or host lacks something (why).
    Unavailable(String),
    On(Arc<bridge::Network>),
}

/// How long a freshly started launcher may take to answer its first request.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type Pending = HashMap<u64, oneshot::Sender<Result<Reply, Failure>>>;

/// Requests waiting for the launcher's reply; `None` once the launcher is gone.
#[derive(Default)]
struct Shared {
    pending: Mutex<Option<Pending>>,
    /// Containers [`Runtime::cleanup_stale`] deletes: their exits (the launcher kept them
    /// for an earlier agent) are not reported.
    ignored_exits: Mutex<HashSet<String>>,
}

/// `tasks/{task}/task.rec` (postcard): what a later agent needs to adopt the task.
const TASK_RECORD: &str = "task.rec";

/// Largest task record read back (a task definition is bounded far below this).
const MAX_TASK_RECORD: usize = 4 << 20;

/// The definition and endpoints a task was prepared with.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskRecord {
    pub def: TaskDefinition,
    pub endpoints: Vec<Endpoint>,
}

/// `ended/{task}` (postcard [`EndedRecord`]): a run whose containers are being deleted, kept
/// until the agent has saved it ([`Runtime::keep_ended`], [`Runtime::forget_ended`]).
const ENDED_DIR: &str = "ended";

/// A task's record with the run that ended in it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EndedRecord {
    pub task: TaskRecord,
    pub run: crate::core::EndedRun,
}

/// A container the launcher kept from an earlier agent ([`Runtime::adopt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptContainer {
    pub task: Name,
    pub container: Name,
    /// Host pid of its init (reaped already when `exit` is set).
    pub pid: u32,
    /// Wall-clock start, ms since the epoch.
    pub started_ms: u64,
    /// It exited while no agent was connected.
    pub exit: Option<ExitInfo>,
    /// Output dropped while no agent read it.
    pub lost_output_bytes: u64,
}

/// The launcher's socket in `run_dir`, where a restarted agent finds it.
const LAUNCHER_SOCKET: &str = "launcher.sock";

/// The launcher's cgroup below `cgroup_parent` (not a valid task name).
const LAUNCHER_CGROUP: &str = ".launcher";

/// How long a launcher that accepted a connection may take to greet.
const GREETING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the agent runs in a systemd service's cgroup, which systemd kills whole when the
/// service stops or its main process dies: the launcher must leave it to outlive the agent.
/// (Elsewhere a `kill -9` of the agent kills the agent alone.)
fn in_service_unit() -> bool {
    fs::read_to_string("/proc/self/cgroup")
        .is_ok_and(|c| c.lines().any(|l| l.trim_end().ends_with(".service")))
}

/// What answers at the launcher's socket.
enum Found {
    /// Nothing (no socket, or nobody listening).
    Nothing,
    /// A launcher of this version and protocol.
    Ours(std::os::unix::net::UnixStream, u32),
    /// Something else: another version (its greeting).
    Other { pid: Option<u32>, greeting: String },
    /// It accepted but did not greet: another agent holds it.
    Busy(String),
}

fn find_launcher(path: &Path) -> Found {
    use std::io::Read;
    let Ok(s) = std::os::unix::net::UnixStream::connect(path) else {
        return Found::Nothing;
    };
    let pid = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .and_then(|c| u32::try_from(c.pid()).ok());
    if let Err(e) = s.set_read_timeout(Some(GREETING_TIMEOUT)) {
        return Found::Busy(e.to_string());
    }
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match (&s).read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) if line.len() < wire::MAX_GREETING => line.push(byte[0]),
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Found::Busy(format!(
                    "it did not greet within {GREETING_TIMEOUT:?}: is another agent using \
                     this run_dir?"
                ))
            }
            Err(e) => {
                return Found::Other {
                    pid,
                    greeting: format!("({e})"),
                }
            }
        }
    }
    let text = format!("{}\n", String::from_utf8_lossy(&line));
    match pid {
        Some(pid) if text == wire::greeting() && s.set_read_timeout(None).is_ok() => {
            if s.set_nonblocking(true).is_err() {
                return Found::Nothing;
            }
            Found::Ours(s, pid)
        }
        _ => Found::Other {
            pid,
            greeting: text.trim_end().to_owned(),
        },
    }
}

/// Starts `exe __launcher` with one end of a socket pair as its stdin, and reads its greeting.
fn spawn_launcher(
    exe: &Path,
    run_dir: &Path,
    sock_path: &Path,
) -> Result<(std::os::unix::net::UnixStream, u32), RuntimeError> {
    use std::io::Read;
    let spawn_err = |source| RuntimeError::LauncherSpawn {
        exe: exe.to_path_buf(),
        source,
    };
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(io_err("create a socket pair for", exe))?;
    let mut cmd = Command::new(exe);
    cmd.arg("__launcher")
        .arg(run_dir.join("state"))
        .arg(sock_path)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .current_dir("/")
        .env_clear();
    if let Some(filter) = std::env::var_os("RUST_LOG") {
        cmd.env("RUST_LOG", filter);
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let launcher_pid = child.id();
    // Reap the launcher whenever it exits, independent of tokio: a runtime shutting down
    // would cancel an async waiter and leave a zombie.
    let waiter = std::thread::Builder::new()
        .name("skiff-launcher-wait".into())
        .spawn(move || match child.wait() {
            Ok(status) => tracing::info!(%status, "launcher exited"),
            Err(e) => tracing::warn!(error = %e, "cannot wait for the launcher"),
        });
    if let Err(e) = waiter {
        tracing::warn!(error = %e, "cannot start the launcher's waiter thread");
    }
    // Close our copy of the launcher's end, or the launcher would never see end-of-file.
    drop(cmd);
    let handshake = |reason: String| RuntimeError::LauncherHandshake {
        exe: exe.to_path_buf(),
        reason,
    };
    ours.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(spawn_err)?;
    let want = wire::greeting();
    let mut got = vec![0u8; want.len()];
    (&ours)
        .read_exact(&mut got)
        .map_err(|e| handshake(format!("no greeting: {e}")))?;
    if got != want.as_bytes() {
        return Err(handshake(format!(
            "unexpected greeting {:?}",
            String::from_utf8_lossy(&got)
        )));
    }
    ours.set_read_timeout(None).map_err(spawn_err)?;
    ours.set_nonblocking(true).map_err(spawn_err)?;
    Ok((ours, launcher_pid))
}

struct Inner {
    run_dir: PathBuf,
    /// `cgroup_parent` as a relative path.
    parent: PathBuf,
    layout: CgroupLayout,
    shared: Arc<Shared>,
    /// Frames to the writer task (which owns the socket's write half, so a cancelled request
    /// never leaves half a frame behind).
    frames: mpsc::UnboundedSender<Vec<u8>>,
    seq: AtomicU64,
    /// Serializes creating and removing cgroup directories, so removing an empty parent never
    /// races with a task being created below it.
    tree: Mutex<()>,
    launcher_pid: u32,
    net: Mutex<NetState>,
    /// awsvpc networking: `None` until [`Runtime::enable_awsvpc`], then the network or why
    /// there is none.
    awsvpc: Mutex<Option<Result<Arc<awsvpc::Net>, String>>>,
    /// `RuntimeConfig::launcher_exe`, for `__userns`.
    exe: PathBuf,
    userns: Option<IdMap>,
    /// What the launcher kept from an earlier agent, until [`Runtime::take_kept`].
    kept: Mutex<Vec<KeptContainer>>,
    /// Ids of the kept containers that were running (children of the launcher).
    kept_running: Mutex<HashSet<String>>,
}

/// Handle to the container runtime; cheap to clone, usable from many tokio tasks at once.
/// Dropping the last clone closes the launcher's socket: a launcher with containers keeps them
/// for the next runtime on the same `run_dir` ([`Runtime::take_kept`]), one without exits.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("run_dir", &self.inner.run_dir)
            .field("cgroup_parent", &self.inner.parent)
            .field("layout", &self.inner.layout)
            .field("launcher_pid", &self.inner.launcher_pid)
            .finish()
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `skiff` or `/a/b` → a relative path of valid names.
fn cgroup_parent_path(parent: &str) -> Result<PathBuf, RuntimeError> {
    let trimmed = parent.trim_start_matches('/');
    let mut path = PathBuf::new();
    for part in trimmed.split('/') {
        if part.parse::<Name>().is_err() {
            return Err(RuntimeError::CgroupParent(parent.to_owned()));
        }
        path.push(part);
    }
    Ok(path)
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| RuntimeError::Panicked { what })
}

impl Runtime {
    /// Starts the launcher process and checks that it answers. Exits of containers arrive on
    /// the returned channel, one per started container (also for containers removed with
    /// [`Runtime::remove_task`]).
    pub async fn start(
        cfg: RuntimeConfig,
    ) -> Result<(Runtime, mpsc::Receiver<ContainerExit>), RuntimeError> {
        let parent = cgroup_parent_path(&cfg.cgroup_parent)?;
        for sub in ["state", "tasks", "netns", ENDED_DIR] {
            let dir = cfg.run_dir.join(sub);
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        let run_dir = fs::canonicalize(&cfg.run_dir).map_err(io_err("resolve", &cfg.run_dir))?;
        let layout =
            CgroupLayout::detect().map_err(|source| RuntimeError::CgroupLayout { source })?;

        let sock_path = run_dir.join(LAUNCHER_SOCKET);
        let (stream, launcher_pid) = match find_launcher(&sock_path) {
            Found::Ours(stream, pid) => {
                tracing::info!(pid, "the launcher of the previous agent is alive: adopting");
                (stream, pid)
            }
            found => {
                if let Found::Other { pid, greeting } = &found {
                    tracing::warn!(
                        pid,
                        greeting,
                        "a launcher of another version is running: stopping it; its \
                         containers are cleaned up and restarted"
                    );
                    // A skiff launcher only, never this process.
                    let ours = greeting.starts_with("skiff-launcher ");
                    let me = std::process::id();
                    let victim = pid.filter(|&p| ours && p != me && p > 1);
                    if let Some(pid) = victim.and_then(|p| i32::try_from(p).ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                if let Found::Busy(reason) = found {
                    return Err(RuntimeError::LauncherBusy {
                        path: sock_path,
                        reason,
                    });
                }
                let _ = fs::remove_file(&sock_path);
                let (stream, pid) = spawn_launcher(&cfg.launcher_exe, &run_dir, &sock_path)?;
                let failed = if in_service_unit() {
                    layout.move_process(&parent.join(LAUNCHER_CGROUP), pid)
                } else {
                    Vec::new()
                };
                if !failed.is_empty() {
                    tracing::warn!(
                        failed = ?failed,
                        "cannot move the launcher out of the agent's cgroup: stopping the \
                         agent's service may stop its containers"
                    );
                }
                (stream, pid)
            }
        };
        let stream = tokio::net::UnixStream::from_std(stream).map_err(|source| {
            RuntimeError::LauncherSpawn {
                exe: cfg.launcher_exe.clone(),
                source,
            }
        })?;
        let (rd, wr) = stream.into_split();

        let shared = Arc::new(Shared {
            pending: Mutex::new(Some(HashMap::new())),
            ignored_exits: Mutex::new(HashSet::new()),
        });
        let (frames_tx, frames_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let (public_tx, public_rx) = mpsc::channel(64);
        tokio::spawn(write_loop(wr, frames_rx));
        tokio::spawn(read_loop(rd, shared.clone(), exit_tx));
        tokio::spawn(forward_exits(exit_rx, public_tx));

        let rt = Runtime {
            inner: Arc::new(Inner {
                run_dir,
                parent,
                layout,
                shared,
                frames: frames_tx,
                seq: AtomicU64::new(1),
                tree: Mutex::new(()),
                launcher_pid,
                net: Mutex::new(NetState::Off),
                awsvpc: Mutex::new(None),
                exe: cfg.launcher_exe.clone(),
                userns: cfg.userns,
                kept: Mutex::new(Vec::new()),
                kept_running: Mutex::new(HashSet::new()),
            }),
        };
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, rt.request(RequestBody::Ping));
        match handshake.await {
            Ok(Ok(Ok(Reply::Pong { pid }))) if pid == launcher_pid => {
                // Then `Adopt` at once: the launcher holds every exit back until it.
                let kept = tokio::time::timeout(HANDSHAKE_TIMEOUT, rt.fetch_kept())
                    .await
                    .map_err(|_| RuntimeError::LauncherHandshake {
                        exe: cfg.launcher_exe.clone(),
                        reason: format!("no answer to adopt within {HANDSHAKE_TIMEOUT:?}"),
                    })??;
                if let Ok(mut k) = rt.inner.kept.lock() {
                    *k = kept;
                }
                Ok((rt, public_rx))
            }
            other => Err(RuntimeError::LauncherHandshake {
                exe: cfg.launcher_exe,
                reason: match other {
                    Err(_) => format!("no answer within {HANDSHAKE_TIMEOUT:?}"),
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(Err(f))) => f.message,
                    Ok(Ok(Ok(r))) => format!("unexpected reply {r:?}"),
                },
            }),
        }
    }

    /// Process id of the launcher.
    pub fn launcher_pid(&self) -> u32 {
        self.inner.launcher_pid
    }

    async fn request(&self, body: RequestBody) -> Result<Result<Reply, Failure>, RuntimeError> {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let frame = wire::encode(&Request { seq, body })
            .map_err(|source| RuntimeError::Protocol { source })?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending =
                self.inner
                    .shared
                    .pending
                    .lock()
                    .map_err(|_| RuntimeError::Panicked {
                        what: "launcher reader",
                    })?;
            pending
                .as_mut()
                .ok_or(RuntimeError::LauncherGone)?
                .insert(seq, tx);
        }
        self.inner
            .frames
            .send(frame)
            .map_err(|_| RuntimeError::LauncherGone)?;
        rx.await.map_err(|_| RuntimeError::LauncherGone)
    }

    fn task_dir(&self, task: &str) -> PathBuf {
        self.inner.run_dir.join("tasks").join(task)
    }

    fn netns_path(&self, task: &str) -> PathBuf {
        self.inner.run_dir.join("netns").join(task)
    }

    fn net_state(&self) -> NetState {
        self.inner.net.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// Turns bridge networking on with `cfg`, after checking (in a throwaway network
    /// namespace, and with `nft -c`) that the kernel and host have what it needs. Nothing is
    /// made on the host until the first bridge task. On error bridge tasks fail to start with
    /// the reason, and everything else works: the agent warns and goes on.
    pub async fn enable_bridge(&self, cfg: BridgeConfig) -> Result<(), RuntimeError> {
        let check = cfg.clone();
        let probe = blocking("bridge probe", move || bridge::probe(&check)).await?;
        let run_dir = self.inner.run_dir.clone();
        let state = match probe {
            Ok(()) => {
                let net =
                    blocking("bridge setup", move || bridge::Network::new(cfg, &run_dir)).await?;
                NetState::On(Arc::new(net))
            }
            Err(reason) => NetState::Unavailable(reason),
        };
        let result = match &state {
            NetState::Unavailable(reason) => Err(RuntimeError::BridgeUnavailable {
                reason: reason.clone(),
            }),
            _ => Ok(()),
        };
        if let Ok(mut n) = self.inner.net.lock() {
            *n = state;
        }
        result
    }

    /// The bridge network, for a bridge task (an error naming why there is none).
    fn bridge_for(&self, task: &str) -> Result<Arc<bridge::Network>, RuntimeError> {
        match self.net_state() {
            NetState::On(net) => Ok(net),
            NetState::Unavailable(reason) => Err(RuntimeError::Bridge {
                task: task.to_owned(),
                reason: format!("bridge networking is unavailable on this node: {reason}"),
            }),
            NetState::Off => Err(RuntimeError::Bridge {
                task: task.to_owned(),
                reason: "bridge networking is not enabled in this runtime".into(),
            }),
        }
    }

    /// Turns awsvpc networking on with `cfg`, after checking that the parent interface exists,
    /// what the LAN's prefix is, and (with a macvlan in a throwaway namespace) that the kernel
    /// can make macvlans on the parent. On error awsvpc tasks fail to start with the reason and
    /// everything else works: the agent reports it and goes on.
    pub async fn enable_awsvpc(&self, cfg: AwsvpcConfig) -> Result<(), RuntimeError> {
        let check = cfg.clone();
        let probe = blocking("awsvpc probe", move || awsvpc::probe(&check)).await?;
        let run_dir = self.inner.run_dir.clone();
        let state = match probe {
            Ok(subnet) => {
                tracing::info!(
                    parent = cfg.parent,
                    lan = format!("{}/{}", subnet.0, subnet.1),
                    "awsvpc networking on"
                );
                let net = blocking("awsvpc setup", move || {
                    awsvpc::Net::new(cfg, subnet, &run_dir)
                })
                .await?;
                Ok(Arc::new(net))
            }
            Err(reason) => Err(reason),
        };
        let result = match &state {
            Err(reason) => Err(RuntimeError::AwsvpcUnavailable {
                reason: reason.clone(),
            }),
            Ok(_) => Ok(()),
        };
        if let Ok(mut n) = self.inner.awsvpc.lock() {
            *n = Some(state);
        }
        result
    }

    fn awsvpc_net(&self) -> Option<Arc<awsvpc::Net>> {
        match self.inner.awsvpc.lock().as_deref() {
            Ok(Some(Ok(net))) => Some(net.clone()),
            _ => None,
        }
    }

    /// The awsvpc network, for an awsvpc task (an error naming why there is none).
    fn awsvpc_for(&self, task: &str) -> Result<Arc<awsvpc::Net>, RuntimeError> {
        let state = self
            .inner
            .awsvpc
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let reason = match state {
            Some(Ok(net)) => return Ok(net),
            Some(Err(reason)) => {
                format!("awsvpc networking is unavailable on this node: {reason}")
            }
            None => "awsvpc networking is not configured on this node (set [network] \
                     awsvpc_parent and awsvpc_pool in the agent's configuration)"
                .into(),
        };
        Err(RuntimeError::Awsvpc {
            task: task.to_owned(),
            reason,
        })
    }

    fn state_dir(&self) -> PathBuf {
        self.inner.run_dir.join("state")
    }

    /// Ids of the containers in libcontainer's state directory (all, or those of one task).
    fn state_ids(&self, task: Option<&Name>) -> Result<Vec<String>, RuntimeError> {
        let dir = self.state_dir();
        let prefix = task.map(ids::task_prefix);
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let e = e.map_err(io_err("list", &dir))?;
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if prefix.as_ref().is_none_or(|p| name.starts_with(p.as_str())) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn delete_container(&self, id: &str) -> Result<(), RuntimeError> {
        match self
            .request(RequestBody::Delete { id: id.to_owned() })
            .await?
        {
            Ok(_) => Ok(()),
            Err(f) => Err(RuntimeError::Launcher {
                op: "delete",
                id: id.to_owned(),
                message: f.message,
            }),
        }
    }

    /// At agent start: force-kill and delete every container left in `run_dir/state`, unmount
    /// and remove bundles, network namespaces and every cgroup below `cgroup_parent`. Returns
    /// what it removed: `task/container` for each container, `task` for each other task
    /// leftover (prepared but never started, or partly removed).
    pub async fn cleanup_stale(&self) -> Result<Vec<String>, RuntimeError> {
        self.cleanup_stale_keeping(&BTreeSet::new()).await
    }

    /// [`Runtime::cleanup_stale`], except for the tasks in `keep` (adopted: their containers,
    /// files, cgroups and network stay as they are).
    pub async fn cleanup_stale_keeping(
        &self,
        keep: &BTreeSet<Name>,
    ) -> Result<Vec<String>, RuntimeError> {
        let mut removed = Vec::new();
        for id in self.state_ids(None)? {
            let parsed = parse_container_id(&id);
            if parsed.as_ref().is_some_and(|(t, _)| keep.contains(t)) {
                continue;
            }
            // A running child of this launcher reports its exit when deleted: not news. (Only
            // those: an id ignored for nothing would swallow the exit of its next run.)
            let running_child = self
                .inner
                .kept_running
                .lock()
                .is_ok_and(|mut k| k.remove(&id));
            if running_child {
                if let Ok(mut ignored) = self.inner.shared.ignored_exits.lock() {
                    ignored.insert(id.clone());
                }
            }
            self.delete_container(&id).await?;
            removed.push(match parsed {
                Some((t, c)) => format!("{t}/{c}"),
                None => id,
            });
        }
        let this = self.clone();
        let keep_names: BTreeSet<String> = keep.iter().map(ToString::to_string).collect();
        let tasks = blocking("stale task cleanup", move || {
            this.cleanup_leftovers(&keep_names)
        })
        .await??;
        for t in tasks {
            if !removed
                .iter()
                .any(|r| r.split('/').next() == Some(t.as_str()))
            {
                removed.push(t);
            }
        }
        if let NetState::On(net) = self.net_state() {
            let swept = blocking("bridge sweep", move || net.sweep()).await?;
            let swept = swept.map_err(|reason| RuntimeError::Bridge {
                task: "(leftovers)".into(),
                reason,
            })?;
            removed.extend(swept);
        }
        Ok(removed)
    }

    /// Removes every task directory, network namespace and task cgroup; returns the task names.
    fn cleanup_leftovers(&self, keep: &BTreeSet<String>) -> Result<Vec<String>, RuntimeError> {
        let mut tasks = Vec::new();
        for sub in ["tasks", "netns"] {
            let dir = self.inner.run_dir.join(sub);
            for e in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
                let e = e.map_err(io_err("list", &dir))?;
                if let Some(name) = e.file_name().to_str() {
                    tasks.push(name.to_owned());
                }
            }
        }
        // `.launcher` (the launcher's own cgroup) is not a task.
        tasks.extend(
            self.inner
                .layout
                .children(&self.inner.parent)
                .into_iter()
                .filter(|c| c.parse::<Name>().is_ok()),
        );
        if let NetState::On(net) = self.net_state() {
            tasks.extend(net.allocated_tasks());
        }
        tasks.extend(awsvpc::allocated_tasks(&self.inner.run_dir));
        tasks.sort();
        tasks.dedup();
        tasks.retain(|t| !keep.contains(t));
        for t in &tasks {
            self.remove_task_local(t)?;
        }
        // Ended runs not adopted: saved already, or unreadable (or half written).
        let ended = self.inner.run_dir.join(ENDED_DIR);
        for e in fs::read_dir(&ended).map_err(io_err("list", &ended))? {
            let e = e.map_err(io_err("list", &ended))?;
            if !e.file_name().to_str().is_some_and(|n| keep.contains(n)) {
                let path = e.path();
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
        }
        Ok(tasks)
    }

    /// Creates the task cgroup with the task-level limits, the task's network namespace
    /// (`NetworkMode::None`: loopback only; `Bridge`: also `eth0` on the bridge with an address
    /// and the port mappings; `Awsvpc`: also `eth0` on the LAN with an address of its own;
    /// `Host`: none), and for each container an overlay rootfs over its
    /// image (a copy if overlayfs fails) and its OCI `config.json` (with the task's
    /// `/etc/hosts` and `/etc/resolv.conf` for `None`, `Bridge` and `Awsvpc`). `images[i]` belongs to
    /// `task.containers[i]`. Returns the task's endpoints (its port mappings with the host
    /// ports they got). On error nothing is left behind.
    pub async fn prepare_task(
        &self,
        task: &TaskDefinition,
        images: &[ResolvedImage],
    ) -> Result<Vec<Endpoint>, RuntimeError> {
        if images.len() != task.containers.len() {
            return Err(RuntimeError::ImageCount {
                task: task.family.to_string(),
                containers: task.containers.len(),
                images: images.len(),
            });
        }
        let this = self.clone();
        let task = task.clone();
        let images = images.to_vec();
        blocking("prepare_task", move || {
            this.prepare_blocking(&task, &images)
        })
        .await?
    }

    fn prepare_blocking(
        &self,
        task: &TaskDefinition,
        images: &[ResolvedImage],
    ) -> Result<Vec<Endpoint>, RuntimeError> {
        let name = task.family.as_str();
        let task_dir = self.task_dir(name);
        match fs::create_dir(&task_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::TaskExists {
                    task: task.family.to_string(),
                })
            }
            Err(e) => return Err(io_err("create", &task_dir)(e)),
        }
        let res = self
            .prepare_inner(task, images)
            .and_then(|endpoints| self.save_record(task, endpoints));
        if res.is_err() {
            if let Err(e) = self.remove_task_local(name) {
                tracing::warn!(task = name, error = %e, "cleanup after a failed prepare");
            }
        }
        res
    }

    /// Writes what a later agent needs to adopt the task (its definition and endpoints) to
    /// `tasks/{task}/task.rec`.
    fn save_record(
        &self,
        task: &TaskDefinition,
        endpoints: Vec<Endpoint>,
    ) -> Result<Vec<Endpoint>, RuntimeError> {
        let rec = TaskRecord {
            def: task.clone(),
            endpoints,
        };
        let path = self.task_dir(task.family.as_str()).join(TASK_RECORD);
        // postcard with the flavours the protocol codec uses: the definition's (de)serializer
        // code is shared with it rather than added to the binary.
        let bytes = postcard::to_extend(&rec, Vec::new()).map_err(|e| RuntimeError::Io {
            what: "encode",
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        fs::write(&path, bytes).map_err(io_err("write", &path))?;
        Ok(rec.endpoints)
    }

    /// The definition and endpoints `task` was prepared with (by this agent or an earlier
    /// one); `None` if there is no readable record.
    pub fn task_record(&self, task: &Name) -> Option<TaskRecord> {
        let path = self.task_dir(task.as_str()).join(TASK_RECORD);
        let bytes = fs::read(&path).ok()?;
        if bytes.len() > MAX_TASK_RECORD {
            return None;
        }
        let (rec, rest) = postcard::take_from_bytes::<TaskRecord>(&bytes).ok()?;
        if !rest.is_empty() {
            return None;
        }
        (rec.def.family == *task && rec.def.validate().is_ok()).then_some(rec)
    }

    /// Keeps the run that ended in `task` (with the task's record) in `ended/{task}` until
    /// [`Runtime::forget_ended`]: called before the task's containers are deleted, so that
    /// the next agent can replay the run's end if this one dies before saving it. A task
    /// already removed whose run is kept (a run taken over from `ended/`, ending again) keeps
    /// that record.
    pub fn keep_ended(&self, task: &Name, run: &crate::core::EndedRun) -> Result<(), RuntimeError> {
        let dir = self.inner.run_dir.join(ENDED_DIR);
        let path = dir.join(task.as_str());
        let record = self.task_record(task);
        if record.is_none() && path.exists() {
            return Ok(());
        }
        let Some(record) = record else {
            return Err(RuntimeError::Io {
                what: "read the task record for",
                path,
                source: io::Error::new(io::ErrorKind::NotFound, "no readable task.rec"),
            });
        };
        let ended = EndedRecord {
            task: record,
            run: run.clone(),
        };
        let bytes = postcard::to_extend(&ended, Vec::new()).map_err(|e| RuntimeError::Io {
            what: "encode",
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        // Written aside and renamed: a torn file never stands as the record.
        let part = dir.join(format!(".{task}.part"));
        fs::write(&part, bytes).map_err(io_err("write", &part))?;
        fs::rename(&part, &path).map_err(io_err("rename", &part))
    }

    /// Drops what [`Runtime::keep_ended`] kept for `task` (the run is saved). Idempotent.
    pub fn forget_ended(&self, task: &Name) -> Result<(), RuntimeError> {
        let path = self.inner.run_dir.join(ENDED_DIR).join(task.as_str());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// The runs an earlier agent kept with [`Runtime::keep_ended`] and did not forget, each
    /// checked (size, name, definition); unreadable ones are left to the stale cleanup.
    pub fn ended_runs(&self) -> Vec<EndedRecord> {
        let dir = self.inner.run_dir.join(ENDED_DIR);
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let Some(task) = e.file_name().to_str().and_then(|n| n.parse::<Name>().ok()) else {
                continue;
            };
            let Ok(bytes) = fs::read(e.path()) else {
                continue;
            };
            if bytes.len() > MAX_TASK_RECORD {
                continue;
            }
            match postcard::take_from_bytes::<EndedRecord>(&bytes) {
                Ok((rec, [])) if rec.task.def.family == task && rec.task.def.validate().is_ok() => {
                    out.push(rec);
                }
                _ => tracing::warn!(%task, "unreadable record of an ended run; removed"),
            }
        }
        out.sort_by(|a, b| a.task.def.family.cmp(&b.task.def.family));
        out
    }

    /// What the launcher kept for this agent: containers started by an earlier agent that
    /// are still running, and those that exited meanwhile (asked for by [`Runtime::start`];
    /// the second call returns nothing).
    pub fn take_kept(&self) -> Vec<KeptContainer> {
        self.inner
            .kept
            .lock()
            .map(|mut k| std::mem::take(&mut *k))
            .unwrap_or_default()
    }

    /// Asks the launcher for what it kept ([`RequestBody::Adopt`]); it holds exits back until
    /// then.
    async fn fetch_kept(&self) -> Result<Vec<KeptContainer>, RuntimeError> {
        let (running, exited) = match self.request(RequestBody::Adopt).await? {
            Ok(Reply::Adopted { running, exited }) => (running, exited),
            Ok(other) => {
                return Err(RuntimeError::LauncherHandshake {
                    exe: self.inner.exe.clone(),
                    reason: format!("unexpected reply {other:?} to adopt"),
                })
            }
            Err(f) => {
                return Err(RuntimeError::LauncherHandshake {
                    exe: self.inner.exe.clone(),
                    reason: f.message,
                })
            }
        };
        if let Ok(mut k) = self.inner.kept_running.lock() {
            *k = running.iter().map(|r| r.id.clone()).collect();
        }
        let mut out = Vec::new();
        for r in running {
            match parse_container_id(&r.id) {
                Some((task, container)) => out.push(KeptContainer {
                    task,
                    container,
                    pid: r.pid,
                    started_ms: r.started_ms,
                    exit: None,
                    lost_output_bytes: r.lost_output_bytes,
                }),
                None => tracing::warn!(id = r.id, "kept container that is not skiff's"),
            }
        }
        for e in exited {
            if let Some((task, container)) = parse_container_id(&e.id) {
                out.push(KeptContainer {
                    task,
                    container,
                    pid: e.pid,
                    started_ms: e.started_ms,
                    exit: Some(e.exit),
                    lost_output_bytes: 0,
                });
            }
        }
        out.sort_by(|a, b| (&a.task, &a.container).cmp(&(&b.task, &b.container)));
        Ok(out)
    }

    fn prepare_inner(
        &self,
        task: &TaskDefinition,
        images: &[ResolvedImage],
    ) -> Result<Vec<Endpoint>, RuntimeError> {
        let name = task.family.as_str();
        let rel = self.inner.parent.join(name);
        let limits = TaskLimits::from_task(task.cpu, task.memory_mib);
        let swap_limit = {
            let _tree = self.inner.tree.lock().map_err(|_| RuntimeError::Panicked {
                what: "cgroup tree",
            })?;
            self.inner.layout.create_task(&rel, &limits)
        }
        .map_err(|source| RuntimeError::Cgroup {
            task: name.to_owned(),
            source,
        })?;
        let bridge = match task.network_mode {
            NetworkMode::Bridge => Some(self.bridge_for(name)?),
            _ => None,
        };
        let lan = match task.network_mode {
            NetworkMode::Awsvpc => Some(self.awsvpc_for(name)?),
            _ => None,
        };
        // Remapped tasks get a user namespace of their own, which owns their network namespace
        // (privileged containers stay in the host's).
        let userns = self
            .inner
            .userns
            .filter(|_| task.containers.iter().any(|c| !c.security.privileged))
            .map(|map| (self.task_dir(name).join("userns"), map));
        let userns_err = |source| RuntimeError::Userns {
            task: name.to_owned(),
            source,
        };
        let netns = match task.network_mode {
            NetworkMode::None | NetworkMode::Bridge | NetworkMode::Awsvpc => {
                let path = self.netns_path(name);
                match &userns {
                    Some((pin, map)) => userns::create(&self.inner.exe, *map, pin, Some(&path))
                        .map_err(userns_err)?,
                    None => netns::create(&path).map_err(|source| RuntimeError::Netns {
                        task: name.to_owned(),
                        path: path.clone(),
                        source,
                    })?,
                }
                Some(path)
            }
            NetworkMode::Host => {
                if let Some((pin, map)) = &userns {
                    userns::create(&self.inner.exe, *map, pin, None).map_err(userns_err)?;
                }
                None
            }
        };
        let mut endpoints = Vec::new();
        if task.network_mode == NetworkMode::Host {
            // The containers listen on the node's own ports: nothing to map, nothing to hold.
            endpoints = task
                .containers
                .iter()
                .flat_map(|c| {
                    c.port_mappings.iter().map(|m| Endpoint {
                        container: c.name.clone(),
                        container_port: m.container_port,
                        host_port: m.container_port,
                        protocol: m.protocol,
                        address: String::new(),
                    })
                })
                .collect();
        }
        let mut etc_files = Vec::new();
        if let Some(ns) = &netns {
            let mut address = None;
            let mut resolv = bridge::resolv_conf(&[], &[]);
            if let Some(net) = &bridge {
                let tn = net
                    .attach(task, ns)
                    .map_err(|reason| RuntimeError::Bridge {
                        task: name.to_owned(),
                        reason,
                    })?;
                tracing::debug!(task = name, address = %tn.address, bridge = net.config().bridge, "task on the bridge");
                address = Some(tn.address);
                endpoints = tn.endpoints;
                resolv = net.resolv_conf();
            }
            if let Some(net) = &lan {
                let tn = net
                    .attach(task, ns)
                    .map_err(|reason| RuntimeError::Awsvpc {
                        task: name.to_owned(),
                        reason,
                    })?;
                tracing::debug!(task = name, address = %tn.address, "task on the LAN (awsvpc)");
                address = Some(tn.address);
                endpoints = tn.endpoints;
                resolv = net.resolv_conf();
            }
            let dir = self.task_dir(name);
            for (file, text) in [
                ("hosts", bridge::hosts(name, address)),
                ("resolv.conf", resolv),
            ] {
                let path = dir.join(file);
                fs::write(&path, text).map_err(io_err("write", &path))?;
                etc_files.push((path, format!("/etc/{file}")));
            }
        }
        let volumes = self.prepare_volumes(task, userns.as_ref().map(|(_, m)| *m))?;
        for (c, image) in task.containers.iter().zip(images) {
            let host = HostMounts {
                etc_files: &etc_files,
                volumes: &volumes,
                userns: userns.as_ref().filter(|_| !c.security.privileged),
            };
            self.prepare_container(task, c, image, netns.clone(), host, swap_limit)?;
        }
        Ok(endpoints)
    }

    /// The host directory of each of the task's volumes: its `sourcePath` (made if missing),
    /// or a fresh directory in the task's run dir, removed with the task (owned by the
    /// containers' root when the task is remapped).
    fn prepare_volumes(
        &self,
        task: &TaskDefinition,
        remap: Option<IdMap>,
    ) -> Result<Vec<(Name, PathBuf)>, RuntimeError> {
        let mut out = Vec::new();
        for v in task.volumes() {
            let dir = match &v.host_path {
                Some(h) => PathBuf::from(h),
                None => self
                    .task_dir(task.family.as_str())
                    .join("volumes")
                    .join(v.name.as_str()),
            };
            fs::create_dir_all(&dir).map_err(io_err("create the volume directory", &dir))?;
            if let (None, Some(map)) = (&v.host_path, remap) {
                std::os::unix::fs::lchown(&dir, Some(map.base), Some(map.base))
                    .map_err(io_err("chown the volume directory", &dir))?;
            }
            // The policy allowed this path, not wherever a symlink in it leads.
            let real = fs::canonicalize(&dir).map_err(io_err("resolve", &dir))?;
            if real != dir {
                return Err(RuntimeError::HostPath {
                    task: task.family.to_string(),
                    container: format!("volume {}", v.name),
                    path: dir,
                    reason: format!(
                        "leads to {} through a symlink; name the real path",
                        real.display()
                    ),
                });
            }
            out.push((v.name.clone(), dir));
        }
        Ok(out)
    }

    fn prepare_container(
        &self,
        task: &TaskDefinition,
        c: &skiff_proto::ContainerDefinition,
        image: &ResolvedImage,
        netns: Option<PathBuf>,
        host: HostMounts<'_>,
        swap_limit: bool,
    ) -> Result<(), RuntimeError> {
        let spec_err = |source| RuntimeError::Spec {
            task: task.family.to_string(),
            container: c.name.to_string(),
            source,
        };
        let rootfs_err = |path: &Path| {
            let path = path.to_path_buf();
            |source| RuntimeError::Rootfs {
                task: task.family.to_string(),
                container: c.name.to_string(),
                path,
                source,
            }
        };
        if !image.rootfs.is_dir() {
            return Err(rootfs_err(&image.rootfs)(io::Error::new(
                io::ErrorKind::NotFound,
                "the image rootfs is not a directory",
            )));
        }
        let bundle = self.task_dir(task.family.as_str()).join(c.name.as_str());
        let rootfs = bundle.join("rootfs");
        let upper = bundle.join("upper");
        let work = bundle.join("work");
        for d in [&rootfs, &upper, &work] {
            fs::create_dir_all(d).map_err(rootfs_err(d))?;
        }
        // Resolve the user from the image before anything is mounted.
        let passwd = spec::read_user_db(&image.rootfs, "passwd").map_err(spec_err)?;
        let group = spec::read_user_db(&image.rootfs, "group").map_err(spec_err)?;
        let user = spec::resolve_user(spec::user_setting(c, &image.config), &passwd, &group)
            .map_err(|e| spec_err(SpecError::User(e)))?;
        let lower_mnt = bundle.join("lower");
        let remap = host.userns.map(|(pin, map)| rootfs::Remap {
            userns: pin,
            map: *map,
            lower_mnt: &lower_mnt,
        });
        let kind = rootfs::make_rootfs(&image.rootfs, &upper, &work, &rootfs, remap)
            .map_err(rootfs_err(&rootfs))?;
        tracing::debug!(task = %task.family, container = %c.name, ?kind, remapped = remap.is_some(), "rootfs ready");
        let cwd = spec::cwd(c, &image.config);
        // Owners as the host stores them.
        let on_disk = |id: u32| host.userns.and_then(|(_, m)| m.host_id(id)).unwrap_or(id);
        rootfs::ensure_dir(&rootfs, &cwd, on_disk(user.uid), on_disk(user.gid))
            .map_err(rootfs_err(&rootfs))?;
        let cgroups_path = Path::new("/")
            .join(&self.inner.parent)
            .join(task.family.as_str())
            .join(c.name.as_str());
        let oci = spec::build(&spec::SpecParams {
            task,
            container: c,
            image: &image.config,
            user,
            rootfs,
            netns,
            cgroups_path,
            swap_limit,
            etc_files: host.etc_files.to_vec(),
            volumes: c
                .mount_points
                .iter()
                .filter_map(|m| {
                    let (_, dir) = host.volumes.iter().find(|(n, _)| *n == m.source_volume)?;
                    Some((dir.clone(), m.container_path.clone(), m.read_only))
                })
                .collect(),
            devices: c
                .security
                .devices
                .iter()
                .map(|d| {
                    host_device(d).map_err(|reason| RuntimeError::HostPath {
                        task: task.family.to_string(),
                        container: c.name.to_string(),
                        path: d.host_path.clone().into(),
                        reason,
                    })
                })
                .collect::<Result<_, _>>()?,
            host_caps: spec::own_capabilities(),
            userns: host.userns.cloned(),
        })
        .map_err(spec_err)?;
        let config = bundle.join("config.json");
        oci.save(&config).map_err(|e| spec_err(SpecError::Oci(e)))?;
        Ok(())
    }

    /// Creates and starts a prepared container. Its stdout and stderr both go to `stdio`, a
    /// FIFO the caller has already opened for reading (the launcher opens it write-only).
    /// Returns the host pid of the container's init. A container whose previous run exited
    /// can be started again: it keeps its rootfs changes, as `docker restart`.
    pub async fn start_container(
        &self,
        task: &Name,
        container: &Name,
        stdio: &Path,
    ) -> Result<u32, RuntimeError> {
        self.start_container_with(task, container, stdio, Vec::new())
            .await
    }

    /// [`Runtime::start_container`] with environment variables that must never be written
    /// anywhere (opened secrets): they travel to the launcher over its socket and are set in
    /// the container's init process right before it execs, never put in `config.json`.
    pub async fn start_container_with(
        &self,
        task: &Name,
        container: &Name,
        stdio: &Path,
        secret_env: crate::secrets::SecretEnv,
    ) -> Result<u32, RuntimeError> {
        let bundle = self.task_dir(task.as_str()).join(container.as_str());
        if !bundle.join("config.json").is_file() {
            return Err(RuntimeError::NotPrepared {
                task: task.to_string(),
                container: container.to_string(),
            });
        }
        let stdio = if stdio.is_absolute() {
            stdio.to_path_buf()
        } else {
            // The launcher runs in `/`.
            std::env::current_dir()
                .map_err(io_err("resolve", stdio))?
                .join(stdio)
        };
        let rel = self
            .inner
            .parent
            .join(task.as_str())
            .join(container.as_str());
        let id = container_id(task, container);
        let reply = self
            .request(RequestBody::Start(StartRequest {
                id: id.clone(),
                bundle,
                stdio,
                oom_file: self.inner.layout.oom_file(&rel),
                secret_env,
            }))
            .await?;
        match reply {
            Ok(Reply::Started { pid }) => Ok(pid),
            Ok(other) => Err(RuntimeError::Launcher {
                op: "start",
                id,
                message: format!("unexpected reply {other:?}"),
            }),
            Err(f) => Err(RuntimeError::Launcher {
                op: "start",
                id,
                message: f.message,
            }),
        }
    }

    /// Sends `signal` (a libc signal number) to the container's init. A container that already
    /// exited is `Ok(())`.
    pub async fn kill(
        &self,
        task: &Name,
        container: &Name,
        signal: i32,
    ) -> Result<(), RuntimeError> {
        let id = container_id(task, container);
        match self
            .request(RequestBody::Kill {
                id: id.clone(),
                signal,
            })
            .await?
        {
            Ok(_) => Ok(()),
            Err(Failure {
                kind: FailureKind::NotFound,
                ..
            }) => Err(RuntimeError::NotFound {
                task: task.to_string(),
                container: container.to_string(),
            }),
            Err(Failure {
                kind: FailureKind::Invalid,
                ..
            }) => Err(RuntimeError::InvalidSignal {
                task: task.to_string(),
                container: container.to_string(),
                signal,
            }),
            Err(f) => Err(RuntimeError::Launcher {
                op: "kill",
                id,
                message: f.message,
            }),
        }
    }

    /// Runs `argv` inside the running container, like `docker exec` or an ECS health check's
    /// `CMD`: in its namespaces and cgroup, with the env, user and working directory of its
    /// spec, stdin `/dev/null`. Waits until the command ends; at `timeout` (at most
    /// [`MAX_EXEC_TIMEOUT`]) the launcher SIGKILLs its process group and the outcome is
    /// `timed_out` with no code. The outcome's `output` is the first [`EXEC_OUTPUT_LIMIT`]
    /// bytes of its stdout and stderr. Other runtime requests proceed meanwhile.
    ///
    /// Errors: [`RuntimeError::ExecArgv`] for a command out of bounds (1 to [`MAX_EXEC_ARGS`]
    /// arguments of at most [`MAX_EXEC_ARG_BYTES`] bytes, no NUL), [`RuntimeError::NotRunning`]
    /// when the container is not running, [`RuntimeError::Launcher`] when the command could
    /// not be started (e.g. no such executable: a health check counts that as a failure).
    pub async fn exec(
        &self,
        task: &Name,
        container: &Name,
        argv: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutcome, RuntimeError> {
        exec::check_argv(&argv).map_err(|source| RuntimeError::ExecArgv {
            task: task.to_string(),
            container: container.to_string(),
            source,
        })?;
        let id = container_id(task, container);
        let reply = self
            .request(RequestBody::Exec(ExecRequest {
                id: id.clone(),
                bundle: self.task_dir(task.as_str()).join(container.as_str()),
                argv,
                timeout_ms: exec::timeout_ms(timeout),
            }))
            .await?;
        match reply {
            Ok(Reply::ExecEnded {
                code,
                timed_out,
                output,
            }) => Ok(ExecOutcome {
                code,
                timed_out,
                output,
            }),
            Ok(other) => Err(RuntimeError::Launcher {
                op: "exec",
                id,
                message: format!("unexpected reply {other:?}"),
            }),
            Err(Failure {
                kind: FailureKind::NotFound,
                ..
            }) => Err(RuntimeError::NotRunning {
                task: task.to_string(),
                container: container.to_string(),
            }),
            Err(f) => Err(RuntimeError::Launcher {
                op: "exec",
                id,
                message: f.message,
            }),
        }
    }

    /// Whether a TCP connection to `127.0.0.1:port` succeeds within `timeout` in the task's
    /// network namespace: its named namespace (`None`, `Bridge`, `Awsvpc`), else the host's
    /// (`NetworkMode::Host`). The connection is closed at once. Errors only when the task is
    /// not prepared or its namespace cannot be entered.
    pub async fn tcp_check(
        &self,
        task: &Name,
        port: u16,
        timeout: Duration,
    ) -> Result<bool, RuntimeError> {
        let netns = self.netns_path(task.as_str());
        if !netns.exists() {
            if !self.task_dir(task.as_str()).is_dir() {
                return Err(RuntimeError::TaskNotPrepared {
                    task: task.to_string(),
                });
            }
            let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
            let connect = tokio::net::TcpStream::connect(addr);
            return Ok(matches!(
                tokio::time::timeout(timeout, connect).await,
                Ok(Ok(_))
            ));
        }
        let netns_err = |path: &Path| {
            let path = path.to_path_buf();
            let task = task.to_string();
            move |source| RuntimeError::Netns { task, path, source }
        };
        // `setns` changes the calling thread for good: never on a tokio or pool thread.
        let answer =
            exec::spawn_netns_probe(netns.clone(), port, timeout).map_err(netns_err(&netns))?;
        answer
            .await
            .map_err(|_| RuntimeError::Panicked { what: "tcp check" })?
            .map_err(netns_err(&netns))
    }

    /// Force-deletes every container of the task (their exits are reported first), unmounts
    /// and removes its directories, network namespace and cgroups. Idempotent.
    pub async fn remove_task(&self, task: &Name) -> Result<(), RuntimeError> {
        for id in self.state_ids(Some(task))? {
            self.delete_container(&id).await?;
        }
        let this = self.clone();
        let name = task.as_str().to_owned();
        blocking("remove_task", move || this.remove_task_local(&name)).await?
    }

    /// The agent-side part of removing a task: mounts, files, network namespace, cgroups.
    fn remove_task_local(&self, task: &str) -> Result<(), RuntimeError> {
        let dir = self.task_dir(task);
        rootfs::remove_dir_unmounted(&dir).map_err(|source| RuntimeError::RemoveTask {
            task: task.to_owned(),
            path: dir.clone(),
            source,
        })?;
        if let NetState::On(net) = self.net_state() {
            net.detach(task).map_err(|reason| RuntimeError::Bridge {
                task: task.to_owned(),
                reason,
            })?;
        }
        let ns = self.netns_path(task);
        awsvpc::detach(self.awsvpc_net().as_deref(), &self.inner.run_dir, task, &ns).map_err(
            |reason| RuntimeError::Awsvpc {
                task: task.to_owned(),
                reason,
            },
        )?;
        netns::remove(&ns).map_err(|source| RuntimeError::Netns {
            task: task.to_owned(),
            path: ns.clone(),
            source,
        })?;
        let _tree = self.inner.tree.lock().map_err(|_| RuntimeError::Panicked {
            what: "cgroup tree",
        })?;
        self.inner
            .layout
            .remove_tree(&self.inner.parent.join(task))
            .map_err(|source| RuntimeError::Cgroup {
                task: task.to_owned(),
                source,
            })?;
        self.inner.layout.remove_empty_ancestors(&self.inner.parent);
        Ok(())
    }

    /// CPU and memory of the task's cgroup, hierarchical over its containers: a few small file
    /// reads. `None` if the task has no cgroup.
    /// Requests sent to the launcher so far (start, signal, delete, exec...): a count that
    /// moves when container work happens, for the agent's idle page release (`memtrim.rs`).
    pub fn requests_sent(&self) -> u64 {
        self.inner.seq.load(Ordering::Relaxed)
    }

    pub fn task_stats(&self, task: &Name) -> Option<TaskStats> {
        self.inner
            .layout
            .stats(&self.inner.parent.join(task.as_str()))
    }
}

/// Writes frames to the launcher until every [`Runtime`] clone is gone; dropping the write half
/// then shuts the socket down and the launcher exits.
async fn write_loop(mut wr: OwnedWriteHalf, mut frames: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(frame) = frames.recv().await {
        if let Err(e) = wr.write_all(&frame).await {
            tracing::warn!(error = %e, "cannot write to the launcher");
            return;
        }
    }
}

async fn read_frame(rd: &mut OwnedReadHalf) -> io::Result<Option<FromLauncher>> {
    let mut prefix = [0u8; 4];
    match rd.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; wire::frame_len(prefix)?];
    rd.read_exact(&mut body).await?;
    wire::decode(&body).map(Some)
}

/// Dispatches the launcher's replies and exit notices until it goes away, then fails every
/// pending request.
async fn read_loop(
    mut rd: OwnedReadHalf,
    shared: Arc<Shared>,
    exits: mpsc::UnboundedSender<ContainerExit>,
) {
    loop {
        match read_frame(&mut rd).await {
            Ok(Some(FromLauncher::Reply { seq, result })) => {
                let tx = shared
                    .pending
                    .lock()
                    .ok()
                    .and_then(|mut p| p.as_mut().and_then(|p| p.remove(&seq)));
                if let Some(tx) = tx {
                    let _ = tx.send(result);
                }
            }
            Ok(Some(FromLauncher::Exited { id, exit }))
                if shared.ignored_exits.lock().is_ok_and(|mut i| i.remove(&id)) =>
            {
                tracing::debug!(id, ?exit, "stale container removed");
            }
            Ok(Some(FromLauncher::Exited { id, exit })) => match parse_container_id(&id) {
                Some((task, container)) => {
                    let _ = exits.send(ContainerExit {
                        task,
                        container,
                        exit,
                    });
                }
                None => tracing::warn!(id, "exit of a container that is not skiff's"),
            },
            Ok(None) => break,
            Err(e) => {
                tracing::error!(error = %e, "bad frame from the launcher");
                break;
            }
        }
    }
    if let Ok(mut p) = shared.pending.lock() {
        // Dropping the senders fails every waiting request with `LauncherGone`.
        p.take();
    }
}

/// Moves exits from the unbounded internal channel to the caller's bounded one, so a slow
/// consumer never stalls replies from the launcher.
async fn forward_exits(
    mut rx: mpsc::UnboundedReceiver<ContainerExit>,
    tx: mpsc::Sender<ContainerExit>,
) {
    while let Some(exit) = rx.recv().await {
        if tx.send(exit).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parent_paths() {
        assert_eq!(cgroup_parent_path("skiff").expect("ok"), Path::new("skiff"));
        assert_eq!(cgroup_parent_path("/a/b").expect("ok"), Path::new("a/b"));
        for bad in ["", "/", "a//b", "..", "a/../b", "a/.x", "a b", "a/"] {
            assert!(cgroup_parent_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn runtime_is_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Runtime>();
        check::<RuntimeError>();
        fn cloneable<T: Clone>() {}
        cloneable::<Runtime>();
    }
}
