//! The accept loop: a capped number of connections (`slots`), each under deadlines, so
//! that no client can hold the agent's descriptors, its event loop, or its shutdown.
use std::{
    convert::Infallible,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use axum::http::{HeaderName, HeaderValue};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;

use super::{
    auth::BasicAuth,
    fd_budget,
    gate::Gate,
    slots::{Admission, Slot, Slots},
    web_config::WebConfig,
};
use crate::daemon::Shared;

/// A request's head must arrive within this, and an idle keep-alive connection closes
/// after it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer, whatever it does (a client that never reads its response).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Bounds a request's head (request line and headers); hyper's minimum is 8 KiB.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// What in-flight requests get after SIGTERM before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Refusals (full, accept errors) are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long the accept loop waits for an evicted connection to close its socket.
const EVICTION_WAIT: Duration = Duration::from_millis(100);

pub struct Listener {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    auth: Option<BasicAuth>,
    headers: Vec<(HeaderName, HeaderValue)>,
    max_connections: usize,
}

impl Listener {
    /// Binds before the probes load, so a taken port fails start-up at once.
    pub async fn bind(
        address: SocketAddr,
        web: WebConfig,
        max_connections: u32,
    ) -> Result<Listener> {
        if web.tls.is_none() && !web.users.is_empty() {
            log::warn!("basic auth without TLS: passwords cross the network in clear text");
        }
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        Ok(Listener {
            listener,
            tls: web.tls.map(TlsAcceptor::from),
            auth: BasicAuth::new(&web.users).context("cannot prepare basic auth")?,
            headers: web.headers,
            max_connections: fd_budget::connection_cap(max_connections as usize),
        })
    }

    /// `https://ADDRESS/` as bound (the real port when asked for port 0).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        match self.listener.local_addr() {
            Ok(address) => format!("{scheme}://{address}/"),
            Err(error) => format!("{scheme}://(unknown address: {error})/"),
        }
    }

    /// Serves until `shutdown` completes, then gives open requests a short grace.
    pub async fn serve(self, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
        let router = super::router(shared.clone());
        let gate = Arc::new(Gate::new(router, self.auth, self.headers));
        let slots = Slots::new(self.max_connections);
        let (stop, stopped) = watch::channel(false);
        let mut refusals = RateLimited::default();
        let mut evictions = RateLimited::default();
        let mut accept_errors = RateLimited::default();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok((stream, peer)) => (stream, peer.ip()),
                Err(error) => {
                    // EMFILE and the like: back off instead of spinning on the backlog.
                    accept_errors.warn(|n| format!("HTTP: accept failed {n} time(s): {error}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (slot, evicted) = match slots.admit() {
                Admission::Admitted(slot) => (slot, None),
                Admission::Evicted(slot, evicted) => {
                    shared.metrics.http_connection_evicted();
                    evictions.warn(|n| {
                        format!(
                            "HTTP: closed {n} idle connection(s) to make room: all {} slots \
                             are taken (--web-max-connections)",
                            self.max_connections
                        )
                    });
                    (slot, Some(evicted))
                }
                Admission::Refused => {
                    // Closed at once: a refused client holds neither a slot nor a descriptor.
                    drop(stream);
                    shared.metrics.http_connection_rejected();
                    refusals.warn(|n| {
                        format!(
                            "HTTP: refused {n} connection(s): all {} slots are serving \
                             requests (--web-max-connections)",
                            self.max_connections
                        )
                    });
                    continue;
                }
            };
            let connection = Connection {
                gate: gate.clone(),
                tls: self.tls.clone(),
                stopped: stopped.clone(),
                slot,
                peer,
            };
            tokio::spawn(connection.run(stream));
            if let Some(evicted) = evicted {
                // One descriptor over the cap at most: the next accept waits for the close.
                let _ = tokio::time::timeout(EVICTION_WAIT, evicted.closed()).await;
            }
        }
        shared.health.shutting_down();
        drop(self.listener);
        let _ = stop.send(true);
        let grace = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while slots.open() > 0 && tokio::time::Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if slots.open() > 0 {
            log::warn!(
                "shutdown: cutting {} HTTP connection(s) still open after {}",
                slots.open(),
                humantime::format_duration(SHUTDOWN_GRACE)
            );
        }
    }
}

struct Connection {
    gate: Arc<Gate>,
    tls: Option<TlsAcceptor>,
    stopped: watch::Receiver<bool>,
    slot: Slot,
    peer: IpAddr,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let deadline = tokio::time::Instant::now() + CONNECTION_DEADLINE;
        match self.tls.clone() {
            None => self.http(stream, deadline).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                let shaken = tokio::select! {
                    shaken = handshake => shaken,
                    () = self.slot.evicted() => return,
                };
                match shaken {
                    Ok(Ok(stream)) => self.http(stream, deadline).await,
                    Ok(Err(error)) => log::debug!("TLS handshake failed: {error}"),
                    Err(_) => log::debug!("TLS handshake timed out"),
                }
            }
        }
    }

    async fn http<I>(mut self, io: I, deadline: tokio::time::Instant)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (gate, occupant, peer) = (self.gate.clone(), self.slot.occupant(), self.peer);
        let service = service_fn(move |request| {
            let (gate, occupant) = (gate.clone(), occupant.clone());
            async move { Ok::<_, Infallible>(gate.handle(request, peer, &occupant).await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES)
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let cut = tokio::time::sleep_until(deadline);
        tokio::pin!(cut);
        tokio::select! {
            _ = connection.as_mut() => return,
            () = &mut cut => return,
            () = self.slot.evicted() => return,
            _ = self.stopped.wait_for(|stop| *stop) => connection.as_mut().graceful_shutdown(),
        }
        // Shutting down: the request in flight may finish; the server's grace bounds it.
        tokio::select! {
            _ = connection => {}
            () = cut => {}
        }
    }
}

/// A warning that repeats at most every `WARN_EVERY`, with how many times it happened.
#[derive(Default)]
struct RateLimited {
    last: Option<Instant>,
    count: u64,
}

impl RateLimited {
    fn warn(&mut self, message: impl FnOnce(u64) -> String) {
        self.count += 1;
        if self.last.is_none_or(|last| last.elapsed() >= WARN_EVERY) {
            log::warn!("{}", message(self.count));
            self.last = Some(Instant::now());
            self.count = 0;
        }
    }
}
