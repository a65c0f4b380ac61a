//! The envelope: a 4-byte header outside postcard, then the postcard body.
//!
//! ```text
//! 0      2       3      4
//! +------+-------+------+-------------------+
//! | "SK" | major | kind | postcard body ... |
//! +------+-------+------+-------------------+
//! ```
//!
//! The header lives outside postcard so a reader can always tell *what* it got before it
//! decodes anything: an unknown major or kind is reported as such, never mis-decoded.

use alloc::vec::Vec;
use core::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::limits::MAX_MESSAGE;
use crate::types::*;

/// First two bytes of every message.
pub const MAGIC: [u8; 2] = *b"SK";
/// Protocol major version spoken by this crate.
pub const PROTOCOL_MAJOR: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 4;

/// Message kinds. A kind is frozen once released: a changed message body gets a new kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    DesiredState = 1,
    Status = 2,
    Event = 3,
    Metrics = 4,
    Command = 5,
    Reply = 6,
    RunRequest = 7,
}

impl Kind {
    /// All kinds, for fixtures and docs.
    pub const ALL: [Kind; 7] = [
        Kind::DesiredState,
        Kind::Status,
        Kind::Event,
        Kind::Metrics,
        Kind::Command,
        Kind::Reply,
        Kind::RunRequest,
    ];

    /// The kind for a header byte.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == b)
    }

    /// Lower-case name, for messages and file names.
    pub fn name(self) -> &'static str {
        match self {
            Kind::DesiredState => "desired_state",
            Kind::Status => "status",
            Kind::Event => "event",
            Kind::Metrics => "metrics",
            Kind::Command => "command",
            Kind::Reply => "reply",
            Kind::RunRequest => "run_request",
        }
    }
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub major: u8,
    pub kind: Kind,
}

/// Any message, tagged by its kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    DesiredState(DesiredState),
    Status(Status),
    Event(Event),
    Metrics(Metrics),
    Command(Command),
    Reply(Reply),
    RunRequest(RunRequest),
}

impl Message {
    /// The kind this message is sent as.
    pub fn kind(&self) -> Kind {
        match self {
            Message::DesiredState(_) => Kind::DesiredState,
            Message::Status(_) => Kind::Status,
            Message::Event(_) => Kind::Event,
            Message::Metrics(_) => Kind::Metrics,
            Message::Command(_) => Kind::Command,
            Message::Reply(_) => Kind::Reply,
            Message::RunRequest(_) => Kind::RunRequest,
        }
    }
}

/// Why bytes are not a message this crate accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Larger than [`MAX_MESSAGE`].
    TooLarge { len: usize },
    /// Shorter than the header.
    Truncated { len: usize },
    /// Does not start with [`MAGIC`]: not a skiff message.
    BadMagic,
    /// A protocol major this crate does not speak.
    UnsupportedVersion { major: u8 },
    /// A kind byte this crate does not know.
    UnknownKind { kind: u8 },
    /// A known kind, but not the one expected on this topic.
    UnexpectedKind { expected: Kind, got: Kind },
    /// The body does not decode as its kind (truncated, corrupt, or an incompatible sender).
    Body {
        kind: Kind,
        reason: alloc::string::String,
    },
    /// Bytes left over after the body.
    TrailingBytes { kind: Kind, extra: usize },
    /// Decoded, but a size bound or invariant is broken.
    Bounds { kind: Kind, error: BoundError },
}

impl DecodeError {
    /// True when the sender speaks something this agent does not (answer `unsupported`).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            DecodeError::UnsupportedVersion { .. } | DecodeError::UnknownKind { .. }
        )
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { len } => {
                write!(
                    f,
                    "message is {len} bytes, larger than the {MAX_MESSAGE}-byte limit"
                )
            }
            DecodeError::Truncated { len } => {
                write!(
                    f,
                    "message is {len} bytes, shorter than the {HEADER_LEN}-byte header"
                )
            }
            DecodeError::BadMagic => f.write_str("not a skiff message (bad magic bytes)"),
            DecodeError::UnsupportedVersion { major } => write!(
                f,
                "unsupported protocol version {major} (this agent speaks {PROTOCOL_MAJOR})"
            ),
            DecodeError::UnknownKind { kind } => write!(f, "unsupported message kind {kind}"),
            DecodeError::UnexpectedKind { expected, got } => write!(
                f,
                "expected a {} message, got a {} message",
                expected.name(),
                got.name()
            ),
            DecodeError::Body { kind, reason } => {
                write!(f, "malformed {} message: {reason}", kind.name())
            }
            DecodeError::TrailingBytes { kind, extra } => {
                write!(
                    f,
                    "malformed {} message: {extra} unexpected trailing bytes",
                    kind.name()
                )
            }
            DecodeError::Bounds { kind, error } => {
                write!(f, "invalid {} message: {error}", kind.name())
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The encoded message would exceed [`MAX_MESSAGE`].
    TooLarge { kind: Kind, len: usize },
    /// Broke a bound: the receiver would reject it.
    Bounds { kind: Kind, error: BoundError },
    /// Serialisation failed.
    Serialize {
        kind: Kind,
        reason: alloc::string::String,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge { kind, len } => write!(
                f,
                "{} message would be {len} bytes, larger than the {MAX_MESSAGE}-byte limit",
                kind.name()
            ),
            EncodeError::Bounds { kind, error } => {
                write!(f, "invalid {} message: {error}", kind.name())
            }
            EncodeError::Serialize { kind, reason } => {
                write!(f, "cannot encode {} message: {reason}", kind.name())
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}

/// Reads and checks the header.
pub fn decode_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(DecodeError::TooLarge { len: bytes.len() });
    }
    let [m0, m1, major, kind, ..] = *bytes else {
        return Err(DecodeError::Truncated { len: bytes.len() });
    };
    if [m0, m1] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if major != PROTOCOL_MAJOR {
        return Err(DecodeError::UnsupportedVersion { major });
    }
    let kind = Kind::from_u8(kind).ok_or(DecodeError::UnknownKind { kind })?;
    Ok(Header { major, kind })
}

fn body<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| DecodeError::Body {
        kind,
        reason: alloc::string::ToString::to_string(&e),
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            kind,
            extra: rest.len(),
        });
    }
    Ok(value)
}

/// Decodes any message: header, body, bounds.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let header = decode_header(bytes)?;
    let kind = header.kind;
    let b = &bytes[HEADER_LEN..];
    let msg = match kind {
        Kind::DesiredState => {
            let d: DesiredState = body(kind, b)?;
            d.validate()
                .map_err(|error| DecodeError::Bounds { kind, error })?;
            Message::DesiredState(d)
        }
        Kind::Status => Message::Status(body(kind, b)?),
        Kind::Event => Message::Event(body(kind, b)?),
        Kind::Metrics => Message::Metrics(body(kind, b)?),
        Kind::Command => Message::Command(body(kind, b)?),
        Kind::Reply => Message::Reply(body(kind, b)?),
        Kind::RunRequest => {
            let r: RunRequest = body(kind, b)?;
            r.validate()
                .map_err(|error| DecodeError::Bounds { kind, error })?;
            Message::RunRequest(r)
        }
    };
    Ok(msg)
}

/// Decodes a message that must be of kind `expected`.
pub fn decode_as(expected: Kind, bytes: &[u8]) -> Result<Message, DecodeError> {
    let header = decode_header(bytes)?;
    if header.kind != expected {
        return Err(DecodeError::UnexpectedKind {
            expected,
            got: header.kind,
        });
    }
    decode(bytes)
}

fn encode_body<T: Serialize>(kind: Kind, value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL_MAJOR);
    out.push(kind as u8);
    let out = postcard::to_extend(value, out).map_err(|e| EncodeError::Serialize {
        kind,
        reason: alloc::string::ToString::to_string(&e),
    })?;
    if out.len() > MAX_MESSAGE {
        return Err(EncodeError::TooLarge {
            kind,
            len: out.len(),
        });
    }
    Ok(out)
}

/// Encodes a message with its header. Refuses what a receiver would reject.
pub fn encode(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let kind = msg.kind();
    match msg {
        Message::DesiredState(d) => {
            d.validate()
                .map_err(|error| EncodeError::Bounds { kind, error })?;
            encode_body(kind, d)
        }
        Message::Status(m) => encode_body(kind, m),
        Message::Event(m) => encode_body(kind, m),
        Message::Metrics(m) => encode_body(kind, m),
        Message::Command(m) => encode_body(kind, m),
        Message::Reply(m) => encode_body(kind, m),
        Message::RunRequest(r) => {
            r.validate()
                .map_err(|error| EncodeError::Bounds { kind, error })?;
            encode_body(kind, r)
        }
    }
}

/// The header bytes of a message (for tests and raw tools).
pub fn header_bytes(kind: Kind) -> [u8; HEADER_LEN] {
    [MAGIC[0], MAGIC[1], PROTOCOL_MAJOR, kind as u8]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_malformed_envelopes_by_name() {
        assert_eq!(decode(b"SK"), Err(DecodeError::Truncated { len: 2 }));
        assert_eq!(decode(b"XX\x01\x01"), Err(DecodeError::BadMagic));
        assert_eq!(
            decode(b"SK\x09\x01"),
            Err(DecodeError::UnsupportedVersion { major: 9 })
        );
        assert_eq!(
            decode(b"SK\x01\x63"),
            Err(DecodeError::UnknownKind { kind: 0x63 })
        );
        let big = alloc::vec![0u8; MAX_MESSAGE + 1];
        assert_eq!(
            decode(&big),
            Err(DecodeError::TooLarge {
                len: MAX_MESSAGE + 1
            })
        );
        assert!(matches!(
            decode(b"SK\x01\x01"),
            Err(DecodeError::Body {
                kind: Kind::DesiredState,
                ..
            })
        ));
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut b = encode(&Message::Command(Command {
            id: 7,
            body: CommandBody::Ping,
        }))
        .unwrap_or_default();
        b.push(0);
        assert_eq!(
            decode(&b),
            Err(DecodeError::TrailingBytes {
                kind: Kind::Command,
                extra: 1
            })
        );
    }

    #[test]
    fn decode_as_checks_kind() {
        let b = encode(&Message::Command(Command {
            id: 7,
            body: CommandBody::Ping,
        }))
        .unwrap_or_default();
        assert_eq!(
            decode_as(Kind::DesiredState, &b),
            Err(DecodeError::UnexpectedKind {
                expected: Kind::DesiredState,
                got: Kind::Command
            })
        );
    }
}
