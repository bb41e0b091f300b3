//! Process and thread ids. The kernel hands them over as `u32` (map keys, event and
//! record fields), `/proc` and libc as `pid_t`; a `u32` above `i32::MAX` is not an id.
use std::{fmt, num::ParseIntError, str::FromStr};

use serde::{Deserialize, Serialize};

/// A pid or tid: the same number space in Linux. Serialized as a plain number.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Pid(i32);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0} is not a process id")]
pub struct NotAPid(i64);

impl Pid {
    /// A `pid_t` as libc or `/proc` gives it.
    pub const fn from_raw(raw: i32) -> Self {
        Self(raw)
    }

    /// The `pid_t` for libc and `/proc` paths.
    pub const fn as_raw(self) -> i32 {
        self.0
    }
}

impl TryFrom<u32> for Pid {
    type Error = NotAPid;

    fn try_from(kernel: u32) -> Result<Self, NotAPid> {
        i32::try_from(kernel)
            .map(Self)
            .map_err(|_| NotAPid(kernel.into()))
    }
}

/// The kernel's key for this id; a negative `pid_t` (a syscall argument can hold one)
/// has none.
impl TryFrom<Pid> for u32 {
    type Error = NotAPid;

    fn try_from(pid: Pid) -> Result<Self, NotAPid> {
        u32::try_from(pid.0).map_err(|_| NotAPid(pid.0.into()))
    }
}

/// Tests compare with the numbers they started from.
impl PartialEq<i32> for Pid {
    fn eq(&self, raw: &i32) -> bool {
        self.0 == *raw
    }
}

impl FromStr for Pid {
    type Err = ParseIntError;

    fn from_str(text: &str) -> Result<Self, ParseIntError> {
        text.parse().map(Self)
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_ids_above_pid_max_are_refused() {
        assert_eq!(Pid::try_from(42u32), Ok(Pid::from_raw(42)));
        assert!(Pid::try_from(u32::MAX).is_err());
        assert!(u32::try_from(Pid::from_raw(-1)).is_err());
    }

    #[test]
    fn serializes_as_a_plain_number() {
        let json = serde_json::to_string(&[Pid::from_raw(7)]).expect("serialize");
        assert_eq!(json, "[7]");
        let back: Vec<Pid> = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, [Pid::from_raw(7)]);
    }
}
