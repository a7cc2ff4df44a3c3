//! One comparison, asked for through each front door: `multitune compare` flags, the
//! server's experiment JSON and the dashboard's form. All go through the contract
//! (`multitune_api`, with its one set of defaults) and the engine's `strategy::request`,
//! so the strategies and the runs' training configuration must come out equal (they
//! once differed: the CLI refit merges at rank 16 whatever the rank, the server at twice
//! the rank; the learning rate's default was 2e-4 in three places and 0.001 in the form).

use clap::Parser;
use multitune_api::ExperimentCreate;
use multitune_cli::{Cli, Cmd};

/// The CLI's comparison for these flags (after `multitune compare --model tiny`).
fn from_cli(flags: &[&str], n_tasks: usize) -> multitune::strategy::CompareConfig {
    let mut argv = vec!["multitune", "compare", "--model", "tiny", "--out", "unused"];
    argv.extend_from_slice(flags);
    let cli = Cli::try_parse_from(&argv).expect("the flags parse");
    let Cmd::Compare(args) = cli.cmd else { panic!("not the compare command") };
    args.config(n_tasks).expect("a valid comparison")
}

/// The server's comparison for this experiment JSON.
fn from_server(spec: serde_json::Value) -> multitune::strategy::CompareConfig {
    let spec: ExperimentCreate = serde_json::from_value(spec).expect("a valid request");
    multitune_server::jobs::compare_config(&spec).expect("a valid comparison")
}

fn tasks(n: usize) -> serde_json::Value {
    serde_json::Value::Array((0..n).map(|i| serde_json::json!({ "dataset": format!("{i:016x}") })).collect())
}

/// The dashboard's form, untouched, with `n` tasks ticked: the request it sends, as the
/// server reads it.
fn from_form(n: usize) -> multitune::strategy::CompareConfig {
    let tasks: Vec<(String, String)> = (0..n).map(|i| (format!("{i:016x}"), String::new())).collect();
    let sent =
        multitune_ui::forms::FormFields::default().request(&tasks, &[], &[]).expect("the untouched form is valid");
    from_server(serde_json::to_value(sent).unwrap())
}

#[test]
fn every_front_door_left_at_its_defaults_asks_for_the_same_comparison() {
    // No option passed anywhere: the CLI without flags (but the tasks and the output
    // folder it needs), the API with only its required fields, the form untouched.
    let Cmd::Compare(args) =
        Cli::try_parse_from(["multitune", "compare", "--tasks", "a", "b", "--out", "unused"]).unwrap().cmd
    else {
        panic!("not the compare command")
    };
    assert_eq!(args.model.model, multitune_api::defaults::MODEL);
    let cli = args.config(2).expect("a valid comparison");
    let api = from_server(serde_json::json!({ "name": "x", "tasks": tasks(2) }));
    let form = from_form(2);
    assert_eq!(cli, api);
    assert_eq!(cli, form);
    // And they are the contract's defaults, down to the trainer's.
    let d = multitune_api::Hyper::default();
    assert_eq!(cli.budget_tokens, multitune_api::defaults::BUDGET_TOKENS);
    assert_eq!(
        (cli.train.learning_rate, cli.train.lora.rank, cli.train.batch_size),
        (d.learning_rate, d.rank, d.batch_size)
    );
    let trainer = multitune::train::TrainConfig::default();
    assert_eq!(
        (trainer.learning_rate, trainer.lora.rank, trainer.lora.alpha),
        (d.learning_rate, d.rank, cli.train.lora.alpha)
    );
    assert_eq!(cli.strategies.len(), multitune_api::STRATEGY_NAMES.len());
}

#[test]
fn cli_flags_and_experiment_json_give_the_same_comparison() {
    // Every strategy with its defaults, at a rank other than 8 (where the old CLI's fixed
    // merge rank 16 happened to agree with the server's 2 × rank, and the API's head rank 8
    // with the CLI's `--rank`): the heads follow the rank on both sides.
    let cli = from_cli(&["--tasks", "a", "b", "c", "--strategies", "all", "--budget-tokens", "9000", "--rank", "4"], 3);
    let server = from_server(serde_json::json!({
        "name": "x", "model": "tiny", "tasks": tasks(3), "budget_tokens": 9000,
        "strategies": [
            {"strategy": "combined"},
            {"strategy": "sequential", "variant": "continue"},
            {"strategy": "sequential", "variant": "merge_then_new"},
            {"strategy": "separate"},
            {"strategy": "multi_head"}
        ],
        "hyper": {"rank": 4}
    }));
    assert_eq!(cli.strategies, server.strategies);
    assert_eq!(cli.train, server.train);
    assert_eq!(cli.eval, server.eval);
    assert_eq!(cli, server);
    assert_eq!(cli.train.lora.alpha, 8.0);
    let merge_rank = cli.strategies.iter().find_map(|s| match s {
        multitune::strategy::StrategySpec::Separate { merge_rank, .. } => Some(*merge_rank),
        _ => None,
    });
    assert_eq!(merge_rank, Some(8), "merges refit at twice the adapter rank");

    // Options and hyper-parameters set on both sides.
    let cli = from_cli(
        &[
            "--tasks",
            "a",
            "b",
            "--strategies",
            "combined,sequential,separate",
            "--budget-tokens",
            "1234",
            "--mixing",
            "temperature:2",
            "--task-tag",
            "--replay",
            "0.25",
            "--merges",
            "ties,dare",
            "--lr",
            "0.001",
            "--batch-size",
            "4",
            "--max-tokens",
            "128",
            "--seed",
            "7",
            "--seeds",
            "1,2",
            "--bootstrap",
            "50",
            "--tune-lr",
            "--lr-grid",
            "1e-4,5e-4",
            "--data-fractions",
            "0.25,0.5,1",
            "--retention",
        ],
        2,
    );
    let server = from_server(serde_json::json!({
        "name": "x", "model": "tiny", "tasks": tasks(2), "budget_tokens": 1234,
        "strategies": [
            {"strategy": "combined", "mixing": {"kind": "temperature", "t": 2.0}, "task_tag": true},
            {"strategy": "sequential", "variant": "continue", "replay": 0.25},
            {"strategy": "separate", "merges": ["ties", "dare"]}
        ],
        "hyper": {"learning_rate": 0.001, "batch_size": 4, "max_tokens": 128, "seed": 7, "seeds": [1, 2], "bootstrap": 50,
                  "tune_lr": true, "lr_grid": [0.0001, 0.0005], "data_fractions": [0.25, 0.5, 1.0], "retention": true}
    }));
    assert_eq!(cli.lr_search, Some(vec![1e-4, 5e-4]));
    assert_eq!(cli.data_fractions, vec![0.25, 0.5, 1.0]);
    assert!(cli.retention);
    assert_eq!(cli, server);
}

#[test]
fn both_sides_refuse_the_same_bad_options() {
    let mut argv =
        vec!["multitune", "compare", "--model", "tiny", "--out", "x", "--tasks", "a", "--budget-tokens", "9"];
    argv.extend(["--strategies", "sequential", "--replay", "2", "--tune-lr", "--lr-grid", "1e-3,1e-3"]);
    argv.extend(["--data-fractions", "0.5,0.5,1.5"]);
    let Cmd::Compare(args) = Cli::try_parse_from(&argv).unwrap().cmd else { panic!() };
    let cli_err = args.config(1).unwrap_err().to_string();
    let spec: ExperimentCreate = serde_json::from_value(serde_json::json!({
        "name": "x", "model": "tiny", "tasks": tasks(1), "budget_tokens": 9,
        "strategies": [{"strategy": "sequential", "variant": "continue", "replay": 2.0}],
        "hyper": {"tune_lr": true, "lr_grid": [0.001, 0.001], "data_fractions": [0.5, 0.5, 1.5]}
    }))
    .unwrap();
    let server_err = multitune_server::jobs::compare_config(&spec).unwrap_err().details.join("; ");
    assert!(cli_err.contains("replay must be between 0 and 1, not 2"), "{cli_err}");
    assert!(cli_err.contains("hyper: lr_grid: a rate is listed twice"), "{cli_err}");
    // Each door names the field as its users write it.
    assert!(cli_err.contains("--data-fractions: 1.5 is not a share of the training data"), "{cli_err}");
    assert!(cli_err.contains("--data-fractions: 0.5 is listed twice"), "{cli_err}");
    assert!(server_err.contains("hyper.data_fractions: 0.5 is listed twice"), "{server_err}");
    assert_eq!(cli_err, server_err.replace("hyper.data_fractions", "--data-fractions"));
}
