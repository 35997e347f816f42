//! Credentials: password hashing, access-token signing and the JWKS, refresh-token material.

pub mod keys;
pub mod password;
pub mod refresh;
