//! Health-check primitives: commands run inside a running container ([`Runtime::exec`]) and
//! TCP probes inside a task's network namespace ([`Runtime::tcp_check`]).
//!
//! An exec is a libcontainer *tenant*: a process that joins the namespaces and cgroup of the
//! container's init, with the env, user and working directory of the container's spec. Like a
//! container start it is cloned by the single-threaded launcher, and it is the launcher's child
//! too, so the launcher reaps it through the same signalfd. The launcher keeps a
//! [`RunningExec`] per exec process: the reply's `seq`, the deadline, and the read end of the
//! pipe that is the process's stdout and stderr. The reply goes out when the process is reaped,
//! so other requests are served meanwhile.
//!
//! [`Runtime::exec`]: super::Runtime::exec
//! [`Runtime::tcp_check`]: super::Runtime::tcp_check

use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::wait::WaitStatus;

use super::wire::Reply;

/// Most arguments an exec command may have.
pub const MAX_EXEC_ARGS: usize = 64;
/// Longest single argument, in bytes.
pub const MAX_EXEC_ARG_BYTES: usize = 4096;
/// How much of an exec's stdout and stderr is kept.
pub const EXEC_OUTPUT_LIMIT: usize = 1024;
/// Longer exec timeouts count as this long.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Execs the launcher runs at once; more are refused (health checks need one per container).
pub(crate) const MAX_RUNNING_EXECS: usize = 64;

/// How a command run with [`Runtime::exec`](super::Runtime::exec) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// Exit code; `128 + signal` when a signal ended it, as a shell reports it. `None` when it
    /// was killed at its timeout.
    pub code: Option<i32>,
    pub timed_out: bool,
    /// The first [`EXEC_OUTPUT_LIMIT`] bytes of its stdout and stderr (one pipe, interleaved as
    /// written). Output of processes it left running in the background is not waited for.
    pub output: Vec<u8>,
}

/// Why a command is refused before anything runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecArgvError {
    #[error("the command is empty")]
    Empty,
    #[error("the command has {count} arguments, at most {MAX_EXEC_ARGS} are allowed")]
    TooMany { count: usize },
    #[error("argument {index} has {len} bytes, at most {MAX_EXEC_ARG_BYTES} are allowed")]
    TooLong { index: usize, len: usize },
    #[error("argument {index} contains a NUL byte")]
    Nul { index: usize },
}

/// Checks the bounds of an exec command: 1 to [`MAX_EXEC_ARGS`] arguments of at most
/// [`MAX_EXEC_ARG_BYTES`] bytes each, no NUL bytes (they cannot reach `execve`).
pub(crate) fn check_argv(argv: &[String]) -> Result<(), ExecArgvError> {
    if argv.is_empty() {
        return Err(ExecArgvError::Empty);
    }
    if argv.len() > MAX_EXEC_ARGS {
        return Err(ExecArgvError::TooMany { count: argv.len() });
    }
    for (index, arg) in argv.iter().enumerate() {
        if arg.len() > MAX_EXEC_ARG_BYTES {
            return Err(ExecArgvError::TooLong {
                index,
                len: arg.len(),
            });
        }
        if arg.as_bytes().contains(&0) {
            return Err(ExecArgvError::Nul { index });
        }
    }
    Ok(())
}

/// A timeout as whole milliseconds for the wire, at most [`MAX_EXEC_TIMEOUT`].
pub(crate) fn timeout_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.min(MAX_EXEC_TIMEOUT).as_millis()).unwrap_or(u64::MAX)
}

/// An exec process the launcher has started and not reaped yet.
#[derive(Debug)]
pub(crate) struct RunningExec {
    /// The request to answer when it ends.
    pub seq: u64,
    pub deadline: Instant,
    /// SIGKILLed at the deadline.
    pub timed_out: bool,
    output: Vec<u8>,
    /// Non-blocking read end of its stdout+stderr pipe; `None` after end-of-file.
    pipe: Option<File>,
}

impl RunningExec {
    pub fn new(seq: u64, timeout_ms: u64, pipe: File) -> RunningExec {
        let now = Instant::now();
        let timeout = Duration::from_millis(timeout_ms).min(MAX_EXEC_TIMEOUT);
        RunningExec {
            seq,
            deadline: now.checked_add(timeout).unwrap_or(now),
            timed_out: false,
            output: Vec::new(),
            pipe: Some(pipe),
        }
    }

    /// The pipe to poll, while it is open.
    pub fn pipe(&self) -> Option<&File> {
        self.pipe.as_ref()
    }

    /// Reads what the pipe holds now without blocking: keeps the first
    /// [`EXEC_OUTPUT_LIMIT`] bytes, discards the rest (so a chatty command never blocks on a
    /// full pipe), closes the pipe at end-of-file or on an error.
    pub fn read_available(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let keep = EXEC_OUTPUT_LIMIT.saturating_sub(self.output.len()).min(n);
                    self.output.extend_from_slice(&buf[..keep]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read an exec's output");
                    break;
                }
            }
        }
        self.pipe = None;
    }

    /// The reply once the process was reaped with `status`: what it wrote before it ended is
    /// in the pipe already; output of background processes it left is not waited for.
    pub fn finish(mut self, status: WaitStatus) -> Reply {
        self.read_available();
        let code = match status {
            _ if self.timed_out => None,
            WaitStatus::Exited(_, code) => Some(code),
            WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
            _ => None,
        };
        Reply::ExecEnded {
            code,
            timed_out: self.timed_out,
            output: self.output,
        }
    }
}

/// Tries a TCP connection to `127.0.0.1:port` from the calling thread's network namespace.
fn connect_loopback(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // `connect_timeout` refuses a zero timeout.
    TcpStream::connect_timeout(&addr, timeout.max(Duration::from_millis(1))).is_ok()
}

/// [`connect_loopback`] inside the network namespace pinned at `netns`; `Err` only when the
/// namespace cannot be entered.
///
/// `setns` moves only the calling thread, so this must run on a thread of its own that ends
/// afterwards, never on a pooled (tokio or blocking-pool) thread.
pub(crate) fn connect_in_netns(netns: &Path, port: u16, timeout: Duration) -> io::Result<bool> {
    let ns = File::open(netns)?;
    setns(&ns, CloneFlags::CLONE_NEWNET)?;
    Ok(connect_loopback(port, timeout))
}

/// [`connect_in_netns`] on a new thread that exits afterwards; the answer arrives on the
/// returned channel (closed without an answer only if the thread panicked).
pub(crate) fn spawn_netns_probe(
    netns: std::path::PathBuf,
    port: u16,
    timeout: Duration,
) -> io::Result<tokio::sync::oneshot::Receiver<io::Result<bool>>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("skiff-tcp-check".into())
        .spawn(move || {
            let _ = tx.send(connect_in_netns(&netns, port, timeout));
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::{AsRawFd, OwnedFd};

    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use nix::unistd::Pid;

    fn args(n: usize, len: usize) -> Vec<String> {
        vec!["x".repeat(len); n]
    }

    #[test]
    fn argv_bounds() {
        assert_eq!(check_argv(&[]), Err(ExecArgvError::Empty));
        assert_eq!(check_argv(&args(MAX_EXEC_ARGS, MAX_EXEC_ARG_BYTES)), Ok(()));
        assert_eq!(
            check_argv(&args(MAX_EXEC_ARGS + 1, 1)),
            Err(ExecArgvError::TooMany { count: 65 })
        );
        let mut long = args(3, 1);
        long[2] = "y".repeat(MAX_EXEC_ARG_BYTES + 1);
        assert_eq!(
            check_argv(&long),
            Err(ExecArgvError::TooLong {
                index: 2,
                len: 4097
            })
        );
        let nul = vec!["sh".to_owned(), "a\0b".to_owned()];
        assert_eq!(check_argv(&nul), Err(ExecArgvError::Nul { index: 1 }));
        assert!(ExecArgvError::TooMany { count: 65 }
            .to_string()
            .contains("at most 64"));
    }

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(timeout_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(timeout_ms(Duration::MAX), 24 * 60 * 60 * 1000);
        let e = RunningExec::new(1, u64::MAX, File::from(pipe().0));
        assert!(e.deadline <= Instant::now() + MAX_EXEC_TIMEOUT);
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe");
        fcntl(rd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("nonblocking");
        (rd, wr)
    }

    #[test]
    fn output_keeps_the_first_kib_and_drains_the_rest() {
        let (rd, wr) = pipe();
        let mut wr = File::from(wr);
        let mut e = RunningExec::new(7, 1000, File::from(rd));
        wr.write_all(b"hello\n").expect("write");
        e.read_available();
        assert!(e.pipe().is_some(), "open while the writer is");
        wr.write_all(&[b'x'; 3000]).expect("write");
        e.read_available();
        wr.write_all(&[b'y'; 60_000]).expect("write");
        drop(wr);
        let reply = e.finish(WaitStatus::Exited(Pid::from_raw(1), 3));
        let Reply::ExecEnded {
            code,
            timed_out,
            output,
        } = reply
        else {
            panic!("{reply:?}");
        };
        assert_eq!((code, timed_out), (Some(3), false));
        assert_eq!(output.len(), EXEC_OUTPUT_LIMIT);
        assert!(output.starts_with(b"hello\nxxx"));
    }

    #[test]
    fn exit_codes() {
        let pid = Pid::from_raw(1);
        let code = |status, timed_out| {
            let mut e = RunningExec::new(1, 1000, File::from(pipe().0));
            e.timed_out = timed_out;
            match e.finish(status) {
                Reply::ExecEnded { code, .. } => code,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(code(WaitStatus::Exited(pid, 0), false), Some(0));
        let killed = WaitStatus::Signaled(pid, nix::sys::signal::Signal::SIGKILL, false);
        assert_eq!(code(killed, false), Some(137));
        assert_eq!(code(killed, true), None);
    }

    #[test]
    fn loopback_probe() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(connect_loopback(port, Duration::ZERO));
        drop(listener);
        assert!(!connect_loopback(port, Duration::from_millis(200)));
    }

    #[test]
    fn a_missing_namespace_is_an_error() {
        let err = connect_in_netns(Path::new("/nonexistent/netns"), 80, Duration::from_secs(1))
            .expect_err("no namespace");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
