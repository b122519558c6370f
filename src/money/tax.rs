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

/// Which tax a [`TaxLine`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaxKind {
    Income,
    Local,
    Rural,
}

impl TaxKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaxKind::Income => "income_tax",
            TaxKind::Local => "local_tax",
            TaxKind::Rural => "rural_tax",
        }
    }
}

/// One tax of a payout: `amount = base × rate_num / rate_den`, truncated
/// (rounded down) to a multiple of `step` minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaxLine {
    pub kind: TaxKind,
    /// `gross` for income and rural tax, the income tax for local tax.
    pub base: Minor,
    pub rate_num: i64,
    pub rate_den: i64,
    pub step: i64,
    pub amount: Minor,
}

fn line(kind: TaxKind, base: Minor, rate_num: i64, rate_den: i64, step: i64) -> TaxLine {
    TaxLine {
        kind,
        base,
        rate_num,
        rate_den,
        step,
        amount: truncated(base.0, rate_num, rate_den, step),
    }
}

/// The tax lines on `gross` for `profile` (what [`withhold`] adds up):
/// - standard: income tax 14% of gross, local tax 10% of the income tax;
/// - preferential: income tax 9% of gross, rural special tax 0.5% of gross;
/// - exempt: none.
///
/// Every line is truncated to the currency's tax step (10 won for KRW).
pub fn tax_lines(gross: Minor, profile: TaxProfile, currency: Currency) -> Vec<TaxLine> {
    assert!(gross.0 >= 0, "gross must be non-negative");
    let step = currency.tax_step_minor();
    match profile {
        TaxProfile::Standard => {
            let income = line(TaxKind::Income, gross, 14, 100, step);
            let local = line(TaxKind::Local, income.amount, 10, 100, step);
            vec![income, local]
        }
        TaxProfile::Preferential => vec![
            line(TaxKind::Income, gross, 9, 100, step),
            line(TaxKind::Rural, gross, 5, 1000, step),
        ],
        TaxProfile::Exempt => Vec::new(),
    }
}

/// Withholding on `gross` for `profile`: the sum of its [`tax_lines`] per kind.
pub fn withhold(gross: Minor, profile: TaxProfile, currency: Currency) -> Withholding {
    let mut w = Withholding {
        income_tax: Minor(0),
        local_tax: Minor(0),
        rural_tax: Minor(0),
    };
    for l in tax_lines(gross, profile, currency) {
        let slot = match l.kind {
            TaxKind::Income => &mut w.income_tax,
            TaxKind::Local => &mut w.local_tax,
            TaxKind::Rural => &mut w.rural_tax,
        };
        *slot = l.amount;
    }
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
