//! What the node image holds: the node binary as `/init` (and `/sbin/modprobe`), kernel
//! modules, a CA bundle and a few files under /etc — no shell and no other program.

mod common;

use std::process::{Command, Stdio};

use common::out_dir;

#[test]
fn the_initramfs_holds_one_program_and_no_shell() {
    let initramfs = out_dir().join("initramfs");
    assert!(
        initramfs.exists(),
        "{} is missing: run `make image`",
        initramfs.display()
    );
    let unpacked = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | cpio -t --quiet", initramfs.display()))
        .stderr(Stdio::inherit())
        .output()
        .expect("zstd and cpio");
    assert!(unpacked.status.success(), "cannot list the initramfs");
    let listing = String::from_utf8_lossy(&unpacked.stdout);
    let entries: Vec<&str> = listing.lines().collect();
    assert!(entries.contains(&"init"), "no /init in {entries:?}");
    assert!(entries.contains(&"sbin/modprobe"));
    assert!(entries.contains(&"etc/ssl/certs/ca-certificates.crt"));
    assert!(entries.iter().any(|e| e.ends_with(".ko")), "no kernel modules");
    for shell in ["bin/sh", "bin/busybox", "bin/bash", "usr/bin/sh"] {
        assert!(
            !entries.contains(&shell),
            "the image must hold no shell, found {shell}"
        );
    }
    // Every entry is /init, the modprobe link, a module, module metadata, or a file in /etc;
    // the rest are empty mount points.
    for e in &entries {
        let ok = *e == "init"
            || *e == "sbin/modprobe"
            || e.starts_with("lib/modules/")
            || e.starts_with("etc/")
            || [
                "dev",
                "etc",
                "lib",
                "lib/modules",
                "proc",
                "root",
                "run",
                "sbin",
                "sys",
                "tmp",
                "var",
            ]
            .contains(e);
        assert!(ok, "unexpected entry in the image: {e}");
    }
}
