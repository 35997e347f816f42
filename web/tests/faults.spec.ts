// The service unable to work for a moment: its database refuses connections. The API answers
// 503 with Retry-After; the page says the service is busy, then works again by itself.
// Runs after every other test (project "faults" in playwright.config.ts): the database is shared.
import { execFileSync } from "node:child_process";

import { addTask, expect, registered, shot, signIn, test } from "./helpers";

const admin = process.env.TEST_PG_ADMIN_URL ?? "";
const db = process.env.WEB_TEST_DB ?? "";
const psql = (sql: string) => execFileSync("psql", ["-X", "-q", "-v", "ON_ERROR_STOP=1", admin, "-c", sql]);

test("a 503 says the service is busy and when to retry", async ({ page, request }) => {
  expect(db, "WEB_TEST_DB (scripts/web-test.sh)").toMatch(/^web_[0-9a-f]+$/);
  const user = await registered(request, "busy");
  await signIn(page, user.email);
  psql(`ALTER DATABASE ${db} ALLOW_CONNECTIONS false`);
  try {
    psql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${db}'`);
    await page.getByLabel("Title", { exact: true }).fill("While the database is away");
    const answer = page.waitForResponse((r) => r.url().endsWith("/tasks") && r.request().method() === "POST");
    await page.getByRole("button", { name: "Add task" }).click();
    const res = await answer;
    expect(res.status()).toBe(503);
    const wait = Number(res.headers()["retry-after"]);
    await expect(page.locator("main").getByRole("alert").filter({ hasText: "busy" })).toHaveText(
      `The service is busy right now. Try again in ${wait} ${wait === 1 ? "second" : "seconds"}.`,
    );
    await shot(page, "tasks-busy");
  } finally {
    psql(`ALTER DATABASE ${db} ALLOW_CONNECTIONS true`);
  }
  // Back: the same form, the same click.
  await expect(async () => {
    await page.getByRole("button", { name: "Add task" }).click();
    await expect(page.getByTestId("task")).toHaveCount(1, { timeout: 2_000 });
  }).toPass({ timeout: 20_000 });
  await addTask(page, "And one more");
});
