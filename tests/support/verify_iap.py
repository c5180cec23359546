"""Verifies an IAP-style assertion exactly as an app written for Google IAP does, with google-auth.

Usage: python verify_iap.py TOKEN AUDIENCE CERTS_URL
Prints the verified claims as JSON; exits 1 with the reason if google-auth refuses the token.
"""
import json
import sys

from google.auth.transport import requests
from google.oauth2 import id_token

token, audience, certs_url = sys.argv[1:4]
try:
    claims = id_token.verify_token(token, requests.Request(), audience=audience, certs_url=certs_url)
except Exception as e:  # google-auth raises ValueError and friends
    print(f"google-auth refused the token: {e}", file=sys.stderr)
    sys.exit(1)
if claims.get("iss") != "https://cloud.google.com/iap":
    print(f"wrong issuer {claims.get('iss')}", file=sys.stderr)
    sys.exit(1)
print(json.dumps(claims))
