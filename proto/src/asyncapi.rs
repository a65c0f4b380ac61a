//! `docs/asyncapi.yaml`, generated (feature `schema`): every topic of [`crate::topic`] with its
//! direction, QoS, retain flag and message, and the JSON Schema of every message generated from
//! [`crate::types`] by schemars, so the document can't drift from the code. The test
//! `proto/tests/asyncapi.rs` compares the committed file with [`document`];
//! `SKIFF_BLESS=1 cargo test -p skiff-proto --test asyncapi` rewrites it.
//!
//! Operations are the agent's: `send` = the agent publishes and consoles subscribe, `receive`
//! = a console publishes and the agent subscribes.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::codec::{Kind, HEADER_LEN, MAGIC, PROTOCOL_MAJOR};
use crate::limits::MAX_MESSAGE;
use crate::topic::{Publisher, Topic, JSON_MIRROR_SUFFIX, QOS, ROOT};
use crate::types::*;

/// Content type of the binary (postcard) topics.
pub const POSTCARD_CONTENT_TYPE: &str = "application/vnd.skiff.v1+postcard";

/// The whole AsyncAPI 3.0 document.
pub fn document() -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for kind in Kind::ALL {
        messages.insert(message_name(kind).into(), postcard_message(kind));
    }
    for kind in [Kind::Status, Kind::Event, Kind::Metrics] {
        messages.insert(format!("{}Json", message_name(kind)), json_message(kind));
    }
    for topic in every_topic() {
        let id = channel_id(&topic);
        let kind = topic.kind();
        channels.insert(
            id.clone(),
            channel(&topic, &address(&topic, ""), message_name(kind), &id),
        );
        operations.insert(op_id(&topic, &id), operation(&topic, &id, false));
        if topic.json_mirror().is_some() {
            let jid = format!("{id}Json");
            channels.insert(
                jid.clone(),
                channel(
                    &topic,
                    &address(&topic, JSON_MIRROR_SUFFIX),
                    &format!("{}Json", message_name(kind)),
                    &jid,
                ),
            );
            operations.insert(op_id(&topic, &jid), operation(&topic, &jid, true));
        }
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "skiff fleet protocol",
            "version": format!("{PROTOCOL_MAJOR}.0.0"),
            "description": INTRO,
        },
        "defaultContentType": POSTCARD_CONTENT_TYPE,
        "servers": {
            "broker": {
                "host": "localhost:1883",
                "protocol": "mqtt",
                "protocolVersion": "3.1.1",
                "description": "Any MQTT 3.1.1 broker (mosquitto, EMQX, HiveMQ, AWS IoT Core); \
                    mqtts:// on 8883 with client certificates, see docs/broker-tls.md.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas(),
        },
    })
}

const INTRO: &str = "What a skiff fleet says over MQTT, for console authors in any language. \
Every topic lives under `skiff/v1/{cluster}/`. The operations are the agent's: `send` means the \
agent publishes and consoles subscribe, `receive` means a console publishes and the agent \
subscribes. Every publish is QoS 1; desired state and status are retained.\n\n\
Binary topics carry one message each: a 4-byte header, the bytes `S` `K` (0x53 0x4B), the \
protocol major (1) and the message kind (1 desired state, 2 status, 3 event, 4 metrics, 5 \
command, 6 reply), then the body in postcard (https://postcard.jamesmunns.com/wire-format), \
at most 131072 bytes in all. Postcard is not self-describing: struct fields follow each other \
in the order of each schema's `required` list (every field is listed there, in the order of \
the Rust types in proto/src/types.rs; `properties` are sorted by name), integers are varints \
(signed ones zigzag), f32 is 4 bytes little-endian, an Option is a 0 or 1 byte then the \
value, a sequence or string is its varint length then the items, a map (an object with \
`additionalProperties`, such as a status's `labels`) is its varint length then each key and \
value in key order, an enum is the varint index \
of its variant in the schema's `x-postcard-variants` list then the variant's data. The schemas below are the serde \
data model of those bodies; receivers reject unknown kinds, unknown protocol majors, trailing \
bytes and broken bounds by name.\n\n\
JSON consumers read the mirror topics instead (`status.json`, `events.json`, `metrics.json` \
beside the binary ones), published by agents whose config turns `[mirror_json]` on: the same \
content as the binary message, as JSON with the Rust field names, enums externally tagged \
(`\"Online\"`, `{\"TaskRunning\": {\"task\": \"web\"}}`), options as null. Desired state and \
commands are written in the binary form only (`skiff task encode`, `skiff ctl`).";

/// Every topic shape, with `{cluster}` and `{node}` as the names.
fn every_topic() -> Vec<Topic> {
    let c = || -> crate::Name { "cluster".parse().expect("a valid name") };
    let n = || -> crate::Name { "node".parse().expect("a valid name") };
    alloc::vec![
        Topic::ClusterDesired { cluster: c() },
        Topic::NodeDesired {
            cluster: c(),
            node: n()
        },
        Topic::Cmd {
            cluster: c(),
            node: n()
        },
        Topic::Status {
            cluster: c(),
            node: n()
        },
        Topic::Events {
            cluster: c(),
            node: n()
        },
        Topic::Metrics {
            cluster: c(),
            node: n()
        },
        Topic::Reply {
            cluster: c(),
            node: n()
        },
        Topic::Queue { cluster: c() },
    ]
}

fn address(topic: &Topic, suffix: &str) -> String {
    match topic {
        Topic::ClusterDesired { .. } => format!("{ROOT}/{{cluster}}/desired"),
        Topic::Queue { .. } => format!("{ROOT}/{{cluster}}/queue"),
        _ => format!("{ROOT}/{{cluster}}/nodes/{{node}}/{}{suffix}", topic.leaf()),
    }
}

fn channel_id(topic: &Topic) -> String {
    match topic {
        Topic::ClusterDesired { .. } => "clusterDesired".into(),
        Topic::NodeDesired { .. } => "nodeDesired".into(),
        other => other.leaf().into(),
    }
}

fn op_id(topic: &Topic, channel: &str) -> String {
    let verb = match topic.publisher() {
        Publisher::Agent => "send",
        Publisher::Console => "receive",
    };
    let mut chars = channel.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase().to_string());
    format!("{verb}{}{}", first.unwrap_or_default(), chars.as_str())
}

fn message_name(kind: Kind) -> &'static str {
    match kind {
        Kind::DesiredState => "DesiredState",
        Kind::Status => "Status",
        Kind::Event => "Event",
        Kind::Metrics => "Metrics",
        Kind::Command => "Command",
        Kind::Reply => "Reply",
        Kind::RunRequest => "RunRequest",
    }
}

fn channel(topic: &Topic, address: &str, message: &str, id: &str) -> Value {
    let mut params = Map::new();
    params.insert(
        "cluster".into(),
        json!({"description": "The cluster (the agent's `cluster`): a name of 1 to 64 characters from [A-Za-z0-9_.-]."}),
    );
    if !matches!(topic, Topic::ClusterDesired { .. } | Topic::Queue { .. }) {
        params.insert(
            "node".into(),
            json!({"description": "The node id (the agent's `node_id`, its MQTT client id)."}),
        );
    }
    let what = match topic {
        Topic::ClusterDesired { .. } => {
            "Desired state for every node of the cluster. A node runs the union of this \
             document and its own; a node task replaces a cluster task of the same family."
        }
        Topic::NodeDesired { .. } => "Desired state for one node.",
        Topic::Status { .. } => {
            "The node's reported state, published on every change and at each (re)connect. The \
             broker publishes the last will, the same message with state Offline, when the \
             agent vanishes; a clean exit publishes Offline itself."
        }
        Topic::Events { .. } => {
            "What happened on the node, in order (`seq` per agent run). Delivered at least \
             once: kept in the agent's outbox (on disk while offline) until the broker \
             acknowledges."
        }
        Topic::Metrics { .. } => {
            "Node and task figures every `metrics_interval_secs`, kept in the outbox like \
             events; while offline for long, old samples are merged into coarser ones."
        }
        Topic::Cmd { .. } => "Imperative requests to the node; answered on `reply` with the id.",
        Topic::Reply { .. } => "Answers to commands, matched by id.",
        Topic::Queue { .. } => {
            "Tasks for any one node of the cluster (`skiff ctl run`). Agents subscribe \
             with the shared subscription `$share/skiff/skiff/v1/{cluster}/queue`, so the broker \
             gives each copy to one of them; that node claims it (event QueueClaimed, then \
             QueueFinished) or, without room, hands it back (QueueHandedBack) and the console \
             offers it again. Not retained."
        }
    };
    let description = if id.ends_with("Json") {
        format!(
            "JSON mirror of `{}` (published when the agent's `[mirror_json] {}` is true): the \
             same content, QoS and retain flag, produced from the binary message as it is sent. \
             {what}",
            channel_id(topic),
            topic.leaf()
        )
    } else {
        what.to_string()
    };
    json!({
        "address": address,
        "description": description,
        "parameters": params,
        "messages": { message: { "$ref": format!("#/components/messages/{message}") } },
    })
}

fn operation(topic: &Topic, channel: &str, json_mirror: bool) -> Value {
    let (action, who) = match topic.publisher() {
        Publisher::Agent => ("send", "The agent publishes"),
        Publisher::Console => ("receive", "A console publishes, the agent subscribes"),
    };
    let retain = if topic.retained() {
        "retained"
    } else {
        "not retained"
    };
    let form = if json_mirror { "JSON" } else { "binary" };
    json!({
        "action": action,
        "channel": { "$ref": format!("#/channels/{channel}") },
        "summary": format!("{who} ({form}, QoS {QOS}, {retain})."),
        "bindings": {
            "mqtt": { "qos": QOS, "retain": topic.retained(), "bindingVersion": "0.2.0" }
        },
    })
}

fn postcard_message(kind: Kind) -> Value {
    let name = message_name(kind);
    let [m0, m1] = MAGIC;
    json!({
        "name": name,
        "title": format!("{name} (binary)"),
        "contentType": POSTCARD_CONTENT_TYPE,
        "description": format!(
            "Header {m0:02X} {m1:02X} {PROTOCOL_MAJOR:02X} {:02X} ({HEADER_LEN} bytes: magic `SK`, \
             protocol major, kind {}), then the postcard body of the schema; at most \
             {MAX_MESSAGE} bytes in all.",
            kind as u8, kind as u8
        ),
        "payload": { "$ref": format!("#/components/schemas/{name}") },
        "x-skiff-kind": kind as u8,
    })
}

fn json_message(kind: Kind) -> Value {
    let name = message_name(kind);
    json!({
        "name": format!("{name}Json"),
        "title": format!("{name} (JSON mirror)"),
        "contentType": "application/json",
        "description": "The binary message's body as JSON: Rust field names, enums externally \
            tagged, options as null. Fields are only ever appended: ignore unknown keys.",
        "payload": { "$ref": format!("#/components/schemas/{name}") },
    })
}

/// The JSON Schema of every message type and of the types they contain, draft 07 (the
/// AsyncAPI schema format), referenced as `#/components/schemas/{Type}`.
pub fn schemas() -> Value {
    let mut generator = SchemaSettings::draft07()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .for_serialize()
        .into_generator();
    fn add<T: JsonSchema>(g: &mut schemars::SchemaGenerator) {
        let _ = g.subschema_for::<T>();
    }
    add::<DesiredState>(&mut generator);
    add::<Status>(&mut generator);
    add::<Event>(&mut generator);
    add::<Metrics>(&mut generator);
    add::<Command>(&mut generator);
    add::<Reply>(&mut generator);
    add::<RunRequest>(&mut generator);
    let mut defs = generator.take_definitions(true);
    // The schemas list unit variants apart from the others; postcard numbers them in
    // declaration order, which serde knows.
    fn order<T: DeserializeOwned + JsonSchema>(defs: &mut Map<String, Value>) {
        if let Some(Value::Object(schema)) = defs.get_mut(T::schema_name().as_ref()) {
            schema.insert("x-postcard-variants".into(), json!(variants::<T>()));
        }
    }
    order::<TaskExtension>(&mut defs);
    order::<ScalingMetric>(&mut defs);
    order::<HealthTest>(&mut defs);
    order::<ScheduleSpec>(&mut defs);
    order::<OverlapPolicy>(&mut defs);
    order::<MissedRunPolicy>(&mut defs);
    order::<Protocol>(&mut defs);
    order::<DependencyCondition>(&mut defs);
    order::<NetworkMode>(&mut defs);
    order::<RestartPolicy>(&mut defs);
    order::<RolloutState>(&mut defs);
    order::<Health>(&mut defs);
    order::<NodeState>(&mut defs);
    order::<TaskState>(&mut defs);
    order::<ContainerState>(&mut defs);
    order::<Scope>(&mut defs);
    order::<EventBody>(&mut defs);
    order::<StopReason>(&mut defs);
    order::<CommandBody>(&mut defs);
    order::<ReplyBody>(&mut defs);
    Value::Object(defs)
}

/// The variants of enum `T` in declaration order (postcard's variant indices), as its serde
/// `Deserialize` hands them to the deserializer.
pub fn variants<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(Probe) {
        Err(Found(v)) => v,
        Ok(_) => &[],
    }
}

/// What [`Probe`] found: an enum's variants, or nothing (not an enum).
#[derive(Debug)]
struct Found(&'static [&'static str]);

impl core::fmt::Display for Found {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "variants {:?}", self.0)
    }
}

impl std::error::Error for Found {}

impl serde::de::Error for Found {
    fn custom<M: core::fmt::Display>(_: M) -> Self {
        Found(&[])
    }
}

/// A deserializer that only answers `deserialize_enum`, with the variant names.
struct Probe;

impl<'de> serde::Deserializer<'de> for Probe {
    type Error = Found;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
        Err(Found(&[]))
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Found> {
        Err(Found(variants))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}
