// Headless Chromium (Debian's) without any client certificate, against castellan over HTTPS with
// an access level that needs a device certificate: signs in with a local account on the app's
// host and reports the page castellan answers with.
// Usage: node device-denied.mjs APP_URL EMAIL PASSWORD RESOLVE_HOSTS (e.g. "*.apps.test,apps.test")
// Prints JSON: { url, status, text }.
import { chromium } from 'playwright-core';

const [url, email, password, hosts] = process.argv.slice(2);
const rules = hosts.split(',').map((h) => `MAP ${h} 127.0.0.1`).join(', ');
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         `--host-resolver-rules=${rules}`],
});
const context = await browser.newContext({ ignoreHTTPSErrors: true });
const page = await context.newPage();
try {
  await page.goto(url);
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', password);
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url() === url && r.request().isNavigationRequest()),
    page.click('form[action="/.castellan/sign_in"] button[type=submit]'),
  ]);
  await page.waitForLoadState('load');
  console.log(JSON.stringify({ url: page.url(), status: response.status(), text: await page.evaluate(() => document.body.innerText) }));
} catch (e) {
  console.log(JSON.stringify({ error: String(e), url: page.url(), text: await page.evaluate(() => document.body.innerText).catch(() => '') }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
