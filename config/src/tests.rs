//! One test per validation rule, each with inline TOML.

use super::*;

fn invalid(text: &str) -> (usize, usize, String) {
    match parse(text, "t.toml") {
        Err(ConfigError::Invalid {
            file,
            line,
            col,
            message,
        }) => {
            assert_eq!(file, "t.toml");
            (line, col, message)
        }
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

const FULL: &str = r#"
[listen]
http = ["127.0.0.1:8080", "[::1]:8081"]

[server]
threads = 2
slot_header = "X-Served-By"
keepalive_timeout = "75s"
park_idle_after = "250ms"

[admin]
socket = "/tmp/b.sock"
mode = 0o660

[metrics]
listen = "127.0.0.1:9090"

[state]
path = "/tmp/state.json"

[slots]
default = "green"

[slots.blue]
upstreams = ["127.0.0.1:3008", "localhost:3010"]
version = "1.0.0"
static_root = "/srv/blue"

[slots.green]
upstreams = ["127.0.0.1:3009"]
static_root = "/srv/green"

[health]
path = "/healthz"
interval = "500ms"
timeout = "200ms"
healthy_threshold = 1
unhealthy_threshold = 2

[drain]
timeout = "1m"

[[routes]]
prefix = "/api/"
to = "upstream"

[[routes]]
prefix = "/"
to = "static"
spa_fallback = "/index.html"

[[routes]]
prefix = "/assets/"
to = "static"
"#;

#[test]
fn full_example_parses() {
    let c = parse(FULL, "t.toml").unwrap();
    assert_eq!(c.listen.len(), 2);
    assert_eq!(c.server.threads, 2);
    assert_eq!(c.server.slot_header.as_deref(), Some("x-served-by"));
    assert_eq!(c.server.keepalive_timeout, Duration::from_secs(75));
    assert_eq!(c.server.park_idle_after, Duration::from_millis(250));
    assert_eq!(c.admin.mode, 0o660);
    assert_eq!(c.metrics, Some("127.0.0.1:9090".parse().unwrap()));
    assert_eq!(c.default_slot, SlotName::Green);
    assert_eq!(c.blue.upstreams, ["127.0.0.1:3008", "localhost:3010"]);
    assert_eq!(c.blue.version.as_deref(), Some("1.0.0"));
    assert_eq!(c.health.interval, Duration::from_millis(500));
    assert_eq!(c.health.timeout, Duration::from_millis(200));
    assert_eq!(c.drain.timeout, Duration::from_secs(60));
    let prefixes: Vec<_> = c.routes.iter().map(|r| r.prefix.as_str()).collect();
    assert_eq!(prefixes, ["/assets/", "/api/", "/"], "longest prefix first");
    assert_eq!(c.routes[2].spa_fallback.as_deref(), Some("/index.html"));
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("", "t.toml").unwrap();
    assert_eq!(c.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
    assert_eq!(c.admin.socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
    assert_eq!(c.admin.mode, 0o600);
    assert_eq!(c.default_slot, SlotName::Blue);
    assert_eq!(c.health.path, "/health");
    assert_eq!(c.drain.timeout, DEFAULT_DRAIN_TIMEOUT);
    assert_eq!(c.server.slot_header.as_deref(), Some("x-bascule-slot"));
    assert_eq!(c.server.keepalive_timeout, DEFAULT_KEEPALIVE_TIMEOUT);
    assert_eq!(c.server.park_idle_after, DEFAULT_PARK_IDLE_AFTER);
    assert!(c.routes.is_empty());
}

#[test]
fn unknown_top_level_key_is_an_error() {
    let (line, col, msg) = invalid("[listen]\nhttp = [\"127.0.0.1:1\"]\n\n[bogus]\nx = 1\n");
    assert_eq!((line, col), (4, 2));
    assert!(msg.contains("bogus"), "{msg}");
}

#[test]
fn unknown_nested_key_names_table_and_key() {
    let (line, _, msg) = invalid("[health]\npath = \"/h\"\nintervall = \"2s\"\n");
    assert_eq!(line, 3);
    assert!(msg.starts_with("health.intervall:"), "{msg}");
    assert!(msg.contains("unknown field"), "{msg}");
}

#[test]
fn bad_duration_is_located() {
    let (line, col, msg) = invalid("[drain]\ntimeout = \"30 parsecs\"\n");
    assert_eq!((line, col), (2, 11));
    assert!(msg.starts_with("drain.timeout:"), "{msg}");
}

#[test]
fn bad_listen_address() {
    let (line, _, msg) = invalid("[listen]\nhttp = [\"localhost\"]\n");
    assert_eq!(line, 2);
    assert!(msg.starts_with("listen.http:"), "{msg}");
}

#[test]
fn empty_listen_list() {
    let (_, _, msg) = invalid("[listen]\nhttp = []\n");
    assert!(msg.contains("at least one address"), "{msg}");
}

#[test]
fn zero_threads() {
    let (line, col, msg) = invalid("[server]\nthreads = 0\n");
    assert_eq!((line, col), (2, 11));
    assert!(msg.starts_with("server.threads:"), "{msg}");
}

#[test]
fn slot_header_can_be_turned_off_or_must_be_a_token() {
    let c = parse("[server]\nslot_header = \"\"\n", "t.toml").unwrap();
    assert_eq!(c.server.slot_header, None);
    let (_, _, msg) = invalid("[server]\nslot_header = \"x y\"\n");
    assert!(msg.starts_with("server.slot_header:"), "{msg}");
}

#[test]
fn request_id_is_on_by_default_and_its_header_is_checked() {
    let c = parse("", "t.toml").unwrap();
    assert_eq!(c.request_id.as_deref(), Some("x-request-id"));
    let c = parse("[request_id]\nheader = \"X-Trace-Id\"\n", "t.toml").unwrap();
    assert_eq!(c.request_id.as_deref(), Some("x-trace-id"));
    let c = parse("[request_id]\nenabled = false\n", "t.toml").unwrap();
    assert_eq!(c.request_id, None);
    for bad in [
        "x y",
        "Host",
        "X-Forwarded-For",
        "content-length",
        "x-bascule-slot",
    ] {
        let (line, col, msg) = invalid(&format!("[request_id]\nheader = \"{bad}\"\n"));
        assert_eq!((line, col), (2, 10), "{bad}");
        assert!(msg.starts_with("request_id.header:"), "{bad}: {msg}");
    }
    let (_, _, msg) = invalid("[request_id]\nheadr = \"x\"\n");
    assert!(msg.contains("headr"), "{msg}");
}

#[test]
fn outlier_is_off_without_its_table_and_bounded() {
    assert_eq!(parse("", "t.toml").unwrap().outlier, None);
    let c = parse("[outlier]\n", "t.toml").unwrap().outlier.unwrap();
    assert_eq!(
        (c.consecutive_failures, c.eject_time, c.max_ejected_percent),
        (5, Duration::from_secs(30), 50)
    );
    for (bad, key) in [
        ("consecutive_failures = 0", "outlier.consecutive_failures:"),
        ("max_ejected_percent = 101", "outlier.max_ejected_percent:"),
        ("eject_time = \"0s\"", "outlier.eject_time:"),
        ("eject_time = \"25h\"", "outlier.eject_time:"),
    ] {
        let (line, _, msg) = invalid(&format!("[outlier]\n{bad}\n"));
        assert_eq!(line, 2, "{bad}");
        assert!(msg.starts_with(key), "{bad}: {msg}");
    }
}

#[test]
fn admin_mode_too_large() {
    let (_, _, msg) = invalid("[admin]\nmode = 4096\n");
    assert!(msg.starts_with("admin.mode:"), "{msg}");
}

#[test]
fn unknown_default_slot() {
    let (line, _, msg) = invalid("[slots]\ndefault = \"purple\"\n");
    assert_eq!(line, 2);
    assert!(msg.contains("unknown slot `purple`"), "{msg}");
    assert!(msg.starts_with("slots.default:"), "{msg}");
}

#[test]
fn bad_upstream_address() {
    let (line, col, msg) = invalid("[slots.blue]\nupstreams = [\"127.0.0.1:3000\", \"nohost\"]\n");
    assert_eq!((line, col), (2, 32));
    assert!(msg.starts_with("slots.blue.upstreams:"), "{msg}");
    let (_, _, msg) = invalid("[slots.green]\nupstreams = [\"h:99999\"]\n");
    assert!(msg.contains("port"), "{msg}");
}

#[test]
fn unknown_slot_table() {
    let (_, _, msg) = invalid("[slots.purple]\nupstreams = []\n");
    assert!(msg.contains("purple"), "{msg}");
}

#[test]
fn health_path_must_be_absolute() {
    let (_, _, msg) = invalid("[health]\npath = \"health\"\n");
    assert!(msg.starts_with("health.path:"), "{msg}");
}

#[test]
fn health_timeout_not_above_interval() {
    let (line, _, msg) = invalid("[health]\ninterval = \"1s\"\ntimeout = \"2s\"\n");
    assert_eq!(line, 3);
    assert!(msg.starts_with("health.timeout:"), "{msg}");
}

#[test]
fn health_thresholds_at_least_one() {
    let (_, _, msg) = invalid("[health]\nhealthy_threshold = 0\n");
    assert!(msg.starts_with("health.healthy_threshold:"), "{msg}");
    let (_, _, msg) = invalid("[health]\nunhealthy_threshold = 0\n");
    assert!(msg.starts_with("health.unhealthy_threshold:"), "{msg}");
}

#[test]
fn hash_min_len_floor() {
    let (_, _, msg) = invalid("[static]\nhash_min_len = 3\n");
    assert!(msg.starts_with("static.hash_min_len:"), "{msg}");
}

#[test]
fn route_prefix_must_be_absolute() {
    let (line, _, msg) = invalid("[[routes]]\nprefix = \"api\"\nto = \"upstream\"\n");
    assert_eq!(line, 2);
    assert!(msg.starts_with("routes[0].prefix:"), "{msg}");
}

#[test]
fn duplicate_route_prefix() {
    let text = "[[routes]]\nprefix = \"/a\"\nto = \"upstream\"\n[[routes]]\nprefix = \"/a\"\nto = \"upstream\"\n";
    let (line, _, msg) = invalid(text);
    assert_eq!(line, 5);
    assert!(msg.contains("already routed"), "{msg}");
}

#[test]
fn unknown_route_target() {
    let (line, _, msg) = invalid("[[routes]]\nprefix = \"/\"\nto = \"cdn\"\n");
    assert_eq!(line, 3);
    assert!(msg.starts_with("routes[0].to:"), "{msg}");
}

#[test]
fn static_route_needs_a_root() {
    let (_, _, msg) = invalid("[[routes]]\nprefix = \"/\"\nto = \"static\"\n");
    assert!(msg.contains("static_root"), "{msg}");
}

#[test]
fn spa_fallback_only_on_static_and_absolute() {
    let (_, _, msg) =
        invalid("[[routes]]\nprefix = \"/\"\nto = \"upstream\"\nspa_fallback = \"/i.html\"\n");
    assert!(msg.contains("only a `static` route"), "{msg}");
    let text = "[slots.blue]\nstatic_root = \"/s\"\n[[routes]]\nprefix = \"/\"\nto = \"static\"\nspa_fallback = \"i.html\"\n";
    let (line, _, msg) = invalid(text);
    assert_eq!(line, 6);
    assert!(msg.starts_with("routes[0].spa_fallback:"), "{msg}");
}

#[test]
fn wrong_type_is_located() {
    let (line, _, msg) = invalid("[server]\nthreads = \"two\"\n");
    assert_eq!(line, 2);
    assert!(msg.starts_with("server.threads:"), "{msg}");
}

#[test]
fn syntax_error_is_located() {
    let (line, _, _) = invalid("[listen]\nhttp = [\"127.0.0.1:1\"\n\n[server]\n");
    assert!(line >= 2);
}

#[test]
fn display_is_file_line_col_message() {
    let e = parse("[server]\nthreads = 0\n", "conf/b.toml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "conf/b.toml:2:11: server.threads: must be at least 1"
    );
}

#[test]
fn missing_file_is_an_io_error() {
    let e = load(Path::new("/nonexistent/bascule.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e
        .to_string()
        .starts_with("/nonexistent/bascule.toml: cannot read config"));
}

#[test]
fn check_upstream_forms() {
    assert!(check_upstream("127.0.0.1:80").is_ok());
    assert!(check_upstream("[::1]:80").is_ok());
    assert!(check_upstream("app:3000").is_ok());
    assert!(check_upstream("app").is_err());
    assert!(check_upstream(":80").is_err());
    assert!(check_upstream("app:0").is_err());
}

#[test]
fn zero_durations_are_refused_where_they_stand() {
    for (table, key) in [
        ("health", "interval"),
        ("health", "timeout"),
        ("drain", "timeout"),
        ("upstream", "connect_timeout"),
        ("upstream", "read_timeout"),
        ("upstream", "idle_timeout"),
        ("server", "keepalive_timeout"),
        ("server", "park_idle_after"),
        ("server", "shutdown_grace"),
    ] {
        let (line, col, msg) = invalid(&format!("[{table}]\n{key} = \"0s\"\n"));
        assert_eq!((line, col), (2, key.len() + 4), "{table}.{key}");
        assert!(
            msg.starts_with(&format!("{table}.{key}: must be above 0")),
            "{msg}"
        );
    }
    assert!(parse(
        "[health]\ninterval = \"1ms\"\ntimeout = \"1ms\"\n",
        "t.toml"
    )
    .is_ok());
}

#[test]
fn parking_must_come_before_the_keepalive_timeout() {
    let (line, _, msg) =
        invalid("[server]\nkeepalive_timeout = \"5s\"\npark_idle_after = \"5s\"\n");
    assert_eq!(line, 3);
    assert!(
        msg.starts_with("server.park_idle_after: must be below server.keepalive_timeout (5s)"),
        "{msg}"
    );
    // Against the default keep-alive timeout (60 s) too.
    let (_, _, msg) = invalid("[server]\npark_idle_after = \"2m\"\n");
    assert!(msg.contains("(1m)"), "{msg}");
    let ok = parse(
        "[server]\nkeepalive_timeout = \"5s\"\npark_idle_after = \"4s\"\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(ok.server.park_idle_after, Duration::from_secs(4));
}

#[test]
fn route_cache_control_must_be_a_header_of_directives() {
    let route = |value: &str| {
        format!(
            "[slots.blue]\nstatic_root = \"/srv\"\n[[routes]]\nprefix = \"/\"\nto = \"static\"\ncache_control = {value}\n"
        )
    };
    for bad in [
        "\"\"",
        "\"max-age=60\\nx\"",
        "\"max age=60\"",
        "\"public,,max-age=1\"",
        "\"é\"",
    ] {
        let (line, col, msg) = invalid(&route(bad));
        assert_eq!((line, col), (6, 17), "{bad}");
        assert!(msg.starts_with("routes[0].cache_control:"), "{bad}: {msg}");
    }
    let ok = parse(
        &route("\"public, max-age=60, stale-if-error=\\\"x\\\"\""),
        "t.toml",
    );
    let ok = ok.unwrap();
    assert_eq!(
        ok.routes[0].cache_control.as_deref(),
        Some("public, max-age=60, stale-if-error=\"x\"")
    );
    let (_, _, msg) = invalid(
        "[[routes]]\nprefix = \"/api/\"\nto = \"upstream\"\ncache_control = \"no-store\"\n",
    );
    assert!(msg.contains("only a `static` route"), "{msg}");
}

#[test]
fn access_log_table() {
    assert_eq!(parse("", "t.toml").unwrap().access_log, None);
    let c = parse("[access_log]\npath = \"-\"\n", "t.toml").unwrap();
    assert_eq!(
        c.access_log,
        Some(AccessLogConfig {
            path: AccessLogPath::Stdout,
            format: AccessLogFormat::Combined,
            buffer: DEFAULT_ACCESS_LOG_BUFFER,
        })
    );
    let c = parse(
        "[access_log]\npath = \"/var/log/a.log\"\nformat = \"json\"\nbuffer = 4\n",
        "t.toml",
    )
    .unwrap();
    let log = c.access_log.unwrap();
    assert_eq!(log.path, AccessLogPath::File("/var/log/a.log".into()));
    assert_eq!((log.format, log.buffer), (AccessLogFormat::Json, 4));
    let (line, col, msg) = invalid("[access_log]\npath = \"-\"\nformat = \"common\"\n");
    assert_eq!((line, col), (3, 10));
    assert!(msg.starts_with("access_log.format: `common`"), "{msg}");
    let (line, _, msg) = invalid("[access_log]\npath = \"\"\n");
    assert_eq!(line, 2);
    assert!(msg.starts_with("access_log.path:"), "{msg}");
    let (line, _, msg) = invalid("[access_log]\npath = \"-\"\nbuffer = 0\n");
    assert_eq!(line, 3);
    assert!(msg.starts_with("access_log.buffer:"), "{msg}");
}

#[test]
fn headers_tables() {
    let c = parse(
        "[headers]\nresponse = { \"X-A\" = \"1\" }\nhide = [\"Server\"]\n\
         [[routes]]\nprefix = \"/\"\nto = \"upstream\"\nheaders = { \"X-R\" = \"r v\" }\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        &*c.headers.response,
        &[("X-A".to_string(), "1".to_string())]
    );
    assert_eq!(c.headers.hide, ["Server"]);
    assert_eq!(
        &*c.routes[0].headers,
        &[("X-R".to_string(), "r v".to_string())]
    );
    let (line, _, msg) = invalid("[headers]\nhide = [\"Bad Name\"]\n");
    assert_eq!(line, 2);
    assert!(
        msg.starts_with("headers.hide: `Bad Name` is not a header name"),
        "{msg}"
    );
    let (_, _, msg) = invalid("[headers]\nresponse = { \"Content-Length\" = \"1\" }\n");
    assert!(msg.contains("written by the proxy itself"), "{msg}");
    let (line, _, msg) = invalid(
        "[[routes]]\nprefix = \"/\"\nto = \"upstream\"\nheaders = { \"X-R\" = \"a\\nb\" }\n",
    );
    assert_eq!(line, 4);
    assert!(
        msg.starts_with("routes[0].headers: the value of `X-R` is not a header value"),
        "{msg}"
    );
    let (_, _, msg) = invalid("[headers]\nresponse = { \"X-A\" = \"1\", \"x-a\" = \"2\" }\n");
    assert!(msg.contains("set twice"), "{msg}");
}

#[test]
fn rate_limits_entries() {
    let c = parse(
        "[[rate_limits]]\nprefix = \"/\"\nper_ip = 5\n\
         [[rate_limits]]\nprefix = \"/api/\"\nper_ip = 50\nburst = 100\n",
        "t.toml",
    )
    .unwrap();
    let got: Vec<_> = c
        .rate_limits
        .iter()
        .map(|r| (r.prefix.as_str(), r.per_ip, r.burst))
        .collect();
    assert_eq!(
        got,
        [("/api/", 50, 100), ("/", 5, 5)],
        "longest prefix first"
    );
    let (line, _, msg) = invalid("[[rate_limits]]\nprefix = \"api\"\nper_ip = 1\n");
    assert_eq!(line, 2);
    assert!(
        msg.starts_with("rate_limits[0].prefix: must start with `/`"),
        "{msg}"
    );
    let (line, _, msg) = invalid("[[rate_limits]]\nprefix = \"/\"\nper_ip = 0\n");
    assert_eq!(line, 3);
    assert!(
        msg.starts_with("rate_limits[0].per_ip: at least 1"),
        "{msg}"
    );
    let (_, _, msg) = invalid(
        "[[rate_limits]]\nprefix = \"/\"\nper_ip = 1\n[[rate_limits]]\nprefix = \"/\"\nper_ip = 2\n",
    );
    assert!(msg.contains("has a limit already"), "{msg}");
}

#[test]
fn compression_is_off_without_a_table_and_br_gzip_with_one() {
    let off = parse("", "t.toml").unwrap().compression;
    assert!(!off.is_on());
    let c = parse("[compression]\n", "t.toml").unwrap().compression;
    assert_eq!(c.algorithms, [Algorithm::Brotli, Algorithm::Gzip]);
    assert_eq!(c.min_bytes, DEFAULT_COMPRESSION_MIN_BYTES);
    assert_eq!(c.types, DEFAULT_COMPRESSION_TYPES);
    let c = parse(
        "[compression]\nalgorithms = [\"zstd\", \"gzip\"]\nmin_bytes = 10\ntypes = [\"Text/\"]\n",
        "t.toml",
    )
    .unwrap()
    .compression;
    assert_eq!(c.algorithms, [Algorithm::Zstd, Algorithm::Gzip]);
    assert_eq!((c.min_bytes, c.types), (10, vec!["text/".to_string()]));
    let off = parse("[compression]\nalgorithms = []\n", "t.toml").unwrap();
    assert!(!off.compression.is_on());
}

#[test]
fn compression_names_the_bad_key() {
    let (line, col, msg) = invalid("[compression]\nalgorithms = [\"gzip\", \"deflate\"]\n");
    assert_eq!((line, col), (2, 23));
    assert!(
        msg.starts_with("compression.algorithms: `deflate` is not one of"),
        "{msg}"
    );
    let (line, _, msg) = invalid("[compression]\nalgorithms = [\"br\", \"br\"]\n");
    assert_eq!(line, 2);
    assert!(msg.contains("listed twice"), "{msg}");
    let (line, _, msg) = invalid("[compression]\nmin_bytes = 1\ntypes = [\"text/ html\"]\n");
    assert_eq!(line, 3);
    assert!(msg.starts_with("compression.types: `text/ html`"), "{msg}");
    let (line, _, msg) = invalid("[compression]\nlevel = 3\n");
    assert_eq!(line, 2);
    assert!(msg.contains("level"), "{msg}");
}

/// The line and message of the `Invalid` error `text` gets.
pub(crate) fn located(text: &str) -> (usize, String) {
    match parse(text, "t.toml") {
        Err(ConfigError::Invalid { line, message, .. }) => (line, message),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}
