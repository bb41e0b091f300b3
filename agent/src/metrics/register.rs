//! Building a metric and registering it are one step, so no list of collectors has to be
//! kept in step with the fields that hold them.
use prometheus::{
    core::{Collector, MetricVec, MetricVecBuilder},
    Registry,
};

/// Registers `collector` and hands it back for the caller to keep.
pub fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// Creates the series of a one-label family for each of `values`, so every one is
/// scraped (at 0) from the start instead of appearing with its first event.
pub fn with_series<'a, T: MetricVecBuilder>(
    family: MetricVec<T>,
    values: impl IntoIterator<Item = &'a str>,
) -> MetricVec<T> {
    for value in values {
        family.with_label_values(&[value]);
    }
    family
}
