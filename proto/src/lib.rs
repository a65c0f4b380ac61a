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
//!
//! The crate is `no_std` + `alloc` unless feature `std` (default) is on, so it can be reused on
//! microcontroller-class gateways. Feature `json` adds JSON helpers for consoles.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod codec;
pub mod limits;
pub mod name;
pub mod topic;
pub mod types;

pub use codec::{decode, encode, DecodeError, EncodeError, Header, Kind, Message};
pub use name::{Name, NameError};
pub use types::*;
