//! The test images against a real `docker-registry` on loopback (Debian's package, with the
//! lab's own loopback-only config), checked by an independent client (`skopeo`), and the echo
//! image's CGI served by a real busybox httpd.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keel_lab::image::{digest, lab_images, DEFAULT_BUSYBOX};
use keel_lab::proc::Lifetime;
use keel_lab::registry;
use keel_lab::wait::{wait_for, Poll};

fn free_addr() -> SocketAddr {
    let port = keel_lab::ports::free_ports(1).unwrap()[0];
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn images_push_to_a_real_registry_and_skopeo_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let log = dir.path().join("registry.log");
    let process = registry::spawn(
        Path::new("docker-registry"),
        dir.path(),
        addr,
        &log,
        &dir.path().join("registry.pid"),
        Lifetime::Owner,
    )
    .unwrap();
    registry::wait_up(&process, addr, &log).unwrap();
    let config = std::fs::read_to_string(dir.path().join("registry.yml")).unwrap();
    assert!(config.contains(&format!("addr: {addr}")), "{config}");

    let images = lab_images(Path::new(DEFAULT_BUSYBOX)).unwrap();
    let uploaded = registry::push_blocking(&addr.to_string(), &images).unwrap();
    // busybox: layer + config; echo: both layers + config (blobs belong to a repository, so
    // the shared base layer is uploaded to each).
    assert_eq!(uploaded, 5);
    assert_eq!(
        registry::push_blocking(&addr.to_string(), &images).unwrap(),
        0,
        "second push re-uploaded"
    );

    for image in &images {
        let manifest = registry::manifest(&addr.to_string(), &image.repository, &image.tag).unwrap();
        assert_eq!(digest(&manifest), image.manifest_digest());
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw"])
            .arg(format!("docker://{addr}/{}", image.reference()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(digest(&out.stdout), image.manifest_digest());
    }

    // A full copy verifies every blob's digest on the way.
    let oci = dir.path().join("oci");
    let out = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{addr}/keel/echo:latest"))
        .arg(format!("oci:{}:echo", oci.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci:{}:echo", oci.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["config"]["Cmd"][0], "/echo/serve");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
}

#[test]
fn images_subcommand_pushes_and_prints_digests() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let log = dir.path().join("registry.log");
    let process = registry::spawn(
        Path::new("docker-registry"),
        dir.path(),
        addr,
        &log,
        &dir.path().join("registry.pid"),
        Lifetime::Owner,
    )
    .unwrap();
    registry::wait_up(&process, addr, &log).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel-lab"))
        .args(["images", "--registry", &addr.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let images = lab_images(Path::new(DEFAULT_BUSYBOX)).unwrap();
    for image in &images {
        let line = format!("{addr}/{} {}", image.reference(), image.manifest_digest());
        assert!(text.contains(&line), "{line} not in {text}");
    }
}

/// Unpacks the echo image's layers (in order) into `root`, as a node would.
fn unpack(root: &Path) {
    let images = lab_images(Path::new(DEFAULT_BUSYBOX)).unwrap();
    for layer in &images[1].layers {
        let gz = flate2::read::GzDecoder::new(&layer.blob[..]);
        tar::Archive::new(gz).unpack(root).unwrap();
    }
}

#[test]
fn echo_image_answers_with_pod_name_ip_and_client() {
    let root = tempfile::tempdir().unwrap();
    unpack(root.path());
    assert!(root.path().join("bin/busybox").exists());
    let port = keel_lab::ports::free_ports(1).unwrap()[0];
    // The image's own httpd command, but rooted in the unpacked tree instead of a chroot.
    let mut httpd = Command::new(root.path().join("bin/busybox"))
        .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
        .arg(root.path().join("echo/www"))
        .env("POD_NAME", "echo-abc12")
        .env("POD_IP", "10.244.3.7")
        .spawn()
        .unwrap();
    let answer = wait_for("httpd to answer", Duration::from_secs(10), || {
        let out = Command::new(DEFAULT_BUSYBOX)
            .args(["wget", "-q", "-O-", &format!("http://127.0.0.1:{port}/")])
            .output()
            .unwrap();
        if out.status.success() {
            Poll::Ready(String::from_utf8(out.stdout).unwrap())
        } else {
            Poll::Pending(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    let _ = httpd.kill();
    let _ = httpd.wait();
    assert_eq!(answer.unwrap(), "pod=echo-abc12 ip=10.244.3.7 client=127.0.0.1\n");
}
