//! New experiment: pick tasks (with optional held-out sets), the base model, strategies
//! (each says what it answers), the budget and hyper-parameters, with an estimate of the
//! training time from measured throughput.

use leptos::prelude::*;
use leptos_router::hooks::use_navigate;
use multitune_api::{ApiError, Dataset, Experiment, ExperimentCreate, Hyper, Model, StrategyChoice, TaskRef};

use crate::{api, format, ErrorView};

fn strategy_label(s: &StrategyChoice) -> String {
    match s {
        StrategyChoice::Combined { .. } => "Combined".into(),
        StrategyChoice::Sequential { variant, .. } if variant == "merge_then_new" => "Sequential (merge-then-new)".into(),
        StrategyChoice::Sequential { .. } => "Sequential (continue)".into(),
        StrategyChoice::Separate { .. } => "Separate + merge".into(),
        StrategyChoice::MultiHead { .. } => "Multi-head".into(),
    }
}

/// Median training throughput reported by earlier runs on `model`.
pub fn measured_tokens_per_s(experiments: &[Experiment], model: &str) -> Option<f64> {
    let mut v: Vec<f64> = experiments
        .iter()
        .filter(|e| e.spec.model == model)
        .flat_map(|e| e.runs.iter().filter_map(|r| r.tokens_per_s))
        .filter(|t| t.is_finite() && *t > 0.0)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

#[component]
pub fn NewExperimentPage() -> impl IntoView {
    let datasets = RwSignal::new(Vec::<Dataset>::new());
    let models = RwSignal::new(Vec::<Model>::new());
    let history = RwSignal::new(Vec::<Experiment>::new());
    leptos::task::spawn_local(async move {
        if let Ok(d) = api::get::<Vec<Dataset>>("/api/datasets").await {
            datasets.set(d);
        }
        if let Ok(m) = api::get::<Vec<Model>>("/api/models").await {
            models.set(m);
        }
        if let Ok(h) = api::get::<Vec<Experiment>>("/api/experiments").await {
            history.set(h);
        }
    });
    let name = RwSignal::new("comparison".to_string());
    let model = RwSignal::new("default".to_string());
    // Chosen tasks: dataset id → held-out dataset id ("" = split off the training set).
    let chosen = RwSignal::new(Vec::<(String, String)>::new());
    let all = StrategyChoice::all();
    let picked = RwSignal::new(vec![true; all.len()]);
    let budget = RwSignal::new("16000".to_string());
    let hyper = RwSignal::new(Hyper { learning_rate: 1e-3, eval_limit: Some(50), ..Hyper::default() });
    let seeds = RwSignal::new(String::new());
    let error = RwSignal::new(None::<ApiError>);
    let busy = RwSignal::new(false);
    let all_for_view = all.clone();
    let trainings = move || {
        let n = picked.get().iter().filter(|p| **p).count();
        let k = seeds.get().split(',').filter(|s| !s.trim().is_empty()).count().max(1);
        n * k
    };
    let estimate = move || {
        let b: usize = budget.get().trim().parse().unwrap_or(0);
        let m = model.get();
        let tps = measured_tokens_per_s(&history.get(), &m).unwrap_or_else(|| format::default_tokens_per_s(&m));
        format!(
            "About {} of training at ~{:.0} tokens/s (plus evaluation).",
            format::duration(format::estimate_seconds(b, trainings(), tps)),
            tps
        )
    };
    let navigate = use_navigate();
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let strategies: Vec<StrategyChoice> =
            all.iter().zip(picked.get()).filter(|(_, p)| *p).map(|(s, _)| s.clone()).collect();
        let mut h = hyper.get();
        h.seeds = seeds.get().split(',').filter_map(|s| s.trim().parse().ok()).collect();
        let spec = ExperimentCreate {
            name: name.get(),
            model: model.get(),
            tasks: chosen
                .get()
                .into_iter()
                .map(|(d, e)| TaskRef { dataset: d, eval_dataset: Some(e).filter(|e| !e.is_empty()) })
                .collect(),
            strategies,
            budget_tokens: budget.get().trim().parse().unwrap_or(0),
            hyper: h,
        };
        busy.set(true);
        let navigate = navigate.clone();
        leptos::task::spawn_local(async move {
            match api::post::<_, Experiment>("/api/experiments", &spec).await {
                Ok(e) => navigate(&format!("/experiments/{}", e.id), Default::default()),
                Err(e) => error.set(Some(e)),
            }
            busy.set(false);
        });
    };
    let num = move |get: fn(&Hyper) -> String, set: fn(&mut Hyper, &str)| {
        (move || get(&hyper.get()), move |ev: leptos::ev::Event| hyper.update(|h| set(h, &event_target_value(&ev))))
    };
    let (lr_v, lr_set) = num(|h| h.learning_rate.to_string(), |h, v| h.learning_rate = v.parse().unwrap_or(h.learning_rate));
    let (rank_v, rank_set) = num(|h| h.rank.to_string(), |h, v| h.rank = v.parse().unwrap_or(h.rank));
    let (bs_v, bs_set) = num(|h| h.batch_size.to_string(), |h, v| h.batch_size = v.parse().unwrap_or(h.batch_size));
    let (mt_v, mt_set) = num(|h| h.max_tokens.to_string(), |h, v| h.max_tokens = v.parse().unwrap_or(h.max_tokens));
    let (el_v, el_set) = num(
        |h| h.eval_limit.map(|v| v.to_string()).unwrap_or_default(),
        |h, v| h.eval_limit = v.parse().ok(),
    );
    view! {
        <h1>"New experiment"</h1>
        <form class="new" on:submit=submit>
            <label for="exp-name">"Name"</label>
            <input id="exp-name" required prop:value=move || name.get() on:input=move |ev| name.set(event_target_value(&ev)) />
            <fieldset>
                <legend>"Tasks (one dataset each)"</legend>
                {move || {
                    let ds = datasets.get();
                    if ds.is_empty() {
                        return view! { <p class="empty">"No datasets yet: "<a href="/datasets">"upload some"</a>"."</p> }.into_any();
                    }
                    let options = ds.clone();
                    ds.into_iter().map(|d| {
                        let id = d.id.clone();
                        let id2 = d.id.clone();
                        let id3 = d.id.clone();
                        let options = options.clone();
                        view! {
                            <div class="task">
                                <input type="checkbox" id=format!("task-{}", d.id)
                                    prop:checked=move || chosen.get().iter().any(|c| c.0 == id)
                                    on:change=move |ev| {
                                        let on = event_target_checked(&ev);
                                        chosen.update(|c| {
                                            c.retain(|x| x.0 != id2);
                                            if on { c.push((id2.clone(), String::new())); }
                                        });
                                    } />
                                <label for=format!("task-{}", d.id)>{format!("{} ({}, {} rows)", d.name, d.kind, d.rows)}</label>
                                <label for=format!("eval-{}", d.id) class="small">" held out: "</label>
                                <select id=format!("eval-{}", d.id) on:change=move |ev| {
                                    let v = event_target_value(&ev);
                                    chosen.update(|c| if let Some(x) = c.iter_mut().find(|x| x.0 == id3) { x.1 = v.clone(); });
                                }>
                                    <option value="">"split 20% off"</option>
                                    {options.iter().filter(|o| o.id != d.id).map(|o| view! {
                                        <option value=o.id.clone()>{o.name.clone()}</option>
                                    }).collect_view()}
                                </select>
                            </div>
                        }
                    }).collect_view().into_any()
                }}
            </fieldset>
            <label for="model">"Base model"</label>
            <select id="model" on:change=move |ev| model.set(event_target_value(&ev))>
                {move || models.get().into_iter().map(|m| {
                    let selected = m.id == model.get();
                    view! { <option value=m.id.clone() selected=selected>{m.name.clone()}</option> }
                }).collect_view()}
            </select>
            <fieldset>
                <legend>"Strategies"</legend>
                {all_for_view.iter().enumerate().map(|(i, s)| view! {
                    <div class="strategy">
                        <input type="checkbox" id=format!("strategy-{i}") prop:checked=move || picked.get()[i]
                            on:change=move |ev| { let on = event_target_checked(&ev); picked.update(|p| p[i] = on); } />
                        <label for=format!("strategy-{i}")><strong>{strategy_label(s)}</strong>" — "{s.explanation()}</label>
                    </div>
                }).collect_view()}
            </fieldset>
            <fieldset>
                <legend>"Budget and hyper-parameters"</legend>
                <label for="budget">"Training tokens per strategy"</label>
                <input id="budget" inputmode="numeric" prop:value=move || budget.get() on:input=move |ev| budget.set(event_target_value(&ev)) />
                <label for="lr">"Learning rate"</label><input id="lr" prop:value=lr_v on:input=lr_set />
                <label for="rank">"LoRA rank"</label><input id="rank" prop:value=rank_v on:input=rank_set />
                <label for="batch">"Batch size"</label><input id="batch" prop:value=bs_v on:input=bs_set />
                <label for="max-tokens">"Longest example (tokens)"</label><input id="max-tokens" prop:value=mt_v on:input=mt_set />
                <label for="eval-limit">"Held-out examples per task (blank: all)"</label><input id="eval-limit" prop:value=el_v on:input=el_set />
                <label for="seeds">"Repeat over seeds (e.g. 1,2,3; blank: once)"</label>
                <input id="seeds" prop:value=move || seeds.get() on:input=move |ev| seeds.set(event_target_value(&ev)) />
            </fieldset>
            <p class="estimate" role="status">{estimate}</p>
            <button type="submit" disabled=move || busy.get()>"Start"</button>
        </form>
        {move || error.get().map(|e| view! { <ErrorView error=e/> })}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multitune_api::{Run, Status};

    fn exp(model: &str, tps: &[f64]) -> Experiment {
        Experiment {
            id: "x".into(),
            name: "x".into(),
            status: Status::Done,
            error: None,
            spec: ExperimentCreate {
                name: "x".into(),
                model: model.into(),
                tasks: vec![],
                strategies: vec![],
                budget_tokens: 1,
                hyper: Hyper::default(),
            },
            created_at: String::new(),
            started_at: None,
            finished_at: None,
            queue_position: None,
            runs: tps
                .iter()
                .map(|&t| Run {
                    id: 1,
                    experiment_id: "x".into(),
                    name: "r".into(),
                    index: 0,
                    status: Status::Done,
                    stage: None,
                    step: 0,
                    total_steps: 0,
                    loss: None,
                    tokens_per_s: Some(t),
                    elapsed_s: 0.0,
                    eta_s: None,
                    has_adapter: true,
                    has_heads: false,
                })
                .collect(),
            has_report: true,
        }
    }

    #[test]
    fn throughput_comes_from_runs_of_the_same_model() {
        let h = vec![exp("default", &[100.0, 120.0, 90.0]), exp("tiny", &[9000.0])];
        assert_eq!(measured_tokens_per_s(&h, "default"), Some(100.0));
        assert_eq!(measured_tokens_per_s(&h, "tiny"), Some(9000.0));
        assert_eq!(measured_tokens_per_s(&h, "other"), None);
    }
}
