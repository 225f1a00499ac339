//! The node binary: PID 1, node agent, container runtime, pod network, service proxy and DNS.

fn main() {
    println!("keel-node {}", env!("CARGO_PKG_VERSION"));
}
