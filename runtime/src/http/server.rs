//! The HTTP/1.1 server: a bounded number of connections, a deadline for every request head
//! (which also closes idle kept-alive connections), and a graceful stop bounded by the caller's
//! deadline. (Body reading has its own deadline, in [`super::body`].)

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ServerConfig;

/// A running server.
pub struct Server {
    stop: watch::Sender<Option<Instant>>,
    task: JoinHandle<usize>,
}

impl Server {
    /// Serves `app` on `listener` until [`Server::stop`].
    pub fn spawn(listener: TcpListener, app: Router, config: &ServerConfig) -> Server {
        let (stop, stopped) = watch::channel(None);
        let limits = (
            config.max_connections,
            Duration::from_secs(config.request_head_timeout_seconds),
        );
        let task = tokio::spawn(run(listener, app, limits, stopped));
        Server { stop, task }
    }

    /// Stops accepting, lets requests in progress finish and closes every connection by
    /// `deadline`; returns how many connections were still open then (and were cut).
    pub async fn stop(self, deadline: Instant) -> usize {
        let _ = self.stop.send(Some(deadline));
        self.task.await.unwrap_or(0)
    }
}

async fn run(
    listener: TcpListener,
    app: Router,
    (max_connections, head_timeout): (usize, Duration),
    mut stopped: watch::Receiver<Option<Instant>>,
) -> usize {
    let slots = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stopped.changed() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that goes away or times out ends its connection; nothing to report.
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    let deadline = stopped.borrow().unwrap_or_else(Instant::now);
    tokio::select! {
        _ = graceful.shutdown() => 0,
        _ = tokio::time::sleep_until(deadline) => {
            let open = max_connections - slots.available_permits();
            tracing::warn!(open, "HTTP connections still open at the shutdown deadline; closing them");
            open
        }
    }
}
