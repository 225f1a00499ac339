//! The node binary: PID 1, node agent, container runtime, pod network, service proxy and DNS.
//!
//! One static (musl) executable with several entry points, chosen by the name it is called by
//! or by its first argument:
//!
//! * `/init` (PID 1): brings the system up and supervises the agent ([`init`]).
//! * `/sbin/modprobe` (called by the kernel to autoload modules) or `keel-node modprobe NAME…`.
//! * `keel-node agent`: the node agent, a child of PID 1 that it restarts if it dies ([`agent`]).
//! * `keel-node hollow --count N …`: N simulated nodes in one process for scale tests
//!   ([`agent::hollow`]).
//! * `keel-node container CONFIG`, `keel-node sandbox HOSTNAME` and `keel-node exec PID -- CMD`:
//!   the runtime's helpers, which the agent starts for each container, pod sandbox and command
//!   run in a container ([`runtime`]).
//! * `keel-node selfcheck pivot` and `keel-node guestinfo`: PID 1's helpers for what could
//!   crash or must not touch PID 1's own mount namespace (the pivot_root boot check, the VMware
//!   backdoor query).

mod agent;
mod config;
mod init;
mod net;
mod pods;
mod runtime;
mod streams;
mod sys;

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let called_as = argv0.rsplit('/').next().unwrap_or_default().to_string();
    let rest: Vec<String> = args.collect();

    // PID 1 is always init; the agent is started as `/init agent …`, so the subcommand decides
    // for every other process.
    if std::process::id() == 1 {
        return init::main();
    }
    if called_as == "modprobe" {
        return init::modprobe_main(&rest);
    }
    match rest.first().map(String::as_str) {
        Some("agent") => agent::main(&rest[1..]),
        Some("hollow") => agent::hollow::main(&rest[1..]),
        Some("container") => runtime::container::helper_main(&rest[1..]),
        Some("sandbox") => runtime::sandbox::helper_main(&rest[1..]),
        Some("exec") => runtime::exec::helper_main(&rest[1..]),
        Some("modprobe") => init::modprobe_main(&rest[1..]),
        Some("selfcheck") => init::selfcheck_main(&rest[1..]),
        Some("guestinfo") => init::guestinfo_main(),
        Some("init") => init::main(),
        _ => {
            eprintln!("usage: keel-node agent [--config FILE] | modprobe NAME… (as /init it is PID 1)");
            ExitCode::from(2)
        }
    }
}
