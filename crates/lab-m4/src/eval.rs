//! `m4_eval`: GNU m4 1.4.19's integer expressions (32-bit, wrapping).
//! Anything whose result or message is not modelled here (errors, `=`,
//! radix-1 numbers) gives `None`, and the caller falls back to GNU m4.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum T {
    Num(i32),
    Op(&'static str),
    LParen,
    RParen,
}

fn lex(s: &[u8]) -> Option<Vec<T>> {
    const OPS: &[&str] = &[
        "**", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||", "+", "-", "*", "/", "%", "~", "!",
        "<", ">", "&", "|", "^",
    ];
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c.is_ascii_whitespace() || c == 0x0b {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            let mut base: u32 = 10;
            if c == b'0' {
                i += 1;
                match s.get(i) {
                    Some(b'x' | b'X') => {
                        base = 16;
                        i += 1;
                    }
                    Some(b'b' | b'B') => {
                        base = 2;
                        i += 1;
                    }
                    Some(b'r' | b'R') => {
                        i += 1;
                        base = 0;
                        while let Some(d) = s.get(i).filter(|d| d.is_ascii_digit()) {
                            if base > 36 {
                                break;
                            }
                            base = base * 10 + (d - b'0') as u32;
                            i += 1;
                        }
                        if !(2..=36).contains(&base) || s.get(i) != Some(&b':') {
                            return None;
                        }
                        i += 1;
                    }
                    _ => base = 8,
                }
            }
            let mut v: i32 = 0;
            while let Some(&d) = s.get(i) {
                let digit = if d.is_ascii_digit() {
                    (d - b'0') as u32
                } else if d.is_ascii_lowercase() {
                    (d - b'a') as u32 + 10
                } else if d.is_ascii_uppercase() {
                    (d - b'A') as u32 + 10
                } else {
                    break;
                };
                if digit >= base {
                    break;
                }
                v = v.wrapping_mul(base as i32).wrapping_add(digit as i32);
                i += 1;
            }
            out.push(T::Num(v));
            continue;
        }
        if c == b'(' {
            out.push(T::LParen);
            i += 1;
            continue;
        }
        if c == b')' {
            out.push(T::RParen);
            i += 1;
            continue;
        }
        let op = OPS.iter().find(|o| s[i..].starts_with(o.as_bytes()))?;
        // a lone `=` (GNU m4 warns and treats it as `==`) is in no list:
        // not modelled
        out.push(T::Op(op));
        i += op.len();
    }
    Some(out)
}

struct P {
    t: Vec<T>,
    i: usize,
}

impl P {
    fn peek_op(&self) -> Option<&'static str> {
        match self.t.get(self.i) {
            Some(T::Op(o)) => Some(o),
            _ => None,
        }
    }

    fn binary(&mut self, level: usize) -> Option<i32> {
        const LEVELS: &[&[&str]] = &[
            &["||"],
            &["&&"],
            &["|"],
            &["^"],
            &["&"],
            &["==", "!="],
            &["<", "<=", ">", ">="],
            &["<<", ">>"],
            &["+", "-"],
            &["*", "/", "%"],
        ];
        if level == LEVELS.len() {
            return self.power();
        }
        let mut v = self.binary(level + 1)?;
        while let Some(op) = self.peek_op().filter(|o| LEVELS[level].contains(o)) {
            self.i += 1;
            let w = self.binary(level + 1)?;
            v = match op {
                "||" => ((v != 0) || (w != 0)) as i32,
                "&&" => ((v != 0) && (w != 0)) as i32,
                "|" => v | w,
                "^" => v ^ w,
                "&" => v & w,
                "==" => (v == w) as i32,
                "!=" => (v != w) as i32,
                "<" => (v < w) as i32,
                "<=" => (v <= w) as i32,
                ">" => (v > w) as i32,
                ">=" => (v >= w) as i32,
                "<<" => v.wrapping_shl(w as u32 & 31),
                ">>" => v.wrapping_shr(w as u32 & 31),
                "+" => v.wrapping_add(w),
                "-" => v.wrapping_sub(w),
                "*" => v.wrapping_mul(w),
                "/" if w == 0 => return None,
                "%" if w == 0 => return None,
                "/" => v.wrapping_div(w),
                "%" => v.wrapping_rem(w),
                _ => return None,
            };
        }
        Some(v)
    }

    fn power(&mut self) -> Option<i32> {
        let base = self.unary()?;
        if self.peek_op() == Some("**") {
            self.i += 1;
            let e = self.power()?;
            if e < 0 || (e == 0 && base == 0) {
                return None;
            }
            if e > 64 {
                return None;
            }
            let mut r: i32 = 1;
            for _ in 0..e {
                r = r.wrapping_mul(base);
            }
            return Some(r);
        }
        Some(base)
    }

    fn unary(&mut self) -> Option<i32> {
        match self.t.get(self.i).copied() {
            Some(T::Op(o @ ("+" | "-" | "~" | "!"))) => {
                self.i += 1;
                let v = self.unary()?;
                Some(match o {
                    "+" => v,
                    "-" => v.wrapping_neg(),
                    "~" => !v,
                    _ => (v == 0) as i32,
                })
            }
            Some(T::LParen) => {
                self.i += 1;
                let v = self.binary(0)?;
                if self.t.get(self.i) != Some(&T::RParen) {
                    return None;
                }
                self.i += 1;
                Some(v)
            }
            Some(T::Num(n)) => {
                self.i += 1;
                Some(n)
            }
            _ => None,
        }
    }
}

/// The value of an expression, or `None` when GNU m4 would complain (or
/// do something not modelled here).
pub fn eval(s: &[u8]) -> Option<i32> {
    let t = lex(s)?;
    if t.is_empty() {
        return None;
    }
    let mut p = P { t, i: 0 };
    let v = p.binary(0)?;
    if p.i != p.t.len() {
        return None;
    }
    Some(v)
}

/// A value in a radix (2..=36), at least `width` digits, `-` before.
pub fn render(v: i32, radix: u32, width: usize) -> Vec<u8> {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut mag = v.unsigned_abs();
    let mut digits = Vec::new();
    while mag > 0 {
        digits.push(DIGITS[(mag % radix) as usize]);
        mag /= radix;
    }
    while digits.len() < width.max(1) {
        digits.push(b'0');
    }
    if v < 0 {
        digits.push(b'-');
    }
    digits.reverse();
    digits
}
