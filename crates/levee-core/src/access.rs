//! Who the client is, and whether it may come in.
//!
//! [`Cidr`] lists decide access (`allow`/`deny` on listeners and routes) and
//! which peers are trusted to say who the client is. The client address is
//! the peer's unless the peer is a trusted proxy; then [`client_from_chain`]
//! walks the forwarding chain from the nearest hop outwards and takes the
//! first address that is not itself trusted. Taking the leftmost entry
//! instead, as some proxies do, would let any client choose its own address
//! (and so its own rate-limit key) by sending an `X-Forwarded-For` of its
//! own: the chain is only as good as the hops levee trusts.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("not an IP address or CIDR block")]
    Syntax,
    #[error("prefix length {0} is longer than the address")]
    Prefix(u8),
    #[error("host bits are set: did you mean {0}?")]
    HostBits(String),
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client reaching a dual-stack socket appears as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask32(self.prefix);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask128(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Strict: the network address must have no host bits set, so that a
    /// typo such as `10.1.2.3/8` is reported rather than silently widened.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                let p: u8 = p
                    .parse()
                    .ok()
                    .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or(CidrError::Syntax)?;
                (a, Some(p))
            }
            None => (s, None),
        };
        let network = IpAddr::from_str(addr)
            .map_err(|_| CidrError::Syntax)?
            .to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(CidrError::Prefix(prefix));
        }
        let cidr = Cidr { network, prefix };
        let masked = match network {
            IpAddr::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n) & mask32(prefix))),
            IpAddr::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n) & mask128(prefix))),
        };
        if masked != network {
            return Err(CidrError::HostBits(format!("{masked}/{prefix}")));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// A set of blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrSet(Vec<Cidr>);

impl CidrSet {
    pub fn new(blocks: Vec<Cidr>) -> CidrSet {
        CidrSet(blocks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    pub fn blocks(&self) -> &[Cidr] {
        &self.0
    }
}

/// `allow` and `deny` lists. Deny wins; an empty allow list allows all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub allow: CidrSet,
    pub deny: CidrSet,
}

impl Access {
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }
}

/// The client behind a trusted `peer`, from the forwarding chain's
/// addresses in the order they were appended (leftmost first, as in
/// `X-Forwarded-For: client, proxy1, proxy2`).
///
/// Walks from the right: each trusted hop vouches for the one before it.
/// The first untrusted address is the client. An entry that is not an
/// address (`unknown`, an obfuscated `Forwarded` node, garbage) stops the
/// walk at the last address vouched for, because nothing beyond it can be
/// believed. With every hop trusted, the leftmost address is the client.
pub fn client_from_chain<'a>(
    peer: IpAddr,
    chain: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &CidrSet,
) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trusted.contains(client) {
        return client;
    }
    for hop in chain.rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !trusted.contains(ip) {
            return ip;
        }
    }
    client
}

/// One chain entry: an `X-Forwarded-For` address, or a `Forwarded` `for=`
/// value (possibly quoted, bracketed for IPv6, with a port).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let inner = rest.split(']').next()?;
        return inner
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    // IPv4 with a port.
    let (addr, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The `for=` values of `Forwarded` field values, in order.
pub fn forwarded_for<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out = Vec::new();
    for value in values {
        for element in value.split(',') {
            let found = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
            });
            // An element without `for=` is a hop that did not say: it
            // must still break the chain rather than be skipped.
            out.push(found.unwrap_or(""));
        }
    }
    out
}

/// The addresses of `X-Forwarded-For` field values, in order.
pub fn x_forwarded_for<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    values.flat_map(|v| v.split(',')).map(str::trim).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn set(blocks: &[&str]) -> CidrSet {
        CidrSet::new(blocks.iter().map(|b| cidr(b)).collect())
    }

    #[test]
    fn blocks_contain_their_addresses() {
        assert!(cidr("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!cidr("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(cidr("127.0.0.10").contains(ip("127.0.0.10")));
        assert!(!cidr("127.0.0.10").contains(ip("127.0.0.11")));
        assert!(cidr("2001:db8::/32").contains(ip("2001:db8:1::5")));
        assert!(!cidr("2001:db8::/32").contains(ip("10.0.0.1")));
        // A v4 client on a dual-stack socket.
        assert!(cidr("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(cidr("::/0").contains(ip("::1")));
    }

    #[test]
    fn bad_blocks_are_explained() {
        assert_eq!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::Prefix(33)));
        assert_eq!("10.0.0.0/x".parse::<Cidr>(), Err(CidrError::Syntax));
        assert_eq!("10.0.0.0/+8".parse::<Cidr>(), Err(CidrError::Syntax));
        assert_eq!("example.com".parse::<Cidr>(), Err(CidrError::Syntax));
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>(),
            Err(CidrError::HostBits("10.0.0.0/8".into()))
        );
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn deny_wins_and_empty_allow_allows_all() {
        let open = Access::default();
        assert!(open.is_open() && open.permits(ip("1.2.3.4")));
        let a = Access {
            allow: set(&["10.0.0.0/8"]),
            deny: set(&["10.9.0.0/16"]),
        };
        assert!(a.permits(ip("10.1.1.1")));
        assert!(!a.permits(ip("10.9.1.1")));
        assert!(!a.permits(ip("192.168.1.1")));
        let deny_only = Access {
            allow: CidrSet::default(),
            deny: set(&["127.0.0.10"]),
        };
        assert!(!deny_only.permits(ip("127.0.0.10")));
        assert!(deny_only.permits(ip("127.0.0.11")));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = set(&["10.0.0.0/8"]);
        let chain = x_forwarded_for(["1.1.1.1"].into_iter());
        assert_eq!(
            client_from_chain(ip("203.0.113.5"), chain.into_iter(), &trusted),
            ip("203.0.113.5")
        );
        // Nothing is trusted by default.
        let chain = x_forwarded_for(["1.1.1.1"].into_iter());
        assert_eq!(
            client_from_chain(ip("10.0.0.1"), chain.into_iter(), &CidrSet::default()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_walk_stops_at_the_first_untrusted_hop() {
        let trusted = set(&["10.0.0.0/8"]);
        // The client forged the leftmost entry; the trusted proxy appended
        // the real address.
        let chain = x_forwarded_for(["6.6.6.6, 198.51.100.7", "10.0.0.2"].into_iter());
        assert_eq!(
            client_from_chain(ip("10.0.0.1"), chain.into_iter(), &trusted),
            ip("198.51.100.7")
        );
        // Every hop trusted: the leftmost is the client.
        let chain = x_forwarded_for(["10.1.1.1, 10.0.0.2"].into_iter());
        assert_eq!(
            client_from_chain(ip("10.0.0.1"), chain.into_iter(), &trusted),
            ip("10.1.1.1")
        );
        // Garbage stops the walk at the last vouched-for hop.
        let chain = x_forwarded_for(["1.2.3.4, unknown, 10.0.0.3"].into_iter());
        assert_eq!(
            client_from_chain(ip("10.0.0.1"), chain.into_iter(), &trusted),
            ip("10.0.0.3")
        );
        // No chain at all: the trusted peer itself.
        assert_eq!(
            client_from_chain(ip("10.0.0.1"), std::iter::empty(), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarded_for_values_are_read() {
        let trusted = set(&["10.0.0.0/8"]);
        let values = [r#"for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711""#];
        let chain = forwarded_for(values.into_iter());
        assert_eq!(chain, vec!["192.0.2.60", r#""[2001:db8:cafe::17]:4711""#]);
        assert_eq!(
            client_from_chain(ip("10.0.0.1"), chain.into_iter(), &trusted),
            ip("2001:db8:cafe::17")
        );
        let chain = forwarded_for(["for=192.0.2.60:8080"].into_iter());
        assert_eq!(
            client_from_chain(ip("10.0.0.1"), chain.into_iter(), &trusted),
            ip("192.0.2.60")
        );
        // An element without for= breaks the chain.
        let chain = forwarded_for(["for=192.0.2.60, proto=https"].into_iter());
        assert_eq!(
            client_from_chain(ip("10.0.0.1"), chain.into_iter(), &trusted),
            ip("10.0.0.1")
        );
        let chain = forwarded_for([r#"for="_hidden""#].into_iter());
        assert_eq!(
            client_from_chain(ip("10.0.0.1"), chain.into_iter(), &trusted),
            ip("10.0.0.1")
        );
    }
}
