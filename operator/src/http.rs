//! `/healthz`, `/readyz` and `/metrics` on a small hand-written HTTP/1.1 server: GET only,
//! one request per connection, bounded request size and time.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;

/// Readiness: every watched scope has filled its Job cache. With leader election a standby
/// replica is ready too, or a rolling update would wait forever for a Pod that cannot lead
/// until the old one goes.
pub struct Health {
    pub metrics: Arc<Metrics>,
    pub scopes: u64,
    pub leader_election: bool,
}

impl Health {
    pub fn ready(&self) -> bool {
        let standby = self.leader_election && self.metrics.leader.get() == 0;
        standby || self.metrics.ready_scopes.get() >= self.scopes
    }
}

/// Status line, content type and body for a request line such as `GET /metrics HTTP/1.1`.
pub fn respond(request_line: &str, health: &Health) -> (&'static str, &'static str, String) {
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "only GET\n".into());
    }
    match path {
        "/healthz" | "/livez" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" if health.ready() => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => ("503 Service Unavailable", TEXT, "Job cache not ready\n".into()),
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            health.metrics.render(),
        ),
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

async fn handle(mut stream: TcpStream, health: Arc<Health>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    // Read until the end of the headers (or 4 KiB): only the request line matters.
    let read = async {
        loop {
            let n = stream.read(&mut buf[len..]).await?;
            len += n;
            if n == 0 || len == buf.len() || buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), read).await.is_err() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&buf[..len]);
    let line = text.lines().next().unwrap_or("");
    let (status, ctype, body) = respond(line, &health);
    let head = line.starts_with("HEAD ");
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if head { "" } else { body.as_str() }
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let h = health.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, h).await {
                        tracing::debug!(error = %e, "http connection");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "http accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(ready: bool) -> Health {
        let metrics = Arc::new(Metrics::default());
        if ready {
            metrics.ready_scopes.inc();
        }
        Health {
            metrics,
            scopes: 1,
            leader_election: false,
        }
    }

    #[test]
    fn a_standby_replica_is_ready_and_a_leader_waits_for_its_caches() {
        let mut h = health(false);
        h.leader_election = true;
        assert!(h.ready(), "standby");
        h.metrics.leader.set(1);
        assert!(!h.ready(), "leading, caches not filled");
        h.metrics.ready_scopes.inc();
        assert!(h.ready());
    }

    #[test]
    fn routes() {
        let h = health(false);
        assert_eq!(respond("GET /healthz HTTP/1.1", &h).0, "200 OK");
        assert_eq!(respond("GET /readyz HTTP/1.1", &h).0, "503 Service Unavailable");
        assert_eq!(respond("GET /readyz HTTP/1.1", &health(true)).0, "200 OK");
        assert_eq!(respond("POST /healthz HTTP/1.1", &h).0, "405 Method Not Allowed");
        assert_eq!(respond("GET /nope HTTP/1.1", &h).0, "404 Not Found");
        assert_eq!(respond("", &h).0, "405 Method Not Allowed");
        let (s, ct, body) = respond("GET /metrics?x=1 HTTP/1.1", &h);
        assert_eq!(s, "200 OK");
        assert!(ct.starts_with("text/plain; version=0.0.4"));
        assert!(body.contains("milvus_backfill_operator_reconciles_total"));
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(health(true))));
        for (path, want) in [
            ("/healthz", "200 OK"),
            ("/readyz", "200 OK"),
            ("/metrics", "200 OK"),
            ("/x", "404"),
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {want}")), "{path}: {out}");
            let (head, body) = out.split_once("\r\n\r\n").unwrap();
            let cl: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(cl, body.len());
        }
        server.abort();
    }
}
