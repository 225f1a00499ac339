//! Facts about this machine that the agent reports: interface addresses, memory, CPUs, disk
//! size, kernel, OS image, boot id. Files under /proc and /etc where they suffice; the two
//! syscalls without a file (getifaddrs, statvfs) are wrapped here, each `unsafe` block with its
//! reason.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::path::Path;

/// One IPv4 address of a network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub interface: String,
    pub address: Ipv4Addr,
}

/// IPv4 addresses of all interfaces except loopback, in kernel order.
pub fn ipv4_addresses() -> Vec<IfAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list and stores its head in `head`; it is read only on
    // success and freed exactly once below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the live list.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr of the family it declares.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: the family is AF_INET, so the sockaddr is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let address = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        // SAFETY: ifa_name is a non-null NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        if address.is_loopback() || address.is_link_local() {
            continue;
        }
        out.push(IfAddr {
            interface: name,
            address,
        });
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// Total size in bytes of the filesystem holding `path`.
pub fn filesystem_size(path: &Path) -> Option<u64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs is plain data; zeroed is a valid initial value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // the field widths differ between libcs
    Some(st.f_blocks as u64 * st.f_frsize as u64)
}

/// `MemTotal` of /proc/meminfo, in bytes.
pub fn memory_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&text)
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPUs this process may run on.
pub fn cpus() -> u64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
}

fn read_trimmed(path: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

pub fn kernel_release() -> String {
    read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default()
}

pub fn boot_id() -> String {
    read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default()
}

/// A fresh random UUID from the kernel.
pub fn random_uuid() -> Option<String> {
    read_trimmed("/proc/sys/kernel/random/uuid")
}

/// The SMBIOS system UUID, when readable (root only on most systems).
pub fn system_uuid() -> Option<String> {
    read_trimmed("/sys/class/dmi/id/product_uuid").map(|s| s.to_ascii_lowercase())
}

/// `PRETTY_NAME` of /etc/os-release.
pub fn os_pretty_name() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    parse_pretty_name(&text)
}

fn parse_pretty_name(text: &str) -> Option<String> {
    let v = text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME="))?.trim();
    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
    (!v.is_empty()).then(|| v.to_string())
}

/// Kubernetes' name for this CPU architecture.
pub fn kube_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_and_etc_formats() {
        assert_eq!(
            parse_meminfo_total("MemTotal:        4025836 kB\nMemFree: 1 kB\n"),
            Some(4025836 * 1024)
        );
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(
            parse_pretty_name("NAME=x\nPRETTY_NAME=\"Keel 0.1.0\"\n").as_deref(),
            Some("Keel 0.1.0")
        );
        assert_eq!(parse_pretty_name("PRETTY_NAME=Bare\n").as_deref(), Some("Bare"));
    }

    #[test]
    fn reads_this_machine() {
        assert!(memory_total().unwrap_or(0) > 0);
        assert!(cpus() >= 1);
        assert!(filesystem_size(Path::new("/")).unwrap_or(0) > 0);
        assert!(!kernel_release().is_empty());
        assert_eq!(boot_id().len(), 36);
        assert_ne!(random_uuid(), random_uuid());
    }
}
