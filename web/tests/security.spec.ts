// What the browser does with hostile content: React's escaping, and the Content-Security-Policy
// that web/vercel.json sends (the test server sends the same headers, read from that file).
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { API, addTask, expect, registered, signIn, test } from "./helpers";

const vercel = JSON.parse(readFileSync(join(__dirname, "..", "vercel.json"), "utf8"));
const headers: Record<string, string> = Object.fromEntries(
  vercel.headers.find((h: { source: string }) => h.source === "/(.*)").headers.map((h: { key: string; value: string }) => [h.key.toLowerCase(), h.value]),
);

test("a task titled like markup renders as text", async ({ page, request }) => {
  const user = await registered(request, "xss");
  const dialogs: string[] = [];
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  await signIn(page, user.email);
  const title = "<img src=x onerror=alert(1)>";
  const description = "<script>alert(2)</script><b>bold?</b>";
  await addTask(page, title, { description });
  await page.reload();
  const item = page.getByTestId("task").first();
  await expect(item.locator(".title")).toHaveText(title);
  await expect(item.locator(".description")).toHaveText(description);
  await expect(page.locator("main img, main script, main b")).toHaveCount(0);
  await page.getByRole("link", { name: `Edit “${title}”` }).click();
  await expect(page.getByLabel("Title", { exact: true })).toHaveValue(title);
  await expect(page.getByRole("heading", { name: "Edit task" })).toBeVisible();
  expect(dialogs).toEqual([]);
});

test("every page carries the CSP and the other security headers; no inline script runs", async ({ page, allowCsp }) => {
  const csp = headers["content-security-policy"]!;
  expect(csp).toContain("script-src 'self';");
  expect(csp).not.toMatch(/unsafe-inline|unsafe-eval|\*/);
  for (const path of ["/", "/login", "/register", "/edit?id=x", "/no-such-page"]) {
    const res = await page.goto(path);
    const got = res!.headers();
    for (const name of ["content-security-policy", "strict-transport-security", "x-content-type-options", "referrer-policy", "x-frame-options", "cross-origin-opener-policy", "permissions-policy"]) {
      // Present in vercel.json (removing one there must fail here), and sent as written.
      expect(headers[name], `${name} in vercel.json`).toBeTruthy();
      expect(got[name], `${name} on ${path}`).toBe(headers[name]);
    }
  }
  // Scripts are immutable files named by their content.
  const script = await page.locator("script[src^='/_next/static/']").first().getAttribute("src");
  const asset = await page.request.get(script!);
  expect(asset.headers()["cache-control"]).toBe("public, max-age=31536000, immutable");
  expect(asset.headers()["content-type"]).toBe("text/javascript; charset=utf-8");

  await page.goto("/login");
  // The build narrows connect-src to its own API origin (a second policy in the page).
  await expect(page.locator('meta[http-equiv="Content-Security-Policy"]')).toHaveAttribute("content", `connect-src 'self' ${API}`);
  // An injected inline script does not run, and the browser reports the refusal.
  allowCsp.cspViolations.push("script-src-elem inline");
  const ran = await page.evaluate(() => {
    const s = document.createElement("script");
    s.textContent = "window.__injected = true";
    document.body.append(s);
    return (window as unknown as { __injected?: boolean }).__injected === true;
  });
  expect(ran).toBe(false);
  await expect.poll(() => page.evaluate(() => (window as unknown as { __csp: string[] }).__csp)).toEqual(["script-src-elem inline"]);
  // And the page may talk to no other server than its API.
  allowCsp.cspViolations.push("connect-src https://example.com/");
  const fetched = await page.evaluate(() => fetch("https://example.com/").then(() => "sent", (e: Error) => e.name));
  expect(fetched).toBe("TypeError");
});
