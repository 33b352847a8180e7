//! GNU m4 1.4.x evaluated in process, for make-style labs.
//!
//! Starting one GNU m4 process per template was most of a cold build of a
//! make-style lab (issue 11). This crate evaluates the m4 language as GNU
//! m4 1.4.19 does (`--prefix-builtins`, `--fatal-warnings`, `-D`, `-I`):
//! token rules, argument collection, quoting, comments and rescanning are
//! modelled on GNU m4's own `input.c`/`macro.c`, and every builtin's
//! argument checks and messages on `builtin.c`.
//!
//! GNU m4 stays the reference: anything this evaluator does not reproduce
//! byte for byte (a builtin it lacks, an error whose exact message it does
//! not know, a regular expression it cannot translate faithfully, non-ASCII
//! text given to a regex, NUL bytes in input) stops evaluation with
//! [`Error::Unsupported`], and the caller then runs GNU m4 for that
//! template. Output is never guessed. The differential tests in `tests/`
//! compare this evaluator with the installed `m4`.
//!
//! Note for callers that fall back: a template that ran `m4_esyscmd` or
//! `m4_syscmd` before reaching an unsupported construct has run those
//! commands once here and runs them again under GNU m4.

mod eval;
mod format;
mod regex_emacs;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a run could not be done in process.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The input uses something this evaluator does not reproduce exactly;
    /// run GNU m4 instead.
    #[error("not supported in process: {0}")]
    Unsupported(String),
}

fn unsupported<T>(what: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Unsupported(what.into()))
}

/// How m4 is invoked (the command-line options lab uses).
#[derive(Clone, Debug)]
pub struct Config {
    /// m4's working directory: relative file names are resolved here and
    /// `m4_syscmd`/`m4_esyscmd` run here.
    pub cwd: PathBuf,
    /// `--prefix-builtins` (`-P`).
    pub prefix_builtins: bool,
    /// `--fatal-warnings` (`-E`, given once: warnings make the exit status
    /// 1, evaluation goes on).
    pub fatal_warnings: bool,
    /// `-I DIR`, in order.
    pub include_dirs: Vec<PathBuf>,
    /// How m4 names itself in messages (`argv[0]`).
    pub program_name: String,
    /// How much expansion a run may do before it is stopped as endless:
    /// each macro call costs [`CALL_COST`] plus the bytes it expands to.
    /// GNU m4 runs `define(`x', `x')x` for ever (and a self-doubling
    /// argument until memory runs out); lab stops it with an error at the
    /// call instead of hanging the build.
    pub max_work: u64,
}

/// The work one macro call costs besides the bytes it expands to.
pub const CALL_COST: u64 = 256;

/// The default [`Config::max_work`]: a few seconds of expansion, far more
/// than any real template does.
pub const DEFAULT_MAX_WORK: u64 = 1 << 28;

impl Config {
    /// The call make-style labs use: `m4 --fatal-warnings --prefix-builtins`.
    pub fn make_style(cwd: &Path) -> Config {
        Config {
            cwd: cwd.to_path_buf(),
            prefix_builtins: true,
            fatal_warnings: true,
            include_dirs: Vec::new(),
            program_name: "m4".to_string(),
            max_work: DEFAULT_MAX_WORK,
        }
    }
}

/// What a run produced, as GNU m4 would have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    /// Messages (and `m4_errprint` text, and the stderr of commands run).
    pub stderr: Vec<u8>,
    pub status: i32,
    /// Every file opened, in order, each once, named as GNU m4's
    /// `--debug=i` names it.
    pub read: Vec<String>,
    /// With [`M4::track_defines`]: every name whose lookup found a `-D`
    /// definition, a builtin or nothing at all, sorted. The output depends
    /// on the `-D` definitions only through these names (a lookup that
    /// found a macro the input defined does not depend on them).
    pub defines_read: Option<Vec<String>>,
}

/// A file the run looked at (opened, or looked for and not found), with
/// what it held: a cached evaluator state is valid while these are equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Looked {
    pub path: PathBuf,
    pub content: Option<Arc<[u8]>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum B {
    File,
    Line,
    Program,
    Builtin,
    Changecom,
    Changequote,
    Decr,
    Define,
    Defn,
    Divert,
    Divnum,
    Dnl,
    Errprint,
    Esyscmd,
    Eval,
    Format,
    Ifdef,
    Ifelse,
    Include,
    Incr,
    Index,
    Indir,
    Len,
    M4exit,
    Patsubst,
    Popdef,
    Pushdef,
    Regexp,
    Shift,
    Sinclude,
    Substr,
    Syscmd,
    Sysval,
    Translit,
    Undefine,
    Undivert,
    /// Exists in GNU m4 but not here: calling it falls back.
    Missing(&'static str),
}

/// GNU m4 1.4.19's builtin table: name, "blind" (only recognized when
/// followed by `(`), accepts builtin tokens as arguments.
const BUILTINS: &[(&str, B, bool, bool)] = &[
    ("__file__", B::File, false, false),
    ("__line__", B::Line, false, false),
    ("__program__", B::Program, false, false),
    ("builtin", B::Builtin, true, true),
    ("changecom", B::Changecom, false, false),
    ("changequote", B::Changequote, false, false),
    ("debugfile", B::Missing("debugfile"), false, false),
    ("debugmode", B::Missing("debugmode"), false, false),
    ("decr", B::Decr, true, false),
    ("define", B::Define, true, true),
    ("defn", B::Defn, true, false),
    ("divert", B::Divert, false, false),
    ("divnum", B::Divnum, false, false),
    ("dnl", B::Dnl, false, false),
    ("dumpdef", B::Missing("dumpdef"), false, false),
    ("errprint", B::Errprint, true, false),
    ("esyscmd", B::Esyscmd, true, false),
    ("eval", B::Eval, true, false),
    ("format", B::Format, true, false),
    ("ifdef", B::Ifdef, true, false),
    ("ifelse", B::Ifelse, true, false),
    ("include", B::Include, true, false),
    ("incr", B::Incr, true, false),
    ("index", B::Index, true, false),
    ("indir", B::Indir, true, true),
    ("len", B::Len, true, false),
    ("m4exit", B::M4exit, false, false),
    ("m4wrap", B::Missing("m4wrap"), true, false),
    ("maketemp", B::Missing("maketemp"), true, false),
    ("mkstemp", B::Missing("mkstemp"), true, false),
    ("patsubst", B::Patsubst, true, false),
    ("popdef", B::Popdef, true, false),
    ("pushdef", B::Pushdef, true, true),
    ("regexp", B::Regexp, true, false),
    ("shift", B::Shift, true, false),
    ("sinclude", B::Sinclude, true, false),
    ("substr", B::Substr, true, false),
    ("syscmd", B::Syscmd, true, false),
    ("sysval", B::Sysval, false, false),
    ("traceoff", B::Missing("traceoff"), false, false),
    ("traceon", B::Missing("traceon"), false, false),
    ("translit", B::Translit, true, false),
    ("undefine", B::Undefine, true, false),
    ("undivert", B::Undivert, false, false),
];

fn builtin_info(b: B) -> (&'static str, bool, bool) {
    BUILTINS
        .iter()
        .find(|e| e.1 == b)
        .map(|e| (e.0, e.2, e.3))
        .expect("every builtin is in the table")
}

#[derive(Clone, Debug)]
enum Def {
    Text(Arc<[u8]>),
    Builtin(B),
}

/// One collected argument: text, or a builtin token (`m4_defn` of a
/// builtin) when that was the whole argument.
#[derive(Clone, Debug, Default)]
struct Arg {
    text: Vec<u8>,
    func: Option<B>,
}

const EOF: i32 = -1;
const MACRO: i32 = -2;

#[derive(Clone, Debug)]
enum Src {
    /// A file: its index in `names`, running line, and whether the last
    /// character read was a newline (GNU m4 counts the line when the next
    /// character is read).
    File { name: usize, line: usize, nl: bool },
    /// Pushed text (a macro's expansion), attributed to where it was pushed.
    Str { name: usize, line: usize },
    /// A builtin token.
    Macro(B),
}

#[derive(Clone, Debug)]
struct Input {
    data: Arc<[u8]>,
    pos: usize,
    src: Src,
}

#[derive(Debug)]
enum Stop {
    /// A fatal error (already reported); exit 1 without undiverting.
    Fatal,
    /// `m4exit`.
    Exit(i32),
    Unsupported(String),
}

enum Tok {
    Eof,
    MacDef(B),
    Word(Vec<u8>),
    Str(Vec<u8>),
    Open,
    Comma,
    Close,
    Simple(u8),
}

/// An m4 evaluator: the state of one m4 process. Cloning it after the
/// preludes lets many templates start from the same state.
#[derive(Clone)]
pub struct M4 {
    cfg: Arc<Config>,
    symbols: HashMap<Vec<u8>, Vec<Def>>,
    input: Vec<Input>,
    names: Vec<Arc<str>>,
    cur_name: usize,
    cur_line: usize,
    lquote: Vec<u8>,
    rquote: Vec<u8>,
    bcomm: Vec<u8>,
    ecomm: Vec<u8>,
    diversion: i64,
    diversions: BTreeMap<i64, Vec<u8>>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: i32,
    sysval: i32,
    read: Vec<String>,
    looked: Vec<Looked>,
    /// `-D` definitions as given (a lookup that finds this very text found
    /// the `-D` definition).
    dash_d: HashMap<Vec<u8>, Arc<[u8]>>,
    /// See [`Outcome::defines_read`].
    defines_read: Option<std::collections::HashSet<Vec<u8>>>,
    ran_commands: bool,
    depth: usize,
    /// Work done so far (see [`Config::max_work`]).
    work: u64,
    finished: Option<i32>,
}

/// Deeper nesting than this falls back to GNU m4 (which has no limit by
/// default) rather than risking this thread's stack.
const MAX_DEPTH: usize = 100;

impl M4 {
    /// A fresh m4 with its builtins (and `__gnu__`, `__unix__`) defined.
    pub fn new(cfg: Config) -> M4 {
        let mut symbols: HashMap<Vec<u8>, Vec<Def>> = HashMap::new();
        for (name, b, _, _) in BUILTINS {
            let n = if cfg.prefix_builtins {
                format!("m4_{name}")
            } else {
                name.to_string()
            };
            symbols.insert(n.into_bytes(), vec![Def::Builtin(*b)]);
        }
        for n in ["__gnu__", "__unix__"] {
            symbols.insert(n.as_bytes().to_vec(), vec![Def::Text(Arc::from(&b""[..]))]);
        }
        M4 {
            cfg: Arc::new(cfg),
            symbols,
            input: Vec::new(),
            names: vec![Arc::from("")],
            cur_name: 0,
            cur_line: 0,
            lquote: b"`".to_vec(),
            rquote: b"'".to_vec(),
            bcomm: b"#".to_vec(),
            ecomm: b"\n".to_vec(),
            diversion: 0,
            diversions: BTreeMap::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: 0,
            sysval: 0,
            read: Vec::new(),
            looked: Vec::new(),
            dash_d: HashMap::new(),
            defines_read: None,
            ran_commands: false,
            depth: 0,
            work: 0,
            finished: None,
        }
    }

    /// `-DNAME=VALUE`.
    pub fn define(&mut self, name: &str, value: &str) {
        let text: Arc<[u8]> = Arc::from(value.as_bytes());
        self.dash_d
            .insert(name.as_bytes().to_vec(), Arc::clone(&text));
        self.symbols
            .insert(name.as_bytes().to_vec(), vec![Def::Text(text)]);
    }

    /// From now on, record which names' lookups depended on the `-D`
    /// definitions ([`Outcome::defines_read`]).
    pub fn track_defines(&mut self) {
        self.defines_read.get_or_insert_with(Default::default);
    }

    /// The definition `name` has now (its top one), noting the lookup
    /// unless it found text the input defined (see
    /// [`Outcome::defines_read`]): a `-D` of that name would have changed
    /// what it found when it found the `-D` text, nothing, or a builtin
    /// (which `-D` replaces).
    fn lookup(&mut self, name: &[u8]) -> Option<Def> {
        let def = self.symbols.get(name).and_then(|v| v.last()).cloned();
        if let Some(set) = &mut self.defines_read {
            let depends = match &def {
                None | Some(Def::Builtin(_)) => true,
                Some(Def::Text(t)) => self.dash_d.get(name).is_some_and(|d| Arc::ptr_eq(d, t)),
            };
            if depends && !set.contains(name) {
                set.insert(name.to_vec());
            }
        }
        def
    }

    /// Whether `m4_syscmd`/`m4_esyscmd` ran (a state that ran commands is
    /// not reusable: the commands' effects are not part of it).
    pub fn ran_commands(&self) -> bool {
        self.ran_commands
    }

    /// Whether the run has ended (`m4_exit` or a fatal error): further
    /// files are not read.
    pub fn ended(&self) -> bool {
        self.finished.is_some()
    }

    /// Files looked at so far, with their content.
    pub fn looked(&self) -> &[Looked] {
        &self.looked
    }

    /// Process one command-line file, as m4 does for each file operand.
    pub fn process_file(&mut self, name: &str) -> Result<(), Error> {
        if self.finished.is_some() {
            return Ok(());
        }
        match self.open(name) {
            Ok((shown, data)) => {
                if data.contains(&0) {
                    return Err(Error::Unsupported("a NUL byte in an input file".into()));
                }
                self.push_file(&shown, data);
            }
            Err(msg) => {
                self.stderr.extend_from_slice(
                    format!("{}: cannot open `{name}': {msg}\n", self.cfg.program_name).as_bytes(),
                );
                self.status = 1;
                return Ok(());
            }
        }
        match self.expand_input() {
            Ok(()) => Ok(()),
            Err(Stop::Fatal) => {
                self.finished = Some(1);
                Ok(())
            }
            Err(Stop::Exit(c)) => {
                self.finished = Some(c);
                Ok(())
            }
            Err(Stop::Unsupported(w)) => Err(Error::Unsupported(w)),
        }
    }

    /// End the run: undivert everything (unless it ended early) and give
    /// what GNU m4 would have written and returned.
    pub fn finish(mut self) -> Outcome {
        let status = match self.finished {
            Some(c) => c,
            None => {
                let all: Vec<i64> = self.diversions.keys().copied().collect();
                for n in all {
                    if let Some(d) = self.diversions.remove(&n) {
                        self.stdout.extend_from_slice(&d);
                    }
                }
                self.status
            }
        };
        let defines_read = self.defines_read.map(|set| {
            let mut names: Vec<String> = set
                .into_iter()
                .map(|n| String::from_utf8_lossy(&n).into_owned())
                .collect();
            names.sort();
            names
        });
        Outcome {
            stdout: self.stdout,
            stderr: self.stderr,
            status,
            read: self.read,
            defines_read,
        }
    }

    // ---- files -----------------------------------------------------------

    /// Open a file as `m4_path_search` does: as named (relative to the
    /// working directory), then in each `-I` directory. Returns the name
    /// m4 reports it by and its bytes, or strerror's text.
    fn open(&mut self, name: &str) -> Result<(String, Arc<[u8]>), String> {
        let mut candidates: Vec<(String, PathBuf)> =
            vec![(name.to_string(), self.cfg.cwd.join(name))];
        if !name.starts_with('/') {
            for d in &self.cfg.include_dirs {
                let shown = format!("{}/{name}", d.display());
                let p = self.cfg.cwd.join(&shown);
                candidates.push((shown, p));
            }
        }
        let mut first_err: Option<String> = None;
        for (shown, path) in candidates {
            match std::fs::read(&path) {
                Ok(data) => {
                    let data: Arc<[u8]> = Arc::from(data);
                    self.looked.push(Looked {
                        path,
                        content: Some(data.clone()),
                    });
                    if !self.read.contains(&shown) {
                        self.read.push(shown.clone());
                    }
                    return Ok((shown, data));
                }
                Err(e) => {
                    self.looked.push(Looked {
                        path,
                        content: None,
                    });
                    if first_err.is_none() {
                        first_err = Some(strerror(&e));
                    }
                }
            }
        }
        Err(first_err.unwrap_or_else(|| "No such file or directory".to_string()))
    }

    fn name_index(&mut self, name: &str) -> usize {
        if let Some(i) = self.names.iter().position(|n| &**n == name) {
            return i;
        }
        self.names.push(Arc::from(name));
        self.names.len() - 1
    }

    fn push_file(&mut self, shown: &str, data: Arc<[u8]>) {
        let name = self.name_index(shown);
        self.input.push(Input {
            data,
            pos: 0,
            src: Src::File {
                name,
                line: 1,
                nl: false,
            },
        });
    }

    fn push_text(&mut self, text: Vec<u8>) {
        if text.is_empty() {
            return;
        }
        self.drop_exhausted_text();
        self.input.push(Input {
            data: Arc::from(text),
            pos: 0,
            src: Src::Str {
                name: self.cur_name,
                line: self.cur_line,
            },
        });
    }

    /// Pop the exhausted expansions on top of the input stack before
    /// pushing more (reading would pop them with no other effect). Without
    /// this, a macro whose expansion ends in a call (tail recursion) grows
    /// the stack by one entry per call and every look-ahead walks it all.
    fn drop_exhausted_text(&mut self) {
        while matches!(self.input.last(), Some(i) if matches!(i.src, Src::Str { .. }) && i.pos == i.data.len())
        {
            self.input.pop();
        }
    }

    // ---- characters --------------------------------------------------------

    fn next_char(&mut self) -> i32 {
        loop {
            let Some(top) = self.input.last_mut() else {
                self.cur_name = 0;
                self.cur_line = 0;
                return EOF;
            };
            if let Src::Macro(_) = top.src {
                return MACRO;
            }
            if top.pos < top.data.len() {
                let c = top.data[top.pos];
                top.pos += 1;
                match &mut top.src {
                    Src::File { name, line, nl } => {
                        if *nl {
                            *line += 1;
                            *nl = false;
                        }
                        if c == b'\n' {
                            *nl = true;
                        }
                        self.cur_name = *name;
                        self.cur_line = *line;
                    }
                    Src::Str { name, line } => {
                        self.cur_name = *name;
                        self.cur_line = *line;
                    }
                    Src::Macro(_) => unreachable!(),
                }
                return c as i32;
            }
            self.input.pop();
        }
    }

    /// The `n`th character ahead, across exhausted inputs, not consumed.
    fn peek_at(&self, n: usize) -> i32 {
        let mut left = n;
        for inp in self.input.iter().rev() {
            if let Src::Macro(_) = inp.src {
                return if left == 0 { MACRO } else { EOF };
            }
            let avail = inp.data.len() - inp.pos;
            if left < avail {
                return inp.data[inp.pos + left] as i32;
            }
            left -= avail;
        }
        EOF
    }

    fn peek(&self) -> i32 {
        self.peek_at(0)
    }

    /// `ch` was just read; if it starts `delim`, consume the rest of
    /// `delim` and say yes.
    fn matches(&mut self, ch: i32, delim: &[u8]) -> bool {
        if delim.is_empty() || ch != delim[0] as i32 {
            return false;
        }
        for (i, &d) in delim[1..].iter().enumerate() {
            if self.peek_at(i) != d as i32 {
                return false;
            }
        }
        for _ in 1..delim.len() {
            self.next_char();
        }
        true
    }

    /// Like [`matches`] for the character not yet read.
    fn peek_matches(&self, delim: &[u8]) -> bool {
        !delim.is_empty()
            && delim
                .iter()
                .enumerate()
                .all(|(i, &d)| self.peek_at(i) == d as i32)
    }

    // ---- tokens ------------------------------------------------------------

    fn next_token(&mut self) -> Result<Tok, Stop> {
        let ch = self.peek();
        if ch == EOF {
            // pop exhausted inputs, reset the location
            self.next_char();
            return Ok(Tok::Eof);
        }
        if ch == MACRO {
            // the builtin token may lie under exhausted inputs
            while let Some(top) = self.input.pop() {
                if let Src::Macro(b) = top.src {
                    return Ok(Tok::MacDef(b));
                }
            }
            return Ok(Tok::Eof);
        }
        let ch = self.next_char();
        let (file, line) = (self.cur_name, self.cur_line);
        // (the delimiters are cloned only when the first byte matches:
        // this runs for every character of every template)
        if self.bcomm.first().is_some_and(|&b| b as i32 == ch) && {
            let bcomm = self.bcomm.clone();
            self.matches(ch, &bcomm)
        } {
            let mut text = self.bcomm.clone();
            let ecomm = self.ecomm.clone();
            loop {
                let c = self.next_char();
                if c == EOF {
                    return Err(self.fatal_at(file, line, "ERROR: end of file in comment"));
                }
                if c == MACRO {
                    return unsupported("a builtin token inside a comment");
                }
                if self.matches(c, &ecomm) {
                    text.extend_from_slice(&ecomm);
                    break;
                }
                text.push(c as u8);
            }
            return Ok(Tok::Str(text));
        }
        let c = ch as u8;
        if c.is_ascii_alphabetic() || c == b'_' {
            let mut w = vec![c];
            loop {
                let p = self.peek();
                if p >= 0 && ((p as u8).is_ascii_alphanumeric() || p as u8 == b'_') {
                    w.push(p as u8);
                    self.next_char();
                } else {
                    break;
                }
            }
            return Ok(Tok::Word(w));
        }
        if !(self.lquote.first().is_some_and(|&b| b as i32 == ch) && {
            let lq = self.lquote.clone();
            self.matches(ch, &lq)
        }) {
            return Ok(match c {
                b'(' => Tok::Open,
                b',' => Tok::Comma,
                b')' => Tok::Close,
                _ => Tok::Simple(c),
            });
        }
        let lq = self.lquote.clone();
        let rq = self.rquote.clone();
        let mut level = 1;
        let mut text = Vec::new();
        loop {
            let c = self.next_char();
            if c == EOF {
                return Err(self.fatal_at(file, line, "ERROR: end of file in string"));
            }
            if c == MACRO {
                return unsupported("a builtin token inside a quoted string");
            }
            if self.matches(c, &rq) {
                level -= 1;
                if level == 0 {
                    break;
                }
                text.extend_from_slice(&rq);
            } else if self.matches(c, &lq) {
                level += 1;
                text.extend_from_slice(&lq);
            } else {
                text.push(c as u8);
            }
        }
        Ok(Tok::Str(text))
    }

    /// Whether the next token is `(` (GNU m4's `peek_token () == TOKEN_OPEN`).
    fn peek_open(&self) -> bool {
        self.peek() == b'(' as i32
            && !self.peek_matches(&self.bcomm)
            && !self.peek_matches(&self.lquote)
    }

    // ---- messages ----------------------------------------------------------

    fn message_at(&mut self, file: usize, line: usize, msg: &str) {
        let text = if line == 0 {
            format!("{}: {msg}\n", self.cfg.program_name)
        } else {
            format!(
                "{}:{}:{line}: {msg}\n",
                self.cfg.program_name, self.names[file]
            )
        };
        self.stderr.extend_from_slice(text.as_bytes());
    }

    fn fatal_at(&mut self, file: usize, line: usize, msg: &str) -> Stop {
        self.message_at(file, line, msg);
        self.status = 1;
        Stop::Fatal
    }

    /// An error: reported, exit status 1, evaluation goes on.
    fn error(&mut self, msg: &str) {
        self.message_at(self.cur_name, self.cur_line, msg);
        self.status = 1;
    }

    /// A warning: reported; exit status 1 with `--fatal-warnings`.
    fn warn(&mut self, msg: &str) {
        self.message_at(self.cur_name, self.cur_line, msg);
        if self.cfg.fatal_warnings {
            self.status = 1;
        }
    }

    /// GNU m4's `bad_argc`: `argc` counts the macro name. True when there
    /// are too few (the builtin then does nothing).
    fn bad_argc(&mut self, name: &[u8], argc: usize, min: usize, max: usize) -> bool {
        if min > 0 && argc < min {
            self.warn(&format!(
                "Warning: too few arguments to builtin `{}'",
                String::from_utf8_lossy(name)
            ));
            true
        } else {
            if max > 0 && argc > max {
                self.warn(&format!(
                    "Warning: excess arguments to builtin `{}' ignored",
                    String::from_utf8_lossy(name)
                ));
            }
            false
        }
    }

    /// GNU m4's `numeric_arg`.
    fn numeric_arg(&mut self, name: &[u8], arg: &[u8]) -> Result<Option<i32>, Stop> {
        let name = String::from_utf8_lossy(name).into_owned();
        if arg.is_empty() {
            self.warn(&format!("empty string treated as 0 in builtin `{name}'"));
            return Ok(Some(0));
        }
        if arg[0].is_ascii_whitespace() || arg[0] == 0x0b {
            return unsupported("a number with leading white space");
        }
        match strtol(arg) {
            Some((v, overflow)) => {
                if overflow {
                    self.warn(&format!("numeric overflow detected in builtin `{name}'"));
                }
                Ok(Some(v as i32))
            }
            None => {
                self.warn(&format!("non-numeric argument to builtin `{name}'"));
                Ok(None)
            }
        }
    }

    // ---- output ------------------------------------------------------------

    fn ship(&mut self, obs: Option<&mut Vec<u8>>, text: &[u8]) {
        match obs {
            Some(o) => o.extend_from_slice(text),
            None => match self.diversion {
                0 => self.stdout.extend_from_slice(text),
                n if n < 0 => {}
                n => self
                    .diversions
                    .entry(n)
                    .or_default()
                    .extend_from_slice(text),
            },
        }
    }

    // ---- expansion ---------------------------------------------------------

    fn expand_input(&mut self) -> Result<(), Stop> {
        loop {
            let t = self.next_token()?;
            if let Tok::Eof = t {
                return Ok(());
            }
            self.expand_token(None, t)?;
        }
    }

    fn expand_token(&mut self, mut obs: Option<&mut Vec<u8>>, t: Tok) -> Result<(), Stop> {
        match t {
            Tok::Eof | Tok::MacDef(_) => Ok(()),
            Tok::Open => {
                self.ship(obs.as_deref_mut(), b"(");
                Ok(())
            }
            Tok::Comma => {
                self.ship(obs.as_deref_mut(), b",");
                Ok(())
            }
            Tok::Close => {
                self.ship(obs.as_deref_mut(), b")");
                Ok(())
            }
            Tok::Simple(c) => {
                self.ship(obs.as_deref_mut(), &[c]);
                Ok(())
            }
            Tok::Str(s) => {
                self.ship(obs.as_deref_mut(), &s);
                Ok(())
            }
            Tok::Word(w) => {
                let def = self.lookup(&w);
                match def {
                    None => {
                        self.ship(obs.as_deref_mut(), &w);
                        Ok(())
                    }
                    Some(Def::Builtin(b)) if builtin_info(b).1 && !self.peek_open() => {
                        self.ship(obs, &w);
                        Ok(())
                    }
                    Some(def) => self.expand_macro(w, def),
                }
            }
        }
    }

    fn expand_macro(&mut self, name: Vec<u8>, def: Def) -> Result<(), Stop> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return unsupported("macro calls nested too deeply");
        }
        let (open_name, open_line) = (self.cur_name, self.cur_line);
        let groks = match def {
            Def::Builtin(b) => builtin_info(b).2,
            Def::Text(_) => false,
        };
        let mut args = vec![Arg {
            text: name,
            func: None,
        }];
        if self.peek_open() {
            self.next_token()?; // the `(`
            loop {
                let (mut a, more) = self.expand_argument()?;
                if !groks && a.func.is_some() {
                    a = Arg::default();
                }
                args.push(a);
                if !more {
                    break;
                }
            }
        }
        let (close_name, close_line) = (self.cur_name, self.cur_line);
        self.cur_name = open_name;
        self.cur_line = open_line;
        let mut out = Vec::new();
        let r = self.call_macro(&def, &mut args, &mut out);
        // a builtin token (`m4_defn` of a builtin) is pushed by call_macro
        r?;
        self.work = self
            .work
            .saturating_add(CALL_COST + out.len() as u64 + args_len(&args));
        if self.work > self.cfg.max_work {
            return Err(self.fatal_at(
                open_name,
                open_line,
                &format!(
                    "ERROR: expansion of `{}' does not end (more than {} MiB of macro expansion; a macro that expands to a call of itself?)",
                    String::from_utf8_lossy(&args[0].text),
                    self.cfg.max_work >> 20
                ),
            ));
        }
        self.push_text(out);
        self.cur_name = close_name;
        self.cur_line = close_line;
        self.depth -= 1;
        Ok(())
    }

    /// Collect one argument; true if more follow (a `,` ended it).
    fn expand_argument(&mut self) -> Result<(Arg, bool), Stop> {
        let mut arg = Arg::default();
        let (file, line) = (self.cur_name, self.cur_line);
        let mut t = loop {
            let t = self.next_token()?;
            match t {
                Tok::Simple(c) if c.is_ascii_whitespace() || c == 0x0b => continue,
                t => break t,
            }
        };
        let mut paren = 0usize;
        loop {
            match t {
                Tok::Comma | Tok::Close if paren == 0 => {
                    return Ok((arg, matches!(t, Tok::Comma)));
                }
                Tok::Close => {
                    paren -= 1;
                    arg.text.push(b')');
                }
                Tok::Open => {
                    paren += 1;
                    arg.text.push(b'(');
                }
                Tok::Eof => {
                    return Err(self.fatal_at(file, line, "ERROR: end of file in argument list"));
                }
                Tok::MacDef(b) => {
                    if arg.text.is_empty() && arg.func.is_none() {
                        arg.func = Some(b);
                    }
                }
                t => {
                    self.expand_token(Some(&mut arg.text), t)?;
                }
            }
            t = self.next_token()?;
        }
    }

    fn call_macro(&mut self, def: &Def, args: &mut [Arg], out: &mut Vec<u8>) -> Result<(), Stop> {
        match def {
            Def::Text(body) => {
                expand_user_macro(body, args, &self.lquote, &self.rquote, out);
                Ok(())
            }
            Def::Builtin(b) => self.call_builtin(*b, args, out),
        }
    }

    fn push_macro(&mut self, b: B) {
        self.drop_exhausted_text();
        self.input.push(Input {
            data: Arc::from(&b""[..]),
            pos: 0,
            src: Src::Macro(b),
        });
    }

    fn quoted(&self, text: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.lquote);
        out.extend_from_slice(text);
        out.extend_from_slice(&self.rquote);
    }

    fn call_builtin(&mut self, b: B, args: &mut [Arg], out: &mut Vec<u8>) -> Result<(), Stop> {
        let argc = args.len();
        let name = args[0].text.clone();
        let arg = |i: usize| -> &[u8] {
            if i < args.len() {
                &args[i].text
            } else {
                b""
            }
        };
        match b {
            B::Missing(what) => unsupported(format!("the builtin `{what}'")),
            B::File => {
                self.bad_argc(&name, argc, 1, 1);
                let f = self.names[self.cur_name].clone();
                self.quoted(f.as_bytes(), out);
                Ok(())
            }
            B::Line => {
                self.bad_argc(&name, argc, 1, 1);
                out.extend_from_slice(self.cur_line.to_string().as_bytes());
                Ok(())
            }
            B::Program => {
                self.bad_argc(&name, argc, 1, 1);
                let p = self.cfg.program_name.clone();
                self.quoted(p.as_bytes(), out);
                Ok(())
            }
            B::Builtin => {
                if self.bad_argc(&name, argc, 2, 0) {
                    return Ok(());
                }
                if args[1].func.is_some() {
                    return unsupported("a builtin token as the name given to `builtin'");
                }
                let wanted = args[1].text.clone();
                match BUILTINS
                    .iter()
                    .find(|e| e.0.as_bytes() == wanted.as_slice())
                {
                    None => {
                        self.warn(&format!(
                            "undefined builtin `{}'",
                            String::from_utf8_lossy(&wanted)
                        ));
                        Ok(())
                    }
                    Some(&(_, inner, _, groks)) => {
                        let rest = &mut args[1..];
                        if !groks {
                            for a in rest.iter_mut().skip(1) {
                                if a.func.is_some() {
                                    *a = Arg::default();
                                }
                            }
                        }
                        self.call_builtin(inner, rest, out)
                    }
                }
            }
            B::Indir => {
                if self.bad_argc(&name, argc, 2, 0) {
                    return Ok(());
                }
                if args[1].func.is_some() {
                    return unsupported("a builtin token as the name given to `indir'");
                }
                let wanted = args[1].text.clone();
                let def = self.lookup(&wanted);
                match def {
                    None => {
                        self.warn(&format!(
                            "undefined macro `{}'",
                            String::from_utf8_lossy(&wanted)
                        ));
                        Ok(())
                    }
                    Some(def) => {
                        let groks = match def {
                            Def::Builtin(b) => builtin_info(b).2,
                            Def::Text(_) => false,
                        };
                        let rest = &mut args[1..];
                        if !groks {
                            for a in rest.iter_mut().skip(1) {
                                if a.func.is_some() {
                                    *a = Arg::default();
                                }
                            }
                        }
                        self.call_macro(&def, rest, out)
                    }
                }
            }
            B::Changecom => {
                self.bad_argc(&name, argc, 1, 3);
                if argc == 1 || args[1].text.is_empty() {
                    // no arguments, or an empty start: comments off
                    self.bcomm.clear();
                    self.ecomm.clear();
                } else {
                    self.bcomm = args[1].text.clone();
                    self.ecomm = if argc >= 3 && !args[2].text.is_empty() {
                        args[2].text.clone()
                    } else {
                        b"\n".to_vec()
                    };
                }
                Ok(())
            }
            B::Changequote => {
                self.bad_argc(&name, argc, 1, 3);
                if argc == 1 {
                    self.lquote = b"`".to_vec();
                    self.rquote = b"'".to_vec();
                } else {
                    let lq = args[1].text.clone();
                    let rq = if argc >= 3 {
                        Some(args[2].text.clone())
                    } else {
                        None
                    };
                    let rq = match rq {
                        None => b"'".to_vec(),
                        Some(r) if !lq.is_empty() && r.is_empty() => b"'".to_vec(),
                        Some(r) => r,
                    };
                    if lq.is_empty() && !rq.is_empty() {
                        return unsupported("an empty left quote with a right quote");
                    }
                    self.lquote = lq;
                    self.rquote = rq;
                }
                Ok(())
            }
            B::Incr | B::Decr => {
                if self.bad_argc(&name, argc, 2, 2) {
                    return Ok(());
                }
                if let Some(v) = self.numeric_arg(&name, arg(1))? {
                    let r = if b == B::Incr {
                        v.wrapping_add(1)
                    } else {
                        v.wrapping_sub(1)
                    };
                    out.extend_from_slice(r.to_string().as_bytes());
                }
                Ok(())
            }
            B::Define | B::Pushdef => {
                if self.bad_argc(&name, argc, 2, 3) {
                    return Ok(());
                }
                if args[1].func.is_some() {
                    return unsupported("a builtin token as a macro name");
                }
                let def = if argc == 2 {
                    Def::Text(Arc::from(&b""[..]))
                } else if let Some(f) = args[2].func {
                    Def::Builtin(f)
                } else {
                    Def::Text(Arc::from(args[2].text.as_slice()))
                };
                let stack = self.symbols.entry(args[1].text.clone()).or_default();
                if b == B::Define {
                    stack.pop();
                }
                stack.push(def);
                Ok(())
            }
            B::Undefine => {
                if self.bad_argc(&name, argc, 2, 0) {
                    return Ok(());
                }
                for a in &args[1..] {
                    self.symbols.remove(&a.text);
                }
                Ok(())
            }
            B::Popdef => {
                if self.bad_argc(&name, argc, 2, 0) {
                    return Ok(());
                }
                for a in &args[1..] {
                    if let Some(s) = self.symbols.get_mut(&a.text) {
                        s.pop();
                        if s.is_empty() {
                            self.symbols.remove(&a.text);
                        }
                    }
                }
                Ok(())
            }
            B::Defn => {
                if self.bad_argc(&name, argc, 2, 0) {
                    return Ok(());
                }
                for a in args.iter().skip(1) {
                    let def = self.lookup(&a.text);
                    match def {
                        None => {}
                        Some(Def::Text(t)) => {
                            let mut q = Vec::new();
                            self.quoted(&t, &mut q);
                            out.extend_from_slice(&q);
                        }
                        Some(Def::Builtin(f)) => {
                            if argc > 2 {
                                return unsupported("`defn' of a builtin among several names");
                            }
                            self.push_macro(f);
                        }
                    }
                }
                Ok(())
            }
            B::Divert => {
                if self.bad_argc(&name, argc, 1, 2) {
                    return Ok(());
                }
                let mut n = 0;
                if argc >= 2 {
                    match self.numeric_arg(&name, arg(1))? {
                        Some(v) => n = v,
                        None => return Ok(()),
                    }
                }
                self.diversion = n as i64;
                Ok(())
            }
            B::Divnum => {
                self.bad_argc(&name, argc, 1, 1);
                out.extend_from_slice(self.diversion.to_string().as_bytes());
                Ok(())
            }
            B::Undivert => {
                if argc == 1 {
                    let all: Vec<i64> = self.diversions.keys().copied().collect();
                    for n in all {
                        self.insert_diversion(n);
                    }
                } else {
                    for a in args.iter().skip(1) {
                        let a = a.text.clone();
                        let numeric = if a.is_empty() {
                            Some(0)
                        } else if a[0].is_ascii_whitespace() || a[0] == 0x0b {
                            None
                        } else {
                            strtol(&a).map(|(v, _)| v)
                        };
                        match numeric {
                            Some(n) => self.insert_diversion(n),
                            None => return unsupported("`undivert' of a file"),
                        }
                    }
                }
                Ok(())
            }
            B::Dnl => {
                if self.bad_argc(&name, argc, 1, 1) {
                    return Ok(());
                }
                let (file, line) = (self.cur_name, self.cur_line);
                loop {
                    let c = self.next_char();
                    if c == EOF {
                        self.message_at(file, line, "Warning: end of file treated as newline");
                        if self.cfg.fatal_warnings {
                            self.status = 1;
                        }
                        break;
                    }
                    if c == MACRO {
                        self.input.pop();
                        continue;
                    }
                    if c == b'\n' as i32 {
                        break;
                    }
                }
                Ok(())
            }
            B::Errprint => {
                if self.bad_argc(&name, argc, 2, 0) {
                    return Ok(());
                }
                let mut t = Vec::new();
                for (i, a) in args[1..].iter().enumerate() {
                    if i > 0 {
                        t.push(b' ');
                    }
                    t.extend_from_slice(&a.text);
                }
                self.stderr.extend_from_slice(&t);
                Ok(())
            }
            B::Esyscmd | B::Syscmd => {
                if self.bad_argc(&name, argc, 2, 2) {
                    return Ok(());
                }
                let cmd = arg(1).to_vec();
                self.run_command(&cmd, b == B::Esyscmd, out)
            }
            B::Sysval => {
                out.extend_from_slice(self.sysval.to_string().as_bytes());
                Ok(())
            }
            B::Eval => {
                if self.bad_argc(&name, argc, 2, 4) {
                    return Ok(());
                }
                let mut radix = 10;
                let mut width = 1;
                if argc >= 3 && !arg(2).is_empty() {
                    match strtol(arg(2)) {
                        Some((v, false)) if (2..=36).contains(&v) => radix = v as u32,
                        _ => return unsupported("an unusual radix in `eval'"),
                    }
                }
                if argc >= 4 {
                    match strtol(arg(3)) {
                        Some((v, false)) if (0..=10000).contains(&v) => width = v as usize,
                        _ => return unsupported("an unusual width in `eval'"),
                    }
                }
                let v = match eval::eval(arg(1)) {
                    Some(v) => v,
                    None => {
                        return unsupported(
                            "an `eval' expression with an error or operator not modelled",
                        )
                    }
                };
                out.extend_from_slice(&eval::render(v, radix, width));
                Ok(())
            }
            B::Format => {
                if self.bad_argc(&name, argc, 2, 0) {
                    return Ok(());
                }
                let texts: Vec<&[u8]> = args[2..].iter().map(|a| a.text.as_slice()).collect();
                match format::format(arg(1), &texts) {
                    Some(t) => {
                        out.extend_from_slice(&t);
                        Ok(())
                    }
                    None => unsupported("a `format' directive or argument not modelled"),
                }
            }
            B::Ifdef => {
                if self.bad_argc(&name, argc, 3, 4) {
                    return Ok(());
                }
                let defined = self.lookup(arg(1)).is_some();
                if defined {
                    out.extend_from_slice(arg(2));
                } else if argc >= 4 {
                    out.extend_from_slice(arg(3));
                }
                Ok(())
            }
            B::Ifelse => {
                if argc == 2 {
                    return Ok(());
                }
                if self.bad_argc(&name, argc, 4, 0) {
                    return Ok(());
                } else if argc.is_multiple_of(3) {
                    self.bad_argc(&name, argc, 0, argc - 1);
                }
                let mut i = 1;
                let mut left = argc - 1;
                loop {
                    if args[i].text == args[i + 1].text {
                        out.extend_from_slice(&args[i + 2].text);
                        return Ok(());
                    }
                    match left {
                        3 => return Ok(()),
                        4 | 5 => {
                            out.extend_from_slice(&args[i + 3].text);
                            return Ok(());
                        }
                        _ => {
                            left -= 3;
                            i += 3;
                        }
                    }
                }
            }
            B::Include | B::Sinclude => {
                if self.bad_argc(&name, argc, 2, 2) {
                    return Ok(());
                }
                let file = String::from_utf8_lossy(arg(1)).into_owned();
                if file.as_bytes() != arg(1) {
                    return unsupported("a file name that is not UTF-8");
                }
                if file.is_empty() {
                    return unsupported("an empty file name");
                }
                if std::fs::metadata(self.cfg.cwd.join(&file)).is_ok_and(|m| m.is_dir()) {
                    return unsupported("including a directory");
                }
                match self.open(&file) {
                    Ok((shown, data)) => {
                        if data.contains(&0) {
                            return unsupported("a NUL byte in an included file");
                        }
                        self.push_file(&shown, data);
                    }
                    Err(msg) => {
                        if b == B::Include {
                            self.error(&format!("cannot open `{file}': {msg}"));
                        }
                    }
                }
                Ok(())
            }
            B::Index => {
                if self.bad_argc(&name, argc, 3, 3) {
                    if argc == 2 {
                        out.push(b'0');
                    }
                    return Ok(());
                }
                let (hay, needle) = (arg(1), arg(2));
                let r = if needle.is_empty() {
                    0
                } else {
                    hay.windows(needle.len())
                        .position(|w| w == needle)
                        .map_or(-1, |p| p as i64)
                };
                out.extend_from_slice(r.to_string().as_bytes());
                Ok(())
            }
            B::Len => {
                if self.bad_argc(&name, argc, 2, 2) {
                    return Ok(());
                }
                out.extend_from_slice(arg(1).len().to_string().as_bytes());
                Ok(())
            }
            B::M4exit => {
                if self.bad_argc(&name, argc, 1, 2) {
                    return Ok(());
                }
                let mut code = 0;
                if argc >= 2 {
                    match strtol(arg(1)) {
                        Some((v, false))
                            if (0..=255).contains(&v) && !arg(1)[0].is_ascii_whitespace() =>
                        {
                            code = v as i32
                        }
                        _ => return unsupported("an unusual `m4exit' status"),
                    }
                }
                if code == 0 && self.status != 0 {
                    code = self.status;
                }
                Err(Stop::Exit(code))
            }
            B::Patsubst | B::Regexp => {
                if self.bad_argc(&name, argc, 3, 4) {
                    if argc == 2 {
                        if b == B::Patsubst {
                            out.extend_from_slice(arg(1));
                        } else {
                            out.push(b'0');
                        }
                    }
                    return Ok(());
                }
                let (victim, pat) = (arg(1), arg(2));
                let repl = if argc >= 4 { Some(arg(3)) } else { None };
                if !victim.is_ascii() || !pat.is_ascii() || repl.is_some_and(|r| !r.is_ascii()) {
                    return unsupported("a regular expression over non-ASCII text");
                }
                let re = match regex_emacs::compile(pat) {
                    Some(re) => re,
                    None => return unsupported("a regular expression not translated faithfully"),
                };
                if b == B::Regexp {
                    match repl {
                        None => {
                            let r = re.find(victim).map_or(-1, |m| m.start() as i64);
                            out.extend_from_slice(r.to_string().as_bytes());
                        }
                        Some(repl) => {
                            if let Some(c) = re.captures(victim) {
                                substitute(victim, repl, &c, out)?;
                            }
                        }
                    }
                } else {
                    let repl = repl.unwrap_or(b"");
                    let len = victim.len();
                    let mut off = 0;
                    while off <= len {
                        let Some(c) = re.captures_at(victim, off) else {
                            out.extend_from_slice(&victim[off..]);
                            break;
                        };
                        let m = c.get(0).expect("group 0");
                        out.extend_from_slice(&victim[off..m.start()]);
                        substitute(victim, repl, &c, out)?;
                        off = m.end();
                        if m.start() == m.end() {
                            if off < len {
                                out.push(victim[off]);
                            }
                            off += 1;
                        }
                    }
                }
                Ok(())
            }
            B::Shift => {
                if self.bad_argc(&name, argc, 2, 0) {
                    return Ok(());
                }
                for (i, a) in args[2..].iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let mut q = Vec::new();
                    self.quoted(&a.text, &mut q);
                    out.extend_from_slice(&q);
                }
                Ok(())
            }
            B::Substr => {
                if self.bad_argc(&name, argc, 3, 4) {
                    if argc == 2 {
                        out.extend_from_slice(arg(1));
                    }
                    return Ok(());
                }
                let s = arg(1).to_vec();
                let avail = s.len() as i64;
                let Some(start) = self.numeric_arg(&name, arg(2))? else {
                    return Ok(());
                };
                let mut length = avail;
                if argc >= 4 {
                    match self.numeric_arg(&name, arg(3))? {
                        Some(l) => length = l as i64,
                        None => return Ok(()),
                    }
                }
                let start = start as i64;
                if start < 0 || length <= 0 || start >= avail {
                    return Ok(());
                }
                if start + length > avail {
                    length = avail - start;
                }
                out.extend_from_slice(&s[start as usize..(start + length) as usize]);
                Ok(())
            }
            B::Translit => {
                if self.bad_argc(&name, argc, 3, 4) {
                    if argc == 2 {
                        out.extend_from_slice(arg(1));
                    }
                    return Ok(());
                }
                let from = expand_ranges(arg(2));
                let to = if argc >= 4 {
                    expand_ranges(arg(3))
                } else {
                    Vec::new()
                };
                let mut map = [0u8; 256];
                let mut found = [false; 256];
                let mut ti = 0;
                for &c in &from {
                    if c == 0 {
                        break;
                    }
                    if !found[c as usize] {
                        found[c as usize] = true;
                        map[c as usize] = to.get(ti).copied().unwrap_or(0);
                    }
                    if ti < to.len() {
                        ti += 1;
                    }
                }
                for &c in arg(1) {
                    if !found[c as usize] {
                        out.push(c);
                    } else if map[c as usize] != 0 {
                        out.push(map[c as usize]);
                    }
                }
                Ok(())
            }
        }
    }

    fn insert_diversion(&mut self, n: i64) {
        if n <= 0 || n == self.diversion {
            return;
        }
        if let Some(d) = self.diversions.remove(&n) {
            self.ship(None, &d);
        }
    }

    fn run_command(&mut self, cmd: &[u8], capture: bool, out: &mut Vec<u8>) -> Result<(), Stop> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::ExitStatusExt;
        use std::process::{Command, Stdio};
        self.ran_commands = true;
        let r = Command::new("/bin/sh")
            .arg("-c")
            .arg(std::ffi::OsStr::from_bytes(cmd))
            .current_dir(&self.cfg.cwd)
            .stdin(Stdio::null())
            .output();
        match r {
            Ok(o) => {
                if capture {
                    out.extend_from_slice(&o.stdout);
                } else {
                    // GNU m4 flushes its stdout before the command, whose
                    // output then goes to m4's stdout, not a diversion.
                    self.stdout.extend_from_slice(&o.stdout);
                }
                self.stderr.extend_from_slice(&o.stderr);
                self.sysval = match (o.status.code(), o.status.signal()) {
                    (Some(c), _) => c,
                    (None, Some(s)) => s << 8,
                    _ => 127,
                };
                Ok(())
            }
            Err(e) => unsupported(format!("running /bin/sh failed: {e}")),
        }
    }
}

/// `$0`..`$N`, `$#`, `$*`, `$@` substitution as GNU m4 does it (several
/// digits make one argument number).
fn expand_user_macro(body: &[u8], args: &[Arg], lq: &[u8], rq: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c != b'$' {
            let end = body[i..]
                .iter()
                .position(|&c| c == b'$')
                .map_or(body.len(), |p| i + p);
            out.extend_from_slice(&body[i..end]);
            i = end;
            continue;
        }
        i += 1;
        match body.get(i) {
            Some(d) if d.is_ascii_digit() => {
                let mut n: usize = 0;
                while let Some(d) = body.get(i).filter(|d| d.is_ascii_digit()) {
                    n = n.saturating_mul(10).saturating_add((d - b'0') as usize);
                    i += 1;
                }
                if n < args.len() {
                    out.extend_from_slice(&args[n].text);
                }
            }
            Some(b'#') => {
                out.extend_from_slice((args.len() - 1).to_string().as_bytes());
                i += 1;
            }
            Some(&q @ (b'*' | b'@')) => {
                for (k, a) in args[1..].iter().enumerate() {
                    if k > 0 {
                        out.push(b',');
                    }
                    if q == b'@' {
                        out.extend_from_slice(lq);
                    }
                    out.extend_from_slice(&a.text);
                    if q == b'@' {
                        out.extend_from_slice(rq);
                    }
                }
                i += 1;
            }
            _ => out.push(b'$'),
        }
    }
}

/// A regex replacement: `\&` the match, `\1`..`\9` groups.
fn substitute(
    victim: &[u8],
    repl: &[u8],
    c: &regex::bytes::Captures,
    out: &mut Vec<u8>,
) -> Result<(), Stop> {
    let mut i = 0;
    while i < repl.len() {
        let ch = repl[i];
        if ch != b'\\' {
            out.push(ch);
            i += 1;
            continue;
        }
        match repl.get(i + 1) {
            None => return unsupported("a trailing backslash in a replacement"),
            Some(b'0') => return unsupported("`\\0' in a replacement"),
            Some(b'&') => {
                let m = c.get(0).expect("group 0");
                out.extend_from_slice(&victim[m.start()..m.end()]);
            }
            Some(d @ b'1'..=b'9') => {
                let n = (d - b'0') as usize;
                if n >= c.len() {
                    return unsupported("a replacement naming a group the regex lacks");
                }
                if let Some(m) = c.get(n) {
                    out.extend_from_slice(&victim[m.start()..m.end()]);
                }
            }
            Some(&o) => out.push(o),
        }
        i += 2;
    }
    Ok(())
}

/// `translit`'s ranges, as GNU m4's `expand_ranges`.
fn expand_ranges(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut from: u8 = 0;
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'-' && from != 0 {
            i += 1;
            if i >= s.len() {
                out.push(b'-');
                break;
            }
            let to = s[i];
            if from <= to {
                while from < to {
                    from += 1;
                    out.push(from);
                }
            } else {
                while from > to {
                    from -= 1;
                    out.push(from);
                }
            }
        } else {
            out.push(s[i]);
        }
        from = s[i];
        i += 1;
    }
    out
}

/// C's `strtol(s, &end, 10)` with `*end == '\0'` required: the value and
/// whether it overflowed `long` (clamped as strtol does).
fn strtol(s: &[u8]) -> Option<(i64, bool)> {
    let mut i = 0;
    while i < s.len() && (s[i].is_ascii_whitespace() || s[i] == 0x0b) {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let digits = &s[i..];
    if digits.is_empty() || !digits.iter().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut v: i128 = 0;
    for &d in digits {
        v = (v * 10 + (d - b'0') as i128).min(1 << 70);
    }
    let v = if neg { -v } else { v };
    if v > i64::MAX as i128 {
        Some((i64::MAX, true))
    } else if v < i64::MIN as i128 {
        Some((i64::MIN, true))
    } else {
        Some((v as i64, false))
    }
}

fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// One complete m4 run: `m4 [options] -DK=V... -- FILES...`.
pub fn run(cfg: Config, defines: &[(String, String)], files: &[String]) -> Result<Outcome, Error> {
    let mut m = M4::new(cfg);
    for (k, v) in defines {
        m.define(k, v);
    }
    for f in files {
        m.process_file(f)?;
    }
    Ok(m.finish())
}

/// The bytes of a call's arguments (its name excluded): collecting them is
/// work too (a self-doubling argument grows there).
fn args_len(args: &[Arg]) -> u64 {
    args.iter().skip(1).map(|a| a.text.len() as u64).sum()
}
