//! nginx as the reference proxy, when it is installed.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_addr, wait_until};

/// The nginx binary: `NGINX_BIN`, else `/usr/sbin/nginx`, else `nginx` on the `PATH`.
pub fn nginx_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NGINX_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let fixed = PathBuf::from("/usr/sbin/nginx");
    if fixed.exists() {
        return Some(fixed);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nginx"))
            .find(|p| p.exists())
    })
}

/// A foreground, single-process nginx reverse proxy in its own temp prefix, configured as
/// edges usually are: HTTP/1.1 keep-alive to the upstream, forwarded headers set, and
/// `location /private` served from a directory.
pub struct Nginx {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx in front of `upstream`, serving `/private…` from `static_root` (a file
    /// `static_root/private` answers `/private`). `None`, with a notice printed, when nginx is
    /// not installed.
    pub fn start(upstream: SocketAddr, static_root: &Path) -> Option<Nginx> {
        let Some(bin) = nginx_bin() else {
            println!("nginx not found (set NGINX_BIN or install nginx): reference run skipped");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("bascule-nginx-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path().display();
        let addr = free_addr();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
               upstream backend {{ server {upstream}; keepalive 16; }}\n\
               server {{\n\
                 listen {addr};\n\
                 location /private {{ root {root}; }}\n\
                 location / {{\n\
                   proxy_pass http://backend;\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n\
                   proxy_set_header Host $host;\n\
                   proxy_set_header X-Real-IP $remote_addr;\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                   proxy_set_header X-Forwarded-Proto $scheme;\n\
                   proxy_set_header X-Forwarded-Host $host;\n\
                 }}\n\
               }}\n\
             }}\n",
            root = static_root.display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut child = Command::new(&bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let ready = wait_until(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(Some(_))) || TcpStream::connect(addr).is_ok()
        });
        if !ready || !matches!(child.try_wait(), Ok(None)) {
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            let _ = child.kill();
            let _ = child.wait();
            panic!("nginx did not start:\n{log}");
        }
        Some(Nginx { child, addr, dir })
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // One process (no master, no workers): killing it stops everything it started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
