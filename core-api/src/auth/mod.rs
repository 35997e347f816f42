//! Credentials: password hashing, access-token signing and the JWKS, refresh-token families,
//! login throttling.

pub mod keys;
pub mod password;
pub mod refresh;
pub mod throttle;
