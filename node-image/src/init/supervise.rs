//! PID 1's steady state: one synchronous loop that reaps every child, restarts the agent with
//! back-off, forwards the agent's output to the consoles, renews the DHCP lease and turns
//! signals into a clean poweroff or reboot.
//!
//! Signals are blocked and read from a signalfd, so the loop is a single `poll` over the
//! signalfd and the agent's output pipe, with a timeout for the next timer; there are no
//! signal handlers and no threads.
//!
//! | signal | action |
//! |---|---|
//! | SIGCHLD | reap; restart the agent if it was the agent |
//! | SIGTERM, SIGINT (Ctrl-Alt-Del), SIGRTMIN+5 | reboot |
//! | SIGUSR2, SIGPWR, SIGRTMIN+4 | power off |
//! | ACPI power button (QEMU `system_powerdown`, a hypervisor's "shut down") | power off |

use crate::say;
use crate::sys::{self, ExitStatus, PowerAction, SignalFd};
use std::fs::File;
use std::io::{PipeReader, PipeWriter, Read};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the agent gets to exit after SIGTERM at shutdown.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// An agent that ran this long resets the back-off.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The agent's restart delay: 1 s, doubling to 60 s while it keeps failing, back to 1 s after
/// a run of a minute or more.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: MIN_BACKOFF }
    }
}

impl Backoff {
    /// The delay before the next start, given how long the last run lasted.
    fn after_exit(&mut self, ran: Duration) -> Duration {
        if ran >= HEALTHY_RUN {
            self.next = MIN_BACKOFF;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        delay
    }
}

/// The token of a `keel: selftest: kill the agent (TOKEN)` line in the agent's output.
fn kill_request(out: &[u8]) -> Option<String> {
    const ASK: &[u8] = b"keel: selftest: kill the agent (";
    let at = out.windows(ASK.len()).rposition(|w| w == ASK)? + ASK.len();
    let rest = &out[at..];
    let end = rest.iter().position(|b| *b == b')')?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// Something that wants to run periodically inside the loop (DHCP renewal).
pub trait Timer {
    fn due(&self) -> Option<Instant>;
    fn fire(&mut self);
}

pub struct Supervisor {
    signals: SignalFd,
    out_r: PipeReader,
    out_w: PipeWriter,
    agent: Option<(i32, Instant)>,
    next_start: Option<Instant>,
    backoff: Backoff,
    config_path: String,
    buttons: Vec<File>,
    /// `keel.selftest=kill-agent`: SIGKILL the agent once it first reports a session, so tests
    /// can watch PID 1 restart it (the image has no shell to do it from).
    kill_agent_once: bool,
    /// `keel.selftest=kill-agent-on-request`: SIGKILL the agent when it prints
    /// `keel: selftest: kill the agent (TOKEN)`, once per token (tests annotate a pod to kill
    /// the agent while pods run); the tokens already honoured.
    kill_on_request: Option<Vec<String>>,
    /// The end of the agent's last output, so that a line split across reads still matches.
    output_tail: Vec<u8>,
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPWR => "SIGPWR",
        _ => "signal",
    }
}

impl Supervisor {
    /// Blocks the signals PID 1 handles and opens the agent's output pipe.
    pub fn new(config_path: &str) -> std::io::Result<Supervisor> {
        let signals = SignalFd::new(&[
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPWR,
            libc::SIGHUP,
            libc::SIGRTMIN() + 4,
            libc::SIGRTMIN() + 5,
        ])?;
        let (out_r, out_w) = std::io::pipe()?;
        Ok(Supervisor {
            signals,
            out_r,
            out_w,
            agent: None,
            next_start: Some(Instant::now()),
            backoff: Backoff::default(),
            config_path: config_path.to_string(),
            buttons: Vec::new(),
            kill_agent_once: false,
            kill_on_request: None,
            output_tail: Vec::new(),
        })
    }

    /// Opens the ACPI power buttons (once the `button` and `evdev` modules are loaded); a press
    /// from then on powers the node off.
    pub fn watch_power_buttons(&mut self) {
        self.buttons = power_buttons();
    }

    /// Arms the `keel.selftest=kill-agent` switch.
    pub fn kill_agent_once_connected(&mut self) {
        self.kill_agent_once = true;
    }

    /// Arms the `keel.selftest=kill-agent-on-request` switch.
    pub fn kill_agent_on_request(&mut self) {
        self.kill_on_request = Some(Vec::new());
    }

    /// Starts the agent now (the loop restarts it when it exits).
    pub fn start_agent(&mut self) {
        self.next_start = None;
        let spawn = || -> std::io::Result<std::process::Child> {
            let mut cmd = Command::new("/init");
            sys::clear_signal_mask_on_spawn(&mut cmd);
            cmd.args(["agent", "--config", &self.config_path])
                .env_clear()
                .env("PATH", "/sbin")
                .env("HOME", crate::config::STATE_DIR)
                .env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(self.out_w.try_clone()?)
                .stderr(self.out_w.try_clone()?)
                .spawn()
        };
        match spawn() {
            Ok(child) => {
                let pid = child.id() as i32;
                // The child is reaped by the waitpid(-1) loop, never through `Child`.
                drop(child);
                self.agent = Some((pid, Instant::now()));
                say!("agent started (pid {pid})");
            }
            Err(e) => {
                let delay = self.backoff.after_exit(Duration::ZERO);
                say!("starting the agent failed: {e}; retrying in {delay:?}");
                self.next_start = Some(Instant::now() + delay);
            }
        }
    }

    fn reap(&mut self) {
        loop {
            match sys::reap_one() {
                Ok(Some((pid, status))) => {
                    if self.agent.map(|(p, _)| p) == Some(pid) {
                        let ran = self.agent.map(|(_, t)| t.elapsed()).unwrap_or_default();
                        self.agent = None;
                        let delay = self.backoff.after_exit(ran);
                        let how = match status {
                            ExitStatus::Code(c) => format!("exit code {c}"),
                            ExitStatus::Signal(s) => format!("signal {s}"),
                        };
                        say!(
                            "agent exited ({how}) after {:.1}s; restarting in {delay:?}",
                            ran.as_secs_f64()
                        );
                        self.next_start = Some(Instant::now() + delay);
                    }
                }
                Ok(None) | Err(_) => return,
            }
        }
    }

    fn forward_output(&mut self) {
        let mut buf = [0u8; 4096];
        if let Ok(n) = self.out_r.read(&mut buf) {
            if n > 0 {
                super::console::write_raw(&buf[..n]);
                let mut scan = std::mem::take(&mut self.output_tail);
                scan.extend_from_slice(&buf[..n]);
                let keep = scan.len().saturating_sub(128);
                self.output_tail = scan[keep..].to_vec();
                if let (Some(done), Some(token)) = (self.kill_on_request.as_mut(), kill_request(&scan)) {
                    if let (false, Some((pid, _))) = (done.contains(&token), self.agent) {
                        say!("selftest: killing the agent (pid {pid}) as asked ({token})");
                        let _ = sys::kill(pid, libc::SIGKILL);
                        done.push(token);
                    }
                }
                let connected = buf[..n].windows(19).any(|w| w == b"keel: connected to ");
                if self.kill_agent_once && connected {
                    if let Some((pid, _)) = self.agent {
                        self.kill_agent_once = false;
                        say!("selftest: killing the agent (pid {pid})");
                        let _ = sys::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }

    /// Whether a power-button input device reported a key press.
    fn power_button_pressed(button: &mut File) -> bool {
        const EV_KEY: u16 = 1;
        const KEY_POWER: u16 = 116;
        // struct input_event on x86_64: struct timeval (16 bytes), u16 type, u16 code, i32 value.
        let mut buf = [0u8; 24 * 16];
        let Ok(n) = button.read(&mut buf) else {
            return false;
        };
        buf[..n].chunks_exact(24).any(|ev| {
            let ty = u16::from_ne_bytes([ev[16], ev[17]]);
            let code = u16::from_ne_bytes([ev[18], ev[19]]);
            let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
            ty == EV_KEY && code == KEY_POWER && value == 1
        })
    }

    /// Runs forever; returns the action once a poweroff/reboot was requested (or `stop_after`
    /// elapsed after the agent's first start, for the boot self-test).
    pub fn run(&mut self, timers: &mut [&mut dyn Timer], poweroff_after_start: bool) -> PowerAction {
        let mut buttons = std::mem::take(&mut self.buttons);
        loop {
            if self.next_start.is_some_and(|t| t <= Instant::now()) {
                self.start_agent();
            }
            if poweroff_after_start && self.agent.is_some() {
                say!("selftest: agent stage reached, powering off");
                return PowerAction::PowerOff;
            }
            for t in timers.iter_mut() {
                if t.due().is_some_and(|d| d <= Instant::now()) {
                    t.fire();
                }
            }
            let mut next = self.next_start;
            for t in timers.iter() {
                next = match (next, t.due()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let timeout = next.map(|t| t.saturating_duration_since(Instant::now()));
            let mut fds = vec![self.signals.raw(), self.out_r.as_raw_fd()];
            fds.extend(buttons.iter().map(|b| b.as_raw_fd()));
            let ready = match sys::poll_readable(&fds, timeout) {
                Ok(r) => r,
                Err(e) => {
                    say!("poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if ready.get(1).copied().unwrap_or(false) {
                self.forward_output();
            }
            for (i, button) in buttons.iter_mut().enumerate() {
                if ready.get(2 + i).copied().unwrap_or(false) && Self::power_button_pressed(button) {
                    say!("power button pressed: powering off");
                    return PowerAction::PowerOff;
                }
            }
            if ready.first().copied().unwrap_or(false) {
                while let Some(sig) = self.signals.read() {
                    match sig {
                        libc::SIGCHLD => self.reap(),
                        libc::SIGTERM | libc::SIGINT => {
                            say!("{} received: rebooting", signal_name(sig));
                            return PowerAction::Reboot;
                        }
                        libc::SIGUSR2 | libc::SIGPWR => {
                            say!("{} received: powering off", signal_name(sig));
                            return PowerAction::PowerOff;
                        }
                        s if s == libc::SIGRTMIN() + 4 => return PowerAction::PowerOff,
                        s if s == libc::SIGRTMIN() + 5 => return PowerAction::Reboot,
                        _ => {}
                    }
                }
            }
        }
    }

    /// Stops the agent (SIGTERM, then SIGKILL after the grace period), then every other
    /// process, syncs and powers off or reboots. Never returns.
    pub fn shutdown(&mut self, action: PowerAction, grace: Duration) -> ! {
        if let Some((pid, _)) = self.agent {
            say!("stopping the agent");
            let _ = sys::kill(pid, libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while self.agent.is_some() && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                let ready = sys::poll_readable(&[self.signals.raw(), self.out_r.as_raw_fd()], Some(left))
                    .unwrap_or_default();
                if ready.get(1).copied().unwrap_or(false) {
                    self.forward_output();
                }
                while let Some(sig) = self.signals.read() {
                    if sig == libc::SIGCHLD {
                        self.reap_for_shutdown();
                    }
                }
            }
            if let Some((pid, _)) = self.agent {
                say!("agent did not stop within {grace:?}; killing it");
                let _ = sys::kill(pid, libc::SIGKILL);
            }
        }
        // Whatever is left (containers): TERM, a moment, KILL.
        let _ = sys::kill(-1, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match sys::reap_one() {
                Err(_) => break, // ECHILD: nothing left
                Ok(Some(_)) => continue,
                Ok(None) => {
                    let _ = sys::poll_readable(&[self.signals.raw()], Some(Duration::from_millis(50)));
                    while self.signals.read().is_some() {}
                }
            }
        }
        let _ = sys::kill(-1, libc::SIGKILL);
        sys::sync();
        say!(
            "{}",
            match action {
                PowerAction::PowerOff => "powering off",
                PowerAction::Reboot => "rebooting",
            }
        );
        let e = sys::reboot(action);
        // Only reached if reboot(2) failed: stay alive (a PID 1 exit panics the kernel).
        say!("reboot(2) failed: {e}; halting here");
        loop {
            let _ = sys::poll_readable(&[], Some(Duration::from_secs(3600)));
        }
    }

    fn reap_for_shutdown(&mut self) {
        while let Ok(Some((pid, _))) = sys::reap_one() {
            if self.agent.map(|(p, _)| p) == Some(pid) {
                self.agent = None;
            }
        }
    }
}

/// The input devices of ACPI power buttons (needs the `button` and `evdev` modules).
fn power_buttons() -> Vec<File> {
    let Ok(entries) = std::fs::read_dir("/sys/class/input") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("device/name")).is_ok_and(|n| n.trim() == "Power Button")
        })
        .filter_map(|e| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(std::path::Path::new("/dev/input").join(e.file_name()))
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_requests_name_their_token() {
        assert_eq!(
            kill_request(b"x\nkeel: selftest: kill the agent (t-1)\n").as_deref(),
            Some("t-1")
        );
        assert_eq!(kill_request(b"keel: selftest: kill the agent (t-1"), None);
        assert_eq!(kill_request(b"keel: connected to x"), None);
    }

    #[test]
    fn backoff_doubles_caps_and_resets_after_a_healthy_run() {
        let mut b = Backoff::default();
        let quick = Duration::from_secs(2);
        let delays: Vec<u64> = (0..9).map(|_| b.after_exit(quick).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.after_exit(HEALTHY_RUN).as_secs(), 1);
        assert_eq!(b.after_exit(quick).as_secs(), 2);
    }

    #[test]
    fn power_button_events() {
        fn event(ty: u16, code: u16, value: i32) -> Vec<u8> {
            let mut e = vec![0u8; 16];
            e.extend_from_slice(&ty.to_ne_bytes());
            e.extend_from_slice(&code.to_ne_bytes());
            e.extend_from_slice(&value.to_ne_bytes());
            e
        }
        let dir = tempfile_dir();
        let path = dir.join("events");
        let mut bytes = event(0, 0, 0); // EV_SYN
        bytes.extend(event(1, 116, 0)); // release only
        std::fs::write(&path, &bytes).unwrap();
        assert!(!Supervisor::power_button_pressed(&mut File::open(&path).unwrap()));
        bytes.extend(event(1, 116, 1)); // press
        std::fs::write(&path, &bytes).unwrap();
        assert!(Supervisor::power_button_pressed(&mut File::open(&path).unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-supervise-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
