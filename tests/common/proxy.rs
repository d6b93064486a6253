//! A minimal HTTP proxy for tests, so end-to-end tests can check that the
//! poller reaches the media service through a proxy when told to, and which
//! requests went that way: `CONNECT` tunnels for HTTPS, absolute-form
//! forwarding for plain HTTP.
//!
//! Written on raw sockets with httparse rather than with an HTTP library, so
//! it sees each request head exactly as the client sent it. Forwarded plain
//! HTTP requests get `connection: close`: every request then comes on a
//! connection of its own, so the proxy sees (and records) every one, not only
//! the first of a kept-alive connection.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Request heads are refused beyond this size.
const MAX_HEAD: usize = 16 * 1024;
/// Header lines beyond this count are refused.
const MAX_HEADERS: usize = 64;

/// A request head the proxy parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySeen {
    pub method: String,
    /// `host:port` for `CONNECT`, the absolute URL otherwise.
    pub target: String,
}

/// The proxy, running on `127.0.0.1` until the test's runtime ends.
#[derive(Clone)]
pub struct TestProxy {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<ProxySeen>>>,
}

impl TestProxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                tokio::spawn(serve(client, recorder.clone()));
            }
        });
        Self { addr, seen }
    }

    /// The proxy URL, as `reqwest::Proxy` or `HTTPS_PROXY` want it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request head parsed, in order.
    pub fn seen(&self) -> Vec<ProxySeen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// A parsed request head, owned.
struct Head {
    method: String,
    target: String,
    minor_version: u8,
    headers: Vec<(String, Vec<u8>)>,
}

enum Read {
    /// The head and whatever bytes followed it.
    Head(Head, Vec<u8>),
    Malformed,
    Closed,
}

async fn serve(mut client: TcpStream, seen: Arc<Mutex<Vec<ProxySeen>>>) {
    let (head, rest) = match read_head(&mut client).await {
        Read::Head(head, rest) => (head, rest),
        Read::Malformed => return answer(&mut client, "400 Bad Request").await,
        Read::Closed => return,
    };
    let record = ProxySeen { method: head.method.clone(), target: head.target.clone() };
    seen.lock().unwrap_or_else(PoisonError::into_inner).push(record);

    if head.method.eq_ignore_ascii_case("CONNECT") {
        if split_port(&head.target).is_none() {
            return answer(&mut client, "400 Bad Request").await;
        }
        let Ok(mut upstream) = TcpStream::connect(head.target.as_str()).await else {
            return answer(&mut client, "502 Bad Gateway").await;
        };
        if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err()
            || upstream.write_all(&rest).await.is_err()
        {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }

    let Some((authority, path)) = absolute_http(&head.target) else {
        return answer(&mut client, "400 Bad Request").await;
    };
    let address =
        if split_port(authority).is_some() { authority.to_owned() } else { format!("{authority}:80") };
    let Ok(mut upstream) = TcpStream::connect(address.as_str()).await else {
        return answer(&mut client, "502 Bad Gateway").await;
    };
    let mut out = format!("{} {path} HTTP/1.{}\r\n", head.method, head.minor_version).into_bytes();
    for (name, value) in &head.headers {
        let hop_by_hop = ["connection", "proxy-connection", "keep-alive"];
        if !hop_by_hop.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            out.extend_from_slice(format!("{name}: ").as_bytes());
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&rest);
    if upstream.write_all(&out).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Reads until a whole request head parsed, it proved malformed, it grew
/// past [`MAX_HEAD`], or the client went away.
async fn read_head(client: &mut TcpStream) -> Read {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return Read::Closed,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => {
                let head = Head {
                    method: request.method.unwrap_or_default().to_owned(),
                    target: request.path.unwrap_or_default().to_owned(),
                    minor_version: request.version.unwrap_or(1),
                    headers: request.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect(),
                };
                return Read::Head(head, buf[len..].to_vec());
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            _ => return Read::Malformed,
        }
    }
}

/// `http://authority/path?query` → (authority, origin-form target).
fn absolute_http(target: &str) -> Option<(&str, String)> {
    let scheme = target.get(..7)?;
    if !scheme.eq_ignore_ascii_case("http://") {
        return None;
    }
    let rest = &target[7..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let path = if path.starts_with('/') { path.to_owned() } else { format!("/{path}") };
    Some((authority, path))
}

/// The port of `host:port` (`[v6]:port` too), if there is a valid one.
fn split_port(authority: &str) -> Option<u16> {
    let (host, port) = authority.rsplit_once(':')?;
    if host.is_empty() { None } else { port.parse().ok() }
}

async fn answer(client: &mut TcpStream, status: &str) {
    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
    // Read what the client still sends: closing with unread bytes resets the
    // connection, and the client could lose the answer.
    let mut sink = tokio::io::sink();
    let drain = tokio::io::copy(client, &mut sink);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}
