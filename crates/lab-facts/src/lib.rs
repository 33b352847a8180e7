//! Facts gathered from a machine itself: architecture, OS release, kernel,
//! CPUs, memory, hostname, home directory.
//!
//! This crate owns the POSIX `sh` script that prints them ([`GATHER_SCRIPT`];
//! it needs only `uname`, `getconf`/`nproc` and `/proc`, so it runs on any
//! stock Linux over a plain ssh session), the parser of its output
//! ([`parse`]), the per-machine cache file `.lab/facts/NAME.json`
//! ([`store`], [`load`]) and the names make-style labs use for the same
//! facts, exactly the nine that style gathers ([`to_compat`]). It does not
//! know how the script reaches a machine (locally with `sh`, or over SSH):
//! callers run it and hand the output here.

use indexmap::IndexMap;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Facts by native name, in a stable order.
pub type Facts = IndexMap<String, Value>;

/// Prints one `KEY=VALUE` line per fact, native names. POSIX sh only; a
/// fact that cannot be found is printed empty.
pub const GATHER_SCRIPT: &str = r#"
LC_ALL=C; export LC_ALL
arch=$(uname -m 2>/dev/null)
case $(uname -s 2>/dev/null) in
  Linux)
    if (ldd --version 2>&1 | grep -qi musl) 2>/dev/null; then ostype=linux-musl; else ostype=linux-gnu; fi ;;
  Darwin) ostype=darwin$(uname -r) ;;
  FreeBSD) ostype=freebsd$(uname -r | sed 's/-.*//') ;;
  *) ostype=$(uname -s | tr 'A-Z' 'a-z') ;;
esac
nproc=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null)
mem=$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\).*/\1/p' /proc/meminfo 2>/dev/null)
if [ -n "$mem" ]; then mem=$((mem * 1024)); fi
for f in /etc/os-release /usr/lib/os-release; do
  if [ -r "$f" ]; then
    os=$(ID=; VERSION_ID=; VERSION_CODENAME=; . "$f" >/dev/null 2>&1
         printf 'os_id=%s\nos_version_id=%s\nos_version_codename=%s\n' "$ID" "$VERSION_ID" "$VERSION_CODENAME")
    break
  fi
done
printf 'arch=%s\n' "$arch"
printf 'ostype=%s\n' "$ostype"
printf 'kernel=%s\n' "$(uname -r 2>/dev/null)"
printf 'nproc=%s\n' "$nproc"
printf 'memory_bytes=%s\n' "$mem"
printf 'hostname=%s\n' "$(uname -n 2>/dev/null)"
printf 'home=%s\n' "$HOME"
if [ -n "$os" ]; then printf '%s\n' "$os"; else printf 'os_id=\nos_version_id=\nos_version_codename=\n'; fi
"#;

/// Native fact names, in the order the script prints them.
pub const NAMES: &[&str] = &[
    "arch",
    "ostype",
    "kernel",
    "nproc",
    "memory_bytes",
    "hostname",
    "home",
    "os_id",
    "os_version_id",
    "os_version_codename",
];

/// Native name -> the make style's name for the same fact.
pub const COMPAT_NAMES: &[(&str, &str)] = &[
    ("home", "ENV_HOME"),
    ("hostname", "ENV_HOSTNAME"),
    ("arch", "ENV_HOSTTYPE"),
    ("os_id", "ENV_ID"),
    ("memory_bytes", "ENV_MEMBYTES"),
    ("nproc", "ENV_NPROC"),
    ("ostype", "ENV_OSTYPE"),
    ("os_version_codename", "ENV_VERSION_CODENAME"),
    ("os_version_id", "ENV_VERSION_ID"),
];

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("line {line} of the gathered facts is not `KEY=VALUE`: `{text}`")]
    Syntax { line: usize, text: String },
    #[error("the gathered facts lack `{0}`")]
    Missing(&'static str),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Cache { path: PathBuf, message: String },
}

/// Parse the output of [`GATHER_SCRIPT`]. `nproc` and `memory_bytes` become
/// numbers when they are; other values stay strings. Unknown keys are kept
/// (a newer script may print more).
pub fn parse(output: &str) -> Result<Facts, FactsError> {
    let mut facts = Facts::new();
    for (i, line) in output.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(FactsError::Syntax {
                line: i + 1,
                text: line.to_string(),
            });
        };
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(FactsError::Syntax {
                line: i + 1,
                text: line.to_string(),
            });
        }
        let value = match k {
            "nproc" | "memory_bytes" => v
                .parse::<u64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(v.to_string())),
            _ => Value::String(v.to_string()),
        };
        facts.insert(k.to_string(), value);
    }
    for n in ["arch", "ostype", "kernel", "hostname"] {
        if !facts.contains_key(n) {
            return Err(FactsError::Missing(n));
        }
    }
    Ok(facts)
}

/// `.lab/facts/MACHINE.json` under `lab_dir` (`.lab/`).
pub fn cache_path(lab_dir: &Path, machine: &str) -> PathBuf {
    lab_core::LabDir::at(lab_dir).facts_path(machine)
}

/// Write the cache file atomically (temporary file, then rename), pretty
/// JSON so a person can read and edit it.
pub fn store(lab_dir: &Path, machine: &str, facts: &Facts) -> Result<PathBuf, FactsError> {
    let path = cache_path(lab_dir, machine);
    let io = |source| FactsError::Io {
        path: path.clone(),
        source,
    };
    let dir = path.parent().expect("cache path has a parent");
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut text = serde_json::to_string_pretty(facts).expect("facts are JSON");
    text.push('\n');
    let mut tmp = tempfile::Builder::new()
        .prefix(".lab-tmp.")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(text.as_bytes()).map_err(io)?;
    tmp.persist(&path).map_err(|e| io(e.error))?;
    Ok(path)
}

/// The cached facts of a machine; empty when never gathered.
pub fn load(lab_dir: &Path, machine: &str) -> Result<Facts, FactsError> {
    let path = cache_path(lab_dir, machine);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Facts::new()),
        Err(source) => return Err(FactsError::Io { path, source }),
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m.into_iter().collect()),
        Ok(_) => Err(FactsError::Cache {
            path,
            message: "not a JSON object".into(),
        }),
        Err(e) => Err(FactsError::Cache {
            path,
            message: format!("{}:{}: {e}", e.line(), e.column()),
        }),
    }
}

/// Run [`GATHER_SCRIPT`] on this host with `sh`.
pub fn gather_local() -> Result<Facts, FactsError> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(GATHER_SCRIPT)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| FactsError::Io {
            path: PathBuf::from("sh"),
            source,
        })?;
    if !out.status.success() {
        return Err(FactsError::Io {
            path: PathBuf::from("sh"),
            source: std::io::Error::other(format!(
                "the gather script failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// A fact value as plain text: strings as they are, other JSON as JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The facts as a make-style lab names them (`ENV_HOSTTYPE`, ...), as text,
/// and only those: the style gathers exactly the nine [`COMPAT_NAMES`], and
/// m4 expands every name it is given, so any other key (`kernel`, or one
/// added to the cache by hand) would rewrite that word wherever a template
/// uses it. A key of the cache that already is a make name (pinned by hand)
/// is taken as it is; a native name wins over it when both are present.
pub fn to_compat(facts: &Facts) -> IndexMap<String, String> {
    let mut out = IndexMap::new();
    for (native, make) in COMPAT_NAMES {
        if let Some(v) = facts.get(*native).or_else(|| facts.get(*make)) {
            out.insert(make.to_string(), value_text(v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "arch=x86_64\nostype=linux-gnu\nkernel=6.1.0-18-amd64\nnproc=2\n\
        memory_bytes=25165824000\nhostname=web1\nhome=/root\nos_id=debian\n\
        os_version_id=12\nos_version_codename=bookworm\n";

    #[test]
    fn parses_and_maps_to_make_names() {
        let f = parse(SAMPLE).unwrap();
        assert_eq!(f.keys().collect::<Vec<_>>(), NAMES);
        assert_eq!(f["nproc"], Value::from(2));
        let c = to_compat(&f);
        assert_eq!(c["ENV_HOSTTYPE"], "x86_64");
        assert_eq!(c["ENV_MEMBYTES"], "25165824000");
        assert_eq!(c["ENV_VERSION_CODENAME"], "bookworm");
        assert_eq!(c.len(), 9, "kernel has no make name and does not reach m4");
        assert!(!c.contains_key("kernel"));
        let mut hand = f.clone();
        hand.insert("ENV_RACK".into(), Value::from("b2"));
        hand.shift_remove("home");
        hand.insert("ENV_HOME".into(), Value::from("/home/pinned"));
        let c = to_compat(&hand);
        assert!(!c.contains_key("ENV_RACK"));
        assert_eq!(c["ENV_HOME"], "/home/pinned");
    }

    #[test]
    fn bad_output() {
        assert!(matches!(
            parse("arch=x\nnonsense\n"),
            Err(FactsError::Syntax { line: 2, .. })
        ));
        assert!(matches!(
            parse("arch=x\n"),
            Err(FactsError::Missing("ostype"))
        ));
    }

    #[test]
    fn the_script_runs_here() {
        let f = gather_local().unwrap();
        for n in NAMES {
            assert!(f.contains_key(*n), "{n} missing from {f:?}");
        }
        assert!(f["nproc"].as_u64().unwrap() >= 1);
        assert!(f["memory_bytes"].as_u64().unwrap() > 1 << 20);
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert_eq!(f["ostype"], "linux-gnu");
        }
    }

    #[test]
    fn cache_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let f = parse(SAMPLE).unwrap();
        let p = store(d.path(), "web1", &f).unwrap();
        assert_eq!(p, d.path().join("facts/web1.json"));
        assert_eq!(load(d.path(), "web1").unwrap(), f);
        assert!(load(d.path(), "other").unwrap().is_empty());
    }
}
