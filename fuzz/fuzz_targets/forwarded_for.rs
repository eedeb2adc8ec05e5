//! `ingress::client_ip` with fuzzed X-Forwarded-For lines. Input: one byte
//! choosing the peer, 16 bytes of address material, then header values
//! separated by newlines (each kept if `HeaderValue::from_bytes` takes it).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let (sel, addr, rest) = (data[0], &data[1..17], &data[17..]);
    let octets: [u8; 16] = addr.try_into().unwrap();
    let peer = match sel % 6 {
        0 => IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3])),
        1 => IpAddr::V6(Ipv6Addr::from(octets)),
        // Trusted peers, so the header is walked.
        2 => IpAddr::V4(Ipv4Addr::new(10, octets[1], octets[2], octets[3])),
        3 => IpAddr::V6(Ipv4Addr::new(10, octets[1], octets[2], octets[3]).to_ipv6_mapped()),
        4 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(octets[15]))),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let trusted: Vec<IpNet> =
        ["10.0.0.0/8", "127.0.0.1/32", "2001:db8::/32"].iter().map(|n| n.parse().unwrap()).collect();
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append("x-forwarded-for", v);
        }
    }
    let got = ipn_relay::ingress::client_ip(peer, &headers, &trusted);
    let peer = canonical_ip(peer);
    if !trusted.iter().any(|n| n.contains(&peer)) {
        assert_eq!(got, Some(peer), "an untrusted peer is the client");
    }
    if let Some(ip) = got {
        assert_eq!(ip, canonical_ip(ip), "the client address comes back IPv4-mapped");
    }
});
