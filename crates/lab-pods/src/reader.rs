//! Reading a YAML tree with positions: every value and key knows its
//! line and column, so every refusal points at its place.

use crate::{Context, PodError};
use lab_core::Located;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{LoadError, Node, Span};
use std::path::Path;

pub(crate) struct Reader<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    pub ctx: &'a Context,
}

pub(crate) type R<T> = Result<T, PodError>;

/// What a scalar looks like to a reader: its text and how many characters
/// it takes in the file (quotes included).
pub(crate) fn shown_width(text: &str, line: usize, col: usize, s: &str) -> usize {
    let n = s.chars().count().max(1);
    match line_of(text, line).chars().nth(col.saturating_sub(1)) {
        Some('"') | Some('\'') => n + 2,
        _ => n,
    }
}

pub(crate) fn line_of(text: &str, line: usize) -> &str {
    text.lines()
        .nth(line.saturating_sub(1))
        .unwrap_or("")
        .trim_end_matches('\r')
}

impl<'a> Reader<'a> {
    pub(crate) fn located(&self, span: &Span, width: usize) -> Located {
        match span.start() {
            Some(m) => Located {
                path: self.path.to_path_buf(),
                line: m.line(),
                col: m.column(),
                line_text: line_of(self.text, m.line()).to_string(),
                width: width.max(1),
            },
            None => Located::file(self.path),
        }
    }

    pub(crate) fn at_scalar(&self, s: &MarkedScalarNode) -> Located {
        let width = s.span().start().map_or(1, |m| {
            shown_width(self.text, m.line(), m.column(), s.as_str())
        });
        self.located(s.span(), width)
    }

    pub(crate) fn at_node(&self, n: &Node) -> Located {
        match n {
            Node::Scalar(s) => self.at_scalar(s),
            other => self.located(other.span(), 1),
        }
    }

    pub(crate) fn err(
        &self,
        at: Located,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> PodError {
        PodError {
            at,
            message: message.into(),
            hint,
        }
    }

    /// Every key of `map` must be in `allowed`.
    pub(crate) fn only(&self, map: &MarkedMappingNode, allowed: &[&str], place: &str) -> R<()> {
        for k in map.keys() {
            if !allowed.contains(&k.as_str()) {
                let hint = crate::spec::refused_hint(k.as_str()).unwrap_or_else(|| {
                    format!(
                        "lab supports in {place}: {}",
                        allowed
                            .iter()
                            .map(|a| format!("`{a}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                });
                return Err(self.err(
                    self.at_scalar(k),
                    format!("`{}` is not supported in {place}", k.as_str()),
                    Some(hint),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn key<'n>(
        &self,
        map: &'n MarkedMappingNode,
        k: &str,
    ) -> Option<(&'n MarkedScalarNode, &'n Node)> {
        map.iter().find(|(key, _)| key.as_str() == k)
    }

    pub(crate) fn required<'n>(
        &self,
        map: &'n MarkedMappingNode,
        k: &str,
        place: &str,
        at: &Located,
    ) -> R<&'n Node> {
        match self.key(map, k) {
            Some((_, v)) => Ok(v),
            None => Err(self.err(at.clone(), format!("{place} has no `{k}`"), None)),
        }
    }

    pub(crate) fn mapping<'n>(&self, n: &'n Node, what: &str) -> R<&'n MarkedMappingNode> {
        n.as_mapping()
            .ok_or_else(|| self.err(self.at_node(n), format!("{what} must be a mapping"), None))
    }

    pub(crate) fn sequence<'n>(&self, n: &'n Node, what: &str) -> R<&'n MarkedSequenceNode> {
        n.as_sequence()
            .ok_or_else(|| self.err(self.at_node(n), format!("{what} must be a list"), None))
    }

    pub(crate) fn string<'n>(&self, n: &'n Node, what: &str) -> R<&'n MarkedScalarNode> {
        n.as_scalar()
            .ok_or_else(|| self.err(self.at_node(n), format!("{what} must be a string"), None))
    }

    pub(crate) fn strings(&self, n: &Node, what: &str) -> R<Vec<String>> {
        self.sequence(n, what)?
            .iter()
            .map(|i| {
                self.string(i, &format!("each item of {what}"))
                    .map(|s| s.as_str().to_string())
            })
            .collect()
    }

    pub(crate) fn boolean(&self, n: &Node, what: &str) -> R<bool> {
        let s = self.string(n, what)?;
        match s.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(self.err(
                self.at_scalar(s),
                format!("{what} must be `true` or `false`"),
                None,
            )),
        }
    }

    pub(crate) fn int(&self, n: &Node, what: &str) -> R<i64> {
        let s = self.string(n, what)?;
        s.as_str().parse::<i64>().map_err(|_| {
            self.err(
                self.at_scalar(s),
                format!("{what} must be a whole number"),
                None,
            )
        })
    }

    pub(crate) fn port(&self, n: &Node, what: &str) -> R<u16> {
        let s = self.string(n, what)?;
        match s.as_str().parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
            _ => Err(self.err(
                self.at_scalar(s),
                format!("{what} must be a port number (1 to 65535)"),
                None,
            )),
        }
    }

    pub(crate) fn dns_label(&self, s: &MarkedScalarNode, what: &str) -> R<String> {
        let v = s.as_str();
        let ok = !v.is_empty()
            && v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !v.starts_with('-')
            && !v.ends_with('-');
        if !ok {
            return Err(self.err(
                self.at_scalar(s),
                format!("{what} `{v}` is not a valid name"),
                Some("use lowercase letters, digits and `-` (at most 63, not starting or ending with `-`)".into()),
            ));
        }
        Ok(v.to_string())
    }

    pub(crate) fn string_map(&self, n: &Node, what: &str) -> R<Vec<(String, String)>> {
        let m = self.mapping(n, what)?;
        m.iter()
            .map(|(k, v)| {
                let v = self.string(v, &format!("`{}` in {what}", k.as_str()))?;
                Ok((k.as_str().to_string(), v.as_str().to_string()))
            })
            .collect()
    }
}

pub(crate) fn load_error(path: &Path, text: &str, e: &LoadError) -> PodError {
    let (m, message) = match e {
        LoadError::TopLevelMustBeMapping(m) => {
            (*m, "a pod file must be a YAML mapping".to_string())
        }
        LoadError::UnexpectedAnchor(m) => (
            *m,
            "anchors and aliases are not supported in pod files".to_string(),
        ),
        LoadError::MappingKeyMustBeScalar(m) => (*m, "keys must be plain strings".to_string()),
        LoadError::UnexpectedTag(m) => (*m, "YAML tags are not supported in pod files".to_string()),
        LoadError::ScanError(m, se) => (*m, format!("invalid YAML: {}", se.info())),
        LoadError::DuplicateKey(inner) => {
            let k = &inner.key;
            let m = k
                .span()
                .start()
                .copied()
                .unwrap_or(marked_yaml::Marker::new(0, 0, 1, 1));
            (m, format!("`{}` is given twice", k.as_str()))
        }
        other => {
            return PodError {
                at: Located::file(path),
                message: format!("invalid YAML: {other}"),
                hint: None,
            }
        }
    };
    PodError {
        at: Located {
            path: path.to_path_buf(),
            line: m.line().max(1),
            col: m.column().max(1),
            line_text: line_of(text, m.line().max(1)).to_string(),
            width: 1,
        },
        message,
        hint: None,
    }
}
