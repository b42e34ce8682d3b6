//! `bunting experiment results|list|create|start|stop|track`: the Experiments RPCs of any node,
//! results printed for operators and product people (a table per metric) or, with `--json`, as
//! JSON for scripts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::process::ExitCode;

use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use serde_json::{Value, json};

use crate::cli::{AnalysisArgs, EngineArg, ExperimentAction, Switch};
use bunting_stores::secret_url::RedactedUrl;

use crate::error::CliError;

/// Below this the sample-ratio-mismatch p-value gets a warning line (the proto's suggestion).
const SRM_ALARM: f64 = 0.001;

pub fn run(node: &str, action: ExperimentAction) -> Result<ExitCode, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let mut client = ExperimentsClient::new(super::connect(node).await?);
        let text = match action {
            ExperimentAction::Results { id, json } => {
                let results = client
                    .get_experiment_results(pb::GetExperimentResultsRequest { id: id.clone() })
                    .await
                    .map_err(|status| CliError::ExperimentRpc {
                        node: RedactedUrl::new(node),
                        id,
                        code: status.code(),
                        message: status.message().to_owned(),
                    })?
                    .into_inner();
                if json {
                    format!("{:#}\n", results_json(&results))
                } else {
                    results_table(&results)
                }
            }
            ExperimentAction::List { json, page_size } => {
                let experiments = list_all(&mut client, node, page_size).await?;
                if json {
                    let list: Vec<Value> = experiments.iter().map(experiment_json).collect();
                    format!("{:#}\n", Value::Array(list))
                } else {
                    list_table(&experiments)
                }
            }
            ExperimentAction::Create {
                id,
                flag,
                set,
                control,
                metrics,
                split,
                analysis,
                actor,
            } => {
                let metrics = metrics
                    .iter()
                    .map(|m| parse_metric(m))
                    .collect::<Result<Vec<_>, CliError>>()?;
                let traffic_split = parse_split(&split)?;
                let analysis = analysis_request(&analysis)?;
                let created = client
                    .create_experiment(pb::CreateExperimentRequest {
                        id,
                        flag_set_id: set,
                        flag_key: flag,
                        control_variant: control,
                        metrics,
                        traffic_split,
                        analysis,
                        actor,
                    })
                    .await
                    .map_err(|status| super::rpc_error(node, &status))?
                    .into_inner();
                let e = created.experiment.unwrap_or_default();
                format!(
                    "created experiment {} on {}/{} (draft), arms {} ({}), analysis: {}; start it with `bunting experiment start {}{}`\n",
                    e.id,
                    e.flag_set_id,
                    e.flag_key,
                    e.arms.join(", "),
                    split_text(&e),
                    analysis_text(e.analysis.as_ref()),
                    e.id,
                    node_arg(node)
                )
            }
            ExperimentAction::Start { id, actor } => {
                client
                    .start_experiment(pb::StartExperimentRequest { id: id.clone(), actor })
                    .await
                    .map_err(|status| super::rpc_error(node, &status))?;
                format!("experiment {id} is running\n")
            }
            ExperimentAction::Stop { id, actor } => {
                client
                    .stop_experiment(pb::StopExperimentRequest { id: id.clone(), actor })
                    .await
                    .map_err(|status| super::rpc_error(node, &status))?;
                format!("experiment {id} is stopped; its results stay readable\n")
            }
            ExperimentAction::Track { user, event, value } => {
                let counted = client
                    .track(pb::TrackRequest {
                        targeting_key: user,
                        event,
                        value,
                        flag_set_id: None,
                    })
                    .await
                    .map_err(|status| super::rpc_error(node, &status))?
                    .into_inner()
                    .counted;
                if counted.is_empty() {
                    "counted toward no experiment (the user was not exposed to one with this event)\n".to_owned()
                } else {
                    format!("counted toward {}\n", counted.join(", "))
                }
            }
        };
        std::io::stdout().lock().write_all(text.as_bytes())?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Every experiment, page after page until the node says the last one came: printing only the
/// first page would silently leave experiments out.
async fn list_all(
    client: &mut ExperimentsClient<bunting_node::auth::client::AuthChannel>,
    node: &str,
    page_size: i32,
) -> Result<Vec<pb::Experiment>, CliError> {
    let mut experiments = Vec::new();
    let mut after = String::new();
    loop {
        let page = client
            .list_experiments(pb::ListExperimentsRequest {
                after_id: after.clone(),
                limit: page_size,
                ..Default::default()
            })
            .await
            .map_err(|status| super::rpc_error(node, &status))?
            .into_inner();
        let next = next_page(node, &after, &page)?;
        experiments.extend(page.experiments);
        match next {
            Some(next) => after = next,
            None => return Ok(experiments),
        }
    }
}

/// Where the page after `page` (asked for with `after`) starts, or `None` if `page` was the last.
/// A node that names a next page but gave nothing, or names the cursor it was given, would have
/// the CLI ask for the same page forever: that is an error, not a loop.
fn next_page(
    node: &str,
    after: &str,
    page: &pb::ListExperimentsResponse,
) -> Result<Option<String>, CliError> {
    let next = &page.next_after_id;
    if next.is_empty() {
        return Ok(None);
    }
    if page.experiments.is_empty() || next == after {
        return Err(CliError::StuckPage {
            node: RedactedUrl::new(node),
            after: after.to_owned(),
            next: next.clone(),
            count: page.experiments.len(),
        });
    }
    Ok(Some(next.clone()))
}

/// `NAME:EVENT:KIND` → a metric definition (the node checks names and events again).
fn parse_metric(text: &str) -> Result<pb::Metric, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--metric {text:?}: expected NAME:EVENT:KIND with KIND conversion or mean"
        ))
    };
    let mut parts = text.splitn(3, ':');
    let (Some(name), Some(event), Some(kind)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let kind = match kind {
        "conversion" => pb::MetricKind::Conversion,
        "mean" => pb::MetricKind::Mean,
        _ => return Err(bad()),
    };
    Ok(pb::Metric {
        name: name.to_owned(),
        event: event.to_owned(),
        kind: kind.into(),
    })
}

/// `ARM=WEIGHT` arguments → the traffic split (the node checks it against the flag's variants).
fn parse_split(args: &[String]) -> Result<HashMap<String, u32>, CliError> {
    let mut split = HashMap::new();
    for text in args {
        let bad = |why: &str| CliError::Usage(format!("--split {text:?}: {why}"));
        let (arm, weight) = text
            .split_once('=')
            .ok_or_else(|| bad("expected ARM=WEIGHT"))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| bad("WEIGHT must be a whole number from 0 to 4294967295"))?;
        if split.insert(arm.trim().to_owned(), weight).is_some() {
            return Err(bad("this arm is given twice"));
        }
    }
    Ok(split)
}

/// The `--alpha`, `--one-sided`, ... flags as the request's settings; `None` when none is given
/// (the node's defaults). Only the prior's syntax is checked here; the node checks the values.
fn analysis_request(args: &AnalysisArgs) -> Result<Option<pb::AnalysisSettings>, CliError> {
    let prior = args
        .prior
        .as_deref()
        .map(|text| {
            let bad = |why: &str| CliError::Usage(format!("--prior {text:?}: {why}"));
            let (mean, variance) = text
                .split_once(':')
                .ok_or_else(|| bad("expected MEAN:VARIANCE, e.g. 0:0.09"))?;
            let number = |s: &str| s.trim().parse::<f64>().map_err(|_| bad("not a number"));
            Ok::<_, CliError>(pb::GaussianPrior {
                mean: number(mean)?,
                variance: number(variance)?,
            })
        })
        .transpose()?;
    let request = pb::AnalysisSettings {
        alpha: args.alpha,
        sides: if args.one_sided {
            pb::TestSides::OneSided
        } else {
            pb::TestSides::Unspecified
        }
        .into(),
        sequential: args.sequential.map(|s| s == Switch::On),
        sequential_tuning: args.sequential_tuning,
        engine: match args.engine {
            None => pb::AnalysisEngine::Unspecified,
            Some(EngineArg::Frequentist) => pb::AnalysisEngine::Frequentist,
            Some(EngineArg::Bayesian) => pb::AnalysisEngine::Bayesian,
        }
        .into(),
        prior,
    };
    Ok((request != pb::AnalysisSettings::default()).then_some(request))
}

/// The settings in force in a line: "frequentist, two-sided, alpha 0.05, sequential (tuning
/// 5000)".
fn analysis_text(settings: Option<&pb::AnalysisSettings>) -> String {
    let Some(a) = settings else {
        return "defaults".to_owned();
    };
    let mut parts = Vec::new();
    let bayesian = a.engine == i32::from(pb::AnalysisEngine::Bayesian);
    parts.push(if bayesian { "Bayesian" } else { "frequentist" }.to_owned());
    if !bayesian {
        parts.push(
            if a.sides == i32::from(pb::TestSides::OneSided) {
                "one-sided"
            } else {
                "two-sided"
            }
            .to_owned(),
        );
    }
    if let Some(alpha) = a.alpha {
        parts.push(format!("alpha {}", trim_number(alpha)));
    }
    match a.sequential_tuning {
        Some(tuning) if a.sequential == Some(true) => {
            parts.push(format!("sequential (tuning {})", trim_number(tuning)))
        }
        _ if !bayesian => parts.push("fixed horizon".to_owned()),
        _ => {}
    }
    if bayesian {
        parts.push(match &a.prior {
            Some(p) => format!(
                "prior N({}, {})",
                trim_number(p.mean),
                trim_number(p.variance)
            ),
            None => "flat prior".to_owned(),
        });
    }
    parts.join(", ")
}

/// ` --node NODE` for a suggested command, so it reaches the node this one did; empty for the
/// default node, and for an address with credentials in it, which is not printed.
fn node_arg(node: &str) -> String {
    if node == "127.0.0.1:8013" || node.contains('@') {
        String::new()
    } else {
        format!(" --node {node}")
    }
}

/// "even split" or "split control 90 / treatment 10", in arm order.
fn split_text(e: &pb::Experiment) -> String {
    if e.traffic_split.is_empty() {
        return "even split".to_owned();
    }
    let weights: Vec<String> = e
        .arms
        .iter()
        .map(|arm| format!("{arm} {}", e.traffic_split.get(arm).copied().unwrap_or(0)))
        .collect();
    format!("split {}", weights.join(" / "))
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

fn list_table(experiments: &[pb::Experiment]) -> String {
    let mut table = Table::new(&["ID", "FLAG", "STATE", "CONTROL", "ARMS"], &[]);
    for e in experiments {
        table.row(vec![
            e.id.clone(),
            format!("{}/{}", e.flag_set_id, e.flag_key),
            state_name(e.state).to_owned(),
            e.control_variant.clone(),
            e.arms.join(","),
        ]);
    }
    if experiments.is_empty() {
        return "no experiments\n".to_owned();
    }
    table.render()
}

/// The results as people read them: a header on the experiment and its users, then per metric
/// one row per arm (control first) and, under each treatment arm, its absolute and relative
/// lift over control.
fn results_table(r: &pb::GetExperimentResultsResponse) -> String {
    let mut out = String::new();
    let experiment = r.experiment.clone().unwrap_or_default();
    let level = format!("{}%", trim_number((1.0 - r.alpha) * 100.0));
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "experiment {}  flag {}/{}  state {}  control {}",
        experiment.id,
        experiment.flag_set_id,
        experiment.flag_key,
        state_name(experiment.state),
        experiment.control_variant
    );
    let _ = writeln!(
        out,
        "alpha {}  sequential {}",
        trim_number(r.alpha),
        if r.sequential {
            "yes (decisions rest on always-valid intervals and p-values: safe to look any time)"
        } else {
            "no (fixed horizon: valid only at the planned sample size)"
        }
    );
    let users: Vec<String> = r
        .users
        .iter()
        .map(|u| format!("{} {}", u.arm, u.users))
        .collect();
    let srm = match r.srm_p_value {
        Some(p) => format!("SRM p = {}", p_value(p)),
        None => "SRM p = - (no users)".to_owned(),
    };
    let _ = writeln!(
        out,
        "users  {}  ({srm} against the {})",
        users.join("  "),
        split_text(&experiment)
    );
    if let Some(p) = r.srm_p_value.filter(|p| *p < SRM_ALARM) {
        let _ = writeln!(
            out,
            "WARNING: SAMPLE RATIO MISMATCH (p = {} < {SRM_ALARM}): the arms' users are not \
             split as assigned; assignment or exposure logging is broken and every figure below \
             is suspect",
            p_value(p)
        );
    }
    if !r.decision_rule.is_empty() {
        let _ = writeln!(out, "decision rule: {}", r.decision_rule);
    }
    let decided_by = Decision::of(r);
    let decision = decided_by.short();
    for (m, metric) in r.metrics.iter().enumerate() {
        let kind = pb::MetricKind::try_from(metric.kind).unwrap_or(pb::MetricKind::Unspecified);
        let event = experiment
            .metrics
            .get(m)
            .map(|d| format!(" of \"{}\"", d.event))
            .unwrap_or_default();
        let conversion = kind == pb::MetricKind::Conversion;
        let unit = Unit::of(metric);
        let _ = writeln!(
            out,
            "\n{} ({}{event})",
            metric.metric,
            if conversion { "conversion" } else { "mean" }
        );
        let value_heading = if conversion { "RATE" } else { "MEAN" };
        let interval_heading = format!("{level} CI");
        let lift_interval_heading = match decided_by {
            Decision::Sequential => format!("{level} SEQ CI"),
            Decision::Welch => format!("{level} CI"),
            Decision::OneSided => format!("{level} ONE-SIDED CI"),
            Decision::Bayesian => format!("{level} CREDIBLE CI"),
        };
        let p_heading = format!("P ({decision})");
        let mut headings = vec!["ARM", "USERS"];
        if conversion {
            headings.push("CONVERTED");
        }
        headings.extend([
            value_heading,
            interval_heading.as_str(),
            "LIFT",
            lift_interval_heading.as_str(),
            p_heading.as_str(),
            "P (HOLM)",
            "P (BH)",
            "BEATS CONTROL",
            "VERDICT",
        ]);
        // Right-aligned: every numeric column except the intervals.
        let numeric: Vec<bool> = headings
            .iter()
            .map(|h| !(h.ends_with("CI") || matches!(*h, "ARM" | "LIFT" | "VERDICT")))
            .collect();
        let mut table = Table::new(&headings, &numeric);
        for arm in &metric.arms {
            let mut cells = vec![arm.arm.clone(), arm.users.to_string()];
            if conversion {
                cells.push(arm.converted.to_string());
            }
            cells.push(arm.value.map_or("-".to_owned(), |v| unit.value(v)));
            cells.push(
                arm.value_interval
                    .as_ref()
                    .map_or("-".to_owned(), |i| interval(i, |v| unit.value(v))),
            );
            let Some(comparison) = &arm.comparison else {
                table.row(cells);
                continue;
            };
            let absolute = comparison.absolute.clone().unwrap_or_default();
            let relative = comparison.relative.clone().unwrap_or_default();
            let width = cells.len();
            lift_cells(&mut table, cells, &absolute, decided_by, |v| unit.lift(v));
            lift_cells(
                &mut table,
                vec![String::new(); width],
                &relative,
                decided_by,
                |v| format!("{:+.2}%", v * 100.0),
            );
        }
        out.push_str(&table.render());
    }
    let _ = write!(
        out,
        "\nLIFT: treatment − control (pp: percentage points), and under it relative to control.\n\
         P ({decision}): {}; P (HOLM) and P (BH) correct it across\n\
         the metrics (family-wise error rate, false discovery rate).\n\
         BEATS CONTROL: the Bayesian chance that the lift is above zero.\n\
         VERDICT: what the decision rule concludes (higher, lower, inconclusive), before correction.\n",
        match decided_by {
            Decision::Sequential => "the always-valid p-value decisions rest on",
            Decision::Welch => "the fixed-horizon Welch p-value decisions rest on",
            Decision::OneSided => "the one-sided Welch p-value decisions rest on",
            Decision::Bayesian =>
                "none: Bayesian decisions rest on BEATS CONTROL (no p-value is corrected)",
        }
    );
    out
}

/// Which figures a results response's verdicts rest on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Sequential,
    Welch,
    OneSided,
    Bayesian,
}

impl Decision {
    fn of(r: &pb::GetExperimentResultsResponse) -> Decision {
        let analysis = r.analysis.as_ref();
        if analysis.is_some_and(|a| a.engine == i32::from(pb::AnalysisEngine::Bayesian)) {
            Decision::Bayesian
        } else if r.sequential {
            Decision::Sequential
        } else if analysis.is_some_and(|a| a.sides == i32::from(pb::TestSides::OneSided)) {
            Decision::OneSided
        } else {
            Decision::Welch
        }
    }

    fn short(self) -> &'static str {
        match self {
            Decision::Sequential => "SEQ",
            Decision::Welch => "WELCH",
            Decision::OneSided => "ONE-SIDED",
            Decision::Bayesian => "BAYES",
        }
    }
}

fn verdict_text(verdict: i32) -> &'static str {
    match pb::Verdict::try_from(verdict) {
        Ok(pb::Verdict::Higher) => "higher",
        Ok(pb::Verdict::Lower) => "lower",
        Ok(pb::Verdict::Inconclusive) => "inconclusive",
        Ok(pb::Verdict::NotEnoughInformation) => "not enough information",
        Ok(pb::Verdict::Unspecified) | Err(_) => "-",
    }
}

/// One lift's cells after the arm's own (`cells`): the estimate, the decision interval, the
/// p-values and the chance to beat control, or one "unavailable: why" cell.
fn lift_cells(
    table: &mut Table,
    mut cells: Vec<String>,
    lift: &pb::Lift,
    decided_by: Decision,
    show: impl Fn(f64) -> String,
) {
    if !lift.unavailable.is_empty() {
        // Never a p-value: say plainly that the data cannot decide, and why.
        let why = lift
            .unavailable
            .strip_prefix("not enough information: ")
            .unwrap_or(&lift.unavailable);
        table.row_with_tail(cells, format!("NOT ENOUGH INFORMATION: {why}"));
        return;
    }
    let decision_interval = match decided_by {
        Decision::Sequential => lift
            .sequential_interval
            .as_ref()
            .map(|i| interval(i, &show)),
        Decision::Welch => lift
            .confidence_interval
            .as_ref()
            .map(|i| interval(i, &show)),
        Decision::OneSided => lift
            .one_sided_lower_bound
            .map(|lower| format!("[{}, ∞)", show(lower))),
        Decision::Bayesian => lift.credible_interval.as_ref().map(|i| interval(i, &show)),
    };
    let decision_p = match decided_by {
        Decision::Sequential => lift.sequential_p_value,
        Decision::Welch => Some(lift.p_value),
        Decision::OneSided => lift.one_sided_p_value,
        Decision::Bayesian => None,
    };
    let optional_p = |p: Option<f64>| p.map_or("-".to_owned(), p_value);
    cells.extend([
        show(lift.estimate),
        decision_interval.unwrap_or_else(|| "-".to_owned()),
        optional_p(decision_p),
        optional_p(lift.holm_p_value),
        optional_p(lift.benjamini_hochberg_p_value),
        format!("{:.1}%", lift.chance_to_beat_control * 100.0),
        verdict_text(lift.verdict).to_owned(),
    ]);
    table.row(cells);
}

/// How a metric's figures are written: rates as percentages (absolute lifts in percentage
/// points), means in the metric's unit with one number of decimals for the whole metric, so its
/// arms, intervals and lifts line up and compare.
#[derive(Debug, Clone, Copy)]
enum Unit {
    Rate,
    Mean { decimals: usize },
}

impl Unit {
    fn of(metric: &pb::MetricResults) -> Unit {
        if metric.kind == i32::from(pb::MetricKind::Conversion) {
            return Unit::Rate;
        }
        let largest = metric
            .arms
            .iter()
            .filter_map(|a| a.value)
            .fold(0.0_f64, |m, v| m.max(v.abs()));
        let decimals = if largest >= 1000.0 {
            0
        } else if largest >= 1.0 {
            2
        } else {
            4
        };
        Unit::Mean { decimals }
    }

    fn value(self, v: f64) -> String {
        match self {
            Unit::Rate => format!("{:.2}%", v * 100.0),
            Unit::Mean { decimals } => format!("{v:.decimals$}"),
        }
    }

    /// Signed, so a lift reads as a change.
    fn lift(self, v: f64) -> String {
        match self {
            Unit::Rate => format!("{:+.2} pp", v * 100.0),
            Unit::Mean { decimals } => format!("{v:+.decimals$}"),
        }
    }
}

fn interval(i: &pb::Interval, show: impl Fn(f64) -> String) -> String {
    format!("[{}, {}]", show(i.lower), show(i.upper))
}

fn p_value(p: f64) -> String {
    if p < 0.0001 {
        "<0.0001".to_owned()
    } else {
        format!("{p:.4}")
    }
}

/// 0.05 as "0.05", 95.0 as "95": no trailing zeros.
fn trim_number(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn state_name(state: i32) -> &'static str {
    match pb::ExperimentState::try_from(state) {
        Ok(pb::ExperimentState::Draft) => "draft",
        Ok(pb::ExperimentState::Running) => "running",
        Ok(pb::ExperimentState::Stopped) => "stopped",
        _ => "unknown",
    }
}

/// Columns padded to their widest cell. A row may end in a "tail", text that spans the rest of
/// the line and widens no column (the "unavailable: why" of a lift).
#[derive(Debug)]
struct Table {
    headings: Vec<String>,
    right_aligned: Vec<bool>,
    rows: Vec<(Vec<String>, Option<String>)>,
}

impl Table {
    fn new(headings: &[&str], right_aligned: &[bool]) -> Table {
        Table {
            headings: headings.iter().map(|h| (*h).to_owned()).collect(),
            right_aligned: right_aligned.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push((cells, None));
    }

    fn row_with_tail(&mut self, cells: Vec<String>, tail: String) {
        self.rows.push((cells, Some(tail)));
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headings.iter().map(|h| h.chars().count()).collect();
        for (cells, _) in &self.rows {
            for (w, cell) in widths.iter_mut().zip(cells) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[String], tail: Option<&String>| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let width = widths.get(i).copied().unwrap_or(0);
                if i > 0 {
                    text.push_str("  ");
                }
                if self.right_aligned.get(i).copied().unwrap_or(false) {
                    let _ = write!(text, "{cell:>width$}");
                } else {
                    let _ = write!(text, "{cell:<width$}");
                }
            }
            if let Some(tail) = tail {
                text.push_str("  ");
                text.push_str(tail);
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&self.headings, None);
        for (cells, tail) in &self.rows {
            line(cells, tail.as_ref());
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------
// The proto's field names; enums by their proto names; unset optional fields and messages as
// null. prost types do not derive serde, and this is the one place that needs JSON of them.

fn results_json(r: &pb::GetExperimentResultsResponse) -> Value {
    json!({
        "experiment": r.experiment.as_ref().map(experiment_json),
        "users": r.users.iter().map(|u| json!({"arm": u.arm, "users": u.users})).collect::<Vec<_>>(),
        "srm_p_value": r.srm_p_value,
        "alpha": r.alpha,
        "sequential": r.sequential,
        "analysis": r.analysis.as_ref().map(analysis_json),
        "decision_rule": r.decision_rule,
        "metrics": r.metrics.iter().map(|m| json!({
            "metric": m.metric,
            "kind": metric_kind_name(m.kind),
            "arms": m.arms.iter().map(arm_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn experiment_json(e: &pb::Experiment) -> Value {
    let time = |t: &Option<prost_types::Timestamp>| t.as_ref().map(ToString::to_string);
    json!({
        "id": e.id,
        "flag_set_id": e.flag_set_id,
        "flag_key": e.flag_key,
        "arms": e.arms,
        "control_variant": e.control_variant,
        "metrics": e.metrics.iter().map(|m| json!({
            "name": m.name,
            "event": m.event,
            "kind": metric_kind_name(m.kind),
        })).collect::<Vec<_>>(),
        "state": pb::ExperimentState::try_from(e.state)
            .map_or("EXPERIMENT_STATE_UNSPECIFIED", |s| s.as_str_name()),
        "started_at": time(&e.started_at),
        "stopped_at": time(&e.stopped_at),
        "version": e.version,
        "created_at": time(&e.created_at),
        "updated_at": time(&e.updated_at),
        "analysis": e.analysis.as_ref().map(analysis_json),
    })
}

fn arm_json(a: &pb::ArmResult) -> Value {
    json!({
        "arm": a.arm,
        "users": a.users,
        "converted": a.converted,
        "value": a.value,
        "value_interval": a.value_interval.as_ref().map(interval_json),
        "comparison": a.comparison.as_ref().map(|c| json!({
            "absolute": c.absolute.as_ref().map(lift_json),
            "relative": c.relative.as_ref().map(lift_json),
        })),
    })
}

fn analysis_json(a: &pb::AnalysisSettings) -> Value {
    json!({
        "alpha": a.alpha,
        "sides": pb::TestSides::try_from(a.sides)
            .map_or("TEST_SIDES_UNSPECIFIED", |s| s.as_str_name()),
        "sequential": a.sequential,
        "sequential_tuning": a.sequential_tuning,
        "engine": pb::AnalysisEngine::try_from(a.engine)
            .map_or("ANALYSIS_ENGINE_UNSPECIFIED", |e| e.as_str_name()),
        "prior": a.prior.as_ref().map(|p| json!({"mean": p.mean, "variance": p.variance})),
    })
}

fn verdict_name(verdict: i32) -> &'static str {
    pb::Verdict::try_from(verdict).map_or("VERDICT_UNSPECIFIED", |v| v.as_str_name())
}

fn lift_json(l: &pb::Lift) -> Value {
    if !l.unavailable.is_empty() {
        return json!({ "unavailable": l.unavailable, "verdict": verdict_name(l.verdict) });
    }
    json!({
        "estimate": l.estimate,
        "standard_error": l.standard_error,
        "degrees_of_freedom": l.degrees_of_freedom,
        "confidence_interval": l.confidence_interval.as_ref().map(interval_json),
        "p_value": l.p_value,
        "sequential_interval": l.sequential_interval.as_ref().map(interval_json),
        "sequential_p_value": l.sequential_p_value,
        "credible_interval": l.credible_interval.as_ref().map(interval_json),
        "chance_to_beat_control": l.chance_to_beat_control,
        "holm_p_value": l.holm_p_value,
        "benjamini_hochberg_p_value": l.benjamini_hochberg_p_value,
        "verdict": verdict_name(l.verdict),
        "one_sided_p_value": l.one_sided_p_value,
        "one_sided_lower_bound": l.one_sided_lower_bound,
        "posterior_mean": l.posterior_mean,
        "posterior_standard_deviation": l.posterior_standard_deviation,
        "risk_control": l.risk_control,
        "risk_treatment": l.risk_treatment,
    })
}

fn interval_json(i: &pb::Interval) -> Value {
    json!({ "lower": i.lower, "upper": i.upper })
}

fn metric_kind_name(kind: i32) -> &'static str {
    pb::MetricKind::try_from(kind).map_or("METRIC_KIND_UNSPECIFIED", |k| k.as_str_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parse_from_the_command_line() {
        let m = parse_metric("revenue:purchase:mean").unwrap();
        assert_eq!(
            (m.name.as_str(), m.event.as_str(), m.kind()),
            ("revenue", "purchase", pb::MetricKind::Mean)
        );
        assert!(parse_metric("revenue:purchase").is_err());
        assert!(parse_metric("revenue:purchase:median").is_err());
    }

    #[test]
    fn pages_are_followed_until_the_last_and_never_in_a_loop() {
        let page = |ids: &[&str], next: &str| pb::ListExperimentsResponse {
            experiments: ids
                .iter()
                .map(|id| pb::Experiment {
                    id: (*id).into(),
                    ..Default::default()
                })
                .collect(),
            next_after_id: next.into(),
        };
        let node = "127.0.0.1:8013";
        assert_eq!(
            next_page(node, "", &page(&["a", "b"], "b")).unwrap(),
            Some("b".into())
        );
        assert_eq!(next_page(node, "b", &page(&["c"], "")).unwrap(), None);
        assert_eq!(next_page(node, "c", &page(&[], "")).unwrap(), None);
        for (after, stuck) in [("b", page(&["c"], "b")), ("", page(&[], "x"))] {
            let error = next_page(node, after, &stuck).unwrap_err();
            assert!(matches!(error, CliError::StuckPage { .. }), "{error}");
            assert!(error.to_string().contains(node), "{error}");
        }
    }

    fn lift(estimate: f64, p: f64) -> pb::Lift {
        pb::Lift {
            estimate,
            standard_error: 0.01,
            degrees_of_freedom: 100.0,
            confidence_interval: Some(pb::Interval {
                lower: estimate - 0.02,
                upper: estimate + 0.02,
            }),
            p_value: p / 2.0,
            sequential_interval: Some(pb::Interval {
                lower: estimate - 0.03,
                upper: estimate + 0.03,
            }),
            sequential_p_value: Some(p),
            credible_interval: None,
            chance_to_beat_control: 0.9312,
            holm_p_value: Some(p * 2.0),
            benjamini_hochberg_p_value: Some(p),
            unavailable: String::new(),
            verdict: pb::Verdict::Higher.into(),
            ..Default::default()
        }
    }

    fn response(srm: f64) -> pb::GetExperimentResultsResponse {
        pb::GetExperimentResultsResponse {
            experiment: Some(pb::Experiment {
                id: "checkout".into(),
                flag_set_id: "shop".into(),
                flag_key: "button".into(),
                control_variant: "blue".into(),
                state: pb::ExperimentState::Running.into(),
                metrics: vec![
                    pb::Metric {
                        name: "purchased".into(),
                        event: "purchase".into(),
                        kind: pb::MetricKind::Conversion.into(),
                    },
                    pb::Metric {
                        name: "revenue".into(),
                        event: "purchase".into(),
                        kind: pb::MetricKind::Mean.into(),
                    },
                ],
                ..Default::default()
            }),
            users: vec![
                pb::ArmUsers {
                    arm: "blue".into(),
                    users: 1000,
                },
                pb::ArmUsers {
                    arm: "green".into(),
                    users: 1001,
                },
            ],
            srm_p_value: Some(srm),
            alpha: 0.05,
            sequential: true,
            analysis: None,
            decision_rule: "frequentist, sequential (always valid, tuning 5000), two-sided, \
                            alpha 0.05"
                .into(),
            metrics: vec![
                pb::MetricResults {
                    metric: "purchased".into(),
                    kind: pb::MetricKind::Conversion.into(),
                    arms: vec![
                        pb::ArmResult {
                            arm: "blue".into(),
                            users: 1000,
                            converted: 100,
                            value: Some(0.1),
                            value_interval: Some(pb::Interval {
                                lower: 0.0834,
                                upper: 0.1195,
                            }),
                            comparison: None,
                        },
                        pb::ArmResult {
                            arm: "green".into(),
                            users: 1001,
                            converted: 120,
                            value: Some(0.12),
                            value_interval: None,
                            comparison: Some(pb::Comparison {
                                absolute: Some(lift(0.02, 0.04)),
                                relative: Some(lift(0.2, 0.05)),
                            }),
                        },
                    ],
                },
                pb::MetricResults {
                    metric: "revenue".into(),
                    kind: pb::MetricKind::Mean.into(),
                    arms: vec![
                        pb::ArmResult {
                            arm: "blue".into(),
                            users: 1000,
                            value: Some(0.0),
                            ..Default::default()
                        },
                        pb::ArmResult {
                            arm: "green".into(),
                            users: 1001,
                            value: Some(2.5),
                            comparison: Some(pb::Comparison {
                                absolute: Some(lift(2.5, 0.00001)),
                                relative: Some(pb::Lift {
                                    unavailable: "relative lift undefined: the control mean is \
                                                  zero"
                                        .into(),
                                    verdict: pb::Verdict::NotEnoughInformation.into(),
                                    ..Default::default()
                                }),
                            }),
                            ..Default::default()
                        },
                    ],
                },
            ],
        }
    }

    #[test]
    fn the_table_shows_rates_lifts_and_p_values_per_arm() {
        let text = results_table(&response(0.97));
        assert!(
            text.starts_with(
                "experiment checkout  flag shop/button  state running  control blue\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("users  blue 1000  green 1001  (SRM p = 0.9700 against the even split)")
        );
        assert!(!text.contains("WARNING"), "{text}");
        let row = |arm: &str, from: &str| {
            text[text.find(from).unwrap()..]
                .lines()
                .find(|l| l.starts_with(arm))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            row("blue", "purchased (conversion of \"purchase\")"),
            "blue 1000 100 10.00% [8.34%, 11.95%]"
        );
        // Decision interval and p-value are the sequential ones.
        assert_eq!(
            row("green", "purchased"),
            "green 1001 120 12.00% - +2.00 pp [-1.00 pp, +5.00 pp] 0.0400 0.0800 0.0400 93.1% higher"
        );
        let relative = text.lines().find(|l| l.contains("+20.00%")).unwrap();
        assert_eq!(
            relative.split_whitespace().collect::<Vec<_>>().join(" "),
            "+20.00% [+17.00%, +23.00%] 0.0500 0.1000 0.0500 93.1% higher"
        );
        assert!(text.contains("P (SEQ)"), "{text}");
        // Revenue: a mean, its relative lift unavailable.
        assert_eq!(
            row("green", "revenue (mean"),
            "green 1001 2.50 - +2.50 [+2.47, +2.53] <0.0001 <0.0001 <0.0001 93.1% higher"
        );
        assert_eq!(
            row("blue", "revenue (mean"),
            "blue 1000 0.00 -",
            "one number of decimals for the metric"
        );
        let unavailable = text
            .lines()
            .find(|l| l.contains("NOT ENOUGH INFORMATION"))
            .unwrap()
            .trim();
        assert_eq!(
            unavailable,
            "NOT ENOUGH INFORMATION: relative lift undefined: the control mean is zero"
        );
        assert!(
            text.contains(
                "decision rule: frequentist, sequential (always valid, tuning 5000), two-sided, \
                 alpha 0.05\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_sample_ratio_mismatch_gets_a_warning() {
        let text = results_table(&response(0.00002));
        assert!(
            text.contains("(SRM p = <0.0001 against the even split)"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("WARNING: SAMPLE RATIO MISMATCH")),
            "{text}"
        );
        assert!(!results_table(&response(0.0011)).contains("WARNING"));
    }

    #[test]
    fn a_declared_split_is_named_with_the_check() {
        let mut r = response(0.5);
        if let Some(e) = r.experiment.as_mut() {
            e.arms = vec!["blue".into(), "green".into()];
            e.traffic_split = [("blue".to_owned(), 90), ("green".to_owned(), 10)].into();
        }
        let text = results_table(&r);
        assert!(
            text.contains("(SRM p = 0.5000 against the split blue 90 / green 10)"),
            "{text}"
        );
    }

    #[test]
    fn split_arguments_are_parsed_and_bad_ones_named() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            parse_split(&args(&["off=90", "on = 10"])).unwrap(),
            HashMap::from([("off".to_owned(), 90), ("on".to_owned(), 10)])
        );
        assert!(parse_split(&[]).unwrap().is_empty());
        for (bad, why) in [
            ("off", "expected ARM=WEIGHT"),
            ("off=-1", "whole number"),
            ("off=0.5", "whole number"),
        ] {
            let error = parse_split(&args(&[bad])).unwrap_err().to_string();
            assert!(error.contains(bad) && error.contains(why), "{error}");
        }
        let twice = parse_split(&args(&["on=1", "on=2"])).unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
    }

    #[test]
    fn json_keeps_every_figure_and_marks_unset_ones_null() {
        let v = results_json(&response(0.5));
        assert_eq!(v["experiment"]["state"], "EXPERIMENT_STATE_RUNNING");
        assert_eq!(v["metrics"][0]["kind"], "METRIC_KIND_CONVERSION");
        let green = &v["metrics"][0]["arms"][1];
        assert_eq!(green["converted"], 120);
        assert_eq!(green["value_interval"], Value::Null);
        assert_eq!(green["comparison"]["absolute"]["sequential_p_value"], 0.04);
        assert_eq!(green["comparison"]["absolute"]["holm_p_value"], 0.08);
        assert_eq!(
            v["metrics"][1]["arms"][1]["comparison"]["relative"],
            json!({
                "unavailable": "relative lift undefined: the control mean is zero",
                "verdict": "VERDICT_NOT_ENOUGH_INFORMATION",
            })
        );
        assert_eq!(v["metrics"][0]["arms"][0]["comparison"], Value::Null);
        assert_eq!(v["srm_p_value"], 0.5);
    }

    /// The first metric's absolute lift of the treatment arm.
    fn lift_of(r: &mut pb::GetExperimentResultsResponse) -> &mut pb::Lift {
        r.metrics[0].arms[1]
            .comparison
            .as_mut()
            .unwrap()
            .absolute
            .as_mut()
            .unwrap()
    }

    /// A zero-variance arm, a one-sided analysis and a Bayesian one, as the table shows them.
    #[test]
    fn the_table_follows_the_decision_rule() {
        let mut r = response(0.5);
        *lift_of(&mut r) = pb::Lift {
            unavailable: "not enough information: every user in the control arm has the same \
                          value (a rate of 0% or 100%, or a constant mean), so the uncertainty \
                          of the lift cannot be estimated"
                .into(),
            verdict: pb::Verdict::NotEnoughInformation.into(),
            ..Default::default()
        };
        let text = results_table(&r);
        let line = text
            .lines()
            .find(|l| l.contains("NOT ENOUGH INFORMATION"))
            .unwrap();
        assert!(
            line.contains("NOT ENOUGH INFORMATION: every user in the control arm"),
            "{line}"
        );
        assert!(!line.contains("0.0"), "no p-value beside it: {line}");

        let mut one_sided = response(0.5);
        one_sided.sequential = false;
        one_sided.analysis = Some(pb::AnalysisSettings {
            sides: pb::TestSides::OneSided.into(),
            ..Default::default()
        });
        let l = lift_of(&mut one_sided);
        l.one_sided_p_value = Some(0.012);
        l.one_sided_lower_bound = Some(0.004);
        let text = results_table(&one_sided);
        assert!(text.contains("P (ONE-SIDED)"), "{text}");
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains("+2.00 pp [+0.40 pp, ∞) 0.0120"),
            "the one-sided bound and p-value: {text}"
        );

        let mut bayesian = response(0.5);
        bayesian.sequential = false;
        bayesian.analysis = Some(pb::AnalysisSettings {
            engine: pb::AnalysisEngine::Bayesian.into(),
            ..Default::default()
        });
        let l = lift_of(&mut bayesian);
        l.credible_interval = Some(pb::Interval {
            lower: 0.001,
            upper: 0.039,
        });
        l.holm_p_value = None;
        l.benjamini_hochberg_p_value = None;
        let text = results_table(&bayesian);
        assert!(text.contains("P (BAYES)"), "{text}");
        let row = text.lines().find(|l| l.contains("+2.00 pp")).unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>().join(" "),
            "green 1001 120 12.00% - +2.00 pp [+0.10 pp, +3.90 pp] - - - 93.1% higher"
        );
    }

    #[test]
    fn analysis_flags_become_the_request() {
        let args = |alpha, one_sided, engine, prior: Option<&str>| AnalysisArgs {
            alpha,
            one_sided,
            sequential: None,
            sequential_tuning: None,
            engine,
            prior: prior.map(str::to_owned),
        };
        assert_eq!(
            analysis_request(&args(None, false, None, None)).unwrap(),
            None,
            "no flag: the node's defaults"
        );
        let request = analysis_request(&args(
            Some(0.1),
            false,
            Some(EngineArg::Bayesian),
            Some("0:0.09"),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(request.alpha, Some(0.1));
        assert_eq!(request.engine, i32::from(pb::AnalysisEngine::Bayesian));
        assert_eq!(
            request.prior,
            Some(pb::GaussianPrior {
                mean: 0.0,
                variance: 0.09
            })
        );
        assert_eq!(
            analysis_request(&args(None, true, None, None))
                .unwrap()
                .unwrap()
                .sides,
            i32::from(pb::TestSides::OneSided)
        );
        for bad in ["0.09", "a:1", "0:"] {
            let error = analysis_request(&args(None, false, None, Some(bad))).unwrap_err();
            assert!(error.to_string().contains("--prior"), "{error}");
        }
        assert_eq!(
            analysis_text(Some(&pb::AnalysisSettings {
                alpha: Some(0.05),
                sides: pb::TestSides::TwoSided.into(),
                sequential: Some(true),
                sequential_tuning: Some(5000.0),
                engine: pb::AnalysisEngine::Frequentist.into(),
                prior: None,
            })),
            "frequentist, two-sided, alpha 0.05, sequential (tuning 5000)"
        );
    }
}
