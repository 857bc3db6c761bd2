//! The S3 client against a loopback HTTP server that misbehaves as S3 servers do under load:
//! `503 SlowDown` before a response (the SDK's retries, [`S3_ATTEMPTS`] of them), and a body cut
//! off after its headers (fetched again by the store, [`BODY_ATTEMPTS`] in all).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use milvus_backfill::config::{S3Credentials, S3Endpoint};
use milvus_backfill::store::{Store, BODY_ATTEMPTS, S3_ATTEMPTS};

#[derive(Clone, Copy, Debug)]
enum Reply {
    SlowDown,
    /// The headers announce the whole object; half of it is sent, then the connection closes.
    Cut,
    Full,
}

const BODY: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz";

/// Serves GETs on 127.0.0.1 with `plan`'s replies in order, then `Full`; counts the requests.
async fn serve(plan: Vec<Reply>) -> (Store, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let plan = Arc::new(Mutex::new(plan.into_iter()));
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            tokio::spawn(connection(conn, plan.clone(), seen.clone()));
        }
    });
    let ep = S3Endpoint {
        endpoint: addr.to_string(),
        region: "us-east-1".into(),
        use_ssl: false,
    };
    let creds = S3Credentials {
        access_key: "test".into(),
        secret_key: "test".into(),
    };
    (Store::s3(&ep, "bkt", Some(&creds)).await, count)
}

async fn connection(mut conn: TcpStream, plan: Arc<Mutex<std::vec::IntoIter<Reply>>>, count: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    loop {
        // One request: a GET has no body, so it ends with its headers.
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        buf.drain(..end);
        count.fetch_add(1, Ordering::SeqCst);
        let reply = plan.lock().unwrap().next().unwrap_or(Reply::Full);
        let head = |status: &str, len: usize| format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\n\r\n");
        match reply {
            Reply::SlowDown => {
                let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>";
                let msg = head("503 Slow Down", xml.len()) + xml;
                if conn.write_all(msg.as_bytes()).await.is_err() {
                    return;
                }
            }
            Reply::Cut => {
                let _ = conn.write_all(head("200 OK", BODY.len()).as_bytes()).await;
                let _ = conn.write_all(&BODY[..BODY.len() / 2]).await;
                return;
            }
            Reply::Full => {
                let mut msg = head("200 OK", BODY.len()).into_bytes();
                msg.extend_from_slice(BODY);
                if conn.write_all(&msg).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::test]
async fn slow_down_replies_are_retried_past_the_sdks_default_three_attempts() {
    let slow_downs = 4;
    assert!(slow_downs < S3_ATTEMPTS as usize && slow_downs >= 3);
    let (store, count) = serve(vec![Reply::SlowDown; slow_downs]).await;
    assert_eq!(&store.get("k").await.unwrap()[..], BODY);
    assert_eq!(count.load(Ordering::SeqCst), slow_downs + 1);
}

#[tokio::test]
async fn a_body_cut_after_its_headers_is_fetched_again() {
    let (store, count) = serve(vec![Reply::Cut, Reply::Cut]).await;
    assert_eq!(&store.get_range("k", 0..BODY.len() as u64).await.unwrap()[..], BODY);
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_body_that_keeps_breaking_fails_with_a_message_that_says_so() {
    let (store, count) = serve(vec![Reply::Cut; BODY_ATTEMPTS as usize]).await;
    let e = store.get("k").await.unwrap_err().to_string();
    assert!(e.contains("s3://bkt/k: the response body broke off 4 times"), "{e}");
    assert_eq!(count.load(Ordering::SeqCst), BODY_ATTEMPTS as usize);
}
