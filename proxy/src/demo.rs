//! The embedded demo, and the small upstream server it (and the test suite) runs.
//!
//! `bascule demo` starts a blue and a green [`Upstream`] in-process, writes a small static site
//! per slot into a temp dir (with a hashed asset and its `.gz` sibling), and runs the proxy on
//! `127.0.0.1:8080` with an admin socket in the same temp dir.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A tiny HTTP/1.1 upstream: keep-alive, `/health`, and a body naming its slot and version.
///
/// - `GET /health` → 200 `ok`, or 503 while [`Upstream::set_healthy`] is false;
/// - any path with `?delay_ms=N` → waits N ms before answering;
/// - any other request → 200 `NAME VERSION\n`, with `x-upstream: NAME`.
pub struct Upstream {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Connections an [`Upstream`]'s listener holds before they are accepted. A proxy serving
/// HTTP/2 clients with hundreds of streams opens as many upstream connections at once: the
/// default of 128 overflowed, and each dropped SYN cost a 1 s retransmission, as long as the
/// tests' connect timeout.
const BACKLOG: i32 = 1024;

/// A listening socket on `addr` with [`BACKLOG`] (and `SO_REUSEADDR`, as std's `bind` sets).
fn listen(addr: &str) -> std::io::Result<std::net::TcpListener> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr}: no address")))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

impl Upstream {
    /// Starts an upstream on `addr` (port 0 picks one) on its own thread and runtime.
    pub fn start(addr: &str, name: &str, version: &str) -> std::io::Result<Upstream> {
        let std_listener = listen(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let healthy = Arc::new(AtomicBool::new(true));
        let served = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let body: Arc<[u8]> = format!("{name} {version}\n").into_bytes().into();
        let name: Arc<str> = name.into();
        let (h, s) = (healthy.clone(), served.clone());
        let thread = std::thread::Builder::new()
            .name(format!("upstream-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("upstream runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    let mut backoff = crate::fd::AcceptBackoff::new("demo upstream");
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => {
                                let stream = match accepted {
                                    Ok((stream, _)) => stream,
                                    Err(e) => {
                                        backoff.failed(&e).await;
                                        continue;
                                    }
                                };
                                let (h, s, body, name) = (h.clone(), s.clone(), body.clone(), name.clone());
                                tokio::spawn(async move {
                                    let _ = serve_conn(stream, &name, &body, &h, &s).await;
                                });
                            }
                            _ = &mut stopped => return,
                        }
                    }
                });
            })?;
        Ok(Upstream {
            addr,
            healthy,
            served,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `/health` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Requests answered so far (health checks excluded).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops accepting; connections already open end with the runtime.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_conn(
    mut stream: TcpStream,
    name: &str,
    body: &[u8],
    healthy: &AtomicBool,
    served: &AtomicU64,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut len = 0;
    loop {
        // Read one request head (and its Content-Length body, which is discarded).
        let (head_len, path, content_length, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf[..len]) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut cl = 0usize;
                    let mut close = req.version == Some(0);
                    for h in req.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            cl = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = h.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    break (n, req.path.unwrap_or("/").to_string(), cl, close);
                }
                Ok(httparse::Status::Partial) => {
                    if len == buf.len() {
                        return Ok(());
                    }
                    let n = stream.read(&mut buf[len..]).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    len += n;
                }
                Err(_) => {
                    stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await?;
                    return Ok(());
                }
            }
        };
        let mut consumed = head_len;
        let mut body_left = content_length;
        let have = (len - consumed).min(body_left);
        consumed += have;
        body_left -= have;
        while body_left > 0 {
            let n = stream.read(&mut buf[..]).await?;
            if n == 0 {
                return Ok(());
            }
            body_left -= n.min(body_left);
            len = 0;
            consumed = 0;
        }
        buf.copy_within(consumed..len, 0);
        len -= consumed;

        if let Some(ms) = path
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("delay_ms=")))
            .and_then(|v| v.parse::<u64>().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let conn = if close { "close" } else { "keep-alive" };
        let response = if path == "/health" || path.starts_with("/health?") {
            if healthy.load(Ordering::Relaxed) {
                format!("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: {conn}\r\n\r\nok\n")
                    .into_bytes()
            } else {
                format!("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 10\r\nconnection: {conn}\r\n\r\nunhealthy\n").into_bytes()
            }
        } else {
            served.fetch_add(1, Ordering::Relaxed);
            let mut r = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-upstream: {name}\r\ncontent-length: {}\r\nconnection: {conn}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(body);
            r
        };
        stream.write_all(&response).await?;
        if close {
            return Ok(());
        }
    }
}

/// Writes a small static site for `slot` under `dir`: `index.html` (which loads a hashed
/// script), the script, its `.gz` sibling, and a hashed stylesheet. Returns the script's path.
pub fn write_site(dir: &Path, slot: &str, version: &str) -> std::io::Result<String> {
    use std::hash::{Hash, Hasher};
    let script = format!("document.getElementById('slot').textContent = '{slot} {version}';\n");
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    script.hash(&mut hasher);
    let hash = format!("{:08x}", hasher.finish() as u32);
    let assets = dir.join("assets");
    std::fs::create_dir_all(&assets)?;
    let script_name = format!("app-{hash}.js");
    std::fs::write(assets.join(&script_name), &script)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(script.as_bytes())?;
    std::fs::write(assets.join(format!("{script_name}.gz")), gz.finish()?)?;
    let colour = if slot == "blue" { "#1e63d6" } else { "#1f9d55" };
    std::fs::write(
        assets.join(format!("style.{hash}.css")),
        format!("body {{ font-family: sans-serif; border-top: 8px solid {colour}; }}\n"),
    )?;
    std::fs::write(
        dir.join("index.html"),
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Bascule demo: {slot}</title>\n\
             <link rel=\"stylesheet\" href=\"/assets/style.{hash}.css\"></head>\n\
             <body><h1>Served by <span id=\"slot\">{slot} {version}</span></h1>\n\
             <script src=\"/assets/{script_name}\"></script></body></html>\n"
        ),
    )?;
    Ok(format!("/assets/{script_name}"))
}

/// The demo's config, for upstreams and sites already started.
pub fn demo_config(listen: SocketAddr, dir: &Path, blue: SocketAddr, green: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"[listen]
http = ["{listen}"]

[server]
threads = 1

[admin]
socket = "{d}/admin.sock"

[state]
path = "{d}/state.json"

[slots]
default = "blue"

[slots.blue]
upstreams = ["{blue}"]
version = "1.0.0"
static_root = "{d}/blue"

[slots.green]
upstreams = ["{green}"]
version = "1.1.0"
static_root = "{d}/green"

[health]
interval = "1s"
timeout = "500ms"

[drain]
timeout = "10s"

[[routes]]
prefix = "/api/"
to = "upstream"

[[routes]]
prefix = "/assets/"
to = "static"

[[routes]]
prefix = "/"
to = "static"
spa_fallback = "/index.html"
"#
    )
}

/// Runs `bascule demo` until Ctrl-C.
pub fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("bascule-demo-").tempdir()?;
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0")?;
    let green = Upstream::start("127.0.0.1:0", "green", "1.1.0")?;
    let asset = write_site(&dir.path().join("blue"), "blue", "1.0.0")?;
    write_site(&dir.path().join("green"), "green", "1.1.0")?;
    let config_path: PathBuf = dir.path().join("bascule.toml");
    std::fs::write(
        &config_path,
        demo_config(listen, dir.path(), blue.addr(), green.addr()),
    )?;
    let config = bascule_config::load(&config_path)?;
    let app = crate::app::App::build(config, Default::default())?;
    let sock = dir.path().join("admin.sock");
    let exe = std::env::args().next().unwrap_or_else(|| "bascule".into());
    println!(
        "Bascule demo\n\
         \x20 proxy        http://{listen}   (blue upstream {b}, green upstream {g})\n\
         \x20 admin socket {s}\n\
         \x20 config       {c}\n\n\
         Try, in another terminal:\n\
         \x20 curl -i http://{listen}/api/hello\n\
         \x20 curl -i http://{listen}{asset}\n\
         \x20 curl -i -H 'Accept-Encoding: gzip' http://{listen}{asset} --output -\n\
         \x20 {exe} ctl -s {s} status\n\
         \x20 {exe} ctl -s {s} flip green\n\
         \x20 curl -i http://{listen}/api/hello\n\
         \x20 curl -i http://{listen}{asset}        # still served after the flip, from blue's root\n\
         \x20 {exe} ctl -s {s} rollback\n\
         \x20 {exe} ctl -s {s} health\n\n\
         Ctrl-C stops the demo.",
        b = blue.addr(),
        g = green.addr(),
        s = sock.display(),
        c = config_path.display(),
    );
    app.run();
    drop((blue, green));
    Ok(())
}
