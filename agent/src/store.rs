//! The durable state store: what the agent must find again after `kill -9` or a power cut, with
//! no network.
//!
//! ```text
//! {data_dir}/state/desired-cluster.bin   last applied cluster document (the wire encoding)
//! {data_dir}/state/desired-node.bin      last applied node document
//! {data_dir}/state/finished.bin          tasks that ran to their end and must not run again
//! {data_dir}/state/history/{task}.log    run history: length-prefixed records, append-only
//! {data_dir}/state/trust.bin             keys added / retired by trust updates (`trust.rs`)
//! {data_dir}/state/queue.bin             cluster-queue copies claimed, offers decided
//! ```
//!
//! Whole files are replaced atomically (temp file, fsync, rename, fsync of the directory), so a
//! crash leaves the old or the new content, never a mix. History is appended; a record torn by a
//! power cut is detected by its length prefix and dropped. A file that does not decode is moved
//! aside as `*.corrupt` with an error logged, and the agent starts without it. Writes happen only
//! when something changes (a document applied, a run ended), never on a timer: the SD card is
//! spared.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use skiff_proto::codec::{decode_as, encode, Kind, Message};
use skiff_proto::limits::MAX_HISTORY;
use skiff_proto::{DesiredState, Name, RunRecord, Scope};

pub use crate::core::FinishedTask;

/// Largest state file read back.
const MAX_STATE_FILE: u64 = 4 << 20;
/// Largest single history record.
const MAX_RECORD: usize = 4096;
/// History records kept on disk before the file is compacted to [`MAX_HISTORY`].
const HISTORY_COMPACT_AT: usize = 2 * MAX_HISTORY;
/// Format version of `finished.bin`.
const FINISHED_VERSION: u8 = 3;
/// Format version of `trust.bin`.
const TRUST_VERSION: u8 = 1;
/// Format version of `services.bin`.
const SERVICES_VERSION: u8 = 1;
/// Format version of `queue.bin`.
const QUEUE_VERSION: u8 = 1;

/// What a previous run of the agent left.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Saved {
    pub cluster: Option<DesiredState>,
    pub node: Option<DesiredState>,
    pub finished: Vec<FinishedTask>,
    /// Services' scaled counts and rollbacks.
    pub services: Vec<crate::core::ServiceMemo>,
    /// The last wall time known to be good.
    pub last_wall_ms: Option<u64>,
    /// Cluster-queue claims and decided offers.
    pub queue: crate::core::QueueMemo,
}

/// What went wrong writing or reading the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
}

/// The store under `{data_dir}/state`.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

impl StateStore {
    /// Opens (creates) the store.
    pub fn open(dir: PathBuf) -> Result<StateStore, StateError> {
        let history = dir.join("history");
        std::fs::create_dir_all(&history).map_err(io_err("create", &history))?;
        Ok(StateStore { dir })
    }

    fn desired_path(&self, scope: Scope) -> PathBuf {
        self.dir.join(match scope {
            Scope::Cluster => "desired-cluster.bin",
            Scope::Node => "desired-node.bin",
        })
    }

    fn history_path(&self, task: &Name) -> PathBuf {
        self.dir.join("history").join(format!("{task}.log"))
    }

    /// Everything saved, skipping (and setting aside) what does not decode.
    pub fn load(&self) -> Saved {
        let mut saved = Saved::default();
        for scope in [Scope::Cluster, Scope::Node] {
            let path = self.desired_path(scope);
            let Some(bytes) = self.read_whole(&path) else {
                continue;
            };
            match decode_as(Kind::DesiredState, &bytes) {
                Ok(Message::DesiredState(d)) => match scope {
                    Scope::Cluster => saved.cluster = Some(d),
                    Scope::Node => saved.node = Some(d),
                },
                Ok(_) => {}
                Err(e) => self.set_aside(&path, &e.to_string()),
            }
        }
        let path = self.dir.join("finished.bin");
        if let Some(bytes) = self.read_whole(&path) {
            match bytes.split_first() {
                Some((&FINISHED_VERSION, body)) => {
                    match postcard::from_bytes::<Vec<FinishedTask>>(body) {
                        Ok(f) => saved.finished = f,
                        Err(e) => self.set_aside(&path, &e.to_string()),
                    }
                }
                _ => self.set_aside(&path, "unknown format version"),
            }
        }
        let path = self.dir.join("services.bin");
        if let Some(bytes) = self.read_whole(&path) {
            match bytes.split_first() {
                Some((&SERVICES_VERSION, body)) => match postcard::from_bytes(body) {
                    Ok(s) => saved.services = s,
                    Err(e) => self.set_aside(&path, &e.to_string()),
                },
                _ => self.set_aside(&path, "unknown format version"),
            }
        }
        let path = self.dir.join("queue.bin");
        if let Some(bytes) = self.read_whole(&path) {
            match bytes.split_first() {
                Some((&QUEUE_VERSION, body)) => match postcard::from_bytes(body) {
                    Ok(q) => saved.queue = q,
                    Err(e) => self.set_aside(&path, &e.to_string()),
                },
                _ => self.set_aside(&path, "unknown format version"),
            }
        }
        if let Some(bytes) = self.read_whole(&self.dir.join("wall")) {
            saved.last_wall_ms = bytes.as_slice().try_into().ok().map(u64::from_le_bytes);
        }
        saved
    }

    /// Saves a wall time known to be good (hourly and at shutdown: 8 bytes).
    pub fn save_wall(&self, wall_ms: u64) -> Result<(), StateError> {
        write_atomic(&self.dir.join("wall"), &wall_ms.to_le_bytes())
    }

    fn read_whole(&self, path: &Path) -> Option<Vec<u8>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read saved state; starting without it");
                return None;
            }
        };
        let mut bytes = Vec::new();
        if let Err(e) = file.take(MAX_STATE_FILE + 1).read_to_end(&mut bytes) {
            tracing::error!(path = %path.display(), error = %e, "cannot read saved state; starting without it");
            return None;
        }
        if bytes.len() as u64 > MAX_STATE_FILE {
            self.set_aside(path, "larger than the state file limit");
            return None;
        }
        Some(bytes)
    }

    fn set_aside(&self, path: &Path, why: &str) {
        let aside = path.with_extension("corrupt");
        tracing::error!(path = %path.display(), reason = why, aside = %aside.display(), "saved state does not decode; set aside, starting without it");
        let _ = std::fs::rename(path, aside);
    }

    /// Saves an applied desired-state document.
    pub fn save_desired(&self, scope: Scope, doc: &DesiredState) -> Result<(), StateError> {
        let bytes =
            encode(&Message::DesiredState(doc.clone())).map_err(|e| StateError::Encode {
                what: "desired state",
                reason: e.to_string(),
            })?;
        write_atomic(&self.desired_path(scope), &bytes)
    }

    /// Saves the set of finished tasks.
    pub fn save_finished(&self, finished: &[FinishedTask]) -> Result<(), StateError> {
        let mut bytes = vec![FINISHED_VERSION];
        bytes.extend(
            postcard::to_allocvec(finished).map_err(|e| StateError::Encode {
                what: "finished tasks",
                reason: e.to_string(),
            })?,
        );
        write_atomic(&self.dir.join("finished.bin"), &bytes)
    }

    /// Saves the services' scaled counts and rollbacks.
    pub fn save_services(&self, services: &[crate::core::ServiceMemo]) -> Result<(), StateError> {
        let mut bytes = vec![SERVICES_VERSION];
        bytes.extend(
            postcard::to_allocvec(services).map_err(|e| StateError::Encode {
                what: "services",
                reason: e.to_string(),
            })?,
        );
        write_atomic(&self.dir.join("services.bin"), &bytes)
    }

    /// Saves the cluster queue's claims and decided offers.
    pub fn save_queue(&self, queue: &crate::core::QueueMemo) -> Result<(), StateError> {
        let mut bytes = vec![QUEUE_VERSION];
        bytes.extend(
            postcard::to_allocvec(queue).map_err(|e| StateError::Encode {
                what: "queue",
                reason: e.to_string(),
            })?,
        );
        write_atomic(&self.dir.join("queue.bin"), &bytes)
    }

    /// Saves the changes applied trust updates made to the configured keys.
    pub fn save_trust(&self, state: &crate::trust::TrustState) -> Result<(), StateError> {
        let mut bytes = vec![TRUST_VERSION];
        bytes.extend(
            postcard::to_allocvec(state).map_err(|e| StateError::Encode {
                what: "trusted keys",
                reason: e.to_string(),
            })?,
        );
        write_atomic(&self.dir.join("trust.bin"), &bytes)
    }

    /// What trust updates changed (default: nothing yet). A file that does not decode is set
    /// aside: the configured keys apply alone, and an error says so.
    pub fn load_trust(&self) -> crate::trust::TrustState {
        let path = self.dir.join("trust.bin");
        let Some(bytes) = self.read_whole(&path) else {
            return Default::default();
        };
        match bytes.split_first() {
            Some((&TRUST_VERSION, body)) => match postcard::from_bytes(body) {
                Ok(state) => state,
                Err(e) => {
                    self.set_aside(&path, &e.to_string());
                    Default::default()
                }
            },
            _ => {
                self.set_aside(&path, "unknown format version");
                Default::default()
            }
        }
    }

    /// Appends a run to its task's history (compacting the file when it grew long).
    pub fn append_run(&self, run: &RunRecord) -> Result<(), StateError> {
        let path = self.history_path(&run.task);
        let mut record = run.clone();
        if let Some(f) = &mut record.failure {
            truncate_utf8(f, 512);
        }
        let body = postcard::to_allocvec(&record).map_err(|e| StateError::Encode {
            what: "run record",
            reason: e.to_string(),
        })?;
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let mut framed = len.to_le_bytes().to_vec();
        framed.extend(body);
        let (mut runs, valid) = match read_history(&path) {
            Ok(read) => read,
            Err(e) => {
                // Appended as it is: cutting what could not be read might cut good records.
                tracing::warn!(path = %path.display(), error = %e, "cannot read the run history before appending to it");
                (Vec::new(), u64::MAX)
            }
        };
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        // Or every later record would sit behind a torn one, unread (and the file would never
        // be compacted).
        cut_torn_tail(&f, &path, valid, "run history")
            .map_err(io_err("cut the torn tail of", &path))?;
        if crate::crash::armed("history-append") {
            let _ = f.write_all(&framed[..framed.len() / 2]);
            let _ = f.sync_data();
            crate::crash::abort("history-append");
        }
        f.write_all(&framed).map_err(io_err("append to", &path))?;
        f.sync_data().map_err(io_err("sync", &path))?;
        runs.push(record);
        if runs.len() > HISTORY_COMPACT_AT {
            let keep = &runs[runs.len() - MAX_HISTORY..];
            let mut out = Vec::new();
            for r in keep {
                if let Ok(b) = postcard::to_allocvec(r) {
                    out.extend(u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
                    out.extend(b);
                }
            }
            write_atomic(&path, &out)?;
        }
        Ok(())
    }

    /// A task's runs, oldest first, at most the newest `limit`.
    pub fn history(&self, task: &Name, limit: usize) -> Vec<RunRecord> {
        let path = self.history_path(task);
        let runs = match read_history(&path) {
            Ok((runs, _)) => runs,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the run history");
                Vec::new()
            }
        };
        let skip = runs.len().saturating_sub(limit.min(MAX_HISTORY));
        runs.into_iter().skip(skip).collect()
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Reads length-prefixed records; stops at the first torn or undecodable one. Also returns the
/// length of the good records, where the next one must go. No file is no runs.
fn read_history(path: &Path) -> io::Result<(Vec<RunRecord>, u64)> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(f) => {
            f.take(MAX_STATE_FILE).read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    }
    let mut runs = Vec::new();
    let mut rest = bytes.as_slice();
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        if len > MAX_RECORD || tail.len() < len {
            break; // torn by a crash mid-append
        }
        match postcard::from_bytes::<RunRecord>(&tail[..len]) {
            Ok(r) => runs.push(r),
            Err(_) => break,
        }
        rest = &tail[len..];
    }
    let valid = bytes.len() - rest.len();
    Ok((runs, u64::try_from(valid).unwrap_or(u64::MAX)))
}

/// Cuts an append-only file of records back to `valid` bytes, its good records, when a crash
/// mid-append (or a part written on a full disk) left a torn one after them: what is appended
/// next must follow the good records to be read back. `what` names the file in the warning.
pub(crate) fn cut_torn_tail(f: &File, path: &Path, valid: u64, what: &str) -> io::Result<()> {
    let on_disk = f.metadata()?.len();
    if on_disk > valid {
        tracing::warn!(
            path = %path.display(),
            cut_bytes = on_disk - valid,
            "{what} ends in a torn record (a crash while writing it); cut"
        );
        f.set_len(valid)?;
        f.sync_data()?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("sync", &tmp))?;
    }
    if crate::crash::any_armed() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        crate::crash::point(&format!("store-replace:{}", name.unwrap_or_default()));
    }
    std::fs::rename(&tmp, path).map_err(io_err("replace", path))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Reads a task's history from a data dir (`skiff history` on the device).
pub fn read_task_history(data_dir: &Path, task: &Name, limit: usize) -> Vec<RunRecord> {
    StateStore {
        dir: data_dir.join("state"),
    }
    .history(task, limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::{ExitInfo, StopReason};

    fn n(s: &str) -> Name {
        s.parse().expect("name")
    }

    #[test]
    fn trust_state_round_trips_and_a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path().join("state")).expect("open");
        assert_eq!(store.load_trust(), crate::trust::TrustState::default());
        let state = crate::trust::TrustState {
            version: 7,
            added: vec![skiff_proto::FleetKey {
                key_id: n("0123456789abcdef"),
                bytes: vec![1; 32],
            }],
            retired: vec![n("fedcba9876543210")],
        };
        store.save_trust(&state).expect("save");
        assert_eq!(store.load_trust(), state);
        std::fs::write(dir.path().join("state/trust.bin"), b"\x01\xff").expect("corrupt");
        assert_eq!(store.load_trust(), crate::trust::TrustState::default());
        assert!(dir.path().join("state/trust.corrupt").exists());
    }

    fn run(task: &str, attempt: u32) -> RunRecord {
        RunRecord {
            task: n(task),
            revision: 1,
            attempt,
            started_at_ms: 1000 * u64::from(attempt),
            ended_at_ms: 1000 * u64::from(attempt) + 500,
            reason: StopReason::EssentialExited,
            exit: Some(ExitInfo {
                code: 0,
                signal: None,
                oom_killed: false,
            }),
            failure: None,
        }
    }

    #[test]
    fn history_survives_a_torn_append_and_stays_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path().join("state")).expect("open");
        for i in 1..=3 {
            store.append_run(&run("job", i)).expect("append");
        }
        // A power cut mid-append leaves half a record.
        let path = store.history_path(&n("job"));
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&[40, 0, 0, 0, 1, 2]).expect("write");
        drop(f);
        let h = store.history(&n("job"), 10);
        assert_eq!(h.iter().map(|r| r.attempt).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(store.history(&n("job"), 2).len(), 2);
        assert!(store.history(&n("other"), 10).is_empty());
        // The next run appended after the restart is read too: the torn tail is cut first.
        store
            .append_run(&run("job", 4))
            .expect("append after the tear");
        let h = store.history(&n("job"), 10);
        assert_eq!(
            h.iter().map(|r| r.attempt).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
    }

    #[test]
    fn history_is_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path().join("state")).expect("open");
        let n_runs = u32::try_from(HISTORY_COMPACT_AT).expect("small") + 5;
        for i in 1..=n_runs {
            store.append_run(&run("svc", i)).expect("append");
        }
        let (all, _) = read_history(&store.history_path(&n("svc"))).expect("read");
        assert!(all.len() <= HISTORY_COMPACT_AT, "{}", all.len());
        assert_eq!(all.last().map(|r| r.attempt), Some(n_runs));
    }

    #[test]
    fn desired_and_finished_round_trip_and_corruption_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path().join("state")).expect("open");
        assert_eq!(store.load(), Saved::default());
        let doc = DesiredState {
            version: 7,
            cluster: n("c"),
            node: Some(n("pi")),
            tasks: vec![],
            signature: None,
        };
        store.save_desired(Scope::Node, &doc).expect("save");
        let saved = store.load();
        assert_eq!(saved.node, Some(doc));
        assert_eq!(saved.cluster, None);
        std::fs::write(store.desired_path(Scope::Cluster), b"garbage").expect("write");
        std::fs::write(dir.path().join("state/finished.bin"), b"\x01\xff\xff").expect("write");
        let saved = store.load();
        assert_eq!(saved.cluster, None);
        assert!(saved.finished.is_empty());
        assert!(dir.path().join("state/desired-cluster.corrupt").exists());
        assert!(dir.path().join("state/finished.corrupt").exists());
        assert!(saved.node.is_some(), "the good file is still read");
    }
}

#[cfg(test)]
mod crash_tests {
    use super::*;

    fn n(s: &str) -> Name {
        s.parse().expect("name")
    }

    /// A crash between writing the temp file and renaming it (kill -9 or power cut during a
    /// store write) leaves the previous state, which is what the next start reads.
    #[test]
    fn a_write_torn_before_its_rename_leaves_the_previous_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path().join("state")).expect("open");
        let v1 = DesiredState {
            version: 1,
            cluster: n("c"),
            node: Some(n("pi")),
            tasks: vec![],
            signature: None,
        };
        store.save_desired(Scope::Node, &v1).expect("save v1");
        // The next write died half-way: its temp file holds a fragment.
        let tmp = store.desired_path(Scope::Node).with_extension("tmp");
        std::fs::write(&tmp, b"SK\x01\x01\x07half").expect("torn temp");
        std::fs::write(dir.path().join("state/finished.tmp"), b"\x02\x05").expect("torn temp");
        let saved = store.load();
        assert_eq!(saved.node, Some(v1.clone()));
        assert!(saved.finished.is_empty());
        // The next successful write replaces the leftover temp file.
        let v2 = DesiredState { version: 2, ..v1 };
        store.save_desired(Scope::Node, &v2).expect("save v2");
        assert_eq!(store.load().node, Some(v2));
        assert!(!tmp.exists());
    }
}
