//! The `CHANGED` map, mapped into the agent: one byte per thread id that the probes set
//! whenever they write or remove the thread's entry in `BLOCKED`, and one summary byte
//! per chunk of ids (layout in [`exitwatch_common::changed`]). Reading it costs a pass
//! over the summary and the chunks with a change, with no syscall; a change can never be
//! lost to a full buffer, and a thread that changes a thousand times between two scans
//! is one id.
use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{Array, IterableMap, MapData};
use exitwatch_common::changed::{words, CHUNK, SUMMARY_WORDS};

/// Words of the map per summary byte.
const CHUNK_WORDS: usize = (CHUNK / 8) as usize;

pub struct ChangedIds {
    words: NonNull<AtomicU64>,
    len: usize,
    /// Keeps the map alive while it is mapped.
    _map: Array<MapData, u64>,
}

// SAFETY: the mapping is shared memory that is only ever accessed through atomics, and it
// lives as long as this value.
unsafe impl Send for ChangedIds {}

impl ChangedIds {
    /// Maps `map`, which the loader sized for thread ids below `ids`.
    pub fn new(map: Array<MapData, u64>, ids: u32) -> io::Result<Self> {
        let len = words(ids) as usize;
        if map.len() as usize != len {
            return Err(io::Error::other(format!(
                "the map of changed ids has {} words, not {len}",
                map.len()
            )));
        }
        let fd = map.map().fd().as_fd().as_raw_fd();
        // SAFETY: a shared read-write mapping of an mmapable array map's values, `len`
        // u64 words long (the map's own size, checked above).
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let words = NonNull::new(address.cast()).ok_or_else(|| io::Error::other("mmap: NULL"))?;
        Ok(Self {
            words,
            len,
            _map: map,
        })
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        assert!(index < self.len, "word {index} of {}", self.len);
        // SAFETY: inside the mapping (checked above), which outlives `&self`; the kernel
        // writes it concurrently, so it is only read and written atomically.
        unsafe { self.words.add(index).as_ref() }
    }

    /// Appends the ids marked since the last call to `ids`, clearing their marks. A
    /// chunk's summary is cleared before its ids are read: the probes mark the id first,
    /// so a change made meanwhile is either read now or marked again for the next call.
    pub fn take(&self, ids: &mut Vec<u32>) {
        let chunks = (self.len - SUMMARY_WORDS as usize).div_ceil(CHUNK_WORDS);
        for summary in 0..SUMMARY_WORDS as usize {
            if summary * 8 >= chunks {
                break;
            }
            let marked = self.word(summary).swap(0, Ordering::SeqCst);
            for (byte, _) in marked_bytes(marked) {
                let chunk = summary * 8 + byte;
                let first = SUMMARY_WORDS as usize + chunk * CHUNK_WORDS;
                for index in first..(first + CHUNK_WORDS).min(self.len) {
                    if self.word(index).load(Ordering::Relaxed) == 0 {
                        continue;
                    }
                    let marked = self.word(index).swap(0, Ordering::SeqCst);
                    let base = (index - SUMMARY_WORDS as usize) * 8;
                    ids.extend(marked_bytes(marked).map(|(byte, _)| (base + byte) as u32));
                }
            }
        }
    }
}

impl Drop for ChangedIds {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.words.as_ptr().cast(), self.len * 8) };
    }
}

/// The non-zero bytes of a word, in memory order (x86_64 is little-endian).
fn marked_bytes(word: u64) -> impl Iterator<Item = (usize, u8)> {
    word.to_le_bytes()
        .into_iter()
        .enumerate()
        .filter(|(_, byte)| *byte != 0)
}

#[cfg(test)]
mod tests {
    use super::marked_bytes;

    #[test]
    fn bytes_are_ids_in_memory_order() {
        let word = u64::from_le_bytes([0, 1, 0, 0, 0, 0, 0, 1]);
        let bytes: Vec<usize> = marked_bytes(word).map(|(byte, _)| byte).collect();
        assert_eq!(bytes, vec![1, 7]);
    }
}
