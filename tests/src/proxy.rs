//! Starting and stopping the real `bascule` binary.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bascule_admin::client::Client;
use bascule_admin::{Reply, Status};
use serde::de::{DeserializeOwned, IgnoredAny};

/// Path of the `bascule` binary, built once per test process.
///
/// Integration tests of another package do not get the binary built for them, so the harness
/// asks cargo for it (a no-op when it is up to date).
pub fn bascule_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("BASCULE_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> → target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in target/<profile>/deps");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-q", "-p", "bascule-proxy", "--bin", "bascule"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // `cargo test` gives each test process its package's CARGO_MANIFEST_DIR, CARGO_PKG_*…;
        // a build script that watches one of them (ring's does) would rebuild the whole
        // binary once per test package instead of finding it up to date.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|p| key.starts_with(p))
                || key == "CARGO_TARGET_TMPDIR"
            {
                cmd.env_remove(&*key);
            }
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the bascule binary failed");
        profile_dir.join("bascule")
    })
}

/// A loopback address with a port free right now.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The parts of a config a test varies; the rest is written for it (ports, socket, state).
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// Blue upstreams.
    pub blue: Vec<SocketAddr>,
    /// Green upstreams.
    pub green: Vec<SocketAddr>,
    /// Blue static root.
    pub blue_root: Option<PathBuf>,
    /// Green static root.
    pub green_root: Option<PathBuf>,
    /// Extra lines of the `[server]` table (`park_idle_after = "100ms"`…).
    pub server: String,
    /// Extra lines of the `[listen]` table (`https = […]`, `redirect_http = true`).
    pub listen: String,
    /// Extra lines of the `[admin]` table (`idle_timeout = "1s"`).
    pub admin: String,
    /// Extra TOML appended verbatim (routes, health, drain…).
    pub extra: String,
    /// The state file (default: `state.json` in the proxy's temp dir).
    pub state: Option<PathBuf>,
    /// `[server] threads` (default 2).
    pub threads: Option<usize>,
}

/// Why a start failed.
enum Failed {
    /// Another process bound the port first; the dir is given back for the next attempt.
    PortTaken(tempfile::TempDir),
    /// Anything else, with the proxy's stderr.
    Other(String),
}

/// A running `bascule serve` process with its own temp dir.
pub struct Proxy {
    child: Option<Child>,
    /// The proxy's HTTP address.
    pub addr: SocketAddr,
    /// The admin socket.
    pub socket: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// The state file.
    pub state: PathBuf,
    /// The temp dir holding all of the above.
    pub dir: tempfile::TempDir,
    stderr: PathBuf,
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ProxyConfig {
    /// Both slots on `upstream`, both static roots at `root`, requests on `mode`'s path, and
    /// `extra` appended.
    pub fn on_one_upstream(
        upstream: SocketAddr,
        root: &Path,
        mode: crate::Mode,
        extra: String,
    ) -> ProxyConfig {
        ProxyConfig {
            blue: vec![upstream],
            green: vec![upstream],
            blue_root: Some(root.to_path_buf()),
            green_root: Some(root.to_path_buf()),
            server: mode.server(),
            extra,
            ..Default::default()
        }
    }

    /// The state file for a proxy in `dir`.
    pub fn state_path(&self, dir: &Path) -> PathBuf {
        self.state.clone().unwrap_or_else(|| dir.join("state.json"))
    }

    /// The TOML for this config in `dir`, listening on `addr`.
    pub fn render(&self, dir: &Path, addr: SocketAddr) -> String {
        let root = |r: &Option<PathBuf>| {
            r.as_ref()
                .map(|p| format!("static_root = \"{}\"\n", p.display()))
                .unwrap_or_default()
        };
        format!(
            "[listen]\nhttp = [\"{addr}\"]\n{listen}\n\n[server]\nthreads = {threads}\nshutdown_grace = \"5s\"\n{server}\n\
             [admin]\nsocket = \"{d}/admin.sock\"\n{admin}\n[state]\npath = \"{state}\"\n\n\
             [slots.blue]\nupstreams = [{b}]\nversion = \"1.0.0\"\n{br}\n\
             [slots.green]\nupstreams = [{g}]\nversion = \"1.1.0\"\n{gr}\n\
             [upstream]\nconnect_timeout = \"1s\"\nread_timeout = \"5s\"\n\n{extra}\n",
            d = dir.display(),
            state = self.state_path(dir).display(),
            b = list(&self.blue),
            g = list(&self.green),
            server = self.server,
            listen = self.listen,
            br = root(&self.blue_root),
            gr = root(&self.green_root),
            extra = self.extra,
            admin = self.admin,
            threads = self.threads.unwrap_or(2),
        )
    }
}

/// What the proxy says when a listening port is taken: it stops at once.
const PORT_IN_USE: &str = "Address already in use";

/// How many ports `Proxy::start` tries before it gives up.
const START_ATTEMPTS: usize = 5;

impl Proxy {
    /// Writes the config into a new temp dir and starts the proxy; returns once it serves.
    ///
    /// The port is found free by binding it and letting it go, so another process can take it
    /// before the proxy binds it: a start that fails on a port in use is retried on a new one.
    pub fn start(cfg: &ProxyConfig) -> Proxy {
        let dir = tempfile::Builder::new()
            .prefix("bascule-test-")
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("bascule.toml");
        let state = cfg.state_path(dir.path());
        let mut dir = dir;
        for _ in 0..START_ATTEMPTS {
            let addr = free_addr();
            std::fs::write(&config, cfg.render(dir.path(), addr)).expect("write config");
            match Proxy::spawn(dir, config.clone(), addr, state.clone()) {
                Ok(proxy) => return proxy,
                Err(Failed::PortTaken(d)) => dir = d,
                Err(Failed::Other(why)) => panic!("{why}"),
            }
        }
        panic!("bascule did not start: {START_ATTEMPTS} ports were taken before it bound them");
    }

    /// Starts the proxy on an existing `dir` and `config` (a restart).
    pub fn start_in(dir: tempfile::TempDir, config: PathBuf, addr: SocketAddr) -> Proxy {
        let state = dir.path().join("state.json");
        match Proxy::spawn(dir, config, addr, state) {
            Ok(proxy) => proxy,
            Err(Failed::PortTaken(_)) => panic!("bascule did not start: {addr} is taken"),
            Err(Failed::Other(why)) => panic!("{why}"),
        }
    }

    fn spawn(
        dir: tempfile::TempDir,
        config: PathBuf,
        addr: SocketAddr,
        state: PathBuf,
    ) -> Result<Proxy, Failed> {
        let socket = dir.path().join("admin.sock");
        let stderr = dir.path().join("stderr.log");
        let child = Command::new(bascule_bin())
            .args(["serve", "-c"])
            .arg(&config)
            .env("BASCULE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr log"))
            .spawn()
            .expect("spawn bascule");
        let mut proxy = Proxy {
            child: Some(child),
            addr,
            socket,
            config,
            state,
            dir,
            stderr,
        };
        let mut taken = false;
        let ready = wait_until(Duration::from_secs(20), || {
            if let Some(Ok(Some(_))) = proxy.child.as_mut().map(|c| c.try_wait()) {
                return true;
            }
            taken = proxy.stderr().contains(PORT_IN_USE);
            taken || TcpStream::connect(addr).is_ok() && Client::connect(&proxy.socket).is_ok()
        });
        let exited = proxy
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if ready && !taken && exited.is_none() {
            return Ok(proxy);
        }
        proxy.stop();
        let stderr = proxy.stderr();
        if taken || stderr.contains(PORT_IN_USE) {
            let dir = tempfile::TempDir::new().expect("placeholder dir");
            return Err(Failed::PortTaken(std::mem::replace(&mut proxy.dir, dir)));
        }
        Err(Failed::Other(format!(
            "bascule did not start (exit {exited:?}):\n{stderr}"
        )))
    }

    /// Stops the proxy and starts it again on the same dir, config and port.
    pub fn restart(mut self) -> Proxy {
        self.stop();
        let dir = tempfile::TempDir::new().expect("placeholder dir");
        let dir = std::mem::replace(&mut self.dir, dir);
        let (config, addr, state) = (self.config.clone(), self.addr, self.state.clone());
        match Proxy::spawn(dir, config, addr, state) {
            Ok(proxy) => proxy,
            Err(Failed::PortTaken(_)) => panic!("bascule did not restart: {addr} is taken"),
            Err(Failed::Other(why)) => panic!("{why}"),
        }
    }

    /// What the proxy wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.stderr) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Sends one admin command and reads the reply as `T`, or the refusal's message.
    pub fn call<T: DeserializeOwned>(&self, line: &str) -> Result<T, String> {
        let mut c = Client::connect(&self.socket).expect("admin socket");
        c.call(line).expect("admin reply")
    }

    /// Sends one admin command that must succeed; its reply, typed by the command.
    pub fn admin_ok(&self, line: &str) -> Reply {
        let cmd = bascule_admin::Command::parse(line).expect("a valid command line");
        let mut c = Client::connect(&self.socket).expect("admin socket");
        let raw = c.call_raw(line).expect("admin reply");
        match Reply::parse(&cmd, &raw) {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => panic!("`{line}` was refused: {e}"),
            Err(e) => panic!("`{line}`: {e} in {raw}"),
        }
    }

    /// Sends one admin command that must be refused; the refusal's message.
    pub fn admin_err(&self, line: &str) -> String {
        match self.call::<IgnoredAny>(line) {
            Err(e) => e,
            Ok(_) => panic!("`{line}` was not refused"),
        }
    }

    /// `status`, which must succeed.
    pub fn status(&self) -> Status {
        self.call("status").expect("status")
    }

    /// Runs `bascule ctl -s SOCKET args…`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bascule_bin())
            .arg("ctl")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run bascule ctl")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` to the proxy.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status();
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let mut code = None;
        wait_until(timeout, || match child.try_wait() {
            Ok(Some(st)) => {
                code = Some(st.code().unwrap_or(-1));
                true
            }
            _ => false,
        });
        if code.is_some() {
            self.child = None;
        }
        code
    }

    /// Stops the proxy: SIGINT, then SIGKILL if it lingers.
    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.signal("INT");
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A blue (`blue 1.0.0`) and a green (`green 1.1.0`) upstream and a proxy over them, with
/// `extra` TOML appended to its config.
pub fn two_slots(extra: &str) -> (crate::Upstream, crate::Upstream, Proxy) {
    let blue = crate::Upstream::start("127.0.0.1:0", "blue", "1.0.0").expect("blue upstream");
    let green = crate::Upstream::start("127.0.0.1:0", "green", "1.1.0").expect("green upstream");
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![blue.addr()],
        green: vec![green.addr()],
        extra: extra.into(),
        ..Default::default()
    });
    (blue, green, proxy)
}

/// Two echoing scripted upstreams (`raw::echo`) as blue and green, and a proxy over them with
/// `server` lines (a [`crate::Mode`]'s) and `extra` TOML: where a test counts upstream
/// connections or reads what reached the upstream.
pub fn scripted_slots(
    server: &str,
    extra: &str,
) -> (
    crate::raw::ScriptedUpstream,
    crate::raw::ScriptedUpstream,
    Proxy,
) {
    let blue = crate::raw::ScriptedUpstream::echo();
    let green = crate::raw::ScriptedUpstream::echo();
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![blue.addr()],
        green: vec![green.addr()],
        server: server.into(),
        extra: extra.into(),
        ..Default::default()
    });
    (blue, green, proxy)
}
