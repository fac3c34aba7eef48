// Long sessions of the page: many generations in one session (memory bounded, no slowdown, a repeated seed
// gives the same image every time), and the life cycle under stress (start → cancel cycles, bundle reloads
// and disposals in one worker; the next generation is still correct).
//
// CI runs short versions. The long ones (docs/reliability.md):
//   SOAK_GENERATIONS=100 STRESS_CYCLES=50 node --test --test-concurrency=1 soak.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startSite } from './browser.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const GENERATIONS = Number(process.env.SOAK_GENERATIONS || 8);
const CYCLES = Number(process.env.STRESS_CYCLES || 10);
const TINY = '/tests/fixtures/bundles/tiny-random/';

let browser, base, closeSite;
before(async () => { ({ browser, base, close: closeSite } = await startSite(ROOT)); });
after(async () => { if (closeSite) await closeSite(); });

const median = xs => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const MiB = b => (b / 2 ** 20).toFixed(1);

// The stats of the page's generation worker (worker.js's test hook).
async function workerStats(page) {
  for (const w of page.workers()) {
    const s = await w.evaluate(() => self.controlClipStats && self.controlClipStats()).catch(() => null);
    if (s) return s;
  }
  throw new Error('no generation worker with stats');
}

// A hash of the main canvas's pixels (FNV-1a), computed in the page.
const canvasHash = page => page.evaluate(() => {
  const c = document.getElementById('canvas');
  const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let h = 0x811c9dc5;
  for (let i = 0; i < data.length; i++) { h ^= data[i]; h = Math.imul(h, 0x01000193) >>> 0; }
  return `${c.width}x${c.height}:${h.toString(16)}`;
});

// Many generations in one page session, alternating two seeds: each seed's images must all be equal, the
// worker's wasm memory and live GPU buffers must stop growing after the first generations, and the last
// generations must not be slower than the early ones.
async function soak(t, { backend, bundle, settings }) {
  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', e => errors.push(e.message));
  try {
    const query = new URLSearchParams({ backend, ...settings, ...(bundle ? { bundle } : {}) });
    await page.goto(`${base}/www/index.html?${query}`, { waitUntil: 'load' });
    await page.waitForFunction(() => ['ready', 'load-error'].includes(document.body.dataset.state), null, { timeout: 300000 });
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'ready', await page.textContent('#error'));
    const seeds = [11, 12];
    const first = {};
    const rows = [];
    for (let i = 0; i < GENERATIONS; i++) {
      const seed = seeds[i % 2];
      await page.fill('#seed', String(seed));
      const start = Date.now();
      await page.click('#generate');
      await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), null, { timeout: 600000 });
      assert.equal(await page.evaluate(() => document.body.dataset.state), 'done', await page.textContent('#error'));
      const ms = Date.now() - start;
      const hash = await canvasHash(page);
      first[seed] ??= hash;
      assert.equal(hash, first[seed], `generation ${i + 1} (seed ${seed}) drew another image`);
      rows.push({ ms, ...(await workerStats(page)) });
    }
    const warm = Math.min(2, GENERATIONS - 1);
    const early = rows.slice(warm, warm + Math.max(2, Math.floor(GENERATIONS / 4)));
    const late = rows.slice(-Math.max(2, Math.floor(GENERATIONS / 4)));
    const last = rows[rows.length - 1];
    const line = `${GENERATIONS} generations on ${backend}${bundle ? ` (${bundle})` : ' (default bundle)'}: ` +
      `wasm memory ${MiB(rows[0].wasmBytes)} → ${MiB(rows[warm].wasmBytes)} → ${MiB(last.wasmBytes)} MiB, ` +
      `live GPU buffers ${MiB(rows[0].gpuBytes)} → ${MiB(rows[warm].gpuBytes)} → ${MiB(last.gpuBytes)} MiB (${last.gpuBuffers}), ` +
      `median time early ${median(early.map(r => r.ms))} ms, late ${median(late.map(r => r.ms))} ms`;
    console.log(`# soak: ${line}`);
    t.diagnostic(line);
    // Memory: after the warm-up generations nothing grows (wasm memory never shrinks, so any leak shows).
    assert.ok(last.wasmBytes <= rows[warm].wasmBytes * 1.05 + 2 ** 20, `wasm memory grew: ${line}`);
    assert.ok(last.gpuBytes <= rows[warm].gpuBytes * 1.05 + 2 ** 20, `GPU buffers grew: ${line}`);
    // Speed: the late generations within 25 % (and 300 ms, for timer noise) of the early ones.
    assert.ok(median(late.map(r => r.ms)) <= median(early.map(r => r.ms)) * 1.25 + 300, `slowed down: ${line}`);
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
  }
}

test(`soak: ${GENERATIONS} generations on the wasm CPU backend, default bundle`, async t => {
  await soak(t, { backend: 'cpu', settings: { steps: '4' } });
});

test(`soak: ${GENERATIONS} generations on WebGPU, tiny bundle`, async t => {
  await soak(t, { backend: 'webgpu', bundle: TINY, settings: { steps: '3', width: '64', height: '64' } });
});

// One worker through many start → cancel cycles, bundle reloads and disposals (through the page's client
// module, as the page and the element use it): memory stays bounded and the next generation still draws
// exactly the image a fresh worker draws.
test(`stress: ${CYCLES} start → cancel cycles, ${CYCLES} reloads and ${CYCLES} disposals`, async t => {
  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', e => errors.push(e.message));
  try {
    await page.goto(`${base}/www/index.html?backend=cpu&bundle=${TINY}`, { waitUntil: 'load' });
    const result = await page.evaluate(async ({ bundle, cycles }) => {
      const { ControlClipClient } = await import('/www/client.js');
      const options = { prompt: 'a red star in striped style', steps: 3, width: 64, height: 64, seed: 7, guidance: 7.5 };
      const hash = r => { let h = 0x811c9dc5; for (const v of new Uint8Array(r.rgba)) { h ^= v; h = Math.imul(h, 0x01000193) >>> 0; } return h; };
      const fresh = new ControlClipClient();
      await fresh.load(bundle, 'cpu');
      const reference = hash(await fresh.generate(options));
      await fresh.dispose();

      const client = new ControlClipClient();
      await client.load(bundle, 'cpu');
      await client.generate(options);
      const memory = { warm: await client.stats() };
      let cancelled = 0, finished = 0;
      for (let i = 0; i < cycles; i++) {
        const run = client.generate({ ...options, steps: 50, seed: 100 + i }, () => client.cancel());
        try { await run; finished += 1; } catch (e) { if (e.name === 'AbortError') cancelled += 1; else throw e; }
      }
      const afterCancels = hash(await client.generate(options));
      memory.cancels = await client.stats();
      // Each reload followed by a generation (a reload alone allocates nothing new), its image checked.
      memory.reloadSeries = [];
      let afterReloads = reference;
      for (let i = 0; i < cycles; i++) {
        await client.load(bundle, 'cpu');
        const h = hash(await client.generate(options));
        if (h !== reference) afterReloads = h;
        memory.reloadSeries.push((await client.stats()).wasmBytes);
      }
      memory.reloads = await client.stats();
      for (let i = 0; i < cycles; i++) {
        const c = new ControlClipClient();
        await c.load(bundle, 'cpu');
        await c.dispose();
      }
      const afterDisposals = hash(await client.generate(options));
      memory.disposals = await client.stats();
      await client.dispose();
      return { reference, cancelled, finished, afterCancels, afterReloads, afterDisposals, memory };
    }, { bundle: TINY, cycles: CYCLES });
    const m = result.memory;
    const line = `${CYCLES} cycles each: ${result.cancelled} cancelled, ${result.finished} finished before the cancel arrived; ` +
      `the worker's wasm memory warm ${MiB(m.warm.wasmBytes)} MiB, after the cancels ${MiB(m.cancels.wasmBytes)}, ` +
      `over the reloads ${m.reloadSeries.map(MiB).join(' ')}, after the disposals ${MiB(m.disposals.wasmBytes)} MiB`;
    console.log(`# stress: ${line}`);
    t.diagnostic(line);
    assert.equal(result.cancelled + result.finished, CYCLES);
    assert.ok(result.cancelled >= CYCLES - 1, line);
    assert.equal(result.afterCancels, result.reference, 'after the cancels');
    assert.equal(result.afterReloads, result.reference, 'after the reloads');
    assert.equal(result.afterDisposals, result.reference, 'after the disposals');
    // wasm memory never shrinks, so a leak shows as growth. Cancels allocate nothing that stays. Reloads
    // grow the heap in a few steps as the allocator places a new copy of the model beside freed ones
    // (32 → 38 → 41 MiB over the first 7 of 40 measured reloads of the tiny bundle, then flat): so the second
    // half of the reloads must stay within 15 % of the first half's peak. A leak of a megabyte a reload fails
    // here at 10 cycles; the long run (50) catches far smaller ones.
    assert.ok(m.cancels.wasmBytes <= m.warm.wasmBytes * 1.05 + 2 ** 20, `wasm memory grew over the cancels: ${line}`);
    const half = Math.floor(m.reloadSeries.length / 2);
    const firstPeak = Math.max(...m.reloadSeries.slice(0, half)), secondPeak = Math.max(...m.reloadSeries.slice(half));
    assert.ok(secondPeak <= firstPeak * 1.15 + 2 ** 20, `wasm memory kept growing over the reloads: ${m.reloadSeries.map(MiB).join(' ')} MiB`);
    assert.ok(m.disposals.wasmBytes <= m.reloads.wasmBytes * 1.05 + 2 ** 20, `wasm memory grew over the disposals: ${line}`);
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
  }
});
