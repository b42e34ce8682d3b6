//! `bunting tokens generate|create|list|revoke`.

use std::io::Write;
use std::process::ExitCode;

use bunting_node::auth::store::{NewToken, TokenName, file_entry};
use bunting_node::auth::{ApiToken, FlagSets, Scopes};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::tokens_client::TokensClient;

use crate::cli::TokensAction;
use crate::error::CliError;

pub fn run(node: &str, action: TokensAction) -> Result<ExitCode, CliError> {
    if let TokensAction::Generate { name, scopes, sets } = action {
        return generate(name.as_deref(), &scopes, sets);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let mut client = TokensClient::new(super::connect(node).await?);
        let rpc_error = |status: tonic::Status| super::rpc_error(node, &status);
        let mut out = std::io::stdout().lock();
        match action {
            TokensAction::Generate { .. } => {}
            TokensAction::Create {
                name,
                scopes,
                sets,
                all_sets,
                expires_in_days,
            } => {
                let expires_at = expires_in_days.map(|days| {
                    let at = chrono::Utc::now() + chrono::Duration::days(i64::from(days));
                    prost_types::Timestamp {
                        seconds: at.timestamp(),
                        nanos: 0,
                    }
                });
                let created = client
                    .create_token(pb::CreateTokenRequest {
                        name,
                        scopes,
                        flag_sets: sets,
                        all_flag_sets: all_sets,
                        expires_at,
                    })
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                if let Some(info) = &created.token {
                    eprintln!(
                        "created token {} ({}): store it now, it cannot be shown again",
                        info.id, info.name
                    );
                }
                writeln!(out, "{}", created.token_secret)?;
            }
            TokensAction::List { json } => {
                let tokens = client
                    .list_tokens(pb::ListTokensRequest {})
                    .await
                    .map_err(rpc_error)?
                    .into_inner()
                    .tokens;
                if json {
                    let rows: Vec<_> = tokens.iter().map(token_json).collect();
                    writeln!(out, "{}", serde_json::Value::Array(rows))?;
                } else {
                    writeln!(
                        out,
                        "{:<16}  {:<20}  {:<8}  {:<20}  SCOPES",
                        "ID", "NAME", "STATE", "FLAG SETS"
                    )?;
                    for t in &tokens {
                        let state = if t.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        let sets = if t.all_flag_sets {
                            "*".to_owned()
                        } else {
                            t.flag_sets.join(",")
                        };
                        writeln!(
                            out,
                            "{:<16}  {:<20}  {:<8}  {:<20}  {}",
                            t.id,
                            t.name,
                            state,
                            sets,
                            t.scopes.join(",")
                        )?;
                    }
                }
            }
            TokensAction::Revoke { id } => {
                client
                    .revoke_token(pb::RevokeTokenRequest { id: id.clone() })
                    .await
                    .map_err(rpc_error)?;
                writeln!(out, "revoked {id}")?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn token_json(t: &pb::TokenInfo) -> serde_json::Value {
    let time = |ts: &Option<prost_types::Timestamp>| {
        ts.as_ref()
            .and_then(|ts| chrono::DateTime::from_timestamp(ts.seconds, 0))
            .map(|at| at.to_rfc3339())
    };
    serde_json::json!({
        "id": t.id,
        "name": t.name,
        "scopes": t.scopes,
        "flag_sets": if t.all_flag_sets { None } else { Some(&t.flag_sets) },
        "expires_at": time(&t.expires_at),
        "created_at": time(&t.created_at),
        "created_by": t.created_by,
        "revoked_at": time(&t.revoked_at),
    })
}

/// A token made here, printed; with a name, its tokens-file entry on a second line. Everything
/// is checked before anything is printed, so a refused entry leaves no orphan secret behind.
fn generate(
    name: Option<&str>,
    scopes: &[String],
    sets: Vec<String>,
) -> Result<ExitCode, CliError> {
    let entry = match name {
        None => None,
        Some(name) => Some(NewToken {
            name: TokenName::parse(name).map_err(|e| CliError::Usage(e.to_string()))?,
            scopes: Scopes::parse(scopes.iter().map(String::as_str))
                .map_err(|e| CliError::Usage(format!("--scope: {e}")))?,
            flag_sets: if sets.is_empty() {
                FlagSets::All
            } else {
                FlagSets::Only(sets.into_iter().collect())
            },
            expires_at: None,
        }),
    };
    let token = ApiToken::generate().map_err(|e| CliError::Usage(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", token.reveal())?;
    if let Some(new) = entry {
        writeln!(out, "{}", file_entry(&token, &new))?;
    }
    Ok(ExitCode::SUCCESS)
}
