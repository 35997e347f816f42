// Everything with the keyboard alone: no click, no fill; Tab, arrows, Space, Enter and typing.
import type { Locator, Page } from "@playwright/test";

import { PASSWORD, expect, newEmail, test, titles } from "./helpers";

/** Presses Tab until `target` has focus (at most `max` times), as a keyboard user would. */
async function tabTo(page: Page, target: Locator, max = 25): Promise<void> {
  for (let i = 0; i < max; i++) {
    await page.keyboard.press("Tab");
    if (await target.evaluate((el) => el === document.activeElement)) return;
  }
  throw new Error(`Tab never reached ${target}`);
}

/** The focused element shows a visible focus indicator. */
async function focusVisible(target: Locator): Promise<void> {
  const outline = await target.evaluate((el) => {
    const s = getComputedStyle(el);
    return `${s.outlineStyle} ${s.outlineWidth}`;
  });
  expect(outline).not.toMatch(/^none|^\S+ 0px$/);
}

test("register, sign in, add, complete, filter, edit, delete and sign out with the keyboard alone", async ({ page }) => {
  const email = newEmail("keys");
  await page.goto("/register");

  // The skip link comes first and jumps over the header.
  await page.keyboard.press("Tab");
  const skip = page.getByRole("link", { name: "Skip to content" });
  await expect(skip).toBeFocused();
  await expect(skip).toBeInViewport();
  await page.keyboard.press("Enter");
  await expect(page.locator("main")).toBeFocused();

  await tabTo(page, page.getByLabel("E-mail address"));
  await page.keyboard.type(email);
  await tabTo(page, page.getByLabel("Password"));
  await page.keyboard.type(PASSWORD);
  await page.keyboard.press("Enter");

  await expect(page.getByRole("heading", { name: "Sign in" })).toBeVisible();
  await tabTo(page, page.getByLabel("Password"));
  await page.keyboard.type(PASSWORD);
  await page.keyboard.press("Enter");
  await expect(page.getByRole("heading", { name: "Your tasks" })).toBeVisible();

  // Add two tasks: Enter in the title field submits, focus returns to the title.
  const title = page.getByLabel("Title", { exact: true });
  await tabTo(page, title);
  await focusVisible(title);
  await page.keyboard.type("Water the plants");
  await page.keyboard.press("Enter");
  await expect(page.getByTestId("task")).toHaveCount(1);
  await expect(title).toBeFocused();
  await page.keyboard.type("Return library books");
  await page.keyboard.press("Enter");
  await expect.poll(() => titles(page)).toEqual(["Return library books", "Water the plants"]);

  // Complete one with Space.
  const plants = page.getByLabel("Water the plants");
  await tabTo(page, plants);
  await focusVisible(plants);
  await page.keyboard.press("Space");
  await expect(plants).toBeChecked();

  // Filter with the arrow keys inside the radio group.
  const all = page.getByLabel("All", { exact: true });
  await tabTo(page, all);
  await page.keyboard.press("ArrowRight");
  await expect(page.getByLabel("Open", { exact: true })).toBeChecked();
  await expect.poll(() => titles(page)).toEqual(["Return library books"]);
  await page.keyboard.press("ArrowLeft");
  await expect(all).toBeChecked();
  await expect.poll(() => titles(page)).toHaveLength(2);

  // Edit through the link, save with Enter.
  const edit = page.getByRole("link", { name: "Edit “Return library books”" });
  await tabTo(page, edit);
  await focusVisible(edit);
  await page.keyboard.press("Enter");
  await expect(page.getByRole("heading", { name: "Edit task" })).toBeVisible();
  const editTitle = page.getByLabel("Title", { exact: true });
  await expect(editTitle).toHaveValue("Return library books");
  await tabTo(page, editTitle);
  await page.keyboard.press("ControlOrMeta+a");
  await page.keyboard.type("Return the library books");
  await page.keyboard.press("Enter");
  await expect(page.getByRole("heading", { name: "Your tasks" })).toBeVisible();
  await expect.poll(() => titles(page)).toEqual(["Return the library books", "Water the plants"]);

  // Delete: the confirmation takes focus; Enter confirms.
  const del = page.getByRole("button", { name: "Delete “Water the plants”" });
  await tabTo(page, del);
  await page.keyboard.press("Enter");
  await expect(page.getByRole("button", { name: "Delete “Water the plants” for good" })).toBeFocused();
  await page.keyboard.press("Enter");
  await expect.poll(() => titles(page)).toEqual(["Return the library books"]);

  // Sign out is reachable too.
  await page.keyboard.press("Shift+Tab");
  await tabTo(page, page.getByRole("button", { name: "Sign out" }));
  await page.keyboard.press("Enter");
  await expect(page).toHaveURL(/\/login$/);
});
