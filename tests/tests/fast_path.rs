//! The fast path relays bytes as they are: every response framing must come out intact, on the
//! same keep-alive connection, and what it does not handle must be handed over unharmed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};

use bascule_tests::http::Conn;
use bascule_tests::{Proxy, ProxyConfig, Upstream};

const BIG: usize = 1024 * 1024;

fn big_body() -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8).collect()
}

/// An upstream that answers by path with hand-written framings.
fn scripted() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let (method, path) = {
                        let mut w = line.split_whitespace();
                        (
                            w.next().unwrap_or("").to_string(),
                            w.next().unwrap_or("").to_string(),
                        )
                    };
                    let (mut len, mut chunked) = (0usize, false);
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        if h == "\r\n" {
                            break;
                        }
                        let h = h.to_ascii_lowercase();
                        if let Some(v) = h.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        chunked |= h.starts_with("transfer-encoding:") && h.contains("chunked");
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    while chunked {
                        let mut size = String::new();
                        reader.read_line(&mut size).unwrap();
                        let n = usize::from_str_radix(size.trim(), 16).unwrap();
                        let mut chunk = vec![0; n + 2];
                        reader.read_exact(&mut chunk).unwrap();
                        body.extend(&chunk[..n]);
                        chunked = n > 0;
                    }
                    let resp: Vec<u8> = match path.as_str() {
                        "/health" => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
                        "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n".to_vec(),
                        "/close" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nclose".to_vec(),
                        "/eof" => b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end".to_vec(),
                        "/not-modified" => b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n".to_vec(),
                        "/early" => b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nafter".to_vec(),
                        "/big" => {
                            let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n").into_bytes();
                            r.extend(big_body());
                            r
                        }
                        _ if method == "POST" => {
                            let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
                            r.extend(&body);
                            r
                        }
                        _ if method == "HEAD" => b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_vec(),
                        _ => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}", path.len(), path).into_bytes(),
                    };
                    if out.write_all(&resp).is_err() {
                        return;
                    }
                    if path == "/close" || path == "/eof" {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn proxy() -> (Proxy, Upstream) {
    let green = Upstream::start("127.0.0.1:0", "green", "1.1.0").unwrap();
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![scripted()],
        green: vec![green.addr()],
        ..Default::default()
    });
    (proxy, green)
}

#[test]
fn every_framing_comes_through_on_one_connection() {
    let (proxy, _g) = proxy();
    let mut c = Conn::connect(proxy.addr).unwrap();
    let r = c.get("/chunked", &[]).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    assert_eq!(r.slot(), Some("blue"));
    let r = c.get("/not-modified", &[]).unwrap();
    assert_eq!((r.status, r.header("etag")), (304, Some("\"v1\"")));
    let r = c.get("/early", &[]).unwrap();
    // The interim 103 comes first, then the final response, on the same connection.
    assert_eq!(r.status, 103);
    let r = c.read_response(false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "after"));
    let r = c.request("HEAD", "/anything", &[]).unwrap();
    assert_eq!((r.status, r.header("content-length")), (200, Some("1000")));
    assert!(r.body.is_empty());
    let r = c.get("/big", &[]).unwrap();
    assert_eq!(r.body.len(), BIG);
    assert!(r.body == big_body(), "1 MiB body corrupted");
    let r = c.get("/plain", &[]).unwrap();
    assert_eq!(r.text(), "/plain");
    // The upstream sent no Date: the proxy adds one, once.
    assert_eq!(r.header_count("date"), 1);
}

#[test]
fn responses_delimited_by_close_end_the_connection_cleanly() {
    let (proxy, _g) = proxy();
    let mut c = Conn::connect(proxy.addr).unwrap();
    let r = c.get("/close", &[]).unwrap();
    assert_eq!(r.text(), "close");
    let mut c = Conn::connect(proxy.addr).unwrap();
    let r = c.get("/eof", &[]).unwrap();
    assert_eq!(r.text(), "until the end");
    // The upstream connections closed by the upstream are not reused.
    for _ in 0..5 {
        assert_eq!(
            Conn::connect(proxy.addr)
                .unwrap()
                .get("/x", &[])
                .unwrap()
                .text(),
            "/x"
        );
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (proxy, _g) = proxy();
    let mut c = Conn::connect(proxy.addr).unwrap();
    c.send_raw(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\nGET /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response(false).unwrap().text(), "/one");
    assert_eq!(c.read_response(false).unwrap().text(), "/two");
    assert_eq!(c.read_response(false).unwrap().text(), "hello world");
}

#[test]
fn requests_with_bodies_are_handed_over_and_the_connection_goes_on() {
    let (proxy, _g) = proxy();
    let mut c = Conn::connect(proxy.addr).unwrap();
    assert_eq!(c.get("/before", &[]).unwrap().text(), "/before");
    c.send_raw(b"POST /echo HTTP/1.1\r\nHost: x\r\ncontent-length: 11\r\n\r\nhello there")
        .unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello there"));
    assert_eq!(r.slot(), Some("blue"));
    c.send_raw(b"POST /echo HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response(false).unwrap().text(), "abc");
    assert_eq!(c.get("/after", &[]).unwrap().text(), "/after");
    // HTTP/1.0 goes the full way too.
    let mut c = Conn::connect(proxy.addr).unwrap();
    c.send_raw(b"GET /old HTTP/1.0\r\n\r\n").unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "/old"));
}

#[test]
fn connection_close_from_the_client_is_honoured() {
    let (proxy, _g) = proxy();
    let mut c = Conn::connect(proxy.addr).unwrap();
    let r = c.get("/bye", &[("Connection", "close")]).unwrap();
    assert_eq!(r.text(), "/bye");
    assert!(
        c.get("/again", &[]).is_err(),
        "connection left open after Connection: close"
    );
}
