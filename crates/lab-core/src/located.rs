use std::fmt;
use std::path::{Path, PathBuf};

/// A place in a file that an error points at: the file, the 1-based line and
/// column, the text of that line and how many characters to underline.
/// Errors carry this so the CLI can show the line with a caret without
/// reading the file again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
    pub line_text: String,
    pub width: usize,
}

impl Located {
    /// The location of byte range `span` in `text`, which is the content of
    /// `path`. Out-of-range spans are clamped to the end of the text.
    pub fn from_span(path: &Path, text: &str, span: std::ops::Range<usize>) -> Located {
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let end = floor_char_boundary(text, span.end.clamp(start, text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = text[..start].matches('\n').count() + 1;
        let col = text[line_start..start].chars().count() + 1;
        let width = text[start..end.min(line_end)].chars().count().max(1);
        Located {
            path: path.to_path_buf(),
            line,
            col,
            line_text: text[line_start..line_end]
                .trim_end_matches('\r')
                .to_string(),
            width,
        }
    }

    /// The location of the first occurrence of `needle` on 1-based `line`
    /// (or the whole line when it does not occur there).
    pub fn from_line(path: &Path, text: &str, line: usize, needle: Option<&str>) -> Located {
        let mut offset = 0;
        for (i, l) in text.split_inclusive('\n').enumerate() {
            if i + 1 == line {
                let l = l.trim_end_matches(['\n', '\r']);
                let (s, w) = match needle.and_then(|n| l.find(n).map(|at| (at, n.len()))) {
                    Some((at, n)) => (at, n),
                    None => {
                        let indent = l.len() - l.trim_start().len();
                        (indent, l.trim().len())
                    }
                };
                return Located::from_span(path, text, offset + s..offset + s + w);
            }
            offset += l.len();
        }
        Located::from_span(path, text, text.len()..text.len())
    }

    /// A location without a line: the error is about the file as a whole.
    pub fn file(path: &Path) -> Located {
        Located {
            path: path.to_path_buf(),
            line: 0,
            col: 0,
            line_text: String::new(),
            width: 0,
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.path.display())
        } else {
            write!(f, "{}:{}:{}", self.path.display(), self.line, self.col)
        }
    }
}

/// What the CLI needs to show any of lab's errors: a location to point at and
/// a hint when the fix is known. Every library error type implements it.
pub trait Diagnose: std::error::Error {
    fn location(&self) -> Option<&Located> {
        None
    }
    fn hint(&self) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_to_line_and_column() {
        let text = "a = 1\nbb = \"x\"\n";
        let l = Located::from_span(Path::new("f"), text, 11..14);
        assert_eq!((l.line, l.col, l.width), (2, 6, 3));
        assert_eq!(l.line_text, "bb = \"x\"");
        assert_eq!(l.to_string(), "f:2:6");
    }

    #[test]
    fn line_and_needle() {
        let text = "one\n  two three\n";
        let l = Located::from_line(Path::new("f"), text, 2, Some("three"));
        assert_eq!((l.line, l.col, l.width), (2, 7, 5));
        let l = Located::from_line(Path::new("f"), text, 2, None);
        assert_eq!((l.line, l.col, l.width), (2, 3, 9));
    }

    #[test]
    fn end_of_text() {
        let l = Located::from_span(Path::new("f"), "abc", 10..12);
        assert_eq!((l.line, l.col), (1, 4));
    }
}
