//! File descriptors are shared by HTTP clients and the agent's own work (probes, maps,
//! uprobe targets, the scanner's /proc reads): clients must never be able to take them all.
use std::io;

/// Descriptors kept for everything but HTTP connections.
const RESERVED_FOR_AGENT: u64 = 256;

/// Raises the soft RLIMIT_NOFILE to the hard limit, and returns how many connections fit
/// in it next to the agent's own descriptors: `requested`, or fewer with a warning.
pub fn connection_cap(requested: usize) -> usize {
    let limit = match raise_soft_limit() {
        Ok(limit) => limit,
        Err(error) => {
            log::warn!("cannot read or raise the open-file limit: {error}");
            return requested;
        }
    };
    let cap = fitting(requested, limit);
    if cap < requested {
        log::warn!(
            "--web-max-connections {requested} lowered to {cap}: the open-file limit is {limit} \
             and the agent keeps {RESERVED_FOR_AGENT} descriptors for itself (raise LimitNOFILE)"
        );
    }
    cap
}

/// At most a quarter of a small limit, else all but the reserve.
fn fitting(requested: usize, limit: u64) -> usize {
    let budget = limit.saturating_sub(RESERVED_FOR_AGENT).max(limit / 4);
    requested
        .min(usize::try_from(budget).unwrap_or(usize::MAX))
        .max(1)
}

fn raise_soft_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::fitting;

    #[test]
    fn the_cap_leaves_room_for_the_agent() {
        assert_eq!(fitting(256, 1_048_576), 256);
        assert_eq!(fitting(256, 1024), 256);
        assert_eq!(fitting(256, 400), 144);
        assert_eq!(fitting(256, 128), 32);
        assert_eq!(fitting(0, 128), 1);
    }
}
