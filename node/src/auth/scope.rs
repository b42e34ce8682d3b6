//! What a token may do: scopes, and the one table mapping every gRPC method to the scope it needs.
//! A method missing from the table is refused (the unit test below fails when an RPC is added to a
//! .proto without a line here).

use std::fmt;

/// One permission. A token holds a set of them ([`Scopes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// flagd evaluation (v1, v2), bulk evaluation, and the topology routed clients need.
    Evaluate,
    /// flagd sync: every rule of a set, for in-process providers.
    Sync,
    /// Experiments.Track.
    Track,
    FlagsRead,
    FlagsWrite,
    ExperimentsRead,
    ExperimentsWrite,
    ClusterRead,
    ClusterAdmin,
    TokensAdmin,
}

impl Scope {
    pub const ALL: [Scope; 10] = [
        Scope::Evaluate,
        Scope::Sync,
        Scope::Track,
        Scope::FlagsRead,
        Scope::FlagsWrite,
        Scope::ExperimentsRead,
        Scope::ExperimentsWrite,
        Scope::ClusterRead,
        Scope::ClusterAdmin,
        Scope::TokensAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Evaluate => "evaluate",
            Scope::Sync => "sync",
            Scope::Track => "track",
            Scope::FlagsRead => "flags:read",
            Scope::FlagsWrite => "flags:write",
            Scope::ExperimentsRead => "experiments:read",
            Scope::ExperimentsWrite => "experiments:write",
            Scope::ClusterRead => "cluster:read",
            Scope::ClusterAdmin => "cluster:admin",
            Scope::TokensAdmin => "tokens:admin",
        }
    }

    pub fn parse(text: &str) -> Result<Scope, UnknownScope> {
        Scope::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| UnknownScope(text.chars().take(64).collect()))
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown scope {0:?}; scopes are evaluate, sync, track, flags:read, flags:write, experiments:read, experiments:write, cluster:read, cluster:admin, tokens:admin"
)]
pub struct UnknownScope(pub String);

/// A set of scopes (a bit set: checked on every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u16);

impl Scopes {
    pub fn all() -> Scopes {
        Scope::ALL.into_iter().collect()
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Every scope of `other` is in `self`.
    pub fn covers(self, other: Scopes) -> bool {
        other.0 & !self.0 == 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// Parses names, refusing the first unknown one.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Scopes, UnknownScope> {
        names
            .into_iter()
            .map(Scope::parse)
            .collect::<Result<Scopes, _>>()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Scopes {
        Scopes(iter.into_iter().fold(0, |bits, s| bits | s.bit()))
    }
}

/// Every gRPC method the node serves and the scope it needs. One table, so what is protected can
/// be read in one place.
pub const METHODS: &[(&str, Scope)] = &[
    // flagd evaluation, v1 and v2.
    ("/flagd.evaluation.v1.Service/ResolveAll", Scope::Evaluate),
    (
        "/flagd.evaluation.v1.Service/ResolveBoolean",
        Scope::Evaluate,
    ),
    (
        "/flagd.evaluation.v1.Service/ResolveString",
        Scope::Evaluate,
    ),
    ("/flagd.evaluation.v1.Service/ResolveFloat", Scope::Evaluate),
    ("/flagd.evaluation.v1.Service/ResolveInt", Scope::Evaluate),
    (
        "/flagd.evaluation.v1.Service/ResolveObject",
        Scope::Evaluate,
    ),
    ("/flagd.evaluation.v1.Service/EventStream", Scope::Evaluate),
    ("/flagd.evaluation.v2.Service/ResolveAll", Scope::Evaluate),
    (
        "/flagd.evaluation.v2.Service/ResolveBoolean",
        Scope::Evaluate,
    ),
    (
        "/flagd.evaluation.v2.Service/ResolveString",
        Scope::Evaluate,
    ),
    ("/flagd.evaluation.v2.Service/ResolveFloat", Scope::Evaluate),
    ("/flagd.evaluation.v2.Service/ResolveInt", Scope::Evaluate),
    (
        "/flagd.evaluation.v2.Service/ResolveObject",
        Scope::Evaluate,
    ),
    ("/flagd.evaluation.v2.Service/EventStream", Scope::Evaluate),
    // flagd sync: whole rule sets, so a scope of its own.
    ("/flagd.sync.v1.FlagSyncService/SyncFlags", Scope::Sync),
    ("/flagd.sync.v1.FlagSyncService/FetchAllFlags", Scope::Sync),
    ("/flagd.sync.v1.FlagSyncService/GetMetadata", Scope::Sync),
    // Bunting's bulk evaluation, and the topology a routed evaluation client needs to evaluate.
    ("/bunting.v1.Evaluation/EvaluateBulk", Scope::Evaluate),
    ("/bunting.v1.Topology/GetTopology", Scope::Evaluate),
    // Admin.
    ("/bunting.v1.Admin/CreateFlagSet", Scope::FlagsWrite),
    ("/bunting.v1.Admin/UpdateFlagSet", Scope::FlagsWrite),
    ("/bunting.v1.Admin/DeleteFlagSet", Scope::FlagsWrite),
    ("/bunting.v1.Admin/ListFlagSets", Scope::FlagsRead),
    ("/bunting.v1.Admin/GetFlagSet", Scope::FlagsRead),
    ("/bunting.v1.Admin/CreateFlag", Scope::FlagsWrite),
    ("/bunting.v1.Admin/UpdateFlag", Scope::FlagsWrite),
    ("/bunting.v1.Admin/DeleteFlag", Scope::FlagsWrite),
    ("/bunting.v1.Admin/ListFlags", Scope::FlagsRead),
    ("/bunting.v1.Admin/ListAudit", Scope::FlagsRead),
    ("/bunting.v1.Admin/ApplyFlagChanges", Scope::FlagsWrite),
    // Experiments.
    (
        "/bunting.v1.Experiments/CreateExperiment",
        Scope::ExperimentsWrite,
    ),
    (
        "/bunting.v1.Experiments/StartExperiment",
        Scope::ExperimentsWrite,
    ),
    (
        "/bunting.v1.Experiments/StopExperiment",
        Scope::ExperimentsWrite,
    ),
    (
        "/bunting.v1.Experiments/GetExperiment",
        Scope::ExperimentsRead,
    ),
    (
        "/bunting.v1.Experiments/ListExperiments",
        Scope::ExperimentsRead,
    ),
    (
        "/bunting.v1.Experiments/GetExperimentResults",
        Scope::ExperimentsRead,
    ),
    ("/bunting.v1.Experiments/Track", Scope::Track),
    // Rollouts: they write flags (through the controller), so the flag scopes.
    ("/bunting.v1.Rollouts/CreateRollout", Scope::FlagsWrite),
    ("/bunting.v1.Rollouts/GetRolloutStatus", Scope::FlagsRead),
    ("/bunting.v1.Rollouts/ListRollouts", Scope::FlagsRead),
    ("/bunting.v1.Rollouts/PauseRollout", Scope::FlagsWrite),
    ("/bunting.v1.Rollouts/ResumeRollout", Scope::FlagsWrite),
    ("/bunting.v1.Rollouts/AbortRollout", Scope::FlagsWrite),
    ("/bunting.v1.Rollouts/ScheduleChange", Scope::FlagsWrite),
    ("/bunting.v1.Rollouts/ListScheduled", Scope::FlagsRead),
    ("/bunting.v1.Rollouts/CancelScheduled", Scope::FlagsWrite),
    // Cluster administration.
    ("/bunting.v1.ClusterAdmin/Status", Scope::ClusterRead),
    ("/bunting.v1.ClusterAdmin/Drain", Scope::ClusterAdmin),
    ("/bunting.v1.ClusterAdmin/Undrain", Scope::ClusterAdmin),
    // Tokens.
    ("/bunting.v1.Tokens/CreateToken", Scope::TokensAdmin),
    ("/bunting.v1.Tokens/ListTokens", Scope::TokensAdmin),
    ("/bunting.v1.Tokens/RevokeToken", Scope::TokensAdmin),
];

/// Methods anyone may call without a token (a token sent to them is still checked).
///
/// - Health (`grpc.health.v1`): Kubernetes probes and load balancers carry no token, and the
///   answer (SERVING or not, per service name) reveals nothing a TCP connect would not.
/// - Reflection (v1 and v1alpha, which older grpcurl speaks): it describes the schema only, the
///   same .proto files this repository publishes; every method it lists still needs its scope.
pub const OPEN_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// What calling a method takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token ([`OPEN_METHODS`]).
    Open,
    /// A token with this scope, unless the operator opened the scope (`[auth] open_*`).
    Scoped(Scope),
}

/// What `path` (`/package.Service/Method`) takes; `None` for a path neither table names, which
/// the layer refuses.
pub fn access(path: &str) -> Option<Access> {
    if OPEN_METHODS.contains(&path) {
        return Some(Access::Open);
    }
    required(path).map(Access::Scoped)
}

/// The scope `path` needs; `None` for an open method or a path the table does not name.
pub fn required(path: &str) -> Option<Scope> {
    METHODS
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, scope)| *scope)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    /// Every method of every service the node serves, from the descriptors: Bunting's and
    /// flagd's (generated here), health's and reflection's (shipped by their crates).
    fn served_methods() -> BTreeSet<String> {
        let sets = [
            bunting_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut paths = BTreeSet::new();
        for file in sets
            .into_iter()
            .flat_map(|set| prost_types::FileDescriptorSet::decode(set).unwrap().file)
        {
            let package = file.package().to_owned();
            for service in &file.service {
                for method in &service.method {
                    paths.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                }
            }
        }
        paths
    }

    #[test]
    fn every_served_method_has_exactly_one_scope_and_nothing_else_does() {
        let served = served_methods();
        // A sanity floor: the descriptors did list the services.
        assert!(served.len() >= 40, "{served:?}");
        let table: BTreeSet<String> = METHODS
            .iter()
            .map(|(m, _)| *m)
            .chain(OPEN_METHODS.iter().copied())
            .map(str::to_owned)
            .collect();
        assert_eq!(
            table.len(),
            METHODS.len() + OPEN_METHODS.len(),
            "a method is listed twice"
        );
        let missing: Vec<_> = served.difference(&table).collect();
        assert!(missing.is_empty(), "methods without a scope: {missing:?}");
        let stale: Vec<_> = table.difference(&served).collect();
        assert!(
            stale.is_empty(),
            "scopes for methods nobody serves: {stale:?}"
        );
    }

    #[test]
    fn the_registered_service_names_are_the_table_s() {
        use bunting_proto::bunting::v1 as b;
        use bunting_proto::flagd::evaluation::{v1, v2};
        use bunting_proto::flagd::sync::v1 as sync;
        use tonic::server::NamedService;
        // The services server.rs registers, by their generated names.
        let registered = [
            <v1::service_server::ServiceServer<crate::service::FlagdV1> as NamedService>::NAME,
            <v2::service_server::ServiceServer<crate::service::FlagdV2> as NamedService>::NAME,
            <sync::flag_sync_service_server::FlagSyncServiceServer<crate::service::FlagdSync> as NamedService>::NAME,
            <b::evaluation_server::EvaluationServer<crate::service::BulkEvaluation> as NamedService>::NAME,
            <b::admin_server::AdminServer<crate::service::Admin> as NamedService>::NAME,
            <b::experiments_server::ExperimentsServer<crate::service::ExperimentsService> as NamedService>::NAME,
            <b::rollouts_server::RolloutsServer<crate::service::RolloutsService> as NamedService>::NAME,
            <b::topology_server::TopologyServer<crate::service::TopologyService> as NamedService>::NAME,
            <b::cluster_admin_server::ClusterAdminServer<crate::service::TopologyService> as NamedService>::NAME,
            <b::tokens_server::TokensServer<crate::service::TokensService> as NamedService>::NAME,
        ];
        for name in registered {
            let prefix = format!("/{name}/");
            assert!(
                METHODS.iter().any(|(m, _)| m.starts_with(&prefix)),
                "service {name} has no method in the scope table"
            );
        }
    }

    #[test]
    fn methods_map_to_their_scopes_and_unknown_paths_to_none() {
        let cases = [
            (
                "/flagd.evaluation.v1.Service/ResolveBoolean",
                Some(Scope::Evaluate),
            ),
            (
                "/flagd.sync.v1.FlagSyncService/SyncFlags",
                Some(Scope::Sync),
            ),
            ("/bunting.v1.Admin/CreateFlag", Some(Scope::FlagsWrite)),
            ("/bunting.v1.Admin/ListFlags", Some(Scope::FlagsRead)),
            ("/bunting.v1.Rollouts/AbortRollout", Some(Scope::FlagsWrite)),
            (
                "/bunting.v1.Rollouts/GetRolloutStatus",
                Some(Scope::FlagsRead),
            ),
            ("/bunting.v1.Experiments/Track", Some(Scope::Track)),
            ("/bunting.v1.ClusterAdmin/Drain", Some(Scope::ClusterAdmin)),
            ("/bunting.v1.Tokens/RevokeToken", Some(Scope::TokensAdmin)),
            ("/bunting.v1.Admin/DropEverything", None),
            ("/bunting.v1.Admin/CreateFlag/", None),
            ("", None),
            ("/grpc.health.v1.Health/Nope", None),
        ];
        for (path, scope) in cases {
            assert_eq!(required(path), scope, "{path}");
            assert_eq!(access(path), scope.map(Access::Scoped), "{path}");
        }
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(access(path), Some(Access::Open), "{path}");
            assert_eq!(required(path), None, "{path}");
        }
    }

    #[test]
    fn scope_sets_parse_contain_and_cover() {
        let reader = Scopes::parse(["flags:read", "evaluate"]).unwrap();
        assert!(reader.contains(Scope::FlagsRead) && reader.contains(Scope::Evaluate));
        assert!(!reader.contains(Scope::FlagsWrite));
        assert!(Scopes::all().covers(reader));
        assert!(!reader.covers(Scopes::all()));
        assert!(reader.covers(Scopes::default()));
        assert_eq!(
            Scopes::parse(["flags:read", "flags:admin"]).unwrap_err(),
            UnknownScope("flags:admin".into())
        );
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Ok(scope));
        }
        assert_eq!(Scopes::all().iter().count(), Scope::ALL.len());
    }
}
