//! tracefs: where classic tracepoints live, and their record layouts on this kernel.
use std::{
    fs,
    path::{Path, PathBuf},
};

use exitwatch_common::tracefs_format::{self, MOUNTS};

use super::ProbeError;

/// The tracefs mount, mounting it at the standard place if nothing is mounted yet (as
/// systemd does on most hosts; minimal images and containers often skip it).
pub fn ensure_mounted() -> Result<PathBuf, ProbeError> {
    if let Some(found) = MOUNTS
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
    {
        return Ok(found.to_path_buf());
    }
    let target = Path::new(MOUNTS[0]);
    let rc = unsafe {
        // SAFETY: NUL-terminated literals, no data argument.
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 || !target.join("events").is_dir() {
        return Err(ProbeError::Tracefs(std::io::Error::last_os_error()));
    }
    Ok(target.to_path_buf())
}

/// Offset of `field` in the record of tracepoint `category/name`, from its format file;
/// `None` when this kernel's record has no such field.
pub fn field_offset(
    tracefs: &Path,
    category: &str,
    name: &str,
    field: &str,
) -> Result<Option<u32>, ProbeError> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let format = fs::read_to_string(&path).map_err(|source| ProbeError::TracepointFormat {
        tracepoint: format!("{category}/{name}"),
        source,
    })?;
    Ok(tracefs_format::field_offset(&format, field))
}
