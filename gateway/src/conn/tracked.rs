//! The client stream under every connection: it reports header and preface progress to the
//! connection's [`State`], which the deadlines of `conn.rs` read.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use http::HeaderValue;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::H2_PREFACE_LEN;

/// Per-connection progress, shared between [`Guarded`] and the connection's [`Tracked`] stream.
#[derive(Debug, Default)]
pub(super) struct State {
    /// HTTP/1: the current request's header was parsed.
    pub(super) header_done: AtomicBool,
    /// HTTP/2: octets of the connection preface not read yet; 0 on HTTP/1.
    pub(super) preface_left: AtomicUsize,
    /// The client's address as a header value, for the address it was first made for
    /// (`address_value`).
    pub(super) address_value: OnceLock<(IpAddr, HeaderValue)>,
    /// Bytes to read before the stream's own (only when pipelining; see `serve_h1`).
    stashed: AtomicBool,
    stash: Mutex<Option<BytesMut>>,
}

impl State {
    pub(super) fn h2() -> Self {
        Self {
            preface_left: AtomicUsize::new(H2_PREFACE_LEN),
            ..Self::default()
        }
    }

    pub(super) fn stash(&self, bytes: BytesMut) {
        let mut stash = self.stash.lock().unwrap_or_else(PoisonError::into_inner);
        match stash.as_mut() {
            Some(pending) => pending.extend_from_slice(&bytes),
            None => *stash = Some(bytes),
        }
        self.stashed.store(true, Ordering::Release);
    }

    /// Moves stashed bytes into `buf`; false when there are none.
    fn unstash(&self, buf: &mut ReadBuf<'_>) -> bool {
        let mut stash = self.stash.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(pending) = stash.as_mut() else {
            self.stashed.store(false, Ordering::Release);
            return false;
        };
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending.split_to(n));
        if pending.is_empty() {
            *stash = None;
            self.stashed.store(false, Ordering::Release);
        }
        true
    }
}

/// A client stream that reports progress to its connection's [`State`] (or, without state,
/// just passes through: the TCP stream under a TLS handshake).
pub struct Tracked {
    inner: Stream,
    pub(super) state: Option<Arc<State>>,
}

impl Tracked {
    pub(super) fn plain(inner: Stream) -> Self {
        Self { inner, state: None }
    }

    pub(super) fn new(inner: Stream, state: Arc<State>) -> Self {
        Self {
            inner,
            state: Some(state),
        }
    }
}

impl fmt::Debug for Tracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracked")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(state) = &this.state else {
            return Pin::new(&mut *this.inner).poll_read(cx, buf);
        };
        if state.stashed.load(Ordering::Acquire) && state.unstash(buf) {
            return Poll::Ready(Ok(()));
        }
        let left = state.preface_left.load(Ordering::Relaxed);
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if left > 0 && read > 0 {
            state
                .preface_left
                .store(left.saturating_sub(read), Ordering::Release);
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Tracked {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Tracked {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Tracked {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Tracked {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Tracked {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Tracked {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Tracked {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
