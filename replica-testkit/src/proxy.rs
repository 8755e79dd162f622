//! A TCP proxy that delays every chunk of data by a fixed one-way delay, for
//! measuring clients over a network slower than loopback without `netem`.
//!
//! [`DelayProxy`] forwards one local port to a target; [`Cluster::delayed`]
//! puts one in front of every node of a cluster and hands out the URLs and a
//! `Config` that reach the nodes through them ([`DelayedCluster`]).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use replica_core::Config;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create, timerfd_settime,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::{Cluster, Error, NodeId, io_err, load};

/// How many chunks one direction of a connection holds in flight (read, not
/// yet due) before reading waits for the oldest to go out: a bound on memory
/// that the traffic of a test or a benchmark does not reach.
const CHUNKS_IN_FLIGHT: usize = 4096;
/// The size of one read, and so of the largest chunk.
const READ_SIZE: usize = 64 * 1024;

/// A TCP proxy on `127.0.0.1` that forwards every connection to a target
/// address, delaying each chunk of data by a fixed one-way delay in each
/// direction: a client sees every round trip through it take at least twice
/// the delay longer, as over a network with that latency (and no bandwidth
/// limit).
///
/// Each accepted connection opens its own connection to the target and gets
/// two forwarding tasks, one per direction, so connections never wait on one
/// another. Within a direction, a chunk read at time `t` is written at
/// `t + delay`, in the order read; reading goes on while earlier chunks wait
/// for their time (up to 4096 chunks in flight per direction), so a burst of
/// writes arrives as a burst, `delay` later. Chunks already due when one is
/// written go out with it in one write. The waits use a `timerfd` per
/// direction, with microsecond resolution (tokio's own timer rounds up to
/// whole milliseconds); what the proxy's thread and the machine add comes
/// on top (on a 2-core VM, a 1 ms round trip through it measures about
/// 1.1-1.2 ms). `TCP_NODELAY` is set on both sides. Opening a connection
/// is not delayed: only data is. Every chunk passes through user space, so
/// the proxy costs CPU time on the machine it shares with what it measures
/// (tens of microseconds per chunk).
///
/// The proxy runs on its own thread with a single-threaded tokio runtime, so
/// it needs no runtime from the caller and takes no time from the caller's
/// tasks. A connection the target refuses is closed at once. End of data in
/// one direction is passed on (after the data before it) as a shutdown of
/// the writing side.
///
/// Dropping the proxy stops it: the listener and every connection it
/// forwards are closed by the time `drop` returns.
///
/// ```no_run
/// use std::time::Duration;
/// use diesel_replica_testkit::DelayProxy;
///
/// let proxy = DelayProxy::start("127.0.0.1:5432", Duration::from_micros(500))?;
/// let url = format!("postgres://postgres:pw@127.0.0.1:{}/postgres", proxy.port());
/// # Ok::<(), diesel_replica_testkit::Error>(())
/// ```
#[derive(Debug)]
pub struct DelayProxy {
    port: u16,
    target: String,
    delay: Duration,
    /// Dropped to stop the proxy.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DelayProxy {
    /// Starts a proxy listening on a free port of 127.0.0.1 that forwards to
    /// `target` (`host:port`, resolved for each new connection) with `delay`
    /// each way. A zero delay forwards at once.
    pub fn start(target: impl Into<String>, delay: Duration) -> Result<DelayProxy, Error> {
        let target = target.into();
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(io_err("binding the delay proxy's port"))?;
        let port = listener
            .local_addr()
            .map_err(io_err("reading the delay proxy's port"))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(io_err("making the delay proxy's listener non-blocking"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("building the delay proxy's runtime"))?;
        let (stop, stopped) = oneshot::channel();
        let serve_target = target.clone();
        let thread = std::thread::Builder::new()
            .name(format!("delay-proxy-{port}"))
            .spawn(move || {
                runtime.block_on(serve(listener, serve_target, delay, stopped));
                // Dropping the runtime drops every connection's tasks, and so
                // closes their sockets.
                drop(runtime);
            })
            .map_err(io_err("spawning the delay proxy's thread"))?;
        Ok(DelayProxy {
            port,
            target,
            delay,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The port it listens on, at 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address it listens on: `127.0.0.1:`[`DelayProxy::port`].
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Where it forwards to, as given to [`DelayProxy::start`].
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The delay added to each direction.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // A panic on the proxy's thread has been printed already.
            let _ = thread.join();
        }
    }
}

/// Accepts connections until `stopped` resolves (its sender dropped).
async fn serve(
    listener: std::net::TcpListener,
    target: String,
    delay: Duration,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("delay proxy for {target}: cannot listen: {err}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    tokio::spawn(connect(client, target.clone(), delay));
                }
                // Such as running out of file descriptors: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

/// Opens the connection to the target for `client` and starts the two
/// forwarding tasks; if the target cannot be reached, `client` is closed.
async fn connect(client: TcpStream, target: String, delay: Duration) {
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    for stream in [&client, &server] {
        let _ = stream.set_nodelay(true);
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::spawn(forward(client_read, server_write, delay));
    tokio::spawn(forward(server_read, client_write, delay));
}

/// One direction of a connection: reads chunks from `from` as they come and
/// writes each to `to` `delay` after it was read, in order. Ends when `from`
/// ends (after the chunks in flight are written, and the end passed on) or
/// when writing fails.
async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (chunks, mut due_chunks) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let read = async move {
        let mut buf = vec![0; READ_SIZE];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + delay;
                    if chunks.send((due, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `chunks` tells the writer that nothing more comes.
    };
    let write = async move {
        let timer = match Timer::new() {
            Ok(timer) => timer,
            Err(err) => {
                eprintln!("delay proxy: cannot make a timer: {err}");
                return;
            }
        };
        let mut next = due_chunks.recv().await;
        while let Some((due, mut bytes)) = next.take() {
            if timer.sleep_until(due).await.is_err() {
                return;
            }
            // Whatever else is due by now goes out in the same write.
            loop {
                match due_chunks.try_recv() {
                    Ok((due, more)) if due <= Instant::now() => bytes.extend_from_slice(&more),
                    Ok(later) => {
                        next = Some(later);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
            if next.is_none() {
                next = due_chunks.recv().await;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::pin!(read, write);
    tokio::select! {
        // Writing failed (or is done): reading has no purpose left.
        () = &mut write => {}
        // The source ended: what was read still goes out.
        () = &mut read => write.await,
    }
}

/// A one-shot timer with the precision of a Linux `timerfd` (microseconds),
/// waited on through tokio's reactor.
struct Timer(AsyncFd<OwnedFd>);

impl Timer {
    fn new() -> io::Result<Timer> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // `AsyncFd::new` is deprecated because a `T` whose raw fd could be
        // closed or changed while registered would be unsound; an `OwnedFd`
        // moved in cannot be. Its replacement, `AsyncFd::register`, is
        // `unsafe` for that reason, and this workspace forbids `unsafe`.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(Timer(fd))
    }

    /// Returns at `due` (at once if it has passed).
    async fn sleep_until(&self, due: Instant) -> io::Result<()> {
        let left = due.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let it_value = left.try_into().map_err(io::Error::other)?;
        let zero = Duration::ZERO.try_into().map_err(io::Error::other)?;
        let spec = Itimerspec {
            it_interval: zero,
            it_value,
        };
        timerfd_settime(self.0.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
        loop {
            let mut ready = self.0.readable().await?;
            let mut expirations = [0u8; 8];
            // `WouldBlock` (readiness left from an earlier expiry) clears the
            // readiness, and the wait goes on.
            match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
                Ok(result) => return result.map(drop),
                Err(_would_block) => continue,
            }
        }
    }
}

/// A [`DelayProxy`] in front of each node of a [`Cluster`], made by
/// [`Cluster::delayed`], with the URLs and configurations that reach the
/// nodes through them.
///
/// A snapshot of the topology when it was made: a node added later has no
/// proxy, and the proxies keep forwarding to the ports they were given.
/// Dropping it stops the proxies, closing every connection through them.
#[derive(Debug)]
pub struct DelayedCluster {
    writer_url: String,
    replica_urls: Vec<String>,
    proxies: Vec<(NodeId, DelayProxy)>,
}

impl DelayedCluster {
    /// The current primary's URL ([`Cluster::writer_url`]) with the port of
    /// its proxy.
    pub fn writer_url(&self) -> &str {
        &self.writer_url
    }

    /// The replicas' URLs ([`Cluster::replica_urls`], in the same order) with
    /// the ports of their proxies.
    pub fn replica_urls(&self) -> &[String] {
        &self.replica_urls
    }

    /// The proxy in front of node `id`, if it had one.
    pub fn proxy(&self, id: NodeId) -> Option<&DelayProxy> {
        self.proxies
            .iter()
            .find(|(node, _)| *node == id)
            .map(|(_, proxy)| proxy)
    }

    /// As [`Cluster::config`], with every node reached through its proxy.
    ///
    /// # Panics
    /// As [`Cluster::config`].
    pub fn config(&self) -> Config {
        load::config_for(&self.writer_url, &self.replica_urls)
    }

    /// As [`Cluster::load_config`], with every node reached through its
    /// proxy.
    ///
    /// # Panics
    /// As [`Cluster::config`].
    pub fn load_config(&self, tasks: usize) -> Config {
        load::sized_for(self.config(), tasks)
    }
}

impl Cluster {
    /// Starts a [`DelayProxy`] with `delay` each way in front of the current
    /// primary and each replica, forwarding to the node's port on 127.0.0.1,
    /// and returns them with the URLs that go through them.
    ///
    /// The URLs are the cluster's ([`Cluster::url`]) with the proxy's port.
    /// The proxies listen on 127.0.0.1 only: a TLS cluster's URLs name
    /// `localhost`, and a client that tries `::1` first is refused there and
    /// goes on to 127.0.0.1. The servers see every connection come from
    /// 127.0.0.1, and their replication does not go through the proxies.
    pub fn delayed(&self, delay: Duration) -> Result<DelayedCluster, Error> {
        let ids: Vec<NodeId> = std::iter::once(self.primary_id())
            .chain(self.replica_ids())
            .collect();
        let mut proxies = Vec::with_capacity(ids.len());
        for id in ids {
            let target = format!("127.0.0.1:{}", self.node(id).port());
            proxies.push((id, DelayProxy::start(target, delay)?));
        }
        let url = |(_, proxy): &(NodeId, DelayProxy)| self.url_at(proxy.port());
        Ok(DelayedCluster {
            writer_url: url(&proxies[0]),
            replica_urls: proxies[1..].iter().map(url).collect(),
            proxies,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::thread;

    use super::*;

    /// An echo server on a free port of 127.0.0.1, one thread per
    /// connection; it lives until the test process ends.
    fn echo_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let _ = io::copy(&mut reader, &mut stream);
                });
            }
        });
        port
    }

    fn client(proxy: &DelayProxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.addr()).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
    }

    /// The time one small message takes there and back.
    fn round_trip(stream: &mut TcpStream) -> Duration {
        let start = Instant::now();
        stream.write_all(b"ping").unwrap();
        let mut back = [0; 4];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        start.elapsed()
    }

    #[test]
    fn a_round_trip_takes_at_least_twice_the_delay() {
        let delay = Duration::from_millis(5);
        let proxy = DelayProxy::start(format!("127.0.0.1:{}", echo_server()), delay).unwrap();
        assert_eq!(proxy.delay(), delay);
        let mut stream = client(&proxy);
        for _ in 0..20 {
            let took = round_trip(&mut stream);
            assert!(took >= 2 * delay, "a round trip took {took:?}");
        }
    }

    #[test]
    fn sub_millisecond_delays_are_kept() {
        let delay = Duration::from_micros(500);
        let proxy = DelayProxy::start(format!("127.0.0.1:{}", echo_server()), delay).unwrap();
        let mut stream = client(&proxy);
        let mut took: Vec<Duration> = (0..200).map(|_| round_trip(&mut stream)).collect();
        took.sort();
        assert!(took[0] >= 2 * delay, "fastest round trip {:?}", took[0]);
        // Not rounded up to tokio's millisecond ticks (which would make it
        // 2 ms or more); the bound leaves room for a busy machine.
        let median = took[took.len() / 2];
        assert!(median < Duration::from_micros(1900), "median {median:?}");
    }

    #[test]
    fn bytes_arrive_intact_and_in_order_while_chunks_are_in_flight() {
        let delay = Duration::from_millis(20);
        let proxy = DelayProxy::start(format!("127.0.0.1:{}", echo_server()), delay).unwrap();
        let mut stream = client(&proxy);
        // 2 MiB in 500 writes of varying size with a pattern that shows any
        // loss, duplication or reordering.
        let data: Vec<u8> = (0..2 * 1024 * 1024u32)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect();
        let mut reader = stream.try_clone().unwrap();
        let expected = data.len();
        let read = thread::spawn(move || {
            let mut back = vec![0; expected];
            reader.read_exact(&mut back).unwrap();
            back
        });
        let start = Instant::now();
        let mut rest = &data[..];
        let mut size = 1;
        while !rest.is_empty() {
            let n = size.min(rest.len());
            stream.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
            size = size * 7 % 9001 + 1;
        }
        let back = read.join().unwrap();
        let took = start.elapsed();
        assert!(back == data, "the echoed bytes differ from those sent");
        assert!(took >= 2 * delay, "took {took:?}");
        // Hundreds of chunks: had each waited for the one before, this would
        // take seconds.
        assert!(took < Duration::from_secs(2), "took {took:?}");
        // The end of data is passed on both ways.
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut tail = Vec::new();
        stream.read_to_end(&mut tail).unwrap();
        assert!(tail.is_empty());
    }

    #[test]
    fn connections_do_not_wait_on_one_another() {
        let delay = Duration::from_millis(100);
        let proxy = DelayProxy::start(format!("127.0.0.1:{}", echo_server()), delay).unwrap();
        let mut streams: Vec<TcpStream> = (0..8).map(|_| client(&proxy)).collect();
        // Warm: the connections to the echo server are open.
        for stream in &mut streams {
            round_trip(stream);
        }
        let start = Instant::now();
        let threads: Vec<_> = streams
            .into_iter()
            .map(|mut stream| thread::spawn(move || round_trip(&mut stream)))
            .collect();
        for thread in threads {
            assert!(thread.join().unwrap() >= 2 * delay);
        }
        // One after the other would take 8 x 200 ms.
        let took = start.elapsed();
        assert!(took < Duration::from_millis(800), "took {took:?}");
    }

    #[test]
    fn dropping_the_proxy_closes_its_connections() {
        let proxy = DelayProxy::start(
            format!("127.0.0.1:{}", echo_server()),
            Duration::from_millis(1),
        )
        .unwrap();
        let addr = proxy.addr();
        let mut stream = client(&proxy);
        round_trip(&mut stream);
        drop(proxy);
        let mut buf = [0; 1];
        // EOF, or a reset: either way the connection is gone.
        assert!(matches!(stream.read(&mut buf), Ok(0) | Err(_)));
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn a_refused_target_closes_the_client() {
        // A port nothing listens on: bound, then released.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let proxy = DelayProxy::start(format!("127.0.0.1:{port}"), Duration::ZERO).unwrap();
        let mut stream = client(&proxy);
        let mut buf = [0; 1];
        assert!(matches!(stream.read(&mut buf), Ok(0) | Err(_)));
    }
}
