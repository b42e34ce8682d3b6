// A stock OpenFeature web provider in headless Chromium, against a node's HTTP edge from a page of
// another origin (CORS): @openfeature/ofrep-web-provider (PAGE `ofrep`, web_page.mjs) or
// @openfeature/flagd-web-provider over Connect (PAGE `flagd`, flagd_web_page.mjs).
//
// usage: node web_checks.mjs PAGE BASE_URL PAGE_PORT FLAG_FILE [TOKEN]
//   Bundles the page with esbuild, serves it from http://127.0.0.1:PAGE_PORT (the origin the
//   node must allow in `[http] cors_allowed_origins`), opens it in Chromium (playwright-core,
//   $BUNTING_CHROMIUM or /usr/bin/chromium), records every evaluation, then changes string-flag's
//   default variant in FLAG_FILE (the file the node serves) and waits for the page to see the new
//   value without reloading. TOKEN, if given, is handed to the page's provider as the bearer token.
// Prints one JSON line: {"ready": bool, "before": {...}, "after": {...}, "seen": bool,
// "changes": [...], "recontext": {...} or null, "reloaded": bool, "consoleErrors": [...],
// "network": [...]} where `network` lists the node's answers other than 2xx and requests that
// failed (CORS refusals show there).
import { createServer } from 'node:http';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { chromium } from 'playwright-core';

const PAGES = { ofrep: './web_page.mjs', flagd: './flagd_web_page.mjs' };
const [pageName, baseUrl, pagePort, flagFile, token] = process.argv.slice(2);
if (!PAGES[pageName] || !baseUrl || !Number(pagePort) || !flagFile) {
  console.error('usage: node web_checks.mjs ofrep|flagd BASE_URL PAGE_PORT FLAG_FILE [TOKEN]');
  process.exit(64);
}
// How long the page may take to see an edit: the node polls its file every 50 ms and pushes the
// event at once, so this only bounds how long a broken stream can hang the run.
const CHANGE_PATIENCE_MS = 15_000;
// How long the provider may take to become ready.
const START_PATIENCE_MS = 20_000;

const timer = setTimeout(() => {
  console.error('gave up after 90 s');
  process.exit(2);
}, 90_000);

const bundle = await esbuild.build({
  entryPoints: [fileURLToPath(new URL(PAGES[pageName], import.meta.url))],
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
  const network = [];
  tab.on('requestfailed', (request) => {
    network.push(`${request.method()} ${request.url()} failed: ${request.failure()?.errorText}`);
  });
  tab.on('response', (response) => {
    if (response.status() >= 300) {
      network.push(`${response.request().method()} ${response.url()}: ${response.status()}`);
    }
  });
  let loads = 0;
  tab.on('load', () => {
    loads += 1;
  });
  await tab.goto(`http://127.0.0.1:${pagePort}/`);
  // The page reports whether its provider became ready (it gives up after START_PATIENCE_MS) so
  // a provider that cannot talk to the node still gets its console and network printed.
  const ready = await tab.evaluate(
    ([url, secret, patience]) =>
      Promise.race([
        window.start(url, secret).then(() => true),
        new Promise((resolve) => setTimeout(() => resolve(false), patience)),
      ]),
    [baseUrl, token, START_PATIENCE_MS],
  );
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
  // Pages that can switch their context do so last and report the evaluations after it.
  const recontext = await tab.evaluate(() => (window.changeContext ? window.changeContext() : null));
  process.stdout.write(
    JSON.stringify({
      ready,
      before,
      after,
      seen,
      changes,
      recontext,
      reloaded: loads !== 1,
      consoleErrors,
      network,
    }) + '\n',
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
