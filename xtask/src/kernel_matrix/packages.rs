//! Debian packages fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a
//! cache under `target/`: nothing is installed on the host, and a second run downloads
//! nothing.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::system::{apt_update_once, run_command, say};

/// The newest package whose name matches `pattern` (an `apt-cache search --names-only`
/// regular expression), updating the package lists once if none does.
pub fn newest_matching(pattern: &str) -> Result<String> {
    let search = || -> Result<Vec<String>> {
        let output = Command::new("apt-cache")
            .args(["search", "--names-only", pattern])
            .output()
            .context("running apt-cache search (the kernel matrix needs Debian's archive)")?;
        if !output.status.success() {
            bail!("apt-cache search {pattern} failed: {}", output.status);
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .map(String::from)
            .collect())
    };
    let mut names = search()?;
    if names.is_empty() {
        apt_update_once()?;
        names = search()?;
    }
    names
        .into_iter()
        .max_by_key(|name| version_key(name))
        .with_context(|| format!("no Debian package matches {pattern}"))
}

/// The numbers in a package name, in order: `linux-image-6.1.0-57-…` sorts after `-9-`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|digits| digits.parse().ok())
        .collect()
}

/// `package` unpacked under `cache`; downloaded only when not there yet.
pub fn unpacked(cache: &Path, package: &str) -> Result<PathBuf> {
    let tree = cache.join(package);
    if tree.is_dir() {
        return Ok(tree);
    }
    let download = cache.join("download");
    // Leftovers of an interrupted run would be unpacked as well.
    if download.exists() {
        fs::remove_dir_all(&download)
            .with_context(|| format!("removing {}", download.display()))?;
    }
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    say(format!("downloading {package}"));
    run_command(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(&download),
    )?;
    let partial = cache.join(format!("{package}.partial"));
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    for deb in fs::read_dir(&download).with_context(|| format!("listing {}", download.display()))? {
        let deb = deb
            .with_context(|| format!("listing {}", download.display()))?
            .path();
        run_command(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    }
    fs::remove_dir_all(&download).with_context(|| format!("removing {}", download.display()))?;
    // Renamed only once complete, so an interrupted unpack is never taken for a cache hit.
    fs::rename(&partial, &tree).with_context(|| format!("renaming {}", partial.display()))?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::version_key;

    #[test]
    fn newer_abi_numbers_sort_higher() {
        assert!(
            version_key("linux-image-6.1.0-57-amd64-unsigned")
                > version_key("linux-image-6.1.0-9-amd64-unsigned")
        );
        assert!(
            version_key("linux-image-6.12.117+deb12-amd64-unsigned")
                > version_key("linux-image-6.12.107+deb12-amd64-unsigned")
        );
    }
}
