// What the browser scripts share: Debian's Chromium, headless, and the steps every script repeats.
import { chromium } from 'playwright-core';

/** Debian's Chromium (or $CHROMIUM), headless, with nothing that reaches the internet. */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** A virtual platform authenticator (Chrome DevTools Protocol) on `page`; returns its id and session. */
export async function addAuthenticator(page) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', { options: {
    protocol: 'ctap2', transport: 'internal', hasResidentKey: true,
    hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
  } });
  return { cdp, authenticatorId };
}

/** Opens `url` (an app's page), signs in with castellan's local-account form, and waits to be back. */
export async function signInLocal(page, url, email, password) {
  await page.goto(url);
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', password);
  await page.click('form[action="/.castellan/sign_in"] button[type=submit]');
  await page.waitForURL(url);
}

/** The visible text of the page. */
export const text = (page) => page.evaluate(() => document.body.innerText);

/** Runs `steps(browser, out)`, prints `out` as JSON; on failure prints the error too and exits 1. */
export async function run(steps) {
  const browser = await launch();
  const out = {};
  try {
    await steps(browser, out);
    console.log(JSON.stringify(out));
  } catch (e) {
    console.log(JSON.stringify({ error: String(e), ...out }));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}
