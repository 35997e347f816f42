//! The rustls patch of `vendor/README.md` (2): a TLS connection with nothing buffered gives its
//! receive buffer back when its socket has nothing to read, takes none to find the socket empty,
//! and takes one (of the size of what came) again when data comes.
//! Measured with a counting allocator (this test binary's own), so the test sees what an idle
//! connection holds rather than how fast anything is.

#![allow(clippy::expect_used)]

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, RootCertStore, ServerConfig, ServerConnection,
};

/// dhat's allocator counts the bytes live at any moment (its heap-usage testing mode).
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Bytes allocated and not yet freed, by every thread of this process.
fn live() -> usize {
    dhat::HeapStats::get().curr_bytes
}

/// A socket with nothing to read yet.
struct Idle;

impl Read for Idle {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// Moves what `from` has to send into `to`, as the network would, and lets `to` process it;
/// returns how many bytes went over the wire.
fn transfer<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>) -> usize {
    let mut wire = Vec::new();
    while from.write_tls(&mut wire).expect("writes records") > 0 {}
    let mut rest = &wire[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).expect("reads records");
    }
    to.process_new_packets().expect("valid records");
    wire.len()
}

#[test]
fn an_idle_tls_connection_holds_no_receive_buffer() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let cert_der: CertificateDer<'static> = cert.der().clone();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let server_config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .expect("server config");
    let mut roots = RootCertStore::empty();
    roots.add(cert_der).expect("root");
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut server = ServerConnection::new(Arc::new(server_config)).expect("server");
    let mut client = ClientConnection::new(
        Arc::new(client_config),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("client");

    // The handshake, record by record over an in-memory "network".
    for _ in 0..10 {
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        transfer(&mut client, &mut server);
        transfer(&mut server, &mut client);
    }
    assert!(!server.is_handshaking(), "handshake complete");

    // A request arrives and is read whole.
    client
        .writer()
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("request");
    let record = transfer(&mut client, &mut server);
    let mut request = [0u8; 64];
    let n = server.reader().read(&mut request).expect("plaintext");
    assert!(request[..n].starts_with(b"GET / "));

    // Nothing more on the socket: the connection is idle, and its receive buffer (which held at
    // least the request's record; 4 KiB without the patch, and then kept) goes.
    let before = live();
    let idle = server.read_tls(&mut Idle);
    let after = live();
    assert_eq!(idle.map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
    assert!(
        before.saturating_sub(after) >= record,
        "the receive buffer ({record}-byte record) was released: {before} -> {after} bytes live"
    );
    // And finding the socket empty again allocates nothing (an async reader is polled several
    // times per request, most of them finding nothing).
    let allocations = dhat::HeapStats::get().total_blocks;
    let again = server.read_tls(&mut Idle);
    assert_eq!(again.map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
    assert_eq!(
        dhat::HeapStats::get().total_blocks,
        allocations,
        "an idle read allocates nothing"
    );

    // The next request finds a buffer again and is read as before.
    client
        .writer()
        .write_all(b"GET /next HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("request");
    transfer(&mut client, &mut server);
    let n = server.reader().read(&mut request).expect("plaintext");
    assert!(request[..n].starts_with(b"GET /next "));
}
