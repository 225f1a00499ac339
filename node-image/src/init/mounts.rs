//! The file systems of a running node, and how the root becomes read-only.
//!
//! The kernel unpacks the initramfs into "rootfs", the namespace's first mount: it has no
//! parent, so pivot_root(2) refuses to run under it (containers need pivot_root), and its
//! superblock cannot be remounted read-only. Rather than copying the image into a tmpfs (a
//! classic `switch_root`), PID 1:
//!
//! 1. mounts /dev, /proc and /sys and opens the console;
//! 2. bind-mounts rootfs on /newroot, moves /dev, /proc and /sys under it, moves it onto `/` and
//!    chroots into it ([`switch_root`]). The root is now an ordinary mount with a parent: no
//!    copy, no extra memory, and pivot_root works below it;
//! 3. mounts the rest (cgroup2, devpts, /dev/shm, tmpfs on /run, /tmp and /var) and remounts
//!    the bind mount read-only (a per-mount flag, which rootfs allows). Only /run, /tmp and
//!    /var (and /dev) stay writable.
//!
//! If step 2 fails, the node keeps booting on rootfs (writable, no pivot_root) and says so: a
//! degraded node is better than a kernel panic.

use crate::sys;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;

const MS_NOSUID: libc::c_ulong = libc::MS_NOSUID;
const MS_NODEV: libc::c_ulong = libc::MS_NODEV;
const MS_NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

fn mkdir(path: &str, mode: u32) {
    let _ = fs::DirBuilder::new().recursive(true).mode(mode).create(path);
}

/// Mounts `fstype` at `target`, treating "already mounted" (EBUSY) as success.
fn mount_fs(fstype: &str, target: &str, flags: libc::c_ulong, data: Option<&str>) -> io::Result<()> {
    mkdir(target, 0o755);
    match sys::mount(Some(fstype), target, Some(fstype), flags, data) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        r => r.map_err(|e| io::Error::new(e.kind(), format!("mount {fstype} on {target}: {e}"))),
    }
}

/// The first mounts: /dev (for the console), /proc and /sys.
pub fn mount_kernel_fs() -> Vec<io::Error> {
    let mut errors = Vec::new();
    let steps: [(&str, &str, libc::c_ulong, Option<&str>); 3] = [
        ("devtmpfs", "/dev", MS_NOSUID, Some("mode=0755")),
        ("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
        ("sysfs", "/sys", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
    ];
    for (fstype, target, flags, data) in steps {
        if let Err(e) = mount_fs(fstype, target, flags, data) {
            errors.push(e);
        }
    }
    errors
}

const NEWROOT: &str = "/newroot";
/// Mount points moved under the new root.
const MOVED: [&str; 3] = ["/dev", "/proc", "/sys"];

/// Makes a bind mount of rootfs the root (see the module docs).
pub fn switch_root() -> io::Result<()> {
    mkdir(NEWROOT, 0o755);
    // A bind mount of rootfs is an ordinary mount with a parent: once it is the root,
    // pivot_root works under it and it can be made read-only on its own, with no copy.
    sys::mount(Some("/"), NEWROOT, None, libc::MS_BIND, None)
        .map_err(|e| io::Error::new(e.kind(), format!("bind / on {NEWROOT}: {e}")))?;
    for m in MOVED {
        let dest = format!("{NEWROOT}{m}");
        mkdir(&dest, 0o755);
        sys::mount(Some(m), &dest, None, libc::MS_MOVE, None)
            .map_err(|e| io::Error::new(e.kind(), format!("move {m}: {e}")))?;
    }
    std::env::set_current_dir(NEWROOT)?;
    sys::mount(Some("."), "/", None, libc::MS_MOVE, None)
        .map_err(|e| io::Error::new(e.kind(), format!("move new root onto /: {e}")))?;
    sys::chroot(".")?;
    std::env::set_current_dir("/")?;
    let _ = fs::remove_dir(NEWROOT);
    Ok(())
}

/// The remaining mounts, then `/` read-only. Returns errors to print; never fails hard.
pub fn mount_runtime_fs() -> Vec<io::Error> {
    let mut errors = Vec::new();
    let mut step = |r: io::Result<()>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    step(mount_fs(
        "cgroup2",
        "/sys/fs/cgroup",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        Some("nsdelegate"),
    ));
    step(mount_fs(
        "devpts",
        "/dev/pts",
        MS_NOSUID | MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    ));
    step(mount_fs(
        "tmpfs",
        "/dev/shm",
        MS_NOSUID | MS_NODEV,
        Some("mode=1777"),
    ));
    step(mount_fs("tmpfs", "/run", MS_NOSUID | MS_NODEV, Some("mode=0755")));
    step(mount_fs("tmpfs", "/tmp", MS_NOSUID | MS_NODEV, Some("mode=1777")));
    step(mount_fs("tmpfs", "/var", MS_NOSUID | MS_NODEV, Some("mode=0755")));
    // /dev/ptmx for the new devpts instance.
    if fs::symlink_metadata("/dev/ptmx").is_err() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    for d in ["/run/keel", "/var/lib/keel", "/var/log", "/var/tmp"] {
        mkdir(d, 0o755);
    }
    step(
        sys::mount(
            None,
            "/",
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            None,
        )
        .map_err(|e| io::Error::new(e.kind(), format!("remount / read-only: {e}"))),
    );
    errors
}

/// The boot self-check: `/` must refuse writes.
pub fn root_is_read_only() -> Result<(), String> {
    let probe = "/.keel-write-probe";
    match fs::write(probe, b"x") {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => Ok(()),
        Err(e) => Err(format!("write to / failed, but not with EROFS: {e}")),
        Ok(()) => {
            let _ = fs::remove_file(probe);
            Err("write to / succeeded".to_string())
        }
    }
}

/// The boot self-check that containers will be able to pivot_root: in a private mount namespace
/// (this runs in a child, `/init selfcheck pivot`), pivot into a fresh tmpfs and detach the old
/// root. Fails on rootfs itself (EINVAL), which is why [`switch_root`] exists.
pub fn pivot_root_check() -> io::Result<()> {
    sys::unshare(libc::CLONE_NEWNS)?;
    sys::mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    let dir = "/tmp/.keel-pivot-check";
    mkdir(dir, 0o700);
    sys::mount(Some("pivot-check"), dir, Some("tmpfs"), 0, Some("mode=0700"))?;
    mkdir(&format!("{dir}/old"), 0o700);
    sys::pivot_root(dir, &format!("{dir}/old"))?;
    std::env::set_current_dir("/")?;
    sys::umount("/old", libc::MNT_DETACH)
}
