//! TLS to the broker (`mqtts://`): the `[broker_tls]` PEM files, read and checked before
//! anything starts, turned into a rustls client configuration with the *ring* provider (no
//! aws-lc-rs: the static ARM builds cross-compile with gcc alone), and the client certificate's
//! subject CN, which is the node's id.
//!
//! The certificate is parsed by webpki, which rustls already carries: its `subject()` is the raw
//! DER name, and [`common_name`] walks it for the CN (a few lines instead of a full X.509
//! parser in the binary).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;

/// Largest PEM file read (a CA bundle is well below this).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// `[broker_tls]`: the PEM files for `mqtts://` (the same fields as `skiff ctl --ca --cert --key`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerTlsConfig {
    /// CA certificate(s) the broker's certificate must chain to. Unset: the public web roots
    /// (webpki-roots, as image pulls use; enough for AWS IoT Core's Amazon Root CA 1).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (chain), leaf first. Its subject CN is the node id.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// A checked TLS setup: what the connection uses.
#[derive(Debug, Clone)]
pub struct BrokerTls {
    pub client: Arc<ClientConfig>,
    /// The client certificate's subject CN, when a client certificate is configured.
    pub identity: Option<String>,
}

/// Why the TLS files can't be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field} {}: cannot read: {source}", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{field} {}: larger than {MAX_PEM_BYTES} bytes", path.display())]
    TooLarge { field: &'static str, path: PathBuf },
    #[error("{field} {}: not PEM: {problem}", path.display())]
    NotPem {
        field: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("{field} {}: {problem}", path.display())]
    Unusable {
        field: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("{present} is set but {missing} is not: a client certificate needs both")]
    Half {
        present: &'static str,
        missing: &'static str,
    },
    #[error("key_file {} does not match the certificate in cert_file {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot build the TLS configuration: {0}")]
    Config(rustls::Error),
}

impl BrokerTlsConfig {
    /// Nothing configured.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    /// Reads and checks the files: each is PEM with what it should hold, the key matches the
    /// certificate, the certificate has a CN.
    pub fn load(&self) -> Result<BrokerTls, TlsError> {
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let field = "ca_file";
                for cert in read_certs(field, path)? {
                    roots.add(cert).map_err(|e| TlsError::Unusable {
                        field,
                        path: path.clone(),
                        problem: format!("not a usable CA certificate: {e}"),
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(roots);
        let (client, identity) = match (&self.cert_file, &self.key_file) {
            (None, None) => (builder.with_no_client_auth(), None),
            (Some(_), None) => {
                return Err(TlsError::Half {
                    present: "cert_file",
                    missing: "key_file",
                })
            }
            (None, Some(_)) => {
                return Err(TlsError::Half {
                    present: "key_file",
                    missing: "cert_file",
                })
            }
            (Some(cert_path), Some(key_path)) => {
                let certs = read_certs("cert_file", cert_path)?;
                let unusable = |problem: String| TlsError::Unusable {
                    field: "cert_file",
                    path: cert_path.clone(),
                    problem,
                };
                let leaf = certs
                    .first()
                    .ok_or_else(|| unusable("no certificate".into()))?;
                let identity = certificate_cn(leaf).map_err(unusable)?;
                let key = read_key(key_path)?;
                let config = builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| match e {
                        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                            cert: cert_path.clone(),
                            key: key_path.clone(),
                        },
                        other => TlsError::Unusable {
                            field: "key_file",
                            path: key_path.clone(),
                            problem: other.to_string(),
                        },
                    })?;
                (config, Some(identity))
            }
        };
        Ok(BrokerTls {
            client: Arc::new(client),
            identity,
        })
    }
}

fn read_pem(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read {
        field,
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            field,
            path: path.to_owned(),
        });
    }
    std::fs::read(path).map_err(read)
}

fn not_pem(field: &'static str, path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::NotPem {
        field,
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// Every `CERTIFICATE` section of a PEM file; at least one.
fn read_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(field, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| not_pem(field, path, e.to_string()))?;
    if certs.is_empty() {
        return Err(not_pem(field, path, "no CERTIFICATE section"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let field = "key_file";
    let pem = read_pem(field, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => not_pem(
            field,
            path,
            "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section",
        ),
        other => not_pem(field, path, other.to_string()),
    })
}

/// The subject CN of a certificate.
pub fn certificate_cn(cert: &CertificateDer<'_>) -> Result<String, String> {
    let parsed =
        webpki::EndEntityCert::try_from(cert).map_err(|e| format!("not a certificate: {e}"))?;
    common_name(parsed.subject())
        .ok_or_else(|| "the certificate's subject has no CN (common name)".to_string())
}

/// OID 2.5.4.3, commonName.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

/// The first CN in a DER `Name` without its outer SEQUENCE (an RDNSequence's contents: SETs of
/// SEQUENCE { OID, value }), as mosquitto's `use_identity_as_username` takes it. String types:
/// UTF8String, PrintableString, IA5String, T61String.
pub fn common_name(mut name: &[u8]) -> Option<String> {
    while !name.is_empty() {
        let (tag, mut set, rest) = der_next(name)?;
        name = rest;
        if tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (tag, atv, rest) = der_next(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (tag, oid, value) = der_next(atv)?;
            if tag != 0x06 || oid != OID_CN {
                continue;
            }
            let (tag, text, _) = der_next(value)?;
            if !matches!(tag, 0x0c | 0x13 | 0x16 | 0x14) {
                return None;
            }
            return String::from_utf8(text.to_vec()).ok();
        }
    }
    None
}

/// One DER element: (tag, contents, what follows). Single-byte tags, lengths up to 64 KiB.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&b, rest) = rest.split_first()?;
            (usize::from(b), rest)
        }
        0x82 => {
            let (b, rest) = rest.split_at_checked(2)?;
            (usize::from(u16::from_be_bytes([b[0], b[1]])), rest)
        }
        _ => return None,
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RDN: SET { SEQUENCE { OID, string } }.
    fn rdn(oid: &[u8], tag: u8, value: &str) -> Vec<u8> {
        let mut atv = vec![0x06, u8::try_from(oid.len()).expect("short oid")];
        atv.extend_from_slice(oid);
        atv.extend([tag, u8::try_from(value.len()).expect("short value")]);
        atv.extend_from_slice(value.as_bytes());
        let mut seq = vec![0x30, u8::try_from(atv.len()).expect("short")];
        seq.extend(atv);
        let mut set = vec![0x31, u8::try_from(seq.len()).expect("short")];
        set.extend(seq);
        set
    }

    #[test]
    fn common_name_is_found_among_other_attributes() {
        let org = [0x55, 0x04, 0x0a];
        let mut name = rdn(&org, 0x0c, "fleet");
        name.extend(rdn(OID_CN, 0x0c, "pi-1"));
        assert_eq!(common_name(&name).as_deref(), Some("pi-1"));
        assert_eq!(
            common_name(&rdn(OID_CN, 0x13, "printable")).as_deref(),
            Some("printable")
        );
        assert_eq!(common_name(&rdn(&org, 0x0c, "fleet")), None);
        assert_eq!(common_name(&[]), None);
        // Truncated and wrongly tagged input is refused, not read past.
        let whole = rdn(OID_CN, 0x0c, "pi-1");
        assert_eq!(common_name(&whole[..whole.len() - 1]), None);
        assert_eq!(common_name(&rdn(OID_CN, 0x04, "octets")), None);
        assert_eq!(common_name(&[0x31, 0x85, 0, 0, 0, 0, 1]), None);
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |n: &str| dir.path().join(n);
        std::fs::write(path("junk.pem"), "hello").expect("write");
        std::fs::write(
            path("nocert.pem"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let err = |c: BrokerTlsConfig| c.load().map(|_| ()).expect_err("refused").to_string();
        let missing = err(BrokerTlsConfig {
            ca_file: Some(path("absent.pem")),
            ..Default::default()
        });
        assert!(missing.starts_with("ca_file "), "{missing}");
        assert!(missing.contains("absent.pem: cannot read"), "{missing}");
        let junk = err(BrokerTlsConfig {
            ca_file: Some(path("junk.pem")),
            ..Default::default()
        });
        assert!(
            junk.ends_with("junk.pem: not PEM: no CERTIFICATE section"),
            "{junk}"
        );
        let key_only = err(BrokerTlsConfig {
            ca_file: None,
            cert_file: Some(path("nocert.pem")),
            key_file: None,
        });
        assert_eq!(
            key_only,
            "cert_file is set but key_file is not: a client certificate needs both"
        );
        let no_cert = err(BrokerTlsConfig {
            ca_file: None,
            cert_file: Some(path("nocert.pem")),
            key_file: Some(path("nocert.pem")),
        });
        assert!(no_cert.starts_with("cert_file "), "{no_cert}");
        assert!(no_cert.contains("not PEM"), "{no_cert}");
    }

    #[test]
    fn public_roots_without_a_ca_file() {
        let tls = BrokerTlsConfig::default().load().expect("web roots");
        assert_eq!(tls.identity, None);
    }
}
