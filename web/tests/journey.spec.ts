// The whole journey of one user, screen by screen, with axe-core on each screen and a
// screenshot of each (test-results/screens/; tasks.png is the README's picture).
import { API, PASSWORD, addTask, apiSession, axe, expect, newEmail, shot, signIn, test, titles } from "./helpers";

test("register, sign in, create three tasks, complete, filter, edit, delete, reload, sign out", async ({ page }) => {
  const email = newEmail("journey");

  // Signed out: the task list sends you to sign in.
  await page.goto("/");
  await expect(page).toHaveURL(/\/login$/);
  await expect(page.getByRole("heading", { name: "Sign in" })).toBeVisible();
  await axe(page, "sign-in");
  await shot(page, "sign-in");

  // Register; the form's own rules (the API's, in Zod) first.
  await page.getByRole("link", { name: "Create an account" }).click();
  await expect(page.getByRole("heading", { name: "Create an account" })).toBeVisible();
  await axe(page, "register");
  await shot(page, "register");
  await page.getByLabel("E-mail address").fill("not an address");
  await page.getByLabel("Password").fill("short");
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page.locator("#email-error")).toHaveText("Must be an e-mail address like name@example.com.");
  await expect(page.locator("#password-error")).toHaveText("Must be at least 8 characters.");
  await expect(page.getByLabel("E-mail address")).toBeFocused();
  await axe(page, "register with errors");
  await shot(page, "register-errors");
  await page.getByLabel("E-mail address").fill(email);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Create account" }).click();

  // Sign in with the new account (the address is filled in).
  await expect(page).toHaveURL(/\/login$/);
  await expect(page.getByText("Account created. Sign in with your new password.")).toBeVisible();
  await expect(page.getByLabel("E-mail address")).toHaveValue(email);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("heading", { name: "Your tasks" })).toBeVisible();
  await expect(page.getByTestId("user-email")).toHaveText(`Signed in as ${email}`);
  await expect(page.getByText("No tasks yet. Add your first one above.")).toBeVisible();
  await axe(page, "empty task list");
  await shot(page, "tasks-empty");

  // Three tasks, newest first.
  await addTask(page, "Buy oat milk");
  await addTask(page, "Write the quarterly report", {
    description: "Numbers from finance first.\nThen the summary.",
    due: "2030-05-17T09:30",
  });
  await addTask(page, "Call Ada about the launch");
  await expect.poll(() => titles(page)).toEqual(["Call Ada about the launch", "Write the quarterly report", "Buy oat milk"]);
  await expect(page.getByText("Due 17 May 2030, 09:30")).toBeVisible();

  // Complete one.
  // (A click, not check(): the box shows the API's answer, not the click, so it turns a moment later.)
  await page.getByLabel("Buy oat milk").click();
  await expect(page.getByLabel("Buy oat milk")).toBeChecked();
  await expect(page.getByRole("status").filter({ hasText: "marked as completed" })).toHaveText(
    "“Buy oat milk” marked as completed.",
  );
  await axe(page, "task list");
  await shot(page, "tasks");

  // Filter.
  await page.getByLabel("Completed", { exact: true }).check();
  await expect.poll(() => titles(page)).toEqual(["Buy oat milk"]);
  await page.getByLabel("Open", { exact: true }).check();
  await expect.poll(() => titles(page)).toEqual(["Call Ada about the launch", "Write the quarterly report"]);
  await shot(page, "tasks-open");
  await page.getByLabel("All", { exact: true }).check();
  await expect.poll(() => titles(page)).toHaveLength(3);

  // Edit.
  await page.getByRole("link", { name: "Edit “Write the quarterly report”" }).click();
  await expect(page.getByRole("heading", { name: "Edit task" })).toBeVisible();
  await expect(page.getByLabel("Title", { exact: true })).toHaveValue("Write the quarterly report");
  await expect(page.getByLabel("Due (optional)")).toHaveValue("2030-05-17T09:30");
  await axe(page, "edit");
  await shot(page, "edit");
  await page.getByLabel("Title", { exact: true }).fill("Write the Q2 report");
  await page.getByLabel("Description (optional)").fill("");
  await page.getByRole("button", { name: "Save changes" }).click();
  await expect(page.getByRole("heading", { name: "Your tasks" })).toBeVisible();
  await expect.poll(() => titles(page)).toEqual(["Call Ada about the launch", "Write the Q2 report", "Buy oat milk"]);
  await expect(page.getByText("Numbers from finance first.")).toHaveCount(0);

  // Delete, after confirming.
  await page.getByRole("button", { name: "Delete “Call Ada about the launch”" }).click();
  await expect(page.getByRole("button", { name: "Delete “Call Ada about the launch” for good" })).toBeFocused();
  await axe(page, "delete confirmation");
  await shot(page, "delete-confirm");
  await page.getByRole("button", { name: "Delete “Call Ada about the launch” for good" }).click();
  await expect.poll(() => titles(page)).toEqual(["Write the Q2 report", "Buy oat milk"]);

  // Reload: the HttpOnly cookie brings the session back.
  await page.reload();
  await expect(page.getByTestId("user-email")).toHaveText(`Signed in as ${email}`);
  await expect.poll(() => titles(page)).toEqual(["Write the Q2 report", "Buy oat milk"]);
  await expect(page.getByLabel("Buy oat milk")).toBeChecked();

  // Sign out: back to sign-in, and a reload does not bring the session back.
  await page.getByRole("button", { name: "Sign out" }).click();
  await expect(page).toHaveURL(/\/login$/);
  await page.goto("/");
  await expect(page).toHaveURL(/\/login$/);
  await expect(page.getByTestId("user-email")).toHaveCount(0);
});

test("a page that does not exist says so, and links back", async ({ page }) => {
  const res = await page.goto("/no-such-page");
  expect(res?.status()).toBe(404);
  await expect(page.getByRole("heading", { name: "Page not found" })).toBeVisible();
  await axe(page, "not found");
  await shot(page, "not-found");
  await page.getByRole("link", { name: "Go to your tasks" }).click();
  await expect(page).toHaveURL(/\/login$/);
});

test("the task list the README shows", async ({ page, request }) => {
  // test-results/screens/readme-tasks.png; docs/screenshot-tasks.png is a copy of one run's.
  const email = "ada@example.com";
  const r = await request.post(`${API}/auth/register`, { data: { email, password: PASSWORD } });
  expect([201, 409]).toContain(r.status());
  const { token, userId } = await apiSession(request, email);
  const tasks = [
    { title: "Renew the TLS certificate alerts", description: "ACME renewals page the on-call after two failures." },
    { title: "Review the gateway rate limits", due_at: "2030-03-14T15:00:00Z" },
    { title: "Book the team offsite", description: "Somewhere with good coffee.", due_at: "2030-04-02T09:00:00Z" },
    { title: "Rotate the JWT signing key" },
  ];
  for (const t of tasks) {
    const created = await request.post(`${API}/api/users/${userId}/tasks`, { headers: { authorization: `Bearer ${token}` }, data: t });
    expect(created.status()).toBe(201);
    if (t.title.startsWith("Rotate")) {
      const id = (await created.json()).id;
      await request.patch(`${API}/api/users/${userId}/tasks/${id}`, { headers: { authorization: `Bearer ${token}` }, data: { completed: true } });
    }
  }
  await page.setViewportSize({ width: 840, height: 600 });
  await signIn(page, email);
  await expect.poll(() => titles(page)).toHaveLength(4);
  await page.getByLabel("Title", { exact: true }).fill("Write the release notes");
  await page.getByLabel("Title", { exact: true }).blur();
  await page.screenshot({ path: "test-results/screens/readme-tasks.png", fullPage: true });
});
