//! What a node reports about itself: `NodeGatheredInfo` facts (SYSTEM.md §3.1 `NodeInfo`, §3.3), and the §13 rule for
//! when a new memory sample is worth emitting.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use shoal_types::card::Backend;
use shoal_types::model::{Disk, Identity, Iface, Memory, NodeFact};
use tracing::warn;

const MIB: u64 = 1024 * 1024;

pub fn identity() -> Identity {
    Identity {
        friendly_name: rustix::system::uname().nodename().to_string_lossy().into_owned(),
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        // The chip is only shown to people, so an unreadable /proc/cpuinfo (non-Linux, sandboxes) is not an error.
        chip: std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| parse_cpu_model(&text))
            .unwrap_or_default(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// The first `model name` of /proc/cpuinfo: every core repeats it, and mixed-core chips name the package once anyway.
fn parse_cpu_model(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        let value = value.trim();
        (key.trim() == "model name" && !value.is_empty()).then(|| value.to_owned())
    })
}

pub fn memory() -> std::io::Result<Memory> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    parse_meminfo(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "/proc/meminfo lacks MemTotal or MemAvailable",
        )
    })
}

/// `MemAvailable`, not `MemFree`: page cache is reclaimable, and counting it as used would make every node that has
/// read a model file look full.
fn parse_meminfo(text: &str) -> Option<Memory> {
    let mut total = None;
    let mut available = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key.trim() {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            _ => continue,
        };
        let mut words = rest.split_whitespace();
        let (Some(value), Some("kB"), None) = (words.next(), words.next(), words.next()) else {
            return None;
        };
        *slot = Some(value.parse::<u64>().ok()?.checked_mul(1024)?);
    }
    Some(Memory {
        total: total?,
        available: available?,
    })
}

pub fn disk(path: &Path) -> std::io::Result<Disk> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(Disk {
        total: stat.f_blocks.saturating_mul(stat.f_frsize),
        // `bavail`, not `bfree`: blocks reserved for root are not ours to fill with models.
        available: stat.f_bavail.saturating_mul(stat.f_frsize),
    })
}

/// Every interface with its addresses, loopback included: a single-machine cluster talks over loopback.
pub fn interfaces() -> Vec<Iface> {
    try_interfaces().unwrap_or_else(|e| {
        warn!(error = %e, "cannot list network interfaces");
        Vec::new()
    })
}

fn try_interfaces() -> std::io::Result<Vec<Iface>> {
    let found = if_addrs::get_if_addrs()?;
    Ok(group_ifaces(found.into_iter().map(|i| {
        let ip = i.ip();
        (i.name, ip)
    })))
}

/// getifaddrs yields one row per address; sorting makes the fact compare equal across samples, so an unchanged set
/// of interfaces emits nothing (§13: other facts on change).
fn group_ifaces(rows: impl IntoIterator<Item = (String, IpAddr)>) -> Vec<Iface> {
    let mut by_name: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    for (name, addr) in rows {
        by_name.entry(name).or_default().insert(addr);
    }
    by_name
        .into_iter()
        .map(|(name, addrs)| Iface {
            name,
            addrs: addrs.into_iter().collect(),
        })
        .collect()
}

/// A `--no-worker` node reports no backends, which is what keeps the placer from giving it shards.
pub fn backends(worker: bool) -> Vec<Backend> {
    if worker { vec![Backend::Cpu] } else { Vec::new() }
}

/// A fact that cannot be read is left out rather than failing the node: the others are still worth reporting, and
/// the placer treats a missing fact as "unknown", not as zero.
pub fn gather(data_dir: &Path, worker: bool) -> Vec<NodeFact> {
    let mut facts = vec![NodeFact::Identity(identity())];
    match memory() {
        Ok(m) => facts.push(NodeFact::Memory(m)),
        Err(e) => warn!(error = %e, "cannot read memory size; not reporting it"),
    }
    match disk(data_dir) {
        Ok(d) => facts.push(NodeFact::Disk(d)),
        Err(e) => warn!(error = %e, dir = %data_dir.display(), "cannot read disk space; not reporting it"),
    }
    match try_interfaces() {
        Ok(i) => facts.push(NodeFact::Interfaces(i)),
        Err(e) => warn!(error = %e, "cannot list network interfaces; not reporting them"),
    }
    facts.push(NodeFact::Backends(backends(worker)));
    facts
}

/// §13: memory is sampled every second but each emitted sample is a log event, so only a move that could change a
/// placement decision is worth one. Any change of `total` counts (hot-plug, a cgroup limit change).
pub fn memory_changed_enough(old: &Memory, new: &Memory) -> bool {
    if old.total != new.total {
        return true;
    }
    let threshold = (256 * MIB).max(new.total / 50);
    old.available.abs_diff(new.available) >= threshold
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const GIB: u64 = 1024 * MIB;

    const MEMINFO: &str = "MemTotal:       16318480 kB\n\
                           MemFree:         1234567 kB\n\
                           MemAvailable:   12000000 kB\n\
                           Buffers:          204800 kB\n\
                           HugePages_Total:       0\n";

    #[test]
    fn parse_meminfo_reads_total_and_available_in_bytes() {
        assert_eq!(
            parse_meminfo(MEMINFO),
            Some(Memory {
                total: 16_318_480 * 1024,
                available: 12_000_000 * 1024
            })
        );
    }

    #[test]
    fn parse_meminfo_without_a_field_is_none() {
        assert_eq!(parse_meminfo("MemTotal: 100 kB\nMemFree: 50 kB\n"), None);
        assert_eq!(parse_meminfo("MemAvailable: 50 kB\n"), None);
        assert_eq!(parse_meminfo(""), None);
    }

    #[test]
    fn parse_meminfo_rejects_malformed_values() {
        assert_eq!(parse_meminfo("MemTotal: lots kB\nMemAvailable: 50 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: 100 MB\nMemAvailable: 50 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: 100\nMemAvailable: 50 kB\n"), None);
        assert_eq!(
            parse_meminfo("MemTotal: 18446744073709551615 kB\nMemAvailable: 50 kB\n"),
            None
        );
    }

    #[test]
    fn parse_cpu_model_takes_the_first_model_name() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\n\
                    processor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(parse_cpu_model(text).as_deref(), Some("Intel(R) Xeon(R) CPU @ 2.20GHz"));
        assert_eq!(parse_cpu_model("processor\t: 0\nHardware\t: BCM2835\n"), None);
        assert_eq!(parse_cpu_model("model name\t:\n"), None);
    }

    #[test]
    fn ifaces_are_grouped_by_name_and_sorted() {
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let rows = [("lo", v6), ("eth0", a), ("lo", lo), ("eth0", b), ("eth0", a)];
        let got = group_ifaces(rows.into_iter().map(|(n, ip)| (n.to_owned(), ip)));
        assert_eq!(
            got,
            vec![
                Iface {
                    name: "eth0".into(),
                    addrs: vec![b, a]
                },
                Iface {
                    name: "lo".into(),
                    addrs: vec![lo, v6]
                },
            ]
        );
    }

    #[test]
    fn backends_follow_the_worker_flag() {
        assert_eq!(backends(true), vec![Backend::Cpu]);
        assert_eq!(backends(false), Vec::<Backend>::new());
    }

    #[test]
    fn memory_change_threshold_is_256_mib_or_2_percent() {
        let small = Memory {
            total: 8 * GIB,
            available: 4 * GIB,
        };
        let moved = |m: &Memory, by: i64| Memory {
            total: m.total,
            available: m.available.saturating_add_signed(by),
        };
        // 2 % of 8 GiB is below 256 MiB, so the floor applies.
        assert!(!memory_changed_enough(&small, &moved(&small, 256 * MIB as i64 - 1)));
        assert!(memory_changed_enough(&small, &moved(&small, 256 * MIB as i64)));
        assert!(memory_changed_enough(&small, &moved(&small, -(256 * MIB as i64))));
        assert!(!memory_changed_enough(&small, &small));

        // 2 % of 100 GiB is 2 GiB.
        let big = Memory {
            total: 100 * GIB,
            available: 50 * GIB,
        };
        assert!(!memory_changed_enough(&big, &moved(&big, GIB as i64)));
        assert!(!memory_changed_enough(&big, &moved(&big, 2 * GIB as i64 - 1)));
        assert!(memory_changed_enough(&big, &moved(&big, 2 * GIB as i64)));
        assert!(memory_changed_enough(&big, &moved(&big, -(2 * GIB as i64))));

        assert!(memory_changed_enough(
            &small,
            &Memory {
                total: small.total + 1,
                available: small.available
            }
        ));
    }

    #[test]
    fn gather_on_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let facts = gather(dir.path(), true);

        let identity = facts.iter().find_map(|f| match f {
            NodeFact::Identity(i) => Some(i),
            _ => None,
        });
        let identity = identity.unwrap();
        assert!(!identity.os.is_empty() && !identity.arch.is_empty() && !identity.version.is_empty());

        let memory = facts.iter().find_map(|f| match f {
            NodeFact::Memory(m) => Some(*m),
            _ => None,
        });
        assert!(memory.unwrap().total > 0);

        let disk = facts.iter().find_map(|f| match f {
            NodeFact::Disk(d) => Some(*d),
            _ => None,
        });
        assert!(disk.unwrap().total > 0);

        let ifaces = facts.iter().find_map(|f| match f {
            NodeFact::Interfaces(i) => Some(i),
            _ => None,
        });
        let lo = ifaces.unwrap().iter().find(|i| i.name == "lo").unwrap();
        assert!(lo.addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));

        let order: Vec<_> = facts.iter().map(NodeFact::kind).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        assert_eq!(facts.last(), Some(&NodeFact::Backends(vec![Backend::Cpu])));
    }

    #[test]
    fn gather_on_a_missing_dir_leaves_disk_out() {
        let dir = tempfile::tempdir().unwrap();
        let facts = gather(&dir.path().join("absent"), false);
        assert!(!facts.iter().any(|f| matches!(f, NodeFact::Disk(_))));
        assert_eq!(facts.last(), Some(&NodeFact::Backends(Vec::new())));
    }
}
