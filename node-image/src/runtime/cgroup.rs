//! cgroup v2 for containers: `/sys/fs/cgroup/kubepods/<pod uid>/<container>`, with the limits
//! of the container's `resources` (`memory.max`, `cpu.max`, `cpu.weight`, `pids.max`).
//!
//! Controllers are enabled down the tree (`+cpu +memory +pids` in each `cgroup.subtree_control`)
//! as they are created. Only the container directories hold processes (cgroup v2's "no
//! internal processes" rule). Killing a container for good is `cgroup.kill` (Linux 5.14+), which
//! reaches every process in it however it forked.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where cgroup2 is mounted on the node.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];
/// The CFS period the quota is written against, as the kubelet does.
const CPU_PERIOD: u64 = 100_000;
/// Every container gets a pids limit; Kubernetes has no per-container field for it.
pub const DEFAULT_PIDS_MAX: u64 = 4096;

/// The limits of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_max: Option<u64>,
    /// CPU limit in millicores.
    pub cpu_limit_millis: Option<u64>,
    /// CPU request in millicores (becomes the weight).
    pub cpu_request_millis: Option<u64>,
    pub pids_max: Option<u64>,
}

/// `cpu.max` for a limit in millicores: quota and period in microseconds.
pub fn cpu_max(millis: u64) -> String {
    // The kernel refuses quotas under 1 ms.
    let quota = (millis * CPU_PERIOD / 1000).max(1000);
    format!("{quota} {CPU_PERIOD}")
}

/// `cpu.weight` for a request, through cgroup v1 shares as the kubelet converts them.
pub fn cpu_weight(request_millis: u64) -> u64 {
    let shares = (request_millis * 1024 / 1000).clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The cgroup tree the runtime manages, rooted at `root` (the real mount, or a test directory).
#[derive(Clone, Debug)]
pub struct Cgroups {
    pub root: PathBuf,
}

impl Cgroups {
    pub fn new(root: impl Into<PathBuf>) -> Cgroups {
        Cgroups { root: root.into() }
    }

    pub fn pod_dir(&self, pod_uid: &str) -> PathBuf {
        self.root.join("kubepods").join(pod_uid)
    }

    fn enable(dir: &Path) {
        let path = dir.join("cgroup.subtree_control");
        for c in CONTROLLERS {
            // One at a time: a controller the kernel lacks must not stop the others.
            let _ = fs::write(&path, format!("+{c}"));
        }
    }

    fn mkdir(dir: &Path) -> io::Result<()> {
        match fs::create_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("creating cgroup {}: {e}", dir.display()),
            )),
        }
    }

    /// Creates (or reuses) the container's cgroup and writes its limits.
    pub fn create(&self, pod_uid: &str, container: &str, limits: &Limits) -> io::Result<PathBuf> {
        Self::enable(&self.root);
        let kubepods = self.root.join("kubepods");
        Self::mkdir(&kubepods)?;
        Self::enable(&kubepods);
        let pod = self.pod_dir(pod_uid);
        Self::mkdir(&pod)?;
        Self::enable(&pod);
        let dir = pod.join(container);
        Self::mkdir(&dir)?;
        let write = |file: &str, value: String| -> io::Result<()> {
            fs::write(dir.join(file), &value)
                .map_err(|e| io::Error::new(e.kind(), format!("{file}={value} in {}: {e}", dir.display())))
        };
        write(
            "memory.max",
            limits.memory_max.map_or("max".to_string(), |m| m.to_string()),
        )?;
        write(
            "cpu.max",
            limits
                .cpu_limit_millis
                .map_or(format!("max {CPU_PERIOD}"), cpu_max),
        )?;
        if let Some(r) = limits.cpu_request_millis {
            write("cpu.weight", cpu_weight(r).to_string())?;
        }
        write(
            "pids.max",
            limits.pids_max.unwrap_or(DEFAULT_PIDS_MAX).to_string(),
        )?;
        Ok(dir)
    }

    /// Kills every process in a cgroup.
    pub fn kill(dir: &Path) -> io::Result<()> {
        fs::write(dir.join("cgroup.kill"), "1")
    }

    /// Kills every process of a pod (each container cgroup's `cgroup.kill`).
    pub fn kill_pod(&self, pod_uid: &str) {
        if let Ok(entries) = fs::read_dir(self.pod_dir(pod_uid)) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = Self::kill(&e.path());
                }
            }
        }
    }

    /// Whether any process is in the cgroup (`populated 1` in `cgroup.events`).
    pub fn populated(dir: &Path) -> bool {
        fs::read_to_string(dir.join("cgroup.events"))
            .map(|t| t.lines().any(|l| l.trim() == "populated 1"))
            .unwrap_or(false)
    }

    /// The pod uids that have a cgroup.
    pub fn pods(&self) -> Vec<String> {
        fs::read_dir(self.root.join("kubepods"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the kernel's OOM killer struck in this cgroup.
    pub fn oom_killed(dir: &Path) -> bool {
        fs::read_to_string(dir.join("memory.events"))
            .map(|t| {
                t.lines().any(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
            })
            .unwrap_or(false)
    }

    /// Removes a container's cgroup (it must be empty), then the pod's if it is empty.
    pub fn remove(&self, pod_uid: &str, container: Option<&str>) {
        let pod = self.pod_dir(pod_uid);
        if let Some(c) = container {
            let _ = fs::remove_dir(pod.join(c));
        } else if let Ok(entries) = fs::read_dir(&pod) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::remove_dir(e.path());
                }
            }
            let _ = fs::remove_dir(&pod);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_values_follow_the_kubelet() {
        assert_eq!(cpu_max(500), "50000 100000");
        assert_eq!(cpu_max(2000), "200000 100000");
        assert_eq!(cpu_max(1), "1000 100000");
        assert_eq!(cpu_weight(1000), 39);
        assert_eq!(cpu_weight(0), 1);
        assert_eq!(cpu_weight(100), 4);
    }

    #[test]
    fn limits_are_written_into_the_tree() {
        // A plain directory stands in for the cgroup mount: the files are just files here.
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroups::new(dir.path());
        let limits = Limits {
            memory_max: Some(64 << 20),
            cpu_limit_millis: Some(250),
            cpu_request_millis: Some(100),
            pids_max: None,
        };
        let c = cg.create("uid-1", "app", &limits).unwrap();
        assert_eq!(c, dir.path().join("kubepods/uid-1/app"));
        let read = |f: &str| fs::read_to_string(c.join(f)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("cpu.max"), "25000 100000");
        assert_eq!(read("cpu.weight"), "4");
        assert_eq!(read("pids.max"), "4096");
        let c2 = cg.create("uid-1", "side", &Limits::default()).unwrap();
        assert_eq!(fs::read_to_string(c2.join("memory.max")).unwrap(), "max");
        assert_eq!(fs::read_to_string(c2.join("cpu.max")).unwrap(), "max 100000");
        fs::write(
            c.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(Cgroups::oom_killed(&c));
        assert!(!Cgroups::oom_killed(&c2));
    }
}
