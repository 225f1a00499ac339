//! The lab's networking with real QEMU guests, independent of the node image: two busybox
//! guests booted with the lab's own QEMU command line ([`keel_lab::node::qemu_command`]) prove
//!
//! * guestfwd `cmd:` relays: the registry answers at 10.0.2.100:5000 and the gate port takes
//!   several connections in a row (the `tcp:` form would serve only the first);
//! * `restrict=on`: the host's loopback is NOT reachable through 10.0.2.2;
//! * the switch: the guests ping each other on 192.168.50.0/24, the ping fails while one is
//!   cut off and works again after heal;
//! * hostfwd: the guest's port 30000 answers on the host's loopback.
//!
//! Needs the Debian kernel the image build uses: `out/vmlinux` (KEEL_OUT) and its extracted
//! package under `~/.cache/keel` (KEEL_CACHE), both produced by `make image`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_lab::lab::{out_dir, qemu_lock};
use keel_lab::node::{qemu_command, NodeEnvironment, NodeSpec, NODEPORTS};
use keel_lab::proc::{Lifetime, Supervised};
use keel_lab::switch::control::{self, Command as Ctl, Target};
use keel_lab::wait::{wait_for, Poll};

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in failover net_failover virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_net; do
  insmod /lib/modules/$m.ko
done
for w in $(cat /proc/cmdline); do
  case $w in
    keel.name=*) name=${w#keel.name=} ;;
    keel.ip2=*) ip2=${w#keel.ip2=} ;;
    test.peer=*) peer=${w#test.peer=} ;;
    test.escape=*) escape=${w#test.escape=} ;;
  esac
done
n=0
while [ ! -e /sys/class/net/eth1 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
ip link set eth1 up
ip addr add $ip2 dev eth1
echo "SELFTEST $name up"
# (Debian busybox 1.35's `wget -T` segfaults: bound the time with `timeout` instead.)
if timeout 10 wget -q -O /tmp/v2 http://10.0.2.100:5000/v2/ 2>/tmp/err; then echo "SELFTEST registry-ok"; else echo "SELFTEST registry-fail $(cat /tmp/err)"; fi
for i in 1 2 3; do echo "SELFTEST gate $(echo "hello$i" | nc 10.0.2.100 9443)"; done
if timeout 3 wget -q -O /tmp/escape http://10.0.2.2:$escape/; then echo "SELFTEST escape-open"; else echo "SELFTEST escape-blocked"; fi
mkdir -p /www
echo "hello from $name" > /www/index.html
httpd -p 30000 -h /www
echo "SELFTEST ready"
while true; do
  if ping -c 1 -W 1 $peer >/dev/null 2>&1; then echo "SELFTEST peer-ok"; else echo "SELFTEST peer-fail"; fi
  sleep 0.5
done
"#;

const MODULES: &[&str] = &[
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/net/virtio_net.ko",
];

/// Builds a gzip cpio with busybox, the virtio-net modules and the test /init.
fn build_initrd(dir: &Path) -> PathBuf {
    let out = out_dir();
    let release = std::fs::read_to_string(out.join("kernel-version"))
        .expect("out/kernel-version missing: run `make image`");
    let release = release.split_whitespace().next().unwrap().to_owned();
    let cache = std::env::var_os("KEEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/keel"));
    let modules = cache.join(&release).join("lib/modules").join(&release);
    let root = dir.join("root");
    for d in ["bin", "proc", "sys", "dev", "tmp", "lib/modules"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for m in MODULES {
        let src = modules.join(m);
        let name = Path::new(m).file_name().unwrap();
        std::fs::copy(&src, root.join("lib/modules").join(name))
            .unwrap_or_else(|e| panic!("{}: {e} (run `make image`)", src.display()));
    }
    std::fs::write(root.join("init"), INIT).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(root.join("init"))
        .status()
        .unwrap();
    let initrd = dir.join("initrd.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            root.display(),
            initrd.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "cpio failed");
    initrd
}

/// A loopback server that answers each connection's first line with `gate:<line>` and closes.
fn gate_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let mut w = conn.try_clone().unwrap();
            let mut line = String::new();
            let _ = BufReader::new(conn).read_line(&mut line);
            let _ = writeln!(w, "gate:{}", line.trim());
        }
    });
    port
}

fn console_lines(path: &Path) -> Vec<String> {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default())
        .lines()
        .filter_map(|l| l.find("SELFTEST ").map(|i| l[i + 9..].trim().to_owned()))
        .collect()
}

fn wait_console(path: &Path, what: &str, from: usize, timeout: Duration) -> usize {
    wait_for(what, timeout, || {
        let lines = console_lines(path);
        match lines.iter().skip(from).position(|l| l == what) {
            Some(i) => Poll::Ready(from + i),
            None => Poll::Pending(format!("{:?}", lines.iter().rev().take(5).collect::<Vec<_>>())),
        }
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nconsole {}:\n{}",
            path.display(),
            String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default())
        )
    })
}

#[test]
fn guests_reach_only_the_openings_talk_over_the_switch_and_serve_nodeports() {
    let kernel = out_dir().join("vmlinux");
    assert!(kernel.exists(), "{} missing: run `make image`", kernel.display());
    let _lock = qemu_lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let initrd = build_initrd(dir.path());

    // The registry (with images) behind 10.0.2.100:5000, a gate behind :9443.
    let ports = keel_lab::ports::free_ports(2 + 2 * NODEPORTS.len()).unwrap();
    let registry_addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let reg_log = dir.path().join("registry.log");
    let registry = keel_lab::registry::spawn(
        Path::new("docker-registry"),
        dir.path(),
        registry_addr,
        &reg_log,
        &dir.path().join("registry.pid"),
        Lifetime::Owner,
    )
    .unwrap();
    keel_lab::registry::wait_up(&registry, registry_addr, &reg_log).unwrap();
    let gate_port = gate_server();
    // Something on the host's loopback the guests must NOT reach.
    let escape = TcpListener::bind("127.0.0.1:0").unwrap();
    let escape_port = escape.local_addr().unwrap().port();

    let control_sock = dir.path().join("switch.sock");
    let port_file = dir.path().join("switch.port");
    let specs: Vec<NodeSpec> = (1..=2u8)
        .map(|i| {
            let at = 2 + usize::from(i - 1) * NODEPORTS.len();
            NodeSpec::new(i, &ports[at..at + NODEPORTS.len()])
        })
        .collect();
    let mut sw = Command::new(env!("CARGO_BIN_EXE_keel-lab"));
    sw.args(["switch", "--listen", "127.0.0.1:0", "--control"])
        .arg(&control_sock)
        .arg("--port-file")
        .arg(&port_file);
    for s in &specs {
        sw.arg("--node").arg(format!("{}={}", s.name, s.l2_mac));
    }
    let switch_log = dir.path().join("switch.log");
    let _switch = Supervised::spawn(
        "switch",
        sw,
        &switch_log,
        &dir.path().join("switch.pid"),
        Lifetime::Owner,
    )
    .unwrap();
    let switch_port: u16 = wait_for(
        "switch port",
        Duration::from_secs(10),
        || match std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            Some(p) => Poll::Ready(p),
            None => Poll::Pending("no port file".into()),
        },
    )
    .unwrap();

    let mut guests = Vec::new();
    let mut consoles = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let peer = specs[1 - i].ip2.split('/').next().unwrap().to_owned();
        let env = NodeEnvironment {
            qemu: "qemu-system-x86_64".into(),
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            relay_bin: env!("CARGO_BIN_EXE_keel-lab").into(),
            gate_port,
            api_port: gate_port,
            registry_port: registry_addr.port(),
            switch_port,
            token: "abcdef.0123456789abcdef".into(),
            ca_hash: "sha256:00".into(),
            memory_mb: 256,
            kvm: false,
            extra_args: format!("quiet test.peer={peer} test.escape={escape_port}"),
        };
        let console = dir.path().join(format!("console-{}.log", spec.name));
        let cmd = qemu_command(spec, &env, &console);
        let log = dir.path().join(format!("qemu-{}.log", spec.name));
        guests.push(
            Supervised::spawn(
                &spec.name,
                cmd,
                &log,
                &dir.path().join(format!("{}.pid", spec.name)),
                Lifetime::Owner,
            )
            .unwrap(),
        );
        consoles.push(console);
    }

    let boot = Duration::from_secs(120);
    for c in &consoles {
        wait_console(c, "ready", 0, boot);
        let lines = console_lines(c);
        assert!(lines.contains(&"registry-ok".to_string()), "{lines:?}");
        for i in 1..=3 {
            assert!(
                lines.contains(&format!("gate gate:hello{i}")),
                "connection {i} through guestfwd failed: {lines:?}"
            );
        }
        assert!(
            lines.contains(&"escape-blocked".to_string()),
            "restrict=on leaked: {lines:?}"
        );
    }

    // hostfwd: the guest's port 30000 on the host's loopback.
    for spec in &specs {
        let addr = format!("127.0.0.1:{}", spec.nodeports[&30000]);
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(conn, "GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut conn, &mut answer).unwrap();
        assert!(
            answer.lines().next().is_some_and(|l| l.contains(" 200 ")),
            "{answer}"
        );
        assert!(
            answer.ends_with(&format!("\r\n\r\nhello from {}\n", spec.name)),
            "{answer}"
        );
    }

    // The switch: peers ping each other; cut keel-2 → fails; heal → works again.
    let c1 = &consoles[0];
    let ok = wait_console(c1, "peer-ok", 0, Duration::from_secs(30));
    control::send(&control_sock, &Ctl::Cut(Target::Name("keel-2".into()))).unwrap();
    let fail = wait_console(c1, "peer-fail", ok + 1, Duration::from_secs(30));
    control::send(&control_sock, &Ctl::Heal(Target::Name("keel-2".into()))).unwrap();
    wait_console(c1, "peer-ok", fail + 1, Duration::from_secs(30));

    let status: serde_json::Value =
        serde_json::from_str(&control::send(&control_sock, &Ctl::Status).unwrap()).unwrap();
    let ports = status["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 2, "{status}");
    assert!(ports.iter().all(|p| p["rx"].as_u64().unwrap() > 0), "{status}");
    drop(escape);
    drop(guests);
    // QEMU is gone: its relays must be gone too.
    let left = wait_for("relays to exit", Duration::from_secs(10), || {
        let r = keel_lab::proc::find_relays(&[gate_port, registry_addr.port()]);
        if r.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{r:?}"))
        }
    });
    assert!(left.is_ok(), "{left:?}");
}
