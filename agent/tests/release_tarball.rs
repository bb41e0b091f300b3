//! What users download: the tarball of `cargo xtask dist`, unpacked in an empty
//! directory, has what it lists, and its agent finds the seed deadlock with only the
//! capabilities the systemd unit grants, as the unprivileged user the unit runs it as;
//! the Containerfile's final stage builds around it. `cargo xtask test` builds the
//! tarball and names it in `EXITWATCH_DIST_TARBALL`.
mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use common::{require_root, Agent, Setup, Subject, HANG_AFTER};
use exitwatch::graph::Kind;
use exitwatch::pid::Pid;

/// Files the tarball's README promises, under its top directory.
const CONTENTS: &[&str] = &[
    "exitwatch",
    "exitwatch.service",
    "web-config.yml",
    "README.md",
    "dashboards/exitwatch.json",
    "dashboards/alerts.yml",
    "dashboards/README.md",
    "LICENSE-MIT",
    "LICENSE-APACHE",
    "sha256sums",
];

/// The user `DynamicUser=yes` stands for: no root, no groups.
const UNPRIVILEGED: &str = "65534";

struct Unpacked {
    /// Removed when the test ends.
    _dir: tempfile::TempDir,
    top: PathBuf,
}

fn unpack() -> Unpacked {
    let tarball = std::env::var_os("EXITWATCH_DIST_TARBALL").unwrap_or_else(|| {
        panic!(
            "EXITWATCH_DIST_TARBALL is not set: run `cargo xtask test`, or `cargo xtask dist` \
             and set it to target/dist/exitwatch-VERSION-x86_64-linux.tar.gz"
        )
    });
    let dir = tempfile::tempdir().expect("creating the unpack directory");
    // The unprivileged agent must reach its binary.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("opening the unpack directory");
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir.path()));
    let name = format!("exitwatch-{}-x86_64-linux", env!("CARGO_PKG_VERSION"));
    let top = dir.path().join(name);
    assert!(
        top.is_dir(),
        "{tarball:?} has no top directory {}",
        top.display()
    );
    Unpacked { _dir: dir, top }
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_tarball_has_what_it_lists_and_checksums_that_match() {
    let unpacked = unpack();
    for file in CONTENTS {
        assert!(unpacked.top.join(file).is_file(), "{file} is missing");
    }
    let checked = run(Command::new("sha256sum")
        .args(["--check", "--strict", "sha256sums"])
        .current_dir(&unpacked.top));
    for file in CONTENTS.iter().filter(|file| **file != "sha256sums") {
        assert!(
            checked.contains(&format!("{file}: OK")),
            "sha256sums does not cover {file}:\n{checked}"
        );
    }
    let version = run(Command::new(unpacked.top.join("exitwatch")).arg("--version"));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
}

#[test]
fn the_released_agent_finds_the_seed_deadlock_with_the_units_capabilities() {
    require_root();
    let unpacked = unpack();
    let capabilities = unit_capabilities(&unpacked.top.join("exitwatch.service"));
    let mut command = Command::new("setpriv");
    command
        .args([
            &format!("--reuid={UNPRIVILEGED}"),
            &format!("--regid={UNPRIVILEGED}"),
            "--clear-groups",
            "--no-new-privs",
            &format!("--inh-caps=-all,{capabilities}"),
            &format!("--ambient-caps=-all,{capabilities}"),
            &format!("--bounding-set=-all,{capabilities}"),
            "--",
        ])
        .arg(unpacked.top.join("exitwatch"));
    let agent = Agent::start_setup(Setup {
        command: Some(command),
        ..Setup::default()
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))
        .expect("reading the agent's status");
    assert!(
        status
            .lines()
            .any(|line| line.starts_with("Uid:") && line.contains(UNPRIVILEGED)),
        "the agent must run unprivileged:\n{status}"
    );
    // The Py_FinalizeEx uprobes attach too (they are what needs CAP_SYS_ADMIN).
    let log = agent.log();
    assert!(
        log.contains("attached Py_FinalizeEx probe"),
        "no uprobe attached with {capabilities}:\n{log}"
    );

    let subject = Subject::python("seed_pipe_deadlock.py", &[]);
    let (parent, child) = (subject.pid("parent"), subject.pid("child"));
    let slack = std::time::Duration::from_secs(3);
    let incident = agent.wait_for(HANG_AFTER + slack, "of kind pipe_deadlock", |i| {
        i.kind == Kind::PipeDeadlock
            && i.pids.contains(&Pid::from_raw(parent))
            && i.pids.contains(&Pid::from_raw(child))
    });
    assert!(
        incident.summary.contains("communicate()"),
        "{}",
        incident.summary
    );
    assert!(agent.stop().success(), "the agent must exit cleanly");
}

/// `+bpf,+perfmon,...` for setpriv, from the unit's `AmbientCapabilities=`.
fn unit_capabilities(unit: &Path) -> String {
    let text = std::fs::read_to_string(unit).expect("reading the unit");
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("AmbientCapabilities="))
        .expect("the unit grants ambient capabilities");
    line.split_whitespace()
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The final stage, built by buildah around the tarball's files in place of the build
/// stage (which needs registries and a full build), gives an image of the released
/// binary alone that runs with nothing else in its root.
#[test]
fn the_containerfile_builds_an_image_of_the_released_agent() {
    require_root();
    let unpacked = unpack();
    let work = tempfile::tempdir().expect("creating the buildah directory");
    // `cargo xtask dist` unpacked into /dist is what the build stage leaves.
    let build_stage = work.path().join("build-stage");
    std::fs::create_dir(&build_stage).expect("creating the build stage directory");
    std::fs::rename(&unpacked.top, build_stage.join("dist")).expect("moving the unpacked tarball");
    let buildah = |args: &[&str]| {
        run(Command::new("buildah")
            .arg("--root")
            .arg(work.path().join("storage"))
            .arg("--runroot")
            .arg(work.path().join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args))
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ is inside the repository");
    let containerfile = repo.join("Containerfile");
    let tag = "localhost/exitwatch-release-test";
    buildah(&[
        "build",
        "--isolation",
        "chroot",
        "--build-context",
        &format!("build={}", build_stage.display()),
        "-f",
        &containerfile.to_string_lossy(),
        "-t",
        tag,
        &repo.to_string_lossy(),
    ]);
    let inspected = buildah(&["inspect", "--type", "image", tag]);
    let inspected: serde_json::Value =
        serde_json::from_str(&inspected).expect("buildah inspect JSON");
    let config = &inspected["OCIv1"]["config"];
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/exitwatch"])
    );
    assert_eq!(config["Cmd"][0], "run", "{config}");

    let container = buildah(&["from", tag]);
    let root = PathBuf::from(buildah(&["mount", container.trim()]).trim());
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    assert_eq!(
        files,
        [
            "usr/local/bin/exitwatch",
            "usr/share/doc/exitwatch/LICENSE-APACHE",
            "usr/share/doc/exitwatch/LICENSE-MIT",
        ],
        "the image holds the agent and its licences, nothing else"
    );
    let released = std::fs::read(build_stage.join("dist/exitwatch")).expect("the released binary");
    let imaged = std::fs::read(root.join("usr/local/bin/exitwatch")).expect("the image's binary");
    assert!(
        released == imaged,
        "the image's agent is not the released one"
    );
    let version = run(Command::new("chroot")
        .arg(&root)
        .args(["/usr/local/bin/exitwatch", "--version"]));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
}

/// Regular files under `dir`, relative to `base`.
fn collect(base: &Path, dir: &Path, files: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
    {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(base, &path, files);
        } else {
            let relative = path.strip_prefix(base).expect("under the image root");
            files.push(relative.to_string_lossy().into_owned());
        }
    }
}
