//! `ui-bindgen WASM OUT_DIR NAME`: what `wasm-bindgen --target web --no-typescript
//! --out-name NAME --out-dir OUT_DIR WASM` writes (the JS glue and the processed wasm),
//! through the same library the wasm-bindgen CLI drives, so that building the dashboard
//! needs no `cargo install` of the CLI (a third of its compile work is its test runner's
//! server and downloader).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [wasm, out_dir, name] = args.as_slice() else {
        eprintln!("usage: ui-bindgen WASM OUT_DIR NAME");
        return ExitCode::from(2);
    };
    let mut bindgen = wasm_bindgen_cli_support::Bindgen::new();
    let generated = bindgen
        .web(true)
        .map(|b| {
            b.input_path(wasm)
                .typescript(false)
                .omit_default_module_path(false)
                .out_name(&name.to_string_lossy())
        })
        .and_then(|b| b.generate(out_dir));
    match generated {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ui-bindgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
