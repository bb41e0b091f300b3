//! Reads of a running interpreter's memory through one `/proc/PID/mem` fd: each bounded
//! in size, all of them together in bytes and time. The threads read are blocked, but
//! others run and free what they point at: any read may fail or return garbage, and
//! callers treat both as the end of what can be read.
use crate::pid::Pid;
use std::{fs::File, io, os::unix::fs::FileExt, path::Path, time::Instant};

/// Bytes read for one process at most: 64 frames of a few threads, with their code
/// objects, names and line tables, take tens of KiB.
const MAX_TOTAL_BYTES: usize = 4 << 20;

#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    #[error("nothing readable at {0:#x}")]
    Fault(u64),
    #[error("out of the bytes one capture may read")]
    Budget,
    #[error("out of time")]
    Late,
}

pub struct Memory {
    file: File,
    until: Instant,
    left: usize,
}

impl Memory {
    pub fn open(root: &Path, pid: Pid, until: Instant) -> io::Result<Self> {
        let file = File::open(root.join(pid.to_string()).join("mem"))?;
        Ok(Self {
            file,
            until,
            left: MAX_TOTAL_BYTES,
        })
    }

    pub fn bytes(&mut self, address: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        if len > self.left {
            return Err(ReadError::Budget);
        }
        if Instant::now() >= self.until {
            return Err(ReadError::Late);
        }
        self.left -= len;
        let mut buffer = vec![0; len];
        self.file
            .read_exact_at(&mut buffer, address)
            .map_err(|_| ReadError::Fault(address))?;
        Ok(buffer)
    }

    pub fn word(&mut self, address: u64) -> Result<u64, ReadError> {
        let bytes = self.bytes(address, 8)?;
        Ok(u64::from_le_bytes(
            bytes.try_into().map_err(|_| ReadError::Fault(address))?,
        ))
    }

    /// The word at `address` plus each of `offsets` in turn, followed as pointers.
    pub fn follow(&mut self, mut address: u64, offsets: &[u64]) -> Result<u64, ReadError> {
        for offset in offsets {
            address = self.word(address.wrapping_add(*offset))?;
        }
        Ok(address)
    }
}

/// The little-endian integer of `N` bytes at `at` in `bytes`, if they are there.
pub fn int_at<const N: usize>(bytes: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    let slice: [u8; N] = bytes.get(at..at.checked_add(N)?)?.try_into().ok()?;
    let mut word = [0; 8];
    word[..N].copy_from_slice(&slice);
    Some(u64::from_le_bytes(word))
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::*;

    fn own_memory(until: Instant) -> Memory {
        let pid = Pid::try_from(std::process::id()).expect("a pid");
        Memory::open(Path::new("/proc"), pid, until).expect("own memory")
    }

    #[test]
    fn running_out_of_bytes_and_of_time_are_told_apart() {
        let word = 0x1234_5678_u64;
        let address = std::ptr::addr_of!(word) as u64;
        let mut memory = own_memory(Instant::now() + Duration::from_secs(60));
        assert_eq!(memory.word(address), Ok(word));
        assert_eq!(
            memory.bytes(address, MAX_TOTAL_BYTES),
            Err(ReadError::Budget)
        );
        assert_eq!(
            own_memory(Instant::now()).word(address),
            Err(ReadError::Late)
        );
    }
}
