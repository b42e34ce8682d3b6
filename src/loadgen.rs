//! A load generator for one node: N concurrent flagd clients over C HTTP/2 connections, closed
//! loop (as fast as answers come: saturation) or open loop at a fixed rate (latency at a given
//! load, measured from each request's scheduled start so a stall is not hidden).

use std::time::{Duration, Instant};

use bunting_proto::flagd::evaluation::v2::service_client::ServiceClient;
use bunting_proto::flagd::evaluation::v2::{ResolveAllRequest, ResolveBooleanRequest};
use prost_types::{Struct, Value, value::Kind};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `ResolveBoolean` of one flag per request.
    Single,
    /// `ResolveAll`: every flag of the set per request.
    Bulk,
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: String,
    pub workload: Workload,
    pub flag: String,
    pub connections: usize,
    pub concurrency: usize,
    pub duration: Duration,
    pub warm_up: Duration,
    /// Requests per second across all workers; `None` runs closed loop (saturation).
    pub rate: Option<f64>,
    /// Distinct targeting keys to cycle through.
    pub users: u32,
}

#[derive(Debug, Clone)]
pub struct LoadReport {
    pub requests: u64,
    pub errors: u64,
    pub flags_per_request: u64,
    pub elapsed: Duration,
    /// Sorted latencies in microseconds.
    latencies_us: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("target {target:?}: {source}")]
    Connect {
        target: String,
        source: tonic::transport::Error,
    },
    #[error("the first request failed, so the run would measure nothing: {0}")]
    Probe(tonic::Status),
}

impl LoadReport {
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn evaluations_per_second(&self) -> f64 {
        self.throughput() * self.flags_per_request as f64
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let rank = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[rank.min(self.latencies_us.len() - 1)]) / 1000.0
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "requests={} errors={} elapsed={:.2}s throughput={:.0} req/s evaluations={:.0}/s",
            self.requests,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.evaluations_per_second()
        )?;
        write!(
            f,
            "latency p50={:.3}ms p95={:.3}ms p99={:.3}ms p99.9={:.3}ms max={:.3}ms",
            self.quantile_ms(0.50),
            self.quantile_ms(0.95),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.quantile_ms(1.0)
        )
    }
}

fn context(user: u32) -> Struct {
    let mut fields = std::collections::BTreeMap::new();
    let text = |s: String| Value {
        kind: Some(Kind::StringValue(s)),
    };
    fields.insert("targetingKey".to_owned(), text(format!("user-{user}")));
    fields.insert("email".to_owned(), text(format!("user-{user}@example.com")));
    fields.insert("country".to_owned(), text("NZ".to_owned()));
    Struct { fields }
}

#[derive(Debug)]
struct WorkerResult {
    requests: u64,
    errors: u64,
    flags: u64,
    latencies_us: Vec<u32>,
}

/// Issues one request; `Ok(flags evaluated)`.
async fn call(
    client: &mut ServiceClient<Channel>,
    workload: Workload,
    flag: &str,
    user: u32,
) -> Result<u64, tonic::Status> {
    match workload {
        Workload::Single => client
            .resolve_boolean(ResolveBooleanRequest {
                flag_key: flag.to_owned(),
                context: Some(context(user)),
            })
            .await
            .map(|_| 1),
        Workload::Bulk => client
            .resolve_all(ResolveAllRequest {
                context: Some(context(user)),
            })
            .await
            .map(|r| r.into_inner().flags.len() as u64),
    }
}

pub async fn run(config: LoadConfig) -> Result<LoadReport, LoadError> {
    let endpoint = Endpoint::from_shared(format!("http://{}", config.target))
        .map_err(|source| LoadError::Connect {
            target: config.target.clone(),
            source,
        })?
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(config.connections.max(1));
    for _ in 0..config.connections.max(1) {
        channels.push(
            endpoint
                .connect()
                .await
                .map_err(|source| LoadError::Connect {
                    target: config.target.clone(),
                    source,
                })?,
        );
    }
    let mut probe = ServiceClient::new(channels[0].clone());
    let flags_per_request = call(&mut probe, config.workload, &config.flag, 0)
        .await
        .map_err(LoadError::Probe)?;

    let workers = config.concurrency.max(1);
    let start = Instant::now() + config.warm_up;
    let end = start + config.duration;
    // Each worker's share of the rate, as the gap between its requests.
    let gap = config
        .rate
        .map(|rate| Duration::from_secs_f64(workers as f64 / rate.max(1.0)));
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let mut client = ServiceClient::new(channels[w % channels.len()].clone());
        let flag = config.flag.clone();
        let workload = config.workload;
        let users = config.users.max(1);
        tasks.push(tokio::spawn(async move {
            let mut result = WorkerResult {
                requests: 0,
                errors: 0,
                flags: 0,
                latencies_us: Vec::new(),
            };
            // Spread open-loop workers' schedules across one gap so they do not fire together.
            let mut next = Instant::now()
                + gap.map_or(Duration::ZERO, |g| g.mul_f64(w as f64 / workers as f64));
            let mut n: u32 = u32::try_from(w).unwrap_or(0).wrapping_mul(7919);
            loop {
                if gap.is_some() {
                    tokio::time::sleep_until(next.into()).await;
                }
                let scheduled = if gap.is_some() { next } else { Instant::now() };
                if scheduled >= end {
                    break;
                }
                n = n.wrapping_add(1);
                let outcome = call(&mut client, workload, &flag, n % users).await;
                let done = Instant::now();
                if scheduled >= start {
                    result.requests += 1;
                    match outcome {
                        Ok(flags) => result.flags += flags,
                        Err(_) => result.errors += 1,
                    }
                    let us = done.duration_since(scheduled).as_micros();
                    result
                        .latencies_us
                        .push(u32::try_from(us).unwrap_or(u32::MAX));
                }
                if let Some(gap) = gap {
                    next += gap;
                }
            }
            result
        }));
    }
    let mut report = LoadReport {
        requests: 0,
        errors: 0,
        flags_per_request,
        elapsed: config.duration,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        if let Ok(r) = task.await {
            report.requests += r.requests;
            report.errors += r.errors;
            report.latencies_us.extend(r.latencies_us);
        }
    }
    report.latencies_us.sort_unstable();
    Ok(report)
}
