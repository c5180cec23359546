// A stolen session cookie in headless Chromium: a thief who copied the victim's castellan session
// cookie into a browser of their own tries to plant a way back in (a passkey, a TOTP key, a new
// password); the victim then signs out everywhere, removing passkeys.
// Usage: node stolen.mjs APP_URL CONSOLE_ORIGIN EMAIL PASSWORD
// Prints JSON with what each step saw.
import { addAuthenticator, run, signInLocal, text } from './chromium.mjs';

const [url, origin, email, password] = process.argv.slice(2);
const account = `${origin}/.castellan/account`;

await run(async (browser, out) => {
  const victim = await (await browser.newContext()).newPage();
  await addAuthenticator(victim);
  await signInLocal(victim, url, email, password);

  // The thief has the session cookie of castellan's own host (not the victim's browser cookie).
  const stolen = (await victim.context().cookies(origin)).filter((c) => c.name.endsWith('castellan_session'));
  out.stolenCookies = stolen.length;
  const thief = await (await browser.newContext()).newPage();
  await thief.context().addCookies(stolen);
  const { cdp, authenticatorId } = await addAuthenticator(thief);
  await thief.goto(account);
  out.thiefSees = await thief.locator('h1').innerText();

  // 1. A passkey of the thief's.
  await thief.fill('input[name=passkey_name]', 'back door');
  await Promise.all([thief.waitForEvent('load'), thief.click('[data-passkey=register]')]);
  out.thiefPasskey = thief.url();
  out.thiefAuthenticatorCredentials =
    (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials.length;
  // 2. A TOTP key of the thief's.
  await thief.goto(account);
  await Promise.all([thief.waitForEvent('load'), thief.click(`form[action="/.castellan/account/two_step"] button`)]);
  out.thiefTotp = thief.url();
  // 3. A password of the thief's.
  await thief.goto(account);
  await thief.fill('input[name=new_password]', 'the thief chose this one');
  await thief.fill('input[name=new_password_again]', 'the thief chose this one');
  await Promise.all([thief.waitForEvent('load'), thief.click(`form[action="/.castellan/account/password"] button`)]);
  out.thiefPassword = thief.url();
  // 4. The confirmation needs the password the thief does not have.
  await thief.goto(`${account}/confirm`);
  await thief.fill('input[name=password]', 'a guess');
  await thief.click(`form[action="/.castellan/account/confirm"] button[type=submit]`);
  out.thiefConfirm = await thief.locator('.error[role=alert]').first().innerText();

  // 5. The victim confirms in their own browser: the proof stays with that browser.
  await victim.goto(`${account}/confirm`);
  await victim.fill('input[name=password]', password);
  await Promise.all([victim.waitForURL(`${account}?confirmed=1`),
    victim.click(`form[action="/.castellan/account/confirm"] button[type=submit]`)]);
  await thief.goto(account);
  await thief.fill('input[name=passkey_name]', 'back door');
  await Promise.all([thief.waitForEvent('load'), thief.click('[data-passkey=register]')]);
  out.thiefPasskeyAfterVictimConfirmed = thief.url();

  // 6. The victim adds a passkey of their own, then signs out everywhere, removing passkeys.
  await victim.fill('input[name=passkey_name]', 'victim laptop');
  await Promise.all([victim.waitForEvent('load'), victim.click('[data-passkey=register]')]);
  out.victimPasskeys = await victim.locator('ul.passkeys').innerText();
  await victim.check('input[name=remove_passkeys]');
  await victim.click(`form[action="/.castellan/account/sign_out_everywhere"] button[type=submit]`);
  await victim.waitForLoadState('load');
  out.signedOutEverywhere = await text(victim);

  // 7. The thief's cookie is worth nothing now, and the victim's passkey signs nobody in.
  await thief.goto(account);
  out.thiefAfter = thief.url();
  await victim.goto(url);
  await victim.click('[data-passkey=sign-in]');
  const status = victim.locator('[data-passkey-status]');
  await status.waitFor({ state: 'visible' });
  out.passkeyAfter = await status.innerText();
});
