//! `m4_format`: the printf directives GNU m4 1.4.19 passes to C's printf,
//! for integers, characters and strings. Floating point, `*` widths,
//! length modifiers and arguments that are not clean integers give `None`
//! (the caller falls back to GNU m4).

fn int_arg(a: Option<&&[u8]>) -> Option<i64> {
    let Some(a) = a else { return Some(0) };
    if a.is_empty() || a[0].is_ascii_whitespace() {
        return None;
    }
    let (v, overflow) = crate::strtol(a)?;
    if overflow || v < i32::MIN as i64 || v > i32::MAX as i64 {
        return None;
    }
    Some(v)
}

pub fn format(fmt: &[u8], args: &[&[u8]]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut next = 0usize;
    let mut take = || {
        let a = args.get(next);
        next += 1;
        a
    };
    let mut i = 0;
    while i < fmt.len() {
        let c = fmt[i];
        if c != b'%' {
            out.push(c);
            i += 1;
            continue;
        }
        i += 1;
        if fmt.get(i) == Some(&b'%') {
            out.push(b'%');
            i += 1;
            continue;
        }
        let (mut left, mut plus, mut space, mut alt, mut zero) =
            (false, false, false, false, false);
        while let Some(&f) = fmt.get(i) {
            match f {
                b'-' => left = true,
                b'+' => plus = true,
                b' ' => space = true,
                b'#' => alt = true,
                b'0' => zero = true,
                _ => break,
            }
            i += 1;
        }
        let mut width = 0usize;
        while let Some(d) = fmt.get(i).filter(|d| d.is_ascii_digit()) {
            width = width.checked_mul(10)?.checked_add((d - b'0') as usize)?;
            i += 1;
        }
        let mut prec: Option<usize> = None;
        if fmt.get(i) == Some(&b'.') {
            i += 1;
            let mut p = 0usize;
            while let Some(d) = fmt.get(i).filter(|d| d.is_ascii_digit()) {
                p = p.checked_mul(10)?.checked_add((d - b'0') as usize)?;
                i += 1;
            }
            prec = Some(p);
        }
        if width > 4096 || prec.is_some_and(|p| p > 4096) {
            return None;
        }
        let conv = *fmt.get(i)?;
        i += 1;
        let (sign, body): (Vec<u8>, Vec<u8>) = match conv {
            b'd' | b'i' | b'o' | b'u' | b'x' | b'X' => {
                let v = int_arg(take())? as i32;
                let (neg, mag): (bool, u32) = match conv {
                    b'd' | b'i' => (v < 0, v.unsigned_abs()),
                    _ => (false, v as u32),
                };
                let mut digits = match conv {
                    b'o' => format!("{mag:o}"),
                    b'x' => format!("{mag:x}"),
                    b'X' => format!("{mag:X}"),
                    _ => format!("{mag}"),
                }
                .into_bytes();
                if prec == Some(0) && mag == 0 {
                    digits.clear();
                }
                if let Some(p) = prec {
                    while digits.len() < p {
                        digits.insert(0, b'0');
                    }
                }
                let mut sign = Vec::new();
                match conv {
                    b'd' | b'i' => {
                        if neg {
                            sign.push(b'-');
                        } else if plus {
                            sign.push(b'+');
                        } else if space {
                            sign.push(b' ');
                        }
                    }
                    b'o' if alt && digits.first() != Some(&b'0') => digits.insert(0, b'0'),
                    b'x' if alt && mag != 0 => sign.extend_from_slice(b"0x"),
                    b'X' if alt && mag != 0 => sign.extend_from_slice(b"0X"),
                    _ => {}
                }
                if zero && !left && prec.is_none() {
                    while sign.len() + digits.len() < width {
                        digits.insert(0, b'0');
                    }
                }
                (sign, digits)
            }
            b'c' | b's' if zero => return None,
            b'c' => {
                let v = int_arg(take())? as u8;
                if v == 0 {
                    return None;
                }
                (Vec::new(), vec![v])
            }
            b's' => {
                let s = take().map(|s| s.to_vec()).unwrap_or_default();
                let s = match prec {
                    Some(p) if p < s.len() => s[..p].to_vec(),
                    _ => s,
                };
                (Vec::new(), s)
            }
            _ => return None,
        };
        let len = sign.len() + body.len();
        if !left {
            out.resize(out.len() + width.saturating_sub(len), b' ');
        }
        out.extend_from_slice(&sign);
        out.extend_from_slice(&body);
        if left {
            out.resize(out.len() + width.saturating_sub(len), b' ');
        }
    }
    Some(out)
}
