// The memory transport (NEXT_PUBLIC_REFRESH_TRANSPORT=memory: front ends on another site than
// the API, where browsers keep none of the API's cookies). The refresh token lives in the page
// only: a reload or a new tab asks to sign in again, and each tab has a sign-in of its own.
import { ACCESS_TTL_MS, API, addTask, apiLog, expect, registered, signIn, test, titles } from "./helpers";

const MEMORY = process.env.MEMORY_ORIGIN ?? "";
test.use({ baseURL: MEMORY });

test("memory transport: no cookie at all, the refresh token rotates in the page, a reload asks to sign in", async ({
  page,
  context,
  request,
}) => {
  const user = await registered(request, "memory");
  await page.clock.install();
  const log = apiLog(page);
  const login = page.waitForResponse((r) => r.url() === `${API}/auth/login`);
  await signIn(page, user.email);
  expect((await (await login).json()).refresh_token).toMatch(/^[A-Za-z0-9_-]{43}$/);
  expect(await context.cookies([`${API}/auth/refresh`, `${API}/auth/logout`])).toEqual([]);

  // The refresh timer presents the in-memory token; the new access token works.
  await page.clock.fastForward(ACCESS_TTL_MS - 5_000);
  await expect.poll(() => log).toContain("POST /auth/refresh 200");
  await addTask(page, "Written with a refreshed token");

  await page.reload();
  await expect(page).toHaveURL(/\/login$/);
  await expect(page.locator("main .notice")).toHaveCount(0);
  await signIn(page, user.email);
  await expect.poll(() => titles(page)).toEqual(["Written with a refreshed token"]);
});

test("memory transport: each tab signs in on its own; signing out in one signs out all", async ({ browser, request }) => {
  const user = await registered(request, "memtabs");
  const context = await browser.newContext({ baseURL: MEMORY });
  const a = await context.newPage();
  const b = await context.newPage();
  await signIn(a, user.email);
  await b.goto("/");
  await expect(b).toHaveURL(/\/login$/);
  await signIn(b, user.email);
  await a.getByRole("button", { name: "Sign out" }).click();
  await expect(a).toHaveURL(/\/login$/);
  await expect(b).toHaveURL(/\/login$/);
  await expect(b.getByText("You signed out in another tab.")).toBeVisible();
  await context.close();
});
