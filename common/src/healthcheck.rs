//! The container HEALTHCHECK probe both binaries run against themselves (the runtime images
//! have no shell or curl): `GET /healthz` over plain HTTP/1.1 on loopback must answer 200.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub fn probe(addr: SocketAddr) -> Result<(), String> {
    let run = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200"))
    };
    match run() {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("GET http://{addr}/healthz did not answer 200")),
        Err(e) => Err(format!("GET http://{addr}/healthz: {e}")),
    }
}
