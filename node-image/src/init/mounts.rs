//! The file systems of a running node, and how the root becomes read-only.
//!
//! The kernel unpacks the initramfs into "rootfs", a special tmpfs that can neither be remounted
//! read-only nor used with pivot_root(2) (containers need pivot_root). So PID 1 starts in two
//! stages, like a classic `switch_root`:
//!
//! 1. On rootfs: mount /dev, /proc and /sys, open the console, copy the image into a fresh tmpfs
//!    at /newroot, delete the originals (giving the memory back), move /dev, /proc and /sys
//!    under the new root, move the new root onto `/`, chroot into it and exec `/init` again.
//! 2. On the new root: mount the rest (cgroup2, devpts, /dev/shm, tmpfs on /run, /tmp and /var)
//!    and remount `/` read-only. Only /run, /tmp and /var (and /dev) stay writable.
//!
//! If stage 1 fails half-way, the node keeps booting on rootfs (writable, no pivot_root) and
//! says so: a degraded node is better than a kernel panic.

use crate::sys;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

const MS_NOSUID: libc::c_ulong = libc::MS_NOSUID;
const MS_NODEV: libc::c_ulong = libc::MS_NODEV;
const MS_NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// The argument stage 1 passes to the re-executed `/init`.
pub const STAGE2_ARG: &str = "--keel-stage2";

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

/// The mounts every stage needs first: /dev (for the console), /proc and /sys.
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

/// Stage 1: copies the initramfs into a tmpfs, makes it the root and re-executes `/init` there.
/// Returns only on failure (the caller continues on rootfs).
pub fn switch_to_tmpfs_root() -> io::Error {
    match prepare_new_root() {
        Ok(()) => sys::exec("/init", &["/init", STAGE2_ARG]),
        Err(e) => e,
    }
}

const NEWROOT: &str = "/newroot";
/// Mount points of stage 1 that are moved, not copied.
const MOVED: [&str; 3] = ["/dev", "/proc", "/sys"];

fn prepare_new_root() -> io::Result<()> {
    mkdir(NEWROOT, 0o755);
    sys::mount(Some("root"), NEWROOT, Some("tmpfs"), 0, Some("mode=0755"))
        .map_err(|e| io::Error::new(e.kind(), format!("mount tmpfs on {NEWROOT}: {e}")))?;
    // Copy everything first: if any copy fails, the initramfs is still whole and boot goes on
    // from it.
    let mut copied = Vec::new();
    for entry in fs::read_dir("/")? {
        let entry = entry?;
        let path = entry.path();
        let name = path.to_string_lossy().into_owned();
        if name == NEWROOT || MOVED.contains(&name.as_str()) {
            continue;
        }
        let dest = Path::new(NEWROOT).join(entry.file_name());
        if let Err(e) = copy_tree(&path, &dest) {
            let _ = sys::umount(NEWROOT, libc::MNT_DETACH);
            return Err(io::Error::new(e.kind(), format!("copy {name}: {e}")));
        }
        copied.push((path, entry.file_type()?.is_dir()));
    }
    // Then free the rootfs copy: the image would otherwise live in memory twice.
    for (path, is_dir) in copied {
        let _ = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
    }
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
    Ok(())
}

fn copy_tree(src: &Path, dest: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dest)
    } else if ft.is_dir() {
        fs::DirBuilder::new()
            .mode(meta.permissions().mode() & 0o7777)
            .create(dest)?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dest.join(entry.file_name()))?;
        }
        Ok(())
    } else if ft.is_file() {
        fs::copy(src, dest).map(drop)
    } else {
        Ok(()) // device nodes, fifos: none in the image; devtmpfs provides /dev
    }
}

/// Stage 2: the remaining mounts, then `/` read-only. Returns errors to print; never fails hard.
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
        sys::mount(None, "/", None, libc::MS_REMOUNT | libc::MS_RDONLY, None)
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
/// root. Fails on rootfs (EINVAL), which is why stage 1 exists.
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
