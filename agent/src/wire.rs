//! Wire messages as files: `skiff task encode` turns task definitions into the postcard bytes
//! of a desired-state message, `skiff task decode` prints any skiff message as JSON. For tooling
//! (a console that is not skiff, a fleet pipeline) and for checking that every build (aarch64,
//! armv7, x86_64) speaks the same bytes: CI encodes on one architecture and decodes on another.

use std::path::{Path, PathBuf};

use skiff_proto::codec::{decode, encode, DecodeError, EncodeError, Message};
use skiff_proto::{DesiredState, Name, TaskDefinition};

/// Largest message file read (the protocol's own limit applies inside).
const MAX_FILE: u64 = 1024 * 1024;

/// What went wrong turning files into messages or back.
#[derive(Debug, thiserror::Error)]
pub enum WireFileError {
    #[error("{0}")]
    TaskFile(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_FILE} bytes")]
    TooLarge { path: PathBuf },
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    #[error("{path}: {source}")]
    Decode { path: PathBuf, source: DecodeError },
    #[error("cannot print as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A desired-state message (`version`, `cluster`, `node` as given) holding the task
/// definitions read from `files`, encoded as it goes on the wire.
pub fn encode_desired(
    files: &[PathBuf],
    version: u64,
    cluster: Name,
    node: Option<Name>,
) -> Result<Vec<u8>, WireFileError> {
    let tasks = files
        .iter()
        .map(|f| crate::local::read_task_file(f).map_err(WireFileError::TaskFile))
        .collect::<Result<Vec<TaskDefinition>, _>>()?;
    let doc = DesiredState {
        version,
        cluster,
        node,
        tasks,
        signature: None,
    };
    Ok(encode(&Message::DesiredState(doc))?)
}

/// The message in `path` (any kind), as pretty JSON: `{"kind": ..., "message": ...}`.
pub fn decode_file(path: &Path) -> Result<String, WireFileError> {
    let io = |source| WireFileError::Io {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE {
        return Err(WireFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let msg = decode(&bytes).map_err(|source| WireFileError::Decode {
        path: path.to_owned(),
        source,
    })?;
    let body = match &msg {
        Message::DesiredState(m) => serde_json::to_value(m)?,
        Message::Status(m) => serde_json::to_value(m)?,
        Message::Event(m) => serde_json::to_value(m)?,
        Message::Metrics(m) => serde_json::to_value(m)?,
        Message::Command(m) => serde_json::to_value(m)?,
        Message::Reply(m) => serde_json::to_value(m)?,
        Message::RunRequest(m) => serde_json::to_value(m)?,
    };
    let out = serde_json::json!({ "kind": msg.kind().name(), "message": body });
    Ok(serde_json::to_string_pretty(&out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        s.parse().expect("valid name")
    }

    #[test]
    fn encoded_task_files_decode_to_the_same_tasks() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let files = vec![
            repo.join("examples/hello.json"),
            repo.join("examples/demo/ticker.json"),
        ];
        let bytes = encode_desired(&files, 7, name("demo"), Some(name("pi-1"))).expect("encode");
        let Ok(Message::DesiredState(doc)) = decode(&bytes) else {
            panic!("not a desired state");
        };
        assert_eq!(doc.version, 7);
        assert_eq!(doc.node, Some(name("pi-1")));
        let families: Vec<&str> = doc.tasks.iter().map(|t| t.family.as_str()).collect();
        assert_eq!(families, ["hello", "ticker"]);

        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("d.bin");
        std::fs::write(&f, &bytes).expect("write");
        let json: serde_json::Value =
            serde_json::from_str(&decode_file(&f).expect("decode")).expect("json");
        assert_eq!(json["kind"], "desired_state");
        assert_eq!(json["message"]["version"], 7);
        assert_eq!(json["message"]["tasks"][0]["family"], "hello");
    }

    #[test]
    fn garbage_is_refused_with_the_file_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("junk.bin");
        std::fs::write(&f, b"not a skiff message").expect("write");
        let err = decode_file(&f).expect_err("garbage decodes").to_string();
        assert!(err.contains("junk.bin"), "{err}");
    }
}
