//! The control-plane side of the node protocol.
