use std::io::Read;

use super::*;

fn policy(algorithms: &[Algorithm]) -> Compression {
    let c = CompressionConfig {
        algorithms: algorithms.to_vec(),
        min_bytes: 100,
        types: bascule_config::DEFAULT_COMPRESSION_TYPES
            .map(String::from)
            .to_vec(),
    };
    Compression::new(&c).expect("on")
}

const ALL: [Algorithm; 3] = [Algorithm::Brotli, Algorithm::Gzip, Algorithm::Zstd];

#[test]
fn negotiation_takes_the_edge_preference_among_accepted() {
    let c = policy(&ALL);
    let n = |h: &str| c.negotiate(false, false, Some(h.as_bytes()));
    assert_eq!(n("gzip, br"), Negotiated::Use(Algorithm::Brotli));
    assert_eq!(n("gzip;q=1, br;q=0.1"), Negotiated::Use(Algorithm::Brotli));
    assert_eq!(n("gzip, br;q=0"), Negotiated::Use(Algorithm::Gzip));
    assert_eq!(n("GZIP ; Q=0.5"), Negotiated::Use(Algorithm::Gzip));
    assert_eq!(n("br;q=0.000, gzip;q=0"), Negotiated::Identity);
    assert_eq!(n("*"), Negotiated::Use(Algorithm::Brotli));
    assert_eq!(n("*;q=0.5, br;q=0"), Negotiated::Use(Algorithm::Gzip));
    assert_eq!(n("*;q=0"), Negotiated::Identity);
    assert_eq!(n("identity"), Negotiated::Identity);
    assert_eq!(n("deflate, compress"), Negotiated::Identity);
    assert_eq!(
        n("br;q=2, gzip;q=x"),
        Negotiated::Identity,
        "bad q-values are ignored"
    );
    assert_eq!(c.negotiate(false, false, None), Negotiated::Identity);
    assert_eq!(c.negotiate(true, false, Some(b"gzip")), Negotiated::Off);
    assert_eq!(c.negotiate(false, true, Some(b"gzip")), Negotiated::Off);
    let zstd_first = policy(&[Algorithm::Zstd, Algorithm::Gzip]);
    let got = zstd_first.negotiate(false, false, Some(b"gzip, br, zstd"));
    assert_eq!(got, Negotiated::Use(Algorithm::Zstd));
    let got = zstd_first.negotiate(false, false, Some(b"br"));
    assert_eq!(got, Negotiated::Identity);
}

#[test]
fn only_eligible_responses_are_compressed() {
    let c = policy(&ALL);
    let gz = Negotiated::Use(Algorithm::Gzip);
    let json = Facts {
        status: 200,
        content_type: Some(b"Application/JSON; charset=utf-8"),
        length: Some(100),
        ..Facts::default()
    };
    assert_eq!(c.plan(gz, &json), Plan::Encode(Algorithm::Gzip));
    assert_eq!(c.plan(Negotiated::Identity, &json), Plan::Vary);
    assert_eq!(c.plan(Negotiated::Off, &json), Plan::Leave);
    let chunked = Facts {
        length: None,
        ..json
    };
    assert_eq!(c.plan(gz, &chunked), Plan::Encode(Algorithm::Gzip));
    let leave = [
        Facts {
            length: Some(99),
            ..json
        },
        Facts {
            length: Some(0),
            ..json
        },
        Facts {
            content_type: Some(b"image/png"),
            ..json
        },
        Facts {
            content_type: None,
            ..json
        },
        Facts {
            encoded: true,
            ..json
        },
        Facts {
            no_transform: true,
            ..json
        },
    ];
    for f in leave.iter().chain(
        [101, 204, 206, 304]
            .map(|status| Facts { status, ..json })
            .iter(),
    ) {
        assert_eq!(c.plan(gz, f), Plan::Leave, "{f:?}");
    }
}

#[test]
fn both_head_forms_change_alike() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\netag: \"v1\"\r\nvary: Origin\r\naccept-ranges: bytes\r\ncontent-length: 500\r\n";
    let facts = Facts::of_h1(200, head.as_bytes());
    assert_eq!(facts.length, Some(500));
    assert_eq!(facts.content_type, Some(&b"text/html"[..]));
    let mut out = Vec::new();
    apply_h1(Plan::Encode(Algorithm::Brotli), head.as_bytes(), &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nvary: Origin, Accept-Encoding\r\n\
         etag: W/\"v1\"\r\ncontent-encoding: br\r\ntransfer-encoding: chunked\r\n"
    );

    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.append_header("content-type", "text/html").unwrap();
    resp.append_header("etag", "\"v1\"").unwrap();
    resp.append_header("vary", "Origin").unwrap();
    resp.append_header("accept-ranges", "bytes").unwrap();
    resp.append_header("content-length", "500").unwrap();
    let f = Facts::of_pingora(&resp);
    assert_eq!(
        (f.length, f.content_type),
        (facts.length, facts.content_type)
    );
    apply_pingora(Plan::Encode(Algorithm::Brotli), &mut resp, true);
    let get = |n: &str| {
        resp.headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("vary"), ["Origin, Accept-Encoding"]);
    assert_eq!(get("etag"), ["W/\"v1\""]);
    assert_eq!(get("content-encoding"), ["br"]);
    assert_eq!(get("transfer-encoding"), ["chunked"]);
    assert!(get("content-length").is_empty() && get("accept-ranges").is_empty());

    // Already varying by Accept-Encoding: one Vary, untouched; weak and bad tags.
    let head = "HTTP/1.1 200 OK\r\nVary: accept-encoding\r\nETag: W/\"w\"\r\ncontent-length: 5\r\n";
    let mut out = Vec::new();
    apply_h1(Plan::Vary, head.as_bytes(), &mut out);
    assert_eq!(out, head.as_bytes());
    assert_eq!(weak_etag(b"W/\"w\"").unwrap(), b"W/\"w\"");
    assert_eq!(weak_etag(b"bare"), None);
    assert_eq!(merged_vary([&b"*"[..]].into_iter()), None);
    assert_eq!(merged_vary(std::iter::empty()).unwrap(), b"Accept-Encoding");
}

fn decode(a: Algorithm, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match a {
        Algorithm::Gzip => flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .map(drop),
        Algorithm::Brotli => brotli::Decompressor::new(data, 4096)
            .read_to_end(&mut out)
            .map(drop),
        Algorithm::Zstd => zstd::stream::read::Decoder::new(data)
            .and_then(|mut d| d.read_to_end(&mut out))
            .map(drop),
    }
    .expect("decodes");
    out
}

/// Decodes a prefix of a stream (what a client holds before the rest arrives).
fn decode_prefix(a: Algorithm, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut read = |r: &mut dyn Read| {
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    };
    match a {
        Algorithm::Gzip => read(&mut flate2::read::GzDecoder::new(data)),
        Algorithm::Brotli => read(&mut brotli::Decompressor::new(data, 4096)),
        Algorithm::Zstd => read(&mut zstd::stream::read::Decoder::new(data).unwrap()),
    }
    out
}

#[test]
fn encoders_stream_and_round_trip() {
    let text: Vec<u8> = (0..50_000)
        .flat_map(|i| format!("{{\"n\":{i},\"v\":\"value\"}},").into_bytes())
        .collect();
    for a in ALL {
        let mut e = Encoder::new(a).unwrap();
        let mut out = Vec::new();
        e.chunk(b"first part, ", &mut out).unwrap();
        assert_eq!(
            decode_prefix(a, &out),
            b"first part, ",
            "{a:?}: a flushed chunk decodes before the stream ends"
        );
        let (init, tail) = text.split_last_chunk::<100>().unwrap();
        for piece in init.chunks(16 * 1024) {
            e.chunk(piece, &mut out).unwrap();
        }
        e.finish(tail, &mut out).unwrap();
        assert!(out.len() < text.len() / 4, "{a:?}: {} bytes", out.len());
        let mut want = b"first part, ".to_vec();
        want.extend_from_slice(&text);
        assert!(decode(a, &out) == want, "{a:?}: round trip");
    }
}
