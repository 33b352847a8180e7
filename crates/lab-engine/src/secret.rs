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

/// Facts decrypted from `secret_facts` files: top-level keys for every
/// machine, `[machines.NAME]` for one. Their values are remembered as
/// secrets (see `lab_core::secrets`), so no diff shows them.
#[derive(Clone, Debug, Default)]
pub struct SecretFacts {
    pub global: indexmap::IndexMap<String, serde_json::Value>,
    pub machines: indexmap::IndexMap<String, indexmap::IndexMap<String, serde_json::Value>>,
}

impl AgeKeys {
    /// Decrypt and read the `secret_facts` files (`shown` relative to the
    /// project in errors).
    pub fn secret_facts(
        &self,
        project: &Path,
        files: &[PathBuf],
    ) -> Result<SecretFacts, (PathBuf, String)> {
        let mut out = SecretFacts::default();
        for f in files {
            let shown = f.strip_prefix(project).unwrap_or(f).to_path_buf();
            let bytes = std::fs::read(f).map_err(|e| (shown.clone(), e.to_string()))?;
            let plain = self.decrypt(&shown, &bytes).map_err(|e| match e {
                MachineError::Age { message, .. } => (shown.clone(), message),
                other => (shown.clone(), other.to_string()),
            })?;
            let text =
                String::from_utf8(plain).map_err(|_| (shown.clone(), "not UTF-8 text".into()))?;
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| (shown.clone(), format!("not TOML: {}", e.message())))?;
            for (k, v) in table {
                let v = serde_json::to_value(v).unwrap_or_default();
                if k == "machines" {
                    if let serde_json::Value::Object(ms) = v {
                        for (m, facts) in ms {
                            if let serde_json::Value::Object(facts) = facts {
                                let e = out.machines.entry(m).or_default();
                                for (fk, fv) in facts {
                                    remember_leaves(&fv);
                                    e.insert(fk, fv);
                                }
                            }
                        }
                    }
                    continue;
                }
                remember_leaves(&v);
                out.global.insert(k, v);
            }
        }
        Ok(out)
    }
}

fn remember_leaves(v: &serde_json::Value) {
    match v {
        serde_json::Value::String(s) => lab_core::secrets::remember(s),
        serde_json::Value::Number(n) => lab_core::secrets::remember(&n.to_string()),
        serde_json::Value::Array(a) => a.iter().for_each(remember_leaves),
        serde_json::Value::Object(o) => o.values().for_each(remember_leaves),
        _ => {}
    }
}
