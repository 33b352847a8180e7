//! A validated pod: what lab accepted from a pod file, in the form it
//! writes it out.

use crate::INIT_ANNOTATION;

/// A validated pod, in the form lab writes it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    pub rootful: bool,
    pub restart: Restart,
    pub host_network: bool,
    pub containers: Vec<Container>,
    pub volumes: Vec<Volume>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

impl Restart {
    pub fn kube_name(self) -> &'static str {
        match self {
            Restart::Always => "Always",
            Restart::OnFailure => "OnFailure",
            Restart::Never => "Never",
        }
    }

    /// systemd's `Restart=` value.
    pub fn systemd(self) -> &'static str {
        match self {
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::Never => "no",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    /// The image as podman finds it in local storage (`localhost/...`).
    pub image: String,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub ports: Vec<Port>,
    /// `resources.limits.memory` as written, and in bytes.
    pub memory: Option<(String, u64)>,
    /// `resources.limits.cpu` as written, and in thousandths of a CPU.
    pub cpu: Option<(String, u64)>,
    pub volume_mounts: Vec<VolumeMount>,
    pub working_dir: Option<String>,
    pub security: Vec<(String, SecurityValue)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn kube_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub name: Option<String>,
    pub container_port: u16,
    pub host_port: Option<u16>,
    /// A loopback address the host port is bound to: such a port is not
    /// opened in the firewall.
    pub host_ip: Option<std::net::IpAddr>,
    pub protocol: Protocol,
}

/// A port of the machine a pod listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Volume {
    HostPath {
        name: String,
        path: String,
        kind: Option<String>,
    },
    EmptyDir {
        name: String,
        medium: Option<String>,
    },
}

impl Volume {
    pub fn name(&self) -> &str {
        match self {
            Volume::HostPath { name, .. } | Volume::EmptyDir { name, .. } => name,
        }
    }
}

/// A value of a container's `securityContext`, in lab's subset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecurityValue {
    Bool(bool),
    Int(i64),
    Capabilities { add: Vec<String>, drop: Vec<String> },
}

impl Pod {
    /// The ports of the machine this pod listens on, to be opened in its
    /// firewall: its `hostPort`s (its `containerPort`s with `hostNetwork:
    /// true`) but those bound to a loopback `hostIP`, sorted.
    pub fn host_ports(&self) -> Vec<HostPort> {
        let mut v: Vec<HostPort> = self
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .filter(|p| p.host_ip.is_none())
            .filter_map(|p| {
                let port = if self.host_network {
                    Some(p.container_port)
                } else {
                    p.host_port
                };
                port.map(|port| HostPort {
                    port,
                    protocol: p.protocol,
                })
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Does podman run an init as PID 1 of container `c`?
    pub fn has_init(&self, c: &str) -> bool {
        let key = format!("{INIT_ANNOTATION}{c}");
        self.annotations
            .iter()
            .any(|(k, v)| *k == key && v.eq_ignore_ascii_case("true"))
    }
}
