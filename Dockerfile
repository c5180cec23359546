# castellan's container image: a statically linked release build (glibc's static libc, which
# resolves names from /etc/hosts and DNS itself), copied into distroless/static: CA certificates,
# /etc/passwd and /etc/nsswitch.conf, no shell, no package manager, no libc; a non-root user.
#
#   docker build -t castellan .
#   docker run --rm -p 8080:8080 -e CASTELLAN_CONFIG_TOML="$(cat castellan.toml)" castellan
#
# Configuration comes from a mounted file (--config / CASTELLAN_CONFIG), from CASTELLAN_CONFIG_TOML
# (the whole TOML in one variable) and from CASTELLAN_<KEY> overrides; see the README.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN target="$(rustc -vV | sed -n 's/^host: //p')" \
 && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$target" --bin castellan \
 && cp "target/$target/release/castellan" /castellan

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /castellan /castellan
WORKDIR /home/nonroot
USER nonroot:nonroot
# Cloud Run sets PORT itself; elsewhere castellan listens on 0.0.0.0:8080 unless `listen` says otherwise.
ENV PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["/castellan", "healthcheck"]
ENTRYPOINT ["/castellan"]
CMD ["serve"]
