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

/// How a quantity was written, which decides how upstream prints it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// `500m`, `2k`, `3` (and no suffix).
    DecimalSi,
    /// `1Gi`, `512Mi`.
    BinarySi,
    /// `1e3`.
    DecimalExponent,
}

fn format_of(s: &str) -> Format {
    let body = s.trim().trim_start_matches(['+', '-']);
    let suffix = body.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    if suffix.ends_with('i') {
        Format::BinarySi
    } else if suffix.starts_with(['e', 'E']) && suffix.len() > 1 {
        Format::DecimalExponent
    } else {
        Format::DecimalSi
    }
}

const NANO: i128 = 1_000_000_000;

/// Upstream's canonical form of a quantity (`Quantity.String()`): `0.5` → `500m`,
/// `1024Mi` → `1Gi`, `2000` → `2k`; `None` if it does not parse. With `round_milli`, values
/// are first rounded up to milli-units, as `SetDefaults_ResourceList` does.
pub fn canonical(s: &str, round_milli: bool) -> Option<String> {
    let Quantity(mut nanos) = Quantity::parse(s)?;
    if round_milli && nanos % 1_000_000 != 0 {
        nanos = (nanos.div_euclid(1_000_000).saturating_add(1)).saturating_mul(1_000_000);
    }
    if nanos == 0 {
        return Some("0".into());
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let abs = nanos.abs();
    let mut format = format_of(s);
    if format == Format::BinarySi && (abs < 1024 * NANO || abs % NANO != 0) {
        format = Format::DecimalSi;
    }
    if format == Format::BinarySi {
        let mut n = abs / NANO;
        let mut power = 0;
        while power < 6 && n % 1024 == 0 {
            n /= 1024;
            power += 1;
        }
        let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power];
        return Some(format!("{sign}{n}{suffix}"));
    }
    // mantissa × 10^exp with exp a multiple of 3, the mantissa as small as that allows.
    let (mut m, mut exp) = (abs, -9i32);
    while m % 10 == 0 {
        m /= 10;
        exp += 1;
    }
    while exp.rem_euclid(3) != 0 {
        m *= 10;
        exp -= 1;
    }
    let suffix = match format {
        Format::DecimalExponent if exp == 0 => String::new(),
        Format::DecimalExponent => format!("e{exp}"),
        _ => match exp {
            -9 => "n".into(),
            -6 => "u".into(),
            -3 => "m".into(),
            0 => String::new(),
            3 => "k".into(),
            6 => "M".into(),
            9 => "G".into(),
            12 => "T".into(),
            15 => "P".into(),
            18 => "E".into(),
            e => format!("e{e}"),
        },
    };
    Some(format!("{sign}{m}{suffix}"))
}

/// Rewrites every quantity of a resource map (`requests`, `capacity`, `hard`…) in canonical
/// form, rounded up to milli-units; values that do not parse are left for validation.
pub fn canonicalize_list(list: &mut Value) {
    if let Some(m) = list.as_object_mut() {
        for v in m.values_mut() {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            if let Some(c) = canonical(&text, true) {
                *v = Value::String(c);
            }
        }
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

    #[test]
    fn canonical_forms_match_upstream() {
        for (input, want) in [
            ("0.5", "500m"),
            ("1000m", "1"),
            ("1500m", "1500m"),
            ("2000", "2k"),
            ("1024Mi", "1Gi"),
            ("1000Mi", "1000Mi"),
            ("1.5Gi", "1536Mi"),
            ("512", "512"),
            ("100Ki", "100Ki"),
            ("1e3", "1e3"),
            ("0", "0"),
            ("0.0001", "1m"),
            ("128974848", "128974848"),
            ("129e6", "129e6"),
            ("129M", "129M"),
            ("123Mi", "123Mi"),
            ("-2", "-2"),
        ] {
            assert_eq!(canonical(input, true).as_deref(), Some(want), "{input}");
        }
        assert_eq!(canonical("100n", false).as_deref(), Some("100n"));
        assert_eq!(canonical("x", true), None);
    }
}
