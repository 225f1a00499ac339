//! PID 1: mounts, console, modules, entropy, network, hostname, clock; then it supervises the agent.

use std::process::ExitCode;

pub fn main() -> ExitCode {
    eprintln!("keel-node init: not built yet");
    ExitCode::FAILURE
}

pub fn modprobe_main(_names: &[String]) -> ExitCode {
    eprintln!("keel-node modprobe: not built yet");
    ExitCode::FAILURE
}
