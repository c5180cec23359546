# The Streamlit app castellan's browser test puts behind the proxy. Everything below reaches the
# browser over Streamlit's WebSocket (/_stcore/stream), so seeing it rendered proves the upgrade works.
import streamlit as st

st.title("castellan test app")
name = st.text_input("Name", "world")
st.write(f"Hello, {name}! (rendered by Streamlit over its websocket)")
email = st.context.headers.get("X-Castellan-Email", "nobody")
st.write(f"castellan says you are {email}")
if st.button("Count"):
    st.session_state["n"] = st.session_state.get("n", 0) + 1
st.write("clicks:", st.session_state.get("n", 0))
