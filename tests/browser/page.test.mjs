// The page (www/index.html) and the embeddable element in headless Chromium: loading the default bundle with
// progress, a seeded generation whose canvas equals the native CLI's PNG, cancel (and a failure that only
// mentions cancelling), broken bundles, no WebGPU,
// offline after a first visit, the custom element, a lost GPU device, and screenshots at desktop and phone width.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startSite } from './browser.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const OUT = path.join(ROOT, 'tests/browser/out');
const BUNDLES = path.join(OUT, 'bundles');
// Canvas vs the native CLI's PNG of the same bundle, prompt, weights and seed: the wasm CPU backend runs the
// same f32 code as the native CPU backend that wrote the PNG (1/255 for rounding); WebGPU sums in another
// order (2/255, the pipeline's parity bound).
const TOLERANCE = { cpu: 1, webgpu: 2 };
// The page's default settings for the trained default bundle, shared with tests/suite/default_bundle.rs, which checks
// that the native pipeline still makes tests/browser/expected/default.png from them.
const DEFAULT = JSON.parse(fs.readFileSync(path.join(ROOT, 'tests/browser/expected/default.json'), 'utf8'));
const SETTINGS = new URLSearchParams(Object.entries(DEFAULT).map(([k, v]) => [k, String(v)])).toString();
// The random-weight test bundle: fast on SwiftShader, for the tests that are about the page, not the model.
const TINY = '/tests/fixtures/bundles/tiny-random/';
// The default bundle is sharded (www/models/make_default.sh): the UNet's shards, from its manifest.
const UNET_SHARDS = JSON.parse(fs.readFileSync(path.join(ROOT, 'www/models/default/manifest.json'), 'utf8')).components.unet.shards.map(s => s.file);

let browser, base, closeSite;
// Names that point outside the bundle: another folder of the same server, an absolute path, another origin.
const HOSTILE_NAMES = [
  ['name-parent', '../../../../www/models/default/decoder.safetensors'],
  ['name-absolute', '/www/models/default/decoder.safetensors'],
  ['name-origin', 'http://127.0.0.2:9/decoder.safetensors'],
  ['name-escaped', '..%2F..%2Fdefault%2Fdecoder.safetensors'],
];

before(async () => {
  fs.mkdirSync(OUT, { recursive: true });
  makeBrokenBundles();
  ({ browser, base, close: closeSite } = await startSite(ROOT));
});
after(async () => { if (closeSite) await closeSite(); });

function makeBrokenBundles() {
  const src = path.join(ROOT, 'www/models/default');
  for (const name of ['bad-sha', 'missing-file', 'wrong-version', 'too-long', 'huge-manifest', 'huge-tokenizer', 'nan-config', 'duplicate-key']) {
    const dir = path.join(BUNDLES, name);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.cpSync(src, dir, { recursive: true });
  }
  const unet = path.join(BUNDLES, 'bad-sha', UNET_SHARDS[1]);
  const bytes = fs.readFileSync(unet);
  bytes[bytes.length - 10] ^= 0xff; // same size, different content
  fs.writeFileSync(unet, bytes);
  fs.rmSync(path.join(BUNDLES, 'missing-file/decoder.safetensors'));
  // A file longer than the manifest's size: reading stops at that size (or, where the server sends a
  // Content-Length, before it starts) instead of filling memory.
  fs.appendFileSync(path.join(BUNDLES, 'too-long/decoder.safetensors'), Buffer.alloc(1 << 20));
  // A manifest over the 4 MiB bound (valid JSON, padded with spaces) and one declaring a 300 MB tokenizer:
  // each refused before it is parsed or the file is fetched.
  const huge = path.join(BUNDLES, 'huge-manifest/manifest.json');
  fs.writeFileSync(huge, fs.readFileSync(huge, 'utf8') + ' '.repeat(5 << 20));
  const tok = path.join(BUNDLES, 'huge-tokenizer/manifest.json');
  const t = JSON.parse(fs.readFileSync(tok, 'utf8'));
  t.components.tokenizer.bytes = 300 * 1000 * 1000;
  fs.writeFileSync(tok, JSON.stringify(t));
  // A decoder config with Python's NaN as its scaling factor (it drew an all-black picture), and one giving
  // `scaling_factor` twice: each refused by field from the manifest, in the page as natively.
  const nan = path.join(BUNDLES, 'nan-config/manifest.json');
  const n = JSON.parse(fs.readFileSync(nan, 'utf8'));
  n.components.decoder.config.scaling_factor = 'NaN';
  fs.writeFileSync(nan, JSON.stringify(n));
  const dup = path.join(BUNDLES, 'duplicate-key/manifest.json');
  fs.writeFileSync(dup, fs.readFileSync(dup, 'utf8').replace('"scaling_factor":', '"scaling_factor": 0.5, "scaling_factor":'));
  const manifest = path.join(BUNDLES, 'wrong-version/manifest.json');
  fs.writeFileSync(manifest, fs.readFileSync(manifest, 'utf8').replace('"format_version": 2', '"format_version": 99'));
  // Hostile file names: only the manifest is copied, so any fetch of a bundle file would be the name's own.
  for (const [name, file] of HOSTILE_NAMES) {
    const dir = path.join(BUNDLES, name);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    const m = JSON.parse(fs.readFileSync(path.join(src, 'manifest.json'), 'utf8'));
    m.components.decoder.file = file;
    fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(m));
  }
}

// A page that records the page's `control-clip` events and its errors.
async function open(url, { width = 1280, height = 900, init } = {}) {
  const page = await browser.context.newPage();
  await page.setViewportSize({ width, height });
  const errors = [];
  page.on('pageerror', e => errors.push(e.message));
  await page.addInitScript(() => {
    window.__events = [];
    window.addEventListener('control-clip', e => window.__events.push(e.detail));
  });
  if (init) await page.addInitScript(init);
  await page.goto(url, { waitUntil: 'load' });
  return { page, errors };
}

const state = (page, states, timeout = 300000) =>
  page.waitForFunction(s => s.includes(document.body.dataset.state), states, { timeout });
const events = (page, kind) => page.evaluate(k => window.__events.filter(e => e.kind === k), kind);

// Worst difference between the main canvas and the committed native PNG, in 8-bit levels.
async function canvasVsReference(page) {
  return page.evaluate(async () => {
    const img = new Image();
    img.src = '/tests/browser/expected/default.png';
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.width; c.height = img.height;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const want = ctx.getImageData(0, 0, c.width, c.height).data;
    const canvas = document.getElementById('canvas');
    if (canvas.width !== c.width || canvas.height !== c.height) return Infinity;
    const got = canvas.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let worst = 0;
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
    return worst;
  });
}

for (const backend of ['cpu', 'webgpu']) {
  test(`default bundle on ${backend}: progress, per-step progress, canvas equals the native PNG`, async () => {
    const { page, errors } = await open(`${base}/www/index.html?backend=${backend}&${SETTINGS}`);
    try {
      await state(page, ['ready']);
      const progress = await events(page, 'progress');
      assert.ok(progress.length >= 7, `only ${progress.length} progress events`);
      assert.ok(UNET_SHARDS.length >= 2, `the default bundle's UNet should be sharded: ${UNET_SHARDS}`);
      for (const shard of UNET_SHARDS) assert.ok(progress.some(p => p.file === shard && p.done === p.total), `no complete progress for ${shard}`);
      if (backend === 'cpu') {
        await page.screenshot({ path: path.join(OUT, 'page-1280-before.png'), fullPage: true });
        await page.setViewportSize({ width: 390, height: 844 });
        await page.screenshot({ path: path.join(OUT, 'page-390-before.png'), fullPage: true });
        await page.setViewportSize({ width: 1280, height: 900 });
      }
      await page.click('#generate');
      await state(page, ['done', 'error']);
      assert.equal(await page.textContent('#error'), '');
      const steps = await events(page, 'step');
      assert.deepEqual(steps.map(s => `${s.step}/${s.total}`), Array.from({ length: DEFAULT.steps }, (_, i) => `${i + 1}/${DEFAULT.steps}`));
      assert.ok(steps.every(s => s.preview), 'every step brought a preview');
      const worst = await canvasVsReference(page);
      console.log(`# page ${backend}: canvas vs native PNG worst difference ${worst}/255; ${await page.textContent('#gen-status')}`);
      assert.ok(worst <= TOLERANCE[backend], `canvas differs from the native PNG by ${worst}/255`);
      assert.match(await page.textContent('#backend-info'), backend === 'cpu' ? /CPU/ : /WebGPU/);
      if (backend === 'cpu') {
        await page.screenshot({ path: path.join(OUT, 'page-1280-after.png'), fullPage: true });
        await page.setViewportSize({ width: 390, height: 844 });
        await page.screenshot({ path: path.join(OUT, 'page-390-after.png'), fullPage: true });
        // The settings went into the URL: opening it again restores them.
        assert.match(page.url(), new RegExp(`prompt=${encodeURIComponent(DEFAULT.prompt).replace(/%20/g, '\\+')}`));
      }
      assert.deepEqual(errors, []);
    } finally {
      await page.close();
    }
  });
}

test('at phone width the picture is in view when a generation ends', async () => {
  const { page, errors } = await open(`${base}/www/index.html?backend=cpu&bundle=${TINY}&steps=2&width=64&height=64`, { width: 390, height: 844 });
  try {
    await state(page, ['ready']);
    await page.click('#generate');
    await state(page, ['done', 'error']);
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'done');
    const box = await page.evaluate(() => {
      const r = document.getElementById('canvas').getBoundingClientRect();
      return { top: r.top, bottom: r.bottom, viewport: window.innerHeight };
    });
    console.log(`# page 390 px: canvas at ${box.top.toFixed(0)}-${box.bottom.toFixed(0)} of a ${box.viewport} px viewport`);
    assert.ok(box.top >= 0 && box.bottom <= box.viewport, `the canvas (${box.top}-${box.bottom}) is not in the ${box.viewport} px viewport`);
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
  }
});

test('a fallback adapter picks the CPU backend and says why', async () => {
  const { page } = await open(`${base}/www/index.html`);
  try {
    await state(page, ['ready']);
    const info = await page.textContent('#backend-info');
    console.log(`# page default backend: ${info}`);
    assert.match(info, /software fallback/);
    assert.equal(await page.evaluate(() => document.body.dataset.backend), 'cpu');
    assert.equal(await page.isVisible('#default-note'), true, 'the note on what the default model is shows for the default bundle');
  } finally {
    await page.close();
  }
});

test('cancel stops within one step and the next generation works', async () => {
  const { page } = await open(`${base}/www/index.html?backend=cpu&steps=400&seed=3`);
  try {
    await state(page, ['ready']);
    await page.click('#generate');
    await page.waitForFunction(() => window.__events.some(e => e.kind === 'step'), null, { timeout: 60000 });
    // Click Cancel in the page's own turn and note how many steps it had seen at that moment.
    const atCancel = await page.evaluate(() => {
      document.getElementById('cancel').click();
      return window.__events.filter(e => e.kind === 'step').length;
    });
    await state(page, ['cancelled', 'done', 'error']);
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'cancelled');
    const after = (await events(page, 'step')).length;
    // At most the step that was running when the cancel reached the worker, plus one step report that was
    // already on its way to the page when Cancel was clicked.
    console.log(`# page cancel: ${after - atCancel} step reports after the click (of 400 steps)`);
    assert.ok(after - atCancel <= 2, `${after - atCancel} steps ran after the cancel`);
    await page.fill('#steps', '2');
    await page.click('#generate');
    await state(page, ['done', 'error']);
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'done');
  } finally {
    await page.close();
  }
});

for (const [name, words] of [
  ['bad-sha', [UNET_SHARDS[1], 'sha256', 'does not match']],
  ['missing-file', ['decoder.safetensors', '404', 'missing']],
  ['wrong-version', ['format_version', '99', 'not supported']],
  ['too-long', ['decoder.safetensors', "more than the manifest's"]],
  ['huge-manifest', ['manifest.json', '4194304-byte limit for a manifest']],
  ['huge-tokenizer', ['components.tokenizer.bytes', 'more than a tokenizer file may hold']],
  ['nan-config', ['manifest.json', 'scaling_factor', 'NaN']],
  ['duplicate-key', ['manifest.json', 'scaling_factor', 'appears twice']],
]) {
  test(`a broken bundle (${name}) shows a clear error and the page stays usable`, async () => {
    const { page, errors } = await open(`${base}/www/index.html?backend=cpu&bundle=/tests/browser/out/bundles/${name}/`);
    try {
      await state(page, ['load-error', 'ready']);
      const message = await page.textContent('#error');
      console.log(`# page ${name}: ${message}`);
      for (const w of words) assert.ok(message.includes(w), `"${w}" missing from: ${message}`);
      assert.equal(await page.isEditable('#prompt'), true);
      assert.deepEqual(errors, []);
    } finally {
      await page.close();
    }
  });
}

for (const [name] of HOSTILE_NAMES) {
  test(`a manifest file name outside the bundle (${name}) is refused before anything is fetched`, async () => {
    const { page, errors } = await open('about:blank');
    // The context sees the requests of the page's workers too.
    const fetched = [];
    const record = r => fetched.push(r.url());
    page.context().on('request', record);
    try {
      await page.goto(`${base}/www/index.html?backend=cpu&bundle=/tests/browser/out/bundles/${name}/`, { waitUntil: 'load' });
      await state(page, ['load-error', 'ready']);
      const message = await page.textContent('#error');
      console.log(`# page ${name}: ${message}`);
      for (const w of ['components.decoder.file', 'plain name']) assert.ok(message.includes(w), `"${w}" missing from: ${message}`);
      const bundleFiles = fetched.filter(u => u.includes('.safetensors') || u.includes('tokenizer.json') || !u.startsWith(base));
      assert.deepEqual(bundleFiles, [], 'bundle files were fetched');
      assert.deepEqual(errors, []);
    } finally {
      page.context().off('request', record);
      await page.close();
    }
  });
}

test('without navigator.gpu the page explains it and generates on the CPU', async () => {
  const { page } = await open(`${base}/www/index.html?steps=2`, {
    init: () => Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined, configurable: true }),
  });
  try {
    await state(page, ['ready']);
    const info = await page.textContent('#backend-info');
    assert.match(info, /no WebGPU/);
    assert.match(info, /CPU/);
    await page.click('#generate');
    await state(page, ['done', 'error']);
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'done');
  } finally {
    await page.close();
  }
});

test('a failure whose message mentions "cancel" is shown as a failure, not as a cancel', async () => {
  // The worker's answer to this page's generate requests is replaced by a failure that merely mentions
  // cancelling: only a typed cancellation ({cancelled: true} from the worker, an AbortError) may read as one.
  const init = () => {
    const RealWorker = window.Worker;
    window.Worker = class extends RealWorker {
      postMessage(message, transfer) {
        if (message && message.type === 'generate') {
          const data = { type: 'error', id: message.id, message: 'the scheduler could not cancel its noise (test)' };
          setTimeout(() => this.onmessage({ data }), 0);
          return;
        }
        super.postMessage(message, transfer);
      }
    };
  };
  const { page } = await open(`${base}/www/index.html?backend=cpu&steps=2&width=64&height=64&bundle=${TINY}`, { init });
  try {
    await state(page, ['ready']);
    await page.click('#generate');
    await state(page, ['cancelled', 'done', 'error']);
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'error');
    assert.match(await page.textContent('#error'), /Generation failed: the scheduler could not cancel its noise/);
    assert.equal(await page.textContent('#gen-status'), 'failed');
  } finally {
    await page.close();
  }
});

test('after one visit the page loads and generates offline', async () => {
  const { page } = await open(`${base}/www/index.html?backend=cpu&steps=2`);
  try {
    await state(page, ['ready']);
    await page.evaluate(() => navigator.serviceWorker.ready);
    await page.reload(); // now controlled by the service worker, which caches what the page loads
    await state(page, ['ready']);
    await browser.context.setOffline(true);
    await page.reload();
    await state(page, ['ready', 'load-error']);
    assert.equal(await page.textContent('#error'), '');
    await page.click('#generate');
    await state(page, ['done', 'error']);
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'done');
  } finally {
    await browser.context.setOffline(false);
    await page.close();
  }
});

test('the custom element renders and generates inside embed-example.html', async () => {
  const { page, errors } = await open(`${base}/www/embed-example.html`);
  try {
    await page.waitForSelector('control-clip-demo >> #generate:not([disabled])', { timeout: 300000 });
    await page.evaluate(() => {
      window.__generated = null;
      document.querySelector('control-clip-demo').addEventListener('generated', e => { window.__generated = e.detail; });
    });
    await page.click('control-clip-demo >> #generate');
    await page.waitForFunction(() => window.__generated, null, { timeout: 300000 });
    const size = await page.evaluate(() => [window.__generated.width, window.__generated.height]);
    assert.deepEqual(size, [DEFAULT.width, DEFAULT.height]);
    await page.screenshot({ path: path.join(OUT, 'embed-example.png'), fullPage: true });
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
  }
});

test('a lost GPU device ends the generation with a message and the next one starts fresh', async () => {
  // compare=0: the tiny bundle has a style encoder, so the side-by-side view would run each generation twice.
  const { page, errors } = await open(`${base}/www/index.html?backend=webgpu&steps=3&seed=2&width=64&height=64&compare=0&bundle=${TINY}`);
  try {
    await state(page, ['ready']);
    await page.click('#generate');
    await page.waitForFunction(() => window.__events.some(e => e.kind === 'step'), null, { timeout: 300000 });
    // The worker keeps the devices the wasm asked for; destroying them is what a driver reset looks like.
    const workers = page.workers();
    const destroyed = (await Promise.all(workers.map(w => w.evaluate(() => {
      for (const d of self.controlClipDevices || []) d.destroy();
      return (self.controlClipDevices || []).length;
    })))).reduce((a, b) => a + b, 0);
    assert.ok(destroyed >= 1, 'no GPU device to destroy');
    await state(page, ['error', 'done']);
    const message = await page.textContent('#error');
    console.log(`# page lost device: ${message}`);
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'error');
    assert.match(message, /GPU device was lost/);
    assert.match(message, /next one starts on a fresh device/);
    const before = (await events(page, 'step')).length;
    await page.click('#generate');
    await state(page, ['done', 'error']);
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'done', await page.textContent('#error'));
    const steps = (await events(page, 'step')).slice(before).map(s => `${s.step}/${s.total}`);
    assert.deepEqual(steps, ['1/3', '2/3', '3/3']);
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
  }
});

// Binding limits (docs/reliability.md): with ?maxBinding= the library plans every buffer within that many
// bytes, as on a device whose maxStorageBufferBindingSize is that small. The worker counts the largest range
// any bind group really bound (worker.js): under the cap it stays within it, where the uncapped run binds
// more (the tiny bundle's 3.2 MB token embedding), and the pictures are the same. A cap that an unsplittable
// buffer cannot meet is refused at load, by name, before any weights are fetched.
test('a small binding limit splits the buffers, keeps every binding under it and the picture unchanged', async () => {
  const page = await browser.context.newPage();
  const fetched = [];
  page.on('request', r => { if (r.url().endsWith('.safetensors')) fetched.push(r.url()); });
  try {
    // A page of the site that loads no bundle of its own (the client module does all the work here).
    await page.goto(`${base}/tests/browser/expected/default.json`, { waitUntil: 'load' });
    const refused = await page.evaluate(async bundle => {
      const { ControlClipClient } = await import('/www/client.js');
      const client = new ControlClipClient({ maxBinding: 64 << 10 });
      try { await client.load(bundle, 'wgpu'); return ''; } catch (e) { return e.message; } finally { await client.dispose(); }
    }, TINY);
    assert.match(refused, /does not fit this GPU at 64×64: the decoder's .* maxStorageBufferBindingSize/);
    assert.deepEqual(fetched, [], 'the refused bundle fetched weights');
    const result = await page.evaluate(async bundle => {
      const { ControlClipClient } = await import('/www/client.js');
      const options = { prompt: 'a red star in striped style', steps: 2, width: 64, height: 64, seed: 5, guidance: 7.5 };
      const run = async maxBinding => {
        const client = new ControlClipClient({ maxBinding });
        await client.load(bundle, 'wgpu');
        const image = await client.generate(options);
        const out = { rgba: Array.from(new Uint8Array(image.rgba)), stats: await client.stats(), plan: await client.plan(64, 64) };
        await client.dispose();
        return out;
      };
      const plain = await run(0);
      const capped = await run(1 << 20);
      let worst = 0;
      for (let i = 0; i < plain.rgba.length; i++) worst = Math.max(worst, Math.abs(plain.rgba[i] - capped.rgba[i]));
      return { worst, plain: { stats: plain.stats, plan: plain.plan }, capped: { stats: capped.stats, plan: capped.plan } };
    }, TINY);
    const MiB = b => (b / 2 ** 20).toFixed(2);
    console.log(`# page binding limit: largest binding ${MiB(result.plain.stats.largestBinding)} MiB uncapped, ` +
      `${MiB(result.capped.stats.largestBinding)} MiB under a 1 MiB cap (plan: ${MiB(result.capped.plan.largestBinding)}); ` +
      `live GPU buffers ${MiB(result.capped.stats.gpuBytes)} MiB beside a planned ${MiB(result.capped.plan.totalBytes)} MiB; ` +
      `worst pixel difference ${result.worst}/255; refused under 64 KiB: ${refused}`);
    assert.ok(result.plain.stats.largestBinding > 1 << 20, 'the uncapped run bound nothing over 1 MiB: the test splits nothing');
    assert.ok(result.capped.stats.largestBinding <= 1 << 20, `a binding of ${result.capped.stats.largestBinding} bytes under a 1 MiB cap`);
    assert.ok(result.capped.plan.largestBinding <= 1 << 20);
    assert.equal(result.capped.plan.limit, 1 << 20);
    assert.ok(result.worst <= TOLERANCE.webgpu, `worst pixel difference ${result.worst}/255`);
  } finally {
    await page.close();
  }
});

test('precision: auto computes in f32 on an adapter without shader-f16, and f16 asked of it is refused by name', async () => {
  const page = await browser.context.newPage();
  const fetched = [];
  page.on('request', r => { if (r.url().endsWith('.safetensors')) fetched.push(r.url()); });
  try {
    await page.goto(`${base}/tests/browser/expected/default.json`, { waitUntil: 'load' });
    const result = await page.evaluate(async bundle => {
      const { ControlClipClient } = await import('/www/client.js');
      const adapter = await navigator.gpu.requestAdapter();
      const refusedClient = new ControlClipClient({ precision: 'f16' });
      let refused = '';
      try { await refusedClient.load(bundle, 'wgpu'); } catch (e) { refused = e.message; } finally { await refusedClient.dispose(); }
      const client = new ControlClipClient({ precision: 'auto' });
      const info = await client.load(bundle, 'wgpu');
      await client.dispose();
      const bad = new ControlClipClient({ precision: 'f8' });
      let unknown = '';
      try { await bad.load(bundle, 'cpu'); } catch (e) { unknown = e.message; } finally { await bad.dispose(); }
      return { shaderF16: adapter.features.has('shader-f16'), refused, precision: info.precision, unknown };
    }, TINY);
    console.log(`# page precision: shader-f16 ${result.shaderF16}, auto → ${result.precision}; f16 refused: ${result.refused}`);
    assert.equal(result.shaderF16, false, 'SwiftShader was expected without shader-f16 (this test is for that case)');
    assert.equal(result.precision, 'f32');
    assert.match(result.refused, /f16 compute needs a GPU device with shader-f16 \(SHADER_F16\), and this GPU adapter does not have it/);
    assert.match(result.unknown, /unknown precision `f8`/);
  } finally {
    await page.close();
  }
});
