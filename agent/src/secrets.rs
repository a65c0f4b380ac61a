//! Sealed secrets: a value encrypted to one node's X25519 key (`identity.rs`), carried in a task
//! definition as ECS's `secrets[].valueFrom`, opened only in the agent's memory right before the
//! container starts and handed to it as an environment variable (see `docs/security.md`).
//!
//! ```text
//! skiff-sealed:v1:<base64( ephemeral public key (32) ‖ ChaCha20-Poly1305 ciphertext ‖ tag (16) )>
//!
//! shared      = X25519(ephemeral secret, node public)        (= X25519(node secret, ephemeral public))
//! key ‖ nonce = HKDF-SHA256(salt "skiff-sealed-v1", ikm shared, info ephemeral public ‖ node public), 32 + 12 bytes
//! ```
//!
//! A fresh ephemeral key per value makes the derived key single-use, so the derived nonce is
//! safe. Binding both public keys into the KDF ties a sealed value to the node it was sealed
//! for. A value that does not open (another node's, changed, truncated) is refused by name —
//! the secret's name, never its value.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf::{KeyType, Salt, HKDF_SHA256};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use std::collections::HashMap;

use skiff_proto::{ContainerDefinition, Name, TaskDefinition};

/// Prefix of every sealed value.
pub use skiff_proto::SEALED_PREFIX;
/// Largest value that can be sealed (bytes of UTF-8): its sealed form stays under the
/// protocol's 4 KiB string bound.
pub const MAX_SECRET_VALUE: usize = 2048;
const SALT: &[u8] = b"skiff-sealed-v1";
const KEY_LEN: usize = 32;
const PUB_LEN: usize = 32;
const TAG_LEN: usize = 16;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Why a value can't be sealed or opened. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "not a sealed value (expected {SEALED_PREFIX}<base64>; seal it with `skiff ctl seal`)"
    )]
    NotSealed,
    #[error("malformed sealed value: {0}")]
    Malformed(&'static str),
    #[error("cannot be opened: it was sealed to another node's key, or changed")]
    WrongKey,
    #[error("the opened value is not text without NUL bytes")]
    NotText,
    #[error("the value is {0} bytes, at most {MAX_SECRET_VALUE} can be sealed")]
    TooLong(usize),
    #[error("{0}")]
    Crypto(&'static str),
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The AEAD key and nonce for one sealed value.
fn derive(
    shared: &[u8; 32],
    ephemeral: &[u8; PUB_LEN],
    node: &[u8; PUB_LEN],
) -> Result<(LessSafeKey, Nonce), SealError> {
    let prk = Salt::new(HKDF_SHA256, SALT).extract(shared);
    let info: [&[u8]; 2] = [ephemeral, node];
    let mut okm = Zeroizing::new([0u8; KEY_LEN + NONCE_LEN]);
    prk.expand(&info, Len(KEY_LEN + NONCE_LEN))
        .and_then(|o| o.fill(&mut okm[..]))
        .map_err(|_| SealError::Crypto("key derivation failed"))?;
    let key = UnboundKey::new(&CHACHA20_POLY1305, &okm[..KEY_LEN])
        .map_err(|_| SealError::Crypto("bad key length"))?;
    let nonce = Nonce::try_assume_unique_for_key(&okm[KEY_LEN..])
        .map_err(|_| SealError::Crypto("bad nonce length"))?;
    Ok((LessSafeKey::new(key), nonce))
}

/// Seals `value` to the node whose X25519 public key is `node`.
pub fn seal(node: &[u8; PUB_LEN], value: &str) -> Result<String, SealError> {
    if value.len() > MAX_SECRET_VALUE {
        return Err(SealError::TooLong(value.len()));
    }
    if value.contains('\0') {
        return Err(SealError::NotText);
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut seed[..])
        .map_err(|_| SealError::Crypto("no randomness from the operating system"))?;
    let ephemeral = StaticSecret::from(*seed);
    let ephemeral_pub = PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&PublicKey::from(*node));
    if !shared.was_contributory() {
        return Err(SealError::Malformed(
            "the node key is not a valid X25519 public key",
        ));
    }
    let (key, nonce) = derive(shared.as_bytes(), &ephemeral_pub, node)?;
    let mut body = Zeroizing::new(value.as_bytes().to_vec());
    key.seal_in_place_append_tag(nonce, Aad::empty(), &mut *body)
        .map_err(|_| SealError::Crypto("encryption failed"))?;
    let mut raw = ephemeral_pub.to_vec();
    raw.extend_from_slice(&body);
    Ok(format!("{SEALED_PREFIX}{}", b64().encode(raw)))
}

/// Checks the form of a sealed value without opening it (the console and the task-definition
/// parser refuse clear text early).
pub fn check_form(sealed: &str) -> Result<(), SealError> {
    decode(sealed).map(|_| ())
}

fn decode(sealed: &str) -> Result<Vec<u8>, SealError> {
    let b = sealed
        .strip_prefix(SEALED_PREFIX)
        .ok_or(SealError::NotSealed)?;
    let raw = b64()
        .decode(b.trim())
        .map_err(|_| SealError::Malformed("not base64"))?;
    if raw.len() < PUB_LEN + TAG_LEN {
        return Err(SealError::Malformed("too short"));
    }
    Ok(raw)
}

/// Opens a sealed value with the node's private key.
pub fn open(sealed: &str, node: &StaticSecret) -> Result<SecretValue, SealError> {
    let raw = decode(sealed)?;
    let (eph, body) = raw.split_at(PUB_LEN);
    let mut ephemeral = [0u8; PUB_LEN];
    ephemeral.copy_from_slice(eph);
    let node_pub = PublicKey::from(node).to_bytes();
    let shared = node.diffie_hellman(&PublicKey::from(ephemeral));
    if !shared.was_contributory() {
        return Err(SealError::WrongKey);
    }
    let (key, nonce) = derive(shared.as_bytes(), &ephemeral, &node_pub)?;
    let mut buf = Zeroizing::new(body.to_vec());
    let plain = key
        .open_in_place(nonce, Aad::empty(), &mut buf)
        .map_err(|_| SealError::WrongKey)?;
    let text = std::str::from_utf8(plain).map_err(|_| SealError::NotText)?;
    if text.contains('\0') {
        return Err(SealError::NotText);
    }
    Ok(SecretValue(Zeroizing::new(text.to_owned())))
}

/// An opened secret: wiped from memory when dropped, never printed (`Debug` shows `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<String>);

/// Only between the agent and its launcher (over their socket).
impl Serialize for SecretValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|v| SecretValue(Zeroizing::new(v)))
    }
}

impl SecretValue {
    /// The value, for handing it to the container and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The agent's side: the node key, and the definitions of the tasks being started (their
/// sealed values; opened only when a container starts).
pub struct Opener {
    key: Option<StaticSecret>,
    defs: std::sync::Mutex<HashMap<Name, TaskDefinition>>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("public", &self.public().map(hex::encode))
            .finish_non_exhaustive()
    }
}

/// An environment variable for a container, its value opened from a sealed secret.
pub type SecretEnv = Vec<(String, SecretValue)>;

impl Opener {
    /// `key`: the node's private key (None: tasks with secrets fail to start, saying why).
    pub fn new(key: Option<StaticSecret>) -> Opener {
        Opener {
            key,
            defs: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The node's public key.
    pub fn public(&self) -> Option<[u8; PUB_LEN]> {
        self.key.as_ref().map(|k| PublicKey::from(k).to_bytes())
    }

    fn defs(&self) -> std::sync::MutexGuard<'_, HashMap<Name, TaskDefinition>> {
        self.defs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Before a task starts: opens each of its secrets once (so one that can't be opened fails
    /// the start before any container runs; the values are dropped at once) and keeps the
    /// definition for the container starts.
    pub fn prepare(&self, def: &TaskDefinition) -> Result<(), String> {
        for c in &def.containers {
            self.open_all(c)?;
        }
        self.defs().insert(def.family.clone(), def.clone());
        Ok(())
    }

    /// The opened secrets of one container of a prepared task, to hand to the runtime.
    pub fn env(&self, task: &Name, container: &Name) -> Result<SecretEnv, String> {
        let c = self
            .defs()
            .get(task)
            .and_then(|d| d.containers.iter().find(|c| c.name == *container))
            .cloned();
        match c {
            Some(c) => self.open_all(&c),
            None => Ok(Vec::new()),
        }
    }

    /// The task's containers are gone.
    pub fn forget(&self, task: &Name) {
        self.defs().remove(task);
    }

    fn open_all(&self, c: &ContainerDefinition) -> Result<SecretEnv, String> {
        let Some(first) = c.secrets.first() else {
            return Ok(Vec::new());
        };
        let Some(key) = &self.key else {
            return Err(format!(
                "container {}: secret {}: this node has no key to open it (data_dir/{}: \
                 `skiff node init`)",
                c.name,
                first.name,
                crate::identity::KEY_FILE
            ));
        };
        c.secrets
            .iter()
            .map(|s| {
                open(&s.sealed, key)
                    .map(|v| (s.name.clone(), v))
                    .map_err(|e| format!("container {}: secret {}: {e}", c.name, s.name))
            })
            .collect()
    }
}

/// The node's X25519 public key from `skiff node init`'s forms: `x25519:<hex>`, bare hex (the
/// content of `data_dir/node.pub`).
pub fn parse_node_key(text: &str) -> Result<[u8; PUB_LEN], String> {
    let t = text.trim();
    let t = t.strip_prefix("x25519:").unwrap_or(t);
    let bytes = hex::decode(t).map_err(|_| format!("{t:?} is not a hex X25519 public key"))?;
    bytes.as_slice().try_into().map_err(|_| {
        format!(
            "an X25519 public key is {PUB_LEN} bytes, this one {}",
            bytes.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> (StaticSecret, [u8; 32]) {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).expect("random");
        let s = StaticSecret::from(seed);
        let p = PublicKey::from(&s).to_bytes();
        (s, p)
    }

    #[test]
    fn a_sealed_value_opens_only_on_its_node() {
        let (secret, public) = node();
        let sealed = seal(&public, "hunter2 ünïcode").expect("seal");
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("hunter2"));
        assert_eq!(
            open(&sealed, &secret).expect("open").expose(),
            "hunter2 ünïcode"
        );
        // Sealing twice gives different strings (fresh ephemeral key).
        assert_ne!(
            seal(&public, "hunter2").expect("seal"),
            seal(&public, "hunter2").expect("seal")
        );
        let (other, _) = node();
        assert_eq!(open(&sealed, &other), Err(SealError::WrongKey));
    }

    #[test]
    fn a_changed_or_malformed_value_is_refused_without_showing_it() {
        let (secret, public) = node();
        let sealed = seal(&public, "s3cret").expect("seal");
        let mut raw = b64().decode(&sealed[SEALED_PREFIX.len()..]).expect("b64");
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let tampered = format!("{SEALED_PREFIX}{}", b64().encode(&raw));
        assert_eq!(open(&tampered, &secret), Err(SealError::WrongKey));
        raw[last] ^= 1;
        raw[40] ^= 0x80; // in the ciphertext
        let tampered = format!("{SEALED_PREFIX}{}", b64().encode(&raw));
        assert_eq!(open(&tampered, &secret), Err(SealError::WrongKey));
        assert_eq!(open("s3cret", &secret), Err(SealError::NotSealed));
        assert_eq!(
            open("skiff-sealed:v1:!!", &secret),
            Err(SealError::Malformed("not base64"))
        );
        assert_eq!(
            open("skiff-sealed:v1:AAAA", &secret),
            Err(SealError::Malformed("too short"))
        );
        assert_eq!(format!("{:?}", open(&sealed, &secret)), "Ok(***)");
        assert!(seal(&public, &"x".repeat(MAX_SECRET_VALUE + 1)).is_err());
        assert!(
            seal(&public, &"x".repeat(MAX_SECRET_VALUE))
                .expect("max")
                .len()
                <= skiff_proto::limits::MAX_STRING
        );
    }

    #[test]
    fn node_keys_parse_in_the_forms_node_init_prints() {
        let (_, public) = node();
        let h = hex::encode(public);
        assert_eq!(parse_node_key(&format!("x25519:{h}\n")), Ok(public));
        assert_eq!(parse_node_key(&h), Ok(public));
        assert!(parse_node_key("x25519:abcd").is_err());
        assert!(parse_node_key("zz").is_err());
    }
}
