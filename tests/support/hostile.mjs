// A hostile app in headless Chromium: an administrator signed in to castellan opens a page of an
// app behind castellan whose response tries to set castellan's cookies and clear the browser's,
// and whose script tries to read castellan's console and add an administrator through its API.
// Usage: node hostile.mjs APP_ORIGIN CONSOLE_ORIGIN EMAIL PASSWORD ATTACKER_SESSION MEMBER
// Prints JSON: { attempts: what the page's script got, whoamiApp, whoamiConsole, cookies }.
import { run, signInLocal, text } from './chromium.mjs';

const [app, origin, email, password, attackerSession, member] = process.argv.slice(2);

await run(async (browser, out) => {
  const page = await (await browser.newContext()).newPage();
  await signInLocal(page, `${app}/welcome`, email, password);
  await page.goto(`${origin}/.castellan/admin/`);
  out.console = await page.locator('h1').first().innerText();

  const q = new URLSearchParams({ console: origin, cookie: attackerSession, member });
  await page.goto(`${app}/hostile?${q}`);
  await page.waitForFunction(() => document.title === 'done', null, { timeout: 20000 });
  out.attempts = JSON.parse(await page.locator('#out').innerText());

  await page.goto(`${app}/.castellan/whoami`);
  out.whoamiApp = await text(page);
  await page.goto(`${origin}/.castellan/whoami`);
  out.whoamiConsole = await text(page);
  out.cookies = (await page.context().cookies()).map((c) => ({ name: c.name, domain: c.domain, value: c.value }));
});
