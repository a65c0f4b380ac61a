//! NAT and port mappings of the bridge network with nftables, through the `nft` command: each
//! change is one `nft -f -` script, which the kernel applies as one transaction (all or
//! nothing).
//!
//! Everything lives in the table `ip skiff`, which skiff owns; no other table is read or
//! touched. Inside it, each bridge has its own objects, suffixed with the bridge's name
//! (`pre_skiff0`, `tcp_skiff0`...), so agents on different bridges never step on each other:
//! - maps `tcp_B` / `udp_B`: host port → task address . container port (the port mappings; one
//!   element per mapping, added and deleted with the task);
//! - `pre_B` (nat prerouting) and `out_B` (nat output): traffic to one of the node's own
//!   addresses (`fib daddr type local`) on a mapped port is DNATed to the task — from outside,
//!   and from the node itself (127.0.0.1 too: the bridge has `route_localnet`, and `post_B`
//!   masquerades loopback sources leaving through the bridge);
//! - `post_B` (nat postrouting): the subnet's outbound traffic is masqueraded, and so is
//!   hairpin traffic (a task reaching a mapped port of the node);
//! - `fwd_B` (filter forward): accepts the bridge's traffic (a host firewall that drops
//!   forwarded packets in its own table still wins: see the README).
//!
//! The scripts are built by pure functions (unit-tested); [`run`] feeds one to `nft`.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use serde_json::Value;
use skiff_proto::Protocol;

/// The table skiff owns.
pub(crate) const TABLE: &str = "skiff";

/// A port mapping as nftables sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub protocol: Protocol,
    pub host_port: u16,
    pub address: Ipv4Addr,
    pub container_port: u16,
}

/// The suffix of a bridge's objects: its name with anything but `[A-Za-z0-9_]` as `_`.
pub(crate) fn suffix(bridge: &str) -> String {
    bridge
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn map_name(protocol: Protocol, bridge: &str) -> String {
    match protocol {
        Protocol::Tcp => format!("tcp_{}", suffix(bridge)),
        Protocol::Udp => format!("udp_{}", suffix(bridge)),
    }
}

/// The bridge's maps and chains, (re)written whole: chains are flushed and filled again, maps
/// keep their elements. Idempotent.
pub(crate) fn base_script(bridge: &str, subnet: Ipv4Addr, prefix: u8) -> String {
    let s = suffix(bridge);
    let net = format!("{subnet}/{prefix}");
    let mut out = format!("add table ip {TABLE}\n");
    for m in [
        map_name(Protocol::Tcp, bridge),
        map_name(Protocol::Udp, bridge),
    ] {
        out.push_str(&format!(
            "add map ip {TABLE} {m} {{ type inet_service : ipv4_addr . inet_service; }}\n"
        ));
    }
    let chains = [
        (
            "pre",
            "type nat hook prerouting priority dstnat; policy accept;",
        ),
        ("out", "type nat hook output priority -100; policy accept;"),
        (
            "post",
            "type nat hook postrouting priority srcnat; policy accept;",
        ),
        (
            "fwd",
            "type filter hook forward priority filter; policy accept;",
        ),
    ];
    for (c, spec) in chains {
        out.push_str(&format!("add chain ip {TABLE} {c}_{s} {{ {spec} }}\n"));
        out.push_str(&format!("flush chain ip {TABLE} {c}_{s}\n"));
    }
    for c in ["pre", "out"] {
        for p in ["tcp", "udp"] {
            out.push_str(&format!(
                "add rule ip {TABLE} {c}_{s} fib daddr type local dnat ip to {p} dport map @{p}_{s}\n"
            ));
        }
    }
    let rules = [
        format!("post_{s} ip saddr {net} oifname != \"{bridge}\" masquerade"),
        format!("post_{s} ip saddr 127.0.0.0/8 oifname \"{bridge}\" masquerade"),
        format!("post_{s} ip saddr {net} oifname \"{bridge}\" ct status dnat masquerade"),
        format!("fwd_{s} iifname \"{bridge}\" accept"),
        format!("fwd_{s} oifname \"{bridge}\" ct state established,related accept"),
        format!("fwd_{s} oifname \"{bridge}\" ct status dnat accept"),
    ];
    for r in rules {
        out.push_str(&format!("add rule ip {TABLE} {r}\n"));
    }
    out
}

/// Adds a task's mappings; fails whole (`File exists`) if a host port is mapped already.
pub(crate) fn add_script(bridge: &str, mappings: &[Mapping]) -> String {
    elements_script("create", bridge, mappings, true)
}

/// Deletes mappings (each must exist, or the whole script fails).
pub(crate) fn delete_script(bridge: &str, mappings: &[Mapping]) -> String {
    elements_script("delete", bridge, mappings, false)
}

fn elements_script(verb: &str, bridge: &str, mappings: &[Mapping], values: bool) -> String {
    let mut out = String::new();
    for p in [Protocol::Tcp, Protocol::Udp] {
        let elems: Vec<String> = mappings
            .iter()
            .filter(|m| m.protocol == p)
            .map(|m| {
                if values {
                    format!("{} : {} . {}", m.host_port, m.address, m.container_port)
                } else {
                    m.host_port.to_string()
                }
            })
            .collect();
        if !elems.is_empty() {
            out.push_str(&format!(
                "{verb} element ip {TABLE} {} {{ {} }}\n",
                map_name(p, bridge),
                elems.join(", ")
            ));
        }
    }
    out
}

/// The mappings in `nft -j list map` output.
pub(crate) fn parse_map(protocol: Protocol, json: &str) -> io::Result<Vec<Mapping>> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| io::Error::other(format!("cannot read nft's JSON: {e}")))?;
    let mut out = Vec::new();
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    for item in items {
        let Some(elems) = item["map"]["elem"].as_array() else {
            continue;
        };
        for e in elems {
            let port = |v: &Value| v.as_u64().and_then(|p| u16::try_from(p).ok());
            let (Some(host_port), Some(addr), Some(container_port)) = (
                port(&e[0]),
                e[1]["concat"][0]
                    .as_str()
                    .and_then(|a| a.parse::<Ipv4Addr>().ok()),
                port(&e[1]["concat"][1]),
            ) else {
                continue;
            };
            out.push(Mapping {
                protocol,
                host_port,
                address: addr,
                container_port,
            });
        }
    }
    Ok(out)
}

/// Every mapping of the bridge's maps (none when the table or maps don't exist).
pub(crate) fn list(bridge: &str) -> io::Result<Vec<Mapping>> {
    let mut out = Vec::new();
    for p in [Protocol::Tcp, Protocol::Udp] {
        let res = Command::new("nft")
            .args(["-j", "list", "map", "ip", TABLE, &map_name(p, bridge)])
            .stdin(Stdio::null())
            .output()
            .map_err(nft_missing)?;
        if !res.status.success() {
            // No such table or map: nothing mapped.
            continue;
        }
        out.extend(parse_map(p, &String::from_utf8_lossy(&res.stdout))?);
    }
    Ok(out)
}

fn nft_missing(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::NotFound {
        io::Error::new(
            io::ErrorKind::NotFound,
            "the nft command is missing (install the nftables package)",
        )
    } else {
        io::Error::other(format!("cannot run nft: {e}"))
    }
}

/// Runs a script with `nft -f -` (`check`: `nft -c`, validated by the kernel, not applied).
/// The error carries nft's message.
pub(crate) fn run(script: &str, check: bool) -> io::Result<()> {
    if script.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("nft");
    if check {
        cmd.arg("-c");
    }
    let mut child = cmd
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(nft_missing)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        let msg = String::from_utf8_lossy(&out.stderr);
        let first = msg.lines().next().unwrap_or("failed").trim().to_owned();
        Err(io::Error::other(format!("nft: {first}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_script_names_every_object_after_the_bridge() {
        let s = base_script("br-lan", Ipv4Addr::new(10, 88, 0, 0), 24);
        assert!(s.starts_with("add table ip skiff\n"), "{s}");
        for obj in [
            "tcp_br_lan",
            "udp_br_lan",
            "pre_br_lan",
            "out_br_lan",
            "post_br_lan",
            "fwd_br_lan",
        ] {
            assert!(s.contains(obj), "{obj} in {s}");
        }
        assert!(s.contains(
            "add rule ip skiff pre_br_lan fib daddr type local dnat ip to tcp dport map @tcp_br_lan\n"
        ));
        assert!(s.contains("ip saddr 10.88.0.0/24 oifname != \"br-lan\" masquerade"));
        assert!(s.contains("ip saddr 127.0.0.0/8 oifname \"br-lan\" masquerade"));
        // Every chain is flushed before its rules are added again: the script is idempotent.
        assert_eq!(s.matches("flush chain").count(), 4);
        assert!(!s.contains("flush table") && !s.contains("delete"));
    }

    #[test]
    fn element_scripts() {
        let m = |protocol, host_port, last, container_port| Mapping {
            protocol,
            host_port,
            address: Ipv4Addr::new(10, 88, 0, last),
            container_port,
        };
        let maps = [
            m(Protocol::Tcp, 49153, 2, 80),
            m(Protocol::Udp, 5353, 2, 53),
            m(Protocol::Tcp, 49154, 2, 443),
        ];
        assert_eq!(
            add_script("skiff0", &maps),
            "create element ip skiff tcp_skiff0 { 49153 : 10.88.0.2 . 80, 49154 : 10.88.0.2 . 443 }\n\
             create element ip skiff udp_skiff0 { 5353 : 10.88.0.2 . 53 }\n"
        );
        assert_eq!(
            delete_script("skiff0", &maps[..1]),
            "delete element ip skiff tcp_skiff0 { 49153 }\n"
        );
        assert_eq!(add_script("skiff0", &[]), "");
    }

    #[test]
    fn maps_are_read_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"map": {"family": "ip",
            "name": "tcp_x", "table": "skiff", "type": "inet_service", "handle": 1,
            "map": "ipv4_addr . inet_service", "elem": [[49200, {"concat": ["10.213.0.2", 80]}],
            [49201, {"concat": ["10.213.0.3", 81]}]]}}]}"#;
        let got = parse_map(Protocol::Tcp, json).expect("parses");
        assert_eq!(
            got,
            vec![
                Mapping {
                    protocol: Protocol::Tcp,
                    host_port: 49200,
                    address: Ipv4Addr::new(10, 213, 0, 2),
                    container_port: 80
                },
                Mapping {
                    protocol: Protocol::Tcp,
                    host_port: 49201,
                    address: Ipv4Addr::new(10, 213, 0, 3),
                    container_port: 81
                },
            ]
        );
        let empty = r#"{"nftables": [{"map": {"name": "udp_x", "table": "skiff"}}]}"#;
        assert!(parse_map(Protocol::Udp, empty).expect("parses").is_empty());
    }
}
