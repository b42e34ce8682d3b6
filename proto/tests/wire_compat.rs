//! Wire compatibility with flagd, checked on the compiled descriptors: every flagd message's field
//! names, numbers, types and presence, and every service's methods and streaming, as a data table
//! written from flagd's published schemas (flagd-schemas `protobuf/flagd/...`). A renumbered or
//! retyped field here would break stock providers silently, since protobuf decodes unknown numbers
//! without complaint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// How a field is declared: "plain" singular, "optional" proto3 `optional` (explicit presence),
/// "repeated" (maps too), "oneof NAME" a member of that oneof.
const PLAIN: &str = "plain";
const OPTIONAL: &str = "optional";
const REPEATED: &str = "repeated";
const ONEOF_VALUE: &str = "oneof value";

/// (field name, number, type, type name for messages, shape)
type FieldRow<'a> = (&'a str, i32, Type, &'a str, &'a str);

const STRUCT: &str = ".google.protobuf.Struct";

fn descriptors() -> FileDescriptorSet {
    FileDescriptorSet::decode(bunting_proto::FILE_DESCRIPTOR_SET).unwrap()
}

fn file<'a>(set: &'a FileDescriptorSet, package: &str) -> &'a FileDescriptorProto {
    set.file
        .iter()
        .find(|f| f.package() == package)
        .unwrap_or_else(|| panic!("no file for package {package}"))
}

fn message<'a>(file: &'a FileDescriptorProto, name: &str) -> &'a DescriptorProto {
    file.message_type
        .iter()
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no message {name} in {}", file.package()))
}

fn assert_fields(file: &FileDescriptorProto, name: &str, expected: &[FieldRow<'_>]) {
    let msg = message(file, name);
    let actual: Vec<(String, i32, Type, String, String)> = msg
        .field
        .iter()
        .map(|f| {
            let shape = if f.label() == Label::Repeated {
                REPEATED.to_owned()
            } else if f.proto3_optional() {
                OPTIONAL.to_owned()
            } else if let Some(i) = f.oneof_index {
                format!("oneof {}", msg.oneof_decl[i as usize].name())
            } else {
                PLAIN.to_owned()
            };
            let type_name = f.type_name().to_owned();
            (
                f.name().to_owned(),
                f.number(),
                f.r#type(),
                type_name,
                shape,
            )
        })
        .collect();
    let expected: Vec<(String, i32, Type, String, String)> = expected
        .iter()
        .map(|(n, num, t, tn, shape)| {
            (
                (*n).to_owned(),
                *num,
                *t,
                (*tn).to_owned(),
                (*shape).to_owned(),
            )
        })
        .collect();
    assert_eq!(actual, expected, "{}.{name}", file.package());
}

/// (method, input, output, server streaming)
fn assert_service(file: &FileDescriptorProto, name: &str, expected: &[(&str, &str, &str, bool)]) {
    let service = file
        .service
        .iter()
        .find(|s| s.name() == name)
        .unwrap_or_else(|| panic!("no service {name} in {}", file.package()));
    let package = file.package();
    let actual: Vec<(String, String, String, bool)> = service
        .method
        .iter()
        .map(|m| {
            assert!(
                !m.client_streaming(),
                "{name}.{} streams requests",
                m.name()
            );
            (
                m.name().to_owned(),
                m.input_type().to_owned(),
                m.output_type().to_owned(),
                m.server_streaming(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String, bool)> = expected
        .iter()
        .map(|(m, i, o, s)| {
            (
                (*m).to_owned(),
                format!(".{package}.{i}"),
                format!(".{package}.{o}"),
                *s,
            )
        })
        .collect();
    assert_eq!(actual, expected, "{package}.{name}");
}

/// The typed Resolve RPCs, shared by v1 and v2.
const TYPED: [(&str, Type, &str); 5] = [
    ("Boolean", Type::Bool, ""),
    ("String", Type::String, ""),
    ("Float", Type::Double, ""),
    ("Int", Type::Int64, ""),
    ("Object", Type::Message, STRUCT),
];

fn assert_evaluation_package(package: &str, optional: &str) {
    let set = descriptors();
    let f = file(&set, package);

    assert_fields(
        f,
        "ResolveAllRequest",
        &[("context", 1, Type::Message, STRUCT, PLAIN)],
    );
    let entry = format!(".{package}.ResolveAllResponse.FlagsEntry");
    assert_fields(
        f,
        "ResolveAllResponse",
        &[
            ("flags", 1, Type::Message, &entry, REPEATED),
            ("metadata", 2, Type::Message, STRUCT, PLAIN),
        ],
    );
    assert_fields(
        f,
        "AnyFlag",
        &[
            ("reason", 1, Type::String, "", PLAIN),
            ("variant", 2, Type::String, "", optional),
            ("bool_value", 3, Type::Bool, "", ONEOF_VALUE),
            ("string_value", 4, Type::String, "", ONEOF_VALUE),
            ("double_value", 5, Type::Double, "", ONEOF_VALUE),
            ("object_value", 6, Type::Message, STRUCT, ONEOF_VALUE),
            ("metadata", 7, Type::Message, STRUCT, PLAIN),
        ],
    );
    for (kind, value_type, value_type_name) in TYPED {
        assert_fields(
            f,
            &format!("Resolve{kind}Request"),
            &[
                ("flag_key", 1, Type::String, "", PLAIN),
                ("context", 2, Type::Message, STRUCT, PLAIN),
            ],
        );
        assert_fields(
            f,
            &format!("Resolve{kind}Response"),
            &[
                ("value", 1, value_type, value_type_name, optional),
                ("reason", 2, Type::String, "", PLAIN),
                ("variant", 3, Type::String, "", optional),
                ("metadata", 4, Type::Message, STRUCT, PLAIN),
            ],
        );
    }
    assert_fields(f, "EventStreamRequest", &[]);
    assert_fields(
        f,
        "EventStreamResponse",
        &[
            ("type", 1, Type::String, "", PLAIN),
            ("data", 2, Type::Message, STRUCT, PLAIN),
        ],
    );
    assert_service(
        f,
        "Service",
        &[
            (
                "ResolveAll",
                "ResolveAllRequest",
                "ResolveAllResponse",
                false,
            ),
            (
                "ResolveBoolean",
                "ResolveBooleanRequest",
                "ResolveBooleanResponse",
                false,
            ),
            (
                "ResolveString",
                "ResolveStringRequest",
                "ResolveStringResponse",
                false,
            ),
            (
                "ResolveFloat",
                "ResolveFloatRequest",
                "ResolveFloatResponse",
                false,
            ),
            (
                "ResolveInt",
                "ResolveIntRequest",
                "ResolveIntResponse",
                false,
            ),
            (
                "ResolveObject",
                "ResolveObjectRequest",
                "ResolveObjectResponse",
                false,
            ),
            (
                "EventStream",
                "EventStreamRequest",
                "EventStreamResponse",
                true,
            ),
        ],
    );
}

#[test]
fn flagd_evaluation_v1_matches_flagd() {
    assert_evaluation_package("flagd.evaluation.v1", PLAIN);
}

#[test]
fn flagd_evaluation_v2_matches_flagd() {
    // v2 differs from v1 only in explicit presence of value and variant.
    assert_evaluation_package("flagd.evaluation.v2", OPTIONAL);
}

#[test]
fn flagd_sync_v1_matches_flagd() {
    let set = descriptors();
    let f = file(&set, "flagd.sync.v1");
    for request in ["SyncFlagsRequest", "FetchAllFlagsRequest"] {
        assert_fields(
            f,
            request,
            &[
                ("provider_id", 1, Type::String, "", PLAIN),
                ("selector", 2, Type::String, "", PLAIN),
            ],
        );
    }
    assert_fields(
        f,
        "SyncFlagsResponse",
        &[
            ("flag_configuration", 1, Type::String, "", PLAIN),
            ("sync_context", 2, Type::Message, STRUCT, OPTIONAL),
        ],
    );
    assert_fields(
        f,
        "FetchAllFlagsResponse",
        &[("flag_configuration", 1, Type::String, "", PLAIN)],
    );
    assert_fields(f, "GetMetadataRequest", &[]);
    assert_fields(
        f,
        "GetMetadataResponse",
        &[("metadata", 2, Type::Message, STRUCT, PLAIN)],
    );
    assert_service(
        f,
        "FlagSyncService",
        &[
            ("SyncFlags", "SyncFlagsRequest", "SyncFlagsResponse", true),
            (
                "FetchAllFlags",
                "FetchAllFlagsRequest",
                "FetchAllFlagsResponse",
                false,
            ),
            (
                "GetMetadata",
                "GetMetadataRequest",
                "GetMetadataResponse",
                false,
            ),
        ],
    );
}

#[test]
fn v2_leaves_value_and_variant_out_when_unset() {
    use bunting_proto::flagd::evaluation::v2::ResolveBooleanResponse;

    // A disabled flag: no value, no variant. On the wire that must be distinguishable from
    // `false` / "", which is the whole point of v2.
    let disabled = ResolveBooleanResponse {
        value: None,
        reason: "DISABLED".to_owned(),
        variant: None,
        metadata: None,
    };
    let decoded = ResolveBooleanResponse::decode(disabled.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.value, None);
    assert_eq!(decoded.variant, None);

    let off = ResolveBooleanResponse {
        value: Some(false),
        variant: Some(String::new()),
        ..disabled
    };
    let decoded = ResolveBooleanResponse::decode(off.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.value, Some(false));
    assert_eq!(decoded.variant, Some(String::new()));
}

#[test]
fn bunting_v1_services_are_as_documented() {
    let set = descriptors();
    let f = file(&set, "bunting.v1");
    assert_service(
        f,
        "Evaluation",
        &[(
            "EvaluateBulk",
            "EvaluateBulkRequest",
            "EvaluateBulkResponse",
            false,
        )],
    );
    let admin: Vec<(String, String, String)> = [
        "CreateFlagSet",
        "UpdateFlagSet",
        "DeleteFlagSet",
        "ListFlagSets",
        "GetFlagSet",
        "CreateFlag",
        "UpdateFlag",
        "DeleteFlag",
        "ListFlags",
        "ApplyFlagChanges",
        "ListAudit",
    ]
    .iter()
    .map(|m| {
        (
            (*m).to_owned(),
            format!("{m}Request"),
            format!("{m}Response"),
        )
    })
    .collect();
    let admin: Vec<(&str, &str, &str, bool)> = admin
        .iter()
        .map(|(m, i, o)| (m.as_str(), i.as_str(), o.as_str(), false))
        .collect();
    assert_service(f, "Admin", &admin);
}

#[test]
fn descriptor_set_carries_the_well_known_types_for_reflection() {
    let set = descriptors();
    let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
    for needed in [
        "google/protobuf/struct.proto",
        "google/protobuf/timestamp.proto",
        "flagd/evaluation/v1/evaluation.proto",
        "flagd/evaluation/v2/evaluation.proto",
        "flagd/sync/v1/sync.proto",
        "bunting/v1/bunting.proto",
    ] {
        assert!(names.contains(&needed), "{needed} missing from {names:?}");
    }
}
