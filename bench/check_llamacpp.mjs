// Runs Multitune's GGUF exports in llama.cpp itself (node-llama-cpp's prebuilt CPU build)
// and prints the greedy continuation of a chat prompt: the merged model (f16, q8_0) and
// the base GGUF with the LoRA adapter GGUF applied. Compare with
// `multitune generate --model default --adapter RUN --prompt P --max-new-tokens N`.
// Usage: node check_llamacpp.mjs BASE.gguf EXPORT_DIR... -- PROMPT
// (npm i -E node-llama-cpp@3.21.1 in this folder or any parent.)
import { getLlama } from "node-llama-cpp";

const args = process.argv.slice(2);
const sep = args.indexOf("--");
const [base, ...dirs] = args.slice(0, sep);
const prompt = args.slice(sep + 1).join(" ");
const text = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    + `<|im_start|>user\n${prompt}<|im_end|>\n<|im_start|>assistant\n`;
const llama = await getLlama({ gpu: false, build: "never" });

async function greedy(modelPath, lora) {
    const model = await llama.loadModel({ modelPath });
    const context = await model.createContext({ contextSize: 512, ...(lora ? { lora: { adapters: [{ filePath: lora }] } } : {}) });
    const seq = context.getSequence();
    const out = [];
    for await (const t of seq.evaluate(model.tokenize(text, true), { temperature: 0 })) {
        if (model.detokenize([t], true) === "<|im_end|>" || out.length >= 16) break;
        out.push(t);
    }
    const answer = model.detokenize(out);
    await context.dispose();
    await model.dispose();
    return answer;
}

for (const d of dirs) {
    for (const f of ["model-f16.gguf", "model-q8_0.gguf"]) {
        try {
            console.log(`${d}/${f}: ${JSON.stringify(await greedy(`${d}/${f}`))}`);
        } catch (e) {
            if (!String(e).includes("ENOENT") && !String(e).includes("not exist")) throw e;
        }
    }
    console.log(`${base} + ${d}/adapter.gguf: ${JSON.stringify(await greedy(base, `${d}/adapter.gguf`))}`);
}
console.log(`${base} alone: ${JSON.stringify(await greedy(base))}`);
