// Browser control path: `checkModel` (the library's `control-clip check`) on the Control-CLIP fixtures, on
// the chosen backend: the identity property on every UNet fixture (f_c = E, weights (1, 0) = the plain
// UNet, tolerance 1e-5), the controlled UNets against PyTorch (1e-3) and single decoupled cross-attention
// layers against PyTorch (1e-4), the CLIP vision tower (1e-4) and one Control-CLIP training step (losses,
// gradients and AdamW against PyTorch, each within its own limit: this is the training code running in
// wasm). Writes a JSON report into #result.
import init, { initBackend, checkModel } from '/www/pkg/control_clip.js';
import { bytes } from './util.js';

const params = new URLSearchParams(location.search);
const backend = params.get('backend') || 'wgpu';
const FIXTURES = '/tests/fixtures';
const result = document.getElementById('result');

async function check(component, folder, weightsFile, ioUrl, tolerance) {
  const t = performance.now();
  const config = await (await fetch(`${folder}/config.json`)).text();
  const r = await checkModel(backend, component, folder, config, await bytes(`${folder}/${weightsFile}`), await bytes(ioUrl), tolerance);
  return { component, folder: folder.replace(`${FIXTURES}/`, ''), maxAbsErr: r.maxAbsErr, pass: r.pass, ms: Math.round(performance.now() - t) };
}

async function main() {
  await init();
  await initBackend(backend);
  const checks = [];
  for (const name of ['sd-tiny', 'bk-tiny', 'linear-proj']) {
    const unet = `${FIXTURES}/unet/${name}`;
    checks.push(await check('control-identity', unet, 'diffusion_pytorch_model.safetensors', `${unet}/io.safetensors`, 1e-5));
    checks.push(await check('control-unet', unet, 'diffusion_pytorch_model.safetensors', `${FIXTURES}/control/unet/${name}/io_2.safetensors`, 1e-3));
  }
  for (const layout of ['h2-d8', 'h5-d40', 'h2-d64', 'h1-d160']) {
    const layer = `${FIXTURES}/control/cross_attention/${layout}`;
    checks.push(await check('cross-attention', layer, 'model.safetensors', `${layer}/io.safetensors`, 1e-4));
  }
  const vision = `${FIXTURES}/clip_vision/vit-patch8-quickgelu`;
  checks.push(await check('vision-encoder', vision, 'model.safetensors', `${vision}/io.safetensors`, 1e-4));
  const step = `${FIXTURES}/finetune/gelu-eos-temperature`;
  checks.push(await check('finetune-step', `${step}/model`, 'model.safetensors', `${step}/io.safetensors`, 1e-4));
  return { backend, checks };
}

main().then(report => {
  result.textContent = JSON.stringify(report, null, 1);
  result.dataset.status = report.checks.every(c => c.pass) ? 'ok' : 'fail';
}, err => {
  result.textContent = JSON.stringify({ backend, error: String(err && err.message || err) });
  result.dataset.status = 'error';
});
