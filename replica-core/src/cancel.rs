//! A call dropped while it holds a connection (the caller's timeout, a
//! cancelled task, the attempt's own bound): whatever of it still runs on
//! the server is cancelled, and the connection goes back to its pool only
//! once the server is idle on it.
//!
//! Closing the socket would not do: the server notices a closed socket
//! only when it next talks to the client, so a long statement runs on,
//! and its backend stays, while the pool opens another connection in its
//! place. Under load with client timeouts that buries a slow node.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::{
    AnsiTransactionManager, AsyncPgConnection, SimpleAsyncConnection, TransactionManager,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::dial::{Dial, Socket};
use crate::instrument::Watch;
use crate::pooler::Pooler;
use crate::session;

/// How long the cancel request, then the reset behind it, may take before
/// the connection is closed instead.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// How long the reset may wait before the cancel request is sent again.
const RECANCEL_EVERY: Duration = Duration::from_millis(50);

/// Sends PostgreSQL's cancel request for one node's connections, over TLS
/// when they use it.
#[derive(Clone)]
pub(crate) struct Canceller {
    pub(crate) tls: Option<MakeRustlsConnect>,
    pub(crate) pooler: Pooler,
    /// Where the request goes: a socket the library opens itself, so that
    /// it can wait for the server to close it (see [`UntilClosed`]).
    pub(crate) dial: Dial,
}

impl Canceller {
    /// Cancels what `conn` runs, then resets its session and reads the
    /// reply, on a task of its own: the connection returns to its pool
    /// only if that all succeeds within [`SETTLE_LIMIT`], else it is
    /// closed. Until then the pool counts it as in use, so the node never
    /// holds more connections than the pool's maximum. Outside a Tokio
    /// runtime, the connection is closed.
    pub(crate) fn cancel(&self, conn: Object<AsyncPgConnection>, node: &str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            drop(Object::take(conn));
            return;
        };
        let canceller = self.clone();
        let node = node.to_owned();
        runtime.spawn(async move {
            let mut conn = conn;
            let settled = tokio::time::timeout(SETTLE_LIMIT, canceller.settle(&mut conn))
                .await
                .unwrap_or_else(|_| Err(format!("not settled within {SETTLE_LIMIT:?}")));
            if let Err(why) = settled {
                tracing::debug!(%node, %why, "a dropped call's connection is closed");
                drop(Object::take(conn));
            }
        });
    }

    /// Cancels what runs, then waits for the reset that follows it: the
    /// reset's reply comes once the cancelled statement has ended. While
    /// it has not come, the cancel request is sent again every
    /// [`RECANCEL_EVERY`]: a pooler may have held the statement in its
    /// queue when the first one came (PgBouncer 1.18 then drops the
    /// request), and run it since.
    async fn settle(&self, conn: &mut AsyncPgConnection) -> Result<(), String> {
        let token = conn.cancel_token();
        let cancel = || async {
            let socket = self
                .dial
                .open()
                .await
                .map_err(|e| format!("cancel request: {e}"))?;
            let socket = UntilClosed(socket);
            match &self.tls {
                Some(tls) => {
                    let mut make = tls.clone();
                    let connect = MakeTlsConnect::<UntilClosed>::make_tls_connect(
                        &mut make,
                        self.dial.host(),
                    )
                    .unwrap_or_else(|never| match never {});
                    token.cancel_query_raw(socket, connect).await
                }
                None => token.cancel_query_raw(socket, tokio_postgres::NoTls).await,
            }
            .map_err(|e| format!("cancel request: {e}"))
        };
        cancel().await?;
        // A cancel that arrives once the statement ended may still cancel
        // the reset: that fails, and the connection is closed.
        {
            let mut reset = std::pin::pin!(SimpleAsyncConnection::batch_execute(
                conn,
                session::reset_after_cancel(self.pooler)
            ));
            loop {
                match tokio::time::timeout(RECANCEL_EVERY, reset.as_mut()).await {
                    Ok(reset) => break reset.map_err(|e| format!("reset: {e}"))?,
                    Err(_) => cancel().await?,
                }
            }
        }
        // The reset rolled back every transaction the call had begun.
        *AnsiTransactionManager::transaction_manager_status_mut(conn) = Default::default();
        Watch::take_failed(conn);
        Ok(())
    }
}

/// The cancel request's socket, whose shutdown ends only when the server
/// has closed its side, as libpq's `PQcancel` waits: the server closes it
/// once it has signalled the backend. Without the wait, a request slowed on
/// its way (a proxy, a busy server) could land after the reset behind it,
/// on the next caller's statement.
struct UntilClosed(Socket);

impl AsyncRead for UntilClosed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for UntilClosed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(Pin::new(&mut self.0).poll_shutdown(cx))?;
        // Whatever the server still sends (a TLS close) is read and
        // dropped, up to its end.
        let mut scratch = [0u8; 64];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            ready!(Pin::new(&mut self.0).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}
