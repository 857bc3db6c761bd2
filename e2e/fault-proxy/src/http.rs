//! HTTP mode: each client connection carries one request. The proxy reads it whole, decides
//! its fault, and forwards it to the server with `Connection: close`, so the answer ends where
//! the server closes and the proxy never has to frame a response body. Clients see
//! `Connection: close` too and open a new connection for the next request.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{reset, Fault, Shared};

const MAX_HEAD: usize = 64 * 1024;

/// A request or response head, as lines, with what framing needs.
#[derive(Debug, PartialEq)]
pub struct Head {
    /// The request or status line.
    pub start: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn parse(raw: &[u8]) -> Option<Head> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut lines = text.trim_end_matches("\r\n").split("\r\n");
        let start = lines.next()?.to_owned();
        let headers = lines
            .map(|l| {
                l.split_once(':')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Head { start, headers })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// The head as sent on: `Connection: close`, no `Expect` (the proxy answered it).
    pub fn closing(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (k, v) in &self.headers {
            if !k.eq_ignore_ascii_case("connection")
                && !k.eq_ignore_ascii_case("expect")
                && !k.eq_ignore_ascii_case("keep-alive")
            {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }
}

/// Where the head ends in `buf` (after its blank line), if it is all there.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Where a chunked body that starts at `buf[0]` ends, if it is all there.
pub fn chunked_end(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, then a blank line.
            loop {
                let end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
                let blank = end == at;
                at = end + 2;
                if blank {
                    return Some(at);
                }
            }
        }
        at += size + 2;
        if at > buf.len() {
            return None;
        }
    }
}

async fn read_more<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    match r.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// Reads a head; returns it and the bytes read past it.
async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Option<(Head, Vec<u8>)> {
    let mut buf = Vec::new();
    let end = loop {
        if let Some(e) = head_end(&buf) {
            break e;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        read_more(r, &mut buf).await?;
    };
    let head = Head::parse(&buf[..end])?;
    Some((head, buf.split_off(end)))
}

/// The request body, raw (chunked bodies keep their framing).
async fn read_body(client: &mut TcpStream, head: &Head, mut buf: Vec<u8>) -> Option<Vec<u8>> {
    if head.chunked() {
        while chunked_end(&buf).is_none() {
            read_more(client, &mut buf).await?;
        }
        buf.truncate(chunked_end(&buf)?);
    } else {
        let n = head.content_length().unwrap_or(0) as usize;
        while buf.len() < n {
            read_more(client, &mut buf).await?;
        }
        buf.truncate(n);
    }
    Some(buf)
}

pub(crate) async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    let Some((head, rest)) = read_head(&mut client).await else {
        return;
    };
    if head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        && client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
    {
        return;
    }
    let Some(body) = read_body(&mut client, &head, rest).await else {
        return;
    };
    let mut parts = head.start.split(' ');
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    match shared.decide(&method, &target) {
        Some(Fault::SlowDown) => error_answer(client, 503, "SlowDown", &method).await,
        Some(Fault::Status(code)) => error_answer(client, code, s3_code(code), &method).await,
        Some(Fault::Reset | Fault::Refuse | Fault::CutAfter(_)) => reset(client),
        Some(Fault::Hang(d)) => {
            tokio::time::sleep(d).await;
            reset(client);
        }
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            forward(client, &shared, &head, &body, Answer::Whole).await;
        }
        Some(Fault::LostAnswer) => forward(client, &shared, &head, &body, Answer::Lost).await,
        Some(Fault::Cut) => forward(client, &shared, &head, &body, Answer::Half).await,
        None => forward(client, &shared, &head, &body, Answer::Whole).await,
    }
}

fn s3_code(status: u16) -> &'static str {
    match status {
        403 => "AccessDenied",
        404 => "NoSuchKey",
        500 => "InternalError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "InjectedError",
    }
}

async fn error_answer(mut client: TcpStream, status: u16, code: &str, method: &str) {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by mb-fault-proxy</Message><RequestId>mb-fault-proxy</RequestId></Error>"
    );
    let head = format!(
        "HTTP/1.1 {status} {code}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = client.write_all(head.as_bytes()).await;
    if method != "HEAD" {
        let _ = client.write_all(body.as_bytes()).await;
    }
    let _ = client.shutdown().await;
}

/// How much of the server's answer reaches the client.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Whole,
    /// The headers and half of the body, then a reset.
    Half,
    /// Nothing: the server answered, the client's connection is reset.
    Lost,
}

async fn forward(mut client: TcpStream, shared: &Shared, head: &Head, body: &[u8], answer: Answer) {
    let Ok(mut upstream) = TcpStream::connect(shared.upstream).await else {
        return reset(client);
    };
    let _ = upstream.set_nodelay(true);
    if upstream.write_all(&head.closing()).await.is_err() || upstream.write_all(body).await.is_err() {
        return reset(client);
    }
    let Some((resp, rest)) = read_head(&mut upstream).await else {
        return reset(client);
    };
    match answer {
        Answer::Lost => {
            let mut sink = Vec::new();
            let _ = upstream.read_to_end(&mut sink).await;
            reset(client);
        }
        Answer::Half => {
            let half = resp.content_length().unwrap_or(rest.len() as u64 * 2) / 2;
            let _ = client.write_all(&resp.closing()).await;
            let mut sent = Vec::from(&rest[..rest.len().min(half as usize)]);
            while (sent.len() as u64) < half {
                if read_more(&mut upstream, &mut sent).await.is_none() {
                    break;
                }
            }
            sent.truncate(half as usize);
            let _ = client.write_all(&sent).await;
            let _ = client.flush().await;
            reset(client);
        }
        Answer::Whole => {
            if client.write_all(&resp.closing()).await.is_err() || client.write_all(&rest).await.is_err() {
                return;
            }
            let _ = tokio::io::copy(&mut upstream, &mut client).await;
            let _ = client.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_go_on_with_connection_close() {
        let h = Head::parse(b"PUT /b/k?partNumber=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n\r\n").unwrap();
        assert_eq!(h.start, "PUT /b/k?partNumber=1 HTTP/1.1");
        assert_eq!(h.content_length(), Some(5));
        assert_eq!(h.header("HOST"), Some("x"));
        let out = String::from_utf8(h.closing()).unwrap();
        assert_eq!(
            out,
            "PUT /b/k?partNumber=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(Head::parse(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"), None);
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(chunked_end(body), Some(body.len()));
        let mut more = body.to_vec();
        more.extend_from_slice(b"GET /next");
        assert_eq!(chunked_end(&more), Some(body.len()));
        for cut in [1, 8, 20, body.len() - 1] {
            assert_eq!(chunked_end(&body[..cut]), None, "incomplete at {cut}");
        }
    }
}
