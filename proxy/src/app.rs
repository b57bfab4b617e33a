//! Wiring: a validated [`Config`] becomes a Pingora server with its services.
//!
//! Services: the HTTP proxy (one per process, `[server] threads` workers), the admin socket,
//! the health checker and, when configured, the metrics endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bascule_config::Config;
use pingora::prelude::Opt;
use pingora::proxy::http_proxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::admin::handler::{AdminHandler, AdminService};
use crate::admin::metrics_endpoint::MetricsService;
use crate::control::cluster::ClusterService;
use crate::control::health_check::HealthChecker;
use crate::control::Control;
use crate::http::edge::Policies;
use crate::http::fast::FastApp;
use crate::http::service::Bascule;
use crate::slots::certs::{install_crypto_provider, Certs};
use crate::slots::metrics::Metrics;
use crate::SlotName;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::ExecutionPhase;
use tokio::sync::broadcast::error::RecvError;

/// How the process was asked to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Take the listening sockets over from a running instance (Pingora's `--upgrade`).
    pub upgrade: bool,
}

/// A server ready to run.
pub struct App {
    server: Server,
    admin_socket: PathBuf,
    admin_inode: Option<u64>,
    control: Arc<Control>,
}

/// Why the process cannot start: an address it must listen on is taken or not allowed.
#[derive(Debug, thiserror::Error)]
#[error("{key}: bind() to {addr} failed: {error}")]
pub struct BindError {
    /// The config key that names the address.
    key: &'static str,
    /// The address.
    addr: SocketAddr,
    /// What the OS said (address in use, permission denied, not available).
    error: std::io::Error,
}

/// Binds every TCP address of `config` once, and lets go: an address another process holds
/// stops the start here, naming it, before anything is served.
fn check_addresses(config: &Config) -> Result<(), BindError> {
    let listen = config.listen.iter().map(|a| ("listen.http", a));
    let https = config.https.iter().map(|a| ("listen.https", a));
    let metrics = config.metrics.iter().map(|a| ("metrics.listen", a));
    for (key, &addr) in listen.chain(https).chain(metrics) {
        std::net::TcpListener::bind(addr).map_err(|error| BindError { key, addr, error })?;
    }
    Ok(())
}

/// Path next to the admin socket, for Pingora's own files (upgrade socket, pid file).
fn beside(socket: &std::path::Path, suffix: &str) -> String {
    let mut p = socket.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p).display().to_string()
}

impl App {
    /// Builds every service and binds the admin socket. Errors name what failed.
    pub fn build(config: Config, opts: StartOptions) -> anyhow::Result<App> {
        // First: Pingora's connectors and listeners install ring's defaults when none is set.
        install_crypto_provider();
        // Pingora's listeners retry a taken address every second, forever, while the rest of
        // the process (admin socket included) looks healthy: like nginx, a start that cannot
        // bind its addresses fails. In an upgrade they are taken over, not bound.
        if !opts.upgrade {
            check_addresses(&config)?;
        }
        let metrics = Metrics::new();
        // Everything a request reads from the config, rebuilt by `reload`.
        let policies = Arc::new(Policies::new(&config, metrics.clone())?);
        let (control, warning) = Control::new(config.clone(), metrics)?;
        if let Some(w) = warning {
            tracing::error!("{w}");
            eprintln!("bascule: WARNING: {w}");
        }

        let conf = ServerConf {
            threads: config.server.threads,
            work_stealing: config.server.work_stealing,
            // `keepalive_pool` is per member; Pingora's pool (the full proxy's) is one for all.
            upstream_keepalive_pool_size: config.upstream.keepalive_pool
                * (config.blue.upstreams.len() + config.green.upstreams.len()).max(1),
            // The grace period is cut short once nothing is in flight: see `App::run`.
            grace_period_seconds: Some(config.server.shutdown_grace.as_secs().max(1)),
            graceful_shutdown_timeout_seconds: Some(1),
            upgrade_sock: beside(&config.admin.socket, ".upgrade"),
            pid_file: beside(&config.admin.socket, ".pid"),
            ..ServerConf::default()
        };
        let opt = Opt {
            upgrade: opts.upgrade,
            ..Opt::default()
        };
        let mut server = Server::new_with_opt_and_conf(opt, conf);

        control.reload_with(policies.clone());
        let service = Bascule::new(control.clone(), policies.clone());
        let full = http_proxy(&server.configuration, service.clone());
        let mut proxy = Service::new(
            "bascule proxy".to_string(),
            FastApp::new(control.clone(), policies, full, service),
        );
        for addr in &config.listen {
            // The fast path reads into its own buffer and writes whole responses at once:
            // Pingora's L4 buffers (64 KiB read per connection) would only add a copy and
            // memory per idle connection.
            let endpoint =
                ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::unbuffered());
            proxy.add_listener(endpoint);
        }
        if let Some(tls) = &config.tls {
            // Pingora terminates TLS; the certificate is picked per handshake by SNI from a set
            // that `reload` replaces (`slots/certs.rs`).
            let certs = Arc::new(Certs::load(tls).context("tls: cannot load the certificates")?);
            control.serve_certs(certs.clone());
            for addr in &config.https {
                let mut settings = TlsSettings::intermediate("", "")
                    .map_err(|e| anyhow::anyhow!("tls settings: {e}"))?;
                settings.set_cert_resolver(certs.clone());
                if tls.h2 {
                    settings.enable_h2();
                }
                // rustls reads records into its own buffer and the fast path into its own: a
                // 64 KiB L4 read buffer under them would cost every TLS connection, idle ones
                // included, 64 KiB more and a copy.
                let endpoint = ListenerConfig::tcp(addr.to_string())
                    .tls(settings)
                    .l4_buffer(L4BufferSettings::unbuffered());
                proxy.add_listener(endpoint);
            }
        }
        server.add_service(proxy);
        server.add_service(background_service(
            "bascule reload on SIGHUP",
            ReloadOnHangup {
                control: control.clone(),
            },
        ));

        // Bind the admin socket before serving: a bad socket stops the start. In an upgrade the
        // running process still owns it until it has handed its listeners over, so bind after
        // bootstrap (which waits for that handover) and take the socket over.
        if !opts.upgrade {
            let listener = bascule_admin::server::bind(&config.admin.socket, config.admin.mode)?;
            server.add_service(admin_service(listener, &control));
        }
        if control.cluster().is_some() {
            server.add_service(background_service(
                "bascule cluster",
                ClusterService::new(control.clone()),
            ));
        }
        server.add_service(background_service(
            "bascule health",
            HealthChecker::new(control.clone()),
        ));
        if let Some(addr) = config.metrics {
            server.add_service(background_service(
                "bascule metrics",
                MetricsService::new(addr, control.clone()),
            ));
        }
        server.bootstrap();
        if opts.upgrade {
            let _ = std::fs::remove_file(&config.admin.socket);
            let listener = bascule_admin::server::bind(&config.admin.socket, config.admin.mode)?;
            server.add_service(admin_service(listener, &control));
        }
        Ok(App {
            server,
            admin_inode: inode(&config.admin.socket),
            admin_socket: config.admin.socket.clone(),
            control,
        })
    }

    /// The routing control, for in-process callers (the demo).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Runs until SIGTERM (graceful), SIGINT (fast) or SIGQUIT (upgrade handover).
    ///
    /// On a graceful stop Pingora stops accepting, then sleeps the whole grace period before
    /// it cancels what is left. In-flight requests are counted per slot, so the process leaves
    /// as soon as both counts reach zero instead of sleeping on.
    pub fn run(self) {
        let mut phases = self.server.watch_execution_phase();
        let (control, socket, ino) = (
            self.control.clone(),
            self.admin_socket.clone(),
            self.admin_inode,
        );
        let grace = control.config().server.shutdown_grace;
        std::thread::spawn(move || loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::ShutdownGracePeriod) => {
                    let counters = control.load().counters.clone();
                    let deadline = std::time::Instant::now() + grace;
                    let busy = || SlotName::ALL.iter().any(|&s| counters.inflight(s) > 0);
                    // Empty twice, a settle time apart: a connection accepted just before the
                    // listener closed has its request read (and counted) within it.
                    while std::time::Instant::now() < deadline {
                        if busy() {
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            continue;
                        }
                        std::thread::sleep(SETTLE);
                        if !busy() {
                            break;
                        }
                    }
                    remove_own_socket(&socket, ino);
                    tracing::info!("nothing left in flight; exiting");
                    std::process::exit(0);
                }
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            }
        });
        self.server.run(RunArgs::default());
        remove_own_socket(&self.admin_socket, self.admin_inode);
    }
}

fn admin_service(
    listener: std::os::unix::net::UnixListener,
    control: &Arc<Control>,
) -> impl pingora_core::services::ServiceWithDependents {
    let admin = AdminService::new(listener, AdminHandler::new(control.clone()));
    background_service("bascule admin", admin)
}

/// `SIGHUP` reloads the config (and the certificates), as `bascule ctl reload` does.
struct ReloadOnHangup {
    control: Arc<Control>,
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("SIGHUP cannot be watched; use `bascule ctl reload`");
            return;
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => match self.control.reload().await {
                    Ok(changes) => tracing::info!(?changes, "SIGHUP: config reloaded"),
                    Err(e) => tracing::warn!(error = %e, "SIGHUP: reload refused; the running config stays"),
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Time the process stays after in-flight requests reach zero on a graceful stop.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

/// Identity of a file: during an upgrade the new process replaces the admin socket file with
/// its own, and the old process must then leave it alone.
fn inode(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

/// Removes the admin socket file if it is still the one this process bound.
fn remove_own_socket(path: &std::path::Path, ino: Option<u64>) {
    if ino.is_some() && inode(path) == ino {
        let _ = std::fs::remove_file(path);
    }
}

/// Loads `path`, builds and runs; the `bascule serve` command.
pub fn serve(path: &std::path::Path, opts: StartOptions) -> anyhow::Result<()> {
    let config = bascule_config::load(path)?;
    let app =
        App::build(config, opts).with_context(|| format!("{}: cannot start", path.display()))?;
    app.run();
    Ok(())
}
