//! The TLS certificates in force, chosen per handshake by SNI.
//!
//! One [`ArcSwap`] of the loaded pairs, like the routing snapshot: a handshake reads the set
//! once; `reload` stores a new set, which new handshakes use while open connections keep the
//! certificate they were made with.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bascule_config::{load_pair, CertError, TlsConfig, TlsVersion};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::CipherSuite;

/// The certificate set of the https listeners.
#[derive(Debug)]
pub struct Certs {
    current: ArcSwap<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    /// In configured order; the first is the default.
    pairs: Vec<Arc<CertifiedKey>>,
    min_version: TlsVersion,
}

impl Certs {
    /// Loads every pair of `cfg`.
    pub fn load(cfg: &TlsConfig) -> Result<Certs, CertError> {
        Ok(Certs {
            current: ArcSwap::from_pointee(Loaded::of(cfg)?),
        })
    }

    /// Loads `cfg` again and uses it for new handshakes; on error the set in force stays.
    pub fn reload(&self, cfg: &TlsConfig) -> Result<(), CertError> {
        self.current.store(Arc::new(Loaded::of(cfg)?));
        Ok(())
    }
}

impl Loaded {
    fn of(cfg: &TlsConfig) -> Result<Loaded, CertError> {
        let pairs = cfg.certs.iter().map(load_pair).collect::<Result<_, _>>()?;
        Ok(Loaded {
            pairs,
            min_version: cfg.min_version,
        })
    }

    /// The first pair whose certificate is valid for `name`, else the first pair.
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = name.and_then(|n| {
            let server = rustls::pki_types::ServerName::try_from(n).ok()?;
            self.pairs
                .iter()
                .find(|p| {
                    p.end_entity_cert().ok().is_some_and(|der| {
                        webpki::EndEntityCert::try_from(der)
                            .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&server).is_ok())
                    })
                })
                .cloned()
        });
        by_name.or_else(|| self.pairs.first().cloned())
    }
}

/// Installs the process's rustls crypto provider: ring, with every TLS 1.3 suite and one TLS 1.2
/// suite per key type (ECDHE with AES-128-GCM).
///
/// Pingora builds its rustls server config without `ignore_client_order`, so with several TLS 1.2
/// suites the client would choose among them (testssl rates that HIGH: "no cipher order"). With
/// one per key type there is nothing left to choose, and every TLS 1.2 client offers AES-GCM.
/// Call before the listeners are built; a provider installed earlier stays.
pub fn install_crypto_provider() {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    let mut provider = default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    // Err only when a provider is already installed, which is then the one in force.
    let _ = provider.install_default();
}

/// TLS 1.3's cipher suites: a client that offers none of them speaks TLS 1.2 at most.
const TLS13_SUITES: [CipherSuite; 3] = [
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
];

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.current.load();
        // Pingora's listeners offer TLS 1.2 and 1.3; `min_version = "1.3"` turns away a client
        // that cannot speak 1.3 (with 1.3 on both sides, 1.3 is what is negotiated).
        if loaded.min_version == TlsVersion::V1_3
            && !hello
                .cipher_suites()
                .iter()
                .any(|s| TLS13_SUITES.contains(s))
        {
            return None;
        }
        loaded.pick(hello.server_name())
    }
}
