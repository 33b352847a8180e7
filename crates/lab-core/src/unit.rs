//! How the executor reports a unit after its action, as the words of its
//! line `unit NAME ACTION RESULT ACTIVE SUB` (lab-agent's `executor.sh`
//! writes them; everything that reads them goes through these types), and
//! how a unit of a user's systemd is named.

/// A unit of a user's systemd manager (a rootless pod's `NAME.service` in
/// the pod user's manager) is named `USER/UNIT` wherever lab names units:
/// the unit action journal on the machine, the executor's report, lab's
/// output. `/` never occurs in a systemd unit name, so the two cannot be
/// confused. `USER/` alone (no unit) is that manager itself (its
/// `daemon-reload`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScopedUnit<'a> {
    /// `None`: the system manager.
    pub user: Option<&'a str>,
    pub unit: &'a str,
}

impl<'a> ScopedUnit<'a> {
    pub fn parse(name: &'a str) -> ScopedUnit<'a> {
        match name.split_once('/') {
            Some((user, unit)) => ScopedUnit {
                user: Some(user),
                unit,
            },
            None => ScopedUnit {
                user: None,
                unit: name,
            },
        }
    }

    /// `USER/UNIT`, or `UNIT` for the system manager.
    pub fn name(user: Option<&str>, unit: &str) -> String {
        match user {
            Some(u) => format!("{u}/{unit}"),
            None => unit.to_string(),
        }
    }
}

/// The `RESULT` word: what the action did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitResultCode {
    Ok,
    Failed,
    /// Nothing to do (a reload of a unit that is not running, say), or no
    /// systemd on the machine (then the state is [`UnitState::NoSystemd`]).
    Skipped,
    /// systemd refused to start the unit again so soon (its start limit).
    StartLimit,
}

impl UnitResultCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            UnitResultCode::Ok => "ok",
            UnitResultCode::Failed => "failed",
            UnitResultCode::Skipped => "skipped",
            UnitResultCode::StartLimit => "start-limit",
        }
    }

    pub fn parse(word: &str) -> Option<UnitResultCode> {
        [
            UnitResultCode::Ok,
            UnitResultCode::Failed,
            UnitResultCode::Skipped,
            UnitResultCode::StartLimit,
        ]
        .into_iter()
        .find(|c| c.as_str() == word)
    }

    /// Does this result mean the unit failed?
    pub const fn failed(self) -> bool {
        matches!(self, UnitResultCode::Failed | UnitResultCode::StartLimit)
    }
}

/// The `ACTIVE SUB` words: what the unit is afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitState<'a> {
    /// The executor did not say (`-`).
    Unknown,
    /// The machine has no systemd, so no action ran (`no-systemd`).
    NoSystemd,
    /// systemd's `ActiveState` and `SubState`.
    Known { active: &'a str, sub: &'a str },
}

impl<'a> UnitState<'a> {
    const UNKNOWN: &'static str = "-";
    const NO_SYSTEMD: &'static str = "no-systemd";

    pub fn from_words(active: &'a str, sub: &'a str) -> UnitState<'a> {
        match active {
            Self::UNKNOWN => UnitState::Unknown,
            Self::NO_SYSTEMD => UnitState::NoSystemd,
            _ => UnitState::Known { active, sub },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_names() {
        let u = ScopedUnit::parse("pods/web.service");
        assert_eq!((u.user, u.unit), (Some("pods"), "web.service"));
        assert_eq!(ScopedUnit::name(u.user, u.unit), "pods/web.service");
        let s = ScopedUnit::parse("nginx.service");
        assert_eq!((s.user, s.unit), (None, "nginx.service"));
        assert_eq!(ScopedUnit::parse("pods/").unit, "");
    }

    #[test]
    fn words() {
        for c in [
            UnitResultCode::Ok,
            UnitResultCode::Failed,
            UnitResultCode::Skipped,
            UnitResultCode::StartLimit,
        ] {
            assert_eq!(UnitResultCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(UnitResultCode::parse("later"), None);
        assert!(UnitResultCode::StartLimit.failed() && !UnitResultCode::Skipped.failed());
        assert_eq!(UnitState::from_words("-", "-"), UnitState::Unknown);
        assert_eq!(
            UnitState::from_words("no-systemd", "-"),
            UnitState::NoSystemd
        );
        assert_eq!(
            UnitState::from_words("active", "running"),
            UnitState::Known {
                active: "active",
                sub: "running"
            }
        );
    }
}
