//! tracefs: where classic tracepoints live, and their record layouts on this kernel.
use std::{
    fs,
    path::{Path, PathBuf},
};

use super::ProbeError;

const MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

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
    Ok(parse_field_offset(&format, field))
}

fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let declaration = parts.next()?.strip_prefix("field:")?;
        let declared = declaration.rsplit([' ', '*']).next()?;
        let declared = declared.split('[').next()?;
        if declared != field {
            return None;
        }
        parts.find_map(|part| part.strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::parse_field_offset;

    const EXIT: &str = "name: sched_process_exit\nID: 369\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
        \tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";

    #[test]
    fn finds_fields_by_name_not_prefix() {
        assert_eq!(parse_field_offset(EXIT, "pid"), Some(24));
        assert_eq!(parse_field_offset(EXIT, "comm"), Some(8));
        assert_eq!(parse_field_offset(EXIT, "group_dead"), Some(32));
        assert_eq!(parse_field_offset(EXIT, "group"), None);
        assert_eq!(parse_field_offset(EXIT, "prio"), None);
    }
}
