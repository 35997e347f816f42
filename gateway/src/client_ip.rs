//! The client's address: the socket peer, unless that peer is a configured trusted proxy, in
//! which case the right-most `X-Forwarded-For` entry that is not itself trusted (RFC 7239 §5.2
//! reasoning: entries left of an untrusted hop can be forged). IPv4-mapped IPv6 addresses
//! (`::ffff:192.0.2.1`, what a dual-stack listener reports for IPv4 clients; RFC 4291 §2.5.5.2)
//! are taken as the IPv4 address they carry, so one client has one identity.

use std::net::IpAddr;

use http::HeaderMap;

/// An IP network (address + prefix length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

pub fn parse_net(s: &str) -> Option<Net> {
    let (ip, prefix) = match s.trim().split_once('/') {
        Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
        None => {
            let ip = s.trim().parse::<IpAddr>().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(Net { addr: ip, prefix })
}

impl Net {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Net>);

/// The networks of a `trusted_proxies` list. An entry may hold several, comma-separated, so
/// one environment variable can carry the whole list (`["${TRUSTED_PROXIES:-}"]`); empty
/// pieces are ignored.
pub fn entries(list: &[String]) -> impl Iterator<Item = &str> {
    list.iter()
        .flat_map(|e| e.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

impl TrustedProxies {
    /// The networks of `list` (entries that are not an IP or CIDR are skipped).
    pub fn new(list: &[String]) -> Self {
        Self(entries(list).filter_map(parse_net).collect())
    }

    /// The networks of `list`; else every piece that is not an IP address or CIDR, by the
    /// index of its entry.
    pub fn parse(list: &[String]) -> Result<Self, Vec<(usize, String)>> {
        let mut nets = Vec::new();
        let mut refused = Vec::new();
        for (i, entry) in list.iter().enumerate() {
            for piece in entries(std::slice::from_ref(entry)) {
                match parse_net(piece) {
                    Some(n) => nets.push(n),
                    None => refused.push((i, format!("{piece:?} is not an IP address or CIDR"))),
                }
            }
        }
        if refused.is_empty() {
            Ok(Self(nets))
        } else {
            Err(refused)
        }
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client IP for a request that arrived from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|h| h.trim().parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .collect();
        hops.into_iter()
            .rev()
            .find(|ip| !self.trusts(*ip))
            .unwrap_or(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn untrusted_peers_are_the_client() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into()]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        assert_eq!(t.client_ip(ip("203.0.113.9"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_hop() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into(), "::1".into()]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 198.51.100.7, 10.1.2.3"),
        );
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("198.51.100.7"));
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        assert!(parse_net("10.0.0.0/33").is_none());
        assert!(parse_net("nonsense").is_none());
        let list = vec!["10.0.0.0/8, 192.0.2.1".to_string(), String::new()];
        let t = TrustedProxies::new(&list);
        assert!(t.trusts("10.1.2.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(t.trusts("192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert_eq!(entries(&list).count(), 2);
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into()]);
        // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d: still trusted, and
        // forwarded entries in that form are the IPv4 client.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("::ffff:198.51.100.7"),
        );
        assert_eq!(t.client_ip(ip("::ffff:10.0.0.1"), &h), ip("198.51.100.7"));
        assert_eq!(
            t.client_ip(ip("::ffff:203.0.113.9"), &HeaderMap::new()),
            ip("203.0.113.9")
        );
    }
}
