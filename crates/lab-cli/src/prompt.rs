//! Questions lab asks on the terminal: the passphrase of a protected key,
//! read from `/dev/tty` without echo (never from stdin, never shown).

use std::path::Path;

pub struct TtyPassphrase;

impl lab_sync::ssh::PassphrasePrompt for TtyPassphrase {
    fn passphrase(&self, key: &Path) -> Option<String> {
        rpassword::prompt_password(format!("Enter passphrase for key '{}': ", key.display())).ok()
    }
}
