// Service worker: keeps the app shell (page, scripts, styles, the wasm package) in the Cache Storage so that
// after one visit the page works with the network off. Network first, so that a new build is picked up at
// once when online; the cache answers when the network does not. Bundle files are cached (after their
// sha256 is verified) by worker.js in its own cache, which this worker also answers from when offline.
const SHELL_CACHE = 'control-clip-shell-v1';
const SHELL = ['./', 'index.html', 'app.js', 'client.js', 'worker.js', 'element.js', 'style.css', 'embed-example.html',
  'pkg/control_clip.js', 'pkg/control_clip_bg.wasm'];

self.addEventListener('install', event => {
  event.waitUntil(caches.open(SHELL_CACHE).then(cache => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', event => {
  event.waitUntil(self.clients.claim());
});

self.addEventListener('fetch', event => {
  const request = event.request;
  if (request.method !== 'GET' || new URL(request.url).origin !== location.origin) return;
  event.respondWith((async () => {
    try {
      const response = await fetch(request);
      const path = new URL(request.url).pathname;
      if (response.ok && SHELL.some(s => path.endsWith(s.replace('./', '/')))) {
        const cache = await caches.open(SHELL_CACHE);
        await cache.put(request, response.clone());
      }
      return response;
    } catch (e) {
      const cached = await caches.match(request, { ignoreSearch: true });
      if (cached) return cached;
      throw e;
    }
  })());
});
