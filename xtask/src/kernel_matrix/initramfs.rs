//! The guest's initramfs: a static busybox as the init shell, the modules that reach the
//! host root over 9p, and an init script that mounts it read-only, chroots into it and
//! runs one test binary.
use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::system::{run_command, say};

/// What the guest needs to mount the host root. Depending on the kernel, some are built
/// in (virtio in 6.12) or do not exist (`fscache` merged into `netfs`), so a missing one
/// is skipped; the 9p mount decides whether the set was enough. They are loaded after
/// what each declares it depends on, whatever the order here.
const MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
];

/// What the init script prints for the host to follow the run.
pub const MARK: &str = "exitwatch-kernel-matrix:";
pub const BOOTED: &str = "exitwatch-kernel-matrix: init started";
pub const TESTING: &str = "exitwatch-kernel-matrix: running";
pub const STATUS: &str = "exitwatch-kernel-matrix: test status ";
/// The 9p mount tag QEMU gives the host root.
pub const ROOT_TAG: &str = "hostroot";
/// MiB the healthy control's pipeline moves in a guest: emulation moves data tens of
/// times slower than the host, and 1 GiB (the host's size) overran its 60 s there.
const PIPELINE_MIB: u32 = 96;

/// A test binary to run in the guest, in the directory `cargo test` would run it from.
pub struct GuestTest<'a> {
    /// The repository, seen in the guest where it is on the host.
    pub root: &'a Path,
    pub binary: &'a Path,
    pub dir: &'a Path,
}

/// Writes `work/initramfs.cpio` for the kernel unpacked in `kernel_tree`.
pub fn build(
    kernel_tree: &Path,
    release: &str,
    busybox: &Path,
    test: &GuestTest,
    work: &Path,
) -> Result<PathBuf> {
    let stage = work.join("initramfs");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let modules_dir = stage.join("modules");
    fs::create_dir_all(stage.join("bin")).context("creating the initramfs tree")?;
    fs::create_dir_all(&modules_dir).context("creating the initramfs tree")?;
    fs::copy(busybox, stage.join("bin/busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;

    let module_root = kernel_tree.join("lib/modules").join(release);
    let mut modules = Modules {
        files: BTreeMap::new(),
        builtin: fs::read_to_string(module_root.join("modules.builtin")).unwrap_or_default(),
        release,
        into: &modules_dir,
        order: Vec::new(),
    };
    index_modules(&module_root.join("kernel"), &mut modules.files)?;
    for name in MODULES {
        modules.add(name)?;
    }
    let order = modules.order;

    let init = stage.join("init");
    fs::write(&init, init_script(&order, test)?).context("writing the init script")?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .context("making the init script executable")?;
    let archive = work.join("initramfs.cpio");
    write_cpio(&stage, &archive)?;
    Ok(archive)
}

/// `kernel/fs/9p/9p.ko.xz` → `9p`; dashes as underscores, as module names are spelt.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let name = file.split_once(".ko").map_or(file, |(name, _)| name);
    name.replace('-', "_")
}

/// Every module file under `dir`, by module name.
fn index_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.is_dir() {
            index_modules(&path, files)?;
        } else if let Some(file) = path.file_name() {
            files.insert(module_name(&file.to_string_lossy()), path);
        }
    }
    Ok(())
}

/// The modules copied into the initramfs so far, in an order `insmod` can load them.
struct Modules<'a> {
    files: BTreeMap<String, PathBuf>,
    builtin: String,
    release: &'a str,
    into: &'a Path,
    order: Vec<String>,
}

impl Modules<'_> {
    /// Copies `name` and, before it in the order, what it depends on.
    fn add(&mut self, name: &str) -> Result<()> {
        if self.order.iter().any(|added| added == name) {
            return Ok(());
        }
        let Some(file) = self.files.get(name).cloned() else {
            let release = self.release;
            if self.builtin.lines().any(|line| module_name(line) == name) {
                say(format!("{release}: {name} is built in"));
            } else {
                say(format!("{release}: no module {name} (not needed there)"));
            }
            return Ok(());
        };
        let copy = self.into.join(format!("{name}.ko"));
        unpack_module(&file, &copy)?;
        let depends = depends(&copy)?;
        for dependency in depends.split(',').filter(|d| !d.is_empty()) {
            self.add(dependency)?;
        }
        self.order.push(name.to_string());
        Ok(())
    }
}

/// The `depends=` entry of a module's `.modinfo` section: the modules it needs loaded.
fn depends(module: &Path) -> Result<String> {
    let bytes = fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let key = b"\0depends=";
    let Some(start) = bytes.windows(key.len()).position(|window| window == key) else {
        return Ok(String::new());
    };
    let value = &bytes[start + key.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    Ok(String::from_utf8_lossy(&value[..end]).into_owned())
}

/// Copies a module, decompressing it: busybox's `insmod` takes plain ELF only.
fn unpack_module(file: &Path, to: &Path) -> Result<()> {
    let name = file.to_string_lossy();
    if name.ends_with(".ko") {
        fs::copy(file, to).with_context(|| format!("copying {name}"))?;
        return Ok(());
    }
    if !name.ends_with(".ko.xz") {
        bail!("{name}: unknown module compression (expected .ko or .ko.xz)");
    }
    let out = fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    run_command(Command::new("xz").arg("-dc").arg(file).stdout(out))
}

/// Single quotes for the shell.
fn quoted(path: &Path) -> Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    Ok(format!("'{}'", text.replace('\'', r"'\''")))
}

fn init_script(modules: &[String], test: &GuestTest) -> Result<String> {
    let root = quoted(test.root)?;
    let binary = quoted(test.binary)?;
    let dir = quoted(test.dir)?;
    let modules = modules.join(" ");
    Ok(format!(
        r#"#!/bin/busybox sh
# PID 1 of the guest. Any failure powers off with a line the host reports.
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{ echo "{MARK} guest setup failed: $*"; poweroff -f; }}
mkdir -p /proc /sys /dev /host
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "{BOOTED} at $(cut -d' ' -f1 /proc/uptime) s of uptime, kernel $(uname -r)"
for module in {modules}; do
    # Already there (loaded or built in): the mount decides whether anything is missing.
    insmod /modules/$module.ko || echo "{MARK} insmod $module failed, going on"
done
mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=262144 {ROOT_TAG} /host \
    || fail "cannot mount the host root over 9p"
# The host root stays read-only; everything the tests write goes to fresh file systems.
# The repository may be under one of them (a CI clone in /tmp): it is bound back in place.
mkdir -p /repo
mount -o bind /host{root} /repo || fail "cannot see the repository"
mount -t tmpfs -o mode=1777 tmpfs /host/tmp || fail "no tmpfs on /tmp"
mount -t tmpfs tmpfs /host/run || fail "no tmpfs on /run"
if [ ! -d /host{root} ]; then
    mkdir -p /host{root} && mount -o bind /repo /host{root} \
        || fail "cannot put the repository back under a fresh /tmp or /run"
fi
mount -t proc proc /host/proc || fail "no /proc"
mount -t sysfs sysfs /host/sys || fail "no /sys"
mount -t devtmpfs devtmpfs /host/dev || fail "no /dev"
mkdir -p /host/dev/shm /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm || fail "no /dev/shm"
mount -t devpts devpts /host/dev/pts || fail "no /dev/pts"
mount -t tracefs tracefs /host/sys/kernel/tracing || fail "no tracefs"
mount -t debugfs debugfs /host/sys/kernel/debug || fail "no debugfs"
[ -e /host/sys/kernel/btf/vmlinux ] || fail "the kernel has no BTF"
# The tests talk to their agents on 127.0.0.1.
ip link set lo up || fail "cannot bring up lo"
echo "{TESTING} at $(cut -d' ' -f1 /proc/uptime) s of uptime"
chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp RUST_BACKTRACE=1 EXITWATCH_TEST_PIPELINE_MIB={PIPELINE_MIB} \
    /bin/sh -c 'cd "$1" && exec "$2" --test-threads=1' sh {dir} {binary}
echo "{STATUS}$? at $(cut -d' ' -f1 /proc/uptime) s of uptime"
poweroff -f
"#
    ))
}

/// `stage` as a newc archive (the format the kernel unpacks), every file owned by root.
fn write_cpio(stage: &Path, archive: &Path) -> Result<()> {
    let mut names = Vec::new();
    list_tree(stage, Path::new("."), &mut names)?;
    let out =
        fs::File::create(archive).with_context(|| format!("creating {}", archive.display()))?;
    let mut cpio = Command::new("cpio")
        .args(["--create", "--format=newc", "--owner=0:0", "--quiet"])
        .current_dir(stage)
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("starting cpio")?;
    let mut stdin = cpio.stdin.take().context("cpio's stdin")?;
    stdin
        .write_all(names.join("\n").as_bytes())
        .context("feeding cpio the file list")?;
    drop(stdin);
    let status = cpio.wait().context("waiting for cpio")?;
    if !status.success() {
        bail!("cpio failed: {status}");
    }
    Ok(())
}

/// Directories before what they hold, as the kernel creates them in archive order.
fn list_tree(root: &Path, relative: &Path, names: &mut Vec<String>) -> Result<()> {
    names.push(relative.to_string_lossy().into_owned());
    let dir = root.join(relative);
    if dir.is_dir() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            list_tree(root, &relative.join(entry.file_name()), names)?;
        }
    }
    Ok(())
}
