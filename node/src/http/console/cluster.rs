//! The cluster page over `bunting.v1.ClusterAdmin`, called in process with the signed-in caller
//! after the API's scope check: members with their state, shards and last heartbeat, the epoch,
//! and drain/undrain buttons (cluster:admin). A node without `[cluster]` says so.

use std::fmt::Write;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::cluster_admin_server::ClusterAdmin as ClusterRpc;

use super::html::{self, escape, segment};
use super::{Form, Signed, authorized, page, reader, status_page, writer};
use crate::http::Edge;

type Params = Query<std::collections::BTreeMap<String, String>>;

fn cluster(edge: &Edge) -> &impl ClusterRpc {
    &edge.inner.console.cluster
}

fn state_name(state: i32) -> &'static str {
    match pb::NodeState::try_from(state) {
        Ok(pb::NodeState::Up) => "up",
        Ok(pb::NodeState::Draining) => "draining",
        Ok(pb::NodeState::Down) => "down",
        _ => "unknown",
    }
}

/// The drain or undrain button a member in `state` offers, if any.
fn action(signed: &Signed, id: &str, state: i32) -> String {
    let (path, label) = match pb::NodeState::try_from(state) {
        Ok(pb::NodeState::Up) => ("drain", "Drain"),
        Ok(pb::NodeState::Draining) => ("undrain", "Undrain"),
        _ => return String::new(),
    };
    format!(
        "<form method=\"post\" action=\"/ui/cluster/{path}\" class=\"inline\">{csrf}\
         <input type=\"hidden\" name=\"node_id\" value=\"{id}\">\
         <button type=\"submit\" aria-label=\"{label} {id}\">{label}</button></form>",
        csrf = html::csrf_field(&signed.csrf),
        id = escape(id),
    )
}

pub async fn status(
    State(edge): State<Edge>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let signed = or_refuse!(reader(&edge, &headers));
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.ClusterAdmin/Status",
        pb::ClusterStatusRequest {}
    ));
    let status = match cluster(&edge).status(request).await {
        Ok(answer) => answer.into_inner(),
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
            let body = html::notice(
                "ok",
                "This node is not part of a cluster: its config has no [cluster] section. It \
                 serves every shard itself, so there are no members to show and nothing to drain.",
            );
            return page(StatusCode::OK, "Cluster", Some(signed.header()), &body);
        }
        Err(s) => return status_page(&signed, &s),
    };
    let notice = match (params.get("drained"), params.get("undrained")) {
        (Some(id), _) => html::notice(
            "ok",
            &format!("Drained {id}: its shards moved to the other members."),
        ),
        (_, Some(id)) => html::notice("ok", &format!("Undrained {id}: it takes shards again.")),
        _ => String::new(),
    };
    let mut rows = String::new();
    for m in &status.members {
        let mut roles = Vec::new();
        if m.id == status.answered_by {
            roles.push("this node");
        }
        if m.id == status.coordinator {
            roles.push("coordinator");
        }
        let roles = if roles.is_empty() {
            String::new()
        } else {
            format!(" ({})", roles.join(", "))
        };
        let heard = if m.id == status.answered_by {
            "—".to_owned()
        } else {
            format!("{} ms ago", m.last_heard_ms)
        };
        let _ = write!(
            rows,
            "<tr><td>{id}{roles}</td><td>{grpc}</td><td class=\"state\">{state}</td>\
             <td>{shards}</td><td>{heard}</td><td>{action}</td></tr>",
            id = escape(&m.id),
            grpc = escape(&m.grpc_addr),
            state = state_name(m.state),
            shards = m.shards_owned,
            action = action(&signed, &m.id, m.state),
        );
    }
    let body = format!(
        "{notice}<p>Epoch {epoch} · {shards} shards · coordinator {coordinator} · answered by \
         {by}</p>\
         <table><thead><tr><th scope=\"col\">Member</th><th scope=\"col\">gRPC address</th>\
         <th scope=\"col\">State</th><th scope=\"col\">Shards</th>\
         <th scope=\"col\">Last heard</th><th scope=\"col\">Action</th></tr></thead>\
         <tbody>{rows}</tbody></table>",
        epoch = status.epoch,
        shards = status.shard_count,
        coordinator = escape(&status.coordinator),
        by = escape(&status.answered_by),
    );
    page(StatusCode::OK, "Cluster", Some(signed.header()), &body)
}

pub async fn drain(State(edge): State<Edge>, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let signed = or_refuse!(writer(&edge, &headers, &form));
    let node_id = form.get("node_id").trim().to_owned();
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.ClusterAdmin/Drain",
        pb::DrainRequest {
            node_id: node_id.clone()
        }
    ));
    rpc!(&signed, cluster(&edge).drain(request));
    tracing::info!(node = %node_id, by = %signed.actor(), "console: node drained");
    Redirect::to(&format!("/ui/cluster?drained={}", segment(&node_id))).into_response()
}

pub async fn undrain(State(edge): State<Edge>, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let signed = or_refuse!(writer(&edge, &headers, &form));
    let node_id = form.get("node_id").trim().to_owned();
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.ClusterAdmin/Undrain",
        pb::UndrainRequest {
            node_id: node_id.clone()
        }
    ));
    rpc!(&signed, cluster(&edge).undrain(request));
    tracing::info!(node = %node_id, by = %signed.actor(), "console: node undrained");
    Redirect::to(&format!("/ui/cluster?undrained={}", segment(&node_id))).into_response()
}
