//! Medians and spreads of a handful of samples.

/// Median, quartiles and range of a set of samples.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            n: sorted.len(),
            median: quantile(&sorted, 0.5),
            q1: quantile(&sorted, 0.25),
            q3: quantile(&sorted, 0.75),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median, self.min, self.max
        )
    }
}

/// Linear interpolation between closest ranks, on sorted input.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    let weight = position - below as f64;
    sorted[below] * (1.0 - weight) + sorted[above] * weight
}

pub fn median(samples: &[f64]) -> Option<f64> {
    Summary::of(samples).map(|s| s.median)
}

/// The geometric mean of a set of ratios and its 95 % confidence interval (Student's t on
/// the logarithms).
#[derive(Clone, Copy, Debug)]
pub struct RatioInterval {
    /// Ratios used: the finite, positive ones.
    pub n: usize,
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

impl RatioInterval {
    pub fn of(ratios: &[f64]) -> Option<Self> {
        let logs: Vec<f64> = ratios
            .iter()
            .filter(|r| r.is_finite() && **r > 0.0)
            .map(|r| r.ln())
            .collect();
        let n = logs.len();
        if n < 2 {
            return None;
        }
        let mean = logs.iter().sum::<f64>() / n as f64;
        let variance = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let half = t95(n - 1) * (variance / n as f64).sqrt();
        Some(Self {
            n,
            mean: mean.exp(),
            low: (mean - half).exp(),
            high: (mean + half).exp(),
        })
    }

    /// `1.012× (1.004–1.020)`.
    pub fn show(&self) -> String {
        format!("{:.3}× ({:.3}–{:.3})", self.mean, self.low, self.high)
    }
}

/// The two-sided 95 % quantile of Student's t with `df` degrees of freedom: the table up
/// to 5, where the expansion below is too low (by 24 % at 1), then the Cornish–Fisher
/// expansion around the normal quantile, within 0.2 % of the table from there up.
fn t95(df: usize) -> f64 {
    const TABLE: [f64; 5] = [12.706, 4.303, 3.182, 2.776, 2.571];
    if let Some(&t) = df.checked_sub(1).and_then(|i| TABLE.get(i)) {
        return t;
    }
    let df = df as f64;
    const Z: f64 = 1.959_964;
    let z3 = Z.powi(3);
    let z5 = Z.powi(5);
    let z7 = Z.powi(7);
    Z + (z3 + Z) / (4.0 * df)
        + (5.0 * z5 + 16.0 * z3 + 3.0 * Z) / (96.0 * df.powi(2))
        + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * Z) / (384.0 * df.powi(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t95_matches_the_table() {
        for (df, table) in [
            (1, 12.706),
            (4, 2.776),
            (6, 2.447),
            (10, 2.228),
            (30, 2.042),
            (200, 1.972),
        ] {
            assert!(
                (t95(df) - table).abs() / table < 0.003,
                "df {df}: {}",
                t95(df)
            );
        }
    }

    #[test]
    fn interval_of_constant_ratios_is_the_ratio() {
        let interval = RatioInterval::of(&[1.02; 10]).expect("ten ratios");
        assert!((interval.mean - 1.02).abs() < 1e-12);
        assert!((interval.high - interval.low).abs() < 1e-12);
    }

    #[test]
    fn interval_narrows_with_more_blocks() {
        let noisy: Vec<f64> = (0..400)
            .map(|i| if i % 2 == 0 { 0.95 } else { 1.07 })
            .collect();
        let few = RatioInterval::of(&noisy[..20]).expect("20 ratios");
        let many = RatioInterval::of(&noisy).expect("400 ratios");
        assert!(many.high - many.low < (few.high - few.low) / 4.0);
        assert!(many.low < 1.01 && many.high > 1.0);
    }
}
