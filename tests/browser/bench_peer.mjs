// Browser UNet benchmark against a peer runtime (not a test; never run by `./build.sh test`): one guided UNet
// step (batch 2) of the same seeded weights on the same inputs, our wasm CPU backend beside onnxruntime-web's
// wasm backend with 1 and 2 threads, in one headless Chromium run on a cross-origin-isolated page (so that
// onnxruntime-web can start its threads). Each runtime's output is compared with PyTorch's. Rewrites the
// "In the browser: the UNet step beside onnxruntime-web" section of docs/benchmarks.md.
//
//   python3 tests/bench/export_peer.py                      (the models, ONNX files and PyTorch outputs)
//   (cd tests/browser/peer && npm ci)                        (onnxruntime-web, pinned)
//   ./build.sh && node tests/browser/bench_peer.mjs [--runs 5] [--models tiny,sd15-narrow,default]
//
// Step = one call from JS until the output is back in JS (ours: `UnetBench.step`, which also compares it;
// onnxruntime-web: `session.run`), median of --runs after two warm-up calls; each runtime in its own page,
// the runtimes' steps taken in turn (measureModel).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';
import { launch } from './browser.mjs';
import { writeSection } from './report.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CACHE = path.join(os.homedir(), '.cache/control-clip/bench');
const argValue = (flag, fallback) => (process.argv.includes(flag) ? process.argv[process.argv.indexOf(flag) + 1] : fallback);
const RUNS = Number(argValue('--runs', 5));
const MODELS = argValue('--models', 'tiny,sd15-narrow,default').split(',').filter(Boolean);
const ORT_DIR = '/tests/browser/peer/node_modules/onnxruntime-web/dist/';
// The comparison with PyTorch's output: relative to its largest magnitude, as the parity checks do.
const TOLERANCE = 1e-3;

const median = v => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];

// Runs in the page: loads `runtime` ('ours' or 'ort') with the model and leaves `window.benchStep` (one
// step, returns its ms) and `window.benchFinish` (returns {maxAbsErr, outMax, crossOriginIsolated, split}).
async function setup({ model, runtime, threads, ortDir, tolerance }) {
  const { bytes, readSafetensors } = await import('/tests/browser/util.js');
  const folder = `/peer/peer-${model}`;
  const io = await bytes(`${folder}/io.safetensors`);
  const tensors = readSafetensors(io);
  const expected = tensors.out.data;
  const outMax = expected.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  const time = async fn => { const t = performance.now(); const r = await fn(); return [performance.now() - t, r]; };
  if (runtime === 'ours') {
    const { default: init, initBackend, UnetBench } = await import('/www/pkg/control_clip.js');
    await init();
    await initBackend('cpu');
    const config = new TextDecoder().decode(await bytes(`${folder}/unet/config.json`));
    const bench = await UnetBench.load('cpu', `peer-${model}/unet`, config, await bytes(`${folder}/unet/diffusion_pytorch_model.safetensors`), io);
    let report;
    window.benchStep = async () => {
      const [ms, r] = await time(() => bench.step(tolerance, false));
      report = r;
      return ms;
    };
    window.benchFinish = async () => {
      // One more step with the per-module profile on: where our time goes.
      const [profiledMs, profiled] = await time(() => bench.step(tolerance, true));
      bench.free();
      const split = { ...profiled.breakdownMs };
      split.rest = profiledMs - Object.values(profiled.breakdownMs).reduce((a, b) => a + b, 0);
      return { maxAbsErr: report.maxAbsErr, outMax, crossOriginIsolated, split };
    };
    return;
  }
  const ort = await import(`${ortDir}ort.wasm.min.mjs`);
  ort.env.wasm.wasmPaths = ortDir;
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.simd = true;
  const session = await ort.InferenceSession.create(await bytes(`${folder}/unet.onnx`), { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
  const feeds = {};
  for (const name of ['sample', 'timestep', 'encoder_hidden_states']) {
    const t = tensors[name];
    feeds[name] = t.data instanceof Float32Array ? new ort.Tensor('float32', t.data, t.shape) : new ort.Tensor('int64', BigInt64Array.from(t.data, BigInt), t.shape);
  }
  let out;
  window.benchStep = async () => {
    const [ms, r] = await time(() => session.run(feeds));
    out = r.out.data;
    return ms;
  };
  window.benchFinish = async () => {
    await session.release();
    let maxAbsErr = 0;
    for (let i = 0; i < out.length; i++) maxAbsErr = Math.max(maxAbsErr, Math.abs(out[i] - expected[i]));
    return { maxAbsErr, outMax, crossOriginIsolated };
  };
}

const RUNTIMES = [['ours', 'ours', 1], ['ort1', 'ort', 1], ['ort2', 'ort', 2]];

// One model: each runtime in its own page, loaded first; then two warm-up steps each and RUNS rounds of one
// step per runtime in turn (so that a slow spell of the shared machine falls on all of them), with a pause
// between runtimes (the peer's idle threads spin for a moment after a run).
async function measureModel(browser, base, model) {
  const pages = {};
  const result = {};
  try {
    for (const [key, runtime, threads] of RUNTIMES) {
      const page = await browser.context.newPage();
      const lines = [];
      page.on('console', m => lines.push(m.text()));
      pages[key] = { page, lines };
      await page.goto(`${base}/tests/browser/bench.html`, { waitUntil: 'load' });
      await page.evaluate(setup, { model, runtime, threads, ortDir: ORT_DIR, tolerance: TOLERANCE });
    }
    const steps = Object.fromEntries(RUNTIMES.map(([key]) => [key, []]));
    for (let round = 0; round < RUNS + 2; round++) {
      for (const [key] of RUNTIMES) {
        const ms = await pages[key].page.evaluate(() => window.benchStep());
        if (round >= 2) steps[key].push(ms);
        await new Promise(resolve => setTimeout(resolve, 200));
      }
    }
    for (const [key] of RUNTIMES) {
      const r = await pages[key].page.evaluate(() => window.benchFinish());
      if (!r.crossOriginIsolated) throw new Error('the page is not cross-origin isolated');
      result[key] = { ms: median(steps[key]), err: r.maxAbsErr / Math.max(1, r.outMax), split: r.split };
      console.log(model, key, JSON.stringify({ steps: steps[key], ...r }));
    }
  } catch (e) {
    const error = String(e.message || e).split('\n')[0];
    console.log(model, 'failed:', error, Object.values(pages).flatMap(p => p.lines.slice(-3)).join(' | '));
    for (const [key] of RUNTIMES) result[key] ??= { error };
  } finally {
    for (const { page } of Object.values(pages)) await page.close();
  }
  return result;
}

async function main() {
  const server = await serve(ROOT, 0, { isolated: true, mounts: { '/peer/': CACHE } });
  const base = `http://127.0.0.1:${server.address().port}`;
  const ortVersion = JSON.parse(fs.readFileSync(path.join(ROOT, 'tests/browser/peer/node_modules/onnxruntime-web/package.json'), 'utf8')).version;
  const browser = await launch();
  const rows = [];
  try {
    for (const model of MODELS) {
      if (!fs.existsSync(path.join(CACHE, `peer-${model}`, 'unet.onnx'))) throw new Error(`no ${CACHE}/peer-${model}: run python3 tests/bench/export_peer.py first`);
      const params = JSON.parse(fs.readFileSync(path.join(CACHE, `peer-${model}`, 'unet', 'config.json'), 'utf8'));
      const row = { model, latents: params.sample_size, context: params.cross_attention_dim, channels: params.block_out_channels.join('–') };
      Object.assign(row, await measureModel(browser, base, model));
      rows.push(row);
    }
  } finally {
    await browser.close();
    server.close();
  }

  const chromium = execFileSync('/usr/bin/chromium', ['--version'], { encoding: 'utf8' }).trim();
  const ms = c => (c?.error ? `failed: ${c.error}` : c ? (c.ms >= 100 ? c.ms.toFixed(0) : c.ms.toFixed(1)) : '—');
  const err = c => (c && !c.error ? c.err.toExponential(1) : '—');
  const split = c => (c?.split ? ['conv', 'norm', 'attention', 'linear', 'rest'].map(k => c.split[k].toFixed(0)).join(' / ') : '—');
  const ratio = (a, b) => (a?.ms && b?.ms ? (a.ms / b.ms).toFixed(2) : '—');
  const lines = [
    '## In the browser: the UNet step beside onnxruntime-web', '',
    `Command: \`node tests/browser/bench_peer.mjs --runs ${RUNS} --models ${MODELS.join(',')}\` (after \`python3 tests/bench/export_peer.py\`, ` +
    `\`(cd tests/browser/peer && npm ci)\` and \`./build.sh\`). Machine: ${os.cpus().length} cores (${os.cpus()[0].model}), no GPU; ${chromium} headless, ` +
    `a cross-origin-isolated page. Peer: onnxruntime-web ${ortVersion}, wasm backend (SIMD, threaded build), graph optimisation "all". Date: ${new Date().toISOString().slice(0, 10)}.`, '',
    'One guided UNet step (batch 2: the conditional and unconditional rows, timestep 500) of the same seeded weights on the same inputs ' +
    '(tests/bench/export_peer.py: diffusers UNet2DConditionModel, exported with torch.onnx for the peer). Step: one call from JS until the ' +
    `output is back in JS, median of ${RUNS} after two warm-up calls; each runtime in its own page, their steps taken in turn (one of each per round, 0.2 s apart). Ours runs on one thread (our wasm build has no ` +
    'threads); the peer with 1 and 2. Error: the largest difference from PyTorch\'s output over max(1, its largest magnitude). ' +
    'Split: one more step of ours with the per-module profile on (performance.now() around each convolution, norm, attention and linear layer).', '',
    '| model | latents | channels | context | ours (1 thread) ms | onnxruntime-web 1 thread ms | onnxruntime-web 2 threads ms | ours / peer, 1 thread | ours / peer 2 threads | error ours | error peer | ours: split conv / norm / attention / linear / rest ms |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map(r => `| ${r.model} | ${r.latents}² | ${r.channels} | ${r.context} | ${ms(r.ours)} | ${ms(r.ort1)} | ${ms(r.ort2)} | ${ratio(r.ours, r.ort1)} | ${ratio(r.ours, r.ort2)} | ${err(r.ours)} | ${err(r.ort1)} | ${split(r.ours)} |`),
    '',
  ];
  writeSection(path.join(ROOT, 'docs/benchmarks.md'), lines);
}

main().catch(e => { console.error(e); process.exit(1); });
