//! The node agent: joins the control plane, keeps the session, reports the node.

use std::process::ExitCode;

pub fn main(_args: &[String]) -> ExitCode {
    eprintln!("keel-node agent: not built yet");
    ExitCode::FAILURE
}
