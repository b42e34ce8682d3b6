// The web console (/ui) in headless Chromium against a real node (tests/console.rs starts it):
// sign in with the keyboard only, create a flag, edit its targeting to a 100% rollout and review
// the diff, flip its kill switch, and roll back from the audit page, reading the flag's value
// through a stock OpenFeature provider (the server SDK with @openfeature/ofrep-provider) after
// each step. Screenshots of every page go to
// SCREENSHOT_DIR.
//
// usage: node console.mjs BASE_URL TOKEN SCREENSHOT_DIR
// Prints one JSON line: {"keyboardSignIn": bool, "unlabeled": [...], "values": {...},
// "states": {...}, "search": [...], "reviewShowsBoth": bool, "rolledBack": bool,
// "consoleErrors": [...]} (a CSP refusal would show in consoleErrors).
import { mkdirSync } from 'node:fs';
import { OpenFeature } from '@openfeature/server-sdk';
import { OFREPProvider } from '@openfeature/ofrep-provider';
import { chromium } from 'playwright-core';

const [baseUrl, token, shots] = process.argv.slice(2);
if (!baseUrl || !token || !shots) {
  console.error('usage: node console.mjs BASE_URL TOKEN SCREENSHOT_DIR');
  process.exit(64);
}
mkdirSync(shots, { recursive: true });
// How long a saved change may take to reach evaluation (the node's feed delivers it at once;
// this only bounds a broken one).
const CHANGE_PATIENCE_MS = 15_000;
const timer = setTimeout(() => {
  console.error('gave up after 90 s');
  process.exit(2);
}, 90_000);

// The flag as an application sees it: the stock OpenFeature server SDK with the stock OFREP
// provider (@openfeature/ofrep-provider, as tests/js/ofrep_checks.mjs), sending the token. The
// value, or the error code when the provider reports one (a disabled flag: GENERAL in 0.1.3).
await OpenFeature.setProviderAndWait(
  new OFREPProvider({ baseUrl, headers: [['Authorization', `Bearer ${token}`]] }),
);
const client = OpenFeature.getClient();
async function evaluate(key) {
  const details = await client.getBooleanDetails(key, false, { targetingKey: 'user-1' });
  return details.errorCode ?? details.value;
}

// Evaluates `key` until its answer is `wanted` (or passes it, a function), or the patience ends.
async function until(key, wanted) {
  const ok = typeof wanted === 'function' ? wanted : (v) => v === wanted;
  const deadline = Date.now() + CHANGE_PATIENCE_MS;
  let got;
  while (Date.now() < deadline) {
    got = await evaluate(key);
    if (ok(got)) return got;
    await new Promise((r) => setTimeout(r, 100));
  }
  return got;
}

const browser = await chromium.launch({
  executablePath: process.env.BUNTING_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
const result = { unlabeled: [], values: {}, states: {}, consoleErrors: [] };
try {
  const page = await browser.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error') result.consoleErrors.push(m.text());
  });
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  // Every visible field must have a label a screen reader announces.
  const unlabeled = async (where) => {
    const missing = await page.$$eval('input:not([type=hidden]), textarea, select', (els) =>
      els.filter((e) => e.labels.length === 0 && !e.getAttribute('aria-label')).map((e) => e.name),
    );
    result.unlabeled.push(...missing.map((n) => `${where}:${n}`));
  };

  // Sign in with the keyboard only: the token field has focus, Tab reaches the button, Shift+Tab
  // comes back, Enter submits.
  await page.goto(`${baseUrl}/ui`);
  await unlabeled('sign-in');
  await shot('01-sign-in');
  const focused = () => page.evaluate(() => document.activeElement?.id || document.activeElement?.textContent);
  const start = await focused();
  await page.keyboard.press('Tab');
  const onButton = await focused();
  await page.keyboard.press('Shift+Tab');
  const back = await focused();
  await page.keyboard.type(token);
  await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);
  result.keyboardSignIn =
    start === 'token' && onButton === 'Sign in' && back === 'token' && page.url().endsWith('/ui/sets');
  await shot('02-flag-sets');

  // Create a flag in the default set.
  await page.click('a[href="/ui/sets/default"]');
  await unlabeled('set');
  await page.getByLabel('Key').fill('checkout');
  await page
    .getByLabel('Definition (flagd JSON)')
    .fill(JSON.stringify({ state: 'ENABLED', variants: { on: true, off: false }, defaultVariant: 'off' }, null, 2));
  await Promise.all([page.waitForNavigation(), page.click('text=Create flag')]);
  await shot('03-flag-created');
  result.values.created = await until('checkout', false);

  // Search: the new flag is found, another is filtered out.
  await page.goto(`${baseUrl}/ui/sets/default`);
  await page.getByLabel('Search flags').fill('check');
  await Promise.all([page.waitForNavigation(), page.getByLabel('Search flags').press('Enter')]);
  result.search = await page.$$eval('tbody a', (as) => as.map((a) => a.textContent));
  await shot('04-search');

  // Edit: a 100% rollout to "on", reviewed side by side, then saved.
  await page.click('text=checkout');
  await unlabeled('flag');
  const editor = page.locator('#definition');
  const definition = JSON.parse(await editor.inputValue());
  // Live validation: a broken edit lists the engine's problem at its path while typing, and a
  // fixed one says the engine accepts it; nothing is saved either way.
  await editor.fill(JSON.stringify({ ...definition, defaultVariant: 'maybe' }, null, 2));
  await page
    .locator('#live-problems code', { hasText: 'flags.checkout.defaultVariant' })
    .first()
    .waitFor({ timeout: 10_000 })
    .then(() => { result.liveProblem = true; }, () => { result.liveProblem = false; });
  await shot('05a-live-validation');
  await editor.fill(JSON.stringify(definition, null, 2));
  await page
    .locator('#live-problems', { hasText: 'accepts' })
    .waitFor({ timeout: 10_000 })
    .then(() => { result.liveAccepted = true; }, () => { result.liveAccepted = false; });
  definition.targeting = { fractional: [['on', 100], ['off', 0]] };
  await editor.fill(JSON.stringify(definition, null, 2));
  await Promise.all([page.waitForNavigation(), page.click('text=Review changes')]);
  const columns = await page.$$eval('.diff pre', (pres) => pres.map((p) => p.textContent));
  result.reviewShowsBoth =
    columns.length === 2 && !columns[0].includes('fractional') && columns[1].includes('fractional');
  await shot('05-review');
  await Promise.all([page.waitForNavigation(), page.click('#save')]);
  await shot('06-saved');
  result.values.rolledOut = await until('checkout', true);

  // The kill switch.
  await Promise.all([page.waitForNavigation(), page.click('#toggle')]);
  result.states.afterToggle = await page.textContent('#state');
  await shot('07-killed');
  // Whatever a disabled flag answers (flagd: FLAG_NOT_FOUND or its default), never the rollout.
  result.values.killed = await until('checkout', (v) => v !== true);

  // Roll back to the version that created the flag (its default, "off", enabled).
  await page.click('text=Audit log');
  await shot('08-audit');
  const createdAt = await page.$$eval('tbody tr', (rows) => {
    const row = rows.find(
      (r) => r.cells[3]?.textContent === 'CREATE' && r.cells[4]?.textContent === 'checkout',
    );
    return row ? Number(row.cells[0].textContent) : null;
  });
  await Promise.all([
    page.waitForNavigation(),
    page.click(`button.rollback[data-version="${createdAt}"]`),
  ]);
  await shot('09-rolled-back');
  result.rolledBack = page.url().endsWith('/ui/sets/default/audit');
  result.values.afterRollback = await until('checkout', false);
  await page.click('text=Flag set default');
  await page.click('text=checkout');
  result.states.afterRollback = await page.textContent('#state');
} finally {
  await browser.close();
  clearTimeout(timer);
}
console.log(JSON.stringify(result));
