//! The `bascule` binary: `serve`, `check`, `ctl`, `demo`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Blue/green edge reverse proxy.
#[derive(Parser)]
#[command(name = "bascule", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy in the foreground.
    Serve {
        /// Config file.
        #[arg(short, long, default_value = "bascule.toml")]
        config: PathBuf,
        /// Take the listening sockets over from a running instance (zero-downtime upgrade:
        /// start the new binary with --upgrade, then send SIGQUIT to the old one).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate a config file: `ok` and exit 0, or `FILE:LINE:COL: message` and exit 2.
    Check {
        /// Config file.
        #[arg(short, long, default_value = "bascule.toml")]
        config: PathBuf,
    },
    /// Send one command to a running proxy's admin socket.
    Ctl {
        /// Admin socket (default: the one in ./bascule.toml, else /run/bascule/admin.sock).
        #[arg(short, long)]
        socket: Option<PathBuf>,
        /// Print the proxy's JSON reply as is.
        #[arg(long)]
        json: bool,
        /// The command, e.g. `status`, `flip green --force`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Run a self-contained demo: blue and green upstreams, static sites, proxy, admin socket.
    Demo {
        /// Address the demo proxy listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BASCULE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_log::LogTracer::init();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The socket `ctl` talks to when none is given.
fn default_socket() -> PathBuf {
    let local = Path::new("bascule.toml");
    if local.exists() {
        if let Ok(c) = bascule_config::load(local) {
            return c.admin.socket;
        }
    }
    PathBuf::from(bascule_config::DEFAULT_ADMIN_SOCKET)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Check { config } => match bascule_config::load(&config) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Cmd::Ctl {
            socket,
            json,
            command,
        } => {
            let socket = socket.unwrap_or_else(default_socket);
            let code = bascule_admin::ctl::run(&socket, json, &command);
            ExitCode::from(code as u8)
        }
        Cmd::Serve { config, upgrade } => {
            init_logging();
            let opts = bascule_proxy::app::StartOptions { upgrade };
            match bascule_proxy::app::serve(&config, opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bascule: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Demo { listen } => {
            init_logging();
            match bascule_proxy::demo::run(listen) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bascule demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
