# The Streamlit app castellan's browser test puts behind the proxy. Everything below reaches the
# browser over Streamlit's WebSocket (/_stcore/stream), so seeing it rendered proves the upgrade works.
# who_is_signed_in() is the README's snippet ("What the app receives" → Streamlit), with the
# addresses from the test's environment instead of example.com.
import os

import jwt  # pip install pyjwt[crypto]
import streamlit as st

CASTELLAN = os.environ["CASTELLAN_ORIGIN"]  # the README: "https://auth.example.com"
AUDIENCE = os.environ["CASTELLAN_AUDIENCE"]  # the README: "castellan:dashboard"


@st.cache_resource
def castellan_keys():
    return jwt.PyJWKClient(f"{CASTELLAN}/.castellan/jwks.json")


def who_is_signed_in() -> str:
    # Streamlit keeps the headers of the request that opened the session's WebSocket for the
    # whole session, and the assertion in them expires after 5 minutes: verify it once, on the
    # session's first run, and keep the answer.
    if "castellan_email" not in st.session_state:
        token = st.context.headers["X-Castellan-Jwt-Assertion"]
        key = castellan_keys().get_signing_key_from_jwt(token).key
        claims = jwt.decode(token, key, algorithms=["ES256"], audience=AUDIENCE, issuer=CASTELLAN)
        st.session_state["castellan_email"] = claims["email"]
    return st.session_state["castellan_email"]


st.title("castellan test app")
name = st.text_input("Name", "world")
st.write(f"Hello, {name}! (rendered by Streamlit over its websocket)")
email = st.context.headers.get("X-Castellan-Email", "nobody")
st.write(f"castellan says you are {email}")
st.write(f"verified as {who_is_signed_in()}")
if st.button("Count"):
    st.session_state["n"] = st.session_state.get("n", 0) + 1
st.write("clicks:", st.session_state.get("n", 0))
