//! Registry client: the reads of the OCI distribution API (manifests and blobs) over HTTPS, or
//! plain HTTP for registries the config lists as insecure, with the auth flows registries use:
//! anonymous, basic (ECR's `AWS:<token>` is basic), a static bearer token, and the bearer-token
//! flow (`WWW-Authenticate: Bearer realm=...,service=...,scope=...`, as Docker Hub does).
//!
//! Blocking (ureq): the agent runs pulls on the blocking pool. Every answer is bounded: headers
//! by ureq, error bodies and token responses here, manifests and blobs by the puller.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::time::Duration;

use serde::Deserialize;

/// Where `docker.io` references are pulled from.
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";
/// Largest token-endpoint answer read.
const MAX_TOKEN_RESPONSE: u64 = 64 * 1024;
/// Longest token accepted.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Bytes of an error answer kept for the message.
const MAX_ERROR_BODY: u64 = 2048;
/// Longest `WWW-Authenticate` header parsed.
const MAX_CHALLENGE_LEN: usize = 4096;
/// Longest user name, password or token in the config.
const MAX_SECRET_LEN: usize = 16 * 1024;
/// Most registries in the config.
pub const MAX_REGISTRIES: usize = 64;

/// One `[[registries]]` entry of the agent config.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `host[:port]` as image references name it (`docker.io`, `123.dkr.ecr.eu-west-1.amazonaws.com`,
    /// `127.0.0.1:5000`).
    pub host: String,
    /// Basic credentials (with `password`). ECR: `AWS` and the output of
    /// `aws ecr get-login-password`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// A bearer token sent as is (instead of username/password).
    #[serde(default)]
    pub token: Option<String>,
    /// Plain HTTP. Anything not listed here as insecure is reached over HTTPS only.
    #[serde(default)]
    pub insecure: bool,
}

impl fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// Why a `[[registries]]` entry is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry {host:?}: {problem}")]
pub struct RegistryConfigError {
    pub host: String,
    pub problem: String,
}

/// How to authenticate to one registry.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    Token(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// A registry's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistrySettings {
    pub credentials: Credentials,
    pub insecure: bool,
}

/// The `[[registries]]` of the config, validated: host → settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Registries {
    by_host: BTreeMap<String, RegistrySettings>,
}

impl Registries {
    /// Check every entry: a valid `host[:port]` without scheme or path, listed once, with
    /// either username and password, or a token, or nothing.
    pub fn validate(list: &[RegistryConfig]) -> Result<Registries, RegistryConfigError> {
        if list.len() > MAX_REGISTRIES {
            return Err(RegistryConfigError {
                host: String::new(),
                problem: format!("{} registries listed, at most {MAX_REGISTRIES}", list.len()),
            });
        }
        let mut by_host = BTreeMap::new();
        for r in list {
            let err = |problem: &str| RegistryConfigError {
                host: r.host.clone(),
                problem: problem.to_owned(),
            };
            let probe = format!("{}/x", r.host);
            let parsed: super::ImageRef = probe.parse().map_err(|_| {
                err("not a registry host[:port] (no scheme, no path: e.g. registry.example:5000)")
            })?;
            if parsed.registry() != r.host && r.host != "index.docker.io" {
                return Err(err(
                    "not a registry host[:port] (no scheme, no path: e.g. registry.example:5000)",
                ));
            }
            let host = parsed.registry().to_owned();
            for (what, v) in [
                ("username", &r.username),
                ("password", &r.password),
                ("token", &r.token),
            ] {
                if let Some(v) = v {
                    if v.is_empty() || v.len() > MAX_SECRET_LEN || v.chars().any(char::is_control) {
                        return Err(err(&format!(
                            "{what} must be 1 to {MAX_SECRET_LEN} bytes without control characters"
                        )));
                    }
                }
            }
            let credentials = match (&r.username, &r.password, &r.token) {
                (None, None, None) => Credentials::Anonymous,
                (Some(u), Some(p), None) => {
                    if u.contains(':') {
                        return Err(err("username must not contain ':'"));
                    }
                    Credentials::Basic {
                        username: u.clone(),
                        password: p.clone(),
                    }
                }
                (None, None, Some(t)) => Credentials::Token(t.clone()),
                (Some(_), None, _) | (None, Some(_), _) => {
                    return Err(err("username and password go together"))
                }
                (Some(_), Some(_), Some(_)) => {
                    return Err(err("give either username and password, or token"))
                }
            };
            if by_host
                .insert(
                    host,
                    RegistrySettings {
                        credentials,
                        insecure: r.insecure,
                    },
                )
                .is_some()
            {
                return Err(err("listed twice"));
            }
        }
        Ok(Registries { by_host })
    }

    /// Settings for `registry` (as in an image reference); anonymous HTTPS when not listed.
    pub fn get(&self, registry: &str) -> RegistrySettings {
        self.by_host.get(registry).cloned().unwrap_or_default()
    }
}

/// What went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry} is unreachable ({url}): {source}")]
    Unreachable {
        registry: String,
        url: String,
        source: Box<ureq::Error>,
    },
    #[error("registry {registry}: {what} not found (HTTP 404 from {url})")]
    NotFound {
        registry: String,
        what: String,
        url: String,
    },
    #[error("registry {registry} refused access to {what}: {reason}")]
    Unauthorized {
        registry: String,
        what: String,
        reason: String,
    },
    #[error("registry {registry}: {what}: HTTP {status} from {url}: {message}")]
    Status {
        registry: String,
        what: String,
        url: String,
        status: u16,
        message: String,
    },
    #[error("registry {registry}: invalid WWW-Authenticate challenge {challenge:?}: {reason}")]
    BadChallenge {
        registry: String,
        challenge: String,
        reason: &'static str,
    },
    #[error("registry {registry}: token endpoint {realm}: {reason}")]
    Token {
        registry: String,
        realm: String,
        reason: String,
    },
}

impl RegistryError {
    /// The registry could not be reached or is failing (network down, refused, timeout, 5xx,
    /// 429): a cached image may stand in (`prefer-cached`).
    pub fn is_unreachable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Status { status, .. } => *status >= 500 || *status == 429,
            RegistryError::Token { .. } => true,
            _ => false,
        }
    }
}

/// Connection settings of the HTTP client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// A read that waits longer than this fails (and a layer download resumes from there).
    pub read_timeout: Duration,
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            user_agent: format!("skiff/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// An HTTP client for registries. Cheap to clone (connection pool shared).
#[derive(Debug, Clone)]
pub struct RegistryClient {
    http: ureq::Agent,
    registries: Registries,
}

/// A successful answer: status 200 or 206, headers and the unread body.
pub type Response = ureq::http::Response<ureq::Body>;

impl RegistryClient {
    pub fn new(registries: Registries, opts: &ClientOptions) -> RegistryClient {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_recv_response(Some(opts.read_timeout))
            .timeout_per_read(Some(opts.read_timeout))
            .max_redirects(5)
            .user_agent(opts.user_agent.as_str())
            .build();
        RegistryClient {
            http: config.into(),
            registries,
        }
    }

    /// A session with one repository of one registry; it keeps the token it obtains.
    pub fn session(&self, registry: &str, repository: &str) -> Session {
        let settings = self.registries.get(registry);
        let endpoint = if registry == super::reference::DEFAULT_REGISTRY {
            DOCKER_HUB_ENDPOINT
        } else {
            registry
        };
        let scheme = if settings.insecure { "http" } else { "https" };
        let auth = match &settings.credentials {
            Credentials::Token(t) => Some(format!("Bearer {t}")),
            _ => None,
        };
        Session {
            http: self.http.clone(),
            registry: registry.to_owned(),
            base: format!("{scheme}://{endpoint}/v2/{repository}"),
            repository: repository.to_owned(),
            settings,
            auth,
        }
    }
}

/// Requests to one repository, authenticated as the registry asks.
#[derive(Debug)]
pub struct Session {
    http: ureq::Agent,
    registry: String,
    base: String,
    repository: String,
    settings: RegistrySettings,
    /// `Authorization` header value once known.
    auth: Option<String>,
}

impl Session {
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// GET `{base}/{tail}` (`manifests/<ref>` or `blobs/<digest>`), authenticating when the
    /// registry answers 401. `range_from > 0` asks for the bytes from there on. Answers other
    /// than 200 and 206 become errors naming `what`.
    pub fn get(
        &mut self,
        what: &str,
        tail: &str,
        accept: Option<&str>,
        range_from: u64,
    ) -> Result<Response, RegistryError> {
        let url = format!("{}/{tail}", self.base);
        let mut challenged = false;
        loop {
            let mut req = self.http.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(auth) = &self.auth {
                req = req.header("Authorization", auth.as_str());
            }
            if range_from > 0 {
                req = req.header("Range", format!("bytes={range_from}-"));
            }
            let resp = req.call().map_err(|e| self.unreachable(&url, e))?;
            let status = resp.status().as_u16();
            match status {
                200 | 206 => return Ok(resp),
                401 if !challenged => {
                    challenged = true;
                    let challenge = resp
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    self.authenticate(what, &challenge)?;
                }
                401 | 403 => {
                    let message = error_message(resp);
                    return Err(RegistryError::Unauthorized {
                        registry: self.registry.clone(),
                        what: what.to_owned(),
                        reason: format!("HTTP {status}: {message}"),
                    });
                }
                404 => {
                    return Err(RegistryError::NotFound {
                        registry: self.registry.clone(),
                        what: what.to_owned(),
                        url,
                    })
                }
                _ => {
                    let message = error_message(resp);
                    return Err(RegistryError::Status {
                        registry: self.registry.clone(),
                        what: what.to_owned(),
                        url,
                        status,
                        message,
                    });
                }
            }
        }
    }

    fn unreachable(&self, url: &str, e: ureq::Error) -> RegistryError {
        RegistryError::Unreachable {
            registry: self.registry.clone(),
            url: url.to_owned(),
            source: Box::new(e),
        }
    }

    /// Answer a 401's challenge: set the `Authorization` header to use from now on.
    fn authenticate(&mut self, what: &str, challenge: &str) -> Result<(), RegistryError> {
        let unauthorized = |reason: String| RegistryError::Unauthorized {
            registry: self.registry.clone(),
            what: what.to_owned(),
            reason,
        };
        let c = parse_challenge(challenge).map_err(|reason| RegistryError::BadChallenge {
            registry: self.registry.clone(),
            challenge: challenge.chars().take(200).collect(),
            reason,
        })?;
        match (c.scheme.as_str(), &self.settings.credentials) {
            ("basic", Credentials::Basic { username, password }) => {
                self.auth = Some(basic_auth(username, password));
                Ok(())
            }
            ("basic", _) => Err(unauthorized(format!(
                "it asks for a user name and password; add them to [[registries]] host = \"{}\"",
                self.registry
            ))),
            ("bearer", Credentials::Token(_)) => Err(unauthorized(
                "the configured token was not accepted".to_owned(),
            )),
            ("bearer", creds) => {
                let token = self.fetch_token(&c, creds)?;
                self.auth = Some(format!("Bearer {token}"));
                Ok(())
            }
            (other, _) => Err(unauthorized(format!(
                "unsupported authentication scheme {other:?}"
            ))),
        }
    }

    /// The bearer-token flow: GET realm?service=..&scope=.. (with basic credentials if any).
    fn fetch_token(&self, c: &Challenge, creds: &Credentials) -> Result<String, RegistryError> {
        let realm = c.params.get("realm").cloned().unwrap_or_default();
        let token_err = |reason: String| RegistryError::Token {
            registry: self.registry.clone(),
            realm: realm.clone(),
            reason,
        };
        let plain = realm.starts_with("http://");
        if !(realm.starts_with("https://") || plain && self.settings.insecure) {
            return Err(token_err(
                "the realm must be an https:// URL (http:// only for registries listed insecure)"
                    .to_owned(),
            ));
        }
        let mut url = realm.clone();
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        if let Some(service) = c.params.get("service") {
            url.push(sep);
            url.push_str("service=");
            url.push_str(&percent_encode(service));
            sep = '&';
        }
        let scope = c
            .params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        url.push(sep);
        url.push_str("scope=");
        url.push_str(&percent_encode(&scope));
        let mut req = self.http.get(&url);
        if let Credentials::Basic { username, password } = creds {
            req = req.header("Authorization", basic_auth(username, password));
        }
        let resp = req
            .call()
            .map_err(|e| token_err(format!("unreachable: {e}")))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let message = error_message(resp);
            return Err(if status == 401 || status == 403 {
                RegistryError::Unauthorized {
                    registry: self.registry.clone(),
                    what: format!("a token for {scope}"),
                    reason: format!("HTTP {status}: {message}"),
                }
            } else {
                token_err(format!("HTTP {status}: {message}"))
            });
        }
        let bytes = read_limited(resp, MAX_TOKEN_RESPONSE)
            .map_err(|e| token_err(format!("cannot read the answer: {e}")))?
            .ok_or_else(|| token_err(format!("answer larger than {MAX_TOKEN_RESPONSE} bytes")))?;
        #[derive(Deserialize)]
        struct TokenAnswer {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&bytes).map_err(|e| token_err(format!("invalid JSON: {e}")))?;
        let token = answer
            .token
            .filter(|t| !t.is_empty())
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_err("the answer holds no token".to_owned()))?;
        if token.len() > MAX_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(token_err(format!(
                "the token is not 1 to {MAX_TOKEN_LEN} printable ASCII characters"
            )));
        }
        Ok(token)
    }
}

/// Read a body whole, `None` when it is longer than `max`.
pub(crate) fn read_limited(resp: Response, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    resp.into_body()
        .into_reader()
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

/// The start of an error answer, for messages: the registry's `errors[].message` when it is
/// JSON, else the text.
fn error_message(resp: Response) -> String {
    let Ok(Some(bytes)) = read_limited(resp, MAX_ERROR_BODY) else {
        return "(no readable answer)".to_owned();
    };
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(&bytes) {
        let parts: Vec<String> = e
            .errors
            .iter()
            .take(4)
            .map(|i| format!("{} {}", i.code, i.message))
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if text.is_empty() {
        "(empty answer)".to_owned()
    } else {
        text
    }
}

/// A parsed `WWW-Authenticate` header: scheme (lowercase) and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: BTreeMap<String, String>,
}

/// `Bearer realm="https://auth.example/token",service="registry.example",scope="repository:x:pull"`
fn parse_challenge(header: &str) -> Result<Challenge, &'static str> {
    if header.is_empty() {
        return Err("the 401 answer has no WWW-Authenticate header");
    }
    if header.len() > MAX_CHALLENGE_LEN {
        return Err("too long");
    }
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err("no authentication scheme");
    }
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            if !(c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err("a parameter name has an invalid character");
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return Err("a parameter has no value");
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err("unterminated quoted value"),
                    },
                    Some(c) => value.push(c),
                    None => return Err("unterminated quoted value"),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_owned();
        }
        params.insert(key.to_ascii_lowercase(), value);
    }
    Ok(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

fn basic_auth(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64(format!("{username}:{password}").as_bytes())
    )
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-encode a query value (RFC 3986 unreserved characters kept).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .expect("valid challenge");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/busybox:pull");
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).expect("basic");
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        let c = parse_challenge(r#"Bearer realm=https://x/t , service="a\"b""#).expect("mixed");
        assert_eq!(c.params["realm"], "https://x/t");
        assert_eq!(c.params["service"], "a\"b");
        assert!(parse_challenge("").is_err());
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_err());
        assert!(parse_challenge("Bearer realm").is_err());
        assert!(parse_challenge(&"x".repeat(MAX_CHALLENGE_LEN + 1)).is_err());
    }

    #[test]
    fn encodes_basic_auth_and_query_values() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(basic_auth("AWS", "tok"), "Basic QVdTOnRvaw==");
        assert_eq!(
            percent_encode("repository:library/busybox:pull"),
            "repository%3Alibrary%2Fbusybox%3Apull"
        );
    }

    fn entry(host: &str) -> RegistryConfig {
        RegistryConfig {
            host: host.to_owned(),
            username: None,
            password: None,
            token: None,
            insecure: false,
        }
    }

    #[test]
    fn validates_registry_entries() {
        let ok = Registries::validate(&[
            RegistryConfig {
                insecure: true,
                ..entry("127.0.0.1:5000")
            },
            RegistryConfig {
                username: Some("AWS".into()),
                password: Some("secret".into()),
                ..entry("123.dkr.ecr.eu-west-1.amazonaws.com")
            },
            RegistryConfig {
                token: Some("t".into()),
                ..entry("docker.io")
            },
        ])
        .expect("valid");
        assert!(ok.get("127.0.0.1:5000").insecure);
        assert_eq!(
            ok.get("docker.io").credentials,
            Credentials::Token("t".into())
        );
        assert_eq!(ok.get("elsewhere.example"), RegistrySettings::default());
        assert!(matches!(
            ok.get("123.dkr.ecr.eu-west-1.amazonaws.com").credentials,
            Credentials::Basic { .. }
        ));
        let err = |r: RegistryConfig| Registries::validate(&[r]).expect_err("invalid").to_string();
        assert!(err(entry("https://r.example")).contains("no scheme"));
        assert!(err(entry("r.example/path")).contains("no scheme"));
        assert!(err(RegistryConfig {
            username: Some("u".into()),
            ..entry("r.example")
        })
        .contains("go together"));
        assert!(err(RegistryConfig {
            username: Some("u".into()),
            password: Some("p".into()),
            token: Some("t".into()),
            ..entry("r.example")
        })
        .contains("either"));
        assert!(err(RegistryConfig {
            token: Some("a\nb".into()),
            ..entry("r.example")
        })
        .contains("control"));
        assert!(
            Registries::validate(&[entry("r.example"), entry("r.example")])
                .expect_err("twice")
                .to_string()
                .contains("listed twice")
        );
        // Secrets stay out of debug output.
        let dbg = format!(
            "{:?}",
            RegistryConfig {
                password: Some("hunter2".into()),
                username: Some("u".into()),
                ..entry("r.example")
            }
        );
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }
}
