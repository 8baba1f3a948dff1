//! Interned ids: each distinct string gets a dense 32-bit handle, in order of first
//! appearance, and the strings live end to end in one buffer.
//!
//! This is how the state holds a million customer ids without a million small allocations:
//! per id its bytes, a 4-byte end offset and a 4-byte slot in a hash table of handles
//! (about 25 bytes for a 10-character id, where a `Box<str>` key in a map costs about 60).
//! The table stores handles only; a lookup compares against the buffer, and growing the
//! table hashes the strings again from the buffer.

use std::fmt;
use std::hash::BuildHasher;

use hashbrown::hash_table::{Entry, HashTable};

/// Distinct strings and their handles `0..len`, never removed.
#[derive(Clone, Default)]
pub struct Interner {
    /// Every string, end to end.
    bytes: String,
    /// Where each string ends in `bytes` (its start is where the previous one ends).
    ends: Vec<u32>,
    table: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

fn slice<'a>(bytes: &'a str, ends: &[u32], handle: u32) -> &'a str {
    let i = handle as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &bytes[start..ends[i] as usize]
}

impl Interner {
    /// Room for `n` strings without growing the table.
    pub fn with_capacity(n: usize) -> Self {
        Interner { ends: Vec::with_capacity(n), table: HashTable::with_capacity(n), ..Self::default() }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The handle of `s`, if it was interned.
    pub fn get(&self, s: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(s);
        self.table.find(hash, |&h| slice(&self.bytes, &self.ends, h) == s).copied()
    }

    /// The handle of `s`, and whether it was interned just now.
    pub fn intern(&mut self, s: &str) -> (u32, bool) {
        let Interner { bytes, ends, table, hasher } = self;
        let hash = hasher.hash_one(s);
        let entry = table.entry(hash, |&h| slice(bytes, ends, h) == s, |&h| hasher.hash_one(slice(bytes, ends, h)));
        match entry {
            Entry::Occupied(e) => (*e.get(), false),
            Entry::Vacant(e) => {
                let handle = u32::try_from(ends.len()).expect("fewer than 2^32 interned strings");
                bytes.push_str(s);
                ends.push(u32::try_from(bytes.len()).expect("interned strings within 4 GiB"));
                e.insert(handle);
                (handle, true)
            }
        }
    }

    /// The string of `handle` (one this interner gave).
    pub fn resolve(&self, handle: u32) -> &str {
        slice(&self.bytes, &self.ends, handle)
    }

    /// Every string, in handle order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.ends.len() as u32).map(|h| self.resolve(h))
    }
}

impl fmt::Debug for Interner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for Interner {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes && self.ends == other.ends
    }
}

/// Serialized as its strings in handle order; deserializing interns them again (a repeated
/// string is an error: the handles would not survive).
impl serde::Serialize for Interner {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Interner {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Strings;
        impl<'de> serde::de::Visitor<'de> for Strings {
            type Value = Interner;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of distinct strings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Interner, A::Error> {
                let mut out = Interner::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 26));
                while let Some(s) = seq.next_element_seed(InternNext(&mut out))? {
                    if !s {
                        return Err(serde::de::Error::custom("a string repeated in an interner"));
                    }
                }
                out.bytes.shrink_to_fit();
                Ok(out)
            }
        }
        deserializer.deserialize_seq(Strings)
    }
}

/// Deserializes a sequence into a `Vec` of exactly its length (serde's own `Vec` grows by
/// doubling past a cautious first allocation: up to twice the memory for a large state).
pub fn exact_vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Exact<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Exact<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 26));
            while let Some(x) = seq.next_element()? {
                out.push(x);
            }
            out.shrink_to_fit();
            Ok(out)
        }
    }
    deserializer.deserialize_seq(Exact(std::marker::PhantomData))
}

/// Interns one deserialized string without an owned copy; yields whether it was new.
struct InternNext<'a>(&'a mut Interner);

impl<'de> serde::de::DeserializeSeed<'de> for InternNext<'_> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        struct One<'a>(&'a mut Interner);
        impl serde::de::Visitor<'_> for One<'_> {
            type Value = bool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<bool, E> {
                Ok(self.0.intern(s).1)
            }
        }
        deserializer.deserialize_str(One(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_dense_stable_and_round_trip() {
        let mut ids = Interner::default();
        assert_eq!(ids.intern("C1"), (0, true));
        assert_eq!(ids.intern(""), (1, true));
        assert_eq!(ids.intern("C22"), (2, true));
        assert_eq!(ids.intern("C1"), (0, false));
        assert_eq!(ids.get("C22"), Some(2));
        assert_eq!(ids.get("C2"), None);
        assert_eq!(ids.resolve(1), "");
        assert_eq!(ids.iter().collect::<Vec<_>>(), ["C1", "", "C22"]);
        // Many more than the first table holds: handles survive growth.
        for i in 0..10_000 {
            ids.intern(&format!("X{i}"));
        }
        assert_eq!(ids.get("X9999"), Some(3 + 9999));
        assert_eq!(ids.resolve(3 + 5000), "X5000");

        let bytes = postcard::to_allocvec(&ids).unwrap();
        let back: Interner = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, ids);
        assert_eq!(back.get("X42"), Some(45));
    }

    #[test]
    fn a_repeated_string_is_refused_on_restore() {
        let bytes = postcard::to_allocvec(&vec!["a", "b", "a"]).unwrap();
        assert!(postcard::from_bytes::<Interner>(&bytes).is_err());
    }
}
