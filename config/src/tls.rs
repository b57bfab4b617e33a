//! `[listen] https`, `redirect_http` and `[tls]`: TLS termination, certificates chosen by SNI.
//!
//! Certificates and keys are loaded here, at validation, so that `bascule check` reports a
//! missing, unreadable or mismatched pair at the `cert` key's line; the proxy loads them again
//! with [`load_pair`] when it starts or reloads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use toml::Spanned;

use crate::validate::Violation;

/// `[tls]`: how the https listeners terminate TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Lowest protocol version offered.
    pub min_version: TlsVersion,
    /// Offer HTTP/2 by ALPN.
    pub h2: bool,
    /// Certificate and key pairs; the first is the default for an unknown or missing SNI.
    pub certs: Vec<CertPair>,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3).
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// One `[[tls.certs]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct CertPair {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Why a certificate pair cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{0}: no PEM certificate in it")]
    NoCert(PathBuf),
    /// The key file holds no usable private key.
    #[error("{0}: no usable PEM private key in it (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    /// The key does not belong to the certificate.
    #[error("{key} does not match the certificate {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// Loads and checks one pair: the chain parses, the key parses and is the certificate's.
pub fn load_pair(pair: &CertPair) -> Result<Arc<CertifiedKey>, CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(&pair.cert)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(CertError::NoCert(pair.cert.clone()));
    }
    let key_pem = read(&pair.key)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| CertError::NoKey(pair.key.clone()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| CertError::NoKey(pair.key.clone()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|_| CertError::Mismatch {
        cert: pair.cert.clone(),
        key: pair.key.clone(),
    })?;
    Ok(Arc::new(certified))
}

pub(crate) mod file {
    use std::path::PathBuf;

    use serde::Deserialize;
    use toml::Spanned;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Tls {
        pub(crate) min_version: Option<Spanned<String>>,
        pub(crate) h2: Option<bool>,
        #[serde(default)]
        pub(crate) certs: Vec<Spanned<Cert>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Cert {
        pub(crate) cert: Spanned<PathBuf>,
        pub(crate) key: PathBuf,
    }
}

/// Validates `[tls]` against the https listeners; paths are relative to `base` (the config
/// file's folder).
pub(crate) fn tls(
    f: Option<file::Tls>,
    https: &Option<Spanned<Vec<std::net::SocketAddr>>>,
    base: &Path,
) -> Result<Option<TlsConfig>, Violation> {
    let wants = https.as_ref().is_some_and(|h| !h.get_ref().is_empty());
    let Some(f) = f else {
        return match https {
            Some(h) if wants => Err(Violation {
                span: h.span(),
                message: "listen.https: needs a [tls] table with at least one [[tls.certs]]".into(),
            }),
            _ => Ok(None),
        };
    };
    let min_version = match &f.min_version {
        None => TlsVersion::V1_2,
        Some(v) => match v.get_ref().as_str() {
            "1.2" => TlsVersion::V1_2,
            "1.3" => TlsVersion::V1_3,
            other => {
                return Err(Violation {
                    span: v.span(),
                    message: format!("tls.min_version: `{other}` is not \"1.2\" or \"1.3\""),
                })
            }
        },
    };
    let mut certs = Vec::with_capacity(f.certs.len());
    for (i, c) in f.certs.into_iter().enumerate() {
        let c = c.into_inner();
        let span = c.cert.span();
        let pair = CertPair {
            cert: base.join(c.cert.into_inner()),
            key: base.join(c.key),
        };
        if let Err(e) = load_pair(&pair) {
            return Err(Violation {
                span,
                message: format!("tls.certs[{i}].cert: {e}"),
            });
        }
        certs.push(pair);
    }
    if certs.is_empty() {
        if let Some(h) = https.as_ref().filter(|_| wants) {
            return Err(Violation {
                span: h.span(),
                message: "listen.https: needs at least one [[tls.certs]]".into(),
            });
        }
    }
    Ok(Some(TlsConfig {
        min_version,
        h2: f.h2.unwrap_or(true),
        certs,
    }))
}
