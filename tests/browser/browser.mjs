// Launching Debian's Chromium headless with WebGPU (SwiftShader on machines without a GPU).
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { serve } from './serve.mjs';

// Together these give headless WebGPU on a machine with no GPU and a closed network.
export const CHROMIUM_ARGS = [
  '--enable-unsafe-webgpu', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

// The site the tests open: `root` served on 127.0.0.1 and a fresh headless Chromium; close() ends both.
export async function startSite(root) {
  const server = await serve(root);
  const browser = await launch();
  return {
    browser,
    base: `http://127.0.0.1:${server.address().port}`,
    async close() {
      await browser.close();
      server.close();
    },
  };
}

export async function launch() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'control-clip-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', ...CHROMIUM_ARGS],
    viewport: { width: 1000, height: 800 },
    timeout: 60000,
  });
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/// Opens `url`, waits for `#result[data-status]` to leave "pending"; returns {status, report, console}.
export async function runPage(context, url, { timeout = 600000, screenshot } = {}) {
  const page = await context.newPage();
  const lines = [];
  page.on('console', m => lines.push(`[console.${m.type()}] ${m.text()}`));
  page.on('pageerror', e => lines.push(`[pageerror] ${e.message}`));
  try {
    await page.goto(url, { waitUntil: 'load', timeout: 60000 });
    await page.waitForSelector('#result[data-status]:not([data-status="pending"])', { state: 'attached', timeout });
    const status = await page.getAttribute('#result', 'data-status');
    const text = await page.textContent('#result');
    let report;
    try { report = JSON.parse(text); } catch { report = { text }; }
    return { status, report, console: lines };
  } finally {
    if (screenshot) await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
    await page.close().catch(() => {});
  }
}
