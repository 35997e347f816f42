//! Who is on the other end of a request, for throttling: the socket peer, or, when the peer is
//! a trusted proxy (the gateway), the right-most `X-Forwarded-For` entry that is not itself a
//! trusted proxy (entries further left can be forged by the client). The result is a
//! [`ClientKey`]: an IPv4 address, or the /64 of an IPv6 address, because one IPv6 subscriber
//! is routinely given a whole /64 and could otherwise walk around every per-client limit.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The socket peer of a request, put into its extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses entries that are IPs or CIDRs; an entry may hold several, comma-separated, so
    /// one environment variable can carry the list. Returns the first bad piece on error.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut nets = Vec::new();
        for piece in entries
            .iter()
            .flat_map(|e| e.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let net = piece
                .parse::<IpNet>()
                .or_else(|_| piece.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{piece:?} is not an IP address or CIDR"))?;
            nets.push(net);
        }
        Ok(Self(nets))
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// The throttling identity of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/64"),
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack socket reports) is IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V6(v6) => {
                let net = u128::from(v6) & (u128::MAX << 64);
                Self(IpAddr::V6(Ipv6Addr::from(net)))
            }
            v4 => Self(v4),
        }
    }
}

/// The client of a request from `peer` with these headers.
pub fn client_key(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> ClientKey {
    let Some(peer) = peer else {
        return ClientKey::of(IpAddr::from([0, 0, 0, 0]));
    };
    let mut ip = peer.ip();
    if trusted.contains(ip) {
        // Walk the chain from the right: each hop was appended by the one after it.
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(hop_ip) => {
                    ip = hop_ip;
                    if !trusted.contains(hop_ip) {
                        break;
                    }
                }
                // Garbage: nothing to its left can be believed; the last good hop stands.
                Err(_) => break,
            }
        }
    }
    ClientKey::of(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted() -> TrustedProxies {
        TrustedProxies::parse(&["127.0.0.1/32, ::1".into(), "10.0.0.0/8".into()])
            .unwrap_or_default()
    }

    fn key(peer: &str, xff: Option<&str>) -> String {
        let mut h = HeaderMap::new();
        if let Some(x) = xff {
            h.insert(
                "x-forwarded-for",
                HeaderValue::from_str(x).unwrap_or(HeaderValue::from_static("")),
            );
        }
        client_key(peer.parse().ok(), &h, &trusted()).to_string()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        assert_eq!(key("127.0.0.1:5", Some("203.0.113.7")), "203.0.113.7");
        assert_eq!(key("198.51.100.1:5", Some("203.0.113.7")), "198.51.100.1");
        // Left of an untrusted hop is the client's own claim.
        assert_eq!(
            key("127.0.0.1:5", Some("1.1.1.1, 203.0.113.7, 10.1.2.3")),
            "203.0.113.7"
        );
        assert_eq!(key("127.0.0.1:5", Some("nonsense")), "127.0.0.1");
        assert_eq!(key("127.0.0.1:5", None), "127.0.0.1");
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(
            key("127.0.0.1:5", Some("2001:db8:1:2:aaaa::1")),
            key("127.0.0.1:5", Some("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            key("127.0.0.1:5", Some("2001:db8:1:2::1")),
            key("127.0.0.1:5", Some("2001:db8:1:3::1"))
        );
        assert_eq!(key("[::ffff:203.0.113.7]:5", None), "203.0.113.7");
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
    }
}
