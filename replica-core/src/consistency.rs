//! Read-your-writes: the token a write leaves ([`WriteToken`]), its string
//! form for a cookie or a header, and the request-scoped value that
//! remembers the latest one ([`ReadYourWrites`]).

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a write left the writer: the WAL position after its commit
/// (`pg_current_wal_insert_lsn()`) and the time it was taken. A read given
/// the token runs on a replica that has replayed past the position (on
/// Aurora, whose lag is reported in time: one whose lag is less than the
/// time since), else on the writer.
///
/// Its string form, `{lsn}@{unix ms}` such as `0/16B3748@1795737600123`,
/// is made for a cookie or an HTTP header; parse one from a client with
/// [`str::parse`], which refuses anything else with a [`TokenError`].
/// Serde uses the string form. A token names a place in the WAL and a time,
/// nothing secret; a forged one can cost its reader a wait and a read on
/// the writer, never a stale read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WriteToken {
    /// WAL position, as `pg_lsn` bytes; [`WriteToken::UNKNOWN_LSN`] when the
    /// writer did not say (reads then go to the writer).
    pub(crate) lsn: u64,
    /// Milliseconds since the Unix epoch, after the commit.
    pub(crate) at_ms: u64,
}

impl WriteToken {
    /// The position of a write whose position could not be had: no replica
    /// qualifies.
    pub(crate) const UNKNOWN_LSN: u64 = u64::MAX;

    /// A token for a write that committed just now at `lsn`.
    pub(crate) fn now(lsn: u64) -> Self {
        Self {
            lsn,
            at_ms: unix_ms(),
        }
    }

    /// The later of two tokens: the one a read must wait for to see both
    /// writes.
    #[must_use]
    pub fn max(self, other: Self) -> Self {
        Self {
            lsn: self.lsn.max(other.lsn),
            at_ms: self.at_ms.max(other.at_ms),
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl fmt::Display for WriteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:X}/{:X}@{}",
            self.lsn >> 32,
            self.lsn & 0xFFFF_FFFF,
            self.at_ms
        )
    }
}

/// Why a string is not a [`WriteToken`]. The string itself is never
/// quoted: it came from a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Longer than any token.
    #[error("a write token is at most {MAX_TOKEN_LEN} characters; this one has {len}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Not of the form `{hex}/{hex}@{digits}`.
    #[error(
        "a write token reads `{{hex}}/{{hex}}@{{unix ms}}`, such as `0/16B3748@1795737600123`: {problem}"
    )]
    Malformed {
        /// What is wrong, without the token.
        problem: &'static str,
    },
}

/// The longest string form: two 8-digit halves, `/`, `@`, 20 digits.
const MAX_TOKEN_LEN: usize = 38;

impl FromStr for WriteToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, TokenError> {
        if s.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong { len: s.len() });
        }
        let malformed = |problem| TokenError::Malformed { problem };
        let (lsn, at) = s.split_once('@').ok_or(malformed("no `@`"))?;
        let (high, low) = lsn.split_once('/').ok_or(malformed("no `/` in the LSN"))?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(malformed("each half of the LSN is 1 to 8 hex digits"));
            }
            u32::from_str_radix(part, 16).map_err(|_| malformed("bad hex digits"))
        };
        let lsn = (u64::from(half(high)?) << 32) | u64::from(half(low)?);
        if at.is_empty() || !at.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("the time is decimal digits"));
        }
        let at_ms = at.parse().map_err(|_| malformed("the time is too large"))?;
        Ok(Self { lsn, at_ms })
    }
}

impl Serialize for WriteToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WriteToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The writes of one request (or session), so that its later reads see
/// them: give it to the calls as a `&ReadYourWrites` parameter of a
/// `#[read_only]` or `#[write]` method, or through
/// [`ReplicaSet::session`](crate::ReplicaSet::session). A write through it
/// records its [`WriteToken`]; a read through it runs where that write is
/// visible.
///
/// Carried across stateless containers by its token's string form:
///
/// ```
/// # use replica_core::ReadYourWrites;
/// // From the request's header (absent for a client that wrote nothing).
/// let header: Option<&str> = Some("0/16B3748@1795737600123");
/// let rw = ReadYourWrites::resume(header)?;
/// // ... reads and writes through `rw` ...
/// // Into the response's header.
/// let header = rw.token().map(|token| token.to_string());
/// # assert_eq!(header.as_deref(), Some("0/16B3748@1795737600123"));
/// # Ok::<(), replica_core::TokenError>(())
/// ```
#[derive(Debug, Default)]
pub struct ReadYourWrites {
    latest: Mutex<Option<WriteToken>>,
}

impl ReadYourWrites {
    /// A session that has written nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A session that reads after `token`.
    pub fn after(token: WriteToken) -> Self {
        Self {
            latest: Mutex::new(Some(token)),
        }
    }

    /// A session from a token's string form as a client sent it back, or
    /// a new one for `None` or an empty string.
    ///
    /// # Errors
    /// [`TokenError`] for anything that is not a token: refuse the request,
    /// or go on with [`ReadYourWrites::new`] and read from the writer with
    /// [`ReplicaSet::read_fresh`](crate::ReplicaSet::read_fresh).
    pub fn resume(token: Option<&str>) -> Result<Self, TokenError> {
        match token.map(str::trim) {
            None | Some("") => Ok(Self::new()),
            Some(token) => Ok(Self::after(token.parse()?)),
        }
    }

    /// The token of the latest write seen, to hand to the client.
    pub fn token(&self) -> Option<WriteToken> {
        *self.lock()
    }

    /// Adds a write's token (keeping the later position).
    pub fn observe(&self, token: WriteToken) {
        let mut latest = self.lock();
        *latest = Some(latest.map_or(token, |seen| seen.max(token)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<WriteToken>> {
        // Only a `Copy` value is ever written under the lock: a panic
        // elsewhere cannot leave it half-changed.
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_string_form_round_trips() {
        for lsn in [0, 1, 0x16B_3748, 0xFFFF_FFFF, 0x1_0000_0000, u64::MAX] {
            let token = WriteToken {
                lsn,
                at_ms: 1_795_737_600_123,
            };
            assert_eq!(token.to_string().parse::<WriteToken>(), Ok(token));
        }
        let token: WriteToken = "16/B374D848@7".parse().unwrap();
        assert_eq!(token.lsn, 0x16_B374_D848);
        assert_eq!(token.at_ms, 7);
    }

    #[test]
    fn anything_else_is_refused() {
        let long = "9".repeat(10_000);
        for bad in [
            "",
            "@",
            "0/0",
            "0/0@",
            "0@1",
            "/1@1",
            "0/@1",
            "-1/0@1",
            "0/-1@1",
            "0/0@-1",
            "0/0@+1",
            "+1/0@1",
            "x/0@1",
            "123456789/0@1",
            "0/0@1.5",
            "0/0@1 ",
            " 0/0@1",
            "0/0/0@1",
            "0/0@1@2",
            "0/0@99999999999999999999",
            "０/0@1",
            &long,
        ] {
            assert!(bad.parse::<WriteToken>().is_err(), "{bad:?} parsed");
        }
        let err = long.parse::<WriteToken>().unwrap_err().to_string();
        assert!(!err.contains("999"), "{err}");
    }

    #[test]
    fn a_session_keeps_the_latest_write() {
        let rw = ReadYourWrites::resume(Some(" ")).unwrap();
        assert_eq!(rw.token(), None);
        rw.observe(WriteToken { lsn: 10, at_ms: 5 });
        rw.observe(WriteToken { lsn: 7, at_ms: 9 });
        assert_eq!(rw.token(), Some(WriteToken { lsn: 10, at_ms: 9 }));
        assert!(ReadYourWrites::resume(Some("garbage")).is_err());
    }

    #[test]
    fn serde_uses_the_string_form() {
        let token = WriteToken {
            lsn: 0x1_0000_00FF,
            at_ms: 3,
        };
        let json = serde_json::to_string(&token).unwrap();
        assert_eq!(json, r#""1/FF@3""#);
        assert_eq!(serde_json::from_str::<WriteToken>(&json).unwrap(), token);
        assert!(serde_json::from_str::<WriteToken>(r#""1/FF""#).is_err());
        assert!(serde_json::from_str::<WriteToken>("12").is_err());
    }
}
