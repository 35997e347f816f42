// Playwright against the real stack that scripts/web-test.sh starts (it exports the variables
// read here). Chromium is Debian's package: Playwright's own browser download is not used.
import { defineConfig } from "@playwright/test";

const need = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run the browser tests with scripts/web-test.sh`);
  return v;
};

export default defineConfig({
  testDir: "tests",
  outputDir: "test-results/artifacts",
  timeout: 45_000,
  expect: { timeout: 10_000 },
  fullyParallel: true,
  workers: Number(process.env.WEB_TEST_WORKERS ?? 2),
  forbidOnly: true,
  retries: 0,
  reporter: [["list"]],
  use: {
    baseURL: need("WEB_ORIGIN"),
    browserName: "chromium",
    headless: true,
    launchOptions: {
      executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
      // Playwright gives every browser a fresh profile (--user-data-dir). No Google services on
      // this closed network; trust exactly the test gateway's key.
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        // Containers (CI) often have a tiny /dev/shm; Chromium then crashes without this.
        "--disable-dev-shm-usage",
        `--ignore-certificate-errors-spki-list=${need("CHROMIUM_SPKI")}`,
      ],
    },
    locale: "en-GB",
    timezoneId: "UTC",
    viewport: { width: 960, height: 760 },
    trace: "retain-on-failure",
    screenshot: "only-on-failure",
  },
  projects: [
    { name: "app", testIgnore: /faults\.spec\.ts/ },
    // Takes the database away for a moment: after everything else.
    { name: "faults", testMatch: /faults\.spec\.ts/, dependencies: ["app"] },
  ],
});
