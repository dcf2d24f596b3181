//! `meshara run`'s health and metrics endpoint (`http_listen`): `GET /healthz`, `/readyz`
//! and `/metrics`, for container probes and Prometheus. Deliberately tiny and strict: one
//! request per connection, a 4 KiB head read within 5 s, at most 256 connections at once and 8
//! per client address (so one slow or flooding client cannot starve the probes), no body
//! accepted, nothing but these three paths. It reveals what `/metrics` shows (counters,
//! no identities of peers), so bind it to a private address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshara_core::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const MAX_HEAD: usize = 4096;
const MAX_CONNECTIONS: usize = 256;
const MAX_PER_ADDRESS: usize = 8;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and answers until the process ends.
pub(crate) async fn serve(addr: SocketAddr, node: Node) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("http_listen {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // Over either cap, the new connection is closed at once.
            let ip = peer.ip();
            {
                let mut counts = per_address.lock().unwrap_or_else(|p| p.into_inner());
                let count = counts.entry(ip).or_default();
                if *count >= MAX_PER_ADDRESS {
                    continue;
                }
                *count += 1;
            }
            let release = {
                let per_address = per_address.clone();
                move || {
                    let mut counts = per_address.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(c) = counts.get_mut(&ip) {
                        *c -= 1;
                        if *c == 0 {
                            counts.remove(&ip);
                        }
                    }
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                release();
                continue;
            };
            let node = node.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(READ_TIMEOUT * 2, answer(stream, &node)).await;
                drop(permit);
                release();
            });
        }
    });
    Ok(local)
}

async fn answer(mut stream: TcpStream, node: &Node) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    })
    .await;
    let (status, content_type, body) = match complete {
        Ok(Ok(true)) => route(&head, node),
        Ok(Ok(false)) if head.len() > MAX_HEAD => (
            "431 Request Header Fields Too Large",
            "text/plain; charset=utf-8",
            "request head too large\n".to_owned(),
        ),
        _ => return Ok(()),
    };
    let head_only = head.starts_with(b"HEAD ");
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n{}",
        body.len(),
        if head_only { "" } else { body.as_str() }
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn route(head: &[u8], node: &Node) -> (&'static str, &'static str, String) {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let text = "text/plain; charset=utf-8";
    if !matches!(version, Some(v) if v.starts_with(b"HTTP/1.")) || parts.next().is_some() {
        return ("400 Bad Request", text, "bad request line\n".into());
    }
    if !matches!(method, Some(b"GET" | b"HEAD")) {
        return ("405 Method Not Allowed", text, "only GET and HEAD\n".into());
    }
    let path = target
        .unwrap_or_default()
        .split(|&b| b == b'?')
        .next()
        .unwrap_or_default();
    match path {
        b"/healthz" => ("200 OK", text, "ok\n".into()),
        b"/readyz" if node.is_running() => ("200 OK", text, "ready\n".into()),
        b"/readyz" => ("503 Service Unavailable", text, "stopping\n".into()),
        b"/metrics" => {
            let accept = header(head, "accept");
            let (content_type, body) =
                meshara_core::exposition::negotiate(accept.as_deref(), node.metrics_text());
            ("200 OK", content_type, body)
        }
        _ => ("404 Not Found", text, "not found\n".into()),
    }
}

/// The value of header `name` (lowercase) in a request head, if present and UTF-8.
fn header(head: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}
