use crate::Digest;
use serde::{Deserialize, Serialize};

/// What `lstat` says about a source file, as far as change detection cares.
/// `mode` is the full `st_mode` (file type and permission bits), so a chmod
/// or a kind change (file to symlink) is a stat change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    pub mtime_ns: i64,
    pub size: u64,
    pub ino: u64,
    pub mode: u32,
}

/// A source file's stat together with the digest of its content (for a
/// symlink, of its target text) taken when the file had that stat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub stat: Stat,
    pub digest: Digest,
}

impl Fingerprint {
    /// May the recorded digest stand for a file whose stat is now `now`,
    /// without reading it?
    ///
    /// Only if the stat is identical *and* the recorded mtime lies before
    /// `scanned_at_ns`, the moment the scan that recorded it began. A file
    /// whose mtime is not older than that scan could have been written again
    /// within the same clock tick after it was hashed (the "racy clean" case
    /// git also guards against), so it is hashed again.
    pub fn reusable(&self, now: &Stat, scanned_at_ns: i64) -> bool {
        self.stat == *now && self.stat.mtime_ns < scanned_at_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(mtime_ns: i64) -> Stat {
        Stat {
            mtime_ns,
            size: 3,
            ino: 7,
            mode: 0o100644,
        }
    }

    #[test]
    fn same_old_stat_is_reused() {
        let fp = Fingerprint {
            stat: stat(100),
            digest: Digest::of(b"abc"),
        };
        assert!(fp.reusable(&stat(100), 200));
    }

    #[test]
    fn any_stat_change_rehashes() {
        let fp = Fingerprint {
            stat: stat(100),
            digest: Digest::of(b"abc"),
        };
        assert!(!fp.reusable(&stat(101), 200));
        assert!(!fp.reusable(
            &Stat {
                size: 4,
                ..stat(100)
            },
            200
        ));
        assert!(!fp.reusable(
            &Stat {
                ino: 8,
                ..stat(100)
            },
            200
        ));
        assert!(!fp.reusable(
            &Stat {
                mode: 0o100755,
                ..stat(100)
            },
            200
        ));
    }

    #[test]
    fn racy_mtime_rehashes() {
        let fp = Fingerprint {
            stat: stat(200),
            digest: Digest::of(b"abc"),
        };
        assert!(!fp.reusable(&stat(200), 200));
    }
}
