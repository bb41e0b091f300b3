use std::{error::Error, io};

use aya::{maps::MapError, programs::ProgramError, EbpfError};

#[derive(thiserror::Error, Debug)]
pub enum ProbeError {
    #[error(
        "this exitwatch binary has no usable eBPF object (it was {0} at build time): \
         run `cargo xtask build-ebpf && cargo build --release`"
    )]
    NoObject(&'static str),
    #[error(
        "missing privileges to load eBPF programs: run as root, or grant CAP_SYS_ADMIN, \
         CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (CAP_BPF with CAP_PERFMON loads the \
         tracepoints, but kernels with the 2025 uprobe fix attach uprobes only with \
         CAP_SYS_ADMIN)"
    )]
    Privileges,
    #[error(
        "this kernel exposes no BTF at /sys/kernel/btf/vmlinux: exitwatch needs Linux >= 5.15 \
         built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0}")]
    Tracefs(std::io::Error),
    #[error("cannot read the format of tracepoint {tracepoint}: {source}")]
    TracepointFormat {
        tracepoint: String,
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field `{field}` on this kernel")]
    MissingField {
        tracepoint: String,
        field: &'static str,
    },
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] EbpfError),
    #[error("starting the eBPF log reader failed: {0}")]
    Logger(#[source] aya_log::Error),
    #[error("the eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("eBPF program `{name}`: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("eBPF map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

impl ProbeError {
    pub fn program(name: &'static str, source: ProgramError) -> Self {
        if is_permission_error(&source) {
            return Self::Privileges;
        }
        Self::Program { name, source }
    }

    pub fn map(name: &'static str, source: MapError) -> Self {
        Self::Map { name, source }
    }
}

pub fn load_error(error: EbpfError) -> ProbeError {
    if is_permission_error(&error) {
        ProbeError::Privileges
    } else {
        ProbeError::Load(error)
    }
}

/// Whether any error along `error`'s source chain is EPERM or EACCES (both
/// `PermissionDenied`), as the kernel answers `bpf()` and `perf_event_open` without the
/// capabilities.
fn is_permission_error(error: &(dyn Error + 'static)) -> bool {
    std::iter::successors(Some(error), |&error| error.source())
        .filter_map(io_error)
        .any(|error| error.kind() == io::ErrorKind::PermissionDenied)
}

fn io_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a io::Error> {
    // aya wraps some `io::Error`s transparently, which hands their (empty) source chain
    // on instead of the error itself.
    match (
        error.downcast_ref::<ProgramError>(),
        error.downcast_ref::<MapError>(),
    ) {
        (Some(ProgramError::IOError(io)), _) | (_, Some(MapError::IoError(io))) => Some(io),
        _ => error.downcast_ref::<io::Error>(),
    }
}

/// Fails early, with the capabilities to grant, instead of on the first `bpf()` call.
pub fn check_privileges() -> Result<(), ProbeError> {
    // SAFETY: no arguments, cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(ProbeError::Privileges)
    }
}

#[cfg(test)]
mod tests {
    use aya::sys::SyscallError;

    use super::*;

    fn denied(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn permission_errors_are_found_through_aya_wrappers() {
        let syscall = || SyscallError {
            call: "bpf_map_create",
            io_error: denied(libc::EPERM),
        };
        let load = EbpfError::MapError(MapError::CreateError {
            name: "PROCS".into(),
            io_error: denied(libc::EPERM),
        });
        assert!(matches!(load_error(load), ProbeError::Privileges));
        let attach = ProgramError::SyscallError(syscall());
        assert!(matches!(
            ProbeError::program("sched_switch", attach),
            ProbeError::Privileges
        ));
        let io = ProgramError::IOError(denied(libc::EACCES));
        assert!(matches!(
            ProbeError::program("sched_switch", io),
            ProbeError::Privileges
        ));
        let nested = EbpfError::ProgramError(ProgramError::SyscallError(syscall()));
        assert!(matches!(load_error(nested), ProbeError::Privileges));
    }

    #[test]
    fn other_errors_keep_their_cause() {
        let missing = ProgramError::IOError(denied(libc::ENOENT));
        assert!(matches!(
            ProbeError::program("sched_switch", missing),
            ProbeError::Program { .. }
        ));
        assert!(matches!(load_error(EbpfError::NoBTF), ProbeError::Load(_)));
    }
}
