//! Showing errors and warnings: one message, the file with line and column,
//! the offending line with a caret under the culprit, and a `hint:` when
//! the fix is known. Colour as `--color` says; by default (`auto`) only on
//! a terminal and never with `NO_COLOR` (anstream decides, so
//! `CLICOLOR_FORCE` works too).

use anstyle::{AnsiColor, Color};
use lab_config::{Diagnose, Located};
use std::path::Path;

#[derive(Clone, Copy)]
pub struct Style {
    color: bool,
}

impl Style {
    pub fn stderr() -> Style {
        Style {
            color: anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never,
        }
    }

    pub fn colored(&self) -> bool {
        self.color
    }

    /// No colour at all (for text that goes into JSON).
    pub fn plain() -> Style {
        Style { color: false }
    }

    pub fn stdout() -> Style {
        Style {
            color: anstream::AutoStream::choice(&std::io::stdout()) != anstream::ColorChoice::Never,
        }
    }

    fn paint(&self, style: anstyle::Style, s: &str) -> String {
        if self.color {
            format!("{style}{s}{style:#}")
        } else {
            s.to_string()
        }
    }

    fn bold_fg(c: AnsiColor) -> anstyle::Style {
        anstyle::Style::new().bold().fg_color(Some(Color::Ansi(c)))
    }

    pub fn red(&self, s: &str) -> String {
        self.paint(Style::bold_fg(AnsiColor::Red), s)
    }
    pub fn yellow(&self, s: &str) -> String {
        self.paint(Style::bold_fg(AnsiColor::Yellow), s)
    }
    pub fn blue(&self, s: &str) -> String {
        self.paint(Style::bold_fg(AnsiColor::Blue), s)
    }
    pub fn green(&self, s: &str) -> String {
        self.paint(Style::bold_fg(AnsiColor::Green), s)
    }
    pub fn cyan(&self, s: &str) -> String {
        self.paint(Style::bold_fg(AnsiColor::Cyan), s)
    }
    pub fn bold(&self, s: &str) -> String {
        self.paint(anstyle::Style::new().bold(), s)
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
    render_hinted(style, err, context, err.hint())
}

/// A machine's build error, with the machine named once, and a "did you
/// mean" for an undefined variable that is a typo of a fact the machine
/// has. Returns the text and whether the error is the project's
/// (`lab.toml` is wrong: exit 2) rather than the machine's.
pub fn machine_error(
    style: Style,
    engine: &lab_engine::Engine,
    machine: &str,
    err: &lab_engine::MachineError,
) -> (String, bool) {
    use lab_engine::MachineError;
    let ctx = format!("machine `{machine}`");
    match err {
        // its message names the machine already
        MachineError::UnknownLayer { .. } => (render(style, err, None), true),
        _ => {
            let msg = err.to_string();
            let hint = msg
                .strip_prefix("undefined variable `")
                .and_then(|r| r.strip_suffix('`'))
                .and_then(|name| {
                    let close = closest(name, &fact_names(engine, machine))?;
                    Some(match err.hint() {
                        Some(h) => format!("did you mean `{close}`? or {h}"),
                        None => format!("did you mean `{close}`?"),
                    })
                })
                .or_else(|| err.hint());
            (render_hinted(style, err, Some(&ctx), hint), false)
        }
    }
}

/// The names a machine's templates see: lab.toml's facts, the machine's
/// own, the gathered ones, and lab's own variables.
fn fact_names(engine: &lab_engine::Engine, machine: &str) -> Vec<String> {
    let mut names: Vec<String> = engine.project.facts.keys().cloned().collect();
    if let Some(m) = engine.project.machine(machine) {
        names.extend(m.facts.keys().cloned());
    }
    if let Ok(g) = lab_engine::lab_facts::load(engine.lab_dir(), machine) {
        names.extend(g.keys().cloned());
    }
    names.extend(["machine".to_string(), "machines".to_string()]);
    names
}

/// The name within edit distance 2 of `name` (a typo), nearest first.
pub fn closest(name: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .filter(|k| k.as_str() != name)
        .map(|k| (distance(name, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k.clone())
}

/// Edit distance counting a swap of two neighbours as one edit (`wbe` is
/// nearer to `web` than to `db`).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// [`render`] with another hint than the error's own.
pub fn render_hinted(
    style: Style,
    err: &dyn Diagnose,
    context: Option<&str>,
    hint: Option<String>,
) -> String {
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
    if let Some(h) = hint {
        out.push_str(&format!("  {} {}\n", style.cyan("hint:"), relativize(&h)));
    }
    out
}

pub fn warning(style: Style, context: Option<&str>, message: &str) -> String {
    let message = relativize(message);
    match context {
        Some(c) => format!("{} {c}: {message}\n", style.yellow("warning:")),
        None => format!("{} {message}\n", style.yellow("warning:")),
    }
}

/// The user's `~/.ssh/config` (or `LAB_SSH_CONFIG`), as lab's SSH reads
/// it; a file that cannot be read is a usage error, printed.
pub(crate) fn ssh_config(
    style: Style,
) -> Result<Option<lab_sync::ssh2_config::SshConfig>, crate::Failure> {
    lab_sync::ssh::load_ssh_config().map_err(|e| {
        eprint!("{}", render(style, &e, None));
        crate::Failure::Usage
    })
}
