//! Running the real `kubectl` against a lab.
//!
//! kubectl caches API discovery under `$HOME/.kube/cache`; a test that shares HOME with another
//! test (or with the user) would see stale resource lists. Every [`Kubectl`] therefore owns a
//! fresh temporary HOME and passes `--kubeconfig` explicitly, so nothing outside the lab is read
//! or written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// Errors running kubectl (not kubectl failing: that is a [`KubectlOutput`] with a bad status).
#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    #[error("cannot run {binary}: {source}")]
    Run {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create a HOME for kubectl: {0}")]
    Home(#[source] std::io::Error),
    #[error("`kubectl {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// What one kubectl run produced.
#[derive(Clone, Debug)]
pub struct KubectlOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// kubectl bound to one kubeconfig, with a HOME of its own.
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

impl Kubectl {
    /// `binary` is usually `kubectl` (found on PATH) or the `KUBECTL` environment variable.
    pub fn new(binary: &Path, kubeconfig: &Path) -> Result<Kubectl, KubectlError> {
        let home = tempfile::Builder::new()
            .prefix("keel-kubectl-home-")
            .tempdir()
            .map_err(KubectlError::Home)?;
        Ok(Kubectl {
            binary: binary.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            home,
        })
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The kubectl binary (for long-running commands such as `get -w` a test spawns itself).
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The HOME this kubectl uses (its discovery cache lives below it).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `kubectl <args>` and returns its status and output, whatever the status.
    pub fn run(&self, args: &[&str]) -> Result<KubectlOutput, KubectlError> {
        self.run_with_stdin(args, None)
    }

    /// Runs kubectl with `input` on stdin (for `apply -f -`).
    pub fn run_with_stdin(&self, args: &[&str], input: Option<&str>) -> Result<KubectlOutput, KubectlError> {
        let mut cmd = self.command(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let run_err = |source| KubectlError::Run {
            binary: self.binary.display().to_string(),
            source,
        };
        let mut child = cmd.spawn().map_err(run_err)?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            let text = text.to_owned();
            // A separate thread so a large manifest cannot deadlock against a full stdout pipe.
            std::thread::spawn(move || {
                let _ = stdin.write_all(text.as_bytes());
            });
        }
        let out = child.wait_with_output().map_err(run_err)?;
        Ok(KubectlOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs kubectl and returns stdout, or an error carrying stderr when it fails.
    pub fn ok(&self, args: &[&str]) -> Result<String, KubectlError> {
        let out = self.run(args)?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(KubectlError::Failed {
                args: args.join(" "),
                status: out.status,
                stderr: out.stderr,
            })
        }
    }
}

/// Node name → whether its `Ready` condition is `True`, from `kubectl get nodes -o json`.
pub fn node_readiness(nodes_json: &str) -> Option<Vec<(String, bool)>> {
    let v: serde_json::Value = serde_json::from_str(nodes_json).ok()?;
    let items = v.get("items")?.as_array()?;
    Some(
        items
            .iter()
            .filter_map(|n| {
                let name = n.pointer("/metadata/name")?.as_str()?.to_owned();
                let ready = n
                    .pointer("/status/conditions")
                    .and_then(|c| c.as_array())
                    .is_some_and(|conds| {
                        conds.iter().any(|c| {
                            c.get("type").and_then(|t| t.as_str()) == Some("Ready")
                                && c.get("status").and_then(|s| s.as_str()) == Some("True")
                        })
                    });
                Some((name, ready))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_is_read_from_the_ready_condition() {
        let json = r#"{"items":[
            {"metadata":{"name":"keel-1"},"status":{"conditions":[{"type":"MemoryPressure","status":"False"},{"type":"Ready","status":"True"}]}},
            {"metadata":{"name":"keel-2"},"status":{"conditions":[{"type":"Ready","status":"Unknown"}]}},
            {"metadata":{"name":"keel-3"}}
        ]}"#;
        assert_eq!(
            node_readiness(json).unwrap(),
            vec![
                ("keel-1".into(), true),
                ("keel-2".into(), false),
                ("keel-3".into(), false)
            ]
        );
        assert!(node_readiness("not json").is_none());
    }

    #[test]
    fn each_kubectl_has_its_own_home() {
        let a = Kubectl::new(Path::new("kubectl"), Path::new("/nonexistent")).unwrap();
        let b = Kubectl::new(Path::new("kubectl"), Path::new("/nonexistent")).unwrap();
        assert_ne!(a.home(), b.home());
        assert!(a.home().is_dir());
    }
}
