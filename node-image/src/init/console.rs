//! PID 1's console: timestamped lines on `/dev/console` and on every other active console.
//!
//! `/dev/console` is the LAST `console=` of the kernel command line (ttyS0 in the ISO's default
//! entry, so tests and serial logs see everything), but a VMware or bare-metal user looks at the
//! screen (tty0). PID 1 therefore mirrors its lines, and the agent's output it forwards, to all
//! consoles listed in `/sys/class/tty/console/active`. Each line starts with the time since the
//! kernel started, matching the kernel's own log: `[  1.234] keel: modules loaded (41)`.
//!
//! Boot phases are also recorded, so the agent can report them in the Node's events.

use crate::config::BootPhase;
use crate::sys;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

struct State {
    mirrors: Vec<File>,
    phases: Vec<BootPhase>,
}

static STATE: Mutex<State> = Mutex::new(State {
    mirrors: Vec::new(),
    phases: Vec::new(),
});

fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard = match STATE.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    f(&mut guard)
}

/// Writes raw bytes to the console and its mirrors (used for the agent's output).
pub fn write_raw(bytes: &[u8]) {
    let _ = std::io::stderr().write_all(bytes);
    with_state(|s| {
        for m in &mut s.mirrors {
            let _ = m.write_all(bytes);
        }
    });
}

/// The `[  1.234]` prefix.
pub fn stamp() -> String {
    let t = sys::since_boot();
    format!("[{:4}.{:03}]", t.as_secs(), t.subsec_millis())
}

/// Prints one `keel:` line.
pub fn say(msg: &str) {
    let mut line = String::with_capacity(msg.len() + 24);
    for (i, l) in msg.lines().enumerate() {
        if i == 0 {
            line.push_str(&format!("{} keel: {l}\n", stamp()));
        } else {
            line.push_str(&format!("{}       {l}\n", " ".repeat(11)));
        }
    }
    write_raw(line.as_bytes());
}

/// Prints a boot phase and records it.
pub fn phase(name: &str, msg: &str) {
    let at = sys::since_boot().as_secs_f64();
    with_state(|s| {
        s.phases.push(BootPhase {
            name: name.to_string(),
            at: (at * 1000.0).round() / 1000.0,
        })
    });
    say(msg);
}

/// The phases recorded so far.
pub fn phases() -> Vec<BootPhase> {
    with_state(|s| s.phases.clone())
}

#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::init::console::say(&format!($($arg)*)) };
}

/// Opens `/dev/console` as fds 0, 1 and 2.
pub fn open_console() -> std::io::Result<()> {
    let console = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_noctty()
        .open("/dev/console")?;
    for fd in 0..3 {
        sys::dup2(console.as_raw_fd(), fd)?;
    }
    Ok(())
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOCTTY)
    }
}

/// Opens the active consoles other than the one behind `/dev/console` as mirrors.
pub fn open_mirrors() {
    let Ok(active) = std::fs::read_to_string("/sys/class/tty/console/active") else {
        return;
    };
    let main = File::open("/dev/console")
        .ok()
        .and_then(|f| sys::tty_device(&f).ok());
    let mut mirrors = Vec::new();
    for name in active.split_whitespace() {
        let path = format!("/dev/{name}");
        let Ok(f) = OpenOptions::new().write(true).custom_flags_noctty().open(&path) else {
            continue;
        };
        let rdev = {
            use std::os::unix::fs::MetadataExt;
            f.metadata().map(|m| m.rdev()).ok()
        };
        if rdev.is_some() && rdev == main {
            continue;
        }
        mirrors.push(f);
    }
    with_state(|s| s.mirrors = mirrors);
}
