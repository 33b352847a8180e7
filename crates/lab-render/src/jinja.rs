use crate::{Included, Includes, RenderError, Rendered, Scope};
use indexmap::{IndexMap, IndexSet};
use lab_core::Located;
use lab_graph::{Digest, Key};
use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Everything one render looked at.
#[derive(Debug, Default)]
struct Recorder {
    reads: IndexSet<Key>,
    includes: IndexMap<String, Digest>,
    /// Loaded templates by name, to place errors and find include cycles.
    sources: IndexMap<String, (PathBuf, String)>,
    /// The last variable looked up and not found.
    last_absent: Option<String>,
}

type Shared = Arc<Mutex<Recorder>>;

/// The template's root context: facts by name, `machine`, `machines`.
#[derive(Debug)]
struct Root {
    scope: Arc<Scope>,
    rec: Shared,
}

impl Object for Root {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let k = key.as_str()?;
        match k {
            "machine" => Some(Value::from(self.scope.machine.clone())),
            "machines" => Some(Value::from_object(Machines {
                scope: self.scope.clone(),
                rec: self.rec.clone(),
            })),
            _ => {
                let mut rec = self.rec.lock().unwrap();
                rec.reads.insert(Key::Fact(k.to_string()));
                let v = self.scope.facts.get(k).map(Value::from_serialize);
                if v.is_none() {
                    rec.last_absent = Some(k.to_string());
                }
                v
            }
        }
    }
}

/// `machines`: every machine's public view, by name.
#[derive(Debug)]
struct Machines {
    scope: Arc<Scope>,
    rec: Shared,
}

impl Object for Machines {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let k = key.as_str()?;
        let mut rec = self.rec.lock().unwrap();
        rec.reads.insert(Key::Peer(k.to_string()));
        let v = self.scope.machines.get(k).map(Value::from_serialize);
        if v.is_none() {
            rec.last_absent = Some(format!("machines.{k}"));
        }
        v
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.rec.lock().unwrap().reads.insert(Key::Peers);
        Enumerator::Values(
            self.scope
                .machines
                .keys()
                .map(|k| Value::from(k.clone()))
                .collect(),
        )
    }
}

/// Render template `name` (its path in the layer stack, like
/// `etc/nginx/site.conf.j2`) whose text is `text`, read from `path`.
pub fn render(
    scope: &Arc<Scope>,
    name: &str,
    path: &Path,
    text: &str,
    includes: Arc<dyn Includes>,
) -> Result<Rendered, RenderError> {
    let rec: Shared = Arc::default();
    rec.lock()
        .unwrap()
        .sources
        .insert(name.to_string(), (path.to_path_buf(), text.to_string()));

    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    // Like Ansible: the newline after a block tag is dropped.
    env.set_trim_blocks(true);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_path_join_callback(join_relative);
    let loader_rec = rec.clone();
    env.set_loader(move |n| {
        if !is_clean_name(n) {
            return Ok(None);
        }
        match includes.lookup(n) {
            Ok(Some(Included { path, text, digest })) => {
                let mut r = loader_rec.lock().unwrap();
                r.includes.insert(n.to_string(), digest);
                r.sources.insert(n.to_string(), (path, text.clone()));
                Ok(Some(text))
            }
            Ok(None) => {
                // Recorded as absent: adding the partial later must re-render.
                loader_rec
                    .lock()
                    .unwrap()
                    .includes
                    .insert(n.to_string(), Digest::ABSENT);
                Ok(None)
            }
            Err(msg) => Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg)),
        }
    });

    let ctx = Value::from_object(Root {
        scope: scope.clone(),
        rec: rec.clone(),
    });
    let result = env
        .add_template_owned(name.to_string(), text.to_string())
        .and_then(|()| env.get_template(name)?.render(ctx));
    drop(env);
    let rec = Arc::try_unwrap(rec)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_else(|arc| std::mem::take(&mut *arc.lock().unwrap()));
    match result {
        Ok(s) => Ok(Rendered {
            bytes: s.into_bytes(),
            reads: rec.reads.into_iter().collect(),
            includes: rec.includes.into_iter().collect(),
        }),
        Err(e) => Err(convert_error(e, name, &rec)),
    }
}

/// Include names are paths inside the layer stack: relative, no `..`.
fn is_clean_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('/')
        && n.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// `./x` and `../x` are relative to the including template's directory.
fn join_relative<'s>(name: &'s str, parent: &'s str) -> std::borrow::Cow<'s, str> {
    if !(name.starts_with("./") || name.starts_with("../")) {
        return name.into();
    }
    let mut parts: Vec<&str> = parent.split('/').collect();
    parts.pop();
    for c in name.split('/') {
        match c {
            "." | "" => {}
            ".." => {
                if parts.pop().is_none() {
                    return name.into();
                }
            }
            c => parts.push(c),
        }
    }
    parts.join("/").into()
}

fn convert_error(outer: minijinja::Error, main: &str, rec: &Recorder) -> RenderError {
    // An error inside an include arrives wrapped ("could not render
    // include"); the innermost one knows the real place and cause.
    let mut e = &outer;
    while let Some(inner) = std::error::Error::source(e).and_then(|s| s.downcast_ref()) {
        e = inner;
    }
    let in_name = e.name().unwrap_or(main).to_string();
    let (path, text) = rec
        .sources
        .get(&in_name)
        .or_else(|| rec.sources.get(main))
        .cloned()
        .unwrap_or_default();
    let at = match (e.range(), e.line()) {
        (Some(r), _) => Located::from_span(&path, &text, r),
        (None, Some(line)) => Located::from_line(&path, &text, line, None),
        (None, None) => Located::from_line(&path, &text, 1, None),
    };
    let snippet = e
        .range()
        .and_then(|r| text.get(r))
        .map(str::trim)
        .unwrap_or("");
    let detail = e.detail().unwrap_or("").to_string();
    match e.kind() {
        ErrorKind::UndefinedError => {
            let name = rec
                .last_absent
                .clone()
                .filter(|n| snippet.contains(n.rsplit('.').next().unwrap_or(n)))
                .unwrap_or_else(|| snippet.to_string());
            let hint = if name.starts_with("machines.") {
                Some("no machine of that name in lab.toml".to_string())
            } else if is_identifier(&name) {
                Some(format!(
                    "define `{name}` under `[facts]` or the machine's `facts` in lab.toml, \
                     or test it with `{{% if {name} is defined %}}`"
                ))
            } else {
                None
            };
            RenderError::Template {
                at,
                message: if name.is_empty() {
                    "undefined value".to_string()
                } else if is_identifier(&name) {
                    format!("undefined variable `{name}`")
                } else {
                    format!("undefined value `{name}`")
                },
                hint,
            }
        }
        ErrorKind::TemplateNotFound => {
            let missing = detail
                .split('"')
                .nth(1)
                .map(str::to_string)
                .unwrap_or_else(|| detail.clone());
            RenderError::Template {
                at,
                message: format!("template `{missing}` not found in the layer stack"),
                hint: Some(
                    "include names are paths from a layer's root, like `_partials/x.j2`, \
                     or relative ones starting with `./`"
                        .into(),
                ),
            }
        }
        ErrorKind::SyntaxError => RenderError::Template {
            at,
            message: format!("syntax error: {detail}"),
            hint: None,
        },
        ErrorKind::InvalidOperation if detail.contains("recursion limit") => {
            match find_cycle(main, rec) {
                Some((chain, at)) => RenderError::IncludeCycle { at, chain },
                None => RenderError::Template {
                    at,
                    message: detail,
                    hint: None,
                },
            }
        }
        kind => RenderError::Template {
            at,
            message: if detail.is_empty() {
                kind.to_string()
            } else {
                format!("{kind}: {detail}")
            },
            hint: None,
        },
    }
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_alphanumeric() || ch == '_')
}

/// `{% include "x" %}`, `{% import "x" as y %}`, `{% from "x" import y %}`,
/// `{% extends "x" %}`: the names a template's text refers to, with the
/// byte range of each name.
fn referenced_names(text: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(open) = text[rest..].find("{%") {
        let start = rest + open + 2;
        let end = text[start..].find("%}").map_or(text.len(), |e| start + e);
        let block = &text[start..end];
        let trimmed = block.trim_start_matches(['-', '+', ' ', '\t', '\n']);
        let kw_at = start + (block.len() - trimmed.len());
        let kw = trimmed.split_whitespace().next().unwrap_or("");
        if matches!(kw, "include" | "import" | "from" | "extends") {
            let after = &trimmed[kw.len()..];
            let lead = after.len() - after.trim_start().len();
            let s = after.trim_start();
            if let Some(q) = s.chars().next().filter(|c| *c == '"' || *c == '\'') {
                if let Some(close) = s[1..].find(q) {
                    let name_at = kw_at + kw.len() + lead + 1;
                    out.push((s[1..1 + close].to_string(), name_at..name_at + close));
                }
            }
        }
        rest = end;
    }
    out
}

/// Depth-first search over the loaded templates for a path back to `main`
/// (or any cycle reachable from it).
fn find_cycle(main: &str, rec: &Recorder) -> Option<(Vec<String>, Located)> {
    fn visit(
        n: &str,
        rec: &Recorder,
        stack: &mut Vec<String>,
        done: &mut IndexSet<String>,
    ) -> Option<(Vec<String>, Located)> {
        let (path, text) = rec.sources.get(n)?;
        stack.push(n.to_string());
        for (child, range) in referenced_names(text) {
            let child = join_relative(&child, n).into_owned();
            if let Some(pos) = stack.iter().position(|s| *s == child) {
                let mut chain = stack[pos..].to_vec();
                chain.push(child);
                return Some((chain, Located::from_span(path, text, range)));
            }
            if !done.contains(&child) {
                if let Some(found) = visit(&child, rec, stack, done) {
                    return Some(found);
                }
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    visit(main, rec, &mut Vec::new(), &mut IndexSet::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_core::Diagnose;
    use serde_json::json;
    use std::collections::HashMap;

    struct Map(HashMap<String, String>);

    impl Includes for Map {
        fn lookup(&self, name: &str) -> Result<Option<Included>, String> {
            Ok(self.0.get(name).map(|t| Included {
                path: PathBuf::from(format!("layers/x/{name}")),
                text: t.clone(),
                digest: Digest::of(t.as_bytes()),
            }))
        }
    }

    fn scope() -> Arc<Scope> {
        let mut s = Scope {
            machine: "web1".into(),
            ..Default::default()
        };
        s.facts.insert("domain".into(), json!("example.org"));
        s.facts.insert("ports".into(), json!([80, 443]));
        let machines = Arc::make_mut(&mut s.machines);
        machines.insert("web1".into(), json!({"name": "web1", "host": "10.0.0.1"}));
        machines.insert("db1".into(), json!({"name": "db1", "host": "10.0.0.2"}));
        Arc::new(s)
    }

    fn run(text: &str, partials: &[(&str, &str)]) -> Result<Rendered, RenderError> {
        let inc = Map(partials
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect());
        render(
            &scope(),
            "etc/site.conf.j2",
            Path::new("layers/x/etc/site.conf.j2"),
            text,
            Arc::new(inc),
        )
    }

    #[test]
    fn renders_and_records_facts_read() {
        let r = run("server {{ domain }}; # {{ machine }}\n", &[]).unwrap();
        assert_eq!(
            String::from_utf8(r.bytes).unwrap(),
            "server example.org; # web1\n"
        );
        assert_eq!(r.reads, vec![Key::Fact("domain".into())]);
    }

    #[test]
    fn peers_are_recorded_per_machine_and_as_a_list() {
        let r = run("{{ machines.db1.host }}", &[]).unwrap();
        assert_eq!(r.reads, vec![Key::Peer("db1".into())]);
        let r = run(
            "{% for m in machines %}{{ machines[m].host }} {% endfor %}",
            &[],
        )
        .unwrap();
        assert_eq!(String::from_utf8(r.bytes).unwrap(), "10.0.0.1 10.0.0.2 ");
        assert_eq!(
            r.reads,
            vec![
                Key::Peers,
                Key::Peer("web1".into()),
                Key::Peer("db1".into())
            ]
        );
    }

    #[test]
    fn is_defined_records_an_absent_fact() {
        let r = run("{% if tls is defined %}tls{% endif %}", &[]).unwrap();
        assert_eq!(r.reads, vec![Key::Fact("tls".into())]);
        assert_eq!(
            scope().digest_of(&Key::Fact("tls".into())),
            Some(Digest::ABSENT)
        );
    }

    #[test]
    fn includes_are_recorded_with_digests() {
        let r = run(
            "{% include \"_partials/a.j2\" %}{% include \"./b.j2\" %}",
            &[("_partials/a.j2", "A{{ domain }}"), ("etc/b.j2", "B")],
        )
        .unwrap();
        assert_eq!(String::from_utf8(r.bytes).unwrap(), "Aexample.orgB");
        assert_eq!(
            r.includes,
            vec![
                ("_partials/a.j2".to_string(), Digest::of(b"A{{ domain }}")),
                ("etc/b.j2".to_string(), Digest::of(b"B")),
            ]
        );
    }

    #[test]
    fn undefined_variable_is_an_error_with_location() {
        let e = run("a\nserver {{ domian }};\n", &[]).unwrap_err();
        assert_eq!(e.to_string(), "undefined variable `domian`");
        let at = e.location().unwrap();
        assert_eq!((at.line, at.col, at.width), (2, 11, 6));
        assert_eq!(at.line_text, "server {{ domian }};");
        assert!(e.hint().unwrap().contains("[facts]"));
    }

    #[test]
    fn syntax_error_in_a_partial_points_into_the_partial() {
        let e = run(
            "{% include \"_partials/p.j2\" %}",
            &[("_partials/p.j2", "x\n{% if %}")],
        )
        .unwrap_err();
        let at = e.location().unwrap();
        assert_eq!(at.path, PathBuf::from("layers/x/_partials/p.j2"));
        assert_eq!(at.line, 2);
        assert!(e.to_string().starts_with("syntax error: "), "{e}");
    }

    #[test]
    fn include_cycle_is_named() {
        let e = run(
            "{% include \"_partials/a.j2\" %}",
            &[
                ("_partials/a.j2", "{% include \"_partials/b.j2\" %}"),
                ("_partials/b.j2", "x {% include '_partials/a.j2' %}"),
            ],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "include cycle: _partials/a.j2 -> _partials/b.j2 -> _partials/a.j2"
        );
        let at = e.location().unwrap();
        assert_eq!(at.path, PathBuf::from("layers/x/_partials/b.j2"));
        assert_eq!((at.line, at.col), (1, 15));
    }

    #[test]
    fn missing_partial() {
        let e = run("{% include \"_partials/nope.j2\" %}", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "template `_partials/nope.j2` not found in the layer stack"
        );
    }

    #[test]
    fn keeps_trailing_newline_and_does_not_escape() {
        let r = run("<{{ '&' }}>\n", &[]).unwrap();
        assert_eq!(r.bytes, b"<&>\n");
    }

    #[test]
    fn relative_join() {
        assert_eq!(join_relative("./b.j2", "etc/a.j2"), "etc/b.j2");
        assert_eq!(join_relative("../b.j2", "etc/x/a.j2"), "etc/b.j2");
        assert_eq!(join_relative("_p/b.j2", "etc/a.j2"), "_p/b.j2");
        assert!(!is_clean_name("../../etc/passwd"));
    }
}
