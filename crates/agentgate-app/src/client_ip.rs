//! The client address behind trusted proxies (`server.trusted_proxies`).
//!
//! When the TCP peer is a trusted proxy, the client is the rightmost address of
//! `X-Forwarded-For` (several such headers read as one list, in order) that is not
//! itself trusted; when every address is trusted, or the scan from the right meets an
//! entry that is not a bare IP address before an untrusted one, it is the peer. From
//! any other peer `X-Forwarded-For` is ignored, and `Forwarded` is never read. The
//! accept loop puts the result in the request's `ConnectInfo`, so the per-IP limits
//! and the logs' `remote` see it; the TCP peer stays available as [`PeerAddr`].
//!
//! A forwarded address carries no port: it is shown with port 0.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

/// The TCP peer of a request, when `ConnectInfo` holds a forwarded client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// One CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| {
            format!(
                "{s:?} is not an IP address or CIDR block; write e.g. \"10.0.0.0/8\", \"127.0.0.1\" or \"fd00::/8\""
            )
        })?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be a number from 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `server.trusted_proxies`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Net>);

impl TrustedProxies {
    /// Parse the list; `Err` names the index of the bad entry and what is wrong.
    ///
    /// # Errors
    /// An entry that is not an IP address or CIDR block.
    pub fn parse(entries: &[String]) -> Result<Self, (usize, String)> {
        entries.iter().enumerate().map(|(i, e)| Net::parse(e).map_err(|m| (i, m))).collect::<Result<_, _>>().map(Self)
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client address of a request from `peer` with `headers`.
    pub fn client_addr(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if self.0.is_empty() || !self.contains(peer.ip()) {
            return peer;
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
            .map(str::trim)
            .collect();
        for entry in entries.iter().rev() {
            let Ok(ip) = entry.parse::<IpAddr>() else { return peer };
            if !self.contains(ip) {
                return SocketAddr::new(ip.to_canonical(), 0);
            }
        }
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_and_bare_addresses_parse_and_match() {
        let p = proxies(&["10.0.0.0/8", "127.0.0.1", "fd00::/8", "::1"]);
        assert!(p.contains("10.1.2.3".parse().unwrap()));
        assert!(p.contains("127.0.0.1".parse().unwrap()));
        assert!(!p.contains("127.0.0.2".parse().unwrap()));
        assert!(p.contains("fd12::1".parse().unwrap()));
        assert!(p.contains("::ffff:10.0.0.1".parse().unwrap()), "IPv4-mapped IPv6 peers count as IPv4");
        assert!(!p.contains("192.168.0.1".parse().unwrap()));
        assert!(proxies(&["0.0.0.0/0"]).contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129", ""] {
            let e = TrustedProxies::parse(&["127.0.0.1".into(), bad.into()]).unwrap_err();
            assert_eq!(e.0, 1, "{bad}");
        }
    }

    #[test]
    fn the_rightmost_untrusted_forwarded_address_is_the_client() {
        let p = proxies(&["10.0.0.0/8"]);
        let from_proxy = peer("10.0.0.5:4000");
        let c = p.client_addr(from_proxy, &headers(&["203.0.113.9, 198.51.100.7, 10.0.0.9"]));
        assert_eq!(c, peer("198.51.100.7:0"));
        // Several headers are one list, in order.
        let c = p.client_addr(from_proxy, &headers(&["203.0.113.9", "198.51.100.8"]));
        assert_eq!(c, peer("198.51.100.8:0"));
        // All trusted, none, or a non-IP entry: the peer.
        assert_eq!(p.client_addr(from_proxy, &headers(&["10.0.0.1"])), from_proxy);
        assert_eq!(p.client_addr(from_proxy, &headers(&[])), from_proxy);
        assert_eq!(p.client_addr(from_proxy, &headers(&["203.0.113.9, unknown"])), from_proxy);
        assert_eq!(p.client_addr(from_proxy, &headers(&["203.0.113.9:80"])), from_proxy);
        // An untrusted peer's header is ignored.
        let direct = peer("192.0.2.1:5000");
        assert_eq!(p.client_addr(direct, &headers(&["203.0.113.9"])), direct);
        assert_eq!(proxies(&[]).client_addr(from_proxy, &headers(&["203.0.113.9"])), from_proxy);
    }
}
