// The playground in a real browser: Debian's Chromium, headless, driven by playwright-core,
// against the `seedbed serve` that crates/cli/tests/it/playground.rs started with the tiny
// models. Every control is found by its label (its accessible name), as a person finds it.
//
// Environment: SEEDBED_URL (the server), SEEDBED_KEY (a valid key), SEEDBED_SCREENSHOT (where
// the picture of the page after a generation goes), CHROMIUM (the browser; default: the first
// of chromium, chromium-browser, google-chrome on PATH).
import { execFileSync } from "node:child_process";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const url = process.env.SEEDBED_URL;
const key = process.env.SEEDBED_KEY;
const screenshot = process.env.SEEDBED_SCREENSHOT;
const PROMPT = "a lighthouse at dusk, oil painting";

function browserPath() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const name of ["chromium", "chromium-browser", "google-chrome"]) {
    try {
      return execFileSync("sh", ["-c", `command -v ${name}`]).toString().trim();
    } catch (_) {
      // try the next
    }
  }
  throw new Error("no Chromium found: install Debian's `chromium` (the README's set-up does)");
}

/** One step, named in the output, so a failure says which. */
async function step(name, body) {
  process.stdout.write(`- ${name}\n`);
  await body();
}

const browser = await chromium.launch({
  executablePath: browserPath(),
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 1300 } });
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    // The browser logs every 4xx answer; the steps below provoke a 401 and a 400 on purpose.
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
      problems.push(`console: ${message.text()}`);
    }
  });
  const prompt = page.getByLabel("Prompt", { exact: true });
  const status = page.getByRole("status").first();

  await step("the page asks for the key, and a wrong one gets a clear message", async () => {
    await page.goto(url);
    await page.getByLabel("API key", { exact: true }).waitFor();
    await page.getByLabel("API key", { exact: true }).fill("sk-not-a-key");
    await page.getByRole("button", { name: "Use this key" }).click();
    await page.getByText("The server did not accept this API key").waitFor();
    await page.getByLabel("API key", { exact: true }).fill(key);
    await page.getByRole("button", { name: "Use this key" }).click();
    await page.getByLabel("API key", { exact: true }).waitFor({ state: "hidden" });
    const models = await page.getByLabel("Model").locator("option").allTextContents();
    assert.ok(models.some((model) => model.startsWith("tiny-sd ")), `models: ${models}`);
  });

  await step("the key is remembered across a reload", async () => {
    await page.reload();
    await page.getByLabel("Model").locator("option", { hasText: "tiny-sd" }).first().waitFor({ state: "attached" });
    assert.equal(await page.getByLabel("API key", { exact: true }).isVisible(), false);
  });

  await step("an error from the API is shown next to the field it concerns", async () => {
    await prompt.fill(PROMPT);
    await page.getByLabel("Model").selectOption("tiny-sd");
    await page.getByLabel("Size").selectOption("custom");
    await page.getByLabel("Width").fill("3");
    await page.getByLabel("Height").fill("3");
    await page.getByRole("button", { name: "Generate" }).click();
    await page.locator("#size-error", { hasText: "size 3x3" }).waitFor();
    assert.equal(await page.getByLabel("Size").getAttribute("aria-invalid"), "true");
  });

  await step("Generate shows progress, a live preview, then the image with its seed", async () => {
    await page.getByLabel("Size").selectOption("1K");
    await page.getByLabel("Random seed").uncheck();
    await page.getByLabel("Seed", { exact: true }).fill("42");
    await page.getByLabel("Steps").fill("8");
    await page.getByLabel("Images").fill("2");
    // Record every preview the page shows (they are replaced as steps go by).
    await page.evaluate(() => {
      window.previews = [];
      new MutationObserver(() => window.previews.push(document.getElementById("preview").src))
        .observe(document.getElementById("preview"), { attributes: true, attributeFilter: ["src"] });
    });
    await page.getByRole("button", { name: "Generate" }).click();
    await page.getByText("Done: 2 images").waitFor({ timeout: 60_000 });
    const images = page.locator("#results figure img");
    assert.equal(await images.count(), 2);
    for (const image of await images.all()) {
      assert.equal(await image.getAttribute("alt"), PROMPT);
      await image.evaluate((img) => img.decode());
      assert.equal(await image.evaluate((img) => img.naturalWidth), 64);
    }
    const captions = await page.locator("#results figcaption").allTextContents();
    assert.ok(captions[0].startsWith("Seed 42 · 64x64"), `caption: ${captions[0]}`);
    assert.ok(captions[1].startsWith("Seed 43"), `caption: ${captions[1]}`);
    const download = page.locator("#results figure a", { hasText: "Download" }).first();
    assert.match(await download.getAttribute("href"), /\/v1\/images\//);
    const previews = await page.evaluate(() => window.previews);
    assert.ok(previews.length >= 2, `previews seen: ${previews.length}`);
    assert.ok(previews.every((src) => src.startsWith("data:image/jpeg;base64,")), "previews are JPEGs");
    assert.equal(await page.getByRole("progressbar").evaluate((bar) => bar.value === bar.max), true);
    if (screenshot) await page.screenshot({ path: screenshot, fullPage: false });
  });

  await step("a picture dropped on the Image field runs image-to-image", async () => {
    // Any PNG will do: a corner of the page itself.
    const png = await page.screenshot({ clip: { x: 0, y: 0, width: 96, height: 80 } });
    const dataTransfer = await page.evaluateHandle((b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const transfer = new DataTransfer();
      transfer.items.add(new File([bytes], "reference.png", { type: "image/png" }));
      return transfer;
    }, png.toString("base64"));
    await page.dispatchEvent("#drop", "drop", { dataTransfer });
    await page.getByAltText("The reference image").waitFor();
    await prompt.fill("the same scene, repainted");
    await page.getByLabel("Strength").fill("0.5");
    await page.getByLabel("Images").fill("1");
    await page.getByRole("button", { name: "Generate" }).click();
    await page.getByText("Done: 1 image").waitFor({ timeout: 60_000 });
    assert.equal(await page.locator("#results figure img").count(), 1);
    await page.getByRole("button", { name: "Remove image" }).click();
    await page.getByAltText("The reference image").waitFor({ state: "hidden" });
  });

  await step("a job behind another shows its place in the queue", async () => {
    const headers = { Authorization: `Bearer ${key}`, Prefer: "respond-async" };
    const ahead = await (await page.request.post(`${url}/api/v3/images/generations`, {
      headers,
      data: { model: "tiny-sd", prompt: "a job ahead", size: "4K", steps: 500 },
    })).json();
    await prompt.fill("waiting its turn");
    await page.getByLabel("Size").selectOption("1K");
    await page.getByLabel("Steps").fill("2");
    await page.getByRole("button", { name: "Generate" }).click();
    await status.filter({ hasText: "Queued: next to run" }).waitFor({ timeout: 30_000 });
    await page.request.post(`${url}/v1/jobs/${ahead.id}/cancel`, { headers });
    await page.getByText("Done: 1 image").waitFor({ timeout: 60_000 });
  });

  await step("Cancel stops a long job", async () => {
    await prompt.fill("a very long job");
    await page.getByLabel("Images").fill("1");
    await page.getByLabel("Size").selectOption("4K");
    await page.getByLabel("Steps").fill("500");
    await page.getByRole("button", { name: "Generate" }).click();
    await page.getByText(/step \d+ of 500/).waitFor({ timeout: 60_000 });
    await page.getByRole("button", { name: "Cancel" }).click();
    await status.filter({ hasText: "Cancelled" }).waitFor({ timeout: 30_000 });
    await page.getByRole("button", { name: "Cancel" }).waitFor({ state: "hidden" });
  });

  await step("History lists the jobs, newest first, and runs one again", async () => {
    const items = page.locator("#history > li");
    await items.filter({ hasText: "cancelled" }).first().waitFor();
    assert.match(await items.nth(0).textContent(), /a very long job.*cancelled/s);
    const done = items.filter({ hasText: PROMPT }).filter({ hasText: "succeeded" }).first();
    assert.match(await done.textContent(), /64x64 · seed 42 · 8 steps/);
    assert.equal(await done.locator("img").count(), 2);
    await done.getByRole("button", { name: "Run again" }).click();
    await page.getByText("Done: 2 images").waitFor({ timeout: 60_000 });
    assert.equal(await page.getByLabel("Seed", { exact: true }).inputValue(), "42");
    const captions = await page.locator("#results figcaption").allTextContents();
    assert.ok(captions[0].startsWith("Seed 42 · 64x64"), `caption: ${captions[0]}`);
  });

  assert.deepEqual(problems, []);
  process.stdout.write("playground: all steps passed\n");
} finally {
  await browser.close();
}
