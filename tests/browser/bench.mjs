// Browser benchmark (not a test; never run by `./build.sh test`): the default bundle in headless Chromium on
// the wasm CPU backend and on WebGPU, beside the native CLI on the same bundle, and the gzip size of what the
// page downloads. Rewrites the "In the browser" section of docs/benchmarks.md.
//
//   ./build.sh && cargo build --release --bin control-clip
//   node tests/browser/bench.mjs [--runs 3] [--browser cpu,wgpu] [--native cpu,wgpu] ('' for none)
//
// Load = a fresh worker from `new ControlClipClient()` to the bundle being ready: fetching and compiling the
// wasm, fetching and verifying the bundle (first load: from the server; second: from the Cache Storage) and
// building the models. Generation = the bundle's defaults (4 steps at 64², guidance 7.5); the first run on a
// backend compiles its kernels and is reported apart; step = median over the other runs' steps, without the
// preview, and with it beside.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';
import { launch } from './browser.mjs';
import { writeSection } from './report.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const RUNS = Number(process.argv[process.argv.indexOf('--runs') + 1]) || 3;
const TARGET = process.env.CARGO_TARGET_DIR || path.join(os.homedir(), '.cache/control-clip/target');
// CONTROL_CLIP names another build (the dev profile builds every dependency at opt-level 3, so its times are
// within a few per cent of release; the report says which binary ran).
const BINARY = process.env.CONTROL_CLIP || path.join(TARGET, 'release/control-clip');
const argValue = (flag, fallback) => (process.argv.includes(flag) ? process.argv[process.argv.indexOf(flag) + 1] : fallback);
// Native backends to time beside the browser (lavapipe spends minutes autotuning a new model: `--native cpu`).
const NATIVE = argValue('--native', 'cpu,wgpu').split(',').filter(Boolean);
// Browser backends to time (`--browser cpu` skips SwiftShader's two-minute WebGPU generations).
const BROWSER = argValue('--browser', 'cpu,wgpu').split(',').filter(Boolean);
const BUNDLE = 'www/models/default';

const median = v => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];
const fmt = v => (v === undefined || v === null ? '—' : v >= 100 ? v.toFixed(0) : v.toFixed(1));

// Runs in the page: load the default bundle in a fresh worker, then generate RUNS + 1 times without and
// RUNS times with previews.
async function measure({ backend, runs }) {
  const { ControlClipClient, bundleDefaults } = await import('/www/client.js');
  const manifest = await (await fetch('/www/models/default/manifest.json')).json();
  const options = { ...bundleDefaults(manifest.defaults), seed: 1 };
  const loads = [];
  let client;
  for (let i = 0; i < 2; i++) {
    if (client) await client.dispose();
    client = new ControlClipClient();
    const t = performance.now();
    await client.load('/www/models/default/', backend);
    loads.push(performance.now() - t);
  }
  const run = async preview => {
    const steps = [];
    const t = performance.now();
    await client.generate({ ...options, preview }, p => steps.push(p.stepMs));
    return { ms: performance.now() - t, steps };
  };
  const first = await run(false);
  const plain = [], withPreview = [];
  for (let i = 0; i < runs; i++) plain.push(await run(false));
  for (let i = 0; i < runs; i++) withPreview.push(await run(true));
  await client.dispose();
  return { loads, first: first.ms, plain, withPreview };
}

function nativeBench(backend) {
  if (!fs.existsSync(BINARY)) return { error: `no ${BINARY} (cargo build --release --bin control-clip)` };
  try {
    const out = execFileSync(BINARY, ['bench', '--bundle', BUNDLE, '--backend', backend, '--runs', String(RUNS)], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || os.tmpdir() } });
    return JSON.parse(out);
  } catch (e) {
    return { error: String(e.stderr || e.message).trim().split('\n').pop() };
  }
}

function gzipSizes() {
  const files = ['www/pkg/control_clip_bg.wasm', 'www/pkg/control_clip.js', 'www/index.html', 'www/app.js', 'www/client.js', 'www/worker.js', 'www/element.js', 'www/sw.js', 'www/style.css'];
  return files.filter(f => fs.existsSync(path.join(ROOT, f))).map(f => {
    const bytes = fs.readFileSync(path.join(ROOT, f));
    return { file: f, bytes: bytes.length, gzip: zlib.gzipSync(bytes, { level: 9 }).length };
  });
}

async function main() {
  const server = await serve(ROOT);
  const base = `http://127.0.0.1:${server.address().port}`;
  const rows = [];
  let adapter = '';
  for (const backend of BROWSER) {
    const browser = await launch(); // a fresh profile: the first load is a cold one
    try {
      const page = await browser.context.newPage();
      await page.goto(`${base}/tests/browser/bench.html`, { waitUntil: 'load' });
      adapter = await page.evaluate(async () => {
        const a = navigator.gpu && await navigator.gpu.requestAdapter();
        return a ? `${a.info.vendor} ${a.info.architecture} ${a.info.description}`.trim() + (a.info.isFallbackAdapter ? ' (fallback adapter)' : '') : 'none';
      });
      const r = await page.evaluate(measure, { backend, runs: RUNS });
      rows.push({ where: 'browser', backend: backend === 'wgpu' ? 'WebGPU' : 'wasm CPU', load: r.loads[0], reload: r.loads[1], first: r.first,
        generation: median(r.plain.map(x => x.ms)), step: median(r.plain.flatMap(x => x.steps)), stepPreview: median(r.withPreview.flatMap(x => x.steps)) });
      console.log(backend, JSON.stringify(rows.at(-1)));
    } finally {
      await browser.close();
    }
  }
  for (const backend of NATIVE) {
    const n = nativeBench(backend);
    rows.push({ where: 'native', backend: backend === 'wgpu' ? 'wgpu (lavapipe)' : 'CPU', load: n.load_ms, first: n.first_generation_ms, generation: n.generation_ms, step: n.step_ms, error: n.error });
    console.log('native', backend, JSON.stringify(n));
  }
  server.close();

  const chromium = execFileSync('/usr/bin/chromium', ['--version'], { encoding: 'utf8' }).trim();
  const sizes = gzipSizes();
  const total = sizes.reduce((a, s) => a + s.gzip, 0);
  const bundleBytes = JSON.parse(fs.readFileSync(path.join(ROOT, BUNDLE, 'manifest.json'), 'utf8'));
  const manifestDefaults = bundleBytes.defaults;
  const lines = [
    '## In the browser: the trained default bundle (issue 16)', '',
    `Command: \`node tests/browser/bench.mjs --runs ${RUNS} --browser ${BROWSER.join(',') || "''"} --native ${NATIVE.join(',') || "''"}\` (after \`./build.sh\`; native binary: ${path.relative(TARGET, BINARY)}). ` +
    `Machine: ${os.cpus().length} cores (${os.cpus()[0].model}), no GPU; ${chromium} headless; WebGPU adapter: ${adapter}. Date: ${new Date().toISOString().slice(0, 10)}.`, '',
    `The default bundle (the trained shapes model: ${manifestDefaults.width}², ${manifestDefaults.steps} steps of its scheduler at guidance ${manifestDefaults.guidance}, so the UNet runs at batch 2). ` +
    'Load: a fresh worker until the bundle is ready (wasm fetch + compile, bundle fetch + sha256 + model build); first from the ' +
    'server, then again from the Cache Storage. First generation: includes compiling the kernels. Generation and step: medians of ' +
    `${RUNS} more runs (step without the preview, and with the tiny decoder's preview beside it). Native rows: \`control-clip bench --bundle ` +
    `${BUNDLE} --backend cpu|wgpu --runs ${RUNS}\`.`, '',
    '| where | backend | load ms (cold / cached) | first generation ms | generation ms | step ms | step ms with preview |',
    '|---|---|---|---|---|---|---|',
    ...rows.map(r => r.error ? `| ${r.where} | ${r.backend} | failed: ${r.error} | | | | |`
      : `| ${r.where} | ${r.backend} | ${fmt(r.load)}${r.reload !== undefined ? ` / ${fmt(r.reload)}` : ''} | ${fmt(r.first)} | ${fmt(r.generation)} | ${fmt(r.step)} | ${fmt(r.stepPreview)} |`),
    '',
    'What the page downloads (gzip -9, what a server with compression sends), besides the bundle ' +
    `(${Object.values(bundleBytes.components).flatMap(c => c.shards || (c.file ? [c] : [])).reduce((a, f) => a + f.bytes, 0)} bytes, ` +
    `of which ${bundleBytes.components.tokenizer.bytes} are the real CLIP tokenizer):`, '',
    '| file | bytes | gzip bytes |', '|---|---|---|',
    ...sizes.map(s => `| ${s.file} | ${s.bytes} | ${s.gzip} |`),
    `| all | ${sizes.reduce((a, s) => a + s.bytes, 0)} | ${total} |`, '',
  ];
  writeSection(path.join(ROOT, 'docs/benchmarks.md'), lines);
}

main().catch(e => { console.error(e); process.exit(1); });
