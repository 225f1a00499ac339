//! The QEMU lab library.
