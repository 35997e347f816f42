// Shared by the browser tests: the stack's addresses, users, signing in through the UI,
// axe-core, screenshots, and a `page` fixture that fails a test on an uncaught page error or
// a Content-Security-Policy violation.
import { mkdirSync } from "node:fs";

import AxeBuilder from "@axe-core/playwright";
import { type APIRequestContext, type Page, test as base, expect } from "@playwright/test";

export { expect };

export const API = process.env.API_ORIGIN ?? "";
export const WEB = process.env.WEB_ORIGIN ?? "";
export const OTHER = process.env.OTHER_ORIGIN ?? "";
export const ACCESS_TTL_MS = Number(process.env.ACCESS_TTL_SECONDS ?? 60) * 1000;
export const PASSWORD = "correct horse battery staple";

let serial = 0;
/** A fresh address per call, unique across workers and runs. */
export const newEmail = (tag: string): string =>
  `${tag}-${Date.now().toString(36)}-${process.pid}-${serial++}@example.com`;

type Guarded = { cspViolations: string[] };

export const test = base.extend<{ allowCsp: Guarded }>({
  allowCsp: async ({}, use) => use({ cspViolations: [] }),
  page: async ({ page, allowCsp }, use, info) => {
    await page.addInitScript(() => {
      const w = window as unknown as { __csp: string[] };
      w.__csp = [];
      document.addEventListener("securitypolicyviolation", (e) =>
        w.__csp.push(`${e.violatedDirective} ${e.blockedURI}`),
      );
    });
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await use(page);
    let csp: string[] = [];
    if (!page.isClosed()) {
      csp = await page.evaluate(() => (window as unknown as { __csp?: string[] }).__csp ?? []).catch(() => []);
    }
    if (info.status === "passed") {
      expect(errors, "uncaught errors in the page").toEqual([]);
      expect(csp.filter((v) => !allowCsp.cspViolations.includes(v)), "CSP violations").toEqual([]);
    }
  },
});

/** Registers through the API (no page): for tests about something else. */
export async function registered(request: APIRequestContext, tag: string): Promise<{ email: string; password: string }> {
  const email = newEmail(tag);
  const r = await request.post(`${API}/auth/register`, { data: { email, password: PASSWORD } });
  expect(r.status(), await r.text()).toBe(201);
  return { email, password: PASSWORD };
}

/** A session of that user outside the browser (its own refresh family): to seed data. */
export async function apiSession(
  request: APIRequestContext,
  email: string,
): Promise<{ token: string; userId: string }> {
  const r = await request.post(`${API}/auth/login`, { data: { email, password: PASSWORD } });
  expect(r.status()).toBe(200);
  const token = (await r.json()).access_token as string;
  const me = await request.get(`${API}/api/me`, { headers: { authorization: `Bearer ${token}` } });
  return { token, userId: (await me.json()).id };
}

export async function signIn(page: Page, email: string, password = PASSWORD): Promise<void> {
  await page.goto("/login");
  await page.getByLabel("E-mail address").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("heading", { name: "Your tasks" })).toBeVisible();
  await expect(page.getByTestId("user-email")).toContainText(email);
}

export async function addTask(page: Page, title: string, extra: { description?: string; due?: string } = {}) {
  await page.getByLabel("Title", { exact: true }).fill(title);
  if (extra.description) await page.getByLabel("Description (optional)").fill(extra.description);
  if (extra.due) await page.getByLabel("Due (optional)").fill(extra.due);
  await page.getByRole("button", { name: "Add task" }).click();
  await expect(page.getByTestId("task").filter({ hasText: title }).first()).toBeVisible();
}

/** The task titles on the page, top to bottom, as they are now (no waiting: poll it with `expect.poll`). */
export const titles = (page: Page) => page.getByTestId("task").locator(".title").allTextContents();

/** Writes a full-page screenshot of a screen to test-results/screens/ (ignored by git). */
export async function shot(page: Page, name: string): Promise<void> {
  mkdirSync("test-results/screens", { recursive: true });
  await page.screenshot({ path: `test-results/screens/${name}.png`, fullPage: true });
}

/** axe-core (WCAG 2.1 A/AA and best practices) finds nothing serious or critical. */
export async function axe(page: Page, screen: string): Promise<void> {
  const result = await new AxeBuilder({ page })
    .withTags(["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"])
    .analyze();
  const bad = result.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
  expect(bad, `axe on the ${screen} screen`).toEqual([]);
}

/** Method, path and status of every API response the page received, in order. */
export function apiLog(page: Page): string[] {
  const log: string[] = [];
  page.on("response", (r) => {
    const u = new URL(r.url());
    if (u.origin === API) log.push(`${r.request().method()} ${u.pathname.replace(/[0-9a-f-]{36}/g, ":id")} ${r.status()}`);
  });
  return log;
}
