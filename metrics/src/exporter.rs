//! `GET /metrics` over plain HTTP/1.1, on its own port (`--metrics-addr`).
//!
//! Prometheus sends one small GET per scrape, so this reads the request head,
//! answers and closes the connection: no keep-alive, no request bodies, no
//! HTTP library. Anything else gets 404 or 405. The gRPC port stays HTTP/2
//! and gRPC only.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest request head read. A scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8 << 10;
/// A client that sends no complete request head within this is dropped,
/// so idle connections cannot pile up. Prometheus' default scrape timeout is 10 s.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

type Hook = Arc<dyn Fn() + Send + Sync>;

/// A bound metrics listener; [`Exporter::run`] serves it.
pub struct Exporter {
    listener: TcpListener,
    registry: Registry,
    on_scrape: Option<Hook>,
}

impl Exporter {
    /// Binds `addr` (an error here, e.g. the port is taken, should stop the
    /// process from starting).
    pub async fn bind(addr: SocketAddr, registry: Registry) -> io::Result<Self> {
        Ok(Self { listener: TcpListener::bind(addr).await?, registry, on_scrape: None })
    }

    /// Runs `hook` before every scrape, to refresh gauges that are cheaper to
    /// read on demand than to keep current on every write.
    pub fn on_scrape(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_scrape = Some(Arc::new(hook));
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves scrapes on a background task until the returned guard drops.
    pub fn spawn(self) -> Running {
        Running(tokio::spawn(self.run()))
    }

    /// Serves scrapes until the future is dropped.
    pub async fn run(self) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let (registry, hook) = (self.registry.clone(), self.on_scrape.clone());
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, registry, hook).await {
                            tracing::debug!(%peer, error = %e, "metrics request failed");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accepting a metrics connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// A metrics listener serving in the background; dropping it stops it, so
/// it lives exactly as long as the gRPC server it sits beside.
pub struct Running(tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn handle(mut stream: TcpStream, registry: Registry, hook: Option<Hook>) -> io::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request head"))??;
    let response = match route(&head) {
        Route::Metrics { head_only } => {
            // The hook may take locks and encoding walks every series: both
            // are blocking work, kept off the async workers.
            let body = tokio::task::spawn_blocking(move || {
                if let Some(h) = hook {
                    h();
                }
                crate::render(&registry)
            })
            .await
            .map_err(io::Error::other)?;
            response("200 OK", prometheus::TEXT_FORMAT, &body, head_only)
        }
        Route::MethodNotAllowed => response("405 Method Not Allowed", "text/plain", "use GET\n", false),
        Route::NotFound => response("404 Not Found", "text/plain", "metrics are at /metrics\n", false),
        Route::BadRequest => response("400 Bad Request", "text/plain", "bad request\n", false),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Reads up to the blank line that ends a request head. Reading all of it,
/// not just the request line, matters: closing a socket with unread input
/// sends a reset, which can destroy the response before the client reads it.
async fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(head);
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() >= MAX_HEAD {
            return Ok(head);
        }
    }
}

#[derive(Debug, PartialEq)]
enum Route {
    Metrics { head_only: bool },
    MethodNotAllowed,
    NotFound,
    BadRequest,
}

fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else { return Route::BadRequest };
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    // Query parameters (Prometheus sends none by default) are ignored.
    if target.split('?').next() != Some("/metrics") {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head_only: false },
        "HEAD" => Route::Metrics { head_only: true },
        _ => Route::MethodNotAllowed,
    }
}

fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn routes() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics { head_only: false });
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics { head_only: false });
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Route::Metrics { head_only: true });
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"PRI * HTTP/2.0\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b""), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe"), Route::BadRequest);
    }

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_the_registry_over_http() {
        let registry = Registry::new();
        let gauge = prometheus::IntGauge::new("vitrine_test_items", "items").unwrap();
        registry.register(Box::new(gauge.clone())).unwrap();
        let scrapes = Arc::new(AtomicUsize::new(0));
        let hook = {
            let (scrapes, gauge) = (Arc::clone(&scrapes), gauge.clone());
            move || gauge.set(41 + scrapes.fetch_add(1, Ordering::SeqCst) as i64)
        };
        let exporter = Exporter::bind("127.0.0.1:0".parse().unwrap(), registry).await.unwrap().on_scrape(hook);
        let addr = exporter.local_addr().unwrap();
        let running = exporter.spawn();

        let r = get(addr, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{r}");
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())), "{r}");
        assert!(
            body.contains("# TYPE vitrine_test_items gauge\nvitrine_test_items 41\n"),
            "the hook ran first: {body}"
        );
        let r = get(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.contains("vitrine_test_items 42\n"), "{r}");

        let r = get(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\n"), "no body for HEAD: {r}");
        let r = get(addr, "GET /other HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        let r = get(addr, "DELETE /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && r.contains("Allow: GET, HEAD\r\n"), "{r}");
        drop(running);
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error() {
        let first = Exporter::bind("127.0.0.1:0".parse().unwrap(), Registry::new()).await.unwrap();
        let taken = first.local_addr().unwrap();
        assert!(Exporter::bind(taken, Registry::new()).await.is_err());
    }
}
