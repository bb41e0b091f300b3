//! What a binary needs from the system it runs on, read with `readelf`: the released
//! agent must need nothing (static), so it runs on every x86_64 distribution whatever
//! its glibc (a dynamic build on Debian 12 needs glibc ≥ 2.34, newer than Ubuntu 20.04's
//! or Amazon Linux 2's, both of which run 5.15 kernels).
use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

#[derive(Debug, Default)]
pub struct Linkage {
    pub machine: String,
    /// The program interpreter (`ld-linux`) a dynamic executable asks for.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` shared libraries.
    pub needed: Vec<String>,
    /// The newest `GLIBC_x.y` symbol version its dynamic symbols require.
    pub newest_glibc: Option<(u32, u32)>,
}

/// Fails unless `binary` is an x86-64 executable that loads no shared library.
pub fn check_static(binary: &Path) -> Result<()> {
    let linkage = read(binary)?;
    let mut problems = Vec::new();
    if linkage.machine != "Advanced Micro Devices X86-64" {
        problems.push(format!("machine is {:?}, not X86-64", linkage.machine));
    }
    if let Some(interpreter) = &linkage.interpreter {
        problems.push(format!("asks for the interpreter {interpreter}"));
    }
    if !linkage.needed.is_empty() {
        problems.push(format!("needs {}", linkage.needed.join(", ")));
    }
    if let Some((major, minor)) = linkage.newest_glibc {
        problems.push(format!("requires symbols up to GLIBC_{major}.{minor}"));
    }
    if !problems.is_empty() {
        bail!(
            "{} must be a static x86-64 executable (README, \"Release tarball\"), but it {}; \
             RUSTFLAGS set in the environment replace the +crt-static of the dist build",
            binary.display(),
            problems.join("; ")
        );
    }
    Ok(())
}

pub fn read(binary: &Path) -> Result<Linkage> {
    let output = Command::new("readelf")
        .args([
            "--wide",
            "--file-header",
            "--program-headers",
            "--dynamic",
            "--dyn-syms",
        ])
        .arg(binary)
        .env("LC_ALL", "C")
        .output()
        .context("running readelf (binutils)")?;
    if !output.status.success() {
        bail!(
            "readelf {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(parse(&String::from_utf8_lossy(&output.stdout)))
}

fn parse(readelf: &str) -> Linkage {
    let mut linkage = Linkage::default();
    for line in readelf.lines() {
        let line = line.trim();
        if let Some(machine) = line.strip_prefix("Machine:") {
            linkage.machine = machine.trim().to_string();
        } else if let Some(interpreter) = line.strip_prefix("[Requesting program interpreter:") {
            linkage.interpreter = Some(interpreter.trim_end_matches(']').trim().to_string());
        } else if line.contains("(NEEDED)") {
            if let Some(library) = bracketed(line) {
                linkage.needed.push(library.to_string());
            }
        }
        for version in line.split("@GLIBC_").skip(1).filter_map(glibc_version) {
            linkage.newest_glibc = linkage.newest_glibc.max(Some(version));
        }
    }
    linkage
}

fn bracketed(line: &str) -> Option<&str> {
    let start = line.find('[')? + 1;
    let end = start + line[start..].find(']')?;
    Some(&line[start..end])
}

/// `2.34 (3)` or `2.2.5` → (2, 34) / (2, 2): the third component never raises a floor
/// that matters here.
fn glibc_version(text: &str) -> Option<(u32, u32)> {
    let digits = text
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut parts = digits.split('.').map(|part| part.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_system_binary_is_refused_with_what_it_needs() {
        let binary = Path::new("/bin/true");
        let linkage = read(binary).expect("readelf on /bin/true");
        assert!(
            linkage.needed.iter().any(|l| l == "libc.so.6"),
            "{linkage:?}"
        );
        assert!(linkage.interpreter.is_some(), "{linkage:?}");
        assert!(linkage.newest_glibc >= Some((2, 2)), "{linkage:?}");
        let refusal = check_static(binary).expect_err("/bin/true is dynamic");
        let message = refusal.to_string();
        assert!(message.contains("needs libc.so.6"), "{message}");
        assert!(message.contains("GLIBC_2."), "{message}");
    }

    #[test]
    fn versions_compare_by_number_not_text() {
        let readelf = "  Machine:                           Advanced Micro Devices X86-64\n\
             \x20 1: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND memcpy@GLIBC_2.14 (4)\n\
             \x20 2: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND read@GLIBC_2.2.5 (2)\n\
             \x20 3: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND gettid@GLIBC_2.30 (5)\n\
             \x20 4: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND dlsym@GLIBC_2.4 (6)\n";
        assert_eq!(parse(readelf).newest_glibc, Some((2, 30)));
    }
}
