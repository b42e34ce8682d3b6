//! `bunting cluster status|drain|undrain`: the ClusterAdmin RPCs of any node, printed for
//! operators.

use std::io::Write;
use std::process::ExitCode;

use bunting_proto::bunting::v1::cluster_admin_client::ClusterAdminClient;
use bunting_proto::bunting::v1::{ClusterStatusRequest, DrainRequest, NodeState, UndrainRequest};

use crate::cli::ClusterAction;
use crate::error::CliError;

pub fn run(node: &str, action: ClusterAction) -> Result<ExitCode, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let mut client = ClusterAdminClient::new(super::connect(node).await?);
        let rpc_error = |status: tonic::Status| super::rpc_error(node, &status);
        let mut out = std::io::stdout().lock();
        match action {
            ClusterAction::Status { json } => {
                let status = client
                    .status(ClusterStatusRequest {})
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                if json {
                    let members: Vec<serde_json::Value> = status
                        .members
                        .iter()
                        .map(|m| {
                            serde_json::json!({
                                "id": m.id,
                                "state": state_name(m.state),
                                "shards": m.shards_owned,
                                "lastHeardMs": m.last_heard_ms,
                                "grpcAddr": m.grpc_addr,
                                "clusterAddr": m.cluster_addr,
                            })
                        })
                        .collect();
                    let answer = serde_json::json!({
                        "epoch": status.epoch,
                        "coordinator": status.coordinator,
                        "shardCount": status.shard_count,
                        "answeredBy": status.answered_by,
                        "members": members,
                    });
                    writeln!(out, "{answer:#}")?;
                    return Ok(ExitCode::SUCCESS);
                }
                writeln!(
                    out,
                    "epoch {}  coordinator {}  shards {}  (answered by {})",
                    status.epoch, status.coordinator, status.shard_count, status.answered_by
                )?;
                writeln!(
                    out,
                    "{:<16} {:<9} {:>6} {:>10}  {:<22} CLUSTER",
                    "NODE", "STATE", "SHARDS", "HEARD(ms)", "GRPC"
                )?;
                for m in &status.members {
                    writeln!(
                        out,
                        "{:<16} {:<9} {:>6} {:>10}  {:<22} {}",
                        m.id,
                        state_name(m.state),
                        m.shards_owned,
                        m.last_heard_ms,
                        m.grpc_addr,
                        m.cluster_addr
                    )?;
                }
            }
            ClusterAction::Drain { node_id } => {
                let drained = client
                    .drain(DrainRequest {
                        node_id: node_id.clone(),
                    })
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                writeln!(
                    out,
                    "drained {node_id}: the cluster serves epoch {} without it; it can be stopped",
                    drained.epoch
                )?;
            }
            ClusterAction::Undrain { node_id } => {
                let back = client
                    .undrain(UndrainRequest {
                        node_id: node_id.clone(),
                    })
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                writeln!(
                    out,
                    "undrained {node_id}: the cluster serves epoch {} with shards on it again",
                    back.epoch
                )?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn state_name(state: i32) -> &'static str {
    match NodeState::try_from(state) {
        Ok(NodeState::Up) => "up",
        Ok(NodeState::Draining) => "draining",
        Ok(NodeState::Down) => "down",
        _ => "unknown",
    }
}
