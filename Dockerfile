# weightgate on Debian bookworm: the same package list as scripts/install-deps.sh.
#   docker build -t weightgate .
#   docker run -p 50051:50051 -p 9464:9464 -v wg-store:/var/lib/weightgate weightgate
# A CUDA build swaps Debian's CPU libtorch for an official CUDA libtorch:
#   docker build --build-arg LIBTORCH_URL=https://.../libtorch-cxx11-abi-shared-with-deps-...-cu121.zip .
FROM debian:bookworm AS build
ARG LIBTORCH_URL=""
COPY scripts/ /src/scripts/
RUN /src/scripts/install-deps.sh build && \
    if [ -n "$LIBTORCH_URL" ]; then \
      apt-get install -y --no-install-recommends curl unzip ca-certificates && \
      curl -fsSL "$LIBTORCH_URL" -o /tmp/libtorch.zip && unzip -q /tmp/libtorch.zip -d /opt && rm /tmp/libtorch.zip; \
    fi
COPY . /src
WORKDIR /src
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DWEIGHTGATE_BUILD_TESTS=OFF \
      $( [ -d /opt/libtorch ] && echo -DCMAKE_PREFIX_PATH=/opt/libtorch ) && \
    cmake --build build -j "$(nproc)"

FROM debian:bookworm
COPY scripts/ /tmp/scripts/
# Runtime needs the shared libraries the build linked; the -dev packages pull
# them in reliably on bookworm, at the cost of a larger image.
RUN /tmp/scripts/install-deps.sh build && rm -rf /var/lib/apt/lists/* /tmp/scripts
COPY --from=build /src/build/bin/ /usr/local/bin/
RUN useradd --system --home /var/lib/weightgate weightgate && \
    mkdir -p /var/lib/weightgate && chown weightgate /var/lib/weightgate
USER weightgate
EXPOSE 50051 9464
# In a container the listen address cannot be loopback: TLS is required (tokens
# would otherwise cross the network in cleartext; see deploy/), --insecure only
# behind a trusted network boundary such as a service mesh's mTLS.
ENTRYPOINT ["/usr/local/bin/weightgate-server", "--store", "/var/lib/weightgate/store", \
            "--listen", "0.0.0.0:50051", "--metrics_listen", "0.0.0.0:9464"]
CMD ["--tokens_file", "/etc/weightgate/tokens", \
     "--tls_cert", "/etc/weightgate/tls/tls.crt", "--tls_key", "/etc/weightgate/tls/tls.key"]
