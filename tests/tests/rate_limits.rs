//! `[[rate_limits]]`: beyond the burst, one client address gets 429 with `Retry-After` and the
//! refusal is counted by prefix, while another address and other prefixes are still served;
//! the same on the fast path and on Pingora's full proxy.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use bascule_tests::http::get;
use bascule_tests::raw::ScriptedUpstream;
use bascule_tests::{free_addr, Proxy, ProxyConfig, MODES};

const BURST: usize = 5;

/// One request from `from` (a loopback address the client binds before connecting); the
/// status and the `Retry-After` value.
fn request(proxy: SocketAddr, from: IpAddr, path: &str) -> (u16, Option<String>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
    socket
        .connect_timeout(&proxy.into(), Duration::from_secs(5))
        .unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let retry_after = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().to_string())
    });
    (status, retry_after)
}

fn limited_count(metrics: SocketAddr) -> u64 {
    let text = get(metrics, "/metrics").unwrap().text();
    text.lines()
        .find_map(|l| l.strip_prefix("bascule_rate_limited_total{prefix=\"/api/\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_flood_from_one_address_gets_429_while_another_is_served() {
    let up = ScriptedUpstream::echo();
    let root = tempfile::tempdir().unwrap();
    let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
    for mode in MODES {
        let metrics = free_addr();
        let extra = format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n\
             [[rate_limits]]\nprefix = \"/api/\"\nper_ip = 1\nburst = {BURST}\n"
        );
        let config = ProxyConfig::on_one_upstream(up.addr(), root.path(), mode, extra);
        let proxy = Proxy::start(&config);
        let m = mode.name();
        for i in 0..BURST {
            assert_eq!(
                request(proxy.addr, a, "/api/x"),
                (200, None),
                "{m}: request {i}"
            );
        }
        let mut refused = 0;
        for _ in 0..10 {
            let (status, retry_after) = request(proxy.addr, a, "/api/x");
            assert_eq!(status, 429, "{m}: beyond the burst");
            let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
            assert!(
                (1..=BURST as u64).contains(&secs),
                "{m}: Retry-After {secs}"
            );
            refused += 1;
        }
        assert_eq!(
            request(proxy.addr, b, "/api/x").0,
            200,
            "{m}: another address"
        );
        assert_eq!(
            request(proxy.addr, a, "/other").0,
            200,
            "{m}: another prefix"
        );
        assert_eq!(limited_count(metrics), refused, "{m}");
        let upstream_saw = up
            .requests()
            .iter()
            .filter(|r| !r.is_health_check())
            .count();
        assert!(
            upstream_saw <= (BURST + 2) * 2,
            "{m}: 429s never reach the upstream"
        );
    }
}
