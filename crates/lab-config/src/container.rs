//! Machines that are containers on another machine of the inventory
//! (`on = "HOST"` in `[machines.NAME]`): their settings as lab.toml gives
//! them, checked against the whole inventory (the host exists and is no
//! container itself, host ports and addresses do not clash, an address is
//! inside its host's range), and the addresses lab picks for the others.

use crate::ConfigError;
use std::net::Ipv4Addr;
use toml::Spanned;

/// The range a host's containers take their addresses from when the host
/// names none (`machines_range`): the host's bridge is its first address.
pub const DEFAULT_RANGE: &str = "10.231.0.0/24";

/// A machine that is a container on another machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Container {
    /// The host machine's name.
    pub on: String,
    /// Its base root: an image of the project (`images/NAME.tar` or
    /// `images/NAME/`, shipped to the host by lab), or an absolute
    /// directory on the host.
    pub image: String,
    /// `MemoryMax=` of its unit (a systemd size: `256M`).
    pub memory: Option<String>,
    /// CPUs it may use (`CPUQuota=` of cpus × 100 %).
    pub cpus: Option<f64>,
    /// Host port to container port forwards.
    pub ports: Vec<PortForward>,
    /// Its address on the host's bridge.
    pub address: Ipv4Addr,
    /// `address` was set in lab.toml (else lab picked it).
    pub address_set: bool,
}

impl Container {
    /// The name of the project's image it is based on, when `image` names
    /// one (else `image` is a directory on the host).
    pub fn lab_image(&self) -> Option<&str> {
        (!self.image.starts_with('/')).then_some(self.image.as_str())
    }
}

/// `ports = ["2201:22"]`: TCP on the host's port to the container's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortForward {
    pub host: u16,
    pub container: u16,
}

/// A host's range for its containers' addresses (an IPv4 prefix of 16 to
/// 29 bits): the bridge takes the first address, containers the others
/// but the last (broadcast).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineRange {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl MachineRange {
    pub fn parse(s: &str) -> Option<MachineRange> {
        let (a, p) = s.split_once('/')?;
        let addr: Ipv4Addr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok().filter(|p| (16..=29).contains(p))?;
        let mask = u32::MAX << (32 - prefix);
        (u32::from(addr) & !mask == 0).then_some(MachineRange {
            network: addr,
            prefix,
        })
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    /// The host's address on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Whether `a` may be a container's address.
    pub fn holds(&self, a: Ipv4Addr) -> bool {
        let off = u32::from(a).wrapping_sub(u32::from(self.network));
        off >= 2 && off < self.size() - 1
    }

    fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + i)
    }
}

impl std::fmt::Display for MachineRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A container's keys as lab.toml wrote them.
pub(crate) struct RawContainer {
    pub name: String,
    pub on: Spanned<String>,
    pub image: Option<Spanned<String>>,
    pub memory: Option<Spanned<String>>,
    pub cpus: Option<Spanned<toml::Value>>,
    pub ports: Vec<Spanned<String>>,
    pub address: Option<Spanned<String>>,
    /// The span of `[machines.NAME]`.
    pub span: std::ops::Range<usize>,
}

/// Each container by name, then each host's range by name.
type Resolved = (Vec<(String, Container)>, Vec<(String, MachineRange)>);

type Invalid<'a> = dyn Fn(std::ops::Range<usize>, String, Option<String>) -> ConfigError + 'a;

/// Check every container against the inventory and resolve its address.
/// `hosts`: (name, range of the machine if it set one, is local, its SSH
/// port).
/// Returns the containers in the order given, then each host's range.
pub(crate) fn resolve(
    raw: Vec<RawContainer>,
    hosts: &[(String, Option<Spanned<String>>, bool, u16)],
    invalid: &Invalid<'_>,
) -> Result<Resolved, ConfigError> {
    let mut ranges: Vec<(String, MachineRange)> = Vec::new();
    for (name, range, _, _) in hosts {
        let r = match range {
            None => MachineRange::parse(DEFAULT_RANGE).expect("default range"),
            Some(r) => MachineRange::parse(r.get_ref()).ok_or_else(|| {
                invalid(
                    r.span(),
                    format!("`{}` is not an IPv4 network", r.get_ref()),
                    Some("write a network address and a prefix of 16 to 29 bits, like `10.231.0.0/24`".into()),
                )
            })?,
        };
        ranges.push((name.clone(), r));
    }
    let range_of = |h: &str| ranges.iter().find(|(n, _)| n == h).map(|(_, r)| *r);
    let container_names: Vec<&str> = raw.iter().map(|c| c.name.as_str()).collect();

    // first pass: everything but automatic addresses
    let mut out: Vec<(String, Container)> = Vec::new();
    // (host, host port) -> container name; (host, address) -> container name
    let mut ports_taken: Vec<(String, u16, String)> = Vec::new();
    let mut addrs_taken: Vec<(String, Ipv4Addr, String)> = Vec::new();
    for c in &raw {
        let on = c.on.get_ref();
        let n = &c.name;
        if n.is_empty()
            || n.len() > 60
            || n.starts_with('-')
            || n.ends_with('-')
            || !n
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
        {
            return Err(invalid(
                c.span.clone(),
                format!("`{n}` cannot name a container machine: it becomes its host name"),
                Some("use lower-case letters, digits and `-` (at most 60)".into()),
            ));
        }
        if on == &c.name {
            return Err(invalid(
                c.on.span(),
                format!("machine `{}` cannot be a container on itself", c.name),
                None,
            ));
        }
        if container_names.contains(&on.as_str()) {
            return Err(invalid(
                c.on.span(),
                format!("`{on}` is itself a container: a container cannot host containers"),
                Some("put it `on` the machine that hosts `{on}`".replace("{on}", on)),
            ));
        }
        let Some((_, _, local, ssh_port)) = hosts.iter().find(|(n, _, _, _)| n == on) else {
            return Err(invalid(
                c.on.span(),
                format!("unknown host machine `{on}`"),
                Some("`on` names another machine of this lab.toml".into()),
            ));
        };
        if *local {
            return Err(invalid(
                c.on.span(),
                format!("`{on}` is a `transport = \"local\"` machine and cannot host containers"),
                None,
            ));
        }
        let range = range_of(on).expect("every machine has a range");
        let Some(image) = &c.image else {
            return Err(invalid(
                c.span.clone(),
                format!("container machine `{}` has no `image`", c.name),
                Some("add `image = \"NAME\"` (an image of the project) or `image = \"/DIR\"` (a base root directory on the host)".into()),
            ));
        };
        let img = image.get_ref();
        let named = !img.starts_with('/');
        if named && lab_pods::image_name(img, true).is_none() {
            return Err(invalid(
                image.span(),
                format!("image `{img}` is neither an image of the project nor an absolute directory on the host"),
                Some("name an image the project ships (`images/NAME.tar` or `images/NAME/` gives `NAME`), or write a path like `/var/lib/lab/images/bookworm`".into()),
            ));
        }
        if !named
            && (img.len() < 2
                || img.split('/').any(|p| p == "..")
                || img
                    .chars()
                    .any(|ch| ch.is_control() || ch == ',' || ch == ':' || ch == '\\'))
        {
            return Err(invalid(
                image.span(),
                format!("image `{img}` is not a clean absolute directory on the host"),
                Some("write a path like `/var/lib/lab/images/bookworm` (no `..`, `,`, `:`)".into()),
            ));
        }
        let memory = match &c.memory {
            None => None,
            Some(m) => {
                let v = m.get_ref();
                let digits = v.trim_end_matches(['K', 'M', 'G', 'T']);
                let ok = !digits.is_empty()
                    && v.len() - digits.len() <= 1
                    && digits.chars().all(|ch| ch.is_ascii_digit())
                    && digits.parse::<u64>().is_ok_and(|n| n > 0);
                if !ok {
                    return Err(invalid(
                        m.span(),
                        format!("memory `{v}` is not a size"),
                        Some("write a number of bytes with K, M, G or T, like `256M`".into()),
                    ));
                }
                Some(v.clone())
            }
        };
        let cpus = match &c.cpus {
            None => None,
            Some(v) => {
                let n = match v.get_ref() {
                    toml::Value::Integer(i) => Some(*i as f64),
                    toml::Value::Float(f) => Some(*f),
                    _ => None,
                };
                match n {
                    Some(n) if n > 0.0 && n <= 1024.0 => Some(n),
                    _ => {
                        return Err(invalid(
                            v.span(),
                            format!("cpus `{}` is not a number of CPUs", v.get_ref()),
                            Some("write a number above 0, like `1` or `0.5`".into()),
                        ))
                    }
                }
            }
        };
        let mut ports = Vec::new();
        for p in &c.ports {
            let parsed = p.get_ref().split_once(':').and_then(|(h, c)| {
                let h: u16 = h.parse().ok().filter(|h| *h != 0)?;
                let c: u16 = c.parse().ok().filter(|c| *c != 0)?;
                Some(PortForward {
                    host: h,
                    container: c,
                })
            });
            let Some(f) = parsed else {
                return Err(invalid(
                    p.span(),
                    format!("`{}` is not a port forward", p.get_ref()),
                    Some("write `HOSTPORT:CONTAINERPORT`, like `2201:22`".into()),
                ));
            };
            if f.host == *ssh_port {
                return Err(invalid(
                    p.span(),
                    format!("port {} is `{on}`'s own SSH port: forwarding it would lock lab out of `{on}`", f.host),
                    Some("forward another host port, like `2201:22`".into()),
                ));
            }
            if let Some((_, _, other)) = ports_taken
                .iter()
                .find(|(h, hp, _)| h == on && *hp == f.host)
            {
                return Err(invalid(
                    p.span(),
                    format!(
                        "port {} of `{on}` is already forwarded to container `{other}`",
                        f.host
                    ),
                    Some("each host port forwards to one container".into()),
                ));
            }
            ports_taken.push((on.clone(), f.host, c.name.clone()));
            ports.push(f);
        }
        let address = match &c.address {
            None => None,
            Some(a) => {
                let v: Ipv4Addr = a.get_ref().parse().map_err(|_| {
                    invalid(
                        a.span(),
                        format!("`{}` is not an IPv4 address", a.get_ref()),
                        None,
                    )
                })?;
                if !range.holds(v) {
                    return Err(invalid(
                        a.span(),
                        format!("address {v} is outside `{on}`'s range {range} for containers"),
                        Some(format!(
                            "use an address from {} up, below the broadcast (or set `machines_range` on `{on}`)",
                            Ipv4Addr::from(u32::from(range.gateway()) + 1)
                        )),
                    ));
                }
                if let Some((_, _, other)) = addrs_taken.iter().find(|(h, x, _)| h == on && *x == v)
                {
                    return Err(invalid(
                        a.span(),
                        format!("address {v} is already container `{other}`'s on `{on}`"),
                        None,
                    ));
                }
                addrs_taken.push((on.clone(), v, c.name.clone()));
                Some(v)
            }
        };
        out.push((
            c.name.clone(),
            Container {
                on: on.clone(),
                image: img.clone(),
                memory,
                cpus,
                ports,
                address: address.unwrap_or(Ipv4Addr::UNSPECIFIED),
                address_set: address.is_some(),
            },
        ));
    }
    // then automatic addresses, in file order: the lowest free one
    for (i, (name, c)) in out.iter_mut().enumerate() {
        if c.address_set {
            continue;
        }
        let range = range_of(&c.on).expect("checked");
        let free = (2..range.size() - 1)
            .map(|n| range.nth(n))
            .find(|a| !addrs_taken.iter().any(|(h, x, _)| h == &c.on && x == a));
        let Some(a) = free else {
            return Err(invalid(
                raw[i].span.clone(),
                format!("no address left in `{}`'s range {range} for `{name}`", c.on),
                Some(format!("set a larger `machines_range` on `{}`", c.on)),
            ));
        };
        addrs_taken.push((c.on.clone(), a, name.clone()));
        c.address = a;
    }
    Ok((out, ranges))
}

#[cfg(test)]
mod tests {
    use crate::Project;
    use std::path::Path;

    fn parse(text: &str) -> Result<Project, String> {
        Project::parse(Path::new("/p"), Path::new("/p/lab.toml"), text.to_string()).map_err(|e| {
            let at = lab_core::Diagnose::location(&e).expect("located");
            format!("{}:{}:{}: {e}", at.path.display(), at.line, at.col)
        })
    }

    const HOST: &str = "[machines.host1]\nhost = \"10.0.0.1\"\n";

    #[test]
    fn containers_resolve_with_addresses_in_file_order() {
        let p = parse(&format!(
            "{HOST}[machines.c1]\non = \"host1\"\nimage = \"/srv/base\"\nmemory = \"256M\"\ncpus = 0.5\nports = [\"2201:22\"]\n\
             [machines.c2]\non = \"host1\"\nimage = \"/srv/base\"\naddress = \"10.231.0.2\"\n\
             [machines.c3]\non = \"host1\"\nimage = \"/srv/base\"\n"
        ))
        .unwrap();
        let c = |n: &str| p.machine(n).unwrap().container.clone().unwrap();
        assert_eq!(c("c2").address.to_string(), "10.231.0.2");
        assert_eq!(c("c1").address.to_string(), "10.231.0.3");
        assert_eq!(c("c3").address.to_string(), "10.231.0.4");
        assert_eq!(c("c1").memory.as_deref(), Some("256M"));
        assert_eq!(c("c1").cpus, Some(0.5));
        assert_eq!(c("c1").ports[0].host, 2201);
        let h = p.machine("host1").unwrap();
        assert!(h.container.is_none());
        assert_eq!(h.machines_range.unwrap().to_string(), "10.231.0.0/24");
    }

    #[test]
    fn bad_containers_are_located() {
        let cases = [
            (
                "[machines.c1]\non = \"nope\"\nimage = \"/b\"\n",
                "/p/lab.toml:2:6: unknown host machine `nope`",
            ),
            (
                &format!("{HOST}[machines.c1]\non = \"host1\"\nimage = \"/b\"\n[machines.c2]\non = \"c1\"\nimage = \"/b\"\n"),
                "/p/lab.toml:7:6: `c1` is itself a container: a container cannot host containers",
            ),
            (
                &format!("{HOST}[machines.c1]\non = \"host1\"\nimage = \"/b\"\nports = [\"2201:22\"]\n[machines.c2]\non = \"host1\"\nimage = \"/b\"\nports = [\"2201:22\"]\n"),
                "/p/lab.toml:10:10: port 2201 of `host1` is already forwarded to container `c1`",
            ),
            (
                &format!("{HOST}[machines.c1]\non = \"host1\"\nimage = \"/b\"\naddress = \"10.9.0.5\"\n"),
                "/p/lab.toml:6:11: address 10.9.0.5 is outside `host1`'s range 10.231.0.0/24 for containers",
            ),
            (
                &format!("{HOST}[machines.c1]\non = \"host1\"\nimage = \"/b\"\naddress = \"10.231.0.1\"\n"),
                "/p/lab.toml:6:11: address 10.231.0.1 is outside `host1`'s range 10.231.0.0/24 for containers",
            ),
            (
                &format!("{HOST}[machines.c1]\non = \"host1\"\nimage = \"b/c\"\n"),
                "/p/lab.toml:5:9: image `b/c` is neither an image of the project nor an absolute directory on the host",
            ),
            (
                &format!("{HOST}[machines.c1]\non = \"host1\"\nimage = \"/b/../c\"\n"),
                "/p/lab.toml:5:9: image `/b/../c` is not a clean absolute directory on the host",
            ),
            (
                &format!("{HOST}[machines.c1]\non = \"host1\"\n"),
                "/p/lab.toml:3:11: container machine `c1` has no `image`",
            ),
            (
                &format!("{HOST}[machines.c1]\non = \"host1\"\nimage = \"/b\"\nmemory = \"lots\"\n"),
                "/p/lab.toml:6:10: memory `lots` is not a size",
            ),
            (
                &format!("{HOST}[machines.c1]\non = \"host1\"\nimage = \"/b\"\ncpus = 0\n"),
                "/p/lab.toml:6:8: cpus `0` is not a number of CPUs",
            ),
            (
                &format!("{HOST}[machines.c1]\non = \"host1\"\nimage = \"/b\"\nports = [\"22\"]\n"),
                "/p/lab.toml:6:10: `22` is not a port forward",
            ),
            (
                &format!("{HOST}[machines.c1]\non = \"host1\"\nimage = \"/b\"\nports = [\"22:22\"]\n"),
                "/p/lab.toml:6:10: port 22 is `host1`'s own SSH port: forwarding it would lock lab out of `host1`",
            ),
            (
                "[machines.h]\nimage = \"/b\"\n",
                "/p/lab.toml:2:9: `image` only applies to a container machine",
            ),
            (
                "[machines.h]\nmachines_range = \"10.1.2.3/24\"\n",
                "/p/lab.toml:2:18: `10.1.2.3/24` is not an IPv4 network",
            ),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap_err();
            assert_eq!(got, want, "for:\n{text}");
        }
    }
}
