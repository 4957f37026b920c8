//! The PROXY protocol version 2 header (haproxy.org, `proxy-protocol.txt`):
//! the binary preamble an L4 balancer sends to say whose connection it is
//! passing on. Only version 2 is read: it is unambiguous to parse, and the
//! text version 1 would need a second, lenient parser in the front door.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family, length.
const FIXED: usize = 16;
/// Headers carry TLVs (TLS details, unique ids); anything larger than this
/// is not from a balancer worth believing.
pub(crate) const MAX_HEADER: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A complete header of `len` bytes. `source` is the original client,
    /// or `None` for a `LOCAL` connection (the balancer's own health check)
    /// or an address family levee does not map (UNIX sockets).
    Header { len: usize, source: Option<SocketAddr> },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Invalid {
    #[error("no PROXY protocol v2 signature")]
    Signature,
    #[error("unsupported PROXY protocol version or command")]
    Version,
    #[error("PROXY protocol header too long")]
    TooLong,
    #[error("PROXY protocol addresses do not fit the header")]
    Truncated,
}

/// Reads a header from the start of `buf`.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, Invalid> {
    let sig = buf.len().min(SIGNATURE.len());
    if buf[..sig] != SIGNATURE[..sig] {
        return Err(Invalid::Signature);
    }
    if buf.len() < FIXED {
        return Ok(Parsed::Partial);
    }
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0f;
    if version != 2 || command > 1 {
        return Err(Invalid::Version);
    }
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = FIXED + body;
    if len > MAX_HEADER {
        return Err(Invalid::TooLong);
    }
    if buf.len() < len {
        return Ok(Parsed::Partial);
    }
    if command == 0 {
        return Ok(Parsed::Header { len, source: None });
    }
    let addr = &buf[FIXED..len];
    let source = match buf[13] >> 4 {
        // AF_INET: source, destination, source port, destination port.
        1 => {
            let a = addr.get(..12).ok_or(Invalid::Truncated)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]])))
        }
        // AF_INET6.
        2 => {
            let a = addr.get(..36).ok_or(Invalid::Truncated)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // AF_UNSPEC, AF_UNIX: nothing levee can key on.
        _ => None,
    };
    Ok(Parsed::Header { len, source })
}

/// Encodes a `PROXY` header for a TCP connection from `source` to
/// `destination` (both of one family). Used by tests and the chaos tools.
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21);
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn round_trips_both_families() {
        let h = encode(addr("203.0.113.7:40000"), addr("127.0.0.1:8080"));
        assert_eq!(
            parse(&h),
            Ok(Parsed::Header {
                len: 28,
                source: Some(addr("203.0.113.7:40000"))
            })
        );
        let h = encode(addr("[2001:db8::1]:5"), addr("[::1]:8080"));
        assert_eq!(
            parse(&h),
            Ok(Parsed::Header {
                len: 52,
                source: Some(addr("[2001:db8::1]:5"))
            })
        );
    }

    #[test]
    fn every_prefix_is_partial_and_trailing_bytes_are_left() {
        let mut h = encode(addr("203.0.113.7:40000"), addr("127.0.0.1:8080"));
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Ok(Parsed::Partial), "prefix of {n}");
        }
        h.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert!(matches!(parse(&h), Ok(Parsed::Header { len: 28, .. })));
    }

    #[test]
    fn local_and_unknown_families_carry_no_source() {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&h),
            Ok(Parsed::Header {
                len: 16,
                source: None
            })
        );
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x31, 0, 4, 1, 2, 3, 4]);
        assert_eq!(
            parse(&h),
            Ok(Parsed::Header {
                len: 20,
                source: None
            })
        );
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Invalid::Signature));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Err(Invalid::Signature));
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x11, 0x11, 0, 12]);
        assert_eq!(parse(&h), Err(Invalid::Version));
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&h), Err(Invalid::TooLong));
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(parse(&h), Err(Invalid::Truncated));
    }
}
