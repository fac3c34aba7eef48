// Browser smoke path: tokenize with the wasm tokenizer, run the small text encoder from a fixture folder
// on the chosen backend, compare with the transformers outputs in io.safetensors, and check that broken
// inputs come back as JS Errors with clear messages. Writes a JSON report into #result.
import init, { initBackend, Tokenizer, ClipTextEncoder } from '/www/pkg/control_clip.js';
import { bytes, readSafetensors, maxAbsErr, expectError } from './util.js';

const params = new URLSearchParams(location.search);
const backend = params.get('backend') || 'wgpu';
const FIXTURES = '/tests/fixtures';
const MODEL = `${FIXTURES}/clip_text/sd-mini-f16`;
const result = document.getElementById('result');

async function main() {
  const report = { backend };
  await init();
  const t0 = performance.now();
  report.backendStarted = await initBackend(backend);
  if (backend === 'wgpu') {
    // Which adapter the browser gives (SwiftShader, a fallback adapter, on machines without a GPU).
    const adapter = await navigator.gpu.requestAdapter();
    const info = adapter.info || {};
    report.adapter = { vendor: info.vendor, architecture: info.architecture, fallback: !!(info.isFallbackAdapter ?? adapter.isFallbackAdapter) };
  }
  report.initMs = Math.round(performance.now() - t0);

  // 1. Tokenizer: every committed case.
  const tokenizer = new Tokenizer('tokenizer.json', await bytes(`${FIXTURES}/tokenizer.json`));
  const cases = (await (await fetch(`${FIXTURES}/tokenizer_cases.json`)).json()).cases;
  const mismatches = [];
  for (const c of cases) {
    const t = tokenizer.encode(c.text);
    if (t.ids.join(',') !== c.input_ids.join(',') || t.droppedTokens !== c.dropped_tokens) mismatches.push(c.text.slice(0, 40));
  }
  report.tokenizerCases = cases.length;
  report.tokenizerMismatches = mismatches;
  // The same from vocab.json + merges.txt (a diffusers pipeline's tokenizer/ folder), for the real and a
  // small vocabulary (tests/fixtures/fixtures_tokenizer_files.py).
  report.vocabMismatches = {};
  for (const name of ['real', 'small']) {
    const dir = `${FIXTURES}/tokenizer_files/${name}`;
    const text = async file => { const r = await fetch(`${dir}/${file}`); return r.ok ? r.text() : ''; };
    const fromVocab = Tokenizer.fromVocab(await bytes(`${dir}/vocab.json`), await bytes(`${dir}/merges.txt`),
      await text('tokenizer_config.json'), await text('special_tokens_map.json'));
    const vocabCases = (await (await fetch(`${dir}/cases.json`)).json()).cases;
    report.vocabMismatches[name] = vocabCases.filter(c => fromVocab.encode(c.text).ids.join(',') !== c.input_ids.join(',')).map(c => c.text.slice(0, 40));
    report.vocabMismatches[name + 'Cases'] = vocabCases.length;
  }

  // 2. Text encoder: prompts → ids (must equal the fixture's) → hidden states vs transformers.
  const io = readSafetensors(await bytes(`${MODEL}/io.safetensors`));
  const prompts = await (await fetch(`${MODEL}/prompts.json`)).json();
  const ids = prompts.flatMap(p => Array.from(tokenizer.encode(p).ids));
  report.idsMatchFixture = ids.join(',') === io.input_ids.data.join(',');
  const config = await (await fetch(`${MODEL}/config.json`)).text();
  const weights = await bytes(`${MODEL}/model.safetensors`);
  const encoder = await ClipTextEncoder.load(backend, MODEL, config, weights.slice());
  const runs = [];
  for (let run = 0; run < 2; run++) {
    const t1 = performance.now();
    const out = await encoder.encode(Uint32Array.from(ids), prompts.length, 0);
    runs.push({
      ms: Math.round(performance.now() - t1),
      lastHiddenState: maxAbsErr(out.lastHiddenState, io.last_hidden_state.data),
      poolerOutput: maxAbsErr(out.poolerOutput, io.pooler_output.data),
    });
  }
  const skip = await encoder.encode(Uint32Array.from(ids), prompts.length, 1);
  report.clipSkip1 = maxAbsErr(skip.lastHiddenState, io.last_hidden_state_clip_skip_1.data);
  report.runs = runs;
  report.maxAbsErr = Math.max(report.clipSkip1, ...runs.flatMap(r => [r.lastHiddenState, r.poolerOutput]));

  // 3. Broken inputs are JS Errors that name the file and the tensor / field.
  report.errors = [
    await expectError('truncated weights', () => ClipTextEncoder.load(backend, 'broken', config, weights.slice(0, weights.length - 1000)),
      ['broken/model.safetensors', 'truncated']),
    await expectError('unknown activation', () => ClipTextEncoder.load(backend, 'broken', config.replace('"quick_gelu"', '"swiglu_magic"'), weights.slice()),
      ['broken/config.json', 'hidden_act', 'swiglu_magic']),
    await expectError('missing tensor', () => ClipTextEncoder.load(backend, 'broken', config.replace('"num_hidden_layers": 2', '"num_hidden_layers": 3'), weights.slice()),
      ['broken/model.safetensors', 'encoder.layers.2.', 'missing']),
    await expectError('wrong shape', () => ClipTextEncoder.load(backend, 'broken', config.replace('"intermediate_size": 40', '"intermediate_size": 41'), weights.slice()),
      ['broken/model.safetensors', 'mlp.fc1.weight', 'expected shape [41, 16], found [40, 16]']),
    await expectError('empty weights', () => ClipTextEncoder.load(backend, 'broken', config, new Uint8Array(0)),
      ['broken/model.safetensors', 'empty']),
    await expectError('unknown backend', () => initBackend('quantum'), ['backend', 'quantum']),
  ];
  return report;
}

main().then(report => {
  const ok = report.tokenizerMismatches.length === 0 && report.idsMatchFixture && Number.isFinite(report.maxAbsErr)
    && report.errors.every(e => e.ok);
  result.textContent = JSON.stringify(report, null, 1);
  result.dataset.status = ok ? 'ok' : 'fail';
}, err => {
  result.textContent = JSON.stringify({ backend, error: String(err && err.message || err) });
  result.dataset.status = 'error';
});
