//! `keel-lab`: the QEMU lab's command line.

fn main() {
    println!("keel-lab {}", env!("CARGO_PKG_VERSION"));
}
