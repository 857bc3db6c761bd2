//! TCP mode: a fault per connection (gRPC runs many calls on one connection).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{reset, Fault, Shared};

pub(crate) async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let fault = shared.decide("", "");
    match fault {
        Some(Fault::Refuse | Fault::Reset) => return reset(client),
        Some(Fault::Hang(d)) => {
            tokio::time::sleep(d).await;
            return reset(client);
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        _ => {}
    }
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        return reset(client);
    };
    let _ = upstream.set_nodelay(true);
    match fault {
        Some(Fault::CutAfter(n)) => cut_after(client, upstream, n).await,
        _ => {
            let (mut c, mut u) = (client, upstream);
            let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
        }
    }
}

/// Forwards both ways until the server has sent `limit` bytes, then resets both sides.
async fn cut_after(mut client: TcpStream, mut upstream: TcpStream, limit: u64) {
    {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let to_server = tokio::io::copy(&mut cr, &mut uw);
        let to_client = async {
            let mut sent = 0u64;
            let mut buf = vec![0u8; 16 * 1024];
            while sent < limit {
                let want = buf.len().min((limit - sent) as usize);
                match ur.read(&mut buf[..want]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        sent += n as u64;
                    }
                }
            }
        };
        tokio::select! {
            _ = to_server => {}
            () = to_client => {}
        }
    }
    reset(client);
    reset(upstream);
}
