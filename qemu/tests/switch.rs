//! The lab switch over real TCP sockets on loopback: learning, flooding, cut/heal by name, MAC
//! and port, loss and delay, and the control socket, as QEMU and `keel-lab switch-ctl` see them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_lab::switch::control::{self, Command, Target};
use keel_lab::switch::frame::{read_frame, write_frame, MacAddr};
use keel_lab::switch::Switch;
use tokio::net::TcpStream;

fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0xaa, 0x00, n])
}

fn frame(dst: MacAddr, src: MacAddr, payload: &str) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental EtherType
    f.extend_from_slice(payload.as_bytes());
    f
}

fn payload(f: &[u8]) -> String {
    String::from_utf8_lossy(&f[14..]).into_owned()
}

struct Lab {
    addr: std::net::SocketAddr,
    control: PathBuf,
    _dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

async fn start_switch() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("switch.sock");
    let names = (1..=3).map(|i| (format!("keel-{i}"), mac(i)));
    let sw = Switch::bind("127.0.0.1:0".parse().unwrap(), &control, names)
        .await
        .unwrap();
    let addr = sw.local_addr().unwrap();
    let task = tokio::spawn(sw.run());
    Lab {
        addr,
        control,
        _dir: dir,
        _task: task,
    }
}

async fn ctl(control: &Path, command: Command) -> String {
    let control = control.to_owned();
    tokio::task::spawn_blocking(move || control::send(&control, &command))
        .await
        .unwrap()
        .unwrap()
}

async fn status(control: &Path) -> serde_json::Value {
    serde_json::from_str(&ctl(control, Command::Status).await).unwrap()
}

/// A node: a TCP connection to the switch that has announced its MAC.
struct Node {
    mac: MacAddr,
    conn: TcpStream,
}

impl Node {
    async fn send(&mut self, dst: MacAddr, text: &str) {
        write_frame(&mut self.conn, &frame(dst, self.mac, text))
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> Vec<u8> {
        tokio::time::timeout(Duration::from_secs(10), read_frame(&mut self.conn))
            .await
            .expect("no frame within 10 s")
            .unwrap()
            .expect("switch closed the port")
    }

    async fn recv_payload(&mut self) -> String {
        payload(&self.recv().await)
    }
}

/// Waits (with a deadline) until the switch has taken `count` frames from `mac`'s port: after
/// that, its decision about them is made and queued, so absence can be checked with a marker.
async fn wait_rx(control: &Path, mac: MacAddr, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(control).await;
        let rx = s["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                p["macs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m == &mac.to_string())
            })
            .map(|p| p["rx"].as_u64().unwrap());
        if rx >= Some(count) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "port of {mac} never reached rx={count}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connects three nodes and lets each announce itself with a broadcast that the others drain.
async fn three_nodes(lab: &Lab) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let conn = TcpStream::connect(lab.addr).await.unwrap();
        nodes.push(Node { mac: mac(i), conn });
    }
    // Every port must be attached before the first broadcast, or it would miss it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&lab.control).await["ports"].as_array().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "ports never attached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..3 {
        let text = format!("hello from {}", i + 1);
        nodes[i].send(MacAddr::BROADCAST, &text).await;
        for (j, node) in nodes.iter_mut().enumerate() {
            if j != i {
                assert_eq!(node.recv_payload().await, text);
            }
        }
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_addresses_and_forwards_unicast_to_one_port_only() {
    let lab = start_switch().await;
    let mut n = three_nodes(&lab).await;
    // Unicast 1 → 2 reaches 2; node 3 must not see it: its next frame is the marker.
    let m2 = n[1].mac;
    n[0].send(m2, "for two").await;
    assert_eq!(n[1].recv_payload().await, "for two");
    let m3 = n[2].mac;
    n[0].send(m3, "marker").await;
    assert_eq!(n[2].recv_payload().await, "marker");

    let s = status(&lab.control).await;
    let ports = s["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 3);
    let names: Vec<&str> = ports.iter().map(|p| p["names"][0].as_str().unwrap()).collect();
    assert_eq!(names, ["keel-1", "keel-2", "keel-3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destination_is_flooded() {
    let lab = start_switch().await;
    let mut n = three_nodes(&lab).await;
    n[0].send(mac(9), "who are you").await;
    assert_eq!(n[1].recv_payload().await, "who are you");
    assert_eq!(n[2].recv_payload().await, "who are you");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_by_name_isolates_a_node_both_ways_and_heal_restores_it() {
    let lab = start_switch().await;
    let mut n = three_nodes(&lab).await;
    let (m1, m2, m3) = (n[0].mac, n[1].mac, n[2].mac);
    ctl(&lab.control, Command::Cut(Target::Name("keel-2".into()))).await;

    // To the cut node: dropped. Marker from 3 proves 2 never got frame "lost-in".
    n[0].send(m2, "lost-in").await;
    n[0].send(MacAddr::BROADCAST, "broadcast while cut").await;
    assert_eq!(n[2].recv_payload().await, "broadcast while cut");
    wait_rx(&lab.control, m1, 3).await;
    // From the cut node: dropped too.
    n[1].send(m1, "lost-out").await;
    wait_rx(&lab.control, m2, 2).await;

    let s = status(&lab.control).await;
    let p2 = s["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["names"][0] == "keel-2")
        .unwrap()
        .clone();
    assert_eq!(p2["cut"], true);
    assert_eq!(p2["dropped_in"], 1);
    assert_eq!(p2["dropped_out"], 2);

    ctl(&lab.control, Command::Heal(Target::Name("keel-2".into()))).await;
    n[2].send(m2, "after heal").await;
    assert_eq!(n[1].recv_payload().await, "after heal");
    n[1].send(m1, "back").await;
    assert_eq!(n[0].recv_payload().await, "back");
    // Node 1 received nothing else in between: "lost-out" never arrived.
    n[2].send(m1, "marker").await;
    assert_eq!(n[0].recv_payload().await, "marker");
    let _ = m3;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_by_mac_follows_the_node_to_a_new_connection() {
    let lab = start_switch().await;
    let mut n = three_nodes(&lab).await;
    let m3 = n[2].mac;
    ctl(&lab.control, Command::Cut(Target::Mac(m3))).await;
    // Node 3 "reboots": a new connection with the same MAC.
    let old = n.pop().unwrap();
    drop(old);
    let mut again = Node {
        mac: m3,
        conn: TcpStream::connect(lab.addr).await.unwrap(),
    };
    again.send(MacAddr::BROADCAST, "I am back").await;
    wait_rx(&lab.control, m3, 1).await;
    n[0].send(MacAddr::BROADCAST, "anyone").await;
    assert_eq!(
        n[1].recv_payload().await,
        "anyone",
        "node 2 must not see node 3's frame"
    );
    ctl(&lab.control, Command::Heal(Target::All)).await;
    n[0].send(m3, "healed").await;
    assert_eq!(again.recv_payload().await, "healed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_by_port_number() {
    let lab = start_switch().await;
    let mut n = three_nodes(&lab).await;
    let s = status(&lab.control).await;
    let port1 = s["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["names"][0] == "keel-1")
        .unwrap()["port"]
        .as_u64()
        .unwrap();
    ctl(&lab.control, Command::Cut(Target::Port(port1))).await;
    let m2 = n[1].mac;
    n[0].send(m2, "dropped").await;
    wait_rx(&lab.control, n[0].mac, 2).await;
    n[2].send(m2, "marker").await;
    assert_eq!(n[1].recv_payload().await, "marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_drops_about_the_asked_share() {
    let lab = start_switch().await;
    let mut n = three_nodes(&lab).await;
    let m2 = n[1].mac;
    ctl(&lab.control, Command::Loss(Target::Name("keel-2".into()), 100)).await;
    n[0].send(m2, "all lost").await;
    wait_rx(&lab.control, n[0].mac, 2).await;
    ctl(&lab.control, Command::Loss(Target::Name("keel-2".into()), 50)).await;
    const SENT: usize = 1000;
    for i in 0..SENT {
        n[0].send(m2, &format!("f{i}")).await;
    }
    n[0].send(MacAddr::BROADCAST, "sync").await; // broadcasts are subject to loss too
    wait_rx(&lab.control, n[0].mac, 2 + SENT as u64 + 1).await;
    ctl(&lab.control, Command::Loss(Target::Name("keel-2".into()), 0)).await;
    n[2].send(m2, "end").await;
    let mut received = 0;
    loop {
        let p = n[1].recv_payload().await;
        if p == "end" {
            break;
        }
        assert_ne!(p, "all lost");
        if p.starts_with('f') {
            received += 1;
        }
    }
    // Binomial(1000, 0.5): 400..600 is more than 6 standard deviations wide.
    assert!(
        (400..=600).contains(&received),
        "{received} of {SENT} arrived at 50% loss"
    );
    let s = status(&lab.control).await;
    assert!(
        s["faults"].as_array().unwrap().is_empty(),
        "loss 0 removes the fault: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_holds_frames_for_the_asked_time() {
    let lab = start_switch().await;
    let mut n = three_nodes(&lab).await;
    let m2 = n[1].mac;
    ctl(
        &lab.control,
        Command::Delay(Target::Name("keel-2".into()), Duration::from_millis(300)),
    )
    .await;
    let sent = Instant::now();
    n[0].send(m2, "slow").await;
    assert_eq!(n[1].recv_payload().await, "slow");
    let took = sent.elapsed();
    assert!(took >= Duration::from_millis(300), "delivered after {took:?}");
    ctl(
        &lab.control,
        Command::Delay(Target::Name("keel-2".into()), Duration::ZERO),
    )
    .await;
    let sent = Instant::now();
    n[0].send(m2, "fast").await;
    assert_eq!(n[1].recv_payload().await, "fast");
    assert!(sent.elapsed() < Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_refuses_bad_commands_and_unknown_names() {
    let lab = start_switch().await;
    let path = lab.control.clone();
    let err = tokio::task::spawn_blocking(move || {
        control::send(&path, &Command::Cut(Target::Name("keel-9".into())))
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.to_string().contains("keel-9"), "{err}");
    // Raw protocol, as `nc -U` would speak it.
    let path = lab.control.clone();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.write_all(b"explode now\nname keel-9 52:54:00:aa:00:09\ncut keel-9\n")
            .unwrap();
        let mut lines = std::io::BufReader::new(s).lines();
        (0..3).map(|_| lines.next().unwrap().unwrap()).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(answer[0].starts_with("err "), "{answer:?}");
    assert_eq!(answer[1], "ok");
    assert_eq!(answer[2], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_switch_cannot_take_a_live_control_socket() {
    let lab = start_switch().await;
    let err = Switch::bind("127.0.0.1:0".parse().unwrap(), &lab.control, [])
        .await
        .err()
        .expect("second bind must fail");
    assert!(err.to_string().contains("already"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_only_that_port() {
    let lab = start_switch().await;
    let mut n = three_nodes(&lab).await;
    use tokio::io::AsyncWriteExt;
    n[2].conn.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&lab.control).await["ports"].as_array().unwrap().len() != 2 {
        assert!(Instant::now() < deadline, "bad port not closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m2 = n[1].mac;
    n[0].send(m2, "still works").await;
    assert_eq!(n[1].recv_payload().await, "still works");
}
