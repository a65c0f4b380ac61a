//! `networkMode: "awsvpc"`, as ECS's task ENI on a device: the task gets its own address on
//! the node's LAN. Its network namespace gets a macvlan child (bridge mode) of the configured
//! parent interface (`[network] awsvpc_parent`, e.g. `eth0`) as its `eth0`, an address from a
//! static pool reserved for the node (`awsvpc_pool`) with the LAN's prefix, and a default route
//! via `awsvpc_gateway` when one is set. The LAN reaches the task at its address directly:
//! its `portMappings` are its own ports, nothing is mapped or masqueraded. No DHCP: the pool
//! is the node's, like the static addresses of a bridge subnet.
//!
//! - The macvlan is made right in the task's namespace (one netlink request), so it never
//!   exists on the node's side and a `kill -9` at any moment leaves nothing there; its
//!   description (`ip link` shows it as `alias`) is `skiff awsvpc {task}`.
//! - Each task's allocation (parent, address, endpoints) is a file in `run_dir/awsvpc/`,
//!   written before the link is made: an address is taken while its file exists. Removing the
//!   task deletes the link inside the task's namespace first (so the address is free on the
//!   LAN before it can be handed out again), then the file; at start-up `cleanup_stale`
//!   removes every task left by an earlier run the same way.
//! - [`probe`] checks at start-up that the parent exists, what the LAN's prefix is, and (with
//!   a macvlan made in a throwaway namespace) that the kernel can make macvlans on it.
//! - As with any macvlan, the node itself does not reach its tasks through the parent (the
//!   kernel hands frames between the parent and its children neither way); other hosts of
//!   the LAN and other awsvpc tasks do.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use skiff_proto::{Endpoint, TaskDefinition};

use super::bridge::{mask, parse_subnet, task_dns, BridgeConfig, NetworkConfig, TaskNet};
use super::netlink::Netlink;

/// The most addresses a pool may hold.
const MAX_POOL: u32 = 65_536;

/// The `awsvpc_*` keys of `[network]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsvpcConfig {
    /// The parent interface.
    pub parent: String,
    /// The pool, first and last address (inclusive).
    pub pool: (Ipv4Addr, Ipv4Addr),
    /// The LAN's subnet; `None`: found on the parent at start-up.
    pub subnet: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    /// `None`: the host's name servers (the bridge's `dns` setting).
    pub dns: Option<Vec<IpAddr>>,
}

fn ip(field: &'static str, s: &str) -> Result<Ipv4Addr, (&'static str, String)> {
    s.trim()
        .parse()
        .map_err(|_| (field, format!("{s:?} is not an IPv4 address")))
}

fn contains((net, prefix): (Ipv4Addr, u8), a: Ipv4Addr) -> bool {
    u32::from(a) & mask(prefix) == u32::from(net)
}

/// `A.B.C.D/N` (every address of the block) or `FIRST-LAST`.
fn parse_pool(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let bad = || {
        format!(
            "{s:?}: expected a block such as 192.168.1.200/29 or a range such as \
             192.168.1.200-192.168.1.207"
        )
    };
    let (first, last) = if let Some((a, p)) = s.split_once('/') {
        let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let p: u8 = p.trim().parse().map_err(|_| bad())?;
        if !(16..=32).contains(&p) {
            return Err(format!("{s:?}: the block's prefix must be 16..=32"));
        }
        let net = u32::from(a) & mask(p);
        if net != u32::from(a) {
            return Err(format!(
                "{s:?} is not the start of its block: use {}/{p}",
                Ipv4Addr::from(net)
            ));
        }
        (Ipv4Addr::from(net), Ipv4Addr::from(net | !mask(p)))
    } else if let Some((a, b)) = s.split_once('-') {
        let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
        if a > b {
            return Err(format!("{s:?}: the first address is after the last"));
        }
        (a, b)
    } else {
        return Err(bad());
    };
    if u32::from(last) - u32::from(first) >= MAX_POOL {
        return Err(format!("{s:?}: at most {MAX_POOL} addresses"));
    }
    if first.is_loopback() || first.is_multicast() || last.is_multicast() || last.is_broadcast() {
        return Err(format!("{s:?}: not unicast LAN addresses"));
    }
    Ok((first, last))
}

fn pool_text((first, last): (Ipv4Addr, Ipv4Addr)) -> String {
    format!("{first}-{last}")
}

impl NetworkConfig {
    /// The `awsvpc_*` keys: `None` when awsvpc is not configured. `bridge` is the rest of
    /// `[network]`, validated (its `dns` is the awsvpc tasks' too; its subnet must not overlap
    /// the pool).
    pub fn validate_awsvpc(
        &self,
        bridge: &BridgeConfig,
    ) -> Result<Option<AwsvpcConfig>, (&'static str, String)> {
        let (parent, pool) = match (&self.awsvpc_parent, &self.awsvpc_pool) {
            (None, None) => {
                for (field, given) in [
                    ("network.awsvpc_subnet", self.awsvpc_subnet.is_some()),
                    ("network.awsvpc_gateway", self.awsvpc_gateway.is_some()),
                ] {
                    if given {
                        return Err((
                            field,
                            "set without awsvpc_parent and awsvpc_pool, which awsvpc needs".into(),
                        ));
                    }
                }
                return Ok(None);
            }
            (Some(_), None) => {
                return Err((
                    "network.awsvpc_pool",
                    "missing: awsvpc_parent is set, and awsvpc tasks need a pool of addresses \
                     (e.g. \"192.168.1.200/29\")"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "network.awsvpc_parent",
                    "missing: awsvpc_pool is set, and awsvpc tasks need the node's interface on \
                     that LAN (e.g. \"eth0\")"
                        .into(),
                ))
            }
            (Some(p), Some(pool)) => (p, pool),
        };
        if parent.is_empty()
            || parent.len() > 15
            || !parent
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
        {
            return Err((
                "network.awsvpc_parent",
                format!(
                    "{parent:?}: an interface name of 1 to 15 letters, digits, '_', '.' or '-'"
                ),
            ));
        }
        let pool = parse_pool(pool).map_err(|e| ("network.awsvpc_pool", e))?;
        let bridge_net = (bridge.subnet, bridge.prefix);
        if contains(bridge_net, pool.0)
            || contains(bridge_net, pool.1)
            || (pool.0 < bridge.subnet && pool.1 > bridge.subnet)
        {
            return Err((
                "network.awsvpc_pool",
                format!(
                    "{} overlaps the bridge subnet {}/{}",
                    pool_text(pool),
                    bridge.subnet,
                    bridge.prefix
                ),
            ));
        }
        let subnet = match &self.awsvpc_subnet {
            None => None,
            Some(s) => {
                let sn = parse_subnet(s).map_err(|e| ("network.awsvpc_subnet", e))?;
                if !contains(sn, pool.0) || !contains(sn, pool.1) {
                    return Err((
                        "network.awsvpc_pool",
                        format!(
                            "{} is not inside awsvpc_subnet {}/{}",
                            pool_text(pool),
                            sn.0,
                            sn.1
                        ),
                    ));
                }
                Some(sn)
            }
        };
        let gateway = match &self.awsvpc_gateway {
            None => None,
            Some(g) => {
                let g = ip("network.awsvpc_gateway", g)?;
                if (pool.0..=pool.1).contains(&g) {
                    return Err((
                        "network.awsvpc_gateway",
                        format!("{g} is inside the pool {}", pool_text(pool)),
                    ));
                }
                if let Some(sn) = subnet.filter(|&sn| !contains(sn, g)) {
                    return Err((
                        "network.awsvpc_gateway",
                        format!("{g} is not on the LAN {}/{}", sn.0, sn.1),
                    ));
                }
                Some(g)
            }
        };
        Ok(Some(AwsvpcConfig {
            parent: parent.clone(),
            pool,
            subnet,
            gateway,
            dns: bridge.dns.clone(),
        }))
    }
}

fn err(what: &str) -> impl FnOnce(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A network namespace of its own, pinned by the returned file (gone when it is dropped).
fn throwaway_netns() -> Result<fs::File, String> {
    std::thread::Builder::new()
        .name("skiff-net-probe".into())
        .spawn(|| -> Result<fs::File, String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("a network namespace: {e}"))?;
            fs::File::open("/proc/thread-self/ns/net").map_err(err("a network namespace"))
        })
        .map_err(|e| format!("probe thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the probe thread panicked".into()))
}

/// Checks what awsvpc needs on this node: the parent interface, the LAN's prefix (the
/// configured subnet, else the subnet of the parent's address that holds the pool) and a
/// macvlan on the parent, made in a throwaway namespace. Returns the LAN's subnet.
pub(crate) fn probe(cfg: &AwsvpcConfig) -> Result<(Ipv4Addr, u8), String> {
    let mut nl = Netlink::new().map_err(err("netlink"))?;
    let parent = nl
        .link(&cfg.parent)
        .map_err(err("netlink"))?
        .ok_or_else(|| format!("the parent interface {} does not exist", cfg.parent))?;
    let subnet = match cfg.subnet {
        Some(s) => s,
        None => nl
            .addresses(parent.index)
            .map_err(err("netlink"))?
            .into_iter()
            .map(|(a, p)| (Ipv4Addr::from(u32::from(a) & mask(p)), p))
            .find(|&sn| contains(sn, cfg.pool.0) && contains(sn, cfg.pool.1))
            .ok_or_else(|| {
                format!(
                    "cannot tell the LAN's prefix: {} has no IPv4 address in a subnet that holds \
                     the pool {}; set [network] awsvpc_subnet",
                    cfg.parent,
                    pool_text(cfg.pool)
                )
            })?,
    };
    if let Some(g) = cfg.gateway.filter(|&g| !contains(subnet, g)) {
        return Err(format!(
            "the gateway {g} is not on the LAN {}/{}",
            subnet.0, subnet.1
        ));
    }
    let ns = throwaway_netns()?;
    nl.add_macvlan("skprobe0", parent.index, ns.as_raw_fd())
        .map_err(|e| {
            format!(
                "macvlan links on {}: {e} (kernel option CONFIG_MACVLAN, module macvlan; the \
                 parent must be an Ethernet interface that is not a bridge port)",
                cfg.parent
            )
        })?;
    Ok(subnet)
}

/// What one task holds: written to `run_dir/awsvpc/{task}` before its link is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Allocation {
    parent: String,
    address: Ipv4Addr,
    endpoints: Vec<Endpoint>,
}

/// The description of a task's macvlan.
fn alias(task: &str) -> String {
    format!("skiff awsvpc {task}")
}

fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("awsvpc")
}

/// Tasks with an allocation file (including those of an earlier run, whatever the
/// configuration is now).
pub(crate) fn allocated_tasks(run_dir: &Path) -> Vec<String> {
    allocations(&dir(run_dir))
        .map(|v| v.into_iter().map(|(t, _)| t).collect())
        .unwrap_or_default()
}

fn allocations(dir: &Path) -> Result<Vec<(String, Allocation)>, String> {
    super::bridge::read_allocations(dir, "awsvpc")
}

/// Runs `f` with a netlink socket in the network namespace at `netns`, on a short-lived thread
/// that has entered it.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce(&mut Netlink) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let ns = fs::File::open(netns).map_err(err("cannot open the task's network namespace"))?;
    std::thread::Builder::new()
        .name("skiff-netns-cfg".into())
        .spawn(move || -> Result<T, String> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("cannot enter the task's network namespace: {e}"))?;
            let mut nl = Netlink::new().map_err(err("netlink"))?;
            f(&mut nl)
        })
        .map_err(|e| format!("thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the namespace thread panicked".into()))
}

/// The awsvpc network of one agent.
#[derive(Debug)]
pub(crate) struct Net {
    cfg: AwsvpcConfig,
    /// The LAN's subnet (configured or found by [`probe`]).
    subnet: (Ipv4Addr, u8),
    /// `run_dir/awsvpc`: one allocation file per task.
    dir: PathBuf,
    dns: Vec<IpAddr>,
    search: Vec<String>,
    /// Held while allocations are read and changed.
    lock: Mutex<()>,
}

impl Net {
    pub(crate) fn new(cfg: AwsvpcConfig, subnet: (Ipv4Addr, u8), run_dir: &Path) -> Net {
        let (dns, search) = task_dns(cfg.dns.as_deref());
        Net {
            cfg,
            subnet,
            dir: dir(run_dir),
            dns,
            search,
            lock: Mutex::new(()),
        }
    }

    pub(crate) fn resolv_conf(&self) -> String {
        super::bridge::resolv_conf(&self.dns, &self.search)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Addresses a task may get: the pool without the LAN's network and broadcast addresses,
    /// the gateway and `own` (the parent's addresses).
    fn candidates<'a>(&'a self, own: &'a [Ipv4Addr]) -> impl Iterator<Item = Ipv4Addr> + 'a {
        let (net, prefix) = self.subnet;
        let broadcast = u32::from(net) | !mask(prefix);
        (u32::from(self.cfg.pool.0)..=u32::from(self.cfg.pool.1))
            .filter(move |&a| a != u32::from(net) && a != broadcast)
            .map(Ipv4Addr::from)
            .filter(move |a| Some(*a) != self.cfg.gateway && !own.contains(a))
    }

    /// Gives the task's network namespace (`netns`, a named namespace with `lo` up) its `eth0`
    /// on the LAN with an address from the pool. On error the caller removes what was made with
    /// [`detach`].
    pub(crate) fn attach(&self, task: &TaskDefinition, netns: &Path) -> Result<TaskNet, String> {
        let _guard = self.lock();
        let name = task.family.as_str();
        let mut nl = Netlink::new().map_err(err("netlink"))?;
        let parent = nl
            .link(&self.cfg.parent)
            .map_err(err("netlink"))?
            .ok_or_else(|| format!("the parent interface {} does not exist", self.cfg.parent))?;
        let own: Vec<Ipv4Addr> = nl
            .addresses(parent.index)
            .map_err(err("netlink"))?
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        let taken = allocations(&self.dir)?;
        if taken.iter().any(|(t, _)| t == name) {
            return Err(format!("task {name} has an awsvpc allocation already"));
        }
        let address = self
            .candidates(&own)
            .find(|a| taken.iter().all(|(_, t)| t.address != *a))
            .ok_or_else(|| {
                let mut holders: Vec<&str> = taken.iter().map(|(t, _)| t.as_str()).collect();
                holders.sort_unstable();
                format!(
                    "no free address left in the awsvpc pool {} for task {name} (held by {})",
                    pool_text(self.cfg.pool),
                    if holders.is_empty() {
                        "no task".to_owned()
                    } else {
                        format!("tasks {}", holders.join(", "))
                    }
                )
            })?;
        // Nothing is mapped: each port is reached at the task's own address.
        let endpoints: Vec<Endpoint> = task
            .containers
            .iter()
            .flat_map(|c| {
                c.port_mappings.iter().map(|m| Endpoint {
                    container: c.name.clone(),
                    container_port: m.container_port,
                    host_port: 0,
                    protocol: m.protocol,
                    address: address.to_string(),
                })
            })
            .collect();
        let a = Allocation {
            parent: self.cfg.parent.clone(),
            address,
            endpoints,
        };
        self.save(name, &a)?;

        let ns = fs::File::open(netns).map_err(err("cannot open the task's network namespace"))?;
        nl.add_macvlan("eth0", parent.index, ns.as_raw_fd())
            .map_err(|e| {
                format!(
                    "cannot create the macvlan of {} in the task's namespace: {e}",
                    self.cfg.parent
                )
            })?;
        let (prefix, gateway, ours) = (self.subnet.1, self.cfg.gateway, alias(name));
        in_netns(netns, move |nl| {
            let eth0 = nl
                .link("eth0")
                .map_err(err("netlink"))?
                .ok_or("eth0 did not arrive in the task's network namespace")?;
            nl.set_alias(eth0.index, &ours)
                .map_err(err("cannot describe eth0"))?;
            // A gratuitous ARP when eth0 comes up: the LAN forgets the MAC an earlier holder
            // of the address had.
            if let Err(e) = fs::write("/proc/sys/net/ipv4/conf/eth0/arp_notify", "1") {
                tracing::debug!(error = %e, "cannot set arp_notify");
            }
            nl.add_address(eth0.index, address, prefix)
                .map_err(|e| format!("cannot give eth0 the address {address}: {e}"))?;
            nl.set_up(eth0.index).map_err(err("cannot bring eth0 up"))?;
            if let Some(gw) = gateway {
                nl.add_default_route(gw)
                    .map_err(|e| format!("cannot route via {gw}: {e}"))?;
            }
            Ok(())
        })?;
        Ok(TaskNet {
            address: a.address,
            endpoints: a.endpoints,
        })
    }

    fn save(&self, task: &str, a: &Allocation) -> Result<(), String> {
        fs::create_dir_all(&self.dir).map_err(err("cannot create the allocation directory"))?;
        let tmp = self.dir.join(format!(".{task}.tmp"));
        let bytes = serde_json::to_vec(a).map_err(|e| e.to_string())?;
        fs::write(&tmp, bytes).map_err(err("cannot write the awsvpc allocation"))?;
        fs::rename(&tmp, self.dir.join(task)).map_err(err("cannot write the awsvpc allocation"))
    }
}

/// Removes what [`Net::attach`] made for `task`: its macvlan (deleted inside the namespace at
/// `netns`, if that still exists), then its allocation. `net` is the running awsvpc network,
/// whose lock is held meanwhile; without one (awsvpc not configured or unavailable now) no
/// allocation can be made concurrently. A task without an allocation is fine.
pub(crate) fn detach(
    net: Option<&Net>,
    run_dir: &Path,
    task: &str,
    netns: &Path,
) -> Result<(), String> {
    let _guard = net.map(Net::lock);
    let path = dir(run_dir).join(task);
    if !path.exists() {
        return Ok(());
    }
    if netns.exists() {
        let ours = alias(task);
        in_netns(netns, move |nl| {
            for l in nl.links().map_err(err("netlink"))? {
                // Only skiff makes macvlans there (the alias is set right after creation).
                if l.alias.as_deref() == Some(ours.as_str()) || l.kind.as_deref() == Some("macvlan")
                {
                    nl.delete_link(l.index)
                        .map_err(|e| format!("cannot delete the task's macvlan {}: {e}", l.name))?;
                }
            }
            Ok(())
        })?;
    }
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(format!("cannot remove {}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> Result<Option<AwsvpcConfig>, (&'static str, String)> {
        let c: NetworkConfig = toml::from_str(toml_text).expect("toml");
        let bridge = c.validate().expect("bridge part valid");
        c.validate_awsvpc(&bridge)
    }

    fn a(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn awsvpc_is_off_unless_configured() {
        assert_eq!(cfg(""), Ok(None));
    }

    #[test]
    fn pools_as_blocks_and_ranges() {
        let c = cfg("awsvpc_parent = 'eth0'\nawsvpc_pool = '192.168.1.200/29'")
            .expect("valid")
            .expect("on");
        assert_eq!(c.parent, "eth0");
        assert_eq!(c.pool, (a("192.168.1.200"), a("192.168.1.207")));
        assert_eq!((c.subnet, c.gateway, c.dns), (None, None, None));
        let c = cfg("dns = ['192.0.2.53']\nawsvpc_parent = 'end0'\n\
             awsvpc_pool = '192.168.1.200 - 192.168.1.219'\n\
             awsvpc_subnet = '192.168.0.0/23'\nawsvpc_gateway = '192.168.0.1'")
        .expect("valid")
        .expect("on");
        assert_eq!(c.pool, (a("192.168.1.200"), a("192.168.1.219")));
        assert_eq!(c.subnet, Some((a("192.168.0.0"), 23)));
        assert_eq!(c.gateway, Some(a("192.168.0.1")));
        assert_eq!(c.dns, Some(vec![IpAddr::V4(a("192.0.2.53"))]));
    }

    #[test]
    fn bad_awsvpc_settings_are_named() {
        let e = |t: &str| cfg(t).expect_err(t);
        let p = "awsvpc_parent = 'eth0'\n";
        assert_eq!(
            e("awsvpc_parent = 'eth0'"),
            (
                "network.awsvpc_pool",
                "missing: awsvpc_parent is set, and awsvpc tasks need a pool of addresses \
                 (e.g. \"192.168.1.200/29\")"
                    .into()
            )
        );
        assert_eq!(e("awsvpc_pool = '10.1.0.0/29'").0, "network.awsvpc_parent");
        assert_eq!(e("awsvpc_gateway = '10.1.0.1'").0, "network.awsvpc_gateway");
        assert_eq!(
            e(&format!("{p}awsvpc_pool = '10.1.0.5/29'")).1,
            "\"10.1.0.5/29\" is not the start of its block: use 10.1.0.0/29"
        );
        assert_eq!(
            e(&format!("{p}awsvpc_pool = '10.1.0.9-10.1.0.2'")).1,
            "\"10.1.0.9-10.1.0.2\": the first address is after the last"
        );
        assert_eq!(
            e(&format!("{p}awsvpc_pool = '10.0.0.0/8'")).1,
            "\"10.0.0.0/8\": the block's prefix must be 16..=32"
        );
        assert_eq!(
            e(&format!("{p}awsvpc_pool = 'eth0'")).0,
            "network.awsvpc_pool"
        );
        assert_eq!(
            e(&format!("{p}awsvpc_pool = '10.88.0.16/28'")).1,
            "10.88.0.16-10.88.0.31 overlaps the bridge subnet 10.88.0.0/24"
        );
        assert_eq!(
            e(&format!(
                "{p}awsvpc_pool = '10.1.0.8/29'\nawsvpc_gateway = '10.1.0.9'"
            ))
            .1,
            "10.1.0.9 is inside the pool 10.1.0.8-10.1.0.15"
        );
        assert_eq!(
            e(&format!(
                "{p}awsvpc_pool = '10.1.0.8/29'\nawsvpc_subnet = '10.2.0.0/24'"
            ))
            .1,
            "10.1.0.8-10.1.0.15 is not inside awsvpc_subnet 10.2.0.0/24"
        );
        assert_eq!(
            e(&format!(
                "{p}awsvpc_pool = '10.1.0.8/29'\nawsvpc_subnet = '10.1.0.0/24'\nawsvpc_gateway = '10.1.1.1'"
            ))
            .1,
            "10.1.1.1 is not on the LAN 10.1.0.0/24"
        );
        assert_eq!(
            e("awsvpc_parent = 'a/b'\nawsvpc_pool = '10.1.0.8/29'").0,
            "network.awsvpc_parent"
        );
    }

    #[test]
    fn candidates_skip_network_broadcast_gateway_and_the_nodes_own_addresses() {
        let c =
            cfg("awsvpc_parent = 'eth0'\nawsvpc_pool = '10.1.0.0/29'\nawsvpc_gateway = '10.1.0.8'")
                .expect("valid")
                .expect("on");
        let dir = tempfile::tempdir().expect("tempdir");
        let net = Net::new(c, (a("10.1.0.0"), 29), dir.path());
        let own = [a("10.1.0.3")];
        let got: Vec<Ipv4Addr> = net.candidates(&own).collect();
        assert_eq!(
            got,
            ["10.1.0.1", "10.1.0.2", "10.1.0.4", "10.1.0.5", "10.1.0.6"].map(a)
        );
    }
}
