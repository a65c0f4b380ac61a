//! The launcher: `skiff __launcher STATE_DIR`, a single-threaded process that creates, starts,
//! signals and deletes containers through libcontainer for the agent.
//!
//! libcontainer clones the calling process, and after that clone even `malloc` is unsafe if the
//! caller has other threads (youki #2425, #3011). The agent runs tokio with many threads, so it
//! re-executes its own binary as this launcher and sends it requests over a socket on the
//! launcher's stdin. The launcher never starts a thread.
//!
//! Container inits are the launcher's direct children (libcontainer clones them with
//! `CLONE_PARENT` from its intermediate process). `SIGCHLD` is blocked and read from a signalfd
//! polled together with the socket, so an exit is reaped and reported at once, with the OOM-kill
//! counter of the container's cgroup read before the exit is forwarded (the cgroup is removed
//! later, with the task).
//!
//! Execs (`exec.rs`) are tenants of a running container, cloned the same way and also the
//! launcher's children. Each has a pipe for its output and a deadline; the loop polls the pipes
//! too, wakes up at the nearest deadline to SIGKILL an overdue exec, and answers the exec's
//! request when its process is reaped, so a long exec never holds up other requests.
//!
//! The launcher outlives its agent (issue 4): when the agent's end of the socket closes (a
//! crash, `kill -9`, an upgrade) while containers run, it keeps them as its children, holds
//! their log FIFOs open (and drains them, counting what it drops, so no container blocks on a
//! full pipe or dies of `SIGPIPE`), holds their exits, and waits on its socket in `run_dir`
//! for the next agent. That agent reads the greeting (`wire::greeting`), sends
//! `RequestBody::Adopt` and gets the running containers and the held exits: it re-adopts the
//! tasks instead of restarting them. An exit already sent to the agent counts as handled only
//! once the agent starts or deletes that container: if the agent dies before, the exit is held
//! for the next one too. A launcher without containers or held exits exits when its agent
//! goes, as does one that could not make its socket.

// The one unsafe call resets SIGPIPE in a container's init right before execve; see
// `SkiffExecutor::exec`.
#![allow(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::io::{self, IsTerminal, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2, pipe2, setsid, Pid};
use oci_spec::runtime::Spec;
use skiff_proto::ExitInfo;

use super::cgroup::read_oom_kills;
use super::exec::{RunningExec, MAX_RUNNING_EXECS};
use super::wire::{
    greeting, read_frame_blocking, write_frame_blocking, ExecRequest, Failure, FailureKind,
    FromLauncher, HeldExit, KeptContainer, Reply, Request, RequestBody, StartRequest,
};

/// Entry point of `skiff __launcher STATE_DIR [SOCKET]`. Must run before anything starts a
/// thread.
pub fn launcher_main() -> ExitCode {
    init_logging();
    let mut args = std::env::args_os().skip(2);
    let Some(state_dir) = args.next().map(PathBuf::from) else {
        eprintln!("skiff __launcher is started by the skiff agent, not by hand");
        return ExitCode::from(2);
    };
    let sock_path = args.next().map(PathBuf::from);
    match run(state_dir, sock_path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "launcher failed");
            ExitCode::FAILURE
        }
    }
}

/// Targets that warn on every container about things skiff decides on purpose (no seccomp
/// without the libseccomp feature, v1 controllers this host does not mount).
const QUIET_TARGETS: &str =
    "libcontainer::process::init::process=error,libcgroups::v1::manager=error";

/// Logs go to a private duplicate of stderr: libcontainer also logs from the cloned container
/// processes after their fd 2 became the container's stderr, and those lines must not end up in
/// the container's output.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| crate::journal::log_filter(&f).ok())
        .or_else(|| crate::journal::log_filter(&format!("warn,{QUIET_TARGETS}")).ok())
        .unwrap_or_default();
    let Ok(log) = io::stderr().as_fd().try_clone_to_owned() else {
        return;
    };
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(Arc::new(File::from(log)))
        .finish()
        .with(filter);
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// The agent's socket arrives as stdin. Move it off fd 0 and put `/dev/null` there, so nothing
/// that inherits fd 0 can talk to the agent.
fn take_socket() -> io::Result<UnixStream> {
    let fd = io::stdin().as_fd().try_clone_to_owned()?;
    let is_socket = File::from(fd.try_clone()?)
        .metadata()?
        .file_type()
        .is_socket();
    if !is_socket {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "stdin is not the agent's socket: skiff __launcher is started by the agent",
        ));
    }
    let devnull = File::open("/dev/null")?;
    dup2(devnull.as_raw_fd(), 0)?;
    Ok(UnixStream::from(fd))
}

/// The socket later agents connect to: only this user may (mode 0600, and peers are
/// checked).
fn listen(path: &Path) -> io::Result<UnixListener> {
    // The agent starts a launcher only after nothing answered there: a stale file.
    let _ = fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// What the poll loop waits on.
#[derive(Clone, Copy)]
enum Src {
    Signal,
    Agent,
    Listener,
    Exec(i32),
    /// A running container's log FIFO, drained while no agent reads it.
    Stdio(i32),
}

fn run(state_dir: PathBuf, sock_path: Option<PathBuf>) -> io::Result<()> {
    let sock = take_socket()?;
    // Own session: a terminal's Ctrl-C aimed at the agent does not reach the launcher.
    let _ = setsid();
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    let listener = sock_path.and_then(|p| match listen(&p) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e,
                "cannot listen: containers will not outlive the agent");
            None
        }
    });
    let mut launcher = Launcher {
        sock: None,
        adopted: false,
        listener,
        state_dir,
        running: HashMap::new(),
        pids: HashMap::new(),
        reaped: HashSet::new(),
        execs: HashMap::new(),
        held: Vec::new(),
        sent: HashMap::new(),
    };
    launcher.attach(sock);
    crate::memtrim::release_startup_pages(); // idle from here on (memtrim.rs; issue 7)
                                             // After a burst of container work, the code it ran is released again once quiet.
    let mut release_at: Option<Instant> = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if launcher.done() {
            tracing::info!("no agent, no containers: exiting");
            return Ok(());
        }
        let now = Instant::now();
        if release_at.is_some_and(|at| at <= now) {
            release_at = None;
            let bytes = crate::memtrim::release_startup_pages();
            tracing::debug!(bytes, "released pages after container work");
        }
        let timeout = earliest(launcher.poll_timeout(now), until(release_at, now));
        let ready: Vec<Src> = {
            let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
            let mut srcs = vec![Src::Signal];
            match (&launcher.sock, &launcher.listener) {
                (Some(s), _) => {
                    fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                    srcs.push(Src::Agent);
                }
                (None, Some(l)) => {
                    fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
                    srcs.push(Src::Listener);
                }
                (None, None) => {}
            }
            for (&pid, exec) in &launcher.execs {
                if let Some(pipe) = exec.pipe() {
                    fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
                    srcs.push(Src::Exec(pid));
                }
            }
            if launcher.sock.is_none() {
                for (&pid, c) in &launcher.running {
                    if let Some(f) = &c.stdio {
                        fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                        srcs.push(Src::Stdio(pid));
                    }
                }
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            fds.iter()
                .zip(srcs)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, s)| s)
                .collect()
        };
        let mut busy = false;
        for src in ready {
            match src {
                Src::Exec(pid) => {
                    if let Some(exec) = launcher.execs.get_mut(&pid) {
                        exec.read_available();
                    }
                }
                Src::Stdio(pid) => launcher.drain_stdio(pid, &mut buf),
                Src::Signal => {
                    busy = true;
                    while sigfd.read_signal()?.is_some() {}
                    launcher.reap()?;
                }
                Src::Listener => launcher.accept(),
                Src::Agent => {
                    busy = true;
                    let Some(sock) = launcher.sock.as_ref() else {
                        continue;
                    };
                    match read_frame_blocking::<Request>(&mut &*sock) {
                        Ok(Some(req)) => launcher.handle(req)?,
                        Ok(None) => launcher.detach("the agent closed the socket"),
                        Err(e) => launcher.detach(&format!("reading from the agent: {e}")),
                    }
                }
            }
        }
        launcher.kill_overdue_execs(Instant::now());
        if busy {
            release_at = Some(Instant::now() + crate::memtrim::RELEASE_AFTER_WORK);
        }
    }
}

/// A poll timeout until `at` (none without one), rounded up so the loop does not wake early and
/// spin.
fn until(at: Option<Instant>, now: Instant) -> PollTimeout {
    at.map_or(PollTimeout::NONE, |at| {
        let ms = at.saturating_duration_since(now).as_micros().div_ceil(1000);
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
    })
}

/// The shorter of two poll timeouts (`NONE`, -1, is forever: not the smaller).
fn earliest(a: PollTimeout, b: PollTimeout) -> PollTimeout {
    match (a.is_none(), b.is_none()) {
        (true, _) => b,
        (_, true) => a,
        _ => a.min(b),
    }
}

/// A started container whose init has not been reaped yet.
struct Running {
    id: String,
    oom_file: Option<PathBuf>,
    /// Wall-clock start, ms since the epoch.
    started_ms: u64,
    /// The container's log FIFO, held open (read-write) so the container never writes to a
    /// pipe without a reader; drained while no agent is connected.
    stdio: Option<File>,
    /// Bytes drained and dropped since the last agent adopted it.
    lost_output_bytes: u64,
}

struct Launcher {
    /// The connected agent.
    sock: Option<UnixStream>,
    /// The connected agent has sent `Adopt`: exits go to it from now on.
    adopted: bool,
    /// Where the next agent connects when this one is gone.
    listener: Option<UnixListener>,
    /// Exits of containers reaped while no agent had adopted them.
    held: Vec<HeldExit>,
    /// Exits sent to the agent that it has not acted on yet (no `Start` or `Delete` of the
    /// container since): held again if the agent goes, so an exit it died before handling
    /// reaches the next agent instead of being lost.
    sent: HashMap<String, HeldExit>,
    /// libcontainer's root directory.
    state_dir: PathBuf,
    /// Unreaped container inits by pid.
    running: HashMap<i32, Running>,
    /// Container id → pid of its unreaped init.
    pids: HashMap<String, Pid>,
    /// Containers this launcher started whose init it has reaped (its pid may be reused).
    reaped: HashSet<String>,
    /// Unreaped exec processes by pid.
    execs: HashMap<i32, RunningExec>,
}

impl Launcher {
    /// Sends to the connected agent; false (and detached) if there is none or it is gone.
    fn send(&mut self, msg: &FromLauncher) -> bool {
        let Some(sock) = &self.sock else {
            return false;
        };
        match write_frame_blocking(&mut &*sock, msg) {
            Ok(()) => true,
            Err(e) => {
                self.detach(&format!("writing to the agent: {e}"));
                false
            }
        }
    }

    /// Takes `sock` as the agent's connection after writing the greeting.
    fn attach(&mut self, sock: UnixStream) {
        if let Err(e) = (&sock).write_all(greeting().as_bytes()) {
            tracing::warn!(error = %e, "cannot greet the agent");
            return;
        }
        self.sock = Some(sock);
        self.adopted = false;
    }

    fn detach(&mut self, why: &str) {
        if self.sock.take().is_none() {
            return;
        }
        self.adopted = false;
        self.held.extend(self.sent.drain().map(|(_, e)| e));
        // Execs answer to the agent that asked: their ends are not reported.
        tracing::info!(
            running = self.running.len(),
            why,
            "agent gone; keeping containers until the next agent adopts them"
        );
    }

    /// No agent and nothing to hand to the next one (or nowhere it could connect).
    fn done(&self) -> bool {
        self.sock.is_none()
            && (self.listener.is_none()
                || (self.running.is_empty() && self.held.is_empty() && self.execs.is_empty()))
    }

    /// Accepts the next agent: the same user only.
    fn accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept an agent");
                return;
            }
        };
        let me = nix::unistd::geteuid().as_raw();
        match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(cred) if cred.uid() == me => {}
            Ok(cred) => {
                tracing::warn!(uid = cred.uid(), "refused a connection from another user");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "refused a connection without credentials");
                return;
            }
        }
        if let Err(e) = stream.set_nonblocking(false) {
            tracing::warn!(error = %e, "cannot use the agent's connection");
            return;
        }
        tracing::info!(
            running = self.running.len(),
            held_exits = self.held.len(),
            "an agent connected"
        );
        self.attach(stream);
    }

    /// Reads and drops what a container wrote while no agent reads its log.
    fn drain_stdio(&mut self, pid: i32, buf: &mut [u8]) {
        let Some(c) = self.running.get_mut(&pid) else {
            return;
        };
        let Some(mut f) = c.stdio.as_ref() else {
            return;
        };
        loop {
            match f.read(buf) {
                Ok(0) => return,
                Ok(n) => c.lost_output_bytes += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// The running containers and held exits, for a new agent; the exits are its from now on.
    fn adopt(&mut self, seq: u64) {
        let running = self
            .running
            .iter_mut()
            .map(|(&pid, c)| KeptContainer {
                id: c.id.clone(),
                pid: u32::try_from(pid).unwrap_or_default(),
                started_ms: c.started_ms,
                lost_output_bytes: std::mem::take(&mut c.lost_output_bytes),
            })
            .collect();
        let reply = FromLauncher::Reply {
            seq,
            result: Ok(Reply::Adopted {
                running,
                exited: self.held.clone(),
            }),
        };
        if self.send(&reply) {
            self.held.clear();
            self.adopted = true;
        }
    }

    fn handle(&mut self, req: Request) -> io::Result<()> {
        let result = match req.body {
            RequestBody::Adopt => {
                self.adopt(req.seq);
                return Ok(());
            }
            RequestBody::Ping => Ok(Reply::Pong {
                pid: std::process::id(),
            }),
            RequestBody::Start(start) => {
                self.sent.remove(&start.id);
                self.start(start)
            }
            RequestBody::Kill { id, signal } => self.kill(&id, signal),
            RequestBody::Delete { id } => {
                // After: deleting a running container reports its exit first.
                let r = self.delete(&id);
                self.sent.remove(&id);
                r
            }
            RequestBody::Exec(exec) => match self.exec(req.seq, exec) {
                // Answered when its process ends.
                Ok(()) => return Ok(()),
                Err(f) => Err(f),
            },
        };
        self.send(&FromLauncher::Reply {
            seq: req.seq,
            result,
        });
        Ok(())
    }

    /// Reaps every exited child and reports the container inits and execs among them.
    fn reap(&mut self) -> io::Result<()> {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
                Ok(status) => self.on_wait_status(status)?,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn on_wait_status(&mut self, status: WaitStatus) -> io::Result<()> {
        let (pid, code, signal) = match status {
            WaitStatus::Exited(pid, code) => (pid, code, None),
            WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as i32, Some(sig as i32)),
            _ => return Ok(()),
        };
        if let Some(exec) = self.execs.remove(&pid.as_raw()) {
            let seq = exec.seq;
            tracing::debug!(%pid, ?status, timed_out = exec.timed_out, "exec ended");
            self.send(&FromLauncher::Reply {
                seq,
                result: Ok(exec.finish(status)),
            });
            return Ok(());
        }
        let Some(child) = self.running.remove(&pid.as_raw()) else {
            return Ok(());
        };
        self.pids.remove(&child.id);
        self.reaped.insert(child.id.clone());
        let oom_killed = child
            .oom_file
            .as_deref()
            .and_then(read_oom_kills)
            .is_some_and(|n| n > 0);
        tracing::debug!(id = %child.id, code, ?signal, oom_killed, "container exited");
        let exit = ExitInfo {
            code,
            signal,
            oom_killed,
        };
        let msg = FromLauncher::Exited {
            id: child.id.clone(),
            exit,
        };
        let held = HeldExit {
            id: child.id,
            pid: u32::try_from(pid.as_raw()).unwrap_or_default(),
            started_ms: child.started_ms,
            exit,
        };
        if self.adopted && self.send(&msg) {
            self.sent.insert(held.id.clone(), held);
        } else {
            self.held.push(held);
        }
        Ok(())
    }

    /// Blocks until `pid` (already sent SIGKILL) is reaped, reporting its exit.
    ///
    /// Reaps (and reports) every other child that ends meanwhile: a dying pid-namespace init
    /// waits until every process of its namespace is reaped, and the execs in it are this
    /// launcher's children, so waiting for the init alone would never return.
    fn reap_one(&mut self, pid: Pid) -> io::Result<()> {
        loop {
            match waitpid(None::<Pid>, None) {
                Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                    let done = s.pid() == Some(pid);
                    self.on_wait_status(s)?;
                    if done {
                        return Ok(());
                    }
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn start(&mut self, r: StartRequest) -> Result<Reply, Failure> {
        if self.pids.contains_key(&r.id) {
            return Err(Failure::new(
                FailureKind::Invalid,
                format!("container {} is running", r.id),
            ));
        }
        let failed = |what: &str, e: &dyn std::error::Error| {
            Failure::new(FailureKind::Failed, format!("{what}: {}", chain(e)))
        };
        let stdout = open_stdio(&r.stdio)
            .map_err(|e| failed(&format!("cannot open {}", r.stdio.display()), &e))?;
        let stderr = stdout
            .try_clone()
            .map_err(|e| failed("cannot duplicate stdio", &e))?;
        let stdin = File::open("/dev/null").map_err(|e| failed("cannot open /dev/null", &e))?;
        if self.reaped.remove(&r.id) {
            // A restart: drop the state of the exited run first.
            self.delete(&r.id)?;
        }
        let mut container = ContainerBuilder::new(r.id.clone(), SyscallType::default())
            .with_executor(SkiffExecutor {
                secret_env: r.secret_env,
            })
            .with_root_path(&self.state_dir)
            .map_err(|e| failed("invalid state directory", &e))?
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr)
            .validate_id()
            .map_err(|e| failed("invalid container id", &e))?
            .as_init(&r.bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| failed("create", &e))?;
        let Some(pid) = container.pid() else {
            let _ = container.delete(true);
            return Err(Failure::new(
                FailureKind::Failed,
                "create: libcontainer recorded no pid",
            ));
        };
        if let Err(e) = container.start() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            let _ = container.delete(true);
            return Err(failed("start", &e));
        }
        self.running.insert(
            pid.as_raw(),
            Running {
                id: r.id.clone(),
                oom_file: r.oom_file,
                started_ms: wall_ms(),
                stdio: hold_fifo(&r.stdio),
                lost_output_bytes: 0,
            },
        );
        self.pids.insert(r.id, pid);
        let pid = u32::try_from(pid.as_raw())
            .map_err(|_| Failure::new(FailureKind::Failed, "negative pid"))?;
        Ok(Reply::Started { pid })
    }

    /// How long `poll` may sleep: until the nearest deadline of an exec not yet killed.
    fn poll_timeout(&self, now: Instant) -> PollTimeout {
        self.execs
            .values()
            .filter(|e| !e.timed_out)
            .map(|e| e.deadline.saturating_duration_since(now))
            .min()
            .map_or(PollTimeout::NONE, |d| {
                // Round up, so the loop never wakes just before a deadline and spins.
                let ms = d.as_micros().div_ceil(1000);
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            })
    }

    /// SIGKILLs every exec past its deadline: its whole process group (the tenant calls
    /// `setsid`, so that is the command and what it started), then the process itself. They
    /// stay unreaped until the signalfd reports them, so neither id can have been reused.
    fn kill_overdue_execs(&mut self, now: Instant) {
        for (&pid, exec) in &mut self.execs {
            if exec.timed_out || exec.deadline > now {
                continue;
            }
            exec.timed_out = true;
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            tracing::debug!(pid, "exec timed out");
        }
    }

    /// Starts `r.argv` as a tenant of the running container `r.id` with the user and working
    /// directory of its spec (the env comes from the spec through libcontainer); stdout and
    /// stderr go to a pipe this loop reads. Returns once the command was executed; the reply
    /// follows when it ends.
    fn exec(&mut self, seq: u64, r: ExecRequest) -> Result<(), Failure> {
        if !self.pids.contains_key(&r.id) {
            return Err(Failure::new(
                FailureKind::NotFound,
                format!("container {} is not running", r.id),
            ));
        }
        if self.execs.len() >= MAX_RUNNING_EXECS {
            return Err(Failure::new(
                FailureKind::Invalid,
                format!("{MAX_RUNNING_EXECS} execs are running already"),
            ));
        }
        let failed = |what: &str, e: &dyn std::error::Error| {
            Failure::new(FailureKind::Failed, format!("{what}: {}", chain(e)))
        };
        let config = r.bundle.join("config.json");
        let spec = Spec::load(&config)
            .map_err(|e| failed(&format!("cannot read {}", config.display()), &e))?;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| Failure::new(FailureKind::Failed, "the spec has no process"))?;
        let user = process.user();
        // Only this loop reads the pipe, so its end must not block; the command's end stays
        // an ordinary blocking pipe.
        let (rd, wr) = pipe2(OFlag::O_CLOEXEC).map_err(|e| failed("pipe", &e))?;
        fcntl(rd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|e| failed("pipe", &e))?;
        let wr2 = wr.try_clone().map_err(|e| failed("pipe", &e))?;
        let stdin = File::open("/dev/null").map_err(|e| failed("cannot open /dev/null", &e))?;
        let built = ContainerBuilder::new(r.id.clone(), SyscallType::default())
            .with_executor(SkiffExecutor::default())
            .with_root_path(&self.state_dir)
            .map_err(|e| failed("invalid state directory", &e))?
            .with_stdin(stdin)
            .with_stdout(wr)
            .with_stderr(wr2)
            .as_tenant()
            .with_container_args(r.argv)
            .with_user(Some(user.uid()))
            .with_group(Some(user.gid()))
            .with_additional_gids(user.additional_gids().clone().unwrap_or_default())
            .with_cwd(Some(process.cwd()))
            .with_detach(true)
            .build();
        self.remove_tenant_sockets(&r.id);
        let pid = built.map_err(|e| failed("exec", &e))?;
        self.execs.insert(
            pid.as_raw(),
            RunningExec::new(seq, r.timeout_ms, File::from(rd)),
        );
        Ok(())
    }

    /// libcontainer leaves the notify socket of every exec in the container's state directory;
    /// health checks would pile them up. They are used only while `build` runs.
    fn remove_tenant_sockets(&self, id: &str) {
        let dir = self.state_dir.join(id);
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("tenant-notify-") {
                if let Err(err) = fs::remove_file(e.path()) {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot remove");
                }
            }
        }
    }

    fn kill(&mut self, id: &str, signal: i32) -> Result<Reply, Failure> {
        let sig = Signal::try_from(signal)
            .map_err(|_| Failure::new(FailureKind::Invalid, format!("invalid signal {signal}")))?;
        if let Some(&pid) = self.pids.get(id) {
            // Our unreaped child: the pid cannot have been reused.
            return match kill(pid, sig) {
                Ok(()) | Err(Errno::ESRCH) => Ok(Reply::Done),
                Err(e) => Err(Failure::new(
                    FailureKind::Failed,
                    format!("kill {pid}: {e}"),
                )),
            };
        }
        if self.reaped.contains(id) {
            return Ok(Reply::Done);
        }
        // Started by an earlier launcher: trust libcontainer's state.
        let dir = self.state_dir.join(id);
        if !dir.is_dir() {
            return Err(Failure::new(
                FailureKind::NotFound,
                format!("no container {id}"),
            ));
        }
        let mut c = Container::load(dir)
            .map_err(|e| Failure::new(FailureKind::Failed, format!("load state: {}", chain(&e))))?;
        if c.can_kill() {
            c.kill(sig, false)
                .map_err(|e| Failure::new(FailureKind::Failed, format!("kill: {}", chain(&e))))?;
        }
        Ok(Reply::Done)
    }

    fn delete(&mut self, id: &str) -> Result<Reply, Failure> {
        let io_failed =
            |what: &str, e: io::Error| Failure::new(FailureKind::Failed, format!("{what}: {e}"));
        if let Some(&pid) = self.pids.get(id) {
            // Kill and reap the init now: its exit (and OOM state, while the cgroup still
            // exists) is reported before this reply.
            let _ = kill(pid, Signal::SIGKILL);
            self.reap_one(pid)
                .map_err(|e| io_failed("cannot report the exit", e))?;
        }
        self.reaped.remove(id);
        let dir = self.state_dir.join(id);
        if !dir.exists() {
            return Ok(Reply::Done);
        }
        match Container::load(dir.clone()) {
            Ok(mut c) => c
                .delete(true)
                .map_err(|e| Failure::new(FailureKind::Failed, format!("delete: {}", chain(&e))))?,
            Err(e) => {
                // Unreadable state (e.g. a crash while it was written): drop it; the agent
                // removes the cgroups, killing what is left in them.
                tracing::warn!(id, error = %chain(&e), "removing unreadable container state");
                fs::remove_dir_all(&dir).map_err(|e| io_failed("remove state", e))?;
            }
        }
        Ok(Reply::Done)
    }
}

/// Milliseconds since the epoch.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The container's log FIFO opened read-write and non-blocking, held while it runs (`None`
/// when `path` is not a FIFO: nothing to hold).
fn hold_fifo(path: &Path) -> Option<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    f.metadata().ok()?.file_type().is_fifo().then_some(f)
}

/// Opens the caller's FIFO for writing. `O_NONBLOCK` makes a FIFO without a reader an error
/// instead of a hang; it is cleared again so the container gets an ordinary blocking pipe.
fn open_stdio(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if f.metadata()?.file_type().is_fifo() {
        let flags = OFlag::from_bits_truncate(fcntl(f.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK))?;
    }
    Ok(f)
}

/// An error and its sources, `: `-separated, without repeating transparent wrappers.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !last.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        last = msg;
        cur = s.source();
    }
    out
}

/// A new file, mode 0400, holding `value`.
fn write_secret_file(path: &str, value: &str) -> io::Result<()> {
    use std::io::Write;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)?;
    f.write_all(value.as_bytes())
}

/// libcontainer's default executor, run after restoring the signal state a container expects:
/// the launcher blocks `SIGCHLD` (for its signalfd) and Rust's runtime ignores `SIGPIPE`, and
/// both would survive `execve`. Opened secrets are added to the environment in the container's
/// init process itself, so they exist only in memory (never in `config.json` or the state dir).
#[derive(Clone, Default)]
struct SkiffExecutor {
    secret_env: crate::secrets::SecretEnv,
}

impl Executor for SkiffExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
            .map_err(|e| ExecutorError::Other(format!("cannot reset the signal mask: {e}")))?;
        // SAFETY: this runs in the container's init process, which is single-threaded, right
        // before execve. SIG_DFL installs no handler code, so nothing can run concurrently with
        // or re-enter anything; it only undoes the SIG_IGN inherited from the launcher.
        unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) }
            .map_err(|e| ExecutorError::Other(format!("cannot reset SIGPIPE: {e}")))?;
        // Secrets asked for as files, on the tmpfs the spec mounts at /run/secrets (as the
        // container's user already: readable by it only).
        for (key, value) in &self.secret_env {
            if let Ok(Some(_)) = skiff_proto::secret_file(key) {
                write_secret_file(key, value.expose())
                    .map_err(|e| ExecutorError::Other(format!("cannot write {key}: {e}")))?;
            }
        }
        // Last: the filter also applies to what this process still does, execve included.
        if let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            let prog = super::seccomp::compile(profile)
                .map_err(|e| ExecutorError::Other(e.to_string()))?;
            super::seccomp::install(&prog).map_err(|e| ExecutorError::Other(e.to_string()))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    /// libcontainer's default (the spec's environment only, the launcher's cleared), then the
    /// secrets. Runs in the container's init process, single-threaded.
    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        for (key, _) in std::env::vars_os() {
            std::env::remove_var(key);
        }
        for (key, value) in envs {
            std::env::set_var(key, value);
        }
        for (key, value) in &self.secret_env {
            // `/run/secrets/NAME` secrets are files, written in `exec`.
            if !key.starts_with('/') {
                std::env::set_var(key, value.expose());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);
    #[derive(Debug, thiserror::Error)]
    #[error("inner detail")]
    struct Inner;

    #[test]
    fn the_earliest_timeout_treats_none_as_forever() {
        let ms = |n: i32| PollTimeout::try_from(n).expect("ms");
        assert_eq!(earliest(PollTimeout::NONE, ms(5)), ms(5));
        assert_eq!(earliest(ms(7), PollTimeout::NONE), ms(7));
        assert_eq!(earliest(ms(7), ms(5)), ms(5));
        assert_eq!(
            earliest(PollTimeout::NONE, PollTimeout::NONE),
            PollTimeout::NONE
        );
        let now = Instant::now();
        assert_eq!(until(None, now), PollTimeout::NONE);
        assert_eq!(until(Some(now), now), ms(0));
        let later = now + std::time::Duration::from_micros(1500);
        assert_eq!(until(Some(later), now), ms(2), "rounded up");
    }

    #[test]
    fn error_chain() {
        assert_eq!(chain(&Outer(Inner)), "outer: inner detail");
        assert_eq!(chain(&Inner), "inner detail");
    }
}
