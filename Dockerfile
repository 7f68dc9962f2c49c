# Static sluice binaries on a minimal base. The BPF object is embedded in the agent (committed
# bindings), so the build stage needs only Go.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ ./cmd/...

FROM gcr.io/distroless/static-debian12:nonroot AS agent
COPY --from=build /out/ /usr/local/bin/
# The agent needs CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_PERFMON (see manifests/);
# it runs as root inside the pod's security context, not as distroless' nonroot user.
USER 0
ENTRYPOINT ["/usr/local/bin/sluice-agent"]
