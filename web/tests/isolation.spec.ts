// Two users, each in a browser context of their own, at the same time.
import { addTask, apiSession, expect, registered, signIn, test, titles } from "./helpers";

test("two users in two browser contexts never see each other's tasks", async ({ browser, request }) => {
  const ada = await registered(request, "ada");
  const bob = await registered(request, "bob");
  const adaContext = await browser.newContext();
  const bobContext = await browser.newContext();
  const adaPage = await adaContext.newPage();
  const bobPage = await bobContext.newPage();
  await Promise.all([signIn(adaPage, ada.email), signIn(bobPage, bob.email)]);

  await addTask(adaPage, "Ada: the analytical engine notes");
  await addTask(bobPage, "Bob: buy a bicycle bell");
  await addTask(adaPage, "Ada: letter to Babbage");

  await adaPage.reload();
  await bobPage.reload();
  await expect.poll(() => titles(adaPage)).toEqual(["Ada: letter to Babbage", "Ada: the analytical engine notes"]);
  await expect.poll(() => titles(bobPage)).toEqual(["Bob: buy a bicycle bell"]);
  await expect(adaPage.getByTestId("user-email")).toContainText(ada.email);
  await expect(bobPage.getByTestId("user-email")).toContainText(bob.email);

  // Bob opens the edit page of one of Ada's tasks: it does not exist for him.
  const href = await adaPage.getByRole("link", { name: "Edit “Ada: letter to Babbage”" }).getAttribute("href");
  expect(href).toMatch(/^\/edit\?id=[0-9a-f-]{36}$/);
  await bobPage.goto(href!);
  await expect(bobPage.getByRole("heading", { name: "Task not found" })).toBeVisible();

  // And the API agrees for a session of Bob's outside the browser.
  const bobApi = await apiSession(request, bob.email);
  const list = await request.get(`${process.env.API_ORIGIN}/api/users/${bobApi.userId}/tasks`, {
    headers: { authorization: `Bearer ${bobApi.token}` },
  });
  expect((await list.json()).items.map((t: { title: string }) => t.title)).toEqual(["Bob: buy a bicycle bell"]);

  await adaContext.close();
  await bobContext.close();
});

test("load more follows the API's cursor, newest first", async ({ page, request }) => {
  const user = await registered(request, "many");
  const { token, userId } = await apiSession(request, user.email);
  for (let i = 1; i <= 25; i++) {
    const r = await request.post(`${process.env.API_ORIGIN}/api/users/${userId}/tasks`, {
      headers: { authorization: `Bearer ${token}` },
      data: { title: `Task ${String(i).padStart(2, "0")}` },
    });
    expect(r.status()).toBe(201);
  }
  await signIn(page, user.email);
  await expect.poll(() => titles(page)).toHaveLength(20);
  expect((await titles(page)).slice(0, 2)).toEqual(["Task 25", "Task 24"]);
  await page.getByRole("button", { name: "Load more" }).click();
  await expect.poll(() => titles(page)).toHaveLength(25);
  expect((await titles(page)).slice(-2)).toEqual(["Task 02", "Task 01"]);
  await expect(page.getByRole("button", { name: "Load more" })).toHaveCount(0);
});
