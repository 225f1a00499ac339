//! Resource quantities (`500m`, `1Gi`, `2e3`), parsed far enough to validate and compare them.
//!
//! Values are kept as integer nano-units (rounded up, as upstream rounds when it must), which
//! holds every quantity a pod can sensibly ask for (up to `Ei`) without floating point.

use std::cmp::Ordering;

use serde_json::Value;

/// A parsed quantity in nano-units of its resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(i128);

/// Upstream's message when a quantity does not parse.
pub const FORMAT_ERROR: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

impl Quantity {
    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses the string form; numbers (which some clients send) are accepted too.
    pub fn from_value(v: &Value) -> Option<Quantity> {
        match v {
            Value::String(s) => Quantity::parse(s),
            Value::Number(n) => Quantity::parse(&n.to_string()),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        let (negative, body) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let num_end = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (num, suffix) = body.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        // value = digits * 10^(exp10) * 2^(exp2)
        let digits: String = format!("{int_part}{frac_part}");
        let mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        let mut exp10: i32 = -(frac_part.len() as i32);
        let mut exp2: u32 = 0;
        match suffix {
            "" => {}
            "n" => exp10 -= 9,
            "u" => exp10 -= 6,
            "m" => exp10 -= 3,
            "k" => exp10 += 3,
            "M" => exp10 += 6,
            "G" => exp10 += 9,
            "T" => exp10 += 12,
            "P" => exp10 += 15,
            "E" => exp10 += 18,
            "Ki" => exp2 = 10,
            "Mi" => exp2 = 20,
            "Gi" => exp2 = 30,
            "Ti" => exp2 = 40,
            "Pi" => exp2 = 50,
            "Ei" => exp2 = 60,
            other => {
                let rest = other.strip_prefix(['e', 'E'])?;
                let e: i32 = rest.parse().ok()?;
                if !(-40..=40).contains(&e) {
                    return None;
                }
                exp10 += e;
            }
        }
        // To nano-units: multiply by 10^9.
        exp10 += 9;
        let mut v = mantissa.checked_mul(1i128.checked_shl(exp2)?)?;
        if exp10 >= 0 {
            v = v.checked_mul(10i128.checked_pow(exp10 as u32)?)?;
        } else {
            let d = 10i128.checked_pow((-exp10) as u32)?;
            v = (v + d - 1) / d;
        }
        Some(Quantity(if negative { -v } else { v }))
    }
}

/// Compares two quantity values; `None` if either does not parse.
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    Some(Quantity::from_value(a)?.cmp(&Quantity::from_value(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    #[test]
    fn parses_suffixes() {
        assert_eq!(q("1"), q("1000m"));
        assert_eq!(q("1Ki"), q("1024"));
        assert_eq!(q("1k"), q("1e3"));
        assert_eq!(q("0.5"), q("500m"));
        assert_eq!(q("1Gi"), q("1073741824"));
        assert!(q("100Mi") < q("1Gi"));
        assert!(q("-1").is_negative());
        assert!(q("0").is_zero());
        for bad in ["", "abc", "1.2.3", "1Zi", "--1", "1e", "."] {
            assert!(Quantity::parse(bad).is_none(), "{bad}");
        }
    }
}
