//! Changes lab makes to a user's `lab.toml` (`lab bootstrap` adding a
//! machine), keeping the file's formatting and comments.

use crate::{ConfigError, Located};
use std::path::Path;

/// A machine `lab bootstrap` adds.
pub struct NewMachine<'a> {
    pub name: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub become_sudo: bool,
    /// The private key, when it is not one ssh finds by itself.
    pub identity: Option<&'a str>,
}

/// Add `[machines.NAME]` to the lab.toml at `file` unless a machine of
/// that name is there already; `true` when it was added. The file is
/// replaced atomically.
pub fn add_machine(file: &Path, m: &NewMachine) -> Result<bool, ConfigError> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut doc: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| ConfigError::Toml {
                at: Located::from_span(file, &text, e.span().unwrap_or(0..0)),
                message: e.message().trim_end().to_string(),
            })?;
    let machines = doc
        .entry("machines")
        .or_insert_with(|| {
            let mut t = toml_edit::Table::new();
            t.set_implicit(true);
            toml_edit::Item::Table(t)
        })
        .as_table_mut()
        .ok_or_else(|| ConfigError::Invalid {
            at: Located::file(file),
            message: "`machines` is not a table".into(),
            hint: None,
        })?;
    if machines.contains_key(m.name) {
        return Ok(false);
    }
    let mut t = toml_edit::Table::new();
    t["host"] = toml_edit::value(m.host);
    if m.port != 22 {
        t["port"] = toml_edit::value(i64::from(m.port));
    }
    t["user"] = toml_edit::value(m.user);
    if let Some(i) = m.identity {
        t["identity"] = toml_edit::value(i);
    }
    if m.become_sudo {
        t["become"] = toml_edit::value("sudo");
    }
    machines.insert(m.name, toml_edit::Item::Table(t));
    let out = doc.to_string();
    let tmp = file.with_extension("toml.lab-tmp");
    std::fs::write(&tmp, out)
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(|e| ConfigError::Invalid {
            at: Located::file(file),
            message: format!("cannot write: {e}"),
            hint: None,
        })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_keeping_comments_once() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("lab.toml");
        std::fs::write(
            &f,
            "# my lab\n[facts]\ndomain = \"x\" # the domain\n\n[machines.a]\nhost = \"h\"\n",
        )
        .unwrap();
        let m = NewMachine {
            name: "vps1",
            host: "203.0.113.5",
            port: 22,
            user: "me",
            become_sudo: true,
            identity: None,
        };
        assert!(add_machine(&f, &m).unwrap());
        assert!(!add_machine(&f, &m).unwrap());
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with("# my lab\n[facts]\ndomain = \"x\" # the domain\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "[machines.vps1]\nhost = \"203.0.113.5\"\nuser = \"me\"\nbecome = \"sudo\"\n"
            ),
            "{text}"
        );
        let p = crate::Project::parse(d.path(), &f, text).unwrap();
        assert_eq!(
            p.machine("vps1").unwrap().become_method,
            Some(crate::Become::Sudo)
        );
    }
}
