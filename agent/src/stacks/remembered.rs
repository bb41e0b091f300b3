//! What is read or parsed from module files, remembered per file version and dropped
//! oldest first, bounded in files and in bytes (any process can map new files).
use std::collections::{BTreeMap, VecDeque};

use super::FileVersion;

/// Values by file version, with the bytes each one stands for.
pub struct Remembered<V> {
    files: BTreeMap<FileVersion, (V, u64)>,
    order: VecDeque<FileVersion>,
    bytes: u64,
    max_files: usize,
    max_bytes: u64,
}

impl<V> Remembered<V> {
    pub const fn new(max_files: usize, max_bytes: u64) -> Self {
        Self {
            files: BTreeMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_files,
            max_bytes,
        }
    }

    pub fn get(&self, version: &FileVersion) -> Option<&V> {
        self.files.get(version).map(|(value, _)| value)
    }

    /// Remembers `value`, standing for `bytes`, dropping the oldest files to make room;
    /// a value larger than all the room is not remembered, nor one already there.
    pub fn insert(&mut self, version: FileVersion, value: V, bytes: u64) {
        if bytes > self.max_bytes || self.files.contains_key(&version) {
            return;
        }
        while self.files.len() >= self.max_files || self.bytes + bytes > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, dropped)) = self.files.remove(&oldest) {
                self.bytes -= dropped;
            }
        }
        self.files.insert(version, (value, bytes));
        self.order.push_back(version);
        self.bytes += bytes;
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.files.len()
    }

    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}
