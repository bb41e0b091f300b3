//! Reading a running interpreter's objects: `str`, `int`, `dict`, and an instance's
//! attributes, as [`Layout`] says each version keeps them. Any address may point at
//! garbage: sizes are capped, a read that fails or a shape that is not the expected one
//! gives `None`, and every read counts against the capture's [`Memory`] budget.
use super::{
    layout::{
        Attributes, Layout, DICT_KEYS, DICT_VALUES, OB_SIZE, OB_TYPE, STRING_LENGTH, STRING_STATE,
        TP_BASICSIZE, TP_DICTOFFSET, TP_FLAGS,
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
fn is_string(memory: &mut Memory, layout: &Layout, address: u64, text: &str) -> bool {
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

/// A non-negative `int` that fits 64 bits (a `pthread_t`, as `threading` keys its
/// threads).
pub fn unsigned(memory: &mut Memory, layout: &Layout, address: u64) -> Option<u64> {
    let bytes = memory
        .bytes(address, (INT_DIGITS + MAX_INT_DIGITS * 4) as usize)
        .ok()?;
    let size = int_at::<8>(&bytes, OB_SIZE)?;
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
    let value = (0..digits).try_fold(0u128, |value, at| {
        let digit = int_at::<4>(&bytes, INT_DIGITS + at * 4)?;
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
