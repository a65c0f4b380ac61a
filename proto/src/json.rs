//! The JSON form of a message (feature `json`): serde's data model of the same types, as
//! `serde_json` writes it. This is what the agent's JSON mirror topics carry and what
//! `skiff task decode` and `skiff ctl ... --json` print, and `docs/asyncapi.yaml` gives its JSON
//! Schemas.
//!
//! The shape, once for all kinds: objects with the Rust field names (`snake_case`, as in
//! [`crate::types`]); enums as serde's externally tagged form (a unit variant is its name as a
//! string, `"Online"`; a variant with data is an object with one key, its name:
//! `{"TaskRunning": {"task": "web"}}`); `Option` as the value or `null`; names as strings;
//! integers as JSON numbers (`u64` figures such as `at_ms` stay below 2^53 in practice).
//! Fields are only ever appended to a kind, so a reader that ignores unknown keys keeps working.

use alloc::vec::Vec;

use crate::codec::Message;

/// The message body as JSON (without the kind: the topic says it).
pub fn to_json(msg: &Message) -> serde_json::Result<Vec<u8>> {
    match msg {
        Message::DesiredState(m) => serde_json::to_vec(m),
        Message::Status(m) => serde_json::to_vec(m),
        Message::Event(m) => serde_json::to_vec(m),
        Message::Metrics(m) => serde_json::to_vec(m),
        Message::Command(m) => serde_json::to_vec(m),
        Message::Reply(m) => serde_json::to_vec(m),
        Message::RunRequest(m) => serde_json::to_vec(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    #[test]
    fn json_form_uses_rust_names_and_tagged_enums() {
        let ev = Event {
            node: "pi-1".parse().expect("name"),
            seq: 3,
            at_ms: 1_700_000_000_000,
            body: EventBody::TaskRunning {
                task: "web".parse().expect("name"),
            },
        };
        let json = to_json(&Message::Event(ev.clone())).expect("json");
        assert_eq!(
            core::str::from_utf8(&json).expect("utf-8"),
            r#"{"node":"pi-1","seq":3,"at_ms":1700000000000,"body":{"TaskRunning":{"task":"web"}}}"#
        );
        assert_eq!(serde_json::from_slice::<Event>(&json).expect("back"), ev);
    }
}
