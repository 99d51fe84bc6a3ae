// Drives the playground page (GET /playground) in headless Chromium as a person would: picks the
// endpoint and modes, types a token, chooses an image in the file input, presses Send, waits for
// the answer, then prints what the page shows (JSON on stdout) and saves a screenshot.
//   node tools/ops/playground.mjs URL IMAGE SCREENSHOT ENDPOINT [MODE…] [--set id=value…]
// Used by tests/observability.rs; Debian's chromium, driven by puppeteer-core (no browser download).
import puppeteer from "puppeteer-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const args = process.argv.slice(2);
const sets = args.filter((a) => a.startsWith("--set=")).map((a) => a.slice(6).split("="));
const [url, image, shot, endpoint, ...modes] = args.filter((a) => !a.startsWith("--set="));
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  userDataDir: mkdtempSync(join(tmpdir(), "playground-")),
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 1000 });
  await page.goto(url, { waitUntil: "load" });
  await page.select("#endpoint", endpoint);
  if (modes.length) {
    await page.$$eval("input[name=mode]", (boxes, wanted) => boxes.forEach((b) => (b.checked = wanted.includes(b.value))), modes);
  }
  for (const [id, value] of sets) {
    await page.$eval("#" + id, (e, v) => (e.value = v), value);
  }
  await page.type("#token", "test");
  const input = await page.$("#files");
  await input.uploadFile(image);
  await page.click("#send");
  await page.waitForSelector("body[data-answered='1'], #request-error", { timeout: 300000 });
  const shown = await page.evaluate(() => ({
    status: document.getElementById("status").textContent,
    error: document.getElementById("request-error")?.textContent ?? null,
    answer: JSON.parse(document.getElementById("answer").textContent),
    results: [...document.querySelectorAll(".result")].map((r) => {
      const canvas = r.querySelector("canvas.overlay");
      const resolved = r.querySelector("img.resolved");
      return {
        name: r.dataset.name,
        shapes: Number(r.dataset.shapes),
        lines: [...r.querySelectorAll(".labels li")].map((li) => li.textContent),
        canvas: [canvas.width, canvas.height],
        resolved: resolved ? [resolved.naturalWidth, resolved.naturalHeight] : null,
      };
    }),
  }));
  await page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify(shown));
} finally {
  await browser.close();
}
