// Opens a Streamlit app behind castellan in headless Chromium (Debian's), signs in at the test IdP,
// and checks that the app renders and reacts (both need Streamlit's WebSocket through the proxy).
// Usage: node streamlit.mjs URL EMAIL PASSWORD SCREENSHOT.png [--hold]
// Prints a JSON summary; exits 1 with the reason on failure. With --hold it then prints READY and
// keeps the page open until Streamlit's WebSocket is closed by the other side, printing CLOSED
// (or TIMEOUT after 15 s): how a test sees castellan cut a live app when access is revoked.
import { chromium } from 'playwright-core';

const [url, email, password, shot, hold] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
const sockets = [];
let streamClosed;
const closed = new Promise((resolve) => { streamClosed = resolve; });
page.on('websocket', (ws) => {
  sockets.push(ws.url());
  if (ws.url().endsWith('/_stcore/stream')) ws.on('close', () => streamClosed());
});
try {
  await page.goto(url);
  await page.waitForSelector('input[name=password]', { timeout: 15000 });   // the IdP's login form
  await page.fill('input[name=login]', email);
  await page.fill('input[name=password]', password);
  await page.click('button[type=submit]');
  await page.getByText('castellan test app').waitFor({ timeout: 30000 });
  await page.getByText('Hello, world!').waitFor({ timeout: 30000 });
  await page.getByText(`castellan says you are ${email}`).waitFor({ timeout: 30000 });
  await page.getByText(`verified as ${email}`).waitFor({ timeout: 30000 });
  await page.getByRole('button', { name: 'Count' }).click();
  await page.waitForFunction(() => /clicks:\s*1/.test(document.body.innerText), null, { timeout: 15000 });
  await page.screenshot({ path: shot });
  console.log(JSON.stringify({ ok: true, url: page.url(), websockets: sockets }));
  if (hold === '--hold') {
    console.log('READY');
    const outcome = await Promise.race([closed.then(() => 'CLOSED'), new Promise((r) => setTimeout(() => r('TIMEOUT'), 15000))]);
    console.log(outcome);
  }
} catch (e) {
  await page.screenshot({ path: shot }).catch(() => {});
  console.log(JSON.stringify({ ok: false, error: String(e), url: page.url(), websockets: sockets,
    text: (await page.evaluate(() => document.body.innerText).catch(() => '')).slice(0, 2000) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
