//! Run lab-m4 like `m4 -E -P FILES...` in the current directory (for
//! comparing by hand with GNU m4).
use std::io::Write;
fn main() {
    let mut files: Vec<String> = Vec::new();
    let mut defines: Vec<(String, String)> = Vec::new();
    for a in std::env::args().skip(1) {
        match a.strip_prefix("-D") {
            Some(d) => {
                let (k, v) = d.split_once('=').unwrap_or((d, ""));
                defines.push((k.to_string(), v.to_string()));
            }
            None => files.push(a),
        }
    }
    let cwd = std::env::current_dir().unwrap();
    match lab_m4::run(lab_m4::Config::make_style(&cwd), &defines, &files) {
        Ok(o) => {
            std::io::stdout().write_all(&o.stdout).unwrap();
            std::io::stderr().write_all(&o.stderr).unwrap();
            eprintln!("[read {:?}]", o.read);
            std::process::exit(o.status);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(99);
        }
    }
}
