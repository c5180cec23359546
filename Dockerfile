# castellan's container image: a release build on Debian, copied into a distroless image that has
# glibc and CA certificates but no shell and no package manager, running as a non-root user.
#
#   docker build -t castellan .
#   docker run --rm -p 8080:8080 -e CASTELLAN_CONFIG_TOML="$(cat castellan.toml)" castellan
#
# Configuration comes from a mounted file (--config / CASTELLAN_CONFIG), from CASTELLAN_CONFIG_TOML
# (the whole TOML in one variable) and from CASTELLAN_<KEY> overrides; see the README.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin castellan

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/castellan /castellan
WORKDIR /home/nonroot
USER nonroot:nonroot
# Cloud Run sets PORT itself; elsewhere castellan listens on 0.0.0.0:8080 unless `listen` says otherwise.
ENV PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["/castellan", "healthcheck"]
ENTRYPOINT ["/castellan"]
CMD ["serve"]
