//! Address and MAC allocation: pure choices over what is taken. The store makes them stick:
//! each taken address and MAC is a key of its own, created with the VM in one transaction, so
//! that two creates racing for one address cannot both get it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use triad_api::net::{Mac, L3};

/// Whether `ip` may be given to a VM on a network with `l3`.
pub fn assignable(l3: &L3, ip: Ipv4Addr) -> bool {
    let in_ranges = l3.ranges.is_empty()
        || l3
            .ranges
            .iter()
            .any(|r| (u32::from(r.start)..=u32::from(r.end)).contains(&u32::from(ip)));
    l3.cidr.is_host(ip) && Some(ip) != l3.gateway && ip != l3.dhcp_server() && in_ranges
}

/// The first address of the ranges (the whole network when none is given) that no VM has.
pub fn allocate(l3: &L3, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let spans: Vec<(u32, u32)> = if l3.ranges.is_empty() {
        vec![(u32::from(l3.cidr.network()), u32::from(l3.cidr.broadcast()))]
    } else {
        l3.ranges
            .iter()
            .map(|r| (u32::from(r.start), u32::from(r.end)))
            .collect()
    };
    spans
        .into_iter()
        .flat_map(|(start, end)| start..=end)
        .map(Ipv4Addr::from)
        .find(|ip| assignable(l3, *ip) && !taken.contains(ip))
}

/// A MAC in QEMU/KVM's locally administered range 52:54:00, from 24 random bits, that is
/// not in `taken`.
pub fn mac(taken: &BTreeSet<Mac>, random: impl Fn() -> u32) -> Mac {
    loop {
        let r = random().to_be_bytes();
        let candidate = Mac([0x52, 0x54, 0x00, r[1], r[2], r[3]]);
        if !taken.contains(&candidate) {
            return candidate;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l3(json: serde_json::Value) -> L3 {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn addresses_skip_the_gateway_the_server_and_what_is_taken() {
        let net = l3(serde_json::json!({"cidr": "10.0.0.0/29", "gateway": "10.0.0.1"}));
        let mut taken = BTreeSet::new();
        let mut got = Vec::new();
        while let Some(ip) = allocate(&net, &taken) {
            taken.insert(ip);
            got.push(ip.to_string());
        }
        // .0 network, .1 gateway, .6 the DHCP server, .7 broadcast.
        assert_eq!(got, ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]);
        assert!(!assignable(&net, "10.0.0.1".parse().unwrap()));
        assert!(!assignable(&net, "10.0.1.2".parse().unwrap()));
    }

    #[test]
    fn ranges_bound_the_choice() {
        let net = l3(serde_json::json!({"cidr": "10.0.0.0/24",
            "ranges": [{"start": "10.0.0.100", "end": "10.0.0.101"}, {"start": "10.0.0.50", "end": "10.0.0.50"}]}));
        let mut taken = BTreeSet::new();
        for want in ["10.0.0.100", "10.0.0.101", "10.0.0.50"] {
            let ip = allocate(&net, &taken).unwrap();
            assert_eq!(ip.to_string(), want);
            taken.insert(ip);
        }
        assert_eq!(allocate(&net, &taken), None);
        assert!(!assignable(&net, "10.0.0.7".parse().unwrap()));
    }

    #[test]
    fn macs_are_local_and_unique() {
        let taken: BTreeSet<Mac> = [Mac([0x52, 0x54, 0, 0, 0, 1])].into();
        let seq = std::cell::Cell::new(0u32);
        let m = mac(&taken, || {
            seq.set(seq.get() + 1);
            seq.get()
        });
        assert_eq!(m, Mac([0x52, 0x54, 0, 0, 0, 2]));
    }
}
