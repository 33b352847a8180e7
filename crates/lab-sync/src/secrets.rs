//! Masking of secrets in text that lab shows (`lab diff`).
//!
//! A value is masked when its key names a secret: it contains `password`,
//! `passwd`, `passphrase`, `secret`, `token`, `credential`, `apikey`,
//! `api_key` or `private_key`, or its last word is `pass`, `pwd` or `key`
//! (`DB_PASS`, `pwd`, `ssh-key`); a key whose last word is `file`, `path`,
//! `dir`, `url` or `uri` holds a reference, not a secret
//! (`POSTGRES_PASSWORD_FILE=/run/secrets/pg`), and is shown. Keys are found
//! wherever they stand in a line (`Environment=DB_PASS=x`, `"token": "x"`,
//! `export DB_PASS=x`); a key that starts a line may also be followed by its
//! value after blanks alone (`passphrase "x"`, `credentials x`), and then
//! the whole rest of the line is its value. A line that continues (`\` at
//! its end) continues the value. Passwords in URLs (`scheme://user:PASS@`)
//! are masked wherever they appear. PEM private key bodies are masked.
//! Erring towards masking is fine; printing a secret is not.

const MASK: &str = "********";

const SECRET_PARTS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "apikey",
    "api_key",
    "private_key",
];
const SECRET_LAST_WORDS: &[&str] = &["pass", "pwd", "key"];
const REFERENCE_LAST_WORDS: &[&str] = &["file", "path", "dir", "url", "uri"];

/// Does this key name a secret?
pub fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let last = k.rsplit(['_', '-', '.']).next().unwrap_or(&k);
    if REFERENCE_LAST_WORDS.contains(&last) || k.ends_with("file") && k != "file" {
        return false;
    }
    SECRET_PARTS.iter().any(|p| k.contains(p)) || SECRET_LAST_WORDS.contains(&last)
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Replace secret values with `********`.
pub fn mask_secrets(text: &str) -> String {
    let text = &lab_core::secrets::mask(text, MASK);
    let mut out = String::with_capacity(text.len());
    let mut in_pem = false;
    let mut continued = false;
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        if in_pem || body.contains("-----BEGIN") && body.contains("PRIVATE KEY") {
            if body.contains("-----BEGIN") || body.contains("-----END") {
                in_pem = !body.contains("-----END");
                out.push_str(line);
            } else {
                out.push_str(MASK);
                out.push_str(nl);
            }
            continue;
        }
        if continued {
            let indent = &body[..body.len() - body.trim_start().len()];
            continued = body.trim_end().ends_with('\\');
            out.push_str(indent);
            out.push_str(MASK);
            out.push_str(if continued { " \\" } else { "" });
            out.push_str(nl);
            continue;
        }
        let (masked, cont) = mask_line(body);
        continued = cont;
        out.push_str(&masked);
        out.push_str(nl);
    }
    out
}

/// Mask one line; also says whether a masked value continues on the next.
fn mask_line(line: &str) -> (String, bool) {
    let line = mask_url_passwords(line);
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut out = String::with_capacity(line.len());
    let mut copied = 0; // bytes of `line` already in `out`
    let first_token = line.trim_start();
    let first_token = first_token
        .strip_prefix("export ")
        .map(str::trim_start)
        .unwrap_or(first_token);
    let first_start = line.len() - first_token.len();
    let comment = first_token.starts_with('#') || first_token.starts_with("//");
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        if !is_key_char(c) || i > 0 && is_key_char(chars[i - 1].1) {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && is_key_char(chars[j].1) {
            j += 1;
        }
        let end = chars.get(j).map_or(line.len(), |x| x.0);
        let key = &line[start..end];
        if !secret_key(key) || comment {
            i = j;
            continue;
        }
        // Skip a closing quote of a quoted key, blanks, a separator, blanks.
        let mut k = j;
        if k < chars.len() && matches!(chars[k].1, '"' | '\'') {
            k += 1;
        }
        let blanks = |k: &mut usize| {
            while *k < chars.len() && matches!(chars[*k].1, ' ' | '\t') {
                *k += 1;
            }
        };
        let before_sep = k;
        blanks(&mut k);
        let mut sep = false;
        for s in ["=>", ":=", "=", ":"] {
            if line[chars.get(k).map_or(line.len(), |x| x.0)..].starts_with(s) {
                k += s.chars().count();
                sep = true;
                break;
            }
        }
        let line_initial = start == first_start;
        if !(sep || line_initial && k > before_sep) {
            i = j;
            continue;
        }
        blanks(&mut k);
        if k >= chars.len() {
            i = j;
            continue;
        }
        let vstart = chars[k].0;
        let rest = &line[vstart..];
        let (vend, quoted) = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => match rest[1..].find(q) {
                Some(n) => (vstart + 1 + n, true),
                None => (line.len(), true),
            },
            _ if line_initial => (line.trim_end().len(), false),
            _ => (
                rest.find([' ', '\t', ';', ',', '&', '"', '\''])
                    .map_or(line.len(), |n| vstart + n),
                false,
            ),
        };
        let vstart = if quoted { vstart + 1 } else { vstart };
        let value = &line[vstart..vend.max(vstart)];
        let cont = value.trim_end().ends_with('\\');
        if !value.is_empty() {
            out.push_str(&line[copied..vstart]);
            out.push_str(MASK);
            if cont {
                out.push_str(" \\");
            }
            copied = vend.max(vstart);
        }
        if cont && !quoted {
            out.push_str(&line[copied..]);
            return (out, true);
        }
        while i < chars.len() && chars[i].0 < copied {
            i += 1;
        }
        i = i.max(j);
    }
    out.push_str(&line[copied..]);
    (out, false)
}

/// `scheme://user:PASSWORD@host` with the password masked.
fn mask_url_passwords(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(n) = rest.find("://") {
        let (head, tail) = rest.split_at(n + 3);
        out.push_str(head);
        let auth_end = tail
            .find(['/', '?', '#', ' ', '\t', '"', '\'', '>'])
            .unwrap_or(tail.len());
        let auth = &tail[..auth_end];
        match (auth.rfind('@'), auth.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&auth[..=colon]);
                out.push_str(MASK);
                out.push_str(&auth[at..]);
            }
            _ => out.push_str(auth),
        }
        rest = &tail[auth_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (shown by a diff without masking, as masked)
    const CASES: &[(&str, &str)] = &[
        ("password = hunter2", "password = ********"),
        ("  password: hunter2", "  password: ********"),
        ("API_KEY: abc", "API_KEY: ********"),
        ("export DB_PASS=hunter2", "export DB_PASS=********"),
        ("DB_PASS='hunter2'", "DB_PASS='********'"),
        ("pwd=hunter2", "pwd=********"),
        ("PGPASSWORD=hunter2", "PGPASSWORD=********"),
        ("passphrase \"hunter2\"", "passphrase \"********\""),
        ("credentials hunter2", "credentials ********"),
        ("secret correct horse battery", "secret ********"),
        ("client_secret = 'a b c'", "client_secret = '********'"),
        ("\"token\": \"abc123\",", "\"token\": \"********\","),
        ("token => 'abc'", "token => '********'"),
        (
            "Environment=DB_PASS=x OTHER=y",
            "Environment=DB_PASS=******** OTHER=y",
        ),
        (
            "Environment=\"PGPASSWORD=x y\"",
            "Environment=\"PGPASSWORD=******** y\"",
        ),
        ("ssh-key = AAAAC3Nz", "ssh-key = ********"),
        (
            "aws_secret_access_key=AKIA",
            "aws_secret_access_key=********",
        ),
        (
            "DATABASE_URL=postgres://app:hunter2@db.internal:5432/app",
            "DATABASE_URL=postgres://app:********@db.internal:5432/app",
        ),
        (
            "upstream https://u:p%40ss@example.org/x?token=abc&y=1",
            "upstream https://u:********@example.org/x?token=********&y=1",
        ),
        // references and plain words stay
        (
            "Environment=POSTGRES_PASSWORD_FILE=/run/secrets/pg",
            "Environment=POSTGRES_PASSWORD_FILE=/run/secrets/pg",
        ),
        (
            "token_url = https://example.org/t",
            "token_url = https://example.org/t",
        ),
        ("keyfile = /etc/x.key", "keyfile = /etc/x.key"),
        ("bypass = true", "bypass = true"),
        ("user = bob", "user = bob"),
        (
            "url = https://example.org:8443/",
            "url = https://example.org:8443/",
        ),
        ("# set the password below", "# set the password below"),
        ("the password", "the password"),
        ("password =", "password ="),
    ];

    #[test]
    fn table() {
        for (plain, masked) in CASES {
            assert_eq!(&mask_secrets(plain), masked, "input: {plain}");
            assert_eq!(&mask_secrets(&format!("{plain}\n")), &format!("{masked}\n"));
        }
    }

    #[test]
    fn continuation_lines_continue_the_secret() {
        assert_eq!(
            mask_secrets("password = \\\n    hunter2\nuser = bob\n"),
            "password = ******** \\\n    ********\nuser = bob\n"
        );
    }

    #[test]
    fn pem_private_keys() {
        let t = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\nBBBB\n-----END OPENSSH PRIVATE KEY-----\nafter\n";
        assert_eq!(
            mask_secrets(t),
            "-----BEGIN OPENSSH PRIVATE KEY-----\n********\n********\n-----END OPENSSH PRIVATE KEY-----\nafter\n"
        );
    }

    #[test]
    fn nothing_secret_is_unchanged() {
        let t = "server {\n  listen 443 ssl;\n  ssl_certificate /etc/ssl/x.pem;\n}\n";
        assert_eq!(mask_secrets(t), t);
    }
}
