//! Korean withholding tax on an interest payout.

use super::types::{Currency, Minor, TaxProfile};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Withholding {
    pub income_tax: Minor,
    pub local_tax: Minor,
    pub rural_tax: Minor,
}

impl Withholding {
    pub fn total(&self) -> Minor {
        Minor(self.income_tax.0 + self.local_tax.0 + self.rural_tax.0)
    }
}

/// `amount × num / den`, rounded DOWN to a multiple of `step` (truncation: all
/// inputs are non-negative, so integer division floors).
fn truncated(amount: i64, num: i64, den: i64, step: i64) -> Minor {
    debug_assert!(amount >= 0 && num >= 0 && den > 0 && step > 0);
    let exact_floor = (amount as i128 * num as i128) / (den as i128 * step as i128);
    Minor((exact_floor * step as i128) as i64)
}

/// Withholding on `gross` for `profile`:
/// - standard: income tax 14% of gross, local tax 10% of the income tax;
/// - preferential: income tax 9% of gross, rural special tax 0.5% of gross;
/// - exempt: nothing.
///
/// Every component is truncated to the currency's tax step (10 won for KRW).
pub fn withhold(gross: Minor, profile: TaxProfile, currency: Currency) -> Withholding {
    assert!(gross.0 >= 0, "gross must be non-negative");
    let step = currency.tax_step_minor();
    let w = match profile {
        TaxProfile::Standard => {
            let income_tax = truncated(gross.0, 14, 100, step);
            let local_tax = truncated(income_tax.0, 10, 100, step);
            Withholding {
                income_tax,
                local_tax,
                rural_tax: Minor(0),
            }
        }
        TaxProfile::Preferential => Withholding {
            income_tax: truncated(gross.0, 9, 100, step),
            local_tax: Minor(0),
            rural_tax: truncated(gross.0, 5, 1000, step),
        },
        TaxProfile::Exempt => Withholding {
            income_tax: Minor(0),
            local_tax: Minor(0),
            rural_tax: Minor(0),
        },
    };
    // Paired assertion with the database CHECK constraints.
    assert!(w.total().0 <= gross.0, "taxes exceed gross");
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn std(g: i64) -> (i64, i64, i64) {
        let w = withhold(Minor(g), TaxProfile::Standard, Currency::KRW);
        (w.income_tax.0, w.local_tax.0, g - w.total().0)
    }

    #[test]
    fn public_examples() {
        assert_eq!(std(10), (0, 0, 10));
        assert_eq!(std(109), (10, 0, 99));
        assert_eq!(std(2_739), (380, 30, 2_329));
        assert_eq!(std(5_479), (760, 70, 4_649));
    }

    #[test]
    fn preferential_and_exempt() {
        let w = withhold(Minor(10_000), TaxProfile::Preferential, Currency::KRW);
        assert_eq!((w.income_tax.0, w.local_tax.0, w.rural_tax.0), (900, 0, 50));
        let w = withhold(Minor(10_000), TaxProfile::Exempt, Currency::KRW);
        assert_eq!(w.total().0, 0);
    }
}
