//! Kernel modules: PID 1 loads them itself and is also the kernel's `/sbin/modprobe`.
//!
//! Debian's kernel builds even virtio and the NIC drivers as modules, and the image has no kmod,
//! so this file resolves names the way modprobe does, from the files `depmod` generated at image
//! build time under `/lib/modules/<release>/`:
//!
//! * `modules.dep` — `kernel/…/x.ko: kernel/…/dep.ko …` (paths, dependencies);
//! * `modules.alias` — `alias <glob> <module>` (PCI/virtio IDs, `fs-overlay`, `crypto-crc32c`…);
//! * `modules.softdep` — `softdep <module> pre: a b post: c`;
//! * `modules.builtin` — modules compiled into the kernel (nothing to load).
//!
//! Loading is `finit_module(2)` on the `.ko` file, dependencies and `pre:` softdeps first.
//! "Already loaded" (EEXIST) is success, because the kernel may autoload the same module
//! concurrently. Hardware drivers are found like udev's coldplug: every device's `modalias` in
//! sysfs is resolved through `modules.alias`.

use crate::sys;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A module failed to load.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("no module matches {0:?}")]
    NotFound(String),
    #[error("{module}: {source}")]
    Load { module: String, source: io::Error },
    #[error("reading {path}: {source}")]
    Index { path: PathBuf, source: io::Error },
}

/// Module names treat `-` and `_` alike; the canonical form uses `_`.
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

fn name_of_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .unwrap_or(file);
    canonical(stem)
}

/// The parsed module index of one kernel release.
#[derive(Default)]
pub struct Index {
    dir: PathBuf,
    /// module → (path relative to `dir`, dependency names)
    deps: HashMap<String, (String, Vec<String>)>,
    aliases: Vec<(String, String)>,
    softdeps: HashMap<String, (Vec<String>, Vec<String>)>,
    builtin: HashSet<String>,
    /// Print each load with its duration (kernel argument `keel.debug`).
    pub verbose: bool,
}

impl Index {
    /// Reads `/lib/modules/<running release>/`.
    pub fn load_running() -> Result<Index, ModuleError> {
        let rel = sys::kernel_release().map_err(|source| ModuleError::Index {
            path: "uname".into(),
            source,
        })?;
        Index::load(Path::new("/lib/modules").join(rel))
    }

    pub fn load(dir: PathBuf) -> Result<Index, ModuleError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| ModuleError::Index { path, source })
        };
        let dep = read("modules.dep")?;
        let alias = read("modules.alias").unwrap_or_default();
        let softdep = read("modules.softdep").unwrap_or_default();
        let builtin = read("modules.builtin").unwrap_or_default();
        let mut idx = Index::parse(&dep, &alias, &softdep, &builtin);
        idx.dir = dir;
        Ok(idx)
    }

    fn parse(dep: &str, alias: &str, softdep: &str, builtin: &str) -> Index {
        let mut idx = Index::default();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(name_of_path).collect();
            idx.deps
                .insert(name_of_path(path), (path.trim().to_string(), deps));
        }
        for line in alias.lines() {
            let mut w = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) = (w.next(), w.next(), w.next()) {
                idx.aliases.push((pattern.to_string(), canonical(module)));
            }
        }
        for line in softdep.lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("softdep") {
                continue;
            }
            let Some(module) = w.next() else { continue };
            let (mut pre, mut post) = (Vec::new(), Vec::new());
            let mut into_post = false;
            for word in w {
                match word {
                    "pre:" => into_post = false,
                    "post:" => into_post = true,
                    m if into_post => post.push(m.to_string()),
                    m => pre.push(m.to_string()),
                }
            }
            idx.softdeps.insert(canonical(module), (pre, post));
        }
        idx.builtin = builtin.lines().map(name_of_path).collect();
        idx
    }

    /// The modules a name or alias stands for. Empty when it is built in.
    pub fn resolve(&self, name: &str) -> Result<Vec<String>, ModuleError> {
        let c = canonical(name);
        if self.deps.contains_key(&c) {
            return Ok(vec![c]);
        }
        if self.builtin.contains(&c) {
            return Ok(Vec::new());
        }
        let mut found: Vec<String> = Vec::new();
        for (pattern, module) in &self.aliases {
            if glob_match(pattern.as_bytes(), name.as_bytes()) && !found.contains(module) {
                found.push(module.clone());
            }
        }
        if found.is_empty() {
            return Err(ModuleError::NotFound(name.to_string()));
        }
        Ok(found)
    }

    /// Loads `name` (a module name or alias) with its dependencies; returns how many modules
    /// were newly loaded.
    pub fn modprobe(&self, name: &str) -> Result<usize, ModuleError> {
        let mut loaded = 0;
        let mut last_err = None;
        let modules = self.resolve(name)?;
        let total = modules.len();
        for m in modules {
            match self.load_module(&m, &mut HashSet::new()) {
                Ok(n) => loaded += n,
                Err(e) => last_err = Some(e),
            }
        }
        // An alias may match several drivers; one of them loading is enough.
        match last_err {
            Some(e) if total == 1 || loaded == 0 => Err(e),
            _ => Ok(loaded),
        }
    }

    fn load_module(&self, module: &str, seen: &mut HashSet<String>) -> Result<usize, ModuleError> {
        if !seen.insert(module.to_string()) || is_loaded(module) {
            return Ok(0);
        }
        let Some((path, deps)) = self.deps.get(module) else {
            return if self.builtin.contains(module) {
                Ok(0)
            } else {
                Err(ModuleError::NotFound(module.to_string()))
            };
        };
        let mut n = 0;
        let (pre, post) = self.softdeps.get(module).cloned().unwrap_or_default();
        for soft in &pre {
            // Soft dependencies are best effort, as in kmod.
            if let Ok(mods) = self.resolve(soft) {
                for m in mods {
                    n += self.load_module(&m, seen).unwrap_or(0);
                }
            }
        }
        for dep in deps {
            n += self.load_module(dep, seen)?;
        }
        let file = fs::File::open(self.dir.join(path)).map_err(|source| ModuleError::Load {
            module: module.to_string(),
            source,
        })?;
        let started = sys::monotonic();
        match sys::finit_module(&file, "") {
            Ok(()) => {
                n += 1;
                if self.verbose {
                    let ms = (sys::monotonic().saturating_sub(started)).as_millis();
                    crate::say!("module {module} loaded in {ms} ms");
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(source) => {
                return Err(ModuleError::Load {
                    module: module.to_string(),
                    source,
                })
            }
        }
        for soft in &post {
            if let Ok(mods) = self.resolve(soft) {
                for m in mods {
                    n += self.load_module(&m, seen).unwrap_or(0);
                }
            }
        }
        Ok(n)
    }
}

fn is_loaded(module: &str) -> bool {
    Path::new("/sys/module").join(module).join("initstate").exists()
}

/// fnmatch(3)-style matching of `*`, `?` and `[…]` (with `!`/`^` negation and ranges), as
/// modules.alias patterns use it.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(&pattern[p..], text[t]) {
                        if matched {
                            p += next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one byte against a `[…]` class at the start of `pattern`; returns whether it matched
/// and the class's length, or `None` if the class is not closed.
fn class_match(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        let lo = pattern[i];
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&h| h != b']') {
            let hi = pattern[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
    None
}

/// Which devices a coldplug pass handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// What the network needs first: virtio transports and network controllers.
    Network,
    /// Everything else (storage controllers, whose probing is slow under emulation).
    Rest,
}

/// PCI class 0x02 is "network controller"; vendor 0x1af4 is virtio.
fn in_network_pass(dev: &Path) -> bool {
    let read = |f: &str| {
        fs::read_to_string(dev.join(f))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    read("class").starts_with("0x02") || read("vendor") == "0x1af4"
}

/// Loads the drivers for the devices on `bus` (`pci`, `virtio`, `scsi`…), like udev coldplug.
/// On the PCI bus, `pass` selects network devices first and the rest later. Returns how many
/// modules were loaded.
pub fn coldplug(idx: &Index, bus: &str, pass: Pass) -> usize {
    let Ok(entries) = fs::read_dir(format!("/sys/bus/{bus}/devices")) else {
        return 0;
    };
    let mut aliases: Vec<String> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|dev| bus != "pci" || in_network_pass(dev) == (pass == Pass::Network))
        .filter_map(|dev| fs::read_to_string(dev.join("modalias")).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    aliases.sort();
    aliases.dedup();
    let mut n = 0;
    for alias in aliases {
        // Most devices (bridges, host controllers built in) have no module: not an error.
        if let Ok(k) = idx.modprobe(&alias) {
            n += k;
        }
    }
    n
}

/// The `/sbin/modprobe` entry point the kernel calls as `modprobe -q -- NAME`.
/// Exit code 0 when every name loaded (or was built in / already loaded).
pub fn modprobe_main(args: &[String]) -> std::process::ExitCode {
    let quiet = args.iter().any(|a| a == "-q" || a == "--quiet");
    let names: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if names.is_empty() {
        eprintln!("usage: modprobe [-q] [--] NAME…");
        return std::process::ExitCode::from(2);
    }
    let idx = match Index::load_running() {
        Ok(idx) => idx,
        Err(e) => {
            if !quiet {
                eprintln!("modprobe: {e}");
            }
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    for name in names {
        if let Err(e) = idx.modprobe(name) {
            ok = false;
            if !quiet {
                eprintln!("modprobe: {e}");
            }
        }
    }
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(
            b"pci:v00001AF4d00001000sv*sd*bc*sc*i*",
            b"pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(!glob_match(
            b"pci:v00001AF4d00001000sv*sd*bc*sc*i*",
            b"pci:v00008086d00001000sv0sd0bc02sc00i00"
        ));
        assert!(glob_match(b"virtio:d00000001v*", b"virtio:d00000001v00001AF4"));
        assert!(glob_match(b"fs-overlay", b"fs-overlay"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match(b"x[0-9]y", b"x5y"));
        assert!(!glob_match(b"x[!0-9]y", b"x5y"));
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(b"a*b", b"acbx"));
        assert!(glob_match(b"a*b*c", b"aXbYbZc"));
    }

    fn sample() -> Index {
        Index::parse(
            "kernel/net/vxlan.ko: kernel/net/udp_tunnel.ko kernel/net/ip6_udp_tunnel.ko\n\
             kernel/net/udp_tunnel.ko:\nkernel/net/ip6_udp_tunnel.ko:\n\
             kernel/lib/libcrc32c.ko:\nkernel/crypto/crc32c_generic.ko:\n\
             kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko\n\
             kernel/drivers/net/net_failover.ko:\nkernel/fs/overlay/overlay.ko:\n",
            "alias virtio:d00000001v* virtio_net\nalias fs-overlay overlay\n\
             alias crypto-crc32c crc32c_generic\nalias rtnl-link-vxlan vxlan\n",
            "softdep libcrc32c pre: crc32c\nsoftdep virtio_net post: vxlan\n",
            "kernel/net/unix/unix.ko\nkernel/net/packet/af_packet.ko\n",
        )
    }

    #[test]
    fn resolves_names_aliases_and_builtins() {
        let idx = sample();
        assert_eq!(idx.resolve("vxlan").unwrap(), vec!["vxlan"]);
        assert_eq!(idx.resolve("rtnl-link-vxlan").unwrap(), vec!["vxlan"]);
        assert_eq!(
            idx.resolve("virtio:d00000001v00001AF4").unwrap(),
            vec!["virtio_net"]
        );
        assert_eq!(idx.resolve("fs-overlay").unwrap(), vec!["overlay"]);
        assert_eq!(idx.resolve("af-packet").unwrap(), Vec::<String>::new());
        assert!(matches!(idx.resolve("nope"), Err(ModuleError::NotFound(_))));
        assert_eq!(idx.deps["vxlan"].1, vec!["udp_tunnel", "ip6_udp_tunnel"]);
        assert_eq!(idx.softdeps["libcrc32c"].0, vec!["crc32c"]);
        assert_eq!(idx.softdeps["virtio_net"].1, vec!["vxlan"]);
    }
}
