//! The proxy between a raw client and a small loopback server: each fault does what it says,
//! and a request without a fault arrives and comes back byte for byte.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mb_fault_proxy::{Mode, Proxy, Rule};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz";

/// An HTTP server: answers every request with [`BODY`] (keep-alive unless asked to close) and
/// counts the requests that reached it.
async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = l.accept().await.unwrap();
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                while buf.len() < end + len {
                    let n = c.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                s.fetch_add(1, Ordering::SeqCst);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
                    BODY.len()
                );
                c.write_all(reply.as_bytes()).await.unwrap();
                c.write_all(BODY).await.unwrap();
                if head.contains("Connection: close") {
                    let _ = c.shutdown().await;
                }
            });
        }
    });
    (addr, seen)
}

/// Sends one request and reads until the connection ends: the bytes, and whether it ended
/// with an error (a reset) rather than an orderly close.
async fn exchange(addr: SocketAddr, request: &str) -> (Vec<u8>, bool) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.read(&mut chunk)).await {
            Ok(Ok(0)) => return (out, false),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => return (out, true),
            Err(_) => panic!("no end within 5 s; got {:?}", String::from_utf8_lossy(&out)),
        }
    }
}

async fn proxy(upstream: SocketAddr, rules: &[&str]) -> Proxy {
    let rules = rules.iter().map(|r| Rule::parse(r).unwrap()).collect();
    Proxy::start("127.0.0.1:0", upstream, Mode::Http, rules, 1)
        .await
        .unwrap()
}

const GET: &str = "GET /bucket/a/insert_log/1 HTTP/1.1\r\nHost: x\r\n\r\n";
const PUT: &str = "PUT /bucket/a/manifest.json HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody";

#[tokio::test]
async fn without_a_fault_the_answer_comes_back_whole_with_connection_close() {
    let (up, seen) = server().await;
    let p = proxy(up, &["slowdown key=never"]).await;
    let (out, reset) = exchange(p.addr(), PUT).await;
    let text = String::from_utf8_lossy(&out);
    assert!(!reset);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("Connection: close\r\n"),
        "{text}"
    );
    assert!(out.ends_with(BODY), "{text}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    let s = p.stats();
    assert_eq!((s.requests, s.faults, s.rules[0].matched), (1, 0, 0));
}

#[tokio::test]
async fn slowdown_and_status_answer_without_reaching_the_server() {
    let (up, seen) = server().await;
    let p = proxy(up, &["slowdown method=GET first=1", "status:500 method=PUT"]).await;
    let (out, _) = exchange(p.addr(), GET).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 503 SlowDown\r\n") && text.contains("<Code>SlowDown</Code>"),
        "{text}"
    );
    let (out, _) = exchange(p.addr(), PUT).await;
    assert!(String::from_utf8_lossy(&out).contains("<Code>InternalError</Code>"));
    assert_eq!(seen.load(Ordering::SeqCst), 0, "neither request reached the server");
    let (out, _) = exchange(p.addr(), GET).await;
    assert!(out.ends_with(BODY), "first=1: the second GET goes through");
    assert_eq!(p.stats().faults, 2);
}

#[tokio::test]
async fn reset_and_hang_close_without_an_answer() {
    let (up, seen) = server().await;
    let p = proxy(up, &["reset first=1", "hang:200 first=1"]).await;
    for _ in 0..2 {
        let (out, _) = exchange(p.addr(), GET).await;
        assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_lost_answer_reaches_the_server_but_not_the_client() {
    let (up, seen) = server().await;
    let p = proxy(up, &["lost-answer method=PUT"]).await;
    let (out, _) = exchange(p.addr(), PUT).await;
    assert!(out.is_empty());
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the write was applied");
}

#[tokio::test]
async fn cut_sends_the_headers_and_half_of_the_body() {
    let (up, _) = server().await;
    let p = proxy(up, &["cut key=/insert_log/"]).await;
    let (out, _) = exchange(p.addr(), GET).await;
    let text = String::from_utf8_lossy(&out);
    let body_at = text.find("\r\n\r\n").unwrap() + 4;
    assert!(text.contains(&format!("Content-Length: {}", BODY.len())), "{text}");
    assert_eq!(&out[body_at..], &BODY[..BODY.len() / 2]);
}

#[tokio::test]
async fn tcp_mode_refuses_then_forwards_and_cuts_after_a_byte_count() {
    let (up, _) = server().await;
    let rules = vec![
        Rule::parse("refuse first=1").unwrap(),
        Rule::parse("cut-after:10 first=1").unwrap(),
    ];
    let p = Proxy::start("127.0.0.1:0", up, Mode::Tcp, rules, 1).await.unwrap();
    let (out, _) = exchange(p.addr(), GET).await;
    assert!(out.is_empty(), "refused");
    let (out, _) = exchange(p.addr(), GET).await;
    assert_eq!(out.len(), 10, "{:?}", String::from_utf8_lossy(&out));
    let close = "GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
    let (out, _) = exchange(p.addr(), close).await;
    assert!(out.ends_with(BODY), "then plain forwarding");
    assert_eq!(p.stats().requests, 3);
}

#[tokio::test]
async fn sever_closes_open_connections_and_new_rules_take_over() {
    let (up, _) = server().await;
    let p = Proxy::start("127.0.0.1:0", up, Mode::Tcp, vec![], 1).await.unwrap();
    let mut c = TcpStream::connect(p.addr()).await.unwrap();
    c.write_all(GET.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(n > 0, "the keep-alive connection answered");
    p.set_rules(vec![Rule::parse("refuse").unwrap()]);
    p.sever();
    let end = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(end, Ok(0) | Err(_)), "the open connection was closed");
    let (out, _) = exchange(p.addr(), GET).await;
    assert!(out.is_empty(), "and new ones are refused");
    assert_eq!(p.stats().faults, 1);
}

#[tokio::test]
async fn down_refuses_connections_and_up_listens_again_on_the_same_address() {
    let (up, _) = server().await;
    let p = proxy(up, &[]).await;
    p.down();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = TcpStream::connect(p.addr()).await;
    assert!(refused.is_err(), "nothing listens while down");
    p.up().await.unwrap();
    let (out, _) = exchange(p.addr(), GET).await;
    assert!(out.ends_with(BODY));
}
