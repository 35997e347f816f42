// Static export (`out/`): plain files that Vercel or any static host serves. Response headers
// (CSP and the rest) cannot come from here in an export: they live in vercel.json, which
// scripts/serve.mjs applies too. Built with webpack: Turbopack's export inlines a script
// (chunk registration) that a CSP without 'unsafe-inline' blocks.

const api = process.env.NEXT_PUBLIC_API_ORIGIN ?? "https://localhost:8443";
const transport = process.env.NEXT_PUBLIC_REFRESH_TRANSPORT ?? "cookie";
let parsed;
try {
  parsed = new URL(api);
} catch {
  throw new Error(`NEXT_PUBLIC_API_ORIGIN=${JSON.stringify(api)} is not a URL like https://api.example.com`);
}
if (parsed.origin !== api) {
  throw new Error(`NEXT_PUBLIC_API_ORIGIN=${JSON.stringify(api)} must be an origin (scheme://host[:port], no path or trailing slash): ${parsed.origin}`);
}
if (parsed.protocol !== "https:" && !["localhost", "127.0.0.1", "[::1]"].includes(parsed.hostname)) {
  throw new Error(`NEXT_PUBLIC_API_ORIGIN=${api}: tokens travel to it, so it must be https (plain http only on localhost)`);
}
if (!["cookie", "memory"].includes(transport)) {
  throw new Error(`NEXT_PUBLIC_REFRESH_TRANSPORT=${JSON.stringify(transport)} must be cookie or memory`);
}

/** @type {import('next').NextConfig} */
const config = {
  output: "export",
  reactStrictMode: true,
  poweredByHeader: false,
  trailingSlash: false,
  images: { unoptimized: true },
  productionBrowserSourceMaps: false,
  // `next dev` would otherwise write an AGENTS.md into web/ on every start.
  agentRules: false,
};

export default config;
