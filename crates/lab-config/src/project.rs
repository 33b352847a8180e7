use crate::compat::{self, Compat, CompatCopy};
use crate::container::{Container, MachineRange, RawContainer};
use crate::{ConfigError, Located};
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use toml::Spanned;

pub const CONFIG_FILE: &str = "lab.toml";

/// Names templates see besides the facts; a fact may not take them.
pub const RESERVED_VARIABLES: &[&str] = &["machine", "machines"];

/// A parsed `lab.toml`.
#[derive(Clone, Debug)]
pub struct Project {
    /// The project directory (where `lab.toml` is).
    pub root: PathBuf,
    /// Path of `lab.toml`.
    pub file: PathBuf,
    /// Its text, kept to point into it later.
    pub text: String,
    pub settings: Settings,
    /// `[facts]`: facts every machine sees (lowest precedence).
    pub facts: IndexMap<String, Value>,
    /// Machines in file order.
    pub machines: Vec<Machine>,
    /// A machine's `tags = [...]` (`-m @web` selects them), by machine
    /// name; machines without tags are absent.
    pub tags: IndexMap<String, Vec<String>>,
    pub units: Vec<UnitRule>,
    /// `[[owners]]`: who owns the entries at matching paths on the machine.
    pub owners: Vec<OwnerRule>,
    /// Set for a make-style project (detected, or `[compat]` in lab.toml):
    /// machines, layers and facts then come from the make layout.
    pub compat: Option<Compat>,
}

#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// known_hosts file used instead of the user's `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// Default identity file for ssh.
    pub identity: Option<PathBuf>,
    /// Generations a machine keeps for rollback.
    pub generations: usize,
    /// How long a sync watches a (re)started unit whose start does not wait
    /// for readiness (`Type=simple`) before it reports the unit's state.
    pub settle_ms: u64,
    /// A `lab watch` session also checks its connected machines for drift
    /// (and repairs it) this often, in seconds, when nothing else made it
    /// sync them; 0: only when a change is synced (idle sessions send
    /// nothing).
    pub watch_check_s: u64,
    /// age identity files that decrypt `*.age` sources (besides
    /// `$LAB_AGE_IDENTITY`).
    pub age_identities: Vec<PathBuf>,
    /// age-encrypted TOML files of facts (top-level keys: every machine;
    /// `[machines.NAME]`: that machine), relative to the project.
    pub secret_facts: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Ssh,
    /// The machine is a directory on this host (`root`, absolute).
    Local {
        root: PathBuf,
    },
}

#[derive(Clone, Debug)]
pub struct LayerRef {
    pub name: String,
    pub at: Located,
}

#[derive(Clone, Debug)]
pub struct Machine {
    pub name: String,
    /// Where `[machines.NAME]` is, for errors about the machine as a whole.
    pub at: Located,
    /// Defaults to the machine's name (so `~/.ssh/config` aliases work).
    pub host: String,
    pub user: String,
    pub port: u16,
    /// `user` and `port` as lab.toml sets them (`None`: not set, so
    /// `~/.ssh/config` may say).
    pub user_set: Option<String>,
    pub port_set: Option<u16>,
    pub identity: Option<PathBuf>,
    pub layers: Vec<LayerRef>,
    pub facts: IndexMap<String, Value>,
    pub transport: Transport,
    /// Extra ssh options (make-style `inventory.json`'s `options`).
    pub ssh_options: Vec<String>,
    /// How lab becomes root on the machine when `user` is not root.
    pub become_method: Option<Become>,
    /// `pod_user` (the machine's, else `[settings]`'s): the user whose
    /// systemd runs the machine's rootless pods. See [`Machine::pod_user`].
    pub pod_user: Option<String>,
    /// `on = "HOST"`: the machine is a container on another machine (see
    /// [`crate::container`]).
    pub container: Option<Container>,
    /// The range its containers' addresses come from (`machines_range`;
    /// `None` for a container).
    pub machines_range: Option<MachineRange>,
}

/// The pod user when lab.toml names none and the machine's `user` is root.
pub const DEFAULT_POD_USER: &str = "pods";

impl Machine {
    /// The user whose systemd runs the machine's rootless pods:
    /// `pod_user` in lab.toml, else the machine's `user` when it is not
    /// root, else `pods`.
    pub fn pod_user(&self) -> &str {
        match &self.pod_user {
            Some(u) => u,
            None if self.user != "root" => &self.user,
            None => DEFAULT_POD_USER,
        }
    }
}

/// A user name a pod user may have (what `useradd` accepts by default).
fn valid_user(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// `become = "sudo"`: the executor, fact gathering and unit actions run
/// through `sudo -n` (sudo must not ask for a password).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Become {
    Sudo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnitAction {
    Reload,
    Restart,
    ReloadOrRestart,
}

impl UnitAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            UnitAction::Reload => "reload",
            UnitAction::Restart => "restart",
            UnitAction::ReloadOrRestart => "reload-or-restart",
        }
    }
}

/// `[[units]]`: files matching `paths` belong to `unit`; changing one of
/// them applies `action` to it after a sync.
#[derive(Clone, Debug)]
pub struct UnitRule {
    pub paths: Vec<String>,
    pub matcher: globset::GlobSet,
    pub unit: String,
    pub action: UnitAction,
    pub at: Located,
}

/// `[[owners]]`: entries at paths matching `paths` belong to `owner` and
/// `group` on the machine (the last matching rule wins, per attribute).
#[derive(Clone, Debug)]
pub struct OwnerRule {
    pub paths: Vec<String>,
    pub matcher: globset::GlobSet,
    pub owner: Option<String>,
    pub group: Option<String>,
}

impl OwnerRule {
    /// Does the rule cover this output path (relative, no leading slash)?
    pub fn matches(&self, path: &str) -> bool {
        self.matcher.is_match(format!("/{path}"))
    }
}

/// Owner and group of the entry at `path` under `rules` (`None`: root).
pub fn owner_of(rules: &[OwnerRule], path: &str) -> (Option<String>, Option<String>) {
    let (mut owner, mut group) = (None, None);
    for r in rules.iter().filter(|r| r.matches(path)) {
        if r.owner.is_some() {
            owner = r.owner.clone();
        }
        if r.group.is_some() {
            group = r.group.clone();
        }
    }
    (owner, group)
}

impl UnitRule {
    /// Does the rule cover this output path (relative, no leading slash)?
    pub fn matches(&self, path: &str) -> bool {
        self.matcher.is_match(format!("/{path}"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    #[serde(default)]
    settings: RawSettings,
    #[serde(default)]
    facts: IndexMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    machines: IndexMap<Spanned<String>, Spanned<RawMachine>>,
    #[serde(default)]
    units: Vec<Spanned<RawUnit>>,
    #[serde(default)]
    owners: Vec<Spanned<RawOwner>>,
    compat: Option<Spanned<RawCompat>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompat {
    style: Spanned<String>,
    preludes: Option<Vec<String>>,
    shared_facts: Option<Vec<String>>,
    inventory: Option<String>,
    #[serde(default)]
    copy: Vec<Spanned<RawCopy>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCopy {
    from: String,
    to: Spanned<String>,
    #[serde(default)]
    machines: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    known_hosts: Option<String>,
    identity: Option<String>,
    generations: Option<Spanned<i64>>,
    settle_ms: Option<Spanned<i64>>,
    watch_check_s: Option<Spanned<i64>>,
    #[serde(rename = "become")]
    become_method: Option<Spanned<String>>,
    pod_user: Option<Spanned<String>>,
    #[serde(default)]
    age_identities: Vec<String>,
    #[serde(default)]
    secret_facts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    host: Option<String>,
    user: Option<String>,
    port: Option<Spanned<i64>>,
    identity: Option<String>,
    #[serde(default)]
    layers: Vec<Spanned<String>>,
    #[serde(default)]
    tags: Vec<Spanned<String>>,
    #[serde(default)]
    facts: IndexMap<String, Spanned<toml::Value>>,
    transport: Option<Spanned<String>>,
    root: Option<Spanned<String>>,
    root_outside_project: Option<Spanned<bool>>,
    #[serde(rename = "become")]
    become_method: Option<Spanned<String>>,
    pod_user: Option<Spanned<String>>,
    // a container machine (crate::container)
    on: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    memory: Option<Spanned<String>>,
    cpus: Option<Spanned<toml::Value>>,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
    address: Option<Spanned<String>>,
    // a host of containers
    machines_range: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwner {
    paths: Vec<Spanned<String>>,
    owner: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnit {
    paths: Vec<Spanned<String>>,
    unit: Spanned<String>,
    #[serde(default)]
    action: Option<Spanned<String>>,
}

/// `host = 203.0.113.20`: a line whose value is not TOML at all but
/// would be as a quoted string (toml's own message, "invalid float,
/// expected nothing", does not say so). `(key, value)` then.
fn unquoted_value(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    let value = value.split(" #").next()?.trim();
    let bare = |c: char| c.is_ascii_alphanumeric() || "._-:/@~+".contains(c);
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        || value.is_empty()
        || !value.chars().all(bare)
        || toml::from_str::<toml::Table>(&format!("x = {value}")).is_ok()
    {
        return None;
    }
    Some((key, value))
}

/// Machine, layer and unit names: letters, digits, `.`, `_`, `-`, `@`; not
/// starting with `.` or `-`. They become directory names, so nothing that
/// could escape a directory.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(['.', '-'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

impl Project {
    /// Find `lab.toml` in `start` or the nearest parent and load it. A
    /// directory without `lab.toml` that has the make-style layout
    /// (`machines/*/usr/local/opt/initd/layers/*.txt`) is a project too.
    pub fn find(start: &Path) -> Result<Project, ConfigError> {
        let mut dir = start.to_path_buf();
        loop {
            if dir.join(CONFIG_FILE).is_file() {
                return Project::load(&dir);
            }
            if compat::is_make_style(&dir) {
                return Project::load_make(&dir, Compat::defaults(&dir));
            }
            if !dir.pop() {
                return Err(ConfigError::NotFound {
                    dir: start.to_path_buf(),
                });
            }
        }
    }

    /// Load `DIR/lab.toml`.
    pub fn load(dir: &Path) -> Result<Project, ConfigError> {
        let file = dir.join(CONFIG_FILE);
        let text = fs_err::read_to_string(&file).map_err(|e| ConfigError::Read {
            path: file.clone(),
            source: e,
        })?;
        let mut p = Project::parse(dir, &file, text)?;
        if let Some(c) = p.compat.take() {
            let toml_machines = std::mem::take(&mut p.machines);
            let mut made = Project::load_make(dir, c)?;
            // lab.toml's machines override the inventory's connection
            // settings, or add machines.
            for m in toml_machines {
                match made.machines.iter_mut().find(|x| x.name == m.name) {
                    Some(x) => {
                        let layers = std::mem::take(&mut x.layers);
                        *x = Machine { layers, ..m };
                    }
                    None => made.machines.push(m),
                }
            }
            made.text = p.text;
            made.settings = p.settings;
            made.tags = p.tags;
            made.units = p.units;
            return Ok(made);
        }
        Ok(p)
    }

    /// Load the project in `dir` again (after its files changed): its
    /// `lab.toml`, or the make layout when it has none.
    pub fn reload(dir: &Path) -> Result<Project, ConfigError> {
        if dir.join(CONFIG_FILE).is_file() {
            Project::load(dir)
        } else {
            Project::load_make(dir, Compat::defaults(dir))
        }
    }

    /// A make-style project in `dir`: machines from `inventory.json` and
    /// `machines/*/`, layers from their layer lists.
    pub fn load_make(dir: &Path, mut compat: Compat) -> Result<Project, ConfigError> {
        // One machine's problems are kept with the settings: that machine
        // fails when built, the others build.
        let (machines, problems) = compat::make_machines(dir, &compat.inventory)?;
        compat.problems = problems;
        Ok(Project {
            root: dir.to_path_buf(),
            file: dir.join(CONFIG_FILE),
            text: String::new(),
            settings: Settings {
                generations: 5,
                ..Settings::default()
            },
            facts: IndexMap::new(),
            machines,
            tags: IndexMap::new(),
            units: Vec::new(),
            owners: Vec::new(),
            compat: Some(compat),
        })
    }

    /// Parse `text` as the content of `file` in project directory `root`.
    pub fn parse(root: &Path, file: &Path, text: String) -> Result<Project, ConfigError> {
        let raw: RawProject = toml::from_str(&text).map_err(|e| {
            let at = Located::from_span(file, &text, e.span().unwrap_or(0..0));
            match unquoted_value(&at.line_text) {
                Some((key, value)) => ConfigError::Invalid {
                    message: format!("the value of `{key}` must be a quoted string"),
                    hint: Some(format!("write `{key} = \"{value}\"`")),
                    at,
                },
                None => ConfigError::Toml {
                    at,
                    message: e.message().trim_end().to_string(),
                },
            }
        })?;
        let at = |span: std::ops::Range<usize>| Located::from_span(file, &text, span);
        let invalid = |span, message: String, hint: Option<String>| ConfigError::Invalid {
            at: at(span),
            message,
            hint,
        };

        // An optional integer setting within bounds.
        let bounded = |v: &Option<Spanned<i64>>, name: &str, lo: i64, hi: i64, default: i64| match v
        {
            None => Ok(default),
            Some(v) if (lo..=hi).contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(invalid(
                v.span(),
                format!(
                    "`{name}` must be between {lo} and {hi}, not {}",
                    v.get_ref()
                ),
                None,
            )),
        };
        // The absolute path globs of a `[[units]]` or `[[owners]]` rule.
        let path_globs = |paths: &[Spanned<String>],
                          what: &str|
         -> Result<(Vec<String>, globset::GlobSet), ConfigError> {
            let mut b = globset::GlobSetBuilder::new();
            let mut out = Vec::new();
            for p in paths {
                if !p.get_ref().starts_with('/') {
                    return Err(invalid(
                        p.span(),
                        format!("{what} path `{}` is not absolute", p.get_ref()),
                        Some(format!("write `/{}`", p.get_ref())),
                    ));
                }
                let g = globset::GlobBuilder::new(p.get_ref())
                    .literal_separator(true)
                    .build()
                    .map_err(|e| invalid(p.span(), format!("bad glob: {}", e.kind()), None))?;
                b.add(g);
                out.push(p.get_ref().clone());
            }
            Ok((out, b.build().expect("globs were valid")))
        };
        let generations = bounded(&raw.settings.generations, "generations", 1, 1000, 5)? as usize;
        let settle_ms = bounded(&raw.settings.settle_ms, "settle_ms", 0, 60_000, 0)? as u64;
        let watch_check_s =
            bounded(&raw.settings.watch_check_s, "watch_check_s", 0, 86_400, 0)? as u64;
        let settings = Settings {
            known_hosts: raw.settings.known_hosts.map(|p| root.join(p)),
            identity: raw.settings.identity.map(|p| expand_home(&p)),
            generations,
            settle_ms,
            watch_check_s,
            age_identities: raw
                .settings
                .age_identities
                .iter()
                .map(|p| root.join(expand_home(p)))
                .collect(),
            secret_facts: raw
                .settings
                .secret_facts
                .iter()
                .map(|p| root.join(p))
                .collect(),
        };

        let facts = convert_facts(&raw.facts, &invalid)?;
        let become_of = |v: &Option<Spanned<String>>| -> Result<Option<Become>, ConfigError> {
            match v.as_ref().map(|b| (b.span(), b.get_ref().as_str())) {
                None => Ok(None),
                Some((_, "sudo")) => Ok(Some(Become::Sudo)),
                Some((_, "none")) => Ok(None),
                Some((span, other)) => Err(invalid(
                    span,
                    format!("unknown `become` method `{other}`"),
                    Some("use `sudo` (or `none` to log in as root)".into()),
                )),
            }
        };
        let default_become = become_of(&raw.settings.become_method)?;
        let pod_user_of = |v: &Option<Spanned<String>>| -> Result<Option<String>, ConfigError> {
            match v {
                None => Ok(None),
                Some(u) if valid_user(u.get_ref()) => Ok(Some(u.get_ref().clone())),
                Some(u) => Err(invalid(
                    u.span(),
                    format!("`{}` is not a user name", u.get_ref()),
                    Some("a pod user is lowercase letters, digits, `_` and `-`, starting with a letter or `_`".into()),
                )),
            }
        };
        let default_pod_user = pod_user_of(&raw.settings.pod_user)?;

        let mut machines = Vec::new();
        let mut tags: IndexMap<String, Vec<String>> = IndexMap::new();
        let mut raw_containers: Vec<RawContainer> = Vec::new();
        let mut hosts: Vec<(String, Option<Spanned<String>>, bool, u16)> = Vec::new();
        for (name, m) in raw.machines {
            let name_span = name.span();
            let name = name.into_inner();
            if !valid_name(&name) {
                return Err(invalid(
                    name_span.clone(),
                    format!("invalid machine name `{name}`"),
                    Some("use letters, digits, `.`, `_`, `-` and `@`".into()),
                ));
            }
            let m_span = m.span();
            let m = m.into_inner();
            let port_set = match &m.port {
                None => None,
                Some(p) => Some(
                    u16::try_from(*p.get_ref())
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| {
                            invalid(
                                p.span(),
                                format!("port {} is out of range", p.get_ref()),
                                Some("a port is a number from 1 to 65535".into()),
                            )
                        })?,
                ),
            };
            let port = port_set.unwrap_or(22);
            let mut m = m;
            match m.on.take() {
                Some(on) => {
                    let not_here = [
                        ("host", m.host.is_some()),
                        ("port", m.port.is_some()),
                        ("transport", m.transport.is_some()),
                        ("machines_range", m.machines_range.is_some()),
                    ];
                    if let Some((key, _)) = not_here.iter().find(|(_, set)| *set) {
                        return Err(invalid(
                            m_span.clone(),
                            format!("`{key}` does not apply to container machine `{name}`: it is reached through its host `{}`", on.get_ref()),
                            Some(format!("remove `{key}`")),
                        ));
                    }
                    raw_containers.push(RawContainer {
                        name: name.clone(),
                        on,
                        image: m.image.take(),
                        memory: m.memory.take(),
                        cpus: m.cpus.take(),
                        ports: std::mem::take(&mut m.ports),
                        address: m.address.take(),
                        span: name_span.clone(),
                    });
                }
                None => {
                    let stray = [
                        ("image", m.image.as_ref().map(|v| v.span())),
                        ("memory", m.memory.as_ref().map(|v| v.span())),
                        ("cpus", m.cpus.as_ref().map(|v| v.span())),
                        ("ports", m.ports.first().map(|v| v.span())),
                        ("address", m.address.as_ref().map(|v| v.span())),
                    ];
                    if let Some((key, Some(span))) = stray.into_iter().find(|(_, s)| s.is_some()) {
                        return Err(invalid(
                            span,
                            format!("`{key}` only applies to a container machine"),
                            Some(format!(
                                "add `on = \"HOST\"` to make `{name}` a container on HOST"
                            )),
                        ));
                    }
                    hosts.push((
                        name.clone(),
                        m.machines_range.take(),
                        m.transport.as_ref().is_some_and(|t| t.get_ref() == "local"),
                        port,
                    ));
                }
            }
            let transport = match m.transport.as_ref().map(|t| t.get_ref().as_str()) {
                None | Some("ssh") => {
                    if let Some(r) = &m.root {
                        return Err(invalid(
                            r.span(),
                            "`root` only applies to `transport = \"local\"`".into(),
                            None,
                        ));
                    }
                    if let Some(o) = &m.root_outside_project {
                        return Err(invalid(
                            o.span(),
                            "`root_outside_project` only applies to `transport = \"local\"`".into(),
                            None,
                        ));
                    }
                    Transport::Ssh
                }
                Some("local") => {
                    match &m.root {
                        Some(r) => {
                            let outside = m
                                .root_outside_project
                                .as_ref()
                                .is_some_and(|o| *o.get_ref());
                            let dir = crate::local_root::check(root, r.get_ref(), outside)
                                .map_err(|(message, hint)| invalid(r.span(), message, hint))?;
                            Transport::Local { root: dir }
                        }
                        None => return Err(invalid(
                            m.transport.as_ref().unwrap().span(),
                            format!("machine `{name}` has `transport = \"local\"` but no `root`"),
                            Some(
                                "add `root = \"DIR\"`: the directory that plays the machine's `/`"
                                    .into(),
                            ),
                        )),
                    }
                }
                Some(other) => {
                    return Err(invalid(
                        m.transport.as_ref().unwrap().span(),
                        format!("unknown transport `{other}`"),
                        Some("use `ssh` (the default) or `local`".into()),
                    ))
                }
            };
            if raw.compat.is_some() {
                if let Some(l) = m.layers.first() {
                    return Err(invalid(
                        l.span(),
                        "a make-style project lists layers in `machines/NAME/usr/local/opt/initd/layers/*.txt`".into(),
                        Some("remove `layers` here; write `+ NAME` lines in a layer list instead".into()),
                    ));
                }
            }
            let mut layers: Vec<LayerRef> = Vec::new();
            for l in m.layers {
                let span = l.span();
                let lname = l.into_inner();
                if !valid_name(&lname) {
                    return Err(invalid(span, format!("invalid layer name `{lname}`"), None));
                }
                if layers.iter().any(|x| x.name == lname) {
                    return Err(invalid(
                        span,
                        format!("layer `{lname}` is listed twice for machine `{name}`"),
                        None,
                    ));
                }
                layers.push(LayerRef {
                    name: lname,
                    at: at(span),
                });
            }
            let become_method = match &m.become_method {
                Some(_) => become_of(&m.become_method)?,
                None => default_become,
            };
            let mut machine_tags: Vec<String> = Vec::new();
            for t in &m.tags {
                let tag = t.get_ref();
                if !valid_name(tag) {
                    return Err(invalid(
                        t.span(),
                        format!("invalid tag `{tag}`"),
                        Some("tags are letters, digits, `.`, `_`, `-`, `@`".into()),
                    ));
                }
                if !machine_tags.contains(tag) {
                    machine_tags.push(tag.clone());
                }
            }
            if !machine_tags.is_empty() {
                tags.insert(name.clone(), machine_tags);
            }
            let pod_user = match &m.pod_user {
                Some(_) => pod_user_of(&m.pod_user)?,
                None => default_pod_user.clone(),
            };
            machines.push(Machine {
                container: None,
                machines_range: None,
                pod_user,
                become_method,
                ssh_options: Vec::new(),
                at: at(m_span.start..m_span.start),
                host: m.host.unwrap_or_else(|| name.clone()),
                user: m.user.clone().unwrap_or_else(|| "root".into()),
                user_set: m.user,
                port,
                port_set,
                identity: m.identity.map(|p| expand_home(&p)),
                layers,
                facts: convert_facts(&m.facts, &invalid)?,
                transport,
                name,
            });
        }

        let (containers, ranges) = crate::container::resolve(raw_containers, &hosts, &invalid)?;
        for (name, c) in containers {
            if let Some(m) = machines.iter_mut().find(|m| m.name == name) {
                m.container = Some(c);
            }
        }
        for (name, r) in ranges {
            if let Some(m) = machines.iter_mut().find(|m| m.name == name) {
                m.machines_range = Some(r);
            }
        }

        let mut units = Vec::new();
        for u in raw.units {
            let u_span = u.span();
            let u = u.into_inner();
            let action = match u.action.as_ref().map(|a| a.get_ref().as_str()) {
                None | Some("restart") => UnitAction::Restart,
                Some("reload") => UnitAction::Reload,
                Some("reload-or-restart") => UnitAction::ReloadOrRestart,
                Some(other) => {
                    return Err(invalid(
                        u.action.as_ref().unwrap().span(),
                        format!("unknown unit action `{other}`"),
                        Some("use `reload`, `restart` or `reload-or-restart`".into()),
                    ))
                }
            };
            if !u.unit.get_ref().contains('.') {
                return Err(invalid(
                    u.unit.span(),
                    format!("`{}` is not a unit name", u.unit.get_ref()),
                    Some(format!(
                        "write the full name, like `{}.service`",
                        u.unit.get_ref()
                    )),
                ));
            }
            let (paths, matcher) = path_globs(&u.paths, "unit rule")?;
            units.push(UnitRule {
                paths,
                matcher,
                unit: u.unit.into_inner(),
                action,
                at: at(u_span.start..u_span.start),
            });
        }

        let mut owners = Vec::new();
        for o in raw.owners {
            let o_span = o.span();
            let o = o.into_inner();
            if o.owner.is_none() && o.group.is_none() {
                return Err(invalid(
                    o_span,
                    "an `[[owners]]` rule needs `owner`, `group` or both".into(),
                    None,
                ));
            }
            for v in o.owner.iter().chain(o.group.iter()) {
                let name = v.get_ref();
                let ok = !name.is_empty()
                    && (name.chars().all(|c| c.is_ascii_digit())
                        || (name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                            && name.chars().all(|c| {
                                c.is_ascii_lowercase()
                                    || c.is_ascii_digit()
                                    || matches!(c, '_' | '-' | '.')
                            })));
                if !ok {
                    return Err(invalid(
                        v.span(),
                        format!("`{name}` is not a user or group name"),
                        Some(
                            "names are lower-case letters, digits, `_`, `-`, `.` (or a numeric id)"
                                .into(),
                        ),
                    ));
                }
            }
            let (paths, matcher) = path_globs(&o.paths, "owner rule")?;
            owners.push(OwnerRule {
                paths,
                matcher,
                owner: o.owner.map(Spanned::into_inner),
                group: o.group.map(Spanned::into_inner),
            });
        }

        let compat = match raw.compat {
            None => None,
            Some(c) => {
                let c = c.into_inner();
                if c.style.get_ref() != "make" {
                    return Err(invalid(
                        c.style.span(),
                        format!("unknown compat style `{}`", c.style.get_ref()),
                        Some("the only style is `make`".into()),
                    ));
                }
                let mut out = Compat::defaults(root);
                out.explicit = true;
                if let Some(p) = c.preludes {
                    out.preludes = p;
                }
                if let Some(s) = c.shared_facts {
                    out.shared_facts = s;
                }
                if let Some(i) = c.inventory {
                    out.inventory = root.join(i);
                }
                for cp in c.copy {
                    let span = cp.span();
                    let cp = cp.into_inner();
                    let to = cp.to.get_ref();
                    let clean = to.strip_prefix('/').filter(|r| {
                        !r.is_empty()
                            && r.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
                    });
                    let Some(rel) = clean else {
                        return Err(invalid(
                            cp.to.span(),
                            format!("copy destination `{to}` is not a clean absolute path"),
                            Some("write the path on the machine, like `/etc/motd`".into()),
                        ));
                    };
                    out.copies.push(CompatCopy {
                        from: cp.from,
                        to: rel.to_string(),
                        machines: cp.machines,
                        at: at(span),
                    });
                }
                Some(out)
            }
        };

        Ok(Project {
            root: root.to_path_buf(),
            file: file.to_path_buf(),
            text,
            settings,
            facts,
            machines,
            tags,
            units,
            owners,
            compat,
        })
    }

    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.name == name)
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub fn machines_dir(&self) -> PathBuf {
        self.root.join("machines")
    }

    /// `.lab/`, lab's own state and outputs.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(lab_core::LAB_DIR)
    }
}

fn convert_facts(
    raw: &IndexMap<String, Spanned<toml::Value>>,
    invalid: &dyn Fn(std::ops::Range<usize>, String, Option<String>) -> ConfigError,
) -> Result<IndexMap<String, Value>, ConfigError> {
    let mut out = IndexMap::new();
    for (k, v) in raw {
        if RESERVED_VARIABLES.contains(&k.as_str()) {
            return Err(invalid(
                v.span(),
                format!("`{k}` is a reserved name and cannot be a fact"),
                Some(format!(
                    "templates already see `{k}`; give the fact another name"
                )),
            ));
        }
        out.insert(k.clone(), toml_to_json(v.get_ref()));
    }
    Ok(out)
}

/// Facts are stored as JSON values: the same model as gathered facts, and
/// what templates consume. TOML datetimes become their text.
pub(crate) fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

pub(crate) fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(rest),
        None => PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Project, ConfigError> {
        Project::parse(Path::new("/p"), Path::new("/p/lab.toml"), text.to_string())
    }

    #[test]
    fn full_example() {
        let p = parse(
            r#"
[settings]
generations = 3

[facts]
domain = "example.org"
ports = [80, 443]

[machines.web1]
host = "10.0.0.1"
layers = ["base", "nginx"]
facts = { role = "web" }

[machines.dev]
transport = "local"
root = "target/dev"

[[units]]
paths = ["/etc/nginx/**"]
unit = "nginx.service"
action = "reload"
"#,
        )
        .unwrap();
        assert_eq!(p.settings.generations, 3);
        assert_eq!(p.facts["ports"], serde_json::json!([80, 443]));
        let w = p.machine("web1").unwrap();
        assert_eq!(
            (w.host.as_str(), w.user.as_str(), w.port),
            ("10.0.0.1", "root", 22)
        );
        assert_eq!(
            w.layers.iter().map(|l| &l.name[..]).collect::<Vec<_>>(),
            ["base", "nginx"]
        );
        assert_eq!(w.layers[1].at.line, 11);
        let d = p.machine("dev").unwrap();
        assert_eq!(d.host, "dev");
        assert_eq!(
            d.transport,
            Transport::Local {
                root: "/p/target/dev".into()
            }
        );
        assert!(p.units[0].matches("etc/nginx/sites/a.conf"));
        assert!(!p.units[0].matches("etc/nginxx"));
        assert_eq!(
            p.machines.iter().map(|m| &m.name[..]).collect::<Vec<_>>(),
            ["web1", "dev"]
        );
    }

    #[test]
    fn syntax_error_points_at_line() {
        let e = parse("[facts]\ndomain = \n").unwrap_err();
        let at = crate::Diagnose::location(&e).unwrap();
        assert_eq!((at.line, at.col), (2, 10));
    }

    #[test]
    fn unknown_field_is_an_error() {
        let e = parse("[machines.a]\nhots = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `hots`"), "{e}");
        assert_eq!(crate::Diagnose::location(&e).unwrap().line, 2);
    }

    #[test]
    fn bad_values_are_located() {
        let e = parse("[machines.a]\nport = 70000\n").unwrap_err();
        assert_eq!(e.to_string(), "port 70000 is out of range");
        let e = parse("[machines.a]\ntransport = \"local\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "machine `a` has `transport = \"local\"` but no `root`"
        );
        let e = parse("[facts]\nmachine = 1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`machine` is a reserved name and cannot be a fact"
        );
        let e = parse("[[units]]\npaths = [\"etc/x\"]\nunit = \"x.service\"\n").unwrap_err();
        assert_eq!(e.to_string(), "unit rule path `etc/x` is not absolute");
        let e = parse("[machines.\"../x\"]\n").unwrap_err();
        assert_eq!(e.to_string(), "invalid machine name `../x`");
        let e = parse("[settings]\nsettle_ms = -1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`settle_ms` must be between 0 and 60000, not -1"
        );
        assert_eq!(crate::Diagnose::location(&e).unwrap().line, 2);
    }

    #[test]
    fn settle_defaults_to_zero() {
        assert_eq!(parse("").unwrap().settings.settle_ms, 0);
        let p = parse("[settings]\nsettle_ms = 250\n").unwrap();
        assert_eq!(p.settings.settle_ms, 250);
        assert_eq!(
            p.settings.watch_check_s, 0,
            "idle watch sessions send nothing"
        );
        let p = parse("[settings]\nwatch_check_s = 60\n").unwrap();
        assert_eq!(p.settings.watch_check_s, 60);
        let e = parse("[settings]\nwatch_check_s = -5\n").unwrap_err();
        assert!(e.to_string().contains("watch_check_s"), "{e}");
    }

    #[test]
    fn names() {
        assert!(valid_name("web-1.example_org"));
        assert!(!valid_name(""));
        assert!(!valid_name(".."));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("-x"));
    }

    #[test]
    fn tags_by_machine_deduplicated() {
        let p = parse(
            "[machines.a]\ntags = [\"web\", \"eu\", \"web\"]\n[machines.b]\n[machines.c]\ntags = []\n",
        )
        .unwrap();
        assert_eq!(p.tags.get("a").unwrap(), &["web", "eu"]);
        assert!(p.tags.get("b").is_none() && p.tags.get("c").is_none());
        let e = parse("[machines.a]\ntags = [\"-x\"]\n").unwrap_err();
        assert_eq!(e.to_string(), "invalid tag `-x`");
    }

    #[test]
    fn an_unquoted_value_says_to_quote_it() {
        use crate::Diagnose;
        let e = parse("[machines.a]\nhost = 203.0.113.20\n").unwrap_err();
        assert_eq!(e.to_string(), "the value of `host` must be a quoted string");
        assert_eq!(e.hint().unwrap(), "write `host = \"203.0.113.20\"`");
        // a value that is TOML keeps toml's own message
        let e = parse("[machines.a]\nport = 22 22\n").unwrap_err();
        assert_ne!(e.to_string(), "the value of `port` must be a quoted string");
    }

    #[test]
    fn pod_user_defaults_and_overrides() {
        let p = parse(
            "[settings]\npod_user = \"apps\"\n[machines.a]\n[machines.b]\nuser = \"deploy\"\n\
             [machines.c]\npod_user = \"web\"\n",
        )
        .unwrap();
        assert_eq!(p.machine("a").unwrap().pod_user(), "apps");
        assert_eq!(p.machine("c").unwrap().pod_user(), "web");
        let p = parse("[machines.a]\n[machines.b]\nuser = \"deploy\"\n").unwrap();
        assert_eq!(p.machine("a").unwrap().pod_user(), "pods");
        assert_eq!(p.machine("b").unwrap().pod_user(), "deploy");
        let e = parse("[machines.a]\npod_user = \"Root!\"\n").unwrap_err();
        assert_eq!(e.to_string(), "`Root!` is not a user name");
        assert_eq!(lab_core::Diagnose::location(&e).unwrap().line, 2);
    }
}
