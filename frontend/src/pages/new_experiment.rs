//! New experiment: pick tasks (with optional held-out sets), the base model, strategies
//! (each says what it answers), the budget and hyper-parameters, with an estimate of the
//! training time from measured throughput.

use leptos::prelude::*;
use leptos_router::hooks::use_navigate;
use multitune_api::{defaults, ApiError, Dataset, Experiment, Model, Power, SequentialVariant, StrategyChoice};

use crate::forms::{held_out_sizes, measured_tokens_per_s, FormFields};
use crate::{api, format, ErrorView};

fn strategy_label(s: &StrategyChoice) -> String {
    match s {
        StrategyChoice::Combined { .. } => "Combined".into(),
        StrategyChoice::Sequential { variant: SequentialVariant::MergeThenNew, .. } => {
            "Sequential (merge-then-new)".into()
        }
        StrategyChoice::Sequential { .. } => "Sequential (continue)".into(),
        StrategyChoice::Separate { .. } => "Separate + merge".into(),
        StrategyChoice::MultiHead { .. } => "Multi-head".into(),
    }
}

/// A text input bound to a signal.
#[component]
fn Field(id: &'static str, value: RwSignal<String>) -> impl IntoView {
    view! { <input id=id prop:value=move || value.get() on:input=move |ev| value.set(event_target_value(&ev)) /> }
}

/// The New experiment page. One component on purpose: every field's signal is read by
/// the estimate and the submit handler, and most of its length is `view!` markup; the
/// logic it needs (form parsing, the estimate) lives in plain functions above, tested
/// natively.
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
    // The untouched form: the contract's defaults (`FormFields::default`).
    let start = FormFields::default();
    let name = RwSignal::new(start.name);
    let model = RwSignal::new(start.model);
    // Chosen tasks: dataset id → held-out dataset id ("" = split off the training set).
    let chosen = RwSignal::new(Vec::<(String, String)>::new());
    // Keep sets: dataset ids scored with every run, never trained on.
    let keep = RwSignal::new(Vec::<String>::new());
    let all = StrategyChoice::all();
    let picked = RwSignal::new(start.picked);
    let budget = RwSignal::new(start.budget);
    let lr = RwSignal::new(start.lr);
    let rank = RwSignal::new(start.rank);
    let method = RwSignal::new(start.method);
    let methods = RwSignal::new(start.methods);
    let lora_plus = RwSignal::new(start.lora_plus);
    let batch = RwSignal::new(start.batch);
    let max_tokens = RwSignal::new(start.max_tokens);
    let eval_limit = RwSignal::new(start.eval_limit);
    let seeds = RwSignal::new(start.seeds);
    let tune_lr = RwSignal::new(start.tune_lr);
    let mixing = RwSignal::new(start.mixing);
    let tune_merges = RwSignal::new(start.tune_merges);
    let data_fractions = RwSignal::new(start.data_fractions);
    let retention = RwSignal::new(start.retention);
    let error = RwSignal::new(None::<ApiError>);
    let busy = RwSignal::new(false);
    let all_for_view = all.clone();
    let estimate = move || {
        let b: usize = budget.get().trim().parse().unwrap_or(0);
        let m = model.get();
        let tps = measured_tokens_per_s(&history.get(), &m).unwrap_or_else(|| format::default_tokens_per_s(&m));
        let shape = FormFields {
            picked: picked.get(),
            seeds: seeds.get(),
            tune_lr: tune_lr.get(),
            mixing: mixing.get(),
            data_fractions: data_fractions.get(),
            methods: methods.get(),
            ..FormFields::default()
        };
        format!(
            "About {} of training at ~{:.0} tokens/s (plus evaluation{}{}).",
            format::duration(format::estimate_seconds(b, 1, tps) * shape.budgets()),
            tps,
            if tune_lr.get() || mixing.get() == "search" { ", with the searches" } else { "" },
            if tune_merges.get() { " and the merge search" } else { "" }
        )
    };
    // What the chosen held-out sets can tell apart (the engine's statement, from the server).
    let power = RwSignal::new(None::<Power>);
    Effect::new(move |_| {
        let sizes = held_out_sizes(&datasets.get(), &chosen.get(), &eval_limit.get());
        if sizes.is_empty() {
            power.set(None);
            return;
        }
        let q = sizes.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        leptos::task::spawn_local(async move {
            power.set(api::get::<Power>(&format!("/api/power?examples={q}")).await.ok());
        });
    });
    let navigate = use_navigate();
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let fields = FormFields {
            name: name.get(),
            model: model.get(),
            picked: picked.get(),
            budget: budget.get(),
            lr: lr.get(),
            rank: rank.get(),
            method: method.get(),
            methods: methods.get(),
            lora_plus: lora_plus.get(),
            batch: batch.get(),
            max_tokens: max_tokens.get(),
            eval_limit: eval_limit.get(),
            seeds: seeds.get(),
            tune_lr: tune_lr.get(),
            mixing: mixing.get(),
            tune_merges: tune_merges.get(),
            data_fractions: data_fractions.get(),
            retention: retention.get(),
        };
        let spec = match fields.request(&chosen.get(), &keep.get(), &datasets.get()) {
            Ok(spec) => spec,
            Err(details) => {
                error.set(Some(ApiError {
                    code: "invalid".into(),
                    message: "Some settings are not valid".into(),
                    details,
                }));
                return;
            }
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
    view! {
        <h1>"New experiment"</h1>
        <form class="new" on:submit=submit>
            <label for="exp-name">"Name"</label>
            <input id="exp-name" required prop:value=move || name.get() on:input=move |ev| name.set(event_target_value(&ev)) />
            <fieldset>
                <legend>"Tasks (one dataset each) and keep sets (datasets that must not get worse: scored, never trained on)"</legend>
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
                        let (id4, id5) = (d.id.clone(), d.id.clone());
                        let options = options.clone();
                        view! {
                            <div class="task">
                                <input type="checkbox" id=format!("task-{}", d.id) data-name=d.name.clone()
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
                                    <option value="">{format!("split {:.0}% off", 100.0 * defaults::EVAL_SPLIT)}</option>
                                    {options.iter().filter(|o| o.id != d.id).map(|o| view! {
                                        <option value=o.id.clone()>{o.name.clone()}</option>
                                    }).collect_view()}
                                </select>
                                <input type="checkbox" id=format!("keep-{}", d.id) data-name=d.name.clone()
                                    prop:checked=move || keep.get().contains(&id4)
                                    on:change=move |ev| {
                                        let on = event_target_checked(&ev);
                                        keep.update(|k| {
                                            k.retain(|x| *x != id5);
                                            if on { k.push(id5.clone()); }
                                        });
                                    } />
                                <label for=format!("keep-{}", d.id) class="small"
                                    title="A keep set: scored with the base model and every run, never trained on; the report says which runs make it worse">
                                    " keep (must not get worse)"
                                </label>
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
                <label for="mixing">"Task mixing of the combined and multi-head runs"</label>
                <select id="mixing" on:change=move |ev| mixing.set(event_target_value(&ev))>
                    {[
                        ("proportional", "proportional to each task's size"),
                        ("temperature:2", "temperature 2 (between proportional and uniform)"),
                        ("uniform", "uniform (every task equally)"),
                        ("search", "search: pick one of the three on a validation split (its training counts in the run's cost)"),
                    ].into_iter().map(|(v, text)| {
                        view! { <option value=v selected=move || mixing.get() == v>{text}</option> }
                    }).collect_view()}
                </select>
                <div class="tune-lr">
                    <input type="checkbox" id="tune-merges" prop:checked=move || tune_merges.get()
                        on:change=move |ev| tune_merges.set(event_target_checked(&ev)) />
                    <label for="tune-merges">"Tune the merges on a validation split (linear and task arithmetic: per-task weights; TIES: density and scale; DARE: drop rate and scale); each tuned merge is reported beside its defaults"</label>
                </div>
            </fieldset>
            <fieldset>
                <legend>"Budget and hyper-parameters"</legend>
                <label for="budget">"Training tokens per strategy"</label>
                <input id="budget" inputmode="numeric" prop:value=move || budget.get() on:input=move |ev| budget.set(event_target_value(&ev)) />
                <label for="lr">"Learning rate"</label><Field id="lr" value=lr />
                <div class="tune-lr">
                    <input type="checkbox" id="tune-lr" prop:checked=move || tune_lr.get()
                        on:change=move |ev| tune_lr.set(event_target_checked(&ev)) />
                    <label for="tune-lr">{format!(
                        "Tune each strategy's learning rate ({}, chosen on a validation split of the training data; the rate above is then unused)",
                        defaults::LR_GRID.map(|r| format!("{r:e}")).join(", ")
                    )}</label>
                </div>
                <label for="rank">"LoRA rank"</label><Field id="rank" value=rank />
                <label for="method">"Adapter method"</label>
                <select id="method" on:change=move |ev| method.set(event_target_value(&ev))>
                    {[
                        ("lora", "LoRA"),
                        ("rslora", "rsLoRA (scale α/√r)"),
                        ("dora", "DoRA (a magnitude per output row; no merges, no merge-then-new)"),
                        ("pissa", "PiSSA (start from each weight's top singular vectors)"),
                    ].into_iter().map(|(v, text)| {
                        view! { <option value=v selected=move || method.get() == v>{text}</option> }
                    }).collect_view()}
                </select>
                <p class="hint" id="method-hint">"PiSSA moves the weights' principal directions and LoRA+ speeds up B: both usually want another learning rate than plain LoRA — tick the learning-rate search above to give each its own."</p>
                <label for="methods">"Compare adapter methods: train every strategy with each (e.g. lora,dora; blank: only the method above). The report compares them per strategy; DoRA skips the merges and merge-then-new"</label>
                <input id="methods" prop:value=move || methods.get() on:input=move |ev| methods.set(event_target_value(&ev)) />
                <label for="lora-plus">"LoRA+: B's learning rate as a multiple of A's (e.g. 16; blank: the same)"</label>
                <Field id="lora-plus" value=lora_plus />
                <label for="batch">"Batch size"</label><Field id="batch" value=batch />
                <label for="max-tokens">"Longest example (tokens)"</label><Field id="max-tokens" value=max_tokens />
                <label for="eval-limit">"Held-out examples per task (blank: all)"</label><Field id="eval-limit" value=eval_limit />
                <label for="seeds">"Repeat over seeds (e.g. 1,2,3; blank: once)"</label>
                <input id="seeds" prop:value=move || seeds.get() on:input=move |ev| seeds.set(event_target_value(&ev)) />
                <div class="tune-lr">
                    <input type="checkbox" id="retention" prop:checked=move || retention.get()
                        on:change=move |ev| retention.set(event_target_checked(&ev)) />
                    <label for="retention">"Measure what each run keeps of the base model (a probe of 120 varied prompts: KL from the base model and the share of unchanged answers; adds scoring time)"</label>
                </div>
                <label for="data-fractions">"Data-size curves: also train on these shares of each task's training data (e.g. 0.25,0.5; blank: the full data only)"</label>
                <input id="data-fractions" prop:value=move || data_fractions.get() on:input=move |ev| data_fractions.set(event_target_value(&ev)) />
            </fieldset>
            <p class="estimate" role="status">{estimate}</p>
            {move || power.get().map(|p| {
                let class = if p.detectable > 0.10 { "power warn" } else { "power" };
                view! { <p class=class id="power">{p.text}</p> }
            })}
            <button type="submit" disabled=move || busy.get()>"Start"</button>
        </form>
        {move || error.get().map(|e| view! { <ErrorView error=e/> })}
    }
}
