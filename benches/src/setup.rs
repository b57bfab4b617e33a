//! The lab: an upstream, nginx and Bascule, each on its core, in a temp dir.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bascule_tests::tls::TestCert;

use crate::procs::{spawn_pinned, Guard};

/// Core of the systems under test.
pub(crate) const PROXY_CORE: u32 = 0;
/// Core of the load generator and the upstream.
pub(crate) const LOAD_CORE: u32 = 1;
/// The 1 KB hashed asset.
pub(crate) const ASSET_1K: &str = "/assets/app-3f9a1c2b.js";
/// The 100 KB hashed asset.
pub(crate) const ASSET_100K: &str = "/assets/vendor-7e6d5c4b.js";
/// The ~10 KiB JSON document the upstream serves, compressed by the front (`proxy-gzip`).
pub(crate) const JSON_10K: &str = "/gz/data.json";
/// The same document through nginx's front without compression.
pub(crate) const JSON_10K_PLAIN: &str = "/gzoff/data.json";
/// gzip level of both fronts in `proxy-gzip`: Bascule's (wire/compress.rs).
const GZIP_LEVEL: u32 = 5;
/// Idle upstream connections each system keeps: nginx's `keepalive` and Bascule's
/// `[upstream] keepalive_pool` (its default). With 500 streams in flight (`h2-proxy`) a smaller
/// pool on one side would measure connection churn, not proxying.
const UPSTREAM_POOL: usize = 256;

/// External tools.
pub(crate) struct Tools {
    /// nginx.
    pub(crate) nginx: PathBuf,
    /// wrk.
    pub(crate) wrk: PathBuf,
}

fn which(name: &str, also: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain(also.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

impl Tools {
    /// nginx, wrk and taskset, if all are here.
    pub(crate) fn find() -> Option<Tools> {
        which("taskset", &[])?;
        Some(Tools {
            nginx: which("nginx", &["/usr/sbin/nginx"])?,
            wrk: which("wrk", &[])?,
        })
    }
}

/// The bascule binary: release, or (smoke runs) debug; built when missing.
pub(crate) fn bascule_binary(smoke: bool) -> anyhow::Result<PathBuf> {
    // Another build to measure, e.g. a copy of the previous release kept for an A/B run.
    if let Some(bin) = std::env::var_os("BASCULE_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let release = target.join("release/bascule");
    let debug = target.join("debug/bascule");
    if release.is_file() {
        return Ok(release);
    }
    if smoke && debug.is_file() {
        return Ok(debug);
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-q", "-p", "bascule-proxy", "--bin", "bascule"]);
    if profile == "release" {
        cmd.arg("--release");
    }
    anyhow::ensure!(cmd.status()?.success(), "cargo build of bascule failed");
    Ok(target.join(profile).join("bascule"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{addr} never accepted");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Everything running for the benchmarks.
pub(crate) struct Lab {
    /// The temp dir.
    pub(crate) dir: tempfile::TempDir,
    /// nginx front: proxy and static on one port.
    pub(crate) nginx_addr: SocketAddr,
    /// Bascule.
    pub(crate) bascule_addr: SocketAddr,
    /// Bascule's admin socket.
    pub(crate) admin: PathBuf,
    /// Bascule's process id.
    pub(crate) bascule_pid: u32,
    /// A second Bascule configured as edges are (forwarded headers, access log in the combined
    /// format to a file), against nginx's `/edge/` location, configured the same way.
    pub(crate) bascule_fwd_addr: SocketAddr,
    /// Its process id.
    pub(crate) bascule_fwd_pid: u32,
    /// A third Bascule with `[compression] algorithms = ["gzip"]`, against nginx's `/gz/`
    /// location (`gzip on` at the same level).
    pub(crate) bascule_gzip_addr: SocketAddr,
    /// Its process id.
    pub(crate) bascule_gzip_pid: u32,
    /// nginx front's pid file.
    pub(crate) nginx_pid_file: PathBuf,
    /// nginx binary, for reloads.
    pub(crate) nginx: PathBuf,
    /// wrk binary.
    pub(crate) wrk: PathBuf,
    /// Front config, for reloads.
    pub(crate) nginx_conf: PathBuf,
    /// Upstream include the flip scenario rewrites.
    pub(crate) upstream_include: PathBuf,
    /// The two upstream addresses (blue, green).
    pub(crate) upstreams: [SocketAddr; 2],
    /// nginx's https listener (`listen … ssl http2`), same site and upstream as `nginx_addr`.
    pub(crate) nginx_tls_addr: SocketAddr,
    /// Bascule's https listener (HTTP/2 by ALPN), in the process at `bascule_addr`.
    pub(crate) bascule_tls_addr: SocketAddr,
    _procs: Vec<Guard>,
}

fn nginx_common(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/{name}.pid;\nerror_log {d}/{name}.err;\nworker_rlimit_nofile 20000;\n\
         events {{ worker_connections 20000; }}\n"
    )
}

fn temp_paths(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n"
    )
}

impl Lab {
    /// Writes the site and configs, starts the upstreams, nginx and Bascule.
    pub(crate) fn start(tools: &crate::setup::Tools, bascule: &Path) -> anyhow::Result<Lab> {
        let dir = tempfile::Builder::new()
            .prefix("bascule-bench-")
            .tempdir()?;
        let d = dir.path();
        // nginx started as root serves with unprivileged workers: they must read the site.
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        std::fs::create_dir_all(d.join("tmp"))?;
        let site = d.join("site");
        std::fs::create_dir_all(site.join("assets"))?;
        let filler = |n: usize| -> Vec<u8> { (0..n).map(|i| b"abcdefghij"[i % 10]).collect() };
        std::fs::write(site.join(&ASSET_1K[1..]), filler(1024))?;
        std::fs::write(site.join(&ASSET_100K[1..]), filler(100 * 1024))?;
        std::fs::write(site.join("index.html"), b"<!doctype html>")?;
        std::fs::create_dir_all(site.join("gz"))?;
        std::fs::write(site.join(&JSON_10K[1..]), json_10k())?;

        // One self-signed ECDSA P-256 certificate (rcgen's default key) for both https
        // listeners.
        let TestCert { cert, key, .. } = TestCert::make(d, &["bench.test"]);

        let mut procs = Vec::new();
        // Two upstreams (blue, green) in one nginx worker on the load core.
        let (ub, ug) = (free_port()?, free_port()?);
        let up_conf = d.join("upstream.conf");
        std::fs::write(
            &up_conf,
            format!(
                "{}http {{ access_log off; {} keepalive_requests 100000000; client_max_body_size 0;\n\
                 server {{ listen 127.0.0.1:{ub}; location / {{ return 200 \"ok\\n\"; }} {json} }}\n\
                 server {{ listen 127.0.0.1:{ug}; location / {{ return 200 \"ok\\n\"; }} {json} }} }}\n",
                nginx_common(d, "upstream"),
                temp_paths(d),
                json = format!(
                    "location /gz/ {{ root {}; default_type application/json; }}",
                    site.display()
                ),
            ),
        )?;
        let prefix = d.display().to_string();
        procs.push(spawn_pinned(
            crate::setup::LOAD_CORE,
            &tools.nginx,
            &["-p", &prefix, "-c", &up_conf.display().to_string()],
        )?);
        let upstreams: [SocketAddr; 2] = [
            format!("127.0.0.1:{ub}").parse()?,
            format!("127.0.0.1:{ug}").parse()?,
        ];
        wait_port(upstreams[0])?;

        // nginx front: proxy with upstream keepalive, and the same site with sendfile.
        let (front, front_tls) = (free_port()?, free_port()?);
        let include = d.join("active-upstream.conf");
        std::fs::write(&include, format!("server 127.0.0.1:{ub};\n"))?;
        let nginx_conf = d.join("front.conf");
        std::fs::write(
            &nginx_conf,
            format!(
                "{}http {{ include /etc/nginx/mime.types; access_log off; {} keepalive_requests 100000000;\n\
                 client_max_body_size 0;\n\
                 log_format edge '$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" $request_time rid=$request_id';\n\
                 sendfile on; tcp_nopush on; open_file_cache max=1000 inactive=60s;\n\
                 upstream app {{ include {inc}; keepalive {UPSTREAM_POOL}; keepalive_requests 100000000; }}\n\
                 server {{ listen 127.0.0.1:{front}; root {site};\n\
                   location /assets/ {{ expires 1y; add_header Cache-Control \"public, immutable\"; }}\n\
                   location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n\
                   location /edge/ {{ access_log {edge_log} edge; proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
                     proxy_set_header X-Request-ID $request_id; add_header X-Request-ID $request_id always;\n\
                     proxy_set_header Host $host; proxy_set_header X-Real-IP $remote_addr;\n\
                     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                     proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host; }}\n\
                   location /gz/ {{ gzip on; gzip_types application/json; gzip_comp_level {GZIP_LEVEL}; gzip_min_length 1024; gzip_vary on;\n\
                     proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n\
                   location /gzoff/ {{ proxy_pass http://app/gz/; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
                 server {{ listen 127.0.0.1:{front_tls} ssl http2; root {site};\n\
                   ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;\n\
                   ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256;\n\
                   location /assets/ {{ expires 1y; add_header Cache-Control \"public, immutable\"; }}\n\
                   location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
                nginx_common(d, "front"),
                temp_paths(d),
                inc = include.display(),
                site = site.display(),
                edge_log = d.join("nginx-edge-access.log").display(),
                cert = cert.display(),
                key = key.display(),
            ),
        )?;
        procs.push(spawn_pinned(
            crate::setup::PROXY_CORE,
            &tools.nginx,
            &["-p", &prefix, "-c", &nginx_conf.display().to_string()],
        )?);
        let nginx_addr: SocketAddr = format!("127.0.0.1:{front}").parse()?;
        wait_port(nginx_addr)?;
        let nginx_tls_addr: SocketAddr = format!("127.0.0.1:{front_tls}").parse()?;
        wait_port(nginx_tls_addr)?;

        // Bascule: one thread, same site, same upstreams; bare (as nginx's `/`) and with
        // forwarded headers (as nginx's `/edge/`).
        // The bare one also has an https listener on the same certificate, TLS settings as
        // shipped (1.2 and 1.3, h2 by ALPN).
        let bascule_tls_port = free_port()?;
        let start_bascule = |name: &str,
                             edge: bool,
                             more: &str|
         -> anyhow::Result<(Guard, SocketAddr)> {
            let port = free_port()?;
            let (https, tls) = if edge || !more.is_empty() {
                (String::new(), String::new())
            } else {
                (
                    format!("https = [\"127.0.0.1:{bascule_tls_port}\"]\n"),
                    format!(
                        "[tls]\n[[tls.certs]]\ncert = \"{}\"\nkey = \"{}\"\n",
                        cert.display(),
                        key.display()
                    ),
                )
            };
            // The edge as deployed: forwarded headers, access log and request ids, as nginx's
            // `/edge/` (`$request_id` upstream, answered, logged); the bare one has none.
            let access_log = if edge {
                format!(
                    "[access_log]\npath = \"{}\"\nformat = \"combined\"\n",
                    d.join(format!("{name}-access.log")).display()
                )
            } else {
                "[request_id]\nenabled = false\n".to_string()
            };
            let conf = d.join(format!("{name}.toml"));
            std::fs::write(
                &conf,
                format!(
                    "[listen]\nhttp = [\"127.0.0.1:{port}\"]\n{https}[server]\nthreads = 1\n[admin]\nsocket = \"{a}\"\n\
                     [forwarding]\nx_forwarded = {edge}\n[limits]\nmax_body_bytes = 1073741824\n\
                     [upstream]\nkeepalive_pool = {UPSTREAM_POOL}\n{access_log}{more}{tls}\
                     [slots.blue]\nupstreams = [\"{b}\"]\nstatic_root = \"{s}\"\n\
                     [slots.green]\nupstreams = [\"{g}\"]\nstatic_root = \"{s}\"\n\
                     [[routes]]\nprefix = \"/assets/\"\nto = \"static\"\n",
                    a = d.join(format!("{name}.sock")).display(),
                    b = upstreams[0],
                    g = upstreams[1],
                    s = site.display(),
                ),
            )?;
            let guard = spawn_pinned(
                crate::setup::PROXY_CORE,
                bascule,
                &["serve", "-c", &conf.display().to_string()],
            )?;
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            wait_port(addr)?;
            Ok((guard, addr))
        };
        let admin = d.join("admin.sock");
        let (guard, bascule_addr) = start_bascule("admin", false, "")?;
        // taskset execs the program, so the child's pid is Bascule's.
        let bascule_pid = guard.0.id();
        procs.push(guard);
        let bascule_tls_addr: SocketAddr = format!("127.0.0.1:{bascule_tls_port}").parse()?;
        wait_port(bascule_tls_addr)?;
        let (guard, bascule_fwd_addr) = start_bascule("fwd", true, "")?;
        let bascule_fwd_pid = guard.0.id();
        procs.push(guard);
        let gzip = "[compression]\nalgorithms = [\"gzip\"]\n";
        let (guard, bascule_gzip_addr) = start_bascule("gzip", false, gzip)?;
        let bascule_gzip_pid = guard.0.id();
        procs.push(guard);
        Ok(Lab {
            nginx_pid_file: d.join("front.pid"),
            dir,
            nginx_addr,
            bascule_addr,
            admin,
            bascule_pid,
            bascule_fwd_addr,
            bascule_fwd_pid,
            bascule_gzip_addr,
            bascule_gzip_pid,
            nginx: tools.nginx.clone(),
            wrk: tools.wrk.clone(),
            nginx_conf,
            upstream_include: include,
            upstreams,
            nginx_tls_addr,
            bascule_tls_addr,
            _procs: procs,
        })
    }

    /// nginx front's master and workers.
    pub(crate) fn nginx_pids(&self) -> Vec<u32> {
        let master: u32 = std::fs::read_to_string(&self.nginx_pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let mut pids = vec![master];
        pids.extend(crate::procs::children(master));
        pids
    }
}

/// A ~10 KiB JSON API answer: records with ids, names, numbers and flags, as compressible as
/// real ones (not one repeated string).
fn json_10k() -> String {
    let names = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    let mut items = Vec::new();
    let mut total = 2;
    let mut i = 0u64;
    while total < 10 * 1024 {
        let item = format!(
            "{{\"id\":{},\"name\":\"{}-{}\",\"price\":{}.{:02},\"stock\":{},\"active\":{}}}",
            1000 + i * 7,
            names[(i % 8) as usize],
            i * 13 % 97,
            i * 31 % 500,
            i * 17 % 100,
            i * 3 % 41,
            !i.is_multiple_of(3)
        );
        total += item.len() + 1;
        items.push(item);
        i += 1;
    }
    format!("[{}]", items.join(","))
}
