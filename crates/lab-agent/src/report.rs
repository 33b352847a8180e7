//! Reading what the executor printed.

use lab_core::Digest;

/// What happened to one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitResult {
    pub unit: String,
    /// The action taken (`restart`, `reload`, ...).
    pub action: String,
    /// `ok`, `failed`, `skipped` or `start-limit` (systemd refused to start
    /// the unit again so soon).
    pub result: String,
    /// `ActiveState` and `SubState` afterwards.
    pub active: String,
    pub sub: String,
    /// The tail of the unit's journal, when it failed.
    pub journal: Vec<String>,
}

impl UnitResult {
    pub fn failed(&self) -> bool {
        self.result == "failed" || self.result == "start-limit"
    }
}

/// The executor's report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// `applied GEN DIGEST` or `rolledback GEN DIGEST`: where the machine is now.
    pub now: Option<(u64, Option<Digest>)>,
    /// `stale GEN DIGEST`: the machine was not at the expected generation.
    pub stale: Option<(u64, Option<Digest>)>,
    /// `fail ...` lines.
    pub failures: Vec<String>,
    /// `daemon-reload ok|failed|skipped`
    pub daemon_reload: Option<String>,
    pub units: Vec<UnitResult>,
    /// Anything else worth showing (`restored PATH`, `kept PATH`,
    /// `recovered ...`).
    pub notes: Vec<String>,
    /// The run got to its end (`end`, its last line). A run killed on the
    /// way has none, whatever exit status the connection reports.
    pub finished: bool,
}

fn gen_digest(rest: &str) -> Option<(u64, Option<Digest>)> {
    let mut it = rest.split_whitespace();
    let gen = it.next()?.parse().ok()?;
    let digest = it.next().and_then(Digest::from_hex);
    Some((gen, digest))
}

impl Report {
    pub fn parse(text: &str) -> Report {
        let mut r = Report::default();
        let mut journal: Option<usize> = None;
        for line in text.lines() {
            if let Some(i) = journal {
                if line.starts_with("endjournal ") {
                    journal = None;
                } else {
                    r.units[i]
                        .journal
                        .push(line.strip_prefix("| ").unwrap_or(line).to_string());
                }
                continue;
            }
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            match word {
                "applied" | "rolledback" | "resumed" => r.now = gen_digest(rest),
                // (read by `Check::parse`)
                "drift" | "pending" => {}
                "stale" => r.stale = gen_digest(rest),
                "fail" => r.failures.push(rest.to_string()),
                "end" if rest.is_empty() => r.finished = true,
                "daemon-reload" => r.daemon_reload = Some(rest.to_string()),
                "unit" => {
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    if f.len() >= 3 {
                        r.units.push(UnitResult {
                            unit: f[0].to_string(),
                            action: f[1].to_string(),
                            result: f[2].to_string(),
                            active: f.get(3).unwrap_or(&"-").to_string(),
                            sub: f.get(4).unwrap_or(&"-").to_string(),
                            journal: Vec::new(),
                        });
                    }
                }
                "journal" => {
                    journal = r.units.iter().rposition(|u| u.unit == rest);
                    if journal.is_none() {
                        r.notes.push(line.to_string());
                    }
                }
                "" => {}
                _ => r.notes.push(line.to_string()),
            }
        }
        r
    }

    /// A disk-full failure: (path on the machine, bytes needed, bytes free).
    pub fn no_space(&self) -> Option<(String, u64, u64)> {
        self.failures.iter().find_map(|f| {
            let rest = f.strip_prefix("nospace ")?;
            let mut it = rest.splitn(3, ' ');
            let need = it.next()?.parse().ok()?;
            let free = it.next()?.parse().ok()?;
            Some((it.next()?.to_string(), need, free))
        })
    }

    pub fn failed_units(&self) -> impl Iterator<Item = &UnitResult> {
        self.units.iter().filter(|u| u.failed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_journal() {
        let d = Digest::of(b"x");
        let text = format!(
            "recovered interrupted sync\napplied 4 {d}\ndaemon-reload ok\n\
             unit app.service restart failed failed failed\njournal app.service\n\
             | line one\n| line two\nendjournal app.service\n\
             unit nginx.service reload ok active running\nkept /etc/x\n"
        );
        let r = Report::parse(&text);
        assert_eq!(r.now, Some((4, Some(d))));
        assert_eq!(r.daemon_reload.as_deref(), Some("ok"));
        assert_eq!(r.units.len(), 2);
        assert_eq!(r.units[0].journal, vec!["line one", "line two"]);
        assert!(r.units[0].failed());
        assert!(!r.units[1].failed());
        assert_eq!(r.notes, vec!["recovered interrupted sync", "kept /etc/x"]);
        assert_eq!(Report::parse("stale 0 none\n").stale, Some((0, None)));
        assert!(!r.finished);
        let r = Report::parse("fail nospace 2097152 1048576 /srv/a b\nend\n");
        assert!(r.finished);
        assert_eq!(r.no_space(), Some(("/srv/a b".into(), 2097152, 1048576)));
    }
}
