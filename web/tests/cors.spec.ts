// CORS as the browser enforces it: a page on an origin the gateway does not allow gets
// nothing it can read; the allowed origin's preflights succeed.
import { API, OTHER, expect, registered, test } from "./helpers";

type Seen = { status?: number; type?: string; requestId?: string | null; error?: string };

test("a page on an origin the gateway does not allow cannot read API responses", async ({ page, request }) => {
  const user = await registered(request, "cors");
  await page.goto(`${OTHER}/login`);
  // The app's start-up refresh got no readable answer: it says it cannot reach the service.
  await expect(page.getByText("Cannot reach the service. Check your connection and try again.")).toBeVisible();
  await page.getByLabel("E-mail address").fill(user.email);
  await page.getByLabel("Password").fill(user.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.locator("main").getByRole("alert")).toHaveText("Cannot reach the service. Check your connection and try again.");
  await expect(page.getByTestId("user-email")).toHaveCount(0);

  // What the page's own scripts get: an error, no status, no body; for a simple GET (sent,
  // answered, withheld by the browser) and for a POST that needs a preflight (never sent).
  const seen = await page.evaluate(async (api) => {
    const attempt = async (path: string, init: RequestInit): Promise<Seen> => {
      try {
        const r = await fetch(api + path, init);
        return { status: r.status };
      } catch (e) {
        return { error: (e as Error).name };
      }
    };
    return {
      jwks: await attempt("/.well-known/jwks.json", {}),
      login: await attempt("/auth/login", {
        method: "POST",
        headers: { "content-type": "application/json", "refresh-token-transport": "cookie" },
        credentials: "include",
        body: "{}",
      }),
    };
  }, API);
  expect(seen).toEqual({ jwks: { error: "TypeError" }, login: { error: "TypeError" } });

  // The gateway's side of it: the GET is answered without allowing that origin, the
  // preflight is refused.
  const get = await request.get(`${API}/.well-known/jwks.json`, { headers: { origin: OTHER } });
  expect(get.status()).toBe(200);
  expect(get.headers()["access-control-allow-origin"]).toBeUndefined();
  const preflight = await request.fetch(`${API}/auth/login`, {
    method: "OPTIONS",
    headers: { origin: OTHER, "access-control-request-method": "POST", "access-control-request-headers": "content-type" },
  });
  expect(preflight.status()).toBe(403);
});

test("a preflight from the allowed origin succeeds and the page reads the answer", async ({ page }) => {
  await page.goto("/login");
  // The browser's own record of its preflights (DevTools protocol).
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  const preflights: { url: string; status: number; headers: Record<string, string> }[] = [];
  cdp.on("Network.responseReceived", (e) => {
    if (e.type === "Preflight") preflights.push({ url: e.response.url, status: e.response.status, headers: e.response.headers });
  });

  const seen = await page.evaluate(async (api) => {
    const read = async (path: string, init: RequestInit): Promise<Seen> => {
      const r = await fetch(api + path, init);
      const body = await r.json();
      return { status: r.status, type: body.type, requestId: r.headers.get("x-request-id") };
    };
    return {
      // Credentialed, with the cookie-transport header: the session policy.
      login: await read("/auth/login", {
        method: "POST",
        headers: { "content-type": "application/json", "refresh-token-transport": "cookie" },
        credentials: "include",
        body: "{}",
      }),
      // A JWT route with a bearer token: the preflight is answered before authentication.
      me: await read("/api/me", { headers: { authorization: "Bearer not-a-token" } }),
    };
  }, API);
  expect(seen.login).toMatchObject({ status: 422, type: "validation_failed" });
  expect(seen.login.requestId).toMatch(/.+/);
  expect(seen.me).toMatchObject({ status: 401, type: "invalid_token" });

  await expect.poll(() => preflights.length).toBeGreaterThanOrEqual(2);
  const origin = new URL(page.url()).origin;
  const login = preflights.find((p) => p.url === `${API}/auth/login`);
  expect(login?.status).toBe(204);
  const h = Object.fromEntries(Object.entries(login?.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
  expect(h["access-control-allow-origin"]).toBe(origin);
  expect(h["access-control-allow-credentials"]).toBe("true");
  expect(h["access-control-allow-headers"]).toContain("refresh-token-transport");
  expect(preflights.find((p) => p.url === `${API}/api/me`)?.status).toBe(204);
});
