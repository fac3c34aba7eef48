// The generation worker: runs the wasm module and all GPU / CPU work off the main thread, so that the page
// stays responsive. It streams bundle files with progress, verifies each against the manifest's size and
// sha256 before use (once: hashed here with crypto.subtle, checked by the library's `BundleManifest`, which
// is the one reader of the format and writes every message about it), and keeps verified files in the Cache
// Storage so that a reload needs no network.
//
// Messages in:  {type: 'load', id, bundle (URL of the bundle folder), backend ('wgpu' | 'cpu'), maxBinding (bytes; 0: the device's),
//                precision ('auto' | 'f32' | 'f16')}
//               {type: 'load-files', id, files: {name: ArrayBuffer}, backend, maxBinding, precision}
//               {type: 'generate', id, options}   {type: 'cancel'}   {type: 'dispose', id}   {type: 'stats', id}
//               {type: 'plan', id, width, height, guided}
// Messages out: {type: 'progress', id, file, done, total, allDone, allTotal}  {type: 'loaded', id, info}
//               {type: 'step', id, step, total, stepMs, elapsedMs, preview}  {type: 'result', id, width, height, rgba, notices}
//               {type: 'error', id, message, cancelled}: `cancelled` is true when the generation was stopped by
//               a cancel (the wasm rejects with an AbortError), never inferred from the message's text
//               {type: 'disposed', id}   {type: 'stats', id, wasmBytes, gpuBytes, gpuBuffers, largestBinding}
//               {type: 'plan', id, plan: {weightsBytes, activationBytes, totalBytes, largestBinding, limit}}
//               {type: 'fatal', message}: the GPU device was lost or the wasm module trapped; this worker is
//               done and the client starts a fresh one.
import init, { BundleManifest, Generator, capBindings } from './pkg/control_clip.js';

const BUNDLE_CACHE = 'control-clip-bundles-v1';
let ready = null;
let generator = null;

function post(message, transfer) { self.postMessage(message, transfer || []); }

// A lost GPU device (driver reset, GPU process crash, the system reclaiming it) cannot be recovered inside
// this worker: burn keeps its device for the life of the module. So every device the wasm asks for is
// watched, and its loss is reported at once — a generation waiting on the GPU may never finish by itself.
// Tests destroy `self.controlClipDevices` to simulate a loss.
self.controlClipDevices = [];
let reportLoss;
const lostMessage = new Promise(resolve => { reportLoss = resolve; });
if (self.GPUAdapter && GPUAdapter.prototype.requestDevice) {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = async function (...args) {
    const device = await requestDevice.apply(this, args);
    self.controlClipDevices.push(device);
    device.lost.then(info => {
      const message = `The GPU device was lost (${info.reason}${info.message ? `: ${info.message}` : ''}). ` +
        'The generation was stopped; the next one starts on a fresh device.';
      reportLoss(message);
      post({ type: 'fatal', lost: true, message });
    });
    return device;
  };
}
// What this worker holds, for the soak and stress tests (tests/browser/soak.test.mjs), which read it with
// `self.controlClipStats()`: the wasm memory's size, and the GPU buffers alive (created and not destroyed:
// burn's device memory pool takes its pages as buffers, so this is the pool's size and what else the
// wasm allocated on the device).
let wasmMemory = null;
const gpu = { bytes: 0, buffers: 0, live: new WeakSet() };
if (self.GPUDevice && GPUDevice.prototype.createBuffer) {
  const createBuffer = GPUDevice.prototype.createBuffer;
  GPUDevice.prototype.createBuffer = function (...args) {
    const buffer = createBuffer.apply(this, args);
    gpu.live.add(buffer);
    gpu.bytes += buffer.size;
    gpu.buffers += 1;
    return buffer;
  };
  const destroy = GPUBuffer.prototype.destroy;
  GPUBuffer.prototype.destroy = function (...args) {
    if (gpu.live.has(this)) {
      gpu.live.delete(this);
      gpu.bytes -= this.size;
      gpu.buffers -= 1;
    }
    return destroy.apply(this, args);
  };
}
// The largest buffer range any bind group has bound (what maxStorageBufferBindingSize limits): the
// binding-limit test reads it beside the memory plan's figure.
gpu.largestBinding = 0;
if (self.GPUDevice && GPUDevice.prototype.createBindGroup) {
  const createBindGroup = GPUDevice.prototype.createBindGroup;
  GPUDevice.prototype.createBindGroup = function (descriptor, ...rest) {
    for (const entry of (descriptor && descriptor.entries) || []) {
      const r = entry.resource;
      const binding = r && (r.buffer ? r : (self.GPUBuffer && r instanceof GPUBuffer ? { buffer: r } : null));
      if (binding) gpu.largestBinding = Math.max(gpu.largestBinding, binding.size ?? binding.buffer.size - (binding.offset || 0));
    }
    return createBindGroup.call(this, descriptor, ...rest);
  };
}
self.controlClipStats = () => ({ wasmBytes: wasmMemory ? wasmMemory.buffer.byteLength : 0, gpuBytes: gpu.bytes, gpuBuffers: gpu.buffers, largestBinding: gpu.largestBinding });

// A Rust panic traps the wasm module, which cannot be used after that.
const trapped = e => post({ type: 'fatal', message: `The generator stopped with an internal error (${(e && e.message) || e}); the next generation starts afresh.` });
self.addEventListener('error', e => trapped(e.error || e.message));
self.addEventListener('unhandledrejection', e => trapped(e.reason));

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, b => b.toString(16).padStart(2, '0')).join('');
}

async function openCache() {
  try { return await caches.open(BUNDLE_CACHE); } catch { return null; } // no Cache Storage (e.g. file://)
}

// Reads a response body with progress callbacks, never more than `limit` bytes (the manifest's size for the
// file): a longer body is cut off with an error instead of filling memory.
async function readWithProgress(response, limit, onChunk) {
  const tooLong = () => new Error(`${response.url}: more than the manifest's ${limit} bytes: reading stopped (wrong or damaged file)`);
  if (!response.body) {
    const whole = new Uint8Array(await response.arrayBuffer());
    if (whole.length > limit) throw tooLong();
    return whole;
  }
  const reader = response.body.getReader();
  const chunks = [];
  let length = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    length += value.length;
    if (length > limit) {
      await reader.cancel();
      throw tooLong();
    }
    onChunk(length);
  }
  const bytes = new Uint8Array(length);
  let offset = 0;
  for (const c of chunks) { bytes.set(c, offset); offset += c.length; }
  return bytes;
}

// The largest manifest read, as src/bundle.rs's MAX_MANIFEST_BYTES (a real one is a few kilobytes; parsing
// takes some 30 times a manifest's size in memory).
const MAX_MANIFEST_BYTES = 4 << 20;
const manifestTooLarge = (where, bytes) => new Error(`${where}: ${bytes === undefined ? 'more than' : `${bytes} bytes, over`} the ${MAX_MANIFEST_BYTES}-byte limit for a manifest (a real one is a few kilobytes): refused`);

// The manifest's text: from the network when there is one, else the cached copy; never more than
// MAX_MANIFEST_BYTES read.
async function fetchManifest(base) {
  const url = new URL('manifest.json', base).href;
  const cache = await openCache();
  let text;
  try {
    const response = await fetch(url, { cache: 'no-cache' });
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}${response.status === 404 ? ' (no manifest.json: is this a control-clip bundle folder?)' : ''}`);
    const declared = Number(response.headers.get('content-length'));
    if (declared > MAX_MANIFEST_BYTES && !response.headers.get('content-encoding')) throw manifestTooLarge(url, declared);
    let bytes;
    try {
      bytes = await readWithProgress(response, MAX_MANIFEST_BYTES, () => {});
    } catch (e) {
      throw e.message.includes('reading stopped') ? manifestTooLarge(url) : e;
    }
    text = new TextDecoder().decode(bytes);
    if (cache) await cache.put(url, new Response(text));
  } catch (e) {
    const cached = cache && await cache.match(url);
    if (!cached) throw e;
    text = await cached.text();
  }
  return { url, text };
}

// Throws the library's message when `bytes` are not the manifest's file `name`.
async function verify(manifest, name, bytes) {
  manifest.verify(name, bytes.length, await sha256Hex(bytes));
}

async function loadFromUrl(id, base, backend, precision) {
  const { url: manifestUrl, text } = await fetchManifest(base);
  const manifest = new BundleManifest(manifestUrl.replace(/\/manifest\.json$/, ''), text);
  const files = manifest.files();
  const allTotal = files.reduce((n, e) => n + e.bytes, 0);
  const done = {};
  const progress = (file, bytes, total) => {
    done[file] = bytes;
    post({ type: 'progress', id, file, done: bytes, total, allDone: Object.values(done).reduce((a, b) => a + b, 0), allTotal });
  };
  const cache = await openCache();
  const fetchFile = async name => {
    const entry = files.find(e => e.file === name);
    const url = new URL(name, manifestUrl).href;
    const cached = cache && await cache.match(url);
    if (cached) {
      const bytes = new Uint8Array(await cached.arrayBuffer());
      try {
        await verify(manifest, name, bytes);
        progress(name, bytes.length, entry.bytes);
        return bytes;
      } catch {
        await cache.delete(url); // stale or damaged: fetch again
      }
    }
    let response;
    try { response = await fetch(url, { cache: 'no-cache' }); } catch (e) { throw new Error(`${url}: could not be fetched (${e.message}); offline?`); }
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}${response.status === 404 ? ' (the file is missing from the bundle)' : ''}`);
    const declared = Number(response.headers.get('content-length'));
    if (declared > entry.bytes && !response.headers.get('content-encoding')) throw new Error(`${url}: ${declared} bytes, more than the manifest's ${entry.bytes}: refused before reading (wrong file)`);
    const bytes = await readWithProgress(response, entry.bytes, n => progress(name, n, entry.bytes));
    await verify(manifest, name, bytes);
    if (cache) await cache.put(url, new Response(bytes));
    return bytes;
  };
  return { generator: await Generator.load(backend, manifest, fetchFile, precision || 'auto'), manifest };
}

async function loadFromFiles(id, files, backend, precision) {
  if (files['manifest.json'] && files['manifest.json'].byteLength > MAX_MANIFEST_BYTES) throw manifestTooLarge('manifest.json', files['manifest.json'].byteLength);
  const text = files['manifest.json'] && new TextDecoder().decode(files['manifest.json']);
  if (!text) throw new Error('the chosen files hold no manifest.json: choose a control-clip bundle folder');
  const manifest = new BundleManifest('chosen files', text);
  const fetchFile = async name => {
    if (!files[name]) throw new Error(`${name}: missing from the chosen files`);
    const bytes = new Uint8Array(files[name]);
    await verify(manifest, name, bytes);
    post({ type: 'progress', id, file: name, done: bytes.length, total: bytes.length });
    return bytes;
  };
  return { generator: await Generator.load(backend, manifest, fetchFile, precision || 'auto'), manifest };
}

self.onmessage = async ({ data }) => {
  const { id } = data;
  try {
    if (!ready) ready = init().then(wasm => { wasmMemory = wasm.memory; });
    await ready;
    if (data.type === 'load' || data.type === 'load-files') {
      if (generator) { generator.free(); generator = null; }
      capBindings(data.maxBinding || 0);
      const loaded = data.type === 'load' ? await loadFromUrl(id, data.bundle, data.backend, data.precision) : await loadFromFiles(id, data.files, data.backend, data.precision);
      generator = loaded.generator;
      const info = { ...loaded.manifest.info(), backend: data.backend, precision: generator.precision };
      loaded.manifest.free();
      post({ type: 'loaded', id, info });
    } else if (data.type === 'generate') {
      if (!generator) throw new Error('no bundle is loaded');
      const out = await generator.generate(data.options, p => post({ type: 'step', id, ...p }, p.preview ? [p.preview.rgba.buffer] : []));
      const rgba = out.rgba;
      post({ type: 'result', id, width: out.width, height: out.height, rgba, notices: Array.from(out.notices) }, [rgba.buffer]);
    } else if (data.type === 'cancel') {
      if (generator) generator.cancel();
    } else if (data.type === 'plan') {
      if (!generator) throw new Error('no bundle is loaded');
      post({ type: 'plan', id, plan: generator.plan(data.width, data.height, data.guided) });
    } else if (data.type === 'stats') {
      post({ type: 'stats', id, ...self.controlClipStats() });
    } else if (data.type === 'dispose') {
      if (generator) { generator.free(); generator = null; }
      post({ type: 'disposed', id });
    }
  } catch (e) {
    const message = String((e && e.message) || e);
    const cancelled = Boolean(e && e.name === 'AbortError');
    // A failure caused by a lost device (a read-back that could not map, say) can arrive before the device's
    // `lost` promise settles: wait a moment for it, and let the loss be the message (posted as 'fatal').
    if (self.controlClipDevices.length && !cancelled) {
      if (await Promise.race([lostMessage, new Promise(resolve => setTimeout(resolve, 250, null))])) return;
    }
    post({ type: 'error', id, message, cancelled });
  }
};
