// The stock OFREP web provider (@openfeature/ofrep-web-provider) in headless Chromium, against a
// node's HTTP edge from a page of another origin (CORS).
//
// usage: node web_checks.mjs BASE_URL PAGE_PORT FLAG_FILE
//   Bundles web_page.mjs with esbuild, serves it from http://127.0.0.1:PAGE_PORT (the origin the
//   node must allow in `[http] cors_allowed_origins`), opens it in Chromium (playwright-core,
//   $BUNTING_CHROMIUM or /usr/bin/chromium), records every evaluation, then changes string-flag's
//   default variant in FLAG_FILE (the file the node serves) and waits for the page to see the new
//   value without reloading.
// Prints one JSON line: {"before": {...}, "after": {...}, "changes": [...], "reloaded": bool,
// "consoleErrors": [...]}.
import { createServer } from 'node:http';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { chromium } from 'playwright-core';

const [baseUrl, pagePort, flagFile] = process.argv.slice(2);
if (!baseUrl || !Number(pagePort) || !flagFile) {
  console.error('usage: node web_checks.mjs BASE_URL PAGE_PORT FLAG_FILE');
  process.exit(64);
}
// How long the page may take to see an edit: the node polls its file every 50 ms and pushes the
// event at once, so this only bounds how long a broken stream can hang the run.
const CHANGE_PATIENCE_MS = 15_000;

const timer = setTimeout(() => {
  console.error('gave up after 90 s');
  process.exit(2);
}, 90_000);

const bundle = await esbuild.build({
  entryPoints: [fileURLToPath(new URL('./web_page.mjs', import.meta.url))],
  bundle: true,
  format: 'iife',
  platform: 'browser',
  write: false,
  logLevel: 'silent',
});
const script = bundle.outputFiles[0].text;
const page = '<!doctype html><meta charset="utf-8"><title>bunting</title><link rel="icon" href="data:,"><script src="/page.js"></script>';
const server = createServer((req, res) => {
  if (req.url === '/') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page);
  } else if (req.url === '/page.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' }).end(script);
  } else {
    res.writeHead(404).end();
  }
});
await new Promise((resolve) => server.listen(Number(pagePort), '127.0.0.1', resolve));

const browser = await chromium.launch({
  executablePath: process.env.BUNTING_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox'],
});
let exitCode = 0;
try {
  const tab = await browser.newPage();
  const consoleErrors = [];
  tab.on('console', (message) => {
    if (message.type() === 'error') consoleErrors.push(message.text());
  });
  tab.on('pageerror', (error) => consoleErrors.push(String(error)));
  let loads = 0;
  tab.on('load', () => {
    loads += 1;
  });
  await tab.goto(`http://127.0.0.1:${pagePort}/`);
  await tab.evaluate((url) => window.start(url), baseUrl);
  const before = await tab.evaluate(() => window.evaluations());

  const flags = JSON.parse(readFileSync(flagFile, 'utf8'));
  flags.flags['string-flag'].defaultVariant = 'bye';
  writeFileSync(`${flagFile}.tmp`, JSON.stringify(flags, null, 2));
  renameSync(`${flagFile}.tmp`, flagFile);
  let seen = false;
  try {
    await tab.waitForFunction(() => window.stringValue() === 'goodbye', null, {
      timeout: CHANGE_PATIENCE_MS,
      polling: 50,
    });
    seen = true;
  } catch {
    seen = false;
  }
  const after = await tab.evaluate(() => window.evaluations());
  const changes = await tab.evaluate(() => window.changes());
  process.stdout.write(
    JSON.stringify({ before, after, seen, changes, reloaded: loads !== 1, consoleErrors }) + '\n',
  );
} catch (error) {
  console.error(error?.stack ?? String(error));
  exitCode = 1;
} finally {
  await browser.close().catch(() => {});
  server.close();
  clearTimeout(timer);
}
process.exit(exitCode);
