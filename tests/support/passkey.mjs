// Passkeys in headless Chromium (Debian's) with a virtual WebAuthn authenticator (Chrome DevTools
// Protocol): sign in with the password, confirm it's you, register a passkey on the account page,
// sign out, sign in with the passkey, confirm with the passkey, remove it, and see a passkey
// sign-in refused.
// Usage: node passkey.mjs APP_URL CONSOLE_ORIGIN EMAIL PASSWORD
// (the app's page, and castellan's own origin where sign-in and the account page are).
// Prints JSON: { listed, credentials, signCount, url, text, confirmedWithPasskey, removedError }.
import { chromium } from 'playwright-core';

const [url, origin, email, password] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage();
const out = {};
const signOut = async () => {
  await page.goto(`${origin}/.castellan/sign_out`);
  await page.click('button[type=submit]');
};
try {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', { options: {
    protocol: 'ctap2', transport: 'internal', hasResidentKey: true,
    hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
  } });

  await page.goto(url);
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', password);
  await page.click('form[action="/.castellan/sign_in"] button[type=submit]');
  await page.waitForURL(url);

  // Adding a passkey needs a fresh proof: the password, on the confirmation page.
  await page.goto(`${origin}/.castellan/account/confirm`);
  await page.fill('input[name=password]', password);
  await page.click('form[action="/.castellan/account/confirm"] button[type=submit]');
  await page.waitForURL(`${origin}/.castellan/account?confirmed=1`);
  await page.fill('input[name=passkey_name]', 'test laptop');
  await Promise.all([page.waitForEvent('load'), page.click('[data-passkey=register]')]);
  out.listed = await page.locator('ul.passkeys').innerText();

  await signOut();
  await page.goto(url);
  await Promise.all([page.waitForURL(url), page.click('[data-passkey=sign-in]')]);
  const creds = (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials;
  out.credentials = creds.length;
  out.signCount = creds[0] && creds[0].signCount;
  out.url = page.url();
  out.text = await page.evaluate(() => document.body.innerText);

  // Removing it needs a fresh proof too: this time the passkey itself.
  await page.goto(`${origin}/.castellan/account/confirm`);
  await Promise.all([
    page.waitForURL(`${origin}/.castellan/account`),
    page.click('[data-passkey=confirm]'),
  ]);
  out.confirmedWithPasskey = await page.evaluate(() => document.body.innerText);
  await Promise.all([page.waitForEvent('load'), page.click('ul.passkeys button[type=submit]')]);
  await signOut();
  await page.goto(url);
  await page.click('[data-passkey=sign-in]');
  const status = page.locator('[data-passkey-status]');
  await status.waitFor({ state: 'visible' });
  out.removedError = await status.innerText();
  out.after = page.url();
  console.log(JSON.stringify(out));
} catch (e) {
  console.log(JSON.stringify({ error: String(e), url: page.url(), ...out }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
