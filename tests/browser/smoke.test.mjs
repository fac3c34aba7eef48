// Browser tests (node:test): the wasm package in headless Chromium, on WebGPU and on the wasm CPU backend.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runPage, startSite } from './browser.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const OUT = path.join(ROOT, 'tests/browser/out');
// Same tolerance as the native parity tests: f32 throughout, and outputs of the fixture are O(1).
const TOLERANCE = 1e-4;

let browser, base, closeSite;
before(async () => {
  assert.ok(fs.existsSync(path.join(ROOT, 'www/pkg/control_clip_bg.wasm')), 'www/pkg is missing: run ./build.sh first');
  fs.mkdirSync(OUT, { recursive: true });
  ({ browser, base, close: closeSite } = await startSite(ROOT));
});
after(async () => { if (closeSite) await closeSite(); });

for (const backend of ['wgpu', 'cpu']) {
  test(`smoke path on ${backend}: tokenizer ids, text encoder parity, clear errors`, async () => {
    const { status, report, console: lines } = await runPage(browser.context, `${base}/tests/browser/smoke.html?backend=${backend}`,
      { screenshot: path.join(OUT, `smoke-${backend}.png`) });
    console.log(`browser ${backend}: ${JSON.stringify({ maxAbsErr: report.maxAbsErr, runs: report.runs, clipSkip1: report.clipSkip1, initMs: report.initMs, adapter: report.adapter })}`);
    assert.equal(status, 'ok', `status ${status}: ${JSON.stringify(report, null, 1)}\n${lines.slice(-20).join('\n')}`);
    assert.deepEqual(report.tokenizerMismatches, []);
    assert.ok(report.tokenizerCases >= 40);
    for (const name of ['real', 'small']) {
      assert.deepEqual(report.vocabMismatches[name], [], `${name} vocabulary`);
      assert.ok(report.vocabMismatches[name + 'Cases'] >= 50);
    }
    assert.ok(report.idsMatchFixture, 'prompt ids differ from the fixture');
    assert.ok(report.maxAbsErr <= TOLERANCE, `max abs err ${report.maxAbsErr} > ${TOLERANCE}`);
    for (const e of report.errors) assert.ok(e.ok, `${e.label}: ${e.message}`);
  });
}

for (const backend of ['wgpu', 'cpu']) {
  test(`control-clip conditioning on ${backend}: identity and parity of the decoupled attention`, async () => {
    const { status, report, console: lines } = await runPage(browser.context, `${base}/tests/browser/control.html?backend=${backend}`,
      { screenshot: path.join(OUT, `control-${backend}.png`) });
    for (const c of report.checks || []) console.log(`# browser ${backend} ${c.component} ${c.folder}: max abs err ${c.maxAbsErr.toExponential(2)} (${c.ms} ms)`);
    assert.equal(status, 'ok', `status ${status}: ${JSON.stringify(report, null, 1)}\n${lines.slice(-20).join('\n')}`);
    assert.equal(report.checks.length, 12);
  });
}
