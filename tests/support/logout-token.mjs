// Signs an OpenID Connect back-channel logout token with the test provider's own key, for the
// tests that try tokens castellan must refuse (and one it must accept).
//
//   node logout-token.mjs KEYS_FILE CLAIMS_JSON [own | unknown_key | alg_none | typ_at_jwt]
//
// KEYS_FILE is the provider's IDP_KEYS_FILE; the mode signs with its RSA key (own, the default),
// with a key it does not publish (unknown_key), not at all (alg_none), or with the typ of an
// access token (typ_at_jwt: `typ: "at+jwt"`).
import fs from 'node:fs';
import * as jose from 'jose';

const [keysFile, claimsJson, mode = 'own'] = process.argv.slice(2);
const claims = JSON.parse(claimsJson);
const rsa = JSON.parse(fs.readFileSync(keysFile, 'utf8')).keys.find((k) => k.kty === 'RSA');
let key = await jose.importJWK(rsa, 'RS256');
const header = { alg: 'RS256', kid: rsa.kid, typ: 'logout+jwt' };
if (mode === 'unknown_key') {
  ({ privateKey: key } = await jose.generateKeyPair('RS256'));
  header.kid = 'unknown-key';
} else if (mode === 'alg_none') {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  process.stdout.write(`${enc({ alg: 'none', typ: 'logout+jwt' })}.${enc(claims)}.`);
  process.exit(0);
} else if (mode === 'typ_at_jwt') {
  header.typ = 'at+jwt';
} else if (mode !== 'own') {
  throw new Error(`unknown mode ${mode}`);
}
process.stdout.write(await new jose.SignJWT(claims).setProtectedHeader(header).sign(key));
