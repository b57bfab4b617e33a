//! Upstream connection reuse: a pooled connection that received bytes (or EOF) while idle is
//! closed, never handed to the next request. One client's response never reaches another.

use super::*;

/// A complete response the upstream sends when nobody asked for it.
const UNSOLICITED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned";

#[test]
fn unsolicited_response_never_reaches_the_next_client() {
    let mut fails = Failures::default();
    for mode in PATHS {
        let edge = Edge::start(
            mode,
            |req| match req.target.as_str() {
                "/a" => vec![
                    Action::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
                    Action::Later(Duration::from_millis(100), UNSOLICITED.to_vec()),
                ],
                _ => echo(req),
            },
            "",
        );
        for round in 0..3 {
            let a = edge.exchange(&get("/a"), 1);
            fails.check(
                mode,
                a.responses.first().map(RawResponse::text) == Some("hello".into()),
                || format!("round {round}: GET /a got {}", outcome(&a)),
            );
            // The unsolicited response lands 100 ms later, on an idle pooled connection.
            std::thread::sleep(Duration::from_millis(250));
            let path = format!("/b{round}");
            let b = edge.exchange(&get(&path), 1);
            let want = format!("GET {path}");
            fails.check(
                mode,
                b.responses.first().map(RawResponse::text) == Some(want.clone()),
                || {
                    format!(
                        "round {round}: another client's GET {path} got {} (want {want:?})",
                        outcome(&b)
                    )
                },
            );
        }
    }
    fails.assert_none();
}

#[test]
fn body_after_a_head_response_never_reaches_another_client() {
    // The upstream answers HEAD with a head, then a body it must not send: here a whole
    // response, written at once on even rounds and 30 ms later on odd ones.
    let mut fails = Failures::default();
    for mode in PATHS {
        let edge = Edge::start(
            mode,
            |req| {
                if req.method != "HEAD" {
                    return echo(req);
                }
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n".to_vec();
                let odd = req
                    .target
                    .trim_start_matches("/h")
                    .parse::<u32>()
                    .is_ok_and(|n| n % 2 == 1);
                if odd {
                    vec![
                        Action::Write(head),
                        Action::Later(Duration::from_millis(30), UNSOLICITED.to_vec()),
                    ]
                } else {
                    vec![Action::Write([head, UNSOLICITED.to_vec()].concat())]
                }
            },
            "",
        );
        let mut heads = edge.client();
        let mut gets = edge.client();
        let mut wrong = Vec::new();
        for i in 0..50 {
            if heads
                .send(format!("HEAD /h{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .is_err()
            {
                heads = edge.client();
                let _ = heads.send(format!("HEAD /h{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
            }
            let h = heads.read_for(1, &[true], READ);
            if h.statuses() != [200] || !h.responses[0].body.is_empty() || !h.leftover.is_empty() {
                wrong.push(format!("HEAD /h{i}: {}", outcome(&h)));
            }
            if i % 4 == 1 {
                // Lets the late body land while the connection idles in the pool.
                std::thread::sleep(Duration::from_millis(60));
            }
            let path = format!("/g{i}");
            if gets.send(&get(&path)).is_err() {
                gets = edge.client();
                let _ = gets.send(&get(&path));
            }
            let g = gets.read(1, READ);
            if g.responses.first().map(RawResponse::text) != Some(format!("GET {path}")) {
                wrong.push(format!("GET {path}: {}", outcome(&g)));
                // A desynchronised connection would make every later round wrong too.
                gets = edge.client();
            }
            if h.end != End::Open || !h.leftover.is_empty() {
                heads = edge.client();
            }
        }
        fails.check(mode, wrong.is_empty(), || {
            format!(
                "{} wrong response(s) in 50 HEAD/GET rounds; first: {}",
                wrong.len(),
                wrong
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        });
    }
    fails.assert_none();
}
