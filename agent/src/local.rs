//! Local mode: desired state from a directory of task-definition files (`*.json`, ECS format).
//!
//! This is how an SD-card image ships its workloads and how skiff runs with no broker at all.
//! The directory is polled; a change of any file's name, size or mtime re-reads all of them.
//! One bad file rejects the whole new set by name and leaves what runs untouched.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use skiff_proto::TaskDefinition;

/// How often the directory is checked.
pub const POLL: Duration = Duration::from_secs(2);
/// Most files read from the directory.
pub const MAX_FILES: usize = skiff_proto::limits::MAX_TASKS;
/// Reads and checks one task-definition file: ECS JSON with the fields skiff supports (bounded
/// by [`crate::ecs::read_task_file`]) and image references that parse. The message names the
/// file and the field.
pub fn read_task_file(path: &std::path::Path) -> Result<TaskDefinition, String> {
    let def = crate::ecs::read_task_file(path)?;
    for (i, c) in def.containers.iter().enumerate() {
        c.image
            .parse::<crate::images::ImageRef>()
            .map_err(|e| format!("{}: containerDefinitions[{i}].image: {e}", path.display()))?;
    }
    Ok(def)
}

/// A directory listing: file name, size, mtime.
type Listing = Vec<(String, u64, Option<SystemTime>)>;

/// Watches a directory of task definitions.
#[derive(Debug)]
pub struct Watcher {
    dir: PathBuf,
    /// The last listing, or the error reading it, to report each change once.
    last: Option<Result<Listing, String>>,
}

impl Watcher {
    pub fn new(dir: PathBuf) -> Watcher {
        Watcher { dir, last: None }
    }

    /// `None` when nothing changed since the last call; else the new set or why it is rejected.
    pub fn poll(&mut self) -> Option<Result<Vec<TaskDefinition>, String>> {
        let listing = self.listing();
        if self.last.as_ref() == Some(&listing) {
            return None;
        }
        self.last = Some(listing.clone());
        Some(listing.and_then(|l| self.read_all(&l)))
    }

    fn listing(&self) -> Result<Listing, String> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| format!("cannot read {}: {e}", self.dir.display()))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", self.dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            let meta = entry.metadata().map_err(|e| format!("{name}: {e}"))?;
            out.push((name, meta.len(), meta.modified().ok()));
        }
        out.sort();
        if out.len() > MAX_FILES {
            return Err(format!(
                "{}: {} task files, at most {MAX_FILES} allowed",
                self.dir.display(),
                out.len()
            ));
        }
        Ok(out)
    }

    fn read_all(
        &self,
        listing: &[(String, u64, Option<SystemTime>)],
    ) -> Result<Vec<TaskDefinition>, String> {
        let mut tasks = Vec::with_capacity(listing.len());
        for (name, _, _) in listing {
            let def = read_task_file(&self.dir.join(name))?;
            if tasks
                .iter()
                .any(|t: &TaskDefinition| t.family == def.family)
            {
                return Err(format!("{name}: family {} is defined twice", def.family));
            }
            tasks.push(def);
        }
        Ok(tasks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_changes_once_and_bad_files_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Watcher::new(dir.path().into());
        assert_eq!(w.poll().map(|r| r.map(|t| t.len())), Some(Ok(0)));
        assert!(w.poll().is_none());
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
        assert!(w.poll().is_none());
        std::fs::write(
            dir.path().join("a.json"),
            r#"{"family":"a","containerDefinitions":[{"name":"m","image":"busybox"}]}"#,
        )
        .expect("write");
        let tasks = w.poll().expect("changed").expect("valid");
        assert_eq!(tasks[0].family.as_str(), "a");
        std::fs::write(dir.path().join("b.json"), r#"{"family":"b","containerDefinitions":[{"name":"m","image":"busybox","hostname":"box"}]}"#).expect("write");
        let err = w.poll().expect("changed").expect_err("hostname");
        assert!(err.contains("b.json") && err.contains("hostname"), "{err}");
    }
}
