// The page: loads a bundle in the generation worker, turns the controls into requests, shows progress,
// draws results, keeps the session's history and the settings in the URL (a shared link reproduces
// the image).
import { ControlClipClient, bundleDefaults, chooseBackend, draw, isCancelled } from './client.js';

const $ = id => document.getElementById(id);
const params = new URLSearchParams(location.search);
const DEFAULT_BUNDLE = 'models/default/';
const FIELDS = { prompt: 'prompt', negative: 'negativePrompt', steps: 'steps', guidance: 'guidance', seed: 'seed', scheduler: 'scheduler', width: 'width', height: 'height' };

let client = null;
let backend = 'cpu';
let busy = false;
let results = [];

// Page events for embedding pages and tests: {kind: 'progress' | 'step' | 'loaded' | 'done' | 'error', …}.
function announce(kind, detail) {
  window.dispatchEvent(new CustomEvent('control-clip', { detail: { kind, ...detail } }));
}

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = !message;
}

function formatBytes(n) { return n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(0)} kB`; }

function settings() {
  const s = {
    prompt: $('prompt').value, negativePrompt: $('negative').value,
    categoryWeight: Number($('category-weight-value').value), styleWeight: Number($('style-weight-value').value),
    steps: Number($('steps').value), guidance: Number($('guidance').value), seed: Number($('seed').value),
    width: Number($('width').value), height: Number($('height').value),
  };
  if ($('scheduler').value) s.scheduler = $('scheduler').value;
  return s;
}

function applySettings(s) {
  for (const [id, key] of Object.entries(FIELDS)) if (s[key] !== undefined && s[key] !== null) $(id).value = s[key];
  for (const [id, key] of [['category-weight', 'categoryWeight'], ['style-weight', 'styleWeight']]) {
    if (s[key] !== undefined && s[key] !== null && s[key] !== '') { $(id).value = s[key]; $(`${id}-value`).value = s[key]; }
  }
  if (s.compare !== undefined) $('compare').checked = s.compare;
}

function settingsFromUrl() {
  const s = {};
  for (const key of [...Object.values(FIELDS), 'categoryWeight', 'styleWeight']) if (params.has(key)) s[key] = params.get(key);
  if (params.has('compare')) s.compare = params.get('compare') === '1';
  return s;
}

function writeUrl(s) {
  const url = new URL(location.href);
  for (const [k, v] of Object.entries(s)) url.searchParams.set(k, String(v));
  url.searchParams.set('compare', $('compare').checked ? '1' : '0');
  window.history.replaceState(null, '', url);
}

function setBusy(on) {
  busy = on;
  $('generate').disabled = on || !client;
  $('cancel').disabled = !on;
}

async function loadBundle(source) {
  setBusy(true);
  $('generate').disabled = true;
  showError('');
  $('load-progress').value = 0;
  const onProgress = p => {
    announce('progress', p);
    if (p.allTotal) $('load-progress').value = p.allDone / p.allTotal;
    $('load-status').textContent = `loading ${p.file}: ${formatBytes(p.done)} of ${formatBytes(p.total)}`;
  };
  try {
    if (client) await client.dispose().catch(() => {});
    client = new ControlClipClient({ maxBinding: Number(params.get('maxBinding')) || 0, precision: params.get('precision') || 'auto' });
    const info = typeof source === 'string' ? await client.load(source, backend, onProgress) : await client.loadFiles(source, backend, onProgress);
    $('load-progress').value = 1;
    $('load-status').textContent = 'ready';
    $('model-info').textContent = `${info.name} — licence: ${info.licence} — ${formatBytes(info.bytes)} — computes in ${info.precision}` +
      (info.control.length ? ` — Control-CLIP: ${info.control.join(', ').replaceAll('_', ' ')}` : ' — no Control-CLIP encoders (plain generator)');
    $('default-note').hidden = !(typeof source === 'string' && source === DEFAULT_BUNDLE);
    // The bundle's recommended settings, except where the URL names its own.
    const d = bundleDefaults(info.defaults);
    applySettings(Object.fromEntries(['prompt', 'steps', 'guidance', 'width', 'height', 'categoryWeight', 'styleWeight']
      .filter(key => !params.has(key)).map(key => [key, d[key]])));
    // With a style encoder the side-by-side view (style weight 0 beside the chosen weight) is on unless the
    // URL says otherwise: it is what shows the style weight's effect.
    if (!params.has('compare')) $('compare').checked = info.control.includes('style_encoder');
    document.body.dataset.state = 'ready';
    announce('loaded', info);
  } catch (e) {
    client = null;
    $('load-status').textContent = 'not loaded';
    showError(`Could not load the bundle: ${e.message}`);
    document.body.dataset.state = 'load-error';
    announce('error', { message: e.message });
  } finally {
    setBusy(false);
  }
}

// One generation; the canvas shows a low-resolution preview after every step (when the bundle's decoder
// is the tiny one) and then the image.
async function run(options, label, canvas) {
  const start = performance.now();
  const result = await client.generate({ ...options, preview: true }, p => {
    announce('step', { step: p.step, total: p.total, stepMs: p.stepMs, elapsedMs: p.elapsedMs, preview: Boolean(p.preview) });
    if (p.preview) draw(canvas, p.preview);
    $('gen-progress').value = p.step / p.total;
    const left = p.elapsedMs / p.step * (p.total - p.step);
    $('gen-status').textContent = `${label}step ${p.step} of ${p.total} — ${(left / 1000).toFixed(1)} s left`;
  });
  result.ms = performance.now() - start;
  return result;
}

async function generate() {
  if (busy || !client) return;
  const s = settings();
  showError('');
  setBusy(true);
  document.body.dataset.state = 'generating';
  $('gen-progress').value = 0;
  writeUrl(s);
  try {
    let plain = null;
    if ($('compare').checked) {
      $('figure-plain').hidden = false;
      plain = await run({ ...s, styleWeight: 0 }, 'style weight 0: ', $('canvas-plain'));
      draw($('canvas-plain'), plain);
    }
    $('figure-plain').hidden = !plain;
    const result = await run(s, plain ? `style weight ${s.styleWeight}: ` : '', $('canvas'));
    draw($('canvas'), result);
    $('caption').textContent = `seed ${s.seed}, λc ${s.categoryWeight}, λs ${s.styleWeight}`;
    $('gen-status').textContent = `done in ${(result.ms / 1000).toFixed(1)} s` + (result.notices.length ? ` — ${result.notices.join('; ')}` : '');
    $('download').disabled = false;
    addToHistory(s);
    // On a narrow screen the controls stand above the picture: bring it into view once it is done.
    const box = $('canvas').getBoundingClientRect();
    if (box.bottom > window.innerHeight || box.top < 0) $('output').scrollIntoView({ block: 'start' });
    document.body.dataset.state = 'done';
    announce('done', { width: result.width, height: result.height });
  } catch (e) {
    const cancelled = isCancelled(e);
    $('gen-status').textContent = cancelled ? 'cancelled' : 'failed';
    if (!cancelled) showError(`Generation failed: ${e.message}`);
    document.body.dataset.state = cancelled ? 'cancelled' : 'error';
  } finally {
    setBusy(false);
  }
}

function addToHistory(s) {
  const item = { settings: { ...s, compare: $('compare').checked }, image: $('canvas').toDataURL('image/png') };
  results.unshift(item);
  results = results.slice(0, 12);
  $('history').replaceChildren(...results.map(h => {
    const li = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.title = `${h.settings.prompt} — seed ${h.settings.seed}, λc ${h.settings.categoryWeight}, λs ${h.settings.styleWeight}`;
    button.setAttribute('aria-label', `Restore: ${button.title}`);
    const img = document.createElement('img');
    img.src = h.image;
    img.alt = '';
    button.append(img);
    button.onclick = () => applySettings(h.settings);
    li.append(button);
    return li;
  }));
}

// The files of a drop: a dropped folder's files (one level), or the dropped files themselves.
async function droppedFiles(transfer) {
  const files = [];
  const entries = Array.from(transfer.items || []).map(i => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  for (const entry of entries) {
    if (entry.isDirectory) {
      const children = await new Promise((resolve, reject) => entry.createReader().readEntries(resolve, reject));
      for (const child of children.filter(c => c.isFile)) files.push(await new Promise((resolve, reject) => child.file(resolve, reject)));
    } else if (entry.isFile) {
      files.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
    }
  }
  return files.length ? files : Array.from(transfer.files || []);
}

function linkSliders(id) {
  $(id).addEventListener('input', () => { $(`${id}-value`).value = $(id).value; });
  $(`${id}-value`).addEventListener('input', () => { $(id).value = $(`${id}-value`).value; });
}

async function main() {
  linkSliders('category-weight');
  linkSliders('style-weight');
  applySettings(settingsFromUrl());
  $('controls').addEventListener('submit', e => { e.preventDefault(); generate(); });
  $('cancel').addEventListener('click', () => client && client.cancel());
  $('dice').addEventListener('click', () => { $('seed').value = Math.floor(Math.random() * 2 ** 31); });
  document.addEventListener('keydown', e => {
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') { e.preventDefault(); generate(); }
  });
  $('download').addEventListener('click', () => {
    const a = document.createElement('a');
    a.href = $('canvas').toDataURL('image/png');
    a.download = `control-clip-seed${$('seed').value}.png`;
    a.click();
  });
  $('bundle-files').addEventListener('change', e => { if (e.target.files.length) loadBundle(Array.from(e.target.files)); });
  // A bundle folder (or its files) dropped anywhere on the page.
  document.addEventListener('dragover', e => e.preventDefault());
  document.addEventListener('drop', async e => {
    e.preventDefault();
    const files = await droppedFiles(e.dataTransfer);
    if (files.length) loadBundle(files);
  });

  if ('serviceWorker' in navigator && location.protocol !== 'file:') {
    navigator.serviceWorker.register('sw.js').catch(e => console.warn('service worker not registered:', e.message));
  }
  const choice = await chooseBackend(params.get('backend'));
  backend = choice.backend;
  const adapter = choice.adapter;
  $('backend-info').textContent = `Backend: ${backend === 'wgpu' ? 'WebGPU' : 'CPU (WebAssembly)'}` +
    (adapter.available ? ` — adapter: ${adapter.name}${adapter.fallback ? ' (software fallback)' : ''}, shader-f16 ${adapter.shaderF16 ? 'yes' : 'no'}` : '') +
    (choice.reason ? `. ${choice.reason}` : '');
  document.body.dataset.backend = backend;
  await loadBundle(params.get('bundle') || DEFAULT_BUNDLE);
}

main();
