// Test OpenID Provider for castellan's end-to-end tests.
//
// panva's certified `oidc-provider` (npm, major 9) on loopback, with a small
// login + consent UI of our own (the package's devInteractions accept ANY
// login and ignore the password; ours checks a password so tests can also
// prove that a wrong password is refused).
//
// The tests run it from this folder, whose node_modules `npm ci` fills
// (ESM imports resolve relative to the script's own location).
//
// Environment (all optional):
//   IDP_HOST / IDP_PORT        listen address            (127.0.0.1 / 9000)
//   IDP_ISSUER                 issuer URL                (http://IDP_HOST:IDP_PORT)
//   IDP_USERS                  "email:password,..."      (alice@example.com:alice-password,bob@example.com:bob-password)
//   IDP_AUTO_CONSENT=1         skip the consent page (grant is created automatically, also when the
//                              client asks for it with prompt=consent, as an admin-consented app)
//   IDP_TEST_CONTROL=1         POST /_test/disable?email=E (the account can no longer sign in or
//                              refresh: as disabled at the provider) and /_test/groups?email=E&groups=a|b
//   IDP_GROUPS                 "email=group|group;email=group" - a `groups` claim (profile scope)
//   IDP_GROUPS_OVERAGE         "email,email" - for these people the ID token says their groups are too
//                              many to carry, as Microsoft Entra ID does past 200: `_claim_names` and
//                              `_claim_sources` pointing at Graph instead of `groups`
//   IDP_HD                     "email=domain;email=domain" - Google's `hd` claim (email scope)
//   IDP_CLAIMS                 "email=name:value|name:value;..." - more claims (profile scope); a value
//                              that parses as JSON (3, true, ["a","b"]) is sent as that JSON
//   IDP_AMR                    "email=pwd|otp;..." - the `amr` of these people's sign-ins
//   IDP_ACR                    "email=urn:example:mfa;..." - the `acr` of these people's sign-ins
//   IDP_STEP_UP                "acr=code" - a stronger level: when a sign-in's acr_values ask for `acr`,
//                              the login form also asks for a one-time code, and the right `code` makes
//                              the sign-in's acr `acr` and its amr pwd, otp, mfa (as a provider's
//                              step-up does; an existing session at a lower level is reused unless
//                              the client sends prompt=login, as acr_values are voluntary)
//   IDP_EXTRA_SCOPES           "api:read api:write" - more scopes clients may ask for (an API's, as Google's
//                              BigQuery scope is), granted like the others
//   IDP_ACCESS_TOKEN_TTL       seconds an access token lasts (3600)
//   IDP_CONFORM_ID_TOKEN_CLAIMS=1  oidc-provider's default: in the code flow the
//                              ID token then carries only sub/acr/...; email must be
//                              read from userinfo. Default here: 0 (email in ID token).
//   IDP_KEYS_FILE              JSON file to keep signing keys across restarts
//   APACHE_PEER_SECRET         secret of client apache-peer   (apache-peer-secret)
//   APACHE_PEER_REDIRECT_URI   (http://127.0.0.1:8081/redirect_uri)
//   CASTELLAN_CLIENT_SECRET    secret of client castellan     (castellan-secret)
//   CASTELLAN_REDIRECT_URI     (http://127.0.0.1:8080/.castellan/callback)
//   CASTELLAN_TOKEN_AUTH       client_secret_basic | client_secret_post (client_secret_basic)
//   CASTELLAN_ID_TOKEN_ALG     RS256 | ES256 | PS256      (RS256)
//   IDP_EXTRA_CLIENTS_JSON     JSON array of extra client metadata objects
//   IDP_TAMPER                 fault injection for negative tests: rewrites the ID token in every token
//                              response, re-signed with the provider's own RSA key unless stated:
//                              expired | wrong_nonce | wrong_aud | wrong_iss | unknown_key (signed by a key
//                              the JWKS does not publish) | alg_none (unsigned) | hs256 (HMAC keyed with the
//                              public RSA JWK, the classic key-confusion attack) | unverified_email
import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const env = process.env;
const HOST = env.IDP_HOST || '127.0.0.1';
const PORT = Number(env.IDP_PORT || 9000);
const ISSUER = env.IDP_ISSUER || `http://${HOST}:${PORT}`;

// ---- users -----------------------------------------------------------------
const USERS = new Map();
for (const entry of (env.IDP_USERS || 'alice@example.com:alice-password,bob@example.com:bob-password').split(',')) {
  const i = entry.indexOf(':');
  if (i <= 0) { console.error(`idp: bad IDP_USERS entry ${JSON.stringify(entry)}`); process.exit(2); }
  const email = entry.slice(0, i).trim();
  const local = email.split('@')[0];
  USERS.set(email, {
    password: entry.slice(i + 1),
    name: local.charAt(0).toUpperCase() + local.slice(1) + ' Example',
    preferred_username: local,
  });
}

const GROUPS = new Map();
for (const entry of (env.IDP_GROUPS || '').split(';').filter(Boolean)) {
  const [email, groups] = entry.split('=');
  GROUPS.set(email.trim(), (groups || '').split('|').map((g) => g.trim()).filter(Boolean));
}

const OVERAGE = new Set((env.IDP_GROUPS_OVERAGE || '').split(',').map((e) => e.trim()).filter(Boolean));

const HD = new Map();
for (const entry of (env.IDP_HD || '').split(';').filter(Boolean)) {
  const [email, domain] = entry.split('=');
  HD.set(email.trim(), (domain || '').trim());
}

const CLAIMS = new Map();
for (const entry of (env.IDP_CLAIMS || '').split(';').filter(Boolean)) {
  const [email, list] = entry.split('=');
  const claims = {};
  for (const pair of (list || '').split('|').filter(Boolean)) {
    const i = pair.indexOf(':');
    const raw = pair.slice(i + 1);
    try { claims[pair.slice(0, i)] = JSON.parse(raw); } catch { claims[pair.slice(0, i)] = raw; }
  }
  CLAIMS.set(email.trim(), claims);
}
const EXTRA_CLAIM_NAMES = [...new Set([...CLAIMS.values()].flatMap((c) => Object.keys(c)))];
const perEmail = (name) => new Map((env[name] || '').split(';').filter(Boolean).map((e) => {
  const i = e.indexOf('=');
  return [e.slice(0, i).trim(), e.slice(i + 1).trim()];
}));
const AMR = perEmail('IDP_AMR');
const ACR = perEmail('IDP_ACR');
const [STEP_UP_ACR, STEP_UP_CODE] = (env.IDP_STEP_UP || '=').split('=');

const DISABLED = new Set();

async function findAccount(_ctx, id) {
  const u = USERS.get(id);
  if (!u || DISABLED.has(id)) return undefined;
  return {
    accountId: id,
    async claims(_use, _scope) {
      return {
        sub: id,
        email: id,
        email_verified: true,
        name: u.name,
        preferred_username: u.preferred_username,
        ...(OVERAGE.has(id) ? {
          _claim_names: { groups: 'src1' },
          _claim_sources: { src1: { endpoint: `https://graph.microsoft.com/v1.0/users/${id}/getMemberObjects` } },
        } : { groups: GROUPS.get(id) || [] }),
        ...(HD.has(id) ? { hd: HD.get(id) } : {}),
        ...(CLAIMS.get(id) || {}),
      };
    },
  };
}

// ---- signing keys: one RSA (RS256/PS256) and one P-256 (ES256) ----------------
function makeKeys() {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  rsa.kid = `rsa-${crypto.randomBytes(4).toString('hex')}`; rsa.use = 'sig';
  ec.kid = `ec-${crypto.randomBytes(4).toString('hex')}`; ec.use = 'sig';
  return { keys: [rsa, ec] };
}
let jwks;
if (env.IDP_KEYS_FILE && fs.existsSync(env.IDP_KEYS_FILE)) {
  jwks = JSON.parse(fs.readFileSync(env.IDP_KEYS_FILE, 'utf8'));
} else {
  jwks = makeKeys();
  if (env.IDP_KEYS_FILE) fs.writeFileSync(env.IDP_KEYS_FILE, JSON.stringify(jwks), { mode: 0o600 });
}

// ---- clients -----------------------------------------------------------------
const clients = [
  {
    client_id: 'apache-peer',
    client_secret: env.APACHE_PEER_SECRET || 'apache-peer-secret',
    redirect_uris: [env.APACHE_PEER_REDIRECT_URI || 'http://127.0.0.1:8081/redirect_uri'],
    response_types: ['code'],
    grant_types: ['authorization_code', 'refresh_token'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    client_id: 'castellan',
    client_secret: env.CASTELLAN_CLIENT_SECRET || 'castellan-secret',
    redirect_uris: [env.CASTELLAN_REDIRECT_URI || 'http://127.0.0.1:8080/.castellan/callback'],
    post_logout_redirect_uris: ['/', '/.castellan/signed_out'].map((p) => new URL(p, env.CASTELLAN_REDIRECT_URI || 'http://127.0.0.1:8080/').href),
    // OpenID Connect Back-Channel Logout: where the provider posts logout tokens, with `sid`.
    backchannel_logout_uri: new URL('/.castellan/backchannel_logout', env.CASTELLAN_REDIRECT_URI || 'http://127.0.0.1:8080/').href,
    backchannel_logout_session_required: true,
    response_types: ['code'],
    grant_types: ['authorization_code', 'refresh_token'],
    token_endpoint_auth_method: env.CASTELLAN_TOKEN_AUTH || 'client_secret_basic',
    id_token_signed_response_alg: env.CASTELLAN_ID_TOKEN_ALG || 'RS256',
  },
  ...(env.IDP_EXTRA_CLIENTS_JSON ? JSON.parse(env.IDP_EXTRA_CLIENTS_JSON) : []),
];

// ---- provider ----------------------------------------------------------------
const autoConsent = env.IDP_AUTO_CONSENT === '1';
const configuration = {
  clients,
  jwks,
  findAccount,
  claims: {
    // acr and amr: how the person authenticated, from the login result (IDP_AMR, IDP_ACR), in
    // every ID token that has them.
    openid: ['sub', 'acr', 'amr'],
    email: ['email', 'email_verified', 'hd'],
    profile: ['name', 'preferred_username', 'groups', '_claim_names', '_claim_sources', ...EXTRA_CLAIM_NAMES],
  },
  acrValues: [...new Set([...ACR.values(), ...(STEP_UP_ACR ? [STEP_UP_ACR] : [])])],
  scopes: ['openid', 'offline_access', 'email', 'profile', ...(env.IDP_EXTRA_SCOPES || '').split(' ').filter(Boolean)],
  conformIdTokenClaims: env.IDP_CONFORM_ID_TOKEN_CLAIMS === '1',
  pkce: { required: () => false }, // PKCE (S256) allowed, not required for confidential clients
  features: {
    devInteractions: { enabled: false }, // we serve /interaction/:uid ourselves below
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  // oidc-provider refuses to fetch special-use addresses (its SSRF guard), loopback included;
  // castellan's back-channel logout endpoint is on loopback here, so this test provider drops it.
  fetch: (url, options) => { delete options.dispatcher; return fetch(url, options); },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  ttl: {
    AccessToken: Number(env.IDP_ACCESS_TOKEN_TTL || 3600), AuthorizationCode: 600, IdToken: 3600, Interaction: 3600,
    Session: 14 * 86400, Grant: 14 * 86400, RefreshToken: 14 * 86400,
  },
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    if (!autoConsent) return undefined;
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email profile offline_access');
    grant.addOIDCClaims(['email', 'email_verified', 'hd', 'name', 'preferred_username', 'groups', '_claim_names', '_claim_sources', ...EXTRA_CLAIM_NAMES]);
    await grant.save();
    return grant;
  },
};

const provider = new Provider(ISSUER, configuration);
for (const ev of ['server_error', 'authorization.error', 'grant.error', 'userinfo.error', 'end_session.error', 'introspection.error', 'revocation.error', 'backchannel.error']) {
  provider.on(ev, (_ctx, err) => console.error(`idp: ${ev}: ${err.message}${err.cause ? ` (cause: ${err.cause.code || err.cause.message})` : ''}${err.error_description ? ` (${err.error_description})` : ''}`));
}
provider.on('backchannel.success', (_ctx, client, accountId, sid) => console.log(`idp: back-channel logout of ${accountId} (sid ${sid}) sent to ${client.clientId}`));

// ---- our login / consent pages ---------------------------------------------------
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const page = (title, body) => `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title></head>`
  + `<body><h1>${esc(title)}</h1>${body}</body></html>`;

// Whether this authorization request asks for the step-up level (IDP_STEP_UP).
const wantsStepUp = (params) => Boolean(STEP_UP_ACR)
  && String(params.acr_values || '').split(' ').includes(STEP_UP_ACR);

function loginForm(uid, hint, error, stepUp) {
  return page('Sign-in', `${error ? `<p class="error" role="alert">${esc(error)}</p>` : ''}
<form autocomplete="off" action="/interaction/${esc(uid)}" method="post">
  <input type="hidden" name="prompt" value="login"/>
  <label>Email <input required type="email" name="login" value="${esc(hint || '')}"></label>
  <label>Password <input required type="password" name="password"></label>
  ${stepUp ? '<label>One-time code <input required name="code" inputmode="numeric"></label>' : ''}
  <button type="submit">Sign-in</button>
</form>
<a href="/interaction/${esc(uid)}/abort">Cancel</a>`);
}

function consentForm(uid, clientId, details) {
  const scopes = (details.missingOIDCScope || []).filter((s) => s !== 'openid');
  return page('Authorize', `<p>Client <b>${esc(clientId)}</b> asks for: ${esc(scopes.join(', ') || 'sign-in')}</p>
<form autocomplete="off" action="/interaction/${esc(uid)}" method="post">
  <input type="hidden" name="prompt" value="consent"/>
  <button type="submit">Continue</button>
</form>
<a href="/interaction/${esc(uid)}/abort">Cancel</a>`);
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 65536) throw new Error('form too large');
  }
  return Object.fromEntries(new URLSearchParams(body));
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, page('Error', '<p>interaction mismatch</p>'));
  const { prompt, params } = details;

  if (action === 'abort') {
    return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'End-User aborted interaction' }, { mergeWithLastSubmission: false });
  }
  if (req.method === 'GET' && prompt.name === 'consent' && autoConsent) {
    // Consent granted ahead (an administrator's), as loadExistingGrant does without prompt=consent.
    const grant = details.grantId ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    return provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
  }
  if (req.method === 'GET') {
    if (prompt.name === 'login') return send(res, 200, loginForm(uid, params.login_hint, null, wantsStepUp(params)));
    if (prompt.name === 'consent') return send(res, 200, consentForm(uid, params.client_id, prompt.details));
    return send(res, 501, page('Error', `<p>prompt ${esc(prompt.name)} not implemented</p>`));
  }
  const form = await readForm(req);
  if (form.prompt === 'login' && prompt.name === 'login') {
    const user = USERS.get((form.login || '').trim());
    const digest = (v) => crypto.createHash('sha256').update(String(v)).digest();
    if (!user || !crypto.timingSafeEqual(digest(form.password || ''), digest(user.password))) {
      console.error(`idp: failed login for ${JSON.stringify(form.login)}`);
      return send(res, 200, loginForm(uid, form.login, 'Invalid email or password.', wantsStepUp(params)));
    }
    const accountId = form.login.trim();
    const login = { accountId };
    if (AMR.has(accountId)) login.amr = AMR.get(accountId).split('|');
    if (ACR.has(accountId)) login.acr = ACR.get(accountId);
    if (wantsStepUp(params)) {
      if (form.code !== STEP_UP_CODE) {
        return send(res, 200, loginForm(uid, form.login, 'Wrong one-time code.', true));
      }
      login.acr = STEP_UP_ACR;
      login.amr = ['pwd', 'otp', 'mfa'];
    }
    return provider.interactionFinished(req, res, { login }, { mergeWithLastSubmission: false });
  }
  if (form.prompt === 'consent' && prompt.name === 'consent') {
    const { grantId, session } = details;
    const grant = grantId ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    if (d.missingResourceScopes) {
      for (const [indicator, scope] of Object.entries(d.missingResourceScopes)) grant.addResourceScope(indicator, scope.join(' '));
    }
    return provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
  }
  return send(res, 400, page('Error', '<p>unexpected form submission</p>'));
}

// ---- fault injection (IDP_TAMPER) -----------------------------------------------------
const TAMPER = env.IDP_TAMPER || '';
async function tamper(idToken) {
  const claims = jose.decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  const rsa = jwks.keys.find((k) => k.kty === 'RSA');
  let key = await jose.importJWK(rsa, 'RS256');
  let header = { alg: 'RS256', kid: rsa.kid, typ: 'JWT' };
  switch (TAMPER) {
    case 'expired': claims.iat = now - 7200; claims.exp = now - 3600; break;
    case 'wrong_nonce': claims.nonce = 'not-the-nonce-of-this-sign-in'; break;
    case 'wrong_aud': claims.aud = 'some-other-client'; break;
    case 'wrong_iss': claims.iss = 'http://127.0.0.1:1/evil'; break;
    case 'unverified_email': claims.email_verified = false; break;
    case 'unknown_key': {
      const { privateKey } = await jose.generateKeyPair('RS256');
      key = privateKey; header = { alg: 'RS256', kid: 'unknown-key', typ: 'JWT' };
      break;
    }
    case 'alg_none': {
      const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
      return `${enc({ alg: 'none', typ: 'JWT' })}.${enc(claims)}.`;
    }
    case 'hs256': {
      const pub = { kty: rsa.kty, n: rsa.n, e: rsa.e };
      key = new TextEncoder().encode(JSON.stringify(pub)); header = { alg: 'HS256', kid: rsa.kid, typ: 'JWT' };
      break;
    }
    default: throw new Error(`unknown IDP_TAMPER ${TAMPER}`);
  }
  return new jose.SignJWT(claims).setProtectedHeader(header).sign(key);
}
if (TAMPER) {
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path.endsWith('/token') && ctx.body && typeof ctx.body === 'object' && ctx.body.id_token) {
      ctx.body = { ...ctx.body, id_token: await tamper(ctx.body.id_token) };
    }
  });
}

const providerHandler = provider.callback();
function testControl(req, res) {
  const url = new URL(req.url, ISSUER);
  const email = url.searchParams.get('email') || '';
  if (url.pathname === '/_test/disable') DISABLED.add(email);
  else if (url.pathname === '/_test/groups') GROUPS.set(email, (url.searchParams.get('groups') || '').split('|').filter(Boolean));
  else { res.writeHead(404); return res.end(); }
  console.log(`idp: test control ${url.pathname} ${email}`);
  res.writeHead(204);
  res.end();
}

const server = http.createServer((req, res) => {
  if (env.IDP_TEST_CONTROL === '1' && req.method === 'POST' && req.url.startsWith('/_test/')) return testControl(req, res);
  const m = /^\/interaction\/([A-Za-z0-9_-]+)(\/abort)?\/?(?:\?.*)?$/.exec(req.url);
  if (!m) return providerHandler(req, res);
  interaction(req, res, m[1], m[2] ? 'abort' : null).catch((err) => {
    console.error(`idp: interaction error: ${err.message}`);
    if (!res.headersSent) send(res, 400, page('Error', `<p>${esc(err.message)}</p>`));
    else res.end();
  });
});
server.keepAliveTimeout = 65000;
server.listen(PORT, HOST, () => {
  console.log(`idp: issuer ${ISSUER} listening on ${HOST}:${PORT}; users: ${[...USERS.keys()].join(', ')}; clients: ${clients.map((c) => c.client_id).join(', ')}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { server.close(); process.exit(0); });
