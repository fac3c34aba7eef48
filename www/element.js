// <control-clip-demo>: the generator as one element that a project page adds with a single script tag:
//
//   <script type="module" src="https://…/element.js"></script>
//   <control-clip-demo bundle="models/default/" prompt="a red star with stripes" style-weight="0"></control-clip-demo>
//
// Attributes: bundle (URL of a bundle folder; default: the bundle next to this script), prompt,
// category-weight, style-weight, steps, guidance, seed, width, height, backend (webgpu | cpu), precision (auto | f32 |
// f16: what the models compute in; auto, the default, is f16 where the adapter has shader-f16). It renders a
// prompt box, the two weight sliders, Generate / Cancel, progress and the image; events `ready`, `step`
// and `generated` (detail: the result) bubble out. The work runs in a worker, like the page's.
import { ControlClipClient, bundleDefaults, chooseBackend, draw, isCancelled } from './client.js';

const TEMPLATE = `
<style>
  :host { display: block; font: 15px/1.4 system-ui, sans-serif; border: 1px solid #d7d7de; border-radius: 10px; padding: 12px; max-width: 560px; background: #fff; color: #1d1d1f; }
  label { display: block; font-weight: 600; margin: 6px 0 2px; }
  input[type=text] { width: 100%; box-sizing: border-box; font: inherit; padding: 5px 7px; }
  .row { display: flex; gap: 8px; align-items: center; }
  .row input[type=range] { flex: 1; }
  output { min-width: 3em; text-align: right; }
  button { font: inherit; padding: 6px 12px; margin: 8px 8px 8px 0; }
  :focus-visible { outline: 3px solid #f0a202; outline-offset: 2px; }
  canvas { width: 100%; max-width: 512px; aspect-ratio: 1; image-rendering: pixelated; background: #eee; border-radius: 6px; display: block; }
  progress { width: 100%; }
  .status { color: #5b5b66; font-size: .9em; overflow-wrap: anywhere; }
  .error { color: #a4161a; font-weight: 600; overflow-wrap: anywhere; }
</style>
<label for="prompt">Prompt</label>
<input id="prompt" type="text">
<label for="category">Category weight</label>
<div class="row"><input id="category" type="range" min="0" max="2" step="0.05"><output id="category-value"></output></div>
<label for="style">Style weight</label>
<div class="row"><input id="style" type="range" min="0" max="2" step="0.05"><output id="style-value"></output></div>
<button id="generate" type="button" disabled>Generate</button><button id="cancel" type="button" disabled>Cancel</button>
<progress id="progress" max="1" value="0" aria-label="Progress"></progress>
<p id="status" class="status" role="status">loading…</p>
<p id="error" class="error" role="alert" hidden></p>
<canvas id="canvas" width="64" height="64" aria-label="Generated image"></canvas>`;

class ControlClipDemo extends HTMLElement {
  connectedCallback() {
    if (this.shadowRoot) return;
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = TEMPLATE;
    const $ = id => root.getElementById(id);
    this.$ = $;
    $('prompt').value = this.getAttribute('prompt') || '';
    for (const [id, attr, dflt] of [['category', 'category-weight', '1'], ['style', 'style-weight', '1']]) {
      $(id).value = this.getAttribute(attr) ?? dflt;
      $(`${id}-value`).textContent = $(id).value;
      $(id).addEventListener('input', () => { $(`${id}-value`).textContent = $(id).value; });
    }
    $('generate').addEventListener('click', () => this.generate());
    $('cancel').addEventListener('click', () => this.client && this.client.cancel());
    $('prompt').addEventListener('keydown', e => { if (e.key === 'Enter') this.generate(); });
    this.start();
  }

  disconnectedCallback() {
    if (this.client) this.client.dispose().catch(() => {});
    this.client = null;
  }

  async start() {
    const $ = this.$;
    try {
      const choice = await chooseBackend(this.getAttribute('backend'));
      this.client = new ControlClipClient({ precision: this.getAttribute('precision') || 'auto' });
      const bundle = this.getAttribute('bundle') || new URL('models/default/', import.meta.url).href;
      this.info = await this.client.load(bundle, choice.backend, p => {
        if (p.allTotal) $('progress').value = p.allDone / p.allTotal;
        $('status').textContent = `loading ${p.file}…`;
      });
      const d = bundleDefaults(this.info.defaults);
      if (!$('prompt').value && d.prompt) $('prompt').value = d.prompt;
      // Sliders the page did not set by attribute start at the bundle's recommended weights.
      for (const [id, attr, key] of [['category', 'category-weight', 'categoryWeight'], ['style', 'style-weight', 'styleWeight']]) {
        if (!this.hasAttribute(attr)) { $(id).value = d[key]; $(`${id}-value`).textContent = $(id).value; }
      }
      $('status').textContent = `${this.info.name} on ${choice.backend === 'wgpu' ? 'WebGPU' : 'the CPU'}` + (choice.reason ? ` (${choice.reason})` : '');
      $('generate').disabled = false;
      this.dispatchEvent(new CustomEvent('ready', { detail: this.info, bubbles: true }));
    } catch (e) {
      $('error').textContent = `Could not start: ${e.message}`;
      $('error').hidden = false;
    }
  }

  async generate() {
    const $ = this.$;
    if (!this.client || this.busy) return;
    this.busy = true;
    $('generate').disabled = true;
    $('cancel').disabled = false;
    $('error').hidden = true;
    const d = bundleDefaults(this.info && this.info.defaults);
    const num = (attr, key) => (this.hasAttribute(attr) ? Number(this.getAttribute(attr)) : d[key]);
    const options = {
      prompt: $('prompt').value, categoryWeight: Number($('category').value), styleWeight: Number($('style').value),
      steps: num('steps', 'steps'), guidance: num('guidance', 'guidance'), seed: num('seed', 'seed'),
      width: num('width', 'width'), height: num('height', 'height'), preview: true,
    };
    try {
      const result = await this.client.generate(options, p => {
        $('progress').value = p.step / p.total;
        $('status').textContent = `step ${p.step} of ${p.total}`;
        if (p.preview) draw($('canvas'), p.preview);
        this.dispatchEvent(new CustomEvent('step', { detail: p, bubbles: true }));
      });
      draw($('canvas'), result);
      $('status').textContent = 'done';
      this.dispatchEvent(new CustomEvent('generated', { detail: result, bubbles: true }));
    } catch (e) {
      if (isCancelled(e)) $('status').textContent = 'cancelled';
      else { $('error').textContent = `Generation failed: ${e.message}`; $('error').hidden = false; }
    } finally {
      this.busy = false;
      $('generate').disabled = false;
      $('cancel').disabled = true;
    }
  }
}

if (!customElements.get('control-clip-demo')) customElements.define('control-clip-demo', ControlClipDemo);
