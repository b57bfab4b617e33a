//! An HTTP/2 client over TLS (ALPN `h2`) for the tests: several requests as concurrent streams
//! of one connection, each answer read whole, as the `h2` crate sees it on the wire.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::http::Response;

/// One request: method, path, extra headers.
pub type Request<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// Sends `requests` at once, as concurrent streams on one new connection to `addr` (SNI
/// `name`, any certificate accepted), and returns the answers in the same order. A stream the
/// server reset is an `Err` naming why.
pub fn exchange(
    addr: SocketAddr,
    name: &str,
    requests: &[Request<'_>],
) -> std::io::Result<Vec<Result<Response, String>>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let work = async {
        let tls = crate::tls::client_config(&[b"h2"], false)?;
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let server = rustls::pki_types::ServerName::try_from(name.to_string())
            .map_err(std::io::Error::other)?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(server, tcp)
            .await?;
        let (mut client, conn) = h2::client::handshake(stream)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut pending = Vec::new();
        for (method, path, headers) in requests {
            let mut req = http::Request::builder()
                .method(*method)
                .uri(format!("https://{name}{path}"));
            for (k, v) in *headers {
                req = req.header(*k, *v);
            }
            let req = req.body(()).map_err(std::io::Error::other)?;
            client = client.ready().await.map_err(std::io::Error::other)?;
            let (resp, _) = client
                .send_request(req, true)
                .map_err(std::io::Error::other)?;
            // Read at once: unread bodies of some streams would hold the connection's window
            // that the others need.
            pending.push(tokio::spawn(read(resp)));
        }
        let mut out = Vec::new();
        for task in pending {
            out.push(task.await.map_err(std::io::Error::other)?);
        }
        Ok::<_, std::io::Error>(out)
    };
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), work).await })
        .map_err(|_| std::io::Error::other("no answer within 20 s"))?
}

/// One stream's answer, whole.
async fn read(resp: h2::client::ResponseFuture) -> Result<Response, String> {
    let resp = resp.await.map_err(|e| e.to_string())?;
    let (parts, mut body) = resp.into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok(Response {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: bytes,
    })
}
