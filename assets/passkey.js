// castellan passkeys: the browser's half of WebAuthn sign-in, confirmation ("confirm it's you"
// before a change to the account) and registration. Buttons carry data-passkey="sign-in",
// "confirm" or "register" and data-csrf; the status line is [data-passkey-status].
'use strict';
(() => {
  const b64u = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)))
    .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const bytes = (s) => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
  const status = document.querySelector('[data-passkey-status]');
  const say = (message) => { if (status) { status.textContent = message; status.hidden = false; } };

  async function post(path, csrf, body) {
    const r = await fetch(path, {
      method: 'POST', credentials: 'same-origin',
      headers: { 'content-type': 'application/json', 'x-castellan-csrf': csrf },
      body: JSON.stringify(body),
    });
    const v = await r.json().catch(() => ({}));
    if (v.error === 'confirmation_required') location.assign('/.castellan/account/confirm');
    if (!r.ok) throw new Error(v.message || `castellan answered ${r.status}`);
    return v;
  }

  async function signIn(button) {
    const o = await post('/.castellan/passkey/sign_in/options', button.dataset.csrf, {});
    const cred = await navigator.credentials.get({ publicKey: {
      challenge: bytes(o.challenge), rpId: o.rpId, timeout: o.timeout,
      userVerification: 'required', allowCredentials: [],
    } });
    const r = cred.response;
    const v = await post('/.castellan/passkey/sign_in', button.dataset.csrf, {
      id: cred.id, rd: button.dataset.rd || '/',
      clientDataJSON: b64u(r.clientDataJSON), authenticatorData: b64u(r.authenticatorData),
      signature: b64u(r.signature),
    });
    location.assign(v.location);
  }

  async function confirm(button) {
    const o = await post('/.castellan/passkey/confirm/options', button.dataset.csrf, {});
    const cred = await navigator.credentials.get({ publicKey: {
      challenge: bytes(o.challenge), rpId: o.rpId, timeout: o.timeout, userVerification: 'required',
      allowCredentials: o.allow.map((id) => ({ type: 'public-key', id: bytes(id) })),
    } });
    const r = cred.response;
    const v = await post('/.castellan/passkey/confirm', button.dataset.csrf, {
      id: cred.id,
      clientDataJSON: b64u(r.clientDataJSON), authenticatorData: b64u(r.authenticatorData),
      signature: b64u(r.signature),
    });
    location.assign(v.location);
  }

  async function register(button) {
    const o = await post('/.castellan/passkey/register/options', button.dataset.csrf, {});
    const cred = await navigator.credentials.create({ publicKey: {
      challenge: bytes(o.challenge), rp: o.rp, timeout: o.timeout,
      user: { id: bytes(o.user.id), name: o.user.name, displayName: o.user.displayName },
      pubKeyCredParams: o.algorithms.map((alg) => ({ type: 'public-key', alg })),
      excludeCredentials: o.exclude.map((id) => ({ type: 'public-key', id: bytes(id) })),
      authenticatorSelection: { residentKey: 'required', userVerification: 'required' },
      attestation: 'none',
    } });
    const name = document.querySelector('[name=passkey_name]');
    await post('/.castellan/passkey/register', button.dataset.csrf, {
      name: name ? name.value : '',
      clientDataJSON: b64u(cred.response.clientDataJSON),
      attestationObject: b64u(cred.response.attestationObject),
    });
    location.reload();
  }

  for (const button of document.querySelectorAll('[data-passkey]')) {
    if (!window.PublicKeyCredential) continue;
    button.hidden = false;
    button.addEventListener('click', async (e) => {
      e.preventDefault();
      button.disabled = true;
      try {
        const ceremony = { register, confirm, 'sign-in': signIn }[button.dataset.passkey];
        await ceremony(button);
      } catch (err) {
        say(err.name === 'NotAllowedError' ? 'The passkey request was cancelled or timed out.' : err.message);
      } finally {
        button.disabled = false;
      }
    });
  }
})();
