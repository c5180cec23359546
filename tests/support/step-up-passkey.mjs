// require_passkey with a local account in headless Chromium (Debian's) and a virtual WebAuthn
// authenticator (Chrome DevTools Protocol): an account with only a password signs in and is taken
// to its account page to add a passkey (after confirming it's them), then signs in with it and
// reaches the app; later a password alone is refused with the way on, and the passkey opens it.
// Usage: node step-up-passkey.mjs APP_URL CONSOLE_ORIGIN EMAIL PASSWORD
// Prints JSON: { notice, accountUrl, accountNotice, listed, appUrl, appText, refused, againUrl }.
import { chromium } from 'playwright-core';

const [url, origin, email, password] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage();
const out = {};
// What the page did, printed if a step fails: which side stalled shows in it (a click that sent
// nothing, a request that never got its answer, a script error).
const seen = [];
const note = (what) => seen.push(`${new Date().toISOString().slice(11, 23)} ${what}`);
page.on('request', (r) => note(`→ ${r.method()} ${r.url()}`));
page.on('requestfinished', (r) => note(`← ${r.method()} ${r.url()}`));
page.on('requestfailed', (r) => note(`✗ ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
page.on('console', (m) => note(`console.${m.type()}: ${m.text()}`));
page.on('pageerror', (e) => note(`page error: ${e}`));
const text = () => page.evaluate(() => document.body.innerText);
const signInWithPassword = async () => {
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', password);
  await page.click('form[action="/.castellan/sign_in"] button[type=submit]');
};
try {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  await cdp.send('WebAuthn.addVirtualAuthenticator', { options: {
    protocol: 'ctap2', transport: 'internal', hasResidentKey: true,
    hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
  } });

  // The app asks for a passkey; the sign-in page says so.
  await page.goto(url);
  out.notice = await page.locator('p.notice').innerText();
  await signInWithPassword();
  // No passkey yet: to the account page, which says why and how to come back.
  await page.waitForURL((u) => u.pathname === '/.castellan/account' && u.searchParams.get('need') === 'passkey');
  out.accountUrl = page.url();
  out.accountNotice = await page.locator('p.notice').first().innerText();
  await page.click('a[href^="/.castellan/account/confirm"]');
  await page.fill('input[name=password]', password);
  await page.click('form[action="/.castellan/account/confirm"] button[type=submit]');
  await page.waitForURL((u) => u.searchParams.get('confirmed') === '1' && u.searchParams.get('need') === 'passkey');
  await page.fill('input[name=passkey_name]', 'step-up laptop');
  await Promise.all([page.waitForEvent('load'), page.click('[data-passkey=register]')]);
  out.listed = await page.locator('ul.passkeys').innerText();
  // Back to the app: it still wants the passkey itself, so the sign-in asks for it.
  await page.click('text=sign in with it and continue');
  await page.locator('[data-passkey=sign-in]').waitFor({ state: 'visible' });
  await Promise.all([page.waitForURL(url), page.click('[data-passkey=sign-in]')]);
  out.appUrl = page.url();
  out.appText = await text();

  // Signed out, a password alone is refused with the way on; the passkey opens the app.
  await page.goto(`${origin}/.castellan/sign_out`);
  await page.click('button[type=submit]');
  await page.goto(url);
  await signInWithPassword();
  const refused = page.locator('p.error[role=alert]:not([data-passkey-status])');
  await refused.waitFor({ state: 'visible' });
  out.refused = await refused.innerText();
  await Promise.all([page.waitForURL(url), page.click('[data-passkey=sign-in]')]);
  out.againUrl = page.url();
  console.log(JSON.stringify(out));
} catch (e) {
  console.log(JSON.stringify({ error: String(e), url: page.url(), text: await text().catch(() => ''), seen, ...out }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
