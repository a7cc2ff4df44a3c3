#!/usr/bin/env python3
"""Builds the dashboard (frontend/) into dist/, which the server serves (`make ui`).

Three steps, each done by the tool made for it:
1. cargo builds the `multitune-ui` binary for wasm32 in the `ui` profile (size-optimised);
2. wasm-bindgen's library at the Cargo.lock version (tools/ui-bindgen, which `make
   ui-tools` builds; `$UI_BINDGEN` names it) writes its JS glue for `--target web`;
3. this script names the JS, the wasm and the stylesheet by a hash of their content (a
   browser never runs a stale dashboard after an upgrade), and writes index.html from
   frontend/index.html with the stylesheet, the preloads (with SRI hashes) and the
   loader: one inline module script, which the server allows by its SHA-256.

dist/ is replaced whole and only once everything is written: a failed build leaves the
previous dashboard in place. Nothing is downloaded.
"""

import base64
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = "wasm32-unknown-unknown"
PROFILE = "ui"
NAME = "multitune-ui"


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def main() -> int:
    cargo = os.environ.get("CARGO", "cargo")
    dist = pathlib.Path(os.environ.get("DIST", ROOT / "dist"))
    target_dir = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target_dir.is_absolute():
        target_dir = ROOT / target_dir
    build = [cargo, "build", "--profile", PROFILE, "--target", TARGET, "-p", NAME, "--bin", NAME]
    subprocess.run(build, cwd=ROOT, check=True)
    wasm_in = target_dir / TARGET / PROFILE / f"{NAME}.wasm"

    dist.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dist-", dir=dist.parent) as tmp:
        out = pathlib.Path(tmp) / "dist"
        bindgen = pathlib.Path(tmp) / "bindgen"
        ui_bindgen = os.environ.get("UI_BINDGEN", str(target_dir / "tools" / "debug" / "ui-bindgen"))
        subprocess.run([ui_bindgen, str(wasm_in), str(bindgen), NAME], check=True)
        js = (bindgen / f"{NAME}.js").read_bytes()
        wasm = (bindgen / f"{NAME}_bg.wasm").read_bytes()
        css = (ROOT / "assets" / "style.css").read_bytes()
        tag = hashlib.sha256(js + wasm).hexdigest()[:16]
        files = {
            f"{NAME}-{tag}.js": js,
            f"{NAME}-{tag}_bg.wasm": wasm,
            f"style-{hashlib.sha256(css).hexdigest()[:16]}.css": css,
        }
        js_name, wasm_name, css_name = files
        head = (
            f'    <link rel="stylesheet" href="/{css_name}" integrity="{sri(css)}" />\n'
            f'    <link rel="modulepreload" href="/{js_name}" crossorigin="anonymous" integrity="{sri(js)}" />\n'
            f'    <link rel="preload" href="/{wasm_name}" crossorigin="anonymous" integrity="{sri(wasm)}"'
            ' as="fetch" type="application/wasm" />\n'
            '    <script type="module">\n'
            f"import init from '/{js_name}';\n"
            f"await init({{ module_or_path: '/{wasm_name}' }});\n"
            "</script>\n"
        )
        template = (ROOT / "frontend" / "index.html").read_text()
        if template.count("</head>") != 1:
            print("frontend/index.html must have one </head>", file=sys.stderr)
            return 1
        out.mkdir()
        for name, data in files.items():
            (out / name).write_bytes(data)
        (out / "index.html").write_text(template.replace("</head>", head + "  </head>"))
        # Swap in the new dist/ whole; the old one goes only after the new one is in place.
        old = pathlib.Path(tmp) / "old"
        if dist.exists():
            dist.rename(old)
        out.rename(dist)
    size = sum(len(d) for d in files.values())
    print(f"dashboard: {dist} ({len(files) + 1} files, {size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
