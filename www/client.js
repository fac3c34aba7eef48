// The page side of the generation worker, shared by the page (app.js) and the embeddable element
// (element.js): picks the backend, and turns the worker's messages into promises and callbacks.

const WORKER_URL = new URL('./worker.js', import.meta.url);

// Which backend to use. On a software *fallback* WebGPU adapter (SwiftShader and the like) WebGPU is of no
// use — the same small UNet ran ~130× slower there than on the wasm CPU path — so the CPU backend is chosen
// and the page says why; `forced` ('webgpu' | 'cpu', from ?backend=) overrides the choice.
export async function chooseBackend(forced) {
  const adapterInfo = await describeAdapter();
  if (forced === 'cpu') return { backend: 'cpu', reason: 'CPU backend forced by ?backend=cpu.', adapter: adapterInfo };
  if (!adapterInfo.available) {
    if (forced === 'webgpu') return { backend: 'wgpu', reason: `WebGPU forced, but ${adapterInfo.problem}`, adapter: adapterInfo };
    return {
      backend: 'cpu', adapter: adapterInfo, slow: true,
      reason: `${adapterInfo.problem} WebGPU works in recent Chrome and Edge (and in Firefox and Safari where enabled; ` +
        'on Linux Chrome may need chrome://flags/#enable-unsafe-webgpu). Running on the CPU instead, in WebAssembly: slower.',
    };
  }
  if (forced === 'webgpu') return { backend: 'wgpu', reason: 'WebGPU forced by ?backend=webgpu.', adapter: adapterInfo };
  if (adapterInfo.fallback) {
    return {
      backend: 'cpu', adapter: adapterInfo,
      reason: 'The WebGPU adapter is a software fallback (no GPU is used), which is far slower than the CPU path: ' +
        'running on the CPU in WebAssembly. Add ?backend=webgpu to use it anyway.',
    };
  }
  return { backend: 'wgpu', reason: '', adapter: adapterInfo };
}

async function describeAdapter() {
  if (!('gpu' in navigator) || !navigator.gpu) return { available: false, problem: 'This browser has no WebGPU (navigator.gpu is missing).' };
  let adapter = null;
  try { adapter = await navigator.gpu.requestAdapter(); } catch { adapter = null; }
  if (!adapter) return { available: false, problem: 'WebGPU is present but gave no adapter (no usable GPU or driver).' };
  const info = adapter.info || {};
  return {
    available: true,
    name: [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' ') || 'unknown adapter',
    fallback: Boolean(info.isFallbackAdapter ?? adapter.isFallbackAdapter),
    shaderF16: adapter.features.has('shader-f16'),
    limits: {
      maxBufferSize: adapter.limits.maxBufferSize,
      maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
      maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize,
    },
  };
}

// Generation settings when neither the caller nor the bundle's manifest names them (the page and the element
// both resolve their defaults through `bundleDefaults`, so they agree). No fallback prompt: the page and the
// element keep the one they show.
const FALLBACK_SETTINGS = Object.freeze({ steps: 20, guidance: 7.5, width: 512, height: 512, categoryWeight: 1, styleWeight: 0, seed: 1 });

// A manifest's `defaults` ({prompt, steps, guidance, width, height, category_weight, style_weight}) as
// generation options, each missing one from FALLBACK_SETTINGS.
export function bundleDefaults(defaults) {
  const d = defaults || {};
  const given = { prompt: d.prompt, steps: d.steps, guidance: d.guidance, width: d.width, height: d.height,
    categoryWeight: d.category_weight, styleWeight: d.style_weight };
  const out = { ...FALLBACK_SETTINGS };
  for (const [k, v] of Object.entries(given)) if (v !== undefined && v !== null) out[k] = v;
  return out;
}

// A generation that was cancelled rejects with this (a DOMException named AbortError); any other failure is
// an Error. Tell them apart by the name, never by the message.
export const isCancelled = e => Boolean(e && e.name === 'AbortError');

// One worker with one loaded bundle. Every method returns a promise; failures reject with an Error whose
// message says what went wrong (for a cancelled generation see `isCancelled`). When the worker reports a
// fatal error (a lost GPU device, a trapped wasm
// module) or dies, the running request fails with that message and the worker is dropped; the next
// `generate` starts a fresh worker and loads the same bundle again (from the Cache Storage, so quickly).
export class ControlClipClient {
  // options.maxBinding: plan every GPU buffer within this many bytes, as on a device whose
  // maxStorageBufferBindingSize is that small (the page's ?maxBinding=; default: the device's own limit).
  // options.precision: what the models compute in, 'auto' (default: f16 where the adapter has shader-f16),
  // 'f32' or 'f16' (the page's ?precision=); the loaded info's `precision` says which it got.
  constructor(options = {}) {
    this.pending = new Map();
    this.nextId = 1;
    this.source = null;
    this.worker = null;
    this.restarts = 0;
    this.maxBinding = options.maxBinding || 0;
    this.precision = options.precision || 'auto';
  }

  startWorker() {
    const worker = new Worker(WORKER_URL, { type: 'module' });
    worker.onmessage = ({ data }) => {
      if (data.type === 'fatal') return this.fail(worker, data.message);
      const p = this.pending.get(data.id);
      if (!p) return;
      if (data.type === 'progress') p.onProgress?.(data);
      else if (data.type === 'step') p.onStep?.(data);
      else {
        this.pending.delete(data.id);
        if (data.type === 'error') p.reject(data.cancelled ? new DOMException(data.message, 'AbortError') : new Error(data.message));
        else p.resolve(data);
      }
    };
    worker.onerror = e => this.fail(worker, `the generation worker failed: ${e.message || 'unknown error'}`);
    this.worker = worker;
    return worker;
  }

  // Drops a broken worker; every request in flight fails with `message`.
  fail(worker, message) {
    if (worker !== this.worker) return;
    worker.terminate();
    this.worker = null;
    const error = new Error(message);
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
  }

  request(message, callbacks = {}, transfer = []) {
    const worker = this.worker || this.startWorker();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, ...callbacks });
      worker.postMessage({ ...message, id }, transfer);
    });
  }

  // bundle: URL of a bundle folder. onProgress({file, done, total, allDone, allTotal}).
  async load(bundle, backend, onProgress) {
    const base = new URL(bundle.endsWith('/') ? bundle : `${bundle}/`, location.href).href;
    this.source = { bundle: base, backend };
    return (await this.request({ type: 'load', bundle: base, backend, maxBinding: this.maxBinding, precision: this.precision }, { onProgress })).info;
  }

  // files: FileList / array of File from a folder the user chose or dropped.
  async loadFiles(files, backend, onProgress) {
    this.source = { files: Array.from(files), backend };
    return this.sendFiles(this.source.files, backend, onProgress);
  }

  async sendFiles(files, backend, onProgress) {
    const map = {};
    for (const f of files) map[f.name] = await f.arrayBuffer();
    return (await this.request({ type: 'load-files', files: map, backend, maxBinding: this.maxBinding, precision: this.precision }, { onProgress }, Object.values(map))).info;
  }

  // options: {prompt, negativePrompt, categoryWeight, styleWeight, steps, guidance, seed, scheduler, width, height,
  // preview}. onStep({step, total, stepMs, elapsedMs, preview: {width, height, rgba} | null}). Resolves to
  // {width, height, rgba, notices}.
  async generate(options, onStep) {
    if (!this.worker && this.source) {
      // The last worker was dropped (see the class comment): a fresh one, with the same bundle.
      this.restarts += 1;
      const { bundle, files, backend } = this.source;
      if (bundle) await this.request({ type: 'load', bundle, backend, maxBinding: this.maxBinding, precision: this.precision });
      else await this.sendFiles(files, backend);
    }
    return this.request({ type: 'generate', options }, { onStep });
  }

  cancel() { if (this.worker) this.worker.postMessage({ type: 'cancel' }); }

  // What the worker holds: {wasmBytes, gpuBytes, gpuBuffers, largestBinding} (worker.js), or null without a worker.
  async stats() { return this.worker ? this.request({ type: 'stats' }) : null; }

  // The loaded bundle's memory plan at a size: {weightsBytes, activationBytes, totalBytes, largestBinding,
  // limit} (the library's `plan::MemoryPlan`), to set beside `stats()`.
  async plan(width, height, guided = true) { return (await this.request({ type: 'plan', width, height, guided })).plan; }

  async dispose() {
    if (!this.worker) return;
    await this.request({ type: 'dispose' });
    this.worker.terminate();
    this.worker = null;
    this.source = null;
  }
}

// Draws a result on a canvas (sized to the image).
export function draw(canvas, result) {
  canvas.width = result.width;
  canvas.height = result.height;
  canvas.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(result.rgba), result.width, result.height), 0, 0);
}
