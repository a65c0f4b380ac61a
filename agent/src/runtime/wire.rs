//! The agent ↔ launcher protocol: length-prefixed postcard frames over a `socketpair`.
//!
//! Frame: `u32` little-endian body length, then the postcard body. The agent sends
//! [`Request`]s; the launcher answers each with a [`FromLauncher::Reply`] carrying the same
//! `seq`, and sends [`FromLauncher::Exited`] on its own whenever a container's init exits.
//! Replies need not come in request order: an [`RequestBody::Exec`] is answered when its
//! process has ended, after replies to requests sent later.
//!
//! The launcher outlives an agent that dies (see `launcher.rs`): a restarted agent connects to
//! its socket in `run_dir` and the launcher first writes [`greeting`], one line naming its
//! version and this protocol's. Only an identical line lets the agent speak frames to it; an
//! older launcher is stopped instead and its containers are cleaned up. The first request of
//! every agent is [`RequestBody::Adopt`].

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use skiff_proto::ExitInfo;

/// Bumped whenever a frame changes shape.
pub(crate) const WIRE_VERSION: u32 = 2;

/// Longest greeting line an agent reads.
pub(crate) const MAX_GREETING: usize = 128;

/// The line a launcher writes first on every connection (`\n` included).
pub(crate) fn greeting() -> String {
    format!(
        "skiff-launcher {} wire {WIRE_VERSION}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Largest frame either side accepts.
pub(crate) const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Request {
    pub seq: u64,
    pub body: RequestBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RequestBody {
    /// Liveness check at start-up; answered with [`Reply::Pong`].
    Ping,
    /// Create and start a container from a prepared bundle.
    Start(StartRequest),
    /// Signal a container's init process.
    Kill { id: String, signal: i32 },
    /// Force-delete a container (kill, reap, remove cgroup and state). Idempotent.
    Delete { id: String },
    /// Run a command in a running container; answered with [`Reply::ExecEnded`] once the
    /// process has ended (or was killed at its timeout).
    Exec(ExecRequest),
    /// The agent's first request: answered with [`Reply::Adopted`], the containers this
    /// launcher keeps (started for an earlier agent, or this one's: none yet) and the exits it
    /// held while no agent was connected. Exits are held until this request, so none is lost
    /// or reported twice.
    Adopt,
}

/// A container the launcher keeps running, handed to a (new) agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeptContainer {
    pub id: String,
    pub pid: u32,
    /// Wall-clock start, ms since the epoch (as the launcher's clock read it).
    pub started_ms: u64,
    /// Output the launcher read and dropped while no agent was connected.
    pub lost_output_bytes: u64,
}

/// A container whose init exited while no agent was connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeldExit {
    pub id: String,
    pub pid: u32,
    pub started_ms: u64,
    pub exit: ExitInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExecRequest {
    pub id: String,
    /// The container's bundle: its `config.json` gives the user and working directory.
    pub bundle: PathBuf,
    /// Checked by the agent (`exec::check_argv`).
    pub argv: Vec<String>,
    /// The launcher SIGKILLs the process when it runs longer.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StartRequest {
    pub id: String,
    pub bundle: PathBuf,
    /// FIFO for stdout and stderr, opened write-only by the launcher.
    pub stdio: PathBuf,
    /// `memory.events` (v2) or `memory.oom_control` (v1) of the container's cgroup.
    pub oom_file: Option<PathBuf>,
    /// Opened secrets, set in the container's environment by the launcher's executor (never
    /// in `config.json`; `Debug` shows `***`).
    pub secret_env: crate::secrets::SecretEnv,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FromLauncher {
    Reply {
        seq: u64,
        result: Result<Reply, Failure>,
    },
    Exited {
        id: String,
        exit: ExitInfo,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Reply {
    Pong {
        pid: u32,
    },
    Started {
        pid: u32,
    },
    Done,
    /// An exec's process ended. `code` is `None` when it was killed at its timeout;
    /// `output` is the start of its stdout and stderr (`exec::EXEC_OUTPUT_LIMIT` bytes at most).
    ExecEnded {
        code: Option<i32>,
        timed_out: bool,
        output: Vec<u8>,
    },
    Adopted {
        running: Vec<KeptContainer>,
        exited: Vec<HeldExit>,
    },
}

/// Why the launcher could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FailureKind {
    /// No such container.
    NotFound,
    /// The request itself was invalid (bad signal number, ...).
    Invalid,
    /// libcontainer or the OS failed.
    Failed,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// Encodes `msg` as one frame (length prefix included).
pub(crate) fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let body =
        postcard::to_allocvec(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {} bytes is larger than {MAX_FRAME}", body.len()),
        ));
    }
    let len =
        u32::try_from(body.len()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Decodes a frame body (without its length prefix).
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    postcard::from_bytes(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Checks a received length prefix.
pub(crate) fn frame_len(prefix: [u8; 4]) -> io::Result<usize> {
    let len = usize::try_from(u32::from_le_bytes(prefix))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is larger than {MAX_FRAME}"),
        ));
    }
    Ok(len)
}

/// Blocking read of one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub(crate) fn read_frame_blocking<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut prefix = [0u8; 4];
    match r.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; frame_len(prefix)?];
    r.read_exact(&mut body)?;
    decode(&body).map(Some)
}

/// Blocking write of one frame.
pub(crate) fn write_frame_blocking<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    w.write_all(&encode(msg)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let msgs = vec![
            Request {
                seq: 1,
                body: RequestBody::Ping,
            },
            Request {
                seq: u64::MAX,
                body: RequestBody::Start(StartRequest {
                    id: "t+c".into(),
                    bundle: "/run/skiff/tasks/t/c".into(),
                    stdio: "/tmp/fifo".into(),
                    oom_file: Some("/sys/fs/cgroup/memory/skiff/t/c/memory.oom_control".into()),
                    secret_env: vec![],
                }),
            },
            Request {
                seq: 3,
                body: RequestBody::Kill {
                    id: "t+c".into(),
                    signal: 15,
                },
            },
            Request {
                seq: 4,
                body: RequestBody::Exec(ExecRequest {
                    id: "t+c".into(),
                    bundle: "/run/skiff/tasks/t/c".into(),
                    argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
                    timeout_ms: 1500,
                }),
            },
        ];
        let mut stream = Vec::new();
        for m in &msgs {
            write_frame_blocking(&mut stream, m).expect("encode");
        }
        let mut r = &stream[..];
        for m in &msgs {
            let got: Request = read_frame_blocking(&mut r).expect("read").expect("frame");
            assert_eq!(&got, m);
        }
        assert_eq!(read_frame_blocking::<Request>(&mut r).expect("eof"), None);
    }

    #[test]
    fn replies_round_trip() {
        let msgs = vec![
            FromLauncher::Reply {
                seq: 7,
                result: Err(Failure::new(FailureKind::NotFound, "no container t+c")),
            },
            FromLauncher::Exited {
                id: "t+c".into(),
                exit: ExitInfo {
                    code: 137,
                    signal: Some(9),
                    oom_killed: true,
                },
            },
            FromLauncher::Reply {
                seq: 8,
                result: Ok(Reply::ExecEnded {
                    code: None,
                    timed_out: true,
                    output: b"partial\n".to_vec(),
                }),
            },
        ];
        for m in msgs {
            let frame = encode(&m).expect("encode");
            let got: FromLauncher = decode(&frame[4..]).expect("decode");
            assert_eq!(got, m);
        }
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let big = (u32::try_from(MAX_FRAME).expect("fits") + 1).to_le_bytes();
        assert!(read_frame_blocking::<Request>(&mut &big[..]).is_err());
        let frame = encode(&Request {
            seq: 1,
            body: RequestBody::Ping,
        })
        .expect("encode");
        let cut = &frame[..frame.len() - 1];
        assert!(read_frame_blocking::<Request>(&mut &cut[..]).is_err());
    }
}
