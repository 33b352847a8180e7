//! An OpenSSH public key as a user hands it in (one `authorized_keys`
//! line without options): checked before it goes near a machine, so
//! that what is appended to an `authorized_keys` file is exactly one key
//! line and nothing else.

use base64::Engine as _;

/// The key types accepted (what OpenSSH's `ssh-keygen` makes).
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Longest key line taken (an RSA 16384 key is about 2.8 kB).
const MAX_LINE: usize = 8 * 1024;

/// A checked public key: `TYPE BASE64 [COMMENT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kind: String,
    /// The key's base64 text, as given.
    pub blob: String,
    pub comment: String,
}

/// Why a text is not an OpenSSH public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an OpenSSH public key: {0}")]
pub struct KeyError(pub String);

impl PublicKey {
    /// Check `text`: one line (a final newline is allowed), `TYPE BASE64
    /// [COMMENT]`, a known type, base64 that decodes to a key blob of that
    /// same type, a comment of printable characters. Options (`command=`,
    /// `from=`...) and private keys are refused.
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let err = |m: String| Err(KeyError(m));
        let line = text.strip_suffix('\n').unwrap_or(text);
        let line = line.strip_suffix('\r').unwrap_or(line).trim();
        if line.is_empty() {
            return err("the key is empty: paste the one line of a `.pub` file".into());
        }
        if line.contains(['\n', '\r']) {
            return err("it has more than one line: give one key, one line".into());
        }
        if line.len() > MAX_LINE {
            return err(format!("it is longer than {MAX_LINE} bytes"));
        }
        if line.contains("PRIVATE KEY") {
            return err("this is a private key: give the `.pub` file's line, and keep the private key to yourself".into());
        }
        let mut parts = line.splitn(3, [' ', '\t']);
        let kind = parts.next().unwrap_or_default();
        let blob = parts.next().unwrap_or_default().trim();
        let comment = parts.next().unwrap_or_default().trim();
        if !KEY_TYPES.contains(&kind) {
            return err(format!(
                "`{}` is not a key type (the line starts with one of {}; options are not taken)",
                kind.chars().take(40).collect::<String>(),
                KEY_TYPES.join(", ")
            ));
        }
        if blob.is_empty() {
            return err(format!("no base64 key after `{kind}`"));
        }
        let bytes = match base64::engine::general_purpose::STANDARD.decode(blob) {
            Ok(b) => b,
            Err(_) => return err(format!("the text after `{kind}` is not base64")),
        };
        // the blob starts with its own type, as an SSH string
        let inner = bytes
            .get(..4)
            .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
            .and_then(|n| bytes.get(4..4 + n));
        if inner != Some(kind.as_bytes()) || bytes.len() < 4 + kind.len() + 16 {
            return err(format!("the base64 key is not a `{kind}` key"));
        }
        if comment.chars().any(|c| c.is_control()) {
            return err("the comment holds control characters".into());
        }
        Ok(PublicKey {
            kind: kind.into(),
            blob: blob.into(),
            comment: comment.into(),
        })
    }

    /// The `authorized_keys` line.
    pub fn line(&self) -> String {
        if self.comment.is_empty() {
            format!("{} {}", self.kind, self.blob)
        } else {
            format!("{} {} {}", self.kind, self.blob, self.comment)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJq9OwHCNj+uFCjTTit6BICaoVBciA07qHeKWou66Slm alice@laptop";

    #[test]
    fn a_public_key_line_is_taken() {
        let k = PublicKey::parse(&format!("{ED}\n")).unwrap();
        assert_eq!(k.kind, "ssh-ed25519");
        assert_eq!(k.comment, "alice@laptop");
        assert_eq!(k.line(), ED);
        let bare = PublicKey::parse(&ED[..ED.rfind(' ').unwrap()]).unwrap();
        assert_eq!(bare.comment, "");
    }

    #[test]
    fn anything_else_is_refused_saying_why() {
        let cases = [
            ("", "the key is empty"),
            (&format!("{ED}\n{ED}"), "more than one line"),
            (
                &format!("command=\"sh\" {ED}"),
                "`command=\"sh\"` is not a key type",
            ),
            ("ssh-ed25519", "no base64 key after `ssh-ed25519`"),
            ("ssh-ed25519 not*base64 x", "is not base64"),
            (
                &ED.replace("ssh-ed25519", "ssh-rsa"),
                "the base64 key is not a `ssh-rsa` key",
            ),
            (
                "ssh-ed25519 AAAA",
                "the base64 key is not a `ssh-ed25519` key",
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----",
                "this is a private key",
            ),
            (&format!("{ED}\u{1b}[2J"), "control characters"),
        ];
        for (text, why) in cases {
            let e = PublicKey::parse(text).unwrap_err().to_string();
            assert!(e.starts_with("not an OpenSSH public key: "), "{e}");
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }
}
