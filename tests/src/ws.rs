//! A WebSocket echo upstream that also answers `GET /health`, on its own thread.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// A running echo server.
pub struct WsUpstream {
    addr: SocketAddr,
    last_close: Arc<AtomicU16>,
}

impl WsUpstream {
    /// Starts the server on an ephemeral loopback port.
    pub fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind ws upstream");
        let addr = listener.local_addr().expect("local addr");
        let last_close = Arc::new(AtomicU16::new(0));
        let lc = last_close.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let lc = lc.clone();
                std::thread::spawn(move || serve(stream, &lc));
            }
        });
        WsUpstream { addr, last_close }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The close code of the last close frame received from a client (0: none yet).
    pub fn last_close_code(&self) -> u16 {
        self.last_close.load(Ordering::Relaxed)
    }
}

fn serve(stream: TcpStream, last_close: &AtomicU16) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut path = String::new();
    let mut key = None;
    let mut first = true;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if first {
            path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            first = false;
        } else if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("sec-websocket-key") {
                key = Some(v.trim().to_string());
            }
        }
    }
    let mut out = stream;
    let Some(key) = key.filter(|_| path != "/health") else {
        let _ =
            out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n");
        return;
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let _ = out.write_all(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
        )
        .as_bytes(),
    );
    let mut ws = WebSocket::from_raw_socket(out, Role::Server, None);
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                last_close.store(code, Ordering::Relaxed);
                // tungstenite queues the echoed close; flush it, then the server closes.
                let _ = ws.flush();
            }
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}
