//! Money as exact integer cents (SPEC §1 "Money").
//!
//! Every amount is rounded to the nearest cent, half away from zero, when it is decoded;
//! from then on all arithmetic is on `i64` cents and a view writes `cents / 100` as a double.

/// Integer cents. Sums of cents are exact.
pub type Cents = i64;

/// The largest amount accepted for one number: 10 trillion currency units. Sums of many such
/// amounts still fit comfortably in an `i64` of cents.
pub const MAX_AMOUNT: f64 = 1e13;

/// Why a JSON number is not an acceptable amount of money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoneyError {
    Negative,
    TooLarge,
}

/// Rounds a decoded JSON number to cents, half away from zero, on its *decimal* digits.
///
/// A JSON number arrives as the nearest `f64`; its shortest round-trip decimal form (what
/// `Display` prints) is the literal as written for every literal of up to 15 significant
/// digits, so `19.995` rounds to `20.00` even though the nearest double is just below it.
pub fn cents_from_number(x: f64) -> Result<Cents, MoneyError> {
    if x.is_nan() || x < 0.0 {
        return Err(MoneyError::Negative);
    }
    if !x.is_finite() || x > MAX_AMOUNT {
        return Err(MoneyError::TooLarge);
    }
    // The common case, a literal of at most two decimals (`12.99`): the double nearest to
    // `c / 100` for an integer `c`. Then `c / 100` is also its shortest digits: below
    // MAX_AMOUNT doubles are closer together than a cent, so no other decimal of as few
    // digits maps to the same double.
    let c = (x * 100.0).round();
    if c / 100.0 == x {
        return Ok(c as Cents);
    }
    // zmij prints the same shortest digits as `Display`, without allocating, but in
    // exponent form for very small numbers (`1e-7`): those go the long way.
    let mut buffer = zmij::Buffer::new();
    let shortest = buffer.format_finite(x);
    if shortest.contains('e') {
        return cents_of_decimal(&format!("{x}"));
    }
    cents_of_decimal(shortest)
}

/// Cents of a plain decimal (`12.345`, `7`), rounded half up on its third fraction digit.
fn cents_of_decimal(text: &str) -> Result<Cents, MoneyError> {
    let (int_part, frac_part) = text.split_once('.').unwrap_or((text, ""));
    let units: i64 = int_part.parse().map_err(|_| MoneyError::TooLarge)?;
    let digit = |i: usize| frac_part.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
    let mut cents = units * 100 + digit(0) * 10 + digit(1);
    if digit(2) >= 5 {
        cents += 1;
    }
    Ok(cents)
}

/// The double a view writes for an amount of cents.
pub fn to_units(cents: Cents) -> f64 {
    cents as f64 / 100.0
}

/// An average or ratio of an amount of cents over a count, computed from the exact sum.
/// `None` when the count is zero.
pub fn per(cents: Cents, count: i64) -> Option<f64> {
    (count != 0).then(|| cents as f64 / count as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_away_from_zero_on_decimal_digits() {
        assert_eq!(cents_from_number(19.995), Ok(2000));
        assert_eq!(cents_from_number(19.994), Ok(1999));
        assert_eq!(cents_from_number(0.005), Ok(1));
        assert_eq!(cents_from_number(0.0049999), Ok(0));
        assert_eq!(cents_from_number(1.005), Ok(101));
        assert_eq!(cents_from_number(2.675), Ok(268));
        assert_eq!(cents_from_number(100.0), Ok(10000));
        assert_eq!(cents_from_number(0.1), Ok(10));
        assert_eq!(cents_from_number(12345678.91), Ok(1234567891));
        assert_eq!(cents_from_number(0.0), Ok(0));
        assert_eq!(cents_from_number(-0.0), Ok(0));
    }

    #[test]
    fn rejects_negative_and_huge() {
        assert_eq!(cents_from_number(-0.01), Err(MoneyError::Negative));
        assert_eq!(cents_from_number(1e14), Err(MoneyError::TooLarge));
        assert_eq!(cents_from_number(f64::INFINITY), Err(MoneyError::TooLarge));
    }

    #[test]
    fn averages_use_exact_sums() {
        assert_eq!(per(1000, 3), Some(1000.0 / 3.0 / 100.0));
        assert_eq!(per(5, 0), None);
        assert_eq!(to_units(-250), -2.5);
    }

    proptest::proptest! {
        #[test]
        fn the_shortest_digits_round_as_display_prints_them(bits: u64, small in 0.0f64..1e-3, cents in 0u64..100_000_000) {
            let display = |x: f64| cents_of_decimal(&format!("{x}"));
            let any = f64::from_bits(bits).abs();
            if any.is_finite() && any <= MAX_AMOUNT {
                proptest::prop_assert_eq!(cents_from_number(any), display(any));
            }
            proptest::prop_assert_eq!(cents_from_number(small), display(small));
            let literal = cents as f64 / 1000.0;
            proptest::prop_assert_eq!(cents_from_number(literal), display(literal));
        }
    }
}
