//! Serves an axum router (REST, or tonic's gRPC routes) on an already bound listener, over
//! plain TCP or TLS, HTTP/1.1 and HTTP/2 (h2c prior knowledge for gRPC), with graceful shutdown.
//!
//! Owns the per-connection deadlines (TLS handshake, HTTP/1 request head, idle) and the
//! listener's [`HttpLimits`]; admission (connection caps, accept back-off) is the shared
//! [`perch_bridge::listen::Gate`]. Does not own routing or authentication (see `admin`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use perch_bridge::listen::Gate;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::Service;

/// Most concurrent connections one HTTP listener (admin, gRPC, device bridge) serves by default;
/// more wait in the backlog. Flag `--http-max-connections`.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most concurrent connections from one IP address to one HTTP listener by default (a quarter
/// of [`MAX_CONNECTIONS`]); more are closed at once. Flag `--http-max-connections-per-source`.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 256;
/// A client must finish its TLS handshake within this time (default 10 s).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/1 connection waiting for a request head (a new connection, or a kept-alive one between
/// requests) is closed when the whole head has not arrived within this time (default 20 s).
/// Flag `--http-header-timeout`.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);
/// A connection on which no byte moved in either direction for this long is closed (stalled
/// request bodies, dead peers; default 120 s, above the longest server-side wait, a 10 s pull).
/// HTTP/2 keepalive pings count as traffic; a request awaiting its response keeps the connection
/// busy, not idle. Flag `--http-idle-timeout`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// HTTP/2 pings on idle connections (streaming pull), and how long a ping may go unanswered.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long shutdown waits for in-flight requests before closing their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The connection limits of one HTTP listener (defaults: the constants above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: MAX_CONNECTIONS,
            max_connections_per_source: MAX_CONNECTIONS_PER_SOURCE,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// Accepts connections until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut gate = Gate::new(
        name,
        Arc::new(Semaphore::new(limits.max_connections)),
        limits.max_connections_per_source,
    );
    tokio::pin!(shutdown);
    loop {
        let admitted = tokio::select! {
            _ = &mut shutdown => break,
            a = gate.next(&listener) => match a { Some(a) => a, None => break },
        };
        let router = router.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let (stream, peer) = (admitted.stream, admitted.peer);
            let _permits = admitted.permits;
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => serve_connection(s, router, watcher, limits).await,
                        Ok(Err(e)) => {
                            tracing::debug!(listener = name, %peer, error = %e, "tls handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(listener = name, %peer, "tls handshake timed out");
                            return;
                        }
                    }
                }
                None => serve_connection(stream, router, watcher, limits).await,
            };
            match result {
                Ok(Some(why)) => tracing::debug!(listener = name, %peer, why, "connection closed"),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error")
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "in-flight requests did not finish in time; closing them"
        );
    }
}

/// Serves HTTP on an established (plain or TLS) stream until the peer closes it, a deadline
/// closes it (Some(why)), or it fails.
async fn serve_connection<S>(
    stream: S,
    router: Router,
    watcher: hyper_util::server::graceful::Watcher,
    limits: HttpLimits,
) -> Result<Option<&'static str>, Box<dyn std::error::Error + Send + Sync>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // Long streaming pulls stay alive through idle NATs and proxies.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT);
    let activity = Activity::new();
    // A request received whole and waiting for its response is not idle, however long the
    // handler takes; one whose body stalls is.
    let busy = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let waiting = Arc::new(Waiting::new(busy.clone()));
        if request.body().is_end_stream() {
            waiting.received();
        }
        let request = request.map(|body| {
            axum::body::Body::new(Received {
                inner: body,
                waiting: waiting.clone(),
            })
        });
        let mut router = router.clone();
        async move {
            let response = router.call(request).await;
            waiting.answered();
            response
        }
    });
    let stream = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    let connection = watcher.watch(
        builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned(),
    );
    tokio::select! {
        r = connection => r.map(|()| None),
        why = activity.expired(limits.header_read_timeout, limits.idle_timeout) => Ok(Some(why)),
    }
}

/// When a connection (after its TLS handshake) last moved a byte, in milliseconds since it
/// started, whether the peer has sent anything yet, and how many requests, received whole, await
/// their response.
#[derive(Debug, Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
    heard: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
}

/// Where one request is: its body still arriving, received whole and awaiting the response
/// (counted in [`Activity::in_flight`]), or answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Receiving,
    Waiting,
    Answered,
}

/// One request's [`Stage`], kept in step with its connection's in-flight count.
struct Waiting {
    activity: Activity,
    stage: Mutex<Stage>,
}

impl Waiting {
    fn new(activity: Activity) -> Waiting {
        Waiting {
            activity,
            stage: Mutex::new(Stage::Receiving),
        }
    }

    /// The whole request body has arrived: the server is working, the connection is not idle.
    fn received(&self) {
        let mut stage = self.stage.lock().unwrap_or_else(|e| e.into_inner());
        if *stage == Stage::Receiving {
            *stage = Stage::Waiting;
            self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The response head is out (or the request was dropped): the idle clock restarts.
    fn answered(&self) {
        let mut stage = self.stage.lock().unwrap_or_else(|e| e.into_inner());
        if *stage == Stage::Waiting {
            self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        *stage = Stage::Answered;
        self.activity.touch();
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.answered();
    }
}

/// A request body that marks its request [`Waiting`] once it has been read to the end.
struct Received {
    inner: Incoming,
    waiting: Arc<Waiting>,
}

impl hyper::body::Body for Received {
    type Data = axum::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.waiting.received();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::default(),
            heard: Arc::default(),
            in_flight: Arc::default(),
        }
    }

    fn heard(&self) {
        self.heard.store(true, Ordering::Relaxed);
        self.touch();
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves (with the reason) once the peer sent nothing within `first_byte` of the start,
    /// or once no byte moved in either direction for `idle` while no request awaited its
    /// response. (Hyper's own HTTP/1 header timeout only starts once the protocol is detected,
    /// so a silent connection needs this one.)
    async fn expired(&self, first_byte: Duration, idle: Duration) -> &'static str {
        loop {
            let (deadline, why) = if self.in_flight.load(Ordering::Relaxed) > 0 {
                (Instant::now() + idle, "")
            } else if self.heard.load(Ordering::Relaxed) {
                let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
                (self.start + last + idle, "idle timeout")
            } else {
                (
                    self.start + first_byte,
                    "no request within the header timeout",
                )
            };
            if Instant::now() >= deadline && !why.is_empty() {
                return why;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A socket that records each successful read or write in its [`Activity`].
struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.heard();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
