// What the user is told when something is refused: the form's own rules (the API's, in Zod),
// the API's field errors next to the field, 401, and 429 with the time to wait.
import { PASSWORD, addTask, axe, expect, registered, shot, signIn, test } from "./helpers";

test("an e-mail address already registered is reported next to the field", async ({ page, request }) => {
  const user = await registered(request, "taken");
  await page.goto("/register");
  await page.getByLabel("E-mail address").fill(`  ${user.email.toUpperCase()} `);
  await page.getByLabel("Password").fill(PASSWORD);
  const answer = page.waitForResponse((r) => r.url().endsWith("/auth/register"));
  await page.getByRole("button", { name: "Create account" }).click();
  expect((await answer).status()).toBe(409);
  await expect(page.locator("#email-error")).toHaveText("Is already registered; sign in instead.");
  await expect(page.getByLabel("E-mail address")).toBeFocused();
  await expect(page.getByLabel("E-mail address")).toHaveAttribute("aria-invalid", "true");
});

test("the task form applies the API's rules before sending", async ({ page, request }) => {
  const user = await registered(request, "rules");
  await signIn(page, user.email);
  let sent = 0;
  page.on("request", (r) => {
    if (r.method() === "POST" && r.url().includes("/tasks")) sent++;
  });
  const title = page.getByLabel("Title", { exact: true });
  await title.fill("   ");
  await page.getByRole("button", { name: "Add task" }).click();
  await expect(page.locator("#new-title-error")).toHaveText("Must not be empty.");
  // 200 characters as sent is the limit, counted in code points (an emoji is one).
  await title.fill("🙂".repeat(201));
  await page.getByRole("button", { name: "Add task" }).click();
  await expect(page.locator("#new-title-error")).toHaveText("Must be at most 200 characters.");
  await page.getByLabel("Description (optional)").fill("x".repeat(4001));
  await page.getByRole("button", { name: "Add task" }).click();
  await expect(page.locator("#new-description-error")).toHaveText("Must be at most 4000 characters.");
  await axe(page, "task form with errors");
  await shot(page, "tasks-form-errors");
  expect(sent).toBe(0);
  await title.fill("🙂".repeat(200));
  await page.getByLabel("Description (optional)").fill("");
  await page.getByRole("button", { name: "Add task" }).click();
  await expect(page.getByTestId("task")).toHaveCount(1);
  expect(sent).toBe(1);
});

test("a wrong password is refused, and after three the form says when to try again", async ({ page, request }) => {
  const user = await registered(request, "throttle");
  await page.goto("/login");
  await page.getByLabel("E-mail address").fill(user.email);
  for (let i = 0; i < Number(process.env.LOGIN_ATTEMPTS_PER_MINUTE ?? 3); i++) {
    await page.getByLabel("Password").fill("wrong password, sorry");
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect(page.locator("main").getByRole("alert")).toHaveText("The e-mail address or password is incorrect.");
    await expect(page.getByRole("button", { name: "Sign in" })).toBeEnabled();
  }
  await page.getByLabel("Password").fill(PASSWORD);
  const answer = page.waitForResponse((r) => r.url().endsWith("/auth/login"));
  await page.getByRole("button", { name: "Sign in" }).click();
  const res = await answer;
  expect(res.status()).toBe(429);
  const wait = Number(res.headers()["retry-after"]);
  expect(wait).toBeGreaterThan(0);
  await expect(page.locator("main").getByRole("alert")).toHaveText(`Too many attempts. Try again in ${wait} seconds.`);
  await axe(page, "sign-in refused");
  await shot(page, "sign-in-throttled");
});

test("a task that no longer exists is reported on its edit page", async ({ page, request }) => {
  const user = await registered(request, "gone");
  await signIn(page, user.email);
  await addTask(page, "Soon gone");
  const href = await page.getByRole("link", { name: "Edit “Soon gone”" }).getAttribute("href");
  await page.getByRole("button", { name: "Delete “Soon gone”" }).click();
  await page.getByRole("button", { name: "Delete “Soon gone” for good" }).click();
  await expect(page.getByTestId("task")).toHaveCount(0);
  await page.goto(href!);
  await expect(page.getByRole("heading", { name: "Task not found" })).toBeVisible();
  await axe(page, "task not found");
});
