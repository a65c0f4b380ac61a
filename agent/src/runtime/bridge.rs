//! Bridge networking (`networkMode: "bridge"`), as Docker's and ECS's bridge mode: a Linux
//! bridge on the node (`skiff0`, the subnet's first address), per task a veth pair whose task
//! end is `eth0` in the task's named network namespace with an address from the subnet and a
//! default route via the bridge, outbound traffic masqueraded, and the task's `portMappings`
//! forwarded from the node's own addresses (dynamic host ports from the ephemeral range).
//!
//! - Links and addresses go through netlink (`netlink.rs`); NAT and port mappings through
//!   nftables in the table skiff owns (`nft.rs`).
//! - Each task's allocation (address, host veth, host ports) is a file in `run_dir/net/`,
//!   written before anything is created: removing the task (or `cleanup_stale` after a
//!   `kill -9`) finds what to undo there, and a sweep removes skiff's veths and mappings that
//!   no allocation explains.
//! - Host veths are named `sk` + 4 hex digits of the bridge + the task's address in hex (14
//!   characters, unique while the address is allocated), with the task's name as the link's
//!   alias (`ip link` shows it).
//! - Nothing is made on the node before the first bridge task; [`probe`] checks at start-up,
//!   in a throwaway network namespace, that the kernel has what bridge mode needs.
//! - Every container of a bridge or `none` task gets an `/etc/hosts` and an `/etc/resolv.conf`
//!   (bind mounts of files in the task's directory).

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use skiff_proto::{Endpoint, Protocol, TaskDefinition};

use super::netlink::Netlink;
use super::nft::{self, Mapping};

/// `[network]` of the agent's configuration, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// The bridge of `bridge` tasks (made if missing). Default `skiff0`.
    pub bridge: String,
    /// The bridge's IPv4 subnet; the bridge gets its first address. Default `10.88.0.0/24`.
    pub subnet: String,
    /// Dynamic host ports, `FIRST-LAST`. Default ECS's `49153-65535`.
    pub ephemeral_ports: String,
    /// Name servers of the containers' `/etc/resolv.conf`. Default: the host's.
    pub dns: Option<Vec<String>>,
    /// `awsvpc` tasks: the node's interface on the LAN whose macvlan children they get. Unset:
    /// no awsvpc networking (see `awsvpc.rs`).
    pub awsvpc_parent: Option<String>,
    /// `awsvpc` tasks' addresses: `A.B.C.D/N` or `FIRST-LAST`, reserved for this node.
    pub awsvpc_pool: Option<String>,
    /// The LAN's subnet, which gives the tasks' prefix length. Default: the parent's own
    /// address's subnet that holds the pool.
    pub awsvpc_subnet: Option<String>,
    /// The `awsvpc` tasks' default gateway. Unset: they reach the LAN only.
    pub awsvpc_gateway: Option<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            bridge: "skiff0".into(),
            subnet: "10.88.0.0/24".into(),
            ephemeral_ports: "49153-65535".into(),
            dns: None,
            awsvpc_parent: None,
            awsvpc_pool: None,
            awsvpc_subnet: None,
            awsvpc_gateway: None,
        }
    }
}

/// Bridge networking settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    pub bridge: String,
    /// The subnet's network address.
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    pub ephemeral_ports: (u16, u16),
    /// `None`: the host's name servers.
    pub dns: Option<Vec<IpAddr>>,
}

/// A `[network]` field with a bad value: (field, problem).
pub type NetworkConfigError = (&'static str, String);

impl NetworkConfig {
    pub fn validate(&self) -> Result<BridgeConfig, NetworkConfigError> {
        let b = &self.bridge;
        if b.is_empty()
            || b.len() > 15
            || !b
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
        {
            return Err((
                "network.bridge",
                format!("{b:?}: an interface name of 1 to 15 letters, digits, '_', '.' or '-'"),
            ));
        }
        let (subnet, prefix) = parse_subnet(&self.subnet).map_err(|e| ("network.subnet", e))?;
        let ports =
            parse_range(&self.ephemeral_ports).map_err(|e| ("network.ephemeral_ports", e))?;
        let dns = match &self.dns {
            None => None,
            Some(list) => {
                if list.len() > 3 {
                    return Err((
                        "network.dns",
                        format!(
                            "{} servers, at most 3 (resolv.conf reads no more)",
                            list.len()
                        ),
                    ));
                }
                let mut out = Vec::new();
                for s in list {
                    let ip: IpAddr = s
                        .parse()
                        .map_err(|_| ("network.dns", format!("{s:?} is not an IP address")))?;
                    if ip.is_loopback() {
                        return Err((
                            "network.dns",
                            format!(
                                "{ip} is a loopback address: a container's loopback is its own"
                            ),
                        ));
                    }
                    out.push(ip);
                }
                Some(out)
            }
        };
        Ok(BridgeConfig {
            bridge: b.clone(),
            subnet,
            prefix,
            ephemeral_ports: ports,
            dns,
        })
    }
}

pub(crate) fn parse_subnet(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("{s:?}: expected an IPv4 subnet such as 10.88.0.0/24 (prefix 8..=30)");
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&prefix) {
        return Err(bad());
    }
    let net = Ipv4Addr::from(u32::from(addr) & mask(prefix));
    if net != addr {
        return Err(format!(
            "{s:?} is not a network address: use {net}/{prefix}"
        ));
    }
    Ok((net, prefix))
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?}: expected FIRST-LAST within 1024..=65535, e.g. 49153-65535");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a < 1024 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

pub(crate) fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

impl BridgeConfig {
    /// The bridge's own address: the subnet's first.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 1)
    }

    /// Task addresses: the subnet without its network, gateway and broadcast addresses.
    fn task_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.subnet) + 2;
        let broadcast = u32::from(self.subnet) | !mask(self.prefix);
        (first..broadcast).map(Ipv4Addr::from)
    }

    /// 4 hex digits naming the bridge in its veths' names.
    fn tag(&self) -> String {
        hex::encode(&Sha256::digest(self.bridge.as_bytes())[..2])
    }

    /// The host end of the veth of the task at `address`.
    fn veth_name(&self, address: Ipv4Addr) -> String {
        format!("sk{}{:08x}", self.tag(), u32::from(address))
    }

    fn is_our_veth(&self, name: &str) -> bool {
        name.len() == 14
            && name.starts_with(&format!("sk{}", self.tag()))
            && name[6..].bytes().all(|b| b.is_ascii_hexdigit())
    }
}

/// The name servers and search domains of the containers' resolv.conf when the configuration
/// names none: the host's `/etc/resolv.conf` (`resolv`), with loopback servers (systemd-resolved's
/// 127.0.0.53, a local dnsmasq) replaced by the upstream servers systemd-resolved lists
/// (`upstream`: `/run/systemd/resolve/resolv.conf`). The warning says what was left out.
pub fn host_dns(
    resolv: &str,
    upstream: Option<&str>,
) -> (Vec<IpAddr>, Vec<String>, Option<String>) {
    let servers = |text: &str| -> Vec<IpAddr> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|s| s.trim().split('%').next().and_then(|a| a.parse().ok()))
            .collect()
    };
    let search: Vec<String> = resolv
        .lines()
        .filter_map(|l| l.trim().strip_prefix("search"))
        .flat_map(|s| s.split_whitespace().map(str::to_owned))
        .take(6)
        .collect();
    let all = servers(resolv);
    let mut out: Vec<IpAddr> = all.iter().copied().filter(|ip| !ip.is_loopback()).collect();
    let loopback: Vec<IpAddr> = all.iter().copied().filter(|ip| ip.is_loopback()).collect();
    let mut warning = None;
    if !loopback.is_empty() {
        let up: Vec<IpAddr> = upstream
            .map(servers)
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| !ip.is_loopback())
            .collect();
        if up.is_empty() && out.is_empty() {
            warning = Some(format!(
                "the host's name servers ({}) are loopback addresses, which containers can't reach, \
                 and no upstream servers were found in /run/systemd/resolve/resolv.conf: bridge \
                 tasks get no DNS; set [network] dns",
                loopback.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ));
        }
        for ip in up {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out.truncate(3);
    (out, search, warning)
}

/// `/etc/resolv.conf` of a container.
pub(crate) fn resolv_conf(servers: &[IpAddr], search: &[String]) -> String {
    let mut out = String::from("# written by skiff\n");
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    out
}

/// `/etc/hosts` of a container: localhost, and the task's host name at its address.
pub(crate) fn hosts(hostname: &str, address: Option<Ipv4Addr>) -> String {
    let own = address.map_or("127.0.1.1".to_owned(), |a| a.to_string());
    format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{hostname}\n")
}

/// What one task holds: written to `run_dir/net/{task}` before anything is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Allocation {
    bridge: String,
    address: Ipv4Addr,
    veth: String,
    endpoints: Vec<Endpoint>,
}

/// A prepared task's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskNet {
    pub address: Ipv4Addr,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Default)]
struct State {
    /// The bridge, its address, the sysctls and the nftables objects are in place.
    ready: bool,
    /// Where the search for the next dynamic port starts (ports rotate, as ECS's do).
    next_port: Option<u16>,
}

/// The bridge network of one agent.
#[derive(Debug)]
pub(crate) struct Network {
    cfg: BridgeConfig,
    /// `run_dir/net`: one allocation file per task.
    dir: PathBuf,
    dns: Vec<IpAddr>,
    search: Vec<String>,
    state: Mutex<State>,
}

fn err(what: &str) -> impl FnOnce(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Checks, in a throwaway network namespace, that the kernel can make bridges and veth pairs,
/// and with `nft -c` that nftables can hold the bridge's NAT rules. The error names what is
/// missing.
pub(crate) fn probe(cfg: &BridgeConfig) -> Result<(), String> {
    let mut missing = Vec::new();
    let links = std::thread::Builder::new()
        .name("skiff-net-probe".into())
        .spawn(|| -> Result<(), String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("a network namespace: {e}"))?;
            let mut nl = Netlink::new().map_err(err("netlink"))?;
            let br = nl.add_bridge("skprobe0").map_err(|e| {
                format!("bridge links: {e} (kernel option CONFIG_BRIDGE, module bridge)")
            })?;
            nl.add_veth("skprobe1", "skprobe2", br.index, "skiff probe", None)
                .map_err(|e| format!("veth links: {e} (kernel option CONFIG_VETH, module veth)"))?;
            Ok(())
        })
        .map_err(|e| format!("probe thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the probe thread panicked".into()));
    if let Err(e) = links {
        missing.push(e);
    }
    if let Err(e) = nft::run(&nft::base_script(&cfg.bridge, cfg.subnet, cfg.prefix), true) {
        missing.push(format!(
            "nftables NAT: {e} (kernel options CONFIG_NF_TABLES, CONFIG_NFT_NAT, CONFIG_NFT_FIB_IPV4, \
             CONFIG_NFT_MASQ; the nft command)"
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

fn write_sysctl(path: &str, value: &str) -> Result<(), String> {
    match fs::read_to_string(path) {
        Ok(v) if v.trim() == value => Ok(()),
        _ => fs::write(path, value).map_err(|e| format!("cannot set {path} to {value}: {e}")),
    }
}

/// A port is free on the node when it can be bound (and skiff has not mapped it).
fn bindable(protocol: Protocol, port: u16) -> bool {
    let addr = (Ipv4Addr::UNSPECIFIED, port);
    match protocol {
        Protocol::Tcp => TcpListener::bind(addr).is_ok(),
        Protocol::Udp => UdpSocket::bind(addr).is_ok(),
    }
}

/// The name servers and search domains of bridge and awsvpc tasks: `configured`, else the
/// host's ([`host_dns`], warning about what it left out).
pub(crate) fn task_dns(configured: Option<&[IpAddr]>) -> (Vec<IpAddr>, Vec<String>) {
    match configured {
        Some(d) => (d.to_vec(), Vec::new()),
        None => {
            let resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let upstream = fs::read_to_string("/run/systemd/resolve/resolv.conf").ok();
            let (dns, search, warning) = host_dns(&resolv, upstream.as_deref());
            if let Some(w) = warning {
                tracing::warn!("{w}");
            }
            (dns, search)
        }
    }
}

impl Network {
    pub(crate) fn new(cfg: BridgeConfig, run_dir: &Path) -> Network {
        let (dns, search) = task_dns(cfg.dns.as_deref());
        Network {
            cfg,
            dir: run_dir.join("net"),
            dns,
            search,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    pub(crate) fn resolv_conf(&self) -> String {
        resolv_conf(&self.dns, &self.search)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bridge with its address, up; forwarding and `route_localnet` on; the nftables
    /// objects. Once per agent run (the bridge is checked again at every attach).
    fn ensure_ready(&self, st: &mut State, nl: &mut Netlink) -> Result<u32, String> {
        let c = &self.cfg;
        let br = match nl.link(&c.bridge).map_err(err("netlink"))? {
            Some(l) => l,
            None => match nl.add_bridge(&c.bridge) {
                Ok(l) => l,
                // Made meanwhile by someone else.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => nl
                    .link(&c.bridge)
                    .map_err(err("netlink"))?
                    .ok_or_else(|| format!("bridge {} vanished", c.bridge))?,
                Err(e) => return Err(format!("cannot create the bridge {}: {e}", c.bridge)),
            },
        };
        if br.kind.as_deref() != Some("bridge") {
            return Err(format!(
                "{} exists and is not a bridge (it is {}); set [network] bridge",
                c.bridge,
                br.kind.as_deref().unwrap_or("a device")
            ));
        }
        if st.ready {
            return Ok(br.index);
        }
        let gw = c.gateway();
        let addrs = nl.addresses(br.index).map_err(err("netlink"))?;
        if !addrs.contains(&(gw, c.prefix)) {
            match nl.add_address(br.index, gw, c.prefix) {
                Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                    return Err(format!("cannot give {} the address {gw}: {e}", c.bridge))
                }
                _ => {}
            }
        }
        nl.set_up(br.index)
            .map_err(|e| format!("cannot bring {} up: {e}", c.bridge))?;
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        write_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", c.bridge),
            "1",
        )?;
        nft::run(&nft::base_script(&c.bridge, c.subnet, c.prefix), false)
            .map_err(|e| format!("cannot set up the nftables rules of {}: {e}", c.bridge))?;
        st.ready = true;
        Ok(br.index)
    }

    fn allocations(&self) -> Result<Vec<(String, Allocation)>, String> {
        read_allocations(&self.dir, "network")
    }

    fn save(&self, task: &str, a: &Allocation) -> Result<(), String> {
        fs::create_dir_all(&self.dir).map_err(err("cannot create the allocation directory"))?;
        let tmp = self.dir.join(format!(".{task}.tmp"));
        let bytes = serde_json::to_vec(a).map_err(|e| e.to_string())?;
        fs::write(&tmp, bytes).map_err(err("cannot write the network allocation"))?;
        fs::rename(&tmp, self.dir.join(task)).map_err(err("cannot write the network allocation"))
    }

    /// Picks the task's address and host ports (static ones checked, dynamic ones found).
    fn allocate(
        &self,
        st: &mut State,
        task: &TaskDefinition,
        taken: &[(String, Allocation)],
    ) -> Result<Allocation, String> {
        let name = task.family.as_str();
        let address = self
            .cfg
            .task_addresses()
            .find(|a| taken.iter().all(|(_, t)| t.address != *a))
            .ok_or_else(|| {
                format!(
                    "no free address left in {}/{} for task {name}",
                    self.cfg.subnet, self.cfg.prefix
                )
            })?;
        let mut used: Vec<(Protocol, u16, &str)> = taken
            .iter()
            .flat_map(|(t, a)| {
                a.endpoints
                    .iter()
                    .map(move |e| (e.protocol, e.host_port, t.as_str()))
            })
            .collect();
        let mut endpoints = Vec::new();
        // Static ports first, so a dynamic one never takes a port the task maps statically.
        for c in &task.containers {
            for m in c.port_mappings.iter().filter(|m| m.host_port.is_some()) {
                let port = m.host_port.unwrap_or_default();
                let proto = crate::ecs::protocol_str(m.protocol);
                if let Some((_, _, owner)) = used
                    .iter()
                    .find(|(p, hp, _)| *p == m.protocol && *hp == port)
                {
                    return Err(format!(
                        "host port {port}/{proto} of container {} is mapped already by task {owner}",
                        c.name
                    ));
                }
                if !bindable(m.protocol, port) {
                    return Err(format!(
                        "host port {port}/{proto} of container {} is in use on this node",
                        c.name
                    ));
                }
                used.push((m.protocol, port, name));
                endpoints.push((c.name.clone(), *m, port));
            }
        }
        let (first, last) = self.cfg.ephemeral_ports;
        for c in &task.containers {
            for m in c.port_mappings.iter().filter(|m| m.host_port.is_none()) {
                let span = u32::from(last - first) + 1;
                let start = st
                    .next_port
                    .filter(|p| (first..=last).contains(p))
                    .unwrap_or(first);
                let found = (0..span)
                    .map(|i| {
                        let off = (u32::from(start - first) + i) % span;
                        first + u16::try_from(off).unwrap_or(0)
                    })
                    .find(|&p| {
                        !used.iter().any(|(pr, hp, _)| *pr == m.protocol && *hp == p)
                            && bindable(m.protocol, p)
                    })
                    .ok_or_else(|| {
                        format!(
                            "no free host port left in {first}-{last} for container {} port {}",
                            c.name, m.container_port
                        )
                    })?;
                st.next_port = Some(if found == last { first } else { found + 1 });
                used.push((m.protocol, found, name));
                endpoints.push((c.name.clone(), *m, found));
            }
        }
        // Report in the definition's order.
        let mut ordered = Vec::new();
        for c in &task.containers {
            for m in &c.port_mappings {
                if let Some((_, _, hp)) = endpoints
                    .iter()
                    .find(|(cn, pm, _)| *cn == c.name && pm == m)
                {
                    ordered.push(Endpoint {
                        container: c.name.clone(),
                        container_port: m.container_port,
                        host_port: *hp,
                        protocol: m.protocol,
                        address: address.to_string(),
                    });
                }
            }
        }
        Ok(Allocation {
            bridge: self.cfg.bridge.clone(),
            address,
            veth: self.cfg.veth_name(address),
            endpoints: ordered,
        })
    }

    /// Connects the task's network namespace (`netns`, a named namespace with `lo` up) to the
    /// bridge and maps its ports. On error the caller removes what was made with [`detach`].
    pub(crate) fn attach(&self, task: &TaskDefinition, netns: &Path) -> Result<TaskNet, String> {
        let mut st = self.lock();
        let mut nl = Netlink::new().map_err(err("netlink"))?;
        let bridge = self.ensure_ready(&mut st, &mut nl)?;
        let taken = self.allocations()?;
        let name = task.family.as_str();
        if taken.iter().any(|(t, _)| t == name) {
            return Err(format!("task {name} has a network allocation already"));
        }
        let a = self.allocate(&mut st, task, &taken)?;
        self.save(name, &a)?;

        let ns = fs::File::open(netns).map_err(err("cannot open the task's network namespace"))?;
        let veth = nl
            .add_veth(
                &a.veth,
                "eth0",
                bridge,
                &format!("skiff task {name}"),
                Some(ns.as_raw_fd()),
            )
            .map_err(|e| format!("cannot create the veth pair {}: {e}", a.veth))?;
        nl.set_up(veth.index)
            .map_err(|e| format!("cannot bring {} up: {e}", a.veth))?;
        // A task can reach its own mapped ports through the node (hairpin).
        let hairpin = format!("/sys/class/net/{}/brport/hairpin_mode", a.veth);
        if let Err(e) = fs::write(&hairpin, "1") {
            tracing::debug!(error = %e, path = hairpin, "cannot set hairpin mode");
        }
        let (address, prefix, gateway) = (a.address, self.cfg.prefix, self.cfg.gateway());
        std::thread::Builder::new()
            .name("skiff-netns-cfg".into())
            .spawn(move || -> Result<(), String> {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("cannot enter the task's network namespace: {e}"))?;
                let mut nl = Netlink::new().map_err(err("netlink"))?;
                let eth0 = nl
                    .link("eth0")
                    .map_err(err("netlink"))?
                    .ok_or("eth0 did not arrive in the task's network namespace")?;
                nl.add_address(eth0.index, address, prefix)
                    .map_err(|e| format!("cannot give eth0 the address {address}: {e}"))?;
                nl.set_up(eth0.index).map_err(err("cannot bring eth0 up"))?;
                nl.add_default_route(gateway)
                    .map_err(|e| format!("cannot route via {gateway}: {e}"))
            })
            .map_err(|e| format!("thread: {e}"))?
            .join()
            .unwrap_or_else(|_| Err("the namespace thread panicked".into()))?;

        let mappings: Vec<Mapping> = a
            .endpoints
            .iter()
            .map(|e| Mapping {
                protocol: e.protocol,
                host_port: e.host_port,
                address: a.address,
                container_port: e.container_port,
            })
            .collect();
        nft::run(&nft::add_script(&self.cfg.bridge, &mappings), false)
            .map_err(|e| format!("cannot map the ports of task {name}: {e}"))?;
        Ok(TaskNet {
            address: a.address,
            endpoints: a.endpoints,
        })
    }

    /// Removes what [`attach`] made for the task (its veth, its port mappings, its
    /// allocation). A task without an allocation is fine.
    pub(crate) fn detach(&self, task: &str) -> Result<(), String> {
        let _st = self.lock();
        let path = self.dir.join(task);
        let a: Allocation = match fs::read(&path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(task, error = %e, "unreadable network allocation; the sweep removes its leftovers");
                    return fs::remove_file(&path).map_err(err("cannot remove the allocation"));
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        // The mappings first: once the veth is gone nothing may still point at its address.
        self.unmap(|m| m.address == a.address)?;
        let mut nl = Netlink::new().map_err(err("netlink"))?;
        if let Some(l) = nl.link(&a.veth).map_err(err("netlink"))? {
            nl.delete_link(l.index)
                .map_err(|e| format!("cannot delete {}: {e}", a.veth))?;
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(format!("cannot remove {}: {e}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Deletes the bridge's port mappings that `doomed` picks; returns how many.
    fn unmap(&self, doomed: impl Fn(&Mapping) -> bool) -> Result<usize, String> {
        let gone: Vec<Mapping> = nft::list(&self.cfg.bridge)
            .map_err(err("cannot list the port mappings"))?
            .into_iter()
            .filter(|m| doomed(m))
            .collect();
        nft::run(&nft::delete_script(&self.cfg.bridge, &gone), false)
            .map_err(|e| format!("cannot delete port mappings: {e}"))?;
        Ok(gone.len())
    }

    /// Removes skiff's veths on this bridge and port mappings that no allocation explains
    /// (left by a `kill -9` of an earlier agent). Returns what it removed.
    pub(crate) fn sweep(&self) -> Result<Vec<String>, String> {
        let live = self.allocations()?;
        let _st = self.lock();
        let mut removed = Vec::new();
        let mut nl = Netlink::new().map_err(err("netlink"))?;
        for l in nl.links().map_err(err("netlink"))? {
            if l.kind.as_deref() == Some("veth")
                && self.cfg.is_our_veth(&l.name)
                && live.iter().all(|(_, a)| a.veth != l.name)
            {
                nl.delete_link(l.index)
                    .map_err(|e| format!("cannot delete {}: {e}", l.name))?;
                removed.push(format!("veth {}", l.name));
            }
        }
        let n = self.unmap(|m| live.iter().all(|(_, a)| a.address != m.address))?;
        if n > 0 {
            removed.push(format!("{n} port mapping(s)"));
        }
        Ok(removed)
    }

    /// Tasks with an allocation file.
    pub(crate) fn allocated_tasks(&self) -> Vec<String> {
        self.allocations()
            .map(|v| v.into_iter().map(|(t, _)| t).collect())
            .unwrap_or_default()
    }
}

/// The allocation files of `dir` (one per task, named after it; dot files are temporary):
/// a missing directory is none, an unreadable file is skipped with a warning naming `what`.
pub(super) fn read_allocations<A: serde::de::DeserializeOwned>(
    dir: &Path,
    what: &str,
) -> Result<Vec<(String, A)>, String> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    for e in entries.flatten() {
        let Some(task) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if task.starts_with('.') {
            continue;
        }
        match fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<A>(&b).ok())
        {
            Some(a) => out.push((task, a)),
            None => tracing::warn!(file = %e.path().display(), "unreadable {what} allocation"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> Result<BridgeConfig, NetworkConfigError> {
        let c: NetworkConfig = toml::from_str(toml_text).expect("toml");
        c.validate()
    }

    #[test]
    fn defaults_are_ecs_like() {
        let c = cfg("").expect("valid");
        assert_eq!(c.bridge, "skiff0");
        assert_eq!((c.subnet, c.prefix), (Ipv4Addr::new(10, 88, 0, 0), 24));
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(c.ephemeral_ports, (49153, 65535));
        assert_eq!(c.dns, None);
        let addrs: Vec<Ipv4Addr> = c.task_addresses().collect();
        assert_eq!(addrs.len(), 253);
        assert_eq!(addrs[0], Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(addrs[252], Ipv4Addr::new(10, 88, 0, 254));
    }

    #[test]
    fn bad_values_are_named() {
        let e = |t: &str| cfg(t).expect_err(t);
        assert_eq!(e("bridge = 'a/b'").0, "network.bridge");
        assert_eq!(e("bridge = 'waytoolongbridge0'").0, "network.bridge");
        assert_eq!(
            e("subnet = '10.88.0.1/24'").1,
            "\"10.88.0.1/24\" is not a network address: use 10.88.0.0/24"
        );
        assert_eq!(e("subnet = '10.88.0.0/31'").0, "network.subnet");
        assert_eq!(e("subnet = '10.88.0.0'").0, "network.subnet");
        assert_eq!(
            e("ephemeral_ports = '100-200'").0,
            "network.ephemeral_ports"
        );
        assert_eq!(
            e("ephemeral_ports = '60000-50000'").0,
            "network.ephemeral_ports"
        );
        assert_eq!(
            e("dns = ['127.0.0.53']").1,
            "127.0.0.53 is a loopback address: a container's loopback is its own"
        );
        assert_eq!(e("dns = ['x']").1, "\"x\" is not an IP address");
        let ok = cfg("bridge = 'br-lan'\nsubnet = '172.30.8.0/22'\nephemeral_ports = '40000-40099'\ndns = ['1.1.1.1', '2606:4700::1111']")
            .expect("valid");
        assert_eq!(ok.ephemeral_ports, (40000, 40099));
        assert_eq!(ok.gateway(), Ipv4Addr::new(172, 30, 8, 1));
        assert_eq!(ok.task_addresses().count(), 1021);
        assert_eq!(ok.dns.expect("dns").len(), 2);
    }

    #[test]
    fn veth_names_fit_and_are_recognised() {
        let c = cfg("").expect("valid");
        let name = c.veth_name(Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(name.len(), 14);
        assert!(
            name.starts_with("sk") && name.ends_with("0a580002"),
            "{name}"
        );
        assert!(c.is_our_veth(&name));
        let other = cfg("bridge = 'other0'").expect("valid");
        assert!(!other.is_our_veth(&name));
        assert!(!c.is_our_veth("eth0"));
    }

    #[test]
    fn host_dns_replaces_loopback_servers_by_upstreams() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let (d, s, w) = host_dns("nameserver 10.255.255.53\nsearch lan example\n", None);
        assert_eq!(
            (d, s, w),
            (
                vec![ip("10.255.255.53")],
                vec!["lan".into(), "example".into()],
                None
            )
        );
        let resolved = "nameserver 127.0.0.53\noptions edns0\n";
        let (d, _, w) = host_dns(
            resolved,
            Some("nameserver 192.168.1.1\nnameserver 9.9.9.9\n"),
        );
        assert_eq!(d, vec![ip("192.168.1.1"), ip("9.9.9.9")]);
        assert_eq!(w, None);
        let (d, _, w) = host_dns(resolved, None);
        assert!(d.is_empty());
        assert!(w.expect("warning").contains("127.0.0.53"));
        let (d, _, w) = host_dns("nameserver 127.0.0.1\nnameserver 1.1.1.1\n", None);
        assert_eq!((d, w), (vec![ip("1.1.1.1")], None));
    }

    #[test]
    fn etc_files() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            resolv_conf(&[ip("1.1.1.1"), ip("9.9.9.9")], &["lan".into()]),
            "# written by skiff\nnameserver 1.1.1.1\nnameserver 9.9.9.9\nsearch lan\n"
        );
        assert_eq!(
            hosts("web.1", Some(Ipv4Addr::new(10, 88, 0, 2))),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.88.0.2\tweb.1\n"
        );
        assert!(hosts("job", None).ends_with("127.0.1.1\tjob\n"));
    }
}
