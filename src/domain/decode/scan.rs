//! One pass over a message's JSON, without a DOM: serde_json's parser drives visitors that
//! keep only the members the SPEC names (borrowed from the message where it has no escapes)
//! and hash everything else into the fingerprint as they go.
//!
//! The fingerprint of a value (see [`super::fingerprint`] for the same definition over a
//! `serde_json::Value`):
//! - a scalar: xxh3 of its bytes (a number as its `f64` bits, `-0` as `0`), seeded by its type;
//! - an array: xxh3 of its length and its elements' fingerprints, in order;
//! - an object: xxh3 of its members' count, keys and fingerprints, sorted by key, with
//!   `null` members left out and a repeated key counted once, with its last value (as
//!   serde_json's `Map` keeps it).
//!
//! So key order, whitespace, `null` members and number spelling (`2` / `2.0`) do not change
//! it; any other difference does.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use smallvec::SmallVec;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::Lines;

/// A JSON number as serde_json reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    /// A non-negative integer.
    U(u64),
    /// A negative integer.
    I(i64),
    /// Anything with a fraction or an exponent, or an integer beyond 64 bits.
    F(f64),
}

impl Num {
    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Num::U(u) => u as f64,
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }

    /// A JSON integer (not `2.0`), saturated to `i64`.
    pub(crate) fn as_integer(self) -> Option<i64> {
        match self {
            Num::U(u) => Some(i64::try_from(u).unwrap_or(i64::MAX)),
            Num::I(i) => Some(i),
            Num::F(_) => None,
        }
    }
}

/// A member's value, as far as a check needs it: scalars whole, arrays and objects by kind.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) enum Val<'a> {
    /// `null`, or the member is absent.
    #[default]
    Null,
    Bool(bool),
    Num(Num),
    Str(Cow<'a, str>),
    Array,
    Object,
}

const SEED_NULL: u64 = 1;
const SEED_BOOL: u64 = 2;
const SEED_NUM: u64 = 3;
const SEED_STR: u64 = 4;
const SEED_ARRAY: u64 = 5;
const SEED_OBJECT: u64 = 6;
const SEED_KEY: u64 = 7;

pub(crate) fn hash_null() -> u64 {
    xxh3_64_with_seed(&[], SEED_NULL)
}

pub(crate) fn hash_bool(b: bool) -> u64 {
    xxh3_64_with_seed(&[u8::from(b)], SEED_BOOL)
}

pub(crate) fn hash_num(x: f64) -> u64 {
    let x = if x == 0.0 { 0.0 } else { x };
    xxh3_64_with_seed(&x.to_bits().to_le_bytes(), SEED_NUM)
}

pub(crate) fn hash_str(s: &str) -> u64 {
    xxh3_64_with_seed(s.as_bytes(), SEED_STR)
}

/// An array's fingerprint from its elements'.
pub(crate) fn hash_array(elements: &[u64]) -> u64 {
    hash_words(elements.len() as u64, elements, SEED_ARRAY)
}

/// xxh3 of `first` and `rest` as little-endian words, laid out on the stack when they fit.
fn hash_words(first: u64, rest: &[u64], seed: u64) -> u64 {
    const ON_STACK: usize = 40;
    if rest.len() >= ON_STACK {
        let bytes: Vec<u8> = std::iter::once(first).chain(rest.iter().copied()).flat_map(u64::to_le_bytes).collect();
        return xxh3_64_with_seed(&bytes, seed);
    }
    let mut buf = [[0u8; 8]; ON_STACK];
    buf[0] = first.to_le_bytes();
    for (slot, w) in buf[1..].iter_mut().zip(rest) {
        *slot = w.to_le_bytes();
    }
    xxh3_64_with_seed(buf[..=rest.len()].as_flattened(), seed)
}

/// The members of one object, as read: the key's hash, the value's fingerprint, and
/// whether the value was `null`.
pub(crate) type Members = SmallVec<[(u64, u64, bool); 16]>;

/// A member's key, hashed.
pub(crate) fn hash_key(key: &str) -> u64 {
    xxh3_64_with_seed(key.as_bytes(), SEED_KEY)
}

/// [`hash_key`] at compile time, for the keys the shapes know by name.
const fn const_hash_key(key: &str) -> u64 {
    xxhash_rust::const_xxh3::xxh3_64_with_seed(key.as_bytes(), SEED_KEY)
}

/// An object's fingerprint from its members' (in any order, repeats and nulls included).
/// Members are ordered by their keys' hashes: equal keys hash equal, and two different keys
/// of one object with the same 64-bit hash are as unlikely as any fingerprint collision.
pub(crate) fn hash_object(members: &mut Members) -> u64 {
    // Stable: among repeats of a key the last read stays last.
    members.sort_by_key(|m| m.0);
    let mut words: SmallVec<[u64; 32]> = SmallVec::new();
    for (i, &(key, h, null)) in members.iter().enumerate() {
        if !null && members.get(i + 1).is_none_or(|next| next.0 != key) {
            words.extend([key, h]);
        }
    }
    hash_words(words.len() as u64 / 2, &words, SEED_OBJECT)
}

/// What a value is read into, by the JSON type it turns out to have.
pub(crate) trait Shape<'de>: Sized {
    /// An object: its members read one by one; returns the shape and the object's fingerprint.
    fn object<A: MapAccess<'de>>(map: A) -> Result<(Self, u64), A::Error>;
    /// An array (or any other value the shape does not take): hashed, kept by kind.
    fn array<A: SeqAccess<'de>>(seq: A) -> Result<(Self, u64), A::Error> {
        let h = any_array(seq)?;
        Ok((Self::other(Val::Array), h))
    }
    /// A scalar, or an array or object by kind.
    fn other(v: Val<'de>) -> Self;
    /// Whether the value read was `null` (a member the fingerprint leaves out).
    fn is_null(&self) -> bool;
}

/// A seed and visitor reading one value into the shape `S`, with its fingerprint.
pub(crate) struct Walk<S>(PhantomData<S>);

impl<S> Walk<S> {
    pub(crate) fn new() -> Self {
        Walk(PhantomData)
    }
}

impl<'de, S: Shape<'de>> DeserializeSeed<'de> for Walk<S> {
    type Value = (S, u64);

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: Shape<'de>> Visitor<'de> for Walk<S> {
    type Value = (S, u64);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok((S::other(Val::Null), hash_null()))
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok((S::other(Val::Bool(b)), hash_bool(b)))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Self::Value, E> {
        Ok((S::other(Val::Num(Num::U(u))), hash_num(u as f64)))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Self::Value, E> {
        Ok((S::other(Val::Num(Num::I(i))), hash_num(i as f64)))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        Ok((S::other(Val::Num(Num::F(f))), hash_num(f)))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok((S::other(Val::Str(Cow::Borrowed(s))), hash_str(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok((S::other(Val::Str(Cow::Owned(s.to_owned()))), hash_str(s)))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        let h = hash_str(&s);
        Ok((S::other(Val::Str(Cow::Owned(s))), h))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        S::array(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        S::object(map)
    }
}

/// Any value: scalars kept, arrays and objects only hashed.
impl<'de> Shape<'de> for Val<'de> {
    fn object<A: MapAccess<'de>>(map: A) -> Result<(Self, u64), A::Error> {
        let h = read_object(map, hash_member)?;
        Ok((Val::Object, h))
    }

    fn other(v: Val<'de>) -> Self {
        v
    }

    fn is_null(&self) -> bool {
        *self == Val::Null
    }
}

fn any_array<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<u64, A::Error> {
    let mut hashes: SmallVec<[u64; 16]> = SmallVec::new();
    while let Some((_, h)) = seq.next_element_seed(Walk::<Val>::new())? {
        hashes.push(h);
    }
    Ok(hash_array(&hashes))
}

/// A member's key: the shape keeps its member by name and the fingerprint takes its hash
/// (precomputed for the names a shape knows).
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

/// A member as read: its key's hash, its value's fingerprint, whether the value was `null`.
pub(crate) struct Member {
    key_hash: u64,
    hash: u64,
    null: bool,
}

/// Reads an object's members; `member` reads one value (it decides what is kept) and
/// returns it as a [`Member`]. Returns the object's fingerprint.
fn read_object<'de, A: MapAccess<'de>>(
    mut map: A,
    mut member: impl FnMut(&str, &mut A) -> Result<Member, A::Error>,
) -> Result<u64, A::Error> {
    let mut members = Members::new();
    while let Some(key) = map.next_key_seed(Key)? {
        let m = member(&key, &mut map)?;
        members.push((m.key_hash, m.hash, m.null));
    }
    Ok(hash_object(&mut members))
}

/// Reads a member the shape does not keep: hashed only.
fn hash_member<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Result<Member, A::Error> {
    read_into(&mut Val::Null, hash_key(key), map)
}

/// An object with the members a shape keeps, or why it is not one.
#[derive(Debug, Default)]
pub(crate) enum Obj<T> {
    /// `null` or absent.
    #[default]
    Null,
    Is(T),
    /// Another type.
    Not,
}

/// The members of one object that the checks read, by name.
pub(crate) trait Fields<'de>: Default {
    /// Reads the member `key` if this shape keeps it; `None` leaves it to be hashed only.
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<Option<Member>, A::Error>;
}

impl<'de, T: Fields<'de>> Shape<'de> for Obj<T> {
    fn object<A: MapAccess<'de>>(map: A) -> Result<(Self, u64), A::Error> {
        let mut fields = T::default();
        let h = read_object(map, |key, map| match fields.read(key, map)? {
            Some(read) => Ok(read),
            None => hash_member(key, map),
        })?;
        Ok((Obj::Is(fields), h))
    }

    fn other(v: Val<'de>) -> Self {
        match v {
            Val::Null => Obj::Null,
            _ => Obj::Not,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Obj::Null)
    }
}

/// Reads the value of the member whose key hashes to `key_hash` into `slot` (the last of
/// repeated keys wins).
fn read_into<'de, A: MapAccess<'de>, S: Shape<'de>>(
    slot: &mut S,
    key_hash: u64,
    map: &mut A,
) -> Result<Member, A::Error> {
    let (v, hash) = map.next_value_seed(Walk::<S>::new())?;
    let null = v.is_null();
    *slot = v;
    Ok(Member { key_hash, hash, null })
}

/// Declares a struct of `Val` members named as in the JSON, and how to read it.
macro_rules! fields {
    ($(#[$m:meta])* $name:ident { $($field:ident),* $(,)? } $(, $extra:ident : $ty:ty)*) => {
        $(#[$m])*
        #[derive(Debug, Default)]
        pub(crate) struct $name<'a> {
            $(pub(crate) $field: Val<'a>,)*
            $(pub(crate) $extra: $ty,)*
        }

        impl<'de> Fields<'de> for $name<'de> {
            fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<Option<Member>, A::Error> {
                Ok(Some(match key {
                    $(stringify!($field) => {
                        read_into(&mut self.$field, const { const_hash_key(stringify!($field)) }, map)?
                    })*
                    $(stringify!($extra) => {
                        read_into(&mut self.$extra, const { const_hash_key(stringify!($extra)) }, map)?
                    })*
                    _ => return Ok(None),
                }))
            }
        }
    };
}

fields!(
    /// A transaction's members (SPEC §1).
    RawEvent {
        event_type,
        transaction_id,
        original_transaction_id,
        user_id,
        timestamp,
        total_amount,
        payment_method,
    },
    items: Items,
    location: Obj<RawLocation<'a>>
);

fields!(
    /// One line's members.
    RawLine { product_id, product_name, category, subcategory, brand, quantity, unit_price, discount }
);

fields!(
    /// The location's members.
    RawLocation { country, region, city, timezone }
);

/// `items`: the lines, each checked as it is read ([`Lines`]).
#[derive(Debug, Default)]
pub(crate) enum Items {
    #[default]
    Null,
    Lines(Lines),
    Not,
}

impl<'de> Shape<'de> for Items {
    fn object<A: MapAccess<'de>>(map: A) -> Result<(Self, u64), A::Error> {
        let (_, h) = <Val as Shape>::object(map)?;
        Ok((Items::Not, h))
    }

    fn array<A: SeqAccess<'de>>(mut seq: A) -> Result<(Self, u64), A::Error> {
        let mut lines = Lines::default();
        let mut hashes: SmallVec<[u64; 16]> = SmallVec::new();
        loop {
            // Past the first bad line, or past the most lines an event may have, the lines
            // are only hashed (the count still tells).
            let read = if lines.checking() {
                seq.next_element_seed(Walk::<Obj<RawLine>>::new())?.map(|(line, h)| {
                    lines.check(&line);
                    h
                })
            } else {
                seq.next_element_seed(Walk::<Val>::new())?.map(|(_, h)| h)
            };
            let Some(h) = read else { break };
            lines.count += 1;
            hashes.push(h);
        }
        Ok((Items::Lines(lines), hash_array(&hashes)))
    }

    fn other(v: Val<'de>) -> Self {
        match v {
            Val::Null => Items::Null,
            _ => Items::Not,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Items::Null)
    }
}

/// Parses a whole message into the shape `S`, with its fingerprint; trailing bytes after
/// the value are an error, as for `serde_json::from_slice`.
///
/// The message's UTF-8 is checked once, up front (SIMD), so that the parser need not check
/// each string again; a message that is not UTF-8 is parsed as bytes, for serde_json's own
/// error and its position.
pub(crate) fn read<'de, S: Shape<'de>>(payload: &'de [u8]) -> Result<(S, u64), serde_json::Error> {
    match simdutf8::basic::from_utf8(payload) {
        Ok(text) => read_from(serde_json::Deserializer::from_str(text)),
        Err(_) => read_from(serde_json::Deserializer::from_slice(payload)),
    }
}

fn read_from<'de, S: Shape<'de>, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
) -> Result<(S, u64), serde_json::Error> {
    let read = Walk::<S>::new().deserialize(&mut de)?;
    de.end()?;
    Ok(read)
}
