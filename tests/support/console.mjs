// Drives the admin console and the access-request flow in headless Chromium (Debian's), with two
// browser contexts: an admin (local account) and alice (signed in through the real test IdP).
// Usage: node console.mjs APP_ORIGIN CONSOLE_ORIGIN ADMIN_EMAIL ADMIN_PASSWORD SCREENSHOT_DIR
// (the apps' host, and castellan's own, where its sign-in, console and request pages are).
// Prints one JSON object with what each step saw; exits 1 with the reason on failure.
import { chromium } from 'playwright-core';

const [app, origin, adminEmail, adminPassword, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const out = {};
const text = (page) => page.evaluate(() => document.body.innerText);
const shot = (page, name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
try {
  const admin = await (await browser.newContext({ viewport: { width: 1200, height: 800 } })).newPage();
  await admin.goto(`${origin}/.castellan/admin/`);
  await admin.fill('input[name=email]', adminEmail);
  await admin.fill('input[name=password]', adminPassword);
  await admin.click('form[action="/.castellan/sign_in"] button[type=submit]');
  await admin.waitForURL(`${origin}/.castellan/admin/`);
  out.apps = await text(admin);
  await shot(admin, 'console-apps');

  // Share demo with alice by email.
  await admin.click('a[href="/.castellan/admin/apps/demo"]');
  await admin.selectOption('select[name=kind]', 'user');
  await admin.fill('input[name=value]', 'alice@example.com');
  await admin.click('form[action$="/add"] button[type=submit]');
  out.added = await text(admin);
  await shot(admin, 'console-app');

  // Alice, in another browser, signs in through the IdP and opens demo.
  const alice = await (await browser.newContext({ viewport: { width: 1000, height: 700 } })).newPage();
  await alice.goto(`${app}/hello`);
  await alice.click('text=Sign in with Corp SSO');
  await alice.fill('input[name=login]', 'alice@example.com');
  await alice.fill('input[name=password]', 'alice-password');
  await alice.click('button[type=submit]');
  await alice.waitForURL(`${app}/hello`);
  out.aliceDemo = await text(alice);

  // Denied on reports: she asks for access (on castellan's own pages).
  await alice.goto(`${app}/reports/q3`);
  out.denied = await text(alice);
  await shot(alice, 'access-denied');
  await alice.click('text=Request access');
  await alice.fill('input[name=reason]', 'Q3 numbers for the board');
  await alice.click('form[action="/.castellan/request_access"] button[type=submit]');
  out.requested = await text(alice);

  // The admin approves it in one click.
  await admin.goto(`${origin}/.castellan/admin/requests`);
  out.requests = await text(admin);
  await shot(admin, 'console-requests');
  await admin.click('text=Approve alice@example.com');
  out.approved = await text(admin);

  // Alice reloads and gets in.
  await alice.goto(`${app}/reports/q3`);
  out.aliceReports = await text(alice);

  await admin.goto(`${origin}/.castellan/admin/audit`);
  out.audit = await text(admin);
  await shot(admin, 'console-audit');
  for (const page of ['groups', 'sessions', 'settings']) {
    await admin.goto(`${origin}/.castellan/admin/${page}`);
    out[page] = await text(admin);
    await shot(admin, `console-${page}`);
  }
  console.log(JSON.stringify({ ok: true, ...out }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e), ...out }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
