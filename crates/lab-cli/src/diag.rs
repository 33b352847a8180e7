//! Showing errors and warnings: one message, the file with line and column,
//! the offending line with a caret under the culprit, and a `hint:` when
//! the fix is known. Colour only on a terminal and never with `NO_COLOR`.

use lab_config::{Diagnose, Located};
use std::io::IsTerminal;
use std::path::Path;

#[derive(Clone, Copy)]
pub struct Style {
    color: bool,
}

impl Style {
    pub fn stderr() -> Style {
        Style {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stderr().is_terminal(),
        }
    }

    /// No colour at all (for text that goes into JSON).
    pub fn plain() -> Style {
        Style { color: false }
    }

    pub fn stdout() -> Style {
        Style {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stdout().is_terminal(),
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    pub fn red(&self, s: &str) -> String {
        self.paint("1;31", s)
    }
    pub fn yellow(&self, s: &str) -> String {
        self.paint("1;33", s)
    }
    pub fn blue(&self, s: &str) -> String {
        self.paint("1;34", s)
    }
    pub fn green(&self, s: &str) -> String {
        self.paint("1;32", s)
    }
    pub fn cyan(&self, s: &str) -> String {
        self.paint("1;36", s)
    }
    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
}

/// A path as the user should see it: relative to the working directory
/// when it lies below it.
pub fn shown(path: &Path) -> String {
    if let Ok(cwd) = std::env::current_dir() {
        if let Ok(rel) = path.strip_prefix(&cwd) {
            return rel.display().to_string();
        }
    }
    path.display().to_string()
}

/// Paths inside messages, relative to the working directory like [`shown`].
fn relativize(msg: &str) -> String {
    match std::env::current_dir() {
        Ok(cwd) if cwd != Path::new("/") => msg.replace(&format!("{}/", cwd.display()), ""),
        _ => msg.to_string(),
    }
}

fn location_block(style: Style, at: &Located, out: &mut String) {
    let path = shown(&at.path);
    if at.line == 0 {
        out.push_str(&format!("  {} {path}\n", style.blue("-->")));
        return;
    }
    let num = at.line.to_string();
    let pad = " ".repeat(num.len());
    out.push_str(&format!(
        "{pad}{} {path}:{}:{}\n",
        style.blue("-->"),
        at.line,
        at.col
    ));
    out.push_str(&format!("{pad} {}\n", style.blue("|")));
    out.push_str(&format!(
        "{} {} {}\n",
        style.blue(&num),
        style.blue("|"),
        at.line_text
    ));
    let before: String = at
        .line_text
        .chars()
        .take(at.col.saturating_sub(1))
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    out.push_str(&format!(
        "{pad} {} {before}{}\n",
        style.blue("|"),
        style.red(&"^".repeat(at.width.max(1)))
    ));
}

/// Format a diagnostic. `context` prefixes the message (`machine `web1``).
pub fn render(style: Style, err: &dyn Diagnose, context: Option<&str>) -> String {
    let mut out = String::new();
    let msg = match context {
        Some(c) => format!("{c}: {err}"),
        None => err.to_string(),
    };
    let msg = relativize(&msg);
    out.push_str(&format!("{} {}\n", style.red("error:"), style.bold(&msg)));
    if let Some(at) = err.location() {
        location_block(style, at, &mut out);
    }
    if let Some(h) = err.hint() {
        out.push_str(&format!("  {} {}\n", style.cyan("hint:"), relativize(&h)));
    }
    out
}

pub fn warning(style: Style, context: Option<&str>, message: &str) -> String {
    match context {
        Some(c) => format!("{} {c}: {message}\n", style.yellow("warning:")),
        None => format!("{} {message}\n", style.yellow("warning:")),
    }
}
