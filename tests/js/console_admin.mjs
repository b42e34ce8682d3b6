// The console's tokens and experiments pages in headless Chromium against a real node on
// PostgreSQL (tests/console.rs starts it, with a 50/50 flag `checkout`, and sends simulated
// traffic once the experiment runs): create a token and see its secret once (a reload does not
// show it), revoke it and see it refused; create an experiment on `checkout`, start it, and wait
// for its results with the lift chart and the decision rule. Screenshots go to SCREENSHOT_DIR.
//
// usage: node console_admin.mjs BASE_URL TOKEN SCREENSHOT_DIR
// Prints one JSON line: {"secretShown": bool, "secretAfterReload": bool, "revoked": bool,
// "revokedStatus": number, "experimentState": str, "charts": number, "rule": str,
// "unlabeled": [...], "consoleErrors": [...]}.
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [baseUrl, token, shots] = process.argv.slice(2);
if (!baseUrl || !token || !shots) {
  console.error('usage: node console_admin.mjs BASE_URL TOKEN SCREENSHOT_DIR');
  process.exit(64);
}
mkdirSync(shots, { recursive: true });
// How long the results may take to show users (the test's traffic starts once the experiment
// runs; this only bounds a broken pipeline).
const RESULTS_PATIENCE_MS = 40_000;
const timer = setTimeout(() => {
  console.error('gave up after 90 s');
  process.exit(2);
}, 90_000);

const browser = await chromium.launch({
  executablePath: process.env.BUNTING_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
const result = { unlabeled: [], consoleErrors: [] };
try {
  const page = await browser.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error') result.consoleErrors.push(m.text());
  });
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  const unlabeled = async (where) => {
    const missing = await page.$$eval('input:not([type=hidden]), textarea, select', (els) =>
      els.filter((e) => e.labels.length === 0 && !e.getAttribute('aria-label')).map((e) => e.name),
    );
    result.unlabeled.push(...missing.map((n) => `${where}:${n}`));
  };

  await page.goto(`${baseUrl}/ui`);
  await page.getByLabel('API token').fill(token);
  await Promise.all([page.waitForNavigation(), page.getByRole('button', { name: 'Sign in' }).click()]);

  // A token: created, its secret shown once, then revoked.
  await page.click('nav >> text=Tokens');
  await unlabeled('tokens');
  await page.getByLabel('Name').fill('browser-reader');
  await page.getByLabel('flags:read').check();
  await page.getByLabel('All flag sets').check();
  await Promise.all([page.waitForNavigation(), page.click('text=Create token')]);
  await shot('10-token-created');
  const secret = (await page.locator('#secret').count()) ? await page.textContent('#secret') : '';
  result.secretShown = secret.startsWith('bnt_');
  await page.reload();
  await shot('11-token-reloaded');
  result.secretAfterReload =
    (await page.locator('#secret').count()) > 0 || (await page.content()).includes(secret);
  await page.goto(`${baseUrl}/ui/tokens`);
  await page.click('a[aria-label="Revoke browser-reader"]');
  await shot('12-token-revoke');
  await Promise.all([page.waitForNavigation(), page.click('text=Revoke browser-reader')]);
  await shot('13-token-revoked');
  result.revoked = (await page.content()).includes('Revoked token');
  const refused = await fetch(`${baseUrl}/ofrep/v1/evaluate/flags/checkout`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
    body: JSON.stringify({ context: { targetingKey: 'user-1' } }),
  });
  result.revokedStatus = refused.status;

  // An experiment on `checkout`: created, started, its results drawn once traffic arrives.
  await page.click('nav >> text=Experiments');
  await unlabeled('experiments');
  await page.getByLabel('Flag', { exact: true }).fill('checkout');
  await Promise.all([page.waitForNavigation(), page.click('text=Choose flag')]);
  await unlabeled('new-experiment');
  await page.getByLabel('Experiment id').fill('checkout-colour');
  await page.getByLabel('Control variant').selectOption('control');
  await shot('14-experiment-new');
  await Promise.all([page.waitForNavigation(), page.click('text=Create experiment')]);
  await shot('15-experiment-draft');
  await Promise.all([page.waitForNavigation(), page.click('text=Start experiment')]);
  const deadline = Date.now() + RESULTS_PATIENCE_MS;
  while (Date.now() < deadline && (await page.locator('svg.chart').count()) === 0) {
    await new Promise((r) => setTimeout(r, 500));
    await page.reload();
  }
  await shot('16-experiment-results');
  result.experimentState = await page.textContent('p .state');
  result.charts = await page.locator('svg.chart').count();
  result.rule = (await page.textContent('.rule')) ?? '';
} finally {
  await browser.close();
  clearTimeout(timer);
}
console.log(JSON.stringify(result));
