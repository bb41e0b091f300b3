//! Which workload a process belongs to: its systemd unit, or its container and
//! Kubernetes pod, as the person paged knows them (pids mean nothing on a fleet).
mod cgroup;
mod runtime;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use runtime::Roots;

use crate::pid::Pid;
use crate::{procfs::ProcFs, text::printable};

/// A process's workload; every field is `null` when unknown.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Workload {
    /// The systemd unit (`nightly-report.service`, `session-3.scope`), for processes
    /// outside containers.
    pub unit: Option<String>,
    pub slice: Option<String>,
    /// `docker`, `containerd`, `cri-o` or `podman`.
    pub runtime: Option<String>,
    pub container_id: Option<String>,
    /// The container's name, from the runtime's state.
    pub container: Option<String>,
    pub image: Option<String>,
    pub pod_uid: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// `guaranteed`, `burstable` or `besteffort`.
    pub qos_class: Option<String>,
}

impl Workload {
    pub fn is_known(&self) -> bool {
        *self != Workload::default()
    }

    /// Where the process runs, for a sentence: `pod shop/checkout-7d9f container api`,
    /// `docker container reports`, `unit nightly-report.service`. Names are escaped: a
    /// workload chose them.
    pub fn phrase(&self) -> Option<String> {
        let container = self.container_label();
        let pod = match (&self.namespace, self.pod.as_ref().or(self.pod_uid.as_ref())) {
            (Some(namespace), Some(pod)) => Some(format!("pod {namespace}/{pod}")),
            (None, Some(pod)) => Some(format!("pod {pod}")),
            (_, None) => None,
        };
        let phrase = match (pod, container) {
            (Some(pod), Some(container)) => format!("{pod} container {container}"),
            (Some(pod), None) => pod,
            (None, Some(container)) => format!(
                "{} container {container}",
                self.runtime.as_deref().unwrap_or("a")
            ),
            (None, None) => format!("unit {}", self.unit.as_ref()?),
        };
        Some(printable(&phrase).into_owned())
    }

    /// Values of the `namespace`, `pod`, `container` and `unit` labels (empty when
    /// unknown): the pod's name (else its uid) and the container's (else its short id).
    pub fn labels(&self) -> [String; 4] {
        let label =
            |value: Option<&String>| printable(value.map_or("", String::as_str)).into_owned();
        [
            label(self.namespace.as_ref()),
            label(self.pod.as_ref().or(self.pod_uid.as_ref())),
            label(self.container_label().as_ref()),
            label(self.unit.as_ref()),
        ]
    }

    fn container_label(&self) -> Option<String> {
        self.container.clone().or_else(|| {
            let id = self.container_id.as_ref()?;
            Some(id[..id.len().min(12)].to_string())
        })
    }
}

/// Containers whose names are remembered; a node runs a few hundred at most, and the
/// names are only looked up for processes in incidents.
const MAX_CACHED: usize = 256;

/// Finds processes' workloads, remembering what the runtimes' state said per container.
pub struct Workloads {
    procfs: ProcFs,
    roots: Roots,
    node: String,
    names: BTreeMap<String, runtime::Names>,
}

impl Workloads {
    pub fn new(procfs: ProcFs, roots: Roots, node: String) -> Self {
        Self {
            procfs,
            roots,
            node,
            names: BTreeMap::new(),
        }
    }

    /// The node (host) the agent runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// `pid`'s workload; unknown when its cgroups cannot be read (it exited).
    pub fn of(&mut self, pid: Pid) -> Workload {
        let Ok(file) = self.procfs.cgroup(pid) else {
            return Workload::default();
        };
        let identity = cgroup::identify(&file);
        let names = match &identity.container_id {
            Some(id) => self.names(identity.runtime, id),
            None => runtime::Names::default(),
        };
        let runtime = identity.runtime.or(names.runtime);
        Workload {
            unit: identity.unit,
            slice: identity.slice,
            runtime: runtime.map(|r| r.as_str().to_string()),
            container_id: identity.container_id,
            container: names.container,
            image: names.image,
            pod_uid: identity.pod_uid,
            pod: names.pod,
            namespace: names.namespace,
            qos_class: identity.qos_class.map(str::to_string),
        }
    }

    fn names(&mut self, runtime: Option<cgroup::Runtime>, id: &str) -> runtime::Names {
        if let Some(names) = self.names.get(id) {
            return names.clone();
        }
        let names = runtime::names(&self.roots, runtime, id);
        if self.names.len() >= MAX_CACHED {
            self.names.clear();
        }
        self.names.insert(id.to_string(), names.clone());
        names
    }
}

/// `NODE_NAME` (the DaemonSet sets it from the downward API: in a pod the hostname is
/// the pod's), else the hostname.
pub fn node_name() -> String {
    if let Some(node) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
        return node;
    }
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length.
    if unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } != 0 {
        return String::new();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_name_the_pod_the_container_or_the_unit() {
        let pod = Workload {
            pod: Some("checkout-7d9f".into()),
            namespace: Some("shop".into()),
            container: Some("api".into()),
            container_id: Some("3f1c4b2a9d8e7f6a".into()),
            ..Workload::default()
        };
        assert_eq!(
            pod.phrase().as_deref(),
            Some("pod shop/checkout-7d9f container api")
        );
        assert_eq!(pod.labels(), ["shop", "checkout-7d9f", "api", ""]);
        let docker = Workload {
            runtime: Some("docker".into()),
            container_id: Some("3f1c4b2a9d8e7f6a5b4c".into()),
            ..Workload::default()
        };
        assert_eq!(
            docker.phrase().as_deref(),
            Some("docker container 3f1c4b2a9d8e")
        );
        let unit = Workload {
            unit: Some("nightly-report.service".into()),
            slice: Some("system.slice".into()),
            ..Workload::default()
        };
        assert_eq!(
            unit.phrase().as_deref(),
            Some("unit nightly-report.service")
        );
        assert_eq!(Workload::default().phrase(), None);
        let hostile = Workload {
            unit: Some("x\n.service".into()),
            ..Workload::default()
        };
        assert_eq!(hostile.phrase().as_deref(), Some("unit x\\n.service"));
        assert_eq!(hostile.labels()[3], "x\\n.service");
    }
}
