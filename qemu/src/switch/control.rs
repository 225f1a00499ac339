//! The switch's control protocol: one command per line over a Unix socket, one answer line per
//! command (`ok`, `ok <json>` or `err <message>`).
//!
//! ```text
//! cut <target>            drop every frame to and from the target
//! heal <target>           remove every fault on the target (`heal all`: on everything)
//! loss <target> <pct>     drop that percentage of frames to and from the target (0 removes)
//! delay <target> <ms>     hold frames to and from the target that long (0 removes)
//! name <name> <mac>       let <name> stand for <mac> in later commands
//! status                  ports, learned addresses, counters and faults, as JSON
//! ```
//!
//! A target is `all`, `port:<n>`, a MAC address, or a name given with `name` (or the switch's
//! `--node NAME=MAC`). Faults on a MAC follow the node across reconnects (a restarted QEMU gets a
//! new port but keeps its MAC), which is why the lab cuts nodes by MAC.
//!
//! A line protocol keeps `socat`/`nc -U` usable by hand, and the client here is twenty lines.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use super::frame::MacAddr;

/// What a command acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every port.
    All,
    /// One connection, by the number the switch gave it (see `status`).
    Port(u64),
    /// Whatever port carries this source address, now or after a reconnect.
    Mac(MacAddr),
    /// A name registered with `name` or `--node`; resolved to its MAC when the command runs.
    Name(String),
}

impl FromStr for Target {
    type Err = ControlError;
    fn from_str(s: &str) -> Result<Self, ControlError> {
        if s == "all" {
            return Ok(Target::All);
        }
        if let Some(n) = s.strip_prefix("port:") {
            return n
                .parse()
                .map(Target::Port)
                .map_err(|_| ControlError::Syntax(format!("bad port number in {s:?}")));
        }
        if let Ok(mac) = s.parse::<MacAddr>() {
            return Ok(Target::Mac(mac));
        }
        let valid_name = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if valid_name {
            Ok(Target::Name(s.to_owned()))
        } else {
            Err(ControlError::Syntax(format!("not a target: {s:?}")))
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("all"),
            Target::Port(n) => write!(f, "port:{n}"),
            Target::Mac(m) => write!(f, "{m}"),
            Target::Name(n) => f.write_str(n),
        }
    }
}

/// One request to the switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Cut(Target),
    Heal(Target),
    /// Loss in whole percent, 0..=100.
    Loss(Target, u8),
    Delay(Target, Duration),
    Name(String, MacAddr),
    Status,
}

impl FromStr for Command {
    type Err = ControlError;
    fn from_str(line: &str) -> Result<Self, ControlError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let syntax = || {
            ControlError::Syntax(format!("cannot parse {line:?}; try: cut|heal <target>, loss <target> <percent>, delay <target> <ms>, name <name> <mac>, status"))
        };
        match words.as_slice() {
            ["cut", t] => Ok(Command::Cut(t.parse()?)),
            ["heal", t] => Ok(Command::Heal(t.parse()?)),
            ["loss", t, pct] => {
                let pct: u8 = pct.trim_end_matches('%').parse().map_err(|_| syntax())?;
                if pct > 100 {
                    return Err(ControlError::Syntax(format!("loss {pct}% is over 100%")));
                }
                Ok(Command::Loss(t.parse()?, pct))
            }
            ["delay", t, ms] => {
                let ms: u64 = ms.trim_end_matches("ms").parse().map_err(|_| syntax())?;
                Ok(Command::Delay(t.parse()?, Duration::from_millis(ms)))
            }
            ["name", name, mac] => match name.parse::<Target>()? {
                Target::Name(n) => Ok(Command::Name(
                    n,
                    mac.parse()
                        .map_err(|e: super::frame::BadMac| ControlError::Syntax(e.to_string()))?,
                )),
                _ => Err(ControlError::Syntax(format!("{name:?} cannot be a name"))),
            },
            ["status"] => Ok(Command::Status),
            _ => Err(syntax()),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Cut(t) => write!(f, "cut {t}"),
            Command::Heal(t) => write!(f, "heal {t}"),
            Command::Loss(t, p) => write!(f, "loss {t} {p}"),
            Command::Delay(t, d) => write!(f, "delay {t} {}", d.as_millis()),
            Command::Name(n, m) => write!(f, "name {n} {m}"),
            Command::Status => f.write_str("status"),
        }
    }
}

/// Errors of the control protocol, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Syntax(String),
    #[error("unknown name {0:?} (register it with `name <name> <mac>`)")]
    UnknownName(String),
    #[error("switch control socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("switch refused {command:?}: {message}")]
    Refused { command: String, message: String },
    #[error("switch closed the control connection without answering {0:?}")]
    NoAnswer(String),
}

/// Sends one command to the switch listening on `socket` and returns the answer's payload
/// (empty for a plain `ok`, JSON for `status`).
pub fn send(socket: &Path, command: &Command) -> Result<String, ControlError> {
    let io = |source| ControlError::Io {
        path: socket.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let line = command.to_string();
    stream.write_all(format!("{line}\n").as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    let answer = answer.trim_end();
    if answer == "ok" {
        Ok(String::new())
    } else if let Some(payload) = answer.strip_prefix("ok ") {
        Ok(payload.to_owned())
    } else if let Some(message) = answer.strip_prefix("err ") {
        Err(ControlError::Refused {
            command: line,
            message: message.to_owned(),
        })
    } else {
        Err(ControlError::NoAnswer(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_text() {
        let mac: MacAddr = "52:54:00:aa:00:02".parse().unwrap();
        let cases = [
            Command::Cut(Target::Name("keel-2".into())),
            Command::Heal(Target::All),
            Command::Loss(Target::Mac(mac), 30),
            Command::Delay(Target::Port(4), Duration::from_millis(150)),
            Command::Name("keel-2".into(), mac),
            Command::Status,
        ];
        for c in cases {
            assert_eq!(c.to_string().parse::<Command>().unwrap(), c);
        }
    }

    #[test]
    fn bad_commands_are_refused_with_a_reason() {
        for bad in [
            "",
            "cut",
            "loss keel-2 101",
            "loss keel-2 x",
            "delay all soon",
            "name all 52:54:00:aa:00:01",
            "cut a/b",
            "explode all",
        ] {
            assert!(bad.parse::<Command>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            "loss all 5%".parse::<Command>().unwrap(),
            Command::Loss(Target::All, 5)
        );
    }
}
