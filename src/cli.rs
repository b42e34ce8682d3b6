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
        /// `single`: ResolveBoolean of --flag; `bulk`: ResolveAll (every flag of the set).
        #[arg(long, value_enum, default_value_t = WorkloadArg::Single)]
        workload: WorkloadArg,
        /// The boolean flag for `single`.
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
        /// Requests per second across all clients (open loop).
        #[arg(long)]
        rate: Option<f64>,
        /// Distinct targeting keys to cycle through.
        #[arg(long, default_value_t = 100_000)]
        users: u32,
    },
    /// Check a flag file and report every problem; exit 1 if there is any.
    Validate {
        /// Flag-definition files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Schema to validate against; by default the one the file's `$schema` names, else flagd's.
        #[arg(long, value_enum)]
        schema: Option<SchemaArg>,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct CompileArgs {
    /// How `fractional` hashes: `cbor` as flagd's in-process providers do, `string` as flagd
    /// servers do, or `legacy` (flagd's first float form).
    #[arg(long, value_enum, default_value_t = FractionalArg::Cbor)]
    pub fractional: FractionalArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FractionalArg {
    Cbor,
    String,
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    Single,
    Bulk,
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
