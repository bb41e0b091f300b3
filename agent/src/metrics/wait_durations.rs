//! `exitwatch_blocked_wait_duration_seconds`: a histogram the kernel keeps in log2 buckets,
//! exposed as read at scrape time rather than re-observed.
use std::sync::{Arc, Mutex};

use prometheus::{
    core::{Collector, Desc},
    proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::probes::WaitHistogram;

#[derive(Clone)]
pub struct WaitDurations {
    desc: Desc,
    latest: Arc<Mutex<Vec<WaitHistogram>>>,
}

impl WaitDurations {
    pub fn new() -> prometheus::Result<Self> {
        Ok(Self {
            desc: Desc::new(
                "exitwatch_blocked_wait_duration_seconds".into(),
                "Completed sleeps in tracked syscalls, by syscall (kernel log2 buckets); \
                 counted only with --wait-histogram."
                    .into(),
                vec!["syscall".into()],
                Default::default(),
            )?,
            latest: Default::default(),
        })
    }

    pub fn set(&self, waits: Vec<WaitHistogram>) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = waits;
    }
}

impl Collector for WaitDurations {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let metrics = latest
            .iter()
            .map(|wait| {
                let mut cumulative = 0;
                // The kernel's last bucket is open-ended: it is the implicit +Inf.
                let bounded = wait.buckets.len().saturating_sub(1);
                let buckets = wait.buckets[..bounded]
                    .iter()
                    .enumerate()
                    .map(|(b, count)| {
                        cumulative += count;
                        let mut bucket = Bucket::default();
                        bucket.set_cumulative_count(cumulative);
                        bucket.set_upper_bound((1u64 << b) as f64 * 1e-6);
                        bucket
                    })
                    .collect();
                let mut histogram = Histogram::default();
                histogram.set_bucket(buckets);
                histogram.set_sample_count(wait.buckets.iter().sum());
                histogram.set_sample_sum(wait.sum_ns as f64 / 1e9);
                let mut label = LabelPair::default();
                label.set_name("syscall".into());
                label.set_value(wait.class.into());
                let mut metric = Metric::default();
                metric.set_label(vec![label]);
                metric.set_histogram(histogram);
                metric
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        family.set_metric(metrics);
        vec![family]
    }
}
