// Early page: tokenizer + text encoder of the default model (random weights), on WebGPU or wasm CPU.
import init, { initBackend, Tokenizer, ClipTextEncoder } from './pkg/control_clip.js';

const MODEL = 'models/default';
const $ = id => document.getElementById(id);
const status = text => { $('status').textContent = text; };

async function bytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

let tokenizer;
const encoders = {};

function showTokens() {
  if (!tokenizer) return;
  const t = tokenizer.encode($('prompt').value);
  const used = Array.from(t.ids).findIndex((id, i) => i > 0 && id === 49407) - 1;
  $('tokens').textContent = `${used} of 75 tokens` + (t.notice ? ` — ${t.notice}` : '');
}

async function encode() {
  const backend = $('backend').value;
  try {
    status(`starting ${backend}…`);
    await initBackend(backend);
    if (!encoders[backend]) {
      const config = await (await fetch(`${MODEL}/text_encoder/config.json`)).text();
      encoders[backend] = await ClipTextEncoder.load(backend, `${MODEL}/text_encoder`, config, await bytes(`${MODEL}/text_encoder/model.safetensors`));
    }
    const t = tokenizer.encode($('prompt').value);
    const t0 = performance.now();
    const out = await encoders[backend].encode(t.ids, 1, 0);
    const ms = performance.now() - t0;
    const pooled = Array.from(out.poolerOutput.slice(0, 6), v => v.toFixed(3)).join(', ');
    status(`context ${out.shape.join('×')} in ${ms.toFixed(0)} ms on ${backend}\npooled: [${pooled}, …]`);
  } catch (e) {
    status(`Error: ${e.message}`);
  }
}

try {
  await init();
  tokenizer = new Tokenizer(`${MODEL}/tokenizer.json`, await bytes(`${MODEL}/tokenizer.json`));
  if (!navigator.gpu) {
    $('backend').value = 'cpu';
    status('This browser has no WebGPU (try a recent Chrome or Edge, or Firefox with dom.webgpu.enabled); using the CPU backend.');
  } else {
    status('ready');
  }
  showTokens();
  $('prompt').addEventListener('input', showTokens);
  $('encode').addEventListener('click', encode);
  $('prompt').addEventListener('keydown', e => { if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') encode(); });
} catch (e) {
  status(`Error: ${e.message}`);
}
