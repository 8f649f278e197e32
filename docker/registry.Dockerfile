# The OCI registry for compose.yaml, built from Debian (no container registry needed): Debian
# bookworm's docker-registry (the CNCF Distribution registry 2.8). Its address comes from
# REGISTRY_HTTP_ADDR (compose.yaml); images live in /var/lib/docker-registry (a volume).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
COPY registry.yml /etc/initless/registry.yml
USER docker-registry
EXPOSE 5000
CMD ["docker-registry", "serve", "/etc/initless/registry.yml"]
