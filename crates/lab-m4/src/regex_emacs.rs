//! GNU m4's regular expressions (GNU regex, `RE_SYNTAX_EMACS`, anchors
//! matching at newlines) translated to the `regex` crate, for the part of
//! the syntax where both engines find the same match: no alternation
//! (`\|`: GNU regex picks the longest, `regex` the first alternative), no
//! back-references, no repeated groups, no intervals, no character
//! classes by name. Anything else gives `None` and the caller falls back
//! to GNU m4.

use regex::bytes::{Regex, RegexBuilder};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Compiled patterns, shared: templates use the same few over and over.
fn cache() -> &'static Mutex<HashMap<Vec<u8>, Option<Regex>>> {
    static C: OnceLock<Mutex<HashMap<Vec<u8>, Option<Regex>>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

pub fn compile(pat: &[u8]) -> Option<Regex> {
    if let Some(r) = cache().lock().ok()?.get(pat) {
        return r.clone();
    }
    let r = translate(pat).and_then(|t| {
        RegexBuilder::new(&t)
            .unicode(false)
            .multi_line(true)
            .dot_matches_new_line(false)
            .build()
            .ok()
    });
    if let Ok(mut c) = cache().lock() {
        if c.len() < 4096 {
            c.insert(pat.to_vec(), r.clone());
        }
    }
    r
}

fn lit(c: u8, out: &mut String) {
    out.push_str(&regex::escape(&(c as char).to_string()));
}

fn translate(p: &[u8]) -> Option<String> {
    if !p.is_ascii() {
        return None;
    }
    let mut out = String::new();
    // at the start of the pattern or a group: `*+?` are literal, `^` anchors
    let mut start = true;
    // what the last item was: can it take a repetition operator?
    #[derive(PartialEq)]
    enum Last {
        None,
        Atom,
        Group,
        Repeated,
        Anchor,
    }
    let mut last = Last::None;
    let mut depth = 0usize;
    let mut i = 0;
    while i < p.len() {
        let c = p[i];
        match c {
            b'\\' => {
                let n = *p.get(i + 1)?;
                i += 2;
                match n {
                    b'(' => {
                        out.push('(');
                        depth += 1;
                        start = true;
                        last = Last::None;
                        continue;
                    }
                    b')' => {
                        if depth == 0 {
                            return None;
                        }
                        depth -= 1;
                        out.push(')');
                        last = Last::Group;
                    }
                    b'|' | b'{' | b'}' | b'1'..=b'9' => return None,
                    b'w' => {
                        out.push_str("[0-9A-Za-z_]");
                        last = Last::Atom;
                    }
                    b'W' => {
                        out.push_str("[^0-9A-Za-z_]");
                        last = Last::Atom;
                    }
                    b's' => {
                        out.push_str(r"[\t\n\x0B\x0C\r ]");
                        last = Last::Atom;
                    }
                    b'S' => {
                        out.push_str(r"[^\t\n\x0B\x0C\r ]");
                        last = Last::Atom;
                    }
                    b'b' | b'B' | b'<' | b'>' | b'`' | b'\'' => {
                        out.push_str(match n {
                            b'b' => r"\b",
                            b'B' => r"\B",
                            b'<' => r"\b{start}",
                            b'>' => r"\b{end}",
                            b'`' => r"\A",
                            _ => r"\z",
                        });
                        last = Last::Anchor;
                    }
                    other => {
                        lit(other, &mut out);
                        last = Last::Atom;
                    }
                }
                start = false;
            }
            b'^' if start => {
                out.push('^');
                i += 1;
                // `*` right after a leading `^` is literal too
                last = Last::None;
                continue;
            }
            b'$' => {
                let at_end = i + 1 == p.len()
                    || p[i + 1..].starts_with(b"\\)")
                    || p[i + 1..].starts_with(b"\\|");
                if at_end {
                    out.push('$');
                    last = Last::Anchor;
                } else {
                    lit(b'$', &mut out);
                    last = Last::Atom;
                }
                i += 1;
                start = false;
            }
            b'*' | b'+' | b'?' if !start && last != Last::None => {
                match last {
                    Last::Atom => {}
                    // repeated groups (POSIX sub-match rules), repeated
                    // repetitions and repeated anchors: not modelled
                    _ => return None,
                }
                out.push(c as char);
                last = Last::Repeated;
                i += 1;
            }
            b'[' => {
                i += 1;
                let mut class = String::from("[");
                if p.get(i) == Some(&b'^') {
                    class.push('^');
                    i += 1;
                }
                let mut first = true;
                let mut items: Vec<u8> = Vec::new();
                loop {
                    let ch = *p.get(i)?;
                    if ch == b']' && !first {
                        i += 1;
                        break;
                    }
                    if ch == b'[' && matches!(p.get(i + 1), Some(b':' | b'=' | b'.')) {
                        return None;
                    }
                    items.push(ch);
                    first = false;
                    i += 1;
                }
                let mut k = 0;
                while k < items.len() {
                    let a = items[k];
                    if k + 2 < items.len() && items[k + 1] == b'-' {
                        let b = items[k + 2];
                        if a > b {
                            return None;
                        }
                        class.push_str(&format!(r"\x{a:02X}-\x{b:02X}"));
                        k += 3;
                    } else {
                        class.push_str(&format!(r"\x{a:02X}"));
                        k += 1;
                    }
                }
                class.push(']');
                if class == "[]" || class == "[^]" {
                    return None;
                }
                out.push_str(&class);
                last = Last::Atom;
                start = false;
            }
            b'.' => {
                out.push('.');
                last = Last::Atom;
                start = false;
                i += 1;
            }
            other => {
                lit(other, &mut out);
                last = Last::Atom;
                start = false;
                i += 1;
            }
        }
    }
    if depth != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::translate;

    #[test]
    fn translations() {
        assert_eq!(translate(b"a*b").unwrap(), "a*b");
        assert_eq!(translate(b"*a").unwrap(), r"\*a");
        assert_eq!(translate(b"^*a").unwrap(), r"^\*a");
        assert_eq!(translate(b"a^b$c$").unwrap(), r"a\^b\$c$");
        assert_eq!(translate(b"\\(a\\)\\w").unwrap(), "(a)[0-9A-Za-z_]");
        assert_eq!(translate(b"(a|b)").unwrap(), r"\(a\|b\)");
        assert!(translate(b"a\\|b").is_none());
        assert!(translate(b"\\(a\\)*").is_none());
        assert!(translate(b"\\(a").is_none());
        assert!(translate(b"[[:alpha:]]").is_none());
    }
}
