//! Flags set up through the Admin API, as an operator would: one call for the set, one per flag.

use super::Channel;
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use serde_json::Value;

/// Creates flag set `set` holding `flags` (key, flagd definition), each write as `actor`.
pub async fn create_set_with_flags(
    admin: &mut AdminClient<Channel>,
    set: &str,
    flags: &[(&str, Value)],
    actor: &str,
) {
    admin
        .create_flag_set(pb::CreateFlagSetRequest {
            id: set.into(),
            actor: actor.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("creating flag set {set}: {e}"));
    for (key, definition) in flags {
        admin
            .create_flag(pb::CreateFlagRequest {
                flag_set_id: set.into(),
                key: (*key).into(),
                definition: definition.to_string(),
                expected_flag_set_version: 0,
                actor: actor.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("creating flag {set}/{key}: {e}"));
    }
}
