//! Authentication of VPN users by credentials other than client certificates.

pub mod token;
