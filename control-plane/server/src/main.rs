//! `keel-server`: the whole control plane in one process.

fn main() {
    println!("keel-server {}", env!("CARGO_PKG_VERSION"));
}
