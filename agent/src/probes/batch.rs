//! Reading a whole hash map with `BPF_MAP_LOOKUP_BATCH`: a few syscalls for the map
//! instead of two per entry. On a host with tens of thousands of idle threads the map of
//! waits holds an entry for each, and a scan reads it every interval.
use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    maps::{HashMap, IterableMap, MapData},
    Pod,
};

/// `BPF_MAP_LOOKUP_BATCH` from `enum bpf_cmd` (Linux 5.6).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call; a hash bucket never holds this many.
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of a hash map. Entries the kernel adds or removes meanwhile may or may
/// not be seen, as with any iteration.
pub fn lookup_all<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> io::Result<Vec<(K, V)>> {
    let fd = map.map().fd().as_fd().as_raw_fd();
    let mut entries = Vec::new();
    // The kernel's cursor for hash maps: an opaque bucket index (a u32; u64 leaves room).
    let (mut cursor, mut next) = (0u64, 0u64);
    let mut first = true;
    let mut keys: Vec<K> = Vec::with_capacity(CHUNK);
    let mut values: Vec<V> = Vec::with_capacity(CHUNK);
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw mut cursor as u64 },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers with room for `count` keys and values of the
        // map's own key and value types (aya checked their sizes against the map's when
        // it made the typed `HashMap`), and at two cursor words; all outlive the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let error = (result < 0).then(io::Error::last_os_error);
        if let Some(error) = &error {
            if error.raw_os_error() != Some(libc::ENOENT) {
                return Err(io::Error::new(
                    error.kind(),
                    format!("BPF_MAP_LOOKUP_BATCH: {error}"),
                ));
            }
        }
        let filled = (attr.count as usize).min(CHUNK);
        // SAFETY: the kernel wrote `filled` whole entries into each buffer; both types are
        // plain data.
        unsafe {
            keys.set_len(filled);
            values.set_len(filled);
        }
        entries.extend(keys.drain(..).zip(values.drain(..)));
        // ENOENT: the walk reached the end (with the last entries in this batch).
        if error.is_some() {
            return Ok(entries);
        }
        cursor = next;
        first = false;
    }
}
