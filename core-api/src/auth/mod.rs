//! Credentials: password hashing, access-token signing and the JWKS, refresh-token families,
//! login throttling, the refresh-token cookie.

pub mod cookie;
pub mod keys;
pub mod password;
pub mod refresh;
pub mod throttle;
