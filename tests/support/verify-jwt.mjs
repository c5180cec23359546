// Verifies a JWT against a JWKS URL with `jose`, a library independent of castellan's own.
// Usage: node verify-jwt.mjs JWKS_URL ISSUER AUDIENCE TOKEN
// Prints the verified payload and protected header as JSON; exits 1 with the reason if verification fails.
import * as jose from 'jose';

const [jwksUrl, issuer, audience, token] = process.argv.slice(2);
try {
  const jwks = jose.createRemoteJWKSet(new URL(jwksUrl));
  const { payload, protectedHeader } = await jose.jwtVerify(token, jwks, { issuer, audience, algorithms: ['ES256'] });
  console.log(JSON.stringify({ payload, protectedHeader }));
} catch (e) {
  console.error(`verification failed: ${e.code || ''} ${e.message}`);
  process.exit(1);
}
