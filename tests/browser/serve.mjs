// Static file server for the page and the browser tests: 127.0.0.1 only (a secure context, so WebGPU
// is allowed), `application/wasm` for .wasm so streaming compilation works, no caching. Options (benchmarks):
// `isolated` sends the headers that make the page cross-origin isolated (SharedArrayBuffer, so wasm threads);
// `mounts` maps URL prefixes to other folders ({ '/peer/': dir }).
//
//   node tests/browser/serve.mjs DIR [PORT]      (./build.sh serve uses this for www/ on port 8080)
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const MIME = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.wasm': 'application/wasm', '.json': 'application/json', '.css': 'text/css', '.png': 'image/png',
  '.svg': 'image/svg+xml', '.wgsl': 'text/plain', '.txt': 'text/plain', '.safetensors': 'application/octet-stream',
  '.onnx': 'application/octet-stream',
};

export function serve(root, port = 0, { isolated = false, mounts = {} } = {}) {
  const isolation = isolated ? { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' } : {};
  const server = http.createServer((req, res) => {
    let p = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    if (p.endsWith('/')) p += 'index.html';
    const mount = Object.keys(mounts).find(prefix => p.startsWith(prefix));
    const base = path.resolve(mount ? mounts[mount] : root);
    const file = path.join(base, mount ? p.slice(mount.length) : p);
    if (!file.startsWith(base)) { res.writeHead(403); return res.end(); }
    fs.readFile(file, (err, data) => {
      if (err) { res.writeHead(404, { 'Content-Type': 'text/plain' }); return res.end('not found'); }
      res.writeHead(200, { 'Content-Type': MIME[path.extname(file)] || 'application/octet-stream', 'Cache-Control': 'no-store', ...isolation });
      res.end(data);
    });
  });
  return new Promise((resolve, reject) => {
    server.on('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [dir = '.', port = '8080'] = process.argv.slice(2);
  const server = await serve(dir, +port);
  console.log(`serving ${path.resolve(dir)} on http://127.0.0.1:${server.address().port}/ (Ctrl+C to stop)`);
}
