//! The experiments pages over `bunting.v1.Experiments`, called in process with the signed-in
//! caller after the API's scope check: the list, a create form on a flag (its variants offered
//! as the control), start and stop, and the results per metric and arm with the lift's interval
//! drawn by [`super::chart`], the decision rule the results name, and the sample-ratio warning at
//! the top when the split is off.

use std::fmt::Write;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::experiments_server::Experiments as ExperimentsRpc;
use serde_json::Value;

use super::chart;
use super::html::{self, escape, segment};
use super::{Form, authorized, page, reader, status_page, writer};
use crate::http::Edge;

type Params = Query<std::collections::BTreeMap<String, String>>;

/// The sample-ratio p-value below which the page warns: the CLI's threshold (`experiment
/// results`), so both say the same of one experiment.
const SRM_ALARM: f64 = 0.001;

/// Experiments a list page shows.
const LIST_PAGE: i32 = 100;

fn experiments(edge: &Edge) -> &impl ExperimentsRpc {
    &edge.inner.console.experiments
}

fn state_name(state: i32) -> &'static str {
    match pb::ExperimentState::try_from(state) {
        Ok(pb::ExperimentState::Draft) => "draft",
        Ok(pb::ExperimentState::Running) => "running",
        Ok(pb::ExperimentState::Stopped) => "stopped",
        _ => "unknown",
    }
}

fn back() -> &'static str {
    "<p><a href=\"/ui/experiments\">Back to the experiments</a></p>"
}

pub async fn list(State(edge): State<Edge>, Query(params): Params, headers: HeaderMap) -> Response {
    let signed = or_refuse!(reader(&edge, &headers));
    let after = params.get("after").cloned().unwrap_or_default();
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.Experiments/ListExperiments",
        pb::ListExperimentsRequest {
            after_id: after,
            limit: LIST_PAGE,
            ..Default::default()
        }
    ));
    let list = rpc!(&signed, experiments(&edge).list_experiments(request));
    let mut rows = String::new();
    for e in &list.experiments {
        let _ = write!(
            rows,
            "<tr><td><a href=\"/ui/experiments/{seg}\">{id}</a></td><td>{set} / {flag}</td>\
             <td class=\"state\">{state}</td><td>{arms}</td><td>{control}</td></tr>",
            seg = segment(&e.id),
            id = escape(&e.id),
            set = escape(&e.flag_set_id),
            flag = escape(&e.flag_key),
            state = state_name(e.state),
            arms = escape(&e.arms.join(", ")),
            control = escape(&e.control_variant),
        );
    }
    let table = if rows.is_empty() {
        "<p>No experiments yet.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">Experiment</th><th scope=\"col\">Flag</th>\
             <th scope=\"col\">State</th><th scope=\"col\">Arms</th>\
             <th scope=\"col\">Control</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    let more = if list.next_after_id.is_empty() {
        String::new()
    } else {
        format!(
            "<p><a href=\"/ui/experiments?after={}\">Next page</a></p>",
            segment(&list.next_after_id)
        )
    };
    let body = format!(
        "{table}{more}<h2>New experiment</h2>\
         <form method=\"get\" action=\"/ui/experiments/new\" class=\"row\">\
         <label for=\"set\">Flag set</label><input id=\"set\" name=\"set\" value=\"default\" required>\
         <label for=\"flag\">Flag</label><input id=\"flag\" name=\"flag\" required>\
         <button type=\"submit\">Choose flag</button></form>"
    );
    page(StatusCode::OK, "Experiments", Some(signed.header()), &body)
}

/// The create form for the flag `flag` of `set`: its variants offered as the control.
pub async fn new(State(edge): State<Edge>, Query(params): Params, headers: HeaderMap) -> Response {
    let signed = or_refuse!(reader(&edge, &headers));
    let set = params.get("set").map_or("", |s| s.trim());
    let key = params.get("flag").map_or("", |s| s.trim());
    let (flag, _) = or_refuse!(super::pages::read_flag(&edge, &signed, set, key).await);
    let definition: Value = serde_json::from_str(&flag.definition).unwrap_or(Value::Null);
    let variants: Vec<&String> = definition
        .get("variants")
        .and_then(Value::as_object)
        .map(|v| v.keys().collect())
        .unwrap_or_default();
    let mut options = String::new();
    for v in &variants {
        let _ = write!(options, "<option>{}</option>", escape(v));
    }
    let body = format!(
        "<p>Arms: the flag's variants ({arms}). Evaluations of the flag on a node expose users \
         once the experiment runs.</p>\
         <form method=\"post\" action=\"/ui/experiments\" class=\"stack\">{csrf}\
         <input type=\"hidden\" name=\"set\" value=\"{set}\">\
         <input type=\"hidden\" name=\"flag\" value=\"{key}\">\
         <label for=\"id\">Experiment id</label><input id=\"id\" name=\"id\" required \
         pattern=\"[A-Za-z0-9._\\-]{{1,64}}\">\
         <label for=\"control\">Control variant</label>\
         <select id=\"control\" name=\"control\">{options}</select>\
         <label for=\"metrics\">Metrics, one a line: name event conversion|mean</label>\
         <textarea id=\"metrics\" name=\"metrics\" rows=\"3\" required>purchased purchase conversion</textarea>\
         <label for=\"engine\">Analysis</label>\
         <select id=\"engine\" name=\"engine\"><option value=\"frequentist\">Frequentist</option>\
         <option value=\"bayesian\">Bayesian</option></select>\
         <label for=\"sides\">Test</label>\
         <select id=\"sides\" name=\"sides\"><option value=\"two\">Two-sided</option>\
         <option value=\"one\">One-sided (treatment greater)</option></select>\
         <label for=\"sequential\">Sequential testing</label>\
         <select id=\"sequential\" name=\"sequential\"><option value=\"\">Default (on for \
         frequentist two-sided)</option><option value=\"on\">On</option>\
         <option value=\"off\">Off</option></select>\
         <label for=\"alpha\">Alpha (empty: 0.05)</label><input id=\"alpha\" name=\"alpha\" \
         inputmode=\"decimal\">\
         <label for=\"tuning\">Sequential tuning, total users (empty: 5000)</label>\
         <input id=\"tuning\" name=\"tuning\" inputmode=\"decimal\">\
         <button type=\"submit\">Create experiment</button></form>",
        arms = escape(
            &variants
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        csrf = html::csrf_field(&signed.csrf),
        set = escape(set),
        key = escape(key),
    );
    page(
        StatusCode::OK,
        &format!("New experiment on {set} / {key}"),
        Some(signed.header()),
        &body,
    )
}

/// An optional number field: empty is `None`; else a finite number or what is wrong with it.
fn number(form: &Form, field: &str, label: &str) -> Result<Option<f64>, String> {
    let text = form.get(field).trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(Some)
        .ok_or_else(|| format!("{label} {text:?} is not a number; nothing was created."))
}

/// The CreateExperiment request a create form asks for, or why the form is wrong. Ranges (alpha,
/// tuning, which settings go together) are the service's to check, as through the API.
fn create_request(form: &Form, actor: String) -> Result<pb::CreateExperimentRequest, String> {
    let mut metrics = Vec::new();
    for (n, line) in form.get("metrics").lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        let kind = match words.get(2).copied() {
            Some("conversion") => pb::MetricKind::Conversion,
            Some("mean") => pb::MetricKind::Mean,
            _ => {
                return Err(format!(
                    "Metric line {} ({:?}) is not \"name event conversion\" or \"name event \
                     mean\"; nothing was created.",
                    n + 1,
                    line.trim()
                ));
            }
        };
        if words.len() != 3 {
            return Err(format!(
                "Metric line {} ({:?}) has {} words; write \"name event kind\".",
                n + 1,
                line.trim(),
                words.len()
            ));
        }
        metrics.push(pb::Metric {
            name: words[0].to_owned(),
            event: words[1].to_owned(),
            kind: kind.into(),
        });
    }
    let engine = match form.get("engine") {
        "bayesian" => pb::AnalysisEngine::Bayesian,
        _ => pb::AnalysisEngine::Frequentist,
    };
    let sides = match form.get("sides") {
        "one" => pb::TestSides::OneSided,
        _ => pb::TestSides::TwoSided,
    };
    let sequential = match form.get("sequential") {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    };
    Ok(pb::CreateExperimentRequest {
        id: form.get("id").trim().to_owned(),
        flag_set_id: form.get("set").to_owned(),
        flag_key: form.get("flag").to_owned(),
        control_variant: form.get("control").to_owned(),
        metrics,
        actor,
        traffic_split: Default::default(),
        analysis: Some(pb::AnalysisSettings {
            alpha: number(form, "alpha", "Alpha")?,
            sides: sides.into(),
            sequential,
            sequential_tuning: number(form, "tuning", "Sequential tuning")?,
            engine: engine.into(),
            prior: None,
        }),
    })
}

pub async fn create(State(edge): State<Edge>, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let signed = or_refuse!(writer(&edge, &headers, &form));
    let message = match create_request(&form, signed.actor()) {
        Ok(message) => message,
        Err(text) => {
            return page(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Refused",
                Some(signed.header()),
                &format!("{}{}", html::notice("error", &text), back()),
            );
        }
    };
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.Experiments/CreateExperiment",
        message
    ));
    let created = rpc!(&signed, experiments(&edge).create_experiment(request));
    let id = created.experiment.map(|e| e.id).unwrap_or_default();
    Redirect::to(&format!("/ui/experiments/{}", segment(&id))).into_response()
}

pub async fn start(
    State(edge): State<Edge>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let signed = or_refuse!(writer(&edge, &headers, &form));
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.Experiments/StartExperiment",
        pb::StartExperimentRequest {
            id: id.clone(),
            actor: signed.actor(),
        }
    ));
    rpc!(&signed, experiments(&edge).start_experiment(request));
    Redirect::to(&format!("/ui/experiments/{}", segment(&id))).into_response()
}

pub async fn stop(
    State(edge): State<Edge>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let signed = or_refuse!(writer(&edge, &headers, &form));
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.Experiments/StopExperiment",
        pb::StopExperimentRequest {
            id: id.clone(),
            actor: signed.actor(),
        }
    ));
    rpc!(&signed, experiments(&edge).stop_experiment(request));
    Redirect::to(&format!("/ui/experiments/{}", segment(&id))).into_response()
}

pub async fn show(
    State(edge): State<Edge>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let signed = or_refuse!(reader(&edge, &headers));
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.Experiments/GetExperiment",
        pb::GetExperimentRequest { id: id.clone() }
    ));
    let got = rpc!(&signed, experiments(&edge).get_experiment(request));
    let Some(experiment) = got.experiment else {
        return status_page(
            &signed,
            &tonic::Status::not_found(format!("no experiment {id}")),
        );
    };
    let state = pb::ExperimentState::try_from(experiment.state).ok();
    let action = match state {
        Some(pb::ExperimentState::Draft) => Some(("start", "Start experiment")),
        Some(pb::ExperimentState::Running) => Some(("stop", "Stop experiment")),
        _ => None,
    };
    let action = action.map_or(String::new(), |(path, label)| {
        format!(
            "<form method=\"post\" action=\"/ui/experiments/{seg}/{path}\" class=\"row\">{csrf}\
             <button type=\"submit\">{label}</button></form>",
            seg = segment(&id),
            csrf = html::csrf_field(&signed.csrf),
        )
    });
    let metrics: Vec<String> = experiment
        .metrics
        .iter()
        .map(|m| {
            let kind = match pb::MetricKind::try_from(m.kind) {
                Ok(pb::MetricKind::Mean) => "mean",
                _ => "conversion",
            };
            format!("{} ({kind} of {})", m.name, m.event)
        })
        .collect();
    let summary = format!(
        "<p>On flag <a href=\"/ui/sets/{sseg}/flags/{fseg}\">{set} / {flag}</a> · state \
         <span class=\"state\">{state}</span> · arms {arms} · control {control} · metrics \
         {metrics}</p>{action}",
        sseg = segment(&experiment.flag_set_id),
        fseg = segment(&experiment.flag_key),
        set = escape(&experiment.flag_set_id),
        flag = escape(&experiment.flag_key),
        state = state_name(experiment.state),
        arms = escape(&experiment.arms.join(", ")),
        control = escape(&experiment.control_variant),
        metrics = escape(&metrics.join(", ")),
    );
    let results = if state == Some(pb::ExperimentState::Draft) {
        "<p>Results appear once the experiment is started.</p>".to_owned()
    } else {
        let request = or_refuse!(authorized(
            &edge,
            &signed,
            "/bunting.v1.Experiments/GetExperimentResults",
            pb::GetExperimentResultsRequest { id: id.clone() }
        ));
        let results = rpc!(&signed, experiments(&edge).get_experiment_results(request));
        render_results(&results)
    };
    let (srm, results) = results
        .split_once("<!--srm-end-->")
        .map_or((String::new(), results.clone()), |(a, b)| {
            (a.to_owned(), b.to_owned())
        });
    page(
        StatusCode::OK,
        &format!("Experiment {id}"),
        Some(signed.header()),
        &format!("{srm}{summary}{results}{}", back()),
    )
}

/// Which figures decide a lift under the results' rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Sequential,
    Fixed,
    OneSided,
    Bayesian,
}

impl Rule {
    fn of(r: &pb::GetExperimentResultsResponse) -> Rule {
        let analysis = r.analysis.as_ref();
        if analysis.is_some_and(|a| a.engine == i32::from(pb::AnalysisEngine::Bayesian)) {
            Rule::Bayesian
        } else if r.sequential {
            Rule::Sequential
        } else if analysis.is_some_and(|a| a.sides == i32::from(pb::TestSides::OneSided)) {
            Rule::OneSided
        } else {
            Rule::Fixed
        }
    }

    /// The interval drawn: the one the rule decides on (the one-sided rule's bound has no upper
    /// end, so its chart shows the two-sided interval).
    fn interval(self, lift: &pb::Lift) -> Option<pb::Interval> {
        match self {
            Rule::Sequential => lift.sequential_interval,
            Rule::Bayesian => lift.credible_interval,
            Rule::Fixed | Rule::OneSided => lift.confidence_interval,
        }
    }

    /// The drawn interval's name, for the table's header.
    fn interval_name(self) -> &'static str {
        match self {
            Rule::Sequential => "Sequential interval",
            Rule::Bayesian => "Credible interval",
            Rule::Fixed | Rule::OneSided => "Confidence interval",
        }
    }

    /// The deciding figure's name and value as the page prints them.
    fn figure(self, lift: &pb::Lift) -> String {
        match self {
            Rule::Sequential => p_value("sequential p", lift.sequential_p_value),
            Rule::OneSided => p_value("one-sided p", lift.one_sided_p_value),
            Rule::Fixed => p_value("p", Some(lift.p_value)),
            Rule::Bayesian => format!(
                "chance to beat control {:.1}%",
                lift.chance_to_beat_control * 100.0
            ),
        }
    }
}

fn p_value(name: &str, p: Option<f64>) -> String {
    match p {
        Some(p) if p < 0.0001 => format!("{name} &lt; 0.0001"),
        Some(p) => format!("{name} = {p:.4}"),
        None => format!("{name}: none"),
    }
}

fn verdict(v: i32) -> &'static str {
    match pb::Verdict::try_from(v) {
        Ok(pb::Verdict::Higher) => "higher",
        Ok(pb::Verdict::Lower) => "lower",
        Ok(pb::Verdict::Inconclusive) => "inconclusive",
        Ok(pb::Verdict::NotEnoughInformation) => "not enough information",
        _ => "—",
    }
}

/// The results as markup: the sample-ratio warning (if any), then `<!--srm-end-->`, then the
/// rule and one table and chart per metric.
fn render_results(r: &pb::GetExperimentResultsResponse) -> String {
    let mut out = String::new();
    if let Some(p) = r.srm_p_value.filter(|p| *p < SRM_ALARM) {
        let users: Vec<String> = r
            .users
            .iter()
            .map(|u| format!("{} {}", u.arm, u.users))
            .collect();
        let _ = write!(
            out,
            "<div class=\"notice error srm\" role=\"alert\"><strong>Sample ratio mismatch</strong> \
             (p = {p:.2e} &lt; {SRM_ALARM}): the arms' users ({}) are not split as assigned. \
             Assignment or exposure logging is broken, and every figure below is suspect.</div>",
            escape(&users.join(", "))
        );
    }
    out.push_str("<!--srm-end-->");
    let rule = Rule::of(r);
    let _ = write!(
        out,
        "<p class=\"rule\">Decision rule: <strong>{}</strong></p>",
        escape(&r.decision_rule)
    );
    for metric in &r.metrics {
        let conversion = metric.kind == i32::from(pb::MetricKind::Conversion);
        let mut rows = String::new();
        let mut chart_rows = Vec::new();
        for arm in &metric.arms {
            let value = match arm.value {
                Some(v) if conversion => format!("{:.2}% ({} converted)", v * 100.0, arm.converted),
                Some(v) => format!("{v:.3}"),
                None => "—".to_owned(),
            };
            let (lift, interval, figure, judged) =
                match arm.comparison.as_ref().and_then(|c| c.relative.as_ref()) {
                    None => (
                        "control".to_owned(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ),
                    Some(l) if !l.unavailable.is_empty() => (
                        escape(&l.unavailable),
                        String::new(),
                        String::new(),
                        verdict(l.verdict).to_owned(),
                    ),
                    Some(l) => {
                        let drawn = rule.interval(l);
                        if let Some(i) = drawn {
                            chart_rows.push(chart::Row {
                                arm: arm.arm.clone(),
                                estimate: l.estimate,
                                lower: i.lower,
                                upper: i.upper,
                            });
                        }
                        (
                            format!("{:+.2}%", l.estimate * 100.0),
                            drawn.map_or(String::new(), |i| {
                                format!("{:+.2}% to {:+.2}%", i.lower * 100.0, i.upper * 100.0)
                            }),
                            rule.figure(l),
                            verdict(l.verdict).to_owned(),
                        )
                    }
                };
            let _ = write!(
                rows,
                "<tr><td>{arm}</td><td>{users}</td><td>{value}</td><td>{lift}</td>\
                 <td>{interval}</td><td>{figure}</td><td class=\"state\">{judged}</td></tr>",
                arm = escape(&arm.arm),
                users = arm.users,
                value = escape(&value),
            );
        }
        let title = format!("Relative lift of {} against control", metric.metric);
        let _ = write!(
            out,
            "<section class=\"metric\"><h2>{name} ({kind})</h2>\
             <table><thead><tr><th scope=\"col\">Arm</th><th scope=\"col\">Users</th>\
             <th scope=\"col\">{measure}</th><th scope=\"col\">Relative lift</th>\
             <th scope=\"col\">{interval}</th><th scope=\"col\">Decided on</th>\
             <th scope=\"col\">Verdict</th></tr></thead><tbody>{rows}</tbody></table>{chart}\
             </section>",
            name = escape(&metric.metric),
            kind = if conversion { "conversion" } else { "mean" },
            measure = if conversion {
                "Conversion rate"
            } else {
                "Mean"
            },
            interval = rule.interval_name(),
            chart = chart::lift(&title, &chart_rows, true),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(fields: &[(&str, &str)]) -> Form {
        Form(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn create_forms_as_a_table() {
        let ok = create_request(
            &form(&[
                ("id", " exp-1 "),
                (
                    "metrics",
                    "bought purchase conversion\n\nspend purchase mean\n",
                ),
                ("engine", "bayesian"),
                ("alpha", "0.1"),
                ("sequential", "off"),
            ]),
            "me".into(),
        )
        .unwrap();
        assert_eq!(ok.id, "exp-1");
        assert_eq!(ok.metrics.len(), 2);
        assert_eq!(ok.metrics[1].kind, i32::from(pb::MetricKind::Mean));
        let analysis = ok.analysis.unwrap();
        assert_eq!(analysis.alpha, Some(0.1));
        assert_eq!(analysis.sequential, Some(false));
        assert_eq!(analysis.engine, i32::from(pb::AnalysisEngine::Bayesian));
        for (field, value, names) in [
            ("metrics", "bought purchase", "line 1"),
            ("metrics", "a b conversion extra", "4 words"),
            ("alpha", "lots", "Alpha"),
            ("tuning", "NaN", "tuning"),
        ] {
            let err = create_request(&form(&[(field, value)]), "me".into()).unwrap_err();
            assert!(err.contains(names), "{err}");
        }
    }

    #[test]
    fn the_sample_ratio_warning_comes_first_and_only_when_flagged() {
        let results = |p: f64| pb::GetExperimentResultsResponse {
            srm_p_value: Some(p),
            decision_rule: "frequentist <fixed>".into(),
            ..Default::default()
        };
        let flagged = render_results(&results(1e-9));
        assert!(
            flagged.starts_with("<div class=\"notice error srm\""),
            "{flagged}"
        );
        assert!(flagged.contains("frequentist &lt;fixed&gt;"), "{flagged}");
        let fine = render_results(&results(0.5));
        assert!(!fine.contains("Sample ratio mismatch"), "{fine}");
    }
}
