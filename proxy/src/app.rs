//! Wiring: a validated [`Config`] becomes a Pingora server with its services.
//!
//! Services: the HTTP proxy (one per process, `[server] threads` workers), the admin socket,
//! the health checker and, when configured, the metrics endpoint.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bascule_config::Config;
use pingora::prelude::Opt;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora_core::services::background::background_service;

use crate::admin_service::{AdminHandler, AdminService};
use crate::control::Control;
use crate::health::HealthChecker;
use crate::metrics::{Metrics, MetricsService};
use crate::service::Bascule;

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
    control: Arc<Control>,
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
        let metrics = Metrics::new();
        let (control, warning) =
            Control::new(config.clone(), metrics).map_err(anyhow::Error::msg)?;
        if let Some(w) = warning {
            tracing::warn!("{w}");
            eprintln!("bascule: WARNING: {w}");
        }

        let conf = ServerConf {
            threads: config.server.threads,
            work_stealing: config.server.work_stealing,
            upstream_keepalive_pool_size: config.upstream.keepalive_pool,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(config.server.shutdown_grace.as_secs().max(1)),
            upgrade_sock: beside(&config.admin.socket, ".upgrade"),
            pid_file: beside(&config.admin.socket, ".pid"),
            ..ServerConf::default()
        };
        let opt = Opt {
            upgrade: opts.upgrade,
            ..Opt::default()
        };
        let mut server = Server::new_with_opt_and_conf(opt, conf);

        let mut proxy = http_proxy_service_with_name(
            &server.configuration,
            Bascule::new(control.clone()),
            "bascule proxy",
        );
        for addr in &config.listen {
            proxy.add_tcp(&addr.to_string());
        }
        server.add_service(proxy);

        let listener = bascule_admin::server::bind(&config.admin.socket, config.admin.mode)?;
        let admin = AdminService::new(listener, AdminHandler::new(control.clone()));
        server.add_service(background_service("bascule admin", admin));
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
        Ok(App {
            server,
            admin_socket: config.admin.socket.clone(),
            control,
        })
    }

    /// The routing control, for in-process callers (the demo).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Runs until SIGTERM (graceful), SIGINT (fast) or SIGQUIT (upgrade handover).
    pub fn run(self) {
        self.server.run(RunArgs::default());
        let _ = std::fs::remove_file(&self.admin_socket);
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
