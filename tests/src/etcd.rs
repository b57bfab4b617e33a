//! Real etcd members on loopback: free ports, data dirs in a temp dir, killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_addr, wait_until};

/// One member: its ports and, while it runs, its process.
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
}

/// A cluster of etcd members started by a test.
pub struct Etcd {
    members: Vec<Member>,
    initial: String,
    dir: tempfile::TempDir,
}

/// How many times [`Etcd::start`] picks new ports when one was taken.
const START_ATTEMPTS: usize = 5;

/// The `etcd` binary, or why there is none.
fn etcd_bin() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| "etcd is not installed (scripts/setup.sh installs etcd-server)".into())
}

impl Etcd {
    /// Starts `n` members and waits until every one answers; `None` (with the reason
    /// printed) when etcd is not installed. Ports are picked free, then bound by etcd: one
    /// another process took in between fails that start, which is made again on new ports.
    pub fn start(n: usize) -> Option<Etcd> {
        if let Err(why) = etcd_bin() {
            println!("skipped: {why}");
            return None;
        }
        let mut why = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut etcd = Etcd::spawn_all(n);
            match etcd.until_healthy() {
                Ok(()) => return Some(etcd),
                Err(logs) if logs.contains("address already in use") => why = logs,
                Err(logs) => panic!("etcd did not start: {logs}"),
            }
        }
        panic!("etcd did not start: {START_ATTEMPTS} times a port was taken: {why}");
    }

    /// `n` members on new ports, started.
    fn spawn_all(n: usize) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("bascule-etcd-")
            .tempdir()
            .expect("temp dir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_addr(),
                peer: free_addr(),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            members,
            initial,
            dir,
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        etcd
    }

    /// Waits until every member answers; the logs when one exited or did not in time.
    fn until_healthy(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            let m = &mut self.members[i];
            let mut exited = false;
            let up = wait_until(Duration::from_secs(20), || {
                exited = m
                    .child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_some());
                exited || healthy(m.client)
            });
            if !up || exited {
                let name = m.name.clone();
                return Err(format!("member {name}: {}", self.logs()));
            }
        }
        Ok(())
    }

    fn spawn(&mut self, i: usize) {
        let bin = etcd_bin().expect("etcd");
        let data = self.dir.path().join(&self.members[i].name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.dir
                    .path()
                    .join(format!("{}.log", self.members[i].name)),
            )
            .expect("etcd log");
        let m = &self.members[i];
        let child = Command::new(bin)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .arg(format!("--listen-client-urls=http://{}", m.client))
            .arg(format!("--advertise-client-urls=http://{}", m.client))
            .arg(format!("--listen-peer-urls=http://{}", m.peer))
            .arg(format!("--initial-advertise-peer-urls=http://{}", m.peer))
            .arg(format!("--initial-cluster={}", self.initial))
            .args([
                "--initial-cluster-state=new",
                "--initial-cluster-token=bascule-test",
            ])
            // Quick elections: a killed leader is replaced within about a second.
            .args(["--heartbeat-interval=50", "--election-timeout=500"])
            .args(["--logger=zap", "--log-level=error"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    /// Every client endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member `i`'s client endpoint.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}", self.members[i].client)
    }

    /// Kills member `i` (SIGKILL); its data dir stays.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data dir and waits until it answers.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        let addr = self.members[i].client;
        assert!(
            wait_until(Duration::from_secs(20), || healthy(addr)),
            "etcd member {i} did not come back: {}",
            self.logs()
        );
    }

    /// Starts every member that is down again, on its data dir, and waits until all answer.
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        if let Err(why) = self.until_healthy() {
            panic!("etcd did not start: {why}");
        }
    }

    /// The members' logs, for a failure message.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for m in &self.members {
            let p = self.dir.path().join(format!("{}.log", m.name));
            all.push_str(&std::fs::read_to_string(p).unwrap_or_default());
        }
        all
    }

    /// Compacts the key-value history up to the current revision, through member `i`.
    pub fn compact(&self, i: usize) -> i64 {
        let addr = self.members[i].client;
        let range = post(addr, "/v3/kv/range", r#"{"key":"AA=="}"#);
        let v: serde_json::Value = serde_json::from_str(&range).expect("range reply");
        let revision: i64 = v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("a revision");
        let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
        let reply = post(addr, "/v3/kv/compaction", &body);
        assert!(reply.contains("header"), "compaction: {reply}");
        revision
    }

    /// The data dir of the cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn healthy(addr: SocketAddr) -> bool {
    request(addr, "GET /health HTTP/1.0\r\n\r\n").is_some_and(|r| r.contains("\"true\""))
}

/// One JSON POST to etcd's gRPC gateway; the body of the reply.
fn post(addr: SocketAddr, path: &str, body: &str) -> String {
    let req = format!(
        "POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let reply = request(addr, &req).unwrap_or_default();
    reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(reply)
}

fn request(addr: SocketAddr, req: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}
