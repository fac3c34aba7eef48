// Static file server for the page and the browser tests: 127.0.0.1 only (a secure context, so WebGPU
// is allowed), `application/wasm` for .wasm so streaming compilation works, no caching.
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
};

export function serve(root, port = 0) {
  root = path.resolve(root);
  const server = http.createServer((req, res) => {
    let p = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    if (p.endsWith('/')) p += 'index.html';
    const file = path.join(root, p);
    if (!file.startsWith(root)) { res.writeHead(403); return res.end(); }
    fs.readFile(file, (err, data) => {
      if (err) { res.writeHead(404, { 'Content-Type': 'text/plain' }); return res.end('not found'); }
      res.writeHead(200, { 'Content-Type': MIME[path.extname(file)] || 'application/octet-stream', 'Cache-Control': 'no-store' });
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
