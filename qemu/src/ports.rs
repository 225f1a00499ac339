//! Free loopback ports for a lab.
//!
//! Ports are taken from the kernel (bind to port 0) all at once, so one call never returns the
//! same port twice; the lab records them in its state file, which is how two labs on one
//! machine keep out of each other's way. The window between picking and the real bind is small;
//! the switch avoids it entirely by binding port 0 itself and reporting the port.

use std::net::{Ipv4Addr, TcpListener};

/// `n` distinct free TCP ports on 127.0.0.1.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_distinct_and_bindable() {
        let ports = super::free_ports(40).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 40);
        let l = std::net::TcpListener::bind(("127.0.0.1", ports[0])).unwrap();
        drop(l);
    }
}
