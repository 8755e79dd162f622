//! Opening the socket of a connection whose stream the library follows
//! (see the wire module), as tokio-postgres opens its own: the address
//! (`hostaddr` first, else the host, each of its resolved addresses in
//! turn, or a unix socket directory), the connect timeout per address,
//! `TCP_NODELAY`, keepalives and `tcp_user_timeout`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio_postgres::config::Host;

/// Where and how to open a node's sockets.
#[derive(Clone, Debug)]
pub(crate) struct Dial {
    target: Target,
    /// The name TLS verifies: the host as written, else the address.
    host: String,
    port: u16,
    connect_timeout: Option<Duration>,
    keepalive: Option<TcpKeepalive>,
    tcp_user_timeout: Option<Duration>,
}

#[derive(Clone, Debug)]
enum Target {
    Address(IpAddr),
    Name(String),
    #[cfg(unix)]
    Directory(PathBuf),
}

impl Dial {
    /// The socket settings of `config`, which names one host (see the url
    /// module).
    pub(crate) fn of(config: &tokio_postgres::Config) -> Self {
        let target = match (config.get_hostaddrs().first(), config.get_hosts().first()) {
            (Some(address), _) => Target::Address(*address),
            #[cfg(unix)]
            (None, Some(Host::Unix(path))) => Target::Directory(path.clone()),
            (None, Some(Host::Tcp(name))) => match name.parse() {
                Ok(address) => Target::Address(address),
                Err(_) => Target::Name(name.clone()),
            },
            (None, None) => Target::Name("localhost".to_owned()),
        };
        let host = match (config.get_hosts().first(), config.get_hostaddrs().first()) {
            (Some(Host::Tcp(name)), _) => name.clone(),
            (_, Some(address)) => address.to_string(),
            _ => "localhost".to_owned(),
        };
        let keepalive = config.get_keepalives().then(|| {
            let mut keepalive = TcpKeepalive::new().with_time(config.get_keepalives_idle());
            if let Some(interval) = config.get_keepalives_interval() {
                keepalive = keepalive.with_interval(interval);
            }
            if let Some(retries) = config.get_keepalives_retries() {
                keepalive = keepalive.with_retries(retries);
            }
            keepalive
        });
        Self {
            target,
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            connect_timeout: config.get_connect_timeout().copied(),
            keepalive,
            tcp_user_timeout: config.get_tcp_user_timeout().copied(),
        }
    }

    /// The name TLS verifies the server's certificate against.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// A new socket to the node.
    pub(crate) async fn open(&self) -> io::Result<Socket> {
        let addresses: Vec<SocketAddr> = match &self.target {
            Target::Address(address) => vec![SocketAddr::new(*address, self.port)],
            Target::Name(name) => tokio::net::lookup_host((name.as_str(), self.port))
                .await?
                .collect(),
            #[cfg(unix)]
            Target::Directory(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", self.port));
                return within(self.connect_timeout, UnixStream::connect(path))
                    .await
                    .map(Socket::Unix);
            }
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host resolved to no address");
        for address in addresses {
            match within(self.connect_timeout, TcpStream::connect(address)).await {
                Ok(stream) => return self.configured(stream).map(Socket::Tcp),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    fn configured(&self, stream: TcpStream) -> io::Result<TcpStream> {
        stream.set_nodelay(true)?;
        let socket = SockRef::from(&stream);
        #[cfg(target_os = "linux")]
        if let Some(timeout) = self.tcp_user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        if let Some(keepalive) = &self.keepalive {
            socket.set_tcp_keepalive(keepalive)?;
        }
        Ok(stream)
    }
}

async fn within<T>(
    timeout: Option<Duration>,
    connect: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match timeout {
        Some(timeout) => tokio::time::timeout(timeout, connect)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection timed out",
                ))
            }),
        None => connect.await,
    }
}

/// An open socket to a node.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            #[cfg(unix)]
            Self::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            #[cfg(unix)]
            Self::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            #[cfg(unix)]
            Self::Unix(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            #[cfg(unix)]
            Self::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}
