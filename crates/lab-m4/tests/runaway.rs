//! Templates whose expansion never ends: GNU m4 runs them for ever (or
//! until memory runs out); lab-m4 stops them with an error at the call.

use lab_m4::{Config, Outcome};

fn run(text: &str) -> Outcome {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("t.m4"), text).unwrap();
    lab_m4::run(Config::make_style(d.path()), &[], &["t.m4".to_string()])
        .expect("evaluated in process")
}

fn assert_stopped(text: &str, line: usize, name: &str) {
    let o = run(text);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status, 1, "{text}: {err}");
    assert!(
        err.starts_with(&format!(
            "m4:t.m4:{line}: ERROR: expansion of `{name}' does not end"
        )),
        "{text}: {err}"
    );
}

#[test]
fn a_macro_that_expands_to_itself_is_stopped_at_its_call() {
    assert_stopped("ok\nm4_define(`x', `x')x\n", 2, "x");
}

#[test]
fn a_self_doubling_argument_is_stopped_before_memory_runs_out() {
    assert_stopped("m4_define(`f', `f(`$1$1')')\n\nf(a)\n", 3, "f");
}

#[test]
fn a_long_but_finite_expansion_is_not_stopped() {
    // 200,000 calls, each expanding to a call of the next
    let o = run("m4_define(`c', `m4_ifelse($1, 0, done, `c(m4_decr($1))')')c(200000)\n");
    assert_eq!(o.status, 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, b"done\n");
}
