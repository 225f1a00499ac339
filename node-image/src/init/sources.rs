//! Where node configuration comes from, highest rank first (see [`crate::config`] for the
//! format): the kernel command line, the archive appended to the initramfs
//! (`/etc/keel/node.conf` in the root, absent from the base image), a config disk labelled
//! `KEELCFG` (iso9660 or vfat, `/keel/node.conf`), and VMware guestinfo.

use crate::config::{ConfigError, NodeConfig, KEYS};
use crate::init::modules::Index;
use crate::say;
use crate::sys;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};

/// Where the appended config archive puts its file.
pub const ARCHIVE_CONF: &str = "/etc/keel/node.conf";
/// The config disk's volume label and file.
pub const DISK_LABEL: &str = "KEELCFG";
pub const DISK_CONF: &str = "keel/node.conf";
const DISK_MOUNT: &str = "/run/keel/cfgdisk";

fn report(source: &str, errors: Vec<ConfigError>) {
    for e in errors {
        say!("config ({source}): ignored {e}");
    }
}

/// Gathers and merges every source. `cmdline` is the kernel command line. Config disks are
/// looked for among the block devices present now; [`late_disk`] looks again once the slower
/// storage controllers are up.
pub fn gather(cmdline: &str, modules: &Index) -> NodeConfig {
    let (mut cfg, errors) = NodeConfig::from_cmdline(cmdline);
    report("cmdline", errors);
    if !cfg.is_empty() {
        cfg.sources.push("cmdline".into());
    }
    let mut layer = |name: &str, found: Option<(NodeConfig, Vec<ConfigError>)>| {
        if let Some((lower, errors)) = found {
            report(name, errors);
            if !lower.is_empty() {
                cfg.sources.push(name.into());
                cfg.fill_from(lower);
            }
        }
    };
    layer(
        "archive",
        fs::read_to_string(ARCHIVE_CONF)
            .ok()
            .map(|t| NodeConfig::from_conf(&t)),
    );
    layer("disk", config_disk(modules).map(|t| NodeConfig::from_conf(&t)));
    layer("guestinfo", guestinfo());
    cfg
}

/// A config disk that appeared only after the storage drivers loaded (after the network came
/// up). Returns its settings, or `None` if there is none.
pub fn late_disk(modules: &Index) -> Option<NodeConfig> {
    let (lower, errors) = NodeConfig::from_conf(&config_disk(modules)?);
    report("disk", errors);
    Some(lower)
}

/// The file system type and label found in a block device's first 64 KiB.
#[derive(Debug, PartialEq, Eq)]
pub enum Volume {
    Iso9660(String),
    Vfat(String),
}

/// Reads the volume label of an iso9660 (primary volume descriptor at 32 KiB) or FAT
/// (boot sector) file system.
pub fn probe_label(head: &[u8]) -> Option<Volume> {
    let trim = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .trim_end_matches([' ', '\0'])
            .to_string()
    };
    if let Some(pvd) = head.get(32768..32768 + 72) {
        if pvd[0] == 1 && &pvd[1..6] == b"CD001" {
            return Some(Volume::Iso9660(trim(&pvd[40..72])));
        }
    }
    if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xaa {
        // FAT32 extended boot record at 64, FAT12/16 at 36; signature 0x29 before the label.
        if head[66] == 0x29 && &head[82..87] == b"FAT32" {
            return Some(Volume::Vfat(trim(&head[71..82])));
        }
        if head[38] == 0x29 && &head[54..57] == b"FAT" {
            return Some(Volume::Vfat(trim(&head[43..54])));
        }
    }
    None
}

fn read_head(dev: &str) -> Option<Vec<u8>> {
    let mut f = File::open(dev).ok()?;
    let mut head = vec![0u8; 32768 + 2048];
    f.seek(SeekFrom::Start(0)).ok()?;
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => break,
        }
    }
    head.truncate(got);
    Some(head)
}

/// True the first time a device is seen: the late search skips what the early one tried.
fn first_look(dev: &str) -> bool {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = match SEEN.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if seen.iter().any(|d| d == dev) {
        return false;
    }
    seen.push(dev.to_string());
    true
}

/// Finds the block device labelled KEELCFG, mounts it read-only and reads the config file.
fn config_disk(modules: &Index) -> Option<String> {
    let entries = fs::read_dir("/sys/class/block").ok()?;
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("zram"))
        .collect();
    names.sort();
    for name in names {
        let dev = format!("/dev/{name}");
        if !first_look(&dev) {
            continue;
        }
        let Some(head) = read_head(&dev) else { continue };
        let (fstype, module) = match probe_label(&head) {
            Some(Volume::Iso9660(l)) if l.eq_ignore_ascii_case(DISK_LABEL) => ("iso9660", "isofs"),
            Some(Volume::Vfat(l)) if l.eq_ignore_ascii_case(DISK_LABEL) => ("vfat", "vfat"),
            _ => continue,
        };
        // vfat's default code page and I/O charset come as separate modules.
        for m in [module, "nls_cp437", "nls_ascii", "nls_utf8"] {
            let _ = modules.modprobe(m);
        }
        let _ = fs::create_dir_all(DISK_MOUNT);
        let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if let Err(e) = sys::mount(Some(&dev), DISK_MOUNT, Some(fstype), flags, None) {
            say!("config disk {dev}: mount {fstype}: {e}");
            continue;
        }
        let text = fs::read_to_string(format!("{DISK_MOUNT}/{DISK_CONF}"));
        let _ = sys::umount(DISK_MOUNT, 0);
        match text {
            Ok(t) => {
                say!("config disk {dev} ({fstype}, {DISK_LABEL})");
                return Some(t);
            }
            Err(e) => say!("config disk {dev}: no {DISK_CONF}: {e}"),
        }
    }
    None
}

/// `guestinfo.keel.<key>` variables, when running on VMware.
///
/// The backdoor is queried by a child process (`/init guestinfo`): on a VM whose backdoor is
/// restricted the `in` instruction faults, and that must kill a child, not PID 1.
fn guestinfo() -> Option<(NodeConfig, Vec<ConfigError>)> {
    if !sys::vmware::is_vmware() {
        return None;
    }
    let out = match std::process::Command::new("/init").arg("guestinfo").output() {
        Ok(o) => o,
        Err(e) => {
            say!("guestinfo: {e}");
            return None;
        }
    };
    if !out.status.success() {
        say!(
            "guestinfo: the query failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some(NodeConfig::from_conf(&String::from_utf8_lossy(&out.stdout)))
}

/// `/init guestinfo`: prints the `guestinfo.keel.*` variables as `node.conf` lines.
pub fn guestinfo_main() -> std::process::ExitCode {
    let chan = match sys::vmware::Channel::open() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("guestinfo: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut text = String::new();
    for key in KEYS {
        if let Ok(Some(value)) = chan.guestinfo(&format!("keel.{key}")) {
            text.push_str(&conf_lines(key, &value));
        }
    }
    print!("{text}");
    std::process::ExitCode::SUCCESS
}

/// A guestinfo value as `node.conf` lines; repeatable keys may hold several values separated
/// by spaces.
fn conf_lines(key: &str, value: &str) -> String {
    value.split_whitespace().map(|v| format!("{key}={v}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guestinfo_values_become_conf_lines() {
        let text = conf_lines("registry-mirror", "docker.io=http://a:5000 quay.io=http://b:5001");
        assert_eq!(
            text,
            "registry-mirror=docker.io=http://a:5000\nregistry-mirror=quay.io=http://b:5001\n"
        );
        let (cfg, errors) = NodeConfig::from_conf(&(text + &conf_lines("server", "https://cp:9443")));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cfg.registry_mirrors.len(), 2);
        assert_eq!(cfg.server.as_deref(), Some("https://cp:9443"));
    }

    #[test]
    fn iso_label() {
        let mut head = vec![0u8; 32768 + 2048];
        head[32768] = 1;
        head[32769..32774].copy_from_slice(b"CD001");
        head[32768 + 40..32768 + 72].copy_from_slice(format!("{:<32}", "KEELCFG").as_bytes());
        assert_eq!(probe_label(&head), Some(Volume::Iso9660("KEELCFG".into())));
    }

    #[test]
    fn fat_labels() {
        let mut fat16 = vec![0u8; 512];
        fat16[510] = 0x55;
        fat16[511] = 0xaa;
        fat16[38] = 0x29;
        fat16[43..54].copy_from_slice(b"KEELCFG    ");
        fat16[54..62].copy_from_slice(b"FAT16   ");
        assert_eq!(probe_label(&fat16), Some(Volume::Vfat("KEELCFG".into())));
        let mut fat32 = vec![0u8; 512];
        fat32[510] = 0x55;
        fat32[511] = 0xaa;
        fat32[66] = 0x29;
        fat32[71..82].copy_from_slice(b"KEELCFG    ");
        fat32[82..90].copy_from_slice(b"FAT32   ");
        assert_eq!(probe_label(&fat32), Some(Volume::Vfat("KEELCFG".into())));
        assert_eq!(probe_label(&[0u8; 1024]), None);
    }
}
