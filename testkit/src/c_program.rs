//! C programs the tests and the bench build at run time, with the flags they all share.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::Error;

/// Writes `source` to `work_dir/NAME.c` and compiles it with `cc -O2 -pthread` into
/// `work_dir/NAME`, the path returned.
pub fn compile_c(work_dir: &Path, name: &str, source: &str) -> Result<PathBuf, Error> {
    let binary = work_dir.join(name);
    let source_path = work_dir.join(format!("{name}.c"));
    fs::write(&source_path, source)
        .map_err(Error::io(format!("writing {}", source_path.display())))?;
    let status = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&binary)
        .arg(&source_path)
        .status()
        .map_err(Error::io("running cc (install gcc)"))?;
    if !status.success() {
        return Err(Error::Compile {
            program: format!("{name}.c"),
            status,
        });
    }
    Ok(binary)
}
