//! The lab's L2 segment: a small learning Ethernet switch that QEMU attaches to with
//! `-netdev socket,connect=127.0.0.1:PORT`.
//!
//! Why our own switch: QEMU's multicast socket backend can leak frames onto the real LAN and tap
//! devices need root; a TCP switch on loopback is rootless and cannot leak, and because every
//! frame passes through our code, the lab gets fault injection for free (cut a node off, heal it,
//! add loss or delay) through the control socket described in [`control`].
//!
//! Shape: one reader task per connection ("port") learns source addresses and forwards frames
//! into bounded per-port queues; one writer task per port drains its queue, honouring delays.
//! All decisions happen under one mutex, so the order of frames from one port is preserved and
//! the counters in `status` say exactly what was decided. A full queue drops the frame, as a real
//! switch does, so one stuck VM cannot stall the segment.

pub mod control;
pub mod frame;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use control::{Command, ControlError, Target};
use frame::{MacAddr, MIN_FRAME_LEN};

/// Frames waiting for one port before the switch starts dropping for it.
const PORT_QUEUE: usize = 1024;

/// Errors starting the switch.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("cannot listen for QEMU on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the control socket {path}: {source}")]
    Control {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another switch already answers on {0}")]
    ControlInUse(PathBuf),
}

/// A bound switch, ready to [`run`](Switch::run).
pub struct Switch {
    frames: TcpListener,
    control: UnixListener,
    control_path: PathBuf,
    state: Arc<Mutex<State>>,
}

impl Switch {
    /// Binds the frame listener and the control socket. `names` pre-registers node names (the lab
    /// passes `keel-1=52:54:00:aa:00:01` and so on). Listen on port 0 and read
    /// [`local_addr`](Switch::local_addr) to get a free port without races.
    pub async fn bind(
        listen: SocketAddr,
        control_path: &Path,
        names: impl IntoIterator<Item = (String, MacAddr)>,
    ) -> Result<Switch, SwitchError> {
        let frames = TcpListener::bind(listen)
            .await
            .map_err(|source| SwitchError::Listen { addr: listen, source })?;
        if control_path.exists() {
            // A socket file left by a dead switch is removed; a live one is not ours to take.
            if UnixStream::connect(control_path).await.is_ok() {
                return Err(SwitchError::ControlInUse(control_path.to_owned()));
            }
            let _ = std::fs::remove_file(control_path);
        }
        let control = UnixListener::bind(control_path).map_err(|source| SwitchError::Control {
            path: control_path.to_owned(),
            source,
        })?;
        let state = State {
            names: names.into_iter().collect(),
            ..State::default()
        };
        Ok(Switch {
            frames,
            control,
            control_path: control_path.to_owned(),
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// The address QEMU connects to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.frames.local_addr()
    }

    /// The control socket's path.
    pub fn control_path(&self) -> &Path {
        &self.control_path
    }

    /// Serves ports and control connections until the task is dropped.
    pub async fn run(self) {
        let Switch {
            frames,
            control,
            control_path: _,
            state,
        } = self;
        let control_state = state.clone();
        let control_task = tokio::spawn(async move {
            loop {
                match control.accept().await {
                    Ok((conn, _)) => {
                        tokio::spawn(serve_control(conn, control_state.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        let _abort_control = AbortOnDrop(control_task);
        loop {
            match frames.accept().await {
                Ok((conn, peer)) => {
                    let _ = conn.set_nodelay(true);
                    attach_port(conn, peer, state.clone());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where a fault is attached once names are resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Selector {
    All,
    Port(u64),
    Mac(MacAddr),
}

/// Faults on one selector. An entry with all fields at their defaults is removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
struct Impairment {
    cut: bool,
    loss_percent: u8,
    #[serde(rename = "delay_ms", serialize_with = "as_millis")]
    delay: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

impl Impairment {
    fn is_clear(&self) -> bool {
        *self == Impairment::default()
    }

    /// Two impairments on one port add up: a frame survives only if it survives both losses.
    fn combine(self, other: Impairment) -> Impairment {
        let survive = (100 - u32::from(self.loss_percent)) * (100 - u32::from(other.loss_percent));
        Impairment {
            cut: self.cut || other.cut,
            loss_percent: (100 - survive / 100) as u8,
            delay: self.delay + other.delay,
        }
    }

    fn drops(&self, rng: &mut impl Rng) -> bool {
        self.cut || (self.loss_percent > 0 && rng.random_range(0..100u8) < self.loss_percent)
    }
}

#[derive(Default, Clone, Copy, Serialize)]
struct Counters {
    /// Frames received from this port.
    rx: u64,
    /// Frames queued towards this port.
    tx: u64,
    /// Frames from this port that were dropped (cut, loss, too short).
    dropped_in: u64,
    /// Frames towards this port that were dropped (cut, loss, full queue).
    dropped_out: u64,
}

struct Outgoing {
    at: Instant,
    frame: Arc<[u8]>,
}

struct Port {
    peer: SocketAddr,
    tx: mpsc::Sender<Outgoing>,
    macs: BTreeSet<MacAddr>,
    counters: Counters,
}

#[derive(Default)]
struct State {
    next_port: u64,
    ports: BTreeMap<u64, Port>,
    table: HashMap<MacAddr, u64>,
    faults: BTreeMap<Selector, Impairment>,
    names: BTreeMap<String, MacAddr>,
}

impl State {
    fn impairment(&self, port_id: u64) -> Impairment {
        let mut total = Impairment::default();
        let mut add = |sel: Selector| {
            if let Some(i) = self.faults.get(&sel) {
                total = total.combine(*i);
            }
        };
        add(Selector::All);
        add(Selector::Port(port_id));
        if let Some(port) = self.ports.get(&port_id) {
            for mac in &port.macs {
                add(Selector::Mac(*mac));
            }
        }
        total
    }

    /// Learns, applies faults and queues one frame that arrived on `from`.
    fn forward(&mut self, from: u64, frame: Vec<u8>, rng: &mut impl Rng) {
        let now = Instant::now();
        let Some(port) = self.ports.get_mut(&from) else {
            return;
        };
        port.counters.rx += 1;
        let (Some(dst), Some(src), true) = (
            MacAddr::destination(&frame),
            MacAddr::source(&frame),
            frame.len() >= MIN_FRAME_LEN,
        ) else {
            port.counters.dropped_in += 1;
            return;
        };
        if !src.is_group() {
            if let Some(old) = self.table.insert(src, from) {
                if old != from {
                    if let Some(p) = self.ports.get_mut(&old) {
                        p.macs.remove(&src);
                    }
                }
            }
            if let Some(p) = self.ports.get_mut(&from) {
                if p.macs.insert(src) {
                    tracing::info!(port = from, mac = %src, "learned");
                }
            }
        }
        let ingress = self.impairment(from);
        if ingress.drops(rng) {
            if let Some(p) = self.ports.get_mut(&from) {
                p.counters.dropped_in += 1;
            }
            return;
        }
        let targets: Vec<u64> = match (dst.is_group(), self.table.get(&dst)) {
            (false, Some(&to)) if to == from => Vec::new(),
            (false, Some(&to)) => vec![to],
            _ => self.ports.keys().copied().filter(|&id| id != from).collect(),
        };
        let frame: Arc<[u8]> = frame.into();
        for to in targets {
            let egress = self.impairment(to);
            let Some(port) = self.ports.get_mut(&to) else {
                continue;
            };
            if egress.drops(rng) {
                port.counters.dropped_out += 1;
                continue;
            }
            let out = Outgoing {
                at: now + ingress.delay + egress.delay,
                frame: frame.clone(),
            };
            match port.tx.try_send(out) {
                Ok(()) => port.counters.tx += 1,
                Err(_) => port.counters.dropped_out += 1,
            }
        }
    }

    fn remove_port(&mut self, id: u64) {
        if let Some(port) = self.ports.remove(&id) {
            for mac in port.macs {
                if self.table.get(&mac) == Some(&id) {
                    self.table.remove(&mac);
                }
            }
            tracing::info!(port = id, peer = %port.peer, "port closed");
        }
    }

    fn resolve(&self, target: &Target) -> Result<Selector, ControlError> {
        match target {
            Target::All => Ok(Selector::All),
            Target::Port(n) => Ok(Selector::Port(*n)),
            Target::Mac(m) => Ok(Selector::Mac(*m)),
            Target::Name(n) => self
                .names
                .get(n)
                .map(|m| Selector::Mac(*m))
                .ok_or_else(|| ControlError::UnknownName(n.clone())),
        }
    }

    fn modify(&mut self, target: &Target, f: impl FnOnce(&mut Impairment)) -> Result<(), ControlError> {
        let sel = self.resolve(target)?;
        let entry = self.faults.entry(sel).or_default();
        f(entry);
        if entry.is_clear() {
            self.faults.remove(&sel);
        }
        Ok(())
    }

    fn execute(&mut self, command: &Command) -> Result<Option<String>, ControlError> {
        match command {
            Command::Cut(t) => self.modify(t, |i| i.cut = true)?,
            Command::Heal(Target::All) => self.faults.clear(),
            Command::Heal(t) => {
                let sel = self.resolve(t)?;
                self.faults.remove(&sel);
            }
            Command::Loss(t, pct) => self.modify(t, |i| i.loss_percent = *pct)?,
            Command::Delay(t, d) => self.modify(t, |i| i.delay = *d)?,
            Command::Name(n, m) => {
                self.names.insert(n.clone(), *m);
            }
            Command::Status => return Ok(Some(self.status())),
        }
        Ok(None)
    }

    fn status(&self) -> String {
        #[derive(Serialize)]
        struct PortStatus<'a> {
            port: u64,
            peer: String,
            macs: &'a BTreeSet<MacAddr>,
            names: Vec<&'a str>,
            #[serde(flatten)]
            counters: Counters,
            #[serde(flatten)]
            impairment: Impairment,
        }
        #[derive(Serialize)]
        struct Fault {
            target: Selector,
            #[serde(flatten)]
            impairment: Impairment,
        }
        let ports: Vec<PortStatus> = self
            .ports
            .iter()
            .map(|(id, p)| PortStatus {
                port: *id,
                peer: p.peer.to_string(),
                macs: &p.macs,
                names: self
                    .names
                    .iter()
                    .filter(|(_, m)| p.macs.contains(m))
                    .map(|(n, _)| n.as_str())
                    .collect(),
                counters: p.counters,
                impairment: self.impairment(*id),
            })
            .collect();
        let faults: Vec<Fault> = self
            .faults
            .iter()
            .map(|(s, i)| Fault {
                target: *s,
                impairment: *i,
            })
            .collect();
        serde_json::json!({ "ports": ports, "faults": faults, "names": self.names }).to_string()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the tables inconsistent in a way that matters
    // more than stopping the segment would, so keep serving.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn attach_port(conn: TcpStream, peer: SocketAddr, state: Arc<Mutex<State>>) {
    let (tx, mut rx) = mpsc::channel::<Outgoing>(PORT_QUEUE);
    let id = {
        let mut s = lock(&state);
        s.next_port += 1;
        let id = s.next_port;
        s.ports.insert(
            id,
            Port {
                peer,
                tx,
                macs: BTreeSet::new(),
                counters: Counters::default(),
            },
        );
        id
    };
    tracing::info!(port = id, %peer, "port connected");
    let (mut reader, mut writer) = conn.into_split();
    let writer_task = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            tokio::time::sleep_until(out.at).await;
            if let Err(e) = frame::write_frame(&mut writer, &out.frame).await {
                tracing::info!(port = id, error = %e, "write failed");
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    tokio::spawn(async move {
        loop {
            match frame::read_frame(&mut reader).await {
                Ok(Some(f)) => lock(&state).forward(id, f, &mut rand::rng()),
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(port = id, error = %e, "read failed");
                    break;
                }
            }
            if writer_task.is_finished() {
                break;
            }
        }
        lock(&state).remove_port(id);
        writer_task.abort();
    });
}

async fn serve_control(conn: UnixStream, state: Arc<Mutex<State>>) {
    let (reader, mut writer) = conn.into_split();
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        let answer = match line.parse::<Command>() {
            Ok(cmd) => {
                let result = lock(&state).execute(&cmd);
                match result {
                    Ok(None) => {
                        tracing::info!(command = %cmd, "control");
                        "ok".to_owned()
                    }
                    Ok(Some(payload)) => format!("ok {payload}"),
                    Err(e) => format!("err {e}"),
                }
            }
            Err(e) => format!("err {e}"),
        };
        if writer.write_all(format!("{answer}\n").as_bytes()).await.is_err() {
            break;
        }
    }
}
