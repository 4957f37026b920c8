//! The connection gate: whether an accepted connection may stay, decided
//! before it costs a buffer, a read or a TLS handshake.
//!
//! Counts are shared by every listener and survive reloads (the gate
//! belongs to the gateway, the limits to the config of the moment). The
//! per-address table holds only addresses with a connection open, so its
//! size is bounded by `max_connections` whoever connects.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use levee_core::sync::lock;

use super::settings::ListenerPolicy;

const SHARDS: usize = 16;

/// Why a connection was turned away: a closed set, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Refusal {
    /// The listener's `deny` list, or not in its `allow` list.
    Denied = 0,
    /// `server.max_connections`.
    Total = 1,
    /// `server.max_connections_per_ip`.
    PerIp = 2,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Refusal::Denied, Refusal::Total, Refusal::PerIp];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Denied => "denied",
            Refusal::Total => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

pub(crate) struct Gate {
    open: AtomicUsize,
    per_ip: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            open: AtomicUsize::new(0),
            per_ip: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
}

impl Gate {
    /// Admits a connection from `ip`, or says why not: its access lists,
    /// then the caps. The pass gives the places back when dropped.
    pub fn admit(&self, ip: IpAddr, policy: &ListenerPolicy) -> Result<Pass<'_>, Refusal> {
        if !policy.access.permits(ip) {
            return Err(Refusal::Denied);
        }
        let mut pass = self.enter(policy)?;
        // A trusted proxy carries many clients: capping its address as one
        // client would cap them all together.
        if !policy.trusted.contains(ip) {
            pass.attribute(ip, policy)?;
        }
        Ok(pass)
    }

    /// Takes a place under the total cap only, for a connection whose
    /// client is not known yet (a PROXY protocol header will say): the
    /// balancer's own address must not be capped as one client.
    pub fn enter(&self, policy: &ListenerPolicy) -> Result<Pass<'_>, Refusal> {
        // Taken first and given back on refusal: two racing accepts can
        // never both see room for one.
        if self.open.fetch_add(1, Ordering::AcqRel) >= policy.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        Ok(Pass { gate: self, ip: None })
    }

    /// Counts the place against its client's address. On refusal the
    /// place is still held (the caller drops the pass).
    fn take_ip(&self, ip: IpAddr, policy: &ListenerPolicy) -> Result<(), Refusal> {
        let mut shard = self.shard(ip);
        let n = shard.entry(ip).or_insert(0);
        if *n as usize >= policy.max_connections_per_ip {
            if *n == 0 {
                shard.remove(&ip);
            }
            return Err(Refusal::PerIp);
        }
        *n += 1;
        Ok(())
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        let i = match ip {
            IpAddr::V4(v4) => u32::from(v4) as usize,
            IpAddr::V6(v6) => (u128::from(v6) ^ (u128::from(v6) >> 64)) as usize,
        };
        lock(&self.per_ip[i % SHARDS])
    }

    fn release(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            let mut shard = self.shard(ip);
            if let Some(n) = shard.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    shard.remove(&ip);
                }
            }
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's place in the gate.
#[must_use]
pub(crate) struct Pass<'a> {
    gate: &'a Gate,
    /// The address its place is counted against, once known.
    ip: Option<IpAddr>,
}

impl Pass<'_> {
    /// Names the connection's client: the per-address cap applies from now.
    pub fn attribute(&mut self, ip: IpAddr, policy: &ListenerPolicy) -> Result<(), Refusal> {
        let ip = ip.to_canonical();
        if self.ip.is_none() {
            self.gate.take_ip(ip, policy)?;
            self.ip = Some(ip);
        }
        Ok(())
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.gate.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_core::access::{Access, CidrSet};

    fn policy(total: usize, per_ip: usize, deny: &[&str]) -> ListenerPolicy {
        let mut p = ListenerPolicy::for_tests();
        p.max_connections = total;
        p.max_connections_per_ip = per_ip;
        p.access = Access {
            allow: CidrSet::default(),
            deny: CidrSet::new(deny.iter().map(|d| d.parse().expect("cidr")).collect()),
        };
        p
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn caps_hold_and_places_come_back() {
        let gate = Gate::default();
        let p = policy(3, 2, &[]);
        let a1 = gate.admit(ip("127.0.0.1"), &p).expect("first");
        let a2 = gate.admit(ip("127.0.0.1"), &p).expect("second");
        assert_eq!(gate.admit(ip("127.0.0.1"), &p).err(), Some(Refusal::PerIp));
        let b1 = gate.admit(ip("127.0.0.2"), &p).expect("other address");
        assert_eq!(gate.admit(ip("127.0.0.3"), &p).err(), Some(Refusal::Total));
        // A connection whose client is not known yet holds a place in all,
        // and its client's cap applies once it is named.
        drop(b1);
        let mut later = gate.enter(&p).expect("room in all");
        assert_eq!(later.attribute(ip("127.0.0.1"), &p).err(), Some(Refusal::PerIp));
        drop(later);
        let b1 = gate.admit(ip("127.0.0.2"), &p).expect("the place came back");
        assert_eq!(gate.open(), 3);
        drop(a1);
        // An IPv4-mapped address is the same client.
        let a3 = gate.admit(ip("::ffff:127.0.0.1"), &p).expect("a place came back");
        drop((a2, a3, b1));
        assert_eq!(gate.open(), 0);
        assert!(gate.per_ip.iter().all(|s| s.lock().expect("lock").is_empty()));
    }

    #[test]
    fn denied_addresses_take_no_place() {
        let gate = Gate::default();
        let p = policy(10, 10, &["127.0.0.10"]);
        assert_eq!(gate.admit(ip("127.0.0.10"), &p).err(), Some(Refusal::Denied));
        assert_eq!(gate.open(), 0);
        let _ok = gate.admit(ip("127.0.0.11"), &p).expect("allowed");
    }
}
