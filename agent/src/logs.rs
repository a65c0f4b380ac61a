//! Bounded per-task logs.
//!
//! Each container's stdout and stderr go to one FIFO that the agent reads; the bytes land in the
//! task's log: a ring of `limit` bytes in memory (served to `skiff ctl logs` by absolute offset)
//! and a file pair `{dir}/{task}.log` + `{task}.log.1` rotated at `limit` bytes (read on the
//! device by `skiff logs`). `dir` is under the run dir, which is tmpfs on a normal system: logs
//! never wear the SD card and never grow past 2 × `limit` per task. In a task with several
//! containers every line is prefixed with its container's name.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use skiff_proto::Name;

/// The logs of every task of the agent.
#[derive(Debug, Clone)]
pub struct Logs {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    limit: usize,
    tasks: BTreeMap<Name, TaskLog>,
}

#[derive(Debug)]
struct TaskLog {
    ring: VecDeque<u8>,
    /// Absolute offset of `ring[0]` in the task's log stream.
    start: u64,
    file: Option<File>,
    file_len: usize,
    /// Per container: is the next byte at the start of a line.
    at_line_start: BTreeMap<Name, bool>,
}

/// A piece of a task's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of `data[0]`.
    pub start: u64,
    /// Offset just past the end of `data`.
    pub end: u64,
    pub data: Vec<u8>,
}

/// Path of a task's current log file.
pub fn log_path(dir: &Path, task: &Name) -> PathBuf {
    dir.join(format!("{task}.log"))
}

impl Logs {
    /// Logs under `dir` (created), `limit` bytes per task.
    pub fn new(dir: PathBuf, limit: usize) -> io::Result<Logs> {
        std::fs::create_dir_all(&dir)?;
        Ok(Logs {
            inner: Arc::new(Mutex::new(Inner {
                dir,
                limit,
                tasks: BTreeMap::new(),
            })),
        })
    }

    /// Appends output of `container`; `prefix` when the task has several containers.
    pub fn append(&self, task: &Name, container: &Name, prefix: bool, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Inner { dir, limit, tasks } = &mut *inner;
        let limit = *limit;
        let log = tasks.entry(task.clone()).or_insert_with(|| TaskLog {
            ring: VecDeque::new(),
            start: 0,
            file: None,
            file_len: 0,
            at_line_start: BTreeMap::new(),
        });
        let data = if prefix {
            let at_start = log.at_line_start.entry(container.clone()).or_insert(true);
            let mut out = Vec::with_capacity(bytes.len() + 16);
            for &b in bytes {
                if *at_start {
                    out.extend_from_slice(container.as_str().as_bytes());
                    out.extend_from_slice(b"| ");
                }
                out.push(b);
                *at_start = b == b'\n';
            }
            out
        } else {
            bytes.to_vec()
        };
        log.ring.extend(data.iter().copied());
        let excess = log.ring.len().saturating_sub(limit);
        log.ring.drain(..excess);
        log.start += excess as u64;
        if let Err(e) = log.write_file(dir, task, limit, &data) {
            tracing::warn!(%task, error = %e, "cannot write task log file");
            log.file = None;
        }
    }

    /// Reads from absolute offset `from` (None: the last `max` bytes), at most `max` bytes.
    pub fn read(&self, task: &Name, from: Option<u64>, max: usize) -> Option<Chunk> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let log = inner.tasks.get(task)?;
        let end = log.start + log.ring.len() as u64;
        let from = from
            .unwrap_or_else(|| end.saturating_sub(max as u64))
            .clamp(log.start, end);
        let skip = usize::try_from(from - log.start).unwrap_or(usize::MAX);
        let data: Vec<u8> = log.ring.iter().skip(skip).take(max).copied().collect();
        Some(Chunk {
            start: from,
            end: from + data.len() as u64,
            data,
        })
    }

    /// Directory of the log files.
    pub fn dir(&self) -> PathBuf {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dir
            .clone()
    }
}

impl TaskLog {
    fn write_file(&mut self, dir: &Path, task: &Name, limit: usize, data: &[u8]) -> io::Result<()> {
        let path = log_path(dir, task);
        if self.file.is_none() || self.file_len + data.len() > limit {
            if self.file.is_some() || path.exists() {
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if self.file.is_some() || len.saturating_add(data.len() as u64) > limit as u64 {
                    std::fs::rename(&path, path.with_extension("log.1")).or_else(ignore_missing)?;
                    self.file_len = 0;
                } else {
                    self.file_len = usize::try_from(len).unwrap_or(usize::MAX);
                }
            }
            self.file = Some(OpenOptions::new().create(true).append(true).open(&path)?);
        }
        if let Some(f) = &mut self.file {
            f.write_all(data)?;
            self.file_len += data.len();
        }
        Ok(())
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Reads the last `max` bytes of a task's log files (`skiff logs` on the device).
pub fn read_tail(dir: &Path, task: &Name, max: u64) -> io::Result<(Vec<u8>, u64)> {
    let current = log_path(dir, task);
    let mut out = Vec::new();
    let old = current.with_extension("log.1");
    let cur_len = std::fs::metadata(&current).map(|m| m.len());
    if cur_len.is_err() && !old.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no log for task {task} in {}", dir.display()),
        ));
    }
    let cur_len = cur_len.unwrap_or(0);
    if cur_len < max {
        if let Ok(mut f) = File::open(&old) {
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(max - cur_len)))?;
            f.read_to_end(&mut out)?;
        }
    }
    if let Ok(mut f) = File::open(&current) {
        f.seek(SeekFrom::Start(cur_len.saturating_sub(max)))?;
        f.read_to_end(&mut out)?;
    }
    Ok((out, cur_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        s.parse().expect("name")
    }

    #[test]
    fn ring_is_bounded_and_offsets_are_absolute() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = Logs::new(dir.path().into(), 8).expect("logs");
        let t = n("t");
        logs.append(&t, &n("c"), false, b"hello\n");
        assert_eq!(
            logs.read(&t, Some(0), 100),
            Some(Chunk {
                start: 0,
                end: 6,
                data: b"hello\n".to_vec()
            })
        );
        logs.append(&t, &n("c"), false, b"world\n");
        let all = logs.read(&t, Some(0), 100).expect("chunk");
        assert_eq!(
            (all.start, all.end, all.data.as_slice()),
            (4, 12, &b"o\nworld\n"[..])
        );
        assert_eq!(
            logs.read(&t, Some(10), 100).map(|c| c.data),
            Some(b"d\n".to_vec())
        );
        assert_eq!(
            logs.read(&t, None, 3).map(|c| c.data),
            Some(b"ld\n".to_vec())
        );
        assert_eq!(logs.read(&n("none"), None, 3), None);
    }

    #[test]
    fn files_rotate_and_stay_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = Logs::new(dir.path().into(), 10).expect("logs");
        let t = n("t");
        for i in 0..20 {
            logs.append(&t, &n("c"), false, format!("{i:02}\n").as_bytes());
        }
        let cur = std::fs::metadata(log_path(dir.path(), &t))
            .expect("log")
            .len();
        let old = std::fs::metadata(dir.path().join("t.log.1"))
            .expect("log.1")
            .len();
        assert!(cur <= 10 && old <= 10, "{cur} {old}");
        let (tail, _) = read_tail(dir.path(), &t, 6).expect("tail");
        assert_eq!(tail, b"18\n19\n");
        let (tail, _) = read_tail(dir.path(), &t, 100).expect("tail");
        assert!(tail.ends_with(b"19\n") && tail.len() <= 20);
        assert!(read_tail(dir.path(), &n("x"), 10).is_err());
    }

    #[test]
    fn several_containers_get_prefixed_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = Logs::new(dir.path().into(), 1000).expect("logs");
        let t = n("t");
        logs.append(&t, &n("a"), true, b"one\ntw");
        logs.append(&t, &n("b"), true, b"x\n");
        logs.append(&t, &n("a"), true, b"o\n");
        let data = logs.read(&t, Some(0), 1000).expect("chunk").data;
        assert_eq!(String::from_utf8_lossy(&data), "a| one\na| twb| x\no\n");
    }
}
