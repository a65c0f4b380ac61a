//! What each fuzz target checks of one input, shared by the libFuzzer targets
//! (`fuzz/fuzz_targets/*.rs`) and by `agent/tests/fuzz_corpus.rs`, which replays the corpus in
//! `fuzz/corpus/` under plain `cargo test`. A check returns normally for any input the decoder
//! refuses with an error; it panics (a fuzzing failure) when a decoder panics or an accepted
//! input breaks what the rest of the agent relies on.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use skiff_agent::config::Config;
use skiff_agent::ecs::{parse_task_definition, to_ecs_json};
use skiff_agent::images::digest::Digest;
use skiff_agent::images::oci::{
    list_platforms, select_platform, ConfigBlob, Index, Manifest, ManifestKind, Platform,
    MAX_JSON_SIZE,
};
use skiff_agent::images::reference::ImageRef;
use skiff_agent::images::unpack::clean_components;
use skiff_agent::policy::Policy;
use skiff_proto::codec::{decode, decode_as, encode, Kind};
use skiff_proto::TaskDefinition;

/// One target's check of one input.
pub type Check = fn(&[u8]);

/// The targets, by name (the corpus directory and the binary of each).
pub const TARGETS: [(&str, Check); 6] = [
    ("message", message),
    ("task_definition", task_definition),
    ("image_manifest", image_manifest),
    ("tar_path", tar_path),
    ("config", config),
    ("policy", policy),
];

/// The MQTT message decoder: header (magic, major, kind), postcard body, bounds. Every kind is
/// tried through `decode` and `decode_as`; a decoded message must encode again, and that
/// encoding decode to a message with the same encoding (bytes are compared, not values: a
/// metrics sample may hold a NaN).
pub fn message(data: &[u8]) {
    let any = decode(data).map(|m| encode(&m).expect("a decoded message encodes"));
    for kind in Kind::ALL {
        let as_kind = decode_as(kind, data).map(|m| encode(&m).expect("encodes"));
        match (&any, &as_kind) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Ok(_), Err(_)) => assert_ne!(data.get(3).copied(), Some(kind as u8)),
            (Err(_), Ok(_)) => panic!("decode_as accepted what decode refused"),
            (Err(_), Err(_)) => {}
        }
    }
    if let Ok(bytes) = any {
        // What the agent accepted it can send back (status echoes, the JSON mirror).
        let again = decode(&bytes).expect("an encoded message decodes");
        assert_eq!(encode(&again).expect("encodes"), bytes);
    }
}

/// The ECS task-definition JSON reader (`skiff ctl apply`, local mode, `skiff task validate`):
/// bounded input, its own JSON tree, every key checked. What it accepts must pass
/// `TaskDefinition::validate`, be judged by the default node policy, and go back to ECS JSON
/// that parses to the same definition.
pub fn task_definition(data: &[u8]) {
    let Ok(def) = parse_task_definition(data) else {
        return;
    };
    def.validate()
        .expect("a parsed task definition is within bounds");
    let _ = Policy::default().check(&def);
    let json = serde_json::to_vec(&to_ecs_json(&def)).expect("serialise");
    let again = parse_task_definition(&json).expect("to_ecs_json output parses");
    assert_eq!(def, again);
}

/// Image documents from a registry or an OCI layout: index (manifest list), manifest, image
/// config, and the strings in them (digests, platforms, references). Bounded by
/// `MAX_JSON_SIZE` before parsing, as the puller and the importer do.
pub fn image_manifest(data: &[u8]) {
    if data.len() as u64 > MAX_JSON_SIZE {
        return;
    }
    if let Ok(index) = serde_json::from_slice::<Index>(data) {
        let _ = list_platforms(&index.manifests);
        let _ = select_platform(&Platform::host(), &index.manifests);
        for d in &index.manifests {
            let _ = ManifestKind::of(&d.media_type);
        }
    }
    if let Ok(manifest) = serde_json::from_slice::<Manifest>(data) {
        let _ = list_platforms(&manifest.layers);
    }
    if let Ok(config) = serde_json::from_slice::<ConfigBlob>(data) {
        let p = config.platform();
        let _ = Platform::host().match_score(&p);
        let _ = p.to_string().parse::<Platform>();
        let _ = config.image_config();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(d) = s.parse::<Digest>() {
            assert_eq!(d.to_string().parse::<Digest>().ok(), Some(d));
        }
        let _ = s.parse::<Platform>();
        if let Ok(r) = s.parse::<ImageRef>() {
            let _ = r.name();
            let _ = r.without_digest();
            let _ = r.with_tag("latest");
        }
    }
}

/// Layer tar entry paths. The input is tried twice: as one raw entry name given to the
/// unpacker's path cleaner, and as a tar stream whose entries' names (ustar prefix, GNU long
/// names, PAX `path` records) and link names go through the same cleaner. What the cleaner
/// accepts cannot leave the rootfs: no `..`, `.`, empty or `/`-holding component.
pub fn tar_path(data: &[u8]) {
    /// Entries read from one stream, at most.
    const MAX_ENTRIES: usize = 1024;
    check_tar_path(data);
    let mut archive = tar::Archive::new(data);
    let Ok(entries) = archive.entries() else {
        return;
    };
    for entry in entries.take(MAX_ENTRIES) {
        let Ok(mut entry) = entry else {
            return;
        };
        check_tar_path(&entry.path_bytes());
        if let Some(link) = entry.link_name_bytes() {
            check_tar_path(&link);
        }
        let h = entry.header();
        let _ = (h.mode(), h.uid(), h.gid(), h.mtime(), h.entry_type());
        // The data is a part of the input: bounded.
        let _ = std::io::copy(
            &mut (&mut entry).take(data.len() as u64),
            &mut std::io::sink(),
        );
    }
}

fn check_tar_path(raw: &[u8]) {
    let name = String::from_utf8_lossy(raw);
    if let Ok(components) = clean_components(raw, &name) {
        for c in &components {
            let b = c.as_bytes();
            assert!(!b.is_empty(), "empty component from {raw:?}");
            assert!(b != b"." && b != b"..", "{b:?} kept from {raw:?}");
            assert!(!b.contains(&b'/'), "slash in component from {raw:?}");
        }
    }
}

/// The agent's TOML config (`/etc/skiff/agent.toml`), as `Config::load` parses it after its
/// size check (64 KiB). `validate` is not run: it reads the files the config names
/// (certificates, keys, the policy file) from the fuzzing host.
pub fn config(data: &[u8]) {
    if data.len() > 64 * 1024 {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = toml::from_str::<Config>(text);
}

/// The node's policy file, through `Policy::load` (size bound, TOML, its own checks) of a
/// scratch file in the temp dir (removed after), then `Policy::check` of a task definition asking for everything a policy can
/// refuse.
pub fn policy(data: &[u8]) {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    static TASK: OnceLock<TaskDefinition> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("skiff-fuzz-policy-{}.toml", std::process::id()))
    });
    let task = TASK.get_or_init(|| {
        parse_task_definition(include_bytes!("greedy-task.json")).expect("greedy-task.json")
    });
    std::fs::write(path, data).expect("write the scratch policy file");
    let loaded = Policy::load(path);
    let _ = std::fs::remove_file(path);
    if let Ok(policy) = loaded {
        let _ = policy.check(task);
    }
}
