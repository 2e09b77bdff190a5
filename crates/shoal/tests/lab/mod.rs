//! A network lab in namespaces the test creates (as `tests/netns.rs` and the chaos suite's partition use it): one
//! namespace per node with one interface `eth0` on a bridge in a hub namespace, and a veth from the test's own
//! namespace into the hub, so the test reaches every node. Cutting a node's port on the bridge is a real partition:
//! packets are dropped, not refused. Nothing leaves the namespaces made here; they are deleted on drop.
//!
//! Needs root and iproute2 (`ip netns`), as CI machines have.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::Command;

pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 `ip` is needed for this test");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces `<tag>h` (hub with bridge `shbr`), `<tag>0..n` (nodes), a veth from the test's own namespace into the
/// hub; subnet 10.<octet>.0.0/24: nodes at .1…, the test at .254.
pub struct Lab {
    tag: String,
    octet: u8,
    n: usize,
}

impl Lab {
    pub fn new(n: usize) -> Lab {
        // Unique per lab, not only per process: a bench that replaces a lab builds the new one before the old one
        // drops, and a shared tag let the old one's cleanup delete the new one's namespaces.
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let made = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let process = std::process::id() % 10_000;
        let tag = format!("sh{process}x{made}");
        let octet = 100 + ((process + made) % 100) as u8;
        let lab = Lab { tag, octet, n };
        lab.cleanup();
        let hub = lab.hub();
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "shbr", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "shbr", "up"]);
        for i in 0..n {
            let ns = lab.node_ns(i);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let port = lab.hub_port(i);
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["-n", &hub, "link", "set", &port, "master", "shbr", "up"]);
            let addr = format!("{}/24", lab.addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up", "multicast", "on"]);
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
        // The test's own way in: a veth from this namespace to the hub.
        let outside = format!("{}t", lab.tag);
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", "tp", "netns", &hub,
        ]);
        ip(&["-n", &hub, "link", "set", "tp", "master", "shbr", "up"]);
        ip(&["addr", "add", &format!("10.{}.0.254/24", lab.octet), "dev", &outside]);
        ip(&["link", "set", &outside, "up"]);
        lab
    }

    pub fn hub(&self) -> String {
        format!("{}h", self.tag)
    }

    pub fn node_ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    pub fn hub_port(&self, i: usize) -> String {
        format!("p{i}")
    }

    pub fn addr(&self, i: usize) -> String {
        format!("10.{}.0.{}", self.octet, i + 1)
    }

    /// Cuts (`false`) or restores (`true`) node `i`'s link to everyone else.
    pub fn link(&self, i: usize, up: bool) {
        ip(&[
            "-n",
            &self.hub(),
            "link",
            "set",
            &self.hub_port(i),
            if up { "up" } else { "down" },
        ]);
    }

    pub fn cleanup(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}t", self.tag)])
            .output();
        for ns in (0..self.n).map(|i| self.node_ns(i)).chain([self.hub()]) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}
