//! Signed desired state: the fleet's ed25519 keys, exactly which bytes are signed, the pure
//! checks the core runs before it acts on a document, and key rotation. `docs/security.md` is
//! the user's side of this page.
//!
//! What is signed (`Signature.bytes`, ed25519 over):
//!
//! ```text
//! desired state:  "skiff-desired-v1\0" ++ postcard(DesiredState { signature: None, ..doc })
//! trust update:   "skiff-trust-v1\0"   ++ postcard(TrustUpdate  { signature: None, ..update })
//! ```
//!
//! The postcard body is the message body without the 4-byte envelope header. The verifier
//! re-encodes the document it decoded, so what is checked is exactly what the agent acts on.
//! The context strings keep a signature for one kind of message from being valid for another.
//!
//! Key files (`skiff ctl keygen`):
//!
//! ```text
//! {name}.key   the private key: PKCS#8 v1 in PEM (as openssl writes it), 0600
//! {name}.pub   skiff-ed25519 <key id> <base64 of the 32-byte public key>
//! ```
//!
//! The key id is the first 8 bytes of the SHA-256 of the public key in hex, so an id can't be
//! attached to another key: a `.pub` line or a trust update whose id does not match is refused.
//!
//! The trusted set is the `[trust] keys` of the config, plus the keys added and minus the keys
//! retired by applied trust updates (saved in `data_dir/state/trust.bin`, see [`TrustState`]).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use skiff_proto::{DesiredState, FleetKey, Name, Signature, TrustUpdate};
use zeroize::Zeroizing;

/// Signed-bytes prefix of a desired-state document.
pub const DESIRED_CONTEXT: &[u8] = b"skiff-desired-v1\0";
/// Signed-bytes prefix of a trust update.
pub const TRUST_CONTEXT: &[u8] = b"skiff-trust-v1\0";
/// Domain separation for run requests (the cluster queue).
pub const RUN_CONTEXT: &[u8] = b"skiff-run-v1\0";
/// First word of a public key line.
pub const PUBLIC_KEY_TAG: &str = "skiff-ed25519";
/// Most keys a node trusts at once.
pub const MAX_KEYS: usize = 32;
/// Largest key file read.
const MAX_KEY_FILE: u64 = 64 * 1024;
const ED25519_PUBLIC_LEN: usize = 32;
const ED25519_SIG_LEN: usize = 64;
const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";
/// PKCS#8 v1 `PrivateKeyInfo` for Ed25519 (RFC 8410) up to the 32-byte seed that follows.
const PKCS8_V1_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// What went wrong with a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("{at}: {what}")]
    Format { at: String, what: String },
    #[error("cannot make a key: {0}")]
    Crypto(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

fn format_err(at: impl Into<String>, what: impl Into<String>) -> KeyError {
    KeyError::Format {
        at: at.into(),
        what: what.into(),
    }
}

/// The id of an ed25519 public key: the first 8 bytes of its SHA-256, as 16 hex digits.
pub fn key_id(public: &[u8]) -> Name {
    let digest = Sha256::digest(public);
    hex::encode(&digest[..8])
        .parse()
        .expect("16 lowercase hex digits are a valid name")
}

/// `skiff-ed25519 <key id> <base64>`: one line of a `.pub` file.
pub fn format_public(key: &FleetKey) -> String {
    format!(
        "{PUBLIC_KEY_TAG} {} {}",
        key.key_id,
        b64().encode(&key.bytes)
    )
}

/// Public keys from the text of a `.pub` file (or an inline config entry): one per line,
/// blank lines and `#` comments skipped. `origin` names the source in errors.
pub fn parse_public_keys(text: &str, origin: &str) -> Result<Vec<FleetKey>, KeyError> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{origin} line {}", i + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        let [tag, id, key] = words.as_slice() else {
            return Err(format_err(
                at,
                format!("expected `{PUBLIC_KEY_TAG} <key id> <base64 key>`"),
            ));
        };
        if *tag != PUBLIC_KEY_TAG {
            return Err(format_err(
                at,
                format!("starts with {tag:?}, expected {PUBLIC_KEY_TAG}"),
            ));
        }
        let bytes = b64()
            .decode(key)
            .map_err(|e| format_err(&at, format!("key is not base64: {e}")))?;
        let key = fleet_key(bytes, id).map_err(|what| format_err(&at, what))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(format_err(origin, "no public key in it"));
    }
    Ok(keys)
}

/// A fleet key from its bytes and claimed id, checked: 32 bytes, the id matches the key.
pub fn fleet_key(bytes: Vec<u8>, claimed_id: &str) -> Result<FleetKey, String> {
    if bytes.len() != ED25519_PUBLIC_LEN {
        return Err(format!(
            "key is {} bytes, an ed25519 public key is {ED25519_PUBLIC_LEN}",
            bytes.len()
        ));
    }
    let id = key_id(&bytes);
    if id.as_str() != claimed_id {
        return Err(format!(
            "key id {claimed_id} does not match the key (its id is {id})"
        ));
    }
    Ok(FleetKey { key_id: id, bytes })
}

/// Reads a public key file (bounded).
pub fn read_public_keys(path: &Path) -> Result<Vec<FleetKey>, KeyError> {
    let text = read_bounded(path)?;
    let text = String::from_utf8(text.to_vec())
        .map_err(|_| format_err(path.display().to_string(), "not UTF-8 text"))?;
    parse_public_keys(&text, &path.display().to_string())
}

fn read_bounded(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let len = fs::metadata(path).map_err(io_err(path))?.len();
    if len > MAX_KEY_FILE {
        return Err(format_err(
            path.display().to_string(),
            format!("{len} bytes, larger than a key file can be"),
        ));
    }
    Ok(Zeroizing::new(fs::read(path).map_err(io_err(path))?))
}

/// The agent's `[trust]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Trusted fleet public keys: absolute paths of `.pub` files, or inline
    /// `skiff-ed25519 <id> <base64>` lines. Empty: desired state is not verified.
    pub keys: Vec<String>,
}

impl TrustConfig {
    /// Reads every configured key (a file that is missing or malformed is an error).
    pub fn load(&self) -> Result<Vec<FleetKey>, String> {
        let mut keys: Vec<FleetKey> = Vec::new();
        for (i, entry) in self.keys.iter().enumerate() {
            let found = if entry.trim_start().starts_with(PUBLIC_KEY_TAG) {
                parse_public_keys(entry, &format!("keys[{i}]"))
            } else {
                let path = Path::new(entry);
                if !path.is_absolute() {
                    return Err(format!(
                        "keys[{i}]: {entry:?} is neither an absolute path nor a \
                         `{PUBLIC_KEY_TAG} <id> <base64>` line"
                    ));
                }
                read_public_keys(path)
            };
            for k in found.map_err(|e| e.to_string())? {
                if !keys.iter().any(|o| o.key_id == k.key_id) {
                    keys.push(k);
                }
            }
        }
        if keys.len() > MAX_KEYS {
            return Err(format!("{} keys, at most {MAX_KEYS}", keys.len()));
        }
        Ok(keys)
    }
}

/// A fleet private key, for `skiff ctl` to sign with.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: FleetKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.public.key_id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key; also returns its PKCS#8 encoding (to be saved).
    /// The encoding is PKCS#8 v1 (RFC 8410), as `openssl genpkey -algorithm ed25519` writes it,
    /// so openssl and other tools read the file too (ring's own v2 encoding is not).
    pub fn generate() -> Result<(SigningKey, Zeroizing<Vec<u8>>), KeyError> {
        let mut der = Zeroizing::new(PKCS8_V1_ED25519_PREFIX.to_vec());
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut seed[..])
            .map_err(|_| KeyError::Crypto("no randomness from the operating system".into()))?;
        der.extend_from_slice(&seed[..]);
        let key = SigningKey::from_pkcs8(&der, "new key")?;
        Ok((key, der))
    }

    /// From PKCS#8 DER: v1 (`openssl genpkey -algorithm ed25519`, `skiff ctl keygen`) or v2.
    pub fn from_pkcs8(der: &[u8], origin: &str) -> Result<SigningKey, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| format_err(origin, format!("not an ed25519 PKCS#8 key: {e}")))?;
        let bytes = pair.public_key().as_ref().to_vec();
        let public = FleetKey {
            key_id: key_id(&bytes),
            bytes,
        };
        Ok(SigningKey { pair, public })
    }

    /// Reads a private key file: PEM (`BEGIN PRIVATE KEY`) or raw DER.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let origin = path.display().to_string();
        let raw = read_bounded(path)?;
        let der = match std::str::from_utf8(&raw) {
            Ok(text) if text.contains(PEM_BEGIN) => pem_decode(text, &origin)?,
            _ => raw,
        };
        SigningKey::from_pkcs8(&der, &origin)
    }

    /// The public half.
    pub fn public(&self) -> &FleetKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Signature {
        Signature {
            key_id: self.public.key_id.clone(),
            bytes: self.pair.sign(message).as_ref().to_vec(),
        }
    }

    /// Sets `doc.signature` (replacing any).
    pub fn sign_desired(&self, doc: &mut DesiredState) -> Result<(), String> {
        let bytes = desired_signed_bytes(doc)?;
        doc.signature = Some(self.sign(&bytes));
        Ok(())
    }

    /// Sets `req.signature` (replacing any).
    pub fn sign_run(&self, req: &mut skiff_proto::RunRequest) -> Result<(), String> {
        let bytes = run_signed_bytes(req)?;
        req.signature = Some(self.sign(&bytes));
        Ok(())
    }

    /// Sets `update.signature` (replacing any).
    pub fn sign_trust(&self, update: &mut TrustUpdate) -> Result<(), String> {
        let bytes = trust_signed_bytes(update)?;
        update.signature = Some(self.sign(&bytes));
        Ok(())
    }
}

fn pem_decode(text: &str, origin: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let body = text
        .split_once(PEM_BEGIN)
        .and_then(|(_, rest)| rest.split_once(PEM_END))
        .map(|(body, _)| body)
        .ok_or_else(|| format_err(origin, format!("no {PEM_END} line")))?;
    let b64text: Zeroizing<String> =
        Zeroizing::new(body.chars().filter(|c| !c.is_whitespace()).collect());
    b64()
        .decode(b64text.as_bytes())
        .map(Zeroizing::new)
        .map_err(|e| format_err(origin, format!("PEM body is not base64: {e}")))
}

fn pem_encode(der: &[u8]) -> Zeroizing<String> {
    let b = Zeroizing::new(b64().encode(der));
    let mut out = Zeroizing::new(format!("{PEM_BEGIN}\n"));
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(PEM_END);
    out.push('\n');
    out
}

/// What `skiff ctl keygen` made.
#[derive(Debug)]
pub struct Generated {
    pub private: PathBuf,
    pub public: PathBuf,
    pub key: FleetKey,
}

/// Makes `{dir}/{name}.key` (0600) and `{dir}/{name}.pub`; refuses to overwrite either.
pub fn keygen(dir: &Path, name: &Name) -> Result<Generated, KeyError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    for p in [&private, &public] {
        if p.symlink_metadata().is_ok() {
            return Err(KeyError::Exists { path: p.clone() });
        }
    }
    let (key, der) = SigningKey::generate()?;
    write_new(&private, pem_encode(&der).as_bytes(), 0o600)?;
    let line = format!("{}\n", format_public(key.public()));
    write_new(&public, line.as_bytes(), 0o644)?;
    Ok(Generated {
        private,
        public,
        key: key.public().clone(),
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.to_owned(),
            },
            _ => KeyError::Io {
                path: path.to_owned(),
                source: e,
            },
        })?;
    // The mode given to open() is masked by the umask: set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(bytes))
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))
}

/// The bytes a desired-state document's signature covers.
pub fn desired_signed_bytes(doc: &DesiredState) -> Result<Vec<u8>, String> {
    let unsigned = DesiredState {
        signature: None,
        ..doc.clone()
    };
    signed_bytes(DESIRED_CONTEXT, &unsigned)
}

/// The bytes a trust update's signature covers.
pub fn trust_signed_bytes(update: &TrustUpdate) -> Result<Vec<u8>, String> {
    let unsigned = TrustUpdate {
        signature: None,
        ..update.clone()
    };
    signed_bytes(TRUST_CONTEXT, &unsigned)
}

/// The bytes a run request's signature covers.
pub fn run_signed_bytes(req: &skiff_proto::RunRequest) -> Result<Vec<u8>, String> {
    let unsigned = skiff_proto::RunRequest {
        signature: None,
        ..req.clone()
    };
    signed_bytes(RUN_CONTEXT, &unsigned)
}

fn signed_bytes(context: &[u8], body: &impl Serialize) -> Result<Vec<u8>, String> {
    let mut out = context.to_vec();
    let body = postcard::to_allocvec(body).map_err(|e| format!("cannot encode: {e}"))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// What applied trust updates changed, relative to the configured keys (saved in the state
/// store; `version` is the last applied update's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustState {
    pub version: u64,
    /// Keys added by updates (not in the config).
    pub added: Vec<FleetKey>,
    /// Configured keys retired by updates.
    pub retired: Vec<Name>,
}

/// The keys a node trusts and the checks made with them. Pure: the core holds one, given at
/// construction; the driver saves [`TrustState`] when the core asks.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    configured: Vec<FleetKey>,
    state: TrustState,
}

/// A document or update whose signature is in use elsewhere: a key signing one can't be
/// retired (the saved document would fail its check at the next start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    /// e.g. "node document version 5".
    pub what: String,
    pub key_id: Name,
}

impl Trust {
    pub fn new(configured: Vec<FleetKey>, state: TrustState) -> Trust {
        Trust { configured, state }
    }

    /// The trusted keys: configured plus added, minus retired.
    pub fn keys(&self) -> Vec<&FleetKey> {
        let mut keys: Vec<&FleetKey> = Vec::new();
        for k in self.configured.iter().chain(&self.state.added) {
            if !self.state.retired.contains(&k.key_id) && !keys.iter().any(|o| o.key_id == k.key_id)
            {
                keys.push(k);
            }
        }
        keys
    }

    /// Verification is on when any key is trusted.
    pub fn enabled(&self) -> bool {
        !self.keys().is_empty()
    }

    pub fn key_ids(&self) -> Vec<Name> {
        self.keys().into_iter().map(|k| k.key_id.clone()).collect()
    }

    pub fn state(&self) -> &TrustState {
        &self.state
    }

    fn trusted_list(&self) -> String {
        self.key_ids()
            .iter()
            .map(Name::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn check(
        &self,
        what: &str,
        signed: Result<Vec<u8>, String>,
        signature: Option<&Signature>,
    ) -> Result<(), String> {
        let Some(sig) = signature else {
            return Err(format!(
                "unsigned: this node accepts only {what} signed by a trusted key (trusted: {})",
                self.trusted_list()
            ));
        };
        let Some(key) = self.keys().into_iter().find(|k| k.key_id == sig.key_id) else {
            return Err(format!(
                "unknown key: {what} signed by key {}, which this node does not trust (trusted: {})",
                sig.key_id,
                self.trusted_list()
            ));
        };
        if sig.bytes.len() != ED25519_SIG_LEN {
            return Err(format!(
                "forged: the signature by key {} is {} bytes, an ed25519 signature is {ED25519_SIG_LEN}",
                sig.key_id,
                sig.bytes.len()
            ));
        }
        let signed = signed?;
        UnparsedPublicKey::new(&ED25519, &key.bytes)
            .verify(&signed, &sig.bytes)
            .map_err(|_| {
                format!(
                    "forged: the signature by key {} does not match the {what}",
                    sig.key_id
                )
            })
    }

    /// Checks a desired-state document's signature (always Ok when no key is trusted).
    pub fn verify_desired(&self, doc: &DesiredState) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        self.check(
            "desired state",
            desired_signed_bytes(doc),
            doc.signature.as_ref(),
        )
    }

    /// Checks a run request's signature (always Ok when no key is trusted).
    pub fn verify_run(&self, req: &skiff_proto::RunRequest) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        self.check("run request", run_signed_bytes(req), req.signature.as_ref())
    }

    /// Checks a trust update for this node and returns the state after it. `in_use`: the
    /// signatures of the documents the node applied.
    pub fn update(
        &self,
        u: &TrustUpdate,
        cluster: &Name,
        node: &Name,
        in_use: &[InUse],
    ) -> Result<TrustState, String> {
        if !self.enabled() {
            return Err(
                "this node trusts no key: trust starts from `[trust] keys` in the \
                        agent's config"
                    .into(),
            );
        }
        self.check("trust update", trust_signed_bytes(u), u.signature.as_ref())?;
        if u.cluster != *cluster || u.node != *node {
            return Err(format!(
                "wrong target: the update is for node {} of cluster {}, this is {node} of {cluster}",
                u.node, u.cluster
            ));
        }
        if u.version <= self.state.version {
            return Err(format!(
                "replayed: trust version {} is not newer than the applied version {}",
                u.version, self.state.version
            ));
        }
        if u.add.len() + u.retire.len() > MAX_KEYS {
            return Err(format!("more than {MAX_KEYS} keys in one update"));
        }
        if u.add.is_empty() && u.retire.is_empty() {
            return Err("the update neither adds nor retires a key".into());
        }
        let mut next = self.state.clone();
        next.version = u.version;
        for k in &u.add {
            let k = fleet_key(k.bytes.clone(), k.key_id.as_str())
                .map_err(|e| format!("key {}: {e}", k.key_id))?;
            if u.retire.contains(&k.key_id) {
                return Err(format!("key {} is both added and retired", k.key_id));
            }
            next.retired.retain(|r| *r != k.key_id);
            if !self.configured.iter().any(|c| c.key_id == k.key_id)
                && !next.added.iter().any(|a| a.key_id == k.key_id)
            {
                next.added.push(k);
            }
        }
        let trusted = self.key_ids();
        for id in &u.retire {
            if !trusted.contains(id) {
                return Err(format!(
                    "key {id} is not trusted by this node, so it can't be retired (trusted: {})",
                    self.trusted_list()
                ));
            }
            next.added.retain(|a| a.key_id != *id);
            if self.configured.iter().any(|c| c.key_id == *id) && !next.retired.contains(id) {
                next.retired.push(id.clone());
            }
        }
        let after = Trust {
            configured: self.configured.clone(),
            state: next,
        };
        if after.keys().is_empty() {
            return Err("the update would retire the last trusted key".into());
        }
        if after.keys().len() > MAX_KEYS {
            return Err(format!("more than {MAX_KEYS} trusted keys"));
        }
        for id in &u.retire {
            if let Some(doc) = in_use.iter().find(|d| d.key_id == *id) {
                return Err(format!(
                    "key {id} signs the applied {}: re-sign it with another key before retiring \
                     this one (`skiff ctl trust retire` does that)",
                    doc.what
                ));
            }
        }
        Ok(after.state)
    }

    /// Takes a state returned by [`Trust::update`].
    pub fn set_state(&mut self, state: TrustState) {
        self.state = state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        s.parse().expect("name")
    }

    pub(crate) fn doc(version: u64) -> DesiredState {
        DesiredState {
            version,
            cluster: n("demo"),
            node: Some(n("pi-1")),
            tasks: vec![],
            signature: None,
        }
    }

    #[test]
    fn a_signed_document_verifies_and_any_change_breaks_it() {
        let (key, _) = SigningKey::generate().expect("key");
        let trust = Trust::new(vec![key.public().clone()], TrustState::default());
        let mut d = doc(7);
        key.sign_desired(&mut d).expect("sign");
        assert_eq!(trust.verify_desired(&d), Ok(()));
        let mut changed = d.clone();
        changed.version = 8;
        let err = trust.verify_desired(&changed).expect_err("changed");
        assert!(err.starts_with("forged: "), "{err}");
        let mut unsigned = d.clone();
        unsigned.signature = None;
        let err = trust.verify_desired(&unsigned).expect_err("unsigned");
        assert!(err.starts_with("unsigned: "), "{err}");
        let (other, _) = SigningKey::generate().expect("key");
        let mut foreign = doc(7);
        other.sign_desired(&mut foreign).expect("sign");
        let err = trust.verify_desired(&foreign).expect_err("foreign");
        assert!(err.starts_with("unknown key: "), "{err}");
        // No key trusted: everything passes (and the agent warns at start).
        assert_eq!(Trust::default().verify_desired(&unsigned), Ok(()));
    }

    #[test]
    fn the_signed_bytes_are_the_context_and_the_unsigned_body() {
        let (key, _) = SigningKey::generate().expect("key");
        let mut d = doc(1);
        key.sign_desired(&mut d).expect("sign");
        let bytes = desired_signed_bytes(&d).expect("bytes");
        assert!(bytes.starts_with(b"skiff-desired-v1\0"));
        let body = postcard::to_allocvec(&doc(1)).expect("encode");
        assert_eq!(&bytes[DESIRED_CONTEXT.len()..], body.as_slice());
        // A trust-update signature can't pass for a document's (domain separation).
        let sig = d.signature.clone().expect("signature");
        let pk = UnparsedPublicKey::new(&ED25519, &key.public().bytes);
        let mut as_trust = TRUST_CONTEXT.to_vec();
        as_trust.extend_from_slice(&body);
        assert!(pk.verify(&as_trust, &sig.bytes).is_err());
    }

    #[test]
    fn keygen_writes_a_private_key_0600_and_a_public_line_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = keygen(dir.path(), &n("fleet")).expect("keygen");
        let mode = fs::metadata(&g.private).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let line = fs::read_to_string(&g.public).expect("pub");
        assert!(line.starts_with(&format!("skiff-ed25519 {} ", g.key.key_id)));
        assert_eq!(
            read_public_keys(&g.public).expect("read pub"),
            vec![g.key.clone()]
        );
        let loaded = SigningKey::load(&g.private).expect("load");
        assert_eq!(loaded.public(), &g.key);
        // PKCS#8 v1, as openssl writes (and reads) it.
        let pem = fs::read_to_string(&g.private).expect("pem");
        let der = pem_decode(&pem, "k").expect("der");
        assert_eq!(der.len(), 48);
        assert!(der.starts_with(&PKCS8_V1_ED25519_PREFIX));
        let err = keygen(dir.path(), &n("fleet")).expect_err("overwrote");
        assert!(matches!(err, KeyError::Exists { .. }), "{err}");
        assert_eq!(SigningKey::load(&g.private).expect("load").public(), &g.key);
    }

    #[test]
    fn public_key_lines_are_checked() {
        let (key, _) = SigningKey::generate().expect("key");
        let line = format_public(key.public());
        assert_eq!(
            parse_public_keys(&format!("# fleet\n\n{line}\n"), "f").expect("parse"),
            vec![key.public().clone()]
        );
        let wrong_id = line.replacen(key.public().key_id.as_str(), "0123456789abcdef", 1);
        let err = parse_public_keys(&wrong_id, "f").expect_err("wrong id");
        assert!(err.to_string().contains("does not match the key"), "{err}");
        assert!(parse_public_keys("ssh-ed25519 AAAA x", "f").is_err());
        assert!(parse_public_keys("", "f").is_err());
        let cfg = TrustConfig {
            keys: vec![line.clone(), line],
        };
        assert_eq!(cfg.load().expect("load").len(), 1, "duplicates collapse");
        let rel = TrustConfig {
            keys: vec!["fleet.pub".into()],
        };
        assert!(rel.load().expect_err("relative").contains("absolute path"));
    }

    #[test]
    fn an_openssl_pkcs8_v1_key_is_accepted() {
        // `openssl genpkey -algorithm ed25519` output for a fixed test seed (RFC 8032 test 1).
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n\
                   -----END PRIVATE KEY-----\n";
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        fs::write(&path, pem).expect("write");
        let key = SigningKey::load(&path).expect("load");
        assert_eq!(
            hex::encode(&key.public().bytes),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }
}
