//! What the server answered on a replica's connection, read off its wire.
//!
//! The statements the library sends around a read (its `BEGIN`, and the
//! end after it) are sent ahead, without waiting for their replies, so
//! that they cost no round trip of their own. Their replies are still
//! read, here: [`Tapped`] wraps the connection's stream and follows the
//! protocol both ways. For every request (a simple query, or an
//! extended-protocol exchange up to its `Sync`, each answered by one
//! `ReadyForQuery`) it knows whose request it was, whether it failed (its
//! SQLSTATE), and what the server says the request did to the session:
//! the transaction status of its `ReadyForQuery` and its command tags.
//!
//! The library's requests carry a mark of their own: a comment holding a
//! random number used once, which a body cannot know. Whether a body left
//! the library's transaction, or did what outlives a rollback, is the
//! server's reading, never the body's SQL text: a `ReadyForQuery` of the
//! body's that says the session is idle, or a command tag among
//! [`OUTLIVES_ROLLBACK`] and [`OUTLIVES_RESET`].

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsStream};

/// Command tags that mean a body ended the library's transaction (or
/// began its own): a committed transaction (`COMMIT`, `COMMIT AND CHAIN`,
/// `END`), a new one, a prepared one. What the body did then stays in the
/// session, which needs the whole reset. Everything else a body does in
/// the transaction (`SET`, `LISTEN`, cursors, temporary tables, a role)
/// goes with its rollback; session advisory locks, which a `SELECT` takes,
/// are released after every read (see the session module).
const OUTLIVES_ROLLBACK: [&[u8]; 4] = [
    b"BEGIN",
    b"START TRANSACTION",
    b"COMMIT",
    b"PREPARE TRANSACTION",
];

/// Command tags of what no reset undoes short of `DISCARD ALL`, which would
/// also drop the statements diesel-async keeps prepared: an SQL `PREPARE`d
/// statement, a loaded library. The connection is closed instead.
const OUTLIVES_RESET: [&[u8]; 2] = [b"PREPARE", b"LOAD"];

/// How a mark begins; 32 hexadecimal digits and `*/` follow.
const MARK_OPENS: &[u8] = b"/*diesel-replica ";
const MARK_LEN: usize = MARK_OPENS.len() + 32 + 2;

/// How many marks may wait to be seen written; older ones are forgotten
/// (their requests were never sent: the connection closed).
const MAX_WAITING_MARKS: usize = 16;

/// What a connection's replies told since the last [`Tap::take`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// A request of the body's left the library's transaction, or did what
    /// a rollback does not undo: the session needs its whole reset.
    pub(crate) touched: bool,
    /// A request of the body's did what no reset undoes: the connection
    /// must be closed.
    pub(crate) kept: bool,
    /// A request of the library's failed, with this SQLSTATE.
    pub(crate) failed: Option<Failed>,
    /// The transaction status the last reply left (`I` idle, `T` in a
    /// transaction, `E` in a failed one); `None` while a request written
    /// is still unanswered.
    pub(crate) status: Option<u8>,
}

/// A request of the library's that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Failed {
    /// Its mark.
    pub(crate) mark: u128,
    /// The SQLSTATE the server gave.
    pub(crate) code: [u8; 5],
}

impl Failed {
    /// The SQLSTATE, as the server spells it.
    pub(crate) fn code(&self) -> &str {
        std::str::from_utf8(&self.code).unwrap_or("?????")
    }

    /// Whether it said a schema does not exist (3F000): the tenant's scope
    /// names a schema the node does not have.
    pub(crate) fn is_missing_schema(&self) -> bool {
        &self.code == b"3F000"
    }
}

/// What one connection's replies told, shared between its stream (which
/// reads them) and the calls that use it.
#[derive(Debug, Default)]
pub(crate) struct Tap {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Marks handed out and not yet seen written, oldest first.
    marks: VecDeque<u128>,
    /// Requests written and not yet answered, oldest first: the mark of
    /// each of the library's, `None` for the body's.
    in_flight: VecDeque<Option<u128>>,
    /// What the request being answered reported so far: its error, and
    /// whether a tag of [`OUTLIVES_ROLLBACK`] came.
    error: Option<[u8; 5]>,
    outlives: bool,
    kept: bool,
    /// Past the start-up, whose own `ReadyForQuery` answers no request.
    ready: bool,
    status: u8,
    seen: Seen,
}

impl Tap {
    /// A new mark for a request of the library's, to put in front of its
    /// SQL: `/*diesel-replica <32 hex digits>*/`.
    pub(crate) fn mark(&self) -> (u128, String) {
        let mut bytes = [0; 16];
        // The operating system's randomness, which a body cannot predict;
        // without it, a mark never matches and every read gets the whole
        // reset.
        let mark = match getrandom::fill(&mut bytes) {
            Ok(()) => u128::from_ne_bytes(bytes),
            Err(_) => 0,
        };
        let mut text = String::with_capacity(MARK_LEN);
        text.push_str("/*diesel-replica ");
        let _ = write!(text, "{mark:032x}*/");
        if mark != 0 {
            let mut state = self.lock();
            if state.marks.len() == MAX_WAITING_MARKS {
                state.marks.pop_front();
            }
            state.marks.push_back(mark);
        }
        (mark, text)
    }

    /// What the replies told since the last call, which forgets it.
    pub(crate) fn take(&self) -> Seen {
        let mut state = self.lock();
        let status = state.in_flight.is_empty().then_some(state.status);
        Seen {
            status,
            ..std::mem::take(&mut state.seen)
        }
    }

    /// The first failure of one of the library's requests answered so
    /// far, if any; nothing is forgotten.
    pub(crate) fn failed(&self) -> Option<Failed> {
        self.lock().seen.failed
    }

    /// Forgets that the body's requests answered so far touched the
    /// session: they were the library's own, unmarked (a replay check).
    pub(crate) fn forget_touched(&self) {
        self.lock().seen.touched = false;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// A request (`Q`, or the `S` that ends an exchange) was written.
    fn sent(&mut self, kind: u8, head: &[u8]) {
        if !matches!(kind, b'Q' | b'S') {
            return;
        }
        let mark = (kind == b'Q')
            .then(|| parse_mark(head))
            .flatten()
            .filter(|mark| self.marks.contains(mark));
        if let Some(mark) = mark {
            while let Some(waiting) = self.marks.pop_front() {
                if waiting == mark {
                    break;
                }
            }
        }
        self.in_flight.push_back(mark);
    }

    /// A message of the server's came, `body` its first bytes.
    fn received(&mut self, kind: u8, body: &[u8]) {
        match kind {
            b'E' => self.error = Some(sqlstate(body).unwrap_or(*b"XX000")),
            b'C' => {
                let tag = body.split(|b| *b == 0).next().unwrap_or_default();
                self.outlives |= OUTLIVES_ROLLBACK.contains(&tag);
                self.kept |= OUTLIVES_RESET.contains(&tag);
            }
            b'Z' => {
                let status = body.first().copied().unwrap_or(b'I');
                let error = self.error.take();
                let outlives = std::mem::take(&mut self.outlives);
                let kept = std::mem::take(&mut self.kept);
                self.status = status;
                if !std::mem::replace(&mut self.ready, true) {
                    return;
                }
                match self.in_flight.pop_front() {
                    Some(Some(mark)) => {
                        if let Some(code) = error {
                            self.seen.failed.get_or_insert(Failed { mark, code });
                        }
                    }
                    // The body's, or one nobody can place: judged alike.
                    Some(None) | None => {
                        self.seen.touched |= status == b'I' || outlives || kept;
                        self.seen.kept |= kept;
                    }
                }
            }
            _ => {}
        }
    }
}

/// The mark at the start of a simple query's text, if it has one.
fn parse_mark(head: &[u8]) -> Option<u128> {
    let digits = head.strip_prefix(MARK_OPENS)?.get(..34)?;
    if &digits[32..] != b"*/" {
        return None;
    }
    u128::from_str_radix(std::str::from_utf8(&digits[..32]).ok()?, 16).ok()
}

/// The SQLSTATE field of an `ErrorResponse` body.
fn sqlstate(body: &[u8]) -> Option<[u8; 5]> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            return None;
        }
        let end = tail.iter().position(|b| *b == 0)?;
        if field == b'C' {
            return tail[..end].try_into().ok();
        }
        rest = &tail[end + 1..];
    }
    None
}

/// The request codes of the client's untyped messages that ask for an
/// encrypted channel, each answered by one unframed byte (`S` or `N`, `G`
/// or `N`) before the start-up message, which is untyped too.
const SSL_REQUEST: [u8; 4] = 80_877_103u32.to_be_bytes();
const GSS_REQUEST: [u8; 4] = 80_877_104u32.to_be_bytes();

/// Follows one direction of the protocol across reads or writes of any
/// size: message boundaries, and the first bytes of each message.
#[derive(Debug)]
struct Frames {
    /// Whether messages begin with a type byte (all but the client's
    /// first: an encryption request, then its start-up message).
    typed: bool,
    /// Unframed bytes to pass first: the server's answers to encryption
    /// requests.
    unframed: usize,
    header: [u8; 5],
    filled: usize,
    kind: u8,
    /// Bytes of the current message's body not yet passed.
    left: usize,
    /// The first bytes of the current message's body.
    head: Vec<u8>,
}

/// How many bytes of a message's body are kept: a mark, an SQLSTATE, a
/// command tag.
const HEAD_LEN: usize = 128;

impl Frames {
    fn new(typed: bool) -> Self {
        Self {
            typed,
            unframed: 0,
            header: [0; 5],
            filled: 0,
            kind: 0,
            left: 0,
            head: Vec::with_capacity(HEAD_LEN),
        }
    }

    /// Passes `bytes`, calling `done` with each message that ends in them.
    fn pass(&mut self, mut bytes: &[u8], mut done: impl FnMut(u8, &[u8])) {
        let unframed = self.unframed.min(bytes.len());
        self.unframed -= unframed;
        bytes = &bytes[unframed..];
        while !bytes.is_empty() {
            let header_len = if self.typed { 5 } else { 4 };
            if self.filled < header_len {
                let take = (header_len - self.filled).min(bytes.len());
                self.header[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
                self.filled += take;
                bytes = &bytes[take..];
                if self.filled < header_len {
                    return;
                }
                let (kind, length) = if self.typed {
                    (self.header[0], &self.header[1..5])
                } else {
                    (0, &self.header[..4])
                };
                let length = u32::from_be_bytes(length.try_into().expect("four bytes"));
                self.kind = kind;
                self.left = (length as usize).saturating_sub(4);
                self.head.clear();
                if self.left > 0 {
                    continue;
                }
            } else {
                let take = self.left.min(bytes.len());
                let keep = take.min(HEAD_LEN - self.head.len());
                self.head.extend_from_slice(&bytes[..keep]);
                self.left -= take;
                bytes = &bytes[take..];
                if self.left > 0 {
                    return;
                }
            }
            done(self.kind, &self.head);
            self.filled = 0;
            // After an encryption request the start-up message, untyped
            // too, is still to come.
            self.typed = self.typed || !asks_encryption(self.kind, &self.head);
        }
    }
}

/// Whether a message of the client's (its type, 0 for an untyped one, and
/// first bytes) asks for an encrypted channel, which the server answers
/// with one unframed byte.
fn asks_encryption(kind: u8, head: &[u8]) -> bool {
    kind == 0 && matches!(head.get(..4), Some(code) if code == SSL_REQUEST || code == GSS_REQUEST)
}

/// A connection's stream, whose every message both ways is followed for
/// its [`Tap`].
pub(crate) struct Tapped<S> {
    inner: S,
    tap: Arc<Tap>,
    outgoing: Frames,
    incoming: Frames,
}

impl<S> Tapped<S> {
    /// Follows `inner` from its first byte (an encryption request, or the
    /// start-up message).
    pub(crate) fn new(inner: S, tap: Arc<Tap>) -> Self {
        Self {
            inner,
            tap,
            outgoing: Frames::new(false),
            incoming: Frames::new(true),
        }
    }

    /// The stream and what follows it: once the server agreed to encrypt
    /// the channel, the encrypted stream is followed instead.
    pub(crate) fn into_parts(self) -> (S, Arc<Tap>) {
        (self.inner, self.tap)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Tapped<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            let mut state = this.tap.lock();
            this.incoming
                .pass(read, |kind, body| state.received(kind, body));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if written > 0 {
            let mut state = this.tap.lock();
            let mut answers = 0;
            let outgoing = &mut this.outgoing;
            outgoing.pass(&buf[..written], |kind, head| {
                answers += usize::from(asks_encryption(kind, head));
                state.sent(kind, head);
            });
            this.incoming.unframed += answers;
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        message(b'Q', &body)
    }

    /// Feeds both directions one byte at a time, as the worst split.
    fn feed(tap: &Tap, outgoing: &mut Frames, sent: &[u8], incoming: &mut Frames, got: &[u8]) {
        let mut state = tap.lock();
        for byte in sent {
            outgoing.pass(std::slice::from_ref(byte), |k, h| state.sent(k, h));
        }
        for byte in got {
            incoming.pass(std::slice::from_ref(byte), |k, b| state.received(k, b));
        }
    }

    fn started() -> (Tap, Frames, Frames) {
        let tap = Tap::default();
        let mut outgoing = Frames::new(false);
        let mut incoming = Frames::new(true);
        let mut startup = 9u32.to_be_bytes().to_vec();
        startup.extend_from_slice(&[0, 3, 0, 0, 0]);
        feed(
            &tap,
            &mut outgoing,
            &startup,
            &mut incoming,
            &message(b'Z', b"I"),
        );
        (tap, outgoing, incoming)
    }

    #[test]
    fn a_body_that_ends_the_transaction_or_prepares_touches_the_session() {
        let (tap, mut outgoing, mut incoming) = started();
        let (_, mark) = tap.mark();
        let mut sent = query(&format!("{mark}BEGIN TRANSACTION READ ONLY"));
        sent.extend(query("SELECT 1"));
        let mut got = message(b'C', b"BEGIN\0");
        got.extend(message(b'Z', b"T"));
        got.extend(message(b'C', b"SELECT 1\0"));
        got.extend(message(b'Z', b"T"));
        feed(&tap, &mut outgoing, &sent, &mut incoming, &got);
        assert_eq!(
            tap.take(),
            Seen {
                touched: false,
                kept: false,
                failed: None,
                status: Some(b'T')
            }
        );

        for (sql, tag, status, kept) in [
            ("COMMIT", &b"COMMIT\0"[..], b"I", false),
            ("COMMIT; SET x.y = 1; BEGIN", b"BEGIN\0", b"T", false),
            ("PREPARE p AS SELECT 1", b"PREPARE\0", b"T", true),
        ] {
            let mut got = message(b'C', tag);
            got.extend(message(b'Z', status));
            feed(&tap, &mut outgoing, &query(sql), &mut incoming, &got);
            let seen = tap.take();
            assert!(seen.touched, "{sql}");
            assert_eq!(seen.kept, kept, "{sql}");
        }
    }

    #[test]
    fn a_failed_request_of_the_library_is_told_with_its_sqlstate() {
        let (tap, mut outgoing, mut incoming) = started();
        let (mark, text) = tap.mark();
        let mut got = message(b'E', b"SERROR\0VERROR\0C42501\0Mpermission denied\0\0");
        got.extend(message(b'Z', b"I"));
        // The body's own failure is its own.
        got.extend(message(b'E', b"SERROR\0C22012\0\0"));
        got.extend(message(b'Z', b"E"));
        let mut sent = query(&format!("{text}ROLLBACK; SELECT 1"));
        sent.extend(message(b'P', b"\0SELECT 1/0\0\0\0"));
        sent.extend(message(b'S', b""));
        feed(&tap, &mut outgoing, &sent, &mut incoming, &got);
        let failed = tap.failed().unwrap();
        assert_eq!((failed.mark, failed.code()), (mark, "42501"));
        let seen = tap.take();
        assert_eq!(seen.status, Some(b'E'));
        assert!(!seen.touched);
    }

    #[test]
    fn a_mark_a_body_copies_without_knowing_it_is_the_body_s() {
        let (tap, mut outgoing, mut incoming) = started();
        let forged = format!("/*diesel-replica {:032x}*/COMMIT", 7u128);
        let mut got = message(b'C', b"COMMIT\0");
        got.extend(message(b'Z', b"I"));
        feed(&tap, &mut outgoing, &query(&forged), &mut incoming, &got);
        assert!(tap.take().touched);
    }

    #[test]
    fn status_is_unknown_while_a_request_is_unanswered() {
        let (tap, mut outgoing, mut incoming) = started();
        feed(&tap, &mut outgoing, &query("SELECT 1"), &mut incoming, &[]);
        assert_eq!(tap.take().status, None);
    }
}
