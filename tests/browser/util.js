// Helpers shared by the browser test pages.

export async function bytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

// Minimal safetensors reader for the reference file (F32 / I64 only: what the fixtures hold).
export function readSafetensors(buf) {
  const n = Number(new DataView(buf.buffer, buf.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(buf.subarray(8, 8 + n)));
  const out = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [b, e] = info.data_offsets;
    const slice = buf.slice(8 + n + b, 8 + n + e).buffer;
    out[name] = { shape: info.shape, data: info.dtype === 'I64' ? Array.from(new BigInt64Array(slice), Number) : new Float32Array(slice) };
  }
  return out;
}

export function maxAbsErr(a, b) {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) { const d = Math.abs(a[i] - b[i]); if (!(d <= m)) m = d; }
  return m;
}

export async function expectError(label, fn, mustContain) {
  try {
    await fn();
    return { label, ok: false, message: 'no error was raised' };
  } catch (e) {
    const message = String(e && e.message || e);
    return { label, ok: mustContain.every(s => message.includes(s)) && e instanceof Error, message };
  }
}
