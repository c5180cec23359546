// Signs in through castellan's own local-account form in headless Chromium (Debian's), first with a
// wrong password, then with the right one, then signs out, and reports what the browser saw at each step.
// Usage: node sign-in.mjs URL EMAIL PASSWORD SCREENSHOT.png
// Prints JSON: { wrong: <alert text>, url, text: <the app's page>, signedOut: <heading>, after: <URL when reopening> }.
import { chromium } from 'playwright-core';

const [url, email, password, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 900, height: 650 } });
try {
  await page.goto(url);
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', 'not the password');
  await page.click('button[type=submit]');
  const wrong = await page.locator('[role=alert]:visible').innerText();
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', password);
  await page.click('button[type=submit]');
  await page.waitForLoadState('load');
  await page.screenshot({ path: shot, fullPage: true });
  const signedIn = { url: page.url(), text: await page.evaluate(() => document.body.innerText) };
  await page.goto(new URL('/.castellan/sign_out', url).href);
  await page.click('button[type=submit]');
  const signedOut = await page.locator('h1').innerText();
  await page.goto(url);
  const after = page.url();
  console.log(JSON.stringify({ wrong, ...signedIn, signedOut, after }));
} catch (e) {
  console.log(JSON.stringify({ error: String(e), url: page.url() }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
