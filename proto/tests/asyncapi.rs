//! `docs/asyncapi.yaml` is the document generated from the code (topics, QoS, retain flags,
//! JSON Schemas of the message types), so a changed type or topic without a regenerated
//! document fails here. After an intended change: `SKIFF_BLESS=1 cargo test -p skiff-proto
//! --test asyncapi`, and commit the file.

use std::path::PathBuf;

use serde_json::Value;
use skiff_proto::asyncapi::{document, schemas};
use skiff_proto::codec::Kind;

const HEADER: &str =
    "# skiff's MQTT contract (AsyncAPI 3.0). GENERATED from proto/src/asyncapi.rs and the types\n\
# in proto/src/types.rs: do not edit; `SKIFF_BLESS=1 cargo test -p skiff-proto --test asyncapi`\n\
# rewrites it after a change.\n";

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/asyncapi.yaml")
}

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// The value a local `#/a/b` reference points at.
fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
    doc.pointer(r.strip_prefix('#')?)
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = document();
    if std::env::var_os("SKIFF_BLESS").is_some() {
        // Top-level keys in reading order (a serde_json map would sort them).
        let mut yaml = String::from(HEADER);
        let top = generated.as_object().expect("an object");
        let order = [
            "asyncapi",
            "info",
            "defaultContentType",
            "servers",
            "channels",
            "operations",
            "components",
        ];
        assert_eq!(
            top.len(),
            order.len(),
            "a top-level key is missing from the order"
        );
        for key in order {
            let one = serde_json::json!({ key: top[key] });
            yaml.push_str(&serde_yaml::to_string(&one).expect("yaml"));
        }
        std::fs::write(path(), yaml).expect("write docs/asyncapi.yaml");
    }
    let text = std::fs::read_to_string(path())
        .unwrap_or_else(|e| panic!("{}: {e} (SKIFF_BLESS=1 creates it)", path().display()));
    let committed: Value = serde_yaml::from_str(&text).expect("docs/asyncapi.yaml parses as YAML");
    // Name what differs rather than print two 100 KiB values.
    // The schemas as generated from the types now, against the file's.
    let ours = &schemas();
    let theirs = &committed["components"]["schemas"];
    let mut types: Vec<&String> = ours
        .as_object()
        .into_iter()
        .chain(theirs.as_object())
        .flat_map(|m| m.keys())
        .filter(|k| ours.get(k.as_str()) != theirs.get(k.as_str()))
        .collect();
    types.sort();
    types.dedup();
    assert!(
        types.is_empty(),
        "the schemas of {types:?} in docs/asyncapi.yaml differ from the types in \
         proto/src/types.rs: regenerate with SKIFF_BLESS=1 cargo test -p skiff-proto --test \
         asyncapi and commit the file"
    );
    let keys: Vec<&String> = generated
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys())
        .filter(|k| generated[k.as_str()] != committed[k.as_str()])
        .collect();
    assert!(
        keys.is_empty() && committed == generated,
        "{keys:?} of docs/asyncapi.yaml differ from the generated document: regenerate with \
         SKIFF_BLESS=1 cargo test -p skiff-proto --test asyncapi and commit the file"
    );
}

#[test]
fn every_topic_and_kind_is_described_and_every_reference_resolves() {
    let doc = document();
    assert_eq!(doc["asyncapi"], "3.0.0");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 50, "only {} references", all.len());
    for r in &all {
        assert!(resolve(&doc, r).is_some(), "dangling reference {r}");
    }
    let channels = doc["channels"].as_object().expect("channels");
    let addresses: Vec<&str> = channels
        .values()
        .map(|c| c["address"].as_str().expect("address"))
        .collect();
    for a in [
        "skiff/v1/{cluster}/desired",
        "skiff/v1/{cluster}/nodes/{node}/desired",
        "skiff/v1/{cluster}/nodes/{node}/cmd",
        "skiff/v1/{cluster}/nodes/{node}/status",
        "skiff/v1/{cluster}/nodes/{node}/status.json",
        "skiff/v1/{cluster}/nodes/{node}/events",
        "skiff/v1/{cluster}/nodes/{node}/events.json",
        "skiff/v1/{cluster}/nodes/{node}/metrics",
        "skiff/v1/{cluster}/nodes/{node}/metrics.json",
        "skiff/v1/{cluster}/nodes/{node}/reply",
        "skiff/v1/{cluster}/queue",
    ] {
        assert!(addresses.contains(&a), "{a} missing from {addresses:?}");
    }
    assert_eq!(channels.len(), 11);
    // Each channel has exactly one operation, with the MQTT QoS and retain flag.
    let ops = doc["operations"].as_object().expect("operations");
    assert_eq!(ops.len(), channels.len());
    for (id, op) in ops {
        let ch = resolve(&doc, op["channel"]["$ref"].as_str().expect("channel ref"))
            .expect("operation's channel");
        let addr = ch["address"].as_str().expect("address");
        let retained = addr.ends_with("/desired") || addr.contains("/status");
        assert_eq!(op["bindings"]["mqtt"]["qos"], 1, "{id}");
        assert_eq!(op["bindings"]["mqtt"]["retain"], retained, "{id}");
        let agent_sends = ["status", "events", "metrics", "reply"]
            .iter()
            .any(|l| addr.ends_with(l) || addr.ends_with(&format!("{l}.json")));
        let action = if agent_sends { "send" } else { "receive" };
        assert_eq!(op["action"], action, "{id}");
    }
    // Every message kind has its schema, with its fields.
    let messages = doc["components"]["messages"].as_object().expect("messages");
    for kind in Kind::ALL {
        let m = messages
            .values()
            .find(|m| m["x-skiff-kind"] == kind as u8)
            .unwrap_or_else(|| panic!("no message for kind {}", kind.name()));
        let schema = resolve(&doc, m["payload"]["$ref"].as_str().expect("payload ref"))
            .expect("payload schema");
        assert!(
            schema["properties"]
                .as_object()
                .is_some_and(|p| !p.is_empty()),
            "{}: {schema}",
            kind.name()
        );
    }
    let status = &doc["components"]["schemas"]["Status"]["properties"];
    for field in [
        "node",
        "state",
        "agent_version",
        "at_ms",
        "tasks",
        "services",
    ] {
        assert!(
            status.get(field).is_some(),
            "Status.{field} missing: {status}"
        );
    }
    // Postcard's order: every field of an object is required, listed in wire order; every
    // enum lists its variants in index order.
    let defs = doc["components"]["schemas"].as_object().expect("schemas");
    for (ty, schema) in defs {
        fn names(s: &Value, out: &mut Vec<String>) {
            if let Some(c) = s["const"].as_str() {
                out.push(c.into());
            }
            for e in s["enum"].as_array().into_iter().flatten() {
                out.extend(e.as_str().map(String::from));
            }
            for o in s["oneOf"].as_array().into_iter().flatten() {
                match o["properties"].as_object() {
                    Some(p) if o["type"] == "object" => out.extend(p.keys().cloned()),
                    _ => names(o, out),
                }
            }
        }
        let mut declared = Vec::new();
        names(schema, &mut declared);
        if declared.is_empty() {
            if let Some(props) = schema["properties"].as_object() {
                let required = schema["required"].as_array().map_or(0, Vec::len);
                assert_eq!(
                    required,
                    props.len(),
                    "{ty}: not every field is listed in order"
                );
            }
            continue;
        }
        let mut order: Vec<String> = schema["x-postcard-variants"]
            .as_array()
            .unwrap_or_else(|| panic!("{ty} has no x-postcard-variants: add it in asyncapi.rs"))
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        order.sort();
        declared.sort();
        assert_eq!(order, declared, "{ty}: x-postcard-variants");
    }
    assert_eq!(
        defs["Health"]["x-postcard-variants"],
        serde_json::json!(["Unknown", "Healthy", "Unhealthy"])
    );
    let name = &doc["components"]["schemas"]["Name"];
    assert_eq!(name["maxLength"], 64);
}
