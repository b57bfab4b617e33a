//! TLS for the tests: certificates made on the spot (`rcgen`) and a small blocking client
//! (`rustls`) that reports which certificate the server presented.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

/// A self-signed certificate for `names`, written as `NAME.pem` and `NAME.key` in `dir`.
pub struct TestCert {
    /// The PEM certificate file.
    pub cert: PathBuf,
    /// The PEM key file.
    pub key: PathBuf,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

impl TestCert {
    /// Makes a certificate for `names` (the first is also the file name) in `dir`.
    pub fn make(dir: &Path, names: &[&str]) -> TestCert {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let made = rcgen::generate_simple_self_signed(names.clone()).expect("certificate");
        let cert = dir.join(format!("{}.pem", names[0]));
        let key = dir.join(format!("{}.key", names[0]));
        std::fs::write(&cert, made.cert.pem()).expect("write cert");
        std::fs::write(&key, made.key_pair.serialize_pem()).expect("write key");
        TestCert {
            cert,
            key,
            der: made.cert.der().to_vec(),
        }
    }

    /// Makes a certificate for `names` issued by a new CA, shaped as a public one is: 90 days of
    /// validity, server authentication, a CRL address (never fetched). Returns it and the CA's PEM
    /// file, for clients that are to trust it.
    pub fn issued(dir: &Path, names: &[&str]) -> (TestCert, PathBuf) {
        use rcgen::{
            BasicConstraints, CertificateParams, CrlDistributionPoint, DnType,
            ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name
            .push(DnType::CommonName, "bascule test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");

        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut leaf = CertificateParams::new(names.clone()).expect("certificate params");
        leaf.distinguished_name.push(DnType::CommonName, &names[0]);
        let now = time::OffsetDateTime::now_utc();
        leaf.not_before = now - time::Duration::days(1);
        leaf.not_after = now + time::Duration::days(90);
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec!["http://127.0.0.1/test-ca.crl".into()],
        }];
        let key = KeyPair::generate().expect("key");
        let made = leaf
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("certificate");
        let cert = dir.join(format!("{}.pem", names[0]));
        let key_path = dir.join(format!("{}.key", names[0]));
        let ca_path = dir.join("test-ca.pem");
        std::fs::write(&cert, made.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        std::fs::write(&ca_path, ca_cert.pem()).expect("write CA");
        let issued = TestCert {
            cert,
            key: key_path,
            der: made.der().to_vec(),
        };
        (issued, ca_path)
    }

    /// The `[[tls.certs]]` entry for this pair.
    pub fn toml(&self) -> String {
        format!(
            "[[tls.certs]]\ncert = \"{}\"\nkey = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// A blue (`blue 1.0.0`) and a green (`green 1.1.0`) upstream and a proxy over them with an
/// https listener serving `cert` (and `/assets/` from `site` for both slots, when given);
/// returns once a handshake with SNI `name` offering `alpn` agrees on `alpn`'s first protocol
/// (or on any, for no `alpn`).
pub fn https_two_slots(
    cert: &TestCert,
    name: &str,
    alpn: &[&[u8]],
    site: Option<&Path>,
) -> (crate::Upstream, crate::Upstream, crate::Proxy, SocketAddr) {
    let blue = crate::Upstream::start("127.0.0.1:0", "blue", "1.0.0").expect("blue upstream");
    let green = crate::Upstream::start("127.0.0.1:0", "green", "1.1.0").expect("green upstream");
    let https = crate::free_addr();
    let proxy = crate::Proxy::start(&crate::ProxyConfig {
        blue: vec![blue.addr()],
        green: vec![green.addr()],
        blue_root: site.map(Path::to_path_buf),
        green_root: site.map(Path::to_path_buf),
        listen: format!("https = [\"{https}\"]"),
        extra: match site {
            Some(_) => format!(
                "[[routes]]\nprefix = \"/assets/\"\nto = \"static\"\n\n[tls]\n{}",
                cert.toml()
            ),
            None => format!("[tls]\n{}", cert.toml()),
        },
        ..crate::ProxyConfig::default()
    });
    let agreed = crate::wait_until(Duration::from_secs(10), || {
        TlsConn::connect(https, name, alpn, false)
            .is_ok_and(|c| alpn.is_empty() || c.alpn().as_deref() == Some(alpn[0]))
    });
    assert!(agreed, "the https listener never completed a handshake");
    (blue, green, proxy, https)
}

/// Accepts any certificate: these tests check *which* one is presented, not whether it is
/// trusted.
#[derive(Debug)]
struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client config that accepts any certificate, offering `alpn`; only TLS 1.2 when
/// `tls12_only`.
pub fn client_config(alpn: &[&[u8]], tls12_only: bool) -> std::io::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS connection to the proxy.
pub struct TlsConn {
    stream: StreamOwned<ClientConnection, TcpStream>,
}

impl TlsConn {
    /// Connects to `addr` with SNI `name` (none for an IP address), offering `alpn`; only
    /// TLS 1.2 when `tls12_only`.
    pub fn connect(
        addr: SocketAddr,
        name: &str,
        alpn: &[&[u8]],
        tls12_only: bool,
    ) -> std::io::Result<TlsConn> {
        let config = client_config(alpn, tls12_only)?;
        let server = ServerName::try_from(name.to_string()).map_err(std::io::Error::other)?;
        let conn =
            ClientConnection::new(Arc::new(config), server).map_err(std::io::Error::other)?;
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsConn { stream })
    }

    /// Waits up to 10 s for the https listener at `addr` to complete a handshake for `name`;
    /// panics if it never does.
    pub fn wait_ready(addr: SocketAddr, name: &str) {
        assert!(
            crate::wait_until(Duration::from_secs(10), || {
                TlsConn::connect(addr, name, &[], false).is_ok()
            }),
            "https listener never accepted a handshake"
        );
    }

    /// The connection itself, for raw exchanges.
    pub fn into_stream(self) -> StreamOwned<ClientConnection, TcpStream> {
        self.stream
    }

    /// The certificate the server presented, DER.
    pub fn peer_cert(&self) -> Vec<u8> {
        self.stream
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    /// The protocol agreed by ALPN.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.conn.alpn_protocol().map(<[u8]>::to_vec)
    }

    /// The TLS version in use.
    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.stream.conn.protocol_version()
    }

    /// Sends `raw` and reads one HTTP/1.1 response (Content-Length bodies); returns its head
    /// and body as text.
    pub fn request(&mut self, raw: &str) -> std::io::Result<(String, String)> {
        self.stream.write_all(raw.as_bytes())?;
        self.stream.flush()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                    return Ok((head, body));
                }
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// What [`Mode::Tls`](crate::Mode::Tls) adds to a config: an https listener with a certificate
/// for `localhost` made in a temp dir. Returns where clients connect and the dir (kept alive by
/// the caller); `None` for the other modes.
pub fn https_for(
    mode: crate::Mode,
    cfg: &mut crate::ProxyConfig,
) -> Option<(SocketAddr, tempfile::TempDir)> {
    if !mode.tls() {
        return None;
    }
    let dir = tempfile::tempdir().expect("cert dir");
    let cert = TestCert::make(dir.path(), &["localhost"]);
    let addr = crate::free_addr();
    cfg.listen = format!("https = [\"{addr}\"]\n{}", cfg.listen);
    cfg.extra = format!("{}\n[tls]\n{}", cfg.extra, cert.toml());
    Some((addr, dir))
}
