//! What may pass through a generic or `impl Trait` parameter of a
//! `#[read_only]` or `#[write]` method: a type that holds no tenant and no
//! read-your-writes session, which would otherwise pass unseen.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::{
    NonZeroI8, NonZeroI16, NonZeroI32, NonZeroI64, NonZeroI128, NonZeroIsize, NonZeroU8,
    NonZeroU16, NonZeroU32, NonZeroU64, NonZeroU128, NonZeroUsize,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A type that holds neither a [`Tenant`](crate::Tenant) nor a
/// [`ReadYourWrites`](crate::ReadYourWrites) session.
///
/// The macros add this bound to each generic and `impl Trait` parameter of
/// a `#[read_only]` or `#[write]` method, where the type a caller passes is
/// not known to the method: `name: impl Into<String>` becomes
/// `name: impl Into<String> + PlainParam`, and `tier: T` adds
/// `where T: PlainParam`. A tenant passed there would leave the method
/// unscoped, so `Tenant`, `TenantScope`, the session types and every form
/// holding them do not implement it, and passing one is a compile error at
/// the call.
///
/// It is implemented for the standard library's plain values (numbers,
/// strings, paths, addresses, durations) and its thread-safe containers of
/// them; it requires `Send + Sync`, since the method's future carries the
/// value across threads. A type of your own that holds neither may
/// implement it:
///
/// ```
/// # use replica_core as diesel_replica;
/// struct Tier(i32);
/// impl diesel_replica::PlainParam for Tier {}
/// ```
///
/// A type of your own that holds a tenant must not: the method could not
/// see it, and would run on the shared schemas.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `PlainParam`: a generic or `impl Trait` parameter of a `#[read_only]` or `#[write]` method takes only types that hold no tenant and no read-your-writes session",
    label = "the method could not see a tenant or a session passed here: it would run unscoped, or outside the session",
    note = "pass a tenant as `tenant: &Tenant` and a session as `session: &ReadYourWrites`; \
            a type of your own that holds neither may `impl diesel_replica::PlainParam`"
)]
pub trait PlainParam: Send + Sync {}

macro_rules! plain {
    ($($ty:ty),* $(,)?) => { $(impl PlainParam for $ty {})* };
}

plain!(
    (),
    bool,
    char,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    f32,
    f64,
    NonZeroI8,
    NonZeroI16,
    NonZeroI32,
    NonZeroI64,
    NonZeroI128,
    NonZeroIsize,
    NonZeroU8,
    NonZeroU16,
    NonZeroU32,
    NonZeroU64,
    NonZeroU128,
    NonZeroUsize,
    str,
    String,
    CStr,
    CString,
    OsStr,
    OsString,
    Path,
    PathBuf,
    IpAddr,
    Ipv4Addr,
    Ipv6Addr,
    SocketAddr,
    Duration,
    SystemTime,
);

impl<T: ?Sized + PlainParam> PlainParam for &T {}
impl<T: ?Sized + PlainParam> PlainParam for &mut T {}
impl<T: ?Sized + PlainParam> PlainParam for Box<T> {}
impl<T: ?Sized + PlainParam> PlainParam for Arc<T> {}
impl<T: ?Sized + PlainParam + ToOwned<Owned: PlainParam>> PlainParam for Cow<'_, T> {}
impl<T: PlainParam> PlainParam for Option<T> {}
impl<T: PlainParam, E: PlainParam> PlainParam for Result<T, E> {}
impl<T: PlainParam> PlainParam for [T] {}
impl<T: PlainParam, const N: usize> PlainParam for [T; N] {}
impl<T: PlainParam> PlainParam for Vec<T> {}
impl<T: PlainParam> PlainParam for VecDeque<T> {}
impl<T: PlainParam, S: Send + Sync> PlainParam for HashSet<T, S> {}
impl<T: PlainParam> PlainParam for BTreeSet<T> {}
impl<K: PlainParam, V: PlainParam, S: Send + Sync> PlainParam for HashMap<K, V, S> {}
impl<K: PlainParam, V: PlainParam> PlainParam for BTreeMap<K, V> {}
impl<T: ?Sized + Send + Sync> PlainParam for PhantomData<T> {}

macro_rules! plain_tuples {
    ($(($($name:ident),+))*) => {
        $(impl<$($name: PlainParam),+> PlainParam for ($($name,)+) {})*
    };
}

plain_tuples! {
    (A)
    (A, B)
    (A, B, C)
    (A, B, C, D)
    (A, B, C, D, E)
    (A, B, C, D, E, F)
    (A, B, C, D, E, F, G)
    (A, B, C, D, E, F, G, H)
}
