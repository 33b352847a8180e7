//! lab-m4 against GNU m4 (the installed `m4`, the reference): the same
//! program, the same call lab makes (`--fatal-warnings --prefix-builtins
//! --debug=i -D... -- PRELUDES... SRC`), must give the same stdout bytes,
//! exit status, messages and list of files read. A run lab-m4 declines
//! (`Unsupported`) is what lab hands to GNU m4, so it is allowed, but each
//! corpus bounds how many may decline: a test where everything falls back
//! would prove nothing.

use lab_m4::{Config, Error, Outcome};
use proptest::prelude::*;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

const DEFINES: &[(&str, &str)] = &[
    ("ENV_MACHINE", "web1"),
    ("ENV_ROLE", "frontend"),
    ("ENV_DOMAIN", "example.org"),
    ("ENV_PORTS", "80,443"),
    ("ENV_GREETING", "hello ENV_MACHINE"),
    ("ENV_EMPTY", ""),
];

fn defines() -> Vec<(String, String)> {
    DEFINES
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// How long GNU m4 may run one program before it counts as endless.
const GNU_SECONDS: u32 = 20;

/// The status recorded for a GNU m4 that `timeout --signal=KILL` stopped
/// (timeout signals its whole process group, so it dies of the KILL
/// too and has no exit code; 137 if it ever reports one).
const GNU_KILLED: i32 = 128 + 9;

/// GNU m4's result, split as lab splits it.
fn gnu(cwd: &Path, defines: &[(String, String)], files: &[String], seconds: u32) -> Outcome {
    // GNU m4 runs an endless expansion for ever: stop it (lab-m4 stops
    // those itself, see tests/runaway.rs)
    let mut cmd = Command::new("timeout");
    cmd.args(["--signal=KILL", &seconds.to_string(), "m4"])
        .current_dir(cwd)
        .args(["--fatal-warnings", "--prefix-builtins", "--debug=i"]);
    for (k, v) in defines {
        cmd.arg(format!("-D{k}={v}"));
    }
    cmd.arg("--").args(files);
    cmd.stdin(std::process::Stdio::null());
    let out = cmd
        .output()
        .expect("GNU m4 is installed (apt-get install m4)");
    let mut read = Vec::new();
    let mut stderr = Vec::new();
    for line in out.stderr.split_inclusive(|&b| b == b'\n') {
        let s = String::from_utf8_lossy(line);
        if let Some(f) = s.strip_prefix("m4debug: input read from ") {
            let f = f.trim_end_matches('\n').to_string();
            if !read.contains(&f) {
                read.push(f);
            }
        } else if !s.starts_with("m4debug: ") {
            stderr.extend_from_slice(line);
        }
    }
    Outcome {
        stdout: out.stdout,
        stderr,
        status: match (out.status.code(), out.status.signal()) {
            (Some(code), _) => code,
            (None, Some(9)) => GNU_KILLED,
            (None, sig) => panic!("GNU m4 died of signal {sig:?}"),
        },
        read,
        defines_read: None,
    }
}

fn ours(cwd: &Path, defines: &[(String, String)], files: &[String]) -> Result<Outcome, Error> {
    lab_m4::run(Config::make_style(cwd), defines, files)
}

/// Compare one run; `Ok(true)` if lab-m4 evaluated it, `Ok(false)` if it
/// declined, `Err` with both results if they differ.
fn compare(cwd: &Path, defines: &[(String, String)], files: &[String]) -> Result<bool, String> {
    compare_within(cwd, defines, files, GNU_SECONDS)
}

/// `compare`, giving GNU m4 `seconds` to end.
fn compare_within(
    cwd: &Path,
    defines: &[(String, String)],
    files: &[String],
    seconds: u32,
) -> Result<bool, String> {
    let want = gnu(cwd, defines, files, seconds);
    if want.status == GNU_KILLED {
        // endless: lab-m4 must stop it with its error (or decline it)
        return match ours(cwd, defines, files) {
            Err(Error::Unsupported(_)) => Ok(false),
            Ok(got)
                if got.status == 1
                    && String::from_utf8_lossy(&got.stderr).contains("' does not end") =>
            {
                Ok(true)
            }
            Ok(got) => Err(format!(
                "files {files:?}: GNU m4 did not end in {GNU_SECONDS} s; lab-m4: status {}, stderr {:?}",
                got.status,
                String::from_utf8_lossy(&got.stderr)
            )),
        };
    }
    match ours(cwd, defines, files) {
        Err(Error::Unsupported(_)) => Ok(false),
        Ok(got) if got == want => Ok(true),
        Ok(got) => Err(format!(
            "files {files:?}\n--- GNU m4: status {}, stdout {:?}, stderr {:?}, read {:?}\n--- lab-m4: status {}, stdout {:?}, stderr {:?}, read {:?}",
            want.status,
            String::from_utf8_lossy(&want.stdout),
            String::from_utf8_lossy(&want.stderr),
            want.read,
            got.status,
            String::from_utf8_lossy(&got.stdout),
            String::from_utf8_lossy(&got.stderr),
            got.read,
        )),
    }
}

/// The harness's own check: an endless program, which GNU m4 runs until
/// it is stopped, agrees with lab-m4's error (a 20 000-case run found
/// the harness misreading the stopped GNU m4 as a difference).
#[test]
fn an_endless_program_agrees_with_a_stopped_gnu_m4() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("t.m4"), "m4_define(`x', `x')m4_dnl\nx()\n").unwrap();
    assert_eq!(
        compare_within(d.path(), &defines(), &["t.m4".to_string()], 2),
        Ok(true)
    );
    // and a program that ends is not mistaken for an endless one
    std::fs::write(d.path().join("t.m4"), "m4_define(`x', `y')m4_dnl\nx()\n").unwrap();
    let want = gnu(d.path(), &defines(), &["t.m4".to_string()], 2);
    assert_eq!((want.status, want.stdout.as_slice()), (0, &b"y\n"[..]));
}

fn program(text: &str) -> Result<bool, String> {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("inc.m4"), "included ENV_MACHINE `q' # c\n").unwrap();
    std::fs::write(d.path().join("t.m4"), text).unwrap();
    compare(d.path(), &defines(), &["t.m4".to_string()])
        .map_err(|e| format!("{e}\nprogram:\n{text}"))
}

/// Hand-written programs for the rules that are easy to get subtly wrong.
const CASES: &[&str] = &[
    "plain text, ENV_MACHINE and ENV_GREETING (ENV_ROLE)\n",
    "m4_define(`x', `X$1')x x() x(a) x(`a,b') x((a,b)) x( a ,b)\n",
    "m4_define(`n', `$#:``$0'':$*:$@')n n() n(a,b) n(`a',`b,c')\n",
    "m4_define(`ten', `$10|$11')ten(1,2,3,4,5,6,7,8,9,10,11)\n",
    "m4_define(`a', `b')m4_define(`b', `c')a `a' ``a'' m4_defn(`a')\n",
    "m4_pushdef(`p', 1)m4_pushdef(`p', 2)p m4_popdef(`p')p m4_popdef(`p')p\n",
    "m4_define(`u', 1)m4_undefine(`u')u m4_ifdef(`u', yes, no) m4_ifdef(`ENV_ROLE', yes, no)\n",
    "m4_ifelse(a, b, 1, a, a, 2, 3) m4_ifelse(a, b, 1) m4_ifelse(a, b, 1, 2) m4_ifelse(x)|\n",
    "m4_ifelse(a, b, 1, c, d, 2, 3, 4)\n",
    "m4_ifelse(a, a)\n",
    "m4_shift(a, b, `c,d') m4_shift(a) m4_shift\n",
    "m4_changequote([, ])[quoted `x'] m4_define([q], [Q])q [q] m4_changequote`q'\n",
    "m4_changequote(<<, >>)<<a<<b>>c>> m4_changequote\n",
    "m4_changequote(`[', `]')m4_define([z], [[nested [deep]]])z m4_changequote\n",
    "# comment ENV_MACHINE\nm4_changecom(`//')# now ENV_MACHINE // not ENV_MACHINE\nm4_changecom\n",
    "m4_changecom(`<!--', `-->')<!-- ENV_MACHINE -->ENV_MACHINE\n",
    "a m4_dnl gone ENV_MACHINE\nb m4_dnl(x) also\nc\n",
    "m4_len(abc) m4_len() m4_len(`a,b') m4_index(hello, ll) m4_index(hello, z) m4_index(hello,)\n",
    "m4_substr(hello, 1) m4_substr(hello, 1, 2) m4_substr(hello, 9) m4_substr(hello, -1, 2) m4_substr(hello)\n",
    "m4_translit(hello, a-z, A-Z) m4_translit(hello, lo) m4_translit(hello, h-e, 1-4) m4_translit(a-b, -)\n",
    "m4_translit(abcabc, abca, xyz)|m4_translit(ENV_MACHINE, a-z-, A-Z_)\n",
    "m4_incr(41) m4_decr(0) m4_incr(-5) m4_incr() m4_incr(x) m4_incr(99999999999)\n",
    "m4_eval(1+2*3) m4_eval((1+2)*3) m4_eval(2**10) m4_eval(-2**2) m4_eval(7/2) m4_eval(-7%3)\n",
    "m4_eval(1<2) m4_eval(3>=3) m4_eval(1==2) m4_eval(5!=5) m4_eval(!1) m4_eval(~5) m4_eval(6&3) m4_eval(6|3) m4_eval(6^3)\n",
    "m4_eval(1<<4) m4_eval(-16>>2) m4_eval(0x10) m4_eval(010) m4_eval(0b11) m4_eval(0r3:21) m4_eval(255, 16) m4_eval(5, 2, 8) m4_eval(-5, 10, 4)\n",
    "m4_eval(2147483647+1) m4_eval(1&&0||1) m4_eval(0, 10, 0) m4_eval(  12  )\n",
    "m4_eval(1/0)\n",
    "m4_format(`%d|%5d|%-5d|%05d|%x|%X|%o|%#x|%#o|%+d|% d|%.3d|%s|%5s|%-5s|%.2s|%c|%%', 42, 42, 42, 42, 255, 255, 8, 255, 8, 5, 5, 7, abc, ab, ab, abc, 65)\n",
    "m4_format(`%d %s', 1)|m4_format(`%u', -1)|m4_format(`plain')\n",
    "m4_regexp(hello, l+) m4_regexp(hello, x) m4_regexp(hello, `\\(l+\\)\\(o\\)', `<\\2\\1\\&>') m4_regexp(hello, z, y)|\n",
    "m4_patsubst(hello world, o, 0) m4_patsubst(hello, `l*') m4_patsubst(a.b.c, `\\.', `\\\\') m4_patsubst(ab, `', -)\n",
    "m4_patsubst(`one\ntwo', `^', `> ') m4_patsubst(`one\ntwo', `$', `;') m4_patsubst(abc, `^a\\|c')\n",
    "m4_patsubst(hello_world, `\\w+', `[\\&]') m4_patsubst(a  b   c, ` +', ` ') m4_patsubst(x*y, `*', `+')\n",
    "m4_patsubst(aXbXc, `[A-Z]', `-') m4_patsubst(a]b, `[]]', `!') m4_patsubst(a^b, `[^a]', `.') m4_patsubst(a-b, `[a-]', `_')\n",
    "m4_divert(1)one m4_divert(2)two m4_divert(-1)gone m4_divert(0)zero m4_divnum m4_undivert(2)|\n",
    "m4_divert(1)a m4_divert(2)b m4_divert(1)c m4_divert m4_undivert|m4_undivert(1)\n",
    "m4_divert(3)three m4_divert(1)one m4_divert(0)end\n",
    "m4_divert(1)kept m4_divert(0)m4_m4exit(3)after\n",
    "before m4_m4exit after\n",
    "m4_errprint(`to stderr', ENV_MACHINE\n)out\n",
    "m4___line__ m4___file__ m4___program__\nm4___line__\nm4_define(`L', `m4___line__')\n\nL\n",
    "m4_define(`x', 1, 2)x m4_len(a, b) m4_len m4_define\n",
    "m4_undivert(m4_divnum) m4_divert(x)m4_substr(abc, x)\n",
    "m4_include(`inc.m4')after m4_sinclude(`none.m4')m4_include(`none.m4')still\n",
    "m4_define(`INC', `inc.m4')m4_include(INC)m4_include(`inc.m4')\n",
    "m4_esyscmd(`printf %s ENV_MACHINE | tr a-z A-Z') m4_sysval m4_esyscmd(`exit 3')m4_sysval\n",
    "m4_syscmd(`echo from syscmd')m4_sysval m4_esyscmd(`echo err >&2; printf x')\n",
    "m4_define(`l', `m4_len')l(abc) m4_indir(`m4_len', abcd) m4_builtin(`len', ab) m4_indir(`nope')\n",
    "m4_define(`d', m4_defn(`m4_define'))d(`e', E)e m4_pushdef(`f', m4_defn(`m4_len'))f(xyz)\n",
    "m4_define(`FOREACH', `m4_ifelse(`$2', `', `', `$1(`$2')FOREACH(`$1', m4_shift(m4_shift($@)))')')m4_define(`SHOW', `<$1>')FOREACH(`SHOW', a, b, c)\n",
    "m4_define(`r', `m4_ifelse($1, 0, done, `r(m4_decr($1))')')r(20)\n",
    "unterminated `string\n",
    "unterminated # comment at end",
    "m4_len(unterminated\n",
    "m4_dnl at the end",
    "m4_define(`w', `$')w $ $$ $1\n",
    "text with (parens, commas) and m4_len((a,b)) m4_len(`(')\n",
    "m4_define(`empty')empty|m4_defn(`empty')|m4_defn(`nope')|\n",
    "m4_define(`x', `m4_define(`x', `second')first')x x\n",
    "m4_ifelse(m4_eval(1 > 0), 1, `m4_format(`%s-%d', ENV_ROLE, 3)')\n",
    "\tindent ENV_MACHINE\r\nCRLF line\r\n",
    "m4_changequote(`', `')`no quotes' m4_changequote()`still none' m4_changequote`back'\n",
    "m4_changecom()# not a comment ENV_MACHINE\nm4_changecom(`#')# a comment ENV_MACHINE\n",
    "m4_define(`ENV_MACHINE', `redefined')ENV_MACHINE m4_undefine(`ENV_ROLE')ENV_ROLE\n",
    "m4_define(`mylen', m4_defn(`m4_len'))mylen(abcd) m4_defn(`m4_len')(x) m4_len(m4_defn(`m4_len'))\n",
    "m4_define(`deep', `m4_ifelse(`$1', `', `', `[$1 deep(m4_substr(`$1', 1))]')')deep(abcdefghijklmnopqrstuvwxyz)\n",
    "m4_traceon(`x')x\n",
];

#[test]
fn hand_written_programs_match_gnu_m4() {
    let mut declined = Vec::new();
    let mut failures = Vec::new();
    for (i, c) in CASES.iter().enumerate() {
        match program(c) {
            Ok(true) => {}
            Ok(false) => declined.push(i),
            Err(e) => failures.push(format!("case {i}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Declined on purpose: `m4_eval(1/0)` (GNU m4's message), `\|` in a
    // regex (longest-match alternation), `m4_changequote()` (an empty left
    // quote with the default right one), `m4_traceon`. More than that
    // means the evaluator silently stopped doing its job.
    assert!(declined.len() <= 4, "declined cases: {declined:?}");
}

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Every template of a make-style lab rendered as lab renders it.
fn lab_templates(
    root: &Path,
    preludes: &[String],
    defines: &[(String, String)],
) -> (usize, Vec<String>) {
    let mut n = 0;
    let mut failures = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let mut templates = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else {
                let name = e.file_name().to_string_lossy().into_owned();
                let stem = name.rsplit_once('.').map_or("", |(s, _)| s);
                if stem.ends_with(".m4") || stem == ".m4" {
                    templates.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
    }
    templates.sort();
    for t in templates {
        let mut files = preludes.to_vec();
        files.push(t.clone());
        match compare(root, defines, &files) {
            Ok(true) => n += 1,
            Ok(false) => failures.push(format!("{t}: declined (falls back to GNU m4)")),
            Err(e) => failures.push(e),
        }
    }
    (n, failures)
}

fn preludes_of(root: &Path) -> Vec<String> {
    let dir = root.join("layers/_/usr/local/include/m4");
    let mut p: Vec<String> = std::fs::read_dir(&dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".m4"))
                .map(|n| format!("layers/_/usr/local/include/m4/{n}"))
                .collect()
        })
        .unwrap_or_default();
    p.sort();
    p
}

#[test]
fn every_fixture_template_matches_gnu_m4() {
    let root = repo_root().join("tests/compat-fixture");
    let mut defs = defines();
    for (k, v) in [
        ("ENV_ADMIN", "root@x"),
        ("ENV_TZ", "UTC"),
        ("ENV_QUOTED", "it's"),
        ("ENV_WORKERS", "4"),
        ("ENV_UPSTREAM", "a,b"),
        ("ENV_HOSTTYPE", "x86_64"),
    ] {
        defs.push((k.to_string(), v.to_string()));
    }
    let (n, failures) = lab_templates(&root, &preludes_of(&root), &defs);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(n >= 6, "only {n} templates found");
}

#[test]
fn every_template_of_the_generated_bench_lab_matches_gnu_m4() {
    let d = tempfile::tempdir().unwrap();
    let gen = repo_root().join("benches/compat/gen.py");
    let st = Command::new("python3")
        .arg(&gen)
        .arg(d.path())
        .status()
        .expect("python3");
    assert!(st.success());
    let mut defs = defines();
    for (k, v) in [
        ("ENV_PORT", "8080"),
        ("ENV_WORKERS", "4"),
        ("ENV_PEERS", "a,b,c"),
    ] {
        defs.push((k.to_string(), v.to_string()));
    }
    let (n, failures) = lab_templates(d.path(), &preludes_of(d.path()), &defs);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(n >= 100, "only {n} templates found");
}

// ---- random programs --------------------------------------------------------

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("x".to_string()),
        Just("y".to_string()),
        Just("ENV_MACHINE".to_string()),
        Just("ENV_PORTS".to_string()),
        Just("ENV_EMPTY".to_string()),
        Just("plain".to_string()),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        word(),
        Just(" ".to_string()),
        Just("\n".to_string()),
        Just(",".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("$1".to_string()),
        Just("$#".to_string()),
        Just("$@".to_string()),
        Just("$*".to_string()),
        Just("#c\n".to_string()),
        Just("a-c".to_string()),
        Just("1".to_string()),
        Just("-2".to_string()),
        Just(".".to_string()),
        Just("*".to_string()),
        Just("^".to_string()),
        Just("\\(".to_string()),
        Just("\\)".to_string()),
        Just("\\w".to_string()),
        Just("[a-z]".to_string()),
        Just("+".to_string()),
    ]
}

/// A random m4 fragment from the constructs lab-m4 supports.
fn fragment() -> impl Strategy<Value = String> {
    let leaf = prop::collection::vec(text(), 0..4).prop_map(|v| v.concat());
    leaf.prop_recursive(4, 48, 4, |inner| {
        let q = |s: String| format!("`{s}'");
        prop_oneof![
            inner.clone().prop_map(q),
            inner.clone().prop_map(|s| format!("``{s}''")),
            (word(), inner.clone()).prop_map(move |(n, b)| format!("m4_define(`{n}', `{b}')")),
            (word(), inner.clone()).prop_map(|(n, b)| format!("m4_pushdef(`{n}', `{b}')")),
            word().prop_map(|n| format!("m4_popdef(`{n}')")),
            word().prop_map(|n| format!("m4_undefine(`{n}')")),
            word().prop_map(|n| format!("m4_defn(`{n}')")),
            (word(), inner.clone(), inner.clone())
                .prop_map(|(n, a, b)| format!("m4_ifdef(`{n}', `{a}', `{b}')")),
            prop::collection::vec(inner.clone(), 2..7)
                .prop_map(|v| format!("m4_ifelse({})", v.join(","))),
            (word(), prop::collection::vec(inner.clone(), 0..4))
                .prop_map(|(n, v)| format!("{n}({})", v.join(","))),
            // a macro defined and called at once: `$` references meet arguments
            (
                word(),
                inner.clone(),
                prop::collection::vec(inner.clone(), 0..4)
            )
                .prop_map(|(n, b, v)| format!(
                    "m4_define(`{n}', `{b}')m4_dnl\n{n}({})",
                    v.join(",")
                )),
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("m4_shift({})", v.join(","))),
            inner.clone().prop_map(|s| format!("m4_len({s})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("m4_index(`{a}', `{b}')")),
            (inner.clone(), 0..6i32, 0..6i32)
                .prop_map(|(a, f, l)| format!("m4_substr(`{a}', {f}, {l})")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, f, t)| format!("m4_translit(`{a}', `{f}', `{t}')")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, r, s)| format!("m4_patsubst(`{a}', `{r}', `{s}')")),
            (inner.clone(), inner.clone()).prop_map(|(a, r)| format!("m4_regexp(`{a}', `{r}')")),
            (-3..40i32, 0..5i32).prop_map(|(a, b)| format!("m4_incr({a})m4_decr({b})")),
            (
                -50..50i32,
                -5..9i32,
                prop::sample::select(vec![
                    "+", "-", "*", "/", "%", "<<", ">>", "==", "<", "&&", "||", "|", "&", "**"
                ])
            )
                .prop_map(|(a, b, o)| format!("m4_eval({a} {o} {b})")),
            (inner.clone(), 0..5i32)
                .prop_map(|(s, n)| format!("m4_format(`%{n}s|%d', `{s}', {n})")),
            inner.clone().prop_map(|s| format!("{s}m4_dnl {s}\n")),
            (0..4i32, inner.clone()).prop_map(|(n, s)| format!("m4_divert({n}){s}m4_divert(0)")),
            (0..4i32).prop_map(|n| format!("m4_undivert({n})")),
            inner
                .clone()
                .prop_map(|s| format!("m4_changequote([,]){s}m4_changequote")),
            inner
                .clone()
                .prop_map(|s| format!("m4_changecom(`@')@{s}\nm4_changecom")),
            Just("m4___line__".to_string()),
            Just("m4_divnum".to_string()),
            prop::collection::vec(inner, 1..4).prop_map(|v| v.concat()),
        ]
    })
}

/// Random programs: run by hand with proptest's runner so the share that
/// lab-m4 declines can be bounded (a generator whose programs all fall
/// back would compare nothing).
#[test]
fn random_programs_match_gnu_m4() {
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};
    let cases: u32 = std::env::var("LAB_M4_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let evaluated = std::sync::atomic::AtomicU32::new(0);
    let declined = std::sync::atomic::AtomicU32::new(0);
    let r = runner.run(&prop::collection::vec(fragment(), 1..6), |parts| {
        let text = parts.concat();
        match program(&text) {
            Ok(true) => {
                evaluated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Ok(false) => {
                declined.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(proptest::test_runner::TestCaseError::fail(e)),
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
    let (e, d) = (evaluated.into_inner(), declined.into_inner());
    eprintln!("random programs: {e} evaluated in process, {d} declined");
    assert!(d * 4 <= e + d, "{d} of {} random programs declined", e + d);
}

/// An in-process run that records which `-D` names it depended on.
fn tracked(cwd: &Path, defines: &[(String, String)], files: &[String]) -> Result<Outcome, Error> {
    let mut m = lab_m4::M4::new(Config::make_style(cwd));
    m.track_defines();
    for (k, v) in defines {
        m.define(k, v);
    }
    for f in files {
        m.process_file(f)?;
    }
    Ok(m.finish())
}

/// The promise of `defines_read` (make-style builds re-render a template
/// only when a fact it read changed): giving every other name a new `-D`
/// value, or a `-D` it did not have, changes nothing in the run. (The new
/// values hold no names, so a wrong answer shows as a difference, not as
/// an endless expansion.)
fn defines_read_is_all_that_matters(text: &str) -> Result<(), String> {
    let d = tempfile::tempdir().unwrap();
    let inc = "included ENV_MACHINE `q' # c\n";
    std::fs::write(d.path().join("inc.m4"), inc).unwrap();
    std::fs::write(d.path().join("t.m4"), text).unwrap();
    let files = ["t.m4".to_string()];
    let Ok(base) = tracked(d.path(), &defines(), &files) else {
        return Ok(());
    };
    let read: std::collections::BTreeSet<String> =
        base.defines_read.clone().unwrap().into_iter().collect();
    let mut words: std::collections::BTreeSet<String> =
        DEFINES.iter().map(|(k, _)| k.to_string()).collect();
    for w in format!("{text} {inc}")
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
    {
        words.insert(w.to_string());
    }
    let mut changed: Vec<(String, String)> = defines()
        .into_iter()
        .map(|(k, v)| {
            if read.contains(&k) {
                (k, v)
            } else {
                (k.clone(), format!("{v}<{}>", k.len()))
            }
        })
        .collect();
    for w in &words {
        if !read.contains(w) && !DEFINES.iter().any(|(k, _)| k == w) {
            changed.push((w.clone(), format!("<{}>", w.len())));
        }
    }
    let again =
        tracked(d.path(), &changed, &files).map_err(|e| format!("{e}\nprogram:\n{text}"))?;
    if (&again.stdout, &again.stderr, again.status) != (&base.stdout, &base.stderr, base.status) {
        return Err(format!(
            "program:\n{text}\nread {read:?}\n--- with the defines: {:?}\n--- with the others changed: {:?}",
            String::from_utf8_lossy(&base.stdout),
            String::from_utf8_lossy(&again.stdout)
        ));
    }
    Ok(())
}

#[test]
fn output_depends_only_on_the_defines_it_read() {
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|c| defines_read_is_all_that_matters(c).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 300,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let r = runner.run(&prop::collection::vec(fragment(), 1..6), |parts| {
        defines_read_is_all_that_matters(&parts.concat())
            .map_err(proptest::test_runner::TestCaseError::fail)
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}
