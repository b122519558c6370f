//! A network namespace of the drill's own, with veth links to the host that
//! can be cut (`ip link set … down` on the namespace's end) and restored, for
//! drill 2 (a cut network and a zombie) and drill 4 (a lost site). Needs root
//! and iproute2. Everything made here is removed when the guard drops, also
//! on a panic: deleting the namespace deletes its veth ends, and with them
//! their peers on the host.

use std::net::Ipv4Addr;
use std::process::Command;

/// One veth pair: the host's end and the namespace's end, a /30 between them.
#[derive(Debug, Clone)]
pub struct Link {
    pub name: &'static str,
    pub host_if: String,
    pub ns_if: String,
    pub host_addr: Ipv4Addr,
    pub ns_addr: Ipv4Addr,
}

/// A namespace and its links; removed on drop.
pub struct Netns {
    pub name: String,
    pub links: Vec<Link>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates namespace `inow-<tag>` with one link per name, the n-th on
    /// 10.<base>.<n+1>.0/30 (host .1, namespace .2). `base` keeps two drills'
    /// subnets apart; a namespace left by a killed run of the same tag is removed first.
    pub fn create(tag: &str, base: u8, names: &[&'static str]) -> Result<Netns, String> {
        let name = format!("inow-{tag}");
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let mut ns = Netns {
            name,
            links: Vec::new(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        for (i, link) in names.iter().enumerate() {
            let third = i as u8 + 1;
            let l = Link {
                name: link,
                host_if: format!("in{tag}{i}h"),
                ns_if: format!("in{tag}{i}n"),
                host_addr: Ipv4Addr::new(10, base, third, 1),
                ns_addr: Ipv4Addr::new(10, base, third, 2),
            };
            let _ = ip(&["link", "del", &l.host_if]);
            ip(&[
                "link", "add", &l.host_if, "type", "veth", "peer", "name", &l.ns_if, "netns", &ns.name,
            ])?;
            ip(&["addr", "add", &format!("{}/30", l.host_addr), "dev", &l.host_if])?;
            ip(&["link", "set", &l.host_if, "up"])?;
            ns.ip(&["addr", "add", &format!("{}/30", l.ns_addr), "dev", &l.ns_if])?;
            ns.ip(&["link", "set", &l.ns_if, "up"])?;
            ns.links.push(l);
        }
        Ok(ns)
    }

    /// `ip -n NS ARGS…`.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    pub fn link(&self, name: &str) -> &Link {
        self.links
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no link {name}"))
    }

    /// Cuts a link: its namespace end goes down, so packets either way are
    /// dropped silently (no reset), as on a cut cable. The host's address
    /// stays local to the host, so host processes using it are unaffected.
    pub fn cut(&self, name: &str) -> Result<(), String> {
        self.ip(&["link", "set", &self.link(name).ns_if, "down"])
    }

    /// Restores a cut link (its connected route comes back with it).
    pub fn restore(&self, name: &str) -> Result<(), String> {
        self.ip(&["link", "set", &self.link(name).ns_if, "up"])
    }

    /// A command run inside the namespace (`ip netns exec NS PROGRAM`): the
    /// program replaces `ip`, so the child's pid is the program's.
    pub fn command(&self, program: &std::ffi::OsStr) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        for l in &self.links {
            let _ = ip(&["link", "del", &l.host_if]);
        }
    }
}

/// Whether a TCP connection from inside the namespace to `addr:port` opens within 2 s.
pub fn reaches(ns: &Netns, addr: Ipv4Addr, port: u16) -> bool {
    ns.command("timeout".as_ref())
        .args(["2", "bash", "-c", &format!("exec 3<>/dev/tcp/{addr}/{port}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
