// The token design of docs/frontend.md, as a user would meet it: access tokens that expire
// while the page is open, two tabs refreshing at once, a reload, and a refresh token that
// page scripts never see. The stack issues 60-second access tokens and allows no leeway.
import { ACCESS_TTL_MS, API, addTask, apiLog, expect, registered, signIn, test, titles } from "./helpers";

const refused = (log: string[]) => log.filter((l) => l.endsWith(" 401") && !l.startsWith("POST /auth/refresh"));

test("an access token is refreshed before it expires, and the user notices nothing", async ({ page, request }) => {
  test.setTimeout(ACCESS_TTL_MS + 45_000);
  const user = await registered(request, "expiry");
  const log = apiLog(page);
  await signIn(page, user.email);
  await addTask(page, "Written with the first token");
  // Past the first token's expiry (the gateway allows no leeway in this stack).
  await page.waitForTimeout(ACCESS_TTL_MS + 2_000);
  await addTask(page, "Written after it expired");
  expect(log).toContain("POST /auth/refresh 200");
  expect(refused(log), "no request was refused for its token").toEqual([]);
  await expect.poll(() => titles(page)).toEqual(["Written after it expired", "Written with the first token"]);
  await expect(page.getByRole("heading", { name: "Your tasks" })).toBeVisible();
});

test("a token that expired while the page's timers slept is refreshed once on the 401", async ({ page, request }) => {
  test.setTimeout(ACCESS_TTL_MS + 45_000);
  const user = await registered(request, "asleep");
  await page.clock.install();
  const log = apiLog(page);
  await signIn(page, user.email);
  // A laptop lid closed: no timer of the page runs, its clock stands still, real time goes on.
  await page.clock.pauseAt(Date.now() + 1_000);
  await page.waitForTimeout(ACCESS_TTL_MS + 2_000);
  await addTask(page, "Written after the lid opened");
  const create = log.map((l, i) => [l, i] as const).filter(([l]) => l.startsWith("POST /api/users/:id/tasks"));
  expect(create.map(([l]) => l)).toEqual(["POST /api/users/:id/tasks 401", "POST /api/users/:id/tasks 201"]);
  const between = log.slice(create[0]![1] + 1, create[1]![1]);
  expect(between).toEqual(["POST /auth/refresh 200"]);
  await expect(page.locator(".alert")).toHaveCount(0);
});

test("two tabs refreshing at the same moment do not sign each other out", async ({ browser, request }) => {
  const user = await registered(request, "tabs");
  const context = await browser.newContext();
  const a = await context.newPage();
  const b = await context.newPage();
  await a.clock.install();
  await b.clock.install();
  const logA = apiLog(a);
  const logB = apiLog(b);
  await signIn(a, user.email);
  await b.goto("/");
  await expect(b.getByTestId("user-email")).toContainText(user.email);
  // Tab B's start-up refresh was announced to tab A: both hold the same token and both
  // refresh timers fall due together. Run both clocks past that point at once.
  const [fromA, fromB] = [logA.length, logB.length];
  const refreshes = () => [...logA.slice(fromA), ...logB.slice(fromB)].filter((l) => l.startsWith("POST /auth/refresh"));
  await Promise.all([a.clock.fastForward(ACCESS_TTL_MS - 5_000), b.clock.fastForward(ACCESS_TTL_MS - 5_000)]);
  await expect.poll(refreshes).toContain("POST /auth/refresh 200");
  expect(refreshes().filter((l) => !l.endsWith(" 200")), "no refresh refused").toEqual([]);

  // Both tabs work, and the sign-in (the cookie's family) is alive for a third.
  await addTask(a, "From tab A");
  await addTask(b, "From tab B");
  const c = await context.newPage();
  await c.goto("/");
  await expect(c.getByTestId("user-email")).toContainText(user.email);
  await expect.poll(() => titles(c)).toEqual(["From tab B", "From tab A"]);
  await context.close();
});

test("signing out in one tab signs out the others", async ({ browser, request }) => {
  const user = await registered(request, "tabsout");
  const context = await browser.newContext();
  const a = await context.newPage();
  const b = await context.newPage();
  await signIn(a, user.email);
  await b.goto("/");
  await expect(b.getByTestId("user-email")).toContainText(user.email);
  await a.getByRole("button", { name: "Sign out" }).click();
  await expect(b).toHaveURL(/\/login$/);
  await expect(b.getByText("You signed out in another tab.")).toBeVisible();
  await context.close();
});

test("the refresh token stays out of page scripts' reach; a reload keeps the session", async ({ page, context, request }) => {
  const user = await registered(request, "cookie");
  const login = page.waitForResponse((r) => r.url() === `${API}/auth/login`);
  await signIn(page, user.email);
  const body = await (await login).json();
  expect(Object.keys(body).sort()).toEqual(["access_token", "expires_in", "refresh_expires_in", "token_type"]);
  expect(await page.evaluate(() => [document.cookie, localStorage.length, sessionStorage.length])).toEqual(["", 0, 0]);

  const cookies = await context.cookies([`${API}/auth/refresh`, `${API}/auth/logout`]);
  expect(cookies.map((c) => [c.name, c.path, c.domain, c.httpOnly, c.secure, c.sameSite]).sort()).toEqual([
    ["__Secure-gatehouse_refresh", "/auth/logout", "localhost", true, true, "Strict"],
    ["__Secure-gatehouse_refresh", "/auth/refresh", "localhost", true, true, "Strict"],
  ]);
  // Never sent anywhere else.
  expect(await context.cookies([`${API}/api/me`, `${API}/auth/login`, `${API}/`])).toEqual([]);

  await page.reload();
  await expect(page.getByTestId("user-email")).toContainText(user.email);
});
