// Build-time configuration: `next build` inlines NEXT_PUBLIC_* (docs/environments.md,
// "Front end"). next.config.mjs refuses a build whose values are malformed.

/** The gateway's public origin, e.g. https://api.example.com. Every API call goes there. */
export const API_ORIGIN: string = process.env.NEXT_PUBLIC_API_ORIGIN ?? "https://localhost:8443";

/**
 * Where the refresh token lives (docs/frontend.md):
 * - "cookie": an HttpOnly cookie the API sets, out of page scripts' reach. Needs the front end
 *   and the API on one site (app.example.com + api.example.com).
 * - "memory": a variable of this page only. For cross-site deployments, where browsers drop
 *   the API's cookies; a reload or a new tab asks to sign in again.
 */
export const REFRESH_TRANSPORT: "cookie" | "memory" =
  process.env.NEXT_PUBLIC_REFRESH_TRANSPORT === "memory" ? "memory" : "cookie";
