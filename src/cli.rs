//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "bunting",
    version,
    about = "Feature flags and experiments, speaking flagd's protocols"
)]
pub struct Cli {
    /// The API token client commands send (`authorization: Bearer <token>`). Default: the
    /// environment variable BUNTING_TOKEN, which keeps it out of the process list.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: flagd's evaluation (v1, v2) and sync protocols on one gRPC port, Prometheus
    /// metrics on another. With no arguments it serves cluster-config/flags.json on port 8013.
    Serve {
        /// A node config file (TOML); see cluster-config/node.toml.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Serve this flag file instead of the configured source.
        #[arg(long, value_name = "FILE")]
        flags: Option<PathBuf>,
        /// The gRPC port (overrides the config).
        #[arg(long, value_name = "N")]
        port: Option<u16>,
        /// The metrics port (overrides the config).
        #[arg(long, value_name = "N")]
        metrics_port: Option<u16>,
        /// The HTTP edge's port: OFREP, event streams, definitions, health (overrides the
        /// config; default 8016).
        #[arg(long, value_name = "N")]
        http_port: Option<u16>,
        /// A flag file with flags that cannot be compiled: `refuse` it (the default; the last good
        /// flags keep serving) or `serve` the rest, each broken flag answering PARSE_ERROR as
        /// flagd does (overrides [flags] broken_flags).
        #[arg(long, value_enum, value_name = "WHAT")]
        broken_flags: Option<BrokenFlagsArg>,
    },
    /// Resolve one flag from a flag file and print the resolution as JSON.
    ///
    /// Exit status: 0 when the flag resolved, 1 when the resolution is an error (the JSON says
    /// which), 2 when the file or the arguments are unusable.
    Eval {
        /// A flagd flag-definition file.
        #[arg(long, value_name = "FILE")]
        flags: PathBuf,
        /// The flag key.
        #[arg(long, value_name = "KEY")]
        flag: String,
        /// The evaluation context as a JSON object, e.g. '{"targetingKey": "user-1"}'.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        context: String,
        /// The resolved type; `any` returns whatever the variant holds.
        #[arg(long = "type", value_enum, default_value_t = TypeArg::Any)]
        flag_type: TypeArg,
        #[command(flatten)]
        options: CompileArgs,
    },
    /// Load-test a running node with concurrent flagd clients; prints throughput and latency
    /// quantiles. Without --rate it runs closed loop (saturation); with --rate, open loop.
    Bench {
        /// The node's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8013")]
        target: String,
        /// `single`: ResolveBoolean of --flag; `bulk`: ResolveAll (every flag of the set);
        /// `experiment`: ResolveString of --flag (which should have a running experiment), a
        /// --track-ratio share of them followed by a Track of --event for the same user.
        #[arg(long, value_enum, default_value_t = WorkloadArg::Single)]
        workload: WorkloadArg,
        /// The boolean flag for `single`; the string flag for `experiment`.
        #[arg(long, default_value = "welcome-banner")]
        flag: String,
        /// HTTP/2 connections to spread the clients over.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Concurrent clients (requests in flight).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds to measure, after one second of warm-up.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Requests per second in all (open loop: paced by a busy-wait, so pin the generator to
        /// a core of its own; --concurrency then caps the requests in flight).
        #[arg(long)]
        rate: Option<f64>,
        /// Distinct targeting keys to cycle through.
        #[arg(long, default_value_t = 100_000)]
        users: u32,
        /// `experiment` only: the share of evaluations followed by a Track (0 to 1; 0 measures
        /// the same requests without tracking, e.g. on a flag without an experiment).
        #[arg(long, default_value_t = 0.1, value_name = "FRACTION")]
        track_ratio: f64,
        /// `experiment` only: the tracked event's name.
        #[arg(long, default_value = "purchase")]
        event: String,
        /// Send through the shard-aware client (each request to its key's owner, learnt from
        /// --target's Topology) instead of flagd clients on --target (which forward what they do
        /// not own). single and bulk only.
        #[arg(long)]
        routed: bool,
        /// Instead of a load: create flag set `default` and a 50/50 string --flag through the
        /// Admin API, if missing, and wait until the node serves it (for scripts).
        #[arg(long, hide = true, conflicts_with = "setup_experiment")]
        setup_flag: bool,
        /// As --setup-flag, plus an experiment `<flag>-experiment` on it with metrics on --event,
        /// started, and wait until the node counts its tracks (for scripts).
        #[arg(long, hide = true)]
        setup_experiment: bool,
    },
    /// Inspect or operate a running cluster through any of its nodes.
    Cluster {
        /// Any node's gRPC address.
        #[arg(long, global = true, default_value = "127.0.0.1:8013")]
        node: String,
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Ask a running node or cluster what it serves one subject, through the shard-aware client
    /// (the subject's owner answers). Prints JSON: the owner, the map epoch, the flags.
    Resolve {
        /// Any node's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8013")]
        node: String,
        /// One flag; without it, every flag of the default set.
        #[arg(long)]
        flag: Option<String>,
        /// The evaluation context as a JSON object, e.g. '{"targetingKey": "user-1"}'.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        context: String,
    },
    /// Manage the flags of a PostgreSQL-backed node or cluster through its admin API: push a file,
    /// list, get, delete, read a set's history, roll a set back to an earlier version.
    Flags {
        #[command(subcommand)]
        action: FlagsAction,
    },
    /// Read experiments from a running node: results as a table per metric, or the list.
    ///
    /// Exit status: 0 on success, 2 when the node cannot be reached or answers an error.
    Experiment {
        /// Any node's gRPC address.
        #[arg(long, global = true, default_value = "127.0.0.1:8013")]
        node: String,
        #[command(subcommand)]
        action: ExperimentAction,
    },
    /// Safe rollouts on a PostgreSQL-backed node or cluster: create one (a ramp of steps watched
    /// by guardrail metrics, rolled back on a regression), read its status, pause, resume, abort.
    ///
    /// Exit status: 0 on success, 2 when the node cannot be reached or answers an error.
    Rollout {
        /// Any node's gRPC address (its admin listener, if it has one).
        #[arg(long, global = true, default_value = "127.0.0.1:8013")]
        node: String,
        #[command(subcommand)]
        action: RolloutAction,
    },
    /// Scheduled changes: a flag definition written at a given time (a rollout start is
    /// scheduled with `bunting rollout create --at`), listed and cancelled.
    ///
    /// Exit status: 0 on success, 2 when the node cannot be reached or answers an error.
    Schedule {
        /// Any node's gRPC address (its admin listener, if it has one).
        #[arg(long, global = true, default_value = "127.0.0.1:8013")]
        node: String,
        #[command(subcommand)]
        action: ScheduleAction,
    },
    /// API tokens: generate a secret locally, or create, list and revoke tokens through a
    /// PostgreSQL-backed node's Tokens API (scope tokens:admin).
    Tokens {
        /// Any node's gRPC address.
        #[arg(long, global = true, default_value = "127.0.0.1:8013")]
        node: String,
        #[command(subcommand)]
        action: TokensAction,
    },
    /// The audit log of a PostgreSQL-backed node or cluster: every change to flag sets and flags,
    /// newest first, one page at a time (`--before` the cursor the previous page printed).
    Audit {
        /// Any node's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8013")]
        node: String,
        /// Only this flag set's changes; without it, every set's (the token must reach all).
        #[arg(long)]
        set: Option<String>,
        /// Entries per page (1 to 1000).
        #[arg(long, default_value_t = 20, value_name = "N",
              value_parser = clap::value_parser!(i32).range(1..=1000))]
        limit: i32,
        /// Only entries older than this id: the cursor a previous page printed.
        #[arg(long, value_name = "CURSOR")]
        before: Option<i64>,
        /// Every entry from the cursor on, following the pages to the oldest.
        #[arg(long)]
        all: bool,
        /// Print JSON (entries with their before/after definitions, and the next cursor).
        #[arg(long)]
        json: bool,
    },
    /// Check a flag file and report every problem; exit 1 if there is any.
    Validate {
        /// Flag-definition files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Schema to validate against; by default the one the file's `$schema` names, else flagd's.
        #[arg(long, value_enum)]
        schema: Option<SchemaArg>,
        #[command(flatten)]
        options: CompileArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum FlagsAction {
    /// Make flag set SET match a flagd flag file: create missing flags, update changed ones (each
    /// against the version it was read at), leave identical ones alone; with --prune, delete
    /// flags the file does not have. The set is created if missing.
    Push {
        /// A flagd flag file (map form).
        file: PathBuf,
        #[arg(long, default_value = "default")]
        set: String,
        /// Any node's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8013")]
        node: String,
        /// Who makes the change (recorded in the audit log).
        #[arg(long, default_value = "bunting-cli")]
        actor: String,
        #[arg(long)]
        prune: bool,
    },
    /// Without --set: every flag set with its version and flag count. With --set: that set's
    /// flags, each with its version, state and default variant.
    List {
        #[arg(long)]
        set: Option<String>,
        /// Any node's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8013")]
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Print one flag's definition as JSON (flagd's flag format, as `push` takes it).
    Get {
        key: String,
        #[arg(long, default_value = "default")]
        set: String,
        /// Any node's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8013")]
        node: String,
        /// Print the flag's record instead: key, version, update time and definition.
        #[arg(long)]
        json: bool,
    },
    /// Delete one flag (at the version just read, so a concurrent edit is not lost silently).
    Delete {
        key: String,
        #[arg(long, default_value = "default")]
        set: String,
        /// Any node's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8013")]
        node: String,
        /// Who makes the change (recorded in the audit log).
        #[arg(long, default_value = "bunting-cli")]
        actor: String,
    },
    /// A set's audit entries (or one flag's), newest first, with the set version each produced:
    /// the versions `rollback --to-version` takes.
    History {
        /// Only this flag's entries.
        key: Option<String>,
        #[arg(long, default_value = "default")]
        set: String,
        /// Any node's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8013")]
        node: String,
        /// Entries per page (1 to 1000).
        #[arg(long, default_value_t = 20, value_name = "N",
              value_parser = clap::value_parser!(i32).range(1..=1000))]
        limit: i32,
        /// Only entries older than this id: the cursor a previous page printed.
        #[arg(long, value_name = "CURSOR")]
        before: Option<i64>,
        /// Print JSON (entries with their before/after definitions, and the next cursor).
        #[arg(long)]
        json: bool,
    },
    /// Restore a set's flags as they were at version N (rebuilt from the audit log), as one atomic
    /// write: one new version, audited like any other. The set's metadata and evaluators are left
    /// as they are.
    Rollback {
        #[arg(long, default_value = "default")]
        set: String,
        /// The set version to return to (see `flags history`).
        #[arg(long, value_name = "N")]
        to_version: i64,
        /// Any node's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8013")]
        node: String,
        /// Who makes the change (recorded in the audit log).
        #[arg(long, default_value = "bunting-cli")]
        actor: String,
        /// Print what would change and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensAction {
    /// Print a fresh token on standard output, made here with no server: the bootstrap secret
    /// (BUNTING_BOOTSTRAP_TOKEN or [auth] bootstrap_token_file). With --name and --scope, a second
    /// line holds its entry for a file-backed node's [auth] tokens_file (hash only).
    Generate {
        #[arg(long, requires = "scopes")]
        name: Option<String>,
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// A flag set the token may touch (repeat); without any, every set.
        #[arg(long = "set", value_name = "SET")]
        sets: Vec<String>,
    },
    /// Create a token on the node and print it once: store it now, it cannot be shown again.
    Create {
        name: String,
        /// evaluate, sync, track, flags:read, flags:write, experiments:read, experiments:write,
        /// cluster:read, cluster:admin, tokens:admin (repeat).
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
        /// A flag set the token may touch (repeat). Give sets, or --all-sets.
        #[arg(long = "set", value_name = "SET", required_unless_present = "all_sets")]
        sets: Vec<String>,
        #[arg(long, conflicts_with = "sets")]
        all_sets: bool,
        /// The token stops working this many days from now.
        #[arg(long, value_name = "DAYS")]
        expires_in_days: Option<u32>,
    },
    /// Every token: id, name, scopes, flag sets, expiry, revocation. Never a secret.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id (the 16 hex digits after `bnt_`): every node refuses it within a
    /// second.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// Members, their state, the shards each owns, and the shard map epoch.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move every shard off NODE_ID and wait until the cluster has adopted a map without it;
    /// then the node can be stopped without a failure-timeout's worth of forwarded requests.
    Drain {
        /// The node id (as in its `[cluster] node_id`).
        node_id: String,
    },
    /// Return a drained NODE_ID to service: it takes shards again, and this waits until the
    /// cluster has adopted a map that places shards on it. Refused for a node that is not
    /// draining.
    Undrain {
        /// The node id (as in its `[cluster] node_id`).
        node_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExperimentAction {
    /// One experiment's results: users per arm and the sample-ratio check, then per metric each
    /// arm's rate or mean and each treatment's lift over control with its interval, p-values
    /// (decision, Holm, Benjamini–Hochberg) and chance to beat control.
    Results {
        /// The experiment id.
        id: String,
        /// Print the GetExperimentResults response as JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Every experiment: id, flag, state, control and arms. ListExperiments is paged; this
    /// follows the pages to the last one, so nothing is left out (each page is its own read, so
    /// experiments created or changed while it runs may or may not show).
    List {
        /// Print the experiments as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Experiments asked for per request (1 to 1000): fewer means more round trips, not
        /// fewer experiments shown.
        #[arg(long, default_value_t = 1000, value_name = "N",
              value_parser = clap::value_parser!(i32).range(1..=1000))]
        page_size: i32,
    },
    /// Define an experiment on a flag (a draft: nothing counts until it starts). Its arms are the
    /// flag's variants as they are now.
    Create {
        id: String,
        /// The flag the experiment is on.
        #[arg(long)]
        flag: String,
        #[arg(long, default_value = "default")]
        set: String,
        /// The control arm: one of the flag's variants.
        #[arg(long)]
        control: String,
        /// NAME:EVENT:KIND, KIND `conversion` (did the user send EVENT) or `mean` (the per-user
        /// total of EVENT's values); repeat for several metrics.
        #[arg(long = "metric", required = true, value_name = "NAME:EVENT:KIND")]
        metrics: Vec<String>,
        /// ARM=WEIGHT: how the flag's targeting splits users among the arms, for the
        /// sample-ratio check (a 90/10 ramp: `--split off=90 --split on=10`). Name every variant
        /// (0 for one the experiment does not use) or none: without it the split is even.
        #[arg(long = "split", value_name = "ARM=WEIGHT")]
        split: Vec<String>,
        #[command(flatten)]
        analysis: AnalysisArgs,
        #[arg(long, default_value = "bunting-cli")]
        actor: String,
    },
    /// Start counting exposures and conversions.
    Start {
        id: String,
        #[arg(long, default_value = "bunting-cli")]
        actor: String,
    },
    /// Stop counting; results stay readable.
    Stop {
        id: String,
        #[arg(long, default_value = "bunting-cli")]
        actor: String,
    },
    /// Record one event of one user (what an application's Track call does).
    Track {
        /// The user's targeting key.
        user: String,
        event: String,
        #[arg(long, default_value_t = 1.0)]
        value: f64,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct CompileArgs {
    /// How `fractional` hashes: `string` as the flagd server and most providers do (default),
    /// `cbor` as the Python and Rust in-process providers do, or `legacy` (flagd's first float
    /// form). See README, "Fractional bucketing across clients".
    #[arg(long, value_enum, default_value_t = FractionalArg::String)]
    pub fractional: FractionalArg,
}

/// How an experiment's results are judged (experiments.proto, AnalysisSettings); every flag is
/// optional and fixed once the experiment is created. The node checks the combination.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct AnalysisArgs {
    /// The significance level, above 0 and at most 0.5 (default 0.05).
    #[arg(long, value_name = "ALPHA")]
    pub alpha: Option<f64>,
    /// Test only "treatment is greater than control" (frequentist, fixed horizon).
    #[arg(long)]
    pub one_sided: bool,
    /// Sequential testing (always-valid, safe to look any time): default on for a frequentist
    /// two-sided analysis, off otherwise.
    #[arg(long, value_enum, value_name = "ON|OFF")]
    pub sequential: Option<Switch>,
    /// The total users at which the confidence sequence is tightest (default 5000).
    #[arg(long, value_name = "USERS")]
    pub sequential_tuning: Option<f64>,
    /// What decides: p-values (frequentist, the default) or the chance to beat control.
    #[arg(long, value_enum)]
    pub engine: Option<EngineArg>,
    /// MEAN:VARIANCE, a proper Gaussian prior on the relative lift (Bayesian only; GrowthBook's
    /// is 0:0.09). Without it the prior is flat.
    #[arg(long, value_name = "MEAN:VARIANCE")]
    pub prior: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    Frequentist,
    Bayesian,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FractionalArg {
    Cbor,
    String,
    Legacy,
}

impl FractionalArg {
    pub fn mode(self) -> bunting_engine::FractionalMode {
        match self {
            FractionalArg::Cbor => bunting_engine::FractionalMode::Cbor,
            FractionalArg::String => bunting_engine::FractionalMode::String,
            FractionalArg::Legacy => bunting_engine::FractionalMode::LegacyFloat,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BrokenFlagsArg {
    Refuse,
    Serve,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    Single,
    Bulk,
    Experiment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaArg {
    /// flagd's daemon schema: flags as a map or an array.
    Flagd,
    /// The provider schema: flags as a map only.
    Provider,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TypeArg {
    Any,
    Boolean,
    String,
    Integer,
    Float,
    Object,
}

#[derive(Debug, Subcommand)]
pub enum RolloutAction {
    /// Start a rollout now (or, with --at, schedule its start): the flag serves the released
    /// variant to the first step's share of users, and the cluster's controller takes it from
    /// there.
    Create {
        /// 1 to 56 characters of [A-Za-z0-9._-].
        id: String,
        /// The flag to roll out.
        #[arg(long)]
        flag: String,
        #[arg(long, default_value = "default")]
        set: String,
        /// The variant being released.
        #[arg(long)]
        release: String,
        /// The variant it is compared with (what most users get now).
        #[arg(long)]
        baseline: String,
        /// PERCENT:MIN_SECONDS:MIN_USERS, strictly increasing and ending at 100; repeat per step
        /// (`--step 5:600:500 --step 50:600:5000 --step 100:0:0`).
        #[arg(long = "step", required = true, value_name = "PERCENT:SECONDS:USERS")]
        steps: Vec<String>,
        /// NAME:EVENT:KIND:BAD:TOLERANCE: KIND `conversion` or `mean`, BAD the direction that is
        /// a regression (`decrease` or `increase`), TOLERANCE the relative regression tolerated
        /// (0.02 = 2%); repeat for several guardrails.
        #[arg(long = "guardrail", value_name = "NAME:EVENT:KIND:BAD:TOLERANCE")]
        guardrails: Vec<String>,
        /// The sequential test's level, split over the guardrails.
        #[arg(long, default_value_t = 0.05)]
        alpha: f64,
        /// Schedule the start instead: an RFC 3339 time (2030-01-01T09:00:00Z) or +N[smhd] from
        /// now.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        #[arg(long, default_value = "bunting-cli")]
        actor: String,
    },
    /// One rollout: its state and step, each guardrail's estimate, interval and verdict, and
    /// what the controller does next.
    Status {
        id: String,
        /// Print the GetRolloutStatus response as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rollouts by id (at most 1000).
    List {
        /// Only running and paused ones.
        #[arg(long)]
        active: bool,
        #[arg(long)]
        json: bool,
    },
    /// Hold the rollout at its step: the controller neither advances nor rolls it back.
    Pause {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long, default_value = "bunting-cli")]
        actor: String,
    },
    /// Serve the paused step again (a manual edit is overwritten) and restart its clock.
    Resume {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long, default_value = "bunting-cli")]
        actor: String,
    },
    /// Restore the flag as it was before the rollout, and end the rollout.
    Abort {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long, default_value = "bunting-cli")]
        actor: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleAction {
    /// Write a flag's definition at a given time (the flag is created if it does not exist).
    Add {
        /// An RFC 3339 time (2030-01-01T09:00:00Z) or +N[smhd] from now.
        #[arg(long, value_name = "TIME")]
        at: String,
        #[arg(long)]
        flag: String,
        #[arg(long, default_value = "default")]
        set: String,
        /// The flag as a JSON object in flagd's flag format (without `key`).
        #[arg(long, value_name = "JSON")]
        definition: String,
        #[arg(long, default_value = "bunting-cli")]
        actor: String,
    },
    /// Scheduled changes by due time (at most 1000).
    List {
        /// Fired and cancelled ones too.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a pending change.
    Cancel {
        id: i64,
        #[arg(long, default_value = "bunting-cli")]
        actor: String,
    },
}
