//! Noticing that a client went away while its request waits for inference.
//!
//! actix-web keeps running a handler after the peer closes its connection, so on connect we keep a
//! duplicate of the socket's descriptor, and a request watches it: `peek` returning 0 bytes means the
//! peer sent FIN. The handler then stops, dropping its reply channels, and the Batcher discards the
//! abandoned items before they reach a worker.

use std::any::Any;
use std::sync::Arc;

use actix_web::HttpRequest;
use actix_web::dev::Extensions;

/// A duplicate of the connection's socket (same open file, own descriptor).
pub struct PeerSocket(Arc<std::net::TcpStream>);

/// `HttpServer::on_connect` hook.
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    use std::os::fd::AsFd;
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>()
        && let Ok(fd) = tcp.as_fd().try_clone_to_owned()
    {
        ext.insert(PeerSocket(Arc::new(std::net::TcpStream::from(fd))));
    }
}

/// Resolves when the client of `req` has closed its connection; never, if that cannot be watched
/// or the client sent more data (a pipelined request).
pub async fn client_gone(req: &HttpRequest) {
    let watched = req
        .conn_data::<PeerSocket>()
        .and_then(|p| p.0.try_clone().ok())
        .and_then(|s| tokio::net::TcpStream::from_std(s).ok());
    if let Some(stream) = watched {
        let mut buf = [0u8; 1];
        if let Ok(0) = stream.peek(&mut buf).await {
            return;
        }
    }
    std::future::pending::<()>().await
}
