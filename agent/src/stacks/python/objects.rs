//! Reading a running interpreter's objects: `str`, `int`, `dict`, and an instance's
//! attributes, as [`Layout`] says each version keeps them. Any address may point at
//! garbage: sizes are capped, a read that fails or a shape that is not the expected one
//! gives `None`, and every read counts against the capture's [`Memory`] budget.
use super::{
    layout::{
        Attributes, Layout, DICT_KEYS, DICT_VALUES, OB_SIZE, OB_TYPE, STRING_LENGTH, STRING_STATE,
        TP_BASICSIZE, TP_DICTOFFSET, TP_FLAGS, TP_NAME,
    },
    memory::{int_at, Memory},
};

/// `Py_TPFLAGS_INLINE_VALUES` (3.13) and `Py_TPFLAGS_MANAGED_DICT` (3.11 and later).
const INLINE_VALUES: u64 = 1 << 2;
const MANAGED_DICT: u64 = 1 << 4;
/// Where an instance's managed dict (and, in 3.11, its values) sit before it.
const MANAGED_DICT_OFFSET: u64 = 3 * 8;
const MANAGED_VALUES_OFFSET: u64 = 4 * 8;
/// In 3.13's `PyDictValues` header: how many values there is room for, and whether the
/// values are still the instance's (not moved into a dict).
const VALUES_CAPACITY: u64 = 0;
const VALUES_VALID: u64 = 3;
/// An int's digits: 30 bits each, after the size; a `pthread_t` takes 3 at most.
const INT_DIGITS: u64 = 24;
const DIGIT_BITS: u32 = 30;
const MAX_INT_DIGITS: u64 = 3;

/// A compact `str` (what names and attributes are), decoded lossily and cut at
/// `max_bytes` (of its own encoding, 1, 2 or 4 bytes a character).
pub fn string(
    memory: &mut Memory,
    layout: &Layout,
    address: u64,
    max_bytes: u64,
) -> Option<String> {
    let head = memory.bytes(address, STRING_STATE as usize + 4).ok()?;
    let length = int_at::<8>(&head, STRING_LENGTH)?;
    let state = int_at::<4>(&head, STRING_STATE)?;
    let (kind, compact, ascii) = ((state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1);
    if compact == 0 || !matches!(kind, 1 | 2 | 4) {
        return None;
    }
    let data = if ascii == 1 {
        layout.ascii_data
    } else {
        layout.compact_data
    };
    let bytes = length.min(max_bytes / kind) * kind;
    let raw = memory
        .bytes(address.wrapping_add(data), bytes as usize)
        .ok()?;
    let text = raw
        .chunks_exact(kind as usize)
        .map(|unit| {
            let mut word = [0; 4];
            word[..unit.len()].copy_from_slice(unit);
            char::from_u32(u32::from_le_bytes(word)).unwrap_or(char::REPLACEMENT_CHARACTER)
        })
        .collect();
    Some(text)
}

/// Whether the object at `address` is the ASCII `str` `text` (names of modules and
/// attributes are): its length is compared before its characters are read.
pub fn is_string(memory: &mut Memory, layout: &Layout, address: u64, text: &str) -> bool {
    let Ok(head) = memory.bytes(address, STRING_STATE as usize + 4) else {
        return false;
    };
    let state = int_at::<4>(&head, STRING_STATE).unwrap_or(0);
    let compact_ascii = (state >> 2) & 7 == 1 && (state >> 5) & 3 == 3;
    compact_ascii
        && int_at::<8>(&head, STRING_LENGTH) == Some(text.len() as u64)
        && memory
            .bytes(address.wrapping_add(layout.ascii_data), text.len())
            .is_ok_and(|chars| chars == text.as_bytes())
}

/// Whether the type object at `class` is named `name` (its `tp_name`, with the
/// terminating NUL).
pub fn type_named(memory: &mut Memory, class: u64, name: &[u8]) -> bool {
    memory
        .word(class.wrapping_add(TP_NAME))
        .and_then(|tp_name| memory.bytes(tp_name, name.len()))
        .is_ok_and(|bytes| bytes == name)
}

/// A non-negative `int` that fits 64 bits (a `pthread_t`, as `threading` keys its
/// threads).
pub fn unsigned(memory: &mut Memory, layout: &Layout, address: u64) -> Option<u64> {
    let size = memory.word(address.wrapping_add(OB_SIZE)).ok()?;
    let digits = if layout.attributes.tagged_ints() {
        // The sign in the low 2 bits (2 is negative), the number of digits above 3.
        if size & 3 == 2 {
            return None;
        }
        size >> 3
    } else {
        // A negative `ob_size` is a negative number.
        if (size as i64) < 0 {
            return None;
        }
        size
    };
    if digits > MAX_INT_DIGITS {
        return None;
    }
    // Only the digits the int has: the object may end right after them.
    let bytes = memory
        .bytes(address.wrapping_add(INT_DIGITS), (digits * 4) as usize)
        .ok()?;
    let value = (0..digits).try_fold(0u128, |value, at| {
        let digit = int_at::<4>(&bytes, at * 4)?;
        Some(value | u128::from(digit) << (DIGIT_BITS * at as u32))
    })?;
    u64::try_from(value).ok()
}

/// The keys of a dict (or of a class's instances) and the values a combined table holds
/// next to them, `max` entries at most: one read of the table.
struct Entries {
    pairs: Vec<(u64, u64)>,
}

impl Entries {
    fn read(memory: &mut Memory, layout: &Layout, keys: u64, max: usize) -> Option<Self> {
        let head = memory.bytes(keys, 40).ok()?;
        // Where the entries start (past the header and the hash index), how big each is,
        // and where in it the key is.
        let (start, count, size, key) = if layout.attributes.cached_keys().is_none() {
            let slots = int_at::<8>(&head, 8)?;
            let index = match slots {
                0..=0xff => 1,
                0x100..=0xffff => 2,
                0x1_0000..=0xffff_ffff => 4,
                _ => 8,
            };
            (
                slots.checked_mul(index)?.checked_add(40)?,
                int_at::<8>(&head, 32)?,
                24,
                8,
            )
        } else {
            let index_bytes = 1u64.checked_shl(int_at::<1>(&head, 9)? as u32)?;
            // Kind 0 is the general table (hash, key, value); the others hold `str` keys
            // without their hash.
            let (size, key) = if int_at::<1>(&head, 10)? == 0 {
                (24, 8)
            } else {
                (16, 0)
            };
            (32 + index_bytes, int_at::<8>(&head, 24)?, size, key)
        };
        let count = count.min(max as u64);
        let table = memory
            .bytes(keys.wrapping_add(start), (count * size) as usize)
            .ok()?;
        let pairs = (0..count)
            .map_while(|at| {
                let entry = at * size + key;
                Some((int_at::<8>(&table, entry)?, int_at::<8>(&table, entry + 8)?))
            })
            .collect();
        Some(Self { pairs })
    }

    /// The index of the entry whose key is the `str` `name`.
    fn find(&self, memory: &mut Memory, layout: &Layout, name: &str) -> Option<usize> {
        self.pairs
            .iter()
            .position(|(key, _)| *key != 0 && is_string(memory, layout, *key, name))
    }
}

/// Where a dict's or an instance's values are when they are not next to the keys.
fn value_at(memory: &mut Memory, values: u64, index: usize) -> Option<u64> {
    memory.word(values.wrapping_add(index as u64 * 8)).ok()
}

/// The dict at `address` as its entries, `max` at most, and its split values (if any).
fn dict(memory: &mut Memory, layout: &Layout, address: u64, max: usize) -> Option<(Entries, u64)> {
    let head = memory.bytes(address, DICT_VALUES as usize + 8).ok()?;
    let keys = int_at::<8>(&head, DICT_KEYS)?;
    let values = int_at::<8>(&head, DICT_VALUES)?;
    let values = match values {
        0 => 0,
        values => values.wrapping_add(layout.attributes.values_header()),
    };
    Some((Entries::read(memory, layout, keys, max)?, values))
}

/// The value of key `name` (a `str`) in the dict at `address`, among its first `max`.
pub fn lookup(
    memory: &mut Memory,
    layout: &Layout,
    address: u64,
    name: &str,
    max: usize,
) -> Option<u64> {
    let (entries, values) = dict(memory, layout, address, max)?;
    let at = entries.find(memory, layout, name)?;
    let value = match values {
        0 => entries.pairs[at].1,
        values => value_at(memory, values, at)?,
    };
    (value != 0).then_some(value)
}

/// The (key, value) pairs of the dict at `address` (a plain one, not an instance's
/// split dict: those give none), `max` at most.
pub fn items(memory: &mut Memory, layout: &Layout, address: u64, max: usize) -> Vec<(u64, u64)> {
    match dict(memory, layout, address, max) {
        Some((entries, 0)) => entries
            .pairs
            .into_iter()
            .filter(|(key, value)| *key != 0 && *value != 0)
            .collect(),
        _ => Vec::new(),
    }
}

/// Attribute `name` of the instance at `object` (of a Python class), among its first
/// `max` attributes, wherever its version keeps it.
pub fn attribute(
    memory: &mut Memory,
    layout: &Layout,
    object: u64,
    name: &str,
    max: usize,
) -> Option<u64> {
    let class = memory.word(object.wrapping_add(OB_TYPE)).ok()?;
    let flags = memory.word(class.wrapping_add(TP_FLAGS)).ok()?;
    let (values, dict) = match layout.attributes {
        Attributes::DictOffset => {
            let offset = memory.word(class.wrapping_add(TP_DICTOFFSET)).ok()?;
            // Negative offsets (from the end of a variable-size object) are not read.
            if offset as i64 <= 0 {
                return None;
            }
            (0, memory.word(object.wrapping_add(offset)).ok()?)
        }
        _ if flags & MANAGED_DICT == 0 => return None,
        Attributes::Managed { .. } => {
            let values = memory
                .word(object.wrapping_sub(MANAGED_VALUES_OFFSET))
                .ok()?;
            (values, managed_dict(memory, object)?)
        }
        Attributes::Tagged { .. } => match managed_dict(memory, object)? {
            tagged if tagged & 1 == 1 => (tagged.wrapping_add(1), 0),
            dict => (0, dict),
        },
        Attributes::Inline { .. } => {
            let size = memory.word(class.wrapping_add(TP_BASICSIZE)).ok()?;
            let inline = object.wrapping_add(size);
            let header = memory.bytes(inline, 8).ok()?;
            let valid = int_at::<1>(&header, VALUES_VALID) == Some(1);
            if flags & INLINE_VALUES != 0 && valid {
                let capacity = int_at::<1>(&header, VALUES_CAPACITY)? as usize;
                return shared(memory, layout, class, inline + 8, name, max.min(capacity));
            }
            (0, managed_dict(memory, object)?)
        }
    };
    match values {
        0 => lookup(memory, layout, dict, name, max),
        values => shared(memory, layout, class, values, name, max),
    }
}

fn managed_dict(memory: &mut Memory, object: u64) -> Option<u64> {
    memory.word(object.wrapping_sub(MANAGED_DICT_OFFSET)).ok()
}

/// Attribute `name` of an instance of `class` whose values are at `values`, in the order
/// of the keys the class's instances share.
fn shared(
    memory: &mut Memory,
    layout: &Layout,
    class: u64,
    values: u64,
    name: &str,
    max: usize,
) -> Option<u64> {
    let cached_keys = layout.attributes.cached_keys()?;
    let keys = memory.word(class.wrapping_add(cached_keys)).ok()?;
    let at = Entries::read(memory, layout, keys, max)?.find(memory, layout, name)?;
    value_at(memory, values, at).filter(|value| *value != 0)
}

/// Objects laid out in this process's memory as an interpreter of a given version lays
/// them out, read back through `/proc/self/mem` like another process's.
#[cfg(test)]
pub(super) mod fake {
    use std::{path::Path, time::Duration, time::Instant};

    use super::super::layout::{self, Attributes, Layout, Version};
    use super::Memory;
    use crate::pid::Pid;

    pub struct Fake {
        pub layout: &'static Layout,
        objects: Vec<Vec<u8>>,
    }

    impl Fake {
        pub fn new(minor: u8) -> Self {
            Self {
                layout: layout::layout(Version { major: 3, minor }).expect("a known version"),
                objects: Vec::new(),
            }
        }

        pub fn memory(&self) -> Memory {
            let pid = Pid::try_from(std::process::id()).expect("a pid");
            Memory::open(
                Path::new("/proc"),
                pid,
                Instant::now() + Duration::from_secs(60),
            )
            .expect("own memory")
        }

        /// `len` bytes with little-endian `fields` (offset, bytes, value); its address.
        pub fn object(&mut self, len: usize, fields: &[(u64, usize, u64)]) -> u64 {
            let mut bytes = vec![0u8; len];
            for (at, size, value) in fields {
                let at = *at as usize;
                bytes[at..at + size].copy_from_slice(&value.to_le_bytes()[..*size]);
            }
            // The heap buffer stays where it is when the vector moves.
            let address = bytes.as_ptr() as u64;
            self.objects.push(bytes);
            address
        }

        /// Overwrites the word at `address`, in an object made before.
        pub fn set(&mut self, address: u64, value: u64) {
            let object = self
                .objects
                .iter_mut()
                .find(|o| {
                    (o.as_ptr() as u64..o.as_ptr() as u64 + o.len() as u64).contains(&address)
                })
                .expect("an address in a fake object");
            let at = (address - object.as_ptr() as u64) as usize;
            object[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }

        /// An ASCII `str` claiming `length` characters (its text is `text`).
        pub fn string_of(&mut self, text: &str, length: u64) -> u64 {
            let data = self.layout.ascii_data as usize;
            let address = self.object(data + text.len(), &[(16, 8, length), (32, 4, 100)]);
            let object = self.objects.last_mut().expect("the string");
            object[data..].copy_from_slice(text.as_bytes());
            address
        }

        pub fn string(&mut self, text: &str) -> u64 {
            self.string_of(text, text.len() as u64)
        }

        /// An `int` of 30-bit `digits`, least significant first.
        pub fn int(&mut self, digits: &[u32]) -> u64 {
            let count = digits.len() as u64;
            let size = if self.layout.attributes.tagged_ints() {
                count << 3
            } else {
                count
            };
            let mut fields = vec![(16, 8, size)];
            fields.extend(
                digits
                    .iter()
                    .enumerate()
                    .map(|(at, digit)| (24 + at as u64 * 4, 4, u64::from(*digit))),
            );
            self.object(24 + 4 * digits.len().max(3), &fields)
        }

        /// Dict keys holding `pairs` (key, value; values 0 for a class's shared keys),
        /// claiming `count` entries.
        pub fn keys(&mut self, pairs: &[(u64, u64)], count: u64, shared: bool) -> u64 {
            // Eight slots: one byte of index each.
            let (mut fields, start, size, key) = if self.layout.attributes.cached_keys().is_none() {
                (vec![(8, 8, 8), (32, 8, count)], 48, 24, 8)
            } else {
                let (size, key) = if shared { (16, 0) } else { (24, 8) };
                let kind = if shared { 2 } else { 0 };
                (
                    vec![(8, 1, 3), (9, 1, 3), (10, 1, kind), (24, 8, count)],
                    40,
                    size,
                    key,
                )
            };
            for (at, (k, v)) in pairs.iter().enumerate() {
                let entry = start + at as u64 * size + key;
                fields.push((entry, 8, *k));
                fields.push((entry + 8, 8, *v));
            }
            self.object((start + size * pairs.len() as u64) as usize + 8, &fields)
        }

        pub fn dict(&mut self, pairs: &[(u64, u64)]) -> u64 {
            let keys = self.keys(pairs, pairs.len() as u64, false);
            self.object(48, &[(32, 8, keys)])
        }

        /// An instance of a class whose instances have the attributes `pairs`, kept as
        /// this version keeps them when nothing asked for the instance's `__dict__`.
        pub fn instance(&mut self, pairs: &[(u64, u64)]) -> u64 {
            match self.layout.attributes.cached_keys() {
                None => {
                    let dict = self.dict(pairs);
                    let class = self.object(296, &[(288, 8, 16)]);
                    self.object(32, &[(8, 8, class), (16, 8, dict)])
                }
                Some(cached_keys) => {
                    let names: Vec<(u64, u64)> = pairs.iter().map(|(k, _)| (*k, 0)).collect();
                    let keys = self.keys(&names, names.len() as u64, true);
                    let inline = self.layout.attributes.values_header() != 0;
                    // Inline values, managed dict (both flags from 3.13).
                    let flags = if inline { 0b1_0100 } else { 0b1_0000 };
                    let class = self.object(
                        cached_keys as usize + 8,
                        &[(32, 8, 16), (168, 8, flags), (cached_keys, 8, keys)],
                    );
                    let values: Vec<u64> = pairs.iter().map(|(_, v)| *v).collect();
                    self.values_instance(class, &values)
                }
            }
        }

        /// An instance of `class` (3.11 and later) with `values`, after 4 words: 3.11's
        /// values pointer, then the managed dict (3.12: values tagged by the low bit).
        /// 3.13's values are inline, after the object's 16 bytes and their header.
        fn values_instance(&mut self, class: u64, values: &[u64]) -> u64 {
            const OBJECT: u64 = 32;
            let mut fields = vec![(OBJECT + 8, 8, class)];
            match self.layout.attributes {
                Attributes::Managed { .. } | Attributes::Tagged { .. } => {
                    let array = self.object(8 * values.len(), &values_fields(values, 0));
                    fields.push(match self.layout.attributes {
                        Attributes::Managed { .. } => (0, 8, array),
                        _ => (8, 8, array - 1),
                    });
                }
                _ => {
                    let inline = OBJECT + 16;
                    let n = values.len() as u64;
                    // Capacity, size, embedded, valid.
                    fields.extend([(inline, 1, n), (inline + 1, 1, n), (inline + 2, 1, 1)]);
                    fields.push((inline + 3, 1, 1));
                    fields.extend(values_fields(values, inline + 8));
                }
            }
            self.object(OBJECT as usize + 24 + 8 * values.len(), &fields) + OBJECT
        }
    }

    fn values_fields(values: &[u64], start: u64) -> Vec<(u64, usize, u64)> {
        values
            .iter()
            .enumerate()
            .map(|(at, v)| (start + at as u64 * 8, 8, *v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Fake;
    use super::*;

    #[test]
    fn only_non_negative_ints_of_64_bits_are_read() {
        for minor in [7, 11, 12, 13] {
            let mut fake = Fake::new(minor);
            let mut memory = fake.memory();
            let mut read = |digits: &[u32]| {
                let address = fake.int(digits);
                unsigned(&mut memory, fake.layout, address)
            };
            assert_eq!(read(&[]), Some(0));
            assert_eq!(read(&[5, 1]), Some((1 << 30) + 5));
            assert_eq!(read(&[0, 0, 0xf]), Some(0xf << 60));
            // 2^64 and more, or more digits than a pthread_t takes.
            assert_eq!(read(&[0, 0, 0x10]), None);
            assert_eq!(read(&[1, 1, 1, 1]), None);
        }
        let mut fake = Fake::new(11);
        let negative = fake.object(40, &[(OB_SIZE, 8, -1i64 as u64), (24, 4, 7)]);
        assert_eq!(unsigned(&mut fake.memory(), fake.layout, negative), None);
        let mut fake = Fake::new(12);
        let negative = fake.object(40, &[(OB_SIZE, 8, (1 << 3) | 2), (24, 4, 7)]);
        assert_eq!(unsigned(&mut fake.memory(), fake.layout, negative), None);
    }

    #[test]
    fn dicts_that_claim_too_much_are_read_within_bounds() {
        let mut fake = Fake::new(10);
        let key = fake.string("threading");
        // 2^62 slots overflow the index's size; 2^40 entries are cut at `max`.
        let slots = fake.object(48, &[(8, 8, 1 << 62), (32, 8, 1)]);
        let huge = fake.object(48, &[(DICT_KEYS, 8, slots)]);
        let keys = fake.keys(&[(key, key)], 1 << 40, false);
        let many = fake.object(48, &[(DICT_KEYS, 8, keys)]);
        let mut memory = fake.memory();
        assert_eq!(lookup(&mut memory, fake.layout, huge, "threading", 8), None);
        assert_eq!(
            lookup(&mut memory, fake.layout, many, "threading", 1),
            Some(key)
        );
        assert_eq!(items(&mut memory, fake.layout, many, 1), [(key, key)]);
        // A key of the right length but other characters.
        assert_eq!(lookup(&mut memory, fake.layout, many, "threadinG", 1), None);
    }
}
