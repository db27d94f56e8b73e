//! Which pod and container a process belongs to, from its cgroup (v2) path.
//!
//! Layouts understood:
//! - kubelet with the systemd driver:
//!   `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID>.slice/cri-containerd-<ID>.scope`
//!   (UID with `_` for `-`; guaranteed pods sit directly under `kubepods.slice`; the runtime
//!   prefix is `cri-containerd`, `crio` or `docker`);
//! - kubelet with the cgroupfs driver: `/kubepods/burstable/pod<UID>/<ID>`;
//! - Docker: `/docker/<ID>` or `/system.slice/docker-<ID>.scope`;
//! - anything else: a host process (no pod, no container).
//!
//! A path that claims a layout but breaks it (a pod UID that is not a UUID,
//! a container id that is not 64 hex digits) is an error naming the part.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where a process runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    /// `guaranteed`, `burstable` or `besteffort` for pods.
    pub qos: Option<String>,
    /// The pod's UID (with dashes).
    pub pod_uid: Option<String>,
    /// The container's id (64 hex digits).
    pub container_id: Option<String>,
    /// `containerd`, `crio` or `docker`, when the path names it.
    pub runtime: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup path {path:?}: pod UID {uid:?} is not a UUID")]
    BadPodUid { path: String, uid: String },
    #[error("cgroup path {path:?}: container id {id:?} is not 64 hex digits")]
    BadContainerId { path: String, id: String },
    #[error("cgroup path {path:?} is not absolute")]
    NotAbsolute { path: String },
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The attribution a cgroup v2 path (as in `/proc/PID/cgroup`'s `0::` line) gives.
pub fn attribute(path: &str) -> Result<Attribution, CgroupError> {
    if !path.starts_with('/') {
        return Err(CgroupError::NotAbsolute { path: path.into() });
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut a = Attribution::default();
    let bad_uid = |uid: &str| CgroupError::BadPodUid {
        path: path.into(),
        uid: uid.into(),
    };
    let bad_id = |id: &str| CgroupError::BadContainerId {
        path: path.into(),
        id: id.into(),
    };
    let container = |a: &mut Attribution, part: &str| -> Result<(), CgroupError> {
        // `<runtime>-<id>.scope` (systemd) or a bare id (cgroupfs).
        let (runtime, id) = match part.strip_suffix(".scope") {
            Some(scope) => match scope.rsplit_once('-') {
                Some((rt, id)) => (Some(rt), id),
                None => return Err(bad_id(scope)),
            },
            None => (None, part),
        };
        if !is_container_id(id) {
            return Err(bad_id(id));
        }
        a.runtime = runtime.map(|r| match r {
            "cri-containerd" => "containerd".to_string(),
            other => other.to_string(),
        });
        a.container_id = Some(id.to_string());
        Ok(())
    };
    match parts.first().copied() {
        Some("kubepods.slice") => {
            for part in &parts[1..] {
                let Some(slice) = part.strip_suffix(".slice") else {
                    if part.ends_with(".scope") {
                        container(&mut a, part)?;
                    }
                    continue;
                };
                if let Some((prefix, uid)) = slice.rsplit_once("-pod") {
                    let uid = uid.replace('_', "-");
                    if !is_uuid(&uid) {
                        return Err(bad_uid(&uid));
                    }
                    a.pod_uid = Some(uid);
                    a.qos = Some(match prefix {
                        "kubepods-burstable" => "burstable".into(),
                        "kubepods-besteffort" => "besteffort".into(),
                        _ => "guaranteed".into(),
                    });
                }
            }
        }
        Some("kubepods") => {
            let mut rest = &parts[1..];
            let mut qos = "guaranteed";
            if let Some(q @ ("burstable" | "besteffort")) = rest.first().copied() {
                qos = q;
                rest = &rest[1..];
            }
            if let Some(pod) = rest.first() {
                let uid = pod.strip_prefix("pod").ok_or_else(|| bad_uid(pod))?;
                if !is_uuid(uid) {
                    return Err(bad_uid(uid));
                }
                a.pod_uid = Some(uid.to_string());
                a.qos = Some(qos.to_string());
                if let Some(c) = rest.get(1) {
                    container(&mut a, c)?;
                }
            }
        }
        Some("docker") => {
            if let Some(id) = parts.get(1) {
                container(&mut a, id)?;
                a.runtime = Some("docker".into());
            }
        }
        Some("system.slice") => {
            if let Some(scope) = parts.get(1).filter(|p| p.starts_with("docker-")) {
                container(&mut a, scope)?;
            }
        }
        _ => {}
    }
    Ok(a)
}

/// The cgroup v2 path of a process, from `/proc/PID/cgroup` (its `0::`
/// line); `None` if the process is gone or has no v2 cgroup.
pub fn path_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on hybrid hosts).
pub fn v2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// Resolves cgroup ids (as BPF's `bpf_get_current_cgroup_id` gives them:
/// the cgroup directory's inode) to paths, walking the hierarchy when an id
/// is not known yet.
pub struct Resolver {
    root: PathBuf,
    known: HashMap<u64, String>,
}

impl Resolver {
    pub fn new(root: PathBuf) -> Resolver {
        Resolver {
            root,
            known: HashMap::new(),
        }
    }

    /// The path (relative to the hierarchy's root, starting with `/`) of
    /// cgroup `id`, if it exists.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.known.get(&id) {
            return Some(p.clone());
        }
        self.rescan();
        self.known.get(&id).cloned()
    }

    fn rescan(&mut self) {
        fn walk(root: &Path, dir: &Path, known: &mut HashMap<u64, String>, depth: usize) {
            if depth > 16 {
                return;
            }
            if let Ok(meta) = std::fs::metadata(dir) {
                let rel = dir.strip_prefix(root).unwrap_or(dir);
                known.insert(meta.ino(), format!("/{}", rel.display()));
            }
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(root, &e.path(), known, depth + 1);
                }
            }
        }
        self.known.clear();
        walk(&self.root, &self.root, &mut self.known, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
    const UID: &str = "3f1c2a9e-8b7d-4c6e-9f0a-1b2c3d4e5f60";

    #[test]
    fn kubelet_systemd_layouts() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        let a = attribute(&p).unwrap();
        assert_eq!(a.pod_uid.as_deref(), Some(UID));
        assert_eq!(a.container_id.as_deref(), Some(ID));
        assert_eq!(a.qos.as_deref(), Some("burstable"));
        assert_eq!(a.runtime.as_deref(), Some("containerd"));

        let p = format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            UID.replace('-', "_")
        );
        let a = attribute(&p).unwrap();
        assert_eq!(
            (a.qos.as_deref(), a.runtime.as_deref()),
            (Some("guaranteed"), Some("crio"))
        );
        // The pod's own cgroup (the pause container's parent): a pod, no container.
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            UID.replace('-', "_")
        );
        let a = attribute(&p).unwrap();
        assert_eq!(
            (a.qos.as_deref(), a.container_id),
            (Some("besteffort"), None)
        );
    }

    #[test]
    fn kubelet_cgroupfs_and_docker_layouts() {
        let a = attribute(&format!("/kubepods/burstable/pod{UID}/{ID}")).unwrap();
        assert_eq!(
            (a.pod_uid.as_deref(), a.container_id.as_deref(), a.runtime),
            (Some(UID), Some(ID), None)
        );
        let a = attribute(&format!("/kubepods/pod{UID}/{ID}")).unwrap();
        assert_eq!(a.qos.as_deref(), Some("guaranteed"));
        let a = attribute(&format!("/docker/{ID}")).unwrap();
        assert_eq!(
            (a.container_id.as_deref(), a.runtime.as_deref()),
            (Some(ID), Some("docker"))
        );
        let a = attribute(&format!("/system.slice/docker-{ID}.scope")).unwrap();
        assert_eq!(a.runtime.as_deref(), Some("docker"));
        assert_eq!(
            attribute("/user.slice/user-0.slice/session-1.scope").unwrap(),
            Attribution::default()
        );
        assert_eq!(attribute("/").unwrap(), Attribution::default());
    }

    #[test]
    fn broken_paths_name_what_is_wrong() {
        let e = attribute(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podnot_a_uid.slice",
        )
        .unwrap_err();
        assert!(matches!(e, CgroupError::BadPodUid { .. }), "{e}");
        assert!(e.to_string().contains("not-a-uid"), "{e}");
        let e = attribute(&format!("/kubepods/burstable/pod{UID}/xyz")).unwrap_err();
        assert!(
            e.to_string().contains("\"xyz\" is not 64 hex digits"),
            "{e}"
        );
        let e = attribute(&format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{}.scope",
            UID.replace('-', "_"),
            &ID[1..]
        ))
        .unwrap_err();
        assert!(matches!(e, CgroupError::BadContainerId { .. }), "{e}");
        assert!(matches!(
            attribute("kubepods/x"),
            Err(CgroupError::NotAbsolute { .. })
        ));
        assert!(
            attribute(&format!("/kubepods/burstable/{ID}")).is_err(),
            "no pod part"
        );
    }
}
