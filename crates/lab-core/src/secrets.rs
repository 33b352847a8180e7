//! Values that must never be printed: facts decrypted from age files. The
//! engine registers them when it decrypts; whatever shows text to a person
//! (lab-sync's diff) masks every occurrence. Process-wide, because the
//! text to mask is produced far from where the secret was read.

use std::sync::Mutex;

static VALUES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remember a secret value (values shorter than 4 characters are too
/// common a text to be masked wherever they occur, and are not).
pub fn remember(value: &str) {
    if value.chars().count() < 4 {
        return;
    }
    let mut v = VALUES.lock().unwrap_or_else(|e| e.into_inner());
    if !v.iter().any(|x| x == value) {
        v.push(value.to_string());
        // longest first, so a secret that contains another is masked whole
        v.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every remembered value replaced by `mask`.
pub fn mask(text: &str, mask: &str) -> String {
    let v = VALUES.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for s in v.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), mask);
        }
    }
    out
}
