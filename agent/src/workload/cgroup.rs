//! Who a process belongs to, from its `/proc/PID/cgroup`: the systemd unit and slice, the
//! container and its runtime, the Kubernetes pod and its QoS class. Only the path is
//! read; names come later, from the runtime's own state.
//!
//! A process chooses nothing here but the cgroups it is delegated (a container can nest
//! cgroups under its own), so what is recognised must match exact shapes, and ids are
//! checked before anything uses them.

/// The container runtime a cgroup path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
        }
    }
}

/// What one cgroup path says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupIdentity {
    pub unit: Option<String>,
    pub slice: Option<String>,
    /// `None` with an id: a Kubernetes cgroupfs-driver path, which does not say which
    /// runtime made it.
    pub runtime: Option<Runtime>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub qos_class: Option<&'static str>,
}

impl CgroupIdentity {
    /// How much the path tells: a container or pod beats a unit beats nothing.
    fn weight(&self) -> u8 {
        if self.container_id.is_some() || self.pod_uid.is_some() {
            2
        } else {
            u8::from(self.unit.is_some())
        }
    }
}

/// The most telling path of a `/proc/PID/cgroup` file. On a hybrid host the v1
/// hierarchies and the v2 one can place a process differently; of paths that tell as
/// much, the v2 line wins, then `name=systemd`, then the others in file order.
pub fn identify(file: &str) -> CgroupIdentity {
    let mut best: Option<(u8, u8, CgroupIdentity)> = None;
    for line in file.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let rank = match (id, controllers) {
            ("0", "") => 0,
            (_, "name=systemd") => 1,
            _ => 2,
        };
        let identity = parse_path(path);
        let weight = identity.weight();
        let better = match &best {
            None => true,
            Some((best_weight, best_rank, _)) => {
                weight > *best_weight || (weight == *best_weight && rank < *best_rank)
            }
        };
        if better {
            best = Some((weight, rank, identity));
        }
    }
    best.map(|(_, _, identity)| identity).unwrap_or_default()
}

/// One hierarchy's path, e.g.
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`.
pub fn parse_path(path: &str) -> CgroupIdentity {
    let mut identity = CgroupIdentity::default();
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut unit = None;
    for (at, component) in components.iter().enumerate() {
        let parent = at.checked_sub(1).map(|p| components[p]);
        if let Some(slice) = component.strip_suffix(".slice") {
            identity.slice = Some((*component).to_string());
            kube_slice(slice, &mut identity);
        }
        kube_cgroupfs(component, parent, &mut identity);
        if let Some((runtime, id)) = container(component, parent, &identity) {
            identity.runtime = runtime;
            identity.container_id = Some(id.to_string());
            // The runtime made the cgroups down to here; a container with delegated
            // cgroups names those below, and could name them like another container.
            break;
        } else if component.ends_with(".service") || component.ends_with(".scope") {
            unit = Some((*component).to_string());
        }
    }
    if identity.container_id.is_none() {
        identity.unit = unit;
    }
    identity
}

/// systemd-driver Kubernetes slices: `kubepods-burstable.slice`,
/// `kubepods-besteffort-pod<uid>.slice`, `kubepods-pod<uid>.slice` (guaranteed). systemd
/// cannot have `-` inside a slice's own name, so the kubelet writes the uid with `_`.
fn kube_slice(slice: &str, identity: &mut CgroupIdentity) {
    let Some(rest) = slice.strip_prefix("kubepods-") else {
        return;
    };
    let (qos, pod) = match rest.split_once('-') {
        Some((qos, pod)) => (Some(qos), Some(pod)),
        None if rest.starts_with("pod") => (None, Some(rest)),
        None => (Some(rest), None),
    };
    if let Some(qos) = qos.and_then(qos_class) {
        identity.qos_class = Some(qos);
    }
    let uid = pod
        .and_then(|pod| pod.strip_prefix("pod"))
        .map(|uid| uid.replace('_', "-"));
    if let Some(uid) = uid.filter(|uid| is_pod_uid(uid)) {
        identity.pod_uid = Some(uid);
        identity.qos_class.get_or_insert("guaranteed");
    }
}

/// cgroupfs-driver Kubernetes paths: `kubepods/burstable/pod<uid>/<id>`, and
/// `kubepods/pod<uid>/<id>` for guaranteed pods.
fn kube_cgroupfs(component: &str, parent: Option<&str>, identity: &mut CgroupIdentity) {
    match parent {
        Some("kubepods") if qos_class(component).is_some() => {
            identity.qos_class = qos_class(component);
        }
        Some("kubepods" | "burstable" | "besteffort") => {
            if let Some(uid) = component.strip_prefix("pod").filter(|uid| is_pod_uid(uid)) {
                identity.pod_uid = Some(uid.to_string());
                identity.qos_class.get_or_insert("guaranteed");
            }
        }
        _ => {}
    }
}

/// Pods without a QoS cgroup of their own are guaranteed.
fn qos_class(name: &str) -> Option<&'static str> {
    match name {
        "burstable" => Some("burstable"),
        "besteffort" => Some("besteffort"),
        _ => None,
    }
}

/// A container's cgroup: `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope` (systemd driver; cgroupfs CRI-O and podman
/// leave out `.scope`), `<slice>:cri-containerd:<id>` (containerd's systemd driver seen
/// from inside a nested node), `docker/<id>` and a bare id inside a pod's cgroup
/// (cgroupfs driver). Conmon's own scopes (`crio-conmon-`, `libpod-conmon-`) are no
/// container.
fn container<'a>(
    component: &'a str,
    parent: Option<&str>,
    identity: &CgroupIdentity,
) -> Option<(Option<Runtime>, &'a str)> {
    const PREFIXED: [(&str, Runtime); 4] = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ];
    let found = if let Some((_, rest)) = component.split_once(":cri-containerd:") {
        Some((Some(Runtime::Containerd), rest))
    } else if let Some((runtime, id)) = PREFIXED.iter().find_map(|(prefix, runtime)| {
        let id = component.strip_prefix(prefix)?;
        Some((*runtime, id.strip_suffix(".scope").unwrap_or(id)))
    }) {
        Some((Some(runtime), id))
    } else if parent == Some("docker") {
        Some((Some(Runtime::Docker), component))
    } else if identity.pod_uid.is_some() && parent.is_some_and(|p| p.starts_with("pod")) {
        Some((None, component))
    } else {
        None
    };
    found.filter(|(_, id)| is_container_id(id))
}

/// Runtimes name containers by 64 hex digits; nothing else is used in a path.
pub fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A Kubernetes uid: 32 hex digits, with or without the four dashes of a UUID.
fn is_pod_uid(uid: &str) -> bool {
    let hex = uid.bytes().filter(|b| b.is_ascii_hexdigit()).count();
    hex == 32 && uid.len() <= 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c4b2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
    const UID: &str = "8a2e6c1d-3b4f-4a5e-9c7d-0e1f2a3b4c5d";
    const UID_: &str = "8a2e6c1d_3b4f_4a5e_9c7d_0e1f2a3b4c5d";

    fn container(runtime: Option<Runtime>) -> CgroupIdentity {
        CgroupIdentity {
            runtime,
            container_id: Some(ID.into()),
            ..CgroupIdentity::default()
        }
    }

    #[test]
    fn systemd_services_and_scopes_are_units() {
        let identity = identify("0::/system.slice/nightly-report.service\n");
        assert_eq!(identity.unit.as_deref(), Some("nightly-report.service"));
        assert_eq!(identity.slice.as_deref(), Some("system.slice"));
        assert_eq!(identity.container_id, None);
        let session = parse_path("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(session.unit.as_deref(), Some("session-3.scope"));
        assert_eq!(session.slice.as_deref(), Some("user-1000.slice"));
    }

    #[test]
    fn docker_with_either_driver() {
        let systemd = parse_path(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(
            systemd,
            CgroupIdentity {
                slice: Some("system.slice".into()),
                ..container(Some(Runtime::Docker))
            }
        );
        assert_eq!(
            parse_path(&format!("/docker/{ID}")),
            container(Some(Runtime::Docker))
        );
    }

    #[test]
    fn kubernetes_systemd_driver_containerd_crio() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/\
             cri-containerd-{ID}.scope"
        );
        let identity = parse_path(&path);
        assert_eq!(identity.runtime, Some(Runtime::Containerd));
        assert_eq!(identity.container_id.as_deref(), Some(ID));
        assert_eq!(identity.pod_uid.as_deref(), Some(UID));
        assert_eq!(identity.qos_class, Some("burstable"));
        assert_eq!(identity.unit, None);

        let crio = parse_path(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/\
             crio-{ID}.scope"
        ));
        assert_eq!(crio.runtime, Some(Runtime::CriO));
        assert_eq!(crio.qos_class, Some("besteffort"));

        let guaranteed = parse_path(&format!(
            "/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope"
        ));
        assert_eq!(guaranteed.pod_uid.as_deref(), Some(UID));
        assert_eq!(guaranteed.qos_class, Some("guaranteed"));
    }

    #[test]
    fn conmon_is_not_the_container() {
        let conmon = parse_path(&format!(
            "/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"
        ));
        assert_eq!(conmon.container_id, None);
        assert_eq!(conmon.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn kubernetes_cgroupfs_driver_names_no_runtime() {
        let identity = parse_path(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        assert_eq!(identity.runtime, None);
        assert_eq!(identity.container_id.as_deref(), Some(ID));
        assert_eq!(identity.pod_uid.as_deref(), Some(UID));
        assert_eq!(identity.qos_class, Some("burstable"));
        let guaranteed = parse_path(&format!("/kubepods/pod{UID}/crio-{ID}"));
        assert_eq!(guaranteed.runtime, Some(Runtime::CriO));
        assert_eq!(guaranteed.qos_class, Some("guaranteed"));
    }

    #[test]
    fn containerd_systemd_driver_from_a_nested_node() {
        let identity = parse_path(&format!(
            "/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}"
        ));
        assert_eq!(identity.runtime, Some(Runtime::Containerd));
        assert_eq!(identity.container_id.as_deref(), Some(ID));
        assert_eq!(identity.unit, None);
    }

    #[test]
    fn podman_root_rootless_and_cgroupfs() {
        for path in [
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            format!("/libpod_parent/libpod-{ID}"),
        ] {
            let identity = parse_path(&path);
            assert_eq!(identity.runtime, Some(Runtime::Podman), "{path}");
            assert_eq!(identity.container_id.as_deref(), Some(ID), "{path}");
            assert_eq!(identity.unit, None, "{path}");
        }
    }

    #[test]
    fn hybrid_hosts_take_the_most_telling_line_preferring_v2() {
        let file = format!(
            "12:pids:/\n4:memory:/some_tool/0c7aa94b052ecf0d10813791dc1fcde8\n\
             1:name=systemd:/system.slice/ssh.service\n\
             0::/test/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        let identity = identify(&file);
        assert_eq!(identity.container_id.as_deref(), Some(ID));
        assert_eq!(identity.pod_uid.as_deref(), Some(UID));
        // Units: v2 before name=systemd before the rest.
        let units = identify(
            "5:cpu:/system.slice/cron.service\n1:name=systemd:/system.slice/ssh.service\n\
             0::/system.slice/nightly.service\n",
        );
        assert_eq!(units.unit.as_deref(), Some("nightly.service"));
        let v1_only = identify(&format!("3:cpu,cpuacct:/docker/{ID}\n2:pids:/\n"));
        assert_eq!(v1_only.runtime, Some(Runtime::Docker));
    }

    #[test]
    fn cgroups_a_container_nests_below_its_own_do_not_rename_it() {
        let other = "a".repeat(64);
        let identity = parse_path(&format!(
            "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope/\
             kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/docker-{other}.scope",
            "1".repeat(32)
        ));
        assert_eq!(identity.container_id.as_deref(), Some(ID));
        assert_eq!(identity.runtime, Some(Runtime::Containerd));
        assert_eq!(identity.pod_uid.as_deref(), Some(UID));
        assert_eq!(identity.qos_class, Some("guaranteed"));
        assert_eq!(identity.slice, Some(format!("kubepods-pod{UID_}.slice")));
    }

    #[test]
    fn hostile_or_unrelated_paths_name_nothing() {
        for path in [
            "/",
            "/some_tool/0c7aa94b052ecf0d10813791dc1fcde8",
            "/docker/../../etc",
            "/docker/3F1C",
            &format!("/system.slice/docker-{ID}x.scope"),
            &format!("/kubepods/burstable/podnot-a-uid/{ID}"),
            &format!("/elsewhere/{ID}"),
        ] {
            let identity = parse_path(path);
            assert_eq!(identity.container_id, None, "{path}");
            assert_eq!(identity.pod_uid, None, "{path}");
        }
        assert_eq!(identify("garbage\n\n:::\n"), CgroupIdentity::default());
    }
}
