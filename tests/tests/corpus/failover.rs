//! A GET is never lost to a dead member: with two members under steady keep-alive load, one
//! killed outright (SIGKILL, its sockets reset by the kernel) costs no request.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bascule_tests::http::Conn;
use bascule_tests::MODES;

use super::*;

/// An HTTP/1.1 keep-alive member in its own process, so it can be killed like a real one.
const MEMBER: &str = r#"
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        # Head and body in one write: a kill cuts a response off before its first byte or
        # not at all, so a loss is the proxy's, never a half-sent response.
        body = ("member " + sys.argv[1] + " " + self.path).encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    def log_message(self, *args):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
s = S(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

struct Member {
    child: Child,
    addr: SocketAddr,
}

impl Member {
    /// `None` (with a notice) when python3 is not installed.
    fn start(name: &str) -> Option<Member> {
        let mut child = match Command::new("python3")
            .args(["-c", MEMBER, name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                println!("python3 not available ({e}): dead-member test skipped");
                return None;
            }
        };
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("member port");
        let port: u16 = line.trim().parse().expect("member printed its port");
        Some(Member {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn get_is_never_lost_to_a_killed_member() {
    let mut fails = Failures::default();
    for mode in MODES {
        let (Some(mut a), Some(b)) = (Member::start("a"), Member::start("b")) else {
            return;
        };
        let proxy = Proxy::start(&ProxyConfig {
            blue: vec![a.addr, b.addr],
            green: vec![b.addr],
            server: mode.server(),
            ..Default::default()
        });
        let addr = proxy.addr;
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(Mutex::new(Vec::<String>::new()));
        let clients: Vec<_> = (0..8)
            .map(|t| {
                let (stop, ok, lost) = (stop.clone(), ok.clone(), lost.clone());
                std::thread::spawn(move || {
                    let mut conn = Conn::connect(addr).ok();
                    let mut i = 0u64;
                    // Bounded: the stop flag is set after 3 s, and each request has a 10 s
                    // read timeout.
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let path = format!("/load/{t}/{i}");
                        let result = match conn.as_mut() {
                            Some(c) => c.get(&path, &[]),
                            None => Err(std::io::Error::other("no connection")),
                        };
                        match result {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if r.header("connection")
                                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                                {
                                    conn = Conn::connect(addr).ok();
                                }
                            }
                            Ok(r) => {
                                lost.lock().unwrap().push(format!(
                                    "GET {path}: {} {:?}",
                                    r.status,
                                    r.text()
                                ));
                                conn = Conn::connect(addr).ok();
                            }
                            Err(e) => {
                                lost.lock().unwrap().push(format!("GET {path}: {e}"));
                                conn = Conn::connect(addr).ok();
                            }
                        }
                    }
                })
            })
            .collect();
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(1500));
        let before = ok.load(Ordering::Relaxed);
        a.kill();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.join();
        }
        let total = ok.load(Ordering::Relaxed);
        let lost = lost.lock().unwrap().clone();
        println!(
            "[{}] {total} GETs answered 200 in {:?} ({before} before the kill), {} lost",
            mode.name(),
            start.elapsed(),
            lost.len()
        );
        fails.check(mode, before > 20 && total > before + 20, || {
            format!("too little load to tell: {before} GETs before the kill, {total} in all")
        });
        fails.check(mode, lost.is_empty(), || {
            format!(
                "{} GET(s) lost after a member was killed; first: {}",
                lost.len(),
                lost.iter().take(3).cloned().collect::<Vec<_>>().join(" | ")
            )
        });
    }
    fails.assert_none();
}
