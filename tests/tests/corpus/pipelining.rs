//! Pipelining on every path: requests sent back to back on one connection are all answered,
//! in order.

use super::*;

fn pipelined(bytes: &[u8], want: &[&str]) {
    let mut fails = Failures::default();
    for mode in PATHS {
        let edge = Edge::start(mode, echo, "");
        let ex = edge.exchange(bytes, want.len());
        let bodies: Vec<String> = ex.responses.iter().map(RawResponse::text).collect();
        fails.check(
            mode,
            ex.statuses().iter().all(|s| *s == 200) && bodies == want,
            || format!("want {want:?}, got {}", outcome(&ex)),
        );
    }
    fails.assert_none();
}

#[test]
fn post_then_get_in_one_write() {
    pipelined(
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /api/ok HTTP/1.1\r\nHost: x\r\n\r\n",
        &["POST /p", "GET /api/ok"],
    );
}

#[test]
fn three_gets_in_one_write() {
    pipelined(
        &[get("/one"), get("/two"), get("/three")].concat(),
        &["GET /one", "GET /two", "GET /three"],
    );
}

#[test]
fn chunked_post_then_get_in_one_write() {
    pipelined(
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n",
        &["POST /c", "GET /after"],
    );
}
