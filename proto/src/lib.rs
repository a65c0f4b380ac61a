//! skiff's wire protocol, shared by the agent, the fleet console and anything else that
//! speaks to a skiff fleet.
//!
//! # Layout
//! - [`name`]: [`Name`], the validated identifier used for clusters, nodes, tasks and containers;
//!   safe as an MQTT topic level, a file name and a cgroup directory.
//! - [`types`]: the message bodies (desired state, status, events, metrics, command, reply) and
//!   the task definition they carry.
//! - [`codec`]: the fixed header (magic, protocol major, kind) in front of a postcard body, with
//!   bounded, strict decoding. A released kind is frozen; a changed message is a new kind.
//! - [`topic`]: the topic scheme under `skiff/v1/{cluster}/`.
//! - [`limits`]: every size bound in one place.
//! - `json` (feature `json`): the JSON form of a message, as the agent's JSON mirror topics
//!   carry it.
//! - `asyncapi` (feature `schema`): `docs/asyncapi.yaml`, generated from these types.
//!
//! The crate is `no_std` + `alloc` unless feature `std` (default) is on, so it can be reused on
//! microcontroller-class gateways. Feature `json` adds the JSON form for consoles; feature `schema`
//! (schemars) the JSON Schemas of every message, for the AsyncAPI document (tests and docs only).
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(feature = "schema")]
pub mod asyncapi;
pub mod codec;
#[cfg(feature = "json")]
pub mod json;
pub mod limits;
pub mod name;
pub mod topic;
pub mod types;

pub use codec::{decode, encode, DecodeError, EncodeError, Header, Kind, Message};
pub use name::{Name, NameError};
pub use types::*;
