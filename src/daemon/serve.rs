//! What every endpoint a client can reach shares (the plugin's socket; the agent's metrics,
//! hook and health listeners), so that none of them can be held, flooded or made to log
//! without bound:
//! - an accept loop that backs off when `accept` fails (EMFILE, ENFILE, ENOBUFS) instead of
//!   spinning, logging within the log budget;
//! - a cap on open connections ([`Cap`]): past it a connection is closed at once;
//! - deadlines: HTTP headers, and the idle wait for the next request on a kept-alive
//!   connection ([`spawn_http`]); whole writes ([`write_within`]);
//! - the descriptor limit raised to the hard one, which the caps are sized against
//!   ([`raise_nofile`]).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::LogBudget;

/// A listener whose connections [`accept_loop`] takes.
pub trait Listener {
    type Stream: Send + 'static;
    fn accept_stream(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Accepts connections for ever and hands each to `serve`, which must not block (it
/// admits the stream against a [`Cap`] and spawns). A failed `accept` waits (see
/// [`AcceptBackoff`]) and is logged within `log`: a full descriptor table costs no CPU.
pub async fn accept_loop<L: Listener>(
    listener: L,
    log: &LogBudget,
    what: &str,
    mut serve: impl FnMut(L::Stream),
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        match listener.accept_stream().await {
            Ok(stream) => {
                backoff.succeeded();
                serve(stream);
            }
            Err(e) => {
                log.warn(
                    &format!("{what}: accept failed; backing off"),
                    &e.to_string(),
                );
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    }
}

/// At most so many connections of one kind open at once.
#[derive(Clone)]
pub struct Cap(Arc<Semaphore>);

impl Cap {
    pub fn new(max: usize) -> Cap {
        Cap(Arc::new(Semaphore::new(max)))
    }

    /// A slot for one connection, held until the permit drops; `None` when all are taken
    /// (logged within `log`): the caller drops the stream, which closes it at once.
    pub fn admit(&self, log: &LogBudget, what: &str, peer: &str) -> Option<OwnedSemaphorePermit> {
        let permit = self.0.clone().try_acquire_owned().ok();
        if permit.is_none() {
            log.warn(&format!("{what}: connection refused: too many open"), peer);
        }
        permit
    }
}

/// Serves HTTP/1.1 with keep-alive on `io`, holding `permit` until the connection ends.
/// With a `deadline`, each request's headers must arrive within it, and so must the next
/// request on a kept-alive connection (hyper's header timer also runs while the connection
/// waits idle; tested below): a client that holds a connection open and silent loses it.
/// `None` only for clients that are trusted to keep one open (dockerd's own).
pub fn spawn_http<IO, S, F>(
    io: IO,
    permit: OwnedSemaphorePermit,
    deadline: Option<Duration>,
    service: S,
) where
    IO: tokio::io::AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Fn(hyper::Request<hyper::body::Incoming>) -> F + Send + 'static,
    F: Future<Output = Result<hyper::Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    tokio::spawn(async move {
        let _permit = permit;
        let io = hyper_util::rt::TokioIo::new(io);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .keep_alive(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(deadline);
        let service = hyper::service::service_fn(service);
        if let Err(e) = builder.serve_connection(io, service).await {
            tracing::debug!(error = %e, "connection ended");
        }
    });
}

/// Writes all of `bytes` within `deadline`; a client that does not read loses the reply
/// (and its slot) instead of holding it.
pub async fn write_within(
    out: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    deadline: Duration,
) -> std::io::Result<()> {
    tokio::time::timeout(deadline, out.write_all(bytes))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// The pause after a failed `accept` (EMFILE, ENFILE, ENOBUFS): doubling from 5 ms to 1 s,
/// so that a full descriptor table costs no CPU while it lasts.
#[derive(Debug, Default)]
pub struct AcceptBackoff(u32);

impl AcceptBackoff {
    pub fn failed(&mut self) -> Duration {
        let ms = 5u64 << self.0.min(8);
        self.0 += 1;
        Duration::from_millis(ms.min(1000))
    }

    pub fn succeeded(&mut self) {
        self.0 = 0;
    }
}

/// The descriptor limit before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    pub soft_was: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard one: the default soft 1024 is what a flood
/// of connections and a large node's scan (a descriptor per namespace) compete for.
/// A hard limit of "infinity" cannot be the soft one for descriptors (the kernel's
/// `nr_open` caps it); the soft limit is then raised to `nr_open`.
pub fn raise_nofile() -> nix::Result<NoFile> {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
    let (soft_was, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let mut soft = hard;
    if hard == RLIM_INFINITY {
        soft = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if soft > soft_was {
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
    } else {
        soft = soft_was;
    }
    Ok(NoFile {
        soft_was,
        soft,
        hard,
    })
}

/// How many metrics connections may be open at once with `limit` descriptors: 64, and
/// never more than 1/16 of the limit, so that a flood of scrapers leaves the rest to the
/// hook (16), the health listener (4) and the sweeps' /proc reads.
pub fn metrics_cap(limit: u64) -> usize {
    (limit / 16).clamp(1, 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn accept_backoff_doubles_to_a_second() {
        let mut b = AcceptBackoff::default();
        let first = b.failed();
        assert_eq!(first, Duration::from_millis(5));
        assert_eq!(b.failed(), Duration::from_millis(10));
        for _ in 0..20 {
            b.failed();
        }
        assert_eq!(b.failed(), Duration::from_secs(1));
        b.succeeded();
        assert_eq!(b.failed(), first);
    }

    #[test]
    fn the_metrics_cap_is_a_small_fraction_of_the_limit() {
        assert_eq!(metrics_cap(1 << 20), 64);
        assert_eq!(metrics_cap(1024), 64);
        assert_eq!(metrics_cap(512), 32);
        assert_eq!(metrics_cap(8), 1);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let n = raise_nofile().unwrap();
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((n.soft, n.hard), (soft, hard));
        assert!(n.soft >= n.soft_was);
        assert!(soft == hard || hard == nix::sys::resource::RLIM_INFINITY);
    }

    /// An HTTP server on loopback with `cap` connections and `deadline`, as the agent's
    /// metrics endpoint runs.
    async fn server(cap: usize, deadline: Duration) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(LogBudget::new(10));
        let cap = Cap::new(cap);
        tokio::spawn(async move {
            accept_loop(listener, &log.clone(), "test", |stream| {
                if let Some(permit) = cap.admit(&log, "test", "") {
                    spawn_http(stream, permit, Some(deadline), |_req| async {
                        Ok(hyper::Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                    });
                }
            })
            .await
        });
        addr
    }

    /// Reads until the peer closes; how long that took, or `None` past `within`.
    async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(start + within, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                Ok(Ok(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_at_once() {
        let addr = server(2, Duration::from_secs(30)).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Accepted in order: the third finds both slots taken.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut third, Duration::from_secs(2))
                .await
                .is_some()
        );
        assert!(
            closed_within(&mut held[0], Duration::from_millis(300))
                .await
                .is_none()
        );
        // A slot frees when a held connection goes.
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    #[tokio::test]
    async fn silent_and_idle_connections_are_closed_at_the_deadline() {
        let deadline = Duration::from_millis(500);
        let addr = server(4, deadline).await;
        // No headers at all.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let took = closed_within(&mut silent, Duration::from_secs(5)).await;
        assert!(took.is_some_and(|t| t >= deadline), "{took:?}");
        // Half a request line, then nothing.
        let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"GET /metr").await.unwrap();
        assert!(
            closed_within(&mut partial, Duration::from_secs(5))
                .await
                .is_some()
        );
        // One kept-alive request answered, then idle: closed too.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let took = closed_within(&mut idle, Duration::from_secs(5)).await;
        assert!(took.is_some_and(|t| t >= deadline / 2), "{took:?}");
    }
}
