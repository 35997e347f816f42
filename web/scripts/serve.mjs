#!/usr/bin/env node
// Serves the static export (out/) the way Vercel does with web/vercel.json: the same response
// headers (read from vercel.json, the one place they are written), clean URLs (/login is
// login.html, /login.html redirects to /login), no trailing slashes, 404.html for the rest.
// `make dev` and the browser tests use it; HTTPS with --cert/--key (the gateway's development
// certificate), so the page and the API share a site and the refresh cookie works.
//
//   node scripts/serve.mjs [--host localhost] [--port 3000] [--root out] [--cert F --key F]
import { createReadStream, readFileSync, statSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import { extname, join, normalize, resolve, sep } from "node:path";

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : dflt;
};
const here = new URL("..", import.meta.url).pathname;
const root = resolve(here, opt("--root", "out"));
const host = opt("--host", "localhost");
const port = Number(opt("--port", "3000"));
const cert = opt("--cert");
const key = opt("--key");
const vercel = JSON.parse(readFileSync(join(here, "vercel.json"), "utf8"));

// vercel.json `source` patterns are path-to-regexp; these files use literal paths and (.*)
// groups only. Anything else stops the server rather than silently not applying a header.
const rules = (vercel.headers ?? []).map(({ source, headers }) => {
  const literal = source.split("(.*)");
  if (literal.some((part) => /[():*?+]/.test(part))) {
    throw new Error(`vercel.json source ${source}: only literal paths and (.*) are supported here`);
  }
  const re = new RegExp(`^${literal.map((p) => p.replace(/[.\\/[\]{}^$|]/g, "\\$&")).join(".*")}$`);
  return { re, headers };
});

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".txt": "text/plain; charset=utf-8",
  ".woff2": "font/woff2",
};

function file(path) {
  try {
    return statSync(path).isFile() ? path : null;
  } catch {
    return null;
  }
}

function handle(req, res) {
  const url = new URL(req.url ?? "/", "http://x");
  const path = url.pathname;
  for (const { re, headers } of rules) {
    if (re.test(path)) for (const { key: k, value } of headers) res.setHeader(k, value);
  }
  if (req.method !== "GET" && req.method !== "HEAD") {
    res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" });
    return res.end("method not allowed\n");
  }
  let decoded;
  try {
    decoded = decodeURIComponent(path);
  } catch {
    res.writeHead(400, { "content-type": "text/plain" });
    return res.end("bad path\n");
  }
  const redirect = (to) => {
    res.writeHead(308, { location: to + url.search });
    res.end();
  };
  if (decoded.length > 1 && decoded.endsWith("/")) return redirect(path.replace(/\/+$/, ""));
  if (decoded.endsWith(".html")) return redirect(path.slice(0, -5).replace(/\/index$/, "") || "/");
  const target = normalize(join(root, decoded));
  if (target !== root && !target.startsWith(root + sep)) {
    res.writeHead(400, { "content-type": "text/plain" });
    return res.end("bad path\n");
  }
  let status = 200;
  let found = decoded === "/" ? file(join(root, "index.html")) : file(target) ?? file(`${target}.html`);
  if (!found) {
    status = 404;
    found = file(join(root, "404.html"));
  }
  if (!found) {
    res.writeHead(404, { "content-type": "text/plain" });
    return res.end("not found\n");
  }
  res.writeHead(status, {
    "content-type": TYPES[extname(found)] ?? "application/octet-stream",
    "content-length": statSync(found).size,
  });
  if (req.method === "HEAD") return res.end();
  createReadStream(found).pipe(res);
}

const server =
  cert && key
    ? https.createServer({ cert: readFileSync(cert), key: readFileSync(key) }, handle)
    : http.createServer(handle);
server.listen(port, host, () => {
  const a = server.address();
  console.log(`web: serving ${root} on ${cert ? "https" : "http"}://${host}:${a.port}`);
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => server.close(() => process.exit(0)));
