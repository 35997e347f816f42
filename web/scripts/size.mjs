#!/usr/bin/env node
// The JavaScript each exported page loads on a first visit, gzipped (what a static host sends),
// from the <script src> tags of out/*.html. Prints a table; exits 1 when a page is over the
// budget (a page can be the first one a visitor opens, so each is held to it). `nomodule`
// polyfills only reach browsers without ES modules and are listed apart.
//
//   node scripts/size.mjs [--budget-kib 120] [--json FILE]
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { gzipSync } from "node:zlib";

const out = new URL("../out/", import.meta.url).pathname;
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const budget = Number(opt("--budget-kib", "120")) * 1024;

const gz = new Map();
const gzipped = (src) => {
  if (!gz.has(src)) gz.set(src, gzipSync(readFileSync(join(out, src))).length);
  return gz.get(src);
};

const rows = [];
let legacy = 0;
for (const file of readdirSync(out).filter((f) => f.endsWith(".html")).sort()) {
  const html = readFileSync(join(out, file), "utf8");
  let total = 0;
  for (const [tag, src] of html.matchAll(/<script\b[^>]*\bsrc="\/([^"]+)"[^>]*>/g)) {
    if (/\bnomodule\b/i.test(tag)) legacy = Math.max(legacy, gzipped(src));
    else total += gzipped(src);
  }
  // An executable inline script is what a CSP without 'unsafe-inline' blocks; a JSON data
  // block (__NEXT_DATA__) is never executed.
  for (const [tag] of html.matchAll(/<script\b[^>]*>/g)) {
    if (!/\bsrc="/.test(tag) && !/\btype="application\/json"/.test(tag)) {
      console.error(`${file}: inline script ${tag}: the CSP (script-src 'self') blocks it`);
      process.exitCode = 1;
    }
  }
  const page = file === "index.html" ? "/" : `/${file.replace(/\.html$/, "")}`;
  rows.push({ page, bytes: total });
}

const kib = (n) => (n / 1024).toFixed(1).padStart(6);
console.log("page                JS (gzip, KiB)");
for (const r of rows) {
  const over = r.bytes > budget;
  console.log(`${r.page.padEnd(20)}${kib(r.bytes)}${over ? "  OVER BUDGET" : ""}`);
  if (over) process.exitCode = 1;
}
console.log(`(budget ${kib(budget).trim()} KiB per page; legacy nomodule polyfills, not loaded by current browsers: ${kib(legacy).trim()} KiB)`);
const json = opt("--json");
if (json) {
  mkdirSync(dirname(json), { recursive: true });
  writeFileSync(json, JSON.stringify(rows, null, 2));
}
