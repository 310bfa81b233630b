//! The accept loop. `axum::serve` has no header read timeout, so a client sending its headers a
//! byte at a time (slowloris), or nothing at all, would hold its connection for ever; here each
//! connection is served by hyper's HTTP/1.1 server with a header read timeout, which also closes
//! keep-alive connections left idle that long. HTTP/1.1 only: hyper's protocol detection for
//! HTTP/2 cleartext waits for the client's first bytes without any timeout, and clients and
//! proxies reach seedbed over HTTP/1.1 (TLS, where HTTP/2 is negotiated, ends at a proxy).
//!
//! On shutdown the loop stops accepting, asks every connection to finish its request in flight
//! and close, and returns once all have: what `RunningServer::wait` waits for.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serve `app` on `listener` until `shutdown`, then drain the open connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // A connection reset before it was accepted concerns that client only; out
                    // of file descriptors, the loop must not spin while none free up.
                    if !is_connection_error(&error) {
                        tracing::error!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Event streams write small frames that must go out at once.
        let _ = stream.set_nodelay(true);
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Header timeouts and clients that hang up end here; nothing for the server to do.
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection closed");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}
