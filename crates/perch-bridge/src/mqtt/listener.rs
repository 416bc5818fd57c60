//! The MQTT accept loop: connection cap, TLS handshake with a deadline, one task per
//! connection. Takes an already bound listener (STYLE.md P5).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::bridge::Inner;
use crate::mqtt::connection;

pub(crate) async fn serve(
    bridge: Arc<Inner>,
    name: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = bridge.connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => { tracing::debug!(listener = name, error = %e, "accept failed"); continue; }
            },
        };
        let _ = stream.set_nodelay(true);
        let bridge = bridge.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(
                        bridge.options.tls_handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => connection::serve(bridge, s, peer).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "mqtt tls handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "mqtt tls handshake timed out"),
                    }
                }
                None => connection::serve(bridge, stream, peer).await,
            }
        });
    }
    tracing::info!(listener = name, "mqtt listener stopped");
}
