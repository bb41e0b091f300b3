//! Names from a container runtime's own state on the host: the OCI `config.json` that
//! containerd and CRI-O keep per container (its CRI annotations name the pod, its
//! namespace and the container), and docker's `config.v2.json` (name and image).
//!
//! The runtime writes these files, but from what workloads asked for, and a node may run
//! anyone's pods: each file is read only if it is a regular file (never through a
//! symlink), at most [`MAX_STATE_BYTES`], parsed as JSON, and each name is kept only if
//! it is short enough to be one.
use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    io::{self, Read},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::cgroup::{is_container_id, Runtime};

/// Real files are a few KiB (docker's grows with the environment); anything bigger is not
/// worth parsing to learn three names.
pub const MAX_STATE_BYTES: u64 = 1 << 20;
/// Kubernetes names are at most 253 characters; so are sensible container names.
const MAX_NAME_BYTES: usize = 253;

/// Where each runtime keeps its state (the DaemonSet mounts them read-only).
#[derive(Clone, Debug)]
pub struct Roots {
    pub containerd: PathBuf,
    pub crio: PathBuf,
    pub docker: PathBuf,
}

/// What a runtime's state says about one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// The runtime whose state knew the container (for a path that did not say).
    pub runtime: Option<Runtime>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub container: Option<String>,
    pub image: Option<String>,
}

/// The names of container `id`, from the state of `runtime`, or of each runtime in turn
/// when the cgroup path did not say which. Unknown containers have no names.
pub fn names(roots: &Roots, runtime: Option<Runtime>, id: &str) -> Names {
    if !is_container_id(id) {
        return Names::default();
    }
    let candidates = match runtime {
        Some(runtime) => vec![runtime],
        None => vec![Runtime::Containerd, Runtime::CriO, Runtime::Docker],
    };
    candidates
        .into_iter()
        .find_map(|runtime| {
            let (path, format) = state_file(roots, runtime, id)?;
            let names = read_names(format, &path)
                .inspect_err(|e| {
                    if e.kind() != io::ErrorKind::NotFound {
                        log::debug!("container {id}: {}: {e}", path.display());
                    }
                })
                .ok()?;
            Some(Names {
                runtime: Some(runtime),
                ..names
            })
        })
        .unwrap_or_default()
}

/// How a runtime's state file names its container.
#[derive(Clone, Copy)]
enum Format {
    /// An OCI `config.json`, naming it in these annotations.
    Oci([&'static str; 4]),
    /// docker's `config.v2.json`.
    Docker,
}

/// `id` must be a checked container id: it becomes a path component.
fn state_file(roots: &Roots, runtime: Runtime, id: &str) -> Option<(PathBuf, Format)> {
    Some(match runtime {
        Runtime::Containerd => (
            roots
                .containerd
                .join("io.containerd.runtime.v2.task/k8s.io")
                .join(id)
                .join("config.json"),
            Format::Oci(CONTAINERD_KEYS),
        ),
        Runtime::CriO => (
            roots
                .crio
                .join("overlay-containers")
                .join(id)
                .join("userdata/config.json"),
            Format::Oci(CRIO_KEYS),
        ),
        Runtime::Docker => (
            roots
                .docker
                .join("containers")
                .join(id)
                .join("config.v2.json"),
            Format::Docker,
        ),
        // podman keeps no state a host agent should parse; its path names the container.
        Runtime::Podman => return None,
    })
}

#[derive(Deserialize)]
struct OciConfig {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: DockerContainerConfig,
}

#[derive(Deserialize, Default)]
struct DockerContainerConfig {
    #[serde(rename = "Image", default)]
    image: String,
    /// dockershim-era Kubernetes put the pod's names in labels.
    #[serde(rename = "Labels", default)]
    labels: BTreeMap<String, String>,
}

/// The OCI annotations that name a CRI container: pod, namespace, container, image.
const CONTAINERD_KEYS: [&str; 4] = [
    "io.kubernetes.cri.sandbox-name",
    "io.kubernetes.cri.sandbox-namespace",
    "io.kubernetes.cri.container-name",
    "io.kubernetes.cri.image-name",
];
const CRIO_KEYS: [&str; 4] = [
    "io.kubernetes.pod.name",
    "io.kubernetes.pod.namespace",
    "io.kubernetes.container.name",
    "io.kubernetes.cri-o.ImageName",
];

fn read_names(format: Format, path: &Path) -> io::Result<Names> {
    let bytes = read_bounded(path)?;
    let invalid = |e: serde_json::Error| io::Error::new(io::ErrorKind::InvalidData, e);
    let [pod, namespace, container, image] = match format {
        Format::Oci(keys) => {
            let mut annotations = serde_json::from_slice::<OciConfig>(&bytes)
                .map_err(invalid)?
                .annotations;
            keys.map(|key| annotations.remove(key))
        }
        Format::Docker => {
            let docker = serde_json::from_slice::<DockerConfig>(&bytes).map_err(invalid)?;
            let mut labels = docker.config.labels;
            let own_name = docker.name.trim_start_matches('/').to_string();
            [
                labels.remove("io.kubernetes.pod.name"),
                labels.remove("io.kubernetes.pod.namespace"),
                labels
                    .remove("io.kubernetes.container.name")
                    .or(Some(own_name)),
                Some(docker.config.image),
            ]
        }
    };
    Ok(Names {
        pod: name(pod),
        namespace: name(namespace),
        container: name(container),
        image: name(image),
        runtime: None,
    })
}

fn name(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty() && v.len() <= MAX_NAME_BYTES)
}

/// A regular file's first bytes, up to [`MAX_STATE_BYTES`]; a symlink, a FIFO or a
/// bigger file is refused.
fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO put in place of the file must not wait for a writer.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > MAX_STATE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a regular file of at most {MAX_STATE_BYTES} bytes"),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_STATE_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c4b2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    fn roots(dir: &Path) -> Roots {
        Roots {
            containerd: dir.join("containerd"),
            crio: dir.join("crio"),
            docker: dir.join("docker"),
        }
    }

    fn lay_out(path: PathBuf, contents: &[u8]) {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("state directory");
        std::fs::write(path, contents).expect("state file");
    }

    #[test]
    fn each_runtime_names_its_containers() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let roots = roots(dir.path());
        let containerd = state_file(&roots, Runtime::Containerd, ID)
            .expect("a path")
            .0;
        lay_out(
            containerd,
            br#"{"ociVersion":"1.1.0","annotations":{
                "io.kubernetes.cri.sandbox-name":"checkout-7d9f",
                "io.kubernetes.cri.sandbox-namespace":"shop",
                "io.kubernetes.cri.container-name":"api"}}"#,
        );
        let names = names(&roots, None, ID);
        assert_eq!(names.runtime, Some(Runtime::Containerd));
        assert_eq!(names.pod.as_deref(), Some("checkout-7d9f"));
        assert_eq!(names.namespace.as_deref(), Some("shop"));
        assert_eq!(names.container.as_deref(), Some("api"));

        let crio = state_file(&roots, Runtime::CriO, ID).expect("a path").0;
        lay_out(
            crio,
            br#"{"annotations":{"io.kubernetes.pod.name":"web-0",
                "io.kubernetes.pod.namespace":"default","io.kubernetes.container.name":"nginx"}}"#,
        );
        let crio = super::names(&roots, Some(Runtime::CriO), ID);
        assert_eq!(crio.container.as_deref(), Some("nginx"));

        let docker = state_file(&roots, Runtime::Docker, ID).expect("a path").0;
        lay_out(
            docker,
            br#"{"Name":"/reports","Config":{"Image":"python:3.12"}}"#,
        );
        let docker = super::names(&roots, Some(Runtime::Docker), ID);
        assert_eq!(docker.container.as_deref(), Some("reports"));
        assert_eq!(docker.image.as_deref(), Some("python:3.12"));
        Ok(())
    }

    #[test]
    fn hostile_state_gives_no_names() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let roots = roots(dir.path());
        let path = state_file(&roots, Runtime::Containerd, ID)
            .expect("a path")
            .0;
        // Too big.
        let padding = " ".repeat(MAX_STATE_BYTES as usize);
        lay_out(path.clone(), format!("{{{padding}}}").as_bytes());
        assert_eq!(
            names(&roots, Some(Runtime::Containerd), ID),
            Names::default()
        );
        // A symlink to a file that would parse.
        let elsewhere = dir.path().join("elsewhere.json");
        std::fs::write(
            &elsewhere,
            br#"{"annotations":{"io.kubernetes.cri.container-name":"x"}}"#,
        )?;
        std::fs::remove_file(&path)?;
        std::os::unix::fs::symlink(&elsewhere, &path)?;
        assert_eq!(
            names(&roots, Some(Runtime::Containerd), ID),
            Names::default()
        );
        // A FIFO (opening it must not wait), garbage, an overlong name.
        std::fs::remove_file(&path)?;
        let fifo = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: a valid C string; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(
            names(&roots, Some(Runtime::Containerd), ID),
            Names::default()
        );
        std::fs::remove_file(&path)?;
        lay_out(path.clone(), b"\x00not json");
        assert_eq!(
            names(&roots, Some(Runtime::Containerd), ID),
            Names::default()
        );
        let long = "a".repeat(MAX_NAME_BYTES + 1);
        lay_out(
            path,
            format!(r#"{{"annotations":{{"io.kubernetes.cri.container-name":"{long}"}}}}"#)
                .as_bytes(),
        );
        assert_eq!(names(&roots, Some(Runtime::Containerd), ID).container, None);
        // Ids are checked before they become paths.
        assert_eq!(names(&roots, None, "../../etc"), Names::default());
        Ok(())
    }
}
