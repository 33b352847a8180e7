//! Sources encrypted with age (`NAME.age`, `NAME.j2.age`): decrypted at
//! build time with the identities of `$LAB_AGE_IDENTITY` and lab.toml's
//! `age_identities`, so secrets can live in git. A decrypted output is
//! written 0600 and its content is never shown (see `show`); lab-sync's
//! diff shows no content of a file that only its owner may read.

use crate::MachineError;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The suffix of an encrypted source.
pub const AGE_SUFFIX: &str = ".age";

/// The mode of an output decrypted from an age source.
pub const SECRET_MODE: u32 = 0o600;

/// Is this source (a path inside a root) encrypted?
pub fn encrypted(src: &str) -> bool {
    src.ends_with(AGE_SUFFIX)
}

/// The identities, read once, on first use (a build without encrypted
/// sources never reads them).
pub struct AgeKeys {
    files: Vec<PathBuf>,
    keys: OnceLock<Result<Vec<age::x25519::Identity>, String>>,
}

impl AgeKeys {
    pub fn new(settings: &[PathBuf]) -> AgeKeys {
        let mut files: Vec<PathBuf> = std::env::var_os("LAB_AGE_IDENTITY")
            .map(|v| std::env::split_paths(&v).collect())
            .unwrap_or_default();
        files.extend(settings.iter().cloned());
        AgeKeys {
            files,
            keys: OnceLock::new(),
        }
    }

    fn keys(&self) -> &Result<Vec<age::x25519::Identity>, String> {
        self.keys.get_or_init(|| {
            let mut keys = Vec::new();
            for f in &self.files {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| format!("identity file `{}`: {e}", f.display()))?;
                for line in text.lines().map(str::trim) {
                    if line.starts_with("AGE-SECRET-KEY-") {
                        keys.push(
                            line.parse()
                                .map_err(|e| format!("identity file `{}`: {e}", f.display()))?,
                        );
                    }
                }
            }
            Ok(keys)
        })
    }

    /// The plaintext of encrypted source `shown` (its bytes `ciphertext`).
    pub fn decrypt(&self, shown: &Path, ciphertext: &[u8]) -> Result<Vec<u8>, MachineError> {
        let err = |message: String| MachineError::Age {
            path: shown.to_path_buf(),
            message,
        };
        let keys = self.keys().as_ref().map_err(|e| err(e.clone()))?;
        if keys.is_empty() {
            return Err(err("no age identity is set".into()));
        }
        let decryptor = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(ciphertext))
            .map_err(|e| err(format!("not an age file: {e}")))?;
        let mut reader = decryptor
            .decrypt(keys.iter().map(|k| k as &dyn age::Identity))
            .map_err(|e| err(e.to_string()))?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut out).map_err(|e| err(e.to_string()))?;
        Ok(out)
    }
}
