//! A load generator for one node: N concurrent flagd clients over C HTTP/2 connections, closed
//! loop (as fast as answers come: saturation) or open loop at a fixed rate (latency at a given
//! load, measured from each request's scheduled start so a stall is not hidden; paced by a spin,
//! not a timer: see `open_loop`).
//!
//! The experiment workload evaluates a flag that has a running experiment (every evaluation is an
//! exposure, the first of each user a new one) and follows a share of the evaluations with a
//! `Track` of the same user, so the cost of experiments can be read against a plain flag.

use std::time::{Duration, Instant};

use bunting_proto::bunting::v1::TrackRequest;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use bunting_proto::flagd::evaluation::v2::service_client::ServiceClient;
use bunting_proto::flagd::evaluation::v2::{
    ResolveAllRequest, ResolveBooleanRequest, ResolveStringRequest,
};
use prost_types::{Struct, Value, value::Kind};
use tonic::transport::Endpoint;

// Every request carries the configured token (or none), like any other client's.
use bunting_node::auth::client::{AuthChannel as Channel, Bearer};

mod open_loop;
mod setup;
mod track_plan;

pub use setup::{FLAG_SET, SetupConfig, prepare};
pub use track_plan::{BadTrackRatio, TrackPlan};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `ResolveBoolean` of one flag per request.
    Single,
    /// `ResolveAll`: every flag of the set per request.
    Bulk,
    /// `ResolveString` of one (50/50 string) flag per request, a share of them followed by a
    /// `Track` of the same user.
    Experiment,
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
    /// Requests per second in all; `None` runs closed loop (saturation). Open loop is paced by
    /// a spin on one task (a whole CPU), and `concurrency` caps its requests in flight.
    pub rate: Option<f64>,
    /// Distinct targeting keys to cycle through.
    pub users: u32,
    /// The share of evaluations followed by a `Track` (experiment workload only; 0 sends none).
    pub track_ratio: f64,
    /// Send through the shard-aware `bunting-client` (each request to its key's owner) instead
    /// of plain flagd clients connected to `target` (which forward what they do not own).
    pub routed: bool,
    /// The tracked event's name (a metric of the experiment must read it for it to count).
    pub event: String,
    /// The token every request carries (none when evaluation is open).
    pub bearer: Bearer,
}

#[derive(Debug, Clone)]
pub struct LoadReport {
    pub requests: u64,
    pub errors: u64,
    pub flags_per_request: u64,
    pub elapsed: Duration,
    /// Sorted latencies in microseconds.
    latencies_us: Vec<u32>,
    /// The tracks sent, for the experiment workload with a track ratio above 0.
    pub tracks: Option<TrackReport>,
}

/// The `Track` calls of an experiment run, counted apart from the evaluations.
#[derive(Debug, Clone, Default)]
pub struct TrackReport {
    pub tracks: u64,
    pub errors: u64,
    /// Tracks answered without counting toward any experiment. Each follows an evaluation of the
    /// same user, so on a flag with a running experiment this means an exposure went missing.
    pub uncounted: u64,
    pub ratio: f64,
    elapsed: Duration,
    /// Sorted latencies in microseconds.
    latencies_us: Vec<u32>,
}

impl TrackReport {
    pub fn per_second(&self) -> f64 {
        self.tracks as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latencies_us, q)
    }
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
    #[error("the first Track failed, so the run would measure nothing: {0}")]
    ProbeTrack(tonic::Status),
    #[error(
        "a Track of event {event:?} after evaluating flag {flag:?} counted toward no experiment: \
         is an experiment with a metric on {event:?} running on {flag:?}? (--track-ratio 0 \
         measures a flag without one)"
    )]
    NotCounting { flag: String, event: String },
    #[error(transparent)]
    TrackRatio(#[from] BadTrackRatio),
    #[error("--routed: {0}")]
    Routed(String),
    #[error("setup: {call} failed: {status}")]
    Setup {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("setup: experiment {id:?} is {state}, not running, so it cannot be started ({start})")]
    ExperimentNotRunning {
        id: String,
        state: String,
        start: tonic::Status,
    },
    #[error("setup: not ready after {waited:?}: {what}")]
    NotReady { what: String, waited: Duration },
}

fn quantile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted_us[rank.min(sorted_us.len() - 1)]) / 1000.0
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
        quantile_ms(&self.latencies_us, q)
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
        )?;
        if let Some(t) = &self.tracks {
            write!(
                f,
                "\ntracks={} track_errors={} uncounted={} ratio={} throughput={:.0} tracks/s\n\
                 track latency p50={:.3}ms p95={:.3}ms p99={:.3}ms p99.9={:.3}ms max={:.3}ms",
                t.tracks,
                t.errors,
                t.uncounted,
                t.ratio,
                t.per_second(),
                t.quantile_ms(0.50),
                t.quantile_ms(0.95),
                t.quantile_ms(0.99),
                t.quantile_ms(0.999),
                t.quantile_ms(1.0)
            )?;
        }
        Ok(())
    }
}

fn user_key(user: u32) -> String {
    format!("user-{user}")
}

fn context(user: u32) -> Struct {
    context_for(&user_key(user))
}

fn context_for(key: &str) -> Struct {
    let mut fields = std::collections::BTreeMap::new();
    let text = |s: String| Value {
        kind: Some(Kind::StringValue(s)),
    };
    fields.insert("targetingKey".to_owned(), text(key.to_owned()));
    fields.insert("email".to_owned(), text(format!("{key}@example.com")));
    fields.insert("country".to_owned(), text("NZ".to_owned()));
    Struct { fields }
}

#[derive(Debug, Default)]
struct WorkerResult {
    requests: u64,
    errors: u64,
    flags: u64,
    latencies_us: Vec<u32>,
    tracks: TrackReport,
}

/// Sends one `Track` of `user`'s event; `Ok(whether it counted toward an experiment)`.
async fn track(
    client: &mut ExperimentsClient<Channel>,
    event: &str,
    user: u32,
) -> Result<bool, tonic::Status> {
    client
        .track(TrackRequest {
            targeting_key: user_key(user),
            event: event.to_owned(),
            value: 1.0,
            flag_set_id: None,
        })
        .await
        .map(|r| !r.into_inner().counted.is_empty())
}

async fn connect(target: &str, bearer: &Bearer) -> Result<Channel, LoadError> {
    let connect_error = |source| LoadError::Connect {
        target: target.to_owned(),
        source,
    };
    Endpoint::from_shared(format!("http://{target}"))
        .map_err(connect_error)?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(connect_error)
        .map(|channel| bearer.clone().wrap(channel))
}

/// Where a worker's evaluations go.
#[derive(Debug, Clone)]
enum Sender {
    /// A flagd client on one connection to the target node.
    Direct(ServiceClient<Channel>),
    /// The shard-aware client: each request to its key's owner.
    Routed(std::sync::Arc<bunting_client::Client>),
}

/// Issues one request; `Ok(flags evaluated)`.
async fn call(
    sender: &mut Sender,
    workload: Workload,
    flag: &str,
    user: u32,
) -> Result<u64, tonic::Status> {
    let client = match sender {
        Sender::Direct(client) => client,
        Sender::Routed(client) => return call_routed(client, workload, flag, user).await,
    };
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
        Workload::Experiment => client
            .resolve_string(ResolveStringRequest {
                flag_key: flag.to_owned(),
                context: Some(context(user)),
            })
            .await
            .map(|_| 1),
    }
}

/// The same requests through the shard-aware client (single and bulk; `run` refuses the
/// experiment workload, whose `Track` the client does not send).
async fn call_routed(
    client: &bunting_client::Client,
    workload: Workload,
    flag: &str,
    user: u32,
) -> Result<u64, tonic::Status> {
    let key = user_key(user);
    let context = bunting_client::EvaluationContext::new(key.clone())
        .with("email", format!("{key}@example.com"))
        .with("country", "NZ");
    let failed = |e: bunting_client::ClientError| tonic::Status::unknown(e.to_string());
    match workload {
        Workload::Single | Workload::Experiment => client
            .resolve_boolean(flag, &context)
            .await
            .map(|_| 1)
            .map_err(failed),
        Workload::Bulk => client
            .resolve_all(&context)
            .await
            .map(|all| all.flags.len() as u64)
            .map_err(failed),
    }
}

pub async fn run(config: LoadConfig) -> Result<LoadReport, LoadError> {
    if config.routed && config.workload == Workload::Experiment {
        return Err(LoadError::Routed(
            "the experiment workload sends Track, which the shard-aware client does not; use \
             single or bulk"
                .to_owned(),
        ));
    }
    let routed = match config.routed {
        true => Some(std::sync::Arc::new(
            bunting_client::Client::connect(bunting_client::ClientConfig {
                token: config.bearer.client_token(),
                ..bunting_client::ClientConfig::new([config.target.clone()])
            })
            .await
            .map_err(|e| LoadError::Routed(e.to_string()))?,
        )),
        false => None,
    };
    let sender_for = |channel: Channel| match &routed {
        Some(client) => Sender::Routed(client.clone()),
        None => Sender::Direct(ServiceClient::new(channel)),
    };
    // Tracks belong to the experiment workload only; the others never send one.
    let plan = TrackPlan::new(if config.workload == Workload::Experiment {
        config.track_ratio
    } else {
        0.0
    })?;
    let mut channels = Vec::with_capacity(config.connections.max(1));
    for _ in 0..config.connections.max(1) {
        channels.push(connect(&config.target, &config.bearer).await?);
    }
    let mut probe = sender_for(channels[0].clone());
    let flags_per_request = call(&mut probe, config.workload, &config.flag, 0)
        .await
        .map_err(LoadError::Probe)?;
    if plan.ratio() > 0.0 {
        // A load whose tracks count toward nothing would measure the cheap path of Track and
        // none of the exposure work, so refuse it up front.
        let counted = track(
            &mut ExperimentsClient::new(channels[0].clone()),
            &config.event,
            0,
        )
        .await
        .map_err(LoadError::ProbeTrack)?;
        if !counted {
            return Err(LoadError::NotCounting {
                flag: config.flag.clone(),
                event: config.event.clone(),
            });
        }
    }

    let start = Instant::now() + config.warm_up;
    let end = start + config.duration;
    let results = match config.rate {
        Some(rate) => {
            let lanes = channels
                .iter()
                .map(|channel| open_loop::Lane {
                    sender: sender_for(channel.clone()),
                    tracker: ExperimentsClient::new(channel.clone()),
                })
                .collect();
            let schedule = open_loop::Schedule {
                rate,
                start,
                end,
                max_in_flight: config.concurrency,
                users: config.users,
            };
            let flag: std::sync::Arc<str> = config.flag.as_str().into();
            let event: std::sync::Arc<str> = config.event.as_str().into();
            vec![open_loop::run(schedule, lanes, config.workload, flag, event, plan).await]
        }
        None => closed_loop(&config, &channels, sender_for, plan, start, end).await,
    };
    let mut report = LoadReport {
        requests: 0,
        errors: 0,
        flags_per_request,
        elapsed: config.duration,
        latencies_us: Vec::new(),
        tracks: None,
    };
    let mut tracks = TrackReport {
        ratio: plan.ratio(),
        elapsed: config.duration,
        ..TrackReport::default()
    };
    for r in results {
        report.requests += r.requests;
        report.errors += r.errors;
        report.latencies_us.extend(r.latencies_us);
        tracks.tracks += r.tracks.tracks;
        tracks.errors += r.tracks.errors;
        tracks.uncounted += r.tracks.uncounted;
        tracks.latencies_us.extend(r.tracks.latencies_us);
    }
    report.latencies_us.sort_unstable();
    // A run without tracking (the baseline) reports no track figures rather than a row of zeros.
    if plan.ratio() > 0.0 {
        tracks.latencies_us.sort_unstable();
        report.tracks = Some(tracks);
    }
    Ok(report)
}

/// `concurrency` workers, each sending its next request as soon as the last is answered.
async fn closed_loop(
    config: &LoadConfig,
    channels: &[Channel],
    sender_for: impl Fn(Channel) -> Sender,
    plan: TrackPlan,
    start: Instant,
    end: Instant,
) -> Vec<WorkerResult> {
    let workers = config.concurrency.max(1);
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let channel = channels[w % channels.len()].clone();
        let mut client = sender_for(channel.clone());
        let mut tracker = ExperimentsClient::new(channel);
        let flag = config.flag.clone();
        let event = config.event.clone();
        let workload = config.workload;
        let users = config.users.max(1);
        tasks.push(tokio::spawn(async move {
            let mut result = WorkerResult::default();
            // Each worker starts its track schedule at its own offset, so workers do not all
            // track on the same beat.
            let mut sent = w as u64;
            let mut n: u32 = u32::try_from(w).unwrap_or(0).wrapping_mul(7919);
            loop {
                let scheduled = Instant::now();
                if scheduled >= end {
                    break;
                }
                n = n.wrapping_add(1);
                let outcome = call(&mut client, workload, &flag, n % users).await;
                let done = Instant::now();
                let evaluated = outcome.is_ok();
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
                let tracks = plan.tracks(sent);
                sent = sent.wrapping_add(1);
                // A failed evaluation exposed nobody, so its track would count as uncounted and
                // blame exposures for an evaluation error already reported.
                if tracks && evaluated {
                    let began = Instant::now();
                    let outcome = track(&mut tracker, &event, n % users).await;
                    let done = Instant::now();
                    if began >= start && began < end {
                        let t = &mut result.tracks;
                        t.tracks += 1;
                        match outcome {
                            Ok(true) => {}
                            Ok(false) => t.uncounted += 1,
                            Err(_) => t.errors += 1,
                        }
                        let us = done.duration_since(began).as_micros();
                        t.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                }
            }
            result
        }));
    }
    let mut results = Vec::with_capacity(workers);
    for task in tasks {
        if let Ok(r) = task.await {
            results.push(r);
        }
    }
    results
}
