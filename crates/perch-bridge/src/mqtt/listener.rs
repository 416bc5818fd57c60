//! The MQTT accept loop: admission through the shared [`Gate`] (connection cap, per-source cap,
//! back-off on accept errors), TLS handshake with a deadline, one task per connection. Takes an
//! already bound listener (STYLE.md P5).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::bridge::Inner;
use crate::listen::Gate;
use crate::mqtt::connection;

pub(crate) async fn serve(
    bridge: Arc<Inner>,
    name: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut gate = Gate::new(
        name,
        bridge.connections.clone(),
        bridge.options.max_connections_per_source,
    );
    loop {
        let admitted = tokio::select! {
            _ = &mut shutdown => break,
            a = gate.next(&listener) => match a { Some(a) => a, None => break },
        };
        let bridge = bridge.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let (stream, peer) = (admitted.stream, admitted.peer);
            let _permits = admitted.permits;
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
