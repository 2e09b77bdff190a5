//! Data-plane addresses (§10.4): which address a runner binds for its previous rank, and which ones its ring
//! neighbour is told to dial.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use shoal_types::model::Iface;

/// Where this node's runners accept their previous rank (§10.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataPlane {
    /// Every interface; `data_addrs` lists the node's IPv4 interface addresses (loopback only if it has no other).
    AllInterfaces,
    /// These addresses only (a node whose cluster endpoints are pinned, e.g. to loopback in tests).
    Only(Vec<IpAddr>),
}

impl DataPlane {
    /// The address a runner binds.
    pub fn bind(&self) -> IpAddr {
        match self {
            DataPlane::Only(ips) if ips.len() == 1 => ips[0],
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    /// The addresses a ring neighbour dials, given the node's interfaces: routable ones first, loopback only when
    /// there is nothing else (a remote node dialing 127.0.0.1 would reach its own machine).
    pub fn advertised(&self, interfaces: &[Iface], port: u16) -> Vec<SocketAddr> {
        let ips: Vec<IpAddr> = match self {
            DataPlane::Only(ips) => ips.clone(),
            DataPlane::AllInterfaces => {
                let routable: Vec<IpAddr> = interfaces
                    .iter()
                    .flat_map(|i| &i.addrs)
                    .filter(|ip| matches!(ip, IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified()))
                    .copied()
                    .collect();
                if routable.is_empty() {
                    vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
                } else {
                    routable
                }
            }
        };
        ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, addrs: &[&str]) -> Iface {
        Iface {
            name: name.into(),
            addrs: addrs
                .iter()
                .map(|a| a.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
                .collect(),
        }
    }

    #[test]
    fn advertised_addresses_are_routable_ipv4_first_and_loopback_only_alone() {
        let all = DataPlane::AllInterfaces;
        let ifaces = [
            iface("lo", &["127.0.0.1", "::1"]),
            iface("eth0", &["192.168.1.5", "fe80::1"]),
            iface("wlan0", &["10.0.0.7", "169.254.3.4"]),
        ];
        let got = all.advertised(&ifaces, 4000);
        let want: Vec<SocketAddr> = ["192.168.1.5:4000", "10.0.0.7:4000"]
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        assert_eq!(got, want);
        assert_eq!(all.bind(), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let lonely = all.advertised(&[iface("lo", &["127.0.0.1"])], 4000);
        assert_eq!(lonely, vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 4000))]);
        assert_eq!(all.advertised(&[], 7).len(), 1, "no interfaces known yet: loopback");
    }

    #[test]
    fn a_pinned_node_binds_and_advertises_only_its_addresses() {
        let pinned = DataPlane::Only(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert_eq!(pinned.bind(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let ifaces = [iface("eth0", &["192.168.1.5"])];
        assert_eq!(
            pinned.advertised(&ifaces, 9),
            vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 9))]
        );
    }
}
