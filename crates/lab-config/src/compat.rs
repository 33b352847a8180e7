//! Make-style labs (the "GNU make + m4 + rsync" layout lab is compatible
//! with): detecting one, reading its inventory, its per-machine layer lists,
//! its link lists and its fact files into typed models with locations.
//!
//! The rules follow docs/compat.md; the
//! choices it leaves open are written down in `docs/compat.md`.

use crate::{ConfigError, LayerRef, Located, Machine, Transport};
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::path::{Path, PathBuf};

/// Where a machine lists its layers (`+ NAME` lines in `*.txt`), relative
/// to `machines/NAME/`.
pub const LAYER_LISTS: &str = "usr/local/opt/initd/layers";
/// Where a machine or layer lists extra symlinks (`/PATH TARGET` lines in
/// `*.txt`), relative to the root of the machine or layer.
pub const LINK_LISTS: &str = "usr/local/opt/initd/links";
/// The make style's inventory: `{"machine": {"host": .., "user": .., "options": [..]}}`.
pub const INVENTORY_FILE: &str = "inventory.json";
/// Default m4 preludes, passed before every template.
pub const DEFAULT_PRELUDES: &str = "layers/_/usr/local/include/m4/*.m4";
/// Default shared fact files, read before the machine's own.
pub const DEFAULT_SHARED_FACTS: &str = ".facts/example*.env";

/// The settings of a make-style project: defaults, or `[compat]` in lab.toml.
#[derive(Clone, Debug)]
pub struct Compat {
    /// `lab.toml` opted in with `[compat]` (rather than the layout being
    /// detected without a lab.toml).
    pub explicit: bool,
    /// Globs (relative to the project) of the m4 preludes, in order; each
    /// glob's matches are sorted.
    pub preludes: Vec<String>,
    /// Globs of the shared `.env` fact files, in order, each sorted.
    pub shared_facts: Vec<String>,
    /// Extra files copied into machines' trees.
    pub copies: Vec<CompatCopy>,
    /// The inventory file (absolute).
    pub inventory: PathBuf,
    /// Problems that belong to one machine (its layer lists, its inventory
    /// entry), by machine name: that machine fails with it, the others
    /// build (see [`make_machines`]).
    pub problems: IndexMap<String, std::sync::Arc<ConfigError>>,
}

impl Compat {
    pub fn defaults(root: &Path) -> Compat {
        Compat {
            explicit: false,
            preludes: vec![DEFAULT_PRELUDES.into()],
            shared_facts: vec![DEFAULT_SHARED_FACTS.into()],
            copies: Vec::new(),
            inventory: root.join(INVENTORY_FILE),
            problems: IndexMap::new(),
        }
    }
}

/// `[[compat.copy]]`: a project file copied (following symlinks, mode with
/// umask 022) to an absolute path of some or all machines.
#[derive(Clone, Debug)]
pub struct CompatCopy {
    /// Relative to the project.
    pub from: String,
    /// Output path, relative to the machine's root (no leading slash).
    pub to: String,
    /// Machines that get it; empty means all.
    pub machines: Vec<String>,
    pub at: Located,
}

/// Is `name` usable as a machine or layer name of this style? Names are
/// whatever the directories are called (a real lab has a machine and a
/// layer named `-`; names with spaces or leading dashes are file names
/// like any other), so only what cannot be one directory entry is refused:
/// the empty name, `.`, `..`, and names with `/` or NUL. Where a name
/// reaches a program it is one argument (never through a shell), after
/// `--` where options could be parsed.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// A copy of a configuration error (the original stays where it was
/// recorded; I/O errors keep their kind and message).
pub fn copy_error(e: &ConfigError) -> ConfigError {
    match e {
        ConfigError::Read { path, source } => ConfigError::Read {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        ConfigError::NotFound { dir } => ConfigError::NotFound { dir: dir.clone() },
        ConfigError::Toml { at, message } => ConfigError::Toml {
            at: at.clone(),
            message: message.clone(),
        },
        ConfigError::Invalid { at, message, hint } => ConfigError::Invalid {
            at: at.clone(),
            message: message.clone(),
            hint: hint.clone(),
        },
    }
}

/// Is `dir` a make-style lab: does some `machines/*/usr/local/opt/initd/layers/*.txt` exist?
pub fn is_make_style(dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir.join("machines")) else {
        return false;
    };
    rd.flatten().any(|m| {
        std::fs::read_dir(m.path().join(LAYER_LISTS)).is_ok_and(|rd| {
            rd.flatten()
                .any(|f| f.file_name().to_string_lossy().ends_with(".txt"))
        })
    })
}

/// Files matching `glob` (relative to `root`), sorted. Wildcards are
/// supported in the last path component only; like the shell, `*` does not
/// match a leading dot unless the pattern starts with one.
pub fn expand_glob(root: &Path, glob: &str) -> Vec<String> {
    let (dir, pat) = match glob.rsplit_once('/') {
        Some((d, p)) => (d, p),
        None => ("", glob),
    };
    let Ok(matcher) = globset::GlobBuilder::new(pat)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
    else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| (pat.starts_with('.') || !n.starts_with('.')) && matcher.is_match(n))
        .filter(|n| root.join(dir).join(n).is_file())
        .map(|n| {
            if dir.is_empty() {
                n
            } else {
                format!("{dir}/{n}")
            }
        })
        .collect();
    v.sort();
    v
}

/// Every glob expanded in order, duplicates kept once.
pub fn expand_globs(root: &Path, globs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for g in globs {
        for f in expand_glob(root, g) {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    out
}

/// The `.txt` files directly in `dir`, sorted by name.
pub fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".txt"))
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            source: e,
        })
}

/// The layers a layer list names: the second field of each `+ NAME` line;
/// lines starting with `#` or `-` (and any other line) are ignored. Fields
/// are separated by blanks (spaces and tabs) as make's tools split them
/// (awk, `$(shell)` words), not by other white space: in a file with CRLF
/// line endings the name keeps its carriage return (`web\r`), names a
/// layer that does not exist and contributes nothing, as it does for make.
pub fn parse_layer_list(path: &Path, text: &str) -> Result<Vec<LayerRef>, ConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let mut fields = line.split([' ', '\t']).filter(|f| !f.is_empty());
        if fields.next() != Some("+") {
            continue;
        }
        let Some(name) = fields.next() else {
            continue;
        };
        // (located without its `\r`, which the shown line does not have)
        let at = Located::from_line(path, text, i + 1, Some(name.trim_end_matches('\r')));
        if !valid_name(name) {
            return Err(ConfigError::Invalid {
                at,
                message: format!("invalid layer name `{}`", name.escape_debug()),
                hint: Some(
                    "a layer is a directory under `layers/`: its name cannot be empty, `.`, `..` or contain `/`"
                        .into(),
                ),
            });
        }
        out.push(LayerRef {
            name: name.to_string(),
            at,
        });
    }
    Ok(out)
}

/// A machine's layers from all its `usr/local/opt/initd/layers/*.txt`, in
/// file-name order, each kept once (`_` is always first and not listed).
pub fn machine_layers(machine_dir: &Path) -> Result<Vec<LayerRef>, ConfigError> {
    let mut out: Vec<LayerRef> = Vec::new();
    for f in list_files(&machine_dir.join(LAYER_LISTS)) {
        let text = read(&f)?;
        for l in parse_layer_list(&f, &text)? {
            if l.name != "_" && !out.iter().any(|o| o.name == l.name) {
                out.push(l);
            }
        }
    }
    Ok(out)
}

/// One line of a link list: a symlink at `path` with target `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkLine {
    /// Relative to the machine's root, normalized, no leading slash.
    pub path: String,
    /// The literal target text.
    pub target: String,
    pub at: Located,
}

/// `/ABS/PATH TARGET` lines; blank lines and lines whose first non-blank
/// character is `#` are skipped. Runs of blanks separate the path from the
/// target; the target is the rest of the line, trimmed.
pub fn parse_link_list(path: &Path, text: &str) -> Result<Vec<LinkLine>, ConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (p, target) = match t.split_once([' ', '\t']) {
            Some((p, rest)) => (p, rest.trim()),
            None => (t, ""),
        };
        let invalid = |needle: &str, message: String, hint: &str| ConfigError::Invalid {
            at: Located::from_line(path, text, i + 1, Some(needle)),
            message,
            hint: Some(hint.into()),
        };
        if target.is_empty() {
            return Err(invalid(
                p,
                format!("link `{p}` has no target"),
                "write `/ABSOLUTE/PATH TARGET`",
            ));
        }
        let Some(norm) = normalize_abs(p) else {
            return Err(invalid(
                p,
                format!("link path `{p}` is not a clean absolute path"),
                "write `/ABSOLUTE/PATH TARGET`, without `.` or `..` components",
            ));
        };
        out.push(LinkLine {
            path: norm,
            target: target.to_string(),
            at: Located::from_line(path, text, i + 1, Some(p)),
        });
    }
    Ok(out)
}

/// `/a//b/` -> `a/b`; `None` for relative paths, `/`, `.` and `..`.
fn normalize_abs(p: &str) -> Option<String> {
    let rest = p.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').filter(|c| !c.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|c| *c == "." || *c == "..") {
        return None;
    }
    Some(parts.join("/"))
}

/// Flatten a JSON fact file: top-level keys in document order; strings raw;
/// numbers and booleans as their JSON text (as written); `null` as `null`;
/// arrays joined with `,` (null elements empty); objects as compact JSON.
pub fn flatten_json(path: &Path, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let located = |e: serde_json::Error| ConfigError::Invalid {
        at: Located::from_line(path, text, e.line().max(1), None),
        message: format!("invalid JSON: {e}"),
        hint: None,
    };
    let top: IndexMap<String, &RawValue> = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) if e.is_data() => {
            return Err(ConfigError::Invalid {
                at: Located::from_line(path, text, 1, None),
                message: "a fact file must hold one JSON object".into(),
                hint: Some("write `{\"NAME\": value, ...}`".into()),
            })
        }
        Err(e) => return Err(located(e)),
    };
    let mut out = Vec::with_capacity(top.len());
    for (k, v) in top {
        let s = match v.get().as_bytes().first() {
            Some(b'[') => {
                let items: Vec<&RawValue> = serde_json::from_str(v.get()).map_err(located)?;
                items
                    .iter()
                    .map(|i| scalar_text(i))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(located)?
                    .join(",")
            }
            Some(b'n') => "null".to_string(),
            _ => scalar_text(v).map_err(located)?,
        };
        out.push((k, s));
    }
    Ok(out)
}

/// A value as text: strings decoded, `null` empty, anything else as its
/// JSON text with insignificant whitespace removed.
fn scalar_text(v: &RawValue) -> Result<String, serde_json::Error> {
    match v.get().as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(v.get()),
        Some(b'n') => Ok(String::new()),
        _ => Ok(compact(v.get())),
    }
}

/// Remove whitespace outside strings, keeping everything else as written.
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_str, mut esc) = (false, false);
    for c in json.chars() {
        if in_str {
            out.push(c);
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// `.env` lines: every line except blank ones and those whose first
/// non-blank character is `#`, split at the first `=` (a line without `=`
/// defines an empty value), one surrounding pair of single quotes removed
/// from the value. Nothing else is trimmed.
pub fn parse_env(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        let v = match v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            Some(inner) if v.len() >= 2 => inner,
            _ => v,
        };
        out.push((k.to_string(), v.to_string()));
    }
    out
}

/// A machine's facts from its files, later wins: `ENV_MACHINE`, the shared
/// `.env` files, `.facts/NAME.json`, `.facts/NAME.env`. Gathered facts
/// (highest precedence) are added by the caller.
pub fn load_facts(
    root: &Path,
    compat: &Compat,
    machine: &str,
) -> Result<IndexMap<String, String>, ConfigError> {
    let mut facts = IndexMap::new();
    facts.insert("ENV_MACHINE".to_string(), machine.to_string());
    for f in expand_globs(root, &compat.shared_facts) {
        for (k, v) in parse_env(&read(&root.join(f))?) {
            facts.insert(k, v);
        }
    }
    let json = root.join(".facts").join(format!("{machine}.json"));
    if json.is_file() {
        let text = read(&json)?;
        // The style's own rule creates it with `touch`, and jq reads an
        // empty input as no document at all: an empty (or blank) file
        // contributes nothing.
        if !text.trim().is_empty() {
            for (k, v) in flatten_json(&json, &text)? {
                facts.insert(k, v);
            }
        }
    }
    let env = root.join(".facts").join(format!("{machine}.env"));
    if env.is_file() {
        for (k, v) in parse_env(&read(&env)?) {
            facts.insert(k, v);
        }
    }
    Ok(facts)
}

/// One machine of `inventory.json`. Fields the style does not use are
/// ignored, as its tools ignore them.
#[derive(Clone, Debug, Default, serde::Deserialize)]
struct InventoryEntry {
    host: Option<String>,
    user: Option<String>,
    #[serde(default)]
    options: Vec<String>,
}

/// The machines of a make-style project: those in `inventory.json` (in its
/// order), then the directories under `machines/` not in it (sorted).
/// Host, user and ssh options come from the inventory; layers from the
/// machine's layer lists.
///
/// A problem that belongs to one machine (its layer lists, its inventory
/// entry) does not stop the others: the machine is kept (without layers)
/// and the problem is returned beside it, by name, for the build to report
/// as that machine's failure. An inventory that is not JSON, or not an
/// object, is everyone's problem and an error.
#[allow(clippy::type_complexity)]
pub fn make_machines(
    root: &Path,
    inventory: &Path,
) -> Result<(Vec<Machine>, IndexMap<String, std::sync::Arc<ConfigError>>), ConfigError> {
    let mut inv: IndexMap<String, serde_json::Value> = IndexMap::new();
    let mut inv_text = String::new();
    let hint = || {
        Some(
            "the inventory is `{\"NAME\": {\"host\": \"..\", \"user\": \"..\", \"options\": [..]}}`"
                .into(),
        )
    };
    if inventory.is_file() {
        inv_text = read(inventory)?;
        // An empty inventory is what the style's rule makes with `touch`.
        if !inv_text.trim().is_empty() {
            inv = serde_json::from_str(&inv_text).map_err(|e| ConfigError::Invalid {
                at: Located::from_line(inventory, &inv_text, e.line().max(1), None),
                message: format!("invalid inventory: {e}"),
                hint: hint(),
            })?;
        }
    }
    let mut problems: IndexMap<String, std::sync::Arc<ConfigError>> = IndexMap::new();
    let mut names: Vec<(String, Located, InventoryEntry)> = Vec::new();
    for (name, value) in &inv {
        let at = Located::from_span(
            inventory,
            &inv_text,
            serde_json::to_string(name)
                .ok()
                .and_then(|q| inv_text.find(&q).map(|i| i..i + q.len()))
                .unwrap_or(0..0),
        );
        if !valid_name(name) {
            return Err(ConfigError::Invalid {
                at,
                message: format!("invalid machine name `{}`", name.escape_debug()),
                hint: Some(
                    "a machine is a directory under `machines/`: its name cannot be empty, `.`, `..` or contain `/`"
                        .into(),
                ),
            });
        }
        // make reads a missing or `null` entry as `{}` (a generator with a
        // jq precedence slip writes `{"-": null}`).
        let entry = match value {
            serde_json::Value::Null => InventoryEntry::default(),
            v => match InventoryEntry::deserialize(v) {
                Ok(e) => e,
                Err(e) => {
                    problems.insert(
                        name.clone(),
                        std::sync::Arc::new(ConfigError::Invalid {
                            at: at.clone(),
                            message: format!("invalid inventory entry for `{name}`: {e}"),
                            hint: hint(),
                        }),
                    );
                    InventoryEntry::default()
                }
            },
        };
        names.push((name.clone(), at, entry));
    }
    let mut dirs: Vec<String> = std::fs::read_dir(root.join("machines"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| valid_name(n))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    for d in dirs {
        if !names.iter().any(|(n, _, _)| *n == d) {
            let at = Located::file(&root.join("machines").join(&d));
            names.push((d, at, InventoryEntry::default()));
        }
    }
    let mut out = Vec::new();
    for (name, at, e) in names {
        let (port, identity) = ssh_options(&e.options);
        let layers = match machine_layers(&root.join("machines").join(&name)) {
            Ok(l) => l,
            Err(err) => {
                problems
                    .entry(name.clone())
                    .or_insert_with(|| std::sync::Arc::new(err));
                Vec::new()
            }
        };
        out.push(Machine {
            container: None,
            machines_range: None,
            host: e.host.unwrap_or_else(|| name.clone()),
            user: e.user.clone().unwrap_or_else(|| "root".into()),
            user_set: e.user,
            port: port.unwrap_or(22),
            port_set: port,
            identity,
            layers,
            facts: IndexMap::new(),
            transport: Transport::Ssh,
            ssh_options: e.options,
            become_method: None,
            pod_user: None,
            at,
            name,
        });
    }
    Ok((out, problems))
}

/// The port (`-p N`, `-oPort=N`, `-o Port=N`) and identity (`-i FILE`) an
/// ssh option list sets.
fn ssh_options(opts: &[String]) -> (Option<u16>, Option<PathBuf>) {
    let (mut port, mut identity) = (None, None);
    let mut it = opts.iter().peekable();
    while let Some(o) = it.next() {
        match o.as_str() {
            "-p" => port = it.next().and_then(|p| p.parse().ok()),
            "-i" => identity = it.next().map(PathBuf::from),
            "-o" => {
                if let Some(v) = it.next() {
                    if let Some(p) = option_port(v) {
                        port = Some(p);
                    }
                }
            }
            s => {
                if let Some(p) = s.strip_prefix("-p").and_then(|p| p.parse().ok()) {
                    port = Some(p);
                } else if let Some(v) = s.strip_prefix("-o") {
                    if let Some(p) = option_port(v) {
                        port = Some(p);
                    }
                } else if let Some(i) = s.strip_prefix("-i") {
                    identity = Some(PathBuf::from(i));
                }
            }
        }
    }
    (port, identity)
}

fn option_port(v: &str) -> Option<u16> {
    let (k, val) = v.split_once(['=', ' '])?;
    k.eq_ignore_ascii_case("port")
        .then(|| val.trim().parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_lists() {
        let t = "# comment\n+ nginx\n- old\n+ app extra\n+\nplain\n+ nginx\n";
        let l = parse_layer_list(Path::new("l.txt"), t).unwrap();
        let names: Vec<&str> = l.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["nginx", "app", "nginx"]);
        assert_eq!((l[1].at.line, l[1].at.col), (4, 3));
        let e = parse_layer_list(Path::new("l.txt"), "+ ../x\n").unwrap_err();
        assert_eq!(e.to_string(), "invalid layer name `../x`");
        // blanks separate fields, other white space does not (as in awk)
        let t = "+ - # why\r\n+\t-x\r\n+ a\x0bb\n";
        let l = parse_layer_list(Path::new("l.txt"), t).unwrap();
        let names: Vec<&str> = l.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["-", "-x\r", "a\x0bb"]);
        assert_eq!((l[1].at.line, l[1].at.col), (2, 3));
    }

    #[test]
    fn names_are_directory_names() {
        for n in ["-", "-x", "with space", "web\r", "@", ".hidden", "a..b"] {
            assert!(valid_name(n), "{n:?}");
        }
        for n in ["", ".", "..", "a/b", "/", "a\0b"] {
            assert!(!valid_name(n), "{n:?}");
        }
    }

    #[test]
    fn link_lists() {
        let t = "# c\n\n/etc/a   ../b\n  /usr//bin/x/ /opt/x y\n";
        let l = parse_link_list(Path::new("k.txt"), t).unwrap();
        assert_eq!(
            l.iter()
                .map(|l| (l.path.as_str(), l.target.as_str()))
                .collect::<Vec<_>>(),
            [("etc/a", "../b"), ("usr/bin/x", "/opt/x y")]
        );
        assert_eq!(l[1].at.line, 4);
        let e = parse_link_list(Path::new("k.txt"), "etc/a b\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "link path `etc/a` is not a clean absolute path"
        );
        let e = parse_link_list(Path::new("k.txt"), "/etc/a\n").unwrap_err();
        assert_eq!(e.to_string(), "link `/etc/a` has no target");
    }

    #[test]
    fn json_flattening() {
        let t = r#"{"s": "a b", "n": 1.50, "e": 1e3, "t": true, "z": null,
            "arr": ["x", null, 2, false, {"k": [1, 2]}],
            "obj": {"a": { "b" : "c d" }, "n": null}}"#;
        let f = flatten_json(Path::new("m.json"), t).unwrap();
        assert_eq!(
            f,
            [
                ("s", "a b"),
                ("n", "1.50"),
                ("e", "1e3"),
                ("t", "true"),
                ("z", "null"),
                ("arr", "x,,2,false,{\"k\":[1,2]}"),
                ("obj", "{\"a\":{\"b\":\"c d\"},\"n\":null}"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let e = flatten_json(Path::new("m.json"), "{\"a\": 1,\n\"b\": }").unwrap_err();
        assert_eq!(crate::Diagnose::location(&e).unwrap().line, 2);
        let e = flatten_json(Path::new("m.json"), "[1]").unwrap_err();
        assert_eq!(e.to_string(), "a fact file must hold one JSON object");
    }

    #[test]
    fn env_files() {
        let t =
            "# c\n  # indented comment\nA=1\nB='two words'\nC='unbalanced\nD=x=y\n\nE\nF=''\nG='\n";
        let e = parse_env(t);
        assert_eq!(
            e,
            [
                ("A", "1"),
                ("B", "two words"),
                ("C", "'unbalanced"),
                ("D", "x=y"),
                ("E", ""),
                ("F", ""),
                ("G", "'"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn ssh_option_parsing() {
        let o = |v: &[&str]| ssh_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(o(&["-p", "2222"]).0, Some(2222));
        assert_eq!(o(&["-oPort=2200"]).0, Some(2200));
        assert_eq!(
            o(&["-o", "Port 2201", "-i", "k"]),
            (Some(2201), Some("k".into()))
        );
        assert_eq!(o(&["-oStrictHostKeyChecking=no"]), (None, None));
    }
}
