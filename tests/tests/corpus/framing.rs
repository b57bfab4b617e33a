//! Message framing on both sides: strict request parsing, upstream responses re-framed or
//! refused, limits on heads and bodies, and a deadline on the whole head.

use super::*;

/// Sends each vector in each mode; the request must be answered with a status in `codes`
/// (or a close without a response when `codes` allows 0) and never reach the upstream.
fn rejected(vectors: &[(&str, &[u8])], codes: &[u16], extra: &str) {
    let mut fails = Failures::default();
    for mode in PATHS {
        let edge = Edge::start(mode, echo, extra);
        for (what, bytes) in vectors {
            let mark = edge.up.mark();
            let ex = edge.exchange(bytes, 1);
            let up = edge.up.requests_since(mark);
            let status = ex.statuses().first().copied().unwrap_or(0);
            fails.check(mode, codes.contains(&status) && up.is_empty(), || {
                format!(
                    "{what}: {} (want {codes:?}; upstream got {:?})",
                    outcome(&ex),
                    up.iter().map(Received::show).collect::<Vec<_>>()
                )
            });
        }
    }
    fails.assert_none();
}

#[test]
fn ambiguous_request_framing_is_refused() {
    rejected(
        &[
            ("CL + TE", b"POST /v/s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("CL + TE on GET", b"GET /v/s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("duplicate CL", b"POST /v/s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            ("duplicate CL on GET", b"GET /v/s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"),
            ("obs-fold", b"POST /v/s HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello"),
            ("obs-fold on GET", b"GET /v/s HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
            ("space before colon", b"GET /v/s HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n"),
            ("space before colon in CL", b"POST /v/s HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello"),
        ],
        &[400],
        "",
    );
}

#[test]
fn transfer_codings_other_than_chunked_are_refused() {
    rejected(
        &[
            ("gzip", b"POST /v/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello"),
            ("gzip, chunked", b"POST /v/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            ("chunked, gzip", b"POST /v/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            ("identity", b"POST /v/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\nhello"),
        ],
        &[400, 411, 501],
        "",
    );
}

#[test]
fn lenient_request_content_length_is_refused() {
    rejected(
        &[
            (
                "+5",
                b"POST /v/l HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
            ),
            (
                "5 + NBSP",
                b"POST /v/l HTTP/1.1\r\nHost: x\r\nContent-Length: 5\xa0\r\n\r\nhello",
            ),
            (
                "0x5",
                b"POST /v/l HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello",
            ),
            (
                "+0 on GET",
                b"GET /v/l HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n",
            ),
        ],
        &[400],
        "",
    );
}

#[test]
fn head_and_body_limits_answer_431_and_413() {
    let mut big = String::from("GET /v/big HTTP/1.1\r\nHost: x\r\n");
    while big.len() < 5000 {
        big.push_str(&format!("X-Pad-{}: {}\r\n", big.len(), "a".repeat(80)));
    }
    big.push_str("\r\n");
    let big_post = big.replacen("GET", "POST", 1).replacen(
        "\r\n\r\n",
        "\r\nContent-Length: 5\r\n\r\nhello",
        1,
    );
    let limits = "[limits]\nmax_header_bytes = 4096\nmax_body_bytes = 1000\n";
    rejected(
        &[
            ("5000-byte GET head", big.as_bytes()),
            ("5000-byte POST head", big_post.as_bytes()),
        ],
        &[431],
        limits,
    );
    rejected(
        &[
            (
                "Content-Length: 2000",
                b"POST /v/big HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\nhello",
            ),
            (
                "Content-Length: 2000 on GET",
                b"GET /v/big HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\nhello",
            ),
        ],
        &[413],
        limits,
    );
}

#[test]
fn chunked_body_over_the_limit_is_refused() {
    // Declared nowhere, counted as it comes: 3 chunks of 500 bytes against a 1000-byte limit.
    let mut fails = Failures::default();
    for mode in PATHS {
        let edge = Edge::start(mode, echo, "[limits]\nmax_body_bytes = 1000\n");
        let mut bytes =
            b"POST /v/chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..3 {
            bytes.extend_from_slice(format!("1f4\r\n{}\r\n", "b".repeat(500)).as_bytes());
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        let mark = edge.up.mark();
        let ex = edge.exchange(&bytes, 1);
        let full_body = edge
            .up
            .requests_since(mark)
            .iter()
            .any(|r| r.body.len() > 1000);
        fails.check(
            mode,
            ex.statuses().first() == Some(&413) && !full_body,
            || {
                format!(
                    "1500-byte chunked body: {} (body relayed whole: {full_body})",
                    outcome(&ex)
                )
            },
        );
    }
    fails.assert_none();
}

#[test]
fn slow_request_head_gets_408_within_the_header_timeout() {
    let head = b"GET /v/slow HTTP/1.1\r\nHost: x\r\nX-Dribble: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut fails = Failures::default();
    for mode in PATHS {
        let edge = Edge::start(mode, echo, "[limits]\nheader_timeout = \"1s\"\n");
        let mark = edge.up.mark();
        let mut c = edge.client();
        let start = std::time::Instant::now();
        let mut answer = None;
        // One byte every 300 ms: the whole head would take ~25 s; the limit is 1 s.
        for &b in head.iter() {
            let _ = c.send(&[b]);
            let ex = c.read(1, Duration::from_millis(300));
            if !ex.responses.is_empty() || ex.end == End::Closed {
                answer = Some((start.elapsed(), ex));
                break;
            }
            if start.elapsed() > Duration::from_secs(4) {
                break;
            }
        }
        let up = edge.up.requests_since(mark);
        match answer {
            Some((t, ex)) => {
                let status = ex.statuses().first().copied();
                fails.check(
                    mode,
                    t < Duration::from_millis(2500) && matches!(status, None | Some(408)),
                    || {
                        format!(
                            "answered after {t:?} with {} (want 408 or a close within ~2 s)",
                            outcome(&ex)
                        )
                    },
                );
            }
            None => fails.check(mode, false, || {
                format!(
                    "still open after {:?} of a dribbled head (want 408 or a close within ~2 s)",
                    start.elapsed()
                )
            }),
        }
        fails.check(mode, up.is_empty(), || {
            "the incomplete head reached the upstream".into()
        });
    }
    fails.assert_none();
}

/// For each of `raws`, an edge whose upstream answers `/r` with it, in each mode: `check`
/// judges what the client got for a GET and for a POST. Every failure is reported at once.
fn upstream_answers(
    raws: &[&'static [u8]],
    check: impl Fn(&[u8], &Exchange) -> Result<(), String>,
) {
    let mut fails = Failures::default();
    for mode in PATHS {
        for &raw in raws {
            let edge = Edge::start(
                mode,
                move |req| match req.target.as_str() {
                    "/r" => vec![Action::Write(raw.to_vec())],
                    _ => echo(req),
                },
                "",
            );
            for (method, bytes) in [
                ("GET", get("/r")),
                (
                    "POST",
                    b"POST /r HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
                ),
            ] {
                let ex = edge.exchange(&bytes, 1);
                let r = check(raw, &ex);
                fails.check(mode, r.is_ok(), || {
                    format!("{method}: {} ({})", r.unwrap_err(), outcome(&ex))
                });
            }
        }
    }
    fails.assert_none();
}

/// [`upstream_answers`] for one answer.
fn upstream_answer(raw: &'static [u8], check: impl Fn(&Exchange) -> Result<(), String>) {
    upstream_answers(&[raw], |_, ex| check(ex));
}

#[test]
fn upstream_head_with_bare_lf_reaches_the_client_as_crlf() {
    upstream_answer(b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello", |ex| {
        let r = first(ex)?;
        if r.status != 200 || r.body != b"hello" {
            return Err(format!("want 200 `hello`, got {} {:?}", r.status, r.text()));
        }
        if has_bare_lf(&r.head) {
            return Err(format!("bare LF in the head: {}", show(&r.head)));
        }
        Ok(())
    });
}

#[test]
fn upstream_content_length_with_chunked_is_dropped() {
    upstream_answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        |ex| {
            let r = first(ex)?;
            if r.header("content-length").is_some() {
                return Err(format!("Content-Length kept: {}", show(&r.head)));
            }
            if r.status != 200 || r.body != b"hello" {
                return Err(format!("want 200 `hello`, got {} {:?}", r.status, r.text()));
            }
            Ok(())
        },
    );
}

#[test]
fn a_hundred_upstream_headers_pass() {
    upstream_answer(Box::leak(hundred_headers().into_boxed_slice()), |ex| {
        let r = first(ex)?;
        let n = (0..100)
            .filter(|i| r.header(&format!("x-h-{i}")) == Some(format!("v{i}").as_str()))
            .count();
        if r.status == 200 && n == 100 {
            Ok(())
        } else {
            Err(format!("status {}, {n} of 100 headers", r.status))
        }
    });
}

#[test]
fn lenient_upstream_content_length_is_a_502() {
    upstream_answers(
        &[
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\xa0\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello",
        ],
        |raw, ex| match ex.statuses().first() {
            Some(502) => Ok(()),
            _ => Err(format!("upstream sent {}: want 502", show(raw))),
        },
    );
}

#[test]
fn bare_lf_in_upstream_chunk_framing_is_never_relayed() {
    upstream_answers(
        &[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
        ],
        |raw, ex| match ex.responses.first() {
            // Refused outright, or cut short: nothing raw was relayed.
            None => Ok(()),
            Some(r) if r.status == 502 => Ok(()),
            Some(r) if has_bare_lf(&r.body_wire) || has_bare_lf(&ex.leftover) => Err(format!(
                "upstream sent {}: bare LF relayed: {}",
                show(raw),
                show(&[&r.body_wire[..], &ex.leftover[..]].concat())
            )),
            Some(r) if r.body != b"hello" => Err(format!("body {:?}", r.text())),
            Some(_) => Ok(()),
        },
    );
}
